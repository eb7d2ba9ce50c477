//! The chaos run with an auditor.
//!
//! Two replicas (`seatledger serve` processes) on a PostgreSQL, a Redis and
//! a NATS of the run's own serve a mixed workload (acquire, heartbeat,
//! release, leases left to the reaper, denials on licenses of few seats)
//! while one fault at a time is injected at random: a replica killed
//! (kill -9) and restarted, Redis killed and restarted empty, NATS killed
//! and restarted, PostgreSQL stopped (`-m immediate`) and started. Then the
//! faults stop, the followers catch up, and an auditor checks:
//!
//! - the seat limit was never exceeded at any position of the log (its own
//!   fold of the raw events, not the server's decider);
//! - every answered acquire and release is in the log; no request was
//!   answered 5xx other than 503;
//! - the hash chain and the signed checkpoints verify;
//! - JetStream holds every event exactly once, in position order;
//! - the Redis hot counts equal the ledger's replay.
//!
//! It prints a summary table and fails on any violation. Bounded:
//! `SEATLEDGER_CHAOS_DURATION_S` seconds of faults (default 20 here, as CI
//! runs it; `scripts/chaos` runs 120), then at most a minute to settle.
//! `SEATLEDGER_CHAOS_SEED` repeats a run's choice of faults.

mod common;

use common::processes::{free_port, PrivatePostgres, ServerProcess};
use common::PrivateServer;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LICENSES: usize = 4;
const SEATS: u64 = 8;
const CLIENTS_PER_REPLICA: usize = 12;

/// xorshift64*: enough randomness to pick faults, repeatable by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct Tally {
    /// Answers by operation and status ("transport" when none came).
    answers: BTreeMap<(String, String), usize>,
    acquired: Vec<String>,
    released: Vec<String>,
    /// Requests answered 5xx other than 503.
    server_errors: Vec<String>,
}

impl Tally {
    fn record(&mut self, op: &str, status: Option<u16>) {
        let status = status.map_or_else(|| "transport".to_owned(), |s| s.to_string());
        *self.answers.entry((op.to_owned(), status)).or_default() += 1;
    }
}

async fn call(
    client: &reqwest::Client,
    url: String,
    token: &str,
    body: serde_json::Value,
) -> (Option<u16>, serde_json::Value) {
    match client.post(url).bearer_auth(token).json(&body).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.json::<serde_json::Value>().await {
                Ok(body) => (Some(status), body),
                Err(_) => (None, serde_json::Value::Null),
            }
        }
        Err(_) => (None, serde_json::Value::Null),
    }
}

/// One client of the workload, bound to one replica (which may be down).
async fn client_loop(
    base: String,
    token: String,
    keys: Vec<String>,
    name: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut rng = Rng(seed | 1);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = &keys[rng.below(keys.len() as u64) as usize];
        let (status, body) = call(
            &client,
            format!("{base}/api/v1/licenses/acquire"),
            &token,
            json!({"license_key": key, "hardware_id": format!("{name}-{n}")}),
        )
        .await;
        let mut pause = status.is_none() || status == Some(503);
        {
            let mut tally = tally.lock().unwrap();
            tally.record("acquire", status);
            if status.is_some_and(|s| s >= 500 && s != 503) {
                tally
                    .server_errors
                    .push(format!("acquire {status:?} {body}"));
            }
        }
        if status == Some(201) {
            let session = body["session_id"].as_str().unwrap_or_default().to_owned();
            tally.lock().unwrap().acquired.push(session.clone());
            let (status, body) = call(
                &client,
                format!("{base}/api/v1/licenses/heartbeat"),
                &token,
                json!({"session_id": session}),
            )
            .await;
            {
                let mut tally = tally.lock().unwrap();
                tally.record("heartbeat", status);
                if status.is_some_and(|s| s >= 500 && s != 503) {
                    tally
                        .server_errors
                        .push(format!("heartbeat {status:?} {body}"));
                }
            }
            // One lease in twenty is left to the reaper (its client "crashed").
            if rng.below(20) != 0 {
                let (status, body) = call(
                    &client,
                    format!("{base}/api/v1/licenses/release"),
                    &token,
                    json!({"session_id": session}),
                )
                .await;
                let mut tally = tally.lock().unwrap();
                tally.record("release", status);
                if status == Some(200) && body["released"] == true {
                    tally.released.push(session);
                }
                if status.is_some_and(|s| s >= 500 && s != 503) {
                    tally
                        .server_errors
                        .push(format!("release {status:?} {body}"));
                }
                pause |= status.is_none() || status == Some(503);
            }
        }
        if pause {
            // Its replica or the store is away: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The auditor's own fold of the raw log (position, stream, event type,
/// payload): per license, its seats and overage allowance and its live
/// sessions; at every SeatAcquired, the live sessions must not exceed what
/// the license allows. Returns (grants checked, violations, leases still
/// live at the end of the log).
fn seat_limit_violations<'a>(
    events: impl IntoIterator<Item = (i64, &'a str, &'a str, &'a serde_json::Value)>,
) -> (usize, Vec<String>, usize) {
    #[derive(Default)]
    struct License {
        seats: u64,
        overage_percent: u64,
        live: HashSet<String>,
    }
    let mut licenses: HashMap<&str, License> = HashMap::new();
    let mut violations = Vec::new();
    let mut grants = 0;
    for (position, stream_id, event_type, payload) in events {
        let license = licenses.entry(stream_id).or_default();
        let session = payload["session_id"].as_str().map(str::to_owned);
        match event_type {
            "LicenseIssued" => {
                license.seats = payload["seats"].as_u64().unwrap_or(0);
                license.overage_percent = payload["max_overage_percent"].as_u64().unwrap_or(0);
            }
            "LicenseSeatsChanged" => license.seats = payload["seats"].as_u64().unwrap_or(0),
            "SeatAcquired" => {
                grants += 1;
                license.live.extend(session);
                let allowed = license.seats + license.seats * license.overage_percent / 100;
                if license.live.len() as u64 > allowed {
                    violations.push(format!(
                        "position {position}: {} live leases on {stream_id} allowing {allowed}",
                        license.live.len()
                    ));
                }
            }
            "SeatReleased" | "SeatExpired" => {
                if let Some(session) = session {
                    license.live.remove(&session);
                }
            }
            _ => {}
        }
    }
    let live = licenses.values().map(|license| license.live.len()).sum();
    (grants, violations, live)
}

/// The auditor's fold finds a grant beyond the seats (and only that one),
/// and counts released and expired seats as free.
#[test]
fn the_auditor_finds_a_grant_beyond_the_seats() {
    let issued = json!({"seats": 2, "max_overage_percent": 0});
    let a = json!({"session_id": "a"});
    let b = json!({"session_id": "b"});
    let c = json!({"session_id": "c"});
    let d = json!({"session_id": "d"});
    let log = [
        (1, "license-1", "LicenseIssued", &issued),
        (2, "license-1", "SeatAcquired", &a),
        (3, "license-1", "SeatAcquired", &b),
        (4, "license-1", "SeatReleased", &a),
        (5, "license-1", "SeatAcquired", &c),
        (6, "license-1", "SeatExpired", &b),
        (7, "license-1", "SeatAcquired", &d),
    ];
    // a and b ended; c and d are still live.
    assert_eq!(seat_limit_violations(log), (4, vec![], 2));
    let over = [
        (1, "license-1", "LicenseIssued", &issued),
        (2, "license-1", "SeatAcquired", &a),
        (3, "license-1", "SeatAcquired", &b),
        (4, "license-1", "SeatAcquired", &c),
    ];
    let (_, violations, _) = seat_limit_violations(over);
    assert_eq!(
        violations,
        vec!["position 4: 3 live leases on license-1 allowing 2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_run_with_an_auditor() {
    let duration = Duration::from_secs(
        std::env::var("SEATLEDGER_CHAOS_DURATION_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let seed: u64 = std::env::var("SEATLEDGER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!(
        "chaos: {} s of faults, seed {seed} (SEATLEDGER_CHAOS_SEED={seed} repeats it)",
        duration.as_secs()
    );
    let mut rng = Rng(seed | 1);

    let postgres = Arc::new(
        tokio::task::spawn_blocking(PrivatePostgres::start)
            .await
            .unwrap(),
    );
    let mut redis = PrivateServer::start(common::redis_server).await;
    let mut nats = PrivateServer::start(common::nats_server).await;
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let nats_url = format!("nats://127.0.0.1:{}", nats.port);
    let keys = tempfile::tempdir().unwrap();
    let database = postgres.url();
    let listen: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let flags: Vec<String> = [
        "--redis-url",
        &redis_url,
        "--redis-prefix",
        "chaos:",
        "--nats-url",
        &nats_url,
        "--nats-stream",
        "CHAOS",
        "--rate-limit-seat-ops-per-s",
        "0",
        "--reaper-interval-s",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let start =
        |replica: usize| ServerProcess::start_on(&listen[replica], &database, keys.path(), &flags);
    let mut replicas = vec![start(0), start(1)];
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();

    let token = common::register_at(&bases[0], "chaos@example.com").await;
    let mut license_keys = Vec::new();
    for n in 0..LICENSES {
        let body = json!({"name": format!("L{n}"), "seats": SEATS, "heartbeat_ttl_s": 10});
        license_keys.push(common::issue_at(&bases[n % 2], &token, body).await.1);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let clients: Vec<_> = (0..2 * CLIENTS_PER_REPLICA)
        .map(|n| {
            tokio::spawn(client_loop(
                bases[n % 2].clone(),
                token.clone(),
                license_keys.clone(),
                format!("c{n}"),
                rng.next(),
                stop.clone(),
                tally.clone(),
            ))
        })
        .collect();

    // One fault at a time, each healed before the next.
    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
    let began = Instant::now();
    while began.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(1500))).await;
        let fault = rng.below(5);
        let outage = Duration::from_millis(1000 + rng.below(1500));
        match fault {
            0 | 1 => {
                let replica = fault as usize;
                replicas[replica].kill();
                tokio::time::sleep(outage).await;
                replicas[replica] = tokio::task::block_in_place(|| start(replica));
                *faults
                    .entry("replica killed (kill -9) and restarted")
                    .or_default() += 1;
            }
            2 => {
                redis.kill();
                tokio::time::sleep(outage).await;
                redis.restart().await;
                *faults
                    .entry("Redis killed and restarted empty")
                    .or_default() += 1;
            }
            3 => {
                nats.kill();
                tokio::time::sleep(outage).await;
                nats.restart().await;
                *faults.entry("NATS killed and restarted").or_default() += 1;
            }
            _ => {
                let stopping = postgres.clone();
                tokio::task::spawn_blocking(move || stopping.stop())
                    .await
                    .unwrap();
                tokio::time::sleep(outage).await;
                let starting = postgres.clone();
                tokio::task::spawn_blocking(move || starting.start_again())
                    .await
                    .unwrap();
                *faults
                    .entry("PostgreSQL stopped (immediate) and started")
                    .or_default() += 1;
            }
        }
    }
    // Healed: the workload runs a moment more against a whole system.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    // Settle (both replicas stay up). The log must first stop growing: the
    // reaper appends a SeatExpired for every lease whose client went away
    // (acquires answered by a replica killed before the answer left, the
    // leases held when the workload stopped), up to TTL + its interval
    // after the workload ends. Only once no lease is live can nothing more
    // be appended, and only then does "the followers reach the head" mean
    // they hold the whole log: a head read earlier let the reaper add
    // events after it that a replica stopped before publishing.
    let store = seatledger_ledger::Store::connect(&database).await.unwrap();
    let client = reqwest::Client::new();
    let mut events: Vec<seatledger_schema::RecordedEvent> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        loop {
            let after = events.last().map_or(0, |e| e.position);
            let page = store.read_after(0, after, 10_000).await.unwrap();
            if page.is_empty() {
                break;
            }
            events.extend(page);
        }
        let head = events.last().map_or(0, |e| e.position);
        let (_, _, live) = seat_limit_violations(events.iter().map(|e| {
            (
                e.position,
                e.stream_id.as_str(),
                e.event_type.as_str(),
                &e.payload,
            )
        }));
        let mut hot = false;
        let mut published = false;
        if live == 0 {
            for base in &bases {
                let Ok(response) = client
                    .get(format!("{base}/api/v1/health/ready"))
                    .send()
                    .await
                else {
                    continue;
                };
                let ready: serde_json::Value = response.json().await.unwrap_or_default();
                hot |= ready["redis"] == "ok"
                    && ready["hot_counts"]["position"].as_i64() >= Some(head);
                published |= ready["nats"] == "ok"
                    && ready["event_stream"]["position"].as_i64() >= Some(head);
            }
        }
        if hot && published {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until every lease is reaped ({live} live) and the followers reach the head {head} (hot counts: {hot}, NATS: {published})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for replica in &mut replicas {
        replica.terminate(); // signs the head
    }
    // Nothing was appended meanwhile (no lease was left to expire).
    let (head, _) = store.head(0).await.unwrap();
    assert_eq!(
        Some(head),
        events.last().map(|e| e.position),
        "the log grew after it settled"
    );

    // The auditor.
    let mut invariants: Vec<(String, usize, Vec<String>)> = Vec::new();

    let (grants, over, _) = seat_limit_violations(events.iter().map(|e| {
        (
            e.position,
            e.stream_id.as_str(),
            e.event_type.as_str(),
            &e.payload,
        )
    }));
    invariants.push((
        format!(
            "seat limit at every position ({grants} grants in {} events)",
            events.len()
        ),
        grants,
        over,
    ));

    let tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    let (in_log_acquired, in_log_released) = common::sessions_in_log(&store).await;
    let mut missing = Vec::new();
    for session in &tally.acquired {
        if !in_log_acquired.contains(session) {
            missing.push(format!("answered acquire {session} not in the log"));
        }
    }
    for session in &tally.released {
        if !in_log_released.contains(session) {
            missing.push(format!("answered release {session} not in the log"));
        }
    }
    invariants.push((
        "every answered acquire and release is in the log".into(),
        tally.acquired.len() + tally.released.len(),
        missing,
    ));
    let answered: usize = tally
        .answers
        .iter()
        .filter(|((_, s), _)| s != "transport")
        .map(|(_, n)| n)
        .sum();
    invariants.push((
        "no answer 5xx but 503".into(),
        answered,
        tally.server_errors.clone(),
    ));

    let key = seatledger_ledger::SigningKey::from_file(&keys.path().join("ledger.key")).unwrap();
    let verified = seatledger_replay::verify(&store, 0, (key.key_id(), key.public_key())).await;
    invariants.push((
        "hash chain and signed checkpoints verify".into(),
        events.len(),
        match &verified {
            Ok(_) => vec![],
            Err(error) => vec![error.to_string()],
        },
    ));

    let nats_client = async_nats::connect(nats_url.clone()).await.unwrap();
    let (mut gap, mut stream_problems) = read_stream(&nats_client, head).await;
    // JetStream acknowledges a message before it is on disk (it syncs every
    // 2 minutes by default), so a nats-server killed with SIGKILL can lose
    // acknowledged messages: the consumer stops at the gap. The documented
    // recovery: resend the log from PostgreSQL with the original ids into a
    // new stream. The invariant is checked on the recovered stream; the
    // loss is reported.
    let mut recovered = None;
    if let Some(missing) = gap.take() {
        let jetstream = async_nats::jetstream::new(nats_client.clone());
        let _ = jetstream.delete_stream("CHAOS").await;
        let config = seatledger_projections::NatsConfig {
            stream: "CHAOS".into(),
            ..seatledger_projections::NatsConfig::new(&nats_url)
        };
        match seatledger_projections::nats::republish(
            &store,
            0,
            &jetstream,
            &config,
            1,
            None,
            |_| {},
        )
        .await
        {
            Ok(republished) => recovered = Some((missing, republished.events)),
            Err(error) => stream_problems.push(format!("republish: {error}")),
        }
        (gap, stream_problems) = read_stream(&nats_client, head).await;
    }
    if let Some(missing) = gap {
        stream_problems.push(missing);
    }
    let messages = common::event_messages(nats_client, "CHAOS").await;
    if messages != head as usize {
        stream_problems.push(format!(
            "JetStream holds {messages} event messages for {head} events"
        ));
    }
    invariants.push((
        match &recovered {
            Some(_) => {
                "JetStream holds every event exactly once, in order (after republish)".into()
            }
            None => "JetStream holds every event exactly once, in order".into(),
        },
        head as usize,
        stream_problems,
    ));

    let redis_counts =
        seatledger_projections::RedisLicenses::new(&redis_url, "chaos:", key.key_id(), 0).unwrap();
    let diff = seatledger_replay::diff::diff_hot_counts(&store, 0, &redis_counts, None).await;
    invariants.push((
        "Redis hot counts equal the ledger".into(),
        diff.as_ref().map_or(0, |d| d.licenses),
        match &diff {
            Ok(diff) => diff.differences.iter().map(|d| format!("{d:?}")).collect(),
            Err(error) => vec![error.to_string()],
        },
    ));

    // The summary.
    println!("\n| fault injected | times |\n|---|---:|");
    for (fault, times) in &faults {
        println!("| {fault} | {times} |");
    }
    println!("\n| operation | answer | count |\n|---|---|---:|");
    for ((op, status), count) in &tally.answers {
        println!("| {op} | {status} | {count} |");
    }
    println!("\n| invariant | checked | violations |\n|---|---:|---:|");
    let mut violations = 0;
    for (invariant, checked, found) in &invariants {
        println!("| {invariant} | {checked} | {} |", found.len());
        violations += found.len();
    }
    for (invariant, _, found) in &invariants {
        for violation in found.iter().take(5) {
            println!("VIOLATION ({invariant}): {violation}");
        }
    }
    if let Some((missing, republished)) = &recovered {
        println!("\nJetStream lost acknowledged messages when nats-server was killed ({missing}); the log was republished ({republished} events) and the stream then verified");
    }
    println!("\nchaos: {} faults, {answered} answers, {head} events, {violations} violations (seed {seed})", faults.values().sum::<usize>());
    assert_eq!(violations, 0, "the auditor found violations (seed {seed})");
    assert!(faults.values().sum::<usize>() > 0, "no fault was injected");
}

/// Reads the whole stream `CHAOS` through the consumer library: (the gap
/// it stopped at, if any; other problems).
async fn read_stream(client: &async_nats::Client, head: i64) -> (Option<String>, Vec<String>) {
    let mut consumer = seatledger_projections::EventConsumer::from_start(client.clone(), "CHAOS")
        .await
        .unwrap();
    let mut positions = Vec::new();
    let mut problems = Vec::new();
    let mut gap = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.position(0) < head && Instant::now() < deadline {
        match consumer.fetch(1_000, Duration::from_secs(2)).await {
            Ok(batch) => positions.extend(batch.into_iter().map(|event| event.position)),
            Err(error @ seatledger_projections::ConsumerError::Gap { .. }) => {
                gap = Some(error.to_string());
                break;
            }
            Err(error) => {
                problems.push(error.to_string());
                break;
            }
        }
    }
    if gap.is_none() && positions != (1..=head).collect::<Vec<_>>() {
        problems.push(format!(
            "the consumer saw {} events of {head}, or not in order",
            positions.len()
        ));
    }
    (gap, problems)
}
