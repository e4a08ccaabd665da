//! The Slack-compatible incoming-webhook message: Block Kit blocks saying
//! who, which tier, the score, the top reasons and a link to the board, and
//! a plain `text` summary that notifications, Mattermost and older clients
//! show.
//!
//! Invariant: whatever the alert holds (long ids, many reasons), the
//! message stays within Block Kit's limits ([`check_limits`]); long text is
//! cut with an ellipsis.

use serde_json::{json, Value};

use super::payload::{self, Links};
use crate::proto::ScoreAlert;

/// Block Kit limits this message is held to.
pub mod limits {
    /// Blocks per message.
    pub const BLOCKS: usize = 50;
    /// Characters of a header block's text.
    pub const HEADER_TEXT: usize = 150;
    /// Characters of a section block's text.
    pub const SECTION_TEXT: usize = 3000;
    /// Fields of a section block.
    pub const SECTION_FIELDS: usize = 10;
    /// Characters of one section field.
    pub const FIELD_TEXT: usize = 2000;
    /// Characters of a button's text.
    pub const BUTTON_TEXT: usize = 75;
    /// Characters of a button's URL.
    pub const BUTTON_URL: usize = 3000;
    /// Elements of a context block.
    pub const CONTEXT_ELEMENTS: usize = 10;
    /// Elements of an actions block.
    pub const ACTION_ELEMENTS: usize = 25;
    /// Characters of the top-level `text` Slack shows in full.
    pub const MESSAGE_TEXT: usize = 4000;
    /// Characters of a `block_id`.
    pub const BLOCK_ID: usize = 255;
}

/// How many reasons the message lists.
const REASONS: usize = 5;

/// `s` cut to at most `max` characters, ending in `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Escapes the three characters Slack's mrkdwn treats as control.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The incoming-webhook message for `alert`.
pub fn message(alert: &ScoreAlert, links: &Links) -> Value {
    use limits::*;
    let icon = if payload::direction(alert) == "cooled" { "🧊" } else { "🔥" };
    let header = truncate(&format!("{icon} {} is {} in {}", payload::who(alert), alert.tier, alert.model), HEADER_TEXT);
    let field = |label: &str, value: &str| json!({"type": "mrkdwn", "text": truncate(&format!("*{label}*\n{}", escape(value)), FIELD_TEXT)});
    let cmp = if alert.score >= alert.threshold { "≥" } else { "<" };
    let mut fields = vec![
        field("Contact", &alert.contact_id),
        field("Account", if alert.account_id.is_empty() { "—" } else { &alert.account_id }),
        field("Tier", &format!("{} → {}", alert.previous_tier, alert.tier)),
        field("Score", &format!("{:.1} ({cmp} {})", alert.score, alert.threshold)),
    ];
    if alert.historical {
        fields.push(field("Note", "historical: the crossing happened a while ago"));
    }
    let reasons: Vec<String> = payload::reasons(alert, REASONS).iter().map(|r| format!("• {}", escape(r))).collect();
    let why = if reasons.is_empty() { "_no rule contributions recorded_".to_string() } else { reasons.join("\n") };
    let crossed = payload::crossed_at(alert);
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": header, "emoji": true}}),
        json!({"type": "section", "fields": fields}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*Why*\n{why}"), SECTION_TEXT)}}),
    ];
    if links.board.len() <= BUTTON_URL {
        blocks.push(json!({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open in the board"}, "url": links.board},
        ]}));
    }
    blocks.push(json!({"type": "context", "elements": [
        {"type": "mrkdwn", "text": truncate(&escape(&format!("alert {} · crossed {crossed} · model v{}", alert.alert_id, alert.model_version)), SECTION_TEXT)},
    ]}));
    let text = truncate(
        &format!(
            "{icon} {} · why: {} · {}",
            payload::summary(alert),
            payload::reasons(alert, REASONS).join(", "),
            links.board
        ),
        MESSAGE_TEXT,
    );
    json!({"text": text, "blocks": blocks})
}

/// Every way `message` breaks Block Kit's limits; empty when it fits.
pub fn check_limits(message: &Value) -> Vec<String> {
    use limits::*;
    let mut problems = Vec::new();
    let chars = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
    let over = |problems: &mut Vec<String>, what: String, len: usize, max: usize| {
        if len > max {
            problems.push(format!("{what}: {len} > {max}"));
        }
    };
    over(&mut problems, "text".into(), chars(&message["text"]), MESSAGE_TEXT);
    let blocks = message["blocks"].as_array().cloned().unwrap_or_default();
    over(&mut problems, "blocks".into(), blocks.len(), BLOCKS);
    for (i, b) in blocks.iter().enumerate() {
        let at = |f: &str| format!("blocks[{i}].{f}");
        over(&mut problems, at("block_id"), chars(&b["block_id"]), BLOCK_ID);
        match b["type"].as_str() {
            Some("header") => over(&mut problems, at("text"), chars(&b["text"]["text"]), HEADER_TEXT),
            Some("section") => {
                over(&mut problems, at("text"), chars(&b["text"]["text"]), SECTION_TEXT);
                let fields = b["fields"].as_array().cloned().unwrap_or_default();
                over(&mut problems, at("fields"), fields.len(), SECTION_FIELDS);
                for (j, f) in fields.iter().enumerate() {
                    over(&mut problems, at(&format!("fields[{j}]")), chars(&f["text"]), FIELD_TEXT);
                }
            }
            Some("actions") => {
                let elements = b["elements"].as_array().cloned().unwrap_or_default();
                over(&mut problems, at("elements"), elements.len(), ACTION_ELEMENTS);
                for (j, e) in elements.iter().enumerate() {
                    over(&mut problems, at(&format!("elements[{j}].text")), chars(&e["text"]["text"]), BUTTON_TEXT);
                    over(&mut problems, at(&format!("elements[{j}].url")), chars(&e["url"]), BUTTON_URL);
                }
            }
            Some("context") => {
                let elements = b["elements"].as_array().cloned().unwrap_or_default();
                over(&mut problems, at("elements"), elements.len(), CONTEXT_ELEMENTS);
                for (j, e) in elements.iter().enumerate() {
                    over(&mut problems, at(&format!("elements[{j}].text")), chars(&e["text"]), SECTION_TEXT);
                }
            }
            other => problems.push(format!("{}: unknown block type {other:?}", at("type"))),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::payload::fixtures::alert;
    use proptest::prelude::*;

    #[test]
    fn the_message_says_who_which_tier_score_reasons_and_links_the_board() {
        let links = Links::new("http://127.0.0.1:9464", "c-17");
        let m = message(&alert("c-17", "acct-17", 2, "rule-"), &links);
        assert_eq!(check_limits(&m), Vec::<String>::new());
        assert_eq!(m["blocks"][0]["text"]["text"], "🔥 c-17 (acct-17) is hot in engagement");
        assert_eq!(m["blocks"][1]["fields"][2]["text"], "*Tier*\nwarm → hot");
        assert_eq!(m["blocks"][1]["fields"][3]["text"], "*Score*\n62.0 (≥ 60)");
        assert_eq!(m["blocks"][2]["text"]["text"], "*Why*\n• rule-0 30.0\n• rule-1 15.0");
        assert_eq!(m["blocks"][3]["elements"][0]["url"], "http://127.0.0.1:9464/board#lead=c-17");
        assert!(m["text"].as_str().unwrap().contains("c-17 (acct-17) is now hot"), "{}", m["text"]);
    }

    #[test]
    fn huge_alerts_stay_within_block_kit_limits() {
        let long = "x".repeat(10_000);
        let m = message(&alert(&long, &long, 500, &"r".repeat(3000)), &Links::new("http://h", &long));
        assert_eq!(check_limits(&m), Vec::<String>::new());
        assert!(m["blocks"][0]["text"]["text"].as_str().unwrap().ends_with('…'));
        assert!(
            m["blocks"].as_array().unwrap().iter().all(|b| b["type"] != "actions"),
            "a URL too long for a button is left out"
        );
    }

    #[test]
    fn the_checker_catches_each_limit() {
        let long = |n: usize| "y".repeat(n);
        let mut m = message(&alert("c", "a", 1, "r"), &Links::new("http://h", "c"));
        m["blocks"][0]["text"]["text"] = json!(long(151));
        m["blocks"][2]["text"]["text"] = json!(long(3001));
        m["blocks"][1]["fields"] = json!(vec![json!({"type": "mrkdwn", "text": long(2001)}); 11]);
        m["blocks"][3]["elements"][0]["text"]["text"] = json!(long(76));
        m["text"] = json!(long(4001));
        let problems = check_limits(&m);
        for want in [
            "blocks[0].text",
            "blocks[2].text",
            "blocks[1].fields:",
            "blocks[1].fields[10]",
            "elements[0].text",
            "text: 4001",
        ] {
            assert!(problems.iter().any(|p| p.contains(want)), "{want} in {problems:?}");
        }
        let mut many = m.clone();
        many["blocks"] = json!(vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": "x"}}); 51]);
        assert!(check_limits(&many).iter().any(|p| p.starts_with("blocks: 51")));
    }

    proptest! {
        #[test]
        fn any_alert_fits(contact in ".{0,400}", account in ".{0,400}", reasons in 0usize..60, rule in ".{0,800}") {
            let m = message(&alert(&contact, &account, reasons, &rule), &Links::new("http://h", &contact));
            prop_assert_eq!(check_limits(&m), Vec::<String>::new());
        }
    }
}
