//! Logging and metrics: metric names, and one function per notable event that
//! both logs and counts. Logs never carry personal data: contact ids appear
//! only hashed ([`contact_hash`]).

use metrics::{counter, gauge, histogram};
use sha2::{Digest, Sha256};
use tracing::{debug, error, info, warn};

/// Events read from the input topic, by `outcome` (`scored`,
/// `deduplicated`, `dead_lettered`).
pub const EVENTS_TOTAL: &str = "hotlead_events_total";
/// Dead-lettered events, by `reason`.
pub const DEAD_LETTERS_TOTAL: &str = "hotlead_dead_letters_total";
/// Alerts committed to the outbox, by `model`, `tier` (entered) and `direction`.
pub const ALERTS_TOTAL: &str = "hotlead_alerts_total";
/// Time of the Redis commit call of one partition batch.
pub const REDIS_COMMIT_SECONDS: &str = "hotlead_redis_commit_seconds";
/// Time to deliver one partition's outbox and trim it.
pub const RELAY_SECONDS: &str = "hotlead_relay_seconds";
/// From an event's time to the broker acknowledging the alert it caused.
pub const EVENT_TO_ALERT_SECONDS: &str = "hotlead_event_to_alert_seconds";
/// Messages behind the end of each owned input partition, by `partition`.
pub const CONSUMER_LAG: &str = "hotlead_consumer_lag_messages";
/// Errors reported by the Kafka client, by `code`.
pub const KAFKA_ERRORS_TOTAL: &str = "hotlead_kafka_errors_total";
/// Always 1, with the running `version`.
pub const BUILD_INFO: &str = "hotlead_build_info";
/// Messages the relay delivered to Kafka, by `kind` (`alert`, `dead_letter`).
pub const RELAYED_TOTAL: &str = "hotlead_relayed_messages_total";
/// Batch commits, by `result` (`ok`, `fenced`, `error`).
pub const COMMITS_TOTAL: &str = "hotlead_batch_commits_total";
/// Time to score and commit one partition batch.
pub const COMMIT_SECONDS: &str = "hotlead_batch_commit_seconds";
/// Events per partition batch.
pub const BATCH_EVENTS: &str = "hotlead_batch_events";
/// Partitions this instance owns.
pub const OWNED_PARTITIONS: &str = "hotlead_owned_partitions";
/// Rules reloads, by `result` (`ok`, `refused`).
pub const RULES_RELOADS_TOTAL: &str = "hotlead_rules_reloads_total";
/// The version in force of each model, by `model`.
pub const RULES_VERSION: &str = "hotlead_rules_version";
/// Redis or Kafka failures that were retried, by `operation`.
pub const RETRIES_TOTAL: &str = "hotlead_retries_total";
/// Contact-state lookups of partition batches, by `result` (`hit`: from the
/// state cache, `miss`: read from Redis).
pub const STATE_CACHE_LOOKUPS_TOTAL: &str = "hotlead_state_cache_lookups_total";
/// Contacts held in the state cache.
pub const STATE_CACHE_CONTACTS: &str = "hotlead_state_cache_contacts";
/// Events each behaviour rule matched since it came into force, by `model`
/// and `rule`.
pub const RULE_HITS_TOTAL: &str = "hotlead_rule_hits_total";

/// Describes every metric so `/metrics` shows help text from the start.
pub fn describe() {
    metrics::describe_counter!(EVENTS_TOTAL, "Events read from the input topic, by outcome.");
    metrics::describe_counter!(DEAD_LETTERS_TOTAL, "Events sent to the dead-letter topic, by reason.");
    metrics::describe_counter!(ALERTS_TOTAL, "Tier-crossing alerts committed, by direction.");
    metrics::describe_counter!(RELAYED_TOTAL, "Outbox messages delivered to Kafka, by kind.");
    metrics::describe_counter!(COMMITS_TOTAL, "Partition batch commits to Redis, by result.");
    metrics::describe_histogram!(
        COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "Time to score and commit one partition batch."
    );
    metrics::describe_histogram!(BATCH_EVENTS, "Events in one partition batch.");
    metrics::describe_gauge!(OWNED_PARTITIONS, "Input partitions this instance owns.");
    metrics::describe_counter!(RETRIES_TOTAL, "Infrastructure operations retried after a failure, by operation.");
    metrics::describe_histogram!(
        REDIS_COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "Time of the Redis commit call of one partition batch."
    );
    metrics::describe_histogram!(
        RELAY_SECONDS,
        metrics::Unit::Seconds,
        "Time to deliver one partition's outbox and trim it."
    );
    metrics::describe_histogram!(
        EVENT_TO_ALERT_SECONDS,
        metrics::Unit::Seconds,
        "From an event's time to the broker acknowledging its alert."
    );
    metrics::describe_gauge!(CONSUMER_LAG, "Messages behind the end of each owned input partition.");
    metrics::describe_counter!(KAFKA_ERRORS_TOTAL, "Errors reported by the Kafka client, by code.");
    metrics::describe_gauge!(BUILD_INFO, "Always 1, labelled with the running version.");
    metrics::describe_counter!(
        STATE_CACHE_LOOKUPS_TOTAL,
        "Contact states a batch looked up, by result: hit (state cache) or miss (read from Redis)."
    );
    metrics::describe_gauge!(STATE_CACHE_CONTACTS, "Contacts held in the state cache.");
    metrics::describe_counter!(RULE_HITS_TOTAL, "Events each behaviour rule matched, by model and rule.");
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for reason in crate::decode::DecodeError::REASONS {
        counter!(DEAD_LETTERS_TOTAL, "reason" => reason).absolute(0);
    }
    // Series that alert rules take rates of exist from the start, so the
    // first reload refused or commit fenced is seen.
    for result in ["ok", "refused"] {
        counter!(RULES_RELOADS_TOTAL, "result" => result).absolute(0);
    }
    for result in ["ok", "fenced", "error"] {
        counter!(COMMITS_TOTAL, "result" => result).absolute(0);
    }
}

/// Latency buckets (seconds) for the histograms in seconds.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Size buckets for events per batch.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0];

/// One raised alert, for its metric labels.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertLabels {
    /// Model name.
    pub model: String,
    /// Tier entered.
    pub tier: String,
    /// Direction.
    pub direction: crate::score::Direction,
}

/// Sets up structured logging; `RUST_LOG` filters, `json` switches format.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// A short, stable hash of a contact id, for logs.
pub fn contact_hash(contact_id: &str) -> String {
    let d = Sha256::digest(contact_id.as_bytes());
    d[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// An event could not be scored and was dead-lettered.
pub fn dead_lettered(partition: i32, offset: i64, reason: &'static str, error: &dyn std::fmt::Display) {
    warn!(partition, offset, reason, error = %error, "Dead-lettered an event that cannot be scored.");
    counter!(DEAD_LETTERS_TOTAL, "reason" => reason).increment(1);
    counter!(EVENTS_TOTAL, "outcome" => "dead_lettered").increment(1);
}

/// A batch of events was scored and committed.
pub fn batch_committed(
    partition: i32,
    events: usize,
    scored: usize,
    alerts: &[AlertLabels],
    seconds: f64,
    redis_seconds: f64,
) {
    debug!(partition, events, scored, alerts = alerts.len(), "Committed a partition batch.");
    counter!(EVENTS_TOTAL, "outcome" => "scored").increment(scored as u64);
    counter!(COMMITS_TOTAL, "result" => "ok").increment(1);
    histogram!(COMMIT_SECONDS).record(seconds);
    histogram!(REDIS_COMMIT_SECONDS).record(redis_seconds);
    histogram!(BATCH_EVENTS).record(events as f64);
    alerts_raised(alerts);
}

fn alerts_raised(alerts: &[AlertLabels]) {
    for a in alerts {
        counter!(ALERTS_TOTAL, "model" => a.model.clone(), "tier" => a.tier.clone(), "direction" => a.direction.as_str())
            .increment(1);
    }
}

/// A batch looked up its contacts' states: `hits` from the state cache,
/// `misses` read from Redis.
pub fn state_cache_lookups(hits: usize, misses: usize) {
    counter!(STATE_CACHE_LOOKUPS_TOTAL, "result" => "hit").increment(hits as u64);
    counter!(STATE_CACHE_LOOKUPS_TOTAL, "result" => "miss").increment(misses as u64);
}

/// The state cache now holds `contacts` contacts.
pub fn state_cache_size(contacts: usize) {
    gauge!(STATE_CACHE_CONTACTS).set(contacts as f64);
}

/// An owned partition's lag, from the Kafka client's statistics.
pub fn consumer_lag(partition: i32, lag: i64) {
    gauge!(CONSUMER_LAG, "partition" => partition.to_string()).set(lag as f64);
}

/// The Kafka client reported an error.
pub fn kafka_error(error: &rdkafka::error::KafkaError, reason: &str) {
    let code = error.rdkafka_error_code().map_or_else(|| "other".to_string(), |c| format!("{c:?}"));
    warn!(error = %error, reason, "Kafka client error.");
    counter!(KAFKA_ERRORS_TOTAL, "code" => code).increment(1);
}

/// A contact crossed a tier.
pub fn tier_crossed(partition: i32, contact_id: &str, model: &str, from: &str, to: &str, direction: &str) {
    debug!(partition, contact = %contact_hash(contact_id), model, from, to, direction, "Contact crossed a tier.");
}

/// This instance lost ownership of a partition while committing.
pub fn fenced(partition: i32, error: &dyn std::fmt::Display) {
    warn!(partition, error = %error, "Fenced off a partition: another instance owns it now; its batch is dropped and will be scored by the owner.");
    counter!(COMMITS_TOTAL, "result" => "fenced").increment(1);
}

/// An infrastructure operation failed and will be retried.
pub fn retrying(operation: &'static str, attempt: u32, error: &dyn std::fmt::Display) {
    warn!(operation, attempt, error = %error, "Retrying after a failure.");
    counter!(RETRIES_TOTAL, "operation" => operation).increment(1);
    if operation == "commit" {
        counter!(COMMITS_TOTAL, "result" => "error").increment(1);
    }
}

/// Messages were delivered from an outbox, in `seconds`; `alert_latencies`
/// holds each event-caused alert's time from its event, in seconds.
pub fn relayed(partition: i32, alerts: usize, dead_letters: usize, seconds: f64, alert_latencies: &[f64]) {
    debug!(partition, alerts, dead_letters, "Relayed outbox messages.");
    histogram!(RELAY_SECONDS).record(seconds);
    for l in alert_latencies {
        histogram!(EVENT_TO_ALERT_SECONDS).record(*l);
    }
    counter!(RELAYED_TOTAL, "kind" => "alert").increment(alerts as u64);
    counter!(RELAYED_TOTAL, "kind" => "dead_letter").increment(dead_letters as u64);
}

/// Partitions were assigned to this instance.
pub fn partitions_assigned(claims: &[(i32, i64, Option<i64>)], owned: usize) {
    for (partition, epoch, watermark) in claims {
        info!(partition, epoch, watermark = ?watermark, "Claimed a partition; scoring resumes after its watermark.");
    }
    gauge!(OWNED_PARTITIONS).set(owned as f64);
}

/// Partitions were revoked from this instance.
pub fn partitions_revoked(partitions: &[i32], owned: usize) {
    info!(?partitions, "Released partitions.");
    gauge!(OWNED_PARTITIONS).set(owned as f64);
    // Lag is reported by the owner; a released partition's is no longer ours.
    for p in partitions {
        gauge!(CONSUMER_LAG, "partition" => p.to_string()).set(0.0);
    }
}

/// A fatal infrastructure failure: the process is about to exit.
pub fn fatal(operation: &'static str, error: &dyn std::fmt::Display) {
    error!(operation, error = %error, "Giving up after repeated failures; exiting for the supervisor to restart.");
}

/// Records the versions of a rule set now in force.
pub fn rules_in_force(rules: &crate::rules::RuleSet) {
    for m in &rules.models {
        gauge!(RULES_VERSION, "model" => m.name.clone()).set(f64::from(m.version));
    }
}

/// Publishes each behaviour rule's hit count (kept by the rules in force)
/// as [`RULE_HITS_TOTAL`]; called when metrics are read.
pub fn rule_hits(rules: &crate::rules::RuleSet) {
    for m in &rules.models {
        for r in &m.rules {
            counter!(RULE_HITS_TOTAL, "model" => m.name.clone(), "rule" => r.id.clone()).absolute(r.hits.get());
        }
    }
}

/// A reloaded rules file was swapped in.
pub fn rules_reloaded(rules: &crate::rules::RuleSet) {
    let versions: Vec<String> = rules.models.iter().map(|m| format!("{} v{}", m.name, m.version)).collect();
    info!(models = %versions.join(", "), "Reloaded rules; later events are scored with them.");
    counter!(RULES_RELOADS_TOTAL, "result" => "ok").increment(1);
    rules_in_force(rules);
}

/// A changed rules file was invalid and refused.
pub fn rules_refused(error: &dyn std::fmt::Display) {
    error!(error = %error, "Refused the changed rules file; the rules in force keep scoring.");
    counter!(RULES_RELOADS_TOTAL, "result" => "refused").increment(1);
}

/// A sweep found contacts that cooled with no event.
pub fn swept(partition: i32, alerts: &[AlertLabels]) {
    debug!(partition, alerts = alerts.len(), "Swept a partition for cooled contacts.");
    alerts_raised(alerts);
}

/// An event repeated an event id already applied to its contact.
pub fn deduplicated(partition: i32, offset: i64) {
    debug!(partition, offset, "Skipped a repeated event id.");
    counter!(EVENTS_TOTAL, "outcome" => "deduplicated").increment(1);
}
