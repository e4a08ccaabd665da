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
use crate::store::{PartitionKeys, Store, StoreError};
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

/// How repeats of an event id are recognised.
#[derive(Debug, Clone, Copy)]
pub struct Dedup {
    /// How long (event time) an event id is remembered, in milliseconds.
    pub window_ms: Millis,
    /// How many ids a contact remembers at most; 0 turns the check off.
    pub max_ids: usize,
}

impl Default for Dedup {
    fn default() -> Self {
        Self { window_ms: 3_600_000, max_ids: 32 }
    }
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
    /// Events skipped as repeats of an event id already applied.
    pub deduplicated: usize,
    /// The alerts raised, for metrics.
    pub alerts: Vec<telemetry::AlertLabels>,
    /// Every contact the batch touched, as the commit leaves it (for the
    /// state cache, once the commit succeeded).
    pub contacts: HashMap<String, Known>,
}

/// A contact's state as a batch finds it: from the state cache, or read
/// from Redis.
#[derive(Debug, Clone)]
pub struct Known {
    /// The contact's account id.
    pub account: Option<String>,
    /// The contact's state.
    pub state: ContactState,
    /// The hash fields as stored, so a commit writes only what changed.
    pub stored: HashMap<String, String>,
    /// True when the stored leaderboard and cooling entries are exactly what
    /// `state` gives under the current rules (a cached state committed under
    /// them), so unchanged ones need not be written again.
    pub exact: bool,
}

impl Known {
    /// A contact's state read from its Redis hash.
    pub fn from_hash(rules: &RuleSet, fields: HashMap<String, Vec<u8>>) -> Self {
        let (account, state) = decode_contact(rules, &fields);
        let stored = fields.into_iter().filter_map(|(k, v)| Some((k, String::from_utf8(v).ok()?))).collect();
        Self { account, state, stored, exact: false }
    }
}

/// Decodes a batch's messages, in offset order.
pub fn decode_all(
    messages: &[InputMessage],
    limits: &Limits,
    now_ms: Millis,
) -> Vec<(i64, Result<decode::ValidEvent, DecodeError>)> {
    messages.iter().map(|m| (m.offset, decode::decode(m.payload.as_deref(), limits, now_ms))).collect()
}

/// Deterministic alert id: the same crossing always gets the same id. A
/// crossing an event caused is named by the event's source partition and
/// offset, the model, tier and direction; cooling by decay by the contact,
/// model, tier and the exact time decay crossed the exit, so a sweep and a
/// later event's catch-up name it alike.
pub fn alert_id(
    topic: &str,
    partition: i32,
    offset: i64,
    contact: &str,
    model: &str,
    c: &Crossing,
    tier: &str,
) -> String {
    let key = if c.by_event {
        format!("{topic}/{partition}/{offset}/{model}/{tier}/{}", c.direction.as_str())
    } else {
        format!("{topic}/{partition}/decay/{contact}/{model}/{tier}/{}", c.at_ms)
    };
    let d = Sha256::digest(key.as_bytes());
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Scores decoded messages against the contacts' known states.
///
/// `decoded` is in offset order; `known` holds the state of the batch's
/// contacts that have one (from the state cache or Redis); others start
/// empty. Several events of one contact are coalesced into one write of its
/// hash, leaderboard and cooling entries, and only what changed is written.
pub fn score_batch(
    rules: &RuleSet,
    target: &BatchTarget<'_>,
    messages: &[InputMessage],
    decoded: Vec<(i64, Result<decode::ValidEvent, DecodeError>)>,
    mut known: HashMap<String, Known>,
    dedup: Dedup,
) -> ScoredBatch {
    struct Touched {
        known: Known,
        /// Leaderboard and cooling entries as stored, per model, when exact.
        before: Option<Vec<(Option<f64>, Option<Millis>)>>,
    }
    let entries = |rules: &RuleSet, state: &ContactState| -> Vec<(Option<f64>, Option<Millis>)> {
        rules
            .models
            .iter()
            .zip(&state.models)
            .map(|(m, st)| match st {
                Some(st) => (st.leaderboard_score(m), score::cooling_due(m, st)),
                None => (None, None),
            })
            .collect()
    };
    let mut out = ScoredBatch::default();
    let mut contacts: HashMap<String, Touched> = HashMap::new();
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
        let ev = &valid.event;
        let contact = match contacts.get_mut(&ev.contact_id) {
            Some(c) => c,
            None => {
                order.push(ev.contact_id.clone());
                let known = known.remove(&ev.contact_id).unwrap_or_else(|| Known {
                    account: None,
                    state: ContactState::new(rules.models.len()),
                    stored: HashMap::new(),
                    exact: true,
                });
                let before = known.exact.then(|| entries(rules, &known.state));
                contacts.entry(ev.contact_id.clone()).or_insert(Touched { known, before })
            }
        };
        let known = &mut contact.known;
        if known.state.seen_before(&ev.event_id, valid.at_ms, dedup.window_ms, dedup.max_ids) {
            telemetry::deduplicated(target.partition, offset);
            out.deduplicated += 1;
            continue;
        }
        out.scored += 1;
        if !ev.account_id.is_empty() {
            known.account = Some(ev.account_id.clone());
        }
        for c in score::apply_event(rules, &mut known.state, ev, valid.at_ms) {
            let model = &rules.models[c.model];
            let alert = build_alert(target, offset, &ev.event_id, &ev.contact_id, known.account.as_deref(), model, &c);
            push_alert(&mut out.commit, &mut out.alerts, target, model, &c, &alert);
        }
    }
    for id in order {
        let Touched { mut known, before } = contacts.remove(&id).expect("a touched contact");
        let after = entries(rules, &known.state);
        for (i, (model, st)) in rules.models.iter().zip(&known.state.models).enumerate() {
            if st.is_none() {
                continue;
            }
            let (lb, cool) = after[i];
            let (old_lb, old_cool) = before.as_ref().map_or((None, None), |b| b[i]);
            if before.is_none() || old_lb != lb {
                out.commit.leaderboard.push((model.name.clone(), id.clone(), lb));
            }
            // A contact never scheduled for cooling needs no removal.
            if before.is_none() || old_cool != cool {
                out.commit.cooling.push((model.name.clone(), id.clone(), cool.map(|t| t as f64)));
            }
        }
        let fields = encode_contact(rules, known.account.as_deref(), &known.state);
        let changed: Vec<(String, String)> =
            fields.into_iter().filter(|(k, v)| known.stored.get(k) != Some(v)).collect();
        for (k, v) in &changed {
            known.stored.insert(k.clone(), v.clone());
        }
        if !changed.is_empty() {
            out.commit.contacts.push((id.clone(), changed));
        }
        known.exact = true;
        out.contacts.insert(id, known);
    }
    out
}

/// Puts an alert in a commit's outbox and recent alerts, logs it and labels
/// it for metrics; nothing for a crossing its model marks as no alert.
fn push_alert(
    commit: &mut Commit,
    labels: &mut Vec<telemetry::AlertLabels>,
    target: &BatchTarget<'_>,
    model: &crate::rules::Model,
    c: &Crossing,
    alert: &ScoreAlert,
) {
    if !model.alerts_on(c.from, c.to) {
        return;
    }
    let tier = model.tier_name(c.to);
    telemetry::tier_crossed(
        target.partition,
        &alert.contact_id,
        &model.name,
        model.tier_name(c.from),
        tier,
        c.direction.as_str(),
    );
    labels.push(telemetry::AlertLabels { model: model.name.clone(), tier: tier.to_string(), direction: c.direction });
    let payload = alert.encode_to_vec();
    commit.recent_alerts.push(payload.clone());
    commit.outbox.push(OutboxEntry {
        topic: target.alerts_topic.to_string(),
        key: alert.contact_id.as_bytes().to_vec(),
        payload,
        headers: vec![],
    });
}

/// The alert for a crossing; `offset` and `event_id` name the triggering
/// event (unused for cooling by decay).
pub fn build_alert(
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
        alert_id: alert_id(target.input_topic, target.partition, offset, contact_id, &model.name, c, tier),
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

/// A sweep's result for one partition: COOLED alerts for contacts whose
/// decayed score fell below their tier's exit by `now_ms`.
pub struct Sweep {
    /// The commit (epoch and watermarks left for the caller to fill).
    pub commit: Commit,
    /// Alerts raised, for metrics.
    pub alerts: Vec<telemetry::AlertLabels>,
}

/// Finds the contacts of one partition whose cooling is due by `now_ms`
/// (through the cooling schedules, so the cost follows the crossings, not
/// the contacts) and builds the commit that lowers their tiers and raises
/// their COOLED alerts. `None` when nothing is due.
pub async fn sweep(
    store: &Store,
    rules: &RuleSet,
    target: &BatchTarget<'_>,
    now_ms: Millis,
) -> Result<Option<Sweep>, StoreError> {
    const LIMIT: usize = 1000;
    let keys = PartitionKeys::new(target.input_topic, target.partition);
    let names: Vec<&str> = rules.models.iter().map(|m| m.name.as_str()).collect();
    let mut due: Vec<String> = store.cooling_due(&keys, &names, now_ms, LIMIT).await?.into_iter().flatten().collect();
    if due.is_empty() {
        return Ok(None);
    }
    due.sort_unstable();
    due.dedup();
    let ids: Vec<&str> = due.iter().map(String::as_str).collect();
    let hashes = store.load_contacts(&keys, &ids).await?;
    let mut out = Sweep { commit: Commit::default(), alerts: vec![] };
    for (id, fields) in due.iter().zip(hashes) {
        let (account, mut state) = decode_contact(rules, &fields);
        let mut changed = false;
        for (i, model) in rules.models.iter().enumerate() {
            let Some(st) = state.models[i].as_mut() else {
                // A contact scheduled in a model it no longer has state in.
                out.commit.cooling.push((model.name.clone(), id.clone(), None));
                continue;
            };
            if let Some(c) = score::cool(i, model, st, now_ms) {
                let alert = build_alert(target, -1, "", id, account.as_deref(), model, &c);
                push_alert(&mut out.commit, &mut out.alerts, target, model, &c, &alert);
                changed = true;
            }
            out.commit.cooling.push((model.name.clone(), id.clone(), score::cooling_due(model, st).map(|t| t as f64)));
        }
        if changed {
            out.commit.contacts.push((id.clone(), encode_contact(rules, account.as_deref(), &state)));
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::interaction_event::Interaction;
    use crate::proto::{InteractionEvent, PageView};

    #[test]
    fn a_sweep_and_an_event_name_the_same_cooling_alike() {
        let rules = RuleSet::parse(
            "models: [{name: m, half_life: 1d, tiers: [{name: warm, enter: 30, exit: 20}], rules: [{id: p, when: {kind: page_view}, points: 40}]}]",
            "t",
        )
        .unwrap();
        let target = BatchTarget { input_topic: "in", partition: 3, alerts_topic: "a", dead_letter_topic: "d" };
        let t0 = 1_760_000_000_000;
        let page = |at: i64| InteractionEvent {
            contact_id: "c".into(),
            occurred_at: Some(decode::timestamp(at)),
            interaction: Some(Interaction::PageView(PageView::default())),
            ..Default::default()
        };
        let mut by_event = ContactState::new(1);
        score::apply_event(&rules, &mut by_event, &page(t0), t0);
        let mut by_sweep = by_event.clone();
        let m = &rules.models[0];
        let swept = score::cool(0, m, by_sweep.models[0].as_mut().unwrap(), t0 + 5 * 86_400_000).unwrap();
        let caught = score::apply_event(&rules, &mut by_event, &page(t0 + 5 * 86_400_000), t0 + 5 * 86_400_000);
        let a = build_alert(&target, -1, "", "c", None, m, &swept);
        let b = build_alert(&target, 17, "e", "c", None, m, &caught[0]);
        assert_eq!(a.alert_id, b.alert_id);
        assert_eq!(a.crossed_at, b.crossed_at);
        assert_eq!(b.trigger_event_id, "", "decay, not the event, caused it");
    }
}
