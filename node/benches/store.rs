//! Cost of one issuance-log append (`NodeStore::record`) on SQLite, the node's per-request
//! fixed cost next to signing. `cargo bench -p ticketing-node --bench store`.

// Bench code: a panic is how a broken fixture shows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use ticketing_crypto::keyset::KeysetId;
use ticketing_node::store::{NodeStore, SqliteStore};
use ticketing_protocol::keys::SignKey;
use ticketing_protocol::receipt::Receipt;
use ticketing_protocol::{Digest32, Id16};

fn record(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/node.db", dir.path().display());
    let store = rt.block_on(SqliteStore::open(&url)).unwrap();
    let key = SignKey::generate(&mut rand::rngs::ChaCha20Rng::seed_from_u64(1));
    let next = AtomicU64::new(0);
    let mut g = c.benchmark_group("node_store");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("sqlite_record", |b| {
        b.iter(|| {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&n.to_be_bytes());
            let receipt = Receipt {
                receipt_id: Id16(id),
                keyset_id: KeysetId([1; 8]),
                count: 1,
                digest: Digest32([2; 32]),
                amount: 250,
                currency: "EUR".into(),
                issued_at: 0,
                expires_at: u64::MAX,
            }
            .sign(&key);
            rt.block_on(store.record(&receipt, 1)).unwrap()
        });
    });
    g.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
