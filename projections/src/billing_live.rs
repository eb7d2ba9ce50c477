//! Live billing (docs/design.md §4): the billing fold as a follower whose output
//! lives in the ledger's own database, and the usage report read from it.
//!
//! Tables (migration `…_usage.sql`, the same on PostgreSQL and SQLite;
//! uuids as text, instants as microseconds since 1970):
//!
//! - `usage_periods` — per organization, granularity (hour, day and month
//!   are all kept), license and period: seat time, overage seat time, the
//!   peak right after a grant, the leases carried in at the period's first
//!   instant, and denials, as left by leases that have *closed*;
//! - `usage_users`, `usage_machines` — the distinct users and machines of
//!   each period's closed leases;
//! - `usage_open_leases` — leases granted and not yet released or expired;
//! - `usage_incomplete` — undecodable events (their organization's report is
//!   refused rather than short);
//! - the checkpoint, `follower_checkpoints ('billing', partition)`.
//!
//! A range of events is folded in memory and its changes (period deltas,
//! changed open leases) are written with the new checkpoint in one
//! transaction that first moves the checkpoint from the position the range
//! follows: when another replica got there first, nothing is written and
//! this follower reloads. Memory holds only the open leases (bounded by the
//! seats in use), never the history.
//!
//! A report merges the stored periods with what the open leases add up to
//! the report's `as_of` ([`open_lease_usage`]), exactly as
//! [`BillingFold::report`] does over the whole log: live and replayed
//! reports of the same log and `as_of` are equal (tested).
//!
//! What it costs: each lease writes one user and one machine row per
//! period it touches at each granularity when it closes (a lease held for
//! 3 hours within a day: 3 + 1 + 1 of each).

use crate::billing::{
    open_lease_usage, BillingFold, FoldChanges, Granularity, OpenLease, PeriodKey, PeriodUsage,
    UsageRow,
};
use crate::hot::StaleLease;
use crate::runner::{Follower, FollowerError, RunnerConfig};
use seatledger_ledger::{Store, StoreError};
use seatledger_schema::{RecordedEvent, Timestamp};
use sqlx::{QueryBuilder, Row};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// The follower's name in `follower_checkpoints`.
pub const BILLING_FOLLOWER: &str = "billing";

/// The least time between two billing catch-ups ([`RunnerConfig::coalesce`]):
/// one transaction of up to a range of events every half second instead of
/// one per commit. Woken on every commit, billing cost the appender 22–30%
/// of its events/s on this 2-core machine (`append_throughput --followers
/// none,billing`); a report trails the log by at most about this much more.
pub const BILLING_COALESCE: std::time::Duration = std::time::Duration::from_millis(500);

/// How `serve` runs the billing follower.
pub fn runner_config() -> RunnerConfig {
    RunnerConfig {
        coalesce: BILLING_COALESCE,
        ..RunnerConfig::default()
    }
}

/// Rows per multi-row statement (SQLite allows 32,766 bound values).
const ROWS_PER_STATEMENT: usize = 1_000;
const _: () = assert!(ROWS_PER_STATEMENT * 9 < 32_766);

/// The billing follower of one partition.
pub struct LiveBilling {
    store: Store,
    partition: i16,
    fold: BillingFold,
    /// Whether `fold` holds the stored state at its position.
    loaded: bool,
}

impl LiveBilling {
    pub fn new(store: Store, partition: i16) -> Self {
        LiveBilling {
            store,
            partition,
            fold: BillingFold::with_granularities(&Granularity::ALL).tracking_changes(),
            loaded: false,
        }
    }
}

/// An undecodable event, recorded so that its organization's report is
/// refused.
struct Incomplete {
    partition: i16,
    position: i64,
    org_id: Uuid,
}

impl Follower for LiveBilling {
    type Event = RecordedEvent;

    fn name(&self) -> &'static str {
        BILLING_FOLLOWER
    }

    async fn position(&mut self) -> Result<i64, FollowerError> {
        let stored = checkpoint(&self.store, self.partition).await?;
        if !self.loaded || stored != self.fold.position(self.partition) {
            let leases = open_leases(&self.store, self.partition, None).await?;
            self.fold.restore(self.partition, stored, leases);
            self.loaded = true;
        }
        Ok(stored)
    }

    async fn apply(&mut self, events: &[RecordedEvent]) -> Result<(), FollowerError> {
        let from = self.fold.position(self.partition);
        let mut incomplete = Vec::new();
        for record in events {
            if self.fold.apply(record).is_err() {
                incomplete.push(Incomplete {
                    partition: record.partition,
                    position: record.position,
                    org_id: record.tenant_id,
                });
            }
        }
        let to = self.fold.position(self.partition);
        let changes = self.fold.take_changes();
        let written = write(
            &self.store,
            self.partition,
            (from, to),
            &changes,
            &incomplete,
            WriteMode::Follow,
        )
        .await;
        match written {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.loaded = false;
                Err(FollowerError::Superseded)
            }
            Err(error) => {
                // The fold is ahead of what is stored: start again from it.
                self.loaded = false;
                Err(error.into())
            }
        }
    }
}

/// A usage report: the rows, the instant open leases count up to, and the
/// log position it reflects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveUsage {
    pub rows: Vec<UsageRow>,
    pub as_of: Timestamp,
    pub position: i64,
}

/// What a report is asked for.
#[derive(Clone, Copy, Debug)]
pub struct UsageQuery {
    pub org_id: Uuid,
    pub license_id: Option<Uuid>,
    pub granularity: Granularity,
    /// Periods that end after `from` and start before `to`.
    pub from: Timestamp,
    pub to: Timestamp,
    pub as_of: Timestamp,
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The organization's log holds an event billing cannot read.
    #[error("the event at position {position} cannot be decoded: usage would be incomplete")]
    Incomplete { position: i64 },
}

/// The stored usage of one organization (one license), as of `as_of`.
pub async fn usage(store: &Store, query: &UsageQuery) -> Result<LiveUsage, UsageError> {
    let stored = match store {
        Store::Postgres(pool) => postgres::read(pool, query).await?,
        Store::Sqlite(pool, _) => sqlite::read(pool, query).await?,
    };
    if let Some(position) = stored.incomplete {
        return Err(UsageError::Incomplete { position });
    }
    let in_range = |key: &PeriodKey| {
        key.period_start < query.to && query.granularity.next_period(key.period_start) > query.from
    };
    let open: BTreeMap<PeriodKey, PeriodUsage> =
        open_lease_usage(query.granularity, &stored.open, query.as_of)
            .into_iter()
            .filter(|(key, _)| in_range(key))
            .collect();
    let mut rows = stored.closed;
    for (key, open_usage) in open {
        let (usage, users, machines) = rows
            .entry(key)
            .or_insert_with(|| (PeriodUsage::default(), 0, 0));
        let mut sets = stored.sets.get(&key).cloned().unwrap_or_default();
        sets.merge(&open_usage);
        *users = sets.users.len() as u64;
        *machines = sets.machines.len() as u64;
        usage.merge(&PeriodUsage {
            users: BTreeSet::new(),
            machines: BTreeSet::new(),
            ..open_usage
        });
    }
    Ok(LiveUsage {
        rows: rows
            .iter()
            .map(|(key, (usage, users, machines))| usage.row_with_counts(key, *users, *machines))
            .collect(),
        as_of: query.as_of,
        position: stored.position,
    })
}

/// The billing checkpoint of `partition` (0 before any).
pub async fn checkpoint(store: &Store, partition: i16) -> Result<i64, StoreError> {
    match store {
        Store::Postgres(pool) => postgres::checkpoint(pool, partition).await,
        Store::Sqlite(pool, _) => sqlite::checkpoint(pool, partition).await,
    }
}

/// Open leases past their `expires_at` at `now`, earliest first, at most
/// `limit` (the reaper's source while Redis is down). They trail the log
/// by the follower's lag: a lease heartbeated meanwhile may be listed.
pub async fn stale_leases(
    store: &Store,
    partition: i16,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<StaleLease>, StoreError> {
    match store {
        Store::Postgres(pool) => postgres::stale_leases(pool, partition, now, limit).await,
        Store::Sqlite(pool, _) => sqlite::stale_leases(pool, partition, now, limit).await,
    }
}

async fn open_leases(
    store: &Store,
    partition: i16,
    org: Option<(Uuid, Option<Uuid>)>,
) -> Result<Vec<OpenLease>, StoreError> {
    match store {
        Store::Postgres(pool) => postgres::open_leases(pool, partition, org).await,
        Store::Sqlite(pool, _) => sqlite::open_leases(pool, partition, org).await,
    }
}

/// How a write treats what is stored.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    /// Add the changes of the range after `from` (the follower).
    Follow,
    /// Replace everything stored with the changes of a fold from 0 (a
    /// rebuild), whatever position the stored projection had reached.
    Replace,
}

async fn write(
    store: &Store,
    partition: i16,
    (from, to): (i64, i64),
    changes: &FoldChanges,
    incomplete: &[Incomplete],
    mode: WriteMode,
) -> Result<bool, StoreError> {
    match store {
        Store::Postgres(pool) => {
            postgres::write(pool, partition, (from, to), changes, incomplete, mode).await
        }
        Store::Sqlite(pool, _) => {
            // In turn with the appender's batches (one writer at a time).
            let _turn = store.write_turn().await;
            sqlite::write(pool, partition, (from, to), changes, incomplete, mode).await
        }
    }
}

/// Live billing rebuilt from position 0: the fold of every event pushed,
/// then swapped in for what is stored in one transaction (readers see the
/// old report or the new one, never a mix). A billing follower running
/// meanwhile finds its checkpoint moved, reloads from the rebuilt state and
/// goes on from there. Memory holds the fold's periods and open leases
/// (the size of the report, not of the log).
pub struct BillingRebuild {
    partition: i16,
    fold: BillingFold,
    incomplete: Vec<Incomplete>,
}

impl BillingRebuild {
    pub fn new(partition: i16) -> BillingRebuild {
        BillingRebuild {
            partition,
            fold: BillingFold::with_granularities(&Granularity::ALL).tracking_changes(),
            incomplete: Vec::new(),
        }
    }

    /// Folds the next events (in position order from 1).
    pub fn push(&mut self, events: &[RecordedEvent]) {
        for record in events {
            if self.fold.apply(record).is_err() {
                self.incomplete.push(Incomplete {
                    partition: record.partition,
                    position: record.position,
                    org_id: record.tenant_id,
                });
            }
        }
    }

    /// Replaces the stored projection; returns the position it now reflects.
    pub async fn replace(mut self, store: &Store) -> Result<i64, StoreError> {
        let to = self.fold.position(self.partition);
        let changes = self.fold.take_changes();
        write(
            store,
            self.partition,
            (0, to),
            &changes,
            &self.incomplete,
            WriteMode::Replace,
        )
        .await?;
        Ok(to)
    }
}

/// What a report reads in one transaction.
struct Stored {
    position: i64,
    incomplete: Option<i64>,
    /// Closed periods in range with their distinct counts.
    closed: BTreeMap<PeriodKey, (PeriodUsage, u64, u64)>,
    /// The user and machine sets of the periods open leases touch.
    sets: BTreeMap<PeriodKey, PeriodUsage>,
    open: Vec<OpenLease>,
}

fn uuid(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|_| StoreError::Corrupt(format!("usage row: bad uuid {text:?}")))
}

fn timestamp(micros: i64) -> Result<Timestamp, StoreError> {
    Timestamp::try_from_micros(micros)
        .map_err(|_| StoreError::Corrupt(format!("usage row: instant {micros} out of range")))
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn micros(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The same statements for both backends: uuids as text, instants as
/// microseconds, placeholders from `QueryBuilder`.
macro_rules! backend {
    ($module:ident, $db:ty, $pool:ty, $now:literal, $snapshot:expr) => {
        mod $module {
            use super::*;

            type Db = $db;

            pub(super) async fn checkpoint(pool: &$pool, partition: i16) -> Result<i64, StoreError> {
                let mut conn = pool.acquire().await?;
                read_checkpoint(&mut conn, partition).await
            }

            async fn read_checkpoint(
                conn: &mut <Db as sqlx::Database>::Connection,
                partition: i16,
            ) -> Result<i64, StoreError> {
                let mut query = QueryBuilder::<Db>::new(
                    "SELECT position FROM follower_checkpoints WHERE follower = ",
                );
                query.push_bind(BILLING_FOLLOWER);
                query.push(" AND partition = ");
                query.push_bind(partition);
                let row = query.build().fetch_optional(&mut *conn).await?;
                Ok(match row {
                    Some(row) => row.try_get::<i64, _>(0)?,
                    None => 0,
                })
            }

            pub(super) async fn open_leases(
                pool: &$pool,
                partition: i16,
                org: Option<(Uuid, Option<Uuid>)>,
            ) -> Result<Vec<OpenLease>, StoreError> {
                let mut conn = pool.acquire().await?;
                read_open_leases(&mut conn, partition, org).await
            }

            pub(super) async fn stale_leases(
                pool: &$pool,
                partition: i16,
                now: Timestamp,
                limit: usize,
            ) -> Result<Vec<StaleLease>, StoreError> {
                let mut query = QueryBuilder::<Db>::new(
                    "SELECT org_id, license_id, session_id FROM usage_open_leases WHERE partition = ",
                );
                query.push_bind(partition);
                query.push(" AND expires_at <= ");
                query.push_bind(now.as_micros());
                query.push(" ORDER BY expires_at LIMIT ");
                query.push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
                let rows = query.build().fetch_all(pool).await?;
                rows.iter()
                    .map(|row| {
                        Ok(StaleLease {
                            tenant_id: uuid(row.try_get(0)?)?,
                            license_id: uuid(row.try_get(1)?)?,
                            session_id: uuid(row.try_get(2)?)?,
                        })
                    })
                    .collect()
            }

            async fn read_open_leases(
                conn: &mut <Db as sqlx::Database>::Connection,
                partition: i16,
                org: Option<(Uuid, Option<Uuid>)>,
            ) -> Result<Vec<OpenLease>, StoreError> {
                let mut query = QueryBuilder::<Db>::new(
                    "SELECT org_id, license_id, session_id, start_at, expires_at, user_id, \
                     hardware_id, overage FROM usage_open_leases WHERE partition = ",
                );
                query.push_bind(partition);
                if let Some((org_id, license_id)) = org {
                    query.push(" AND org_id = ");
                    query.push_bind(org_id.to_string());
                    if let Some(license_id) = license_id {
                        query.push(" AND license_id = ");
                        query.push_bind(license_id.to_string());
                    }
                }
                let rows = query.build().fetch_all(&mut *conn).await?;
                rows.iter()
                    .map(|row| {
                        Ok(OpenLease {
                            org_id: uuid(row.try_get(0)?)?,
                            license_id: uuid(row.try_get(1)?)?,
                            session_id: uuid(row.try_get(2)?)?,
                            start: timestamp(row.try_get(3)?)?,
                            expires_at: timestamp(row.try_get(4)?)?,
                            user_id: uuid(row.try_get(5)?)?,
                            hardware_id: row.try_get(6)?,
                            overage: row.try_get(7)?,
                        })
                    })
                    .collect()
            }

            pub(super) async fn write(
                pool: &$pool,
                partition: i16,
                (from, to): (i64, i64),
                changes: &FoldChanges,
                incomplete: &[Incomplete],
                mode: WriteMode,
            ) -> Result<bool, StoreError> {
                let mut tx = pool.begin().await?;
                if mode == WriteMode::Replace {
                    // Partition 0 is the only one today; periods, users and
                    // machines carry no partition.
                    for table in ["usage_periods", "usage_users", "usage_machines"] {
                        sqlx::query(&format!("DELETE FROM {table}"))
                            .execute(&mut *tx)
                            .await?;
                    }
                    for table in ["usage_open_leases", "usage_incomplete"] {
                        let mut query =
                            QueryBuilder::<Db>::new(format!("DELETE FROM {table} WHERE partition = "));
                        query.push_bind(partition);
                        query.build().execute(&mut *tx).await?;
                    }
                    let mut query = QueryBuilder::<Db>::new(
                        "DELETE FROM follower_checkpoints WHERE follower = ",
                    );
                    query.push_bind(BILLING_FOLLOWER);
                    query.push(" AND partition = ");
                    query.push_bind(partition);
                    query.build().execute(&mut *tx).await?;
                }
                let mut query = QueryBuilder::<Db>::new(
                    "INSERT INTO follower_checkpoints (follower, partition, position) VALUES (",
                );
                query.push_bind(BILLING_FOLLOWER);
                query.push(", ");
                query.push_bind(partition);
                query.push(", 0) ON CONFLICT (follower, partition) DO NOTHING");
                query.build().execute(&mut *tx).await?;
                // Moves the checkpoint only from where this range follows;
                // the row lock orders replicas, the condition stops a late one.
                let mut query = QueryBuilder::<Db>::new("UPDATE follower_checkpoints SET position = ");
                query.push_bind(to);
                query.push(concat!(", updated_at = ", $now, " WHERE follower = "));
                query.push_bind(BILLING_FOLLOWER);
                query.push(" AND partition = ");
                query.push_bind(partition);
                query.push(" AND position = ");
                query.push_bind(from);
                if query.build().execute(&mut *tx).await?.rows_affected() != 1 {
                    return Ok(false);
                }
                write_periods(&mut tx, changes).await?;
                write_leases(&mut tx, partition, changes).await?;
                for bad in incomplete {
                    let mut query = QueryBuilder::<Db>::new(
                        "INSERT INTO usage_incomplete (partition, position, org_id) VALUES (",
                    );
                    query.push_bind(bad.partition);
                    query.push(", ");
                    query.push_bind(bad.position);
                    query.push(", ");
                    query.push_bind(bad.org_id.to_string());
                    query.push(") ON CONFLICT (partition, position) DO NOTHING");
                    query.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn write_periods(
                conn: &mut <Db as sqlx::Database>::Connection,
                changes: &FoldChanges,
            ) -> Result<(), StoreError> {
                let periods: Vec<_> = changes.periods.iter().collect();
                for chunk in periods.chunks(ROWS_PER_STATEMENT) {
                    let mut query = QueryBuilder::<Db>::new(
                        "INSERT INTO usage_periods (org_id, granularity, license_id, period_start, \
                         seat_micros, overage_seat_micros, peak_at_grant, carried_in, denials) ",
                    );
                    query.push_values(chunk, |mut row, (key, usage)| {
                        row.push_bind(key.org_id.to_string())
                            .push_bind(key.granularity.as_str())
                            .push_bind(key.license_id.to_string())
                            .push_bind(key.period_start.as_micros())
                            .push_bind(micros(usage.seat_micros))
                            .push_bind(micros(usage.overage_seat_micros))
                            .push_bind(i64::from(usage.peak_at_grant))
                            .push_bind(i64::from(usage.carried_in))
                            .push_bind(micros(usage.denials));
                    });
                    query.push(
                        " ON CONFLICT (org_id, granularity, license_id, period_start) DO UPDATE SET \
                         seat_micros = usage_periods.seat_micros + excluded.seat_micros, \
                         overage_seat_micros = usage_periods.overage_seat_micros + excluded.overage_seat_micros, \
                         peak_at_grant = CASE WHEN excluded.peak_at_grant > usage_periods.peak_at_grant \
                           THEN excluded.peak_at_grant ELSE usage_periods.peak_at_grant END, \
                         carried_in = usage_periods.carried_in + excluded.carried_in, \
                         denials = usage_periods.denials + excluded.denials",
                    );
                    query.build().execute(&mut *conn).await?;
                }
                // The distinct sets, one row per member: users, then machines.
                let users: Vec<(&PeriodKey, String)> = changes
                    .periods
                    .iter()
                    .flat_map(|(key, usage)| usage.users.iter().map(move |user| (key, user.to_string())))
                    .collect();
                let machines: Vec<(&PeriodKey, String)> = changes
                    .periods
                    .iter()
                    .flat_map(|(key, usage)| usage.machines.iter().map(move |machine| (key, machine.clone())))
                    .collect();
                for (table, column, members) in [
                    ("usage_users", "user_id", users),
                    ("usage_machines", "hardware_id", machines),
                ] {
                    for chunk in members.chunks(ROWS_PER_STATEMENT) {
                        let mut query = QueryBuilder::<Db>::new("INSERT INTO ");
                        query.push(table);
                        query.push(" (org_id, granularity, license_id, period_start, ");
                        query.push(column);
                        query.push(") ");
                        query.push_values(chunk, |mut row, (key, member)| {
                            push_key(&mut row, key);
                            row.push_bind(member.clone());
                        });
                        query.push(" ON CONFLICT DO NOTHING");
                        query.build().execute(&mut *conn).await?;
                    }
                }
                Ok(())
            }

            fn push_key(row: &mut sqlx::query_builder::Separated<'_, '_, Db, &'static str>, key: &PeriodKey) {
                row.push_bind(key.org_id.to_string())
                    .push_bind(key.granularity.as_str())
                    .push_bind(key.license_id.to_string())
                    .push_bind(key.period_start.as_micros());
            }

            async fn write_leases(
                conn: &mut <Db as sqlx::Database>::Connection,
                partition: i16,
                changes: &FoldChanges,
            ) -> Result<(), StoreError> {
                let closed: Vec<String> = changes
                    .leases
                    .iter()
                    .filter(|(_, lease)| lease.is_none())
                    .map(|((_, _, session_id), _)| session_id.to_string())
                    .collect();
                for chunk in closed.chunks(ROWS_PER_STATEMENT) {
                    let mut query =
                        QueryBuilder::<Db>::new("DELETE FROM usage_open_leases WHERE session_id IN (");
                    let mut ids = query.separated(", ");
                    for id in chunk {
                        ids.push_bind(id.clone());
                    }
                    query.push(")");
                    query.build().execute(&mut *conn).await?;
                }
                let open: Vec<&OpenLease> = changes.leases.values().flatten().collect();
                for chunk in open.chunks(ROWS_PER_STATEMENT) {
                    let mut query = QueryBuilder::<Db>::new(
                        "INSERT INTO usage_open_leases (session_id, partition, org_id, license_id, \
                         start_at, expires_at, user_id, hardware_id, overage) ",
                    );
                    query.push_values(chunk, |mut row, lease| {
                        row.push_bind(lease.session_id.to_string())
                            .push_bind(partition)
                            .push_bind(lease.org_id.to_string())
                            .push_bind(lease.license_id.to_string())
                            .push_bind(lease.start.as_micros())
                            .push_bind(lease.expires_at.as_micros())
                            .push_bind(lease.user_id.to_string())
                            .push_bind(lease.hardware_id.clone())
                            .push_bind(lease.overage);
                    });
                    query.push(
                        " ON CONFLICT (session_id) DO UPDATE SET partition = excluded.partition, \
                         org_id = excluded.org_id, license_id = excluded.license_id, \
                         start_at = excluded.start_at, expires_at = excluded.expires_at, \
                         user_id = excluded.user_id, hardware_id = excluded.hardware_id, \
                         overage = excluded.overage",
                    );
                    query.build().execute(&mut *conn).await?;
                }
                Ok(())
            }

            pub(super) async fn read(pool: &$pool, query: &UsageQuery) -> Result<Stored, StoreError> {
                let mut tx = pool.begin().await?;
                if let Some(statement) = $snapshot {
                    sqlx::query(statement).execute(&mut *tx).await?;
                }
                let org = query.org_id.to_string();
                let mut select = QueryBuilder::<Db>::new(
                    "SELECT min(position) FROM usage_incomplete WHERE org_id = ",
                );
                select.push_bind(org.clone());
                let incomplete: Option<i64> = select.build().fetch_one(&mut *tx).await?.try_get(0)?;
                // Reports cover partition 0, the only one a ledger writes today.
                let position = read_checkpoint(&mut tx, 0).await?;
                let low = query.granularity.period_start(query.from);
                let mut closed = BTreeMap::new();
                let mut select = QueryBuilder::<Db>::new(
                    "SELECT license_id, period_start, seat_micros, overage_seat_micros, \
                     peak_at_grant, carried_in, denials FROM usage_periods",
                );
                push_range(&mut select, query, &org, low, query.to);
                for row in select.build().fetch_all(&mut *tx).await? {
                    let key = PeriodKey {
                        granularity: query.granularity,
                        org_id: query.org_id,
                        license_id: uuid(row.try_get(0)?)?,
                        period_start: timestamp(row.try_get(1)?)?,
                    };
                    let usage = PeriodUsage {
                        seat_micros: count(row.try_get(2)?),
                        overage_seat_micros: count(row.try_get(3)?),
                        peak_at_grant: u32::try_from(row.try_get::<i64, _>(4)?).unwrap_or(u32::MAX),
                        carried_in: u32::try_from(row.try_get::<i64, _>(5)?).unwrap_or(u32::MAX),
                        denials: count(row.try_get(6)?),
                        ..PeriodUsage::default()
                    };
                    closed.insert(key, (usage, 0, 0));
                }
                for (table, is_users) in [("usage_users", true), ("usage_machines", false)] {
                    let mut select = QueryBuilder::<Db>::new("SELECT license_id, period_start, count(*) FROM ");
                    select.push(table);
                    push_range(&mut select, query, &org, low, query.to);
                    select.push(" GROUP BY license_id, period_start");
                    for row in select.build().fetch_all(&mut *tx).await? {
                        let key = PeriodKey {
                            granularity: query.granularity,
                            org_id: query.org_id,
                            license_id: uuid(row.try_get(0)?)?,
                            period_start: timestamp(row.try_get(1)?)?,
                        };
                        if let Some((_, users, machines)) = closed.get_mut(&key) {
                            let counted = count(row.try_get(2)?);
                            if is_users { *users = counted } else { *machines = counted }
                        }
                    }
                }
                let open = read_open_leases(&mut tx, 0, Some((query.org_id, query.license_id))).await?;
                // The sets of the periods open leases reach, to count their
                // users and machines once.
                let mut sets: BTreeMap<PeriodKey, PeriodUsage> = BTreeMap::new();
                let earliest = open.iter().map(|lease| lease.start).min();
                if let Some(earliest) = earliest {
                    let low = low.max(query.granularity.period_start(earliest));
                    let high = query.to.min(query.as_of);
                    for (table, column) in [("usage_users", "user_id"), ("usage_machines", "hardware_id")] {
                        let mut select = QueryBuilder::<Db>::new("SELECT license_id, period_start, ");
                        select.push(column);
                        select.push(" FROM ");
                        select.push(table);
                        push_range(&mut select, query, &org, low, high);
                        for row in select.build().fetch_all(&mut *tx).await? {
                            let key = PeriodKey {
                                granularity: query.granularity,
                                org_id: query.org_id,
                                license_id: uuid(row.try_get(0)?)?,
                                period_start: timestamp(row.try_get(1)?)?,
                            };
                            let value: String = row.try_get(2)?;
                            let entry = sets.entry(key).or_default();
                            if column == "user_id" {
                                entry.users.insert(uuid(&value)?);
                            } else {
                                entry.machines.insert(value);
                            }
                        }
                    }
                }
                tx.commit().await?;
                Ok(Stored { position, incomplete, closed, sets, open })
            }

            fn push_range(
                select: &mut QueryBuilder<'_, Db>,
                query: &UsageQuery,
                org: &str,
                low: Timestamp,
                high: Timestamp,
            ) {
                select.push(" WHERE org_id = ");
                select.push_bind(org.to_owned());
                select.push(" AND granularity = ");
                select.push_bind(query.granularity.as_str());
                if let Some(license_id) = query.license_id {
                    select.push(" AND license_id = ");
                    select.push_bind(license_id.to_string());
                }
                select.push(" AND period_start >= ");
                select.push_bind(low.as_micros());
                select.push(" AND period_start < ");
                select.push_bind(high.as_micros());
            }
        }
    };
}

// A report reads every table at one instant: PostgreSQL needs a snapshot
// for the whole transaction; SQLite's read transaction is one already.
backend!(
    postgres,
    sqlx::Postgres,
    sqlx::PgPool,
    "now()",
    Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
);
backend!(
    sqlite,
    sqlx::Sqlite,
    sqlx::SqlitePool,
    "CAST(strftime('%s', 'now') AS INTEGER) * 1000000",
    None::<&str>
);
