//! SQLite statements of the store (the embedded default). Uuids are text,
//! timestamps microseconds since the epoch, JSON text. A batch writes each
//! table with multi-row statements: every statement is a round trip to
//! sqlx's SQLite worker thread.

use super::compact::Conn;
use super::rows::EVENT_COLUMNS;
use super::{hash_from, CommandWrite, RecordedCommands, SnapshotWrite, StoreError, StreamWrite};
use seatledger_schema::sql::StoredUuid;
use seatledger_schema::OrgId;
use seatledger_schema::{ChainHash, RecordedEvent, Timestamp};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use std::collections::HashMap;

/// Rows per multi-row statement: 14 binds a row stays under SQLite's
/// 32,766 bind parameters.
const ROWS_PER_STATEMENT: usize = 1_000;
const _: () = assert!(ROWS_PER_STATEMENT * 14 < 32_766);

/// The partition's head and the stored versions of `stream_ids`, in one
/// call to SQLite's worker thread (one statement) where they fit in one.
pub(crate) async fn head_and_versions(
    conn: &mut SqliteConnection,
    partition: i16,
    stream_ids: &[String],
) -> Result<((i64, ChainHash), HashMap<String, i64>), StoreError> {
    if stream_ids.len() > ROWS_PER_STATEMENT {
        let head = Conn::Lite(conn).tail_head(partition).await?;
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

pub(crate) async fn recorded_commands(
    conn: &mut SqliteConnection,
    keys: &[(OrgId, String)],
) -> Result<RecordedCommands, StoreError> {
    let mut recorded = HashMap::new();
    for (org_id, command_id) in keys {
        let row = sqlx::query(
            "SELECT request_hash, result FROM commands WHERE tenant_id = ? AND command_id = ?",
        )
        .bind(org_id)
        .bind(command_id)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            let result: String = row.try_get("result")?;
            recorded.insert(
                (*org_id, command_id.clone()),
                (
                    row.try_get("request_hash")?,
                    serde_json::from_str(&result)
                        .map_err(|e| StoreError::Corrupt(format!("command result: {e}")))?,
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
    push_insert_events(&mut query, events);
    execute_statements(conn, query).await
}

/// Appends to `query` the `INSERT`s of `events`, one statement per
/// [`ROWS_PER_STATEMENT`] rows, each ended by `;`.
fn push_insert_events<'a>(query: &mut QueryBuilder<'a, Sqlite>, events: &'a [RecordedEvent]) {
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        query.push(format_args!("INSERT INTO events ({EVENT_COLUMNS}) "));
        query.push_values(chunk, |mut row, event| {
            row.push_bind(event.partition)
                .push_bind(event.position)
                .push_bind(StoredUuid(event.event_id))
                .push_bind(event.stream_id.as_str())
                .push_bind(event.stream_version)
                .push_bind(event.org_id)
                .push_bind(event.event_type.as_str())
                .push_bind(event.schema_version)
                .push_bind(Json(&event.payload))
                .push_bind(Json(&event.metadata))
                .push_bind(event.occurred_at)
                .push_bind(event.recorded_at)
                .push_bind(event.prev_hash)
                .push_bind(event.hash);
        });
        query.push(";\n");
    }
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
    push_insert_events(&mut query, events);
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
            row.push_bind(write.org_id)
                .push_bind(write.command_id.as_str())
                .push_bind(write.request_hash.as_slice())
                .push_bind(write.result.to_string())
                .push_bind(recorded_at);
        });
        query.push(";\n");
    }
}
