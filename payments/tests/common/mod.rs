//! Shared fixtures for the HTTP tests: a dealt cluster, a payments service on 127.0.0.1:0 with
//! a SQLite file, and a JSON client.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use reqwest::StatusCode;
use serde_json::{Value, json};
use ticketing_config::Settings;
use ticketing_config::cluster::{self, Cluster, SetupSpec};
use ticketing_config::products::ProductsFile;
use ticketing_crypto::issuance;
use ticketing_crypto::keyset::KeysetId;
use ticketing_crypto::ticket::HolderSecret;
use ticketing_payments::card::{Processor, StubProcessor};
use ticketing_payments::store::open_store;
use ticketing_payments::{Payments, PaymentsStore};
use ticketing_protocol::manifest::Manifest;
use ticketing_protocol::receipt::{Receipt, SignedReceipt, blinded_digest};
use ticketing_protocol::{Digest32, Id16};
use tokio::sync::oneshot;

pub const DAY: u64 = 86_400;

/// A 1-of-1 cluster with the built-in products (single 250, day 700, week 2500 EUR) for the
/// next three days, plus keysets whose windows ended weeks ago.
pub fn test_cluster(seed: u64) -> Cluster {
    let now = ticketing_service::now();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let spec = SetupSpec {
        node_urls: vec!["http://127.0.0.1:7611".into()],
        threshold: 1,
        payments_url: "http://127.0.0.1:7600".into(),
        coordinator_url: "http://127.0.0.1:7601".into(),
        products: ProductsFile::builtin(),
        horizon_days: 3,
        rotation_seconds: 30,
        clock_skew_seconds: 60,
        now,
    };
    let mut c = cluster::generate(&spec, &mut rng, &mut |_, _| {}).unwrap();
    cluster::extend(&mut c, 1, now - 70 * DAY, &mut rng, &mut |_, _| {}).unwrap();
    c
}

/// The keyset of `product` on sale now (today's window, or the next one in the last part of
/// a window: the product's `min_remaining_minutes`).
pub fn current_keyset(manifest: &Manifest, product: &str) -> KeysetId {
    manifest
        .on_sale(product, ticketing_service::now())
        .unwrap()
        .id
}

/// A keyset of `product` whose window has ended.
pub fn ended_keyset(manifest: &Manifest, product: &str) -> KeysetId {
    let now = ticketing_service::now();
    manifest
        .keysets
        .iter()
        .find(|k| k.params.product == product && k.params.valid_until <= now)
        .unwrap()
        .id
}

/// The digest of `count` real blinded points for `keyset`, as a wallet computes it.
pub fn digest(rng: &mut ChaCha20Rng, keyset: &KeysetId, count: u32) -> Digest32 {
    let points: Vec<_> = (0..count)
        .map(|_| {
            let holder = HolderSecret::generate(rng).public_key();
            issuance::blind(keyset, &holder, rng).0
        })
        .collect();
    blinded_digest(&points)
}

/// A running payments service.
pub struct Server {
    pub url: String,
    pub payments: Payments,
    pub cluster: Cluster,
    pub settings: Settings,
    pub rng: ChaCha20Rng,
    pub client: reqwest::Client,
    /// The stub processor, when the test built it (not for [`Server::serve`]).
    pub stub: Option<Arc<StubProcessor>>,
    /// Holds the SQLite database (and its WAL files).
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Deal a cluster, open a SQLite store in a temp dir, serve on 127.0.0.1:0.
    pub async fn start(seed: u64) -> Self {
        Self::start_on(seed, String::new()).await
    }

    /// [`Server::start`] with the store at `database_url` (empty: SQLite in the temp dir).
    pub async fn start_on(seed: u64, database_url: String) -> Self {
        let stub = Arc::new(StubProcessor::new());
        let mut s = Self::start_with(seed, database_url, stub.clone()).await;
        s.stub = Some(stub);
        s
    }

    /// [`Server::start_on`] with another card processor.
    pub async fn start_with(
        seed: u64,
        database_url: String,
        processor: Arc<dyn Processor>,
    ) -> Self {
        Self::start_configured(seed, database_url, processor, |s| {
            // Many checkouts from one address: the limits have their own test.
            s.http.requests_per_minute = 0;
            s.payments.checkouts_per_minute = 0;
            s.payments.voucher_failures_per_hour = 0;
        })
        .await
    }

    /// [`Server::start_with`] with the settings changed by `configure`.
    pub async fn start_configured(
        seed: u64,
        database_url: String,
        processor: Arc<dyn Processor>,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        let cluster = test_cluster(seed);
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            data_dir: dir.path().to_owned(),
            ..Settings::default()
        };
        settings.payments.max_tickets_per_checkout = 10;
        settings.payments.database_url = database_url;
        configure(&mut settings);
        let store: Arc<dyn PaymentsStore> =
            open_store(&settings.payments_database_url()).await.unwrap();
        let payments = Payments::with_processor(
            cluster.manifest.clone(),
            cluster.payments.sign_key().unwrap(),
            store,
            processor,
            &settings,
        )
        .unwrap();
        Self::serve(payments, cluster, settings, dir, seed).await
    }

    /// Serve an already built [`Payments`].
    pub async fn serve(
        payments: Payments,
        cluster: Cluster,
        settings: Settings,
        dir: tempfile::TempDir,
        seed: u64,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(ticketing_payments::serve(
            listener,
            payments.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            url,
            payments,
            cluster,
            settings,
            rng: ChaCha20Rng::seed_from_u64(seed + 1000),
            client: reqwest::Client::new(),
            stub: None,
            dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.cluster.manifest
    }

    /// A fresh digest of `count` blinded points for `keyset`.
    pub fn digest(&mut self, keyset: &KeysetId, count: u32) -> Digest32 {
        digest(&mut self.rng, keyset, count)
    }

    /// POST a JSON value to /v1/checkout.
    pub async fn checkout(&self, body: &Value) -> (StatusCode, Value) {
        answer(
            self.client
                .post(format!("{}/v1/checkout", self.url))
                .json(body),
        )
        .await
    }

    /// POST raw bytes as JSON to /v1/checkout.
    pub async fn checkout_raw(&self, bytes: Vec<u8>) -> (StatusCode, Value) {
        answer(
            self.client
                .post(format!("{}/v1/checkout", self.url))
                .header("content-type", "application/json")
                .body(bytes),
        )
        .await
    }

    /// How many charges the stub processor made.
    pub fn charges(&self) -> usize {
        self.stub.as_ref().unwrap().charges()
    }

    /// GET /v1/receipts/{digest} with `digest` as given.
    pub async fn lookup(&self, digest: &str) -> (StatusCode, Value) {
        answer(
            self.client
                .get(format!("{}/v1/receipts/{digest}", self.url)),
        )
        .await
    }

    /// Store a receipt signed with the payments key that expired `ago` seconds ago, for
    /// `digest`, as if a checkout had issued it long ago.
    pub async fn plant_expired(
        &self,
        keyset: &KeysetId,
        count: u32,
        digest: &Digest32,
        amount: u64,
        ago: u64,
    ) -> SignedReceipt {
        let now = ticketing_service::now();
        let receipt = Receipt {
            receipt_id: Id16::random(&mut rand::rng()),
            keyset_id: *keyset,
            count,
            digest: *digest,
            amount,
            currency: "EUR".into(),
            issued_at: now - ago - self.settings.payments.receipt_ttl_seconds,
            expires_at: now - ago,
        }
        .sign(&self.cluster.payments.sign_key().unwrap());
        let outcome = self
            .payments
            .store()
            .checkout(&receipt, None)
            .await
            .unwrap();
        assert_eq!(outcome.receipt(), Some(&receipt));
        receipt
    }

    /// The Prometheus text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stop serving and wait for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// A checkout body paying by card.
pub fn card_body(
    product: &str,
    keyset: &KeysetId,
    count: u32,
    digest: &Digest32,
    number: &str,
) -> Value {
    json!({
        "product": product,
        "keyset_id": keyset,
        "count": count,
        "digest": digest,
        "payment": {"method": "card", "number": number},
    })
}

/// A checkout body paying by voucher.
pub fn voucher_body(
    product: &str,
    keyset: &KeysetId,
    count: u32,
    digest: &Digest32,
    code: &str,
) -> Value {
    json!({
        "product": product,
        "keyset_id": keyset,
        "count": count,
        "digest": digest,
        "payment": {"method": "voucher", "code": code},
    })
}

/// Assert an error answer's status and code; returns the detail.
#[track_caller]
pub fn assert_error(answer: &(StatusCode, Value), status: u16, code: &str) -> String {
    assert_eq!(answer.0.as_u16(), status, "{}", answer.1);
    assert_eq!(answer.1["code"], code, "{}", answer.1);
    answer.1["detail"].as_str().unwrap().to_owned()
}

/// Send a request and return its status and JSON body.
async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = request.send().await.unwrap();
    let status = resp.status();
    let body = resp.json().await.unwrap();
    (status, body)
}
