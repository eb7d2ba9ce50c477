//! Client tokens: an admin creates a long-lived token with
//! scope `seats` for a client app; it acquires, heartbeats and releases
//! (recorded with its `token_id`), is refused on every other route, may be
//! limited to some licenses, is listed without its secret, is revoked at
//! once (and on another replica within the NOTIFY bound), and is invisible
//! to other organizations. Seat operations are rate limited per token.

mod common;

use common::{eventually, Org, TestApp};
use serde_json::json;

async fn create_token(app: &TestApp, admin: &Org, body: serde_json::Value) -> common::Reply {
    app.post("/api/v1/tokens", &admin.token, body).await
}

/// The client token as an `Org` (its user id is the token's id).
fn client(owner: &Org, created: &common::Reply) -> Org {
    Org {
        token: created.body["api_token"].as_str().unwrap().to_owned(),
        org_id: owner.org_id.clone(),
        user_id: created.body["id"].as_str().unwrap().to_owned(),
    }
}

#[sqlx::test(migrations = false)]
async fn a_client_token_holds_seats_and_nothing_else(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    let owner = app.register("owner@example.com").await;
    let (ide, ide_key) = app.issue(&owner, json!({"name": "IDE", "seats": 5})).await;
    let (_, cad_key) = app.issue(&owner, json!({"name": "CAD", "seats": 5})).await;
    let created = create_token(
        &app,
        &owner,
        json!({"name": "IDE build 42", "licenses": [ide]}),
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["scope"], "seats");
    assert_eq!(created.body["licenses"], json!([ide]));
    assert_eq!(created.body["created_by"], json!(owner.user_id));
    assert!(created.body["expires_at"].is_null());
    let app_token = client(&owner, &created);

    // Seat operations work, and the lease records the token.
    let seat = app.acquire(&app_token, &ide_key, "machine-1").await;
    assert_eq!(seat.status, 201, "{:?}", seat.body);
    let acquired = app
        .events()
        .await
        .into_iter()
        .rev()
        .find(|e| e.event_type == "SeatAcquired")
        .unwrap();
    assert_eq!(acquired.payload["token_id"], json!(app_token.user_id));
    assert_eq!(acquired.payload["user_id"], json!(app_token.user_id));
    let session = json!({"session_id": seat.body["session_id"]});
    let beat = app
        .post(
            "/api/v1/licenses/heartbeat",
            &app_token.token,
            session.clone(),
        )
        .await;
    assert_eq!(beat.status, 200, "{:?}", beat.body);

    // Limited to its licenses: another license of the org is refused and
    // records nothing.
    let events_before = app.events().await.len();
    let other = app.acquire(&app_token, &cad_key, "machine-1").await;
    assert_eq!(
        (other.status, other.body["code"].as_str()),
        (403, Some("license_not_in_token_scope")),
        "{:?}",
        other.body
    );
    assert_eq!(app.events().await.len(), events_before);

    // Every other authenticated route of the document refuses it with 403.
    let (_, document) = seatledger_api::routes::api();
    let document = serde_json::to_value(&document).unwrap();
    let mut refused = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if operation.get("security").is_none()
                || seatledger_api::auth::SEAT_ROUTES.contains(&path.as_str())
            {
                continue;
            }
            let path = path.replace("{id}", &ide);
            let body = matches!(method.as_str(), "post" | "put" | "patch").then(|| json!({}));
            let reply = app
                .send(&method.to_uppercase(), &path, Some(&app_token.token), body)
                .await;
            assert_eq!(
                (reply.status, reply.body["code"].as_str()),
                (403, Some("forbidden")),
                "{method} {path}: {:?}",
                reply.body
            );
            refused += 1;
        }
    }
    assert!(refused >= 20, "only {refused} routes tried");
    assert_eq!(app.events().await.len(), events_before, "nothing recorded");

    // The lease is the token's: a member cannot end it, the token can.
    let member = app.member(&owner, "mem@example.com").await.token;
    let reply = app
        .post("/api/v1/licenses/release", &member, session.clone())
        .await;
    assert_eq!(reply.body["code"], "not_lease_holder", "{:?}", reply.body);
    let release = app
        .post(
            "/api/v1/licenses/release",
            &app_token.token,
            session.clone(),
        )
        .await;
    assert_eq!(release.status, 200, "{:?}", release.body);
    let released = app.events().await.pop().unwrap();
    assert_eq!(released.payload["reason"], "client");
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn client_tokens_are_listed_revoked_and_kept_to_their_org(pool: sqlx::PgPool) {
    let a = TestApp::postgres(pool.clone()).await;
    let b = TestApp::postgres(pool).await;
    let owner = a.register("owner@example.com").await;
    let (_, key) = a.issue(&owner, json!({"name": "IDE", "seats": 5})).await;
    let created = create_token(&a, &owner, json!({"name": "kiosk", "ttl_s": 86_400})).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert!(created.body["expires_at"].is_string());
    let kiosk = client(&owner, &created);

    // Listed, never with the secret.
    let listed = a.get("/api/v1/tokens", &owner.token).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    assert_eq!(listed.body["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["tokens"][0]["id"], created.body["id"]);
    assert_eq!(listed.body["tokens"][0]["name"], "kiosk");
    assert!(!listed.body.to_string().contains(&kiosk.token));

    // Bad input writes nothing.
    for body in [
        json!({"name": ""}),
        json!({"name": "x", "ttl_s": 5}),
        json!({"name": "x", "licenses": []}),
        json!({"name": "x", "scope": "admin"}),
    ] {
        let reply = create_token(&a, &owner, body.clone()).await;
        assert_eq!(reply.status, 422, "{body}: {:?}", reply.body);
    }
    assert_eq!(
        a.get("/api/v1/tokens", &owner.token).await.body["tokens"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Members may not create or list them.
    let member = a.member(&owner, "mem@example.com").await.token;
    assert_eq!(
        a.post("/api/v1/tokens", &member, json!({"name": "x"}))
            .await
            .status,
        403
    );
    assert_eq!(a.get("/api/v1/tokens", &member).await.status, 403);

    // Tenant isolation: another org sees none and cannot revoke it.
    let stranger = a.register("stranger@example.com").await;
    let theirs = a.get("/api/v1/tokens", &stranger.token).await;
    assert_eq!(theirs.body["tokens"], json!([]));
    let path = format!("/api/v1/tokens/{}", kiosk.user_id);
    let reply = a.send("DELETE", &path, Some(&stranger.token), None).await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (404, Some("token_not_found"))
    );
    assert_eq!(
        a.send(
            "DELETE",
            "/api/v1/tokens/nonsense",
            Some(&owner.token),
            None
        )
        .await
        .status,
        404
    );

    // Logging the owner out everywhere does not revoke the app's token.
    let all = a
        .send("POST", "/api/v1/auth/logout-all", Some(&owner.token), None)
        .await;
    assert_eq!(all.status, 200);
    assert_eq!(
        b.acquire(&kiosk, &key, "kiosk-1").await.status,
        201,
        "replica B caches it"
    );
    let owner = Org {
        token: a
            .send(
                "POST",
                "/api/v1/auth/login",
                None,
                Some(json!({"email": "owner@example.com", "password": "correct horse battery"})),
            )
            .await
            .body["api_token"]
            .as_str()
            .unwrap()
            .to_owned(),
        ..owner
    };

    // Revoked: refused at once here, and on replica B within the bound.
    let reply = a.send("DELETE", &path, Some(&owner.token), None).await;
    assert_eq!(reply.status, 204, "{:?}", reply.body);
    let refused = a.acquire(&kiosk, &key, "kiosk-2").await;
    assert_eq!(refused.status, 401, "{:?}", refused.body);
    eventually("replica B refuses the revoked client token", 5, || async {
        b.acquire(&kiosk, &key, "kiosk-3").await.status == 401
    })
    .await;
    assert_eq!(
        a.get("/api/v1/tokens", &owner.token).await.body["tokens"],
        json!([])
    );
    assert_eq!(
        a.send("DELETE", &path, Some(&owner.token), None)
            .await
            .status,
        404
    );
    a.stop().await;
    b.stop().await;
}

/// `--rate-limit-seat-ops-per-s`: beyond the token's quota a seat
/// operation is 429 with Retry-After and records nothing; another token
/// is unaffected.
#[sqlx::test(migrations = false)]
async fn seat_operations_are_rate_limited_per_token(pool: sqlx::PgPool) {
    let args = seatledger_api::config::ServeArgs {
        rate_limit_seat_ops_per_s: 3,
        ..common::args(String::new())
    };
    let app = TestApp::postgres_with(pool, args).await;
    let owner = app.register("owner@example.com").await;
    let (_, key) = app.issue(&owner, json!({"name": "IDE", "seats": 50})).await;
    let created = create_token(&app, &owner, json!({"name": "app"})).await;
    let app_token = client(&owner, &created);
    let mut statuses = Vec::new();
    let mut limited = None;
    for n in 0..10 {
        let reply = app.acquire(&app_token, &key, &format!("m-{n}")).await;
        statuses.push(reply.status);
        if reply.status == 429 {
            limited = Some(reply);
            break;
        }
    }
    let limited = limited.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    assert_eq!(limited.body["code"], "too_many_requests");
    assert!(limited.headers.contains_key("retry-after"));
    let granted = app
        .event_types()
        .await
        .iter()
        .filter(|t| *t == "SeatAcquired")
        .count();
    assert_eq!(
        granted,
        statuses.len() - 1,
        "the refused acquire recorded nothing"
    );
    // The owner's own token has its own quota.
    assert_eq!(app.acquire(&owner, &key, "owner-laptop").await.status, 201);
    app.stop().await;
}
