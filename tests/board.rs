//! The hot-leads board in a real headless Chromium against the real service:
//! the page shows the contacts the test's events made hot, in order, with
//! their tiers and the alerts they raised.
//!
//! `HOTLEAD_BOARD_SCREENSHOT=docs/board.png` also saves a screenshot.

mod support;

use std::time::Duration;

use hotlead::proto::interaction_event::Interaction;
use hotlead::proto::{FormSubmission, InteractionEvent, PageView};
use support::{last_offsets, rules_file, spawn_pipeline, Stack};

const RULES: &str = r#"
models:
  - name: engagement
    half_life: 14d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - { id: pricing-page, when: { kind: page_view, url: { prefix: /pricing } }, points: 10 }
      - { id: demo-request, when: { kind: form_submission, form_id: demo-request }, points: 25 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_shows_the_hot_leads_in_order() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, path) = rules_file(RULES);
    let now = hotlead::decode::now_ms() / 1000 * 1000 - 60_000;
    let ev = |id: String, contact: &str, i: Interaction| InteractionEvent {
        event_id: id,
        contact_id: contact.into(),
        account_id: format!("{contact}-inc"),
        occurred_at: Some(hotlead::decode::timestamp(now)),
        interaction: Some(i),
        ..Default::default()
    };
    let pricing = || Interaction::PageView(PageView { url: "/pricing".into(), ..Default::default() });
    let demo = || Interaction::FormSubmission(FormSubmission { form_id: "demo-request".into(), ..Default::default() });
    let mut events = Vec::new();
    // ada 95 (hot), bea 70 (hot), cal 45 (warm), dov 25 (cold, above the
    // leaderboard's floor: warm's exit, 20), eve 10 (under it).
    for (contact, views, demos) in [("ada", 7, 1), ("bea", 2, 2), ("cal", 2, 1), ("dov", 0, 1), ("eve", 1, 0)] {
        for k in 0..views {
            events.push(ev(format!("{contact}-v{k}"), contact, pricing()));
        }
        for k in 0..demos {
            events.push(ev(format!("{contact}-d{k}"), contact, demo()));
        }
    }
    let delivered = stack.produce_events(&topics.input, &events).await;
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(60)).await;

    let port = support::serve_api(&stack, &running, &topics, "board-token").await;
    let url = format!("http://127.0.0.1:{port}/board#token=board-token&lead=ada");

    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || support::chromium_output(&["--dump-dom"], &url, 820, 8000)
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let board = dom.split("id=\"board-engagement\"").nth(1).unwrap_or_else(|| panic!("no engagement board:\n{dom}"));
    let board = board.split("</table>").next().unwrap();
    let order: Vec<&str> = board.split("data-contact=\"").skip(1).map(|s| s.split('"').next().unwrap()).collect();
    assert_eq!(order, ["ada", "bea", "cal", "dov"], "leads in score order, none under the floor");
    let row = |c: &str| {
        board.split(&format!("data-contact=\"{c}\"")).nth(1).unwrap().split("</tr>").next().unwrap().to_string()
    };
    assert!(row("ada").contains("tier-2\">hot<"), "{}", row("ada"));
    assert!(row("cal").contains("tier-1\">warm<"), "{}", row("cal"));
    assert!(row("dov").contains("tier-0\">cold<"), "{}", row("dov"));
    assert!(row("ada").contains("95.0") || row("ada").contains("94.9"), "{}", row("ada"));
    let alerts = dom.split("id=\"alerts\"").nth(1).unwrap().split("</ul>").next().unwrap();
    for c in ["ada", "bea", "cal"] {
        assert!(alerts.contains(&format!("data-contact=\"{c}\"")), "{c} raised an alert");
    }
    assert!(!alerts.contains("data-contact=\"dov\""), "dov raised none");
    assert!(!alerts.contains("data-contact=\"eve\""), "eve raised none");

    // The lead's breakdown: each rule's share of the score.
    let detail = dom.split("id=\"detail\"").nth(1).unwrap().split("</table>").next().unwrap();
    assert!(detail.contains("ada") && detail.contains("ada-inc"), "{detail}");
    for (rule, points) in [("pricing-page", "70.00"), ("demo-request", "25.00")] {
        let part = detail.split(&format!("<td>{rule}</td>")).nth(1).unwrap_or_else(|| panic!("{rule}: {detail}"));
        assert!(part.split("</tr>").next().unwrap().contains(points), "{rule}: {detail}");
    }

    // Without the token the page says what is missing.
    let out = tokio::task::spawn_blocking(move || {
        support::chromium_output(&["--dump-dom"], &format!("http://127.0.0.1:{port}/board"), 820, 8000)
    })
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("needs the API token"));

    if let Ok(file) = std::env::var("HOTLEAD_BOARD_SCREENSHOT") {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let arg = format!("--screenshot={}", file.display());
        let out =
            tokio::task::spawn_blocking(move || support::chromium_output(&[&arg], &url, 820, 8000)).await.unwrap();
        assert!(out.status.success());
    }
    running.finish().await;
}
