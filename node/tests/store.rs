//! One conformance suite for the node store, run against SQLite and against a real Postgres
//! (`TICKETING_TEST_POSTGRES_URL`; `.ci/run` starts one and sets `TICKETING_REQUIRE_POSTGRES=1`
//! so the Postgres half cannot be skipped there).

use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use ticketing_crypto::keyset::{KeysetId, ShareIndex};
use ticketing_node::store::{NodeStore, Recorded};
use ticketing_protocol::keys::SignKey;
use ticketing_protocol::log::{Checkpoint, GENESIS, LogEntry};
use ticketing_protocol::receipt::{Receipt, SignedReceipt};
use ticketing_protocol::{Digest32, Id16};
use ticketing_service::test_support::TestDatabases;

fn receipt(key: &SignKey, id: u8, digest: u8) -> SignedReceipt {
    Receipt {
        receipt_id: Id16([id; 16]),
        keyset_id: KeysetId([7; 8]),
        count: 2,
        digest: Digest32([digest; 32]),
        amount: 500,
        currency: "EUR".into(),
        issued_at: 1000,
        expires_at: 2000,
    }
    .sign(key)
}

fn key() -> SignKey {
    SignKey::generate(&mut ChaCha20Rng::seed_from_u64(9))
}

mod cases {
    use super::*;

    pub(crate) async fn empty(store: Arc<dyn NodeStore>) {
        assert_eq!(store.head().await.unwrap(), (0, GENESIS));
        assert!(store.entries(0, 10).await.unwrap().is_empty());
        assert!(store.checkpoints().await.unwrap().is_empty());
    }

    pub(crate) async fn fresh_repeat_conflict(store: Arc<dyn NodeStore>) {
        let k = key();
        let r = receipt(&k, 1, 1);
        let Recorded::Fresh(e) = store.record(&r, 1500).await.unwrap() else {
            panic!("first record must be fresh")
        };
        assert_eq!((e.seq, e.prev_hash, e.time), (1, GENESIS, 1500));
        assert!(e.hash_is_valid());
        assert_eq!(store.head().await.unwrap(), (1, e.hash));
        // A retry is a repeat and appends nothing.
        assert_eq!(
            store.record(&r, 1600).await.unwrap(),
            Recorded::Repeat { seq: 1 }
        );
        // The same receipt id with other points is a conflict and appends nothing.
        assert_eq!(
            store.record(&receipt(&k, 1, 2), 1600).await.unwrap(),
            Recorded::Conflict
        );
        assert_eq!(store.head().await.unwrap(), (1, e.hash));
        let entries = store.entries(0, 10).await.unwrap();
        assert_eq!(entries, vec![*e]);
        assert_eq!(entries[0].receipt, r);
    }

    pub(crate) async fn chain_and_paging(store: Arc<dyn NodeStore>) {
        let k = key();
        for i in 0..10u8 {
            assert!(matches!(
                store
                    .record(&receipt(&k, i, i), 1000 + u64::from(i))
                    .await
                    .unwrap(),
                Recorded::Fresh(_)
            ));
        }
        let all = store.entries(0, 100).await.unwrap();
        assert_eq!(all.len(), 10);
        let mut prev = GENESIS;
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1);
            assert_eq!(e.prev_hash, prev);
            assert!(e.hash_is_valid());
            prev = e.hash;
        }
        assert_eq!(store.head().await.unwrap(), (10, prev));
        let page = store.entries(4, 3).await.unwrap();
        assert_eq!(
            page.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        assert!(store.entries(10, 5).await.unwrap().is_empty());
    }

    /// The entries are one chain from genesis with seqs 1, 2, 3...; the last hash.
    fn one_chain(entries: &[LogEntry]) -> Digest32 {
        let mut prev = GENESIS;
        for (i, e) in entries.iter().enumerate() {
            assert_eq!((e.seq, e.prev_hash), (i as u64 + 1, prev));
            assert!(e.hash_is_valid());
            prev = e.hash;
        }
        prev
    }

    pub(crate) async fn concurrent_appends_keep_the_chain(store: Arc<dyn NodeStore>) {
        let k = Arc::new(key());
        let mut tasks = Vec::new();
        for i in 0..40u8 {
            let (store, k) = (store.clone(), k.clone());
            tasks.push(tokio::spawn(async move {
                store.record(&receipt(&k, i, i), 1000).await
            }));
        }
        for t in tasks {
            assert!(matches!(t.await.unwrap().unwrap(), Recorded::Fresh(_)));
        }
        let all = store.entries(0, 100).await.unwrap();
        assert_eq!(all.len(), 40);
        one_chain(&all);
    }

    pub(crate) async fn concurrent_appends_share_commits(store: Arc<dyn NodeStore>) {
        let k = Arc::new(key());
        let before = store.commits();
        let tasks: Vec<_> = (0..64u8)
            .map(|i| {
                let (store, k) = (store.clone(), k.clone());
                tokio::spawn(async move { store.record(&receipt(&k, i, i), 1000).await })
            })
            .collect();
        for t in tasks {
            assert!(matches!(t.await.unwrap().unwrap(), Recorded::Fresh(_)));
        }
        // 64 appends waiting on each other's fsync share transactions (one commit each time
        // the writer finds some waiting), and the chain is still one chain.
        let commits = store.commits() - before;
        assert!(
            (1..=32).contains(&commits),
            "{commits} commits for 64 appends"
        );
        let all = store.entries(0, 100).await.unwrap();
        assert_eq!(all.len(), 64);
        assert_eq!(store.head().await.unwrap(), (64, one_chain(&all)));
    }

    pub(crate) async fn concurrent_retries_record_once(store: Arc<dyn NodeStore>) {
        let k = Arc::new(key());
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (store, k) = (store.clone(), k.clone());
            tasks.push(tokio::spawn(async move {
                store.record(&receipt(&k, 42, 42), 1000).await
            }));
        }
        let mut fresh = 0;
        for t in tasks {
            match t.await.unwrap().unwrap() {
                Recorded::Fresh(_) => fresh += 1,
                Recorded::Repeat { seq } => assert_eq!(seq, 1),
                Recorded::Conflict => panic!("same receipt is not a conflict"),
            }
        }
        assert_eq!(fresh, 1);
        assert_eq!(store.head().await.unwrap().0, 1);
    }

    pub(crate) async fn groups_mixing_repeats_and_new_receipts(store: Arc<dyn NodeStore>) {
        // Retries of recorded receipts, a reused id and new receipts arriving together land in
        // the same groups: each gets its own answer and the new ones still form one chain.
        let k = Arc::new(key());
        for i in 0..10u8 {
            store.record(&receipt(&k, i, i), 1000).await.unwrap();
        }
        let tasks: Vec<_> = (0..50u8)
            .map(|i| {
                let (store, k) = (store.clone(), k.clone());
                // Id 5 comes back with other points: a conflict, not a repeat.
                let digest = if i == 5 { 99 } else { i };
                tokio::spawn(async move { (i, store.record(&receipt(&k, i, digest), 1000).await) })
            })
            .collect();
        for t in tasks {
            let (i, answer) = t.await.unwrap();
            match (i, answer.unwrap()) {
                (5, Recorded::Conflict) => {}
                (i, Recorded::Repeat { seq }) if i < 10 => assert_eq!(seq, u64::from(i) + 1),
                (i, Recorded::Fresh(entry)) if i >= 10 => {
                    assert_eq!(entry.receipt.receipt.receipt_id.0[0], i);
                }
                (i, other) => panic!("receipt {i}: {other:?}"),
            }
        }
        let all = store.entries(0, 100).await.unwrap();
        assert_eq!(all.len(), 50);
        assert_eq!(store.head().await.unwrap(), (50, one_chain(&all)));
    }

    pub(crate) async fn cancelled_appends_keep_the_chain(store: Arc<dyn NodeStore>) {
        // Requests get cancelled when the wallet has its t answers; an append must complete
        // or not happen, never leave the head behind the table.
        let k = Arc::new(key());
        for i in 0..30u8 {
            let (s, k2) = (store.clone(), k.clone());
            let fut = async move { s.record(&receipt(&k2, i, i), 1000).await };
            // Cancel after a varying, tiny delay.
            let _ = tokio::time::timeout(std::time::Duration::from_micros(u64::from(i) * 50), fut)
                .await;
        }
        // Whatever was cancelled, new appends work and the chain is whole.
        for i in 100..105u8 {
            assert!(matches!(
                store.record(&receipt(&k, i, i), 1000).await.unwrap(),
                Recorded::Fresh(_)
            ));
        }
        let all = store.entries(0, 1000).await.unwrap();
        let head = one_chain(&all);
        assert_eq!(store.head().await.unwrap(), (all.len() as u64, head));
    }

    pub(crate) async fn checkpoints(store: Arc<dyn NodeStore>) {
        let k = key();
        let node = ShareIndex::new(3).unwrap();
        let a = Checkpoint::unsigned(node, 5, Digest32([5; 32]), 100).sign(&k);
        let b = Checkpoint::unsigned(node, 9, Digest32([9; 32]), 200).sign(&k);
        store.save_checkpoint(&b).await.unwrap();
        store.save_checkpoint(&a).await.unwrap();
        // The first checkpoint of a seq is kept.
        store
            .save_checkpoint(&Checkpoint::unsigned(node, 5, Digest32([1; 32]), 300).sign(&k))
            .await
            .unwrap();
        let all = store.checkpoints().await.unwrap();
        assert_eq!(all, vec![a, b]);
        all[0].verify(&k.verify_key()).unwrap();
    }
}

/// A fresh store on the case's database.
async fn store(dbs: &TestDatabases) -> Option<Arc<dyn NodeStore>> {
    let url = dbs.url("node").await?;
    Some(Arc::from(ticketing_node::store::open(&url).await.unwrap()))
}

use cases::*;

ticketing_service::on_both_databases!(
    store;
    empty,
    fresh_repeat_conflict,
    chain_and_paging,
    concurrent_appends_keep_the_chain,
    concurrent_appends_share_commits,
    concurrent_retries_record_once,
    groups_mixing_repeats_and_new_receipts,
    cancelled_appends_keep_the_chain,
    checkpoints,
);
