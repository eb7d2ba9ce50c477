//! The README's walk-through, pasted twice into bash against a fresh
//! server (the embedded default): every status it prints is the one its
//! comments claim, both times.

mod common;

use common::TestApp;

/// The shell block under "### Walk-through", pointed at `base`.
fn walkthrough(base: &str) -> String {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("### Walk-through")
        .nth(1)
        .expect("a walk-through section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a shell block");
    assert!(block.contains("API=http://127.0.0.1:8080/api/v1"));
    block.replace("http://127.0.0.1:8080", base)
}

#[tokio::test]
async fn the_readme_walkthrough_works_pasted_twice() {
    let app = TestApp::embedded().await;
    let script = walkthrough(&app.base);
    for paste in 1..=2 {
        let script = script.clone();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("bash")
                .args(["-c", &script])
                .output()
        })
        .await
        .unwrap()
        .expect("bash and curl (scripts/test installs curl)");
        let out = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "paste {paste}: {out}");
        let lines: Vec<&str> = out.lines().collect();
        for expected in ["m1 201", "m2 201", "m3 201", "m4 409", "m4 201"] {
            assert!(
                lines.contains(&expected),
                "paste {paste}: {expected} in\n{out}"
            );
        }
        assert!(out.contains("\"api_token\""), "paste {paste}: login\n{out}");
        assert!(
            out.contains("\"released\":true"),
            "paste {paste}: release\n{out}"
        );
        assert!(out.contains("\"events\":["), "paste {paste}: events\n{out}");
        assert!(out.contains("\"key_id\""), "paste {paste}: keys\n{out}");
        assert!(
            !out.contains("\"status\":401") && !out.contains("\"status\":409"),
            "paste {paste}: an error document\n{out}"
        );
    }
    app.stop().await;
}
