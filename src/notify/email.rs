//! Email over SMTP: one message per alert, or a digest of the alerts
//! gathered over a period. Each message has a plain-text and an HTML part;
//! its `Message-ID` derives from the alert id (or the digest's ids), so a
//! mail system can drop a repeat.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::{Digest, Sha256};

use super::delivery::DeliveryError;
use super::payload::{self, Links};
use super::routes::EmailSpec;
use crate::proto::ScoreAlert;

/// A rendered message: subject, plain text, HTML.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// Subject line.
    pub subject: String,
    /// The plain-text part.
    pub text: String,
    /// The HTML part.
    pub html: String,
    /// The `Message-ID` (without angle brackets).
    pub message_id: String,
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A stable id-safe token for `parts`.
fn token(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// The message for one alert.
pub fn render_one(alert: &ScoreAlert, links: &Links) -> Rendered {
    let reasons = payload::reasons(alert, 5);
    let subject = format!("hotlead: {} is {} in {}", alert.contact_id, alert.tier, alert.model);
    let mut text = format!("{}\n\n", payload::summary(alert));
    if alert.historical {
        text.push_str("This is a historical alert: the crossing happened a while before it was raised.\n\n");
    }
    text.push_str("Why:\n");
    for r in &reasons {
        text.push_str(&format!("  - {r}\n"));
    }
    text.push_str(&format!(
        "\nBoard: {}\nContact: {}\nCrossed at: {}\nAlert id: {}\n",
        links.board,
        links.contact,
        payload::crossed_at(alert),
        alert.alert_id
    ));
    let items: String = reasons.iter().map(|r| format!("<li>{}</li>", html_escape(r))).collect();
    let html = format!(
        "<!doctype html><html><body><p><strong>{}</strong></p>{}<p>Why:</p><ul>{items}</ul>\
         <p><a href=\"{}\">Open in the board</a> · <a href=\"{}\">Contact in the read API</a></p>\
         <p style=\"color:#666\">Crossed at {} · alert {}</p></body></html>",
        html_escape(&payload::summary(alert)),
        if alert.historical {
            "<p><em>Historical: the crossing happened a while before it was raised.</em></p>"
        } else {
            ""
        },
        html_escape(&links.board),
        html_escape(&links.contact),
        html_escape(&payload::crossed_at(alert)),
        html_escape(&alert.alert_id),
    );
    Rendered { subject, text, html, message_id: format!("{}@hotlead", token(&[&alert.alert_id])) }
}

/// One digest message for `alerts` (oldest first), each with its links.
pub fn render_digest(alerts: &[(&ScoreAlert, Links)]) -> Rendered {
    let subject = format!("hotlead: {} alert{}", alerts.len(), if alerts.len() == 1 { "" } else { "s" });
    let mut text = format!("{subject} since the last digest:\n\n");
    let mut rows = String::new();
    for (a, links) in alerts {
        let why = payload::reasons(a, 3).join(", ");
        text.push_str(&format!("- {}\n  why: {why}\n  {}\n", payload::summary(a), links.board));
        rows.push_str(&format!(
            "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td></tr>",
            html_escape(&links.board),
            html_escape(&a.contact_id),
            html_escape(&payload::summary(a)),
            html_escape(&why)
        ));
    }
    let html = format!(
        "<!doctype html><html><body><p><strong>{}</strong></p><table>\
         <tr><th>Lead</th><th>What</th><th>Why</th></tr>{rows}</table></body></html>",
        html_escape(&subject)
    );
    let ids: Vec<&str> = alerts.iter().map(|(a, _)| a.alert_id.as_str()).collect();
    Rendered { subject, text, html, message_id: format!("digest-{}@hotlead", token(&ids)) }
}

/// An SMTP connection pool for one email destination.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl Mailer {
    /// A mailer for `spec`.
    pub fn new(spec: &EmailSpec, timeout: Duration) -> Result<Self, DeliveryError> {
        let invalid = |what: String| DeliveryError::Invalid(what);
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&spec.smtp)
            .map_err(|e| invalid(format!("smtp URL: {e}")))?
            .timeout(Some(timeout));
        if let Some(user) = &spec.username {
            let password = spec.password.as_ref().map(|p| p.0.clone()).unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        let parse = |a: &str| a.parse::<Mailbox>().map_err(|e| invalid(format!("address `{a}`: {e}")));
        Ok(Self {
            transport: builder.build(),
            from: parse(&spec.from)?,
            to: spec.to.iter().map(|a| parse(a)).collect::<Result<_, _>>()?,
        })
    }

    /// Sends one rendered message to every recipient.
    pub async fn send(&self, m: &Rendered) -> Result<(), DeliveryError> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(m.subject.clone())
            .message_id(Some(format!("<{}>", m.message_id)));
        for to in &self.to {
            b = b.to(to.clone());
        }
        let message = b
            .multipart(MultiPart::alternative_plain_html(m.text.clone(), m.html.clone()))
            .map_err(|e| DeliveryError::Invalid(format!("message: {e}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(DeliveryError::SmtpRejected(e.to_string())),
            Err(e) => Err(DeliveryError::Smtp(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::payload::fixtures;

    fn alert(contact: &str) -> ScoreAlert {
        fixtures::alert(contact, "acct-1", 1, "demo-request-")
    }

    #[test]
    fn one_message_per_alert_has_text_html_and_links() {
        let a = alert("c-<1>");
        let r = render_one(&a, &Links::new("http://h", &a.contact_id));
        assert_eq!(r.subject, "hotlead: c-<1> is hot in engagement");
        assert!(r.text.contains("c-<1> (acct-1) is now hot") && r.text.contains("demo-request-0 30.0"), "{}", r.text);
        assert!(r.text.contains("Board: http://h/board#lead=c-%3C1%3E"), "{}", r.text);
        assert!(r.html.contains("c-&lt;1&gt;") && !r.html.contains("c-<1>"), "{}", r.html);
        assert_eq!(r.message_id, render_one(&a, &Links::new("http://other", "x")).message_id, "from the alert id");
    }

    #[test]
    fn a_digest_lists_every_alert() {
        let (a, b) = (alert("c-1"), alert("c-2"));
        let r = render_digest(&[(&a, Links::new("http://h", "c-1")), (&b, Links::new("http://h", "c-2"))]);
        assert_eq!(r.subject, "hotlead: 2 alerts");
        assert!(r.text.contains("c-1 (acct-1)") && r.text.contains("c-2 (acct-1)"), "{}", r.text);
        assert_eq!(r.html.matches("<tr><td>").count(), 2);
        assert_ne!(r.message_id, render_digest(&[(&a, Links::new("http://h", "c-1"))]).message_id);
    }
}
