//! Helpers shared by the ledger's integration tests.
#![allow(dead_code)]

use seatledger_ledger::domain::{
    Command, HardwareId, HeartbeatTtl, Name, OveragePercent, SeatCount,
};
use seatledger_ledger::{
    Appender, AppenderConfig, Clock, CommandResult, CommitNotifier, SigningKey, Store, Submission,
    SystemClock,
};
use seatledger_schema::OrgId;
use seatledger_schema::{verify_chain, ChainHash, RecordedEvent};
use seatledger_schema::{LicenseId, SessionId, UserId};
use std::sync::Arc;

pub const ORG: OrgId = OrgId::from_u128(0xA11CE);

pub fn start(
    store: &Store,
    key: Arc<SigningKey>,
    clock: Arc<dyn Clock>,
    config: AppenderConfig,
) -> Appender {
    Appender::start(store.clone(), key, clock, CommitNotifier::default(), config).0
}

pub fn start_default(store: &Store) -> (Appender, Arc<SigningKey>) {
    let key = Arc::new(SigningKey::generate().unwrap());
    (
        start(
            store,
            key.clone(),
            Arc::new(SystemClock),
            AppenderConfig::default(),
        ),
        key,
    )
}

pub fn issue(license_id: LicenseId, seats: u32) -> Command {
    Command::IssueLicense {
        client_auth: Default::default(),
        license_id,
        name: Name::parse("IDE").unwrap(),
        seats: SeatCount::new(seats).unwrap(),
        expires_at: None,
        heartbeat_ttl_s: HeartbeatTtl::new(60).unwrap(),
        max_overage_percent: OveragePercent::default(),
    }
}

pub fn acquire(license_id: LicenseId, machine: usize) -> Command {
    Command::AcquireSeat {
        credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
        token_id: None,
        license_id,
        session_id: SessionId::now_v7(),
        user_id: UserId::from_u128(machine as u128),
        hardware_id: HardwareId::parse(&format!("machine-{machine}")).unwrap(),
    }
}

pub async fn submit(appender: &Appender, command: Command) -> CommandResult {
    appender
        .submit(Submission::new(ORG, command))
        .await
        .unwrap()
}

pub async fn read_all(store: &Store) -> Vec<RecordedEvent> {
    let mut events = Vec::new();
    loop {
        let after = events.last().map_or(0, |e: &RecordedEvent| e.position);
        let batch = store.read_after(0, after, 10_000).await.unwrap();
        if batch.is_empty() {
            return events;
        }
        events.extend(batch);
    }
}

/// Positions 1..=n without gaps, every link and hash verifying.
pub async fn assert_chain_verifies(store: &Store) -> Vec<RecordedEvent> {
    let events = read_all(store).await;
    let (last, hash) = verify_chain(0, ChainHash::GENESIS, &events).expect("chain verifies");
    assert_eq!(last, events.len() as i64);
    assert_eq!(store.head(0).await.unwrap(), (last, hash));
    events
}

pub async fn second_pg_store(pool: &sqlx::PgPool) -> Store {
    let options = (*pool.connect_options()).clone();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .unwrap();
    Store::from_pg_pool(pool)
}

pub async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
    let store = Store::connect(&format!(
        "sqlite:{}",
        dir.path().join("ledger.db").display()
    ))
    .await
    .unwrap();
    store.migrate().await.unwrap();
    store
}

mod plant;
#[allow(unused_imports)]
pub use plant::{plant_event, plant_undecodable_event};
