//! Canonical bytes and the hash chain (docs/design.md §3).
//!
//! Canonical bytes of an event = compact JSON of every envelope field except
//! `hash`, object keys sorted by their UTF-8 bytes at every depth, no
//! whitespace, timestamps in `Timestamp`'s text form, hashes as lowercase
//! hex. `hash = SHA-256(prev_hash || canonical bytes)`; the first event's
//! `prev_hash` is 32 zero bytes. The encoding is written out by hand here
//! rather than relying on `serde_json`'s map order, which a feature of some
//! other crate (`preserve_order`) could change under us.

use crate::envelope::RecordedEvent;
pub use crate::hash::ChainHash;
use ring::digest;
use serde_json::Value;
use std::fmt;

/// Writes `value` as canonical JSON: sorted keys, no whitespace.
pub fn write_canonical_json(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_json_string(out, key);
                out.push(b':');
                write_canonical_json(out, item);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_canonical_json(out, item);
            }
            out.push(b']');
        }
        Value::String(text) => write_json_string(out, text),
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => write_display(out, number),
    }
}

fn write_json_string(out: &mut Vec<u8>, text: &str) {
    // serde_json's string escaping is stable (RFC 8259 minimal escaping).
    if serde_json::to_writer(&mut *out, text).is_err() {
        unreachable!("writing a string into a Vec cannot fail");
    }
}

/// Canonical bytes of `event` without its `hash`.
pub fn canonical_bytes(event: &RecordedEvent) -> Vec<u8> {
    // Keys in sorted order, written directly (no intermediate map).
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"{\"event_id\":\"");
    write_uuid(&mut out, &event.event_id);
    out.extend_from_slice(b"\",\"event_type\":");
    write_json_string(&mut out, &event.event_type);
    out.extend_from_slice(b",\"metadata\":{\"actor\":");
    write_optional_string(&mut out, event.metadata.actor.as_deref());
    out.extend_from_slice(b",\"correlation_id\":");
    write_optional_string(&mut out, event.metadata.correlation_id.as_deref());
    out.extend_from_slice(b",\"request_id\":");
    write_optional_string(&mut out, event.metadata.request_id.as_deref());
    out.extend_from_slice(b"},\"occurred_at\":\"");
    event.occurred_at.write_text(&mut out);
    out.extend_from_slice(b"\",\"partition\":");
    write_display(&mut out, event.partition);
    out.extend_from_slice(b",\"payload\":");
    write_canonical_json(&mut out, &event.payload);
    out.extend_from_slice(b",\"position\":");
    write_display(&mut out, event.position);
    out.extend_from_slice(b",\"prev_hash\":\"");
    let mut hex = [0u8; 64];
    if hex::encode_to_slice(event.prev_hash.as_bytes(), &mut hex).is_ok() {
        out.extend_from_slice(&hex);
    }
    out.extend_from_slice(b"\",\"recorded_at\":\"");
    event.recorded_at.write_text(&mut out);
    out.extend_from_slice(b"\",\"schema_version\":");
    write_display(&mut out, event.schema_version);
    out.extend_from_slice(b",\"stream_id\":");
    write_json_string(&mut out, &event.stream_id);
    out.extend_from_slice(b",\"stream_version\":");
    write_display(&mut out, event.stream_version);
    out.extend_from_slice(b",\"tenant_id\":\"");
    write_uuid(&mut out, &event.org_id.as_uuid());
    out.extend_from_slice(b"\"}");
    out
}

/// Numbers in their `Display` form, written in place (no `String`).
fn write_display(out: &mut Vec<u8>, value: impl fmt::Display) {
    use std::io::Write as _;
    if write!(out, "{value}").is_err() {
        unreachable!("writing into a Vec cannot fail");
    }
}

fn write_uuid(out: &mut Vec<u8>, id: &uuid::Uuid) {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.extend_from_slice(id.hyphenated().encode_lower(&mut text).as_bytes());
}

fn write_optional_string(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => write_json_string(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

/// `SHA-256(prev_hash || canonical_bytes)`.
pub fn chain_hash(prev_hash: &ChainHash, canonical: &[u8]) -> ChainHash {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(prev_hash.as_bytes());
    context.update(canonical);
    let digest = context.finish();
    ChainHash::from_slice(digest.as_ref()).unwrap_or_default()
}

/// The hash `event` must carry given its `prev_hash`.
pub fn expected_hash(event: &RecordedEvent) -> ChainHash {
    chain_hash(&event.prev_hash, &canonical_bytes(event))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("position {position}: expected position {expected} (gap or reorder)")]
    PositionGap { position: i64, expected: i64 },
    #[error("position {position}: prev_hash does not link to the previous event's hash")]
    BrokenLink { position: i64 },
    #[error("position {position}: hash does not match the event's content")]
    HashMismatch { position: i64 },
}

/// Checks that `events` (one partition, ascending) continue the chain from
/// `(after_position, after_hash)`: consecutive positions, each `prev_hash`
/// equal to the previous `hash`, each `hash` equal to its recomputation.
/// Returns the last `(position, hash)`.
pub fn verify_chain<'a>(
    after_position: i64,
    after_hash: ChainHash,
    events: impl IntoIterator<Item = &'a RecordedEvent>,
) -> Result<(i64, ChainHash), ChainError> {
    let mut position = after_position;
    let mut hash = after_hash;
    for event in events {
        if event.position != position + 1 {
            return Err(ChainError::PositionGap {
                position: event.position,
                expected: position + 1,
            });
        }
        if event.prev_hash != hash {
            return Err(ChainError::BrokenLink {
                position: event.position,
            });
        }
        if expected_hash(event) != event.hash {
            return Err(ChainError::HashMismatch {
                position: event.position,
            });
        }
        position = event.position;
        hash = event.hash;
    }
    Ok((position, hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Metadata;
    use crate::time::Timestamp;
    use proptest::prelude::*;
    use uuid::Uuid;

    fn sample(position: i64, prev_hash: ChainHash) -> RecordedEvent {
        let mut event = RecordedEvent {
            partition: 0,
            position,
            event_id: Uuid::from_u128(position as u128),
            stream_id: "license-00000000-0000-0000-0000-000000000001".into(),
            stream_version: position,
            org_id: crate::OrgId::from_u128(9),
            event_type: "SeatReleased".into(),
            schema_version: 1,
            payload: serde_json::json!({"session_id": Uuid::nil(), "reason": "client"}),
            metadata: Metadata {
                actor: Some("user-1".into()),
                ..Metadata::default()
            },
            occurred_at: Timestamp::from_micros_saturating(1_700_000_000_000_000 + position),
            recorded_at: Timestamp::from_micros_saturating(1_700_000_000_000_000 + position),
            prev_hash,
            hash: ChainHash::GENESIS,
        };
        event.hash = expected_hash(&event);
        event
    }

    fn chain(length: i64) -> Vec<RecordedEvent> {
        let mut events = Vec::new();
        let mut prev = ChainHash::GENESIS;
        for position in 1..=length {
            let event = sample(position, prev);
            prev = event.hash;
            events.push(event);
        }
        events
    }

    #[test]
    fn canonical_bytes_sort_keys_and_have_no_whitespace() {
        let event = sample(1, ChainHash::GENESIS);
        let text = String::from_utf8(canonical_bytes(&event)).unwrap();
        assert!(!text.contains(' '));
        assert!(text.contains(
            r#""payload":{"reason":"client","session_id":"00000000-0000-0000-0000-000000000000"}"#
        ));
        // Equal to the generic sorted-key encoding of the same object.
        let mut value = serde_json::to_value(&event).unwrap();
        value.as_object_mut().unwrap().remove("hash");
        let mut generic = Vec::new();
        write_canonical_json(&mut generic, &value);
        assert_eq!(String::from_utf8(generic).unwrap(), text);
    }

    /// The encoding is forever: these bytes and this hash were produced by
    /// the first implementation and must never change.
    #[test]
    fn canonical_bytes_and_hash_are_pinned() {
        let mut event = sample(1, ChainHash([0xab; 32]));
        event.payload = serde_json::json!({
            "b": [1, -2, 3.5, "x\"y\u{1}é", null, true, false],
            "a": {"z": 1, "é": {}, "A": []},
            "session_id": Uuid::nil(),
        });
        event.metadata.request_id = Some("req \\ 1".into());
        // Was -1 µs (1969-12-31T23:59:59.999999Z) until `Timestamp` got its
        // range; now the range's first instant. The new hash was
        // computed outside this code: SHA-256 of 32 bytes 0xab and the text.
        event.occurred_at = Timestamp::MIN;
        event.recorded_at = Timestamp::MAX;
        assert_eq!(
            String::from_utf8(canonical_bytes(&event)).unwrap(),
            GOLDEN_TEXT
        );
        assert_eq!(expected_hash(&event).to_hex(), GOLDEN_HASH);
    }

    const GOLDEN_TEXT: &str = r#"{"event_id":"00000000-0000-0000-0000-000000000001","event_type":"SeatReleased","metadata":{"actor":"user-1","correlation_id":null,"request_id":"req \\ 1"},"occurred_at":"1970-01-01T00:00:00.000000Z","partition":0,"payload":{"a":{"A":[],"z":1,"é":{}},"b":[1,-2,3.5,"x\"y\u0001é",null,true,false],"session_id":"00000000-0000-0000-0000-000000000000"},"position":1,"prev_hash":"abababababababababababababababababababababababababababababababab","recorded_at":"9999-12-31T23:59:59.999999Z","schema_version":1,"stream_id":"license-00000000-0000-0000-0000-000000000001","stream_version":1,"tenant_id":"00000000-0000-0000-0000-000000000009"}"#;
    const GOLDEN_HASH: &str = "d238c0c8714245567ec018fc58f6ad5bae2073e6a58a6fa270e309b16ae5229a";

    #[test]
    fn a_valid_chain_verifies() {
        let events = chain(5);
        let (position, hash) = verify_chain(0, ChainHash::GENESIS, &events).unwrap();
        assert_eq!(position, 5);
        assert_eq!(hash, events[4].hash);
    }

    #[test]
    fn dropped_reordered_or_edited_events_are_detected() {
        let events = chain(5);
        let mut dropped = events.clone();
        dropped.remove(2);
        assert_eq!(
            verify_chain(0, ChainHash::GENESIS, &dropped),
            Err(ChainError::PositionGap {
                position: 4,
                expected: 3
            })
        );
        let mut reordered = events.clone();
        reordered.swap(1, 2);
        assert!(verify_chain(0, ChainHash::GENESIS, &reordered).is_err());
        let mut edited = events.clone();
        edited[3].payload["reason"] = "revoked".into();
        assert_eq!(
            verify_chain(0, ChainHash::GENESIS, &edited),
            Err(ChainError::HashMismatch { position: 4 })
        );
    }

    proptest! {
        #[test]
        fn a_hash_reads_as_the_lowercase_hex_of_its_bytes(bytes in any::<[u8; 32]>()) {
            let hash = ChainHash(bytes);
            prop_assert_eq!(hash.to_hex(), hex::encode(bytes));
            prop_assert_eq!(hash.to_string(), hex::encode(bytes));
            prop_assert_eq!(
                serde_json::to_string(&hash).unwrap(),
                format!("\"{}\"", hex::encode(bytes))
            );
            prop_assert_eq!(ChainHash::from_hex(&hash.to_hex()), Some(hash));
        }

        #[test]
        fn any_change_to_any_field_breaks_the_hash(index in 0usize..5, field in 0usize..6, delta in 1i64..1000) {
            let mut events = chain(5);
            let event = &mut events[index];
            match field {
                0 => event.stream_version += delta,
                1 => event.occurred_at = event.occurred_at.plus_seconds(delta),
                2 => event.org_id = crate::OrgId::from_u128(delta as u128 + 100),
                3 => event.metadata.request_id = Some(delta.to_string()),
                4 => event.payload["extra"] = delta.into(),
                _ => event.schema_version += delta as i32,
            }
            prop_assert_eq!(
                verify_chain(0, ChainHash::GENESIS, &events),
                Err(ChainError::HashMismatch { position: index as i64 + 1 })
            );
        }
    }
}
