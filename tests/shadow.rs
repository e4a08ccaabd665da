//! Shadow models on the real stack: a back-fill over retained history gives
//! every contact exactly what `hotlead rules test` gives, across a `kill -9`
//! in the middle; a promotion during live traffic moves sales' alerts from
//! one model to the other at one offset per partition, loses and doubles no
//! event, and a second promotion rolls back.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use hotlead::engine::{self, Lane, Message, Source};
use hotlead::proto::interaction_event::Interaction;
use hotlead::proto::{InteractionEvent, ScoreAlert};
use hotlead::rules::RuleSet;
use hotlead::score::Millis;
use hotlead::simulate::{SimConfig, Simulator};
use prost::Message as _;
use support::{last_offsets, page, rules_file, spawn_pipeline, KillOnDrop, Stack, Topics};

const LIVE: &str = r#"
models:
  - name: engagement
    half_life: 7d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - { id: pricing, when: { kind: page_view, url: { prefix: /pricing } }, points: 10 }
      - { id: reading, when: { kind: page_view, url: { prefix: /blog } }, points: 3 }
"#;

const NEW: &str = r#"
models:
  - name: intent
    version: 2
    half_life: 10d
    tiers:
      - { name: warm, enter: 25, exit: 15 }
      - { name: hot, enter: 50, exit: 35 }
    rules:
      - { id: pricing, when: { kind: page_view, url: { prefix: /pricing } }, points: 12, cap: { hits: 3, per: day } }
      - { id: docs, when: { kind: page_view, url: { prefix: /docs } }, points: 4 }
      - { id: demo, when: { kind: form_submission, form_id: demo-request }, points: 40, once: true }
      - { id: webinar, when: { kind: webinar_attendance, attended: true }, points: 15 }
      - { id: click, when: { kind: email_engagement, action: click }, points: 5, cap: { points: 15, per: day } }
"#;

fn at(e: &InteractionEvent) -> Millis {
    let t = e.occurred_at.unwrap();
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// What a user compares of an alert: who, which model, where to, when.
fn crossing(a: &ScoreAlert) -> (String, String, String, i32, i64) {
    let t = a.crossed_at.unwrap();
    (
        a.contact_id.clone(),
        a.model.clone(),
        a.tier.clone(),
        a.direction,
        t.seconds * 1000 + i64::from(t.nanos) / 1_000_000,
    )
}

/// The lane's stored state of every contact, each model seen at its
/// latest event.
async fn lane_states(
    stack: &Stack,
    topics: &Topics,
    lane: &str,
    rules: &RuleSet,
) -> BTreeMap<String, Vec<hotlead::query::ModelView>> {
    let store = hotlead::store::Store::connect(&stack.redis_url).await.unwrap().for_lane(lane);
    let mut out = BTreeMap::new();
    for p in 0..topics.partitions {
        let keys = store.keys(&topics.input, p);
        let ids = store.contact_ids(&keys).await.unwrap();
        for chunk in ids.chunks(500) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let values = store.load_contacts(&keys, rules, &refs).await.unwrap();
            for (id, v) in chunk.iter().zip(values) {
                let (_, state) = hotlead::store::decode_stored(rules, &v).unwrap();
                out.insert(id.clone(), hotlead::query::model_views(rules, &state, Millis::MIN));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_scores_the_retained_history_exactly_and_resumes_after_a_kill() {
    const EVENTS: usize = 50_000;
    let stack = Stack::start();
    let topics = stack.topics(4).await;
    let (_live_dir, live_rules) = rules_file(LIVE);
    let (_new_dir, new_rules) = rules_file(NEW);
    let rules = RuleSet::parse(NEW, "new.yaml").unwrap();

    // Fifty thousand events of 1,500 contacts over the last 35 days.
    let mut sim = Simulator::new(&SimConfig { contacts: 1_500, seed: 17, ..SimConfig::default() });
    let now = hotlead::decode::now_ms();
    let start = now - 35 * 86_400_000;
    let step = 35 * 86_400_000 / EVENTS as i64;
    let events: Vec<InteractionEvent> = (0..EVENTS).map(|i| sim.next_event(start + i as i64 * step)).collect();
    let delivered = stack.produce_events(&topics.input, &events).await;
    let last = last_offsets(&delivered);

    // The back-fill, killed with SIGKILL once it is about a third through.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("backfill.log");
    let args = ["backfill", "--rules", new_rules.to_str().unwrap(), "--model", "intent"];
    // No cooling sweep: `rules test` gives each contact's tier at its latest
    // event, and a sweep would cool those whose score decayed since.
    let quiet = [("HOTLEAD_PIPELINE__SWEEP_INTERVAL", "0s")];
    let mut first = KillOnDrop(stack.spawn_hotlead(&topics, &live_rules, &log, &args, &quiet));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done: i64 = stack.lane_watermarks(&topics, "intent").values().map(|w| w + 1).sum();
        if done as usize >= EVENTS / 3 {
            break;
        }
        assert!(
            first.0.try_wait().unwrap().is_none(),
            "the back-fill ended early: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(
            Instant::now() < deadline,
            "the back-fill made no progress: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let at_kill: i64 = stack.lane_watermarks(&topics, "intent").values().map(|w| w + 1).sum();
    assert!((at_kill as usize) < EVENTS, "killed after the end ({at_kill})");

    // Again, to the end of the retained history.
    let mut second = KillOnDrop(stack.spawn_hotlead(
        &topics,
        &live_rules,
        &log,
        &[&args[..], &["--until-caught-up"]].concat(),
        &quiet,
    ));
    let deadline = Instant::now() + Duration::from_secs(600);
    while second.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the back-fill did not catch up: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(second.0.wait().unwrap().success(), "{text}");
    let w = stack.lane_watermarks(&topics, "intent");
    assert!(last.iter().all(|(p, o)| w.get(p) == Some(o)), "watermarks {w:?}, last offsets {last:?}");
    assert!(text.contains("Resuming the back-fill of `intent`"), "{text}");
    assert!(text.contains("backfill intent [") && text.contains("ev/s"), "no progress line: {text}");
    assert!(text.contains("caught up with the live stream (50000 events)"), "{text}");

    // Every contact exactly as `hotlead rules test` scores the same events.
    let report = hotlead::replay::replay_in(&rules, &mut Lane::shadow_lane("intent", &rules), &events);
    let stored = lane_states(&stack, &topics, "intent", &rules).await;
    // A contact no rule gave points to has nothing stored.
    let scored: BTreeMap<&String, &Vec<_>> = report.contacts.iter().filter(|(_, v)| !v.is_empty()).collect();
    assert_eq!(stored.len(), scored.len(), "contacts scored");
    assert!(scored.len() > 500, "a real population: {}", scored.len());
    let mut hot = 0;
    for (id, want) in scored {
        let got = stored.get(id).unwrap_or_else(|| panic!("{id} missing from the lane"));
        assert_eq!(got.len(), want.len(), "{id}");
        for (g, w) in got.iter().zip(want) {
            assert!((g.score - w.score).abs() <= 1e-9, "{id}: {} vs {}", g.score, w.score);
            assert_eq!((&g.tier, g.last_activity_ms), (&w.tier, w.last_activity_ms), "{id}");
            hot += usize::from(g.tier == "hot");
        }
    }
    assert!(hot > 0, "some contact reached the top tier");

    // Its crossings went to the shadow topic, none to sales.
    let want: Vec<_> = report.alerts.iter().map(crossing).collect();
    assert!(report.alerts.iter().all(|a| a.shadow));
    let shadow = stack.settled_alerts(&topics.shadow_alerts, want.len(), Duration::from_secs(60)).await;
    assert!(shadow.iter().all(|a| a.shadow && a.model == "intent"));
    let got: Vec<_> = shadow.iter().map(crossing).collect();
    let (got_set, want_set): (BTreeSet<_>, BTreeSet<_>) = (got.iter().collect(), want.iter().collect());
    assert_eq!(got_set, want_set, "shadow crossings");
    // The kill may leave a relayed alert undeleted, so it is sent again:
    // with the same id, so a consumer drops it. A crossing never has two ids.
    let ids: BTreeSet<&str> = shadow.iter().map(|a| a.alert_id.as_str()).collect();
    assert_eq!(ids.len(), want.len(), "one id per crossing ({} delivered)", got.len());
    assert!(stack.alerts(&topics.alerts, Duration::from_secs(2)).await.is_empty(), "a back-fill never alerts sales");
    assert!(stack.alerts(&topics.dead_letter, Duration::from_secs(1)).await.is_empty());
}

const BOTH: &str = r#"
models:
  - name: engagement
    half_life: 1d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - { id: pricing, when: { kind: page_view, url: { prefix: /pricing } }, points: 10 }
      - { id: reading, when: { kind: page_view, url: { prefix: /blog } }, points: 3 }
  - name: engagement-v2
    version: 2
    shadow: true
    half_life: 1d
    tiers:
      - { name: warm, enter: 25, exit: 15 }
      - { name: hot, enter: 45, exit: 30 }
    rules:
      - { id: pricing, when: { kind: page_view, url: { prefix: /pricing } }, points: 14 }
      - { id: reading, when: { kind: page_view, url: { prefix: /blog } }, points: 1 }
"#;

/// Points each model gives a page view, and the oracle's score: each event
/// once, decayed to the latest (half-life one day).
fn oracle_score(events: &[&InteractionEvent], model: usize) -> f64 {
    let points = |e: &InteractionEvent| match &e.interaction {
        Some(Interaction::PageView(p)) if p.url.starts_with("/pricing") => [10.0, 14.0][model],
        Some(Interaction::PageView(p)) if p.url.starts_with("/blog") => [3.0, 1.0][model],
        _ => 0.0,
    };
    let latest = events.iter().map(|e| at(e)).max().unwrap();
    events.iter().map(|e| points(e) * (-((latest - at(e)) as f64) / 86_400_000.0).exp2()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_during_live_traffic_switches_sales_at_one_offset_and_rolls_back() {
    let stack = Stack::start();
    let topics = stack.topics(3).await;
    let (_dir, rules_path) = rules_file(BOTH);
    let rules = RuleSet::parse(BOTH, "both.yaml").unwrap();
    let running = spawn_pipeline(stack.config(&topics, &rules_path), &rules_path);

    // Three waves of fifteen new contacts each; the first promotion comes in
    // the middle of the second wave (while its second half is sent), the
    // rollback in the middle of the third.
    let t0 = hotlead::decode::now_ms() - 6 * 3_600_000;
    let urls = ["/pricing", "/blog/a", "/pricing/x", "/blog/b", "/pricing/y"];
    let wave = |w: i64, half: usize| -> Vec<InteractionEvent> {
        (half * 60..half * 60 + 60)
            .map(|i| {
                let c = i % 15;
                let t = t0 + w * 2 * 3_600_000 + i as i64 * 20_000;
                page(&format!("w{w}-{i}"), &format!("c-{w}-{c:02}"), t, urls[(i * 7 + c) % urls.len()])
            })
            .collect()
    };
    let send = |events: Vec<InteractionEvent>| {
        let stack = &stack;
        let input = topics.input.clone();
        async move { stack.produce_events(&input, &events).await }
    };
    let config = stack.config(&topics, &rules_path);
    let promote = |model: &'static str, replaces: &'static str| {
        let config = config.clone();
        async move {
            let e = hotlead::shadow::promotion_event(model, replaces, false, "test", hotlead::decode::now_ms());
            hotlead::shadow::send_promotion(&config.client_config(), &config.topics.input, &e).await.unwrap()
        }
    };
    send([wave(0, 0), wave(0, 1), wave(1, 0)].concat()).await;
    let (a, promoted) = tokio::join!(send(wave(1, 1)), promote("engagement-v2", "engagement"));
    // Between the two, the read side shows the promoted model live and the
    // old one as a shadow, beside each other.
    let mut applied = last_offsets(&a);
    applied.extend(promoted.iter().copied());
    stack.wait_applied(&topics, &applied, Duration::from_secs(60)).await;
    let roles = |id: &'static str| {
        let (config, rules) = (config.clone(), rules.clone());
        async move {
            let store = hotlead::store::Store::connect_with(&config.redis).await.unwrap();
            let (p, value) = store.find_contact(&config.topics.input, 3, id, &rules).await.unwrap().unwrap();
            let view = hotlead::query::contact_view(&rules, id, p, &value, Millis::MAX / 4, &config.privacy).unwrap();
            let view = hotlead::shadow::add_shadows(&store, &rules, &config.topics.input, view, Millis::MAX / 4)
                .await
                .unwrap();
            view.models.iter().map(|m| (m.model.clone(), m.shadow)).collect::<Vec<_>>()
        }
    };
    let both = |old: bool, new: bool| vec![("engagement".to_string(), old), ("engagement-v2".to_string(), new)];
    assert_eq!(roles("c-0-00").await, both(true, false), "after the promotion");
    send(wave(2, 0)).await;
    let (b, rolled_back) = tokio::join!(send(wave(2, 1)), promote("engagement", "engagement-v2"));
    let mut last = last_offsets(&a);
    for (p, o) in last_offsets(&b).into_iter().chain(promoted.iter().copied()).chain(rolled_back.iter().copied()) {
        let e = last.entry(p).or_insert(o);
        *e = (*e).max(o);
    }
    stack.wait_applied(&topics, &last, Duration::from_secs(60)).await;

    // The oracle of crossings: every partition's records, as read back, in
    // offset order, through the engine in one pass.
    let records = read_partitions(&stack, &topics).await;
    let limits = hotlead::decode::Limits { max_future_skew_ms: i64::MAX / 2, ..Default::default() };
    let mut want: Vec<ScoreAlert> = Vec::new();
    let mut switch: HashMap<i32, (i64, i64)> = HashMap::new();
    let mut offset_of: HashMap<String, (i32, i64)> = HashMap::new();
    for (p, recs) in &records {
        let messages: Vec<Message> = recs
            .iter()
            .map(|(o, k, v)| Message::decode(*o, k.as_deref(), Some(v), &limits, hotlead::decode::now_ms()))
            .collect();
        for m in &messages {
            let ev = &m.event.as_ref().unwrap().event;
            offset_of.insert(ev.event_id.clone(), (*p, m.offset));
        }
        let source = Source { topic: &topics.input, partition: *p };
        let fx = engine::score_batch_in(
            &rules,
            source,
            &mut Lane::live(&rules),
            messages,
            HashMap::new(),
            Default::default(),
        );
        assert_eq!(fx.counts.promotions, 2);
        want.extend(fx.alerts);
        let promo = |at: &[(i32, i64)]| at.iter().find(|(q, _)| q == p).unwrap().1;
        switch.insert(*p, (promo(&promoted), promo(&rolled_back)));
    }
    let want_sales: BTreeSet<String> = want.iter().filter(|a| !a.shadow).map(|a| a.alert_id.clone()).collect();
    let want_shadow: BTreeSet<String> = want.iter().filter(|a| a.shadow).map(|a| a.alert_id.clone()).collect();
    assert!(want_sales.len() >= 10 && want_shadow.len() >= 10, "{} {}", want_sales.len(), want_shadow.len());

    let sales = stack.settled_alerts(&topics.alerts, want_sales.len(), Duration::from_secs(60)).await;
    let shadow = stack.settled_alerts(&topics.shadow_alerts, want_shadow.len(), Duration::from_secs(60)).await;
    let ids = |v: &[ScoreAlert]| v.iter().map(|a| a.alert_id.clone()).collect::<BTreeSet<_>>();
    assert_eq!(ids(&sales), want_sales, "sales alerts");
    assert_eq!(ids(&shadow), want_shadow, "shadow alerts");
    assert_eq!(sales.len(), want_sales.len(), "no sales alert twice");
    assert_eq!(shadow.len(), want_shadow.len(), "no shadow alert twice");

    // Sales heard the old model before the promotion's offset, the new one
    // from it to the rollback, the old one after; the shadow topic the rest.
    let mut models_heard = BTreeSet::new();
    for a in &sales {
        let (p, o) = offset_of[&a.trigger_event_id];
        let (on, off) = switch[&p];
        let live = if o > on && o < off { "engagement-v2" } else { "engagement" };
        assert_eq!(a.model, live, "sales alert at {p}@{o} (promotion at {on}, rollback at {off})");
        assert!(!a.shadow);
        models_heard.insert(a.model.clone());
    }
    assert_eq!(models_heard.len(), 2, "sales heard both models");
    for a in &shadow {
        let (p, o) = offset_of[&a.trigger_event_id];
        let (on, off) = switch[&p];
        let shadowed = if o > on && o < off { "engagement" } else { "engagement-v2" };
        assert_eq!(a.model, shadowed, "shadow alert at {p}@{o}");
    }
    // The switch itself raised no alert.
    assert!(sales.iter().chain(&shadow).all(|a| !a.trigger_event_id.starts_with("promote-")));

    // Both models scored every event exactly once, throughout: each
    // contact's stored scores equal the independent oracle.
    let all: Vec<InteractionEvent> = (0..3).flat_map(|w| [wave(w, 0), wave(w, 1)].concat()).collect();
    let config = stack.config(&topics, &rules_path);
    let store = hotlead::store::Store::connect_with(&config.redis).await.unwrap();
    for (w, c) in (0..3).flat_map(|w| (0..15).map(move |c| (w, c))) {
        let id = format!("c-{w}-{c:02}");
        let mine: Vec<&InteractionEvent> = all.iter().filter(|e| e.contact_id == id).collect();
        let (_, value) = store.find_contact(&topics.input, topics.partitions, &id, &rules).await.unwrap().unwrap();
        let (_, state) = hotlead::store::decode_stored(&rules, &value).unwrap();
        let views = hotlead::query::model_views(&rules, &state, Millis::MIN);
        for (m, v) in views.iter().enumerate() {
            let want = oracle_score(&mine, m);
            assert!((v.score - want).abs() <= 1e-9, "{id} {}: {} vs oracle {want}", v.model, v.score);
        }
    }
    // After the rollback, the roles stored on every partition are the
    // rules' own again.
    assert_eq!(roles("c-0-00").await, both(false, true), "after the rollback");
    let mut r = stack.redis();
    for p in 0..topics.partitions {
        let roles: String =
            redis::cmd("GET").arg(hotlead::store::PartitionKeys::new(&topics.input, p).roles()).query(&mut r).unwrap();
        assert_eq!(roles, "engagement=live,engagement-v2=shadow");
    }

    // A promotion that announces: sales gets one HEATED alert, triggered by
    // it, for each contact the new model holds above its base tier (tier as
    // stored), and no other alert.
    let config = stack.config(&topics, &rules_path);
    let e = hotlead::shadow::promotion_event("engagement-v2", "engagement", true, "test", hotlead::decode::now_ms());
    let at = hotlead::shadow::send_promotion(&config.client_config(), &config.topics.input, &e).await.unwrap();
    stack.wait_applied(&topics, &at.iter().copied().collect(), Duration::from_secs(60)).await;
    let mut above: BTreeMap<String, String> = BTreeMap::new();
    for (w, c) in (0..3).flat_map(|w| (0..15).map(move |c| (w, c))) {
        let id = format!("c-{w}-{c:02}");
        let (_, value) = store.find_contact(&topics.input, topics.partitions, &id, &rules).await.unwrap().unwrap();
        let (_, state) = hotlead::store::decode_stored(&rules, &value).unwrap();
        let v2 = &hotlead::query::model_views(&rules, &state, Millis::MIN)[1];
        if v2.tier != "cold" {
            above.insert(id, v2.tier.clone());
        }
    }
    assert!(above.len() >= 5, "contacts to announce: {above:?}");
    let sales = stack.settled_alerts(&topics.alerts, want_sales.len() + above.len(), Duration::from_secs(60)).await;
    let announced: Vec<&ScoreAlert> = sales.iter().filter(|a| a.trigger_event_id == e.event_id).collect();
    let got: BTreeMap<String, String> = announced.iter().map(|a| (a.contact_id.clone(), a.tier.clone())).collect();
    assert_eq!(got, above, "announced");
    assert_eq!(announced.len(), above.len(), "each once");
    assert!(announced.iter().all(|a| a.model == "engagement-v2" && a.previous_tier == "cold" && !a.shadow));
    assert_eq!(sales.len(), want_sales.len() + above.len(), "nothing else");
    running.finish().await;
}

/// Every record of the input topic per partition, in offset order.
async fn read_partitions(stack: &Stack, topics: &Topics) -> BTreeMap<i32, Vec<(i64, Option<Vec<u8>>, Vec<u8>)>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message as _;
    let consumer: BaseConsumer = hotlead::kafka::client_config(&stack.brokers, &[])
        .set("group.id", format!("reader-{}", rand::random::<u64>()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut out = BTreeMap::new();
    for p in 0..topics.partitions {
        let (low, high) = consumer.fetch_watermarks(&topics.input, p, Duration::from_secs(10)).unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&topics.input, p, rdkafka::Offset::Offset(low)).unwrap();
        consumer.assign(&tpl).unwrap();
        let mut recs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while recs.len() < (high - low) as usize {
            assert!(Instant::now() < deadline, "partition {p}: read {} of {}", recs.len(), high - low);
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                recs.push((m.offset(), m.key().map(<[u8]>::to_vec), m.payload().unwrap_or_default().to_vec()));
            }
        }
        out.insert(p, recs);
    }
    out
}

#[test]
fn a_promotion_round_trips_through_the_rules_test_format() {
    let e = hotlead::shadow::promotion_event("b", "a", true, "ops", 1_760_000_000_000);
    let line = hotlead::replay::to_json(&e);
    let back = hotlead::replay::parse_event(&line).unwrap();
    assert_eq!(back.encode_to_vec(), e.encode_to_vec(), "{line}");
}
