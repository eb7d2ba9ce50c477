//! Proptest strategies for events as the log records them (feature
//! `testing`): every event type with arbitrary fields, arbitrary metadata,
//! and payloads only older versions wrote (legacy timestamps, unknown
//! members), chained into a valid log.

use crate::canonical::expected_hash;
use crate::envelope::{Metadata, RecordedEvent};
use crate::event::*;
use crate::hash::ChainHash;
use crate::ids::OrgId;
use crate::time::Timestamp;
use proptest::prelude::*;
use uuid::Uuid;

/// Any id (`Uuid` or a typed id).
fn id<T: From<Uuid> + std::fmt::Debug>() -> impl Strategy<Value = T> {
    any::<u128>().prop_map(|v| T::from(Uuid::from_u128(v)))
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (Timestamp::MIN.as_micros()..=Timestamp::MAX.as_micros())
        .prop_map(Timestamp::from_micros_saturating)
}

/// Any text but NUL (which no stored text holds: PostgreSQL's `jsonb`
/// refuses it), escapes and astral characters included.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9@.:-]{0,12}",
        "[^\\u{0}]{0,40}",
        "[\"\\\\\u{1}-\u{1f}\u{7f}\u{2028}\u{1f600}]{0,6}",
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Owner), Just(Role::Admin), Just(Role::Member)]
}

fn status() -> impl Strategy<Value = LicenseStatusChanged> {
    (proptest::option::of(text()), any::<bool>()).prop_map(|(reason, ends_leases)| {
        LicenseStatusChanged {
            reason,
            ends_leases,
        }
    })
}

/// Any event of the catalogue.
pub fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (id(), text()).prop_map(|(org_id, name)| Event::OrganizationRegistered(
            OrganizationRegistered { org_id, name }
        )),
        (id(), text(), text(), role()).prop_map(|(user_id, email, full_name, role)| {
            Event::UserRegistered(UserRegistered {
                user_id,
                email,
                full_name,
                role,
            })
        }),
        (id(), role())
            .prop_map(|(user_id, role)| Event::UserRoleChanged(UserRoleChanged { user_id, role })),
        id().prop_map(|user_id| Event::UserDeactivated(UserDeactivated { user_id })),
        (
            id(),
            id(),
            text(),
            any::<u32>(),
            proptest::option::of(timestamp()),
            any::<u32>(),
            any::<u32>(),
            proptest::sample::select(vec![
                crate::ClientAuth::Token,
                crate::ClientAuth::LicenseKey,
                crate::ClientAuth::Both,
            ])
        )
            .prop_map(
                |(license_id, org_id, name, seats, expires_at, ttl, overage, client_auth)| {
                    Event::LicenseIssued(LicenseIssued {
                        license_id,
                        org_id,
                        name,
                        seats,
                        expires_at,
                        heartbeat_ttl_s: ttl,
                        max_overage_percent: overage,
                        client_auth,
                    })
                }
            ),
        any::<u32>().prop_map(|seats| Event::LicenseSeatsChanged(LicenseSeatsChanged { seats })),
        proptest::option::of(timestamp())
            .prop_map(|expires_at| Event::LicenseRenewed(LicenseRenewed { expires_at })),
        status().prop_map(Event::LicenseSuspended),
        status().prop_map(Event::LicenseReinstated),
        status().prop_map(Event::LicenseRevoked),
        (
            id(),
            any::<u64>(),
            id(),
            text(),
            timestamp(),
            any::<bool>(),
            proptest::option::of(id())
        )
            .prop_map(
                |(session_id, generation, user_id, hardware_id, expires_at, overage, token_id)| {
                    Event::SeatAcquired(SeatAcquired {
                        session_id,
                        generation,
                        user_id,
                        hardware_id,
                        expires_at,
                        overage,
                        token_id,
                    })
                }
            ),
        (id(), timestamp()).prop_map(|(session_id, expires_at)| Event::SeatHeartbeat(
            SeatHeartbeat {
                session_id,
                expires_at
            }
        )),
        (
            id(),
            prop_oneof![
                Just(ReleaseReason::Client),
                Just(ReleaseReason::Suspended),
                Just(ReleaseReason::Revoked),
                Just(ReleaseReason::Admin)
            ]
        )
            .prop_map(|(session_id, reason)| Event::SeatReleased(SeatReleased {
                session_id,
                reason
            })),
        (id(), timestamp()).prop_map(|(session_id, last_heartbeat_at)| Event::SeatExpired(
            SeatExpired {
                session_id,
                last_heartbeat_at
            }
        )),
        (
            id(),
            text(),
            prop_oneof![
                Just(DenialReason::NoSeats),
                Just(DenialReason::Expired),
                Just(DenialReason::Suspended),
                Just(DenialReason::Revoked)
            ]
        )
            .prop_map(
                |(user_id, hardware_id, reason)| Event::SeatDenied(SeatDenied {
                    user_id,
                    hardware_id,
                    reason
                })
            ),
    ]
}

/// A recorded `(event_type, payload)`: any event of the catalogue, or a
/// payload only an older version wrote (a timestamp outside today's range
/// in the legacy text form, a member no type declares, a large number).
pub fn any_recorded_payload() -> impl Strategy<Value = (String, serde_json::Value)> {
    prop_oneof![
        8 => any_event().prop_map(|event| (event.event_type().to_owned(), event.payload())),
        1 => (id::<Uuid>(), prop_oneof![Just("+10000-01-01T00:00:00.000000Z"), Just("-0001-12-31T23:59:59.000000Z")])
            .prop_map(|(session_id, at)| (
                "SeatHeartbeat".to_owned(),
                serde_json::json!({"session_id": session_id, "expires_at": at}),
            )),
        1 => (id::<Uuid>(), text(), any::<i64>(), any::<u64>()).prop_map(|(session_id, note, small, large)| (
            "SeatReleased".to_owned(),
            serde_json::json!({"session_id": session_id, "reason": "client", "note": note,
                               "n": small, "m": large, "nested": {"b": [1, null, true], "a": 0.5}}),
        )),
    ]
}

fn metadata() -> impl Strategy<Value = Metadata> {
    (
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(|(actor, correlation_id, request_id)| Metadata {
            actor,
            correlation_id,
            request_id,
        })
}

/// One event's recorded fields, before it is placed in a log.
#[derive(Clone, Debug)]
pub struct Entry {
    pub event_type: String,
    pub payload: serde_json::Value,
    pub metadata: Metadata,
    pub event_id: Uuid,
    pub org: u8,
    pub stream: u8,
    pub occurred_at: Timestamp,
    pub recorded_at: Timestamp,
}

/// Entries of a log: a few organizations and streams, so that streams and
/// organizations recur.
pub fn any_entry() -> impl Strategy<Value = Entry> {
    (
        any_recorded_payload(),
        metadata(),
        id(),
        0u8..3,
        0u8..4,
        timestamp(),
        timestamp(),
    )
        .prop_map(
            |((event_type, payload), metadata, event_id, org, stream, occurred_at, recorded_at)| {
                Entry {
                    event_type,
                    payload,
                    metadata,
                    event_id,
                    org,
                    stream,
                    occurred_at,
                    recorded_at,
                }
            },
        )
}

/// `entries` as a log of `partition` from position 1: consecutive
/// positions, stream versions counting per stream, and a valid chain.
pub fn chain(partition: i16, entries: &[Entry]) -> Vec<RecordedEvent> {
    let orgs = [
        OrgId::from_u128(11),
        OrgId::from_u128(12),
        OrgId::from_u128(13),
    ];
    let mut versions = std::collections::HashMap::new();
    let mut prev_hash = ChainHash::GENESIS;
    let mut events = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let org_id = orgs[usize::from(entry.org) % orgs.len()];
        let stream_id = format!(
            "license-{}",
            Uuid::from_u128(100 + u128::from(entry.stream))
        );
        let version = versions.entry(stream_id.clone()).or_insert(0i64);
        *version += 1;
        let mut event = RecordedEvent {
            partition,
            position: index as i64 + 1,
            event_id: entry.event_id,
            stream_id,
            stream_version: *version,
            org_id,
            event_type: entry.event_type.clone(),
            schema_version: CURRENT_SCHEMA_VERSION,
            payload: entry.payload.clone(),
            metadata: entry.metadata.clone(),
            occurred_at: entry.occurred_at,
            recorded_at: entry.recorded_at,
            prev_hash,
            hash: ChainHash::GENESIS,
        };
        event.hash = expected_hash(&event);
        prev_hash = event.hash;
        events.push(event);
    }
    events
}
