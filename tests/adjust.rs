//! Manual adjustments on the real stack: posted to the API (or sent with
//! `hotlead adjust`), produced to the input topic, applied by the
//! partition's owner like any event; shown in the breakdown decayed
//! exactly; raising and lowering tiers with alerts; a reset to zero; the
//! write path's refusals; a bad adjustment dead-lettered with its reason;
//! and `rules test` agreeing with the service.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use hotlead::proto::interaction_event::Interaction;
use hotlead::proto::score_alert::Direction;
use hotlead::proto::{Adjustment, InteractionEvent, ProfileUpdate};
use hotlead::rules::RuleSet;
use serde_json::{json, Value};
use support::{close, last_offsets, rules_file, spawn_pipeline, Stack};
use tower::ServiceExt as _;

const DAY: i64 = 86_400_000;
const HALF_LIFE_MS: f64 = 2.0 * DAY as f64;

const RULES: &str = r#"
models:
  - name: engagement
    half_life: 2d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - { id: pricing, when: { kind: page_view, url: { prefix: /pricing } }, points: 10 }
  - name: fit
    half_life: 365d
    fit:
      - { id: founder, when: { job_title: Founder }, points: 20 }
"#;

/// Calls the router as the listener would; returns the status and the JSON
/// body.
async fn call(router: &axum::Router, method: &str, path: &str, body: Value, token: Option<&str>) -> (u16, Value) {
    let mut req = axum::http::Request::builder().method(method).uri(path).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = if body.is_null() { String::new() } else { body.to_string() };
    let res = router.clone().oneshot(req.body(axum::body::Body::from(body)).unwrap()).await.unwrap();
    let status = res.status().as_u16();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// The router of a running service's API, with `token`.
async fn router(stack: &Stack, running: &support::Running, input: &str, token: Option<&str>) -> axum::Router {
    let store = hotlead::store::Store::connect(&stack.redis_url).await.unwrap();
    let mut ctx = hotlead::api::ApiContext::new(
        store,
        running.rules.clone(),
        running.status.clone(),
        input.to_string(),
        &hotlead::kafka::client_config(&stack.brokers, &[]),
    )
    .unwrap();
    ctx.token = token.map(str::to_string);
    hotlead::api::router(ctx)
}

/// The event the API produced for an accepted request, rebuilt from the
/// request and the answer (event id, time).
fn produced(contact: &str, request: &Value, answer: &Value) -> InteractionEvent {
    InteractionEvent {
        event_id: answer["event_id"].as_str().unwrap().into(),
        contact_id: contact.into(),
        occurred_at: Some(hotlead::decode::timestamp(answer["occurred_at_ms"].as_i64().unwrap())),
        interaction: Some(Interaction::Adjustment(Adjustment {
            model: request["model"].as_str().unwrap().into(),
            points: request["points"].as_f64().unwrap_or(0.0),
            reason: request["reason"].as_str().unwrap().into(),
            by: request["by"].as_str().unwrap_or("").into(),
            reset: request["reset"].as_bool().unwrap_or(false),
        })),
        ..Default::default()
    }
}

/// Where an accepted adjustment landed: partition and offset.
fn landed_at(answer: &Value) -> (i32, i64) {
    (answer["partition"].as_i64().unwrap() as i32, answer["offset"].as_i64().unwrap())
}

/// A produced event as the oracle takes it: partition, offset, key, payload.
fn message(at: (i32, i64), event: &InteractionEvent) -> (i32, i64, Vec<u8>, Vec<u8>) {
    (at.0, at.1, event.contact_id.clone().into_bytes(), prost::Message::encode_to_vec(event))
}

/// `points` made at `t`, decayed to `at`.
fn decayed(points: f64, t: i64, at: i64) -> f64 {
    points * (-((at - t) as f64) / HALF_LIFE_MS).exp2()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adjustment_is_applied_by_the_partition_owner_and_shows_in_the_breakdown() {
    let stack = Stack::start();
    let topics = stack.topics(3).await;
    let (_dir, path) = rules_file(RULES);
    let rules = RuleSet::parse(RULES, "rules").unwrap();
    let now = hotlead::decode::now_ms() / 1000 * 1000;

    // Dana: a founder with four pricing views in the last hours: warm.
    let mut events = vec![InteractionEvent {
        event_id: "p0".into(),
        contact_id: "dana".into(),
        occurred_at: Some(hotlead::decode::timestamp(now - 5 * 3_600_000)),
        interaction: Some(Interaction::ProfileUpdate(ProfileUpdate {
            attributes: [("job_title".to_string(), "Founder".to_string())].into(),
        })),
        ..Default::default()
    }];
    for k in 1..=4 {
        events.push(support::page(&format!("v{k}"), "dana", now - (5 - k) * 3_600_000, "/pricing"));
    }
    events.push(support::page("o1", "omar", now - 3_600_000, "/pricing"));
    let delivered = stack.produce_events(&topics.input, &events).await;
    let mut landed = support::landed(&events, &delivered);
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(60)).await;
    let api = router(&stack, &running, &topics.input, Some("s3cret")).await;
    let token = Some("s3cret");

    // +35 for meeting at a trade show lifts Dana from warm to hot.
    let request = json!({"model": "engagement", "points": 35, "reason": "met at trade show", "by": "jane@sales"});
    let (status, answer) = call(&api, "POST", "/v1/contacts/dana/adjustments", request.clone(), token).await;
    assert_eq!(status, 202, "{answer}");
    assert!(answer["event_id"].as_str().unwrap().starts_with("adj-"), "{answer}");
    let t = answer["occurred_at_ms"].as_i64().unwrap();
    assert!((now..now + 60_000).contains(&t), "dated now: {t}");
    let adjustment = produced("dana", &request, &answer);
    landed.push(message(landed_at(&answer), &adjustment));
    stack.wait_applied(&topics, &HashMap::from([landed_at(&answer)]), Duration::from_secs(30)).await;

    // The breakdown shows it under its reason, decayed exactly, a day later.
    let at = t + DAY;
    let (status, body) = call(&api, "GET", &format!("/v1/contacts/dana?at={at}"), Value::Null, token).await;
    assert_eq!(status, 200, "{body}");
    let engagement = &body["models"][0];
    assert_eq!(engagement["model"], "engagement");
    let part = |name: &str| {
        engagement["breakdown"].as_array().unwrap().iter().find(|p| p[0] == name).map(|p| p[1].as_f64().unwrap())
    };
    let shown = part("adjustment:met at trade show").expect("the adjustment in the breakdown");
    assert!(close(shown, decayed(35.0, t, at)), "{shown} vs {}", decayed(35.0, t, at));
    let views: f64 = (1..=4).map(|k| decayed(10.0, now - (5 - k) * 3_600_000, at)).sum();
    assert!(close(part("pricing").unwrap(), views));
    assert!(close(engagement["score"].as_f64().unwrap(), views + decayed(35.0, t, at)));
    assert_eq!(engagement["tier"], "hot");
    assert_eq!(body["models"][1]["score"], 20.0, "fit untouched");

    // It raised HEATED warm -> hot, triggered by the adjustment.
    let alerts = stack.settled_alerts(&topics.alerts, 2, Duration::from_secs(30)).await;
    let heated: Vec<_> = alerts.iter().filter(|a| a.contact_id == "dana").collect();
    assert_eq!(heated.len(), 2, "{alerts:?}");
    let hot = heated[1];
    assert_eq!(
        (hot.direction, hot.tier.as_str(), hot.previous_tier.as_str()),
        (Direction::Heated as i32, "hot", "warm")
    );
    assert_eq!(hot.trigger_event_id, adjustment.event_id);
    let why: Vec<(&str, f64)> = hot.top_contributions.iter().map(|c| (c.rule_id.as_str(), c.points)).collect();
    assert_eq!(why.len(), 2, "{why:?}");
    assert_eq!(why[1], ("adjustment:met at trade show", 35.0), "the views (39.4) first");

    // A reset brings the behaviour part to zero (fit stays) and cools Dana.
    let request = json!({"model": "engagement", "reset": true, "reason": "wrong contact", "by": "jane@sales"});
    let (status, answer) = call(&api, "POST", "/v1/contacts/dana/adjustments", request.clone(), token).await;
    assert_eq!(status, 202, "{answer}");
    let reset = produced("dana", &request, &answer);
    landed.push(message(landed_at(&answer), &reset));
    stack.wait_applied(&topics, &HashMap::from([landed_at(&answer)]), Duration::from_secs(30)).await;
    let (_, body) = call(&api, "GET", &format!("/v1/contacts/dana?at={at}"), Value::Null, token).await;
    assert_eq!(body["models"][0]["score"], 0.0, "{body}");
    assert_eq!(body["models"][0]["tier"], "cold");
    assert_eq!(body["models"][0]["breakdown"], json!([]));
    assert_eq!(body["models"][1]["score"], 20.0, "fit stays");
    let alerts = stack.settled_alerts(&topics.alerts, 3, Duration::from_secs(30)).await;
    let cooled = alerts.iter().find(|a| a.direction == Direction::Cooled as i32).expect("a COOLED alert");
    assert_eq!(
        (cooled.contact_id.as_str(), cooled.tier.as_str(), cooled.previous_tier.as_str()),
        ("dana", "cold", "hot")
    );
    assert_eq!(cooled.trigger_event_id, reset.event_id);

    // `hotlead adjust` produces the same kind of event; a model that went
    // away is refused before anything is produced.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hotlead"))
        .args(["adjust", "omar", "--model", "engagement", "--points", "-2.5", "--reason", "phone call", "--by", "sam"])
        .envs(stack.env(&topics, &path))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let words: Vec<&str> = text.split_whitespace().collect();
    let (id, partition, offset) = (words[0], words[words.len() - 3], words[words.len() - 1]);
    let (partition, offset): (i32, i64) = (partition.parse().unwrap(), offset.parse().unwrap());
    stack.wait_applied(&topics, &HashMap::from([(partition, offset)]), Duration::from_secs(30)).await;
    let (_, body) = call(&api, "GET", "/v1/contacts/omar", Value::Null, token).await;
    let omar: Vec<&str> =
        body["models"][0]["breakdown"].as_array().unwrap().iter().map(|p| p[0].as_str().unwrap()).collect();
    assert_eq!(omar, ["pricing", "adjustment:phone call"], "{body}");
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_hotlead"))
        .args(["adjust", "omar", "--model", "nosuch", "--points", "5", "--reason", "x"])
        .envs(stack.env(&topics, &path))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no model `nosuch`"));
    let cli = InteractionEvent {
        event_id: id.into(),
        contact_id: "omar".into(),
        interaction: Some(Interaction::Adjustment(Adjustment {
            model: "engagement".into(),
            points: -2.5,
            reason: "phone call".into(),
            by: "sam".into(),
            reset: false,
        })),
        ..Default::default()
    };
    running.finish().await;

    // Offline, the same events give the stored states field for field
    // (the oracle), and `rules test` the same scores. The CLI's event time
    // is the stored state's.
    let mut r = stack.redis();
    let omar_key = hotlead::store::PartitionKeys::new(&topics.input, partition).contact("omar");
    let omar = support::stored_contact(&mut r, &rules, &omar_key).unwrap();
    let at_ms = omar.state.models[0].as_ref().unwrap().at_ms;
    let cli = InteractionEvent { occurred_at: Some(hotlead::decode::timestamp(at_ms)), ..cli };
    landed.push(message((partition, offset), &cli));
    let oracle = support::oracle(&rules, &topics, landed.clone());
    let alert_ids: std::collections::BTreeSet<String> =
        stack.alerts(&topics.alerts, Duration::from_secs(5)).await.into_iter().map(|a| a.alert_id).collect();
    assert_eq!(alert_ids, oracle.alerts);
    assert_eq!(oracle.contacts.len(), 2);
    for (p, contact, want) in &oracle.contacts {
        let key = hotlead::store::PartitionKeys::new(&topics.input, *p).contact(contact);
        let got = support::stored_fields(&mut r, &rules, &key);
        for (field, value) in want {
            assert!(
                support::field_matches(field, got.get(field), value),
                "{contact} {field}: {:?} vs {value}",
                got.get(field)
            );
        }
    }
    let mut in_order = landed;
    in_order.sort_by_key(|(p, o, _, _)| (*p, *o));
    let lines: Vec<String> = in_order
        .iter()
        .map(|(_, _, _, payload)| hotlead::replay::to_json(&prost::Message::decode(payload.as_slice()).unwrap()))
        .collect();
    let parsed: Vec<InteractionEvent> = lines.iter().map(|l| hotlead::replay::parse_event(l).unwrap()).collect();
    let report = hotlead::replay::replay(&rules, &parsed);
    for (contact, views) in &report.contacts {
        let p = in_order.iter().find(|m| m.2 == contact.as_bytes()).unwrap().0;
        let key = hotlead::store::PartitionKeys::new(&topics.input, p).contact(contact);
        let stored = support::stored_contact(&mut r, &rules, &key).unwrap();
        for v in views {
            let m = rules.models.iter().position(|m| m.name == v.model).unwrap();
            let st = stored.state.models[m].as_ref().unwrap();
            let service = st.score_at(st.at_ms, rules.models[m].half_life_secs);
            assert!(close(service, v.score), "{contact} {}: service {service}, rules test {}", v.model, v.score);
            assert_eq!(rules.models[m].tier_name(st.tier), v.tier);
        }
    }
    assert_eq!(report.contacts["dana"][0].score, 0.0);
    assert_eq!(report.alerts.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_path_refuses_without_a_token_and_names_what_is_wrong() {
    let stack = Stack::start();
    let topics = stack.topics(1).await;
    let (_dir, path) = rules_file(RULES);
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    let open = router(&stack, &running, &topics.input, None).await;
    let locked = router(&stack, &running, &topics.input, Some("s3cret")).await;
    let good = json!({"model": "engagement", "points": 15, "reason": "met at trade show"});
    let post = "/v1/contacts/dana/adjustments";

    // Writes never go unauthenticated: no token configured, no write.
    let (status, body) = call(&open, "POST", post, good.clone(), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("http.token"), "{body}");
    let (status, _) = call(&open, "GET", "/v1/models", Value::Null, None).await;
    assert_eq!(status, 200, "reads stay open without a token, as before");
    let (status, body) = call(&locked, "POST", post, good.clone(), Some("wrong")).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = call(&locked, "POST", post, good.clone(), None).await;
    assert_eq!(status, 401);

    // A bad body: 400 with what is wrong and a reason code.
    let cases = [
        (json!({"model": "engagement", "points": 15}), "invalid_adjustment", "reason"),
        (json!({"model": "engagement", "points": 2e6, "reason": "x"}), "invalid_adjustment", "1000000"),
        (json!({"model": "engagement", "reason": "x"}), "missing_points", "points"),
        (json!({"model": "nosuch", "points": 1, "reason": "x"}), "unknown_model", "engagement, fit"),
        (json!({"model": "fit", "points": 1, "reason": "x"}), "fit_only_model", "fit"),
        (json!({"model": "engagement", "points": 1, "reason": "x", "occurred_at": "soon"}), "invalid_time", "soon"),
        (json!({"model": "engagement", "points": "many", "reason": "x"}), "invalid_body", "points"),
        (json!(["engagement"]), "invalid_body", "adjustment"),
    ];
    for (body, reason, mentions) in cases {
        let (status, answer) = call(&locked, "POST", post, body.clone(), Some("s3cret")).await;
        assert_eq!((status, answer["reason"].as_str()), (400, Some(reason)), "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(mentions), "{body}: {answer}");
    }
    let (status, answer) = call(&locked, "POST", post, Value::Null, Some("s3cret")).await;
    assert_eq!((status, answer["reason"].as_str()), (400, Some("invalid_body")), "an empty body");

    // Nothing refused reached the topic; the good one did.
    let (status, answer) = call(&locked, "POST", post, good, Some("s3cret")).await;
    assert_eq!(status, 202, "{answer}");
    let on_topic = stack.read_all(&topics.input, 10, Duration::from_secs(10)).await;
    assert_eq!(on_topic.len(), 1);
    assert_eq!(on_topic[0].key, b"dana");

    // A bad adjustment from another producer is dead-lettered with its
    // reason, and the partition goes on scoring.
    let bad = InteractionEvent {
        event_id: "bad-1".into(),
        contact_id: "dana".into(),
        occurred_at: Some(hotlead::decode::timestamp(hotlead::decode::now_ms())),
        interaction: Some(Interaction::Adjustment(Adjustment {
            model: "engagement".into(),
            points: f64::NAN,
            reason: "x".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let after = support::page("v1", "dana", hotlead::decode::now_ms(), "/pricing");
    let delivered = stack.produce_events(&topics.input, &[bad, after]).await;
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(30)).await;
    let dead = stack.read_all(&topics.dead_letter, 1, Duration::from_secs(30)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].headers["hotlead.reason"], "invalid_adjustment");
    assert!(dead[0].headers["hotlead.error"].contains("not a finite number"), "{:?}", dead[0].headers);
    let (_, body) = call(&locked, "GET", "/v1/contacts/dana", Value::Null, Some("s3cret")).await;
    let parts: Vec<&str> =
        body["models"][0]["breakdown"].as_array().unwrap().iter().map(|p| p[0].as_str().unwrap()).collect();
    assert_eq!(parts, ["adjustment:met at trade show", "pricing"], "{body}");
    running.finish().await;
}
