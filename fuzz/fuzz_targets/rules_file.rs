//! Arbitrary text as a rules file: the parser refuses or accepts, never
//! panics, and an accepted file scores an event without panicking.
#![no_main]

use hotlead::proto::interaction_event::Interaction;
use hotlead::proto::{InteractionEvent, PageView};
use hotlead::rules::RuleSet;
use hotlead::score::{apply_event, ContactState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(rules) = RuleSet::parse(text, "fuzz") else { return };
    let event = InteractionEvent {
        event_id: "e".into(),
        contact_id: "c".into(),
        interaction: Some(Interaction::PageView(PageView { url: "/pricing".into(), ..Default::default() })),
        ..Default::default()
    };
    let mut contact = ContactState::new(rules.models.len());
    apply_event(&rules, &mut contact, &event, 1_790_000_000_000);
});
