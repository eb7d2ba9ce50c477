//! The tools across archive files and the live tail, on both stores: after
//! a prune, `verify`, `at`, `usage`, `simulate`, `export`, `rebuild`,
//! `diff` and `republish` given `--archive` answer what they answered
//! before it; without it they fail naming the flag; `verify --archive`
//! catches a missing, altered or substituted file; `verify
//! --since-checkpoint` checks the events after a trusted checkpoint only.

mod common;

use seatledger_ledger::archive;
use seatledger_ledger::{Appender, AppenderConfig, CommitNotifier, SigningKey, Store, SystemClock};
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

/// Runs `seatledger-replay` with `args` and `--database-url url`, and with
/// `--archive dir` when given.
fn tool(url: &str, archive: Option<&Path>, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    all.extend(["--database-url".into(), url.into()]);
    if let Some(dir) = archive {
        all.extend(["--archive".into(), dir.display().to_string()]);
    }
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    common::replay_code(&all)
}

/// The output of a tool that must succeed.
fn ok(url: &str, archive: Option<&Path>, args: &[&str]) -> String {
    let (code, out, err) = tool(url, archive, args);
    assert_eq!(code, Some(0), "{args:?}: {err}");
    out
}

/// Asserts two outputs are equal, showing the first line that differs.
fn same(got: &str, expected: &str, what: &str) {
    if got != expected {
        let (line, (a, b)) = got
            .lines()
            .zip(expected.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .unwrap_or((0, ("(lengths differ)", "")));
        panic!("{what}: line {line} differs:\n{a}\n{b}");
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Recompresses an archive file at another zstd level: the same content,
/// still a valid archive, but not the file whose SHA-256 the prune
/// recorded.
fn recompress(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let plain = zstd::stream::decode_all(&bytes[..]).unwrap();
    std::fs::write(path, zstd::stream::encode_all(&plain[..], 1).unwrap()).unwrap();
}

async fn across_archives(store: Store, url: &str) {
    let key = Arc::new(SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap());
    let key_arg = common::key_arg(&key);
    let (org, _) = common::ledger(&store, key.clone()).await;
    while store.compact(0, 1, 50, 300).await.unwrap().is_some() {}
    let (head_before, _) = store.head(0).await.unwrap();
    let first = store.read_range(0, 0, 1).await.unwrap().remove(0);
    let license = first.stream_id.strip_prefix("license-").unwrap().to_owned();
    let last = store
        .read_range(0, head_before - 1, head_before)
        .await
        .unwrap()
        .remove(0);
    let as_of = last.recorded_at.to_string();
    let head_text = head_before.to_string();
    // Short of the head: an export to the head is a whole log (with stream
    // rows), and the head moves with the prunes.
    let short_text = (head_before - 1).to_string();
    // What the tools answer before anything is pruned, bounded to today's
    // head (the prunes append events).
    let questions: Vec<Vec<&str>> = vec![
        vec!["at", "--position", "500", "--json"],
        vec!["at", "--position", &head_text, "--json"],
        vec!["usage", "--as-of", &as_of, "--format", "json"],
        vec![
            "simulate",
            "--license",
            &license,
            "--seats",
            "3",
            "--to",
            &as_of,
            "--json",
        ],
        vec!["export", "--to-position", &short_text],
    ];
    let answers: Vec<String> = questions.iter().map(|q| ok(url, None, q)).collect();
    let org_text = org.to_string();
    let org_export = ok(
        url,
        None,
        &["export", "--org", &org_text, "--to-position", &short_text],
    );

    // Archive every sealed segment, prune the first two.
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("archive");
    let (code, out, err) = common::replay_code(&[
        "archive",
        "--database-url",
        url,
        "--to",
        files.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("archived segment 1 "), "{out}");
    let sealed: Vec<_> = store
        .segments(0)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.is_sealed())
        .collect();
    assert!(sealed.len() >= 3, "{sealed:?}");
    let (first_end, cut) = (
        sealed[0].last_position.unwrap(),
        sealed[1].last_position.unwrap(),
    );
    assert!(
        first_end < 500 && 500 <= cut,
        "position 500 is in a pruned segment"
    );
    let (appender, task) = Appender::start(
        store.clone(),
        key.clone(),
        Arc::new(SystemClock),
        CommitNotifier::default(),
        AppenderConfig::default(),
    );
    let pruned = archive::prune(&store, &appender, 0, &files, cut, None, |_| {})
        .await
        .unwrap();
    assert_eq!(pruned.len(), 2);
    drop(appender);
    task.await.unwrap();
    let (head, head_hash) = store.head(0).await.unwrap();

    // Without the archive: every tool that needs pruned events says so.
    for args in [
        vec!["verify", "--public-key", &key_arg],
        vec!["at", "--position", "500"],
        vec!["rebuild", "billing"],
    ] {
        let (code, _, err) = tool(url, None, &args);
        assert_eq!(code, Some(1), "{args:?}");
        assert!(
            err.contains("were pruned") && err.contains("--archive"),
            "{args:?}: {err}"
        );
    }

    // With it: the same answers as before the prune.
    for (question, answer) in questions.iter().zip(&answers) {
        same(
            &ok(url, Some(&files), question),
            answer,
            &format!("{question:?}"),
        );
    }
    same(
        &ok(
            url,
            Some(&files),
            &["export", "--org", &org_text, "--to-position", &short_text],
        ),
        &org_export,
        "export --org",
    );
    let verified = json(&ok(
        url,
        Some(&files),
        &["verify", "--public-key", &key_arg, "--json"],
    ));
    assert_eq!(verified["events"], head);
    assert_eq!(verified["archives"], 2);
    assert_eq!(verified["head_hash"], head_hash.to_string());
    let (code, out, err) = tool(url, Some(&files), &["verify", "--public-key", &key_arg]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("read from 2 archive files and the database"),
        "{out}"
    );
    // A whole export (streams, snapshots) from the archives verifies.
    let whole = dir.path().join("whole.jsonl");
    ok(
        url,
        Some(&files),
        &["export", "--output", whole.to_str().unwrap()],
    );
    let (code, _, err) = common::replay_code(&[
        "verify",
        "--from-file",
        whole.to_str().unwrap(),
        "--public-key",
        &key_arg,
    ]);
    assert_eq!(code, Some(0), "{err}");
    ok(url, Some(&files), &["rebuild", "billing"]);
    ok(url, Some(&files), &["diff", "billing"]);

    // Republished from the archives and the database, JetStream holds
    // what the log holds: billing from the stream equals billing from the
    // log.
    let nats = std::env::var("SEATLEDGER_TEST_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let id = Uuid::now_v7().simple().to_string();
    let (stream, prefix) = (format!("TEST_{id}"), format!("test_{id}"));
    let out = ok(
        url,
        Some(&files),
        &[
            "republish",
            "--nats-url",
            &nats,
            "--nats-stream",
            &stream,
            "--nats-subject-prefix",
            &prefix,
        ],
    );
    assert!(
        out.contains(&format!(
            "positions 1..={head} to stream {stream}: {head} events acknowledged"
        )),
        "{out}"
    );
    let (code, from_nats, err) = common::replay_code(&[
        "usage",
        "--from-nats",
        &nats,
        "--nats-stream",
        &stream,
        "--as-of",
        &as_of,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        from_nats,
        ok(url, Some(&files), &["usage", "--as-of", &as_of])
    );
    let client = async_nats::connect(&nats).await.unwrap();
    async_nats::jetstream::new(client)
        .delete_stream(&stream)
        .await
        .unwrap();

    // Incremental: from the end of the first segment (the second's file
    // starts there and carries the states), from the cut (the next file
    // carries them; without --archive the snapshots of older streams are
    // left unchecked), and from a position with no checkpoint (refused).
    let since_with = |position: i64, archive: Option<&Path>| {
        let position = position.to_string();
        let text = ok(
            url,
            archive,
            &[
                "verify",
                "--public-key",
                &key_arg,
                "--since-checkpoint",
                &position,
                "--json",
            ],
        );
        json(&text)
    };
    let since = |position: i64| since_with(position, Some(&files));
    let from_first = since(first_end);
    assert_eq!(from_first["events"], head - first_end);
    assert_eq!(from_first["archives"], 1);
    assert_eq!(from_first["snapshots_unchecked"], 0);
    assert_eq!(from_first["head_hash"], head_hash.to_string());
    // From the cut, the third segment's file (archived, not pruned)
    // supplies the states; without the archive they are not known.
    let from_cut = since(cut);
    assert_eq!(from_cut["events"], head - cut);
    assert_eq!(from_cut["archives"], 0);
    assert_eq!(from_cut["snapshots_unchecked"], 0);
    let blind = since_with(cut, None);
    assert_eq!(blind["events"], head - cut);
    assert!(
        blind["snapshots_unchecked"].as_u64().unwrap() > 0,
        "{blind}"
    );
    let checkpoints: Vec<i64> = store
        .checkpoints(0)
        .await
        .unwrap()
        .iter()
        .map(|c| c.position)
        .collect();
    let unsigned = (cut + 1..head).find(|p| !checkpoints.contains(p)).unwrap();
    let (code, _, err) = tool(
        url,
        Some(&files),
        &[
            "verify",
            "--public-key",
            &key_arg,
            "--since-checkpoint",
            &unsigned.to_string(),
        ],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("no signed checkpoint at position {unsigned}")),
        "{err}"
    );

    // A file missing, altered, or replaced by another valid archive of the
    // same events: verify fails, naming it.
    let first_file = files.join(archive::file_name(0, sealed[0].segment));
    let second_file = files.join(archive::file_name(0, sealed[1].segment));
    let kept = std::fs::read(&first_file).unwrap();
    let verify = || tool(url, Some(&files), &["verify", "--public-key", &key_arg]);
    std::fs::remove_file(&first_file).unwrap();
    let (code, _, err) = verify();
    assert_eq!(code, Some(1));
    assert!(
        err.contains("has no seatledger-p0-s00000001.archive"),
        "{err}"
    );
    std::fs::write(&first_file, &kept).unwrap();
    recompress(&first_file);
    let (code, _, err) = verify();
    assert_eq!(code, Some(1));
    assert!(err.contains("not the file that was pruned"), "{err}");
    std::fs::write(&first_file, &kept).unwrap();
    let kept_second = std::fs::read(&second_file).unwrap();
    let mut altered = kept_second.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 0x55;
    std::fs::write(&second_file, &altered).unwrap();
    let (code, _, err) = verify();
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&archive::file_name(0, sealed[1].segment)),
        "{err}"
    );
    std::fs::write(&second_file, &kept_second).unwrap();
    let (code, _, err) = verify();
    assert_eq!(code, Some(0), "{err}");
}

#[tokio::test]
async fn tools_read_archives_and_the_live_tail_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(&dir).await;
    let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
    across_archives(store, &url).await;
}

#[sqlx::test(migrations = false)]
async fn tools_read_archives_and_the_live_tail_on_postgres(pool: sqlx::PgPool) {
    let url = common::pg_url(&pool);
    let store = common::pg_store(pool).await;
    across_archives(store, &url).await;
}
