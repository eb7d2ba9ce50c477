//! The wire format is a contract: every event type, and the envelope the
//! log, `/events`, NATS and exports carry, decodes from these exact bytes
//! and encodes back to them. The Rust types behind them (typed ids, `org`
//! for what the envelope calls `tenant_id`) may change; these bytes may
//! not, or every stored hash and every client breaks.

use seatledger_schema::{canonical_bytes, Event, RecordedEvent};

/// One of every event type with every field set, as the log stores its
/// `(event_type, schema_version, payload)`; keys in canonical order.
const EVENTS: &[(&str, i32, &str)] = &[
    (
        "OrganizationRegistered",
        1,
        r#"{"name":"Acme","org_id":"00000000-0000-0000-0000-000000000001"}"#,
    ),
    (
        "UserRegistered",
        1,
        r#"{"email":"a@example.com","full_name":"A","role":"owner","user_id":"00000000-0000-0000-0000-000000000002"}"#,
    ),
    (
        "UserRoleChanged",
        1,
        r#"{"role":"admin","user_id":"00000000-0000-0000-0000-000000000002"}"#,
    ),
    (
        "UserDeactivated",
        1,
        r#"{"user_id":"00000000-0000-0000-0000-000000000002"}"#,
    ),
    (
        "LicenseIssued",
        1,
        r#"{"expires_at":"2027-01-01T00:00:00.000000Z","heartbeat_ttl_s":90,"license_id":"00000000-0000-0000-0000-000000000003","max_overage_percent":20,"name":"ide","org_id":"00000000-0000-0000-0000-000000000001","seats":5}"#,
    ),
    ("LicenseSeatsChanged", 1, r#"{"seats":7}"#),
    ("LicenseRenewed", 1, r#"{"expires_at":null}"#),
    (
        "LicenseSuspended",
        1,
        r#"{"ends_leases":true,"reason":"unpaid"}"#,
    ),
    ("LicenseReinstated", 1, r#"{"reason":null}"#),
    (
        "LicenseRevoked",
        1,
        r#"{"ends_leases":true,"reason":"fraud"}"#,
    ),
    (
        "SeatAcquired",
        1,
        r#"{"expires_at":"2026-12-07T10:01:30.000000Z","generation":4,"hardware_id":"host-1","overage":true,"session_id":"00000000-0000-0000-0000-000000000004","token_id":"00000000-0000-0000-0000-000000000005","user_id":"00000000-0000-0000-0000-000000000005"}"#,
    ),
    (
        "SeatAcquired",
        1,
        r#"{"expires_at":"2026-12-07T10:01:30.000000Z","generation":5,"hardware_id":"host-2","overage":false,"session_id":"00000000-0000-0000-0000-000000000006","user_id":"00000000-0000-0000-0000-000000000002"}"#,
    ),
    (
        "SeatHeartbeat",
        1,
        r#"{"expires_at":"2026-12-07T10:03:00.000000Z","session_id":"00000000-0000-0000-0000-000000000004"}"#,
    ),
    (
        "SeatReleased",
        1,
        r#"{"reason":"admin","session_id":"00000000-0000-0000-0000-000000000004"}"#,
    ),
    (
        "SeatExpired",
        1,
        r#"{"last_heartbeat_at":"2026-12-07T10:01:30.000000Z","session_id":"00000000-0000-0000-0000-000000000006"}"#,
    ),
    (
        "SeatDenied",
        1,
        r#"{"hardware_id":"host-3","reason":"no_seats","user_id":"00000000-0000-0000-0000-000000000002"}"#,
    ),
    (
        "LogPruned",
        1,
        r#"{"archive_file":"p0-s1.jsonl.zst","archive_sha256":"ab","first_position":1,"last_position":100,"partition":0,"segment":1}"#,
    ),
];

/// An event as `/events` and exports serialize it (fields in declaration
/// order), and its canonical bytes (sorted keys) that the hash covers.
const ENVELOPE: &str = r#"{"partition":0,"position":7,"event_id":"00000000-0000-0000-0000-000000000007","stream_id":"license-00000000-0000-0000-0000-000000000003","stream_version":3,"tenant_id":"00000000-0000-0000-0000-000000000001","event_type":"SeatHeartbeat","schema_version":1,"payload":{"expires_at":"2026-12-07T10:03:00.000000Z","session_id":"00000000-0000-0000-0000-000000000004"},"metadata":{"actor":"user-1","correlation_id":null,"request_id":"r-1"},"occurred_at":"2026-12-07T10:01:30.000000Z","recorded_at":"2026-12-07T10:01:30.000001Z","prev_hash":"abababababababababababababababababababababababababababababababab","hash":"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"}"#;
const CANONICAL: &str = r#"{"event_id":"00000000-0000-0000-0000-000000000007","event_type":"SeatHeartbeat","metadata":{"actor":"user-1","correlation_id":null,"request_id":"r-1"},"occurred_at":"2026-12-07T10:01:30.000000Z","partition":0,"payload":{"expires_at":"2026-12-07T10:03:00.000000Z","session_id":"00000000-0000-0000-0000-000000000004"},"position":7,"prev_hash":"abababababababababababababababababababababababababababababababab","recorded_at":"2026-12-07T10:01:30.000001Z","schema_version":1,"stream_id":"license-00000000-0000-0000-0000-000000000003","stream_version":3,"tenant_id":"00000000-0000-0000-0000-000000000001"}"#;

#[test]
fn every_event_type_decodes_from_and_encodes_to_its_stored_bytes() {
    let mut types: Vec<&str> = EVENTS.iter().map(|(t, _, _)| *t).collect();
    types.dedup();
    assert_eq!(
        types,
        Event::TYPES,
        "one example of every event type, in catalogue order"
    );
    for (event_type, schema_version, payload) in EVENTS {
        let stored: serde_json::Value = serde_json::from_str(payload).unwrap();
        let event = Event::decode(event_type, *schema_version, &stored)
            .unwrap_or_else(|e| panic!("{event_type}: {e}"));
        assert_eq!(event.event_type(), *event_type);
        assert_eq!(event.schema_version(), *schema_version);
        assert_eq!(
            serde_json::to_string(&event.payload()).unwrap(),
            *payload,
            "{event_type} encodes to other bytes"
        );
    }
}

#[test]
fn the_envelope_decodes_from_and_encodes_to_its_wire_bytes_and_canonical_bytes() {
    let event: RecordedEvent = serde_json::from_str(ENVELOPE).unwrap();
    assert_eq!(serde_json::to_string(&event).unwrap(), ENVELOPE);
    assert_eq!(
        String::from_utf8(canonical_bytes(&event)).unwrap(),
        CANONICAL
    );
    let decoded = event.event().unwrap();
    assert_eq!(decoded.event_type(), "SeatHeartbeat");
}
