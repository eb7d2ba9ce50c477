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
    open_lease_usage, BillingFold, Granularity, PeriodKey, PeriodUsage, UsageRow,
};
use crate::runner::{Follower, FollowerError, RunnerConfig};
use seatledger_ledger::store::billing::{
    self as stored, open_leases, write, Incomplete, WriteMode,
};
pub use seatledger_ledger::store::billing::{
    checkpoint, stale_leases, UsageQuery, BILLING_FOLLOWER,
};
use seatledger_ledger::{Store, StoreError};
use seatledger_schema::{RecordedEvent, Timestamp};
use std::collections::{BTreeMap, BTreeSet};

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
                    org_id: record.org_id,
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
    let stored = stored::read(store, query).await?;
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
                    org_id: record.org_id,
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
