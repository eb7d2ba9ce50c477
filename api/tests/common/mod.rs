//! Spawning the real server in-process on port 0 (zero2prod's `spawn_app`).
#![allow(dead_code)]

use seatledger_api::{DatabaseArgs, ServeArgs, Server};
use seatledger_ledger::{ManualClock, Store};
use seatledger_schema::Timestamp;
use std::sync::Arc;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub clock: ManualClock,
    pub store: Store,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

fn args(database_url: String) -> ServeArgs {
    ServeArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: DatabaseArgs { database_url },
        signing_key: None,
        redis_url: None,
        nats_url: None,
    }
}

impl TestApp {
    /// The embedded default (SQLite) in a temporary directory.
    pub async fn embedded() -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("seatledger.db").display());
        let store = Store::connect(&url).await.unwrap();
        TestApp::spawn(store, args(url), Some(dir)).await
    }

    /// PostgreSQL, on a test's own database.
    pub async fn postgres(pool: sqlx::PgPool) -> TestApp {
        TestApp::spawn(Store::from_pg_pool(pool), args(String::new()), None).await
    }

    async fn spawn(store: Store, args: ServeArgs, dir: Option<tempfile::TempDir>) -> TestApp {
        let clock = ManualClock::new(Timestamp::now());
        let server = Server::start(store.clone(), &args, Arc::new(clock.clone()))
            .await
            .unwrap();
        let base = format!("http://{}", server.local_addr().unwrap());
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stop.await;
        }));
        TestApp {
            base,
            client: reqwest::Client::new(),
            clock,
            store,
            shutdown: Some(shutdown),
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Stops the server gracefully and waits for the appender to drain.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}
