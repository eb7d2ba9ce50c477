//! SQLite statements of the store (the embedded default). Uuids are text,
//! timestamps microseconds since the epoch, JSON text. A batch writes each
//! table with multi-row statements: every statement is a round trip to
//! sqlx's SQLite worker thread.

use super::{
    hash_from, stored_timestamp, CommandWrite, LoadedStream, RecordedCommands, SnapshotWrite,
    StoreError, StreamWrite,
};
use seatledger_schema::{ChainHash, Checkpoint, RecordedEvent, Timestamp};
use seatledger_schema::{OrgId, SessionId};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use std::collections::HashMap;
use uuid::Uuid;

/// Rows per multi-row statement: 14 binds a row stays under SQLite's
/// 32,766 bind parameters.
const ROWS_PER_STATEMENT: usize = 1_000;
const _: () = assert!(ROWS_PER_STATEMENT * 14 < 32_766);

const EVENT_COLUMNS: &str =
    "partition, position, event_id, stream_id, stream_version, tenant_id, event_type, \
     schema_version, payload, metadata, occurred_at, recorded_at, prev_hash, hash";

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

fn uuid_from<T: From<Uuid>>(text: &str, what: &str) -> Result<T, StoreError> {
    Uuid::parse_str(text)
        .map(T::from)
        .map_err(|e| corrupt(what, e))
}

fn json_from<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

/// Decodes a row of [`EVENT_COLUMNS`], each column by its index (by name,
/// every lookup hashes the name). `P` and `M` are how payload and metadata
/// are held (parsed, or the stored text).
fn event_from_row<P, M>(row: &SqliteRow) -> Result<RecordedEvent<P, M>, StoreError>
where
    P: serde::de::DeserializeOwned,
    M: serde::de::DeserializeOwned,
{
    let event_id: &str = row.try_get(2)?;
    let org_id: &str = row.try_get(5)?;
    let payload: &str = row.try_get(8)?;
    let metadata: &str = row.try_get(9)?;
    let prev_hash: &[u8] = row.try_get(12)?;
    let hash: &[u8] = row.try_get(13)?;
    Ok(RecordedEvent {
        partition: row.try_get(0)?,
        position: row.try_get(1)?,
        event_id: uuid_from(event_id, "event_id")?,
        stream_id: row.try_get(3)?,
        stream_version: row.try_get(4)?,
        org_id: uuid_from(org_id, "tenant_id")?,
        event_type: row.try_get(6)?,
        schema_version: row.try_get(7)?,
        payload: json_from(payload, "payload")?,
        metadata: json_from(metadata, "metadata").map_err(|e| {
            let position: i64 = row.try_get(1).unwrap_or_default();
            StoreError::Corrupt(format!("the event at position {position}: {e}"))
        })?,
        occurred_at: stored_timestamp(row.try_get(10)?, "occurred_at")?,
        recorded_at: stored_timestamp(row.try_get(11)?, "recorded_at")?,
        prev_hash: hash_from(prev_hash, "prev_hash")?,
        hash: hash_from(hash, "hash")?,
    })
}

pub(crate) async fn head(
    conn: &mut SqliteConnection,
    partition: i16,
) -> Result<(i64, ChainHash), StoreError> {
    let row = sqlx::query(
        "SELECT position, hash FROM events WHERE partition = ? ORDER BY position DESC LIMIT 1",
    )
    .bind(partition)
    .fetch_optional(conn)
    .await?;
    match row {
        Some(row) => {
            let hash: Vec<u8> = row.try_get("hash")?;
            Ok((row.try_get("position")?, hash_from(&hash, "hash")?))
        }
        None => Ok((0, ChainHash::GENESIS)),
    }
}

pub(crate) async fn read_between<P, M>(
    conn: &mut SqliteConnection,
    partition: i16,
    after: i64,
    through: i64,
    limit: i64,
) -> Result<Vec<RecordedEvent<P, M>>, StoreError>
where
    P: serde::de::DeserializeOwned,
    M: serde::de::DeserializeOwned,
{
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE partition = ? AND position > ? AND position <= ? ORDER BY position LIMIT ?");
    let rows = sqlx::query(&sql)
        .bind(partition)
        .bind(after)
        .bind(through)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.iter().map(event_from_row).collect()
}

pub(crate) async fn read_org_after(
    conn: &mut SqliteConnection,
    org_id: OrgId,
    partition: i16,
    after: i64,
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = ? AND partition = ? AND position > ? ORDER BY position LIMIT ?"
    );
    let rows = sqlx::query(&sql)
        .bind(org_id.to_string())
        .bind(partition)
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.iter().map(event_from_row).collect()
}

pub(crate) async fn read_stream(
    conn: &mut SqliteConnection,
    stream_id: &str,
    after_version: i64,
    through_version: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? AND stream_version > ? AND stream_version <= ? ORDER BY stream_version");
    let rows = sqlx::query(&sql)
        .bind(stream_id)
        .bind(after_version)
        .bind(through_version)
        .fetch_all(conn)
        .await?;
    rows.iter().map(event_from_row).collect()
}

pub(crate) async fn find_session(
    conn: &mut SqliteConnection,
    session_id: SessionId,
) -> Result<Option<(String, OrgId)>, StoreError> {
    let row = sqlx::query(
        "SELECT stream_id, tenant_id FROM events \
         WHERE event_type = 'SeatAcquired' AND json_extract(payload, '$.session_id') = ? LIMIT 1",
    )
    .bind(session_id.to_string())
    .fetch_optional(conn)
    .await?;
    match row {
        Some(row) => {
            let org: String = row.try_get("tenant_id")?;
            Ok(Some((
                row.try_get("stream_id")?,
                uuid_from(&org, "tenant_id")?,
            )))
        }
        None => Ok(None),
    }
}

/// The partition's head and the stored versions of `stream_ids`, in one
/// call to SQLite's worker thread (one statement) where they fit in one.
pub(crate) async fn head_and_versions(
    conn: &mut SqliteConnection,
    partition: i16,
    stream_ids: &[String],
) -> Result<((i64, ChainHash), HashMap<String, i64>), StoreError> {
    if stream_ids.len() > ROWS_PER_STATEMENT {
        let head = head(conn, partition).await?;
        return Ok((head, stream_versions(conn, stream_ids).await?));
    }
    // The head as a row whose first column is NULL, then one row per
    // stream with a stored version.
    let mut query = QueryBuilder::<Sqlite>::new(
        "SELECT * FROM (SELECT NULL, position, hash FROM events WHERE partition = ",
    );
    query.push_bind(partition);
    query.push(" ORDER BY position DESC LIMIT 1)");
    if !stream_ids.is_empty() {
        query.push(" UNION ALL SELECT stream_id, version, NULL FROM streams WHERE stream_id IN (");
        let mut ids = query.separated(", ");
        for id in stream_ids {
            ids.push_bind(id.as_str());
        }
        query.push(")");
    }
    let mut head = (0, ChainHash::GENESIS);
    let mut versions = HashMap::with_capacity(stream_ids.len());
    for row in query.build().fetch_all(&mut *conn).await? {
        match row.try_get::<Option<String>, _>(0)? {
            None => {
                let hash: &[u8] = row.try_get(2)?;
                head = (row.try_get(1)?, hash_from(hash, "hash")?);
            }
            Some(stream_id) => {
                versions.insert(stream_id, row.try_get(1)?);
            }
        }
    }
    Ok((head, versions))
}

pub(crate) async fn stream_versions(
    conn: &mut SqliteConnection,
    stream_ids: &[String],
) -> Result<HashMap<String, i64>, StoreError> {
    let mut versions = HashMap::with_capacity(stream_ids.len());
    for chunk in stream_ids.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT stream_id, version FROM streams WHERE stream_id IN (",
        );
        let mut ids = query.separated(", ");
        for id in chunk {
            ids.push_bind(id.as_str());
        }
        query.push(")");
        for row in query.build().fetch_all(&mut *conn).await? {
            versions.insert(row.try_get("stream_id")?, row.try_get("version")?);
        }
    }
    Ok(versions)
}

pub(crate) async fn load_stream(
    conn: &mut SqliteConnection,
    stream_id: &str,
    after_version: Option<i64>,
) -> Result<LoadedStream, StoreError> {
    let mut snapshot = None;
    let mut from_version = after_version.unwrap_or(0);
    if after_version.is_none() {
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT version, state FROM snapshots WHERE stream_id = ?")
                .bind(stream_id)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some((version, state)) = row {
            from_version = version;
            snapshot = Some((version, json_from(&state, "stream state")?));
        }
    }
    let events = read_stream(conn, stream_id, from_version, i64::MAX).await?;
    Ok(LoadedStream {
        snapshot,
        from_version,
        events,
    })
}

pub(crate) async fn recorded_commands(
    conn: &mut SqliteConnection,
    keys: &[(OrgId, String)],
) -> Result<RecordedCommands, StoreError> {
    let mut recorded = HashMap::new();
    for (org_id, command_id) in keys {
        let row = sqlx::query(
            "SELECT request_hash, result FROM commands WHERE tenant_id = ? AND command_id = ?",
        )
        .bind(org_id.to_string())
        .bind(command_id)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            let result: String = row.try_get("result")?;
            recorded.insert(
                (*org_id, command_id.clone()),
                (
                    row.try_get("request_hash")?,
                    json_from(&result, "command result")?,
                ),
            );
        }
    }
    Ok(recorded)
}

pub(crate) async fn insert_events(
    conn: &mut SqliteConnection,
    events: &[RecordedEvent],
) -> Result<(), StoreError> {
    let mut query = QueryBuilder::new("");
    push_insert_events(&mut query, events)?;
    execute_statements(conn, query).await
}

/// Appends to `query` the `INSERT`s of `events`, one statement per
/// [`ROWS_PER_STATEMENT`] rows, each ended by `;`.
fn push_insert_events<'a>(
    query: &mut QueryBuilder<'a, Sqlite>,
    events: &'a [RecordedEvent],
) -> Result<(), StoreError> {
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let mut rows = Vec::with_capacity(chunk.len());
        for event in chunk {
            let metadata =
                serde_json::to_string(&event.metadata).map_err(|e| corrupt("metadata", e))?;
            rows.push((event, metadata));
        }
        query.push(format_args!("INSERT INTO events ({EVENT_COLUMNS}) "));
        query.push_values(rows, |mut row, (event, metadata)| {
            row.push_bind(event.partition)
                .push_bind(event.position)
                .push_bind(event.event_id.to_string())
                .push_bind(event.stream_id.as_str())
                .push_bind(event.stream_version)
                .push_bind(event.org_id.to_string())
                .push_bind(event.event_type.as_str())
                .push_bind(event.schema_version)
                .push_bind(event.payload.to_string())
                .push_bind(metadata)
                .push_bind(event.occurred_at.as_micros())
                .push_bind(event.recorded_at.as_micros())
                .push_bind(event.prev_hash.as_bytes().as_slice())
                .push_bind(event.hash.as_bytes().as_slice());
        });
        query.push(";\n");
    }
    Ok(())
}

/// Runs the statements in `query` (nothing if it is empty) in one call to
/// SQLite's worker thread: each call is a hand-over to that thread and
/// back, which under load costs more than the statements.
async fn execute_statements(
    conn: &mut SqliteConnection,
    mut query: QueryBuilder<'_, Sqlite>,
) -> Result<(), StoreError> {
    if query.sql().is_empty() {
        return Ok(());
    }
    query.build().execute(&mut *conn).await?;
    Ok(())
}

/// Everything an appender batch writes (events, streams, commands), in one
/// call to SQLite's worker thread.
pub(crate) async fn write_batch(
    conn: &mut SqliteConnection,
    events: &[RecordedEvent],
    streams: &[StreamWrite],
    commands: &[CommandWrite],
) -> Result<(), StoreError> {
    let recorded_at = Timestamp::now().as_micros();
    let mut query = QueryBuilder::new("");
    push_insert_events(&mut query, events)?;
    push_upsert_streams(&mut query, streams);
    push_insert_commands(&mut query, commands, recorded_at);
    execute_statements(conn, query).await
}

pub(crate) async fn upsert_streams(
    conn: &mut SqliteConnection,
    writes: &[StreamWrite],
) -> Result<(), StoreError> {
    let mut query = QueryBuilder::new("");
    push_upsert_streams(&mut query, writes);
    execute_statements(conn, query).await
}

fn push_upsert_streams<'a>(query: &mut QueryBuilder<'a, Sqlite>, writes: &'a [StreamWrite]) {
    for chunk in writes.chunks(ROWS_PER_STATEMENT) {
        query.push("INSERT INTO streams (stream_id, partition, version) ");
        query.push_values(chunk, |mut row, write| {
            row.push_bind(write.stream_id.as_str())
                .push_bind(write.partition)
                .push_bind(write.version);
        });
        query.push(" ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version;\n");
    }
    let snapshots: Vec<(&str, i64, &str)> = writes
        .iter()
        .filter_map(|w| {
            let (version, state) = w.snapshot.as_ref()?;
            Some((w.stream_id.as_str(), *version, state.as_str()))
        })
        .collect();
    push_upsert_snapshots(query, &snapshots);
}

/// Snapshots (stream id, version, state), each unless a later one of its
/// stream is stored (as on PostgreSQL).
fn push_upsert_snapshots<'a>(
    query: &mut QueryBuilder<'a, Sqlite>,
    snapshots: &[(&'a str, i64, &'a str)],
) {
    for chunk in snapshots.chunks(ROWS_PER_STATEMENT) {
        query.push("INSERT INTO snapshots (stream_id, version, state) ");
        query.push_values(chunk, |mut row, &(stream_id, version, state)| {
            row.push_bind(stream_id).push_bind(version).push_bind(state);
        });
        query.push(
            " ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, state = excluded.state \
             WHERE snapshots.version < excluded.version;\n",
        );
    }
}

/// Snapshots written on their own, outside any batch.
pub(crate) async fn write_snapshots(
    conn: &mut SqliteConnection,
    snapshots: &[SnapshotWrite],
) -> Result<(), StoreError> {
    let rows: Vec<(&str, i64, &str)> = snapshots
        .iter()
        .map(|s| (s.stream_id.as_str(), s.version, s.state.as_str()))
        .collect();
    let mut query = QueryBuilder::new("");
    push_upsert_snapshots(&mut query, &rows);
    execute_statements(conn, query).await
}

fn push_insert_commands<'a>(
    query: &mut QueryBuilder<'a, Sqlite>,
    writes: &'a [CommandWrite],
    recorded_at: i64,
) {
    for chunk in writes.chunks(ROWS_PER_STATEMENT) {
        query.push(
            "INSERT INTO commands (tenant_id, command_id, request_hash, result, recorded_at) ",
        );
        query.push_values(chunk, |mut row, write| {
            row.push_bind(write.org_id.to_string())
                .push_bind(write.command_id.as_str())
                .push_bind(write.request_hash.as_slice())
                .push_bind(write.result.to_string())
                .push_bind(recorded_at);
        });
        query.push(";\n");
    }
}

pub(crate) async fn last_checkpoint_position(
    conn: &mut SqliteConnection,
    partition: i16,
) -> Result<i64, StoreError> {
    let position: Option<i64> =
        sqlx::query_scalar("SELECT max(position) FROM checkpoints WHERE partition = ?")
            .bind(partition)
            .fetch_one(conn)
            .await?;
    Ok(position.unwrap_or(0))
}

pub(crate) async fn insert_checkpoint(
    conn: &mut SqliteConnection,
    checkpoint: &Checkpoint,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO checkpoints (partition, position, hash, signed_at, key_id, signature) VALUES (?, ?, ?, ?, ?, ?) \
         ON CONFLICT DO NOTHING",
    )
    .bind(checkpoint.partition)
    .bind(checkpoint.position)
    .bind(checkpoint.hash.as_bytes().as_slice())
    .bind(checkpoint.signed_at.as_micros())
    .bind(&checkpoint.key_id)
    .bind(&checkpoint.signature)
    .execute(conn)
    .await?;
    Ok(())
}

/// Checkpoints of `partition` after position `after`, by position
/// (`latest`: only the last one), each with the hash the event at its
/// position has now (`None` if there is no such event).
pub(crate) async fn checkpoints_after(
    conn: &mut SqliteConnection,
    partition: i16,
    after: i64,
    limit: i64,
    latest: bool,
) -> Result<Vec<(Checkpoint, Option<ChainHash>)>, StoreError> {
    let sql = if latest {
        "SELECT c.partition, c.position, c.hash, c.signed_at, c.key_id, c.signature, e.hash AS event_hash \
         FROM checkpoints c LEFT JOIN events e ON e.partition = c.partition AND e.position = c.position \
         WHERE c.partition = ? AND c.position > ? ORDER BY c.position DESC LIMIT ?"
    } else {
        "SELECT c.partition, c.position, c.hash, c.signed_at, c.key_id, c.signature, e.hash AS event_hash \
         FROM checkpoints c LEFT JOIN events e ON e.partition = c.partition AND e.position = c.position \
         WHERE c.partition = ? AND c.position > ? ORDER BY c.position LIMIT ?"
    };
    let rows = sqlx::query(sql)
        .bind(partition)
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| {
            let hash: Vec<u8> = row.try_get("hash")?;
            let event_hash: Option<Vec<u8>> = row.try_get("event_hash")?;
            let checkpoint = Checkpoint {
                partition: row.try_get("partition")?,
                position: row.try_get("position")?,
                hash: hash_from(&hash, "checkpoint hash")?,
                signed_at: stored_timestamp(row.try_get("signed_at")?, "signed_at")?,
                key_id: row.try_get("key_id")?,
                signature: row.try_get("signature")?,
            };
            let event_hash = event_hash
                .map(|bytes| hash_from(&bytes, "event hash"))
                .transpose()?;
            Ok((checkpoint, event_hash))
        })
        .collect()
}

pub(crate) async fn delete_signing_key(pool: &SqlitePool, key_id: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM signing_keys WHERE key_id = ?")
        .bind(key_id)
        .execute(pool)
        .await?;
    Ok(())
}
