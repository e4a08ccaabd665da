//! The scoring core: decay math, fit, caps, tiers with hysteresis and
//! cross-model requirements, crossings and explanations.
//!
//! Pure functions over [`ContactState`]; nothing here knows Kafka or Redis.
//!
//! A behaviour contribution of `p` points made at time `t` is worth
//! `p * 2^(-(now - t) / H)` at `now`, for the model's half-life `H`. The state
//! keeps `(s, t)` and is updated lazily: an event at `τ >= t` sets
//! `s = s * 2^(-(τ - t) / H) + p; t = τ`, and a late event `τ < t` adds
//! `p * 2^(-(t - τ) / H)`. The same set of events therefore gives the same
//! score whatever their order or batching. Fit points score the contact's
//! current profile attributes and do not decay; a model's score is its
//! decayed behaviour part plus its fit part.
//!
//! # Manual adjustments
//!
//! An [`Adjustment`] event at `τ` naming model `M` adds its points to `M`'s
//! behaviour score at `τ` exactly as a rule's points would (decayed the
//! same way, a late one added decayed to the state's time), under the
//! contribution id `adjustment:<reason>` ([`adjustment_id`]); rules, caps
//! and `once` do not apply to it. So the order-independence above holds for
//! adjustments too. One naming a model not in the rules changes no score
//! (it is scored like an event no rule matches).
//!
//! A reset (`reset: true`) sets `M`'s behaviour score and every contribution
//! to zero, then adds the adjustment's points, if any. The fit part (from
//! profile attributes) stays, and so do cap and `once` use and cooldowns: a
//! reset is not a new contact. A reset applies at `max(τ, t)`: at its own
//! time when it is the latest event, and at the state's time `t` when it
//! arrives late, zeroing the points of events dated after it too (the state
//! keeps shares per rule, not per event, so it cannot tell them apart). A
//! reset is therefore the one event whose effect depends on the order of
//! arrival: the engine applies a partition in offset order, so the service,
//! `rules test` and the oracle still agree. Tiers are judged after an
//! adjustment as after any event: it can raise HEATED or COOLED alerts.

use std::collections::BTreeMap;

use crate::proto::interaction_event::Interaction;
use crate::proto::{Adjustment, InteractionEvent};
use crate::rules::{CapLimit, Model, Rule, RuleSet};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Fixed epoch of leaderboard scores: 2024-01-01T00:00:00Z.
pub const LEADERBOARD_EPOCH_MS: Millis = 1_704_067_200_000;

/// How many contributions an alert carries.
pub const TOP_CONTRIBUTIONS: usize = 5;

/// Window number used for `once` rules: one window for all time.
pub const ONCE_WINDOW: i64 = i64::MIN;

/// The factor by which points decay over `dt_ms` for half-life `half_life_secs`.
pub fn decay_factor(dt_ms: Millis, half_life_secs: f64) -> f64 {
    (-(dt_ms as f64) / 1000.0 / half_life_secs).exp2()
}

/// How much of a capped rule a contact has used in its current window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapUse {
    /// The window's id ([`window_id`], or [`ONCE_WINDOW`]).
    pub window: i64,
    /// Matching events counted in the window.
    pub hits: u32,
    /// Absolute points counted in the window (before decay).
    pub points: f64,
}

/// One contact's state in one model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelState {
    /// Behaviour score at `at_ms`.
    pub score: f64,
    /// Time of the latest event applied (event time).
    pub at_ms: Millis,
    /// Current tier index: 0 is the base tier, `i` is `model.tiers[i - 1]`.
    pub tier: usize,
    /// Each behaviour rule's share of `score` at `at_ms`; they sum to `score`.
    pub contributions: BTreeMap<String, f64>,
    /// Each matching fit rule's points (no decay).
    pub fit: BTreeMap<String, f64>,
    /// Use of capped and once-only rules.
    pub caps: BTreeMap<String, CapUse>,
    /// When the last alert into each tier was raised (for cooldowns).
    pub alerted: BTreeMap<String, Millis>,
    /// The latest cooling a sweep applied with no event (0: none): the tier
    /// is settled up to then, so an event dated earlier that arrives later
    /// does not judge the tier again at its own time.
    pub settled_ms: Millis,
}

impl ModelState {
    /// A fresh state at time `at_ms`: score zero, base tier.
    pub fn new(at_ms: Millis) -> Self {
        Self { at_ms, ..Self::default() }
    }

    /// The fit part of the score.
    pub fn fit_total(&self) -> f64 {
        self.fit.values().sum()
    }

    /// The behaviour part decayed to `now_ms` (no decay before `at_ms`).
    pub fn behaviour_at(&self, now_ms: Millis, half_life_secs: f64) -> f64 {
        self.score * decay_factor((now_ms - self.at_ms).max(0), half_life_secs)
    }

    /// The model score at `now_ms`: behaviour decayed, plus fit.
    pub fn score_at(&self, now_ms: Millis, half_life_secs: f64) -> f64 {
        self.behaviour_at(now_ms, half_life_secs) + self.fit_total()
    }

    /// The score broken down by rule at `now_ms`, largest first; the parts
    /// sum to [`ModelState::score_at`].
    pub fn explain(&self, now_ms: Millis, half_life_secs: f64) -> Vec<(String, f64)> {
        let f = decay_factor((now_ms - self.at_ms).max(0), half_life_secs);
        let mut v: Vec<(String, f64)> = self.contributions.iter().map(|(k, c)| (k.clone(), c * f)).collect();
        for (k, p) in &self.fit {
            match v.iter_mut().find(|(r, _)| r == k) {
                Some(e) => e.1 += p,
                None => v.push((k.clone(), *p)),
            }
        }
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// The leaderboard entry: `log2(s) + (t - E) / H` for a model with
    /// behaviour rules (ordering by it orders contacts by current decayed
    /// score at any `now`), the fit score for a fit-only model. `None` when
    /// the contact has nothing to rank by.
    /// Only a contact at or above the model's [`leaderboard_floor`] has
    /// one, so the cold majority costs the leaderboard nothing.
    pub fn leaderboard_score(&self, model: &Model) -> Option<f64> {
        let floor = leaderboard_floor(model);
        if model.rules.is_empty() {
            let f = self.fit_total();
            return (f > 0.0 && f >= floor).then_some(f);
        }
        (self.score > 0.0 && self.score >= floor).then(|| leaderboard_value(model, self.score, self.at_ms))
    }
}

/// The leaderboard value of behaviour score `s` at `at_ms`:
/// `log2(s) + (at - E) / H`. It does not change as the score decays, and
/// orders contacts by their current score at any moment.
pub fn leaderboard_value(model: &Model, s: f64, at_ms: Millis) -> f64 {
    s.log2() + (at_ms - LEADERBOARD_EPOCH_MS) as f64 / 1000.0 / model.half_life_secs
}

/// The least ranked score (behaviour part, or fit for a fit-only model) a
/// contact needs to be on the model's leaderboard: the lowest tier's exit,
/// less the most fit points the model can give (so every contact whose
/// score reaches the lowest tier's exit is on it). 0 (any positive score)
/// for a model without tiers, or whose fit alone can reach the exit.
pub fn leaderboard_floor(model: &Model) -> f64 {
    let Some(lowest) = model.tiers.first() else { return 0.0 };
    if model.rules.is_empty() {
        return lowest.exit.max(0.0);
    }
    let fit: f64 = model.fit.iter().map(|r| r.points.max(0.0)).sum();
    (lowest.exit - fit).max(0.0)
}

/// The leaderboard values below which a contact has decayed under the
/// floor by `now_ms` (`None`: nothing decays off this model's leaderboard).
pub fn leaderboard_prune_below(model: &Model, now_ms: Millis) -> Option<f64> {
    let floor = leaderboard_floor(model);
    (!model.rules.is_empty() && floor > 0.0).then(|| leaderboard_value(model, floor, now_ms))
}

/// A contact's whole state: its profile and each model's state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContactState {
    /// Profile attributes: value and the event time that set it.
    pub profile: BTreeMap<String, (String, Millis)>,
    /// State per model, parallel to the rule set's models.
    pub models: Vec<Option<ModelState>>,
    /// Recently applied event ids (hashed) with their arrival times (whole
    /// seconds), in arrival order, for counting a repeated event once.
    pub seen: Vec<(u64, Millis)>,
    /// Identity: the contact this visitor became, or the visitors merged in.
    pub links: Links,
    /// Event time of the event that set the contact's account (0: none):
    /// the account is the latest by event time, so an older event naming
    /// another account, arriving late, does not move the contact.
    pub account_at: Millis,
}

/// What ties a contact to others by identity ([`merge_visitor`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Links {
    /// The contact this anonymous visitor identified as: its later events
    /// count there (a visitor with `into` set holds nothing else).
    pub into: Option<String>,
    /// Each visitor merged into this contact (its id) with the input offset
    /// of the latest record applied from it: records from one visitor arrive
    /// in its partition's offset order, so one at or below it is a repeat.
    /// An erasure of the contact erases these visitors too.
    pub from: Vec<(String, i64)>,
}

impl Links {
    /// Whether there is nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.into.is_none() && self.from.is_empty()
    }

    /// Records a record read at `offset` under the visitor `anonymous_id`
    /// and says whether it was applied already.
    pub fn seen_before(&mut self, anonymous_id: &str, offset: i64) -> bool {
        match self.from.iter_mut().find(|(x, _)| x == anonymous_id) {
            Some((_, o)) if *o >= offset => true,
            Some((_, o)) => {
                *o = offset;
                false
            }
            None => {
                self.from.push((anonymous_id.to_string(), offset));
                false
            }
        }
    }
}

impl ContactState {
    /// An empty state for a rule set of `models` models.
    pub fn new(models: usize) -> Self {
        Self {
            profile: BTreeMap::new(),
            models: vec![None; models],
            seen: Vec::new(),
            links: Links::default(),
            account_at: 0,
        }
    }

    /// Records `event_id`, arrived at `arrived_ms`, as applied and says
    /// whether it was applied already: a repeat (a producer's retry, a
    /// replayed export) is counted once if it arrives within `window_ms` of
    /// arrival time of the original, whatever its event time. At most `max`
    /// ids are remembered: the latest to arrive (in arrival order, so the
    /// choice does not depend on clock ties).
    pub fn seen_before(&mut self, event_id: &str, arrived_ms: Millis, window_ms: Millis, max: usize) -> bool {
        if event_id.is_empty() || max == 0 {
            return false;
        }
        let h = event_hash(event_id);
        if self.seen.iter().any(|(x, _)| *x == h) {
            return true;
        }
        // Kept to the second: the window is a day, and the state stores
        // seconds.
        self.seen.push((h, arrived_ms - arrived_ms.rem_euclid(1000)));
        let cutoff = arrived_ms.saturating_sub(window_ms);
        self.seen.retain(|(_, t)| *t >= cutoff);
        if self.seen.len() > max {
            let excess = self.seen.len() - max;
            self.seen.drain(..excess);
        }
        false
    }

    /// Whether the state holds nothing but event ids: no score in any model
    /// and no kept profile attribute. Such a contact's repeats change
    /// nothing, so it need not remember its event ids either.
    pub fn is_blank(&self) -> bool {
        self.profile.is_empty() && self.models.iter().all(Option::is_none) && self.links.is_empty()
    }

    /// The current profile attributes.
    pub fn attributes(&self) -> BTreeMap<String, String> {
        self.profile.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect()
    }
}

/// A stable hash of an event id (FNV-1a, folded), for the repeat check.
/// Kept to its low 48 bits, the width the stored state holds (so the ids
/// stored by earlier versions, all 64 bits, still match once cut).
pub fn event_hash(event_id: &str) -> u64 {
    let h = event_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    h & EVENT_HASH_MASK
}

/// The bits of an event id hash that are kept.
pub const EVENT_HASH_MASK: u64 = (1 << 48) - 1;

/// Which way a tier crossing went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Into a higher tier.
    Heated,
    /// Into a lower tier.
    Cooled,
}

impl Direction {
    /// Lower-case name, for ids, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Heated => "heated",
            Self::Cooled => "cooled",
        }
    }
}

/// A tier crossing found while applying an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    /// Index of the model in the rule set.
    pub model: usize,
    /// Up or down.
    pub direction: Direction,
    /// Tier index left.
    pub from: usize,
    /// Tier index entered.
    pub to: usize,
    /// Score at `at_ms`.
    pub score: f64,
    /// The threshold crossed: the entered tier's `enter` when heating, the
    /// `exit` of the tier above the entered one when cooling.
    pub threshold: f64,
    /// When it crossed (event time, or the exact decay time for cooling).
    pub at_ms: Millis,
    /// True when an event caused it; false when decay did.
    pub by_event: bool,
    /// The largest contributions at `at_ms`.
    pub top_contributions: Vec<(String, f64)>,
}

/// Applies one event at `at_ms` to a contact: updates the profile, adds the
/// points of every model's matching rules (within their caps) or of a
/// manual adjustment (see the module docs), re-scores fit, and returns the
/// tier crossings, in time order.
///
/// Cooling that happened by decay since the contact's previous event is
/// reported at the exact time the score fell below the exit threshold.
pub fn apply_event(
    rules: &RuleSet,
    contact: &mut ContactState,
    event: &InteractionEvent,
    at_ms: Millis,
) -> Vec<Crossing> {
    contact.models.resize(rules.models.len(), None);
    if let Some(Interaction::ProfileUpdate(p)) = &event.interaction {
        for (k, v) in p.attributes.iter().filter(|(k, _)| rules.keeps(k)) {
            set_attribute(&mut contact.profile, k, v, at_ms);
        }
    }
    let attributes =
        if rules.models.iter().any(|m| !m.fit.is_empty()) { contact.attributes() } else { BTreeMap::new() };
    let adjustment = match &event.interaction {
        Some(Interaction::Adjustment(a)) => Some(a),
        _ => None,
    };
    let mut crossings = Vec::new();
    // Phase 1: every model's score moves to the event time and takes its points.
    for (i, model) in rules.models.iter().enumerate() {
        let fit: BTreeMap<String, f64> = if model.fit.is_empty() {
            BTreeMap::new()
        } else {
            model.fit_parts(&attributes).into_iter().map(|(k, p)| (k.to_string(), p)).collect()
        };
        let mut matched = model.matches(event).peekable();
        let adjustment = adjustment.filter(|a| a.model == model.name);
        let slot = &mut contact.models[i];
        if slot.is_none() && matched.peek().is_none() && fit.is_empty() && adjustment.is_none_or(|a| a.points == 0.0) {
            continue;
        }
        let st = slot.get_or_insert_with(|| ModelState::new(at_ms));
        crossings.extend(advance(i, model, st, at_ms));
        let factor = if at_ms >= st.at_ms { 1.0 } else { decay_factor(st.at_ms - at_ms, model.half_life_secs) };
        if let Some(a) = adjustment {
            adjust(st, a, factor);
        }
        for rule in matched {
            let p = capped_points(rule, st, at_ms);
            if p != 0.0 {
                st.score += p * factor;
                match st.contributions.get_mut(&rule.id) {
                    Some(c) => *c += p * factor,
                    None => {
                        st.contributions.insert(rule.id.clone(), p * factor);
                    }
                }
            }
        }
        st.fit = fit;
    }
    judge(rules, contact, at_ms, &mut crossings);
    crossings
}

/// Sets a profile attribute learned at `at_ms`, unless a later value is
/// known (at one time, the greater value wins, so order does not matter).
fn set_attribute(profile: &mut BTreeMap<String, (String, Millis)>, k: &str, v: &str, at_ms: Millis) {
    let newer = profile.get(k).is_none_or(|(old, t)| *t < at_ms || (*t == at_ms && old.as_str() <= v));
    if newer {
        profile.insert(k.to_string(), (v.to_string(), at_ms));
    }
}

/// Judges every model's tier at `at_ms` (or its state's later time), with
/// every model's score known: what follows an event or a merge.
fn judge(rules: &RuleSet, contact: &mut ContactState, at_ms: Millis, crossings: &mut Vec<Crossing>) {
    let totals: Vec<Option<f64>> = contact
        .models
        .iter()
        .zip(&rules.models)
        .map(|(s, m)| s.as_ref().map(|s| s.score_at(at_ms, m.half_life_secs)))
        .collect();
    for (i, model) in rules.models.iter().enumerate() {
        let Some(st) = contact.models[i].as_mut() else { continue };
        let when = st.at_ms.max(at_ms).max(st.settled_ms);
        let total = st.score_at(when, model.half_life_secs);
        let other = |m: usize| totals[m].unwrap_or(0.0);
        let from = st.tier;
        let up = tier_up(model, from, total, &other);
        let (to, direction, threshold) = if up > from {
            (up, Direction::Heated, model.tiers[up - 1].enter)
        } else {
            let down = tier_down(model, from, total, &other);
            if down == from {
                continue;
            }
            (down, Direction::Cooled, model.tiers[down].exit)
        };
        st.tier = to;
        if direction == Direction::Heated {
            let tier = &model.tiers[to - 1];
            let last = st.alerted.get(&tier.name).copied();
            if let (Some(cooldown), Some(last)) = (tier.cooldown_ms, last) {
                if when - last < cooldown {
                    continue;
                }
            }
            st.alerted.insert(tier.name.clone(), when);
        }
        crossings.push(Crossing {
            model: i,
            direction,
            from,
            to,
            score: total,
            threshold,
            at_ms: when,
            by_event: true,
            top_contributions: top(st.explain(when, model.half_life_secs)),
        });
    }
}

/// Merges an identified visitor's state `from` into the contact `into` at
/// `at_ms` (the identify's time), and returns the contact's crossings.
///
/// The merged score is the score both histories give together: each
/// model's behaviour parts add with exact decay (as late events do), so the
/// result equals scoring every event of both under the contact's id. A
/// `once` rule both used counts once (the earlier hit stays: of two equal
/// points, the one decayed more). A capped rule both used in the same
/// window counts both uses toward its cap from then on; each history's
/// points were already within its own cap. Profile attributes keep the
/// later value; event ids are remembered from both (the latest `max_ids`),
/// so a repeat of either's event counts once. Tiers are the contact's,
/// judged again with the merged score, so merging a hot visitor into a cold
/// contact raises the contact's HEATED alert; the visitor's own tiers and
/// cooldowns do not carry over.
pub fn merge_visitor(
    rules: &RuleSet,
    into: &mut ContactState,
    from: ContactState,
    at_ms: Millis,
    max_ids: usize,
) -> Vec<Crossing> {
    into.models.resize(rules.models.len(), None);
    for (k, (v, t)) in &from.profile {
        if rules.keeps(k) {
            set_attribute(&mut into.profile, k, v, *t);
        }
    }
    if max_ids > 0 {
        let mut seen = std::mem::take(&mut into.seen);
        for (h, t) in &from.seen {
            if !seen.iter().any(|(x, _)| x == h) {
                seen.push((*h, *t));
            }
        }
        seen.sort_by_key(|(_, t)| *t);
        let excess = seen.len().saturating_sub(max_ids);
        seen.drain(..excess);
        into.seen = seen;
    }
    for (h, o) in from.links.from {
        match into.links.from.iter_mut().find(|(x, _)| *x == h) {
            Some((_, mine)) => *mine = (*mine).max(o),
            None => into.links.from.push((h, o)),
        }
    }
    let attributes = into.attributes();
    let mut crossings = Vec::new();
    let mut from_models = from.models;
    from_models.resize(rules.models.len(), None);
    for (i, (model, theirs)) in rules.models.iter().zip(from_models).enumerate() {
        let fit: BTreeMap<String, f64> =
            model.fit_parts(&attributes).into_iter().map(|(k, p)| (k.to_string(), p)).collect();
        let slot = &mut into.models[i];
        match (slot.as_mut(), theirs) {
            (None, None) if fit.is_empty() => continue,
            (None, None) => *slot = Some(ModelState::new(at_ms)),
            (Some(_), None) => {}
            (None, Some(a)) => {
                // The visitor's path through the tiers is not the contact's.
                *slot = Some(ModelState { tier: 0, alerted: BTreeMap::new(), settled_ms: 0, ..a });
            }
            (Some(x), Some(a)) => {
                let t = x.at_ms.max(a.at_ms);
                crossings.extend(advance(i, model, x, t));
                let fa = decay_factor(t - a.at_ms, model.half_life_secs);
                x.score += a.score * fa;
                for (rule, c) in &a.contributions {
                    *x.contributions.entry(rule.clone()).or_insert(0.0) += c * fa;
                }
                for (rule, ua) in a.caps {
                    let Some(ux) = x.caps.get_mut(&rule) else {
                        x.caps.insert(rule, ua);
                        continue;
                    };
                    let both_once = ua.window == ONCE_WINDOW && ux.window == ONCE_WINDOW;
                    if both_once && ua.hits > 0 && ux.hits > 0 {
                        // Counted once: drop the later hit, the one decayed
                        // less.
                        let theirs = a.contributions.get(&rule).copied().unwrap_or(0.0) * fa;
                        let total = x.contributions.get(&rule).copied().unwrap_or(0.0);
                        let mine = total - theirs;
                        let later = if theirs.abs() >= mine.abs() { theirs } else { mine };
                        x.score -= later;
                        x.contributions.insert(rule, total - later);
                    } else if ua.window == ux.window {
                        *ux = CapUse { hits: ux.hits + ua.hits, points: ux.points + ua.points, ..*ux };
                    } else if same_kind(ux.window, ua.window) && ua.window > ux.window {
                        *ux = ua;
                    }
                }
            }
        }
        if let Some(st) = slot.as_mut() {
            st.fit = fit;
        }
    }
    judge(rules, into, at_ms, &mut crossings);
    crossings
}

/// The contribution id under which an adjustment with this reason shows
/// in the breakdown: `adjustment:<reason>` (no rule id has a `:`).
pub fn adjustment_id(reason: &str) -> String {
    format!("adjustment:{reason}")
}

/// Applies a manual adjustment to a model's state already moved to the
/// event's time (see the module docs): a reset zeroes the behaviour score
/// and every contribution at the state's time, then the points are added,
/// times `factor` (the decay from the event's time to the state's, 1 unless
/// the event is late).
fn adjust(st: &mut ModelState, a: &Adjustment, factor: f64) {
    if a.reset {
        st.score = 0.0;
        st.contributions.clear();
    }
    if a.points != 0.0 {
        let p = a.points * factor;
        st.score += p;
        *st.contributions.entry(adjustment_id(&a.reason)).or_insert(0.0) += p;
    }
}

/// When decay alone takes the score below the current tier's exit: the
/// exact time, or `None` when it never does (base tier, or fit alone holds
/// the tier).
pub fn cooling_due(model: &Model, st: &ModelState) -> Option<Millis> {
    if st.tier == 0 {
        return None;
    }
    let behaviour_at_exit = model.tiers[st.tier - 1].exit - st.fit_total();
    if behaviour_at_exit <= 0.0 {
        return None;
    }
    if st.score < behaviour_at_exit {
        return Some(st.at_ms);
    }
    let dt_ms = (model.half_life_secs * (st.score / behaviour_at_exit).log2() * 1000.0).ceil() as Millis;
    Some(st.at_ms + dt_ms.max(0))
}

/// Reports (and applies to the tier) cooling by decay up to `now_ms`,
/// without moving the state's score or time: what a sweep does between
/// events. The crossing is dated to the exact moment decay crossed the exit.
pub fn cool(index: usize, model: &Model, st: &mut ModelState, now_ms: Millis) -> Option<Crossing> {
    let h = model.half_life_secs;
    let fit = st.fit_total();
    let decayed = st.behaviour_at(now_ms, h) + fit;
    // Requirements on other models are checked at events, not during decay.
    let to = tier_down(model, st.tier, decayed, &|_| f64::INFINITY);
    if to >= st.tier {
        return None;
    }
    let threshold = model.tiers[to].exit; // exit of tier `to + 1`
    let behaviour_at_threshold = threshold - fit;
    let crossed = if st.score > 0.0 && behaviour_at_threshold > 0.0 {
        let dt_ms = (h * (st.score / behaviour_at_threshold).log2() * 1000.0).ceil() as Millis;
        (st.at_ms + dt_ms.max(0)).min(now_ms.max(st.at_ms))
    } else {
        st.at_ms
    };
    let c = Crossing {
        model: index,
        direction: Direction::Cooled,
        from: st.tier,
        to,
        score: st.score_at(crossed, h),
        threshold,
        at_ms: crossed,
        by_event: false,
        top_contributions: top(st.explain(crossed, h)),
    };
    st.tier = to;
    Some(c)
}

/// What a sweep does between events: [`cool`], with the tier it leaves
/// settled up to the crossing.
pub fn cool_by_sweep(index: usize, model: &Model, st: &mut ModelState, now_ms: Millis) -> Option<Crossing> {
    let c = cool(index, model, st, now_ms)?;
    st.settled_ms = st.settled_ms.max(c.at_ms);
    Some(c)
}

/// Decays a model's state to `at_ms` (if later) and reports cooling that
/// happened on the way, at its exact time.
fn advance(index: usize, model: &Model, st: &mut ModelState, at_ms: Millis) -> Option<Crossing> {
    if at_ms <= st.at_ms {
        return None;
    }
    let crossing = cool(index, model, st, at_ms);
    let f = decay_factor(at_ms - st.at_ms, model.half_life_secs);
    st.score *= f;
    for c in st.contributions.values_mut() {
        *c *= f;
    }
    st.at_ms = at_ms;
    crossing
}

/// The points a matching rule adds at `at_ms`, given its cap or `once`, and
/// the cap use updated.
fn capped_points(rule: &Rule, st: &mut ModelState, at_ms: Millis) -> f64 {
    let window = match (rule.once, rule.cap) {
        (true, _) => ONCE_WINDOW,
        (false, Some(cap)) => window_id(cap.per, at_ms),
        (false, None) => return rule.points,
    };
    let used = st.caps.entry(rule.id.clone()).or_insert(CapUse { window, hits: 0, points: 0.0 });
    if !same_kind(used.window, window) {
        // The rule's window changed (per: day -> week, or cap <-> once):
        // its count starts afresh.
        *used = CapUse { window, hits: 0, points: 0.0 };
    } else if used.window < window {
        *used = CapUse { window, hits: 0, points: 0.0 };
    } else if used.window > window {
        // A late event in a window already closed: its cap use is no longer
        // known, so it does not count.
        return 0.0;
    }
    let p = match (rule.once, rule.cap.map(|c| c.limit)) {
        (true, _) if used.hits >= 1 => 0.0,
        (false, Some(CapLimit::Hits(n))) if used.hits >= n => 0.0,
        (false, Some(CapLimit::Points(n))) => rule.points.signum() * rule.points.abs().min((n - used.points).max(0.0)),
        _ => rule.points,
    };
    if p != 0.0 {
        used.hits += 1;
        used.points += p.abs();
    }
    p
}

/// Bits above which a cap window id keeps its kind (day, week, month).
const WINDOW_KIND_SHIFT: u32 = 40;

/// A cap window's id: its kind (day 1, week 2, month 3) above
/// [`WINDOW_KIND_SHIFT`] and its index below, so ids of one kind grow with
/// time and ids of different kinds never compare as the same window.
pub fn window_id(per: crate::rules::Window, at_ms: Millis) -> i64 {
    let kind = match per {
        crate::rules::Window::Day => 1,
        crate::rules::Window::Week => 2,
        crate::rules::Window::Month => 3,
    };
    (kind << WINDOW_KIND_SHIFT) | per.index(at_ms)
}

/// Whether a stored cap window and the current one are of one kind. A
/// stored id without a kind (written before kinds were kept) counts as the
/// current kind.
fn same_kind(stored: i64, current: i64) -> bool {
    if stored == ONCE_WINDOW || current == ONCE_WINDOW {
        return stored == current;
    }
    let kind = |w: i64| w >> WINDOW_KIND_SHIFT;
    kind(stored) == 0 || kind(stored) == kind(current)
}

/// Whether a tier's requirements on other models hold, at enter (`true`) or
/// at exit (`false`) thresholds.
fn requirements_hold(model: &Model, tier: usize, entering: bool, other: &dyn Fn(usize) -> f64) -> bool {
    model.tiers[tier - 1].requires.iter().all(|r| other(r.model) >= if entering { r.enter } else { r.exit })
}

/// The tier reached from `tier` by heating: every higher tier whose `enter`
/// the score reaches, with its requirements met.
fn tier_up(model: &Model, mut tier: usize, score: f64, other: &dyn Fn(usize) -> f64) -> usize {
    while tier < model.tiers.len()
        && score >= model.tiers[tier].enter
        && requirements_hold(model, tier + 1, true, other)
    {
        tier += 1;
    }
    tier
}

/// The tier reached from `tier` by cooling: down while the score is below the
/// current tier's `exit` or its requirements fall below their exits.
fn tier_down(model: &Model, mut tier: usize, score: f64, other: &dyn Fn(usize) -> f64) -> usize {
    while tier > 0 && (score < model.tiers[tier - 1].exit || !requirements_hold(model, tier, false, other)) {
        tier -= 1;
    }
    tier
}

pub fn top(mut v: Vec<(String, f64)>) -> Vec<(String, f64)> {
    v.truncate(TOP_CONTRIBUTIONS);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{FormSubmission, PageView, ProfileUpdate};
    use proptest::prelude::*;

    const DAY_MS: Millis = 86_400_000;
    const T0: Millis = 1_760_000_000_000;

    fn rules(text: &str) -> RuleSet {
        RuleSet::parse(text, "test").unwrap()
    }

    const ONE: &str = r#"
models:
  - name: m
    half_life: 1d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - { id: a, when: { kind: page_view, url: /a }, points: 10 }
      - { id: big, when: { kind: page_view, url: /big }, points: 40 }
      - { id: neg, when: { kind: page_view, url: /neg }, points: -6 }
"#;

    fn page(url: &str) -> InteractionEvent {
        InteractionEvent {
            interaction: Some(Interaction::PageView(PageView { url: url.into(), ..Default::default() })),
            ..Default::default()
        }
    }

    fn profile(pairs: &[(&str, &str)]) -> InteractionEvent {
        InteractionEvent {
            interaction: Some(Interaction::ProfileUpdate(ProfileUpdate {
                attributes: pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            })),
            ..Default::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-300)
    }

    fn score(rs: &RuleSet, c: &ContactState, m: usize, at: Millis) -> f64 {
        c.models[m].as_ref().unwrap().score_at(at, rs.models[m].half_life_secs)
    }

    #[test]
    fn points_halve_every_half_life_and_late_events_count_decayed() {
        let rs = rules(ONE);
        let mut c = ContactState::new(1);
        apply_event(&rs, &mut c, &page("/big"), T0);
        apply_event(&rs, &mut c, &page("/a"), T0 + DAY_MS);
        assert!(close(score(&rs, &c, 0, T0 + DAY_MS), 30.0));
        assert!(close(score(&rs, &c, 0, T0 + 2 * DAY_MS), 15.0));
        apply_event(&rs, &mut c, &page("/a"), T0);
        assert!(close(score(&rs, &c, 0, T0 + DAY_MS), 35.0));
    }

    #[test]
    fn heats_in_one_step_to_the_highest_tier_reached() {
        let rs = rules(ONE);
        let mut c = ContactState::new(1);
        apply_event(&rs, &mut c, &page("/big"), T0);
        let x = apply_event(&rs, &mut c, &page("/big"), T0);
        assert_eq!(x.len(), 1);
        assert_eq!((x[0].direction, x[0].from, x[0].to, x[0].threshold), (Direction::Heated, 1, 2, 60.0));
        assert_eq!(x[0].top_contributions, vec![("big".to_string(), 80.0)]);
    }

    #[test]
    fn hysteresis_holds_between_exit_and_enter() {
        let rs = rules(ONE);
        let mut c = ContactState::new(1);
        for _ in 0..3 {
            apply_event(&rs, &mut c, &page("/a"), T0);
        }
        assert_eq!(c.models[0].as_ref().unwrap().tier, 1);
        // 30 -> 24 -> 34 -> 28 -> 38: hovering around enter, never below exit.
        for url in ["/neg", "/a", "/neg", "/a"] {
            assert!(apply_event(&rs, &mut c, &page(url), T0).is_empty(), "no flapping");
        }
    }

    #[test]
    fn cooling_by_decay_is_reported_at_the_exact_crossing_time() {
        let rs = rules(ONE);
        let mut c = ContactState::new(1);
        apply_event(&rs, &mut c, &page("/big"), T0);
        apply_event(&rs, &mut c, &page("/big"), T0);
        let x = apply_event(&rs, &mut c, &page("/a"), T0 + 3 * DAY_MS);
        assert_eq!(x.len(), 1, "{x:?}");
        assert_eq!((x[0].direction, x[0].from, x[0].to, x[0].by_event), (Direction::Cooled, 2, 0, false));
        assert_eq!(x[0].threshold, 20.0);
        assert_eq!(x[0].at_ms, T0 + (86_400_000.0 * (80.0f64 / 20.0).log2()).ceil() as Millis);
        assert!((x[0].score - 20.0).abs() < 1e-6);
    }

    const CAPS: &str = r#"
models:
  - name: m
    half_life: 30d
    rules:
      - { id: view, when: { kind: page_view, url: { prefix: / } }, points: 2, cap: { hits: 3, per: day } }
      - { id: form, when: { kind: form_submission }, points: 25, cap: { points: 30, per: week } }
      - { id: signup, when: { kind: form_submission, form_id: newsletter }, points: 12, once: true }
"#;

    fn form(id: &str) -> InteractionEvent {
        InteractionEvent {
            interaction: Some(Interaction::FormSubmission(FormSubmission { form_id: id.into(), ..Default::default() })),
            ..Default::default()
        }
    }

    #[test]
    fn caps_limit_hits_points_and_once() {
        let rs = rules(CAPS);
        let mut c = ContactState::new(1);
        for _ in 0..200 {
            apply_event(&rs, &mut c, &page("/blog"), T0);
        }
        let st = c.models[0].as_ref().unwrap();
        assert_eq!(st.caps["view"].hits, 3);
        assert!(close(st.contributions["view"], 6.0), "200 views count 3 times");
        // The next day the cap starts over.
        apply_event(&rs, &mut c, &page("/blog"), T0 + DAY_MS);
        assert_eq!(c.models[0].as_ref().unwrap().caps["view"].hits, 1);
        let mut c = ContactState::new(1);
        for _ in 0..3 {
            apply_event(&rs, &mut c, &form("newsletter"), T0);
        }
        let st = c.models[0].as_ref().unwrap();
        assert!(close(st.contributions["form"], 30.0), "25 + 5 of a 30-point weekly cap");
        assert!(close(st.contributions["signup"], 12.0), "once per contact");
        // Long after, `once` still holds.
        apply_event(&rs, &mut c, &form("newsletter"), T0 + 400 * DAY_MS);
        assert_eq!(c.models[0].as_ref().unwrap().caps["signup"].hits, 1);
    }

    #[test]
    fn a_merge_remembers_each_event_id_once_in_arrival_order() {
        let rs = rules(ONE);
        let (mut visitor, mut contact) = (ContactState::new(1), ContactState::new(1));
        visitor.seen = vec![(2, 1000), (1, 2000)];
        contact.seen = vec![(2, 3000), (3, 4000)];
        merge_visitor(&rs, &mut contact, visitor, T0, 32);
        assert_eq!(contact.seen, [(1, 2000), (2, 3000), (3, 4000)]);
    }

    #[test]
    fn a_merge_counts_a_once_rule_once_keeping_the_earlier_hit() {
        let rs = rules(CAPS);
        let (mut visitor, mut contact, mut whole) = (ContactState::new(1), ContactState::new(1), ContactState::new(1));
        apply_event(&rs, &mut visitor, &form("newsletter"), T0);
        apply_event(&rs, &mut whole, &form("newsletter"), T0);
        apply_event(&rs, &mut contact, &form("newsletter"), T0 + 2 * DAY_MS);
        apply_event(&rs, &mut whole, &form("newsletter"), T0 + 2 * DAY_MS);
        merge_visitor(&rs, &mut contact, visitor, T0 + 3 * DAY_MS, 32);
        let (a, b) = (contact.models[0].as_ref().unwrap(), whole.models[0].as_ref().unwrap());
        assert!(close(a.contributions["signup"], b.contributions["signup"]), "{a:?} vs {b:?}");
        assert_eq!(a.caps["signup"].hits, 1);
        // Both used the weekly `form` cap: each within its own, the merged
        // use counts both toward it from now on.
        assert!(a.caps["form"].points >= 30.0);
        // A merge is scored into the contact's tiers: a hot visitor heats a cold contact.
        let one = rules(ONE);
        let mut hot = ContactState::new(1);
        apply_event(&one, &mut hot, &page("/big"), T0);
        apply_event(&one, &mut hot, &page("/big"), T0);
        let mut cold = ContactState::new(1);
        apply_event(&one, &mut cold, &page("/a"), T0 - DAY_MS);
        let crossings = merge_visitor(&one, &mut cold, hot, T0 + 1000, 32);
        let to: Vec<usize> = crossings.iter().map(|c| c.to).collect();
        assert_eq!(to, [2], "cold to hot at once");
        assert!(cold.links.from.is_empty(), "links are the engine's to record");
    }

    const FIT: &str = r#"
models:
  - name: engagement
    half_life: 1d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - name: sales-ready
        enter: 60
        exit: 50
        requires: { fit: 30 }
    rules:
      - { id: big, when: { kind: page_view }, points: 35 }
  - name: fit
    half_life: 1d
    tiers:
      - { name: good, enter: 30, exit: 30 }
    fit:
      - { id: manager, when: { job_title: { regex: (?i)manager } }, points: 10 }
      - { id: founder, when: { job_title: Founder }, points: 20 }
      - { id: tech, when: { industry: [software, technology] }, points: 15 }
"#;

    #[test]
    fn fit_follows_the_current_profile_and_does_not_decay() {
        let rs = rules(FIT);
        let mut c = ContactState::new(2);
        apply_event(&rs, &mut c, &profile(&[("job_title", "Sales Manager"), ("industry", "software")]), T0);
        assert!(close(score(&rs, &c, 1, T0 + 100 * DAY_MS), 25.0), "fit does not decay");
        apply_event(&rs, &mut c, &profile(&[("job_title", "Founder")]), T0 + DAY_MS);
        let st = c.models[1].as_ref().unwrap();
        assert_eq!(st.fit.keys().collect::<Vec<_>>(), ["founder", "tech"], "the manager points are gone");
        assert_eq!(st.tier, 1);
        // An older profile fact arriving late does not win over a newer one.
        apply_event(&rs, &mut c, &profile(&[("job_title", "Sales Manager")]), T0);
        assert!(close(score(&rs, &c, 1, T0 + DAY_MS), 35.0));
    }

    #[test]
    fn a_cross_model_tier_needs_both_models() {
        let rs = rules(FIT);
        let mut c = ContactState::new(2);
        apply_event(&rs, &mut c, &page("/x"), T0);
        let x = apply_event(&rs, &mut c, &page("/x"), T0);
        assert_eq!(c.models[0].as_ref().unwrap().tier, 1, "70 points but fit is 0: warm only");
        assert!(x.is_empty());
        let x = apply_event(&rs, &mut c, &profile(&[("job_title", "Founder"), ("industry", "software")]), T0 + 1);
        let names: Vec<(&str, &str)> =
            x.iter().map(|c| (rs.models[c.model].name.as_str(), rs.models[c.model].tier_name(c.to))).collect();
        assert_eq!(names, [("engagement", "sales-ready"), ("fit", "good")]);
        // Losing fit drops sales-ready back to warm.
        let x = apply_event(&rs, &mut c, &profile(&[("job_title", "Student"), ("industry", "retail")]), T0 + 2);
        assert!(x.iter().any(|c| c.model == 0 && c.direction == Direction::Cooled && c.to == 1), "{x:?}");
    }

    #[test]
    fn cooldown_suppresses_a_repeat_alert_into_a_tier() {
        let rs = rules(
            &ONE.replace("{ name: warm, enter: 30, exit: 20 }", "{ name: warm, enter: 30, exit: 20, cooldown: 2d }"),
        );
        let mut c = ContactState::new(1);
        let mut alerts = 0;
        // Warm, cool by decay, warm again a day later: the second is suppressed.
        for (url, at) in
            [("/a", T0), ("/a", T0), ("/a", T0), ("/a", T0 + DAY_MS), ("/a", T0 + DAY_MS), ("/a", T0 + DAY_MS)]
        {
            alerts +=
                apply_event(&rs, &mut c, &page(url), at).iter().filter(|x| x.direction == Direction::Heated).count();
        }
        assert_eq!(alerts, 1);
        assert_eq!(c.models[0].as_ref().unwrap().tier, 1, "the tier is still tracked");
    }

    #[test]
    fn a_sweep_cools_at_the_exact_time_and_only_once() {
        let rs = rules(ONE);
        let m = &rs.models[0];
        let mut c = ContactState::new(1);
        apply_event(&rs, &mut c, &page("/big"), T0);
        let st = c.models[0].as_mut().unwrap();
        let due = cooling_due(m, st).unwrap();
        assert_eq!(due, T0 + (86_400_000.0 * (40.0f64 / 20.0).log2()).ceil() as Millis);
        assert!(cool(0, m, st, due - 1).is_none(), "not before it is due");
        let x = cool(0, m, st, due + 5 * DAY_MS).unwrap();
        assert_eq!((x.at_ms, x.from, x.to, x.by_event), (due, 1, 0, false));
        assert_eq!((st.at_ms, st.score), (T0, 40.0), "a sweep does not move the score or its time");
        assert!(cool(0, m, st, due + 6 * DAY_MS).is_none(), "once");
        assert_eq!(cooling_due(m, st), None);
        // The next event finds the tier already cooled: no second alert.
        assert!(apply_event(&rs, &mut c, &page("/a"), T0 + 3 * DAY_MS).is_empty());
    }

    #[test]
    fn a_repeated_event_id_counts_once_within_the_window() {
        let mut c = ContactState::new(1);
        assert!(!c.seen_before("e1", T0, DAY_MS, 8));
        assert!(c.seen_before("e1", T0 + 5, DAY_MS, 8), "a repeat");
        assert!(c.seen_before("e1", T0 - DAY_MS / 2, DAY_MS, 8), "a repeat, whatever its stated time");
        assert!(!c.seen_before("", T0, DAY_MS, 8), "events without an id are never repeats");
        assert!(!c.seen_before("", T0, DAY_MS, 8));
        // Arriving two days later, e1 has left the window.
        assert!(!c.seen_before("e2", T0 + 2 * DAY_MS, DAY_MS, 8));
        assert!(!c.seen_before("e1", T0 + 2 * DAY_MS, DAY_MS, 8));
        // At most `max` ids are kept: the last to arrive, even at one instant.
        for i in 0..20 {
            c.seen_before(&format!("x{i}"), T0 + 3 * DAY_MS, DAY_MS, 8);
        }
        assert_eq!(c.seen.len(), 8);
        assert!(c.seen_before("x19", T0 + 3 * DAY_MS, DAY_MS, 8));
        assert!(c.seen_before("x12", T0 + 3 * DAY_MS, DAY_MS, 8));
        assert!(!c.seen_before("x11", T0 + 3 * DAY_MS, DAY_MS, 8));
    }

    #[test]
    fn leaderboard_order_is_current_score_order() {
        let m = &rules(ONE).models[0];
        let a = ModelState { score: 50.0, at_ms: T0, ..ModelState::default() };
        let b = ModelState { score: 30.0, at_ms: T0 + DAY_MS, ..ModelState::default() };
        assert!(b.leaderboard_score(m).unwrap() > a.leaderboard_score(m).unwrap());
        let z = b.leaderboard_score(m).unwrap();
        let now = T0 + 3 * DAY_MS;
        let value = (z - (now - LEADERBOARD_EPOCH_MS) as f64 / 1000.0 / m.half_life_secs).exp2();
        assert!(close(value, b.score_at(now, m.half_life_secs)));
    }

    fn adjustment(model: &str, points: f64, reason: &str, reset: bool) -> InteractionEvent {
        InteractionEvent {
            interaction: Some(Interaction::Adjustment(Adjustment {
                model: model.into(),
                points,
                reason: reason.into(),
                by: "jane@sales".into(),
                reset,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn an_adjustment_adds_points_that_decay_like_a_rules() {
        let rs = rules(ONE);
        let mut c = ContactState::new(1);
        apply_event(&rs, &mut c, &page("/a"), T0);
        apply_event(&rs, &mut c, &adjustment("m", 15.0, "met at trade show", false), T0 + DAY_MS);
        assert!(close(score(&rs, &c, 0, T0 + DAY_MS), 5.0 + 15.0));
        assert!(close(score(&rs, &c, 0, T0 + 2 * DAY_MS), 10.0));
        let st = c.models[0].as_ref().unwrap();
        let parts = st.explain(T0 + 2 * DAY_MS, 86_400.0);
        assert_eq!(parts[0].0, "adjustment:met at trade show");
        assert!(close(parts[0].1, 7.5));
        // A late one is added decayed to the state's time, like a late rule.
        apply_event(&rs, &mut c, &adjustment("m", 8.0, "met at trade show", false), T0);
        assert!(close(score(&rs, &c, 0, T0 + DAY_MS), 5.0 + 15.0 + 4.0));
        let st = c.models[0].as_ref().unwrap();
        assert!(close(st.contributions["adjustment:met at trade show"], 19.0), "one reason, one share");
        assert_eq!(st.at_ms, T0 + DAY_MS);
    }

    #[test]
    fn an_adjustment_ignores_caps_and_once_and_counts_no_rule() {
        let rs = rules(CAPS);
        let mut c = ContactState::new(1);
        for _ in 0..5 {
            apply_event(&rs, &mut c, &adjustment("m", 25.0, "call", false), T0);
        }
        let st = c.models[0].as_ref().unwrap();
        assert!(close(st.score, 125.0));
        assert!(st.caps.is_empty(), "no cap or once use");
        assert_eq!(st.contributions.keys().collect::<Vec<_>>(), ["adjustment:call"]);
    }

    #[test]
    fn an_adjustment_of_a_model_not_in_the_rules_changes_nothing() {
        let rs = rules(ONE);
        let mut c = ContactState::new(1);
        assert!(apply_event(&rs, &mut c, &adjustment("gone", 50.0, "x", false), T0).is_empty());
        assert!(c.is_blank(), "no state made for it");
        apply_event(&rs, &mut c, &page("/a"), T0);
        let before = c.clone();
        apply_event(&rs, &mut c, &adjustment("gone", 50.0, "x", true), T0);
        assert_eq!(c, before);
        // A reset with nothing to reset and no points makes no state either.
        let mut c = ContactState::new(1);
        apply_event(&rs, &mut c, &adjustment("m", 0.0, "x", true), T0);
        assert!(c.is_blank());
    }

    #[test]
    fn an_adjustment_heats_and_a_reset_cools_at_once() {
        let rs = rules(ONE);
        let mut c = ContactState::new(1);
        apply_event(&rs, &mut c, &page("/a"), T0);
        let x = apply_event(&rs, &mut c, &adjustment("m", 55.0, "met at trade show", false), T0);
        assert_eq!(x.len(), 1);
        assert_eq!((x[0].direction, x[0].from, x[0].to, x[0].by_event), (Direction::Heated, 0, 2, true));
        assert_eq!(x[0].top_contributions[0], ("adjustment:met at trade show".to_string(), 55.0));
        let x = apply_event(&rs, &mut c, &adjustment("m", 0.0, "wrong contact", true), T0 + 1000);
        assert_eq!(x.len(), 1);
        assert_eq!((x[0].direction, x[0].from, x[0].to, x[0].by_event), (Direction::Cooled, 2, 0, true));
        assert_eq!((x[0].score, x[0].at_ms), (0.0, T0 + 1000));
        let st = c.models[0].as_ref().unwrap();
        assert_eq!((st.score, st.tier), (0.0, 0));
        assert!(st.contributions.is_empty());
        assert!(st.explain(T0 + DAY_MS, 86_400.0).is_empty());
    }

    #[test]
    fn a_reset_keeps_fit_and_sets_the_behaviour_part_to_its_points() {
        let rs = rules(FIT);
        let mut c = ContactState::new(2);
        apply_event(&rs, &mut c, &profile(&[("job_title", "Founder"), ("industry", "software")]), T0);
        apply_event(&rs, &mut c, &page("/x"), T0);
        // The fit model has fit parts; a reset of it leaves them.
        apply_event(&rs, &mut c, &adjustment("fit", 10.0, "x", false), T0);
        apply_event(&rs, &mut c, &adjustment("fit", 0.0, "back to the profile", true), T0 + DAY_MS);
        assert!(close(score(&rs, &c, 1, T0 + DAY_MS), 35.0));
        assert_eq!(c.models[1].as_ref().unwrap().tier, 1, "good fit stays");
        // Reset with points: the behaviour part is those points from then on.
        apply_event(&rs, &mut c, &adjustment("engagement", 20.0, "rep's estimate", true), T0 + DAY_MS);
        let st = c.models[0].as_ref().unwrap();
        assert_eq!((st.score, st.at_ms), (20.0, T0 + DAY_MS));
        assert_eq!(st.contributions.keys().collect::<Vec<_>>(), ["adjustment:rep's estimate"]);
    }

    #[test]
    fn a_late_reset_applies_at_the_states_time() {
        let rs = rules(ONE);
        let mut c = ContactState::new(1);
        apply_event(&rs, &mut c, &page("/big"), T0);
        apply_event(&rs, &mut c, &page("/a"), T0 + 2 * DAY_MS);
        // Dated a day before the latest event: it zeroes that event's points too.
        apply_event(&rs, &mut c, &adjustment("m", 8.0, "reset", true), T0 + DAY_MS);
        let st = c.models[0].as_ref().unwrap();
        assert_eq!(st.at_ms, T0 + 2 * DAY_MS, "the state keeps its time");
        assert!(close(st.score, 4.0), "its points dated at its own time: 8 a day before");
        assert_eq!(st.contributions.len(), 1);
    }

    proptest! {
        /// Any permutation and any batching (state round-tripped through its
        /// stored form between batches) gives the same score.
        #[test]
        fn score_is_independent_of_order_and_batching(
            events in prop::collection::vec((0i64..30 * DAY_MS, 0usize..3), 1..40),
            seed in any::<u64>(),
            cuts in prop::collection::vec(any::<bool>(), 40),
        ) {
            let rs = rules(ONE);
            let urls = ["/a", "/big", "/neg"];
            let run = |order: &[(i64, usize)], cut: &[bool]| {
                let mut c = ContactState::new(1);
                for (i, (t, u)) in order.iter().enumerate() {
                    apply_event(&rs, &mut c, &page(urls[*u]), T0 + t);
                    if cut[i % cut.len()] {
                        c = crate::store::round_trip(&rs, &c);
                    }
                }
                c.models[0].clone().unwrap()
            };
            let base = run(&events, &[false]);
            let mut shuffled = events.clone();
            let mut x = seed;
            for i in (1..shuffled.len()).rev() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (x >> 33) as usize % (i + 1));
            }
            let other = run(&shuffled, &cuts);
            prop_assert_eq!(base.at_ms, other.at_ms);
            let scale = 50.0 * events.len() as f64;
            prop_assert!((base.score - other.score).abs() <= 1e-9 * scale, "{} vs {}", base.score, other.score);
        }

        /// A visitor's events split from a contact's and merged at the
        /// end give the score and breakdown of all the events under one id,
        /// whatever the split and order.
        #[test]
        fn a_merged_visitor_scores_as_one_history(
            events in prop::collection::vec((0i64..30 * DAY_MS, 0usize..3, any::<bool>()), 1..40),
            identify_at in 0i64..40 * DAY_MS,
        ) {
            let rs = rules(ONE);
            let urls = ["/a", "/big", "/neg"];
            let (mut visitor, mut contact, mut whole) = (ContactState::new(1), ContactState::new(1), ContactState::new(1));
            for (t, u, anonymous) in &events {
                let target = if *anonymous { &mut visitor } else { &mut contact };
                apply_event(&rs, target, &page(urls[*u]), T0 + t);
                apply_event(&rs, &mut whole, &page(urls[*u]), T0 + t);
            }
            merge_visitor(&rs, &mut contact, visitor, T0 + identify_at, 32);
            let (a, b) = (contact.models[0].clone().unwrap(), whole.models[0].clone().unwrap());
            let scale = 50.0 * events.len() as f64;
            let now = T0 + 41 * DAY_MS;
            prop_assert!((a.score_at(now, 86_400.0) - b.score_at(now, 86_400.0)).abs() <= 1e-9 * scale);
            for ((ka, va), (kb, vb)) in a.explain(now, 86_400.0).iter().zip(b.explain(now, 86_400.0).iter()) {
                prop_assert_eq!(ka, kb);
                prop_assert!((va - vb).abs() <= 1e-9 * scale);
            }
        }

        /// Adjustments mixed with rule events (any reasons, signs, times):
        /// any permutation and batching gives the same score, exactly as
        /// for rule points.
        #[test]
        fn adjustments_are_independent_of_order_and_batching(
            events in prop::collection::vec((0i64..30 * DAY_MS, 0usize..6, -500i32..500), 1..40),
            seed in any::<u64>(),
            cuts in prop::collection::vec(any::<bool>(), 40),
        ) {
            let rs = rules(ONE);
            let event = |k: usize, p: i32| match k {
                0 => page("/a"),
                1 => page("/big"),
                2 => page("/neg"),
                3 => adjustment("m", f64::from(p) / 10.0, "met at trade show", false),
                4 => adjustment("m", f64::from(p), "call", false),
                _ => adjustment("other", f64::from(p), "x", false),
            };
            let run = |order: &[(i64, usize, i32)], cut: &[bool]| {
                let mut c = ContactState::new(1);
                for (i, (t, k, p)) in order.iter().enumerate() {
                    apply_event(&rs, &mut c, &event(*k, *p), T0 + t);
                    if cut[i % cut.len()] {
                        c = crate::store::round_trip(&rs, &c);
                    }
                }
                c.models[0].clone()
            };
            let base = run(&events, &[false]);
            let mut shuffled = events.clone();
            let mut x = seed;
            for i in (1..shuffled.len()).rev() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (x >> 33) as usize % (i + 1));
            }
            let other = run(&shuffled, &cuts);
            prop_assert_eq!(base.is_some(), other.is_some());
            if let (Some(base), Some(other)) = (base, other) {
                // Compared at one moment after every event: an event that
                // matches nothing (here, of a model not in the rules) moves
                // an existing state's time, as any such event does.
                let now = T0 + 30 * DAY_MS;
                let scale = 500.0 * events.len() as f64;
                let (b, o) = (base.score_at(now, 86_400.0), other.score_at(now, 86_400.0));
                prop_assert!((b - o).abs() <= 1e-9 * scale, "{} vs {}", b, o);
                let parts = |st: &ModelState| -> BTreeMap<String, f64> { st.explain(now, 86_400.0).into_iter().collect() };
                let (bp, op) = (parts(&base), parts(&other));
                for (k, v) in &bp {
                    let o = op.get(k).copied().unwrap_or(0.0);
                    prop_assert!((v - o).abs() <= 1e-9 * scale, "{}: {} vs {}", k, v, o);
                }
            }
        }

        /// A reset forgets the behaviour points of every event that arrived
        /// before it, whatever their times; the events that arrive after it
        /// count as they would on a fresh contact.
        #[test]
        fn after_a_reset_only_later_arrivals_count(
            before in prop::collection::vec((0i64..30 * DAY_MS, 0usize..4), 0..20),
            reset_at in 0i64..30 * DAY_MS,
            after in prop::collection::vec((0i64..30 * DAY_MS, 0usize..4), 0..20),
            later in 0i64..10 * DAY_MS,
        ) {
            let rs = rules(ONE);
            let event = |k: usize| match k {
                0 => page("/a"),
                1 => page("/big"),
                2 => page("/neg"),
                _ => adjustment("m", 12.5, "call", false),
            };
            let mut c = ContactState::new(1);
            for (t, k) in &before {
                apply_event(&rs, &mut c, &event(*k), T0 + t);
            }
            apply_event(&rs, &mut c, &adjustment("m", 0.0, "start over", true), T0 + reset_at);
            let mut fresh = ContactState::new(1);
            for (t, k) in &after {
                apply_event(&rs, &mut c, &event(*k), T0 + t);
                apply_event(&rs, &mut fresh, &event(*k), T0 + t);
            }
            let now = T0 + 30 * DAY_MS + later;
            let got = c.models[0].as_ref().map_or(0.0, |st| st.score_at(now, 86_400.0));
            let want = fresh.models[0].as_ref().map_or(0.0, |st| st.score_at(now, 86_400.0));
            prop_assert!((got - want).abs() <= 1e-9 * 50.0 * (after.len() + 1) as f64, "{} vs {}", got, want);
        }

        /// The explanation's parts sum to the score at any time.
        #[test]
        fn explanation_parts_sum_to_the_score(
            events in prop::collection::vec((0i64..30 * DAY_MS, 0usize..9), 1..40),
            later in 0i64..60 * DAY_MS,
        ) {
            let rs = rules(FIT);
            let mut c = ContactState::new(2);
            for (t, k) in &events {
                let e = match k {
                    0 => page("/x"),
                    1 => profile(&[("job_title", "Founder")]),
                    2 => profile(&[("job_title", "IT Manager")]),
                    3 => profile(&[("industry", "software")]),
                    4 => profile(&[("industry", "retail")]),
                    5 => adjustment("engagement", 17.5, "met at trade show", false),
                    6 => adjustment("fit", -4.0, "wrong title", false),
                    7 => adjustment("engagement", 3.0, "start over", true),
                    _ => adjustment("fit", 0.0, "start over", true),
                };
                apply_event(&rs, &mut c, &e, T0 + t);
            }
            for (m, model) in rs.models.iter().enumerate() {
                if let Some(st) = &c.models[m] {
                    let now = st.at_ms + later;
                    let parts: f64 = st.explain(now, model.half_life_secs).iter().map(|p| p.1).sum();
                    let total = st.score_at(now, model.half_life_secs);
                    prop_assert!((parts - total).abs() <= 1e-9 * total.abs().max(1.0), "{} vs {}", parts, total);
                }
            }
        }
    }
}
