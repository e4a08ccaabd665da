//! The pipeline: consume -> decode -> engine -> store -> relay -> store
//! offsets, one worker per owned partition.
//!
//! ```text
//! consumer loop (one thread, the only user of the consumer)
//!   poll -> decode -> channel ─► partition worker (one task per owned partition)
//!                                  state cache -> engine::score_batch -> store::commit_for
//!                                  -> one fenced `hotlead_commit` call -> relay -> offset
//!   rebalance: assign starts workers; revoke ends them and waits
//! ```
//!
//! - [`consumer`]: the loop and its rebalance callbacks.
//! - [`worker`]: everything about one owned partition.
//! - [`cache`]: a worker's contact states as last committed.
//! - [`relay`]: outbox -> Kafka, acknowledged before deletion.

pub mod cache;
pub mod consumer;
pub mod relay;
pub mod worker;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

use crate::config::{Config, Stages};
use crate::reload::LiveRules;
use crate::store::{Store, StoreError};
use crate::telemetry;

use relay::RelayError;
use worker::Stage;

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Creating or using a Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Redis kept failing.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The relay kept failing.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// A task of the pipeline panicked or was cancelled.
    #[error("a pipeline task ended abnormally: {0}")]
    Task(String),
    /// A partition's state is gone from Redis while Kafka has committed
    /// offsets for it.
    #[error(
        "the state of partition {partition} is gone from Redis while Kafka has offset {committed} committed for it; restore Redis, or run with --rebuild to score the topic again from its start"
    )]
    StateLost {
        /// The partition.
        partition: i32,
        /// The group's committed offset.
        committed: i64,
    },
}

/// What the pipeline is doing, for the HTTP listener: the read side serves
/// whatever this says.
#[derive(Debug, Default)]
pub struct Status {
    consuming: AtomicBool,
    owned: AtomicUsize,
}

impl Status {
    /// Whether the pipeline is consuming: running, not in a rebalance, and
    /// the broker reachable.
    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    /// How many partitions this instance owns.
    pub fn owned_partitions(&self) -> usize {
        self.owned.load(Ordering::Relaxed)
    }

    fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
        telemetry::consuming(consuming);
    }
}

/// A source of the current time in milliseconds (injected in tests).
pub type Clock = Arc<dyn Fn() -> crate::score::Millis + Send + Sync>;

/// Runs the pipeline until `shutdown` completes, then lets every worker
/// finish its batch, relay and store its offsets, and leaves the group.
///
/// The live service also runs the account stage when the rules in force at
/// start have an account roll-up: a second consumer, in the group
/// `<group.id>.accounts`, of the contribution topic, whose workers roll up
/// accounts with the same claim, fence, watermark and outbox protocol.
pub async fn run(
    config: &Config,
    rules: Arc<LiveRules>,
    status: Arc<Status>,
    shutdown: impl Future<Output = ()>,
    clock: Clock,
) -> Result<(), PipelineError> {
    let store = crate::retry::always("connect_redis", || Store::connect_with(&config.redis)).await?;
    let producer: FutureProducer<crate::kafka::QuietContext> =
        config.producer_config().create_with_context(crate::kafka::QuietContext)?;
    let live = config.pipeline.lane.is_empty();
    let has_accounts = rules.current().models.iter().any(|m| m.account.is_some());
    let stages = config.pipeline.stages;
    let accounts = live && has_accounts && stages != Stages::Contacts;
    let mut running = Vec::new();
    // Contributions are bundled per partition of their topic: its
    // partitions are counted once, here (they are fixed for its life).
    let contribution_partitions = if live && has_accounts {
        let (kafka, topic) = (config.client_config(), config.topics.account_contributions.clone());
        let count = move || crate::kafka::partition_count(&kafka, &topic);
        let n = tokio::task::spawn_blocking(count).await.map_err(|e| PipelineError::Task(e.to_string()))?;
        Some(n.map_err(|e| {
            tracing::error!(topic = config.topics.account_contributions, error = %e, "Cannot read the contribution topic's partitions (create the topics with `hotlead topics`).");
            PipelineError::Kafka(e)
        })?)
    } else {
        None
    };
    if stages != Stages::Accounts || !live {
        let store = store.for_lane(&config.pipeline.lane);
        let shared = shared(config, Stage::Contacts, store, producer.clone(), &rules, &clock, contribution_partitions);
        running.push(start(config, shared, status.clone(), config.consumer_config(), &config.topics.input)?);
        tracing::info!(
            topic = config.topics.input,
            group = config.group_id(),
            models = rules.current().models.len(),
            "Scoring."
        );
    }
    if accounts {
        let shared = shared(config, Stage::Accounts, store, producer, &rules, &clock, None);
        let group = format!("{}.accounts", config.group_id());
        let mut consumer = config.consumer_config();
        consumer.set("group.id", &group);
        // The contact stage's status is the service's; with the account
        // stage alone, this one is.
        let status = if running.is_empty() { status.clone() } else { Arc::new(Status::default()) };
        running.push(start(config, shared, status, consumer, &config.topics.account_contributions)?);
        tracing::info!(topic = config.topics.account_contributions, group, "Rolling up accounts.");
    } else if stages == Stages::Accounts {
        tracing::warn!("pipeline.stages is `accounts` but no model of the rules in force has an account roll-up (or this is a shadow lane): nothing to run.");
    }
    tokio::pin!(shutdown);
    let mut stages = running;
    if stages.is_empty() {
        shutdown.await;
        return Ok(());
    }
    // The first stage to end (an error) or the shutdown; then every stage
    // stops: finishes its batch, relays, stores its offsets.
    let first = {
        let ends = futures::future::select_all(stages.iter_mut().map(|s| s.done.as_mut()));
        tokio::select! {
            (r, i, _) = ends => Some((i, r)),
            _ = &mut shutdown => None,
        }
    };
    for s in &stages {
        s.stop.store(true, Ordering::Release);
    }
    let rest = async {
        let mut results = Vec::new();
        for (i, s) in stages.iter_mut().enumerate() {
            match &first {
                Some((j, _)) if *j == i => {}
                _ => results.push(s.done.as_mut().await),
            }
        }
        results
    };
    let results = match tokio::time::timeout(config.pipeline.shutdown_timeout, rest).await {
        Ok(r) => r,
        Err(_) => {
            status.set_consuming(false);
            tracing::error!(
                timeout = ?config.pipeline.shutdown_timeout,
                "Shutdown did not finish in time (is the broker down?); exiting anyway. What was not committed is scored again from the watermark."
            );
            return Ok(());
        }
    };
    status.set_consuming(false);
    let result = first.map(|(_, r)| r).into_iter().chain(results).try_fold(Ok(()), |acc, r| r.map(|r| acc.and(r)));
    tracing::debug!(ok = matches!(result, Ok(Ok(()))), "The consumer loops ended.");
    result.map_err(|e| PipelineError::Task(e.to_string()))?
}

/// A running stage: its consumer thread's stop flag and result.
struct Running {
    stop: Arc<AtomicBool>,
    done: std::pin::Pin<Box<tokio::sync::oneshot::Receiver<Result<(), PipelineError>>>>,
}

/// What a stage's workers share.
fn shared(
    config: &Config,
    stage: Stage,
    store: Store,
    producer: FutureProducer<crate::kafka::QuietContext>,
    rules: &Arc<LiveRules>,
    clock: &Clock,
    contributions: Option<i32>,
) -> worker::Shared {
    let contacts = stage == Stage::Contacts;
    let t = &config.topics;
    worker::Shared {
        stage,
        contributions_topic: if contributions.is_some() { t.account_contributions.clone() } else { String::new() },
        input_topic: if contacts { String::new() } else { t.input.clone() },
        metadata: std::sync::Mutex::new(None),
        contribution_partitions: contributions.unwrap_or(1),
        topic: if contacts { t.input.clone() } else { t.account_contributions.clone() },
        alerts_topic: if contacts { t.alerts.clone() } else { t.account_alerts.clone() },
        dead_letter_topic: t.dead_letter.clone(),
        erasures_topic: t.erasures.clone(),
        shadow_alerts_topic: t.shadow_alerts.clone(),
        lane: if contacts { config.pipeline.lane.clone() } else { String::new() },
        not_before_ms: if contacts { config.pipeline.not_before_ms } else { None },
        throttle: (contacts && config.pipeline.max_events_per_second > 0)
            .then(|| worker::Throttle::new(config.pipeline.max_events_per_second)),
        kafka: config.client_config(),
        store,
        producer,
        rules: rules.clone(),
        clock: clock.clone(),
        dedup: config.dedup(),
        batch_max: config.pipeline.batch_max_events,
        batch_wait: config.pipeline.batch_wait,
        sweep_interval: config.pipeline.sweep_interval,
        rebuild_lost_state: config.pipeline.rebuild_lost_state,
        historical_after_ms: config.pipeline.historical_after.as_millis() as i64,
        dead_letter_max_bytes: config.pipeline.dead_letter_max_bytes,
        // Set by `start`, which holds the receiving end.
        requests: std::sync::mpsc::channel().0,
        limits: config.limits(),
        abandoned: std::sync::Mutex::default(),
        erased: tokio::sync::Mutex::new(None),
    }
}

/// Starts a stage's consumer loop on its own thread, subscribed to `topic`.
fn start(
    config: &Config,
    mut shared: worker::Shared,
    status: Arc<Status>,
    consumer_config: rdkafka::ClientConfig,
    topic: &str,
) -> Result<Running, PipelineError> {
    let (requests, requests_rx) = std::sync::mpsc::channel();
    shared.requests = requests;
    let context = consumer::Loop::new(
        Arc::new(shared),
        requests_rx,
        status,
        config.pipeline.state_cache_contacts,
        config.pipeline.shutdown_timeout,
    );
    let consumer: BaseConsumer<consumer::Loop> = consumer_config.create_with_context(context)?;
    consumer.subscribe(&[topic])?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("hotlead-consumer".into())
        .spawn(move || {
            let result = consumer::run(&consumer, &flag);
            let _ = done_tx.send(result);
            // Leaving the group can wait on the broker: after the answer.
            drop(consumer);
        })
        .map_err(|e| PipelineError::Task(e.to_string()))?;
    Ok(Running { stop, done: Box::pin(done) })
}
