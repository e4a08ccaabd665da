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

use crate::store::{claim_partition, PartitionKeys};
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
}

/// librdkafka client and consumer callbacks for the pipeline.
pub struct PipelineContext {
    topic: String,
    redis: redis::Client,
    owned: Arc<Mutex<Owned>>,
}

impl PipelineContext {
    /// A context for consuming `topic`, claiming partitions in `redis`.
    pub fn new(topic: String, redis: redis::Client, owned: Arc<Mutex<Owned>>) -> Self {
        Self { topic, redis, owned }
    }

    fn claim(&self, tpl: &mut TopicPartitionList) {
        let partitions: Vec<i32> = tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
        let mut claims = Vec::with_capacity(partitions.len());
        for p in partitions {
            let keys = PartitionKeys::new(&self.topic, p);
            let (epoch, watermark) = self.with_retry("claim_partition", |conn| claim_partition(conn, &keys));
            if let Some(w) = watermark {
                if let Err(e) = tpl.set_partition_offset(&self.topic, p, Offset::Offset(w + 1)) {
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
        telemetry::partitions_assigned(&claims, owned.partitions.len());
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
    fn with_retry<T>(
        &self,
        operation: &'static str,
        mut f: impl FnMut(&mut redis::Connection) -> Result<T, crate::store::StoreError>,
    ) -> T {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=10 {
            let result = self
                .redis
                .get_connection_with_timeout(Duration::from_secs(5))
                .map_err(crate::store::StoreError::from)
                .and_then(|mut c| f(&mut c));
            match result {
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

impl ClientContext for PipelineContext {}

impl ConsumerContext for PipelineContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let result: KafkaResult<()> = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.claim(tpl);
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
