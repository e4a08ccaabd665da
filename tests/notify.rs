//! `hotlead notify` end to end: alerts on a real broker, delivered to a real
//! HTTP receiver and a real SMTP server that the tests start on 127.0.0.1.
//! Deliveries are counted as a receiver sees them: every request that got
//! a 2xx, repeats included.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hotlead::proto::score_alert::Direction;
use hotlead::proto::ScoreAlert;
use prost::Message as _;
use support::notify::{alert, spawn_binary, Answer, Notifier, NotifyTopics, Receiver, SmtpSink};
use support::Stack;

const SECRET: &[u8] = b"whsec-7f3a";

/// Writes `files` (name, text) into a new temp dir; returns it and the path
/// of the first.
fn files(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let first = dir.path().join(files[0].0);
    (dir, first)
}

/// A broker, new topics and a webhook receiver for one test.
struct Setup {
    stack: Stack,
    topics: NotifyTopics,
    receiver: Receiver,
}

impl Setup {
    async fn start(partitions: i32) -> Setup {
        let stack = Stack::start();
        let topics = NotifyTopics::create(&stack, partitions).await;
        Setup { topics, receiver: Receiver::start(SECRET).await, stack }
    }

    /// A routes file from `yaml`, with `BASE` standing for `receiver`'s URL.
    fn routes_of(receiver: &Receiver, yaml: &str) -> (tempfile::TempDir, PathBuf) {
        files(&[("routes.yaml", &yaml.replace("BASE", &receiver.base))])
    }
}

fn ids(alerts: &[&ScoreAlert]) -> BTreeSet<String> {
    alerts.iter().map(|a| a.alert_id.clone()).collect()
}

/// How many 2xx answers each idempotency key got on `path`.
fn accepted_counts(r: &Receiver, path: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for h in r.successes(path) {
        *m.entry(h.key).or_insert(0) += 1;
    }
    m
}

fn once_each(keys: &BTreeSet<String>) -> BTreeMap<String, usize> {
    keys.iter().map(|k| (k.clone(), 1)).collect()
}

const ROUTES: &str = r#"
owners_file: owners.yaml
destinations:
  crm:
    webhook: { url: "BASE/crm", secret_file: crm.secret, timeout: 5s }
  chat:
    slack: { url: "BASE/chat" }
  alice:
    webhook: { url: "BASE/alice" }
  team:
    webhook: { url: "BASE/team" }
  archive:
    webhook: { url: "BASE/archive" }
routes:
  - name: hot
    when: { direction: heated, tier: hot }
    to: [crm, owner]
  - name: everything-live
    to: chat
  - name: replays
    when: { alert: historical }
    to: archive
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_reaches_every_routed_destination_once_signed_and_explained() {
    let Setup { stack, topics, receiver } = Setup::start(3).await;
    let routes = ROUTES.replace("BASE", &receiver.base);
    let (dir, path) = files(&[
        ("routes.yaml", &routes),
        ("owners.yaml", "default: team\nowners: { alice: alice }\naccounts: { acct-a: alice }\n"),
        ("crm.secret", "whsec-7f3a\n"),
    ]);
    let notifier = Notifier::start(topics.env(&stack, &path));

    let alerts: Vec<ScoreAlert> = (0..40)
        .map(|n| {
            let tier = if n % 2 == 0 { "hot" } else { "warm" };
            let direction = if n % 5 == 4 { Direction::Cooled } else { Direction::Heated };
            let account = if n % 3 == 0 { "acct-a" } else { "acct-b" };
            alert(n, tier, direction, account, n % 7 == 6)
        })
        .collect();
    topics.produce(&stack, &alerts[..20]).await;
    stack.produce(&topics.alerts, &[(b"junk".to_vec(), b"\xff\xfe not a protobuf".to_vec())]).await;
    topics.produce(&stack, &alerts[20..]).await;

    let hot: Vec<&ScoreAlert> =
        alerts.iter().filter(|a| !a.historical && a.direction == Direction::Heated as i32 && a.tier == "hot").collect();
    let want: BTreeMap<&str, BTreeSet<String>> = [
        ("crm", ids(&hot)),
        ("alice", ids(&hot.iter().copied().filter(|a| a.account_id == "acct-a").collect::<Vec<_>>())),
        ("team", ids(&hot.iter().copied().filter(|a| a.account_id != "acct-a").collect::<Vec<_>>())),
        ("chat", ids(&alerts.iter().filter(|a| !a.historical).collect::<Vec<_>>())),
        ("archive", ids(&alerts.iter().filter(|a| a.historical).collect::<Vec<_>>())),
    ]
    .into();
    assert!(want.values().all(|k| !k.is_empty()), "every destination has alerts to get: {want:?}");
    for (path, keys) in &want {
        receiver.wait_for(path, keys, Duration::from_secs(60)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (path, keys) in &want {
        assert_eq!(accepted_counts(&receiver, path), once_each(keys), "{path}: each routed alert once, no other");
    }

    // The webhook: signed, with the alert, its explanation and links.
    for h in receiver.hits("crm") {
        assert_eq!(h.signed, Some(true), "the HMAC verifies with the shared secret");
        assert_eq!(h.body["alert"]["alert_id"], h.key, "Idempotency-Key is the alert id");
        let contact = h.body["alert"]["contact_id"].as_str().unwrap();
        assert_eq!(h.body["links"]["board"], format!("http://board.test:9464/board#lead={contact}"));
        assert_eq!(h.body["links"]["contact"], format!("http://board.test:9464/v1/contacts/{contact}"));
        assert!(h.body["explanation"]["summary"].as_str().unwrap().contains("is now hot in engagement"));
        assert_eq!(h.body["explanation"]["contributions"][0]["rule_id"], "webinar-attended");
        assert_eq!(h.body["routes"], serde_json::json!(["hot"]));
    }
    assert!(receiver.hits("team").iter().all(|h| h.signed.is_none()), "unsigned without a secret");
    // The chat message: Block Kit within Slack's limits.
    for h in receiver.hits("chat") {
        assert_eq!(hotlead::notify::slack::check_limits(&h.body), Vec::<String>::new());
        assert!(h.body["blocks"][0]["text"]["text"].as_str().unwrap().contains("c-00"), "{}", h.body);
    }
    // What is not an alert is dead-lettered with its reason.
    let dlq = stack.read_all(&topics.dead_letter, 2, Duration::from_secs(10)).await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].headers["hotlead.reason"], "undecodable");
    assert_eq!(dlq[0].payload, b"\xff\xfe not a protobuf");

    // A broken routes file is refused; the routes in force keep delivering.
    std::fs::write(&path, routes.replace("to: [crm, owner]", "to: [crm, nowhere]")).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let later = alert(100, "hot", Direction::Heated, "acct-b", false);
    topics.produce(&stack, std::slice::from_ref(&later)).await;
    let one: BTreeSet<String> = [later.alert_id.clone()].into();
    for path in ["crm", "team", "chat"] {
        receiver.wait_for(path, &one, Duration::from_secs(30)).await;
    }
    // A valid change is followed: hot leads no longer go to the CRM.
    std::fs::write(&path, routes.replace("to: [crm, owner]", "to: [owner]")).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let last = alert(101, "hot", Direction::Heated, "acct-b", false);
    topics.produce(&stack, std::slice::from_ref(&last)).await;
    receiver.wait_for("team", &[last.alert_id.clone()].into(), Duration::from_secs(30)).await;
    receiver.wait_for("chat", &[last.alert_id.clone()].into(), Duration::from_secs(30)).await;
    assert!(!receiver.accepted_keys("crm").contains(&last.alert_id));
    notifier.stop().await;

    // Offsets were stored: after a restart, only a new alert is sent (with
    // no memory of deliveries in Redis, so only the offsets can tell).
    let all = ["crm", "alice", "team", "chat", "archive"];
    let before: usize = all.iter().map(|p| receiver.hits(p).len()).sum();
    let mut env = topics.env(&stack, &path);
    env.push(("HOTLEAD_NOTIFY__DEDUP_WINDOW".into(), "0s".into()));
    let notifier = Notifier::start(env);
    let new = alert(102, "hot", Direction::Heated, "acct-b", false);
    topics.produce(&stack, std::slice::from_ref(&new)).await;
    receiver.wait_for("team", &[new.alert_id.clone()].into(), Duration::from_secs(60)).await;
    receiver.wait_for("chat", &[new.alert_id.clone()].into(), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: usize = all.iter().map(|p| receiver.hits(p).len()).sum();
    assert_eq!(after, before + 2, "a restart after a clean stop sends nothing it had sent");
    notifier.stop().await;
    drop(dir);
}

const FLAKY_ROUTES: &str = r#"
destinations:
  flaky:
    webhook: { url: "BASE/flaky", timeout: 2s }
    retry: { attempts: 1000, initial_backoff: 100ms, max_backoff: 1s }
routes:
  - { name: all, when: { alert: any }, to: flaky }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_for_a_while_gets_every_alert_once_when_it_recovers() {
    const FAILING_FOR: Duration = Duration::from_secs(20);
    let Setup { stack, topics, receiver } = Setup::start(2).await;
    let (_dir, path) = Setup::routes_of(&receiver, FLAKY_ROUTES);
    let recovers_at = Instant::now() + FAILING_FOR;
    receiver.answer("flaky", Answer::FailUntil(recovers_at));
    let notifier = Notifier::start(topics.env(&stack, &path));
    let alerts: Vec<ScoreAlert> = (0..40).map(|n| alert(n, "hot", Direction::Heated, "acct-1", n % 2 == 0)).collect();
    topics.produce(&stack, &alerts).await;
    let keys = ids(&alerts.iter().collect::<Vec<_>>());
    receiver.wait_for("flaky", &keys, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert_eq!(accepted_counts(&receiver, "flaky"), once_each(&keys), "each idempotency key once among the successes");
    let hits = receiver.hits("flaky");
    let failed: BTreeSet<&str> = hits.iter().filter(|h| h.status == 500).map(|h| h.key.as_str()).collect();
    assert_eq!(failed.len(), keys.len(), "every alert met the outage and was retried");
    assert!(
        receiver.successes("flaky").iter().all(|h| h.at >= recovers_at),
        "nothing counted as sent during the outage"
    );
    assert!(stack.read_all(&topics.dead_letter, 1, Duration::from_secs(3)).await.is_empty(), "nothing dead-lettered");
    notifier.stop().await;
}

const DOWN_AND_UP_ROUTES: &str = r#"
destinations:
  down:
    webhook: { url: "BASE/down", timeout: 5s }
    retry: { attempts: 3, initial_backoff: 200ms, max_backoff: 500ms }
  up:
    slack: { url: "BASE/up" }
routes:
  - { name: all, to: [down, up] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_destination_dead_letters_its_alerts_while_the_other_gets_all_on_time() {
    let Setup { stack, topics, receiver } = Setup::start(2).await;
    let (_dir, path) = Setup::routes_of(&receiver, DOWN_AND_UP_ROUTES);
    // Slow and failing: each try takes a second before its 500.
    receiver.answer("down", Answer::Fail(Duration::from_secs(1)));
    let notifier = Notifier::start(topics.env(&stack, &path));
    let first = alert(999, "hot", Direction::Heated, "acct-1", false);
    topics.produce(&stack, std::slice::from_ref(&first)).await;
    receiver.wait_for("up", &[first.alert_id.clone()].into(), Duration::from_secs(60)).await;

    let alerts: Vec<ScoreAlert> = (0..30).map(|n| alert(n, "hot", Direction::Heated, "acct-1", false)).collect();
    let produced = Instant::now();
    topics.produce(&stack, &alerts).await;
    let mut keys = ids(&alerts.iter().collect::<Vec<_>>());
    receiver.wait_for("up", &keys, Duration::from_secs(30)).await;
    let slowest = receiver.successes("up").iter().map(|h| h.at.saturating_duration_since(produced)).max().unwrap();
    eprintln!("the healthy destination took all {} alerts within {slowest:?} of their production", keys.len());
    assert!(slowest < Duration::from_secs(3), "the healthy destination waited {slowest:?} for the failing one");

    keys.insert(first.alert_id.clone());
    // Dead letters trickle in as retry budgets run out: read until all are there.
    let deadline = Instant::now() + Duration::from_secs(60);
    let dlq = loop {
        let dlq = stack.read_all(&topics.dead_letter, keys.len() + 1, Duration::from_secs(10)).await;
        if dlq.len() >= keys.len() || Instant::now() > deadline {
            break dlq;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let mut dead = BTreeMap::new();
    for r in &dlq {
        assert_eq!(r.headers["hotlead.destination"], "down");
        assert_eq!(r.headers["hotlead.reason"], "http_status");
        assert_eq!(r.headers["hotlead.attempts"], "3");
        assert!(r.headers["hotlead.error"].contains("HTTP 500"), "{:?}", r.headers);
        let a = ScoreAlert::decode(r.payload.as_slice()).unwrap();
        assert_eq!(r.headers["hotlead.alert_id"], a.alert_id);
        *dead.entry(a.alert_id).or_insert(0) += 1;
    }
    assert_eq!(dead, once_each(&keys), "each alert dead-lettered once for the failing destination");
    assert_eq!(accepted_counts(&receiver, "up"), once_each(&keys));
    assert_eq!(receiver.hits("down").len(), 3 * keys.len(), "three tries each");
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_killed_mid_stream_loses_nothing() {
    let Setup { stack, topics, receiver } = Setup::start(2).await;
    let (dir, path) = Setup::routes_of(
        &receiver,
        "destinations:\n  crm:\n    webhook: { url: \"BASE/crm\" }\n    concurrency: 1\nroutes:\n  - { name: all, to: crm }\n",
    );
    receiver.answer("crm", Answer::Slow(Duration::from_millis(30)));
    let alerts: Vec<ScoreAlert> = (0..300).map(|n| alert(n, "hot", Direction::Heated, "acct-1", false)).collect();
    topics.produce(&stack, &alerts).await;
    let keys = ids(&alerts.iter().collect::<Vec<_>>());
    let mut env = topics.env(&stack, &path);
    // Few alerts in flight: reading pauses and resumes all along.
    env.push(("HOTLEAD_NOTIFY__MAX_OPEN_ALERTS".into(), "20".into()));

    let mut first = spawn_binary(&[], &env, &dir.path().join("notify-1.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.accepted_keys("crm").len() < 100 {
        assert!(
            Instant::now() < deadline,
            "no progress: {}",
            std::fs::read_to_string(dir.path().join("notify-1.log")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.0.kill().unwrap(); // SIGKILL: no drain, no commit
    first.0.wait().unwrap();
    let at_kill = receiver.accepted_keys("crm").len();
    assert!(at_kill < keys.len(), "killed mid-stream ({at_kill} of {})", keys.len());

    let metrics = format!("127.0.0.1:{}", support::free_port());
    env.push(("HOTLEAD_NOTIFY__HTTP_LISTEN".into(), metrics.clone()));
    let _second = spawn_binary(&[], &env, &dir.path().join("notify-2.log"));
    receiver.wait_for("crm", &keys, Duration::from_secs(90)).await;
    let text = reqwest::get(format!("http://{metrics}/metrics")).await.unwrap().text().await.unwrap();
    for series in [
        r#"hotlead_notify_deliveries_total{destination="crm",kind="webhook",result="delivered"}"#,
        r#"hotlead_notify_delivery_seconds_bucket{destination="crm",le="+Inf"}"#,
        r#"hotlead_notify_alerts_total{outcome="routed"}"#,
    ] {
        assert!(text.contains(series), "/metrics lacks {series}:\n{text}");
    }
    let counts = accepted_counts(&receiver, "crm");
    assert_eq!(counts.keys().cloned().collect::<BTreeSet<_>>(), keys, "every alert delivered");
    let repeats: usize = counts.values().map(|c| c - 1).sum();
    let skipped = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"hotlead_notify_deliveries_total{destination="crm",kind="webhook",result="already_sent"} "#,
            )
        })
        .unwrap_or("0");
    eprintln!(
        "kill -9 after {at_kill} of {} alerts: {skipped} read again and skipped as sent, {repeats} delivered twice",
        keys.len()
    );
    let log = std::fs::read_to_string(dir.path().join("notify-2.log")).unwrap();
    assert!(log.contains("Paused reading alerts") && log.contains("Resumed reading alerts"), "{log}");
    // The restart reads again from the stored offsets; Redis remembers what
    // the receiver took, so only a request in flight at the kill can repeat.
    assert!(repeats <= 2, "{repeats} alerts delivered twice");
}

const SMTP_ROUTES: &str = r#"
destinations:
  ae:
    email: { smtp: "smtp://127.0.0.1:PORT", from: "hotlead <hotlead@example.com>", to: [ae@example.com, sdr@example.com] }
  manager:
    email: { smtp: "smtp://127.0.0.1:PORT", from: hotlead@example.com, to: [manager@example.com], digest: 2s }
routes:
  - { name: hot-to-ae, when: { tier: hot }, to: ae }
  - { name: all-to-manager, to: manager }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_arrive_one_per_alert_and_as_a_digest_over_smtp() {
    let stack = Stack::start();
    let topics = NotifyTopics::create(&stack, 1).await;
    let smtp = SmtpSink::start();
    let (_dir, path) = files(&[("routes.yaml", &SMTP_ROUTES.replace("PORT", &smtp.port.to_string()))]);
    let notifier = Notifier::start(topics.env(&stack, &path));
    let alerts: Vec<ScoreAlert> =
        (0..6).map(|n| alert(n, if n % 2 == 0 { "hot" } else { "warm" }, Direction::Heated, "acct-1", false)).collect();
    topics.produce(&stack, &alerts).await;

    let contacts: Vec<String> = alerts.iter().map(|a| a.contact_id.clone()).collect();
    let digested = |ms: &[serde_json::Value]| -> Vec<String> {
        ms.iter()
            .filter(|m| m["to"] == "manager@example.com")
            .flat_map(|m| {
                let text = m["text"].as_str().unwrap_or_default().to_string();
                contacts.iter().filter(move |c| text.contains(&format!("- {c} (acct-1)"))).cloned().collect::<Vec<_>>()
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ms = smtp.messages();
        let singles = ms.iter().filter(|m| m["to"] != "manager@example.com").count();
        if singles >= 3 && digested(&ms).len() >= 6 {
            break;
        }
        assert!(Instant::now() < deadline, "not all mail arrived: {ms:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ms = smtp.messages();

    let singles: Vec<&serde_json::Value> = ms.iter().filter(|m| m["to"] != "manager@example.com").collect();
    assert_eq!(singles.len(), 3, "one message per hot alert: {singles:#?}");
    let mut subjects: Vec<&str> = singles.iter().map(|m| m["subject"].as_str().unwrap()).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "hotlead: c-0000 is hot in engagement",
            "hotlead: c-0002 is hot in engagement",
            "hotlead: c-0004 is hot in engagement"
        ]
    );
    for m in &singles {
        assert_eq!(m["rcpt_tos"], serde_json::json!(["ae@example.com", "sdr@example.com"]));
        assert_eq!(m["from"], "hotlead <hotlead@example.com>");
        assert_eq!(m["content_type"], "multipart/alternative");
        let contact = m["subject"].as_str().unwrap().split(' ').nth(1).unwrap();
        let text = m["text"].as_str().unwrap();
        assert!(
            text.contains(&format!("{contact} (acct-1) is now hot in engagement: warm → hot, score 61.5 ≥ 60")),
            "{text}"
        );
        assert!(
            text.contains("webinar-attended 30.0")
                && text.contains(&format!("Board: http://board.test:9464/board#lead={contact}")),
            "{text}"
        );
        let html = m["html"].as_str().unwrap();
        assert!(html.contains(&format!("<a href=\"http://board.test:9464/board#lead={contact}\">")), "{html}");
        assert!(m["message_id"].as_str().unwrap().ends_with("@hotlead>"));
    }
    let mut listed = digested(&ms);
    listed.sort();
    assert_eq!(listed, contacts, "each alert in exactly one digest");
    let digests: Vec<&serde_json::Value> = ms.iter().filter(|m| m["to"] == "manager@example.com").collect();
    assert!(digests
        .iter()
        .all(|m| m["subject"].as_str().unwrap().starts_with("hotlead: ")
            && m["html"].as_str().unwrap().contains("<table>")));
    notifier.stop().await;
}

#[test]
fn notify_check_accepts_the_example_and_names_the_line_and_field_of_a_mistake() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hotlead")).args(["notify", "check"]).arg(file).output().unwrap()
    };
    let ok = run(&root.join("examples/notify/routes.yaml"));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success() && stdout.contains("route `sales-ready` → crm, sales-channel, owner"), "{stdout}");
    assert!(stdout.trim_end().ends_with(": ok"), "{stdout}");

    let example = std::fs::read_to_string(root.join("examples/notify/routes.yaml")).unwrap();
    let (_dir, bad) = files(&[
        ("routes.yaml", &example.replace("to: sales-channel\n", "to: sales-chanel\n")),
        ("owners.yaml", &std::fs::read_to_string(root.join("examples/notify/owners.yaml")).unwrap()),
        ("demo-webhook.secret", "s3cret\n"),
    ]);
    let out = run(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = example.lines().position(|l| l.contains("to: sales-channel")).unwrap() + 1;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("routes[1].to[0]")
            && stderr.contains("sales-chanel")
            && stderr.contains(&format!("(line {line})")),
        "{stderr}"
    );
}

#[test]
fn routes_files_in_the_docs_pass_the_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for doc in ["docs/notify.md", "README.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let blocks: Vec<&str> = text.split("```yaml\n").skip(1).map(|b| b.split("```").next().unwrap()).collect();
        let owners = blocks.iter().find(|b| b.contains("default:")).map(|b| b.to_string()).unwrap_or("{}".into());
        let routes: Vec<&&str> = blocks.iter().filter(|b| b.contains("routes:")).collect();
        assert!(!routes.is_empty(), "{doc} shows a routes file");
        for yaml in routes {
            let owners = owners.clone();
            // Every file a routes file names reads as an owners file, but a `.url` one.
            let table = hotlead::notify::routes::RouteTable::parse_with(yaml, &root.join(doc), move |p| {
                Ok(if p.extension().is_some_and(|x| x == "url") {
                    "https://chat.example.com/h".into()
                } else {
                    owners.clone()
                })
            });
            assert!(table.is_ok(), "{doc}: {}", table.unwrap_err());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_prints_what_it_would_send_and_sends_and_commits_nothing() {
    let Setup { stack, topics, receiver } = Setup::start(1).await;
    let (dir, path) = Setup::routes_of(&receiver, DOWN_AND_UP_ROUTES);
    let a = alert(7, "hot", Direction::Heated, "acct-1", false);
    topics.produce(&stack, std::slice::from_ref(&a)).await;
    let env = topics.env(&stack, &path);
    let log = dir.path().join("dry-run.log");
    let mut dry = spawn_binary(&["--dry-run"], &env, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    let printed = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("dry-run: up (slack)") && text.contains("dry-run: down (webhook)") {
            break text;
        }
        assert!(Instant::now() < deadline, "no dry-run output: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let webhook = printed.lines().find_map(|l| l.strip_prefix("dry-run: down (webhook): ")).unwrap();
    let body: serde_json::Value = serde_json::from_str(webhook).unwrap();
    assert_eq!(body["alert"]["alert_id"], a.alert_id.as_str());
    dry.0.kill().unwrap();
    dry.0.wait().unwrap();
    assert!(receiver.hits("up").is_empty() && receiver.hits("down").is_empty(), "a dry run sends nothing");

    // It committed nothing either: a real run delivers the alert.
    let notifier = Notifier::start(env);
    receiver.wait_for("up", &[a.alert_id.clone()].into(), Duration::from_secs(60)).await;
    notifier.stop().await;
}
