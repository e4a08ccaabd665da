//! Decoding and validating raw Kafka payloads into scorable events.
//!
//! Anything that cannot be scored becomes a [`DecodeError`] whose
//! [`reason`](DecodeError::reason) is written to the dead-letter headers and
//! used as a metric label.
//!
//! A manual adjustment ([`crate::proto::Adjustment`]) is checked here too
//! ([`check_adjustment`]): a model and a reason, finite points of at most
//! [`MAX_ADJUSTMENT_POINTS`] either way. The HTTP write path and `hotlead
//! adjust` run the same check before they produce one.

use prost::Message;

use crate::proto::{Adjustment, InteractionEvent};
use crate::score::Millis;

/// Limits applied while decoding.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted payload in bytes.
    pub max_message_bytes: usize,
    /// Longest accepted contact id in bytes.
    pub max_contact_id_bytes: usize,
    /// How far past the wall clock an event time may be, in milliseconds.
    pub max_future_skew_ms: Millis,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_message_bytes: 1024 * 1024, max_contact_id_bytes: 256, max_future_skew_ms: 3_600_000 }
    }
}

/// Why a payload cannot be scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The payload is larger than the configured limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    Oversized {
        /// Payload size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The message has no payload.
    #[error("message has no payload")]
    Empty,
    /// The payload is not an `InteractionEvent` protobuf.
    #[error("not a hotlead.v1.InteractionEvent protobuf: {0}")]
    Undecodable(String),
    /// `contact_id` is empty.
    #[error("contact_id is missing")]
    MissingContactId,
    /// `contact_id` is longer than the limit.
    #[error("contact_id of {size} bytes exceeds the limit of {limit} bytes")]
    ContactIdTooLong {
        /// Its length.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// `occurred_at` is missing.
    #[error("occurred_at is missing")]
    MissingTimestamp,
    /// `occurred_at` is zero, negative or out of range.
    #[error("occurred_at {0} is not a valid event time")]
    InvalidTimestamp(String),
    /// `occurred_at` lies too far in the future.
    #[error("occurred_at is {ahead_ms} ms in the future (limit {limit_ms} ms)")]
    FutureTimestamp {
        /// How far ahead of the wall clock.
        ahead_ms: Millis,
        /// Configured limit.
        limit_ms: Millis,
    },
    /// No interaction kind this version of hotlead knows is set.
    #[error("no known interaction is set")]
    NoInteraction,
    /// The Kafka key is set and is not the event's contact id, so the event
    /// sits on another partition than its contact's state.
    #[error("the message key is not the event's contact_id")]
    KeyMismatch,
    /// An `identify` names no contact, or names the visitor itself.
    #[error("identify.contact_id is missing or is the visitor's own id")]
    InvalidIdentify,
    /// A `visitor_merge` carries no state.
    #[error("visitor_merge carries no state")]
    InvalidMerge,
    /// A `promotion` that names no model, or that names a contact (it
    /// belongs to a whole partition).
    #[error("promotion names no model, or names a contact")]
    InvalidPromotion,
    /// A manual adjustment that cannot be applied.
    #[error("invalid adjustment: {0}")]
    InvalidAdjustment(#[from] AdjustmentError),
    /// An enum field holds a value the schema does not define.
    #[error("{field} holds {value}, which is not a defined value")]
    UnknownEnumValue {
        /// The field.
        field: &'static str,
        /// Its value.
        value: i32,
    },
}

impl DecodeError {
    /// A short, fixed reason code for headers and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Oversized { .. } => "oversized",
            Self::Empty => "empty",
            Self::Undecodable(_) => "undecodable",
            Self::MissingContactId => "missing_contact_id",
            Self::ContactIdTooLong { .. } => "contact_id_too_long",
            Self::MissingTimestamp => "missing_timestamp",
            Self::InvalidTimestamp(_) => "invalid_timestamp",
            Self::FutureTimestamp { .. } => "future_timestamp",
            Self::NoInteraction => "no_interaction",
            Self::UnknownEnumValue { .. } => "unknown_enum_value",
            Self::KeyMismatch => "key_mismatch",
            Self::InvalidIdentify => "invalid_identify",
            Self::InvalidMerge => "invalid_merge",
            Self::InvalidAdjustment(_) => "invalid_adjustment",
            Self::InvalidPromotion => "invalid_promotion",
        }
    }

    /// Every reason code, for pre-registering metrics.
    pub const REASONS: [&'static str; 15] = [
        "oversized",
        "empty",
        "undecodable",
        "missing_contact_id",
        "contact_id_too_long",
        "missing_timestamp",
        "invalid_timestamp",
        "future_timestamp",
        "no_interaction",
        "unknown_enum_value",
        "key_mismatch",
        "invalid_identify",
        "invalid_merge",
        "invalid_adjustment",
        "invalid_promotion",
    ];
}

/// The most points one adjustment may add or take away.
pub const MAX_ADJUSTMENT_POINTS: f64 = 1e6;

/// The longest reason an adjustment may give, in bytes (it is kept in the
/// contact's breakdown).
pub const MAX_ADJUSTMENT_REASON_BYTES: usize = 200;

/// Why a manual adjustment cannot be applied; the dead letter's reason is
/// `invalid_adjustment`, its error text this.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdjustmentError {
    /// `model` is empty.
    #[error("model is missing")]
    MissingModel,
    /// `reason` is empty or blank.
    #[error("reason is missing")]
    MissingReason,
    /// `reason` is longer than [`MAX_ADJUSTMENT_REASON_BYTES`].
    #[error("reason of {0} bytes exceeds the limit of {MAX_ADJUSTMENT_REASON_BYTES} bytes")]
    ReasonTooLong(usize),
    /// `points` is NaN or infinite.
    #[error("points {0} is not a finite number")]
    PointsNotFinite(f64),
    /// `points` is beyond [`MAX_ADJUSTMENT_POINTS`] either way.
    #[error("points {0} exceed the limit of 1000000 either way")]
    PointsTooLarge(f64),
}

/// Checks a manual adjustment: a model, a reason (not blank, at most
/// [`MAX_ADJUSTMENT_REASON_BYTES`]), finite points of at most
/// [`MAX_ADJUSTMENT_POINTS`] either way. Whether the model exists is not
/// checked here: the rules may change between producing and scoring.
pub fn check_adjustment(a: &Adjustment) -> Result<(), AdjustmentError> {
    if a.model.is_empty() {
        return Err(AdjustmentError::MissingModel);
    }
    if a.reason.trim().is_empty() {
        return Err(AdjustmentError::MissingReason);
    }
    if a.reason.len() > MAX_ADJUSTMENT_REASON_BYTES {
        return Err(AdjustmentError::ReasonTooLong(a.reason.len()));
    }
    if !a.points.is_finite() {
        return Err(AdjustmentError::PointsNotFinite(a.points));
    }
    if a.points.abs() > MAX_ADJUSTMENT_POINTS {
        return Err(AdjustmentError::PointsTooLarge(a.points));
    }
    Ok(())
}

/// A decoded event that passed validation, with its time in milliseconds.
#[derive(Debug, Clone)]
pub struct ValidEvent {
    /// The event.
    pub event: InteractionEvent,
    /// `occurred_at` in milliseconds since the Unix epoch.
    pub at_ms: Millis,
}

/// Decodes and validates one payload, given the wall clock `now_ms`.
pub fn decode(payload: Option<&[u8]>, limits: &Limits, now_ms: Millis) -> Result<ValidEvent, DecodeError> {
    let bytes = match payload {
        None | Some([]) => return Err(DecodeError::Empty),
        Some(b) => b,
    };
    if bytes.len() > limits.max_message_bytes {
        return Err(DecodeError::Oversized { size: bytes.len(), limit: limits.max_message_bytes });
    }
    let event = InteractionEvent::decode(bytes).map_err(|e| DecodeError::Undecodable(e.to_string()))?;
    if let Some(crate::proto::interaction_event::Interaction::Promotion(p)) = &event.interaction {
        // A partition's event, not a contact's.
        if p.model.is_empty() || !event.contact_id.is_empty() || event.event_id.is_empty() {
            return Err(DecodeError::InvalidPromotion);
        }
    } else if event.contact_id.is_empty() {
        return Err(DecodeError::MissingContactId);
    }
    if event.contact_id.len() > limits.max_contact_id_bytes {
        return Err(DecodeError::ContactIdTooLong { size: event.contact_id.len(), limit: limits.max_contact_id_bytes });
    }
    let ts = event.occurred_at.as_ref().ok_or(DecodeError::MissingTimestamp)?;
    if ts.seconds <= 0 || !(0..1_000_000_000).contains(&ts.nanos) || ts.seconds > 253_402_300_799 {
        return Err(DecodeError::InvalidTimestamp(format!("{}s {}ns", ts.seconds, ts.nanos)));
    }
    let at_ms = millis(ts);
    if at_ms - now_ms > limits.max_future_skew_ms {
        return Err(DecodeError::FutureTimestamp { ahead_ms: at_ms - now_ms, limit_ms: limits.max_future_skew_ms });
    }
    match &event.interaction {
        None => return Err(DecodeError::NoInteraction),
        Some(crate::proto::interaction_event::Interaction::EmailEngagement(e))
            if crate::proto::email_engagement::Action::try_from(e.action).is_err() =>
        {
            return Err(DecodeError::UnknownEnumValue { field: "email_engagement.action", value: e.action });
        }
        Some(crate::proto::interaction_event::Interaction::Identify(i))
            if i.contact_id.is_empty()
                || i.contact_id == event.contact_id
                || i.contact_id.len() > limits.max_contact_id_bytes =>
        {
            return Err(DecodeError::InvalidIdentify);
        }
        Some(crate::proto::interaction_event::Interaction::VisitorMerge(m)) if m.state.is_empty() => {
            return Err(DecodeError::InvalidMerge);
        }
        Some(crate::proto::interaction_event::Interaction::Adjustment(a)) => check_adjustment(a)?,
        _ => {}
    }
    Ok(ValidEvent { event, at_ms })
}

/// The current wall-clock time in milliseconds.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}

/// Milliseconds since the Unix epoch of a protobuf timestamp.
pub fn millis(t: &prost_types::Timestamp) -> Millis {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// A protobuf timestamp for milliseconds since the Unix epoch.
pub fn timestamp(ms: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::interaction_event::Interaction;
    use crate::proto::PageView;

    const NOW: Millis = 1_760_000_000_000;

    fn event() -> InteractionEvent {
        InteractionEvent {
            event_id: "e1".into(),
            contact_id: "c1".into(),
            occurred_at: Some(timestamp(NOW - 5)),
            interaction: Some(Interaction::PageView(PageView { url: "/pricing".into(), ..Default::default() })),
            ..Default::default()
        }
    }

    fn reason(e: &InteractionEvent) -> Result<Millis, &'static str> {
        decode(Some(&e.encode_to_vec()), &Limits::default(), NOW).map(|v| v.at_ms).map_err(|e| e.reason())
    }

    #[test]
    fn accepts_a_valid_event() {
        assert_eq!(reason(&event()), Ok(NOW - 5));
    }

    #[test]
    fn names_the_reason_for_each_kind_of_bad_input() {
        let l = Limits::default();
        assert_eq!(decode(None, &l, NOW).unwrap_err().reason(), "empty");
        assert_eq!(decode(Some(&[0xff, 0xff, 0xff]), &l, NOW).unwrap_err().reason(), "undecodable");
        let whole = event().encode_to_vec();
        assert_eq!(decode(Some(&whole[..whole.len() - 3]), &l, NOW).unwrap_err().reason(), "undecodable", "truncated");
        let big = vec![0u8; l.max_message_bytes + 1];
        assert_eq!(decode(Some(&big), &l, NOW).unwrap_err().reason(), "oversized");
        let mut e = event();
        e.contact_id.clear();
        assert_eq!(reason(&e), Err("missing_contact_id"));
        let mut e = event();
        e.contact_id = "x".repeat(1000);
        assert_eq!(reason(&e), Err("contact_id_too_long"));
        let mut e = event();
        e.occurred_at = None;
        assert_eq!(reason(&e), Err("missing_timestamp"));
        let mut e = event();
        e.occurred_at = Some(timestamp(0));
        assert_eq!(reason(&e), Err("invalid_timestamp"));
        let mut e = event();
        e.occurred_at = Some(timestamp(-5000));
        assert_eq!(reason(&e), Err("invalid_timestamp"));
        let mut e = event();
        e.occurred_at = Some(timestamp(NOW + 365 * 86_400_000));
        assert_eq!(reason(&e), Err("future_timestamp"));
        let mut e = event();
        e.interaction = None;
        assert_eq!(reason(&e), Err("no_interaction"));
        let mut e = event();
        e.interaction =
            Some(Interaction::EmailEngagement(crate::proto::EmailEngagement { action: 99, ..Default::default() }));
        assert_eq!(reason(&e), Err("unknown_enum_value"));
        // A different message (an alert) is not taken for an event.
        let alert = crate::proto::ScoreAlert {
            alert_id: "a".into(),
            contact_id: "c".into(),
            model: "m".into(),
            ..Default::default()
        };
        assert!(decode(Some(&alert.encode_to_vec()), &Limits::default(), NOW).is_err());
    }

    #[test]
    fn a_bad_adjustment_is_rejected_with_its_reason() {
        let adjust = |model: &str, points: f64, reason: &str| {
            let mut e = event();
            e.interaction = Some(Interaction::Adjustment(Adjustment {
                model: model.into(),
                points,
                reason: reason.into(),
                ..Default::default()
            }));
            decode(Some(&e.encode_to_vec()), &Limits::default(), NOW).map(|_| ())
        };
        assert_eq!(adjust("engagement", 15.0, "met at trade show"), Ok(()));
        assert_eq!(adjust("engagement", -1e6, "not a buyer"), Ok(()), "the limit itself is allowed");
        let cases = [
            ("", 15.0, "met", AdjustmentError::MissingModel),
            ("engagement", 15.0, "", AdjustmentError::MissingReason),
            ("engagement", 15.0, "  ", AdjustmentError::MissingReason),
            ("engagement", 15.0, &"x".repeat(201), AdjustmentError::ReasonTooLong(201)),
            ("engagement", 1e6 + 1.0, "met", AdjustmentError::PointsTooLarge(1e6 + 1.0)),
            ("engagement", f64::INFINITY, "met", AdjustmentError::PointsNotFinite(f64::INFINITY)),
        ];
        for (model, points, reason, want) in cases {
            let got = adjust(model, points, reason).unwrap_err();
            assert_eq!(got.reason(), "invalid_adjustment");
            assert_eq!(got, DecodeError::InvalidAdjustment(want));
        }
        let nan = adjust("engagement", f64::NAN, "met").unwrap_err();
        assert!(nan.to_string().contains("not a finite number"), "{nan}");
        assert!(DecodeError::REASONS.contains(&nan.reason()));
    }
}
