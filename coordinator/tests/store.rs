//! One conformance suite for the ledger, run against SQLite and against a real Postgres
//! (`TICKETING_TEST_POSTGRES_URL`; `.ci/run` starts one and sets `TICKETING_REQUIRE_POSTGRES=1`
//! so the Postgres half cannot be skipped there).

use std::sync::Arc;

use ticketing_coordinator::store::{
    Fare, Issuance, Mode, Outcome, Partner, PublicationStep, Retry, Role, ScanRecord, Store,
    StoreError, Usage, Webhook,
};
use ticketing_crypto::keyset::KeysetId;
use ticketing_crypto::ticket::Serial;
use ticketing_protocol::partner::{EventKind, PartnerEvent};
use ticketing_protocol::redeem::{DenyReason, SyncStatus, Verdict};
use ticketing_protocol::{ErrorCode, Id16};
use ticketing_service::test_support::TestDatabases;

const KS: KeysetId = KeysetId([7; 8]);
const SINGLE: Usage = Usage::Single {
    transfer_seconds: 0,
    window_end: 99_999,
};
const TRANSFER: Usage = Usage::Single {
    transfer_seconds: 600,
    window_end: 99_999,
};
const PASS: Usage = Usage::Pass {
    valid_until: 99_999,
};
const OFFLINE: Mode = Mode::Offline {
    sharing_window: 300,
};

fn fare(product: &str, price: u64) -> Fare {
    Fare {
        product: product.into(),
        price,
        currency: "EUR".into(),
    }
}

fn scan(id: u16, serial: u8, epoch: u32, at: u64, device: i64, usage: Usage) -> ScanRecord {
    let mut scan_id = [0u8; 16];
    scan_id[..2].copy_from_slice(&id.to_be_bytes());
    ScanRecord {
        scan_id: Id16(scan_id),
        keyset_id: KS,
        serial: Serial([serial; 32]),
        epoch,
        at,
        received: at,
        device,
        usage,
        fare: fare("single", 250),
    }
}

fn issuance(id: u8, product: &str, tickets: u32, amount: u64) -> Issuance {
    Issuance {
        receipt_id: Id16([id; 16]),
        keyset_id: KS,
        product: product.into(),
        tickets,
        amount,
        currency: "EUR".into(),
        at: 1_000 + u64::from(id),
    }
}

fn partner(id: u8, name: &str, products: &[&str], webhook: bool) -> Partner {
    Partner {
        id: Id16([id; 16]),
        name: name.into(),
        products: products.iter().map(|p| (*p).to_owned()).collect(),
        webhook: webhook.then(|| Webhook {
            url: format!("https://{name}.test/hook"),
            cursor: 0,
            attempts: 0,
            next_at: 0,
            delivered: 0,
            skipped: 0,
        }),
        created_at: 5,
    }
}

async fn all_events(s: &dyn Store, partner: &Id16) -> Vec<PartnerEvent> {
    s.partner_events(partner, 0, 10_000).await.unwrap()
}

async fn one(store: &dyn Store, mode: Mode, s: ScanRecord) -> Outcome {
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

    pub(crate) async fn single_is_spent_at_first_scan(store: Arc<dyn Store>) {
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

    pub(crate) async fn transfer_window_and_epochs(store: Arc<dyn Store>) {
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

    pub(crate) async fn pass_counts_each_epoch_once(store: Arc<dyn Store>) {
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

    pub(crate) async fn retried_scan_ids_get_the_same_answer(store: Arc<dyn Store>) {
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

    pub(crate) async fn the_same_sync_twice_records_once(store: Arc<dyn Store>) {
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

    pub(crate) async fn concurrent_redeems_accept_once(store: Arc<dyn Store>) {
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

    pub(crate) async fn offline_conflicts_are_flagged_and_denied(store: Arc<dyn Store>) {
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

    pub(crate) async fn pass_sharing_is_flagged(store: Arc<dyn Store>) {
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

    pub(crate) async fn revoked_serials_are_refused(store: Arc<dyn Store>) {
        let s = store.as_ref();
        let single = fare("single", 250);
        assert!(
            s.deny(&KS, &Serial([3; 32]), DenyReason::Revoked, &single, 100)
                .await
                .unwrap()
        );
        assert!(
            !s.deny(&KS, &Serial([3; 32]), DenyReason::Duplicate, &single, 200)
                .await
                .unwrap()
        );
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

    pub(crate) async fn spent_after_transfer_and_prune(store: Arc<dyn Store>) {
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
        s.deny(
            &KS,
            &Serial([4; 32]),
            DenyReason::Revoked,
            &fare("single", 250),
            100,
        )
        .await
        .unwrap();
        assert!(s.prune(&[KS]).await.unwrap() > 0);
        assert!(s.spent(&[KS], 900).await.unwrap().is_empty());
        assert!(s.deny_list().await.unwrap().is_empty());
        assert_eq!(s.counts(&KS).await.unwrap().scans, 0);
    }

    pub(crate) async fn listed_follows_transfers_and_late_syncs(store: Arc<dyn Store>) {
        let s = store.as_ref();
        let listed = |after, until| async move {
            let mut l = s.listed(&[KS], after, until).await.unwrap();
            l.sort();
            l
        };
        // Online at 1000 with a 600 s transfer: listed when the window ends, at 1600.
        one(s, Mode::Online, scan(1, 5, 10, 1000, 1, TRANSFER)).await;
        assert!(listed(0, 1599).await.is_empty());
        assert_eq!(listed(1599, 1600).await, vec![Serial([5; 32])]);
        // A copy scanned offline at 200, synced at 2000, becomes the first use: its window
        // ended long ago, so it is listed (again) when the ledger learns it.
        let mut late = scan(2, 5, 11, 200, 2, TRANSFER);
        late.received = 2000;
        one(s, OFFLINE, late).await;
        assert!(listed(1600, 1999).await.is_empty());
        assert_eq!(listed(1999, 2000).await, vec![Serial([5; 32])]);
        // A first use synced late: listed at its sync, not at its (long past) window's end.
        let mut first = scan(3, 6, 12, 100, 2, SINGLE);
        first.received = 3000;
        one(s, OFFLINE, first).await;
        assert_eq!(listed(2000, 3000).await, vec![Serial([6; 32])]);
        assert!(
            listed(100, 2999)
                .await
                .iter()
                .all(|x| x != &Serial([6; 32]))
        );
        // The full set is what was listed by then; other keysets list nothing.
        assert_eq!(
            s.spent(&[KS], 3000).await.unwrap().len(),
            2,
            "both singles by 3000"
        );
        assert!(
            s.listed(&[KeysetId([8; 8])], 0, 9999)
                .await
                .unwrap()
                .is_empty()
        );
    }

    pub(crate) async fn devices_and_publications(store: Arc<dyn Store>) {
        let s = store.as_ref();
        let d = s
            .add_device(&[1; 32], "laptop-01", Role::Validator, 5, false)
            .await
            .unwrap();
        let a = s
            .add_device(&[2; 32], "ops", Role::Admin, 5, false)
            .await
            .unwrap();
        assert_ne!(d.id, a.id);
        assert_eq!(s.device(&[1; 32]).await.unwrap(), Some(d));
        assert_eq!(s.device(&[2; 32]).await.unwrap().unwrap().role, Role::Admin);
        assert_eq!(s.device(&[3; 32]).await.unwrap(), None);
        // The same token hash twice is refused by the constraint.
        assert!(
            s.add_device(&[1; 32], "again", Role::Admin, 6, false)
                .await
                .is_err()
        );

        assert_eq!(s.latest_publication().await.unwrap(), None);
        let step = |version, fresh, changes: Vec<(u32, u8)>| PublicationStep {
            version,
            fresh,
            digest: [u8::try_from(version).unwrap(); 32],
            changes,
        };
        assert!(
            s.save_publication(1, "one", &step(1, true, vec![]), 1)
                .await
                .unwrap()
        );
        let two = step(2, false, vec![(0, 1), (70_000, 255)]);
        assert!(s.save_publication(2, "two", &two, 1).await.unwrap());
        assert_eq!(
            s.latest_publication().await.unwrap(),
            Some((2, "two".into()))
        );
        assert_eq!(
            s.publication_steps().await.unwrap(),
            vec![step(1, true, vec![]), two.clone()]
        );
        // A version another coordinator published first is not overwritten.
        assert!(
            !s.save_publication(2, "other", &step(2, true, vec![]), 2)
                .await
                .unwrap()
        );
        assert_eq!(
            s.latest_publication().await.unwrap(),
            Some((2, "two".into()))
        );
        // Steps before the oldest base still served are forgotten.
        assert!(
            s.save_publication(3, "three", &step(3, false, vec![]), 2)
                .await
                .unwrap()
        );
        assert_eq!(
            s.publication_steps()
                .await
                .unwrap()
                .iter()
                .map(|p| p.version)
                .collect::<Vec<_>>(),
            vec![2, 3]
        );

        // One lease holder at a time; it renews; it lapses; it is handed back.
        let (a, b) = (Id16([1; 16]), Id16([2; 16]));
        assert!(s.lease("work", &a, 100, 160).await.unwrap());
        assert!(!s.lease("work", &b, 120, 180).await.unwrap());
        assert!(s.lease("work", &a, 150, 210).await.unwrap());
        assert!(!s.lease("work", &b, 209, 269).await.unwrap());
        assert!(s.lease("work", &b, 210, 270).await.unwrap());
        assert!(!s.lease("work", &a, 211, 271).await.unwrap());
        assert!(s.lease("work", &b, 220, 220).await.unwrap());
        assert!(s.lease("work", &a, 221, 281).await.unwrap());
        assert!(s.lease("other", &b, 221, 281).await.unwrap());
        // Auditor tokens are a role of their own.
        s.add_device(&[4; 32], "books", Role::Auditor, 7, false)
            .await
            .unwrap();
        assert_eq!(
            s.device(&[4; 32]).await.unwrap().unwrap().role,
            Role::Auditor
        );
    }

    pub(crate) async fn device_names_are_unique_and_tokens_revocable(store: Arc<dyn Store>) {
        let s = store.as_ref();
        let first = s
            .add_device(&[1; 32], "gate-1", Role::Validator, 5, false)
            .await
            .unwrap();
        // The same name again is refused, and nothing changes.
        let again = s
            .add_device(&[2; 32], "gate-1", Role::Validator, 6, false)
            .await;
        assert!(
            matches!(again, Err(StoreError::Taken(ref n)) if n == "gate-1"),
            "{again:?}"
        );
        assert_eq!(s.device(&[2; 32]).await.unwrap(), None);
        assert_eq!(s.device(&[1; 32]).await.unwrap(), Some(first.clone()));
        // Asked for explicitly: the old token is revoked, the new one works.
        let second = s
            .add_device(&[2; 32], "gate-1", Role::Validator, 7, true)
            .await
            .unwrap();
        assert_eq!(s.device(&[1; 32]).await.unwrap(), None);
        assert_eq!(s.device(&[2; 32]).await.unwrap(), Some(second.clone()));
        // Revocation: at once, only live tokens, and idempotent.
        s.add_device(&[3; 32], "gate-2", Role::Validator, 8, false)
            .await
            .unwrap();
        assert_eq!(s.revoke_device("gate-2", 9).await.unwrap(), 1);
        assert_eq!(s.revoke_device("gate-2", 10).await.unwrap(), 0);
        assert_eq!(s.device(&[3; 32]).await.unwrap(), None);
        // A revoked name can be registered again without --replace.
        s.add_device(&[4; 32], "gate-2", Role::Validator, 11, false)
            .await
            .unwrap();
        let listed: Vec<_> = s
            .devices()
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.device.name, d.created_at, d.revoked_at))
            .collect();
        assert_eq!(
            listed,
            vec![
                ("gate-1".to_owned(), 5, Some(7)),
                ("gate-1".to_owned(), 7, None),
                ("gate-2".to_owned(), 8, Some(9)),
                ("gate-2".to_owned(), 11, None),
            ]
        );
    }

    /// A scan id is scoped to its device and bound to its (serial, epoch): another ticket or
    /// epoch under a used id is `scan_id_reused` and records nothing; the same id on another
    /// device is another scan.
    pub(crate) async fn scan_ids_are_per_device_and_bound_to_their_ticket(store: Arc<dyn Store>) {
        let s = store.as_ref();
        let first = scan(1, 1, 10, 300, 1, SINGLE);
        assert_eq!(one(s, Mode::Online, first.clone()).await, accepted(300));
        // Same device, same id, an unspent ticket: refused, and the ticket stays unspent.
        let other_ticket = scan(1, 2, 10, 300, 1, SINGLE);
        assert_eq!(
            one(s, Mode::Online, other_ticket.clone()).await,
            rejected(ErrorCode::ScanIdReused)
        );
        assert_eq!(
            one(s, OFFLINE, other_ticket.clone()).await,
            Outcome::Offline(SyncStatus::Rejected {
                code: ErrorCode::ScanIdReused
            })
        );
        // The same ticket at another epoch under the id: also another scan.
        assert_eq!(
            one(s, Mode::Online, scan(1, 1, 11, 330, 1, SINGLE)).await,
            rejected(ErrorCode::ScanIdReused)
        );
        // In one batch too.
        let out = s
            .record(
                Mode::Online,
                &[
                    scan(5, 3, 10, 300, 1, SINGLE),
                    scan(5, 4, 10, 300, 1, SINGLE),
                ],
            )
            .await
            .unwrap();
        assert_eq!(out, vec![accepted(300), rejected(ErrorCode::ScanIdReused)]);
        // Ticket 2 was never recorded: its first real scan is accepted.
        assert_eq!(
            one(s, Mode::Online, scan(2, 2, 10, 300, 1, SINGLE)).await,
            accepted(300)
        );
        assert_eq!(s.counts(&KS).await.unwrap().redeemed, 3);
        // A taken id next to a reuse of it, in either order: each gets its own answer (the
        // stored answer is never handed to the other ticket).
        for batch in [
            [first.clone(), scan(1, 7, 10, 300, 1, SINGLE)],
            [scan(1, 7, 10, 300, 1, SINGLE), first.clone()],
        ] {
            let out = s.record(Mode::Online, &batch).await.unwrap();
            let want: Vec<_> = batch
                .iter()
                .map(|b| {
                    if b.serial == first.serial {
                        accepted(300)
                    } else {
                        rejected(ErrorCode::ScanIdReused)
                    }
                })
                .collect();
            assert_eq!(out, want);
        }
        // Another device picking the same id scans its own ticket.
        assert_eq!(
            one(s, Mode::Online, scan(1, 6, 10, 300, 2, SINGLE)).await,
            accepted(300)
        );
        // Lookups for retries refused before the ledger: the stored answer, a reuse, or none.
        let retry = |id: u16, serial: u8, epoch: u32, device: i64| {
            let r = scan(id, serial, epoch, 0, device, SINGLE);
            Retry {
                device,
                scan_id: r.scan_id,
                serial: r.serial,
                epoch,
            }
        };
        let found = s
            .answered(
                Mode::Online,
                &[
                    retry(1, 1, 10, 1),
                    retry(1, 2, 10, 1),
                    retry(9, 1, 10, 1),
                    retry(1, 1, 10, 3),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            found,
            vec![
                Some(accepted(300)),
                Some(rejected(ErrorCode::ScanIdReused)),
                None,
                None
            ]
        );
    }

    /// The one rule for singles at the window's end: first use inside the window, transfers
    /// run on past the end; no first use after the end.
    pub(crate) async fn singles_transfer_past_the_window_end(store: Arc<dyn Store>) {
        let s = store.as_ref();
        let usage = Usage::Single {
            transfer_seconds: 5400,
            window_end: 10_000,
        };
        // First scan 4 min before the end: valid 86 min past it...
        assert_eq!(
            one(s, Mode::Online, scan(1, 1, 10, 9_760, 1, usage)).await,
            accepted(15_160)
        );
        // ...and so it is 5 s after the end, with the same valid_until.
        assert_eq!(
            one(s, Mode::Online, scan(2, 1, 11, 10_005, 2, usage)).await,
            accepted(15_160)
        );
        // After the transfer time: spent.
        assert_eq!(
            one(s, Mode::Online, scan(3, 1, 12, 15_200, 2, usage)).await,
            rejected(ErrorCode::Spent)
        );
        // A ticket never used before the end cannot start after it, online or synced.
        assert_eq!(
            one(s, Mode::Online, scan(4, 2, 11, 10_005, 1, usage)).await,
            rejected(ErrorCode::Expired)
        );
        let late = scan(5, 2, 11, 10_006, 1, usage);
        assert_eq!(
            one(s, OFFLINE, late.clone()).await,
            Outcome::Offline(SyncStatus::Rejected {
                code: ErrorCode::Expired
            })
        );
        // Sent again (a lost answer, or an operator's retry): still refused, not "synced".
        assert_eq!(
            one(s, OFFLINE, late).await,
            Outcome::Offline(SyncStatus::Rejected {
                code: ErrorCode::Expired
            })
        );
        assert_eq!(s.counts(&KS).await.unwrap().redeemed, 1);
    }

    pub(crate) async fn the_admin_trail_is_appended_and_paged(store: Arc<dyn Store>) {
        let s = store.as_ref();
        assert!(s.actions(0, 10).await.unwrap().is_empty());
        for i in 0..5u64 {
            s.record_action(100 + i, "ops", "ticket_revoked", &format!("keyset {i}"))
                .await
                .unwrap();
        }
        let first = s.actions(0, 3).await.unwrap();
        assert_eq!(first.len(), 3);
        assert!(first.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!((first[0].at, first[0].actor.as_str()), (100, "ops"));
        let rest = s.actions(first[2].id, 10).await.unwrap();
        assert_eq!(
            rest.iter().map(|a| a.detail.as_str()).collect::<Vec<_>>(),
            ["keyset 3", "keyset 4"]
        );
    }

    pub(crate) async fn issuances_are_recorded_once(store: Arc<dyn Store>) {
        let s = store.as_ref();
        let batch = [issuance(1, "single", 2, 500), issuance(2, "day", 1, 700)];
        assert_eq!(s.record_issuances(&batch).await.unwrap(), 2);
        // The follower after a restart reads every log again: nothing new.
        assert_eq!(s.record_issuances(&batch).await.unwrap(), 0);
        assert_eq!(
            s.record_issuances(&[issuance(2, "day", 1, 700), issuance(3, "single", 1, 250)])
                .await
                .unwrap(),
            1
        );
        assert_eq!(s.record_issuances(&[]).await.unwrap(), 0);
        assert_eq!(s.issued(&KS).await.unwrap(), 4);
        assert_eq!(s.issued(&KeysetId([8; 8])).await.unwrap(), 0);
        s.add_partner(&partner(1, "all", &["single", "day"], false), &[1; 32])
            .await
            .unwrap();
        let events = all_events(s, &Id16([1; 16])).await;
        assert_eq!(events.len(), 3);
        assert!(events.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(
            events[0].kind,
            EventKind::Issued {
                receipt_id: Id16([1; 16])
            }
        );
        assert_eq!(
            (events[0].tickets, events[0].amount, events[0].time),
            (2, 500, 1_001)
        );
    }

    pub(crate) async fn denials_write_events_without_serials(store: Arc<dyn Store>) {
        let s = store.as_ref();
        s.add_partner(&partner(1, "metro", &["single"], false), &[1; 32])
            .await
            .unwrap();
        // An offline copy: the serial is denied as a duplicate, one event at the price.
        one(s, OFFLINE, scan(1, 1, 10, 300, 1, SINGLE)).await;
        one(s, OFFLINE, scan(2, 1, 11, 330, 2, SINGLE)).await;
        one(s, OFFLINE, scan(3, 1, 12, 360, 3, SINGLE)).await;
        // A pass copied: another product, not metro's.
        let mut pass = scan(4, 5, 10, 300, 1, PASS);
        pass.fare = fare("day", 700);
        one(s, OFFLINE, pass.clone()).await;
        pass.scan_id = Id16([9; 16]);
        pass.device = 2;
        one(s, OFFLINE, pass).await;
        // An operator revokes a serial, twice: one event.
        for _ in 0..2 {
            s.deny(
                &KS,
                &Serial([7; 32]),
                DenyReason::Revoked,
                &fare("single", 250),
                400,
            )
            .await
            .unwrap();
        }
        assert_eq!(s.deny_list().await.unwrap().len(), 3);
        let events = all_events(s, &Id16([1; 16])).await;
        let kinds: Vec<_> = events
            .iter()
            .map(|e| (e.kind, e.amount, e.tickets))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (
                    EventKind::Revoked {
                        reason: DenyReason::Duplicate
                    },
                    250,
                    1
                ),
                (
                    EventKind::Revoked {
                        reason: DenyReason::Revoked
                    },
                    250,
                    1
                ),
            ]
        );
        let json = serde_json::to_string(&events).unwrap();
        for serial in [Serial([1; 32]), Serial([7; 32])] {
            assert!(!json.contains(&serial.to_string()), "{json}");
        }
        let totals = s.partner_totals(&Id16([1; 16])).await.unwrap();
        assert_eq!(totals.len(), 1);
        assert_eq!(
            (totals[0].revoked_tickets, totals[0].revoked_amount),
            (2, 500)
        );
        assert_eq!(totals[0].issued_tickets, 0);
    }

    pub(crate) async fn partners_see_their_products_only(store: Arc<dyn Store>) {
        let s = store.as_ref();
        let metro = partner(1, "metro", &["day", "single"], true);
        let bus = partner(2, "bus", &["week"], false);
        s.add_partner(&metro, &[1; 32]).await.unwrap();
        s.add_partner(&bus, &[2; 32]).await.unwrap();
        // Names and tokens are unique.
        assert!(
            s.add_partner(&partner(3, "metro", &["day"], false), &[3; 32])
                .await
                .is_err()
        );
        assert!(
            s.add_partner(&partner(4, "tram", &["day"], false), &[1; 32])
                .await
                .is_err()
        );
        assert_eq!(s.partner(&[1; 32]).await.unwrap(), Some(metro.clone()));
        assert_eq!(s.partner(&[9; 32]).await.unwrap(), None);
        let names: Vec<_> = s
            .partners()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, vec!["bus", "metro"]);

        let batch: Vec<_> = (1..=10u8)
            .map(|i| issuance(i, ["single", "day", "week"][usize::from(i % 3)], 1, 100))
            .collect();
        s.record_issuances(&batch).await.unwrap();
        let mine = all_events(s, &metro.id).await;
        assert_eq!(mine.len(), 7);
        assert!(mine.iter().all(|e| e.product != "week"));
        assert_eq!(all_events(s, &bus.id).await.len(), 3);
        // Pages of 3 after a cursor.
        let first = s.partner_events(&metro.id, 0, 3).await.unwrap();
        let second = s.partner_events(&metro.id, first[2].id, 3).await.unwrap();
        assert_eq!(first.len(), 3);
        assert_eq!(second.len(), 3);
        assert_eq!([first, second].concat(), mine[..6].to_vec());
        let totals = s.partner_totals(&metro.id).await.unwrap();
        let summary: Vec<_> = totals
            .iter()
            .map(|t| (t.product.as_str(), t.issued_tickets, t.issued_amount))
            .collect();
        assert_eq!(summary, vec![("day", 4, 400), ("single", 3, 300)]);

        // Webhook state: a failure, then a delivery; the cursor never moves back.
        s.webhook_failed(&metro.id, 2, 77).await.unwrap();
        let w = s.partner(&[1; 32]).await.unwrap().unwrap().webhook.unwrap();
        assert_eq!((w.cursor, w.attempts, w.next_at), (0, 2, 77));
        s.webhook_done(&metro.id, mine[1].id, true).await.unwrap();
        s.webhook_done(&metro.id, mine[0].id, true).await.unwrap();
        s.webhook_done(&metro.id, mine[2].id, false).await.unwrap();
        let w = s.partner(&[1; 32]).await.unwrap().unwrap().webhook.unwrap();
        assert_eq!(
            (w.cursor, w.attempts, w.next_at, w.delivered, w.skipped),
            (mine[2].id, 0, 0, 1, 1)
        );
    }

    /// Event ids are the feed cursor: a reader following concurrent writers must never step
    /// over an id that commits after a larger one (Postgres: the events lock).
    pub(crate) async fn a_feed_reader_misses_nothing(store: Arc<dyn Store>) {
        let reader = Id16([1; 16]);
        store
            .add_partner(&partner(1, "metro", &["single"], false), &[1; 32])
            .await
            .unwrap();
        let writers: Vec<_> = (0..4u8)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..40u8 {
                        if i % 2 == 0 {
                            let mut serial = [w; 32];
                            serial[1] = i;
                            store
                                .deny(
                                    &KS,
                                    &Serial(serial),
                                    DenyReason::Revoked,
                                    &fare("single", 250),
                                    9,
                                )
                                .await
                                .unwrap();
                        } else {
                            let mut r = issuance(i, "single", 1, 250);
                            r.receipt_id.0[1] = w;
                            store.record_issuances(&[r]).await.unwrap();
                        }
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let done = writers.iter().all(tokio::task::JoinHandle::is_finished);
            let page = store.partner_events(&reader, after, 1000).await.unwrap();
            if let Some(last) = page.last() {
                after = last.id;
            }
            seen.extend(page.into_iter().map(|e| e.id));
            if done
                && store
                    .partner_events(&reader, after, 1)
                    .await
                    .unwrap()
                    .is_empty()
            {
                break;
            }
            tokio::task::yield_now().await;
        }
        for w in writers {
            w.await.unwrap();
        }
        let all: Vec<u64> = all_events(store.as_ref(), &reader)
            .await
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(all.len(), 160);
        assert_eq!(seen, all, "the reader skipped an event");
    }
}

/// A fresh ledger on the case's database.
async fn store(dbs: &TestDatabases) -> Option<Arc<dyn Store>> {
    let url = dbs.url("coordinator").await?;
    Some(Arc::from(
        ticketing_coordinator::store::open(&url).await.unwrap(),
    ))
}

use cases::*;

ticketing_service::on_both_databases!(
    store;
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
    listed_follows_transfers_and_late_syncs,
    devices_and_publications,
    device_names_are_unique_and_tokens_revocable,
    scan_ids_are_per_device_and_bound_to_their_ticket,
    singles_transfer_past_the_window_end,
    the_admin_trail_is_appended_and_paged,
    issuances_are_recorded_once,
    denials_write_events_without_serials,
    partners_see_their_products_only,
    a_feed_reader_misses_nothing,
);
