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

/// Refreshing keeps the lifetime the token was issued with: a 60 s token
/// becomes another 60 s token (twice over), not one of the server's 30 days.
#[tokio::test]
async fn a_refreshed_token_keeps_its_lifetime() {
    let app = TestApp::embedded().await;
    app.register("ada@example.com").await;
    let short = login(&app, "ada@example.com", json!({"ttl_s": 60})).await;
    let mut token = short.body["api_token"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        app.clock.advance_seconds(30);
        let refreshed = app
            .send("POST", "/api/v1/auth/refresh", Some(&token), None)
            .await;
        assert_eq!(refreshed.status, 200);
        assert_eq!(
            refreshed.body["expires_at"],
            app.clock_now().plus_seconds(60).to_string()
        );
        token = refreshed.body["api_token"].as_str().unwrap().to_owned();
    }
    app.clock.advance_seconds(61);
    assert_eq!(
        status(&app, &token).await,
        (401, Some("token_expired".into()))
    );
    app.stop().await;
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

/// `POST /api/v1/auth/login` for `email` with `password`, sent from the
/// loopback address `from` (127.0.0.0/8 all reaches the server on Linux).
async fn login_from(app: &TestApp, from: [u8; 4], email: &str, password: &str) -> common::Reply {
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(from))
        .build()
        .unwrap();
    let response = client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    TestApp::reply(response).await
}

/// 200 wrong guesses on one account sent at once from one address: the
/// back-off counts each attempt before its password is hashed, so only
/// the five free ones are checked (401), and every other one is 429
/// without a hash (the counter of password checks says so).
#[tokio::test]
async fn simultaneous_guesses_are_hashed_at_most_five_times() {
    let app = TestApp::embedded().await;
    app.register("ada@example.com").await;
    let checks_before = app.metric("seatledger_login_password_checks_total").await;
    let replies = futures::future::join_all(
        (0..200).map(|_| login_from(&app, [127, 0, 0, 1], "ada@example.com", "wrong password")),
    )
    .await;
    let checks = app.metric("seatledger_login_password_checks_total").await - checks_before;
    let answered = |status| {
        replies
            .iter()
            .filter(|reply| reply.status == status)
            .count()
    };
    assert_eq!(checks, 5, "password hashes checked");
    assert_eq!((answered(401), answered(429)), (5, 195));
    app.stop().await;
}

/// A guesser cannot lock the owner out. From another address, past the
/// five free guesses, only the guesser waits; spread over eleven addresses
/// (past the account-wide ceiling of fifty), a new address waits too, but
/// the address the owner logged in from before still gets in.
#[tokio::test]
async fn a_guesser_elsewhere_does_not_lock_the_owner_out() {
    let app = TestApp::embedded().await;
    app.register("ada@example.com").await;
    let owner = [127, 0, 0, 1];
    let right = "correct horse battery";
    assert_eq!(
        login_from(&app, owner, "ada@example.com", right)
            .await
            .status,
        200
    );
    for _ in 0..6 {
        login_from(&app, [127, 0, 0, 2], "ada@example.com", "wrong password").await;
    }
    let guesser = login_from(&app, [127, 0, 0, 2], "ada@example.com", right).await;
    assert_eq!(guesser.status, 429, "the guesser's address waits");
    assert_eq!(
        login_from(&app, owner, "ada@example.com", right)
            .await
            .status,
        200
    );

    // Fifty more from ten other addresses: the account-wide ceiling (fifty,
    // the five above included) stops the last five.
    let shared = &app;
    let statuses: Vec<u16> = futures::future::join_all((3..=12).map(|host| async move {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let reply = login_from(
                shared,
                [127, 0, 0, host],
                "ada@example.com",
                "wrong password",
            )
            .await;
            statuses.push(reply.status);
        }
        statuses
    }))
    .await
    .concat();
    let answered = |status| statuses.iter().filter(|s| **s == status).count();
    assert_eq!((answered(401), answered(429)), (45, 5));
    let new_address = login_from(&app, [127, 0, 0, 13], "ada@example.com", right).await;
    assert_eq!(new_address.status, 429, "past the account-wide ceiling");
    for _ in 0..3 {
        let reply = login_from(&app, owner, "ada@example.com", right).await;
        assert_eq!(
            reply.status, 200,
            "the owner's usual address: {:?}",
            reply.body
        );
    }
    app.stop().await;
}

/// An organization's admins may add 20 users an hour: the 21st answer is
/// 429 with Retry-After and records nothing, whether or not its address is
/// taken elsewhere (so probing which addresses exist is bounded); another
/// organization is not slowed.
#[tokio::test]
async fn users_added_are_limited_per_organization() {
    let app = TestApp::embedded().await;
    let owner = app.register("owner@example.com").await;
    let other = app.register("other@example.com").await;
    let add = |org: &Org, email: String| {
        let token = org.token.clone();
        let app = &app;
        async move {
            app.post(
                "/api/v1/users",
                &token,
                json!({"email": email, "password": "member password", "full_name": "M"}),
            )
            .await
        }
    };
    for n in 0..20 {
        let reply = add(&owner, format!("m{n}@example.com")).await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
    }
    let head = app.store.head(0).await.unwrap().0;
    for email in ["m20@example.com", "other@example.com"] {
        let limited = add(&owner, email.to_owned()).await;
        assert_eq!(
            (limited.status, limited.body["code"].as_str()),
            (429, Some("too_many_requests")),
            "{email}"
        );
        assert!(limited.headers.contains_key("retry-after"));
    }
    assert_eq!(app.store.head(0).await.unwrap().0, head, "nothing recorded");
    assert_eq!(add(&other, "x@example.com".to_owned()).await.status, 201);
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
