use super::*;
use proptest::prelude::*;
use seatledger_schema::testing::{any_entry, chain};
use seatledger_schema::RawRecordedEvent;

proptest! {
    /// Every event type, legacy payloads included: a block decodes to the
    /// events it was made of, with the same canonical bytes and hashes, in
    /// both the parsed and the raw form.
    #[test]
    fn a_block_reads_back_the_events_it_holds(entries in proptest::collection::vec(any_entry(), 1..40)) {
        let events = chain(0, &entries);
        let block = encode(&events).unwrap();
        let decoded: Vec<RecordedEvent> = block.row.decode().unwrap();
        prop_assert_eq!(decoded.len(), events.len());
        for (read, written) in decoded.iter().zip(&events) {
            prop_assert_eq!(canonical_bytes(read), canonical_bytes(written));
            prop_assert_eq!(read.hash, written.hash);
            prop_assert_eq!(read, written);
        }
        let raw: Vec<RawRecordedEvent> = block.row.decode().unwrap();
        for (read, written) in raw.iter().zip(&events) {
            let payload: serde_json::Value = serde_json::from_str(read.payload.get()).unwrap();
            prop_assert_eq!(&payload, &written.payload);
            prop_assert_eq!(read.hash, written.hash);
        }
    }
}

fn sample() -> Vec<RecordedEvent> {
    let entries: Vec<_> = (0..20u128)
        .map(|n| seatledger_schema::testing::Entry {
            event_type: "SeatHeartbeat".into(),
            payload: serde_json::json!({"session_id": Uuid::from_u128(n % 3), "expires_at": "2030-01-01T00:00:00.000000Z"}),
            metadata: Metadata::default(),
            event_id: Uuid::from_u128(1000 + n),
            org: 0,
            stream: (n % 2) as u8,
            occurred_at: Timestamp::from_micros_saturating(n as i64),
            recorded_at: Timestamp::from_micros_saturating(n as i64),
        })
        .collect();
    chain(0, &entries)
}

/// A block whose body was altered (one event's payload changed, then
/// compressed again) is refused as a whole, naming its range.
#[test]
fn an_altered_block_is_refused() {
    let mut block = encode(&sample()).unwrap().row;
    let lines = block.lines().unwrap();
    let altered = String::from_utf8(lines)
        .unwrap()
        .replacen("2030-01-01", "2031-01-01", 1);
    block.body = vec![FORMAT_ZSTD_JSON_LINES];
    block
        .body
        .extend(zstd::bulk::compress(altered.as_bytes(), 3).unwrap());
    let error = block.decode::<serde_json::Value, Metadata>().unwrap_err();
    assert!(
        error.to_string().contains("positions 1..=20")
            && error
                .to_string()
                .contains("do not hash to its recorded last hash"),
        "{error}"
    );
}

/// A block's range must match the events it holds, and its body must be
/// a known format.
#[test]
fn a_block_of_the_wrong_length_or_format_is_refused() {
    let mut block = encode(&sample()).unwrap().row;
    block.last_position = 19;
    let error = block.decode::<serde_json::Value, Metadata>().unwrap_err();
    assert!(
        error.to_string().contains("more events than its range"),
        "{error}"
    );
    block.last_position = 21;
    let error = block.decode::<serde_json::Value, Metadata>().unwrap_err();
    assert!(
        error.to_string().contains("holds 20 events, its range 21"),
        "{error}"
    );
    block.last_position = 20;
    block.body[0] = 9;
    let error = block.decode::<serde_json::Value, Metadata>().unwrap_err();
    assert!(
        error.to_string().contains("unknown body format 9"),
        "{error}"
    );
}

/// Each stream is keyed with the last version the block holds of it,
/// each tenant with its last position, each granted session with its
/// grant's position.
#[test]
fn keys_name_streams_orgs_and_granted_sessions() {
    let events = sample();
    let keys: std::collections::HashMap<i64, i64> =
        encode(&events).unwrap().keys.into_iter().collect();
    assert_eq!(keys[&stream_key(&events[0].stream_id)], 10);
    assert_eq!(keys[&stream_key(&events[1].stream_id)], 10);
    assert_eq!(keys[&org_key(events[0].org_id)], 20);
    assert_eq!(keys.len(), 3, "heartbeats grant no session");
}
