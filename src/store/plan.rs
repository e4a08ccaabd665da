//! From the engine's effects to a partition commit.
//!
//! Invariants:
//! - A commit writes only what differs from what is stored: a contact value
//!   whose bytes changed, and leaderboard and cooling entries that moved.
//!   What is stored is known from the [`Written`] form of each contact (its
//!   value's bytes); a contact read from Redis has a known value but unknown
//!   entries, so all of its entries are written
//!   (an entry for a model it has no state in is removed). A contact read
//!   in the text layout of earlier versions is always written: that is its
//!   upgrade to the binary state.
//! - Alerts go to the outbox and the recent-alerts stream in the order the
//!   engine raised them; dead letters follow, in offset order.

use std::collections::HashMap;

use prost::Message as _;

use super::{codec, decode_stored, Commit, ContactWrite, EntryWrite, OutboxEntry, StoreError, StoredValue};
use crate::engine::{Contact, DeadLetter, Effects, Source};
use crate::proto::{AccountContribution, AccountContributions};
use crate::rules::RuleSet;
use crate::score::{self, ContactState, Millis};

/// Dead-letter header: the reason code.
pub const HEADER_REASON: &str = "hotlead.reason";
/// Dead-letter header: the full error message.
pub const HEADER_ERROR: &str = "hotlead.error";
/// Dead-letter header: source topic.
pub const HEADER_SOURCE_TOPIC: &str = "hotlead.source.topic";
/// Dead-letter header: source partition.
pub const HEADER_SOURCE_PARTITION: &str = "hotlead.source.partition";
/// Dead-letter header: source offset.
pub const HEADER_SOURCE_OFFSET: &str = "hotlead.source.offset";

/// Dead-letter header: the payload was cut to fit (`true`).
pub const HEADER_TRUNCATED: &str = "hotlead.payload.truncated";
/// Dead-letter header: the original payload's size in bytes.
pub const HEADER_PAYLOAD_BYTES: &str = "hotlead.payload.bytes";
/// Dead-letter header: the original payload's SHA-256, hex.
pub const HEADER_PAYLOAD_SHA256: &str = "hotlead.payload.sha256";

/// Where a partition's outbox entries go.
#[derive(Debug, Clone, Copy)]
pub struct Outputs<'a> {
    /// Alert topic.
    pub alerts: &'a str,
    /// Shadow models' alert topic.
    pub shadow_alerts: &'a str,
    /// Dead-letter topic (empty: a shadow lane, which publishes none).
    pub dead_letter: &'a str,
    /// Largest dead-letter payload; a larger one is cut to this size.
    pub dead_letter_max_bytes: usize,
    /// Erasure records' topic (empty: a shadow lane, which publishes none).
    pub erasures: &'a str,
    /// Contributions to accounts' topic (empty: a shadow lane, which
    /// publishes none).
    pub contributions: &'a str,
    /// Partitions of the contributions topic.
    pub contribution_partitions: i32,
}

/// What a partition's leaderboard and cooling entries depend on in a
/// model: its half-life and tiers. Stored beside the sorted sets, so a
/// change is seen and they are re-indexed.
pub fn index_fingerprint(model: &crate::rules::Model) -> String {
    let mut f = format!("h={:?}", model.half_life_secs);
    for t in &model.tiers {
        f.push_str(&format!(";{}:{:?}:{:?}", t.name, t.enter, t.exit));
    }
    f
}

/// A model's sorted-set entries for one contact.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Entries {
    /// Leaderboard value (`None`: not on the leaderboard).
    pub leaderboard: Option<f64>,
    /// When decay takes it below its tier's exit (`None`: not scheduled).
    pub cooling_due: Option<Millis>,
}

/// What is stored for one contact, as far as this instance knows.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Whether the contact has a stored state.
    pub stored: bool,
    /// Whether it is stored in the text layout of earlier versions (a key
    /// of its own, deleted when the state is written).
    pub legacy: bool,
    /// The binary value as stored (`None`: nothing, or the text layout, is
    /// stored).
    pub value: Option<std::sync::Arc<[u8]>>,
    /// Each model's sorted-set entries as stored, when known exactly.
    pub entries: Option<Vec<Entries>>,
    /// Erased: only its tombstone is stored.
    pub erased: bool,
}

impl Written {
    /// Nothing stored: a contact with no history.
    pub fn nothing(rules: &RuleSet) -> Self {
        Self {
            stored: false,
            legacy: false,
            value: None,
            entries: Some(vec![Entries::default(); rules.models.len()]),
            erased: false,
        }
    }
}

/// A contact's state with what is stored for it (the state cache's form).
#[derive(Debug, Clone)]
pub struct Stored {
    /// The contact.
    pub contact: Contact,
    /// What is stored for it.
    pub written: Written,
}

impl Stored {
    /// A contact as read from Redis under the key `key`. A value that cannot
    /// be read (written by a newer format, or damaged) is an error, never
    /// taken for a contact with no history.
    pub fn from_value(rules: &RuleSet, key: &str, value: &StoredValue) -> Result<Self, StoreError> {
        if value.is_absent() {
            return Ok(Self { contact: Contact::new(rules), written: Written::nothing(rules) });
        }
        if matches!(value, StoredValue::Erased) {
            let written = Written { erased: true, ..Written::nothing(rules) };
            return Ok(Self { contact: Contact::erased(rules), written });
        }
        let (account, state) = decode_stored(rules, value)
            .map_err(|e| StoreError::Corrupt { key: key.to_string(), message: e.to_string() })?;
        let legacy = matches!(value, StoredValue::Text(_));
        let value = match value {
            // A value in another vocabulary is written again in this one.
            StoredValue::Binary(b, None) => Some(b.as_slice().into()),
            _ => None,
        };
        Ok(Self {
            contact: Contact { account, state, erased: false },
            written: Written { stored: true, legacy, value, entries: None, erased: false },
        })
    }

    /// A contact as the state cache keeps it (what is written, the value's
    /// bytes): decoded again, with its sorted-set entries as committed.
    pub fn from_written(rules: &RuleSet, written: Written) -> Result<Self, codec::CodecError> {
        let Some(value) = &written.value else {
            let entries = written.entries.is_some().then(|| vec![Entries::default(); rules.models.len()]);
            return Ok(Self { contact: Contact::new(rules), written: Written { entries, ..written } });
        };
        let (account, state) = codec::decode(rules, value, None)?;
        let entries = written.entries.is_some().then(|| entries(rules, &state));
        Ok(Self { contact: Contact { account, state, erased: false }, written: Written { entries, ..written } })
    }
}

/// Each model's sorted-set entries for a state.
pub fn entries(rules: &RuleSet, state: &ContactState) -> Vec<Entries> {
    rules
        .models
        .iter()
        .zip(&state.models)
        .map(|(m, st)| match st {
            Some(st) => Entries { leaderboard: st.leaderboard_score(m), cooling_due: score::cooling_due(m, st) },
            None => Entries::default(),
        })
        .collect()
}

/// Builds the commit of a batch's (or a sweep's) effects. `written` holds
/// what is stored for the touched contacts (a contact missing from it has
/// nothing stored). Returns the commit (epoch and watermarks left for the
/// caller) and, parallel to `effects.contacts`, what will be stored once it
/// is durable.
pub fn commit_for(
    rules: &RuleSet,
    source: Source<'_>,
    outputs: Outputs<'_>,
    effects: &Effects,
    mut written: HashMap<String, Written>,
) -> (Commit, Vec<Written>) {
    let mut commit = Commit::default();
    let mut after = Vec::with_capacity(effects.contacts.len());
    let mut value = Vec::with_capacity(256);
    for (id, contact) in &effects.contacts {
        let mut w = written.remove(id).unwrap_or_else(|| Written::nothing(rules));
        if contact.erased {
            if !w.erased {
                // Everything goes: the value, the old key, every entry; a
                // tombstone of the id's hash stays.
                let old = w.entries.clone().unwrap_or_else(|| {
                    vec![Entries { leaderboard: Some(0.0), cooling_due: Some(0) }; rules.models.len()]
                });
                remove_entries(rules, id, &old, &mut commit);
                commit.contacts.push(ContactWrite { contact: id.clone(), value: None, legacy: w.legacy });
                commit.erased.push(id.clone());
            }
            after.push(Written { erased: true, ..Written::nothing(rules) });
            continue;
        }
        let blank = contact.state.is_blank() && contact.state.seen.is_empty();
        if blank && !w.stored {
            // Nothing to keep, and nothing kept: no key at all.
            after.push(w);
            continue;
        }
        let now = entries(rules, &contact.state);
        for (i, model) in rules.models.iter().enumerate() {
            let old = w.entries.as_ref().map(|e| e[i]);
            if old.is_none_or(|o| o.leaderboard != now[i].leaderboard) {
                commit.leaderboard.push(EntryWrite {
                    model: model.name.clone(),
                    contact: id.clone(),
                    score: now[i].leaderboard,
                });
            }
            if old.is_none_or(|o| o.cooling_due != now[i].cooling_due) {
                commit.cooling.push(EntryWrite {
                    model: model.name.clone(),
                    contact: id.clone(),
                    score: now[i].cooling_due.map(|t| t as f64),
                });
            }
        }
        codec::encode(rules, contact.account.as_deref(), &contact.state, &mut value);
        if w.value.as_deref() != Some(&value[..]) {
            w.stored = true;
            let shared: std::sync::Arc<[u8]> = value.as_slice().into();
            commit.contacts.push(ContactWrite { contact: id.clone(), value: Some(shared.clone()), legacy: w.legacy });
            w.value = Some(shared);
            w.legacy = false;
        }
        w.entries = Some(now);
        after.push(w);
    }
    for alert in &effects.alerts {
        let payload = alert.encode_to_vec();
        // The board's recent alerts are those sales got.
        if !alert.shadow {
            commit.recent_alerts.push(payload.clone());
        }
        commit.outbox.push(OutboxEntry {
            topic: if alert.shadow { outputs.shadow_alerts } else { outputs.alerts }.to_string(),
            key: alert.contact_id.as_bytes().to_vec(),
            payload,
            headers: vec![],
            partition: None,
        });
    }
    for d in effects.dead_letters.iter().filter(|_| !outputs.dead_letter.is_empty()) {
        commit.outbox.push(dead_letter(source, outputs, d));
    }
    for f in &effects.forwards {
        commit.outbox.push(OutboxEntry {
            topic: source.topic.to_string(),
            key: f.contact_id.as_bytes().to_vec(),
            payload: f.encode_to_vec(),
            headers: vec![],
            partition: None,
        });
    }
    if !outputs.contributions.is_empty() {
        commit.outbox.extend(contribution_bundles(outputs, &effects.contributions));
    }
    for e in effects.erasures.iter().filter(|_| !outputs.erasures.is_empty()) {
        commit.outbox.push(OutboxEntry {
            topic: outputs.erasures.to_string(),
            key: e.contact_id.as_bytes().to_vec(),
            payload: e.encode_to_vec(),
            headers: vec![],
            partition: None,
        });
    }
    (commit, after)
}

/// Most bytes of contributions one bundle carries: a bundle always fits the
/// broker's message size (1 MiB by default), however many contacts a
/// batch changed.
pub const BUNDLE_MAX_BYTES: usize = 256 * 1024;

/// The outbox entries of a batch's contributions: per partition of the
/// contribution topic (the account's, [`crate::account::partition_of`]), one
/// bundle per [`BUNDLE_MAX_BYTES`], each keeping the contributions' order.
/// A batch of thousands of events so costs the outbox a few entries, not one
/// per event.
pub fn contribution_bundles(outputs: Outputs<'_>, contributions: &[AccountContribution]) -> Vec<OutboxEntry> {
    let partitions = outputs.contribution_partitions.max(1);
    let mut per: std::collections::BTreeMap<i32, Vec<Vec<AccountContribution>>> = Default::default();
    let mut sizes: HashMap<i32, usize> = HashMap::new();
    for c in contributions {
        let p = crate::account::partition_of(&c.account_id, partitions);
        let bundles = per.entry(p).or_insert_with(|| vec![Vec::new()]);
        let size = sizes.entry(p).or_insert(0);
        let n = c.encoded_len() + 4;
        if *size + n > BUNDLE_MAX_BYTES && !bundles.last().is_some_and(Vec::is_empty) {
            bundles.push(Vec::new());
            *size = 0;
        }
        *size += n;
        bundles.last_mut().expect("a bundle").push(c.clone());
    }
    per.into_iter()
        .flat_map(|(p, bundles)| {
            bundles.into_iter().map(move |contributions| OutboxEntry {
                topic: outputs.contributions.to_string(),
                key: Vec::new(),
                payload: AccountContributions { contributions }.encode_to_vec(),
                headers: vec![],
                partition: Some(p),
            })
        })
        .collect()
}

/// Removes an erased contact's sorted-set entries (those `old` says may be
/// there).
fn remove_entries(rules: &RuleSet, id: &str, old: &[Entries], commit: &mut Commit) {
    for (model, o) in rules.models.iter().zip(old) {
        if o.leaderboard.is_some() {
            commit.leaderboard.push(EntryWrite { model: model.name.clone(), contact: id.to_string(), score: None });
        }
        if o.cooling_due.is_some() {
            commit.cooling.push(EntryWrite { model: model.name.clone(), contact: id.to_string(), score: None });
        }
    }
}

/// The leaderboard prunes of a sweep at `now_ms`: per model whose scores
/// decay, the entries of contacts that fell under its floor.
pub fn prune_for(rules: &RuleSet, now_ms: Millis) -> Vec<(String, f64)> {
    rules.models.iter().filter_map(|m| Some((m.name.clone(), score::leaderboard_prune_below(m, now_ms)?))).collect()
}

/// Longest key a dead letter keeps.
const DEAD_LETTER_MAX_KEY_BYTES: usize = 1024;

/// The outbox entry of a dead letter: its original key and payload, with
/// headers naming the reason and the source. It always fits: a payload
/// over `outputs.dead_letter_max_bytes` is cut to that size (a key to
/// 1 KiB), and headers give the original size and SHA-256.
pub fn dead_letter(source: Source<'_>, outputs: Outputs<'_>, d: &DeadLetter) -> OutboxEntry {
    use sha2::{Digest, Sha256};
    let e = &d.rejected.error;
    let mut key = d.rejected.key.clone().unwrap_or_default();
    key.truncate(DEAD_LETTER_MAX_KEY_BYTES);
    let mut headers = vec![
        (HEADER_REASON.into(), e.reason().as_bytes().to_vec()),
        (HEADER_ERROR.into(), e.to_string().into_bytes()),
        (HEADER_SOURCE_TOPIC.into(), source.topic.as_bytes().to_vec()),
        (HEADER_SOURCE_PARTITION.into(), source.partition.to_string().into_bytes()),
        (HEADER_SOURCE_OFFSET.into(), d.offset.to_string().into_bytes()),
    ];
    let full = d.rejected.payload.as_deref().unwrap_or_default();
    let payload = if full.len() > outputs.dead_letter_max_bytes {
        let digest: String = Sha256::digest(full).iter().map(|b| format!("{b:02x}")).collect();
        headers.push((HEADER_TRUNCATED.into(), b"true".to_vec()));
        headers.push((HEADER_PAYLOAD_BYTES.into(), full.len().to_string().into_bytes()));
        headers.push((HEADER_PAYLOAD_SHA256.into(), digest.into_bytes()));
        full[..outputs.dead_letter_max_bytes].to_vec()
    } else {
        full.to_vec()
    };
    OutboxEntry { topic: outputs.dead_letter.to_string(), key, payload, headers, partition: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{timestamp, Limits};
    use crate::engine::{score_batch, score_partition, Dedup, Message};
    use crate::proto::interaction_event::Interaction;
    use crate::proto::{InteractionEvent, PageView};

    const SOURCE: Source<'static> = Source { topic: "in", partition: 0 };
    const OUT: Outputs<'static> = Outputs {
        alerts: "a",
        shadow_alerts: "s",
        dead_letter: "d",
        dead_letter_max_bytes: 2048,
        erasures: "e",
        contributions: "c",
        contribution_partitions: 3,
    };

    #[test]
    fn contributions_travel_in_bundles_per_partition_in_order_and_fit() {
        let c = |account: &str, offset: i64, attr: usize| AccountContribution {
            account_id: account.into(),
            contact_id: format!("c{offset}"),
            offset,
            attributes: [("role".to_string(), "x".repeat(attr))].into_iter().collect(),
            ..Default::default()
        };
        let mut all: Vec<AccountContribution> = (0..300).map(|i| c(&format!("acct-{}", i % 7), i, 10)).collect();
        // Large ones: a partition's bundle is cut before it grows past the bound.
        all.extend((300..310).map(|i| c("acct-big", i, 100_000)));
        let entries = contribution_bundles(OUT, &all);
        let mut seen: HashMap<String, (i32, Vec<i64>)> = HashMap::new();
        for e in &entries {
            assert!(e.payload.len() <= BUNDLE_MAX_BYTES + 16, "{}", e.payload.len());
            assert_eq!(e.topic, "c");
            let bundle = AccountContributions::decode(e.payload.as_slice()).unwrap();
            for x in bundle.contributions {
                let p = e.partition.unwrap();
                assert_eq!(p, crate::account::partition_of(&x.account_id, 3));
                let s = seen.entry(x.account_id.clone()).or_insert((p, vec![]));
                assert_eq!(s.0, p, "an account keeps its partition");
                s.1.push(x.offset);
            }
        }
        let n: usize = seen.values().map(|(_, o)| o.len()).sum();
        assert_eq!(n, all.len(), "each contribution once");
        for (_, offsets) in seen.values() {
            assert!(offsets.windows(2).all(|w| w[0] < w[1]), "in the order made");
        }
        assert!(entries.len() <= 3 + 10, "a few entries, not one per contribution: {}", entries.len());
    }

    #[test]
    fn a_dead_letter_always_fits() {
        let big = vec![7u8; 5000];
        let d = DeadLetter {
            offset: 9,
            rejected: crate::engine::Rejected {
                error: crate::decode::DecodeError::Empty,
                key: Some(vec![1; 3000]),
                payload: Some(big.clone()),
            },
        };
        let e = dead_letter(SOURCE, OUT, &d);
        assert_eq!((e.payload.len(), e.key.len()), (2048, 1024));
        let h: HashMap<&str, String> =
            e.headers.iter().map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v).into_owned())).collect();
        assert_eq!(h[HEADER_PAYLOAD_BYTES], "5000");
        assert_eq!(h[HEADER_TRUNCATED], "true");
        assert_eq!(h[HEADER_PAYLOAD_SHA256].len(), 64);
        assert_eq!(&e.payload[..], &big[..2048]);
        let small = DeadLetter { rejected: crate::engine::Rejected { payload: Some(vec![1; 10]), ..d.rejected }, ..d };
        let e = dead_letter(SOURCE, OUT, &small);
        assert_eq!(e.payload.len(), 10);
        assert!(!e.headers.iter().any(|(k, _)| k == HEADER_TRUNCATED));
    }

    fn page(at: Millis) -> Message {
        let e = InteractionEvent {
            contact_id: "c".into(),
            occurred_at: Some(timestamp(at)),
            interaction: Some(Interaction::PageView(PageView::default())),
            ..Default::default()
        };
        Message::decode(at, None, Some(&e.encode_to_vec()), &Limits::default(), at)
    }

    #[test]
    fn a_commit_writes_only_what_changed() {
        let rules = RuleSet::parse(
            "models: [{name: m, half_life: 1d, tiers: [{name: warm, enter: 30, exit: 20}], rules: [{id: p, when: {kind: page_view}, points: 40}]}]",
            "t",
        )
        .unwrap();
        let t0 = 1_760_000_000_000;
        let first = score_partition(&rules, SOURCE, [page(t0)]);
        let (commit, after) = commit_for(&rules, SOURCE, OUT, &first, HashMap::new());
        assert_eq!(commit.contacts.len(), 1);
        assert_eq!((commit.leaderboard.len(), commit.cooling.len(), commit.outbox.len()), (1, 1, 1));
        // The same state again writes nothing.
        let known: HashMap<String, Contact> = first.contacts.iter().cloned().collect();
        let same = Effects { contacts: first.contacts.clone(), ..Default::default() };
        let written: HashMap<String, Written> = HashMap::from([("c".to_string(), after[0].clone())]);
        let (commit, _) = commit_for(&rules, SOURCE, OUT, &same, written.clone());
        assert!(commit.contacts.is_empty() && commit.leaderboard.is_empty() && commit.cooling.is_empty());
        // A later event moves the score and time, not the account or the tier.
        let next = score_batch(&rules, SOURCE, [page(t0 + 1000)], known, Dedup::default());
        let (commit, _) = commit_for(&rules, SOURCE, OUT, &next, written);
        assert_eq!(commit.contacts.len(), 1, "the value moved");
        assert_eq!(commit.leaderboard.len(), 1);
        assert!(commit.outbox.is_empty());
    }
}
