//! Login back-off per account (issue 14): the first
//! [`LOGIN_FREE_FAILURES`] wrong passwords of an email cost nothing more;
//! after that each attempt must wait a delay that doubles with every
//! further failure (1 s, 2 s, 4 s, … up to [`LOGIN_BACKOFF_MAX_S`]), and is
//! answered 429 `too_many_requests` with `Retry-After` until then. A
//! success clears the account; failures older than
//! [`LOGIN_FAILURE_MEMORY_S`] are forgotten. Unknown emails are tracked the
//! same way (so the answer does not say whether an account exists), and
//! the map is bounded: when full, the oldest entries go.
//!
//! Per replica and in memory: with several replicas a guesser gets the
//! free attempts once per replica, then the same doubling on each.

use seatledger_schema::Timestamp;
use std::collections::HashMap;
use std::sync::Mutex;

/// Wrong passwords an account may have before delays start.
pub const LOGIN_FREE_FAILURES: u32 = 5;
/// The longest delay between attempts, in seconds.
pub const LOGIN_BACKOFF_MAX_S: i64 = 900;
/// Failures are forgotten this long after the last one, in seconds.
pub const LOGIN_FAILURE_MEMORY_S: i64 = 3_600;
/// Accounts tracked at most.
pub const LOGIN_GUARD_CAPACITY: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Timestamp,
}

impl Failures {
    /// When the next attempt is allowed.
    fn allowed_at(&self) -> Timestamp {
        if self.count < LOGIN_FREE_FAILURES {
            return self.last;
        }
        let doublings = (self.count - LOGIN_FREE_FAILURES).min(20);
        let delay = (1_i64 << doublings).min(LOGIN_BACKOFF_MAX_S);
        self.last.plus_seconds(delay)
    }
}

#[derive(Default)]
pub struct LoginGuard {
    accounts: Mutex<HashMap<String, Failures>>,
}

impl LoginGuard {
    /// `Err(seconds)` to wait when `account` may not try yet at `now`.
    pub fn check(&self, account: &str, now: Timestamp) -> Result<(), u64> {
        let accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let Some(failures) = accounts.get(account) else {
            return Ok(());
        };
        let allowed = failures.allowed_at();
        if now >= allowed {
            return Ok(());
        }
        let micros = allowed.micros_since(now);
        Err(u64::try_from((micros + 999_999).div_euclid(1_000_000))
            .unwrap_or(1)
            .max(1))
    }

    pub fn failed(&self, account: &str, now: Timestamp) {
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        if accounts.len() >= LOGIN_GUARD_CAPACITY && !accounts.contains_key(account) {
            let forget_before = now.plus_seconds(-LOGIN_FAILURE_MEMORY_S);
            accounts.retain(|_, failures| failures.last > forget_before);
            if accounts.len() >= LOGIN_GUARD_CAPACITY {
                // Still full: drop the oldest tenth.
                let mut ages: Vec<(Timestamp, String)> = accounts
                    .iter()
                    .map(|(key, failures)| (failures.last, key.clone()))
                    .collect();
                let evict = (LOGIN_GUARD_CAPACITY / 10).clamp(1, ages.len());
                ages.select_nth_unstable_by_key(evict - 1, |(at, _)| *at);
                for (_, key) in &ages[..evict] {
                    accounts.remove(key);
                }
            }
        }
        let entry = accounts.entry(account.to_owned()).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.micros_since(entry.last) > LOGIN_FAILURE_MEMORY_S * 1_000_000 {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
    }

    pub fn succeeded(&self, account: &str) {
        self.accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(account);
    }
}

/// Registrations one client address may make per hour.
pub const REGISTER_PER_ADDRESS_PER_HOUR: u32 = 20;
/// Login attempts one client address may make per minute (a company behind
/// one NAT address logs in through it).
pub const LOGIN_PER_ADDRESS_PER_MINUTE: u32 = 120;
/// Addresses tracked before forgetting the ones back to a full quota.
const ADDRESSES_TRACKED_MAX: usize = 100_000;

/// Per client address limits on register and login (GCRA, `governor`),
/// in memory, per replica. The address is the TCP peer: behind a proxy,
/// every client shares the proxy's, so limit there instead.
pub struct AddressLimits {
    register: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    login: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
}

impl Default for AddressLimits {
    fn default() -> Self {
        let quota = |n: u32| std::num::NonZeroU32::MIN.saturating_add(n.saturating_sub(1));
        AddressLimits {
            register: governor::RateLimiter::keyed(governor::Quota::per_hour(quota(
                REGISTER_PER_ADDRESS_PER_HOUR,
            ))),
            login: governor::RateLimiter::keyed(governor::Quota::per_minute(quota(
                LOGIN_PER_ADDRESS_PER_MINUTE,
            ))),
        }
    }
}

impl AddressLimits {
    /// `Err(seconds)` to wait before `address` may register again.
    pub fn register(&self, address: std::net::IpAddr) -> Result<(), u64> {
        Self::check(&self.register, address)
    }

    /// `Err(seconds)` to wait before `address` may try to log in again.
    pub fn login(&self, address: std::net::IpAddr) -> Result<(), u64> {
        Self::check(&self.login, address)
    }

    fn check(
        limiter: &governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
        address: std::net::IpAddr,
    ) -> Result<(), u64> {
        use governor::clock::Clock;
        if limiter.len() > ADDRESSES_TRACKED_MAX {
            limiter.retain_recent();
        }
        limiter.check_key(&address).map_err(|not_until| {
            not_until
                .wait_time_from(governor::clock::DefaultClock::default().now())
                .as_secs()
                .max(1)
        })
    }
}

/// Tokens tracked by the seat-operation limiter before forgetting the ones
/// back to a full quota.
const TOKENS_TRACKED_MAX: usize = 100_000;

/// Seat operations per API token (`--rate-limit-seat-ops-per-s`, GCRA via
/// `governor`, burst of one second's worth), in memory, per replica.
pub struct SeatOpLimits {
    limiter: Option<governor::DefaultKeyedRateLimiter<[u8; 32]>>,
}

impl SeatOpLimits {
    /// `per_s` operations a second per token; 0: unlimited.
    pub fn new(per_s: u32) -> Self {
        SeatOpLimits {
            limiter: std::num::NonZeroU32::new(per_s)
                .map(|rate| governor::RateLimiter::keyed(governor::Quota::per_second(rate))),
        }
    }

    /// `Err(seconds)` to wait before the token (by hash) may make another
    /// seat operation.
    pub fn check(&self, token_hash: &[u8; 32]) -> Result<(), u64> {
        use governor::clock::Clock;
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() > TOKENS_TRACKED_MAX {
            limiter.retain_recent();
        }
        limiter.check_key(token_hash).map_err(|not_until| {
            not_until
                .wait_time_from(governor::clock::DefaultClock::default().now())
                .as_secs()
                .max(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_are_free_then_delays_double_up_to_the_cap() {
        let guard = LoginGuard::default();
        let t0 = Timestamp::parse("2030-01-01T00:00:00Z").unwrap();
        for _ in 0..LOGIN_FREE_FAILURES {
            assert_eq!(guard.check("a", t0), Ok(()));
            guard.failed("a", t0);
        }
        assert_eq!(guard.check("a", t0), Err(1));
        assert_eq!(guard.check("a", t0.plus_seconds(1)), Ok(()));
        guard.failed("a", t0.plus_seconds(1));
        assert_eq!(guard.check("a", t0.plus_seconds(1)), Err(2));
        for n in 0..30 {
            guard.failed("a", t0.plus_seconds(2 + n));
        }
        assert_eq!(
            guard.check("a", t0.plus_seconds(31)),
            Err(LOGIN_BACKOFF_MAX_S as u64)
        );
        assert_eq!(guard.check("b", t0), Ok(()), "per account");
        guard.succeeded("a");
        assert_eq!(guard.check("a", t0.plus_seconds(31)), Ok(()));
    }

    #[test]
    fn seat_operations_are_limited_per_token_and_zero_is_unlimited() {
        let limits = SeatOpLimits::new(3);
        for _ in 0..3 {
            assert_eq!(limits.check(&[1; 32]), Ok(()));
        }
        assert_eq!(limits.check(&[1; 32]), Err(1), "the fourth within a second");
        assert_eq!(limits.check(&[2; 32]), Ok(()), "per token");
        let unlimited = SeatOpLimits::new(0);
        for _ in 0..10_000 {
            assert_eq!(unlimited.check(&[1; 32]), Ok(()));
        }
    }
}
