//! seatledger benchmarks: criterion micro-benchmarks and load tools.
#![forbid(unsafe_code)]

use anyhow::Context;
use seatledger_ledger::domain::{
    Command, HardwareId, HeartbeatTtl, Name, OveragePercent, SeatCount,
};
use seatledger_ledger::{
    Appender, AppenderConfig, CommitNotifier, SigningKey, Store, Submission, SystemClock,
};
use seatledger_schema::OrgId;
use seatledger_schema::UserId;
use std::sync::Arc;
use uuid::Uuid;

/// The server's allocator (`seatledger` uses jemalloc), so the followers
/// and the appender measured in process here allocate as they do in it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Removes what `fresh_store` created.
pub type Cleanup = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>;

/// Refuses a store URL that is not on this machine (loopback PostgreSQL or
/// an SQLite file): benchmarks only ever load loopback services.
pub fn ensure_loopback_store(url: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        url.contains("127.0.0.1") || url.contains("localhost") || url.starts_with("sqlite:"),
        "loopback only: {url} is neither 127.0.0.1, localhost nor sqlite:"
    );
    Ok(())
}

/// A migrated store of its own for one benchmark run: on PostgreSQL a new
/// database on the server `url` names (dropped by the cleanup), for
/// `sqlite:PATH` a new file beside `PATH` (deleted by the cleanup).
pub async fn fresh_store(url: &str) -> anyhow::Result<(Store, Cleanup)> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = format!("{path}.bench-{}", Uuid::new_v4());
        let store = Store::connect(&format!("sqlite:{path}")).await?;
        store.migrate().await?;
        let cleanup: Cleanup = Box::pin(async move {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
            Ok(())
        });
        return Ok((store, cleanup));
    }
    let admin = sqlx::PgPool::connect(url)
        .await
        .context("connect to PostgreSQL")?;
    let name = format!("seatledger_bench_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let (base, _) = url.rsplit_once('/').context("URL has no database")?;
    let store = Store::connect(&format!("{base}/{name}")).await?;
    store.migrate().await?;
    let cleanup: Cleanup = Box::pin(async move {
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&admin)
            .await?;
        Ok(())
    });
    Ok((store, cleanup))
}

/// About `events` events: per license, acquires that stay live and
/// heartbeats, 256 submissions in flight.
/// Returns the tenant and how many leases are open.
pub async fn fill_live_leases(store: &Store, events: u64) -> anyhow::Result<(OrgId, u64)> {
    fill_live_leases_signed(store, events, Arc::new(SigningKey::generate()?)).await
}

/// [`fill_live_leases`], with checkpoints signed by `key` (for a bench that
/// verifies the log).
pub async fn fill_live_leases_signed(
    store: &Store,
    events: u64,
    key: Arc<SigningKey>,
) -> anyhow::Result<(OrgId, u64)> {
    let (appender, task, org, licenses) = bench_licenses(store, key, 100_000, 86_400).await?;
    let per_client = events / 256 + 1;
    let workers: Vec<_> = (0..256u64)
        .map(|client| {
            let appender = appender.clone();
            let license_id = licenses[(client % 64) as usize];
            tokio::spawn(async move {
                let mut sessions: Vec<Uuid> = Vec::new();
                for step in 0..per_client {
                    let command = if step % 4 == 3 && !sessions.is_empty() {
                        Command::Heartbeat {
                            license_id: license_id.into(),
                            session_id: sessions[(step as usize / 4) % sessions.len()].into(),
                            by: seatledger_ledger::domain::SeatActor::Unchecked,
                        }
                    } else {
                        let session_id = Uuid::now_v7();
                        sessions.push(session_id);
                        Command::AcquireSeat {
                            credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
                            token_id: None,
                            license_id: license_id.into(),
                            session_id: session_id.into(),
                            user_id: UserId::now_v7(),
                            hardware_id: HardwareId::parse(&format!("m-{client}-{step}"))?,
                        }
                    };
                    appender
                        .submit(Submission::new(org.into(), command))
                        .await?;
                }
                anyhow::Ok(sessions.len() as u64)
            })
        })
        .collect();
    let mut open = 0;
    for worker in workers {
        open += worker.await??;
    }
    drop(appender);
    task.await?;
    Ok((org.into(), open))
}

/// Fills `store` with about `events` events of 256 clients that each
/// acquire a seat on one of 64 licenses, heartbeat it and release it, over
/// and over: a long log whose live leases stay at most 256 (the shape of
/// a log that grew with time, not with seats held).
pub async fn fill_cycling_leases_signed(
    store: &Store,
    events: u64,
    key: Arc<SigningKey>,
) -> anyhow::Result<()> {
    let (appender, task, org, licenses) = bench_licenses(store, key, 1_000, 3_600).await?;
    let cycles_per_client = events / 256 / 3 + 1;
    let workers: Vec<_> = (0..256u64)
        .map(|client| {
            let appender = appender.clone();
            let license_id = licenses[(client % 64) as usize];
            tokio::spawn(async move {
                for cycle in 0..cycles_per_client {
                    let session_id = Uuid::now_v7();
                    let commands = [
                        Command::AcquireSeat {
                            credential: seatledger_ledger::domain::AcquireCredential::Unchecked,
                            token_id: None,
                            license_id: license_id.into(),
                            session_id: session_id.into(),
                            user_id: UserId::from_u128(u128::from(client)),
                            hardware_id: HardwareId::parse(&format!("m-{client}-{}", cycle % 8))?,
                        },
                        Command::Heartbeat {
                            license_id: license_id.into(),
                            session_id: session_id.into(),
                            by: seatledger_ledger::domain::SeatActor::Unchecked,
                        },
                        Command::ReleaseSeat {
                            license_id: license_id.into(),
                            session_id: session_id.into(),
                            by: seatledger_ledger::domain::SeatActor::Unchecked,
                        },
                    ];
                    for command in commands {
                        appender
                            .submit(Submission::new(org.into(), command))
                            .await?;
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    drop(appender);
    task.await?;
    Ok(())
}

/// An appender on `store` signing with `key`, one tenant and 64 licenses
/// of `seats` seats and a `ttl_s` heartbeat TTL issued through it.
async fn bench_licenses(
    store: &Store,
    key: Arc<SigningKey>,
    seats: u32,
    ttl_s: u32,
) -> anyhow::Result<(Appender, tokio::task::JoinHandle<()>, Uuid, Vec<Uuid>)> {
    let (appender, task) = Appender::start(
        store.clone(),
        key,
        Arc::new(SystemClock),
        CommitNotifier::default(),
        AppenderConfig::default(),
    );
    let org = OrgId::now_v7();
    let licenses: Vec<Uuid> = (0..64).map(|_| Uuid::now_v7()).collect();
    for license_id in &licenses {
        let issue = Command::IssueLicense {
            client_auth: Default::default(),
            license_id: (*license_id).into(),
            name: Name::parse("bench")?,
            seats: SeatCount::new(seats)?,
            expires_at: None,
            heartbeat_ttl_s: HeartbeatTtl::new(ttl_s)?,
            max_overage_percent: OveragePercent::default(),
        };
        appender.submit(Submission::new(org, issue)).await?;
    }
    Ok((appender, task, org.into(), licenses))
}

/// Registers a new organization (a fresh email per run, `label` naming the
/// tool) on the server at `url` over HTTP; returns its owner's API token.
pub async fn register_org(
    client: &reqwest::Client,
    url: &str,
    label: &str,
) -> anyhow::Result<String> {
    let run = Uuid::now_v7().simple().to_string();
    let registered: serde_json::Value = client
        .post(format!("{url}/api/v1/auth/register"))
        .json(&serde_json::json!({
            "email": format!("{label}-{run}@example.com"),
            "password": format!("{label} password"),
            "full_name": label,
            "company_name": format!("{label} {run}"),
        }))
        .send()
        .await
        .context("register")?
        .json()
        .await
        .context("register: the answer is not JSON")?;
    registered["api_token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("register: no api_token in {registered}"))
}

/// An open loop's schedule for one of `clients` clients sharing `rate`
/// operations a second (wrk2's model): client `index` sends its k-th
/// operation at `(index + k·clients) / rate` seconds, so the clients'
/// operations together arrive every `1 / rate` seconds, each at its own
/// instant, however long the answers take.
#[derive(Clone, Copy, Debug)]
pub struct OpenLoop {
    rate: f64,
    index: usize,
    clients: usize,
}

impl OpenLoop {
    pub fn new(rate: f64, index: usize, clients: usize) -> OpenLoop {
        OpenLoop {
            rate,
            index,
            clients,
        }
    }

    /// When the client's `k`-th operation (from 0) is due, after the start.
    pub fn offset(&self, k: u64) -> std::time::Duration {
        let slot = self.index as f64 + k as f64 * self.clients as f64;
        std::time::Duration::from_secs_f64(slot / self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::OpenLoop;
    use proptest::prelude::*;

    proptest! {
        /// The clients' schedules together are one constant-rate stream:
        /// sorted, the intended send times are `j / rate` for j = 0, 1, 2…
        /// with none missing or repeated.
        #[test]
        fn the_clients_together_send_at_a_constant_rate(
            rate in 1.0f64..50_000.0,
            clients in 1usize..300,
            per_client in 1u64..40,
        ) {
            let mut times: Vec<f64> = (0..clients)
                .flat_map(|index| {
                    let schedule = OpenLoop::new(rate, index, clients);
                    (0..per_client).map(move |k| schedule.offset(k).as_secs_f64())
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let interval = 1.0 / rate;
            for (j, time) in times.iter().enumerate() {
                let expected = j as f64 * interval;
                prop_assert!((time - expected).abs() <= 1e-6 + expected * 1e-9,
                    "operation {j} at {time} s, expected {expected} s");
            }
        }
    }
}
