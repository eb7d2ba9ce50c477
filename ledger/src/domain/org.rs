//! The organization stream: registration and its users.

use super::command::Command;
use super::rejection::Rejection;
use super::Decision;
use seatledger_schema::OrgId;
use seatledger_schema::UserId;
use seatledger_schema::{
    Event, OrganizationRegistered, Role, Timestamp, UserDeactivated, UserRegistered,
    UserRoleChanged,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgUser {
    pub email: String,
    pub role: Role,
    /// False once deactivated (snapshots from before deactivation existed
    /// have no such field: every user was active).
    #[serde(default = "active")]
    pub active: bool,
}

fn active() -> bool {
    true
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgState {
    pub org_id: Option<OrgId>,
    pub name: String,
    pub users: BTreeMap<UserId, OrgUser>,
}

/// An organization's decider: one arm per command. Long because it is the
/// table of what every command does to an organization and its members.
pub fn decide(state: &OrgState, caller_org: OrgId, command: &Command, _now: Timestamp) -> Decision {
    match command {
        Command::RegisterOrganization {
            org_id,
            name,
            owner,
        } => {
            if state.org_id.is_some() {
                return Decision::reject(Rejection::OrganizationAlreadyExists);
            }
            if *org_id != caller_org {
                return Decision::reject(Rejection::OrganizationNotFound);
            }
            let mut events = vec![Event::OrganizationRegistered(OrganizationRegistered {
                org_id: *org_id,
                name: name.as_str().to_owned(),
            })];
            if let Some(owner) = owner {
                events.push(Event::UserRegistered(UserRegistered {
                    user_id: owner.user_id,
                    email: owner.email.as_str().to_owned(),
                    full_name: owner.full_name.as_str().to_owned(),
                    role: owner.role,
                }));
            }
            Decision::accept(events)
        }
        Command::RegisterUser {
            org_id,
            user_id,
            email,
            full_name,
            role,
        } => {
            if state.org_id != Some(*org_id) || *org_id != caller_org {
                return Decision::reject(Rejection::OrganizationNotFound);
            }
            let taken = state.users.contains_key(user_id)
                || state
                    .users
                    .values()
                    .any(|user| user.email == email.as_str());
            if taken {
                return Decision::reject(Rejection::UserAlreadyExists);
            }
            Decision::accept(vec![Event::UserRegistered(UserRegistered {
                user_id: *user_id,
                email: email.as_str().to_owned(),
                full_name: full_name.as_str().to_owned(),
                role: *role,
            })])
        }
        Command::ChangeUserRole {
            org_id,
            user_id,
            role,
        } => {
            if state.org_id != Some(*org_id) || *org_id != caller_org {
                return Decision::reject(Rejection::OrganizationNotFound);
            }
            match state.users.get(user_id) {
                Some(user) if !user.active => Decision::reject(Rejection::UserNotFound),
                None => Decision::reject(Rejection::UserNotFound),
                Some(user) if user.role == Role::Owner || *role == Role::Owner => {
                    Decision::reject(Rejection::OwnerIsPermanent)
                }
                Some(user) if user.role == *role => Decision::accept(vec![]),
                Some(_) => Decision::accept(vec![Event::UserRoleChanged(UserRoleChanged {
                    user_id: *user_id,
                    role: *role,
                })]),
            }
        }
        Command::DeactivateUser { org_id, user_id } => {
            if state.org_id != Some(*org_id) || *org_id != caller_org {
                return Decision::reject(Rejection::OrganizationNotFound);
            }
            match state.users.get(user_id) {
                None => Decision::reject(Rejection::UserNotFound),
                Some(user) if user.role == Role::Owner => {
                    Decision::reject(Rejection::OwnerIsPermanent)
                }
                // Again: nothing more to record (a retry finishes the rest).
                Some(user) if !user.active => Decision::accept(vec![]),
                Some(_) => Decision::accept(vec![Event::UserDeactivated(UserDeactivated {
                    user_id: *user_id,
                })]),
            }
        }
        _ => Decision::reject(Rejection::OrganizationNotFound),
    }
}

pub fn evolve(mut state: OrgState, event: &Event) -> OrgState {
    match event {
        Event::OrganizationRegistered(registered) => {
            state.org_id = Some(registered.org_id);
            state.name = registered.name.clone();
        }
        Event::UserRegistered(user) => {
            state.users.insert(
                user.user_id,
                OrgUser {
                    email: user.email.clone(),
                    role: user.role,
                    active: true,
                },
            );
        }
        Event::UserRoleChanged(changed) => {
            if let Some(user) = state.users.get_mut(&changed.user_id) {
                user.role = changed.role;
            }
        }
        Event::UserDeactivated(deactivated) => {
            if let Some(user) = state.users.get_mut(&deactivated.user_id) {
                user.active = false;
            }
        }
        _ => {}
    }
    state
}
