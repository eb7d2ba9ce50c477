//! The event store: PostgreSQL (the production truth) and SQLite (the
//! embedded default), behind one type. Only this module writes SQL; only the
//! appender writes events, through `BatchTx`, under the partition lock.
//!
//! The same events give the same rows on both backends and the same hashes:
//! hashes are computed from `RecordedEvent`, never from a backend's text.

/// Runs `$body` with `$pool` bound to the store's pool, whichever the
/// backend: the one place a backend is chosen for SQL text both dialects
/// accept (`$N` parameters, ids as text on SQLite).
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            Store::Postgres($pool) => $body,
            Store::Sqlite($pool, _) => $body,
        }
    };
}

pub mod billing;
pub(crate) mod blocks;
mod compact;
mod segments;
pub use segments::{PrunedSession, Segment, SegmentPrune};
pub mod directory;
mod postgres;
mod rows;
mod sqlite;

use compact::Conn;
use seatledger_schema::{ChainHash, Checkpoint, RawRecordedEvent, RecordedEvent};
use seatledger_schema::{OrgId, SessionId};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// What a store can fail with. Rejections are not errors; these are.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or timed out: callers may retry.
    #[error("event store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database refused a statement.
    #[error("event store error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("event store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row cannot be read back: a bug or tampering.
    #[error("corrupt row in event store: {0}")]
    Corrupt(String),
    /// A SQLite file that does not exist (read-only open) or cannot be
    /// created.
    #[error("no event store at {0}")]
    Missing(String),
    /// The events asked for left the database with a pruned segment; its
    /// archive file holds them (docs/operating.md, "Retention").
    #[error(
        "the events through position {pruned_through} of partition {partition} were pruned \
         from the database (their archive files, from seatledger-replay archive, hold them)"
    )]
    Pruned { partition: i16, pruned_through: i64 },
    /// An archive file a reader needs is missing, altered or does not
    /// continue the log.
    #[error("archive: {0}")]
    Archive(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(error),
            sqlx::Error::Database(ref db) if is_unavailable_code(db.code().as_deref()) => {
                StoreError::Unavailable(error)
            }
            other => StoreError::Database(other),
        }
    }
}

/// The PostgreSQL advisory-lock key the appender of `partition` holds for
/// the length of each batch (`pg_locks.classid`/`objid` are its high and low
/// 32 bits): who holds it is who is writing.
pub fn partition_lock_key(partition: i16) -> i64 {
    postgres::partition_lock_key(partition)
}

/// PostgreSQL: admin shutdown, crash shutdown, cannot connect now, too many
/// connections, a lock wait past `lock_timeout` (55P03), and 55000, which is
/// what connecting answers while the database does not accept connections
/// (`ALLOW_CONNECTIONS false`, during maintenance; no statement seatledger
/// issues raises it otherwise); SQLite: busy, locked.
fn is_unavailable_code(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("57P01" | "57P02" | "57P03" | "53300" | "55P03" | "55000" | "5" | "6" | "517")
    )
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the events do not continue this store's chain: {0}")]
    Chain(#[from] seatledger_schema::ChainError),
    #[error("event at position {position} does not follow its stream's version")]
    StreamVersion { position: i64 },
    #[error("the events belong to another partition")]
    WrongPartition,
    #[error("checkpoint at position {position} does not sign the imported event there")]
    Checkpoint { position: i64 },
    #[error("snapshot of stream {stream_id} is not of a version the imported events reach")]
    Snapshot { stream_id: String },
}

/// Checkpoints and stream snapshots imported with a range of events.
#[derive(Clone, Debug, Default)]
pub struct ImportExtras {
    pub checkpoints: Vec<Checkpoint>,
    /// Stream id, snapshot version and the state as JSON text.
    pub snapshots: Vec<(String, i64, String)>,
}

/// Which backend a store uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Clone, Debug)]
pub enum Store {
    Postgres(sqlx::PgPool),
    /// The mutex is the in-process partition lock: one batch at a time.
    Sqlite(sqlx::SqlitePool, Arc<tokio::sync::Mutex<()>>),
}

/// A stream's snapshot and the events recorded after it.
pub(crate) struct LoadedStream {
    pub snapshot: Option<(i64, serde_json::Value)>,
    /// The version the events follow (the snapshot's, or the one asked).
    pub from_version: i64,
    pub events: Vec<RecordedEvent>,
}

pub(crate) struct StreamWrite {
    pub stream_id: String,
    pub partition: i16,
    pub version: i64,
    /// `(snapshot_version, state as JSON text)` when a snapshot is due and
    /// written with the batch (the `snapshots` table; a large one on
    /// PostgreSQL goes to the appender's snapshot writer instead). Text, not a `serde_json::Value`: a license holding
    /// 100k leases serializes to ~30 MB, and the value tree would be several
    /// times that on the heap for nothing.
    pub snapshot: Option<(i64, String)>,
}

/// A snapshot written on its own, after the batch that reached its version
/// committed (see [`Store::write_snapshots`]).
#[derive(Debug)]
pub(crate) struct SnapshotWrite {
    pub stream_id: String,
    pub version: i64,
    /// The state as JSON text.
    pub state: String,
}

pub(crate) struct CommandWrite {
    pub org_id: OrgId,
    pub command_id: String,
    pub request_hash: Vec<u8>,
    pub result: serde_json::Value,
}

/// A recorded command: its request hash and result.
pub(crate) type RecordedCommands = HashMap<(OrgId, String), (Vec<u8>, serde_json::Value)>;

/// Maximum connections per pool.
const POSTGRES_POOL_MAX: u32 = 16;
const SQLITE_POOL_MAX: u32 = 8;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// `sqlx::query_as(sql)` with `binds`, fetched with `fetch` from the
/// store's pool, on either backend: for SQL text both accept (`$N`
/// parameters). Propagates the error with `?`.
macro_rules! query_either {
    ($store:expr, $sql:expr, $fetch:ident, $($bind:expr),+) => {
        on_pool!($store, |pool| sqlx::query_as($sql)$(.bind($bind))+.$fetch(pool).await?)
    };
}

mod followers;
pub use followers::SessionLock;

impl Store {
    /// Connects to `url`: `postgres://…`/`postgresql://…` for PostgreSQL,
    /// `sqlite:PATH` or a plain file path for SQLite (created if missing,
    /// WAL mode, full fsync).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options =
                sqlx::postgres::PgConnectOptions::from_str(url)?.application_name("seatledger");
            return Store::postgres_with(options).await;
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .busy_timeout(ACQUIRE_TIMEOUT);
        Store::sqlite_with(options).await.map_err(|error| match error {
            StoreError::Database(sqlx::Error::Database(db)) if db.code().as_deref() == Some("14") => {
                StoreError::Missing(format!(
                    "{path} (cannot create or open it: does its directory exist, and may seatledger write there?)"
                ))
            }
            other => other,
        })
    }

    async fn postgres_with(options: sqlx::postgres::PgConnectOptions) -> Result<Store, StoreError> {
        // One connection first, so that an unreachable or refusing server is
        // reported as itself ("Connection refused") rather than as a pool
        // that timed out.
        use sqlx::Connection;
        match tokio::time::timeout(ACQUIRE_TIMEOUT, sqlx::PgConnection::connect_with(&options))
            .await
        {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
            }
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => {
                return Err(StoreError::Unavailable(sqlx::Error::Io(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no answer from {}:{} within {} s",
                            options.get_host(),
                            options.get_port(),
                            ACQUIRE_TIMEOUT.as_secs()
                        ),
                    ),
                )))
            }
        }
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(POSTGRES_POOL_MAX)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Store::Postgres(pool))
    }

    async fn sqlite_with(options: sqlx::sqlite::SqliteConnectOptions) -> Result<Store, StoreError> {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(SQLITE_POOL_MAX)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Store::Sqlite(pool, Arc::new(tokio::sync::Mutex::new(()))))
    }

    /// Opens `url` for reading only, for the auditor tools: PostgreSQL
    /// sessions are read-only transactions (a write fails), and a SQLite
    /// file is opened read-only and must exist (a typo is an error, never
    /// a new empty database). Never migrates.
    pub async fn connect_read_only(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = sqlx::postgres::PgConnectOptions::from_str(url)?
                .application_name("seatledger-replay")
                .options([("default_transaction_read_only", "on")]);
            return Store::postgres_with(options).await;
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if !std::path::Path::new(path).is_file() {
            return Err(StoreError::Missing(format!(
                "{path}: the file does not exist"
            )));
        }
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .create_if_missing(false)
            .busy_timeout(ACQUIRE_TIMEOUT);
        Store::sqlite_with(options).await
    }

    /// The signing key an older version kept in the database, if any
    /// (nothing writes one any more).
    pub async fn stored_signing_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        const SELECT: &str = "SELECT pkcs8 FROM signing_keys ORDER BY created_at, key_id LIMIT 1";
        Ok(match self {
            Store::Postgres(pool) => sqlx::query_scalar(SELECT).fetch_optional(pool).await?,
            Store::Sqlite(pool, _) => sqlx::query_scalar(SELECT).fetch_optional(pool).await?,
        })
    }

    /// The store the appender writes through. On PostgreSQL it is a pool
    /// of one connection of its own, with the shared pool's options: the
    /// appender commits one batch at a time, so it needs no more, never
    /// waits behind API reads for a connection, and the large write buffer
    /// a batch carrying snapshots needs (sqlx keeps each connection's
    /// buffer at the largest message it ever sent) stays on one connection
    /// instead of growing on every connection of the shared pool. Its
    /// statements wait at most `lock_timeout` for a lock (the partition
    /// lock above all), then fail as unavailable. SQLite shares the pool
    /// and its partition lock (its busy timeout bounds waits there).
    pub fn for_appender(&self, lock_timeout: Duration) -> Store {
        match self {
            Store::Postgres(pool) => {
                let options = (*pool.connect_options()).clone().options([(
                    "lock_timeout",
                    format!("{}ms", lock_timeout.as_millis().max(1)),
                )]);
                Store::Postgres(
                    sqlx::postgres::PgPoolOptions::new()
                        .max_connections(1)
                        .acquire_timeout(ACQUIRE_TIMEOUT)
                        .connect_lazy_with(options),
                )
            }
            Store::Sqlite(..) => self.clone(),
        }
    }

    /// A pool of one connection of its own, with the shared pool's options
    /// (PostgreSQL; SQLite: the same store), for health checks that must
    /// not wait behind the shared pool's queue under load.
    pub fn single_connection(&self) -> Store {
        match self {
            Store::Postgres(pool) => Store::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_lazy_with((*pool.connect_options()).clone()),
            ),
            Store::Sqlite(..) => self.clone(),
        }
    }

    pub fn from_pg_pool(pool: sqlx::PgPool) -> Store {
        Store::Postgres(pool)
    }

    pub fn backend(&self) -> Backend {
        match self {
            Store::Postgres(_) => Backend::Postgres,
            Store::Sqlite(..) => Backend::Sqlite,
        }
    }

    /// Applies the backend's migrations (idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pool) => {
                // The migrator's `CREATE TABLE IF NOT EXISTS` raises a
                // notice on every start but the first ("already exists,
                // skipping"), which sqlx logs at INFO: expected, so the
                // migrating session hears warnings and worse only.
                let mut connection = pool.acquire().await?;
                sqlx::query("SET client_min_messages TO warning")
                    .execute(&mut *connection)
                    .await?;
                let migrated = sqlx::migrate!("../schema/migrations/postgres")
                    .run(&mut *connection)
                    .await;
                let reset = sqlx::query("RESET client_min_messages")
                    .execute(&mut *connection)
                    .await;
                if reset.is_err() {
                    connection.close_on_drop();
                }
                migrated?
            }
            Store::Sqlite(pool, _) => {
                sqlx::migrate!("../schema/migrations/sqlite")
                    .run(pool)
                    .await?
            }
        }
        Ok(())
    }

    /// The PostgreSQL pool, for code that shares the database (followers).
    pub fn pg_pool(&self) -> Option<&sqlx::PgPool> {
        match self {
            Store::Postgres(pool) => Some(pool),
            Store::Sqlite(..) => None,
        }
    }

    pub fn sqlite_pool(&self) -> Option<&sqlx::SqlitePool> {
        match self {
            Store::Sqlite(pool, _) => Some(pool),
            Store::Postgres(_) => None,
        }
    }

    /// Answers when the database does.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
            Store::Sqlite(pool, _) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
        }
        Ok(())
    }

    /// The last `(position, hash)` of a partition; `(0, GENESIS)` when empty.
    pub async fn head(&self, partition: i16) -> Result<(i64, ChainHash), StoreError> {
        let mut pooled = self.acquire().await?;
        let mut conn = pooled.conn();
        let head = conn.tail_head(partition).await?;
        or_blocks_head(head, conn, partition).await
    }

    /// Up to `limit` events of `partition` with `position > after`, in order.
    pub async fn read_after(
        &self,
        partition: i16,
        after: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_between(partition, after, i64::MAX, limit).await
    }

    /// The events of `partition` with `after < position <= through`, in
    /// order, at most `READ_BATCH_MAX` of them. For readers that know the
    /// range they want (`verify` reads up to the head it saw): the bound
    /// lets PostgreSQL plan a range of the primary key even before the
    /// table has statistics, where `read_after`'s open range on a never-
    /// analyzed table is planned as a scan and sort of everything after
    /// `after` (measured: 175 ms per 10,000-event batch on a fresh
    /// 272k-event log, so reading it whole was quadratic).
    pub async fn read_range(
        &self,
        partition: i16,
        after: i64,
        through: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_range_as(partition, after, through).await
    }

    /// [`Store::read_range`] with payload and metadata left as the stored
    /// JSON text: for a reader that passes the envelope on (the NATS
    /// publisher, `republish`) and would otherwise parse both into trees
    /// only to serialize them straight back.
    pub async fn read_range_raw(
        &self,
        partition: i16,
        after: i64,
        through: i64,
    ) -> Result<Vec<RawRecordedEvent>, StoreError> {
        self.read_range_as(partition, after, through).await
    }

    /// [`Store::read_range`] with payload and metadata decoded as `P` and
    /// `M` (parsed, or the stored text).
    pub async fn read_range_as<P, M>(
        &self,
        partition: i16,
        after: i64,
        through: i64,
    ) -> Result<Vec<RecordedEvent<P, M>>, StoreError>
    where
        P: serde::de::DeserializeOwned,
        M: serde::de::DeserializeOwned,
    {
        let limit = through.saturating_sub(after);
        self.read_between(partition, after, through, limit).await
    }

    async fn read_between<P, M>(
        &self,
        partition: i16,
        after: i64,
        through: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent<P, M>>, StoreError>
    where
        P: serde::de::DeserializeOwned,
        M: serde::de::DeserializeOwned,
    {
        let limit = limit.clamp(0, seatledger_schema::limits::READ_BATCH_MAX);
        let wanted = usize::try_from(limit).unwrap_or(0);
        let mut pooled = self.acquire().await?;
        let mut conn = pooled.conn();
        let tail = conn.tail_between(partition, after, through, limit).await?;
        conn.between(partition, after, through, wanted, tail).await
    }

    /// Up to `limit` events of one tenant with `position > after`, in order.
    pub async fn read_org_after(
        &self,
        org_id: OrgId,
        partition: i16,
        after: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let limit = limit.clamp(0, seatledger_schema::limits::READ_BATCH_MAX);
        let wanted = usize::try_from(limit).unwrap_or(0);
        let mut pooled = self.acquire().await?;
        let mut conn = pooled.conn();
        let tail = conn.tail_of_org(org_id, partition, after, limit).await?;
        conn.of_org(org_id, partition, after, wanted, tail).await
    }

    /// Every event of one stream, in stream order.
    pub async fn read_stream(&self, stream_id: &str) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_stream_range(stream_id, 0, i64::MAX).await
    }

    /// The events of one stream with `after_version < stream_version <=
    /// through_version`, in stream order (bounded reads of a long stream).
    pub async fn read_stream_range(
        &self,
        stream_id: &str,
        after_version: i64,
        through_version: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut pooled = self.acquire().await?;
        let mut conn = pooled.conn();
        let tail = conn
            .tail_of_stream(stream_id, after_version, through_version)
            .await?;
        conn.of_stream(None, stream_id, after_version, through_version, tail)
            .await
    }

    /// Every stream of `partition` with its stored version and snapshot
    /// version (for `verify`).
    pub async fn stream_versions_of(
        &self,
        partition: i16,
    ) -> Result<HashMap<String, (i64, Option<i64>)>, StoreError> {
        const SELECT: &str = "SELECT s.stream_id, s.version, p.version FROM streams s \
             LEFT JOIN snapshots p ON p.stream_id = s.stream_id WHERE s.partition = $1";
        let rows: Vec<(String, i64, Option<i64>)> =
            query_either!(self, SELECT, fetch_all, partition);
        Ok(rows
            .into_iter()
            .map(|(stream_id, version, snapshot)| (stream_id, (version, snapshot)))
            .collect())
    }

    /// Stores `snapshots` outside any batch, each unless its stream has a
    /// later one stored. `retire`: close the connection afterwards instead
    /// of pooling it (it sent a large message; see
    /// [`BatchTx::retire_after_release`]).
    pub(crate) async fn write_snapshots(
        &self,
        snapshots: &[SnapshotWrite],
        retire: bool,
    ) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                postgres::write_snapshots(&mut conn, snapshots).await?;
                if retire {
                    // Written either way; a failed close only leaves the
                    // pool to notice the connection is gone.
                    let _ = conn.close().await;
                }
            }
            Store::Sqlite(pool, _) => {
                let mut conn = pool.acquire().await?;
                sqlite::write_snapshots(&mut conn, snapshots).await?;
            }
        }
        Ok(())
    }

    /// Stores one snapshot of `stream_id` at `version` (the state as JSON
    /// text), unless a later one is stored: what the appender's snapshot
    /// writer does, for tools and tests.
    pub async fn store_snapshot(
        &self,
        stream_id: &str,
        version: i64,
        state: &str,
    ) -> Result<(), StoreError> {
        let snapshot = SnapshotWrite {
            stream_id: stream_id.to_owned(),
            version,
            state: state.to_owned(),
        };
        self.write_snapshots(&[snapshot], false).await
    }

    /// A stream's stored snapshot: its version and the state as JSON.
    pub async fn stream_snapshot(
        &self,
        stream_id: &str,
    ) -> Result<Option<(i64, serde_json::Value)>, StoreError> {
        // Both stores keep a snapshot as the JSON text the appender wrote.
        const SQL: &str = "SELECT version, state FROM snapshots WHERE stream_id = $1";
        let row: Option<(i64, String)> = query_either!(self, SQL, fetch_optional, stream_id);
        match row {
            Some((version, state)) => Ok(Some((
                version,
                serde_json::from_str(&state)
                    .map_err(|e| StoreError::Corrupt(format!("snapshot of {stream_id}: {e}")))?,
            ))),
            None => Ok(None),
        }
    }

    /// Streams of `partition` whose load would read about `min_entries` or
    /// more (the events after its snapshot, plus the snapshot's entries at
    /// ~200 bytes of JSON each), costliest first, at most `limit`, each
    /// with its snapshot's version: what the appender warms at start.
    pub async fn streams_costly_to_load(
        &self,
        partition: i16,
        min_entries: i64,
        limit: i64,
    ) -> Result<Vec<(String, Option<i64>)>, StoreError> {
        const SELECT: &str = "SELECT stream_id, snapshot_version FROM ( \
               SELECT s.stream_id, p.version AS snapshot_version, \
                 s.version - COALESCE(p.version, 0) + COALESCE(length(p.state), 0) / 200 AS cost \
               FROM streams s LEFT JOIN snapshots p ON p.stream_id = s.stream_id \
               WHERE s.partition = $1) AS c \
             WHERE cost >= $2 ORDER BY cost DESC LIMIT $3";
        Ok(query_either!(
            self,
            SELECT,
            fetch_all,
            partition,
            min_entries,
            limit
        ))
    }

    /// A stream's current version and state, from its snapshot and the
    /// events after it (the read path; the appender keeps its own cache).
    pub async fn stream_state(
        &self,
        stream_id: &str,
    ) -> Result<(i64, crate::domain::StreamState), StoreError> {
        let mut pooled = self.acquire().await?;
        let mut conn = pooled.conn();
        let loaded = conn.load_stream(stream_id, None).await?;
        let loaded = loaded.with_blocks(conn, stream_id).await?;
        let (version, state) = match loaded.snapshot {
            Some((version, state)) => (
                version,
                serde_json::from_value(state)
                    .map_err(|e| StoreError::Corrupt(format!("snapshot of {stream_id}: {e}")))?,
            ),
            None => (0, crate::domain::StreamState::Empty),
        };
        fold_records(version, state, &loaded.events)
    }

    /// The license stream a session was granted on, and its tenant.
    pub async fn find_session(
        &self,
        session_id: SessionId,
    ) -> Result<Option<(String, OrgId)>, StoreError> {
        let mut pooled = self.acquire().await?;
        let mut conn = pooled.conn();
        if let Some(found) = conn.session_in_tail(session_id).await? {
            return Ok(Some(found));
        }
        match conn.session_in_blocks(session_id).await? {
            Some(found) => Ok(Some(found)),
            None => conn.pruned_session(session_id).await,
        }
    }

    /// Signed checkpoints of a partition, by position.
    pub async fn checkpoints(&self, partition: i16) -> Result<Vec<Checkpoint>, StoreError> {
        self.signed_checkpoints(partition, 0, i64::MAX).await
    }

    /// At most `limit` signed checkpoints of a partition after position
    /// `after`, by position, without the hashes their events have now
    /// (which cost a block's decoding each, once compacted).
    pub async fn signed_checkpoints(
        &self,
        partition: i16,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        Ok(self
            .checkpoint_rows(partition, after, limit, false, false)
            .await?
            .into_iter()
            .map(|(checkpoint, _)| checkpoint)
            .collect())
    }

    /// At most `limit` checkpoints of a partition after position `after`,
    /// by position, each with the hash the event at its position has now
    /// (`None` if there is none): a witness compares the two.
    pub async fn checkpoints_after(
        &self,
        partition: i16,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(Checkpoint, Option<ChainHash>)>, StoreError> {
        self.checkpoint_rows(partition, after, limit, false, true)
            .await
    }

    /// Checkpoints with the hash of the event at each one's position, from
    /// its row or, once compacted and `block_hashes`, from its block.
    async fn checkpoint_rows(
        &self,
        partition: i16,
        after: i64,
        limit: i64,
        latest: bool,
        block_hashes: bool,
    ) -> Result<Vec<(Checkpoint, Option<ChainHash>)>, StoreError> {
        let mut pooled = self.acquire().await?;
        let mut conn = pooled.conn();
        let mut rows = conn
            .checkpoints_after(partition, after, limit, latest)
            .await?;
        for (checkpoint, event_hash) in &mut rows {
            if event_hash.is_none() && block_hashes {
                *event_hash = conn.block_hash_at(partition, checkpoint.position).await?;
            }
        }
        Ok(rows)
    }

    /// The last checkpoint of a partition, with its event's hash now.
    pub async fn latest_checkpoint(
        &self,
        partition: i16,
    ) -> Result<Option<(Checkpoint, Option<ChainHash>)>, StoreError> {
        let mut rows = self.checkpoint_rows(partition, 0, 1, true, true).await?;
        Ok(rows.pop())
    }

    /// Moves the oldest `max_events` events of `partition`'s row tail into
    /// one block (docs/design.md §3, "Compact storage"), if that many are
    /// older than the newest `keep` (at least 1, so the appender finds its
    /// head in a row) and signed by a checkpoint. Returns the block's
    /// range, or `None` when no full block is due or another process
    /// compacted first. Readers see each event in exactly one of the two
    /// forms throughout. The rows are read and encoded before the write
    /// transaction, which only stores the block and removes them: on
    /// SQLite the appender waits for that much only.
    pub async fn compact(
        &self,
        partition: i16,
        keep: i64,
        max_events: i64,
        segment_events: i64,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let stored = match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                    .bind(postgres::compaction_lock_key(partition))
                    .fetch_one(&mut *tx)
                    .await?;
                if !ours {
                    return Ok(None);
                }
                let mut conn = Conn::Pg(&mut tx);
                conn.seal_segments(partition, segment_events).await?;
                let Some(block) = conn.next_block(partition, keep, max_events).await? else {
                    // The segments sealed are kept.
                    tx.commit().await?;
                    return Ok(None);
                };
                let stored = conn.store_block(&block).await?;
                tx.commit().await?;
                stored.then_some(block)
            }
            Store::Sqlite(pool, lock) => {
                let mut conn = pool.acquire().await?;
                // The write turn only when a segment is to open or seal.
                if Conn::Lite(&mut conn)
                    .seal_due(partition, segment_events)
                    .await?
                {
                    let _turn = lock.lock().await;
                    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                    Conn::Lite(&mut tx)
                        .seal_segments(partition, segment_events)
                        .await?;
                    tx.commit().await?;
                }
                let Some(block) = Conn::Lite(&mut conn)
                    .next_block(partition, keep, max_events)
                    .await?
                else {
                    return Ok(None);
                };
                drop(conn);
                let _turn = lock.lock().await;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let stored = Conn::Lite(&mut tx).store_block(&block).await?;
                tx.commit().await?;
                stored.then_some(block)
            }
        };
        Ok(stored.map(|block| (block.row.first_position, block.row.last_position)))
    }

    /// The partition's segments, oldest first (docs/design.md §3).
    pub async fn segments(&self, partition: i16) -> Result<Vec<Segment>, StoreError> {
        match self {
            Store::Postgres(pool) => {
                Conn::Pg(&mut *pool.acquire().await?)
                    .segments(partition)
                    .await
            }
            Store::Sqlite(pool, _) => {
                Conn::Lite(&mut *pool.acquire().await?)
                    .segments(partition)
                    .await
            }
        }
    }

    /// Removes sealed segment `segment` of `partition` from the database
    /// (see [`segments::Conn::prune_segment`]); the caller has checked its
    /// archive and recorded the prune in the log. Takes the partition's
    /// compaction turn.
    pub async fn prune_segment(
        &self,
        partition: i16,
        prune: SegmentPrune<'_>,
        pruned_at: seatledger_schema::Timestamp,
    ) -> Result<(), StoreError> {
        let pruned_at = pruned_at.to_string();
        match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(postgres::compaction_lock_key(partition))
                    .execute(&mut *tx)
                    .await?;
                Conn::Pg(&mut tx)
                    .prune_segment(partition, prune, &pruned_at)
                    .await?;
                tx.commit().await?;
            }
            Store::Sqlite(pool, lock) => {
                let _turn = lock.lock().await;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                Conn::Lite(&mut tx)
                    .prune_segment(partition, prune, &pruned_at)
                    .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The sessions earlier prunes kept for the session lookup.
    pub async fn pruned_sessions(&self) -> Result<Vec<PrunedSession>, StoreError> {
        match self {
            Store::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                Conn::Pg(&mut conn).pruned_sessions().await
            }
            Store::Sqlite(pool, _) => {
                let mut conn = pool.acquire().await?;
                Conn::Lite(&mut conn).pruned_sessions().await
            }
        }
    }

    /// Makes the space of rows the compactor removed reusable now
    /// (PostgreSQL: `VACUUM events`; autovacuum would, but only after its
    /// next nap, a minute by default, and under heavy traffic the row tail
    /// would grow by that much first). `snapshots` too: a snapshot is
    /// rewritten whole each time its stream takes one (hundreds of KB for a
    /// license with many leases), and under steady load its dead versions
    /// were the largest part of a live database kept small by pruning
    /// (`scripts/retention-steady`). Nothing to do on SQLite, which reuses
    /// freed pages at once.
    pub async fn vacuum_rows(&self) -> Result<(), StoreError> {
        if let Store::Postgres(pool) = self {
            sqlx::query("VACUUM events, snapshots")
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Forgets the key an older version kept in the database (after
    /// `seatledger admin export-key` wrote it to a file).
    pub async fn delete_signing_key(&self, key_id: &str) -> Result<(), StoreError> {
        const SQL: &str = "DELETE FROM signing_keys WHERE key_id = $1";
        on_pool!(self, |pool| sqlx::query(SQL)
            .bind(key_id)
            .execute(pool)
            .await
            .map(drop)?);
        Ok(())
    }

    /// Appends already-recorded events (an export of another store) after
    /// checking that they continue this store's chain exactly: positions
    /// follow the head, `prev_hash` links, every hash recomputes, stream
    /// versions follow. Streams' versions are updated; snapshots are left to
    /// the appender. Returns the new head position.
    pub async fn import(
        &self,
        partition: i16,
        events: &[RecordedEvent],
    ) -> Result<i64, ImportError> {
        self.import_with(partition, events, &ImportExtras::default())
            .await
    }

    /// [`import`](Self::import), with the checkpoints and stream snapshots
    /// of the exported log that fall within `events`, in the same
    /// transaction: a checkpoint must sign the hash of the imported event
    /// at its position (its signature is the caller's to check), a
    /// snapshot must be of a stream these events reach.
    pub async fn import_with(
        &self,
        partition: i16,
        events: &[RecordedEvent],
        extras: &ImportExtras,
    ) -> Result<i64, ImportError> {
        let mut tx = self.begin_batch(partition).await?;
        let (head_position, head_hash) = tx.head(partition).await?;
        if events.iter().any(|event| event.partition != partition)
            || extras.checkpoints.iter().any(|c| c.partition != partition)
        {
            return Err(ImportError::WrongPartition);
        }
        let (position, _) = seatledger_schema::verify_chain(head_position, head_hash, events)?;
        for checkpoint in &extras.checkpoints {
            let signed = usize::try_from(checkpoint.position - head_position - 1)
                .ok()
                .and_then(|index| events.get(index))
                .is_some_and(|event| event.hash == checkpoint.hash);
            if !signed {
                return Err(ImportError::Checkpoint {
                    position: checkpoint.position,
                });
            }
        }
        let mut stream_ids: Vec<String> = events.iter().map(|e| e.stream_id.clone()).collect();
        stream_ids.sort();
        stream_ids.dedup();
        let mut versions = tx.stream_versions(&stream_ids).await?;
        for event in events {
            let version = versions.entry(event.stream_id.clone()).or_insert(0);
            if event.stream_version != *version + 1 {
                return Err(ImportError::StreamVersion {
                    position: event.position,
                });
            }
            *version = event.stream_version;
        }
        tx.insert_events(events).await?;
        let mut writes: Vec<StreamWrite> = versions
            .into_iter()
            .filter(|(stream_id, _)| stream_ids.binary_search(stream_id).is_ok())
            .map(|(stream_id, version)| StreamWrite {
                stream_id,
                partition,
                version,
                snapshot: None,
            })
            .collect();
        for (stream_id, version, state) in &extras.snapshots {
            let write = writes
                .iter_mut()
                .find(|write| write.stream_id == *stream_id && write.version >= *version)
                .ok_or_else(|| ImportError::Snapshot {
                    stream_id: stream_id.clone(),
                })?;
            write.snapshot = Some((*version, state.clone()));
        }
        tx.upsert_streams(&writes).await?;
        for checkpoint in &extras.checkpoints {
            tx.insert_checkpoint(checkpoint).await?;
        }
        if let Some(last) = events.last() {
            tx.notify(partition, last.position).await?;
        }
        tx.commit().await?;
        Ok(position)
    }

    /// PostgreSQL: takes the partition lock for the session of a
    /// connection of its own, outside any transaction, so the appender can
    /// lead the partition across batches (each batch one autocommit
    /// statement, see `Appender`). Waits at most the connection's
    /// `lock_timeout`. `None` on SQLite, whose batches keep one
    /// transaction each.
    pub(crate) async fn lead(
        &self,
        partition: i16,
    ) -> Result<Option<BatchTx<'static>>, StoreError> {
        match self {
            Store::Postgres(pool) => Ok(Some(BatchTx::Postgres(
                PgBatch::lead(pool.acquire().await?, partition).await?,
            ))),
            Store::Sqlite(..) => Ok(None),
        }
    }

    /// On SQLite, waits for this process's turn to write and holds it until
    /// dropped: the appender's in-process write lock, which every writer in
    /// the process takes (live billing, follower checkpoints, the
    /// credentials directory). Waiting on it, a writer is woken when its
    /// turn comes; waiting on SQLite's own write lock, it would poll from
    /// SQLite's busy handler, which sleeps in steps of up to 100 ms while
    /// batches follow each other. `None` on PostgreSQL (row locks order
    /// writers there).
    pub async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self {
            Store::Postgres(_) => None,
            Store::Sqlite(_, lock) => Some(lock.lock().await),
        }
    }

    /// Opens the batch transaction of `partition` and takes its lock.
    pub(crate) async fn begin_batch(&self, partition: i16) -> Result<BatchTx<'_>, StoreError> {
        match self {
            Store::Postgres(pool) => Ok(BatchTx::Postgres(
                PgBatch::begin(pool.acquire().await?, partition).await?,
            )),
            Store::Sqlite(pool, lock) => {
                let guard = lock.lock().await;
                let tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                Ok(BatchTx::Sqlite(tx, guard))
            }
        }
    }
}

/// A connection of either backend taken from the store's pool.
enum Pooled {
    Pg(sqlx::pool::PoolConnection<sqlx::Postgres>),
    Lite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
}

impl Pooled {
    fn conn(&mut self) -> Conn<'_> {
        match self {
            Pooled::Pg(conn) => Conn::Pg(conn),
            Pooled::Lite(conn) => Conn::Lite(conn),
        }
    }
}

impl Store {
    /// A connection from the pool, whichever the backend.
    async fn acquire(&self) -> Result<Pooled, StoreError> {
        Ok(match self {
            Store::Postgres(pool) => Pooled::Pg(pool.acquire().await?),
            Store::Sqlite(pool, _) => Pooled::Lite(pool.acquire().await?),
        })
    }
}

/// A PostgreSQL batch transaction: `BEGIN` and the partition lock in one
/// simple query (one round trip), on a connection that is closed rather
/// than reused unless the batch commits.
///
/// Not a `sqlx::Transaction`: when the statement given to its `begin_with`
/// fails after `BEGIN` ran (here: the lock wait hits `lock_timeout`, or an
/// operator cancels it), sqlx 0.8 queues no `ROLLBACK` and returns the
/// connection to the pool inside the aborted transaction, where every later
/// batch fails with 25P02. Closing the connection is the one cleanup that
/// cannot itself fail half-way: PostgreSQL rolls back a transaction whose
/// connection is gone.
pub(crate) struct PgBatch {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    /// Committed (or, for a leader, released): the connection holds no
    /// transaction and no lock and may go back to the pool.
    committed: bool,
    /// Close the connection instead of pooling it once released: it sent a
    /// large message, and sqlx keeps a connection's write buffer at the
    /// largest message it ever sent.
    retire: bool,
}

impl PgBatch {
    async fn begin(
        conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
        partition: i16,
    ) -> Result<PgBatch, StoreError> {
        let mut batch = PgBatch {
            conn,
            committed: false,
            retire: false,
        };
        let begin = format!(
            "BEGIN; SELECT pg_advisory_xact_lock({})",
            postgres::partition_lock_key(partition)
        );
        // A `&str` without arguments runs as a simple query: both
        // statements in one round trip.
        sqlx::Executor::execute(&mut *batch.conn, begin.as_str()).await?;
        Ok(batch)
    }

    async fn commit(mut self) -> Result<(), StoreError> {
        sqlx::Executor::execute(&mut *self.conn, "COMMIT").await?;
        self.committed = true;
        Ok(())
    }

    /// The partition lock, held by the session (no transaction is open):
    /// until `release`, or until the connection closes.
    async fn lead(
        conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
        partition: i16,
    ) -> Result<PgBatch, StoreError> {
        let mut batch = PgBatch {
            conn,
            committed: false,
            retire: false,
        };
        let lock = format!(
            "SELECT pg_advisory_lock({})",
            postgres::partition_lock_key(partition)
        );
        sqlx::Executor::execute(&mut *batch.conn, lock.as_str()).await?;
        Ok(batch)
    }

    /// Runs `sql` (no arguments) as a simple query.
    async fn simple(&mut self, sql: &str) -> Result<(), StoreError> {
        sqlx::Executor::execute(&mut *self.conn, sql).await?;
        Ok(())
    }
}

impl std::ops::Deref for PgBatch {
    type Target = sqlx::PgConnection;
    fn deref(&self) -> &sqlx::PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for PgBatch {
    fn deref_mut(&mut self) -> &mut sqlx::PgConnection {
        &mut self.conn
    }
}

impl Drop for PgBatch {
    fn drop(&mut self) {
        if !self.committed {
            self.conn.close_on_drop();
        }
    }
}

/// What became of a leader's connection once it let go of the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Released {
    /// Back to the pool.
    Pooled,
    /// Closed (see `BatchTx::retire_after_release`).
    Retired,
}

/// One appender batch: a transaction holding the partition lock.
pub(crate) enum BatchTx<'a> {
    Postgres(PgBatch),
    Sqlite(
        sqlx::Transaction<'static, sqlx::Sqlite>,
        tokio::sync::MutexGuard<'a, ()>,
    ),
}

impl BatchTx<'_> {
    pub async fn head(&mut self, partition: i16) -> Result<(i64, ChainHash), StoreError> {
        let mut conn = self.conn();
        let head = conn.tail_head(partition).await?;
        or_blocks_head(head, conn, partition).await
    }

    /// The transaction's connection, for statements both backends accept.
    fn conn(&mut self) -> Conn<'_> {
        match self {
            BatchTx::Postgres(tx) => Conn::Pg(tx),
            BatchTx::Sqlite(tx, _) => Conn::Lite(tx),
        }
    }

    /// The partition head and the stored versions of `stream_ids`.
    pub async fn head_and_versions(
        &mut self,
        partition: i16,
        stream_ids: &[String],
    ) -> Result<((i64, ChainHash), HashMap<String, i64>), StoreError> {
        let (head, versions) = match self {
            BatchTx::Postgres(tx) => postgres::head_and_versions(tx, partition, stream_ids).await?,
            BatchTx::Sqlite(tx, _) => sqlite::head_and_versions(tx, partition, stream_ids).await?,
        };
        Ok((
            or_blocks_head(head, self.conn(), partition).await?,
            versions,
        ))
    }

    /// Everything a batch writes; on PostgreSQL in one statement.
    pub async fn write_batch(
        &mut self,
        events: &[RecordedEvent],
        streams: &[StreamWrite],
        commands: &[CommandWrite],
        notify: Option<(i16, i64)>,
    ) -> Result<(), StoreError> {
        match self {
            BatchTx::Postgres(tx) => {
                postgres::write_batch(tx, events, streams, commands, notify).await
            }
            BatchTx::Sqlite(tx, _) => sqlite::write_batch(tx, events, streams, commands).await,
        }
    }

    pub async fn stream_versions(
        &mut self,
        stream_ids: &[String],
    ) -> Result<HashMap<String, i64>, StoreError> {
        match self {
            BatchTx::Postgres(tx) => postgres::stream_versions(tx, stream_ids).await,
            BatchTx::Sqlite(tx, _) => sqlite::stream_versions(tx, stream_ids).await,
        }
    }

    /// The snapshot and later events of a stream; with `after_version`, only
    /// the events after it (the caller holds that state already).
    pub async fn load_stream(
        &mut self,
        stream_id: &str,
        after_version: Option<i64>,
    ) -> Result<LoadedStream, StoreError> {
        let mut conn = self.conn();
        let loaded = conn.load_stream(stream_id, after_version).await?;
        loaded.with_blocks(conn, stream_id).await
    }

    pub async fn recorded_commands(
        &mut self,
        keys: &[(OrgId, String)],
    ) -> Result<RecordedCommands, StoreError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        match self {
            BatchTx::Postgres(tx) => postgres::recorded_commands(tx, keys).await,
            BatchTx::Sqlite(tx, _) => sqlite::recorded_commands(tx, keys).await,
        }
    }

    pub async fn insert_events(&mut self, events: &[RecordedEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        match self {
            BatchTx::Postgres(tx) => postgres::insert_events(tx, events).await,
            BatchTx::Sqlite(tx, _) => sqlite::insert_events(tx, events).await,
        }
    }

    pub async fn upsert_streams(&mut self, writes: &[StreamWrite]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        match self {
            BatchTx::Postgres(tx) => postgres::upsert_streams(tx, writes).await,
            BatchTx::Sqlite(tx, _) => sqlite::upsert_streams(tx, writes).await,
        }
    }

    pub async fn last_checkpoint_position(&mut self, partition: i16) -> Result<i64, StoreError> {
        self.conn().last_checkpoint_position(partition).await
    }

    pub async fn insert_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.conn().insert_checkpoint(checkpoint).await
    }

    /// Wakes followers in other processes when this transaction commits
    /// (PostgreSQL `NOTIFY`; in-process followers are woken by the appender).
    pub async fn notify(&mut self, partition: i16, position: i64) -> Result<(), StoreError> {
        match self {
            BatchTx::Postgres(tx) => postgres::notify(tx, partition, position).await,
            BatchTx::Sqlite(..) => Ok(()),
        }
    }

    /// A leader's explicit transaction (for a batch that writes more than
    /// its one statement: a checkpoint with it).
    pub async fn begin_explicit(&mut self) -> Result<(), StoreError> {
        match self {
            BatchTx::Postgres(batch) => batch.simple("BEGIN").await,
            BatchTx::Sqlite(..) => Ok(()),
        }
    }

    pub async fn commit_explicit(&mut self) -> Result<(), StoreError> {
        match self {
            BatchTx::Postgres(batch) => batch.simple("COMMIT").await,
            BatchTx::Sqlite(..) => Ok(()),
        }
    }

    /// Once released, close this connection rather than return it to the
    /// pool: a batch sent a large message (a snapshot of a license holding
    /// tens of thousands of leases is tens of MB), and the connection would
    /// keep a write buffer that size for as long as it lives (measured:
    /// 42 MB held by the appender's connection at 100k leases). A new
    /// connection costs a few milliseconds, once per large snapshot.
    pub fn retire_after_release(&mut self) {
        if let BatchTx::Postgres(batch) = self {
            batch.retire = true;
        }
    }

    /// Ends a leader's hold on the partition lock and returns its
    /// connection to the pool (or closes it, see `retire_after_release`).
    /// On failure the connection is closed, which releases the lock as
    /// well.
    pub async fn release(self, partition: i16) -> Result<Released, StoreError> {
        match self {
            BatchTx::Postgres(mut batch) => {
                let unlock = format!(
                    "SELECT pg_advisory_unlock({})",
                    postgres::partition_lock_key(partition)
                );
                batch.simple(&unlock).await?;
                // Dropped uncommitted, a batch's connection is closed.
                batch.committed = !batch.retire;
                Ok(if batch.retire {
                    Released::Retired
                } else {
                    Released::Pooled
                })
            }
            BatchTx::Sqlite(..) => Ok(Released::Pooled),
        }
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            BatchTx::Postgres(batch) => batch.commit().await?,
            BatchTx::Sqlite(tx, guard) => {
                tx.commit().await?;
                drop(guard);
            }
        }
        Ok(())
    }
}

/// `head` as the row tail answered it, or, when the tail is empty (every
/// event compacted), the end of the last block.
async fn or_blocks_head(
    head: (i64, ChainHash),
    mut conn: Conn<'_>,
    partition: i16,
) -> Result<(i64, ChainHash), StoreError> {
    if head.0 > 0 {
        return Ok(head);
    }
    conn.head_of_blocks(partition).await
}

impl LoadedStream {
    /// The events after the snapshot, completed with those in blocks.
    async fn with_blocks(self, mut conn: Conn<'_>, stream_id: &str) -> Result<Self, StoreError> {
        let events = conn
            .of_stream(None, stream_id, self.from_version, i64::MAX, self.events)
            .await?;
        Ok(LoadedStream { events, ..self })
    }
}

fn hash_from(bytes: &[u8], what: &str) -> Result<ChainHash, StoreError> {
    ChainHash::from_slice(bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("{what} is not 32 bytes")))
}

/// Applies `events` (one stream, consecutive versions after `version`).
pub(crate) fn fold_records(
    mut version: i64,
    mut state: crate::domain::StreamState,
    events: &[RecordedEvent],
) -> Result<(i64, crate::domain::StreamState), StoreError> {
    for record in events {
        if record.stream_version != version + 1 {
            return Err(StoreError::Corrupt(format!(
                "{}: version {} follows {version}",
                record.stream_id, record.stream_version
            )));
        }
        let event = record
            .event()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        state = crate::domain::evolve(state, &event);
        version = record.stream_version;
    }
    Ok((version, state))
}

/// The PostgreSQL `NOTIFY` channel followers `LISTEN` on; the payload is
/// `partition:position`.
pub const NOTIFY_CHANNEL: &str = "seatledger_events";
