//! Criterion benches of the operations on the hot paths, next to the `blst` crate's `min_sig`
//! sign and verify measured in the same run, then the ratios.
//!
//! `cargo bench -p ticketing-crypto` (add `-- --quick` for a fast pass).
//!
//! What is compared, so the ratios mean something:
//! - node partial sign = decode the blinded point (curve + subgroup check) + `sk_i*B` + encode,
//!   against blst `sign` = hash to G1 + `sk*H` (+ encode, which blst does lazily; we add it).
//! - ticket verify = decode sigma (subgroup check) + hash + 2-pairing check with a prepared PK,
//!   against blst `verify(sig_groupcheck = true, pk_validate = false)` with a validated key.
//! - combine 3 of 5 = the t-of-n combination of three decoded partials (nodes 1, 2, 3),
//!   against blst's own multi-scalar multiplication of the same points with their Lagrange
//!   coefficients (`blst_min_sig/combine_3`, which blst runs on its thread pool).
//! - batch verify (`batch_verify/*`, filter `-- batch`) = `batch::verify_tickets` over already
//!   decoded tickets of two keysets, per ticket, against `batch_verify/single` = one
//!   `Ticket::verify` of a decoded ticket (the same work minus the batching).

// Bench code: a panic is how a broken fixture shows.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use ticketing_crypto::batch;
use ticketing_crypto::issuance::{self, BlindedPoint, Signature};
use ticketing_crypto::keyset::{self, DealtKeyset, KeysetId, KeysetParams, PublicKey};
use ticketing_crypto::presentation::Presentation;
use ticketing_crypto::ticket::{HolderSecret, Ticket};

const DST: &[u8] = b"BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_POP_";

/// Batch sizes measured by `batch_verify/*`.
const BATCH_SIZES: [usize; 2] = [64, 256];

fn benches(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let dealt = keyset::deal(3, 5, &mut rng).unwrap();
    let pk = dealt.public_key().unwrap();
    let params = KeysetParams {
        product: "day".into(),
        valid_from: 0,
        valid_until: u64::MAX,
    };
    let keyset_id = KeysetId::derive(&pk, &params);
    let holder = HolderSecret::generate(&mut rng);
    let (blinded, factor) = issuance::blind(&keyset_id, &holder.public_key(), &mut rng);
    let blinded_bytes = blinded.to_bytes();
    let partials: Vec<_> = dealt
        .shares
        .iter()
        .map(|s| issuance::partial_sign(s, &blinded))
        .collect();
    let signature = issuance::unblind(&issuance::combine(3, &partials[..3]).unwrap(), &factor);
    let ticket = Ticket {
        keyset_id,
        holder: holder.public_key(),
        signature,
    };
    ticket.verify(&pk).unwrap();
    let sig_bytes = signature.to_bytes();
    let msg = issuance::ticket_message(&keyset_id, &holder.public_key());
    let shown = Presentation::sign(&ticket, &holder, 1000).encode();

    let mut g = c.benchmark_group("ticketing");
    g.bench_function("partial_sign", |b| {
        b.iter(|| {
            let p = BlindedPoint::from_bytes(black_box(&blinded_bytes)).unwrap();
            issuance::partial_sign(&dealt.shares[0], &p).to_bytes()
        });
    });
    g.bench_function("combine_unblind_3_of_5", |b| {
        b.iter(|| {
            issuance::unblind(
                &issuance::combine(3, black_box(&partials[..3])).unwrap(),
                &factor,
            )
        });
    });
    g.bench_function("combine_3_of_5", |b| {
        b.iter(|| issuance::combine(3, black_box(&partials[..3])).unwrap());
    });
    g.bench_function("ticket_verify", |b| {
        b.iter(|| {
            let s = Signature::from_bytes(black_box(&sig_bytes)).unwrap();
            issuance::verify(&pk, &keyset_id, &ticket.holder, &s).unwrap();
        });
    });
    g.bench_function("presentation_verify", |b| {
        b.iter(|| {
            Presentation::decode(black_box(&shown))
                .unwrap()
                .verify(&pk, 1000, 1)
                .unwrap();
        });
    });
    g.bench_function("blind", |b| {
        b.iter(|| issuance::blind(&keyset_id, &ticket.holder, &mut rng));
    });
    g.bench_function("verify_partial", |b| {
        let pk1 = dealt.shares[0].public_key();
        b.iter(|| issuance::verify_partial(&pk1, &blinded, black_box(&partials[0])).unwrap());
    });
    g.finish();

    batch_verify(c, &mut rng, (&dealt, &pk, keyset_id), &params);

    let sk = blst::min_sig::SecretKey::key_gen(&[7u8; 32], &[]).unwrap();
    let bpk = blst::min_sig::PublicKey::key_validate(&sk.sk_to_pk().to_bytes()).unwrap();
    let bsig = sk.sign(&msg, DST, &[]).to_bytes();
    let mut g = c.benchmark_group("blst_min_sig");
    g.bench_function("sign", |b| {
        b.iter(|| sk.sign(black_box(&msg), DST, &[]).to_bytes());
    });
    // Combining partials of nodes 1, 2, 3 is a 3-point multi-exponentiation with their
    // Lagrange coefficients at zero (3, -3, 1): blst's own, over the same decoded points.
    let points: Vec<_> = partials[..3]
        .iter()
        .map(|p| blst::min_sig::Signature::from_bytes(&p.to_bytes()).unwrap())
        .collect();
    let lagrange = lagrange_1_2_3();
    let ours = issuance::combine(3, &partials[..3]).unwrap().to_bytes();
    let theirs = blst::MultiPoint::mult(points.as_slice(), &lagrange, 255);
    assert_eq!(
        theirs.to_signature().to_bytes(),
        ours,
        "the reference combines the same"
    );
    g.bench_function("combine_3", |b| {
        b.iter(|| blst::MultiPoint::mult(black_box(points.as_slice()), &lagrange, 255));
    });
    g.bench_function("verify", |b| {
        b.iter(|| {
            let s = blst::min_sig::Signature::from_bytes(black_box(&bsig)).unwrap();
            assert_eq!(
                s.verify(true, &msg, DST, &[], &bpk, false),
                blst::BLST_ERROR::BLST_SUCCESS
            );
        });
    });
    g.finish();

    portable(c, &blinded_bytes, &msg);
}

/// The Lagrange coefficients at zero of share indices 1, 2, 3 (3, r - 3, 1), 32 bytes each,
/// little-endian, as blst's multi-scalar multiplication takes them.
fn lagrange_1_2_3() -> Vec<u8> {
    const R_MINUS_3: [u8; 32] = [
        254, 255, 255, 255, 254, 255, 255, 255, 254, 91, 254, 255, 2, 164, 189, 83, 5, 216, 161, 9,
        8, 216, 57, 51, 72, 125, 157, 41, 83, 167, 237, 115,
    ];
    let small = |v: u8| {
        let mut s = [0u8; 32];
        s[0] = v;
        s
    };
    [small(3), R_MINUS_3, small(1)].concat()
}

/// A ticket issued the real way: blind, 3 partial signatures, combine, unblind.
fn issue(dealt: &DealtKeyset, keyset_id: KeysetId, rng: &mut ChaCha20Rng) -> Ticket {
    let holder = HolderSecret::generate(rng).public_key();
    let (blinded, factor) = issuance::blind(&keyset_id, &holder, rng);
    let partials: Vec<_> = dealt.shares[..3]
        .iter()
        .map(|s| issuance::partial_sign(s, &blinded))
        .collect();
    let signature = issuance::unblind(&issuance::combine(3, &partials).unwrap(), &factor);
    Ticket {
        keyset_id,
        holder,
        signature,
    }
}

/// `batch::verify_tickets` over distinct tickets of two keysets (alternating), per batch size,
/// plus one bad ticket among 64 (the bisection), next to a single `Ticket::verify` of an
/// already decoded ticket. Criterion reports per batch; `print_ratios` divides by n.
fn batch_verify(
    c: &mut Criterion,
    rng: &mut ChaCha20Rng,
    first: (&DealtKeyset, &PublicKey, KeysetId),
    params: &KeysetParams,
) {
    let dealt2 = keyset::deal(3, 5, rng).unwrap();
    let pk2 = dealt2.public_key().unwrap();
    let id2 = KeysetId::derive(&pk2, params);
    let keysets = [first, (&dealt2, &pk2, id2)];
    let n_max = BATCH_SIZES.iter().copied().max().unwrap();
    let owned: Vec<(&PublicKey, Ticket)> = (0..n_max)
        .map(|i| {
            let (dealt, pk, id) = keysets[i % 2];
            (pk, issue(dealt, id, rng))
        })
        .collect();
    let items: Vec<(&PublicKey, &Ticket)> = owned.iter().map(|(pk, t)| (*pk, t)).collect();
    assert!(batch::verify_tickets(&items, rng).is_empty());
    // Item 37 paired with the other keyset's key.
    let mut one_bad = items[..64].to_vec();
    one_bad[37].0 = keysets[0].1;
    assert_eq!(batch::verify_tickets(&one_bad, rng), vec![37]);

    let mut g = c.benchmark_group("batch_verify");
    g.sample_size(20);
    g.throughput(Throughput::Elements(1));
    g.bench_function("single", |b| {
        let (pk, ticket) = items[0];
        b.iter(|| black_box(ticket).verify(pk).unwrap());
    });
    for n in BATCH_SIZES {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(n.to_string(), |b| {
            b.iter(|| assert!(batch::verify_tickets(black_box(&items[..n]), rng).is_empty()));
        });
    }
    g.throughput(Throughput::Elements(64));
    g.bench_function("64_one_bad", |b| {
        b.iter(|| assert_eq!(batch::verify_tickets(black_box(&one_bad), rng), [37]));
    });
    g.finish();
}

/// The pure-Rust backend (what the browser runs), for reference.
fn portable(c: &mut Criterion, blinded: &[u8; 48], msg: &[u8]) {
    use ticketing_crypto::backend::{Backend, Portable};
    let s = <Portable as Backend>::scalar_from_u64(0x1234_5678_9abc_def1);
    let mut g = c.benchmark_group("portable");
    g.bench_function("partial_sign", |b| {
        b.iter(|| {
            let p = Portable::g1_decode(black_box(blinded)).unwrap();
            Portable::g1_encode(&Portable::g1_mul(&p, &s))
        });
    });
    let pk = Portable::g2_prepare(&Portable::g2_mul_generator(&s));
    let sig = Portable::g1_encode(&Portable::g1_mul(&Portable::hash_to_g1(msg, DST), &s));
    g.bench_function("ticket_verify", |b| {
        b.iter(|| {
            let sigma = Portable::g1_decode(black_box(&sig)).unwrap();
            let h = Portable::hash_to_g1(msg, DST);
            assert!(Portable::pairing_product_is_one(&[
                (&sigma, Portable::neg_g2_generator_prepared()),
                (&h, &pk)
            ]));
        });
    });
    g.finish();
}

/// Mean time in microseconds of a finished bench, from criterion's own estimates.
fn mean_us(dir: &std::path::Path, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(id).join("new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64().map(|ns| ns / 1000.0)
}

fn print_ratios() {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = std::env::var_os("CRITERION_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or(target.join("criterion"));
    let rows = [
        (
            "node partial sign",
            "ticketing/partial_sign",
            "blst_min_sig/sign",
        ),
        (
            "ticket verify",
            "ticketing/ticket_verify",
            "blst_min_sig/verify",
        ),
        (
            "presentation verify",
            "ticketing/presentation_verify",
            "blst_min_sig/verify",
        ),
        (
            "combine 3 of 5",
            "ticketing/combine_3_of_5",
            "blst_min_sig/combine_3",
        ),
        (
            "portable partial sign",
            "portable/partial_sign",
            "blst_min_sig/sign",
        ),
        (
            "portable ticket verify",
            "portable/ticket_verify",
            "blst_min_sig/verify",
        ),
    ];
    println!(
        "\n{:<24} {:>10} {:>10} {:>8}",
        "operation", "ours µs", "blst µs", "ratio"
    );
    for (name, ours, base) in rows {
        match (mean_us(&dir, ours), mean_us(&dir, base)) {
            (Some(a), Some(b)) => println!("{name:<24} {a:>10.1} {b:>10.1} {:>7.2}x", a / b),
            _ => println!("{name:<24} (not measured in this run: filtered out?)"),
        }
    }
    print_batch_ratios(&dir);
    for id in [
        "ticketing/combine_unblind_3_of_5",
        "ticketing/blind",
        "ticketing/verify_partial",
    ] {
        if let Some(a) = mean_us(&dir, id) {
            println!("{id:<34} {a:>10.1} µs");
        }
    }
}

/// Batch verify per ticket against a single verify of a decoded ticket (`batch_verify/single`)
/// and against `ticketing/ticket_verify` (which also decodes sigma), when measured.
fn print_batch_ratios(dir: &std::path::Path) {
    let Some(single) = mean_us(dir, "batch_verify/single") else {
        println!("\nbatch verify: not measured in this run (filter `-- batch`)");
        return;
    };
    let with_decode = mean_us(dir, "ticketing/ticket_verify");
    println!(
        "\n{:<42} {:>10} {:>10} {:>8}",
        "batch verify per ticket", "batch µs", "single µs", "speedup"
    );
    let sizes = BATCH_SIZES.iter().map(|&n| (n.to_string(), n));
    for (id, n) in sizes.chain([("64_one_bad".to_owned(), 64)]) {
        let Some(total) = mean_us(dir, &format!("batch_verify/{id}")) else {
            continue;
        };
        let per = total / n as f64;
        let name = format!("n = {id}");
        println!(
            "{name:<42} {per:>10.1} {single:>10.1} {:>7.2}x",
            single / per
        );
        if let Some(d) = with_decode {
            let name = format!("n = {id} vs ticket_verify (+decode)");
            println!("{name:<42} {per:>10.1} {d:>10.1} {:>7.2}x", d / per);
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
    print_ratios();
}
