//! The pipeline end to end on a real broker and a real Redis: exact scores,
//! the exact alert set, and dead letters that never stop a partition.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use hotlead::proto::interaction_event::Interaction;
use hotlead::proto::{score_alert, FormSubmission, InteractionEvent, PageView, ScoreAlert, WebinarAttendance};
use prost::Message as _;
use support::{close, last_offsets, rules_file, spawn_pipeline, Stack, Topics};

const DAY: i64 = 86_400_000;

const RULES: &str = r#"
models:
  - name: engagement
    version: 7
    half_life: 1d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - { id: page-view, when: { kind: page_view }, points: 10 }
      - { id: form, when: { kind: form_submission }, points: 25 }
      - { id: webinar, when: { kind: webinar_attendance }, points: 30 }
"#;

fn t0() -> i64 {
    (hotlead::decode::now_ms() - 10 * DAY) / 1000 * 1000
}

fn event(id: &str, contact: &str, at_ms: i64, kind: &str) -> InteractionEvent {
    let interaction = match kind {
        "page" => Interaction::PageView(PageView { url: "/pricing".into(), ..Default::default() }),
        "form" => Interaction::FormSubmission(FormSubmission { form_id: "demo".into(), ..Default::default() }),
        "webinar" => Interaction::WebinarAttendance(WebinarAttendance {
            webinar_id: "w1".into(),
            attended: true,
            minutes_attended: 40,
        }),
        _ => unreachable!(),
    };
    InteractionEvent {
        event_id: id.into(),
        contact_id: contact.into(),
        occurred_at: Some(hotlead::decode::timestamp(at_ms)),
        interaction: Some(interaction),
        ..Default::default()
    }
}

/// A field of a contact's stored state (in its readable form), wherever
/// its partition is.
fn contact_field(stack: &Stack, topics: &Topics, contact: &str, field: &str) -> Option<String> {
    let mut r = stack.redis();
    let rules = hotlead::rules::RuleSet::parse(RULES, "t").unwrap();
    (0..topics.partitions).find_map(|p| {
        let key = hotlead::store::PartitionKeys::new(&topics.input, p).contact(contact);
        support::stored_fields(&mut r, &rules, &key).remove(field)
    })
}

fn score_of(stack: &Stack, topics: &Topics, contact: &str) -> f64 {
    contact_field(stack, topics, contact, "engagement:s")
        .unwrap_or_else(|| panic!("{contact} has no score"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_and_alerts_are_exact() {
    let stack = Stack::start();
    let topics = stack.topics(3).await;
    let (_dir, rules) = rules_file(RULES);
    let t0 = t0();
    let mut d = event("d1", "dana", t0, "webinar");
    d.account_id = "acme".into();
    let events = vec![
        // Alice heats to warm, then hot.
        event("a1", "alice", t0, "page"),
        event("a2", "alice", t0 + DAY, "form"),
        event("a3", "alice", t0 + 2 * DAY, "webinar"),
        event("a4", "alice", t0 + 2 * DAY, "form"),
        // Bob heats to warm, then cools by decay before his next visit.
        event("b1", "bob", t0, "page"),
        event("b2", "bob", t0, "page"),
        event("b3", "bob", t0, "page"),
        event("b4", "bob", t0 + 3 * DAY, "page"),
        // Carol's second event arrives late: it still counts, decayed.
        event("c1", "carol", t0 + DAY, "form"),
        event("c2", "carol", t0, "page"),
        // Dana is from an account.
        d,
    ];
    let delivered = stack.produce_events(&topics.input, &events).await;
    let running = spawn_pipeline(stack.config(&topics, &rules), &rules);
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(60)).await;

    // Exact scores: p * 2^(-(t_last - t)/H), H = 1 day.
    let expect = [
        ("alice", 10.0 / 4.0 + 25.0 / 2.0 + 30.0 + 25.0),
        ("bob", 30.0 / 8.0 + 10.0),
        ("carol", 25.0 + 5.0),
        ("dana", 30.0),
    ];
    for (contact, want) in expect {
        let got = score_of(&stack, &topics, contact);
        assert!(close(got, want), "{contact}: score {got}, want {want}");
    }
    assert_eq!(contact_field(&stack, &topics, "alice", "engagement:t"), Some((t0 + 2 * DAY).to_string()));
    assert_eq!(contact_field(&stack, &topics, "alice", "engagement:tier").as_deref(), Some("hot"));
    assert_eq!(contact_field(&stack, &topics, "bob", "engagement:tier").as_deref(), Some("cold"));
    assert_eq!(contact_field(&stack, &topics, "dana", "account").as_deref(), Some("acme"));

    // The exact alert set.
    let records = stack.read_all(&topics.alerts, 8, Duration::from_secs(20)).await;
    let more = stack.read_all(&topics.alerts, 9, Duration::from_secs(2)).await;
    assert_eq!(more.len(), 8, "exactly eight alerts");
    let alerts: Vec<ScoreAlert> = records.iter().map(|r| ScoreAlert::decode(r.payload.as_slice()).unwrap()).collect();
    for (r, a) in records.iter().zip(&alerts) {
        assert_eq!(r.key, a.contact_id.as_bytes(), "alerts are keyed by contact id");
        assert_eq!((a.model.as_str(), a.model_version), ("engagement", 7));
    }
    let heated = score_alert::Direction::Heated as i32;
    let cooled = score_alert::Direction::Cooled as i32;
    let mut got: Vec<(String, String, i32, f64)> =
        alerts.iter().map(|a| (a.contact_id.clone(), a.tier.clone(), a.direction, a.score)).collect();
    got.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)).then(a.3.total_cmp(&b.3)));
    let want = [
        // Alice's 30 decays below warm's exit (20) before her webinar on
        // day 2: she cools, then the webinar heats her to warm again.
        ("alice", "cold", cooled, 20.0),
        ("alice", "hot", heated, 70.0),
        ("alice", "warm", heated, 30.0),
        ("alice", "warm", heated, 45.0),
        ("bob", "cold", cooled, 20.0),
        ("bob", "warm", heated, 30.0),
        ("carol", "warm", heated, 30.0),
        ("dana", "warm", heated, 30.0),
    ];
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.0.as_str(), g.1.as_str(), g.2), (w.0, w.1, w.2), "{got:?}");
        assert!((g.3 - w.3).abs() <= 1e-6 * w.3, "{g:?} vs {w:?}");
    }
    let by = |c: &str, tier: &str| alerts.iter().rev().find(|a| a.contact_id == c && a.tier == tier).unwrap();
    let hot = by("alice", "hot");
    assert_eq!((hot.previous_tier.as_str(), hot.threshold, hot.trigger_event_id.as_str()), ("warm", 60.0, "a4"));
    let top: BTreeMap<&str, f64> = hot.top_contributions.iter().map(|c| (c.rule_id.as_str(), c.points)).collect();
    assert!(close(top["form"], 37.5) && close(top["webinar"], 30.0) && close(top["page-view"], 2.5), "{top:?}");
    let cool = by("bob", "cold");
    assert_eq!((cool.previous_tier.as_str(), cool.threshold, cool.trigger_event_id.as_str()), ("warm", 20.0, ""));
    let cooled_at = cool.crossed_at.as_ref().unwrap();
    let exact = t0 + (DAY as f64 * (30.0f64 / 20.0).log2()).ceil() as i64;
    assert_eq!(cooled_at.seconds * 1000 + i64::from(cooled_at.nanos) / 1_000_000, exact);
    assert_eq!(by("carol", "warm").trigger_event_id, "c2");
    assert_eq!(by("dana", "warm").account_id, "acme");
    let mut ids: Vec<&str> = alerts.iter().map(|a| a.alert_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8, "alert ids are distinct");

    // Nothing is dead-lettered; leaderboards rank by current score.
    assert!(stack.read_all(&topics.dead_letter, 1, Duration::from_secs(1)).await.is_empty());
    let mut r = stack.redis();
    let mut ranked: Vec<(String, f64)> = Vec::new();
    for p in 0..topics.partitions {
        let key = hotlead::store::PartitionKeys::new(&topics.input, p).leaderboard("engagement");
        let v: Vec<(String, f64)> =
            redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES").query(&mut r).unwrap();
        ranked.extend(v);
    }
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let order: Vec<&str> = ranked.iter().map(|(c, _)| c.as_str()).collect();
    // bob's 13.75 at his last event is under the leaderboard's floor (warm's
    // exit, 20): the cold are not kept there.
    assert_eq!(order, ["alice", "carol", "dana"], "at t0 + 3d: 70/2, 30/4, 30/8");

    running.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_input_is_dead_lettered_and_later_events_are_scored() {
    let stack = Stack::start();
    let topics = stack.topics(1).await;
    let (_dir, rules) = rules_file(RULES);
    let now = hotlead::decode::now_ms() / 1000 * 1000;
    let mut no_contact = event("p2", "", now, "page");
    no_contact.contact_id.clear();
    let mut future = event("p3", "zed", now, "page");
    future.occurred_at = Some(hotlead::decode::timestamp(now + 365 * DAY));
    let messages: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"zed".to_vec(), event("ok1", "zed", now, "page").encode_to_vec()),
        (b"junk".to_vec(), b"\x08\x96\x01 this is not an interaction event \xff\xff".to_vec()),
        (b"".to_vec(), no_contact.encode_to_vec()),
        (b"zed".to_vec(), future.encode_to_vec()),
        (b"zed".to_vec(), event("ok2", "zed", now, "form").encode_to_vec()),
    ];
    let delivered = stack.produce(&topics.input, &messages).await;
    let running = spawn_pipeline(stack.config(&topics, &rules), &rules);
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(60)).await;

    assert!(close(score_of(&stack, &topics, "zed"), 35.0), "both valid events scored");
    let dlq = stack.read_all(&topics.dead_letter, 3, Duration::from_secs(20)).await;
    assert_eq!(dlq.len(), 3);
    let reasons: Vec<&str> = dlq.iter().map(|r| r.headers["hotlead.reason"].as_str()).collect();
    assert_eq!(reasons, ["undecodable", "missing_contact_id", "future_timestamp"]);
    for (r, (_, offset)) in dlq.iter().zip(&delivered[1..4]) {
        assert_eq!(r.headers["hotlead.source.topic"], topics.input);
        assert_eq!(r.headers["hotlead.source.partition"], "0");
        assert_eq!(r.headers["hotlead.source.offset"], offset.to_string());
        assert!(!r.headers["hotlead.error"].is_empty());
    }
    assert_eq!(dlq[0].payload, messages[1].1, "the original payload is kept");
    assert_eq!(dlq[0].key, b"junk");

    running.finish().await;
}
