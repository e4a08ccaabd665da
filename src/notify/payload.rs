//! What every destination says about an alert: the alert in JSON, its
//! explanation in words, and links to the board and the read API. Pure:
//! the destination modules put these into their own formats.

use serde_json::{json, Value};

use crate::proto::{score_alert::Direction, ScoreAlert};

/// Links for one contact, from `notify.links_base_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    /// The hot-leads board opened on the lead: `<base>/board#lead=<id>`.
    pub board: String,
    /// The read API's view of the contact: `<base>/v1/contacts/<id>`.
    pub contact: String,
}

impl Links {
    /// The links for `contact_id` under `base` (no trailing slash needed).
    pub fn new(base: &str, contact_id: &str) -> Self {
        let base = base.trim_end_matches('/');
        let id = percent_encode(contact_id);
        Self { board: format!("{base}/board#lead={id}"), contact: format!("{base}/v1/contacts/{id}") }
    }
}

/// Escapes everything but unreserved URL characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `heated` or `cooled` (or `unspecified`).
pub fn direction(alert: &ScoreAlert) -> &'static str {
    match Direction::try_from(alert.direction) {
        Ok(Direction::Heated) => "heated",
        Ok(Direction::Cooled) => "cooled",
        _ => "unspecified",
    }
}

/// The crossing time as RFC 3339 (UTC, milliseconds), or empty if unset.
pub fn crossed_at(alert: &ScoreAlert) -> String {
    alert
        .crossed_at
        .as_ref()
        .and_then(|t| {
            let ms = t.seconds.checked_mul(1000)?.checked_add(i64::from(t.nanos) / 1_000_000)?;
            let at = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(u64::try_from(ms).ok()?))?;
            Some(humantime::format_rfc3339_millis(at).to_string())
        })
        .unwrap_or_default()
}

/// The contact, with its account in parentheses when it has one.
pub fn who(alert: &ScoreAlert) -> String {
    match alert.account_id.as_str() {
        "" => alert.contact_id.clone(),
        account => format!("{} ({account})", alert.contact_id),
    }
}

/// One sentence: who crossed what, with which score.
pub fn summary(a: &ScoreAlert) -> String {
    let verb = if direction(a) == "cooled" { "cooled to" } else { "is now" };
    let cmp = if a.score >= a.threshold { "≥" } else { "<" };
    let tier = &a.tier;
    format!(
        "{} {verb} {tier} in {}: {} → {tier}, score {:.1} {cmp} {}",
        who(a),
        a.model,
        a.previous_tier,
        a.score,
        a.threshold
    )
}

/// The top reasons as `rule points` pairs, largest first, at most `n`.
pub fn reasons(alert: &ScoreAlert, n: usize) -> Vec<String> {
    alert.top_contributions.iter().take(n).map(|c| format!("{} {:.1}", c.rule_id, c.points)).collect()
}

/// The alert as JSON, field names as in `alerts.proto`.
pub fn alert_json(alert: &ScoreAlert) -> Value {
    json!({
        "alert_id": alert.alert_id,
        "contact_id": alert.contact_id,
        "account_id": alert.account_id,
        "model": alert.model,
        "model_version": alert.model_version,
        "direction": direction(alert),
        "tier": alert.tier,
        "previous_tier": alert.previous_tier,
        "score": alert.score,
        "threshold": alert.threshold,
        "crossed_at": crossed_at(alert),
        "trigger_event_id": alert.trigger_event_id,
        "top_contributions": alert.top_contributions.iter()
            .map(|c| json!({"rule_id": c.rule_id, "points": c.points}))
            .collect::<Vec<_>>(),
        "historical": alert.historical,
    })
}

/// The webhook body: the alert, its explanation, links, and the routes
/// that sent it.
pub fn webhook_body(alert: &ScoreAlert, links: &Links, routes: &[String]) -> Value {
    let total: f64 = alert.top_contributions.iter().map(|c| c.points.max(0.0)).sum();
    let contributions: Vec<Value> = alert
        .top_contributions
        .iter()
        .map(|c| {
            let share = if total > 0.0 { (c.points.max(0.0) / total * 1000.0).round() / 1000.0 } else { 0.0 };
            json!({"rule_id": c.rule_id, "points": c.points, "share": share})
        })
        .collect();
    json!({
        "type": "hotlead.score_alert",
        "alert": alert_json(alert),
        "explanation": {"summary": summary(alert), "contributions": contributions},
        "links": {"board": links.board, "contact": links.contact},
        "routes": routes,
    })
}

/// Alerts for the tests of the notify modules.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::proto::{score_alert::Direction, Contribution, ScoreAlert};

    /// `contact` (in `account`) heated from warm to hot in `engagement`,
    /// 62.0 ≥ 60, with `reasons` contributions `<rule>0` 30.0, `<rule>1`
    /// 15.0, ... halving.
    pub fn alert(contact: &str, account: &str, reasons: usize, rule: &str) -> ScoreAlert {
        ScoreAlert {
            alert_id: format!("engagement:{contact}:hot"),
            contact_id: contact.into(),
            account_id: account.into(),
            model: "engagement".into(),
            model_version: 1,
            direction: Direction::Heated as i32,
            tier: "hot".into(),
            previous_tier: "warm".into(),
            score: 62.0,
            threshold: 60.0,
            crossed_at: Some(crate::decode::timestamp(1_767_268_800_123)),
            trigger_event_id: "e-9".into(),
            top_contributions: (0..reasons)
                .map(|i| Contribution { rule_id: format!("{rule}{i}"), points: 30.0 * 0.5f64.powi(i as i32) })
                .collect(),
            historical: false,
            shadow: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_body_carries_alert_explanation_and_links() {
        let links = Links::new("http://board.example:9464/", "c 17/x");
        assert_eq!(links.board, "http://board.example:9464/board#lead=c%2017%2Fx");
        assert_eq!(links.contact, "http://board.example:9464/v1/contacts/c%2017%2Fx");
        let a = fixtures::alert("c-17", "acct-17", 2, "rule-");
        let body = webhook_body(&a, &Links::new("http://h", "c-17"), &["hot".to_string()]);
        assert_eq!(body["alert"]["alert_id"], "engagement:c-17:hot");
        assert_eq!(body["alert"]["direction"], "heated");
        assert_eq!(body["alert"]["crossed_at"], "2026-01-01T12:00:00.123Z");
        assert_eq!(body["alert"]["historical"], false);
        assert_eq!(body["alert"]["top_contributions"][1]["points"], 15.0);
        assert_eq!(
            body["explanation"]["summary"],
            "c-17 (acct-17) is now hot in engagement: warm → hot, score 62.0 ≥ 60"
        );
        assert_eq!(body["explanation"]["contributions"][0]["share"], 0.667);
        assert_eq!(body["links"]["board"], "http://h/board#lead=c-17");
        assert_eq!(body["routes"][0], "hot");
    }
}
