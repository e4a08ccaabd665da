//! People, not cookies: an anonymous visitor who identifies ends with the
//! score both histories give together, across partitions and across a
//! `kill -9` in the middle of the merge; a repeat of the identify changes
//! nothing; the visitor's later events count for the contact.
//!
//! The oracle here is independent of the engine: the sum of each event's
//! points decayed to the contact's latest event, and the tier that score
//! reaches.

mod support;

use std::time::{Duration, Instant};

use hotlead::proto::interaction_event::Interaction;
use hotlead::proto::{score_alert, Identify, InteractionEvent};
use hotlead::rules::RuleSet;
use hotlead::score::Millis;
use support::{last_offsets, page, rules_file, spawn_pipeline, Stack, Topics};

const RULES: &str = r#"
models:
  - name: buying
    half_life: 1d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - { id: pricing, when: { kind: page_view, url: { prefix: /pricing } }, points: 10 }
      - { id: reading, when: { kind: page_view, url: { prefix: /blog } }, points: 3 }
"#;

const HALF_LIFE_MS: f64 = 86_400_000.0;

fn identify(id: &str, visitor: &str, contact: &str, at: Millis) -> InteractionEvent {
    InteractionEvent {
        interaction: Some(Interaction::Identify(Identify { contact_id: contact.into() })),
        ..page(id, visitor, at, "/")
    }
}

/// Points the oracle gives a page view.
fn points(e: &InteractionEvent) -> f64 {
    match &e.interaction {
        Some(Interaction::PageView(p)) if p.url.starts_with("/pricing") => 10.0,
        Some(Interaction::PageView(p)) if p.url.starts_with("/blog") => 3.0,
        _ => 0.0,
    }
}

fn at(e: &InteractionEvent) -> Millis {
    let t = e.occurred_at.unwrap();
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// The oracle: every scoring event of both ids, decayed to the latest.
fn oracle(events: &[&InteractionEvent]) -> (f64, Millis) {
    let latest = events.iter().filter(|e| points(e) != 0.0).map(|e| at(e)).max().unwrap();
    let s = events.iter().map(|e| points(e) * (-((latest - at(e)) as f64) / HALF_LIFE_MS).exp2()).sum();
    (s, latest)
}

/// The scenario: the contact reads once; the visitor browses ten times
/// (six pricing pages), then identifies as the contact, then reads twice
/// more under its anonymous id.
fn scenario(
    visitor: &str,
    contact: &str,
    t0: Millis,
) -> (Vec<InteractionEvent>, InteractionEvent, Vec<InteractionEvent>) {
    let mut before = vec![page("c-1", contact, t0, "/blog/intro")];
    for i in 0..10 {
        let url = if i % 5 < 3 { "/pricing/enterprise" } else { "/blog/roi" };
        before.push(page(&format!("v-{i}"), visitor, t0 + 60_000 * (i + 1), url));
    }
    let id = identify("v-identify", visitor, contact, t0 + 11 * 60_000);
    let after =
        vec![page("v-10", visitor, t0 + 12 * 60_000, "/pricing"), page("v-11", visitor, t0 + 13 * 60_000, "/blog/x")];
    (before, id, after)
}

fn stored(
    stack: &Stack,
    topics: &Topics,
    rules: &RuleSet,
    id: &str,
    partition: i32,
) -> Option<hotlead::engine::Contact> {
    let key = hotlead::store::PartitionKeys::new(&topics.input, partition).contact(id);
    support::stored_contact(&mut stack.redis(), rules, &key)
}

/// Waits until the contact holds a score (in any partition), or panics.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn score_of(c: &hotlead::engine::Contact, now: Millis) -> f64 {
    c.state.models[0].as_ref().map_or(0.0, |m| m.score_at(now, 86_400.0))
}

fn tier_of(c: &hotlead::engine::Contact) -> usize {
    c.state.models[0].as_ref().map_or(0, |m| m.tier)
}

/// Checks the merged contact against the oracle, the visitor's keys, and
/// the contact's alerts; returns the contact's distinct alerts.
async fn check(
    stack: &Stack,
    topics: &Topics,
    rules: &RuleSet,
    (visitor, contact): (&str, &str),
    (vp, cp): (i32, i32),
    events: &[&InteractionEvent],
) {
    let (want, latest) = oracle(events);
    let c = stored(stack, topics, rules, contact, cp).expect("the contact is stored");
    let got = score_of(&c, latest);
    assert!((got - want).abs() <= 1e-9 * want, "merged score {got}, oracle {want}");
    let want_tier = if want >= 60.0 {
        2
    } else if want >= 30.0 {
        1
    } else {
        0
    };
    assert_eq!(tier_of(&c), want_tier, "tier of a score of {want}");
    // The visitor keeps a link to the contact and nothing else: no score,
    // no leaderboard or cooling entry.
    let v = stored(stack, topics, rules, visitor, vp).expect("the visitor's link");
    assert_eq!(v.state.links.into.as_deref(), Some(contact));
    let privacy = hotlead::config::PrivacyConfig::default();
    let view = hotlead::query::view(rules, visitor, vp, None, &v.state, latest, &privacy);
    assert_eq!(view.identified_as.as_deref(), Some(contact), "the read API names the contact it became");
    assert!(v.state.models.iter().all(Option::is_none) && v.state.profile.is_empty() && v.state.seen.is_empty());
    let mut r = stack.redis();
    let keys = hotlead::store::PartitionKeys::new(&topics.input, vp);
    for key in [keys.leaderboard("buying"), keys.cooling("buying")] {
        let score: Option<f64> = redis::cmd("ZSCORE").arg(&key).arg(visitor).query(&mut r).unwrap();
        assert_eq!(score, None, "{key} still ranks the visitor");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_on_another_partition_merges_exactly_and_once() {
    let stack = Stack::start();
    let topics = stack.topics(4).await;
    let (visitor, contact) = support::apart(&stack, 4, "c-ada").await;
    let (_dir, path) = rules_file(RULES);
    let rules = RuleSet::parse(RULES, "t").unwrap();
    let t0 = hotlead::decode::now_ms() / 1000 * 1000 - 3_600_000;
    let (before, id, after) = scenario(&visitor, &contact, t0);
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    let d = stack.produce_events(&topics.input, &before).await;
    let (vp, cp) = (d[1].0, d[0].0);
    assert_ne!(vp, cp, "the visitor and the contact sit on different partitions");
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    let alone = stored(&stack, &topics, &rules, &visitor, vp).unwrap();
    assert_eq!(tier_of(&alone), 2, "the visitor alone is hot");
    stack.produce_events(&topics.input, std::slice::from_ref(&id)).await;
    wait_until("the merge", || stored(&stack, &topics, &rules, &contact, cp).is_some_and(|c| tier_of(&c) == 2)).await;
    let so_far: Vec<&InteractionEvent> = before.iter().collect();
    check(&stack, &topics, &rules, (&visitor, &contact), (vp, cp), &so_far).await;

    // Later events under the anonymous id count for the contact; a repeat
    // of the identify, and of a visitor's event, change nothing.
    let d = stack.produce_events(&topics.input, &after).await;
    stack.produce_events(&topics.input, &[id.clone(), after[0].clone()]).await;
    let (want, latest) = oracle(&before.iter().chain(&after).collect::<Vec<_>>());
    wait_until("the visitor's later events", || {
        stored(&stack, &topics, &rules, &contact, cp).is_some_and(|c| (score_of(&c, latest) - want).abs() < 1e-6)
    })
    .await;
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.finish().await;
    let all: Vec<&InteractionEvent> = before.iter().chain(&after).collect();
    check(&stack, &topics, &rules, (&visitor, &contact), (vp, cp), &all).await;

    // The contact's alerts: one HEATED into hot, raised by the identify.
    let alerts = stack.alerts(&topics.alerts, Duration::from_secs(3)).await;
    let mine: Vec<_> = alerts.iter().filter(|a| a.contact_id == contact).collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!((mine[0].tier.as_str(), mine[0].previous_tier.as_str()), ("hot", "cold"));
    assert_eq!(mine[0].direction, score_alert::Direction::Heated as i32);
    assert_eq!(mine[0].trigger_event_id, "v-identify");

    // `hotlead rules test` gives the same score offline.
    let report =
        hotlead::replay::replay(&rules, &before.iter().chain([&id]).chain(&after).cloned().collect::<Vec<_>>());
    let offline = &report.contacts[&contact][0];
    let stored_now = stored(&stack, &topics, &rules, &contact, cp).unwrap();
    let view = hotlead::query::model_views(&rules, &stored_now.state, Millis::MIN);
    assert!((offline.score - view[0].score).abs() <= 1e-9 * offline.score);
    assert!(!report.contacts.contains_key(&visitor), "the visitor is the contact now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_the_merge_neither_loses_nor_doubles_it() {
    let stack = Stack::start();
    let topics = stack.topics(4).await;
    let (visitor, contact) = support::apart(&stack, 4, "c-ada").await;
    let (dir, path) = rules_file(RULES);
    let log = dir.path().join("hotlead.log");
    let rules = RuleSet::parse(RULES, "t").unwrap();
    let t0 = hotlead::decode::now_ms() / 1000 * 1000 - 3_600_000;
    let (before, id, after) = scenario(&visitor, &contact, t0);
    let d = stack.produce_events(&topics.input, &before).await;
    let (vp, cp) = (d[1].0, d[0].0);
    let mut first = stack.spawn_hotlead(&topics, &path, &log, &["run"], &[("RUST_LOG", "info")]);
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    // The identify and the visitor's next events in one go; the process
    // dies the moment the visitor's side of the merge is committed.
    let mut burst = vec![id.clone()];
    burst.extend(after.iter().cloned());
    stack.produce_events(&topics.input, &burst).await;
    wait_until("the visitor's side of the merge", || {
        stored(&stack, &topics, &rules, &visitor, vp).is_some_and(|v| v.state.links.into.is_some())
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    let merged_at_kill = stored(&stack, &topics, &rules, &contact, cp).is_some_and(|c| tier_of(&c) == 2);
    eprintln!("at the kill, the contact had the merge: {merged_at_kill}");

    let mut second = stack.spawn_hotlead(&topics, &path, &log, &["run"], &[("RUST_LOG", "info")]);
    let (want, latest) = oracle(&before.iter().chain(&after).collect::<Vec<_>>());
    wait_until("the merge after the restart", || {
        stored(&stack, &topics, &rules, &contact, cp).is_some_and(|c| (score_of(&c, latest) - want).abs() < 1e-6)
    })
    .await;
    // A repeat of the identify changes nothing, either.
    let d = stack.produce_events(&topics.input, std::slice::from_ref(&id)).await;
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    second.kill().unwrap();
    second.wait().unwrap();
    let all: Vec<&InteractionEvent> = before.iter().chain(&after).collect();
    check(&stack, &topics, &rules, (&visitor, &contact), (vp, cp), &all).await;
    let alerts = stack.alerts(&topics.alerts, Duration::from_secs(3)).await;
    let ids: std::collections::BTreeSet<&str> =
        alerts.iter().filter(|a| a.contact_id == contact).map(|a| a.alert_id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one crossing for the contact, however often it was delivered");
}
