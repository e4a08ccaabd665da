//! The HTTP listener: `/metrics` (Prometheus), `/healthz` (the process is
//! up), `/readyz` (reads can be served: Redis reachable), `/v1/status`
//! (whether the pipeline consumes, and how many partitions it owns), the
//! read API under
//! `/v1` (documented in `docs/openapi.yaml`), and the hot-leads board at
//! `/board`:
//!
//! - `GET /v1/contacts/{contact_id}`: each model's score now, tier, last
//!   activity and breakdown by rule;
//! - `GET /v1/models/{model}/leaderboard?limit=&min_score=&at=`: the top
//!   contacts by current score, merged across partitions;
//! - `GET /v1/contacts/{contact_id}/history?model=&from=&to=&limit=`: the
//!   contact's score history in a model, rebuilt from the input topic
//!   ([`crate::history`]);
//! - `GET /v1/models`: the models in force;
//! - `GET /v1/models`: the models in force, and every model scored
//!   (`scored`: live and back-filled lanes, shadows marked);
//! - `GET /v1/compare?live=&shadow=&top=&at=`: a shadow model against a live
//!   one ([`crate::compare`]), and its page at `/compare`;
//! - `GET /v1/alerts/recent?limit=`: the latest alerts, newest first;
//! - `GET /v1/accounts/{account_id}`, `/v1/accounts/models/{model}/leaderboard`
//!   and `/v1/accounts/alerts/recent`: accounts' roll-ups, their
//!   leaderboards and alerts ([`crate::account_query`]);
//! - the rules workbench at `/board/rules` and its routes under `/v1/rules`
//!   ([`crate::workbench`]);
//! - `DELETE /v1/contacts/{contact_id}`: erase the contact (GDPR Art. 17),
//!   through the input topic like any write (token required);
//! - `POST /v1/contacts/{contact_id}/adjustments`: a manual adjustment,
//!   produced to the input topic ([`crate::adjust`]).
//!
//! With `http.token` set, `/v1` requires `Authorization: Bearer <token>`.
//! Writes that change scores ([`authorize_write`]) need it set: without a
//! token they are refused (403), never served unauthenticated.
//!
//! `/metrics`, `/healthz`, `/readyz` and the board's pages (which hold no
//! data: they read it from `/v1` with the token) stay open, for Prometheus
//! and the kubelet. Without a token the service listens on loopback only,
//! unless told otherwise ([`crate::config::Config::check_serving`]).
//!
//! No answer carries a profile attribute named in
//! `privacy.hidden_attributes`: the contact answer is the only one with a
//! profile, built by [`crate::query::contact_view`], which leaves them out.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::pipeline::Status;
use crate::reload::LiveRules;
use crate::score::Millis;
use crate::store::Store;

/// Everything the HTTP handlers read.
#[derive(Clone)]
pub struct ApiContext {
    /// Prometheus rendering; `None` shows no metrics.
    pub metrics: Option<PrometheusHandle>,
    /// What the pipeline is doing (the read side serves either way).
    pub status: Arc<Status>,
    /// Redis.
    pub store: Store,
    /// The rules in force.
    pub rules: Arc<LiveRules>,
    /// Input topic (its partitions key the state).
    pub topic: String,
    /// A Kafka client for metadata: partition count and broker reachability.
    kafka: Arc<rdkafka::consumer::BaseConsumer<crate::kafka::QuietContext>>,
    /// Bearer token required by `/v1`, if any.
    pub token: Option<String>,
    /// Profile attributes never served (`privacy.hidden_attributes`).
    pub privacy: Arc<crate::config::PrivacyConfig>,
    /// The Kafka client configuration, for the workbench's own consumer.
    pub kafka_config: rdkafka::ClientConfig,
    /// Whether the workbench may save the rules file (`rules.editable`).
    pub rules_editable: bool,
    partitions: Arc<Mutex<Option<i32>>>,
    /// The producer of events to the input topic ([`ApiContext::produce_event`]).
    producer: Arc<rdkafka::producer::FutureProducer<crate::kafka::QuietContext>>,
    /// The pipeline's decoding limits: an event the API produces is one the
    /// pipeline accepts.
    pub limits: crate::decode::Limits,
    /// The pipeline's repeat check: a contact's history counts a repeat as
    /// the pipeline did.
    pub dedup: crate::engine::Dedup,
    /// The account stage's internal topic (`topics.account_contributions`):
    /// its partitions key the account state ([`crate::account_query`]).
    pub account_topic: String,
    account_partitions: Arc<Mutex<Option<i32>>>,
}

impl ApiContext {
    /// A context; the partition count is read from Kafka on first use.
    pub fn new(
        store: Store,
        rules: Arc<LiveRules>,
        status: Arc<Status>,
        topic: String,
        kafka: &rdkafka::ClientConfig,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        Ok(Self {
            metrics: None,
            status,
            store,
            rules,
            topic,
            kafka: Arc::new(kafka.create_with_context(crate::kafka::QuietContext)?),
            token: None,
            privacy: Arc::default(),
            kafka_config: kafka.clone(),
            rules_editable: false,
            partitions: Arc::new(Mutex::new(None)),
            producer: Arc::new(crate::kafka::event_producer(kafka)?),
            limits: crate::decode::Limits::default(),
            dedup: crate::engine::Dedup::default(),
            account_topic: crate::config::Topics::default().account_contributions,
            account_partitions: Arc::new(Mutex::new(None)),
        })
    }

    /// Produces `event` to the input topic, keyed by its contact id, and
    /// waits for the broker's acknowledgement: the partition and offset it
    /// landed at. The owner of that partition applies it like any event (a
    /// write never goes to Redis directly: the owner's state cache would
    /// overwrite it).
    pub async fn produce_event(
        &self,
        event: &crate::proto::InteractionEvent,
    ) -> Result<(i32, i64), rdkafka::error::KafkaError> {
        crate::kafka::send_event(&self.producer, &self.topic, event).await
    }

    /// The input topic's partition count from the broker, within `timeout`.
    async fn fetch_partitions(&self, timeout: std::time::Duration) -> Result<i32, ApiError> {
        let (kafka, topic) = (self.kafka.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || crate::kafka::partition_count_with(&kafka, &topic, timeout))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .map_err(|e| ApiError::unavailable(format!("cannot read the partitions of {}: {e}", self.topic)))
    }

    async fn partitions(&self) -> Result<i32, ApiError> {
        if let Some(n) = *self.partitions.lock().expect("partitions lock") {
            return Ok(n);
        }
        let n = self.fetch_partitions(std::time::Duration::from_secs(10)).await?;
        *self.partitions.lock().expect("partitions lock") = Some(n);
        Ok(n)
    }

    /// The account topic's partition count from the broker, read on first
    /// use.
    pub(crate) async fn account_partitions(&self) -> Result<i32, ApiError> {
        if let Some(n) = *self.account_partitions.lock().expect("partitions lock") {
            return Ok(n);
        }
        let (kafka, topic) = (self.kafka.clone(), self.account_topic.clone());
        let timeout = std::time::Duration::from_secs(10);
        let n = tokio::task::spawn_blocking(move || crate::kafka::partition_count_with(&kafka, &topic, timeout))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .map_err(|e| ApiError::unavailable(format!("cannot read the partitions of {}: {e}", self.account_topic)))?;
        *self.account_partitions.lock().expect("partitions lock") = Some(n);
        Ok(n)
    }
}

/// An error answer: a status and a JSON body `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, message: message.into() }
    }
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into() }
    }
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, message: message.into() }
    }
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self { status: StatusCode::FORBIDDEN, message: message.into() }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::unavailable(format!("redis: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// The HTTP routes.
pub fn router(ctx: ApiContext) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/v1/status", get(status))
        .route("/v1/models", get(models))
        .route("/v1/models/{model}/leaderboard", get(leaderboard))
        .route("/v1/contacts/{contact_id}", get(contact).delete(erase))
        .route("/v1/contacts/{contact_id}/history", get(contact_history))
        .route("/v1/alerts/recent", get(recent_alerts))
        .route("/board", get(board))
        .route("/v1/compare", get(compare))
        .route("/compare", get(|| async { axum::response::Html(include_str!("compare.html")) }))
        .merge(crate::workbench::routes())
        .merge(crate::adjust::routes())
        .merge(crate::account_query::routes())
        .with_state(ctx)
}

async fn render_metrics(State(s): State<ApiContext>) -> String {
    crate::telemetry::rule_hits(&s.rules.current());
    s.metrics.as_ref().map(PrometheusHandle::render).unwrap_or_default()
}

/// Ready means reads can be served: Redis answers. Whether the pipeline
/// consumes is `/v1/status` and the `hotlead_consuming` metric, so a
/// rebalance or a broker outage never takes the board away.
async fn ready(State(s): State<ApiContext>) -> (StatusCode, &'static str) {
    if redis_reachable(&s).await {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable\n")
    }
}

async fn redis_reachable(s: &ApiContext) -> bool {
    let mut conn = s.store.connection();
    let cmd = redis::cmd("PING");
    let ping = cmd.query_async::<String>(&mut conn);
    matches!(tokio::time::timeout(std::time::Duration::from_secs(2), ping).await, Ok(Ok(_)))
}

async fn status(State(s): State<ApiContext>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(json!({
        "consuming": s.status.is_consuming(),
        "owned_partitions": s.status.owned_partitions(),
        "redis_reachable": redis_reachable(&s).await,
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

pub(crate) fn authorize(s: &ApiContext, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &s.token else { return Ok(()) };
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(token.as_str()) {
        Ok(())
    } else {
        Err(ApiError { status: StatusCode::UNAUTHORIZED, message: "a valid bearer token is required".into() })
    }
}

/// Authorizes a write under `/v1`: a token must be configured (403 without
/// one: writes never go unauthenticated) and given (401 otherwise).
pub(crate) fn authorize_write(s: &ApiContext, headers: &HeaderMap) -> Result<(), ApiError> {
    if s.token.is_none() {
        return Err(ApiError::forbidden(
            "writes need a bearer token and none is configured: set `http.token` (HOTLEAD_HTTP__TOKEN or `http.token_file`)",
        ));
    }
    authorize(s, headers)
}

/// Erases a contact: produces its erasure request to the input topic, for
/// the owner of its partition to apply in order (202 with the request id
/// and where it landed). `by` and `reason` query parameters go into the
/// erasure record.
async fn erase(
    State(s): State<ApiContext>,
    headers: HeaderMap,
    Path(contact_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    authorize_write(&s, &headers)?;
    if contact_id.is_empty() || contact_id.len() > s.limits.max_contact_id_bytes {
        return Err(ApiError::bad_request("a contact id is 1 to `limits.max_contact_id_bytes` bytes".to_string()));
    }
    let by = q.get("by").map_or("", String::as_str);
    let reason = q.get("reason").map_or("", String::as_str);
    let event = crate::kafka::erasure_request(&contact_id, by, reason, crate::decode::now_ms());
    let (partition, offset) =
        s.produce_event(&event).await.map_err(|e| ApiError::unavailable(format!("the broker did not take it: {e}")))?;
    let body = json!({ "request_id": event.event_id, "partition": partition, "offset": offset });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The `at` parameter: RFC 3339 text or milliseconds since the epoch;
/// default now.
pub(crate) fn at_param(q: &HashMap<String, String>) -> Result<Millis, ApiError> {
    Ok(time_param(q, "at")?.unwrap_or_else(crate::decode::now_ms))
}

/// A time parameter: RFC 3339 text or milliseconds since the epoch.
fn time_param(q: &HashMap<String, String>, name: &str) -> Result<Option<Millis>, ApiError> {
    q.get(name)
        .map(|v| {
            crate::history::parse_time(v).ok_or_else(|| {
                ApiError::bad_request(format!("parameter `{name}`: `{v}` is not RFC 3339 time or milliseconds"))
            })
        })
        .transpose()
}

async fn models(State(s): State<ApiContext>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers)?;
    let rules = s.rules.current();
    let scored = read(|| crate::shadow::scored(&s.store, &rules, &s.topic)).await?;
    Ok(Json(json!({ "models": crate::query::models_info(&rules), "scored": scored })))
}

/// A shadow model against a live one over every contact, at `at`
/// ([`crate::compare`]).
async fn compare(
    State(s): State<ApiContext>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<crate::compare::Report>, ApiError> {
    authorize(&s, &headers)?;
    let model = |k: &str| {
        q.get(k)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::bad_request(format!("parameter `{k}` is required: a model name")))
    };
    let (live, shadow) = (model("live")?, model("shadow")?);
    let top = count_param(&q, "top", 20, 1000)?;
    let at = at_param(&q)?;
    let partitions = s.partitions().await?;
    let rules = s.rules.current();
    let report = crate::compare::compare(&s.store, &rules, &s.topic, partitions, live, shadow, at, top).await;
    report.map(Json).map_err(|e| match e {
        crate::compare::CompareError::UnknownModel { .. } => ApiError::not_found(e.to_string()),
        crate::compare::CompareError::Store(e) => e.into(),
    })
}

async fn contact(
    State(s): State<ApiContext>,
    headers: HeaderMap,
    Path(contact_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<crate::query::ContactView>, ApiError> {
    authorize(&s, &headers)?;
    let at = at_param(&q)?;
    let partitions = s.partitions().await?;
    let rules = s.rules.current();
    match read(|| s.store.find_contact(&s.topic, partitions, &contact_id, &rules)).await? {
        Some((p, value)) => {
            let view =
                crate::query::contact_view(&rules, &contact_id, p, &value, at, &s.privacy).map_err(|e| ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: format!("the stored state of `{contact_id}` cannot be read: {e}"),
                })?;
            Ok(Json(read(|| crate::shadow::add_shadows(&s.store, &rules, &s.topic, view.clone(), at)).await?))
        }
        None => Err(ApiError::not_found(format!("no contact `{contact_id}` has a score"))),
    }
}

/// A contact's score history in one model (`model`, default the first),
/// rebuilt on demand ([`crate::history`]): the contact's partition of the
/// input topic is read from its first retained message up to the
/// partition's watermark, and scored again with the rules in force now, so
/// its cost grows with the partition's size. 404 for an unknown (or
/// erased) contact or model; 503 when Redis or the broker cannot be read.
async fn contact_history(
    State(s): State<ApiContext>,
    headers: HeaderMap,
    Path(contact_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<crate::history::History>, ApiError> {
    use crate::history::{Range, DEFAULT_LIMIT, MAX_LIMIT};
    authorize(&s, &headers)?;
    let live = s.rules.current();
    // A model of the live rules, or of a back-filled lane.
    let located = match q.get("model") {
        None => crate::shadow::Located { lane: String::new(), store: s.store.clone(), rules: live.clone(), model: 0 },
        Some(name) => match read(|| crate::shadow::locate(&s.store, &live, name)).await? {
            Some(l) => l,
            None => {
                let all = read(|| crate::shadow::all_models(&s.store, &live)).await?;
                let names: Vec<&str> = all.iter().map(|(m, _)| m.as_str()).collect();
                return Err(ApiError::not_found(format!("no model `{name}`; models: {}", names.join(", "))));
            }
        },
    };
    let (rules, model) = (located.rules.clone(), located.model);
    let range = Range {
        from: time_param(&q, "from")?,
        to: time_param(&q, "to")?,
        limit: limit_param(&q, DEFAULT_LIMIT, MAX_LIMIT)?,
    };
    let partitions = s.partitions().await?;
    let Some((partition, _)) = read(|| s.store.find_contact(&s.topic, partitions, &contact_id, &live)).await? else {
        return Err(ApiError::not_found(format!("no contact `{contact_id}` has a score")));
    };
    // Up to what the model's lane has applied.
    let keys = located.store.keys(&s.topic, partition);
    let last = read(|| located.store.watermark(&keys)).await?.unwrap_or(-1);
    let (config, topic, id, limits) = (s.kafka_config.clone(), s.topic.clone(), contact_id.clone(), s.limits);
    let messages = tokio::task::spawn_blocking(move || {
        crate::kafka::contact_messages(&config, &topic, partition, last, &id, &limits, crate::history::READ_TIMEOUT)
    })
    .await
    .map_err(|e| ApiError::unavailable(e.to_string()))?
    .map_err(|e| {
        ApiError::unavailable(format!("cannot read partition {partition} of {} from the broker: {e}", s.topic))
    })?;
    let now = crate::decode::now_ms();
    Ok(Json(crate::history::history(&rules, model, &contact_id, messages, s.dedup, now, range)))
}

async fn leaderboard(
    State(s): State<ApiContext>,
    headers: HeaderMap,
    Path(model): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers)?;
    let rules = s.rules.current();
    let Some(m) = rules.models.iter().find(|m| m.name == model) else {
        let names: Vec<&str> = rules.models.iter().map(|m| m.name.as_str()).collect();
        return Err(ApiError::not_found(format!("no model `{model}`; models: {}", names.join(", "))));
    };
    let limit =
        match q.get("limit") {
            None => 10,
            Some(v) => v.parse::<usize>().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| {
                ApiError::bad_request(format!("parameter `limit`: `{v}` is not a number from 1 to 1000"))
            })?,
        };
    let min_score =
        match q.get("min_score") {
            None => None,
            Some(v) => Some(v.parse::<f64>().ok().filter(|x| x.is_finite() && *x > 0.0).ok_or_else(|| {
                ApiError::bad_request(format!("parameter `min_score`: `{v}` is not a number above 0"))
            })?),
        };
    let at = at_param(&q)?;
    let floor = crate::query::leaderboard_least_entry(m, min_score, at);
    let partitions = s.partitions().await?;
    let all = read(|| s.store.leaderboard_top(&s.topic, partitions, &m.name, floor, limit)).await?;
    let who: Vec<(i32, &str)> = all.iter().map(|(c, _, p)| (*p, c.as_str())).collect();
    let index = rules.models.iter().position(|x| x.name == m.name).unwrap_or_default();
    let tiers = read(|| s.store.tiers_and_accounts(&s.topic, &rules, index, &who)).await?;
    let entries: Vec<crate::query::LeaderboardEntry> = all
        .iter()
        .zip(tiers)
        .map(|((contact_id, z, partition), (tier, account_id))| crate::query::LeaderboardEntry {
            contact_id: contact_id.clone(),
            score: crate::query::leaderboard_value(m, *z, at),
            partition: *partition,
            tier,
            account_id,
        })
        .collect();
    let floor = crate::score::leaderboard_floor(m);
    Ok(Json(json!({ "model": m.name, "version": m.version, "at_ms": at, "floor": floor, "entries": entries })))
}

async fn recent_alerts(
    State(s): State<ApiContext>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use prost::Message as _;
    authorize(&s, &headers)?;
    let limit = limit_param(&q, 50, 200)?;
    let partitions = s.partitions().await?;
    let raw = read(|| s.store.recent_alerts(&s.topic, partitions, limit)).await?;
    let alerts: Vec<crate::query::AlertView> = raw
        .into_iter()
        .filter_map(|(_, payload)| crate::proto::ScoreAlert::decode(payload.as_slice()).ok().map(Into::into))
        .collect();
    Ok(Json(json!({ "alerts": alerts })))
}

/// Runs a read, and once more if its connection had dropped (Redis
/// restarted, say): the connection reconnects on the first failure, so a
/// reader never sees the restart.
async fn read<T, F, Fut>(f: F) -> Result<T, crate::store::StoreError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, crate::store::StoreError>>,
{
    match f().await {
        Err(crate::store::StoreError::Redis(e)) if e.is_io_error() || e.is_connection_dropped() => {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            f().await
        }
        r => r,
    }
}

/// The hot-leads board: one page that reads the API.
async fn board() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("board.html"))
}

/// The `limit` parameter: `default` when absent, 1 to `max`.
pub(crate) fn limit_param(q: &HashMap<String, String>, default: usize, max: usize) -> Result<usize, ApiError> {
    count_param(q, "limit", default, max)
}

/// A count parameter `name`: `default` when absent, 1 to `max`.
fn count_param(q: &HashMap<String, String>, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => {
            v.parse::<usize>().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
                ApiError::bad_request(format!("parameter `{name}`: `{v}` is not a number from 1 to {max}"))
            })
        }
    }
}

/// Serves the routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: ApiContext,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(ctx)).with_graceful_shutdown(shutdown).await
}
