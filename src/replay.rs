//! `hotlead rules test`: scores events from a JSON lines file offline, with
//! the same code the service runs, so a rules change can be tried first.
//!
//! One event per line:
//!
//! ```json
//! {"event_id": "e1", "contact_id": "c1", "account_id": "acme", "occurred_at": "2026-11-01T09:30:00Z",
//!  "page_view": {"url": "/pricing", "duration_seconds": 40}, "context": {"channel": "email"}}
//! ```
//!
//! `occurred_at` is RFC 3339 text or milliseconds since the Unix epoch. Each
//! event holds exactly one of `page_view`, `form_submission`,
//! `webinar_attendance`, `email_engagement` (`action`: `open`, `click`,
//! `unsubscribe` or `bounce`), `content_download`, `profile_update` or
//! `custom`, with that kind's fields by their protobuf names.
//!
//! A manual adjustment is a line with `adjustment` (`model`, `points`,
//! `reason`, `by`, `reset`), scored as the service scores one:
//!
//! ```json
//! {"event_id": "adj-1", "contact_id": "c1", "occurred_at": "2026-11-02T10:00:00Z",
//!  "adjustment": {"model": "engagement", "points": 15, "reason": "met at trade show", "by": "jane@sales"}}
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use prost::Message as _;
use serde_json::Value as J;

use crate::engine::{self, Message, Source};
use crate::proto::interaction_event::Interaction;
use crate::proto::{self, InteractionEvent, ScoreAlert};
use crate::query::ModelView;
use crate::rules::RuleSet;
use crate::score::Millis;

/// Parses one JSON line into an event.
pub fn parse_event(line: &str) -> Result<InteractionEvent, String> {
    let v: J = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let o = v.as_object().ok_or("an event is a JSON object")?;
    let text = |o: &serde_json::Map<String, J>, k: &str| -> Result<String, String> {
        match o.get(k) {
            None | Some(J::Null) => Ok(String::new()),
            Some(J::String(s)) => Ok(s.clone()),
            Some(J::Number(n)) => Ok(n.to_string()),
            Some(J::Bool(b)) => Ok(b.to_string()),
            Some(_) => Err(format!("`{k}` must be text")),
        }
    };
    let number = |o: &serde_json::Map<String, J>, k: &str| -> Result<u32, String> {
        match o.get(k) {
            None | Some(J::Null) => Ok(0),
            Some(v) => v.as_u64().map(|n| n as u32).ok_or(format!("`{k}` must be a whole number")),
        }
    };
    let map = |o: &serde_json::Map<String, J>, k: &str| -> Result<BTreeMap<String, String>, String> {
        match o.get(k) {
            None | Some(J::Null) => Ok(BTreeMap::new()),
            Some(J::Object(m)) => m.keys().map(|key| Ok((key.clone(), text(m, key)?))).collect(),
            Some(_) => Err(format!("`{k}` must be an object of text values")),
        }
    };
    let occurred_at = match o.get("occurred_at") {
        None | Some(J::Null) => None,
        Some(J::String(s)) => {
            let t = humantime::parse_rfc3339_weak(s).map_err(|e| format!("occurred_at `{s}`: {e}"))?;
            let ms = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| "occurred_at before 1970")?.as_millis();
            Some(crate::decode::timestamp(ms as Millis))
        }
        Some(J::Number(n)) => Some(crate::decode::timestamp(n.as_i64().ok_or("occurred_at must be whole ms")?)),
        Some(_) => return Err("occurred_at must be RFC 3339 text or milliseconds".into()),
    };
    let kinds = [
        "page_view",
        "form_submission",
        "webinar_attendance",
        "email_engagement",
        "content_download",
        "profile_update",
        "custom",
        "identify",
        "erasure",
        "adjustment",
        "promotion",
    ];
    let present: Vec<&str> = kinds.iter().copied().filter(|k| o.contains_key(*k)).collect();
    let interaction = match present.as_slice() {
        [kind] => {
            let b = o[*kind].as_object().ok_or(format!("`{kind}` must be an object"))?;
            Some(match *kind {
                "page_view" => Interaction::PageView(proto::PageView {
                    url: text(b, "url")?,
                    title: text(b, "title")?,
                    duration_seconds: number(b, "duration_seconds")?,
                    referrer: text(b, "referrer")?,
                }),
                "form_submission" => Interaction::FormSubmission(proto::FormSubmission {
                    form_id: text(b, "form_id")?,
                    fields: map(b, "fields")?,
                }),
                "webinar_attendance" => Interaction::WebinarAttendance(proto::WebinarAttendance {
                    webinar_id: text(b, "webinar_id")?,
                    attended: b.get("attended").and_then(J::as_bool).unwrap_or(false),
                    minutes_attended: number(b, "minutes_attended")?,
                }),
                "email_engagement" => {
                    use proto::email_engagement::Action;
                    let name = text(b, "action")?;
                    let action = match name.as_str() {
                        "" => Action::Unspecified,
                        other => Action::from_name(other)
                            .ok_or_else(|| format!("email action `{other}`: use open, click, unsubscribe or bounce"))?,
                    };
                    Interaction::EmailEngagement(proto::EmailEngagement {
                        campaign_id: text(b, "campaign_id")?,
                        action: action as i32,
                        link_url: text(b, "link_url")?,
                    })
                }
                "content_download" => Interaction::ContentDownload(proto::ContentDownload {
                    asset_id: text(b, "asset_id")?,
                    asset_type: text(b, "asset_type")?,
                }),
                "profile_update" => {
                    Interaction::ProfileUpdate(proto::ProfileUpdate { attributes: map(b, "attributes")? })
                }
                "identify" => Interaction::Identify(proto::Identify { contact_id: text(b, "contact_id")? }),
                "erasure" => Interaction::Erasure(proto::Erasure {
                    requested_by: text(b, "requested_by")?,
                    reason: text(b, "reason")?,
                }),
                "adjustment" => Interaction::Adjustment(parse_adjustment(b)?),
                "promotion" => Interaction::Promotion(proto::ModelPromotion {
                    model: text(b, "model")?,
                    replaces: text(b, "replaces")?,
                    announce: b.get("announce").and_then(J::as_bool).unwrap_or(false),
                    requested_by: text(b, "requested_by")?,
                }),
                _ => Interaction::Custom(proto::CustomInteraction {
                    name: text(b, "name")?,
                    properties: map(b, "properties")?,
                }),
            })
        }
        [] => None,
        many => return Err(format!("an event holds one interaction, not {}", many.join(" and "))),
    };
    Ok(InteractionEvent {
        event_id: text(o, "event_id")?,
        contact_id: text(o, "contact_id")?,
        account_id: text(o, "account_id")?,
        occurred_at,
        interaction,
        context: map(o, "context")?,
        origin: None,
    })
}

/// The body of an `adjustment` line: `model`, `points` (a number),
/// `reason`, `by` (text) and `reset` (true or false). Whether they make a
/// valid adjustment is the decoder's to say, as in the service.
fn parse_adjustment(b: &serde_json::Map<String, J>) -> Result<proto::Adjustment, String> {
    let text = |k: &str| match b.get(k) {
        None | Some(J::Null) => Ok(String::new()),
        Some(J::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("adjustment `{k}` must be text")),
    };
    let points = match b.get("points") {
        None | Some(J::Null) => 0.0,
        Some(v) => v.as_f64().ok_or("adjustment `points` must be a number")?,
    };
    let reset = match b.get("reset") {
        None | Some(J::Null) => false,
        Some(v) => v.as_bool().ok_or("adjustment `reset` must be true or false")?,
    };
    Ok(proto::Adjustment { model: text("model")?, points, reason: text("reason")?, by: text("by")?, reset })
}

/// One event as a JSON line, the inverse of [`parse_event`].
pub fn to_json(e: &InteractionEvent) -> String {
    use serde_json::json;
    let mut o = serde_json::Map::new();
    o.insert("event_id".into(), json!(e.event_id));
    o.insert("contact_id".into(), json!(e.contact_id));
    if !e.account_id.is_empty() {
        o.insert("account_id".into(), json!(e.account_id));
    }
    if let Some(t) = &e.occurred_at {
        o.insert("occurred_at".into(), json!(crate::decode::millis(t)));
    }
    let (kind, body) = match &e.interaction {
        Some(Interaction::PageView(p)) => (
            "page_view",
            json!({"url": p.url, "title": p.title, "duration_seconds": p.duration_seconds, "referrer": p.referrer}),
        ),
        Some(Interaction::FormSubmission(f)) => ("form_submission", json!({"form_id": f.form_id, "fields": f.fields})),
        Some(Interaction::WebinarAttendance(w)) => (
            "webinar_attendance",
            json!({"webinar_id": w.webinar_id, "attended": w.attended, "minutes_attended": w.minutes_attended}),
        ),
        Some(Interaction::EmailEngagement(m)) => {
            let action = proto::email_engagement::Action::name_of(m.action);
            ("email_engagement", json!({"campaign_id": m.campaign_id, "action": action, "link_url": m.link_url}))
        }
        Some(Interaction::ContentDownload(d)) => {
            ("content_download", json!({"asset_id": d.asset_id, "asset_type": d.asset_type}))
        }
        Some(Interaction::ProfileUpdate(p)) => ("profile_update", json!({"attributes": p.attributes})),
        Some(Interaction::Custom(c)) => ("custom", json!({"name": c.name, "properties": c.properties})),
        Some(Interaction::Identify(i)) => ("identify", json!({"contact_id": i.contact_id})),
        Some(Interaction::Erasure(e)) => ("erasure", json!({"requested_by": e.requested_by, "reason": e.reason})),
        Some(Interaction::Promotion(p)) => (
            "promotion",
            json!({"model": p.model, "replaces": p.replaces, "announce": p.announce, "requested_by": p.requested_by}),
        ),
        // hotlead's own record, never in a file of events.
        Some(Interaction::VisitorMerge(_)) | None => ("", J::Null),
        Some(Interaction::Adjustment(a)) => (
            "adjustment",
            json!({"model": a.model, "points": a.points, "reason": a.reason, "by": a.by, "reset": a.reset}),
        ),
    };
    if !kind.is_empty() {
        o.insert(kind.into(), body);
    }
    if !e.context.is_empty() {
        o.insert("context".into(), json!(e.context));
    }
    J::Object(o).to_string()
}

/// The result of a replay.
#[derive(Debug, Default)]
pub struct Report {
    /// Per contact, each model's score, tier and breakdown at the contact's
    /// latest event in the model.
    pub contacts: BTreeMap<String, Vec<ModelView>>,
    /// Alerts, in the order they were raised.
    pub alerts: Vec<ScoreAlert>,
    /// Events that would be dead-lettered: line number and reason.
    pub rejected: Vec<(usize, String)>,
    /// Per account, each account model's standing at the account's time
    /// (its latest contribution), as the account stage holds it.
    pub accounts: BTreeMap<String, Vec<AccountResult>>,
    /// Account alerts, in the order raised.
    pub account_alerts: Vec<crate::proto::AccountAlert>,
}

/// An account's standing in one model, in a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountResult {
    /// The model.
    pub model: String,
    /// Account score at `at_ms`.
    pub score: f64,
    /// Account tier.
    pub tier: String,
    /// Contacts at or above the breadth tier.
    pub breadth: u32,
    /// The account's time.
    pub at_ms: Millis,
    /// Its contacts, largest part first: (contact, weighted value, counted).
    pub contacts: Vec<(String, f64, bool)>,
}

/// Scores events in order, as one partition of the service would. What the
/// service sends to another contact's partition (an identified visitor's
/// state and later events) is scored right after the event that sent it.
/// Contacts' contributions to their accounts are rolled up as the account
/// stage does, each right after the event that made it (the order the
/// service applies them in when the events arrive in the file's order).
/// Shadow models' crossings carry `shadow`; a `promotion` line switches
/// roles from there on.
pub fn replay(rules: &RuleSet, events: &[InteractionEvent]) -> Report {
    replay_in(rules, &mut engine::Lane::live(rules), events)
}

/// [`replay`] in a lane (a back-fill's shadow lane: every model a shadow).
pub fn replay_in(rules: &RuleSet, lane: &mut engine::Lane, events: &[InteractionEvent]) -> Report {
    let limits = crate::decode::Limits { max_future_skew_ms: i64::MAX / 2, ..Default::default() };
    let now = crate::decode::now_ms();
    let source = Source { topic: "rules-test", partition: 0 };
    let decode = |offset: i64, e: &InteractionEvent| {
        let payload = e.encode_to_vec();
        Message::decode(offset, Some(e.contact_id.as_bytes()), Some(&payload), &limits, now)
    };
    let mut known: std::collections::HashMap<String, engine::Contact> = Default::default();
    let mut accounts: BTreeMap<String, crate::account::AccountState> = BTreeMap::new();
    let mut report = Report::default();
    // Records sent on are numbered after the file's lines.
    let mut next = events.len() as i64;
    for (i, e) in events.iter().enumerate() {
        let mut pending = std::collections::VecDeque::from([decode(i as i64, e)]);
        while let Some(m) = pending.pop_front() {
            let id = m.event.as_ref().map(|v| v.event.contact_id.clone()).ok();
            let mine = id.and_then(|id| Some((id.clone(), known.remove(&id)?))).into_iter().collect();
            let fx = engine::score_batch_in(rules, source, lane, [m], mine, engine::Dedup::default());
            report.alerts.extend(fx.alerts);
            report
                .rejected
                .extend(fx.dead_letters.iter().map(|d| (d.offset as usize + 1, d.rejected.error.to_string())));
            for f in &fx.forwards {
                pending.push_back(decode(next, f));
                next += 1;
            }
            // A shadow lane sends none (the live service does).
            for c in fx.contributions.iter().filter(|_| lane.name.is_empty()) {
                let st = accounts.entry(c.account_id.clone()).or_default();
                crate::account::apply(rules, &c.account_id, st, c, &mut report.account_alerts);
            }
            known.extend(fx.contacts);
        }
    }
    for (id, contact) in known {
        if contact.erased || contact.state.links.into.is_some() {
            continue;
        }
        // At `Millis::MIN`, each model is seen at its own latest event.
        report.contacts.insert(id, crate::query::model_views(rules, &contact.state, Millis::MIN));
    }
    for (id, st) in accounts {
        let results = crate::account::models(rules)
            .map(|(m, r)| {
                let s = crate::account::standing(m, r, &st, st.at);
                AccountResult {
                    model: m.name.clone(),
                    score: s.score,
                    tier: r.tier_name(st.tier(m, r)).to_string(),
                    breadth: s.breadth,
                    at_ms: st.at,
                    contacts: s.shares.iter().map(|x| (x.contact.clone(), x.value, x.counted)).collect(),
                }
            })
            .collect();
        report.accounts.insert(id, results);
    }
    report
}

/// The report as readable text.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for (line, reason) in &report.rejected {
        let _ = writeln!(out, "line {line}: would be dead-lettered: {reason}");
    }
    let _ = writeln!(out, "{:<24} {:<16} {:>10}  {:<12} breakdown", "contact", "model", "score", "tier");
    for (contact, results) in &report.contacts {
        for r in results {
            let parts: Vec<String> = r.breakdown.iter().map(|(k, p)| format!("{k} {p:.2}")).collect();
            let _ =
                writeln!(out, "{:<24} {:<16} {:>10.3}  {:<12} {}", contact, r.model, r.score, r.tier, parts.join(", "));
        }
    }
    let _ = writeln!(out, "\ncrossings ({}):", report.alerts.len());
    for a in &report.alerts {
        let _ = writeln!(out, "  {}", crate::kafka::format_alert(a));
    }
    if report.accounts.is_empty() {
        return out;
    }
    let _ =
        writeln!(out, "\n{:<24} {:<16} {:>10}  {:<12} {:>7}  contacts", "account", "model", "score", "tier", "breadth");
    for (account, results) in &report.accounts {
        for r in results {
            let parts: Vec<String> = r
                .contacts
                .iter()
                .map(|(c, v, counted)| format!("{c} {v:.2}{}", if *counted { "" } else { " (not in top)" }))
                .collect();
            let _ = writeln!(
                out,
                "{:<24} {:<16} {:>10.3}  {:<12} {:>7}  {}",
                account,
                r.model,
                r.score,
                r.tier,
                r.breadth,
                parts.join(", ")
            );
        }
    }
    let _ = writeln!(out, "\naccount crossings ({}):", report.account_alerts.len());
    for a in &report.account_alerts {
        let _ = writeln!(out, "  {}", crate::kafka::format_account_alert(a));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_rejects_mistakes() {
        let e = parse_event(
            r#"{"event_id":"e1","contact_id":"c1","occurred_at":"2026-11-01T09:30:00Z","email_engagement":{"action":"click"},"context":{"channel":"email"}}"#,
        )
        .unwrap();
        assert_eq!(e.occurred_at.unwrap().seconds, 1_793_525_400);
        assert!(matches!(e.interaction, Some(Interaction::EmailEngagement(ref x)) if x.action == 2));
        assert_eq!(e.context["channel"], "email");
        let e = parse_event(
            r#"{"contact_id":"c1","occurred_at":1000,"profile_update":{"attributes":{"job_title":"CTO"}}}"#,
        )
        .unwrap();
        assert!(matches!(e.interaction, Some(Interaction::ProfileUpdate(ref p)) if p.attributes["job_title"] == "CTO"));
        assert!(parse_event(r#"{"contact_id":"c","page_view":{},"custom":{}}"#)
            .unwrap_err()
            .contains("one interaction"));
        assert!(parse_event(r#"{"contact_id":"c","email_engagement":{"action":"read"}}"#)
            .unwrap_err()
            .contains("read"));
        assert!(parse_event("nope").unwrap_err().contains("JSON"));
    }

    #[test]
    fn json_lines_round_trip_simulated_events() {
        let mut sim = crate::simulate::Simulator::new(&crate::simulate::SimConfig::default());
        for i in 0..500 {
            let e = sim.next_event(1_760_000_000_000 + i * 1000);
            assert_eq!(parse_event(&to_json(&e)).unwrap(), e);
        }
    }

    #[test]
    fn adjustments_parse_round_trip_and_score_as_in_the_service() {
        let line = r#"{"event_id":"adj-1","contact_id":"c","occurred_at":"2026-11-02T00:00:00Z","adjustment":{"model":"m","points":12.5,"reason":"met at trade show","by":"jane@sales","reset":true}}"#;
        let e = parse_event(line).unwrap();
        let Some(Interaction::Adjustment(a)) = &e.interaction else { panic!("{e:?}") };
        assert_eq!(
            (a.model.as_str(), a.points, a.reason.as_str(), a.by.as_str(), a.reset),
            ("m", 12.5, "met at trade show", "jane@sales", true)
        );
        assert_eq!(parse_event(&to_json(&e)).unwrap(), e);
        assert!(parse_event(r#"{"contact_id":"c","adjustment":{"model":"m","points":"ten"}}"#)
            .unwrap_err()
            .contains("points"));

        let rules = RuleSet::parse(
            "models: [{name: m, half_life: 1d, tiers: [{name: warm, enter: 20, exit: 10}], rules: [{id: p, when: {kind: page_view}, points: 10}]}]",
            "t",
        )
        .unwrap();
        let lines = [
            r#"{"event_id":"1","contact_id":"c","occurred_at":"2026-11-01T00:00:00Z","page_view":{"url":"/pricing"}}"#,
            r#"{"event_id":"2","contact_id":"c","occurred_at":"2026-11-01T00:00:00Z","adjustment":{"model":"m","points":15,"reason":"met at trade show"}}"#,
            r#"{"event_id":"3","contact_id":"c","occurred_at":"2026-11-02T00:00:00Z","adjustment":{"model":"nope","points":15,"reason":"x"}}"#,
            r#"{"event_id":"4","contact_id":"c","occurred_at":"2026-11-02T00:00:00Z","adjustment":{"model":"m","points":15}}"#,
        ];
        let events: Vec<_> = lines.iter().map(|l| parse_event(l).unwrap()).collect();
        let r = replay(&rules, &events);
        let m = &r.contacts["c"][0];
        assert_eq!(m.score, 12.5, "25 a day ago, halved; the unknown model changes nothing");
        assert_eq!(m.breakdown[0], ("adjustment:met at trade show".to_string(), 7.5));
        assert_eq!(r.alerts.len(), 1);
        assert_eq!(r.alerts[0].trigger_event_id, "2");
        assert_eq!(r.rejected, [(4, "invalid adjustment: reason is missing".to_string())]);
        assert!(render(&r).contains("adjustment:met at trade show 7.50"));
    }

    #[test]
    fn replay_rolls_accounts_up_as_the_account_stage_does() {
        let rules = RuleSet::parse(
            "models:
  - name: m
    half_life: 1d
    tiers: [{name: warm, enter: 20, exit: 10}]
    rules: [{id: p, when: {kind: page_view}, points: 20}]
    account: {tiers: [{name: buying, enter: 50, exit: 30, min_contacts: 3}]}",
            "t",
        )
        .unwrap();
        let line = |id: &str, c: &str, a: &str, at: &str| {
            format!(
                r#"{{"event_id":"{id}","contact_id":"{c}","account_id":"{a}","occurred_at":"{at}","page_view":{{}}}}"#
            )
        };
        let lines = [
            line("1", "x", "acme", "2026-11-01T00:00:00Z"),
            line("2", "y", "acme", "2026-11-01T00:00:00Z"),
            line("3", "z", "acme", "2026-11-01T00:00:00Z"),
            // z moves to globex: acme falls under three contacts.
            line("4", "z", "globex", "2026-11-01T12:00:00Z"),
            // An older event naming acme again does not move z back.
            line("5", "z", "acme", "2026-10-31T00:00:00Z"),
        ];
        let events: Vec<_> = lines.iter().map(|l| parse_event(l).unwrap()).collect();
        let r = replay(&rules, &events);
        let seen: Vec<(&str, &str, &str)> = r
            .account_alerts
            .iter()
            .map(|a| (a.account_id.as_str(), a.tier.as_str(), a.trigger_event_id.as_str()))
            .collect();
        assert_eq!(seen, [("acme", "buying", "3"), ("acme", "cold", "4")]);
        let acme = &r.accounts["acme"][0];
        assert_eq!((acme.breadth, acme.contacts.len()), (2, 2));
        assert_eq!(r.accounts["globex"][0].contacts[0].0, "z");
        assert!(render(&r).contains("account crossings (2)"));
    }

    #[test]
    fn replay_scores_and_reports_crossings() {
        let rules = RuleSet::parse(
            "models: [{name: m, half_life: 1d, tiers: [{name: warm, enter: 20, exit: 10}], rules: [{id: p, when: {kind: page_view, url: {prefix: /pricing}}, points: 10}]}]",
            "t",
        )
        .unwrap();
        let lines = [
            r#"{"event_id":"1","contact_id":"c","occurred_at":"2026-11-01T00:00:00Z","page_view":{"url":"/pricing"}}"#,
            r#"{"event_id":"2","contact_id":"c","occurred_at":"2026-11-02T00:00:00Z","page_view":{"url":"/pricing/x"}}"#,
            r#"{"event_id":"3","contact_id":"c","occurred_at":"2026-11-02T00:00:00Z","page_view":{"url":"/pricing"}}"#,
            r#"{"event_id":"4","occurred_at":"2026-11-02T00:00:00Z","page_view":{"url":"/pricing"}}"#,
        ];
        let events: Vec<_> = lines.iter().map(|l| parse_event(l).unwrap()).collect();
        let r = replay(&rules, &events);
        assert_eq!(r.contacts["c"][0].score, 25.0);
        assert_eq!(r.contacts["c"][0].tier, "warm");
        assert_eq!(r.alerts.len(), 1);
        assert_eq!(r.alerts[0].trigger_event_id, "3");
        assert_eq!(r.rejected.len(), 1);
        assert_eq!(r.rejected[0].0, 4);
        assert!(render(&r).contains("warm"));
    }
}
