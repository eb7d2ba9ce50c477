//! `loadgen --rate`: an open loop at a constant rate whose latencies count
//! a server's stall for every request it delayed. The real server runs
//! in-process on SQLite; between it and loadgen sits a loopback TCP relay
//! that can stop passing bytes, which is a paused server as a client sees
//! it.

use seatledger_api::{ServeArgs, Server};
use seatledger_ledger::{Store, SystemClock};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// `seatledger serve`'s own defaults, on `database_url`, on a free
/// loopback port, without the per-token rate limit (one token sends
/// everything here).
fn args(database_url: &str) -> ServeArgs {
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }
    <Serve as clap::Parser>::parse_from([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        database_url,
        "--rate-limit-seat-ops-per-s",
        "0",
    ])
    .args
}

/// Copies `from` to `to`, holding the bytes while `paused` is true.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if paused.wait_for(|paused| !paused).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// A relay on loopback to `upstream`; returns its address.
async fn relay(upstream: std::net::SocketAddr, paused: watch::Receiver<bool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(upstream).await else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pump(client_read, server_write, paused.clone()));
            tokio::spawn(pump(server_read, client_write, paused.clone()));
        }
    });
    format!("http://{address}")
}

fn result_fields(stdout: &str) -> HashMap<String, String> {
    let line = stdout
        .lines()
        .find(|line| line.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in:\n{stdout}"));
    line.split_whitespace()
        .skip(1)
        .filter_map(|field| field.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_keeps_its_rate_and_counts_a_stall_for_every_request_it_delayed() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("seatledger.db").display());
    let store = Store::connect(&url).await.unwrap();
    let server = Server::start(store, &args(&url), Arc::new(SystemClock))
        .await
        .unwrap();
    let upstream = server.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    let (pause, paused) = watch::channel(false);
    let base = relay(upstream, paused).await;

    // 200 operations a second for 4 s: 800 intended send times.
    let loadgen = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--url", &base, "--rate", "200", "--clients", "4"])
        .args([
            "--duration-s",
            "4",
            "--licenses",
            "2",
            "--seats-per-license",
            "100",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The server stops answering for 500 ms about halfway through.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    pause.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    pause.send(false).unwrap();
    let output = tokio::task::spawn_blocking(move || loadgen.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let result = result_fields(&stdout);
    let number = |key: &str| -> f64 { result[key].parse().unwrap() };

    // Constant rate: every intended send time was used, stall or not.
    assert_eq!(number("errors"), 0.0, "{stdout}");
    assert_eq!(number("ops"), 800.0, "{stdout}");
    let per_s = number("ops_per_s");
    assert!((180.0..=205.0).contains(&per_s), "{stdout}");
    // The stall shows: the request due when it began waited all of it,
    // and the hundred due during it waited what was left, so the top
    // percent are all near 500 ms. Timed from when they were sent, only
    // the 4 requests in flight (0.5%) would have been slow, and p99 would
    // not show the stall.
    assert!(number("max_ms") >= 500.0, "{stdout}");
    assert!(number("p99_ms") >= 400.0, "{stdout}");
    assert!(number("p50_ms") < 100.0, "{stdout}");
}
