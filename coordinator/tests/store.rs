//! One conformance suite for the ledger, run against SQLite and against a real Postgres
//! (`TICKETING_TEST_POSTGRES_URL`; `.ci/run` starts one and sets `TICKETING_REQUIRE_POSTGRES=1`
//! so the Postgres half cannot be skipped there).

// Test code: a panic is how a test fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use ticketing_coordinator::store::{
    LedgerStore, Mode, Outcome, PostgresStore, Role, ScanRecord, SqliteStore, Usage,
};
use ticketing_crypto::keyset::KeysetId;
use ticketing_crypto::ticket::Serial;
use ticketing_protocol::redeem::{DenyReason, SyncStatus, Verdict};
use ticketing_protocol::{ErrorCode, Id16};

const KS: KeysetId = KeysetId([7; 8]);
const SINGLE: Usage = Usage::Single {
    transfer_seconds: 0,
};
const TRANSFER: Usage = Usage::Single {
    transfer_seconds: 600,
};
const PASS: Usage = Usage::Pass {
    valid_until: 99_999,
};
const OFFLINE: Mode = Mode::Offline {
    sharing_window: 300,
};

fn scan(id: u16, serial: u8, epoch: u32, at: u64, device: i64, usage: Usage) -> ScanRecord {
    let mut scan_id = [0u8; 16];
    scan_id[..2].copy_from_slice(&id.to_be_bytes());
    ScanRecord {
        scan_id: Id16(scan_id),
        keyset_id: KS,
        serial: Serial([serial; 32]),
        epoch,
        at,
        device,
        usage,
    }
}

async fn one(store: &dyn LedgerStore, mode: Mode, s: ScanRecord) -> Outcome {
    let mut out = store.record(mode, &[s]).await.unwrap();
    assert_eq!(out.len(), 1);
    out.pop().unwrap()
}

fn accepted(until: u64) -> Outcome {
    Outcome::Online(Verdict::Accepted { valid_until: until })
}

fn rejected(code: ErrorCode) -> Outcome {
    Outcome::Online(Verdict::Rejected { code })
}

mod cases {
    use super::*;

    pub(crate) async fn single_is_spent_at_first_scan(store: Arc<dyn LedgerStore>) {
        let s = store.as_ref();
        assert_eq!(
            one(s, Mode::Online, scan(1, 1, 10, 300, 1, SINGLE)).await,
            accepted(300)
        );
        assert_eq!(
            one(s, Mode::Online, scan(2, 1, 11, 330, 1, SINGLE)).await,
            rejected(ErrorCode::Spent)
        );
        // Another ticket is unaffected.
        assert_eq!(
            one(s, Mode::Online, scan(3, 2, 11, 330, 2, SINGLE)).await,
            accepted(330)
        );
    }

    pub(crate) async fn transfer_window_and_epochs(store: Arc<dyn LedgerStore>) {
        let s = store.as_ref();
        assert_eq!(
            one(s, Mode::Online, scan(1, 1, 10, 300, 1, TRANSFER)).await,
            accepted(900)
        );
        // Same epoch on another gate: a copy.
        assert_eq!(
            one(s, Mode::Online, scan(2, 1, 10, 310, 2, TRANSFER)).await,
            rejected(ErrorCode::ReplayedEpoch)
        );
        // A later epoch inside the window: a transfer.
        assert_eq!(
            one(s, Mode::Online, scan(3, 1, 20, 600, 2, TRANSFER)).await,
            accepted(900)
        );
        // After the window: spent.
        assert_eq!(
            one(s, Mode::Online, scan(4, 1, 31, 930, 2, TRANSFER)).await,
            rejected(ErrorCode::Spent)
        );
    }

    pub(crate) async fn pass_counts_each_epoch_once(store: Arc<dyn LedgerStore>) {
        let s = store.as_ref();
        assert_eq!(
            one(s, Mode::Online, scan(1, 5, 10, 300, 1, PASS)).await,
            accepted(99_999)
        );
        assert_eq!(
            one(s, Mode::Online, scan(2, 5, 10, 301, 1, PASS)).await,
            rejected(ErrorCode::ReplayedEpoch)
        );
        assert_eq!(
            one(s, Mode::Online, scan(3, 5, 11, 330, 1, PASS)).await,
            accepted(99_999)
        );
    }

    pub(crate) async fn retried_scan_ids_get_the_same_answer(store: Arc<dyn LedgerStore>) {
        let s = store.as_ref();
        let first = scan(1, 1, 10, 300, 1, SINGLE);
        assert_eq!(one(s, Mode::Online, first.clone()).await, accepted(300));
        // The validator timed out and retries: still accepted, not spent.
        assert_eq!(one(s, Mode::Online, first.clone()).await, accepted(300));
        // Twice in one batch, and next to a new scan.
        let out = s
            .record(
                Mode::Online,
                &[first.clone(), scan(2, 1, 11, 330, 1, SINGLE), first.clone()],
            )
            .await
            .unwrap();
        assert_eq!(
            out,
            vec![accepted(300), rejected(ErrorCode::Spent), accepted(300)]
        );
        // Synced later (the validator queued it when the answer was lost): nothing changes.
        assert_eq!(
            one(s, OFFLINE, first.clone()).await,
            Outcome::Offline(SyncStatus::AlreadySynced)
        );
        assert_eq!(s.counts(&KS).await.unwrap().scans, 1);
        assert_eq!(s.scan_accepted(&first.scan_id).await.unwrap(), Some(true));
        let spent = scan(2, 1, 11, 330, 1, SINGLE).scan_id;
        assert_eq!(s.scan_accepted(&spent).await.unwrap(), Some(false));
        assert_eq!(s.scan_accepted(&Id16([9; 16])).await.unwrap(), None);
    }

    pub(crate) async fn the_same_sync_twice_records_once(store: Arc<dyn LedgerStore>) {
        let s = store.as_ref();
        let batch: Vec<_> = (0..20u16)
            .map(|i| scan(i, u8::try_from(i).unwrap(), 10, 300, 1, SINGLE))
            .collect();
        let first = s.record(OFFLINE, &batch).await.unwrap();
        assert!(
            first
                .iter()
                .all(|o| *o == Outcome::Offline(SyncStatus::Recorded))
        );
        let again = s.record(OFFLINE, &batch).await.unwrap();
        assert!(
            again
                .iter()
                .all(|o| *o == Outcome::Offline(SyncStatus::AlreadySynced))
        );
        let c = s.counts(&KS).await.unwrap();
        assert_eq!((c.redeemed, c.scans, c.denied), (20, 20, 0));
    }

    pub(crate) async fn concurrent_redeems_accept_once(store: Arc<dyn LedgerStore>) {
        let tasks: Vec<_> = (0..200u16)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    one(store.as_ref(), Mode::Online, scan(i, 9, 10, 300, 1, SINGLE)).await
                })
            })
            .collect();
        let mut accepted_count = 0;
        for t in tasks {
            match t.await.unwrap() {
                Outcome::Online(Verdict::Accepted { .. }) => accepted_count += 1,
                o => assert_eq!(o, rejected(ErrorCode::Spent)),
            }
        }
        assert_eq!(accepted_count, 1);
    }

    pub(crate) async fn offline_conflicts_are_flagged_and_denied(store: Arc<dyn LedgerStore>) {
        let s = store.as_ref();
        // Device 1 scanned at 300, device 2 at 400 (both offline). Device 2 syncs first.
        assert_eq!(
            one(s, OFFLINE, scan(2, 1, 13, 400, 2, SINGLE)).await,
            Outcome::Offline(SyncStatus::Recorded)
        );
        // The earlier scan wins: it is recorded, the serial is denied as copied.
        assert_eq!(
            one(s, OFFLINE, scan(1, 1, 10, 300, 1, SINGLE)).await,
            Outcome::Offline(SyncStatus::Recorded)
        );
        // A third, later copy: a conflict naming the winner's time.
        assert_eq!(
            one(s, OFFLINE, scan(3, 1, 16, 500, 3, SINGLE)).await,
            Outcome::Offline(SyncStatus::Conflict {
                code: ErrorCode::Spent,
                first_scanned_at: 300
            })
        );
        let deny = s.deny_list().await.unwrap();
        assert_eq!(deny.len(), 1);
        assert_eq!(deny[0].serial, Serial([1; 32]));
        assert_eq!(deny[0].reason, DenyReason::Duplicate);
        let flags = s.flags().await.unwrap();
        assert_eq!(flags.duplicates, 2);
        // Online, the serial is now refused as denied.
        assert_eq!(
            one(s, Mode::Online, scan(4, 1, 20, 600, 1, SINGLE)).await,
            rejected(ErrorCode::Revoked)
        );
    }

    pub(crate) async fn pass_sharing_is_flagged(store: Arc<dyn LedgerStore>) {
        let s = store.as_ref();
        assert_eq!(
            one(s, OFFLINE, scan(1, 5, 10, 300, 1, PASS)).await,
            Outcome::Offline(SyncStatus::Recorded)
        );
        // Another device, 60 s later: two places at once.
        assert_eq!(
            one(s, OFFLINE, scan(2, 5, 12, 360, 2, PASS)).await,
            Outcome::Offline(SyncStatus::SuspectedSharing)
        );
        // The same device an hour later: ordinary use.
        assert_eq!(
            one(s, OFFLINE, scan(3, 5, 130, 3900, 1, PASS)).await,
            Outcome::Offline(SyncStatus::Recorded)
        );
        assert!(s.deny_list().await.unwrap().is_empty());
        // The same epoch on another device: a copy, denied.
        assert_eq!(
            one(s, OFFLINE, scan(4, 5, 130, 3905, 3, PASS)).await,
            Outcome::Offline(SyncStatus::Conflict {
                code: ErrorCode::ReplayedEpoch,
                first_scanned_at: 3900
            })
        );
        assert_eq!(s.deny_list().await.unwrap().len(), 1);
        assert_eq!(s.flags().await.unwrap().suspected_sharing, 1);
    }

    pub(crate) async fn revoked_serials_are_refused(store: Arc<dyn LedgerStore>) {
        let s = store.as_ref();
        s.deny(&KS, &Serial([3; 32]), DenyReason::Revoked, 100)
            .await
            .unwrap();
        s.deny(&KS, &Serial([3; 32]), DenyReason::Duplicate, 200)
            .await
            .unwrap();
        let deny = s.deny_list().await.unwrap();
        assert_eq!(deny.len(), 1);
        assert_eq!(
            (deny[0].reason, deny[0].denied_at),
            (DenyReason::Revoked, 100)
        );
        assert_eq!(
            one(s, Mode::Online, scan(1, 3, 10, 300, 1, PASS)).await,
            rejected(ErrorCode::Revoked)
        );
        assert_eq!(
            one(s, OFFLINE, scan(2, 3, 10, 300, 1, PASS)).await,
            Outcome::Offline(SyncStatus::Rejected {
                code: ErrorCode::Revoked
            })
        );
    }

    pub(crate) async fn spent_after_transfer_and_prune(store: Arc<dyn LedgerStore>) {
        let s = store.as_ref();
        one(s, Mode::Online, scan(1, 1, 10, 300, 1, TRANSFER)).await;
        one(s, Mode::Online, scan(2, 2, 10, 300, 1, SINGLE)).await;
        one(s, Mode::Online, scan(3, 3, 10, 300, 1, PASS)).await;
        // At 600 only the single without transfer is over; at 900 both; passes never.
        assert_eq!(s.spent(&[KS], 600).await.unwrap(), vec![Serial([2; 32])]);
        let mut both = s.spent(&[KS], 900).await.unwrap();
        both.sort();
        assert_eq!(both, vec![Serial([1; 32]), Serial([2; 32])]);
        assert!(s.spent(&[KeysetId([8; 8])], 900).await.unwrap().is_empty());
        s.deny(&KS, &Serial([4; 32]), DenyReason::Revoked, 100)
            .await
            .unwrap();
        assert!(s.prune(&[KS]).await.unwrap() > 0);
        assert!(s.spent(&[KS], 900).await.unwrap().is_empty());
        assert!(s.deny_list().await.unwrap().is_empty());
        assert_eq!(s.counts(&KS).await.unwrap().scans, 0);
    }

    pub(crate) async fn devices_and_publications(store: Arc<dyn LedgerStore>) {
        let s = store.as_ref();
        let d = s
            .add_device(&[1; 32], "laptop-01", Role::Validator, 5)
            .await
            .unwrap();
        let a = s.add_device(&[2; 32], "ops", Role::Admin, 5).await.unwrap();
        assert_ne!(d.id, a.id);
        assert_eq!(s.device(&[1; 32]).await.unwrap(), Some(d));
        assert_eq!(s.device(&[2; 32]).await.unwrap().unwrap().role, Role::Admin);
        assert_eq!(s.device(&[3; 32]).await.unwrap(), None);
        // The same token hash twice is refused by the constraint.
        assert!(
            s.add_device(&[1; 32], "again", Role::Admin, 6)
                .await
                .is_err()
        );

        assert_eq!(s.latest_publication().await.unwrap(), None);
        s.save_publication(1, "one").await.unwrap();
        s.save_publication(2, "two").await.unwrap();
        assert_eq!(
            s.latest_publication().await.unwrap(),
            Some((2, "two".into()))
        );
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}/coordinator.db", dir.path().display());
                    let store: Arc<dyn LedgerStore> = Arc::new(SqliteStore::open(&url).await.unwrap());
                    cases::$case(store).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(url) = ticketing_service::db::fresh_test_postgres(stringify!($case)).await.unwrap() else {
                        return;
                    };
                    let store: Arc<dyn LedgerStore> = Arc::new(PostgresStore::open(&url).await.unwrap());
                    cases::$case(store).await;
                }
            )*
        }
    };
}

conformance!(
    single_is_spent_at_first_scan,
    transfer_window_and_epochs,
    pass_counts_each_epoch_once,
    retried_scan_ids_get_the_same_answer,
    the_same_sync_twice_records_once,
    concurrent_redeems_accept_once,
    offline_conflicts_are_flagged_and_denied,
    pass_sharing_is_flagged,
    revoked_serials_are_refused,
    spent_after_transfer_and_prune,
    devices_and_publications,
);
