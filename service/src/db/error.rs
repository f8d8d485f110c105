//! The one error of every store, and the integer conversions every store needs.

/// What can go wrong in a store: the database did not do what was asked and a retry may
/// succeed (`Unavailable`), it refused the statement and a retry would not (`Refused`), what
/// it holds cannot be read (`Corrupt`), or a unique name is in use (`Taken`). In every case
/// nothing of the failed operation was kept. The services answer the first `unavailable`;
/// the others are reported as what they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached, timed out, was busy, or lost a conflict with a
    /// concurrent transaction (a deadlock, a serialization failure).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused the statement: a constraint it breaks or SQL it cannot run. A
    /// retry gives the same answer: a bug, or a conflict the caller was prepared for.
    #[error("database refused: {0}")]
    Refused(String),
    /// A stored row does not decode (tampering or a bug): reported, never papered over.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A unique name is in use (nothing was changed).
    #[error("`{0}` is taken")]
    Taken(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            // What the database answered does not fit what the code reads: the data, not the
            // connection, is wrong.
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::TypeNotFound { .. } => Self::Corrupt(e.to_string()),
            sqlx::Error::Database(ref db) if !transient(db.as_ref()) => {
                Self::Refused(e.to_string())
            }
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// Whether a database error says "not now" rather than "not this".
fn transient(e: &dyn sqlx::error::DatabaseError) -> bool {
    let code = e.code();
    if e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        postgres_transient(code.as_deref())
    } else {
        sqlite_transient(code.as_deref())
    }
}

/// SQLite: busy and locked (primary codes 5 and 6, any extended form), I/O, full disk and
/// cannot-open (10, 13, 14).
fn sqlite_transient(code: Option<&str>) -> bool {
    code.and_then(|c| c.parse::<u32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14))
}

/// Postgres: SQLSTATE classes 08 (connection), 40 (rollback: serialization, deadlock), 53
/// (resources), 57 (operator intervention) and 58 (system).
fn postgres_transient(code: Option<&str>) -> bool {
    code.is_some_and(|c| {
        ["08", "40", "53", "57", "58"]
            .iter()
            .any(|class| c.starts_with(class))
    })
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        use sqlx::migrate::MigrateError as M;
        match e {
            // Tables this service's migrations did not make: another service's database, or
            // another version's.
            M::VersionMismatch(v) | M::VersionMissing(v) => Self::Refused(format!(
                "migrations: this database's migration {v} is not this service's (is the URL \
                 another service's database, or one written by another version?); give each \
                 service its own database"
            )),
            other => Self::Unavailable(format!("migrations: {other}")),
        }
    }
}

impl StoreError {
    /// The same error, its message prefixed with where it happened.
    pub fn context(self, what: &str) -> Self {
        match self {
            Self::Unavailable(m) => Self::Unavailable(format!("{what}: {m}")),
            Self::Refused(m) => Self::Refused(format!("{what}: {m}")),
            Self::Corrupt(m) => Self::Corrupt(format!("{what}: {m}")),
            Self::Taken(m) => Self::Taken(m),
        }
    }
}

impl From<ticketing_protocol::ProtocolError> for StoreError {
    fn from(e: ticketing_protocol::ProtocolError) -> Self {
        Self::Corrupt(e.to_string())
    }
}

/// A count or time for a signed 64-bit column.
pub fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{v} does not fit the database")))
}

/// A signed 64-bit column read back as the count or time it holds.
pub fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative value {v}")))
}

#[cfg(test)]
mod tests {
    use super::StoreError;
    use crate::db::{Database, Migrations, query};

    /// A database that does not answer is unavailable (retry), a row that does not read is
    /// corrupt (report), a statement the database refuses is refused: none reads as another.
    #[tokio::test]
    async fn a_down_database_is_unavailable_a_bad_row_corrupt_a_broken_rule_refused() {
        let down = crate::db::postgres("postgres://u:p@127.0.0.1:1/db")
            .await
            .unwrap_err();
        assert!(matches!(StoreError::from(down), StoreError::Unavailable(_)));
        assert!(matches!(
            StoreError::from(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        let db = Database::open("sqlite::memory:", &Migrations::NONE)
            .await
            .unwrap();
        let row = query("SELECT 'text' AS n").fetch_one(&db).await.unwrap();
        assert!(matches!(row.get::<i64>("n"), Err(StoreError::Corrupt(_))));
        assert!(matches!(row.get::<i64>("m"), Err(StoreError::Corrupt(_))));
        // One connection (an in-memory database is the connection's own).
        let mut tx = db.begin_write().await.unwrap();
        query("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            .execute(&mut tx)
            .await
            .unwrap();
        let insert = || query("INSERT INTO t (k) VALUES ($1)").bind(1_i64);
        assert_eq!(insert().execute(&mut tx).await, Ok(1));
        let again = insert().execute(&mut tx).await;
        assert!(matches!(again, Err(StoreError::Refused(_))), "{again:?}");
        let nonsense = query("SELEC 1").execute(&mut tx).await;
        assert!(
            matches!(nonsense, Err(StoreError::Refused(_))),
            "{nonsense:?}"
        );
    }

    #[test]
    fn busy_and_lost_conflicts_are_transient_constraints_are_not() {
        for code in ["5", "517", "6", "13"] {
            assert!(super::sqlite_transient(Some(code)), "{code}");
        }
        for code in ["19", "2067", "1555", "1"] {
            assert!(!super::sqlite_transient(Some(code)), "{code}");
        }
        for code in ["40001", "40P01", "57P01", "08006", "53300"] {
            assert!(super::postgres_transient(Some(code)), "{code}");
        }
        for code in ["23505", "23503", "42601", "42P01"] {
            assert!(!super::postgres_transient(Some(code)), "{code}");
        }
        assert!(!super::sqlite_transient(None) && !super::postgres_transient(None));
    }
}
