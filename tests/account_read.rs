//! The account read side against a real Redis and the real `hotlead`
//! binary: accounts stored under the account stage's layout (states hash,
//! leaderboard sorted sets, recent alerts stream, per partition of the
//! account topic) are served by `/v1/accounts/...`, `hotlead account` and
//! the board with the exact scores and shares `account::standing` gives.
//!
//! The account states are made by the pure account module
//! ([`hotlead::account::apply`]) and written straight into Redis, as the
//! account stage writes them.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hotlead::account::{self, AccountState};
use hotlead::proto::{AccountAlert, AccountContribution, ContactPart, InteractionEvent};
use hotlead::rules::RuleSet;
use hotlead::store::PartitionKeys;
use prost::Message as _;
use support::{free_port, http_get, last_offsets, rules_file, KillOnDrop, Stack, Topics};

const RULES: &str = r#"
models:
  - name: engagement
    half_life: 7d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - { id: pricing-page, when: { kind: page_view, url: { prefix: /pricing } }, points: 10 }
    account:
      breadth: warm
      top: 3
      weights: { attribute: role, values: { decision_maker: 2 }, default: 1 }
      tiers:
        - { name: engaged, enter: 50, exit: 40 }
        - { name: buying, enter: 120, exit: 100, min_contacts: 3 }
  - name: fit-only
    half_life: 365d
    fit:
      - { id: chief, when: { job_title: { regex: '(?i)chief' } }, points: 20 }
"#;

const HOUR: i64 = 3_600_000;
const TOKEN: &str = "acct-token";

/// One contact's part: (contact, behaviour points, its tier, role).
type Member<'a> = (&'a str, f64, &'a str, &'a str);

/// An account state made by applying each member's contribution at `at`,
/// and the alerts it raised.
fn account_state(rules: &RuleSet, account: &str, at: i64, members: &[Member]) -> (AccountState, Vec<AccountAlert>) {
    let mut state = AccountState::default();
    let mut alerts = Vec::new();
    for (i, (contact, b, tier, role)) in members.iter().enumerate() {
        let c = AccountContribution {
            account_id: account.into(),
            contact_id: contact.to_string(),
            topic: "interactions".into(),
            partition: 0,
            offset: i as i64,
            event_id: format!("{contact}-e{i}"),
            occurred_at: Some(hotlead::decode::timestamp(at + i as i64 * 1000)),
            left: false,
            parts: vec![ContactPart {
                model: "engagement".into(),
                behaviour: *b,
                at_ms: at + i as i64 * 1000,
                fit: 0.0,
                tier: tier.to_string(),
            }],
            attributes: BTreeMap::from([("role".to_string(), role.to_string())]),
            erased: false,
        };
        account::apply(rules, account, &mut state, &c, &mut alerts);
    }
    (state, alerts)
}

/// Writes an account as the account stage does: its state, its leaderboard
/// entry in each roll-up, and its alerts on the partition's recent stream
/// (stream ids by crossing time, so they merge newest first).
fn store_account(
    redis: &mut redis::Connection,
    rules: &RuleSet,
    topic: &str,
    partition: i32,
    id: &str,
    state: &AccountState,
    alerts: &[AccountAlert],
) {
    let keys = PartitionKeys::new(topic, partition);
    let _: () = redis::cmd("HSET").arg(keys.states()).arg(id).arg(state.encode()).query(redis).unwrap();
    for (m, r) in account::models(rules) {
        if let Some(z) = account::leaderboard_value(m, r, state) {
            let _: () = redis::cmd("ZADD").arg(keys.leaderboard(&m.name)).arg(z).arg(id).query(redis).unwrap();
        }
    }
    for a in alerts {
        let ms = hotlead::decode::millis(a.crossed_at.as_ref().unwrap());
        let _: String = redis::cmd("XADD")
            .arg(keys.recent_alerts())
            .arg(format!("{ms}-*"))
            .arg("alert")
            .arg(a.encode_to_vec())
            .query(redis)
            .unwrap();
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Starts `hotlead run` listening on a free port with the token; waits
/// until it answers.
fn serve(stack: &Stack, topics: &Topics, rules: &std::path::Path, log: &std::path::Path) -> (KillOnDrop, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = stack.spawn_hotlead(
        topics,
        rules,
        log,
        &["run"],
        // The contact stage alone: the accounts read here are written by
        // the test, not rolled up from the contacts' events.
        &[("HOTLEAD_HTTP__LISTEN", &listen), ("HOTLEAD_HTTP__TOKEN", TOKEN), ("HOTLEAD_PIPELINE__STAGES", "contacts")],
    );
    let child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "hotlead did not listen: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_served_with_the_exact_standing() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let (dir, path) = rules_file(RULES);
    let rules = RuleSet::load(&path).unwrap();
    let (model, rollup) = account::models(&rules).next().unwrap();
    let t = hotlead::decode::now_ms() - 6 * HOUR;

    // acme: four contacts, the top three count; buying. globex: two,
    // engaged. initech: one warm contact. All on the account topic's two
    // partitions.
    let accounts: Vec<(&str, i32, Vec<Member>)> = vec![
        (
            "acme",
            0,
            vec![
                ("ann", 50.0, "warm", "staff"),
                ("bob", 40.0, "warm", "decision_maker"),
                ("cat", 35.0, "warm", "staff"),
                ("dan", 12.0, "cold", "staff"),
            ],
        ),
        ("globex", 1, vec![("gus", 30.0, "warm", "staff"), ("gil", 25.0, "warm", "staff")]),
        ("initech", 1, vec![("ivy", 31.0, "warm", "staff")]),
    ];
    let mut redis = stack.redis();
    let mut states = BTreeMap::new();
    let mut all_alerts = Vec::new();
    for (id, p, members) in &accounts {
        let (state, alerts) = account_state(&rules, id, t, members);
        store_account(&mut redis, &rules, &topics.account_contributions, *p, id, &state, &alerts);
        all_alerts.extend(alerts);
        states.insert(id.to_string(), (*p, state));
    }
    assert_eq!(states["acme"].1.tiers["engagement"], "buying");
    assert_eq!(states["globex"].1.tiers["engagement"], "engaged");

    // Contacts scored by the pipeline, with their account ids.
    let at = t + HOUR;
    let ev = |i: usize, contact: &str, account: &str| InteractionEvent {
        event_id: format!("{contact}-{i}"),
        contact_id: contact.into(),
        account_id: account.into(),
        occurred_at: Some(hotlead::decode::timestamp(t)),
        interaction: Some(hotlead::proto::interaction_event::Interaction::PageView(hotlead::proto::PageView {
            url: "/pricing".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let events: Vec<InteractionEvent> = (0..5).map(|i| ev(i, "ann", "acme")).chain([ev(9, "gus", "globex")]).collect();
    let delivered = stack.produce_events(&topics.input, &events).await;

    let log = dir.path().join("hotlead.log");
    let (_hotlead, port) = serve(&stack, &topics, &path, &log);
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(60)).await;
    let get = |p: String| tokio::task::spawn_blocking(move || http_get(port, &p, Some(TOKEN)));

    // The account: each model's standing at `at`, as account::standing says.
    let (status, body) = get(format!("/v1/accounts/acme?at={at}")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["account_id"].as_str(), body["partition"].as_i64(), body["at_ms"].as_i64()),
        (Some("acme"), Some(0), Some(at))
    );
    let models = body["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "only the model with a roll-up: {body}");
    let m = &models[0];
    let want = account::standing(model, rollup, &states["acme"].1, at);
    assert_eq!(m["model"], "engagement");
    assert!(close(m["score"].as_f64().unwrap(), want.score), "{} vs {}", m["score"], want.score);
    assert_eq!(m["breadth"].as_u64(), Some(u64::from(want.breadth)));
    assert_eq!((m["tier"].as_str(), m["breadth_tier"].as_str()), (Some("buying"), Some("warm")));
    assert!(m.get("next_tier").is_none(), "buying is the top tier: {m}");
    let contacts = m["contacts"].as_array().unwrap();
    assert_eq!(contacts.len(), want.shares.len());
    for (c, w) in contacts.iter().zip(&want.shares) {
        assert_eq!(c["contact_id"].as_str(), Some(w.contact.as_str()));
        assert!(close(c["score"].as_f64().unwrap(), w.score), "{c} vs {w:?}");
        assert!(close(c["weight"].as_f64().unwrap(), w.weight), "{c} vs {w:?}");
        let share = if w.counted { w.value / want.score } else { 0.0 };
        assert!(close(c["share"].as_f64().unwrap(), share), "{c} vs {share}");
        assert_eq!((c["counted"].as_bool(), c["counts_toward_breadth"].as_bool()), (Some(w.counted), Some(w.broad)));
        assert_eq!(c["tier"].as_str(), Some(w.tier.as_str()));
    }
    let order: Vec<&str> = contacts.iter().map(|c| c["contact_id"].as_str().unwrap()).collect();
    assert_eq!(order, ["bob", "ann", "cat", "dan"], "largest weighted score first");
    assert_eq!(contacts[3]["counted"], false, "outside the top 3");

    // Unknown account, bad moment, no token.
    let (status, body) = get("/v1/accounts/nobody".into()).await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nobody"), "{body}");
    let (status, _) = get("/v1/accounts/acme?at=yesterday".into()).await.unwrap();
    assert_eq!(status, 400);
    for path in ["/v1/accounts/acme", "/v1/accounts/models/engagement/leaderboard", "/v1/accounts/alerts/recent"] {
        let (status, _) = tokio::task::spawn_blocking(move || http_get(port, path, None)).await.unwrap();
        assert_eq!(status, 401, "{path}");
    }

    // The leaderboard: by exact score at `at`, highest first.
    let (status, board) = get(format!("/v1/accounts/models/engagement/leaderboard?at={at}")).await.unwrap();
    assert_eq!(status, 200, "{board}");
    let entries = board["entries"].as_array().unwrap();
    let mut want: Vec<(String, f64)> =
        states.iter().map(|(id, (_, s))| (id.clone(), account::standing(model, rollup, s, at).score)).collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let got: Vec<&str> = entries.iter().map(|e| e["account_id"].as_str().unwrap()).collect();
    assert_eq!(got, want.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>());
    for (e, (id, score)) in entries.iter().zip(&want) {
        assert!(close(e["score"].as_f64().unwrap(), *score), "{id}: {e} vs {score}");
        assert_eq!(e["partition"].as_i64(), Some(i64::from(states[id].0)));
    }
    assert_eq!(entries[0]["tier"], "buying");
    assert_eq!(entries[0]["breadth"], 3);
    let (_, two) = get(format!("/v1/accounts/models/engagement/leaderboard?at={at}&limit=2")).await.unwrap();
    assert_eq!(two["entries"].as_array().unwrap()[..], entries[..2]);
    let (status, body) = get("/v1/accounts/models/fit-only/leaderboard".into()).await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("engagement"), "names the models with a roll-up: {body}");
    let (status, _) = get("/v1/accounts/models/engagement/leaderboard?limit=0".into()).await.unwrap();
    assert_eq!(status, 400);

    // Recent account alerts, newest first across partitions.
    let (status, recent) = get("/v1/accounts/alerts/recent".into()).await.unwrap();
    assert_eq!(status, 200, "{recent}");
    let recent = recent["alerts"].as_array().unwrap();
    assert_eq!(recent.len(), all_alerts.len());
    let mut ids: Vec<(i64, String)> = all_alerts
        .iter()
        .map(|a| (hotlead::decode::millis(a.crossed_at.as_ref().unwrap()), a.alert_id.clone()))
        .collect();
    ids.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    let got: Vec<(i64, String)> = recent
        .iter()
        .map(|a| (a["crossed_at_ms"].as_i64().unwrap(), a["alert_id"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(got, ids, "newest first");
    let buying = recent.iter().find(|a| a["tier"] == "buying").unwrap();
    assert_eq!((buying["account_id"].as_str(), buying["direction"].as_str()), (Some("acme"), Some("heated")));
    assert_eq!(buying["drivers"].as_array().unwrap().len(), 3);
    let (_, one) = get("/v1/accounts/alerts/recent?limit=1".into()).await.unwrap();
    assert_eq!(one["alerts"][0], recent[0]);

    // Contact leaderboards name each contact's account.
    let (_, leads) = get("/v1/models/engagement/leaderboard".into()).await.unwrap();
    let leads = leads["entries"].as_array().unwrap();
    let ann = leads.iter().find(|e| e["contact_id"] == "ann").unwrap_or_else(|| panic!("{leads:?}"));
    assert_eq!(ann["account_id"], "acme");

    // `hotlead account` says what the API says.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hotlead"))
            .arg("account")
            .args(args)
            .envs(stack.env(&topics, &path))
            .output()
            .unwrap()
    };
    let at_text = at.to_string();
    let out = cli(&["acme", "--at", &at_text, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (_, api) = get(format!("/v1/accounts/acme?at={at}")).await.unwrap();
    assert_eq!(said, api);
    let out = cli(&["acme", "--at", &at_text]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("account acme, partition 0") && text.contains("buying") && text.contains("bob"), "{text}");
    let out = cli(&["nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("account nobody has no score"));

    // The board: the accounts panel lists the accounts in order, and an
    // account's detail shows its contacts.
    let url = format!("http://127.0.0.1:{port}/board#token={TOKEN}&account=acme");
    let dom = tokio::task::spawn_blocking(move || support::chromium("--dump-dom", &url)).await.unwrap();
    let panel = dom.split("id=\"accounts\"").nth(1).unwrap_or_else(|| panic!("no accounts panel:\n{dom}"));
    let board = panel.split("id=\"account-board-engagement\"").nth(1).unwrap_or_else(|| panic!("{panel}"));
    let board = board.split("</table>").next().unwrap();
    let listed: Vec<&str> = board.split("data-account=\"").skip(1).map(|s| s.split('"').next().unwrap()).collect();
    assert_eq!(listed, ["acme", "globex", "initech"], "{board}");
    assert!(board.contains(">buying<"), "{board}");
    let detail = dom.split("id=\"account-detail\"").nth(1).unwrap_or_else(|| panic!("no account detail:\n{dom}"));
    let detail = detail.split("</table>").next().unwrap();
    let shown: Vec<&str> = detail.split("data-contact=\"").skip(1).map(|s| s.split('"').next().unwrap()).collect();
    assert_eq!(shown, ["bob", "ann", "cat", "dan"], "{detail}");
    let row = |c: &str| detail.split(&format!("data-contact=\"{c}\"")).nth(1).unwrap().split("</tr>").next().unwrap();
    assert!(row("bob").contains("class=\"bar\"") && row("bob").contains("breadth"), "{}", row("bob"));
    assert!(row("dan").contains("not counted"), "{}", row("dan"));
    let alerts = dom.split("id=\"account-alerts\"").nth(1).unwrap().split("</ul>").next().unwrap();
    assert!(alerts.contains("data-account=\"acme\""), "{alerts}");
    let leads = dom.split("id=\"board-engagement\"").nth(1).unwrap().split("</table>").next().unwrap();
    assert!(leads.contains("data-open-account=\"acme\""), "the lead list names ann's account: {leads}");

    if let Ok(file) = std::env::var("HOTLEAD_ACCOUNTS_SCREENSHOT") {
        let url = format!("http://127.0.0.1:{port}/board#token={TOKEN}&account=acme");
        let what = format!("--screenshot={file}");
        tokio::task::spawn_blocking(move || support::chromium_in(&what, &url, 1100, 8000)).await.unwrap();
    }
}
