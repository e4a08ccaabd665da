//! The consumer context: claims partitions in Redis on assignment and
//! releases them on revocation.
//!
//! On assignment each partition's owner epoch is incremented and its offset
//! watermark read, and the partition is assigned at `watermark + 1`: Redis,
//! not the Kafka commit, is the source of truth for position.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset};

use crate::store::{Claimer, PartitionKeys};
use crate::telemetry;

/// What this instance holds for one owned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    /// Owner epoch claimed in Redis.
    pub epoch: i64,
    /// Offset of the last event applied (`None`: nothing yet).
    pub watermark: Option<i64>,
}

/// Partition ownership shared between the rebalance callback and the loop.
#[derive(Debug, Default)]
pub struct Owned {
    /// Owned partitions of the input topic.
    pub partitions: HashMap<i32, Ownership>,
    /// Claimed partitions whose outbox may hold undelivered messages.
    pub relay_pending: BTreeSet<i32>,
    /// Partitions whose state is gone from Redis while Kafka has committed
    /// offsets for them: (partition, committed offset). The pipeline stops
    /// rather than score them from zero.
    pub lost: Vec<(i32, i64)>,
}

/// librdkafka client and consumer callbacks for the pipeline.
pub struct PipelineContext {
    topic: String,
    redis: Claimer,
    owned: Arc<Mutex<Owned>>,
    rebuild_lost_state: bool,
}

impl PipelineContext {
    /// A context for consuming `topic`, claiming partitions in `redis`. With
    /// `rebuild_lost_state`, a partition whose state is gone from Redis is
    /// scored again from the start of the topic instead of stopping.
    pub fn new(topic: String, redis: Claimer, owned: Arc<Mutex<Owned>>, rebuild_lost_state: bool) -> Self {
        Self { topic, redis, owned, rebuild_lost_state }
    }

    fn claim(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let partitions: Vec<i32> = tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
        let mut claims = Vec::with_capacity(partitions.len());
        let mut lost = Vec::new();
        for p in partitions {
            let keys = PartitionKeys::new(&self.topic, p);
            let (epoch, watermark) = self.with_retry("claim_partition", || self.redis.claim(&keys));
            let start = match watermark {
                Some(w) => Offset::Offset(w + 1),
                None => match self.committed(consumer, p) {
                    // Kafka says this group scored the partition, Redis has no trace.
                    Some(committed) if self.rebuild_lost_state => {
                        tracing::warn!(
                            partition = p,
                            committed,
                            "State of the partition is gone from Redis; rebuilding it from the start of the topic."
                        );
                        Offset::Beginning
                    }
                    Some(committed) => {
                        lost.push((p, committed));
                        continue;
                    }
                    None => Offset::Invalid,
                },
            };
            if start != Offset::Invalid {
                if let Err(e) = tpl.set_partition_offset(&self.topic, p, start) {
                    tracing::error!(partition = p, error = %e, "Cannot set the start offset of a claimed partition.");
                }
            }
            claims.push((p, epoch, watermark));
        }
        let mut owned = self.owned.lock().expect("ownership lock");
        for (p, epoch, watermark) in &claims {
            owned.partitions.insert(*p, Ownership { epoch: *epoch, watermark: *watermark });
            owned.relay_pending.insert(*p);
        }
        for (p, committed) in lost {
            tracing::error!(
                partition = p,
                committed,
                "State of the partition is gone from Redis while Kafka has offsets committed for it; refusing to score it from zero. Restore Redis, or run with --rebuild to score the topic again from its start."
            );
            owned.lost.push((p, committed));
        }
        telemetry::partitions_assigned(&claims, owned.partitions.len());
    }

    /// The group's committed offset of a partition, if it has one.
    fn committed(&self, consumer: &BaseConsumer<Self>, partition: i32) -> Option<i64> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        for attempt in 1..=5 {
            match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
                Ok(c) => {
                    return c.find_partition(&self.topic, partition).and_then(|e| match e.offset() {
                        Offset::Offset(o) if o > 0 => Some(o),
                        _ => None,
                    })
                }
                Err(e) => telemetry::retrying("committed_offsets", attempt, &e),
            }
            std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
        }
        telemetry::fatal("committed_offsets", &"cannot read the group's committed offsets");
        std::process::exit(3);
    }

    fn release(&self, tpl: &TopicPartitionList) {
        let partitions: Vec<i32> = tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
        let mut owned = self.owned.lock().expect("ownership lock");
        for p in &partitions {
            owned.partitions.remove(p);
            owned.relay_pending.remove(p);
        }
        telemetry::partitions_revoked(&partitions, owned.partitions.len());
    }

    /// Runs a blocking Redis operation, retrying with backoff; exits the
    /// process when Redis stays unreachable, since a partition cannot be
    /// scored without its claim.
    fn with_retry<T>(&self, operation: &'static str, mut f: impl FnMut() -> Result<T, crate::store::StoreError>) -> T {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=10 {
            match f() {
                Ok(v) => return v,
                Err(e) => {
                    telemetry::retrying(operation, attempt, &e);
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        telemetry::fatal(operation, &"Redis unreachable while claiming partitions");
        std::process::exit(3);
    }
}

impl ClientContext for PipelineContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else { return };
        let owned = self.owned.lock().expect("ownership lock");
        for (p, s) in &topic.partitions {
            if *p >= 0 && owned.partitions.contains_key(p) && s.consumer_lag >= 0 {
                telemetry::consumer_lag(*p, s.consumer_lag);
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        telemetry::kafka_error(&error, reason);
    }
}

impl ConsumerContext for PipelineContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let result: KafkaResult<()> = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.claim(consumer, tpl);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.release(tpl);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "Rebalance failed; releasing every partition.");
                let all = consumer.assignment().unwrap_or_default();
                self.release(&all);
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "Applying a rebalance failed.");
        }
    }
}
