//! Processes a fault test starts, stops and kills: a PostgreSQL server of
//! its own (`initdb` + `pg_ctl` on a free loopback port), and the real
//! `seatledger serve` binary.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The connection URL of a `#[sqlx::test]` database (DATABASE_URL with its
/// database name), for a server process.
pub fn database_url(pool: &sqlx::PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{database}")
}

/// A PostgreSQL server of the test's own in a temporary directory, on a
/// free loopback port, so the test can stop and start it. PostgreSQL
/// refuses to run as root: as root, its tools run as the `postgres` user
/// (which owns the directory). Stopped (`-m immediate`) when dropped.
pub struct PrivatePostgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = postgres_bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let owner = if is_root() {
            let uid = id("-u");
            let gid = id("-g");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            Some((uid, gid))
        } else {
            None
        };
        let server = PrivatePostgres {
            port: free_port(),
            dir,
            bin,
            owner,
        };
        let data = server.data();
        server.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        server.start_again();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut command = match self.owner {
            Some(_) => {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(&program);
                command
            }
            None => Command::new(&program),
        };
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        assert!(
            output.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts the server (after `stop`) and waits until it accepts.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stops it the way a crash does (`-m immediate`: no checkpoint, every
    /// connection cut).
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut command = match self.owner {
            Some(_) => {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(pg_ctl);
                command
            }
            None => Command::new(pg_ctl),
        };
        let _ = command
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn is_root() -> bool {
    let output = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

/// `id FLAG` of the `postgres` user (or of the caller for `is_root`).
fn id(flag: &str) -> u32 {
    let output = Command::new("id")
        .arg(flag)
        .arg("postgres")
        .output()
        .unwrap();
    assert!(output.status.success(), "no postgres user: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

/// The newest `/usr/lib/postgresql/N/bin` (Debian's layout; scripts/test
/// installs the packages).
fn postgres_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql (scripts/test installs PostgreSQL)")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("initdb under /usr/lib/postgresql/*/bin")
        .1
}

/// The real `seatledger serve` on a free loopback port, logging JSON to a
/// pipe that a thread drains (kept, for failure messages).
pub struct ServerProcess {
    child: Child,
    pub base: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts `seatledger serve` on `database_url` with the key files in
    /// `keys` (created there by the first server) and `extra` flags, and
    /// waits (30 s at most) until it listens.
    pub fn start(database_url: &str, keys: &Path, extra: &[&str]) -> ServerProcess {
        ServerProcess::start_on("127.0.0.1:0", database_url, keys, extra)
    }

    /// [`start`](Self::start) listening on `listen` (a restart can keep
    /// its address).
    pub fn start_on(
        listen: &str,
        database_url: &str,
        keys: &Path,
        extra: &[&str],
    ) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_seatledger"))
            .args(["--log-format", "json", "serve", "--listen", listen])
            .args(["--database-url", database_url])
            .arg("--signing-key")
            .arg(keys.join("ledger.key"))
            .arg("--token-signing-key")
            .arg(keys.join("token.key"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                    if value["fields"]["message"] == "seatledger listening" {
                        let _ =
                            address_tx.send(value["fields"]["address"].as_str().map(str::to_owned));
                    }
                }
                kept.lock().unwrap().push(line);
            }
        });
        let address = match address_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(address)) => address,
            _ => {
                let _ = child.kill();
                panic!("the server did not start: {:?}", log.lock().unwrap());
            }
        };
        ServerProcess {
            child,
            base: format!("http://{address}"),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (a graceful stop: it signs its head), and wait for it.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
