//! The HTTP API end to end: the real server in-process on port 0 against a
//! fresh PostgreSQL database per test (and the embedded default where
//! marked), talked to over HTTP.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{eventually, Org, TestApp};
use serde_json::{json, Value};

fn session_of(reply: &common::Reply) -> String {
    reply.body["session_id"].as_str().unwrap().to_owned()
}

/// register → login → issue (3 seats) → acquire on 3 machines → 4th denied
/// → release one → 4th granted → heartbeat → release.
async fn seed_flow(app: &TestApp) {
    let org = app.register("ada@example.com").await;
    let login = app
        .send(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "ADA@example.com", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(login.status, 200);
    let token = login.body["api_token"].as_str().unwrap().to_owned();
    assert_ne!(token, org.token, "login issues a new token");
    let org = Org { token, ..org };
    let wrong = app
        .send(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "ada@example.com", "password": "wrong password"})),
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.body["code"].as_str()),
        (401, Some("invalid_credentials"))
    );

    let (license_id, key) = app.issue(&org, json!({"name": "IDE", "seats": 3})).await;
    let mut sessions = Vec::new();
    for machine in ["m1", "m2", "m3"] {
        let reply = app.acquire(&org, &key, machine).await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        assert_eq!(reply.body["license_id"], license_id);
        assert_eq!(reply.body["seats_total"], 3);
        assert_eq!(reply.body["heartbeat_interval_s"], 120);
        assert!(reply.body["signed_license"]["signature"].is_string());
        sessions.push(session_of(&reply));
    }
    let denied = app.acquire(&org, &key, "m4").await;
    assert_eq!(
        (denied.status, denied.body["code"].as_str()),
        (409, Some("no_seats_available"))
    );
    assert_eq!(denied.headers["content-type"], "application/problem+json");
    // The same user on the same machine gets its own lease back: 200, same session.
    let again = app.acquire(&org, &key, "m2").await;
    assert_eq!(
        (again.status, session_of(&again)),
        (200, sessions[1].clone())
    );

    let listed = app
        .get(&format!("/api/v1/licenses/{license_id}"), &org.token)
        .await;
    assert_eq!(listed.body["seats_used"], 3);

    let released = app
        .post(
            "/api/v1/licenses/release",
            &org.token,
            json!({"session_id": sessions[0]}),
        )
        .await;
    assert_eq!(
        (released.status, released.body["released"].as_bool()),
        (200, Some(true))
    );
    let fourth = app.acquire(&org, &key, "m4").await;
    assert_eq!(fourth.status, 201);
    assert_eq!(fourth.body["generation"], 4);
    let beat = app.heartbeat(&org.token, session_of(&fourth)).await;
    assert_eq!(beat.status, 200, "{:?}", beat.body);
    assert_eq!(beat.body["session_id"], session_of(&fourth));
    let done = app
        .post(
            "/api/v1/licenses/release",
            &org.token,
            json!({"session_id": session_of(&fourth)}),
        )
        .await;
    assert_eq!(done.status, 200);

    let feed = app.get("/api/v1/events?limit=1000", &org.token).await;
    assert_eq!(feed.status, 200);
    let types: Vec<&str> = feed.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "OrganizationRegistered",
            "UserRegistered",
            "LicenseIssued",
            "SeatAcquired",
            "SeatAcquired",
            "SeatAcquired",
            "SeatDenied",
            "SeatHeartbeat",
            "SeatReleased",
            "SeatAcquired",
            "SeatHeartbeat",
            "SeatReleased",
        ]
    );
    let positions: Vec<i64> = feed.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|p| p[0] < p[1]));
    assert_eq!(feed.body["next_after"], *positions.last().unwrap());
}

#[sqlx::test(migrations = false)]
async fn the_seed_flow_works_on_postgres(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    seed_flow(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn the_seed_flow_works_on_the_embedded_default() {
    let app = TestApp::embedded().await;
    seed_flow(&app).await;
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn suspended_revoked_and_expired_licenses_grant_nothing(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    let org = app.register("ops@example.com").await;
    let (license_id, key) = app.issue(&org, json!({"name": "CLI", "seats": 2})).await;
    let held = app.acquire(&org, &key, "m1").await;
    assert_eq!(held.status, 201);

    let suspended = app
        .post(
            &format!("/api/v1/licenses/{license_id}/suspend"),
            &org.token,
            json!({"reason": "unpaid"}),
        )
        .await;
    assert_eq!(
        (suspended.status, suspended.body["status"].as_str()),
        (200, Some("suspended"))
    );
    assert_eq!(
        suspended.body["seats_used"], 0,
        "suspending released the lease"
    );
    let sessions = app
        .get(
            &format!("/api/v1/licenses/{license_id}/sessions"),
            &org.token,
        )
        .await;
    assert_eq!(sessions.body, json!([]));
    let beat = app.heartbeat(&org.token, session_of(&held)).await;
    assert_eq!(
        (beat.status, beat.body["code"].as_str()),
        (410, Some("session_expired"))
    );
    let denied = app.acquire(&org, &key, "m2").await;
    assert_eq!(
        (denied.status, denied.body["code"].as_str()),
        (403, Some("license_suspended"))
    );

    // Reinstating without a body is allowed; then it grants again.
    let reinstated = app
        .send(
            "POST",
            &format!("/api/v1/licenses/{license_id}/reinstate/"),
            Some(&org.token),
            None,
        )
        .await;
    assert_eq!(reinstated.status, 200, "{:?}", reinstated.body);
    assert_eq!(app.acquire(&org, &key, "m2").await.status, 201);
    let again = app
        .send(
            "POST",
            &format!("/api/v1/licenses/{license_id}/reinstate"),
            Some(&org.token),
            None,
        )
        .await;
    assert_eq!(
        (again.status, again.body["code"].as_str()),
        (409, Some("license_not_suspended"))
    );

    let revoked = app
        .send(
            "POST",
            &format!("/api/v1/licenses/{license_id}/revoke"),
            Some(&org.token),
            None,
        )
        .await;
    assert_eq!(
        (revoked.status, revoked.body["status"].as_str()),
        (200, Some("revoked"))
    );
    let denied = app.acquire(&org, &key, "m3").await;
    assert_eq!(
        (denied.status, denied.body["code"].as_str()),
        (403, Some("license_revoked"))
    );
    let patch = app
        .send(
            "PATCH",
            &format!("/api/v1/licenses/{license_id}"),
            Some(&org.token),
            Some(json!({"seats": 9})),
        )
        .await;
    assert_eq!(
        (patch.status, patch.body["code"].as_str()),
        (403, Some("license_revoked"))
    );

    // Expiry: moving the clock past expires_at, then renewing by PATCH.
    let expires_at = app.clock_now().plus_seconds(60).to_string();
    let (expiring, expiring_key) = app
        .issue(
            &org,
            json!({"name": "Trial", "seats": 1, "expires_at": expires_at}),
        )
        .await;
    app.clock.advance_seconds(61);
    let denied = app.acquire(&org, &expiring_key, "m1").await;
    assert_eq!(
        (denied.status, denied.body["code"].as_str()),
        (403, Some("license_expired"))
    );
    let renewed = app
        .send(
            "PATCH",
            &format!("/api/v1/licenses/{expiring}"),
            Some(&org.token),
            Some(json!({"expires_at": null})),
        )
        .await;
    assert_eq!(
        (renewed.status, renewed.body["expires_at"].clone()),
        (200, Value::Null)
    );
    assert_eq!(app.acquire(&org, &expiring_key, "m1").await.status, 201);

    let denials: Vec<String> = app
        .events()
        .await
        .into_iter()
        .filter(|e| e.event_type == "SeatDenied")
        .map(|e| e.payload["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(denials, ["suspended", "revoked", "expired"]);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn heartbeat_after_expiry_is_gone_and_release_twice_is_ok_once_recorded(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    let org = app.register("ttl@example.com").await;
    let (_, key) = app
        .issue(
            &org,
            json!({"name": "IDE", "seats": 1, "heartbeat_ttl_s": 30}),
        )
        .await;
    let first = app.acquire(&org, &key, "m1").await;
    app.clock.advance_seconds(31);
    let beat = app.heartbeat(&org.token, session_of(&first)).await;
    assert_eq!(
        (beat.status, beat.body["code"].as_str()),
        (410, Some("session_expired"))
    );
    // The stale lease does not hold the only seat.
    let second = app.acquire(&org, &key, "m2").await;
    assert_eq!(second.status, 201);
    let session = session_of(&second);
    for _ in 0..2 {
        let reply = app
            .post(
                "/api/v1/licenses/release",
                &org.token,
                json!({"session_id": session}),
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    // Release forgets the session's cached license; its late heartbeat
    // finds the session in the log and is told it is gone, not unknown.
    let lookups = app.metric("seatledger_session_log_lookups_total").await;
    let late = app.heartbeat(&org.token, session).await;
    assert_eq!(
        (late.status, late.body["code"].as_str()),
        (410, Some("session_expired"))
    );
    assert_eq!(
        app.metric("seatledger_session_log_lookups_total").await,
        lookups + 1,
        "the released session was looked up in the log"
    );
    let releases = app
        .event_types()
        .await
        .iter()
        .filter(|t| *t == "SeatReleased")
        .count();
    assert_eq!(releases, 1);
    let unknown = app
        .post(
            "/api/v1/licenses/release",
            &org.token,
            json!({"session_id": uuid::Uuid::now_v7()}),
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.body["code"].as_str()),
        (404, Some("session_not_found"))
    );
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn signed_licenses_verify_offline_and_fail_after_any_change(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    let org = app.register("sig@example.com").await;
    let (license_id, key) = app.issue(&org, json!({"name": "IDE", "seats": 2})).await;
    let seat = app.acquire(&org, &key, "laptop-7").await;
    let keys = app.send("GET", "/api/v1/keys", None, None).await;
    let signed = &seat.body["signed_license"];
    let listed = keys.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == signed["key_id"])
        .expect("key listed");
    assert_eq!(listed["algorithm"], "Ed25519");
    let public_key = URL_SAFE_NO_PAD
        .decode(listed["public_key"].as_str().unwrap())
        .unwrap();
    let payload = URL_SAFE_NO_PAD
        .decode(signed["payload"].as_str().unwrap())
        .unwrap();
    let signature = URL_SAFE_NO_PAD
        .decode(signed["signature"].as_str().unwrap())
        .unwrap();
    let verifier = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public_key);
    verifier
        .verify(&payload, &signature)
        .expect("verifies offline");

    let claims: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(claims["license_id"], license_id);
    assert_eq!(claims["session_id"], seat.body["session_id"]);
    assert_eq!(claims["org_id"], org.org_id);
    assert_eq!(claims["user_id"], org.user_id);
    assert_eq!(claims["hardware_id"], "laptop-7");
    assert_eq!(claims["seats_total"], 2);
    assert_eq!(claims["expires_at"], seat.body["expires_at"]);
    for index in 0..payload.len() {
        let mut tampered = payload.clone();
        tampered[index] ^= 0x01;
        assert!(
            verifier.verify(&tampered, &signature).is_err(),
            "byte {index} changed and it still verified"
        );
    }
    // Heartbeats carry a fresh token with the new expiry.
    app.clock.advance_seconds(10);
    let beat = app.heartbeat(&org.token, &seat.body["session_id"]).await;
    let payload = URL_SAFE_NO_PAD
        .decode(beat.body["signed_license"]["payload"].as_str().unwrap())
        .unwrap();
    let signature = URL_SAFE_NO_PAD
        .decode(beat.body["signed_license"]["signature"].as_str().unwrap())
        .unwrap();
    verifier.verify(&payload, &signature).unwrap();
    let claims: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(claims["expires_at"], beat.body["expires_at"]);
    assert_ne!(beat.body["expires_at"], seat.body["expires_at"]);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn another_org_gets_404_for_everything_of_org_a_and_never_sees_its_events(
    pool: sqlx::PgPool,
) {
    let app = TestApp::postgres(pool).await;
    let a = app.register("a@example.com").await;
    let b = app.register("b@example.com").await;
    let (license, key) = app.issue(&a, json!({"name": "IDE", "seats": 5})).await;
    let session = session_of(&app.acquire(&a, &key, "m1").await);
    let before = app.events().await.len();

    let attempts: Vec<(&str, String, Option<Value>, &str)> = vec![
        (
            "GET",
            format!("/api/v1/licenses/{license}"),
            None,
            "license_not_found",
        ),
        (
            "PATCH",
            format!("/api/v1/licenses/{license}"),
            Some(json!({"seats": 1})),
            "license_not_found",
        ),
        (
            "POST",
            format!("/api/v1/licenses/{license}/suspend"),
            None,
            "license_not_found",
        ),
        (
            "POST",
            format!("/api/v1/licenses/{license}/reinstate"),
            None,
            "license_not_found",
        ),
        (
            "POST",
            format!("/api/v1/licenses/{license}/revoke"),
            None,
            "license_not_found",
        ),
        (
            "GET",
            format!("/api/v1/licenses/{license}/sessions"),
            None,
            "license_not_found",
        ),
        (
            "POST",
            "/api/v1/licenses/acquire".into(),
            Some(json!({"license_key": key, "hardware_id": "x"})),
            "license_not_found",
        ),
        (
            "POST",
            "/api/v1/licenses/heartbeat".into(),
            Some(json!({"session_id": session})),
            "session_not_found",
        ),
        (
            "POST",
            "/api/v1/licenses/release".into(),
            Some(json!({"session_id": session})),
            "session_not_found",
        ),
    ];
    for (method, path, body, code) in attempts {
        let reply = app.send(method, &path, Some(&b.token), body).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (404, Some(code)),
            "{method} {path}"
        );
    }
    assert_eq!(
        app.events().await.len(),
        before,
        "nothing was written for org B's attempts"
    );
    let listed = app.get("/api/v1/licenses", &b.token).await;
    assert_eq!(listed.body, json!([]));
    let feed = app.get("/api/v1/events?limit=1000", &b.token).await;
    let orgs: Vec<&str> = feed.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["tenant_id"].as_str().unwrap())
        .collect();
    assert!(
        !orgs.is_empty() && orgs.iter().all(|t| *t == b.org_id),
        "{orgs:?}"
    );
    // A's session is untouched.
    let beat = app.heartbeat(&a.token, session).await;
    assert_eq!(beat.status, 200);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn every_bad_input_class_gets_its_status_and_code_and_writes_nothing(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    let org = app.register("bad@example.com").await;
    let (license, key) = app.issue(&org, json!({"name": "IDE", "seats": 2})).await;
    let before = app.events().await.len();
    let raw = |path: &str, content_type: Option<&str>, body: Vec<u8>| {
        let mut request = app
            .client
            .post(app.url(path))
            .bearer_auth(&org.token)
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request
    };
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            raw(
                "/api/v1/licenses/acquire",
                Some("application/json"),
                b"{\"license_key\": ".to_vec(),
            ),
            400,
            "malformed_json",
        ),
        (
            raw(
                "/api/v1/licenses/acquire",
                Some("application/json"),
                b"[1,2".to_vec(),
            ),
            400,
            "malformed_json",
        ),
        (
            raw(
                "/api/v1/licenses/acquire",
                Some("application/json"),
                json!({"license_key": key, "hardware_id": 7})
                    .to_string()
                    .into(),
            ),
            422,
            "invalid_request",
        ),
        (
            raw(
                "/api/v1/licenses/acquire",
                Some("application/json"),
                json!({"license_key": key, "hardware_id": "m", "admin": true})
                    .to_string()
                    .into(),
            ),
            422,
            "invalid_request",
        ),
        (
            raw(
                "/api/v1/licenses/acquire",
                Some("application/json"),
                json!({"license_key": key}).to_string().into(),
            ),
            422,
            "invalid_request",
        ),
        (
            raw(
                "/api/v1/licenses/acquire",
                Some("application/json"),
                json!({"license_key": key, "hardware_id": "  "})
                    .to_string()
                    .into(),
            ),
            422,
            "invalid_request",
        ),
        (
            raw(
                "/api/v1/licenses",
                Some("application/json"),
                json!({"name": "X", "seats": 0}).to_string().into(),
            ),
            422,
            "invalid_request",
        ),
        (
            raw(
                "/api/v1/licenses",
                Some("application/json"),
                json!({"name": "X", "seats": -1}).to_string().into(),
            ),
            422,
            "invalid_request",
        ),
        (
            raw(
                "/api/v1/licenses",
                Some("application/json"),
                json!({"name": "X", "seats": 1, "heartbeat_ttl_s": 5})
                    .to_string()
                    .into(),
            ),
            422,
            "invalid_request",
        ),
        (
            raw(
                "/api/v1/licenses",
                Some("application/json"),
                json!({"name": "X", "seats": 1, "expires_at": "tomorrow"})
                    .to_string()
                    .into(),
            ),
            422,
            "invalid_request",
        ),
        (
            raw(
                "/api/v1/licenses/acquire",
                Some("text/plain"),
                b"hello".to_vec(),
            ),
            415,
            "unsupported_media_type",
        ),
        (
            raw(
                "/api/v1/licenses/acquire",
                None,
                json!({"license_key": key, "hardware_id": "m"})
                    .to_string()
                    .into(),
            ),
            415,
            "unsupported_media_type",
        ),
        (
            raw(
                "/api/v1/licenses/acquire",
                Some("application/json"),
                format!("{{\"license_key\": \"{}\"}}", "x".repeat(70_000)).into(),
            ),
            413,
            "payload_too_large",
        ),
        (
            app.client
                .post(app.url("/api/v1/licenses/acquire"))
                .json(&json!({"license_key": key, "hardware_id": "m"})),
            401,
            "unauthorized",
        ),
        (
            app.client
                .post(app.url("/api/v1/licenses/acquire"))
                .bearer_auth("slt_nope")
                .json(&json!({"license_key": key, "hardware_id": "m"})),
            401,
            "unauthorized",
        ),
        (
            app.client
                .get(app.url("/api/v1/nowhere"))
                .bearer_auth(&org.token),
            404,
            "not_found",
        ),
        (
            app.client
                .delete(app.url("/api/v1/licenses/acquire"))
                .bearer_auth(&org.token),
            405,
            "method_not_allowed",
        ),
        (
            app.client
                .get(app.url("/api/v1/licenses/not-a-uuid"))
                .bearer_auth(&org.token),
            404,
            "license_not_found",
        ),
        (
            app.client
                .get(app.url("/api/v1/events?limit=5000"))
                .bearer_auth(&org.token),
            400,
            "invalid_query",
        ),
        (
            app.client
                .get(app.url("/api/v1/events?after=abc"))
                .bearer_auth(&org.token),
            400,
            "invalid_query",
        ),
        (
            raw(
                "/api/v1/licenses/acquire",
                Some("application/json"),
                json!({"license_key": key, "hardware_id": "m"})
                    .to_string()
                    .into(),
            )
            .header("idempotency-key", ""),
            400,
            "invalid_idempotency_key",
        ),
        (
            raw(
                &format!("/api/v1/licenses/{license}/suspend"),
                Some("application/json"),
                json!({"reason": 5}).to_string().into(),
            ),
            422,
            "invalid_request",
        ),
    ];
    for (index, (request, status, code)) in cases.into_iter().enumerate() {
        let reply = TestApp::reply(request.send().await.unwrap()).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (status, Some(code)),
            "case {index}: {:?}",
            reply.body
        );
        assert_eq!(
            reply.headers["content-type"], "application/problem+json",
            "case {index}"
        );
        for field in ["type", "title", "status", "detail", "code"] {
            assert!(!reply.body[field].is_null(), "case {index} lacks {field}");
        }
    }
    assert_eq!(
        app.events().await.len(),
        before,
        "no bad request wrote an event"
    );
    // A member may not administer.
    let member = app
        .post("/api/v1/users", &org.token, json!({"email": "m@example.com", "password": "member password", "full_name": "Mem Ber"}))
        .await;
    assert_eq!(
        (member.status, member.body["role"].as_str()),
        (201, Some("member"))
    );
    let member_login = app
        .send(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "m@example.com", "password": "member password"})),
        )
        .await;
    let member_token = member_login.body["api_token"].as_str().unwrap();
    let forbidden = app
        .post(
            "/api/v1/licenses",
            member_token,
            json!({"name": "X", "seats": 1}),
        )
        .await;
    assert_eq!(
        (forbidden.status, forbidden.body["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(
        app.acquire(
            &Org {
                token: member_token.into(),
                org_id: String::new(),
                user_id: String::new()
            },
            &key,
            "mm"
        )
        .await
        .status,
        201
    );
    let duplicate = app.send("POST", "/api/v1/auth/register", None, Some(json!({
        "email": "bad@example.com", "password": "another password", "full_name": "X", "company_name": "Y"
    }))).await;
    assert_eq!(
        (duplicate.status, duplicate.body["code"].as_str()),
        (409, Some("email_taken"))
    );
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_write_answers_503_with_retry_after_when_the_store_is_gone(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool.clone()).await;
    let org = app.register("down@example.com").await;
    let (_, key) = app.issue(&org, json!({"name": "IDE", "seats": 2})).await;
    app.acquire(&org, &key, "m0").await; // warms the token and key caches
                                         // The database goes away for every connection: the shared pool's,
                                         // the appender's own and the health checks'.
    let outage = common::take_database_away(&pool).await;
    let reply = app.acquire(&org, &key, "m1").await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (503, Some("store_unavailable"))
    );
    assert_eq!(reply.headers["retry-after"], "2");
    let health = app.send("GET", "/api/v1/health", None, None).await;
    assert_eq!(health.status, 200, "the server keeps serving");
    common::give_database_back(outage).await;
}

#[sqlx::test(migrations = false)]
async fn a_request_stuck_behind_the_store_answers_503_request_timeout(pool: sqlx::PgPool) {
    // Shorter than the appender's 5 s wait for the partition lock.
    let app = TestApp::postgres_with_request_timeout(pool.clone(), 2.0).await;
    let org = app.register("stuck@example.com").await;
    let (_, key) = app.issue(&org, json!({"name": "IDE", "seats": 2})).await;
    // Another writer holds the partition lock and does not let go.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(seatledger_ledger::store::partition_lock_key(0))
        .execute(&mut *holder)
        .await
        .unwrap();
    let acquire = || {
        app.client
            .post(app.url("/api/v1/licenses/acquire"))
            .bearer_auth(&org.token)
            .header("idempotency-key", "stuck-1")
            .json(&json!({"license_key": key, "hardware_id": "m1"}))
            .send()
    };
    let reply = TestApp::reply(acquire().await.unwrap()).await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (503, Some("request_timeout"))
    );
    assert_eq!(reply.headers["retry-after"], "2");
    assert_eq!(
        reply.headers["content-type"], "application/problem+json",
        "{:?}",
        reply.body
    );
    // The holder lets go; the write that was cut short commits after all,
    // and the retry with its Idempotency-Key answers what it did.
    holder.rollback().await.unwrap();
    let retried = TestApp::reply(acquire().await.unwrap()).await;
    assert_eq!(retried.status, 201, "{:?}", retried.body);
    let acquired = app
        .event_types()
        .await
        .iter()
        .filter(|t| *t == "SeatAcquired")
        .count();
    assert_eq!(acquired, 1, "one seat, granted once");
}

#[sqlx::test(migrations = false)]
async fn idempotency_keys_replay_the_original_answer_and_refuse_reuse(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    let org = app.register("idem@example.com").await;
    let issue = |key: &str, body: Value| {
        app.client
            .post(app.url("/api/v1/licenses"))
            .bearer_auth(&org.token)
            .header("idempotency-key", key)
            .json(&body)
    };
    let first = TestApp::reply(
        issue("lic-1", json!({"name": "IDE", "seats": 2}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(first.status, 201);
    let before = app.events().await.len();
    let again = TestApp::reply(
        issue("lic-1", json!({"name": "IDE", "seats": 2}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (again.status, &again.body),
        (201, &first.body),
        "same status and body, including the key"
    );
    assert_eq!(app.events().await.len(), before);
    let reused = TestApp::reply(
        issue("lic-1", json!({"name": "IDE", "seats": 3}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (reused.status, reused.body["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    assert_eq!(app.events().await.len(), before);

    let key = first.body["key"].as_str().unwrap();
    let acquire = |idempotency: &str, machine: &str| {
        app.client
            .post(app.url("/api/v1/licenses/acquire"))
            .bearer_auth(&org.token)
            .header("idempotency-key", idempotency)
            .json(&json!({"license_key": key, "hardware_id": machine}))
    };
    let seat = TestApp::reply(acquire("acq-1", "m1").send().await.unwrap()).await;
    assert_eq!(seat.status, 201);
    let before = app.events().await.len();
    app.clock.advance_seconds(5);
    let replay = TestApp::reply(acquire("acq-1", "m1").send().await.unwrap()).await;
    assert_eq!(
        (replay.status, &replay.body),
        (201, &seat.body),
        "a retry is answered from the record, not re-decided"
    );
    assert_eq!(app.events().await.len(), before);
    let reused = TestApp::reply(acquire("acq-1", "m2").send().await.unwrap()).await;
    assert_eq!(
        (reused.status, reused.body["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    assert_eq!(app.events().await.len(), before);

    let release = |idempotency: &str| {
        app.client
            .post(app.url("/api/v1/licenses/release"))
            .bearer_auth(&org.token)
            .header("idempotency-key", idempotency)
            .json(&json!({"session_id": seat.body["session_id"]}))
    };
    assert_eq!(
        TestApp::reply(release("rel-1").send().await.unwrap())
            .await
            .status,
        200
    );
    assert_eq!(
        TestApp::reply(release("rel-1").send().await.unwrap())
            .await
            .status,
        200
    );
    assert_eq!(
        app.event_types()
            .await
            .iter()
            .filter(|t| *t == "SeatReleased")
            .count(),
        1
    );
    app.stop().await;
}

/// The router and the document come from one list (`routes::api`); this
/// walks the document and checks the router serves every operation in it,
/// and that the router serves nothing undocumented among the API's paths.
#[tokio::test]
async fn every_route_of_the_router_is_in_the_openapi_document() {
    let app = TestApp::embedded().await;
    let document = app.send("GET", "/openapi.json", None, None).await;
    assert_eq!(document.status, 200);
    assert_eq!(
        document.body["openapi"].as_str().map(|v| &v[..3]),
        Some("3.1")
    );
    let paths = document.body["paths"].as_object().unwrap();
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in ["get", "post", "patch", "put", "delete"] {
            if let Some(operation) = item.get(method) {
                let responses = operation["responses"].as_object().expect("responses");
                assert!(!responses.is_empty(), "{method} {path} has no responses");
                if operation.get("security").is_some() {
                    assert!(
                        responses.contains_key("401"),
                        "{method} {path} needs a token but does not document 401"
                    );
                }
                if operation.get("requestBody").is_some() {
                    for status in ["400", "413", "415", "422"] {
                        assert!(
                            responses.contains_key(status),
                            "{method} {path} takes JSON but does not document {status}"
                        );
                    }
                }
                if path.starts_with("/api/v1/licenses")
                    || path.starts_with("/api/v1/users")
                    || path.starts_with("/api/v1/auth")
                {
                    assert!(
                        responses.contains_key("503"),
                        "{method} {path} reaches the store but does not document 503"
                    );
                    let unavailable = responses["503"]["description"].as_str().unwrap_or("");
                    assert!(
                        unavailable.contains("request_timeout"),
                        "{method} {path} documents 503 without `request_timeout`: {unavailable}"
                    );
                }
                operations.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    let (_, from_code) = seatledger_api::routes::api();
    assert_eq!(from_code.paths.paths.len(), paths.len());
    let expected = [
        ("GET", "/api/v1/health"),
        ("GET", "/api/v1/health/ready"),
        ("POST", "/api/v1/auth/register"),
        ("POST", "/api/v1/auth/login"),
        ("POST", "/api/v1/auth/logout"),
        ("POST", "/api/v1/auth/logout-all"),
        ("POST", "/api/v1/auth/refresh"),
        ("GET", "/api/v1/users/me"),
        ("PUT", "/api/v1/users/me/password"),
        ("POST", "/api/v1/users"),
        ("GET", "/api/v1/users"),
        ("PATCH", "/api/v1/users/{id}"),
        ("DELETE", "/api/v1/users/{id}"),
        ("POST", "/api/v1/licenses"),
        ("GET", "/api/v1/licenses"),
        ("GET", "/api/v1/licenses/{id}"),
        ("PATCH", "/api/v1/licenses/{id}"),
        ("POST", "/api/v1/licenses/{id}/suspend"),
        ("POST", "/api/v1/licenses/{id}/reinstate"),
        ("POST", "/api/v1/licenses/{id}/revoke"),
        ("GET", "/api/v1/licenses/{id}/sessions"),
        ("POST", "/api/v1/licenses/acquire"),
        ("POST", "/api/v1/licenses/heartbeat"),
        ("POST", "/api/v1/licenses/release"),
        ("POST", "/api/v1/tokens"),
        ("GET", "/api/v1/tokens"),
        ("DELETE", "/api/v1/tokens/{id}"),
        ("GET", "/api/v1/events"),
        ("GET", "/api/v1/usage"),
        ("GET", "/api/v1/keys"),
        ("GET", "/api/v1/checkpoints"),
        ("GET", "/api/v1/checkpoints/latest"),
        ("GET", "/openapi.json"),
        ("GET", "/metrics"),
    ];
    let mut documented: Vec<(String, String)> = operations.clone();
    documented.sort();
    let mut wanted: Vec<(String, String)> = expected
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    wanted.sort();
    assert_eq!(
        documented, wanted,
        "docs/design.md §5 is exactly what is documented"
    );
    for (method, path) in operations {
        let concrete = path.replace("{id}", &uuid::Uuid::now_v7().to_string());
        let reply = app.send(&method, &concrete, None, None).await;
        let unrouted =
            reply.status == 405 || (reply.status == 404 && reply.body["detail"] == "no such route");
        assert!(
            !unrouted,
            "{method} {path} is documented but not served: {} {:?}",
            reply.status, reply.body
        );
    }
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn metrics_count_requests_seats_and_appender_batches(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    let org = app.register("metrics@example.com").await;
    let (_, key) = app.issue(&org, json!({"name": "IDE", "seats": 1})).await;
    let held = app.acquire(&org, &key, "m1").await;
    app.acquire(&org, &key, "m2").await;
    // A session acquired here is in the session cache: its heartbeat does
    // not ask the log.
    let beat = app.heartbeat(&org.token, session_of(&held)).await;
    assert_eq!(beat.status, 200, "{:?}", beat.body);
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "seatledger_seats_granted_total 1",
        "seatledger_seats_denied_total 1",
        "seatledger_http_requests_total{route=\"/api/v1/licenses/acquire\",method=\"POST\",status=\"409\"} 1",
        "seatledger_http_request_duration_seconds_count{route=\"/api/v1/licenses/acquire\",method=\"POST\"} 2",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(text.contains("seatledger_appender_batches_total"));
    assert!(text.contains("seatledger_appender_commit_seconds_total"));
    // Everything this server wrote is in the appender's cache: no stream
    // read back, none evicted, the organization and the license held.
    for line in [
        "seatledger_session_log_lookups_total 0",
        "seatledger_appender_stream_loads_total 0",
        "seatledger_appender_cache_evictions_total 0",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    let gauge = |name: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("missing {name}"))
            .parse()
            .unwrap()
    };
    assert!(gauge("seatledger_appender_cached_streams") >= 2);
    assert!(
        gauge("seatledger_appender_cached_entries") >= 4,
        "the organization and the license, each counting itself and what it holds"
    );
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn graceful_shutdown_records_every_answered_write(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    let org = app.register("stop@example.com").await;
    let (_, key) = app.issue(&org, json!({"name": "IDE", "seats": 1000})).await;
    let requests: Vec<_> = (0..60)
        .map(|machine| {
            let request = app
                .client
                .post(app.url("/api/v1/licenses/acquire"))
                .bearer_auth(&org.token)
                .json(&json!({"license_key": key, "hardware_id": format!("m{machine}")}));
            tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    // Stop while requests are in flight: once some have been recorded.
    let store = app.store.clone();
    let recorded = |events: Vec<seatledger_schema::RecordedEvent>| {
        events
            .iter()
            .filter(|e| e.event_type == "SeatAcquired")
            .count()
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while recorded(store.read_after(0, 0, 10_000).await.unwrap()) < 5 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("some acquires were recorded");
    app.stop().await;
    let mut granted = 0;
    for request in requests {
        if let Ok(Ok(201)) = request.await {
            granted += 1;
        }
    }
    assert!(granted >= 5);
    assert_eq!(
        recorded(store.read_after(0, 0, 10_000).await.unwrap()),
        granted,
        "every 201 is in the log, no more"
    );
}

/// An `Idempotency-Key` belongs to its caller: two members of one org who
/// send the same key and body get a lease each, never each other's lease
/// and seat token. The same body with other spacing and key order is the
/// same request.
#[sqlx::test(migrations = false)]
async fn idempotency_keys_belong_to_their_caller_and_compare_parsed_json(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    let owner = app.register("owner@example.com").await;
    let bob = app.member(&owner, "bob@example.com").await.token;
    let (_, key) = app.issue(&owner, json!({"name": "IDE", "seats": 5})).await;

    let acquire = |token: &str, body: String| {
        app.client
            .post(app.url("/api/v1/licenses/acquire"))
            .bearer_auth(token)
            .header("idempotency-key", "same-key")
            .header("content-type", "application/json")
            .body(body)
    };
    let body = format!(r#"{{"license_key":"{key}","hardware_id":"shared-box"}}"#);
    let first = TestApp::reply(acquire(&owner.token, body.clone()).send().await.unwrap()).await;
    let second = TestApp::reply(acquire(&bob, body).send().await.unwrap()).await;
    assert_eq!(
        (first.status, second.status),
        (201, 201),
        "{:?}",
        second.body
    );
    assert_ne!(first.body["session_id"], second.body["session_id"]);
    assert_ne!(first.body["signed_license"], second.body["signed_license"]);

    // The owner's retry, spaced and ordered differently, is the same request.
    let before = app.events().await.len();
    let respaced = format!("{{ \"hardware_id\" : \"shared-box\",\n  \"license_key\": \"{key}\" }}");
    let retry = TestApp::reply(acquire(&owner.token, respaced).send().await.unwrap()).await;
    assert_eq!((retry.status, &retry.body), (201, &first.body));
    assert_eq!(app.events().await.len(), before);
    app.stop().await;
}

/// The contract's form: every problem response is documented as
/// `application/problem+json`, and no operation declares a path parameter
/// its path does not have (query parameters are `in: query`).
#[test]
fn the_openapi_document_declares_problems_and_parameters_as_served() {
    let (_, document) = seatledger_api::routes::api();
    let document: Value = serde_json::from_str(&document.to_json().unwrap()).unwrap();
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                if parameter["in"] == "path" {
                    let name = parameter["name"].as_str().unwrap();
                    assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{method} {path}: {name} is not a path parameter"
                    );
                }
            }
            for (status, response) in operation["responses"].as_object().unwrap() {
                for (content_type, content) in response["content"].as_object().into_iter().flatten()
                {
                    if content["schema"].to_string().contains("ProblemDoc") {
                        assert_eq!(
                            content_type, "application/problem+json",
                            "{method} {path} {status}"
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 50, "{checked} problem responses");
}

/// The events feed as a long-poll (`wait_s`), on the embedded default with
/// nothing configured: a poll with nothing after `after` waits on the
/// in-process bus of commits, another organization's commit does not end
/// it, its own organization's next event does, at once; a poll whose wait
/// runs out answers an empty page; a wait out of range is 400.
#[tokio::test]
async fn a_long_poll_of_the_events_feed_answers_when_the_orgs_next_event_commits() {
    let app = TestApp::embedded().await;
    let a = app.register("poll-a@example.com").await;
    let b = app.register("poll-b@example.com").await;
    let (_, key) = app.issue(&a, json!({"name": "IDE", "seats": 2})).await;
    let head = app.get("/api/v1/events?limit=1000", &a.token).await.body["next_after"]
        .as_i64()
        .unwrap();

    for wait in ["21", "-1", "x"] {
        let bad = app
            .get(&format!("/api/v1/events?wait_s={wait}"), &a.token)
            .await;
        assert_eq!(
            (bad.status, bad.body["code"].as_str()),
            (400, Some("invalid_query")),
            "wait_s={wait}"
        );
    }

    let started = std::time::Instant::now();
    let empty = app
        .get(&format!("/api/v1/events?after={head}&wait_s=1"), &a.token)
        .await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.body["events"], json!([]));
    assert_eq!(empty.body["next_after"], head);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "an empty page after the whole wait"
    );

    let request = app
        .client
        .get(app.url(&format!("/api/v1/events?after={head}&wait_s=20")))
        .bearer_auth(&a.token);
    let started = std::time::Instant::now();
    let poll = tokio::spawn(async move { TestApp::reply(request.send().await.unwrap()).await });
    eventually("the poll waits", 10, || async {
        app.metric("seatledger_events_feed_waiting").await == 1
    })
    .await;
    // Another organization's commit wakes the poll, which finds nothing of
    // its own and waits on.
    app.issue(&b, json!({"name": "CAD", "seats": 1})).await;
    assert!(!poll.is_finished(), "B's event does not answer A's poll");
    let acquired = app.acquire(&a, &key, "m1").await;
    assert_eq!(acquired.status, 201);
    let page = poll.await.unwrap();
    let waited = started.elapsed();
    assert_eq!(page.status, 200);
    let events = page.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event_type"], "SeatAcquired");
    assert_eq!(events[0]["tenant_id"], json!(a.org_id));
    assert!(events[0]["position"].as_i64().unwrap() > head);
    assert_eq!(page.body["next_after"], events[0]["position"]);
    assert!(
        waited < std::time::Duration::from_secs(15),
        "answered when the event committed, not at the end of the wait ({waited:?})"
    );
    assert_eq!(app.metric("seatledger_events_feed_waiting").await, 0);
}

/// A server shutting down answers its waiting long-polls at once (an empty
/// page) instead of holding the drain for their whole wait.
#[tokio::test]
async fn a_shutdown_ends_waiting_long_polls() {
    let app = TestApp::embedded().await;
    let org = app.register("poll-stop@example.com").await;
    let request = app
        .client
        .get(app.url("/api/v1/events?after=1000000&wait_s=20"))
        .bearer_auth(&org.token);
    let started = std::time::Instant::now();
    let poll = tokio::spawn(async move { TestApp::reply(request.send().await.unwrap()).await });
    eventually("the poll waits", 10, || async {
        app.metric("seatledger_events_feed_waiting").await == 1
    })
    .await;
    app.stop().await;
    let page = poll.await.unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(page.body["events"], json!([]));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "answered at shutdown, not at the end of the wait"
    );
}

/// Every response says `X-Content-Type-Options: nosniff`, and the ones
/// that carry secrets (register, login, refresh, client-token creation,
/// license issue) say `Cache-Control: no-store`, as do errors.
#[tokio::test]
async fn responses_carrying_secrets_are_not_stored_and_never_sniffed() {
    let app = TestApp::embedded().await;
    let register = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({"email": "ada@example.com", "password": "correct horse battery", "full_name": "Ada", "company_name": "Acme"}))
        .send()
        .await
        .unwrap();
    let register = TestApp::reply(register).await;
    let token = register.body["api_token"].as_str().unwrap().to_owned();
    let login = app
        .login_with("ada@example.com", "correct horse battery")
        .await;
    let refresh = app
        .send("POST", "/api/v1/auth/refresh", Some(&token), None)
        .await;
    let token = refresh.body["api_token"].as_str().unwrap().to_owned();
    let client_token = app
        .post("/api/v1/tokens", &token, json!({"name": "ci"}))
        .await;
    let license = app
        .post(
            "/api/v1/licenses",
            &token,
            json!({"name": "IDE", "seats": 1}),
        )
        .await;
    let missing = app.send("GET", "/no/such/route", None, None).await;
    let health = app.send("GET", "/api/v1/health", None, None).await;
    for (what, reply, status) in [
        ("register", &register, 201),
        ("login", &login, 200),
        ("refresh", &refresh, 200),
        ("client token", &client_token, 201),
        ("license", &license, 201),
        ("not found", &missing, 404),
        ("health", &health, 200),
    ] {
        assert_eq!(reply.status, status, "{what}: {:?}", reply.body);
        assert_eq!(reply.headers["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(reply.headers["cache-control"], "no-store", "{what}");
    }
    app.stop().await;
}

/// Bodies are JSON objects: a struct's fields sent as an array (which serde
/// would read in field order) are refused with 422 and change nothing; an
/// integral number is an integer (`3.0` seats), as JSON Schema counts it.
#[tokio::test]
async fn bodies_are_objects_and_integral_numbers_are_integers() {
    let app = TestApp::embedded().await;
    let org = app.register("ada@example.com").await;
    let (license_id, _) = app.issue(&org, json!({"name": "IDE", "seats": 2})).await;
    let path = format!("/api/v1/licenses/{license_id}");
    let array = app
        .send("PATCH", &path, Some(&org.token), Some(json!([5, null])))
        .await;
    assert_eq!(
        (array.status, array.body["code"].as_str()),
        (422, Some("invalid_request"))
    );
    assert_eq!(app.get(&path, &org.token).await.body["seats"], 2);
    let float = app
        .send(
            "PATCH",
            &path,
            Some(&org.token),
            Some(json!({"seats": 3.0})),
        )
        .await;
    assert_eq!((float.status, &float.body["seats"]), (200, &json!(3)));
    let fraction = app
        .send(
            "PATCH",
            &path,
            Some(&org.token),
            Some(json!({"seats": 3.5})),
        )
        .await;
    assert_eq!(fraction.status, 422);
    let login = app
        .send(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "ada@example.com", "password": "correct horse battery", "ttl_s": 3600.0})),
        )
        .await;
    assert_eq!(login.status, 200, "{:?}", login.body);
    app.stop().await;
}

/// The wire format is a contract: the document is `api/tests/openapi.json`
/// byte for byte, so a change of a Rust type behind a request or an answer
/// (typed ids, secrets) cannot change what clients see unnoticed. A
/// deliberate change regenerates the file:
/// `cargo run -q --bin seatledger -- openapi > api/tests/openapi.json`.
#[test]
fn the_openapi_document_is_the_committed_one() {
    let (_, document) = seatledger_api::routes::api();
    let served = document.to_pretty_json().unwrap() + "\n";
    let committed = include_str!("openapi.json");
    if let Some((line, (a, b))) = served
        .lines()
        .zip(committed.lines())
        .enumerate()
        .find(|(_, (a, b))| a != b)
    {
        panic!(
            "the document differs at line {}: {a:?}, committed {b:?}",
            line + 1
        );
    }
    assert_eq!(
        served.len(),
        committed.len(),
        "the document's length differs"
    );
}
