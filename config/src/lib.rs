//! Layered configuration for every service: built-in defaults, then a TOML file, then
//! `TICKETING_*` environment variables (nested keys with `__`, e.g.
//! `TICKETING_NODE__LISTEN=0.0.0.0:8080`), then [`Settings::validate`].
//!
//! `ticketing config example` prints [`EXAMPLE`], a commented file whose values are the
//! defaults; a test keeps the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub mod cluster;
pub mod compose;
pub mod products;

/// A configuration that could not be loaded or does not make sense.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Figment could not read or parse a layer; the message names the key and the source.
    #[error("{0}")]
    Load(Box<figment::Error>),
    /// A file could not be read or written (the OS error is in the message, once).
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// There is no cluster where one was looked for.
    #[error(
        "no cluster in {0}: run `ticketing demo` (a whole cluster on this machine) or \
         `ticketing setup`, or point TICKETING_DATA_DIR (or `data_dir` in the configuration) at \
         an existing one"
    )]
    NoCluster(PathBuf),
    /// A cluster file is not what `ticketing setup` writes.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Setup would overwrite an existing cluster.
    #[error("{0} already holds a cluster; pass --force to replace it (the old keys are lost)")]
    AlreadyExists(PathBuf),
    /// Key generation failed.
    #[error(transparent)]
    Crypto(#[from] ticketing_crypto::CryptoError),
    /// A value is out of range; `key` is its dotted path.
    #[error("invalid `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `http.body_limit_bytes`.
        key: &'static str,
        /// What is wrong and what would be right.
        reason: String,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        Self::Load(Box::new(e))
    }
}

/// Everything the `ticketing` services read. Each process uses the sections it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Directory holding `ticketing setup`'s output and the SQLite databases.
    pub data_dir: PathBuf,
    /// Where a service reads its own secret bundle (`node-<i>.json`, `payments.json`,
    /// `coordinator.json`); unset: `secrets/` in `data_dir`, as `ticketing setup` writes it.
    /// Compose mounts each service's one secret in `/run/secrets`.
    pub secrets_dir: Option<PathBuf>,
    /// Logging.
    pub log: LogSettings,
    /// HTTP limits shared by every service.
    pub http: HttpSettings,
    /// An issuer node.
    pub node: NodeSettings,
    /// The payments service.
    pub payments: PaymentsSettings,
    /// The coordinator.
    pub coordinator: CoordinatorSettings,
    /// `ticketing demo`.
    pub demo: DemoSettings,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `tracing` filter directive, e.g. `info` or `ticketing_node=debug,info`. `RUST_LOG`, when
    /// set, takes its place.
    pub filter: String,
    /// `text` (one line per event; colours only on a terminal) or `json` (one object per line,
    /// for log collectors).
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// HTTP limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// Browser origins allowed by CORS (the wallet and validator PWAs).
    pub cors_origins: Vec<String>,
    /// Client-side timeout for one request to a service, in milliseconds.
    pub request_timeout_ms: u64,
    /// Requests one client may make per minute to a service (every route but `/health` and
    /// `/metrics`); over it: 429 `rate_limited` with `Retry-After`. 0: no limit. Clients are
    /// told apart in memory only, by a keyed hash of their address, never stored or logged.
    pub requests_per_minute: u32,
    /// Take the client's address from the last `X-Forwarded-For` hop (behind nginx); else the
    /// connection's peer.
    pub trust_forwarded_for: bool,
    /// Serve `/metrics` on this address instead of the service's own (e.g. an internal
    /// interface the public proxy does not reach). One service per process (`ticketing node`,
    /// `payments`, `coordinator`); the demo keeps metrics on each service's address.
    pub metrics_listen: Option<SocketAddr>,
}

/// An issuer node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// Which node this process is (its share index), for `ticketing node`.
    pub index: u16,
    /// Listen address.
    pub listen: SocketAddr,
    /// `sqlite://...` or `postgres://...`; empty: SQLite file `node-<index>.db` in `data_dir`.
    pub database_url: String,
    /// Largest number of tickets in one issue request.
    pub max_tickets_per_request: u32,
    /// Sign a log checkpoint after this many new entries.
    pub checkpoint_every: u64,
}

/// The payments service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// `sqlite://...` or `postgres://...`; empty: SQLite file `payments.db` in `data_dir`.
    pub database_url: String,
    /// How long a receipt can be redeemed at the nodes, in seconds.
    pub receipt_ttl_seconds: u64,
    /// Largest number of tickets in one checkout.
    pub max_tickets_per_checkout: u32,
    /// Checkouts one client may start per minute (0: no limit).
    pub checkouts_per_minute: u32,
    /// Refused voucher codes (mistyped, unknown, used) one client may try per hour before its
    /// voucher checkouts are refused with 429 for a while (0: no limit).
    pub voucher_failures_per_hour: u32,
}

/// The coordinator: spent ledger, redemption, offline sync, Bloom publication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// `sqlite://...` or `postgres://...`; empty: SQLite file `coordinator.db` in `data_dir`.
    pub database_url: String,
    /// Largest number of scans in one batch redeem or sync request.
    pub max_scans_per_request: u32,
    /// The Bloom filter is sized for at least this many serials.
    pub bloom_capacity: u32,
    /// The Bloom filter's false-positive rate, in (0, 1).
    pub bloom_fp_rate: f64,
    /// Bring the Bloom filter up to date and publish it this often, in seconds (also on demand
    /// by an admin; it is rebuilt whole only when serials must leave it or it outgrew its size).
    pub bloom_rebuild_seconds: u64,
    /// Ledger rows and deny entries of a keyset are deleted this long after its window ends
    /// (late offline syncs of it are still recorded until then), in seconds.
    pub prune_after_seconds: u64,
    /// Two scans of one pass by different validators closer in time than this are flagged as
    /// suspected sharing, in seconds.
    pub sharing_window_seconds: u64,
    /// Read the nodes' issuance logs this often for new purchases (partner feed, stats), in
    /// seconds.
    pub issuance_poll_seconds: u64,
    /// Timeout of one partner webhook delivery, in milliseconds.
    pub webhook_timeout_ms: u64,
    /// Deliveries of one event tried before it is skipped (backoff 1 s, doubling, at most
    /// 5 min); a skipped event stays readable in the feed.
    pub webhook_max_attempts: u32,
    /// How this coordinator reaches the nodes to follow their issuance logs, in index order
    /// (e.g. `http://node-1:8080` on a compose network); empty: the URLs in the manifest,
    /// which are the ones wallets use.
    pub node_urls: Vec<String>,
}

/// `ticketing demo`: the whole cluster in one process on loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoSettings {
    /// Number of issuer nodes n.
    pub nodes: u16,
    /// Threshold t.
    pub threshold: u16,
    /// First port: payments on it, the coordinator on +1, node i on +10+i.
    pub base_port: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("ticketing-data"),
            secrets_dir: None,
            log: LogSettings::default(),
            http: HttpSettings::default(),
            node: NodeSettings::default(),
            payments: PaymentsSettings::default(),
            coordinator: CoordinatorSettings::default(),
            demo: DemoSettings::default(),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            filter: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            body_limit_bytes: 64 * 1024,
            cors_origins: Vec::new(),
            request_timeout_ms: 5_000,
            requests_per_minute: 1200,
            trust_forwarded_for: false,
            metrics_listen: None,
        }
    }
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            index: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7611)),
            database_url: String::new(),
            max_tickets_per_request: 50,
            checkpoint_every: 100,
        }
    }
}

impl Default for PaymentsSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7600)),
            database_url: String::new(),
            receipt_ttl_seconds: 600,
            max_tickets_per_checkout: 50,
            checkouts_per_minute: 20,
            voucher_failures_per_hour: 10,
        }
    }
}

impl Default for CoordinatorSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7601)),
            database_url: String::new(),
            max_scans_per_request: 1000,
            bloom_capacity: 100_000,
            bloom_fp_rate: 0.001,
            bloom_rebuild_seconds: 60,
            prune_after_seconds: 7 * 24 * 3600,
            sharing_window_seconds: 300,
            issuance_poll_seconds: 10,
            webhook_timeout_ms: 5_000,
            webhook_max_attempts: 12,
            node_urls: Vec::new(),
        }
    }
}

impl Default for DemoSettings {
    fn default() -> Self {
        Self {
            nodes: 5,
            threshold: 3,
            base_port: 7600,
        }
    }
}

/// Top-level keys, the only ones the environment layer reads.
const SECTIONS: [&str; 8] = [
    "data_dir",
    "secrets_dir",
    "log",
    "http",
    "node",
    "payments",
    "coordinator",
    "demo",
];

/// The commented example printed by `ticketing config example`. Every value is the default.
pub const EXAMPLE: &str = include_str!("example.toml");

impl Settings {
    /// Defaults, then `file` (if given; it must exist), then `TICKETING_*` variables, validated.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Self::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid {
                    key: "--config",
                    reason: format!("file {} does not exist", path.display()),
                });
            }
            if path.is_dir() {
                return Err(ConfigError::Invalid {
                    key: "--config",
                    reason: format!(
                        "{} is a directory; give the TOML file (`ticketing config example > \
                         ticketing.toml` writes one)",
                        path.display()
                    ),
                });
            }
            fig = fig.merge(Toml::file(path));
        }
        // Only variables that name a setting: TICKETING_CONFIG (the --config flag) and the
        // test harness's TICKETING_TEST_* are not settings and must not be refused as unknown.
        let known = Figment::from(Serialized::defaults(Self::default()));
        let env = Env::prefixed("TICKETING_").split("__").filter(move |key| {
            // Keys keep the variable's case here.
            let key = key.as_str().to_ascii_lowercase();
            // `<KEY>_FILE` is read by `from_files`.
            if let Some(stem) = key.strip_suffix("_file")
                && known.find_value(&stem.replace("__", ".")).is_ok()
            {
                return false;
            }
            let top = key.split(['.', '_']).next().unwrap_or_default();
            let top = match top {
                "data" => "data_dir",
                "secrets" => "secrets_dir",
                other => other,
            };
            SECTIONS.contains(&top)
        });
        let fig = fig.merge(env);
        let fig = from_files(fig, std::env::vars_os())?;
        // Addresses are checked here so that a bad one is named with its value (the generic
        // error names the key only).
        for key in ["node.listen", "payments.listen", "coordinator.listen"] {
            if let Ok(value) = fig.find_value(key)
                && let Some(text) = value.as_str()
                && text.parse::<SocketAddr>().is_err()
            {
                return Err(ConfigError::Invalid {
                    key: match key {
                        "node.listen" => "node.listen",
                        "payments.listen" => "payments.listen",
                        _ => "coordinator.listen",
                    },
                    reason: format!(
                        "`{text}` is not a listen address such as 127.0.0.1:7611 or 0.0.0.0:7611"
                    ),
                });
            }
        }
        let settings: Self = fig.extract()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Check ranges and formats; errors name the key and say what would be accepted.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_http()?;
        check_database_url("node.database_url", &self.node.database_url)?;
        check_database_url("payments.database_url", &self.payments.database_url)?;
        self.validate_node()?;
        self.validate_payments()?;
        self.validate_coordinator()?;
        self.validate_demo()
    }

    /// The `http` section: body limit, request timeout, CORS origins.
    fn validate_http(&self) -> Result<(), ConfigError> {
        if !(1024..=16 * 1024 * 1024).contains(&self.http.body_limit_bytes) {
            return invalid("http.body_limit_bytes", "must be between 1024 and 16777216");
        }
        if self.http.request_timeout_ms == 0 {
            return invalid("http.request_timeout_ms", "must be positive");
        }
        for origin in &self.http.cors_origins {
            let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.trim_end_matches('/').contains(['?', '#'])
                && origin.matches('/').count() == 2;
            if !ok {
                return Err(ConfigError::Invalid {
                    key: "http.cors_origins",
                    reason: format!("`{origin}` is not an origin (scheme://host[:port], no path)"),
                });
            }
        }
        Ok(())
    }

    /// The `node` section (its database URL is checked by [`Settings::validate`]).
    fn validate_node(&self) -> Result<(), ConfigError> {
        if self.node.index == 0 {
            return invalid("node.index", "node indices start at 1");
        }
        if !(1..=MAX_TICKETS_PER_REQUEST).contains(&self.node.max_tickets_per_request) {
            return invalid("node.max_tickets_per_request", "must be between 1 and 1000");
        }
        if self.node.checkpoint_every == 0 {
            return invalid("node.checkpoint_every", "must be positive");
        }
        Ok(())
    }

    /// The `payments` section (its database URL is checked by [`Settings::validate`]).
    fn validate_payments(&self) -> Result<(), ConfigError> {
        if self.payments.receipt_ttl_seconds < 10 {
            return invalid("payments.receipt_ttl_seconds", "must be at least 10");
        }
        if !(1..=1000).contains(&self.payments.max_tickets_per_checkout) {
            return invalid(
                "payments.max_tickets_per_checkout",
                "must be between 1 and 1000",
            );
        }
        if self.payments.max_tickets_per_checkout > self.node.max_tickets_per_request {
            return invalid(
                "payments.max_tickets_per_checkout",
                "must not exceed node.max_tickets_per_request (nodes would refuse paid receipts)",
            );
        }
        Ok(())
    }

    /// The `coordinator` section, its database URL first.
    fn validate_coordinator(&self) -> Result<(), ConfigError> {
        check_database_url("coordinator.database_url", &self.coordinator.database_url)?;
        let c = &self.coordinator;
        if !(1..=10_000).contains(&c.max_scans_per_request) {
            return invalid(
                "coordinator.max_scans_per_request",
                "must be between 1 and 10000",
            );
        }
        if !(1..=100_000_000).contains(&c.bloom_capacity) {
            return invalid(
                "coordinator.bloom_capacity",
                "must be between 1 and 100000000",
            );
        }
        if !(c.bloom_fp_rate > 0.0 && c.bloom_fp_rate < 0.5) {
            return invalid("coordinator.bloom_fp_rate", "must be in (0, 0.5)");
        }
        if c.bloom_rebuild_seconds == 0 {
            return invalid("coordinator.bloom_rebuild_seconds", "must be positive");
        }
        if c.issuance_poll_seconds == 0 {
            return invalid("coordinator.issuance_poll_seconds", "must be positive");
        }
        if !(100..=60_000).contains(&c.webhook_timeout_ms) {
            return invalid(
                "coordinator.webhook_timeout_ms",
                "must be between 100 and 60000",
            );
        }
        if !(1..=100).contains(&c.webhook_max_attempts) {
            return invalid(
                "coordinator.webhook_max_attempts",
                "must be between 1 and 100",
            );
        }
        for url in &c.node_urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    key: "coordinator.node_urls",
                    reason: format!("`{url}` is not an http(s) URL"),
                });
            }
        }
        Ok(())
    }

    /// The `demo` section: threshold within the node count, node ports within range.
    fn validate_demo(&self) -> Result<(), ConfigError> {
        if self.demo.threshold < 1 || self.demo.threshold > self.demo.nodes {
            return invalid("demo.threshold", "must be between 1 and demo.nodes");
        }
        if usize::from(self.demo.base_port) + 10 + usize::from(self.demo.nodes) > 65535 {
            return invalid("demo.base_port", "the node ports would exceed 65535");
        }
        Ok(())
    }

    /// The directory holding this service's secret bundle (see [`Settings::secrets_dir`]).
    pub fn secrets_in(&self, cluster_dir: &Path) -> PathBuf {
        self.secrets_dir
            .clone()
            .unwrap_or_else(|| cluster_dir.join(cluster::SECRETS))
    }

    /// The database URL for a node: the configured one, or a SQLite file in `data_dir`.
    pub fn node_database_url(&self, index: u16) -> String {
        or_sqlite(
            &self.node.database_url,
            &self.data_dir,
            &format!("node-{index}.db"),
        )
    }

    /// The database URL for the coordinator.
    pub fn coordinator_database_url(&self) -> String {
        or_sqlite(
            &self.coordinator.database_url,
            &self.data_dir,
            "coordinator.db",
        )
    }

    /// The database URL for the payments service.
    pub fn payments_database_url(&self) -> String {
        or_sqlite(&self.payments.database_url, &self.data_dir, "payments.db")
    }
}

/// `TICKETING_<KEY>_FILE=path` sets `<KEY>` to the file's contents (trailing whitespace
/// removed), for values that are secrets (a database URL with its password): compose and
/// systemd hand those over as files, not as variables that `ps e` and crash dumps show. Only
/// keys that exist are read this way; a variable naming a file that cannot be read is an error
/// naming the variable.
fn from_files(
    fig: Figment,
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<Figment, ConfigError> {
    let known = Figment::from(Serialized::defaults(Settings::default()));
    let mut fig = fig;
    for (name, path) in vars {
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name
            .strip_prefix("TICKETING_")
            .and_then(|n| n.strip_suffix("_FILE"))
        else {
            continue;
        };
        let key = stem.to_ascii_lowercase().replace("__", ".");
        if known.find_value(&key).is_err() {
            continue;
        }
        let path = PathBuf::from(path);
        let value = std::fs::read_to_string(&path).map_err(|error| ConfigError::Io {
            path: path.clone(),
            error,
        })?;
        fig = fig.merge(Serialized::global(&key, value.trim_end()));
    }
    Ok(fig)
}

fn or_sqlite(configured: &str, dir: &Path, file: &str) -> String {
    if configured.is_empty() {
        format!("sqlite://{}?mode=rwc", dir.join(file).display())
    } else {
        configured.to_owned()
    }
}

/// A validation error for `key`.
fn invalid(key: &'static str, reason: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        reason: reason.to_owned(),
    })
}

/// The most tickets any node may be configured to sign in one request
/// (`node.max_tickets_per_request`); a wallet asking for more is refused before it blinds
/// anything.
pub const MAX_TICKETS_PER_REQUEST: u32 = 1000;

/// Which database a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite:...`
    Sqlite,
    /// `postgres://...` or `postgresql://...`
    Postgres,
}

/// The backend a database URL names, if any: the one rule every service and check uses.
pub fn backend_of(url: &str) -> Option<Backend> {
    if url.starts_with("sqlite:") {
        Some(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Some(Backend::Postgres)
    } else {
        None
    }
}

fn check_database_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    if url.is_empty() || backend_of(url).is_some() {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            reason: "must start with sqlite:, postgres:// or postgresql://".to_owned(),
        })
    }
}

#[cfg(test)]
// figment's Jail API returns its (large) error type by value; not ours to change.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn the_example_parses_to_the_defaults() {
        let parsed: Settings = Figment::from(Toml::string(EXAMPLE)).extract().unwrap();
        assert_eq!(parsed, Settings::default());
        Settings::default().validate().unwrap();
    }

    #[test]
    fn a_bad_listen_address_is_named_with_its_value_and_a_directory_is_no_config() {
        Jail::expect_with(|jail| {
            jail.set_env("TICKETING_NODE__LISTEN", "nonsense:port");
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(
                e.contains("node.listen") && e.contains("`nonsense:port`"),
                "{e}"
            );
            jail.set_env("TICKETING_NODE__LISTEN", "127.0.0.1:7611");
            jail.create_file("t.toml", "[payments]\nlisten = \"localhost\"\n")?;
            let e = Settings::load(Some(Path::new("t.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("payments.listen") && e.contains("`localhost`"),
                "{e}"
            );
            let e = Settings::load(Some(Path::new(".")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("is a directory"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn file_then_env_override_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "data_dir = \"/srv/t\"\n[node]\nindex = 3\n[demo]\nnodes = 7\n",
            )?;
            jail.set_env("TICKETING_NODE__INDEX", "4");
            jail.set_env("TICKETING_HTTP__BODY_LIMIT_BYTES", "2048");
            let s = Settings::load(Some(Path::new("t.toml"))).unwrap();
            assert_eq!(s.data_dir, PathBuf::from("/srv/t"));
            assert_eq!(s.node.index, 4);
            assert_eq!(s.demo.nodes, 7);
            assert_eq!(s.http.body_limit_bytes, 2048);
            assert_eq!(s.payments, PaymentsSettings::default());
            Ok(())
        });
    }

    #[test]
    fn a_secret_setting_can_come_from_a_file() {
        Jail::expect_with(|jail| {
            jail.create_file("db-url", "postgres://node1:s3cret@postgres/node1\n")?;
            jail.set_env("TICKETING_NODE__DATABASE_URL_FILE", "db-url");
            jail.set_env("TICKETING_SECRETS_DIR", "/run/secrets");
            let s = Settings::load(None).unwrap();
            assert_eq!(
                s.node.database_url,
                "postgres://node1:s3cret@postgres/node1"
            );
            assert_eq!(s.secrets_in(Path::new("/c")), PathBuf::from("/run/secrets"));
            // The value is checked like any other.
            jail.create_file("bad-url", "mysql://x")?;
            jail.set_env("TICKETING_NODE__DATABASE_URL_FILE", "bad-url");
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(e.contains("node.database_url"), "{e}");
            jail.set_env("TICKETING_NODE__DATABASE_URL_FILE", "missing");
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(e.contains("missing"), "{e}");
            Ok(())
        });
        assert_eq!(
            Settings::default().secrets_in(Path::new("/c")),
            PathBuf::from("/c/secrets")
        );
    }

    #[test]
    fn node_urls_come_as_a_list_in_one_variable() {
        Jail::expect_with(|jail| {
            // As docker-compose.yml folds it: a space after a comma.
            jail.set_env(
                "TICKETING_COORDINATOR__NODE_URLS",
                r#"["http://node-1:8080","http://node-2:8080", "http://node-3:8080"]"#,
            );
            let s = Settings::load(None).unwrap();
            assert_eq!(
                s.coordinator.node_urls,
                [
                    "http://node-1:8080",
                    "http://node-2:8080",
                    "http://node-3:8080"
                ]
            );
            jail.set_env("TICKETING_COORDINATOR__NODE_URLS", r#"["node-1:8080"]"#);
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(e.contains("coordinator.node_urls"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn other_ticketing_variables_are_not_settings() {
        Jail::expect_with(|jail| {
            jail.set_env("TICKETING_CONFIG", "/etc/ticketing.toml");
            jail.set_env("TICKETING_TEST_POSTGRES_URL", "postgres://x");
            jail.set_env("TICKETING_REQUIRE_POSTGRES", "1");
            jail.set_env("TICKETING_DATA_DIR", "/srv/d");
            let s = Settings::load(None).unwrap();
            assert_eq!(s.data_dir, PathBuf::from("/srv/d"));
            Ok(())
        });
    }

    #[test]
    fn bad_values_get_errors_naming_the_key() {
        Jail::expect_with(|jail| {
            jail.set_env("TICKETING_DEMO__THRESHOLD", "6");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("demo.threshold"), "{err}");
            jail.set_env("TICKETING_DEMO__THRESHOLD", "3");
            jail.set_env("TICKETING_NODE__DATABASE_URL", "mysql://x");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("node.database_url"), "{err}");
            jail.set_env("TICKETING_NODE__DATABASE_URL", "");
            jail.set_env("TICKETING_HTTP__CORS_ORIGINS", "[\"http://x.test/app\"]");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("cors_origins"), "{err}");
            jail.set_env("TICKETING_HTTP__CORS_ORIGINS", "[]");
            jail.set_env("TICKETING_COORDINATOR__WEBHOOK_MAX_ATTEMPTS", "0");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("coordinator.webhook_max_attempts"), "{err}");
            jail.set_env("TICKETING_COORDINATOR__WEBHOOK_MAX_ATTEMPTS", "3");
            jail.set_env("TICKETING_COORDINATOR__ISSUANCE_POLL_SECONDS", "0");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("coordinator.issuance_poll_seconds"), "{err}");
            jail.set_env("TICKETING_COORDINATOR__ISSUANCE_POLL_SECONDS", "1");
            jail.set_env("TICKETING_COORDINATOR__WEBHOOK_TIMEOUT_MS", "5");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("coordinator.webhook_timeout_ms"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_reported() {
        Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[node]\nlisten = \"not an address\"\n")?;
            let err = Settings::load(Some(Path::new("t.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("listen"), "{err}");
            jail.create_file("u.toml", "[nodes]\nindex = 1\n")?;
            let err = Settings::load(Some(Path::new("u.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("nodes"), "{err}");
            let err = Settings::load(Some(Path::new("missing.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("does not exist"), "{err}");
            Ok(())
        });
    }
}
