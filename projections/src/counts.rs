//! The hot seat counts the API and the reaper read: in memory (the embedded
//! default) or in Redis (`--redis-url`). One type so that callers do not
//! care which; a read that cannot be served says why, and the caller reads
//! the ledger instead.

use crate::hot::{HotLicenses, StaleLease, Unreadable};
use crate::redis_hot::{RedisLicenses, RedisReadError};
use seatledger_ledger::domain::{Lease, LicenseView};
use seatledger_schema::SessionId;
use seatledger_schema::Timestamp;
use seatledger_schema::{LicenseId, OrgId};
use std::time::Duration;

#[derive(Clone)]
pub enum HotCounts {
    Memory(HotLicenses),
    Redis(RedisLicenses),
}

/// Why the counts could not answer.
#[derive(Debug, thiserror::Error)]
pub enum HotReadError {
    /// The license has an undecodable event: 500 `stream_unreadable`.
    #[error(transparent)]
    Unreadable(#[from] Unreadable),
    /// Redis is down or slow: read the ledger.
    #[error("hot counts unavailable: {0}")]
    Unavailable(String),
}

impl From<RedisReadError> for HotReadError {
    fn from(error: RedisReadError) -> Self {
        match error {
            RedisReadError::Unreadable(unreadable) => HotReadError::Unreadable(unreadable),
            RedisReadError::Unavailable(reason) => HotReadError::Unavailable(reason),
        }
    }
}

impl HotCounts {
    /// `memory`, or for Redis `ok` / `degraded`.
    pub fn status(&self) -> &'static str {
        match self {
            HotCounts::Memory(_) => "memory",
            HotCounts::Redis(redis) if redis.is_healthy() => "ok",
            HotCounts::Redis(_) => "degraded",
        }
    }

    /// Why the counts are degraded though their store answers, if so.
    pub fn problem(&self) -> Option<String> {
        match self {
            HotCounts::Memory(_) => None,
            HotCounts::Redis(redis) => redis.problem(),
        }
    }

    /// Times the Redis prefix was found to belong to another ledger.
    pub fn prefix_conflicts(&self) -> u64 {
        match self {
            HotCounts::Memory(_) => 0,
            HotCounts::Redis(redis) => redis.prefix_conflicts(),
        }
    }

    /// The last position the counts are known to include.
    pub fn position(&self) -> i64 {
        match self {
            HotCounts::Memory(hot) => hot.position(),
            HotCounts::Redis(redis) => redis.position(),
        }
    }

    pub async fn wait_for(&self, position: i64, timeout: Duration) -> bool {
        match self {
            HotCounts::Memory(hot) => hot.wait_for(position, timeout).await,
            HotCounts::Redis(redis) => redis.wait_for(position, timeout).await,
        }
    }

    pub async fn view(
        &self,
        org_id: OrgId,
        license_id: LicenseId,
        now: Timestamp,
    ) -> Result<Option<LicenseView>, HotReadError> {
        match self {
            HotCounts::Memory(hot) => Ok(hot.view(org_id, license_id, now)?),
            HotCounts::Redis(redis) => Ok(redis.view(org_id, license_id, now).await?),
        }
    }

    pub async fn sessions(
        &self,
        org_id: OrgId,
        license_id: LicenseId,
        now: Timestamp,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Option<Vec<Lease>>, HotReadError> {
        match self {
            HotCounts::Memory(hot) => Ok(hot.sessions(org_id, license_id, now, after, limit)?),
            HotCounts::Redis(redis) => Ok(redis
                .sessions(org_id, license_id, now, after, limit)
                .await?),
        }
    }

    /// Live leases over every license.
    pub async fn live_leases(&self, now: Timestamp) -> Result<u64, HotReadError> {
        match self {
            HotCounts::Memory(hot) => Ok(hot.live_leases(now)),
            HotCounts::Redis(redis) => redis
                .live_leases(now)
                .await
                .map_err(HotReadError::Unavailable),
        }
    }

    pub async fn stale(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<StaleLease>, HotReadError> {
        match self {
            HotCounts::Memory(hot) => Ok(hot.stale(now, limit)),
            HotCounts::Redis(redis) => redis
                .stale(now, limit)
                .await
                .map_err(HotReadError::Unavailable),
        }
    }
}
