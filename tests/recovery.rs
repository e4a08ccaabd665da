//! Recovery on the real broker and Redis: Redis rolled back while hotlead
//! runs, a commit whose reply is lost, and a broker outage.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotlead::proto::interaction_event::Interaction;
use hotlead::proto::{InteractionEvent, PageView};
use hotlead::rules::RuleSet;
use prost::Message as _;
use support::{last_offsets, rules_file, spawn_pipeline, spawn_pipeline_with_clock, Stack, Topics};

const RULES: &str = r#"
models:
  - name: engagement
    half_life: 3d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 70, exit: 50 }
    rules:
      - { id: pricing, when: { kind: page_view, url: { prefix: /pricing } }, points: 12 }
      - { id: blog, when: { kind: page_view }, points: 4 }
"#;

fn events(from: usize, n: usize, start: i64) -> Vec<InteractionEvent> {
    (from..from + n)
        .map(|i| InteractionEvent {
            event_id: format!("e{i}"),
            contact_id: format!("c{:02}", i % 40),
            occurred_at: Some(hotlead::decode::timestamp(start + i as i64 * 1000)),
            interaction: Some(Interaction::PageView(PageView {
                url: if i % 3 == 0 { "/pricing".into() } else { "/blog".into() },
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect()
}

/// Contacts whose stored fields differ from the oracle's.
fn differing(stack: &Stack, topics: &Topics, rules: &RuleSet, oracle: &support::Oracle) -> Vec<String> {
    let mut r = stack.redis();
    let mut out = Vec::new();
    for (p, contact, fields) in &oracle.contacts {
        let key = hotlead::store::PartitionKeys::new(&topics.input, *p).contact(contact);
        let stored = support::stored_fields(&mut r, rules, &key);
        if fields.iter().any(|(f, want)| !support::field_matches(f, stored.get(f), want)) {
            out.push(contact.clone());
        }
    }
    out
}

/// Waits until every partition's epoch key exists (the partitions are
/// claimed).
async fn claimed(stack: &Stack, topics: &Topics) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut r = stack.redis();
        let all = (0..topics.partitions).all(|p| {
            let key = hotlead::store::PartitionKeys::new(&topics.input, p).epoch();
            redis::cmd("EXISTS").arg(key).query::<bool>(&mut r).unwrap()
        });
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "partitions not claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_rolled_back_before_the_first_commit_stops_loudly_then_rebuilds() {
    let mut stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, path) = rules_file(RULES);
    let rules = RuleSet::parse(RULES, "t").unwrap();
    let start = hotlead::decode::now_ms() - 3_600_000;
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    claimed(&stack, &topics).await;
    let _: () = redis::cmd("SAVE").query(&mut stack.redis()).unwrap();
    let first = events(0, 1200, start);
    let d1 = stack.produce_events(&topics.input, &first).await;
    stack.wait_applied(&topics, &last_offsets(&d1), Duration::from_secs(60)).await;
    // Let the group commit its offsets, then restore the snapshot.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.restart_redis();
    let second = events(1200, 300, start);
    let d2 = stack.produce_events(&topics.input, &second).await;
    let err = tokio::time::timeout(Duration::from_secs(90), running.wait())
        .await
        .expect("the service stops")
        .expect_err("it stops loudly");
    let msg = format!("{err:#}");
    assert!(msg.contains("gone from Redis") && msg.contains("--rebuild"), "{msg}");

    // Asked to rebuild, it heals to the oracle's state.
    let mut config = stack.config(&topics, &path);
    config.pipeline.rebuild_lost_state = true;
    let running = spawn_pipeline(config, &path);
    let delivered: Vec<(i32, i64)> = d1.iter().chain(&d2).copied().collect();
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(90)).await;
    running.finish().await;
    let all: Vec<InteractionEvent> = first.into_iter().chain(second).collect();
    let oracle = support::oracle(&rules, &topics, support::landed(&all, &delivered));
    let wrong = differing(&stack, &topics, &rules, &oracle);
    assert!(wrong.is_empty(), "{} contacts differ from the oracle, e.g. {:?}", wrong.len(), wrong.first());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_rolled_back_after_commits_heals_by_replay_and_reads_recover_at_once() {
    let mut stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, path) = rules_file(RULES);
    let rules = RuleSet::parse(RULES, "t").unwrap();
    let start = hotlead::decode::now_ms() - 3_600_000;
    let port = support::free_port();
    let mut config = stack.config(&topics, &path);
    config.http.listen = format!("127.0.0.1:{port}");
    let running = spawn_pipeline(config, &path);
    let first = events(0, 600, start);
    let d1 = stack.produce_events(&topics.input, &first).await;
    stack.wait_applied(&topics, &last_offsets(&d1), Duration::from_secs(60)).await;
    let _: () = redis::cmd("SAVE").query(&mut stack.redis()).unwrap();
    let second = events(600, 600, start);
    let d2 = stack.produce_events(&topics.input, &second).await;
    stack.wait_applied(&topics, &last_offsets(&d2), Duration::from_secs(60)).await;
    let (status, _) =
        tokio::task::spawn_blocking(move || support::http_get(port, "/v1/contacts/c01", None)).await.unwrap();
    assert_eq!(status, 200);
    stack.restart_redis();
    // The first read after the restart is answered.
    let (status, body) =
        tokio::task::spawn_blocking(move || support::http_get(port, "/v1/contacts/c01", None)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let third = events(1200, 300, start);
    let d3 = stack.produce_events(&topics.input, &third).await;
    let delivered: Vec<(i32, i64)> = d1.iter().chain(&d2).chain(&d3).copied().collect();
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(90)).await;
    let all: Vec<InteractionEvent> = first.into_iter().chain(second).chain(third).collect();
    let oracle = support::oracle(&rules, &topics, support::landed(&all, &delivered));
    // Replayed batches raise their alerts again, with the same ids.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: BTreeSet<String> =
            stack.alerts(&topics.alerts, Duration::from_secs(5)).await.into_iter().map(|a| a.alert_id).collect();
        if got == oracle.alerts {
            break;
        }
        assert!(Instant::now() < deadline, "alerts: {} of {} expected", got.len(), oracle.alerts.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    running.finish().await;
    let wrong = differing(&stack, &topics, &rules, &oracle);
    assert!(wrong.is_empty(), "{} contacts differ from the oracle, e.g. {:?}", wrong.len(), wrong.first());
}

/// A TCP proxy to Redis that, while armed, cuts the connection right after
/// forwarding a `hotlead_commit` call, before its reply comes back: the
/// call runs, the caller never hears.
struct Cutter {
    port: u16,
    cuts: Arc<AtomicUsize>,
    commits: Arc<AtomicUsize>,
}

impl Cutter {
    async fn start(redis_port: u16, every: usize, cuts: usize) -> Cutter {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let left = Arc::new(AtomicUsize::new(cuts));
        let commits = Arc::new(AtomicUsize::new(0));
        let (l, c) = (left.clone(), commits.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let cut = Arc::new(AtomicBool::new(false));
                let (l, c, cut2) = (l.clone(), c.clone(), cut.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        let is_commit = chunk.windows(14).any(|w| w == b"hotlead_commit");
                        let cut_now = is_commit
                            && (c.fetch_add(1, Ordering::Relaxed) + 1) % every == 0
                            && l.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| x.checked_sub(1)).is_ok();
                        if cut_now {
                            cut2.store(true, Ordering::Relaxed);
                        }
                        if sw.write_all(chunk).await.is_err() {
                            break;
                        }
                        if cut_now {
                            // The server runs the call; its reply goes nowhere.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if cut.load(Ordering::Relaxed) || cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Cutter { port, cuts: left, commits }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_whose_reply_is_lost_yields_each_alert_once() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, path) = rules_file(RULES);
    let rules = RuleSet::parse(RULES, "t").unwrap();
    let redis_port: u16 = stack.redis_url.rsplit(':').next().unwrap().parse().unwrap();
    // Every second commit call loses its reply: each such commit is sent
    // again, batches and sweeps alike.
    let cutter = Cutter::start(redis_port, 2, usize::MAX).await;
    let mut config = stack.config(&topics, &path);
    config.redis.url = format!("redis://127.0.0.1:{}", cutter.port);
    config.pipeline.batch_max_events = 25;
    config.pipeline.sweep_interval = Duration::from_millis(200);
    // Ten days on, every tier has cooled: sweeps commit COOLED alerts too.
    let now = hotlead::decode::now_ms() + 10 * 86_400_000;
    let start = hotlead::decode::now_ms() - 3_600_000;
    let all = events(0, 600, start);
    // The events wait for it: it catches up, then sweeps once read to the end.
    let delivered = stack.produce_events(&topics.input, &all).await;
    let running = spawn_pipeline_with_clock(config, &path, Arc::new(move || now));
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(90)).await;
    // The oracle: events in order, then the coolings due by `now`.
    let oracle = support::oracle(&rules, &topics, support::landed(&all, &delivered));
    let mut want: BTreeSet<String> = oracle.alerts.clone();
    let mut by_partition: BTreeMap<i32, Vec<hotlead::engine::Message>> = BTreeMap::new();
    for (e, (p, o)) in all.iter().zip(&delivered) {
        let m = hotlead::engine::Message::decode(*o, None, Some(&e.encode_to_vec()), &Default::default(), now);
        by_partition.entry(*p).or_default().push(m);
    }
    for (p, msgs) in by_partition {
        let source = hotlead::engine::Source { topic: &topics.input, partition: p };
        let fx = hotlead::engine::score_partition(&rules, source, msgs);
        want.extend(hotlead::engine::sweep(&rules, source, fx.contacts, now).alerts.into_iter().map(|a| a.alert_id));
    }
    let records = stack.settled_alerts(&topics.alerts, want.len(), Duration::from_secs(60)).await;
    running.finish().await;
    let calls = cutter.commits.load(Ordering::Relaxed);
    assert!(calls >= 30, "{calls} commit calls, half of them cut");
    assert!(usize::MAX - cutter.cuts.load(Ordering::Relaxed) >= 15, "commits were cut");
    let ids: Vec<String> = records.into_iter().map(|a| a.alert_id).collect();
    let distinct: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(distinct, want, "the alerts are the oracle's");
    assert_eq!(ids.len(), want.len(), "each alert delivered once");
    // Scores and times equal the oracle's (a sweep moves tiers, not scores).
    let mut scores = oracle;
    for (_, _, fields) in &mut scores.contacts {
        fields.retain(|(f, _)| f.ends_with(":s") || f.ends_with(":t"));
    }
    let wrong = differing(&stack, &topics, &rules, &scores);
    assert!(wrong.is_empty(), "{} contacts differ from the oracle, e.g. {:?}", wrong.len(), wrong.first());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_loses_nothing_logs_a_handful_of_lines_and_shutdown_stays_bounded() {
    use std::process::{Command, Stdio};
    let mut stack = Stack::start();
    let topics = stack.topics(2).await;
    let (dir, path) = rules_file(RULES);
    let rules = RuleSet::parse(RULES, "t").unwrap();
    let log = dir.path().join("hotlead.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut hotlead = support::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_hotlead"))
            .arg("run")
            .envs(stack.env(&topics, &path))
            .env("HOTLEAD_PIPELINE__SHUTDOWN_TIMEOUT", "5s")
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = hotlead::decode::now_ms() - 3_600_000;
    let first = events(0, 300, start);
    let d1 = stack.produce_events(&topics.input, &first).await;
    stack.wait_applied(&topics, &last_offsets(&d1), Duration::from_secs(60)).await;
    let lines_before = std::fs::read_to_string(&log).unwrap().lines().count();
    stack.stop_broker();
    tokio::time::sleep(Duration::from_secs(60)).await;
    stack.restart_broker();
    let second = events(300, 300, start);
    let d2 = stack.produce_events(&topics.input, &second).await;
    let delivered: Vec<(i32, i64)> = d1.iter().chain(&d2).copied().collect();
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(120)).await;
    let all: Vec<InteractionEvent> = first.into_iter().chain(second).collect();
    let oracle = support::oracle(&rules, &topics, support::landed(&all, &delivered));
    let ids: Vec<String> = stack
        .settled_alerts(&topics.alerts, oracle.alerts.len(), Duration::from_secs(60))
        .await
        .into_iter()
        .map(|a| a.alert_id)
        .collect();
    let distinct: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(distinct, oracle.alerts, "alerts resume, nothing lost");
    assert_eq!(ids.len(), distinct.len(), "nothing doubled");
    let wrong = differing(&stack, &topics, &rules, &oracle);
    assert!(wrong.is_empty(), "{} contacts differ from the oracle", wrong.len());
    let text = std::fs::read_to_string(&log).unwrap();
    let outage: Vec<&str> = text.lines().skip(lines_before).collect();
    assert!(
        outage.len() <= 12,
        "a handful of lines for a minute's outage, not {}:\n{}",
        outage.len(),
        outage.join("\n")
    );
    assert!(text.contains("The Kafka broker is unreachable") && text.contains("reachable again"), "{text}");

    // SIGTERM with the broker down: out within the shutdown timeout.
    stack.stop_broker();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = hotlead.0.id().to_string();
    let asked = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = asked + Duration::from_secs(15);
    loop {
        if let Some(status) = hotlead.0.try_wait().unwrap() {
            assert!(asked.elapsed() <= Duration::from_secs(10), "exited after {:?}: {status}", asked.elapsed());
            break;
        }
        assert!(Instant::now() < deadline, "still running {:?} after SIGTERM with the broker down", asked.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
