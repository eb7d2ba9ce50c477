//! Lease tokens: acquire answers a per-lease secret, and
//! `Authorization: Lease <lease_token>` heartbeats and releases that lease
//! and nothing else, on both stores.

mod common;

use common::{Reply, TestApp};
use serde_json::json;

fn lease_token(reply: &Reply) -> String {
    reply.body["lease_token"].as_str().unwrap().to_owned()
}

async fn a_lease_token_acts_on_its_lease_only(app: &TestApp) {
    let owner = app.register("owner@example.com").await;
    let (_, key) = app.issue(&owner, json!({"name": "IDE", "seats": 2})).await;
    let first = app.acquire(&owner, &key, "m1").await;
    let second = app.acquire(&owner, &key, "m2").await;
    assert_eq!(
        (first.status, second.status),
        (201, 201),
        "{:?}",
        first.body
    );
    let (token, other_token) = (lease_token(&first), lease_token(&second));
    assert!(token.starts_with("sll_"), "{token}");
    assert_ne!(token, other_token);
    let session = json!({"session_id": first.body["session_id"]});
    let other_session = json!({"session_id": second.body["session_id"]});
    let lease = format!("Lease {token}");

    // It heartbeats its own lease, and the answer carries the same token.
    let beat = app
        .post_as("/api/v1/licenses/heartbeat", &lease, session.clone())
        .await;
    assert_eq!(beat.status, 200, "{:?}", beat.body);
    assert_eq!(lease_token(&beat), token);
    assert_eq!(beat.body["session_id"], first.body["session_id"]);

    // Nothing else: another lease (403), a forged or foreign token (401),
    // and every route that is not its lease's heartbeat or release (401).
    let before = app.events().await.len();
    for route in ["/api/v1/licenses/heartbeat", "/api/v1/licenses/release"] {
        let reply = app.post_as(route, &lease, other_session.clone()).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (403, Some("lease_token_mismatch")),
            "{route}: {:?}",
            reply.body
        );
        assert_eq!(reply.headers["content-type"], "application/problem+json");
    }
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = format!("Lease {}", String::from_utf8(forged).unwrap());
    for authorization in [forged.as_str(), "Lease ", "Lease sll_x", "Lease slt_abc"] {
        let reply = app
            .post_as("/api/v1/licenses/heartbeat", authorization, session.clone())
            .await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (401, Some("unauthorized")),
            "{authorization}: {:?}",
            reply.body
        );
    }
    let acquire = app
        .post_as(
            "/api/v1/licenses/acquire",
            &lease,
            json!({"license_key": key, "hardware_id": "m3"}),
        )
        .await;
    assert_eq!(acquire.status, 401, "{:?}", acquire.body);
    let list = app
        .client
        .get(app.url("/api/v1/licenses"))
        .header("authorization", &lease)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status().as_u16(), 401);
    assert_eq!(app.events().await.len(), before, "nothing recorded");

    // It releases its lease, as the lease's client, and again harmlessly;
    // the lease is then gone for its heartbeats.
    let release = app
        .post_as("/api/v1/licenses/release", &lease, session.clone())
        .await;
    assert_eq!(release.status, 200, "{:?}", release.body);
    let events = app.events().await;
    let released = events.last().unwrap();
    assert_eq!(released.event_type, "SeatReleased");
    assert_eq!(released.payload["reason"], "client");
    assert_eq!(released.payload["session_id"], first.body["session_id"]);
    let again = app
        .post_as("/api/v1/licenses/release", &lease, session.clone())
        .await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    let late = app
        .post_as("/api/v1/licenses/heartbeat", &lease, session)
        .await;
    assert_eq!(late.status, 410, "{:?}", late.body);

    // The other lease's token still works for it; the organization's
    // token does too.
    let other = format!("Lease {other_token}");
    let beat = app
        .post_as("/api/v1/licenses/heartbeat", &other, other_session.clone())
        .await;
    assert_eq!(beat.status, 200, "{:?}", beat.body);
    let beat = app
        .heartbeat(&owner.token, &second.body["session_id"])
        .await;
    assert_eq!(beat.status, 200, "{:?}", beat.body);
}

#[sqlx::test(migrations = false)]
async fn a_lease_token_acts_on_its_lease_only_on_postgres(pool: sqlx::PgPool) {
    a_lease_token_acts_on_its_lease_only(&TestApp::postgres(pool).await).await;
}

#[tokio::test]
async fn a_lease_token_acts_on_its_lease_only_on_the_embedded_default() {
    a_lease_token_acts_on_its_lease_only(&TestApp::embedded().await).await;
}

/// A lease token's heartbeat with an Idempotency-Key replays its answer,
/// and the key is the lease's own: the same key from the organization's
/// token is another command.
async fn idempotency_keys_of_a_lease_token_are_its_own(app: &TestApp) {
    let owner = app.register("owner@example.com").await;
    let (_, key) = app.issue(&owner, json!({"name": "IDE", "seats": 1})).await;
    let seat = app.acquire(&owner, &key, "m1").await;
    let session = json!({"session_id": seat.body["session_id"]});
    let beat = |authorization: String| {
        let session = session.clone();
        async move {
            let response = app
                .client
                .post(app.url("/api/v1/licenses/heartbeat"))
                .header("authorization", authorization)
                .header("idempotency-key", "beat-1")
                .json(&session)
                .send()
                .await
                .unwrap();
            TestApp::reply(response).await
        }
    };
    let lease = format!("Lease {}", lease_token(&seat));
    let first = beat(lease.clone()).await;
    let before = app.events().await.len();
    let replay = beat(lease).await;
    assert_eq!(
        (first.status, replay.status),
        (200, 200),
        "{:?}",
        replay.body
    );
    assert_eq!(first.body, replay.body);
    assert_eq!(app.events().await.len(), before, "a replay records nothing");
    let by_token = beat(format!("Bearer {}", owner.token)).await;
    assert_eq!(by_token.status, 200, "{:?}", by_token.body);
    assert_eq!(app.events().await.len(), before + 1, "another caller's key");
}

#[sqlx::test(migrations = false)]
async fn idempotency_keys_of_a_lease_token_are_its_own_on_postgres(pool: sqlx::PgPool) {
    idempotency_keys_of_a_lease_token_are_its_own(&TestApp::postgres(pool).await).await;
}

#[tokio::test]
async fn idempotency_keys_of_a_lease_token_are_its_own_on_the_embedded_default() {
    idempotency_keys_of_a_lease_token_are_its_own(&TestApp::embedded().await).await;
}
