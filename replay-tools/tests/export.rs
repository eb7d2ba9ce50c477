//! `export`, `import` and `verify --from-file` on real stores: a round trip
//! PostgreSQL → export → SQLite → export → PostgreSQL keeps every byte, and
//! each of six tamperings is detected, exit 1, naming the position or
//! stream, both in a database (a fresh copy per tampering) and in an
//! export file.

mod common;

use common::{
    drop_database, export_text, fresh_database, import_cli, key_arg, ledger, snapshot_stream_of,
    write_file,
};
use seatledger_ledger::SigningKey;
use seatledger_replay::export::{self, ExportRange};
use std::sync::Arc;

#[sqlx::test(migrations = false)]
async fn postgres_to_sqlite_to_postgres_keeps_every_byte_and_verifies(pool: sqlx::PgPool) {
    let source = common::pg_store(pool.clone()).await;
    let key = Arc::new(SigningKey::generate().unwrap());
    ledger(&source, key.clone()).await;
    let first = export_text(&source, ExportRange::default()).await;
    assert!(first.contains("\"snapshot\":"), "a snapshot is exported");
    assert!(
        first.contains("\"checkpoint\":"),
        "checkpoints are exported"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = write_file(&dir, "first.jsonl", &first);
    let sqlite = format!("sqlite:{}", dir.path().join("copy.db").display());
    let key = key_arg(&key);
    let (code, out, err) = import_cli(&sqlite, &file, &key);
    assert_eq!(code, Some(0), "{out}{err}");
    let (ok, out, err) =
        common::replay(&["verify", "--database-url", &sqlite, "--public-key", &key]);
    assert!(ok, "{out}{err}");
    // The other tools read the file as they read the store.
    for args in [
        vec!["usage", "--granularity", "hour"],
        vec!["at", "--position", "500", "--json"],
        vec![
            "simulate",
            "--license",
            "00000000-0000-0000-0000-000000000000",
            "--seats",
            "1",
        ],
    ] {
        let mut from_store = args.clone();
        from_store.extend(["--database-url", &sqlite]);
        let mut from_file = args.clone();
        from_file.extend(["--from-file", &file]);
        let (store_code, store_out, _) = common::replay_code(&from_store);
        let (file_code, file_out, err) = common::replay_code(&from_file);
        assert_eq!(
            (store_code, &store_out),
            (file_code, &file_out),
            "{args:?}: {err}"
        );
    }
    let (ok, second, err) = common::replay(&["export", "--database-url", &sqlite]);
    assert!(ok, "{err}");
    assert_eq!(first, second, "SQLite exports the bytes PostgreSQL did");

    let postgres = fresh_database(&pool).await;
    let file = write_file(&dir, "second.jsonl", &second);
    let (code, out, err) = import_cli(&postgres, &file, &key);
    assert_eq!(code, Some(0), "{out}{err}");
    let (ok, out, err) =
        common::replay(&["verify", "--database-url", &postgres, "--public-key", &key]);
    assert!(ok, "{out}{err}");
    let (ok, third, err) = common::replay(&["export", "--database-url", &postgres]);
    assert!(ok, "{err}");
    assert_eq!(first, third, "and PostgreSQL again");
    let (ok, out, err) = common::replay(&[
        "verify",
        "--from-file",
        &file,
        "--public-key",
        &key,
        "--json",
    ]);
    assert!(ok, "{out}{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (head, _) = source.head(0).await.unwrap();
    assert_eq!(summary["events"], head);

    // Importing again into a store that holds events is refused.
    let (code, _, err) = import_cli(&postgres, &file, &key);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("an empty store"), "{err}");
    drop_database(&pool, &postgres).await;
}

/// One organization's export: not a chain (the header says so), each
/// event's hash verified alone; only that organization's events.
#[sqlx::test(migrations = false)]
async fn a_per_organization_export_verifies_event_by_event(pool: sqlx::PgPool) {
    let store = common::pg_store(pool).await;
    let key = Arc::new(SigningKey::generate().unwrap());
    let (_, second_org) = ledger(&store, key.clone()).await;
    let text = export_text(
        &store,
        ExportRange {
            org: Some(second_org.into()),
            ..ExportRange::default()
        },
    )
    .await;
    let header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["header"]["chain"], false);
    assert!(header["header"]["description"]
        .as_str()
        .unwrap()
        .contains("not a chain"));
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter_map(|line| line.get("event").cloned())
        .collect();
    assert!(events.len() >= 11, "{}", events.len());
    assert!(events
        .iter()
        .all(|event| event["tenant_id"] == second_org.to_string()));
    let verified = export::verify_file(text.as_bytes(), (key.key_id(), key.public_key()))
        .await
        .unwrap();
    assert_eq!(verified.verified.events, events.len() as i64);
    // An edited event of it is still caught.
    let edited = text.replacen("\"hardware_id\":\"m1\"", "\"hardware_id\":\"mX\"", 1);
    assert_ne!(edited, text);
    let error = export::verify_file(edited.as_bytes(), (key.key_id(), key.public_key()))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("hash does not match"), "{error}");
}

/// The position of the first event line whose text contains `needle`.
fn position_of(text: &str, needle: &str) -> i64 {
    text.lines()
        .filter(|line| line.starts_with("{\"event\":") && line.contains(needle))
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["event"]["position"]
                .as_i64()
                .unwrap()
        })
        .next()
        .unwrap()
}

/// Each tampering, on a fresh copy of the database (imported from the
/// intact export) with the append-only triggers disabled by the
/// superuser, and on the export file: verify exits 1 and names the right
/// position or stream.
#[sqlx::test(migrations = false)]
async fn six_tamperings_are_detected_in_a_database_and_in_an_export_file(pool: sqlx::PgPool) {
    let source = common::pg_store(pool.clone()).await;
    let signing = Arc::new(SigningKey::generate().unwrap());
    ledger(&source, signing.clone()).await;
    let intact = export_text(&source, ExportRange::default()).await;
    let key = key_arg(&signing);
    let dir = tempfile::tempdir().unwrap();
    let intact_file = write_file(&dir, "intact.jsonl", &intact);
    let (head, _) = source.head(0).await.unwrap();
    let edited = position_of(&intact, "\"hardware_id\":\"m7\"");
    let snapshot_stream = snapshot_stream_of(&intact);
    let checkpoint = intact
        .lines()
        .find(|line| line.starts_with("{\"checkpoint\":"))
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["checkpoint"]["position"]
                .as_i64()
                .unwrap()
        })
        .unwrap();

    // (what, SQL on a copy, what verify must say)
    let cases: Vec<(&str, String, String)> = vec![
        (
            "one payload byte changed",
            format!("UPDATE events SET payload = jsonb_set(payload, '{{hardware_id}}', '\"m8\"') WHERE position = {edited}"),
            format!("position {edited}: hash does not match"),
        ),
        (
            "a row deleted",
            format!("DELETE FROM events WHERE position = {edited}"),
            format!("position {}: expected position {edited}", edited + 1),
        ),
        (
            "two rows swapped",
            format!(
                "UPDATE events SET position = -1 WHERE position = {edited}; \
                 UPDATE events SET position = {edited} WHERE position = {next}; \
                 UPDATE events SET position = {next} WHERE position = -1",
                next = edited + 1
            ),
            format!("position {edited}: prev_hash does not link"),
        ),
        (
            "a forged row inserted",
            format!(
                "INSERT INTO events SELECT partition, {forged}, gen_random_uuid(), stream_id, \
                 stream_version + 100000, tenant_id, event_type, schema_version, payload, metadata, \
                 occurred_at, recorded_at, hash, hash FROM events WHERE position = {head}",
                forged = head + 1
            ),
            format!("position {}: hash does not match", head + 1),
        ),
        (
            "a checkpoint signature altered",
            format!("UPDATE checkpoints SET signature = set_byte(signature, 0, get_byte(signature, 0) # 1) WHERE position = {checkpoint}"),
            format!("checkpoint at position {checkpoint}: signature does not verify"),
        ),
        (
            "a stored snapshot altered",
            format!("UPDATE snapshots SET state = (state::jsonb || '{{\"status\": \"suspended\"}}'::jsonb)::text WHERE stream_id = '{snapshot_stream}'"),
            format!("stream {snapshot_stream}: the snapshot"),
        ),
    ];
    for (what, sql, expected) in &cases {
        let copy = fresh_database(&pool).await;
        let (code, out, err) = import_cli(&copy, &intact_file, &key);
        assert_eq!(code, Some(0), "{what}: {out}{err}");
        let copy_pool = sqlx::PgPool::connect(&copy).await.unwrap();
        sqlx::raw_sql(&format!(
            "ALTER TABLE events DISABLE TRIGGER ALL; ALTER TABLE checkpoints DISABLE TRIGGER ALL; \
             {sql}; ALTER TABLE events ENABLE TRIGGER ALL; ALTER TABLE checkpoints ENABLE TRIGGER ALL"
        ))
        .execute(&copy_pool)
        .await
        .unwrap();
        copy_pool.close().await;
        let (code, out, err) =
            common::replay_code(&["verify", "--database-url", &copy, "--public-key", &key]);
        assert_eq!(code, Some(1), "{what}: {out}{err}");
        assert!(
            err.contains(expected.as_str()),
            "{what}: expected {expected:?} in {err}"
        );
        drop_database(&pool, &copy).await;
    }

    // The same six on the export file.
    let lines: Vec<&str> = intact.lines().collect();
    let event_line = |position: i64| {
        lines
            .iter()
            .position(|line| {
                line.starts_with("{\"event\":")
                    && line.contains(&format!("\"position\":{position},"))
            })
            .unwrap()
    };
    let edit = |change: &dyn Fn(&mut Vec<String>)| {
        let mut lines: Vec<String> = lines.iter().map(|line| line.to_string()).collect();
        change(&mut lines);
        lines.join("\n") + "\n"
    };
    let at = event_line(edited);
    let after = event_line(edited + 1);
    let last = event_line(head);
    let checkpoint_line = lines
        .iter()
        .position(|line| {
            line.starts_with("{\"checkpoint\":")
                && line.contains(&format!("\"position\":{checkpoint},"))
        })
        .unwrap();
    let snapshot_line = lines
        .iter()
        .position(|line| line.starts_with("{\"snapshot\":"))
        .unwrap();
    let file_cases: Vec<(&str, String, String)> = vec![
        (
            "one payload byte changed",
            edit(&|lines| {
                lines[at] = lines[at].replace("\"hardware_id\":\"m7\"", "\"hardware_id\":\"m8\"")
            }),
            format!("position {edited}: hash does not match"),
        ),
        (
            "a line deleted",
            edit(&|lines| {
                lines.remove(at);
            }),
            format!("position {}: expected position {edited}", edited + 1),
        ),
        (
            "two lines swapped",
            edit(&|lines| lines.swap(at, after)),
            format!("position {}: expected position {edited}", edited + 1),
        ),
        (
            "a forged line inserted",
            edit(&|lines| {
                let forged = lines[last].replace(
                    &format!("\"position\":{head},"),
                    &format!("\"position\":{},", head + 1),
                );
                lines.insert(last + 1, forged);
            }),
            format!("position {}: prev_hash does not link", head + 1),
        ),
        (
            "a checkpoint signature altered",
            edit(&|lines| {
                let line = &lines[checkpoint_line];
                let at = line.find("\"signature\":\"").unwrap() + 13;
                let flipped = if &line[at..at + 1] == "0" { "1" } else { "0" };
                lines[checkpoint_line] = format!("{}{flipped}{}", &line[..at], &line[at + 1..]);
            }),
            format!("checkpoint at position {checkpoint}: signature does not verify"),
        ),
        (
            "a snapshot altered",
            edit(&|lines| {
                lines[snapshot_line] = lines[snapshot_line].replacen(
                    "\"status\":\"active\"",
                    "\"status\":\"suspended\"",
                    1,
                )
            }),
            format!("stream {snapshot_stream}: the snapshot"),
        ),
    ];
    for (what, text, expected) in &file_cases {
        assert_ne!(text, &intact, "{what}: the edit changed the file");
        let file = write_file(&dir, "tampered.jsonl", text);
        let (code, out, err) =
            common::replay_code(&["verify", "--from-file", &file, "--public-key", &key]);
        assert_eq!(code, Some(1), "{what}: {out}{err}");
        assert!(
            err.contains(expected.as_str()),
            "{what}: expected {expected:?} in {err}"
        );
    }
    let (ok, out, err) =
        common::replay(&["verify", "--from-file", &intact_file, "--public-key", &key]);
    assert!(ok, "the intact file verifies: {out}{err}");
    // Without a pinned key, a file is a usage error.
    let (code, _, err) = common::replay_code(&["verify", "--from-file", &intact_file]);
    assert_eq!(code, Some(2), "{err}");
}
