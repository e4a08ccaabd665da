//! One owner per partition, on the real broker and Redis: a revoked
//! partition's relay stops before the next owner claims it, and the read
//! side keeps serving while the pipeline rebalances or cannot consume.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{rules_file, spawn_pipeline, Stack};

const RULES: &str = r#"
models:
  - name: engagement
    half_life: 7d
    tiers:
      - { name: warm, enter: 10, exit: 5 }
    rules:
      - { id: visit, when: { kind: page_view }, points: 12 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_partition_is_relayed_by_one_owner_at_a_time() {
    // Enough that relaying them outlasts a rebalance (a few seconds on Tansu).
    const PER_PARTITION: usize = 6000;
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, path) = rules_file(RULES);
    // Outboxes left behind by an earlier owner: every entry unique.
    let mut r = stack.redis();
    for p in 0..2 {
        let keys = hotlead::store::PartitionKeys::new(&topics.input, p);
        let mut pipe = redis::pipe();
        for i in 0..PER_PARTITION {
            pipe.cmd("XADD")
                .arg(keys.outbox())
                .arg("*")
                .arg("topic")
                .arg(&topics.alerts)
                .arg("key")
                .arg(format!("c{i}"))
                .arg("payload")
                .arg(format!("p{p}-{i:05}"));
        }
        let _: () = pipe.query(&mut r).unwrap();
    }
    // A slow producer: one message per request.
    let slow = |mut c: hotlead::config::Config| {
        c.kafka.insert("batch.num.messages".into(), "1".into());
        c
    };

    // Watch both partitions' epochs: when does each new owner claim?
    let claims: Arc<std::sync::Mutex<HashMap<(i32, i64), Instant>>> = Arc::default();
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (claims, watching, url, input) =
            (claims.clone(), watching.clone(), stack.redis_url.clone(), topics.input.clone());
        std::thread::spawn(move || {
            let mut r = redis::Client::open(url).unwrap().get_connection().unwrap();
            while watching.load(Ordering::Relaxed) {
                for p in 0..2 {
                    let key = hotlead::store::PartitionKeys::new(&input, p).epoch();
                    let e: Option<i64> = redis::cmd("GET").arg(key).query(&mut r).unwrap();
                    if let Some(e) = e {
                        claims.lock().unwrap().entry((p, e)).or_insert_with(Instant::now);
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let started = Instant::now();
    let first = spawn_pipeline(slow(stack.config(&topics, &path)), &path);
    // Wait until the first owner is relaying both outboxes.
    let len = |p: i32, r: &mut redis::Connection| -> usize {
        let key = hotlead::store::PartitionKeys::new(&topics.input, p).outbox();
        redis::cmd("XLEN").arg(key).query(r).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while len(0, &mut r) == PER_PARTITION || len(1, &mut r) == PER_PARTITION {
        assert!(Instant::now() < deadline, "the first owner never started relaying");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A second instance joins: one partition moves to it mid-relay.
    let second = spawn_pipeline(slow(stack.config(&topics, &path)), &path);
    let deadline = Instant::now() + Duration::from_secs(120);
    while len(0, &mut r) + len(1, &mut r) > 0 {
        assert!(Instant::now() < deadline, "outboxes not drained: {} and {}", len(0, &mut r), len(1, &mut r));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.finish().await;
    first.finish().await;
    watching.store(false, Ordering::Relaxed);
    watcher.join().unwrap();

    let records = stack.read_all(&topics.alerts, 2 * PER_PARTITION + 100, Duration::from_secs(30)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for rec in &records {
        *seen.entry(String::from_utf8_lossy(&rec.payload).into_owned()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{} entries delivered more than once, e.g. {:?}", twice.len(), twice.first());
    assert_eq!(records.len(), 2 * PER_PARTITION, "every outbox entry delivered exactly once");

    // One partition was claimed a second time, by the second instance,
    // while the first was relaying it.
    let claims = claims.lock().unwrap().clone();
    let moved: Vec<(i32, Instant)> = claims.iter().filter(|((_, e), _)| *e == 2).map(|((p, _), t)| (*p, *t)).collect();
    assert_eq!(moved.len(), 1, "exactly one partition changed owner: {claims:?}");
    let (p, claimed) = moved[0];
    let prefix = format!("p{p}-");
    let claimed_ms = hotlead::decode::now_ms() - claimed.elapsed().as_millis() as i64;
    let of_p: Vec<&support::Record> =
        records.iter().filter(|r| String::from_utf8_lossy(&r.payload).starts_with(&prefix)).collect();
    let before = of_p.iter().filter(|r| r.timestamp_ms < claimed_ms).count();
    assert!(
        before > 0 && before < PER_PARTITION,
        "the first owner was mid-relay when the partition moved: {before} of {PER_PARTITION} before the claim ({:?} in)",
        claimed.duration_since(started)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_are_served_while_the_pipeline_rebalances_or_cannot_consume() {
    use hotlead::proto::interaction_event::Interaction;
    use hotlead::proto::{InteractionEvent, PageView};
    let mut stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, path) = rules_file(RULES);
    let now = hotlead::decode::now_ms();
    let events: Vec<InteractionEvent> = (0..40)
        .map(|i| InteractionEvent {
            event_id: format!("e{i}"),
            contact_id: format!("c{}", i % 4),
            occurred_at: Some(hotlead::decode::timestamp(now - 60_000 + i)),
            interaction: Some(Interaction::PageView(PageView { url: "/pricing".into(), ..Default::default() })),
            ..Default::default()
        })
        .collect();
    let delivered = stack.produce_events(&topics.input, &events).await;
    let port = support::free_port();
    let mut config = stack.config(&topics, &path);
    config.http.listen = format!("127.0.0.1:{port}");
    config.http.token = Some("t0ken".into());
    let first = spawn_pipeline(config, &path);
    stack.wait_applied(&topics, &support::last_offsets(&delivered), Duration::from_secs(60)).await;
    let get =
        move |path: &'static str| tokio::task::spawn_blocking(move || support::http_get(port, path, Some("t0ken")));
    let (status, body) = get("/v1/contacts/c1").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let score = body["models"][0]["score"].as_f64().unwrap();
    assert!(score > 100.0, "ten visits: {score}");
    let (_, s) = get("/v1/status").await.unwrap();
    assert_eq!(s["consuming"], true, "{s}");

    // Readers poll all along while a second instance joins and leaves.
    let polling = Arc::new(AtomicBool::new(true));
    let poller = {
        let polling = polling.clone();
        std::thread::spawn(move || {
            let mut answers: Vec<(&'static str, u16)> = vec![];
            while polling.load(Ordering::Relaxed) {
                for path in ["/v1/contacts/c1", "/board", "/readyz"] {
                    answers.push((path, support::http_get(port, path, Some("t0ken")).0));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            answers
        })
    };
    let second = spawn_pipeline(stack.config(&topics, &path), &path);
    let deadline = Instant::now() + Duration::from_secs(60);
    while second.status.owned_partitions() == 0 {
        assert!(Instant::now() < deadline, "the second instance never got a partition");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.finish().await;
    // The broker goes away: nothing can be consumed, everything can be read.
    stack.stop_broker();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, s) = get("/v1/status").await.unwrap();
        if s["consuming"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "still consuming with the broker gone: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    polling.store(false, Ordering::Relaxed);
    let answers = poller.join().unwrap();
    assert!(answers.len() >= 30, "the readers polled: {}", answers.len());
    let failed: Vec<_> = answers.iter().filter(|(_, s)| *s != 200).collect();
    assert!(failed.is_empty(), "{} of {} reads failed, e.g. {:?}", failed.len(), answers.len(), failed.first());
    let (status, body) = get("/v1/contacts/c1").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["models"][0]["score"].as_f64().unwrap().round(), score.round(), "{body}");
    drop(first);
}
