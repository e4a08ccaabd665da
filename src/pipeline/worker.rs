//! The partition worker: one task per owned partition, owning everything
//! about it.
//!
//! Invariants:
//! - A worker exists exactly while this instance holds its partition: it
//!   starts when the partition is assigned, claims it (a new owner epoch),
//!   and ends when the partition is revoked, fenced or the service stops.
//! - Its epoch, watermark, state cache, sweep, outbox relay and the offset
//!   to store live here and nowhere else.
//! - Messages arrive in offset order over a channel from the consumer loop.
//!   After asking the loop to seek, the worker drops everything until the
//!   loop's marker for that seek arrives, so no message read before a seek
//!   is applied after it.
//! - An offset is stored only once its batch is committed and a relay
//!   started after that commit has delivered the outbox.
//! - The relay never outlives the worker: on revocation it stops between
//!   chunks and the worker waits for it; on shutdown it runs to the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::FutureProducer;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::cache::StateCache;
use super::relay::{Relay, RelayError, Relayed};
use super::{Clock, PipelineError};
use crate::engine::{self, Contact, Dedup, Message, Source};
use crate::reload::LiveRules;
use crate::retry;
use crate::store::{commit_for, Outputs, PartitionKeys, Store, StoreError, Stored, Written};
use crate::telemetry;

/// What the consumer loop hands a worker.
#[derive(Debug)]
pub enum Delivery {
    /// Messages of the partition, in offset order.
    Messages(Vec<Message>),
    /// The seek the worker asked for under this number has been made:
    /// messages from here on are read after it.
    Sought(u64),
}

/// What a worker asks of the consumer loop (which alone touches the
/// consumer).
#[derive(Debug)]
pub enum Request {
    /// Read the partition from `offset` (`None`: where the group's position
    /// says), resume it if paused, and send [`Delivery::Sought`] with `seek`.
    Seek {
        /// The partition.
        partition: i32,
        /// Where to read from.
        offset: Option<rdkafka::Offset>,
        /// The number the marker carries.
        seek: u64,
    },
    /// Store this offset for the group's next commit.
    StoreOffset {
        /// The partition.
        partition: i32,
        /// The offset of the last message whose effects are durable.
        offset: i64,
    },
    /// The group's committed offset of the partition, if it has one.
    Committed {
        /// The partition.
        partition: i32,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Option<i64>, rdkafka::error::KafkaError>>,
    },
    /// The worker has ended by itself.
    Ended {
        /// The partition.
        partition: i32,
        /// The worker's number (a partition may be claimed again).
        worker: u64,
        /// Why.
        why: Ended,
    },
}

/// Why a worker ended by itself.
#[derive(Debug)]
pub enum Ended {
    /// Another instance claimed the partition.
    Fenced,
    /// The partition's state is gone from Redis while Kafka has this offset
    /// committed for the group.
    StateLost(i64),
    /// Redis or Kafka kept failing.
    Failed(PipelineError),
}

/// How the consumer loop asks a worker to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep going.
    Run,
    /// The partition was revoked: finish the batch in hand, let the relay
    /// stop between chunks, store what is delivered, end.
    Revoke,
    /// The service stops: finish the batch in hand, relay everything, store
    /// the offsets, end.
    Shutdown,
}

/// What every worker shares.
pub struct Shared {
    /// Input topic.
    pub topic: String,
    /// Where outbox entries go.
    pub alerts_topic: String,
    /// Dead-letter topic.
    pub dead_letter_topic: String,
    /// Redis.
    pub store: Store,
    /// The alert and dead-letter producer.
    pub producer: FutureProducer,
    /// The rules in force.
    pub rules: Arc<LiveRules>,
    /// The wall clock the sweep reads.
    pub clock: Clock,
    /// Repeat check.
    pub dedup: Dedup,
    /// Most events in one batch.
    pub batch_max: usize,
    /// How long a batch waits for more events.
    pub batch_wait: Duration,
    /// How often owned partitions are swept for cooled contacts (0: never).
    pub sweep_interval: Duration,
    /// Score a partition whose state is gone from the start of the topic.
    pub rebuild_lost_state: bool,
    /// Requests to the consumer loop.
    pub requests: std::sync::mpsc::Sender<Request>,
}

/// The consumer loop's handle on a running worker.
pub struct Handle {
    /// The worker's number.
    pub id: u64,
    /// Its message channel.
    pub deliveries: mpsc::Sender<Delivery>,
    /// How it is asked to end.
    pub stop: watch::Sender<Stop>,
    /// The task.
    pub task: JoinHandle<()>,
}

/// Starts the worker of a newly assigned partition.
pub fn spawn(
    runtime: &tokio::runtime::Handle,
    shared: Arc<Shared>,
    partition: i32,
    id: u64,
    cache_contacts: usize,
) -> Handle {
    let capacity = shared.batch_max.clamp(16, 4096);
    let (deliveries, rx) = mpsc::channel(capacity);
    let (stop, stop_rx) = watch::channel(Stop::Run);
    let keys = PartitionKeys::new(&shared.topic, partition);
    let worker = Worker {
        shared,
        partition,
        id,
        keys,
        epoch: 0,
        watermark: None,
        cache: StateCache::new(cache_contacts),
        seeks: 0,
        awaiting: None,
        gap_sought: None,
        relay: None,
        dirty: false,
        pending: None,
    };
    let task = runtime.spawn(worker.run(rx, stop_rx));
    Handle { id, deliveries, stop, task }
}

/// A relay in flight: its task, its stop flag and the offset it covers.
struct RelayRun {
    task: JoinHandle<Result<Relayed, RelayError>>,
    stop: Arc<AtomicBool>,
    covers: Option<i64>,
}

struct Worker {
    shared: Arc<Shared>,
    partition: i32,
    id: u64,
    keys: PartitionKeys,
    /// The owner epoch claimed.
    epoch: i64,
    /// Offset of the last message applied (`None`: none yet).
    watermark: Option<i64>,
    cache: StateCache,
    /// Seeks asked for so far (numbers the markers).
    seeks: u64,
    /// The seek whose marker has not arrived yet.
    awaiting: Option<u64>,
    /// The offset last sought back to after a gap.
    gap_sought: Option<i64>,
    relay: Option<RelayRun>,
    /// The outbox got entries since the running relay started.
    dirty: bool,
    /// Committed offset not yet stored.
    pending: Option<i64>,
}

/// What became of a batch.
enum Outcome {
    /// Committed.
    Stored,
    /// Not applied; nothing to do.
    Dropped,
    /// Not applied: another instance owns the partition.
    Fenced,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Delivery>, mut stop: watch::Receiver<Stop>) {
        let ended = self.work(&mut rx, &mut stop).await;
        let how = *stop.borrow();
        // The relay never outlives the worker.
        let finished = self.end_relay(how != Stop::Shutdown || ended.is_err()).await;
        let ended = match (ended, finished) {
            (Ok(()), Err(e)) => Err(Ended::Failed(e)),
            (e, _) => e,
        };
        if let Err(why) = ended {
            let _ = self.shared.requests.send(Request::Ended { partition: self.partition, worker: self.id, why });
        }
    }

    /// Claims the partition and scores its messages until asked to stop or
    /// fenced.
    async fn work(&mut self, rx: &mut mpsc::Receiver<Delivery>, stop: &mut watch::Receiver<Stop>) -> Result<(), Ended> {
        self.claim().await?;
        let sweep_every = self.shared.sweep_interval;
        let mut sweep =
            tokio::time::interval(if sweep_every.is_zero() { Duration::from_secs(3600) } else { sweep_every });
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.tick().await;
        loop {
            let relay_running = self.relay.is_some();
            tokio::select! {
                biased;
                _ = stop.changed() => {
                    if *stop.borrow() != Stop::Run {
                        return Ok(());
                    }
                }
                r = async { (&mut self.relay.as_mut().expect("a relay").task).await }, if relay_running => {
                    let run = self.relay.take().expect("a relay");
                    let relayed = r.map_err(|e| Ended::Failed(PipelineError::Task(e.to_string())))?;
                    match relayed.map_err(|e| Ended::Failed(e.into()))? {
                        Relayed::All(_) => {
                            if let Some(offset) = run.covers {
                                self.store_offset(offset);
                            }
                        }
                        // A new owner holds the partition.
                        Relayed::Stopped(_) => return Err(Ended::Fenced),
                    }
                    self.pump();
                }
                d = rx.recv() => {
                    let Some(d) = d else { return Ok(()) };
                    let mut messages = self.accept(d);
                    let deadline = tokio::time::Instant::now() + self.shared.batch_wait;
                    while messages.len() < self.shared.batch_max {
                        let next = match rx.try_recv() {
                            Ok(d) => d,
                            Err(_) if self.shared.batch_wait.is_zero() => break,
                            Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                                Ok(Some(d)) => d,
                                _ => break,
                            },
                        };
                        messages.extend(self.accept(next));
                    }
                    if !messages.is_empty() {
                        match self.process(messages).await? {
                            Outcome::Stored | Outcome::Dropped => self.pump(),
                            Outcome::Fenced => return Err(Ended::Fenced),
                        }
                    }
                }
                _ = sweep.tick(), if !sweep_every.is_zero() => {
                    if self.sweep().await? == Outcome::Fenced {
                        return Err(Ended::Fenced);
                    }
                    self.pump();
                }
            }
        }
    }

    /// Claims the partition (a new epoch), checks that its state is not
    /// lost, has the loop seek to the watermark and relays what an earlier
    /// owner left in the outbox.
    async fn claim(&mut self) -> Result<(), Ended> {
        let keys = self.keys.clone();
        let store = self.shared.store.clone();
        let (epoch, watermark) =
            retry::always("claim_partition", || store.claim(&keys)).await.map_err(|e| Ended::Failed(e.into()))?;
        self.epoch = epoch;
        self.watermark = watermark;
        let start = match watermark {
            Some(w) => Some(rdkafka::Offset::Offset(w + 1)),
            None => match self.committed().await? {
                Some(committed) if self.shared.rebuild_lost_state => {
                    tracing::warn!(
                        partition = self.partition,
                        committed,
                        "State of the partition is gone from Redis; rebuilding it from the start of the topic."
                    );
                    Some(rdkafka::Offset::Beginning)
                }
                Some(committed) => return Err(Ended::StateLost(committed)),
                None => None,
            },
        };
        telemetry::partition_claimed(self.partition, epoch, watermark);
        self.seek(start);
        // Anything an earlier owner committed but did not relay.
        self.dirty = true;
        self.pump();
        Ok(())
    }

    /// The group's committed offset, asked of the consumer loop.
    async fn committed(&self) -> Result<Option<i64>, Ended> {
        retry::always("committed_offsets", || async {
            let (reply, answer) = oneshot::channel();
            let _ = self.shared.requests.send(Request::Committed { partition: self.partition, reply });
            answer.await.unwrap_or(Err(rdkafka::error::KafkaError::Canceled))
        })
        .await
        .map_err(|e| Ended::Failed(e.into()))
    }

    /// Asks the loop to read the partition again from `offset`; messages
    /// are dropped until its marker arrives.
    fn seek(&mut self, offset: Option<rdkafka::Offset>) {
        self.seeks += 1;
        self.awaiting = Some(self.seeks);
        let _ = self.shared.requests.send(Request::Seek { partition: self.partition, offset, seek: self.seeks });
    }

    fn store_offset(&self, offset: i64) {
        let _ = self.shared.requests.send(Request::StoreOffset { partition: self.partition, offset });
    }

    /// The messages of a delivery that are new: none while a seek's marker
    /// is awaited, none at or below the watermark.
    fn accept(&mut self, d: Delivery) -> Vec<Message> {
        match d {
            Delivery::Sought(n) => {
                if self.awaiting == Some(n) {
                    self.awaiting = None;
                }
                vec![]
            }
            Delivery::Messages(_) if self.awaiting.is_some() => vec![],
            Delivery::Messages(mut m) => {
                if let Some(w) = self.watermark {
                    m.retain(|m| m.offset > w);
                }
                m
            }
        }
    }

    /// Starts a relay when the outbox has new entries and none runs, or
    /// stores a committed offset that needs no relay.
    fn pump(&mut self) {
        if self.relay.is_some() {
            return;
        }
        let covers = self.pending.take();
        if self.dirty {
            self.dirty = false;
            let stop = Arc::new(AtomicBool::new(false));
            let (shared, keys, partition, epoch) = (self.shared.clone(), self.keys.clone(), self.partition, self.epoch);
            let flag = stop.clone();
            let task = tokio::spawn(async move {
                let relay = Relay {
                    store: &shared.store,
                    producer: &shared.producer,
                    keys: &keys,
                    partition,
                    epoch,
                    alerts_topic: &shared.alerts_topic,
                };
                retry::always("relay", || relay.run(&flag)).await
            });
            self.relay = Some(RelayRun { task, stop, covers });
        } else if let Some(offset) = covers {
            self.store_offset(offset);
        }
    }

    /// Ends the relay: stops it between chunks when `abandon`, or lets it
    /// deliver the whole outbox (starting one if entries wait), then stores
    /// the offset it covers.
    async fn end_relay(&mut self, abandon: bool) -> Result<(), PipelineError> {
        loop {
            if !abandon && self.relay.is_none() && (self.dirty || self.pending.is_some()) {
                self.pump();
            }
            let Some(run) = self.relay.take() else { return Ok(()) };
            if abandon {
                run.stop.store(true, Ordering::Release);
            }
            let relayed = run.task.await.map_err(|e| PipelineError::Task(e.to_string()))??;
            match relayed {
                Relayed::All(_) => {
                    if let Some(offset) = run.covers {
                        self.store_offset(offset);
                    }
                }
                Relayed::Stopped(_) => return Ok(()),
            }
            if abandon {
                return Ok(());
            }
        }
    }

    /// Scores and commits one batch.
    async fn process(&mut self, messages: Vec<Message>) -> Result<Outcome, Ended> {
        let (Some(first), Some(last)) = (messages.first().map(|m| m.offset), messages.last().map(|m| m.offset)) else {
            return Ok(Outcome::Dropped);
        };
        if let Some(w) = self.watermark {
            if first != w + 1 {
                // Messages past a gap: go back to the watermark once; if the
                // gap is still there, the broker no longer has those offsets.
                if self.gap_sought != Some(w + 1) {
                    self.gap_sought = Some(w + 1);
                    tracing::info!(partition = self.partition, offset = w + 1, "Seeking back to the watermark.");
                    self.seek(Some(rdkafka::Offset::Offset(w + 1)));
                    return Ok(Outcome::Dropped);
                }
                tracing::warn!(
                    partition = self.partition,
                    watermark = w,
                    first,
                    "Offsets skipped: the broker no longer has them."
                );
            }
        }
        let started = Instant::now();
        let rules = self.shared.rules.current();
        let mut ids: Vec<&str> =
            messages.iter().filter_map(|m| m.event.as_ref().ok().map(|v| v.event.contact_id.as_str())).collect();
        ids.sort_unstable();
        ids.dedup();
        let (mut stored, misses) = self.cache.take(&rules, &ids);
        if !misses.is_empty() {
            let store = &self.shared.store;
            let hashes = retry::always("load_contacts", || store.load_contacts(&self.keys, &misses))
                .await
                .map_err(|e| Ended::Failed(e.into()))?;
            for (id, fields) in misses.iter().zip(hashes) {
                stored.insert(id.to_string(), Stored::from_hash(&rules, fields));
            }
        }
        let (known, written) = split(stored);
        let source = Source { topic: &self.shared.topic, partition: self.partition };
        let effects = engine::score_batch(&rules, source, messages, known, self.shared.dedup);
        let outputs = Outputs { alerts: &self.shared.alerts_topic, dead_letter: &self.shared.dead_letter_topic };
        let (mut commit, after) = commit_for(&rules, source, outputs, &effects, written);
        commit.epoch = self.epoch;
        commit.expected_watermark = self.watermark;
        commit.new_watermark = last;
        let commit_started = Instant::now();
        let store = &self.shared.store;
        let committed =
            retry::retry("commit", || store.commit(&self.keys, &commit), |e: &StoreError| !e.is_ownership()).await;
        let redis_seconds = commit_started.elapsed().as_secs_f64();
        match committed {
            Ok(_) => {}
            Err(StoreError::WatermarkMismatch(e)) => {
                self.cache.clear();
                // Still the owner, but the stored watermark is not ours (Redis
                // lost its last writes, say): resume from what Redis holds.
                let stored = retry::always("watermark", || store.watermark(&self.keys))
                    .await
                    .map_err(|e| Ended::Failed(e.into()))?;
                tracing::warn!(partition = self.partition, ours = ?self.watermark, stored = ?stored, error = %e, "Watermark moved; resuming from the stored one.");
                self.watermark = stored;
                self.gap_sought = None;
                if let Some(w) = stored {
                    self.seek(Some(rdkafka::Offset::Offset(w + 1)));
                }
                return Ok(Outcome::Dropped);
            }
            Err(e) if e.is_ownership() => {
                telemetry::fenced(self.partition, &e);
                return Ok(Outcome::Fenced);
            }
            Err(e) => {
                self.cache.clear();
                return Err(Ended::Failed(e.into()));
            }
        }
        self.watermark = Some(last);
        self.gap_sought = None;
        self.dirty |= !commit.outbox.is_empty();
        self.pending = Some(last);
        telemetry::batch_committed(
            self.partition,
            &effects,
            self.shared.dead_letter_topic.as_str(),
            started.elapsed().as_secs_f64(),
            redis_seconds,
        );
        self.cache.put(effects.contacts.into_iter().zip(after).map(|((id, contact), written)| {
            let stored = Stored { contact, written };
            (id, stored)
        }));
        Ok(Outcome::Stored)
    }

    /// Sweeps the partition for contacts that cooled with no event: commits
    /// their COOLED alerts like a batch (fenced, watermark unchanged).
    async fn sweep(&mut self) -> Result<Outcome, Ended> {
        const LIMIT: usize = 1000;
        let Some(watermark) = self.watermark else { return Ok(Outcome::Dropped) };
        let rules = self.shared.rules.current();
        let now = (self.shared.clock)();
        let names: Vec<&str> = rules.models.iter().map(|m| m.name.as_str()).collect();
        let store = &self.shared.store;
        let keys = &self.keys;
        let loaded = retry::always("sweep", || async {
            let mut due: Vec<String> =
                store.cooling_due(keys, &names, now, LIMIT).await?.into_iter().flatten().collect();
            due.sort_unstable();
            due.dedup();
            let ids: Vec<&str> = due.iter().map(String::as_str).collect();
            let hashes = store.load_contacts(keys, &ids).await?;
            Ok::<_, StoreError>(due.into_iter().zip(hashes).collect::<Vec<_>>())
        })
        .await
        .map_err(|e| Ended::Failed(e.into()))?;
        if loaded.is_empty() {
            return Ok(Outcome::Dropped);
        }
        // The sweep changes these contacts in Redis behind the cache.
        self.cache.forget(loaded.iter().map(|(id, _)| id));
        let stored: HashMap<String, Stored> =
            loaded.into_iter().map(|(id, fields)| (id, Stored::from_hash(&rules, fields))).collect();
        let (known, written) = split(stored);
        let source = Source { topic: &self.shared.topic, partition: self.partition };
        let mut due: Vec<(String, Contact)> = known.into_iter().collect();
        due.sort_by(|a, b| a.0.cmp(&b.0));
        let effects = engine::sweep(&rules, source, due, now);
        let outputs = Outputs { alerts: &self.shared.alerts_topic, dead_letter: &self.shared.dead_letter_topic };
        let (mut commit, _) = commit_for(&rules, source, outputs, &effects, written);
        commit.epoch = self.epoch;
        commit.expected_watermark = Some(watermark);
        commit.new_watermark = watermark;
        match retry::retry("commit", || store.commit(keys, &commit), |e: &StoreError| !e.is_ownership()).await {
            Ok(_) => {}
            Err(e) if e.is_ownership() => {
                // A batch moved the watermark or another owner took over:
                // the next batch or sweep finds out which.
                tracing::debug!(partition = self.partition, error = %e, "Sweep skipped.");
                return Ok(Outcome::Dropped);
            }
            Err(e) => return Err(Ended::Failed(e.into())),
        }
        telemetry::swept(self.partition, &effects.alerts);
        self.dirty |= !commit.outbox.is_empty();
        Ok(Outcome::Stored)
    }
}

impl PartialEq for Outcome {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// Splits stored contacts into the engine's input and what is written.
fn split(stored: HashMap<String, Stored>) -> (HashMap<String, Contact>, HashMap<String, Written>) {
    let mut known = HashMap::with_capacity(stored.len());
    let mut written = HashMap::with_capacity(stored.len());
    for (id, s) in stored {
        written.insert(id.clone(), s.written);
        known.insert(id, s.contact);
    }
    (known, written)
}
