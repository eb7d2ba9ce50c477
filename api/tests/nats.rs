//! Event delivery under `seatledger serve --nats-url`, against a private
//! `nats-server -js` (own port, own store directory) that the test kills
//! with SIGKILL and restarts.

mod common;

use common::{eventually, PrivateServer, TestApp};
use seatledger_api::NatsArgs;
use seatledger_projections::EventConsumer;
use serde_json::json;
use std::time::Duration;

/// `stream` holds events 1 to `head` (signed heads go to
/// `seatledger.checkpoints`, not counted), each once, and a consumer reads
/// them in position order.
async fn assert_every_event_once_in_order(nats_url: &str, stream: &str, head: i64) {
    let client = async_nats::connect(nats_url).await.unwrap();
    let messages = common::event_messages(client.clone(), stream).await;
    assert_eq!(messages, head as usize, "no event twice, none missing");
    let mut consumer = EventConsumer::from_start(client, stream).await.unwrap();
    let mut seen = Vec::new();
    while consumer.position(0) < head {
        seen.extend(
            consumer
                .fetch(1_000, Duration::from_secs(2))
                .await
                .unwrap()
                .into_iter()
                .map(|event| event.position),
        );
    }
    assert_eq!(seen, (1..=head).collect::<Vec<_>>(), "in position order");
}

/// NATS killed (SIGKILL) in the middle of a workload of more than 5,000
/// events and restarted: every write was answered meanwhile, ready said
/// `degraded`, and the stream ends up holding every event exactly once,
/// in position order.
#[sqlx::test(migrations = false)]
async fn nats_killed_mid_workload_loses_and_repeats_nothing(pool: sqlx::PgPool) {
    let mut nats = PrivateServer::start(common::nats_server).await;
    let nats_url = format!("nats://127.0.0.1:{}", nats.port);
    let stream = "SEATLEDGER_FAULT";
    let app = TestApp::postgres_with_nats(
        pool,
        NatsArgs {
            url: Some(nats_url.clone()),
            stream: stream.into(),
            ..NatsArgs::off()
        },
    )
    .await;
    let org = app.register("ada@example.com").await;
    let (_, key) = app
        .issue(&org, json!({"name": "IDE", "seats": 100_000}))
        .await;
    let published = || app.metric("seatledger_follower_position{follower=\"nats\"}");
    eventually("the publisher runs", 20, || async {
        let ready = app.send("GET", "/api/v1/health/ready", None, None).await;
        ready.body["nats"] == "ok"
    })
    .await;

    const ACQUIRES: usize = 5_200;
    const CLIENTS: usize = 16;
    let workload = {
        let base = app.base.clone();
        let token = org.token.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let tasks: Vec<_> = (0..CLIENTS)
                .map(|worker| {
                    let (client, base, token, key) =
                        (client.clone(), base.clone(), token.clone(), key.clone());
                    tokio::spawn(async move {
                        for n in (worker..ACQUIRES).step_by(CLIENTS) {
                            let reply = client
                                .post(format!("{base}/api/v1/licenses/acquire"))
                                .bearer_auth(&token)
                                .json(&json!({"license_key": key, "hardware_id": format!("m{n}")}))
                                .send()
                                .await
                                .expect("answered");
                            assert_eq!(reply.status().as_u16(), 201, "every write is granted");
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        })
    };
    eventually("a thousand events are published", 60, || async {
        published().await >= 1_000
    })
    .await;
    nats.kill();
    eventually("ready says nats is degraded", 20, || async {
        let ready = app.send("GET", "/api/v1/health/ready", None, None).await;
        ready.status == 200 && ready.body["nats"] == "degraded"
    })
    .await;
    let during = published().await;
    nats.restart().await;
    workload.await.unwrap();
    let (head, _) = app.store.head(0).await.unwrap();
    assert!(head > 5_000, "{head} events");
    assert!(during < head, "the outage was mid-workload");
    eventually("everything is published", 90, || async {
        published().await >= head
    })
    .await;
    let ready = app.send("GET", "/api/v1/health/ready", None, None).await;
    assert_eq!(ready.body["nats"], "ok");
    assert_eq!(ready.body["event_stream"]["lag"], 0);
    // nats-server syncs every 2 minutes: a SIGKILL may take acknowledged
    // messages with it, which the publisher then notices and resends.
    let losses = app.metric("seatledger_nats_losses_recovered_total").await;
    println!("JetStream losses noticed and resent by the publisher: {losses}");

    assert_every_event_once_in_order(&nats_url, stream, head).await;
    app.stop().await;
}

/// seatledger stopped, then nats-server killed (SIGKILL) and restarted
/// without the JetStream data it had acknowledged (its store directory
/// gone, as a disk or machine loss leaves it), then seatledger started
/// again: the publisher finds the stream behind its checkpoint at start and
/// resends what was lost, with no operator action; the stream holds every
/// event exactly once, in position order.
#[sqlx::test(migrations = false)]
async fn a_jetstream_loss_across_restarts_is_mended_at_start(pool: sqlx::PgPool) {
    let mut nats = PrivateServer::start(common::nats_server).await;
    let nats_url = format!("nats://127.0.0.1:{}", nats.port);
    let stream = "SEATLEDGER_RESTART";
    let nats_args = || NatsArgs {
        url: Some(nats_url.clone()),
        stream: stream.into(),
        ..NatsArgs::off()
    };
    const PUBLISHED: &str = "seatledger_follower_position{follower=\"nats\"}";
    let app = TestApp::postgres_with_nats(pool.clone(), nats_args()).await;
    let org = app.register("ada@example.com").await;
    let (_, key) = app
        .issue(&org, json!({"name": "IDE", "seats": 1_000}))
        .await;
    for n in 0..200 {
        let reply = app.acquire(&org, &key, &format!("m{n}")).await;
        assert_eq!(reply.status, 201);
    }
    let (head, _) = app.store.head(0).await.unwrap();
    eventually("everything is published", 30, || async {
        app.metric(PUBLISHED).await >= head
    })
    .await;
    app.stop().await;

    nats.kill();
    std::fs::remove_dir_all(nats.dir.path().join("jetstream")).unwrap();
    nats.restart().await;

    let app = TestApp::postgres_with_nats(pool, nats_args()).await;
    eventually("the loss is noticed at start", 30, || async {
        app.metric("seatledger_nats_losses_recovered_total").await == 1
    })
    .await;
    eventually("everything is published again", 30, || async {
        app.metric(PUBLISHED).await >= head
    })
    .await;
    assert_every_event_once_in_order(&nats_url, stream, head).await;
    app.stop().await;
}
