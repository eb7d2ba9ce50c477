//! Stores for the replay-tool tests (a migrated one per test) and running
//! the `seatledger-replay` binary.
#![allow(dead_code)]

use seatledger_ledger::Store;

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

/// Runs `seatledger-replay` with `args`: (exit code, stdout, stderr).
pub fn replay_code(args: &[&str]) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_seatledger-replay"))
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
