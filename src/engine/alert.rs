//! Alerts for tier crossings, with deterministic ids.

use sha2::{Digest, Sha256};

use super::Source;
use crate::decode;
use crate::proto::{score_alert, Contribution, ScoreAlert};
use crate::rules::Model;
use crate::score::{Crossing, Direction};

/// Deterministic alert id: the same crossing always gets the same id. A
/// crossing an event caused is named by the event's source partition and
/// offset, the model, tier and direction; cooling by decay by the contact,
/// model, tier and the exact time decay crossed the exit, so a sweep and a
/// later event's catch-up name it alike.
pub fn alert_id(source: Source<'_>, offset: i64, contact: &str, model: &str, c: &Crossing, tier: &str) -> String {
    let Source { topic, partition } = source;
    let key = if c.by_event {
        format!("{topic}/{partition}/{offset}/{model}/{tier}/{}", c.direction.as_str())
    } else {
        format!("{topic}/{partition}/decay/{contact}/{model}/{tier}/{}", c.at_ms)
    };
    digest16(&key)
}

/// The id of one contact's alert among several one event raised (a
/// promotion's announcement): `base` and the contact, hashed.
pub fn per_contact(base: &str, contact: &str) -> String {
    digest16(&format!("{base}/{contact}"))
}

/// The first 16 bytes of the SHA-256 of `text`, in hex: how alert ids (and
/// an account's memory of a contact gone) are made from what names them.
pub fn digest16(text: &str) -> String {
    Sha256::digest(text.as_bytes())[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The alert for a crossing; `offset` and `event_id` name the triggering
/// event (unused for cooling by decay).
pub fn build_alert(
    source: Source<'_>,
    offset: i64,
    event_id: &str,
    contact_id: &str,
    account: Option<&str>,
    model: &Model,
    c: &Crossing,
) -> ScoreAlert {
    let tier = model.tier_name(c.to);
    ScoreAlert {
        alert_id: alert_id(source, offset, contact_id, &model.name, c, tier),
        contact_id: contact_id.to_string(),
        account_id: account.unwrap_or_default().to_string(),
        model: model.name.clone(),
        model_version: model.version,
        direction: match c.direction {
            Direction::Heated => score_alert::Direction::Heated as i32,
            Direction::Cooled => score_alert::Direction::Cooled as i32,
        },
        tier: tier.to_string(),
        previous_tier: model.tier_name(c.from).to_string(),
        score: c.score,
        threshold: c.threshold,
        crossed_at: Some(decode::timestamp(c.at_ms)),
        trigger_event_id: if c.by_event { event_id.to_string() } else { String::new() },
        top_contributions: c
            .top_contributions
            .iter()
            .map(|(rule_id, points)| Contribution { rule_id: rule_id.clone(), points: *points })
            .collect(),
        historical: false,
        shadow: false,
    }
}
