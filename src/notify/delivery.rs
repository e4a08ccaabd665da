//! Delivery to one destination: its own queue and tasks, so a slow or
//! failing destination never delays another or later alerts.
//!
//! Each alert handed to a destination is sent by a task of its own: it
//! waits out quiet hours, takes a slot of the destination's concurrency and
//! its rate limit, sends, and on a retryable failure waits an exponential
//! backoff with jitter before the next try. Past the retry budget, or on a
//! permanent refusal, the alert goes to the notify dead-letter topic with
//! the reason in its headers. Either way the delivery is reported finished,
//! and only then may the alert's offset be stored.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{mpsc, Mutex, Semaphore};

use super::email::{self, Mailer};
use super::payload::{self, Links};
use super::routes::{Destination, Kind, RateLimit, Retry};
use super::slack;
use super::webhook::{self, Post};
use crate::proto::ScoreAlert;
use crate::telemetry;

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeliveryError {
    /// The receiver answered with a status worth retrying (5xx, 408, 429).
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the answer's body.
        body: String,
        /// The receiver's `Retry-After`, if it gave one.
        retry_after: Option<Duration>,
    },
    /// The receiver refused the request for good (4xx but 408 and 429).
    #[error("HTTP {status} (refused for good): {body}")]
    Rejected {
        /// The status code.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// No answer within the destination's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The SMTP server failed in a way worth retrying.
    #[error("SMTP: {0}")]
    Smtp(String),
    /// The SMTP server refused the message for good.
    #[error("SMTP refused for good: {0}")]
    SmtpRejected(String),
    /// The destination cannot be used as configured (an unreadable secret
    /// file, a bad address).
    #[error("destination misconfigured: {0}")]
    Invalid(String),
    /// The message on the alert topic is not a `ScoreAlert`.
    #[error("not a hotlead.v1.ScoreAlert: {0}")]
    NotAnAlert(String),
}

impl DeliveryError {
    /// A short, fixed reason code for headers and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Status { .. } => "http_status",
            Self::Rejected { .. } => "rejected",
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::Smtp(_) => "smtp",
            Self::SmtpRejected(_) => "smtp_rejected",
            Self::Invalid(_) => "invalid",
            Self::NotAnAlert(_) => "undecodable",
        }
    }

    /// Every reason code, for pre-registering metrics.
    pub const REASONS: [&'static str; 8] =
        ["http_status", "rejected", "timeout", "connect", "smtp", "smtp_rejected", "invalid", "undecodable"];

    /// Whether trying again cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Rejected { .. } | Self::SmtpRejected(_) | Self::Invalid(_) | Self::NotAnAlert(_))
    }
}

/// The wait before try `attempt + 1` (`attempt` ≥ 1): the initial backoff
/// doubled per try, capped, then "equal jitter": half of it fixed and half
/// scaled by `unit` in [0, 1).
pub fn backoff(retry: &Retry, attempt: u32, unit: f64) -> Duration {
    let exp = retry.initial_backoff.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(40) as i32);
    let cap = exp.min(retry.max_backoff.as_secs_f64());
    Duration::from_secs_f64(cap / 2.0 + cap / 2.0 * unit.clamp(0.0, 1.0))
}

/// A rate limit (GCRA): bursts of up to `requests`, then one per
/// `per / requests`.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    tolerance: Duration,
    theoretical_arrival: Mutex<tokio::time::Instant>,
}

impl RateLimiter {
    /// A limiter for `limit`.
    pub fn new(limit: &RateLimit) -> Self {
        let interval = limit.per / limit.requests.max(1);
        Self {
            interval,
            tolerance: limit.per.saturating_sub(interval),
            theoretical_arrival: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits until one more send is allowed, and takes it.
    pub async fn acquire(&self) {
        let wait_until = {
            let mut tat = self.theoretical_arrival.lock().await;
            let now = tokio::time::Instant::now();
            let t = (*tat).max(now);
            *tat = t + self.interval;
            t.checked_sub(self.tolerance).filter(|at| *at > now)
        };
        if let Some(at) = wait_until {
            tokio::time::sleep_until(at).await;
        }
    }
}

/// An alert read from the topic, shared by its deliveries.
#[derive(Debug)]
pub struct Envelope {
    /// The alert.
    pub alert: ScoreAlert,
    /// The message's payload as read, for the dead-letter topic.
    pub payload: Vec<u8>,
    /// The message's key.
    pub key: Vec<u8>,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// When the alert was produced (the message timestamp), in ms.
    pub produced_ms: Option<i64>,
    /// Board and read-API links for its contact.
    pub links: Links,
}

/// One alert for one destination.
#[derive(Debug, Clone)]
pub struct Job {
    /// The alert.
    pub envelope: Arc<Envelope>,
    /// The routes that send it here.
    pub routes: Vec<String>,
    /// Held until this moment (ms since the epoch): quiet hours.
    pub not_before_ms: Option<i64>,
}

/// The notify dead-letter topic.
pub struct DeadLetters {
    /// An idempotent producer.
    pub producer: FutureProducer,
    /// The dead-letter topic.
    pub topic: String,
    /// The alert topic, named in the headers.
    pub source_topic: String,
}

impl DeadLetters {
    /// Writes `envelope` with the reason to the dead-letter topic; retries
    /// until the broker takes it (the alert's offset waits for this).
    pub async fn send(&self, envelope: &Envelope, destination: &str, attempts: u32, error: &DeliveryError) {
        let text: String = error.to_string().chars().take(1000).collect();
        let fields = [
            ("hotlead.reason", error.reason().to_string()),
            ("hotlead.error", text),
            ("hotlead.destination", destination.to_string()),
            ("hotlead.attempts", attempts.to_string()),
            ("hotlead.alert_id", envelope.alert.alert_id.clone()),
            ("hotlead.source.topic", self.source_topic.clone()),
            ("hotlead.source.partition", envelope.partition.to_string()),
            ("hotlead.source.offset", envelope.offset.to_string()),
        ];
        let retry = Retry::default();
        for attempt in 1.. {
            let headers = fields
                .iter()
                .fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(v.as_bytes()) }));
            let record = FutureRecord::to(&self.topic).key(&envelope.key).payload(&envelope.payload).headers(headers);
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => return,
                Err((e, _)) => {
                    telemetry::retrying("notify_dead_letter", attempt, &e);
                    let wait = backoff(&retry, attempt, rand::random());
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// What every destination shares.
pub struct Shared {
    /// Which alerts each destination took already.
    pub sent: super::sent::SentLog,
    /// The HTTP client (connection pools per host).
    pub http: reqwest::Client,
    /// Where failed deliveries go.
    pub dead_letters: DeadLetters,
    /// Finished deliveries: (partition, offset).
    pub done: mpsc::UnboundedSender<(i32, i64)>,
    /// Print what would be sent instead of sending.
    pub dry_run: bool,
}

/// How a destination sends.
enum Target {
    Webhook {
        url: String,
        secret: Option<Vec<u8>>,
        timeout: Duration,
    },
    Slack {
        url: String,
        timeout: Duration,
    },
    Email {
        mailer: Box<Mailer>,
        digest: Option<Duration>,
    },
    /// Misconfigured: every delivery fails with this.
    Broken(DeliveryError),
}

/// One destination's sender: its target, concurrency and rate limit.
struct Worker {
    destination: Destination,
    target: Target,
    slots: Semaphore,
    limiter: Option<RateLimiter>,
    shared: Arc<Shared>,
}

/// Starts the tasks of `destination`; alerts sent into the returned queue
/// are delivered until the queue is dropped and drained.
pub fn spawn(destination: Destination, shared: Arc<Shared>) -> mpsc::UnboundedSender<Job> {
    let target = target(&destination).unwrap_or_else(Target::Broken);
    if let Target::Broken(e) = &target {
        telemetry::notify_destination_broken(&destination.name, e);
    }
    let digest = match &target {
        Target::Email { digest, .. } => *digest,
        _ => None,
    };
    let worker = Arc::new(Worker {
        slots: Semaphore::new(destination.concurrency),
        limiter: destination.rate_limit.as_ref().map(RateLimiter::new),
        destination,
        target,
        shared,
    });
    let (tx, rx) = mpsc::unbounded_channel();
    match digest {
        None => tokio::spawn(each(worker, rx)),
        Some(period) => tokio::spawn(digests(worker, rx, period)),
    };
    tx
}

fn target(d: &Destination) -> Result<Target, DeliveryError> {
    Ok(match &d.kind {
        Kind::Webhook(w) => {
            let secret = w.secret.as_ref().map(|s| s.0.as_bytes().to_vec());
            Target::Webhook { url: w.url.clone(), secret, timeout: w.timeout }
        }
        Kind::Slack(s) => Target::Slack { url: s.url.clone(), timeout: s.timeout },
        Kind::Email(e) => Target::Email { mailer: Box::new(Mailer::new(e, e.timeout)?), digest: e.digest },
    })
}

async fn each(worker: Arc<Worker>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = rx.recv().await {
        let w = worker.clone();
        tokio::spawn(async move {
            if let Some(at) = job.not_before_ms {
                let wait = at - crate::decode::now_ms();
                if wait > 0 {
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                }
            }
            let jobs = w.not_yet_sent(vec![job]).await;
            if let Some(job) = jobs.first() {
                let result = w.with_retries(|| w.send_one(job)).await;
                w.finish(&jobs, result).await;
            }
        });
    }
}

async fn digests(worker: Arc<Worker>, mut rx: mpsc::UnboundedReceiver<Job>, period: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut gathered: Vec<Job> = Vec::new();
    loop {
        let open = tokio::select! {
            job = rx.recv() => match job {
                Some(job) => { gathered.push(job); continue; }
                None => false,
            },
            _ = tick.tick() => true,
        };
        if !gathered.is_empty() {
            let jobs = std::mem::take(&mut gathered);
            let w = worker.clone();
            tokio::spawn(async move {
                let jobs = w.not_yet_sent(jobs).await;
                if !jobs.is_empty() {
                    let result = w.with_retries(|| w.send_digest(&jobs)).await;
                    w.finish(&jobs, result).await;
                }
            });
        }
        if !open {
            return;
        }
    }
}

impl Worker {
    /// `jobs` less those this destination took already (reported finished).
    async fn not_yet_sent(&self, jobs: Vec<Job>) -> Vec<Job> {
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            let env = &job.envelope;
            if self.shared.sent.was_sent(&self.destination.name, &env.alert.alert_id).await {
                telemetry::notify_already_sent(&self.destination.name, self.destination.kind.as_str());
                let _ = self.shared.done.send((env.partition, env.offset));
            } else {
                out.push(job);
            }
        }
        out
    }

    /// Tries `send` within the retry budget; returns the tries made and the
    /// last result.
    async fn with_retries<F, Fut>(&self, send: F) -> (u32, Result<(), DeliveryError>)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), DeliveryError>>,
    {
        let retry = &self.destination.retry;
        let mut attempt = 1;
        loop {
            let result = {
                let _slot = self.slots.acquire().await.expect("the semaphore is never closed");
                if let Some(l) = &self.limiter {
                    l.acquire().await;
                }
                send().await
            };
            match result {
                Err(e) if !e.is_permanent() && attempt < retry.attempts => {
                    let mut wait = backoff(retry, attempt, rand::random());
                    if let DeliveryError::Status { retry_after: Some(after), .. } = &e {
                        wait = wait.max(*after).min(retry.max_backoff);
                    }
                    telemetry::notify_retrying(&self.destination.name, e.reason(), attempt, &e);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                result => return (attempt, result),
            }
        }
    }

    /// Records the outcome of `jobs` (dead-lettering failures) and reports
    /// each delivery finished.
    async fn finish(&self, jobs: &[Job], (attempts, result): (u32, Result<(), DeliveryError>)) {
        let name = &self.destination.name;
        let kind = self.destination.kind.as_str();
        if result.is_ok() && !self.shared.dry_run {
            let ids: Vec<&str> = jobs.iter().map(|j| j.envelope.alert.alert_id.as_str()).collect();
            self.shared.sent.mark(name, &ids).await;
        }
        for job in jobs {
            let env = &job.envelope;
            match &result {
                Ok(()) => {
                    let latency = env.produced_ms.map(|p| (crate::decode::now_ms() - p).max(0) as f64 / 1000.0);
                    telemetry::notify_delivered(name, kind, attempts, latency);
                }
                Err(e) => {
                    telemetry::notify_dead_lettered(name, kind, e.reason(), attempts, env.partition, env.offset, e);
                    self.shared.dead_letters.send(env, name, attempts, e).await;
                }
            }
            let _ = self.shared.done.send((env.partition, env.offset));
        }
    }

    async fn send_one(&self, job: &Job) -> Result<(), DeliveryError> {
        let alert = &job.envelope.alert;
        let links = &job.envelope.links;
        let (url, body, secret, timeout) = match &self.target {
            Target::Broken(e) => return Err(e.clone()),
            Target::Webhook { url, secret, timeout } => {
                (url, payload::webhook_body(alert, links, &job.routes), secret.as_deref(), *timeout)
            }
            Target::Slack { url, timeout } => (url, slack::message(alert, links), None, *timeout),
            Target::Email { mailer, .. } => return self.mail(mailer, &email::render_one(alert, links)).await,
        };
        let body = serde_json::to_vec(&body).expect("JSON values serialise");
        if self.shared.dry_run {
            println!(
                "dry-run: {} ({}): {}",
                self.destination.name,
                self.destination.kind.as_str(),
                String::from_utf8_lossy(&body)
            );
            return Ok(());
        }
        let post = Post { url, body, idempotency_key: &alert.alert_id, secret, timeout };
        webhook::send(&self.shared.http, post).await
    }

    async fn send_digest(&self, jobs: &[Job]) -> Result<(), DeliveryError> {
        let Target::Email { mailer, .. } = &self.target else { unreachable!("only email destinations gather digests") };
        let alerts: Vec<(&ScoreAlert, Links)> =
            jobs.iter().map(|j| (&j.envelope.alert, j.envelope.links.clone())).collect();
        self.mail(mailer, &email::render_digest(&alerts)).await
    }

    async fn mail(&self, mailer: &Mailer, m: &email::Rendered) -> Result<(), DeliveryError> {
        if self.shared.dry_run {
            println!("dry-run: {} (email): {}\n{}", self.destination.name, m.subject, m.text);
            return Ok(());
        }
        mailer.send(m).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let r = Retry { attempts: 10, initial_backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(10) };
        assert_eq!(backoff(&r, 1, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(&r, 1, 0.999_999).as_millis(), 999);
        assert_eq!(backoff(&r, 3, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(&r, 30, 0.0), Duration::from_secs(5), "capped at max_backoff, half fixed");
        assert_eq!(backoff(&r, u32::MAX, 1.0), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_allows_a_burst_then_spaces_sends() {
        let l = RateLimiter::new(&RateLimit { requests: 2, per: Duration::from_secs(1) });
        let start = tokio::time::Instant::now();
        let mut at = Vec::new();
        for _ in 0..6 {
            l.acquire().await;
            at.push(start.elapsed().as_millis());
        }
        assert_eq!(at, [0, 0, 500, 1000, 1500, 2000]);
    }

    #[test]
    fn reasons_are_stable_and_permanence_is_known() {
        let status = DeliveryError::Status { status: 503, body: String::new(), retry_after: None };
        let rejected = DeliveryError::Rejected { status: 400, body: String::new() };
        assert_eq!((status.reason(), status.is_permanent()), ("http_status", false));
        assert_eq!((rejected.reason(), rejected.is_permanent()), ("rejected", true));
        assert!(DeliveryError::REASONS.contains(&DeliveryError::Timeout(Duration::ZERO).reason()));
        assert!(DeliveryError::NotAnAlert(String::new()).is_permanent());
    }
}
