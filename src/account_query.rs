//! The account read side: an account's standing in each model with an
//! `account:` roll-up, its contributing contacts, the account leaderboards
//! and the recent account alerts, read from what the account stage stores.
//!
//! The account stage keeps, per partition `p` of the internal topic
//! `topics.account_contributions`, under that partition's keys
//! ([`crate::store::PartitionKeys`]):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `states` | hash | each account's [`AccountState`] (JSON), by account id |
//! | `lb:<model>` | sorted set | accounts by [`account::leaderboard_value`] |
//! | `recent` | stream | the latest account alerts (`AccountAlert`, field `alert`) |
//!
//! Invariants:
//! - A view is [`account::standing`] at the moment asked for and nothing
//!   else: its score, breadth, and each contact's score, weight and share
//!   are those numbers exactly (a share is the contact's value over the
//!   account score; 0 for a contact outside the `top` N or an account score
//!   of 0).
//! - The tier shown is the tier at that moment: the stored tier, less any
//!   cooling by decay due by then that the account stage has not swept yet
//!   ([`account::cool_until`] on a copy). Reads never write.
//! - A leaderboard lists accounts by their exact score at the moment, highest
//!   first, ties by account id. Its sorted sets order accounts by score while
//!   contacts only decay, so the top `2 * limit` entries of each partition
//!   hold the answer; those are loaded and scored exactly.
//! - No answer carries a contact's profile: contacts appear by id, score,
//!   weight, share and tier only (the attributes a roll-up weighs by stay in
//!   the stored state).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::account::{self, AccountState};
use crate::api::{authorize, ApiContext, ApiError};
use crate::rules::{AccountRollup, Model, RuleSet};
use crate::score::Millis;
use crate::store::{Store, StoreError};

/// Why an account read failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountReadError {
    /// The model is unknown or has no `account:` roll-up.
    #[error("no model `{model}` with an account roll-up; models with one: {}", names(.with_rollup))]
    UnknownModel {
        /// The model asked for.
        model: String,
        /// The models that have a roll-up.
        with_rollup: Vec<String>,
    },
    /// A stored account state cannot be read back.
    #[error("the stored state of account `{account}` (partition {partition}) cannot be read: {message}")]
    Corrupt {
        /// The account.
        account: String,
        /// Its partition of the account topic.
        partition: i32,
        /// What is wrong.
        message: String,
    },
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn names(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// One contact's place in an account's score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountContactView {
    /// Contact id.
    pub contact_id: String,
    /// Its score in the model at the moment.
    pub score: f64,
    /// Its weight in the roll-up.
    pub weight: f64,
    /// Its weighted score's share of the account score (0..1); 0 when not
    /// counted.
    pub share: f64,
    /// Its tier in the model at the moment.
    pub tier: String,
    /// Whether it counts in the score (false: outside the `top` N).
    pub counted: bool,
    /// Whether it is at or above the breadth tier.
    pub counts_toward_breadth: bool,
}

/// The account tier above the current one: what entering it takes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NextTier {
    /// Its name.
    pub name: String,
    /// The account score that enters it.
    pub enter: f64,
    /// Contacts at or above the breadth tier it needs.
    pub min_contacts: u32,
}

/// An account's standing in one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountModelView {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: u32,
    /// Account score at the moment.
    pub score: f64,
    /// Account tier at the moment.
    pub tier: String,
    /// Its index: 0 the base tier, then the roll-up's tiers lowest first.
    pub tier_index: usize,
    /// The roll-up's base tier.
    pub base_tier: String,
    /// Contacts at or above the breadth tier.
    pub breadth: u32,
    /// The model tier a contact must hold to count toward breadth.
    pub breadth_tier: String,
    /// The next account tier up, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_tier: Option<NextTier>,
    /// Contacts with a part in the model, largest value first (ties by id).
    pub contacts: Vec<AccountContactView>,
}

/// An account in every model with a roll-up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountView {
    /// Account id.
    pub account_id: String,
    /// Partition of the account topic that owns it.
    pub partition: i32,
    /// The moment read (ms since the epoch).
    pub at_ms: Millis,
    /// One entry per model with an `account:` roll-up.
    pub models: Vec<AccountModelView>,
}

/// The account's tier in `model` at `at`: the stored one, less the coolings
/// by decay due by `at`.
pub fn tier_at(
    rules: &RuleSet,
    account_id: &str,
    state: &AccountState,
    model: &Model,
    rollup: &AccountRollup,
    at: Millis,
) -> usize {
    if account::cooling_due(model, rollup, state).is_some_and(|due| due <= at) {
        let mut cooled = state.clone();
        account::cool_until(rules, account_id, &mut cooled, at, &mut Vec::new());
        cooled.tier(model, rollup)
    } else {
        state.tier(model, rollup)
    }
}

/// One model's view of an account at `at`.
pub fn model_view(
    rules: &RuleSet,
    account_id: &str,
    state: &AccountState,
    model: &Model,
    rollup: &AccountRollup,
    at: Millis,
) -> AccountModelView {
    let s = account::standing(model, rollup, state, at);
    let tier = tier_at(rules, account_id, state, model, rollup, at);
    let contacts = s
        .shares
        .iter()
        .map(|x| AccountContactView {
            contact_id: x.contact.clone(),
            score: x.score,
            weight: x.weight,
            share: if x.counted && s.score > 0.0 { x.value / s.score } else { 0.0 },
            tier: x.tier.clone(),
            counted: x.counted,
            counts_toward_breadth: x.broad,
        })
        .collect();
    AccountModelView {
        model: model.name.clone(),
        version: model.version,
        score: s.score,
        tier: rollup.tier_name(tier).to_string(),
        tier_index: tier,
        base_tier: rollup.base_tier.clone(),
        breadth: s.breadth,
        breadth_tier: model.tier_name(rollup.breadth_tier).to_string(),
        next_tier: rollup.tiers.get(tier).map(|t| NextTier {
            name: t.name.clone(),
            enter: t.enter,
            min_contacts: t.min_contacts,
        }),
        contacts,
    }
}

/// An account's view at `at` in every model with a roll-up.
pub fn view(rules: &RuleSet, account_id: &str, partition: i32, state: &AccountState, at: Millis) -> AccountView {
    AccountView {
        account_id: account_id.to_string(),
        partition,
        at_ms: at,
        models: account::models(rules).map(|(m, r)| model_view(rules, account_id, state, m, r, at)).collect(),
    }
}

/// An account view as a readable table.
pub fn render(v: &AccountView) -> String {
    let mut out = format!("account {}, partition {}\n", v.account_id, v.partition);
    for m in &v.models {
        out.push_str(&format!(
            "\n{} v{}: score {:.2}, tier {}, breadth {} (contacts at or above {})\n",
            m.model, m.version, m.score, m.tier, m.breadth, m.breadth_tier
        ));
        if let Some(n) = &m.next_tier {
            out.push_str(&format!("next: {} at {:.2} with {} or more contacts\n", n.name, n.enter, n.min_contacts));
        }
        out.push_str(&format!(
            "  {:<24} {:>10} {:>7} {:>7}  {:<12} counts\n",
            "contact", "score", "weight", "share", "tier"
        ));
        for c in &m.contacts {
            let counts = match (c.counted, c.counts_toward_breadth) {
                (true, true) => "score, breadth",
                (true, false) => "score",
                (false, true) => "breadth",
                (false, false) => "-",
            };
            out.push_str(&format!(
                "  {:<24} {:>10.2} {:>7.2} {:>6.1}%  {:<12} {counts}\n",
                c.contact_id,
                c.score,
                c.weight,
                c.share * 100.0,
                c.tier
            ));
        }
    }
    out
}

/// One row of an account leaderboard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountLeaderboardEntry {
    /// Account id.
    pub account_id: String,
    /// Partition of the account topic that owns it.
    pub partition: i32,
    /// Account score at the moment.
    pub score: f64,
    /// Account tier at the moment.
    pub tier: String,
    /// Its index (0: the base tier).
    pub tier_index: usize,
    /// Contacts at or above the breadth tier.
    pub breadth: u32,
    /// Contacts with a part in the model.
    pub contacts: usize,
}

/// A model's account leaderboard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountLeaderboard {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: u32,
    /// The moment read.
    pub at_ms: Millis,
    /// The roll-up's base tier, then its tiers lowest first.
    pub tiers: Vec<String>,
    /// Highest score first, ties by account id.
    pub entries: Vec<AccountLeaderboardEntry>,
}

/// The model named `name` and its roll-up.
pub fn rollup_of<'a>(rules: &'a RuleSet, name: &str) -> Result<(&'a Model, &'a AccountRollup), AccountReadError> {
    account::models(rules).find(|(m, _)| m.name == name).ok_or_else(|| AccountReadError::UnknownModel {
        model: name.to_string(),
        with_rollup: account::models(rules).map(|(m, _)| m.name.clone()).collect(),
    })
}

/// Ranks candidates (partition, account id, state) by their exact score at
/// `at`, highest first, ties by id; keeps `limit`.
pub fn rank(
    rules: &RuleSet,
    model: &Model,
    rollup: &AccountRollup,
    candidates: &[(i32, String, AccountState)],
    at: Millis,
    limit: usize,
) -> Vec<AccountLeaderboardEntry> {
    let mut entries: Vec<AccountLeaderboardEntry> = candidates
        .iter()
        .map(|(p, id, state)| {
            let s = account::standing(model, rollup, state, at);
            let tier = tier_at(rules, id, state, model, rollup, at);
            AccountLeaderboardEntry {
                account_id: id.clone(),
                partition: *p,
                score: s.score,
                tier: rollup.tier_name(tier).to_string(),
                tier_index: tier,
                breadth: s.breadth,
                contacts: s.shares.len(),
            }
        })
        .collect();
    entries.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.account_id.cmp(&b.account_id)));
    entries.truncate(limit);
    entries
}

/// An account alert as the read API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountAlertView {
    /// Deterministic alert id.
    pub alert_id: String,
    /// Account id.
    pub account_id: String,
    /// Model.
    pub model: String,
    /// Model version.
    pub model_version: u32,
    /// `heated` or `cooled`.
    pub direction: &'static str,
    /// Account tier entered.
    pub tier: String,
    /// Account tier left.
    pub previous_tier: String,
    /// Account score at the crossing.
    pub score: f64,
    /// Threshold crossed.
    pub threshold: f64,
    /// When it crossed (ms since the epoch).
    pub crossed_at_ms: Millis,
    /// Contacts at or above the breadth tier then.
    pub breadth: u32,
    /// The contact whose change caused it; empty for cooling by decay.
    pub trigger_contact_id: String,
    /// Its event.
    pub trigger_event_id: String,
    /// The contacts that drove it, largest share first.
    pub drivers: Vec<AccountDriverView>,
    /// A crossing further back than `pipeline.historical_after` when raised.
    pub historical: bool,
}

/// A contact that drove an account alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountDriverView {
    /// Contact id.
    pub contact_id: String,
    /// Its score in the model.
    pub score: f64,
    /// Its weight.
    pub weight: f64,
    /// Its share of the account score.
    pub share: f64,
    /// Its tier in the model.
    pub tier: String,
}

impl From<crate::proto::AccountAlert> for AccountAlertView {
    fn from(a: crate::proto::AccountAlert) -> Self {
        let heated = a.direction == crate::proto::score_alert::Direction::Heated as i32;
        Self {
            alert_id: a.alert_id,
            account_id: a.account_id,
            model: a.model,
            model_version: a.model_version,
            direction: if heated { "heated" } else { "cooled" },
            tier: a.tier,
            previous_tier: a.previous_tier,
            score: a.score,
            threshold: a.threshold,
            crossed_at_ms: a.crossed_at.as_ref().map_or(0, crate::decode::millis),
            breadth: a.breadth,
            trigger_contact_id: a.trigger_contact_id,
            trigger_event_id: a.trigger_event_id,
            drivers: a
                .drivers
                .into_iter()
                .map(|d| AccountDriverView {
                    contact_id: d.contact_id,
                    score: d.score,
                    weight: d.weight,
                    share: d.share,
                    tier: d.tier,
                })
                .collect(),
            historical: a.historical,
        }
    }
}

fn decode(account: &str, partition: i32, bytes: &[u8]) -> Result<AccountState, AccountReadError> {
    AccountState::decode(bytes).map_err(|e| AccountReadError::Corrupt {
        account: account.to_string(),
        partition,
        message: e.to_string(),
    })
}

/// Finds an account's state among the account topic's `partitions`
/// partitions (one HGET each, pipelined); `None` if no partition has it.
pub async fn find(
    store: &Store,
    topic: &str,
    partitions: i32,
    account_id: &str,
) -> Result<Option<(i32, AccountState)>, AccountReadError> {
    match store.find_in_hash(topic, partitions, |k| k.states(), account_id).await? {
        Some((p, bytes)) => Ok(Some((p, decode(account_id, p, &bytes)?))),
        None => Ok(None),
    }
}

/// The top `limit` accounts of `model` at `at`, merged across the account
/// topic's `partitions` partitions.
pub async fn leaderboard(
    store: &Store,
    rules: &RuleSet,
    topic: &str,
    partitions: i32,
    model: &str,
    at: Millis,
    limit: usize,
) -> Result<AccountLeaderboard, AccountReadError> {
    let (m, rollup) = rollup_of(rules, model)?;
    let top = store.leaderboard_top(topic, partitions, &m.name, f64::NEG_INFINITY, limit.saturating_mul(2)).await?;
    let mut by_partition: HashMap<i32, Vec<&str>> = HashMap::new();
    for (id, _, p) in &top {
        by_partition.entry(*p).or_default().push(id);
    }
    let mut candidates = Vec::with_capacity(top.len());
    for (p, ids) in by_partition {
        let values = store.hash_values(&store.keys(topic, p).states(), &ids).await?;
        for (id, v) in ids.iter().zip(values) {
            // An entry whose state is gone (a race with a removal) is skipped.
            if let Some(bytes) = v {
                candidates.push((p, id.to_string(), decode(id, p, &bytes)?));
            }
        }
    }
    let tiers = (0..=rollup.tiers.len()).map(|i| rollup.tier_name(i).to_string()).collect();
    Ok(AccountLeaderboard {
        model: m.name.clone(),
        version: m.version,
        at_ms: at,
        tiers,
        entries: rank(rules, m, rollup, &candidates, at, limit),
    })
}

/// The latest `limit` account alerts across the account topic's
/// partitions, newest first (undecodable entries skipped).
pub async fn recent_alerts(
    store: &Store,
    topic: &str,
    partitions: i32,
    limit: usize,
) -> Result<Vec<AccountAlertView>, AccountReadError> {
    use prost::Message as _;
    let raw = store.recent_alerts(topic, partitions, limit).await?;
    Ok(raw
        .into_iter()
        .filter_map(|(_, payload)| crate::proto::AccountAlert::decode(payload.as_slice()).ok().map(Into::into))
        .collect())
}

/// The account routes of the read API:
///
/// - `GET /v1/accounts/{account_id}?at=`: the account in each model with a
///   roll-up, with its contacts;
/// - `GET /v1/accounts/models/{model}/leaderboard?limit=&at=`: the top
///   accounts by current score;
/// - `GET /v1/accounts/alerts/recent?limit=`: the latest account alerts,
///   newest first.
pub fn routes() -> Router<ApiContext> {
    Router::new()
        .route("/v1/accounts/{account_id}", get(account_route))
        .route("/v1/accounts/models/{model}/leaderboard", get(leaderboard_route))
        .route("/v1/accounts/alerts/recent", get(recent_alerts_route))
}

/// Runs a read, and once more if its connection had dropped (as the
/// contact reads do: the connection reconnects on the first failure).
async fn read<T, F, Fut>(f: F) -> Result<T, AccountReadError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, AccountReadError>>,
{
    match f().await {
        Err(AccountReadError::Store(StoreError::Redis(e))) if e.is_io_error() || e.is_connection_dropped() => {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            f().await
        }
        r => r,
    }
}

impl From<AccountReadError> for ApiError {
    fn from(e: AccountReadError) -> Self {
        match e {
            AccountReadError::UnknownModel { .. } => ApiError::not_found(e.to_string()),
            AccountReadError::Corrupt { .. } => ApiError::internal(e.to_string()),
            AccountReadError::Store(e) => e.into(),
        }
    }
}

async fn account_route(
    State(s): State<ApiContext>,
    headers: HeaderMap,
    Path(account_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<AccountView>, ApiError> {
    authorize(&s, &headers)?;
    let at = crate::api::at_param(&q)?;
    let partitions = s.account_partitions().await?;
    let rules = s.rules.current();
    match read(|| find(&s.store, &s.account_topic, partitions, &account_id)).await? {
        Some((p, state)) => Ok(Json(view(&rules, &account_id, p, &state, at))),
        None => Err(ApiError::not_found(format!("no account `{account_id}` has a score"))),
    }
}

async fn leaderboard_route(
    State(s): State<ApiContext>,
    headers: HeaderMap,
    Path(model): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<AccountLeaderboard>, ApiError> {
    authorize(&s, &headers)?;
    let rules = s.rules.current();
    rollup_of(&rules, &model)?;
    let limit = crate::api::limit_param(&q, 10, 1000)?;
    let at = crate::api::at_param(&q)?;
    let partitions = s.account_partitions().await?;
    let board = read(|| leaderboard(&s.store, &rules, &s.account_topic, partitions, &model, at, limit)).await?;
    Ok(Json(board))
}

async fn recent_alerts_route(
    State(s): State<ApiContext>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers)?;
    let limit = crate::api::limit_param(&q, 50, 200)?;
    let partitions = s.account_partitions().await?;
    let alerts = read(|| recent_alerts(&s.store, &s.account_topic, partitions, limit)).await?;
    Ok(Json(serde_json::json!({ "alerts": alerts })))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::proto::{AccountContribution, ContactPart};

    const T0: Millis = 1_760_000_000_000;
    const DAY: Millis = 86_400_000;

    fn rules() -> RuleSet {
        RuleSet::parse(
            "models:
  - name: m
    half_life: 1d
    tiers: [{name: warm, enter: 30, exit: 20}, {name: hot, enter: 60, exit: 45}]
    rules: [{id: p, when: {kind: page_view}, points: 40}]
    account:
      breadth: warm
      top: 2
      weights: {attribute: role, values: {boss: 2}, default: 1}
      tiers:
        - {name: engaged, enter: 50, exit: 40}
        - {name: buying, enter: 100, exit: 80, min_contacts: 3}
  - name: plain
    half_life: 1d
    rules: [{id: p, when: {kind: page_view}, points: 1}]",
            "t",
        )
        .unwrap()
    }

    fn state(r: &RuleSet, members: &[(&str, f64, &str, &str)]) -> AccountState {
        let mut st = AccountState::default();
        for (i, (contact, b, tier, role)) in members.iter().enumerate() {
            let c = AccountContribution {
                account_id: "acme".into(),
                contact_id: contact.to_string(),
                topic: "in".into(),
                partition: 0,
                offset: i as i64,
                event_id: format!("e{i}"),
                occurred_at: Some(crate::decode::timestamp(T0)),
                left: false,
                parts: vec![ContactPart {
                    model: "m".into(),
                    behaviour: *b,
                    at_ms: T0,
                    fit: 0.0,
                    tier: tier.to_string(),
                }],
                attributes: BTreeMap::from([("role".to_string(), role.to_string())]),
                erased: false,
            };
            account::apply(r, "acme", &mut st, &c, &mut Vec::new());
        }
        st
    }

    #[test]
    fn the_view_is_the_standing_at_the_moment() {
        let r = rules();
        let st = state(&r, &[("a", 40.0, "warm", "staff"), ("boss", 30.0, "warm", "boss"), ("c", 10.0, "cold", "x")]);
        let at = T0 + DAY / 3;
        let v = view(&r, "acme", 3, &st, at);
        assert_eq!((v.account_id.as_str(), v.partition, v.at_ms, v.models.len()), ("acme", 3, at, 1));
        let m = &v.models[0];
        let (model, rollup) = rollup_of(&r, "m").unwrap();
        let s = account::standing(model, rollup, &st, at);
        assert_eq!((m.score, m.breadth), (s.score, s.breadth));
        assert_eq!(m.breadth_tier, "warm");
        let ids: Vec<&str> = m.contacts.iter().map(|c| c.contact_id.as_str()).collect();
        assert_eq!(ids, ["boss", "a", "c"], "largest value first");
        for (c, x) in m.contacts.iter().zip(&s.shares) {
            assert_eq!(
                (c.score, c.weight, c.counted, c.counts_toward_breadth),
                (x.score, x.weight, x.counted, x.broad)
            );
        }
        assert!(!m.contacts[2].counted && m.contacts[2].share == 0.0, "outside the top 2");
        assert!((m.contacts.iter().map(|c| c.share).sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!((m.tier.as_str(), m.tier_index), ("engaged", 1));
        let next = m.next_tier.as_ref().unwrap();
        assert_eq!((next.name.as_str(), next.enter, next.min_contacts), ("buying", 100.0, 3));
        let text = render(&v);
        assert!(
            text.contains("account acme, partition 3") && text.contains("boss") && text.contains("engaged"),
            "{text}"
        );
    }

    #[test]
    fn the_tier_shown_is_cooled_by_decay_due_by_the_moment() {
        let r = rules();
        let st = state(&r, &[("a", 40.0, "warm", "x"), ("b", 30.0, "warm", "x")]);
        let (model, rollup) = rollup_of(&r, "m").unwrap();
        let due = account::cooling_due(model, rollup, &st).unwrap();
        assert_eq!(view(&r, "acme", 0, &st, due - 1).models[0].tier, "engaged");
        let cooled = &view(&r, "acme", 0, &st, due).models[0];
        assert_eq!((cooled.tier.as_str(), cooled.tier_index), ("cold", 0));
        assert_eq!(st.tiers["m"], "engaged", "a read never writes");
    }

    #[test]
    fn a_leaderboard_ranks_by_exact_score_then_id() {
        let r = rules();
        let (model, rollup) = rollup_of(&r, "m").unwrap();
        let candidates = vec![
            (0, "small".to_string(), state(&r, &[("a", 10.0, "cold", "x")])),
            (1, "big".to_string(), state(&r, &[("a", 40.0, "warm", "x"), ("b", 30.0, "warm", "x")])),
            (1, "twin-b".to_string(), state(&r, &[("a", 20.0, "warm", "x")])),
            (0, "twin-a".to_string(), state(&r, &[("z", 20.0, "warm", "x")])),
        ];
        let at = T0 + DAY / 4;
        let top = rank(&r, model, rollup, &candidates, at, 3);
        let ids: Vec<&str> = top.iter().map(|e| e.account_id.as_str()).collect();
        assert_eq!(ids, ["big", "twin-a", "twin-b"]);
        assert_eq!(top[0].score, account::standing(model, rollup, &candidates[1].2, at).score);
        assert_eq!((top[0].partition, top[0].contacts, top[0].breadth), (1, 2, 2));
    }

    #[test]
    fn a_model_without_a_rollup_is_named_with_those_that_have_one() {
        let e = rollup_of(&rules(), "plain").unwrap_err();
        assert_eq!(e.to_string(), "no model `plain` with an account roll-up; models with one: m");
    }
}
