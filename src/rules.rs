//! The rules file: scoring models, their behaviour and fit rules, caps,
//! half-lives and tiers. The reference is `docs/rules.md`.
//!
//! ```yaml
//! models:
//!   - name: engagement
//!     version: 1
//!     half_life: 14d
//!     tiers:
//!       - { name: warm, enter: 30, exit: 20 }
//!       - { name: hot,  enter: 60, exit: 45, cooldown: 7d }
//!     rules:
//!       - id: pricing-page
//!         when: { kind: page_view, url: { prefix: /pricing } }
//!         points: 10
//!         cap: { hits: 3, per: day }
//!     fit:
//!       - id: decision-maker
//!         when: { job_title: { regex: "(?i)\\b(vp|director|head|chief|founder)\\b" } }
//!         points: 20
//! ```
//!
//! Loading validates everything a running scorer relies on. Errors name the
//! file, the field path (`models[0].rules[2].when.url`) and, where the parser
//! knows it, the line and column.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::proto::interaction_event::Interaction;
use crate::proto::InteractionEvent;
use crate::score::Millis;

/// Why a rules file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file could not be read.
    #[error("cannot read rules file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid: the message names the field and, where known,
    /// the line.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The field path, e.g. `models[0].rules[2].when.url`.
        field: String,
        /// What is wrong and how to fix it, with the line where known.
        message: String,
    },
}

/// The kinds of interaction a rule can match: the `interaction` oneof of
/// [`InteractionEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InteractionKind {
    /// `PageView`.
    PageView,
    /// `FormSubmission`.
    FormSubmission,
    /// `WebinarAttendance`.
    WebinarAttendance,
    /// `EmailEngagement`.
    EmailEngagement,
    /// `ContentDownload`.
    ContentDownload,
    /// `ProfileUpdate`.
    ProfileUpdate,
    /// `CustomInteraction`.
    Custom,
}

impl InteractionKind {
    /// The kind of an event's interaction, if it has one.
    pub fn of(event: &InteractionEvent) -> Option<Self> {
        Some(match event.interaction.as_ref()? {
            Interaction::PageView(_) => Self::PageView,
            Interaction::FormSubmission(_) => Self::FormSubmission,
            Interaction::WebinarAttendance(_) => Self::WebinarAttendance,
            Interaction::EmailEngagement(_) => Self::EmailEngagement,
            Interaction::ContentDownload(_) => Self::ContentDownload,
            Interaction::ProfileUpdate(_) => Self::ProfileUpdate,
            Interaction::Custom(_) => Self::Custom,
        })
    }

    /// The name used in rules files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PageView => "page_view",
            Self::FormSubmission => "form_submission",
            Self::WebinarAttendance => "webinar_attendance",
            Self::EmailEngagement => "email_engagement",
            Self::ContentDownload => "content_download",
            Self::ProfileUpdate => "profile_update",
            Self::Custom => "custom",
        }
    }

    /// The fields a rule of this kind may test; a trailing `.` means a map
    /// whose keys follow (`fields.email_domain`).
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Self::PageView => &["url", "title", "duration_seconds", "referrer"],
            Self::FormSubmission => &["form_id", "fields."],
            Self::WebinarAttendance => &["webinar_id", "attended", "minutes_attended"],
            Self::EmailEngagement => &["campaign_id", "action", "link_url"],
            Self::ContentDownload => &["asset_id", "asset_type"],
            Self::ProfileUpdate => &["attributes."],
            Self::Custom => &["name", "properties."],
        }
    }
}

/// Fields every event has, whatever its kind.
const COMMON_FIELDS: &[&str] = &["event_id", "account_id", "context."];

/// A value read from an event or a profile.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// Text.
    Str(&'a str),
    /// A number.
    Num(f64),
    /// A flag.
    Bool(bool),
}

impl Value<'_> {
    fn as_number(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            Value::Str(s) => s.trim().parse().ok(),
            Value::Bool(_) => None,
        }
    }

    fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Value::Str(s) => std::borrow::Cow::Borrowed(s),
            Value::Num(n) => std::borrow::Cow::Owned(n.to_string()),
            Value::Bool(b) => std::borrow::Cow::Owned(b.to_string()),
        }
    }
}

/// Reads a field of an event by its path in the rules language.
pub fn event_field<'a>(event: &'a InteractionEvent, path: &str) -> Option<Value<'a>> {
    let s = |v: &'a String| (!v.is_empty()).then_some(Value::Str(v.as_str()));
    let map = |m: &'a BTreeMap<String, String>, key: &str| m.get(key).and_then(s);
    if let Some(key) = path.strip_prefix("context.") {
        return map(&event.context, key);
    }
    match path {
        "event_id" => return s(&event.event_id),
        "account_id" => return s(&event.account_id),
        _ => {}
    }
    match event.interaction.as_ref()? {
        Interaction::PageView(p) => match path {
            "url" => s(&p.url),
            "title" => s(&p.title),
            "duration_seconds" => Some(Value::Num(f64::from(p.duration_seconds))),
            "referrer" => s(&p.referrer),
            _ => None,
        },
        Interaction::FormSubmission(f) => match path {
            "form_id" => s(&f.form_id),
            _ => map(&f.fields, path.strip_prefix("fields.")?),
        },
        Interaction::WebinarAttendance(w) => match path {
            "webinar_id" => s(&w.webinar_id),
            "attended" => Some(Value::Bool(w.attended)),
            "minutes_attended" => Some(Value::Num(f64::from(w.minutes_attended))),
            _ => None,
        },
        Interaction::EmailEngagement(e) => match path {
            "campaign_id" => s(&e.campaign_id),
            "action" => Some(Value::Str(crate::proto::email_engagement::Action::name_of(e.action))),
            "link_url" => s(&e.link_url),
            _ => None,
        },
        Interaction::ContentDownload(d) => match path {
            "asset_id" => s(&d.asset_id),
            "asset_type" => s(&d.asset_type),
            _ => None,
        },
        Interaction::ProfileUpdate(p) => map(&p.attributes, path.strip_prefix("attributes.")?),
        Interaction::Custom(c) => match path {
            "name" => s(&c.name),
            _ => map(&c.properties, path.strip_prefix("properties.")?),
        },
    }
}

/// A test on one value.
#[derive(Debug, Clone)]
pub enum Condition {
    /// Equal text, or equal number when both sides are numbers, or equal flag.
    Equals(String),
    /// Equal to one of these.
    OneOf(Vec<String>),
    /// Text starts with this.
    Prefix(String),
    /// Text ends with this.
    Suffix(String),
    /// Text contains this.
    Contains(String),
    /// Text matches this regular expression (anywhere; anchor with `^...$`).
    Regex(regex::Regex),
    /// Number greater than.
    Gt(f64),
    /// Number greater than or equal.
    Gte(f64),
    /// Number less than.
    Lt(f64),
    /// Number less than or equal.
    Lte(f64),
    /// The field is present and non-empty (`true`), or absent (`false`).
    Exists(bool),
    /// The inner condition does not hold.
    Not(Box<Condition>),
    /// Every condition holds.
    All(Vec<Condition>),
}

impl Condition {
    /// Whether the condition holds for a value (`None`: the field is absent).
    pub fn holds(&self, v: Option<&Value<'_>>) -> bool {
        match self {
            Condition::Exists(want) => v.is_some() == *want,
            Condition::Not(c) => !c.holds(v),
            Condition::All(cs) => cs.iter().all(|c| c.holds(v)),
            _ => {
                let Some(v) = v else { return false };
                match self {
                    Condition::Equals(x) => equals(v, x),
                    Condition::OneOf(xs) => xs.iter().any(|x| equals(v, x)),
                    Condition::Prefix(p) => v.text().starts_with(p.as_str()),
                    Condition::Suffix(p) => v.text().ends_with(p.as_str()),
                    Condition::Contains(p) => v.text().contains(p.as_str()),
                    Condition::Regex(r) => r.is_match(&v.text()),
                    Condition::Gt(n) => v.as_number().is_some_and(|x| x > *n),
                    Condition::Gte(n) => v.as_number().is_some_and(|x| x >= *n),
                    Condition::Lt(n) => v.as_number().is_some_and(|x| x < *n),
                    Condition::Lte(n) => v.as_number().is_some_and(|x| x <= *n),
                    Condition::Exists(_) | Condition::Not(_) | Condition::All(_) => unreachable!(),
                }
            }
        }
    }
}

fn equals(v: &Value<'_>, x: &str) -> bool {
    match v {
        Value::Str(s) => *s == x,
        Value::Num(n) => x.trim().parse::<f64>().is_ok_and(|y| y == *n),
        Value::Bool(b) => x.parse::<bool>().is_ok_and(|y| y == *b),
    }
}

fn scalar_text(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn condition_from(v: &serde_yaml::Value) -> Result<Condition, String> {
    use serde_yaml::Value as Y;
    if let Some(s) = scalar_text(v) {
        return Ok(Condition::Equals(s));
    }
    let number = |op: &str, v: &Y| v.as_f64().ok_or_else(|| format!("`{op}` needs a number"));
    let text = |op: &str, v: &Y| scalar_text(v).ok_or_else(|| format!("`{op}` needs a text value"));
    match v {
        Y::Sequence(items) => Ok(Condition::OneOf(
            items
                .iter()
                .map(|i| scalar_text(i).ok_or("a list of values must hold plain values"))
                .collect::<Result<_, _>>()?,
        )),
        Y::Mapping(m) => {
            let mut all = Vec::new();
            for (k, v) in m {
                let op = k.as_str().ok_or("operators are names like `prefix` or `gte`")?;
                all.push(match op {
                    "equals" => Condition::Equals(text(op, v)?),
                    "one_of" => match condition_from(v)? {
                        c @ Condition::OneOf(_) => c,
                        _ => return Err("`one_of` needs a list, e.g. `one_of: [a, b]`".into()),
                    },
                    "prefix" => Condition::Prefix(text(op, v)?),
                    "suffix" => Condition::Suffix(text(op, v)?),
                    "contains" => Condition::Contains(text(op, v)?),
                    "regex" => Condition::Regex(
                        regex::Regex::new(&text(op, v)?).map_err(|e| format!("invalid regex: {e}"))?,
                    ),
                    "gt" => Condition::Gt(number(op, v)?),
                    "gte" => Condition::Gte(number(op, v)?),
                    "lt" => Condition::Lt(number(op, v)?),
                    "lte" => Condition::Lte(number(op, v)?),
                    "exists" => Condition::Exists(v.as_bool().ok_or("`exists` needs true or false")?),
                    "not" => Condition::Not(Box::new(condition_from(v)?)),
                    other => {
                        return Err(format!(
                            "unknown operator `{other}`; use equals, one_of, prefix, suffix, contains, regex, gt, gte, lt, lte, exists or not"
                        ))
                    }
                });
            }
            match all.len() {
                0 => Err("an empty condition matches nothing; give an operator".into()),
                1 => Ok(all.pop().expect("one")),
                _ => Ok(Condition::All(all)),
            }
        }
        _ => Err("a condition is a value, a list of values, or operators like `{ prefix: /blog }`".into()),
    }
}

/// Conditions by field path, all of which must hold.
#[derive(Debug, Clone, Default)]
pub struct Conditions(pub Vec<(String, Condition)>);

impl<'de> Deserialize<'de> for Conditions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = serde_yaml::Mapping::deserialize(d)?;
        let mut out = Vec::with_capacity(m.len());
        for (k, v) in &m {
            let key = scalar_text(k).ok_or_else(|| serde::de::Error::custom("field names must be plain text"))?;
            let c = condition_from(v).map_err(|e| serde::de::Error::custom(format!("`{key}`: {e}")))?;
            out.push((key, c));
        }
        Ok(Conditions(out))
    }
}

/// The time window of a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// A UTC calendar day.
    Day,
    /// A week from Monday 00:00 UTC.
    Week,
    /// A UTC calendar month.
    Month,
}

impl Window {
    /// The window an event time falls in, as a number that grows with time.
    pub fn index(self, at_ms: Millis) -> i64 {
        let day = at_ms.div_euclid(86_400_000);
        match self {
            Window::Day => day,
            // 1970-01-01 was a Thursday: shift so weeks start on Monday.
            Window::Week => (day + 3).div_euclid(7),
            Window::Month => {
                let (y, m, _) = civil_from_days(day);
                y * 12 + i64::from(m) - 1
            }
        }
    }
}

/// (year, month 1-12, day 1-31) of a day number since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// What a cap limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CapLimit {
    /// At most this many matching events count.
    Hits(u32),
    /// At most this many points (before decay) count.
    Points(f64),
}

/// A cap on a rule: at most N hits or N points per window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cap {
    /// The limit.
    pub limit: CapLimit,
    /// The window.
    pub per: Window,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCap {
    hits: Option<u32>,
    points: Option<f64>,
    per: Window,
}

impl<'de> Deserialize<'de> for Cap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawCap::deserialize(d)?;
        let limit = match (raw.hits, raw.points) {
            (Some(h), None) if h > 0 => CapLimit::Hits(h),
            (None, Some(p)) if p.is_finite() && p > 0.0 => CapLimit::Points(p),
            _ => return Err(serde::de::Error::custom("a cap needs exactly one of `hits` or `points`, above zero")),
        };
        Ok(Cap { limit, per: raw.per })
    }
}

/// A behaviour rule: matching events add points that decay.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Stable id, shown in explanations and alerts.
    pub id: String,
    /// The interaction kind it matches.
    pub kind: InteractionKind,
    /// Conditions on the event's fields.
    pub when: Conditions,
    /// Points per matching event; may be negative.
    pub points: f64,
    /// At most so many hits or points per window.
    pub cap: Option<Cap>,
    /// Counts at most once per contact, ever.
    pub once: bool,
}

impl Rule {
    /// Whether an event matches this rule.
    pub fn matches(&self, event: &InteractionEvent) -> bool {
        InteractionKind::of(event) == Some(self.kind)
            && self.when.0.iter().all(|(path, c)| c.holds(event_field(event, path).as_ref()))
    }
}

/// A fit rule: points while the contact's profile matches; no decay.
#[derive(Debug, Clone)]
pub struct FitRule {
    /// Stable id, shown in explanations and alerts.
    pub id: String,
    /// Conditions on profile attributes, by attribute name.
    pub when: Conditions,
    /// Points while the profile matches; may be negative.
    pub points: f64,
}

impl FitRule {
    /// Whether a profile (attribute -> value) matches this rule.
    pub fn matches(&self, profile: &BTreeMap<String, String>) -> bool {
        self.when.0.iter().all(|(attr, c)| {
            let v = profile.get(attr).filter(|v| !v.is_empty()).map(|v| Value::Str(v.as_str()));
            c.holds(v.as_ref())
        })
    }
}

/// A requirement on another model's score for a tier.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    /// Index of the other model in the rule set.
    pub model: usize,
    /// Its name.
    pub model_name: String,
    /// Its score must be at least this to enter the tier.
    pub enter: f64,
    /// The tier is left when its score falls below this.
    pub exit: f64,
}

/// A tier with hysteresis: entered at `enter`, left (downward) below `exit`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    /// Tier name, e.g. `hot`.
    pub name: String,
    /// Score at or above which the tier is entered.
    pub enter: f64,
    /// Score below which the tier is left; at most `enter`.
    pub exit: f64,
    /// No new alert into this tier within this time of the last one.
    pub cooldown_ms: Option<Millis>,
    /// Other models' scores this tier also requires.
    pub requires: Vec<Requirement>,
}

/// One scoring model: a half-life, tiers, behaviour and fit rules.
#[derive(Debug, Clone)]
pub struct Model {
    /// Name, used in Redis fields, alerts and metrics.
    pub name: String,
    /// Version of the model, carried on alerts.
    pub version: u32,
    /// Half-life in seconds: behaviour points lose half their worth in this time.
    pub half_life_secs: f64,
    /// The tier a contact is in below every threshold.
    pub base_tier: String,
    /// Tiers above the base tier, in ascending order of threshold.
    pub tiers: Vec<Tier>,
    /// Behaviour rules, in file order.
    pub rules: Vec<Rule>,
    /// Fit rules, in file order.
    pub fit: Vec<FitRule>,
}

impl Model {
    /// Name of tier `index`, where 0 is the base tier and `i > 0` is
    /// `tiers[i - 1]`.
    pub fn tier_name(&self, index: usize) -> &str {
        if index == 0 {
            &self.base_tier
        } else {
            &self.tiers[index - 1].name
        }
    }

    /// Index of the tier with this name (0 for the base tier or an unknown
    /// name, so a removed tier falls back to the base).
    pub fn tier_index(&self, name: &str) -> usize {
        self.tiers.iter().position(|t| t.name == name).map_or(0, |i| i + 1)
    }

    /// The behaviour rules an event matches.
    pub fn matches<'a>(&'a self, event: &'a InteractionEvent) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.matches(event))
    }

    /// The fit points of a profile, by fit rule, for the rules that match.
    pub fn fit_parts(&self, profile: &BTreeMap<String, String>) -> Vec<(&str, f64)> {
        self.fit.iter().filter(|r| r.matches(profile)).map(|r| (r.id.as_str(), r.points)).collect()
    }

    /// Whether two models define the same scoring (version aside).
    pub fn same_definition(&self, other: &Model) -> bool {
        format!("{:?}", Model { version: 0, ..self.clone() }) == format!("{:?}", Model { version: 0, ..other.clone() })
    }
}

/// A validated set of scoring models, evaluated side by side.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// The models, in file order.
    pub models: Vec<Model>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    models: Vec<RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: Name,
    #[serde(default = "one")]
    version: u32,
    half_life: HalfLife,
    #[serde(default = "cold")]
    base_tier: Name,
    #[serde(default)]
    tiers: Vec<RawTier>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    fit: Vec<RawFitRule>,
}

/// A name usable as a model, tier or rule id: it ends up in Redis fields and
/// metric labels.
#[derive(Debug, Clone, PartialEq)]
struct Name(String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if ok {
            Ok(Name(s))
        } else {
            Err(serde::de::Error::custom(format!(
                "`{s}` is not a valid name: use 1-64 letters, digits, `-`, `_` or `.`"
            )))
        }
    }
}

struct HalfLife(Duration);

impl<'de> Deserialize<'de> for HalfLife {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match humantime::parse_duration(&s) {
            Ok(x) if !x.is_zero() => Ok(HalfLife(x)),
            Ok(_) => Err(serde::de::Error::custom("must be greater than zero")),
            Err(e) => {
                Err(serde::de::Error::custom(format!("`{s}` is not a duration ({e}); write e.g. `14d` or `36h`")))
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    enter: f64,
    exit: Option<f64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawRequire {
    At(f64),
    Band(RawRequirement),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    name: Name,
    enter: f64,
    exit: f64,
    cooldown: Option<String>,
    #[serde(default)]
    requires: BTreeMap<String, RawRequire>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Name,
    when: WhenWithKind,
    points: f64,
    cap: Option<Cap>,
    #[serde(default)]
    once: bool,
}

/// `when:` of a behaviour rule: `kind` plus conditions on fields.
struct WhenWithKind {
    kind: InteractionKind,
    conditions: Conditions,
}

impl<'de> Deserialize<'de> for WhenWithKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut m = serde_yaml::Mapping::deserialize(d)?;
        let kind = m.remove("kind").ok_or_else(|| {
            serde::de::Error::custom("`when` needs a `kind`: page_view, form_submission, webinar_attendance, email_engagement, content_download, profile_update or custom")
        })?;
        let kind: InteractionKind =
            serde_yaml::from_value(kind).map_err(|e| serde::de::Error::custom(format!("kind: {e}")))?;
        let conditions: Conditions =
            serde_yaml::from_value(serde_yaml::Value::Mapping(m)).map_err(serde::de::Error::custom)?;
        for (path, _) in &conditions.0 {
            let known = kind.fields().iter().chain(COMMON_FIELDS).any(|f| match f.strip_suffix('.') {
                Some(map) => path.strip_prefix(map).and_then(|k| k.strip_prefix('.')).is_some_and(|k| !k.is_empty()),
                None => path == f,
            });
            if !known {
                let mut all: Vec<&str> = kind.fields().to_vec();
                all.extend(COMMON_FIELDS);
                let all: Vec<String> =
                    all.iter().map(|f| if f.ends_with('.') { format!("{f}<key>") } else { f.to_string() }).collect();
                return Err(serde::de::Error::custom(format!(
                    "`{path}` is not a field of {}; use one of: {}",
                    kind.as_str(),
                    all.join(", ")
                )));
            }
        }
        Ok(WhenWithKind { kind, conditions })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFitRule {
    id: Name,
    when: Conditions,
    points: f64,
}

fn one() -> u32 {
    1
}

fn cold() -> Name {
    Name("cold".to_string())
}

/// The 1-based number of the first line containing `needle`, to place
/// errors found after parsing.
fn find_line(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

impl RuleSet {
    /// Reads and validates a rules file.
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| RulesError::Io { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates rules from YAML text; `origin` names the source
    /// in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, RulesError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let raw: RawFile = serde_path_to_error::deserialize(de).map_err(|e| RulesError::Invalid {
            path: origin.to_string(),
            field: e.path().to_string(),
            message: e.into_inner().to_string(),
        })?;
        let invalid = |field: String, message: String| RulesError::Invalid { path: origin.to_string(), field, message };
        if raw.models.is_empty() {
            return Err(invalid("models".into(), "at least one model is required".into()));
        }
        let names: Vec<String> = raw.models.iter().map(|m| m.name.0.clone()).collect();
        let mut models: Vec<Model> = Vec::with_capacity(raw.models.len());
        for (mi, m) in raw.models.into_iter().enumerate() {
            let at = |f: &str| format!("models[{mi}].{f}");
            let line = |needle: &str| find_line(text, needle).map(|l| format!(" (line {l})")).unwrap_or_default();
            if names[..mi].contains(&m.name.0) {
                return Err(invalid(at("name"), format!("model `{}` is defined twice{}", m.name.0, line(&m.name.0))));
            }
            if m.rules.is_empty() && m.fit.is_empty() {
                return Err(invalid(at("rules"), format!("model `{}` has no rules and no fit rules", m.name.0)));
            }
            let mut tiers: Vec<Tier> = Vec::new();
            for (ti, t) in m.tiers.into_iter().enumerate() {
                let tat = |f: &str| at(&format!("tiers[{ti}].{f}"));
                let here = line(&format!("name: {}", t.name.0));
                if t.name == m.base_tier || tiers.iter().any(|x| x.name == t.name.0) {
                    return Err(invalid(
                        tat("name"),
                        format!("tier `{}` is the base tier or listed twice{here}", t.name.0),
                    ));
                }
                if !(t.enter.is_finite() && t.enter > 0.0) {
                    return Err(invalid(tat("enter"), format!("must be a number greater than zero{here}")));
                }
                if !(t.exit.is_finite() && t.exit > 0.0 && t.exit <= t.enter) {
                    return Err(invalid(
                        tat("exit"),
                        format!(
                            "exit ({}) must be greater than zero and at most enter ({}); an exit above enter would make the tier flap{here}",
                            t.exit, t.enter
                        ),
                    ));
                }
                if let Some(prev) = tiers.last() {
                    if t.enter <= prev.enter || t.exit <= prev.exit {
                        return Err(invalid(
                            tat("enter"),
                            format!(
                                "tiers are listed in ascending order: enter and exit of `{}` must exceed those of `{}`{here}",
                                t.name.0, prev.name
                            ),
                        ));
                    }
                }
                let cooldown_ms = match &t.cooldown {
                    None => None,
                    Some(c) => Some(humantime::parse_duration(c).map_err(|e| {
                        invalid(tat("cooldown"), format!("`{c}` is not a duration ({e}); write e.g. `7d`{here}"))
                    })?)
                    .map(|d| d.as_millis() as Millis),
                };
                let mut requires = Vec::new();
                for (other, r) in t.requires {
                    let (enter, exit) = match r {
                        RawRequire::At(x) => (x, x),
                        RawRequire::Band(b) => (b.enter, b.exit.unwrap_or(b.enter)),
                    };
                    if !(enter.is_finite() && exit.is_finite() && exit <= enter) {
                        return Err(invalid(
                            tat(&format!("requires.{other}.exit")),
                            format!("must be at most enter{}", line(&format!("{other}:"))),
                        ));
                    }
                    let Some(idx) = names.iter().position(|n| *n == other) else {
                        return Err(invalid(
                            tat(&format!("requires.{other}")),
                            format!(
                                "no model is named `{other}`; models: {}{}",
                                names.join(", "),
                                line(&format!("{other}:"))
                            ),
                        ));
                    };
                    if idx == mi {
                        return Err(invalid(
                            tat(&format!("requires.{other}")),
                            "a tier cannot require its own model".into(),
                        ));
                    }
                    requires.push(Requirement { model: idx, model_name: other, enter, exit });
                }
                tiers.push(Tier { name: t.name.0, enter: t.enter, exit: t.exit, cooldown_ms, requires });
            }
            let mut ids: Vec<&str> = Vec::new();
            for (i, id) in m.rules.iter().map(|r| &r.id.0).chain(m.fit.iter().map(|r| &r.id.0)).enumerate() {
                if ids.contains(&id.as_str()) {
                    let field = if i < m.rules.len() {
                        format!("rules[{i}].id")
                    } else {
                        format!("fit[{}].id", i - m.rules.len())
                    };
                    return Err(invalid(
                        at(&field),
                        format!("rule id `{id}` is used twice in the model{}", line(&format!("id: {id}"))),
                    ));
                }
                ids.push(id);
            }
            for (ri, r) in m.rules.iter().enumerate() {
                let here = line(&format!("id: {}", r.id.0));
                if !r.points.is_finite() {
                    return Err(invalid(at(&format!("rules[{ri}].points")), format!("must be a finite number{here}")));
                }
                if r.once && r.cap.is_some() {
                    return Err(invalid(
                        at(&format!("rules[{ri}].once")),
                        format!("use either `once` or `cap`, not both{here}"),
                    ));
                }
            }
            for (fi, f) in m.fit.iter().enumerate() {
                if !f.points.is_finite() {
                    return Err(invalid(at(&format!("fit[{fi}].points")), "must be a finite number".into()));
                }
            }
            models.push(Model {
                name: m.name.0,
                version: m.version,
                half_life_secs: m.half_life.0.as_secs_f64(),
                base_tier: m.base_tier.0,
                tiers,
                rules: m
                    .rules
                    .into_iter()
                    .map(|r| Rule {
                        id: r.id.0,
                        kind: r.when.kind,
                        when: r.when.conditions,
                        points: r.points,
                        cap: r.cap,
                        once: r.once,
                    })
                    .collect(),
                fit: m.fit.into_iter().map(|f| FitRule { id: f.id.0, when: f.when, points: f.points }).collect(),
            });
        }
        Ok(RuleSet { models })
    }

    /// The rule set to run after a reload: `next`, with the version of every
    /// model whose definition changed raised above the one in force, so
    /// alerts after a change never carry an old version number.
    pub fn succeed(&self, mut next: RuleSet) -> RuleSet {
        for m in &mut next.models {
            if let Some(old) = self.models.iter().find(|o| o.name == m.name) {
                if !m.same_definition(old) && m.version <= old.version {
                    m.version = old.version + 1;
                } else if m.same_definition(old) {
                    m.version = m.version.max(old.version);
                }
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{EmailEngagement, FormSubmission, PageView, WebinarAttendance};

    const GOOD: &str = r#"
models:
  - name: engagement
    version: 3
    half_life: 7d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: 45, cooldown: 7d }
      - name: sales-ready
        enter: 80
        exit: 70
        requires: { fit: 30 }
    rules:
      - id: pricing
        when: { kind: page_view, url: { prefix: /pricing } }
        points: 10
        cap: { hits: 3, per: day }
      - id: long-webinar
        when: { kind: webinar_attendance, attended: true, minutes_attended: { gte: 30 } }
        points: 30
      - id: unsub
        when: { kind: email_engagement, action: unsubscribe }
        points: -10
      - id: newsletter
        when: { kind: form_submission, form_id: newsletter, fields.email_domain: { not: { one_of: [rival.com] } } }
        points: 12
        once: true
  - name: fit
    half_life: 365d
    fit:
      - id: tech
        when: { industry: [software, technology] }
        points: 15
      - id: leader
        when: { job_title: { regex: "(?i)\\b(vp|chief|founder)\\b" } }
        points: 20
"#;

    fn parse(text: &str) -> Result<RuleSet, String> {
        RuleSet::parse(text, "t.yaml").map_err(|e| e.to_string())
    }

    fn page(url: &str) -> InteractionEvent {
        InteractionEvent {
            interaction: Some(Interaction::PageView(PageView { url: url.into(), ..Default::default() })),
            ..Default::default()
        }
    }

    #[test]
    fn parses_models_rules_and_tiers() {
        let rs = parse(GOOD).unwrap();
        let m = &rs.models[0];
        assert_eq!((m.version, m.half_life_secs), (3, 7.0 * 86400.0));
        assert_eq!(m.tiers[1].cooldown_ms, Some(7 * 86_400_000));
        assert_eq!(
            m.tiers[2].requires,
            vec![Requirement { model: 1, model_name: "fit".into(), enter: 30.0, exit: 30.0 }]
        );
        assert_eq!(m.rules[0].cap, Some(Cap { limit: CapLimit::Hits(3), per: Window::Day }));
        assert!(m.rules[3].once);
        assert_eq!(rs.models[1].fit.len(), 2);
    }

    #[test]
    fn conditions_match_fields() {
        let rs = parse(GOOD).unwrap();
        let m = &rs.models[0];
        assert!(m.rules[0].matches(&page("/pricing/enterprise")));
        assert!(!m.rules[0].matches(&page("/blog/pricing")));
        let webinar = |attended, minutes| InteractionEvent {
            interaction: Some(Interaction::WebinarAttendance(WebinarAttendance {
                webinar_id: "w".into(),
                attended,
                minutes_attended: minutes,
            })),
            ..Default::default()
        };
        assert!(m.rules[1].matches(&webinar(true, 30)));
        assert!(!m.rules[1].matches(&webinar(true, 29)));
        assert!(!m.rules[1].matches(&webinar(false, 45)));
        let email = |action: i32| InteractionEvent {
            interaction: Some(Interaction::EmailEngagement(EmailEngagement { action, ..Default::default() })),
            ..Default::default()
        };
        assert!(m.rules[2].matches(&email(3)));
        assert!(!m.rules[2].matches(&email(1)));
        let form = |domain: &str| InteractionEvent {
            interaction: Some(Interaction::FormSubmission(FormSubmission {
                form_id: "newsletter".into(),
                fields: [("email_domain".to_string(), domain.to_string())].into_iter().collect(),
            })),
            ..Default::default()
        };
        assert!(m.rules[3].matches(&form("acme.com")));
        assert!(!m.rules[3].matches(&form("rival.com")));
        let profile = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
        };
        let fit = &rs.models[1];
        let parts = fit.fit_parts(&profile(&[("industry", "software"), ("job_title", "VP Sales")]));
        assert_eq!(parts, vec![("tech", 15.0), ("leader", 20.0)]);
        assert!(fit.fit_parts(&profile(&[("industry", "retail"), ("job_title", "Vice")])).is_empty());
    }

    #[test]
    fn operators_cover_exists_not_and_numbers_in_text() {
        let c = condition_from(&serde_yaml::from_str("{ gte: 100, lt: 1000 }").unwrap()).unwrap();
        assert!(c.holds(Some(&Value::Str("250"))));
        assert!(!c.holds(Some(&Value::Str("2500"))));
        assert!(!c.holds(Some(&Value::Str("many"))));
        let e = condition_from(&serde_yaml::from_str("{ exists: false }").unwrap()).unwrap();
        assert!(e.holds(None) && !e.holds(Some(&Value::Str("x"))));
        let n = condition_from(&serde_yaml::from_str("{ not: { suffix: .edu } }").unwrap()).unwrap();
        assert!(n.holds(Some(&Value::Str("acme.com"))) && !n.holds(Some(&Value::Str("mit.edu"))));
        assert!(n.holds(None), "`not` of a condition on an absent field holds");
    }

    #[test]
    fn broken_files_are_refused_naming_line_and_field() {
        let e = parse(&GOOD.replace("exit: 45, cooldown", "exit: 70, cooldown")).unwrap_err();
        assert!(e.contains("models[0].tiers[1]") && e.contains("line 8") && e.contains("flap"), "{e}");
        let e = parse(&GOOD.replace("points: 10\n", "points: 10\n        weight: 2\n")).unwrap_err();
        assert!(e.contains("models[0].rules[0]") && e.contains("weight") && e.contains("line"), "{e}");
        let e = parse(&GOOD.replace("(?i)", "(?i")).unwrap_err();
        assert!(e.contains("models[1].fit[1].when") && e.contains("invalid regex") && e.contains("line"), "{e}");
        let e = parse(&GOOD.replace("url: { prefix", "form_id: { prefix")).unwrap_err();
        assert!(e.contains("models[0].rules[0].when") && e.contains("not a field of page_view"), "{e}");
        let e = parse(&GOOD.replace("kind: page_view", "kind: pageview")).unwrap_err();
        assert!(e.contains("models[0].rules[0].when") && e.contains("pageview"), "{e}");
        let e = parse(&GOOD.replace("requires: { fit: 30 }", "requires: { fitness: 30 }")).unwrap_err();
        assert!(e.contains("requires.fitness") && e.contains("line 12"), "{e}");
        let e = parse(&GOOD.replace("7d\n    tiers", "soon\n    tiers")).unwrap_err();
        assert!(e.contains("models[0].half_life"), "{e}");
        let e = parse(&GOOD.replace("cap: { hits: 3, per: day }", "cap: { hits: 3, per: fortnight }")).unwrap_err();
        assert!(e.contains("models[0].rules[0].cap") && e.contains("fortnight"), "{e}");
    }

    #[test]
    fn windows_follow_the_calendar() {
        let ms = |s: &str| {
            humantime::parse_rfc3339(s).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
        };
        assert_eq!(Window::Day.index(ms("2026-11-23T23:59:59Z")) + 1, Window::Day.index(ms("2026-11-24T00:00:00Z")));
        // 2026-11-23 is a Monday.
        assert_eq!(Window::Week.index(ms("2026-11-22T23:59:59Z")) + 1, Window::Week.index(ms("2026-11-23T00:00:00Z")));
        assert_eq!(Window::Week.index(ms("2026-11-23T00:00:00Z")), Window::Week.index(ms("2026-11-29T23:59:59Z")));
        assert_eq!(
            Window::Month.index(ms("2026-02-28T12:00:00Z")) + 1,
            Window::Month.index(ms("2026-03-01T00:00:00Z"))
        );
        assert_eq!(Window::Month.index(ms("2024-02-29T12:00:00Z")), Window::Month.index(ms("2024-02-01T00:00:00Z")));
    }

    #[test]
    fn a_changed_model_gets_a_new_version_on_reload() {
        let old = parse(GOOD).unwrap();
        let same = old.succeed(parse(GOOD).unwrap());
        assert_eq!(same.models[0].version, 3);
        let changed = old.succeed(parse(&GOOD.replace("points: 10\n", "points: 11\n")).unwrap());
        assert_eq!(changed.models[0].version, 4, "changed without a version bump: raised");
        assert_eq!(changed.models[1].version, 1, "unchanged model keeps its version");
        let bumped = old
            .succeed(parse(&GOOD.replace("version: 3", "version: 9").replace("points: 10\n", "points: 11\n")).unwrap());
        assert_eq!(bumped.models[0].version, 9);
    }
}
