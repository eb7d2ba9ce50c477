//! Criterion micro-benchmarks of the hot pure paths: decide + evolve per
//! command kind, canonical encoding + chain hash per event, the Ed25519
//! seat token, and the billing fold per event.
//! `cargo bench -p seatledger-benches`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use seatledger_api::tokens::{self, SeatClaims};
use seatledger_ledger::domain::{
    decide, evolve, Command, HardwareId, HeartbeatTtl, Name, OveragePercent, SeatCount, StreamState,
};
use seatledger_ledger::SigningKey;
use seatledger_projections::{nats, BillingFold, Granularity, NatsConfig};
use seatledger_schema::canonical::{canonical_bytes, expected_hash};
use seatledger_schema::{
    ChainHash, Event, Metadata, RecordedEvent, ReleaseReason, SeatAcquired, SeatHeartbeat,
    SeatReleased, Timestamp,
};
use seatledger_schema::{LicenseId, OrgId};
use seatledger_schema::{SessionId, UserId};
use std::hint::black_box;
use uuid::Uuid;

const ORG: OrgId = OrgId::from_u128(1);
const LICENSE: LicenseId = LicenseId::from_u128(2);

fn now() -> Timestamp {
    Timestamp::from_micros_saturating(1_800_000_000_000_000)
}

fn acquire(machine: u128) -> Command {
    Command::AcquireSeat {
        credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
        token_id: None,
        license_id: LICENSE,
        session_id: SessionId::from_u128(0x10_0000 + machine),
        user_id: UserId::from_u128(machine),
        hardware_id: HardwareId::parse(&format!("machine-{machine}")).unwrap(),
    }
}

/// Applies `command` and returns the new state.
fn apply(state: StreamState, command: &Command) -> StreamState {
    let decision = decide(&state, ORG, command, now());
    decision.events.iter().fold(state, evolve)
}

/// A license with `seats` seats and `held` live leases.
fn license(seats: u32, held: u128) -> StreamState {
    let issue = Command::IssueLicense {
        client_auth: Default::default(),
        license_id: LICENSE,
        name: Name::parse("bench").unwrap(),
        seats: SeatCount::new(seats).unwrap(),
        expires_at: None,
        heartbeat_ttl_s: HeartbeatTtl::default(),
        max_overage_percent: OveragePercent::default(),
    };
    (0..held).fold(apply(StreamState::Empty, &issue), |state, machine| {
        apply(state, &acquire(machine))
    })
}

fn decide_and_evolve(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide+evolve");
    group.throughput(Throughput::Elements(1));
    for held in [10u128, 10_000] {
        let state = license(100_000, held);
        group.bench_function(format!("acquire (license holding {held} leases)"), |b| {
            b.iter_batched(
                || state.clone(),
                |state| apply(state, black_box(&acquire(held + 1))),
                BatchSize::LargeInput,
            )
        });
        let heartbeat = Command::Heartbeat {
            license_id: LICENSE,
            session_id: SessionId::from_u128(0x10_0000),
            by: seatledger_ledger::domain::SeatActor::Unchecked,
        };
        group.bench_function(format!("heartbeat (license holding {held} leases)"), |b| {
            b.iter_batched(
                || state.clone(),
                |state| apply(state, black_box(&heartbeat)),
                BatchSize::LargeInput,
            )
        });
        let release = Command::ReleaseSeat {
            license_id: LICENSE,
            session_id: SessionId::from_u128(0x10_0000),
            by: seatledger_ledger::domain::SeatActor::Unchecked,
        };
        group.bench_function(format!("release (license holding {held} leases)"), |b| {
            b.iter_batched(
                || state.clone(),
                |state| apply(state, black_box(&release)),
                BatchSize::LargeInput,
            )
        });
    }
    let full = license(10, 10);
    group.bench_function("denied acquire (full license)", |b| {
        b.iter_batched(
            || full.clone(),
            |state| apply(state, black_box(&acquire(99))),
            BatchSize::SmallInput,
        )
    });
    // decide alone, no clone of the state: what the appender pays per command.
    let state = license(100_000, 10_000);
    group.bench_function("decide only: heartbeat (10000 leases)", |b| {
        let heartbeat = Command::Heartbeat {
            license_id: LICENSE,
            session_id: SessionId::from_u128(0x10_0000),
            by: seatledger_ledger::domain::SeatActor::Unchecked,
        };
        b.iter(|| decide(black_box(&state), ORG, black_box(&heartbeat), now()))
    });
    group.finish();
}

fn sample_event() -> RecordedEvent {
    RecordedEvent {
        partition: 0,
        position: 123_456,
        event_id: Uuid::now_v7(),
        stream_id: format!("license-{LICENSE}"),
        stream_version: 4_242,
        org_id: ORG,
        event_type: "SeatAcquired".into(),
        schema_version: 1,
        payload: serde_json::json!({
            "session_id": Uuid::now_v7(), "generation": 4242, "user_id": Uuid::now_v7(),
            "hardware_id": "machine-0042", "expires_at": now().plus_seconds(360), "overage": false
        }),
        metadata: Metadata {
            actor: Some(format!("user:{}", Uuid::now_v7())),
            correlation_id: None,
            request_id: None,
        },
        occurred_at: now(),
        recorded_at: now(),
        prev_hash: ChainHash([7; 32]),
        hash: ChainHash::GENESIS,
    }
}

fn hashing(c: &mut Criterion) {
    let mut group = c.benchmark_group("chain");
    group.throughput(Throughput::Elements(1));
    let event = sample_event();
    group.bench_function("canonical bytes", |b| {
        b.iter(|| canonical_bytes(black_box(&event)))
    });
    group.bench_function("canonical bytes + SHA-256 chain hash", |b| {
        b.iter(|| expected_hash(black_box(&event)))
    });
    group.finish();
}

/// What the NATS publisher prepares per event: subject, headers, body.
fn nats_message(c: &mut Criterion) {
    let mut group = c.benchmark_group("nats message");
    group.throughput(Throughput::Elements(1));
    let event = sample_event();
    let config = NatsConfig::new("nats://127.0.0.1:4222");
    group.bench_function("subject + headers + JSON body", |b| {
        b.iter(|| nats::message(black_box(&config), black_box(&event)))
    });
    group.bench_function("JSON body only (serde_json::to_vec)", |b| {
        b.iter(|| serde_json::to_vec(black_box(&event)))
    });
    group.finish();
}

fn seat_tokens(c: &mut Criterion) {
    let mut group = c.benchmark_group("seat token");
    group.throughput(Throughput::Elements(1));
    let key = SigningKey::generate().unwrap();
    let claims = SeatClaims {
        license_id: LICENSE,
        session_id: SessionId::now_v7(),
        org_id: ORG,
        user_id: UserId::now_v7(),
        hardware_id: "machine-0042".into(),
        seats_total: 25,
        issued_at: now(),
        expires_at: now().plus_seconds(360),
    };
    group.bench_function("sign (canonical claims + Ed25519)", |b| {
        b.iter(|| tokens::sign(&key, black_box(&claims)))
    });
    let bytes = tokens::canonical_claims(&claims);
    let signature = key.sign(&bytes);
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ED25519,
        key.public_key().to_vec(),
    );
    group.bench_function("verify (Ed25519)", |b| {
        b.iter(|| {
            public
                .verify(black_box(&bytes), black_box(&signature))
                .is_ok()
        })
    });
    group.finish();
}

/// A day of seat traffic on one license: 500 machines, each session an
/// acquire, a heartbeat a minute for an hour, and a release; sessions
/// start a minute apart, so about 60 leases are held at once.
fn seat_traffic() -> Vec<RecordedEvent> {
    let mut timed: Vec<(Timestamp, Event)> = Vec::new();
    for machine in 0..500u128 {
        let session_id = Uuid::from_u128(0x10_0000 + machine);
        let start = now().plus_seconds(60 * machine as i64);
        timed.push((
            start,
            Event::SeatAcquired(SeatAcquired {
                token_id: None,
                session_id: session_id.into(),
                generation: machine as u64 + 1,
                user_id: UserId::from_u128(machine % 50),
                hardware_id: format!("machine-{machine}"),
                expires_at: start.plus_seconds(360),
                overage: false,
            }),
        ));
        for minute in 1..=60 {
            let at = start.plus_seconds(60 * minute);
            timed.push((
                at,
                Event::SeatHeartbeat(SeatHeartbeat {
                    session_id: session_id.into(),
                    expires_at: at.plus_seconds(360),
                }),
            ));
        }
        timed.push((
            start.plus_seconds(3_630),
            Event::SeatReleased(SeatReleased {
                session_id: session_id.into(),
                reason: ReleaseReason::Client,
            }),
        ));
    }
    timed.sort_by_key(|(at, _)| *at);
    timed
        .into_iter()
        .enumerate()
        .map(|(i, (at, event))| RecordedEvent {
            partition: 0,
            position: i as i64 + 1,
            event_id: Uuid::from_u128(i as u128),
            stream_id: format!("license-{LICENSE}"),
            stream_version: i as i64 + 1,
            org_id: ORG,
            event_type: event.event_type().into(),
            schema_version: event.schema_version(),
            payload: event.payload(),
            metadata: Metadata::default(),
            occurred_at: at,
            recorded_at: at,
            prev_hash: ChainHash::GENESIS,
            hash: ChainHash::GENESIS,
        })
        .collect()
}

fn billing(c: &mut Criterion) {
    let mut group = c.benchmark_group("billing fold");
    let records = seat_traffic();
    let events: Vec<Event> = records.iter().map(|r| r.event().unwrap()).collect();
    group.throughput(Throughput::Elements(records.len() as u64));
    for granularity in [Granularity::Hour, Granularity::Month] {
        group.bench_function(
            format!("apply recorded event ({granularity:?} periods)"),
            |b| {
                b.iter(|| {
                    let mut fold = BillingFold::new(granularity);
                    for record in &records {
                        fold.apply(black_box(record)).unwrap();
                    }
                    fold
                })
            },
        );
    }
    group.bench_function("apply decoded event (Hour periods)", |b| {
        b.iter(|| {
            let mut fold = BillingFold::new(Granularity::Hour);
            for (record, event) in records.iter().zip(&events) {
                fold.apply_event(ORG, LICENSE, record.occurred_at, black_box(event));
            }
            fold
        })
    });
    group.finish();
}

/// What writing a large license's snapshot costs the appender: the
/// serialization it does under the partition lock, against a copy of the
/// state (what handing the serialization to another task would cost it).
fn snapshots(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot (license holding 100000 leases)");
    group.sample_size(10);
    let state = license(100_000, 100_000);
    let bytes = serde_json::to_string(&state).unwrap().len();
    println!("snapshot of 100000 leases: {bytes} bytes of JSON");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("serialize (serde_json::to_string)", |b| {
        b.iter(|| serde_json::to_string(black_box(&state)).unwrap())
    });
    group.bench_function("clone the state", |b| b.iter(|| black_box(&state).clone()));
    group.finish();
}

criterion_group!(
    benches,
    snapshots,
    decide_and_evolve,
    hashing,
    nats_message,
    seat_tokens,
    billing
);
criterion_main!(benches);
