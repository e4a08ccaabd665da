//! Configuration: a TOML file, then `HOTLEAD_<SECTION>__<FIELD>` environment
//! overrides, validated at start-up with errors that name the field.
//!
//! Every librdkafka property can be set under `[kafka]` (or as
//! `HOTLEAD_KAFKA__SASL_MECHANISM=...`, where `_` stands for `.`), so SASL,
//! TLS and tuning need no code.
//!
//! # Private by default
//!
//! The read API and the board serve contact ids and profile attributes, so:
//!
//! - [`Config::check_serving`], run by every command that opens the read
//!   API's listener (`hotlead run`), refuses an `http.listen` beyond
//!   loopback (`0.0.0.0`, `::`, a LAN address) with no token, unless
//!   `http.allow_anonymous = true` says so. Loopback without a token stays
//!   allowed. Commands that serve no contact data (`hotlead score`, `top`,
//!   `notify`, whose own listener has only `/metrics` and `/healthz`) do not
//!   check it, so they run with the service's configuration as it is.
//! - An empty token is refused everywhere: it would let through anyone who
//!   sends `Authorization: Bearer `.
//! - `privacy.hidden_attributes` ([`PrivacyConfig`]) names profile
//!   attributes that are scored with but never served: the contact view is
//!   the one place a profile leaves hotlead ([`crate::query::view`]), and it
//!   leaves them out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::{Deserialize, Deserializer};

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file or an override does not parse or fit the schema.
    #[error("config field `{field}`: {message}")]
    Parse {
        /// Dotted field path.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A value is not allowed.
    #[error("config field `{field}`: {message}")]
    Invalid {
        /// Dotted field path.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The read API would serve contact data beyond this machine to anyone.
    #[error(
        "http.listen = {listen} serves contact data beyond this machine without a token: set http.token (or \
         http.token_file, HOTLEAD_HTTP__TOKEN), or http.allow_anonymous = true to serve it open"
    )]
    OpenBeyondLoopback {
        /// The address configured in `http.listen`.
        listen: String,
    },
}

/// The whole configuration.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// librdkafka properties for the consumer and producer, passed through
    /// as given (`"bootstrap.servers" = "127.0.0.1:9092"`).
    #[serde(default = "default_kafka", deserialize_with = "kafka_props")]
    pub kafka: BTreeMap<String, String>,
    /// Topic names.
    #[serde(default)]
    pub topics: Topics,
    /// Redis connection.
    #[serde(default)]
    pub redis: RedisConfig,
    /// Rules file.
    #[serde(default)]
    pub rules: RulesConfig,
    /// Batching and input limits.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// HTTP listener for `/metrics`, `/healthz`, `/readyz`, the read API
    /// and the board.
    #[serde(default)]
    pub http: HttpConfig,
    /// What is never served: profile attributes kept out of every answer.
    #[serde(default)]
    pub privacy: PrivacyConfig,
    /// `hotlead notify`: routes file, consumer group, dead-letter topic.
    #[serde(default)]
    pub notify: crate::notify::NotifyConfig,
}

/// Topic names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    /// Interaction events in (protobuf `InteractionEvent`, key = contact id).
    pub input: String,
    /// Score alerts out (protobuf `ScoreAlert`, key = contact id).
    pub alerts: String,
    /// Input that cannot be scored, with reason headers.
    pub dead_letter: String,
    /// Erasure records out (protobuf `ContactErased`, key = contact id):
    /// each erased contact, for the systems downstream to forget it too.
    pub erasures: String,
    /// Shadow models' alerts out (protobuf `ScoreAlert` with `shadow` set):
    /// what a model being tried would have said, never sent to sales.
    pub shadow_alerts: String,
    /// Internal: contacts' contributions to their accounts (protobuf
    /// `AccountContribution`, keyed by account), written by the contact
    /// stage and read by the account stage.
    pub account_contributions: String,
    /// Account alerts out (protobuf `AccountAlert`, keyed by account).
    pub account_alerts: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            input: "interactions".into(),
            alerts: "sales-alerts".into(),
            dead_letter: "interactions.dlq".into(),
            erasures: "contact-erasures".into(),
            shadow_alerts: "shadow-alerts".into(),
            account_contributions: "account-contributions".into(),
            account_alerts: "account-alerts".into(),
        }
    }
}

/// Whether a librdkafka property holds a secret.
pub fn is_secret_property(name: &str) -> bool {
    ["password", "secret", "ssl.key.pem", "ssl_key", "ssl.keystore"].iter().any(|s| name.contains(s))
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kafka: BTreeMap<&str, &str> = self
            .kafka
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret_property(k) { "<redacted>" } else { v.as_str() }))
            .collect();
        f.debug_struct("Config")
            .field("kafka", &kafka)
            .field("topics", &self.topics)
            .field("redis", &self.redis)
            .field("rules", &self.rules)
            .field("pipeline", &self.pipeline)
            .field("http", &self.http)
            .field("privacy", &self.privacy)
            .field("notify", &self.notify)
            .finish()
    }
}

/// Redis connection.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://...` for TLS;
    /// for a cluster, seed nodes separated by commas.
    pub url: String,
    /// Whether `url` names a Redis Cluster.
    pub cluster: bool,
    /// The Redis ACL user; overrides a user in `url`.
    pub username: Option<String>,
    /// A file holding the password (a mounted secret, say); overrides a
    /// password in `url`. Read once at start.
    pub password_file: Option<PathBuf>,
    /// PEM file of the certificate authorities trusted for `rediss://`
    /// (default: the system's roots).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for a Redis that requires mutual TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// The password read from `password_file`.
    #[serde(skip)]
    pub password: Option<String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            username: None,
            password_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            password: None,
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("cluster", &self.cluster)
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A URL (or comma-separated URLs) with any password replaced by `***`.
pub fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &u[scheme + 3..at];
                let user = userinfo.split_once(':').map_or("", |(user, _)| user);
                if userinfo.contains(':') {
                    format!("{}{user}:***{}", &u[..scheme + 3], &u[at..])
                } else {
                    format!("{}***{}", &u[..scheme + 3], &u[at..])
                }
            }
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads a secret from a file, without its trailing newline.
fn read_secret(field: &str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
        field: field.into(),
        message: format!("cannot read `{}`: {e}", path.display()),
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// Rules file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Path of the YAML rules file.
    pub path: PathBuf,
    /// How often the file is checked for changes, e.g. `2s`; `0s` checks
    /// only on SIGHUP.
    #[serde(deserialize_with = "duration")]
    pub reload_interval: Duration,
    /// Whether the rules workbench (`/board/rules`) may save a checked
    /// candidate over the rules file; needs `http.token`. Off by default:
    /// the file (or ConfigMap) is the source of truth.
    pub editable: bool,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self { path: "examples/rules.yaml".into(), reload_interval: Duration::from_secs(2), editable: false }
    }
}

/// Batching and input limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Most events scored and committed in one batch.
    pub batch_max_events: usize,
    /// How long a batch waits for more events after taking those already
    /// arrived, e.g. `5ms`. The default `0ms` waits for none: under load
    /// events pile up while the previous batch commits, so batches grow with
    /// the load and latency stays low.
    #[serde(deserialize_with = "duration")]
    pub batch_wait: Duration,
    /// Largest accepted event in bytes; larger ones are dead-lettered.
    pub max_message_bytes: usize,
    /// Longest accepted contact id in bytes.
    pub max_contact_id_bytes: usize,
    /// How far in the future an event time may lie, e.g. `1h`.
    #[serde(deserialize_with = "duration")]
    pub max_future_skew: Duration,
    /// How often owned partitions are swept for contacts that cooled below a
    /// tier's exit with no event; `0s` disables the sweep.
    #[serde(deserialize_with = "duration")]
    pub sweep_interval: Duration,
    /// How long (in arrival time: the Kafka timestamp of the message) a
    /// contact remembers the event ids applied to it, so a repeat arriving
    /// within it counts once whatever its event time, e.g. `24h`.
    #[serde(deserialize_with = "duration")]
    pub dedup_window: Duration,
    /// How many event ids a contact remembers at most; 0 turns the check off.
    pub dedup_max_ids: usize,
    /// Most contacts of the owned partitions kept in memory between batches
    /// (read from Redis on a miss); 0 turns the state cache off.
    pub state_cache_contacts: usize,
    /// When a partition's state is gone from Redis while Kafka has offsets
    /// committed for it: `false` stops with an error, `true` scores the
    /// partition again from the start of the topic (`hotlead run --rebuild`).
    pub rebuild_lost_state: bool,
    /// An alert whose crossing lies further in the past than this when it is
    /// raised (catch-up, rebuild, replay) is marked `historical`, e.g. `1h`.
    #[serde(deserialize_with = "duration")]
    pub historical_after: Duration,
    /// How long a shutdown may take to finish what it can (batches in hand,
    /// relays, offsets) before the process exits anyway; what was not
    /// committed is replayed from the watermark. E.g. `30s`.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Largest dead-letter payload in bytes: a larger one is cut to this
    /// size, with headers giving its original size and SHA-256, so every
    /// dead letter fits the broker's message size.
    pub dead_letter_max_bytes: usize,
    /// The scoring lane: empty for the live service. `hotlead backfill`
    /// runs a shadow lane named after its model, with its own consumer
    /// group and Redis keys (`hl:lane:<name>:...`); a shadow lane publishes
    /// only shadow alerts (no dead letters, no erasure records: the live
    /// service does).
    pub lane: String,
    /// At most this many messages a second are scored (all partitions
    /// together); 0: no limit. `hotlead backfill --max-rate` sets it, so a
    /// back-fill leaves the live service its share of the machine.
    pub max_events_per_second: u32,
    /// A lane that starts from a time: events dated before it (ms since the
    /// epoch) are read and not scored. Set by `hotlead backfill --from`.
    #[serde(skip)]
    pub not_before_ms: Option<i64>,
    /// Which stages this instance runs: `all` (the contact stage, and the
    /// account stage when the rules have an account roll-up), `contacts`
    /// or `accounts`, so the two can be scaled and restarted apart.
    pub stages: Stages,
}

/// Which pipeline stages an instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stages {
    /// Both (the account stage only when the rules have an account roll-up).
    #[default]
    All,
    /// The contact stage only.
    Contacts,
    /// The account stage only.
    Accounts,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            batch_max_events: 5000,
            batch_wait: Duration::ZERO,
            max_message_bytes: 1024 * 1024,
            max_contact_id_bytes: 256,
            max_future_skew: Duration::from_secs(3600),
            sweep_interval: Duration::from_secs(10),
            dedup_window: Duration::from_secs(24 * 3600),
            dedup_max_ids: 32,
            state_cache_contacts: 1_000_000,
            rebuild_lost_state: false,
            historical_after: Duration::from_secs(3600),
            shutdown_timeout: Duration::from_secs(30),
            dead_letter_max_bytes: 512 * 1024,
            lane: String::new(),
            max_events_per_second: 0,
            not_before_ms: None,
            stages: Stages::All,
        }
    }
}

/// HTTP listener.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on, e.g. `0.0.0.0:9464`; empty disables the
    /// listener.
    pub listen: String,
    /// Bearer token the read API (`/v1`) requires; unset leaves it open,
    /// which [`Config::check_serving`] allows on loopback only (or with
    /// `allow_anonymous`). Prefer `HOTLEAD_HTTP__TOKEN` or `token_file` to
    /// writing it here.
    pub token: Option<String>,
    /// A file holding the bearer token; read once at start.
    pub token_file: Option<PathBuf>,
    /// Serve the read API without a token on an address beyond loopback
    /// (`0.0.0.0`, a LAN address): anyone who reaches it reads contact
    /// data. Off by default; the service then refuses to start that way.
    pub allow_anonymous: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9464".into(), token: None, token_file: None, allow_anonymous: false }
    }
}

impl HttpConfig {
    /// Whether the listener is reachable from this machine only: off (empty)
    /// or bound to a loopback address (`127.0.0.0/8`, `::1`,
    /// `::ffff:127.0.0.1`).
    pub fn is_loopback_only(&self) -> bool {
        self.listen.is_empty() || self.listen.parse::<SocketAddr>().is_ok_and(|a| a.ip().to_canonical().is_loopback())
    }
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

/// What hotlead keeps to itself.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Profile attributes never served: left out of the contact answer
    /// (`GET /v1/contacts/{id}`, the board, `hotlead score`); no other
    /// answer or alert carries profile attributes. They are still kept and
    /// scored when a fit rule reads them (or `keep_attributes:` names them).
    /// A list (`["job_title"]`), or names separated by commas
    /// (`HOTLEAD_PRIVACY__HIDDEN_ATTRIBUTES=job_title,country`).
    #[serde(deserialize_with = "attribute_names")]
    pub hidden_attributes: BTreeSet<String>,
}

impl PrivacyConfig {
    /// Whether the attribute `name` may be served.
    pub fn serves(&self, name: &str) -> bool {
        !self.hidden_attributes.contains(name)
    }
}

/// Attribute names: a list, or one string of names separated by commas;
/// each trimmed, none empty.
fn attribute_names<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeSet<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Names {
        List(Vec<String>),
        Text(String),
    }
    let names: Vec<String> = match Names::deserialize(d)? {
        Names::List(list) => list,
        Names::Text(text) if text.trim().is_empty() => Vec::new(),
        Names::Text(text) => text.split(',').map(str::to_string).collect(),
    };
    names
        .into_iter()
        .map(|n| {
            let n = n.trim().to_string();
            if n.is_empty() {
                Err(serde::de::Error::custom("an attribute name is empty; write e.g. `[\"job_title\", \"country\"]`"))
            } else {
                Ok(n)
            }
        })
        .collect()
}

fn default_kafka() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("bootstrap.servers".into(), "127.0.0.1:9092".into());
    m
}

fn kafka_props<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    let raw = BTreeMap::<String, V>::deserialize(d)?;
    let mut m = default_kafka();
    for (k, v) in raw {
        let s = match v {
            V::S(s) => s,
            V::I(i) => i.to_string(),
            V::F(f) => f.to_string(),
            V::B(b) => b.to_string(),
        };
        m.insert(k, s);
    }
    Ok(m)
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration ({e}); write e.g. `20ms` or `1h`")))
}

/// librdkafka properties that only a consumer understands; they are left out
/// of the producer's configuration.
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "auto.offset.reset",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.commit.interval.ms",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "fetch.min.bytes",
    "fetch.wait.max.ms",
    "queued.max.messages.kbytes",
    "fetch.max.bytes",
    "max.partition.fetch.bytes",
    "isolation.level",
];

impl Config {
    /// Loads `path` (or the defaults when `None`), applies the environment's
    /// `HOTLEAD_*` overrides and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|source| ConfigError::Io { path: p.display().to_string(), source })?,
            None => String::new(),
        };
        Self::from_parts(&text, std::env::vars())
    }

    /// Builds a configuration from TOML text and `(name, value)` environment
    /// pairs; only names starting with `HOTLEAD_` and containing `__` apply.
    pub fn from_parts(toml_text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(toml_text)
            .map_err(|e| ConfigError::Parse { field: "(file)".into(), message: e.to_string() })?;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("HOTLEAD_") else {
                continue;
            };
            let Some((section, field)) = rest.split_once("__") else {
                continue;
            };
            let section = section.to_ascii_lowercase();
            let (field, value) = if section == "kafka" {
                (field.to_ascii_lowercase().replace('_', "."), toml::Value::String(value))
            } else {
                (field.to_ascii_lowercase(), env_value(&value))
            };
            let entry = table.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => {
                    t.insert(field, value);
                }
                _ => {
                    return Err(ConfigError::Parse {
                        field: section,
                        message: format!("{name} overrides a field of a section that is not a table"),
                    })
                }
            }
        }
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::Parse { field: e.path().to_string(), message: e.into_inner().to_string() })?;
        config.read_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the secrets given as files: `redis.password_file`,
    /// `http.token_file`, and any `[kafka]` property `<name>.file` (e.g.
    /// `sasl.password.file`, or `HOTLEAD_KAFKA__SASL_PASSWORD_FILE`), which
    /// sets `<name>` to the file's content.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.redis.password_file {
            self.redis.password = Some(read_secret("redis.password_file", path)?);
        }
        if let Some(path) = &self.http.token_file {
            self.http.token = Some(read_secret("http.token_file", path)?);
        }
        let files: Vec<(String, String)> =
            self.kafka.iter().filter(|(k, _)| k.ends_with(".file")).map(|(k, v)| (k.clone(), v.clone())).collect();
        for (key, path) in files {
            let secret = read_secret(&format!("kafka.{key}"), Path::new(&path))?;
            self.kafka.remove(&key);
            self.kafka.insert(key.trim_end_matches(".file").to_string(), secret);
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid { field: field.into(), message };
        if self.kafka.get("bootstrap.servers").is_none_or(|s| s.trim().is_empty()) {
            return Err(invalid(
                "kafka.bootstrap.servers",
                "must name at least one broker, e.g. `127.0.0.1:9092`".into(),
            ));
        }
        if self.kafka.get("enable.auto.offset.store").is_some_and(|v| v != "false") {
            return Err(invalid(
                "kafka.enable.auto.offset.store",
                "must stay `false`: hotlead stores an offset only after its effects are durable; remove the setting"
                    .into(),
            ));
        }
        for (field, name) in [
            ("topics.input", &self.topics.input),
            ("topics.alerts", &self.topics.alerts),
            ("topics.dead_letter", &self.topics.dead_letter),
            ("topics.erasures", &self.topics.erasures),
            ("topics.shadow_alerts", &self.topics.shadow_alerts),
            ("topics.account_contributions", &self.topics.account_contributions),
            ("topics.account_alerts", &self.topics.account_alerts),
        ] {
            if name.is_empty()
                || name.len() > 249
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(invalid(field, format!("`{name}` is not a valid Kafka topic name")));
            }
        }
        let lane = &self.pipeline.lane;
        if lane.len() > 64 || !lane.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return Err(invalid(
                "pipeline.lane",
                format!("`{lane}`: use letters, digits, `.`, `_` and `-` (at most 64)"),
            ));
        }
        let first_url = self.redis.url.split(',').next().unwrap_or("").trim();
        if let Err(e) = redis::Client::open(first_url) {
            return Err(invalid(
                "redis.url",
                format!(
                    "`{}` is not a Redis URL ({e}); write e.g. `redis://127.0.0.1:6379`",
                    redact_url(&self.redis.url)
                ),
            ));
        }
        if self.http.token.as_ref().is_some_and(|t| t.trim().is_empty()) {
            let field = if self.http.token_file.is_some() { "http.token_file" } else { "http.token" };
            return Err(invalid(
                field,
                "the token is empty, which any `Authorization: Bearer ` would match; set a long random token \
                 (e.g. `openssl rand -hex 32`) or leave it unset"
                    .into(),
            ));
        }
        if self.rules.editable && self.http.token.is_none() && self.http.token_file.is_none() {
            return Err(invalid(
                "rules.editable",
                "needs `http.token` (or `http.token_file`): only a caller with the token may replace the rules".into(),
            ));
        }
        if self.pipeline.batch_max_events == 0 {
            return Err(invalid("pipeline.batch_max_events", "must be at least 1".into()));
        }
        if self.pipeline.dead_letter_max_bytes < 1024 {
            return Err(invalid(
                "pipeline.dead_letter_max_bytes",
                "must be at least 1024 (a dead letter keeps this much of the payload), e.g. `524288`".into(),
            ));
        }
        if self.pipeline.shutdown_timeout.is_zero() {
            return Err(invalid(
                "pipeline.shutdown_timeout",
                "must be longer than 0s: it is how long a shutdown may finish its work, e.g. `30s`".into(),
            ));
        }
        if self.pipeline.max_contact_id_bytes == 0 || self.pipeline.max_message_bytes == 0 {
            return Err(invalid("pipeline.max_message_bytes", "limits must be at least 1 byte".into()));
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "http.listen",
                format!("`{}` is not an address; write e.g. `127.0.0.1:9464`, or empty to disable", self.http.listen),
            ));
        }
        self.notify.validate()
    }

    /// Checks what serving the read API needs, for the commands that open
    /// its listener (`hotlead run`): beyond loopback, a token or
    /// `http.allow_anonymous = true`. Other commands serve no contact data
    /// and do not call it.
    pub fn check_serving(&self) -> Result<(), ConfigError> {
        if self.http.is_loopback_only() || self.http.token.is_some() || self.http.allow_anonymous {
            Ok(())
        } else {
            Err(ConfigError::OpenBeyondLoopback { listen: self.http.listen.clone() })
        }
    }

    /// The consumer group id (`kafka."group.id"`, default `hotlead`).
    pub fn group_id(&self) -> &str {
        self.kafka.get("group.id").map_or("hotlead", String::as_str)
    }

    /// librdkafka configuration for the pipeline's consumer.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("group.id", "hotlead")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("fetch.wait.max.ms", "100")
            // Read ahead at most 16 MiB (librdkafka's default is 64 MiB):
            // enough to keep every partition worker busy, and memory flat
            // through a backlog.
            .set("queued.max.messages.kbytes", "16384")
            .set("statistics.interval.ms", "1000");
        for (k, v) in &self.kafka {
            c.set(k, v);
        }
        c.set("enable.auto.offset.store", "false");
        c
    }

    /// librdkafka configuration shared by every client: the `[kafka]`
    /// properties less the consumer-only ones (security, bootstrap, tuning).
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.kafka {
            if !CONSUMER_ONLY.contains(&k.as_str()) {
                c.set(k, v);
            }
        }
        c
    }

    /// librdkafka configuration for the alert and dead-letter producer:
    /// idempotent, every replica acknowledges.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "1");
        for (k, v) in self.client_config().config_map().iter() {
            c.set(*k, *v);
        }
        c
    }

    /// How repeats are recognised, from the pipeline settings.
    pub fn dedup(&self) -> crate::engine::Dedup {
        crate::engine::Dedup {
            window_ms: self.pipeline.dedup_window.as_millis() as i64,
            max_ids: self.pipeline.dedup_max_ids,
        }
    }

    /// Decoding limits from the pipeline settings.
    pub fn limits(&self) -> crate::decode::Limits {
        crate::decode::Limits {
            max_message_bytes: self.pipeline.max_message_bytes,
            max_contact_id_bytes: self.pipeline.max_contact_id_bytes,
            max_future_skew_ms: self.pipeline.max_future_skew.as_millis() as i64,
        }
    }
}

fn env_value(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = v.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn defaults_target_the_local_stack() {
        let c = Config::from_parts("", env(&[])).unwrap();
        assert_eq!(c.kafka["bootstrap.servers"], "127.0.0.1:9092");
        assert_eq!(c.redis.url, "redis://127.0.0.1:6379");
        assert_eq!(c.topics.input, "interactions");
        assert_eq!(c.group_id(), "hotlead");
        assert_eq!(c.consumer_config().get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.consumer_config().get("partition.assignment.strategy"), Some("cooperative-sticky"));
        assert_eq!(c.producer_config().get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn file_then_environment() {
        let text = r#"
[kafka]
"bootstrap.servers" = "k:1"
"linger.ms" = 10
[pipeline]
batch_wait = "5ms"
"#;
        let c = Config::from_parts(
            text,
            env(&[
                ("HOTLEAD_KAFKA__SECURITY_PROTOCOL", "SASL_SSL"),
                ("HOTLEAD_PIPELINE__BATCH_MAX_EVENTS", "42"),
                ("HOTLEAD_REDIS__URL", "redis://r:7000"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka["bootstrap.servers"], "k:1");
        assert_eq!(c.kafka["linger.ms"], "10");
        assert_eq!(c.kafka["security.protocol"], "SASL_SSL");
        assert_eq!(c.pipeline.batch_max_events, 42);
        assert_eq!(c.pipeline.batch_wait, Duration::from_millis(5));
        assert_eq!(c.redis.url, "redis://r:7000");
        assert_eq!(c.producer_config().get("security.protocol"), Some("SASL_SSL"));
    }

    #[test]
    fn editable_rules_need_a_token() {
        let e = Config::from_parts("[rules]\neditable = true", env(&[])).unwrap_err();
        assert!(e.to_string().contains("rules.editable") && e.to_string().contains("http.token"), "{e}");
        let c = Config::from_parts("[rules]\neditable = true\n[http]\ntoken = \"t\"", env(&[])).unwrap();
        assert!(c.rules.editable);
    }

    #[test]
    fn an_open_listener_beyond_loopback_needs_a_token_or_consent() {
        let serving = |listen: &str, extra: &str, env_pairs: &[(&str, &str)]| {
            Config::from_parts(&format!("[http]\nlisten = \"{listen}\"\n{extra}"), env(env_pairs))
                .and_then(|c| c.check_serving())
        };
        // Beyond loopback, no token: refused, naming the settings and the fix.
        for listen in ["0.0.0.0:9464", "[::]:9464", "192.168.1.20:9464", "10.0.0.7:80", "[fe80::1]:9464"] {
            let e = serving(listen, "", &[]).unwrap_err();
            assert!(matches!(e, ConfigError::OpenBeyondLoopback { .. }), "{listen}: {e}");
            let text = e.to_string();
            for name in
                [listen, "http.listen", "http.token", "http.token_file", "HOTLEAD_HTTP__TOKEN", "http.allow_anonymous"]
            {
                assert!(text.contains(name), "{listen}: `{name}` missing from: {text}");
            }
        }
        // Loopback (or off) needs nothing.
        for listen in ["127.0.0.1:9464", "127.8.9.10:1", "[::1]:9464", "[::ffff:127.0.0.1]:9464", ""] {
            serving(listen, "", &[]).unwrap_or_else(|e| panic!("{listen}: {e}"));
        }
        // A token, from any of its sources, or consent to serve it open.
        serving("0.0.0.0:9464", "token = \"t0k\"", &[]).unwrap();
        serving("0.0.0.0:9464", "", &[("HOTLEAD_HTTP__TOKEN", "t0k")]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t0k\n").unwrap();
        let file = dir.path().join("token").display().to_string();
        serving("0.0.0.0:9464", &format!("token_file = \"{file}\""), &[]).unwrap();
        serving("0.0.0.0:9464", "allow_anonymous = true", &[]).unwrap();
        serving("[::]:9464", "", &[("HOTLEAD_HTTP__ALLOW_ANONYMOUS", "true")]).unwrap();
        // The default configuration serves on loopback.
        Config::from_parts("", env(&[])).unwrap().check_serving().unwrap();
    }

    #[test]
    fn an_empty_token_is_refused() {
        let e = Config::from_parts("", env(&[("HOTLEAD_HTTP__TOKEN", "")])).unwrap_err();
        assert!(e.to_string().contains("http.token") && e.to_string().contains("empty"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "\n").unwrap();
        let file = dir.path().join("token").display().to_string();
        let e = Config::from_parts(&format!("[http]\ntoken_file = \"{file}\""), env(&[])).unwrap_err();
        assert!(e.to_string().contains("http.token_file"), "{e}");
    }

    #[test]
    fn hidden_attributes_from_a_list_or_the_environment() {
        let c = Config::from_parts("[privacy]\nhidden_attributes = [\"job_title\", \" country \"]", env(&[])).unwrap();
        assert_eq!(c.privacy.hidden_attributes, BTreeSet::from(["country".to_string(), "job_title".to_string()]));
        assert!(!c.privacy.serves("job_title") && c.privacy.serves("industry"));
        let c = Config::from_parts("", env(&[("HOTLEAD_PRIVACY__HIDDEN_ATTRIBUTES", "job_title,country")])).unwrap();
        assert_eq!(c.privacy.hidden_attributes.len(), 2);
        assert!(Config::from_parts("", env(&[])).unwrap().privacy.hidden_attributes.is_empty());
        let e = Config::from_parts("[privacy]\nhidden_attributes = [\"a\", \"\"]", env(&[])).unwrap_err();
        assert!(e.to_string().contains("privacy.hidden_attributes"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::from_parts("[pipeline]\nbatch_wait = \"soon\"", env(&[])).unwrap_err();
        assert!(e.to_string().contains("pipeline.batch_wait"), "{e}");
        let e = Config::from_parts("[pipeline]\nbatch_size = 3", env(&[])).unwrap_err();
        assert!(e.to_string().contains("batch_size"), "{e}");
        let e = Config::from_parts("", env(&[("HOTLEAD_REDIS__URL", "mysql://x")])).unwrap_err();
        assert!(e.to_string().contains("redis.url"), "{e}");
        let e = Config::from_parts("", env(&[("HOTLEAD_PIPELINE__BATCH_MAX_EVENTS", "0")])).unwrap_err();
        assert!(e.to_string().contains("pipeline.batch_max_events"), "{e}");
        let e = Config::from_parts("[kafka]\n\"enable.auto.offset.store\" = true", env(&[])).unwrap_err();
        assert!(e.to_string().contains("kafka.enable.auto.offset.store"), "{e}");
        let e = Config::from_parts("[http]\nlisten = \"nowhere\"", env(&[])).unwrap_err();
        assert!(e.to_string().contains("http.listen"), "{e}");
    }

    #[test]
    fn kafka_tls_and_scram_pass_through_with_secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("sasl");
        std::fs::write(&secret, "s3cr3t-from-file\n").unwrap();
        let c = Config::from_parts(
            r#"
[kafka]
"bootstrap.servers" = "127.0.0.1:9"
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "hotlead"
"#,
            env(&[("HOTLEAD_KAFKA__SASL_PASSWORD_FILE", &secret.display().to_string())]),
        )
        .unwrap();
        assert_eq!(c.kafka["sasl.password"], "s3cr3t-from-file");
        assert!(!c.kafka.contains_key("sasl.password.file"));
        assert!(!format!("{c:?}").contains("s3cr3t"), "Debug redacts secrets");
        // The Kafka client is built with TLS and SCRAM: it accepts them.
        let _: rdkafka::consumer::BaseConsumer = c.consumer_config().create().unwrap();
        let _: rdkafka::producer::BaseProducer = c.producer_config().create().unwrap();
        let e = Config::from_parts("[redis]\npassword_file = \"/nonexistent/pw\"", env(&[])).unwrap_err();
        assert!(e.to_string().contains("redis.password_file"), "{e}");
    }

    #[test]
    fn redis_urls_are_redacted() {
        assert_eq!(redact_url("redis://u:pw@h:1,rediss://:pw@h:2/0"), "redis://u:***@h:1,rediss://:***@h:2/0");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        let e = Config::from_parts("[redis]\nurl = \"http://u:topsecret@h\"", env(&[])).unwrap_err();
        assert!(!e.to_string().contains("topsecret"), "{e}");
    }
}
