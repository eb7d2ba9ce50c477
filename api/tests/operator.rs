//! What an operator sees: request ids on every response and in the events
//! a request appends; plain-text logs when stderr is not a terminal.

mod common;

use common::TestApp;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[sqlx::test(migrations = false)]
async fn every_response_has_a_request_id_and_events_carry_it(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    let org = app.register("ada@example.com").await;
    let (_, key) = app.issue(&org, json!({"name": "IDE", "seats": 2})).await;

    // Without one, the server makes one, returns it and records it.
    let acquired = app.acquire(&org, &key, "m1").await;
    let generated = acquired.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!generated.is_empty());
    let events = app.events().await;
    assert_eq!(
        events.last().unwrap().metadata.request_id.as_deref(),
        Some(generated.as_str())
    );

    // With one, it is kept.
    let reply = TestApp::reply(
        app.client
            .post(app.url("/api/v1/licenses/acquire"))
            .bearer_auth(&org.token)
            .header("x-request-id", "client-chosen-42")
            .json(&json!({"license_key": key, "hardware_id": "m2"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.headers["x-request-id"], "client-chosen-42");
    let events = app.events().await;
    assert_eq!(
        events.last().unwrap().metadata.request_id.as_deref(),
        Some("client-chosen-42")
    );

    // Errors and unknown routes have one too; an unusable one is replaced.
    let missing = app.send("GET", "/api/v1/nope", None, None).await;
    assert!(missing.headers.contains_key("x-request-id"));
    let long = TestApp::reply(
        app.client
            .get(app.url("/api/v1/health"))
            .header("x-request-id", "x".repeat(101))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_ne!(long.headers["x-request-id"], "x".repeat(101).as_str());
    app.stop().await;
}

/// The real binary with stderr on a pipe: its log lines carry no escape
/// byte (no colour codes in log files and pipes).
#[test]
fn logs_to_a_pipe_are_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite:{}", dir.path().join("seatledger.db").display());
    let mut server = Command::new(env!("CARGO_BIN_EXE_seatledger"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &database,
        ])
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = server.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let listening = line.contains("seatledger listening");
        seen.push(line);
        if listening || seen.len() > 100 {
            break;
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(
        seen.iter().any(|l| l.contains("seatledger listening")),
        "{seen:?}"
    );
    assert!(seen.iter().all(|l| !l.contains('\u{1b}')), "{seen:?}");
}
