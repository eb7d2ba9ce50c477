//! The license stream: a license's lifecycle and every lease on it. This is
//! the consistency boundary: one `decide` sees every seat of a license.

use super::command::{AcquireCredential, Command, SeatActor};
use super::rejection::Rejection;
use super::Decision;
use seatledger_schema::limits::ENDED_SESSIONS_REMEMBERED;
use seatledger_schema::ClientAuth;
use seatledger_schema::{
    DenialReason, Event, LicenseIssued, LicenseRenewed, LicenseSeatsChanged, LicenseStatusChanged,
    ReleaseReason, SeatAcquired, SeatDenied, SeatExpired, SeatHeartbeat, SeatReleased, Timestamp,
};
use seatledger_schema::{LicenseId, OrgId, SessionId, TokenId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use uuid::Uuid;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LicenseStatus {
    #[default]
    Active,
    Suspended,
    Revoked,
}

impl LicenseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LicenseStatus::Active => "active",
            LicenseStatus::Suspended => "suspended",
            LicenseStatus::Revoked => "revoked",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseTerms {
    pub license_id: LicenseId,
    pub org_id: OrgId,
    pub name: String,
    pub seats: u32,
    pub expires_at: Option<Timestamp>,
    pub heartbeat_ttl_s: u32,
    pub max_overage_percent: u32,
    #[serde(default, skip_serializing_if = "ClientAuth::is_token")]
    pub client_auth: ClientAuth,
}

impl LicenseTerms {
    /// `seats + floor(seats * max_overage_percent / 100)`.
    pub fn seat_limit(&self) -> u32 {
        let extra = u64::from(self.seats) * u64::from(self.max_overage_percent) / 100;
        u32::try_from(u64::from(self.seats) + extra).unwrap_or(u32::MAX)
    }

    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|expires_at| expires_at <= now)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub session_id: SessionId,
    pub generation: u64,
    pub user_id: UserId,
    pub hardware_id: String,
    pub expires_at: Timestamp,
    pub overage: bool,
}

/// A license's state. Indexes (by machine, by expiry, remembered ended
/// sessions) are derived from the leases and rebuilt on load, so a snapshot
/// stores only the leases. It serializes from borrowed fields (no copy of
/// the state, whatever its size) in the form of [`LicenseSnapshot`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "LicenseSnapshot")]
pub struct LicenseState {
    pub terms: Option<LicenseTerms>,
    pub status: LicenseStatus,
    /// The generation of the latest grant (0 before any).
    pub last_generation: u64,
    /// By session id, ordered: snapshots list them in order and the live
    /// sessions are paged by session id without sorting.
    leases: BTreeMap<SessionId, Lease>,
    by_machine: HashMap<(UserId, String), SessionId>,
    by_expiry: BTreeSet<(Timestamp, SessionId)>,
    ended: VecDeque<SessionId>,
    ended_set: HashSet<SessionId>,
}

impl Serialize for LicenseState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// [`LicenseSnapshot`]'s fields, in its order, borrowed.
        #[derive(Serialize)]
        struct Borrowed<'a> {
            terms: &'a Option<LicenseTerms>,
            status: LicenseStatus,
            last_generation: u64,
            #[serde(serialize_with = "leases_in_order")]
            leases: &'a BTreeMap<SessionId, Lease>,
            ended: &'a VecDeque<SessionId>,
        }
        fn leases_in_order<S: serde::Serializer>(
            leases: &&BTreeMap<SessionId, Lease>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            serializer.collect_seq(leases.values())
        }
        Borrowed {
            terms: &self.terms,
            status: self.status,
            last_generation: self.last_generation,
            leases: &self.leases,
            ended: &self.ended,
        }
        .serialize(serializer)
    }
}

/// A snapshot of `state` as the serializer before the borrowing one wrote
/// it (through a copy into [`LicenseSnapshot`]), tagged as `StreamState`
/// tags it: the format the new writer must keep producing.
#[cfg(test)]
pub(crate) fn old_format_snapshot(state: &LicenseState) -> serde_json::Value {
    let mut value = serde_json::to_value(LicenseSnapshot::from(state.clone()))
        .unwrap_or(serde_json::Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.insert("kind".into(), "license".into());
    }
    value
}

/// The stored form of a license's state (what snapshots hold).
#[derive(Serialize, Deserialize)]
struct LicenseSnapshot {
    terms: Option<LicenseTerms>,
    status: LicenseStatus,
    last_generation: u64,
    /// Sorted by session id so equal states serialize equally.
    leases: Vec<Lease>,
    ended: Vec<SessionId>,
}

impl From<LicenseState> for LicenseSnapshot {
    fn from(state: LicenseState) -> Self {
        let leases: Vec<Lease> = state.leases.into_values().collect();
        LicenseSnapshot {
            terms: state.terms,
            status: state.status,
            last_generation: state.last_generation,
            leases,
            ended: state.ended.into_iter().collect(),
        }
    }
}

impl From<LicenseSnapshot> for LicenseState {
    fn from(snapshot: LicenseSnapshot) -> Self {
        let mut state = LicenseState {
            terms: snapshot.terms,
            status: snapshot.status,
            last_generation: snapshot.last_generation,
            ..LicenseState::default()
        };
        for lease in snapshot.leases {
            state.insert_lease(lease);
        }
        for session_id in snapshot.ended {
            state.remember_ended(session_id);
        }
        state
    }
}

/// A license as callers see it after a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseView {
    pub license_id: LicenseId,
    pub org_id: OrgId,
    pub name: String,
    pub status: LicenseStatus,
    pub seats: u32,
    pub seat_limit: u32,
    pub seats_used: u32,
    pub expires_at: Option<Timestamp>,
    pub heartbeat_ttl_s: u32,
    pub max_overage_percent: u32,
    pub client_auth: ClientAuth,
    pub last_generation: u64,
}

impl LicenseState {
    /// How many entries a snapshot of this state holds (leases and
    /// remembered ended sessions): what writing one costs.
    pub fn size(&self) -> usize {
        self.leases.len() + self.ended.len()
    }

    pub fn lease(&self, session_id: SessionId) -> Option<&Lease> {
        self.leases.get(&session_id)
    }

    /// Every lease held, including stale ones not yet expired by an event.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// Leases whose `expires_at` is after `now`.
    pub fn seats_used(&self, now: Timestamp) -> u32 {
        let stale = self
            .by_expiry
            .range(..=(now, SessionId::from_uuid(Uuid::max())))
            .count();
        u32::try_from(self.leases.len() - stale).unwrap_or(u32::MAX)
    }

    /// Up to `limit` leases live at `now` (`expires_at` after it), by
    /// session id, after `after` when given: one page of the license's
    /// sessions, in time that grows with the page, not with the license.
    pub fn live_leases_after(
        &self,
        now: Timestamp,
        after: Option<SessionId>,
        limit: usize,
    ) -> Vec<Lease> {
        let range = match after {
            Some(after) => self
                .leases
                .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => self.leases.range(..),
        };
        range
            .map(|(_, lease)| lease)
            .filter(|lease| lease.expires_at > now)
            .take(limit)
            .cloned()
            .collect()
    }

    /// Leases whose `expires_at` is at or before `now`, soonest first.
    pub fn stale_leases(&self, now: Timestamp) -> impl Iterator<Item = &Lease> {
        self.by_expiry
            .range(..=(now, SessionId::from_uuid(Uuid::max())))
            .filter_map(|(_, id)| self.leases.get(id))
    }

    pub fn is_ended(&self, session_id: SessionId) -> bool {
        self.ended_set.contains(&session_id)
    }

    pub fn view(&self, now: Timestamp) -> Option<LicenseView> {
        let terms = self.terms.as_ref()?;
        Some(LicenseView {
            license_id: terms.license_id,
            org_id: terms.org_id,
            name: terms.name.clone(),
            status: self.status,
            seats: terms.seats,
            seat_limit: terms.seat_limit(),
            seats_used: self.seats_used(now),
            expires_at: terms.expires_at,
            heartbeat_ttl_s: terms.heartbeat_ttl_s,
            max_overage_percent: terms.max_overage_percent,
            client_auth: terms.client_auth,
            last_generation: self.last_generation,
        })
    }

    fn insert_lease(&mut self, lease: Lease) {
        if let Some(old) = self.leases.get(&lease.session_id) {
            self.by_expiry.remove(&(old.expires_at, old.session_id));
        }
        self.by_machine
            .insert((lease.user_id, lease.hardware_id.clone()), lease.session_id);
        self.by_expiry.insert((lease.expires_at, lease.session_id));
        self.leases.insert(lease.session_id, lease);
    }

    fn end_lease(&mut self, session_id: SessionId) {
        if let Some(lease) = self.leases.remove(&session_id) {
            self.by_expiry.remove(&(lease.expires_at, session_id));
            let key = (lease.user_id, lease.hardware_id);
            if self.by_machine.get(&key) == Some(&session_id) {
                self.by_machine.remove(&key);
            }
            self.remember_ended(session_id);
        }
    }

    fn remember_ended(&mut self, session_id: SessionId) {
        if self.ended_set.insert(session_id) {
            self.ended.push_back(session_id);
        }
        while self.ended.len() > ENDED_SESSIONS_REMEMBERED {
            if let Some(oldest) = self.ended.pop_front() {
                self.ended_set.remove(&oldest);
            }
        }
    }

    /// Ends every lease (a suspension or revocation that ends them), the
    /// latest to expire remembered last.
    fn end_every_lease(&mut self) {
        let by_expiry = std::mem::take(&mut self.by_expiry);
        self.leases.clear();
        self.by_machine.clear();
        for (_, session_id) in by_expiry {
            self.remember_ended(session_id);
        }
    }

    fn expiry_of(&self, lease: &Lease) -> Event {
        let ttl = self.terms.as_ref().map_or(0, |terms| terms.heartbeat_ttl_s);
        Event::SeatExpired(SeatExpired {
            session_id: lease.session_id,
            last_heartbeat_at: lease.expires_at.minus_seconds(i64::from(ttl)),
        })
    }
}

/// The license's terms if it exists and belongs to `tenant_id`; another
/// tenant's license is "not found", never "forbidden".
fn terms_for(state: &LicenseState, caller_org: OrgId) -> Result<&LicenseTerms, Rejection> {
    match &state.terms {
        Some(terms) if terms.org_id == caller_org => Ok(terms),
        _ => Err(Rejection::LicenseNotFound),
    }
}

/// A license's decider: one arm per command, each a guard or two and the
/// events it records. Long because it is the table of what every command
/// does to a license; splitting it would hide that table across files.
pub fn decide(
    state: &LicenseState,
    caller_org: OrgId,
    command: &Command,
    now: Timestamp,
) -> Decision {
    match command {
        Command::IssueLicense {
            client_auth,
            license_id,
            name,
            seats,
            expires_at,
            heartbeat_ttl_s,
            max_overage_percent,
        } => {
            if state.terms.is_some() {
                return Decision::reject(Rejection::LicenseAlreadyExists);
            }
            Decision::accept(vec![Event::LicenseIssued(LicenseIssued {
                license_id: *license_id,
                org_id: caller_org,
                name: name.as_str().to_owned(),
                seats: seats.get(),
                expires_at: *expires_at,
                heartbeat_ttl_s: heartbeat_ttl_s.get(),
                max_overage_percent: max_overage_percent.get(),
                client_auth: *client_auth,
            })])
        }
        Command::ChangeSeats { seats, .. } => admin(state, caller_org, |terms| {
            if terms.seats == seats.get() {
                return Ok(vec![]);
            }
            Ok(vec![Event::LicenseSeatsChanged(LicenseSeatsChanged {
                seats: seats.get(),
            })])
        }),
        Command::RenewLicense { expires_at, .. } => admin(state, caller_org, |terms| {
            if terms.expires_at == *expires_at {
                return Ok(vec![]);
            }
            Ok(vec![Event::LicenseRenewed(LicenseRenewed {
                expires_at: *expires_at,
            })])
        }),
        Command::UpdateLicense {
            seats, expires_at, ..
        } => admin(state, caller_org, |terms| {
            let mut events = Vec::new();
            if let Some(seats) = seats.filter(|seats| seats.get() != terms.seats) {
                events.push(Event::LicenseSeatsChanged(LicenseSeatsChanged {
                    seats: seats.get(),
                }));
            }
            if let Some(expires_at) =
                expires_at.filter(|expires_at| *expires_at != terms.expires_at)
            {
                events.push(Event::LicenseRenewed(LicenseRenewed { expires_at }));
            }
            Ok(events)
        }),
        Command::SuspendLicense { reason, .. } => admin(state, caller_org, |_| {
            if state.status == LicenseStatus::Suspended {
                return Ok(vec![]);
            }
            // One event, however many leases: it ends them all (bounded
            // work per command; see `LicenseStatusChanged::ends_leases`).
            Ok(vec![Event::LicenseSuspended(ending_leases(reason))])
        }),
        Command::ReinstateLicense { reason, .. } => admin(state, caller_org, |_| {
            if state.status != LicenseStatus::Suspended {
                return Err(Rejection::LicenseNotSuspended);
            }
            Ok(vec![Event::LicenseReinstated(status_change(reason))])
        }),
        Command::RevokeLicense { reason, .. } => {
            if let Err(rejection) = terms_for(state, caller_org) {
                return Decision::reject(rejection);
            }
            if state.status == LicenseStatus::Revoked {
                return Decision::accept(vec![]);
            }
            Decision::accept(vec![Event::LicenseRevoked(ending_leases(reason))])
        }
        Command::AcquireSeat {
            session_id,
            user_id,
            hardware_id,
            token_id,
            credential,
            ..
        } => acquire(
            state,
            caller_org,
            Acquirer {
                session_id: *session_id,
                user_id: *user_id,
                token_id: *token_id,
                credential: *credential,
            },
            hardware_id.as_str(),
            now,
        ),
        Command::Heartbeat { session_id, by, .. } => {
            heartbeat(state, caller_org, *session_id, *by, now)
        }
        Command::ReleaseSeat { session_id, by, .. } => {
            release(state, caller_org, *session_id, *by, now)
        }
        Command::ExpireSeat { session_id, .. } => {
            if let Err(rejection) = terms_for(state, caller_org) {
                return Decision::reject(rejection);
            }
            match state.lease(*session_id) {
                Some(lease) if lease.expires_at <= now => {
                    Decision::accept(vec![state.expiry_of(lease)])
                }
                // Live, already ended or unknown: nothing to do (idempotent).
                _ => Decision::accept(vec![]),
            }
        }
        Command::RegisterOrganization { .. }
        | Command::RegisterUser { .. }
        | Command::ChangeUserRole { .. }
        | Command::DeactivateUser { .. }
        | Command::RecordPrune(_) => Decision::reject(Rejection::LicenseNotFound),
    }
}

fn status_change(reason: &Option<super::types::Reason>) -> LicenseStatusChanged {
    LicenseStatusChanged {
        reason: reason.as_ref().map(|reason| reason.as_str().to_owned()),
        ends_leases: false,
    }
}

/// A suspension or revocation that ends every lease by itself.
fn ending_leases(reason: &Option<super::types::Reason>) -> LicenseStatusChanged {
    LicenseStatusChanged {
        ends_leases: true,
        ..status_change(reason)
    }
}

/// An admin change: refused on a missing or revoked license.
fn admin(
    state: &LicenseState,
    caller_org: OrgId,
    change: impl FnOnce(&LicenseTerms) -> Result<Vec<Event>, Rejection>,
) -> Decision {
    let terms = match terms_for(state, caller_org) {
        Ok(terms) => terms,
        Err(rejection) => return Decision::reject(rejection),
    };
    if state.status == LicenseStatus::Revoked {
        return Decision::reject(Rejection::LicenseRevoked);
    }
    match change(terms) {
        Ok(events) => Decision::accept(events),
        Err(rejection) => Decision::reject(rejection),
    }
}

fn denial(user_id: UserId, hardware_id: &str, reason: DenialReason) -> Event {
    Event::SeatDenied(SeatDenied {
        user_id,
        hardware_id: hardware_id.to_owned(),
        reason,
    })
}

/// Who asks for a seat, and the session it would get.
struct Acquirer {
    session_id: SessionId,
    user_id: UserId,
    token_id: Option<TokenId>,
    credential: AcquireCredential,
}

fn acquire(
    state: &LicenseState,
    caller_org: OrgId,
    acquirer: Acquirer,
    hardware_id: &str,
    now: Timestamp,
) -> Decision {
    let Acquirer {
        session_id,
        user_id,
        token_id,
        credential,
    } = acquirer;
    let terms = match terms_for(state, caller_org) {
        Ok(terms) => terms,
        Err(rejection) => return Decision::reject(rejection),
    };
    let allowed = match credential {
        AcquireCredential::Unchecked => true,
        AcquireCredential::Token => terms.client_auth.allows_token(),
        AcquireCredential::LicenseKey => terms.client_auth.allows_license_key(),
    };
    if !allowed {
        return Decision::reject(Rejection::ClientAuthNotAllowed);
    }
    if let Some((reason, rejection)) = unavailable(state.status, terms, now) {
        return Decision::deny(vec![denial(user_id, hardware_id, reason)], rejection);
    }
    let expires_at = now.plus_seconds(i64::from(terms.heartbeat_ttl_s));
    let mut events = Vec::new();
    let mut expired: HashSet<SessionId> = HashSet::new();
    if let Some(existing) = state
        .by_machine
        .get(&(user_id, hardware_id.to_owned()))
        .and_then(|id| state.leases.get(id))
    {
        if existing.expires_at > now {
            // The same user on the same machine re-acquires its own lease.
            return Decision::accept(vec![Event::SeatHeartbeat(SeatHeartbeat {
                session_id: existing.session_id,
                expires_at,
            })]);
        }
        events.push(state.expiry_of(existing));
        expired.insert(existing.session_id);
    }
    let limit = terms.seat_limit() as usize;
    let mut active = state.leases.len() - expired.len();
    if active >= limit {
        // Stale leases never block a grant: expire them in this append.
        for lease in state.stale_leases(now) {
            if expired.insert(lease.session_id) {
                events.push(state.expiry_of(lease));
            }
        }
        active = state.leases.len() - expired.len();
    }
    if active >= limit {
        events.push(denial(user_id, hardware_id, DenialReason::NoSeats));
        return Decision::deny(events, Rejection::NoSeatsAvailable);
    }
    events.push(Event::SeatAcquired(SeatAcquired {
        token_id,
        session_id,
        generation: state.last_generation + 1,
        user_id,
        hardware_id: hardware_id.to_owned(),
        expires_at,
        overage: active >= terms.seats as usize,
    }));
    Decision::accept(events)
}

/// Why a license grants no seat at all now, if it does not: revoked,
/// suspended or expired.
fn unavailable(
    status: LicenseStatus,
    terms: &LicenseTerms,
    now: Timestamp,
) -> Option<(DenialReason, Rejection)> {
    match status {
        LicenseStatus::Revoked => Some((DenialReason::Revoked, Rejection::LicenseRevoked)),
        LicenseStatus::Suspended => Some((DenialReason::Suspended, Rejection::LicenseSuspended)),
        LicenseStatus::Active if terms.is_expired_at(now) => {
            Some((DenialReason::Expired, Rejection::LicenseExpired))
        }
        LicenseStatus::Active => None,
    }
}

/// Whether `by` may act on `lease` as its holder.
fn holds(by: SeatActor, lease: &Lease) -> bool {
    match by {
        SeatActor::Unchecked | SeatActor::Lease => true,
        SeatActor::Holder(user_id) | SeatActor::Admin(user_id) => lease.user_id == user_id,
    }
}

fn heartbeat(
    state: &LicenseState,
    caller_org: OrgId,
    session_id: SessionId,
    by: SeatActor,
    now: Timestamp,
) -> Decision {
    let terms = match terms_for(state, caller_org) {
        Ok(terms) => terms,
        Err(rejection) => return Decision::reject(rejection),
    };
    match state.lease(session_id) {
        // Only the holder keeps a lease alive, admins included.
        Some(lease) if !holds(by, lease) => Decision::reject(Rejection::NotLeaseHolder),
        Some(lease) if lease.expires_at > now => {
            if terms.is_expired_at(now) {
                return Decision::reject(Rejection::LicenseExpired);
            }
            let expires_at = now.plus_seconds(i64::from(terms.heartbeat_ttl_s));
            Decision::accept(vec![Event::SeatHeartbeat(SeatHeartbeat {
                session_id,
                expires_at,
            })])
        }
        // Past its expiry: record the expiry and tell the client to re-acquire.
        Some(lease) => Decision::deny(vec![state.expiry_of(lease)], Rejection::SessionExpired),
        None if state.is_ended(session_id) => Decision::reject(Rejection::SessionExpired),
        None => Decision::reject(Rejection::SessionNotFound),
    }
}

fn release(
    state: &LicenseState,
    caller_org: OrgId,
    session_id: SessionId,
    by: SeatActor,
    now: Timestamp,
) -> Decision {
    if let Err(rejection) = terms_for(state, caller_org) {
        return Decision::reject(rejection);
    }
    match state.lease(session_id) {
        Some(lease) if !holds(by, lease) && !matches!(by, SeatActor::Admin(_)) => {
            Decision::reject(Rejection::NotLeaseHolder)
        }
        Some(lease) if lease.expires_at > now => {
            let reason = if holds(by, lease) {
                ReleaseReason::Client
            } else {
                ReleaseReason::Admin
            };
            Decision::accept(vec![Event::SeatReleased(SeatReleased {
                session_id,
                reason,
            })])
        }
        // It had already expired: record that truth (billing counts to
        // `expires_at`), and the release succeeds.
        Some(lease) => Decision::accept(vec![state.expiry_of(lease)]),
        None if state.is_ended(session_id) => Decision::accept(vec![]),
        None => Decision::reject(Rejection::SessionNotFound),
    }
}

pub fn evolve(mut state: LicenseState, event: &Event) -> LicenseState {
    match event {
        Event::LicenseIssued(issued) => {
            state.terms = Some(LicenseTerms {
                license_id: issued.license_id,
                org_id: issued.org_id,
                name: issued.name.clone(),
                seats: issued.seats,
                expires_at: issued.expires_at,
                heartbeat_ttl_s: issued.heartbeat_ttl_s,
                max_overage_percent: issued.max_overage_percent,
                client_auth: issued.client_auth,
            });
            state.status = LicenseStatus::Active;
        }
        Event::LicenseSeatsChanged(changed) => {
            if let Some(terms) = state.terms.as_mut() {
                terms.seats = changed.seats;
            }
        }
        Event::LicenseRenewed(renewed) => {
            if let Some(terms) = state.terms.as_mut() {
                terms.expires_at = renewed.expires_at;
            }
        }
        Event::LicenseSuspended(changed) => {
            state.status = LicenseStatus::Suspended;
            if changed.ends_leases {
                state.end_every_lease();
            }
        }
        Event::LicenseReinstated(_) => state.status = LicenseStatus::Active,
        Event::LicenseRevoked(changed) => {
            state.status = LicenseStatus::Revoked;
            if changed.ends_leases {
                state.end_every_lease();
            }
        }
        Event::SeatAcquired(acquired) => {
            state.last_generation = state.last_generation.max(acquired.generation);
            state.insert_lease(Lease {
                session_id: acquired.session_id,
                generation: acquired.generation,
                user_id: acquired.user_id,
                hardware_id: acquired.hardware_id.clone(),
                expires_at: acquired.expires_at,
                overage: acquired.overage,
            });
        }
        Event::SeatHeartbeat(beat) => {
            if let Some(lease) = state.leases.get(&beat.session_id) {
                let mut lease = lease.clone();
                lease.expires_at = beat.expires_at;
                state.insert_lease(lease);
            }
        }
        Event::SeatReleased(SeatReleased { session_id, .. })
        | Event::SeatExpired(SeatExpired { session_id, .. }) => {
            state.end_lease(*session_id);
        }
        Event::SeatDenied(_)
        | Event::OrganizationRegistered(_)
        | Event::UserRegistered(_)
        | Event::UserRoleChanged(_)
        | Event::UserDeactivated(_)
        | Event::LogPruned(_) => {}
    }
    state
}
