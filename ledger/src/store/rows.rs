//! The statements of the row tables (`events`, `snapshots`, `checkpoints`)
//! that both backends run with the same text and the same Rust code: the
//! head, reads of the row tail, stream loads, sessions, checkpoints.
//!
//! Values bind and decode alike on both through their sqlx types (schema's
//! `sqlx` feature): ids are `uuid` on PostgreSQL and text on SQLite,
//! instants `timestamptz` and integer microseconds, hashes `bytea` and
//! blobs, JSON `jsonb` and text (`sqlx::types::Json`). What the dialects
//! cannot share stays in `postgres.rs` and `sqlite.rs`: bulk writes
//! (`UNNEST` arrays against multi-row `VALUES`), `= ANY` against `IN`, and
//! `NOTIFY`.

use super::compact::{on_conn, Conn};
use super::{LoadedStream, StoreError};
use seatledger_schema::sql::StoredUuid;
use seatledger_schema::{ChainHash, Checkpoint, RecordedEvent, Timestamp};
use seatledger_schema::{OrgId, SessionId};
use serde::de::DeserializeOwned;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use sqlx::Row;

pub(crate) const EVENT_COLUMNS: &str =
    "partition, position, event_id, stream_id, stream_version, tenant_id, event_type, \
     schema_version, payload, metadata, occurred_at, recorded_at, prev_hash, hash";

/// A column that does not decode is a corrupt row (tampering, or a bug),
/// which callers such as the appender treat apart from a failed database.
fn decoded(error: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match error {
        sqlx::Error::ColumnDecode { source, .. } => {
            StoreError::Corrupt(format!("{}: {source}", what()))
        }
        other => other.into(),
    }
}

/// A row of [`EVENT_COLUMNS`] as an event.
pub(crate) trait EventRow {
    fn event<P: DeserializeOwned, M: DeserializeOwned>(
        &self,
    ) -> Result<RecordedEvent<P, M>, StoreError>;
}

/// Decodes each column by its index: by name, every lookup hashes the name
/// (14 per row, a percent of the NATS publisher's CPU). One body, compiled
/// for each backend's row type.
macro_rules! event_row {
    ($row_type:ty) => {
        impl EventRow for $row_type {
            fn event<P: DeserializeOwned, M: DeserializeOwned>(
                &self,
            ) -> Result<RecordedEvent<P, M>, StoreError> {
                let get = |column: &'static str| {
                    move |error: sqlx::Error| {
                        decoded(error, || {
                            let position: i64 = self.try_get(1).unwrap_or_default();
                            format!("the event at position {position}: {column}")
                        })
                    }
                };
                let event_id: StoredUuid = self.try_get(2).map_err(get("event_id"))?;
                let payload: Json<P> = self.try_get(8).map_err(get("payload"))?;
                let metadata: Json<M> = self.try_get(9).map_err(get("metadata"))?;
                Ok(RecordedEvent {
                    partition: self.try_get(0)?,
                    position: self.try_get(1)?,
                    event_id: event_id.0,
                    stream_id: self.try_get(3)?,
                    stream_version: self.try_get(4)?,
                    org_id: self.try_get(5).map_err(get("tenant_id"))?,
                    event_type: self.try_get(6)?,
                    schema_version: self.try_get(7)?,
                    payload: payload.0,
                    metadata: metadata.0,
                    occurred_at: self.try_get(10).map_err(get("occurred_at"))?,
                    recorded_at: self.try_get(11).map_err(get("recorded_at"))?,
                    prev_hash: self.try_get(12).map_err(get("prev_hash"))?,
                    hash: self.try_get(13).map_err(get("hash"))?,
                })
            }
        }
    };
}

event_row!(PgRow);
event_row!(SqliteRow);

/// The events of the rows `$sql` selects (its columns [`EVENT_COLUMNS`]),
/// with `$bind`s, on either backend's connection.
macro_rules! fetch_events {
    ($conn:expr, $sql:expr, $($bind:expr),+) => {
        on_conn!($conn, |c| sqlx::query($sql)
            $(.bind($bind))+
            .fetch_all(&mut **c)
            .await?
            .iter()
            .map(EventRow::event)
            .collect())
    };
}

/// A checkpoint row with the hash of the event at its position.
type CheckpointRow = (
    i16,
    i64,
    ChainHash,
    Timestamp,
    String,
    Vec<u8>,
    Option<ChainHash>,
);

impl Conn<'_> {
    /// The last `(position, hash)` of the partition's row tail; `(0,
    /// GENESIS)` when the tail is empty.
    pub(crate) async fn tail_head(
        &mut self,
        partition: i16,
    ) -> Result<(i64, ChainHash), StoreError> {
        const SQL: &str =
            "SELECT position, hash FROM events WHERE partition = $1 ORDER BY position DESC LIMIT 1";
        let head: Option<(i64, ChainHash)> = on_conn!(self, |c| sqlx::query_as(SQL)
            .bind(partition)
            .fetch_optional(&mut **c)
            .await
            .map_err(|e| decoded(e, || "the head's hash".into()))?);
        Ok(head.unwrap_or((0, ChainHash::GENESIS)))
    }

    /// Up to `limit` rows of the partition's tail in `(after, through]`.
    pub(crate) async fn tail_between<P, M>(
        &mut self,
        partition: i16,
        after: i64,
        through: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent<P, M>>, StoreError>
    where
        P: DeserializeOwned,
        M: DeserializeOwned,
    {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE partition = $1 AND position > $2 \
             AND position <= $3 ORDER BY position LIMIT $4"
        );
        fetch_events!(self, &sql, partition, after, through, limit)
    }

    /// Up to `limit` rows of one organization's tail after `after`.
    pub(crate) async fn tail_of_org(
        &mut self,
        org_id: OrgId,
        partition: i16,
        after: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = $1 AND partition = $2 \
             AND position > $3 ORDER BY position LIMIT $4"
        );
        fetch_events!(self, &sql, org_id, partition, after, limit)
    }

    /// The rows of one stream with versions in `(after, through]`.
    pub(crate) async fn tail_of_stream(
        &mut self,
        stream_id: &str,
        after_version: i64,
        through_version: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND stream_version > $2 \
             AND stream_version <= $3 ORDER BY stream_version"
        );
        fetch_events!(self, &sql, stream_id, after_version, through_version)
    }

    /// A stream's snapshot (unless `after_version` is given) and its rows
    /// after it.
    pub(crate) async fn load_stream(
        &mut self,
        stream_id: &str,
        after_version: Option<i64>,
    ) -> Result<LoadedStream, StoreError> {
        const SQL: &str = "SELECT version, state FROM snapshots WHERE stream_id = $1";
        let mut snapshot = None;
        let mut from_version = after_version.unwrap_or(0);
        if after_version.is_none() {
            let row: Option<(i64, String)> = on_conn!(self, |c| sqlx::query_as(SQL)
                .bind(stream_id)
                .fetch_optional(&mut **c)
                .await?);
            if let Some((version, state)) = row {
                from_version = version;
                let state = serde_json::from_str(&state).map_err(|error| {
                    StoreError::Corrupt(format!("stream state of {stream_id}: {error}"))
                })?;
                snapshot = Some((version, state));
            }
        }
        let events = self
            .tail_of_stream(stream_id, from_version, i64::MAX)
            .await?;
        Ok(LoadedStream {
            snapshot,
            from_version,
            events,
        })
    }

    /// The license stream and organization of the row that granted
    /// `session_id`, if it is still in the row tail.
    pub(crate) async fn session_in_tail(
        &mut self,
        session_id: SessionId,
    ) -> Result<Option<(String, OrgId)>, StoreError> {
        // The expressions the two schemas index.
        let session = match self {
            Conn::Pg(_) => "payload->>'session_id'",
            Conn::Lite(_) => "json_extract(payload, '$.session_id')",
        };
        let sql = format!(
            "SELECT stream_id, tenant_id FROM events \
             WHERE event_type = 'SeatAcquired' AND {session} = $1 LIMIT 1"
        );
        Ok(on_conn!(self, |c| sqlx::query_as(&sql)
            .bind(session_id.to_string())
            .fetch_optional(&mut **c)
            .await?))
    }

    pub(crate) async fn last_checkpoint_position(
        &mut self,
        partition: i16,
    ) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT max(position) FROM checkpoints WHERE partition = $1";
        let position: Option<i64> = on_conn!(self, |c| sqlx::query_scalar(SQL)
            .bind(partition)
            .fetch_one(&mut **c)
            .await?);
        Ok(position.unwrap_or(0))
    }

    pub(crate) async fn insert_checkpoint(
        &mut self,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO checkpoints \
             (partition, position, hash, signed_at, key_id, signature) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
        on_conn!(self, |c| sqlx::query(SQL)
            .bind(checkpoint.partition)
            .bind(checkpoint.position)
            .bind(checkpoint.hash)
            .bind(checkpoint.signed_at)
            .bind(&checkpoint.key_id)
            .bind(&checkpoint.signature)
            .execute(&mut **c)
            .await
            .map(drop)?);
        Ok(())
    }

    /// Checkpoints of `partition` after position `after`, by position
    /// (`latest`: only the last one), each with the hash the event at its
    /// position has in the row tail (`None` if it has no row).
    pub(crate) async fn checkpoints_after(
        &mut self,
        partition: i16,
        after: i64,
        limit: i64,
        latest: bool,
    ) -> Result<Vec<(Checkpoint, Option<ChainHash>)>, StoreError> {
        let order = if latest { "DESC" } else { "" };
        let sql = format!(
            "SELECT c.partition, c.position, c.hash, c.signed_at, c.key_id, c.signature, \
             e.hash AS event_hash FROM checkpoints c \
             LEFT JOIN events e ON e.partition = c.partition AND e.position = c.position \
             WHERE c.partition = $1 AND c.position > $2 ORDER BY c.position {order} LIMIT $3"
        );
        let rows: Vec<CheckpointRow> = on_conn!(self, |c| sqlx::query_as(&sql)
            .bind(partition)
            .bind(after)
            .bind(limit)
            .fetch_all(&mut **c)
            .await
            .map_err(|e| decoded(e, || "a checkpoint".into()))?);
        Ok(rows
            .into_iter()
            .map(
                |(partition, position, hash, signed_at, key_id, signature, event_hash)| {
                    let checkpoint = Checkpoint {
                        partition,
                        position,
                        hash,
                        signed_at,
                        key_id,
                        signature,
                    };
                    (checkpoint, event_hash)
                },
            )
            .collect())
    }
}
