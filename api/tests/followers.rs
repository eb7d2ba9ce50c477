//! The followers wired into `serve`: reads served from the hot seat counts
//! see the client's own writes; the reaper frees seats of clients that
//! stopped heartbeating.

mod common;

use common::TestApp;
use serde_json::json;
use std::time::Duration;

/// Acquire, then GET the license and its sessions at once: the seat is
/// there, the read says which position it is as of, and it came from the
/// hot counts (no fallback to the ledger).
async fn reads_see_their_own_writes(app: &TestApp) {
    let org = app.register("ada@example.com").await;
    let (license_id, key) = app.issue(&org, json!({"name": "IDE", "seats": 5})).await;
    for round in 1..=5u64 {
        let acquired = app.acquire(&org, &key, &format!("m{round}")).await;
        assert_eq!(acquired.status, 201, "{:?}", acquired.body);
        let head = app.store.head(0).await.unwrap().0;
        let got = app
            .get(&format!("/api/v1/licenses/{license_id}"), &org.token)
            .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body["seats_used"], round, "round {round}");
        let position: i64 = got.headers["seatledger-position"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(position >= head, "as of {position}, the write is at {head}");
        let sessions = app
            .get(
                &format!("/api/v1/licenses/{license_id}/sessions"),
                &org.token,
            )
            .await;
        assert_eq!(sessions.body.as_array().map(Vec::len), Some(round as usize));
    }
    let list = app.get("/api/v1/licenses", &org.token).await;
    assert_eq!(list.body[0]["seats_used"], 5);
    let metrics = app.send("GET", "/metrics", None, None).await;
    let metrics = metrics.body.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains("seatledger_hot_read_fallbacks_total 0\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn reads_see_their_own_writes_on_sqlite() {
    let app = TestApp::embedded().await;
    reads_see_their_own_writes(&app).await;
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn reads_see_their_own_writes_on_postgres(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    reads_see_their_own_writes(&app).await;
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn reads_see_their_own_writes_with_redis(pool: sqlx::PgPool) {
    let url = std::env::var("SEATLEDGER_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("test:{}:", uuid::Uuid::now_v7());
    let app = TestApp::postgres_with_redis(pool, &url, &prefix).await;
    reads_see_their_own_writes(&app).await;
    app.stop().await;
}

/// Sessions are pages of at most `limit`, continued with `after`.
#[sqlx::test(migrations = false)]
async fn sessions_are_paged(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    let org = app.register("ada@example.com").await;
    let (license_id, key) = app.issue(&org, json!({"name": "IDE", "seats": 5})).await;
    for machine in 0..5 {
        assert_eq!(
            app.acquire(&org, &key, &format!("m{machine}")).await.status,
            201
        );
    }
    let path = format!("/api/v1/licenses/{license_id}/sessions");
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = app.get(&format!("{path}?limit=2{after}"), &org.token).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        let ids: Vec<String> = page
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["session_id"].as_str().unwrap().to_owned())
            .collect();
        assert!(ids.len() <= 2);
        let Some(last) = ids.last().cloned() else {
            break;
        };
        seen.extend(ids);
        after = format!("&after={last}");
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        (seen.len(), sorted),
        (5, seen.clone()),
        "every session once, in order"
    );
    for bad in ["limit=0", "limit=1001", "after=nope", "page=2"] {
        let reply = app.get(&format!("{path}?{bad}"), &org.token).await;
        assert_eq!(
            (reply.status, &reply.body["code"]),
            (400, &json!("invalid_query")),
            "{bad}"
        );
    }
    app.stop().await;
}

/// A client that stops heartbeating: once its TTL has passed (manual
/// clock), the reaper (every 50 ms here) records `SeatExpired` without any
/// other request, and another machine gets the seat.
#[sqlx::test(migrations = false)]
async fn the_reaper_frees_the_seat_of_a_client_that_stopped_heartbeating(pool: sqlx::PgPool) {
    let app = TestApp::postgres_with_reaper(pool, 0.05).await;
    let org = app.register("ada@example.com").await;
    let (_, key) = app
        .issue(
            &org,
            json!({"name": "IDE", "seats": 1, "heartbeat_ttl_s": 60}),
        )
        .await;
    assert_eq!(app.acquire(&org, &key, "crashed").await.status, 201);
    app.clock.advance_seconds(59);
    // Not yet: two rounds pass without an expiry.
    let rounds = app.metric("seatledger_reaper_rounds_total").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.metric("seatledger_reaper_rounds_total").await < rounds + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reaper does not run"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!app.event_types().await.contains(&"SeatExpired".to_owned()));
    assert_eq!(app.acquire(&org, &key, "other").await.status, 409);

    app.clock.advance_seconds(2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = app.events().await;
        if let Some(expired) = events.iter().find(|e| e.event_type == "SeatExpired") {
            assert_eq!(expired.metadata.actor.as_deref(), Some("reaper"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reaper did not expire the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.acquire(&org, &key, "other").await.status, 201);
    app.stop().await;
}

/// A redis-server of the test's own on a free loopback port, so it can be
/// stopped and restarted empty without touching other tests.
struct PrivateRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    async fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = PrivateRedis { port, child: None };
        redis.restart().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (empty: nothing is kept on disk) and waits until it answers.
    async fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `condition` (every 20 ms, 20 s at most).
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Redis stopped mid-workload: seats keep being granted and denied exactly,
/// reads come from the ledger, ready stays 200 and says `degraded`; Redis
/// back, empty: the counts are rebuilt from position 0 and serve reads
/// again, with the same figures.
#[sqlx::test(migrations = false)]
async fn seats_work_while_redis_is_down_and_the_counts_come_back(pool: sqlx::PgPool) {
    let mut redis = PrivateRedis::start().await;
    let prefix = format!("test:{}:", uuid::Uuid::now_v7());
    let app = TestApp::postgres_with_redis(pool, &redis.url(), &prefix).await;
    let org = app.register("ada@example.com").await;
    let (license_id, key) = app.issue(&org, json!({"name": "IDE", "seats": 3})).await;
    assert_eq!(app.acquire(&org, &key, "m1").await.status, 201);
    let license_path = format!("/api/v1/licenses/{license_id}");
    let got = app.get(&license_path, &org.token).await;
    assert_eq!(got.body["seats_used"], 1);
    let ready = app.send("GET", "/api/v1/health/ready", None, None).await;
    assert_eq!((ready.status, &ready.body["redis"]), (200, &json!("ok")));
    assert_eq!(app.metric("seatledger_hot_read_fallbacks_total").await, 0);

    redis.stop();
    assert_eq!(app.acquire(&org, &key, "m2").await.status, 201);
    assert_eq!(app.acquire(&org, &key, "m3").await.status, 201);
    assert_eq!(
        app.acquire(&org, &key, "m4").await.status,
        409,
        "the limit holds"
    );
    let got = app.get(&license_path, &org.token).await;
    assert_eq!((got.status, &got.body["seats_used"]), (200, &json!(3)));
    let sessions = app
        .get(&format!("{license_path}/sessions"), &org.token)
        .await;
    assert_eq!(sessions.body.as_array().map(Vec::len), Some(3));
    assert!(app.metric("seatledger_hot_read_fallbacks_total").await > 0);
    eventually("ready says redis is degraded", || async {
        let ready = app.send("GET", "/api/v1/health/ready", None, None).await;
        ready.status == 200 && ready.body["redis"] == "degraded"
    })
    .await;

    redis.restart().await;
    let head = app.store.head(0).await.unwrap().0;
    eventually("the counts are rebuilt in the new Redis", || async {
        let ready = app.send("GET", "/api/v1/health/ready", None, None).await;
        ready.body["redis"] == "ok" && ready.body["hot_counts"]["position"].as_i64() >= Some(head)
    })
    .await;
    let fallbacks = app.metric("seatledger_hot_read_fallbacks_total").await;
    let got = app.get(&license_path, &org.token).await;
    assert_eq!(got.body["seats_used"], 3);
    let sessions = app
        .get(&format!("{license_path}/sessions"), &org.token)
        .await;
    assert_eq!(sessions.body.as_array().map(Vec::len), Some(3));
    assert_eq!(
        app.metric("seatledger_hot_read_fallbacks_total").await,
        fallbacks,
        "served from Redis again"
    );
    app.stop().await;
}
