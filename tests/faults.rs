//! The fault harness: three hotlead processes score a simulated stream with
//! duplicates, late and out-of-order events and poison input, while
//! instances are killed with `kill -9`, one is stopped past the session
//! timeout and resumed (a zombie), Redis restarts from its AOF, and instances
//! are added and removed. At the end every contact's score must equal an
//! offline oracle (the same scoring core over each whole partition), the
//! distinct alert ids on the alert topic must equal the oracle's, and the
//! dead letters must be exactly the poison input.
//!
//! The short run is part of the test suite. `scripts/faults.sh --long` runs
//! the long one (`HOTLEAD_FAULTS=long`, at least 20 kills); `--seed N` (or
//! `HOTLEAD_FAULTS_SEED`) repeats a run. Instance logs stay in
//! `target/faults/<seed>/`.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hotlead::proto::ScoreAlert;
use hotlead::rules::RuleSet;
use hotlead::simulate::{SimConfig, Simulator};
use prost::Message as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::{free_port, Stack};

/// Where a message landed: partition, offset, key, payload.
type Landed = (i32, i64, Vec<u8>, Vec<u8>);

/// A contact's part in an account model: model, behaviour, its time, fit, tier.
type PartFields = (String, f64, i64, f64, String);

struct Plan {
    seed: u64,
    seconds: u64,
    rate: u64,
    fault_every: Duration,
    /// Promote the shadow model a third of the way and roll it back at two
    /// thirds (the long run).
    promote: bool,
}

impl Plan {
    fn from_env() -> Plan {
        let seed = std::env::var("HOTLEAD_FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
        match std::env::var("HOTLEAD_FAULTS").as_deref() {
            Ok("long") => Plan { seed, seconds: 200, rate: 100, fault_every: Duration::from_secs(5), promote: true },
            _ => Plan { seed, seconds: 40, rate: 60, fault_every: Duration::from_secs(4), promote: false },
        }
    }
}

/// A redis-server with an append-only file, that can be restarted from it.
struct AofRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Child,
}

impl AofRedis {
    fn start(dir: &std::path::Path) -> AofRedis {
        let port = free_port();
        let child = Self::spawn(port, dir);
        AofRedis { port, dir: dir.to_path_buf(), child }
    }

    fn spawn(port: u16, dir: &std::path::Path) -> Child {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops Redis (SIGTERM: it syncs its AOF) and starts it again from the AOF.
    fn restart(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port, &self.dir);
    }
}

impl Drop for AofRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills every instance the harness started when it ends, passed or failed.
#[derive(Default)]
struct Reaper(Arc<Mutex<Vec<u32>>>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in self.0.lock().unwrap().iter() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill").args([sig, &child.id().to_string()]).status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_applied_twice_under_faults() {
    let plan = Plan::from_env();
    let stack = Stack::start();
    let topics = stack.topics(6).await;
    // The example models with every crossing alerting: many alerts to lose
    // or repeat.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/models.yaml");
    // A shadow model beside them (in the long run promoted a third of the
    // way and rolled back at two thirds): sales hears each crossing from the
    // model live at its offset, the shadow topic the others.
    let shadow = "
  - name: engagement-v2
    shadow: true
    half_life: 10d
    tiers:
      - { name: warm, enter: 25, exit: 15 }
      - { name: hot, enter: 50, exit: 35 }
    rules:
      - { id: pricing, when: { kind: page_view, url: { prefix: /pricing } }, points: 14 }
      - { id: docs, when: { kind: page_view, url: { prefix: /docs } }, points: 4 }
      - { id: demo, when: { kind: form_submission, form_id: demo-request }, points: 40 }
      - { id: webinar, when: { kind: webinar_attendance, attended: true }, points: 20 }
";
    // And a model whose contacts roll up into accounts (a long half-life:
    // the accounts heat as the buying groups warm, and their alerts are
    // the crossings of the contribution log, whatever the faults).
    let accounts = "
  - name: buying-group
    half_life: 365d
    tiers:
      - { name: active, enter: 10, exit: 5 }
    rules:
      - { id: pricing, when: { kind: page_view, url: { prefix: /pricing } }, points: 10 }
      - { id: demo, when: { kind: form_submission, form_id: demo-request }, points: 30 }
      - { id: webinar, when: { kind: webinar_attendance, attended: true }, points: 15 }
    account:
      breadth: active
      tiers:
        - { name: engaged, enter: 40, exit: 30 }
        - { name: buying, enter: 90, exit: 70, min_contacts: 3 }
";
    let text = std::fs::read_to_string(examples).unwrap().replace("alert: false", "alert: true") + shadow + accounts;
    let (_rules_dir, rules_path) = support::rules_file(&text);
    let rules = RuleSet::load(&rules_path).unwrap();
    let logs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/faults/{}", plan.seed));
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).unwrap();
    let redis_dir = tempfile::tempdir().unwrap();
    let mut redis = AofRedis::start(redis_dir.path());
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);

    // The input: simulated events with duplicates, late events and poison.
    let total = (plan.seconds * plan.rate) as usize;
    // Event times follow the stream's pace and stay in the past.
    let step_ms = (1000 / plan.rate).max(1) as i64;
    let base = hotlead::decode::now_ms() - 3_600_000 - total as i64 * step_ms;
    let mut sim = Simulator::new(&SimConfig { contacts: 400, seed: plan.seed, ..SimConfig::default() });
    let mut input: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(total);
    // Where the promotion and the rollback go in: written to every partition.
    let switches = if plan.promote {
        vec![(total / 3, "engagement-v2", "engagement"), (2 * total / 3, "engagement", "engagement-v2")]
    } else {
        vec![]
    };
    let (mut duplicates, mut late, mut poison) = (0, 0, 0);
    for i in 0..total {
        let r: f64 = rng.random();
        let at = base + i as i64 * step_ms;
        if r < 0.01 {
            poison += 1;
            let payload = match i % 3 {
                0 => (0..rng.random_range(1..64)).map(|_| rng.random::<u8>()).collect(),
                1 => {
                    let mut e = sim.next_event(at);
                    e.contact_id.clear();
                    e.encode_to_vec()
                }
                _ => sim.next_event(at + 400 * 86_400_000).encode_to_vec(),
            };
            input.push((b"poison".to_vec(), payload));
        } else if r < 0.03 && !input.is_empty() {
            // The same event again (a producer's retry), if it was a real one.
            let (k, p) = input[rng.random_range(0..input.len())].clone();
            if k != b"poison" {
                duplicates += 1;
            } else {
                poison += 1;
            }
            input.push((k, p));
        } else if let Some((_, model, replaces)) = switches.iter().find(|(at_i, _, _)| *at_i == i) {
            let e = hotlead::shadow::promotion_event(model, replaces, false, "faults", at);
            for _ in 0..topics.partitions {
                input.push((Vec::new(), e.encode_to_vec()));
            }
        } else {
            let mut t = at;
            if r < 0.08 {
                late += 1;
                t -= rng.random_range(0..6 * 3_600_000);
            }
            let e = sim.next_event(t);
            input.push((e.contact_id.clone().into_bytes(), e.encode_to_vec()));
        }
    }

    // Instances of the real binary.
    let env: Vec<(String, String)> = stack
        .env(&topics, &rules_path)
        .into_iter()
        .map(|(k, v)| if k == "HOTLEAD_REDIS__URL" { (k, redis.url()) } else { (k, v) })
        .chain([
            ("HOTLEAD_PIPELINE__SWEEP_INTERVAL".to_string(), "1s".to_string()),
            ("HOTLEAD_PIPELINE__BATCH_MAX_EVENTS".to_string(), "50".to_string()),
            ("HOTLEAD_KAFKA__SESSION_TIMEOUT_MS".to_string(), "6000".to_string()),
            ("RUST_LOG".to_string(), "info".to_string()),
        ])
        .collect();
    let mut started = 0;
    let reaper = Reaper::default();
    let spawn = |started: &mut usize| -> Child {
        *started += 1;
        let log = std::fs::File::create(logs.join(format!("instance-{started}.log"))).unwrap();
        Command::new(env!("CARGO_BIN_EXE_hotlead"))
            .arg("run")
            .envs(env.clone())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .inspect(|c| reaper.0.lock().unwrap().push(c.id()))
            .unwrap()
    };
    let mut instances: Vec<Child> = (0..3).map(|_| spawn(&mut started)).collect();

    // The stream, at a steady rate, recording where each message landed.
    let delivered: Arc<Mutex<Vec<Landed>>> = Arc::default();
    let producer = {
        let (brokers, topic, delivered) = (stack.brokers.clone(), topics.input.clone(), delivered.clone());
        let (rate, partitions) = (plan.rate, topics.partitions);
        tokio::spawn(async move {
            let p: rdkafka::producer::FutureProducer = hotlead::kafka::client_config(&brokers, &[])
                .set("linger.ms", "5")
                .set("enable.idempotence", "true")
                .create()
                .unwrap();
            let start = Instant::now();
            let mut promotions = 0;
            for (i, (key, payload)) in input.into_iter().enumerate() {
                let due = Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
                let mut r = rdkafka::producer::FutureRecord::to(&topic).key(&key).payload(&payload);
                if key.is_empty() {
                    // A promotion: one to each partition, no key.
                    r = rdkafka::producer::FutureRecord::to(&topic)
                        .payload(&payload)
                        .partition(promotions % partitions);
                    promotions += 1;
                }
                let d = p.send(r, Duration::from_secs(30)).await.unwrap_or_else(|(e, _)| panic!("produce: {e}"));
                delivered.lock().unwrap().push((d.partition, d.offset, key, payload));
            }
        })
    };

    // Faults.
    let started_at = Instant::now();
    let mut next_fault = plan.fault_every;
    let (mut kills, mut added, mut removed) = (0, 0, 0);
    let mut zombie: Option<(usize, Instant)> = None;
    let (mut zombie_done, mut redis_restarted) = (false, false);
    while !producer.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some((i, until)) = zombie {
            if Instant::now() >= until {
                signal(&instances[i], "-CONT");
                zombie = None;
            }
        }
        if started_at.elapsed() < next_fault {
            continue;
        }
        next_fault += plan.fault_every;
        let elapsed = started_at.elapsed().as_secs();
        let live: Vec<usize> = (0..instances.len()).filter(|i| zombie.map(|z| z.0) != Some(*i)).collect();
        if !zombie_done && elapsed > plan.seconds / 4 && live.len() >= 2 {
            let i = live[rng.random_range(0..live.len())];
            signal(&instances[i], "-STOP");
            zombie = Some((i, Instant::now() + Duration::from_secs(12)));
            zombie_done = true;
        } else if !redis_restarted && elapsed > plan.seconds / 2 {
            redis.restart();
            redis_restarted = true;
        } else {
            let roll: f64 = rng.random();
            if roll < 0.7 || live.len() < 2 {
                let i = live[rng.random_range(0..live.len())];
                instances[i].kill().unwrap();
                instances[i].wait().unwrap();
                instances[i] = spawn(&mut started);
                kills += 1;
            } else if roll < 0.85 && instances.len() < 5 {
                instances.push(spawn(&mut started));
                added += 1;
            } else if instances.len() > 2 {
                let i = *live.last().unwrap();
                let mut gone = instances.remove(i);
                signal(&gone, "-TERM");
                let _ = gone.wait();
                removed += 1;
            }
        }
    }
    producer.await.unwrap();
    if let Some((i, _)) = zombie.take() {
        signal(&instances[i], "-CONT");
    }

    // Everything produced is applied; then stop the instances.
    let delivered = std::mem::take(&mut *delivered.lock().unwrap());
    let mut last: HashMap<i32, i64> = HashMap::new();
    for (p, o, _, _) in &delivered {
        let e = last.entry(*p).or_insert(*o);
        *e = (*e).max(*o);
    }
    let mut r = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = last.iter().all(|(p, o)| {
            let w: Option<i64> = redis::cmd("GET")
                .arg(hotlead::store::PartitionKeys::new(&topics.input, *p).watermark())
                .query(&mut r)
                .unwrap();
            w.is_some_and(|w| w >= *o)
        });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "not everything was applied within 180s; logs in {}", logs.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And the account stage has applied its topic to its end (the outbox
    // relays may still be sending when the contacts are applied).
    let deadline = Instant::now() + Duration::from_secs(180);
    let watcher: rdkafka::consumer::BaseConsumer = hotlead::kafka::client_config(&stack.brokers, &[]).create().unwrap();
    let mut quiet = 0;
    while quiet < 3 {
        let done = (0..topics.partitions).all(|p| {
            use rdkafka::consumer::Consumer as _;
            let (_, end) = watcher.fetch_watermarks(&topics.account_contributions, p, Duration::from_secs(10)).unwrap();
            let key = hotlead::store::PartitionKeys::new(&topics.account_contributions, p).watermark();
            let w: Option<i64> = redis::cmd("GET").arg(key).query(&mut r).unwrap();
            end == 0 || w.is_some_and(|w| w + 1 >= end)
        });
        quiet = if done { quiet + 1 } else { 0 };
        assert!(
            Instant::now() < deadline,
            "the account stage did not catch up within 180s; logs in {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    for c in &instances {
        signal(c, "-TERM");
    }
    for c in &mut instances {
        let _ = c.wait();
    }

    // The oracle: the same core over each whole partition.
    // The oracle: the same core over each whole partition, then the
    // coolings due by now (the instances sweep as they go).
    let support::Oracle {
        alerts: want_alerts,
        order: want_order,
        dead: want_dead,
        contacts: want_state,
        shadow: want_shadow,
        decay: want_decay,
        accounts: want_accounts,
    } = support::oracle_swept(&rules, &topics, delivered.iter().cloned(), Some(hotlead::decode::now_ms()));

    // Compare: sales' alerts and the shadow model's, together.
    let read = |topic: String| {
        let stack = &stack;
        async move {
            let records = stack.read_all(&topic, usize::MAX, Duration::from_secs(20)).await;
            records.iter().map(|r| ScoreAlert::decode(r.payload.as_slice()).unwrap()).collect::<Vec<_>>()
        }
    };
    let (sales, shadowed) = (read(topics.alerts.clone()).await, read(topics.shadow_alerts.clone()).await);
    let ids = |v: &[ScoreAlert]| v.iter().map(|a| a.alert_id.clone()).collect::<BTreeSet<String>>();
    let (sales_set, shadow_set) = (ids(&sales), ids(&shadowed));
    let got_set: BTreeSet<String> = sales_set.union(&shadow_set).cloned().collect();
    let lost = want_alerts.difference(&got_set).count();
    let unexpected = got_set.difference(&want_alerts).count();
    let duplicated =
        sales.len() - sales_set.len() + shadowed.len() - shadow_set.len() + sales_set.intersection(&shadow_set).count();
    // An alert an event raised goes to sales or to the shadow topic as the
    // roles at its offset say.
    let misrouted = sales_set.iter().filter(|id| want_shadow.contains(*id)).count()
        + shadow_set.iter().filter(|id| !want_shadow.contains(*id) && !want_decay.contains(*id)).count();
    // Each contact's alerts on each topic, in the order first delivered,
    // against the oracle's order of those that went there.
    let mut got_order: std::collections::BTreeMap<(bool, String), Vec<String>> = Default::default();
    let mut first = BTreeSet::new();
    for (on_shadow, a) in sales.iter().map(|a| (false, a)).chain(shadowed.iter().map(|a| (true, a))) {
        if first.insert((on_shadow, a.alert_id.clone())) {
            got_order.entry((on_shadow, a.contact_id.clone())).or_default().push(a.alert_id.clone());
        }
    }
    let mut want_by_topic: std::collections::BTreeMap<(bool, String), Vec<String>> = Default::default();
    for (contact, alerts) in &want_order {
        for id in alerts {
            let on_shadow = shadow_set.contains(id) && !sales_set.contains(id) || want_shadow.contains(id);
            want_by_topic.entry((on_shadow, contact.clone())).or_default().push(id.clone());
        }
    }
    let got_records = sales.len() + shadowed.len();
    let out_of_order = want_by_topic.iter().filter(|(k, ids)| got_order.get(*k) != Some(ids)).count();
    // Accounts: the account alerts are the crossings of the contribution
    // log applied once, in each partition's offset order (a repeat keeps
    // its id); each account holds each of its contacts once, as the
    // contact stands after its last event.
    let mut log: std::collections::BTreeMap<i32, Vec<(i64, Vec<hotlead::proto::AccountContribution>)>> =
        Default::default();
    for rec in stack.read_all(&topics.account_contributions, usize::MAX, Duration::from_secs(20)).await {
        let bundle = hotlead::proto::AccountContributions::decode(rec.payload.as_slice()).unwrap();
        log.entry(rec.partition).or_default().push((rec.offset, bundle.contributions));
    }
    let mut account_states: HashMap<String, hotlead::account::AccountState> = HashMap::new();
    let mut want_account_alerts = Vec::new();
    for records in log.values_mut() {
        records.sort_by_key(|(o, _)| *o);
        for c in records.iter().flat_map(|(_, b)| b) {
            let st = account_states.entry(c.account_id.clone()).or_default();
            hotlead::account::apply(&rules, &c.account_id, st, c, &mut want_account_alerts);
        }
    }
    let account_alerts: Vec<hotlead::proto::AccountAlert> = stack
        .read_all(&topics.account_alerts, usize::MAX, Duration::from_secs(20))
        .await
        .iter()
        .map(|r| hotlead::proto::AccountAlert::decode(r.payload.as_slice()).unwrap())
        .collect();
    let want_account_ids: BTreeSet<&str> = want_account_alerts.iter().map(|a| a.alert_id.as_str()).collect();
    let got_account_ids: BTreeSet<&str> = account_alerts.iter().map(|a| a.alert_id.as_str()).collect();
    let account_lost = want_account_ids.difference(&got_account_ids).count();
    let account_unexpected = got_account_ids.difference(&want_account_ids).count();
    let account_duplicated = account_alerts.len() - got_account_ids.len();
    let first_seen = |v: &[hotlead::proto::AccountAlert]| {
        let mut m: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for a in v {
            let ids = m.entry(a.account_id.clone()).or_default();
            if !ids.contains(&a.alert_id) {
                ids.push(a.alert_id.clone());
            }
        }
        m
    };
    let accounts_out_of_order = {
        let (got, want) = (first_seen(&account_alerts), first_seen(&want_account_alerts));
        want.iter().filter(|(k, ids)| got.get(*k) != Some(ids)).count()
    };
    let mut accounts_differ = Vec::new();
    for (account, members) in &want_accounts {
        let stored = (0..topics.partitions).find_map(|p| {
            let key = hotlead::store::PartitionKeys::new(&topics.account_contributions, p).states();
            let v: Option<Vec<u8>> = redis::cmd("HGET").arg(key).arg(account).query(&mut r).unwrap();
            v.map(|v| hotlead::account::AccountState::decode(&v).unwrap())
        });
        let got: std::collections::BTreeMap<String, Vec<PartFields>> = stored
            .map(|st| {
                st.members
                    .iter()
                    .map(|(c, m)| {
                        let mut parts: Vec<PartFields> =
                            m.parts.iter().map(|(k, p)| (k.clone(), p.b, p.a, p.f, p.tier.clone())).collect();
                        parts.sort_by(|x, y| x.0.cmp(&y.0));
                        (c.clone(), parts)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let want: std::collections::BTreeMap<String, Vec<PartFields>> = members
            .iter()
            .map(|(c, parts)| {
                let mut parts: Vec<PartFields> =
                    parts.iter().map(|p| (p.model.clone(), p.behaviour, p.at_ms, p.fit, p.tier.clone())).collect();
                parts.sort_by(|x, y| x.0.cmp(&y.0));
                (c.clone(), parts)
            })
            .collect();
        if got != want {
            let first = want
                .iter()
                .find(|(c, p)| got.get(*c) != Some(p))
                .map(|(c, p)| format!("{c}: stored {:?}, oracle {p:?}", got.get(c)))
                .or_else(|| {
                    got.keys().find(|c| !want.contains_key(*c)).map(|c| format!("{c}: stored, not in the oracle"))
                });
            accounts_differ.push(format!("{account} ({})", first.unwrap_or_default()));
        }
    }
    let dead = stack.read_all(&topics.dead_letter, usize::MAX, Duration::from_secs(20)).await;
    let got_dead: BTreeSet<(i32, String)> = dead
        .iter()
        .map(|d| (d.headers["hotlead.source.partition"].parse().unwrap(), d.headers["hotlead.source.offset"].clone()))
        .collect();
    let mut mismatched = Vec::new();
    for (p, contact, fields) in &want_state {
        let key = hotlead::store::PartitionKeys::new(&topics.input, *p).contact(contact);
        let stored = support::stored_fields(&mut r, &rules, &key);
        for (f, want) in fields {
            if !support::field_matches(f, stored.get(f), want) {
                mismatched.push(format!("{contact} {f}: {:?} vs {want}", stored.get(f)));
            }
        }
    }
    println!(
        "faults: seed {} | {} events ({} duplicates, {} late, {} poison) | {} kills, zombie {}, redis restart {}, {} added, {} removed | sweep on | promotion and rollback {} | alerts: {} expected, {} delivered ({} to sales, {} shadow), lost {}, delivered more than once {}, unexpected {}, misrouted {}, contacts out of order {} | dead letters {}/{} | contacts {} checked, {} differ | account alerts: {} expected, {} delivered, lost {}, delivered more than once {}, unexpected {}, accounts out of order {} | accounts {} checked, {} differ | logs {}",
        plan.seed,
        delivered.len(),
        duplicates,
        late,
        poison,
        kills,
        zombie_done,
        redis_restarted,
        added,
        removed,
        plan.promote,
        want_alerts.len(),
        got_records,
        sales.len(),
        shadowed.len(),
        lost,
        duplicated,
        unexpected,
        misrouted,
        out_of_order,
        got_dead.len(),
        want_dead.len(),
        want_state.len(),
        mismatched.len(),
        want_account_ids.len(),
        account_alerts.len(),
        account_lost,
        account_duplicated,
        account_unexpected,
        accounts_out_of_order,
        want_accounts.len(),
        accounts_differ.len(),
        logs.display()
    );
    assert!(want_alerts.len() > 50, "the stream should raise alerts");
    assert_eq!((lost, unexpected), (0, 0), "alerts lost or unexpected");
    assert_eq!(misrouted, 0, "alerts on the wrong side of a promotion");
    assert!(!sales.is_empty() && !shadowed.is_empty());
    if plan.promote {
        let heard: BTreeSet<&str> = sales.iter().map(|a| a.model.as_str()).collect();
        assert!(heard.contains("engagement-v2"), "sales heard the promoted model: {heard:?}");
    }
    assert_eq!(out_of_order, 0, "contacts whose alerts arrived out of the order raised");
    assert!(want_account_ids.len() >= 10, "the stream should heat accounts ({})", want_account_ids.len());
    assert_eq!((account_lost, account_unexpected), (0, 0), "account alerts lost or unexpected");
    assert_eq!(accounts_out_of_order, 0, "accounts whose alerts arrived out of the order raised");
    assert!(
        accounts_differ.is_empty(),
        "accounts differ from their contacts: {:?}",
        &accounts_differ[..accounts_differ.len().min(5)]
    );
    assert!(mismatched.is_empty(), "scores differ from the oracle: {:?}", &mismatched[..mismatched.len().min(10)]);
    assert_eq!(got_dead, want_dead, "dead letters are exactly the poison input");
    assert_eq!(want_dead.len(), poison);
    assert!(zombie_done && redis_restarted && kills > 0);
    if std::env::var("HOTLEAD_FAULTS").as_deref() == Ok("long") {
        assert!(kills >= 20, "the long run kills at least 20 times ({kills})");
    }
}
