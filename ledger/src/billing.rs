//! The billing fold (docs/design.md §4): per organization, license and UTC period,
//! seat-seconds, overage seat-seconds, peak concurrent seats, distinct users
//! and machines, and denials.
//!
//! It is a pure fold over the log: [`BillingFold::apply`] takes recorded
//! events in position order and [`BillingFold::report`] reads the usage as of
//! an instant. No clock, no I/O, no randomness: the same events give the
//! same report, live or replayed, and applying an event twice (at-least-once
//! delivery) changes nothing, because the fold remembers the last position
//! it applied per partition.
//!
//! How a lease is counted:
//! - it starts at its `SeatAcquired` (`occurred_at`);
//! - it ends at its `SeatReleased` (`occurred_at`, never past the lease's
//!   `expires_at`), or at its `expires_at` when it ends by `SeatExpired`:
//!   a zombie is billed to when it stopped heartbeating, not to when it
//!   was reaped;
//! - a lease still open when the report is read counts up to the earlier of
//!   its `expires_at` and the report's `as_of`;
//! - a lease spanning several periods is split at the period boundaries, and
//!   its user and machine count as distinct in each period it touches.
//!
//! Peak concurrent seats of a period is the most leases held at one
//! instant in it: right after each grant in the period (every open lease
//! whose `expires_at` is still ahead, the new one included) and at the
//! period's first instant (the leases carried over from before it). The
//! maximum of coverage is always reached at one of those instants.
//!
//! Seat time is kept in whole microseconds (the log's precision) so sums
//! are exact; [`UsageRow::seat_seconds`] converts for display.

use crate::domain::StreamId;
use chrono::{Datelike, TimeZone, Utc};
use seatledger_schema::{DecodeError, Event, RecordedEvent, Timestamp};
use seatledger_schema::{LicenseId, OrgId, SessionId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use uuid::Uuid;

const MICROS_PER_HOUR: i64 = 3_600 * 1_000_000;
const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// The length of a billing period. Periods are UTC calendar units.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Hour,
    #[default]
    Day,
    Month,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Hour, Granularity::Day, Granularity::Month];

    /// `hour`, `day` or `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Month => "month",
        }
    }

    /// Parses `hour`, `day` or `month`.
    pub fn parse(text: &str) -> Option<Granularity> {
        Granularity::ALL
            .into_iter()
            .find(|granularity| granularity.as_str() == text)
    }

    /// The first instant of the period holding `at`.
    pub fn period_start(self, at: Timestamp) -> Timestamp {
        let micros = at.as_micros();
        match self {
            Granularity::Hour => {
                Timestamp::from_micros_saturating(micros - micros.rem_euclid(MICROS_PER_HOUR))
            }
            Granularity::Day => {
                Timestamp::from_micros_saturating(micros - micros.rem_euclid(MICROS_PER_DAY))
            }
            Granularity::Month => {
                let date = at.to_datetime();
                month_start(date.year(), date.month()).unwrap_or(at)
            }
        }
    }

    /// The first instant of the period after the one starting at `start`.
    /// Always later than `start`.
    pub fn next_period(self, start: Timestamp) -> Timestamp {
        let next = match self {
            Granularity::Hour => {
                Timestamp::from_micros_saturating(start.as_micros() + MICROS_PER_HOUR)
            }
            Granularity::Day => {
                Timestamp::from_micros_saturating(start.as_micros() + MICROS_PER_DAY)
            }
            Granularity::Month => {
                let date = start.to_datetime();
                let (year, month) = if date.month() == 12 {
                    (date.year() + 1, 1)
                } else {
                    (date.year(), date.month() + 1)
                };
                month_start(year, month).unwrap_or(Timestamp::MAX)
            }
        };
        // Out of chrono's calendar range: one last period to the end of time.
        if next > start {
            next
        } else {
            Timestamp::MAX
        }
    }
}

fn month_start(year: i32, month: u32) -> Option<Timestamp> {
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .and_then(|start| Timestamp::try_from(start).ok())
}

/// One row of a usage report: one license in one period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    pub org_id: OrgId,
    pub license_id: LicenseId,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    /// Seat time held in the period, in microseconds.
    pub seat_micros: u64,
    /// The part of `seat_micros` held by overage leases.
    pub overage_seat_micros: u64,
    pub peak_seats: u32,
    pub distinct_users: u32,
    pub distinct_machines: u32,
    pub denials: u64,
}

impl UsageRow {
    pub fn seat_seconds(&self) -> f64 {
        self.seat_micros as f64 / 1e6
    }

    pub fn overage_seat_seconds(&self) -> f64 {
        self.overage_seat_micros as f64 / 1e6
    }
}

/// Which row a period's usage belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeriodKey {
    pub granularity: Granularity,
    pub org_id: OrgId,
    pub license_id: LicenseId,
    pub period_start: Timestamp,
}

/// What closed leases, grants and denials left in one period. Periods
/// merge: seat time, carried-in leases and denials add up, the peak at a
/// grant is the larger, and the user and machine sets unite. A live
/// follower stores these deltas batch by batch; merging them gives what
/// one fold over the whole log holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeriodUsage {
    pub seat_micros: u64,
    pub overage_seat_micros: u64,
    /// The most leases held right after a grant in this period.
    pub peak_at_grant: u32,
    /// Leases that were held at the period's first instant.
    pub carried_in: u32,
    pub users: BTreeSet<UserId>,
    pub machines: BTreeSet<String>,
    pub denials: u64,
}

impl PeriodUsage {
    /// The report row of this period.
    pub fn row(&self, key: &PeriodKey) -> UsageRow {
        self.row_with_counts(key, self.users.len() as u64, self.machines.len() as u64)
    }

    /// The report row, with distinct counts computed elsewhere (a store
    /// that counts its sets).
    pub fn row_with_counts(&self, key: &PeriodKey, users: u64, machines: u64) -> UsageRow {
        UsageRow {
            org_id: key.org_id,
            license_id: key.license_id,
            period_start: key.period_start,
            period_end: key.granularity.next_period(key.period_start),
            seat_micros: self.seat_micros,
            overage_seat_micros: self.overage_seat_micros,
            peak_seats: self.peak_at_grant.max(self.carried_in),
            distinct_users: u32::try_from(users).unwrap_or(u32::MAX),
            distinct_machines: u32::try_from(machines).unwrap_or(u32::MAX),
            denials: self.denials,
        }
    }

    /// Adds `other` into `self` (see the type's docs).
    pub fn merge(&mut self, other: &PeriodUsage) {
        self.seat_micros = self.seat_micros.saturating_add(other.seat_micros);
        self.overage_seat_micros = self
            .overage_seat_micros
            .saturating_add(other.overage_seat_micros);
        self.peak_at_grant = self.peak_at_grant.max(other.peak_at_grant);
        self.carried_in = self.carried_in.saturating_add(other.carried_in);
        self.users.extend(other.users.iter().copied());
        self.machines.extend(other.machines.iter().cloned());
        self.denials = self.denials.saturating_add(other.denials);
    }
}

/// A lease granted and not yet released or expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenLease {
    pub org_id: OrgId,
    pub license_id: LicenseId,
    pub session_id: SessionId,
    pub start: Timestamp,
    pub expires_at: Timestamp,
    pub user_id: UserId,
    pub hardware_id: String,
    pub overage: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LicenseLeases {
    open: HashMap<SessionId, OpenLease>,
    /// `(expires_at, session_id)` of every open lease, to count the live ones.
    by_expiry: BTreeSet<(Timestamp, SessionId)>,
}

impl LicenseLeases {
    /// Open leases whose `expires_at` is after `at`.
    fn live_at(&self, at: Timestamp) -> usize {
        let stale = self
            .by_expiry
            .range(..=(at, SessionId::from_uuid(Uuid::max())))
            .count();
        self.open.len() - stale
    }

    fn insert(&mut self, lease: OpenLease) -> Option<OpenLease> {
        let entry = (lease.expires_at, lease.session_id);
        let old = self.open.insert(lease.session_id, lease);
        if let Some(old) = &old {
            self.by_expiry.remove(&(old.expires_at, old.session_id));
        }
        self.by_expiry.insert(entry);
        old
    }
}

/// `(org_id, license_id, session_id)` of a lease.
pub type LeaseKey = (OrgId, LicenseId, SessionId);

/// What a fold that tracks its changes accumulated since the last
/// [`BillingFold::take_changes`]: period deltas to merge into the stored
/// ones, and the open leases that changed (`None`: no longer open). A lease
/// granted and ended between two calls is in neither: it was never stored.
#[derive(Debug, Default)]
pub struct FoldChanges {
    pub periods: BTreeMap<PeriodKey, PeriodUsage>,
    pub leases: BTreeMap<LeaseKey, Option<OpenLease>>,
}

/// The billing projection's state. See the module docs for what it counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillingFold {
    granularities: Vec<Granularity>,
    /// The last position applied, per partition.
    applied: BTreeMap<i16, i64>,
    /// Open leases per `(org_id, license_id)`.
    licenses: HashMap<(OrgId, LicenseId), LicenseLeases>,
    buckets: BTreeMap<PeriodKey, PeriodUsage>,
    /// Leases changed since the last `take_changes`, when tracked, and
    /// whether each was open (so stored) before the first change.
    changed_leases: Option<BTreeMap<LeaseKey, bool>>,
}

impl BillingFold {
    pub fn new(granularity: Granularity) -> Self {
        Self::with_granularities(&[granularity])
    }

    /// A fold that keeps periods of each of `granularities` at once.
    pub fn with_granularities(granularities: &[Granularity]) -> Self {
        let mut granularities = granularities.to_vec();
        granularities.sort();
        granularities.dedup();
        BillingFold {
            granularities,
            applied: BTreeMap::new(),
            licenses: HashMap::new(),
            buckets: BTreeMap::new(),
            changed_leases: None,
        }
    }

    /// A fold for a follower that stores its output as it goes: it keeps
    /// only open leases between [`take_changes`](Self::take_changes), which
    /// hands over the period deltas and changed leases to store.
    pub fn tracking_changes(mut self) -> Self {
        self.changed_leases = Some(BTreeMap::new());
        self
    }

    /// Starts from stored state: `partition` applied up to `position`,
    /// with `leases` open.
    pub fn restore(
        &mut self,
        partition: i16,
        position: i64,
        leases: impl IntoIterator<Item = OpenLease>,
    ) {
        self.applied.insert(partition, position);
        self.licenses.clear();
        self.buckets.clear();
        for lease in leases {
            self.licenses
                .entry((lease.org_id, lease.license_id))
                .or_default()
                .insert(lease);
        }
        if let Some(changed) = &mut self.changed_leases {
            changed.clear();
        }
    }

    pub fn granularities(&self) -> &[Granularity] {
        &self.granularities
    }

    /// The last position applied in `partition` (0 before any).
    pub fn position(&self, partition: i16) -> i64 {
        self.applied.get(&partition).copied().unwrap_or(0)
    }

    /// Applies one recorded event. Events at or before the partition's
    /// last applied position are skipped (`Ok(false)`), so redelivery is
    /// harmless. Events of other streams than licenses change nothing but
    /// the position. An event that cannot be decoded is an `Err`, and its
    /// position counts as applied all the same.
    pub fn apply(&mut self, record: &RecordedEvent) -> Result<bool, DecodeError> {
        if record.position <= self.position(record.partition) {
            return Ok(false);
        }
        let result = match StreamId::parse(&record.stream_id) {
            Some(StreamId::License(license_id)) => record.event().map(|event| {
                self.apply_event(record.org_id, license_id, record.occurred_at, &event);
            }),
            _ => Ok(()),
        };
        // Past an undecodable event too: it is reported to the caller, who
        // decides what its tenant's report is worth; the fold goes on.
        self.applied.insert(record.partition, record.position);
        result.map(|()| true)
    }

    /// Applies one license event that happened at `at`. Callers that use
    /// this directly are responsible for applying each event once, in order.
    ///
    /// Long because it is one match over every event kind that moves
    /// billing; each arm is a few lines of the fold.
    pub fn apply_event(
        &mut self,
        org_id: OrgId,
        license_id: LicenseId,
        at: Timestamp,
        event: &Event,
    ) {
        match event {
            Event::SeatAcquired(acquired) => {
                let lease = OpenLease {
                    org_id,
                    license_id,
                    session_id: acquired.session_id,
                    start: at,
                    expires_at: acquired.expires_at,
                    user_id: acquired.user_id,
                    hardware_id: acquired.hardware_id.clone(),
                    overage: acquired.overage,
                };
                let was_open = self
                    .licenses
                    .get(&(org_id, license_id))
                    .is_some_and(|leases| leases.open.contains_key(&acquired.session_id));
                self.changed(org_id, license_id, acquired.session_id, was_open);
                let leases = self.licenses.entry((org_id, license_id)).or_default();
                if let Some(old) = leases.insert(lease) {
                    // A session id granted twice cannot come from the decider;
                    // bill the first grant up to the second rather than lose it.
                    let end = at.min(old.expires_at);
                    self.close(&old, end);
                }
                let live = self
                    .licenses
                    .get(&(org_id, license_id))
                    .map_or(0, |leases| leases.live_at(at));
                let live = u32::try_from(live).unwrap_or(u32::MAX);
                for granularity in self.granularities.clone() {
                    let bucket = self.bucket(granularity, org_id, license_id, at);
                    bucket.peak_at_grant = bucket.peak_at_grant.max(live);
                }
            }
            Event::SeatHeartbeat(beat) => {
                if let Some(leases) = self.licenses.get_mut(&(org_id, license_id)) {
                    if let Some(lease) = leases.open.get_mut(&beat.session_id) {
                        leases
                            .by_expiry
                            .remove(&(lease.expires_at, beat.session_id));
                        lease.expires_at = beat.expires_at;
                        leases.by_expiry.insert((beat.expires_at, beat.session_id));
                        self.changed(org_id, license_id, beat.session_id, true);
                    }
                }
            }
            Event::SeatReleased(released) => {
                if let Some(lease) = self.take(org_id, license_id, released.session_id) {
                    let end = at.min(lease.expires_at);
                    self.close(&lease, end);
                }
            }
            Event::SeatExpired(expired) => {
                if let Some(lease) = self.take(org_id, license_id, expired.session_id) {
                    self.close(&lease, lease.expires_at);
                }
            }
            Event::SeatDenied(_) => {
                for granularity in self.granularities.clone() {
                    self.bucket(granularity, org_id, license_id, at).denials += 1;
                }
            }
            // A suspension or revocation that ends every lease: each ends
            // as its own release or expiry would have (at `at`, or at its
            // `expires_at` if it had gone stale before).
            Event::LicenseSuspended(changed) | Event::LicenseRevoked(changed)
                if changed.ends_leases =>
            {
                if let Some(leases) = self.licenses.remove(&(org_id, license_id)) {
                    for lease in leases.open.into_values() {
                        self.changed(org_id, license_id, lease.session_id, true);
                        let end = at.min(lease.expires_at);
                        self.close(&lease, end);
                    }
                }
            }
            Event::OrganizationRegistered(_)
            | Event::LogPruned(_)
            | Event::UserRegistered(_)
            | Event::UserRoleChanged(_)
            | Event::UserDeactivated(_)
            | Event::LicenseIssued(_)
            | Event::LicenseSeatsChanged(_)
            | Event::LicenseRenewed(_)
            | Event::LicenseSuspended(_)
            | Event::LicenseReinstated(_)
            | Event::LicenseRevoked(_) => {}
        }
    }

    /// Usage per granularity, organization, license and period as of
    /// `as_of`, in that order. Leases still open count up to the earlier of
    /// their `expires_at` and `as_of`.
    pub fn report(&self, as_of: Timestamp) -> Vec<UsageRow> {
        let mut buckets = self.buckets.clone();
        for granularity in &self.granularities {
            let open = open_lease_usage(
                *granularity,
                self.licenses
                    .values()
                    .flat_map(|leases| leases.open.values()),
                as_of,
            );
            for (key, usage) in open {
                buckets.entry(key).or_default().merge(&usage);
            }
        }
        buckets.iter().map(|(key, usage)| usage.row(key)).collect()
    }

    /// Hands over what changed since the last call (see [`FoldChanges`]);
    /// the fold keeps only its open leases. Without
    /// [`tracking_changes`](Self::tracking_changes), `leases` is empty.
    pub fn take_changes(&mut self) -> FoldChanges {
        let periods = std::mem::take(&mut self.buckets);
        let mut leases = BTreeMap::new();
        if let Some(changed) = &mut self.changed_leases {
            for (key, was_open) in std::mem::take(changed) {
                let (org_id, license_id, session_id) = key;
                let lease = self
                    .licenses
                    .get(&(org_id, license_id))
                    .and_then(|leases| leases.open.get(&session_id))
                    .cloned();
                if lease.is_some() || was_open {
                    leases.insert(key, lease);
                }
            }
        }
        FoldChanges { periods, leases }
    }

    fn changed(
        &mut self,
        org_id: OrgId,
        license_id: LicenseId,
        session_id: SessionId,
        was_open: bool,
    ) {
        if let Some(changed) = &mut self.changed_leases {
            changed
                .entry((org_id, license_id, session_id))
                .or_insert(was_open);
        }
    }

    fn take(
        &mut self,
        org_id: OrgId,
        license_id: LicenseId,
        session_id: SessionId,
    ) -> Option<OpenLease> {
        let leases = self.licenses.get_mut(&(org_id, license_id))?;
        let lease = leases.open.remove(&session_id)?;
        leases.by_expiry.remove(&(lease.expires_at, session_id));
        if leases.open.is_empty() {
            self.licenses.remove(&(org_id, license_id));
        }
        self.changed(org_id, license_id, session_id, true);
        Some(lease)
    }

    fn close(&mut self, lease: &OpenLease, end: Timestamp) {
        for granularity in self.granularities.clone() {
            add_interval(&mut self.buckets, granularity, lease, end);
        }
    }

    fn bucket(
        &mut self,
        granularity: Granularity,
        org_id: OrgId,
        license_id: LicenseId,
        at: Timestamp,
    ) -> &mut PeriodUsage {
        let key = PeriodKey {
            granularity,
            org_id,
            license_id,
            period_start: granularity.period_start(at),
        };
        self.buckets.entry(key).or_default()
    }
}

/// What `leases`, still open, add to the periods of `granularity` when
/// counted up to the earlier of their `expires_at` and `as_of`.
pub fn open_lease_usage<'a>(
    granularity: Granularity,
    leases: impl IntoIterator<Item = &'a OpenLease>,
    as_of: Timestamp,
) -> BTreeMap<PeriodKey, PeriodUsage> {
    let mut buckets = BTreeMap::new();
    for lease in leases {
        add_interval(
            &mut buckets,
            granularity,
            lease,
            as_of.min(lease.expires_at),
        );
    }
    buckets
}

/// Adds the lease held from its start to `end` to every period it touches.
fn add_interval(
    buckets: &mut BTreeMap<PeriodKey, PeriodUsage>,
    granularity: Granularity,
    lease: &OpenLease,
    end: Timestamp,
) {
    let start = lease.start;
    if end <= start {
        return;
    }
    let mut period = granularity.period_start(start);
    while period < end {
        let next = granularity.next_period(period);
        let held = end.min(next).micros_since(start.max(period));
        let held = u64::try_from(held).unwrap_or(0);
        let bucket = buckets
            .entry(PeriodKey {
                granularity,
                org_id: lease.org_id,
                license_id: lease.license_id,
                period_start: period,
            })
            .or_default();
        bucket.seat_micros = bucket.seat_micros.saturating_add(held);
        if lease.overage {
            bucket.overage_seat_micros = bucket.overage_seat_micros.saturating_add(held);
        }
        if period > start {
            bucket.carried_in += 1;
        }
        bucket.users.insert(lease.user_id);
        if !bucket.machines.contains(&lease.hardware_id) {
            bucket.machines.insert(lease.hardware_id.clone());
        }
        period = next;
    }
}

/// Usage rows as CSV with a header line; seat time in seconds with six
/// exact decimals. `seatledger-replay usage` and `GET /api/v1/usage` both
/// write this.
pub fn usage_csv(rows: &[UsageRow]) -> String {
    let seconds = |micros: u64| format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
    let mut out = String::from(
        "org_id,license_id,period_start,period_end,seat_seconds,overage_seat_seconds,\
         peak_seats,distinct_users,distinct_machines,denials\n",
    );
    for row in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            row.org_id,
            row.license_id,
            row.period_start,
            row.period_end,
            seconds(row.seat_micros),
            seconds(row.overage_seat_micros),
            row.peak_seats,
            row.distinct_users,
            row.distinct_machines,
            row.denials
        ));
    }
    out
}

#[cfg(test)]
mod tests;
