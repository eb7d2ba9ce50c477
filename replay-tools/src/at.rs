//! `seatledger-replay at`: the licenses' state at an instant of the past,
//! replayed from the log with the decider's own `evolve`: per license its
//! status, seats and the leases active then (who, on which machine, since
//! when, until when). A lease whose `expires_at` had passed is not active
//! at that instant even if its `SeatExpired` came later or never.
//!
//! Memory holds the states of the licenses selected (bounded by their
//! leases), never the log.

use crate::events::EventStream;
use seatledger_ledger::domain::license::evolve;
use seatledger_ledger::domain::{LicenseState, StreamId};
use seatledger_ledger::{Store, StoreError};
use seatledger_schema::{Event, Timestamp};
use seatledger_schema::{LicenseId, OrgId, SessionId, UserId};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Which instant.
#[derive(Clone, Copy, Debug)]
pub enum At {
    /// Everything recorded at or before this time. The log's times do not
    /// go back (the appender reads its clock under the partition lock), so
    /// this is a prefix of the log.
    Time(Timestamp),
    /// Everything up to this position, as of its event's time.
    Position(i64),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaseAt {
    pub session_id: SessionId,
    pub user_id: UserId,
    pub hardware_id: String,
    /// When it was granted.
    pub since: Timestamp,
    pub expires_at: Timestamp,
    pub generation: u64,
    pub overage: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LicenseAt {
    pub license_id: LicenseId,
    pub org_id: OrgId,
    pub name: String,
    /// `active`, `suspended` or `revoked`.
    pub status: String,
    pub seats: u32,
    pub expires_at: Option<Timestamp>,
    /// Active leases, by session id.
    pub leases: Vec<LeaseAt>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateAt {
    /// The instant the state is of.
    pub time: Timestamp,
    /// The last position applied.
    pub position: i64,
    pub licenses: Vec<LicenseAt>,
}

#[derive(Debug, thiserror::Error)]
pub enum AtError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the event at position {position} cannot be decoded: {error}; run verify")]
    Undecodable { position: i64, error: String },
    #[error("position {0} is past the head ({1})")]
    PastHead(i64, i64),
    #[error("position {0} is past the last event")]
    PastEnd(i64),
}

/// The state of the licenses of `org` (every org without it), or of one
/// `license`, at `at`.
pub async fn state_at(
    store: &Store,
    partition: i16,
    at: At,
    org: Option<OrgId>,
    license: Option<LicenseId>,
) -> Result<StateAt, AtError> {
    let (head, _) = store.head(partition).await?;
    if let At::Position(position) = at {
        if position > head {
            return Err(AtError::PastHead(position, head));
        }
    }
    let through = match at {
        At::Position(position) => Some(position),
        At::Time(_) => None,
    };
    let (events, _) = EventStream::from_store(store, partition, through).await?;
    state_of(events, at, org, license).await
}

/// [`state_at`] over events from any source (the store, an export file).
pub async fn state_of(
    mut reader: EventStream,
    at: At,
    org: Option<OrgId>,
    license: Option<LicenseId>,
) -> Result<StateAt, AtError> {
    let mut states: HashMap<LicenseId, (LicenseState, HashMap<SessionId, Timestamp>)> =
        HashMap::new();
    let mut position = 0;
    let mut last_time = Timestamp::UNIX_EPOCH;
    'log: while let Some(batch) = reader.next().await? {
        for record in batch {
            match at {
                At::Time(time) if record.occurred_at > time => break 'log,
                At::Position(through) if record.position > through => break 'log,
                _ => {}
            }
            position = record.position;
            last_time = record.occurred_at;
            if org.is_some_and(|org| org != record.org_id) {
                continue;
            }
            let Some(StreamId::License(license_id)) = StreamId::parse(&record.stream_id) else {
                continue;
            };
            if license.is_some_and(|license| license != license_id) {
                continue;
            }
            let event = record.event().map_err(|error| AtError::Undecodable {
                position: record.position,
                error: error.to_string(),
            })?;
            let (state, since) = states.entry(license_id).or_default();
            if let Event::SeatAcquired(acquired) = &event {
                since.insert(acquired.session_id, record.occurred_at);
            }
            *state = evolve(std::mem::take(state), &event);
            since.retain(|session, _| state.lease(*session).is_some());
        }
    }
    if let At::Position(through) = at {
        if position < through {
            return Err(AtError::PastEnd(through));
        }
    }
    let time = match at {
        At::Time(time) => time,
        At::Position(_) => last_time,
    };
    let licenses: BTreeMap<LicenseId, LicenseAt> = states
        .into_iter()
        .filter_map(|(license_id, (state, since))| {
            Some((license_id, license_at(license_id, &state, &since, time)?))
        })
        .collect();
    Ok(StateAt {
        time,
        position,
        licenses: licenses.into_values().collect(),
    })
}

/// A license as it stood at `time`, its leases with when each began
/// (`since`); None before it was issued.
fn license_at(
    license_id: LicenseId,
    state: &LicenseState,
    since: &HashMap<SessionId, Timestamp>,
    time: Timestamp,
) -> Option<LicenseAt> {
    let terms = state.terms.as_ref()?;
    let leases = state
        .live_leases_after(time, None, usize::MAX)
        .into_iter()
        .map(|lease| LeaseAt {
            since: since
                .get(&lease.session_id)
                .copied()
                .unwrap_or(Timestamp::UNIX_EPOCH),
            session_id: lease.session_id,
            user_id: lease.user_id,
            hardware_id: lease.hardware_id,
            expires_at: lease.expires_at,
            generation: lease.generation,
            overage: lease.overage,
        })
        .collect();
    Some(LicenseAt {
        license_id,
        org_id: terms.org_id,
        name: terms.name.clone(),
        status: state.status.as_str().to_owned(),
        seats: terms.seats,
        expires_at: terms.expires_at,
        leases,
    })
}

/// The human-readable form.
pub fn describe(state: &StateAt) -> String {
    let mut out = format!(
        "as of {} (log position {}): {} license(s)\n",
        state.time,
        state.position,
        state.licenses.len()
    );
    for license in &state.licenses {
        out.push_str(&format!(
            "license {} \"{}\" of organization {}: {}, {} seat(s), {} active lease(s)\n",
            license.license_id,
            license.name,
            license.org_id,
            license.status,
            license.seats,
            license.leases.len()
        ));
        for lease in &license.leases {
            out.push_str(&format!(
                "  session {} user {} machine {} since {} until {} generation {}{}\n",
                lease.session_id,
                lease.user_id,
                lease.hardware_id,
                lease.since,
                lease.expires_at,
                lease.generation,
                if lease.overage { " (overage)" } else { "" }
            ));
        }
    }
    out
}
