//! The pipeline: consume -> decode -> score -> commit to Redis -> relay ->
//! store offsets.
//!
//! Messages are gathered into short batches and handled per partition: the
//! batch's contacts are read from Redis in one round trip, scored in Rust,
//! and committed with one `hotlead_commit` call that also checks the owner
//! epoch and the offset watermark. The partition's outbox is then relayed to
//! Kafka and only after that is the offset stored.

pub mod batch;
pub mod context;
pub mod relay;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::Message;

use crate::config::Config;
use crate::decode::{now_ms, Limits};
use crate::reload::LiveRules;
use crate::store::{PartitionKeys, Store, StoreError};
use crate::telemetry;

use batch::{BatchTarget, InputMessage};
use context::{Owned, PipelineContext};
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

/// Readiness shared with the HTTP listener.
#[derive(Debug, Default)]
pub struct Health {
    ready: std::sync::atomic::AtomicBool,
}

impl Health {
    /// Whether the pipeline is connected and consuming.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A source of the current time in milliseconds (injected in tests).
pub type Clock = Arc<dyn Fn() -> crate::score::Millis + Send + Sync>;

/// Runs the pipeline until `shutdown` completes, then finishes the batch in
/// flight, relays, commits offsets and leaves the group.
pub async fn run(
    config: Config,
    rules: Arc<LiveRules>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PipelineError> {
    run_with_clock(config, rules, health, shutdown, Arc::new(now_ms)).await
}

/// [`run`], with the clock the cooling sweep reads.
pub async fn run_with_clock(
    config: Config,
    rules: Arc<LiveRules>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
    clock: Clock,
) -> Result<(), PipelineError> {
    let store = retry("connect_redis", || Store::connect_to(&config.redis.url, config.redis.cluster), |_| true).await?;
    let owned = Arc::new(Mutex::new(Owned::default()));
    let topic = config.topics.input.clone();
    let context =
        PipelineContext::new(topic.clone(), store.claimer(), owned.clone(), config.pipeline.rebuild_lost_state);
    let consumer: StreamConsumer<PipelineContext> = config.consumer_config().create_with_context(context)?;
    consumer.subscribe(&[&topic])?;
    let producer: FutureProducer = config.producer_config().create()?;
    let dedup = batch::Dedup {
        window_ms: config.pipeline.dedup_window.as_millis() as i64,
        max_ids: config.pipeline.dedup_max_ids,
    };
    let worker = Worker {
        config: &config,
        rules: &rules,
        store,
        producer,
        owned,
        limits: config.limits(),
        clock,
        dedup,
        sought: Mutex::default(),
        reclaims: Mutex::default(),
    };
    let sweep_every = config.pipeline.sweep_interval;
    let mut last_sweep = Instant::now();
    health.set_ready(true);
    tracing::info!(topic, group = config.group_id(), models = rules.current().models.len(), "Scoring.");

    tokio::pin!(shutdown);
    let mut progress = Progress::new();
    let batch_wait = config.pipeline.batch_wait;
    let batch_max = config.pipeline.batch_max_events;
    loop {
        if let Some((partition, committed)) = worker.owned.lock().expect("ownership lock").lost.first().copied() {
            health.set_ready(false);
            return Err(PipelineError::StateLost { partition, committed });
        }
        let due: Vec<i32> = {
            let mut r = worker.reclaims.lock().expect("reclaim lock");
            let now = Instant::now();
            let due: Vec<i32> = r.due.iter().filter(|(_, t)| **t <= now).map(|(p, _)| *p).collect();
            for p in &due {
                r.due.remove(p);
            }
            due
        };
        for partition in due {
            let assigned = consumer.assignment().is_ok_and(|a| a.find_partition(&topic, partition).is_some());
            let owned = worker.owned.lock().expect("ownership lock").partitions.contains_key(&partition);
            if assigned && !owned {
                let (offset, epoch) = worker.reclaim(partition).await?;
                tracing::info!(partition, epoch, "Still assigned after being fenced: claimed the partition again.");
                if let Err(e) = consumer.seek(&topic, partition, offset, Duration::from_secs(10)) {
                    tracing::warn!(partition, error = %e, "Seek failed after claiming again.");
                }
            }
        }
        worker.relay_claimed().await?;
        if !sweep_every.is_zero() && last_sweep.elapsed() >= sweep_every {
            worker.sweep().await?;
            last_sweep = Instant::now();
        }
        let wait = if sweep_every.is_zero() { Duration::from_secs(3600) } else { sweep_every };
        let first = tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(wait) => continue,
            m = consumer.recv() => m,
        };
        let mut batches: BTreeMap<i32, Vec<InputMessage>> = BTreeMap::new();
        let mut count = gather(&mut batches, first);
        let deadline = tokio::time::Instant::now() + batch_wait;
        while count < batch_max {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(m) => count += gather(&mut batches, m),
                Err(_) => break,
            }
        }
        for (partition, messages) in batches {
            progress.events += messages.len() as u64;
            match worker.process(partition, messages).await? {
                Outcome::Stored(last) => {
                    if let Err(e) = consumer.store_offset(&topic, partition, last) {
                        tracing::debug!(partition, error = %e, "Offset not stored (partition no longer assigned).");
                    }
                }
                Outcome::Seek(offset) => {
                    tracing::info!(partition, offset, "Seeking back to the watermark.");
                    if let Err(e) =
                        consumer.seek(&topic, partition, rdkafka::Offset::Offset(offset), Duration::from_secs(10))
                    {
                        tracing::warn!(partition, offset, error = %e, "Seek failed.");
                    }
                }
                Outcome::Fenced => {
                    // Claims can cross during a rebalance: if the group still
                    // gives us this partition after a backoff, claim it again.
                    let mut r = worker.reclaims.lock().expect("reclaim lock");
                    let strikes = r.strikes.entry(partition).or_insert(0);
                    let delay = Duration::from_millis(250 << (*strikes).min(5));
                    *strikes += 1;
                    r.due.insert(partition, Instant::now() + delay);
                }
                Outcome::Dropped => {}
            }
        }
        progress.maybe_report(&worker.owned);
    }
    health.set_ready(false);
    tracing::info!("Shutting down: committing offsets and leaving the group.");
    worker.relay_claimed().await?;
    // Leaving the group commits the stored offsets (the consumer auto-commits).
    consumer.unsubscribe();
    Ok(())
}

/// A progress line every 30 seconds while events flow.
struct Progress {
    events: u64,
    since: Instant,
}

impl Progress {
    const EVERY: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Self { events: 0, since: Instant::now() }
    }

    fn maybe_report(&mut self, owned: &Mutex<Owned>) {
        let elapsed = self.since.elapsed();
        if elapsed < Self::EVERY {
            return;
        }
        let partitions = owned.lock().expect("ownership lock").partitions.len();
        let rate = self.events as f64 / elapsed.as_secs_f64();
        tracing::info!(events = self.events, per_second = rate.round(), partitions, "Progress.");
        *self = Self::new();
    }
}

/// Adds a received message to its partition's batch; returns 1 if it was a
/// message, 0 for a consumer error (logged).
fn gather(
    batches: &mut BTreeMap<i32, Vec<InputMessage>>,
    m: Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>,
) -> usize {
    match m {
        Ok(m) => {
            batches.entry(m.partition()).or_default().push(InputMessage {
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
            });
            1
        }
        Err(e) => {
            tracing::warn!(error = %e, "Consumer error.");
            0
        }
    }
}

/// What became of a partition's messages.
enum Outcome {
    /// Applied and durable up to this offset.
    Stored(i64),
    /// Not applied: the partition must be read again from this offset.
    Seek(i64),
    /// Not applied: the partition is not ours, or nothing was new.
    Dropped,
    /// Not applied: another instance claimed the partition.
    Fenced,
}

struct Worker<'a> {
    config: &'a Config,
    rules: &'a LiveRules,
    store: Store,
    producer: FutureProducer,
    owned: Arc<Mutex<Owned>>,
    limits: Limits,
    clock: Clock,
    dedup: batch::Dedup,
    /// The offset each partition was last sent back to after a gap.
    sought: Mutex<HashMap<i32, i64>>,
    /// Fenced partitions to claim again if still assigned.
    reclaims: Mutex<Reclaims>,
}

/// Fenced partitions waiting to be claimed again, with backoff.
#[derive(Default)]
struct Reclaims {
    /// When each may be claimed again.
    due: HashMap<i32, Instant>,
    /// Fences in a row, per partition, since its last commit.
    strikes: HashMap<i32, u32>,
}

impl Worker<'_> {
    /// Sweeps every owned partition for contacts that cooled with no event,
    /// committing their COOLED alerts like a batch (fenced, watermark
    /// unchanged) and relaying them.
    async fn sweep(&self) -> Result<(), PipelineError> {
        let owned: Vec<(i32, context::Ownership)> =
            self.owned.lock().expect("ownership lock").partitions.iter().map(|(p, o)| (*p, *o)).collect();
        let rules = self.rules.current();
        let now = (self.clock)();
        for (partition, own) in owned {
            let Some(watermark) = own.watermark else { continue };
            let target = BatchTarget {
                input_topic: &self.config.topics.input,
                partition,
                alerts_topic: &self.config.topics.alerts,
                dead_letter_topic: &self.config.topics.dead_letter,
            };
            let Some(mut swept) = retry("sweep", || batch::sweep(&self.store, &rules, &target, now), |_| true).await?
            else {
                continue;
            };
            swept.commit.epoch = own.epoch;
            swept.commit.expected_watermark = Some(watermark);
            swept.commit.new_watermark = watermark;
            let keys = PartitionKeys::new(&self.config.topics.input, partition);
            match retry("commit", || self.store.commit(&keys, &swept.commit), |e: &StoreError| !e.is_ownership()).await
            {
                Ok(_) => {}
                Err(e) if e.is_ownership() => {
                    // A batch moved the watermark or another owner took over:
                    // the next sweep starts from fresh state.
                    tracing::debug!(partition, error = %e, "Sweep skipped.");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            telemetry::swept(partition, &swept.alerts);
            if !swept.commit.outbox.is_empty() {
                self.relay(partition).await?;
            }
        }
        Ok(())
    }

    /// Claims a partition again (a new epoch); returns where to resume.
    async fn reclaim(&self, partition: i32) -> Result<(rdkafka::Offset, i64), PipelineError> {
        let keys = PartitionKeys::new(&self.config.topics.input, partition);
        let claimer = self.store.claimer();
        let (epoch, watermark) = retry(
            "claim_partition",
            || {
                let (claimer, keys) = (claimer.clone(), keys.clone());
                async move {
                    tokio::task::spawn_blocking(move || claimer.claim(&keys))
                        .await
                        .unwrap_or_else(|e| Err(StoreError::Corrupt { key: String::new(), message: e.to_string() }))
                }
            },
            |_| true,
        )
        .await?;
        let mut owned = self.owned.lock().expect("ownership lock");
        owned.partitions.insert(partition, context::Ownership { epoch, watermark });
        owned.relay_pending.insert(partition);
        self.sought.lock().expect("seek lock").remove(&partition);
        let offset = watermark.map_or(rdkafka::Offset::Beginning, |w| rdkafka::Offset::Offset(w + 1));
        Ok((offset, epoch))
    }

    /// Relays the outboxes of newly claimed partitions (left behind by an
    /// earlier owner that stopped before relaying).
    async fn relay_claimed(&self) -> Result<(), PipelineError> {
        let pending: BTreeSet<i32> = std::mem::take(&mut self.owned.lock().expect("ownership lock").relay_pending);
        for p in pending {
            self.relay(p).await?;
        }
        Ok(())
    }

    async fn relay(&self, partition: i32) -> Result<(), PipelineError> {
        let keys = PartitionKeys::new(&self.config.topics.input, partition);
        let alerts = &self.config.topics.alerts;
        retry("relay", || relay::relay_partition(&self.store, &self.producer, &keys, partition, alerts), |_| true)
            .await?;
        Ok(())
    }

    /// Scores, commits and relays one partition's messages.
    async fn process(&self, partition: i32, messages: Vec<InputMessage>) -> Result<Outcome, PipelineError> {
        let Some(own) = self.owned.lock().expect("ownership lock").partitions.get(&partition).copied() else {
            tracing::debug!(partition, n = messages.len(), "Dropped messages of a partition no longer owned.");
            return Ok(Outcome::Dropped);
        };
        let messages: Vec<InputMessage> =
            messages.into_iter().filter(|m| own.watermark.is_none_or(|w| m.offset > w)).collect();
        let Some(last) = messages.last().map(|m| m.offset) else { return Ok(Outcome::Dropped) };
        if let (Some(w), Some(first)) = (own.watermark, messages.first()) {
            if first.offset != w + 1 {
                // Messages past a gap: go back to the watermark once; if the
                // gap is still there, the broker no longer has those offsets.
                let mut sought = self.sought.lock().expect("seek lock");
                if sought.get(&partition) != Some(&(w + 1)) {
                    sought.insert(partition, w + 1);
                    return Ok(Outcome::Seek(w + 1));
                }
                tracing::warn!(
                    partition,
                    watermark = w,
                    first = first.offset,
                    "Offsets skipped: the broker no longer has them."
                );
            }
        }
        let started = Instant::now();
        let keys = PartitionKeys::new(&self.config.topics.input, partition);
        let decoded = batch::decode_all(&messages, &self.limits, now_ms());
        let mut ids: Vec<&str> =
            decoded.iter().filter_map(|(_, r)| r.as_ref().ok().map(|v| v.event.contact_id.as_str())).collect();
        ids.sort_unstable();
        ids.dedup();
        let hashes = retry("load_contacts", || self.store.load_contacts(&keys, &ids), |_| true).await?;
        let loaded: HashMap<String, HashMap<String, Vec<u8>>> = ids.iter().map(|s| s.to_string()).zip(hashes).collect();
        let target = BatchTarget {
            input_topic: &self.config.topics.input,
            partition,
            alerts_topic: &self.config.topics.alerts,
            dead_letter_topic: &self.config.topics.dead_letter,
        };
        let rules = self.rules.current();
        let mut scored = batch::score_batch(&rules, &target, &messages, decoded, &loaded, self.dedup);
        scored.commit.epoch = own.epoch;
        scored.commit.expected_watermark = own.watermark;
        scored.commit.new_watermark = last;
        let commit_started = Instant::now();
        let committed =
            retry("commit", || self.store.commit(&keys, &scored.commit), |e: &StoreError| !e.is_ownership()).await;
        let redis_seconds = commit_started.elapsed().as_secs_f64();
        match committed {
            Ok(_) => {}
            Err(StoreError::WatermarkMismatch(e)) => {
                // Still the owner, but the stored watermark is not ours (Redis
                // lost its last writes, say): resume from what Redis holds.
                let stored = retry("watermark", || self.store.watermark(&keys), |_| true).await?;
                tracing::warn!(partition, ours = ?own.watermark, stored = ?stored, error = %e, "Watermark moved; resuming from the stored one.");
                let mut owned = self.owned.lock().expect("ownership lock");
                if let Some(o) = owned.partitions.get_mut(&partition).filter(|o| o.epoch == own.epoch) {
                    o.watermark = stored;
                }
                self.sought.lock().expect("seek lock").remove(&partition);
                return Ok(match stored {
                    Some(w) => Outcome::Seek(w + 1),
                    None => Outcome::Dropped,
                });
            }
            Err(e) if e.is_ownership() => {
                telemetry::fenced(partition, &e);
                let mut owned = self.owned.lock().expect("ownership lock");
                if owned.partitions.get(&partition).is_some_and(|o| o.epoch == own.epoch) {
                    owned.partitions.remove(&partition);
                }
                return Ok(Outcome::Fenced);
            }
            Err(e) => return Err(e.into()),
        }
        {
            let mut owned = self.owned.lock().expect("ownership lock");
            if let Some(o) = owned.partitions.get_mut(&partition) {
                if o.epoch == own.epoch {
                    o.watermark = Some(last);
                }
            }
        }
        telemetry::batch_committed(
            partition,
            messages.len(),
            scored.scored,
            &scored.alerts,
            started.elapsed().as_secs_f64(),
            redis_seconds,
        );
        if !scored.commit.outbox.is_empty() {
            self.relay(partition).await?;
        }
        self.sought.lock().expect("seek lock").remove(&partition);
        self.reclaims.lock().expect("reclaim lock").strikes.remove(&partition);
        Ok(Outcome::Stored(last))
    }
}

/// Retries an infrastructure operation with exponential backoff (about a
/// minute in all) while `retryable` says so; then returns the last error.
async fn retry<T, E, F, Fut>(operation: &'static str, mut f: F, retryable: impl Fn(&E) -> bool) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < 12 && retryable(&e) => {
                telemetry::retrying(operation, attempt, &e);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                attempt += 1;
            }
            Err(e) => {
                if retryable(&e) {
                    telemetry::fatal(operation, &e);
                }
                return Err(e);
            }
        }
    }
}
