//! `usage`: billing recomputed from the log (or a NATS stream) with the
//! billing fold a live follower runs.

use crate::events;
use seatledger_ledger::{Store, StoreError};
use seatledger_projections::{BillingFold, Granularity, UsageRow};
use seatledger_schema::OrgId;
use seatledger_schema::{DecodeError, RecordedEvent, Timestamp};

/// An event the billing fold could not read: its tenant's usage is
/// incomplete, every other tenant's is not affected.
#[derive(Debug)]
pub struct UndecodableEvent {
    pub position: i64,
    pub org_id: OrgId,
    pub error: DecodeError,
}

/// Usage rows of the tenants whose every event was read, and the events
/// that could not be (their tenants have no rows: a partial bill is worse
/// than none).
#[derive(Debug, Default)]
pub struct UsageReport {
    pub rows: Vec<UsageRow>,
    pub undecodable: Vec<UndecodableEvent>,
}

impl UsageReport {
    /// Tenants with an undecodable event, in position order, once each.
    pub fn incomplete_orgs(&self) -> Vec<OrgId> {
        let mut orgs = Vec::new();
        for event in &self.undecodable {
            if !orgs.contains(&event.org_id) {
                orgs.push(event.org_id);
            }
        }
        orgs
    }
}

/// Usage recomputed from the log: the billing fold over every event of
/// `partition` up to its head, reported as of `as_of`. Without `as_of`, as
/// of the last event's `occurred_at`, so the same log always gives the same
/// report (leases still open count up to that instant, or their expiry).
/// An event that cannot be decoded is reported with its position and
/// tenant; the fold goes on with every other tenant.
pub async fn usage(
    store: &Store,
    partition: i16,
    granularity: Granularity,
    as_of: Option<Timestamp>,
) -> Result<UsageReport, StoreError> {
    let (events, _) = events::EventStream::from_store(store, partition, None).await?;
    usage_of(events, granularity, as_of).await
}

/// [`usage`] over events from any source (the store, an export file).
pub async fn usage_of(
    mut events: events::EventStream,
    granularity: Granularity,
    as_of: Option<Timestamp>,
) -> Result<UsageReport, StoreError> {
    let mut usage = UsageBuilder::new(granularity);
    while let Some(batch) = events.next().await? {
        usage.push(&batch);
    }
    Ok(usage.finish(as_of))
}

/// The usage fold over events from any source (the log, JetStream), in
/// position order.
pub struct UsageBuilder {
    fold: BillingFold,
    last: Option<Timestamp>,
    undecodable: Vec<UndecodableEvent>,
}

impl UsageBuilder {
    pub fn new(granularity: Granularity) -> UsageBuilder {
        UsageBuilder {
            fold: BillingFold::new(granularity),
            last: None,
            undecodable: Vec::new(),
        }
    }

    pub fn push(&mut self, events: &[RecordedEvent]) {
        for record in events {
            if let Err(error) = self.fold.apply(record) {
                self.undecodable.push(UndecodableEvent {
                    position: record.position,
                    org_id: record.org_id,
                    error,
                });
            }
            self.last = Some(record.occurred_at);
        }
    }

    /// The report as of `as_of` (default: the last event's time).
    pub fn finish(self, as_of: Option<Timestamp>) -> UsageReport {
        let as_of = as_of.or(self.last).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut report = UsageReport {
            rows: self.fold.report(as_of),
            undecodable: self.undecodable,
        };
        let incomplete = report.incomplete_orgs();
        report.rows.retain(|row| !incomplete.contains(&row.org_id));
        report
    }
}

/// Usage recomputed from JetStream instead of the log: every message of
/// `stream`, through the consumer library (repeats dropped; a gap is an
/// error: republish the range first). Same report as [`usage`] on the same
/// events.
pub async fn usage_from_nats(
    client: async_nats::Client,
    stream: &str,
    granularity: Granularity,
    as_of: Option<Timestamp>,
) -> Result<UsageReport, seatledger_projections::ConsumerError> {
    let mut consumer = seatledger_projections::EventConsumer::from_start(client, stream).await?;
    let mut usage = UsageBuilder::new(granularity);
    loop {
        let events = consumer
            .fetch(1_000, std::time::Duration::from_secs(1))
            .await?;
        if events.is_empty() && consumer.pending().await? == 0 {
            break;
        }
        usage.push(&events);
    }
    Ok(usage.finish(as_of))
}

/// The rows of one organization (all without `org`) whose period overlaps
/// `[from, to)` (unbounded where absent).
pub fn select_usage(
    rows: Vec<UsageRow>,
    org: Option<OrgId>,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
) -> Vec<UsageRow> {
    rows.into_iter()
        .filter(|row| org.is_none_or(|org| row.org_id == org))
        .filter(|row| from.is_none_or(|from| row.period_end > from))
        .filter(|row| to.is_none_or(|to| row.period_start < to))
        .collect()
}
