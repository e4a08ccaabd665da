//! Nothing applied twice, nothing scored from a blank slate by mistake:
//! repeated event ids count once, and a Redis that lost a partition's state
//! stops the pipeline unless a rebuild from the start of the topic is asked
//! for.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use hotlead::proto::interaction_event::Interaction;
use hotlead::proto::{EmailEngagement, InteractionEvent, PageView};
use support::{close, last_offsets, rules_file, spawn_pipeline, Stack, Topics};

const RULES: &str = "models: [{name: m, half_life: 7d, tiers: [{name: warm, enter: 30, exit: 20}], rules: [{id: p, when: {kind: page_view}, points: 10}, {id: e, when: {kind: email_engagement}, points: 1}]}]";

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
                let s: Option<String> = redis::cmd("HGET").arg(key).arg("m:s").query(&mut r).unwrap();
                s.map(|s| (c.to_string(), s.parse().unwrap()))
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
