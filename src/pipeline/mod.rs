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

use crate::config::Config;
use crate::reload::LiveRules;
use crate::store::{Store, StoreError};
use crate::telemetry;

use relay::RelayError;

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
pub async fn run(
    config: &Config,
    rules: Arc<LiveRules>,
    status: Arc<Status>,
    shutdown: impl Future<Output = ()>,
    clock: Clock,
) -> Result<(), PipelineError> {
    let store = crate::retry::always("connect_redis", || Store::connect_with(&config.redis)).await?;
    let store = store.for_lane(&config.pipeline.lane);
    let producer: FutureProducer<crate::kafka::QuietContext> =
        config.producer_config().create_with_context(crate::kafka::QuietContext)?;
    let (requests, requests_rx) = std::sync::mpsc::channel();
    let shared = Arc::new(worker::Shared {
        topic: config.topics.input.clone(),
        alerts_topic: config.topics.alerts.clone(),
        dead_letter_topic: config.topics.dead_letter.clone(),
        erasures_topic: config.topics.erasures.clone(),
        shadow_alerts_topic: config.topics.shadow_alerts.clone(),
        lane: config.pipeline.lane.clone(),
        not_before_ms: config.pipeline.not_before_ms,
        throttle: (config.pipeline.max_events_per_second > 0)
            .then(|| worker::Throttle::new(config.pipeline.max_events_per_second)),
        kafka: config.client_config(),
        store,
        producer,
        rules: rules.clone(),
        clock,
        dedup: config.dedup(),
        batch_max: config.pipeline.batch_max_events,
        batch_wait: config.pipeline.batch_wait,
        sweep_interval: config.pipeline.sweep_interval,
        rebuild_lost_state: config.pipeline.rebuild_lost_state,
        historical_after_ms: config.pipeline.historical_after.as_millis() as i64,
        dead_letter_max_bytes: config.pipeline.dead_letter_max_bytes,
        requests,
        limits: config.limits(),
        abandoned: std::sync::Mutex::default(),
        erased: tokio::sync::Mutex::new(None),
    });
    let context = consumer::Loop::new(
        shared,
        requests_rx,
        status.clone(),
        config.pipeline.state_cache_contacts,
        config.pipeline.shutdown_timeout,
    );
    let consumer: BaseConsumer<consumer::Loop> = config.consumer_config().create_with_context(context)?;
    consumer.subscribe(&[&config.topics.input])?;
    tracing::info!(
        topic = config.topics.input,
        group = config.group_id(),
        models = rules.current().models.len(),
        "Scoring."
    );
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
    tokio::pin!(shutdown);
    tokio::pin!(done);
    let result = tokio::select! {
        r = &mut done => r,
        _ = &mut shutdown => {
            stop.store(true, Ordering::Release);
            match tokio::time::timeout(config.pipeline.shutdown_timeout, &mut done).await {
                Ok(r) => r,
                Err(_) => {
                    status.set_consuming(false);
                    tracing::error!(
                        timeout = ?config.pipeline.shutdown_timeout,
                        "Shutdown did not finish in time (is the broker down?); exiting anyway. What was not committed is scored again from the watermark."
                    );
                    return Ok(());
                }
            }
        }
    };
    status.set_consuming(false);
    tracing::debug!(ok = matches!(result, Ok(Ok(()))), "The consumer loop ended.");
    result.map_err(|e| PipelineError::Task(e.to_string()))?
}
