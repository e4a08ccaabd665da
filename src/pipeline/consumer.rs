//! The consumer loop: one thread that alone touches the Kafka consumer.
//!
//! Invariants:
//! - It polls, decodes each message straight from the consumer's buffer and
//!   hands it to its partition's worker; it seeks, resumes and stores
//!   offsets when workers ask. Nothing else calls the consumer.
//! - Rebalance callbacks run on this thread and do no I/O: an assignment
//!   pauses the new partitions and starts their workers (which claim them
//!   and ask for the seek); a revocation asks the revoked partitions'
//!   workers to end and waits for them, so their relays have stopped and
//!   their offsets are stored before the partitions go to another
//!   instance.
//! - A partition has at most one worker; messages of a partition with no
//!   worker are dropped (its next worker seeks back to the watermark).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::{ClientContext, Message as _, Offset};

use super::worker::{self, Delivery, Ended, Handle, Request, Shared, Stage, Stop};
use super::{PipelineError, Status};
use crate::decode::now_ms;
use crate::engine::Raw;
use crate::telemetry;

/// The consumer's context: the loop's state, reachable from the rebalance
/// callbacks that run inside `poll`.
pub struct Loop {
    topic: String,
    runtime: tokio::runtime::Handle,
    shared: Arc<Shared>,
    status: Arc<Status>,
    /// Workers of the owned partitions.
    workers: Mutex<HashMap<i32, Handle>>,
    /// Requests from the workers.
    requests: Mutex<std_mpsc::Receiver<Request>>,
    /// Fenced partitions to claim again if still assigned: when, and how
    /// many fences in a row.
    reclaims: Mutex<HashMap<i32, (Instant, u32)>>,
    /// The first fatal error, for the loop to stop on.
    fatal: Mutex<Option<PipelineError>>,
    next_worker: AtomicU64,
    /// How many contacts the state caches hold in all.
    cache_contacts: usize,
    /// How long a revocation waits for its workers.
    drain_timeout: Duration,
    /// Whether the broker is reachable, as far as the client can tell.
    broker_down: AtomicBool,
    /// Each partition's low and high watermarks, from the statistics.
    log_ends: Mutex<HashMap<i32, (i64, i64)>>,
    /// Seeks the consumer refused, to try again: partition, offset, the
    /// worker's seek number, attempts so far.
    pending_seeks: Mutex<Vec<(i32, Offset, u64, u32)>>,
    /// Requests a rebalance callback left for the loop.
    deferred: Mutex<Vec<Request>>,
}

impl Loop {
    /// The loop's state; `requests` is the receiving end of `shared.requests`.
    pub fn new(
        shared: Arc<Shared>,
        requests: std_mpsc::Receiver<Request>,
        status: Arc<Status>,
        cache_contacts: usize,
        drain_timeout: Duration,
    ) -> Self {
        Self {
            topic: shared.topic.clone(),
            runtime: tokio::runtime::Handle::current(),
            shared,
            status,
            workers: Mutex::default(),
            requests: Mutex::new(requests),
            reclaims: Mutex::default(),
            fatal: Mutex::default(),
            next_worker: AtomicU64::new(1),
            cache_contacts,
            drain_timeout,
            broker_down: AtomicBool::new(false),
            log_ends: Mutex::default(),
            pending_seeks: Mutex::default(),
            deferred: Mutex::default(),
        }
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect()
    }

    /// Starts a worker for each of `partitions`, paused until it has
    /// claimed its partition and asked for the seek.
    fn start_workers(&self, consumer: &BaseConsumer<Self>, partitions: &[i32]) {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.topic, *p);
        }
        if let Err(e) = consumer.pause(&tpl) {
            tracing::warn!(error = %e, "Cannot pause newly assigned partitions.");
        }
        let mut workers = self.workers.lock().expect("workers lock");
        let share = (self.cache_contacts / (workers.len() + partitions.len()).max(1)).max(1);
        let share = if self.cache_contacts == 0 { 0 } else { share };
        for p in partitions {
            let id = self.next_worker.fetch_add(1, Ordering::Relaxed);
            if let Some(old) = workers.insert(*p, worker::spawn(&self.runtime, self.shared.clone(), *p, id, share)) {
                let _ = old.stop.send(Stop::Revoke);
            }
        }
        match self.shared.stage {
            Stage::Contacts => telemetry::partitions_assigned(partitions, workers.len()),
            Stage::Accounts => telemetry::account_partitions(partitions, workers.len(), true),
        }
        self.status.owned.store(workers.len(), Ordering::Relaxed);
    }

    /// Asks the workers of `partitions` to end (`how`) and waits for them,
    /// serving their requests meanwhile.
    fn stop_workers(&self, consumer: &BaseConsumer<Self>, partitions: &[i32], how: Stop, in_callback: bool) {
        let handles: Vec<Handle> = {
            let mut workers = self.workers.lock().expect("workers lock");
            partitions.iter().filter_map(|p| workers.remove(p)).collect()
        };
        if handles.is_empty() {
            return;
        }
        for h in &handles {
            let _ = h.stop.send(how);
        }
        let deadline = Instant::now() + self.drain_timeout;
        for h in handles {
            while !h.task.is_finished() && Instant::now() < deadline {
                self.serve_requests(consumer, in_callback);
                std::thread::sleep(Duration::from_millis(1));
            }
            if !h.task.is_finished() {
                tracing::warn!(timeout = ?self.drain_timeout, "A partition worker did not end in time; abandoning it.");
                h.task.abort();
            }
        }
        // Offsets the workers stored on their way out.
        self.serve_requests(consumer, in_callback);
        let owned = self.workers.lock().expect("workers lock").len();
        self.status.owned.store(owned, Ordering::Relaxed);
        match self.shared.stage {
            Stage::Contacts => telemetry::partitions_revoked(partitions, owned),
            Stage::Accounts => telemetry::account_partitions(partitions, owned, false),
        }
    }

    /// Serves the workers' requests. Inside a rebalance callback, a request
    /// that needs the broker (the group's committed offset) waits for the
    /// loop: callbacks do no network I/O.
    fn serve_requests(&self, consumer: &BaseConsumer<Self>, in_callback: bool) {
        let deferred =
            if in_callback { vec![] } else { std::mem::take(&mut *self.deferred.lock().expect("deferred lock")) };
        let mut deferred = deferred.into_iter();
        loop {
            let r = match deferred.next() {
                Some(r) => r,
                None => match self.requests.lock().expect("requests lock").try_recv() {
                    Ok(r) => r,
                    Err(_) => return,
                },
            };
            match r {
                Request::Committed { partition, reply }
                    if in_callback && !self.workers.lock().expect("workers lock").contains_key(&partition) =>
                {
                    // Its worker is being stopped: it need not claim.
                    let _ = reply.send(Err(KafkaError::Canceled));
                }
                r @ Request::Committed { .. } if in_callback => self.deferred.lock().expect("deferred lock").push(r),
                Request::Seek { partition, offset, seek } => self.seek(consumer, partition, offset, seek, 1),
                Request::StoreOffset { partition, offset } => {
                    if let Err(e) = consumer.store_offset(&self.topic, partition, offset) {
                        tracing::debug!(partition, error = %e, "Offset not stored (partition no longer assigned).");
                    }
                }
                Request::Committed { partition, reply } => {
                    let _ = reply.send(committed(consumer, &self.topic, partition));
                }
                Request::Ended { partition, worker, why } => self.ended(partition, worker, why),
            }
        }
    }

    /// Moves a partition's read position for its worker, resumes it and
    /// marks the channel. A seek the consumer refuses (a partition assigned
    /// a moment ago is not fetching yet) is tried again on the loop's next
    /// turns; the worker reads nothing until the marker comes.
    fn seek(&self, consumer: &BaseConsumer<Self>, partition: i32, offset: Option<Offset>, seek: u64, attempt: u32) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        let _ = consumer.resume(&tpl);
        if let Some(o) = offset {
            if let Err(e) = consumer.seek(&self.topic, partition, o, Duration::from_secs(10)) {
                let assigned = consumer.assignment().is_ok_and(|a| a.find_partition(&self.topic, partition).is_some());
                if assigned && attempt < 200 {
                    tracing::debug!(partition, offset = ?o, attempt, error = %e, "Seek refused; trying again.");
                    self.pending_seeks.lock().expect("seeks lock").push((partition, o, seek, attempt + 1));
                } else {
                    tracing::warn!(partition, offset = ?o, error = %e, "Seek failed.");
                }
                return;
            }
        }
        self.deliver(partition, Delivery::Sought(seek));
    }

    /// Tries refused seeks again.
    fn retry_seeks(&self, consumer: &BaseConsumer<Self>) {
        let pending = std::mem::take(&mut *self.pending_seeks.lock().expect("seeks lock"));
        for (partition, offset, seek, attempt) in pending {
            self.seek(consumer, partition, Some(offset), seek, attempt);
        }
    }

    /// A worker ended by itself.
    fn ended(&self, partition: i32, worker: u64, why: Ended) {
        let mut workers = self.workers.lock().expect("workers lock");
        if workers.get(&partition).is_some_and(|h| h.id == worker) {
            workers.remove(&partition);
        }
        self.status.owned.store(workers.len(), Ordering::Relaxed);
        drop(workers);
        match why {
            Ended::Fenced => {
                // Claims can cross during a rebalance: if the group still
                // gives us this partition after a backoff, claim it again.
                let mut r = self.reclaims.lock().expect("reclaims lock");
                let strikes = r.get(&partition).map_or(0, |(_, s)| *s);
                let delay = Duration::from_millis(250 << strikes.min(5));
                r.insert(partition, (Instant::now() + delay, strikes + 1));
            }
            Ended::StateLost(committed) => {
                tracing::error!(
                    partition,
                    committed,
                    "State of the partition is gone from Redis while Kafka has offsets committed for it; refusing to score it from zero. Restore Redis, or run with --rebuild to score the topic again from its start."
                );
                self.fail(PipelineError::StateLost { partition, committed });
            }
            Ended::Failed(e) => self.fail(e),
            Ended::Revoked => {}
        }
    }

    fn fail(&self, e: PipelineError) {
        let mut fatal = self.fatal.lock().expect("fatal lock");
        if fatal.is_none() {
            *fatal = Some(e);
        }
    }

    /// Claims fenced partitions again that are still assigned to us.
    fn reclaim_due(&self, consumer: &BaseConsumer<Self>) {
        let now = Instant::now();
        let due: Vec<i32> = {
            let r = self.reclaims.lock().expect("reclaims lock");
            r.iter().filter(|(_, (t, _))| *t <= now).map(|(p, _)| *p).collect()
        };
        for p in due {
            let assigned = consumer.assignment().is_ok_and(|a| a.find_partition(&self.topic, p).is_some());
            let running = self.workers.lock().expect("workers lock").contains_key(&p);
            let mut r = self.reclaims.lock().expect("reclaims lock");
            if !assigned {
                r.remove(&p);
            } else if !running {
                // Keep the strikes until a batch commits under the new claim.
                if let Some(e) = r.get_mut(&p) {
                    e.0 = now + Duration::from_secs(3600);
                }
                drop(r);
                tracing::info!(partition = p, "Still assigned after being fenced: claiming the partition again.");
                self.start_workers(consumer, &[p]);
            }
        }
    }

    /// Tells every worker how far its partition's log reaches, so an idle
    /// one knows whether it has caught up.
    fn send_positions(&self) {
        let workers: Vec<(i32, tokio::sync::mpsc::Sender<Delivery>)> =
            self.workers.lock().expect("workers lock").iter().map(|(p, h)| (*p, h.deliveries.clone())).collect();
        for (p, tx) in workers {
            if let Some(end) = self.log_end(p) {
                // A busy worker learns it with its next messages.
                let _ = tx.try_send(Delivery::Messages(vec![], Some(end)));
            }
        }
    }

    /// A partition's low and high watermarks, from the client's latest
    /// statistics.
    fn log_end(&self, partition: i32) -> Option<(i64, i64)> {
        self.log_ends.lock().expect("log ends lock").get(&partition).copied()
    }

    /// Hands a delivery to its partition's worker; dropped if it has none.
    fn deliver(&self, partition: i32, d: Delivery) {
        let sender = self.workers.lock().expect("workers lock").get(&partition).map(|h| h.deliveries.clone());
        if let Some(tx) = sender {
            // A full channel holds the loop back: backpressure.
            let _ = tx.blocking_send(d);
        }
    }
}

/// The group's committed offset of a partition, if it has one.
fn committed(consumer: &BaseConsumer<Loop>, topic: &str, partition: i32) -> Result<Option<i64>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let c = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(c.find_partition(topic, partition).and_then(|e| match e.offset() {
        Offset::Offset(o) if o > 0 => Some(o),
        _ => None,
    }))
}

impl ClientContext for Loop {
    fn stats(&self, statistics: rdkafka::Statistics) {
        // The broker is back once the client has a connection up again.
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        if up {
            telemetry::kafka_reachable();
            if self.broker_down.swap(false, Ordering::Relaxed) {
                self.status.set_consuming(true);
            }
        }
        let Some(topic) = statistics.topics.get(&self.topic) else { return };
        let mut ends = self.log_ends.lock().expect("log ends lock");
        for (p, s) in &topic.partitions {
            if *p >= 0 && s.lo_offset >= 0 && s.hi_offset >= 0 {
                ends.insert(*p, (s.lo_offset, s.hi_offset));
            }
        }
        drop(ends);
        let workers = self.workers.lock().expect("workers lock");
        for (p, s) in &topic.partitions {
            if *p >= 0 && workers.contains_key(p) && s.consumer_lag >= 0 {
                match self.shared.stage {
                    Stage::Contacts => telemetry::consumer_lag(*p, s.consumer_lag),
                    Stage::Accounts => telemetry::account_lag(*p, s.consumer_lag),
                }
            }
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        telemetry::librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.broker_down.store(true, Ordering::Relaxed);
            self.status.set_consuming(false);
        }
        telemetry::kafka_error(&error, reason);
    }
}

impl ConsumerContext for Loop {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.status.set_consuming(false);
            self.stop_workers(consumer, &self.partitions(tpl), Stop::Revoke, true);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.start_workers(consumer, &self.partitions(tpl)),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::error!(error = %e, "Rebalance failed."),
        }
        self.status.set_consuming(true);
    }
}

/// When an instance that owns no partition rejoins its group. A broker
/// may hand a new member an empty assignment and keep it so (Tansu 0.6
/// does when the member that led the group left just before: the new
/// member waits for a leader that never syncs). An instance owning nothing
/// therefore rejoins now and then: after 15 s, then after twice as long
/// each time, up to 10 minutes (counted while the broker is reachable: an
/// outage is waited out as before). In a group with more instances than
/// partitions the idle ones rejoin that rarely, and the cooperative
/// assignor leaves the others' partitions where they are.
struct Idle {
    since: Option<Instant>,
    wait: Duration,
}

impl Idle {
    const FIRST: Duration = Duration::from_secs(15);
    const MOST: Duration = Duration::from_secs(600);

    fn new() -> Self {
        Self { since: None, wait: Self::FIRST }
    }

    /// Whether to rejoin now, given whether the instance owns nothing.
    fn rejoin_due(&mut self, owns_nothing: bool) -> bool {
        if !owns_nothing {
            *self = Self::new();
            return false;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.wait {
            return false;
        }
        self.since = Some(Instant::now());
        self.wait = (self.wait * 2).min(Self::MOST);
        true
    }

    /// How long the instance had owned nothing when it rejoined.
    fn waited(&self) -> Duration {
        self.wait / 2
    }
}

/// Runs the consumer loop on the calling thread until `stop` is set or a
/// worker fails; then ends every worker (relaying what they committed) and
/// leaves the group.
pub fn run(consumer: &BaseConsumer<Loop>, stop: &AtomicBool) -> Result<(), PipelineError> {
    const MAX_POLL: usize = 2000;
    const POSITIONS_EVERY: Duration = Duration::from_millis(500);
    let ctx = consumer.context();
    ctx.status.set_consuming(true);
    let mut groups: HashMap<i32, Vec<Raw>> = HashMap::new();
    let mut last_positions = Instant::now();
    let mut idle = Idle::new();
    while !stop.load(Ordering::Acquire) {
        // While the broker is unreachable there is no group to rejoin.
        let owns_nothing =
            ctx.workers.lock().expect("workers lock").is_empty() && !ctx.broker_down.load(Ordering::Relaxed);
        if idle.rejoin_due(owns_nothing) {
            telemetry::rejoining_group(idle.waited());
            consumer.unsubscribe();
            if let Err(e) = consumer.subscribe(&[&ctx.topic]) {
                telemetry::kafka_error(&e, "subscribe");
            }
        }
        let fatal = ctx.fatal.lock().expect("fatal lock").take();
        if let Some(e) = fatal {
            tracing::debug!(error = %e, "Stopping the consumer loop on a fatal error.");
            ctx.status.set_consuming(false);
            let all: Vec<i32> = ctx.workers.lock().expect("workers lock").keys().copied().collect();
            ctx.stop_workers(consumer, &all, Stop::Revoke, false);
            consumer.unsubscribe();
            return Err(e);
        }
        ctx.serve_requests(consumer, false);
        ctx.retry_seeks(consumer);
        ctx.reclaim_due(consumer);
        let mut timeout = Duration::from_millis(10);
        for _ in 0..MAX_POLL {
            match consumer.poll(timeout) {
                None => break,
                Some(Ok(m)) => {
                    if ctx.broker_down.swap(false, Ordering::Relaxed) {
                        ctx.status.set_consuming(true);
                    }
                    let msg = Raw::new(m.offset(), m.key(), m.payload(), now_ms());
                    groups.entry(m.partition()).or_default().push(msg);
                }
                Some(Err(e)) => telemetry::kafka_error(&e, "poll"),
            }
            timeout = Duration::ZERO;
        }
        for (p, messages) in groups.drain() {
            let log_end = ctx.log_end(p);
            ctx.deliver(p, Delivery::Messages(messages, log_end));
        }
        if last_positions.elapsed() >= POSITIONS_EVERY {
            last_positions = Instant::now();
            ctx.send_positions();
        }
    }
    ctx.status.set_consuming(false);
    tracing::info!("Shutting down: relaying, storing offsets and leaving the group.");
    let all: Vec<i32> = ctx.workers.lock().expect("workers lock").keys().copied().collect();
    ctx.stop_workers(consumer, &all, Stop::Shutdown, false);
    if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        tracing::debug!(error = %e, "Nothing committed on the way out.");
    }
    consumer.unsubscribe();
    Ok(())
}

#[cfg(test)]
mod idle_tests {
    use super::*;

    #[test]
    fn an_idle_instance_rejoins_after_a_wait_that_doubles_and_owning_resets_it() {
        let mut idle = Idle::new();
        assert!(!idle.rejoin_due(true), "not at once");
        idle.since = Some(Instant::now() - Idle::FIRST);
        assert!(idle.rejoin_due(true), "after the first wait");
        assert_eq!(idle.waited(), Idle::FIRST);
        idle.since = Some(Instant::now() - Idle::FIRST);
        assert!(!idle.rejoin_due(true), "the next wait is twice as long");
        assert!(!idle.rejoin_due(false));
        assert_eq!((idle.since, idle.wait), (None, Idle::FIRST), "owning a partition starts it over");
        for _ in 0..20 {
            idle.since = Some(Instant::now() - Idle::MOST);
            idle.rejoin_due(true);
        }
        assert_eq!(idle.wait, Idle::MOST);
    }
}
