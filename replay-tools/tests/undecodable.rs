//! Issue 8: one undecodable event (planted with a valid hash chain, as a
//! bug of an older version could have written it) breaks neither another
//! organization's usage nor goes unnoticed by `verify`. Run through the
//! real `seatledger-replay` binary on SQLite, and through the library on
//! PostgreSQL.

mod common;
#[path = "../../ledger/tests/common/plant.rs"]
mod plant;

use base64::Engine;
use seatledger_ledger::domain::{
    Command, HardwareId, HeartbeatTtl, Name, OveragePercent, SeatCount,
};
use seatledger_ledger::{
    Appender, AppenderConfig, CommitNotifier, SigningKey, Store, Submission, SystemClock,
};
use seatledger_projections::Granularity;
use seatledger_schema::LicenseId;
use seatledger_schema::OrgId;
use seatledger_schema::{SessionId, UserId};
use std::sync::Arc;
use uuid::Uuid;

const HEALTHY: OrgId = OrgId::from_u128(0xA);
const BROKEN: OrgId = OrgId::from_u128(0xB);

/// Each organization gets a license with one lease; the broken one then
/// gets an undecodable event. Returns the planted event's position.
async fn two_orgs_one_broken(store: &Store, key: Arc<SigningKey>) -> (Uuid, i64) {
    let (appender, task) = Appender::start(
        store.clone(),
        key,
        Arc::new(SystemClock),
        CommitNotifier::default(),
        AppenderConfig::default(),
    );
    let mut licenses = Vec::new();
    for org in [HEALTHY, BROKEN] {
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
        let acquire = Command::AcquireSeat {
            credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
            token_id: None,
            license_id: license_id.into(),
            session_id: SessionId::now_v7(),
            user_id: UserId::now_v7(),
            hardware_id: HardwareId::parse("m1").unwrap(),
        };
        for command in [issue, acquire] {
            let result = appender
                .submit(Submission::new(org, command))
                .await
                .unwrap();
            assert!(result.is_accepted());
        }
        licenses.push(license_id);
    }
    drop(appender);
    task.await.unwrap();
    let position =
        plant::plant_undecodable_event(store, BROKEN, &format!("license-{}", licenses[1])).await;
    (licenses[0], position)
}

#[tokio::test]
async fn usage_of_a_healthy_org_works_and_verify_names_the_undecodable_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(&dir).await;
    let key = Arc::new(SigningKey::generate().unwrap());
    let (healthy_license, position) = two_orgs_one_broken(&store, key.clone()).await;
    let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
    let healthy = HEALTHY.to_string();
    let broken = BROKEN.to_string();

    let (ok, stdout, stderr) = common::replay(&[
        "usage",
        "--database-url",
        &url,
        "--org",
        &healthy,
        "--format",
        "json",
    ]);
    assert!(ok, "usage --org <healthy org> succeeds: {stderr}");
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["license_id"], healthy_license.to_string());
    assert!(stderr.contains("other organizations skipped"), "{stderr}");

    let (ok, stdout, stderr) = common::replay(&["usage", "--database-url", &url, "--org", &broken]);
    assert!(!ok, "the broken org's usage is incomplete: {stdout}");
    assert!(stderr.contains(&format!("position {position}")), "{stderr}");

    let public_key = format!(
        "{}:{}",
        key.key_id(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.public_key())
    );
    let (ok, _, stderr) = common::replay(&[
        "verify",
        "--database-url",
        &url,
        "--public-key",
        &public_key,
    ]);
    assert!(!ok, "verify fails on an undecodable event");
    assert!(
        stderr.contains(&format!("event at position {position} cannot be decoded")),
        "{stderr}"
    );
}

#[sqlx::test(migrations = false)]
async fn usage_reports_the_undecodable_event_and_keeps_other_orgs_on_postgres(pool: sqlx::PgPool) {
    let store = common::pg_store(pool).await;
    let key = Arc::new(SigningKey::generate().unwrap());
    let (healthy_license, position) = two_orgs_one_broken(&store, key.clone()).await;
    let report = seatledger_replay::usage(&store, 0, Granularity::Day, None)
        .await
        .unwrap();
    assert_eq!(report.incomplete_orgs(), vec![BROKEN]);
    assert_eq!(report.undecodable[0].position, position);
    let licenses: Vec<LicenseId> = report.rows.iter().map(|row| row.license_id).collect();
    assert_eq!(licenses, vec![LicenseId::from(healthy_license)]);
    let error = seatledger_replay::verify(&store, 0, (key.key_id(), key.public_key()))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains(&format!("position {position}")),
        "{error}"
    );
}
