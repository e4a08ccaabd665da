//! The read side: a contact's scores, tiers and explanations, decayed to a
//! given moment, from its stored state.
//!
//! Invariant: [`view`] is where a contact's profile leaves hotlead (the read
//! API's contact answer, the board's lead panel, `hotlead score`), and it
//! never carries an attribute named in `privacy.hidden_attributes`. No other
//! answer here carries profile attributes: leaderboard entries, alerts and
//! model views hold contact ids, scores, tiers and rule ids only. Hidden
//! attributes still score: fit rules read the stored state, not a view.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::PrivacyConfig;
use crate::rules::RuleSet;
use crate::score::Millis;

/// One model's view of a contact at a moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelView {
    /// Model name.
    pub model: String,
    /// Version in force.
    pub version: u32,
    /// Score at the moment: behaviour decayed, plus fit.
    pub score: f64,
    /// Current tier.
    pub tier: String,
    /// Time of the contact's latest event in the model (ms since the epoch).
    pub last_activity_ms: Millis,
    /// The score by rule at the moment, largest first; the parts sum to `score`.
    pub breakdown: Vec<(String, f64)>,
    /// A shadow model (its crossings go to the shadow alert topic, not to
    /// sales).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// The back-filled lane scoring it (absent: the live service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
}

/// A contact's scores in every model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContactView {
    /// Contact id.
    pub contact_id: String,
    /// Account id, if known.
    pub account_id: Option<String>,
    /// Input partition that owns the contact.
    pub partition: i32,
    /// Current profile attributes, less `privacy.hidden_attributes`.
    pub profile: BTreeMap<String, String>,
    /// One entry per model the contact has a score in.
    pub models: Vec<ModelView>,
    /// For an anonymous visitor who identified: the contact it became (its
    /// scores are that contact's now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identified_as: Option<String>,
}

/// A contact's view at `now_ms` from its stored value, without the
/// attributes `privacy` hides.
pub fn contact_view(
    rules: &RuleSet,
    contact_id: &str,
    partition: i32,
    value: &crate::store::StoredValue,
    now_ms: Millis,
    privacy: &PrivacyConfig,
) -> Result<ContactView, crate::store::codec::CodecError> {
    let (account_id, state) = crate::store::decode_stored(rules, value)?;
    Ok(view(rules, contact_id, partition, account_id, &state, now_ms, privacy))
}

/// A contact's view at `now_ms` from its state, without the attributes
/// `privacy` hides.
pub fn view(
    rules: &RuleSet,
    contact_id: &str,
    partition: i32,
    account_id: Option<String>,
    state: &crate::score::ContactState,
    now_ms: Millis,
    privacy: &PrivacyConfig,
) -> ContactView {
    let mut profile = state.attributes();
    profile.retain(|name, _| privacy.serves(name));
    ContactView {
        contact_id: contact_id.to_string(),
        account_id,
        partition,
        profile,
        models: model_views(rules, state, now_ms),
        identified_as: state.links.into.clone(),
    }
}

/// Each model's view of a contact's state at `now_ms` (at `Millis::MIN`,
/// each model at its own latest event): scores, tiers and breakdowns by
/// rule id; no profile.
pub fn model_views(rules: &RuleSet, state: &crate::score::ContactState, now_ms: Millis) -> Vec<ModelView> {
    rules
        .models
        .iter()
        .zip(&state.models)
        .filter_map(|(m, st)| {
            let st = st.as_ref()?;
            let at = now_ms.max(st.at_ms);
            Some(ModelView {
                model: m.name.clone(),
                version: m.version,
                score: st.score_at(at, m.half_life_secs),
                tier: m.tier_name(st.tier).to_string(),
                last_activity_ms: st.at_ms,
                breakdown: st.explain(at, m.half_life_secs),
                shadow: m.shadow,
                lane: None,
            })
        })
        .collect()
}

/// A contact view as a readable table.
pub fn render(v: &ContactView) -> String {
    let mut out = format!("contact {}", v.contact_id);
    if let Some(a) = &v.account_id {
        out.push_str(&format!(" (account {a})"));
    }
    out.push_str(&format!(", partition {}\n", v.partition));
    if let Some(c) = &v.identified_as {
        out.push_str(&format!("an anonymous visitor who identified as {c}: its history is scored there\n"));
    }
    if !v.profile.is_empty() {
        let p: Vec<String> = v.profile.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("profile: {}\n", p.join(", ")));
    }
    out.push_str(&format!("{:<16} {:>10}  {:<14} {:<22} breakdown\n", "model", "score", "tier", "last activity"));
    for m in &v.models {
        let parts: Vec<String> = m.breakdown.iter().map(|(k, p)| format!("{k} {p:.2}")).collect();
        let secs = m.last_activity_ms.div_euclid(1000);
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64),
        );
        let role = if m.shadow { " (shadow)" } else { "" };
        out.push_str(&format!(
            "{:<16} {:>10.2}  {:<14} {:<22} {}\n",
            format!("{} v{}{role}", m.model, m.version),
            m.score,
            m.tier,
            when.to_string(),
            parts.join(", ")
        ));
    }
    out
}

/// One entry of a leaderboard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaderboardEntry {
    /// Contact id.
    pub contact_id: String,
    /// Score at the moment asked for (the ranked part: behaviour decayed, or
    /// fit for a fit-only model).
    pub score: f64,
    /// Input partition that owns the contact.
    pub partition: i32,
    /// Current tier in the model.
    pub tier: String,
    /// The contact's account id, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

/// An alert as the read API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertView {
    /// Deterministic alert id.
    pub alert_id: String,
    /// Contact id.
    pub contact_id: String,
    /// Account id.
    pub account_id: String,
    /// Model and version.
    pub model: String,
    /// Model version.
    pub model_version: u32,
    /// `heated` or `cooled`.
    pub direction: &'static str,
    /// Tier entered.
    pub tier: String,
    /// Tier left.
    pub previous_tier: String,
    /// Score at the crossing.
    pub score: f64,
    /// Threshold crossed.
    pub threshold: f64,
    /// When it crossed (ms since the epoch).
    pub crossed_at_ms: Millis,
    /// The event that caused it; empty for cooling by decay.
    pub trigger_event_id: String,
    /// Top contributions at the crossing.
    pub top_contributions: Vec<(String, f64)>,
}

impl From<crate::proto::ScoreAlert> for AlertView {
    fn from(a: crate::proto::ScoreAlert) -> Self {
        let heated = a.direction == crate::proto::score_alert::Direction::Heated as i32;
        Self {
            alert_id: a.alert_id,
            contact_id: a.contact_id,
            account_id: a.account_id,
            model: a.model,
            model_version: a.model_version,
            direction: if heated { "heated" } else { "cooled" },
            tier: a.tier,
            previous_tier: a.previous_tier,
            score: a.score,
            threshold: a.threshold,
            crossed_at_ms: a.crossed_at.as_ref().map_or(0, crate::decode::millis),
            trigger_event_id: a.trigger_event_id,
            top_contributions: a.top_contributions.into_iter().map(|c| (c.rule_id, c.points)).collect(),
        }
    }
}

/// The sorted-set entry value a current score corresponds to at `now_ms`:
/// entries at or above it have at least that score now.
pub fn leaderboard_entry_for(model: &crate::rules::Model, min_score: f64, now_ms: Millis) -> f64 {
    if model.rules.is_empty() {
        min_score
    } else {
        crate::score::leaderboard_value(model, min_score, now_ms)
    }
}

/// The least sorted-set entry value a leaderboard read at `now_ms` lists:
/// contacts with at least `min_score` and at least the model's floor
/// ([`crate::score::leaderboard_floor`]). Below the floor the leaderboard
/// keeps no one, so a `min_score` under it is raised to it and the answer
/// is the same whenever decayed entries are pruned.
pub fn leaderboard_least_entry(model: &crate::rules::Model, min_score: Option<f64>, now_ms: Millis) -> f64 {
    let floor = crate::score::leaderboard_floor(model);
    let least = min_score.unwrap_or(0.0).max(floor);
    if least > 0.0 {
        leaderboard_entry_for(model, least, now_ms)
    } else {
        f64::NEG_INFINITY
    }
}

/// The current score of a sorted-set entry value at `now_ms`.
pub fn leaderboard_value(model: &crate::rules::Model, z: f64, now_ms: Millis) -> f64 {
    if model.rules.is_empty() {
        z
    } else {
        (z - (now_ms - crate::score::LEADERBOARD_EPOCH_MS) as f64 / 1000.0 / model.half_life_secs).exp2()
    }
}

/// A model as the read API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Name.
    pub name: String,
    /// Version in force.
    pub version: u32,
    /// Half-life in seconds.
    pub half_life_seconds: f64,
    /// Base tier, then each tier with its thresholds.
    pub base_tier: String,
    /// Tiers, lowest first.
    pub tiers: Vec<serde_json::Value>,
    /// Behaviour rules: id, kind, points, cap, once.
    pub rules: Vec<serde_json::Value>,
    /// Fit rules: id, attributes tested, points.
    pub fit: Vec<serde_json::Value>,
    /// The account roll-up, if the model has one: top, breadth tier, base
    /// tier and account tiers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<serde_json::Value>,
}

/// The models in force, for the read API.
pub fn models_info(rules: &RuleSet) -> Vec<ModelInfo> {
    use serde_json::json;
    rules
        .models
        .iter()
        .map(|m| ModelInfo {
            name: m.name.clone(),
            version: m.version,
            half_life_seconds: m.half_life_secs,
            base_tier: m.base_tier.clone(),
            tiers: m
                .tiers
                .iter()
                .map(|t| {
                    json!({
                        "name": t.name, "enter": t.enter, "exit": t.exit,
                        "cooldown_seconds": t.cooldown_ms.map(|c| c / 1000), "alert": t.alert,
                        "requires": t.requires.iter().map(|r| json!({"model": r.model_name, "enter": r.enter, "exit": r.exit})).collect::<Vec<_>>(),
                    })
                })
                .collect(),
            rules: m
                .rules
                .iter()
                .map(|r| {
                    json!({
                        "id": r.id, "kind": r.kind.as_str(), "points": r.points, "once": r.once, "hits": r.hits.get(),
                        "fields": r.when.0.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(),
                        "cap": r.cap.map(|c| {
                            let per = format!("{:?}", c.per).to_lowercase();
                            match c.limit {
                                crate::rules::CapLimit::Hits(n) => json!({"hits": n, "per": per}),
                                crate::rules::CapLimit::Points(n) => json!({"points": n, "per": per}),
                            }
                        }),
                    })
                })
                .collect(),
            fit: m
                .fit
                .iter()
                .map(|f| {
                    json!({"id": f.id, "points": f.points, "attributes": f.when.0.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>()})
                })
                .collect(),
            account: m.account.as_ref().map(|a| {
                json!({
                    "top": a.top, "breadth_tier": m.tier_name(a.breadth_tier), "base_tier": a.base_tier,
                    "tiers": a.tiers.iter().map(|t| json!({"name": t.name, "enter": t.enter, "exit": t.exit, "min_contacts": t.min_contacts, "alert": t.alert})).collect::<Vec<_>>(),
                })
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::interaction_event::Interaction;
    use crate::proto::{InteractionEvent, ProfileUpdate};

    const RULES: &str = "
keep_attributes: [country, industry]
models:
  - name: fit
    half_life: 365d
    fit:
      - { id: chief, when: { job_title: { regex: '(?i)chief' } }, points: 20 }
";

    #[test]
    fn hidden_attributes_score_but_never_reach_the_view() {
        let rules = RuleSet::parse(RULES, "rules").unwrap();
        let mut state = crate::score::ContactState::new(rules.models.len());
        let attributes = [("job_title", "Chief Secret Officer"), ("country", "NZ"), ("industry", "software")];
        let event = InteractionEvent {
            interaction: Some(Interaction::ProfileUpdate(ProfileUpdate {
                attributes: attributes.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            })),
            ..Default::default()
        };
        crate::score::apply_event(&rules, &mut state, &event, 1_000);

        let open = view(&rules, "c", 0, None, &state, 2_000, &PrivacyConfig::default());
        assert_eq!(open.profile.len(), 3, "{:?}", open.profile);
        assert_eq!(open.profile["job_title"], "Chief Secret Officer");

        let privacy = PrivacyConfig { hidden_attributes: ["job_title".into(), "country".into()].into() };
        let hidden = view(&rules, "c", 0, None, &state, 2_000, &privacy);
        assert_eq!(hidden.profile, BTreeMap::from([("industry".to_string(), "software".to_string())]));
        assert_eq!(hidden.models, open.models, "the hidden attribute still scores");
        assert_eq!(hidden.models[0].breakdown, vec![("chief".to_string(), 20.0)]);
        let shown = serde_json::to_string(&hidden).unwrap() + &render(&hidden);
        assert!(!shown.contains("Secret") && !shown.contains("NZ"), "{shown}");
    }
}
