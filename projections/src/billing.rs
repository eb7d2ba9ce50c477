//! The billing fold (DESIGN §4): per organization, license and UTC period,
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

use chrono::{Datelike, TimeZone, Utc};
use seatledger_ledger::domain::StreamId;
use seatledger_schema::{DecodeError, Event, RecordedEvent, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use uuid::Uuid;

const MICROS_PER_HOUR: i64 = 3_600 * 1_000_000;
const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// The length of a billing period. Periods are UTC calendar units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Hour,
    #[default]
    Day,
    Month,
}

impl Granularity {
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
    pub org_id: Uuid,
    pub license_id: Uuid,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct BucketKey {
    org_id: Uuid,
    license_id: Uuid,
    period_start: Timestamp,
}

/// What closed leases, grants and denials left in one period.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Bucket {
    seat_micros: u64,
    overage_seat_micros: u64,
    /// The most leases held right after a grant in this period.
    peak_at_grant: u32,
    /// Closed leases that were held at the period's first instant.
    carried_in: u32,
    users: BTreeSet<Uuid>,
    machines: BTreeSet<String>,
    denials: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct OpenLease {
    start: Timestamp,
    expires_at: Timestamp,
    user_id: Uuid,
    hardware_id: String,
    overage: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LicenseLeases {
    open: HashMap<Uuid, OpenLease>,
    /// `(expires_at, session_id)` of every open lease, to count the live ones.
    by_expiry: BTreeSet<(Timestamp, Uuid)>,
}

impl LicenseLeases {
    /// Open leases whose `expires_at` is after `at`.
    fn live_at(&self, at: Timestamp) -> usize {
        let stale = self.by_expiry.range(..=(at, Uuid::max())).count();
        self.open.len() - stale
    }
}

/// The billing projection's state. See the module docs for what it counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillingFold {
    granularity: Granularity,
    /// The last position applied, per partition.
    applied: BTreeMap<i16, i64>,
    /// Open leases per `(org_id, license_id)`.
    licenses: HashMap<(Uuid, Uuid), LicenseLeases>,
    buckets: BTreeMap<BucketKey, Bucket>,
}

impl BillingFold {
    pub fn new(granularity: Granularity) -> Self {
        BillingFold {
            granularity,
            applied: BTreeMap::new(),
            licenses: HashMap::new(),
            buckets: BTreeMap::new(),
        }
    }

    pub fn granularity(&self) -> Granularity {
        self.granularity
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
                self.apply_event(record.tenant_id, license_id, record.occurred_at, &event);
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
    pub fn apply_event(&mut self, org_id: Uuid, license_id: Uuid, at: Timestamp, event: &Event) {
        match event {
            Event::SeatAcquired(acquired) => {
                let leases = self.licenses.entry((org_id, license_id)).or_default();
                let lease = OpenLease {
                    start: at,
                    expires_at: acquired.expires_at,
                    user_id: acquired.user_id,
                    hardware_id: acquired.hardware_id.clone(),
                    overage: acquired.overage,
                };
                if let Some(old) = leases.open.insert(acquired.session_id, lease) {
                    // A session id granted twice cannot come from the decider;
                    // bill the first grant up to the second rather than lose it.
                    leases
                        .by_expiry
                        .remove(&(old.expires_at, acquired.session_id));
                    let end = at.min(old.expires_at);
                    self.close(org_id, license_id, &old, end);
                }
                let leases = self.licenses.entry((org_id, license_id)).or_default();
                leases
                    .by_expiry
                    .insert((acquired.expires_at, acquired.session_id));
                let live = u32::try_from(leases.live_at(at)).unwrap_or(u32::MAX);
                let bucket = self.bucket(org_id, license_id, at);
                bucket.peak_at_grant = bucket.peak_at_grant.max(live);
            }
            Event::SeatHeartbeat(beat) => {
                if let Some(leases) = self.licenses.get_mut(&(org_id, license_id)) {
                    if let Some(lease) = leases.open.get_mut(&beat.session_id) {
                        leases
                            .by_expiry
                            .remove(&(lease.expires_at, beat.session_id));
                        lease.expires_at = beat.expires_at;
                        leases.by_expiry.insert((beat.expires_at, beat.session_id));
                    }
                }
            }
            Event::SeatReleased(released) => {
                if let Some(lease) = self.take(org_id, license_id, released.session_id) {
                    let end = at.min(lease.expires_at);
                    self.close(org_id, license_id, &lease, end);
                }
            }
            Event::SeatExpired(expired) => {
                if let Some(lease) = self.take(org_id, license_id, expired.session_id) {
                    self.close(org_id, license_id, &lease, lease.expires_at);
                }
            }
            Event::SeatDenied(_) => self.bucket(org_id, license_id, at).denials += 1,
            Event::OrganizationRegistered(_)
            | Event::UserRegistered(_)
            | Event::LicenseIssued(_)
            | Event::LicenseSeatsChanged(_)
            | Event::LicenseRenewed(_)
            | Event::LicenseSuspended(_)
            | Event::LicenseReinstated(_)
            | Event::LicenseRevoked(_) => {}
        }
    }

    /// Usage per organization, license and period as of `as_of`, ordered by
    /// organization, license and period. Leases still open count up to the
    /// earlier of their `expires_at` and `as_of`.
    pub fn report(&self, as_of: Timestamp) -> Vec<UsageRow> {
        let mut buckets = self.buckets.clone();
        for (&(org_id, license_id), leases) in &self.licenses {
            for lease in leases.open.values() {
                let end = as_of.min(lease.expires_at);
                add_interval(
                    &mut buckets,
                    self.granularity,
                    org_id,
                    license_id,
                    lease,
                    end,
                );
            }
        }
        buckets
            .into_iter()
            .map(|(key, bucket)| UsageRow {
                org_id: key.org_id,
                license_id: key.license_id,
                period_start: key.period_start,
                period_end: self.granularity.next_period(key.period_start),
                seat_micros: bucket.seat_micros,
                overage_seat_micros: bucket.overage_seat_micros,
                peak_seats: bucket.peak_at_grant.max(bucket.carried_in),
                distinct_users: u32::try_from(bucket.users.len()).unwrap_or(u32::MAX),
                distinct_machines: u32::try_from(bucket.machines.len()).unwrap_or(u32::MAX),
                denials: bucket.denials,
            })
            .collect()
    }

    fn take(&mut self, org_id: Uuid, license_id: Uuid, session_id: Uuid) -> Option<OpenLease> {
        let leases = self.licenses.get_mut(&(org_id, license_id))?;
        let lease = leases.open.remove(&session_id)?;
        leases.by_expiry.remove(&(lease.expires_at, session_id));
        Some(lease)
    }

    fn close(&mut self, org_id: Uuid, license_id: Uuid, lease: &OpenLease, end: Timestamp) {
        add_interval(
            &mut self.buckets,
            self.granularity,
            org_id,
            license_id,
            lease,
            end,
        );
    }

    fn bucket(&mut self, org_id: Uuid, license_id: Uuid, at: Timestamp) -> &mut Bucket {
        let key = BucketKey {
            org_id,
            license_id,
            period_start: self.granularity.period_start(at),
        };
        self.buckets.entry(key).or_default()
    }
}

/// Adds the lease held from its start to `end` to every period it touches.
fn add_interval(
    buckets: &mut BTreeMap<BucketKey, Bucket>,
    granularity: Granularity,
    org_id: Uuid,
    license_id: Uuid,
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
            .entry(BucketKey {
                org_id,
                license_id,
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

#[cfg(test)]
mod tests;
