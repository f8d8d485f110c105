//! The coordinator over real HTTP on loopback: tickets bought from the cluster, presented,
//! redeemed online and synced offline, on SQLite and on Postgres.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use ticketing_coordinator::TokenRole;
use ticketing_crypto::presentation::{PRINTED_EPOCH, Presentation, epoch_at};
use ticketing_crypto::ticket::{HolderSecret, Ticket};
use ticketing_protocol::Id16;
use ticketing_protocol::publication::BloomSnapshot;

use crate::common::{TestCluster, buy, token};

/// The QR text a wallet shows at unix time `at`.
fn show(c: &TestCluster, ticket: &(Ticket, HolderSecret), at: u64) -> String {
    let epoch = epoch_at(at, c.cluster.cluster.manifest.rotation_seconds);
    Presentation::sign(&ticket.0, &ticket.1, epoch).to_text()
}

/// The static code `wallet print` puts on paper.
fn printed(ticket: &(Ticket, HolderSecret)) -> String {
    Presentation::sign(&ticket.0, &ticket.1, PRINTED_EPOCH).to_text()
}

fn scan(payload: &str, scanned_at: u64) -> Value {
    json!({
        "scan_id": Id16::random(&mut rand::rng()),
        "payload": payload,
        "scanned_at": scanned_at,
    })
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(c: &TestCluster) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: c.cluster.coordinator.as_ref().unwrap().url.clone(),
        }
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The verdict (or rejection code) of one online scan.
    async fn redeem(&self, token: &str, payload: &str) -> String {
        let (status, body) = self
            .post(
                "/v1/redeem",
                Some(token),
                &scan(payload, ticketing_service::now()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        match body["verdict"].as_str().unwrap() {
            "accepted" => "accepted".to_owned(),
            _ => body["code"].as_str().unwrap().to_owned(),
        }
    }
}

pub(crate) async fn a_thousand_concurrent_redeems_accept_one(c: TestCluster) {
    let tickets = buy(&c, "single", 1).await;
    let device = token(&c, "gate-1", TokenRole::Validator).await;
    let api = std::sync::Arc::new(Api::new(&c));
    let payload = show(&c, &tickets[0], ticketing_service::now());
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (api, device, payload) = (api.clone(), device.clone(), payload.clone());
            tokio::spawn(async move { api.redeem(&device, &payload).await })
        })
        .collect();
    let mut verdicts = Vec::new();
    for t in tasks {
        verdicts.push(t.await.unwrap());
    }
    let accepted = verdicts.iter().filter(|v| *v == "accepted").count();
    assert_eq!(accepted, 1, "{verdicts:?}");
    // The rest: the same epoch again (a single stays valid for transfers, but not twice in
    // one epoch).
    assert!(
        verdicts
            .iter()
            .all(|v| v == "accepted" || v == "replayed_epoch")
    );
    let stats = api
        .get(
            "/v1/admin/stats",
            Some(&token(&c, "ops", TokenRole::Admin).await),
        )
        .await;
    let scans: u64 = stats.1["keysets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["scans"].as_u64().unwrap())
        .sum();
    assert_eq!(scans, 1);
}

pub(crate) async fn every_rejection_has_its_code(c: TestCluster) {
    let device = token(&c, "gate-1", TokenRole::Validator).await;
    let api = Api::new(&c);
    let now = ticketing_service::now();
    let mut singles = buy(&c, "single", 3).await.into_iter();
    let (single, other) = (singles.next().unwrap(), singles.next().unwrap());

    // A stale screenshot: the presentation of five minutes ago.
    assert_eq!(
        api.redeem(&device, &show(&c, &single, now - 300)).await,
        "stale_epoch"
    );
    // Garbage, and a payload cut short.
    assert_eq!(api.redeem(&device, "HELLO").await, "malformed");
    let good = show(&c, &single, now);
    assert_eq!(
        api.redeem(&device, &good[..good.len() - 3]).await,
        "malformed"
    );
    // Tampered: the holder signature's last byte flipped.
    let mut p = Presentation::from_text(&good).unwrap();
    p.holder_signature[63] ^= 1;
    assert_eq!(api.redeem(&device, &p.to_text()).await, "invalid_signature");
    // Forged: someone else's ticket signature on my own holder key, holder-signed correctly.
    let mine = HolderSecret::generate(&mut rand::rng());
    let forged = Ticket {
        holder: mine.public_key(),
        ..other.0
    };
    let epoch = epoch_at(now, c.cluster.cluster.manifest.rotation_seconds);
    let forged = Presentation::sign(&forged, &mine, epoch).to_text();
    assert_eq!(api.redeem(&device, &forged).await, "invalid_signature");
    // A keyset nobody published.
    let unknown = Ticket {
        keyset_id: ticketing_crypto::keyset::KeysetId([0xee; 8]),
        ..single.0
    };
    let unknown = Presentation::sign(&unknown, &single.1, epoch).to_text();
    assert_eq!(api.redeem(&device, &unknown).await, "unknown_keyset");
    // None of these spent the ticket.
    assert_eq!(api.redeem(&device, &good).await, "accepted");
    assert_eq!(api.redeem(&device, &good).await, "replayed_epoch");

    // A pass: each epoch once.
    let pass = buy(&c, "day", 1).await.pop().unwrap();
    let shown = show(&c, &pass, now);
    assert_eq!(api.redeem(&device, &shown).await, "accepted");
    assert_eq!(api.redeem(&device, &shown).await, "replayed_epoch");

    // Revoked by an admin.
    let admin = token(&c, "ops", TokenRole::Admin).await;
    let revoke = json!({ "keyset_id": other.0.keyset_id, "serial": other.0.serial() });
    assert_eq!(
        api.post("/v1/admin/revoke", Some(&device), &revoke).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.post("/v1/admin/revoke", Some(&admin), &revoke).await.0,
        StatusCode::OK
    );
    assert_eq!(api.redeem(&device, &show(&c, &other, now)).await, "revoked");

    // No token, a wrong token, a validator token on admin endpoints: 401, nothing recorded.
    let third = show(&c, &buy(&c, "single", 1).await[0], now);
    for t in [None, Some("tkv_00"), Some("Bearer")] {
        let (status, body) = api.post("/v1/redeem", t, &scan(&third, now)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["code"], "unauthorized");
        let (status, _) = api.post("/v1/sync", t, &json!({ "scans": [] })).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    for path in ["/v1/admin/stats", "/v1/admin/deny"] {
        assert_eq!(
            api.get(path, Some(&device)).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(api.get(path, None).await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(api.redeem(&device, &third).await, "accepted");
}

pub(crate) async fn offline_sync_is_idempotent_and_catches_copies(c: TestCluster) {
    let gate_a = token(&c, "gate-a", TokenRole::Validator).await;
    let gate_b = token(&c, "gate-b", TokenRole::Validator).await;
    let admin = token(&c, "ops", TokenRole::Admin).await;
    let api = Api::new(&c);
    let now = ticketing_service::now();
    let tickets = buy(&c, "single", 3).await;

    // Gate A, offline, let three tickets through two minutes ago.
    let batch_a = json!({
        "scans": tickets.iter().map(|t| scan(&show(&c, t, now - 120), now - 120)).collect::<Vec<_>>()
    });
    let (status, first) = api.post("/v1/sync", Some(&gate_a), &batch_a).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let statuses = |v: &Value| -> Vec<String> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(statuses(&first), vec!["recorded"; 3]);
    // The same batch again (the validator never saw the answer): nothing changes.
    let (_, again) = api.post("/v1/sync", Some(&gate_a), &batch_a).await;
    assert_eq!(statuses(&again), vec!["already_synced"; 3]);

    // Gate B, offline too, let a copy of ticket 0 through a minute later (90-minute transfer
    // window, but the same epoch is a copy) and ticket 1 in a later epoch (a transfer).
    let copy = scan(&show(&c, &tickets[0], now - 120), now - 100);
    let transfer = scan(&show(&c, &tickets[1], now - 60), now - 60);
    let (_, b) = api
        .post(
            "/v1/sync",
            Some(&gate_b),
            &json!({ "scans": [copy, transfer] }),
        )
        .await;
    let results = b["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], "conflict");
    assert_eq!(results[0]["code"], "replayed_epoch");
    assert_eq!(results[0]["first_scanned_at"], now - 120);
    assert_eq!(results[1]["status"], "recorded");

    // The copied ticket is denied: online it is refused, the deny list and the snapshot say so.
    assert_eq!(
        api.redeem(&gate_a, &show(&c, &tickets[0], now)).await,
        "revoked"
    );
    let (_, deny) = api.get("/v1/admin/deny", Some(&admin)).await;
    let denied: Vec<_> = deny
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["serial"].clone())
        .collect();
    assert_eq!(denied, vec![json!(tickets[0].0.serial())]);
    assert_eq!(deny[0]["reason"], "duplicate");

    let (status, _) = api
        .post("/v1/admin/bloom/rebuild", Some(&admin), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let resp = api
        .http
        .get(format!("{}/v1/bloom", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let snapshot: BloomSnapshot = resp.json().await.unwrap();
    snapshot
        .verify(&c.cluster.cluster.manifest.coordinator.key)
        .unwrap();
    assert_eq!(etag, format!("\"{}\"", snapshot.version));
    assert_eq!(snapshot.deny, vec![tickets[0].0.serial()]);
    let filter = snapshot.decode_filter().unwrap();
    assert!(filter.contains(&tickets[0].0.serial()));
    // Tickets inside their transfer window are not in the filter yet.
    assert!(!filter.contains(&tickets[2].0.serial()));
    // The binary form is the same snapshot, a quarter smaller than the JSON, and gzipped for
    // a client that takes it (this filter has room to spare: mostly zeros).
    let fetch = |encoding: &'static str| {
        let url = format!("{}/v1/bloom", api.base);
        async move {
            let raw = reqwest::Client::builder().no_gzip().build().unwrap();
            let r = raw
                .get(url)
                .header("accept", "application/octet-stream")
                .header("accept-encoding", encoding)
                .send()
                .await
                .unwrap();
            let coding = r
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_owned());
            (coding, r.bytes().await.unwrap())
        }
    };
    let (coding, bytes) = fetch("identity").await;
    assert_eq!(coding, None);
    assert_eq!(BloomSnapshot::from_bytes(&bytes).unwrap(), snapshot);
    let json_len = serde_json::to_vec(&snapshot).unwrap().len();
    assert!(
        bytes.len() * 4 < json_len * 3 + 400,
        "{} vs {json_len}",
        bytes.len()
    );
    let (coding, gzipped) = fetch("gzip").await;
    assert_eq!(coding.as_deref(), Some("gzip"));
    assert!(
        gzipped.len() * 10 < bytes.len(),
        "{} vs {}",
        gzipped.len(),
        bytes.len()
    );
    // Unchanged: 304, and a rebuild without changes keeps the version.
    let not_modified = api
        .http
        .get(format!("{}/v1/bloom", api.base))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    let (_, rebuilt) = api
        .post("/v1/admin/bloom/rebuild", Some(&admin), &json!({}))
        .await;
    assert_eq!(rebuilt["version"], snapshot.version);
    // A tampered snapshot fails verification.
    let mut tampered = snapshot.clone();
    tampered.deny.clear();
    assert!(
        tampered
            .verify(&c.cluster.cluster.manifest.coordinator.key)
            .is_err()
    );

    // Stats: issued from the nodes' logs against redeemed; flags counted.
    let (_, stats) = api.get("/v1/admin/stats", Some(&admin)).await;
    let keyset = tickets[0].0.keyset_id.to_string();
    let row = stats["keysets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["keyset_id"] == keyset.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["issued"], 3);
    assert_eq!(row["redeemed"], 3);
    assert_eq!(row["denied"], 1);
    assert_eq!(stats["duplicates"], 1);

    // A revocation later, a validator holding this version fetches only what changed.
    let revoke = json!({ "keyset_id": tickets[2].0.keyset_id, "serial": tickets[2].0.serial() });
    assert_eq!(
        api.post("/v1/admin/revoke", Some(&admin), &revoke).await.0,
        StatusCode::OK
    );
    let (_, rebuilt) = api
        .post("/v1/admin/bloom/rebuild", Some(&admin), &json!({}))
        .await;
    assert_eq!(rebuilt["version"], snapshot.version + 1);
    let fetch_since = |since: u64| {
        let url = format!("{}/v1/bloom?since={since}", api.base);
        let http = api.http.clone();
        async move {
            let r = http
                .get(url)
                .header("accept", "application/octet-stream")
                .send()
                .await
                .unwrap();
            let kind = r.headers()["content-type"].to_str().unwrap().to_owned();
            (kind, r.bytes().await.unwrap())
        }
    };
    let (kind, delta) = fetch_since(snapshot.version).await;
    assert_eq!(kind, "application/vnd.ticketing.bloom-delta");
    let next = ticketing_protocol::publication::BloomDelta::from_bytes(&delta)
        .unwrap()
        .apply(&snapshot)
        .unwrap();
    next.verify(&c.cluster.cluster.manifest.coordinator.key)
        .unwrap();
    assert_eq!(next.version, snapshot.version + 1);
    assert!(next.deny.contains(&tickets[2].0.serial()));
    assert!(
        next.decode_filter()
            .unwrap()
            .contains(&tickets[2].0.serial())
    );
    assert!(
        delta.len() * 10 < bytes.len(),
        "{} vs {}",
        delta.len(),
        bytes.len()
    );
    // A version it never published (or the whole JSON form): the full snapshot.
    let (kind, full) = fetch_since(snapshot.version + 50).await;
    assert_eq!(kind, "application/octet-stream");
    assert_eq!(BloomSnapshot::from_bytes(&full).unwrap(), next);
    // The validators' client applies the delta, and falls back to the whole snapshot when
    // what it holds is not what the delta starts from.
    let client = ticketing_client::CoordinatorClient::new(
        &api.base,
        None,
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(
        client.bloom(Some(&snapshot)).await.unwrap(),
        Some(next.clone())
    );
    let mut other = snapshot.clone();
    other.filter[100] ^= 0x40;
    assert_eq!(
        client.bloom(Some(&other)).await.unwrap(),
        Some(next.clone())
    );
    assert_eq!(client.bloom(Some(&next)).await.unwrap(), None);
}

pub(crate) async fn a_shared_pass_is_flagged(c: TestCluster) {
    let gate_a = token(&c, "gate-a", TokenRole::Validator).await;
    let gate_b = token(&c, "gate-b", TokenRole::Validator).await;
    let api = Api::new(&c);
    let now = ticketing_service::now();
    let pass = buy(&c, "day", 1).await.pop().unwrap();
    let (_, a) = api
        .post(
            "/v1/sync",
            Some(&gate_a),
            &json!({ "scans": [scan(&show(&c, &pass, now - 90), now - 90)] }),
        )
        .await;
    assert_eq!(a["results"][0]["status"], "recorded");
    let (_, b) = api
        .post(
            "/v1/sync",
            Some(&gate_b),
            &json!({ "scans": [scan(&show(&c, &pass, now - 30), now - 30)] }),
        )
        .await;
    assert_eq!(b["results"][0]["status"], "suspected_sharing");
    // Flagged, not denied: the pass still works.
    assert_eq!(api.redeem(&gate_a, &show(&c, &pass, now)).await, "accepted");
}

pub(crate) async fn scan_batches_answer_in_order(c: TestCluster) {
    let device = token(&c, "gate-1", TokenRole::Validator).await;
    let api = Api::new(&c);
    let now = ticketing_service::now();
    let tickets = buy(&c, "single", 20).await;
    let mut scans: Vec<_> = tickets
        .iter()
        .map(|t| scan(&show(&c, t, now), now))
        .collect();
    scans.push(scans[0].clone());
    scans.push(scan("not a ticket", now));
    let (status, body) = api
        .post(
            "/v1/redeem/batch",
            Some(&device),
            &json!({ "scans": scans }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 22);
    let ids: HashSet<_> = results.iter().map(|r| r["scan_id"].clone()).collect();
    assert_eq!(ids.len(), 21);
    for (r, s) in results.iter().zip(&scans) {
        assert_eq!(r["scan_id"], s["scan_id"]);
    }
    assert!(
        results[..21].iter().all(|r| r["verdict"] == "accepted"),
        "{body}"
    );
    assert_eq!(results[21]["code"], "malformed");
    // Over the configured maximum: refused whole.
    let too_many: Vec<_> = (0..1001).map(|_| scan("x", now)).collect();
    let (status, body) = api
        .post(
            "/v1/redeem/batch",
            Some(&device),
            &json!({ "scans": too_many }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "malformed");
}

/// A printed code (docs/adr/0017-printed-tickets.md): no epoch to go stale, accepted once, as
/// a ride without transfers whichever way the ticket was shown first; never for a pass.
pub(crate) async fn a_printed_ticket_rides_once(c: TestCluster) {
    let gate_a = token(&c, "gate-a", TokenRole::Validator).await;
    let gate_b = token(&c, "gate-b", TokenRole::Validator).await;
    let api = Api::new(&c);
    let now = ticketing_service::now();
    let singles = buy(&c, "single", 4).await;

    // Paper first: accepted; the same paper again, or the phone's rotating code inside what
    // would be the transfer time, refused as spent (no transfer time after paper).
    let paper = printed(&singles[0]);
    assert_eq!(api.redeem(&gate_a, &paper).await, "accepted");
    assert_eq!(api.redeem(&gate_b, &paper).await, "spent");
    assert_eq!(
        api.redeem(&gate_b, &show(&c, &singles[0], now)).await,
        "spent"
    );
    // Phone first: a printed copy afterwards is no transfer either.
    assert_eq!(
        api.redeem(&gate_a, &show(&c, &singles[1], now)).await,
        "accepted"
    );
    assert_eq!(api.redeem(&gate_b, &printed(&singles[1])).await, "spent");
    // The phone's own transfers are untouched.
    assert_eq!(
        api.redeem(&gate_b, &show(&c, &singles[1], now + 60)).await,
        "accepted"
    );

    // Offline: paper accepted at gate A, then at gate B a copy (same code) and the phone's
    // code: the first sync records, the others are conflicts.
    let batch = |scans: Vec<Value>| json!({ "scans": scans });
    let (_, a) = api
        .post(
            "/v1/sync",
            Some(&gate_a),
            &batch(vec![scan(&printed(&singles[2]), now - 200)]),
        )
        .await;
    assert_eq!(a["results"][0]["status"], "recorded", "{a}");
    let (_, b) = api
        .post(
            "/v1/sync",
            Some(&gate_b),
            &batch(vec![
                scan(&printed(&singles[2]), now - 150),
                scan(&show(&c, &singles[2], now - 100), now - 100),
            ]),
        )
        .await;
    let results = b["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], "conflict", "{b}");
    assert_eq!(results[0]["code"], "spent", "{b}");
    assert_eq!(results[1]["status"], "conflict", "{b}");
    assert_eq!(results[1]["code"], "spent", "{b}");
    // A phone scan recorded offline after the paper one synced earlier: the earlier scan wins
    // and still allows no transfer.
    let (_, late) = api
        .post(
            "/v1/sync",
            Some(&gate_b),
            &batch(vec![scan(&show(&c, &singles[3], now - 60), now - 60)]),
        )
        .await;
    assert_eq!(late["results"][0]["status"], "recorded", "{late}");
    let (_, earlier) = api
        .post(
            "/v1/sync",
            Some(&gate_a),
            &batch(vec![scan(&printed(&singles[3]), now - 90)]),
        )
        .await;
    assert_eq!(earlier["results"][0]["status"], "recorded", "{earlier}");
    // The phone's scan became a copy of the paper ride: the serial is denied as copied.
    assert_eq!(
        api.redeem(&gate_a, &show(&c, &singles[3], now)).await,
        "revoked"
    );

    // A pass cannot be printed.
    let pass = buy(&c, "day", 1).await.pop().unwrap();
    assert_eq!(api.redeem(&gate_a, &printed(&pass)).await, "not_printable");
}

use crate::common::cluster;

ticketing_service::on_both_databases!(
    cluster(3, 2);
    a_printed_ticket_rides_once,
    a_thousand_concurrent_redeems_accept_one,
    every_rejection_has_its_code,
    offline_sync_is_idempotent_and_catches_copies,
    a_shared_pass_is_flagged,
    scan_batches_answer_in_order,
);
