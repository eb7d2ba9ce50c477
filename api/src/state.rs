//! What every handler can reach: the store (reads), the appender (writes),
//! the hot seat counts, the credentials directory and its caches, the
//! signing key, the clock and the metrics.

use crate::cache::TtlCache;
use crate::directory::Directory;
use crate::metrics::Metrics;
use seatledger_ledger::{Appender, Clock, Store};
use seatledger_projections::{HotCounts, PublisherStats};
use seatledger_schema::UserId;
use seatledger_schema::{LicenseId, OrgId, SessionId};
use std::sync::Arc;
use std::time::Duration;

/// Entries each look-up cache holds, and how long a token or key stays
/// trusted without asking the database again.
pub const CACHE_CAPACITY: usize = 100_000;
pub const CREDENTIAL_CACHE_TTL: Duration = Duration::from_secs(60);

/// Sessions the session look-up cache holds. Acquire adds a session and
/// release removes it, so it holds the live sessions (plus those that
/// expired without a release, until evicted or a day old): sized above
/// the live leases of a large server, so that heartbeats and releases do
/// not ask the log which license their session is on. At 100,000 live
/// leases a cache of `CACHE_CAPACITY` sent about 500 of them a second to
/// the log (TinyLFU admits a new session into a full cache only once it
/// is seen more often than its victim).
pub const SESSION_CACHE_CAPACITY: usize = 1_000_000;

pub struct Caches {
    /// Token hash → principal and the token's expiry.
    pub tokens: TtlCache<[u8; 32], crate::directory::TokenGrant>,
    /// License key hash → (license id, org id).
    pub license_keys: TtlCache<[u8; 32], (LicenseId, OrgId)>,
    /// Session id → (license id, org id); never changes once granted.
    pub sessions: TtlCache<SessionId, (LicenseId, OrgId)>,
}

impl Caches {
    /// Forgets every cached token of `user_id` (their tokens were revoked).
    pub fn forget_user(&self, user_id: UserId) {
        self.tokens
            .retain(|grant| grant.principal.user_id != user_id);
    }

    /// Drops what another replica revoked.
    pub fn forget(&self, revoked: crate::directory::Revoked) {
        use crate::directory::Revoked;
        match revoked {
            Revoked::Token(hash) => self.tokens.remove(&hash),
            Revoked::User(user_id) => self.forget_user(user_id),
            Revoked::Unknown => self.tokens.retain(|_| false),
        }
    }
}

impl Default for Caches {
    fn default() -> Self {
        Caches {
            tokens: TtlCache::new(CACHE_CAPACITY, CREDENTIAL_CACHE_TTL),
            license_keys: TtlCache::new(CACHE_CAPACITY, CREDENTIAL_CACHE_TTL),
            sessions: TtlCache::new(SESSION_CACHE_CAPACITY, Duration::from_secs(24 * 3600)),
        }
    }
}

/// What every handler shares, behind one `Arc`: axum clones the state for
/// every extractor and middleware of every request, and cloning the fields
/// one by one (a dozen reference counts, on cache lines both cores write)
/// cost over 5% of the server's CPU under load (`perf`, 256 clients on the
/// embedded default). Fields are reached through `Deref`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    pub store: Store,
    pub appender: Appender,
    /// Hot seat counts: what license reads are served from.
    pub hot: HotCounts,
    pub directory: Directory,
    pub caches: Arc<Caches>,
    /// The ledger key (checkpoints, derived ids) and the seat-token key.
    pub keys: Arc<crate::keyring::KeyRing>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// Login back-off per account.
    pub login_guard: Arc<crate::login_guard::LoginGuard>,
    /// Register and login limits per client address.
    pub address_limits: Arc<crate::login_guard::AddressLimits>,
    /// Seat operations per token (`--rate-limit-seat-ops-per-s`).
    pub seat_limits: Arc<crate::login_guard::SeatOpLimits>,
    /// How long a new API token lives at most (`--token-ttl-s`).
    pub token_ttl: Duration,
    /// Whether `POST /api/v1/auth/register` is open (`--registration`).
    pub registration_open: bool,
    /// The NATS publisher's state, when `--nats-url` is set.
    pub nats: Option<Arc<PublisherStats>>,
    /// How long a request may take before it is answered 503.
    pub request_timeout: std::time::Duration,
    /// Whether the store is known to be down (then requests fail fast).
    pub store_gate: crate::store_gate::StoreGate,
    /// The in-process bus of commits: the last position committed, by this
    /// server's appender or (through `LISTEN/NOTIFY`) another replica's.
    /// Long-polls of the events feed wait on it.
    pub commits: seatledger_ledger::CommitNotifier,
    /// Turns true when the server begins to shut down: waits end then.
    pub draining: tokio::sync::watch::Receiver<bool>,
}
