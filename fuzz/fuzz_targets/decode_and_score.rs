//! Arbitrary bytes through the decoder and, when they decode, through every
//! model of the example rules, twice: the scorer never panics, scores stay
//! finite, explanations sum to the score, and the state survives its Redis
//! encoding exactly. Then the engine over the same message, as a
//! partition would, and what it sends on (an identified visitor's state)
//! applied on the contact's partition: every message is accounted for once,
//! nothing panics, states still round-trip.
#![no_main]

use std::sync::OnceLock;

use std::collections::HashMap;

use hotlead::decode::{decode, Limits};
use hotlead::engine::{score_batch, Dedup, Message, Source};
use prost::Message as _;
use hotlead::rules::RuleSet;
use hotlead::score::{apply_event, ContactState};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_790_000_000_000;

fn rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| RuleSet::parse(include_str!("../../examples/models.yaml"), "examples/models.yaml").unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Ok(valid) = decode(Some(data), &Limits::default(), NOW) else { return };
    let rules = rules();
    let mut contact = ContactState::new(rules.models.len());
    apply_event(rules, &mut contact, &valid.event, valid.at_ms);
    contact.seen_before(&valid.event.event_id, valid.at_ms, 3_600_000, 32);
    apply_event(rules, &mut contact, &valid.event, valid.at_ms + 86_400_000);
    for (model, st) in rules.models.iter().zip(&contact.models) {
        let Some(st) = st else { continue };
        let now = st.at_ms + 3_600_000;
        let total = st.score_at(now, model.half_life_secs);
        assert!(total.is_finite(), "{total}");
        let parts: f64 = st.explain(now, model.half_life_secs).iter().map(|p| p.1).sum();
        assert!((parts - total).abs() <= 1e-9 * total.abs().max(1.0), "{parts} vs {total}");
    }
    assert_eq!(hotlead::store::round_trip(rules, &contact), contact);

    let message = Message { offset: 1, arrived_ms: NOW, event: Ok(valid) };
    let fx = score_batch(rules, Source { topic: "in", partition: 0 }, [message], HashMap::new(), Dedup::default());
    let c = fx.counts;
    assert_eq!(c.scored + c.deduplicated + c.dead_lettered + c.forwarded + c.suppressed, 1, "{c:?}");
    for f in fx.forwards {
        let bytes = f.encode_to_vec();
        let m = Message::decode(2, Some(f.contact_id.as_bytes()), Some(&bytes), &Limits::default(), NOW);
        let there = score_batch(rules, Source { topic: "in", partition: 1 }, [m], HashMap::new(), Dedup::default());
        assert_eq!(there.counts.dead_lettered, 0, "a record hotlead sends on is always valid");
        for (_, c) in &there.contacts {
            assert_eq!(hotlead::store::round_trip(rules, &c.state), c.state);
        }
    }
});
