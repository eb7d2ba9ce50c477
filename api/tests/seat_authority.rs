//! Seat authority (issue 14): a member heartbeats and releases only the
//! leases they acquired; an owner or admin may force-release any lease of
//! the organization, recorded with reason `admin` and the acting user as
//! the event's actor; another organization's sessions stay 404.

mod common;

use common::{Org, TestApp};
use serde_json::json;

async fn member(app: &TestApp, owner: &Org, email: &str) -> Org {
    let added = app
        .post(
            "/api/v1/users",
            &owner.token,
            json!({"email": email, "password": "member password", "full_name": "Mem Ber"}),
        )
        .await;
    assert_eq!(added.status, 201, "{:?}", added.body);
    let login = app
        .send(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": email, "password": "member password"})),
        )
        .await;
    Org {
        token: login.body["api_token"].as_str().unwrap().to_owned(),
        org_id: owner.org_id.clone(),
        user_id: added.body["id"]
            .as_str()
            .or(added.body["user_id"].as_str())
            .unwrap_or_default()
            .to_owned(),
    }
}

#[sqlx::test(migrations = false)]
async fn members_act_on_their_own_leases_and_admins_force_release(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    let owner = app.register("owner@example.com").await;
    let (_, key) = app.issue(&owner, json!({"name": "IDE", "seats": 5})).await;
    let ada = member(&app, &owner, "ada@example.com").await;
    let bob = member(&app, &owner, "bob@example.com").await;
    let seat = app.acquire(&ada, &key, "ada-laptop").await;
    assert_eq!(seat.status, 201, "{:?}", seat.body);
    let session = json!({"session_id": seat.body["session_id"]});
    let events_before = app.events().await.len();

    // Bob, a member of the same organization, may neither keep Ada's seat
    // alive nor release it.
    for route in ["/api/v1/licenses/heartbeat", "/api/v1/licenses/release"] {
        let reply = app.post(route, &bob.token, session.clone()).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (403, Some("not_lease_holder")),
            "{route}: {:?}",
            reply.body
        );
        assert_eq!(reply.headers["content-type"], "application/problem+json");
    }
    assert_eq!(app.events().await.len(), events_before, "nothing recorded");
    // Ada may.
    let beat = app
        .post("/api/v1/licenses/heartbeat", &ada.token, session.clone())
        .await;
    assert_eq!(beat.status, 200, "{:?}", beat.body);

    // Another organization does not even see the session.
    let stranger = app.register("stranger@example.com").await;
    let reply = app
        .post("/api/v1/licenses/release", &stranger.token, session.clone())
        .await;
    assert_eq!(reply.status, 404, "{:?}", reply.body);

    // The owner force-releases it: recorded as `admin`, by the owner.
    let forced = app
        .post("/api/v1/licenses/release", &owner.token, session.clone())
        .await;
    assert_eq!(forced.status, 200, "{:?}", forced.body);
    let events = app.events().await;
    let released = events.last().unwrap();
    assert_eq!(released.event_type, "SeatReleased");
    assert_eq!(released.payload["reason"], "admin");
    assert_eq!(released.payload["session_id"], seat.body["session_id"]);
    assert_eq!(
        released.metadata.actor.as_deref(),
        Some(format!("user:{}", owner.user_id).as_str())
    );
    released.event().expect("decodes with this version");
    // The seat is free, and Ada's client learns its session ended.
    let gone = app
        .post("/api/v1/licenses/heartbeat", &ada.token, session.clone())
        .await;
    assert_eq!(gone.status, 410, "{:?}", gone.body);

    // Ada's own release of a new seat is an ordinary client release.
    let again = app.acquire(&ada, &key, "ada-laptop").await;
    let own = app
        .post(
            "/api/v1/licenses/release",
            &ada.token,
            json!({"session_id": again.body["session_id"]}),
        )
        .await;
    assert_eq!(own.status, 200, "{:?}", own.body);
    let events = app.events().await;
    assert_eq!(events.last().unwrap().payload["reason"], "client");
    app.stop().await;
}
