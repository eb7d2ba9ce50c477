//! Retention on both stores: segments sealed by compaction, archived as
//! files, pruned from the database by `seatledger admin prune`; refusals of
//! a missing, altered or partial archive; every license deciding as before
//! after a restart; the sessions a prune keeps for the lookup, forgotten
//! once they end.

use seatledger_ledger::archive::{self, read_archive};
use seatledger_ledger::domain::{
    Command, HardwareId, HeartbeatTtl, Name, OveragePercent, SeatActor, SeatCount, StreamState,
};
use seatledger_ledger::{
    Appender, AppenderConfig, CommitNotifier, SigningKey, Store, StoreError, Submission,
    SystemClock,
};
use seatledger_schema::UserId;
use seatledger_schema::{canonical_bytes, Event, RecordedEvent};
use seatledger_schema::{LicenseId, OrgId, SessionId};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// Keys in files, as the server and `admin prune` read them.
struct Keys {
    ledger: Arc<SigningKey>,
    ledger_file: PathBuf,
    token_file: PathBuf,
}

fn keys(dir: &Path) -> Keys {
    let document = SigningKey::generate_pkcs8().unwrap();
    let ledger_file = dir.join("ledger.key");
    std::fs::write(&ledger_file, &document).unwrap();
    let token_file = dir.join("token.key");
    std::fs::write(&token_file, SigningKey::generate_pkcs8().unwrap()).unwrap();
    Keys {
        ledger: Arc::new(SigningKey::from_pkcs8(&document).unwrap()),
        ledger_file,
        token_file,
    }
}

/// An appender on `store` signing a checkpoint every 100 events.
fn start_appender(store: &Store, key: Arc<SigningKey>) -> (Appender, tokio::task::JoinHandle<()>) {
    Appender::start(
        store.clone(),
        key,
        Arc::new(SystemClock),
        CommitNotifier::default(),
        AppenderConfig {
            checkpoint_every_events: 100,
            ..AppenderConfig::default()
        },
    )
}

/// What the log holds: licenses with live sessions (acquired first, so in
/// the first segment) kept alive by heartbeats past 1,000 events, with a
/// checkpoint every 100.
struct Log {
    licenses: Vec<(Uuid, Uuid)>,
    sessions: Vec<(OrgId, LicenseId, SessionId)>,
}

async fn write_log(store: &Store, key: Arc<SigningKey>) -> Log {
    let (appender, task) = start_appender(store, key);
    let mut licenses = Vec::new();
    for seats in [50, 5] {
        let org = Uuid::now_v7();
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
    let mut sessions = Vec::new();
    for machine in 0..10 {
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
        let done = appender
            .submit(Submission::new(org.into(), acquire))
            .await
            .unwrap();
        assert!(done.rejection.is_none());
        sessions.push((org.into(), license_id.into(), session_id.into()));
    }
    heartbeats(&appender, &sessions, 1_100).await;
    drop(appender);
    task.await.unwrap();
    Log { licenses, sessions }
}

/// Compacts everything signed, with segments of about 300 events.
async fn compact(store: &Store) {
    while store.compact(0, 1, 50, 300).await.unwrap().is_some() {}
}

fn prune_cli(url: &str, keys: &Keys, dir: &Path, before: i64) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_seatledger"))
        .args(["admin", "prune", "--database-url", url])
        .arg("--signing-key")
        .arg(&keys.ledger_file)
        .arg("--token-signing-key")
        .arg(&keys.token_file)
        .arg("--archive")
        .arg(dir)
        .args(["--before-position", &before.to_string()])
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn all_events(store: &Store) -> Vec<RecordedEvent> {
    let (head, _) = store.head(0).await.unwrap();
    store.read_range(0, 0, head).await.unwrap()
}

async fn states(store: &Store, log: &Log) -> Vec<(i64, StreamState)> {
    let mut states = Vec::new();
    for (org, license_id) in &log.licenses {
        states.push(
            store
                .stream_state(&format!("license-{license_id}"))
                .await
                .unwrap(),
        );
        states.push(store.stream_state(&format!("org-{org}")).await.unwrap());
    }
    states
}

async fn no_segment_pruned(store: &Store) -> bool {
    store
        .segments(0)
        .await
        .unwrap()
        .iter()
        .all(|segment| !segment.is_pruned())
}

/// Flips one byte in the middle of `path`.
fn alter(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
}

async fn retention(store: Store, reopen: impl std::future::Future<Output = Store>, url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let log = write_log(&store, keys.ledger.clone()).await;
    compact(&store).await;
    let before = all_events(&store).await;
    let states_before = states(&store, &log).await;
    let segments = store.segments(0).await.unwrap();
    let sealed: Vec<_> = segments.iter().filter(|s| s.is_sealed()).collect();
    assert!(sealed.len() >= 3, "segments sealed: {segments:?}");

    // Archive: one file per sealed segment, each reading back as the
    // store's events; a second run writes nothing.
    let archives = dir.path().join("archive");
    let written = archive::archive(&store, 0, &archives, |_| {})
        .await
        .unwrap();
    assert_eq!(written.len(), sealed.len());
    assert!(archive::archive(&store, 0, &archives, |_| {})
        .await
        .unwrap()
        .is_empty());
    for done in &written {
        let mut read = Vec::new();
        let checked = read_archive(&done.path, None, |events| {
            read.extend_from_slice(events);
            Ok(())
        })
        .unwrap();
        let header = &checked.header;
        let expected = &before[(header.first_position - 1) as usize..header.last_position as usize];
        assert_eq!(read.len(), expected.len());
        for (read, stored) in read.iter().zip(expected) {
            assert_eq!(canonical_bytes(read), canonical_bytes(stored));
            assert_eq!((read.position, read.hash), (stored.position, stored.hash));
        }
        assert_eq!(checked.sha256, done.archive.sha256);
    }
    let second = &sealed[1];
    let cut = second.last_position.unwrap();
    let second_file = archives.join(archive::file_name(0, second.segment));

    // A missing archive: exit 1, nothing pruned (not even the first).
    let aside = dir.path().join("aside");
    std::fs::rename(&second_file, &aside).unwrap();
    let (code, _, err) = prune_cli(url, &keys, &archives, cut);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("has no archive"), "{err}");
    assert!(no_segment_pruned(&store).await);
    // Altered: exit 1, nothing pruned.
    std::fs::copy(&aside, &second_file).unwrap();
    alter(&second_file);
    let (code, _, err) = prune_cli(url, &keys, &archives, cut);
    assert_eq!(code, Some(1), "{err}");
    assert!(no_segment_pruned(&store).await);
    // Partial (a write cut short): exit 1, nothing pruned.
    let whole = std::fs::read(&aside).unwrap();
    std::fs::write(&second_file, &whole[..whole.len() * 2 / 3]).unwrap();
    let (code, _, err) = prune_cli(url, &keys, &archives, cut);
    assert_eq!(code, Some(1), "{err}");
    assert!(no_segment_pruned(&store).await);
    std::fs::rename(&aside, &second_file).unwrap();

    // Pruned through the second segment, each prune recorded.
    let head_before = store.head(0).await.unwrap().0;
    let (code, out, err) = prune_cli(url, &keys, &archives, cut);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.matches("pruned segment").count(), 2, "{out}");
    let pruned: Vec<_> = store
        .segments(0)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.is_pruned())
        .map(|s| s.segment)
        .collect();
    assert_eq!(pruned, vec![sealed[0].segment, second.segment]);
    let recorded = store.read_after(0, head_before, 100).await.unwrap();
    let prunes: Vec<_> = recorded
        .iter()
        .filter_map(|event| match event.event().unwrap() {
            Event::LogPruned(pruned) => Some(pruned),
            _ => None,
        })
        .collect();
    assert_eq!(prunes.len(), 2);
    assert_eq!(prunes[1].last_position, cut);
    assert_eq!(
        prunes[1].archive_sha256,
        archive::hex_of(&written[1].archive.sha256)
    );
    // Again: nothing left to prune.
    let (code, out, _) = prune_cli(url, &keys, &archives, cut);
    assert_eq!(code, Some(0));
    assert!(out.contains("no archived segment to prune"), "{out}");

    // After a restart: pruned events are refused as pruned, the rest read
    // as before, every license and org in the same state, and a session
    // granted in the first segment still heartbeats.
    drop(store);
    let store = reopen.await;
    match store.read_range(0, 0, 10).await {
        Err(StoreError::Pruned { pruned_through, .. }) => assert_eq!(pruned_through, cut),
        other => panic!("a read of pruned events: {other:?}"),
    }
    let rest = store.read_range(0, cut, head_before).await.unwrap();
    assert_eq!(rest, before[cut as usize..head_before as usize].to_vec());
    assert_eq!(states(&store, &log).await, states_before);
    let (org, license_id, session_id) = log.sessions[0];
    assert_eq!(
        store.find_session(session_id).await.unwrap(),
        Some((format!("license-{license_id}"), org))
    );
    let (appender, task) = Appender::start(
        store.clone(),
        keys.ledger.clone(),
        Arc::new(SystemClock),
        CommitNotifier::default(),
        AppenderConfig::default(),
    );
    let beat = Command::Heartbeat {
        license_id,
        session_id,
        by: SeatActor::Unchecked,
    };
    let done = appender.submit(Submission::new(org, beat)).await.unwrap();
    assert_eq!(done.rejection, None);
    drop(appender);
    task.await.unwrap();

    // The prune kept every session still live; once one ends, the next
    // prune forgets it and keeps the others.
    let kept = kept_sessions(&store).await;
    let live: Vec<SessionId> = log.sessions.iter().map(|s| s.2).collect();
    assert_eq!(kept, sorted(live.clone()));
    let (appender, task) = start_appender(&store, keys.ledger.clone());
    let release = Command::ReleaseSeat {
        license_id,
        session_id,
        by: SeatActor::Unchecked,
    };
    let done = appender
        .submit(Submission::new(org, release))
        .await
        .unwrap();
    assert_eq!(done.rejection, None);
    heartbeats(&appender, &log.sessions[1..], 700).await;
    drop(appender);
    task.await.unwrap();
    compact(&store).await;
    archive::archive(&store, 0, &archives, |_| {})
        .await
        .unwrap();
    let newest = store
        .segments(0)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|s| s.last_position)
        .max()
        .unwrap();
    assert!(newest > head_before, "a segment sealed after the release");
    let (code, out, err) = prune_cli(url, &keys, &archives, newest);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(kept_sessions(&store).await, sorted(live[1..].to_vec()));
    assert_eq!(store.find_session(session_id).await.unwrap(), None);
    let (org, license_id, session_id) = log.sessions[1];
    assert_eq!(
        store.find_session(session_id).await.unwrap(),
        Some((format!("license-{license_id}"), org))
    );
}

async fn kept_sessions(store: &Store) -> Vec<SessionId> {
    sorted(
        store
            .pruned_sessions()
            .await
            .unwrap()
            .into_iter()
            .map(|(session_id, _, _)| session_id)
            .collect(),
    )
}

fn sorted(mut ids: Vec<SessionId>) -> Vec<SessionId> {
    ids.sort();
    ids
}

#[sqlx::test(migrations = false)]
async fn segments_are_archived_pruned_and_licenses_decide_the_same_on_postgres(pool: sqlx::PgPool) {
    let options = pool.connect_options();
    let url = format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap()
    );
    let store = Store::from_pg_pool(pool);
    store.migrate().await.unwrap();
    let reopen = Store::connect(&url);
    retention(store, async { reopen.await.unwrap() }, &url).await;
}

#[tokio::test]
async fn segments_are_archived_pruned_and_licenses_decide_the_same_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let reopen = Store::connect(&url);
    retention(store, async { reopen.await.unwrap() }, &url).await;
}

/// `count` heartbeats, cycling over `sessions` (organization, license,
/// session).
async fn heartbeats(appender: &Appender, sessions: &[(OrgId, LicenseId, SessionId)], count: usize) {
    for n in 0..count {
        let (org, license_id, session_id) = sessions[n % sessions.len()];
        let beat = Command::Heartbeat {
            license_id,
            session_id,
            by: SeatActor::Unchecked,
        };
        appender.submit(Submission::new(org, beat)).await.unwrap();
    }
}
