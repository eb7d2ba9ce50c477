//! License-key authentication: `Authorization: License <key>` acquires a
//! seat of the license the key opens when its `client_auth` allows it,
//! and the lease's token then keeps and ends the lease; on both stores.

mod common;

use common::TestApp;
use serde_json::json;

const ACQUIRE: &str = "/api/v1/licenses/acquire";

async fn the_license_key_acquires_where_client_auth_allows_it(app: &TestApp) {
    let owner = app.register("owner@example.com").await;
    let (_, token_only) = app.issue(&owner, json!({"name": "A", "seats": 2})).await;
    let key_only = app
        .post(
            "/api/v1/licenses",
            &owner.token,
            json!({"name": "B", "seats": 2, "client_auth": "license_key"}),
        )
        .await;
    assert_eq!(key_only.status, 201, "{:?}", key_only.body);
    assert_eq!(key_only.body["client_auth"], "license_key");
    let key = key_only.body["key"].as_str().unwrap().to_owned();
    let (_, both) = app
        .issue(
            &owner,
            json!({"name": "C", "seats": 2, "client_auth": "both"}),
        )
        .await;
    let license_id = key_only.body["id"].as_str().unwrap().to_owned();
    let shown = app
        .get(&format!("/api/v1/licenses/{license_id}"), &owner.token)
        .await;
    assert_eq!(shown.body["client_auth"], "license_key", "{:?}", shown.body);

    // The key alone acquires on its license; the lease has no user and
    // its token keeps it.
    let seat = app
        .post_as(
            ACQUIRE,
            &format!("License {key}"),
            json!({"hardware_id": "m1"}),
        )
        .await;
    assert_eq!(seat.status, 201, "{:?}", seat.body);
    assert_eq!(seat.body["license_id"].as_str(), Some(license_id.as_str()));
    let events = app.events().await;
    let acquired = events.last().unwrap();
    assert_eq!(acquired.event_type, "SeatAcquired");
    assert_eq!(acquired.payload["user_id"], uuid::Uuid::nil().to_string());
    assert_eq!(acquired.metadata.actor, None);
    let lease = format!("Lease {}", seat.body["lease_token"].as_str().unwrap());
    let session = json!({"session_id": seat.body["session_id"]});
    let beat = app
        .post_as("/api/v1/licenses/heartbeat", &lease, session.clone())
        .await;
    assert_eq!(beat.status, 200, "{:?}", beat.body);
    // The same machine asks again: its lease back (200), not a second seat.
    let again = app
        .post_as(
            ACQUIRE,
            &format!("License {key}"),
            json!({"hardware_id": "m1"}),
        )
        .await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.body["session_id"], seat.body["session_id"]);
    // The key in the body too, the same: fine; another key there: 422.
    let same = app
        .post_as(
            ACQUIRE,
            &format!("License {key}"),
            json!({"hardware_id": "m2", "license_key": key}),
        )
        .await;
    assert_eq!(same.status, 201, "{:?}", same.body);

    let before = app.events().await.len();
    let other = app
        .post_as(
            ACQUIRE,
            &format!("License {key}"),
            json!({"hardware_id": "m3", "license_key": both}),
        )
        .await;
    assert_eq!(
        (other.status, other.body["code"].as_str()),
        (422, Some("invalid_request"))
    );
    // An API token cannot acquire a license_key-only license.
    let by_token = app.acquire(&owner, &key, "m4").await;
    assert_eq!(
        (by_token.status, by_token.body["code"].as_str()),
        (403, Some("client_auth_not_allowed")),
        "{:?}",
        by_token.body
    );
    // The key cannot acquire a token-only license.
    let refused = app
        .post_as(
            ACQUIRE,
            &format!("License {token_only}"),
            json!({"hardware_id": "m5"}),
        )
        .await;
    assert_eq!(
        (refused.status, refused.body["code"].as_str()),
        (403, Some("client_auth_not_allowed")),
        "{:?}",
        refused.body
    );
    // Unknown and malformed keys answer alike.
    let unknown = format!("{key}x");
    for authorization in [
        format!("License {unknown}"),
        "License ".to_owned(),
        format!("License slk_{}", "A".repeat(300)),
    ] {
        let reply = app
            .post_as(ACQUIRE, &authorization, json!({"hardware_id": "m6"}))
            .await;
        assert_eq!(
            (
                reply.status,
                reply.body["code"].as_str(),
                reply.body["detail"].as_str()
            ),
            (401, Some("unauthorized"), Some("unknown license key")),
            "{authorization}: {:?}",
            reply.body
        );
    }
    // A license key opens nothing but acquire.
    let list = app
        .client
        .get(app.url("/api/v1/licenses"))
        .header("authorization", format!("License {key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status().as_u16(), 401);
    // An API token without a key in the body finds no license.
    let keyless = app
        .post(ACQUIRE, &owner.token, json!({"hardware_id": "m7"}))
        .await;
    assert_eq!(
        (keyless.status, keyless.body["code"].as_str()),
        (404, Some("license_not_found"))
    );
    assert_eq!(app.events().await.len(), before, "nothing recorded");

    // `both` takes either.
    let by_key = app
        .post_as(
            ACQUIRE,
            &format!("License {both}"),
            json!({"hardware_id": "m8"}),
        )
        .await;
    assert_eq!(by_key.status, 201, "{:?}", by_key.body);
    let by_token = app.acquire(&owner, &both, "m9").await;
    assert_eq!(by_token.status, 201, "{:?}", by_token.body);
    // A license issued without a policy is `token`, as before.
    let old = app.acquire(&owner, &token_only, "m10").await;
    assert_eq!(old.status, 201, "{:?}", old.body);
}

#[sqlx::test(migrations = false)]
async fn the_license_key_acquires_where_client_auth_allows_it_on_postgres(pool: sqlx::PgPool) {
    the_license_key_acquires_where_client_auth_allows_it(&TestApp::postgres(pool).await).await;
}

#[tokio::test]
async fn the_license_key_acquires_where_client_auth_allows_it_on_the_embedded_default() {
    the_license_key_acquires_where_client_auth_allows_it(&TestApp::embedded().await).await;
}
