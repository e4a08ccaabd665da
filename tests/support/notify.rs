//! Support for `hotlead notify` tests: a real HTTP receiver and a real SMTP
//! server on 127.0.0.1, alerts to produce, and the notifier's configuration.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use hotlead::proto::{score_alert::Direction, Contribution, ScoreAlert};

use super::{free_port, KillOnDrop, Stack};

/// How the receiver answers on one path.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// 200 at once.
    Ok,
    /// 500 until this moment, then 200.
    FailUntil(Instant),
    /// Always 500, after this delay.
    Fail(Duration),
    /// 200 after this delay.
    Slow(Duration),
}

/// One request the receiver answered.
#[derive(Debug, Clone)]
pub struct Hit {
    /// `Idempotency-Key`.
    pub key: String,
    /// The status it answered.
    pub status: u16,
    /// The JSON body.
    pub body: serde_json::Value,
    /// Whether `X-Hotlead-Signature` verified with the receiver's secret
    /// (`None` without the header).
    pub signed: Option<bool>,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    answers: HashMap<String, Answer>,
    hits: HashMap<String, Vec<Hit>>,
}

/// A webhook receiver: an axum server on a free 127.0.0.1 port that records
/// every request and answers as told per path.
#[derive(Clone)]
pub struct Receiver {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    secret: Arc<Vec<u8>>,
    inner: Arc<Mutex<Inner>>,
}

async fn hook(
    State(r): State<Receiver>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let answer = r.inner.lock().unwrap().answers.get(&path).copied().unwrap_or(Answer::Ok);
    let status = match answer {
        Answer::Ok => StatusCode::OK,
        Answer::FailUntil(t) if Instant::now() < t => StatusCode::INTERNAL_SERVER_ERROR,
        Answer::FailUntil(_) => StatusCode::OK,
        Answer::Fail(d) => {
            tokio::time::sleep(d).await;
            StatusCode::INTERNAL_SERVER_ERROR
        }
        Answer::Slow(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK
        }
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let now_s = hotlead::decode::now_ms() / 1000;
    let hit = Hit {
        key: header("idempotency-key").unwrap_or_default(),
        status: status.as_u16(),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        signed: header("x-hotlead-signature")
            .map(|s| hotlead::notify::webhook::verify(&r.secret, &s, &body, now_s, 300)),
        at: Instant::now(),
    };
    r.inner.lock().unwrap().hits.entry(path).or_default().push(hit);
    status
}

impl Receiver {
    /// Starts a receiver that verifies signatures with `secret`.
    pub async fn start(secret: &[u8]) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let r = Receiver { base, secret: Arc::new(secret.to_vec()), inner: Default::default() };
        let app = axum::Router::new().route("/{*path}", axum::routing::post(hook)).with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        r
    }

    /// Answers requests to `path` (no leading slash) this way.
    pub fn answer(&self, path: &str, answer: Answer) {
        self.inner.lock().unwrap().answers.insert(path.to_string(), answer);
    }

    /// Every request to `path` so far.
    pub fn hits(&self, path: &str) -> Vec<Hit> {
        self.inner.lock().unwrap().hits.get(path).cloned().unwrap_or_default()
    }

    /// The requests to `path` answered 2xx.
    pub fn successes(&self, path: &str) -> Vec<Hit> {
        self.hits(path).into_iter().filter(|h| (200..300).contains(&h.status)).collect()
    }

    /// The distinct idempotency keys `path` accepted.
    pub fn accepted_keys(&self, path: &str) -> std::collections::BTreeSet<String> {
        self.successes(path).into_iter().map(|h| h.key).collect()
    }

    /// Waits until `path` has accepted every key in `keys`, or panics after
    /// `timeout`.
    pub async fn wait_for(&self, path: &str, keys: &std::collections::BTreeSet<String>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.accepted_keys(path);
            if keys.is_subset(&got) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: {} of {} alerts accepted within {timeout:?}; missing e.g. {:?}",
                keys.intersection(&got).count(),
                keys.len(),
                keys.difference(&got).take(3).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A test alert: `n` picks the contact; the other fields as given.
pub fn alert(n: usize, tier: &str, direction: Direction, account: &str, historical: bool) -> ScoreAlert {
    let previous = if direction == Direction::Heated { "warm" } else { "hot" };
    ScoreAlert {
        alert_id: format!("engagement:c-{n:04}:{tier}:{}", 1_767_268_800_000u64 + n as u64),
        contact_id: format!("c-{n:04}"),
        account_id: account.to_string(),
        model: "engagement".into(),
        model_version: 1,
        direction: direction as i32,
        tier: tier.into(),
        previous_tier: previous.into(),
        score: if direction == Direction::Heated { 61.5 } else { 18.0 },
        threshold: if direction == Direction::Heated { 60.0 } else { 20.0 },
        crossed_at: Some(hotlead::decode::timestamp(hotlead::decode::now_ms())),
        trigger_event_id: format!("e-{n}"),
        top_contributions: vec![
            Contribution { rule_id: "webinar-attended".into(), points: 30.0 },
            Contribution { rule_id: "pricing-page".into(), points: 20.0 },
        ],
        historical,
        shadow: false,
    }
}

/// The alert topic (with `partitions`), the notify dead-letter topic and a
/// consumer group, all new.
pub struct NotifyTopics {
    /// Alerts in.
    pub alerts: String,
    /// Failed deliveries out.
    pub dead_letter: String,
    /// The notifier's consumer group.
    pub group: String,
}

impl NotifyTopics {
    /// Creates the topics on `stack`'s broker.
    pub async fn create(stack: &Stack, partitions: i32) -> NotifyTopics {
        let tag = format!("{:016x}", rand::random::<u64>());
        let t = NotifyTopics {
            alerts: format!("sales-alerts-{tag}"),
            dead_letter: format!("sales-alerts-{tag}.notify-dlq"),
            group: format!("hotlead-notify-{tag}"),
        };
        let client = hotlead::kafka::client_config(&stack.brokers, &[]);
        hotlead::kafka::create_topics(&client, &[(&t.alerts, partitions), (&t.dead_letter, 1)], 1).await.unwrap();
        t
    }

    /// The `HOTLEAD_*` environment for `hotlead notify` with `routes`.
    pub fn env(&self, stack: &Stack, routes: &Path) -> Vec<(String, String)> {
        [
            ("HOTLEAD_KAFKA__BOOTSTRAP_SERVERS", stack.brokers.clone()),
            ("HOTLEAD_REDIS__URL", stack.redis_url.clone()),
            ("HOTLEAD_TOPICS__ALERTS", self.alerts.clone()),
            ("HOTLEAD_NOTIFY__ROUTES", routes.display().to_string()),
            ("HOTLEAD_NOTIFY__GROUP", self.group.clone()),
            ("HOTLEAD_NOTIFY__DEAD_LETTER_TOPIC", self.dead_letter.clone()),
            ("HOTLEAD_NOTIFY__LINKS_BASE_URL", "http://board.test:9464".to_string()),
            ("HOTLEAD_NOTIFY__RELOAD_INTERVAL", "200ms".to_string()),
            ("HOTLEAD_NOTIFY__HTTP_LISTEN", String::new()),
            ("HOTLEAD_HTTP__LISTEN", String::new()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Produces alerts keyed by contact id.
    pub async fn produce(&self, stack: &Stack, alerts: &[ScoreAlert]) {
        use prost::Message as _;
        let raw: Vec<_> = alerts.iter().map(|a| (a.contact_id.clone().into_bytes(), a.encode_to_vec())).collect();
        stack.produce(&self.alerts, &raw).await;
    }
}

/// `hotlead notify` running in this process.
pub struct Notifier {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), hotlead::notify::NotifyError>>>,
}

impl Notifier {
    /// Starts the notifier with this environment.
    pub fn start(env: Vec<(String, String)>) -> Notifier {
        let config = hotlead::config::Config::from_parts("", env).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(hotlead::notify::run(config, false, async move {
            let _ = rx.await;
        }));
        Notifier { stop: Some(tx), handle: Some(handle) }
    }

    /// Stops it gracefully and checks it ended without error.
    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.handle.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// The `hotlead` binary running `notify` (with `args`) in this environment,
/// its output in `log`.
pub fn spawn_binary(args: &[&str], env: &[(String, String)], log: &Path) -> KillOnDrop {
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hotlead"))
        .arg("notify")
        .args(args)
        .envs(env.iter().cloned())
        .env("RUST_LOG", "info,rdkafka=warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

/// A real SMTP server (aiosmtpd, installed by scripts/setup.sh) writing
/// each message it receives as JSON into a temp dir.
pub struct SmtpSink {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    _child: KillOnDrop,
}

impl SmtpSink {
    /// Starts the server.
    pub fn start() -> SmtpSink {
        let python: PathBuf = [env!("CARGO_MANIFEST_DIR"), "target", "smtp-venv", "bin", "python"].iter().collect();
        assert!(python.exists(), "{} is missing: run scripts/setup.sh (it installs aiosmtpd)", python.display());
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let script: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "support", "smtp_sink.py"].iter().collect();
        let log = std::fs::File::create(dir.path().join("smtp.log")).unwrap();
        let out = dir.path().join("messages");
        std::fs::create_dir(&out).unwrap();
        let child = Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let child = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "smtp_sink did not listen: {:?}",
                std::fs::read_to_string(dir.path().join("smtp.log"))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpSink { port, dir, _child: child }
    }

    /// The messages received so far, in arrival order.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        let mut names: Vec<_> = std::fs::read_dir(self.dir.path().join("messages"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json") && !p.file_name().unwrap().to_string_lossy().starts_with('.')
            })
            .collect();
        names.sort();
        names.iter().map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()).collect()
    }
}
