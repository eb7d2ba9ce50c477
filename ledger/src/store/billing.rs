//! The live billing projection's tables (docs/design.md §4): written by the
//! billing follower in `seatledger-projections`, read by `/usage` and by the
//! reaper while Redis is down. The same statements serve both backends
//! (uuids as text, instants as microseconds since 1970, placeholders from
//! `QueryBuilder`); one macro instantiates them per backend, and the
//! functions below choose it.

use crate::billing::{FoldChanges, Granularity, OpenLease, PeriodKey, PeriodUsage};
use crate::store::{Store, StoreError};
use seatledger_schema::Timestamp;
use seatledger_schema::{LicenseId, OrgId, SessionId};
use sqlx::{QueryBuilder, Row};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The follower's name in `follower_checkpoints`.
pub const BILLING_FOLLOWER: &str = "billing";

/// A lease past its expiry, as the reaper needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleLease {
    pub org_id: OrgId,
    pub license_id: LicenseId,
    pub session_id: SessionId,
}

/// The stored part of a usage report (see [`read`]).
pub async fn read(store: &Store, query: &UsageQuery) -> Result<Stored, StoreError> {
    match store {
        Store::Postgres(pool) => postgres::read(pool, query).await,
        Store::Sqlite(pool, _) => sqlite::read(pool, query).await,
    }
}

/// Rows per multi-row statement (SQLite allows 32,766 bound values).
const ROWS_PER_STATEMENT: usize = 1_000;
const _: () = assert!(ROWS_PER_STATEMENT * 9 < 32_766);

/// An undecodable event, recorded so that its organization's report is
/// refused.
pub struct Incomplete {
    pub partition: i16,
    pub position: i64,
    pub org_id: OrgId,
}

/// What a report is asked for.
#[derive(Clone, Copy, Debug)]
pub struct UsageQuery {
    pub org_id: OrgId,
    pub license_id: Option<LicenseId>,
    pub granularity: Granularity,
    /// Periods that end after `from` and start before `to`.
    pub from: Timestamp,
    pub to: Timestamp,
    pub as_of: Timestamp,
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

pub async fn open_leases(
    store: &Store,
    partition: i16,
    org: Option<(OrgId, Option<LicenseId>)>,
) -> Result<Vec<OpenLease>, StoreError> {
    match store {
        Store::Postgres(pool) => postgres::open_leases(pool, partition, org).await,
        Store::Sqlite(pool, _) => sqlite::open_leases(pool, partition, org).await,
    }
}

/// How a write treats what is stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Add the changes of the range after `from` (the follower).
    Follow,
    /// Replace everything stored with the changes of a fold from 0 (a
    /// rebuild), whatever position the stored projection had reached.
    Replace,
}

pub async fn write(
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

/// What a report reads in one transaction.
pub struct Stored {
    pub position: i64,
    pub incomplete: Option<i64>,
    /// Closed periods in range with their distinct counts.
    pub closed: BTreeMap<PeriodKey, (PeriodUsage, u64, u64)>,
    /// The user and machine sets of the periods open leases touch.
    pub sets: BTreeMap<PeriodKey, PeriodUsage>,
    pub open: Vec<OpenLease>,
}

fn uuid<T: From<Uuid>>(text: &str) -> Result<T, StoreError> {
    Uuid::parse_str(text)
        .map(T::from)
        .map_err(|_| StoreError::Corrupt(format!("usage row: bad uuid {text:?}")))
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
                org: Option<(OrgId, Option<LicenseId>)>,
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
                            org_id: uuid(row.try_get(0)?)?,
                            license_id: uuid(row.try_get(1)?)?,
                            session_id: uuid(row.try_get(2)?)?,
                        })
                    })
                    .collect()
            }

            async fn read_open_leases(
                conn: &mut <Db as sqlx::Database>::Connection,
                partition: i16,
                org: Option<(OrgId, Option<LicenseId>)>,
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
                let closed = read_closed(&mut tx, query, &org, low).await?;
                let open = read_open_leases(&mut tx, 0, Some((query.org_id, query.license_id))).await?;
                let sets = match open.iter().map(|lease| lease.start).min() {
                    Some(earliest) => read_sets(&mut tx, query, &org, low.max(query.granularity.period_start(earliest))).await?,
                    None => BTreeMap::new(),
                };
                tx.commit().await?;
                Ok(Stored { position, incomplete, closed, sets, open })
            }

            /// The closed periods' sums in range, with their counts of
            /// users and machines.
            async fn read_closed(
                conn: &mut <Db as sqlx::Database>::Connection,
                query: &UsageQuery,
                org: &str,
                low: Timestamp,
            ) -> Result<BTreeMap<PeriodKey, (PeriodUsage, u64, u64)>, StoreError> {
                let mut closed = BTreeMap::new();
                let mut select = QueryBuilder::<Db>::new(
                    "SELECT license_id, period_start, seat_micros, overage_seat_micros, \
                     peak_at_grant, carried_in, denials FROM usage_periods",
                );
                push_range(&mut select, query, org, low, query.to);
                for row in select.build().fetch_all(&mut *conn).await? {
                    let key = period_key(query, &row)?;
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
                    push_range(&mut select, query, org, low, query.to);
                    select.push(" GROUP BY license_id, period_start");
                    for row in select.build().fetch_all(&mut *conn).await? {
                        let key = period_key(query, &row)?;
                        if let Some((_, users, machines)) = closed.get_mut(&key) {
                            let counted = count(row.try_get(2)?);
                            if is_users { *users = counted } else { *machines = counted }
                        }
                    }
                }
                Ok(closed)
            }

            /// The sets of users and machines of the periods open leases
            /// reach (from `low`), to count each once.
            async fn read_sets(
                conn: &mut <Db as sqlx::Database>::Connection,
                query: &UsageQuery,
                org: &str,
                low: Timestamp,
            ) -> Result<BTreeMap<PeriodKey, PeriodUsage>, StoreError> {
                let mut sets: BTreeMap<PeriodKey, PeriodUsage> = BTreeMap::new();
                let high = query.to.min(query.as_of);
                for (table, column) in [("usage_users", "user_id"), ("usage_machines", "hardware_id")] {
                    let mut select = QueryBuilder::<Db>::new("SELECT license_id, period_start, ");
                    select.push(column);
                    select.push(" FROM ");
                    select.push(table);
                    push_range(&mut select, query, org, low, high);
                    for row in select.build().fetch_all(&mut *conn).await? {
                        let key = period_key(query, &row)?;
                        let value: String = row.try_get(2)?;
                        let entry = sets.entry(key).or_default();
                        if column == "user_id" {
                            entry.users.insert(uuid(&value)?);
                        } else {
                            entry.machines.insert(value);
                        }
                    }
                }
                Ok(sets)
            }

            /// The period a row of a usage table is about (its first two
            /// columns: license and period start) for `query`'s organization.
            fn period_key(query: &UsageQuery, row: &<Db as sqlx::Database>::Row) -> Result<PeriodKey, StoreError> {
                Ok(PeriodKey {
                    granularity: query.granularity,
                    org_id: query.org_id,
                    license_id: uuid(row.try_get(0)?)?,
                    period_start: timestamp(row.try_get(1)?)?,
                })
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
