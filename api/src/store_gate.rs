//! Failing fast while the event store is down.
//!
//! Without this, every request during a PostgreSQL outage waits out the
//! pool's acquire timeout (5 s: the pool retries connecting until then)
//! before it is answered 503: a client learns nothing sooner, and requests
//! pile up. The gate is *down* once the store is known to be down: a
//! request found it unavailable (its response carries
//! [`StoreWasUnavailable`]), or a ping got no answer within
//! [`READY_TIMEOUT`] (readiness pings, and a watchdog pings every
//! [`WATCH_INTERVAL`], so an outage is known within about two seconds even
//! when no request fails by itself). While it is down, requests to routes
//! that reach the store are answered 503 `store_unavailable` with
//! `Retry-After` at once, without touching it; requests already waiting on
//! the store are answered so at that moment (like a `request_timeout`, a
//! write cut short may still commit: a retry with the same
//! `Idempotency-Key` answers what it did); readiness answers 503 at once.
//! A single probe pings the store every [`PROBE_INTERVAL`] (each ping
//! bounded by [`PROBE_TIMEOUT`]) and opens the gate again when one answers,
//! so the server recovers by itself.

use crate::error::{ApiError, StoreWasUnavailable};
use axum::response::IntoResponse;
use seatledger_ledger::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long readiness waits for the store before answering 503.
pub const READY_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the probe pings a store that is down.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How long one ping of the probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the watchdog pings a store that is up.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct StoreGate {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    down: AtomicBool,
    probing: AtomicBool,
    /// `down` for waiters: requests in flight are answered when it trips.
    tripped: tokio::sync::watch::Sender<bool>,
}

impl StoreGate {
    /// A gate for `store`. Its pings go over a connection of their own, so
    /// a busy shared pool is never taken for a store that is down.
    pub fn new(store: Store) -> StoreGate {
        StoreGate {
            inner: Arc::new(Inner {
                store: store.single_connection(),
                down: AtomicBool::new(false),
                probing: AtomicBool::new(false),
                tripped: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    /// Whether the store is known to be down.
    pub fn is_down(&self) -> bool {
        self.inner.down.load(Ordering::Acquire)
    }

    /// Marks the store down and starts the probe (one at a time).
    pub fn trip(&self) {
        if !self.inner.down.swap(true, Ordering::AcqRel) {
            tracing::warn!("event store unavailable: answering 503 at once until it answers again");
        }
        self.inner.tripped.send_replace(true);
        if !self.inner.probing.swap(true, Ordering::AcqRel) {
            let gate = self.clone();
            tokio::spawn(async move { gate.probe().await });
        }
    }

    async fn probe(self) {
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            if let Ok(Ok(())) = tokio::time::timeout(PROBE_TIMEOUT, self.inner.store.ping()).await {
                // `probing` first: a trip after this starts a new probe.
                self.inner.probing.store(false, Ordering::Release);
                self.inner.down.store(false, Ordering::Release);
                self.inner.tripped.send_replace(false);
                tracing::info!("event store available again");
                return;
            }
        }
    }

    /// The watchdog: pings the store every [`WATCH_INTERVAL`] while it is
    /// up (a failed ping trips the gate). Runs until aborted.
    pub async fn watch(self) {
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            if !self.is_down() {
                self.ping().await;
            }
        }
    }

    /// Resolves once the gate is down.
    async fn tripped(&self) {
        let mut tripped = self.inner.tripped.subscribe();
        let _ = tripped.wait_for(|down| *down).await;
    }

    /// Pings the store within [`READY_TIMEOUT`] (at once `false` while it is
    /// known to be down); a failed ping trips the gate.
    pub async fn ping(&self) -> bool {
        if self.is_down() {
            return false;
        }
        match tokio::time::timeout(READY_TIMEOUT, self.inner.store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "readiness: event store unavailable");
                self.trip();
                false
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = READY_TIMEOUT.as_millis() as u64,
                    "readiness: no answer from the event store"
                );
                self.trip();
                false
            }
        }
    }
}

/// Whether requests to `path` reach the event store (the gate holds them;
/// the OpenAPI document gives them 500/503).
pub fn reaches_store(path: &str) -> bool {
    path.starts_with("/api/v1/") && !path.starts_with("/api/v1/health") && path != "/api/v1/keys"
}

/// Middleware: refuses requests that reach the store while it is down, and
/// trips the gate when a response found it unavailable.
pub async fn gate(
    axum::extract::State(gate): axum::extract::State<StoreGate>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let guarded = reaches_store(request.uri().path());
    if guarded && gate.is_down() {
        return ApiError::store_unavailable().into_response();
    }
    let response = if guarded {
        tokio::select! {
            response = next.run(request) => response,
            () = gate.tripped() => ApiError::store_unavailable().into_response(),
        }
    } else {
        next.run(request).await
    };
    if response.extensions().get::<StoreWasUnavailable>().is_some() {
        gate.trip();
    }
    response
}
