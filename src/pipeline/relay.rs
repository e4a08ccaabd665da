//! The outbox relay: delivers a partition's outbox entries (alerts and dead
//! letters) with the idempotent producer, waits for every acknowledgement,
//! then deletes them from the outbox.
//!
//! Invariants:
//! - An entry is deleted only after Kafka acknowledged it, so a crash in
//!   between delivers it again, with the same alert id; or after the broker
//!   refused it for good (its size or form), which is logged and counted
//!   and never holds back the partition's later alerts. Entries acknowledged
//!   are deleted before the outbox is read again, even when the reply to a
//!   delete was lost and the run is retried, so a lost reply sends nothing
//!   twice.
//! - A relay runs only for a partition its worker owns: it reads the owner
//!   epoch with every chunk and stops when another owner has claimed the
//!   partition, and it stops between chunks when its worker asks, so after
//!   it returns nothing of it is left in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::store::{PartitionKeys, Store, StoreError};
use crate::telemetry;

/// Why the relay could not deliver.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or trimming the outbox failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Kafka did not acknowledge a message.
    #[error("delivery to {topic} failed: {error}")]
    Delivery {
        /// Destination topic.
        topic: String,
        /// The producer's error.
        error: rdkafka::error::KafkaError,
    },
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed {
    /// The outbox is empty: this many messages were delivered.
    All(usize),
    /// Stopped between chunks (asked to, or the partition has a new owner)
    /// after delivering this many; the rest stays in the outbox.
    Stopped(usize),
}

/// Whether the broker refuses a message for good (its size or form), as
/// opposed to failing for now.
fn refused_for_good(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidRecord | C::InvalidMessage)
    )
}

/// How many outbox entries are read and sent at a time.
const RELAY_CHUNK: usize = 1000;

/// One partition's relay: what it delivers and for which owner.
pub struct Relay<'a> {
    /// Redis.
    pub store: &'a Store,
    /// The idempotent producer.
    pub producer: &'a FutureProducer<crate::kafka::QuietContext>,
    /// The partition's keys.
    pub keys: &'a PartitionKeys,
    /// The partition.
    pub partition: i32,
    /// The owner epoch this instance holds.
    pub epoch: i64,
    /// The alert topic (to tell alerts from dead letters in metrics).
    pub alerts_topic: &'a str,
    /// Entries Kafka acknowledged whose deletion has not been confirmed: a
    /// retried run deletes them before reading the outbox again, so a lost
    /// reply to a delete does not send them twice.
    pub acked: std::sync::Mutex<Vec<String>>,
}

impl Relay<'_> {
    /// Delivers the outbox until it is empty, `stop` is set, or another
    /// owner holds the partition.
    pub async fn run(&self, stop: &AtomicBool) -> Result<Relayed, RelayError> {
        let mut total = 0;
        let started = std::time::Instant::now();
        loop {
            let acked = self.acked.lock().expect("acked lock").clone();
            if !acked.is_empty() {
                self.store.delete_outbox(self.keys, &acked).await?;
                self.acked.lock().expect("acked lock").clear();
            }
            if stop.load(Ordering::Acquire) {
                return Ok(Relayed::Stopped(total));
            }
            let (epoch, entries) = self.store.read_outbox(self.keys, RELAY_CHUNK).await?;
            if epoch != Some(self.epoch) {
                return Ok(Relayed::Stopped(total));
            }
            if entries.is_empty() {
                return Ok(Relayed::All(total));
            }
            let sends = entries.iter().map(|(_, e)| {
                let mut headers = OwnedHeaders::new_with_capacity(e.headers.len());
                for (k, v) in &e.headers {
                    headers = headers.insert(Header { key: k, value: Some(v) });
                }
                let mut record = FutureRecord::to(&e.topic).key(&e.key).payload(&e.payload).headers(headers);
                if let Some(p) = e.partition {
                    record = record.partition(p);
                }
                self.producer.send(record, Duration::from_secs(30))
            });
            for (result, (_, e)) in join_all(sends).await.into_iter().zip(&entries) {
                match result {
                    Ok(_) => {}
                    // The broker will never take this message: retrying would
                    // hold back every later alert of the partition.
                    Err((error, _)) if refused_for_good(&error) => {
                        telemetry::relay_refused(self.partition, &e.topic, e.payload.len(), &error);
                    }
                    Err((error, _)) => return Err(RelayError::Delivery { topic: e.topic.clone(), error }),
                }
            }
            let acked_ms = crate::decode::now_ms();
            let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
            *self.acked.lock().expect("acked lock") = ids.clone();
            self.store.delete_outbox(self.keys, &ids).await?;
            self.acked.lock().expect("acked lock").clear();
            let alerts: Vec<&crate::store::OutboxEntry> =
                entries.iter().map(|(_, e)| e).filter(|e| e.topic == self.alerts_topic).collect();
            let latencies: Vec<f64> = alerts
                .iter()
                .filter_map(|e| {
                    use prost::Message as _;
                    let a = crate::proto::ScoreAlert::decode(e.payload.as_slice()).ok()?;
                    let t = a.crossed_at?;
                    (!a.trigger_event_id.is_empty())
                        .then(|| (acked_ms - crate::decode::millis(&t)).max(0) as f64 / 1000.0)
                })
                .collect();
            telemetry::relayed(
                self.partition,
                alerts.len(),
                entries.len() - alerts.len(),
                started.elapsed().as_secs_f64(),
                &latencies,
            );
            total += entries.len();
        }
    }
}
