//! Two coordinators on one Postgres, as two replicas behind a load balancer: each with its own
//! pool, pipeline and background loops, sharing only the database.

use ticketing_coordinator::TokenRole;
use ticketing_crypto::presentation::{Presentation, epoch_at};
use ticketing_crypto::ticket::{HolderSecret, Ticket};
use ticketing_protocol::Id16;
use ticketing_protocol::publication::{BloomDelta, BloomSnapshot};

use crate::common::{Db, TestCluster, buy, start, token};

fn show(c: &TestCluster, ticket: &(Ticket, HolderSecret), at: u64) -> String {
    let epoch = epoch_at(at, c.cluster.cluster.manifest.rotation_seconds);
    Presentation::sign(&ticket.0, &ticket.1, epoch).to_text()
}

fn scan(payload: &str, at: u64) -> serde_json::Value {
    serde_json::json!({
        "scan_id": Id16::random(&mut rand::rng()),
        "payload": payload,
        "scanned_at": at,
    })
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    let r = http
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.json().await.unwrap()
}

/// The value of the metric `name` in a service's `/metrics` text.
async fn metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_coordinators_share_one_ledger_and_publish_once() {
    let Some(c) = start(Db::Postgres, 3, 2).await else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = ticketing_local::spawn_coordinator(&c.cluster.settings, listener)
        .await
        .unwrap();
    let urls = [
        c.cluster.coordinator.as_ref().unwrap().url.clone(),
        second.url.clone(),
    ];
    let device = token(&c, "gate-1", TokenRole::Validator).await;
    let admin = token(&c, "ops", TokenRole::Admin).await;
    let http = reqwest::Client::new();

    // 1,000 concurrent redeems of one ticket, alternating between the two: one acceptance.
    let ticket = buy(&c, "single", 1).await.pop().unwrap();
    let payload = show(&c, &ticket, ticketing_service::now());
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let (http, device, payload) = (http.clone(), device.clone(), payload.clone());
            let url = format!("{}/v1/redeem", urls[i % 2]);
            tokio::spawn(async move {
                let body = scan(&payload, ticketing_service::now());
                let answer = post(&http, &url, &device, &body).await;
                answer["verdict"].as_str().unwrap().to_owned()
            })
        })
        .collect();
    let mut verdicts = Vec::new();
    for t in tasks {
        verdicts.push(t.await.unwrap());
    }
    assert_eq!(
        verdicts.iter().filter(|v| *v == "accepted").count(),
        1,
        "{verdicts:?}"
    );

    // Two gates syncing copies of the same tickets at once, one to each: each serial is
    // recorded once and denied once, whichever coordinator saw it first.
    let gate_b = token(&c, "gate-2", TokenRole::Validator).await;
    let now = ticketing_service::now();
    let copied = buy(&c, "single", 3).await;
    let batch = |at: u64| {
        serde_json::json!({
            "scans": copied.iter().map(|t| scan(&show(&c, t, now - 120), at)).collect::<Vec<_>>()
        })
    };
    let (a, b) = (batch(now - 120), batch(now - 110));
    let (sync_a, sync_b) = (
        format!("{}/v1/sync", urls[0]),
        format!("{}/v1/sync", urls[1]),
    );
    let (ra, rb) = tokio::join!(
        post(&http, &sync_a, &device, &a),
        post(&http, &sync_b, &gate_b, &b),
    );
    let statuses = |r: &serde_json::Value| -> Vec<String> {
        r["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap().to_owned())
            .collect()
    };
    // The earlier scans (gate A) win whichever coordinator recorded first: as the first use,
    // or taking it over from the later copy. A later copy synced first was answered
    // `recorded` before the earlier one arrived; otherwise it is the conflict. Either way
    // every serial ends up denied once (below).
    assert_eq!(statuses(&ra), ["recorded"; 3], "{ra}");
    for status in statuses(&rb) {
        assert!(status == "recorded" || status == "conflict", "{rb}");
    }
    let deny = http
        .get(format!("{}/v1/admin/deny", urls[1]))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let mut denied: Vec<String> = deny
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["serial"].as_str().unwrap().to_owned())
        .collect();
    denied.sort();
    let mut expected: Vec<String> = copied
        .iter()
        .map(|t| {
            serde_json::to_value(t.0.serial())
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    expected.sort();
    assert_eq!(denied, expected);

    // The filter is published by one of them (the lease holder); the other serves what it
    // stored, deltas included.
    let held: BloomSnapshot = http
        .get(format!("{}/v1/bloom", urls[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let published = post(
        &http,
        &format!("{}/v1/admin/bloom/rebuild", urls[0]),
        &admin,
        &serde_json::json!({}),
    )
    .await;
    let version = published["version"].as_u64().unwrap();
    assert!(version > held.version, "the denied serials are news");
    let followed = post(
        &http,
        &format!("{}/v1/admin/bloom/rebuild", urls[1]),
        &admin,
        &serde_json::json!({}),
    )
    .await;
    assert_eq!(
        followed["version"], version,
        "the second serves, not publishes"
    );
    assert_eq!(
        metric(
            &http,
            &urls[1],
            "ticketing_coordinator_bloom_rebuilds_total"
        )
        .await,
        0.0
    );
    assert!(
        metric(
            &http,
            &urls[0],
            "ticketing_coordinator_bloom_rebuilds_total"
        )
        .await
            >= 1.0
    );
    let delta = http
        .get(format!("{}/v1/bloom?since={}", urls[1], held.version))
        .header("accept", "application/octet-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(
        delta.headers()["content-type"],
        "application/vnd.ticketing.bloom-delta"
    );
    let next = BloomDelta::from_bytes(&delta.bytes().await.unwrap())
        .unwrap()
        .apply(&held)
        .unwrap();
    next.verify(&c.cluster.cluster.manifest.coordinator.key)
        .unwrap();
    assert_eq!(next.version, version);
    assert_eq!(next.deny.len(), 3);

    // The holder stops: the other takes over at once (the lease is handed back).
    let mut c = c;
    c.cluster.stop_coordinator().await.unwrap();
    let after = post(
        &http,
        &format!("{}/v1/admin/bloom/rebuild?full=true", urls[1]),
        &admin,
        &serde_json::json!({}),
    )
    .await;
    assert_eq!(after["version"], version + 1);
    assert_eq!(
        metric(
            &http,
            &urls[1],
            "ticketing_coordinator_bloom_full_rebuilds_total"
        )
        .await,
        1.0
    );
    second.stop().await.unwrap();
}
