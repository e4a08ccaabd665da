//! The read API on the real stack: contact scores and breakdowns equal the
//! formula, and leaderboards equal a brute-force ranking at the same
//! instant, now and after time passes with no events.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use hotlead::proto::interaction_event::Interaction;
use hotlead::proto::{InteractionEvent, PageView};
use hotlead::rules::RuleSet;
use support::{close, last_offsets, rules_file, spawn_pipeline, Stack, Topics};

const DAY: i64 = 86_400_000;

const RULES: &str = r#"
models:
  - name: engagement
    half_life: 2d
    tiers:
      - { name: warm, enter: 30, exit: 2 }
    rules:
      - { id: pricing, when: { kind: page_view, url: { prefix: /pricing } }, points: 10 }
      - { id: blog, when: { kind: page_view, url: { prefix: /blog } }, points: 3 }
  - name: fit
    half_life: 365d
    fit:
      - { id: founder, when: { job_title: Founder }, points: 20 }
"#;

/// GET `path` from the listener; returns status and body.
fn get(port: u16, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status: u16 = raw[9..12].parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

/// Each contact's behaviour score in the engagement model at `at`, from Redis.
fn brute_force(stack: &Stack, topics: &Topics, rules: &RuleSet, contacts: &[String], at: i64) -> Vec<(String, f64)> {
    let mut r = stack.redis();
    let m = &rules.models[0];
    let mut v: Vec<(String, f64)> = contacts
        .iter()
        .filter_map(|c| {
            (0..topics.partitions).find_map(|p| {
                let key = hotlead::store::PartitionKeys::new(&topics.input, p).contact(c);
                let stored = support::stored_contact(&mut r, rules, &key)?;
                let st = stored.state.models[0].clone()?;
                Some((c.clone(), st.behaviour_at(at, m.half_life_secs)))
            })
        })
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_api_answers_with_the_formula_and_a_brute_force_ranking() {
    let stack = Stack::start();
    let topics = stack.topics(3).await;
    let (_dir, path) = rules_file(RULES);
    let rules = RuleSet::parse(RULES, "rules").unwrap();
    let now = hotlead::decode::now_ms() / 1000 * 1000;
    let page = |id: String, contact: &str, at: i64, url: &str| InteractionEvent {
        event_id: id,
        contact_id: contact.into(),
        occurred_at: Some(hotlead::decode::timestamp(at)),
        interaction: Some(Interaction::PageView(PageView { url: url.into(), ..Default::default() })),
        ..Default::default()
    };
    // 40 contacts with different amounts and ages of interest.
    let contacts: Vec<String> = (0..40).map(|i| format!("lead-{i:02}")).collect();
    let mut events = Vec::new();
    for (i, c) in contacts.iter().enumerate() {
        for k in 0..(i % 7 + 1) {
            let at = now - ((i * 37 + k * 11) % 96) as i64 * 3_600_000;
            let url = if (i + k) % 3 == 0 { "/pricing" } else { "/blog/x" };
            events.push(page(format!("{c}-{k}"), c, at, url));
        }
    }
    let delivered = stack.produce_events(&topics.input, &events).await;
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(60)).await;

    let port = support::serve_api(&stack, &running, &topics, "s3cret").await;
    let token = Some("s3cret");
    let get =
        move |path: String, token: Option<&'static str>| tokio::task::spawn_blocking(move || get(port, &path, token));

    // A contact: the formula, decayed to the instant asked for.
    let c = &contacts[13]; // 7 events
    let at = now + DAY;
    let (status, body) = get(format!("/v1/contacts/{c}?at={at}"), token).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let mut want = 0.0;
    for e in events.iter().filter(|e| &e.contact_id == c) {
        let t = e.occurred_at.as_ref().unwrap().seconds * 1000;
        let Some(Interaction::PageView(p)) = &e.interaction else { unreachable!() };
        let points = if p.url.starts_with("/pricing") { 10.0 } else { 3.0 };
        want += points * (-((at - t) as f64) / (2.0 * DAY as f64)).exp2();
    }
    let model = &body["models"][0];
    assert_eq!(model["model"], "engagement");
    let got = model["score"].as_f64().unwrap();
    assert!(close(got, want), "{got} vs {want}");
    let parts: f64 = model["breakdown"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).sum();
    assert!(close(parts, got));

    // Leaderboards equal a brute-force ranking at the same instant, now and
    // three days later with no events in between.
    for at in [now, now + 3 * DAY] {
        let (status, body) = get(format!("/v1/models/engagement/leaderboard?limit=15&at={at}"), token).await.unwrap();
        assert_eq!(status, 200, "{body}");
        let got: Vec<(String, f64)> = body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["contact_id"].as_str().unwrap().to_string(), e["score"].as_f64().unwrap()))
            .collect();
        // The leaderboard keeps contacts at or above its floor (the lowest
        // tier's exit, 2): the ranking of those, whatever was pruned.
        assert_eq!(body["floor"], 2.0);
        let everyone = brute_force(&stack, &topics, &rules, &contacts, at);
        let want: Vec<(String, f64)> = everyone.iter().filter(|(_, s)| *s >= 2.0).cloned().collect();
        assert!(want.len() >= 15 && want.len() < everyone.len(), "{} of {}", want.len(), everyone.len());
        assert_eq!(got.len(), 15);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.0, w.0, "ranking at {at}: {got:?}\nvs {want:?}");
            assert!(close(g.1, w.1), "{g:?} vs {w:?}");
        }
        // Everyone above a score, in one range query.
        // Between two ranks, clear of rounding at the boundary.
        let (k, _) = want.windows(2).enumerate().find(|(i, w)| *i >= 7 && w[0].1 > w[1].1 * 1.001).unwrap();
        let min = (want[k].1 + want[k + 1].1) / 2.0;
        let (_, body) =
            get(format!("/v1/models/engagement/leaderboard?limit=100&min_score={min}&at={at}"), token).await.unwrap();
        let n = body["entries"].as_array().unwrap().len();
        assert_eq!(n, k + 1, "everyone above {min}");
        // A min_score under the floor answers from the floor.
        let (_, body) =
            get(format!("/v1/models/engagement/leaderboard?limit=100&min_score=0.5&at={at}"), token).await.unwrap();
        let n = body["entries"].as_array().unwrap().len();
        assert_eq!(n, want.len(), "everyone at or above the floor, no one under it");
    }

    // `hotlead top` prints the API's ranking.
    let (_, body) = get("/v1/models/engagement/leaderboard?limit=15".into(), token).await.unwrap();
    let api_order: Vec<String> =
        body["entries"].as_array().unwrap().iter().map(|e| e["contact_id"].as_str().unwrap().to_string()).collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hotlead"))
        .args(["top", "engagement", "--limit", "15"])
        .envs(stack.env(&topics, &path))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli_order: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .collect();
    assert_eq!(cli_order, api_order);

    // Ready means reads can be served; whether the pipeline consumes is
    // /v1/status.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200") && raw.contains("ready"), "{raw}");
    let (status, body) = get("/v1/status".into(), token).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["consuming"], true, "{body}");
    assert!(body["owned_partitions"].as_u64().unwrap() >= 1, "{body}");

    // Errors name what is wrong.
    let (status, body) = get("/v1/contacts/nobody".into(), token).await.unwrap();
    assert_eq!((status, body["error"].as_str().unwrap().contains("nobody")), (404, true));
    let (status, body) = get("/v1/models/engagement/leaderboard?limit=0".into(), token).await.unwrap();
    assert_eq!((status, body["error"].as_str().unwrap().contains("`limit`")), (400, true));
    let (status, body) = get("/v1/models/engagement/leaderboard?min_score=x".into(), token).await.unwrap();
    assert_eq!((status, body["error"].as_str().unwrap().contains("`min_score`")), (400, true));
    let (status, body) = get(format!("/v1/contacts/{c}?at=yesterday"), token).await.unwrap();
    assert_eq!((status, body["error"].as_str().unwrap().contains("`at`")), (400, true));
    let (status, _) = get("/v1/models/nosuch/leaderboard".into(), token).await.unwrap();
    assert_eq!(status, 404);
    let (status, _) = get("/v1/models".into(), None).await.unwrap();
    assert_eq!(status, 401, "the token is required");
    let (status, body) = get("/v1/models".into(), token).await.unwrap();
    assert_eq!(status, 200);
    let names: Vec<&str> = body["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["engagement", "fit"]);
    assert_eq!(body["models"][0]["rules"][0]["id"], "pricing");
    // Each rule's hits: the events it matched in the service.
    let matched = |prefix: &str| {
        events
            .iter()
            .filter(|e| matches!(&e.interaction, Some(Interaction::PageView(p)) if p.url.starts_with(prefix)))
            .count()
    };
    assert_eq!(body["models"][0]["rules"][0]["hits"], matched("/pricing"));
    assert_eq!(body["models"][0]["rules"][1]["hits"], matched("/blog"));

    running.finish().await;
}
