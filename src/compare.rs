//! `hotlead compare LIVE SHADOW`: what a shadow model would change for
//! sales before it is promoted, from both models' scores of every contact
//! at one moment.
//!
//! [`report`] is pure: two models' views of their contacts at `at_ms` in, a
//! [`Report`] out. [`compare`] reads those views from Redis (each model in
//! its own lane, [`crate::shadow::locate`]) and serves `hotlead compare`,
//! `GET /v1/compare` and the board's compare page (`/compare`).
//!
//! Invariants of a report:
//! - **One population.** Every figure is over the same contacts: the union
//!   of those either model holds (has a state for). A contact one model does
//!   not hold is in that model's base tier with score 0 there. So the
//!   matrix's counts, each histogram's counts and [`Report::contacts`] are
//!   the same total.
//! - **Tiers by rank.** The matrix has the live model's tiers as rows and
//!   the shadow's as columns, each base tier first, in tier order.
//! - **Alerting by tier.** A tier is *alerting* when entering it from the
//!   base tier raises an alert ([`crate::rules::Model::alerts_on`]): the
//!   tiers sales hears about. A contact *would alert* when the shadow holds
//!   it in an alerting tier and the live model does not (sales would hear of
//!   a lead it does not have now); it *would not* in the reverse case (sales
//!   would lose it). Either list gives every count and the `top`
//!   highest-scoring ids (by the score of the model that alerts, ties by
//!   id).
//! - **Common bins.** Both histograms have [`HISTOGRAM_BINS`] bins of equal
//!   width from 0 to the highest score of either model
//!   ([`Report::histogram_edges`]); a bin holds scores from its lower edge
//!   up to, not including, its upper edge, the last one its upper edge too;
//!   a score below 0 counts in the first.
//! - **Quantiles by nearest rank.** `p` is the least score with at least
//!   p % of the contacts at or below it.
//! - **Changes in order.** `top_changes` are the contacts whose score moves
//!   most (`|shadow - live|`, ties by id), each with both breakdowns; a
//!   contact whose score does not move is not a change.
//!
//! Reading: for each input partition, the `states` hash of each model's
//! lane is scanned ([`SCAN_COUNT`] fields a call) and every value decoded
//! with its lane's rules; an erased contact has no value there, and an
//! anonymous visitor who identified is scored as the contact it became.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;

use crate::query::ModelView;
use crate::rules::{Model, RuleSet};
use crate::score::Millis;
use crate::store::{Store, StoreError, StoredValue};

/// Bins of each score histogram.
pub const HISTOGRAM_BINS: usize = 20;

/// Fields of a partition's `states` hash read per `HSCAN` call.
pub const SCAN_COUNT: usize = 1000;

/// The quantiles a report gives, in percent.
const PERCENTS: [usize; 6] = [10, 25, 50, 75, 90, 99];

/// A live model and a shadow compared at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The moment compared (ms since 1970): both models' scores decayed to it.
    pub at_ms: Millis,
    /// Contacts compared: those either model holds.
    pub contacts: usize,
    /// The live model.
    pub live: Summary,
    /// The shadow model.
    pub shadow: Summary,
    /// How many contacts go from each live tier to each shadow tier.
    pub matrix: Matrix,
    /// The [`HISTOGRAM_BINS`] + 1 edges of both histograms' bins.
    pub histogram_edges: Vec<f64>,
    /// Contacts the shadow would alert sales about and the live model does not.
    pub would_alert: Moves,
    /// Contacts the live model alerts sales about and the shadow would not.
    pub would_not: Moves,
    /// The contacts whose score changes most, largest change first.
    pub top_changes: Vec<Compared>,
}

/// One model's side of a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Model name.
    pub model: String,
    /// Version in force.
    pub version: u32,
    /// The back-filled lane scoring it (absent: the live service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
    /// Whether it is a shadow (its crossings go to the shadow alert topic).
    pub shadow: bool,
    /// Its tiers, base tier first.
    pub tiers: Vec<String>,
    /// Contacts it holds (the others count as base tier, score 0).
    pub held: usize,
    /// Quantiles of its scores over the compared contacts.
    pub quantiles: Quantiles,
    /// Contacts per bin of [`Report::histogram_edges`].
    pub histogram: Vec<usize>,
}

/// Quantiles of a model's scores (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Quantiles {
    /// 10th percentile.
    pub p10: f64,
    /// 25th percentile.
    pub p25: f64,
    /// Median.
    pub p50: f64,
    /// 75th percentile.
    pub p75: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Highest score.
    pub max: f64,
}

/// The tier migration matrix: `counts[row][column]` contacts are in live
/// tier `rows[row]` and shadow tier `columns[column]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Matrix {
    /// The live model's tiers, base tier first.
    pub rows: Vec<String>,
    /// The shadow model's tiers, base tier first.
    pub columns: Vec<String>,
    /// Contacts per (live tier, shadow tier).
    pub counts: Vec<Vec<usize>>,
}

/// Contacts that change sides of an alert.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Moves {
    /// How many.
    pub count: usize,
    /// The highest-scoring of them (at most `top`), highest first.
    pub contacts: Vec<Compared>,
}

/// One contact under both models.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Compared {
    /// Contact id.
    pub contact_id: String,
    /// `shadow.score - live.score`.
    pub change: f64,
    /// Under the live model.
    pub live: Side,
    /// Under the shadow model.
    pub shadow: Side,
}

/// A contact under one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    /// Score at the moment compared.
    pub score: f64,
    /// Tier.
    pub tier: String,
    /// The score by rule, largest first (empty for a contact not held).
    pub breakdown: Vec<(String, f64)>,
}

/// One model's scores of its contacts, for [`report`].
#[derive(Debug, Clone, Copy)]
pub struct Scored<'a> {
    /// The model.
    pub model: &'a Model,
    /// Its lane (`""`: the live service).
    pub lane: &'a str,
    /// Its view of each contact it holds at the moment compared, by id.
    pub views: &'a BTreeMap<String, ModelView>,
}

impl Scored<'_> {
    /// A contact's tier index and score: base tier and 0 when not held.
    fn standing(&self, id: &str) -> (usize, f64) {
        self.views.get(id).map_or((0, 0.0), |v| (self.model.tier_index(&v.tier), v.score))
    }

    fn side(&self, id: &str) -> Side {
        match self.views.get(id) {
            Some(v) => Side { score: v.score, tier: v.tier.clone(), breakdown: v.breakdown.clone() },
            None => Side { score: 0.0, tier: self.model.base_tier.clone(), breakdown: vec![] },
        }
    }

    fn tiers(&self) -> Vec<String> {
        (0..=self.model.tiers.len()).map(|i| self.model.tier_name(i).to_string()).collect()
    }

    /// Whether a contact in tier `tier` has raised an alert to get there.
    fn alerting(&self, tier: usize) -> bool {
        self.model.alerts_on(0, tier)
    }
}

/// One compared contact: (id, live tier and score, shadow tier and score).
type Row<'a> = (&'a str, (usize, f64), (usize, f64));

/// Compares two models' views of their contacts at `at_ms`; lists hold at
/// most `top` contacts each.
pub fn report(live: Scored<'_>, shadow: Scored<'_>, at_ms: Millis, top: usize) -> Report {
    let ids: BTreeSet<&str> = live.views.keys().chain(shadow.views.keys()).map(String::as_str).collect();
    let rows: Vec<Row<'_>> = ids.iter().map(|id| (*id, live.standing(id), shadow.standing(id))).collect();

    let mut counts = vec![vec![0; shadow.model.tiers.len() + 1]; live.model.tiers.len() + 1];
    for (_, (l, _), (s, _)) in &rows {
        counts[*l][*s] += 1;
    }

    let compared = |id: &str| {
        let (l, s) = (live.side(id), shadow.side(id));
        Compared { contact_id: id.to_string(), change: s.score - l.score, live: l, shadow: s }
    };
    // The contacts `keep` selects, by `key` largest first (ties by id): the count and the first `top`.
    let ranked = |keep: &dyn Fn(&Row<'_>) -> bool, key: &dyn Fn(&Row<'_>) -> f64| {
        let mut chosen: Vec<&Row<'_>> = rows.iter().filter(|r| keep(r)).collect();
        chosen.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.0.cmp(b.0)));
        Moves { count: chosen.len(), contacts: chosen.iter().take(top).map(|r| compared(r.0)).collect() }
    };
    let would_alert = ranked(&|(_, (l, _), (s, _))| shadow.alerting(*s) && !live.alerting(*l), &|(_, _, (_, s))| *s);
    let would_not = ranked(&|(_, (l, _), (s, _))| live.alerting(*l) && !shadow.alerting(*s), &|(_, (_, l), _)| *l);
    let top_changes = ranked(&|(_, (_, l), (_, s))| s != l, &|(_, (_, l), (_, s))| (s - l).abs()).contacts;

    let live_scores: Vec<f64> = rows.iter().map(|r| r.1 .1).collect();
    let shadow_scores: Vec<f64> = rows.iter().map(|r| r.2 .1).collect();
    let highest = live_scores.iter().chain(&shadow_scores).copied().fold(0.0, f64::max);
    let histogram_edges = (0..=HISTOGRAM_BINS).map(|i| highest * i as f64 / HISTOGRAM_BINS as f64).collect();
    let summary = |side: &Scored<'_>, scores: &[f64]| Summary {
        model: side.model.name.clone(),
        version: side.model.version,
        lane: (!side.lane.is_empty()).then(|| side.lane.to_string()),
        shadow: side.model.shadow || !side.lane.is_empty(),
        tiers: side.tiers(),
        held: side.views.len(),
        quantiles: quantiles(scores),
        histogram: histogram(scores, highest),
    };
    Report {
        at_ms,
        contacts: rows.len(),
        live: summary(&live, &live_scores),
        shadow: summary(&shadow, &shadow_scores),
        matrix: Matrix { rows: live.tiers(), columns: shadow.tiers(), counts },
        histogram_edges,
        would_alert,
        would_not,
        top_changes,
    }
}

/// Nearest-rank quantiles of `scores` (all 0 when there are none).
pub fn quantiles(scores: &[f64]) -> Quantiles {
    let mut sorted = scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let at = |percent: usize| if n == 0 { 0.0 } else { sorted[(percent * n).div_ceil(100).max(1) - 1] };
    let [p10, p25, p50, p75, p90, p99] = PERCENTS.map(at);
    Quantiles { p10, p25, p50, p75, p90, p99, max: at(100) }
}

/// Counts of `scores` in [`HISTOGRAM_BINS`] equal bins from 0 to `highest`.
pub fn histogram(scores: &[f64], highest: f64) -> Vec<usize> {
    let mut bins = vec![0; HISTOGRAM_BINS];
    for &s in scores {
        let i = if highest > 0.0 && s > 0.0 { (s * HISTOGRAM_BINS as f64 / highest) as usize } else { 0 };
        bins[i.min(HISTOGRAM_BINS - 1)] += 1;
    }
    bins
}

/// A report as readable text: the matrix with totals, who would and would
/// not alert, quantiles side by side, and the top changes with both
/// breakdowns.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let name = |s: &Summary| match &s.lane {
        Some(lane) => format!("{} v{} (lane {lane})", s.model, s.version),
        None => format!("{} v{}", s.model, s.version),
    };
    let when = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.at_ms.max(0) as u64),
    );
    let _ =
        writeln!(out, "{} (live) vs {} (shadow) at {when}: {} contacts", name(&r.live), name(&r.shadow), r.contacts);

    let m = &r.matrix;
    let corner = format!("{} \\ {}", r.live.model, r.shadow.model);
    let first = m.rows.iter().chain([&corner, &"total".to_string()]).map(|s| s.chars().count()).max().unwrap_or(5);
    let width = m.columns.iter().map(|c| c.chars().count().max(7)).collect::<Vec<_>>();
    let _ = write!(out, "\ntier migration\n{corner:<first$}");
    for (c, w) in m.columns.iter().zip(&width) {
        let _ = write!(out, "  {c:>w$}");
    }
    let _ = writeln!(out, "  {:>7}", "total");
    let mut column_totals = vec![0; m.columns.len()];
    for (row, counts) in m.rows.iter().zip(&m.counts) {
        let _ = write!(out, "{row:<first$}");
        for ((n, w), t) in counts.iter().zip(&width).zip(&mut column_totals) {
            let _ = write!(out, "  {n:>w$}");
            *t += n;
        }
        let _ = writeln!(out, "  {:>7}", counts.iter().sum::<usize>());
    }
    let _ = write!(out, "{:<first$}", "total");
    for (n, w) in column_totals.iter().zip(&width) {
        let _ = write!(out, "  {n:>w$}");
    }
    let _ = writeln!(out, "  {:>7}", r.contacts);

    for (title, moves, by_shadow) in [
        ("would alert (the shadow holds them in an alerting tier, live does not)", &r.would_alert, true),
        ("would not alert (live holds them in an alerting tier, the shadow does not)", &r.would_not, false),
    ] {
        let _ = writeln!(out, "\n{title}: {}", moves.count);
        for c in &moves.contacts {
            let (this, other) = if by_shadow { (&c.shadow, &c.live) } else { (&c.live, &c.shadow) };
            let label = if by_shadow { "live" } else { "shadow" };
            let _ = writeln!(
                out,
                "  {:<24} {:<12} {:>9.2}   ({label}: {} {:.2})",
                c.contact_id, this.tier, this.score, other.tier, other.score
            );
        }
        if moves.count > moves.contacts.len() {
            let _ = writeln!(out, "  ... and {} more", moves.count - moves.contacts.len());
        }
    }

    let _ = writeln!(out, "\nscore quantiles  {:>14}  {:>14}", r.live.model, r.shadow.model);
    let (a, b) = (r.live.quantiles, r.shadow.quantiles);
    for (label, x, y) in [
        ("p10", a.p10, b.p10),
        ("p25", a.p25, b.p25),
        ("p50", a.p50, b.p50),
        ("p75", a.p75, b.p75),
        ("p90", a.p90, b.p90),
        ("p99", a.p99, b.p99),
        ("max", a.max, b.max),
    ] {
        let _ = writeln!(out, "{label:<16} {x:>14.2}  {y:>14.2}");
    }

    let _ = writeln!(out, "\ntop changes ({})", r.top_changes.len());
    let parts = |s: &Side| s.breakdown.iter().map(|(k, p)| format!("{k} {p:.2}")).collect::<Vec<_>>().join(", ");
    for c in &r.top_changes {
        let _ = writeln!(
            out,
            "  {:<24} {:>+9.2}   {} {:.2} -> {} {:.2}",
            c.contact_id, c.change, c.live.tier, c.live.score, c.shadow.tier, c.shadow.score
        );
        let _ = writeln!(out, "      live:   {}", parts(&c.live));
        let _ = writeln!(out, "      shadow: {}", parts(&c.shadow));
    }
    out
}

/// Why a comparison cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// No lane scores a model of that name.
    #[error("no model `{model}` is scored here; models: {known}")]
    UnknownModel {
        /// The name asked for.
        model: String,
        /// The models scored, each back-filled one with its lane.
        known: String,
    },
    /// Redis failed, or a stored state cannot be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Compares `live` with `shadow` over every contact of the input topic's
/// `partitions` partitions, both scored at `now_ms`; lists hold at most
/// `top` contacts.
#[allow(clippy::too_many_arguments)]
pub async fn compare(
    store: &Store,
    live_rules: &Arc<RuleSet>,
    topic: &str,
    partitions: i32,
    live: &str,
    shadow: &str,
    now_ms: Millis,
    top: usize,
) -> Result<Report, CompareError> {
    let a = find(store, live_rules, live).await?;
    let b = find(store, live_rules, shadow).await?;
    let (va, vb) = if a.lane == b.lane {
        let mut both = views(&a.store, &a.rules, topic, partitions, &[a.model, b.model], now_ms).await?;
        let vb = both.pop().unwrap_or_default();
        (both.pop().unwrap_or_default(), vb)
    } else {
        let va = views(&a.store, &a.rules, topic, partitions, &[a.model], now_ms).await?.pop().unwrap_or_default();
        let vb = views(&b.store, &b.rules, topic, partitions, &[b.model], now_ms).await?.pop().unwrap_or_default();
        (va, vb)
    };
    let mut r = report(
        Scored { model: &a.rules.models[a.model], lane: &a.lane, views: &va },
        Scored { model: &b.rules.models[b.model], lane: &b.lane, views: &vb },
        now_ms,
        top,
    );
    // Roles as a promotion left them (on the first partition), over the rules' flags.
    r.live.shadow = crate::shadow::is_shadow(&a, topic, 0).await?;
    r.shadow.shadow = crate::shadow::is_shadow(&b, topic, 0).await?;
    Ok(r)
}

/// Where `model` is scored, or the models that are.
async fn find(store: &Store, live: &Arc<RuleSet>, model: &str) -> Result<crate::shadow::Located, CompareError> {
    if let Some(found) = crate::shadow::locate(store, live, model).await? {
        return Ok(found);
    }
    let known: Vec<String> = crate::shadow::all_models(store, live)
        .await?
        .into_iter()
        .map(|(m, lane)| if lane.is_empty() { m } else { format!("{m} (lane {lane})") })
        .collect();
    Err(CompareError::UnknownModel { model: model.to_string(), known: known.join(", ") })
}

/// Each of `models`' (indices in `rules`) views at `now_ms` of the contacts
/// it holds in the lane `store` reads, over every partition.
async fn views(
    store: &Store,
    rules: &RuleSet,
    topic: &str,
    partitions: i32,
    models: &[usize],
    now_ms: Millis,
) -> Result<Vec<BTreeMap<String, ModelView>>, StoreError> {
    let per =
        futures::future::try_join_all((0..partitions).map(|p| scan(store, rules, topic, p, models, now_ms))).await?;
    let mut all = vec![BTreeMap::new(); models.len()];
    for partition in per {
        for (into, found) in all.iter_mut().zip(partition) {
            into.extend(found);
        }
    }
    Ok(all)
}

/// [`views`] on one partition: its `states` hash scanned in chunks.
async fn scan(
    store: &Store,
    rules: &RuleSet,
    topic: &str,
    partition: i32,
    models: &[usize],
    now_ms: Millis,
) -> Result<Vec<Vec<(String, ModelView)>>, StoreError> {
    let keys = store.keys(topic, partition);
    let mut conn = store.connection();
    let mut vocabularies: HashMap<u32, Option<Vec<String>>> = HashMap::new();
    let mut out = vec![Vec::new(); models.len()];
    let mut cursor = 0u64;
    loop {
        let (next, chunk): (u64, Vec<(String, Vec<u8>)>) = redis::cmd("HSCAN")
            .arg(keys.states())
            .arg(cursor)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(&mut conn)
            .await?;
        for (id, bytes) in chunk {
            let vocabulary = match crate::codec::vocabulary_of(&bytes) {
                Some(v) if v != rules.vocabulary_id => match vocabularies.get(&v) {
                    Some(names) => names.clone(),
                    None => {
                        let text: Option<Vec<u8>> = redis::cmd("HGET")
                            .arg(keys.vocabulary())
                            .arg(v.to_le_bytes().as_slice())
                            .query_async(&mut conn)
                            .await?;
                        let names = text.map(|t| String::from_utf8_lossy(&t).split('\0').map(str::to_string).collect());
                        vocabularies.entry(v).or_insert(names).clone()
                    }
                },
                _ => None,
            };
            let (_, state) = crate::store::decode_stored(rules, &StoredValue::Binary(bytes, vocabulary))
                .map_err(|e| StoreError::Corrupt { key: keys.states(), message: format!("a contact's state: {e}") })?;
            if state.links.into.is_some() {
                continue;
            }
            let all = crate::query::model_views(rules, &state, now_ms);
            for (found, &i) in out.iter_mut().zip(models) {
                if let Some(v) = all.iter().find(|v| v.model == rules.models[i].name) {
                    found.push((id.clone(), v.clone()));
                }
            }
        }
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = "
models:
  - name: live
    half_life: 1d
    tiers:
      - { name: warm, enter: 30, exit: 20, alert: false }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - { id: a, when: { kind: page_view }, points: 10 }
  - name: next
    shadow: true
    half_life: 1d
    tiers:
      - { name: warm, enter: 20, exit: 10 }
      - { name: hot, enter: 50, exit: 40 }
      - { name: sales-ready, enter: 80, exit: 70 }
    rules:
      - { id: b, when: { kind: page_view }, points: 10 }
";

    fn rules() -> RuleSet {
        RuleSet::parse(RULES, "rules").unwrap()
    }

    fn view(model: &str, score: f64, tier: &str) -> ModelView {
        ModelView {
            model: model.into(),
            version: 1,
            score,
            tier: tier.into(),
            last_activity_ms: 0,
            breakdown: vec![(format!("{model}-rule"), score)],
            shadow: false,
            lane: None,
        }
    }

    fn views(model: &str, entries: &[(&str, f64, &str)]) -> BTreeMap<String, ModelView> {
        entries.iter().map(|(id, s, t)| (id.to_string(), view(model, *s, t))).collect()
    }

    /// Five contacts: `ann` warm -> hot, `bob` hot -> warm, `cy` cold ->
    /// warm, `dee` only live (hot -> cold, 0), `eve` only shadow (cold, 0
    /// -> sales-ready).
    fn sample() -> Report {
        let rules = rules();
        let live =
            views("live", &[("ann", 35.0, "warm"), ("bob", 70.0, "hot"), ("cy", 15.0, "cold"), ("dee", 65.0, "hot")]);
        let shadow = views(
            "next",
            &[("ann", 55.0, "hot"), ("bob", 30.0, "warm"), ("cy", 22.0, "warm"), ("eve", 100.0, "sales-ready")],
        );
        report(
            Scored { model: &rules.models[0], lane: "", views: &live },
            Scored { model: &rules.models[1], lane: "", views: &shadow },
            1_000,
            2,
        )
    }

    #[test]
    fn the_matrix_counts_every_contact_either_model_holds_once() {
        let r = sample();
        assert_eq!(r.contacts, 5);
        assert_eq!(r.matrix.rows, ["cold", "warm", "hot"]);
        assert_eq!(r.matrix.columns, ["cold", "warm", "hot", "sales-ready"]);
        // cold: cy -> warm, eve -> sales-ready; warm: ann -> hot; hot: bob -> warm, dee -> cold.
        assert_eq!(r.matrix.counts, [[0, 1, 0, 1], [0, 0, 1, 0], [1, 1, 0, 0]]);
        assert_eq!((r.live.held, r.shadow.held), (4, 4));
        assert!(!r.live.shadow && r.shadow.shadow);
    }

    #[test]
    fn a_contact_one_model_does_not_hold_is_in_its_base_tier_at_zero() {
        let r = sample();
        let eve = r.top_changes.iter().find(|c| c.contact_id == "eve").expect("eve changes by 100");
        assert_eq!(eve.live, Side { score: 0.0, tier: "cold".into(), breakdown: vec![] });
        assert_eq!(eve.shadow.tier, "sales-ready");
        assert_eq!(eve.change, 100.0);
        let dee = r.would_not.contacts.iter().find(|c| c.contact_id == "dee").expect("dee is lost to sales");
        assert_eq!((dee.shadow.score, dee.shadow.tier.as_str()), (0.0, "cold"));
    }

    #[test]
    fn would_alert_and_would_not_follow_the_alerting_tiers() {
        let r = sample();
        // Shadow: every tier alerts. ann (warm -> hot), cy (cold -> warm),
        // eve (cold -> sales-ready); highest shadow score first, top 2.
        assert_eq!(r.would_alert.count, 3);
        let ids: Vec<&str> = r.would_alert.contacts.iter().map(|c| c.contact_id.as_str()).collect();
        assert_eq!(ids, ["eve", "ann"]);
        // Live: warm is silent, hot alerts. bob (hot -> warm) stays in an
        // alerting tier of the shadow; dee (hot -> cold) does not.
        assert_eq!(r.would_not.count, 1);
        let ids: Vec<&str> = r.would_not.contacts.iter().map(|c| c.contact_id.as_str()).collect();
        assert_eq!(ids, ["dee"]);
        assert_eq!(r.would_not.contacts[0].live.breakdown, [("live-rule".to_string(), 65.0)]);
    }

    #[test]
    fn top_changes_are_the_largest_moves_either_way_ties_by_id() {
        let r = sample();
        // |changes|: ann 20, bob 40, cy 7, dee 65, eve 100; top 2.
        let got: Vec<(&str, f64)> = r.top_changes.iter().map(|c| (c.contact_id.as_str(), c.change)).collect();
        assert_eq!(got, [("eve", 100.0), ("dee", -65.0)]);
        let rules = rules();
        let same = views("live", &[("b", 10.0, "cold"), ("a", 10.0, "cold"), ("c", 5.0, "cold")]);
        let zero = BTreeMap::new();
        let r = report(
            Scored { model: &rules.models[0], lane: "", views: &same },
            Scored { model: &rules.models[1], lane: "m2", views: &zero },
            0,
            10,
        );
        let got: Vec<&str> = r.top_changes.iter().map(|c| c.contact_id.as_str()).collect();
        assert_eq!(got, ["a", "b", "c"]);
        assert_eq!(r.shadow.lane.as_deref(), Some("m2"));
        let unmoved = report(
            Scored { model: &rules.models[0], lane: "", views: &same },
            Scored { model: &rules.models[0], lane: "", views: &same },
            0,
            10,
        );
        assert!(unmoved.top_changes.is_empty(), "a score that does not move is no change");
    }

    #[test]
    fn quantiles_and_histograms_share_the_population_and_the_bins() {
        let r = sample();
        // Live over 5 contacts: 0 (eve), 15, 35, 65, 70. Nearest rank:
        // p10 -> 1st, p25 -> 2nd, p50 -> 3rd, p75 -> 4th, p90 and p99 -> 5th.
        let q = r.live.quantiles;
        assert_eq!((q.p10, q.p25, q.p50, q.p75, q.p90, q.p99, q.max), (0.0, 15.0, 35.0, 65.0, 70.0, 70.0, 70.0));
        // Shadow: 0 (dee), 22, 30, 55, 100.
        let q = r.shadow.quantiles;
        assert_eq!((q.p10, q.p25, q.p50, q.p75, q.p90, q.max), (0.0, 22.0, 30.0, 55.0, 100.0, 100.0));
        // Bins of 5 up to 100, the highest of both.
        assert_eq!(r.histogram_edges.len(), HISTOGRAM_BINS + 1);
        assert_eq!((r.histogram_edges[1], r.histogram_edges[20]), (5.0, 100.0));
        let nonzero =
            |h: &[usize]| h.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, n)| (i, *n)).collect::<Vec<_>>();
        assert_eq!(nonzero(&r.live.histogram), [(0, 1), (3, 1), (7, 1), (13, 1), (14, 1)]);
        assert_eq!(nonzero(&r.shadow.histogram), [(0, 1), (4, 1), (6, 1), (11, 1), (19, 1)], "100 in the last bin");
        assert_eq!(r.live.histogram.iter().sum::<usize>(), r.contacts);

        let q = quantiles(&(1..=200).map(f64::from).collect::<Vec<_>>());
        assert_eq!((q.p10, q.p25, q.p50, q.p99, q.max), (20.0, 50.0, 100.0, 198.0, 200.0));
        assert_eq!(quantiles(&[]), Quantiles::default());
        assert_eq!(histogram(&[-3.0, 0.0], 0.0)[0], 2, "nothing above 0: all in the first bin");
    }

    proptest::proptest! {
        #[test]
        fn every_figure_counts_the_same_contacts(
            live in proptest::collection::btree_map("[a-f]{1,2}", (0.0..120.0f64, 0usize..3), 0..30),
            shadow in proptest::collection::btree_map("[a-f]{1,2}", (-5.0..120.0f64, 0usize..4), 0..30),
        ) {
            let rules = rules();
            let (a, b) = (&rules.models[0], &rules.models[1]);
            let as_views = |m: &Model, v: &BTreeMap<String, (f64, usize)>| -> BTreeMap<String, ModelView> {
                v.iter().map(|(id, (s, t))| (id.clone(), view(&m.name, *s, m.tier_name(*t)))).collect()
            };
            let (lv, sv) = (as_views(a, &live), as_views(b, &shadow));
            let r = report(Scored { model: a, lane: "", views: &lv }, Scored { model: b, lane: "", views: &sv }, 0, 3);
            let union: BTreeSet<&String> = live.keys().chain(shadow.keys()).collect();
            proptest::prop_assert_eq!(r.contacts, union.len());
            proptest::prop_assert_eq!(r.matrix.counts.iter().flatten().sum::<usize>(), r.contacts);
            proptest::prop_assert_eq!(r.live.histogram.iter().sum::<usize>(), r.contacts);
            proptest::prop_assert_eq!(r.shadow.histogram.iter().sum::<usize>(), r.contacts);
            let q = r.shadow.quantiles;
            proptest::prop_assert!(q.p10 <= q.p25 && q.p25 <= q.p50 && q.p50 <= q.p75 && q.p75 <= q.p90 && q.p90 <= q.p99 && q.p99 <= q.max);
            let moves: Vec<f64> = r.top_changes.iter().map(|c| c.change.abs()).collect();
            proptest::prop_assert!(moves.windows(2).all(|w| w[0] >= w[1]), "{:?}", moves);
            proptest::prop_assert!(r.would_alert.contacts.len() == r.would_alert.count.min(3));
            for c in &r.would_alert.contacts {
                proptest::prop_assert!(b.alerts_on(0, b.tier_index(&c.shadow.tier)));
                proptest::prop_assert!(!a.alerts_on(0, a.tier_index(&c.live.tier)));
            }
            for c in &r.would_not.contacts {
                proptest::prop_assert!(a.alerts_on(0, a.tier_index(&c.live.tier)));
                proptest::prop_assert!(!b.alerts_on(0, b.tier_index(&c.shadow.tier)));
            }
        }
    }

    #[test]
    fn the_text_shows_the_matrix_with_totals_and_both_breakdowns() {
        let text = render(&sample());
        let lines: Vec<&str> = text.lines().collect();
        let header = lines.iter().position(|l| l.starts_with("live \\ next")).expect(&text);
        assert!(lines[header].ends_with("total"), "{text}");
        assert!(lines[header + 1].starts_with("cold") && lines[header + 1].ends_with("  2"), "{text}");
        assert!(lines[header + 4].starts_with("total") && lines[header + 4].ends_with("  5"), "{text}");
        let widths: Vec<usize> = lines[header..=header + 4].iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "aligned: {text}");
        assert!(text.contains("would alert (the shadow holds them in an alerting tier, live does not): 3"), "{text}");
        assert!(text.contains("... and 1 more"), "{text}");
        assert!(text.contains("live:   live-rule 65.00") && text.contains("shadow: next-rule 100.00"), "{text}");
    }
}
