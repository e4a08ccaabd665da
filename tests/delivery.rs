//! Nothing applied twice, nothing scored from a blank slate by mistake:
//! repeated event ids count once, and a Redis that lost a partition's state
//! stops the pipeline unless a rebuild from the start of the topic is asked
//! for.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use hotlead::proto::interaction_event::Interaction;
use hotlead::proto::{EmailEngagement, InteractionEvent, PageView};
use prost::Message as _;
use support::{close, last_offsets, rules_file, spawn_pipeline, Stack, Topics};

const RULES: &str = "models: [{name: m, half_life: 7d, tiers: [{name: warm, enter: 30, exit: 20}], rules: [{id: p, when: {kind: page_view}, points: 10}, {id: e, when: {kind: email_engagement}, points: 1}]}]";

fn rules() -> hotlead::rules::RuleSet {
    hotlead::rules::RuleSet::parse(RULES, "rules").unwrap()
}

fn page(id: &str, contact: &str, at: i64) -> InteractionEvent {
    InteractionEvent {
        event_id: id.into(),
        contact_id: contact.into(),
        occurred_at: Some(hotlead::decode::timestamp(at)),
        interaction: Some(Interaction::PageView(PageView { url: "/x".into(), ..Default::default() })),
        ..Default::default()
    }
}

fn scores(stack: &Stack, topics: &Topics, contacts: &[&str]) -> HashMap<String, f64> {
    let mut r = stack.redis();
    contacts
        .iter()
        .filter_map(|c| {
            (0..topics.partitions).find_map(|p| {
                let key = hotlead::store::PartitionKeys::new(&topics.input, p).contact(c);
                let s = support::stored_fields(&mut r, &rules(), &key).remove("m:s")?;
                Some((c.to_string(), s.parse().unwrap()))
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_event_id_counts_once_and_unknown_enums_are_dead_lettered() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, path) = rules_file(RULES);
    let t = hotlead::decode::now_ms() / 1000 * 1000 - 60_000;
    let mut bad_enum = page("b1", "dup", t);
    bad_enum.interaction = Some(Interaction::EmailEngagement(EmailEngagement { action: 42, ..Default::default() }));
    let first = vec![page("e1", "dup", t), page("e1", "dup", t), page("e2", "dup", t), page("e1", "dup", t), bad_enum];
    let d = stack.produce_events(&topics.input, &first).await;
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    running.finish().await;
    // After a restart, the same id again, at yet another offset.
    let d = stack.produce_events(&topics.input, &[page("e1", "dup", t), page("e3", "dup", t)]).await;
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    running.finish().await;

    let s = scores(&stack, &topics, &["dup"]);
    assert!(close(s["dup"], 30.0), "e1, e2 and e3 once each: {}", s["dup"]);
    let dlq = stack.read_all(&topics.dead_letter, 2, Duration::from_secs(10)).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].headers["hotlead.reason"], "unknown_enum_value");
    assert!(dlq[0].headers["hotlead.error"].contains("email_engagement.action holds 42"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_state_stops_the_pipeline_unless_a_rebuild_is_asked_for() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, path) = rules_file(RULES);
    let t = hotlead::decode::now_ms() / 1000 * 1000 - 86_400_000;
    let contacts = ["ann", "ben", "cho", "dee", "eve"];
    let events: Vec<InteractionEvent> =
        (0..200).map(|i| page(&format!("e{i}"), contacts[i % 5], t + i as i64 * 60_000)).collect();
    let d = stack.produce_events(&topics.input, &events).await;
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    running.finish().await;
    let before = scores(&stack, &topics, &contacts);
    assert_eq!(before.len(), 5);

    // Redis loses everything; Kafka still has the group's committed offsets.
    let _: () = redis::cmd("FLUSHALL").query(&mut stack.redis()).unwrap();
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    let err = tokio::time::timeout(Duration::from_secs(60), running.wait()).await.expect("the pipeline stops");
    let msg = err.expect_err("scoring from zero is refused").to_string();
    assert!(msg.contains("gone from Redis") && msg.contains("--rebuild"), "{msg}");
    assert!(scores(&stack, &topics, &contacts).is_empty(), "nothing was scored from zero");

    // With a rebuild, the topic is scored again from its start.
    let mut config = stack.config(&topics, &path);
    config.pipeline.rebuild_lost_state = true;
    let running = spawn_pipeline(config, &path);
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    running.finish().await;
    let after = scores(&stack, &topics, &contacts);
    for c in contacts {
        assert!(close(before[c], after[c]), "{c}: {} before, {} after the rebuild", before[c], after[c]);
    }
}

/// A redis-server whose data can be saved now and restored later: a Redis
/// that loses its last writes.
struct SnapshotRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl SnapshotRedis {
    fn start() -> SnapshotRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let child = Self::spawn(port, dir.path());
        SnapshotRedis { port, dir, child }
    }

    fn spawn(port: u16, dir: &std::path::Path) -> std::process::Child {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Writes the data as it is now to dump.rdb.
    fn snapshot(&self) {
        let mut c = redis::Client::open(self.url()).unwrap().get_connection().unwrap();
        let _: () = redis::cmd("SAVE").query(&mut c).unwrap();
    }

    /// Dies without saving and comes back with the last snapshot.
    fn crash_to_snapshot(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(self.port, self.dir.path());
    }
}

impl Drop for SnapshotRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_last_writes_is_healed_by_replay() {
    use std::collections::BTreeSet;

    let stack = Stack::start();
    let topics = stack.topics(3).await;
    let rules_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/models.yaml");
    let rules = hotlead::rules::RuleSet::load(&rules_path).unwrap();
    let mut redis_server = SnapshotRedis::start();
    let mut env = stack.env(&topics, &rules_path);
    env.retain(|(k, _)| k != "HOTLEAD_REDIS__URL");
    env.push(("HOTLEAD_REDIS__URL".into(), redis_server.url()));
    let config = || hotlead::config::Config::from_parts("", env.clone()).unwrap();
    let base = hotlead::decode::now_ms() - 86_400_000;
    let mut sim = hotlead::simulate::Simulator::new(&hotlead::simulate::SimConfig {
        contacts: 150,
        seed: 3,
        ..Default::default()
    });
    let events: Vec<InteractionEvent> = (0..1600).map(|i| sim.next_event(base + i * 20_000)).collect();
    let watermarks_of = |url: &str| -> HashMap<i32, i64> {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        (0..topics.partitions)
            .filter_map(|p| {
                let key = hotlead::store::PartitionKeys::new(&topics.input, p).watermark();
                redis::cmd("GET").arg(key).query::<Option<i64>>(&mut c).unwrap().map(|w| (p, w))
            })
            .collect()
    };
    let url = redis_server.url();
    let wait = |want: HashMap<i32, i64>| {
        let url = url.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let w = watermarks_of(&url);
                if want.iter().all(|(p, o)| w.get(p).is_some_and(|x| x >= o)) {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "not applied: {w:?} want {want:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    // The first half, then a snapshot; the second half is scored, alerted and
    // committed to Kafka, and then Redis loses it.
    let first = stack.produce_events(&topics.input, &events[..800]).await;
    let running = spawn_pipeline(config(), &rules_path);
    wait(last_offsets(&first)).await;
    redis_server.snapshot();
    let second = stack.produce_events(&topics.input, &events[800..]).await;
    wait(last_offsets(&second)).await;
    running.finish().await;
    redis_server.crash_to_snapshot();
    let restored = watermarks_of(&redis_server.url());
    assert!(
        last_offsets(&second).iter().any(|(p, o)| restored.get(p).is_none_or(|w| w < o)),
        "Redis is behind Kafka after the crash"
    );

    // hotlead resumes from Redis's watermarks and replays what was lost.
    let running = spawn_pipeline(config(), &rules_path);
    wait(last_offsets(&second)).await;
    running.finish().await;

    let delivered: Vec<(i32, i64)> = first.iter().chain(&second).copied().collect();
    let oracle = support::oracle(&rules, &topics, support::landed(&events, &delivered));
    let mut c = redis::Client::open(redis_server.url()).unwrap().get_connection().unwrap();
    let want_alerts = oracle.alerts;
    let mut checked = 0;
    for (p, contact, fields) in oracle.contacts {
        let key = hotlead::store::PartitionKeys::new(&topics.input, p).contact(&contact);
        let stored = support::stored_fields(&mut c, &rules, &key);
        for (f, want) in fields {
            assert!(
                support::field_matches(&f, stored.get(&f), &want),
                "{contact} {f} after the replay: {:?} vs {want}",
                stored.get(&f)
            );
        }
        checked += 1;
    }
    assert!(checked > 100);
    let got: BTreeSet<String> = stack
        .read_all(&topics.alerts, usize::MAX, Duration::from_secs(20))
        .await
        .iter()
        .map(|r| hotlead::proto::ScoreAlert::decode(r.payload.as_slice()).unwrap().alert_id)
        .collect();
    assert_eq!(got, want_alerts, "alerts raised twice carry the same ids; none is missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn braces_in_a_contact_id_do_not_move_its_hash_slot() {
    let stack = Stack::start();
    let topics = stack.topics(1).await;
    let (_dir, path) = rules_file(RULES);
    let t = hotlead::decode::now_ms() / 1000 * 1000 - 60_000;
    let evil = "{interactions:9}x}{";
    let d = stack.produce_events(&topics.input, &[page("b1", evil, t), page("b2", "plain", t)]).await;
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    running.finish().await;
    let keys = hotlead::store::PartitionKeys::new(&topics.input, 0);
    let mut r = stack.redis();
    // Redis Cluster hashes the first {...} of a key: the partition's tag.
    let evil_key = keys.contact(evil);
    assert!(evil_key.starts_with(&format!("hl:{{{}:0}}", topics.input)));
    let tag = |k: &str| k[k.find('{').unwrap() + 1..k.find('}').unwrap()].to_string();
    assert_eq!(tag(&evil_key), tag(&keys.watermark()), "the first {{...}} is the partition's tag");
    let s = support::stored_fields(&mut r, &rules(), &evil_key).remove("m:s");
    assert_eq!(s.as_deref(), Some("10.0"), "scored under the partition's key");
}
