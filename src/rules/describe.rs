//! Models as sentences, for the people who own the rules but do not read
//! YAML: "page view where url starts with `/pricing`: +10, at most 3 a day".
//! A model with an `account:` roll-up says, in words too, how its contacts'
//! scores make an account score and what the account tiers need.

use serde::Serialize;

use super::{AccountRollup, AccountTier, Cap, CapLimit, Condition, Conditions, InteractionKind, Model, RuleSet, Tier};

/// A model in words.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelText {
    /// The model's name.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// One line: what decays how fast.
    pub summary: String,
    /// The highest score any sequence of events can reach within the caps
    /// ([`super::lint::ceiling`]); `None` when a rule without a cap makes it
    /// unbounded.
    pub ceiling: Option<f64>,
    /// Each tier, lowest first, base tier included.
    pub tiers: Vec<String>,
    /// Behaviour rules.
    pub rules: Vec<RuleText>,
    /// Fit rules.
    pub fit: Vec<RuleText>,
    /// The account roll-up, when the model has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountText>,
}

/// A model's account roll-up in words.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AccountText {
    /// How the contacts' scores make the account score: sum or top N,
    /// weights, and which contacts count toward breadth.
    pub summary: String,
    /// Each account tier, lowest first, base tier included.
    pub tiers: Vec<String>,
}

/// A rule in words.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuleText {
    /// The rule id.
    pub id: String,
    /// The sentence.
    pub text: String,
    /// Events it matched since it came into force (behaviour rules only).
    pub hits: Option<u64>,
}

/// Every model of a rule set in words.
pub fn describe(rules: &RuleSet) -> Vec<ModelText> {
    rules.models.iter().map(model).collect()
}

fn model(m: &Model) -> ModelText {
    let mut summary = match (m.rules.is_empty(), m.fit.is_empty()) {
        (false, true) => format!("Behaviour points that halve every {}.", duration(m.half_life_secs)),
        (true, false) => "Fit points from the contact's profile; they do not fade.".to_string(),
        _ => format!(
            "Behaviour points that halve every {}, plus fit points from the profile that do not fade.",
            duration(m.half_life_secs)
        ),
    };
    if m.shadow {
        summary.push_str(" A shadow model: its crossings go to the shadow alert topic, not to sales.");
    }
    let mut tiers = vec![format!("{}: below every threshold, where contacts start", m.base_tier)];
    tiers.extend(m.tiers.iter().map(tier));
    ModelText {
        name: m.name.clone(),
        version: m.version,
        summary,
        ceiling: super::lint::ceiling(m),
        tiers,
        rules: m
            .rules
            .iter()
            .map(|r| {
                let mut text = format!("{}: {}", event(r.kind, &r.when), points(r.points));
                if r.once {
                    text.push_str(", once per contact");
                }
                if let Some(c) = r.cap {
                    text.push_str(&format!(", {}", cap(c)));
                }
                RuleText { id: r.id.clone(), text, hits: Some(r.hits.get()) }
            })
            .collect(),
        fit: m
            .fit
            .iter()
            .map(|r| RuleText {
                id: r.id.clone(),
                text: format!("profile where {}: {} while it holds", conditions(&r.when), points(r.points)),
                hits: None,
            })
            .collect(),
        account: m.account.as_ref().map(|a| account(m, a)),
    }
}

fn account(m: &Model, a: &AccountRollup) -> AccountText {
    let broad = m.tier_name(a.breadth_tier);
    let mut summary = String::from("Contacts roll up into an account score: the sum of ");
    match a.top {
        None => summary.push_str("every contact's score in this model"),
        Some(1) => summary.push_str("the highest contact score in this model"),
        Some(n) => summary.push_str(&format!("the {n} highest contact scores in this model")),
    }
    summary.push_str(", a score below zero counting as zero");
    match &a.weights {
        None => summary.push('.'),
        Some(w) => {
            let mut values: Vec<String> = w.values.iter().map(|(v, x)| format!("`{v}` \u{d7}{}", number(*x))).collect();
            values.push(format!("any other \u{d7}{}", number(w.default)));
            summary.push_str(&format!(
                ", each weighted by the contact's `{}` before it is {}: {}.",
                w.attribute,
                if a.top.is_some() { "ranked" } else { "added" },
                values.join(", ")
            ));
        }
    }
    summary.push_str(&format!(" Breadth counts the account's contacts at {broad} or above."));
    let mut tiers = vec![format!("{}: below every threshold, where accounts start", a.base_tier)];
    tiers.extend(a.tiers.iter().map(|t| account_tier(t, broad)));
    AccountText { summary, tiers }
}

fn account_tier(t: &AccountTier, broad: &str) -> String {
    let mut s = format!("{}: from {}, left below {}", t.name, number(t.enter), number(t.exit));
    match t.min_contacts {
        0 => {}
        1 => s.push_str(&format!(", needs a contact at {broad} or above to enter and to stay")),
        n => s.push_str(&format!(", needs {n} contacts at {broad} or above to enter and to stay")),
    }
    s.push_str(if t.alert { "; crossing it raises an account alert" } else { "; crossing it raises no alert" });
    s
}

fn tier(t: &Tier) -> String {
    let mut s = format!("{}: from {}, left below {}", t.name, number(t.enter), number(t.exit));
    for r in &t.requires {
        s.push_str(&format!(", needs {} of at least {}", r.model_name, number(r.enter)));
    }
    if let Some(c) = t.cooldown_ms {
        s.push_str(&format!(", no repeat alert within {}", duration(c as f64 / 1000.0)));
    }
    s.push_str(if t.alert { "; crossing it alerts sales" } else { "; crossing it raises no alert" });
    s
}

fn event(kind: InteractionKind, when: &Conditions) -> String {
    let name = match kind {
        InteractionKind::Custom => "custom event".to_string(),
        k => k.as_str().replace('_', " "),
    };
    if when.0.is_empty() {
        format!("any {name}")
    } else {
        format!("{name} where {}", conditions(when))
    }
}

fn conditions(when: &Conditions) -> String {
    when.0.iter().map(|(field, c)| condition(&field.replace('_', " "), c)).collect::<Vec<_>>().join(" and ")
}

fn condition(field: &str, c: &Condition) -> String {
    let quote = |s: &str| format!("`{s}`");
    match c {
        Condition::Equals(x) => format!("{field} is {}", quote(x)),
        Condition::OneOf(xs) => {
            format!("{field} is one of {}", xs.iter().map(|x| quote(x)).collect::<Vec<_>>().join(", "))
        }
        Condition::Prefix(x) => format!("{field} starts with {}", quote(x)),
        Condition::Suffix(x) => format!("{field} ends with {}", quote(x)),
        Condition::Contains(x) => format!("{field} contains {}", quote(x)),
        Condition::Regex(r) => format!("{field} matches /{}/", r.as_str()),
        Condition::Gt(n) => format!("{field} is above {}", number(*n)),
        Condition::Gte(n) => format!("{field} is at least {}", number(*n)),
        Condition::Lt(n) => format!("{field} is below {}", number(*n)),
        Condition::Lte(n) => format!("{field} is at most {}", number(*n)),
        Condition::Exists(true) => format!("{field} is given"),
        Condition::Exists(false) => format!("{field} is absent"),
        Condition::Not(c) => format!("not ({})", condition(field, c)),
        Condition::All(cs) => cs.iter().map(|c| condition(field, c)).collect::<Vec<_>>().join(" and "),
    }
}

fn points(p: f64) -> String {
    if p >= 0.0 {
        format!("+{}", number(p))
    } else {
        number(p)
    }
}

fn cap(c: Cap) -> String {
    let per = match c.per {
        super::Window::Day => "a day",
        super::Window::Week => "a week",
        super::Window::Month => "a month",
    };
    match c.limit {
        CapLimit::Hits(n) => format!("at most {n} {per}"),
        CapLimit::Points(p) => format!("at most {} points {per}", number(p)),
    }
}

fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// `14d`, `36h`, `90m` or `45s`: the largest whole unit.
pub fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        _ if s % 86_400 == 0 => format!("{}d", s / 86_400),
        _ if s % 3_600 == 0 => format!("{}h", s / 3_600),
        _ if s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_as_sentences() {
        let rs = RuleSet::parse(
            r#"
models:
  - name: engagement
    half_life: 14d
    tiers:
      - { name: hot, enter: 60, exit: 45, cooldown: 7d, requires: { fit: 30 } }
      - { name: hotter, enter: 90, exit: 80, alert: false }
    rules:
      - { id: pricing-page, when: { kind: page_view, url: { prefix: /pricing } }, points: 10, cap: { hits: 3, per: day } }
      - { id: unsub, when: { kind: email_engagement, action: unsubscribe }, points: -15 }
      - { id: news, when: { kind: form_submission, form_id: [newsletter, news] }, points: 12, once: true }
  - name: fit
    half_life: 365d
    fit:
      - { id: founder, when: { job_title: { regex: "(?i)founder" } }, points: 20 }
"#,
            "t",
        )
        .unwrap();
        let d = describe(&rs);
        assert_eq!(d[0].summary, "Behaviour points that halve every 14d.");
        // 3 pricing views a day at 10 with a 14-day half-life peak at 651.06,
        // plus the newsletter once.
        assert!((d[0].ceiling.unwrap() - 663.06).abs() < 0.01, "{:?}", d[0].ceiling);
        assert_eq!(d[1].ceiling, Some(20.0));
        assert_eq!(d[0].rules[0].text, "page view where url starts with `/pricing`: +10, at most 3 a day");
        assert_eq!(d[0].rules[1].text, "email engagement where action is `unsubscribe`: -15");
        assert_eq!(
            d[0].rules[2].text,
            "form submission where form id is one of `newsletter`, `news`: +12, once per contact"
        );
        assert_eq!(
            d[0].tiers[1],
            "hot: from 60, left below 45, needs fit of at least 30, no repeat alert within 7d; crossing it alerts sales"
        );
        assert!(d[0].tiers[2].ends_with("crossing it raises no alert"), "{}", d[0].tiers[2]);
        assert_eq!(d[1].fit[0].text, "profile where job title matches /(?i)founder/: +20 while it holds");
    }

    #[test]
    fn an_account_roll_up_reads_as_sentences() {
        let rs = RuleSet::parse(
            r#"
models:
  - name: engagement
    half_life: 14d
    base_tier: cold
    tiers: [{ name: warm, enter: 30, exit: 20 }, { name: hot, enter: 60, exit: 45 }]
    rules: [{ id: p, when: { kind: page_view }, points: 2, cap: { hits: 5, per: day } }]
    account:
      top: 3
      weights: { attribute: role, values: { decision_maker: 2, champion: 1.5 }, default: 1 }
      breadth: warm
      tiers:
        - { name: engaged, enter: 80, exit: 60, alert: false }
        - { name: buying, enter: 150, exit: 110, min_contacts: 3 }
  - name: plain
    half_life: 7d
    tiers: [{ name: warm, enter: 30, exit: 20 }]
    rules: [{ id: p, when: { kind: page_view }, points: 2, cap: { hits: 5, per: day } }]
    account:
      tiers: [{ name: engaged, enter: 50, exit: 40, min_contacts: 1 }]
"#,
            "t",
        )
        .unwrap();
        let d = describe(&rs);
        let a = d[0].account.as_ref().unwrap();
        assert_eq!(
            a.summary,
            "Contacts roll up into an account score: the sum of the 3 highest contact scores in this model, \
             a score below zero counting as zero, each weighted by the contact's `role` before it is ranked: \
             `champion` \u{d7}1.5, `decision_maker` \u{d7}2, any other \u{d7}1. Breadth counts the account's \
             contacts at warm or above."
        );
        assert_eq!(
            a.tiers,
            [
                "cold: below every threshold, where accounts start",
                "engaged: from 80, left below 60; crossing it raises no alert",
                "buying: from 150, left below 110, needs 3 contacts at warm or above to enter and to stay; \
                 crossing it raises an account alert",
            ]
        );
        let p = d[1].account.as_ref().unwrap();
        assert_eq!(
            p.summary,
            "Contacts roll up into an account score: the sum of every contact's score in this model, \
             a score below zero counting as zero. Breadth counts the account's contacts at warm or above."
        );
        assert_eq!(p.tiers[1], "engaged: from 50, left below 40, needs a contact at warm or above to enter and to stay; crossing it raises an account alert");
        assert_eq!(p.tiers[0], "cold: below every threshold, where accounts start");
        assert!(serde_json::to_value(&d[0]).unwrap()["account"]["tiers"].is_array());
    }
}
