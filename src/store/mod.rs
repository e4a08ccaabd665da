//! Contact state, leaderboards, outbox and offset watermarks in Redis.
//!
//! Every key a source partition owns carries the partition's hash tag,
//! `hl:{<topic>:<partition>}`, so one partition batch commits atomically in
//! one Redis Function call (`hotlead_commit`, in `commit.lua`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `hl:{interactions:7}:states` | hash | each contact's whole state, binary ([`codec`]), by contact id |
//! | `hl:{interactions:7}:lb:<model>` | sorted set | contacts at or above the model's leaderboard floor, by `log2(s) + (t - E)/H` |
//! | `hl:{interactions:7}:cool:<model>` | sorted set | contacts above the base tier, by the time decay takes them below their tier's exit |
//! | `hl:{interactions:7}:outbox` | stream | alerts and dead letters not yet delivered |
//! | `hl:{interactions:7}:recent` | stream | the latest ~200 alerts (capped), for the board |
//! | `hl:{interactions:7}:wm` | string | offset of the last event applied |
//! | `hl:{interactions:7}:epoch` | string | owner epoch; fences stale owners |
//! | `hl:{interactions:7}:roles` | string | models' roles after a promotion: `model=live,other=shadow` |
//! | `hl:{interactions:7}:erased` | hash | tombstones of erased contacts: SHA-1 of the id -> offset of the erasure |
//!
//! A back-filled shadow lane keeps the same keys under its own prefix,
//! `hl:lane:<name>:{interactions:7}:...` ([`namespace_of`]).
//!
//! One hash holds the partition's contacts: a contact costs its id and its
//! value, not a key of its own.
//!
//! A contact written by hotlead before the binary state is a key of its own
//! (`hl:{interactions:7}:c:<contact_id>`), a hash of text fields
//! ([`text_fields`]); it is read as it is ([`decode_stored`]) and moves into
//! the partition's hash, binary, at its next write (its old key deleted in
//! the same commit), so a running deployment upgrades in place.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use redis::aio::ConnectionManager;

pub use crate::codec;
mod plan;

pub use plan::{commit_for, dead_letter, index_fingerprint, prune_for, Entries, Outputs, Stored, Written};
pub use plan::{HEADER_ERROR, HEADER_REASON, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC};
pub use plan::{HEADER_PAYLOAD_BYTES, HEADER_PAYLOAD_SHA256, HEADER_TRUNCATED};

use crate::rules::{Model, RuleSet};
use crate::score::{CapUse, ContactState, ModelState};

/// The Redis Function library, loaded at start-up.
pub const FUNCTION_LIBRARY: &str = include_str!("commit.lua");

/// Why a Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another owner holds the partition: this instance must stop writing it.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The partition's watermark moved under us.
    #[error("watermark mismatch: {0}")]
    WatermarkMismatch(String),
    /// The partition has no owner epoch: its state is gone from Redis
    /// (flushed, evicted or replaced while hotlead ran).
    #[error("state lost: {0}")]
    StateGone(String),
    /// A TLS certificate or key file named in the configuration cannot be
    /// read.
    #[error("cannot read the TLS file {path}: {source}")]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration names no Redis URL.
    #[error("redis.url names no Redis server")]
    NoUrl,
    /// Stored state could not be read back.
    #[error("corrupt state at {key}: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl StoreError {
    /// True when this instance lost ownership of the partition, rather than
    /// Redis failing.
    pub fn is_ownership(&self) -> bool {
        matches!(self, Self::Fenced(_) | Self::WatermarkMismatch(_) | Self::StateGone(_))
    }
}

/// The key names of one source partition.
#[derive(Debug, Clone)]
pub struct PartitionKeys {
    tag: String,
}

/// The key prefix of the live lane; a back-filled shadow lane `name` keeps
/// its keys under `hl:lane:<name>` ([`namespace_of`]).
pub const LIVE_NAMESPACE: &str = "hl";

/// The key prefix of a lane (`""` is the live lane).
pub fn namespace_of(lane: &str) -> String {
    if lane.is_empty() {
        LIVE_NAMESPACE.to_string()
    } else {
        format!("{LIVE_NAMESPACE}:lane:{lane}")
    }
}

impl PartitionKeys {
    /// Keys of the live lane for `topic` partition `partition`.
    pub fn new(topic: &str, partition: i32) -> Self {
        Self::in_namespace(LIVE_NAMESPACE, topic, partition)
    }

    /// Keys for `topic` partition `partition` under the key prefix
    /// `namespace` ([`namespace_of`]).
    pub fn in_namespace(namespace: &str, topic: &str, partition: i32) -> Self {
        Self { tag: format!("{namespace}:{{{topic}:{partition}}}") }
    }
    /// The key of a contact stored in the text layout of earlier versions.
    pub fn contact(&self, contact_id: &str) -> String {
        format!("{}:c:{contact_id}", self.tag)
    }
    /// The partition's contact states, by contact id.
    pub fn states(&self) -> String {
        format!("{}:states", self.tag)
    }
    /// A model's leaderboard.
    pub fn leaderboard(&self, model: &str) -> String {
        format!("{}:lb:{model}", self.tag)
    }
    /// A model's cooling schedule: contacts by the time decay takes them
    /// below their tier's exit.
    pub fn cooling(&self, model: &str) -> String {
        format!("{}:cool:{model}", self.tag)
    }
    /// The capped stream of recent alerts (for the hot-leads board).
    pub fn recent_alerts(&self) -> String {
        format!("{}:recent", self.tag)
    }

    /// The tombstones of erased contacts: SHA-1 of the id -> input offset
    /// of the erasure.
    pub fn erased(&self) -> String {
        format!("{}:erased", self.tag)
    }
    /// The models' roles on the partition after a promotion
    /// (`model=live,other=shadow`), set in the commit that applied it.
    pub fn roles(&self) -> String {
        format!("{}:roles", self.tag)
    }
    /// The outbox stream.
    pub fn outbox(&self) -> String {
        format!("{}:outbox", self.tag)
    }
    /// The offset watermark.
    pub fn watermark(&self) -> String {
        format!("{}:wm", self.tag)
    }
    /// The owner epoch.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.tag)
    }
    /// The half-life and tiers a model's sorted sets are indexed for.
    pub fn index_fingerprint(&self, model: &str) -> String {
        format!("{}:ix:{model}", self.tag)
    }
    /// The vocabularies the partition's contact states were written in, by
    /// fingerprint.
    pub fn vocabulary(&self) -> String {
        format!("{}:vocab", self.tag)
    }
    /// The id of the last commit applied (a retried commit is recognised).
    pub fn last_commit(&self) -> String {
        format!("{}:cid", self.tag)
    }
}

/// A contact's value as read from Redis.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredValue {
    /// No key: a contact with no history.
    Absent,
    /// Erased: a tombstone stands for it.
    Erased,
    /// The binary state ([`codec`]), with the vocabulary it was written in
    /// when that is not the reader's.
    Binary(Vec<u8>, Option<Vec<String>>),
    /// The text layout of earlier versions: a hash of [`text_fields`].
    Text(HashMap<String, Vec<u8>>),
}

impl StoredValue {
    /// True for a contact with no history.
    pub fn is_absent(&self) -> bool {
        matches!(self, Self::Absent)
    }
}

impl redis::FromRedisValue for StoredValue {
    /// The reply of `hotlead_load` for one contact: nil, `["b", value]`,
    /// `["b", value, vocabulary]` or `["h", field, value, ...]`.
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        let items = match v {
            redis::Value::Nil => return Ok(Self::Absent),
            redis::Value::Array(items) => items,
            other => return Err(format!("a contact is an array, not {other:?}").into()),
        };
        let mut items = items.into_iter();
        let kind: String = redis::FromRedisValue::from_redis_value(items.next().unwrap_or(redis::Value::Nil))?;
        match kind.as_str() {
            "b" => {
                let value: Vec<u8> =
                    redis::FromRedisValue::from_redis_value(items.next().unwrap_or(redis::Value::Nil))?;
                let vocabulary: Option<Vec<u8>> = match items.next() {
                    Some(v) => redis::FromRedisValue::from_redis_value(v)?,
                    None => None,
                };
                let vocabulary =
                    vocabulary.map(|v| String::from_utf8_lossy(&v).split('\0').map(str::to_string).collect());
                Ok(Self::Binary(value, vocabulary))
            }
            "x" => Ok(Self::Erased),
            "h" => {
                let fields: HashMap<String, Vec<u8>> =
                    redis::FromRedisValue::from_redis_value(redis::Value::Array(items.collect()))?;
                Ok(if fields.is_empty() { Self::Absent } else { Self::Text(fields) })
            }
            k => Err(format!("a contact of unknown kind `{k}`").into()),
        }
    }
}

/// The text a vocabulary is stored as: its names, each ended by a zero byte
/// but the last.
pub fn vocabulary_text(names: &[String]) -> String {
    names.join("\0")
}

/// A contact's account id and state from its stored value, binary or text.
pub fn decode_stored(rules: &RuleSet, v: &StoredValue) -> Result<(Option<String>, ContactState), codec::CodecError> {
    match v {
        StoredValue::Absent | StoredValue::Erased => Ok((None, ContactState::new(rules.models.len()))),
        StoredValue::Binary(b, vocabulary) => codec::decode(rules, b, vocabulary.as_deref()),
        StoredValue::Text(fields) => Ok(decode_text(rules, fields)),
    }
}

/// Hash field holding the contact's account id.
pub const ACCOUNT_FIELD: &str = "account";
/// Hash field holding the recently applied event ids: `hash:ms;...` (hex).
pub const SEEN_FIELD: &str = "seen";
/// Hash field holding the contact's profile attributes as JSON
/// (`{"job_title": ["Founder", <event time ms>]}`).
pub const PROFILE_FIELD: &str = "profile";

fn join<T>(map: &BTreeMap<String, T>, value: impl Fn(&T) -> String) -> String {
    let mut out = String::new();
    for (k, v) in map {
        if !out.is_empty() {
            out.push(';');
        }
        let _ = write!(out, "{k}={}", value(v));
    }
    out
}

fn split<T>(text: Option<&str>, value: impl Fn(&str) -> Option<T>) -> BTreeMap<String, T> {
    text.unwrap_or("")
        .split(';')
        .filter(|s| !s.is_empty())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), value(v)?))
        })
        .collect()
}

/// The text fields of one model's state (the text layout of earlier
/// versions, and the readable form). Floats are written in their shortest
/// exact form, so a round trip loses nothing:
///
/// | field | holds |
/// |---|---|
/// | `<model>:s` | behaviour score at `<model>:t` |
/// | `<model>:t` | time of the latest event applied (ms) |
/// | `<model>:tier` | current tier |
/// | `<model>:c` | behaviour contributions, `rule=points;...` at `<model>:t` |
/// | `<model>:f` | fit points, `rule=points;...` |
/// | `<model>:k` | cap use, `rule=window:hits:points;...` |
/// | `<model>:a` | last alert into each tier, `tier=ms;...` |
/// | `<model>:v` | the model version that last scored it |
pub fn encode_model_state(model: &Model, st: &ModelState) -> Vec<(String, String)> {
    let m = &model.name;
    let mut fields = vec![
        (format!("{m}:s"), format!("{:?}", st.score)),
        (format!("{m}:t"), st.at_ms.to_string()),
        (format!("{m}:tier"), model.tier_name(st.tier).to_string()),
        (format!("{m}:c"), join(&st.contributions, |p| format!("{p:?}"))),
        (format!("{m}:f"), join(&st.fit, |p| format!("{p:?}"))),
        (format!("{m}:k"), join(&st.caps, |u| format!("{}:{}:{:?}", u.window, u.hits, u.points))),
        (format!("{m}:a"), join(&st.alerted, |t| t.to_string())),
        (format!("{m}:v"), model.version.to_string()),
    ];
    if st.settled_ms != 0 {
        fields.push((format!("{m}:w"), st.settled_ms.to_string()));
    }
    fields
}

/// Reads one model's state back from its text fields; `None` if the
/// contact has no state in this model.
pub fn decode_model_state(model: &Model, fields: &HashMap<String, Vec<u8>>) -> Option<ModelState> {
    let m = &model.name;
    let get = |f: &str| fields.get(&format!("{m}:{f}")).and_then(|v| std::str::from_utf8(v).ok());
    let score = get("s")?.parse::<f64>().ok()?;
    let at_ms = get("t")?.parse::<i64>().ok()?;
    let tier = model.tier_index(get("tier").unwrap_or(""));
    Some(ModelState {
        score,
        at_ms,
        tier,
        contributions: split(get("c"), |v| v.parse().ok()),
        fit: split(get("f"), |v| v.parse().ok()),
        caps: split(get("k"), |v| {
            let mut it = v.splitn(3, ':');
            Some(CapUse {
                window: it.next()?.parse().ok()?,
                hits: it.next()?.parse().ok()?,
                points: it.next()?.parse().ok()?,
            })
        }),
        alerted: split(get("a"), |v| v.parse().ok()),
        settled_ms: get("w").and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

/// The text fields of a contact's whole state: the layout of earlier
/// versions, and the readable form tests and the fault harness compare.
pub fn text_fields(rules: &RuleSet, account: Option<&str>, c: &ContactState) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    if let Some(a) = account {
        fields.push((ACCOUNT_FIELD.to_string(), a.to_string()));
    }
    if !c.profile.is_empty() {
        fields.push((PROFILE_FIELD.to_string(), serde_json::to_string(&c.profile).unwrap_or_default()));
    }
    if !c.seen.is_empty() {
        let seen: Vec<String> = c.seen.iter().map(|(h, t)| format!("{h:x}:{t}")).collect();
        fields.push((SEEN_FIELD.to_string(), seen.join(";")));
    }
    for (model, st) in rules.models.iter().zip(&c.models) {
        if let Some(st) = st {
            fields.extend(encode_model_state(model, st));
        }
    }
    fields
}

/// Reads a contact's state (and account id) back from its text layout.
pub fn decode_text(rules: &RuleSet, fields: &HashMap<String, Vec<u8>>) -> (Option<String>, ContactState) {
    let account = fields.get(ACCOUNT_FIELD).and_then(|v| String::from_utf8(v.clone()).ok());
    let profile = fields.get(PROFILE_FIELD).and_then(|v| serde_json::from_slice(v).ok()).unwrap_or_default();
    let models = rules.models.iter().map(|m| decode_model_state(m, fields)).collect();
    let seen = fields
        .get(SEEN_FIELD)
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or("")
        .split(';')
        .filter_map(|e| {
            let (h, t) = e.split_once(':')?;
            // Earlier versions kept 64 bits of the hash; the state keeps 48.
            // and arrivals to the second.
            let t: i64 = t.parse().ok()?;
            Some((u64::from_str_radix(h, 16).ok()? & crate::score::EVENT_HASH_MASK, t - t.rem_euclid(1000)))
        })
        .collect();
    (account, ContactState { profile, models, seen, links: Default::default(), account_at: 0 })
}

/// Encodes and decodes a contact state, as a commit and a later read do.
pub fn round_trip(rules: &RuleSet, c: &ContactState) -> ContactState {
    let mut b = Vec::new();
    codec::encode(rules, None, c, &mut b);
    codec::decode(rules, &b, None).map(|(_, c)| c).unwrap_or_else(|e| panic!("a state reads back: {e}"))
}

/// The fields of one stream entry, in order.
type StreamFields = Vec<(String, Vec<u8>)>;

/// A message waiting in a partition's outbox for the relay.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Destination topic.
    pub topic: String,
    /// Message key.
    pub key: Vec<u8>,
    /// Message payload.
    pub payload: Vec<u8>,
    /// Message headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The partition to produce to; `None`: the one the key gives.
    pub partition: Option<i32>,
}

impl OutboxEntry {
    fn to_fields(&self) -> Vec<(String, Vec<u8>)> {
        let mut f = vec![
            ("topic".to_string(), self.topic.as_bytes().to_vec()),
            ("key".to_string(), self.key.clone()),
            ("payload".to_string(), self.payload.clone()),
        ];
        for (k, v) in &self.headers {
            f.push((format!("h.{k}"), v.clone()));
        }
        if let Some(p) = self.partition {
            f.push(("partition".to_string(), p.to_string().into_bytes()));
        }
        f
    }

    fn from_fields(fields: &[(String, Vec<u8>)]) -> Option<Self> {
        let mut e =
            OutboxEntry { topic: String::new(), key: vec![], payload: vec![], headers: vec![], partition: None };
        for (k, v) in fields {
            match k.as_str() {
                "topic" => e.topic = String::from_utf8(v.clone()).ok()?,
                "key" => e.key = v.clone(),
                "payload" => e.payload = v.clone(),
                "partition" => e.partition = std::str::from_utf8(v).ok()?.parse().ok(),
                h => e.headers.push((h.strip_prefix("h.")?.to_string(), v.clone())),
            }
        }
        (!e.topic.is_empty()).then_some(e)
    }
}

/// One contact's new value.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactWrite {
    /// The contact id.
    pub contact: String,
    /// The binary state ([`codec`]), shared with what the commit plan keeps
    /// as written; `None` deletes it.
    pub value: Option<std::sync::Arc<[u8]>>,
    /// Whether the contact also has a key in the text layout of earlier
    /// versions, deleted with this write.
    pub legacy: bool,
}

/// One sorted-set entry to set or remove.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryWrite {
    /// The model whose sorted set it is.
    pub model: String,
    /// The member: a contact id.
    pub contact: String,
    /// The entry's score; `None` removes the member.
    pub score: Option<f64>,
}

/// Everything one partition batch changes, committed in one call.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// Owner epoch this instance holds.
    pub epoch: i64,
    /// Watermark this batch continues from (`None`: the partition is new).
    pub expected_watermark: Option<i64>,
    /// Offset of the last message in the batch.
    pub new_watermark: i64,
    /// Unique per owner epoch: a retry of this commit is recognised and not
    /// applied twice.
    pub id: String,
    /// Contact values to set.
    pub contacts: Vec<ContactWrite>,
    /// Leaderboard changes (the entry score is the leaderboard value).
    pub leaderboard: Vec<EntryWrite>,
    /// Leaderboard entries to remove below a value, per model: contacts
    /// that decayed under the floor.
    pub prune: Vec<(String, f64)>,
    /// Cooling schedule changes (the entry score is the due time in ms).
    pub cooling: Vec<EntryWrite>,
    /// Alerts and dead letters to relay.
    pub outbox: Vec<OutboxEntry>,
    /// Alert payloads to keep in the recent-alerts stream.
    pub recent_alerts: Vec<Vec<u8>>,
    /// Strings of the partition to set: full key and value.
    pub strings: Vec<(String, String)>,
    /// A vocabulary to record (fingerprint, names), before the values that
    /// use it.
    pub vocabulary: Option<(u32, Vec<String>)>,
    /// Contacts erased: a tombstone of each id's hash is kept, and the
    /// recent alerts naming them are dropped.
    pub erased: Vec<String>,
    /// Entries of the recent-alerts stream to drop (by stream id): account
    /// alerts that name an erased contact.
    pub forget_recent: Vec<String>,
}

/// A connection to a single Redis or to a Redis Cluster.
#[derive(Clone)]
pub enum Connection {
    /// A single Redis (reconnects by itself).
    Single(ConnectionManager),
    /// A Redis Cluster (routes each command by its key's slot).
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(_) => 0,
        }
    }
}

/// Redis access for one hotlead instance.
#[derive(Clone)]
pub struct Store {
    conn: Connection,
    /// Key prefix of the lane this handle reads and writes.
    namespace: std::sync::Arc<str>,
}

impl Store {
    /// Connects to a single Redis and loads the `hotlead` function library.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_to(url, false).await
    }

    /// Connects to a single Redis, or with `cluster` to a Redis Cluster whose
    /// seed nodes `urls` lists (comma-separated), and loads the `hotlead`
    /// function library (on every primary of a cluster).
    pub async fn connect_to(urls: &str, cluster: bool) -> Result<Self, StoreError> {
        Self::connect_with(&crate::config::RedisConfig { url: urls.into(), cluster, ..Default::default() }).await
    }

    /// Connects as the configuration says: URLs, cluster, ACL user,
    /// password (from its file) and TLS certificates for `rediss://`.
    pub async fn connect_with(c: &crate::config::RedisConfig) -> Result<Self, StoreError> {
        use redis::IntoConnectionInfo as _;
        // rustls needs a process-wide crypto provider for `rediss://`.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let read = |path: &Option<std::path::PathBuf>| -> Result<Option<Vec<u8>>, StoreError> {
            path.as_ref()
                .map(|p| std::fs::read(p).map_err(|source| StoreError::TlsFile { path: p.clone(), source }))
                .transpose()
        };
        let root_cert = read(&c.tls_ca_file)?;
        let client_tls = match (read(&c.tls_cert_file)?, read(&c.tls_key_file)?) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig { client_cert: cert, client_key: key }),
            _ => None,
        };
        let tls =
            (root_cert.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates { client_tls, root_cert });
        let mut infos = Vec::new();
        for url in c.url.split(',').map(str::trim) {
            let info = url.into_connection_info()?;
            let mut settings = info.redis_settings().clone();
            if let Some(user) = &c.username {
                settings = settings.set_username(user);
            }
            if let Some(password) = &c.password {
                settings = settings.set_password(password);
            }
            infos.push(info.set_redis_settings(settings));
        }
        let mut conn = if c.cluster {
            let mut builder = redis::cluster::ClusterClientBuilder::new(infos);
            if let Some(tls) = tls {
                builder = builder.certs(tls);
            }
            let client = builder.build()?;
            Connection::Cluster(client.get_async_connection().await?)
        } else {
            let info = infos.into_iter().next().ok_or(StoreError::NoUrl)?;
            let client = match tls {
                Some(tls) => redis::Client::build_with_tls(info, tls)?,
                None => redis::Client::open(info)?,
            };
            Connection::Single(client.get_connection_manager().await?)
        };
        redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(FUNCTION_LIBRARY)
            .query_async::<redis::Value>(&mut conn)
            .await?;
        Ok(Self { conn, namespace: LIVE_NAMESPACE.into() })
    }

    /// The same connection, reading and writing the keys of `lane` (`""`:
    /// the live lane).
    pub fn for_lane(&self, lane: &str) -> Self {
        Self { conn: self.conn.clone(), namespace: namespace_of(lane).into() }
    }

    /// The keys of `topic` partition `partition` in this handle's lane.
    pub fn keys(&self, topic: &str, partition: i32) -> PartitionKeys {
        PartitionKeys::in_namespace(&self.namespace, topic, partition)
    }

    /// A connection for ad-hoc commands.
    pub fn connection(&self) -> Connection {
        self.conn.clone()
    }

    /// Reads the values of these contacts of one partition (one call of
    /// the `hotlead_load` function), in order; a value written in another
    /// vocabulary than that of `rules` comes with it.
    pub async fn load_contacts(
        &self,
        keys: &PartitionKeys,
        rules: &RuleSet,
        contact_ids: &[&str],
    ) -> Result<Vec<StoredValue>, StoreError> {
        if contact_ids.is_empty() {
            return Ok(vec![]);
        }
        Ok(load_command(keys, rules, contact_ids).query_async(&mut self.conn.clone()).await?)
    }

    /// Commits one partition batch atomically; returns the outbox length.
    pub async fn commit(&self, keys: &PartitionKeys, c: &Commit) -> Result<u64, StoreError> {
        let mut cmd = redis::cmd("FCALL");
        let mut key_list: Vec<String> =
            vec![keys.epoch(), keys.watermark(), keys.outbox(), keys.recent_alerts(), keys.last_commit()];
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut key_index = |k: String, list: &mut Vec<String>| -> usize {
            *index.entry(k.clone()).or_insert_with(|| {
                list.push(k);
                list.len()
            })
        };
        let mut args: Vec<Vec<u8>> = vec![
            c.epoch.to_string().into_bytes(),
            c.expected_watermark.map(|w| w.to_string()).unwrap_or_default().into_bytes(),
            c.new_watermark.to_string().into_bytes(),
            c.id.as_bytes().to_vec(),
        ];
        if let Some((id, names)) = &c.vocabulary {
            let i = key_index(keys.vocabulary(), &mut key_list);
            args.push(b"V".to_vec());
            args.push(i.to_string().into_bytes());
            args.push(id.to_le_bytes().to_vec());
            args.push(vocabulary_text(names).into_bytes());
        }
        for ContactWrite { contact, value, legacy } in &c.contacts {
            let i = key_index(keys.states(), &mut key_list);
            match value {
                Some(value) => {
                    args.push(b"C".to_vec());
                    args.push(i.to_string().into_bytes());
                    args.push(contact.as_bytes().to_vec());
                    args.push(value.to_vec());
                }
                None => {
                    args.push(b"E".to_vec());
                    args.push(i.to_string().into_bytes());
                    args.push(contact.as_bytes().to_vec());
                }
            }
            if *legacy {
                let j = key_index(keys.contact(contact), &mut key_list);
                args.push(b"D".to_vec());
                args.push(j.to_string().into_bytes());
            }
        }
        let sets = c.leaderboard.iter().map(|e| (keys.leaderboard(&e.model), &e.contact, e.score));
        let sets = sets.chain(c.cooling.iter().map(|e| (keys.cooling(&e.model), &e.contact, e.score)));
        for (key, contact, z) in sets {
            let i = key_index(key, &mut key_list);
            match z {
                Some(z) => {
                    args.push(b"Z".to_vec());
                    args.push(i.to_string().into_bytes());
                    args.push(format!("{z:?}").into_bytes());
                }
                None => {
                    args.push(b"R".to_vec());
                    args.push(i.to_string().into_bytes());
                }
            }
            args.push(contact.as_bytes().to_vec());
        }
        for (model, below) in &c.prune {
            let i = key_index(keys.leaderboard(model), &mut key_list);
            args.push(b"P".to_vec());
            args.push(i.to_string().into_bytes());
            args.push(format!("({below:?}").into_bytes());
        }
        for e in &c.outbox {
            let fields = e.to_fields();
            args.push(b"X".to_vec());
            args.push(fields.len().to_string().into_bytes());
            for (f, v) in fields {
                args.push(f.into_bytes());
                args.push(v);
            }
        }
        for payload in &c.recent_alerts {
            args.push(b"A".to_vec());
            args.push(payload.clone());
        }
        for id in &c.forget_recent {
            args.push(b"K".to_vec());
            args.push(id.as_bytes().to_vec());
        }
        for contact in &c.erased {
            let i = key_index(keys.erased(), &mut key_list);
            args.push(b"T".to_vec());
            args.push(i.to_string().into_bytes());
            args.push(contact.as_bytes().to_vec());
            args.push(c.new_watermark.to_string().into_bytes());
        }
        for (key, value) in &c.strings {
            let i = key_index(key.clone(), &mut key_list);
            args.push(b"S".to_vec());
            args.push(i.to_string().into_bytes());
            args.push(value.as_bytes().to_vec());
        }
        cmd.arg("hotlead_commit").arg(key_list.len()).arg(&key_list).arg(args);
        match cmd.query_async::<u64>(&mut self.conn.clone()).await {
            Ok(n) => Ok(n),
            Err(e) => Err(classify(e)),
        }
    }

    /// Reads the partition's owner epoch and up to `count` outbox entries,
    /// oldest first, with their stream ids (one pipelined round trip).
    pub async fn read_outbox(
        &self,
        keys: &PartitionKeys,
        count: usize,
    ) -> Result<(Option<i64>, Vec<(String, OutboxEntry)>), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(keys.epoch());
        pipe.cmd("XRANGE").arg(keys.outbox()).arg("-").arg("+").arg("COUNT").arg(count);
        let (epoch, raw): (Option<i64>, Vec<(String, StreamFields)>) = pipe.query_async(&mut self.conn.clone()).await?;
        let entries = raw
            .into_iter()
            .map(|(id, fields)| {
                OutboxEntry::from_fields(&fields).map(|e| (id.clone(), e)).ok_or_else(|| StoreError::Corrupt {
                    key: keys.outbox(),
                    message: format!("entry {id} lacks a topic"),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok((epoch, entries))
    }

    /// Sets the tombstones of these erased contacts of one partition (the
    /// `hotlead_tombstone` function: each id is kept as its SHA-1 only).
    pub async fn tombstones(&self, keys: &PartitionKeys, contact_ids: &[String]) -> Result<(), StoreError> {
        if contact_ids.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("hotlead_tombstone").arg(1).arg(keys.erased()).arg(contact_ids);
        cmd.query_async::<i64>(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Claims a partition for a new owner: increments its epoch (fencing
    /// every earlier owner) and reads its watermark, atomically (the
    /// `hotlead_claim` function).
    pub async fn claim(&self, keys: &PartitionKeys) -> Result<(i64, Option<i64>), StoreError> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("hotlead_claim").arg(2).arg(keys.epoch()).arg(keys.watermark());
        let (epoch, wm): (i64, String) = cmd.query_async(&mut self.conn.clone()).await?;
        Ok((epoch, wm.parse().ok()))
    }

    /// Deletes delivered outbox entries.
    pub async fn delete_outbox(&self, keys: &PartitionKeys, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::cmd("XDEL").arg(keys.outbox()).arg(ids).query_async::<u64>(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Finds a contact's stored value among the input topic's `partitions`
    /// partitions (the reads travel pipelined); `None` if it is unknown or erased.
    pub async fn find_contact(
        &self,
        topic: &str,
        partitions: i32,
        contact_id: &str,
        rules: &RuleSet,
    ) -> Result<Option<(i32, StoredValue)>, StoreError> {
        let all: Vec<Vec<StoredValue>> =
            self.per_partition(partitions, |p| load_command(&self.keys(topic, p), rules, &[contact_id])).await?;
        let found = all.into_iter().flatten().enumerate().find(|(_, v)| !v.is_absent());
        // An erased contact is not found, like one never seen.
        Ok(found.filter(|(_, v)| !matches!(v, StoredValue::Erased)).map(|(p, v)| (p as i32, v)))
    }

    /// The top `limit` entries at or above `floor` of a model's leaderboard,
    /// merged across `partitions` partitions (one pipelined round trip),
    /// highest first: (contact id, entry value, partition).
    pub async fn leaderboard_top(
        &self,
        topic: &str,
        partitions: i32,
        model: &str,
        floor: f64,
        limit: usize,
    ) -> Result<Vec<(String, f64, i32)>, StoreError> {
        let per: Vec<Vec<(String, f64)>> = self
            .per_partition(partitions, |p| {
                let mut c = redis::cmd("ZRANGE");
                c.arg(self.keys(topic, p).leaderboard(model))
                    .arg("+inf")
                    .arg(format!("{floor:?}"))
                    .arg("BYSCORE")
                    .arg("REV")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .arg("WITHSCORES");
                c
            })
            .await?;
        let mut all: Vec<(String, f64, i32)> =
            per.into_iter().enumerate().flat_map(|(p, v)| v.into_iter().map(move |(c, z)| (c, z, p as i32))).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(limit);
        Ok(all)
    }

    /// Contacts whose cooling is due by `now_ms`, per model (at most
    /// `limit` per model; one pipelined round trip).
    pub async fn cooling_due(
        &self,
        keys: &PartitionKeys,
        models: &[&str],
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Vec<String>>, StoreError> {
        let mut pipe = redis::pipe();
        for m in models {
            pipe.cmd("ZRANGE")
                .arg(keys.cooling(m))
                .arg("-inf")
                .arg(now_ms)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(limit);
        }
        Ok(pipe.query_async(&mut self.conn.clone()).await?)
    }

    /// The latest `limit` alerts of each partition (one pipelined round
    /// trip), newest first across partitions: (stream id, alert payload).
    pub async fn recent_alerts(
        &self,
        topic: &str,
        partitions: i32,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut pipe = redis::pipe();
        for p in 0..partitions {
            pipe.cmd("XREVRANGE").arg(self.keys(topic, p).recent_alerts()).arg("+").arg("-").arg("COUNT").arg(limit);
        }
        let per: Vec<Vec<(String, StreamFields)>> = pipe.query_async(&mut self.conn.clone()).await?;
        let mut all: Vec<(String, Vec<u8>)> = per
            .into_iter()
            .flatten()
            .filter_map(|(id, f)| f.into_iter().find(|(k, _)| k == "alert").map(|(_, v)| (id, v)))
            .collect();
        let order = |id: &str| -> (u64, u64) {
            let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
            (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
        };
        all.sort_by_key(|(id, _)| std::cmp::Reverse(order(id)));
        all.truncate(limit);
        Ok(all)
    }

    /// The watermark of each of `topic`'s first `partitions` partitions
    /// (one GET per partition, each in its own slot).
    pub async fn watermarks(&self, topic: &str, partitions: i32) -> Result<Vec<Option<i64>>, StoreError> {
        self.per_partition(partitions, |p| redis::cmd("GET").arg(self.keys(topic, p).watermark()).clone()).await
    }

    /// One partition's recent-alerts stream: (entry id, alert payload),
    /// oldest first.
    pub async fn recent_entries(&self, keys: &PartitionKeys) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let entries: Vec<(String, StreamFields)> = redis::cmd("XRANGE")
            .arg(keys.recent_alerts())
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(entries
            .into_iter()
            .filter_map(|(id, f)| f.into_iter().find(|(k, _)| k == "alert").map(|(_, v)| (id, v)))
            .collect())
    }

    /// The tier of each contact in a model: (partition, contact) pairs in,
    /// tier names out (empty when unknown); the reads travel pipelined.
    pub async fn tiers(
        &self,
        topic: &str,
        rules: &RuleSet,
        model: usize,
        contacts: &[(i32, &str)],
    ) -> Result<Vec<String>, StoreError> {
        Ok(self.tiers_and_accounts(topic, rules, model, contacts).await?.into_iter().map(|(t, _)| t).collect())
    }

    /// [`Store::tiers`], with each contact's account id (`None` when
    /// unknown).
    pub async fn tiers_and_accounts(
        &self,
        topic: &str,
        rules: &RuleSet,
        model: usize,
        contacts: &[(i32, &str)],
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let v: Vec<Vec<StoredValue>> = futures::future::try_join_all(contacts.iter().map(|(p, c)| {
            let mut conn = self.conn.clone();
            let cmd = load_command(&self.keys(topic, *p), rules, &[c]);
            async move { cmd.query_async::<Vec<StoredValue>>(&mut conn).await }
        }))
        .await?;
        let m = &rules.models[model];
        Ok(v.iter()
            .flatten()
            .map(|v| match decode_stored(rules, v) {
                Ok((account, c)) => {
                    let tier = c.models[model].as_ref().map(|st| m.tier_name(st.tier).to_string()).unwrap_or_default();
                    (tier, account)
                }
                Err(_) => (String::new(), None),
            })
            .collect())
    }

    /// Finds `field` in a hash of each of `topic`'s `partitions` partitions
    /// (`hash` names it from the partition's keys; one HGET per partition,
    /// pipelined): the first partition that has it, and its value.
    pub async fn find_in_hash(
        &self,
        topic: &str,
        partitions: i32,
        hash: impl Fn(&PartitionKeys) -> String,
        field: &str,
    ) -> Result<Option<(i32, Vec<u8>)>, StoreError> {
        let all: Vec<Option<Vec<u8>>> = self
            .per_partition(partitions, |p| redis::cmd("HGET").arg(hash(&self.keys(topic, p))).arg(field).clone())
            .await?;
        Ok(all.into_iter().enumerate().find_map(|(p, v)| v.map(|v| (p as i32, v))))
    }

    /// The values of these fields of one hash, `None` where unset.
    pub async fn hash_values(&self, hash: &str, fields: &[&str]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if fields.is_empty() {
            return Ok(vec![]);
        }
        Ok(redis::cmd("HMGET").arg(hash).arg(fields).query_async(&mut self.conn.clone()).await?)
    }

    /// Runs one command per partition, concurrently (on a multiplexed
    /// connection they travel pipelined); each partition's keys live in
    /// their own cluster slot, so they cannot share one pipeline there.
    async fn per_partition<T: redis::FromRedisValue>(
        &self,
        partitions: i32,
        command: impl Fn(i32) -> redis::Cmd,
    ) -> Result<Vec<T>, StoreError> {
        Ok(futures::future::try_join_all((0..partitions).map(|p| {
            let mut conn = self.conn.clone();
            let cmd = command(p);
            async move { cmd.query_async::<T>(&mut conn).await }
        }))
        .await?)
    }

    /// The values of these strings (of one partition), `None` where unset.
    pub async fn strings(&self, keys: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if keys.is_empty() {
            return Ok(vec![]);
        }
        Ok(redis::cmd("MGET").arg(keys).query_async(&mut self.conn.clone()).await?)
    }

    /// Every member of these sorted sets (of one partition).
    pub async fn members(&self, sets: &[String]) -> Result<Vec<String>, StoreError> {
        let mut pipe = redis::pipe();
        for s in sets {
            pipe.cmd("ZRANGE").arg(s).arg(0).arg(-1);
        }
        let all: Vec<Vec<String>> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(all.into_iter().flatten().collect())
    }

    /// Every contact id stored on a partition.
    pub async fn contact_ids(&self, keys: &PartitionKeys) -> Result<Vec<String>, StoreError> {
        Ok(redis::cmd("HKEYS").arg(keys.states()).query_async(&mut self.conn.clone()).await?)
    }

    /// The watermark of a partition, if it has one.
    pub async fn watermark(&self, keys: &PartitionKeys) -> Result<Option<i64>, StoreError> {
        Ok(redis::cmd("GET").arg(keys.watermark()).query_async(&mut self.conn.clone()).await?)
    }
}

/// The `hotlead_load` call for contacts of one partition, read by a holder
/// of `rules`.
pub fn load_command(keys: &PartitionKeys, rules: &RuleSet, contact_ids: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL_RO");
    cmd.arg("hotlead_load").arg(contact_ids.len() + 3).arg(keys.vocabulary()).arg(keys.states()).arg(keys.erased());
    for c in contact_ids {
        cmd.arg(keys.contact(c));
    }
    cmd.arg(rules.vocabulary_id.to_le_bytes().as_slice());
    for c in contact_ids {
        cmd.arg(*c);
    }
    cmd
}

fn classify(e: redis::RedisError) -> StoreError {
    match e.code() {
        Some("FENCED") => StoreError::Fenced(e.detail().unwrap_or_default().to_string()),
        Some("WATERMARK") => StoreError::WatermarkMismatch(e.detail().unwrap_or_default().to_string()),
        Some("LOST") => StoreError::StateGone(e.detail().unwrap_or_default().to_string()),
        _ => StoreError::Redis(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_state_round_trips_exactly() {
        let (rules, c) = (codec::tests::rules(), codec::tests::state());
        assert_eq!(round_trip(&rules, &c), c);
        let text: HashMap<String, Vec<u8>> =
            text_fields(&rules, None, &c).into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
        assert_eq!(decode_stored(&rules, &StoredValue::Text(text)).unwrap().1, c, "the text layout reads the same");
    }

    #[test]
    fn hash_tag_comes_first_whatever_the_contact_id() {
        let k = PartitionKeys::new("interactions", 7);
        assert_eq!(k.contact("{evil}"), "hl:{interactions:7}:c:{evil}");
        assert_eq!(k.outbox(), "hl:{interactions:7}:outbox");
    }
}
