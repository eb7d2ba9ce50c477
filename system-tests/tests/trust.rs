//! Tamper evidence against whoever holds the database: a
//! witness keeps the signed heads a real server serves; then, on a fresh
//! copy of the database per attack, an attacker with full access to the
//! database (triggers disabled, but without the ledger key, which lives in
//! a file) tampers, and `verify --trusted-checkpoints` detects every attack
//! and names it, where the verify of before (no witness, no bound on the
//! unsigned tail) passed four of the six. Also: checkpoints refuse UPDATE
//! and DELETE, and the auditor tools leave the database unchanged.

#[path = "../../replay-tools/tests/common/mod.rs"]
mod common;

use clap::Parser;
use common::{
    drop_database, export_text, fresh_database, import_cli, key_arg, ledger, replay_code,
    snapshot_stream_of, write_file,
};
use seatledger_ledger::{SigningKey, Store};
use seatledger_replay::export::ExportRange;
use seatledger_schema::canonical::expected_hash;
use seatledger_schema::Timestamp;
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

#[derive(Parser)]
struct Serve {
    #[command(flatten)]
    args: seatledger_api::ServeArgs,
}

/// The real server on the test's database (a pool of its own, as a
/// process of its own would have) with the key files in `dir`, on a free
/// loopback port: its base URL, and what stops it.
async fn serve(
    pool: &sqlx::PgPool,
    dir: &Path,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let ledger = dir.join("ledger.key");
    let token = dir.join("token.key");
    let serve = Serve::parse_from([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--signing-key",
        ledger.to_str().unwrap(),
        "--token-signing-key",
        token.to_str().unwrap(),
    ]);
    let store = Store::connect(&common::pg_url(pool)).await.unwrap();
    let server =
        seatledger_api::Server::start(store, &serve.args, Arc::new(seatledger_ledger::SystemClock))
            .await
            .unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    (base, stop, task)
}

/// `seatledger-replay` with `args` on a blocking thread, so a server on
/// this test's runtime can answer it.
async fn replay_beside_server(args: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        replay_code(&args)
    })
    .await
    .unwrap()
}

/// After an attacker's edit of events: `streams` rows made to agree with
/// the events again (what a careful attacker does, so that only what the
/// chain and the witness prove is left to catch them).
const REPAIR_STREAMS: &str = "\
    DELETE FROM streams s WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = s.stream_id); \
    UPDATE streams s SET version = (SELECT max(e.stream_version) FROM events e WHERE e.stream_id = s.stream_id); \
    DELETE FROM snapshots p WHERE NOT EXISTS \
      (SELECT 1 FROM streams s WHERE s.stream_id = p.stream_id AND s.version >= p.version)";

#[derive(Debug, Clone, Copy)]
enum Attack {
    DeleteTailAndItsCheckpoints,
    AppendForgedEvent,
    DeleteAllCheckpoints,
    RewriteSecondHalf,
    ResignCheckpoints,
    AlterSnapshot,
    AddMetadataKey,
}

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::DeleteTailAndItsCheckpoints => {
                "delete the last 30 events and their checkpoints"
            }
            Attack::AppendForgedEvent => "append a forged event with a correct hash",
            Attack::DeleteAllCheckpoints => "delete every checkpoint",
            Attack::RewriteSecondHalf => {
                "rewrite the second half with recomputed hashes, drop its checkpoints"
            }
            Attack::ResignCheckpoints => "re-sign every checkpoint with another key",
            Attack::AlterSnapshot => "alter a snapshot",
            Attack::AddMetadataKey => "add a metadata key to an event (no hash covers it)",
        }
    }
}

async fn sql(pool: &sqlx::PgPool, statements: &str) {
    sqlx::raw_sql(&format!(
        "ALTER TABLE events DISABLE TRIGGER ALL; ALTER TABLE checkpoints DISABLE TRIGGER ALL; \
         {statements}; \
         ALTER TABLE events ENABLE TRIGGER ALL; ALTER TABLE checkpoints ENABLE TRIGGER ALL"
    ))
    .execute(pool)
    .await
    .unwrap();
}

/// Does `attack` to the copy at `url`, as someone holding its database
/// (and any key but the ledger's) would.
async fn tamper(url: &str, attack: Attack, head: i64, snapshot_stream: &str) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let store = Store::from_pg_pool(pool.clone());
    match attack {
        Attack::DeleteTailAndItsCheckpoints => {
            let cut = head - 30;
            sql(
                &pool,
                &format!(
                    "DELETE FROM events WHERE position > {cut}; \
                     DELETE FROM checkpoints WHERE position > {cut}; {REPAIR_STREAMS}"
                ),
            )
            .await;
        }
        Attack::AppendForgedEvent => {
            // A copy of the last event (a heartbeat), one position and one
            // stream version on, linked and hashed like a real one.
            let last = store.read_range(0, head - 1, head).await.unwrap().remove(0);
            let mut forged = last.clone();
            forged.position = head + 1;
            forged.event_id = Uuid::now_v7();
            forged.stream_version = last.stream_version + 1;
            forged.prev_hash = last.hash;
            forged.recorded_at =
                Timestamp::from_micros_saturating(last.recorded_at.as_micros() + 1_000_000);
            forged.hash = expected_hash(&forged);
            store.import(0, &[forged]).await.unwrap();
        }
        Attack::DeleteAllCheckpoints => sql(&pool, "DELETE FROM checkpoints").await,
        Attack::RewriteSecondHalf => {
            let half = head / 2;
            let mut events = store.read_range(0, half, head).await.unwrap();
            let mut prev = store.read_range(0, half - 1, half).await.unwrap()[0].hash;
            for event in &mut events {
                event.recorded_at =
                    Timestamp::from_micros_saturating(event.recorded_at.as_micros() + 1);
                event.prev_hash = prev;
                event.hash = expected_hash(event);
                prev = event.hash;
            }
            sql(
                &pool,
                &format!(
                    "DELETE FROM events WHERE position > {half}; \
                     DELETE FROM checkpoints WHERE position > {half}; {REPAIR_STREAMS}"
                ),
            )
            .await;
            store.import(0, &events).await.unwrap();
        }
        Attack::ResignCheckpoints => {
            let other = SigningKey::generate().unwrap();
            let checkpoints = store.checkpoints(0).await.unwrap();
            sql(&pool, "DELETE FROM checkpoints").await;
            for checkpoint in checkpoints {
                let forged = other.sign_checkpoint(
                    checkpoint.partition,
                    checkpoint.position,
                    checkpoint.hash,
                    checkpoint.signed_at,
                );
                sqlx::query(
                    "INSERT INTO checkpoints (partition, position, hash, signed_at, key_id, signature) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(forged.partition)
                .bind(forged.position)
                .bind(forged.hash.as_bytes().as_slice())
                .bind(forged.signed_at.to_datetime())
                .bind(&forged.key_id)
                .bind(&forged.signature)
                .execute(&pool)
                .await
                .unwrap();
            }
        }
        Attack::AlterSnapshot => {
            sql(
                &pool,
                &format!(
                    "UPDATE snapshots SET state = (state::jsonb || '{{\"status\": \"suspended\"}}'::jsonb)::text \
                     WHERE stream_id = '{snapshot_stream}'"
                ),
            )
            .await
        }
        Attack::AddMetadataKey => {
            sql(
                &pool,
                &format!(
                    "UPDATE events SET metadata = metadata || '{{\"note\": \"refund approved\"}}'::jsonb \
                     WHERE position = {}",
                    head / 2
                ),
            )
            .await
        }
    }
    pool.close().await;
}

#[sqlx::test(migrations = false)]
async fn every_tampering_is_detected_against_what_a_witness_kept(pool: sqlx::PgPool) {
    let source = common::pg_store(pool.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger_key = Arc::new(SigningKey::from_file(&dir.path().join("ledger.key")).unwrap());
    ledger(&source, ledger_key.clone()).await;
    let (head, _) = source.head(0).await.unwrap();
    let (latest, _) = source.latest_checkpoint(0).await.unwrap().unwrap();
    assert_eq!(
        latest.position, head,
        "the appender signs its head as it stops"
    );
    let key = key_arg(&ledger_key);

    // A witness keeps what the real server serves.
    let (base, stop, server) = serve(&pool, dir.path()).await;
    let witness_file = dir.path().join("witness.jsonl");
    let witness = witness_file.to_str().unwrap();
    let (code, out, err) = replay_beside_server(&[
        "witness",
        "--url",
        &base,
        "--store",
        witness,
        "--public-key",
        &key,
        "--once",
    ])
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("the last at position {head}")),
        "{out}"
    );
    let kept = seatledger_replay::witness::read_store(&witness_file).unwrap();
    assert_eq!(kept, source.checkpoints(0).await.unwrap());
    let _ = stop.send(());
    server.await.unwrap().unwrap();

    let intact = export_text(&source, ExportRange::default()).await;
    let intact_file = write_file(&dir, "intact.jsonl", &intact);
    let snapshot_stream = snapshot_stream_of(&intact);
    let verify = |url: &str, with_witness: bool| {
        let mut args = vec!["verify", "--database-url", url, "--public-key", &key];
        if with_witness {
            args.extend([
                "--trusted-checkpoints",
                witness,
                "--max-unsigned-events",
                "0",
            ]);
        } else {
            // The verify of before: no witness, no bound on the tail.
            args.extend(["--max-unsigned-events", "1000000000"]);
        }
        replay_code(&args)
    };

    let copy = fresh_database(&pool).await;
    let (code, out, err) = import_cli(&copy, &intact_file, &key);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = verify(&copy, true);
    assert_eq!(code, Some(0), "the untampered copy passes: {out}{err}");
    drop_database(&pool, &copy).await;

    // (attack, exit status of the verify of before, what verify says now)
    let cases = [
        (
            Attack::DeleteTailAndItsCheckpoints,
            0,
            "events were removed from its end".to_owned(),
        ),
        (
            Attack::AppendForgedEvent,
            0,
            "1 event(s) follow the last signed checkpoint".to_owned(),
        ),
        (
            Attack::DeleteAllCheckpoints,
            0,
            "which the log no longer holds".to_owned(),
        ),
        (
            Attack::RewriteSecondHalf,
            0,
            "but a witness kept a signed head there".to_owned(),
        ),
        (
            Attack::ResignCheckpoints,
            1,
            "which is not the key given".to_owned(),
        ),
        (
            Attack::AlterSnapshot,
            1,
            format!("stream {snapshot_stream}: the snapshot"),
        ),
        (
            Attack::AddMetadataKey,
            1,
            format!("the event at position {}: metadata", head / 2),
        ),
    ];
    println!("| attack | before: exit | now: exit | now: message |");
    println!("|---|---:|---:|---|");
    for (attack, before, expected) in &cases {
        let copy = fresh_database(&pool).await;
        let (code, out, err) = import_cli(&copy, &intact_file, &key);
        assert_eq!(code, Some(0), "{attack:?}: {out}{err}");
        tamper(&copy, *attack, head, &snapshot_stream).await;
        let (old_code, old_out, old_err) = verify(&copy, false);
        let (code, out, err) = verify(&copy, true);
        println!(
            "| {} | {} | {} | {} |",
            attack.name(),
            old_code.unwrap_or(-1),
            code.unwrap_or(-1),
            err.trim()
        );
        assert_eq!(
            old_code,
            Some(*before),
            "{attack:?} without a witness: {old_out}{old_err}"
        );
        assert_eq!(code, Some(1), "{attack:?}: {out}{err}");
        assert!(
            err.contains(expected.as_str()),
            "{attack:?}: expected {expected:?} in {err}"
        );
        if matches!(attack, Attack::DeleteTailAndItsCheckpoints) {
            // The same, from an export of the tampered copy.
            let file = dir.path().join("tampered.jsonl");
            let (code, out, err) = replay_code(&[
                "export",
                "--database-url",
                &copy,
                "--output",
                file.to_str().unwrap(),
            ]);
            assert_eq!(code, Some(0), "{out}{err}");
            let (code, out, err) = replay_code(&[
                "verify",
                "--from-file",
                file.to_str().unwrap(),
                "--public-key",
                &key,
                "--trusted-checkpoints",
                witness,
            ]);
            assert_eq!(code, Some(1), "{out}{err}");
            assert!(err.contains(expected.as_str()), "{err}");
        }
        drop_database(&pool, &copy).await;
    }
    let (code, out, err) = replay_code(&[
        "verify",
        "--from-file",
        &intact_file,
        "--public-key",
        &key,
        "--trusted-checkpoints",
        witness,
        "--max-unsigned-events",
        "0",
    ]);
    assert_eq!(code, Some(0), "the intact export passes: {out}{err}");
}

/// The witness fails loudly, keeping nothing more, when the ledger serves
/// a shorter log than it saw, or a changed head.
#[sqlx::test(migrations = false)]
async fn the_witness_fails_loudly_when_the_ledger_contradicts_it(pool: sqlx::PgPool) {
    let source = common::pg_store(pool.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger_key = Arc::new(SigningKey::from_file(&dir.path().join("ledger.key")).unwrap());
    ledger(&source, ledger_key.clone()).await;
    let (head, _) = source.head(0).await.unwrap();
    let key = key_arg(&ledger_key);
    let witness_file = dir.path().join("witness.jsonl");
    let witness = witness_file.to_str().unwrap().to_owned();
    let poll = |base: String| {
        let (witness, key) = (witness.clone(), key.clone());
        async move {
            replay_beside_server(&[
                "witness",
                "--url",
                &base,
                "--store",
                &witness,
                "--public-key",
                &key,
                "--once",
            ])
            .await
        }
    };
    let (base, stop, server) = serve(&pool, dir.path()).await;
    let (code, out, err) = poll(base.clone()).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, _) = poll(base.clone()).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("kept 0 new signed heads"), "{out}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let kept = std::fs::read_to_string(&witness_file).unwrap();

    // The event the last head signs is rewritten in place.
    sql(
        &pool,
        &format!("UPDATE events SET hash = prev_hash WHERE position = {head}"),
    )
    .await;
    let (base, stop, server) = serve(&pool, dir.path()).await;
    let (code, out, err) = poll(base.clone()).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("INCONSISTENT"), "{err}");
    assert!(
        err.contains(&format!(
            "the event at position {head} no longer has the hash"
        )),
        "{err}"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();

    // The tail and its checkpoints are deleted: the log got shorter.
    sql(
        &pool,
        &format!(
            "DELETE FROM events WHERE position > {cut}; DELETE FROM checkpoints WHERE position > {cut}",
            cut = head - 150
        ),
    )
    .await;
    let (base, stop, server) = serve(&pool, dir.path()).await;
    let (code, out, err) = poll(base.clone()).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("the log got shorter"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&witness_file).unwrap(),
        kept,
        "nothing kept after an inconsistency"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// UPDATE, DELETE (and on PostgreSQL TRUNCATE) of `checkpoints` fail in
/// the database, on both stores.
#[sqlx::test(migrations = false)]
async fn checkpoints_are_append_only_in_the_database(pool: sqlx::PgPool) {
    let store = common::pg_store(pool.clone()).await;
    let key = Arc::new(SigningKey::generate().unwrap());
    ledger(&store, key.clone()).await;
    for statement in [
        "UPDATE checkpoints SET signed_at = now()",
        "DELETE FROM checkpoints",
        "TRUNCATE checkpoints",
    ] {
        let error = sqlx::query(statement).execute(&pool).await.unwrap_err();
        assert!(
            error.to_string().contains("append-only"),
            "{statement}: {error}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let sqlite = common::sqlite_store(&dir).await;
    ledger(&sqlite, key).await;
    let sqlite_pool = sqlite.sqlite_pool().unwrap();
    for statement in [
        "UPDATE checkpoints SET signed_at = 0",
        "DELETE FROM checkpoints",
    ] {
        let error = sqlx::query(statement)
            .execute(sqlite_pool)
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("append-only"),
            "{statement}: {error}"
        );
    }
    assert!(!store.checkpoints(0).await.unwrap().is_empty());
    assert!(!sqlite.checkpoints(0).await.unwrap().is_empty());
}

/// Row count and checksum of every table of the database.
async fn fingerprint(pool: &sqlx::PgPool) -> Vec<(String, i64, String)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = Vec::new();
    for table in tables {
        let (count, sum): (i64, Option<String>) = sqlx::query_as(&format!(
            "SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM \"{table}\" t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.push((table, count, sum.unwrap_or_default()));
    }
    out
}

/// verify (and the other read-only tools) leave the database as they
/// found it: every table's rows and checksum are the same after.
#[sqlx::test(migrations = false)]
async fn the_auditor_tools_leave_the_database_unchanged(pool: sqlx::PgPool) {
    let store = common::pg_store(pool.clone()).await;
    let key = Arc::new(SigningKey::generate().unwrap());
    ledger(&store, key.clone()).await;
    let url = common::pg_url(&pool);
    let before = fingerprint(&pool).await;
    assert!(before
        .iter()
        .any(|(table, rows, _)| table == "events" && *rows > 1_000));
    let key = key_arg(&key);
    // (arguments, exit status): verify without a key refuses.
    for (args, expected) in [
        (
            vec!["verify", "--database-url", &url, "--public-key", &key],
            0,
        ),
        (vec!["verify", "--database-url", &url], 1),
        (
            vec!["export", "--database-url", &url, "--output", "/dev/null"],
            0,
        ),
        (vec!["usage", "--database-url", &url], 0),
        (vec!["at", "--database-url", &url, "--position", "100"], 0),
    ] {
        let (code, out, err) = replay_code(&args);
        assert_eq!(code, Some(expected), "{args:?}: {out}{err}");
    }
    assert_eq!(fingerprint(&pool).await, before);
}
