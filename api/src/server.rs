//! Starting and stopping the server: connect and migrate the store, load the
//! signing key, start the appender and the followers (hot seat counts, the
//! zombie reaper), serve until SIGTERM/ctrl-c, then stop accepting, finish
//! in-flight requests, stop the followers and drain the appender.

use crate::config::{redacted_url, ServeArgs};
use crate::routes;
use crate::state::AppState;
use anyhow::Context;
use seatledger_ledger::{Appender, AppenderConfig, Clock, CommitNotifier, Store, SystemClock};
use seatledger_projections::{
    nats, reaper, runner, HotCounts, HotLicenses, LiveBilling, NatsConfig, NatsPublisher,
    PublisherStats, RedisLicenses, RunnerConfig,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;

/// A server bound to its address, not yet serving.
pub struct Server {
    listener: TcpListener,
    state: AppState,
    appender_task: tokio::task::JoinHandle<()>,
    /// The hot-count and billing followers and the reaper, stopped by
    /// `shutdown`.
    followers: Vec<tokio::task::JoinHandle<()>>,
    /// The LISTEN tasks (commits of other replicas, revocations): they hold
    /// a connection each and are aborted once the server has stopped.
    listeners: Vec<tokio::task::JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    /// Turned true when `serve`'s shutdown future resolves, before the
    /// connections drain: long-polls answer at once instead of holding
    /// the drain for their whole wait.
    draining: watch::Sender<bool>,
    http: crate::http::HttpLimits,
}

impl Server {
    /// Connects, migrates, loads the key and binds. `clock` is injected so
    /// tests can move time.
    pub async fn build(args: &ServeArgs, clock: Arc<dyn Clock>) -> anyhow::Result<Server> {
        tracing::info!(database = %redacted_url(&args.database.database_url), "opening the event store");
        let store = Store::connect(&args.database.database_url)
            .await
            .with_context(|| {
                format!(
                    "cannot open the event store at {}",
                    redacted_url(&args.database.database_url)
                )
            })?;
        Server::start(store, args, clock).await
    }

    /// Like `build`, on a store that is already open.
    pub async fn start(
        store: Store,
        args: &ServeArgs,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Server> {
        let (keys, notifier) = open_ledger(&store, args).await?;
        let caches: Arc<crate::state::Caches> = Default::default();
        let mut listeners = listen(&store, &notifier, &caches);
        let (appender, appender_task) = Appender::start(
            store.clone(),
            keys.ledger.clone(),
            clock.clone(),
            notifier.clone(),
            AppenderConfig::default(),
        );
        // Before listening: streams whose first load would hold the
        // partition lock long are loaded, so no request waits for them.
        appender.warmed().await;
        let metrics = Arc::new(crate::metrics::Metrics::new(appender.stats().clone()));
        let (shutdown, followers_shutdown) = watch::channel(false);
        let context = FollowerContext {
            store: &store,
            args,
            appender: &appender,
            clock: &clock,
            notifier: &notifier,
            metrics: &metrics,
            shutdown: &followers_shutdown,
        };
        let (hot, mut followers) = start_followers(&context, keys.ledger.key_id())?;
        let nats = start_publisher(&context, &mut followers).await?;
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let store_gate = crate::store_gate::StoreGate::new(store.clone());
        listeners.push(tokio::spawn(store_gate.clone().watch()));
        let (draining, draining_watch) = watch::channel(false);
        let state = AppState::new(crate::state::Shared {
            commits: notifier,
            draining: draining_watch,
            store_gate,
            directory: crate::directory::Directory::new(store.clone()),
            store,
            appender,
            hot,
            caches: caches.clone(),
            keys,
            clock,
            metrics,
            nats,
            registration_open: args.registration == "open",
            token_ttl: Duration::from_secs(args.token_ttl_s),
            login_guard: Default::default(),
            address_limits: Default::default(),
            seat_limits: Arc::new(crate::login_guard::SeatOpLimits::new(
                args.rate_limit_seat_ops_per_s,
            )),
            request_timeout: std::time::Duration::from_secs_f64(args.request_timeout_s),
        });
        Ok(Server {
            listener,
            state,
            appender_task,
            followers,
            listeners,
            shutdown,
            draining,
            http: args.http.limits(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server {
            listener,
            state,
            appender_task,
            followers,
            listeners,
            shutdown: stop_followers,
            draining,
            http,
        } = self;
        let shutdown = async move {
            shutdown.await;
            let _ = draining.send(true);
        };
        let app = NormalizePathLayer::trim_trailing_slash().layer(routes::router(state));
        // The peer address reaches handlers (per-address limits on register and
        // login) as `ConnectInfo`.
        crate::http::serve(listener, app, http, shutdown).await;
        // The followers stop (the reaper's appender handle with them); the
        // router (and every appender handle in it) is dropped: the appender
        // commits what is queued and stops.
        let _ = stop_followers.send(true);
        for follower in followers {
            follower.await.context("follower task failed")?;
        }
        appender_task.await.context("appender task failed")?;
        for listener in listeners {
            listener.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// `seatledger serve`.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let server = Server::build(&args, Arc::new(SystemClock)).await?;
    tracing::info!(address = %server.local_addr()?, "seatledger listening");
    server.serve(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests and draining the appender");
}

/// Migrates the store and loads the keys; a commit notifier at the head.
async fn open_ledger(
    store: &Store,
    args: &ServeArgs,
) -> anyhow::Result<(Arc<crate::keyring::KeyRing>, CommitNotifier)> {
    store
        .migrate()
        .await
        .context("cannot migrate the event store")?;
    let keys = Arc::new(
        crate::keyring::load(store, &args.database.database_url, &args.keys)
            .await
            .context("cannot load the signing keys")?,
    );
    tracing::info!(
        ledger_key_id = keys.ledger.key_id(),
        token_key_id = keys.token.key_id(),
        "signing keys loaded"
    );
    let notifier = CommitNotifier::default();
    // Reads wait for the hot counts to reach the notifier's position: start
    // it at the head, so no read is served from counts still replaying the
    // log at start-up.
    let (head, _) = store
        .head(0)
        .await
        .context("cannot read the event store's head")?;
    notifier.advance(head);
    Ok((keys, notifier))
}

/// On PostgreSQL: other replicas' commits reach `notifier`, their
/// revocations the credential `caches`.
fn listen(
    store: &Store,
    notifier: &CommitNotifier,
    caches: &Arc<crate::state::Caches>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(pool) = store.pg_pool() else {
        return Vec::new();
    };
    let caches = caches.clone();
    vec![
        tokio::spawn(seatledger_ledger::listen::listen(
            pool.clone(),
            0,
            notifier.clone(),
        )),
        tokio::spawn(crate::directory::listen_revocations(
            pool.clone(),
            move |revoked| caches.forget(revoked),
        )),
    ]
}

/// What the followers are started with.
struct FollowerContext<'a> {
    store: &'a Store,
    args: &'a ServeArgs,
    appender: &'a Appender,
    clock: &'a Arc<dyn Clock>,
    notifier: &'a CommitNotifier,
    metrics: &'a crate::metrics::Metrics,
    shutdown: &'a watch::Receiver<bool>,
}

/// The hot counts' follower (Redis, or memory without `--redis-url`), live
/// billing, the reaper and, unless turned off, the compactor.
fn start_followers(
    context: &FollowerContext<'_>,
    ledger_key_id: &str,
) -> anyhow::Result<(HotCounts, Vec<tokio::task::JoinHandle<()>>)> {
    let FollowerContext {
        store,
        args,
        metrics,
        shutdown,
        ..
    } = *context;
    let status = || metrics.hot_licenses.clone();
    let (hot, hot_follower) = match &args.redis_url {
        Some(url) => {
            let redis = RedisLicenses::new(url, &args.redis_prefix, ledger_key_id, 0)
                .with_context(|| format!("invalid --redis-url {}", redacted_url(url)))?;
            tracing::info!(redis = %redacted_url(url), prefix = %args.redis_prefix, "hot seat counts in Redis");
            let follower = context.spawn(redis.clone(), RunnerConfig::default(), status());
            (HotCounts::Redis(redis), follower)
        }
        None => {
            let memory = HotLicenses::default();
            let follower = context.spawn(memory.clone(), RunnerConfig::default(), status());
            (HotCounts::Memory(memory), follower)
        }
    };
    let mut followers = vec![
        hot_follower,
        context.spawn(
            LiveBilling::new(store.clone(), 0),
            seatledger_projections::billing_live::runner_config(),
            metrics.billing.clone(),
        ),
        tokio::spawn(reaper::run(
            hot.clone(),
            store.clone(),
            context.appender.clone(),
            context.clock.clone(),
            Duration::from_secs_f64(args.reaper_interval_s),
            metrics.reaper.clone(),
            shutdown.clone(),
        )),
    ];
    if args.compact_keep_events > 0 {
        followers.push(tokio::spawn(seatledger_ledger::compactor::run(
            store.clone(),
            seatledger_ledger::compactor::CompactorConfig {
                keep_events: args.compact_keep_events,
                block_events: args.compact_block_events,
                segment_events: args.segment_events,
                ..Default::default()
            },
            metrics.compactor.clone(),
            shutdown.clone(),
        )));
    }
    Ok((hot, followers))
}

impl FollowerContext<'_> {
    /// Runs `follower` of the log until the followers' shutdown.
    fn spawn<F: runner::Follower + 'static>(
        &self,
        follower: F,
        config: RunnerConfig,
        status: seatledger_projections::FollowerStatus,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(runner::run(
            self.store.clone(),
            follower,
            self.notifier.clone(),
            config,
            status,
            self.shutdown.clone(),
        ))
    }
}

/// With `--nats-url`: connects to NATS and starts the publisher (one of
/// the followers).
async fn start_publisher(
    context: &FollowerContext<'_>,
    followers: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<Option<Arc<PublisherStats>>> {
    let FollowerContext {
        store,
        args,
        metrics,
        ..
    } = *context;
    let Some(url) = &args.nats.url else {
        return Ok(None);
    };
    let stats = Arc::new(PublisherStats::default());
    let client = nats::connect(url, stats.clone())
        .await
        .map_err(|error| anyhow::anyhow!("{error} ({})", redacted_url(url)))?;
    let config = NatsConfig {
        url: url.clone(),
        stream: args.nats.stream.clone(),
        subject_prefix: args.nats.subject_prefix.clone(),
        replicas: usize::from(args.nats.replicas),
        max_age: Duration::from_secs(args.nats.max_age_s),
        window: usize::from(args.nats.window),
    };
    tracing::info!(nats = %redacted_url(url), stream = %config.stream, "publishing events to NATS JetStream");
    followers.push(context.spawn(
        NatsPublisher::new(store.clone(), 0, config, client, stats.clone()),
        nats::runner_config(),
        metrics.nats.clone(),
    ));
    Ok(Some(stats))
}
