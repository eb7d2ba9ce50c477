//! Seat authority: a member heartbeats and releases only the
//! leases they acquired; an owner or admin may force-release any lease of
//! the organization, recorded with reason `admin` and the acting user as
//! the event's actor; another organization's sessions stay 404.

mod common;

use common::TestApp;
use serde_json::json;

#[sqlx::test(migrations = false)]
async fn members_act_on_their_own_leases_and_admins_force_release(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    let owner = app.register("owner@example.com").await;
    let (_, key) = app.issue(&owner, json!({"name": "IDE", "seats": 5})).await;
    let ada = app.member(&owner, "ada@example.com").await;
    let bob = app.member(&owner, "bob@example.com").await;
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

/// Members and roles: owners and admins list the users, change
/// a member's role (recorded; the user's tokens revoked so the new role
/// holds at their next login), and deactivate a user (recorded; tokens
/// revoked, login refused, live leases released with reason `admin`).
/// Owners are permanent; members may not administer; another
/// organization's users are 404.
#[sqlx::test(migrations = false)]
async fn admins_list_change_and_deactivate_members(pool: sqlx::PgPool) {
    let app = TestApp::postgres(pool).await;
    let owner = app.register("owner@example.com").await;
    let (_, key) = app.issue(&owner, json!({"name": "IDE", "seats": 5})).await;
    let ada = app.member(&owner, "ada@example.com").await;
    let bob = app.member(&owner, "bob@example.com").await;

    let list = app
        .send("GET", "/api/v1/users", Some(&owner.token), None)
        .await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    let roles: Vec<(String, String, bool)> = list.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| {
            (
                user["email"].as_str().unwrap().to_owned(),
                user["role"].as_str().unwrap().to_owned(),
                user["active"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        vec![
            ("ada@example.com".into(), "member".into(), true),
            ("bob@example.com".into(), "member".into(), true),
            ("owner@example.com".into(), "owner".into(), true),
        ]
    );
    let forbidden = app
        .send("GET", "/api/v1/users", Some(&ada.token), None)
        .await;
    assert_eq!(
        (forbidden.status, forbidden.body["code"].as_str()),
        (403, Some("forbidden"))
    );

    // Ada becomes an admin: recorded, her old token is revoked, her next
    // login carries the new role.
    let ada_path = format!("/api/v1/users/{}", ada.user_id);
    let changed = app
        .send(
            "PATCH",
            &ada_path,
            Some(&owner.token),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(changed.status, 200, "{:?}", changed.body);
    assert_eq!(changed.body["role"], "admin");
    let events = app.events().await;
    let last = events.last().unwrap();
    assert_eq!(last.event_type, "UserRoleChanged");
    assert_eq!(last.payload["role"], "admin");
    assert_eq!(last.payload["user_id"], ada.user_id.as_str());
    last.event().unwrap();
    let old = app
        .send("GET", "/api/v1/users/me", Some(&ada.token), None)
        .await;
    assert_eq!(old.status, 401, "{:?}", old.body);
    let relogin = app.member_login("ada@example.com").await;
    let ada_token = relogin.body["api_token"].as_str().unwrap().to_owned();
    let me = app
        .send("GET", "/api/v1/users/me", Some(&ada_token), None)
        .await;
    assert_eq!(me.body["role"], "admin", "{:?}", me.body);
    // Twice: nothing more recorded.
    let before = app.events().await.len();
    let again = app
        .send(
            "PATCH",
            &ada_path,
            Some(&owner.token),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(app.events().await.len(), before);
    // The owner is permanent; a member may not change roles.
    let owner_path = format!("/api/v1/users/{}", owner.user_id);
    for (token, path, body, expected) in [
        (
            &ada_token,
            &owner_path,
            json!({"role": "member"}),
            "owner_is_permanent",
        ),
        (
            &bob.token,
            &ada_path,
            json!({"role": "member"}),
            "forbidden",
        ),
    ] {
        let reply = app.send("PATCH", path, Some(token), Some(body)).await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (403, Some(expected)),
            "{:?}",
            reply.body
        );
    }
    let reply = app
        .send("DELETE", &owner_path, Some(&ada_token), None)
        .await;
    assert_eq!(reply.body["code"], "owner_is_permanent");

    // Another organization sees none of these users.
    let stranger = app.register("stranger@example.com").await;
    for (method, body) in [("PATCH", Some(json!({"role": "member"}))), ("DELETE", None)] {
        let reply = app
            .send(method, &ada_path, Some(&stranger.token), body)
            .await;
        assert_eq!(
            (reply.status, reply.body["code"].as_str()),
            (404, Some("user_not_found")),
            "{method}"
        );
    }
    let reply = app
        .send(
            "DELETE",
            "/api/v1/users/not-a-uuid",
            Some(&owner.token),
            None,
        )
        .await;
    assert_eq!(reply.status, 404);

    // Bob holds two seats; Ada (now an admin) deactivates him.
    let first = app.acquire(&bob, &key, "bob-1").await;
    let second = app.acquire(&bob, &key, "bob-2").await;
    let mine = app.acquire(&owner, &key, "owner-1").await;
    assert_eq!((first.status, second.status, mine.status), (201, 201, 201));
    let bob_path = format!("/api/v1/users/{}", bob.user_id);
    let gone = app.send("DELETE", &bob_path, Some(&ada_token), None).await;
    assert_eq!(gone.status, 200, "{:?}", gone.body);
    assert_eq!(gone.body["leases_released"], 2);
    let events = app.events().await;
    let tail: Vec<(&str, serde_json::Value)> = events[events.len() - 3..]
        .iter()
        .map(|event| (event.event_type.as_str(), event.payload.clone()))
        .collect();
    assert_eq!(tail[0].0, "UserDeactivated");
    assert_eq!(tail[0].1["user_id"], bob.user_id.as_str());
    for (event_type, payload) in &tail[1..] {
        assert_eq!(*event_type, "SeatReleased");
        assert_eq!(payload["reason"], "admin");
    }
    for event in &events[events.len() - 3..] {
        event.event().unwrap();
        assert_eq!(
            event.metadata.actor.as_deref(),
            Some(format!("user:{}", ada.user_id).as_str())
        );
    }
    let refused = app
        .send("GET", "/api/v1/users/me", Some(&bob.token), None)
        .await;
    assert_eq!(refused.status, 401);
    assert_eq!(app.member_login("bob@example.com").await.status, 401);
    // The owner's seat is untouched; listing shows Bob inactive.
    let beat = app
        .post(
            "/api/v1/licenses/heartbeat",
            &owner.token,
            json!({"session_id": mine.body["session_id"]}),
        )
        .await;
    assert_eq!(beat.status, 200);
    let list = app
        .send("GET", "/api/v1/users", Some(&owner.token), None)
        .await;
    let bob_row = list.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|user| user["email"] == "bob@example.com")
        .unwrap()
        .clone();
    assert_eq!(bob_row["active"], false);
    // Again: 200, nothing more to release or record.
    let before = app.events().await.len();
    let again = app
        .send("DELETE", &bob_path, Some(&owner.token), None)
        .await;
    assert_eq!(
        (again.status, again.body["leases_released"].as_u64()),
        (200, Some(0))
    );
    assert_eq!(app.events().await.len(), before);
    // A deactivated user cannot be given a role.
    let reply = app
        .send(
            "PATCH",
            &bob_path,
            Some(&owner.token),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(reply.body["code"], "user_not_found");
    app.stop().await;
}
