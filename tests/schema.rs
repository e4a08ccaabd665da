//! The generated protobuf types match the public contract (DESIGN.md
//! section 2) field for field: names, numbers, types and the oneof.

use std::collections::BTreeMap;

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::FileDescriptorSet;

const DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hotlead_descriptor.bin"));

/// A field's number, type, whether it is repeated, and its oneof.
type Field = (i32, String, bool, Option<String>);

/// message -> field name -> field
fn fields() -> BTreeMap<String, BTreeMap<String, Field>> {
    let set = FileDescriptorSet::decode(DESCRIPTOR).unwrap();
    let mut out = BTreeMap::new();
    for file in set.file.iter().filter(|f| f.package() == "hotlead.v1") {
        let mut stack: Vec<(String, &prost_types::DescriptorProto)> =
            file.message_type.iter().map(|m| (m.name().to_string(), m)).collect();
        while let Some((name, m)) = stack.pop() {
            let mut fs = BTreeMap::new();
            for f in &m.field {
                let ty = match f.r#type() {
                    Type::Message | Type::Enum => f.type_name().trim_start_matches('.').to_string(),
                    t => format!("{t:?}").to_lowercase(),
                };
                let oneof = f.oneof_index.map(|i| m.oneof_decl[i as usize].name().to_string());
                fs.insert(f.name().to_string(), (f.number(), ty, f.label() == Label::Repeated, oneof));
            }
            for nested in &m.nested_type {
                if !nested.options.as_ref().is_some_and(|o| o.map_entry()) {
                    stack.push((format!("{name}.{}", nested.name()), nested));
                }
            }
            out.insert(name, fs);
        }
    }
    out
}

fn check(message: &str, want: &[(&str, i32, &str)]) {
    let all = fields();
    let got = all.get(message).unwrap_or_else(|| panic!("message {message} missing"));
    let got: BTreeMap<&str, (i32, &str)> = got.iter().map(|(k, v)| (k.as_str(), (v.0, v.1.as_str()))).collect();
    let want: BTreeMap<&str, (i32, &str)> = want.iter().map(|(n, i, t)| (*n, (*i, *t))).collect();
    assert_eq!(got, want, "{message}");
}

#[test]
fn interaction_event_matches_the_contract() {
    check(
        "InteractionEvent",
        &[
            ("event_id", 1, "string"),
            ("contact_id", 2, "string"),
            ("account_id", 3, "string"),
            ("occurred_at", 4, "google.protobuf.Timestamp"),
            ("origin", 5, "hotlead.v1.Origin"),
            ("page_view", 10, "hotlead.v1.PageView"),
            ("form_submission", 11, "hotlead.v1.FormSubmission"),
            ("webinar_attendance", 12, "hotlead.v1.WebinarAttendance"),
            ("email_engagement", 13, "hotlead.v1.EmailEngagement"),
            ("content_download", 14, "hotlead.v1.ContentDownload"),
            ("profile_update", 15, "hotlead.v1.ProfileUpdate"),
            ("identify", 16, "hotlead.v1.Identify"),
            ("adjustment", 17, "hotlead.v1.Adjustment"),
            ("visitor_merge", 18, "hotlead.v1.VisitorMerge"),
            ("erasure", 19, "hotlead.v1.Erasure"),
            ("custom", 20, "hotlead.v1.CustomInteraction"),
            ("promotion", 21, "hotlead.v1.ModelPromotion"),
            ("context", 30, "hotlead.v1.InteractionEvent.ContextEntry"),
        ],
    );
    let all = fields();
    let ev = &all["InteractionEvent"];
    for kind in [
        "page_view",
        "form_submission",
        "webinar_attendance",
        "email_engagement",
        "content_download",
        "profile_update",
        "identify",
        "adjustment",
        "visitor_merge",
        "erasure",
        "custom",
        "promotion",
    ] {
        assert_eq!(ev[kind].3.as_deref(), Some("interaction"), "{kind} is in the oneof");
    }
    assert_eq!(ev["contact_id"].3, None);
    assert_eq!(ev["origin"].3, None);
}

#[test]
fn interaction_kinds_match_the_contract() {
    check(
        "PageView",
        &[("url", 1, "string"), ("title", 2, "string"), ("duration_seconds", 3, "uint32"), ("referrer", 4, "string")],
    );
    check("FormSubmission", &[("form_id", 1, "string"), ("fields", 2, "hotlead.v1.FormSubmission.FieldsEntry")]);
    check(
        "WebinarAttendance",
        &[("webinar_id", 1, "string"), ("attended", 2, "bool"), ("minutes_attended", 3, "uint32")],
    );
    check(
        "EmailEngagement",
        &[("campaign_id", 1, "string"), ("action", 2, "hotlead.v1.EmailEngagement.Action"), ("link_url", 3, "string")],
    );
    check("ContentDownload", &[("asset_id", 1, "string"), ("asset_type", 2, "string")]);
    check("ProfileUpdate", &[("attributes", 1, "hotlead.v1.ProfileUpdate.AttributesEntry")]);
    check(
        "CustomInteraction",
        &[("name", 1, "string"), ("properties", 2, "hotlead.v1.CustomInteraction.PropertiesEntry")],
    );
    check(
        "Adjustment",
        &[
            ("model", 1, "string"),
            ("points", 2, "double"),
            ("reason", 3, "string"),
            ("by", 4, "string"),
            ("reset", 5, "bool"),
        ],
    );
    check("Identify", &[("contact_id", 1, "string")]);
    check("VisitorMerge", &[("state", 1, "bytes"), ("vocabulary", 2, "string")]);
    check("Erasure", &[("requested_by", 1, "string"), ("reason", 2, "string")]);
    check(
        "Origin",
        &[("anonymous_id", 1, "string"), ("partition", 2, "int32"), ("offset", 3, "int64"), ("lane", 4, "string")],
    );
    check(
        "ModelPromotion",
        &[("model", 1, "string"), ("replaces", 2, "string"), ("announce", 3, "bool"), ("requested_by", 4, "string")],
    );
    check(
        "ContactErased",
        &[
            ("contact_id", 1, "string"),
            ("erased_at", 2, "google.protobuf.Timestamp"),
            ("requested_at", 3, "google.protobuf.Timestamp"),
            ("requested_by", 4, "string"),
            ("reason", 5, "string"),
            ("request_id", 6, "string"),
            ("topic", 7, "string"),
            ("partition", 8, "int32"),
        ],
    );
    use hotlead::proto::email_engagement::Action;
    assert_eq!(
        [
            Action::Unspecified as i32,
            Action::Open as i32,
            Action::Click as i32,
            Action::Unsubscribe as i32,
            Action::Bounce as i32
        ],
        [0, 1, 2, 3, 4]
    );
}

#[test]
fn score_alert_matches_the_contract() {
    check(
        "ScoreAlert",
        &[
            ("alert_id", 1, "string"),
            ("contact_id", 2, "string"),
            ("account_id", 3, "string"),
            ("model", 4, "string"),
            ("model_version", 5, "uint32"),
            ("direction", 6, "hotlead.v1.ScoreAlert.Direction"),
            ("tier", 7, "string"),
            ("previous_tier", 8, "string"),
            ("score", 9, "double"),
            ("threshold", 10, "double"),
            ("crossed_at", 11, "google.protobuf.Timestamp"),
            ("trigger_event_id", 12, "string"),
            ("top_contributions", 13, "hotlead.v1.Contribution"),
            ("historical", 14, "bool"),
            ("shadow", 15, "bool"),
        ],
    );
    assert!(fields()["ScoreAlert"]["top_contributions"].2, "top_contributions is repeated");
    check("Contribution", &[("rule_id", 1, "string"), ("points", 2, "double")]);
    use hotlead::proto::score_alert::Direction;
    assert_eq!([Direction::Unspecified as i32, Direction::Heated as i32, Direction::Cooled as i32], [0, 1, 2]);
}

#[test]
fn account_alert_matches_the_contract() {
    check(
        "AccountAlert",
        &[
            ("alert_id", 1, "string"),
            ("account_id", 2, "string"),
            ("model", 3, "string"),
            ("model_version", 4, "uint32"),
            ("direction", 5, "hotlead.v1.ScoreAlert.Direction"),
            ("tier", 6, "string"),
            ("previous_tier", 7, "string"),
            ("score", 8, "double"),
            ("threshold", 9, "double"),
            ("crossed_at", 10, "google.protobuf.Timestamp"),
            ("breadth", 11, "uint32"),
            ("trigger_contact_id", 12, "string"),
            ("trigger_event_id", 13, "string"),
            ("drivers", 14, "hotlead.v1.AccountMember"),
            ("historical", 15, "bool"),
        ],
    );
    assert!(fields()["AccountAlert"]["drivers"].2, "drivers is repeated");
    check(
        "AccountMember",
        &[
            ("contact_id", 1, "string"),
            ("score", 2, "double"),
            ("weight", 3, "double"),
            ("share", 4, "double"),
            ("tier", 5, "string"),
        ],
    );
}

#[test]
fn account_contributions_match_the_contract() {
    check(
        "AccountContribution",
        &[
            ("account_id", 1, "string"),
            ("contact_id", 2, "string"),
            ("topic", 3, "string"),
            ("partition", 4, "int32"),
            ("offset", 5, "int64"),
            ("event_id", 6, "string"),
            ("occurred_at", 7, "google.protobuf.Timestamp"),
            ("left", 8, "bool"),
            ("parts", 9, "hotlead.v1.ContactPart"),
            ("attributes", 10, "hotlead.v1.AccountContribution.AttributesEntry"),
            ("erased", 11, "bool"),
        ],
    );
    check("AccountContributions", &[("contributions", 1, "hotlead.v1.AccountContribution")]);
    check(
        "ContactPart",
        &[
            ("model", 1, "string"),
            ("behaviour", 2, "double"),
            ("at_ms", 3, "int64"),
            ("fit", 4, "double"),
            ("tier", 5, "string"),
        ],
    );
}
