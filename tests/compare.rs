//! `hotlead compare`, `GET /v1/compare` and the compare page on the real
//! stack: a live model and a shadow that score the same events differently,
//! compared at a fixed instant, give the report an offline replay of the
//! same events gives; the command line's JSON is the API's answer; the page
//! shows the matrix and both histograms.

mod support;

use std::process::Command;
use std::time::Duration;

use hotlead::compare::{report, Scored};
use hotlead::proto::interaction_event::Interaction;
use hotlead::proto::{FormSubmission, InteractionEvent, PageView};
use hotlead::query::ModelView;
use hotlead::rules::RuleSet;
use serde_json::Value;
use support::{close, http_get, last_offsets, rules_file, spawn_pipeline, Running, Stack, Topics};

/// The live model counts blog reading, the shadow does not and counts docs
/// instead; other points, other thresholds; the live `warm` is silent.
const RULES: &str = r#"
models:
  - name: engagement
    half_life: 30d
    tiers:
      - { name: warm, enter: 30, exit: 5, alert: false }
      - { name: hot, enter: 60, exit: 20 }
    rules:
      - { id: pricing, when: { kind: page_view, url: { prefix: /pricing } }, points: 10 }
      - { id: blog, when: { kind: page_view, url: { prefix: /blog } }, points: 6 }
      - { id: demo, when: { kind: form_submission, form_id: demo-request }, points: 25 }
  - name: engagement-v2
    shadow: true
    half_life: 30d
    tiers:
      - { name: warm, enter: 25, exit: 5 }
      - { name: hot, enter: 50, exit: 15 }
      - { name: sales-ready, enter: 80, exit: 40 }
    rules:
      - { id: pricing, when: { kind: page_view, url: { prefix: /pricing } }, points: 8 }
      - { id: docs, when: { kind: page_view, url: { prefix: /docs } }, points: 7 }
      - { id: demo, when: { kind: form_submission, form_id: demo-request }, points: 35 }
"#;

const TOKEN: &str = "compare-token";
const LIVE: &str = "engagement";
const SHADOW: &str = "engagement-v2";

/// A running service with the test's events scored, its API on `port`.
struct Scene {
    stack: Stack,
    topics: Topics,
    rules_path: std::path::PathBuf,
    _rules_dir: tempfile::TempDir,
    running: Running,
    port: u16,
    events: Vec<InteractionEvent>,
    /// The instant compared: after every event.
    at: i64,
}

/// 60 contacts, 300 events over the last three hours: page views of
/// pricing, blog and docs pages and demo requests, in a seeded mix that
/// gives each contact its own taste.
fn events(now: i64) -> Vec<InteractionEvent> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let start = now - 3 * 3_600_000;
    (0..300)
        .map(|i| {
            let contact = format!("c-{:02}", next() % 60);
            let taste = contact[2..].parse::<u64>().unwrap() % 3;
            let interaction = match (taste, next() % 10) {
                (_, 0) => {
                    Interaction::FormSubmission(FormSubmission { form_id: "demo-request".into(), ..Default::default() })
                }
                (0, _) | (_, 1..=3) => page("/pricing"),
                (1, _) => page("/blog/post"),
                _ => page("/docs/start"),
            };
            InteractionEvent {
                event_id: format!("e-{i}"),
                contact_id: contact,
                occurred_at: Some(hotlead::decode::timestamp(start + i * 30_000)),
                interaction: Some(interaction),
                ..Default::default()
            }
        })
        .collect()
}

fn page(url: &str) -> Interaction {
    Interaction::PageView(PageView { url: url.into(), ..Default::default() })
}

async fn scene() -> Scene {
    let stack = Stack::start();
    let topics = stack.topics(3).await;
    let (rules_dir, rules_path) = rules_file(RULES);
    let at = hotlead::decode::now_ms() / 1000 * 1000;
    let events = events(at - 60_000);
    let delivered = stack.produce_events(&topics.input, &events).await;
    let mut config = stack.config(&topics, &rules_path);
    config.topics.shadow_alerts = format!("{}.shadow", topics.alerts);
    let client = hotlead::kafka::client_config(&stack.brokers, &[]);
    hotlead::kafka::create_topics(&client, &[(&config.topics.shadow_alerts, 1)], 1).await.unwrap();
    let running = spawn_pipeline(config, &rules_path);
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(60)).await;
    let port = support::serve_api(&stack, &running, &topics, TOKEN).await;
    Scene { stack, topics, rules_path, _rules_dir: rules_dir, running, port, events, at }
}

/// The report an offline replay of the same events gives at `at`: each
/// model's view at the contact's latest event, decayed to `at` (the models
/// have no fit rules, so the whole score decays).
fn offline(events: &[InteractionEvent], at: i64, top: usize) -> hotlead::compare::Report {
    let rules = RuleSet::parse(RULES, "rules").unwrap();
    let replayed = hotlead::replay::replay(&rules, events);
    let mut per_model = vec![std::collections::BTreeMap::new(); 2];
    for (contact, views) in &replayed.contacts {
        for v in views {
            let i = rules.models.iter().position(|m| m.name == v.model).unwrap();
            let f = hotlead::score::decay_factor(at - v.last_activity_ms, rules.models[i].half_life_secs);
            let decayed = ModelView {
                score: v.score * f,
                breakdown: v.breakdown.iter().map(|(r, p)| (r.clone(), p * f)).collect(),
                ..v.clone()
            };
            per_model[i].insert(contact.clone(), decayed);
        }
    }
    report(
        Scored { model: &rules.models[0], lane: "", views: &per_model[0] },
        Scored { model: &rules.models[1], lane: "", views: &per_model[1] },
        at,
        top,
    )
}

/// Whether two JSON values agree: numbers to 1e-9 relative, the rest exactly.
fn agree(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => close(x.as_f64().unwrap(), y.as_f64().unwrap()),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| agree(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| agree(v, w)))
        }
        _ => a == b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_the_command_line_give_the_report_of_an_offline_replay() {
    let s = scene().await;
    let path = format!("/v1/compare?live={LIVE}&shadow={SHADOW}&top=5&at={}", s.at);
    let (status, api) = http_get(s.port, &path, Some(TOKEN));
    assert_eq!(status, 200, "{api}");

    let want = offline(&s.events, s.at, 5);
    // The events make a comparison worth the name: contacts move both ways.
    assert_eq!(want.contacts, 60);
    assert!(want.would_alert.count > 0 && want.would_not.count > 0, "{want:?}");
    let moved: usize = (0..3)
        .flat_map(|i| (0..4).map(move |j| (i, j)))
        .filter(|(i, j)| i != j)
        .map(|(i, j)| want.matrix.counts[i][j])
        .sum();
    assert!(moved > 10, "{:?}", want.matrix);

    assert_eq!(api["matrix"], serde_json::to_value(&want.matrix).unwrap(), "the migration matrix");
    assert_eq!(api["would_alert"]["count"], want.would_alert.count);
    assert_eq!(api["would_not"]["count"], want.would_not.count);
    assert_eq!(api["top_changes"][0]["contact_id"], want.top_changes[0].contact_id.as_str());
    let want_json = serde_json::to_value(&want).unwrap();
    assert!(agree(&api, &want_json), "the whole report:\n{api:#}\nwant:\n{want_json:#}");
    assert_eq!(api["live"]["histogram"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).sum::<u64>(), 60);

    // The command line reads the same states: the same report, to the bit.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_hotlead"))
            .args(["compare", LIVE, SHADOW, "--top", "5", "--at", &s.at.to_string()])
            .args(args)
            .envs(s.stack.env(&s.topics, &s.rules_path))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let json: Value = serde_json::from_str(&cli(&["--json"])).unwrap();
    assert_eq!(json, api, "hotlead compare --json is the API's answer");
    let text = cli(&[]);
    assert!(
        text.contains(&format!(
            "would alert (the shadow holds them in an alerting tier, live does not): {}",
            want.would_alert.count
        )),
        "{text}"
    );
    let total = text.lines().find(|l| l.starts_with("total")).unwrap_or_else(|| panic!("{text}"));
    assert!(total.ends_with(" 60"), "{text}");

    // Unknown models are named with the known ones; parameters are checked.
    let (status, body) = http_get(s.port, &format!("/v1/compare?live={LIVE}&shadow=nope"), Some(TOKEN));
    assert_eq!(status, 404, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("`nope`") && error.contains(SHADOW), "{error}");
    assert_eq!(http_get(s.port, &format!("/v1/compare?live={LIVE}"), Some(TOKEN)).0, 400);
    assert_eq!(http_get(s.port, &format!("/v1/compare?live={LIVE}&shadow={SHADOW}&top=0"), Some(TOKEN)).0, 400);
    assert_eq!(http_get(s.port, &path, None).0, 401, "the token guards it like every /v1 read");

    // A model of a back-filled lane is found in its lane: this one holds no
    // contact yet, so every contact is in its base tier.
    let store = hotlead::store::Store::connect(&s.stack.redis_url).await.unwrap();
    let lane_rules = "models: [{name: m3, half_life: 1d, tiers: [{name: warm, enter: 10, exit: 5}], rules: [{id: p, when: {kind: page_view}, points: 5}]}]";
    let lane = hotlead::shadow::LaneInfo {
        name: "m3".into(),
        model: "m3".into(),
        rules_yaml: lane_rules.into(),
        rules_path: "m3.yaml".into(),
        from_ms: None,
        group: "g".into(),
        started_ms: 0,
    };
    hotlead::shadow::register(&store, &lane).await.unwrap();
    let (status, models) = http_get(s.port, "/v1/models", Some(TOKEN));
    assert_eq!(status, 200);
    let scored: Vec<(String, Value, bool)> = models["scored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["lane"].clone(), m["shadow"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        scored,
        [(LIVE.into(), Value::Null, false), (SHADOW.into(), Value::Null, true), ("m3".into(), Value::from("m3"), true)]
    );
    let (status, lane) = http_get(s.port, &format!("/v1/compare?live={LIVE}&shadow=m3&at={}", s.at), Some(TOKEN));
    assert_eq!(status, 200, "{lane}");
    assert_eq!((lane["shadow"]["lane"].as_str(), lane["shadow"]["held"].as_u64()), (Some("m3"), Some(0)));
    let by_live_tier: Vec<u64> = want.matrix.counts.iter().map(|r| r.iter().sum::<usize>() as u64).collect();
    let counts = &lane["matrix"]["counts"];
    assert_eq!((0..3).map(|i| counts[i][0].as_u64().unwrap()).collect::<Vec<_>>(), by_live_tier);
    s.running.finish().await;
}

/// The `data-count` of each element of `class` in `html`, in order.
fn counts(html: &str, class: &str) -> Vec<u64> {
    html.split(&format!("class=\"{class}\""))
        .skip(1)
        .map(|s| s.split("data-count=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_matrix_and_both_histograms() {
    let s = scene().await;
    let want = offline(&s.events, s.at, 20);
    let base = format!("http://127.0.0.1:{}/compare", s.port);
    let url = format!("{base}?live={LIVE}&shadow={SHADOW}&at={}#token={TOKEN}", s.at);
    let dom = tokio::task::spawn_blocking(move || support::chromium_in("--dump-dom", &url, 1000, 8000)).await.unwrap();

    let matrix = dom.split("id=\"matrix\"").nth(1).unwrap_or_else(|| panic!("no matrix:\n{dom}"));
    let matrix = matrix.split("</table>").next().unwrap();
    for (i, row) in want.matrix.rows.iter().enumerate() {
        for (j, column) in want.matrix.columns.iter().enumerate() {
            let cell =
                format!("data-live=\"{row}\" data-shadow=\"{column}\" data-count=\"{}\"", want.matrix.counts[i][j]);
            assert!(matrix.contains(&cell), "{row} -> {column}: {cell} not in\n{matrix}");
        }
    }
    for (which, side) in [("live", &want.live), ("shadow", &want.shadow)] {
        let svg =
            dom.split(&format!("id=\"hist-{which}\"")).nth(1).unwrap_or_else(|| panic!("no {which} histogram:\n{dom}"));
        let svg = svg.split("</svg>").next().unwrap();
        assert!(svg.contains(&side.model), "labelled with its model: {svg}");
        let bars = counts(svg, &format!("bar bar-{which}"));
        assert_eq!(bars, side.histogram.iter().map(|n| *n as u64).collect::<Vec<_>>(), "{which}: {svg}");
    }
    let alerting = dom.split("id=\"would-alert\"").nth(1).unwrap().split("</ul>").next().unwrap();
    for c in &want.would_alert.contacts {
        assert!(alerting.contains(&format!("data-contact=\"{}\"", c.contact_id)), "{}: {alerting}", c.contact_id);
    }
    let changes = dom.split("id=\"change-table\"").nth(1).unwrap_or_else(|| panic!("no changes:\n{dom}"));
    assert!(changes.contains(&format!("data-contact=\"{}\"", want.top_changes[0].contact_id)), "{changes}");
    assert!(changes.contains("data-side=\"live\"") && changes.contains("data-side=\"shadow\""), "{changes}");

    // An error answer is shown as it is; without the token, the page says so.
    let url = format!("{base}?live={LIVE}&shadow=nope#token={TOKEN}");
    let dom = tokio::task::spawn_blocking(move || support::chromium_in("--dump-dom", &url, 1000, 8000)).await.unwrap();
    let message = dom.split("id=\"message\"").nth(1).unwrap().split("</div>").next().unwrap();
    assert!(message.contains("no model `nope` is scored here"), "{message}");
    let dom = tokio::task::spawn_blocking(move || support::chromium_in("--dump-dom", &base, 1000, 8000)).await.unwrap();
    assert!(dom.contains("needs the API token"), "{dom}");
    s.running.finish().await;
}
