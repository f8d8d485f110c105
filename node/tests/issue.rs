//! `Node::issue` with an explicit clock: receipts expire for new sales, never for a retry of a
//! sale the node already recorded; a sale is judged at the time it was made.

use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use ticketing_config::Settings;
use ticketing_config::cluster::{self, Cluster, SetupSpec};
use ticketing_config::products::ProductsFile;
use ticketing_crypto::issuance;
use ticketing_crypto::ticket::HolderSecret;
use ticketing_node::{Node, NodeError};
use ticketing_protocol::Id16;
use ticketing_protocol::issue::IssueRequest;
use ticketing_protocol::receipt::{Receipt, blinded_digest};

const NOW: u64 = 1_795_266_000;

async fn node() -> (tempfile::TempDir, Cluster, Node) {
    let dir = tempfile::tempdir().unwrap();
    let spec = SetupSpec {
        node_urls: vec!["http://127.0.0.1:1".into(); 3],
        threshold: 2,
        payments_url: "http://127.0.0.1:2".into(),
        coordinator_url: "http://127.0.0.1:3".into(),
        products: ProductsFile::builtin(),
        horizon_days: 2,
        rotation_seconds: 30,
        clock_skew_seconds: 60,
        now: NOW,
    };
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let c = cluster::generate(&spec, &mut rng, &mut |_, _| {}).unwrap();
    c.write(dir.path(), false).unwrap();
    let settings = Settings {
        data_dir: dir.path().to_owned(),
        ..Settings::default()
    };
    let node = Node::open(&settings, dir.path(), 1).await.unwrap();
    (dir, c, node)
}

fn request(c: &Cluster, id: u8, expires_at: u64) -> IssueRequest {
    request_at(c, id, NOW, expires_at)
}

/// A day-pass sale of two tickets, paid at `issued_at`.
fn request_at(c: &Cluster, id: u8, issued_at: u64, expires_at: u64) -> IssueRequest {
    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(id));
    let keyset = c
        .manifest
        .keysets
        .iter()
        .find(|k| k.params.product == "day" && k.is_valid_at(NOW))
        .unwrap();
    let blinded: Vec<_> = (0..2)
        .map(|_| {
            issuance::blind(
                &keyset.id,
                &HolderSecret::generate(&mut rng).public_key(),
                &mut rng,
            )
            .0
        })
        .collect();
    let receipt = Receipt {
        receipt_id: Id16([id; 16]),
        keyset_id: keyset.id,
        count: 2,
        digest: blinded_digest(&blinded),
        amount: 1400,
        currency: "EUR".into(),
        issued_at,
        expires_at,
    }
    .sign(&c.payments.sign_key().unwrap());
    IssueRequest { receipt, blinded }
}

#[tokio::test]
async fn an_expired_receipt_is_refused_unless_already_recorded() {
    let (_dir, c, node) = node().await;
    let req = request(&c, 1, NOW + 600);
    let first = node.issue(req.clone(), NOW).await.unwrap();
    // The wallet comes back an hour later (nodes were down): same receipt, same points.
    let later = node.issue(req.clone(), NOW + 3600).await.unwrap();
    assert_eq!(first.partials, later.partials);
    // A receipt never seen is refused after its expiry.
    let fresh = request(&c, 2, NOW + 600);
    assert!(matches!(
        node.issue(fresh, NOW + 3600).await,
        Err(NodeError::ReceiptExpired(_))
    ));
}

/// A sale is judged when it was made (the receipt's `issued_at`): one paid before the window
/// ended completes after the end, within the receipt's validity, even at a node that never saw
/// it before (fewer than t nodes answered before the end); one paid when the window was not on
/// sale is refused.
#[tokio::test]
async fn a_sale_made_before_the_window_ended_completes_after_it() {
    let (_dir, c, node) = node().await;
    let req = request(&c, 3, u64::MAX);
    let valid_until = c
        .manifest
        .keyset(&req.receipt.receipt.keyset_id)
        .unwrap()
        .params
        .valid_until;
    node.issue(req.clone(), NOW).await.unwrap();
    node.issue(req, valid_until + 10).await.unwrap();
    // Paid before the end, first seen by this node after it.
    let late = request(&c, 4, u64::MAX);
    node.issue(late, valid_until + 10).await.unwrap();
    // Within its validity only.
    let expired = request(&c, 7, valid_until + 5);
    assert!(matches!(
        node.issue(expired, valid_until + 10).await,
        Err(NodeError::ReceiptExpired(_))
    ));
    // Issued after the end, or in the last 2 h of a day (tomorrow's day pass was on sale then).
    for issued_at in [valid_until + 1, valid_until - 3600] {
        let not_on_sale = request_at(&c, 8, issued_at, u64::MAX);
        assert!(matches!(
            node.issue(not_on_sale, issued_at).await,
            Err(NodeError::KeysetNotActive(_))
        ));
    }
}

/// Each ticket needs its own blinded point: a repeated one is refused before anything is
/// recorded or signed (it used to be signed twice).
#[tokio::test]
async fn a_repeated_blinded_point_is_refused() {
    let (_dir, c, node) = node().await;
    let mut req = request(&c, 9, u64::MAX);
    req.blinded[1] = req.blinded[0];
    let mut receipt = req.receipt.receipt.clone();
    receipt.digest = blinded_digest(&req.blinded);
    req.receipt = receipt.sign(&c.payments.sign_key().unwrap());
    let refused = node.issue(req, NOW).await;
    assert!(
        matches!(refused, Err(NodeError::DuplicatePoint(2))),
        "{refused:?}"
    );
    assert_eq!(
        ticketing_service::ApiError::from(refused.unwrap_err())
            .0
            .code,
        ticketing_protocol::ErrorCode::DuplicatePoint
    );
}

#[tokio::test]
async fn a_recorded_receipt_with_other_points_stays_refused_after_expiry() {
    let (_dir, c, node) = node().await;
    let req = request(&c, 5, NOW + 600);
    node.issue(req.clone(), NOW).await.unwrap();
    // Same receipt id and key, other points (as if the payments key were misused).
    let mut other = request(&c, 6, NOW + 600);
    other.receipt.receipt.receipt_id = req.receipt.receipt.receipt_id;
    other.receipt = other
        .receipt
        .receipt
        .clone()
        .sign(&c.payments.sign_key().unwrap());
    assert!(matches!(
        node.issue(other.clone(), NOW).await,
        Err(NodeError::ReceiptReused)
    ));
    assert!(matches!(
        node.issue(other, NOW + 3600).await,
        Err(NodeError::ReceiptExpired(_))
    ));
}

#[tokio::test]
async fn log_queries_out_of_range_get_malformed() {
    let (_dir, _c, node) = node().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(node.serve(listener, async move {
        let _ = stopped.await;
    }));
    for q in ["after=abc", "after=18446744073709551615", "limit=-1"] {
        let r = reqwest::get(format!("{url}/v1/log?{q}")).await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{q}");
        let body: ticketing_protocol::ErrorBody = r.json().await.unwrap();
        assert_eq!(body.code, ticketing_protocol::ErrorCode::Malformed, "{q}");
    }
    let ok = reqwest::get(format!("{url}/v1/log?after=0&limit=5"))
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
