//! The scoring core: decay math, tiers with hysteresis, and crossings.
//!
//! Pure functions over [`ModelState`]; nothing here knows Kafka or Redis.
//!
//! A contribution of `p` points made at time `t` is worth
//! `p * 2^(-(now - t) / H)` at `now`, for the model's half-life `H`. The state
//! keeps `(s, t)` and is updated lazily: an event at `τ >= t` sets
//! `s = s * 2^(-(τ - t) / H) + p; t = τ`, and a late event `τ < t` adds
//! `p * 2^(-(t - τ) / H)`. The same set of events therefore gives the same
//! score whatever their order or batching.

use std::collections::BTreeMap;

use crate::rules::Model;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Fixed epoch of leaderboard scores: 2024-01-01T00:00:00Z.
pub const LEADERBOARD_EPOCH_MS: Millis = 1_704_067_200_000;

/// How many contributions an alert carries.
pub const TOP_CONTRIBUTIONS: usize = 5;

/// The factor by which points decay over `dt_ms` for half-life `half_life_secs`.
pub fn decay_factor(dt_ms: Millis, half_life_secs: f64) -> f64 {
    (-(dt_ms as f64) / 1000.0 / half_life_secs).exp2()
}

/// One contact's state in one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelState {
    /// Score at `at_ms`.
    pub score: f64,
    /// Time of the latest event applied (event time).
    pub at_ms: Millis,
    /// Current tier index: 0 is the base tier, `i` is `model.tiers[i - 1]`.
    pub tier: usize,
    /// Each rule's share of `score` at `at_ms`; the shares sum to `score`.
    pub contributions: BTreeMap<String, f64>,
}

impl ModelState {
    /// A fresh state at time `at_ms`: score zero, base tier.
    pub fn new(at_ms: Millis) -> Self {
        Self {
            score: 0.0,
            at_ms,
            tier: 0,
            contributions: BTreeMap::new(),
        }
    }

    /// The score decayed to `now_ms` (no decay before `at_ms`).
    pub fn score_at(&self, now_ms: Millis, half_life_secs: f64) -> f64 {
        self.score * decay_factor((now_ms - self.at_ms).max(0), half_life_secs)
    }

    /// Each rule's share decayed to `now_ms`, largest first.
    pub fn contributions_at(&self, now_ms: Millis, half_life_secs: f64) -> Vec<(String, f64)> {
        let f = decay_factor((now_ms - self.at_ms).max(0), half_life_secs);
        let mut v: Vec<(String, f64)> = self.contributions.iter().map(|(k, c)| (k.clone(), c * f)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// The leaderboard score `log2(s) + (t - E) / H`: ordering by it orders
    /// contacts by current decayed score at any `now`. `None` when `s <= 0`.
    pub fn leaderboard_score(&self, half_life_secs: f64) -> Option<f64> {
        (self.score > 0.0)
            .then(|| self.score.log2() + (self.at_ms - LEADERBOARD_EPOCH_MS) as f64 / 1000.0 / half_life_secs)
    }
}

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
    /// True when an event's points caused it; false when decay did.
    pub by_event: bool,
    /// The largest contributions at `at_ms`.
    pub top_contributions: Vec<(String, f64)>,
}

/// Applies one event's matched rules to a contact's model state and returns
/// the tier crossings, in time order.
///
/// `matched` holds `(rule_id, points)` for every rule of `model` that matched.
/// Cooling that happened by decay between the previous event and this one is
/// reported at the exact time the score fell below the exit threshold.
pub fn apply(model: &Model, state: &mut ModelState, event_ms: Millis, matched: &[(&str, f64)]) -> Vec<Crossing> {
    let h = model.half_life_secs;
    let mut crossings = Vec::new();
    let factor = if event_ms > state.at_ms {
        // Decay to the event time; report any cooling on the way.
        let decayed = state.score * decay_factor(event_ms - state.at_ms, h);
        let to = tier_down(model, state.tier, decayed);
        if to < state.tier {
            let threshold = model.tiers[to].exit; // exit of tier `to + 1`
            let dt_secs = h * (state.score / threshold).log2();
            let at_ms = state.at_ms + (dt_secs * 1000.0).ceil() as Millis;
            let at_ms = at_ms.min(event_ms);
            crossings.push(Crossing {
                direction: Direction::Cooled,
                from: state.tier,
                to,
                score: state.score_at(at_ms, h),
                threshold,
                at_ms,
                by_event: false,
                top_contributions: top(state.contributions_at(at_ms, h)),
            });
            state.tier = to;
        }
        let f = decay_factor(event_ms - state.at_ms, h);
        state.score *= f;
        for c in state.contributions.values_mut() {
            *c *= f;
        }
        state.at_ms = event_ms;
        1.0
    } else {
        decay_factor(state.at_ms - event_ms, h)
    };
    if matched.is_empty() {
        return crossings;
    }
    for (rule, points) in matched {
        let p = points * factor;
        state.score += p;
        *state.contributions.entry((*rule).to_string()).or_insert(0.0) += p;
    }
    let from = state.tier;
    let up = tier_up(model, from, state.score);
    let (to, direction, threshold) = if up > from {
        (up, Direction::Heated, model.tiers[up - 1].enter)
    } else {
        let down = tier_down(model, from, state.score);
        if down == from {
            return crossings;
        }
        (down, Direction::Cooled, model.tiers[down].exit)
    };
    state.tier = to;
    crossings.push(Crossing {
        direction,
        from,
        to,
        score: state.score,
        threshold,
        at_ms: state.at_ms,
        by_event: true,
        top_contributions: top(state.contributions_at(state.at_ms, h)),
    });
    crossings
}

/// The tier reached from `tier` by heating: every higher tier whose `enter`
/// the score reaches.
fn tier_up(model: &Model, mut tier: usize, score: f64) -> usize {
    while tier < model.tiers.len() && score >= model.tiers[tier].enter {
        tier += 1;
    }
    tier
}

/// The tier reached from `tier` by cooling: down while the score is below the
/// current tier's `exit`.
fn tier_down(model: &Model, mut tier: usize, score: f64) -> usize {
    while tier > 0 && score < model.tiers[tier - 1].exit {
        tier -= 1;
    }
    tier
}

fn top(mut v: Vec<(String, f64)>) -> Vec<(String, f64)> {
    v.truncate(TOP_CONTRIBUTIONS);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleSet;
    use proptest::prelude::*;

    const DAY_MS: Millis = 86_400_000;
    const T0: Millis = 1_760_000_000_000;

    fn model() -> Model {
        RuleSet::parse(
            r#"
models:
  - name: m
    half_life: 1d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - { id: a, kind: page_view, points: 10 }
"#,
            "test",
        )
        .unwrap()
        .models
        .remove(0)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-300)
    }

    #[test]
    fn points_halve_every_half_life() {
        let m = model();
        let mut s = ModelState::new(T0);
        apply(&m, &mut s, T0, &[("a", 40.0)]);
        apply(&m, &mut s, T0 + DAY_MS, &[("a", 10.0)]);
        assert!(close(s.score, 30.0), "{}", s.score);
        assert!(close(s.score_at(T0 + 2 * DAY_MS, m.half_life_secs), 15.0));
        // A late event made at T0 is worth a half at T0 + 1d.
        apply(&m, &mut s, T0, &[("b", 8.0)]);
        assert!(close(s.score, 34.0), "{}", s.score);
        assert!(close(s.contributions["a"] + s.contributions["b"], s.score));
    }

    #[test]
    fn heats_in_one_step_to_the_highest_tier_reached() {
        let m = model();
        let mut s = ModelState::new(T0);
        let c = apply(&m, &mut s, T0, &[("a", 65.0)]);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].direction, c[0].from, c[0].to), (Direction::Heated, 0, 2));
        assert_eq!(c[0].threshold, 60.0);
        assert_eq!(c[0].score, 65.0);
        assert_eq!(c[0].top_contributions, vec![("a".to_string(), 65.0)]);
    }

    #[test]
    fn hysteresis_holds_between_exit_and_enter() {
        let m = model();
        let mut s = ModelState::new(T0);
        assert_eq!(apply(&m, &mut s, T0, &[("a", 31.0)]).len(), 1);
        // Down to 25 by a negative rule: still warm (exit is 20).
        assert!(apply(&m, &mut s, T0, &[("n", -6.0)]).is_empty());
        // Back to 31: no second HEATED.
        assert!(apply(&m, &mut s, T0, &[("a", 6.0)]).is_empty());
        assert_eq!(s.tier, 1);
    }

    #[test]
    fn cooling_by_decay_is_reported_at_the_exact_crossing_time() {
        let m = model();
        let mut s = ModelState::new(T0);
        apply(&m, &mut s, T0, &[("a", 80.0)]);
        // 80 -> below 45 after log2(80/45) days; next event three days later.
        let c = apply(&m, &mut s, T0 + 3 * DAY_MS, &[("a", 1.0)]);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!((c[0].direction, c[0].from, c[0].to), (Direction::Cooled, 2, 0));
        assert!(!c[0].by_event);
        assert_eq!(c[0].threshold, 20.0);
        let expect = T0 + (86_400_000.0 * (80.0f64 / 20.0).log2()).ceil() as Millis;
        assert_eq!(c[0].at_ms, expect);
        assert!(close(c[0].score, 20.0) || c[0].score < 20.0);
        assert!((c[0].score - 20.0).abs() < 1e-6);
    }

    #[test]
    fn leaderboard_order_is_current_score_order() {
        let h = 86_400.0;
        let a = ModelState {
            score: 50.0,
            at_ms: T0,
            tier: 0,
            contributions: BTreeMap::new(),
        };
        let b = ModelState {
            score: 30.0,
            at_ms: T0 + DAY_MS,
            tier: 0,
            contributions: BTreeMap::new(),
        };
        // At T0 + 1d: a is worth 25, b 30.
        assert!(b.leaderboard_score(h).unwrap() > a.leaderboard_score(h).unwrap());
        let z = b.leaderboard_score(h).unwrap();
        let now = T0 + 3 * DAY_MS;
        let value = (z - (now - LEADERBOARD_EPOCH_MS) as f64 / 1000.0 / h).exp2();
        assert!(close(value, b.score_at(now, h)));
    }

    proptest! {
        /// Any permutation and any batching (state round-tripped through its
        /// stored form between batches) gives the same score.
        #[test]
        fn score_is_independent_of_order_and_batching(
            events in prop::collection::vec((0i64..30 * DAY_MS, -20.0f64..50.0), 1..40),
            seed in any::<u64>(),
            cuts in prop::collection::vec(any::<bool>(), 40),
        ) {
            let m = model();
            let score_of = |order: &[(i64, f64)], cut: &[bool]| {
                let mut s: Option<ModelState> = None;
                for (i, (t, p)) in order.iter().enumerate() {
                    let st = s.get_or_insert_with(|| ModelState::new(T0 + t));
                    apply(&m, st, T0 + t, &[("a", *p)]);
                    if cut[i % cut.len()] {
                        let fields: std::collections::HashMap<String, Vec<u8>> =
                            crate::store::encode_model_state(&m, st)
                                .into_iter()
                                .map(|(k, v)| (k, v.into_bytes()))
                                .collect();
                        s = Some(crate::store::decode_model_state(&m, &fields).unwrap());
                    }
                }
                s.unwrap()
            };
            let base = score_of(&events, &[false]);
            let mut shuffled = events.clone();
            let mut x = seed;
            for i in (1..shuffled.len()).rev() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (x >> 33) as usize % (i + 1));
            }
            let other = score_of(&shuffled, &cuts);
            let last = events.iter().map(|e| e.0).max().unwrap();
            prop_assert_eq!(base.at_ms, T0 + last);
            prop_assert_eq!(other.at_ms, T0 + last);
            let scale: f64 = events.iter().map(|e| e.1.abs()).sum::<f64>().max(1.0);
            prop_assert!((base.score - other.score).abs() <= 1e-9 * scale,
                "{} vs {}", base.score, other.score);
            let sum: f64 = other.contributions.values().sum();
            prop_assert!((sum - other.score).abs() <= 1e-9 * scale);
        }
    }
}
