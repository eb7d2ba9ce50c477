//! What an operator sees: request ids on every response and in the events
//! a request appends; plain-text logs when stderr is not a terminal.

mod common;

use common::TestApp;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[sqlx::test(migrations = false)]
async fn every_response_has_a_request_id_and_events_carry_it(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    let org = app.register("ada@example.com").await;
    let (_, key) = app.issue(&org, json!({"name": "IDE", "seats": 2})).await;

    // Without one, the server makes one, returns it and records it.
    let acquired = app.acquire(&org, &key, "m1").await;
    let generated = acquired.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!generated.is_empty());
    let events = app.events().await;
    assert_eq!(
        events.last().unwrap().metadata.request_id.as_deref(),
        Some(generated.as_str())
    );

    // With one, it is kept.
    let reply = TestApp::reply(
        app.client
            .post(app.url("/api/v1/licenses/acquire"))
            .bearer_auth(&org.token)
            .header("x-request-id", "client-chosen-42")
            .json(&json!({"license_key": key, "hardware_id": "m2"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.headers["x-request-id"], "client-chosen-42");
    let events = app.events().await;
    assert_eq!(
        events.last().unwrap().metadata.request_id.as_deref(),
        Some("client-chosen-42")
    );

    // Errors and unknown routes have one too; an unusable one is replaced.
    let missing = app.send("GET", "/api/v1/nope", None, None).await;
    assert!(missing.headers.contains_key("x-request-id"));
    let long = TestApp::reply(
        app.client
            .get(app.url("/api/v1/health"))
            .header("x-request-id", "x".repeat(101))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_ne!(long.headers["x-request-id"], "x".repeat(101).as_str());
    app.stop().await;
}

/// The real `seatledger serve` on the embedded default in `dir`, on a free
/// loopback port, with stderr on a pipe and `global_args` before `serve`.
fn spawn_server(dir: &tempfile::TempDir, global_args: &[&str]) -> std::process::Child {
    spawn_server_with(dir, global_args, &[])
}

/// [`spawn_server`] with `serve_args` after `serve`.
fn spawn_server_with(
    dir: &tempfile::TempDir,
    global_args: &[&str],
    serve_args: &[&str],
) -> std::process::Child {
    let database = format!("sqlite:{}", dir.path().join("seatledger.db").display());
    Command::new(env!("CARGO_BIN_EXE_seatledger"))
        .args(global_args)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &database,
        ])
        .args(serve_args)
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The real binary with stderr on a pipe: its log lines carry no escape
/// byte (no colour codes in log files and pipes).
#[test]
fn logs_to_a_pipe_are_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server(&dir, &[]);
    let stderr = server.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let listening = line.contains("seatledger listening");
        seen.push(line);
        if listening || seen.len() > 100 {
            break;
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(
        seen.iter().any(|l| l.contains("seatledger listening")),
        "{seen:?}"
    );
    assert!(seen.iter().all(|l| !l.contains('\u{1b}')), "{seen:?}");
}

/// One HTTP/1.1 exchange over a plain socket (the test runs without an
/// async runtime); returns the response body.
fn http(address: &str, request: &str) -> String {
    http_full(address, request).1
}

/// `--log-format json`: every line is a JSON object, and a request's line
/// names its route, status, request id and, once authenticated, its org.
#[test]
fn json_logs_parse_and_name_the_request_and_its_org() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server(&dir, &["--log-format", "json"]);
    let stderr = server.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let next = || {
        let line = received
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a log line");
        serde_json::from_str::<serde_json::Value>(&line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    let address = loop {
        let line = next();
        if line["fields"]["message"] == "seatledger listening" {
            break line["fields"]["address"].as_str().unwrap().to_owned();
        }
    };
    let body = r#"{"email":"ada@example.com","password":"correct horse battery","full_name":"Ada","company_name":"Acme"}"#;
    let registered: serde_json::Value = serde_json::from_str(&http(
        &address,
        &format!(
            "POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    ))
    .unwrap();
    let token = registered["api_token"].as_str().unwrap();
    let org_id = registered["organization"]["id"].as_str().unwrap();
    http(
        &address,
        &format!("GET /api/v1/licenses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nx-request-id: list-1\r\nConnection: close\r\n\r\n"),
    );
    let logged = loop {
        let line = next();
        if line["fields"]["route"] == "/api/v1/licenses" {
            break line;
        }
    };
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(logged["fields"]["status"], 200, "{logged}");
    assert_eq!(logged["span"]["request_id"], "list-1", "{logged}");
    assert_eq!(logged["span"]["org_id"], org_id, "{logged}");
}

/// `seatledger admin create-owner` with the password on standard input:
/// (exit code, stdout, stderr).
fn create_owner(
    dir: &tempfile::TempDir,
    email: &str,
    password: &str,
) -> (Option<i32>, String, String) {
    use std::io::Write;
    let database = format!("sqlite:{}", dir.path().join("seatledger.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_seatledger"))
        .args(["admin", "create-owner", "--database-url", &database])
        .args([
            "--email",
            email,
            "--company",
            "Acme",
            "--full-name",
            "Root Admin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `--registration closed`: register answers 403 `registration_closed`
/// and creates nothing; `seatledger admin create-owner` creates the first
/// owner (and refuses bad input with exit 2), who then logs in.
#[test]
fn closed_registration_refuses_register_and_admin_creates_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = create_owner(&dir, "root@example.com", "correct horse battery");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("created organization "), "{out}");
    let (code, _, err) = create_owner(&dir, "not-an-email", "correct horse battery");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("email"), "{err}");
    let (code, _, err) = create_owner(&dir, "short@example.com", "short");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("password"), "{err}");

    let mut server = spawn_server_with(
        &dir,
        &["--log-format", "json"],
        &["--registration", "closed"],
    );
    let stderr = server.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let address = loop {
        let line = lines.next().expect("a log line").unwrap();
        let line: serde_json::Value = serde_json::from_str(&line).unwrap();
        if line["fields"]["message"] == "seatledger listening" {
            break line["fields"]["address"].as_str().unwrap().to_owned();
        }
    };
    let post = |path: &str, body: &str| {
        http_full(
            &address,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let (status, body) = post(
        "/api/v1/auth/register",
        r#"{"email":"eve@example.com","password":"correct horse battery","full_name":"Eve","company_name":"Evil"}"#,
    );
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("registration_closed")),
        "{body}"
    );
    let (status, body) = post(
        "/api/v1/auth/login",
        r#"{"email":"eve@example.com","password":"correct horse battery"}"#,
    );
    assert_eq!(status, 401, "nothing was created: {body}");
    let (status, body) = post(
        "/api/v1/auth/login",
        r#"{"email":"root@example.com","password":"correct horse battery"}"#,
    );
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("api_token"), "{body}");
}

/// One HTTP/1.1 exchange: (status, body).
fn http_full(address: &str, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Config precedence: a flag wins over its environment variable, which
/// wins over the config file, which wins over the default; `config check`
/// prints the result with passwords redacted; an unknown key is exit 2.
#[test]
fn config_file_environment_and_flags_take_precedence_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seatledger.toml");
    std::fs::write(
        &file,
        r#"
listen = "127.0.0.1:9999"
database-url = "postgres://app:s3cret@127.0.0.1:5432/ledger"
redis-prefix = "from-file:"
reaper-interval-s = 7
registration = "closed"
"#,
    )
    .unwrap();
    let check = |env: &[(&str, &str)], flags: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_seatledger"))
            .args(["--config", file.to_str().unwrap(), "config", "check"])
            .args(flags)
            .env_remove("SEATLEDGER_REDIS_PREFIX")
            .env_remove("SEATLEDGER_REAPER_INTERVAL_S")
            .env_remove("SEATLEDGER_LISTEN")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let from_file = check(&[], &[]);
    for line in [
        "listen = \"127.0.0.1:9999\"",
        "database-url = \"postgres://app:***@127.0.0.1:5432/ledger\"",
        "redis-prefix = \"from-file:\"",
        "reaper-interval-s = 7.0",
        "registration = \"closed\"",
        "request-timeout-s = 30.0",
    ] {
        assert!(
            from_file.lines().any(|l| l == line),
            "{line} in\n{from_file}"
        );
    }
    assert!(!from_file.contains("s3cret"));
    let env = [
        ("SEATLEDGER_REDIS_PREFIX", "from-env:"),
        ("SEATLEDGER_REAPER_INTERVAL_S", "8"),
        ("SEATLEDGER_LISTEN", "127.0.0.1:7777"),
    ];
    let overridden = check(
        &env,
        &["--reaper-interval-s", "9", "--listen", "127.0.0.1:6666"],
    );
    for line in [
        "redis-prefix = \"from-env:\"",
        "reaper-interval-s = 9.0",
        "listen = \"127.0.0.1:6666\"",
        "registration = \"closed\"",
    ] {
        assert!(
            overridden.lines().any(|l| l == line),
            "{line} in\n{overridden}"
        );
    }

    std::fs::write(&file, "lissen = \"127.0.0.1:1\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_seatledger"))
        .args(["--config", file.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("unknown key \"lissen\""), "{err}");
}

/// The example config file in the repository is valid.
#[test]
fn the_example_config_file_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../seatledger.example.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_seatledger"))
        .args(["--config", example, "config", "check"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

/// A database that cannot be reached: the start-up error says what failed
/// and where (host and port, the refusal itself), never the password.
#[test]
fn an_unreachable_database_is_named_in_the_start_up_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://app:s3cret@127.0.0.1:{port}/ledger");
    let output = Command::new(env!("CARGO_BIN_EXE_seatledger"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("Connection refused"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

/// `/metrics` is valid OpenMetrics text (every sample of a declared family,
/// a name, optional labels and a number, then `# EOF`) and has what a
/// dashboard needs: latency by route and method, build info, process
/// metrics, live leases and denials by reason. (The contract run also
/// parses it with the Python `prometheus_client` OpenMetrics parser.)
#[tokio::test]
async fn metrics_parse_as_openmetrics_text_and_have_the_dashboard_families() {
    let app = common::TestApp::embedded().await;
    let org = app.register("ada@example.com").await;
    let (_, key) = app
        .issue(&org, serde_json::json!({"name": "IDE", "seats": 1}))
        .await;
    assert_eq!(app.acquire(&org, &key, "m1").await.status, 201);
    assert_eq!(app.acquire(&org, &key, "m2").await.status, 409);
    let reply = app.send("GET", "/metrics", None, None).await;
    let text = reply.body.as_str().unwrap().to_owned();
    assert_eq!(text.lines().last(), Some("# EOF"), "{text}");
    let mut declared = std::collections::HashSet::new();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram", "info"].contains(&kind),
                "{line}"
            );
            assert!(declared.insert(name.to_owned()), "declared twice: {line}");
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        let family = ["_bucket", "_sum", "_count", "_total", "_info"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| declared.contains(*f)))
            .unwrap_or(name);
        assert!(declared.contains(family), "no # TYPE before {line}");
        samples.insert(series.to_owned(), value.to_owned());
    }
    for family in [
        "seatledger_build",
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        "process_open_fds",
        "seatledger_live_leases",
        "seatledger_seats_denied_by_reason",
        "seatledger_http_request_duration_seconds",
    ] {
        assert!(declared.contains(family), "{family} in\n{text}");
    }
    assert_eq!(
        samples.get("seatledger_live_leases").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        samples
            .get("seatledger_seats_denied_by_reason_total{code=\"no_seats_available\"}")
            .map(String::as_str),
        Some("1")
    );
    assert!(
        samples.contains_key(
            "seatledger_http_request_duration_seconds_count{route=\"/api/v1/licenses/acquire\",method=\"POST\"}"
        ),
        "{text}"
    );
    app.stop().await;
}
