//! The compact binary encoding of a contact's state: one Redis string per
//! contact.
//!
//! Invariants:
//! - `decode(encode(s)) == s` exactly, for every state the scorer makes:
//!   floats are stored as their 8 bytes, never as text.
//! - A value names rules, tiers, models and attributes by their position in
//!   the vocabulary of the rule set it was written under
//!   ([`RuleSet::vocabulary`]), and says which one (its fingerprint). The
//!   vocabulary is stored once per partition (`hl:{..}:vocab`, written with
//!   the first commit under a rule set), so a value written under one rule
//!   set reads back under another: a renamed rule keeps its old name in the
//!   breakdown (written inline from then on, as any name outside the
//!   vocabulary), and a model no longer in the rules is dropped at the next
//!   write. A value whose vocabulary is unknown is refused
//!   ([`CodecError::UnknownVocabulary`]), never misread.
//! - The first byte is the format version; a reader refuses a version it
//!   does not know with [`CodecError::Version`] instead of guessing.
//!
//! Layout of format 1 (varints are LEB128; `z` marks a zigzag varint; a
//! time is a `z` difference from the value's base time, itself a `z`
//! difference from [`LEADERBOARD_EPOCH_MS`]):
//!
//! ```text
//! u8 format = 1
//! vocabulary: u32 fingerprint, little-endian
//! names:    varint n, n × (varint len, utf-8 bytes): names outside it
//! base:     z (ms since the epoch 2024-01-01)
//! account:  varint (0: none, else len + 1), bytes
//! profile:  varint n, n × (name, varint len, value bytes, time)
//! seen:     varint n, n × (6 bytes: event id hash, little-endian; z seconds
//!           from the previous arrival, the first from the base's second)
//! models:   varint n, n × model
//! model:    name, f64 score, time at, name tier, u8 flags (1: settled),
//!           [time settled],
//!           varint n, n × (name rule, f64 contribution),
//!           varint n, n × (name fit rule, f64 points),
//!           varint n, n × (name rule, z window, varint hits, f64 points),
//!           varint n, n × (name tier, time alerted)
//! name:     varint i: the vocabulary's i-th name, or past its end the
//!           (i - vocabulary length)-th of the value's own names
//! ```
//!
//! Format 2 is format 1 followed by the contact's identity links, written
//! only for a contact that has some (an identified visitor, a contact with
//! visitors merged in), so every other value stays format 1:
//!
//! ```text
//! into:     varint (0: none, else len + 1), bytes: the contact a visitor became
//! from:     varint n, n × (varint len, visitor id bytes, z input offset)
//! ```
//!
//! Format 3 is format 2 (its links section written even when empty)
//! followed by the time of the event that set the contact's account, for a
//! contact that has one:
//!
//! ```text
//! account_at: time
//! ```
//!
//! A contact of ten events in one model takes about 100 bytes, where the
//! text layout it replaces (a hash of `<model>:<field>` text fields, still
//! read by [`crate::store::decode_stored`]) took well over a kilobyte.

use std::collections::{BTreeMap, HashMap};

use crate::rules::RuleSet;
use crate::score::{CapUse, ContactState, Millis, ModelState, LEADERBOARD_EPOCH_MS};

/// The format this version writes for a contact without identity links.
pub const FORMAT: u8 = 1;

/// The format this version writes for a contact with identity links.
pub const FORMAT_LINKS: u8 = 2;

/// The format this version writes for a contact whose account has a time
/// (format 2 with its links, maybe none, then the account's event time).
pub const FORMAT_ACCOUNT: u8 = 3;

/// Bytes of an event id hash kept for the repeat check.
pub const SEEN_HASH_BYTES: usize = 6;

/// Why a stored value could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// The value is empty.
    #[error("empty value")]
    Empty,
    /// Written by a format this version does not know.
    #[error("unknown state format {0}")]
    Version(u8),
    /// The value ends early or holds an impossible number.
    #[error("malformed state at byte {0}")]
    Malformed(usize),
    /// Written in a vocabulary neither the rules in force nor the reader
    /// has.
    #[error("state written under unknown rules (vocabulary {0:08x})")]
    UnknownVocabulary(u32),
}

impl CodecError {
    /// A stable reason code, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Version(_) => "unknown_format",
            Self::Malformed(_) => "malformed",
            Self::UnknownVocabulary(_) => "unknown_vocabulary",
        }
    }
}

/// Encodes a contact's state (and account id) into `out` (cleared first).
pub fn encode<'a>(rules: &'a RuleSet, account: Option<&str>, c: &'a ContactState, out: &mut Vec<u8>) {
    out.clear();
    let mut names = Names { vocabulary: &rules.vocabulary, extra: Vec::new() };
    let mut body = Vec::with_capacity(128);
    let base = base_time(c);
    let mut name = |s: &'a str, body: &mut Vec<u8>| names.put(s, body);
    put_zigzag(&mut body, base - LEADERBOARD_EPOCH_MS);
    match account {
        None => put_varint(&mut body, 0),
        Some(a) => {
            put_varint(&mut body, a.len() as u64 + 1);
            body.extend_from_slice(a.as_bytes());
        }
    }
    put_varint(&mut body, c.profile.len() as u64);
    for (k, (v, t)) in &c.profile {
        name(k, &mut body);
        put_bytes(&mut body, v.as_bytes());
        put_zigzag(&mut body, t - base);
    }
    put_varint(&mut body, c.seen.len() as u64);
    // Arrivals are whole seconds (`ContactState::seen_before`).
    let mut previous = base.div_euclid(1000);
    for (h, t) in &c.seen {
        body.extend_from_slice(&h.to_le_bytes()[..SEEN_HASH_BYTES]);
        put_zigzag(&mut body, t.div_euclid(1000) - previous);
        previous = t.div_euclid(1000);
    }
    let present = rules.models.iter().zip(&c.models).filter(|(_, st)| st.is_some()).count();
    put_varint(&mut body, present as u64);
    for (model, st) in rules.models.iter().zip(&c.models) {
        let Some(st) = st else { continue };
        name(&model.name, &mut body);
        body.extend_from_slice(&st.score.to_le_bytes());
        put_zigzag(&mut body, st.at_ms - base);
        name(model.tier_name(st.tier), &mut body);
        body.push(u8::from(st.settled_ms != 0));
        if st.settled_ms != 0 {
            put_zigzag(&mut body, st.settled_ms - base);
        }
        put_varint(&mut body, st.contributions.len() as u64);
        for (k, p) in &st.contributions {
            name(k, &mut body);
            body.extend_from_slice(&p.to_le_bytes());
        }
        put_varint(&mut body, st.fit.len() as u64);
        for (k, p) in &st.fit {
            name(k, &mut body);
            body.extend_from_slice(&p.to_le_bytes());
        }
        put_varint(&mut body, st.caps.len() as u64);
        for (k, u) in &st.caps {
            name(k, &mut body);
            put_zigzag(&mut body, u.window);
            put_varint(&mut body, u64::from(u.hits));
            body.extend_from_slice(&u.points.to_le_bytes());
        }
        put_varint(&mut body, st.alerted.len() as u64);
        for (k, t) in &st.alerted {
            name(k, &mut body);
            put_zigzag(&mut body, t - base);
        }
    }
    let links = &c.links;
    let format = if c.account_at != 0 {
        FORMAT_ACCOUNT
    } else if links.is_empty() {
        FORMAT
    } else {
        FORMAT_LINKS
    };
    if format != FORMAT {
        match &links.into {
            None => put_varint(&mut body, 0),
            Some(a) => {
                put_varint(&mut body, a.len() as u64 + 1);
                body.extend_from_slice(a.as_bytes());
            }
        }
        put_varint(&mut body, links.from.len() as u64);
        for (id, o) in &links.from {
            put_bytes(&mut body, id.as_bytes());
            put_zigzag(&mut body, *o);
        }
    }
    if format == FORMAT_ACCOUNT {
        put_zigzag(&mut body, c.account_at - base);
    }
    out.push(format);
    out.extend_from_slice(&rules.vocabulary_id.to_le_bytes());
    put_varint(out, names.extra.len() as u64);
    for n in &names.extra {
        put_bytes(out, n.as_bytes());
    }
    out.extend_from_slice(&body);
}

/// The vocabulary id of a binary value, if it has one.
pub fn vocabulary_of(bytes: &[u8]) -> Option<u32> {
    matches!(bytes.first(), Some(&FORMAT | &FORMAT_LINKS | &FORMAT_ACCOUNT))
        .then(|| bytes.get(1..5)?.try_into().ok().map(u32::from_le_bytes))?
}

/// Names as a value refers to them: by position in the vocabulary, or in
/// the value's own table of names outside it (each once, in first use
/// order).
struct Names<'a> {
    vocabulary: &'a [String],
    extra: Vec<&'a str>,
}

impl<'a> Names<'a> {
    /// Writes the reference to `s`.
    fn put(&mut self, s: &'a str, body: &mut Vec<u8>) {
        let i = match self.vocabulary.binary_search_by(|n| n.as_str().cmp(s)) {
            Ok(i) => i,
            Err(_) => {
                let j = self.extra.iter().position(|n| *n == s).unwrap_or_else(|| {
                    self.extra.push(s);
                    self.extra.len() - 1
                });
                self.vocabulary.len() + j
            }
        };
        put_varint(body, i as u64);
    }
}

/// The time the other times of a value are stored against: the latest
/// event time of any model (or of the profile, or an arrival).
fn base_time(c: &ContactState) -> Millis {
    c.models
        .iter()
        .flatten()
        .map(|m| m.at_ms)
        .chain(c.profile.values().map(|(_, t)| *t))
        .chain(c.seen.first().map(|(_, t)| *t))
        .max()
        .unwrap_or(LEADERBOARD_EPOCH_MS)
}

/// Decodes a value written by [`encode`]: the account id and the state
/// under `rules` (models not in `rules` are left out). `vocabulary` is the
/// one the value was written in, when it is not that of `rules`.
pub fn decode(
    rules: &RuleSet,
    bytes: &[u8],
    vocabulary: Option<&[String]>,
) -> Result<(Option<String>, ContactState), CodecError> {
    let mut r = Reader { bytes, at: 0 };
    let format = *bytes.first().ok_or(CodecError::Empty)?;
    if ![FORMAT, FORMAT_LINKS, FORMAT_ACCOUNT].contains(&format) {
        return Err(CodecError::Version(format));
    }
    let id = vocabulary_of(bytes).ok_or(CodecError::Malformed(1))?;
    let vocabulary = match vocabulary {
        _ if id == rules.vocabulary_id => &rules.vocabulary[..],
        Some(v) if crate::rules::vocabulary_id(v) == id => v,
        _ => return Err(CodecError::UnknownVocabulary(id)),
    };
    r.at = 5;
    let n = r.len()?;
    let mut extra = Vec::with_capacity(n);
    for _ in 0..n {
        extra.push(r.str()?);
    }
    let name = |r: &mut Reader<'_>| -> Result<&str, CodecError> {
        let at = r.at;
        let i = r.varint()? as usize;
        match vocabulary.get(i) {
            Some(n) => Ok(n.as_str()),
            None => extra.get(i - vocabulary.len()).copied().ok_or(CodecError::Malformed(at)),
        }
    };
    let base = LEADERBOARD_EPOCH_MS + r.zigzag()?;
    let account = match r.varint()? {
        0 => None,
        n => Some(r.take(n as usize - 1).map(|b| String::from_utf8_lossy(b).into_owned())?),
    };
    let mut c = ContactState::new(rules.models.len());
    for _ in 0..r.len()? {
        let k = name(&mut r)?.to_string();
        let v = r.str()?.to_string();
        let t = base + r.zigzag()?;
        c.profile.insert(k, (v, t));
    }
    let n = r.len()?;
    c.seen.reserve_exact(n);
    let mut previous = base.div_euclid(1000);
    for _ in 0..n {
        let mut h = [0u8; 8];
        h[..SEEN_HASH_BYTES].copy_from_slice(r.take(SEEN_HASH_BYTES)?);
        previous += r.zigzag()?;
        c.seen.push((u64::from_le_bytes(h), previous * 1000));
    }
    let index: HashMap<&str, usize> = rules.models.iter().enumerate().map(|(i, m)| (m.name.as_str(), i)).collect();
    for _ in 0..r.len()? {
        let model = index.get(name(&mut r)?).copied();
        let score = r.f64()?;
        let at_ms = base + r.zigzag()?;
        let tier = name(&mut r)?;
        let settled_ms = if r.take(1)?[0] & 1 == 1 { base + r.zigzag()? } else { 0 };
        let mut contributions = BTreeMap::new();
        for _ in 0..r.len()? {
            contributions.insert(name(&mut r)?.to_string(), r.f64()?);
        }
        let mut fit = BTreeMap::new();
        for _ in 0..r.len()? {
            fit.insert(name(&mut r)?.to_string(), r.f64()?);
        }
        let mut caps = BTreeMap::new();
        for _ in 0..r.len()? {
            let k = name(&mut r)?.to_string();
            let window = r.zigzag()?;
            let hits = u32::try_from(r.varint()?).map_err(|_| CodecError::Malformed(r.at))?;
            caps.insert(k, CapUse { window, hits, points: r.f64()? });
        }
        let mut alerted = BTreeMap::new();
        for _ in 0..r.len()? {
            alerted.insert(name(&mut r)?.to_string(), base + r.zigzag()?);
        }
        if let Some(i) = model {
            let tier = rules.models[i].tier_index(tier);
            c.models[i] = Some(ModelState { score, at_ms, tier, contributions, fit, caps, alerted, settled_ms });
        }
    }
    if format == FORMAT_ACCOUNT || format == FORMAT_LINKS {
        c.links.into = match r.varint()? {
            0 => None,
            n => Some(r.take(n as usize - 1).map(|b| String::from_utf8_lossy(b).into_owned())?),
        };
        for _ in 0..r.len()? {
            let id = r.str()?.to_string();
            c.links.from.push((id, r.zigzag()?));
        }
    }
    if format == FORMAT_ACCOUNT {
        c.account_at = base + r.zigzag()?;
    }
    if r.at != bytes.len() {
        return Err(CodecError::Malformed(r.at));
    }
    Ok((account, c))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or(CodecError::Malformed(self.at))?;
        let b = &self.bytes[self.at..end];
        self.at = end;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let start = self.at;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.at).ok_or(CodecError::Malformed(start))?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Malformed(start))
    }

    /// A count of items that follow: never more than the bytes left, so a
    /// malformed value cannot make the reader reserve huge buffers.
    fn len(&mut self) -> Result<usize, CodecError> {
        let at = self.at;
        let n = self.varint()?;
        usize::try_from(n).ok().filter(|n| *n <= self.bytes.len() - self.at).ok_or(CodecError::Malformed(at))
    }

    fn zigzag(&mut self) -> Result<i64, CodecError> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn f64(&mut self) -> Result<f64, CodecError> {
        let b = self.take(8)?;
        Ok(f64::from_le_bytes(b.try_into().map_err(|_| CodecError::Malformed(self.at))?))
    }

    fn str(&mut self) -> Result<&'a str, CodecError> {
        let at = self.at;
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| CodecError::Malformed(at))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::score::ONCE_WINDOW;

    /// Two models; the state below uses names outside their vocabulary too.
    pub(crate) fn rules() -> RuleSet {
        RuleSet::parse(
            "models: [{name: m, half_life: 3d, tiers: [{name: warm, enter: 3, exit: 1}], rules: [{id: r, when: {kind: custom}, points: 1}]},
                      {name: n, half_life: 1d, rules: [{id: r, when: {kind: custom}, points: 1}]}]",
            "t",
        )
        .unwrap()
    }

    /// A state using every field, with awkward values.
    pub(crate) fn state() -> ContactState {
        let st = ModelState {
            score: 0.1 + 0.2,
            at_ms: 1_760_000_000_123,
            tier: 1,
            contributions: [("r".to_string(), 1.0 / 3.0), ("x".to_string(), -2.5e-17)].into_iter().collect(),
            fit: [("f".to_string(), 15.0)].into_iter().collect(),
            caps: [
                ("r".to_string(), CapUse { window: ONCE_WINDOW, hits: 1, points: 0.7 }),
                ("x".to_string(), CapUse { window: 7 << 40 | 3, hits: u32::MAX, points: 1e300 }),
            ]
            .into_iter()
            .collect(),
            alerted: [("warm".to_string(), 17)].into_iter().collect(),
            settled_ms: 1_760_000_000_999,
        };
        ContactState {
            profile: [("job_title".to_string(), ("VP; Sales = \"x\" é".to_string(), 5))].into_iter().collect(),
            models: vec![Some(st), None],
            seen: vec![(0xffff_ffff_ffff, 3000), (7, -5000), (1 << 40, 1_760_000_000_000)],
            links: Default::default(),
            account_at: 0,
        }
    }

    #[test]
    fn an_account_time_round_trips_in_format_3_with_or_without_links() {
        let rules = rules();
        let mut out = Vec::new();
        for links in [vec![], vec![("anon-1".to_string(), 7)]] {
            let mut c = state();
            c.links.from = links;
            c.account_at = 1_760_000_000_001;
            encode(&rules, Some("acme"), &c, &mut out);
            assert_eq!(out[0], FORMAT_ACCOUNT);
            assert_eq!(decode(&rules, &out, None), Ok((Some("acme".to_string()), c)));
        }
    }

    #[test]
    fn identity_links_round_trip_in_format_2_and_only_then() {
        let rules = rules();
        let mut out = Vec::new();
        encode(&rules, None, &state(), &mut out);
        assert_eq!(out[0], FORMAT, "no links: format 1, as before");
        let mut linked = state();
        linked.links.from = vec![("anon-1".into(), 0), ("é".into(), 1 << 40)];
        encode(&rules, Some("acme"), &linked, &mut out);
        assert_eq!(out[0], FORMAT_LINKS);
        assert_eq!(decode(&rules, &out, None), Ok((Some("acme".into()), linked.clone())));
        let mut visitor = ContactState::new(2);
        visitor.links.into = Some("c-1 é".into());
        encode(&rules, None, &visitor, &mut out);
        assert_eq!(decode(&rules, &out, None), Ok((None, visitor)));
        assert_eq!(vocabulary_of(&out), Some(rules.vocabulary_id));
    }

    #[test]
    fn a_state_round_trips_exactly() {
        let rules = rules();
        let mut out = Vec::new();
        for account in [None, Some(""), Some("acme")] {
            encode(&rules, account, &state(), &mut out);
            assert_eq!(decode(&rules, &out, None), Ok((account.map(String::from), state())));
        }
        let empty = ContactState::new(2);
        encode(&rules, None, &empty, &mut out);
        assert_eq!(decode(&rules, &out, None), Ok((None, empty)));
    }

    #[test]
    fn a_value_reads_under_other_rules() {
        let mut out = Vec::new();
        encode(&rules(), Some("a"), &state(), &mut out);
        // Models swapped and one renamed: the state follows its model's name.
        let other = RuleSet::parse(
            "models: [{name: z, half_life: 1d, rules: [{id: r, when: {kind: custom}, points: 1}]},
                      {name: m, half_life: 3d, tiers: [{name: warm, enter: 3, exit: 1}], rules: [{id: q, when: {kind: custom}, points: 1}]}]",
            "t",
        )
        .unwrap();
        let id = rules().vocabulary_id;
        assert_eq!(decode(&other, &out, None), Err(CodecError::UnknownVocabulary(id)), "not misread");
        let (_, c) = decode(&other, &out, Some(&rules().vocabulary)).unwrap();
        assert!(c.models[0].is_none());
        assert_eq!(c.models[1], state().models[0], "the old rule names stay in the breakdown");
    }

    #[test]
    fn bad_values_are_refused_not_misread() {
        let rules = rules();
        let mut out = Vec::new();
        encode(&rules, Some("acme"), &state(), &mut out);
        assert_eq!(decode(&rules, &[], None), Err(CodecError::Empty));
        assert_eq!(decode(&rules, &[9, 0], None), Err(CodecError::Version(9)));
        for cut in 1..out.len() {
            assert!(decode(&rules, &out[..cut], None).is_err(), "cut at {cut}");
        }
        let mut longer = out.clone();
        longer.push(0);
        assert!(matches!(decode(&rules, &longer, None), Err(CodecError::Malformed(_))));
        // A huge count fails without reserving memory for it.
        assert!(decode(&rules, &[FORMAT, 0xff, 0xff, 0xff, 0xff, 0x0f], None).is_err());
    }

    #[test]
    fn a_typical_contact_is_small() {
        let rules = rules();
        let mut c = ContactState::new(2);
        let mut st = ModelState::new(1_760_000_000_000);
        st.score = 41.7;
        st.tier = 1;
        for (i, r) in ["page-view", "pricing", "email", "download"].iter().enumerate() {
            st.contributions.insert(r.to_string(), 10.0 + i as f64 / 3.0);
        }
        st.alerted.insert("warm".into(), 1_759_000_000_000);
        c.models[0] = Some(st);
        for i in 0..10 {
            c.seen.push((crate::score::event_hash(&format!("e{i}")), 1_760_000_000_000 + i * 1000));
        }
        for (_, t) in &c.seen {
            assert_eq!(t % 1000, 0, "arrivals are kept to the second");
        }
        let mut out = Vec::new();
        encode(&rules, None, &c, &mut out);
        assert!(out.len() <= 200, "{} bytes", out.len());
        assert_eq!(decode(&rules, &out, None).unwrap().1, c);
    }
}
