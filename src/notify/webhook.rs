//! HTTP destinations: the signed JSON webhook and the Slack-compatible
//! incoming webhook share one POST.
//!
//! A webhook request carries `Idempotency-Key: <alert id>` and, with a
//! secret, `X-Hotlead-Signature: t=<unix seconds>,v1=<hex>` where `<hex>` is
//! HMAC-SHA256 over `<t>.<body>` with the secret; a receiver recomputes it
//! and rejects an old `t` to stop replays.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::delivery::DeliveryError;

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "X-Hotlead-Signature";
/// The idempotency header's name.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// `t=<unix_seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &[u8], unix_seconds: i64, body: &[u8]) -> String {
    format!("t={unix_seconds},v1={}", hex(&keyed(secret, unix_seconds, body).finalize().into_bytes()))
}

/// The HMAC of `<t>.<body>`, fed and not yet finalised.
fn keyed(secret: &[u8], unix_seconds: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    m.update(unix_seconds.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// Checks a signature header against `body` as a receiver would: the
/// timestamp within `tolerance_s` of `now_s` and the HMAC equal.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now_s: i64, tolerance_s: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = x.parse::<i64>().ok(),
            Some(("v1", x)) => v1 = Some(x),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    if (now_s - t).abs() > tolerance_s {
        return false;
    }
    unhex(v1).is_some_and(|sig| keyed(secret, t, body).verify_slice(&sig).is_ok())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// One HTTP POST of a JSON body.
pub struct Post<'a> {
    /// The URL.
    pub url: &'a str,
    /// The JSON body.
    pub body: Vec<u8>,
    /// The alert id, sent as the idempotency key.
    pub idempotency_key: &'a str,
    /// The signing secret, if any.
    pub secret: Option<&'a [u8]>,
    /// The request timeout.
    pub timeout: Duration,
}

/// Sends `post`; a 2xx answer is success, anything else a [`DeliveryError`].
pub async fn send(client: &reqwest::Client, post: Post<'_>) -> Result<(), DeliveryError> {
    let mut req = client
        .post(post.url)
        .timeout(post.timeout)
        .header("Content-Type", "application/json")
        .header(IDEMPOTENCY_HEADER, post.idempotency_key);
    if let Some(secret) = post.secret {
        req = req.header(SIGNATURE_HEADER, signature(secret, crate::decode::now_ms() / 1000, &post.body));
    }
    let resp = req.body(post.body).send().await.map_err(|e| {
        // The URL of a chat webhook is its secret: keep it out of errors.
        let e = e.without_url();
        if e.is_timeout() {
            DeliveryError::Timeout(post.timeout)
        } else {
            DeliveryError::Connect(error_chain(&e))
        }
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = resp.text().await.unwrap_or_default();
    let text: String = text.chars().take(200).collect();
    let code = status.as_u16();
    if status.is_client_error() && code != 408 && code != 429 {
        Err(DeliveryError::Rejected { status: code, body: text })
    } else {
        Err(DeliveryError::Status { status: code, body: text, retry_after })
    }
}

/// `url` for people to read: `scheme://host[:port]` with `/…` for any
/// path or query, which may hold a token (a chat webhook's path does).
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "…".into() };
    match rest.find(['/', '?', '#']) {
        Some(i) if rest.len() > i + 1 => format!("{scheme}://{}/…", &rest[..i]),
        _ => format!("{scheme}://{}", rest.trim_end_matches('/')),
    }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_does_not() {
        // RFC 4231 test case 2 fixes the HMAC itself.
        let mut m = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(hex(&m.finalize().into_bytes()), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        let body = br#"{"alert":{"alert_id":"a1"}}"#;
        let header = signature(b"s3cret", 1_767_268_800, body);
        assert!(header.starts_with("t=1767268800,v1="), "{header}");
        assert!(verify(b"s3cret", &header, body, 1_767_268_860, 300));
        assert!(!verify(b"wrong", &header, body, 1_767_268_860, 300), "another secret");
        assert!(!verify(b"s3cret", &header, br#"{"alert":{"alert_id":"a2"}}"#, 1_767_268_860, 300), "another body");
        assert!(!verify(b"s3cret", &header, body, 1_767_268_800 + 301, 300), "too old");
        let forged = header.replace("t=1767268800", "t=1767268801");
        assert!(!verify(b"s3cret", &forged, body, 1_767_268_860, 300), "another timestamp");
        assert!(!verify(b"s3cret", "v1=zz", body, 0, 300));
    }

    #[test]
    fn urls_are_shown_without_path_or_query() {
        assert_eq!(redacted("https://chat.example.com/hooks/T000/B000/XXXX"), "https://chat.example.com/…");
        assert_eq!(redacted("http://127.0.0.1:8080/crm?token=abc"), "http://127.0.0.1:8080/…");
        assert_eq!(redacted("https://crm.example.com/"), "https://crm.example.com");
        assert_eq!(redacted("no scheme"), "…");
    }
}
