//! Test support: real servers on free loopback ports.
//!
//! [`Stack::start`] starts a Tansu broker (SQLite storage) and a
//! `redis-server`, each in its own temp dir, and stops them on drop. Set
//! `HOTLEAD_TEST_KAFKA` (bootstrap servers) and `HOTLEAD_TEST_REDIS` (a Redis
//! URL) to run against external servers instead; every test uses topics with
//! random names, so runs never see each other's data.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hotlead::config::Config;
use prost::Message as _;
use rand::Rng;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

/// A broker and a Redis for one test.
pub struct Stack {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Redis URL.
    pub redis_url: String,
    broker: Option<(Child, u16)>,
    redis: Option<(Child, u16)>,
    _dir: tempfile::TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (c, _) in self.broker.iter_mut().chain(self.redis.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A child process killed when the test that started it ends, passed or not.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Flags for a headless Chromium that stays quiet: no sandbox (tests run as
/// root), no GPU, no network of its own.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// What headless Chromium makes of `url`: `what` is `--dump-dom` (the
/// page's DOM, returned) or `--screenshot=FILE`; scripts run for up to 8 s
/// of virtual time in a 1280x900 window.
pub fn chromium(what: &str, url: &str) -> String {
    chromium_in(what, url, 900, 8000)
}

/// [`chromium`] in a 1280 x `height` window, with `budget_ms` of virtual time.
pub fn chromium_in(what: &str, url: &str, height: u32, budget_ms: u32) -> String {
    let out = chromium_output(&[what], url, height, budget_ms);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Headless Chromium's whole output for `url` with `args` (its exit status
/// left to the caller).
pub fn chromium_output(args: &[&str], url: &str, height: u32, budget_ms: u32) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    std::process::Command::new("chromium")
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg(format!("--window-size=1280,{height}"))
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run chromium ({e}); run scripts/setup.sh to install it"))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("{what} did not listen on 127.0.0.1:{port} within 30s; its log:\n{log}");
}

fn spawn(cmd: &mut Command, what: &str, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    cmd.stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what} ({e}); run scripts/setup.sh to install it"))
}

fn spawn_tansu(dir: &Path, port: u16) -> Child {
    let url = format!("tcp://127.0.0.1:{port}");
    let log = dir.join("tansu.log");
    let child = spawn(
        Command::new("tansu")
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(dir),
        "tansu",
        &log,
    );
    wait_for_port(port, "tansu", &log);
    child
}

fn spawn_redis(dir: &Path, port: u16) -> Child {
    let log = dir.join("redis.log");
    let child = spawn(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"])
            .current_dir(dir),
        "redis-server",
        &log,
    );
    wait_for_port(port, "redis-server", &log);
    child
}

impl Stack {
    /// Starts (or connects to) a broker and a Redis.
    pub fn start() -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = None;
        let mut redis = None;
        let brokers = match std::env::var("HOTLEAD_TEST_KAFKA") {
            Ok(b) => b,
            Err(_) => {
                let port = free_port();
                broker = Some((spawn_tansu(dir.path(), port), port));
                format!("127.0.0.1:{port}")
            }
        };
        let redis_url = match std::env::var("HOTLEAD_TEST_REDIS") {
            Ok(r) => r,
            Err(_) => {
                let port = free_port();
                redis = Some((spawn_redis(dir.path(), port), port));
                format!("redis://127.0.0.1:{port}")
            }
        };
        Stack { brokers, redis_url, broker, redis, _dir: dir }
    }

    /// Stops the broker this stack started (an outage; no-op with an
    /// external one).
    pub fn stop_broker(&mut self) {
        if let Some((c, _)) = self.broker.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on its port, with the data it had.
    pub fn restart_broker(&mut self) {
        if let Some((c, port)) = self.broker.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
            *c = spawn_tansu(self._dir.path(), *port);
        }
    }

    /// Kills Redis (`kill -9`) and starts it again on its port from the
    /// snapshot of its last `SAVE` (nothing, if there was none).
    pub fn restart_redis(&mut self) {
        if let Some((c, port)) = self.redis.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
            *c = spawn_redis(self._dir.path(), *port);
        }
    }

    /// Random topic names for one test: input, alerts, dead letters.
    pub async fn topics(&self, partitions: i32) -> Topics {
        let tag: String = rand::rng().sample_iter(rand::distr::Alphanumeric).take(8).map(char::from).collect();
        let t = Topics {
            input: format!("interactions-{tag}"),
            alerts: format!("sales-alerts-{tag}"),
            dead_letter: format!("interactions-{tag}.dlq"),
            erasures: format!("erasures-{tag}"),
            shadow_alerts: format!("shadow-alerts-{tag}"),
            account_contributions: format!("account-contributions-{tag}"),
            account_alerts: format!("account-alerts-{tag}"),
            partitions,
            group: format!("hotlead-{tag}"),
        };
        let client = hotlead::kafka::client_config(&self.brokers, &[]);
        let all = [
            (&t.input[..], partitions),
            (&t.alerts, 1),
            (&t.dead_letter, 1),
            (&t.erasures, 1),
            (&t.shadow_alerts, 1),
            (&t.account_contributions, partitions),
            (&t.account_alerts, 1),
        ];
        hotlead::kafka::create_topics(&client, &all, 1).await.unwrap();
        t
    }

    /// The `hotlead` binary with `args`, configured for these servers,
    /// topics and rules (plus `env`, e.g. `RUST_LOG`), its output appended
    /// to `log`.
    pub fn spawn_hotlead(
        &self,
        topics: &Topics,
        rules: &Path,
        log: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> std::process::Child {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_hotlead"))
            .args(args)
            .envs(self.env(topics, rules))
            .envs(env.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// A hotlead configuration for these servers and topics.
    pub fn config(&self, topics: &Topics, rules: &Path) -> Config {
        let env = self.env(topics, rules);
        Config::from_parts("", env).unwrap()
    }

    /// The `HOTLEAD_*` environment that configures hotlead for these servers
    /// and topics (also used to run the binary).
    pub fn env(&self, topics: &Topics, rules: &Path) -> Vec<(String, String)> {
        [
            ("HOTLEAD_KAFKA__BOOTSTRAP_SERVERS", self.brokers.clone()),
            ("HOTLEAD_KAFKA__GROUP_ID", topics.group.clone()),
            ("HOTLEAD_REDIS__URL", self.redis_url.clone()),
            ("HOTLEAD_TOPICS__INPUT", topics.input.clone()),
            ("HOTLEAD_TOPICS__ALERTS", topics.alerts.clone()),
            ("HOTLEAD_TOPICS__DEAD_LETTER", topics.dead_letter.clone()),
            ("HOTLEAD_TOPICS__ERASURES", topics.erasures.clone()),
            ("HOTLEAD_TOPICS__SHADOW_ALERTS", topics.shadow_alerts.clone()),
            ("HOTLEAD_TOPICS__ACCOUNT_CONTRIBUTIONS", topics.account_contributions.clone()),
            ("HOTLEAD_TOPICS__ACCOUNT_ALERTS", topics.account_alerts.clone()),
            ("HOTLEAD_RULES__PATH", rules.display().to_string()),
            ("HOTLEAD_PIPELINE__BATCH_WAIT", "5ms".to_string()),
            ("HOTLEAD_HTTP__LISTEN", String::new()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// A synchronous Redis connection.
    pub fn redis(&self) -> redis::Connection {
        redis::Client::open(self.redis_url.as_str()).unwrap().get_connection().unwrap()
    }

    /// A producer for test input.
    pub fn producer(&self) -> FutureProducer {
        hotlead::kafka::client_config(&self.brokers, &[]).set("linger.ms", "1").create().unwrap()
    }

    /// Produces raw payloads (key, payload) to `topic`; returns each one's
    /// (partition, offset).
    pub async fn produce(&self, topic: &str, messages: &[(Vec<u8>, Vec<u8>)]) -> Vec<(i32, i64)> {
        let p = self.producer();
        let mut out = Vec::with_capacity(messages.len());
        for chunk in messages.chunks(500) {
            let sends = chunk
                .iter()
                .map(|(k, v)| p.send_result(FutureRecord::to(topic).key(k).payload(v)).map_err(|(e, _)| e).unwrap());
            for d in futures::future::join_all(sends).await {
                let d = d.unwrap().unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
                out.push((d.partition, d.offset));
            }
        }
        out
    }

    /// Produces events keyed by contact id.
    pub async fn produce_events(&self, topic: &str, events: &[hotlead::proto::InteractionEvent]) -> Vec<(i32, i64)> {
        let raw: Vec<_> = events.iter().map(|e| (e.contact_id.clone().into_bytes(), e.encode_to_vec())).collect();
        self.produce(topic, &raw).await
    }

    /// Offset of the last event applied, per partition, from Redis.
    pub fn watermarks(&self, topics: &Topics) -> HashMap<i32, i64> {
        self.lane_watermarks(topics, "")
    }

    /// [`Stack::watermarks`] of a lane (`""`: the live service).
    pub fn lane_watermarks(&self, topics: &Topics, lane: &str) -> HashMap<i32, i64> {
        let mut r = self.redis();
        let namespace = hotlead::store::namespace_of(lane);
        (0..topics.partitions)
            .filter_map(|p| {
                let key = hotlead::store::PartitionKeys::in_namespace(&namespace, &topics.input, p).watermark();
                let w: Option<i64> = redis::cmd("GET").arg(key).query(&mut r).unwrap();
                w.map(|w| (p, w))
            })
            .collect()
    }

    /// Waits until Redis has applied every message up to these last
    /// offsets (per partition), or panics after `timeout`.
    pub async fn wait_applied(&self, topics: &Topics, last: &HashMap<i32, i64>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let w = self.watermarks(topics);
            if last.iter().all(|(p, o)| w.get(p).is_some_and(|x| x >= o)) {
                return;
            }
            assert!(Instant::now() < deadline, "not applied within {timeout:?}: watermarks {w:?}, want {last:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every alert on `topic` so far, decoded, in topic order (a quiet
    /// `wait` ends the read).
    pub async fn alerts(&self, topic: &str, wait: Duration) -> Vec<hotlead::proto::ScoreAlert> {
        let records = self.read_all(topic, usize::MAX, wait).await;
        records.iter().map(|r| hotlead::proto::ScoreAlert::decode(r.payload.as_slice()).unwrap()).collect()
    }

    /// The alerts on `topic` once at least `count` have arrived (or
    /// `timeout` passed) and a second more has passed, so repeats that come
    /// late are counted too.
    pub async fn settled_alerts(
        &self,
        topic: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<hotlead::proto::ScoreAlert> {
        let deadline = Instant::now() + timeout;
        while self.alerts(topic, Duration::from_secs(5)).await.len() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.alerts(topic, Duration::from_secs(5)).await
    }

    /// Reads the messages on `topic` from the start: until `count` have
    /// arrived, or no first message within `wait`, or a quiet second after
    /// the last one.
    pub async fn read_all(&self, topic: &str, count: usize, wait: Duration) -> Vec<Record> {
        let consumer: StreamConsumer = hotlead::kafka::client_config(&self.brokers, &[])
            .set("group.id", format!("reader-{}", rand::random::<u64>()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let mut out = Vec::new();
        while out.len() < count {
            let left = if out.is_empty() { wait } else { Duration::from_secs(1) };
            match tokio::time::timeout(left, consumer.recv()).await {
                Ok(Ok(m)) => out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
                    key: m.key().unwrap_or_default().to_vec(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }),
                Ok(Err(e)) => panic!("consume failed: {e}"),
                Err(_) => break,
            }
        }
        out
    }
}

/// One test's topics.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Input topic.
    pub input: String,
    /// Alert topic.
    pub alerts: String,
    /// Dead-letter topic.
    pub dead_letter: String,
    /// Erasure records' topic.
    pub erasures: String,
    /// Shadow models' alerts.
    pub shadow_alerts: String,
    /// Contacts' contributions to accounts (as many partitions as the input).
    pub account_contributions: String,
    /// Account alerts.
    pub account_alerts: String,
    /// Partitions of the input topic.
    pub partitions: i32,
    /// Consumer group.
    pub group: String,
}

/// A consumed message.
#[derive(Debug, Clone)]
pub struct Record {
    /// Key.
    pub key: Vec<u8>,
    /// Payload.
    pub payload: Vec<u8>,
    /// Headers as text.
    pub headers: HashMap<String, String>,
    /// The producer's timestamp (ms since the Unix epoch; 0 if none).
    pub timestamp_ms: i64,
    /// Partition and offset it was read at.
    pub partition: i32,
    pub offset: i64,
}

/// GET `path` from a listener on 127.0.0.1:`port`; returns the status and
/// the body as JSON (`Null` when it is not JSON).
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status: u16 = raw.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

/// A page view of `url` by `contact` at `at` (ms), with event id `id`.
pub fn page(id: &str, contact: &str, at: i64, url: &str) -> hotlead::proto::InteractionEvent {
    use hotlead::proto::interaction_event::Interaction;
    hotlead::proto::InteractionEvent {
        event_id: id.into(),
        contact_id: contact.into(),
        occurred_at: Some(hotlead::decode::timestamp(at)),
        interaction: Some(Interaction::PageView(hotlead::proto::PageView { url: url.into(), ..Default::default() })),
        ..Default::default()
    }
}

/// Writes a rules file into a temp dir that lives as long as the returned guard.
pub fn rules_file(yaml: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, yaml).unwrap();
    (dir, path)
}

/// The service running in this process, as `hotlead run` runs it.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The rules in force, reloaded from their file every 100 ms.
    pub rules: std::sync::Arc<hotlead::reload::LiveRules>,
    /// What the pipeline is doing.
    pub status: std::sync::Arc<hotlead::pipeline::Status>,
}

impl Running {
    /// Stops the service gracefully and checks it ended without error.
    pub async fn finish(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.handle.take().unwrap().await.unwrap().unwrap();
    }

    /// Waits for the service to stop by itself and returns its result.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let r = self.handle.take().unwrap().await.unwrap();
        drop(self.stop.take());
        r
    }
}

impl Drop for Running {
    /// A test that failed leaves its service running: cancel it and wait,
    /// so it is gone before the servers it uses are stopped.
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = futures::executor::block_on(handle);
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(15));
        }
    }
}

/// Runs the service in this process, its rules reloaded every 100 ms.
pub fn spawn_pipeline(config: Config, rules_path: &Path) -> Running {
    spawn_pipeline_with_clock(config, rules_path, std::sync::Arc::new(hotlead::decode::now_ms))
}

/// [`spawn_pipeline`] with the clock the cooling sweep reads.
pub fn spawn_pipeline_with_clock(mut config: Config, rules_path: &Path, clock: hotlead::pipeline::Clock) -> Running {
    if std::env::var_os("HOTLEAD_TEST_LOG").is_some() {
        hotlead::telemetry::init_logging(false);
    }
    config.rules.path = rules_path.to_path_buf();
    config.rules.reload_interval = Duration::from_millis(100);
    let service = hotlead::service::Service::new(config).unwrap().with_clock(clock);
    let (rules, status) = (service.rules(), service.status());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(service.run(async move {
        let _ = rx.await;
    }));
    Running { stop: Some(tx), handle: Some(handle), rules, status }
}

/// The highest offset per partition among delivered messages.
pub fn last_offsets(delivered: &[(i32, i64)]) -> HashMap<i32, i64> {
    let mut m = HashMap::new();
    for (p, o) in delivered {
        let e = m.entry(*p).or_insert(*o);
        *e = (*e).max(*o);
    }
    m
}

/// A contact's stored value: the binary state, or the text layout of
/// earlier versions (read the way hotlead reads it, by a holder of `rules`).
pub fn stored_value(
    conn: &mut impl redis::ConnectionLike,
    rules: &hotlead::rules::RuleSet,
    key: &str,
) -> hotlead::store::StoredValue {
    // `hl:{<topic>:<partition>}:c:<id>`: the partition's states and
    // vocabularies share its tag.
    let (tag, id) = key.split_once("}:c:").expect("a contact key");
    let v: Vec<hotlead::store::StoredValue> = redis::cmd("FCALL_RO")
        .arg("hotlead_load")
        .arg(4)
        .arg(format!("{tag}}}:vocab"))
        .arg(format!("{tag}}}:states"))
        .arg(format!("{tag}}}:erased"))
        .arg(key)
        .arg(rules.vocabulary_id.to_le_bytes().as_slice())
        .arg(id)
        .query(conn)
        .unwrap();
    v.into_iter().next().expect("one value")
}

/// A contact's stored state as its readable fields (empty when it has
/// none), to compare with the oracle's field by field.
pub fn stored_fields(
    conn: &mut impl redis::ConnectionLike,
    rules: &hotlead::rules::RuleSet,
    key: &str,
) -> HashMap<String, String> {
    let v = stored_value(conn, rules, key);
    if v.is_absent() {
        return HashMap::new();
    }
    let (account, state) = hotlead::store::decode_stored(rules, &v).unwrap_or_else(|e| panic!("{key}: {e}"));
    hotlead::store::text_fields(rules, account.as_deref(), &state).into_iter().collect()
}

/// A contact's stored state (`None` when it has none).
pub fn stored_contact(
    conn: &mut impl redis::ConnectionLike,
    rules: &hotlead::rules::RuleSet,
    key: &str,
) -> Option<hotlead::engine::Contact> {
    let v = stored_value(conn, rules, key);
    if v.is_absent() {
        return None;
    }
    let (account, state) = hotlead::store::decode_stored(rules, &v).unwrap_or_else(|e| panic!("{key}: {e}"));
    Some(hotlead::engine::Contact { account, state, erased: false })
}

/// Whether a stored hash field agrees with the oracle's: scores to 1e-9
/// relative; the recent event ids as a set of ids (their arrival times are
/// the wall clock's); every other field exactly.
pub fn field_matches(field: &str, got: Option<&String>, want: &str) -> bool {
    let Some(got) = got else { return false };
    if field.ends_with(":s") {
        return close(got.parse().unwrap_or(f64::NAN), want.parse().unwrap_or(f64::NAN));
    }
    if field == hotlead::store::SEEN_FIELD {
        let ids = |s: &str| -> std::collections::BTreeSet<String> {
            s.split(';').filter_map(|e| e.split_once(':')).map(|(h, _)| h.to_string()).collect()
        };
        return ids(got) == ids(want);
    }
    got == want
}

/// Whether two floats agree to 1e-9 relative.
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
}

/// A contact's hash fields as the oracle expects them: partition, contact
/// id, fields.
pub type ContactFields = (i32, String, Vec<(String, String)>);

/// What an offline run of the scoring core expects of a stream.
pub struct Oracle {
    /// Alert ids.
    pub alerts: std::collections::BTreeSet<String>,
    /// Each contact's alert ids in the order raised.
    pub order: std::collections::BTreeMap<String, Vec<String>>,
    /// Dead letters: source partition and offset.
    pub dead: std::collections::BTreeSet<(i32, String)>,
    /// Each contact's hash fields, with its partition.
    pub contacts: Vec<ContactFields>,
    /// Ids of the alerts an event raised for a shadow model (bound for the
    /// shadow topic). A cooling by decay takes the roles in force when it is
    /// found (a sweep or the contact's next event), so it is in neither set.
    pub shadow: std::collections::BTreeSet<String>,
    /// Ids of the coolings by decay.
    pub decay: std::collections::BTreeSet<String>,
    /// Each account's contacts with their parts in its roll-ups, as the
    /// contacts stand after their last event (what the account stage holds).
    pub accounts:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<hotlead::proto::ContactPart>>>,
}

/// The oracle: the same scoring engine the service runs, over each whole
/// partition at once, in offset order. `messages` are (partition, offset,
/// key, payload) as delivered.
pub fn oracle(
    rules: &hotlead::rules::RuleSet,
    topics: &Topics,
    messages: impl IntoIterator<Item = (i32, i64, Vec<u8>, Vec<u8>)>,
) -> Oracle {
    oracle_swept(rules, topics, messages, None)
}

/// [`oracle`], followed by a sweep at `sweep_at` (the coolings due by then,
/// which a running service raises without events).
pub fn oracle_swept(
    rules: &hotlead::rules::RuleSet,
    topics: &Topics,
    messages: impl IntoIterator<Item = (i32, i64, Vec<u8>, Vec<u8>)>,
    sweep_at: Option<i64>,
) -> Oracle {
    use hotlead::engine::{score_partition, sweep, Message, Source};
    let mut by_partition: std::collections::BTreeMap<i32, Vec<_>> = Default::default();
    for (p, offset, key, payload) in messages {
        by_partition.entry(p).or_default().push((offset, key, payload));
    }
    let limits = hotlead::decode::Limits::default();
    let now = hotlead::decode::now_ms();
    let mut out = Oracle {
        alerts: Default::default(),
        order: Default::default(),
        dead: Default::default(),
        contacts: vec![],
        shadow: Default::default(),
        decay: Default::default(),
        accounts: Default::default(),
    };
    for (p, mut msgs) in by_partition {
        msgs.sort_by_key(|m: &(i64, Vec<u8>, Vec<u8>)| m.0);
        let msgs = msgs.iter().map(|(o, k, v)| Message::decode(*o, Some(k), Some(v), &limits, now));
        let source = Source { topic: &topics.input, partition: p };
        let mut effects = score_partition(rules, source, msgs);
        for (contact, c) in &effects.contacts {
            let parts = hotlead::account::parts(rules, &c.state);
            if let (Some(account), false) = (&c.account, parts.is_empty() || c.erased) {
                out.accounts.entry(account.clone()).or_default().insert(contact.clone(), parts);
            }
        }
        if let Some(at) = sweep_at {
            let swept = sweep(rules, source, std::mem::take(&mut effects.contacts), at);
            effects.alerts.extend(swept.alerts);
            effects.contacts = swept.contacts;
        }
        for a in effects.alerts {
            out.order.entry(a.contact_id.clone()).or_default().push(a.alert_id.clone());
            if a.trigger_event_id.is_empty() {
                out.decay.insert(a.alert_id.clone());
            } else if a.shadow {
                out.shadow.insert(a.alert_id.clone());
            }
            out.alerts.insert(a.alert_id);
        }
        out.dead.extend(effects.dead_letters.iter().map(|d| (p, d.offset.to_string())));
        for (contact, c) in effects.contacts {
            let fields = hotlead::store::text_fields(rules, c.account.as_deref(), &c.state);
            out.contacts.push((p, contact, fields));
        }
    }
    out
}

/// The (partition, offset, key, payload) of produced events.
pub fn landed(
    events: &[hotlead::proto::InteractionEvent],
    delivered: &[(i32, i64)],
) -> Vec<(i32, i64, Vec<u8>, Vec<u8>)> {
    use prost::Message as _;
    events
        .iter()
        .zip(delivered)
        .map(|(e, (p, o))| (*p, *o, e.contact_id.clone().into_bytes(), e.encode_to_vec()))
        .collect()
}

/// Serves the read API for a running pipeline on a free port, with `token`;
/// returns the port.
pub async fn serve_api(stack: &Stack, running: &Running, topics: &Topics, token: &str) -> u16 {
    let store = hotlead::store::Store::connect(&stack.redis_url).await.unwrap();
    let mut ctx = hotlead::api::ApiContext::new(
        store,
        running.rules.clone(),
        running.status.clone(),
        topics.input.clone(),
        &hotlead::kafka::client_config(&stack.brokers, &[]),
    )
    .unwrap();
    ctx.token = Some(token.to_string());
    ctx.account_topic = topics.account_contributions.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(hotlead::api::serve(listener, ctx, std::future::pending()));
    port
}
pub mod notify;

/// A visitor id whose events land on another partition than `contact`'s,
/// on an input topic of `partitions` partitions (probed on a topic of its
/// own with as many partitions); returns (visitor, contact).
pub async fn apart(stack: &Stack, partitions: i32, contact: &str) -> (String, String) {
    let probe = stack.topics(partitions).await;
    let contact = contact.to_string();
    let candidates: Vec<String> = (0..16).map(|i| format!("anon-{i:02x}7f3")).collect();
    let mut events = vec![page("p", &contact, 1, "/")];
    events.extend(candidates.iter().map(|v| page("p", v, 1, "/")));
    let landed = stack.produce_events(&probe.input, &events).await;
    let visitor = candidates.iter().zip(&landed[1..]).find(|(_, (p, _))| *p != landed[0].0).unwrap().0;
    (visitor.clone(), contact)
}
