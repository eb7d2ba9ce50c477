//! Stores for the replay-tool tests: a migrated one per test.

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
