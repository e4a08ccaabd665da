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
use crate::engine::{self, Contact, Dedup, Message, Raw, Source};
use crate::reload::LiveRules;
use crate::retry;
use crate::rules::RuleSet;
use crate::store::{commit_for, Commit, Outputs, PartitionKeys, Store, StoreError, Stored, Written};
use crate::telemetry;

/// What the consumer loop hands a worker.
#[derive(Debug)]
pub enum Delivery {
    /// Messages of the partition, in offset order (maybe none), with the
    /// partition's low and high watermarks as the consumer last saw them.
    Messages(Vec<Raw>, Option<(i64, i64)>),
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
    /// The partition was revoked before the worker had claimed it.
    Revoked,
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

/// Which stage a pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Contacts: the input topic's events scored per contact.
    Contacts,
    /// Accounts: the contributions topic's records rolled up per account
    /// ([`crate::account`]).
    Accounts,
}

/// What every worker shares.
pub struct Shared {
    /// The stage: what the partitions hold and how they are scored.
    pub stage: Stage,
    /// Where contacts' contributions to accounts go (empty: nowhere; a
    /// shadow lane, or no model has an account roll-up).
    pub contributions_topic: String,
    /// Partitions of the contributions topic.
    pub contribution_partitions: i32,
    /// The account stage: the input topic, whose contact stage must have
    /// read it to its end before the clock may cool an account (its unread
    /// events could still change the answer). Empty for the contact stage.
    pub input_topic: String,
    /// A client for topics' offsets (the account stage's: the input's end
    /// offsets, its own partitions' low watermarks).
    pub metadata: std::sync::Mutex<Option<rdkafka::consumer::BaseConsumer<crate::kafka::QuietContext>>>,
    /// Input topic.
    pub topic: String,
    /// Where outbox entries go.
    pub alerts_topic: String,
    /// Dead-letter topic.
    pub dead_letter_topic: String,
    /// Erasure records' topic.
    pub erasures_topic: String,
    /// Shadow models' alerts.
    pub shadow_alerts_topic: String,
    /// The lane scoring (`""`: the live service) and the time it starts
    /// from ([`engine::Lane`]).
    pub lane: String,
    /// Events dated before this are not scored (a back-fill `--from`).
    pub not_before_ms: Option<i64>,
    /// The scoring rate limit, shared by the partitions (`None`: none).
    pub throttle: Option<Throttle>,
    /// The Kafka client configuration (a rebuild reads the erasure topic).
    pub kafka: rdkafka::ClientConfig,
    /// Redis.
    pub store: Store,
    /// The alert and dead-letter producer.
    pub producer: FutureProducer<crate::kafka::QuietContext>,
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
    /// Alerts for crossings older than this (ms) when raised are historical.
    pub historical_after_ms: i64,
    /// Where outbox entries go, and how large a dead letter may be.
    pub dead_letter_max_bytes: usize,
    /// Requests to the consumer loop.
    pub requests: std::sync::mpsc::Sender<Request>,
    /// Decoding limits.
    pub limits: crate::decode::Limits,
    /// Relays of workers given up on, still delivering their last chunk.
    pub abandoned: std::sync::Mutex<HashMap<i32, JoinHandle<Result<Relayed, RelayError>>>>,
    /// The erasure topic as last read, and when: the partitions claimed
    /// together at start share one read.
    pub erased: tokio::sync::Mutex<Option<(Instant, Arc<Vec<crate::proto::ContactErased>>)>>,
}

impl Shared {
    /// How long a read of the erasure topic serves later claims.
    const ERASURES_FRESH: Duration = Duration::from_secs(5);

    /// Every erasure record (`None` when the topic cannot be read), read at
    /// most once per [`Self::ERASURES_FRESH`], one reader at a time.
    pub async fn erasures(&self) -> Result<Option<Arc<Vec<crate::proto::ContactErased>>>, Ended> {
        use prost::Message as _;
        let mut cached = self.erased.lock().await;
        if let Some((at, records)) = cached.as_ref() {
            if at.elapsed() < Self::ERASURES_FRESH {
                return Ok(Some(records.clone()));
            }
        }
        let (config, topic) = (self.kafka.clone(), self.erasures_topic.clone());
        let read = tokio::task::spawn_blocking(move || {
            crate::kafka::read_tail(&config, &topic, i64::MAX, Duration::from_secs(60))
        })
        .await
        .map_err(|e| Ended::Failed(PipelineError::Task(format!("reading the erasure topic: {e}"))))?;
        let Ok(read) = read else { return Ok(None) };
        let records: Arc<Vec<_>> = Arc::new(
            read.iter().filter_map(|t| crate::proto::ContactErased::decode(t.payload.as_slice()).ok()).collect(),
        );
        *cached = Some((Instant::now(), records.clone()));
        Ok(Some(records))
    }
}

/// A rate limit shared by the workers: each batch waits for its share.
pub struct Throttle {
    /// Messages a second.
    rate: f64,
    /// When the capacity already handed out is used up.
    next: std::sync::Mutex<Instant>,
}

impl Throttle {
    /// At most `rate` messages a second.
    pub fn new(rate: u32) -> Self {
        Self { rate: f64::from(rate.max(1)), next: std::sync::Mutex::new(Instant::now()) }
    }

    /// Waits until `n` more messages fit the rate.
    pub async fn acquire(&self, n: usize) {
        let wait = {
            let mut next = self.next.lock().expect("throttle lock");
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(n as f64 / self.rate);
            start - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
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
    // A delivery is one poll's messages of the partition (up to 2,000), so
    // a few of them in hand keep the worker busy; more would only hold a
    // backlog decoded in memory.
    let (deliveries, rx) = mpsc::channel(DELIVERIES_IN_HAND);
    let (stop, stop_rx) = watch::channel(Stop::Run);
    let keys = shared.store.keys(&shared.topic, partition);
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
        commits: 0,
        log_end: None,
        rules: None,
        fingerprints_written: false,
        backlog: std::collections::VecDeque::new(),
        pruned_at: None,
        vocabulary_written: None,
        roles: None,
    };
    let task = runtime.spawn(worker.run(rx, stop_rx));
    Handle { id, deliveries, stop, task }
}

/// A relay in flight: its task, its stop flag and the offset it covers.
struct RelayRun {
    task: Option<JoinHandle<Result<Relayed, RelayError>>>,
    stop: Arc<AtomicBool>,
    covers: Option<i64>,
    shared: Arc<Shared>,
    partition: i32,
}

impl RelayRun {
    /// Waits for the relay to end.
    async fn finish(&mut self) -> Result<Result<Relayed, RelayError>, tokio::task::JoinError> {
        let result = self.task.as_mut().expect("a relay task").await;
        self.task = None;
        result
    }
}

impl Drop for RelayRun {
    /// A worker given up on (it did not end in time after a revocation)
    /// leaves a relay whose chunk is still with the producer: it is told to
    /// stop after that chunk, and the partition's next relay in this process
    /// waits for it, so no entry is sent twice from here.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            self.stop.store(true, Ordering::Release);
            self.shared.abandoned.lock().expect("abandoned lock").insert(self.partition, task);
        }
    }
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
    /// Commits made under this claim (numbers their ids).
    commits: u64,
    /// The partition's low and high watermarks, as the consumer last saw.
    log_end: Option<(i64, i64)>,
    /// The rules the stored leaderboard and cooling entries are indexed for.
    rules: Option<Arc<RuleSet>>,
    /// Whether the partition's index fingerprints match the rules in force.
    fingerprints_written: bool,
    /// Messages received and not yet scored, in offset order.
    backlog: std::collections::VecDeque<Raw>,
    /// When a sweep last pruned the leaderboards (clock time).
    pruned_at: Option<i64>,
    /// The vocabulary this claim has recorded for the partition.
    vocabulary_written: Option<u32>,
    /// The models' roles a promotion stored for the partition (`None`:
    /// the rules' own).
    roles: Option<String>,
}

/// How many deliveries wait for a worker at most before the consumer loop
/// holds back.
const DELIVERIES_IN_HAND: usize = 2;

/// How often a sweep with no contact due still prunes the leaderboards of
/// contacts that decayed under the floor.
const PRUNE_EVERY_MS: i64 = 60_000;

/// What became of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
                r = async { self.relay.as_mut().expect("a relay").finish().await }, if relay_running => {
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
                () = std::future::ready(()), if !self.backlog.is_empty() => {
                    // Messages read already: the next batch, at most
                    // `batch_max` of them.
                    let n = self.backlog.len().min(self.shared.batch_max);
                    let raws: Vec<Raw> = self.backlog.drain(..n).collect();
                    let outcome = match self.shared.stage {
                        Stage::Contacts => {
                            let limits = &self.shared.limits;
                            self.process(raws.iter().map(|r| r.decode(limits)).collect()).await?
                        }
                        Stage::Accounts => self.process_accounts(raws).await?,
                    };
                    match outcome {
                        Outcome::Stored | Outcome::Dropped => self.pump(),
                        Outcome::Fenced => return Err(Ended::Fenced),
                    }
                }
                d = rx.recv() => {
                    let Some(d) = d else { return Ok(()) };
                    let accepted = self.accept(d);
                    self.backlog.extend(accepted);
                    let deadline = tokio::time::Instant::now() + self.shared.batch_wait;
                    while self.backlog.len() < self.shared.batch_max {
                        let next = match rx.try_recv() {
                            Ok(d) => d,
                            Err(_) if self.shared.batch_wait.is_zero() => break,
                            Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                                Ok(Some(d)) => d,
                                _ => break,
                            },
                        };
                        let accepted = self.accept(next);
                        self.backlog.extend(accepted);
                    }
                }
                _ = sweep.tick(), if !sweep_every.is_zero() => {
                    let outcome = match self.shared.stage {
                        Stage::Contacts => self.sweep().await?,
                        Stage::Accounts => self.sweep_accounts().await?,
                    };
                    if outcome == Outcome::Fenced {
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
        self.vocabulary_written = None;
        let roles = [keys.roles()];
        self.roles = retry::always("roles", || store.strings(&roles))
            .await
            .map_err(|e| Ended::Failed(e.into()))?
            .pop()
            .flatten();
        let start = match watermark {
            Some(w) => Some(rdkafka::Offset::Offset(w + 1)),
            None => match self.committed_since_claim().await? {
                Some(committed) if self.shared.rebuild_lost_state => {
                    tracing::warn!(
                        partition = self.partition,
                        committed,
                        "State of the partition is gone from Redis; rebuilding it from the start of the topic."
                    );
                    self.restore_tombstones().await?;
                    Some(rdkafka::Offset::Beginning)
                }
                Some(committed) if self.shared.stage == Stage::Accounts && self.log_intact().await? => {
                    // An account partition's state is the contribution log
                    // applied once: with the whole log still there, it is
                    // rebuilt exactly by reading it again.
                    tracing::warn!(
                        partition = self.partition,
                        committed,
                        "Account state of the partition is gone from Redis; its whole contribution log is retained: rolling it up again from the start."
                    );
                    Some(rdkafka::Offset::Beginning)
                }
                Some(committed) => return Err(Ended::StateLost(committed)),
                None => {
                    // A partition scored from its first event (a new
                    // deployment over a topic with history): erased contacts
                    // stay erased there too.
                    self.restore_tombstones().await?;
                    None
                }
            },
        };
        telemetry::partition_claimed(self.partition, epoch, watermark);
        self.seek(start);
        // Anything an earlier owner committed but did not relay.
        self.dirty = true;
        self.pump();
        Ok(())
    }

    /// Before a rebuild: the tombstones of the partition's erased contacts,
    /// read back from the erasure topic, so the rebuild never brings one
    /// back (not for a moment, not in an alert).
    async fn restore_tombstones(&self) -> Result<(), Ended> {
        if self.shared.stage == Stage::Accounts {
            // Accounts keep no id of an erased contact: nothing to restore.
            return Ok(());
        }
        let Some(erased) = self.shared.erasures().await? else {
            tracing::warn!(partition = self.partition, topic = %self.shared.erasures_topic, "Cannot read the erasure topic before scoring the partition from its start; erasures come back as the topic replays them.");
            return Ok(());
        };
        let ids: Vec<String> = erased
            .iter()
            .filter(|r| r.topic == self.shared.topic && r.partition == self.partition)
            .map(|r| r.contact_id.clone())
            .collect();
        let (store, keys) = (self.shared.store.clone(), self.keys.clone());
        retry::always("restore_tombstones", || store.tombstones(&keys, &ids))
            .await
            .map_err(|e| Ended::Failed(e.into()))?;
        if !ids.is_empty() {
            tracing::info!(
                partition = self.partition,
                erased = ids.len(),
                "Restored the tombstones of erased contacts before scoring the partition from its start."
            );
        }
        Ok(())
    }

    /// The vocabulary a commit of values written under `rules` must record
    /// first, unless this claim has recorded it already.
    fn vocabulary_for(&self, rules: &RuleSet) -> Option<(u32, Vec<String>)> {
        (self.vocabulary_written != Some(rules.vocabulary_id)).then(|| (rules.vocabulary_id, rules.vocabulary.clone()))
    }

    /// The group's committed offset, asked of the consumer loop.
    /// The group's committed offset of a partition claimed with no
    /// watermark, once it is sure that the watermark is missing: the offsets
    /// are read after the claim, so a newer owner may have scored, committed
    /// and stored offsets meanwhile. Then this claim is fenced (the loop
    /// claims again and reads the watermark), never a lost state.
    async fn committed_since_claim(&mut self) -> Result<Option<i64>, Ended> {
        let Some(committed) = self.committed().await? else { return Ok(None) };
        let (store, keys) = (self.shared.store.clone(), self.keys.clone());
        let names = [keys.epoch(), keys.watermark()];
        let now = retry::always("claim_check", || store.strings(&names)).await.map_err(|e| Ended::Failed(e.into()))?;
        let epoch = now[0].as_deref().and_then(|e| e.parse::<i64>().ok());
        if epoch != Some(self.epoch) || now[1].is_some() {
            tracing::info!(
                partition = self.partition,
                committed,
                "Another owner scored the partition since this claim; claiming again."
            );
            return Err(Ended::Fenced);
        }
        Ok(Some(committed))
    }

    async fn committed(&self) -> Result<Option<i64>, Ended> {
        use rdkafka::error::KafkaError;
        let asked = retry::retry(
            "committed_offsets",
            || async {
                let (reply, answer) = oneshot::channel();
                let _ = self.shared.requests.send(Request::Committed { partition: self.partition, reply });
                answer.await.unwrap_or(Err(KafkaError::Canceled))
            },
            |e: &KafkaError| !matches!(e, KafkaError::Canceled),
        )
        .await;
        match asked {
            Ok(c) => Ok(c),
            Err(KafkaError::Canceled) => Err(Ended::Revoked),
            Err(e) => Err(Ended::Failed(e.into())),
        }
    }

    /// Asks the loop to read the partition again from `offset`; messages
    /// are dropped until its marker arrives.
    fn seek(&mut self, offset: Option<rdkafka::Offset>) {
        // What was read before the seek is read again after it.
        self.backlog.clear();
        self.seeks += 1;
        self.awaiting = Some(self.seeks);
        let _ = self.shared.requests.send(Request::Seek { partition: self.partition, offset, seek: self.seeks });
    }

    fn store_offset(&self, offset: i64) {
        let _ = self.shared.requests.send(Request::StoreOffset { partition: self.partition, offset });
    }

    /// The messages of a delivery that are new: none while a seek's marker
    /// is awaited, none at or below the watermark.
    fn accept(&mut self, d: Delivery) -> Vec<Raw> {
        match d {
            Delivery::Sought(n) => {
                if self.awaiting == Some(n) {
                    self.awaiting = None;
                }
                vec![]
            }
            Delivery::Messages(_, _) if self.awaiting.is_some() => vec![],
            Delivery::Messages(mut m, log_end) => {
                if log_end.is_some() {
                    self.log_end = log_end;
                }
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
            let before = shared.abandoned.lock().expect("abandoned lock").remove(&partition);
            let task = tokio::spawn(async move {
                if let Some(before) = before {
                    let _ = before.await;
                }
                let relay = Relay {
                    store: &shared.store,
                    producer: &shared.producer,
                    keys: &keys,
                    partition,
                    epoch,
                    alerts_topic: &shared.alerts_topic,
                    acked: std::sync::Mutex::default(),
                };
                retry::always("relay", || relay.run(&flag)).await
            });
            self.relay = Some(RelayRun {
                task: Some(task),
                stop,
                covers,
                shared: self.shared.clone(),
                partition: self.partition,
            });
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
            let Some(mut run) = self.relay.take() else { return Ok(()) };
            if abandon {
                run.stop.store(true, Ordering::Release);
            }
            let relayed = run.finish().await.map_err(|e| PipelineError::Task(e.to_string()))??;
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
        if self.past_gap(first) {
            return Ok(Outcome::Dropped);
        }
        if let Some(t) = &self.shared.throttle {
            t.acquire(messages.len()).await;
        }
        let started = Instant::now();
        let rules = self.adopt_rules().await?;
        let mut ids: Vec<&str> =
            messages.iter().filter_map(|m| m.event.as_ref().ok().map(|v| v.event.contact_id.as_str())).collect();
        // A promotion that announces names every contact of the partition.
        let everyone = if messages.iter().any(announces) {
            let (store, keys) = (&self.shared.store, &self.keys);
            retry::always("contact_ids", || store.contact_ids(keys)).await.map_err(|e| Ended::Failed(e.into()))?
        } else {
            Vec::new()
        };
        ids.extend(everyone.iter().map(String::as_str));
        ids.retain(|id| !id.is_empty());
        ids.sort_unstable();
        ids.dedup();
        let (mut stored, misses) = self.cache.take(&rules, &ids);
        if !misses.is_empty() {
            let store = &self.shared.store;
            let hashes = retry::always("load_contacts", || store.load_contacts(&self.keys, &rules, &misses))
                .await
                .map_err(|e| Ended::Failed(e.into()))?;
            for (id, value) in misses.iter().zip(hashes) {
                stored.insert(id.to_string(), read_stored(&rules, &self.keys, id, &value)?);
            }
        }
        let (known, written) = split(stored);
        let source = Source { topic: &self.shared.topic, partition: self.partition };
        let mut lane = self.lane(&rules);
        let mut effects = engine::score_batch_in(&rules, source, &mut lane, messages, known, self.shared.dedup);
        self.mark_historical(&mut effects);
        let (mut commit, after) = commit_for(&rules, source, self.outputs(), &effects, written);
        let roles = effects.roles_changed.then(|| lane.roles_text(&rules));
        if let Some(r) = &roles {
            tracing::info!(partition = self.partition, offset = last, roles = %r, "Models promoted.");
            commit.strings.push((self.keys.roles(), r.clone()));
        }
        commit.vocabulary = self.vocabulary_for(&rules);
        if !self.fingerprints_written {
            commit.strings.extend(fingerprints(&self.keys, &rules));
        }
        let expected = self.watermark;
        let commit_started = Instant::now();
        let outcome = self.commit(&mut commit, expected, last).await?;
        let redis_seconds = commit_started.elapsed().as_secs_f64();
        if outcome != Outcome::Stored {
            return Ok(outcome);
        }
        self.fingerprints_written = true;
        self.watermark = Some(last);
        if roles.is_some() {
            self.roles = roles;
        }
        self.gap_sought = None;
        self.pending = Some(last);
        telemetry::batch_committed(
            self.partition,
            &effects,
            self.outputs().dead_letter,
            started.elapsed().as_secs_f64(),
            redis_seconds,
        );
        self.cache.put(effects.contacts.into_iter().zip(after).map(|((id, _), written)| (id, written)));
        Ok(Outcome::Stored)
    }

    /// Whether a batch starting at `first` lies past a gap after the
    /// watermark: the worker then goes back to the watermark once (and
    /// drops the batch); if the gap is still there, the broker no longer
    /// has those offsets, and the batch is taken.
    fn past_gap(&mut self, first: i64) -> bool {
        let Some(w) = self.watermark else { return false };
        if first == w + 1 {
            return false;
        }
        if self.gap_sought != Some(w + 1) {
            self.gap_sought = Some(w + 1);
            tracing::info!(partition = self.partition, offset = w + 1, "Seeking back to the watermark.");
            self.seek(Some(rdkafka::Offset::Offset(w + 1)));
            return true;
        }
        tracing::warn!(
            partition = self.partition,
            watermark = w,
            first,
            "Offsets skipped: the broker no longer has them."
        );
        false
    }

    /// Rolls up and commits one batch of the contributions topic: each
    /// record applied to its account in offset order ([`crate::account::apply`]),
    /// then the accounts' states, leaderboard and cooling entries, the
    /// account alerts (outbox and recent) and the watermark in one fenced
    /// commit, like a contact batch.
    async fn process_accounts(&mut self, raws: Vec<Raw>) -> Result<Outcome, Ended> {
        use prost::Message as _;
        let (Some(first), Some(last)) = (raws.first().map(|m| m.offset), raws.last().map(|m| m.offset)) else {
            return Ok(Outcome::Dropped);
        };
        if self.past_gap(first) {
            return Ok(Outcome::Dropped);
        }
        let started = Instant::now();
        let rules = self.shared.rules.current();
        let mut records = Vec::with_capacity(raws.len());
        let mut undecodable = 0;
        for r in &raws {
            match crate::proto::AccountContributions::decode(r.payload.as_deref().unwrap_or_default()) {
                Ok(bundle) => records.extend(bundle.contributions.into_iter().filter(|c| !c.account_id.is_empty())),
                Err(e) => {
                    undecodable += 1;
                    let bytes = r.payload.as_ref().map_or(0, Vec::len);
                    tracing::error!(
                        partition = self.partition,
                        offset = r.offset,
                        bytes,
                        error = %e,
                        "A contribution record cannot be read; skipped."
                    );
                }
            }
        }
        let mut ids: Vec<&str> = records.iter().map(|c| c.account_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let states = self.load_accounts(&ids).await?;
        let mut accounts: HashMap<String, crate::account::AccountState> =
            ids.iter().map(|id| id.to_string()).zip(states).collect();
        let mut alerts = Vec::new();
        let (mut applied, mut repeats) = (0, 0);
        for c in &records {
            let st = accounts.get_mut(&c.account_id).expect("loaded");
            match crate::account::apply(&rules, &c.account_id, st, c, &mut alerts) {
                crate::account::Applied::Changed => applied += 1,
                crate::account::Applied::Repeat => repeats += 1,
            }
        }
        let mut commit = self.account_commit(&rules, &accounts, &mut alerts);
        commit.forget_recent = self.recent_naming(records.iter().filter(|c| c.erased).map(|c| &c.contact_id)).await?;
        let expected = self.watermark;
        let commit_started = Instant::now();
        let outcome = self.commit(&mut commit, expected, last).await?;
        if outcome != Outcome::Stored {
            return Ok(outcome);
        }
        self.watermark = Some(last);
        self.gap_sought = None;
        self.pending = Some(last);
        telemetry::accounts_committed(
            self.partition,
            (applied, repeats, undecodable),
            &alerts,
            started.elapsed().as_secs_f64(),
            commit_started.elapsed().as_secs_f64(),
        );
        Ok(Outcome::Stored)
    }

    /// The entries of the partition's recent account alerts that name one
    /// of these (erased) contacts, as a driver or the trigger.
    async fn recent_naming(&self, erased: impl Iterator<Item = &String>) -> Result<Vec<String>, Ended> {
        use prost::Message as _;
        let erased: Vec<&String> = erased.collect();
        if erased.is_empty() {
            return Ok(Vec::new());
        }
        let (store, keys) = (&self.shared.store, &self.keys);
        let entries = retry::always("recent_entries", || store.recent_entries(keys))
            .await
            .map_err(|e| Ended::Failed(e.into()))?;
        Ok(entries
            .into_iter()
            .filter(|(_, payload)| {
                crate::proto::AccountAlert::decode(payload.as_slice()).is_ok_and(|a| {
                    erased.iter().any(|c| a.trigger_contact_id == **c || a.drivers.iter().any(|d| d.contact_id == **c))
                })
            })
            .map(|(id, _)| id)
            .collect())
    }

    /// The stored states of these accounts (empty for one not stored).
    async fn load_accounts(&self, ids: &[&str]) -> Result<Vec<crate::account::AccountState>, Ended> {
        let (store, keys) = (&self.shared.store, &self.keys);
        let key = keys.states();
        let values = retry::always("load_accounts", || store.hash_values(&key, ids))
            .await
            .map_err(|e| Ended::Failed(e.into()))?;
        ids.iter()
            .zip(values)
            .map(|(id, v)| match v {
                None => Ok(crate::account::AccountState::default()),
                Some(v) => crate::account::AccountState::decode(&v).map_err(|e| {
                    Ended::Failed(
                        StoreError::Corrupt { key: format!("{} {id}", keys.states()), message: e.to_string() }.into(),
                    )
                }),
            })
            .collect()
    }

    /// The commit of these accounts' states (each written whole), their
    /// leaderboard and cooling entries, and `alerts` (marked historical
    /// first).
    fn account_commit(
        &self,
        rules: &RuleSet,
        accounts: &HashMap<String, crate::account::AccountState>,
        alerts: &mut [crate::proto::AccountAlert],
    ) -> Commit {
        use prost::Message as _;
        let mut commit = Commit::default();
        let mut ids: Vec<&String> = accounts.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let st = &accounts[id];
            commit.contacts.push(crate::store::ContactWrite {
                contact: id.clone(),
                value: Some(st.encode().into()),
                legacy: false,
            });
            for (model, rollup) in crate::account::models(rules) {
                let entry = |score| crate::store::EntryWrite { model: model.name.clone(), contact: id.clone(), score };
                commit.leaderboard.push(entry(crate::account::leaderboard_value(model, rollup, st)));
                let due = crate::account::cooling_due(model, rollup, st);
                commit.cooling.push(entry(due.map(|d| d as f64)));
            }
        }
        let now = (self.shared.clock)();
        for a in alerts.iter_mut() {
            a.historical = self.is_historical(a.crossed_at.as_ref(), now);
            let payload = a.encode_to_vec();
            commit.recent_alerts.push(payload.clone());
            commit.outbox.push(crate::store::OutboxEntry {
                topic: self.shared.alerts_topic.clone(),
                key: a.account_id.as_bytes().to_vec(),
                payload,
                headers: vec![],
                partition: None,
            });
        }
        commit
    }

    /// Runs `ask` (blocking broker calls) with the stage's metadata client,
    /// made on first use; `None` when there is no client.
    async fn with_metadata<T: Send + 'static>(
        &self,
        ask: impl FnOnce(&rdkafka::consumer::BaseConsumer<crate::kafka::QuietContext>, &Shared) -> Option<T>
            + Send
            + 'static,
    ) -> Result<Option<T>, Ended> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut client = shared.metadata.lock().expect("metadata client lock");
            if client.is_none() {
                *client = shared.kafka.create_with_context(crate::kafka::QuietContext).ok();
            }
            ask(client.as_ref()?, &shared)
        })
        .await
        .map_err(|e| Ended::Failed(PipelineError::Task(e.to_string())))
    }

    /// Whether the partition still holds its whole log (its low watermark
    /// is 0: nothing deleted by retention). `false` when it cannot be told.
    async fn log_intact(&self) -> Result<bool, Ended> {
        use rdkafka::consumer::Consumer as _;
        let partition = self.partition;
        let low = self
            .with_metadata(move |c, shared| {
                c.fetch_watermarks(&shared.topic, partition, Duration::from_secs(10)).ok().map(|w| w.0)
            })
            .await?;
        Ok(low == Some(0))
    }

    /// Whether the contact stage has applied the input topic to its end (its
    /// watermarks in Redis against the topic's end offsets): while it has
    /// not, contributions still to come could change an account's answer,
    /// so the clock does not cool accounts. `false` when it cannot be told.
    async fn contacts_caught_up(&self) -> Result<bool, Ended> {
        use rdkafka::consumer::Consumer as _;
        let ends = self
            .with_metadata(|c, shared| -> Option<Vec<(i32, i64)>> {
                let timeout = Duration::from_secs(5);
                let n = crate::kafka::partition_count_with(c, &shared.input_topic, timeout).ok()?;
                (0..n).map(|p| Some((p, c.fetch_watermarks(&shared.input_topic, p, timeout).ok()?.1))).collect()
            })
            .await?;
        let Some(ends) = ends else { return Ok(false) };
        let (store, topic, n) = (&self.shared.store, &self.shared.input_topic, ends.len() as i32);
        let marks = retry::always("contact_watermarks", || store.watermarks(topic, n))
            .await
            .map_err(|e| Ended::Failed(e.into()))?;
        Ok(ends.iter().zip(marks).all(|((_, end), w)| *end == 0 || w.is_some_and(|w| w + 1 >= *end)))
    }

    /// Sweeps the account partition for accounts that cooled by decay:
    /// their COOLED alerts at the exact instants, committed like a batch
    /// (fenced, watermark unchanged). Only a caught-up partition is swept,
    /// and only once the contact stage has read the input to its end.
    async fn sweep_accounts(&mut self) -> Result<Outcome, Ended> {
        const LIMIT: usize = 1000;
        let Some(watermark) = self.watermark else { return Ok(Outcome::Dropped) };
        if !self.caught_up() || !self.contacts_caught_up().await? {
            return Ok(Outcome::Dropped);
        }
        let rules = self.shared.rules.current();
        let now = (self.shared.clock)();
        let names: Vec<&str> = crate::account::models(&rules).map(|(m, _)| m.name.as_str()).collect();
        let (store, keys) = (&self.shared.store, &self.keys);
        let due = retry::always("sweep_accounts", || store.cooling_due(keys, &names, now, LIMIT))
            .await
            .map_err(|e| Ended::Failed(e.into()))?;
        let mut ids: Vec<&str> = due.iter().flatten().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Outcome::Dropped);
        }
        let states = self.load_accounts(&ids).await?;
        let mut accounts = HashMap::with_capacity(ids.len());
        let mut alerts = Vec::new();
        for (id, mut st) in ids.iter().zip(states) {
            crate::account::cool_until(&rules, id, &mut st, now, &mut alerts);
            accounts.insert(id.to_string(), st);
        }
        let mut commit = self.account_commit(&rules, &accounts, &mut alerts);
        let outcome = self.commit(&mut commit, Some(watermark), watermark).await?;
        if outcome == Outcome::Stored && !alerts.is_empty() {
            telemetry::accounts_committed(self.partition, (0, 0, 0), &alerts, 0.0, 0.0);
        }
        Ok(outcome)
    }

    fn outputs(&self) -> Outputs<'_> {
        // A shadow lane publishes its shadow alerts only: the live service
        // dead-letters the input and publishes the erasure records.
        let live = self.shared.lane.is_empty();
        Outputs {
            alerts: &self.shared.alerts_topic,
            shadow_alerts: &self.shared.shadow_alerts_topic,
            dead_letter: if live { &self.shared.dead_letter_topic } else { "" },
            dead_letter_max_bytes: self.shared.dead_letter_max_bytes,
            erasures: if live { &self.shared.erasures_topic } else { "" },
            contributions: if live { &self.shared.contributions_topic } else { "" },
            contribution_partitions: self.shared.contribution_partitions,
        }
    }

    /// The lane with the roles in force on the partition: the rules' (or,
    /// in a shadow lane, all shadow), then what promotions stored.
    fn lane(&self, rules: &RuleSet) -> engine::Lane {
        let mut lane = engine::Lane::named(&self.shared.lane, rules);
        lane.not_before_ms = self.shared.not_before_ms;
        match &self.roles {
            Some(stored) => lane.with_roles(rules, stored),
            None => lane,
        }
    }

    /// Marks alerts whose crossing lies further back than
    /// `historical_after` as historical.
    fn mark_historical(&self, effects: &mut engine::Effects) {
        let now = (self.shared.clock)();
        for a in &mut effects.alerts {
            a.historical = self.is_historical(a.crossed_at.as_ref(), now);
        }
    }

    /// Whether a crossing at `crossed_at` lies further back than
    /// `historical_after` at `now`.
    fn is_historical(&self, crossed_at: Option<&prost_types::Timestamp>, now: i64) -> bool {
        now - crossed_at.map_or(now, crate::decode::millis) > self.shared.historical_after_ms
    }

    /// Commits under this claim, from watermark `expected` to `last`, with
    /// an id the commit function recognises if a retry finds it applied.
    /// What a refused commit means is handled here: a watermark that moved
    /// is read back and sought to; lost state is claimed again (which stops
    /// or rebuilds as at start); another owner ends the worker.
    async fn commit(&mut self, commit: &mut Commit, expected: Option<i64>, last: i64) -> Result<Outcome, Ended> {
        self.commits += 1;
        commit.id = format!("{}.{}", self.epoch, self.commits);
        commit.epoch = self.epoch;
        commit.expected_watermark = expected;
        commit.new_watermark = last;
        let store = &self.shared.store;
        let keys = &self.keys;
        let committed = retry::retry("commit", || store.commit(keys, commit), |e: &StoreError| !e.is_ownership()).await;
        let error = match committed {
            Ok(_) => {
                if let Some((id, _)) = &commit.vocabulary {
                    self.vocabulary_written = Some(*id);
                }
                self.dirty |= !commit.outbox.is_empty();
                return Ok(Outcome::Stored);
            }
            Err(e) => e,
        };
        self.cache.clear();
        match error {
            StoreError::WatermarkMismatch(e) => {
                let stored =
                    retry::always("watermark", || store.watermark(keys)).await.map_err(|e| Ended::Failed(e.into()))?;
                tracing::warn!(partition = self.partition, ours = ?self.watermark, stored = ?stored, error = %e, "The stored watermark moved; reading again from it.");
                self.gap_sought = None;
                match stored {
                    Some(w) => {
                        self.watermark = Some(w);
                        self.seek(Some(rdkafka::Offset::Offset(w + 1)));
                    }
                    // Redis went back to before this partition's first
                    // commit: its state is lost, as at start.
                    None => self.claim().await?,
                }
                Ok(Outcome::Dropped)
            }
            StoreError::StateGone(e) => {
                tracing::error!(partition = self.partition, error = %e, "The partition's state is gone from Redis while running; claiming it again.");
                self.claim().await?;
                Ok(Outcome::Dropped)
            }
            e if e.is_ownership() => {
                telemetry::fenced(self.partition, &e);
                Ok(Outcome::Fenced)
            }
            e => Err(Ended::Failed(e.into())),
        }
    }

    /// The rules in force, with the partition's leaderboard and cooling
    /// entries re-indexed first if a model's half-life or tiers changed
    /// since they were written.
    async fn adopt_rules(&mut self) -> Result<Arc<RuleSet>, Ended> {
        let rules = self.shared.rules.current();
        if self.rules.as_ref().is_some_and(|r| Arc::ptr_eq(r, &rules)) {
            return Ok(rules);
        }
        let store = &self.shared.store;
        let keys = &self.keys;
        let names: Vec<String> = rules.models.iter().map(|m| keys.index_fingerprint(&m.name)).collect();
        let stored: Vec<Option<String>> =
            retry::always("index_fingerprints", || store.strings(&names)).await.map_err(|e| Ended::Failed(e.into()))?;
        let stale: Vec<&str> = rules
            .models
            .iter()
            .zip(&stored)
            .filter(|(m, f)| f.as_ref().is_some_and(|f| *f != crate::store::index_fingerprint(m)))
            .map(|(m, _)| m.name.as_str())
            .collect();
        self.fingerprints_written =
            stored.iter().zip(&rules.models).all(|(f, m)| f.as_deref() == Some(&*crate::store::index_fingerprint(m)));
        if !stale.is_empty() {
            if let Some(w) = self.watermark {
                tracing::info!(partition = self.partition, models = ?stale, "A half-life or tiers changed: re-indexing the leaderboard and cooling entries.");
                self.reindex(&rules, &stale, w).await?;
            }
        }
        self.rules = Some(rules.clone());
        Ok(rules)
    }

    /// Rewrites the leaderboard and cooling entries of every contact in the
    /// sorted sets of `models` under `rules`, in chunks, each a fenced commit
    /// at the unchanged watermark `w`; the last sets the fingerprints.
    async fn reindex(&mut self, rules: &Arc<RuleSet>, models: &[&str], w: i64) -> Result<(), Ended> {
        const CHUNK: usize = 1000;
        let store = self.shared.store.clone();
        let keys = self.keys.clone();
        let sets: Vec<String> = models.iter().flat_map(|m| [keys.leaderboard(m), keys.cooling(m)]).collect();
        let mut members: Vec<String> =
            retry::always("reindex", || store.members(&sets)).await.map_err(|e| Ended::Failed(e.into()))?;
        members.sort_unstable();
        members.dedup();
        let chunks: Vec<Vec<String>> = members.chunks(CHUNK).map(<[String]>::to_vec).collect();
        let n = chunks.len().max(1);
        for i in 0..n {
            let ids: Vec<&str> = chunks.get(i).map(|c| c.iter().map(String::as_str).collect()).unwrap_or_default();
            let hashes = retry::always("reindex", || store.load_contacts(&keys, rules, &ids))
                .await
                .map_err(|e| Ended::Failed(e.into()))?;
            let mut contacts = Vec::with_capacity(ids.len());
            for (id, v) in ids.iter().zip(hashes).filter(|(_, v)| !v.is_absent()) {
                contacts.push((id.to_string(), read_stored(rules, &keys, id, &v)?.contact));
            }
            let effects = engine::Effects { contacts, ..Default::default() };
            let source = Source { topic: &self.shared.topic, partition: self.partition };
            let (mut commit, _) = commit_for(rules, source, self.outputs(), &effects, HashMap::new());
            commit.vocabulary = self.vocabulary_for(rules);
            if i + 1 == n {
                commit.strings.extend(fingerprints(&keys, rules));
            }
            if self.commit(&mut commit, Some(w), w).await? != Outcome::Stored {
                return Ok(());
            }
        }
        self.fingerprints_written = true;
        Ok(())
    }

    /// Whether the partition has been read to its end (as far as the
    /// consumer knows): only then may time, not events, move it forward.
    fn caught_up(&self) -> bool {
        let Some((low, high)) = self.log_end else { return false };
        self.watermark.map_or(low, |w| w + 1) >= high
    }

    /// Sweeps the partition for contacts that cooled with no event: commits
    /// their COOLED alerts like a batch (fenced, watermark unchanged). Only
    /// a caught-up partition is swept: while events are unread, they, not
    /// the clock, say what cooled.
    async fn sweep(&mut self) -> Result<Outcome, Ended> {
        const LIMIT: usize = 1000;
        let rules = self.adopt_rules().await?;
        let Some(watermark) = self.watermark else { return Ok(Outcome::Dropped) };
        if !self.caught_up() {
            return Ok(Outcome::Dropped);
        }
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
            let hashes = store.load_contacts(keys, &rules, &ids).await?;
            Ok::<_, StoreError>(due.into_iter().zip(hashes).collect::<Vec<_>>())
        })
        .await
        .map_err(|e| Ended::Failed(e.into()))?;
        let prune = crate::store::prune_for(&rules, now);
        if loaded.is_empty() && (prune.is_empty() || self.pruned_at.is_some_and(|t| now - t < PRUNE_EVERY_MS)) {
            return Ok(Outcome::Dropped);
        }
        // The sweep changes these contacts in Redis behind the cache.
        self.cache.forget(loaded.iter().map(|(id, _)| id));
        let mut stored = HashMap::with_capacity(loaded.len());
        for (id, v) in loaded {
            let s = read_stored(&rules, keys, &id, &v)?;
            stored.insert(id, s);
        }
        let (known, written) = split(stored);
        let source = Source { topic: &self.shared.topic, partition: self.partition };
        let mut due: Vec<(String, Contact)> = known.into_iter().collect();
        due.sort_by(|a, b| a.0.cmp(&b.0));
        let mut effects = engine::sweep_in(&rules, source, &self.lane(&rules), due, now);
        self.mark_historical(&mut effects);
        let (mut commit, _) = commit_for(&rules, source, self.outputs(), &effects, written);
        commit.prune = prune;
        commit.vocabulary = self.vocabulary_for(&rules);
        let outcome = self.commit(&mut commit, Some(watermark), watermark).await?;
        if outcome == Outcome::Stored {
            self.pruned_at = Some(now);
            telemetry::swept(self.partition, &effects.alerts);
        }
        Ok(outcome)
    }
}

/// The `SET`s that record which half-life and tiers a partition's sorted
/// sets are indexed for.
fn fingerprints(keys: &PartitionKeys, rules: &RuleSet) -> Vec<(String, String)> {
    rules.models.iter().map(|m| (keys.index_fingerprint(&m.name), crate::store::index_fingerprint(m))).collect()
}

/// A contact as read from Redis; a value that cannot be read ends the
/// worker, naming the contact's key.
fn read_stored(
    rules: &RuleSet,
    keys: &PartitionKeys,
    id: &str,
    value: &crate::store::StoredValue,
) -> Result<Stored, Ended> {
    Stored::from_value(rules, &keys.contact(id), value).map_err(|e| Ended::Failed(e.into()))
}

/// Whether a message is a promotion that announces the switch.
fn announces(m: &Message) -> bool {
    use crate::proto::interaction_event::Interaction;
    matches!(&m.event, Ok(v) if matches!(&v.event.interaction, Some(Interaction::Promotion(p)) if p.announce))
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
