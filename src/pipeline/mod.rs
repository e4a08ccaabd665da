//! The pipeline: consume -> decode -> score -> commit to Redis -> relay ->
//! store offsets.
//!
//! Messages are gathered into short batches and handled per partition: the
//! batch's contacts are read from Redis in one round trip, scored in Rust,
//! and committed with one `hotlead_commit` call that also checks the owner
//! epoch and the offset watermark. The partition's outbox is then relayed to
//! Kafka and only after that is the offset stored.

pub mod batch;
pub mod cache;
pub mod context;
pub mod relay;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;

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
use cache::StateCache;
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
    let store = retry("connect_redis", || Store::connect_with(&config.redis), |_| true).await?;
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
        cache: Mutex::new(StateCache::new(config.pipeline.state_cache_contacts)),
    };
    let sweep_every = config.pipeline.sweep_interval;
    let mut last_sweep = Instant::now();
    health.set_ready(true);
    tracing::info!(topic, group = config.group_id(), models = rules.current().models.len(), "Scoring.");

    tokio::pin!(shutdown);
    let mut progress = Progress::new();
    let mut relays = Relays::default();
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
                seek_to(&consumer, &topic, partition, offset);
            }
        }
        worker.relay_claimed().await?;
        relays.pump(&worker, &consumer, &topic).await?;
        if !sweep_every.is_zero() && last_sweep.elapsed() >= sweep_every {
            worker.sweep(&mut relays).await?;
            last_sweep = Instant::now();
        }
        let mut wait = if sweep_every.is_zero() { Duration::from_secs(3600) } else { sweep_every };
        if relays.busy() {
            // Come back soon to store the offsets a finished relay covers.
            wait = wait.min(Duration::from_millis(2));
        }
        let first = tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(wait) => continue,
            m = consumer.recv() => m,
        };
        let mut batches: BTreeMap<i32, Vec<Received>> = BTreeMap::new();
        let limits = &worker.limits;
        let mut count = gather(&mut batches, first, limits);
        // Take what has arrived already; under load it piles up while the
        // previous batch is committed, so batches grow with the load.
        while count < batch_max {
            match consumer.recv().now_or_never() {
                Some(m) => count += gather(&mut batches, m, limits),
                None => break,
            }
        }
        let deadline = tokio::time::Instant::now() + batch_wait;
        while count < batch_max && !batch_wait.is_zero() {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(m) => count += gather(&mut batches, m, limits),
                Err(_) => break,
            }
        }
        progress.events += count as u64;
        {
            let owned = worker.owned.lock().expect("ownership lock");
            worker.cache.lock().expect("cache lock").retain_owned(|p| owned.partitions.contains_key(&p));
        }
        // Partitions are independent: their batches go to Redis and Kafka
        // concurrently, each in order.
        let worker = &worker;
        let outcomes = futures::future::join_all(
            batches.into_iter().map(|(p, messages)| async move { (p, worker.process(p, messages).await) }),
        )
        .await;
        for (partition, outcome) in outcomes {
            match outcome? {
                Outcome::Stored(last, outbox) => {
                    if outbox {
                        relays.dirty.insert(partition);
                    }
                    relays.pending.insert(partition, last);
                }
                Outcome::Seek(offset) => {
                    tracing::info!(partition, offset, "Seeking back to the watermark.");
                    seek_to(&consumer, &topic, partition, rdkafka::Offset::Offset(offset));
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
    relays.finish(&worker, &consumer, &topic).await?;
    // Leaving the group commits the stored offsets (the consumer auto-commits).
    consumer.unsubscribe();
    Ok(())
}

/// Moves a partition's read position (after a gap, a moved watermark or a
/// new claim).
fn seek_to(consumer: &StreamConsumer<PipelineContext>, topic: &str, partition: i32, offset: rdkafka::Offset) {
    if let Err(e) = consumer.seek(topic, partition, offset, Duration::from_secs(10)) {
        tracing::warn!(partition, ?offset, error = %e, "Seek failed.");
    }
}

/// A background relay: how many outbox messages it delivered.
type RelayTask = tokio::task::JoinHandle<Result<usize, PipelineError>>;

/// The outbox relays, run in the background so that scoring goes on while
/// Kafka acknowledges alerts: one relay at most per partition, and a
/// partition's offset is stored only once a relay that started after its
/// commit has delivered the outbox.
#[derive(Default)]
struct Relays {
    /// Relays in flight: the task and the offset it covers.
    running: HashMap<i32, (RelayTask, Option<i64>)>,
    /// Partitions whose outbox got entries since their last relay started.
    dirty: BTreeSet<i32>,
    /// Committed offsets not yet stored.
    pending: HashMap<i32, i64>,
}

impl Relays {
    fn busy(&self) -> bool {
        !self.running.is_empty()
    }

    /// Collects finished relays (storing the offsets they cover) and starts
    /// relays for partitions with new outbox entries.
    async fn pump(
        &mut self,
        worker: &Worker<'_>,
        consumer: &StreamConsumer<PipelineContext>,
        topic: &str,
    ) -> Result<(), PipelineError> {
        let finished: Vec<i32> = self.running.iter().filter(|(_, (h, _))| h.is_finished()).map(|(p, _)| *p).collect();
        for p in finished {
            let (handle, covers) = self.running.remove(&p).expect("a running relay");
            handle.await.map_err(|e| RelayError::Task(e.to_string()))??;
            if let Some(offset) = covers {
                store_offset(consumer, topic, p, offset);
            }
        }
        let partitions: BTreeSet<i32> = self.dirty.iter().chain(self.pending.keys()).copied().collect();
        for p in partitions {
            if self.running.contains_key(&p) {
                continue;
            }
            let covers = self.pending.remove(&p);
            if self.dirty.remove(&p) {
                self.running.insert(p, (worker.spawn_relay(p), covers));
            } else if let Some(offset) = covers {
                store_offset(consumer, topic, p, offset);
            }
        }
        Ok(())
    }

    /// Waits for every relay and stores every offset (shutting down).
    async fn finish(
        &mut self,
        worker: &Worker<'_>,
        consumer: &StreamConsumer<PipelineContext>,
        topic: &str,
    ) -> Result<(), PipelineError> {
        while self.busy() || !self.dirty.is_empty() || !self.pending.is_empty() {
            self.pump(worker, consumer, topic).await?;
            if self.busy() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        Ok(())
    }
}

fn store_offset(consumer: &StreamConsumer<PipelineContext>, topic: &str, partition: i32, offset: i64) {
    if let Err(e) = consumer.store_offset(topic, partition, offset) {
        tracing::debug!(partition, error = %e, "Offset not stored (partition no longer assigned).");
    }
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

/// A message as received: decoded straight from the consumer's buffer. The
/// key and payload are copied only when the event is dead-lettered.
type Received = (InputMessage, Result<crate::decode::ValidEvent, crate::decode::DecodeError>);

/// Decodes a received message into its partition's batch; returns 1 if it
/// was a message, 0 for a consumer error (logged).
fn gather(
    batches: &mut BTreeMap<i32, Vec<Received>>,
    m: Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>,
    limits: &Limits,
) -> usize {
    match m {
        Ok(m) => {
            let decoded = crate::decode::decode(m.payload(), limits, now_ms());
            let (key, payload) = match &decoded {
                Ok(_) => (None, None),
                Err(_) => (m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)),
            };
            batches
                .entry(m.partition())
                .or_default()
                .push((InputMessage { offset: m.offset(), key, payload }, decoded));
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
    /// Applied and durable up to this offset; `true` when the commit put
    /// alerts or dead letters in the outbox.
    Stored(i64, bool),
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
    /// Contact states of the owned partitions as last committed.
    cache: Mutex<StateCache>,
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
    /// unchanged) and marking their partitions for the relays.
    async fn sweep(&self, relays: &mut Relays) -> Result<(), PipelineError> {
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
            // The sweep changes these contacts in Redis behind the cache.
            let swept_ids = swept.commit.cooling.iter().map(|(_, id, _)| id.clone());
            self.cache.lock().expect("cache lock").forget(partition, swept_ids);
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
                relays.dirty.insert(partition);
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

    /// Starts relaying a partition's outbox in the background.
    fn spawn_relay(&self, partition: i32) -> RelayTask {
        let keys = PartitionKeys::new(&self.config.topics.input, partition);
        let (store, producer, alerts) = (self.store.clone(), self.producer.clone(), self.config.topics.alerts.clone());
        tokio::spawn(async move {
            let n = retry("relay", || relay::relay_partition(&store, &producer, &keys, partition, &alerts), |_| true)
                .await?;
            Ok(n)
        })
    }

    /// Relays a partition's outbox and waits until it is delivered.
    async fn relay(&self, partition: i32) -> Result<(), PipelineError> {
        self.spawn_relay(partition).await.map_err(|e| RelayError::Task(e.to_string()))??;
        Ok(())
    }

    /// Scores and commits one partition's messages; the caller relays the
    /// outbox and stores the offset.
    async fn process(&self, partition: i32, received: Vec<Received>) -> Result<Outcome, PipelineError> {
        let Some(own) = self.owned.lock().expect("ownership lock").partitions.get(&partition).copied() else {
            tracing::debug!(partition, n = received.len(), "Dropped messages of a partition no longer owned.");
            return Ok(Outcome::Dropped);
        };
        let (messages, decoded): (Vec<InputMessage>, Vec<_>) = received
            .into_iter()
            .filter(|(m, _)| own.watermark.is_none_or(|w| m.offset > w))
            .map(|(m, d)| {
                let offset = m.offset;
                (m, (offset, d))
            })
            .unzip();
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
        let mut ids: Vec<&str> =
            decoded.iter().filter_map(|(_, r)| r.as_ref().ok().map(|v| v.event.contact_id.as_str())).collect();
        ids.sort_unstable();
        ids.dedup();
        let rules = self.rules.current();
        let (mut known, misses) = self.cache.lock().expect("cache lock").take(&rules, partition, own.epoch, &ids);
        if !misses.is_empty() {
            let hashes = retry("load_contacts", || self.store.load_contacts(&keys, &misses), |_| true).await?;
            for (id, fields) in misses.iter().zip(hashes) {
                known.insert(id.to_string(), batch::Known::from_hash(&rules, fields));
            }
        }
        let target = BatchTarget {
            input_topic: &self.config.topics.input,
            partition,
            alerts_topic: &self.config.topics.alerts,
            dead_letter_topic: &self.config.topics.dead_letter,
        };
        let mut scored = batch::score_batch(&rules, &target, &messages, decoded, known, self.dedup);
        scored.commit.epoch = own.epoch;
        scored.commit.expected_watermark = own.watermark;
        scored.commit.new_watermark = last;
        let commit_started = Instant::now();
        let committed =
            retry("commit", || self.store.commit(&keys, &scored.commit), |e: &StoreError| !e.is_ownership()).await;
        let redis_seconds = commit_started.elapsed().as_secs_f64();
        {
            let mut cache = self.cache.lock().expect("cache lock");
            match &committed {
                Ok(_) => cache.put(partition, own.epoch, std::mem::take(&mut scored.contacts)),
                Err(_) => cache.drop_partition(partition),
            }
        }
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
        self.sought.lock().expect("seek lock").remove(&partition);
        self.reclaims.lock().expect("reclaim lock").strikes.remove(&partition);
        Ok(Outcome::Stored(last, !scored.commit.outbox.is_empty()))
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
