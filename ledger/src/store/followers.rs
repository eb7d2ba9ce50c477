//! What followers keep in the ledger's database besides their output: the
//! stored position of a follower whose output lives elsewhere (NATS), and
//! the session lock that lets one replica at a time lead such a follower.

use crate::store::{Store, StoreError};

impl Store {
    /// The stored position of `follower` in `partition` (0 before any).
    pub async fn follower_position(
        &self,
        follower: &str,
        partition: i16,
    ) -> Result<i64, StoreError> {
        let position: Option<(i64,)> = query_either!(
            self,
            "SELECT position FROM follower_checkpoints WHERE follower = $1 AND partition = $2",
            fetch_optional,
            follower,
            partition
        );
        Ok(position.map_or(0, |(position,)| position))
    }

    /// Stores `position` for `follower` in `partition`: after the output
    /// is safe elsewhere, so a crash in between repeats work, never skips
    /// it.
    pub async fn save_follower_position(
        &self,
        follower: &str,
        partition: i16,
        position: i64,
    ) -> Result<(), StoreError> {
        let now = match self.backend() {
            super::Backend::Postgres => "now()",
            super::Backend::Sqlite => "CAST(strftime('%s', 'now') AS INTEGER) * 1000000",
        };
        let statement = format!(
            "INSERT INTO follower_checkpoints (follower, partition, position) VALUES ($1, $2, $3) \
             ON CONFLICT (follower, partition) DO UPDATE SET position = excluded.position, updated_at = {now}"
        );
        let _turn = self.write_turn().await;
        on_pool!(self, |pool| sqlx::query(&statement)
            .bind(follower)
            .bind(partition)
            .bind(position)
            .execute(pool)
            .await
            .map(drop))?;
        Ok(())
    }

    /// Tries to take the session lock `key` for one replica at a time
    /// (`pg_try_advisory_lock` on a connection of its own, held until the
    /// lock is dropped or its connection breaks). `None`: another replica
    /// holds it. On SQLite (one process) the lock is always had.
    pub async fn try_session_lock(&self, key: i64) -> Result<Option<SessionLock>, StoreError> {
        let Store::Postgres(pool) = self else {
            return Ok(Some(SessionLock { connection: None }));
        };
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut connection)
            .await?;
        if held {
            Ok(Some(SessionLock {
                connection: Some(connection),
            }))
        } else {
            let _ = connection.close().await;
            Ok(None)
        }
    }
}

/// A session lock taken by [`Store::try_session_lock`].
pub struct SessionLock {
    connection: Option<sqlx::PgConnection>,
}

impl SessionLock {
    /// Whether the lock is still held: its connection answers.
    pub async fn is_held(&mut self) -> bool {
        match &mut self.connection {
            Some(connection) => sqlx::query("SELECT 1")
                .execute(&mut *connection)
                .await
                .is_ok(),
            None => true,
        }
    }
}
