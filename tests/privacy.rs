//! Private by default, on the real stack (a Tansu broker, a `redis-server`):
//!
//! - `hotlead run` refuses to serve the read API beyond loopback without a
//!   token, naming the settings that fix it; with a token, with
//!   `http.allow_anonymous`, or on loopback it starts, and the token guards
//!   `/v1` while `/metrics` and `/healthz` stay open.
//! - An attribute in `privacy.hidden_attributes` scores (its fit rule's
//!   points are in the score, the breakdown and the alert) but appears in no
//!   answer: not the contact, leaderboards, recent alerts, models, status or
//!   rules routes, not `hotlead score` or `hotlead top`, not the alert topic
//!   and not a webhook or chat notification. Each check is first made with
//!   the attribute shown, so it can fail.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hotlead::proto::interaction_event::Interaction;
use hotlead::proto::{InteractionEvent, ProfileUpdate, ScoreAlert};
use prost::Message as _;
use support::notify::{Notifier, NotifyTopics, Receiver};
use support::{free_port, http_get, last_offsets, page, rules_file, spawn_pipeline, KillOnDrop, Stack, Topics};

const TOKEN: &str = "tok-privacy-5Qe2";

/// `env` with these variables set (replacing any already there).
fn with(mut env: Vec<(String, String)>, vars: &[(&str, &str)]) -> Vec<(String, String)> {
    env.retain(|(k, _)| !vars.iter().any(|(v, _)| v == k));
    env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// `hotlead run` with `env`, its output in `log`.
fn spawn_run(env: &[(String, String)], log: &Path) -> KillOnDrop {
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hotlead"))
        .arg("run")
        .envs(env.iter().cloned())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

/// Whether a listener on 127.0.0.1:`port` answers `/healthz`.
async fn healthy(port: u16) -> bool {
    let probe =
        move || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && http_get(port, "/healthz", None).0 == 200;
    tokio::task::spawn_blocking(probe).await.unwrap()
}

/// Waits until the listener on 127.0.0.1:`port` answers `/healthz`, or
/// panics (with the log) if the process exits or 60 s pass.
async fn wait_serving(child: &mut KillOnDrop, port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if healthy(port).await {
            return;
        }
        let log_text = || std::fs::read_to_string(log).unwrap_or_default();
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("hotlead run exited ({status}) instead of serving:\n{}", log_text());
        }
        assert!(Instant::now() < deadline, "hotlead run did not serve on {port} within 60 s:\n{}", log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET on 127.0.0.1:`port` off the runtime's threads.
async fn get(port: u16, path: &str, token: Option<&'static str>) -> (u16, serde_json::Value) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || http_get(port, &path, token)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_api_is_served_beyond_loopback_only_with_a_token_or_consent() {
    let stack = Stack::start();
    let topics = stack.topics(1).await;
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rules.yaml");
    let dir = tempfile::tempdir().unwrap();
    let base = stack.env(&topics, &rules);

    // 0.0.0.0 with no token: refused at start, naming the settings.
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let log = dir.path().join("refused.log");
    let mut refused = spawn_run(&with(base.clone(), &[("HOTLEAD_HTTP__LISTEN", &listen)]), &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = refused.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "hotlead run started on {listen} without a token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{said}");
    for name in
        [listen.as_str(), "http.listen", "http.token", "http.token_file", "HOTLEAD_HTTP__TOKEN", "http.allow_anonymous"]
    {
        assert!(said.contains(name), "`{name}` is not named in: {said}");
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing listens");

    // With a token: it starts; /v1 needs the token, the probes and metrics
    // do not.
    let port = free_port();
    let log = dir.path().join("token.log");
    let env =
        with(base.clone(), &[("HOTLEAD_HTTP__LISTEN", &format!("0.0.0.0:{port}")), ("HOTLEAD_HTTP__TOKEN", TOKEN)]);
    let mut running = spawn_run(&env, &log);
    wait_serving(&mut running, port, &log).await;
    assert_eq!(get(port, "/v1/models", None).await.0, 401, "the token guards /v1");
    assert_eq!(get(port, "/v1/models", Some(TOKEN)).await.0, 200);
    assert_eq!(get(port, "/metrics", None).await.0, 200, "Prometheus needs no token");
    assert_eq!(get(port, "/readyz", None).await.0, 200, "the kubelet needs no token");
    drop(running);

    // Open beyond loopback on purpose.
    let port = free_port();
    let log = dir.path().join("anonymous.log");
    let env = with(
        base.clone(),
        &[("HOTLEAD_HTTP__LISTEN", &format!("0.0.0.0:{port}")), ("HOTLEAD_HTTP__ALLOW_ANONYMOUS", "true")],
    );
    let mut running = spawn_run(&env, &log);
    wait_serving(&mut running, port, &log).await;
    assert_eq!(get(port, "/v1/models", None).await.0, 200, "allow_anonymous serves it open");
    drop(running);

    // Loopback with no token: allowed, as by default.
    let port = free_port();
    let log = dir.path().join("loopback.log");
    let mut running = spawn_run(&with(base, &[("HOTLEAD_HTTP__LISTEN", &format!("127.0.0.1:{port}"))]), &log);
    wait_serving(&mut running, port, &log).await;
    assert_eq!(get(port, "/v1/models", None).await.0, 200);
}

/// Scores on a hidden job title (fit) plus a pricing page view: warm only
/// with both. `country` is kept by `keep_attributes` and read by no rule;
/// `industry` is read by a fit rule that does not match.
const RULES: &str = r#"
keep_attributes: [country]
models:
  - name: engagement
    half_life: 14d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
    rules:
      - { id: pricing-page, when: { kind: page_view, url: { prefix: /pricing } }, points: 12 }
    fit:
      - { id: decision-maker, when: { job_title: { regex: "(?i)\\bchief\\b" } }, points: 20 }
      - { id: retail, when: { industry: retail }, points: 5 }
"#;

const CONTACT: &str = "lead-privacy-1";
const TITLE: &str = "Chief Quiet Officer";
const COUNTRY: &str = "Ruritania";
/// What must never be served once hidden.
const SECRETS: [&str; 2] = [TITLE, COUNTRY];

fn events(now: i64) -> Vec<InteractionEvent> {
    let attributes = [("job_title", TITLE), ("country", COUNTRY), ("industry", "software")];
    let profile = InteractionEvent {
        event_id: "privacy-profile".into(),
        contact_id: CONTACT.into(),
        occurred_at: Some(hotlead::decode::timestamp(now - 120_000)),
        interaction: Some(Interaction::ProfileUpdate(ProfileUpdate {
            attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        })),
        ..Default::default()
    };
    vec![profile, page("privacy-pricing", CONTACT, now - 60_000, "/pricing/enterprise")]
}

/// The service's configuration, through the environment as `hotlead run`
/// reads it: the read API on 127.0.0.1:`port`, `hidden` attributes.
fn config(stack: &Stack, topics: &Topics, rules: &Path, port: u16, hidden: &str) -> hotlead::config::Config {
    let env = with(
        stack.env(topics, rules),
        &[("HOTLEAD_HTTP__LISTEN", &format!("127.0.0.1:{port}")), ("HOTLEAD_PRIVACY__HIDDEN_ATTRIBUTES", hidden)],
    );
    hotlead::config::Config::from_parts("", env).unwrap()
}

/// Waits for the in-process service's listener on `port`.
async fn wait_up(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(port).await {
        assert!(Instant::now() < deadline, "the read API did not come up on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every `/v1` answer that names contacts or shows the rules, as text.
async fn every_answer(port: u16) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for path in [
        format!("/v1/contacts/{CONTACT}"),
        "/v1/models/engagement/leaderboard?limit=100".to_string(),
        "/v1/alerts/recent?limit=200".to_string(),
        "/v1/models".to_string(),
        "/v1/compare?live=engagement&shadow=engagement".to_string(),
        "/v1/status".to_string(),
        "/v1/rules".to_string(),
    ] {
        let (status, body) = get(port, &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        out.push((path, body.to_string()));
    }
    out
}

/// `hotlead <args>` with `env`; its stdout.
fn cli(args: &[&str], env: &[(String, String)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hotlead")).args(args).envs(env.iter().cloned()).output().unwrap();
    assert!(out.status.success(), "hotlead {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_attributes_score_but_are_never_served() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, rules) = rules_file(RULES);
    let now = hotlead::decode::now_ms();
    let delivered = stack.produce_events(&topics.input, &events(now)).await;

    // Nothing hidden: the profile shows the job title and the country (so
    // the checks below can fail), and the job title scores.
    let port = free_port();
    let running = spawn_pipeline(config(&stack, &topics, &rules, port, ""), &rules);
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(60)).await;
    wait_up(port).await;
    let (status, shown) = get(port, &format!("/v1/contacts/{CONTACT}"), None).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["profile"]["job_title"], TITLE, "{shown}");
    assert_eq!(shown["profile"]["country"], COUNTRY, "{shown}");
    assert_eq!(shown["profile"]["industry"], "software", "{shown}");
    let contact_answer = &every_answer(port).await[0].1;
    assert!(SECRETS.iter().all(|s| contact_answer.contains(s)), "{contact_answer}");
    let score_env = stack.env(&topics, &rules);
    let scored = cli(&["score", CONTACT], &score_env) + &cli(&["score", CONTACT, "--json"], &score_env);
    assert!(SECRETS.iter().all(|s| scored.contains(s)), "hotlead score shows the profile: {scored}");
    running.finish().await;

    // Hidden: the same service, `privacy.hidden_attributes = job_title,
    // country`.
    let port = free_port();
    let running = spawn_pipeline(config(&stack, &topics, &rules, port, "job_title, country"), &rules);
    wait_up(port).await;
    let (status, hidden) = get(port, &format!("/v1/contacts/{CONTACT}"), None).await;
    assert_eq!(status, 200, "{hidden}");
    assert_eq!(hidden["profile"], serde_json::json!({ "industry": "software" }), "only what is not hidden");
    // It still scores: fit 20 from the hidden job title plus the page view
    // (12, hardly decayed), so warm, as when shown.
    for view in [&shown, &hidden] {
        let model = &view["models"][0];
        assert_eq!(model["tier"], "warm", "{view}");
        let score = model["score"].as_f64().unwrap();
        assert!((31.9..32.0).contains(&score), "20 + 12 decayed by a minute or two: {view}");
        let breakdown = model["breakdown"].as_array().unwrap();
        assert!(breakdown.iter().any(|p| p[0] == "decision-maker" && p[1] == 20.0), "{view}");
    }

    // No answer carries a hidden value; the contact is in them all the same.
    let answers = every_answer(port).await;
    for (path, body) in &answers {
        for secret in SECRETS {
            assert!(!body.contains(secret), "{path} serves `{secret}`: {body}");
        }
    }
    let lists_contact = |i: usize| answers[i].1.contains(CONTACT);
    assert!(lists_contact(1) && lists_contact(2), "the leaderboard and the recent alerts name the contact");

    // Nor the command line.
    let hidden_env = with(stack.env(&topics, &rules), &[("HOTLEAD_PRIVACY__HIDDEN_ATTRIBUTES", "job_title,country")]);
    let scored = cli(&["score", CONTACT], &hidden_env) + &cli(&["score", CONTACT, "--json"], &hidden_env);
    let top = cli(&["top", "engagement"], &hidden_env);
    assert!(scored.contains("industry") && scored.contains("decision-maker") && top.contains(CONTACT), "{scored}{top}");
    for secret in SECRETS {
        assert!(!scored.contains(secret) && !top.contains(secret), "`{secret}` printed: {scored}{top}");
    }

    // Nor the alert topic, nor the notifications built from it: the warm
    // alert reaches a webhook and a chat hook with the fit rule's id only.
    let alerts = stack.read_all(&topics.alerts, 1, Duration::from_secs(20)).await;
    assert_eq!(alerts.len(), 1, "one warm alert");
    let payload = String::from_utf8_lossy(&alerts[0].payload).to_string();
    assert!(payload.contains("decision-maker"), "the alert explains the score by rule id");
    for secret in SECRETS {
        assert!(!payload.contains(secret), "the alert carries `{secret}`");
    }
    let receiver = Receiver::start(b"whsec-privacy").await;
    let routes = format!(
        "destinations:\n  crm: {{ webhook: {{ url: \"{0}/crm\" }} }}\n  chat: {{ slack: {{ url: \"{0}/chat\" }} }}\nroutes:\n  - name: all\n    to: [crm, chat]\n",
        receiver.base
    );
    let routes_dir = tempfile::tempdir().unwrap();
    let routes_path = routes_dir.path().join("routes.yaml");
    std::fs::write(&routes_path, routes).unwrap();
    let notify = NotifyTopics {
        alerts: topics.alerts.clone(),
        dead_letter: format!("{}.notify-dlq", topics.alerts),
        group: format!("{}-notify", topics.group),
    };
    let client = hotlead::kafka::client_config(&stack.brokers, &[]);
    hotlead::kafka::create_topics(&client, &[(&notify.dead_letter, 1)], 1).await.unwrap();
    let notifier = Notifier::start(notify.env(&stack, &routes_path));
    let alert = ScoreAlert::decode(alerts[0].payload.as_slice()).unwrap();
    let keys = std::collections::BTreeSet::from([alert.alert_id.clone()]);
    for path in ["crm", "chat"] {
        receiver.wait_for(path, &keys, Duration::from_secs(60)).await;
        for hit in receiver.successes(path) {
            let body = hit.body.to_string();
            assert!(body.contains(CONTACT) && body.contains("decision-maker"), "{path}: {body}");
            for secret in SECRETS {
                assert!(!body.contains(secret), "{path} was sent `{secret}`: {body}");
            }
        }
    }
    notifier.stop().await;
    running.finish().await;
}
