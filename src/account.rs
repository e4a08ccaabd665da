//! Account roll-ups: an account's score in a model made from its contacts'
//! scores, its tiers, its crossings, and its exact cooling by decay.
//!
//! Pure functions over [`AccountState`]; nothing here knows Kafka or Redis.
//! The contact stage sends a contact's part in its account
//! ([`AccountContribution`]: per model with an `account:` roll-up, its
//! behaviour points `b` at `a`, its fit `f` and its tier) with each event that
//! changes it; the account stage applies them here.
//!
//! Invariants:
//! - A contact counts once. The account keeps each contact's latest
//!   contribution by source position ([`Seq`]: the input partition and
//!   offset of the event); one at or before what it has seen of the contact
//!   (remembered after the contact left, too) changes nothing. So a repeat,
//!   a replay or a rebuild of the contact's partition, in any interleaving
//!   with other partitions, never counts a contact twice; a contact that
//!   moves leaves the old account by the same event that joins it to the
//!   new one.
//! - A contact's score at `t` is `b * 2^(-(t - a) / H) + f` (the contact
//!   stage's own formula) and its value in the roll-up is that score,
//!   floored at zero, times its weight. The account score is the sum of
//!   the values, or of the `top` N. Its breadth at `t` counts the contacts
//!   at or above the breadth tier: a contact there at `a` stays until the
//!   whole millisecond decay takes it under that tier's exit, as the contact
//!   stage computes its own cooling ([`crate::score::cooling_due`]).
//! - Tiers have hysteresis: tier `j` is entered when the score reaches its
//!   `enter` and breadth its `min_contacts`, and held while the score stays
//!   at or above its `exit` and breadth at or above `min_contacts`. A
//!   contribution is judged at the account's time (the latest contribution
//!   or cooling applied), and may raise HEATED or COOLED. Decay only cools:
//!   at the first whole millisecond the tier no longer holds
//!   ([`cooling_due`]), found by a search over milliseconds that is exact
//!   when contacts' behaviour points are not negative (the hold test is
//!   then non-increasing in time). A contribution dated after a due cooling
//!   applies the cooling first, at its own instant: a sweep and a late
//!   contribution name it alike.
//! - An account keeps no id of a contact that left (moved or erased):
//!   only a hash of it, to recognise its stale contributions ([`departed`]);
//!   an alert its erasure raises does not name it.
//! - Alert ids are deterministic: a crossing a contribution caused is named
//!   by the contact's source event (topic, partition, offset, contact), the
//!   account, model, tier and direction; a cooling by decay by the account,
//!   model, tier and instant.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::proto::{score_alert, AccountAlert, AccountContribution, AccountMember, ContactPart};
use crate::rules::{AccountRollup, Model, RuleSet};
use crate::score::{decay_factor, Millis};

/// Where a contribution's event was read: input partition and offset. A
/// contact's events are all on one partition, so its contributions are
/// ordered by it.
pub type Seq = (i32, i64);

/// How many contacts an alert names as drivers.
pub const DRIVERS: usize = 5;

/// A contact's state in one model, as its account sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// Behaviour points at `a`.
    pub b: f64,
    /// Their time.
    pub a: Millis,
    /// Fit points (no decay).
    pub f: f64,
    /// The contact's tier in the model at `a`.
    pub tier: String,
}

/// A contact of an account: its latest contribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Source position of the contribution.
    pub seq: Seq,
    /// Its event.
    pub event: String,
    /// Its state per model (by model name).
    pub parts: BTreeMap<String, Part>,
    /// The attributes the roll-ups weigh it by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// One account's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AccountState {
    /// The account's time: the latest contribution or cooling applied.
    pub at: Millis,
    /// Its contacts.
    pub members: BTreeMap<String, Member>,
    /// Contacts that left, by a hash of their id ([`departed`]; the id of
    /// a contact gone, erased ones included, is not kept), with the
    /// position of their leaving.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub left: BTreeMap<String, Seq>,
    /// The account's tier per model (by name; absent: the base tier).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, String>,
}

impl AccountState {
    /// The stored form (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an account state serialises")
    }

    /// Reads the stored form.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The account's tier index in `model`'s roll-up.
    pub fn tier(&self, model: &Model, rollup: &AccountRollup) -> usize {
        self.tiers.get(&model.name).map_or(0, |t| rollup.tier_index(t))
    }

    fn set_tier(&mut self, model: &Model, rollup: &AccountRollup, tier: usize) {
        if tier == 0 {
            self.tiers.remove(&model.name);
        } else {
            self.tiers.insert(model.name.clone(), rollup.tier_name(tier).to_string());
        }
    }

    /// The position of the contact's latest contribution seen, if any.
    pub fn last_seen(&self, contact: &str) -> Option<Seq> {
        self.members.get(contact).map(|m| m.seq).or_else(|| self.left.get(&departed(contact)).copied())
    }
}

/// How an account remembers a contact that left: SHA-256 of its id, the
/// first 16 bytes in hex (enough to recognise a stale contribution, never
/// the id).
pub fn departed(contact: &str) -> String {
    crate::engine::digest16(contact)
}

/// The partition of the contribution topic an account's contributions go
/// to: FNV-1a (32 bits) of its id, modulo the topic's partitions. Fixed for
/// the topic's life: an account is rolled up by the owner of one partition.
pub fn partition_of(account: &str, partitions: i32) -> i32 {
    let h = account.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    (h % partitions.max(1) as u32) as i32
}

/// The models of `rules` with an account roll-up.
pub fn models(rules: &RuleSet) -> impl Iterator<Item = (&Model, &AccountRollup)> {
    rules.models.iter().filter_map(|m| m.account.as_ref().map(|a| (m, a)))
}

/// A contact's score in `model` at `t` from its part.
pub fn contact_score(model: &Model, p: &Part, t: Millis) -> f64 {
    p.b * decay_factor((t - p.a).max(0), model.half_life_secs) + p.f
}

/// The first millisecond at which a contact of `part` is under tier `k` of
/// `model` (`None`: never by decay; `Some(p.a)` or earlier: not there at
/// all). The contact stage's own cooling instant
/// ([`crate::score::cooling_due`]).
pub fn leaves_tier(model: &Model, k: usize, p: &Part) -> Option<Millis> {
    if k == 0 {
        return None;
    }
    if model.tier_index(&p.tier) < k {
        return Some(Millis::MIN);
    }
    let behaviour_at_exit = model.tiers[k - 1].exit - p.f;
    if behaviour_at_exit <= 0.0 {
        return None;
    }
    if p.b < behaviour_at_exit {
        return Some(p.a);
    }
    let dt_ms = (model.half_life_secs * (p.b / behaviour_at_exit).log2() * 1000.0).ceil() as Millis;
    Some(p.a + dt_ms.max(0))
}

/// One contact's place in an account score at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    /// The contact.
    pub contact: String,
    /// Its score in the model.
    pub score: f64,
    /// Its weight.
    pub weight: f64,
    /// Weighted score, floored at zero.
    pub value: f64,
    /// Whether it counts in the score (always, without `top`).
    pub counted: bool,
    /// Its tier in the model at the time.
    pub tier: String,
    /// Whether it counts toward breadth.
    pub broad: bool,
}

/// An account's standing in a model at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// The account score.
    pub score: f64,
    /// Contacts at or above the breadth tier.
    pub breadth: u32,
    /// Every contact with a part in the model, largest value first (ties
    /// by id).
    pub shares: Vec<Share>,
}

/// The account's standing in `model` at `t`.
pub fn standing(model: &Model, rollup: &AccountRollup, state: &AccountState, t: Millis) -> Standing {
    let mut shares: Vec<Share> = state
        .members
        .iter()
        .filter_map(|(id, m)| {
            let p = m.parts.get(&model.name)?;
            let score = contact_score(model, p, t);
            let weight = rollup.weight(&m.attributes);
            let broad = leaves_tier(model, rollup.breadth_tier, p).is_none_or(|l| t < l);
            let tier = contact_tier_at(model, p, t);
            Some(Share {
                contact: id.clone(),
                score,
                weight,
                value: score.max(0.0) * weight,
                counted: true,
                tier: model.tier_name(tier).to_string(),
                broad,
            })
        })
        .collect();
    shares.sort_by(|x, y| y.value.total_cmp(&x.value).then_with(|| x.contact.cmp(&y.contact)));
    if let Some(n) = rollup.top {
        for s in shares.iter_mut().skip(n) {
            s.counted = false;
        }
    }
    // Summed smallest first: the same members give the same sum in any order.
    let mut counted: Vec<f64> = shares.iter().filter(|s| s.counted).map(|s| s.value).collect();
    counted.sort_by(f64::total_cmp);
    let score = counted.iter().sum();
    let breadth = shares.iter().filter(|s| s.broad).count() as u32;
    Standing { score, breadth, shares }
}

/// The account score alone (what [`standing`] says, without the shares'
/// names and tiers): the search for a cooling instant evaluates it often.
fn score_and_breadth(model: &Model, rollup: &AccountRollup, state: &AccountState, t: Millis) -> (f64, u32) {
    let mut values: Vec<f64> = Vec::with_capacity(state.members.len());
    let mut breadth = 0;
    for m in state.members.values() {
        let Some(p) = m.parts.get(&model.name) else { continue };
        values.push(contact_score(model, p, t).max(0.0) * rollup.weight(&m.attributes));
        if leaves_tier(model, rollup.breadth_tier, p).is_none_or(|l| t < l) {
            breadth += 1;
        }
    }
    if let Some(n) = rollup.top {
        values.sort_by(|x, y| y.total_cmp(x));
        values.truncate(n);
    }
    values.sort_by(f64::total_cmp);
    (values.iter().sum(), breadth)
}

/// A contact's tier in `model` at `t` (decay since its part, no event).
fn contact_tier_at(model: &Model, p: &Part, t: Millis) -> usize {
    let mut tier = model.tier_index(&p.tier);
    while tier > 0 && leaves_tier(model, tier, p).is_some_and(|l| t >= l) {
        tier -= 1;
    }
    tier
}

/// Whether account tier `j` (1 or more) holds with this score and breadth.
fn holds(rollup: &AccountRollup, j: usize, score: f64, breadth: u32) -> bool {
    let t = &rollup.tiers[j - 1];
    score >= t.exit && breadth >= t.min_contacts
}

/// Whether account tier `j` (1 or more) is entered with this score and breadth.
fn enters(rollup: &AccountRollup, j: usize, score: f64, breadth: u32) -> bool {
    let t = &rollup.tiers[j - 1];
    score >= t.enter && breadth >= t.min_contacts
}

/// The tier reached from `tier` at a contribution: up while the next tier
/// is entered, else down while the current one does not hold.
fn judge(rollup: &AccountRollup, mut tier: usize, score: f64, breadth: u32) -> usize {
    let from = tier;
    while tier < rollup.tiers.len() && enters(rollup, tier + 1, score, breadth) {
        tier += 1;
    }
    if tier == from {
        while tier > 0 && !holds(rollup, tier, score, breadth) {
            tier -= 1;
        }
    }
    tier
}

/// When decay alone takes the account out of its current tier in `model`:
/// the first whole millisecond at or after the account's time at which the
/// tier no longer holds, or `None` when it never does (the base tier, or
/// fit alone holds it).
pub fn cooling_due(model: &Model, rollup: &AccountRollup, state: &AccountState) -> Option<Millis> {
    let tier = state.tier(model, rollup);
    if tier == 0 {
        return None;
    }
    let hold = |t: Millis| {
        let (s, b) = score_and_breadth(model, rollup, state, t);
        holds(rollup, tier, s, b)
    };
    let from = state.at;
    if !hold(from) {
        return Some(from);
    }
    // Past a thousand half-lives only fit is left: what holds then holds
    // for ever.
    let horizon = (model.half_life_secs * 1000.0 * 1000.0) as Millis;
    let mut step: Millis = ((model.half_life_secs * 1000.0 / 64.0) as Millis).max(1);
    let mut lo = from;
    loop {
        let hi = from.saturating_add(step);
        if !hold(hi) {
            // The first failing millisecond in (lo, hi].
            let (mut lo, mut hi) = (lo, hi);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if hold(mid) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            return Some(hi);
        }
        if step > horizon {
            return None;
        }
        lo = hi;
        step = step.saturating_mul(2);
    }
}

/// The earliest cooling due in any model ([`cooling_due`]).
pub fn next_cooling(rules: &RuleSet, state: &AccountState) -> Option<Millis> {
    models(rules).filter_map(|(m, r)| cooling_due(m, r, state)).min()
}

/// The account's leaderboard entry in `model`: `log2(S) + (t - E) / H`
/// for its score `S` at its time `t` (as a contact's: the order by it is the
/// order by current score while the account's contacts only decay; the
/// read side scores the entries it lists exactly). `None` for a score of
/// zero.
pub fn leaderboard_value(model: &Model, rollup: &AccountRollup, state: &AccountState) -> Option<f64> {
    let (s, _) = score_and_breadth(model, rollup, state, state.at);
    (s > 0.0).then(|| crate::score::leaderboard_value(model, s, state.at))
}

/// What applying a contribution did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It replaced the contact's part (or removed the contact).
    Changed,
    /// Not newer than what the account has seen of the contact: nothing
    /// changed.
    Repeat,
}

/// Applies a contribution to its account at the account's time (the later
/// of its own and the contribution's): coolings due before it first, then
/// the contact's part, then each model's tier. Alerts come in the order
/// raised.
pub fn apply(
    rules: &RuleSet,
    account: &str,
    state: &mut AccountState,
    c: &AccountContribution,
    alerts: &mut Vec<AccountAlert>,
) -> Applied {
    let seq = (c.partition, c.offset);
    if state.last_seen(&c.contact_id).is_some_and(|s| s >= seq) {
        return Applied::Repeat;
    }
    let at = c.occurred_at.as_ref().map_or(state.at, crate::decode::millis);
    let t = state.at.max(at);
    cool_until(rules, account, state, t, alerts);
    if c.left {
        state.members.remove(&c.contact_id);
        state.left.insert(departed(&c.contact_id), seq);
    } else {
        state.left.remove(&departed(&c.contact_id));
        let parts = c.parts.iter().map(|p| (p.model.clone(), part_of(p))).collect();
        let member = Member { seq, event: c.event_id.clone(), parts, attributes: c.attributes.clone() };
        state.members.insert(c.contact_id.clone(), member);
    }
    state.at = t;
    for (model, rollup) in models(rules) {
        let from = state.tier(model, rollup);
        let (score, breadth) = score_and_breadth(model, rollup, state, t);
        let to = judge(rollup, from, score, breadth);
        if to == from {
            continue;
        }
        state.set_tier(model, rollup, to);
        if rollup.alerts_on(from, to) {
            let key = format!(
                "account/{}/{}/{}/{}/{}/{}/{}/{}",
                c.topic,
                c.partition,
                c.offset,
                c.contact_id,
                account,
                model.name,
                rollup.tier_name(to),
                direction(from, to).as_str_name()
            );
            let mut a = alert(model, rollup, account, state, from, to, t, &key);
            // An erased contact is not named, not even as the trigger.
            if !c.erased {
                a.trigger_contact_id = c.contact_id.clone();
            }
            a.trigger_event_id = c.event_id.clone();
            alerts.push(a);
        }
    }
    Applied::Changed
}

/// Applies every cooling by decay due by `now`, each at its exact instant
/// (a fall through several tiers at one instant is one crossing). The
/// account's time moves to the last cooling applied.
pub fn cool_until(
    rules: &RuleSet,
    account: &str,
    state: &mut AccountState,
    now: Millis,
    alerts: &mut Vec<AccountAlert>,
) {
    let start = state.at;
    let mut latest = start;
    for (model, rollup) in models(rules) {
        // Each model from the account's time before any cooling.
        state.at = start;
        while let Some(due) = cooling_due(model, rollup, state).filter(|d| *d <= now) {
            let from = state.tier(model, rollup);
            let (score, breadth) = score_and_breadth(model, rollup, state, due);
            let mut to = from;
            while to > 0 && !holds(rollup, to, score, breadth) {
                to -= 1;
            }
            if to == from {
                // Cannot happen (the tier fails at `due`); never loop.
                break;
            }
            state.set_tier(model, rollup, to);
            state.at = due;
            latest = latest.max(due);
            if rollup.alerts_on(from, to) {
                let key = format!("account/decay/{account}/{}/{}/{due}", model.name, rollup.tier_name(to));
                alerts.push(alert(model, rollup, account, state, from, to, due, &key));
            }
        }
    }
    state.at = latest;
}

fn part_of(p: &ContactPart) -> Part {
    Part { b: p.behaviour, a: p.at_ms, f: p.fit, tier: p.tier.clone() }
}

fn direction(from: usize, to: usize) -> score_alert::Direction {
    if to > from {
        score_alert::Direction::Heated
    } else {
        score_alert::Direction::Cooled
    }
}

/// The alert of a crossing from `from` to `to` at `t`, id hashed from `key`.
#[allow(clippy::too_many_arguments)]
fn alert(
    model: &Model,
    rollup: &AccountRollup,
    account: &str,
    state: &AccountState,
    from: usize,
    to: usize,
    t: Millis,
    key: &str,
) -> AccountAlert {
    let s = standing(model, rollup, state, t);
    let threshold = if to > from { rollup.tiers[to - 1].enter } else { rollup.tiers[to].exit };
    AccountAlert {
        alert_id: crate::engine::digest16(key),
        account_id: account.to_string(),
        model: model.name.clone(),
        model_version: model.version,
        direction: direction(from, to) as i32,
        tier: rollup.tier_name(to).to_string(),
        previous_tier: rollup.tier_name(from).to_string(),
        score: s.score,
        threshold,
        crossed_at: Some(crate::decode::timestamp(t)),
        breadth: s.breadth,
        trigger_contact_id: String::new(),
        trigger_event_id: String::new(),
        drivers: drivers(&s),
        historical: false,
    }
}

/// The contacts that drive a standing: the counted ones, largest value
/// first, at most [`DRIVERS`].
pub fn drivers(s: &Standing) -> Vec<AccountMember> {
    s.shares
        .iter()
        .filter(|x| x.counted && x.value > 0.0)
        .take(DRIVERS)
        .map(|x| AccountMember {
            contact_id: x.contact.clone(),
            score: x.score,
            weight: x.weight,
            share: if s.score > 0.0 { x.value / s.score } else { 0.0 },
            tier: x.tier.clone(),
        })
        .collect()
}

/// A contact's part in its account's models, from its state (`None` for a
/// model it has no state in).
pub fn parts(rules: &RuleSet, state: &crate::score::ContactState) -> Vec<ContactPart> {
    rules
        .models
        .iter()
        .zip(&state.models)
        .filter(|(m, _)| m.account.is_some())
        .filter_map(|(m, st)| {
            let st = st.as_ref()?;
            Some(ContactPart {
                model: m.name.clone(),
                behaviour: st.score,
                at_ms: st.at_ms,
                fit: st.fit_total(),
                tier: m.tier_name(st.tier).to_string(),
            })
        })
        .collect()
}

/// The attributes the roll-ups of `rules` weigh a contact by, from its
/// profile.
pub fn weighed_attributes(rules: &RuleSet, state: &crate::score::ContactState) -> BTreeMap<String, String> {
    models(rules)
        .filter_map(|(_, r)| r.weights.as_ref())
        .filter_map(|w| state.profile.get(&w.attribute).map(|(v, _)| (w.attribute.clone(), v.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: Millis = 1_760_000_000_000;
    const DAY: Millis = 86_400_000;

    fn rules(extra: &str) -> RuleSet {
        RuleSet::parse(
            &format!(
                "models:
  - name: m
    half_life: 1d
    tiers: [{{name: warm, enter: 30, exit: 20}}, {{name: hot, enter: 60, exit: 45}}]
    rules: [{{id: p, when: {{kind: page_view}}, points: 40}}]
    account:
      breadth: warm
{extra}
      tiers:
        - {{name: engaged, enter: 50, exit: 40}}
        - {{name: buying, enter: 100, exit: 80, min_contacts: 3}}"
            ),
            "t",
        )
        .unwrap()
    }

    fn contribution(contact: &str, offset: i64, at: Millis, b: f64, tier: &str) -> AccountContribution {
        AccountContribution {
            account_id: "acme".into(),
            contact_id: contact.into(),
            topic: "in".into(),
            partition: 0,
            offset,
            event_id: format!("e{offset}"),
            occurred_at: Some(crate::decode::timestamp(at)),
            left: false,
            parts: vec![ContactPart { model: "m".into(), behaviour: b, at_ms: at, fit: 0.0, tier: tier.into() }],
            attributes: BTreeMap::new(),
            erased: false,
        }
    }

    fn run(r: &RuleSet, cs: &[AccountContribution]) -> (AccountState, Vec<AccountAlert>) {
        let mut st = AccountState::default();
        let mut alerts = vec![];
        for c in cs {
            apply(r, "acme", &mut st, c, &mut alerts);
        }
        (st, alerts)
    }

    fn seen(alerts: &[AccountAlert]) -> Vec<(String, String)> {
        alerts.iter().map(|a| (a.tier.clone(), a.trigger_contact_id.clone())).collect()
    }

    #[test]
    fn the_third_warm_contact_makes_the_account_buying() {
        let r = rules("");
        let (st, alerts) = run(
            &r,
            &[
                contribution("a", 1, T0, 40.0, "warm"),
                contribution("b", 2, T0, 40.0, "warm"),
                contribution("c", 3, T0, 40.0, "warm"),
            ],
        );
        assert_eq!(seen(&alerts), [("engaged".into(), "b".into()), ("buying".into(), "c".into())]);
        let a = &alerts[1];
        assert_eq!((a.score, a.breadth, a.threshold), (120.0, 3, 100.0));
        assert_eq!(a.drivers.len(), 3);
        assert!((a.drivers.iter().map(|d| d.share).sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(st.tiers["m"], "buying");
    }

    #[test]
    fn a_repeat_or_an_older_contribution_changes_nothing() {
        let r = rules("");
        let cs = [contribution("a", 5, T0, 40.0, "warm"), contribution("b", 6, T0, 40.0, "warm")];
        let (mut st, _) = run(&r, &cs);
        let before = st.clone();
        let mut alerts = vec![];
        for c in [cs[0].clone(), cs[1].clone(), contribution("a", 4, T0 + 5, 90.0, "hot")] {
            assert_eq!(apply(&r, "acme", &mut st, &c, &mut alerts), Applied::Repeat);
        }
        assert_eq!(st, before);
        assert!(alerts.is_empty());
    }

    #[test]
    fn a_contact_that_left_is_not_brought_back_by_a_stale_contribution() {
        let r = rules("");
        let mut gone = contribution("a", 7, T0 + 1, 0.0, "cold");
        gone.left = true;
        gone.parts.clear();
        let (st, alerts) =
            run(&r, &[contribution("a", 5, T0, 60.0, "hot"), gone, contribution("a", 6, T0, 60.0, "hot")]);
        assert!(st.members.is_empty());
        assert_eq!(st.left[&departed("a")], (0, 7));
        assert!(!String::from_utf8(st.encode()).unwrap().contains("\"a\""), "the id of a contact gone is not kept");
        let dirs: Vec<i32> = alerts.iter().map(|a| a.direction).collect();
        assert_eq!(dirs, [score_alert::Direction::Heated as i32, score_alert::Direction::Cooled as i32]);
        assert_eq!(alerts[1].trigger_contact_id, "a");
    }

    #[test]
    fn decay_cools_the_account_at_the_first_millisecond_under_the_exit() {
        let r = rules("");
        let (mut st, _) = run(&r, &[contribution("a", 1, T0, 40.0, "warm"), contribution("b", 2, T0, 30.0, "warm")]);
        assert_eq!(st.tiers["m"], "engaged");
        // 70 * 2^(-t/1d) < 40 from t = log2(70/40) days.
        let due = cooling_due(&r.models[0], r.models[0].account.as_ref().unwrap(), &st).unwrap();
        let exact = T0 as f64 + (70.0f64 / 40.0).log2() * DAY as f64;
        assert!((due as f64 - exact).abs() <= 1.0, "{due} vs {exact}");
        let (m, ro) = (&r.models[0], r.models[0].account.as_ref().unwrap());
        assert!(standing(m, ro, &st, due).score < 40.0);
        assert!(standing(m, ro, &st, due - 1).score >= 40.0);
        let mut alerts = vec![];
        cool_until(&r, "acme", &mut st, due - 1, &mut alerts);
        assert!(alerts.is_empty());
        cool_until(&r, "acme", &mut st, due + DAY, &mut alerts);
        assert_eq!(alerts.len(), 1);
        assert_eq!(crate::decode::millis(alerts[0].crossed_at.as_ref().unwrap()), due);
        assert_eq!(alerts[0].trigger_contact_id, "");
        assert_eq!(st.at, due);
        // A contribution after the instant names the same cooling first.
        let (mut again, _) = run(&r, &[contribution("a", 1, T0, 40.0, "warm"), contribution("b", 2, T0, 30.0, "warm")]);
        let mut caught = vec![];
        apply(&r, "acme", &mut again, &contribution("c", 3, due + 10, 1.0, "cold"), &mut caught);
        assert_eq!(caught[0].alert_id, alerts[0].alert_id);
    }

    #[test]
    fn breadth_falls_when_a_contact_cools_under_the_breadth_tier() {
        let r = rules("");
        // Three warm contacts, 40 each: buying (120 >= 100, breadth 3).
        // c decays under warm's exit (20) after one day; the score is then
        // still 40+40+20 = 100 >= 80, so breadth alone cools the account.
        let (mut st, alerts) = run(
            &r,
            &[
                contribution("a", 1, T0, 300.0, "hot"),
                contribution("b", 2, T0, 300.0, "hot"),
                contribution("c", 3, T0, 40.0, "warm"),
            ],
        );
        assert_eq!(alerts.last().unwrap().tier, "buying");
        let (m, ro) = (&r.models[0], r.models[0].account.as_ref().unwrap());
        let due = cooling_due(m, ro, &st).unwrap();
        assert_eq!(due, T0 + DAY, "c's score is 20 exactly at one day: it leaves warm just after");
        let mut out = vec![];
        cool_until(&r, "acme", &mut st, T0 + 2 * DAY, &mut out);
        assert_eq!(out[0].tier, "engaged");
        assert_eq!(out[0].breadth, 2);
    }

    #[test]
    fn top_n_and_weights_shape_the_score() {
        let r = rules("      top: 2\n      weights: {attribute: role, values: {decision_maker: 2}, default: 0.5}");
        let mut boss = contribution("boss", 3, T0, 30.0, "warm");
        boss.attributes.insert("role".into(), "decision_maker".into());
        let (st, _) = run(&r, &[contribution("a", 1, T0, 40.0, "warm"), contribution("b", 2, T0, 30.0, "warm"), boss]);
        let s = standing(&r.models[0], r.models[0].account.as_ref().unwrap(), &st, T0);
        // boss 60, a 20, b 15: the top two make 80.
        assert_eq!(s.score, 80.0);
        assert_eq!(
            s.shares.iter().map(|x| (x.contact.as_str(), x.counted)).collect::<Vec<_>>(),
            [("boss", true), ("a", true), ("b", false)]
        );
        assert_eq!(s.breadth, 3);
    }

    proptest! {
        /// The stored form gives back every float exactly: an account read
        /// from Redis scores as the one written.
        #[test]
        fn the_stored_form_round_trips_exactly(b in -1e6f64..1e6, f in -1e3f64..1e3, a in 0i64..2_000_000_000_000) {
            let mut st = AccountState { at: a, ..Default::default() };
            let part = Part { b: b / 3.0, a, f: f / 7.0, tier: "warm".into() };
            let member = Member { seq: (1, 2), event: "e".into(), parts: [("m".to_string(), part)].into(), attributes: BTreeMap::new() };
            st.members.insert("c".into(), member);
            prop_assert_eq!(AccountState::decode(&st.encode()).unwrap(), st);
        }

        /// Contributions of several contacts, each contact's in its own
        /// order, interleaved any way and repeated: the account ends with
        /// each contact's latest, and the same score, as applying each
        /// contact's latest once.
        #[test]
        fn interleaving_and_repeats_do_not_change_the_account(
            points in proptest::collection::vec(proptest::collection::vec(0.0f64..100.0, 1..5), 1..5),
            order in proptest::collection::vec(0usize..1000, 0..60),
        ) {
            let r = rules("");
            let mut per: Vec<Vec<AccountContribution>> = points
                .iter()
                .enumerate()
                .map(|(c, ps)| {
                    ps.iter()
                        .enumerate()
                        .map(|(i, b)| contribution(&format!("c{c}"), i as i64 + 1, T0 + i as i64 * 1000, *b, "warm"))
                        .collect()
                })
                .collect();
            let latest: Vec<AccountContribution> = per.iter().map(|v| v.last().unwrap().clone()).collect();
            let mut shuffled = vec![];
            let mut next = vec![0usize; per.len()];
            for o in &order {
                let c = o % per.len();
                if next[c] < per[c].len() {
                    shuffled.push(per[c][next[c]].clone());
                    // Sometimes a repeat of what was sent before.
                    if o % 3 == 0 { shuffled.push(per[c][next[c] / 2].clone()); }
                    next[c] += 1;
                }
            }
            for (c, v) in per.iter_mut().enumerate() {
                shuffled.extend(v.drain(next[c]..));
            }
            let t = T0 + 10_000;
            let (a, _) = run(&r, &shuffled);
            let (b, _) = run(&r, &latest);
            let (m, ro) = (&r.models[0], r.models[0].account.as_ref().unwrap());
            prop_assert_eq!(&a.members, &b.members);
            let (x, y) = (standing(m, ro, &a, t).score, standing(m, ro, &b, t).score);
            prop_assert!((x - y).abs() < 1e-9, "{} vs {}", x, y);
        }
    }
}
