//! Scoring models on the real stack: caps, fit, several models, cross-model
//! tiers, hysteresis, tiers that raise no alert, live reloads, and `rules
//! test` agreeing with the service. `rules check` reports every mistake at
//! its line; commands that need the rules file say which and how to point at
//! another; an error's causes are said once.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use hotlead::proto::email_engagement::Action;
use hotlead::proto::interaction_event::Interaction;
use hotlead::proto::{
    score_alert, EmailEngagement, FormSubmission, InteractionEvent, PageView, ProfileUpdate, ScoreAlert,
};
use hotlead::rules::RuleSet;
use prost::Message as _;
use support::{close, last_offsets, rules_file, spawn_pipeline, Stack, Topics};

const MIN: i64 = 60_000;

const RULES: &str = r#"
models:
  - name: engagement
    version: 1
    half_life: 7d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - name: sales-ready
        enter: 60
        exit: 50
        requires: { fit: 30 }
    rules:
      - id: pricing
        when: { kind: page_view, url: { prefix: /pricing } }
        points: 10
        cap: { hits: 3, per: day }
      - id: demo
        when: { kind: form_submission, form_id: demo-request }
        points: 40
      - id: click
        when: { kind: email_engagement, action: click }
        points: 6
      - id: unsubscribe
        when: { kind: email_engagement, action: unsubscribe }
        points: -6
  - name: fit
    half_life: 365d
    tiers:
      - { name: good-fit, enter: 30, exit: 30 }
    fit:
      - { id: manager, when: { job_title: { regex: "(?i)\\bmanager\\b" } }, points: 10 }
      - { id: founder, when: { job_title: { regex: "(?i)founder" } }, points: 20 }
      - { id: tech, when: { industry: [software, technology] }, points: 15 }
  - name: product-a
    half_life: 30d
    rules:
      - { id: pricing-a, when: { kind: page_view, url: { prefix: /pricing } }, points: 5 }
"#;

/// An event time early in a UTC day two days ago, so day caps see one day.
fn t0() -> i64 {
    let day = 86_400_000;
    (hotlead::decode::now_ms() / day - 2) * day + 3_600_000
}

fn ev(id: &str, contact: &str, at: i64, interaction: Interaction) -> InteractionEvent {
    InteractionEvent {
        event_id: id.into(),
        contact_id: contact.into(),
        occurred_at: Some(hotlead::decode::timestamp(at)),
        interaction: Some(interaction),
        ..Default::default()
    }
}

fn pricing() -> Interaction {
    Interaction::PageView(PageView { url: "/pricing".into(), ..Default::default() })
}

fn email(action: Action) -> Interaction {
    Interaction::EmailEngagement(EmailEngagement { action: action as i32, ..Default::default() })
}

fn demo() -> Interaction {
    Interaction::FormSubmission(FormSubmission { form_id: "demo-request".into(), ..Default::default() })
}

fn profile(pairs: &[(&str, &str)]) -> Interaction {
    Interaction::ProfileUpdate(ProfileUpdate {
        attributes: pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
    })
}

/// A contact's stored state, decoded with `rules`.
fn stored(stack: &Stack, topics: &Topics, rules: &RuleSet, contact: &str) -> hotlead::score::ContactState {
    let mut r = stack.redis();
    for p in 0..topics.partitions {
        let key = hotlead::store::PartitionKeys::new(&topics.input, p).contact(contact);
        if let Some(c) = support::stored_contact(&mut r, rules, &key) {
            return c.state;
        }
    }
    panic!("{contact} is not stored");
}

async fn alerts(stack: &Stack, topics: &Topics, expect: usize) -> Vec<ScoreAlert> {
    let records = stack.read_all(&topics.alerts, expect + 1, Duration::from_secs(5)).await;
    records.iter().map(|r| ScoreAlert::decode(r.payload.as_slice()).unwrap()).collect()
}

fn dir(a: &ScoreAlert) -> &'static str {
    if a.direction == score_alert::Direction::Heated as i32 {
        "heated"
    } else {
        "cooled"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_fit_models_cross_model_tiers_and_hysteresis() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, path) = rules_file(RULES);
    let rules = RuleSet::parse(RULES, "rules").unwrap();
    let t0 = t0();
    let mut events = Vec::new();
    // 20 pricing views in one day: engagement counts 3, product-a counts all.
    for i in 0..20 {
        events.push(ev(&format!("cap{i}"), "capped", t0, pricing()));
    }
    // A manager in software, then an engineer: the manager points go.
    events.push(ev("f1", "changer", t0, profile(&[("job_title", "Sales Manager"), ("industry", "software")])));
    events.push(ev("f2", "changer", t0 + MIN, profile(&[("job_title", "Engineer")])));
    // 70 engagement points but no fit: warm. Then fit arrives: sales-ready.
    events.push(ev("x1", "cross", t0, demo()));
    for i in 0..3 {
        events.push(ev(&format!("x2-{i}"), "cross", t0, pricing()));
    }
    events.push(ev("x3", "cross", t0 + MIN, profile(&[("job_title", "Founder"), ("industry", "software")])));
    // Fit alone: good-fit, never sales-ready.
    events.push(ev("o1", "fitonly", t0, profile(&[("job_title", "Founder"), ("industry", "technology")])));
    // Hovering around warm's enter threshold: one alert, no flapping.
    for i in 0..5 {
        events.push(ev(&format!("h{i}"), "hover", t0, email(Action::Click)));
    }
    for i in 0..4 {
        let action = if i % 2 == 0 { Action::Unsubscribe } else { Action::Click };
        events.push(ev(&format!("hh{i}"), "hover", t0, email(action)));
    }
    let delivered = stack.produce_events(&topics.input, &events).await;
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(60)).await;

    let capped = stored(&stack, &topics, &rules, "capped");
    let engagement = capped.models[0].as_ref().unwrap();
    assert_eq!(engagement.caps["pricing"].hits, 3);
    assert!(close(engagement.score, 30.0), "a cap of 3 hits a day: {}", engagement.score);
    let product = capped.models[2].as_ref().unwrap();
    assert!(close(product.score, 100.0), "the same events scored by a second model: {}", product.score);

    let changer = stored(&stack, &topics, &rules, "changer");
    let fit = changer.models[1].as_ref().unwrap();
    assert_eq!(fit.fit, BTreeMap::from([("tech".to_string(), 15.0)]), "the manager points are gone");
    assert_eq!(changer.profile["job_title"].0, "Engineer");

    let got: BTreeSet<(String, String, String, &str)> = alerts(&stack, &topics, 6)
        .await
        .iter()
        .map(|a| (a.contact_id.clone(), a.model.clone(), a.tier.clone(), dir(a)))
        .collect();
    let want: BTreeSet<(String, String, String, &str)> = [
        ("capped", "engagement", "warm"),
        ("cross", "engagement", "warm"),
        ("cross", "fit", "good-fit"),
        ("cross", "engagement", "sales-ready"),
        ("fitonly", "fit", "good-fit"),
        ("hover", "engagement", "warm"),
    ]
    .iter()
    .map(|(c, m, t)| (c.to_string(), m.to_string(), t.to_string(), "heated"))
    .collect();
    assert_eq!(got, want);
    let all = alerts(&stack, &topics, 6).await;
    let ready = all.iter().find(|a| a.tier == "sales-ready").unwrap();
    assert_eq!((ready.previous_tier.as_str(), ready.trigger_event_id.as_str()), ("warm", "x3"));
    let parts: BTreeMap<&str, f64> = ready.top_contributions.iter().map(|c| (c.rule_id.as_str(), c.points)).collect();
    assert!(parts.contains_key("demo") && parts.contains_key("pricing"), "{parts:?}");
    running.finish().await;

    // `hotlead score` explains a contact: parts decayed to now sum to the score.
    let score = |contact: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hotlead"))
            .args(["score", contact, "--json"])
            .envs(stack.env(&topics, &path))
            .output()
            .unwrap()
    };
    let out = score("cross");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let now = hotlead::decode::now_ms();
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let models = view["models"].as_array().unwrap();
    let engagement = models.iter().find(|m| m["model"] == "engagement").unwrap();
    assert_eq!(engagement["tier"], "sales-ready");
    let got = engagement["score"].as_f64().unwrap();
    let want = 70.0 * (-((now - t0) as f64) / 1000.0 / (7.0 * 86_400.0)).exp2();
    assert!((got - want).abs() < 1e-5 * want, "decayed to now: {got} vs {want}");
    let sum: f64 = engagement["breakdown"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).sum();
    assert!(close(sum, got), "the parts sum to the score: {sum} vs {got}");
    let fit = models.iter().find(|m| m["model"] == "fit").unwrap();
    assert!(close(fit["score"].as_f64().unwrap(), 35.0), "fit does not decay");
    assert_eq!(view["profile"]["job_title"], "Founder");
    let missing = score("nobody");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nobody has no score"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_change_the_version_lose_nothing_and_refuse_bad_files() {
    let stack = Stack::start();
    let topics = stack.topics(1).await;
    let v1 = "models: [{name: engagement, half_life: 7d, tiers: [{name: warm, enter: 30, exit: 20}], rules: [{id: click, when: {kind: email_engagement, action: click}, points: 6}]}]";
    let (_dir, path) = rules_file(v1);
    let t0 = t0();
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    let version = || running.rules.current().models[0].version;

    // Before the change: 5 clicks of 6 points.
    let clicks = |contact: &str, n: usize| -> Vec<InteractionEvent> {
        (0..n).map(|i| ev(&format!("{contact}-{i}"), contact, t0, email(Action::Click))).collect()
    };
    let d = stack.produce_events(&topics.input, &clicks("before", 5)).await;
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;

    // A stream keeps flowing while the file changes to 10 points a click.
    let stream: Vec<InteractionEvent> =
        (0..600).map(|i| ev(&format!("s{i}"), &format!("stream-{}", i % 20), t0, email(Action::Click))).collect();
    let producer = {
        let brokers = stack.brokers.clone();
        let topic = topics.input.clone();
        tokio::spawn(async move {
            let p: rdkafka::producer::FutureProducer =
                hotlead::kafka::client_config(&brokers, &[]).set("linger.ms", "1").create().unwrap();
            let mut last = 0;
            for e in stream {
                let payload = e.encode_to_vec();
                let r = rdkafka::producer::FutureRecord::to(&topic).key(&e.contact_id).payload(&payload);
                last = p.send(r, Duration::from_secs(10)).await.unwrap().offset;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            last
        })
    };
    // Change the file once part of the stream has been scored.
    let before = stack.watermarks(&topics)[&0];
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.watermarks(&topics)[&0] < before + 100 {
        assert!(Instant::now() < deadline, "the stream is not being scored");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::write(&path, v1.replace("points: 6", "points: 10")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while version() != 2 {
        assert!(Instant::now() < deadline, "the changed file was not reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = producer.await.unwrap();
    stack.wait_applied(&topics, &HashMap::from([(0, last)]), Duration::from_secs(60)).await;

    // After: 3 clicks of 10 points.
    let d = stack.produce_events(&topics.input, &clicks("after", 3)).await;
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;

    // An invalid file is refused; version 2 keeps scoring.
    std::fs::write(&path, v1.replace("exit: 20", "exit: 45")).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(version(), 2, "an invalid file is refused");
    let d = stack.produce_events(&topics.input, &clicks("refused", 3)).await;
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;

    let rules = running.rules.current();
    let score = |c: &str| stored(&stack, &topics, &rules, c).models[0].as_ref().unwrap().score;
    assert!(close(score("before"), 30.0));
    assert!(close(score("after"), 30.0), "new points after the reload");
    assert!(close(score("refused"), 30.0), "the old rules keep scoring after a refused file");
    // Each stream contact had 30 clicks, each scored once at 6 or 10 points;
    // the swap happened while they flowed, so some contacts have both.
    let mut mixed = 0;
    for c in 0..20 {
        let s = score(&format!("stream-{c}"));
        let tens = (s - 180.0) / 4.0;
        assert!((tens - tens.round()).abs() < 1e-9 && (0.0..=30.0).contains(&tens), "stream-{c}: {s}");
        if tens > 0.5 && tens < 29.5 {
            mixed += 1;
        }
    }
    assert!(mixed > 0, "the reload landed mid-stream");
    let all = alerts(&stack, &topics, 23).await;
    assert_eq!(all.len(), 23, "one warm alert per contact");
    let version_of = |c: &str| all.iter().find(|a| a.contact_id == c).unwrap().model_version;
    assert_eq!((version_of("before"), version_of("after"), version_of("refused")), (1, 2, 2));
    // Versions never go back: in offset order, alerts are v1 then v2.
    let versions: Vec<u32> = all.iter().map(|a| a.model_version).collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    running.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_test_gives_the_same_scores_as_the_service() {
    let stack = Stack::start();
    let topics = stack.topics(3).await;
    let (dir, path) = rules_file(RULES);
    let rules = RuleSet::parse(RULES, "rules").unwrap();
    // Simulated events as JSON lines, the way a marketer would try a change.
    let mut sim = hotlead::simulate::Simulator::new(&hotlead::simulate::SimConfig {
        contacts: 200,
        seed: 11,
        ..Default::default()
    });
    let start = hotlead::decode::now_ms() - 3 * 86_400_000;
    let lines: Vec<String> = (0..1500).map(|i| hotlead::replay::to_json(&sim.next_event(start + i * 90_000))).collect();
    let jsonl = dir.path().join("events.jsonl");
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let events: Vec<InteractionEvent> = lines.iter().map(|l| hotlead::replay::parse_event(l).unwrap()).collect();

    let delivered = stack.produce_events(&topics.input, &events).await;
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(90)).await;
    running.finish().await;

    let report = hotlead::replay::replay(&rules, &events);
    assert!(report.contacts.len() > 80, "{}", report.contacts.len());
    let mut compared = 0;
    for (contact, results) in &report.contacts {
        let state = stored(&stack, &topics, &rules, contact);
        for r in results {
            let m = rules.models.iter().position(|m| m.name == r.model).unwrap();
            let st = state.models[m].as_ref().unwrap();
            let service = st.score_at(st.at_ms, rules.models[m].half_life_secs);
            assert!(close(service, r.score), "{contact} {}: service {service}, rules test {}", r.model, r.score);
            assert_eq!(rules.models[m].tier_name(st.tier), r.tier, "{contact} {}", r.model);
            compared += 1;
        }
    }
    assert!(compared > 120, "{compared}");

    // The command prints the same contacts.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hotlead"))
        .args(["rules", "test"])
        .arg(&path)
        .arg(&jsonl)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let first = report.contacts.keys().next().unwrap();
    assert!(text.lines().any(|l| l.starts_with(first.as_str())), "{text}");
    assert!(text.contains(&format!("crossings ({})", report.alerts.len())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_rules_of_a_running_process() {
    let stack = Stack::start();
    let topics = stack.topics(1).await;
    let v1 = "models: [{name: engagement, half_life: 7d, tiers: [{name: warm, enter: 30, exit: 20}], rules: [{id: click, when: {kind: email_engagement, action: click}, points: 6}]}]";
    let (dir, path) = rules_file(v1);
    let log = dir.path().join("hotlead.log");
    let http = support::free_port();
    let mut child = support::KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_hotlead"))
            .arg("run")
            .envs(stack.env(&topics, &path))
            .env("HOTLEAD_RULES__RELOAD_INTERVAL", "0s")
            .env("HOTLEAD_HTTP__LISTEN", format!("127.0.0.1:{http}"))
            .env("HOTLEAD_KAFKA__STATISTICS_INTERVAL_MS", "500")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let t0 = t0();
    let clicks = |contact: &str, n: usize| -> Vec<InteractionEvent> {
        (0..n).map(|i| ev(&format!("{contact}-{i}"), contact, t0, email(Action::Click))).collect()
    };
    let d = stack.produce_events(&topics.input, &clicks("before", 5)).await;
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;

    // With file polling off, a change takes effect on SIGHUP only.
    std::fs::write(&path, v1.replace("points: 6", "points: 10")).unwrap();
    let hup = std::process::Command::new("kill").args(["-HUP", &child.0.id().to_string()]).status().unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap().contains("Reloaded rules") {
        assert!(Instant::now() < deadline, "no reload after SIGHUP:\n{}", std::fs::read_to_string(&log).unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = stack.produce_events(&topics.input, &clicks("after", 3)).await;
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    let all = alerts(&stack, &topics, 2).await;
    let versions: Vec<(&str, u32)> = all.iter().map(|a| (a.contact_id.as_str(), a.model_version)).collect();
    assert_eq!(versions, [("before", 1), ("after", 2)]);

    // The metrics SREs watch moved.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        raw
    };
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']) && l.contains(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
    };
    let line = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} missing from /metrics:\n{metrics}"))
    };
    assert_eq!(line("hotlead_events_total{outcome=\"scored\"}"), 8.0);
    assert_eq!(line("hotlead_alerts_total{model=\"engagement\",tier=\"warm\",direction=\"heated\"}"), 2.0);
    assert_eq!(line("hotlead_rules_reloads_total{result=\"ok\"}"), 1.0);
    assert_eq!(line("hotlead_rules_version{model=\"engagement\"}"), 2.0);
    assert_eq!(line("hotlead_consumer_lag_messages{partition=\"0\"}"), 0.0);
    assert_eq!(line("hotlead_owned_partitions"), 1.0);
    assert!(value("hotlead_redis_commit_seconds_count") >= 2.0);
    assert!(value("hotlead_relay_seconds_count") >= 2.0);
    assert_eq!(value("hotlead_event_to_alert_seconds_count"), 2.0);
    // The events were made two days ago: event time to acknowledged alert.
    let mean = value("hotlead_event_to_alert_seconds_sum") / 2.0;
    assert!((86_400.0..3.0 * 86_400.0).contains(&mean), "mean event-to-alert {mean}s");
    assert_eq!(line("hotlead_build_info{version="), 1.0);
    // The changed rule counts its hits since it came into force.
    assert_eq!(line("hotlead_rule_hits_total{model=\"engagement\",rule=\"click\"}"), 3.0);
    // Two contacts, each read from Redis once it is new to the cache (the
    // reload dropped the cache), the rest from memory.
    let (hits, misses) = (
        line("hotlead_state_cache_lookups_total{result=\"hit\"}"),
        line("hotlead_state_cache_lookups_total{result=\"miss\"}"),
    );
    assert!(misses >= 2.0 && hits + misses >= 2.0, "state cache: {hits} hits, {misses} misses");
    assert!(line("hotlead_state_cache_contacts") >= 1.0);
    let term = std::process::Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(term.success() && child.0.wait().unwrap().success());
}

/// A file with five different mistakes, and where each is.
const FIVE_MISTAKES: &str = r#"models:
  - name: engagement
    half_life: two weeks
    tiers:
      - { name: hot, enter: 60, exit: 45 }
      - { name: warm, enter: 30, exit: 20 }
    rules:
      - id: pricing
        when: { kind: page_veiw, url: { prefix: /pricing } }
        points: ten
      - id: pricing-title
        when: { kind: page_view, title: { regex: "(pricing" } }
        points: 5
"#;

#[test]
fn rules_check_reports_every_mistake_at_its_line() {
    let checked = RuleSet::check(FIVE_MISTAKES);
    assert!(checked.rules.is_none());
    let found: Vec<(usize, usize, &str, &str)> =
        checked.errors.iter().map(|p| (p.line, p.column, p.field.as_str(), p.code)).collect();
    assert_eq!(
        found,
        [
            (3, 16, "models[0].half_life", "invalid_duration"),
            (6, 30, "models[0].tiers[1].enter", "tier_order"),
            (9, 23, "models[0].rules[0].when.kind", "unknown_kind"),
            (10, 17, "models[0].rules[0].points", "not_a_number"),
            (12, 50, "models[0].rules[1].when.title.regex", "invalid_regex"),
        ]
    );
    assert_eq!(checked.errors[2].suggestion.as_deref(), Some("page_view"));
    assert!(checked.errors[4].message.contains("unclosed group"), "{}", checked.errors[4].message);

    // The command prints each, prefixed with file:line:column, and refuses.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, FIVE_MISTAKES).unwrap();
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_hotlead")).args(["rules", "check"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let f = file.display();
    for expected in [
        format!("{f}:3:16: models[0].half_life: `two weeks` is not a duration"),
        format!("{f}:6:30: models[0].tiers[1].enter: tiers are listed lowest first"),
        format!("{f}:9:23: models[0].rules[0].when.kind: `page_veiw` is not a kind of interaction"),
        format!("{f}:10:17: models[0].rules[0].points: `ten` is not a number"),
        format!("{f}:12:50: models[0].rules[1].when.title.regex: invalid regex `(pricing`: unclosed group"),
    ] {
        assert_eq!(stderr.lines().filter(|l| l.starts_with(&expected)).count(), 1, "{expected}\n{stderr}");
    }
    assert!(stderr.contains("(did you mean `page_view`?)"), "{stderr}");
    assert!(stderr.contains("refused: 5 errors"), "{stderr}");

    // Lint warns; --strict refuses what it warns of.
    let fixed = "models:\n  - name: m\n    half_life: 7d\n    tiers:\n      - { name: warm, enter: 30, exit: 20 }\n      - { name: hot, enter: 60, exit: 25 }\n    rules:\n      - { id: p, when: { kind: page_view }, points: 10 }\n";
    std::fs::write(&file, fixed).unwrap();
    let run = |strict: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hotlead"));
        c.args(["rules", "check"]).arg(&file);
        if strict {
            c.arg("--strict");
        }
        c.output().unwrap()
    };
    let loose = run(false);
    assert!(loose.status.success());
    let warned = String::from_utf8(loose.stderr).unwrap();
    assert!(
        warned.starts_with(&format!("{f}:6:39: warning: models[0].tiers[1].exit: tier `hot` is left below 25")),
        "{warned}"
    );
    assert!(String::from_utf8(loose.stdout).unwrap().contains("ok, 1 warning"));
    let strict = run(true);
    assert_eq!(strict.status.code(), Some(1));
    assert!(String::from_utf8(strict.stderr).unwrap().contains("refused under --strict: 1 warning"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_rules_file_and_say_each_cause_once() {
    // Outside the repository, the default rules file is not there.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hotlead"))
        .args(["score", "c-1"])
        .current_dir(elsewhere.path())
        .env_remove("HOTLEAD_CONFIG")
        .env_remove("HOTLEAD_RULES__PATH")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("cannot read rules file examples/rules.yaml"), "{stderr}");
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
    assert!(stderr.contains("--rules FILE") && stderr.contains("rules.path"), "{stderr}");

    // A Redis that is not there is said to be refused once.
    let stack = Stack::start();
    let topics = stack.topics(1).await;
    let (_dir, path) = rules_file(RULES);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hotlead"))
        .args(["score", "c-1"])
        .envs(stack.env(&topics, &path))
        .env("HOTLEAD_REDIS__URL", format!("redis://127.0.0.1:{}", support::free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("error: cannot connect to Redis (redis.url): "), "{stderr}");
    assert_eq!(stderr.matches("refused").count(), 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_marked_no_alert_moves_without_alerting() {
    let yaml = r#"
models:
  - name: engagement
    half_life: 7d
    tiers:
      - { name: warm, enter: 30, exit: 20, alert: false }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - { id: demo, when: { kind: form_submission, form_id: demo-request }, points: 40 }
"#;
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, path) = rules_file(yaml);
    let rules = RuleSet::parse(yaml, "rules").unwrap();
    let t0 = t0();
    // warmed: 40 (warm, no alert); heated: 40 then 80 (warm, then hot: one alert).
    let events =
        vec![ev("w1", "warmed", t0, demo()), ev("h1", "heated", t0, demo()), ev("h2", "heated", t0 + MIN, demo())];
    let delivered = stack.produce_events(&topics.input, &events).await;
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(60)).await;
    running.finish().await;
    let all = alerts(&stack, &topics, 1).await;
    let seen: Vec<(&str, &str, &str, &str)> =
        all.iter().map(|a| (a.contact_id.as_str(), a.previous_tier.as_str(), a.tier.as_str(), dir(a))).collect();
    assert_eq!(seen, [("heated", "warm", "hot", "heated")]);
    let m = &rules.models[0];
    assert_eq!(m.tier_name(stored(&stack, &topics, &rules, "warmed").models[0].as_ref().unwrap().tier), "warm");
    assert_eq!(m.tier_name(stored(&stack, &topics, &rules, "heated").models[0].as_ref().unwrap().tier), "hot");
}
