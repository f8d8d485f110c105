//! The partner feed, webhooks and auditor tokens against real issuer nodes on loopback: receipts
//! signed with the cluster's payments key are issued at some of the nodes, the coordinator
//! follows their public logs over HTTP, and a real axum webhook receiver checks every signature. On SQLite and on Postgres
//! (`TICKETING_TEST_POSTGRES_URL`).
//!
//! The follower and the delivery loop are driven directly (`follow_issuance`,
//! `deliver_webhooks`) with an explicit clock, so backoff is tested without waiting; one test
//! runs the served background loops and polls its receiver with a timeout.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use reqwest::StatusCode as Status;
use serde_json::{Value, json};
use ticketing_config::Settings;
use ticketing_config::cluster::{self, Cluster, SetupSpec};
use ticketing_config::products::ProductsFile;
use ticketing_coordinator::{Coordinator, DeliveryReport, TokenRole};
use ticketing_crypto::issuance;
use ticketing_crypto::keyset::KeysetId;
use ticketing_crypto::ticket::{HolderSecret, serial};
use ticketing_node::Node;
use ticketing_protocol::Id16;
use ticketing_protocol::issue::IssueRequest;
use ticketing_protocol::keys::SignKey;
use ticketing_protocol::partner::{
    EVENT_ID_HEADER, EventKind, PartnerEvent, PartnerFeed, SIGNATURE_HEADER, verify_webhook,
};
use ticketing_protocol::receipt::{Receipt, blinded_digest};
use ticketing_protocol::redeem::DenyReason;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy)]
enum Db {
    Sqlite,
    Postgres,
}

/// A served HTTP app that stops when asked.
struct Served {
    url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(router: axum::Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(listener, |l, stop| {
            ticketing_service::serve(l, router, async move {
                let _ = stop.await;
            })
        })
    }

    fn on<F>(
        listener: TcpListener,
        serve: impl FnOnce(TcpListener, oneshot::Receiver<()>) -> F,
    ) -> Self
    where
        F: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, stopped));
        Self { url, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// A purchase: the issue request sent to the nodes and the holder keys it pays for.
struct Purchase {
    request: IssueRequest,
    keyset_id: KeysetId,
    holders: Vec<HolderSecret>,
}

impl Purchase {
    fn receipt_id(&self) -> Id16 {
        self.request.receipt.receipt.receipt_id
    }
}

/// Three nodes (threshold 2) serving their logs, and a coordinator over its database.
struct Rig {
    dir: tempfile::TempDir,
    settings: Settings,
    cluster: Cluster,
    payments: SignKey,
    nodes: Vec<Node>,
    served_nodes: Vec<Served>,
    coordinator: Coordinator,
    api: Option<Served>,
}

impl Rig {
    /// `None` when the Postgres run is not configured here.
    async fn start(db: Db, tag: &str, tweak: impl FnOnce(&mut Settings)) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            data_dir: dir.path().to_owned(),
            ..Settings::default()
        };
        if let Db::Postgres = db {
            let url = ticketing_service::db::fresh_test_postgres(tag)
                .await
                .unwrap()?;
            settings.coordinator.database_url = url;
        }
        tweak(&mut settings);
        let mut listeners = Vec::new();
        for _ in 0..3 {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let spec = SetupSpec {
            node_urls: listeners
                .iter()
                .map(|l| format!("http://{}", l.local_addr().unwrap()))
                .collect(),
            threshold: 2,
            // Payments is not running: the test signs receipts with its key.
            payments_url: "http://127.0.0.1:9".into(),
            coordinator_url: "http://127.0.0.1:9".into(),
            // Without the sale minimums: the current window's tickets, whatever the hour.
            products: {
                let mut products = ProductsFile::builtin();
                for p in &mut products.product {
                    p.min_remaining_minutes = 0;
                }
                products
            },
            horizon_days: 2,
            rotation_seconds: 30,
            clock_skew_seconds: 60,
            now: ticketing_service::now(),
        };
        let cluster = cluster::generate(&spec, &mut rand::rng(), &mut |_, _| {}).unwrap();
        cluster.write(dir.path(), false).unwrap();
        let payments = cluster.payments.sign_key().unwrap();
        let mut nodes = Vec::new();
        let mut served_nodes = Vec::new();
        for (listener, i) in listeners.into_iter().zip(1u16..) {
            let node = Node::open(&settings, dir.path(), i).await.unwrap();
            let serving = node.clone();
            served_nodes.push(Served::on(listener, move |l, stop| {
                serving.serve(l, async move {
                    let _ = stop.await;
                })
            }));
            nodes.push(node);
        }
        let coordinator = Coordinator::open(&settings, dir.path()).await.unwrap();
        let api = Some(Served::start(coordinator.router()).await);
        Some(Self {
            dir,
            settings,
            cluster,
            payments,
            nodes,
            served_nodes,
            coordinator,
            api,
        })
    }

    fn base(&self) -> &str {
        &self.api.as_ref().unwrap().url
    }

    fn keyset(&self, product: &str) -> KeysetId {
        let now = ticketing_service::now();
        self.cluster
            .manifest
            .keysets
            .iter()
            .find(|k| k.params.product == product && k.is_valid_at(now))
            .unwrap()
            .id
    }

    fn price(&self, product: &str) -> u64 {
        self.cluster.manifest.product(product).unwrap().price
    }

    /// Pay for `count` tickets of `product` (a receipt signed with the payments key) and have
    /// `at` (node indices) issue them.
    async fn buy(&self, product: &str, count: u32, at: &[usize]) -> Purchase {
        let mut rng = rand::rng();
        let keyset_id = self.keyset(product);
        let holders: Vec<HolderSecret> = (0..count)
            .map(|_| HolderSecret::generate(&mut rng))
            .collect();
        let blinded: Vec<_> = holders
            .iter()
            .map(|h| issuance::blind(&keyset_id, &h.public_key(), &mut rng).0)
            .collect();
        let now = ticketing_service::now();
        let receipt = Receipt {
            receipt_id: Id16::random(&mut rng),
            keyset_id,
            count,
            digest: blinded_digest(&blinded),
            amount: self.price(product) * u64::from(count),
            currency: "EUR".into(),
            issued_at: now,
            expires_at: now + 600,
        }
        .sign(&self.payments);
        let purchase = Purchase {
            request: IssueRequest { receipt, blinded },
            keyset_id,
            holders,
        };
        self.issue_at(&purchase, at).await;
        purchase
    }

    async fn issue_at(&self, purchase: &Purchase, at: &[usize]) {
        for &i in at {
            self.nodes[i - 1]
                .issue(purchase.request.clone(), ticketing_service::now())
                .await
                .unwrap();
        }
    }

    /// Stop the coordinator and open a new one over the same database and cluster.
    async fn restart_coordinator(&mut self) {
        if let Some(api) = self.api.take() {
            api.stop().await;
        }
        self.coordinator = Coordinator::open(&self.settings, self.dir.path())
            .await
            .unwrap();
        self.api = Some(Served::start(self.coordinator.router()).await);
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (Status, String) {
        let mut req = reqwest::Client::new().get(format!("{}{path}", self.base()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> Status {
        reqwest::Client::new()
            .post(format!("{}{path}", self.base()))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn feed(&self, token: &str, query: &str) -> PartnerFeed {
        let (status, body) = self
            .get(&format!("/v1/partner/feed{query}"), Some(token))
            .await;
        assert_eq!(status, Status::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn token(&self, name: &str, role: TokenRole) -> String {
        let (token, _) = ticketing_coordinator::register(&self.settings, name, role, false)
            .await
            .unwrap();
        token.expose().to_owned()
    }

    async fn stop(mut self) {
        if let Some(api) = self.api.take() {
            api.stop().await;
        }
        for n in self.served_nodes.drain(..) {
            n.stop().await;
        }
    }
}

/// What a webhook receiver saw.
#[derive(Debug, Default)]
struct Received {
    /// The secret it verifies with (set once the partner is added and the secret printed).
    secret: String,
    /// Every request.
    calls: u32,
    /// Requests whose signature did not verify under the receiver's secret.
    bad_signatures: u32,
    /// Events answered 200, in arrival order.
    accepted: Vec<PartnerEvent>,
}

/// A partner's webhook endpoint: verifies `Ticketing-Signature` with its secret (400 if it
/// does not verify), answers 500 to the first `fail_first` well-signed requests, then 200.
struct Receiver {
    seen: Arc<Mutex<Received>>,
    served: Served,
}

#[derive(Clone)]
struct ReceiverState {
    fail_first: u32,
    seen: Arc<Mutex<Received>>,
}

async fn hook(State(s): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut seen = s.seen.lock().unwrap();
    seen.calls += 1;
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // The coordinator is driven with a test clock up to minutes ahead: a wide tolerance.
    if verify_webhook(
        &seen.secret,
        signature,
        &body,
        ticketing_service::now(),
        3600,
    )
    .is_err()
    {
        seen.bad_signatures += 1;
        return StatusCode::BAD_REQUEST;
    }
    let event: PartnerEvent = serde_json::from_slice(&body).unwrap();
    let id: u64 = headers[EVENT_ID_HEADER].to_str().unwrap().parse().unwrap();
    assert_eq!(id, event.id, "Ticketing-Event-Id names the body's event");
    let good = seen.calls - seen.bad_signatures;
    if good <= s.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    seen.accepted.push(event);
    StatusCode::OK
}

impl Receiver {
    async fn start(fail_first: u32) -> Self {
        let seen = Arc::new(Mutex::new(Received::default()));
        let state = ReceiverState {
            fail_first,
            seen: seen.clone(),
        };
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(state);
        Self {
            seen,
            served: Served::start(router).await,
        }
    }

    fn url(&self) -> String {
        format!("{}/hook", self.served.url)
    }

    fn verify_with(&self, secret: &str) {
        secret.clone_into(&mut self.seen.lock().unwrap().secret);
    }

    fn calls(&self) -> u32 {
        self.seen.lock().unwrap().calls
    }

    fn bad_signatures(&self) -> u32 {
        self.seen.lock().unwrap().bad_signatures
    }

    fn accepted(&self) -> Vec<PartnerEvent> {
        self.seen.lock().unwrap().accepted.clone()
    }

    fn accepted_ids(&self) -> Vec<u64> {
        self.accepted().iter().map(|e| e.id).collect()
    }
}

async fn add_partner(
    rig: &Rig,
    name: &str,
    products: &[&str],
    webhook: Option<&str>,
) -> ticketing_coordinator::partner::NewPartner {
    let products: Vec<String> = products.iter().map(|p| (*p).to_owned()).collect();
    ticketing_coordinator::partner::add_partner(&rig.settings, name, &products, webhook)
        .await
        .unwrap()
}

fn ids(feed: &PartnerFeed) -> Vec<u64> {
    feed.events.iter().map(|e| e.id).collect()
}

async fn deliver(rig: &Rig, at: u64) -> DeliveryReport {
    rig.coordinator.deliver_webhooks(at).await.unwrap()
}

async fn feed_webhooks_and_restart(db: Db) {
    let Some(mut rig) = Rig::start(db, "partner_feed", |s| {
        s.coordinator.webhook_max_attempts = 3;
    })
    .await
    else {
        return;
    };
    // metro owns single and day; its receiver fails twice, then accepts. bus owns week; its
    // receiver verifies with the wrong secret (metro's). tram reads the feed only.
    let metro_hook = Receiver::start(2).await;
    let bus_hook = Receiver::start(0).await;
    let metro = add_partner(&rig, "metro", &["single", "day"], Some(&metro_hook.url())).await;
    let bus = add_partner(&rig, "bus", &["week"], Some(&bus_hook.url())).await;
    let tram = add_partner(&rig, "tram", &["single"], None).await;
    let metro_secret = metro.webhook_secret.as_ref().unwrap().expose();
    assert!(metro_secret.starts_with("whsec_"));
    assert!(tram.webhook_secret.is_none());
    assert_eq!(
        rig.coordinator.webhook_secret(&metro.partner.id).expose(),
        metro_secret,
        "deliveries are signed with the secret printed at `partner add`"
    );
    assert_ne!(bus.webhook_secret.as_ref().unwrap().expose(), metro_secret);
    assert!(
        !format!("{metro:?}").contains(metro_secret),
        "Debug redacts"
    );
    assert!(
        !format!("{metro:?}").contains(metro.token.expose()),
        "Debug redacts"
    );
    metro_hook.verify_with(metro_secret);
    bus_hook.verify_with(metro_secret);
    let metro_token = metro.token.expose().to_owned();
    let bus_token = bus.token.expose().to_owned();
    let tram_token = tram.token.expose().to_owned();
    assert!(metro_token.starts_with("tkp_"));

    // Three purchases reach t = 2 logs; one is logged by a single node only.
    let singles = rig.buy("single", 2, &[1, 2]).await;
    let day = rig.buy("day", 1, &[1, 2, 3]).await;
    let week = rig.buy("week", 1, &[2, 3]).await;
    let lonely = rig.buy("single", 1, &[1]).await;
    let t0 = ticketing_service::now();
    let report = rig.coordinator.follow_issuance(t0).await.unwrap();
    assert_eq!((report.nodes_reached, report.recorded), (3, 3));
    assert_eq!(
        rig.coordinator.follow_issuance(t0).await.unwrap().recorded,
        0
    );

    // An operator revokes one of the singles: an event at the product's price, no serial.
    let admin = rig.token("ops", TokenRole::Admin).await;
    let revoked = serial(&singles.keyset_id, &singles.holders[0].public_key());
    let status = rig
        .post(
            "/v1/admin/revoke",
            &admin,
            &json!({ "keyset_id": singles.keyset_id, "serial": revoked }),
        )
        .await;
    assert_eq!(status, Status::OK);
    // Revoking it again is no new event.
    rig.post(
        "/v1/admin/revoke",
        &admin,
        &json!({ "keyset_id": singles.keyset_id, "serial": revoked }),
    )
    .await;

    // The feeds: each partner sees its products only.
    let (status, raw) = rig.get("/v1/partner/feed", Some(&metro_token)).await;
    assert_eq!(status, Status::OK, "{raw}");
    assert!(
        !raw.contains(&revoked.to_string()),
        "a serial in the feed: {raw}"
    );
    for h in singles.holders.iter().chain(&day.holders) {
        assert!(!raw.contains(&hex::encode(h.public_key().as_bytes())));
    }
    let feed: PartnerFeed = serde_json::from_str(&raw).unwrap();
    assert_eq!(feed.partner, "metro");
    let kinds: Vec<_> = feed
        .events
        .iter()
        .map(|e| (e.product.as_str(), e.kind, e.tickets, e.amount))
        .collect();
    assert_eq!(
        kinds,
        vec![
            // One follower pass records its receipts in log order.
            (
                "single",
                EventKind::Issued {
                    receipt_id: singles.receipt_id()
                },
                2,
                500
            ),
            (
                "day",
                EventKind::Issued {
                    receipt_id: day.receipt_id()
                },
                1,
                700
            ),
            (
                "single",
                EventKind::Revoked {
                    reason: DenyReason::Revoked
                },
                1,
                rig.price("single")
            ),
        ]
    );
    assert!(feed.events.iter().all(|e| e.currency == "EUR"));
    assert!(feed.events[..2].iter().all(|e| e.time == t0));
    assert_eq!(feed.next_after, feed.events[2].id);
    let totals: Vec<_> = feed
        .totals
        .iter()
        .map(|t| {
            (
                t.product.as_str(),
                t.issued_tickets,
                t.issued_amount,
                t.revoked_tickets,
                t.revoked_amount,
            )
        })
        .collect();
    assert_eq!(
        totals,
        vec![("day", 1, 700, 0, 0), ("single", 2, 500, 1, 250)]
    );
    let bus_feed = rig.feed(&bus_token, "").await;
    assert_eq!(bus_feed.events.len(), 1);
    assert_eq!(
        bus_feed.events[0].kind,
        EventKind::Issued {
            receipt_id: week.receipt_id()
        }
    );
    let tram_feed = rig.feed(&tram_token, "").await;
    assert_eq!(ids(&tram_feed), vec![feed.events[0].id, feed.events[2].id]);

    // Pagination: after and limit.
    let first = rig.feed(&metro_token, "?limit=2").await;
    assert_eq!(ids(&first), ids(&feed)[..2].to_vec());
    assert_eq!(first.next_after, feed.events[1].id);
    let rest = rig
        .feed(
            &metro_token,
            &format!("?after={}&limit=2", first.next_after),
        )
        .await;
    assert_eq!(ids(&rest), ids(&feed)[2..].to_vec());
    let end = rig
        .feed(&metro_token, &format!("?after={}", rest.next_after))
        .await;
    assert!(end.events.is_empty());
    assert_eq!(
        end.next_after, rest.next_after,
        "an empty page keeps the cursor"
    );
    assert_eq!(
        end.totals, feed.totals,
        "totals cover every event, not the page"
    );
    let (status, _) = rig
        .get("/v1/partner/feed?limit=x", Some(&metro_token))
        .await;
    assert_eq!(status, Status::BAD_REQUEST);

    // Webhooks, with a test clock. Attempt 1 at t0 fails for both.
    let r = deliver(&rig, t0).await;
    assert_eq!((r.delivered, r.failed, r.skipped), (0, 2, 0));
    assert_eq!((metro_hook.calls(), bus_hook.calls()), (1, 1));
    // Backoff: nothing is due again until t0 + 1.
    assert_eq!(deliver(&rig, t0).await, DeliveryReport::default());
    assert_eq!((metro_hook.calls(), bus_hook.calls()), (1, 1));
    let r = deliver(&rig, t0 + 1).await;
    assert_eq!((r.delivered, r.failed, r.skipped), (0, 2, 0));
    // The second failure doubles the delay: t0 + 3.
    assert_eq!(deliver(&rig, t0 + 2).await, DeliveryReport::default());
    let r = deliver(&rig, t0 + 3).await;
    // metro's third attempt succeeds and the rest follow in order; bus's third bad signature
    // exhausts its attempts: the event is skipped.
    assert_eq!((r.delivered, r.failed, r.skipped), (3, 1, 1));
    assert_eq!(metro_hook.accepted_ids(), ids(&feed));
    assert_eq!(
        metro_hook.accepted(),
        feed.events,
        "the body is the feed's event"
    );
    assert_eq!(metro_hook.calls(), 5, "two failures, then three deliveries");
    assert_eq!((bus_hook.calls(), bus_hook.bad_signatures()), (3, 3));
    assert!(bus_hook.accepted().is_empty());
    // Nothing more to send; a skipped event stays readable in the feed.
    assert_eq!(deliver(&rig, t0 + 600).await, DeliveryReport::default());
    assert_eq!(rig.feed(&bus_token, "").await.events, bus_feed.events);
    let partners = ticketing_coordinator::partner::list_partners(&rig.settings)
        .await
        .unwrap();
    let state: Vec<_> = partners
        .iter()
        .map(|p| {
            let w = p.webhook.as_ref();
            (
                p.name.as_str(),
                w.map(|w| (w.cursor, w.delivered, w.skipped)),
            )
        })
        .collect();
    assert_eq!(
        state,
        vec![
            ("bus", Some((bus_feed.events[0].id, 0, 1))),
            ("metro", Some((feed.next_after, 3, 0))),
            ("tram", None),
        ]
    );

    // Restart: the follower reads every log from the start again; nothing is recorded twice
    // and nothing already delivered is sent again.
    rig.restart_coordinator().await;
    let report = rig.coordinator.follow_issuance(t0 + 700).await.unwrap();
    assert_eq!((report.nodes_reached, report.recorded), (3, 0));
    assert_eq!(rig.feed(&metro_token, "").await.events, feed.events);
    assert_eq!(deliver(&rig, t0 + 700).await, DeliveryReport::default());
    assert_eq!(metro_hook.calls(), 5);
    // A second node now logs the lonely purchase, and a new one comes: both reach t, each is
    // delivered once, after the ones before.
    rig.issue_at(&lonely, &[3]).await;
    let later = rig.buy("single", 3, &[2, 3]).await;
    let report = rig.coordinator.follow_issuance(t0 + 710).await.unwrap();
    assert_eq!(report.recorded, 2);
    let r = deliver(&rig, t0 + 710).await;
    assert_eq!((r.delivered, r.failed, r.skipped), (2, 0, 0));
    let accepted = metro_hook.accepted();
    assert_eq!(accepted.len(), 5);
    let mut new: Vec<_> = accepted[3..]
        .iter()
        .map(|e| (e.kind, e.tickets, e.time))
        .collect();
    new.sort_by_key(|(_, tickets, _)| *tickets);
    assert_eq!(
        new,
        vec![
            (
                EventKind::Issued {
                    receipt_id: lonely.receipt_id()
                },
                1,
                t0 + 710
            ),
            (
                EventKind::Issued {
                    receipt_id: later.receipt_id()
                },
                3,
                t0 + 710
            ),
        ]
    );
    assert!(
        accepted.windows(2).all(|w| w[0].id < w[1].id),
        "in id order"
    );
    assert_eq!(deliver(&rig, t0 + 720).await, DeliveryReport::default());

    // Who may read a feed: partner tokens only.
    let validator = rig.token("gate", TokenRole::Validator).await;
    let auditor = rig.token("books", TokenRole::Auditor).await;
    for token in [
        None,
        Some("tkp_nope"),
        Some(validator.as_str()),
        Some(admin.as_str()),
        Some(auditor.as_str()),
    ] {
        let (status, body) = rig.get("/v1/partner/feed", token).await;
        assert_eq!(status, Status::UNAUTHORIZED, "{token:?}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "unauthorized");
    }
    // And partner tokens open nothing else.
    let (status, _) = rig.get("/v1/admin/stats", Some(&metro_token)).await;
    assert_eq!(status, Status::UNAUTHORIZED);
    let status = rig
        .post(
            "/v1/redeem",
            &metro_token,
            &json!({ "scan_id": Id16([1; 16]), "payload": "x", "scanned_at": 1 }),
        )
        .await;
    assert_eq!(status, Status::UNAUTHORIZED);
    rig.stop().await;
}

async fn auditor_tokens_are_read_only(db: Db) {
    let Some(rig) = Rig::start(db, "auditor", |_| {}).await else {
        return;
    };
    let purchase = rig.buy("day", 2, &[1, 3]).await;
    let auditor = rig.token("books", TokenRole::Auditor).await;
    let admin = rig.token("ops", TokenRole::Admin).await;
    let validator = rig.token("gate", TokenRole::Validator).await;
    assert!(auditor.starts_with("tkr_"), "{auditor}");
    // The auditor reads the stats (issued comes from the node logs).
    let (status, body) = rig.get("/v1/admin/stats", Some(&auditor)).await;
    assert_eq!(status, Status::OK, "{body}");
    let stats: Value = serde_json::from_str(&body).unwrap();
    let row = stats["keysets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["keyset_id"] == purchase.keyset_id.to_string().as_str())
        .unwrap()
        .clone();
    assert_eq!(row["issued"], 2);
    let (status, admin_body) = rig.get("/v1/admin/stats", Some(&admin)).await;
    assert_eq!(status, Status::OK);
    assert_eq!(serde_json::from_str::<Value>(&admin_body).unwrap(), stats);
    // Validators still may not.
    let (status, _) = rig.get("/v1/admin/stats", Some(&validator)).await;
    assert_eq!(status, Status::UNAUTHORIZED);
    // Nothing that writes or lists serials is open to the auditor.
    let revoke = json!({
        "keyset_id": purchase.keyset_id,
        "serial": serial(&purchase.keyset_id, &purchase.holders[0].public_key()),
    });
    assert_eq!(
        rig.post("/v1/admin/revoke", &auditor, &revoke).await,
        Status::UNAUTHORIZED
    );
    assert_eq!(
        rig.post("/v1/admin/bloom/rebuild", &auditor, &json!({}))
            .await,
        Status::UNAUTHORIZED
    );
    let (status, _) = rig.get("/v1/admin/deny", Some(&auditor)).await;
    assert_eq!(status, Status::UNAUTHORIZED);
    let scan = json!({ "scan_id": Id16([1; 16]), "payload": "x", "scanned_at": 1 });
    assert_eq!(
        rig.post("/v1/redeem", &auditor, &scan).await,
        Status::UNAUTHORIZED
    );
    assert_eq!(
        rig.post("/v1/sync", &auditor, &json!({ "scans": [scan] }))
            .await,
        Status::UNAUTHORIZED
    );
    // The same revoke with the admin token goes through.
    assert_eq!(
        rig.post("/v1/admin/revoke", &admin, &revoke).await,
        Status::OK
    );
    rig.stop().await;
}

/// `serve` runs the follower and the delivery loop by itself; a second coordinator serving
/// the same database at the same time (scale-out) delivers nothing twice: only the holder of
/// the lease follows the logs and delivers.
async fn the_served_coordinator_follows_and_delivers(db: Db) {
    let Some(mut rig) = Rig::start(db, "served", |s| {
        s.coordinator.issuance_poll_seconds = 1;
    })
    .await
    else {
        return;
    };
    let hook = Receiver::start(1).await;
    let partner = add_partner(&rig, "metro", &["single"], Some(&hook.url())).await;
    hook.verify_with(partner.webhook_secret.as_ref().unwrap().expose());
    // Replace the plain router with the full service.
    rig.api.take().unwrap().stop().await;
    let coordinator = rig.coordinator.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    rig.api = Some(Served::on(listener, move |l, stop| {
        coordinator.serve(l, async move {
            let _ = stop.await;
        })
    }));
    let second = Coordinator::open(&rig.settings, rig.dir.path())
        .await
        .unwrap();
    let now = ticketing_service::now();
    assert!(rig.coordinator.leads(now).await.unwrap());
    assert!(!second.leads(now).await.unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second_served = Served::on(listener, move |l, stop| {
        second.serve(l, async move {
            let _ = stop.await;
        })
    });
    let purchase = rig.buy("single", 1, &[2, 3]).await;
    // Wait (bounded) for the background loops: one failure, a 1 s backoff, one delivery.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while hook.accepted().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let accepted = hook.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(
        accepted[0].kind,
        EventKind::Issued {
            receipt_id: purchase.receipt_id()
        }
    );
    assert!(
        hook.calls() >= 2,
        "the first delivery failed and was retried"
    );
    // Both loops keep running: nothing more arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        hook.accepted().len(),
        1,
        "delivered once, by one coordinator"
    );
    assert_eq!(hook.calls(), 2, "one failure, one delivery");
    second_served.stop().await;
    rig.stop().await;
}

/// Each case's backend.
async fn backend(dbs: &ticketing_service::test_support::TestDatabases) -> Option<Db> {
    Some(match dbs.backend() {
        ticketing_service::db::Backend::Sqlite => Db::Sqlite,
        ticketing_service::db::Backend::Postgres => Db::Postgres,
    })
}

ticketing_service::on_both_databases!(
    backend;
    feed_webhooks_and_restart,
    auditor_tokens_are_read_only,
    the_served_coordinator_follows_and_delivers,
);
