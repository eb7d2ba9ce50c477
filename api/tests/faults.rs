//! Fault tests: the server under load while its process is
//! killed (kill -9), while its PostgreSQL goes away, with two replicas on
//! one database, and against slow and abusive clients. Each is bounded in
//! time, uses loopback only, and runs on its own database and its own
//! private services where it stops one.

mod common;

use common::processes::{database_url, PrivatePostgres, ServerProcess};
use common::TestApp;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One answer (or transport error) a load client got.
#[derive(Clone, Debug)]
struct Outcome {
    started: Instant,
    elapsed: Duration,
    /// None: the request failed before an answer (connection refused or cut).
    status: Option<u16>,
    code: Option<String>,
    retry_after: bool,
    /// The session an answered acquire granted or an answered release ended.
    acquired: Option<String>,
    released: Option<String>,
}

/// A client of the load: acquires a seat for a new machine, releases it,
/// and again, until `stop`; on a transport error it stops too when
/// `stop_on_transport_error` (its server was killed), else it goes on.
async fn seat_client(
    base: String,
    token: String,
    key: String,
    name: String,
    stop: Arc<AtomicBool>,
    stop_on_transport_error: bool,
) -> Vec<Outcome> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut outcomes = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let acquire = send(
            &client,
            &format!("{base}/api/v1/licenses/acquire"),
            &token,
            json!({"license_key": key, "hardware_id": format!("{name}-{n}")}),
        )
        .await;
        let session = acquire.acquired.clone();
        let failed = acquire.status.is_none();
        let unavailable = acquire.status == Some(503);
        outcomes.push(acquire);
        if failed && stop_on_transport_error {
            break;
        }
        if let Some(session) = session {
            let release = send(
                &client,
                &format!("{base}/api/v1/licenses/release"),
                &token,
                json!({"session_id": session}),
            )
            .await;
            let failed = release.status.is_none();
            outcomes.push(release);
            if failed && stop_on_transport_error {
                break;
            }
        } else if failed || unavailable {
            // Do not spin while the server or its store is away.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    outcomes
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: serde_json::Value,
) -> Outcome {
    let started = Instant::now();
    let reply = client.post(url).bearer_auth(token).json(&body).send().await;
    let mut outcome = Outcome {
        started,
        elapsed: Duration::ZERO,
        status: None,
        code: None,
        retry_after: false,
        acquired: None,
        released: None,
    };
    if let Ok(response) = reply {
        outcome.status = Some(response.status().as_u16());
        outcome.retry_after = response.headers().contains_key("retry-after");
        if let Ok(body) = response.json::<serde_json::Value>().await {
            outcome.code = body["code"].as_str().map(str::to_owned);
            let session = body["session_id"].as_str().map(str::to_owned);
            match (outcome.status, url.ends_with("/acquire")) {
                (Some(201), true) => outcome.acquired = session,
                (Some(200), false) if body["released"] == true => outcome.released = session,
                _ => {}
            }
        } else {
            // An answer whose body did not arrive whole is no answer.
            outcome.status = None;
        }
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// Registers an organization and issues it a license of `seats` on the
/// server at `base`; returns (token, license id, license key).
async fn org_with_license(base: &str, email: &str, seats: u32) -> (String, String, String) {
    let token = common::register_at(base, email).await;
    let (id, key) = issue(base, &token, seats).await;
    (token, id, key)
}

async fn issue(base: &str, token: &str, seats: u32) -> (String, String) {
    common::issue_at(base, token, json!({"name": "IDE", "seats": seats})).await
}

/// Every answered acquire and release of `outcomes` is in the log.
async fn assert_answered_writes_in_log(
    store: &seatledger_ledger::Store,
    outcomes: &[Outcome],
) -> (usize, usize) {
    let (acquired, released) = common::sessions_in_log(store).await;
    let answered_acquires: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.acquired.as_ref())
        .collect();
    let answered_releases: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.released.as_ref())
        .collect();
    for session in &answered_acquires {
        assert!(
            acquired.contains(*session),
            "answered acquire {session} is not in the log"
        );
    }
    for session in &answered_releases {
        assert!(
            released.contains(*session),
            "answered release {session} is not in the log"
        );
    }
    (answered_acquires.len(), answered_releases.len())
}

async fn verify_log(
    store: &seatledger_ledger::Store,
    keys: &std::path::Path,
) -> seatledger_replay::Verified {
    let key = seatledger_ledger::SigningKey::from_file(&keys.join("ledger.key")).unwrap();
    seatledger_replay::verify(store, 0, (key.key_id(), key.public_key()))
        .await
        .unwrap_or_else(|e| panic!("verify: {e}"))
}

fn statuses(outcomes: &[Outcome]) -> BTreeMap<Option<u16>, usize> {
    let mut counts = BTreeMap::new();
    for outcome in outcomes {
        *counts.entry(outcome.status).or_default() += 1;
    }
    counts
}

fn start_clients(
    count: usize,
    base: &str,
    token: &str,
    key: &str,
    prefix: &str,
    stop: &Arc<AtomicBool>,
    stop_on_transport_error: bool,
) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    (0..count)
        .map(|n| {
            tokio::spawn(seat_client(
                base.to_owned(),
                token.to_owned(),
                key.to_owned(),
                format!("{prefix}{n}"),
                stop.clone(),
                stop_on_transport_error,
            ))
        })
        .collect()
}

async fn join(clients: Vec<tokio::task::JoinHandle<Vec<Outcome>>>) -> Vec<Outcome> {
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.unwrap());
    }
    all
}

/// Seats granted so far (SeatAcquired events), read cheaply.
async fn granted(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'SeatAcquired'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits (30 s at most) until `n` more seats than `before` were granted.
async fn await_granted(pool: &sqlx::PgPool, before: i64, n: i64, what: &str) {
    common::eventually(
        what,
        30,
        || async move { granted(pool).await >= before + n },
    )
    .await;
}

/// kill -9 of the server under 32 concurrent clients, three rounds: every
/// answered acquire and release is in the log, the log verifies, and the
/// restarted server answers its first request at once.
#[sqlx::test(migrations = false)]
async fn kill_9_under_load_loses_no_answered_write(pool: sqlx::PgPool) {
    let url = database_url(&pool);
    let keys = tempfile::tempdir().unwrap();
    let flags = ["--rate-limit-seat-ops-per-s", "0"];
    let mut server = ServerProcess::start(&url, keys.path(), &flags);
    let (token, license_id, key) =
        org_with_license(&server.base, "kill@example.com", 100_000).await;
    let store = seatledger_ledger::Store::from_pg_pool(pool.clone());
    let mut all = Vec::new();
    for round in 0..3 {
        if round > 0 {
            server = ServerProcess::start(&url, keys.path(), &flags);
            // Serves at once: the first request after it listens succeeds.
            let first = reqwest::Client::new()
                .get(server.url(&format!("/api/v1/licenses/{license_id}")))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(
                first.status(),
                200,
                "round {round}: the restarted server serves at once"
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let before = granted(&pool).await;
        let clients = start_clients(
            32,
            &server.base,
            &token,
            &key,
            &format!("r{round}c"),
            &stop,
            true,
        );
        // Load until at least 300 more seats were granted, then kill -9.
        await_granted(&pool, before, 300, "the load granted seats").await;
        server.kill();
        let outcomes = join(clients).await;
        stop.store(true, Ordering::Relaxed);
        let counts = statuses(&outcomes);
        for status in counts.keys().flatten() {
            assert!(
                matches!(status, 200 | 201),
                "round {round}: unexpected status {status}: {counts:?}"
            );
        }
        all.extend(outcomes);
    }
    let (acquires, releases) = assert_answered_writes_in_log(&store, &all).await;
    assert!(acquires >= 600, "{acquires} answered acquires");
    let verified = verify_log(&store, keys.path()).await;
    println!(
        "kill -9 x3, 32 clients: {acquires} answered acquires, {releases} answered releases, all in the log; verify: {} events",
        verified.events
    );
}

/// The server's own PostgreSQL (a private instance) stops for 4 s under
/// 64 clients: writes answer 503 `store_unavailable` with Retry-After,
/// never 500; once the store is known to be down they are answered within
/// a second instead of each waiting out the pool's 5 s; readiness answers
/// within a second; the server recovers by itself; every answered write
/// is in the log and it verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_fails_fast_and_recovers() {
    let postgres = Arc::new(
        tokio::task::spawn_blocking(PrivatePostgres::start)
            .await
            .unwrap(),
    );
    let keys = tempfile::tempdir().unwrap();
    let args = seatledger_api::ServeArgs {
        keys: seatledger_api::config::KeyArgs {
            signing_key: Some(keys.path().join("ledger.key")),
            token_signing_key: Some(keys.path().join("token.key")),
            ..Default::default()
        },
        rate_limit_seat_ops_per_s: 0,
        ..common::args(postgres.url())
    };
    let store = seatledger_ledger::Store::connect(&postgres.url())
        .await
        .unwrap();
    let app = TestApp::on_store(store.clone(), args).await;
    let (token, _, key) = org_with_license(&app.base, "outage@example.com", 100_000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = start_clients(64, &app.base, &token, &key, "c", &stop, false);
    tokio::time::sleep(Duration::from_millis(1500)).await; // load before the outage

    let down_at = Instant::now();
    let stopping = postgres.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let asked = Instant::now();
    let ready = app
        .client
        .get(app.url("/api/v1/health/ready"))
        .send()
        .await
        .unwrap();
    let ready_took = asked.elapsed();
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.headers()["content-type"], "application/problem+json");
    assert!(ready.headers().contains_key("retry-after"));
    assert!(
        ready_took < Duration::from_millis(1500),
        "readiness took {ready_took:?}"
    );
    tokio::time::sleep(down_at + Duration::from_secs(4) - Instant::now()).await;

    let up_at = Instant::now();
    let starting = postgres.clone();
    tokio::task::spawn_blocking(move || starting.start_again())
        .await
        .unwrap();
    common::eventually("seats are granted again", 20, || {
        let app = &app;
        let key = &key;
        let token = &token;
        async move {
            let reply = app
                .post(
                    "/api/v1/licenses/acquire",
                    token,
                    json!({"license_key": key, "hardware_id": "probe"}),
                )
                .await;
            reply.status == 201 || reply.status == 200
        }
    })
    .await;
    let recovered = up_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await; // load after recovery
    stop.store(true, Ordering::Relaxed);
    let outcomes = join(clients).await;
    app.stop().await;

    let counts = statuses(&outcomes);
    for status in counts.keys() {
        assert!(
            matches!(status, Some(200 | 201 | 503)),
            "unexpected {status:?}: {counts:?}"
        );
    }
    let unavailable: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == Some(503)).collect();
    assert!(!unavailable.is_empty(), "the outage was seen: {counts:?}");
    for outcome in &unavailable {
        assert!(outcome.retry_after, "503 without Retry-After");
        assert!(
            matches!(
                outcome.code.as_deref(),
                Some("store_unavailable" | "request_timeout")
            ),
            "{:?}",
            outcome.code
        );
    }
    // When the store became known to be down: the first 503 answered.
    let known = unavailable
        .iter()
        .map(|o| o.started + o.elapsed)
        .min()
        .unwrap();
    assert!(
        known < down_at + Duration::from_secs(6),
        "the outage was known {:?} after it began",
        known - down_at
    );
    let during: Vec<&&Outcome> = unavailable
        .iter()
        .filter(|o| o.started > known + Duration::from_millis(100) && o.started + o.elapsed < up_at)
        .collect();
    let slowest = during.iter().map(|o| o.elapsed).max().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(1),
        "a request during the outage took {slowest:?}"
    );
    assert!(
        during.len() >= 640,
        "only {} answers during the outage (64 clients)",
        during.len()
    );

    let (acquires, releases) = assert_answered_writes_in_log(&store, &outcomes).await;
    let verified = verify_log(&store, keys.path()).await;
    println!(
        "PostgreSQL outage of 4 s, 64 clients: {counts:?}; {} answered 503 after the outage was known (slowest {slowest:?}); ready answered in {ready_took:?}; recovered {recovered:?} after PostgreSQL was back; {acquires} acquires and {releases} releases answered, all in the log; verify: {} events",
        during.len(),
        verified.events
    );
}

/// Two replicas on one database: 500 concurrent acquires on a license of
/// 10 seats, split across both, grant exactly 10. Then under load one
/// replica is killed (kill -9): the other's clients see no error, the
/// killed one's see only their own connections fail, and every answered
/// write is in the log.
#[sqlx::test(migrations = false)]
async fn two_replicas_grant_exactly_the_seats_and_survive_a_kill(pool: sqlx::PgPool) {
    let url = database_url(&pool);
    let keys = tempfile::tempdir().unwrap();
    let flags = ["--rate-limit-seat-ops-per-s", "0"];
    let mut a = ServerProcess::start(&url, keys.path(), &flags);
    let b = ServerProcess::start(&url, keys.path(), &flags);
    let (token, license_id, key) = org_with_license(&a.base, "replicas@example.com", 10).await;
    let client = reqwest::Client::new();
    let acquires = (0..500).map(|n| {
        let base = if n % 2 == 0 { &a.base } else { &b.base };
        let request = client
            .post(format!("{base}/api/v1/licenses/acquire"))
            .bearer_auth(&token)
            .json(&json!({"license_key": key, "hardware_id": format!("m{n}")}));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body["code"].as_str().map(str::to_owned))
        }
    });
    let answers = futures::future::join_all(acquires).await;
    let granted_now = answers.iter().filter(|(status, _)| *status == 201).count();
    let refused = answers
        .iter()
        .filter(|(status, code)| *status == 409 && code.as_deref() == Some("no_seats_available"))
        .count();
    assert_eq!((granted_now, refused), (10, 490), "{answers:?}");
    let store = seatledger_ledger::Store::from_pg_pool(pool.clone());
    let license: serde_json::Value = client
        .get(b.url(&format!("/api/v1/licenses/{license_id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(license["seats_used"], 10, "{license}");

    let (_, big) = issue(&a.base, &token, 100_000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let on_a = start_clients(16, &a.base, &token, &big, "a", &stop, true);
    let on_b = start_clients(16, &b.base, &token, &big, "b", &stop, false);
    await_granted(
        &pool,
        granted(&pool).await,
        300,
        "both replicas granted seats",
    )
    .await;
    a.kill();
    let killed_at = Instant::now();
    let on_a = join(on_a).await;
    // B goes on serving well after A is gone.
    await_granted(
        &pool,
        granted(&pool).await,
        200,
        "B granted seats after A was killed",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let on_b = join(on_b).await;

    let a_counts = statuses(&on_a);
    for status in a_counts.keys().flatten() {
        assert!(
            matches!(status, 200 | 201),
            "replica A answered {status}: {a_counts:?}"
        );
    }
    let b_counts = statuses(&on_b);
    assert!(
        b_counts
            .keys()
            .all(|status| matches!(status, Some(200 | 201))),
        "replica B's clients saw an error: {b_counts:?}"
    );
    let b_after = on_b
        .iter()
        .filter(|o| o.started > killed_at && o.status.is_some())
        .count();
    assert!(b_after > 0);
    let all: Vec<Outcome> = on_a.into_iter().chain(on_b).collect();
    let (acquires, releases) = assert_answered_writes_in_log(&store, &all).await;
    let verified = verify_log(&store, keys.path()).await;
    println!(
        "two replicas: 500 acquires on 10 seats granted {granted_now}; kill -9 of A under 32 clients: A {a_counts:?}, B {b_counts:?} ({b_after} answers on B after the kill); {acquires} acquires and {releases} releases answered, all in the log; verify: {} events",
        verified.events
    );
}

/// Reads until the server closes the connection (EOF or reset), for at
/// most `within`; returns what it sent, or None if it was still open.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&received).into_owned()),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// 200 connections that trickle header bytes, send nothing, send half a
/// body, or go idle after one request, and one with a huge header: the
/// server keeps answering a well-behaved client as fast as before, and
/// closes every abusive connection after its timeout (a head within
/// `--header-read-timeout-s`, a body within `--body-read-timeout-s`: 408).
#[sqlx::test(migrations = false)]
async fn slow_and_abusive_clients_are_cut_off_and_others_are_served(pool: sqlx::PgPool) {
    let args = seatledger_api::ServeArgs {
        http: seatledger_api::config::HttpArgs {
            header_read_timeout_s: 1.0,
            body_read_timeout_s: 1.0,
            max_connections: 4096,
        },
        ..common::args(String::new())
    };
    let app = TestApp::postgres_with(pool, args).await;
    let org = app.register("slow@example.com").await;
    let address = app.base.trim_start_matches("http://").to_owned();
    let latency = |app: &TestApp, token: String| {
        let request = app
            .client
            .get(app.url("/api/v1/licenses"))
            .bearer_auth(token);
        async move {
            let started = Instant::now();
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            started.elapsed()
        }
    };
    let mut before = Vec::new();
    for _ in 0..30 {
        before.push(latency(&app, org.token.clone()).await);
    }

    let mut abusive = Vec::new();
    for n in 0..200 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let kind = n % 4;
        match kind {
            0 => stream.write_all(b"GET /api/v1/licenses HTTP/1.1\r\nHost: x\r\n").await.unwrap(),
            1 => {} // sends nothing
            2 => stream
                .write_all(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\":")
                .await
                .unwrap(),
            _ => {
                stream.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
                let mut buffer = [0u8; 1024];
                let n = stream.read(&mut buffer).await.unwrap();
                assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
            }
        }
        abusive.push((kind, stream));
    }
    let opened = Instant::now();
    // Trickle: one more header byte per round on every trickling
    // connection; meanwhile the well-behaved client is served.
    let mut during = Vec::new();
    // Past the header timeout: a trickle must not keep a connection open.
    while opened.elapsed() < Duration::from_secs(3) {
        for (kind, stream) in abusive.iter_mut() {
            if *kind == 0 {
                let _ = stream.write_all(b"X").await;
            }
        }
        during.push(latency(&app, org.token.clone()).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut huge = tokio::net::TcpStream::connect(&address).await.unwrap();
    let header = format!(
        "GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(600 * 1024)
    );
    let _ = huge.write_all(header.as_bytes()).await;
    let answer = closed_within(&mut huge, Duration::from_secs(5))
        .await
        .expect("the huge-header connection is closed");
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");

    let mut closed_after = Vec::new();
    for (kind, mut stream) in abusive {
        // Closed 1 s after it began; had each trickled byte restarted the
        // timeout, the trickling ones would close only at 4 s.
        let left = (opened + Duration::from_millis(3500)).saturating_duration_since(Instant::now());
        let answer = closed_within(&mut stream, left).await.unwrap_or_else(|| {
            panic!(
                "a connection of kind {kind} was still open {:?} after it began",
                opened.elapsed()
            )
        });
        if kind == 2 {
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
            assert!(answer.contains("body_timeout"), "{answer:?}");
        }
        closed_after.push(opened.elapsed());
    }
    let median = |samples: &mut Vec<Duration>| {
        samples.sort();
        samples[samples.len() / 2]
    };
    let (normal, attacked) = (median(&mut before), median(&mut during));
    assert!(
        attacked < normal * 5 + Duration::from_millis(20),
        "median latency {attacked:?} under attack against {normal:?} before"
    );
    println!(
        "200 abusive connections (50 trickling a header byte every 20 ms for 3 s) + one 600 KiB header: all closed by {:?} (timeouts 1 s); a well-behaved client's median latency {attacked:?} during against {normal:?} before",
        closed_after.iter().max().unwrap()
    );
    app.stop().await;
}

/// `--max-connections`: beyond the limit a connection waits (it is not
/// served) until another closes, then it is served.
#[sqlx::test(migrations = false)]
async fn connections_beyond_the_limit_wait_for_a_free_one(pool: sqlx::PgPool) {
    let args = seatledger_api::ServeArgs {
        http: seatledger_api::config::HttpArgs {
            max_connections: 2,
            ..Default::default()
        },
        ..common::args(String::new())
    };
    let app = TestApp::postgres_with(pool, args).await;
    let address = app.base.trim_start_matches("http://").to_owned();
    let request = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut buffer = [0u8; 1024];
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    let mut third = tokio::net::TcpStream::connect(&address).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buffer = [0u8; 1024];
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buffer)).await;
    assert!(
        waited.is_err(),
        "the third connection was served beyond the limit of 2"
    );
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buffer))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    app.stop().await;
}

/// Reads one response head and body (Content-Length) from `stream`.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("answered")
            .unwrap();
        assert!(n > 0, "closed before a whole response: {received:?}");
        received.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&received).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

#[sqlx::test(migrations = false)]
async fn a_request_answered_before_its_body_arrived_closes_its_connection_and_says_so(
    pool: sqlx::PgPool,
) {
    let app = TestApp::postgres(pool).await;
    let address = app.base.trim_start_matches("http://").to_owned();

    // The head only: the 401 comes before the body, which never arrives.
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = "POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{response}"
    );
    let mut rest = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest))
        .await
        .expect("the server closes the connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection stays open");

    // A body read whole keeps the connection alive for the next request.
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let body = r#"{"email":"nobody@example.com","password":"not the password"}"#;
    let login = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(login.as_bytes()).await.unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(
        !response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    stream
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    app.stop().await;
}

/// A request with both `Content-Length` and `Transfer-Encoding` (in
/// either order, after a well-formed request on the same connection) is
/// answered 400 problem+json, and the connection is closed: nothing after
/// it is read as a request (RFC 9112 §6.3, request smuggling).
#[tokio::test]
async fn a_request_with_both_lengths_is_refused_and_the_connection_closed() {
    let app = TestApp::embedded().await;
    let address = app.base.trim_start_matches("http://").to_owned();
    for (first, second) in [
        ("Content-Length: 5", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: chunked", "Content-Length: 5"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let smuggled = format!(
            "GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n\
             POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n{first}\r\n{second}\r\n\r\n\
             0\r\n\r\nGET /api/v1/keys HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        stream.write_all(smuggled.as_bytes()).await.unwrap();
        let received = closed_within(&mut stream, Duration::from_secs(10))
            .await
            .expect("the connection is closed");
        let answers: Vec<&str> = received
            .split("HTTP/1.1 ")
            .skip(1)
            .map(|answer| &answer[..3])
            .collect();
        assert_eq!(answers, ["200", "400"], "{received}");
        assert!(received.contains("application/problem+json"), "{received}");
        assert!(
            received.contains("Content-Length and Transfer-Encoding"),
            "{received}"
        );
        assert!(
            !received.contains("\"keys\""),
            "the request after it was not served"
        );
    }
    app.stop().await;
}
