//! Erasure (GDPR Art. 17): `hotlead erase` removes every trace of a contact
//! from Redis (state, leaderboard and cooling entries, event ids, recent
//! alerts naming it), publishes an erasure record, scores none of its later
//! events, and the contact stays gone after `run --rebuild` scores the
//! topic again from its start. The logs never name it.

mod support;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hotlead::proto::{ContactErased, InteractionEvent};
use prost::Message as _;
use support::{last_offsets, page, rules_file, Stack};

const RULES: &str = r#"
models:
  - name: buying
    half_life: 1d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - { id: pricing, when: { kind: page_view, url: { prefix: /pricing } }, points: 25 }
"#;

const GONE: &str = "erin.gone@example.org";
const KEPT: &str = "kai.kept@example.org";

/// Debug logs, to show they never name an erased contact.
const LOGS: &[(&str, &str)] = &[("RUST_LOG", "debug,rdkafka=info,librdkafka=info")];

/// Every place in Redis that holds `needle`: key names, hash fields and
/// values, sorted-set members, stream entries, strings.
fn traces(stack: &Stack, needle: &str) -> Vec<String> {
    let mut r = stack.redis();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut r).unwrap();
    let has = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle.as_bytes());
    let mut found = vec![];
    for key in keys {
        if key.contains(needle) {
            found.push(format!("key {key}"));
            continue;
        }
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut r).unwrap();
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "hash" => redis::cmd("HGETALL").arg(&key).query(&mut r).unwrap(),
            "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query(&mut r).unwrap(),
            "string" => vec![redis::cmd("GET").arg(&key).query(&mut r).unwrap()],
            "stream" => {
                let entries: Vec<(String, Vec<Vec<u8>>)> =
                    redis::cmd("XRANGE").arg(&key).arg("-").arg("+").query(&mut r).unwrap();
                entries.into_iter().flat_map(|(_, f)| f).collect()
            }
            "set" => redis::cmd("SMEMBERS").arg(&key).query(&mut r).unwrap(),
            "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query(&mut r).unwrap(),
            // Deleted since it was listed.
            "none" => continue,
            other => panic!("{key}: a {other} this test does not read"),
        };
        if values.iter().any(|v| has(v)) {
            found.push(format!("{kind} {key}"));
        }
    }
    found.sort();
    found
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        if Instant::now() > deadline {
            eprintln!("{what}: not within 30 s");
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn stop(mut child: Child) {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_contact_leaves_no_trace_and_stays_gone_after_a_rebuild() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let (dir, path) = rules_file(RULES);
    let log = dir.path().join("hotlead.log");
    let t0 = hotlead::decode::now_ms() / 1000 * 1000 - 3_600_000;
    let mut events: Vec<InteractionEvent> = vec![];
    for (i, who) in [GONE, KEPT, GONE, KEPT, GONE, KEPT].iter().enumerate() {
        let mut e = page(&format!("e{i}"), who, t0 + i as i64 * 60_000, "/pricing");
        e.account_id = "acme".into();
        events.push(e);
    }
    let d = stack.produce_events(&topics.input, &events).await;
    let run = stack.spawn_hotlead(&topics, &path, &log, &["run"], LOGS);
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    // Both hot: a state, leaderboard and cooling entries, recent alerts.
    let before = traces(&stack, GONE);
    // The outbox empties as the relay delivers: not part of what is kept.
    let lasting =
        |who: &str| -> Vec<String> { traces(&stack, who).into_iter().filter(|t| !t.ends_with(":outbox")).collect() };
    let kept = lasting(KEPT);
    assert!(before.iter().any(|t| t.contains(":states")), "{before:?}");
    assert!(before.iter().any(|t| t.contains(":lb:")) && before.iter().any(|t| t.contains(":cool:")), "{before:?}");
    assert!(before.iter().any(|t| t.contains(":recent")), "{before:?}");

    let erase =
        stack.spawn_hotlead(&topics, &path, &log, &["erase", GONE, "--by", "dpo@acme", "--reason", "ticket 7"], LOGS);
    let status = erase.wait_with_output().unwrap().status;
    assert!(status.success(), "hotlead erase: {status}: {}", std::fs::read_to_string(&log).unwrap());
    wait_for("the erasure", || traces(&stack, GONE).is_empty())
        .await
        .unwrap_or_else(|()| panic!("{:?}", traces(&stack, GONE)));
    assert_eq!(lasting(KEPT), kept, "the other contact keeps everything");

    // The erasure record, for the systems downstream.
    let records = stack.read_all(&topics.erasures, 1, Duration::from_secs(10)).await;
    assert_eq!(records.len(), 1);
    let record = ContactErased::decode(records[0].payload.as_slice()).unwrap();
    assert_eq!(
        (record.contact_id.as_str(), record.requested_by.as_str(), record.reason.as_str()),
        (GONE, "dpo@acme", "ticket 7")
    );

    // Its later events are not scored.
    let d = stack.produce_events(&topics.input, &[page("late", GONE, t0 + 600_000, "/pricing")]).await;
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    assert_eq!(traces(&stack, GONE), Vec::<String>::new());
    let naming = |alerts: &[hotlead::proto::ScoreAlert]| alerts.iter().filter(|a| a.contact_id == GONE).count();
    let alerts_before = stack.alerts(&topics.alerts, Duration::from_secs(3)).await;
    assert!(naming(&alerts_before) > 0, "it was alerted on before its erasure");
    stop(run);

    // Redis loses everything; a rebuild scores the topic again from its
    // start. The tombstones come back first (from the erasure topic): the
    // erased contact is never scored again, not even for a moment, and no
    // alert names it again.
    let _: () = redis::cmd("FLUSHALL").query(&mut stack.redis()).unwrap();
    let rebuild = stack.spawn_hotlead(&topics, &path, &log, &["run", "--rebuild"], LOGS);
    let last = last_offsets(&d);
    wait_for("the rebuild", || last.iter().all(|(p, o)| stack.watermarks(&topics).get(p).is_some_and(|w| w >= o)))
        .await
        .unwrap_or_else(|()| {
            let text = std::fs::read_to_string(&log).unwrap();
            std::fs::write("/tmp/erasure-rebuild.log", &text).unwrap();
            let tail: Vec<&str> = text.lines().filter(|l| !l.contains("DEBUG")).collect();
            panic!("{}", tail[tail.len().saturating_sub(30)..].join("\n"))
        });
    wait_for("the other contact's rebuild", || lasting(KEPT) == kept)
        .await
        .unwrap_or_else(|()| panic!("{:?} vs {kept:?}", lasting(KEPT)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(traces(&stack, GONE), Vec::<String>::new(), "erased, and still erased after the rebuild");
    stop(rebuild);
    let alerts_after = stack.alerts(&topics.alerts, Duration::from_secs(3)).await;
    assert!(alerts_after.len() > alerts_before.len(), "the rebuild raised the other contact's alerts again");
    assert_eq!(naming(&alerts_after), naming(&alerts_before), "no new alert names the erased contact");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Erased a contact"), "the erasure is logged");
    let naming: Vec<&str> = text.lines().filter(|l| l.contains(GONE)).collect();
    assert!(naming.is_empty(), "logs name the erased contact: {naming:?}");
}

/// Calls the API's router as the listener would; returns the status and
/// the JSON body.
async fn call(router: &axum::Router, method: &str, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    use tower::ServiceExt as _;
    let mut req = axum::http::Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = router.clone().oneshot(req.body(axum::body::Body::empty()).unwrap()).await.unwrap();
    let status = res.status().as_u16();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_erases_through_the_api_and_needs_the_token() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, path) = rules_file(RULES);
    let t0 = hotlead::decode::now_ms() / 1000 * 1000 - 3_600_000;
    let events = vec![page("e1", GONE, t0, "/pricing"), page("e2", GONE, t0 + 1000, "/pricing")];
    let d = stack.produce_events(&topics.input, &events).await;
    let running = support::spawn_pipeline(stack.config(&topics, &path), &path);
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    let router = |token: Option<&str>| {
        let token = token.map(str::to_string);
        let (rules, status, input, brokers, url) = (
            running.rules.clone(),
            running.status.clone(),
            topics.input.clone(),
            stack.brokers.clone(),
            stack.redis_url.clone(),
        );
        async move {
            let store = hotlead::store::Store::connect(&url).await.unwrap();
            let client = hotlead::kafka::client_config(&brokers, &[]);
            let mut ctx = hotlead::api::ApiContext::new(store, rules, status, input, &client).unwrap();
            ctx.token = token;
            hotlead::api::router(ctx)
        }
    };
    let path = format!("/v1/contacts/{GONE}");
    let (status, body) = call(&router(None).await, "DELETE", &path, None).await;
    assert_eq!(status, 403, "no token configured: no erasure ({body})");
    let api = router(Some("s3cret")).await;
    assert_eq!(call(&api, "DELETE", &path, Some("wrong")).await.0, 401);
    assert_eq!(call(&api, "GET", &path, Some("s3cret")).await.0, 200);
    let (status, body) = call(&api, "DELETE", &format!("{path}?by=dpo&reason=ticket%209"), Some("s3cret")).await;
    assert_eq!(status, 202, "{body}");
    assert!(body["request_id"].as_str().unwrap().starts_with("erase-"));
    wait_for("the erasure", || traces(&stack, GONE).is_empty())
        .await
        .unwrap_or_else(|()| panic!("{:?}", traces(&stack, GONE)));
    let (status, _) = call(&api, "GET", &path, Some("s3cret")).await;
    assert_eq!(status, 404, "an erased contact is not found");
    let records = stack.read_all(&topics.erasures, 1, Duration::from_secs(10)).await;
    let record = ContactErased::decode(records[0].payload.as_slice()).unwrap();
    assert_eq!((record.requested_by.as_str(), record.reason.as_str()), ("dpo", "ticket 9"));
    running.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_contact_erases_the_visitors_merged_into_it() {
    let stack = Stack::start();
    let topics = stack.topics(4).await;
    let (visitor, contact) = support::apart(&stack, 4, GONE).await;
    let (_dir, path) = rules_file(RULES);
    let t0 = hotlead::decode::now_ms() / 1000 * 1000 - 3_600_000;
    let identify = InteractionEvent {
        interaction: Some(hotlead::proto::interaction_event::Interaction::Identify(hotlead::proto::Identify {
            contact_id: contact.clone(),
        })),
        ..page("v-id", &visitor, t0 + 2000, "/")
    };
    let events = vec![page("v-1", &visitor, t0, "/pricing"), page("c-1", &contact, t0 + 1000, "/pricing"), identify];
    let running = support::spawn_pipeline(stack.config(&topics, &path), &path);
    stack.produce_events(&topics.input, &events).await;
    // The merge reached the contact: the visitor's link on its partition,
    // the visitor's id among the contact's links on the other.
    wait_for("the merge", || traces(&stack, &visitor).iter().filter(|t| t.contains(":states")).count() == 2)
        .await
        .unwrap();
    let config = stack.config(&topics, &path);
    let client = config.client_config();
    let producer = hotlead::kafka::event_producer(&client).unwrap();
    let erase = hotlead::kafka::erasure_request(&contact, "dpo", "", hotlead::decode::now_ms());
    hotlead::kafka::send_event(&producer, &topics.input, &erase).await.unwrap();
    wait_for("both erased", || traces(&stack, &contact).is_empty() && traces(&stack, &visitor).is_empty())
        .await
        .unwrap_or_else(|()| panic!("{:?} / {:?}", traces(&stack, &contact), traces(&stack, &visitor)));
    let records = stack.read_all(&topics.erasures, 2, Duration::from_secs(10)).await;
    let mut erased: Vec<String> =
        records.iter().map(|r| ContactErased::decode(r.payload.as_slice()).unwrap().contact_id).collect();
    erased.sort();
    let mut want = vec![contact.clone(), visitor.clone()];
    want.sort();
    assert_eq!(erased, want, "one erasure record for the contact, one for the visitor it was");
    // The visitor's cookie comes back: its events are not scored.
    let d = stack.produce_events(&topics.input, &[page("v-2", &visitor, t0 + 9000, "/pricing")]).await;
    stack.wait_applied(&topics, &last_offsets(&d), Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(traces(&stack, &visitor).is_empty() && traces(&stack, &contact).is_empty());
    running.finish().await;
}
