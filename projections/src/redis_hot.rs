//! Hot seat counts in Redis (docs/design.md §4), shared by every replica and kept
//! across restarts. Per license, under the key prefix (`seatledger:` by
//! default):
//!
//! - `lic:{id}` — a hash of the license's terms, status and last generation;
//! - `lic:{id}:exp` — a sorted set of its leases' session ids scored by
//!   `expires_at` (µs since 1970: exact to the microsecond until 2255);
//! - `lic:{id}:ses` — a hash session id → `generation|user_id|overage|hardware_id`;
//! - `lic:{id}:ids` — the session ids in lexical order (all score 0), for
//!   paging `/sessions`;
//! - `stale` — every lease as `org:license:session` scored by `expires_at`,
//!   for the reaper; `unreadable` — licenses with an undecodable event;
//! - `position:{partition}` — the follower's checkpoint; `ledger` — whose
//!   counts these are (the ledger's signing key id), so that a Redis shared
//!   with another ledger under the same prefix is never read.
//!
//! A range of events is applied by one Lua script that first compares the
//! stored checkpoint with the position the range follows and does nothing
//! if another replica got there first, then writes every change and the new
//! checkpoint: output and checkpoint move together, and each event is
//! applied once however many replicas follow. A Redis emptied by a restart
//! without persistence or a flush has no checkpoint: the follower starts
//! again from position 0 by itself. Redis must not evict keys
//! (`maxmemory-policy noeviction`, the default). The script touches keys it
//! does not declare, so this is for a single Redis (or a primary with
//! replicas), not Redis Cluster.
//!
//! Redis is never in the decision path: when it does not answer within
//! `REDIS_TIMEOUT`, reads report it and the API reads the ledger instead.

use crate::hot::{StaleLease, Unreadable};
use crate::runner::{Follower, FollowerError};
use redis::aio::ConnectionManager;
use seatledger_ledger::domain::{Lease, LicenseStatus, LicenseView, StreamId};
use seatledger_schema::{ClientAuth, Event, RecordedEvent, Timestamp};
use seatledger_schema::{LicenseId, OrgId, SessionId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex};

/// How long one Redis call may take before Redis counts as down.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

const APPLY: &str = r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then return current end
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i + 2])
  local args = {}
  for j = 1, n do args[j] = ARGV[i + 2 + j] end
  if ARGV[i] == 'ENDLEASES' then
    -- Every lease of a license ends (a suspension or revocation that ends
    -- them): key = its :ids set; args = :exp, :ses, the stale index and
    -- the prefix of its members there.
    local ids = redis.call('ZRANGE', ARGV[i + 1], 0, -1)
    for k = 1, #ids, 1000 do
      local members = {}
      for m = k, math.min(k + 999, #ids) do members[#members + 1] = args[4] .. ids[m] end
      redis.call('ZREM', args[3], unpack(members))
    end
    redis.call('DEL', ARGV[i + 1], args[1], args[2])
  else
    redis.call(ARGV[i], ARGV[i + 1], unpack(args))
  end
  i = i + 3 + n
end
redis.call('SET', KEYS[1], ARGV[2])
return tonumber(ARGV[2])
"#;

/// Why a read could not be served from Redis.
#[derive(Debug, thiserror::Error)]
pub enum RedisReadError {
    #[error(transparent)]
    Unreadable(#[from] Unreadable),
    #[error("redis unavailable: {0}")]
    Unavailable(String),
}

/// The Redis hot counts. Cheap to clone (shared).
#[derive(Clone)]
pub struct RedisLicenses {
    client: redis::Client,
    connection: Arc<Mutex<Option<ConnectionManager>>>,
    prefix: String,
    ledger: String,
    partition: i16,
    script: Arc<redis::Script>,
    /// The checkpoint as last seen by this process.
    position: Arc<watch::Sender<i64>>,
    healthy: Arc<AtomicBool>,
    /// Set while the prefix belongs to another ledger: why.
    conflict: Arc<std::sync::Mutex<Option<String>>>,
    /// Times the follower found the prefix owned by another ledger.
    conflicts: Arc<std::sync::atomic::AtomicU64>,
}

impl RedisLicenses {
    /// Does not connect: Redis may be down when the server starts.
    /// `ledger` identifies the log (its signing key id): counts found under
    /// the prefix for another ledger are never served.
    pub fn new(
        url: &str,
        prefix: &str,
        ledger: &str,
        partition: i16,
    ) -> Result<Self, FollowerError> {
        let client = redis::Client::open(url).map_err(|e| FollowerError::Output(e.to_string()))?;
        Ok(RedisLicenses {
            client,
            connection: Arc::default(),
            prefix: prefix.to_owned(),
            ledger: ledger.to_owned(),
            partition,
            script: Arc::new(redis::Script::new(APPLY)),
            position: Arc::new(watch::channel(0).0),
            healthy: Arc::new(AtomicBool::new(false)),
            conflict: Arc::default(),
            conflicts: Arc::default(),
        })
    }

    /// The prefix of every key these counts write.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// True while Redis answered the last call and the prefix is this
    /// ledger's.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.problem().is_none()
    }

    /// Why the counts cannot be used although Redis answers (the prefix
    /// belongs to another ledger), if they cannot.
    pub fn problem(&self) -> Option<String> {
        self.conflict
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Times the prefix was found to belong to another ledger.
    pub fn prefix_conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    fn set_conflict(&self, conflict: Option<String>) {
        *self.conflict.lock().unwrap_or_else(|p| p.into_inner()) = conflict;
    }

    /// The checkpoint as last seen by this process.
    pub fn position(&self) -> i64 {
        *self.position.borrow()
    }

    /// Waits until the counts include `position`, at most `timeout`; false
    /// at once while Redis is down.
    pub async fn wait_for(&self, position: i64, timeout: Duration) -> bool {
        if !self.is_healthy() {
            return false;
        }
        let mut receiver = self.position.subscribe();
        tokio::time::timeout(timeout, receiver.wait_for(|at| *at >= position))
            .await
            .is_ok_and(|reached| reached.is_ok())
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    fn license_key(&self, license_id: LicenseId, suffix: &str) -> String {
        format!("{}lic:{license_id}{suffix}", self.prefix)
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1);
        let connection = tokio::time::timeout(
            REDIS_TIMEOUT * 2,
            self.client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| "connecting timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Runs `call` on a connection with the timeout, recording health.
    async fn run<T, F, Fut>(&self, call: F) -> Result<T, String>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let outcome = match self.connection().await {
            Ok(connection) => match tokio::time::timeout(REDIS_TIMEOUT, call(connection)).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("timed out".to_owned()),
            },
            Err(error) => Err(error),
        };
        let was = self.healthy.swap(outcome.is_ok(), Ordering::Relaxed);
        match (&outcome, was) {
            (Err(error), true) => {
                tracing::warn!(error, "redis unavailable: reads go to the ledger")
            }
            (Ok(_), false) => tracing::info!("redis available"),
            _ => {}
        }
        outcome
    }

    /// The keys under this prefix (SCAN: never blocks Redis).
    async fn keys(&self) -> Result<Vec<String>, String> {
        let pattern = format!("{}*", redis_glob_escape(&self.prefix));
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let pattern = pattern.clone();
            let (next, page): (u64, Vec<String>) = self
                .run(|mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1_000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            keys.extend(page);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// Moves every key under this prefix to `target`'s prefix in place of
    /// what `target` held, in one MULTI/EXEC (readers of `target` see the
    /// old counts or these, never a mix): how a rebuild built under a
    /// fresh prefix is swapped in. Returns the keys moved.
    pub async fn swap_into(&self, target: &RedisLicenses) -> Result<usize, String> {
        if target.prefix.starts_with(&self.prefix) || self.prefix.starts_with(&target.prefix) {
            return Err("the prefixes must not contain one another".into());
        }
        let old = target.keys().await?;
        let new = self.keys().await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in &old {
            pipe.cmd("DEL").arg(key).ignore();
        }
        for key in &new {
            let renamed = format!("{}{}", target.prefix, &key[self.prefix.len()..]);
            pipe.cmd("RENAME").arg(key).arg(renamed).ignore();
        }
        // A big keyspace takes longer than one ordinary call may.
        let mut connection = self.connection().await?;
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(new.len())
    }

    /// Deletes every key under this prefix (a rebuild given up).
    pub async fn delete_all(&self) -> Result<(), String> {
        for keys in self.keys().await?.chunks(1_000) {
            let keys = keys.to_vec();
            self.run(
                |mut c| async move { redis::cmd("DEL").arg(keys).query_async::<()>(&mut c).await },
            )
            .await?;
        }
        Ok(())
    }

    /// The checkpoint, after checking that the counts under this prefix are
    /// this ledger's: a Redis (or prefix) shared with another ledger must
    /// never serve its counts. An empty prefix is claimed for this ledger.
    async fn stored_position(&self) -> Result<i64, String> {
        let position_key = self.key(&format!("position:{}", self.partition));
        let ledger_key = self.key("ledger");
        let ledger = self.ledger.clone();
        let (stored, owner): (Option<i64>, Option<String>) = self
            .run(|mut c| async move {
                redis::cmd("SET")
                    .arg(&ledger_key)
                    .arg(&ledger)
                    .arg("NX")
                    .query_async::<()>(&mut c)
                    .await?;
                redis::pipe()
                    .cmd("GET")
                    .arg(&position_key)
                    .cmd("GET")
                    .arg(&ledger_key)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if owner.as_deref() != Some(self.ledger.as_str()) {
            let owner = owner.unwrap_or_default();
            tracing::error!(prefix = %self.prefix, owner, "the Redis keys under this prefix belong to another ledger; reads go to the ledger and the reaper to the billing follower's leases (use another --redis-prefix)");
            let problem = format!(
                "the Redis keys under the prefix {} belong to another ledger ({owner}): use another --redis-prefix",
                self.prefix
            );
            self.conflicts.fetch_add(1, Ordering::Relaxed);
            self.set_conflict(Some(problem.clone()));
            return Err(problem);
        }
        self.set_conflict(None);
        let stored = stored.unwrap_or(0);
        self.position.send_replace(stored);
        Ok(stored)
    }

    /// The license as of now, if Redis knows it and it is `org_id`'s.
    pub async fn view(
        &self,
        org_id: OrgId,
        license_id: LicenseId,
        now: Timestamp,
    ) -> Result<Option<LicenseView>, RedisReadError> {
        let (fields, live, unreadable): (HashMap<String, String>, u32, bool) = self
            .run(|mut c| {
                let mut pipe = redis::pipe();
                pipe.cmd("HGETALL")
                    .arg(self.license_key(license_id, ""))
                    .cmd("ZCOUNT")
                    .arg(self.license_key(license_id, ":exp"))
                    .arg(format!("({}", now.as_micros()))
                    .arg("+inf")
                    .cmd("SISMEMBER")
                    .arg(self.key("unreadable"))
                    .arg(license_id.to_string());
                async move { pipe.query_async(&mut c).await }
            })
            .await
            .map_err(RedisReadError::Unavailable)?;
        if unreadable {
            return Err(Unreadable(license_id).into());
        }
        Ok(view_from(license_id, &fields, live).filter(|view| view.org_id == org_id))
    }

    /// Up to `limit` live leases by session id after `after`; `None` if
    /// Redis does not know the license or it is not `org_id`'s.
    pub async fn sessions(
        &self,
        org_id: OrgId,
        license_id: LicenseId,
        now: Timestamp,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Option<Vec<Lease>>, RedisReadError> {
        let Some(_) = self.view(org_id, license_id, now).await? else {
            return Ok(None);
        };
        let mut leases = Vec::new();
        let mut from = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        while leases.len() < limit {
            let want = limit - leases.len();
            let ids_key = self.license_key(license_id, ":ids");
            let ids: Vec<String> = self
                .run(|mut c| {
                    let from = from.clone();
                    async move {
                        redis::cmd("ZRANGEBYLEX")
                            .arg(ids_key)
                            .arg(from)
                            .arg("+")
                            .arg("LIMIT")
                            .arg(0)
                            .arg(want)
                            .query_async(&mut c)
                            .await
                    }
                })
                .await
                .map_err(RedisReadError::Unavailable)?;
            let Some(last) = ids.last() else { break };
            from = format!("({last}");
            let (details, scores): (Vec<Option<String>>, Vec<Option<f64>>) = self
                .run(|mut c| {
                    let mut pipe = redis::pipe();
                    pipe.cmd("HMGET")
                        .arg(self.license_key(license_id, ":ses"))
                        .arg(&ids)
                        .cmd("ZMSCORE")
                        .arg(self.license_key(license_id, ":exp"))
                        .arg(&ids);
                    async move { pipe.query_async(&mut c).await }
                })
                .await
                .map_err(RedisReadError::Unavailable)?;
            for ((id, detail), score) in ids.iter().zip(details).zip(scores) {
                let (Some(detail), Some(score)) = (detail, score) else {
                    continue;
                };
                let expires_at = Timestamp::from_micros_saturating(score as i64);
                if expires_at <= now {
                    continue;
                }
                if let Some(lease) = lease_from(id, &detail, expires_at) {
                    leases.push(lease);
                }
            }
            if ids.len() < want {
                break;
            }
        }
        Ok(Some(leases))
    }

    /// Up to `limit` leases past their expiry at `now`, across licenses.
    /// Live leases over every license: those whose `expires_at` is after
    /// `now` in the `stale` index (a gauge for `/metrics`).
    pub async fn live_leases(&self, now: Timestamp) -> Result<u64, String> {
        let key = self.key("stale");
        self.run(|mut c| async move {
            redis::cmd("ZCOUNT")
                .arg(key)
                .arg(format!("({}", now.as_micros()))
                .arg("+inf")
                .query_async(&mut c)
                .await
        })
        .await
    }

    pub async fn stale(&self, now: Timestamp, limit: usize) -> Result<Vec<StaleLease>, String> {
        if let Some(problem) = self.problem() {
            return Err(problem);
        }
        let key = self.key("stale");
        let members: Vec<String> = self
            .run(|mut c| async move {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(key)
                    .arg("-inf")
                    .arg(now.as_micros())
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(members
            .iter()
            .filter_map(|member| {
                let mut parts = member.split(':');
                Some(StaleLease {
                    org_id: parts.next()?.parse().ok()?,
                    license_id: parts.next()?.parse().ok()?,
                    session_id: parts.next()?.parse().ok()?,
                })
            })
            .collect())
    }

    /// The changes `record` makes, as `(command, key, args)`.
    fn changes(&self, record: &RecordedEvent, out: &mut Vec<Change>) {
        let Some(StreamId::License(license_id)) = StreamId::parse(&record.stream_id) else {
            return;
        };
        let license = self.license_key(license_id, "");
        let Ok(event) = record.event() else {
            tracing::error!(position = record.position, stream_id = %record.stream_id, "redis hot counts: undecodable event; the license is not served from the counts");
            out.push(("SADD", self.key("unreadable"), vec![license_id.to_string()]));
            return;
        };
        let status = |status: LicenseStatus| {
            (
                "HSET",
                license.clone(),
                vec!["status".to_owned(), status.as_str().to_owned()],
            )
        };
        let lease = LeaseKeys {
            hot: self,
            license_id,
            org_id: record.org_id,
        };
        match &event {
            Event::LicenseIssued(issued) => {
                out.push(("HSET", license.clone(), issued_fields(issued)));
                out.push(expiry(&license, issued.expires_at));
            }
            Event::LicenseSeatsChanged(changed) => out.push((
                "HSET",
                license,
                vec!["seats".into(), changed.seats.to_string()],
            )),
            Event::LicenseRenewed(renewed) => out.push(expiry(&license, renewed.expires_at)),
            Event::LicenseSuspended(changed) | Event::LicenseRevoked(changed) => {
                out.push(status(if matches!(event, Event::LicenseSuspended(_)) {
                    LicenseStatus::Suspended
                } else {
                    LicenseStatus::Revoked
                }));
                if changed.ends_leases {
                    out.push(lease.end_all());
                }
            }
            Event::LicenseReinstated(_) => out.push(status(LicenseStatus::Active)),
            Event::SeatAcquired(acquired) => lease.acquired(acquired, out),
            Event::SeatHeartbeat(beat) => lease.extended(beat, out),
            Event::SeatReleased(seatledger_schema::SeatReleased { session_id, .. })
            | Event::SeatExpired(seatledger_schema::SeatExpired { session_id, .. }) => {
                lease.ended(*session_id, out)
            }
            Event::SeatDenied(_)
            | Event::OrganizationRegistered(_)
            | Event::UserRegistered(_)
            | Event::UserRoleChanged(_)
            | Event::UserDeactivated(_)
            | Event::LogPruned(_) => {}
        }
    }
}

fn expiry(license: &str, expires_at: Option<Timestamp>) -> (&'static str, String, Vec<String>) {
    match expires_at {
        Some(at) => (
            "HSET",
            license.to_owned(),
            vec!["expires_at".into(), at.as_micros().to_string()],
        ),
        None => ("HDEL", license.to_owned(), vec!["expires_at".into()]),
    }
}

/// `text` with Redis glob characters escaped, for SCAN MATCH.
fn redis_glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn view_from(
    license_id: LicenseId,
    fields: &HashMap<String, String>,
    live: u32,
) -> Option<LicenseView> {
    let number = |name: &str| fields.get(name)?.parse::<u64>().ok();
    let seats = u32::try_from(number("seats")?).ok()?;
    let max_overage_percent = u32::try_from(number("max_overage_percent")?).ok()?;
    let status = match fields.get("status")?.as_str() {
        "active" => LicenseStatus::Active,
        "suspended" => LicenseStatus::Suspended,
        "revoked" => LicenseStatus::Revoked,
        _ => return None,
    };
    let expires_at = match fields.get("expires_at") {
        Some(micros) => Some(Timestamp::try_from_micros(micros.parse().ok()?).ok()?),
        None => None,
    };
    let terms = seatledger_ledger::domain::LicenseTerms {
        license_id,
        org_id: fields.get("org_id")?.parse().ok()?,
        name: fields.get("name")?.clone(),
        seats,
        expires_at,
        heartbeat_ttl_s: u32::try_from(number("heartbeat_ttl_s")?).ok()?,
        max_overage_percent,
        client_auth: match fields.get("client_auth") {
            Some(text) => ClientAuth::parse(text)?,
            None => ClientAuth::Token,
        },
    };
    Some(LicenseView {
        license_id,
        org_id: terms.org_id,
        name: terms.name.clone(),
        status,
        seats,
        seat_limit: terms.seat_limit(),
        seats_used: live,
        expires_at,
        heartbeat_ttl_s: terms.heartbeat_ttl_s,
        max_overage_percent,
        client_auth: terms.client_auth,
        last_generation: number("last_generation")?,
    })
}

fn lease_from(session: &str, detail: &str, expires_at: Timestamp) -> Option<Lease> {
    let mut parts = detail.splitn(4, '|');
    Some(Lease {
        session_id: session.parse().ok()?,
        generation: parts.next()?.parse().ok()?,
        user_id: parts.next()?.parse().ok()?,
        overage: parts.next()? == "1",
        hardware_id: parts.next()?.to_owned(),
        expires_at,
    })
}

impl Follower for RedisLicenses {
    type Event = RecordedEvent;

    fn name(&self) -> &'static str {
        "hot_licenses_redis"
    }

    async fn position(&mut self) -> Result<i64, FollowerError> {
        self.stored_position().await.map_err(FollowerError::Output)
    }

    async fn apply(&mut self, events: &[RecordedEvent]) -> Result<(), FollowerError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(());
        };
        let mut changes = Vec::new();
        for record in events {
            self.changes(record, &mut changes);
        }
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(self.key(&format!("position:{}", self.partition)))
            .arg(first.position - 1)
            .arg(last.position);
        for (command, key, args) in &changes {
            invocation.arg(*command).arg(key).arg(args.len()).arg(args);
        }
        let stored: i64 = self
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await
            .map_err(FollowerError::Output)?;
        // Another replica may have applied the range (or more) first: then
        // the stored checkpoint is where we are. One behind the range means
        // Redis was emptied meanwhile: start again from its checkpoint.
        self.position.send_replace(stored);
        if stored < last.position {
            return Err(FollowerError::Output(format!(
                "the checkpoint is at {stored}, not {}: Redis was emptied; rebuilding",
                first.position - 1
            )));
        }
        Ok(())
    }
}

/// A Redis command: its name, key and arguments.
type Change = (&'static str, String, Vec<String>);

/// A new license's fields in its hash.
fn issued_fields(issued: &seatledger_schema::LicenseIssued) -> Vec<String> {
    vec![
        "org_id".into(),
        issued.org_id.to_string(),
        "name".into(),
        issued.name.clone(),
        "seats".into(),
        issued.seats.to_string(),
        "heartbeat_ttl_s".into(),
        issued.heartbeat_ttl_s.to_string(),
        "max_overage_percent".into(),
        issued.max_overage_percent.to_string(),
        "client_auth".into(),
        issued.client_auth.as_str().into(),
        "status".into(),
        LicenseStatus::Active.as_str().into(),
        "last_generation".into(),
        "0".into(),
    ]
}

/// The keys of one license's leases: by expiry (`:exp`), by id (`:ids`),
/// the sessions (`:ses`), and the prefix-wide `stale` index.
struct LeaseKeys<'a> {
    hot: &'a RedisLicenses,
    license_id: LicenseId,
    org_id: OrgId,
}

impl LeaseKeys<'_> {
    fn key(&self, suffix: &str) -> String {
        self.hot.license_key(self.license_id, suffix)
    }

    fn stale_member(&self, session_id: SessionId) -> String {
        format!("{}:{}:{session_id}", self.org_id, self.license_id)
    }

    fn acquired(&self, acquired: &seatledger_schema::SeatAcquired, out: &mut Vec<Change>) {
        let session = acquired.session_id.to_string();
        let score = acquired.expires_at.as_micros().to_string();
        let held = format!(
            "{}|{}|{}|{}",
            acquired.generation,
            acquired.user_id,
            u8::from(acquired.overage),
            acquired.hardware_id
        );
        out.extend([
            (
                "HSET",
                self.key(""),
                vec!["last_generation".into(), acquired.generation.to_string()],
            ),
            (
                "ZADD",
                self.key(":exp"),
                vec![score.clone(), session.clone()],
            ),
            ("HSET", self.key(":ses"), vec![session.clone(), held]),
            ("ZADD", self.key(":ids"), vec!["0".into(), session]),
            (
                "ZADD",
                self.hot.key("stale"),
                vec![score, self.stale_member(acquired.session_id)],
            ),
        ]);
    }

    /// XX: only a lease that exists is extended, as in `evolve`.
    fn extended(&self, beat: &seatledger_schema::SeatHeartbeat, out: &mut Vec<Change>) {
        let score = beat.expires_at.as_micros().to_string();
        out.extend([
            (
                "ZADD",
                self.key(":exp"),
                vec!["XX".into(), score.clone(), beat.session_id.to_string()],
            ),
            (
                "ZADD",
                self.hot.key("stale"),
                vec!["XX".into(), score, self.stale_member(beat.session_id)],
            ),
        ]);
    }

    fn ended(&self, session_id: SessionId, out: &mut Vec<Change>) {
        let session = session_id.to_string();
        out.extend([
            ("ZREM", self.key(":exp"), vec![session.clone()]),
            ("ZREM", self.key(":ids"), vec![session.clone()]),
            ("HDEL", self.key(":ses"), vec![session]),
            (
                "ZREM",
                self.hot.key("stale"),
                vec![self.stale_member(session_id)],
            ),
        ]);
    }

    /// A suspension or revocation that ends every lease.
    fn end_all(&self) -> Change {
        (
            "ENDLEASES",
            self.key(":ids"),
            vec![
                self.key(":exp"),
                self.key(":ses"),
                self.hot.key("stale"),
                format!("{}:{}:", self.org_id, self.license_id),
            ],
        )
    }
}
