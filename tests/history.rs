//! A contact's score history on the real stack: events dated days ago heat
//! a contact, decay cools it between events and after the last one, other
//! contacts share its partition and one event comes twice. The history
//! (read API, `hotlead history`, the board's chart) names every change of
//! tier at the instant an independent oracle gives: the sum of
//! `p * 2^(-(T - t)/H)` with hysteresis, not the engine.
//!
//! `HOTLEAD_HISTORY_SCREENSHOT=/tmp/chart.png` also saves a screenshot of
//! the board with the lead's panel open.

mod support;

use std::time::Duration;

use hotlead::proto::InteractionEvent;
use support::{http_get, last_offsets, page, rules_file, spawn_pipeline, Stack};

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

// Hot raises no alert: the history shows its changes all the same.
const RULES: &str = r#"
models:
  - name: engagement
    half_life: 1d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 62, exit: 44, alert: false }
    rules:
      - { id: pricing-page, when: { kind: page_view, url: /pricing }, points: 25 }
      - { id: demo, when: { kind: page_view, url: /demo }, points: 40 }
"#;

/// (enter, exit) of warm and hot.
const TIERS: [(f64, f64); 2] = [(30.0, 20.0), (62.0, 44.0)];
const NAMES: [&str; 3] = ["cold", "warm", "hot"];

/// A change of tier: direction, tier, previous tier, instant, score.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    direction: &'static str,
    tier: &'static str,
    previous: &'static str,
    at_ms: i64,
    score: f64,
}

/// The oracle: a contact's events (time, points) in time order, scored as
/// a sum of decayed points; its tiers with hysteresis, judged at each event
/// and, between events and up to `now`, at the millisecond decay takes the
/// score below the current tier's exit. Returns the changes of tier and
/// the score right after each event.
fn oracle(events: &[(i64, f64)], now: i64) -> (Vec<Change>, Vec<f64>) {
    let score_at = |t: i64| -> f64 {
        events.iter().filter(|(e, _)| *e <= t).map(|(e, p)| p * (-((t - e) as f64) / DAY as f64).exp2()).sum()
    };
    let (mut tier, mut changes, mut after) = (0usize, vec![], vec![]);
    let mut last: Option<i64> = None;
    for (k, until) in events.iter().map(|(t, _)| *t).chain([now]).enumerate() {
        // Decay since the last event, one tier at a time.
        if let Some(t) = last {
            let s = score_at(t);
            while tier > 0 {
                let exit = TIERS[tier - 1].1;
                let at = t + (DAY as f64 * (s / exit).log2()).ceil() as i64;
                if at > until {
                    break;
                }
                let (previous, score) = (NAMES[tier], score_at(at));
                tier -= 1;
                changes.push(Change { direction: "COOLED", tier: NAMES[tier], previous, at_ms: at, score });
            }
        }
        if k == events.len() {
            break;
        }
        let s = score_at(until);
        after.push(s);
        let from = tier;
        while tier < TIERS.len() && s >= TIERS[tier].0 {
            tier += 1;
        }
        if tier > from {
            changes.push(Change {
                direction: "HEATED",
                tier: NAMES[tier],
                previous: NAMES[from],
                at_ms: until,
                score: s,
            });
        }
        last = Some(until);
    }
    (changes, after)
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contacts_history_names_each_tier_change_at_its_instant() {
    let mut stack = Stack::start();
    // One partition: the other contacts share the lead's.
    let topics = stack.topics(1).await;
    let (_dir, path) = rules_file(RULES);
    let t = hotlead::decode::now_ms() / 1000 * 1000 - 10 * DAY;
    let view = |id: &str, at: i64, url: &str| page(id, "lead", at, url);
    // 40 (warm), 40 an hour later (hot), cooled through hot and warm by
    // decay; three days on 25 heats it to warm again, two hours later 25
    // more (still warm), and it cools again long before now.
    let lead: Vec<(InteractionEvent, f64)> = vec![
        (view("e1", t, "/demo"), 40.0),
        (view("e2", t + HOUR, "/demo"), 40.0),
        (view("e3", t + 3 * DAY, "/pricing"), 25.0),
        (view("e4", t + 3 * DAY + 2 * HOUR, "/pricing"), 25.0),
    ];
    let mut messages: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let keyed = |e: &InteractionEvent| (e.contact_id.clone().into_bytes(), prost::Message::encode_to_vec(e));
    messages.push(keyed(&lead[0].0));
    messages.push(keyed(&page("o1", "other-1", t + HOUR / 2, "/demo")));
    messages.push(keyed(&lead[1].0));
    messages.push(keyed(&page("o2", "other-2", t + 2 * DAY, "/pricing")));
    messages.push(keyed(&page("o3", "other-1", t + 2 * DAY, "/demo")));
    messages.push(keyed(&lead[2].0));
    // The same event id again (a producer's retry, here with other content):
    // counted once.
    messages.push(keyed(&view("e3", t + 3 * DAY, "/demo")));
    // Without a key: the event names its contact.
    let (_, payload) = keyed(&lead[3].0);
    messages.push((Vec::new(), payload));
    messages.push(keyed(&page("o4", "other-2", t + 4 * DAY, "/demo")));
    let delivered = stack.produce(&topics.input, &messages).await;
    assert!(delivered.iter().all(|(p, _)| *p == 0));
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(60)).await;
    let port = support::serve_api(&stack, &running, &topics, "tok").await;
    let get = |p: String| tokio::task::spawn_blocking(move || http_get(port, &p, Some("tok")));

    let (status, body) = get("/v1/contacts/lead/history".into()).await.unwrap();
    let now = hotlead::decode::now_ms();
    assert_eq!(status, 200, "{body}");
    let events: Vec<(i64, f64)> = lead.iter().map(|(e, p)| (e.occurred_at.unwrap().seconds * 1000, *p)).collect();
    let (want, after) = oracle(&events, now);
    assert_eq!(
        want.iter().map(|c| (c.direction, c.tier)).collect::<Vec<_>>(),
        [
            ("HEATED", "warm"),
            ("HEATED", "hot"),
            ("COOLED", "warm"),
            ("COOLED", "cold"),
            ("HEATED", "warm"),
            ("COOLED", "cold")
        ],
        "the scenario the oracle sees"
    );
    assert_eq!(body["contact_id"], "lead");
    assert_eq!((body["model"].as_str(), body["model_version"].as_u64()), (Some("engagement"), Some(1)));
    assert_eq!((body["half_life_secs"].as_f64(), body["base_tier"].as_str()), (Some(86_400.0), Some("cold")));
    assert_eq!(body["tiers"][1], serde_json::json!({"name": "hot", "enter": 62.0, "exit": 44.0}));
    assert_eq!((body["truncated"].as_bool(), body["from"].is_null(), body["to"].is_null()), (Some(false), true, true));
    let entries = body["entries"].as_array().unwrap();
    let got: Vec<Change> = entries
        .iter()
        .filter(|e| e["kind"] == "tier")
        .map(|e| {
            let name = |v: &serde_json::Value| *NAMES.iter().find(|n| v == **n).unwrap_or(&"?");
            Change {
                direction: if e["direction"] == "HEATED" { "HEATED" } else { "COOLED" },
                tier: name(&e["tier"]),
                previous: name(&e["previous_tier"]),
                at_ms: e["at_ms"].as_i64().unwrap(),
                score: e["score"].as_f64().unwrap(),
            }
        })
        .collect();
    assert_eq!(got.len(), want.len(), "{got:#?}\n{want:#?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            (g.direction, g.tier, g.previous, g.at_ms),
            (w.direction, w.tier, w.previous, w.at_ms),
            "{g:?} {w:?}"
        );
        assert!(close(g.score, w.score), "{g:?} {w:?}");
    }
    for e in entries {
        assert_eq!(e["at"].as_str(), Some(rfc3339(e["at_ms"].as_i64().unwrap()).as_str()));
        assert!(close(e["score"].as_f64().unwrap(), e["behaviour"].as_f64().unwrap() + e["fit"].as_f64().unwrap()));
    }
    let shown: Vec<&serde_json::Value> = entries.iter().filter(|e| e["kind"] == "event").collect();
    let ids: Vec<&str> = shown.iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["e1", "e2", "e3", "e4"], "the repeat of e3 counts once; other contacts are not shown");
    for ((e, s), (_, p)) in shown.iter().zip(&after).zip(&lead) {
        assert!(close(e["score"].as_f64().unwrap(), *s), "{e} != {s}");
        let points = &e["points"].as_array().unwrap()[..];
        assert_eq!(points.len(), 1, "{e}");
        assert!(close(points[0]["points"].as_f64().unwrap(), *p), "{e}");
    }
    assert_eq!(shown[1]["points"][0]["rule_id"], "demo");
    assert_eq!(shown[3]["points"][0]["rule_id"], "pricing-page");

    // A range keeps what is in it, scored from the first event; a limit
    // keeps the latest.
    let (from, to) = (t + DAY, t + 3 * DAY);
    let (_, part) = get(format!("/v1/contacts/lead/history?from={}&to={to}", rfc3339(from))).await.unwrap();
    let at: Vec<i64> = part["entries"].as_array().unwrap().iter().map(|e| e["at_ms"].as_i64().unwrap()).collect();
    let inside: Vec<i64> =
        entries.iter().map(|e| e["at_ms"].as_i64().unwrap()).filter(|a| (from..=to).contains(a)).collect();
    assert_eq!(at, inside);
    assert_eq!(part["from"].as_str(), Some(rfc3339(from).as_str()));
    assert_eq!(part["truncated"], false);
    let (_, last) = get("/v1/contacts/lead/history?limit=2&model=engagement".into()).await.unwrap();
    assert_eq!(last["truncated"], true);
    assert_eq!(last["entries"].as_array().unwrap()[..], entries[entries.len() - 2..]);

    // Unknown contact, model, parameter.
    let (status, body) = get("/v1/contacts/nobody/history".into()).await.unwrap();
    assert_eq!(status, 404, "{body}");
    let (status, body) = get("/v1/contacts/lead/history?model=nope".into()).await.unwrap();
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("engagement"), "{body}");
    let (status, _) = get("/v1/contacts/lead/history?from=yesterday".into()).await.unwrap();
    assert_eq!(status, 400);
    let (status, _) =
        tokio::task::spawn_blocking(move || http_get(port, "/v1/contacts/lead/history", None)).await.unwrap();
    assert_eq!(status, 401);

    // `hotlead history` names the same changes of tier.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hotlead"))
            .arg("history")
            .args(args)
            .envs(stack.env(&topics, &path))
            .output()
            .unwrap()
    };
    let out = cli(&["lead"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("HEATED") || l.contains("COOLED")).collect();
    assert_eq!(lines.len(), want.len(), "{text}");
    for (line, w) in lines.iter().zip(&want) {
        let said = format!("{} → {}", w.previous, w.tier);
        assert!(line.starts_with(&rfc3339(w.at_ms)) && line.contains(w.direction) && line.contains(&said), "{line}");
    }
    for id in ["e1", "e2", "e3", "e4"] {
        assert_eq!(text.lines().filter(|l| l.contains(&format!(" {id} "))).count(), 1, "{id}: {text}");
    }
    let out = cli(&["nobody"]);
    assert_eq!(out.status.code(), Some(1));

    // The board's lead panel draws the score over time.
    let url = format!("http://127.0.0.1:{port}/board#token=tok&lead=lead");
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || support::chromium_in("--dump-dom", &url, 900, 10_000)
    })
    .await
    .unwrap();
    let detail = dom.split("id=\"detail\"").nth(1).unwrap_or_else(|| panic!("no lead panel:\n{dom}"));
    let svg = detail
        .split("<svg class=\"history-chart\" data-model=\"engagement\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no chart in the lead panel:\n{detail}"))
        .split("</svg>")
        .next()
        .unwrap();
    let line = svg.split("class=\"score-line\" d=\"").nth(1).unwrap().split('"').next().unwrap();
    assert!(line.starts_with('M') && line.matches(" L").count() > 4 * 24, "{line}");
    let bands: Vec<&str> =
        svg.split("class=\"band\" data-tier=\"").skip(1).map(|s| s.split('"').next().unwrap()).collect();
    assert_eq!(bands, NAMES);
    let dots: Vec<i64> = svg
        .split("class=\"crossing ")
        .skip(1)
        .map(|s| s.split("data-at=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(dots, want.iter().map(|c| c.at_ms).collect::<Vec<_>>());

    if let Ok(file) = std::env::var("HOTLEAD_HISTORY_SCREENSHOT") {
        let arg = format!("--screenshot={file}");
        tokio::task::spawn_blocking(move || support::chromium_in(&arg, &url, 900, 10_000)).await.unwrap();
    }

    // The broker gone: a clear 503.
    running.finish().await;
    stack.stop_broker();
    let (status, body) = get("/v1/contacts/lead/history".into()).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("cannot read partition 0"), "{body}");
}
