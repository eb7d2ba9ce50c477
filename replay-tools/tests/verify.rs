//! `verify` on a real log: accepts an intact one, rejects a tampered one.

mod common;

use seatledger_ledger::domain::{
    Command, HardwareId, HeartbeatTtl, Name, OveragePercent, SeatCount,
};
use seatledger_ledger::{
    Appender, AppenderConfig, CommitNotifier, SigningKey, Store, Submission, SystemClock,
};
use seatledger_schema::{SessionId, UserId};
use std::sync::Arc;
use uuid::Uuid;

async fn ledger_with_events(store: &Store, key: Arc<SigningKey>) {
    let config = AppenderConfig {
        checkpoint_every_events: 5,
        batch_max: 1,
        ..AppenderConfig::default()
    };
    let (appender, task) = Appender::start(
        store.clone(),
        key,
        Arc::new(SystemClock),
        CommitNotifier::default(),
        config,
    );
    let org = Uuid::now_v7();
    let license_id = Uuid::now_v7();
    let issue = Command::IssueLicense {
        client_auth: Default::default(),
        license_id: license_id.into(),
        name: Name::parse("IDE").unwrap(),
        seats: SeatCount::new(50).unwrap(),
        expires_at: None,
        heartbeat_ttl_s: HeartbeatTtl::default(),
        max_overage_percent: OveragePercent::default(),
    };
    appender
        .submit(Submission::new(org.into(), issue))
        .await
        .unwrap();
    for machine in 0..20 {
        let acquire = Command::AcquireSeat {
            credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
            token_id: None,
            license_id: license_id.into(),
            session_id: SessionId::now_v7(),
            user_id: UserId::now_v7(),
            hardware_id: HardwareId::parse(&format!("m{machine}")).unwrap(),
        };
        appender
            .submit(Submission::new(org.into(), acquire))
            .await
            .unwrap();
    }
    drop(appender);
    task.await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn verify_accepts_an_intact_log_and_its_checkpoints(pool: sqlx::PgPool) {
    let store = common::pg_store(pool).await;
    let key = Arc::new(SigningKey::generate().unwrap());
    ledger_with_events(&store, key.clone()).await;
    let verified = seatledger_replay::verify(&store, 0, (key.key_id(), key.public_key()))
        .await
        .unwrap();
    assert_eq!(verified.events, 21);
    assert!(verified.checkpoints >= 4, "{verified:?}");
    let other = SigningKey::generate().unwrap();
    assert!(
        seatledger_replay::verify(&store, 0, (key.key_id(), other.public_key()))
            .await
            .is_err()
    );
}

/// Builds a SQLite ledger, lets a tamperer who can drop the guard
/// `trigger` run `tampering`, and returns what `verify` says.
async fn verify_after_tampering(trigger: &str, tampering: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(&dir).await;
    let key = Arc::new(SigningKey::generate().unwrap());
    ledger_with_events(&store, key.clone()).await;
    let pool = store.sqlite_pool().unwrap();
    sqlx::query(&format!("DROP TRIGGER {trigger}"))
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(tampering).execute(pool).await.unwrap();
    let error = seatledger_replay::verify(&store, 0, (key.key_id(), key.public_key()))
        .await
        .unwrap_err();
    error.to_string()
}

#[tokio::test]
async fn verify_rejects_an_edited_event_in_sqlite() {
    let error = verify_after_tampering(
        "events_no_update",
        "UPDATE events SET payload = replace(payload, '\"m7\"', '\"m8\"') WHERE position = 9",
    )
    .await;
    assert!(error.contains("position 9"), "{error}");
}

#[tokio::test]
async fn verify_rejects_a_deleted_event_in_sqlite() {
    let error =
        verify_after_tampering("events_no_delete", "DELETE FROM events WHERE position = 9").await;
    assert!(
        error.contains("position 10: expected position 9"),
        "{error}"
    );
}

/// A SQLite path that does not exist is a usage error (exit 2) naming it,
/// and no file appears: the tools never create a database.
#[test]
fn a_missing_sqlite_file_is_a_usage_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.db");
    let url = format!("sqlite:{}", path.display());
    for command in ["verify", "usage"] {
        let (code, _, err) = common::replay_code(&[command, "--database-url", &url]);
        assert_eq!(code, Some(2), "{command}: {err}");
        assert!(err.contains("does not exist"), "{command}: {err}");
        assert!(!path.exists(), "{command} created {}", path.display());
    }
}

/// verify without --public-key on a database that holds no key refuses,
/// and writes nothing (it used to insert a new key into what it audits).
#[tokio::test]
async fn verify_never_writes_a_key_into_the_database_it_audits() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(&dir).await;
    let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
    let (ok, _, err) = common::replay(&["verify", "--database-url", &url]);
    assert!(!ok);
    assert!(err.contains("--public-key KEY_ID:BASE64URL"), "{err}");
    assert_eq!(store.stored_signing_key().await.unwrap(), None);
}

/// A license stream past a snapshot (1,000 events): verify replays it and
/// compares; an edited snapshot, or a `streams` row whose version is not
/// where its events end, fails and is named (neither is covered by the
/// hash chain).
#[tokio::test]
async fn verify_checks_snapshots_and_stream_versions() {
    async fn ledger(dir: &tempfile::TempDir, key: Arc<SigningKey>) -> Store {
        let store = common::sqlite_store(dir).await;
        let (appender, task) = Appender::start(
            store.clone(),
            key,
            Arc::new(SystemClock),
            CommitNotifier::default(),
            AppenderConfig::default(),
        );
        let org = Uuid::now_v7();
        let license_id = Uuid::now_v7();
        let issue = Command::IssueLicense {
            client_auth: Default::default(),
            license_id: license_id.into(),
            name: Name::parse("IDE").unwrap(),
            seats: SeatCount::new(5).unwrap(),
            expires_at: None,
            heartbeat_ttl_s: HeartbeatTtl::default(),
            max_overage_percent: OveragePercent::default(),
        };
        appender
            .submit(Submission::new(org.into(), issue))
            .await
            .unwrap();
        let session_id = Uuid::now_v7();
        let acquire = Command::AcquireSeat {
            credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
            token_id: None,
            license_id: license_id.into(),
            session_id: session_id.into(),
            user_id: UserId::now_v7(),
            hardware_id: HardwareId::parse("m1").unwrap(),
        };
        appender
            .submit(Submission::new(org.into(), acquire))
            .await
            .unwrap();
        for _ in 0..1_010 {
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
        drop(appender);
        task.await.unwrap();
        store
    }
    let key = Arc::new(SigningKey::generate().unwrap());
    let verify = |store: Store| {
        let key = key.clone();
        async move { seatledger_replay::verify(&store, 0, (key.key_id(), key.public_key())).await }
    };

    let dir = tempfile::tempdir().unwrap();
    let store = ledger(&dir, key.clone()).await;
    let snapshots: i64 = sqlx::query_scalar("SELECT count(*) FROM snapshots")
        .fetch_one(store.sqlite_pool().unwrap())
        .await
        .unwrap();
    assert_eq!(snapshots, 1, "the license stream has a snapshot");
    verify(store.clone()).await.unwrap();
    sqlx::query("UPDATE snapshots SET state = replace(state, '\"status\":\"active\"', '\"status\":\"suspended\"')")
        .execute(store.sqlite_pool().unwrap())
        .await
        .unwrap();
    let error = verify(store.clone()).await.unwrap_err().to_string();
    assert!(
        error.contains("snapshot") && error.contains("license-"),
        "{error}"
    );
    // The same when the stream's replayed state is over the lease budget
    // and its snapshot is checked in a pass of its own.
    let key_pair = (key.key_id(), key.public_key());
    let error = seatledger_replay::verify_with_budget(&store, 0, key_pair, 0, |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("snapshot") && error.contains("license-"),
        "{error}"
    );
    let intact_dir = tempfile::tempdir().unwrap();
    let intact = ledger(&intact_dir, key.clone()).await;
    seatledger_replay::verify_with_budget(&intact, 0, key_pair, 0, |_| {})
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = ledger(&dir, key.clone()).await;
    sqlx::query("UPDATE streams SET version = version + 1 WHERE stream_id LIKE 'license-%'")
        .execute(store.sqlite_pool().unwrap())
        .await
        .unwrap();
    let error = verify(store).await.unwrap_err().to_string();
    assert!(error.contains("streams row says version"), "{error}");
}
