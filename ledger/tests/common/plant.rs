//! Plants an event the log cannot decode (issue 8): what a bug of an older
//! version could have written. Imported with a valid hash chain, so the
//! only thing wrong with it is that no decoder reads it. Shared with the
//! replay-tools tests (`#[path]`).

use seatledger_ledger::Store;
use seatledger_schema::canonical::expected_hash;
use seatledger_schema::{ChainHash, Metadata, RecordedEvent, Timestamp};
use uuid::Uuid;

/// Appends to `stream_id` of `tenant_id` a `SeatAcquired` whose payload no
/// decoder accepts; returns its position.
pub async fn plant_undecodable_event(store: &Store, tenant_id: Uuid, stream_id: &str) -> i64 {
    let (head, prev_hash) = store.head(0).await.unwrap();
    let version = store.read_stream(stream_id).await.unwrap().len() as i64;
    let mut event = RecordedEvent {
        partition: 0,
        position: head + 1,
        event_id: Uuid::now_v7(),
        stream_id: stream_id.to_owned(),
        stream_version: version + 1,
        tenant_id,
        event_type: "SeatAcquired".to_owned(),
        schema_version: 1,
        payload: serde_json::json!({ "session_id": "not a uuid", "generation": -1 }),
        metadata: Metadata::default(),
        occurred_at: Timestamp::now(),
        recorded_at: Timestamp::now(),
        prev_hash,
        hash: ChainHash::GENESIS,
    };
    event.hash = expected_hash(&event);
    assert!(event.event().is_err(), "the planted event must not decode");
    store.import(0, &[event]).await.unwrap();
    head + 1
}
