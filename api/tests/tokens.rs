//! Token lifecycle: expiry, logout, logout-all, refresh, `users/me`, and
//! revocation seen by another replica.

mod common;

use common::{eventually, Org, TestApp};
use serde_json::json;

async fn login(app: &TestApp, email: &str, body: serde_json::Value) -> common::Reply {
    let mut body = body;
    body["email"] = json!(email);
    body["password"] = json!("correct horse battery");
    app.send("POST", "/api/v1/auth/login", None, Some(body))
        .await
}

async fn token(app: &TestApp, email: &str) -> String {
    let reply = login(app, email, json!({})).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["api_token"].as_str().unwrap().to_owned()
}

async fn status(app: &TestApp, token: &str) -> (u16, Option<String>) {
    let reply = app.get("/api/v1/users/me", token).await;
    (reply.status, reply.body["code"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn tokens_expire_log_out_and_refresh() {
    let app = TestApp::embedded().await;
    let Org { token: first, .. } = app.register("ada@example.com").await;

    // users/me says who and until when.
    let me = app.get("/api/v1/users/me", &first).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["email"], "ada@example.com");
    assert_eq!(me.body["role"], "owner");
    let expires = me.body["token_expires_at"].as_str().unwrap().to_owned();
    let expected = app.clock_now().plus_seconds(2_592_000);
    assert_eq!(expires, expected.to_string(), "30 days by default");

    // A shorter life on request; too short is refused.
    let short = login(&app, "ada@example.com", json!({"ttl_s": 3_600})).await;
    assert_eq!(
        short.body["expires_at"],
        app.clock_now().plus_seconds(3_600).to_string()
    );
    let short = short.body["api_token"].as_str().unwrap().to_owned();
    let bad = login(&app, "ada@example.com", json!({"ttl_s": 10})).await;
    assert_eq!(
        (bad.status, bad.body["code"].as_str()),
        (422, Some("invalid_request"))
    );

    // Expiry (manual clock): the short token is 401 token_expired, the
    // long one still works.
    app.clock.advance_seconds(3_601);
    assert_eq!(
        status(&app, &short).await,
        (401, Some("token_expired".into()))
    );
    assert_eq!(status(&app, &first).await.0, 200);

    // Logout: that token is 401 at once, the others work.
    let second = token(&app, "ada@example.com").await;
    let out = app
        .send("POST", "/api/v1/auth/logout", Some(&second), None)
        .await;
    assert_eq!(out.status, 204);
    assert_eq!(
        status(&app, &second).await,
        (401, Some("unauthorized".into()))
    );
    assert_eq!(status(&app, &first).await.0, 200);

    // Refresh: a new token, the old one revoked.
    let refreshed = app
        .send("POST", "/api/v1/auth/refresh", Some(&first), None)
        .await;
    assert_eq!(refreshed.status, 200);
    let renewed = refreshed.body["api_token"].as_str().unwrap().to_owned();
    assert_eq!(status(&app, &first).await.0, 401);
    assert_eq!(status(&app, &renewed).await.0, 200);

    // Logout-all: every token of the user.
    let third = token(&app, "ada@example.com").await;
    let all = app
        .send("POST", "/api/v1/auth/logout-all", Some(&third), None)
        .await;
    assert_eq!(all.status, 200);
    assert!(all.body["revoked"].as_u64().unwrap() >= 2);
    for token in [&third, &renewed] {
        assert_eq!(status(&app, token).await.0, 401);
    }
    // A password change: the current password is required, the user's
    // other tokens are revoked, the calling one keeps working, and the new
    // password logs in.
    let calling = token(&app, "ada@example.com").await;
    let other = token(&app, "ada@example.com").await;
    let change =
        |current: &str| json!({"current_password": current, "new_password": "a much better horse"});
    let wrong = app
        .send(
            "PUT",
            "/api/v1/users/me/password",
            Some(&calling),
            Some(change("nope")),
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.body["code"].as_str()),
        (401, Some("invalid_credentials"))
    );
    let changed = app
        .send(
            "PUT",
            "/api/v1/users/me/password",
            Some(&calling),
            Some(change("correct horse battery")),
        )
        .await;
    assert_eq!(changed.status, 204, "{:?}", changed.body);
    assert_eq!(status(&app, &other).await.0, 401);
    assert_eq!(status(&app, &calling).await.0, 200);
    assert_eq!(login(&app, "ada@example.com", json!({})).await.status, 401);
    let relog = app
        .send(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "ada@example.com", "password": "a much better horse"})),
        )
        .await;
    assert_eq!(relog.status, 200);

    // Another user is not touched.
    let bob = app.register("bob@example.com").await;
    assert_eq!(status(&app, &bob.token).await.0, 200);
    app.stop().await;
}

/// A token revoked on replica A is refused by replica B, which had it in
/// its credential cache, within a second (PostgreSQL NOTIFY).
#[sqlx::test(migrations = false)]
async fn a_revocation_reaches_the_other_replica(pool: sqlx::PgPool) {
    let a = TestApp::postgres(pool.clone()).await;
    let b = TestApp::postgres(pool).await;
    let org = a.register("ada@example.com").await;
    let other = token(&a, "ada@example.com").await;
    // B has both tokens in its cache.
    assert_eq!(status(&b, &org.token).await.0, 200);
    assert_eq!(status(&b, &other).await.0, 200);

    let out = a
        .send("POST", "/api/v1/auth/logout", Some(&org.token), None)
        .await;
    assert_eq!(out.status, 204);
    eventually("replica B refuses the token", 5, || async {
        status(&b, &org.token).await.0 == 401
    })
    .await;
    assert_eq!(status(&b, &other).await.0, 200);

    let all = a
        .send("POST", "/api/v1/auth/logout-all", Some(&other), None)
        .await;
    assert_eq!(all.status, 200);
    eventually("replica B refuses every token of the user", 5, || async {
        status(&b, &other).await.0 == 401
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// Brute force: five wrong passwords are answered 401, the sixth 429 with
/// Retry-After (even the right password must wait); once the delay has
/// passed (manual clock) the right password works and clears the count.
/// An unknown email is treated the same (no account enumeration).
#[tokio::test]
async fn the_sixth_wrong_password_waits() {
    let app = TestApp::embedded().await;
    app.register("ada@example.com").await;
    let attempt = |email: &'static str, password: &'static str| {
        let app = &app;
        async move { app.login_with(email, password).await }
    };
    for email in ["ada@example.com", "nobody@example.com"] {
        for _ in 0..5 {
            assert_eq!(attempt(email, "wrong password").await.status, 401);
        }
        let locked = attempt(email, "wrong password").await;
        assert_eq!(
            (locked.status, locked.body["code"].as_str()),
            (429, Some("too_many_requests")),
            "{email}"
        );
        assert_eq!(locked.headers["retry-after"], "1");
    }
    let early = attempt("ada@example.com", "correct horse battery").await;
    assert_eq!(early.status, 429, "the right password waits too");
    app.clock.advance_seconds(1);
    assert_eq!(
        attempt("ada@example.com", "correct horse battery")
            .await
            .status,
        200
    );
    assert_eq!(
        attempt("ada@example.com", "wrong password").await.status,
        401,
        "cleared"
    );
    app.stop().await;
}

/// One client address may register 20 organizations an hour; the 21st is
/// 429 with Retry-After.
#[tokio::test]
async fn registrations_are_limited_per_address() {
    let app = TestApp::embedded().await;
    for n in 0..20 {
        app.register(&format!("user{n}@example.com")).await;
    }
    let refused = app
        .send(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(json!({
                "email": "one-too-many@example.com", "password": "correct horse battery",
                "full_name": "Late", "company_name": "Late Ltd"
            })),
        )
        .await;
    assert_eq!(
        (refused.status, refused.body["code"].as_str()),
        (429, Some("too_many_requests"))
    );
    let wait: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=180).contains(&wait), "{wait}");
    app.stop().await;
}

/// `josé` typed with a precomposed `é` and with `e` + a combining accent
/// (and in capitals) is one account: the second registration is refused
/// and either spelling logs in.
#[tokio::test]
async fn emails_are_compared_after_nfc_and_lowercasing() {
    let app = TestApp::embedded().await;
    let composed = "jos\u{e9}@example.com";
    let combining = "JOSE\u{301}@example.com";
    app.register(composed).await;
    let again = app
        .send(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(json!({
                "email": combining, "password": "correct horse battery",
                "full_name": "José", "company_name": "Other"
            })),
        )
        .await;
    assert_eq!(
        (again.status, again.body["code"].as_str()),
        (409, Some("email_taken")),
        "{:?}",
        again.body
    );
    token(&app, combining).await;
    token(&app, composed).await;
    app.stop().await;
}
