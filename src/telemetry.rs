//! Logging and metrics: metric names, and one function per notable event that
//! both logs and counts. Logs never carry personal data: contact ids appear
//! only hashed ([`contact_hash`]).

use metrics::{counter, gauge, histogram};
use sha2::{Digest, Sha256};
use tracing::{debug, error, info, warn};

/// Events read from the input topic, by `outcome` (`scored`,
/// `deduplicated`, `dead_lettered`, `forwarded`: an identified visitor's,
/// sent on to its contact; `suppressed`: an erased contact's; `skipped`:
/// another lane's record, or dated before a back-fill's start; `promotion`).
pub const EVENTS_TOTAL: &str = "hotlead_events_total";
/// Contacts erased.
pub const ERASURES_TOTAL: &str = "hotlead_erasures_total";
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
/// Outbox messages the broker refused for good (dropped).
pub const RELAY_REFUSED_TOTAL: &str = "hotlead_relay_refused_total";
/// 1 while the pipeline consumes (running, not rebalancing, broker
/// reachable), else 0. The read API serves either way.
pub const CONSUMING: &str = "hotlead_consuming";
pub const ACCOUNT_CONTRIBUTIONS_TOTAL: &str = "hotlead_account_contributions_total";
pub const ACCOUNT_ALERTS_TOTAL: &str = "hotlead_account_alerts_total";
pub const ACCOUNT_PARTITIONS: &str = "hotlead_account_partitions";
pub const ACCOUNT_LAG: &str = "hotlead_account_lag_messages";
pub const ACCOUNT_BATCH_SECONDS: &str = "hotlead_account_batch_seconds";

/// The process's Prometheus recorder, installed (with every metric
/// described) on first use; `None` if another recorder was installed first.
pub fn metrics_handle() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_EVENTS.into()), BATCH_BUCKETS))
                .and_then(|b| b.install_recorder());
            match handle {
                Ok(h) => {
                    describe();
                    Some(h)
                }
                Err(e) => {
                    warn!(error = %e, "No metrics: a recorder is installed already.");
                    None
                }
            }
        })
        .clone()
}

/// Alerts `hotlead notify` read, by `outcome` (`routed`, `unrouted`,
/// `undecodable`).
pub const NOTIFY_ALERTS_TOTAL: &str = "hotlead_notify_alerts_total";
/// Finished deliveries, by `destination`, `kind` and `result` (`delivered`,
/// `dead_lettered`, `already_sent`: read again and skipped, as the
/// destination had taken it).
pub const NOTIFY_DELIVERIES_TOTAL: &str = "hotlead_notify_deliveries_total";
/// Failed tries that will be retried, by `destination` and `reason`.
pub const NOTIFY_RETRIES_TOTAL: &str = "hotlead_notify_retries_total";
/// Deliveries sent to the notify dead-letter topic, by `destination` and
/// `reason`.
pub const NOTIFY_DEAD_LETTERS_TOTAL: &str = "hotlead_notify_dead_letters_total";
/// From the alert's production (its message timestamp) to a destination
/// taking it, by `destination`.
pub const NOTIFY_DELIVERY_SECONDS: &str = "hotlead_notify_delivery_seconds";
/// Alerts with deliveries in flight.
pub const NOTIFY_OPEN_ALERTS: &str = "hotlead_notify_open_alerts";
/// Routes file reloads, by `result` (`ok`, `refused`).
pub const NOTIFY_ROUTES_RELOADS_TOTAL: &str = "hotlead_notify_routes_reloads_total";
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
    metrics::describe_gauge!(CONSUMING, "1 while the pipeline consumes, 0 while stopped, rebalancing or cut off.");
    gauge!(CONSUMING).set(0.0);
    metrics::describe_counter!(
        RELAY_REFUSED_TOTAL,
        "Outbox messages the broker refused for good and that were dropped."
    );
    metrics::describe_counter!(ERASURES_TOTAL, "Contacts erased (GDPR Art. 17).");
    metrics::describe_counter!(
        ACCOUNT_CONTRIBUTIONS_TOTAL,
        "Contribution records the account stage read, by outcome (applied, repeat, undecodable)."
    );
    metrics::describe_counter!(ACCOUNT_ALERTS_TOTAL, "Account tier-crossing alerts committed, by model and direction.");
    metrics::describe_gauge!(ACCOUNT_PARTITIONS, "Contribution topic partitions this instance's account stage owns.");
    metrics::describe_gauge!(ACCOUNT_LAG, "Messages behind the end of each owned contribution partition.");
    metrics::describe_histogram!(
        ACCOUNT_BATCH_SECONDS,
        metrics::Unit::Seconds,
        "Time to roll up and commit one contribution batch."
    );
    counter!(ERASURES_TOTAL).absolute(0);
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

/// A batch of events was scored and committed: counts its events, logs
/// and counts its dead letters and alerts.
pub fn batch_committed(
    partition: i32,
    effects: &crate::engine::Effects,
    dead_letter_topic: &str,
    seconds: f64,
    redis_seconds: f64,
) {
    let c = effects.counts;
    debug!(
        partition,
        events = c.messages,
        scored = c.scored,
        alerts = effects.alerts.len(),
        "Committed a partition batch."
    );
    for d in &effects.dead_letters {
        let e = &d.rejected.error;
        if dead_letter_topic.is_empty() {
            // A shadow lane: the live service dead-letters it.
            debug!(partition, offset = d.offset, reason = e.reason(), error = %e, "Not scored: the event cannot be scored.");
        } else {
            warn!(partition, offset = d.offset, reason = e.reason(), error = %e, topic = dead_letter_topic, "Dead-lettered an event that cannot be scored.");
        }
        counter!(DEAD_LETTERS_TOTAL, "reason" => e.reason()).increment(1);
    }
    counter!(EVENTS_TOTAL, "outcome" => "scored").increment(c.scored as u64);
    counter!(EVENTS_TOTAL, "outcome" => "deduplicated").increment(c.deduplicated as u64);
    counter!(EVENTS_TOTAL, "outcome" => "dead_lettered").increment(c.dead_lettered as u64);
    counter!(EVENTS_TOTAL, "outcome" => "forwarded").increment(c.forwarded as u64);
    counter!(EVENTS_TOTAL, "outcome" => "suppressed").increment(c.suppressed as u64);
    counter!(EVENTS_TOTAL, "outcome" => "skipped").increment(c.skipped as u64);
    counter!(EVENTS_TOTAL, "outcome" => "promotion").increment(c.promotions as u64);
    for f in &effects.forwards {
        if let Some(crate::proto::interaction_event::Interaction::VisitorMerge(_)) = &f.interaction {
            let visitor = f.origin.as_ref().map(|o| contact_hash(&o.anonymous_id)).unwrap_or_default();
            info!(partition, visitor = %visitor, contact = %contact_hash(&f.contact_id), "A visitor identified; its state goes to the contact's partition.");
        }
    }
    for e in &effects.erasures {
        info!(partition, contact = %contact_hash(&e.contact_id), request = e.request_id, "Erased a contact.");
        counter!(ERASURES_TOTAL).increment(1);
    }
    counter!(COMMITS_TOTAL, "result" => "ok").increment(1);
    histogram!(COMMIT_SECONDS).record(seconds);
    histogram!(REDIS_COMMIT_SECONDS).record(redis_seconds);
    histogram!(BATCH_EVENTS).record(c.messages as f64);
    alerts_raised(partition, &effects.alerts);
}

fn alerts_raised(partition: i32, alerts: &[crate::proto::ScoreAlert]) {
    for a in alerts {
        let direction =
            if a.direction == crate::proto::score_alert::Direction::Cooled as i32 { "cooled" } else { "heated" };
        debug!(partition, contact = %contact_hash(&a.contact_id), model = a.model, from = a.previous_tier, to = a.tier, direction, "Contact crossed a tier.");
        counter!(ALERTS_TOTAL, "model" => a.model.clone(), "tier" => a.tier.clone(), "direction" => direction)
            .increment(1);
    }
}

/// The instance owned no partition for `waited` and rejoins its group.
pub fn rejoining_group(waited: std::time::Duration) {
    info!(
        waited_seconds = waited.as_secs(),
        "Owning no partition; rejoining the consumer group in case the broker handed out an empty assignment."
    );
}

/// A batch looked up its contacts' states: `hits` from the state cache,
/// `misses` read from Redis.
pub fn state_cache_lookups(hits: usize, misses: usize) {
    counter!(STATE_CACHE_LOOKUPS_TOTAL, "result" => "hit").increment(hits as u64);
    counter!(STATE_CACHE_LOOKUPS_TOTAL, "result" => "miss").increment(misses as u64);
}

/// A partition's state cache went from `before` to `after` contacts.
pub fn state_cache_size(before: usize, after: usize) {
    gauge!(STATE_CACHE_CONTACTS).increment(after as f64 - before as f64);
}

/// Whether the pipeline consumes.
pub fn consuming(yes: bool) {
    gauge!(CONSUMING).set(if yes { 1.0 } else { 0.0 });
}

/// An owned partition's lag, from the Kafka client's statistics.
pub fn consumer_lag(partition: i32, lag: i64) {
    gauge!(CONSUMER_LAG, "partition" => partition.to_string()).set(lag as f64);
}

/// The Kafka client reported an error. Errors that mean the broker cannot
/// be reached are an outage: logged once when it starts, reminded at most
/// once a minute with the count, and once when it ends ([`kafka_reachable`]);
/// the metric counts every one.
pub fn kafka_error(error: &rdkafka::error::KafkaError, reason: &str) {
    use rdkafka::types::RDKafkaErrorCode as C;
    let code = error.rdkafka_error_code();
    counter!(KAFKA_ERRORS_TOTAL, "code" => code.map_or_else(|| "other".to_string(), |c| format!("{c:?}"))).increment(1);
    let unreachable = matches!(
        code,
        Some(C::AllBrokersDown | C::BrokerTransportFailure | C::Resolve | C::NetworkException | C::BrokerNotAvailable)
    );
    if unreachable {
        outage_error(reason);
    } else {
        warn!(error = %error, reason, "Kafka client error.");
    }
}

/// A librdkafka log line: connection failures count towards an outage;
/// the rest is logged at its level (debug below warnings).
pub fn librdkafka_log(level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    let connection = matches!(facility, "FAIL" | "ERROR" | "BROKERFAIL")
        || message.contains("Connection refused")
        || message.contains("Disconnected");
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error | L::Warning if connection => outage_error(message),
        L::Emerg | L::Alert | L::Critical | L::Error => error!(facility, message, "librdkafka"),
        L::Warning => warn!(facility, message, "librdkafka"),
        _ => debug!(facility, message, "librdkafka"),
    }
}

/// The broker answered again: ends an outage, if one was going on.
pub fn kafka_reachable() {
    if let Some(ended) = OUTAGE.lock().expect("outage lock").over(std::time::Instant::now()) {
        info!(seconds = ended.lasted.as_secs(), errors = ended.errors, "The Kafka broker is reachable again.");
    }
}

fn outage_error(detail: &str) {
    let line = OUTAGE.lock().expect("outage lock").error(std::time::Instant::now());
    match line {
        Some(OutageLine::Started) => {
            warn!(detail, "The Kafka broker is unreachable; retrying. Reminders at most once a minute.")
        }
        Some(OutageLine::Reminder { lasted, errors }) => {
            warn!(seconds = lasted.as_secs(), errors, detail, "The Kafka broker is still unreachable; retrying.")
        }
        None => debug!(detail, "Kafka broker unreachable."),
    }
}

static OUTAGE: std::sync::Mutex<Outage> = std::sync::Mutex::new(Outage::new());

/// A broker outage, as far as the logs need it.
#[derive(Debug)]
pub struct Outage {
    since: Option<std::time::Instant>,
    errors: u64,
    reminded: Option<std::time::Instant>,
}

/// What an outage error should log.
#[derive(Debug, PartialEq, Eq)]
pub enum OutageLine {
    /// The first error: the outage starts.
    Started,
    /// A minute or more since the last line.
    Reminder {
        /// Since the outage started.
        lasted: std::time::Duration,
        /// Errors so far.
        errors: u64,
    },
}

/// How an outage ended.
#[derive(Debug, PartialEq, Eq)]
pub struct OutageEnded {
    /// How long it lasted.
    pub lasted: std::time::Duration,
    /// Errors during it.
    pub errors: u64,
}

impl Outage {
    /// How often a going outage is reminded of.
    pub const REMIND_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// No outage.
    pub const fn new() -> Self {
        Self { since: None, errors: 0, reminded: None }
    }

    /// An error at `now`; what to log, if anything.
    pub fn error(&mut self, now: std::time::Instant) -> Option<OutageLine> {
        self.errors += 1;
        let Some(since) = self.since else {
            self.since = Some(now);
            self.reminded = Some(now);
            self.errors = 1;
            return Some(OutageLine::Started);
        };
        let last = self.reminded.unwrap_or(since);
        if now.duration_since(last) >= Self::REMIND_EVERY {
            self.reminded = Some(now);
            return Some(OutageLine::Reminder { lasted: now.duration_since(since), errors: self.errors });
        }
        None
    }

    /// The broker is reachable at `now`: how the outage ended, if one was
    /// going on.
    pub fn over(&mut self, now: std::time::Instant) -> Option<OutageEnded> {
        let since = self.since.take()?;
        self.reminded = None;
        Some(OutageEnded { lasted: now.duration_since(since), errors: std::mem::take(&mut self.errors) })
    }
}

impl Default for Outage {
    fn default() -> Self {
        Self::new()
    }
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

/// The broker refused an outbox message for good; it is dropped so later
/// ones go out.
pub fn relay_refused(partition: i32, topic: &str, bytes: usize, error: &rdkafka::error::KafkaError) {
    error!(partition, topic, bytes, error = %error, "The broker refused an outbox message for good; dropped it so the partition's later messages go out.");
    counter!(RELAY_REFUSED_TOTAL).increment(1);
}

/// Partitions were assigned to this instance; their workers claim them.
pub fn partitions_assigned(partitions: &[i32], owned: usize) {
    info!(?partitions, "Assigned partitions.");
    gauge!(OWNED_PARTITIONS).set(owned as f64);
}

/// The account stage committed a batch (or a sweep): its records'
/// outcomes (applied, repeat, undecodable) and alerts.
pub fn accounts_committed(
    partition: i32,
    (applied, repeats, undecodable): (usize, usize, usize),
    alerts: &[crate::proto::AccountAlert],
    seconds: f64,
    redis_seconds: f64,
) {
    for (outcome, n) in [("applied", applied), ("repeat", repeats), ("undecodable", undecodable)] {
        if n > 0 {
            counter!(ACCOUNT_CONTRIBUTIONS_TOTAL, "outcome" => outcome).increment(n as u64);
        }
    }
    for a in alerts {
        let direction = crate::proto::score_alert::Direction::try_from(a.direction).map_or("unspecified", |d| {
            if d == crate::proto::score_alert::Direction::Heated {
                "heated"
            } else {
                "cooled"
            }
        });
        counter!(ACCOUNT_ALERTS_TOTAL, "model" => a.model.clone(), "direction" => direction).increment(1);
        info!(
            partition,
            account = %a.account_id,
            model = %a.model,
            tier = %a.tier,
            direction,
            score = a.score,
            breadth = a.breadth,
            "Account crossed a tier."
        );
    }
    if seconds > 0.0 {
        histogram!(ACCOUNT_BATCH_SECONDS).record(seconds);
        debug!(partition, seconds, redis_seconds, "Account batch committed.");
    }
}

/// The account stage's partitions changed.
pub fn account_partitions(partitions: &[i32], owned: usize, assigned: bool) {
    if assigned {
        info!(?partitions, "Account stage: assigned contribution partitions.");
    } else {
        info!(?partitions, "Account stage: released contribution partitions.");
        for p in partitions {
            gauge!(ACCOUNT_LAG, "partition" => p.to_string()).set(0.0);
        }
    }
    gauge!(ACCOUNT_PARTITIONS).set(owned as f64);
}

/// Lag of an owned contribution partition.
pub fn account_lag(partition: i32, lag: i64) {
    gauge!(ACCOUNT_LAG, "partition" => partition.to_string()).set(lag as f64);
}

/// A partition worker claimed its partition.
pub fn partition_claimed(partition: i32, epoch: i64, watermark: Option<i64>) {
    info!(partition, epoch, watermark = ?watermark, "Claimed a partition; scoring resumes after its watermark.");
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
pub fn swept(partition: i32, alerts: &[crate::proto::ScoreAlert]) {
    debug!(partition, alerts = alerts.len(), "Swept a partition for cooled contacts.");
    alerts_raised(partition, alerts);
}

/// Describes the notifier's metrics and starts the series alert rules read.
pub fn describe_notify() {
    metrics::describe_counter!(NOTIFY_ALERTS_TOTAL, "Alerts read by hotlead notify, by outcome.");
    metrics::describe_counter!(NOTIFY_DELIVERIES_TOTAL, "Finished deliveries, by destination, kind and result.");
    metrics::describe_counter!(
        NOTIFY_RETRIES_TOTAL,
        "Failed delivery tries that will be retried, by destination and reason."
    );
    metrics::describe_counter!(
        NOTIFY_DEAD_LETTERS_TOTAL,
        "Deliveries sent to the notify dead-letter topic, by destination and reason."
    );
    metrics::describe_histogram!(
        NOTIFY_DELIVERY_SECONDS,
        metrics::Unit::Seconds,
        "From an alert's production to a destination taking it."
    );
    metrics::describe_gauge!(NOTIFY_OPEN_ALERTS, "Alerts with deliveries in flight.");
    metrics::describe_counter!(NOTIFY_ROUTES_RELOADS_TOTAL, "Routes file reloads, by result.");
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for outcome in ["routed", "unrouted", "undecodable"] {
        counter!(NOTIFY_ALERTS_TOTAL, "outcome" => outcome).absolute(0);
    }
    for result in ["ok", "refused"] {
        counter!(NOTIFY_ROUTES_RELOADS_TOTAL, "result" => result).absolute(0);
    }
}

/// The routes file in force at start.
pub fn notify_routes_in_force(path: &std::path::Path, destinations: usize, routes: usize) {
    info!(path = %path.display(), destinations, routes, "Routes in force.");
}

/// A changed routes file was swapped in.
pub fn notify_routes_reloaded(path: &std::path::Path, destinations: usize, routes: usize) {
    info!(path = %path.display(), destinations, routes, "Reloaded routes; later alerts follow them.");
    counter!(NOTIFY_ROUTES_RELOADS_TOTAL, "result" => "ok").increment(1);
}

/// A changed routes file was invalid and refused.
pub fn notify_routes_refused(error: &dyn std::fmt::Display) {
    error!(error = %error, "Refused the changed routes file; the routes in force keep delivering.");
    counter!(NOTIFY_ROUTES_RELOADS_TOTAL, "result" => "refused").increment(1);
}

/// An alert was read and handed to `destinations` destinations.
pub fn notify_alert_routed(destinations: usize) {
    let outcome = if destinations == 0 { "unrouted" } else { "routed" };
    counter!(NOTIFY_ALERTS_TOTAL, "outcome" => outcome).increment(1);
}

/// A message on the alert topic is not an alert; it is dead-lettered.
pub fn notify_undecodable(partition: i32, offset: i64, error: &dyn std::fmt::Display) {
    warn!(partition, offset, error = %error, "Dead-lettered a message that is not an alert.");
    counter!(NOTIFY_ALERTS_TOTAL, "outcome" => "undecodable").increment(1);
    counter!(NOTIFY_DEAD_LETTERS_TOTAL, "destination" => "", "reason" => "undecodable").increment(1);
}

/// A destination took an alert after `attempts` tries.
pub fn notify_delivered(destination: &str, kind: &'static str, attempts: u32, latency_seconds: Option<f64>) {
    debug!(destination, attempts, "Delivered an alert.");
    counter!(NOTIFY_DELIVERIES_TOTAL, "destination" => destination.to_string(), "kind" => kind, "result" => "delivered")
        .increment(1);
    if let Some(l) = latency_seconds {
        histogram!(NOTIFY_DELIVERY_SECONDS, "destination" => destination.to_string()).record(l);
    }
}

/// A try failed and will be retried.
pub fn notify_retrying(destination: &str, reason: &'static str, attempt: u32, error: &dyn std::fmt::Display) {
    warn!(destination, reason, attempt, error = %error, "Delivery failed; retrying.");
    counter!(NOTIFY_RETRIES_TOTAL, "destination" => destination.to_string(), "reason" => reason).increment(1);
}

/// A delivery failed for good or past its retry budget; it is dead-lettered.
pub fn notify_dead_lettered(
    destination: &str,
    kind: &'static str,
    reason: &'static str,
    attempts: u32,
    partition: i32,
    offset: i64,
    error: &dyn std::fmt::Display,
) {
    error!(destination, reason, attempts, partition, offset, error = %error, "Delivery failed; dead-lettered the alert for this destination.");
    counter!(NOTIFY_DELIVERIES_TOTAL, "destination" => destination.to_string(), "kind" => kind, "result" => "dead_lettered")
        .increment(1);
    counter!(NOTIFY_DEAD_LETTERS_TOTAL, "destination" => destination.to_string(), "reason" => reason).increment(1);
}

/// A destination cannot be used as configured; its deliveries fail.
pub fn notify_destination_broken(destination: &str, error: &dyn std::fmt::Display) {
    error!(destination, error = %error, "Destination misconfigured: its alerts are dead-lettered until the routes file is fixed.");
}

/// Alerts with deliveries in flight now.
pub fn notify_open_alerts(open: usize) {
    gauge!(NOTIFY_OPEN_ALERTS).set(open as f64);
}

/// An alert read again was skipped for a destination that had taken it.
pub fn notify_already_sent(destination: &str, kind: &'static str) {
    debug!(destination, "Skipped an alert the destination took already.");
    counter!(NOTIFY_DELIVERIES_TOTAL, "destination" => destination.to_string(), "kind" => kind, "result" => "already_sent")
        .increment(1);
}

/// Redis, which remembers deliveries, failed; the delivery goes on.
pub fn notify_sent_log_error(operation: &'static str, error: &dyn std::fmt::Display) {
    warn!(operation, error = %error, "Cannot reach the record of deliveries in Redis; delivering anyway.");
    counter!(RETRIES_TOTAL, "operation" => "notify_sent_log").increment(1);
}

/// Reading the alert topic paused (too many alerts in flight) or resumed.
pub fn notify_paused(paused: bool, open: usize) {
    if paused {
        warn!(
            open,
            "Paused reading alerts: too many in flight (notify.max_open_alerts); destinations are slow or failing."
        );
    } else {
        info!(open, "Resumed reading alerts.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn an_outage_logs_a_handful_of_lines() {
        let mut o = Outage::new();
        let t0 = Instant::now();
        let mut lines = 0;
        // An error every 150 ms for 30 minutes.
        for i in 0..12_000u64 {
            if o.error(t0 + Duration::from_millis(150 * i)).is_some() {
                lines += 1;
            }
        }
        assert_eq!(lines, 30, "one when it starts and one a minute after: {lines}");
        let ended = o.over(t0 + Duration::from_secs(1800)).unwrap();
        assert_eq!(ended.errors, 12_000);
        assert_eq!(ended.lasted, Duration::from_secs(1800));
        assert!(o.over(t0 + Duration::from_secs(1801)).is_none(), "ends once");
        assert_eq!(o.error(t0 + Duration::from_secs(1900)), Some(OutageLine::Started), "a new outage");
    }
}
