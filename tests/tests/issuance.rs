//! Threshold issuance over real HTTP on loopback: payments + n nodes, SQLite or Postgres.

use std::collections::BTreeSet;
use std::sync::Arc;

use ticketing_client::{Client, ClientError};
use ticketing_crypto::keyset::ShareIndex;
use ticketing_crypto::presentation::Presentation;
use ticketing_crypto::ticket::HolderSecret;
use ticketing_node::Node;
use ticketing_node::signatory::LocalSignatory;
use ticketing_protocol::issue::IssueRequest;
use ticketing_protocol::keys::SignKey;
use ticketing_protocol::receipt::{PaymentMethod, Receipt, SignedReceipt};
use ticketing_protocol::{ErrorBody, ErrorCode, Id16};

use crate::common::{TestCluster, card, logs};

async fn buy(
    client: &Client,
    product: &str,
    count: usize,
) -> Result<Vec<ticketing_crypto::ticket::Ticket>, ClientError> {
    let secrets: Vec<_> = (0..count)
        .map(|_| HolderSecret::generate(&mut rand::rng()))
        .collect();
    let holders: Vec<_> = secrets.iter().map(HolderSecret::public_key).collect();
    // The thread RNG is not Send: use it before the first await.
    let prepared = client.prepare(
        product,
        &holders,
        ticketing_service::now(),
        &mut rand::rng(),
    )?;
    let pending = client.checkout(&prepared, card()).await?;
    Ok(client.complete(&pending).await?.tickets)
}

pub(crate) async fn purchase_end_to_end(c: TestCluster) {
    let client = c.client();
    let secrets: Vec<_> = (0..3)
        .map(|_| HolderSecret::generate(&mut rand::rng()))
        .collect();
    let holders: Vec<_> = secrets.iter().map(HolderSecret::public_key).collect();
    let now = ticketing_service::now();
    let purchase = client
        .buy("day", &holders, card(), now, &mut rand::rng())
        .await
        .unwrap();
    assert_eq!(purchase.tickets.len(), 3);
    assert!(purchase.blamed.is_empty());
    let keyset = client.keyset_on_sale("day", now).unwrap();
    for (ticket, secret) in purchase.tickets.iter().zip(&secrets) {
        ticket.verify(&keyset.public_key).unwrap();
        let epoch = ticketing_crypto::presentation::epoch_at(now, 30);
        let shown =
            Presentation::from_text(&Presentation::sign(ticket, secret, epoch).to_text()).unwrap();
        shown.verify(&keyset.public_key, epoch, 1).unwrap();
    }
    // At least the t nodes that answered logged the receipt, each exactly once, in a valid
    // chain under a checkpoint signed by the node.
    let mut logged = 0;
    for node in &c.cluster.cluster.manifest.nodes {
        let page: ticketing_protocol::log::LogPage = reqwest::get(format!("{}/v1/log", node.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page.checkpoint.verify(&node.identity_key).unwrap();
        assert!(
            page.entries.len() <= 1,
            "node {} logged one purchase twice",
            node.index
        );
        if let Some(e) = page.entries.first() {
            assert!(e.hash_is_valid());
            assert_eq!(
                (e.seq, page.checkpoint.seq, page.checkpoint.head_hash),
                (1, 1, e.hash)
            );
            assert_eq!(e.receipt.receipt.count, 3);
            logged += 1;
        }
    }
    assert!(logged >= 3, "only {logged} nodes logged the purchase");
    c.cluster.stop().await.unwrap();
}

pub(crate) async fn two_nodes_down_still_buys_100_of_100(mut c: TestCluster) {
    c.stop_node(2).await.unwrap();
    c.stop_node(5).await.unwrap();
    let client = Arc::new(c.client());
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..10 {
                ok += buy(&client, "single", 1).await.unwrap().len();
            }
            ok
        }));
    }
    let mut bought = 0;
    for t in tasks {
        bought += t.await.unwrap();
    }
    assert_eq!(bought, 100);
    c.cluster.stop().await.unwrap();
}

pub(crate) async fn three_down_names_them_and_the_receipt_works_later(mut c: TestCluster) {
    for i in [1, 3, 4] {
        c.stop_node(i).await.unwrap();
    }
    let client = c.client();
    let err = buy(&client, "day", 2).await.unwrap_err();
    let message = err.to_string();
    let ClientError::NotEnoughNodes {
        needed,
        good,
        failures,
        pending,
    } = err
    else {
        panic!("expected NotEnoughNodes, got {message}");
    };
    assert_eq!((needed, good), (3, 2));
    assert_eq!(
        failures.iter().map(|f| f.node).collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
    for i in [1, 3, 4] {
        let url = &c.cluster.cluster.manifest.nodes[i - 1].url;
        assert!(message.contains(&format!("node {i} at {url}")), "{message}");
    }
    // The nodes come back; the same paid receipt now gives the tickets.
    for i in [1, 3, 4] {
        c.start_node(i).await.unwrap();
    }
    let done = client.complete(&pending).await.unwrap();
    assert_eq!(done.tickets.len(), 2);
    c.cluster.stop().await.unwrap();
}

pub(crate) async fn a_byzantine_node_is_blamed_and_the_purchase_succeeds(mut c: TestCluster) {
    // Node 2 signs with node 4's share but its own identity: valid points, wrong values.
    let cl = c.cluster.cluster.clone();
    let bad_shares = cl.nodes[3].verified_shares(&cl.manifest).unwrap();
    let signatory = LocalSignatory::new(
        ShareIndex::new(2).unwrap(),
        cl.nodes[1].identity().unwrap(),
        bad_shares,
    );
    let dir = tempfile::tempdir().unwrap();
    let store = ticketing_node::store::open(&format!("sqlite://{}/bad.db", dir.path().display()))
        .await
        .unwrap();
    let bad = Node::new(cl.manifest.clone(), Box::new(signatory), store, &c.settings);
    c.replace_node(2, bad).await.unwrap();
    // With node 5 down, node 2 is among the first three answers about 3 times in 4.
    c.stop_node(5).await.unwrap();

    let client = c.client();
    let mut blamed = Vec::new();
    for _ in 0..20 {
        let holders = vec![HolderSecret::generate(&mut rand::rng()).public_key()];
        let p = client
            .buy(
                "single",
                &holders,
                card(),
                ticketing_service::now(),
                &mut rand::rng(),
            )
            .await
            .unwrap();
        assert_eq!(p.tickets.len(), 1);
        blamed.extend(p.blamed);
    }
    assert!(
        !blamed.is_empty(),
        "node 2 was never among the first answers in 20 purchases"
    );
    for b in &blamed {
        assert_eq!(b.node.get(), 2, "an honest node was blamed");
        // The evidence holds up: signed by node 2, and its partial fails against PK_2.
        b.response
            .verify(&cl.manifest.nodes[1].identity_key)
            .unwrap();
        let partial = b.response.partial_signatures().unwrap()[0];
        let keyset = cl.manifest.keyset(&b.response.keyset_id).unwrap();
        let pk = keyset.public_key_share(b.node).unwrap();
        assert!(ticketing_crypto::issuance::verify_partial(pk, &b.blinded[0], &partial).is_err());
    }
    c.cluster.stop().await.unwrap();
}

async fn post(url: &str, body: impl Into<reqwest::Body>) -> (u16, ErrorBody) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

pub(crate) async fn bad_requests_get_4xx_with_stable_codes(c: TestCluster) {
    let client = c.client();
    let manifest = &c.cluster.cluster.manifest;
    let node = format!("{}/v1/issue", manifest.nodes[0].url);
    let payments_key = c.cluster.cluster.payments.sign_key().unwrap();
    let holders: Vec<_> = (0..2)
        .map(|_| HolderSecret::generate(&mut rand::rng()).public_key())
        .collect();
    let prepared = client
        .prepare("day", &holders, ticketing_service::now(), &mut rand::rng())
        .unwrap();
    let pending = client.checkout(&prepared, card()).await.unwrap();
    let good = IssueRequest {
        receipt: pending.receipt.clone(),
        blinded: pending.blinded.clone(),
    };
    let resign = |r: Receipt, key: &SignKey| -> SignedReceipt { r.sign(key) };
    let check = |(status, body): (u16, ErrorBody), want_status: u16, want: ErrorCode| {
        assert_eq!((status, body.code), (want_status, want), "{}", body.detail);
    };
    let json = |r: &IssueRequest| serde_json::to_vec(r).unwrap();

    // Forged: signed by someone else.
    let forger = SignKey::generate(&mut rand::rng());
    let forged = IssueRequest {
        receipt: resign(good.receipt.receipt.clone(), &forger),
        ..good.clone()
    };
    check(
        post(&node, json(&forged)).await,
        403,
        ErrorCode::InvalidReceipt,
    );

    // Expired, though genuinely signed.
    let mut r = good.receipt.receipt.clone();
    r.receipt_id = Id16([1; 16]);
    r.expires_at = ticketing_service::now() - 1;
    let expired = IssueRequest {
        receipt: resign(r, &payments_key),
        ..good.clone()
    };
    check(
        post(&node, json(&expired)).await,
        403,
        ErrorCode::ReceiptExpired,
    );

    // Unknown keyset.
    let mut r = good.receipt.receipt.clone();
    r.keyset_id = ticketing_crypto::keyset::KeysetId([9; 8]);
    let unknown = IssueRequest {
        receipt: resign(r, &payments_key),
        ..good.clone()
    };
    check(
        post(&node, json(&unknown)).await,
        404,
        ErrorCode::UnknownKeyset,
    );

    // Points that are not the ones paid for.
    let mut swapped = good.clone();
    swapped.blinded.swap(0, 1);
    check(
        post(&node, json(&swapped)).await,
        400,
        ErrorCode::DigestMismatch,
    );

    // The good request works, twice (idempotent), with the same partials.
    let first = client
        .issue_at(ShareIndex::new(1).unwrap(), &pending)
        .await
        .unwrap();
    let again = client
        .issue_at(ShareIndex::new(1).unwrap(), &pending)
        .await
        .unwrap();
    assert_eq!(first.partials, again.partials);

    // The same receipt id for other points (a payments key misused): refused.
    let other = client
        .prepare("day", &holders, ticketing_service::now(), &mut rand::rng())
        .unwrap();
    let mut r = good.receipt.receipt.clone();
    r.digest = ticketing_protocol::receipt::blinded_digest(&other.blinded);
    let reused = IssueRequest {
        receipt: resign(r, &payments_key),
        blinded: other.blinded.clone(),
    };
    check(
        post(&node, json(&reused)).await,
        409,
        ErrorCode::ReceiptReused,
    );

    // Malformed points: the identity, garbage, wrong length.
    for bad_point in [
        format!("c0{}", "00".repeat(47)),
        "ff".repeat(48),
        "00".repeat(10),
    ] {
        let mut v = serde_json::to_value(&good).unwrap();
        v["blinded"][0] = serde_json::Value::String(bad_point);
        check(
            post(&node, serde_json::to_vec(&v).unwrap()).await,
            400,
            ErrorCode::Malformed,
        );
    }
    check(post(&node, "{not json").await, 400, ErrorCode::Malformed);

    // Oversized body.
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(200 * 1024));
    check(
        post(&node, huge.clone()).await,
        413,
        ErrorCode::PayloadTooLarge,
    );
    check(
        post(&format!("{}/v1/checkout", manifest.payments.url), huge).await,
        413,
        ErrorCode::PayloadTooLarge,
    );

    // Unknown route: JSON 404.
    check(
        post(&format!("{}/v1/nope", manifest.nodes[0].url), "{}").await,
        404,
        ErrorCode::NotFound,
    );
    c.cluster.stop().await.unwrap();
}

pub(crate) async fn logs_hold_no_card_number_and_no_serial(c: TestCluster) {
    let client = c.client();
    let secrets: Vec<_> = (0..2)
        .map(|_| HolderSecret::generate(&mut rand::rng()))
        .collect();
    let holders: Vec<_> = secrets.iter().map(HolderSecret::public_key).collect();
    let spaced = PaymentMethod::Card {
        number: "4242 4242 4242 4242".into(),
    };
    let p = client
        .buy(
            "day",
            &holders,
            spaced,
            ticketing_service::now(),
            &mut rand::rng(),
        )
        .await
        .unwrap();
    let p2 = client
        .buy(
            "week",
            &holders[..1],
            card(),
            ticketing_service::now(),
            &mut rand::rng(),
        )
        .await
        .unwrap();
    let logs = logs();
    // The services did log this purchase (so the check below is not vacuous)...
    assert!(logs.contains("issued"), "no issuance was logged at all");
    assert!(logs.contains("checkout"), "no checkout was logged at all");
    // ...without the card number, serials or holder keys.
    let mut secrets_in_logs = BTreeSet::new();
    for needle in ["4242424242424242", "4242 4242 4242 4242"] {
        if logs.contains(needle) {
            secrets_in_logs.insert(needle.to_owned());
        }
    }
    for t in p.tickets.iter().chain(&p2.tickets) {
        for needle in [t.serial().to_string(), hex::encode(t.holder.as_bytes())] {
            if logs.contains(&needle) {
                secrets_in_logs.insert(needle);
            }
        }
    }
    assert!(
        secrets_in_logs.is_empty(),
        "found in logs: {secrets_in_logs:?}"
    );
    c.cluster.stop().await.unwrap();
}

pub(crate) async fn cors_allows_the_pwa_origin_only_and_metrics_are_served(c: TestCluster) {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/issue", c.cluster.cluster.manifest.nodes[0].url);
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let ok = preflight(crate::common::WALLET_ORIGIN).await.unwrap();
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some(crate::common::WALLET_ORIGIN)
    );
    let evil = preflight("http://evil.test").await.unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none());

    let _ = buy(&c.client(), "day", 1).await.unwrap();
    // The wallet stops waiting after t answers, so which nodes signed varies: at least t did.
    // A node still answering may have counted its ticket and not yet its request: re-read
    // until both counters agree (bounded).
    let mut signed = 0;
    for node in &c.cluster.cluster.manifest.nodes {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let metrics = loop {
            let metrics = http
                .get(format!("{}/metrics", node.url))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let counted = metrics.contains("ticketing_node_tickets_signed_total 1");
            let answered = metrics.contains(r#"route="/v1/issue",status="200""#);
            if !counted || answered || std::time::Instant::now() > deadline {
                break metrics;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert!(
            metrics.contains("ticketing_node_tickets_signed_total"),
            "{metrics}"
        );
        if metrics.contains("ticketing_node_tickets_signed_total 1") {
            assert!(
                metrics.contains(r#"route="/v1/issue",status="200""#),
                "{metrics}"
            );
            signed += 1;
        }
    }
    assert!(signed >= 3, "only {signed} nodes report a signed ticket");
    c.cluster.stop().await.unwrap();
}

use crate::common::cluster;

ticketing_service::on_both_databases!(
    cluster(5, 3);
    purchase_end_to_end,
    two_nodes_down_still_buys_100_of_100,
    three_down_names_them_and_the_receipt_works_later,
    a_byzantine_node_is_blamed_and_the_purchase_succeeds,
    bad_requests_get_4xx_with_stable_codes,
    logs_hold_no_card_number_and_no_serial,
    cors_allows_the_pwa_origin_only_and_metrics_are_served,
);
