//! Login back-off: guessing is slowed per account and client address,
//! and a guesser cannot lock the real user out.
//!
//! Threat model (docs/security.md has the whole of it):
//! - A guesser who knows an email tries passwords, from one address or
//!   many, one at a time or all at once.
//! - A griefer who knows an email sends wrong passwords to keep its owner
//!   out.
//!
//! The rules:
//! - **Per account and address** (IPv6 grouped by /64, see
//!   [`address_group`]): the first [`LOGIN_FREE_FAILURES`] wrong passwords
//!   cost nothing more; after that each attempt waits a delay that doubles
//!   with every further failure (1 s, 2 s, 4 s, … up to
//!   [`LOGIN_BACKOFF_MAX_S`]), answered 429 `too_many_requests` with
//!   `Retry-After` until then. A success clears the pair.
//! - **Per account, from every address together**: past
//!   [`LOGIN_ACCOUNT_FREE_FAILURES`] failures the same doubling applies to
//!   the whole account, except to addresses that have logged in to it
//!   successfully before ([`LOGIN_KNOWN_ADDRESS_S`]): the owner from their
//!   usual client still gets in while the attacker is slowed (OWASP's
//!   "device cookie" idea, with the client address as the device).
//! - **An attempt counts before the password is hashed**: [`LoginGuard::begin`]
//!   checks and counts it as a failure in one step under a lock, and a
//!   success takes it back. So simultaneous guesses cannot all pass while
//!   the first is still being hashed: at most [`LOGIN_FREE_FAILURES`]
//!   hashes run per account and address before the delays start.
//!
//! Failures older than [`LOGIN_FAILURE_MEMORY_S`] are forgotten. Unknown
//! emails are tracked the same way (so the answer does not say whether an
//! account exists), and the maps are bounded: when full, the oldest
//! entries go. Per replica and in memory: with several replicas a guesser
//! gets the free attempts once per replica, then the same doubling on each.

use seatledger_schema::OrgId;
use seatledger_schema::Timestamp;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Wrong passwords an account may have from one address before delays start.
pub const LOGIN_FREE_FAILURES: u32 = 5;
/// Wrong passwords an account may have from all addresses together before
/// delays start for every address that has not logged in to it before.
pub const LOGIN_ACCOUNT_FREE_FAILURES: u32 = 50;
/// The longest delay between attempts, in seconds.
pub const LOGIN_BACKOFF_MAX_S: i64 = 900;
/// Failures are forgotten this long after the last one, in seconds.
pub const LOGIN_FAILURE_MEMORY_S: i64 = 3_600;
/// An address that logged in to an account stays known to it this long
/// after its last success, in seconds (30 days).
pub const LOGIN_KNOWN_ADDRESS_S: i64 = 30 * 86_400;
/// Entries tracked at most in each map.
pub const LOGIN_GUARD_CAPACITY: usize = 100_000;

/// The part of a client address that identifies a client: the whole IPv4
/// address (an IPv4-mapped IPv6 address counts as IPv4), or the /64 of an
/// IPv6 address (one host usually holds the whole /64).
pub fn address_group(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1_u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(bits))
            }
        },
    }
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Timestamp,
}

impl Failures {
    /// When the next attempt is allowed, `free` failures being free.
    fn allowed_at(&self, free: u32) -> Timestamp {
        if self.count < free {
            return self.last;
        }
        let doublings = (self.count - free).min(20);
        let delay = (1_i64 << doublings).min(LOGIN_BACKOFF_MAX_S);
        self.last.plus_seconds(delay)
    }

    /// Counts one failure at `now`, forgetting the ones long past.
    fn add(&mut self, now: Timestamp) {
        if now.micros_since(self.last) > LOGIN_FAILURE_MEMORY_S * 1_000_000 {
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.last = now;
    }
}

/// Seconds from `now` until `at`, at least 1.
fn seconds_until(at: Timestamp, now: Timestamp) -> u64 {
    let micros = at.micros_since(now);
    u64::try_from((micros + 999_999).div_euclid(1_000_000))
        .unwrap_or(1)
        .max(1)
}

type Pair = (String, Option<IpAddr>);

#[derive(Default)]
struct Tracked {
    /// Failures per account and address group.
    pairs: HashMap<Pair, Failures>,
    /// Failures per account, from every address.
    accounts: HashMap<String, Failures>,
    /// When each address group last logged in to each account.
    known: HashMap<Pair, Timestamp>,
}

/// Keeps `map` under [`LOGIN_GUARD_CAPACITY`] before `key` is added: the
/// entries whose time `at` is older than `forget_before` go, then if still
/// full the oldest tenth.
fn make_room<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    key: &K,
    forget_before: Timestamp,
    at: impl Fn(&V) -> Timestamp,
) {
    if map.len() < LOGIN_GUARD_CAPACITY || map.contains_key(key) {
        return;
    }
    map.retain(|_, value| at(value) > forget_before);
    if map.len() >= LOGIN_GUARD_CAPACITY {
        let mut ages: Vec<(Timestamp, K)> = map
            .iter()
            .map(|(key, value)| (at(value), key.clone()))
            .collect();
        let evict = (LOGIN_GUARD_CAPACITY / 10).clamp(1, ages.len());
        ages.select_nth_unstable_by_key(evict - 1, |(at, _)| *at);
        for (_, key) in &ages[..evict] {
            map.remove(key);
        }
    }
}

#[derive(Default)]
pub struct LoginGuard {
    tracked: Mutex<Tracked>,
}

impl LoginGuard {
    /// Checks and counts a login attempt on `account` from `address` at
    /// `now`, before its password is checked: `Err(seconds)` to wait when
    /// it may not try yet (nothing counted). An allowed attempt counts as a
    /// failure until [`LoginGuard::succeeded`] takes it back.
    pub fn begin(&self, account: &str, address: Option<IpAddr>, now: Timestamp) -> Result<(), u64> {
        let pair: Pair = (account.to_owned(), address.map(address_group));
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        let tracked = &mut *tracked;
        let mut allowed = now;
        if let Some(failures) = tracked.pairs.get(&pair) {
            allowed = allowed.max(failures.allowed_at(LOGIN_FREE_FAILURES));
        }
        let known = tracked
            .known
            .get(&pair)
            .is_some_and(|last| now.micros_since(*last) <= LOGIN_KNOWN_ADDRESS_S * 1_000_000);
        if !known {
            if let Some(failures) = tracked.accounts.get(account) {
                allowed = allowed.max(failures.allowed_at(LOGIN_ACCOUNT_FREE_FAILURES));
            }
        }
        if now < allowed {
            return Err(seconds_until(allowed, now));
        }
        let forget_before = now.plus_seconds(-LOGIN_FAILURE_MEMORY_S);
        make_room(&mut tracked.pairs, &pair, forget_before, |f| f.last);
        let account_key = account.to_owned();
        make_room(&mut tracked.accounts, &account_key, forget_before, |f| {
            f.last
        });
        let fresh = Failures {
            count: 0,
            last: now,
        };
        tracked.pairs.entry(pair).or_insert(fresh).add(now);
        tracked
            .accounts
            .entry(account_key)
            .or_insert(fresh)
            .add(now);
        Ok(())
    }

    /// The attempt [`LoginGuard::begin`] counted had the right password:
    /// the pair's failures are cleared, the attempt is taken back from the
    /// account's, and the address becomes known to the account.
    pub fn succeeded(&self, account: &str, address: Option<IpAddr>, now: Timestamp) {
        let pair: Pair = (account.to_owned(), address.map(address_group));
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        tracked.pairs.remove(&pair);
        if let Some(failures) = tracked.accounts.get_mut(account) {
            failures.count = failures.count.saturating_sub(1);
            if failures.count == 0 {
                tracked.accounts.remove(account);
            }
        }
        let forget_before = now.plus_seconds(-LOGIN_KNOWN_ADDRESS_S);
        make_room(&mut tracked.known, &pair, forget_before, |last| *last);
        tracked.known.insert(pair, now);
    }
}

/// Registrations one client address may make per hour.
pub const REGISTER_PER_ADDRESS_PER_HOUR: u32 = 20;
/// Users one organization's admins may add per hour: each answer says
/// whether an address is taken anywhere (409 `email_taken`), so this bounds
/// how fast an admin can probe addresses of other organizations.
pub const USERS_PER_ORG_PER_HOUR: u32 = 20;
/// Login attempts one client address may make per minute (a company behind
/// one NAT address logs in through it).
pub const LOGIN_PER_ADDRESS_PER_MINUTE: u32 = 120;
/// Addresses tracked before forgetting the ones back to a full quota.
const ADDRESSES_TRACKED_MAX: usize = 100_000;

/// Per client address limits on register and login (GCRA, `governor`),
/// in memory, per replica. The address is the TCP peer, IPv6 grouped by /64
/// ([`address_group`]): behind a proxy, every client shares the proxy's, so
/// limit there instead.
pub struct AddressLimits {
    register: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    login: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    /// Users added, per organization (not an address, but the same kind of
    /// limit: GCRA, in memory, per replica).
    add_user: governor::DefaultKeyedRateLimiter<OrgId>,
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
            add_user: governor::RateLimiter::keyed(governor::Quota::per_hour(quota(
                USERS_PER_ORG_PER_HOUR,
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

    /// `Err(seconds)` to wait before `org_id`'s admins may add another user.
    pub fn add_user(&self, org_id: OrgId) -> Result<(), u64> {
        Self::check_key(&self.add_user, org_id)
    }

    fn check(
        limiter: &governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
        address: std::net::IpAddr,
    ) -> Result<(), u64> {
        Self::check_key(limiter, address_group(address))
    }

    fn check_key<K: Clone + Eq + std::hash::Hash>(
        limiter: &governor::DefaultKeyedRateLimiter<K>,
        key: K,
    ) -> Result<(), u64> {
        use governor::clock::Clock;
        if limiter.len() > ADDRESSES_TRACKED_MAX {
            limiter.retain_recent();
        }
        limiter.check_key(&key).map_err(|not_until| {
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

    fn at(seconds: i64) -> Timestamp {
        Timestamp::parse("2030-01-01T00:00:00Z")
            .unwrap()
            .plus_seconds(seconds)
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn five_failures_are_free_then_delays_double_up_to_the_cap() {
        let guard = LoginGuard::default();
        let a = ip("192.0.2.1");
        for _ in 0..LOGIN_FREE_FAILURES {
            assert_eq!(guard.begin("a", a, at(0)), Ok(()));
        }
        assert_eq!(guard.begin("a", a, at(0)), Err(1));
        assert_eq!(guard.begin("a", a, at(1)), Ok(()));
        assert_eq!(guard.begin("a", a, at(1)), Err(2));
        let mut now = 3;
        for _ in 0..30 {
            let _ = guard.begin("a", a, at(now));
            now += LOGIN_BACKOFF_MAX_S;
        }
        assert_eq!(
            guard.begin("a", a, at(now - LOGIN_BACKOFF_MAX_S)),
            Err(LOGIN_BACKOFF_MAX_S as u64)
        );
        assert_eq!(guard.begin("b", a, at(now)), Ok(()), "per account");
        guard.succeeded("a", a, at(now));
        assert_eq!(guard.begin("a", a, at(now)), Ok(()));
    }

    #[test]
    fn an_attempt_counts_before_its_outcome_is_known() {
        let guard = LoginGuard::default();
        let a = ip("192.0.2.1");
        let allowed = (0..200)
            .filter(|_| guard.begin("a", a, at(0)).is_ok())
            .count();
        assert_eq!(allowed, LOGIN_FREE_FAILURES as usize);
    }

    #[test]
    fn another_address_is_not_slowed_by_a_guesser() {
        let guard = LoginGuard::default();
        let (owner, attacker) = (ip("192.0.2.1"), ip("198.51.100.7"));
        for _ in 0..LOGIN_FREE_FAILURES {
            guard.begin("a", attacker, at(0)).unwrap();
        }
        assert!(guard.begin("a", attacker, at(0)).is_err());
        assert_eq!(guard.begin("a", owner, at(0)), Ok(()));
        guard.succeeded("a", owner, at(0));
    }

    #[test]
    fn past_the_account_ceiling_only_known_addresses_get_in() {
        let guard = LoginGuard::default();
        let owner = ip("192.0.2.1");
        guard.begin("a", owner, at(0)).unwrap();
        guard.succeeded("a", owner, at(0));
        // A guesser spread over many addresses reaches the ceiling.
        for n in 0..LOGIN_ACCOUNT_FREE_FAILURES {
            let address = Some(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n)));
            guard.begin("a", address, at(1)).unwrap();
        }
        assert_eq!(
            guard.begin("a", ip("203.0.113.9"), at(1)),
            Err(1),
            "a new address waits"
        );
        assert_eq!(
            guard.begin("a", owner, at(1)),
            Ok(()),
            "the owner's address does not"
        );
        guard.succeeded("a", owner, at(1));
        assert_eq!(guard.begin("a", ip("203.0.113.9"), at(2)), Ok(()));
    }

    #[test]
    fn ipv6_addresses_are_grouped_by_64() {
        let guard = LoginGuard::default();
        for host in 1..=LOGIN_FREE_FAILURES {
            guard
                .begin("a", ip(&format!("2001:db8:1:2::{host}")), at(0))
                .unwrap();
        }
        assert!(guard.begin("a", ip("2001:db8:1:2:ffff::1"), at(0)).is_err());
        assert_eq!(guard.begin("a", ip("2001:db8:1:3::1"), at(0)), Ok(()));
        assert_eq!(
            address_group("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
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
