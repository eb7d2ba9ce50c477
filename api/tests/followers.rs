//! The followers wired into `serve`: reads served from the hot seat counts
//! see the client's own writes; the reaper frees seats of clients that
//! stopped heartbeating.

mod common;

use common::{eventually, Org, PrivateServer, Reply, TestApp};
use seatledger_schema::Timestamp;
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

/// Redis stopped mid-workload: seats keep being granted and denied exactly,
/// reads come from the ledger, ready stays 200 and says `degraded`, the
/// reaper still expires silent clients; Redis back, empty: the counts are
/// rebuilt from position 0 and serve reads again, with the true figures.
#[sqlx::test(migrations = false)]
async fn seats_work_while_redis_is_down_and_the_counts_come_back(pool: sqlx::PgPool) {
    let mut redis = PrivateServer::start(common::redis_server).await;
    let prefix = format!("test:{}:", uuid::Uuid::now_v7());
    let app =
        TestApp::postgres_with_redis(pool, &format!("redis://127.0.0.1:{}", redis.port), &prefix)
            .await;
    let org = app.register("ada@example.com").await;
    let (license_id, key) = app.issue(&org, json!({"name": "IDE", "seats": 3})).await;
    assert_eq!(app.acquire(&org, &key, "m1").await.status, 201);
    let license_path = format!("/api/v1/licenses/{license_id}");
    let got = app.get(&license_path, &org.token).await;
    assert_eq!(got.body["seats_used"], 1);
    let ready = app.send("GET", "/api/v1/health/ready", None, None).await;
    assert_eq!((ready.status, &ready.body["redis"]), (200, &json!("ok")));
    assert_eq!(app.metric("seatledger_hot_read_fallbacks_total").await, 0);

    redis.kill();
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
    eventually("ready says redis is degraded", 20, || async {
        let ready = app.send("GET", "/api/v1/health/ready", None, None).await;
        ready.status == 200 && ready.body["redis"] == "degraded"
    })
    .await;
    // The clients go silent: the reaper, unable to ask Redis, finds their
    // stale leases in the ledger's database and expires them.
    app.clock.advance_seconds(400);
    eventually("the reaper expires the three leases", 20, || async {
        let expired = app.event_types().await;
        expired.iter().filter(|t| *t == "SeatExpired").count() == 3
    })
    .await;

    redis.restart().await;
    let head = app.store.head(0).await.unwrap().0;
    eventually("the counts are rebuilt in the new Redis", 20, || async {
        let ready = app.send("GET", "/api/v1/health/ready", None, None).await;
        ready.body["redis"] == "ok" && ready.body["hot_counts"]["position"].as_i64() >= Some(head)
    })
    .await;
    let fallbacks = app.metric("seatledger_hot_read_fallbacks_total").await;
    let got = app.get(&license_path, &org.token).await;
    assert_eq!(got.body["seats_used"], 0);
    let sessions = app
        .get(&format!("{license_path}/sessions"), &org.token)
        .await;
    assert_eq!(sessions.body.as_array().map(Vec::len), Some(0));
    assert_eq!(
        app.metric("seatledger_hot_read_fallbacks_total").await,
        fallbacks,
        "served from Redis again"
    );
    app.stop().await;
}

// --- Live billing: GET /api/v1/usage ---

/// The usage report of `query`, as JSON and as CSV.
async fn usage(app: &TestApp, org: &Org, query: &str) -> (Reply, Reply) {
    let path = format!("/api/v1/usage?{query}");
    let json = app.get(&path, &org.token).await;
    let csv = TestApp::reply(
        app.client
            .get(app.url(&path))
            .bearer_auth(&org.token)
            .header("accept", "text/csv")
            .send()
            .await
            .unwrap(),
    )
    .await;
    (json, csv)
}

/// Waits until the billing follower applied the head.
async fn billing_caught_up(app: &TestApp) {
    let (head, _) = app.store.head(0).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app
        .metric("seatledger_follower_position{follower=\"billing\"}")
        .await
        < head
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "billing did not reach {head}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn session_of(reply: &Reply) -> String {
    reply.body["session_id"].as_str().unwrap().to_owned()
}

/// A crafted history across midnight and a month's end, with an overage
/// lease, a denial, a lease that expires without release and a re-acquire,
/// reported by hand; the JSON and CSV answers agree and equal what
/// `seatledger-replay usage` computes from the same log.
async fn usage_reports_a_crafted_history(app: &TestApp) {
    let start = Timestamp::parse("2030-01-31T23:00:00Z").unwrap();
    app.clock.set(start);
    let org = app.register("ada@example.com").await;
    let (license_id, key) = app
        .issue(
            &org,
            json!({"name": "IDE", "seats": 1, "max_overage_percent": 100, "heartbeat_ttl_s": 3600}),
        )
        .await;
    let first = app.acquire(&org, &key, "m1").await;
    assert_eq!(first.status, 201);
    app.clock.set(start.plus_seconds(600));
    let overage = app.acquire(&org, &key, "m2").await;
    assert_eq!(overage.status, 201, "granted as overage");
    app.clock.set(start.plus_seconds(1_200));
    assert_eq!(app.acquire(&org, &key, "m3").await.status, 409);
    app.clock.set(start.plus_seconds(1_800));
    let beat = json!({"session_id": session_of(&first)});
    let path = "/api/v1/licenses/heartbeat";
    assert_eq!(app.post(path, &org.token, beat.clone()).await.status, 200);
    app.clock.set(start.plus_seconds(2_400));
    let release = json!({"session_id": session_of(&overage)});
    let released = app
        .post("/api/v1/licenses/release", &org.token, release)
        .await;
    assert_eq!(released.status, 200);
    // 00:15 on 1 February: the last heartbeat; m1 then goes silent (its
    // lease ends at 01:15, whether or not the reaper has recorded it).
    app.clock.set(start.plus_seconds(4_500));
    assert_eq!(app.post(path, &org.token, beat).await.status, 200);
    app.clock.set(start.plus_seconds(9_900));
    let again = app.acquire(&org, &key, "m1").await;
    assert_eq!(again.status, 201);
    app.clock.set(start.plus_seconds(10_800));
    billing_caught_up(app).await;

    let range = "from=2030-01-01T00:00:00Z&to=2030-03-01T00:00:00Z";
    for (granularity, expected) in [
        (
            "day",
            vec![
                // 31 January: m1 23:00–24:00, m2 23:10–23:40 (overage).
                ("2030-01-31T00:00:00.000000Z", 5_400, 1_800, 2, 1, 2, 1),
                // 1 February: m1 00:00–01:15, again 01:45–02:00.
                ("2030-02-01T00:00:00.000000Z", 5_400, 0, 1, 1, 1, 0),
            ],
        ),
        (
            "month",
            vec![
                ("2030-01-01T00:00:00.000000Z", 5_400, 1_800, 2, 1, 2, 1),
                ("2030-02-01T00:00:00.000000Z", 5_400, 0, 1, 1, 1, 0),
            ],
        ),
    ] {
        let (json, csv) = usage(app, &org, &format!("{range}&granularity={granularity}")).await;
        assert_eq!(json.status, 200, "{:?}", json.body);
        let rows = json.body["rows"].as_array().unwrap();
        let got: Vec<_> = rows
            .iter()
            .map(|row| {
                assert_eq!(row["license_id"], license_id);
                (
                    row["period_start"].as_str().unwrap().to_owned(),
                    row["seat_micros"].as_u64().unwrap() / 1_000_000,
                    row["overage_seat_micros"].as_u64().unwrap() / 1_000_000,
                    row["peak_seats"].as_u64().unwrap(),
                    row["distinct_users"].as_u64().unwrap(),
                    row["distinct_machines"].as_u64().unwrap(),
                    row["denials"].as_u64().unwrap(),
                )
            })
            .collect();
        let expected: Vec<_> = expected
            .into_iter()
            .map(|(period, seat, overage, peak, users, machines, denials)| {
                (
                    period.to_owned(),
                    seat,
                    overage,
                    peak,
                    users,
                    machines,
                    denials,
                )
            })
            .collect();
        assert_eq!(got, expected, "{granularity}");
        assert_eq!(json.body["as_of"], "2030-02-01T02:00:00.000000Z");
        assert_eq!(
            csv.headers["seatledger-as-of"],
            "2030-02-01T02:00:00.000000Z"
        );
        assert!(csv.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv"));
        // CSV and JSON agree, and both equal the offline recomputation.
        let rows: Vec<seatledger_projections::UsageRow> =
            serde_json::from_value(json.body["rows"].clone()).unwrap();
        assert_eq!(
            csv.body.as_str().unwrap(),
            seatledger_projections::usage_csv(&rows)
        );
        let offline = seatledger_replay::usage(
            &app.store,
            0,
            seatledger_projections::Granularity::parse(granularity).unwrap(),
            Some(app.clock_now()),
        )
        .await
        .unwrap();
        let org_id = uuid::Uuid::parse_str(&org.org_id).unwrap();
        let offline = seatledger_replay::select_usage(
            offline.rows,
            Some(org_id.into()),
            Some(Timestamp::parse("2030-01-01T00:00:00Z").unwrap()),
            Some(Timestamp::parse("2030-03-01T00:00:00Z").unwrap()),
        );
        assert_eq!(rows, offline, "live = seatledger-replay usage");
    }
    // Hours: the 23:00 hour of 31 January holds both leases.
    let (hours, _) = usage(
        app,
        &org,
        &format!("from=2030-01-31T23:00:00Z&to=2030-02-01T00:00:00Z&granularity=hour&license_id={license_id}"),
    )
    .await;
    assert_eq!(hours.body["rows"][0]["seat_micros"], 5_400_000_000u64);
    assert_eq!(hours.body["rows"].as_array().unwrap().len(), 1);

    // Bad parameters: 422 problem+json, naming what is wrong.
    for bad in [
        "to=2030-02-01T00:00:00Z",
        "from=2030-02-01T00:00:00Z",
        "from=yesterday&to=2030-02-01T00:00:00Z",
        "from=2030-02-01T00:00:00Z&to=2030-01-01T00:00:00Z",
        "from=2030-01-01T00:00:00Z&to=2030-02-01T00:00:00Z&granularity=week",
        "from=2030-01-01T00:00:00Z&to=2030-03-01T00:00:00Z&granularity=hour",
        "from=2030-01-01T00:00:00Z&to=2030-02-01T00:00:00Z&license_id=nope",
    ] {
        let reply = app.get(&format!("/api/v1/usage?{bad}"), &org.token).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (422, Some("invalid_query")),
            "{bad}: {:?}",
            reply.body
        );
        assert_eq!(reply.headers["content-type"], "application/problem+json");
    }
    // Another organization sees none of it.
    let other = app.register("bob@example.com").await;
    let (theirs, _) = usage(app, &other, range).await;
    assert_eq!(theirs.body["rows"], json!([]));
}

#[tokio::test]
async fn usage_reports_a_crafted_history_on_sqlite() {
    let app = TestApp::embedded().await;
    usage_reports_a_crafted_history(&app).await;
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn usage_reports_a_crafted_history_on_postgres(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    usage_reports_a_crafted_history(&app).await;
    app.stop().await;
}

/// A Redis prefix another ledger already claimed: ready says redis is
/// degraded and why, a metric counts the conflict, reads come from the
/// ledger, and the reaper goes on from the billing follower's open leases.
#[sqlx::test(migrations = false)]
async fn a_prefix_of_another_ledger_is_reported_and_the_reaper_goes_on(pool: sqlx::PgPool) {
    let redis_url = std::env::var("SEATLEDGER_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("test:{}:", uuid::Uuid::now_v7());
    // Another ledger claimed the prefix first.
    let other =
        seatledger_projections::RedisLicenses::new(&redis_url, &prefix, "another-ledger", 0)
            .unwrap();
    let mut claim = other.clone();
    assert_eq!(
        seatledger_projections::runner::Follower::position(&mut claim)
            .await
            .unwrap(),
        0
    );

    let app = TestApp::postgres_with_redis(pool, &redis_url, &prefix).await;
    eventually("ready reports the conflict", 20, || async {
        let ready = app.send("GET", "/api/v1/health/ready", None, None).await;
        ready.status == 200
            && ready.body["redis"] == "degraded"
            && ready.body["redis_problem"]
                .as_str()
                .is_some_and(|problem| problem.contains("belong to another ledger"))
    })
    .await;
    assert!(app.metric("seatledger_redis_prefix_conflicts_total").await >= 1);

    let org = app.register("ada@example.com").await;
    let (license_id, key) = app.issue(&org, json!({"name": "IDE", "seats": 2})).await;
    assert_eq!(app.acquire(&org, &key, "m1").await.status, 201);
    let got = app
        .get(&format!("/api/v1/licenses/{license_id}"), &org.token)
        .await;
    assert_eq!(got.body["seats_used"], 1, "read from the ledger");
    // The client goes silent: the reaper expires its lease.
    app.clock.advance_seconds(400);
    eventually("the reaper expires the lease", 20, || async {
        app.event_types().await.contains(&"SeatExpired".to_owned())
    })
    .await;
    app.stop().await;
    other.delete_all().await.unwrap();
}
