//! Shared by the end-to-end tests: clusters on loopback, captured logs.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ticketing_client::Client;
use ticketing_config::Settings;
use ticketing_coordinator::TokenRole;
use ticketing_crypto::ticket::{HolderSecret, Ticket};
use ticketing_local::{Databases, LocalCluster};
use ticketing_protocol::receipt::PaymentMethod;
use ticketing_service::db::Backend;
use ticketing_service::test_support::TestDatabases;

/// The PWA origin the test clusters allow (CORS).
pub(crate) const WALLET_ORIGIN: &str = "http://wallet.test:8080";

/// Which database the services use.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Db {
    Sqlite,
    Postgres,
}

/// A running cluster and the directory it lives in (removed on drop).
pub(crate) struct TestCluster {
    pub(crate) cluster: LocalCluster,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestCluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.cluster
    }
}

impl std::ops::DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.cluster
    }
}

impl TestCluster {
    pub(crate) fn client(&self) -> Client {
        Client::new(
            self.cluster.cluster.manifest.clone(),
            Duration::from_secs(10),
        )
        .unwrap()
    }
}

/// The test card that succeeds.
pub(crate) fn card() -> PaymentMethod {
    PaymentMethod::Card {
        number: "4242424242424242".into(),
    }
}

/// Buy `count` tickets of `product` with the test card that succeeds.
pub(crate) async fn buy(
    c: &TestCluster,
    product: &str,
    count: usize,
) -> Vec<(Ticket, HolderSecret)> {
    let client = c.client();
    let secrets: Vec<_> = (0..count)
        .map(|_| HolderSecret::generate(&mut rand::rng()))
        .collect();
    let holders: Vec<_> = secrets.iter().map(HolderSecret::public_key).collect();
    let purchase = client
        .buy(
            product,
            &holders,
            card(),
            ticketing_service::now(),
            &mut rand::rng(),
        )
        .await
        .unwrap();
    purchase.tickets.into_iter().zip(secrets).collect()
}

/// A coordinator token of `role`, registered the way `ticketing validator register` does.
pub(crate) async fn token(c: &TestCluster, name: &str, role: TokenRole) -> String {
    let (token, _) = ticketing_coordinator::register(&c.cluster.settings, name, role, false)
        .await
        .unwrap();
    token.expose().to_owned()
}

/// Start an n-node threshold-t cluster; `None` when the Postgres run is not configured here
/// (an error instead under `TICKETING_REQUIRE_POSTGRES=1`, as in CI).
pub(crate) async fn start(db: Db, nodes: u16, threshold: u16) -> Option<TestCluster> {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let databases = match db {
        Db::Sqlite => Databases::default(),
        Db::Postgres => {
            let fresh = |tag: String| async move {
                ticketing_service::db::fresh_test_postgres(&tag)
                    .await
                    .unwrap()
            };
            let payments = fresh("payments".into()).await?;
            let coordinator = fresh("coordinator".into()).await?;
            let mut node_dbs = Vec::new();
            for i in 1..=nodes {
                node_dbs.push(fresh(format!("node{i}")).await?);
            }
            Databases {
                payments: Some(payments),
                coordinator: Some(coordinator),
                nodes: node_dbs,
            }
        }
    };
    let mut settings = Settings::default();
    settings.http.cors_origins = vec![WALLET_ORIGIN.to_owned()];
    let cluster = LocalCluster::start(dir.path(), nodes, threshold, settings, databases)
        .await
        .unwrap();
    Some(TestCluster { cluster, _dir: dir })
}

/// Everything every service logged in this test binary (all tests share one subscriber).
pub(crate) fn logs() -> String {
    let buf = LOGS.get_or_init(Default::default).lock().unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Send every service's logs, at debug level, into a buffer the tests can search.
pub(crate) fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let buf = LOGS.get_or_init(Default::default).clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug,sqlx=warn,hyper=warn,reqwest=warn,h2=warn")
            .with_ansi(false)
            .with_writer(move || Capture(buf.clone()))
            .try_init();
    });
}

/// The fixture of `on_both_databases!`: an n-node threshold-t cluster on the case's backend
/// (`None`: the Postgres run is not configured here).
pub(crate) async fn cluster(
    dbs: &TestDatabases,
    nodes: u16,
    threshold: u16,
) -> Option<TestCluster> {
    let db = match dbs.backend() {
        Backend::Sqlite => Db::Sqlite,
        Backend::Postgres => Db::Postgres,
    };
    start(db, nodes, threshold).await
}

/// `POST path` with `body` to the coordinator under an admin `token`; it must succeed.
pub(crate) async fn admin_post(c: &TestCluster, token: &str, path: &str, body: serde_json::Value) {
    let base = &c.cluster.coordinator.as_ref().unwrap().url;
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
}
