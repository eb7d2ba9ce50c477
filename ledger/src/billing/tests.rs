//! Billing fold tests: worked examples per rule of the module docs, and
//! property tests that drive the real decider with random commands and
//! compare the fold with a brute-force recomputation from lease intervals.

use super::*;
use crate::domain::{
    decide, evolve, Command, HardwareId, HeartbeatTtl, Name, OveragePercent, SeatCount, StreamState,
};
use proptest::prelude::*;
use seatledger_schema::{
    ChainHash, DenialReason, Metadata, ReleaseReason, SeatAcquired, SeatDenied, SeatExpired,
    SeatHeartbeat, SeatReleased,
};

const ORG: OrgId = OrgId::from_u128(0x0a);
const LICENSE: LicenseId = LicenseId::from_u128(0x1c);
/// 2027-01-15T08:00:00Z, on an hour boundary.
const T0: i64 = 1_799_913_600_000_000;
const SECOND: i64 = 1_000_000;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_micros_saturating(T0 + seconds * SECOND)
}

fn session(n: u128) -> SessionId {
    SessionId::from_u128(0x5000 + n)
}

fn acquired(n: u128, expires_s: i64, overage: bool) -> Event {
    Event::SeatAcquired(SeatAcquired {
        token_id: None,
        session_id: session(n),
        generation: n as u64,
        user_id: UserId::from_u128(0x100 + n),
        hardware_id: format!("machine-{n}"),
        expires_at: at(expires_s),
        overage,
    })
}

fn heartbeat(n: u128, expires_s: i64) -> Event {
    Event::SeatHeartbeat(SeatHeartbeat {
        session_id: session(n),
        expires_at: at(expires_s),
    })
}

fn released(n: u128) -> Event {
    Event::SeatReleased(SeatReleased {
        session_id: session(n),
        reason: ReleaseReason::Client,
    })
}

fn expired(n: u128) -> Event {
    Event::SeatExpired(SeatExpired {
        session_id: session(n),
        last_heartbeat_at: at(0),
    })
}

fn denied() -> Event {
    Event::SeatDenied(SeatDenied {
        user_id: UserId::from_u128(0x999),
        hardware_id: "machine-x".into(),
        reason: DenialReason::NoSeats,
    })
}

/// Folds `(seconds after T0, event)` pairs on one license.
fn fold(granularity: Granularity, events: &[(i64, Event)]) -> BillingFold {
    let mut fold = BillingFold::new(granularity);
    for (seconds, event) in events {
        fold.apply_event(ORG, LICENSE, at(*seconds), event);
    }
    fold
}

fn record(position: i64, at: Timestamp, event: &Event) -> RecordedEvent {
    RecordedEvent {
        partition: 0,
        position,
        event_id: Uuid::from_u128(position as u128),
        stream_id: format!("license-{LICENSE}"),
        stream_version: position,
        org_id: ORG,
        event_type: event.event_type().into(),
        schema_version: event.schema_version(),
        payload: event.payload(),
        metadata: Metadata::default(),
        occurred_at: at,
        recorded_at: at,
        prev_hash: ChainHash::GENESIS,
        hash: ChainHash::GENESIS,
    }
}

const HOUR: i64 = 3_600;

#[test]
fn a_lease_spanning_an_hour_boundary_is_split_and_carried_into_the_next_hour() {
    // Held from 00:30 to 01:10 of the first two hours.
    let fold = fold(
        Granularity::Hour,
        &[
            (HOUR / 2, acquired(1, 2 * HOUR, false)),
            (HOUR + 600, released(1)),
        ],
    );
    let rows = fold.report(at(10 * HOUR));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].period_start, at(0));
    assert_eq!(rows[0].period_end, at(HOUR));
    assert_eq!(rows[0].seat_micros, 1_800 * SECOND as u64);
    assert_eq!(rows[0].peak_seats, 1);
    assert_eq!(rows[1].period_start, at(HOUR));
    assert_eq!(rows[1].seat_micros, 600 * SECOND as u64);
    assert_eq!(rows[1].peak_seats, 1, "held at the hour's first instant");
    assert_eq!((rows[1].distinct_users, rows[1].distinct_machines), (1, 1));
}

#[test]
fn an_expired_lease_is_billed_to_its_expires_at_not_to_when_it_was_reaped() {
    let fold = fold(
        Granularity::Day,
        &[
            (0, acquired(1, 300, false)),
            (200, heartbeat(1, 500)),
            // Reaped long after it stopped heartbeating at 200 s.
            (5_000, expired(1)),
        ],
    );
    let rows = fold.report(at(6_000));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].seat_micros, 500 * SECOND as u64);
}

#[test]
fn a_release_never_bills_past_the_leases_expiry() {
    let fold = fold(
        Granularity::Day,
        &[(0, acquired(1, 100, false)), (400, released(1))],
    );
    assert_eq!(fold.report(at(500))[0].seat_micros, 100 * SECOND as u64);
}

#[test]
fn an_open_lease_counts_up_to_as_of_or_its_expiry_whichever_is_first() {
    let fold = fold(Granularity::Day, &[(0, acquired(1, 600, false))]);
    assert_eq!(fold.report(at(250))[0].seat_micros, 250 * SECOND as u64);
    assert_eq!(fold.report(at(10_000))[0].seat_micros, 600 * SECOND as u64);
    // Reading a report changes nothing.
    assert_eq!(fold.report(at(250))[0].seat_micros, 250 * SECOND as u64);
}

#[test]
fn peak_counts_leases_held_together_not_leases_seen_in_the_period() {
    let fold = fold(
        Granularity::Hour,
        &[
            (0, acquired(1, 600, false)),
            (100, acquired(2, 700, false)),
            (200, released(1)),
            (300, acquired(3, 900, false)),
            (400, released(2)),
            (500, released(3)),
            // Every earlier lease has ended: 4 and 5 are each held alone.
            (1_000, acquired(4, 1_010, false)),
            (2_000, acquired(5, 2_600, false)),
        ],
    );
    let rows = fold.report(at(3_000));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].peak_seats, 2);
    assert_eq!((rows[0].distinct_users, rows[0].distinct_machines), (5, 5));
}

#[test]
fn a_stale_open_lease_does_not_raise_the_peak() {
    let fold = fold(
        Granularity::Hour,
        &[
            (0, acquired(1, 60, false)),
            // Lease 1 stopped heartbeating at 60 s and was never reaped.
            (100, acquired(2, 160, false)),
        ],
    );
    assert_eq!(fold.report(at(200))[0].peak_seats, 1);
}

#[test]
fn overage_leases_count_in_overage_seat_time_and_denials_are_counted() {
    let fold = fold(
        Granularity::Day,
        &[
            (0, acquired(1, 1_000, false)),
            (10, acquired(2, 1_000, true)),
            (20, denied()),
            (30, denied()),
            (110, released(2)),
        ],
    );
    let rows = fold.report(at(200));
    assert_eq!(rows[0].seat_micros, (200 + 100) * SECOND as u64);
    assert_eq!(rows[0].overage_seat_micros, 100 * SECOND as u64);
    assert_eq!(rows[0].denials, 2);
    assert_eq!(rows[0].peak_seats, 2);
}

#[test]
fn months_are_utc_calendar_months() {
    let start = Timestamp::parse("2028-02-28T12:00:00Z").unwrap();
    let march = Timestamp::parse("2028-03-01T00:00:00Z").unwrap();
    assert_eq!(
        Granularity::Month.period_start(start),
        Timestamp::parse("2028-02-01T00:00:00Z").unwrap()
    );
    assert_eq!(
        Granularity::Month.next_period(Granularity::Month.period_start(start)),
        march,
        "2028 is a leap year: February has 29 days"
    );
    let december = Timestamp::parse("2027-12-31T23:59:59.999999Z").unwrap();
    assert_eq!(
        Granularity::Month.next_period(Granularity::Month.period_start(december)),
        Timestamp::parse("2028-01-01T00:00:00Z").unwrap()
    );
    assert_eq!(
        Granularity::Day.period_start(december),
        Timestamp::parse("2027-12-31T00:00:00Z").unwrap()
    );
    // The last period of time ends at the end of the range.
    assert_eq!(
        Granularity::Month.next_period(Granularity::Month.period_start(Timestamp::MAX)),
        Timestamp::MAX
    );
    assert!(
        Granularity::Hour.next_period(Granularity::Hour.period_start(Timestamp::MAX))
            > Granularity::Hour.period_start(Timestamp::MAX)
    );
}

#[test]
fn redelivered_records_are_applied_once() {
    let events = [
        (0, acquired(1, 600, false)),
        (300, released(1)),
        (400, denied()),
    ];
    let records: Vec<RecordedEvent> = events
        .iter()
        .enumerate()
        .map(|(i, (seconds, event))| record(i as i64 + 1, at(*seconds), event))
        .collect();
    let mut once = BillingFold::new(Granularity::Day);
    for record in &records {
        assert!(once.apply(record).unwrap());
    }
    let mut twice = BillingFold::new(Granularity::Day);
    for record in records.iter().chain(&records) {
        twice.apply(record).unwrap();
    }
    assert_eq!(once, twice);
    assert_eq!(once.position(0), 3);
    assert!(!once.apply(&records[1]).unwrap());
    assert_eq!(once.report(at(500))[0].denials, 1);
}

#[test]
fn org_stream_events_advance_the_position_and_bill_nothing() {
    let mut record = record(
        1,
        at(0),
        &Event::OrganizationRegistered(seatledger_schema::OrganizationRegistered {
            org_id: ORG,
            name: "Acme".into(),
        }),
    );
    record.stream_id = format!("org-{ORG}");
    let mut fold = BillingFold::new(Granularity::Day);
    assert!(fold.apply(&record).unwrap());
    assert_eq!(fold.position(0), 1);
    assert!(fold.report(at(10)).is_empty());
}

/// Issue 8: an undecodable event is reported (an `Err` naming it) and the
/// fold goes on past it, so one broken event does not stop every tenant's
/// billing; redelivering it does not report it twice.
#[test]
fn an_undecodable_event_is_an_error_and_the_fold_goes_on() {
    let mut bad = record(1, at(0), &released(1));
    bad.payload = serde_json::json!({ "session_id": "not a uuid" });
    let mut fold = BillingFold::new(Granularity::Day);
    assert!(fold.apply(&bad).is_err());
    assert_eq!(fold.position(0), 1);
    assert!(!fold.apply(&bad).unwrap(), "a redelivery is skipped");
}

// --- Properties: the real decider, random commands, a brute-force model ---

#[derive(Clone, Debug)]
enum Step {
    Acquire { user: u8, machine: u8 },
    Heartbeat(u8),
    Release(u8),
    Expire(u8),
    Suspend,
    Reinstate,
    Revoke,
    ChangeSeats(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u8..5, 0u8..3).prop_map(|(user, machine)| Step::Acquire { user, machine }),
        6 => (0u8..12).prop_map(Step::Heartbeat),
        3 => (0u8..12).prop_map(Step::Release),
        2 => (0u8..12).prop_map(Step::Expire),
        1 => Just(Step::Suspend),
        1 => Just(Step::Reinstate),
        1 => (1u32..5).prop_map(Step::ChangeSeats),
        1 => Just(Step::Revoke),
    ]
}

/// Seconds between commands: mostly within a heartbeat TTL, sometimes
/// hours, sometimes days, so leases go stale and cross period boundaries.
fn gap() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => 1i64..400,
        3 => 400i64..10_000,
        1 => 10_000i64..3_000_000,
    ]
}

fn granularity() -> impl Strategy<Value = Granularity> {
    prop_oneof![
        Just(Granularity::Hour),
        Just(Granularity::Day),
        Just(Granularity::Month)
    ]
}

/// Runs the steps through the decider; returns the recorded events.
fn history(seats: u32, overage: u32, steps: &[(Step, i64)]) -> Vec<RecordedEvent> {
    let issue = Command::IssueLicense {
        client_auth: Default::default(),
        license_id: LICENSE,
        name: Name::parse("IDE").unwrap(),
        seats: SeatCount::new(seats).unwrap(),
        expires_at: None,
        heartbeat_ttl_s: HeartbeatTtl::new(300).unwrap(),
        max_overage_percent: OveragePercent::new(overage).unwrap(),
    };
    let mut state = StreamState::Empty;
    let mut records: Vec<RecordedEvent> = Vec::new();
    let mut sessions: Vec<Uuid> = Vec::new();
    let mut now = 0;
    for (index, (step, gap)) in std::iter::once(None)
        .chain(steps.iter().map(Some))
        .enumerate()
        .map(|(index, step)| (index, step.map_or((None, 0), |(s, g)| (Some(s), *g))))
    {
        let pick = |n: &u8| {
            sessions
                .get(usize::from(*n))
                .copied()
                .unwrap_or(Uuid::from_u128(0xdead))
        };
        let license_id = LICENSE;
        let command = match step {
            None => issue.clone(),
            Some(Step::Acquire { user, machine }) => Command::AcquireSeat {
                credential: crate::domain::AcquireCredential::Unchecked,
                token_id: None,
                license_id,
                session_id: SessionId::from_u128(0x7000 + index as u128),
                user_id: UserId::from_u128(0x100 + u128::from(*user)),
                hardware_id: HardwareId::parse(&format!("m-{user}-{machine}")).unwrap(),
            },
            Some(Step::Heartbeat(n)) => Command::Heartbeat {
                license_id,
                session_id: pick(n).into(),
                by: crate::domain::SeatActor::Unchecked,
            },
            Some(Step::Release(n)) => Command::ReleaseSeat {
                license_id,
                session_id: pick(n).into(),
                by: crate::domain::SeatActor::Unchecked,
            },
            Some(Step::Expire(n)) => Command::ExpireSeat {
                license_id,
                session_id: pick(n).into(),
            },
            Some(Step::Suspend) => Command::SuspendLicense {
                license_id,
                reason: None,
            },
            Some(Step::Reinstate) => Command::ReinstateLicense {
                license_id,
                reason: None,
            },
            Some(Step::Revoke) => Command::RevokeLicense {
                license_id,
                reason: None,
            },
            Some(Step::ChangeSeats(seats)) => Command::ChangeSeats {
                license_id,
                seats: SeatCount::new(*seats).unwrap(),
            },
        };
        now += gap;
        let decision = decide(&state, ORG, &command, at(now));
        for event in &decision.events {
            if let Event::SeatAcquired(acquired) = event {
                sessions.push(acquired.session_id.into());
            }
            state = evolve(state, event);
            records.push(record(records.len() as i64 + 1, at(now), event));
        }
    }
    records
}

/// The model: each lease's final interval, then per period a direct
/// recomputation of every figure.
fn model(granularity: Granularity, records: &[RecordedEvent], as_of: Timestamp) -> Vec<UsageRow> {
    struct Interval {
        start: Timestamp,
        end: Timestamp,
        user: Uuid,
        machine: String,
        overage: bool,
        /// Still held at `as_of` (where the interval is cut): it counts at
        /// that instant too, so a lease granted at `as_of` is a seat held.
        held_at_end: bool,
    }
    let mut open: BTreeMap<SessionId, (Timestamp, Timestamp, UserId, String, bool)> =
        BTreeMap::new();
    let mut intervals = Vec::new();
    let mut denials: Vec<Timestamp> = Vec::new();
    for record in records {
        let t = record.occurred_at;
        match record.event().unwrap() {
            Event::SeatAcquired(a) => {
                open.insert(
                    a.session_id,
                    (t, a.expires_at, a.user_id, a.hardware_id, a.overage),
                );
            }
            Event::SeatHeartbeat(h) => {
                if let Some(lease) = open.get_mut(&h.session_id) {
                    lease.1 = h.expires_at;
                }
            }
            Event::SeatReleased(SeatReleased { session_id, .. })
            | Event::SeatExpired(SeatExpired { session_id, .. }) => {
                let released = record.event_type == "SeatReleased";
                if let Some((start, expires, user, machine, overage)) = open.remove(&session_id) {
                    let end = if released { t.min(expires) } else { expires };
                    intervals.push(Interval {
                        start,
                        end,
                        user: user.into(),
                        machine,
                        overage,
                        held_at_end: false,
                    });
                }
            }
            // A suspension or revocation that ends every lease: each as
            // its release would (stale ones at their expiry).
            Event::LicenseSuspended(changed) | Event::LicenseRevoked(changed)
                if changed.ends_leases =>
            {
                for (_, (start, expires, user, machine, overage)) in std::mem::take(&mut open) {
                    intervals.push(Interval {
                        start,
                        end: t.min(expires),
                        user: user.into(),
                        machine,
                        overage,
                        held_at_end: false,
                    });
                }
            }
            Event::SeatDenied(_) => denials.push(t),
            _ => {}
        }
    }
    for (_, (start, expires, user, machine, overage)) in open {
        intervals.push(Interval {
            start,
            end: as_of.min(expires),
            user: user.into(),
            machine,
            overage,
            held_at_end: expires > as_of,
        });
    }
    let covering = |x: Timestamp| {
        intervals
            .iter()
            .filter(|i| i.start <= x && (x < i.end || (i.held_at_end && x == i.end)))
            .count() as u32
    };
    let mut periods: BTreeSet<Timestamp> = BTreeSet::new();
    for interval in &intervals {
        periods.insert(granularity.period_start(interval.start));
        let mut p = granularity.period_start(interval.start);
        while p < interval.end {
            periods.insert(p);
            p = granularity.next_period(p);
        }
    }
    periods.extend(denials.iter().map(|t| granularity.period_start(*t)));
    periods
        .into_iter()
        .map(|start| {
            let end = granularity.next_period(start);
            let overlap = |i: &Interval| {
                u64::try_from(i.end.min(end).micros_since(i.start.max(start))).unwrap_or(0)
            };
            let touching: Vec<&Interval> = intervals
                .iter()
                .filter(|i| i.start.max(start) < i.end.min(end))
                .collect();
            let grants = intervals
                .iter()
                .filter(|i| start <= i.start && i.start < end)
                .map(|i| covering(i.start));
            UsageRow {
                org_id: ORG,
                license_id: LICENSE,
                period_start: start,
                period_end: end,
                seat_micros: touching.iter().map(|i| overlap(i)).sum(),
                overage_seat_micros: touching
                    .iter()
                    .filter(|i| i.overage)
                    .map(|i| overlap(i))
                    .sum(),
                peak_seats: grants.chain([covering(start)]).max().unwrap_or(0),
                distinct_users: touching
                    .iter()
                    .map(|i| i.user)
                    .collect::<BTreeSet<_>>()
                    .len() as u32,
                distinct_machines: touching
                    .iter()
                    .map(|i| i.machine.as_str())
                    .collect::<BTreeSet<_>>()
                    .len() as u32,
                denials: denials.iter().filter(|t| start <= **t && **t < end).count() as u64,
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_fold_equals_a_recomputation_from_lease_intervals(
        seats in 1u32..4,
        overage in prop_oneof![Just(0u32), Just(50), Just(100)],
        steps in prop::collection::vec((step(), gap()), 1..80),
        granularity in granularity(),
        after in 0i64..20_000,
    ) {
        let records = history(seats, overage, &steps);
        let mut fold = BillingFold::new(granularity);
        for record in &records {
            fold.apply(record).unwrap();
        }
        let last = records.last().map_or(at(0), |r| r.occurred_at);
        let as_of = last.plus_seconds(after);
        prop_assert_eq!(fold.report(as_of), model(granularity, &records, as_of));
    }

    #[test]
    fn redelivery_in_any_chunks_gives_the_same_fold(
        steps in prop::collection::vec((step(), gap()), 1..60),
        granularity in granularity(),
        chunks in prop::collection::vec((0usize..100, 0usize..5), 1..10),
    ) {
        let records = history(2, 50, &steps);
        let mut once = BillingFold::new(granularity);
        for record in &records {
            once.apply(record).unwrap();
        }
        // Deliver prefixes again and again, as a follower restarting from
        // an older checkpoint would.
        let mut redelivered = BillingFold::new(granularity);
        let mut delivered: usize = 0;
        for (end, back) in chunks {
            let end = end.min(records.len());
            let from = delivered.saturating_sub(back);
            for record in &records[from..end.max(from)] {
                redelivered.apply(record).unwrap();
            }
            delivered = delivered.max(end);
        }
        for record in &records {
            redelivered.apply(record).unwrap();
        }
        prop_assert_eq!(redelivered, once);
    }

    #[test]
    fn changes_taken_at_any_split_and_merged_give_the_whole_fold(
        steps in prop::collection::vec((step(), gap()), 1..80),
        splits in prop::collection::btree_set(0usize..90, 0..8),
        after in 0i64..20_000,
    ) {
        let records = history(2, 50, &steps);
        let mut whole = BillingFold::with_granularities(&Granularity::ALL);
        for record in &records {
            whole.apply(record).unwrap();
        }
        // As the live follower stores it: period deltas merged batch by
        // batch, open leases replaced by their last state.
        let mut live = BillingFold::with_granularities(&Granularity::ALL).tracking_changes();
        let mut periods: BTreeMap<PeriodKey, PeriodUsage> = BTreeMap::new();
        let mut open: BTreeMap<LeaseKey, OpenLease> = BTreeMap::new();
        let mut store = |changes: FoldChanges| {
            for (key, usage) in changes.periods {
                periods.entry(key).or_default().merge(&usage);
            }
            for (key, lease) in changes.leases {
                match lease {
                    Some(lease) => open.insert(key, lease),
                    None => open.remove(&key),
                };
            }
        };
        for (index, record) in records.iter().enumerate() {
            live.apply(record).unwrap();
            if splits.contains(&index) {
                store(live.take_changes());
            }
        }
        store(live.take_changes());
        let last = records.last().map_or(at(0), |r| r.occurred_at);
        let as_of = last.plus_seconds(after);
        let mut merged = periods.clone();
        for granularity in Granularity::ALL {
            for (key, usage) in open_lease_usage(granularity, open.values(), as_of) {
                merged.entry(key).or_default().merge(&usage);
            }
        }
        let rows: Vec<UsageRow> = merged.iter().map(|(key, usage)| usage.row(key)).collect();
        prop_assert_eq!(rows, whole.report(as_of));
        // A fold restored from what was stored goes on as the whole one.
        let mut restored = BillingFold::with_granularities(&Granularity::ALL).tracking_changes();
        restored.restore(0, live.position(0), open.into_values());
        prop_assert_eq!(restored.position(0), whole.position(0));
    }

    #[test]
    fn splitting_a_period_splits_its_seat_time_and_keeps_its_peak(
        steps in prop::collection::vec((step(), gap()), 1..80),
        after in 0i64..20_000,
    ) {
        let records = history(3, 100, &steps);
        let last = records.last().map_or(at(0), |r| r.occurred_at);
        let as_of = last.plus_seconds(after);
        let of = |granularity: Granularity| -> Vec<UsageRow> {
            let mut fold = BillingFold::new(granularity);
            for record in &records {
                fold.apply(record).unwrap();
            }
            fold.report(as_of)
        };
        // [a, c) = [a, b) + [b, c): a day is its hours, a month its days.
        for (coarse, fine) in [(Granularity::Day, Granularity::Hour), (Granularity::Month, Granularity::Day)] {
            let fine = of(fine);
            for outer in of(coarse) {
                let inner: Vec<&UsageRow> = fine
                    .iter()
                    .filter(|row| row.period_start >= outer.period_start && row.period_end <= outer.period_end)
                    .collect();
                let seat: u64 = inner.iter().map(|row| row.seat_micros).sum();
                let overage: u64 = inner.iter().map(|row| row.overage_seat_micros).sum();
                let denials: u64 = inner.iter().map(|row| row.denials).sum();
                let peak = inner.iter().map(|row| row.peak_seats).max().unwrap_or(0);
                let users = inner.iter().map(|row| row.distinct_users).max().unwrap_or(0);
                prop_assert_eq!(outer.seat_micros, seat);
                prop_assert_eq!(outer.overage_seat_micros, overage);
                prop_assert_eq!(outer.denials, denials);
                prop_assert_eq!(outer.peak_seats, peak);
                prop_assert!(outer.distinct_users >= users);
            }
        }
    }
}

/// A suspension that ends every lease bills exactly as the log written
/// before it, where the suspension was followed by one release per live
/// lease and one expiry per stale one.
#[test]
fn a_suspension_ending_every_lease_bills_as_its_per_lease_events_did() {
    use seatledger_schema::LicenseStatusChanged;
    let acquired = |n: u128, expires: i64| {
        Event::SeatAcquired(SeatAcquired {
            token_id: None,
            session_id: SessionId::from_u128(n),
            generation: n as u64,
            user_id: UserId::from_u128(0x100 + n),
            hardware_id: format!("m{n}"),
            expires_at: at(expires),
            overage: false,
        })
    };
    let issued = history(3, 0, &[])[0].event().unwrap();
    let start = [
        (at(0), issued),
        (at(10), acquired(1, 310)),
        (at(20), acquired(2, 50)),
    ];
    let mut old: Vec<(Timestamp, Event)> = start.to_vec();
    old.push((
        at(100),
        Event::LicenseSuspended(LicenseStatusChanged::default()),
    ));
    old.push((
        at(100),
        Event::SeatReleased(SeatReleased {
            session_id: SessionId::from_u128(1),
            reason: ReleaseReason::Suspended,
        }),
    ));
    old.push((
        at(100),
        Event::SeatExpired(SeatExpired {
            session_id: SessionId::from_u128(2),
            last_heartbeat_at: at(20),
        }),
    ));
    let mut new: Vec<(Timestamp, Event)> = start.to_vec();
    new.push((
        at(100),
        Event::LicenseSuspended(LicenseStatusChanged {
            reason: None,
            ends_leases: true,
        }),
    ));
    let report = |events: &[(Timestamp, Event)]| {
        let records: Vec<RecordedEvent> = events
            .iter()
            .enumerate()
            .map(|(n, (t, event))| record(n as i64 + 1, *t, event))
            .collect();
        let mut fold = BillingFold::new(Granularity::Hour);
        for record in &records {
            fold.apply(record).unwrap();
        }
        fold.report(at(4_000))
    };
    let (before, after) = (report(&old), report(&new));
    assert_eq!(before, after);
    assert!(!after.is_empty());
}
