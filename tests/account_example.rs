//! The worked example of docs/rules.md, "Account models": three contacts of
//! one account on a 14-day model, computed with the account roll-up itself
//! ([`hotlead::account`]). The rules are the doc's own YAML block and every
//! number the doc prints is asserted here, so the doc cannot drift.

use std::collections::BTreeMap;

use hotlead::account::{apply, cool_until, cooling_due, standing, AccountState, Applied};
use hotlead::proto::{score_alert, AccountAlert, AccountContribution, ContactPart};
use hotlead::rules::RuleSet;

const DAY: i64 = 86_400_000;
/// Monday 2 March 2026, 09:00 UTC.
const T0: i64 = 1_772_442_000_000;

/// The section of docs/rules.md on account models.
fn section() -> String {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/rules.md")).unwrap();
    let start = text.find("## Account models").expect("docs/rules.md has an Account models section");
    let rest = &text[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    rest[..end].to_string()
}

/// The doc's example rules: the first YAML block of its worked example.
fn rules(doc: &str) -> RuleSet {
    let example = &doc[doc.find("### Worked example").unwrap()..];
    let yaml = example.split("```yaml\n").nth(1).unwrap().split("```").next().unwrap();
    RuleSet::parse(yaml, "docs/rules.md").unwrap()
}

/// What the contact stage sends for a contact's event: its behaviour
/// points at the event, its tier, its role.
fn contribution(
    contact: &str,
    role: &str,
    partition: i32,
    offset: i64,
    at: i64,
    b: f64,
    tier: &str,
) -> AccountContribution {
    AccountContribution {
        account_id: "acme".into(),
        contact_id: contact.into(),
        topic: "interactions".into(),
        partition,
        offset,
        event_id: format!("{contact}-{offset}"),
        occurred_at: Some(hotlead::decode::timestamp(at)),
        left: false,
        parts: vec![ContactPart { model: "engagement".into(), behaviour: b, at_ms: at, fit: 0.0, tier: tier.into() }],
        attributes: BTreeMap::from([("role".to_string(), role.to_string())]),
        erased: false,
    }
}

fn says(doc: &str, what: &str) {
    assert!(doc.contains(what), "docs/rules.md's account example should say `{what}`");
}

/// `x` as the doc prints it: two decimals.
fn two(x: f64) -> String {
    format!("{x:.2}")
}

#[test]
fn the_account_example_in_the_docs_is_what_the_roll_up_computes() {
    let doc = section();
    let rules = rules(&doc);
    let model = &rules.models[0];
    let rollup = model.account.as_ref().unwrap();
    let at = |st: &AccountState, t: i64| standing(model, rollup, st, t);
    let value =
        |st: &AccountState, t: i64, who: &str| at(st, t).shares.iter().find(|s| s.contact == who).unwrap().value;
    let mut st = AccountState::default();
    let mut alerts: Vec<AccountAlert> = Vec::new();

    // 2 March 09:00: ana alone makes the account engaged, silently.
    apply(&rules, "acme", &mut st, &contribution("ana", "champion", 0, 41, T0, 100.0, "hot"), &mut alerts);
    says(&doc, &format!("100 × 1.5 =\n  {}", two(at(&st, T0).score)));
    assert_eq!(st.tiers["engagement"], "engaged");
    assert!(alerts.is_empty(), "engaged says alert: false");

    // 3 March 09:00: ben; ana has decayed a day.
    let t1 = T0 + DAY;
    apply(&rules, "acme", &mut st, &contribution("ben", "decision_maker", 1, 17, t1, 40.0, "warm"), &mut alerts);
    let ana = at(&st, t1).shares.iter().find(|s| s.contact == "ana").unwrap().score;
    says(&doc, &format!("100 × 2^(-1/14) = {}, worth {}", two(ana), two(value(&st, t1, "ana"))));
    says(&doc, &format!("40 × 2 = {}", two(value(&st, t1, "ben"))));
    says(&doc, &format!("account score is {}", two(at(&st, t1).score)));
    assert!(alerts.is_empty() && at(&st, t1).score < 250.0);

    // 4 March 09:00: cy; three contacts at warm or above, over 250.
    let t2 = T0 + 2 * DAY;
    let cy = contribution("cy", "user", 2, 8, t2, 80.0, "hot");
    apply(&rules, "acme", &mut st, &cy, &mut alerts);
    let s = at(&st, t2);
    says(
        &doc,
        &format!(
            "ana is worth {}, ben {}\n  ({} × 2), cy {} (80 × 0.5): {}",
            two(value(&st, t2, "ana")),
            two(value(&st, t2, "ben")),
            two(s.shares.iter().find(|x| x.contact == "ben").unwrap().score),
            two(value(&st, t2, "cy")),
            two(s.score)
        ),
    );
    assert_eq!(s.breadth, 3);
    assert_eq!(alerts.len(), 1);
    let heated = &alerts[0];
    assert_eq!(heated.direction, score_alert::Direction::Heated as i32);
    assert_eq!((heated.previous_tier.as_str(), heated.tier.as_str()), ("engaged", "buying"));
    assert_eq!((heated.threshold, heated.breadth, heated.trigger_contact_id.as_str()), (250.0, 3, "cy"));
    says(&doc, &format!("`score` {}", two(heated.score)));
    let shares: Vec<String> =
        heated.drivers.iter().map(|d| format!("{} ({:.1} %", d.contact_id, d.share * 100.0)).collect();
    assert_eq!(heated.drivers.len(), 3);
    for d in &shares {
        says(&doc, d);
    }
    // Only two at warm or above: the same score would not enter buying.
    let mut two_warm = AccountState::default();
    let mut none = vec![];
    for c in [
        contribution("ana", "champion", 0, 41, T0, 100.0, "hot"),
        contribution("ben", "decision_maker", 1, 17, t1, 40.0, "warm"),
        contribution("cy", "user", 2, 8, t2, 80.0, "cold"),
    ] {
        apply(&rules, "acme", &mut two_warm, &c, &mut none);
    }
    assert_eq!(two_warm.tiers["engagement"], "engaged");

    // The same event again changes nothing.
    let before = st.clone();
    assert_eq!(apply(&rules, "acme", &mut st, &cy, &mut alerts), Applied::Repeat);
    assert_eq!((st == before, alerts.len()), (true, 1));

    // 8 March: between buying's exit and enter, still buying.
    let t6 = T0 + 6 * DAY;
    says(&doc, &format!("On **8 March 09:00** it is\n  {}", two(at(&st, t6).score)));
    let mut quiet = vec![];
    cool_until(&rules, "acme", &mut st.clone(), t6, &mut quiet);
    assert!(quiet.is_empty());

    // The exact millisecond it cools out of buying.
    let due = cooling_due(model, rollup, &st).unwrap();
    let exact = t2 as f64 + 14.0 * DAY as f64 * (s.score / 180.0).log2();
    assert_eq!(due, exact.ceil() as i64);
    assert!(at(&st, due - 1).score >= 180.0 && at(&st, due).score < 180.0);
    says(&doc, &format!("**{}**", hotlead::history::rfc3339(due)));
    let mut cooled = vec![];
    cool_until(&rules, "acme", &mut st, due, &mut cooled);
    assert_eq!(cooled.len(), 1);
    let c = &cooled[0];
    assert_eq!(c.direction, score_alert::Direction::Cooled as i32);
    assert_eq!((c.previous_tier.as_str(), c.tier.as_str(), c.threshold, c.breadth), ("buying", "engaged", 180.0, 3));
    assert_eq!((c.trigger_contact_id.as_str(), hotlead::decode::millis(c.crossed_at.as_ref().unwrap())), ("", due));

    // 17 March: ben leaves warm, breadth 2; then engaged ends silently.
    let ben_leaves = T0 + 15 * DAY;
    assert_eq!((at(&st, ben_leaves - 1).breadth, at(&st, ben_leaves + 1).breadth), (3, 2));
    let mut later = vec![];
    cool_until(&rules, "acme", &mut st, due + 40 * DAY, &mut later);
    assert!(later.is_empty(), "engaged says alert: false");
    assert!(st.tiers.is_empty(), "back in the base tier");
    says(&doc, &format!("falls under 80, at {},", hotlead::history::rfc3339(st.at)));
    assert!(at(&st, st.at - 1).score >= 80.0 && at(&st, st.at).score < 80.0);
}
