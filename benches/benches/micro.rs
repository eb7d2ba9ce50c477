//! Criterion micro-benchmarks of the hot pure paths: decide + evolve per
//! command kind, canonical encoding + chain hash per event, and the Ed25519
//! seat token. `cargo bench -p seatledger-benches`.
//!
//! Billing folds are not benchmarked yet: the billing projection does not
//! exist.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use seatledger_api::tokens::{self, SeatClaims};
use seatledger_ledger::domain::{
    decide, evolve, Command, HardwareId, HeartbeatTtl, Name, OveragePercent, SeatCount, StreamState,
};
use seatledger_ledger::SigningKey;
use seatledger_schema::canonical::{canonical_bytes, expected_hash};
use seatledger_schema::{ChainHash, Metadata, RecordedEvent, Timestamp};
use std::hint::black_box;
use uuid::Uuid;

const ORG: Uuid = Uuid::from_u128(1);
const LICENSE: Uuid = Uuid::from_u128(2);

fn now() -> Timestamp {
    Timestamp::from_micros(1_800_000_000_000_000)
}

fn acquire(machine: u128) -> Command {
    Command::AcquireSeat {
        license_id: LICENSE,
        session_id: Uuid::from_u128(0x10_0000 + machine),
        user_id: Uuid::from_u128(machine),
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
            session_id: Uuid::from_u128(0x10_0000),
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
            session_id: Uuid::from_u128(0x10_0000),
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
            session_id: Uuid::from_u128(0x10_0000),
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
        tenant_id: ORG,
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

fn seat_tokens(c: &mut Criterion) {
    let mut group = c.benchmark_group("seat token");
    group.throughput(Throughput::Elements(1));
    let key = SigningKey::generate().unwrap();
    let claims = SeatClaims {
        license_id: LICENSE,
        session_id: Uuid::now_v7(),
        org_id: ORG,
        user_id: Uuid::now_v7(),
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

criterion_group!(benches, decide_and_evolve, hashing, seat_tokens);
criterion_main!(benches);
