//! The stores' one way to their database (ADR-0020). A store's rules are plain Rust over
//! [`Database`], [`Tx`] and [`Conn`], which all run a [`Query`] through the [`Executor`] trait:
//! SQL written once with `$n` placeholders (both sqlx drivers read them), arguments as
//! [`Value`]s, rows read by column name. What the two databases differ in beyond their
//! migrations is [`Dialect`], data the rules ask. Also: the one [`StoreError`], the pools'
//! settings, and fresh Postgres databases for tests.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Executor as _, PgPool, SqlitePool};

mod error;
mod sql;

pub use error::{StoreError, to_i64, to_u64};
pub use sql::{Conn, Database, Executor, Migrations, Query, Row, Tx, Value, query};
pub use ticketing_config::{Backend, backend_of};

/// What the stores' SQL differs in between the two databases, as data: a store asks its
/// database's dialect, never compares strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    /// Which database.
    pub backend: Backend,
    /// What opens a transaction that will write. SQLite's `BEGIN IMMEDIATE` takes the write
    /// lock up front, so concurrent writers queue on the busy timeout instead of failing to
    /// upgrade a read snapshot; Postgres' plain `BEGIN` (read committed) relies on row locks.
    pub begin_write: &'static str,
    /// The database runs one write transaction at a time (SQLite): a store serializes its own
    /// writers in memory rather than have them wait on the file lock.
    pub one_writer: bool,
}

impl Dialect {
    /// SQLite.
    pub const SQLITE: Self = Self {
        backend: Backend::Sqlite,
        begin_write: "BEGIN IMMEDIATE",
        one_writer: true,
    };

    /// Postgres.
    pub const POSTGRES: Self = Self {
        backend: Backend::Postgres,
        begin_write: "BEGIN",
        one_writer: false,
    };

    /// Whether this is Postgres (for the few statements only it has).
    pub fn is_postgres(&self) -> bool {
        self.backend == Backend::Postgres
    }
}

/// Open a SQLite pool: WAL, `synchronous = FULL` (an answered write survives a power cut),
/// foreign keys on, and a busy timeout so concurrent writers queue instead of failing.
pub async fn sqlite(url: &str) -> Result<SqlitePool, sqlx::Error> {
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(opts)
        .await
}

/// Open a Postgres pool.
pub async fn postgres(url: &str) -> Result<PgPool, sqlx::Error> {
    let opts = PgConnectOptions::from_str(url)?;
    // Say within seconds, and where, when the server is not there (the pool would wait out
    // its acquire timeout and report only "pool timed out").
    let (host, port) = (opts.get_host().to_owned(), opts.get_port());
    let unreachable = |reason: String| {
        sqlx::Error::Configuration(
            format!(
                "cannot reach Postgres at {host}:{port} ({reason}); is it running, and is the \
                 database URL right?"
            )
            .into(),
        )
    };
    match tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::Connection::connect_with(&opts),
    )
    .await
    {
        Err(_) => return Err(unreachable("no answer within 5 s".into())),
        Ok(Err(e @ (sqlx::Error::Io(_) | sqlx::Error::Tls(_)))) => {
            return Err(unreachable(e.to_string()));
        }
        Ok(Err(e)) => return Err(e),
        Ok(Ok(conn)) => {
            let conn: sqlx::PgConnection = conn;
            let _ = sqlx::Connection::close(conn).await;
        }
    }
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
}

/// Environment variable naming a Postgres server for tests (`.ci/run` sets it; the role must
/// be allowed to create databases).
pub const TEST_POSTGRES_ENV: &str = "TICKETING_TEST_POSTGRES_URL";

/// For tests: a fresh, empty database on the server named by [`TEST_POSTGRES_ENV`], or `None`
/// when the variable is unset. When `TICKETING_REQUIRE_POSTGRES=1` (CI), an unset variable is
/// an error instead, so the Postgres suites cannot be skipped silently.
pub async fn fresh_test_postgres(tag: &str) -> Result<Option<String>, String> {
    let Ok(base) = std::env::var(TEST_POSTGRES_ENV) else {
        if std::env::var("TICKETING_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
            return Err(format!(
                "TICKETING_REQUIRE_POSTGRES=1 but {TEST_POSTGRES_ENV} is not set"
            ));
        }
        eprintln!("note: {TEST_POSTGRES_ENV} unset, the Postgres run of `{tag}` did not happen");
        return Ok(None);
    };
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .map_err(|e| format!("connect {base}: {e}"))?;
    let suffix: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()) ^ d.as_secs());
    let name = format!(
        "t_{}_{}_{suffix:x}",
        tag.chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>(),
        std::process::id()
    );
    conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
        .map_err(|e| format!("create database {name}: {e}"))?;
    Ok(Some(with_database(&base, &name)))
}

/// `postgres://user:pw@host:port/old?x=y` with the database replaced by `name`.
fn with_database(base: &str, name: &str) -> String {
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let (head, rest) = match base[authority_start..].find('/') {
        Some(i) => base.split_at(authority_start + i),
        None => (base, ""),
    };
    let query = rest.find('?').map_or("", |q| &rest[q..]);
    format!("{head}/{name}{query}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_names_are_replaced() {
        use super::with_database;
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "t1"),
            "postgres://u:p@h:5432/t1"
        );
        assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
        assert_eq!(
            with_database("postgresql://h/db?sslmode=disable", "t"),
            "postgresql://h/t?sslmode=disable"
        );
    }
}

#[cfg(test)]
mod reach_tests {
    /// A Postgres that is not there is named, host and port, within seconds.
    #[tokio::test]
    async fn an_unreachable_postgres_is_named_at_once() {
        let started = std::time::Instant::now();
        let e = super::postgres("postgres://u:p@127.0.0.1:1/db")
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("127.0.0.1:1"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(6));
    }
}
