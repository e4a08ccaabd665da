//! Lint: rules files that load but probably do not do what their author
//! meant. Each finding is a [`Severity::Warning`] at the field it is about;
//! `hotlead rules check --strict` refuses a file that has any.
//!
//! | code | finding |
//! | --- | --- |
//! | `unreachable_tier` | no sequence of events can reach the tier within its model's caps and half-life (or a model it requires cannot reach the score it needs); or an account tier of a `top: N` roll-up is entered above N contacts at that ceiling, at the highest weight |
//! | `shadowed_rule` | a rule matches exactly what an earlier rule of the model matches, so every such event is counted twice |
//! | `never_holds` | a condition that can never hold: `exists: false` together with a test on the value |
//! | `fit_tiers_unused` | a fit-only model has tiers but no tier of another model `requires` it: its tiers move on profile changes alone |
//! | `overlapping_tiers` | a tier is left below the score at which the tier under it is entered, so the two bands overlap |
//!
//! The ceiling of a model is exact for the worst case the caps allow: a cap
//! of P points per window of length T, with half-life H, peaks right after
//! a window boundary with P spent just before it, P just after, and P at the
//! end of every earlier window: `P * (1 + 1 / (1 - 2^(-T/H)))`. A `once`
//! rule adds its points once, fit rules their positive points; a behaviour
//! rule with positive points and no cap makes the model unbounded.

use std::collections::HashMap;

use super::yaml::Pos;
use super::{CapLimit, Condition, Model, Problem, RuleSet, Severity, Window};

/// Every warning about a valid rule set, in file order. `positions` maps
/// field paths to where they are in the file.
pub fn lint(rules: &RuleSet, positions: &HashMap<String, Pos>) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut warn = |field: String, code: &'static str, message: String| {
        let pos = locate(positions, &field);
        out.push(Problem {
            line: pos.line,
            column: pos.column,
            field,
            code,
            message,
            suggestion: None,
            severity: Severity::Warning,
        });
    };
    let ceilings: Vec<Option<f64>> = rules.models.iter().map(ceiling).collect();
    for (mi, m) in rules.models.iter().enumerate() {
        let at = |f: &str| format!("models[{mi}].{f}");
        for (ti, t) in m.tiers.iter().enumerate() {
            if let Some(max) = ceilings[mi] {
                if t.enter > max + 1e-9 {
                    warn(
                        at(&format!("tiers[{ti}].enter")),
                        "unreachable_tier",
                        format!(
                            "tier `{}` is entered at {}, but no sequence of events can score more than {:.1} in `{}` (its caps and half-life of {}); lower `enter`, or raise points or caps",
                            t.name, t.enter, max, m.name, super::describe::duration(m.half_life_secs)
                        ),
                    );
                }
            }
            for r in &t.requires {
                if let Some(max) = ceilings[r.model] {
                    if r.enter > max + 1e-9 {
                        warn(
                            at(&format!("tiers[{ti}].requires.{}", r.model_name)),
                            "unreachable_tier",
                            format!(
                                "tier `{}` requires {} in `{}`, but no contact can score more than {:.1} there",
                                t.name, r.enter, r.model_name, max
                            ),
                        );
                    }
                }
            }
            if ti > 0 {
                let prev = &m.tiers[ti - 1];
                if t.exit < prev.enter {
                    warn(
                        at(&format!("tiers[{ti}].exit")),
                        "overlapping_tiers",
                        format!(
                            "tier `{}` is left below {}, under the {} at which `{}` is entered: a contact falling from `{}` lands in `{}` with a score that could not have entered it; raise `exit` to at least {}",
                            t.name, t.exit, prev.enter, prev.name, t.name, prev.name, prev.enter
                        ),
                    );
                }
            }
        }
        if let (Some(a), Some(max)) = (&m.account, ceilings[mi]) {
            // Without `top` every contact adds: no bound. With it, N
            // contacts at the ceiling, each at the highest weight.
            if let Some(n) = a.top {
                let weight = a.weights.as_ref().map_or(1.0, |w| w.values.values().copied().fold(w.default, f64::max));
                let most = n as f64 * weight.max(0.0) * max;
                for (ti, t) in a.tiers.iter().enumerate() {
                    if t.enter > most + 1e-9 {
                        warn(
                            at(&format!("account.tiers[{ti}].enter")),
                            "unreachable_tier",
                            format!(
                                "account tier `{}` is entered at {}, but with `top: {n}` an account scores at most {:.1} in `{}` ({n} contacts at its ceiling of {:.1}, weight {}); lower `enter`, or raise `top`",
                                t.name, t.enter, most, m.name, max, weight
                            ),
                        );
                    }
                }
            }
        }
        let behaviour = m.rules.iter().map(|r| (r.id.as_str(), format!("{:?}/{:?}", r.kind, r.when)));
        let fit = m.fit.iter().map(|r| (r.id.as_str(), format!("{:?}", r.when)));
        for (list, items) in [("rules", behaviour.collect::<Vec<_>>()), ("fit", fit.collect())] {
            for (j, (id, when)) in items.iter().enumerate() {
                if let Some((first, _)) = items[..j].iter().find(|(_, w)| w == when) {
                    warn(
                        at(&format!("{list}[{j}].when")),
                        "shadowed_rule",
                        format!(
                            "rule `{id}` matches exactly what `{first}` matches, so every such event counts for both; merge them into one rule or change the conditions of one"
                        ),
                    );
                }
            }
        }
        let conditions = m
            .rules
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.when.0.iter().map(move |(f, c)| (format!("rules[{i}].when.{f}"), f, c)))
            .chain(
                m.fit
                    .iter()
                    .enumerate()
                    .flat_map(|(i, r)| r.when.0.iter().map(move |(f, c)| (format!("fit[{i}].when.{f}"), f, c))),
            );
        for (path, field, c) in conditions {
            if never_holds(c) {
                warn(
                    at(&path),
                    "never_holds",
                    format!("the condition on `{field}` can never hold: `exists: false` asks for no value, and a test on the value needs one; drop one of them"),
                );
            }
        }
        let required = rules.models.iter().flat_map(|o| &o.tiers).flat_map(|t| &t.requires).any(|r| r.model == mi);
        if m.rules.is_empty() && !m.fit.is_empty() && !m.tiers.is_empty() && !required {
            warn(
                at("tiers"),
                "fit_tiers_unused",
                format!(
                    "model `{}` scores fit only and has tiers, but no tier of another model requires it: its tiers move on profile changes alone, which nobody acts on; add `requires: {{ {}: <score> }}` to a behaviour tier, or drop these tiers",
                    m.name, m.name
                ),
            );
        }
    }
    out.sort_by_key(|p| (p.line, p.column));
    out
}

/// Where a field is: its own position, or its nearest parent's.
fn locate(positions: &HashMap<String, Pos>, field: &str) -> Pos {
    let mut f = field;
    loop {
        if let Some(p) = positions.get(f) {
            return *p;
        }
        match f.rfind(['.', '[']) {
            Some(i) => f = &f[..i],
            None => return Pos { line: 1, column: 1 },
        }
    }
}

/// The highest score any sequence of events can give a contact in the
/// model; `None` when a rule with positive points has no cap.
pub fn ceiling(model: &Model) -> Option<f64> {
    let mut max: f64 = model.fit.iter().map(|f| f.points.max(0.0)).sum();
    for r in model.rules.iter().filter(|r| r.points > 0.0) {
        if r.once {
            max += r.points;
            continue;
        }
        let cap = r.cap?;
        let per_window = match cap.limit {
            CapLimit::Hits(n) => f64::from(n) * r.points,
            CapLimit::Points(p) => p,
        };
        let days = match cap.per {
            Window::Day => 1.0,
            Window::Week => 7.0,
            // The shortest month gives the highest ceiling.
            Window::Month => 28.0,
        };
        let kept = (-(days * 86_400.0) / model.half_life_secs).exp2();
        max += per_window * (1.0 + 1.0 / (1.0 - kept));
    }
    Some(max)
}

/// `exists: false` together with a test that needs a value.
fn never_holds(c: &Condition) -> bool {
    let Condition::All(all) = c else { return false };
    all.iter().any(|c| matches!(c, Condition::Exists(false)))
        && all.iter().any(|c| !matches!(c, Condition::Exists(false) | Condition::Not(_)))
}

#[cfg(test)]
mod tests {
    use super::super::RuleSet;
    use super::*;

    fn codes(yaml: &str) -> Vec<(&'static str, usize)> {
        let checked = RuleSet::check(yaml);
        assert!(checked.errors.is_empty(), "{:?}", checked.errors);
        checked.warnings.iter().map(|w| (w.code, w.line)).collect()
    }

    const CAPPED: &str = "
models:
  - name: m
    half_life: 7d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: ENTER, exit: 45 }
    rules:
      - { id: pricing, when: { kind: page_view, url: { prefix: /pricing } }, points: 10, cap: { hits: 1, per: day } }
";

    #[test]
    fn a_tier_beyond_the_ceiling_is_unreachable() {
        // 10 a day with a 7-day half-life: 10 * (1 + 1 / (1 - 2^(-1/7))) = 116.07.
        let m = &RuleSet::parse(&CAPPED.replace("ENTER", "60"), "t").unwrap().models[0];
        let c = ceiling(m).unwrap();
        assert!((c - 10.0 * (1.0 + 1.0 / (1.0 - 2f64.powf(-1.0 / 7.0)))).abs() < 1e-9, "{c}");
        assert_eq!(codes(&CAPPED.replace("ENTER", "117")), [("unreachable_tier", 7)]);
        assert_eq!(codes(&CAPPED.replace("ENTER", "116")), []);
        // Without a cap, any tier can be reached.
        assert_eq!(codes(&CAPPED.replace("ENTER", "500").replace(", cap: { hits: 1, per: day }", "")), []);
    }

    #[test]
    fn the_ceiling_is_reached_by_the_worst_case_the_caps_allow() {
        // Simulate: one hit at the end of every day for a year, then one
        // right after midnight; the score approaches the ceiling from below.
        let rs = RuleSet::parse(&CAPPED.replace("ENTER", "60"), "t").unwrap();
        let m = &rs.models[0];
        let h = m.half_life_secs * 1000.0;
        let end = 400.0 * 86_400_000.0;
        let mut score = 10.0;
        for d in 0..400 {
            let t = f64::from(d) * 86_400_000.0 + 86_399_999.0;
            score += 10.0 * (-(end - t) / h).exp2();
        }
        let c = ceiling(m).unwrap();
        assert!(score <= c + 1e-6 && score > c - 0.01, "{score} vs {c}");
    }

    proptest::proptest! {
        /// However events arrive, no score passes the ceiling.
        #[test]
        fn no_sequence_of_events_scores_above_the_ceiling(
            points in 1u32..30,
            hits in 1u32..5,
            per in 0usize..3,
            half_life_days in 1u32..30,
            gaps in proptest::collection::vec(0i64..3 * 86_400_000, 1..120),
        ) {
            use crate::proto::interaction_event::Interaction;
            let per = ["day", "week", "month"][per];
            let yaml = format!(
                "models: [{{name: m, half_life: {half_life_days}d, rules: [{{id: r, when: {{kind: page_view}}, points: {points}, cap: {{hits: {hits}, per: {per}}}}}]}}]"
            );
            let rs = RuleSet::parse(&yaml, "t").unwrap();
            let max = ceiling(&rs.models[0]).unwrap();
            let mut contact = crate::score::ContactState::new(1);
            let mut t = 1_700_000_000_000;
            for (i, gap) in gaps.into_iter().enumerate() {
                t += gap;
                let event = crate::proto::InteractionEvent {
                    event_id: i.to_string(),
                    contact_id: "c".into(),
                    occurred_at: Some(crate::decode::timestamp(t)),
                    interaction: Some(Interaction::PageView(Default::default())),
                    ..Default::default()
                };
                crate::score::apply_event(&rs, &mut contact, &event, t);
                let score = contact.models[0].as_ref().unwrap().score_at(t, rs.models[0].half_life_secs);
                proptest::prop_assert!(score <= max + 1e-6, "{score} > {max}");
            }
        }
    }

    #[test]
    fn a_requirement_beyond_the_other_models_ceiling_is_unreachable() {
        let yaml = "
models:
  - name: m
    half_life: 7d
    tiers:
      - { name: ready, enter: 10, exit: 5, requires: { fit: NEED } }
    rules:
      - { id: p, when: { kind: page_view }, points: 10 }
  - name: fit
    half_life: 365d
    fit:
      - { id: cto, when: { job_title: CTO }, points: 20 }
";
        assert_eq!(codes(&yaml.replace("NEED", "25")), [("unreachable_tier", 6)]);
        assert_eq!(codes(&yaml.replace("NEED", "20")), []);
    }

    #[test]
    fn an_identical_later_rule_is_shadowed() {
        let yaml = "
models:
  - name: m
    half_life: 7d
    rules:
      - { id: a, when: { kind: page_view, url: { prefix: /pricing } }, points: 10 }
      - { id: b, when: { kind: page_view, url: { prefix: PREFIX } }, points: 5 }
";
        assert_eq!(codes(&yaml.replace("PREFIX", "/pricing")), [("shadowed_rule", 7)]);
        assert_eq!(codes(&yaml.replace("PREFIX", "/docs")), []);
        let fit = "
models:
  - name: f
    half_life: 7d
    fit:
      - { id: a, when: { industry: software }, points: 10 }
      - { id: b, when: { industry: INDUSTRY }, points: 5 }
";
        assert_eq!(codes(&fit.replace("INDUSTRY", "software")), [("shadowed_rule", 7)]);
        assert_eq!(codes(&fit.replace("INDUSTRY", "retail")), []);
    }

    #[test]
    fn absent_and_tested_can_never_hold() {
        let yaml = "
models:
  - name: m
    half_life: 7d
    rules:
      - id: a
        when:
          kind: form_submission
          fields.email_domain: COND
        points: 10
";
        assert_eq!(codes(&yaml.replace("COND", "{ exists: false, suffix: .edu }")), [("never_holds", 9)]);
        assert_eq!(codes(&yaml.replace("COND", "{ exists: false }")), []);
        assert_eq!(codes(&yaml.replace("COND", "{ exists: true, suffix: .edu }")), []);
        assert_eq!(codes(&yaml.replace("COND", "{ exists: false, not: { suffix: .edu } }")), []);
    }

    #[test]
    fn a_fit_model_with_tiers_nobody_requires_is_flagged() {
        let yaml = "
models:
  - name: engagement
    half_life: 7d
    tiers:
      - { name: warm, enter: 30, exit: 20 REQUIRES }
    rules:
      - { id: p, when: { kind: page_view }, points: 10 }
  - name: fit
    half_life: 365d
    tiers:
      - { name: good-fit, enter: 30, exit: 25 }
    fit:
      - { id: cto, when: { job_title: CTO }, points: 30 }
";
        assert_eq!(codes(&yaml.replace(" REQUIRES", "")), [("fit_tiers_unused", 12)]);
        assert_eq!(codes(&yaml.replace(" REQUIRES", ", requires: { fit: 30 }")), []);
    }

    #[test]
    fn tiers_whose_bands_overlap_are_flagged() {
        let yaml = "
models:
  - name: m
    half_life: 7d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: EXIT }
    rules:
      - { id: p, when: { kind: page_view }, points: 10 }
";
        assert_eq!(codes(&yaml.replace("EXIT", "25")), [("overlapping_tiers", 7)]);
        assert_eq!(codes(&yaml.replace("EXIT", "30")), []);
    }

    #[test]
    fn an_account_tier_above_what_top_n_contacts_can_score_is_unreachable() {
        // One rule, 10 points once: a contact scores at most 10; the top 2
        // at weight 3 make at most 60.
        let yaml = |enter: u32, top: &str| {
            format!(
                "
models:
  - name: m
    half_life: 7d
    tiers: [{{ name: warm, enter: 5, exit: 4 }}]
    rules: [{{ id: demo, when: {{ kind: form_submission }}, points: 10, once: true }}]
    account:
{top}
      weights: {{ attribute: role, values: {{ decision_maker: 3 }}, default: 1 }}
      tiers:
        - {{ name: engaged, enter: 20, exit: 15 }}
        - {{ name: buying, enter: {enter}, exit: 50 }}
"
            )
        };
        assert_eq!(codes(&yaml(60, "      top: 2")), []);
        assert_eq!(codes(&yaml(61, "      top: 2")), [("unreachable_tier", 12)]);
        let checked = RuleSet::check(&yaml(61, "      top: 2"));
        assert_eq!(checked.warnings[0].field, "models[0].account.tiers[1].enter");
        assert!(checked.warnings[0].message.contains("at most 60.0"), "{}", checked.warnings[0].message);
        // Without `top` more contacts always add more.
        assert_eq!(codes(&yaml(1000, "")), []);
    }
}
