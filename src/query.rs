//! The read side: a contact's scores, tiers and explanations, decayed to a
//! given moment, from its stored state.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::rules::RuleSet;
use crate::score::Millis;
use crate::store::decode_contact;

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
    /// Current profile attributes.
    pub profile: BTreeMap<String, String>,
    /// One entry per model the contact has a score in.
    pub models: Vec<ModelView>,
}

/// A contact's view at `now_ms` from its stored hash fields.
pub fn contact_view(
    rules: &RuleSet,
    contact_id: &str,
    partition: i32,
    fields: &HashMap<String, Vec<u8>>,
    now_ms: Millis,
) -> ContactView {
    let (account_id, state) = decode_contact(rules, fields);
    let models = rules
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
            })
        })
        .collect();
    ContactView { contact_id: contact_id.to_string(), account_id, partition, profile: state.attributes(), models }
}

/// A contact view as a readable table.
pub fn render(v: &ContactView) -> String {
    let mut out = format!("contact {}", v.contact_id);
    if let Some(a) = &v.account_id {
        out.push_str(&format!(" (account {a})"));
    }
    out.push_str(&format!(", partition {}\n", v.partition));
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
        out.push_str(&format!(
            "{:<16} {:>10.2}  {:<14} {:<22} {}\n",
            format!("{} v{}", m.model, m.version),
            m.score,
            m.tier,
            when.to_string(),
            parts.join(", ")
        ));
    }
    out
}
