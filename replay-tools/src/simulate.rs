//! `seatledger-replay simulate`: what a license's real demand would have
//! met with another seat count (or heartbeat TTL). The license's recorded
//! demand (issue, renewals, suspensions, every acquire including denied
//! ones, heartbeats, client releases) is replayed as commands through the
//! real decider at the instants they happened, against a copy of the
//! license with the other terms, and beside a copy with the most seats a
//! license can have (the demand as if nothing were ever denied). History is
//! untouched: nothing is written.
//!
//! Reported: acquires that would have been denied (granted in reality) and
//! granted (denied in reality), peak demand (most leases held at once with
//! unlimited seats) and the simulated peak, and denied seat-time (what the
//! simulated denials would have held, per the unlimited replay).
//!
//! Memory: the three license states and the lifetimes of sessions the
//! simulation denied; the lists in the report are capped at [`LIST_MAX`].

use crate::events::EventStream;
use seatledger_ledger::domain::license::{decide, evolve};
use seatledger_ledger::domain::{
    Command, HardwareId, HeartbeatTtl, LicenseState, Name, OveragePercent, SeatCount, StreamId,
};
use seatledger_ledger::StoreError;
use seatledger_schema::{Event, RecordedEvent, ReleaseReason, Timestamp};
use seatledger_schema::{LicenseId, OrgId, SessionId, UserId};
use serde::Serialize;
use std::collections::HashMap;

/// Acquires listed per kind in a report at most (the counts are exact).
pub const LIST_MAX: usize = 1_000;

#[derive(Clone, Copy, Debug)]
pub struct SimulateOptions {
    pub license_id: LicenseId,
    pub seats: SeatCount,
    pub heartbeat_ttl: Option<HeartbeatTtl>,
    /// Only acquires at or after this instant are reported (earlier events
    /// still build the state).
    pub from: Option<Timestamp>,
    /// Events at or after this instant are not replayed.
    pub to: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AcquireOutcome {
    pub at: Timestamp,
    /// The position of the recorded acquire (or denial).
    pub position: i64,
    pub user_id: UserId,
    pub hardware_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Simulation {
    pub license_id: LicenseId,
    pub org_id: Option<OrgId>,
    /// The seats the license had at the end of the window, in reality.
    pub seats_recorded: Option<u32>,
    pub seats_simulated: u32,
    pub heartbeat_ttl_s_simulated: Option<u32>,
    pub from: Option<Timestamp>,
    /// The end of the replay: `to`, or the last event's time.
    pub until: Timestamp,
    /// Acquires in the window (granted or denied in reality).
    pub acquires: u64,
    pub granted_recorded: u64,
    pub granted_simulated: u64,
    /// Granted in reality, denied in the simulation.
    pub would_be_denied: u64,
    /// Denied in reality, granted in the simulation.
    pub would_be_granted: u64,
    /// Heartbeats the simulation refused (a shorter TTL let the lease
    /// lapse, or the acquire was denied there).
    pub heartbeats_refused: u64,
    /// The most leases held at once with unlimited seats.
    pub peak_demand: u32,
    /// The most leases held at once in the simulation.
    pub peak_simulated: u32,
    /// Seat-seconds the simulation's denials would have held.
    pub denied_seat_seconds: f64,
    /// The first [`LIST_MAX`] of each.
    pub would_be_denied_acquires: Vec<AcquireOutcome>,
    pub would_be_granted_acquires: Vec<AcquireOutcome>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the event at position {position} cannot be decoded: {error}; run verify")]
    Undecodable { position: i64, error: String },
    #[error("license {0} is not in the log")]
    UnknownLicense(LicenseId),
}

/// One replay of the demand: a license state under given terms.
struct Replay {
    state: LicenseState,
    org_id: OrgId,
    peak: u32,
}

impl Replay {
    /// Decides `command` at `now` and applies what it decided; whether it
    /// was accepted.
    fn run(&mut self, command: &Command, now: Timestamp, mut seen: impl FnMut(&Event)) -> bool {
        let decision = decide(&self.state, self.org_id, command, now);
        for event in &decision.events {
            seen(event);
            self.state = evolve(std::mem::take(&mut self.state), event);
        }
        if matches!(command, Command::AcquireSeat { .. }) {
            self.peak = self.peak.max(self.state.seats_used(now));
        }
        decision.rejection.is_none()
    }
}

/// A session the simulation denied and the unlimited replay granted: how
/// long it would have held its seat.
struct Lifetime {
    start: Timestamp,
    expires_at: Timestamp,
    ended_at: Option<Timestamp>,
}

/// Replays license `options.license_id`'s demand from `events`.
pub async fn simulate(
    mut events: EventStream,
    options: SimulateOptions,
) -> Result<Simulation, SimulateError> {
    let stream_id = StreamId::License(options.license_id).to_string();
    let mut simulator = Simulator::new(options);
    'log: while let Some(batch) = events.next().await? {
        for record in batch {
            if options.to.is_some_and(|to| record.occurred_at >= to) {
                break 'log;
            }
            simulator.report.until = simulator.report.until.max(record.occurred_at);
            if record.stream_id != stream_id {
                continue;
            }
            let event = record.event().map_err(|error| SimulateError::Undecodable {
                position: record.position,
                error: error.to_string(),
            })?;
            simulator.apply(&record, &event);
        }
    }
    simulator.finish()
}

/// The two replays (simulated terms, unlimited seats) and what they found.
struct Simulator {
    options: SimulateOptions,
    simulated: Option<Replay>,
    unlimited: Option<Replay>,
    report: Simulation,
    lifetimes: HashMap<SessionId, Lifetime>,
}

impl Simulator {
    fn new(options: SimulateOptions) -> Simulator {
        Simulator {
            options,
            simulated: None,
            unlimited: None,
            report: Simulation {
                license_id: options.license_id,
                org_id: None,
                seats_recorded: None,
                seats_simulated: options.seats.get(),
                heartbeat_ttl_s_simulated: options.heartbeat_ttl.map(HeartbeatTtl::get),
                from: options.from,
                until: Timestamp::UNIX_EPOCH,
                acquires: 0,
                granted_recorded: 0,
                granted_simulated: 0,
                would_be_denied: 0,
                would_be_granted: 0,
                heartbeats_refused: 0,
                peak_demand: 0,
                peak_simulated: 0,
                denied_seat_seconds: 0.0,
                would_be_denied_acquires: Vec::new(),
                would_be_granted_acquires: Vec::new(),
            },
            lifetimes: HashMap::new(),
        }
    }

    /// Replays one event of the license's stream.
    fn apply(&mut self, record: &RecordedEvent, event: &Event) {
        let now = record.occurred_at;
        let license_id = self.options.license_id;
        match event {
            Event::LicenseIssued(issued) => self.issued(record, issued),
            Event::LicenseSeatsChanged(changed) => {
                // The simulation keeps its own seat count.
                self.report.seats_recorded = Some(changed.seats);
            }
            Event::SeatAcquired(acquired) => {
                let hardware_id = acquired.hardware_id.clone();
                self.acquire(
                    record,
                    acquired.session_id,
                    acquired.user_id,
                    hardware_id,
                    true,
                );
            }
            Event::SeatDenied(denied) => {
                // A denial has no session: the event id stands in.
                let hardware_id = denied.hardware_id.clone();
                self.acquire(
                    record,
                    record.event_id.into(),
                    denied.user_id,
                    hardware_id,
                    false,
                );
            }
            Event::SeatHeartbeat(beat) => self.heartbeat(beat.session_id, now),
            // Released by its holder or by an admin: the seat is free
            // from then on, whatever the seats.
            Event::SeatReleased(released)
                if matches!(
                    released.reason,
                    ReleaseReason::Client | ReleaseReason::Admin
                ) =>
            {
                self.released(released.session_id, now)
            }
            Event::LicenseRenewed(renewed) => self.run_both(
                &Command::RenewLicense {
                    license_id,
                    expires_at: renewed.expires_at,
                },
                now,
            ),
            Event::LicenseSuspended(_) | Event::LicenseRevoked(_) => {
                self.ended(matches!(event, Event::LicenseSuspended(_)), now)
            }
            Event::LicenseReinstated(_) => self.run_both(
                &Command::ReinstateLicense {
                    license_id,
                    reason: None,
                },
                now,
            ),
            // Releases for a suspension or revocation come from the
            // replayed suspension; expiries follow from time itself.
            Event::SeatReleased(_) | Event::SeatExpired(_) => {}
            Event::OrganizationRegistered(_)
            | Event::UserRegistered(_)
            | Event::UserRoleChanged(_)
            | Event::UserDeactivated(_)
            | Event::LogPruned(_) => {}
        }
    }

    /// Both replays start from the issue, each with its own seats.
    fn issued(&mut self, record: &RecordedEvent, issued: &seatledger_schema::LicenseIssued) {
        self.report.org_id = Some(issued.org_id);
        self.report.seats_recorded = Some(issued.seats);
        let Ok(name) = Name::parse(&issued.name) else {
            return;
        };
        let options = self.options;
        let issue = |seats: SeatCount| Command::IssueLicense {
            client_auth: Default::default(),
            license_id: options.license_id,
            name: name.clone(),
            seats,
            expires_at: issued.expires_at,
            heartbeat_ttl_s: options
                .heartbeat_ttl
                .unwrap_or_else(|| HeartbeatTtl::new(issued.heartbeat_ttl_s).unwrap_or_default()),
            max_overage_percent: OveragePercent::new(issued.max_overage_percent)
                .unwrap_or_default(),
        };
        for (replay, seats) in [
            (&mut self.simulated, options.seats),
            (&mut self.unlimited, unlimited_seats(options.seats)),
        ] {
            let mut fresh = Replay {
                state: LicenseState::default(),
                org_id: record.org_id,
                peak: 0,
            };
            fresh.run(&issue(seats), record.occurred_at, |_| {});
            *replay = Some(fresh);
        }
    }

    /// A recorded acquire (granted or not) replayed in both.
    fn acquire(
        &mut self,
        record: &RecordedEvent,
        session_id: SessionId,
        user_id: UserId,
        hardware_id: String,
        granted: bool,
    ) {
        let (Some(simulated), Some(unlimited)) = (self.simulated.as_mut(), self.unlimited.as_mut())
        else {
            return;
        };
        let Ok(machine) = HardwareId::parse(&hardware_id) else {
            return;
        };
        let now = record.occurred_at;
        let acquire = Command::AcquireSeat {
            credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
            token_id: None,
            license_id: self.options.license_id,
            session_id,
            user_id,
            hardware_id: machine,
        };
        let granted_simulated = simulated.run(&acquire, now, |_| {});
        let mut granted_unlimited_to = None;
        let granted_unlimited = unlimited.run(&acquire, now, |event| {
            if let Event::SeatAcquired(acquired) = event {
                granted_unlimited_to = Some(acquired.expires_at);
            }
        });
        if self.options.from.is_some_and(|from| now < from) {
            return;
        }
        let report = &mut self.report;
        report.acquires += 1;
        report.granted_recorded += u64::from(granted);
        report.granted_simulated += u64::from(granted_simulated);
        let outcome = AcquireOutcome {
            at: now,
            position: record.position,
            user_id,
            hardware_id,
        };
        if granted && !granted_simulated {
            report.would_be_denied += 1;
            if report.would_be_denied_acquires.len() < LIST_MAX {
                report.would_be_denied_acquires.push(outcome);
            }
        } else if !granted && granted_simulated {
            report.would_be_granted += 1;
            if report.would_be_granted_acquires.len() < LIST_MAX {
                report.would_be_granted_acquires.push(outcome);
            }
        }
        if let (false, true, Some(expires_at)) =
            (granted_simulated, granted_unlimited, granted_unlimited_to)
        {
            self.lifetimes.insert(
                session_id,
                Lifetime {
                    start: now,
                    expires_at,
                    ended_at: None,
                },
            );
        }
    }

    fn heartbeat(&mut self, session_id: SessionId, now: Timestamp) {
        let command = Command::Heartbeat {
            license_id: self.options.license_id,
            session_id,
            by: seatledger_ledger::domain::SeatActor::Unchecked,
        };
        if let Some(simulated) = self.simulated.as_mut() {
            if !simulated.run(&command, now, |_| {}) {
                self.report.heartbeats_refused += 1;
            }
        }
        if let Some(unlimited) = self.unlimited.as_mut() {
            let lifetimes = &mut self.lifetimes;
            unlimited.run(&command, now, |event| {
                if let Event::SeatHeartbeat(beat) = event {
                    if let Some(lifetime) = lifetimes.get_mut(&beat.session_id) {
                        lifetime.expires_at = beat.expires_at;
                    }
                }
            });
        }
    }

    fn released(&mut self, session_id: SessionId, now: Timestamp) {
        self.run_both(
            &Command::ReleaseSeat {
                license_id: self.options.license_id,
                session_id,
                by: seatledger_ledger::domain::SeatActor::Unchecked,
            },
            now,
        );
        if let Some(lifetime) = self.lifetimes.get_mut(&session_id) {
            lifetime.ended_at.get_or_insert(now);
        }
    }

    /// A suspension (or revocation) ends every lease in both replays.
    fn ended(&mut self, suspended: bool, now: Timestamp) {
        let license_id = self.options.license_id;
        let command = if suspended {
            Command::SuspendLicense {
                license_id,
                reason: None,
            }
        } else {
            Command::RevokeLicense {
                license_id,
                reason: None,
            }
        };
        self.run_both(&command, now);
        for lifetime in self.lifetimes.values_mut() {
            lifetime.ended_at.get_or_insert(now);
        }
    }

    fn run_both(&mut self, command: &Command, now: Timestamp) {
        for replay in [self.simulated.as_mut(), self.unlimited.as_mut()]
            .into_iter()
            .flatten()
        {
            replay.run(command, now, |_| {});
        }
    }

    fn finish(self) -> Result<Simulation, SimulateError> {
        let mut report = self.report;
        let (Some(simulated), Some(unlimited)) = (self.simulated, self.unlimited) else {
            return Err(SimulateError::UnknownLicense(self.options.license_id));
        };
        report.peak_simulated = simulated.peak;
        report.peak_demand = unlimited.peak;
        let until = self.options.to.unwrap_or(report.until);
        let from = self.options.from.unwrap_or(Timestamp::UNIX_EPOCH);
        // Summed in whole microseconds: a sum of floats would depend on the
        // map's (random) order in its last digits.
        let denied_micros: i64 = self
            .lifetimes
            .values()
            .map(|lifetime| {
                let end = lifetime
                    .ended_at
                    .unwrap_or(lifetime.expires_at)
                    .min(lifetime.expires_at)
                    .min(until);
                let start = lifetime.start.max(from);
                (end.as_micros() - start.as_micros()).max(0)
            })
            .sum();
        report.denied_seat_seconds = denied_micros as f64 / 1e6;
        Ok(report)
    }
}

/// The most seats a license can have (the demand as if never denied);
/// `fallback` would only be used if that bound were not a seat count.
fn unlimited_seats(fallback: SeatCount) -> SeatCount {
    SeatCount::new(SeatCount::MAX).unwrap_or(fallback)
}

/// The human-readable form.
pub fn describe(report: &Simulation) -> String {
    let mut out = format!(
        "license {} with {} seat(s){} instead of {}, replayed up to {}\n",
        report.license_id,
        report.seats_simulated,
        report
            .heartbeat_ttl_s_simulated
            .map(|ttl| format!(" and a {ttl} s heartbeat TTL"))
            .unwrap_or_default(),
        report
            .seats_recorded
            .map_or("?".to_owned(), |seats| seats.to_string()),
        report.until
    );
    out.push_str(&format!(
        "acquires: {} (granted: {} recorded, {} simulated)\n\
         would have been denied: {}\nwould have been granted: {}\n\
         heartbeats refused in the simulation: {}\n\
         peak demand (unlimited seats): {}; simulated peak: {}\n\
         denied seat-time: {:.0} s ({:.2} seat-hours)\n",
        report.acquires,
        report.granted_recorded,
        report.granted_simulated,
        report.would_be_denied,
        report.would_be_granted,
        report.heartbeats_refused,
        report.peak_demand,
        report.peak_simulated,
        report.denied_seat_seconds,
        report.denied_seat_seconds / 3600.0
    ));
    for (title, list) in [
        ("would have been denied", &report.would_be_denied_acquires),
        ("would have been granted", &report.would_be_granted_acquires),
    ] {
        for outcome in list {
            out.push_str(&format!(
                "  {title}: {} position {} user {} machine {}\n",
                outcome.at, outcome.position, outcome.user_id, outcome.hardware_id
            ));
        }
    }
    out
}
