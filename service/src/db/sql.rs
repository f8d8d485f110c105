//! Statements over either database, written once. A [`Query`] is SQL with `$n` placeholders
//! and its [`Value`]s; an [`Executor`] runs it: the pool ([`Database`]), one connection
//! ([`Conn`]) or a transaction ([`Tx`]). Rows come back as [`Row`]s read by column name.
//! The two backends appear only in this file, one match arm each.

use std::borrow::Cow;
use std::future::Future;

use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool};

use super::{Backend, Dialect, StoreError, backend_of};

/// One argument of a statement. A NULL keeps its type: Postgres checks it against the column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A 64-bit integer (`INTEGER` / `BIGINT`).
    Int(Option<i64>),
    /// Text (`TEXT`).
    Text(Option<String>),
    /// Bytes (`BLOB` / `BYTEA`).
    Bytes(Option<Vec<u8>>),
    /// A boolean (`BOOLEAN` on Postgres; SQLite stores 0 or 1).
    Bool(Option<bool>),
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Self::Bool(Some(v))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(Some(v))
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Self::Int(Some(i64::from(v)))
    }
}

impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        Self::Int(v)
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Text(Some(v))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(Some(v.to_owned()))
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Self::Text(Some(v.clone()))
    }
}

impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Self {
        Self::Text(v)
    }
}

impl From<Option<&str>> for Value {
    fn from(v: Option<&str>) -> Self {
        Self::Text(v.map(str::to_owned))
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Self::Bytes(Some(v))
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Self::Bytes(Some(v.to_vec()))
    }
}

impl<const N: usize> From<&[u8; N]> for Value {
    fn from(v: &[u8; N]) -> Self {
        Self::Bytes(Some(v.to_vec()))
    }
}

impl From<Option<&[u8]>> for Value {
    fn from(v: Option<&[u8]>) -> Self {
        Self::Bytes(v.map(<[u8]>::to_vec))
    }
}

impl From<Option<Vec<u8>>> for Value {
    fn from(v: Option<Vec<u8>>) -> Self {
        Self::Bytes(v)
    }
}

/// A statement and its arguments. The SQL uses `$1`, `$2`, ... on both databases.
#[derive(Debug, Clone)]
#[must_use = "a query does nothing until it is executed"]
pub struct Query {
    sql: Cow<'static, str>,
    args: Vec<Value>,
}

/// A statement to bind arguments to and run.
pub fn query(sql: impl Into<Cow<'static, str>>) -> Query {
    Query {
        sql: sql.into(),
        args: Vec::new(),
    }
}

impl Query {
    /// The next argument (`$1` first).
    pub fn bind(mut self, value: impl Into<Value>) -> Self {
        self.args.push(value.into());
        self
    }

    /// The SQL text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Run it; the number of rows it changed.
    pub fn execute<'e, E: Executor<'e>>(
        self,
        on: E,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send + 'e {
        on.execute(self)
    }

    /// Run it; every row it returns.
    pub fn fetch_all<'e, E: Executor<'e>>(
        self,
        on: E,
    ) -> impl Future<Output = Result<Vec<Row>, StoreError>> + Send + 'e {
        on.fetch_all(self)
    }

    /// Run it; its first row, if any.
    pub fn fetch_optional<'e, E: Executor<'e>>(
        self,
        on: E,
    ) -> impl Future<Output = Result<Option<Row>, StoreError>> + Send + 'e {
        on.fetch_optional(self)
    }

    /// Run it; its first row, which must exist.
    pub fn fetch_one<'e, E: Executor<'e>>(
        self,
        on: E,
    ) -> impl Future<Output = Result<Row, StoreError>> + Send + 'e {
        let row = on.fetch_optional(self);
        async move {
            row.await?
                .ok_or_else(|| StoreError::from(sqlx::Error::RowNotFound))
        }
    }

    /// This query as a sqlx query of either driver (the SQL is the same for both).
    fn bound<DB>(&self) -> sqlx::query::Query<'_, DB, <DB as sqlx::Database>::Arguments<'_>>
    where
        DB: sqlx::Database,
        for<'q> Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> Option<&'q [u8]>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        for<'q> Option<bool>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        self.args
            .iter()
            .fold(sqlx::query(&self.sql), |query, value| match value {
                Value::Int(v) => query.bind(*v),
                Value::Text(v) => query.bind(v.as_deref()),
                Value::Bytes(v) => query.bind(v.as_deref()),
                Value::Bool(v) => query.bind(*v),
            })
    }
}

/// A row of a result, read by column name.
pub struct Row(RowOf);

enum RowOf {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

impl Row {
    /// Column `column` as `T`; a missing column or one of another type is `Corrupt`.
    pub fn get<'r, T>(&'r self, column: &str) -> Result<T, StoreError>
    where
        T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
        T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        let got = match &self.0 {
            RowOf::Sqlite(row) => sqlx::Row::try_get(row, column),
            RowOf::Postgres(row) => sqlx::Row::try_get(row, column),
        };
        Ok(got?)
    }

    /// A signed 64-bit column read back as the count or time it holds.
    pub fn u64(&self, column: &str) -> Result<u64, StoreError> {
        super::to_u64(self.get::<i64>(column)?)
    }

    /// A bytes column.
    pub fn bytes(&self, column: &str) -> Result<&[u8], StoreError> {
        self.get(column)
    }

    /// A text column.
    pub fn text(&self, column: &str) -> Result<&str, StoreError> {
        self.get(column)
    }

    /// The whole row as a `#[derive(sqlx::FromRow)]` type.
    pub fn decode<T>(&self) -> Result<T, StoreError>
    where
        T: for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow>,
    {
        let got = match &self.0 {
            RowOf::Sqlite(row) => T::from_row(row),
            RowOf::Postgres(row) => T::from_row(row),
        };
        Ok(got?)
    }
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let columns = match &self.0 {
            RowOf::Sqlite(row) => sqlx::Row::len(row),
            RowOf::Postgres(row) => sqlx::Row::len(row),
        };
        f.debug_struct("Row").field("columns", &columns).finish()
    }
}

/// A store's migrations, one set per backend (the column types differ).
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// Run on SQLite.
    pub sqlite: &'static Migrator,
    /// Run on Postgres.
    pub postgres: &'static Migrator,
}

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

impl Migrations {
    /// No tables (tests of this layer).
    pub const NONE: Self = Self {
        sqlite: &NO_MIGRATIONS,
        postgres: &NO_MIGRATIONS,
    };
}

/// A store's database: a pool of either backend, and its [`Dialect`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Database {
    pool: PoolOf,
}

#[derive(Debug, Clone)]
enum PoolOf {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Database {
    /// Connect to the database `url` names (creating a SQLite file if needed) and run the
    /// store's migrations.
    pub async fn open(url: &str, migrations: &Migrations) -> Result<Self, StoreError> {
        let pool = match backend_of(url) {
            Some(Backend::Postgres) => {
                let pool = super::postgres(url).await?;
                migrations.postgres.run(&pool).await?;
                PoolOf::Postgres(pool)
            }
            _ => {
                let pool = super::sqlite(url).await.map_err(|e| {
                    let file = url.trim_start_matches("sqlite:").trim_start_matches("//");
                    let file = file.split('?').next().unwrap_or(file);
                    StoreError::from(e).context(&format!("opening the SQLite database {file}"))
                })?;
                migrations.sqlite.run(&pool).await?;
                PoolOf::Sqlite(pool)
            }
        };
        Ok(Self { pool })
    }

    /// What this database's SQL differs in.
    pub fn dialect(&self) -> Dialect {
        match self.pool {
            PoolOf::Sqlite(_) => Dialect::SQLITE,
            PoolOf::Postgres(_) => Dialect::POSTGRES,
        }
    }

    /// A transaction that will write, opened with the dialect's statement for it
    /// ([`Dialect::begin_write`]).
    pub async fn begin_write(&self) -> Result<Tx<'static>, StoreError> {
        let begin = self.dialect().begin_write;
        Ok(Tx(match &self.pool {
            PoolOf::Sqlite(pool) => TxOf::Sqlite(pool.begin_with(begin).await?),
            PoolOf::Postgres(pool) => TxOf::Postgres(pool.begin_with(begin).await?),
        }))
    }

    /// A transaction opened with a plain `BEGIN`: for reads that want settings of their own
    /// (`SET LOCAL` on Postgres) or several statements on one connection.
    pub async fn begin(&self) -> Result<Tx<'static>, StoreError> {
        Ok(Tx(match &self.pool {
            PoolOf::Sqlite(pool) => TxOf::Sqlite(pool.begin().await?),
            PoolOf::Postgres(pool) => TxOf::Postgres(pool.begin().await?),
        }))
    }

    /// A connection of the caller's own until dropped (a writer that keeps one).
    pub async fn acquire(&self) -> Result<Conn, StoreError> {
        Ok(Conn(match &self.pool {
            PoolOf::Sqlite(pool) => ConnOf::Sqlite(pool.acquire().await?),
            PoolOf::Postgres(pool) => ConnOf::Postgres(pool.acquire().await?),
        }))
    }

    /// Close every connection (waits for those in use).
    pub async fn close(&self) {
        match &self.pool {
            PoolOf::Sqlite(pool) => pool.close().await,
            PoolOf::Postgres(pool) => pool.close().await,
        }
    }
}

/// One connection taken from a [`Database`]'s pool, returned to it when dropped.
#[derive(Debug)]
pub struct Conn(ConnOf);

#[derive(Debug)]
enum ConnOf {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

impl Conn {
    /// A transaction that will write, on this connection.
    pub async fn begin_write(&mut self) -> Result<Tx<'_>, StoreError> {
        use sqlx::Connection as _;
        Ok(Tx(match &mut self.0 {
            ConnOf::Sqlite(c) => TxOf::Sqlite(c.begin_with(Dialect::SQLITE.begin_write).await?),
            ConnOf::Postgres(c) => {
                TxOf::Postgres(c.begin_with(Dialect::POSTGRES.begin_write).await?)
            }
        }))
    }
}

/// A transaction: committed by [`Tx::commit`], rolled back when dropped without it.
#[derive(Debug)]
pub struct Tx<'c>(TxOf<'c>);

#[derive(Debug)]
enum TxOf<'c> {
    Sqlite(sqlx::Transaction<'c, Sqlite>),
    Postgres(sqlx::Transaction<'c, Postgres>),
}

impl Tx<'_> {
    /// Make everything done in it durable, at once.
    pub async fn commit(self) -> Result<(), StoreError> {
        match self.0 {
            TxOf::Sqlite(tx) => tx.commit().await?,
            TxOf::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

/// What runs a [`Query`]: `&Database` (any connection of the pool), `&mut Conn`, `&mut Tx`.
/// Implemented here for those three only.
pub trait Executor<'e>: sealed::On<'e> + Send + Sized + 'e {
    /// Run `query`; the number of rows it changed.
    fn execute(self, query: Query) -> impl Future<Output = Result<u64, StoreError>> + Send + 'e {
        async move {
            let changed = match self.on() {
                sealed::Target::SqlitePool(p) => query.bound().execute(p).await?.rows_affected(),
                sealed::Target::Sqlite(c) => query.bound().execute(c).await?.rows_affected(),
                sealed::Target::PostgresPool(p) => query.bound().execute(p).await?.rows_affected(),
                sealed::Target::Postgres(c) => query.bound().execute(c).await?.rows_affected(),
            };
            Ok(changed)
        }
    }

    /// Run `query`; every row it returns.
    fn fetch_all(
        self,
        query: Query,
    ) -> impl Future<Output = Result<Vec<Row>, StoreError>> + Send + 'e {
        async move {
            let sqlite = |rows: Vec<SqliteRow>| rows.into_iter().map(|r| Row(RowOf::Sqlite(r)));
            let postgres = |rows: Vec<PgRow>| rows.into_iter().map(|r| Row(RowOf::Postgres(r)));
            Ok(match self.on() {
                sealed::Target::SqlitePool(p) => {
                    sqlite(query.bound().fetch_all(p).await?).collect()
                }
                sealed::Target::Sqlite(c) => sqlite(query.bound().fetch_all(c).await?).collect(),
                sealed::Target::PostgresPool(p) => {
                    postgres(query.bound().fetch_all(p).await?).collect()
                }
                sealed::Target::Postgres(c) => {
                    postgres(query.bound().fetch_all(c).await?).collect()
                }
            })
        }
    }

    /// Run `query`; its first row, if any.
    fn fetch_optional(
        self,
        query: Query,
    ) -> impl Future<Output = Result<Option<Row>, StoreError>> + Send + 'e {
        async move {
            let sqlite = |row: Option<SqliteRow>| row.map(|r| Row(RowOf::Sqlite(r)));
            let postgres = |row: Option<PgRow>| row.map(|r| Row(RowOf::Postgres(r)));
            Ok(match self.on() {
                sealed::Target::SqlitePool(p) => sqlite(query.bound().fetch_optional(p).await?),
                sealed::Target::Sqlite(c) => sqlite(query.bound().fetch_optional(c).await?),
                sealed::Target::PostgresPool(p) => postgres(query.bound().fetch_optional(p).await?),
                sealed::Target::Postgres(c) => postgres(query.bound().fetch_optional(c).await?),
            })
        }
    }
}

impl<'e> Executor<'e> for &'e Database {}
impl<'e> Executor<'e> for &'e mut Conn {}
impl<'e, 'c: 'e> Executor<'e> for &'e mut Tx<'c> {}

mod sealed {
    use super::{Conn, ConnOf, Database, PoolOf, Tx, TxOf};
    use sqlx::{PgConnection, PgPool, SqliteConnection, SqlitePool};

    /// Where a statement runs, by backend.
    #[derive(Debug)]
    pub enum Target<'e> {
        SqlitePool(&'e SqlitePool),
        Sqlite(&'e mut SqliteConnection),
        PostgresPool(&'e PgPool),
        Postgres(&'e mut PgConnection),
    }

    /// The executors of this module, and only those.
    pub trait On<'e> {
        fn on(self) -> Target<'e>;
    }

    impl<'e> On<'e> for &'e Database {
        fn on(self) -> Target<'e> {
            match &self.pool {
                PoolOf::Sqlite(p) => Target::SqlitePool(p),
                PoolOf::Postgres(p) => Target::PostgresPool(p),
            }
        }
    }

    impl<'e> On<'e> for &'e mut Conn {
        fn on(self) -> Target<'e> {
            match &mut self.0 {
                ConnOf::Sqlite(c) => Target::Sqlite(c),
                ConnOf::Postgres(c) => Target::Postgres(c),
            }
        }
    }

    impl<'e, 'c: 'e> On<'e> for &'e mut Tx<'c> {
        fn on(self) -> Target<'e> {
            match &mut self.0 {
                TxOf::Sqlite(t) => Target::Sqlite(t),
                TxOf::Postgres(t) => Target::Postgres(t),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Database, Migrations, query};

    /// The same SQL, `$n` placeholders included, runs on SQLite; values and NULLs of each
    /// type round-trip; a transaction dropped without commit keeps nothing.
    #[tokio::test]
    async fn one_statement_text_binds_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("db-sql-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let url = format!("sqlite://{}/t.db", dir.display());
        let db = Database::open(&url, &Migrations::NONE).await.unwrap();
        query("CREATE TABLE IF NOT EXISTS t (i INTEGER, s TEXT, b BLOB)")
            .execute(&db)
            .await
            .unwrap();
        query("DELETE FROM t").execute(&db).await.unwrap();
        let insert = query("INSERT INTO t (i, s, b) VALUES ($1, $2, $3), ($4, $5, $6)")
            .bind(7_i64)
            .bind("seven")
            .bind(&[7_u8, 7])
            .bind(None::<i64>)
            .bind(None::<&str>)
            .bind(None::<&[u8]>);
        assert_eq!(insert.execute(&db).await.unwrap(), 2);
        let rows = query("SELECT i, s, b FROM t WHERE i = $1 OR i IS NULL ORDER BY i")
            .bind(7_i64)
            .fetch_all(&db)
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].get::<Option<i64>>("i").unwrap(), None);
        assert_eq!(rows[1].get::<i64>("i").unwrap(), 7);
        assert_eq!(rows[1].u64("i").unwrap(), 7);
        assert_eq!(rows[1].text("s").unwrap(), "seven");
        assert_eq!(rows[1].bytes("b").unwrap(), &[7, 7]);

        let mut tx = db.begin_write().await.unwrap();
        query("DELETE FROM t").execute(&mut tx).await.unwrap();
        drop(tx);
        let mut conn = db.acquire().await.unwrap();
        let count = query("SELECT COUNT(*) AS n FROM t")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(count.get::<i64>("n").unwrap(), 2);
        let mut tx = conn.begin_write().await.unwrap();
        query("DELETE FROM t").execute(&mut tx).await.unwrap();
        tx.commit().await.unwrap();
        // Back to the pool, or `close` would wait for it.
        drop(conn);
        assert!(
            query("SELECT i FROM t")
                .fetch_optional(&db)
                .await
                .unwrap()
                .is_none()
        );
        db.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
