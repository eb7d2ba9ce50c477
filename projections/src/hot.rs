//! Hot seat counts, in memory (docs/design.md §4): every license's state, folded
//! from the log with the decider's own `evolve`, so the counts are the
//! ledger's truth by construction. Reads (`seats_used`, a page of live
//! sessions, the leases past their expiry) work under a read lock on the
//! one license, never by folding its stream per request.
//!
//! The follower publishes its position after the states it covers, so a
//! reader that saw position P reads states that include at least P. It
//! lives as long as the process and is rebuilt from position 0 at start.

use crate::runner::{Follower, FollowerError};
use seatledger_ledger::domain::license::evolve;
use seatledger_ledger::domain::{Lease, LicenseState, LicenseView, StreamId};
use seatledger_schema::SessionId;
use seatledger_schema::{LicenseId, OrgId};
use seatledger_schema::{RecordedEvent, Timestamp};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Default)]
struct Inner {
    licenses: HashMap<LicenseId, LicenseState>,
    /// Licenses with an event that cannot be decoded: their state here is
    /// not the ledger's, so they are never served.
    unreadable: HashSet<LicenseId>,
}

/// The license has an event that cannot be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("license {0} has an undecodable event")]
pub struct Unreadable(pub LicenseId);

/// The in-memory hot counts. Cheap to clone (shared).
#[derive(Clone)]
pub struct HotLicenses {
    inner: Arc<RwLock<Inner>>,
    position: Arc<watch::Sender<i64>>,
}

impl Default for HotLicenses {
    fn default() -> Self {
        HotLicenses {
            inner: Arc::default(),
            position: Arc::new(watch::channel(0).0),
        }
    }
}

/// A lease past its `expires_at`, for the reaper.
pub use seatledger_ledger::store::billing::StaleLease;

impl HotLicenses {
    /// The last position applied.
    pub fn position(&self) -> i64 {
        *self.position.borrow()
    }

    /// Waits until the counts include `position`, at most `timeout`; true
    /// when they do. How a reader sees its own writes.
    pub async fn wait_for(&self, position: i64, timeout: Duration) -> bool {
        let mut receiver = self.position.subscribe();
        tokio::time::timeout(timeout, receiver.wait_for(|at| *at >= position))
            .await
            .is_ok_and(|reached| reached.is_ok())
    }

    /// `read` of the license under the read lock, if the counts know it
    /// and it is `org_id`'s; an unreadable license is an error.
    fn read_license<T>(
        &self,
        org_id: OrgId,
        license_id: LicenseId,
        read: impl FnOnce(&LicenseState) -> T,
    ) -> Result<Option<T>, Unreadable> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        if inner.unreadable.contains(&license_id) {
            return Err(Unreadable(license_id));
        }
        Ok(inner
            .licenses
            .get(&license_id)
            .filter(|license| license.terms.as_ref().is_some_and(|t| t.org_id == org_id))
            .map(read))
    }

    /// The license as of now, if the counts know it and it is `org_id`'s.
    pub fn view(
        &self,
        org_id: OrgId,
        license_id: LicenseId,
        now: Timestamp,
    ) -> Result<Option<LicenseView>, Unreadable> {
        Ok(self
            .read_license(org_id, license_id, |license| license.view(now))?
            .flatten())
    }

    /// Up to `limit` live leases of the license, by session id after
    /// `after`; `None` if the license is not `org_id`'s.
    pub fn sessions(
        &self,
        org_id: OrgId,
        license_id: LicenseId,
        now: Timestamp,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Option<Vec<Lease>>, Unreadable> {
        self.read_license(org_id, license_id, |license| {
            license.live_leases_after(now, after, limit)
        })
    }

    /// Up to `limit` leases past their expiry at `now`, across licenses.
    /// Live leases over every license (a gauge for `/metrics`).
    pub fn live_leases(&self, now: Timestamp) -> u64 {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner
            .licenses
            .values()
            .map(|license| u64::from(license.seats_used(now)))
            .sum()
    }

    pub fn stale(&self, now: Timestamp, limit: usize) -> Vec<StaleLease> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut stale = Vec::new();
        for (license_id, license) in &inner.licenses {
            let Some(terms) = &license.terms else {
                continue;
            };
            if inner.unreadable.contains(license_id) {
                continue;
            }
            for lease in license.stale_leases(now) {
                if stale.len() >= limit {
                    return stale;
                }
                stale.push(StaleLease {
                    org_id: terms.org_id,
                    license_id: *license_id,
                    session_id: lease.session_id,
                });
            }
        }
        stale
    }

    /// Every license's state, for tests that compare with a replay.
    pub fn snapshot(&self) -> HashMap<LicenseId, LicenseState> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .licenses
            .clone()
    }
}

impl Follower for HotLicenses {
    type Event = RecordedEvent;

    fn name(&self) -> &'static str {
        "hot_licenses"
    }

    async fn position(&mut self) -> Result<i64, FollowerError> {
        Ok(HotLicenses::position(self))
    }

    async fn apply(&mut self, events: &[RecordedEvent]) -> Result<(), FollowerError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        {
            let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
            for record in events {
                let Some(StreamId::License(license_id)) = StreamId::parse(&record.stream_id) else {
                    continue;
                };
                // An event that cannot be decoded makes its license
                // unreadable here as in the ledger; every other
                // license goes on.
                let Ok(event) = record.event() else {
                    tracing::error!(position = record.position, stream_id = %record.stream_id, "hot counts: undecodable event; the license is not served from the counts");
                    inner.unreadable.insert(license_id);
                    continue;
                };
                let state = inner.licenses.remove(&license_id).unwrap_or_default();
                inner.licenses.insert(license_id, evolve(state, &event));
            }
        }
        self.position.send_replace(last.position);
        Ok(())
    }
}
