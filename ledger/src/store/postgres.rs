//! PostgreSQL statements of the store. Batches are written with one
//! `INSERT … SELECT FROM UNNEST(arrays)` per table.

use super::{
    hash_from, CommandWrite, RecordedCommands, SnapshotWrite, StoreError, StreamWrite,
    NOTIFY_CHANNEL,
};
use chrono::{DateTime, Utc};
use seatledger_schema::OrgId;
use seatledger_schema::{ChainHash, RecordedEvent};
use sqlx::{PgConnection, Row};
use std::collections::HashMap;
use uuid::Uuid;

/// Advisory-lock keys: a namespace so seatledger's locks never collide with
/// another application's in the same database.
const LOCK_NAMESPACE: i64 = 0x5EA7_1ED6_0000_0000;

pub(crate) fn partition_lock_key(partition: i16) -> i64 {
    LOCK_NAMESPACE + i64::from(partition)
}

/// The lock a compaction of `partition` holds for its transaction: one
/// compactor at a time, whichever process runs it.
pub(crate) fn compaction_lock_key(partition: i16) -> i64 {
    LOCK_NAMESPACE + 0x1_0000 + i64::from(partition)
}

pub(crate) async fn stream_versions(
    conn: &mut PgConnection,
    stream_ids: &[String],
) -> Result<HashMap<String, i64>, StoreError> {
    let rows = sqlx::query("SELECT stream_id, version FROM streams WHERE stream_id = ANY($1)")
        .bind(stream_ids)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("stream_id")?, row.try_get("version")?)))
        .collect()
}

pub(crate) async fn recorded_commands(
    conn: &mut PgConnection,
    keys: &[(OrgId, String)],
) -> Result<RecordedCommands, StoreError> {
    let orgs: Vec<OrgId> = keys.iter().map(|(org, _)| *org).collect();
    let ids: Vec<&str> = keys.iter().map(|(_, id)| id.as_str()).collect();
    let rows = sqlx::query(
        "SELECT c.tenant_id, c.command_id, c.request_hash, c.result FROM commands c \
         JOIN UNNEST($1::uuid[], $2::text[]) AS k(tenant_id, command_id) \
           ON c.tenant_id = k.tenant_id AND c.command_id = k.command_id",
    )
    .bind(&orgs)
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    let mut recorded = HashMap::with_capacity(rows.len());
    for row in rows {
        recorded.insert(
            (row.try_get("tenant_id")?, row.try_get("command_id")?),
            (row.try_get("request_hash")?, row.try_get("result")?),
        );
    }
    Ok(recorded)
}

/// Column arrays of a batch of events, for `UNNEST`.
struct EventColumns<'a> {
    partitions: Vec<i16>,
    positions: Vec<i64>,
    event_ids: Vec<Uuid>,
    stream_ids: Vec<&'a str>,
    stream_versions: Vec<i64>,
    org_ids: Vec<OrgId>,
    event_types: Vec<&'a str>,
    schema_versions: Vec<i32>,
    payloads: Vec<String>,
    metadatas: Vec<String>,
    occurred: Vec<DateTime<Utc>>,
    recorded: Vec<DateTime<Utc>>,
    prev_hashes: Vec<Vec<u8>>,
    hashes: Vec<Vec<u8>>,
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

impl<'a> EventColumns<'a> {
    fn new(events: &'a [RecordedEvent]) -> Result<Self, StoreError> {
        let mut columns = EventColumns {
            partitions: Vec::with_capacity(events.len()),
            positions: Vec::with_capacity(events.len()),
            event_ids: Vec::with_capacity(events.len()),
            stream_ids: Vec::with_capacity(events.len()),
            stream_versions: Vec::with_capacity(events.len()),
            org_ids: Vec::with_capacity(events.len()),
            event_types: Vec::with_capacity(events.len()),
            schema_versions: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            metadatas: Vec::with_capacity(events.len()),
            occurred: Vec::with_capacity(events.len()),
            recorded: Vec::with_capacity(events.len()),
            prev_hashes: Vec::with_capacity(events.len()),
            hashes: Vec::with_capacity(events.len()),
        };
        for event in events {
            columns.partitions.push(event.partition);
            columns.positions.push(event.position);
            columns.event_ids.push(event.event_id);
            columns.stream_ids.push(event.stream_id.as_str());
            columns.stream_versions.push(event.stream_version);
            columns.org_ids.push(event.org_id);
            columns.event_types.push(event.event_type.as_str());
            columns.schema_versions.push(event.schema_version);
            columns.payloads.push(event.payload.to_string());
            columns.metadatas.push(
                serde_json::to_string(&event.metadata)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            );
            columns.occurred.push(event.occurred_at.to_datetime());
            columns.recorded.push(event.recorded_at.to_datetime());
            columns
                .prev_hashes
                .push(event.prev_hash.as_bytes().to_vec());
            columns.hashes.push(event.hash.as_bytes().to_vec());
        }
        Ok(columns)
    }

    /// Binds `$1`..`$14`.
    fn bind<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        query
            .bind(&self.partitions)
            .bind(&self.positions)
            .bind(&self.event_ids)
            .bind(&self.stream_ids)
            .bind(&self.stream_versions)
            .bind(&self.org_ids)
            .bind(&self.event_types)
            .bind(&self.schema_versions)
            .bind(&self.payloads)
            .bind(&self.metadatas)
            .bind(&self.occurred)
            .bind(&self.recorded)
            .bind(&self.prev_hashes)
            .bind(&self.hashes)
    }
}

/// `$1`..`$14` are the event column arrays.
const INSERT_EVENTS: &str = "INSERT INTO events (partition, position, event_id, stream_id, stream_version, \
     tenant_id, event_type, schema_version, payload, metadata, occurred_at, recorded_at, prev_hash, hash) \
     SELECT p, pos, id, s, sv, t, et, v, pl::jsonb, md::jsonb, oa, ra, ph, h FROM UNNEST( \
     $1::smallint[], $2::bigint[], $3::uuid[], $4::text[], $5::bigint[], $6::uuid[], $7::text[], \
     $8::int[], $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[], $13::bytea[], $14::bytea[]) \
     AS x(p, pos, id, s, sv, t, et, v, pl, md, oa, ra, ph, h)";

pub(crate) async fn insert_events(
    conn: &mut PgConnection,
    events: &[RecordedEvent],
) -> Result<(), StoreError> {
    let columns = EventColumns::new(events)?;
    columns
        .bind(sqlx::query(INSERT_EVENTS))
        .execute(conn)
        .await?;
    Ok(())
}

/// Everything a batch writes, in one statement (one round trip): events,
/// stream versions and the snapshots due inline, idempotent command
/// results, and the `NOTIFY` that wakes followers in other processes at
/// commit.
pub(crate) async fn write_batch(
    conn: &mut PgConnection,
    events: &[RecordedEvent],
    streams: &[StreamWrite],
    commands: &[CommandWrite],
    notify: Option<(i16, i64)>,
) -> Result<(), StoreError> {
    let columns = EventColumns::new(events)?;
    let stream_ids: Vec<&str> = streams.iter().map(|w| w.stream_id.as_str()).collect();
    let stream_partitions: Vec<i16> = streams.iter().map(|w| w.partition).collect();
    let versions: Vec<i64> = streams.iter().map(|w| w.version).collect();
    let snapshots = SnapshotColumns::new(streams);
    let orgs: Vec<OrgId> = commands.iter().map(|w| w.org_id).collect();
    let command_ids: Vec<&str> = commands.iter().map(|w| w.command_id.as_str()).collect();
    let request_hashes: Vec<&[u8]> = commands.iter().map(|w| w.request_hash.as_slice()).collect();
    let results: Vec<String> = commands.iter().map(|w| w.result.to_string()).collect();
    let sql = format!(
        "WITH inserted AS ({INSERT_EVENTS}), \
         streamed AS (INSERT INTO streams (stream_id, partition, version) \
           SELECT s, p, v FROM UNNEST($15::text[], $16::smallint[], $17::bigint[]) AS y(s, p, v) \
           ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version), \
         snapped AS ({}), \
         recorded AS (INSERT INTO commands (tenant_id, command_id, request_hash, result) \
           SELECT t, c, h, r::jsonb FROM UNNEST($21::uuid[], $22::text[], $23::bytea[], $24::text[]) AS z(t, c, h, r)) \
         SELECT pg_notify($25, $26) WHERE $26::text IS NOT NULL",
        upsert_snapshots(18)
    );
    let query = columns
        .bind(sqlx::query(&sql))
        .bind(&stream_ids)
        .bind(&stream_partitions)
        .bind(&versions);
    snapshots
        .bind(query)
        .bind(&orgs)
        .bind(&command_ids)
        .bind(&request_hashes)
        .bind(&results)
        .bind(NOTIFY_CHANNEL)
        .bind(notify.map(|(partition, position)| format!("{partition}:{position}")))
        .execute(conn)
        .await?;
    Ok(())
}

/// The statement that stores snapshots, each unless its stream has a later
/// one stored: a snapshot written after its batch (the appender's snapshot
/// writer) may land after a later one, and must not replace it. Parameters
/// from `$first`: stream ids, versions, states (see [`SnapshotColumns`]).
fn upsert_snapshots(first: usize) -> String {
    let (ids, versions, states) = (first, first + 1, first + 2);
    format!(
        "INSERT INTO snapshots (stream_id, version, state) \
         SELECT s, v, st FROM UNNEST(${ids}::text[], ${versions}::bigint[], ${states}::text[]) AS x(s, v, st) \
         ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, state = excluded.state \
         WHERE snapshots.version < excluded.version"
    )
}

/// Writes snapshots on their own, outside any batch: the appender's
/// snapshot writer.
pub(crate) async fn write_snapshots(
    conn: &mut PgConnection,
    snapshots: &[SnapshotWrite],
) -> Result<(), StoreError> {
    let columns = SnapshotColumns {
        stream_ids: snapshots.iter().map(|s| s.stream_id.as_str()).collect(),
        versions: snapshots.iter().map(|s| s.version).collect(),
        states: snapshots.iter().map(|s| s.state.as_str()).collect(),
    };
    let sql = upsert_snapshots(1);
    columns.bind(sqlx::query(&sql)).execute(conn).await?;
    Ok(())
}

/// Snapshots as the arrays [`upsert_snapshots`] takes.
struct SnapshotColumns<'a> {
    stream_ids: Vec<&'a str>,
    versions: Vec<i64>,
    states: Vec<&'a str>,
}

impl<'a> SnapshotColumns<'a> {
    fn new(writes: &'a [StreamWrite]) -> Self {
        let mut columns = SnapshotColumns {
            stream_ids: Vec::new(),
            versions: Vec::new(),
            states: Vec::new(),
        };
        for write in writes {
            if let Some((version, state)) = &write.snapshot {
                columns.stream_ids.push(&write.stream_id);
                columns.versions.push(*version);
                columns.states.push(state);
            }
        }
        columns
    }

    fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.stream_ids)
            .bind(&self.versions)
            .bind(&self.states)
    }
}

/// The partition head and the versions of `stream_ids`, in one round trip.
pub(crate) async fn head_and_versions(
    conn: &mut PgConnection,
    partition: i16,
    stream_ids: &[String],
) -> Result<((i64, ChainHash), HashMap<String, i64>), StoreError> {
    let row = sqlx::query(
        "SELECT h.position, h.hash, v.ids, v.versions FROM (SELECT 1) AS one \
         LEFT JOIN LATERAL (SELECT position, hash FROM events WHERE partition = $1 \
                            ORDER BY position DESC LIMIT 1) h ON true \
         LEFT JOIN LATERAL (SELECT array_agg(stream_id) AS ids, array_agg(version) AS versions \
                            FROM streams WHERE stream_id = ANY($2)) v ON true",
    )
    .bind(partition)
    .bind(stream_ids)
    .fetch_one(conn)
    .await?;
    let position: Option<i64> = row.try_get("position")?;
    let hash: Option<Vec<u8>> = row.try_get("hash")?;
    let head = match (position, hash) {
        (Some(position), Some(hash)) => (position, hash_from(&hash, "hash")?),
        _ => (0, ChainHash::GENESIS),
    };
    let ids: Option<Vec<String>> = row.try_get("ids")?;
    let versions: Option<Vec<i64>> = row.try_get("versions")?;
    let versions = ids
        .unwrap_or_default()
        .into_iter()
        .zip(versions.unwrap_or_default())
        .collect();
    Ok((head, versions))
}

pub(crate) async fn upsert_streams(
    conn: &mut PgConnection,
    writes: &[StreamWrite],
) -> Result<(), StoreError> {
    let ids: Vec<&str> = writes.iter().map(|w| w.stream_id.as_str()).collect();
    let partitions: Vec<i16> = writes.iter().map(|w| w.partition).collect();
    let versions: Vec<i64> = writes.iter().map(|w| w.version).collect();
    let snapshots = SnapshotColumns::new(writes);
    let sql = format!(
        "WITH streamed AS (INSERT INTO streams (stream_id, partition, version) \
           SELECT s, p, v FROM UNNEST($1::text[], $2::smallint[], $3::bigint[]) AS y(s, p, v) \
           ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version) \
         {}",
        upsert_snapshots(4)
    );
    let query = sqlx::query(&sql)
        .bind(&ids)
        .bind(&partitions)
        .bind(&versions);
    snapshots.bind(query).execute(conn).await?;
    Ok(())
}

pub(crate) async fn notify(
    conn: &mut PgConnection,
    partition: i16,
    position: i64,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(NOTIFY_CHANNEL)
        .bind(format!("{partition}:{position}"))
        .execute(conn)
        .await?;
    Ok(())
}
