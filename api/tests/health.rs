mod common;

use common::TestApp;

async fn health_checks(app: &TestApp, backend: &str) {
    let live = app
        .client
        .get(app.url("/api/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let ready = app
        .client
        .get(app.url("/api/v1/health/ready/"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "trailing slash accepted");
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["store"]["backend"], backend);
    assert_eq!(body["store"]["status"], "ok");

    let missing = app
        .client
        .get(app.url("/api/v1/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(problem["code"], "not_found");
    assert_eq!(problem["status"], 404);
}

#[tokio::test]
async fn the_embedded_default_serves_health_and_ready() {
    let app = TestApp::embedded().await;
    health_checks(&app, "sqlite").await;
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_postgres_backed_server_serves_health_and_ready(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    health_checks(&app, "postgres").await;
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn ready_is_503_when_the_store_is_gone(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool.clone()).await;
    // The database goes away for every connection (the shared pool's, the
    // appender's and the health checks' own).
    let outage = common::take_database_away(&pool).await;
    let ready = app
        .client
        .get(app.url("/api/v1/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.headers()["content-type"], "application/problem+json");
    assert_eq!(ready.headers()["retry-after"], "2");
    let problem: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(problem["code"], "store_unavailable");
    let live = app
        .client
        .get(app.url("/api/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200, "liveness does not depend on the store");
    common::give_database_back(outage).await;
}
