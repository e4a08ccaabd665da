//! Kafka helpers beside the pipeline: creating hotlead's topics, and reading
//! alerts back in a readable form.

use std::time::Duration;

use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message};

use crate::proto::{score_alert, ScoreAlert};

/// A client context whose logs stay short through a broker outage: errors
/// and librdkafka's log lines go through [`crate::telemetry`], which logs
/// an outage once, reminds of it at most once a minute, and counts every
/// error.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietContext;

impl rdkafka::ClientContext for QuietContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::telemetry::librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::telemetry::kafka_error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// A client configuration for `brokers` plus extra librdkafka properties.
pub fn client_config(brokers: &str, extra: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

/// A fresh, unique event id for a request hotlead sends itself:
/// `<prefix>-<ms since 1970>-<16 random hex digits>`.
pub fn request_id(prefix: &str, now_ms: i64) -> String {
    format!("{prefix}-{now_ms}-{:016x}", rand::random::<u64>())
}

/// The event that asks the owner of a contact's partition to erase it.
pub fn erasure_request(contact: &str, by: &str, reason: &str, now_ms: i64) -> crate::proto::InteractionEvent {
    crate::proto::InteractionEvent {
        event_id: request_id("erase", now_ms),
        contact_id: contact.to_string(),
        occurred_at: Some(crate::decode::timestamp(now_ms)),
        interaction: Some(crate::proto::interaction_event::Interaction::Erasure(crate::proto::Erasure {
            requested_by: by.to_string(),
            reason: reason.to_string(),
        })),
        ..Default::default()
    }
}

/// Creates topics (name, partitions) with replication factor `replication`;
/// topics that exist already are left as they are.
pub async fn create_topics(config: &ClientConfig, topics: &[(&str, i32)], replication: i32) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(replication))
                .set("retention.ms", "604800000")
                .set("retention.bytes", "-1")
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(name) => tracing::info!(topic = name, "Created topic."),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => tracing::info!(topic = name, "Topic exists."),
            Err((name, code)) => {
                tracing::error!(topic = name, error = %code, "Cannot create topic.");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

/// The number of partitions of `topic`.
pub fn partition_count(config: &ClientConfig, topic: &str) -> Result<i32, KafkaError> {
    let client: rdkafka::consumer::BaseConsumer<QuietContext> = config.create_with_context(QuietContext)?;
    partition_count_with(&client, topic, Duration::from_secs(10))
}

/// The number of partitions of `topic`, asked through an existing client.
pub fn partition_count_with(
    client: &rdkafka::consumer::BaseConsumer<QuietContext>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, KafkaError> {
    let md = client.fetch_metadata(Some(topic), timeout)?;
    let t = md.topics().first().ok_or(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopic))?;
    if let Some(e) = t.error() {
        return Err(KafkaError::MetadataFetch(e.into()));
    }
    Ok(t.partitions().len() as i32)
}

/// A producer of events to the input topic (the write API, `hotlead
/// adjust`): idempotent, acknowledged by every replica, and giving up on a
/// message after 10 s, so a caller waiting on it hears soon; the `config`
/// properties (`[kafka]`: brokers, security) apply over these.
pub fn event_producer(config: &ClientConfig) -> Result<FutureProducer<QuietContext>, KafkaError> {
    let mut c = ClientConfig::new();
    c.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "1").set("message.timeout.ms", "10000");
    for (k, v) in config.config_map().iter() {
        c.set(*k, *v);
    }
    c.create_with_context(QuietContext)
}

/// Produces one event to `topic`, keyed by its contact id (so the owner of
/// the contact's partition applies it like any event), and waits for the
/// broker's acknowledgement: the partition and offset it landed at.
pub async fn send_event<C: rdkafka::ClientContext + 'static>(
    producer: &FutureProducer<C>,
    topic: &str,
    event: &crate::proto::InteractionEvent,
) -> Result<(i32, i64), KafkaError> {
    let payload = event.encode_to_vec();
    let record = FutureRecord::to(topic).key(&event.contact_id).payload(&payload);
    producer.send(record, Duration::from_secs(10)).await.map(|d| (d.partition, d.offset)).map_err(|(e, _)| e)
}

/// One line describing an alert, for people watching a terminal.
/// One account alert as a line: when, direction, account, model, tiers,
/// score against the threshold, breadth, and the contacts that drove it.
pub fn format_account_alert(a: &crate::proto::AccountAlert) -> String {
    let (when, arrow) = (clock_of_day(a.crossed_at.as_ref()), arrow(a.direction));
    let cmp = if a.score >= a.threshold { "≥" } else { "<" };
    let drivers: Vec<String> = a.drivers.iter().map(|d| format!("{} {:.0}%", d.contact_id, d.share * 100.0)).collect();
    let by = if a.trigger_contact_id.is_empty() { "decay".to_string() } else { a.trigger_contact_id.clone() };
    format!(
        "{when}  {arrow}  account {account}  {model} v{version}: {prev} → {tier}  score {score:.1} {cmp} {threshold}  breadth {breadth}  by {by}  drivers: {drivers}",
        account = a.account_id,
        model = a.model,
        version = a.model_version,
        prev = a.previous_tier,
        tier = a.tier,
        score = a.score,
        threshold = a.threshold,
        breadth = a.breadth,
        drivers = drivers.join(", "),
    )
}

/// `HH:MM:SSZ` of a crossing's time (empty without one).
fn clock_of_day(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else { return String::new() };
    let secs = t.seconds.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// A crossing's direction as an alert line shows it.
fn arrow(direction: i32) -> &'static str {
    match score_alert::Direction::try_from(direction) {
        Ok(score_alert::Direction::Heated) => "HEATED ▲",
        Ok(score_alert::Direction::Cooled) => "COOLED ▼",
        _ => "UNKNOWN ?",
    }
}

pub fn format_alert(a: &ScoreAlert) -> String {
    let (when, arrow) = (clock_of_day(a.crossed_at.as_ref()), arrow(a.direction));
    let account = if a.account_id.is_empty() { String::new() } else { format!(" ({})", a.account_id) };
    let cmp = if a.score >= a.threshold { "≥" } else { "<" };
    let why: Vec<String> = a.top_contributions.iter().map(|c| format!("{} {:.1}", c.rule_id, c.points)).collect();
    let shadow = if a.shadow { " (shadow)" } else { "" };
    format!(
        "{when}  {arrow}  {contact}{account}  {model} v{version}{shadow}: {prev} → {tier}  score {score:.1} {cmp} {threshold}  why: {why}",
        contact = a.contact_id,
        model = a.model,
        version = a.model_version,
        prev = a.previous_tier,
        tier = a.tier,
        score = a.score,
        threshold = a.threshold,
        why = why.join(", "),
    )
}

/// Prints every alert on `topic` as it arrives, until the stream ends or
/// `shutdown` completes. Reads from the latest offset unless `from_beginning`.
pub async fn print_alerts(
    config: &ClientConfig,
    topic: &str,
    from_beginning: bool,
    accounts: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), KafkaError> {
    let mut c = config.clone();
    c.set("group.id", format!("hotlead-alerts-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", if from_beginning { "earliest" } else { "latest" });
    let consumer: StreamConsumer = c.create()?;
    consumer.subscribe(&[topic])?;
    tokio::pin!(shutdown);
    loop {
        let m = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            m = consumer.recv() => m?,
        };
        let payload = m.payload().unwrap_or_default();
        if accounts {
            match crate::proto::AccountAlert::decode(payload) {
                Ok(a) => println!("{}", format_account_alert(&a)),
                Err(e) => eprintln!("offset {}: not an AccountAlert: {e}", m.offset()),
            }
            continue;
        }
        match ScoreAlert::decode(payload) {
            Ok(a) => println!("{}", format_alert(&a)),
            Err(e) => eprintln!("offset {}: not a ScoreAlert: {e}", m.offset()),
        }
    }
}

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct Tail {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Payload (empty when the message has none).
    pub payload: Vec<u8>,
}

/// Reads up to the last `per_partition` messages of every partition of
/// `topic`, with a consumer of its own ([`assigned_consumer`]). Messages
/// come in partition, then offset order.
pub fn read_tail(
    config: &ClientConfig,
    topic: &str,
    per_partition: i64,
    timeout: Duration,
) -> Result<Vec<Tail>, KafkaError> {
    let consumer = assigned_consumer(config, "workbench")?;
    let partitions = partition_count_with(&consumer, topic, timeout)?;
    let mut ranges = std::collections::HashMap::new();
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        ranges.insert(p, ((high - per_partition.max(0)).max(low), high));
    }
    let mut out = Vec::new();
    read_ranges(&consumer, topic, ranges, timeout, |m| {
        out.push(Tail {
            partition: m.partition(),
            offset: m.offset(),
            payload: m.payload().unwrap_or_default().to_vec(),
        });
    })?;
    out.sort_by_key(|t| (t.partition, t.offset));
    Ok(out)
}

/// Reads `partition` of `topic` from its first retained message through
/// offset `last`, with a consumer of its own ([`assigned_consumer`]), and
/// keeps the messages whose key `keep` accepts, in offset order; each
/// message's broker timestamp stands for its arrival. Gives up after
/// `timeout` (reading the offsets, then the messages).
pub fn read_partition(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    last: i64,
    timeout: Duration,
    keep: impl Fn(Option<&[u8]>) -> bool,
) -> Result<Vec<crate::engine::Raw>, KafkaError> {
    let consumer = assigned_consumer(config, "history")?;
    let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
    let ranges = std::collections::HashMap::from([(partition, (low, (last + 1).min(high)))]);
    let mut out = Vec::new();
    read_ranges(&consumer, topic, ranges, timeout, |m| {
        if keep(m.key()) {
            let arrived = m.timestamp().to_millis().unwrap_or_else(crate::decode::now_ms);
            out.push(crate::engine::Raw::new(m.offset(), m.key(), m.payload(), arrived));
        }
    })?;
    Ok(out)
}

/// A contact's messages in `partition` of the input topic `topic`, read
/// from its first retained message through offset `last` (the partition's
/// watermark: what the stored state holds), decoded as the pipeline decoded
/// them ([`crate::history::of_contact`]), in offset order.
pub fn contact_messages(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    last: i64,
    contact: &str,
    limits: &crate::decode::Limits,
    timeout: Duration,
) -> Result<Vec<crate::engine::Message>, KafkaError> {
    let raw = read_partition(config, topic, partition, last, timeout, |k| crate::history::keyed_to(k, contact))?;
    Ok(crate::history::of_contact(&raw, contact, limits))
}

/// A consumer for partitions assigned by hand: no group is joined and no
/// offset is committed (its group id, `hotlead-<purpose>-...`, is its own
/// and never used), so the service's consumer group never notices.
fn assigned_consumer(
    config: &ClientConfig,
    purpose: &str,
) -> Result<rdkafka::consumer::BaseConsumer<QuietContext>, KafkaError> {
    let mut c = config.clone();
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    c.set("group.id", format!("hotlead-{purpose}-{}-{nonce}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    c.create_with_context(QuietContext)
}

/// Reads the offsets `[start, end)` of each partition in `ranges` and hands
/// each message to `each`; an error if they are not all read within
/// `timeout`.
fn read_ranges(
    consumer: &rdkafka::consumer::BaseConsumer<QuietContext>,
    topic: &str,
    ranges: std::collections::HashMap<i32, (i64, i64)>,
    timeout: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), KafkaError> {
    use rdkafka::{Offset, TopicPartitionList};
    let mut list = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for (p, (start, end)) in ranges {
        if start < end {
            list.add_partition_offset(topic, p, Offset::Offset(start))?;
            ends.insert(p, end);
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&list)?;
    let deadline = std::time::Instant::now() + timeout;
    while !ends.is_empty() && std::time::Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m?;
        let Some(&end) = ends.get(&m.partition()) else { continue };
        if m.offset() < end {
            each(&m);
        }
        if m.offset() + 1 >= end {
            ends.remove(&m.partition());
        }
    }
    if !ends.is_empty() {
        return Err(KafkaError::MessageConsumption(RDKafkaErrorCode::RequestTimedOut));
    }
    Ok(())
}
