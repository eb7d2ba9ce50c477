//! The server's keys: seat tokens are signed by the token key
//! only, checkpoints by the ledger key only, both keys live in files and
//! can be rotated without breaking what they signed, and a key an older
//! version kept in the database keeps working until it is moved out.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::TestApp;
use seatledger_api::config::KeyArgs;
use seatledger_ledger::SigningKey;
use seatledger_schema::Timestamp;
use serde_json::{json, Value};
use std::path::PathBuf;

/// What a client app does offline with a seat token: find its key among
/// `GET /api/v1/keys` as a `token` key, active or retired (a retired key's
/// tokens are good until they expire), check the signature and the expiry.
fn client_accepts(keys: &Value, signed: &Value, now: Timestamp) -> Result<Value, String> {
    let key = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["key_id"] == signed["key_id"] && key["purpose"] == "token")
        .ok_or_else(|| format!("{} is not a seat-token key", signed["key_id"]))?;
    let public_key = URL_SAFE_NO_PAD
        .decode(key["public_key"].as_str().unwrap())
        .unwrap();
    let payload = URL_SAFE_NO_PAD
        .decode(signed["payload"].as_str().unwrap())
        .unwrap();
    let signature = URL_SAFE_NO_PAD
        .decode(signed["signature"].as_str().unwrap())
        .unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public_key)
        .verify(&payload, &signature)
        .map_err(|_| "the signature does not verify".to_owned())?;
    let claims: Value = serde_json::from_slice(&payload).unwrap();
    let expires_at = Timestamp::parse(claims["expires_at"].as_str().unwrap()).unwrap();
    if now > expires_at {
        return Err("expired".into());
    }
    Ok(claims)
}

/// `signed`'s claims signed again with `key`, under `key_id`.
fn resigned(signed: &Value, key: &SigningKey, key_id: &str) -> Value {
    let payload = URL_SAFE_NO_PAD
        .decode(signed["payload"].as_str().unwrap())
        .unwrap();
    json!({
        "payload": signed["payload"],
        "signature": URL_SAFE_NO_PAD.encode(key.sign(&payload)),
        "key_id": key_id,
    })
}

fn listed<'a>(keys: &'a Value, purpose: &str, status: &str) -> Vec<&'a str> {
    keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|key| key["purpose"] == purpose && key["status"] == status)
        .map(|key| key["key_id"].as_str().unwrap())
        .collect()
}

/// A token signed with the ledger key (which a database reader of old
/// could take from the `signing_keys` table) is refused by a client that
/// verifies against the token key, under either key id.
#[tokio::test]
async fn a_token_signed_with_the_ledger_key_is_refused() {
    let app = TestApp::embedded().await;
    let dir = app.data_dir().unwrap().to_owned();
    let ledger_file = dir.join("seatledger.db.ledger.key");
    let token_file = dir.join("seatledger.db.token.key");
    assert!(
        ledger_file.exists() && token_file.exists(),
        "key files beside the database"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in [&ledger_file, &token_file] {
            let mode = std::fs::metadata(file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
    }
    let ledger = SigningKey::from_pkcs8(&std::fs::read(&ledger_file).unwrap()).unwrap();
    let token = SigningKey::from_pkcs8(&std::fs::read(&token_file).unwrap()).unwrap();
    assert_ne!(ledger.key_id(), token.key_id());

    let keys = app.send("GET", "/api/v1/keys", None, None).await.body;
    assert_eq!(listed(&keys, "ledger", "active"), vec![ledger.key_id()]);
    assert_eq!(listed(&keys, "token", "active"), vec![token.key_id()]);
    let org = app.register("keys@example.com").await;
    let (_, key) = app.issue(&org, json!({"name": "IDE", "seats": 2})).await;
    let seat = app.acquire(&org, &key, "laptop").await;
    let signed = &seat.body["signed_license"];
    assert_eq!(signed["key_id"], token.key_id());
    let now = app.clock_now();
    client_accepts(&keys, signed, now).expect("the real token verifies");

    // Forged with the ledger key: under its own id it is no token key;
    // under the token key's id its signature fails.
    let forged = resigned(signed, &ledger, ledger.key_id());
    assert!(client_accepts(&keys, &forged, now)
        .unwrap_err()
        .contains("not a seat-token key"));
    let forged = resigned(signed, &ledger, token.key_id());
    assert_eq!(
        client_accepts(&keys, &forged, now).unwrap_err(),
        "the signature does not verify"
    );
    // Checkpoints are signed by the ledger key.
    app.stop().await;
}

fn key_files(dir: &tempfile::TempDir, names: (&str, &str)) -> (PathBuf, PathBuf) {
    (dir.path().join(names.0), dir.path().join(names.1))
}

/// Rotating both keys: a token signed before still verifies offline (its
/// key listed as retired) until it expires; new tokens use the new key;
/// the checkpoints signed before and after verify with both ledger keys
/// pinned, and not with the new one alone.
#[sqlx::test(migrations = false)]
async fn rotated_keys_keep_old_tokens_and_checkpoints_verifiable(pool: sqlx::PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let (ledger1, token1) = key_files(&dir, ("ledger1.key", "token1.key"));
    let (ledger2, token2) = key_files(&dir, ("ledger2.key", "token2.key"));
    let app = TestApp::postgres_with_keys(
        pool.clone(),
        KeyArgs {
            signing_key: Some(ledger1.clone()),
            token_signing_key: Some(token1.clone()),
            ..Default::default()
        },
    )
    .await;
    let org = app.register("rotate@example.com").await;
    let (_, key) = app.issue(&org, json!({"name": "IDE", "seats": 5})).await;
    let old_seat = app.acquire(&org, &key, "old").await;
    let old_token = old_seat.body["signed_license"].clone();
    let store = app.store.clone();
    app.stop().await; // signs the head with ledger key 1
    let first = store.checkpoints(0).await.unwrap();
    assert!(!first.is_empty());

    let app = TestApp::postgres_with_keys(
        pool,
        KeyArgs {
            signing_key: Some(ledger2.clone()),
            token_signing_key: Some(token2.clone()),
            retired_signing_keys: vec![ledger1.clone()],
            retired_token_keys: vec![token1.clone()],
        },
    )
    .await;
    let read = |path: &PathBuf| SigningKey::from_pkcs8(&std::fs::read(path).unwrap()).unwrap();
    let (l1, t1, l2, t2) = (read(&ledger1), read(&token1), read(&ledger2), read(&token2));
    let keys = app.send("GET", "/api/v1/keys", None, None).await.body;
    assert_eq!(listed(&keys, "token", "active"), vec![t2.key_id()]);
    assert_eq!(listed(&keys, "token", "retired"), vec![t1.key_id()]);
    assert_eq!(listed(&keys, "ledger", "active"), vec![l2.key_id()]);
    assert_eq!(listed(&keys, "ledger", "retired"), vec![l1.key_id()]);
    let now = app.clock_now();
    let claims = client_accepts(&keys, &old_token, now).expect("the old token still verifies");
    let expires_at = Timestamp::parse(claims["expires_at"].as_str().unwrap()).unwrap();
    let after_expiry = Timestamp::from_micros_saturating(expires_at.as_micros() + 1);
    assert_eq!(
        client_accepts(&keys, &old_token, after_expiry).unwrap_err(),
        "expired"
    );
    let new_seat = app.acquire(&org, &key, "new").await;
    assert_eq!(new_seat.body["signed_license"]["key_id"], t2.key_id());
    client_accepts(&keys, &new_seat.body["signed_license"], now).unwrap();
    app.stop().await; // signs the new head with ledger key 2

    let all = store.checkpoints(0).await.unwrap();
    assert!(all.iter().any(|c| c.key_id == l1.key_id()));
    assert!(all.iter().any(|c| c.key_id == l2.key_id()));
    let both = seatledger_replay::Trust::key((l1.key_id(), l1.public_key()))
        .and_key((l2.key_id(), l2.public_key()));
    let verified = seatledger_replay::verify(&store, 0, &both).await.unwrap();
    assert_eq!(verified.checkpoints, all.len());
    let error = seatledger_replay::verify(&store, 0, (l2.key_id(), l2.public_key()))
        .await
        .unwrap_err();
    assert!(error.to_string().contains(l1.key_id()), "{error}");
}

/// A PostgreSQL server needs its key files; a database that holds a key
/// from an older version starts with it (and lists it for both purposes)
/// until `seatledger admin export-key` moves it to a file (0600) and
/// deletes it from the table; the moved key then signs as before.
#[sqlx::test(migrations = false)]
async fn a_key_left_in_the_database_works_until_it_is_exported(pool: sqlx::PgPool) {
    let store = seatledger_ledger::Store::from_pg_pool(pool.clone());
    store.migrate().await.unwrap();
    let clock = std::sync::Arc::new(seatledger_ledger::SystemClock);
    let error = seatledger_api::Server::start(store.clone(), &common::args(String::new()), clock)
        .await
        .err()
        .expect("no key on PostgreSQL is refused");
    assert!(
        format!("{error:#}").contains("--signing-key FILE"),
        "{error:#}"
    );

    let legacy = SigningKey::generate_pkcs8().unwrap();
    let legacy_key = SigningKey::from_pkcs8(&legacy).unwrap();
    sqlx::query("INSERT INTO signing_keys (key_id, pkcs8) VALUES ($1, $2)")
        .bind(legacy_key.key_id())
        .bind(&legacy)
        .execute(&pool)
        .await
        .unwrap();
    let app = TestApp::postgres_with_keys(pool.clone(), KeyArgs::default()).await;
    let keys = app.send("GET", "/api/v1/keys", None, None).await.body;
    assert_eq!(listed(&keys, "ledger", "active"), vec![legacy_key.key_id()]);
    assert_eq!(listed(&keys, "token", "active"), vec![legacy_key.key_id()]);
    app.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let moved = dir.path().join("ledger.key");
    let url = {
        let options = pool.connect_options();
        format!(
            "postgres://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap()
        )
    };
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_seatledger"))
        .args(["admin", "export-key", "--database-url", &url, "--to"])
        .arg(&moved)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains(legacy_key.key_id()));
    assert_eq!(std::fs::read(&moved).unwrap(), legacy);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&moved).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(store.stored_signing_key().await.unwrap(), None);
    // Again: nothing left to export, exit 1, the file untouched.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_seatledger"))
        .args(["admin", "export-key", "--database-url", &url, "--to"])
        .arg(dir.path().join("again.key"))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));

    let app = TestApp::postgres_with_keys(
        pool,
        KeyArgs {
            signing_key: Some(moved.clone()),
            token_signing_key: Some(dir.path().join("token.key")),
            retired_token_keys: vec![moved],
            ..Default::default()
        },
    )
    .await;
    let keys = app.send("GET", "/api/v1/keys", None, None).await.body;
    assert_eq!(listed(&keys, "ledger", "active"), vec![legacy_key.key_id()]);
    assert_eq!(listed(&keys, "token", "retired"), vec![legacy_key.key_id()]);
    assert_ne!(listed(&keys, "token", "active"), vec![legacy_key.key_id()]);
    app.stop().await;
}

/// Runs `openssl` with `args`, panicking with its stderr when it fails.
fn openssl(args: &[&str]) -> Vec<u8> {
    let output = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (scripts/test installs it)");
    assert!(output.status.success(), "openssl {args:?}: {output:?}");
    output.stdout
}

/// The raw public key of the private key file at `path`, as openssl reads it
/// (the last 32 bytes of its SubjectPublicKeyInfo).
fn openssl_public_key(path: &std::path::Path) -> Vec<u8> {
    let der = openssl(&[
        "pkey",
        "-in",
        path.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ]);
    der[der.len() - 32..].to_vec()
}

/// Key files as the standard tools write them: `openssl genpkey` (PKCS#8
/// v1, PEM), its DER form, and a v2 document in PEM are all accepted for
/// the ledger key, the token key, a retired key and `admin public-key`,
/// and `/api/v1/keys` lists the public keys openssl derives from them. A
/// file that is no key names the accepted forms.
#[sqlx::test(migrations = false)]
async fn key_files_made_by_openssl_are_accepted(pool: sqlx::PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let text = |name: &str| path(name).to_str().unwrap().to_owned();
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        &text("ledger.pem"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-outform",
        "DER",
        "-out",
        &text("token.der"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        &text("retired.pem"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &text("retired.pem"),
        "-outform",
        "DER",
        "-out",
        &text("retired.der"),
    ]);
    // PKCS#8 v2 (RFC 5958, with the public key) in PEM.
    let v2 = SigningKey::generate_pkcs8().unwrap();
    let body = base64::engine::general_purpose::STANDARD.encode(&v2);
    let (first, rest) = body.split_at(64);
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{first}\n{rest}\n-----END PRIVATE KEY-----\n");
    std::fs::write(path("retired-v2.pem"), pem).unwrap();
    let v2_public = SigningKey::from_pkcs8(&v2).unwrap().public_key().to_vec();
    let der_text = String::from_utf8(openssl(&[
        "pkey",
        "-in",
        &text("token.der"),
        "-inform",
        "DER",
    ]))
    .unwrap();
    assert!(der_text.starts_with("-----BEGIN PRIVATE KEY-----"));

    let app = TestApp::postgres_with_keys(
        pool,
        KeyArgs {
            signing_key: Some(path("ledger.pem")),
            token_signing_key: Some(path("token.der")),
            retired_signing_keys: vec![path("retired.der")],
            retired_token_keys: vec![path("retired-v2.pem")],
        },
    )
    .await;
    let keys = app.send("GET", "/api/v1/keys", None, None).await.body;
    let public_of = |purpose: &str, status: &str| -> Vec<Vec<u8>> {
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|key| key["purpose"] == purpose && key["status"] == status)
            .map(|key| {
                URL_SAFE_NO_PAD
                    .decode(key["public_key"].as_str().unwrap())
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(
        public_of("ledger", "active"),
        vec![openssl_public_key(&path("ledger.pem"))]
    );
    assert_eq!(
        public_of("token", "active"),
        vec![openssl_public_key(&path("token.der"))]
    );
    assert_eq!(
        public_of("ledger", "retired"),
        vec![openssl_public_key(&path("retired.pem"))]
    );
    assert_eq!(public_of("token", "retired"), vec![v2_public]);
    let ledger_id = seatledger_schema::key_id_of(&openssl_public_key(&path("ledger.pem")));
    assert_eq!(listed(&keys, "ledger", "active"), vec![ledger_id.as_str()]);
    // Seat tokens are signed with the openssl-made token key.
    let org = app.register("openssl@example.com").await;
    let (_, key) = app.issue(&org, json!({"name": "IDE", "seats": 1})).await;
    let seat = app.acquire(&org, &key, "laptop").await;
    client_accepts(&keys, &seat.body["signed_license"], app.clock_now()).unwrap();
    app.stop().await;

    for file in ["ledger.pem", "token.der", "retired-v2.pem"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_seatledger"))
            .args(["admin", "public-key", "--key", &text(file)])
            .output()
            .unwrap();
        assert!(output.status.success(), "{file}: {output:?}");
        let expected = SigningKey::from_pkcs8(&std::fs::read(path(file)).unwrap()).unwrap();
        assert_eq!(
            String::from_utf8(output.stdout).unwrap().trim(),
            seatledger_schema::pinned_key_text(expected.public_key())
        );
    }
    std::fs::write(path("garbage.pem"), "-----BEGIN PRIVATE KEY-----\nnope\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_seatledger"))
        .args(["admin", "public-key", "--key", &text("garbage.pem")])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for form in ["PKCS#8 v1", "v2", "DER", "PEM"] {
        assert!(stderr.contains(form), "{form}: {stderr}");
    }
}
