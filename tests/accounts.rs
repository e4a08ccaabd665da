//! Account roll-ups on the real stack (Tansu, redis-server, the `hotlead`
//! binary): contacts of one account on three partitions, the contact stage
//! and the account stage run apart, killed with SIGKILL and joined by more
//! instances. Scores are checked against an independent oracle (the sum of
//! `points * 2^(-(T - t)/H)` per contact, weighted and summed per account),
//! not the engine; alerts against the crossings of the contribution log
//! replayed once through `account::apply` (lost 0, unexpected 0).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use hotlead::account::AccountState;
use hotlead::proto::{AccountAlert, AccountContribution, InteractionEvent};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use support::{last_offsets, page, rules_file, spawn_pipeline_with_clock, KillOnDrop, Stack, Topics};

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

const RULES: &str = r#"
models:
  - name: engagement
    half_life: 1d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - { id: demo, when: { kind: page_view, url: /demo }, points: 40 }
      - { id: pricing, when: { kind: page_view, url: /pricing }, points: 25 }
      - { id: blog, when: { kind: page_view, url: /blog }, points: 5 }
    account:
      breadth: warm
      weights: { attribute: role, values: { decision_maker: 2 }, default: 1 }
      tiers:
        - { name: engaged, enter: 60, exit: 45 }
        - { name: buying, enter: 100, exit: 90, min_contacts: 3 }
"#;

fn points(url: &str) -> f64 {
    match url {
        "/demo" => 40.0,
        "/pricing" => 25.0,
        _ => 5.0,
    }
}

fn with_account(mut e: InteractionEvent, account: &str) -> InteractionEvent {
    e.account_id = account.into();
    e
}

fn role(id: &str, contact: &str, account: &str, at: i64, role: &str) -> InteractionEvent {
    use hotlead::proto::interaction_event::Interaction;
    InteractionEvent {
        event_id: id.into(),
        contact_id: contact.into(),
        account_id: account.into(),
        occurred_at: Some(hotlead::decode::timestamp(at)),
        interaction: Some(Interaction::ProfileUpdate(hotlead::proto::ProfileUpdate {
            attributes: [("role".to_string(), role.to_string())].into_iter().collect(),
        })),
        ..Default::default()
    }
}

/// `n` contact ids whose events land on `n` different partitions of a
/// topic of `partitions` partitions (probed on a topic of their own).
async fn spread(stack: &Stack, partitions: i32, n: usize, prefix: &str) -> Vec<String> {
    let probe = stack.topics(partitions).await;
    let candidates: Vec<String> = (0..64).map(|i| format!("{prefix}-{i:02}")).collect();
    let events: Vec<_> = candidates.iter().map(|c| page("p", c, 1, "/")).collect();
    let landed = stack.produce_events(&probe.input, &events).await;
    let mut out: Vec<String> = Vec::new();
    let mut used = Vec::new();
    for (c, (p, _)) in candidates.iter().zip(&landed) {
        if !used.contains(p) && out.len() < n {
            used.push(*p);
            out.push(c.clone());
        }
    }
    assert_eq!(out.len(), n, "not enough partitions hit");
    out
}

/// Every account alert on the topic so far, in topic order.
async fn account_alerts(stack: &Stack, topic: &str, wait: Duration) -> Vec<AccountAlert> {
    let records = stack.read_all(topic, usize::MAX, wait).await;
    records.iter().map(|r| AccountAlert::decode(r.payload.as_slice()).unwrap()).collect()
}

/// Every record of the contribution topic, per partition in offset order.
async fn contribution_log(stack: &Stack, topics: &Topics) -> BTreeMap<i32, Vec<AccountContribution>> {
    let records = stack.read_all(&topics.account_contributions, usize::MAX, Duration::from_secs(5)).await;
    let mut out: BTreeMap<i32, Vec<(i64, Vec<AccountContribution>)>> = BTreeMap::new();
    for r in records {
        let bundle = hotlead::proto::AccountContributions::decode(r.payload.as_slice()).unwrap();
        out.entry(r.partition).or_default().push((r.offset, bundle.contributions));
    }
    out.into_iter()
        .map(|(p, mut v)| {
            v.sort_by_key(|(o, _)| *o);
            (p, v.into_iter().flat_map(|(_, c)| c).collect())
        })
        .collect()
}

/// The end offset of each partition of `topic`.
fn ends(stack: &Stack, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let c: BaseConsumer = hotlead::kafka::client_config(&stack.brokers, &[]).create().unwrap();
    (0..partitions).map(|p| (p, c.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1)).collect()
}

/// Waits until the account stage has applied its topic to its end, twice
/// in a row a second apart (the contact stage's outbox may still be
/// sending when first seen).
async fn wait_rolled_up(stack: &Stack, topics: &Topics, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut r = stack.redis();
    let mut quiet = 0;
    loop {
        let end = ends(stack, &topics.account_contributions, topics.partitions);
        let done = end.iter().all(|(p, e)| {
            let key = hotlead::store::PartitionKeys::new(&topics.account_contributions, *p).watermark();
            let w: Option<i64> = redis::cmd("GET").arg(key).query(&mut r).unwrap();
            *e == 0 || w.is_some_and(|w| w + 1 >= *e)
        });
        quiet = if done { quiet + 1 } else { 0 };
        if quiet >= 3 {
            return;
        }
        assert!(Instant::now() < deadline, "the account stage did not catch up within {timeout:?}: ends {end:?}");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

/// An account's stored state.
fn stored_account(stack: &Stack, topics: &Topics, account: &str) -> Option<AccountState> {
    let mut r = stack.redis();
    (0..topics.partitions).find_map(|p| {
        let key = hotlead::store::PartitionKeys::new(&topics.account_contributions, p).states();
        let v: Option<Vec<u8>> = redis::cmd("HGET").arg(key).arg(account).query(&mut r).unwrap();
        v.map(|v| AccountState::decode(&v).unwrap())
    })
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// A stream entry's fields.
type StreamFields = Vec<(String, Vec<u8>)>;

/// A contact as the oracle sees it: its events (time, points) and weight.
type Member = (Vec<(i64, f64)>, f64);

/// The oracle's account score at `t`: each contact's decayed points
/// (`(time, points)`), floored at zero, weighted, summed.
fn oracle_score(contacts: &[Member], t: i64) -> f64 {
    contacts
        .iter()
        .map(|(events, w)| {
            let s: f64 = events.iter().map(|(at, p)| p * (-((t - at) as f64) / DAY as f64).exp2()).sum();
            s.max(0.0) * w
        })
        .sum()
}

/// The first millisecond after `from` at which `holds` fails (it holds at
/// `from` and fails for good later): the oracle's own search.
fn first_failing(from: i64, holds: impl Fn(i64) -> bool) -> i64 {
    let (mut lo, mut hi) = (from, from + 100 * DAY);
    assert!(holds(lo) && !holds(hi));
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if holds(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

fn millis(a: &AccountAlert) -> i64 {
    hotlead::decode::millis(a.crossed_at.as_ref().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_heats_at_its_third_warm_contact_and_cools_at_the_exact_instant() {
    let stack = Stack::start();
    let topics = stack.topics(3).await;
    let (_dir, path) = rules_file(RULES);
    let group = spread(&stack, 3, 3, "buyer").await;
    let t = hotlead::decode::now_ms() / 1000 * 1000 - 3 * DAY;
    // Three contacts of acme, one per partition, each warm by one demo
    // visit an hour apart; a contact of another account beside them.
    let events: Vec<InteractionEvent> = vec![
        with_account(page("a1", &group[0], t, "/demo"), "acme"),
        with_account(page("a2", &group[1], t + HOUR, "/demo"), "acme"),
        with_account(page("other", "globex-1", t + HOUR, "/demo"), "globex"),
        with_account(page("a3", &group[2], t + 2 * HOUR, "/demo"), "acme"),
    ];
    let mut config = stack.config(&topics, &path);
    config.pipeline.sweep_interval = Duration::from_millis(500);
    // The sweep's clock stands just after the third visit while the events
    // come in (as if they came live), then moves to now: the coolings are
    // the sweep's, at their exact instants.
    let clock_ms = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(t + 2 * HOUR + 60_000));
    let read = clock_ms.clone();
    let clock: hotlead::pipeline::Clock = std::sync::Arc::new(move || read.load(std::sync::atomic::Ordering::Relaxed));
    let running = spawn_pipeline_with_clock(config, &path, clock);
    // One at a time: each contact's contribution is in before the next.
    for e in &events {
        let landed = stack.produce_events(&topics.input, std::slice::from_ref(e)).await;
        stack.wait_applied(&topics, &last_offsets(&landed), Duration::from_secs(60)).await;
        wait_rolled_up(&stack, &topics, Duration::from_secs(60)).await;
    }
    // The board: contacts active now show their account beside them (acme's
    // visits are days old: the board lists leads by their score now), and
    // the accounts panel lists acme, buying, with its three contacts.
    let now = hotlead::decode::now_ms();
    let initech = ["initech-a".to_string(), "initech-b".to_string()];
    let recent: Vec<InteractionEvent> = initech
        .iter()
        .enumerate()
        .map(|(i, c)| with_account(page(&format!("i{i}"), c, now - 60_000, "/demo"), "initech"))
        .collect();
    let landed = stack.produce_events(&topics.input, &recent).await;
    stack.wait_applied(&topics, &last_offsets(&landed), Duration::from_secs(60)).await;
    wait_rolled_up(&stack, &topics, Duration::from_secs(60)).await;
    let port = support::serve_api(&stack, &running, &topics, "t0ken").await;
    let url = format!("http://127.0.0.1:{port}/board#token=t0ken&account=acme");
    let dom = tokio::task::spawn_blocking(move || support::chromium("--dump-dom", &url)).await.unwrap();
    for c in &initech {
        let row = dom.split("<tr class=\"lead\"").skip(1).find(|r| r.starts_with(&format!(" data-contact=\"{c}\"")));
        let row = row.unwrap_or_else(|| panic!("{c} is not on the board:\n{dom}")).split("</tr>").next().unwrap();
        assert!(row.contains("data-open-account=\"initech\""), "{c}'s row names its account: {row}");
    }
    let panel = dom.split("id=\"accounts\"").nth(1).unwrap_or_else(|| panic!("no accounts panel:\n{dom}"));
    let listed = panel.split("</table>").next().unwrap();
    // initech is engaged now; acme's buying days ago has cooled by now, as
    // the panel reads it.
    let row_of =
        |a: &str| listed.split(&format!("data-account=\"{a}\"")).nth(1).map(|r| r.split("</tr>").next().unwrap());
    assert!(row_of("initech").is_some_and(|r| r.contains(">engaged<")), "{listed}");
    assert!(row_of("acme").is_some(), "{listed}");
    let detail = dom.split("id=\"account-detail\"").nth(1).unwrap_or_else(|| panic!("no account detail:\n{dom}"));
    let detail = detail.split("</table>").next().unwrap();
    let mut shown: Vec<&str> = detail.split("data-contact=\"").skip(1).map(|s| s.split('"').next().unwrap()).collect();
    shown.sort_unstable();
    let mut want: Vec<&str> = group.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(shown, want, "acme's detail lists its contacts");
    if let Ok(file) = std::env::var("HOTLEAD_ACCOUNTS_SCREENSHOT") {
        let url = format!("http://127.0.0.1:{port}/board#token=t0ken&account=acme");
        let what = format!("--screenshot={file}");
        tokio::task::spawn_blocking(move || support::chromium(&what, &url)).await.unwrap();
    }
    clock_ms.store(hotlead::decode::now_ms(), std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut alerts = account_alerts(&stack, &topics.account_alerts, Duration::from_secs(5)).await;
    while alerts.iter().filter(|a| a.account_id == "acme").count() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        alerts = account_alerts(&stack, &topics.account_alerts, Duration::from_secs(5)).await;
    }
    // Erasing a contact of acme: the account forgets it, and nothing the
    // account stage keeps names it (the alerts it drove are dropped from the
    // recent ones).
    let gone = group[0].clone();
    let erasure = InteractionEvent {
        event_id: "erase-1".into(),
        contact_id: gone.clone(),
        occurred_at: Some(hotlead::decode::timestamp(hotlead::decode::now_ms())),
        interaction: Some(hotlead::proto::interaction_event::Interaction::Erasure(hotlead::proto::Erasure {
            requested_by: "dpo".into(),
            reason: "request".into(),
        })),
        ..Default::default()
    };
    let landed = stack.produce_events(&topics.input, &[erasure]).await;
    stack.wait_applied(&topics, &last_offsets(&landed), Duration::from_secs(60)).await;
    wait_rolled_up(&stack, &topics, Duration::from_secs(60)).await;
    running.finish().await;
    let st = stored_account(&stack, &topics, "acme").unwrap();
    assert_eq!(st.members.len(), 2, "acme keeps its two other contacts");
    let mut r = stack.redis();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("hl:{{{}:*", topics.account_contributions)).query(&mut r).unwrap();
    assert!(keys.iter().any(|k| k.ends_with(":recent")), "{keys:?}");
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut r).unwrap();
        let dump: Vec<Vec<u8>> = match kind.as_str() {
            "hash" => redis::cmd("HGETALL").arg(&key).query(&mut r).unwrap(),
            "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query(&mut r).unwrap(),
            "stream" => {
                let e: Vec<(String, StreamFields)> =
                    redis::cmd("XRANGE").arg(&key).arg("-").arg("+").query(&mut r).unwrap();
                e.into_iter().flat_map(|(_, f)| f.into_iter().map(|(_, v)| v)).collect()
            }
            _ => vec![redis::cmd("GET").arg(&key).query::<Vec<u8>>(&mut r).unwrap()],
        };
        for v in dump {
            let hit = v.windows(gone.len()).any(|w| w == gone.as_bytes());
            assert!(!hit, "{key} still names the erased contact");
        }
    }
    let acme: Vec<&AccountAlert> = alerts.iter().filter(|a| a.account_id == "acme").collect();
    let seen: Vec<(i32, &str, &str)> =
        acme.iter().map(|a| (a.direction, a.tier.as_str(), a.trigger_contact_id.as_str())).collect();
    assert_eq!(
        seen,
        [(1, "engaged", group[1].as_str()), (1, "buying", group[2].as_str()), (2, "engaged", ""), (2, "cold", "")],
        "engaged at the second warm contact, buying at the third, then cooled by decay twice: {acme:#?}"
    );
    // The oracle: three contacts of 40 points at t, t+1h, t+2h.
    let contacts: Vec<Member> = (0..3).map(|i| (vec![(t + i * HOUR, 40.0)], 1.0)).collect();
    let score = |at: i64| oracle_score(&contacts, at);
    assert_eq!(millis(acme[1]), t + 2 * HOUR);
    assert!(close(acme[1].score, score(t + 2 * HOUR)), "{} vs {}", acme[1].score, score(t + 2 * HOUR));
    assert_eq!(acme[1].breadth, 3);
    let mut drivers: Vec<&str> = acme[1].drivers.iter().map(|d| d.contact_id.as_str()).collect();
    drivers.sort_unstable();
    let mut want: Vec<&str> = group.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(drivers, want);
    // Buying holds while the score is at least 90 and all three are warm
    // (each leaves warm when its own score falls under 20, a day after its
    // visit); engaged while it is at least 45.
    let warm = |at: i64| (0..3).filter(|i| 40.0 * (-((at - t - i * HOUR) as f64) / DAY as f64).exp2() >= 20.0).count();
    let left_buying = first_failing(t + 2 * HOUR, |at| score(at) >= 90.0 && warm(at) >= 3);
    let left_engaged = first_failing(left_buying, |at| score(at) >= 45.0);
    assert_eq!(millis(acme[2]), left_buying, "buying cooled at the first millisecond it no longer held");
    assert_eq!(millis(acme[3]), left_engaged, "engaged cooled at the first millisecond under 45");
    assert!(close(acme[2].score, score(left_buying)) && acme[2].score < 90.0);
    assert!(close(acme[3].score, score(left_engaged)) && acme[3].score < 45.0);
    assert!(!acme[1].historical, "raised a minute after the visit: live");
    assert!(acme[3].historical, "found by the sweep days later: historical");
    // `hotlead rules test` on the same events gives the same crossings (the
    // coolings after the last event are the sweep's, not an event's).
    let rules = hotlead::rules::RuleSet::parse(RULES, "t").unwrap();
    let offline = hotlead::replay::replay(&rules, &events);
    let shape =
        |a: &AccountAlert| (a.account_id.clone(), a.tier.clone(), a.trigger_event_id.clone(), millis(a), a.breadth);
    let want: Vec<_> = offline.account_alerts.iter().filter(|a| a.account_id == "acme").map(shape).collect();
    let got: Vec<_> = acme[..2].iter().map(|a| shape(a)).collect();
    assert_eq!(got, want);
    for (a, b) in acme[..2].iter().zip(offline.account_alerts.iter().filter(|a| a.account_id == "acme")) {
        assert!(close(a.score, b.score));
    }
    let globex: Vec<&AccountAlert> = alerts.iter().filter(|a| a.account_id == "globex").collect();
    assert!(globex.is_empty(), "one warm contact (40) does not make globex engaged: {globex:?}");
}

/// What the events say: per contact, its events (time, points) and the
/// account of its latest event by time naming one, and its role.
#[derive(Default)]
struct Truth {
    events: HashMap<String, Vec<(i64, f64)>>,
    account: HashMap<String, (i64, String)>,
    role: HashMap<String, String>,
}

impl Truth {
    fn add(&mut self, e: &InteractionEvent) {
        use hotlead::proto::interaction_event::Interaction;
        let at = hotlead::decode::millis(e.occurred_at.as_ref().unwrap());
        match &e.interaction {
            Some(Interaction::PageView(p)) => {
                self.events.entry(e.contact_id.clone()).or_default().push((at, points(&p.url)));
            }
            Some(Interaction::ProfileUpdate(p)) => {
                self.role.insert(e.contact_id.clone(), p.attributes["role"].clone());
            }
            _ => {}
        }
        let latest = self.account.entry(e.contact_id.clone()).or_insert((i64::MIN, String::new()));
        if at >= latest.0 {
            *latest = (at, e.account_id.clone());
        }
    }

    /// Each account's contacts: their events and weights.
    fn accounts(&self) -> BTreeMap<String, Vec<Member>> {
        let mut out: BTreeMap<String, Vec<Member>> = BTreeMap::new();
        for (contact, (_, account)) in &self.account {
            let w = if self.role.get(contact).map(String::as_str) == Some("decision_maker") { 2.0 } else { 1.0 };
            out.entry(account.clone()).or_default().push((self.events.get(contact).cloned().unwrap_or_default(), w));
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_scores_are_exact_through_kills_of_both_stages_a_rebalance_and_a_move() {
    use rand::{Rng, SeedableRng};
    let stack = Stack::start();
    let topics = stack.topics(3).await;
    let (dir, path) = rules_file(RULES);
    let log = dir.path().join("hotlead.log");
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let now = hotlead::decode::now_ms() / 1000 * 1000;
    let t0 = now - 4 * DAY;
    // 12 accounts of 4 contacts; the first contact of each is a decision
    // maker; movers change account half-way (a later event names another).
    let mut events: Vec<InteractionEvent> = Vec::new();
    let contact = |a: usize, c: usize| format!("acct{a:02}-c{c}");
    for a in 0..12 {
        events.push(role(&format!("r{a}"), &contact(a, 0), &format!("acct{a:02}"), t0, "decision_maker"));
    }
    let urls = ["/demo", "/pricing", "/blog", "/blog"];
    for i in 0..1200 {
        let (a, c) = (rng.random_range(0..12), rng.random_range(0..4));
        let at = t0 + rng.random_range(0..4 * DAY);
        let url = urls[rng.random_range(0..urls.len())];
        let mut account = format!("acct{a:02}");
        // Contact 3 of accounts 0..4 moves to the next account for events
        // in its last two days.
        if c == 3 && a < 4 && at > t0 + 2 * DAY {
            account = format!("acct{:02}", a + 1);
        }
        events.push(with_account(page(&format!("e{i}"), &contact(a, c), at, url), &account));
        if i % 97 == 0 {
            // A repeat: counted once.
            events.push(events.last().unwrap().clone());
        }
    }
    let mut truth = Truth::default();
    let mut once = std::collections::HashSet::new();
    for e in &events {
        if once.insert(e.event_id.clone()) {
            truth.add(e);
        }
    }
    let quiet = [("RUST_LOG", "hotlead=info")];
    let spawn = |stages: &str| {
        let mut env: Vec<(&str, &str)> = quiet.to_vec();
        env.push(("HOTLEAD_PIPELINE__STAGES", stages));
        env.push(("HOTLEAD_PIPELINE__SWEEP_INTERVAL", "0s"));
        KillOnDrop(stack.spawn_hotlead(&topics, &path, &log, &["run"], &env))
    };
    let mut contacts = vec![spawn("contacts")];
    let mut accounts = vec![spawn("accounts")];
    let thirds: Vec<&[InteractionEvent]> = events.chunks(events.len() / 3 + 1).collect();
    let mut landed = Vec::new();
    landed.extend(stack.produce_events(&topics.input, thirds[0]).await);
    tokio::time::sleep(Duration::from_secs(4)).await;
    // SIGKILL the contact stage mid-stream, start it again.
    contacts[0].0.kill().unwrap();
    contacts[0].0.wait().unwrap();
    contacts[0] = spawn("contacts");
    landed.extend(stack.produce_events(&topics.input, thirds[1]).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // SIGKILL the account stage, start it again; then a second instance of
    // each stage joins (a rebalance of both groups).
    accounts[0].0.kill().unwrap();
    accounts[0].0.wait().unwrap();
    accounts[0] = spawn("accounts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    accounts.push(spawn("accounts"));
    contacts.push(spawn("contacts"));
    landed.extend(stack.produce_events(&topics.input, thirds[2]).await);
    stack.wait_applied(&topics, &last_offsets(&landed), Duration::from_secs(120)).await;
    wait_rolled_up(&stack, &topics, Duration::from_secs(120)).await;
    let delivered = account_alerts(&stack, &topics.account_alerts, Duration::from_secs(5)).await;
    drop(contacts);
    drop(accounts);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Rolling up accounts."), "the account stage ran");

    // Scores: every account equals the oracle at one instant, to 1e-9.
    let rules = hotlead::rules::RuleSet::parse(RULES, "t").unwrap();
    let (model, rollup) = hotlead::account::models(&rules).next().unwrap();
    let expected = truth.accounts();
    let mut checked = 0;
    for (account, members) in &expected {
        let st = stored_account(&stack, &topics, account).unwrap_or_else(|| {
            let tail: String = text.chars().rev().take(4000).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("{account} not stored; the log ends:\n{tail}")
        });
        let got = hotlead::account::standing(model, rollup, &st, now).score;
        let want = oracle_score(members, now);
        assert!(close(got, want), "{account}: stored {got}, oracle {want}");
        assert_eq!(st.members.len(), members.len(), "{account}: each contact once");
        checked += 1;
    }
    assert_eq!(checked, 12);
    // A mover counts in its new account only.
    for a in 0..4 {
        let mover = contact(a, 3);
        let (_, now_in) = &truth.account[&mover];
        for b in [a, a + 1] {
            let st = stored_account(&stack, &topics, &format!("acct{b:02}")).unwrap();
            assert_eq!(st.members.contains_key(&mover), *now_in == format!("acct{b:02}"), "{mover} in acct{b:02}");
        }
    }
    // Alerts: the crossings of the contribution log applied once, in each
    // partition's offset order; each delivered (repeats keep their id),
    // nothing else.
    let log = contribution_log(&stack, &topics).await;
    let mut states: HashMap<String, AccountState> = HashMap::new();
    let mut want: Vec<AccountAlert> = Vec::new();
    for records in log.values() {
        for c in records {
            let st = states.entry(c.account_id.clone()).or_default();
            hotlead::account::apply(&rules, &c.account_id, st, c, &mut want);
        }
    }
    assert!(want.len() >= 12, "the stream heats accounts: {}", want.len());
    let want_ids: std::collections::BTreeSet<&str> = want.iter().map(|a| a.alert_id.as_str()).collect();
    let got_ids: std::collections::BTreeSet<&str> = delivered.iter().map(|a| a.alert_id.as_str()).collect();
    let lost: Vec<_> = want_ids.difference(&got_ids).collect();
    let unexpected: Vec<_> = got_ids.difference(&want_ids).collect();
    assert!(lost.is_empty() && unexpected.is_empty(), "lost {lost:?}, unexpected {unexpected:?}");
    // Per account, alerts come in the order raised.
    for account in expected.keys() {
        let order = |v: &[AccountAlert]| -> Vec<String> {
            let mut seen = Vec::new();
            for a in v.iter().filter(|a| &a.account_id == account) {
                if !seen.contains(&a.alert_id) {
                    seen.push(a.alert_id.clone());
                }
            }
            seen
        };
        assert_eq!(order(&delivered), order(&want), "{account}: order");
    }

    // Redis loses the account stage's keys (the contacts' stay): with the
    // whole contribution log retained, the account stage rolls it up again
    // from the start, to the same accounts.
    let before: Vec<Option<AccountState>> = expected.keys().map(|a| stored_account(&stack, &topics, a)).collect();
    let mut r = stack.redis();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("hl:{{{}:*", topics.account_contributions)).query(&mut r).unwrap();
    let _: () = redis::cmd("DEL").arg(&keys).query(&mut r).unwrap();
    let rebuilt = spawn("accounts");
    wait_rolled_up(&stack, &topics, Duration::from_secs(120)).await;
    drop(rebuilt);
    let after: Vec<Option<AccountState>> = expected.keys().map(|a| stored_account(&stack, &topics, a)).collect();
    assert_eq!(after, before, "the accounts rolled up again equal those lost");
    assert!(std::fs::read_to_string(dir.path().join("hotlead.log")).unwrap().contains("rolling it up again"));
}
