//! Creating a user is atomic with its events: the credentials
//! row is pending until `UserRegistered` is recorded; a request cut short
//! cannot stop the steps half-way; a row a crash left behind logs no one in
//! and frees its email after the grace period. And login takes as long
//! for an unknown email as for a wrong password.

mod common;

use common::{eventually, TestApp};
use seatledger_api::directory::{Directory, Principal, UserRecord};
use seatledger_ledger::Store;
use seatledger_schema::Role;
use seatledger_schema::{OrgId, UserId};
use serde_json::json;

const PASSWORD: &str = "correct horse battery";

async fn login(app: &TestApp, email: &str, password: &str) -> u16 {
    app.login_with(email, password).await.status
}

async fn register(app: &TestApp, email: &str) -> common::Reply {
    app.send(
        "POST",
        "/api/v1/auth/register",
        None,
        Some(json!({"email": email, "password": PASSWORD, "full_name": "Ada", "company_name": "Acme"})),
    )
    .await
}

/// Whether the log records a user with this email.
async fn registered(app: &TestApp, email: &str) -> bool {
    app.events().await.iter().any(|event| {
        let owner = &event.payload["owner"]["email"];
        event.event_type.contains("Registered")
            && (event.payload["email"] == email || owner == email)
    })
}

/// A crash between writing the credentials row and recording the event:
/// the row logs no one in, holds its email during the grace period, and
/// after it another registration takes the email.
#[sqlx::test(migrations = false)]
async fn a_pending_row_without_its_event_is_no_user(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool.clone()).await;
    let directory = Directory::new(Store::from_pg_pool(pool.clone()));
    let orphan = UserRecord {
        principal: Principal {
            user_id: UserId::now_v7(),
            org_id: OrgId::now_v7(),
            role: Role::Owner,
            client: None,
        },
        email: "ada@example.com".into(),
        password_hash: seatledger_api::auth::hash_password(seatledger_schema::Password::new(
            PASSWORD,
        ))
        .await
        .unwrap(),
    };
    directory.insert_user(&orphan).await.unwrap();
    assert_eq!(login(&app, "ada@example.com", PASSWORD).await, 401);
    let young = register(&app, "ada@example.com").await;
    assert_eq!(
        (young.status, young.body["code"].as_str()),
        (409, Some("email_taken")),
        "a young pending row may still be recorded: {:?}",
        young.body
    );
    // Past the grace period, the log is asked and the row replaced.
    sqlx::query("UPDATE users SET pending_since = 0")
        .execute(&pool)
        .await
        .unwrap();
    let taken_over = register(&app, "ada@example.com").await;
    assert_eq!(taken_over.status, 201, "{:?}", taken_over.body);
    assert_eq!(login(&app, "ada@example.com", PASSWORD).await, 200);
    let rows: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT user_id, pending_since FROM users")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![(taken_over.body["id"].as_str().unwrap().to_owned(), None)]
    );
    app.stop().await;
}

/// A recorded user whose row stayed pending (the confirmation was lost)
/// logs in: the log settles it, and the row is confirmed.
#[sqlx::test(migrations = false)]
async fn a_recorded_user_left_pending_logs_in(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool.clone()).await;
    app.register("ada@example.com").await;
    sqlx::query("UPDATE users SET pending_since = 1")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(login(&app, "ada@example.com", PASSWORD).await, 200);
    let pending: Option<i64> = sqlx::query_scalar("SELECT pending_since FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, None);
    // And its email stays taken, grace period or not.
    assert_eq!(register(&app, "ada@example.com").await.status, 409);
    app.stop().await;
}

/// Registrations cut short by the request timeout at different moments
/// (servers with timeouts from 10 to 80 ms, around the time a password
/// hash and the writes take): once settled, each email logs in exactly
/// when the log records its user, and no pending row is left.
#[sqlx::test(migrations = false)]
async fn a_register_cut_short_leaves_no_usable_user(pool: sqlx::PgPool) {
    let mut emails = Vec::new();
    let mut cut = 0;
    for timeout_s in [0.01, 0.02, 0.03, 0.05, 0.08] {
        let app = TestApp::postgres_with_request_timeout(pool.clone(), timeout_s).await;
        for n in 0..3 {
            let email = format!("user{n}-{}@example.com", emails.len());
            let reply = register(&app, &email).await;
            assert!(
                [201, 503].contains(&reply.status),
                "{email}: {} {:?}",
                reply.status,
                reply.body
            );
            cut += usize::from(reply.status == 503);
            emails.push(email);
        }
        app.stop().await;
    }
    assert!(cut > 0, "no registration was cut short");
    eventually("every registration settled", 10, || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM users WHERE pending_since IS NOT NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        pending == 0
    })
    .await;
    let normal = TestApp::postgres(pool.clone()).await;
    for email in &emails {
        let recorded = registered(&normal, email).await;
        let status = login(&normal, email, PASSWORD).await;
        assert_eq!(
            status == 200,
            recorded,
            "{email}: login {status}, recorded {recorded}"
        );
        if !recorded {
            assert_eq!(
                register(&normal, email).await.status,
                201,
                "{email} is free again"
            );
        }
    }
    normal.stop().await;
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// No account enumeration by timing: over a bounded sample, alternating,
/// the median login time for an unknown email is within 20% of a wrong
/// password for a known one. (A right password between wrong ones keeps
/// the account under the back-off threshold.)
#[tokio::test]
async fn unknown_emails_cost_what_wrong_passwords_cost() {
    let app = TestApp::embedded().await;
    app.register("ada@example.com").await;
    let timed = |email: String, password: &'static str| {
        let app = &app;
        async move {
            let started = std::time::Instant::now();
            let status = login(app, &email, password).await;
            (started.elapsed().as_secs_f64(), status)
        }
    };
    // Warm both paths (the dummy hash is computed on first use).
    timed("nobody@example.com".into(), "wrong password").await;
    timed("ada@example.com".into(), PASSWORD).await;
    let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
    for n in 0..21 {
        let (seconds, status) = timed(format!("nobody{n}@example.com"), "wrong password").await;
        assert_eq!(status, 401);
        unknown.push(seconds);
        let (seconds, status) = timed("ada@example.com".into(), "wrong password").await;
        assert_eq!(status, 401);
        wrong.push(seconds);
        assert_eq!(timed("ada@example.com".into(), PASSWORD).await.1, 200);
    }
    let (unknown, wrong) = (median(unknown), median(wrong));
    let ratio = unknown / wrong;
    assert!(
        (0.8..=1.2).contains(&ratio),
        "median unknown {unknown:.4} s, wrong password {wrong:.4} s: ratio {ratio:.2}"
    );
    app.stop().await;
}
