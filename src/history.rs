//! A contact's score history in one model, rebuilt from its events.
//!
//! [`rebuild`] takes one contact's messages of the input topic in offset
//! order and scores them one at a time through [`engine::score_batch`],
//! carrying the contact's state from one message to the next, so repeats,
//! caps, `once` rules, identify and visitor merges and manual adjustments
//! count exactly as the service counted them. It reads the model state
//! before and after each message and reports:
//!
//! - an [`Kind::Event`] entry for each message that gave or took points in
//!   the model (the change of each contribution, named as the breakdown
//!   names it) or moved its tier, with the score and tier right after;
//! - a [`Kind::Tier`] entry for every change of the model state's tier
//!   (whether or not the tier raises alerts): one an event caused, at the
//!   event's time, and one decay caused, between events or after the last
//!   one up to `now`, at the instant decay took the score below the tier's
//!   exit ([`score::cooling_due`], applied with [`score::cool_by_sweep`],
//!   as the cooling schedule and the sweep do).
//!
//! Invariants:
//! - Pure: no Kafka, no Redis, no clock (`now` is given).
//! - Entries come in time order. An event is entered at the time the engine
//!   judged it: its own time, or, for a late event (dated before one
//!   already applied), the contact's latest event time, where its decayed
//!   points were added.
//! - Decay is by event time (`occurred_at`), never arrival.
//! - Each entry carries the model score's two parts at its instant, the
//!   decaying behaviour part and the fit part (which does not decay), so a
//!   reader can draw the exact curve between entries:
//!   `fit + behaviour * 2^(-(t - at) / H)`.
//! - A range keeps the entries within it, but the whole history is scored
//!   from the first message: a score depends on everything before it.
//!
//! Scores are rebuilt with the rules given (the rules in force now, in the
//! service), from the messages the topic still holds.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::decode::Limits;
use crate::engine::{self, Contact, Dedup, Message, Raw, Source};
use crate::rules::{Model, RuleSet};
use crate::score::{self, Crossing, Direction, Millis, ModelState};

/// Entries an answer holds unless asked otherwise.
pub const DEFAULT_LIMIT: usize = 500;

/// Most entries an answer holds.
pub const MAX_LIMIT: usize = 5000;

/// How long reading a contact's partition may take before the read gives up.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// A change of points smaller than this is rounding, not a rule's points.
const POINTS_EPSILON: f64 = 1e-9;

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An event applied to the contact.
    Event,
    /// A change of tier.
    Tier,
}

/// Which way a tier changed, as alerts name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Way {
    /// Into a higher tier.
    #[serde(rename = "HEATED")]
    Heated,
    /// Into a lower tier.
    #[serde(rename = "COOLED")]
    Cooled,
}

impl From<Direction> for Way {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Heated => Self::Heated,
            Direction::Cooled => Self::Cooled,
        }
    }
}

/// The points one rule (or adjustment, or fit rule) gave at an event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Points {
    /// The contribution's name in the breakdown: a rule id, a fit rule id
    /// or `adjustment:<reason>`.
    pub rule_id: String,
    /// Points added (negative: taken), at the event's instant.
    pub points: f64,
}

/// One moment of the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// An event, or a change of tier.
    pub kind: Kind,
    /// When, RFC 3339 with milliseconds.
    pub at: String,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: Millis,
    /// The event's id (`null` for a change of tier).
    pub event_id: Option<String>,
    /// What each contribution gained at the event (empty for a change of
    /// tier), largest first.
    pub points: Vec<Points>,
    /// The model score right after (at the crossing, for a change of tier).
    pub score: f64,
    /// The decaying part of `score`.
    pub behaviour: f64,
    /// The fit part of `score` (no decay).
    pub fit: f64,
    /// The tier right after.
    pub tier: String,
    /// The tier left (`null` for an event).
    pub previous_tier: Option<String>,
    /// `HEATED` or `COOLED` (`null` for an event).
    pub direction: Option<Way>,
}

/// A tier's thresholds, for a reader to draw its band.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierBand {
    /// Name.
    pub name: String,
    /// Score at or above which it is entered.
    pub enter: f64,
    /// Score below which it is left.
    pub exit: f64,
}

/// The entries asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Entries at or after this instant (ms), if set.
    pub from: Option<Millis>,
    /// Entries at or before this instant (ms), if set.
    pub to: Option<Millis>,
    /// At most so many entries, the latest: 1 to [`MAX_LIMIT`].
    pub limit: usize,
}

impl Default for Range {
    fn default() -> Self {
        Self { from: None, to: None, limit: DEFAULT_LIMIT }
    }
}

/// A contact's history in one model, as the read API answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct History {
    /// Contact id.
    pub contact_id: String,
    /// Model name.
    pub model: String,
    /// Model version in force.
    pub model_version: u32,
    /// The model's half-life in seconds.
    pub half_life_secs: f64,
    /// The tier below every threshold.
    pub base_tier: String,
    /// Tiers above the base tier, lowest first.
    pub tiers: Vec<TierBand>,
    /// The range's start, RFC 3339 (`null`: from the first entry).
    pub from: Option<String>,
    /// The range's end, RFC 3339 (`null`: up to now).
    pub to: Option<String>,
    /// Whether older entries in the range were left out to keep to the limit.
    pub truncated: bool,
    /// The entries, oldest first.
    pub entries: Vec<Entry>,
}

/// A moment as RFC 3339 text with milliseconds.
pub fn rfc3339(ms: Millis) -> String {
    let t = if ms >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_millis(ms.unsigned_abs())
    };
    humantime::format_rfc3339_millis(t).to_string()
}

/// RFC 3339 text or milliseconds since the Unix epoch; `None` for
/// anything else.
pub fn parse_time(text: &str) -> Option<Millis> {
    let text = text.trim();
    text.parse::<Millis>().ok().or_else(|| {
        let t = humantime::parse_rfc3339_weak(text).ok()?;
        Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as Millis)
    })
}

/// Whether a message with this key may be `contact`'s: keyed by it, or
/// without a key (its event names its contact).
pub fn keyed_to(key: Option<&[u8]>, contact: &str) -> bool {
    key.is_none_or(|k| k.is_empty() || k == contact.as_bytes())
}

/// The messages of `contact` among a partition's raw messages (in offset
/// order), decoded as the service decoded them when they arrived (the
/// broker's timestamp stands for the arrival): those keyed by the contact,
/// and those without a key whose event names it.
pub fn of_contact(raw: &[Raw], contact: &str, limits: &Limits) -> Vec<Message> {
    raw.iter()
        .filter(|r| keyed_to(r.key.as_deref(), contact))
        .map(|r| r.decode(limits))
        .filter(|m| m.event.as_ref().is_ok_and(|v| v.event.contact_id == contact))
        .collect()
}

/// The history of `contact` in model `model` (an index into `rules`) from
/// its messages in offset order, up to `now_ms`: every entry, in time order.
pub fn rebuild(
    rules: &RuleSet,
    model: usize,
    contact: &str,
    messages: impl IntoIterator<Item = Message>,
    dedup: Dedup,
    now_ms: Millis,
) -> Vec<Entry> {
    // A copy: scoring the history again is not a hit of the rules in force.
    let rules = rules.detached();
    let m = &rules.models[model];
    let source = Source { topic: "history", partition: 0 };
    let mut entries = Vec::new();
    let mut known: HashMap<String, Contact> = HashMap::new();
    for message in messages {
        let Ok(valid) = &message.event else { continue };
        if valid.event.contact_id != contact {
            continue;
        }
        let (event_id, event_ms) = (valid.event.event_id.clone(), valid.at_ms);
        let before = known.get(contact).and_then(|c| model_state(c, model));
        let fx = engine::score_batch(&rules, source, [message], std::mem::take(&mut known), dedup);
        known = fx.contacts.into_iter().collect();
        if fx.counts.scored == 0 {
            // A repeat, or an event of an erased or identified contact:
            // nothing changed.
            continue;
        }
        let Some(after) = known.get(contact).and_then(|c| model_state(c, model)) else {
            // No score in the model (yet, or any more: an identified
            // visitor's score moved to its contact).
            continue;
        };
        let mut held = before.clone();
        if let Some(st) = held.as_mut() {
            cool_until(m, model, st, event_ms, &mut entries);
        }
        let when = before.as_ref().map_or(event_ms, |b| b.at_ms.max(event_ms));
        let points = gained(m, before.as_ref(), &after, when);
        let from = held.map_or(0, |st| st.tier);
        if points.is_empty() && from == after.tier {
            continue;
        }
        entries.push(entry(m, Kind::Event, Some(event_id), points, &after, when, None));
        if from != after.tier {
            let way = if after.tier > from { Direction::Heated } else { Direction::Cooled };
            entries.push(entry(m, Kind::Tier, None, vec![], &after, when, Some((way, from))));
        }
    }
    if let Some(mut st) = known.get(contact).and_then(|c| model_state(c, model)) {
        cool_until(m, model, &mut st, now_ms, &mut entries);
    }
    entries.sort_by_key(|e| e.at_ms);
    entries
}

/// The history of `contact` in model `model` as the read API answers it:
/// [`rebuild`], then the entries within `range`, the latest `range.limit`.
pub fn history(
    rules: &RuleSet,
    model: usize,
    contact: &str,
    messages: impl IntoIterator<Item = Message>,
    dedup: Dedup,
    now_ms: Millis,
    range: Range,
) -> History {
    let mut entries = rebuild(rules, model, contact, messages, dedup, now_ms);
    entries.retain(|e| range.from.is_none_or(|f| e.at_ms >= f) && range.to.is_none_or(|t| e.at_ms <= t));
    let excess = entries.len().saturating_sub(range.limit);
    entries.drain(..excess);
    let m = &rules.models[model];
    History {
        contact_id: contact.to_string(),
        model: m.name.clone(),
        model_version: m.version,
        half_life_secs: m.half_life_secs,
        base_tier: m.base_tier.clone(),
        tiers: m.tiers.iter().map(|t| TierBand { name: t.name.clone(), enter: t.enter, exit: t.exit }).collect(),
        from: range.from.map(rfc3339),
        to: range.to.map(rfc3339),
        truncated: excess > 0,
        entries,
    }
}

/// A history as a readable table: time, kind, event id, points, score, tier.
pub fn render(h: &History) -> String {
    let mut out = format!("contact {}, model {} v{}", h.contact_id, h.model, h.model_version);
    if h.truncated {
        out.push_str(", older entries left out");
    }
    out.push('\n');
    out.push_str(&format!("{:<24}  {:<6} {:<20} {:<32} {:>10}  tier\n", "time", "kind", "event", "points", "score"));
    for e in &h.entries {
        let (kind, what) = match (e.kind, &e.direction, &e.previous_tier) {
            (Kind::Tier, Some(Way::Heated), Some(p)) => ("HEATED", format!("{p} → {}", e.tier)),
            (Kind::Tier, _, Some(p)) => ("COOLED", format!("{p} → {}", e.tier)),
            _ => ("event", e.tier.clone()),
        };
        let points: Vec<String> = e.points.iter().map(|p| format!("{} {:+.2}", p.rule_id, p.points)).collect();
        out.push_str(&format!(
            "{:<24}  {:<6} {:<20} {:<32} {:>10.2}  {what}\n",
            e.at,
            kind,
            e.event_id.as_deref().unwrap_or("-"),
            if points.is_empty() { "-".to_string() } else { points.join(", ") },
            e.score,
        ));
    }
    if h.entries.is_empty() {
        out.push_str("(no entries)\n");
    }
    out
}

fn model_state(c: &Contact, model: usize) -> Option<ModelState> {
    c.state.models.get(model).cloned().flatten()
}

/// Cools `st` by decay up to `until` (inclusive), one tier at a time at the
/// instants the cooling schedule names, entering each change.
fn cool_until(m: &Model, model: usize, st: &mut ModelState, until: Millis, entries: &mut Vec<Entry>) {
    while let Some(due) = score::cooling_due(m, st).filter(|due| *due <= until) {
        // At `due` the score is at the exit or just under it; one
        // millisecond later it is under it, and the crossing is still
        // dated `due`.
        let c = score::cool_by_sweep(model, m, st, due)
            .or_else(|| (due < until).then(|| score::cool_by_sweep(model, m, st, due + 1)).flatten());
        let Some(c) = c else { break };
        entries.push(crossing_entry(m, &c, st));
    }
}

/// What each contribution gained from `before` to `after`, both read at
/// `at_ms`, largest first.
fn gained(m: &Model, before: Option<&ModelState>, after: &ModelState, at_ms: Millis) -> Vec<Points> {
    let h = m.half_life_secs;
    let mut change: BTreeMap<String, f64> = after.explain(at_ms, h).into_iter().collect();
    for (rule, p) in before.map(|b| b.explain(at_ms, h)).unwrap_or_default() {
        *change.entry(rule).or_insert(0.0) -= p;
    }
    let mut v: Vec<Points> = change
        .into_iter()
        .filter(|(_, p)| p.abs() > POINTS_EPSILON)
        .map(|(rule_id, points)| Points { rule_id, points })
        .collect();
    v.sort_by(|a, b| b.points.total_cmp(&a.points).then_with(|| a.rule_id.cmp(&b.rule_id)));
    v
}

fn crossing_entry(m: &Model, c: &Crossing, st: &ModelState) -> Entry {
    entry(m, Kind::Tier, None, vec![], st, c.at_ms, Some((c.direction, c.from)))
}

/// An entry at `at_ms` of the model state `st` (its tier is the tier after);
/// `crossed` names the direction and the tier left of a change of tier.
fn entry(
    m: &Model,
    kind: Kind,
    event_id: Option<String>,
    points: Vec<Points>,
    st: &ModelState,
    at_ms: Millis,
    crossed: Option<(Direction, usize)>,
) -> Entry {
    let behaviour = st.behaviour_at(at_ms, m.half_life_secs);
    let fit = st.fit_total();
    Entry {
        kind,
        at: rfc3339(at_ms),
        at_ms,
        event_id,
        points,
        score: behaviour + fit,
        behaviour,
        fit,
        tier: m.tier_name(st.tier).to_string(),
        previous_tier: crossed.map(|(_, from)| m.tier_name(from).to_string()),
        direction: crossed.map(|(d, _)| d.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::interaction_event::Interaction;
    use crate::proto::{InteractionEvent, PageView};
    use prost::Message as _;

    const H: Millis = 86_400_000;
    const T0: Millis = 1_760_000_000_000;

    /// Warm from 30 (left below 20), hot from 60 (below 45, no alerts);
    /// 25 points a pricing page, 40 a demo page.
    const RULES: &str = "models: [{name: m, half_life: 1d,
      tiers: [{name: warm, enter: 30, exit: 20}, {name: hot, enter: 60, exit: 45, alert: false}],
      rules: [{id: pricing-page, when: {kind: page_view, url: /pricing}, points: 25},
              {id: demo, when: {kind: page_view, url: /demo}, points: 40}]}]";

    fn page(contact: &str, id: &str, at: Millis, url: &str) -> InteractionEvent {
        InteractionEvent {
            event_id: id.into(),
            contact_id: contact.into(),
            occurred_at: Some(crate::decode::timestamp(at)),
            interaction: Some(Interaction::PageView(PageView { url: url.into(), ..Default::default() })),
            ..Default::default()
        }
    }

    fn raw(events: &[(Option<&str>, InteractionEvent)]) -> Vec<Raw> {
        events
            .iter()
            .enumerate()
            .map(|(i, (key, e))| Raw::new(i as i64, key.map(str::as_bytes), Some(&e.encode_to_vec()), T0 + 10 * H))
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    /// When `s` points at `t` decay below `exit`: `t + H*log2(s/exit)`, to
    /// the millisecond after.
    fn decays_below(t: Millis, s: f64, exit: f64) -> Millis {
        t + (H as f64 * (s / exit).log2()).ceil() as Millis
    }

    #[test]
    fn two_events_heat_and_decay_cools_at_the_exact_instant() {
        let rules = RuleSet::parse(RULES, "t").unwrap();
        let t2 = T0 + H / 2;
        let msgs = of_contact(
            &raw(&[
                (Some("c"), page("c", "e1", T0, "/pricing")),
                (Some("x"), page("x", "e9", T0 + 1, "/demo")),
                (Some("c"), page("c", "e1", T0 + 5, "/pricing")),
                (None, page("c", "e2", t2, "/pricing")),
            ]),
            "c",
            &Limits::default(),
        );
        assert_eq!(msgs.len(), 3, "the other contact's message is left out, the repeat is kept for the engine");
        let now = T0 + 5 * H;
        let e = rebuild(&rules, 0, "c", msgs, Dedup::default(), now);
        // 25 at T0 (cold); at T0 + H/2: 25/√2 + 25 = 42.68 (warm); it decays
        // below warm's exit (20) at t2 + H*log2(42.68/20).
        let s2 = 25.0 * 0.5f64.sqrt() + 25.0;
        let kinds: Vec<(Kind, Millis)> = e.iter().map(|e| (e.kind, e.at_ms)).collect();
        let cooled_at = decays_below(t2, s2, 20.0);
        assert_eq!(kinds, [(Kind::Event, T0), (Kind::Event, t2), (Kind::Tier, t2), (Kind::Tier, cooled_at)]);
        assert_eq!(e[0].points, [Points { rule_id: "pricing-page".into(), points: 25.0 }]);
        assert_eq!((e[0].score, e[0].tier.as_str(), e[0].event_id.as_deref()), (25.0, "cold", Some("e1")));
        assert!(close(e[1].score, s2) && close(e[1].points[0].points, 25.0), "{:?}", e[1]);
        assert_eq!((e[1].event_id.as_deref(), e[1].tier.as_str()), (Some("e2"), "warm"));
        assert_eq!(
            (e[2].direction, e[2].previous_tier.as_deref(), e[2].tier.as_str()),
            (Some(Way::Heated), Some("cold"), "warm")
        );
        assert!(close(e[2].score, s2));
        assert_eq!(
            (e[3].direction, e[3].previous_tier.as_deref(), e[3].tier.as_str()),
            (Some(Way::Cooled), Some("warm"), "cold")
        );
        assert!((e[3].score - 20.0).abs() < 1e-6 && e[3].score < 20.0, "{}", e[3].score);
        assert_eq!((e[3].behaviour, e[3].fit), (e[3].score, 0.0));
        assert_eq!(e[3].at, rfc3339(cooled_at));
    }

    #[test]
    fn a_silent_tier_changes_too_and_decay_between_events_cools_step_by_step() {
        let rules = RuleSet::parse(RULES, "t").unwrap();
        // 80 at T0: hot (no alerts); down through hot's exit (45), then
        // warm's (20, exactly two half-lives later), before the next event
        // three days later heats it again.
        let t2 = T0 + 3 * H;
        let msgs = of_contact(
            &raw(&[
                (Some("c"), page("c", "a", T0, "/demo")),
                (Some("c"), page("c", "b", T0, "/demo")),
                (Some("c"), page("c", "c", t2, "/demo")),
            ]),
            "c",
            &Limits::default(),
        );
        let e = rebuild(&rules, 0, "c", msgs, Dedup::default(), t2);
        let tiers: Vec<(Option<Way>, &str, Millis)> =
            e.iter().filter(|e| e.kind == Kind::Tier).map(|e| (e.direction, e.tier.as_str(), e.at_ms)).collect();
        assert_eq!(
            tiers,
            [
                (Some(Way::Heated), "warm", T0),
                (Some(Way::Heated), "hot", T0),
                (Some(Way::Cooled), "warm", decays_below(T0, 80.0, 45.0)),
                (Some(Way::Cooled), "cold", decays_below(T0, 80.0, 20.0)),
                (Some(Way::Heated), "warm", t2),
            ]
        );
        let s = 80.0 / 8.0 + 40.0;
        assert!(close(e.last().unwrap().score, s));
    }

    #[test]
    fn a_range_keeps_its_entries_and_a_limit_the_latest() {
        let rules = RuleSet::parse(RULES, "t").unwrap();
        let events: Vec<_> =
            (0..6).map(|i| (Some("c"), page("c", &i.to_string(), T0 + i * 1000, "/pricing"))).collect();
        let msgs = || of_contact(&raw(&events), "c", &Limits::default());
        let all = history(&rules, 0, "c", msgs(), Dedup::default(), T0 + 10_000, Range::default());
        assert!(!all.truncated);
        // 25 points a second: warm at the second event, hot at the third.
        let range = Range { from: Some(T0 + 1000), to: Some(T0 + 2000), limit: 3 };
        let some = history(&rules, 0, "c", msgs(), Dedup::default(), T0 + 10_000, range);
        assert!(some.truncated);
        let ids: Vec<_> = some.entries.iter().map(|e| (e.kind, e.event_id.clone())).collect();
        assert_eq!(ids, [(Kind::Tier, None), (Kind::Event, Some("2".to_string())), (Kind::Tier, None)]);
        assert_eq!(some.entries[2].tier, "hot", "scored from the first event, not from the range");
        assert_eq!(some.from.as_deref(), Some("2025-10-09T08:53:21.000Z"));
        let json = serde_json::to_value(&some).unwrap();
        assert_eq!(json["entries"][2]["direction"], "HEATED");
        assert_eq!(json["entries"][2]["kind"], "tier");
        assert!(json["entries"][1]["previous_tier"].is_null());
        assert!(render(&some).contains("warm → hot"), "{}", render(&some));
    }

    #[test]
    fn times_parse_as_rfc3339_or_milliseconds() {
        assert_eq!(parse_time("1760000000000"), Some(T0));
        assert_eq!(parse_time(&rfc3339(T0 + 7)), Some(T0 + 7));
        assert_eq!(parse_time("yesterday"), None);
    }
}
