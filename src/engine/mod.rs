//! The scoring engine: one partition's decoded messages (or a sweep instant)
//! and its contacts' states in, typed effects out.
//!
//! Invariants:
//! - Pure: no Kafka, no Redis, no metrics, no logs. The same inputs give the
//!   same [`Effects`], so the service, `hotlead rules test`, the tests'
//!   oracle and the benchmark's verification all score through
//!   [`score_batch`] (or [`score_partition`], its whole-partition form).
//! - Messages are taken in offset order. A contact's alerts come out in the
//!   order they were raised; dead letters in offset order. A crossing whose
//!   model marks it `alert: false` moves the tier and raises no alert.
//! - Every message is accounted for exactly once in [`Counts`]: scored,
//!   deduplicated, dead-lettered, forwarded or suppressed.
//! - Identity: an `identify` moves the visitor's whole state, once, into a
//!   [`VisitorMerge`](crate::proto::VisitorMerge) record for the contact's
//!   partition ([`Effects::forwards`]) and leaves the visitor a link to the
//!   contact; its later events are forwarded there. Each forwarded record
//!   carries its origin (visitor id, input partition and offset), and the
//!   contact applies a visitor's records in offset order, each once
//!   ([`score::Links::seen_before`]): a relay's repeat, a replay or a
//!   rebuild changes nothing.
//! - Erasure: an `erasure` leaves the contact erased (nothing but the mark,
//!   which the store keeps as a tombstone of its id's hash) and names it in
//!   [`Effects::erasures`]; an erased contact's later events are suppressed.
//!
//! - Lanes and roles: a [`Lane`] says which lane scores the partition (the
//!   live service, or a back-filled shadow lane) and which of its models are
//!   shadows there. A shadow model is scored like any other; its alerts
//!   carry `shadow` (the store sends them to the shadow alert topic). A
//!   `promotion` record switches roles at its offset: every alert raised
//!   before it has the old roles, every one after it the new, and no
//!   message is scored by neither model or twice by one. Records a lane
//!   forwards carry its name in their origin; a lane applies only its own
//!   and skips the others' ([`Counts::skipped`]).
//!
//! The store turns [`Effects`] into its commit (diffing against what it has
//! stored); the pipeline counts metrics from [`Counts`] and the alerts once
//! the commit is durable.

mod alert;

use std::collections::HashMap;

pub use alert::{alert_id, build_alert, digest16};

use crate::decode::{self, DecodeError, Limits, ValidEvent};
use crate::proto::interaction_event::Interaction;
use crate::proto::{
    AccountContribution, ContactErased, InteractionEvent, ModelPromotion, Origin, ScoreAlert, VisitorMerge,
};
use crate::rules::RuleSet;
use crate::score::{self, ContactState, Millis};

/// The input partition a batch comes from: it names alert ids and dead
/// letters.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Input topic.
    pub topic: &'a str,
    /// Partition of the input topic.
    pub partition: i32,
}

/// One message of the input topic, decoded.
#[derive(Debug, Clone)]
pub struct Message {
    /// Offset in its partition.
    pub offset: i64,
    /// When it arrived (wall clock at decoding): repeats are recognised by
    /// arrival time.
    pub arrived_ms: Millis,
    /// The event, or why it cannot be scored.
    pub event: Result<ValidEvent, Rejected>,
}

/// One message of the input topic as read, not yet decoded: what waits in
/// a partition's backlog (its bytes, a fraction of the decoded event's
/// size), decoded only when its batch is scored.
#[derive(Debug, Clone)]
pub struct Raw {
    /// Offset in its partition.
    pub offset: i64,
    /// When it arrived (wall clock at reading).
    pub arrived_ms: Millis,
    /// The message key.
    pub key: Option<Vec<u8>>,
    /// The payload.
    pub payload: Option<Vec<u8>>,
}

impl Raw {
    /// A message read at `arrived_ms`; key and payload are copied.
    pub fn new(offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>, arrived_ms: Millis) -> Self {
        Self { offset, arrived_ms, key: key.map(<[u8]>::to_vec), payload: payload.map(<[u8]>::to_vec) }
    }

    /// Decodes it as [`Message::decode`] would have when it arrived.
    pub fn decode(&self, limits: &Limits) -> Message {
        Message::decode(self.offset, self.key.as_deref(), self.payload.as_deref(), limits, self.arrived_ms)
    }
}

/// A message that cannot be scored, with what a dead letter carries.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// Why.
    pub error: DecodeError,
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// The original payload.
    pub payload: Option<Vec<u8>>,
}

impl Message {
    /// Decodes a raw message arrived at the wall clock `now_ms`. A message
    /// whose key is set and differs from its contact id is rejected: its
    /// contact's state lives on another partition. Key and payload are
    /// copied only when the message is rejected.
    pub fn decode(offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>, limits: &Limits, now_ms: Millis) -> Self {
        let event = decode::decode(payload, limits, now_ms).and_then(|v| match key {
            Some(k) if !k.is_empty() && k != v.event.contact_id.as_bytes() => Err(DecodeError::KeyMismatch),
            _ => Ok(v),
        });
        let event = event.map_err(|error| Rejected {
            error,
            key: key.map(<[u8]>::to_vec),
            payload: payload.map(<[u8]>::to_vec),
        });
        Self { offset, arrived_ms: now_ms, event }
    }
}

/// A contact as the engine sees it: its account and its scoring state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Contact {
    /// The account id of its latest event that named one (forgotten while
    /// the contact has no score and no kept attribute: it is not stored).
    pub account: Option<String>,
    /// Profile, per-model state and recent event ids.
    pub state: ContactState,
    /// Erased: nothing is kept but this mark, and its events are not
    /// scored.
    pub erased: bool,
}

impl Contact {
    /// A contact with no history under `rules`.
    pub fn new(rules: &RuleSet) -> Self {
        Self { account: None, state: ContactState::new(rules.models.len()), erased: false }
    }

    /// An erased contact.
    pub fn erased(rules: &RuleSet) -> Self {
        Self { erased: true, ..Self::new(rules) }
    }
}

/// How repeats of an event id are recognised.
#[derive(Debug, Clone, Copy)]
pub struct Dedup {
    /// How long (arrival time) an event id is remembered, in milliseconds.
    pub window_ms: Millis,
    /// How many ids a contact remembers at most; 0 turns the check off.
    pub max_ids: usize,
}

impl Default for Dedup {
    fn default() -> Self {
        Self { window_ms: 24 * 3_600_000, max_ids: 32 }
    }
}

/// A message that goes to the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its offset in the input partition.
    pub offset: i64,
    /// Its original key and payload, and why it was rejected.
    pub rejected: Rejected,
}

/// How a batch's messages fared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages in the batch.
    pub messages: usize,
    /// Events applied to a contact.
    pub scored: usize,
    /// Events skipped as repeats of an event id already applied.
    pub deduplicated: usize,
    /// Messages dead-lettered.
    pub dead_lettered: usize,
    /// Events of an identified visitor sent on to its contact.
    pub forwarded: usize,
    /// Events of an erased contact, not scored.
    pub suppressed: usize,
    /// Records another lane forwarded (each lane applies its own), and
    /// events dated before the lane's start ([`Lane::not_before_ms`]).
    pub skipped: usize,
    /// Promotions applied (a model made live).
    pub promotions: usize,
}

/// What scoring a batch (or sweeping a partition) did.
#[derive(Debug, Default)]
pub struct Effects {
    /// Every contact the batch touched, as it leaves it, in the order first
    /// touched.
    pub contacts: Vec<(String, Contact)>,
    /// Alerts, in the order raised.
    pub alerts: Vec<ScoreAlert>,
    /// Messages that cannot be scored, in offset order.
    pub dead_letters: Vec<DeadLetter>,
    /// Records for other contacts' partitions (visitor merges, an
    /// identified visitor's events), in the order made; each is keyed by
    /// its `contact_id` on the input topic.
    pub forwards: Vec<InteractionEvent>,
    /// Contacts erased, in order.
    pub erasures: Vec<ContactErased>,
    /// Contacts' parts in their accounts, for the account stage, in the
    /// order made: one per event that changed a contact's part in an
    /// account roll-up (a contact that moves account leaves the old one by
    /// the same event). None when no model has an account roll-up.
    pub contributions: Vec<AccountContribution>,
    /// A promotion changed the lane's roles (the store keeps them).
    pub roles_changed: bool,
    /// Tallies.
    pub counts: Counts,
}

/// The lane scoring a partition, and the role of each model there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    /// `""` for the live service; a back-filled shadow lane's name.
    pub name: String,
    /// By model index: whether the model is a shadow in this lane.
    pub shadow: Vec<bool>,
    /// Events dated before this (event time) are not scored: a back-fill
    /// that starts from a time. `None`: every event.
    pub not_before_ms: Option<Millis>,
}

impl Lane {
    /// The live lane, roles as the rules mark them (`shadow: true`).
    pub fn live(rules: &RuleSet) -> Self {
        Self { name: String::new(), shadow: rules.models.iter().map(|m| m.shadow).collect(), not_before_ms: None }
    }

    /// A shadow lane `name`: every model a shadow until promoted.
    pub fn shadow_lane(name: &str, rules: &RuleSet) -> Self {
        Self { name: name.to_string(), shadow: vec![true; rules.models.len()], not_before_ms: None }
    }

    /// The lane `name` (`""`: the live lane) with its default roles.
    pub fn named(name: &str, rules: &RuleSet) -> Self {
        if name.is_empty() {
            Self::live(rules)
        } else {
            Self::shadow_lane(name, rules)
        }
    }

    /// The same lane with the roles a partition stored (text of
    /// [`Lane::roles_text`]) over the defaults; models it does not name
    /// keep their default.
    pub fn with_roles(mut self, rules: &RuleSet, stored: &str) -> Self {
        for (name, role) in stored.split(',').filter_map(|p| p.split_once('=')) {
            if let Some(i) = rules.models.iter().position(|m| m.name == name) {
                self.shadow[i] = role == "shadow";
            }
        }
        self
    }

    /// The roles as stored: `model=live,other=shadow`.
    pub fn roles_text(&self, rules: &RuleSet) -> String {
        let roles = rules.models.iter().zip(&self.shadow);
        roles.map(|(m, s)| format!("{}={}", m.name, if *s { "shadow" } else { "live" })).collect::<Vec<_>>().join(",")
    }

    /// Applies a promotion; true when a role changed.
    pub fn promote(&mut self, rules: &RuleSet, p: &ModelPromotion) -> bool {
        let before = self.shadow.clone();
        for (i, m) in rules.models.iter().enumerate() {
            if m.name == p.model {
                self.shadow[i] = false;
            } else if m.name == p.replaces {
                self.shadow[i] = true;
            }
        }
        before != self.shadow
    }
}

/// Scores a partition's messages (in offset order) against the known states
/// of their contacts; a contact missing from `known` starts empty. Several
/// events of one contact leave one final state.
pub fn score_batch(
    rules: &RuleSet,
    source: Source<'_>,
    messages: impl IntoIterator<Item = Message>,
    known: HashMap<String, Contact>,
    dedup: Dedup,
) -> Effects {
    score_batch_in(rules, source, &mut Lane::live(rules), messages, known, dedup)
}

/// [`score_batch`] in a lane, whose roles a promotion may change (the
/// lane leaves with the roles in force after the batch).
pub fn score_batch_in(
    rules: &RuleSet,
    source: Source<'_>,
    lane: &mut Lane,
    messages: impl IntoIterator<Item = Message>,
    mut known: HashMap<String, Contact>,
    dedup: Dedup,
) -> Effects {
    let mut out = Effects::default();
    let mut index: HashMap<String, usize> = HashMap::new();
    let accounts = rules.models.iter().any(|m| m.account.is_some());
    for m in messages {
        out.counts.messages += 1;
        let valid = match m.event {
            Ok(v) => v,
            Err(rejected) => {
                out.counts.dead_lettered += 1;
                out.dead_letters.push(DeadLetter { offset: m.offset, rejected });
                continue;
            }
        };
        let ValidEvent { event: ev, at_ms } = valid;
        if let Some(Interaction::Promotion(p)) = &ev.interaction {
            out.counts.promotions += 1;
            if lane.promote(rules, p) {
                out.roles_changed = true;
                if p.announce {
                    announce(rules, source, lane, m.offset, &ev, p, at_ms, &known, &mut out);
                }
            }
            continue;
        }
        let other_lane = ev.origin.as_ref().is_some_and(|o| o.lane != lane.name);
        if other_lane || lane.not_before_ms.is_some_and(|t| at_ms < t) {
            out.counts.skipped += 1;
            continue;
        }
        let i = match index.get(&ev.contact_id) {
            Some(i) => *i,
            None => {
                let contact = known.remove(&ev.contact_id).unwrap_or_else(|| Contact::new(rules));
                out.contacts.push((ev.contact_id.clone(), contact));
                index.insert(ev.contact_id.clone(), out.contacts.len() - 1);
                out.contacts.len() - 1
            }
        };
        let contact = &mut out.contacts[i].1;
        if contact.erased {
            out.counts.suppressed += 1;
            if let (Some(o), Some(Interaction::VisitorMerge(_))) = (&ev.origin, &ev.interaction) {
                // A visitor identified as a contact erased before its merge
                // arrived: it was the same person, and is erased too.
                out.forwards.push(InteractionEvent {
                    event_id: format!("{}/erased", ev.event_id),
                    contact_id: o.anonymous_id.clone(),
                    occurred_at: ev.occurred_at,
                    interaction: Some(Interaction::Erasure(crate::proto::Erasure {
                        requested_by: "hotlead".into(),
                        reason: format!("identified as an erased contact (merge {})", ev.event_id),
                    })),
                    ..Default::default()
                });
            }
            continue;
        }
        let before = accounts.then(|| AccountPart::of(rules, contact));
        if let Some(Interaction::Erasure(e)) = &ev.interaction {
            // The visitors merged into it were the same person: erased too.
            for (visitor, _) in &contact.state.links.from {
                out.forwards.push(InteractionEvent { contact_id: visitor.clone(), origin: None, ..ev.clone() });
            }
            *contact = Contact::erased(rules);
            if let Some(before) = &before {
                let after = AccountPart::of(rules, contact);
                contribute(source, m.offset, &ev, at_ms, before, &after, &mut out.contributions);
                if let Some(c) = out.contributions.last_mut().filter(|c| c.left && c.contact_id == ev.contact_id) {
                    c.erased = true;
                }
            }
            out.counts.scored += 1;
            out.erasures.push(ContactErased {
                contact_id: ev.contact_id.clone(),
                erased_at: Some(decode::timestamp(m.arrived_ms)),
                requested_at: Some(decode::timestamp(at_ms)),
                requested_by: e.requested_by.clone(),
                reason: e.reason.clone(),
                request_id: ev.event_id.clone(),
                topic: source.topic.to_string(),
                partition: source.partition,
            });
            continue;
        }
        if let Some(to) = &contact.state.links.into {
            if matches!(ev.interaction, Some(Interaction::Identify(_))) {
                // Identified already: a repeat, or a second claim on the
                // visitor, which keeps its first contact.
                out.counts.deduplicated += 1;
                continue;
            }
            let mut forward = ev;
            forward.contact_id = to.clone();
            forward.origin.get_or_insert_with(|| Origin {
                anonymous_id: out.contacts[i].0.clone(),
                partition: source.partition,
                offset: m.offset,
                lane: lane.name.clone(),
            });
            out.forwards.push(forward);
            out.counts.forwarded += 1;
            continue;
        }
        if let Some(o) = &ev.origin {
            if contact.state.links.seen_before(&o.anonymous_id, o.offset) {
                out.counts.deduplicated += 1;
                continue;
            }
        }
        if contact.state.seen_before(&ev.event_id, m.arrived_ms, dedup.window_ms, dedup.max_ids) {
            out.counts.deduplicated += 1;
            continue;
        }
        let crossings = match &ev.interaction {
            Some(Interaction::Identify(identify)) => {
                let visitor = std::mem::replace(contact, Contact::new(rules));
                contact.state.links.into = Some(identify.contact_id.clone());
                let mut state = Vec::new();
                crate::codec::encode(rules, visitor.account.as_deref(), &visitor.state, &mut state);
                out.forwards.push(InteractionEvent {
                    event_id: ev.event_id.clone(),
                    contact_id: identify.contact_id.clone(),
                    account_id: visitor.account.unwrap_or_default(),
                    occurred_at: ev.occurred_at,
                    origin: Some(Origin {
                        anonymous_id: ev.contact_id.clone(),
                        partition: source.partition,
                        offset: m.offset,
                        lane: lane.name.clone(),
                    }),
                    interaction: Some(Interaction::VisitorMerge(VisitorMerge {
                        state,
                        vocabulary: rules.vocabulary.clone(),
                    })),
                    context: Default::default(),
                });
                if let Some(before) = &before {
                    let after = AccountPart::of(rules, contact);
                    contribute(source, m.offset, &ev, at_ms, before, &after, &mut out.contributions);
                }
                out.counts.scored += 1;
                continue;
            }
            Some(Interaction::VisitorMerge(merge)) => {
                match crate::codec::decode(rules, &merge.state, Some(&merge.vocabulary)) {
                    Ok((account, visitor)) => {
                        // The account named latest by event time: the
                        // visitor's, if it named one later than the contact.
                        if account.is_some()
                            && (contact.account.is_none() || visitor.account_at > contact.state.account_at)
                        {
                            contact.account = account;
                            contact.state.account_at = visitor.account_at;
                        }
                        score::merge_visitor(rules, &mut contact.state, visitor, at_ms, dedup.max_ids)
                    }
                    Err(e) => {
                        out.counts.dead_lettered += 1;
                        let payload = prost::Message::encode_to_vec(&ev);
                        let rejected = Rejected {
                            error: DecodeError::Undecodable(format!("visitor_merge state: {e}")),
                            key: Some(ev.contact_id.clone().into_bytes()),
                            payload: Some(payload),
                        };
                        out.dead_letters.push(DeadLetter { offset: m.offset, rejected });
                        continue;
                    }
                }
            }
            _ => {
                // The account named latest by event time: an older event,
                // arriving late, does not move the contact.
                if !ev.account_id.is_empty() && (contact.account.is_none() || at_ms >= contact.state.account_at) {
                    contact.account = Some(ev.account_id.clone());
                    contact.state.account_at = at_ms;
                }
                score::apply_event(rules, &mut contact.state, &ev, at_ms)
            }
        };
        out.counts.scored += 1;
        if contact.state.is_blank() {
            // No score and no kept attribute: nothing its repeats could
            // change and nothing to show, so nothing is stored (its account
            // comes again with its next event).
            contact.state.seen.clear();
            contact.account = None;
            contact.state.account_at = 0;
        }
        if let Some(before) = &before {
            let after = AccountPart::of(rules, contact);
            contribute(source, m.offset, &ev, at_ms, before, &after, &mut out.contributions);
        }
        for c in crossings {
            let model = &rules.models[c.model];
            // The tier moves either way; only crossings the model marks raise an alert.
            if !model.alerts_on(c.from, c.to) {
                continue;
            }
            let account = contact.account.as_deref();
            let mut alert = build_alert(source, m.offset, &ev.event_id, &ev.contact_id, account, model, &c);
            alert.shadow = lane.shadow[c.model];
            out.alerts.push(alert);
        }
    }
    out
}

/// A contact's part in its account: what a contribution carries.
#[derive(Debug, Clone, PartialEq)]
struct AccountPart {
    account: Option<String>,
    parts: Vec<crate::proto::ContactPart>,
    attributes: std::collections::BTreeMap<String, String>,
}

impl AccountPart {
    fn of(rules: &RuleSet, c: &Contact) -> Self {
        if c.erased {
            return Self { account: None, parts: Vec::new(), attributes: Default::default() };
        }
        let parts = crate::account::parts(rules, &c.state);
        // A contact with no state in any roll-up model has nothing to give
        // its account: it joins with its first part.
        let account = if parts.is_empty() { None } else { c.account.clone() };
        Self { account, parts, attributes: crate::account::weighed_attributes(rules, &c.state) }
    }
}

/// The contributions an event's change of a contact makes: it leaves the
/// account it had if that changed, and its part in the account it has
/// now, if that changed.
fn contribute(
    source: Source<'_>,
    offset: i64,
    ev: &InteractionEvent,
    at_ms: Millis,
    before: &AccountPart,
    after: &AccountPart,
    out: &mut Vec<AccountContribution>,
) {
    let record = |account: &str, left: bool| AccountContribution {
        account_id: account.to_string(),
        contact_id: ev.contact_id.clone(),
        topic: source.topic.to_string(),
        partition: source.partition,
        offset,
        event_id: ev.event_id.clone(),
        occurred_at: Some(decode::timestamp(at_ms)),
        left,
        parts: if left { Vec::new() } else { after.parts.clone() },
        attributes: if left { Default::default() } else { after.attributes.clone() },
        erased: false,
    };
    if let Some(old) = &before.account {
        if after.account.as_ref() != Some(old) {
            out.push(record(old, true));
        }
    }
    if let Some(new) = &after.account {
        if before != after {
            out.push(record(new, false));
        }
    }
}

/// A promotion's announcement: one HEATED alert per contact the newly
/// live model holds above its base tier (of those `known` and those the
/// batch touched so far), from the base tier, triggered by the promotion.
#[allow(clippy::too_many_arguments)]
fn announce(
    rules: &RuleSet,
    source: Source<'_>,
    lane: &Lane,
    offset: i64,
    ev: &InteractionEvent,
    p: &ModelPromotion,
    at_ms: Millis,
    known: &HashMap<String, Contact>,
    out: &mut Effects,
) {
    let Some(mi) = rules.models.iter().position(|m| m.name == p.model) else { return };
    let model = &rules.models[mi];
    let mut contacts: Vec<(&String, &Contact)> =
        out.contacts.iter().map(|(id, c)| (id, c)).chain(known.iter()).filter(|(_, c)| !c.erased).collect();
    contacts.sort_by(|a, b| a.0.cmp(b.0));
    let mut alerts = Vec::new();
    for (id, c) in contacts {
        let Some(st) = c.state.models.get(mi).and_then(Option::as_ref) else { continue };
        if st.tier == 0 {
            continue;
        }
        let crossing = score::Crossing {
            model: mi,
            direction: score::Direction::Heated,
            from: 0,
            to: st.tier,
            score: st.score_at(at_ms, model.half_life_secs),
            threshold: model.tiers[st.tier - 1].enter,
            at_ms,
            by_event: true,
            top_contributions: score::top(st.explain(at_ms, model.half_life_secs)),
        };
        let mut alert = build_alert(source, offset, &ev.event_id, id, c.account.as_deref(), model, &crossing);
        // One promotion announces many contacts: each alert id names its own.
        alert.alert_id = alert::per_contact(&alert.alert_id, id);
        alert.shadow = lane.shadow[mi];
        alerts.push(alert);
    }
    out.alerts.extend(alerts);
}

/// Scores a whole partition from empty state, in offset order, as the
/// service does batch by batch: `hotlead rules test`, the tests' oracle and
/// the benchmark's verification use it.
pub fn score_partition(rules: &RuleSet, source: Source<'_>, messages: impl IntoIterator<Item = Message>) -> Effects {
    score_batch(rules, source, messages, HashMap::new(), Dedup::default())
}

/// Cools contacts whose decayed score fell below their tier's exit by
/// `now_ms` with no event: their COOLED alerts, dated to the exact crossing.
/// `due` holds the contacts the cooling schedule names; each comes back in
/// [`Effects::contacts`], changed or not, so the store can also reschedule
/// or unschedule it.
pub fn sweep(rules: &RuleSet, source: Source<'_>, due: Vec<(String, Contact)>, now_ms: Millis) -> Effects {
    sweep_in(rules, source, &Lane::live(rules), due, now_ms)
}

/// [`sweep`] in a lane: alerts of its shadow models carry `shadow`.
pub fn sweep_in(
    rules: &RuleSet,
    source: Source<'_>,
    lane: &Lane,
    due: Vec<(String, Contact)>,
    now_ms: Millis,
) -> Effects {
    let mut out = Effects::default();
    for (id, mut contact) in due {
        for (i, model) in rules.models.iter().enumerate() {
            let Some(st) = contact.state.models.get_mut(i).and_then(Option::as_mut) else { continue };
            if let Some(c) = score::cool_by_sweep(i, model, st, now_ms).filter(|c| model.alerts_on(c.from, c.to)) {
                let mut alert = build_alert(source, -1, "", &id, contact.account.as_deref(), model, &c);
                alert.shadow = lane.shadow[i];
                out.alerts.push(alert);
            }
        }
        out.contacts.push((id, contact));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::interaction_event::Interaction;
    use crate::proto::{InteractionEvent, PageView};
    use prost::Message as _;

    const T0: Millis = 1_760_000_000_000;

    fn rules() -> RuleSet {
        RuleSet::parse(
            "models: [{name: m, half_life: 1d, tiers: [{name: warm, enter: 30, exit: 20}], rules: [{id: p, when: {kind: page_view}, points: 40}]}]",
            "t",
        )
        .unwrap()
    }

    fn page(contact: &str, id: &str, at: Millis) -> InteractionEvent {
        InteractionEvent {
            event_id: id.into(),
            contact_id: contact.into(),
            occurred_at: Some(decode::timestamp(at)),
            interaction: Some(Interaction::PageView(PageView::default())),
            ..Default::default()
        }
    }

    fn messages(events: &[InteractionEvent]) -> Vec<Message> {
        events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let payload = e.encode_to_vec();
                Message::decode(i as i64, None, Some(&payload), &Limits::default(), T0)
            })
            .collect()
    }

    const SOURCE: Source<'static> = Source { topic: "in", partition: 3 };

    #[test]
    fn every_message_is_counted_once_and_alerts_keep_their_order() {
        let r = rules();
        let mut msgs = messages(&[page("a", "1", T0), page("a", "1", T0), page("b", "2", T0 - 1)]);
        msgs.push(Message::decode(3, Some(b"k"), Some(b"\xff\xff"), &Limits::default(), T0));
        let fx = score_partition(&r, SOURCE, msgs);
        assert_eq!(
            fx.counts,
            Counts { messages: 4, scored: 2, deduplicated: 1, dead_lettered: 1, ..Counts::default() }
        );
        let who: Vec<&str> = fx.alerts.iter().map(|a| a.contact_id.as_str()).collect();
        assert_eq!(who, ["a", "b"]);
        assert_eq!(fx.contacts.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(fx.dead_letters[0].offset, 3);
        assert_eq!(fx.dead_letters[0].rejected.key.as_deref(), Some(&b"k"[..]));
    }

    fn two_models() -> RuleSet {
        RuleSet::parse(
            "models:
  - {name: old, half_life: 1d, tiers: [{name: warm, enter: 30, exit: 20}], rules: [{id: p, when: {kind: page_view}, points: 40}]}
  - {name: new, shadow: true, half_life: 1d, tiers: [{name: warm, enter: 50, exit: 20}], rules: [{id: p, when: {kind: page_view}, points: 30}]}",
            "t",
        )
        .unwrap()
    }

    fn promotion(model: &str, replaces: &str, announce: bool) -> InteractionEvent {
        InteractionEvent {
            event_id: format!("promote-{model}"),
            occurred_at: Some(decode::timestamp(T0)),
            interaction: Some(Interaction::Promotion(ModelPromotion {
                model: model.into(),
                replaces: replaces.into(),
                announce,
                requested_by: String::new(),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_promotion_switches_which_model_alerts_sales_at_its_offset() {
        let r = two_models();
        let events = [
            page("a", "1", T0),
            page("a", "2", T0 + 1),
            promotion("new", "old", false),
            page("b", "3", T0 + 2),
            page("b", "4", T0 + 3),
        ];
        let mut lane = Lane::live(&r);
        assert_eq!(lane.shadow, [false, true]);
        let fx = score_batch_in(&r, SOURCE, &mut lane, messages(&events), HashMap::new(), Dedup::default());
        assert!(fx.roles_changed);
        assert_eq!(lane.roles_text(&r), "old=shadow,new=live");
        assert_eq!(fx.counts, Counts { messages: 5, scored: 4, promotions: 1, ..Counts::default() });
        // a: old heats at its first event (live then), new at its second (a
        // shadow then); b: the reverse roles, after the promotion.
        let seen: Vec<(&str, &str, bool)> =
            fx.alerts.iter().map(|a| (a.contact_id.as_str(), a.model.as_str(), a.shadow)).collect();
        assert_eq!(seen, [("a", "old", false), ("a", "new", true), ("b", "old", true), ("b", "new", false)]);
        // Stored roles read back; a repeat of the promotion changes nothing.
        let mut again = Lane::live(&r).with_roles(&r, &lane.roles_text(&r));
        assert_eq!(again, lane);
        let fx = score_batch_in(
            &r,
            SOURCE,
            &mut again,
            messages(&[promotion("new", "old", false)]),
            HashMap::new(),
            Dedup::default(),
        );
        assert!(!fx.roles_changed && fx.alerts.is_empty());
    }

    #[test]
    fn an_announced_promotion_alerts_each_contact_the_new_model_holds_above_base() {
        let r = two_models();
        let warmed =
            score_partition(&r, SOURCE, messages(&[page("a", "1", T0), page("a", "2", T0), page("b", "3", T0)]));
        let known: HashMap<String, Contact> = warmed.contacts.into_iter().collect();
        let mut lane = Lane::live(&r);
        let fx =
            score_batch_in(&r, SOURCE, &mut lane, messages(&[promotion("new", "old", true)]), known, Dedup::default());
        // a has 60 in `new` (warm), b 30 (cold): a alone is announced.
        let seen: Vec<(&str, &str, &str, bool)> =
            fx.alerts.iter().map(|a| (a.contact_id.as_str(), a.model.as_str(), a.tier.as_str(), a.shadow)).collect();
        assert_eq!(seen, [("a", "new", "warm", false)]);
        assert_eq!(fx.alerts[0].trigger_event_id, "promote-new");
    }

    #[test]
    fn a_lane_skips_records_another_lane_sent_and_events_before_its_start() {
        let r = rules();
        let mut theirs = page("a", "1", T0);
        theirs.origin = Some(Origin { anonymous_id: "v".into(), partition: 0, offset: 1, lane: "other".into() });
        let early = page("a", "2", T0 - 10);
        let mut lane = Lane::shadow_lane("mine", &r);
        lane.not_before_ms = Some(T0 - 5);
        let fx = score_batch_in(
            &r,
            SOURCE,
            &mut lane,
            messages(&[theirs, early, page("a", "3", T0)]),
            HashMap::new(),
            Dedup::default(),
        );
        assert_eq!(fx.counts, Counts { messages: 3, scored: 1, skipped: 2, ..Counts::default() });
        assert!(fx.alerts.iter().all(|a| a.shadow), "a shadow lane's models are shadows");
        assert_eq!(fx.alerts.len(), 1);
    }

    #[test]
    fn a_key_that_is_not_the_contact_id_is_rejected() {
        let payload = page("a", "1", T0).encode_to_vec();
        let ok = Message::decode(0, Some(b"a"), Some(&payload), &Limits::default(), T0);
        assert!(ok.event.is_ok());
        let unkeyed = Message::decode(1, None, Some(&payload), &Limits::default(), T0);
        assert!(unkeyed.event.is_ok(), "a message without a key is taken as it is");
        let wrong = Message::decode(2, Some(b"b"), Some(&payload), &Limits::default(), T0);
        let rejected = wrong.event.unwrap_err();
        assert_eq!(rejected.error.reason(), "key_mismatch");
        assert_eq!(rejected.key.as_deref(), Some(&b"b"[..]));
        assert_eq!(rejected.payload.as_deref(), Some(&payload[..]));
    }

    #[test]
    fn batching_does_not_change_the_effects() {
        let r = rules();
        let events: Vec<_> = (0..20).map(|i| page(["a", "b", "c"][i % 3], &i.to_string(), T0 + i as i64)).collect();
        let whole = score_partition(&r, SOURCE, messages(&events));
        let mut known: HashMap<String, Contact> = HashMap::new();
        let mut alerts = vec![];
        let all = messages(&events);
        for chunk in all.chunks(7) {
            let fx = score_batch(&r, SOURCE, chunk.to_vec(), std::mem::take(&mut known), Dedup::default());
            alerts.extend(fx.alerts);
            known = fx.contacts.into_iter().collect();
        }
        assert_eq!(alerts, whole.alerts);
        let whole: HashMap<String, Contact> = whole.contacts.into_iter().collect();
        assert_eq!(known, whole);
    }

    fn identify(visitor: &str, contact: &str, id: &str, at: Millis) -> InteractionEvent {
        InteractionEvent {
            interaction: Some(Interaction::Identify(crate::proto::Identify { contact_id: contact.into() })),
            ..page(visitor, id, at)
        }
    }

    fn decoded(events: &[InteractionEvent], first: i64) -> Vec<Message> {
        let mut m = messages(events);
        for (i, x) in m.iter_mut().enumerate() {
            x.offset = first + i as i64;
        }
        m
    }

    #[test]
    fn an_identified_visitor_moves_once_and_its_later_events_follow() {
        let r = rules();
        let other = Source { topic: "in", partition: 5 };
        // The visitor's partition: two visits, identify, a visit after.
        let visitor = decoded(
            &[page("v", "1", T0), page("v", "2", T0 + 1), identify("v", "c", "3", T0 + 2), page("v", "4", T0 + 3)],
            10,
        );
        let fx = score_partition(&r, SOURCE, visitor);
        assert_eq!((fx.counts.scored, fx.counts.forwarded), (3, 1));
        let (_, v) = &fx.contacts[0];
        assert_eq!(v.state.links.into.as_deref(), Some("c"));
        assert!(v.state.models.iter().all(Option::is_none), "nothing of the visitor stays behind");
        assert_eq!(fx.forwards.len(), 2);
        assert!(matches!(fx.forwards[0].interaction, Some(Interaction::VisitorMerge(_))));
        let origins: Vec<i64> = fx.forwards.iter().map(|f| f.origin.as_ref().unwrap().offset).collect();
        assert_eq!(origins, [12, 13]);
        // The contact's partition: its own visit, then the records twice over
        // (a relay's repeat): each counts once.
        let mut records = vec![page("c", "9", T0 - 5)];
        records.extend(fx.forwards.iter().cloned());
        records.extend(fx.forwards.iter().cloned());
        let got = score_partition(&r, other, decoded(&records, 0));
        assert_eq!((got.counts.scored, got.counts.deduplicated), (3, 2));
        let (id, c) = &got.contacts[0];
        assert_eq!(id, "c");
        let whole = score_partition(
            &r,
            other,
            decoded(&[page("c", "9", T0 - 5), page("c", "1", T0), page("c", "2", T0 + 1), page("c", "4", T0 + 3)], 0),
        );
        let (a, b) = (c.state.models[0].as_ref().unwrap(), whole.contacts[0].1.state.models[0].as_ref().unwrap());
        assert!((a.score_at(T0 + 10, 86_400.0) - b.score_at(T0 + 10, 86_400.0)).abs() < 1e-9);
        assert_eq!(got.alerts.len(), 1, "the contact heats once, at its own first visit");
        // A second identify of the visitor changes nothing.
        let again = score_batch(
            &r,
            SOURCE,
            decoded(&[identify("v", "c", "5", T0 + 9)], 14),
            fx.contacts.into_iter().collect(),
            Dedup::default(),
        );
        assert!(again.forwards.is_empty());
        assert_eq!(again.counts.deduplicated, 1);
    }

    #[test]
    fn a_visitor_whose_contact_was_erased_before_the_merge_is_erased_too() {
        let r = rules();
        let visitor = score_partition(&r, SOURCE, decoded(&[page("v", "1", T0), identify("v", "c", "2", T0 + 1)], 0));
        let merge = visitor.forwards[0].clone();
        let erased = HashMap::from([("c".to_string(), Contact::erased(&r))]);
        let fx = score_batch(&r, SOURCE, decoded(&[merge], 7), erased, Dedup::default());
        assert_eq!(fx.counts.suppressed, 1);
        assert_eq!(fx.forwards.len(), 1);
        let back = &fx.forwards[0];
        assert_eq!(back.contact_id, "v");
        assert!(matches!(back.interaction, Some(Interaction::Erasure(_))));
        // On the visitor's partition it erases the visitor, link and all.
        let fx = score_batch(
            &r,
            SOURCE,
            decoded(std::slice::from_ref(back), 2),
            visitor.contacts.into_iter().collect(),
            Dedup::default(),
        );
        assert_eq!(fx.contacts[0].1, Contact::erased(&r));
        assert_eq!(fx.erasures[0].contact_id, "v");
    }

    #[test]
    fn an_erased_contact_keeps_nothing_and_its_later_events_are_suppressed() {
        let r = rules();
        let erase = InteractionEvent {
            interaction: Some(Interaction::Erasure(crate::proto::Erasure {
                requested_by: "dpo".into(),
                reason: "ticket 7".into(),
            })),
            ..page("c", "e", T0 + 1)
        };
        let fx = score_partition(&r, SOURCE, decoded(&[page("c", "1", T0), erase, page("c", "2", T0 + 2)], 0));
        assert_eq!((fx.counts.scored, fx.counts.suppressed), (2, 1));
        let (_, c) = &fx.contacts[0];
        assert_eq!(c, &Contact::erased(&r));
        assert_eq!(fx.erasures.len(), 1);
        assert_eq!((fx.erasures[0].contact_id.as_str(), fx.erasures[0].request_id.as_str()), ("c", "e"));
        assert_eq!(fx.erasures[0].reason, "ticket 7");
    }

    #[test]
    fn a_sweep_and_an_event_name_the_same_cooling_alike() {
        let r = rules();
        let later = T0 + 5 * 86_400_000;
        let first = score_partition(&r, SOURCE, messages(&[page("c", "1", T0)]));
        let (id, contact) = first.contacts.into_iter().next().unwrap();
        let swept = sweep(&r, SOURCE, vec![(id.clone(), contact.clone())], later);
        let known = HashMap::from([(id, contact)]);
        let msg = Message::decode(17, None, Some(&page("c", "2", later).encode_to_vec()), &Limits::default(), later);
        let caught = score_batch(&r, SOURCE, [msg], known, Dedup::default());
        assert_eq!(swept.alerts.len(), 1);
        let (a, b) = (&swept.alerts[0], &caught.alerts[0]);
        assert_eq!(a.alert_id, b.alert_id);
        assert_eq!(a.crossed_at, b.crossed_at);
        assert_eq!(b.trigger_event_id, "", "decay, not the event, caused it");
    }
}
