//! Manual adjustments: a sales rep adds points to (or resets) a contact's
//! score in one model, through `POST /v1/contacts/{contact_id}/adjustments`
//! or `hotlead adjust`.
//!
//! Invariants:
//! - An adjustment travels as an [`InteractionEvent`] on the input topic,
//!   keyed by its contact id, so the owner of the contact's partition
//!   applies it like any event, in offset order, exactly once (its event id
//!   makes a retry count once). Nothing here writes Redis: the owner's state
//!   cache would overwrite it.
//! - What this module accepts, the pipeline scores: the event is checked by
//!   the decoder itself ([`crate::decode::decode`], with the pipeline's
//!   limits) before it is produced.
//! - The scoring of an adjustment is [`crate::score`]'s (see its module
//!   docs): points decay like a rule's and show as `adjustment:<reason>`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use prost::Message as _;
use serde::Deserialize;
use serde_json::{json, Value as J};

use crate::api::{authorize_write, ApiContext};
use crate::decode::{DecodeError, Limits};
use crate::proto::interaction_event::Interaction;
use crate::proto::{Adjustment, InteractionEvent};
use crate::rules::RuleSet;
use crate::score::Millis;

/// A request for an adjustment: the body of the POST, and what `hotlead
/// adjust` builds from its flags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The model whose score to adjust.
    pub model: String,
    /// Points to add (negative lowers the score); required unless `reset`.
    #[serde(default)]
    pub points: Option<f64>,
    /// Why, in words; the breakdown shows `adjustment:<reason>`.
    #[serde(default)]
    pub reason: String,
    /// Who made it.
    #[serde(default)]
    pub by: String,
    /// Set the model's behaviour score to zero first (then add `points`).
    #[serde(default)]
    pub reset: bool,
    /// When: RFC 3339 text or milliseconds since the epoch; default now.
    #[serde(default)]
    pub occurred_at: Option<J>,
    /// The event id; default a fresh one. Sending a request again with the
    /// id of the first counts it once (within `pipeline.dedup_window`).
    #[serde(default)]
    pub event_id: Option<String>,
}

/// Why a request cannot become an adjustment (a 400 on the API).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// The body is not a JSON object of the documented fields.
    #[error("the body is not an adjustment: {0}")]
    Body(String),
    /// No points and no reset: nothing to do.
    #[error("points are required (unless reset is true)")]
    MissingPoints,
    /// Zero points and no reset: nothing to do.
    #[error("an adjustment of 0 points without reset changes nothing")]
    ZeroPoints,
    /// `occurred_at` is neither RFC 3339 text nor milliseconds.
    #[error("occurred_at `{0}` is not RFC 3339 time or milliseconds since 1970")]
    Time(String),
    /// `event_id` is given and empty.
    #[error("event_id is empty")]
    EmptyEventId,
    /// No model of this name is in force.
    #[error("no model `{model}` in the rules in force; models: {known}")]
    UnknownModel {
        /// The model asked for.
        model: String,
        /// The models in force, comma-separated.
        known: String,
    },
    /// The model has no behaviour rules: its score is the profile's fit,
    /// and its leaderboard ranks by fit alone.
    #[error("model `{0}` scores the profile only (no behaviour rules): adjust a behaviour model")]
    FitOnlyModel(String),
    /// The decoder would dead-letter the event.
    #[error(transparent)]
    Invalid(#[from] DecodeError),
}

impl RequestError {
    /// A short, fixed reason code for the answer.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Body(_) => "invalid_body",
            Self::MissingPoints => "missing_points",
            Self::ZeroPoints => "zero_points",
            Self::Time(_) => "invalid_time",
            Self::EmptyEventId => "empty_event_id",
            Self::UnknownModel { .. } => "unknown_model",
            Self::FitOnlyModel(_) => "fit_only_model",
            Self::Invalid(e) => e.reason(),
        }
    }
}

impl Request {
    /// Reads a request from a JSON body.
    pub fn from_json(body: &[u8]) -> Result<Self, RequestError> {
        let value: J = serde_json::from_slice(body).map_err(|e| RequestError::Body(e.to_string()))?;
        if !value.is_object() {
            return Err(RequestError::Body("it must be a JSON object".into()));
        }
        serde_path_to_error::deserialize(value).map_err(|e| match e.path().to_string().as_str() {
            "." => RequestError::Body(e.inner().to_string()),
            path => RequestError::Body(format!("{path}: {}", e.inner())),
        })
    }

    /// The event for `contact_id`, as the pipeline will decode it (checked
    /// with `limits` at the wall clock `now_ms`); dated `occurred_at`, or
    /// `now_ms`.
    pub fn event(&self, contact_id: &str, limits: &Limits, now_ms: Millis) -> Result<InteractionEvent, RequestError> {
        let points = match (self.points, self.reset) {
            (None, false) => return Err(RequestError::MissingPoints),
            (Some(0.0), false) => return Err(RequestError::ZeroPoints),
            (p, _) => p.unwrap_or(0.0),
        };
        let at_ms = match &self.occurred_at {
            None | Some(J::Null) => now_ms,
            Some(v) => parse_time(v).ok_or_else(|| RequestError::Time(v.to_string().trim_matches('"').to_string()))?,
        };
        let event_id = match &self.event_id {
            Some(id) if id.trim().is_empty() => return Err(RequestError::EmptyEventId),
            Some(id) => id.trim().to_string(),
            None => new_event_id(now_ms),
        };
        let event = InteractionEvent {
            event_id,
            contact_id: contact_id.to_string(),
            occurred_at: Some(crate::decode::timestamp(at_ms)),
            interaction: Some(Interaction::Adjustment(Adjustment {
                model: self.model.trim().to_string(),
                points,
                reason: self.reason.trim().to_string(),
                by: self.by.trim().to_string(),
                reset: self.reset,
            })),
            ..Default::default()
        };
        crate::decode::decode(Some(&event.encode_to_vec()), limits, now_ms)?;
        Ok(event)
    }
}

/// Whether `model` can be adjusted under `rules`: it is in force and has
/// behaviour rules. (The pipeline applies whatever arrives: a model gone by
/// then changes nothing.)
pub fn check_model(rules: &RuleSet, model: &str) -> Result<(), RequestError> {
    match rules.models.iter().find(|m| m.name == model.trim()) {
        None => Err(RequestError::UnknownModel {
            model: model.to_string(),
            known: rules.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
        }),
        Some(m) if m.rules.is_empty() => Err(RequestError::FitOnlyModel(m.name.clone())),
        Some(_) => Ok(()),
    }
}

/// A fresh event id: `adj-<ms since 1970>-<16 random hex digits>`.
pub fn new_event_id(now_ms: Millis) -> String {
    crate::kafka::request_id("adj", now_ms)
}

/// RFC 3339 text or milliseconds since 1970 (as a number or as text).
pub(crate) fn parse_time(v: &J) -> Option<Millis> {
    match v {
        J::Number(n) => n.as_i64(),
        J::String(s) => crate::history::parse_time(s),
        _ => None,
    }
}

/// The write route: `POST /v1/contacts/{contact_id}/adjustments`.
pub fn routes() -> Router<ApiContext> {
    Router::new().route("/v1/contacts/{contact_id}/adjustments", post(create))
}

/// Checks the request, produces its event and answers 202 with the event
/// id and where it landed; 400 (with `error` and `reason`) for a request
/// that cannot be applied, 403 without a configured token, 401 with a wrong
/// one, 503 when the broker does not take it.
async fn create(
    State(s): State<ApiContext>,
    headers: HeaderMap,
    Path(contact_id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(e) = authorize_write(&s, &headers) {
        return e.into_response();
    }
    let event = Request::from_json(&body).and_then(|r| {
        check_model(&s.rules.current(), &r.model)?;
        r.event(&contact_id, &s.limits, crate::decode::now_ms())
    });
    let event = match event {
        Ok(e) => e,
        Err(e) => {
            let body = json!({ "error": e.to_string(), "reason": e.reason() });
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    match s.produce_event(&event).await {
        Ok((partition, offset)) => {
            let at = event.occurred_at.as_ref().map_or(0, crate::decode::millis);
            let body = json!({
                "event_id": event.event_id,
                "contact_id": event.contact_id,
                "occurred_at_ms": at,
                "partition": partition,
                "offset": offset,
            });
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(e) => {
            let error = format!(
                "the broker did not take the adjustment ({e}); send it again with \"event_id\": \"{}\" to count it once",
                event.event_id
            );
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": error }))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_760_000_000_000;

    fn request(body: &str) -> Result<InteractionEvent, RequestError> {
        Request::from_json(body.as_bytes())?.event("c-1", &Limits::default(), NOW)
    }

    #[test]
    fn a_request_becomes_the_event_the_pipeline_scores() {
        let e =
            request(r#"{"model": "engagement", "points": 15, "reason": " met at trade show ", "by": "jane@sales"}"#)
                .unwrap();
        assert_eq!(e.contact_id, "c-1");
        assert!(e.event_id.starts_with("adj-1760000000000-"), "{}", e.event_id);
        assert_eq!(e.occurred_at, Some(crate::decode::timestamp(NOW)));
        let Some(Interaction::Adjustment(a)) = &e.interaction else { panic!("{e:?}") };
        assert_eq!(
            a,
            &Adjustment {
                model: "engagement".into(),
                points: 15.0,
                reason: "met at trade show".into(),
                by: "jane@sales".into(),
                reset: false
            }
        );
        let e = request(
            r#"{"model": "m", "reset": true, "reason": "r", "occurred_at": "2025-10-09T08:00:00Z", "event_id": "x"}"#,
        )
        .unwrap();
        assert_eq!((e.event_id.as_str(), e.occurred_at.unwrap().seconds), ("x", 1_759_996_800));
        let e = request(r#"{"model": "m", "points": -3, "reason": "r", "occurred_at": 1759999999000}"#).unwrap();
        assert_eq!(e.occurred_at.unwrap().seconds, 1_759_999_999);
        assert_ne!(new_event_id(NOW), new_event_id(NOW), "fresh ids differ");
    }

    #[test]
    fn a_bad_request_names_its_reason() {
        let reason = |body: &str| request(body).unwrap_err().reason();
        assert_eq!(reason("nope"), "invalid_body");
        assert_eq!(reason(r#"["m", 1, "r"]"#), "invalid_body", "an object, not a list");
        assert_eq!(reason(r#"{"points": 1, "reason": "r"}"#), "invalid_body", "no model");
        assert_eq!(reason(r#"{"model": "m", "points": 1, "reason": "r", "colour": "red"}"#), "invalid_body");
        assert_eq!(reason(r#"{"model": "m", "points": "ten", "reason": "r"}"#), "invalid_body");
        assert_eq!(reason(r#"{"model": "m", "reason": "r"}"#), "missing_points");
        assert_eq!(reason(r#"{"model": "m", "points": 0, "reason": "r"}"#), "zero_points");
        assert_eq!(reason(r#"{"model": "m", "points": 1, "reason": " "}"#), "invalid_adjustment");
        assert_eq!(reason(r#"{"model": "", "points": 1, "reason": "r"}"#), "invalid_adjustment");
        assert_eq!(reason(r#"{"model": "m", "points": 2e6, "reason": "r"}"#), "invalid_adjustment");
        assert_eq!(reason(r#"{"model": "m", "points": 1, "reason": "r", "occurred_at": "monday"}"#), "invalid_time");
        let ahead = format!(r#"{{"model": "m", "points": 1, "reason": "r", "occurred_at": {}}}"#, NOW + 86_400_000);
        assert_eq!(reason(&ahead), "future_timestamp");
        assert_eq!(reason(r#"{"model": "m", "points": 1, "reason": "r", "event_id": ""}"#), "empty_event_id");
        let long = Request { model: "m".into(), points: Some(1.0), reason: "r".into(), ..Default::default() };
        let err = long.event(&"c".repeat(300), &Limits::default(), NOW).unwrap_err();
        assert_eq!(err.reason(), "contact_id_too_long");
    }

    #[test]
    fn only_a_behaviour_model_in_force_can_be_adjusted() {
        let rules = RuleSet::parse(
            "models: [{name: m, half_life: 1d, rules: [{id: p, when: {kind: page_view}, points: 1}]}, {name: fit, half_life: 1d, fit: [{id: f, when: {x: y}, points: 1}]}]",
            "t",
        )
        .unwrap();
        assert_eq!(check_model(&rules, "m"), Ok(()));
        let err = check_model(&rules, "nope").unwrap_err();
        assert_eq!((err.reason(), err.to_string().contains("models: m, fit")), ("unknown_model", true));
        assert_eq!(check_model(&rules, "fit").unwrap_err().reason(), "fit_only_model");
    }
}
