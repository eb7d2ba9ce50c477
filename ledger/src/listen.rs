//! Waking followers across processes: on PostgreSQL every batch `NOTIFY`s
//! `seatledger_events` with `partition:position`; `listen` feeds those into
//! a `CommitNotifier`. In one process (and always on SQLite) the appender
//! advances the notifier itself. Followers also poll, so a lost notification
//! (a reconnect) delays them by at most their poll interval.

use crate::appender::CommitNotifier;
use crate::store::NOTIFY_CHANNEL;
use std::time::Duration;

/// Runs until the pool closes: listens and advances `notifier`, reconnecting
/// after errors.
pub async fn listen(pool: sqlx::PgPool, partition: i16, notifier: CommitNotifier) {
    loop {
        match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if let Err(error) = listener.listen(NOTIFY_CHANNEL).await {
                    tracing::warn!(error = %error, "LISTEN failed");
                } else {
                    loop {
                        match listener.recv().await {
                            Ok(notification) => {
                                if let Some(position) = parse(notification.payload(), partition) {
                                    notifier.advance(position);
                                }
                            }
                            Err(error) => {
                                tracing::warn!(error = %error, "notification listener lost its connection");
                                break;
                            }
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot connect the notification listener")
            }
        }
        if pool.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn parse(payload: &str, partition: i16) -> Option<i64> {
    let (p, position) = payload.split_once(':')?;
    if p.parse::<i16>().ok()? != partition {
        return None;
    }
    position.parse().ok()
}
