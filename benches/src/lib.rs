//! seatledger benchmarks: criterion micro-benchmarks and load tools.
#![forbid(unsafe_code)]

use anyhow::Context;
use seatledger_ledger::Store;
use uuid::Uuid;

/// Removes what `fresh_store` created.
pub type Cleanup = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>;

/// A migrated store of its own for one benchmark run: on PostgreSQL a new
/// database on the server `url` names (dropped by the cleanup), for
/// `sqlite:PATH` a new file beside `PATH` (deleted by the cleanup).
pub async fn fresh_store(url: &str) -> anyhow::Result<(Store, Cleanup)> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = format!("{path}.bench-{}", Uuid::new_v4());
        let store = Store::connect(&format!("sqlite:{path}")).await?;
        store.migrate().await?;
        let cleanup: Cleanup = Box::pin(async move {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
            Ok(())
        });
        return Ok((store, cleanup));
    }
    let admin = sqlx::PgPool::connect(url)
        .await
        .context("connect to PostgreSQL")?;
    let name = format!("seatledger_bench_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let (base, _) = url.rsplit_once('/').context("URL has no database")?;
    let store = Store::connect(&format!("{base}/{name}")).await?;
    store.migrate().await?;
    let cleanup: Cleanup = Box::pin(async move {
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&admin)
            .await?;
        Ok(())
    });
    Ok((store, cleanup))
}
