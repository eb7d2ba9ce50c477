//! Decider tests in given/when/then form, one per rule of docs/design.md §2 and per
//! rejection code, and property tests against a model.

use super::*;
use proptest::prelude::*;
use seatledger_schema::TokenId;
use seatledger_schema::UserId;
use seatledger_schema::{
    DenialReason, LicenseIssued, LicenseStatusChanged, OrganizationRegistered, ReleaseReason,
    SeatAcquired, SeatDenied, SeatExpired, SeatHeartbeat, SeatReleased,
};
use seatledger_schema::{LicenseId, SessionId};

const ORG: OrgId = OrgId::from_u128(0x0a);
const OTHER_ORG: OrgId = OrgId::from_u128(0x0b);
const LICENSE: LicenseId = LicenseId::from_u128(0x1c);
const T0: i64 = 1_800_000_000_000_000;
const TTL: u32 = 60;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_micros_saturating(T0).plus_seconds(seconds)
}

fn user(n: u128) -> UserId {
    UserId::from_u128(0x100 + n)
}

fn session(n: u128) -> SessionId {
    SessionId::from_u128(0x5000 + n)
}

fn issued(seats: u32, overage: u32, expires_at: Option<Timestamp>) -> Event {
    Event::LicenseIssued(LicenseIssued {
        license_id: LICENSE,
        org_id: ORG,
        name: "IDE".into(),
        seats,
        expires_at,
        heartbeat_ttl_s: TTL,
        max_overage_percent: overage,
        client_auth: Default::default(),
    })
}

fn acquired(n: u128, generation: u64, at_s: i64, overage: bool) -> Event {
    Event::SeatAcquired(SeatAcquired {
        token_id: None,
        session_id: session(n),
        generation,
        user_id: user(n),
        hardware_id: format!("machine-{n}"),
        expires_at: at(at_s + i64::from(TTL)),
        overage,
    })
}

fn given(events: &[Event]) -> StreamState {
    events.iter().fold(StreamState::Empty, evolve)
}

fn when(state: &StreamState, command: Command, now: Timestamp) -> Decision {
    decide(state, ORG, &command, now)
}

fn acquire(n: u128) -> Command {
    acquire_as(n, n)
}

/// Session `session_n` requested by user `n` on machine `n`.
fn acquire_as(n: u128, session_n: u128) -> Command {
    Command::AcquireSeat {
        credential: crate::domain::AcquireCredential::Unchecked,
        token_id: None,
        license_id: LICENSE,
        session_id: session(session_n),
        user_id: user(n),
        hardware_id: HardwareId::parse(&format!("machine-{n}")).unwrap(),
    }
}

fn heartbeat(n: u128) -> Command {
    Command::Heartbeat {
        license_id: LICENSE,
        session_id: session(n),
        by: crate::domain::SeatActor::Unchecked,
    }
}

fn release(n: u128) -> Command {
    Command::ReleaseSeat {
        license_id: LICENSE,
        session_id: session(n),
        by: crate::domain::SeatActor::Unchecked,
    }
}

fn expired_event(n: u128, acquired_at_s: i64) -> Event {
    Event::SeatExpired(SeatExpired {
        session_id: session(n),
        last_heartbeat_at: at(acquired_at_s),
    })
}

fn denied(n: u128, reason: DenialReason) -> Event {
    Event::SeatDenied(SeatDenied {
        user_id: user(n),
        hardware_id: format!("machine-{n}"),
        reason,
    })
}

fn no_reason() -> LicenseStatusChanged {
    LicenseStatusChanged::default()
}

/// A suspension or revocation that ends every lease by itself.
fn ending_leases(reason: Option<&str>) -> LicenseStatusChanged {
    LicenseStatusChanged {
        reason: reason.map(str::to_owned),
        ends_leases: true,
    }
}

#[test]
fn issuing_a_license_records_its_terms_and_twice_is_rejected() {
    let issue = Command::IssueLicense {
        client_auth: Default::default(),
        license_id: LICENSE,
        name: Name::parse("IDE").unwrap(),
        seats: SeatCount::new(3).unwrap(),
        expires_at: None,
        heartbeat_ttl_s: HeartbeatTtl::new(TTL).unwrap(),
        max_overage_percent: OveragePercent::default(),
    };
    let decision = when(&StreamState::Empty, issue.clone(), at(0));
    assert_eq!(decision, Decision::accept(vec![issued(3, 0, None)]));
    let decision = when(&given(&[issued(3, 0, None)]), issue, at(1));
    assert_eq!(decision, Decision::reject(Rejection::LicenseAlreadyExists));
}

#[test]
fn acquire_grants_a_lease_with_increasing_generations() {
    let state = given(&[issued(3, 0, None)]);
    assert_eq!(
        when(&state, acquire(1), at(0)),
        Decision::accept(vec![acquired(1, 1, 0, false)])
    );
    let state = given(&[issued(3, 0, None), acquired(1, 1, 0, false)]);
    assert_eq!(
        when(&state, acquire(2), at(5)),
        Decision::accept(vec![acquired(2, 2, 5, false)])
    );
}

#[test]
fn acquire_beyond_seats_is_denied_and_recorded() {
    let state = given(&[
        issued(2, 0, None),
        acquired(1, 1, 0, false),
        acquired(2, 2, 0, false),
    ]);
    let decision = when(&state, acquire(3), at(10));
    assert_eq!(
        decision,
        Decision::deny(
            vec![denied(3, DenialReason::NoSeats)],
            Rejection::NoSeatsAvailable
        )
    );
}

#[test]
fn overage_allowance_grants_extra_seats_marked_as_overage() {
    // 2 seats + floor(2 * 50 / 100) = 3.
    let state = given(&[
        issued(2, 50, None),
        acquired(1, 1, 0, false),
        acquired(2, 2, 0, false),
    ]);
    assert_eq!(
        when(&state, acquire(3), at(1)),
        Decision::accept(vec![acquired(3, 3, 1, true)])
    );
    let state = given(&[
        issued(2, 50, None),
        acquired(1, 1, 0, false),
        acquired(2, 2, 0, false),
        acquired(3, 3, 0, true),
    ]);
    assert_eq!(
        when(&state, acquire(4), at(1)).rejection,
        Some(Rejection::NoSeatsAvailable)
    );
}

#[test]
fn stale_leases_are_expired_in_the_same_append_before_denying() {
    let state = given(&[
        issued(2, 0, None),
        acquired(1, 1, 0, false),
        acquired(2, 2, 30, false),
    ]);
    // At 61 s lease 1 (expires at 60 s) is stale; lease 2 (90 s) is live.
    let decision = when(&state, acquire(3), at(61));
    assert_eq!(
        decision,
        Decision::accept(vec![expired_event(1, 0), acquired(3, 3, 61, false)])
    );
}

#[test]
fn stale_leases_are_not_touched_while_seats_remain() {
    let state = given(&[issued(3, 0, None), acquired(1, 1, 0, false)]);
    let decision = when(&state, acquire(2), at(100));
    assert_eq!(decision, Decision::accept(vec![acquired(2, 2, 100, false)]));
}

#[test]
fn reacquire_by_the_same_user_and_machine_is_a_heartbeat_not_a_second_seat() {
    let state = given(&[issued(1, 0, None), acquired(1, 1, 0, false)]);
    let decision = when(&state, acquire_as(1, 99), at(20));
    assert_eq!(
        decision,
        Decision::accept(vec![Event::SeatHeartbeat(SeatHeartbeat {
            session_id: session(1),
            expires_at: at(80)
        })])
    );
}

#[test]
fn reacquire_after_own_lease_went_stale_expires_it_and_grants_a_new_generation() {
    let state = given(&[issued(1, 0, None), acquired(1, 1, 0, false)]);
    let decision = when(&state, acquire_as(1, 7), at(60));
    let mut fresh = acquired(1, 2, 60, false);
    if let Event::SeatAcquired(seat) = &mut fresh {
        seat.session_id = session(7);
    }
    assert_eq!(decision, Decision::accept(vec![expired_event(1, 0), fresh]));
}

fn beat_by(n: u128, by: SeatActor) -> Command {
    Command::Heartbeat {
        license_id: LICENSE,
        session_id: session(n),
        by,
    }
}

fn release_by(n: u128, by: SeatActor) -> Command {
    Command::ReleaseSeat {
        license_id: LICENSE,
        session_id: session(n),
        by,
    }
}

#[test]
fn only_the_holder_heartbeats_a_lease_admins_included() {
    let state = given(&[issued(2, 0, None), acquired(1, 1, 0, false)]);
    let own = when(&state, beat_by(1, SeatActor::Holder(user(1))), at(10));
    assert!(
        matches!(
            own,
            Decision {
                rejection: None,
                ..
            }
        ),
        "{own:?}"
    );
    for by in [SeatActor::Holder(user(2)), SeatActor::Admin(user(2))] {
        assert_eq!(
            when(&state, beat_by(1, by), at(10)),
            Decision::reject(Rejection::NotLeaseHolder),
            "{by:?}"
        );
    }
}

#[test]
fn client_auth_decides_which_credential_acquires() {
    use seatledger_schema::ClientAuth;
    let cases = [
        (ClientAuth::Token, true, false),
        (ClientAuth::LicenseKey, false, true),
        (ClientAuth::Both, true, true),
    ];
    for (policy, token, key) in cases {
        let mut issue = issued(2, 0, None);
        if let Event::LicenseIssued(issued) = &mut issue {
            issued.client_auth = policy;
        }
        let state = given(&[issue]);
        for (credential, allowed) in [
            (AcquireCredential::Token, token),
            (AcquireCredential::LicenseKey, key),
            (AcquireCredential::Unchecked, true),
        ] {
            let mut command = acquire(1);
            if let Command::AcquireSeat { credential: c, .. } = &mut command {
                *c = credential;
            }
            let decision = when(&state, command, at(10));
            if allowed {
                assert_eq!(decision.rejection, None, "{policy:?} {credential:?}");
                assert!(matches!(decision.events[..], [Event::SeatAcquired(_)]));
            } else {
                assert_eq!(
                    decision,
                    Decision::reject(Rejection::ClientAuthNotAllowed),
                    "{policy:?} {credential:?}: refused, nothing recorded"
                );
            }
        }
    }
}

#[test]
fn the_bearer_of_a_lease_token_acts_as_that_leases_holder() {
    let state = given(&[issued(2, 0, None), acquired(1, 1, 0, false)]);
    let beat = when(&state, beat_by(1, SeatActor::Lease), at(10));
    assert_eq!(beat.rejection, None, "{beat:?}");
    assert!(
        matches!(beat.events[..], [Event::SeatHeartbeat(_)]),
        "{beat:?}"
    );
    assert_eq!(
        when(&state, release_by(1, SeatActor::Lease), at(10)),
        Decision::accept(vec![Event::SeatReleased(SeatReleased {
            session_id: session(1),
            reason: ReleaseReason::Client,
        })])
    );
}

#[test]
fn a_member_releases_only_their_own_lease_and_an_admin_any_recorded_as_admin() {
    let state = given(&[issued(2, 0, None), acquired(1, 1, 0, false)]);
    assert_eq!(
        when(&state, release_by(1, SeatActor::Holder(user(2))), at(10)),
        Decision::reject(Rejection::NotLeaseHolder)
    );
    let released = |reason| {
        Decision::accept(vec![Event::SeatReleased(SeatReleased {
            session_id: session(1),
            reason,
        })])
    };
    assert_eq!(
        when(&state, release_by(1, SeatActor::Holder(user(1))), at(10)),
        released(ReleaseReason::Client)
    );
    assert_eq!(
        when(&state, release_by(1, SeatActor::Admin(user(1))), at(10)),
        released(ReleaseReason::Client),
        "an admin's own lease is a client release"
    );
    assert_eq!(
        when(&state, release_by(1, SeatActor::Admin(user(2))), at(10)),
        released(ReleaseReason::Admin)
    );
    // An admin-released lease is ended: the seat is free again.
    let after = given(&[
        issued(1, 0, None),
        acquired(1, 1, 0, false),
        Event::SeatReleased(SeatReleased {
            session_id: session(1),
            reason: ReleaseReason::Admin,
        }),
    ]);
    let next = when(&after, acquire(2), at(11));
    assert!(
        matches!(&next.events[..], [Event::SeatAcquired(_)]),
        "{next:?}"
    );
}

#[test]
fn heartbeat_extends_a_live_lease() {
    let state = given(&[issued(1, 0, None), acquired(1, 1, 0, false)]);
    let decision = when(&state, heartbeat(1), at(59));
    assert_eq!(
        decision,
        Decision::accept(vec![Event::SeatHeartbeat(SeatHeartbeat {
            session_id: session(1),
            expires_at: at(119)
        })])
    );
}

#[test]
fn heartbeat_of_a_released_session_is_session_expired() {
    let released = Event::SeatReleased(SeatReleased {
        session_id: session(1),
        reason: ReleaseReason::Client,
    });
    let state = given(&[issued(1, 0, None), acquired(1, 1, 0, false), released]);
    assert_eq!(
        when(&state, heartbeat(1), at(1)),
        Decision::reject(Rejection::SessionExpired)
    );
}

#[test]
fn heartbeat_of_a_stale_lease_records_its_expiry_and_is_session_expired() {
    let state = given(&[issued(1, 0, None), acquired(1, 1, 0, false)]);
    let decision = when(&state, heartbeat(1), at(60));
    assert_eq!(
        decision,
        Decision::deny(vec![expired_event(1, 0)], Rejection::SessionExpired)
    );
}

#[test]
fn heartbeat_of_an_unknown_session_is_session_not_found() {
    let state = given(&[issued(1, 0, None), acquired(1, 1, 0, false)]);
    assert_eq!(
        when(&state, heartbeat(2), at(1)),
        Decision::reject(Rejection::SessionNotFound)
    );
}

#[test]
fn release_is_idempotent() {
    let state = given(&[issued(1, 0, None), acquired(1, 1, 0, false)]);
    let released = Event::SeatReleased(SeatReleased {
        session_id: session(1),
        reason: ReleaseReason::Client,
    });
    assert_eq!(
        when(&state, release(1), at(1)),
        Decision::accept(vec![released.clone()])
    );
    let state = given(&[issued(1, 0, None), acquired(1, 1, 0, false), released]);
    assert_eq!(when(&state, release(1), at(2)), Decision::accept(vec![]));
    assert_eq!(
        when(&state, release(2), at(2)),
        Decision::reject(Rejection::SessionNotFound)
    );
}

#[test]
fn releasing_a_stale_lease_records_its_expiry_and_succeeds() {
    let state = given(&[issued(1, 0, None), acquired(1, 1, 0, false)]);
    assert_eq!(
        when(&state, release(1), at(61)),
        Decision::accept(vec![expired_event(1, 0)])
    );
}

#[test]
fn expire_seat_expires_only_stale_leases() {
    let state = given(&[issued(1, 0, None), acquired(1, 1, 0, false)]);
    let expire = Command::ExpireSeat {
        license_id: LICENSE,
        session_id: session(1),
    };
    assert_eq!(
        when(&state, expire.clone(), at(59)),
        Decision::accept(vec![])
    );
    assert_eq!(
        when(&state, expire, at(60)),
        Decision::accept(vec![expired_event(1, 0)])
    );
    let unknown = Command::ExpireSeat {
        license_id: LICENSE,
        session_id: session(9),
    };
    assert_eq!(when(&state, unknown, at(60)), Decision::accept(vec![]));
}

#[test]
fn a_suspended_license_grants_nothing_and_suspending_releases_every_lease() {
    let state = given(&[
        issued(3, 0, None),
        acquired(1, 1, 0, false),
        acquired(2, 2, 50, false),
    ]);
    let suspend = Command::SuspendLicense {
        license_id: LICENSE,
        reason: None,
    };
    let decision = when(&state, suspend.clone(), at(70));
    // One event, however many leases: it ends them all.
    assert_eq!(
        decision,
        Decision::accept(vec![Event::LicenseSuspended(ending_leases(None))])
    );
    let mut history = vec![
        issued(3, 0, None),
        acquired(1, 1, 0, false),
        acquired(2, 2, 50, false),
    ];
    history.extend(decision.events);
    let state = given(&history);
    let StreamState::License(license) = &state else {
        unreachable!()
    };
    assert_eq!(license.lease_count(), 0);
    assert!(license.is_ended(session(1)) && license.is_ended(session(2)));
    // A log written before: the suspension, then one event per lease (the
    // stale one expired, the live one released). It replays to the same
    // state.
    let before = given(&[
        issued(3, 0, None),
        acquired(1, 1, 0, false),
        acquired(2, 2, 50, false),
        Event::LicenseSuspended(no_reason()),
        expired_event(1, 0),
        Event::SeatReleased(SeatReleased {
            session_id: session(2),
            reason: ReleaseReason::Suspended,
        }),
    ]);
    assert_eq!(before, state);
    assert_eq!(
        when(&state, acquire(3), at(71)),
        Decision::deny(
            vec![denied(3, DenialReason::Suspended)],
            Rejection::LicenseSuspended
        )
    );
    assert_eq!(
        when(&state, heartbeat(2), at(71)),
        Decision::reject(Rejection::SessionExpired)
    );
    assert_eq!(when(&state, suspend, at(72)), Decision::accept(vec![]));
}

#[test]
fn reinstating_reopens_a_suspended_license_and_only_a_suspended_one() {
    let reinstate = Command::ReinstateLicense {
        license_id: LICENSE,
        reason: None,
    };
    let active = given(&[issued(1, 0, None)]);
    assert_eq!(
        when(&active, reinstate.clone(), at(0)),
        Decision::reject(Rejection::LicenseNotSuspended)
    );
    let suspended = given(&[issued(1, 0, None), Event::LicenseSuspended(no_reason())]);
    assert_eq!(
        when(&suspended, reinstate, at(0)),
        Decision::accept(vec![Event::LicenseReinstated(no_reason())])
    );
}

#[test]
fn a_revoked_license_grants_nothing_and_refuses_changes() {
    let state = given(&[issued(2, 0, None), acquired(1, 1, 0, false)]);
    let revoke = Command::RevokeLicense {
        license_id: LICENSE,
        reason: Some(Reason::parse("fraud").unwrap()),
    };
    let decision = when(&state, revoke, at(1));
    assert_eq!(
        decision,
        Decision::accept(vec![Event::LicenseRevoked(ending_leases(Some("fraud")))])
    );
    let mut history = vec![issued(2, 0, None), acquired(1, 1, 0, false)];
    history.extend(decision.events);
    let state = given(&history);
    assert_eq!(
        when(&state, acquire(2), at(2)),
        Decision::deny(
            vec![denied(2, DenialReason::Revoked)],
            Rejection::LicenseRevoked
        )
    );
    let change = Command::ChangeSeats {
        license_id: LICENSE,
        seats: SeatCount::new(5).unwrap(),
    };
    assert_eq!(
        when(&state, change, at(2)),
        Decision::reject(Rejection::LicenseRevoked)
    );
    let reinstate = Command::ReinstateLicense {
        license_id: LICENSE,
        reason: None,
    };
    assert_eq!(
        when(&state, reinstate, at(2)),
        Decision::reject(Rejection::LicenseRevoked)
    );
}

#[test]
fn an_expired_license_grants_nothing_and_renewing_reopens_it() {
    let state = given(&[issued(2, 0, Some(at(100)))]);
    assert_eq!(
        when(&state, acquire(1), at(100)),
        Decision::deny(
            vec![denied(1, DenialReason::Expired)],
            Rejection::LicenseExpired
        )
    );
    let renew = Command::RenewLicense {
        license_id: LICENSE,
        expires_at: Some(at(1000)),
    };
    let decision = when(&state, renew, at(100));
    assert_eq!(decision.events.len(), 1);
    let state = given(&[issued(2, 0, Some(at(100))), decision.events[0].clone()]);
    assert!(when(&state, acquire(1), at(101)).rejection.is_none());
}

#[test]
fn changing_seats_lowers_the_limit_for_new_grants_only() {
    let state = given(&[
        issued(3, 0, None),
        acquired(1, 1, 0, false),
        acquired(2, 2, 0, false),
    ]);
    let change = Command::ChangeSeats {
        license_id: LICENSE,
        seats: SeatCount::new(1).unwrap(),
    };
    let decision = when(&state, change, at(1));
    assert_eq!(
        decision.events,
        vec![Event::LicenseSeatsChanged(
            seatledger_schema::LicenseSeatsChanged { seats: 1 }
        )]
    );
    let mut history = vec![
        issued(3, 0, None),
        acquired(1, 1, 0, false),
        acquired(2, 2, 0, false),
    ];
    history.extend(decision.events);
    let state = given(&history);
    assert_eq!(
        when(&state, acquire(3), at(2)).rejection,
        Some(Rejection::NoSeatsAvailable)
    );
    // Both existing leases are still held.
    assert!(when(&state, heartbeat(1), at(2)).rejection.is_none());
    assert!(when(&state, heartbeat(2), at(2)).rejection.is_none());
}

#[test]
fn registering_with_an_owner_records_both_in_one_decision() {
    let owner = command::NewUser {
        user_id: user(1),
        email: Email::parse("ada@example.com").unwrap(),
        full_name: Name::parse("Ada").unwrap(),
        role: seatledger_schema::Role::Owner,
    };
    let register = Command::RegisterOrganization {
        org_id: ORG,
        name: Name::parse("Acme").unwrap(),
        owner: Some(owner),
    };
    let decision = when(&StreamState::Empty, register, at(0));
    assert_eq!(decision.events.len(), 2);
    assert!(matches!(&decision.events[1], Event::UserRegistered(u) if u.user_id == user(1)));
}

#[test]
fn update_license_changes_seats_and_expiry_together_and_only_what_differs() {
    let state = given(&[issued(3, 0, Some(at(100)))]);
    let update =
        |seats: Option<u32>, expires_at: Option<Option<Timestamp>>| Command::UpdateLicense {
            license_id: LICENSE,
            seats: seats.map(|n| SeatCount::new(n).unwrap()),
            expires_at,
        };
    let decision = when(&state, update(Some(5), Some(None)), at(1));
    assert_eq!(
        decision.events,
        vec![
            Event::LicenseSeatsChanged(seatledger_schema::LicenseSeatsChanged { seats: 5 }),
            Event::LicenseRenewed(seatledger_schema::LicenseRenewed { expires_at: None }),
        ]
    );
    assert_eq!(
        when(&state, update(Some(3), Some(Some(at(100)))), at(1)),
        Decision::accept(vec![])
    );
    assert_eq!(
        when(&state, update(None, None), at(1)),
        Decision::accept(vec![])
    );
}

#[test]
fn another_orgs_license_is_not_found_for_every_command() {
    let state = given(&[issued(3, 0, None), acquired(1, 1, 0, false)]);
    let commands = vec![
        acquire(2),
        heartbeat(1),
        release(1),
        Command::ExpireSeat {
            license_id: LICENSE,
            session_id: session(1),
        },
        Command::ChangeSeats {
            license_id: LICENSE,
            seats: SeatCount::new(5).unwrap(),
        },
        Command::UpdateLicense {
            license_id: LICENSE,
            seats: None,
            expires_at: None,
        },
        Command::RenewLicense {
            license_id: LICENSE,
            expires_at: None,
        },
        Command::SuspendLicense {
            license_id: LICENSE,
            reason: None,
        },
        Command::ReinstateLicense {
            license_id: LICENSE,
            reason: None,
        },
        Command::RevokeLicense {
            license_id: LICENSE,
            reason: None,
        },
    ];
    for command in commands {
        let decision = decide(&state, OTHER_ORG, &command, at(1));
        assert_eq!(
            decision,
            Decision::reject(Rejection::LicenseNotFound),
            "{command:?}"
        );
    }
}

#[test]
fn an_unissued_license_is_not_found() {
    assert_eq!(
        when(&StreamState::Empty, acquire(1), at(0)),
        Decision::reject(Rejection::LicenseNotFound)
    );
}

#[test]
fn organizations_register_once_and_users_once_per_email() {
    let register = Command::RegisterOrganization {
        org_id: ORG,
        name: Name::parse("Acme").unwrap(),
        owner: None,
    };
    let decision = when(&StreamState::Empty, register.clone(), at(0));
    let registered = Event::OrganizationRegistered(OrganizationRegistered {
        org_id: ORG,
        name: "Acme".into(),
    });
    assert_eq!(decision, Decision::accept(vec![registered.clone()]));
    let state = given(std::slice::from_ref(&registered));
    assert_eq!(
        when(&state, register, at(0)),
        Decision::reject(Rejection::OrganizationAlreadyExists)
    );

    let add = |user_id: UserId, email: &str| Command::RegisterUser {
        org_id: ORG,
        user_id,
        email: Email::parse(email).unwrap(),
        full_name: Name::parse("Ada").unwrap(),
        role: seatledger_schema::Role::Owner,
    };
    assert_eq!(
        when(&StreamState::Empty, add(user(1), "ada@example.com"), at(0)),
        Decision::reject(Rejection::OrganizationNotFound)
    );
    let decision = when(&state, add(user(1), "ada@example.com"), at(0));
    assert_eq!(decision.events.len(), 1);
    let state = given(&[registered, decision.events[0].clone()]);
    assert_eq!(
        when(&state, add(user(2), "ADA@example.com"), at(0)),
        Decision::reject(Rejection::UserAlreadyExists)
    );
    assert_eq!(
        when(&state, add(user(1), "bob@example.com"), at(0)),
        Decision::reject(Rejection::UserAlreadyExists)
    );
    assert_eq!(
        decide(&state, OTHER_ORG, &add(user(3), "eve@example.com"), at(0)),
        Decision::reject(Rejection::OrganizationNotFound)
    );
}

#[test]
fn license_state_snapshots_round_trip_with_their_indexes() {
    let events = [
        issued(3, 0, None),
        acquired(1, 1, 0, false),
        acquired(2, 2, 5, false),
    ];
    let state = given(&events);
    let json = serde_json::to_value(&state).unwrap();
    let back: StreamState = serde_json::from_value(json).unwrap();
    assert_eq!(back, state);
    // The rebuilt indexes work: re-acquire is recognised, stale leases found.
    assert_eq!(when(&back, acquire_as(1, 50), at(1)).events.len(), 1);
    assert!(matches!(
        when(&back, acquire_as(1, 50), at(1)).events[0],
        Event::SeatHeartbeat(_)
    ));
}

// ---- property tests -------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Acquire { user: u8, machine: u8 },
    Heartbeat(u8),
    Release(u8),
    Expire(u8),
    Advance(u16),
    ChangeSeats(u8),
    Suspend,
    Reinstate,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..6, 0u8..3).prop_map(|(user, machine)| Op::Acquire { user, machine }),
        3 => any::<u8>().prop_map(Op::Heartbeat),
        2 => any::<u8>().prop_map(Op::Release),
        1 => any::<u8>().prop_map(Op::Expire),
        3 => (0u16..90).prop_map(Op::Advance),
        1 => (1u8..6).prop_map(Op::ChangeSeats),
        1 => Just(Op::Suspend),
        1 => Just(Op::Reinstate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// For any command sequence with clock advances: active seats never
    /// exceed the limit, replay equals the live fold, a re-acquire never
    /// takes a second seat, generations strictly increase, and a command on
    /// one session never emits an event about another (except the expiry of
    /// stale leases by acquire, suspend and revoke).
    #[test]
    fn decider_invariants_hold_for_any_command_sequence(
        seats in 1u32..5,
        overage in prop_oneof![Just(0u32), Just(50u32), Just(100u32)],
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut now = at(0);
        let mut log = vec![issued(seats, overage, None)];
        let mut state = given(&log);
        let mut sessions: Vec<SessionId> = Vec::new();
        let mut last_generation = 0u64;
        let mut highest_limit = 0u32;
        for (index, op) in ops.into_iter().enumerate() {
            let pick = |n: u8| sessions.get(n as usize % sessions.len().max(1)).copied().unwrap_or(SessionId::from_u128(0xdead));
            let command = match op {
                Op::Advance(seconds) => { now = now.plus_seconds(i64::from(seconds)); continue; }
                Op::Acquire { user, machine } => {
                    let session_id = SessionId::from_u128(0x9000 + index as u128);
                    sessions.push(session_id);
                    Command::AcquireSeat {
                        credential: crate::domain::AcquireCredential::Unchecked,
                        // User 5 is a client token: its id is its user id.
                        token_id: (user == 5).then(|| TokenId::from_u128(5)),
                        license_id: LICENSE,
                        session_id,
                        user_id: UserId::from_u128(u128::from(user)),
                        hardware_id: HardwareId::parse(&format!("m{machine}")).unwrap(),
                    }
                }
                Op::Heartbeat(n) => Command::Heartbeat { license_id: LICENSE, session_id: pick(n), by: crate::domain::SeatActor::Unchecked },
                Op::Release(n) => Command::ReleaseSeat { license_id: LICENSE, session_id: pick(n), by: crate::domain::SeatActor::Unchecked },
                Op::Expire(n) => Command::ExpireSeat { license_id: LICENSE, session_id: pick(n) },
                Op::ChangeSeats(n) => Command::ChangeSeats { license_id: LICENSE, seats: SeatCount::new(u32::from(n)).unwrap() },
                Op::Suspend => Command::SuspendLicense { license_id: LICENSE, reason: None },
                Op::Reinstate => Command::ReinstateLicense { license_id: LICENSE, reason: None },
            };
            let StreamState::License(license) = &state else { unreachable!() };
            let had_live_lease_on_machine = match &command {
                Command::AcquireSeat { user_id, hardware_id, .. } => license
                    .leases()
                    .any(|lease| lease.user_id == *user_id && lease.hardware_id == hardware_id.as_str() && lease.expires_at > now),
                _ => false,
            };
            let decision = decide(&state, ORG, &command, now);
            if had_live_lease_on_machine {
                prop_assert!(!decision.events.iter().any(|e| matches!(e, Event::SeatAcquired(_))), "second seat for one machine");
            }
            if let Command::Heartbeat { session_id, .. } | Command::ReleaseSeat { session_id, .. } | Command::ExpireSeat { session_id, .. } = &command {
                for event in &decision.events {
                    let about = match event {
                        Event::SeatHeartbeat(e) => e.session_id,
                        Event::SeatReleased(e) => e.session_id,
                        Event::SeatExpired(e) => e.session_id,
                        other => panic!("unexpected {other:?}"),
                    };
                    prop_assert_eq!(about, *session_id);
                }
            }
            for event in decision.events {
                if let Event::SeatAcquired(seat) = &event {
                    prop_assert!(seat.generation > last_generation);
                    last_generation = seat.generation;
                }
                state = evolve(state, &event);
                if let (Event::SeatAcquired(_), StreamState::License(license)) = (&event, &state) {
                    let limit = license.terms.as_ref().unwrap().seat_limit();
                    prop_assert!(license.lease_count() as u32 <= limit, "{} leases > limit {}", license.lease_count(), limit);
                }
                log.push(event);
            }
            let StreamState::License(license) = &state else { unreachable!() };
            highest_limit = highest_limit.max(license.terms.as_ref().unwrap().seat_limit());
            prop_assert!(license.seats_used(now) <= highest_limit);
        }
        // Replaying the log from zero equals the live fold.
        prop_assert_eq!(given(&log), state.clone());
        // So does loading a snapshot taken at any of several points, plus
        // the events after it: snapshots of the current writer, and of the
        // format written before it (which the current writer still writes
        // byte for byte).
        for cut in (1..=log.len()).step_by(log.len().div_ceil(6)) {
            let at_cut = given(&log[..cut]);
            let StreamState::License(license) = &at_cut else { unreachable!() };
            let old_format = crate::domain::license::old_format_snapshot(license);
            prop_assert_eq!(&serde_json::to_value(&at_cut).unwrap(), &old_format);
            for snapshot in [serde_json::to_string(&at_cut).unwrap(), old_format.to_string()] {
                let loaded: StreamState = serde_json::from_str(&snapshot).unwrap();
                let replayed = log[cut..].iter().fold(loaded, evolve);
                prop_assert_eq!(&replayed, &state);
            }
        }
    }
}

#[test]
fn roles_change_and_users_deactivate_but_owners_are_permanent() {
    use seatledger_schema::{Role, UserDeactivated, UserRegistered, UserRoleChanged};
    let registered = |n: u128, role: Role| {
        Event::UserRegistered(UserRegistered {
            user_id: user(n),
            email: format!("u{n}@example.com"),
            full_name: "U".into(),
            role,
        })
    };
    let state = given(&[
        Event::OrganizationRegistered(OrganizationRegistered {
            org_id: ORG,
            name: "Acme".into(),
        }),
        registered(1, Role::Owner),
        registered(2, Role::Member),
    ]);
    let change = |n: u128, role: Role| Command::ChangeUserRole {
        org_id: ORG,
        user_id: user(n),
        role,
    };
    let deactivate = |n: u128| Command::DeactivateUser {
        org_id: ORG,
        user_id: user(n),
    };
    let promoted = when(&state, change(2, Role::Admin), at(0));
    assert_eq!(
        promoted,
        Decision::accept(vec![Event::UserRoleChanged(UserRoleChanged {
            user_id: user(2),
            role: Role::Admin
        })])
    );
    let state = promoted.events.iter().fold(state, evolve);
    assert_eq!(
        when(&state, change(2, Role::Admin), at(0)),
        Decision::accept(vec![])
    );
    for command in [
        change(1, Role::Member),
        change(2, Role::Owner),
        deactivate(1),
    ] {
        assert_eq!(
            when(&state, command.clone(), at(0)),
            Decision::reject(Rejection::OwnerIsPermanent),
            "{command:?}"
        );
    }
    assert_eq!(
        when(&state, change(9, Role::Admin), at(0)),
        Decision::reject(Rejection::UserNotFound)
    );
    let gone = when(&state, deactivate(2), at(0));
    assert_eq!(
        gone,
        Decision::accept(vec![Event::UserDeactivated(UserDeactivated {
            user_id: user(2)
        })])
    );
    let state = gone.events.iter().fold(state, evolve);
    assert_eq!(when(&state, deactivate(2), at(0)), Decision::accept(vec![]));
    assert_eq!(
        when(&state, change(2, Role::Member), at(0)),
        Decision::reject(Rejection::UserNotFound)
    );
    // Another organization's stream knows none of this.
    assert_eq!(
        decide(&state, OTHER_ORG, &deactivate(2), at(0)),
        Decision::reject(Rejection::OrganizationNotFound)
    );
}

/// An organization snapshot from before deactivation existed (users without
/// `active`) loads with every user active.
#[test]
fn org_snapshots_without_the_active_flag_load_as_active() {
    let snapshot = serde_json::json!({
        "org_id": ORG,
        "name": "Acme",
        "users": { user(1).to_string(): { "email": "a@example.com", "role": "owner" } }
    });
    let state: org::OrgState = serde_json::from_value(snapshot).unwrap();
    assert!(state.users[&user(1)].active);
}
