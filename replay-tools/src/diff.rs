//! `seatledger-replay diff billing`: the live billing projection (the
//! tables the server's billing follower keeps in the ledger's database)
//! against the billing fold replayed from the log up to the same position,
//! for every organization and granularity, as of the instant of that
//! position's event. Lists each period row that differs or exists on one
//! side only. Reads only.
//!
//! `diff hot-counts`: the Redis hot counts (each license's terms, status,
//! seats used, and its live leases) against the license states replayed
//! with the decider's `evolve` up to the Redis checkpoint, as of that
//! position's instant.

use crate::events::EventStream;
use crate::usage::UsageBuilder;
use seatledger_ledger::domain::{LicenseState, StreamId};
use seatledger_ledger::{Store, StoreError};
use seatledger_projections::billing_live::{self, UsageQuery};
use seatledger_projections::{Follower, Granularity, RedisLicenses, UsageError, UsageRow};
use seatledger_schema::Timestamp;
use seatledger_schema::{LicenseId, OrgId};
use std::collections::{BTreeMap, BTreeSet};

/// One difference between the live projection and the replay.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    pub granularity: Granularity,
    pub org_id: OrgId,
    pub license_id: LicenseId,
    pub period_start: Timestamp,
    /// The live row (none: missing from the projection).
    pub live: Option<UsageRow>,
    /// The replayed row (none: the projection has a row the log does not).
    pub replayed: Option<UsageRow>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BillingDiff {
    /// The position both sides are compared at (the live checkpoint).
    pub position: i64,
    pub as_of: Timestamp,
    pub organizations: usize,
    pub rows_compared: usize,
    pub differences: Vec<Difference>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("live billing: {0}")]
    Usage(#[from] UsageError),
    #[error("redis: {0}")]
    Redis(String),
    #[error("the event at position {position} cannot be decoded: {error}; run verify")]
    Undecodable { position: i64, error: String },
}

/// Leases read from Redis per call.
const SESSIONS_PAGE: usize = 1_000;

/// One license whose hot counts differ from the replay.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LicenseDifference {
    pub license_id: LicenseId,
    pub org_id: OrgId,
    /// `view` (terms, status, seats used) or `leases`.
    pub what: &'static str,
    pub live: serde_json::Value,
    pub replayed: serde_json::Value,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HotCountsDiff {
    /// The Redis checkpoint both sides are compared at.
    pub position: i64,
    pub as_of: Timestamp,
    pub licenses: usize,
    pub leases_compared: usize,
    pub differences: Vec<LicenseDifference>,
}

/// Compares the Redis hot counts of `partition` with the replayed license
/// states.
pub async fn diff_hot_counts(
    store: &Store,
    partition: i16,
    redis: &RedisLicenses,
    archive: Option<&std::path::Path>,
) -> Result<HotCountsDiff, DiffError> {
    let position = Follower::position(&mut redis.clone())
        .await
        .map_err(|error| DiffError::Redis(error.to_string()))?;
    let (mut events, _) =
        EventStream::from_log(store, partition, archive, 0, Some(position)).await?;
    let (states, as_of) = replay_licenses(&mut events).await?;
    let mut differences = Vec::new();
    let mut leases_compared = 0;
    for (license_id, state) in &states {
        let Some(replayed) = state.view(as_of) else {
            continue;
        };
        let org_id = replayed.org_id;
        let live = redis
            .view(org_id, *license_id, as_of)
            .await
            .map_err(|error| DiffError::Redis(error.to_string()))?;
        if live.as_ref() != Some(&replayed) {
            differences.push(LicenseDifference {
                license_id: (*license_id),
                org_id,
                what: "view",
                live: json(&live),
                replayed: json(&Some(replayed)),
            });
            continue;
        }
        let replayed_leases = state.live_leases_after(as_of, None, usize::MAX);
        let live_leases = live_leases(redis, org_id, *license_id, as_of).await?;
        leases_compared += replayed_leases.len().max(live_leases.len());
        if live_leases != replayed_leases {
            differences.push(LicenseDifference {
                license_id: (*license_id),
                org_id,
                what: "leases",
                live: json(&live_leases),
                replayed: json(&replayed_leases),
            });
        }
    }
    Ok(HotCountsDiff {
        position,
        as_of,
        licenses: states.len(),
        leases_compared,
        differences,
    })
}

/// Every license's state at the end of `events`, and that end's time.
async fn replay_licenses(
    events: &mut EventStream,
) -> Result<(BTreeMap<LicenseId, LicenseState>, Timestamp), DiffError> {
    let mut states: BTreeMap<LicenseId, LicenseState> = BTreeMap::new();
    let mut as_of = Timestamp::UNIX_EPOCH;
    while let Some(batch) = events.next().await? {
        for record in batch {
            as_of = record.occurred_at;
            let Some(StreamId::License(license_id)) = StreamId::parse(&record.stream_id) else {
                continue;
            };
            let event = record.event().map_err(|error| DiffError::Undecodable {
                position: record.position,
                error: error.to_string(),
            })?;
            let state = states.entry(license_id).or_default();
            *state = seatledger_ledger::domain::license::evolve(std::mem::take(state), &event);
        }
    }
    Ok((states, as_of))
}

/// A license's live leases in Redis, every page.
async fn live_leases(
    redis: &RedisLicenses,
    org_id: OrgId,
    license_id: LicenseId,
    as_of: Timestamp,
) -> Result<Vec<seatledger_ledger::domain::Lease>, DiffError> {
    let mut leases = Vec::new();
    loop {
        let after = leases
            .last()
            .map(|lease: &seatledger_ledger::domain::Lease| lease.session_id);
        let page = redis
            .sessions(org_id, license_id, as_of, after, SESSIONS_PAGE)
            .await
            .map_err(|error| DiffError::Redis(error.to_string()))?
            .unwrap_or_default();
        let full = page.len() == SESSIONS_PAGE;
        leases.extend(page);
        if !full {
            return Ok(leases);
        }
    }
}

/// A value as JSON for a report (null if it cannot be: never for these).
fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// The human-readable form.
pub fn describe_hot_counts(diff: &HotCountsDiff) -> String {
    let mut out = format!(
        "hot counts at position {} (as of {}): {} license(s), {} live lease(s) compared, {} difference(s)\n",
        diff.position,
        diff.as_of,
        diff.licenses,
        diff.leases_compared,
        diff.differences.len()
    );
    for difference in &diff.differences {
        out.push_str(&format!(
            "  license {} of organization {}: {} differ: live {}; replayed {}\n",
            difference.license_id,
            difference.org_id,
            difference.what,
            difference.live,
            difference.replayed
        ));
    }
    out
}

/// Compares live billing of `partition` with the replayed fold.
pub async fn diff_billing(
    store: &Store,
    partition: i16,
    archive: Option<&std::path::Path>,
) -> Result<BillingDiff, DiffError> {
    let position = billing_live::checkpoint(store, partition).await?;
    let (mut events, _) =
        EventStream::from_log(store, partition, archive, 0, Some(position)).await?;
    let mut builders: Vec<(Granularity, UsageBuilder)> = Granularity::ALL
        .iter()
        .map(|granularity| (*granularity, UsageBuilder::new(*granularity)))
        .collect();
    let mut organizations = BTreeSet::new();
    let mut as_of = Timestamp::UNIX_EPOCH;
    while let Some(batch) = events.next().await? {
        for (_, builder) in &mut builders {
            builder.push(&batch);
        }
        for event in &batch {
            organizations.insert(event.org_id);
            as_of = event.occurred_at;
        }
    }
    let mut differences = Vec::new();
    let mut rows_compared = 0;
    for (granularity, builder) in builders {
        let report = builder.finish(Some(as_of));
        rows_compared += compare_usage(
            store,
            granularity,
            report,
            &organizations,
            as_of,
            &mut differences,
        )
        .await?;
    }
    Ok(BillingDiff {
        position,
        as_of,
        organizations: organizations.len(),
        rows_compared,
        differences,
    })
}

/// Compares one granularity's replayed usage with live billing's, for
/// every organization whose history was read whole; how many rows.
async fn compare_usage(
    store: &Store,
    granularity: Granularity,
    report: crate::UsageReport,
    organizations: &BTreeSet<OrgId>,
    as_of: Timestamp,
    differences: &mut Vec<Difference>,
) -> Result<usize, DiffError> {
    let mut rows_compared = 0;
    let incomplete = report.incomplete_orgs();
    let mut replayed: BTreeMap<(OrgId, LicenseId, Timestamp), UsageRow> = report
        .rows
        .into_iter()
        .map(|row| ((row.org_id, row.license_id, row.period_start), row))
        .collect();
    for org_id in organizations
        .iter()
        .filter(|org| !incomplete.contains(*org))
    {
        let query = UsageQuery {
            org_id: (*org_id),
            license_id: None,
            granularity,
            from: Timestamp::MIN,
            to: Timestamp::MAX,
            as_of,
        };
        for row in billing_live::usage(store, &query).await?.rows {
            rows_compared += 1;
            let key = (row.org_id, row.license_id, row.period_start);
            match replayed.remove(&key) {
                Some(expected) if expected == row => {}
                expected => differences.push(Difference {
                    granularity,
                    org_id: row.org_id,
                    license_id: row.license_id,
                    period_start: row.period_start,
                    live: Some(row),
                    replayed: expected,
                }),
            }
        }
    }
    for ((org_id, license_id, period_start), row) in replayed {
        rows_compared += 1;
        differences.push(Difference {
            granularity,
            org_id,
            license_id,
            period_start,
            live: None,
            replayed: Some(row),
        });
    }
    Ok(rows_compared)
}

/// The human-readable form.
pub fn describe(diff: &BillingDiff) -> String {
    let mut out = format!(
        "billing at position {} (as of {}): {} organization(s), {} period row(s) compared, {} difference(s)\n",
        diff.position,
        diff.as_of,
        diff.organizations,
        diff.rows_compared,
        diff.differences.len()
    );
    let show = |row: &Option<UsageRow>| match row {
        Some(row) => format!(
            "seat_micros {} overage {} peak {} users {} machines {} denials {}",
            row.seat_micros,
            row.overage_seat_micros,
            row.peak_seats,
            row.distinct_users,
            row.distinct_machines,
            row.denials
        ),
        None => "missing".into(),
    };
    for difference in &diff.differences {
        out.push_str(&format!(
            "  {} org {} license {} period {}: live {}; replayed {}\n",
            difference.granularity.as_str(),
            difference.org_id,
            difference.license_id,
            difference.period_start,
            show(&difference.live),
            show(&difference.replayed)
        ));
    }
    out
}
