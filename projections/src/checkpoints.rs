//! `follower_checkpoints` for followers whose output is not in the ledger's
//! database (NATS): the position is stored after the output is safe
//! elsewhere, so a crash in between repeats work, never skips it.

use seatledger_ledger::{Store, StoreError};

/// The stored position of `follower` in `partition` (0 before any).
pub async fn load(store: &Store, follower: &str, partition: i16) -> Result<i64, StoreError> {
    let position: Option<i64> =
        match store {
            Store::Postgres(pool) => sqlx::query_scalar(
                "SELECT position FROM follower_checkpoints WHERE follower = $1 AND partition = $2",
            )
            .bind(follower)
            .bind(partition)
            .fetch_optional(pool)
            .await?,
            Store::Sqlite(pool, _) => sqlx::query_scalar(
                "SELECT position FROM follower_checkpoints WHERE follower = ? AND partition = ?",
            )
            .bind(follower)
            .bind(partition)
            .fetch_optional(pool)
            .await?,
        };
    Ok(position.unwrap_or(0))
}

/// Stores `position` for `follower` in `partition`.
pub async fn save(
    store: &Store,
    follower: &str,
    partition: i16,
    position: i64,
) -> Result<(), StoreError> {
    match store {
        Store::Postgres(pool) => {
            sqlx::query(
                "INSERT INTO follower_checkpoints (follower, partition, position) VALUES ($1, $2, $3) \
                 ON CONFLICT (follower, partition) DO UPDATE SET position = excluded.position, updated_at = now()",
            )
            .bind(follower)
            .bind(partition)
            .bind(position)
            .execute(pool)
            .await?;
        }
        Store::Sqlite(pool, _) => {
            let _turn = store.write_turn().await;
            sqlx::query(
                "INSERT INTO follower_checkpoints (follower, partition, position) VALUES (?, ?, ?) \
                 ON CONFLICT (follower, partition) DO UPDATE SET position = excluded.position, \
                 updated_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000000",
            )
            .bind(follower)
            .bind(partition)
            .bind(position)
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}
