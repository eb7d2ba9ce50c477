//! The domain: commands, rejections and the pure `decide`/`evolve` pair per
//! stream kind (docs/design.md §2). Nothing here does I/O, reads a clock or draws a
//! random number: `now` and every id come in as arguments.

pub mod command;
pub mod license;
pub mod org;
pub mod rejection;
pub mod types;

pub use command::{AcquireCredential, Command, NewUser, SeatActor, StreamId};
pub use license::{Lease, LicenseState, LicenseStatus, LicenseTerms, LicenseView};
pub use org::OrgState;
pub use rejection::Rejection;
pub use types::*;

use seatledger_schema::OrgId;
use seatledger_schema::{Event, Timestamp};
use serde::{Deserialize, Serialize};

/// What `decide` answers: the events to append and, when the command was
/// refused, why. A denial can carry events (`SeatDenied`, and the
/// `SeatExpired` of stale leases it cleaned up); a plain rejection has none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub events: Vec<Event>,
    pub rejection: Option<Rejection>,
}

impl Decision {
    pub fn accept(events: Vec<Event>) -> Self {
        Decision {
            events,
            rejection: None,
        }
    }

    pub fn reject(rejection: Rejection) -> Self {
        Decision {
            events: Vec::new(),
            rejection: Some(rejection),
        }
    }

    pub fn deny(events: Vec<Event>, rejection: Rejection) -> Self {
        Decision {
            events,
            rejection: Some(rejection),
        }
    }
}

/// The state of one stream, by kind. Not boxed: one per cached stream,
/// moved (not copied) through `evolve`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StreamState {
    #[default]
    Empty,
    Org(OrgState),
    License(LicenseState),
}

impl StreamState {
    /// How many entries a snapshot of this state holds (leases, users):
    /// what writing one costs.
    pub fn size(&self) -> usize {
        match self {
            StreamState::Empty => 0,
            StreamState::Org(org) => org.users.len(),
            StreamState::License(license) => license.size(),
        }
    }
}

/// Decides `command` for the tenant `tenant_id` against its stream's state.
pub fn decide(
    state: &StreamState,
    caller_org: OrgId,
    command: &Command,
    now: Timestamp,
) -> Decision {
    match command.stream_id() {
        StreamId::Org(_) => {
            let empty = OrgState::default();
            let org = match state {
                StreamState::Org(org) => org,
                _ => &empty,
            };
            org::decide(org, caller_org, command, now)
        }
        StreamId::License(_) => {
            let empty = LicenseState::default();
            let license = match state {
                StreamState::License(license) => license,
                _ => &empty,
            };
            license::decide(license, caller_org, command, now)
        }
        StreamId::Log(_) => match command {
            Command::RecordPrune(pruned) if caller_org.is_nil() => {
                Decision::accept(vec![Event::LogPruned(pruned.clone())])
            }
            _ => Decision::reject(Rejection::OrganizationNotFound),
        },
    }
}

/// Applies one recorded event to its stream's state.
pub fn evolve(state: StreamState, event: &Event) -> StreamState {
    match event {
        Event::OrganizationRegistered(_)
        | Event::UserRegistered(_)
        | Event::UserRoleChanged(_)
        | Event::UserDeactivated(_) => {
            let org = match state {
                StreamState::Org(org) => org,
                _ => OrgState::default(),
            };
            StreamState::Org(org::evolve(org, event))
        }
        // The log's own stream keeps no state.
        Event::LogPruned(_) => state,
        _ => {
            let license = match state {
                StreamState::License(license) => license,
                _ => LicenseState::default(),
            };
            StreamState::License(license::evolve(license, event))
        }
    }
}

#[cfg(test)]
mod tests;
