//! Cooling alerts: a contact left alone cools, and a single COOLED alert
//! appears, dated to the exact moment decay crossed the exit. Time is
//! injected into the sweep, not slept.

mod support;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotlead::proto::{score_alert, ScoreAlert};
use prost::Message as _;
use support::{last_offsets, page, rules_file, spawn_pipeline_with_clock, Stack, Topics};

const DAY: i64 = 86_400_000;

const RULES: &str = r#"
models:
  - name: engagement
    half_life: 1d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - { id: page, when: { kind: page_view, url: /page }, points: 40 }
      - { id: big, when: { kind: page_view, url: /big }, points: 70 }
"#;

async fn alerts(stack: &Stack, topics: &Topics) -> Vec<ScoreAlert> {
    let r = stack.read_all(&topics.alerts, usize::MAX, Duration::from_millis(1500)).await;
    r.iter().map(|r| ScoreAlert::decode(r.payload.as_slice()).unwrap()).collect()
}

async fn wait_for_alerts(stack: &Stack, topics: &Topics, n: usize) -> Vec<ScoreAlert> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = alerts(stack, topics).await;
        if a.len() >= n || Instant::now() > deadline {
            return a;
        }
    }
}

fn cooled(a: &[ScoreAlert]) -> Vec<&ScoreAlert> {
    a.iter().filter(|a| a.direction == score_alert::Direction::Cooled as i32).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_left_alone_cools_once_at_the_exact_time() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, path) = rules_file(RULES);
    let t = hotlead::decode::now_ms() / 1000 * 1000 - 3_600_000;
    let clock_ms = Arc::new(AtomicI64::new(hotlead::decode::now_ms()));
    let clock: hotlead::pipeline::Clock = {
        let c = clock_ms.clone();
        Arc::new(move || c.load(Ordering::SeqCst))
    };
    let mut env = stack.env(&topics, &path);
    env.push(("HOTLEAD_PIPELINE__SWEEP_INTERVAL".into(), "100ms".into()));
    let config = || hotlead::config::Config::from_parts("", env.clone()).unwrap();

    let events = [page("f1", "fades", t, "/page"), page("s1", "slides", t, "/big")];
    let delivered = stack.produce_events(&topics.input, &events).await;
    let running = spawn_pipeline_with_clock(config(), &path, clock.clone());
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(60)).await;
    let a = wait_for_alerts(&stack, &topics, 2).await;
    assert_eq!(a.len(), 2, "two HEATED alerts, nothing cooled yet");

    // Two days later, with no events: both have cooled.
    clock_ms.store(t + 2 * DAY, Ordering::SeqCst);
    let a = wait_for_alerts(&stack, &topics, 4).await;
    let c = cooled(&a);
    assert_eq!(c.len(), 2, "{a:?}");
    let exact = |s: f64, exit: f64| t + (DAY as f64 * (s / exit).log2()).ceil() as i64;
    let fades = c.iter().find(|a| a.contact_id == "fades").unwrap();
    let at = |a: &ScoreAlert| a.crossed_at.as_ref().map(|x| x.seconds * 1000 + i64::from(x.nanos) / 1_000_000).unwrap();
    assert_eq!((fades.previous_tier.as_str(), fades.tier.as_str()), ("warm", "cold"));
    assert_eq!((at(fades), fades.threshold, fades.trigger_event_id.as_str()), (exact(40.0, 20.0), 20.0, ""));
    assert!((fades.score - 20.0).abs() < 1e-6);
    // 70 points fell through hot's exit (45) and warm's (20) by day two: one
    // alert into the tier it is in now, dated when it crossed warm's exit.
    let slides = c.iter().find(|a| a.contact_id == "slides").unwrap();
    assert_eq!((slides.previous_tier.as_str(), slides.tier.as_str()), ("hot", "cold"));
    assert_eq!(at(slides), exact(70.0, 20.0));

    // Later sweeps, a restart and the contact's next event add no repeat.
    clock_ms.store(t + 10 * DAY, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.finish().await;
    let running = spawn_pipeline_with_clock(config(), &path, clock.clone());
    let d = stack.produce_events(&topics.input, &[page("f2", "fades", t + 3 * DAY, "/nothing")]).await;
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a = alerts(&stack, &topics).await;
    assert_eq!(a.len(), 4, "{a:?}");
    let mut r = stack.redis();
    for p in 0..topics.partitions {
        let key = hotlead::store::PartitionKeys::new(&topics.input, p).cooling("engagement");
        let n: usize = redis::cmd("ZCARD").arg(key).query(&mut r).unwrap();
        assert_eq!(n, 0, "nobody is left to cool");
    }
    running.finish().await;
}
