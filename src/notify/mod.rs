//! `hotlead notify`: alerts delivered where sales works.
//!
//! A separate, optional process in its own consumer group reads the alert
//! topic and delivers each alert to the destinations its routes name
//! (webhooks, Slack-compatible chat, email), routed by model, direction,
//! tier, account, freshness, score and owner. The reference is
//! `docs/notify.md`.
//!
//! # Layout
//!
//! - [`routes`]: the routes file, owner routing, matching (pure).
//! - [`payload`]: what every destination says about an alert (pure).
//! - [`webhook`], [`slack`], [`email`]: each destination's format and send.
//! - [`delivery`]: per-destination queues, retries, rate limits, dead letters.
//! - [`progress`]: which offset may be stored (pure, property-tested).
//! - [`sent`]: which alerts each destination took, remembered in Redis.
//!
//! # Guarantees
//!
//! At least once per destination: an alert's offset is stored only when
//! every destination it goes to has taken it or it has been dead-lettered,
//! so a crash re-sends, never loses. A repeat carries the same alert id as
//! its `Idempotency-Key` (or email `Message-ID`). A destination that fails
//! past its retry budget sends the alert to the notify dead-letter topic and
//! never blocks other destinations or later alerts. Bad input (a message
//! that is not an alert, a broken routes file on reload) is reported and
//! passed; it never stops the process.

pub mod delivery;
pub mod email;
pub mod payload;
pub mod progress;
pub mod routes;
pub mod sent;
pub mod slack;
pub mod webhook;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::proto::ScoreAlert;
use crate::telemetry;
use delivery::{DeadLetters, DeliveryError, Envelope, Job, Shared};
use routes::{Destination, RouteTable, RoutesError};

/// The `[notify]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// The routes file (YAML; see `docs/notify.md`).
    pub routes: PathBuf,
    /// How often the routes file (and the files it names) is checked for
    /// changes, e.g. `2s`; SIGHUP checks at once.
    #[serde(deserialize_with = "crate::config::duration")]
    pub reload_interval: Duration,
    /// The consumer group of `hotlead notify` (apart from the scorer's).
    pub group: String,
    /// Where deliveries that failed past their retry budget go.
    pub dead_letter_topic: String,
    /// Base URL of hotlead's HTTP listener, for links to the board and the
    /// read API in notifications.
    pub links_base_url: String,
    /// Most alerts with deliveries in flight: reading pauses there and
    /// resumes below half of it.
    pub max_open_alerts: usize,
    /// How long a stop waits for deliveries in flight before committing
    /// what is finished.
    #[serde(deserialize_with = "crate::config::duration")]
    pub drain_timeout: Duration,
    /// Address of the notifier's `/metrics` and `/healthz`; empty disables.
    pub http_listen: String,
    /// How long Redis (`redis.url`) remembers that a destination took an
    /// alert, so an alert read again after a crash or a stop is not sent to
    /// it again; `0s` remembers nothing and needs no Redis.
    #[serde(deserialize_with = "crate::config::duration")]
    pub dedup_window: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            routes: "examples/notify/routes.yaml".into(),
            reload_interval: Duration::from_secs(2),
            group: "hotlead-notify".into(),
            dead_letter_topic: "sales-alerts.notify-dlq".into(),
            links_base_url: "http://127.0.0.1:9464".into(),
            max_open_alerts: 10_000,
            drain_timeout: Duration::from_secs(10),
            http_listen: "127.0.0.1:9465".into(),
            dedup_window: Duration::from_secs(7 * 86_400),
        }
    }
}

impl NotifyConfig {
    /// Checks the section; errors name the field.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        let invalid = |field: &str, message: &str| crate::config::ConfigError::Invalid {
            field: format!("notify.{field}"),
            message: message.to_string(),
        };
        if self.group.is_empty() {
            return Err(invalid("group", "must name a consumer group, e.g. `hotlead-notify`"));
        }
        if self.dead_letter_topic.is_empty() {
            return Err(invalid("dead_letter_topic", "must name a topic, e.g. `sales-alerts.notify-dlq`"));
        }
        if self.max_open_alerts == 0 {
            return Err(invalid("max_open_alerts", "must be at least 1"));
        }
        if !self.http_listen.is_empty() && self.http_listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid("http_listen", "is not an address; write e.g. `127.0.0.1:9465`, or empty to disable"));
        }
        if self.reload_interval.is_zero() {
            return Err(invalid("reload_interval", "must be above zero, e.g. `2s`"));
        }
        Ok(())
    }
}

/// `hotlead notify`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NotifyArgs {
    /// Check a routes file instead of running.
    #[command(subcommand)]
    pub command: Option<NotifyCommand>,
    /// Routes file; overrides `notify.routes`.
    #[arg(long)]
    pub routes: Option<PathBuf>,
    /// Print what would be sent instead of sending; commits no offsets.
    #[arg(long)]
    pub dry_run: bool,
}

/// `hotlead notify ...`.
#[derive(Debug, clap::Subcommand)]
pub enum NotifyCommand {
    /// Validate a routes file (and the owners file it names) and summarise it.
    Check {
        /// The routes file.
        file: PathBuf,
    },
}

/// Why the notifier stopped.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The routes file at start.
    #[error(transparent)]
    Routes(#[from] RoutesError),
    /// The Kafka client could not be set up.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Redis, which remembers deliveries, is unreachable at start.
    #[error("Redis (notify.dedup_window needs it; 0s turns it off): {0}")]
    Redis(#[from] crate::store::StoreError),
    /// The HTTP client could not be set up.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The metrics listener could not be opened.
    #[error("cannot listen on notify.http_listen = {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Runs `hotlead notify` from the command line.
pub async fn command(
    args: NotifyArgs,
    load_config: impl FnOnce() -> anyhow::Result<Config>,
) -> anyhow::Result<std::process::ExitCode> {
    if let Some(NotifyCommand::Check { file }) = args.command {
        return Ok(check(&file));
    }
    let mut config = load_config()?;
    if let Some(r) = args.routes {
        config.notify.routes = r;
    }
    let metrics = telemetry::metrics_handle().ok_or_else(|| anyhow::anyhow!("cannot install the metrics recorder"))?;
    telemetry::describe_notify();
    if !config.notify.http_listen.is_empty() {
        let address = config.notify.http_listen.clone();
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|source| NotifyError::Listen { address: address.clone(), source })?;
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(move || std::future::ready(metrics.render())))
            .route("/healthz", axum::routing::get(|| async { "ok\n" }));
        tracing::info!(%address, "Serving /metrics and /healthz.");
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    run(config, args.dry_run, crate::shutdown_signal()).await?;
    tracing::info!("Stopped cleanly.");
    Ok(std::process::ExitCode::SUCCESS)
}

/// `hotlead notify check FILE`: prints a summary and `ok`, or the error.
fn check(file: &Path) -> std::process::ExitCode {
    match RouteTable::load(file) {
        Ok(t) => {
            for d in t.destinations.values() {
                println!("{}: destination `{}`: {}", file.display(), d.name, describe(d));
            }
            for r in &t.routes {
                println!("{}: route `{}` → {}", file.display(), r.name, r.to.join(", "));
            }
            if !t.owners.accounts.is_empty() || t.owners.default.is_some() {
                println!(
                    "{}: owners: {} accounts, {} owners, default {}",
                    file.display(),
                    t.owners.accounts.len(),
                    t.owners.owners.len(),
                    t.owners.default.as_deref().unwrap_or("none")
                );
            }
            println!("{}: ok", file.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

fn describe(d: &Destination) -> String {
    let mut s = match &d.kind {
        routes::Kind::Webhook(w) => {
            format!("webhook {}{}", webhook::redacted(&w.url), if w.secret.is_some() { ", signed" } else { "" })
        }
        routes::Kind::Slack(s) => format!("slack {}", webhook::redacted(&s.url)),
        routes::Kind::Email(e) => format!(
            "email to {}{}",
            e.to.join(", "),
            e.digest.map(|p| format!(", digest every {}", humantime::format_duration(p))).unwrap_or_default()
        ),
    };
    s.push_str(&format!(", {} tries", d.retry.attempts));
    if let Some(r) = &d.rate_limit {
        s.push_str(&format!(", at most {} per {}", r.requests, humantime::format_duration(r.per)));
    }
    s
}

/// The running destinations: each one's definition and queue.
#[derive(Default)]
struct Workers {
    running: HashMap<String, (Destination, mpsc::UnboundedSender<Job>)>,
}

impl Workers {
    /// Starts destinations that are new or changed, and lets removed ones
    /// finish their queues.
    fn update(&mut self, table: &RouteTable, shared: &Arc<Shared>) {
        self.running.retain(|name, _| table.destinations.contains_key(name));
        for (name, d) in &table.destinations {
            if self.running.get(name).is_none_or(|(old, _)| old != d) {
                self.running.insert(name.clone(), (d.clone(), delivery::spawn(d.clone(), shared.clone())));
            }
        }
    }
}

/// Reads the alert topic and delivers alerts until `shutdown` completes,
/// then drains deliveries in flight (up to `notify.drain_timeout`) and
/// commits the offsets of finished alerts. With `dry_run`, prints what it
/// would send and commits nothing.
pub async fn run(config: Config, dry_run: bool, shutdown: impl Future<Output = ()>) -> Result<(), NotifyError> {
    let n = &config.notify;
    let mut table = Arc::new(RouteTable::load(&n.routes)?);
    telemetry::notify_routes_in_force(&n.routes, table.destinations.len(), table.routes.len());
    let mut consumer_config = config.consumer_config();
    consumer_config.set("group.id", &n.group);
    if dry_run {
        consumer_config.set("enable.auto.commit", "false");
    }
    let consumer: StreamConsumer = consumer_config.create()?;
    let alerts_topic = config.topics.alerts.clone();
    consumer.subscribe(&[&alerts_topic])?;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let sent = if dry_run || n.dedup_window.is_zero() {
        sent::SentLog::off()
    } else {
        sent::SentLog::connect(&config.redis, n.dedup_window).await?
    };
    let shared = Arc::new(Shared {
        sent,
        http: reqwest::Client::builder().user_agent(concat!("hotlead/", env!("CARGO_PKG_VERSION"))).build()?,
        dead_letters: DeadLetters {
            producer: config.producer_config().create()?,
            topic: n.dead_letter_topic.clone(),
            source_topic: alerts_topic.clone(),
        },
        done: done_tx,
        dry_run,
    });
    let mut workers = Workers::default();
    workers.update(&table, &shared);
    let mut progress = progress::Progress::default();
    let mut reload = tokio::time::interval(n.reload_interval);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut refused: Option<String> = None;
    let mut paused = false;
    tokio::pin!(shutdown);
    tracing::info!(topic = %alerts_topic, group = %n.group, dry_run, "Delivering alerts.");
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some((p, o)) = done_rx.recv() => progress.finish(p, o),
            _ = next_reload(&mut reload, &mut hangup) => match RouteTable::load(&n.routes) {
                Ok(t) if t == *table => refused = None,
                Ok(t) => {
                    table = Arc::new(t);
                    workers.update(&table, &shared);
                    refused = None;
                    telemetry::notify_routes_reloaded(&n.routes, table.destinations.len(), table.routes.len());
                }
                Err(e) => {
                    if refused.as_deref() != Some(&e.to_string()) {
                        telemetry::notify_routes_refused(&e);
                        refused = Some(e.to_string());
                    }
                }
            },
            m = consumer.recv() => match m {
                Ok(m) => {
                    let envelope = envelope(&m, &n.links_base_url);
                    dispatch(envelope, &table, &workers, &shared, &mut progress);
                }
                Err(e) => {
                    telemetry::kafka_error(&e, "consuming alerts");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
        while let Ok((p, o)) = done_rx.try_recv() {
            progress.finish(p, o);
        }
        telemetry::notify_open_alerts(progress.open_alerts());
        paused = flow_control(&consumer, paused, progress.open_alerts(), n.max_open_alerts);
        if !dry_run {
            store(&consumer, &alerts_topic, &mut progress);
        }
    }
    let deadline = tokio::time::Instant::now() + n.drain_timeout;
    while progress.open_alerts() > 0 {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some((p, o))) => progress.finish(p, o),
            _ => break,
        }
    }
    if !dry_run {
        store(&consumer, &alerts_topic, &mut progress);
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            telemetry::kafka_error(&e, "committing offsets at stop");
        }
    }
    tracing::info!(open = progress.open_alerts(), "Stopped delivering; open alerts are sent again at the next start.");
    Ok(())
}

/// Waits for the next routes reload: a tick of `tick`, or SIGHUP.
async fn next_reload(tick: &mut tokio::time::Interval, hangup: &mut Option<tokio::signal::unix::Signal>) {
    let hup = async {
        match hangup {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tick.tick() => {}
        _ = hup => {}
    }
}

/// An alert read from the topic, and why it is not one if it is not.
fn envelope(m: &rdkafka::message::BorrowedMessage<'_>, links_base: &str) -> (Envelope, Option<DeliveryError>) {
    let payload = m.payload().unwrap_or_default();
    let decoded = ScoreAlert::decode(payload).map_err(|e| e.to_string()).and_then(|a| {
        if a.alert_id.is_empty() || a.contact_id.is_empty() {
            Err("alert_id or contact_id is empty".to_string())
        } else {
            Ok(a)
        }
    });
    let (alert, error) = match decoded {
        Ok(a) => (a, None),
        Err(e) => (ScoreAlert::default(), Some(DeliveryError::NotAnAlert(e))),
    };
    let envelope = Envelope {
        links: payload::Links::new(links_base, &alert.contact_id),
        alert,
        payload: payload.to_vec(),
        key: m.key().unwrap_or_default().to_vec(),
        partition: m.partition(),
        offset: m.offset(),
        produced_ms: m.timestamp().to_millis(),
    };
    (envelope, error)
}

/// Hands an alert to the destinations its routes name; dead-letters input
/// that is not an alert.
fn dispatch(
    (envelope, error): (Envelope, Option<DeliveryError>),
    table: &RouteTable,
    workers: &Workers,
    shared: &Arc<Shared>,
    progress: &mut progress::Progress,
) {
    let envelope = match error {
        None => Arc::new(envelope),
        Some(error) => {
            telemetry::notify_undecodable(envelope.partition, envelope.offset, &error);
            progress.begin(envelope.partition, envelope.offset, 1);
            let shared = shared.clone();
            tokio::spawn(async move {
                shared.dead_letters.send(&envelope, "", 0, &error).await;
                let _ = shared.done.send((envelope.partition, envelope.offset));
            });
            return;
        }
    };
    let plan = table.plan(&envelope.alert, crate::decode::now_ms());
    let queues: Vec<_> =
        plan.into_iter().filter_map(|p| workers.running.get(&p.destination).map(|(_, q)| (q.clone(), p))).collect();
    telemetry::notify_alert_routed(queues.len());
    progress.begin(envelope.partition, envelope.offset, queues.len());
    for (queue, p) in queues {
        let job = Job { envelope: envelope.clone(), routes: p.routes, not_before_ms: p.not_before_ms };
        if queue.send(job).is_err() {
            // The destination's tasks are gone (never expected): count it done
            // rather than hold every later offset.
            progress.finish(envelope.partition, envelope.offset);
        }
    }
}

/// Pauses the assigned partitions when `open` reaches `max` and resumes them
/// below half of it; returns whether they are paused. The consumer keeps
/// polling while paused, so it stays in its group however long a
/// destination takes.
fn flow_control(consumer: &StreamConsumer, paused: bool, open: usize, max: usize) -> bool {
    let want = if paused { open > max / 2 } else { open >= max };
    if want != paused {
        let result = consumer.assignment().and_then(|a| if want { consumer.pause(&a) } else { consumer.resume(&a) });
        match result {
            Ok(()) => telemetry::notify_paused(want, open),
            Err(e) => {
                telemetry::kafka_error(&e, "pausing or resuming the alert topic");
                return paused;
            }
        }
    }
    want
}

/// Stores the offsets that became storable.
fn store(consumer: &StreamConsumer, topic: &str, progress: &mut progress::Progress) {
    let changes = progress.take_changes();
    if changes.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (partition, next) in changes {
        let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(next));
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        tracing::debug!(error = %e, "Cannot store offsets (partitions no longer assigned?).");
    }
}
