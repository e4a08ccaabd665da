//! Right alerts and scores under everyday operations, on the real broker and
//! Redis: catching up a backlog with the sweep on, a replayed export, huge
//! poison messages, and reloads that change a cap window or a half-life.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use hotlead::engine::{self, Contact, Message, Source};
use hotlead::proto::{InteractionEvent, ScoreAlert};
use hotlead::rules::RuleSet;
use prost::Message as _;
use rand::{Rng, SeedableRng};
use support::{close, last_offsets, page, rules_file, spawn_pipeline, spawn_pipeline_with_clock, Stack, Topics};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// Each contact's state as stored, decoded with `rules`.
fn stored_contacts(stack: &Stack, topics: &Topics, rules: &RuleSet, ids: &[String]) -> HashMap<String, Contact> {
    let mut r = stack.redis();
    let mut out = HashMap::new();
    for id in ids {
        for p in 0..topics.partitions {
            let key = hotlead::store::PartitionKeys::new(&topics.input, p).contact(id);
            if let Some(c) = support::stored_contact(&mut r, rules, &key) {
                out.insert(id.clone(), c);
            }
        }
    }
    out
}

const CATCH_UP_RULES: &str = r#"
models:
  - name: engagement
    half_life: 6h
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - { id: pricing, when: { kind: page_view, url: { prefix: /pricing } }, points: 15 }
      - { id: docs, when: { kind: page_view, url: { prefix: /docs } }, points: 6 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catching_up_a_backlog_with_the_sweep_on_gives_the_in_order_alerts() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, path) = rules_file(CATCH_UP_RULES);
    let rules = RuleSet::parse(CATCH_UP_RULES, "t").unwrap();
    // Two days of bursts for 120 contacts, in event-time order: a bulk
    // import, or everything that arrived during an outage.
    let start = hotlead::decode::now_ms() - 2 * DAY - 2 * HOUR;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut events = Vec::new();
    for c in 0..120 {
        let mut t = start + rng.random_range(0..6 * HOUR);
        while t < start + 2 * DAY {
            for _ in 0..rng.random_range(1..5) {
                let url = if rng.random_bool(0.5) { "/pricing" } else { "/docs" };
                events.push(page(&format!("e{}", events.len()), &format!("c{c:03}"), t, url));
                t += rng.random_range(60_000..20 * 60_000);
            }
            t += rng.random_range(2 * HOUR..12 * HOUR);
        }
    }
    events.sort_by_key(|e| e.occurred_at.unwrap().seconds);
    assert!(events.len() > 1500, "{}", events.len());
    let now = start + 2 * DAY + 2 * HOUR;
    let delivered = stack.produce_events(&topics.input, &events).await;

    let mut config = stack.config(&topics, &path);
    config.pipeline.sweep_interval = Duration::from_millis(5);
    config.pipeline.batch_max_events = 20;
    // Small fetches: the backlog arrives in many pieces, with sweep ticks
    // between them, as a long catch-up does.
    config.kafka.insert("max.partition.fetch.bytes".into(), "512".into());
    config.kafka.insert("fetch.wait.max.ms".into(), "20".into());
    let running = spawn_pipeline_with_clock(config, &path, Arc::new(move || now));
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(120)).await;

    // The oracle: every partition's events in order, then the coolings due
    // by now.
    let mut want: BTreeMap<String, Vec<ScoreAlert>> = BTreeMap::new();
    let mut by_partition: BTreeMap<i32, Vec<Message>> = BTreeMap::new();
    for (e, (p, o)) in events.iter().zip(&delivered) {
        let m = Message::decode(*o, Some(e.contact_id.as_bytes()), Some(&e.encode_to_vec()), &Default::default(), now);
        by_partition.entry(*p).or_default().push(m);
    }
    for (p, msgs) in by_partition {
        let source = Source { topic: &topics.input, partition: p };
        let fx = engine::score_partition(&rules, source, msgs);
        let swept = engine::sweep(&rules, source, fx.contacts, now);
        for a in fx.alerts.into_iter().chain(swept.alerts) {
            want.entry(a.contact_id.clone()).or_default().push(a);
        }
    }
    let expected: usize = want.values().map(Vec::len).sum();
    let cooled = want.values().flatten().filter(|a| a.trigger_event_id.is_empty()).count();
    assert!(expected > 200 && cooled > 50, "{expected} alerts, {cooled} by decay");

    // Wait for the sweep after catching up, then read every alert.
    let got_alerts = stack.settled_alerts(&topics.alerts, expected, Duration::from_secs(60)).await;
    running.finish().await;
    let mut got: BTreeMap<String, Vec<ScoreAlert>> = BTreeMap::new();
    for a in &got_alerts {
        got.entry(a.contact_id.clone()).or_default().push(a.clone());
    }
    let ids = |m: &BTreeMap<String, Vec<ScoreAlert>>, c: &str| -> Vec<String> {
        m.get(c).map(|v| v.iter().map(|a| a.alert_id.clone()).collect()).unwrap_or_default()
    };
    let wrong: Vec<&String> = want.keys().chain(got.keys()).filter(|c| ids(&want, c) != ids(&got, c)).collect();
    assert!(
        wrong.is_empty(),
        "{} contacts' alerts differ from the in-order oracle (alert for alert, in order), e.g. {:?}: want {:?}, got {:?}",
        wrong.len(),
        wrong.first(),
        want.get(wrong[0].as_str()).map(|v| v.iter().map(|a| (a.direction, a.tier.clone())).collect::<Vec<_>>()),
        got.get(wrong[0].as_str()).map(|v| v.iter().map(|a| (a.direction, a.tier.clone())).collect::<Vec<_>>()),
    );
    assert_eq!(got_alerts.len(), expected, "each alert once");
    // Crossings more than an hour old are marked historical, the rest live.
    for a in got.values().flatten() {
        let at = a.crossed_at.unwrap().seconds * 1000 + i64::from(a.crossed_at.unwrap().nanos) / 1_000_000;
        assert_eq!(a.historical, now - at > HOUR, "{} crossed at {at}, now {now}", a.alert_id);
    }
    assert!(got.values().flatten().any(|a| !a.historical), "the latest crossings are live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_export_of_events_days_apart_counts_once() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, path) = rules_file(CATCH_UP_RULES);
    let rules = RuleSet::parse(CATCH_UP_RULES, "t").unwrap();
    let now = hotlead::decode::now_ms();
    let contacts: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    let events: Vec<InteractionEvent> = (0..120)
        .map(|i| page(&format!("x{i}"), &contacts[i % 20], now - 3 * DAY + (i as i64) * 30 * 60_000, "/pricing"))
        .collect();
    let first = stack.produce_events(&topics.input, &events).await;
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    stack.wait_applied(&topics, &last_offsets(&first), Duration::from_secs(60)).await;
    let before = stored_contacts(&stack, &topics, &rules, &contacts);
    // The connector sends its export again.
    let again = stack.produce_events(&topics.input, &events).await;
    stack.wait_applied(&topics, &last_offsets(&again), Duration::from_secs(60)).await;
    running.finish().await;
    let after = stored_contacts(&stack, &topics, &rules, &contacts);
    assert_eq!(after.len(), 20);
    let mut doubled = 0;
    for c in &contacts {
        let (b, a) = (before[c].state.models[0].as_ref().unwrap(), after[c].state.models[0].as_ref().unwrap());
        if !close(a.score, b.score) || a.at_ms != b.at_ms {
            doubled += 1;
        }
    }
    assert_eq!(doubled, 0, "contacts whose score moved when their events were sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn huge_poison_messages_are_dead_lettered_and_later_alerts_still_raised() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let stack = Stack::start();
    let topics = stack.topics(1).await;
    let (_dir, path) = rules_file(CATCH_UP_RULES);
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    let big: FutureProducer =
        hotlead::kafka::client_config(&stack.brokers, &[]).set("message.max.bytes", "10000000").create().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let poison: Vec<Vec<u8>> =
        [1_010_000usize, 5_000_000].iter().map(|n| (0..*n).map(|_| rng.random::<u8>() | 0x80).collect()).collect();
    for p in &poison {
        big.send(FutureRecord::to(&topics.input).key("c-poison").payload(p), Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    // Events behind them on the same partition raise alerts.
    let now = hotlead::decode::now_ms();
    let events: Vec<InteractionEvent> =
        (0..5).map(|i| page(&format!("after{i}"), "c-after", now - 1000 + i, "/pricing")).collect();
    let d = stack.produce_events(&topics.input, &events).await;
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    let alerts = stack.read_all(&topics.alerts, 2, Duration::from_secs(30)).await;
    assert_eq!(alerts.len(), 2, "warm and hot for the events behind the poison");
    let dead = stack.read_all(&topics.dead_letter, 2, Duration::from_secs(30)).await;
    running.finish().await;
    assert_eq!(dead.len(), 2);
    for (d, original) in dead.iter().zip(&poison) {
        assert_eq!(d.headers["hotlead.payload.truncated"], "true");
        assert_eq!(d.headers["hotlead.payload.bytes"], original.len().to_string());
        use sha2::Digest as _;
        let digest: String = sha2::Sha256::digest(original).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(d.headers["hotlead.payload.sha256"], digest);
        assert_eq!(d.payload.len(), 512 * 1024);
        assert_eq!(&d.payload[..], &original[..512 * 1024]);
    }
    assert_eq!(dead[0].headers["hotlead.reason"], "undecodable");
    assert_eq!(dead[1].headers["hotlead.reason"], "oversized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_cap_window_keeps_counting_from_the_new_window() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let v1 = r#"
models:
  - name: engagement
    half_life: 30d
    rules:
      - { id: visit, when: { kind: page_view }, points: 10, cap: { hits: 3, per: day } }
"#;
    let (_dir, path) = rules_file(v1);
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    let now = hotlead::decode::now_ms();
    let contacts: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let yesterday: Vec<InteractionEvent> =
        contacts.iter().flat_map(|c| (0..2).map(move |i| page(&format!("{c}-y{i}"), c, now - DAY + i, "/x"))).collect();
    let d = stack.produce_events(&topics.input, &yesterday).await;
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    std::fs::write(&path, v1.replace("per: day", "per: week")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while running.rules.current().models[0].rules[0].cap.unwrap().per != hotlead::rules::Window::Week {
        assert!(std::time::Instant::now() < deadline, "the reload did not happen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let today: Vec<InteractionEvent> = contacts.iter().map(|c| page(&format!("{c}-t"), c, now, "/x")).collect();
    let d = stack.produce_events(&topics.input, &today).await;
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    let rules = running.rules.current();
    running.finish().await;
    let stored = stored_contacts(&stack, &topics, &rules, &contacts);
    let h = 30.0 * DAY as f64;
    for c in &contacts {
        let st = stored[c].state.models[0].as_ref().unwrap();
        let want = 10.0 * (-(DAY as f64) / h).exp2() + 10.0 * (-((DAY - 1) as f64) / h).exp2() + 10.0;
        assert!(close(st.score, want), "{c}: today's view counts under the week's cap: {} vs {want}", st.score);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_half_life_keeps_leaderboard_values_and_order() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let v1 = r#"
models:
  - name: engagement
    half_life: 14d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
    rules:
      - { id: visit, when: { kind: page_view }, points: 10 }
"#;
    let (_dir, path) = rules_file(v1);
    let mut config = stack.config(&topics, &path);
    config.pipeline.sweep_interval = Duration::from_millis(100);
    let running = spawn_pipeline(config, &path);
    let now = hotlead::decode::now_ms();
    let contacts: Vec<String> = (0..30).map(|i| format!("h{i:02}")).collect();
    let mut events = Vec::new();
    for (i, c) in contacts.iter().enumerate() {
        for k in 0..(1 + i % 6) {
            events.push(page(&format!("{c}-{k}"), c, now - (i as i64 % 9) * DAY - k as i64 * HOUR, "/x"));
        }
    }
    let d = stack.produce_events(&topics.input, &events).await;
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    std::fs::write(&path, v1.replace("14d", "7d")).unwrap();
    let store = hotlead::store::Store::connect(&stack.redis_url).await.unwrap();
    // Re-indexing happens at the next batch or sweep of each partition.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let rules = loop {
        let rules = running.rules.current();
        let m = &rules.models[0];
        let at = hotlead::decode::now_ms();
        let stored = stored_contacts(&stack, &topics, &rules, &contacts);
        // The leaderboard holds those at or above its floor (warm's exit).
        let mut want: Vec<(String, f64)> = stored
            .iter()
            .map(|(c, k)| (c.clone(), k.state.models[0].as_ref().unwrap().score_at(at, m.half_life_secs)))
            .filter(|(_, s)| *s >= 20.0)
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        assert!(want.len() >= 5 && want.len() < stored.len(), "{} of {}", want.len(), stored.len());
        let least = hotlead::query::leaderboard_least_entry(m, None, at);
        let top = store.leaderboard_top(&topics.input, 2, "engagement", least, 100).await.unwrap();
        let got: Vec<(String, f64)> =
            top.iter().map(|(c, z, _)| (c.clone(), hotlead::query::leaderboard_value(m, *z, at))).collect();
        let same = m.half_life_secs == 7.0 * 86_400.0
            && got.len() == want.len()
            && got.iter().zip(&want).all(|(g, w)| g.0 == w.0 && (g.1 - w.1).abs() <= 1e-6 * w.1.max(1.0));
        if same {
            break rules;
        }
        assert!(std::time::Instant::now() < deadline, "leaderboard after the reload:\n{got:?}\nwant\n{want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The cooling schedule follows the new half-life too.
    let mut r = stack.redis();
    let stored = stored_contacts(&stack, &topics, &rules, &contacts);
    for (c, k) in &stored {
        let st = k.state.models[0].as_ref().unwrap();
        let want = hotlead::score::cooling_due(&rules.models[0], st);
        let mut got = None;
        for p in 0..2 {
            let key = hotlead::store::PartitionKeys::new(&topics.input, p).cooling("engagement");
            let z: Option<f64> = redis::cmd("ZSCORE").arg(key).arg(c).query(&mut r).unwrap();
            got = got.or(z);
        }
        assert_eq!(got.map(|z| z as i64), want, "{c}'s cooling time under the new half-life");
    }
    running.finish().await;
}

/// A deployment whose Redis holds contacts in the text layout of earlier
/// versions (a hash of text fields per contact, 64-bit event id hashes)
/// upgrades in place: the new version resumes at the stored watermark, reads
/// those contacts, counts a repeat of an event applied by the old version
/// once, and moves each contact it changes into the partition's states,
/// binary, deleting its old key; contacts it has not touched yet stay
/// readable as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_in_the_text_layout_upgrades_in_place() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, path) = rules_file(CATCH_UP_RULES);
    let rules = RuleSet::parse(CATCH_UP_RULES, "t").unwrap();
    let now = hotlead::decode::now_ms();
    let contacts: Vec<String> = (0..24).map(|i| format!("u{i:02}")).collect();
    let old: Vec<InteractionEvent> = (0..96)
        .map(|i| page(&format!("o{i}"), &contacts[i % 24], now - 2 * DAY + (i as i64) * 20 * 60_000, "/pricing"))
        .collect();
    let first = stack.produce_events(&topics.input, &old).await;

    // What the earlier version left: each contact's hash of text fields, its
    // event ids as full 64-bit hashes, and each partition's epoch and watermark.
    let fnv64 =
        |id: &str| id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let before = support::oracle(&rules, &topics, support::landed(&old, &first));
    let arrived = hotlead::decode::now_ms();
    let mut r = stack.redis();
    for (p, contact, fields) in &before.contacts {
        let key = hotlead::store::PartitionKeys::new(&topics.input, *p).contact(contact);
        let ids: Vec<String> = old
            .iter()
            .filter(|e| &e.contact_id == contact)
            .map(|e| format!("{:x}:{arrived}", fnv64(&e.event_id)))
            .collect();
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&key);
        for (f, v) in fields {
            cmd.arg(f).arg(if f == hotlead::store::SEEN_FIELD { ids.join(";") } else { v.clone() });
        }
        let _: () = cmd.query(&mut r).unwrap();
    }
    for (p, last) in last_offsets(&first) {
        let keys = hotlead::store::PartitionKeys::new(&topics.input, p);
        let _: () = redis::cmd("MSET").arg(keys.epoch()).arg(1).arg(keys.watermark()).arg(last).query(&mut r).unwrap();
    }

    // The new version takes over; half the contacts get new events, and one
    // event the old version applied is sent again.
    let mut config = stack.config(&topics, &path);
    config.pipeline.sweep_interval = Duration::ZERO;
    let running = spawn_pipeline(config, &path);
    let mut new: Vec<InteractionEvent> = (0..36)
        .map(|i| page(&format!("n{i}"), &contacts[(i * 2) % 24], now - HOUR + i as i64 * 60_000, "/pricing"))
        .collect();
    new.push(old[5].clone());
    let second = stack.produce_events(&topics.input, &new).await;
    stack.wait_applied(&topics, &last_offsets(&second), Duration::from_secs(60)).await;
    running.finish().await;

    // Every contact equals an offline run over both halves, the repeat once.
    let all: Vec<InteractionEvent> = old.iter().chain(&new).cloned().collect();
    let delivered: Vec<(i32, i64)> = first.iter().chain(&second).copied().collect();
    let want = support::oracle(&rules, &topics, support::landed(&all, &delivered));
    assert_eq!(want.contacts.len(), 24);
    let (mut binary, mut text) = (0, 0);
    for (p, contact, fields) in &want.contacts {
        let key = hotlead::store::PartitionKeys::new(&topics.input, *p).contact(contact);
        let stored = support::stored_fields(&mut r, &rules, &key);
        for (f, w) in fields {
            assert!(support::field_matches(f, stored.get(f), w), "{contact} {f}: {:?} vs {w}", stored.get(f));
        }
        let states = hotlead::store::PartitionKeys::new(&topics.input, *p).states();
        let moved: bool = redis::cmd("HEXISTS").arg(&states).arg(contact).query(&mut r).unwrap();
        let old_key: bool = redis::cmd("EXISTS").arg(&key).query(&mut r).unwrap();
        let touched = new.iter().any(|e| &e.contact_id == contact);
        assert_eq!((moved, old_key), (touched, !touched), "{contact}: in the partition's states, or its old key");
        if touched {
            binary += 1
        } else {
            text += 1
        }
    }
    // The twelve with new events, and the one whose repeat was recognised.
    assert_eq!((binary, text), (13, 11));
    let repeated = &old[5].contact_id;
    let st = stored_contacts(&stack, &topics, &rules, std::slice::from_ref(repeated));
    assert_eq!(st[repeated].state.seen.len(), 4, "{repeated} remembers its four events, the repeat once");
}
