//! Scoring one partition batch: decode, apply every model, and build the
//! Redis commit (state, leaderboards, alerts and dead letters).

use std::collections::HashMap;

use prost::Message as _;
use sha2::{Digest, Sha256};

use crate::decode::{self, DecodeError, Limits};
use crate::proto::{score_alert, Contribution, ScoreAlert};
use crate::rules::RuleSet;
use crate::score::{self, ContactState, Crossing, Direction, Millis};
use crate::store::{decode_contact, encode_contact, Commit, OutboxEntry};
use crate::telemetry;

/// A message read from the input topic.
#[derive(Debug, Clone)]
pub struct InputMessage {
    /// Partition offset.
    pub offset: i64,
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Message payload.
    pub payload: Option<Vec<u8>>,
}

/// Where a batch comes from and where its output goes.
#[derive(Debug, Clone)]
pub struct BatchTarget<'a> {
    /// Input topic.
    pub input_topic: &'a str,
    /// Partition of the input topic.
    pub partition: i32,
    /// Alert topic.
    pub alerts_topic: &'a str,
    /// Dead-letter topic.
    pub dead_letter_topic: &'a str,
}

/// Dead-letter header: the reason code.
pub const HEADER_REASON: &str = "hotlead.reason";
/// Dead-letter header: the full error message.
pub const HEADER_ERROR: &str = "hotlead.error";
/// Dead-letter header: source topic.
pub const HEADER_SOURCE_TOPIC: &str = "hotlead.source.topic";
/// Dead-letter header: source partition.
pub const HEADER_SOURCE_PARTITION: &str = "hotlead.source.partition";
/// Dead-letter header: source offset.
pub const HEADER_SOURCE_OFFSET: &str = "hotlead.source.offset";

/// The result of scoring a batch, ready to commit.
#[derive(Debug, Default)]
pub struct ScoredBatch {
    /// The commit (epoch and watermarks left for the caller to fill).
    pub commit: Commit,
    /// Events scored.
    pub scored: usize,
    /// Directions of the alerts raised.
    pub alerts: Vec<Direction>,
}

/// Decodes a batch's messages, in offset order.
pub fn decode_all(
    messages: &[InputMessage],
    limits: &Limits,
    now_ms: Millis,
) -> Vec<(i64, Result<decode::ValidEvent, DecodeError>)> {
    messages.iter().map(|m| (m.offset, decode::decode(m.payload.as_deref(), limits, now_ms))).collect()
}

/// Deterministic alert id: the same crossing (source partition and offset of
/// the triggering event, model, tier, direction) always gets the same id.
pub fn alert_id(topic: &str, partition: i32, offset: i64, model: &str, tier: &str, direction: Direction) -> String {
    let d = Sha256::digest(format!("{topic}/{partition}/{offset}/{model}/{tier}/{}", direction.as_str()).as_bytes());
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Scores decoded messages against the loaded contact hashes.
///
/// `decoded` is in offset order; `loaded` maps contact ids to their stored
/// hash fields (absent or empty for new contacts).
pub fn score_batch(
    rules: &RuleSet,
    target: &BatchTarget<'_>,
    messages: &[InputMessage],
    decoded: Vec<(i64, Result<decode::ValidEvent, DecodeError>)>,
    loaded: &HashMap<String, HashMap<String, Vec<u8>>>,
) -> ScoredBatch {
    struct Contact {
        account: Option<String>,
        state: ContactState,
    }
    let mut out = ScoredBatch::default();
    let mut contacts: HashMap<String, Contact> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for ((offset, result), msg) in decoded.into_iter().zip(messages) {
        let valid = match result {
            Ok(v) => v,
            Err(e) => {
                telemetry::dead_lettered(target.partition, offset, e.reason(), &e);
                out.commit.outbox.push(dead_letter(target, msg, &e));
                continue;
            }
        };
        out.scored += 1;
        let ev = &valid.event;
        let contact = contacts.entry(ev.contact_id.clone()).or_insert_with(|| {
            order.push(ev.contact_id.clone());
            let (account, state) = match loaded.get(&ev.contact_id) {
                Some(fields) => decode_contact(rules, fields),
                None => (None, ContactState::new(rules.models.len())),
            };
            Contact { account, state }
        });
        if !ev.account_id.is_empty() {
            contact.account = Some(ev.account_id.clone());
        }
        for c in score::apply_event(rules, &mut contact.state, ev, valid.at_ms) {
            let model = &rules.models[c.model];
            let alert =
                build_alert(target, offset, &ev.event_id, &ev.contact_id, contact.account.as_deref(), model, &c);
            telemetry::tier_crossed(
                target.partition,
                &ev.contact_id,
                &model.name,
                model.tier_name(c.from),
                model.tier_name(c.to),
                c.direction.as_str(),
            );
            out.alerts.push(c.direction);
            out.commit.outbox.push(OutboxEntry {
                topic: target.alerts_topic.to_string(),
                key: ev.contact_id.as_bytes().to_vec(),
                payload: alert.encode_to_vec(),
                headers: vec![],
            });
        }
    }
    for id in order {
        let c = &contacts[&id];
        for (model, st) in rules.models.iter().zip(&c.state.models) {
            if let Some(st) = st {
                out.commit.leaderboard.push((model.name.clone(), id.clone(), st.leaderboard_score(model)));
            }
        }
        out.commit.contacts.push((id.clone(), encode_contact(rules, c.account.as_deref(), &c.state)));
    }
    out
}

fn build_alert(
    target: &BatchTarget<'_>,
    offset: i64,
    event_id: &str,
    contact_id: &str,
    account: Option<&str>,
    model: &crate::rules::Model,
    c: &Crossing,
) -> ScoreAlert {
    let tier = model.tier_name(c.to);
    ScoreAlert {
        alert_id: alert_id(target.input_topic, target.partition, offset, &model.name, tier, c.direction),
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
    }
}

fn dead_letter(target: &BatchTarget<'_>, msg: &InputMessage, e: &DecodeError) -> OutboxEntry {
    OutboxEntry {
        topic: target.dead_letter_topic.to_string(),
        key: msg.key.clone().unwrap_or_default(),
        payload: msg.payload.clone().unwrap_or_default(),
        headers: vec![
            (HEADER_REASON.into(), e.reason().as_bytes().to_vec()),
            (HEADER_ERROR.into(), e.to_string().into_bytes()),
            (HEADER_SOURCE_TOPIC.into(), target.input_topic.as_bytes().to_vec()),
            (HEADER_SOURCE_PARTITION.into(), target.partition.to_string().into_bytes()),
            (HEADER_SOURCE_OFFSET.into(), msg.offset.to_string().into_bytes()),
        ],
    }
}
