//! The outbox relay: delivers a partition's outbox entries (alerts and dead
//! letters) with the idempotent producer, waits for every acknowledgement,
//! then deletes them from the outbox.

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
    /// A background relay task failed to run to its end.
    #[error("relay task: {0}")]
    Task(String),
    /// Kafka did not acknowledge a message.
    #[error("delivery to {topic} failed: {error}")]
    Delivery {
        /// Destination topic.
        topic: String,
        /// The producer's error.
        error: rdkafka::error::KafkaError,
    },
}

/// How many outbox entries are read and sent at a time.
const RELAY_CHUNK: usize = 1000;

/// Delivers everything in a partition's outbox; returns the number of
/// messages delivered. Entries are deleted only after Kafka acknowledged them,
/// so a crash in between delivers them again, with the same alert ids.
pub async fn relay_partition(
    store: &Store,
    producer: &FutureProducer,
    keys: &PartitionKeys,
    partition: i32,
    alerts_topic: &str,
) -> Result<usize, RelayError> {
    let mut total = 0;
    let started = std::time::Instant::now();
    loop {
        let entries = store.read_outbox(keys, RELAY_CHUNK).await?;
        if entries.is_empty() {
            return Ok(total);
        }
        let sends = entries.iter().map(|(_, e)| {
            let mut headers = OwnedHeaders::new_with_capacity(e.headers.len());
            for (k, v) in &e.headers {
                headers = headers.insert(Header { key: k, value: Some(v) });
            }
            let record = FutureRecord::to(&e.topic).key(&e.key).payload(&e.payload).headers(headers);
            producer.send(record, Duration::from_secs(30))
        });
        for (result, (_, e)) in join_all(sends).await.into_iter().zip(&entries) {
            if let Err((error, _)) = result {
                return Err(RelayError::Delivery { topic: e.topic.clone(), error });
            }
        }
        let acked_ms = crate::decode::now_ms();
        let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
        store.delete_outbox(keys, &ids).await?;
        let alerts: Vec<&crate::store::OutboxEntry> =
            entries.iter().map(|(_, e)| e).filter(|e| e.topic == alerts_topic).collect();
        let latencies: Vec<f64> = alerts
            .iter()
            .filter_map(|e| {
                use prost::Message as _;
                let a = crate::proto::ScoreAlert::decode(e.payload.as_slice()).ok()?;
                let t = a.crossed_at?;
                (!a.trigger_event_id.is_empty())
                    .then(|| (acked_ms - (t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)).max(0) as f64 / 1000.0)
            })
            .collect();
        telemetry::relayed(
            partition,
            alerts.len(),
            entries.len() - alerts.len(),
            started.elapsed().as_secs_f64(),
            &latencies,
        );
        total += entries.len();
    }
}
