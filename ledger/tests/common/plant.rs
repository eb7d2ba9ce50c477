//! Plants events a bug of an older version could have written:
//! one the log cannot decode, or one in a legacy form. Imported with a
//! valid hash chain, so the only thing wrong with them is their payload.
//! Shared with the replay-tools and API tests and a benchmark (`#[path]`).

use seatledger_ledger::Store;
use seatledger_schema::canonical::expected_hash;
use seatledger_schema::OrgId;
use seatledger_schema::{ChainHash, Metadata, RecordedEvent, Timestamp};
use uuid::Uuid;

/// Appends to `stream_id` of `tenant_id` a `SeatAcquired` whose payload no
/// decoder accepts; returns its position.
pub async fn plant_undecodable_event(store: &Store, org_id: OrgId, stream_id: &str) -> i64 {
    let payload = serde_json::json!({ "session_id": "not a uuid", "generation": -1 });
    let position = plant_event(store, org_id, stream_id, "SeatAcquired", payload).await;
    let planted = store.read_after(0, position - 1, 1).await.unwrap();
    assert!(
        planted[0].event().is_err(),
        "the planted event must not decode"
    );
    position
}

/// Appends `(event_type, payload)` to `stream_id` of `tenant_id` as-is,
/// chained and hashed like any event, bypassing the decider and the edge
/// parsers; returns its position.
pub async fn plant_event(
    store: &Store,
    org_id: OrgId,
    stream_id: &str,
    event_type: &str,
    payload: serde_json::Value,
) -> i64 {
    let (head, prev_hash) = store.head(0).await.unwrap();
    let version = store.read_stream(stream_id).await.unwrap().len() as i64;
    let mut event = RecordedEvent {
        partition: 0,
        position: head + 1,
        event_id: Uuid::now_v7(),
        stream_id: stream_id.to_owned(),
        stream_version: version + 1,
        org_id,
        event_type: event_type.to_owned(),
        schema_version: 1,
        payload,
        metadata: Metadata::default(),
        occurred_at: Timestamp::now(),
        recorded_at: Timestamp::now(),
        prev_hash,
        hash: ChainHash::GENESIS,
    };
    event.hash = expected_hash(&event);
    store.import(0, &[event]).await.unwrap();
    head + 1
}
