//! What the suites that run on both databases share (feature `test-support`, for tests only):
//! a test case's databases ([`TestDatabases`]) and [`on_both_databases!`](crate::on_both_databases),
//! which makes one `#[tokio::test]` per case and backend. Written once here; each crate's
//! conformance suite and the end-to-end suites use it.

use std::path::Path;

use crate::db::{Backend, fresh_test_postgres};

/// One test case's databases on one backend: SQLite files in a temporary directory of the
/// case's own (removed when this is dropped), or fresh databases on the Postgres server
/// [`crate::db::TEST_POSTGRES_ENV`] names. Always kept alive for the whole case.
#[derive(Debug)]
pub struct TestDatabases {
    backend: Backend,
    case: &'static str,
    dir: tempfile::TempDir,
}

impl TestDatabases {
    /// The databases of test `case` on `backend`. Panics without a temporary directory (test
    /// code: a panic is how a test fails).
    #[expect(
        clippy::expect_used,
        reason = "test support: a failed fixture fails the test"
    )]
    pub fn new(backend: Backend, case: &'static str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the test's databases");
        Self { backend, case, dir }
    }

    /// The backend this case runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The case's temporary directory (SQLite files, cluster directories).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The URL of a new, empty database `name` for this case. `None` on Postgres when no
    /// server is configured (the case is skipped with a note); a panic when one is required
    /// (`TICKETING_REQUIRE_POSTGRES=1`) but not configured, or cannot be reached.
    #[expect(
        clippy::panic,
        reason = "test support: a failed fixture fails the test"
    )]
    pub async fn url(&self, name: &str) -> Option<String> {
        match self.backend {
            Backend::Sqlite => Some(format!("sqlite://{}/{name}.db", self.dir.path().display())),
            Backend::Postgres => {
                // Postgres names are at most 63 bytes; the server's database gets a suffix.
                let tag: String = format!("{}_{name}", self.case).chars().take(30).collect();
                match fresh_test_postgres(&tag).await {
                    Ok(url) => url,
                    Err(e) => panic!("a Postgres database for {}: {e}", self.case),
                }
            }
        }
    }
}

/// One `#[tokio::test]` per case and backend: `sqlite::<case>` always, `postgres::<case>` when
/// a Postgres server is configured (required under `TICKETING_REQUIRE_POSTGRES=1`).
///
/// `on_both_databases!(fixture; case_a, case_b(arg, ...), ...)` calls, in the module it is
/// invoked in, `fixture(&TestDatabases, args...) -> Option<T>` (an `async fn`, named in or
/// imported into that module; `None` skips the case), then `case(T)` (an `async fn`), while
/// the databases are kept alive. `on_both_databases!(fixture(args...); case_a, case_b)` gives
/// every case the same arguments. The caller needs `tokio` with its `macros` feature.
#[macro_export]
macro_rules! on_both_databases {
    ($fixture:ident; $($case:ident $(($($arg:expr),* $(,)?))?),* $(,)?) => {
        $crate::on_both_databases!(@on sqlite Sqlite $fixture; $($case $(($($arg),*))?),*);
        $crate::on_both_databases!(@on postgres Postgres $fixture; $($case $(($($arg),*))?),*);
    };
    // The same arguments for every case: given to each.
    ($fixture:ident $args:tt; $($case:ident),* $(,)?) => {
        $crate::on_both_databases!($fixture; $($case $args),*);
    };
    // One backend's module of cases.
    (@on $module:ident $backend:ident $fixture:ident; $($case:ident $(($($arg:expr),*))?),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let dbs = $crate::test_support::TestDatabases::new(
                        $crate::db::Backend::$backend,
                        stringify!($case),
                    );
                    if let Some(fixture) = super::$fixture(&dbs $($(, $arg)*)?).await {
                        super::$case(fixture).await;
                    }
                }
            )*
        }
    };
}
