//! Cost of issuance-log appends (`NodeStore::record`): one at a time (the node's fixed cost per
//! request next to signing) and 64 at once (group commit: what concurrent purchases share), on
//! SQLite, and on Postgres when `TICKETING_TEST_POSTGRES_URL` names a server (a fresh database
//! is made for the run). `cargo bench -p ticketing-node --bench store`.

// Bench code: a panic is how a broken fixture shows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use ticketing_crypto::keyset::KeysetId;
use ticketing_node::store::{NodeStore, SqlStore};
use ticketing_protocol::keys::SignKey;
use ticketing_protocol::receipt::{Receipt, SignedReceipt};
use ticketing_protocol::{Digest32, Id16};

/// Appends recorded at once in the concurrent case.
const AT_ONCE: u64 = 64;

fn receipt(key: &SignKey, n: u64) -> SignedReceipt {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    Receipt {
        receipt_id: Id16(id),
        keyset_id: KeysetId([1; 8]),
        count: 1,
        digest: Digest32([2; 32]),
        amount: 250,
        currency: "EUR".into(),
        issued_at: 0,
        expires_at: u64::MAX,
    }
    .sign(key)
}

fn record(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/node.db", dir.path().display());
    let mut stores: Vec<(&str, Arc<dyn NodeStore>)> = vec![(
        "sqlite",
        Arc::new(rt.block_on(SqlStore::open(&url)).unwrap()),
    )];
    if let Some(url) = rt
        .block_on(ticketing_service::db::fresh_test_postgres(
            "node_store_bench",
        ))
        .unwrap()
    {
        stores.push((
            "postgres",
            Arc::new(rt.block_on(SqlStore::open(&url)).unwrap()),
        ));
    }
    let key = Arc::new(SignKey::generate(
        &mut rand::rngs::ChaCha20Rng::seed_from_u64(1),
    ));
    let next = Arc::new(AtomicU64::new(0));
    let mut g = c.benchmark_group("node_store");
    g.measurement_time(Duration::from_secs(5));
    for (name, store) in &stores {
        g.bench_function(format!("{name}_record"), |b| {
            b.iter(|| {
                let receipt = receipt(&key, next.fetch_add(1, Ordering::Relaxed));
                rt.block_on(store.record(&receipt, 1)).unwrap()
            });
        });
        // Time per append when 64 are waiting together (the receipts are signed before the
        // clock starts).
        g.bench_function(format!("{name}_record_{AT_ONCE}_at_once_per_append"), |b| {
            b.iter_custom(|iters| {
                let rounds = iters.div_ceil(AT_ONCE);
                let mut spent = Duration::ZERO;
                for _ in 0..rounds {
                    let receipts: Vec<_> = (0..AT_ONCE)
                        .map(|_| receipt(&key, next.fetch_add(1, Ordering::Relaxed)))
                        .collect();
                    let start = Instant::now();
                    rt.block_on(async {
                        let tasks: Vec<_> = receipts
                            .into_iter()
                            .map(|r| {
                                let store = store.clone();
                                tokio::spawn(async move { store.record(&r, 1).await })
                            })
                            .collect();
                        for t in tasks {
                            t.await.unwrap().unwrap();
                        }
                    });
                    spent += start.elapsed();
                }
                // `rounds * 64` appends were timed; criterion wants the time of `iters`.
                spent.mul_f64(iters as f64 / (rounds * AT_ONCE) as f64)
            });
        });
    }
    g.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
