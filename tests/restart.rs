//! Stopping hotlead mid-stream, by `kill -9` and by SIGTERM, and starting it
//! again: every event is applied exactly once, and the distinct alerts on
//! the alert topic are exactly those of an offline run of the same scoring
//! core over the whole input.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use hotlead::proto::ScoreAlert;
use hotlead::rules::RuleSet;
use hotlead::simulate::{SimConfig, Simulator};
use prost::Message as _;
use support::{close, last_offsets, Stack, Topics};

const EVENTS: usize = 6000;

/// Small batches, so a stop lands between commits.
const RUN_ENV: &[(&str, &str)] = &[("HOTLEAD_PIPELINE__BATCH_MAX_EVENTS", "10"), ("RUST_LOG", "info")];

fn applied(stack: &Stack, topics: &Topics) -> i64 {
    stack.watermarks(topics).values().map(|w| w + 1).sum()
}

/// Waits until at least `n` events are applied; returns how many were.
async fn wait_progress(stack: &Stack, topics: &Topics, n: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = applied(stack, topics);
        if a >= n {
            return a;
        }
        assert!(Instant::now() < deadline, "only {a} of {n} events applied in 60s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_counts_once_across_kill_and_restart() {
    let stack = Stack::start();
    let topics = stack.topics(4).await;
    let rules_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rules.yaml");
    let rules = RuleSet::load(&rules_path).unwrap();
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("hotlead.log");

    let base = hotlead::decode::now_ms() - 5 * 86_400_000;
    let mut sim = Simulator::new(&SimConfig { contacts: 300, seed: 7, ..SimConfig::default() });
    let events: Vec<_> = (0..EVENTS).map(|i| sim.next_event(base + i as i64 * 60_000)).collect();
    let delivered = stack.produce_events(&topics.input, &events).await;
    let total = EVENTS as i64;

    // Crash mid-stream.
    let mut first = stack.spawn_hotlead(&topics, &rules_path, &log, &["run"], RUN_ENV);
    let at_kill = wait_progress(&stack, &topics, total / 20).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let after_kill = applied(&stack, &topics);
    assert!(after_kill < total, "the kill must land mid-stream ({after_kill} of {total} applied)");

    // Restart, then stop gracefully mid-stream.
    let mut second = stack.spawn_hotlead(&topics, &rules_path, &log, &["run"], RUN_ENV);
    wait_progress(&stack, &topics, after_kill + (total - after_kill) / 4).await;
    let pid = second.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = second.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    let after_term = applied(&stack, &topics);

    // Restart and finish.
    let mut third = stack.spawn_hotlead(&topics, &rules_path, &log, &["run"], RUN_ENV);
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(120)).await;
    let pid = third.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(third.wait().unwrap().success());
    eprintln!("applied at kill -9: {at_kill}..{after_kill}, at SIGTERM: {after_term}, of {total}");

    // The oracle: the same scoring core over each whole partition at once.
    let oracle = support::oracle(&rules, &topics, support::landed(&events, &delivered));
    let mut want_scores: HashMap<String, (i32, String)> = HashMap::new();
    for (p, contact, fields) in &oracle.contacts {
        // Contacts seen only in profile updates have no score in this model.
        if let Some((_, s)) = fields.iter().find(|(f, _)| f == "engagement:s") {
            want_scores.insert(contact.clone(), (*p, s.clone()));
        }
    }
    let want_alerts = oracle.alerts;
    assert!(want_scores.len() > 100, "the stream should score many contacts ({})", want_scores.len());
    assert!(want_alerts.len() > 20, "the stream should raise alerts ({})", want_alerts.len());

    let mut r = stack.redis();
    let mut mismatched = Vec::new();
    for (contact, (p, want)) in &want_scores {
        let key = hotlead::store::PartitionKeys::new(&topics.input, *p).contact(contact);
        let got = support::stored_fields(&mut r, &rules, &key).remove("engagement:s");
        let (got, want): (f64, f64) = (got.unwrap_or_default().parse().unwrap_or(f64::NAN), want.parse().unwrap());
        if !close(got, want) {
            mismatched.push((contact.clone(), got, want));
        }
    }
    assert!(mismatched.is_empty(), "scores differ from the oracle: {mismatched:?}");

    let records = stack.read_all(&topics.alerts, usize::MAX, Duration::from_secs(5)).await;
    let got_alerts: BTreeSet<String> =
        records.iter().map(|r| ScoreAlert::decode(r.payload.as_slice()).unwrap().alert_id).collect();
    let lost: Vec<_> = want_alerts.difference(&got_alerts).collect();
    let unexpected: Vec<_> = got_alerts.difference(&want_alerts).collect();
    eprintln!(
        "alerts: {} expected, {} delivered ({} repeats of the same id), lost {}, unexpected {}",
        want_alerts.len(),
        records.len(),
        records.len() - got_alerts.len(),
        lost.len(),
        unexpected.len()
    );
    assert!(lost.is_empty() && unexpected.is_empty(), "lost {lost:?}, unexpected {unexpected:?}");
}
