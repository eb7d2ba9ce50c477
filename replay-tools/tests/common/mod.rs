//! Stores for the replay-tool tests (a migrated one per test) and running
//! the `seatledger-replay` binary.
#![allow(dead_code)]

use base64::Engine;
use seatledger_ledger::domain::{
    Command, HardwareId, HeartbeatTtl, Name, OveragePercent, SeatCount,
};
use seatledger_ledger::{
    Appender, AppenderConfig, CommitNotifier, SigningKey, Store, Submission, SystemClock,
};
use seatledger_replay::export::{self, ExportRange};
use seatledger_schema::UserId;
use std::sync::Arc;
use uuid::Uuid;

/// A migrated SQLite store in `dir`.
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

/// A migrated store on the test's PostgreSQL database.
pub async fn pg_store(pool: sqlx::PgPool) -> Store {
    let store = Store::from_pg_pool(pool);
    store.migrate().await.unwrap();
    store
}

/// Runs `seatledger-replay` with `args`: (success, stdout, stderr).
pub fn replay(args: &[&str]) -> (bool, String, String) {
    let (code, out, err) = replay_code(args);
    (code == Some(0), out, err)
}

/// The `seatledger-replay` binary: this package's, or in the system tests
/// (which include this module) their build of the same command line.
fn replay_binary() -> &'static str {
    option_env!("CARGO_BIN_EXE_seatledger-replay")
        .or(option_env!("CARGO_BIN_EXE_replay-cli"))
        .expect("a test target of a package with the auditor tools' binary")
}

/// Runs `seatledger-replay` with `args`: (exit code, stdout, stderr).
pub fn replay_code(args: &[&str]) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(replay_binary())
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A URL of the test's PostgreSQL database, for the binary.
pub fn pg_url(pool: &sqlx::PgPool) -> String {
    let options = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    )
}

/// Two organizations; one license stream past its first snapshot (1,000
/// events) with 20 leases; checkpoints every 100 events.
pub async fn ledger(store: &Store, key: Arc<SigningKey>) -> (Uuid, Uuid) {
    let config = AppenderConfig {
        checkpoint_every_events: 100,
        ..AppenderConfig::default()
    };
    let (appender, task) = Appender::start(
        store.clone(),
        key,
        Arc::new(SystemClock),
        CommitNotifier::default(),
        config,
    );
    let orgs = (Uuid::now_v7(), Uuid::now_v7());
    let mut sessions = Vec::new();
    let mut licenses = Vec::new();
    for (org, seats) in [(orgs.0, 50), (orgs.1, 3)] {
        let license_id = Uuid::now_v7();
        let issue = Command::IssueLicense {
            client_auth: Default::default(),
            license_id: license_id.into(),
            name: Name::parse("IDE").unwrap(),
            seats: SeatCount::new(seats).unwrap(),
            expires_at: None,
            heartbeat_ttl_s: HeartbeatTtl::default(),
            max_overage_percent: OveragePercent::default(),
        };
        appender
            .submit(Submission::new(org.into(), issue))
            .await
            .unwrap();
        licenses.push((org, license_id));
    }
    for machine in 0..20 {
        let (org, license_id) = licenses[machine % 2];
        let session_id = Uuid::now_v7();
        let acquire = Command::AcquireSeat {
            credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
            token_id: None,
            license_id: license_id.into(),
            session_id: session_id.into(),
            user_id: UserId::now_v7(),
            hardware_id: HardwareId::parse(&format!("m{machine}")).unwrap(),
        };
        appender
            .submit(Submission::new(org.into(), acquire))
            .await
            .unwrap();
        if org == orgs.0 {
            sessions.push((org, license_id, session_id));
        }
    }
    // Past the snapshot mark of the first license's stream.
    let beats: Vec<_> = (0..8)
        .map(|worker| {
            let appender = appender.clone();
            let sessions = sessions.clone();
            tokio::spawn(async move {
                for n in 0..130 {
                    let (org, license_id, session_id) = sessions[(worker + n) % sessions.len()];
                    let beat = Command::Heartbeat {
                        license_id: license_id.into(),
                        session_id: session_id.into(),
                        by: seatledger_ledger::domain::SeatActor::Unchecked,
                    };
                    appender
                        .submit(Submission::new(org.into(), beat))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for beat in beats {
        beat.await.unwrap();
    }
    drop(appender);
    task.await.unwrap();
    orgs
}

pub fn key_arg(key: &SigningKey) -> String {
    format!(
        "{}:{}",
        key.key_id(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.public_key())
    )
}

pub async fn export_text(store: &Store, range: ExportRange) -> String {
    let mut out = Vec::new();
    export::export(store, 0, range, &mut out, |_| {})
        .await
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// A new, empty PostgreSQL database beside the test's own: its URL.
pub async fn fresh_database(pool: &sqlx::PgPool) -> String {
    let name = format!("seatledger_copy_{}", Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(pool)
        .await
        .unwrap();
    let url = pg_url(pool);
    let (server, _) = url.rsplit_once('/').unwrap();
    format!("{server}/{name}")
}

pub async fn drop_database(pool: &sqlx::PgPool, url: &str) {
    let (_, name) = url.rsplit_once('/').unwrap();
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(pool)
        .await
        .unwrap();
}

/// `seatledger-replay import` of `file` into `url`: (exit code, stdout, stderr).
pub fn import_cli(url: &str, file: &str, key: &str) -> (Option<i32>, String, String) {
    replay_code(&[
        "import",
        "--database-url",
        url,
        "--from-file",
        file,
        "--public-key",
        key,
    ])
}

pub fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The stream of the first snapshot line of an export.
pub fn snapshot_stream_of(export: &str) -> String {
    export
        .lines()
        .find(|line| line.starts_with("{\"snapshot\":"))
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["snapshot"]["stream_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .unwrap()
}
