//! The NATS JetStream publisher and consumer against real NATS: the shared
//! server for the ordinary cases (each test with its own stream and subject
//! prefix), a private `nats-server -js` for the ones that kill it.

use async_nats::jetstream;
use seatledger_ledger::domain::{
    Command, HardwareId, HeartbeatTtl, Name, OveragePercent, SeatCount,
};
use seatledger_ledger::{
    Appender, AppenderConfig, CommitNotifier, ManualClock, SigningKey, Store, Submission,
};
use seatledger_projections::nats::{self, NATS_FOLLOWER};
use seatledger_projections::{
    runner, BillingFold, EventConsumer, FollowerStatus, Granularity, NatsConfig, NatsPublisher,
    PublisherStats, RunnerConfig,
};
use seatledger_schema::OrgId;
use seatledger_schema::{RecordedEvent, Timestamp};
use seatledger_schema::{SessionId, UserId};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

const ORG: OrgId = OrgId::from_u128(0x0a);

fn nats_url() -> String {
    std::env::var("SEATLEDGER_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A stream and subject prefix of the test's own.
fn own_config(url: &str) -> NatsConfig {
    let id = Uuid::now_v7().simple().to_string();
    NatsConfig {
        stream: format!("TEST_{id}"),
        subject_prefix: format!("test_{id}"),
        window: 64,
        ..NatsConfig::new(url)
    }
}

async fn pg_store(pool: sqlx::PgPool) -> Store {
    let store = Store::from_pg_pool(pool);
    store.migrate().await.unwrap();
    store
}

fn start_appender(store: &Store, notifier: &CommitNotifier) -> Appender {
    let clock = ManualClock::new(Timestamp::parse("2030-01-01T00:00:00Z").unwrap());
    Appender::start(
        store.clone(),
        Arc::new(SigningKey::generate().unwrap()),
        Arc::new(clock),
        notifier.clone(),
        AppenderConfig::default(),
    )
    .0
}

/// A license and `acquires` acquires on it (about `acquires + 1` events),
/// `concurrency` at a time.
async fn workload(appender: &Appender, acquires: usize, concurrency: usize) {
    let license_id = Uuid::now_v7();
    let issue = Command::IssueLicense {
        client_auth: Default::default(),
        license_id: license_id.into(),
        name: Name::parse("IDE").unwrap(),
        seats: SeatCount::new(100_000).unwrap(),
        expires_at: None,
        heartbeat_ttl_s: HeartbeatTtl::new(3_600).unwrap(),
        max_overage_percent: OveragePercent::default(),
    };
    appender.submit(Submission::new(ORG, issue)).await.unwrap();
    let tasks: Vec<_> = (0..concurrency)
        .map(|worker| {
            let appender = appender.clone();
            tokio::spawn(async move {
                for n in (worker..acquires).step_by(concurrency) {
                    let acquire = Command::AcquireSeat {
                        credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
                        token_id: None,
                        license_id: license_id.into(),
                        session_id: SessionId::now_v7(),
                        user_id: UserId::from_u128(n as u128 % 7),
                        hardware_id: HardwareId::parse(&format!("m{n}")).unwrap(),
                    };
                    let result = appender
                        .submit(Submission::new(ORG, acquire))
                        .await
                        .expect("every write is answered");
                    assert!(result.is_accepted());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

struct Publisher {
    stats: Arc<PublisherStats>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    async fn start(store: &Store, config: &NatsConfig, notifier: &CommitNotifier) -> Publisher {
        let stats = Arc::new(PublisherStats::default());
        let client = nats::connect(&config.url, stats.clone()).await.unwrap();
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(runner::run(
            store.clone(),
            NatsPublisher::new(store.clone(), 0, config.clone(), client, stats.clone()),
            notifier.clone(),
            RunnerConfig {
                poll_interval: Duration::from_millis(100),
                retry_after: Duration::from_millis(100),
                ..RunnerConfig::default()
            },
            FollowerStatus::default(),
            shutdown,
        ));
        Publisher { stats, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
    }
}

/// Polls `condition` (every 20 ms, `seconds` at most).
async fn eventually<F, Fut>(what: &str, seconds: u64, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What every publisher test starts from: its own stream, a store, an
/// appender.
struct Fixture {
    url: String,
    config: NatsConfig,
    store: Store,
    notifier: CommitNotifier,
    appender: Appender,
}

impl Fixture {
    async fn new(pool: sqlx::PgPool) -> Fixture {
        let url = nats_url();
        let config = own_config(&url);
        let store = pg_store(pool).await;
        let notifier = CommitNotifier::default();
        let appender = start_appender(&store, &notifier);
        Fixture {
            url,
            config,
            store,
            notifier,
            appender,
        }
    }

    async fn publisher(&self) -> Publisher {
        Publisher::start(&self.store, &self.config, &self.notifier).await
    }

    /// A publisher runs while `acquires` acquires are made, publishes
    /// everything, and stops.
    async fn publish_then_stop(&self, acquires: usize) {
        let publisher = self.publisher().await;
        workload(&self.appender, acquires, 4).await;
        self.all_published().await;
        publisher.stop().await;
    }

    async fn all_published(&self) {
        eventually("everything is published", 20, || {
            published_through_head(&self.store)
        })
        .await;
    }

    async fn delete_stream(&self) {
        delete_stream(&self.url, &self.config.stream).await;
    }
}

async fn published_through_head(store: &Store) -> bool {
    let (head, _) = store.head(0).await.unwrap();
    Store::follower_position(store, NATS_FOLLOWER, 0)
        .await
        .unwrap()
        >= head
}

/// Every event message of the stream (signed heads left out), in stream
/// order, as raw messages.
async fn stream_messages(url: &str, stream: &str) -> Vec<async_nats::jetstream::Message> {
    all_stream_messages(url, stream)
        .await
        .into_iter()
        .filter(|message| !is_head(message))
        .collect()
}

fn is_head(message: &async_nats::jetstream::Message) -> bool {
    message
        .headers
        .as_ref()
        .is_some_and(|headers| headers.get(nats::CHECKPOINT_HEADER).is_some())
}

/// Every message of the stream, in stream order, as raw messages.
async fn all_stream_messages(url: &str, stream: &str) -> Vec<async_nats::jetstream::Message> {
    use futures::StreamExt;
    let client = async_nats::connect(url).await.unwrap();
    let context = jetstream::new(client);
    let mut stream = context.get_stream(stream).await.unwrap();
    let total = stream.info().await.unwrap().state.messages as usize;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = Vec::new();
    while messages.len() < total {
        let mut batch = consumer
            .fetch()
            .max_messages(1_000)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .unwrap();
        while let Some(message) = batch.next().await {
            messages.push(message.unwrap());
        }
    }
    messages
}

async fn delete_stream(url: &str, stream: &str) {
    let client = async_nats::connect(url).await.unwrap();
    let _ = jetstream::new(client).delete_stream(stream).await;
}

/// The log's events, and the stream's, must be the same list.
async fn assert_stream_holds_the_log_once(store: &Store, url: &str, config: &NatsConfig) {
    let log = store.read_after(0, 0, 1_000_000).await.unwrap();
    let messages = stream_messages(url, &config.stream).await;
    let bodies: Vec<RecordedEvent> = messages
        .iter()
        .map(|message| serde_json::from_slice(&message.payload).unwrap())
        .collect();
    let positions: Vec<i64> = bodies.iter().map(|event| event.position).collect();
    let expected: Vec<i64> = log.iter().map(|event| event.position).collect();
    assert_eq!(positions, expected, "every event once, in position order");
    assert_eq!(bodies, log, "bodies are the log's envelopes");
}

/// Signed heads are published on a subject of their own, each after the
/// event it signs, once, with the checkpoint as its body; the event
/// consumer skips them.
#[sqlx::test(migrations = false)]
async fn signed_heads_follow_the_events_they_sign(pool: sqlx::PgPool) {
    let fixture = Fixture::new(pool).await;
    let _publisher = fixture.publisher().await;
    // More than the checkpoint interval of 1,000 events: at least one
    // checkpoint is signed with the events it covers.
    workload(&fixture.appender, 1_300, 8).await;
    fixture.all_published().await;
    let store = fixture.store.clone();
    eventually("the signed heads are published", 20, || {
        let store = store.clone();
        async move {
            let last = store
                .checkpoints(0)
                .await
                .unwrap()
                .last()
                .map(|c| c.position);
            last.is_some()
                && Store::follower_position(&store, nats::NATS_HEADS_FOLLOWER, 0)
                    .await
                    .unwrap()
                    >= last.unwrap_or(0)
        }
    })
    .await;
    let signed = fixture.store.checkpoints(0).await.unwrap();
    assert!(!signed.is_empty());
    let messages = all_stream_messages(&fixture.url, &fixture.config.stream).await;
    let mut heads = Vec::new();
    let mut published_through = 0;
    for message in &messages {
        if is_head(message) {
            assert_eq!(
                message.subject.as_str(),
                format!("{}.checkpoints", fixture.config.subject_prefix)
            );
            let head: seatledger_schema::Checkpoint =
                serde_json::from_slice(&message.payload).unwrap();
            assert!(
                head.position <= published_through,
                "the head at {} comes after its event (events published through {published_through})",
                head.position
            );
            heads.push(head);
        } else {
            let event: RecordedEvent = serde_json::from_slice(&message.payload).unwrap();
            published_through = event.position;
        }
    }
    let published: Vec<_> = heads
        .iter()
        .filter(|head| signed.iter().any(|c| c.position == head.position))
        .collect();
    assert_eq!(
        heads.len(),
        published.len(),
        "only the ledger's checkpoints"
    );
    let expected: Vec<_> = signed
        .iter()
        .filter(|c| c.position <= published_through)
        .collect();
    assert_eq!(
        heads.iter().collect::<Vec<_>>(),
        expected,
        "each once, in order"
    );

    let mut consumer = EventConsumer::from_start(
        async_nats::connect(&fixture.url).await.unwrap(),
        &fixture.config.stream,
    )
    .await
    .unwrap();
    let mut seen = 0;
    while seen < published_through {
        let events = consumer.fetch(1_000, Duration::from_secs(2)).await.unwrap();
        assert!(!events.is_empty(), "the consumer stalled at {seen}");
        seen = events.last().unwrap().position;
    }
    assert_eq!(seen, published_through);
}

/// Commits one after the other, each waking the publisher, do not each
/// store its checkpoint (a write and a WAL flush on the ledger's database
/// per commit): it is stored at most every `CHECKPOINT_SAVE_INTERVAL`,
/// and the last position once the publisher is idle.
#[sqlx::test(migrations = false)]
async fn the_checkpoint_is_not_stored_once_per_commit(pool: sqlx::PgPool) {
    let fixture = Fixture::new(pool).await;
    let publisher = fixture.publisher().await;
    // One command at a time: 301 commits.
    workload(&fixture.appender, 300, 1).await;
    fixture.all_published().await;
    let (head, _) = fixture.store.head(0).await.unwrap();
    assert_eq!(head, 301);
    let saved = publisher.stats.checkpoints_saved.load(Ordering::Relaxed);
    let batches = fixture.appender.stats().batches.load(Ordering::Relaxed);
    println!("{batches} commits, {saved} checkpoints stored");
    assert!(saved >= 1);
    assert!(
        saved * 4 <= batches,
        "{saved} checkpoints stored for {batches} commits"
    );
    publisher.stop().await;
}

/// Every appended event appears once in JetStream, in position order, with
/// its subject, headers and body; a consumer reading the stream sees the
/// log, and the usage computed from it equals the one from PostgreSQL.
#[sqlx::test(migrations = false)]
async fn every_event_is_published_once_in_order(pool: sqlx::PgPool) {
    let fixture = Fixture::new(pool).await;
    let Fixture {
        url,
        config,
        store,
        appender,
        ..
    } = &fixture;
    let publisher = fixture.publisher().await;
    workload(appender, 300, 8).await;
    fixture.all_published().await;
    assert_eq!(publisher.stats.status(), "ok");
    assert!(publisher.stats.active.load(Ordering::Relaxed));

    let log = store.read_after(0, 0, 1_000_000).await.unwrap();
    let messages = stream_messages(url, &config.stream).await;
    assert_eq!(messages.len(), log.len());
    for (message, event) in messages.iter().zip(&log) {
        assert_eq!(
            message.subject.as_str(),
            format!("{}.{}.{}", config.subject_prefix, ORG, event.event_type)
        );
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str().to_owned())
        };
        assert_eq!(header("Nats-Msg-Id"), Some(event.event_id.to_string()));
        assert_eq!(header("Seatledger-Partition"), Some("0".to_owned()));
        assert_eq!(
            header("Seatledger-Position"),
            Some(event.position.to_string())
        );
        assert_eq!(
            header("Seatledger-Stream-Id"),
            Some(event.stream_id.clone())
        );
        assert_eq!(
            header("Seatledger-Event-Type"),
            Some(event.event_type.clone())
        );
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(
            body,
            serde_json::to_value(event).unwrap(),
            "the /events shape"
        );
        assert!(body["hash"].is_string() && body["prev_hash"].is_string());
    }
    assert_eq!(
        publisher.stats.published.load(Ordering::Relaxed),
        log.len() as u64
    );

    // The consumer library: the whole log, and the same usage.
    let client = async_nats::connect(&url).await.unwrap();
    let mut consumer = EventConsumer::durable(client, &config.stream, "billing-test")
        .await
        .unwrap();
    let mut consumed = Vec::new();
    while consumed.len() < log.len() {
        let batch = consumer.fetch(100, Duration::from_secs(1)).await.unwrap();
        consumed.extend(batch);
        consumer.ack().await.unwrap();
    }
    assert_eq!(consumed, log);
    let as_of = log.last().unwrap().occurred_at.plus_seconds(60);
    let usage = |events: &[RecordedEvent]| {
        let mut fold = BillingFold::new(Granularity::Hour);
        for event in events {
            fold.apply(event).unwrap();
        }
        fold.report(as_of)
    };
    assert_eq!(usage(&consumed), usage(&log));
    assert!(!usage(&consumed).is_empty());

    publisher.stop().await;
    fixture.delete_stream().await;
}

/// The publisher stopped after publishing but before its checkpoint: on
/// restart it sends those events again, JetStream drops them as
/// duplicates, and the stream holds each event once.
#[sqlx::test(migrations = false)]
async fn a_lost_checkpoint_repeats_nothing_in_the_stream(pool: sqlx::PgPool) {
    let fixture = Fixture::new(pool).await;
    let Fixture {
        url,
        config,
        store,
        appender,
        ..
    } = &fixture;
    let publisher = fixture.publisher().await;
    workload(appender, 200, 4).await;
    fixture.all_published().await;
    publisher.stop().await;

    // As if the last checkpoint writes had not happened.
    Store::save_follower_position(store, NATS_FOLLOWER, 0, 50)
        .await
        .unwrap();
    let publisher = fixture.publisher().await;
    workload(appender, 20, 2).await;
    eventually("everything is published again", 20, || {
        published_through_head(store)
    })
    .await;
    assert_stream_holds_the_log_once(store, url, config).await;
    publisher.stop().await;
    fixture.delete_stream().await;
}

/// Two replicas: one publishes, the other waits; stopping the active one
/// hands over within seconds, with nothing lost or repeated.
#[sqlx::test(migrations = false)]
async fn one_replica_publishes_and_the_other_takes_over(pool: sqlx::PgPool) {
    let fixture = Fixture::new(pool).await;
    let Fixture {
        url,
        config,
        store,
        appender,
        ..
    } = &fixture;
    let first = fixture.publisher().await;
    eventually("the first is active", 10, || async {
        first.stats.active.load(Ordering::Relaxed)
    })
    .await;
    let second = fixture.publisher().await;
    workload(appender, 200, 4).await;
    fixture.all_published().await;
    assert!(
        !second.stats.active.load(Ordering::Relaxed),
        "one at a time"
    );
    assert_eq!(second.stats.published.load(Ordering::Relaxed), 0);
    assert_eq!(second.stats.status(), "standby");

    first.stop().await;
    workload(appender, 200, 4).await;
    eventually("the second takes over", 10, || async {
        second.stats.active.load(Ordering::Relaxed)
    })
    .await;
    fixture.all_published().await;
    assert!(second.stats.published.load(Ordering::Relaxed) > 0);
    assert_stream_holds_the_log_once(store, url, config).await;
    second.stop().await;
    fixture.delete_stream().await;
}

/// JetStream lost the stream (deleted and recreated empty): republish
/// restores it from the log, and a consumer then sees every event.
#[sqlx::test(migrations = false)]
async fn republish_restores_a_lost_stream(pool: sqlx::PgPool) {
    let fixture = Fixture::new(pool).await;
    let Fixture {
        url, config, store, ..
    } = &fixture;
    fixture.publish_then_stop(150).await;

    delete_stream(url, &config.stream).await;
    let client = async_nats::connect(&url).await.unwrap();
    let context = jetstream::new(client.clone());
    let (head, _) = store.head(0).await.unwrap();
    let mut reached = 0;
    let done = nats::republish(store, 0, &context, config, 1, None, |position| {
        reached = position;
    })
    .await
    .unwrap();
    assert_eq!(
        (done.events, done.duplicates, reached),
        (head as u64, 0, head)
    );
    assert_stream_holds_the_log_once(store, url, config).await;

    // Republishing again within the window repeats nothing.
    let again = nats::republish(store, 0, &context, config, 1, None, |_| {})
        .await
        .unwrap();
    assert_eq!(again.duplicates, head as u64);
    assert_stream_holds_the_log_once(store, url, config).await;

    // A consumer that had read up to 100 resumes and sees the rest once.
    let mut consumer = EventConsumer::from_start(client, &config.stream)
        .await
        .unwrap()
        .resume_after(0, 100);
    let mut positions = Vec::new();
    while consumer.position(0) < head {
        positions.extend(
            consumer
                .fetch(1_000, Duration::from_secs(1))
                .await
                .unwrap()
                .into_iter()
                .map(|event| event.position),
        );
    }
    assert_eq!(positions, (101..=head).collect::<Vec<_>>());
    fixture.delete_stream().await;
}

/// A stream that loses what it acknowledged while the publisher runs
/// (here: deleted, so its last sequence falls back to 0) is noticed at the
/// next publish; the publisher goes back and resends every event and
/// signed head the stream no longer holds, by itself.
#[sqlx::test(migrations = false)]
async fn the_publisher_resends_what_the_stream_lost(pool: sqlx::PgPool) {
    let fixture = Fixture::new(pool).await;
    let Fixture {
        url,
        config,
        store,
        appender,
        ..
    } = &fixture;
    let publisher = fixture.publisher().await;
    // Past the checkpoint interval of 1,000 events: a signed head too.
    workload(appender, 1_100, 8).await;
    fixture.all_published().await;
    assert_eq!(publisher.stats.losses_recovered.load(Ordering::Relaxed), 0);

    fixture.delete_stream().await;
    workload(appender, 50, 4).await;
    eventually("the loss is noticed", 20, || async {
        publisher.stats.losses_recovered.load(Ordering::Relaxed) == 1
    })
    .await;
    fixture.all_published().await;
    assert_stream_holds_the_log_once(store, url, config).await;
    let signed = store.checkpoints(0).await.unwrap().len();
    assert!(signed > 0);
    eventually("the signed heads are resent", 20, || async {
        let heads = all_stream_messages(url, &config.stream)
            .await
            .into_iter()
            .filter(is_head)
            .count();
        heads == signed
    })
    .await;
    publisher.stop().await;
    fixture.delete_stream().await;
}

/// A consumer that meets a hole in the positions stops there with a gap
/// error naming it, instead of folding a history with a hole.
#[sqlx::test(migrations = false)]
async fn a_consumer_stops_at_a_gap(pool: sqlx::PgPool) {
    let fixture = Fixture::new(pool).await;
    let Fixture {
        url,
        config,
        store,
        appender,
        ..
    } = &fixture;
    workload(appender, 30, 1).await;
    let client = async_nats::connect(&url).await.unwrap();
    let context = jetstream::new(client.clone());
    // Positions 1..=10 and 12..: 11 is missing.
    nats::republish(store, 0, &context, config, 1, Some(10), |_| {})
        .await
        .unwrap();
    nats::republish(store, 0, &context, config, 12, None, |_| {})
        .await
        .unwrap();
    let mut consumer = EventConsumer::from_start(client, &config.stream)
        .await
        .unwrap();
    let first = consumer.fetch(1_000, Duration::from_secs(1)).await;
    let error = match first {
        Err(error) => error,
        Ok(events) => {
            assert_eq!(events.len(), 10);
            consumer
                .fetch(1_000, Duration::from_secs(1))
                .await
                .unwrap_err()
        }
    };
    assert!(
        matches!(
            error,
            seatledger_projections::ConsumerError::Gap {
                partition: 0,
                expected: 11,
                got: 12
            }
        ),
        "{error}"
    );
    fixture.delete_stream().await;
}

/// The stream lost what was published while no publisher was running
/// (here: deleted while seatledger was stopped, as a nats-server that lost
/// its store would leave it). A publisher that starts reads the stream's
/// last event, finds it behind its checkpoint, and resends the rest by
/// itself: no `republish` by an operator.
#[sqlx::test(migrations = false)]
async fn a_loss_found_at_start_is_resent_without_an_operator(pool: sqlx::PgPool) {
    let fixture = Fixture::new(pool).await;
    let Fixture {
        url,
        config,
        store,
        appender,
        ..
    } = &fixture;
    fixture.publish_then_stop(150).await;

    fixture.delete_stream().await;
    let publisher = fixture.publisher().await;
    eventually("the loss is noticed at start", 20, || async {
        publisher.stats.losses_recovered.load(Ordering::Relaxed) == 1
    })
    .await;
    fixture.all_published().await;
    assert_stream_holds_the_log_once(store, url, config).await;
    publisher.stop().await;

    // A start that finds the stream whole resends nothing.
    let publisher = fixture.publisher().await;
    workload(appender, 10, 2).await;
    fixture.all_published().await;
    assert_eq!(publisher.stats.losses_recovered.load(Ordering::Relaxed), 0);
    assert_stream_holds_the_log_once(store, url, config).await;
    publisher.stop().await;
    fixture.delete_stream().await;
}
