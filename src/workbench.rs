//! The rules workbench: a page of the board (`/board/rules`) where the
//! people who own the scoring rules read the models in force as sentences,
//! edit a candidate rules file with every error and lint warning shown as
//! they type, and preview what the candidate would do to the latest real
//! events before anyone deploys it.
//!
//! The page never parses YAML: it sends the text to these routes (under
//! `/v1`, so the board's token applies):
//!
//! - `GET /v1/rules`: the rules file in force, its text and its models in
//!   words, with each behaviour rule's hits since it came into force;
//! - `POST /v1/rules/check` `{"text"}`: every error and warning, with line
//!   and column;
//! - `POST /v1/rules/preview` `{"text", "events"}`: reads the last `events`
//!   events of the input topic with a consumer of its own (nothing
//!   committed), scores them from scratch with the rules in force and with
//!   the candidate, as `hotlead rules test` does, and compares: the tier
//!   migration matrix per model, the contacts that would alert and would
//!   stop alerting, and per-rule hit counts;
//! - `PUT /v1/rules` `{"text"}`: saves a candidate without errors over the
//!   rules file, only with `rules.editable` and a token configured; the
//!   service reloads it as it would any change of the file.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{authorize, ApiContext, ApiError};
use crate::proto::{score_alert, InteractionEvent};
use crate::replay::{self, Report};
use crate::rules::describe::{describe, ModelText};
use crate::rules::{Problem, RuleSet};

/// Most events a preview reads.
pub const MAX_PREVIEW_EVENTS: usize = 50_000;

/// The workbench's routes, to merge into the API router.
pub fn routes() -> Router<ApiContext> {
    Router::new()
        .route("/board/rules", get(page))
        .route("/v1/rules", get(in_force).put(save))
        .route("/v1/rules/check", axum::routing::post(check))
        .route("/v1/rules/preview", axum::routing::post(preview))
}

async fn page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("workbench.html"))
}

/// A candidate rules file sent by the page.
#[derive(Debug, Deserialize)]
struct Candidate {
    text: String,
    /// For a preview: how many of the latest events to replay.
    #[serde(default)]
    events: Option<usize>,
}

/// What checking a candidate found.
#[derive(Debug, Serialize)]
pub struct CheckAnswer {
    /// No errors: the file would load.
    pub ok: bool,
    /// Errors, in file order.
    pub errors: Vec<Problem>,
    /// Lint warnings, in file order.
    pub warnings: Vec<Problem>,
    /// The candidate's models in words, when it loads.
    pub models: Vec<ModelText>,
}

/// Checks a candidate's text.
pub fn check_text(text: &str) -> (Option<RuleSet>, CheckAnswer) {
    let c = RuleSet::check(text);
    let models = c.rules.as_ref().map(describe).unwrap_or_default();
    let answer = CheckAnswer { ok: c.errors.is_empty(), errors: c.errors, warnings: c.warnings, models };
    (c.rules, answer)
}

async fn in_force(State(s): State<ApiContext>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers)?;
    let path = s.rules.path().to_path_buf();
    let text = crate::rules::read(&path).map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(json!({
        "path": path.display().to_string(),
        "text": text,
        "editable": s.rules_editable && s.token.is_some(),
        "models": describe(&s.rules.current()),
    })))
}

async fn check(
    State(s): State<ApiContext>,
    headers: HeaderMap,
    Json(c): Json<Candidate>,
) -> Result<Json<CheckAnswer>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(check_text(&c.text).1))
}

async fn preview(
    State(s): State<ApiContext>,
    headers: HeaderMap,
    Json(c): Json<Candidate>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    authorize(&s, &headers)?;
    let n = c.events.unwrap_or(1000);
    if !(1..=MAX_PREVIEW_EVENTS).contains(&n) {
        return Err(ApiError::bad_request(format!("`events` is a number from 1 to {MAX_PREVIEW_EVENTS}")));
    }
    let (candidate, answer) = check_text(&c.text);
    let Some(candidate) = candidate else {
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "check": answer }))));
    };
    let (config, topic) = (s.kafka_config.clone(), s.topic.clone());
    let tail = tokio::task::spawn_blocking(move || {
        crate::kafka::read_tail(&config, &topic, n as i64, Duration::from_secs(20))
    })
    .await
    .map_err(|e| ApiError::unavailable(e.to_string()))?
    .map_err(|e| ApiError::unavailable(format!("cannot read the latest events of {}: {e}", s.topic)))?;
    let events = latest(tail, n);
    let result = compare(&s.rules.current(), &candidate, &events);
    Ok((StatusCode::OK, Json(json!({ "check": answer, "preview": result }))))
}

async fn save(
    State(s): State<ApiContext>,
    headers: HeaderMap,
    Json(c): Json<Candidate>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    authorize(&s, &headers)?;
    if !s.rules_editable || s.token.is_none() {
        return Err(ApiError::forbidden(
            "saving is off: the rules file is the source of truth; set `rules.editable = true` and `http.token` to allow it",
        ));
    }
    let (rules, answer) = check_text(&c.text);
    if rules.is_none() {
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "check": answer }))));
    }
    let path = s.rules.path().to_path_buf();
    let tmp = path.with_extension("yaml.saving");
    std::fs::write(&tmp, &c.text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| ApiError::unavailable(format!("cannot write {}: {e}", path.display())))?;
    let reloaded = s.rules.reload().map_err(|e| ApiError::unavailable(e.to_string()))?;
    tracing::info!(path = %path.display(), "Saved the rules file from the workbench.");
    Ok((StatusCode::OK, Json(json!({ "saved": true, "reloaded": reloaded == crate::reload::Reloaded::Swapped }))))
}

/// The `n` latest events (by event time) of messages read back from the
/// input topic, decoded, in partition and offset order: each contact's
/// events in the order the service scored them. Undecodable messages are
/// left out.
pub fn latest(tail: Vec<crate::kafka::Tail>, n: usize) -> Vec<InteractionEvent> {
    let mut decoded: Vec<(i64, i32, i64, InteractionEvent)> = tail
        .into_iter()
        .filter_map(|t| {
            let e = InteractionEvent::decode(t.payload.as_slice()).ok()?;
            let at = e.occurred_at.as_ref().map_or(i64::MIN, crate::decode::millis);
            Some((at, t.partition, t.offset, e))
        })
        .collect();
    decoded.sort_by_key(|(at, p, o, _)| (*at, *p, *o));
    let keep = decoded.len().saturating_sub(n);
    let mut chosen: Vec<_> = decoded.split_off(keep);
    chosen.sort_by_key(|(_, p, o, _)| (*p, *o));
    chosen.into_iter().map(|(_, _, _, e)| e).collect()
}

/// What a candidate would change, over the same events.
#[derive(Debug, Serialize, PartialEq)]
pub struct Preview {
    /// Events replayed.
    pub events: usize,
    /// Events that would be dead-lettered.
    pub rejected: usize,
    /// Contacts the events touched.
    pub contacts: usize,
    /// Per model (in force, then any new in the candidate).
    pub models: Vec<Migration>,
    /// Contacts with alerts under the candidate that the rules in force do
    /// not raise: contact and the new alerts (`model: tier ▲`).
    pub would_alert: Vec<(String, Vec<String>)>,
    /// Contacts with alerts under the rules in force that the candidate no
    /// longer raises.
    pub would_stop: Vec<(String, Vec<String>)>,
}

/// One model's tier migration and rule hits.
#[derive(Debug, Serialize, PartialEq)]
pub struct Migration {
    /// Model name.
    pub model: String,
    /// Row labels: tiers under the rules in force (empty: not in force).
    pub from: Vec<String>,
    /// Column labels: tiers under the candidate (empty: not in the candidate).
    pub to: Vec<String>,
    /// `matrix[i][j]`: contacts in tier `from[i]` now and `to[j]` under the
    /// candidate.
    pub matrix: Vec<Vec<u64>>,
    /// Hits per behaviour rule id: (in force, candidate).
    pub hits: Vec<(String, Option<u64>, Option<u64>)>,
}

/// Scores `events` from scratch with both rule sets, as `hotlead rules
/// test` does, and compares the outcomes.
pub fn compare(in_force: &RuleSet, candidate: &RuleSet, events: &[InteractionEvent]) -> Preview {
    let (old_rules, new_rules) = (in_force.detached(), candidate.detached());
    let (old, new) = (replay::replay(&old_rules, events), replay::replay(&new_rules, events));
    let contacts: BTreeSet<&String> = old.contacts.keys().chain(new.contacts.keys()).collect();
    let mut names: Vec<&str> = old_rules.models.iter().map(|m| m.name.as_str()).collect();
    names.extend(new_rules.models.iter().map(|m| m.name.as_str()).filter(|n| !names.contains(n)).collect::<Vec<_>>());
    let tiers = |rs: &RuleSet, name: &str| -> Vec<String> {
        rs.models.iter().find(|m| m.name == name).map_or_else(Vec::new, |m| {
            std::iter::once(m.base_tier.clone()).chain(m.tiers.iter().map(|t| t.name.clone())).collect()
        })
    };
    let models = names
        .iter()
        .map(|name| {
            let (from, to) = (tiers(&old_rules, name), tiers(&new_rules, name));
            let mut matrix = vec![vec![0u64; to.len().max(1)]; from.len().max(1)];
            for c in &contacts {
                let i = tier_of(&old, c, name, &from);
                let j = tier_of(&new, c, name, &to);
                matrix[i][j] += 1;
            }
            let hits_of = |rs: &RuleSet| -> BTreeMap<String, u64> {
                rs.models
                    .iter()
                    .find(|m| m.name == *name)
                    .map(|m| m.rules.iter().map(|r| (r.id.clone(), r.hits.get())).collect())
                    .unwrap_or_default()
            };
            let (a, b) = (hits_of(&old_rules), hits_of(&new_rules));
            let ids: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            let hits = ids.into_iter().map(|id| (id.clone(), a.get(id).copied(), b.get(id).copied())).collect();
            Migration { model: name.to_string(), from, to, matrix, hits }
        })
        .collect();
    let (old_alerts, new_alerts) = (alerts(&old), alerts(&new));
    let diff = |a: &BTreeMap<String, BTreeSet<String>>, b: &BTreeMap<String, BTreeSet<String>>| {
        a.iter()
            .filter_map(|(c, set)| {
                let only: Vec<String> =
                    set.iter().filter(|x| b.get(c).is_none_or(|o| !o.contains(*x))).cloned().collect();
                (!only.is_empty()).then(|| (c.clone(), only))
            })
            .collect()
    };
    Preview {
        events: events.len(),
        rejected: new.rejected.len(),
        contacts: contacts.len(),
        models,
        would_alert: diff(&new_alerts, &old_alerts),
        would_stop: diff(&old_alerts, &new_alerts),
    }
}

/// The index of a contact's tier in a model among `tiers` (0, the base
/// tier, when it has no state there).
fn tier_of(report: &Report, contact: &str, model: &str, tiers: &[String]) -> usize {
    report
        .contacts
        .get(contact)
        .and_then(|views| views.iter().find(|v| v.model == model))
        .and_then(|v| tiers.iter().position(|t| *t == v.tier))
        .unwrap_or(0)
}

/// Each contact's alerts as `model: tier ▲` (heated) or `▼` (cooled).
fn alerts(report: &Report) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for a in &report.alerts {
        let arrow = if a.direction == score_alert::Direction::Cooled as i32 { "▼" } else { "▲" };
        out.entry(a.contact_id.clone()).or_default().insert(format!("{}: {} {arrow}", a.model, a.tier));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::interaction_event::Interaction;
    use crate::proto::PageView;

    const RULES: &str = "
models:
  - name: m
    half_life: 14d
    tiers:
      - { name: warm, enter: 15, exit: 10 }
      - { name: hot, enter: 35, exit: 30 }
    rules:
      - { id: pricing, when: { kind: page_view, url: { prefix: /pricing } }, points: POINTS }
";

    fn views(contact: &str, n: usize) -> Vec<InteractionEvent> {
        (0..n)
            .map(|i| InteractionEvent {
                event_id: format!("{contact}-{i}"),
                contact_id: contact.into(),
                occurred_at: Some(crate::decode::timestamp(1_760_000_000_000 + i as i64 * 1000)),
                interaction: Some(Interaction::PageView(PageView { url: "/pricing".into(), ..Default::default() })),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn a_preview_counts_migrations_alerts_and_hits() {
        let old = RuleSet::parse(&RULES.replace("POINTS", "10"), "t").unwrap();
        let new = RuleSet::parse(&RULES.replace("POINTS", "20"), "t").unwrap();
        // a: 1 view (10 -> 20: cold -> warm); b: 2 views (20 -> 40: warm -> hot); c: 4 (40 -> 80: hot -> hot).
        let events: Vec<_> = [views("a", 1), views("b", 2), views("c", 4)].concat();
        let p = compare(&old, &new, &events);
        assert_eq!((p.events, p.contacts, p.rejected), (7, 3, 0));
        let m = &p.models[0];
        assert_eq!(m.from, ["cold", "warm", "hot"]);
        assert_eq!(m.matrix, vec![vec![0, 1, 0], vec![0, 0, 1], vec![0, 0, 1]]);
        assert_eq!(m.hits, vec![("pricing".to_string(), Some(7), Some(7))]);
        let alert = |c: &str, a: &str| (c.to_string(), vec![a.to_string()]);
        assert_eq!(p.would_alert, vec![alert("a", "m: warm ▲"), alert("b", "m: hot ▲")]);
        assert!(p.would_stop.is_empty());
        assert_eq!(old.models[0].rules[0].hits.get(), 0, "a preview does not count as the service's hits");
    }

    #[test]
    fn the_latest_events_keep_each_contacts_order() {
        let tail: Vec<crate::kafka::Tail> = views("a", 3)
            .iter()
            .chain(&views("b", 3))
            .enumerate()
            .map(|(i, e)| crate::kafka::Tail {
                partition: (i / 3) as i32,
                offset: (i % 3) as i64,
                payload: e.encode_to_vec(),
            })
            .collect();
        let ids: Vec<String> = latest(tail, 4).into_iter().map(|e| e.event_id).collect();
        assert_eq!(ids, ["a-1", "a-2", "b-1", "b-2"]);
    }
}
