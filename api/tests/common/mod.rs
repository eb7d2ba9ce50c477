//! Spawning the real server in-process on port 0 (zero2prod's `spawn_app`).
#![allow(dead_code)]

pub mod processes;

use seatledger_api::{DatabaseArgs, NatsArgs, ServeArgs, Server};
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

pub fn args(database_url: String) -> ServeArgs {
    ServeArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: DatabaseArgs { database_url },
        keys: Default::default(),
        redis_url: None,
        redis_prefix: "seatledger:".into(),
        nats: NatsArgs::off(),
        http: Default::default(),
        registration: "open".into(),
        token_ttl_s: 2_592_000,
        request_timeout_s: 30.0,
        reaper_interval_s: 30.0,
        rate_limit_seat_ops_per_s: 2_000,
        compact_keep_events: seatledger_schema::limits::COMPACT_KEEP_EVENTS,
        compact_block_events: seatledger_schema::limits::COMPACT_BLOCK_EVENTS,
        segment_events: seatledger_schema::limits::SEGMENT_EVENTS,
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

    /// PostgreSQL, with hot counts in the Redis at `redis_url` under
    /// `redis_prefix`, and the reaper every 50 ms.
    pub async fn postgres_with_redis(
        pool: sqlx::PgPool,
        redis_url: &str,
        redis_prefix: &str,
    ) -> TestApp {
        let args = ServeArgs {
            redis_url: Some(redis_url.to_owned()),
            redis_prefix: redis_prefix.to_owned(),
            reaper_interval_s: 0.05,
            ..args(String::new())
        };
        TestApp::spawn(Store::from_pg_pool(pool), args, None).await
    }

    /// PostgreSQL, publishing to NATS as `nats` says.
    pub async fn postgres_with_nats(pool: sqlx::PgPool, nats: NatsArgs) -> TestApp {
        let args = ServeArgs {
            nats,
            ..args(String::new())
        };
        TestApp::spawn(Store::from_pg_pool(pool), args, None).await
    }

    /// PostgreSQL, with the reaper running every `reaper_interval_s`.
    pub async fn postgres_with_reaper(pool: sqlx::PgPool, reaper_interval_s: f64) -> TestApp {
        let args = ServeArgs {
            reaper_interval_s,
            ..args(String::new())
        };
        TestApp::spawn(Store::from_pg_pool(pool), args, None).await
    }

    /// PostgreSQL, with these key files.
    pub async fn postgres_with_keys(
        pool: sqlx::PgPool,
        keys: seatledger_api::config::KeyArgs,
    ) -> TestApp {
        let args = ServeArgs {
            keys,
            ..args(String::new())
        };
        TestApp::spawn_as_given(Store::from_pg_pool(pool), args, None).await
    }

    /// The embedded default's directory (its database and key files).
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self._dir.as_ref().map(|dir| dir.path())
    }

    /// PostgreSQL with the settings `args` gives (its keys are replaced by
    /// the database's test keys).
    pub async fn postgres_with(pool: sqlx::PgPool, args: ServeArgs) -> TestApp {
        TestApp::spawn(Store::from_pg_pool(pool), args, None).await
    }

    /// PostgreSQL, with requests cut off after `request_timeout_s`.
    pub async fn postgres_with_request_timeout(
        pool: sqlx::PgPool,
        request_timeout_s: f64,
    ) -> TestApp {
        let args = ServeArgs {
            request_timeout_s,
            ..args(String::new())
        };
        TestApp::spawn(Store::from_pg_pool(pool), args, None).await
    }

    /// A server on `store` with `args` as given (keys included).
    pub async fn on_store(store: Store, args: ServeArgs) -> TestApp {
        TestApp::spawn_as_given(store, args, None).await
    }

    async fn spawn(store: Store, mut args: ServeArgs, dir: Option<tempfile::TempDir>) -> TestApp {
        if let Some(pool) = store.pg_pool() {
            args.keys = pg_keys(pool);
        }
        TestApp::spawn_as_given(store, args, dir).await
    }

    /// [`spawn`](Self::spawn) with `args.keys` as they are.
    async fn spawn_as_given(
        store: Store,
        args: ServeArgs,
        dir: Option<tempfile::TempDir>,
    ) -> TestApp {
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

    pub fn clock_now(&self) -> Timestamp {
        use seatledger_ledger::Clock;
        self.clock.now()
    }

    /// A sample of `/metrics` (`name` with its labels), 0 when absent.
    pub async fn metric(&self, name: &str) -> i64 {
        let metrics = self.send("GET", "/metrics", None, None).await;
        let text = metrics.body.as_str().unwrap_or_default().to_owned();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    }

    /// The hot-count follower's position, from `/metrics`.
    pub async fn follower_position(&self) -> i64 {
        self.metric("seatledger_follower_position{follower=\"hot_licenses\"}")
            .await
    }

    /// Waits (polling, 10 s at most) until the hot counts applied `position`.
    pub async fn await_follower_position(&self, position: i64) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.follower_position().await < position {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the follower did not reach position {position}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
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

/// The password [`TestApp::member`] gives.
pub const MEMBER_PASSWORD: &str = "member password";

pub struct Org {
    pub token: String,
    pub org_id: String,
    pub user_id: String,
}

pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
    pub headers: reqwest::header::HeaderMap,
}

impl TestApp {
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Reply {
        let mut request = self.client.request(method.parse().unwrap(), self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Self::reply(request.send().await.unwrap()).await
    }

    pub async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Reply {
            status,
            body,
            headers,
        }
    }

    /// POSTs `body` to `path` with this `Authorization` header as given
    /// (`License …`, `Lease …`), not a bearer token.
    pub async fn post_as(&self, path: &str, authorization: &str, body: serde_json::Value) -> Reply {
        let response = self
            .client
            .post(self.url(path))
            .header("authorization", authorization)
            .json(&body)
            .send()
            .await
            .unwrap();
        Self::reply(response).await
    }

    pub async fn post(&self, path: &str, token: &str, body: serde_json::Value) -> Reply {
        self.send("POST", path, Some(token), Some(body)).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send("GET", path, Some(token), None).await
    }

    pub async fn register(&self, email: &str) -> Org {
        let reply = self
            .send(
                "POST",
                "/api/v1/auth/register",
                None,
                Some(serde_json::json!({
                    "email": email, "password": "correct horse battery", "full_name": "Ada Lovelace", "company_name": "Acme"
                })),
            )
            .await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        Org {
            token: reply.body["api_token"].as_str().unwrap().to_owned(),
            org_id: reply.body["organization"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
            user_id: reply.body["id"].as_str().unwrap().to_owned(),
        }
    }

    /// `POST /api/v1/auth/login` with this email and password.
    pub async fn login_with(&self, email: &str, password: &str) -> Reply {
        self.send(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(serde_json::json!({"email": email, "password": password})),
        )
        .await
    }

    /// Logs `email` in with [`MEMBER_PASSWORD`].
    pub async fn member_login(&self, email: &str) -> Reply {
        self.login_with(email, MEMBER_PASSWORD).await
    }

    /// Adds a member to `owner`'s organization and logs them in.
    pub async fn member(&self, owner: &Org, email: &str) -> Org {
        let added = self
            .post(
                "/api/v1/users",
                &owner.token,
                serde_json::json!({"email": email, "password": MEMBER_PASSWORD, "full_name": "Mem Ber"}),
            )
            .await;
        assert_eq!(added.status, 201, "{:?}", added.body);
        let login = self.member_login(email).await;
        assert_eq!(login.status, 200, "{:?}", login.body);
        Org {
            token: login.body["api_token"].as_str().unwrap().to_owned(),
            org_id: owner.org_id.clone(),
            user_id: added.body["id"].as_str().unwrap().to_owned(),
        }
    }

    /// Issues a license; returns (id, key).
    pub async fn issue(&self, org: &Org, body: serde_json::Value) -> (String, String) {
        let reply = self.post("/api/v1/licenses", &org.token, body).await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        (
            reply.body["id"].as_str().unwrap().to_owned(),
            reply.body["key"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn acquire(&self, org: &Org, key: &str, machine: &str) -> Reply {
        self.post(
            "/api/v1/licenses/acquire",
            &org.token,
            serde_json::json!({"license_key": key, "hardware_id": machine}),
        )
        .await
    }

    pub async fn heartbeat(&self, token: &str, session_id: impl serde::Serialize) -> Reply {
        self.post(
            "/api/v1/licenses/heartbeat",
            token,
            serde_json::json!({ "session_id": session_id }),
        )
        .await
    }

    /// Every event in the log, in order.
    pub async fn events(&self) -> Vec<seatledger_schema::RecordedEvent> {
        self.store.read_after(0, 0, 10_000).await.unwrap()
    }

    pub async fn event_types(&self) -> Vec<String> {
        self.events()
            .await
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }
}

/// Polls `condition` (every 20 ms, `seconds` at most).
/// Key files for a server on PostgreSQL, one pair per database, so
/// replicas of a test (servers on one database) share them.
pub fn pg_keys(pool: &sqlx::PgPool) -> seatledger_api::config::KeyArgs {
    let database = pool
        .connect_options()
        .get_database()
        .unwrap_or("postgres")
        .to_owned();
    let dir = std::env::temp_dir()
        .join("seatledger-test-keys")
        .join(database);
    std::fs::create_dir_all(&dir).unwrap();
    seatledger_api::config::KeyArgs {
        signing_key: Some(dir.join("ledger.key")),
        token_signing_key: Some(dir.join("token.key")),
        ..Default::default()
    }
}

pub async fn eventually<F, Fut>(what: &str, seconds: u64, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A server process of the test's own (redis-server, nats-server) on a
/// free loopback port, so a test can kill and restart it without touching
/// other tests. Killed (SIGKILL) when dropped.
pub struct PrivateServer {
    pub port: u16,
    /// A directory of its own (for a server that keeps data).
    pub dir: tempfile::TempDir,
    /// The command line, given the port and the directory.
    command: fn(u16, &std::path::Path) -> std::process::Command,
    child: Option<std::process::Child>,
}

impl PrivateServer {
    pub async fn start(
        command: fn(u16, &std::path::Path) -> std::process::Command,
    ) -> PrivateServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = PrivateServer {
            port,
            dir: tempfile::tempdir().unwrap(),
            command,
            child: None,
        };
        server.restart().await;
        server
    }

    /// Starts it again and waits until it accepts connections.
    pub async fn restart(&mut self) {
        let child = (self.command)(self.port, self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the server binary (scripts/test installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the private server did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A redis-server that keeps nothing on disk (a restart comes back empty).
pub fn redis_server(port: u16, _dir: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new("redis-server");
    command
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"]);
    command
}

/// A nats-server with JetStream storing in `dir` (a restart keeps it).
pub fn nats_server(port: u16, dir: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new("nats-server");
    command
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
        .arg("-sd")
        .arg(dir);
    command
}

/// Sessions granted and ended in the log: (acquired, released).
pub async fn sessions_in_log(
    store: &seatledger_ledger::Store,
) -> (
    std::collections::HashSet<String>,
    std::collections::HashSet<String>,
) {
    let (mut acquired, mut released) = (
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
    );
    let mut after = 0;
    loop {
        let events = store.read_after(0, after, 5_000).await.unwrap();
        let Some(last) = events.last() else { break };
        after = last.position;
        for event in &events {
            let session = event.payload["session_id"].as_str().map(str::to_owned);
            match (event.event_type.as_str(), session) {
                ("SeatAcquired", Some(session)) => {
                    acquired.insert(session);
                }
                ("SeatReleased", Some(session)) => {
                    released.insert(session);
                }
                _ => {}
            }
        }
    }
    (acquired, released)
}

/// Takes the test's database away from every connection (new ones are
/// refused, open ones terminated), as an outage does; returns the admin
/// connection and the database name for [`give_database_back`].
pub async fn take_database_away(pool: &sqlx::PgPool) -> (sqlx::PgConnection, String) {
    use sqlx::Connection;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let mut admin =
        sqlx::PgConnection::connect_with(&(*pool.connect_options()).clone().database("postgres"))
            .await
            .unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS false"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&database)
        .execute(&mut admin)
        .await
        .unwrap();
    (admin, database)
}

/// Lets connections to the database in again.
pub async fn give_database_back((mut admin, database): (sqlx::PgConnection, String)) {
    sqlx::query(&format!(
        "ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS true"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
}

/// Event messages (subjects `seatledger.*.*`, not the signed heads) in the
/// JetStream stream `stream`.
pub async fn event_messages(client: async_nats::Client, stream: &str) -> usize {
    let info = async_nats::jetstream::new(client)
        .get_stream(stream)
        .await
        .unwrap();
    let mut subjects = info.info_with_subjects("seatledger.*.*").await.unwrap();
    let mut messages = 0;
    while let Some((_, count)) = futures::TryStreamExt::try_next(&mut subjects)
        .await
        .unwrap()
    {
        messages += count;
    }
    messages
}

/// Registers an organization on the server at `base`; returns its token.
pub async fn register_at(base: &str, email: &str) -> String {
    let registered: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/register"))
        .json(&serde_json::json!({"email": email, "password": "correct horse battery", "full_name": "Ada", "company_name": "Acme"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    registered["api_token"].as_str().unwrap().to_owned()
}

/// Issues a license with `body` on the server at `base`; returns (id, key).
pub async fn issue_at(base: &str, token: &str, body: serde_json::Value) -> (String, String) {
    let license: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/licenses"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        license["id"].as_str().unwrap().to_owned(),
        license["key"].as_str().unwrap().to_owned(),
    )
}
