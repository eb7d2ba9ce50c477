//! HTTP bodies fuzzed in-process: for every route that takes a
//! body, arbitrary bytes and mutations of a valid body (fields replaced by
//! arbitrary JSON, dropped, added, the text truncated) never answer 5xx,
//! never panic the server, and a request refused as bad input (400, 401,
//! 404, 413, 415, 422) writes no event. Bounded: 1,024 cases a run over
//! the 13 body-taking routes (about 5 s).

mod common;

use common::TestApp;
use proptest::prelude::*;
use serde_json::{json, Value};

/// A valid body for each body-taking route (path with ids filled in).
fn valid_bodies(
    license: &str,
    key: &str,
    session: &str,
    user: &str,
) -> Vec<(String, String, Value)> {
    let post = |path: &str, body: Value| ("POST".to_owned(), path.to_owned(), body);
    vec![
        post(
            "/api/v1/auth/register",
            json!({"email": "fuzz@example.com", "password": "correct horse battery", "full_name": "F", "company_name": "F"}),
        ),
        post(
            "/api/v1/auth/login",
            json!({"email": "owner@example.com", "password": "correct horse battery", "ttl_s": 3600}),
        ),
        post(
            "/api/v1/users",
            json!({"email": "new@example.com", "password": "member password", "full_name": "N", "role": "member"}),
        ),
        (
            "PATCH".into(),
            format!("/api/v1/users/{user}"),
            json!({"role": "admin"}),
        ),
        (
            "PUT".into(),
            "/api/v1/users/me/password".into(),
            json!({"current_password": "wrong password", "new_password": "another password"}),
        ),
        post(
            "/api/v1/licenses",
            json!({"name": "IDE", "seats": 3, "heartbeat_ttl_s": 60, "max_overage_percent": 10, "expires_at": "2031-01-01T00:00:00Z"}),
        ),
        (
            "PATCH".into(),
            format!("/api/v1/licenses/{license}"),
            json!({"seats": 4, "name": "CAD"}),
        ),
        post(
            &format!("/api/v1/licenses/{license}/suspend"),
            json!({"reason": "unpaid"}),
        ),
        post(
            &format!("/api/v1/licenses/{license}/reinstate"),
            json!({"reason": "paid"}),
        ),
        post(
            "/api/v1/licenses/acquire",
            json!({"license_key": key, "hardware_id": "machine-1"}),
        ),
        post("/api/v1/licenses/heartbeat", json!({"session_id": session})),
        post("/api/v1/licenses/release", json!({"session_id": session})),
        post(
            "/api/v1/tokens",
            json!({"name": "app", "licenses": [license], "ttl_s": 3600}),
        ),
    ]
}

#[derive(Clone, Debug)]
enum Mutation {
    Bytes(Vec<u8>),
    Replace(usize, Value),
    Drop(usize),
    Add(String, Value),
    Truncate(usize),
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        "\\PC{0,40}".prop_map(Value::String),
        Just(json!(u64::MAX)),
        Just(json!("")),
        Just(json!("9999-12-31T23:59:60Z")),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Mutation::Bytes),
        (any::<usize>(), any_json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        any::<usize>().prop_map(Mutation::Drop),
        ("[a-z_]{1,12}", any_json()).prop_map(|(k, v)| Mutation::Add(k, v)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(body: &Value, mutation: &Mutation) -> Vec<u8> {
    let mut object = body.as_object().cloned().unwrap_or_default();
    let keys: Vec<String> = object.keys().cloned().collect();
    match mutation {
        Mutation::Bytes(bytes) => return bytes.clone(),
        Mutation::Replace(i, value) if !keys.is_empty() => {
            object.insert(keys[i % keys.len()].clone(), value.clone());
        }
        Mutation::Drop(i) if !keys.is_empty() => {
            object.remove(&keys[i % keys.len()]);
        }
        Mutation::Add(key, value) => {
            object.insert(key.clone(), value.clone());
        }
        Mutation::Truncate(at) => {
            let text = body.to_string().into_bytes();
            return text[..at % (text.len() + 1)].to_vec();
        }
        _ => {}
    }
    Value::Object(object).to_string().into_bytes()
}

const NOTHING_WRITTEN: [u16; 6] = [400, 401, 404, 413, 415, 422];

#[test]
fn fuzzed_bodies_never_fail_the_server_or_write_when_refused() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (app, routes, token) = runtime.block_on(async {
        let app = TestApp::embedded().await;
        let owner = app.register("owner@example.com").await;
        let (license, key) = app
            .issue(&owner, json!({"name": "IDE", "seats": 1000}))
            .await;
        let seat = app.acquire(&owner, &key, "machine-0").await;
        let session = seat.body["session_id"].as_str().unwrap().to_owned();
        let member = app.member(&owner, "mem@example.com").await;
        let routes = valid_bodies(&license, &key, &session, &member.user_id);
        (app, routes, owner.token)
    });
    let config = ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&(any::<usize>(), mutation()), |(route, mutation)| {
        let (method, path, valid) = &routes[route % routes.len()];
        let body = apply(valid, &mutation);
        let (status, written, text) = runtime.block_on(async {
            let before = app.events().await.len();
            let response = reqwest::Client::new()
                .request(method.parse().unwrap(), app.url(path))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            (status, app.events().await.len() - before, text)
        });
        prop_assert!(
            status < 500,
            "{method} {path} {:?}: {status} {text}",
            String::from_utf8_lossy(&body)
        );
        if NOTHING_WRITTEN.contains(&status) {
            prop_assert_eq!(
                written,
                0,
                "{} {} refused with {} but wrote: {}",
                method,
                path,
                status,
                text
            );
        }
        Ok(())
    });
    runtime.block_on(async {
        // The server still serves.
        assert_eq!(
            app.send("GET", "/api/v1/health", None, None).await.status,
            200
        );
    });
    result.unwrap();
    runtime.block_on(app.stop());
}
