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
//! Loading validates everything a running scorer relies on and reports every
//! mistake at once, each with the line and column of the value (or key) at
//! fault, its field path (`models[0].rules[2].when.url`), a stable reason
//! code and, for a near miss, the name probably meant.
//!
//! # Layout
//!
//! - [`yaml`]: the YAML text as a tree whose every node knows its position;
//! - `parse`: the walk over that tree that checks each field and builds the
//!   [`RuleSet`];
//! - [`lint`]: warnings about files that load but probably do not do what
//!   was meant (an unreachable tier, a rule counted twice ...);
//! - [`describe`]: models as sentences, for people who do not read YAML.

pub mod describe;
pub mod lint;
mod parse;
pub mod yaml;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::proto::interaction_event::Interaction;
use crate::proto::InteractionEvent;
use crate::score::Millis;

/// Why a rules file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file could not be read.
    #[error("cannot read rules file {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The cause (shown in the message, so not chained again).
        reason: std::io::Error,
    },
    /// The file is not valid: every mistake, each with its line, column
    /// and field.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        /// The file.
        path: String,
        /// The mistakes, in file order.
        problems: Vec<Problem>,
    },
}

/// Every mistake, one a line, each prefixed with the file:
/// `rules.yaml:12:15: models[0].half_life: ...`.
fn render_problems(path: &str, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| format!("{path}:{p}")).collect();
    match lines.len() {
        1 => lines[0].clone(),
        n => format!("{n} mistakes:\n{}", lines.join("\n")),
    }
}

/// Reads a rules file's text.
pub fn read(path: &Path) -> Result<String, RulesError> {
    std::fs::read_to_string(path).map_err(|reason| RulesError::Io { path: path.display().to_string(), reason })
}

/// The kinds of interaction a rule can match: the `interaction` oneof of
/// [`InteractionEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// The kind of an event's interaction, if it has one a rule can match
    /// (no rule matches a manual adjustment).
    pub fn of(event: &InteractionEvent) -> Option<Self> {
        Some(match event.interaction.as_ref()? {
            Interaction::Adjustment(_) => return None,
            Interaction::PageView(_) => Self::PageView,
            Interaction::FormSubmission(_) => Self::FormSubmission,
            Interaction::WebinarAttendance(_) => Self::WebinarAttendance,
            Interaction::EmailEngagement(_) => Self::EmailEngagement,
            Interaction::ContentDownload(_) => Self::ContentDownload,
            Interaction::ProfileUpdate(_) => Self::ProfileUpdate,
            Interaction::Custom(_) => Self::Custom,
            // hotlead's own records: no rule matches them.
            Interaction::Identify(_)
            | Interaction::VisitorMerge(_)
            | Interaction::Erasure(_)
            | Interaction::Promotion(_) => return None,
        })
    }

    /// Every kind, in the order of the protobuf oneof.
    pub const ALL: [InteractionKind; 7] = [
        Self::PageView,
        Self::FormSubmission,
        Self::WebinarAttendance,
        Self::EmailEngagement,
        Self::ContentDownload,
        Self::ProfileUpdate,
        Self::Custom,
    ];

    /// The kind with this name in rules files.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether a rule of this kind may test `path`.
    pub fn has_field(self, path: &str) -> bool {
        self.fields().iter().chain(COMMON_FIELDS).any(|f| match f.strip_suffix('.') {
            Some(map) => path.strip_prefix(map).and_then(|k| k.strip_prefix('.')).is_some_and(|k| !k.is_empty()),
            None => path == *f,
        })
    }

    /// The fields a rule of this kind may test, for messages
    /// (`fields.<key>` for a map).
    pub fn field_names(self) -> Vec<String> {
        self.fields()
            .iter()
            .chain(COMMON_FIELDS)
            .map(|f| if f.ends_with('.') { format!("{f}<key>") } else { f.to_string() })
            .collect()
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
        Interaction::Identify(_)
        | Interaction::VisitorMerge(_)
        | Interaction::Erasure(_)
        | Interaction::Promotion(_) => None,
        // No rule matches a manual adjustment.
        Interaction::Adjustment(_) => None,
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

/// Conditions by field path, all of which must hold.
#[derive(Debug, Clone, Default)]
pub struct Conditions(pub Vec<(String, Condition)>);

/// The time window of a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// A UTC calendar day.
    Day,
    /// A week from Monday 00:00 UTC.
    Week,
    /// A UTC calendar month.
    Month,
}

impl Window {
    /// The window with this name in rules files.
    pub fn from_name(name: &str) -> Option<Self> {
        [Window::Day, Window::Week, Window::Month].into_iter().find(|w| w.as_str() == name)
    }

    /// The name used in rules files.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Day => "day",
            Window::Week => "week",
            Window::Month => "month",
        }
    }

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
    /// Events this rule matched since it came into force.
    pub hits: HitCount,
}

/// How many events a rule matched: shared by the clones of a rule set, so
/// the service's counts are read where it scores.
#[derive(Clone, Default)]
pub struct HitCount(Arc<AtomicU64>);

impl HitCount {
    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for HitCount {
    /// Not part of a rule's definition: two rules that differ only in their
    /// counts are the same rule.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HitCount")
    }
}

impl Rule {
    /// Whether an event matches this rule.
    pub fn matches(&self, event: &InteractionEvent) -> bool {
        InteractionKind::of(event) == Some(self.kind)
            && self.when.0.iter().all(|(path, c)| c.holds(event_field(event, path).as_ref()))
    }

    /// [`Rule::matches`], counting a match in [`Rule::hits`].
    pub fn counts(&self, event: &InteractionEvent) -> bool {
        let hit = self.matches(event);
        if hit {
            self.hits.add();
        }
        hit
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
    /// Whether crossing into (or out of) this tier raises an alert; scores,
    /// tiers and state change either way.
    pub alert: bool,
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
    /// A shadow model: scored on every event like the others, its crossings
    /// go to the shadow alert topic (`topics.shadow_alerts`), never to sales,
    /// until `hotlead promote` makes it live.
    pub shadow: bool,
    /// Tiers above the base tier, in ascending order of threshold.
    pub tiers: Vec<Tier>,
    /// Behaviour rules, in file order.
    pub rules: Vec<Rule>,
    /// Fit rules, in file order.
    pub fit: Vec<FitRule>,
    /// The model's account roll-up (`account:`): accounts scored from their
    /// contacts' scores in this model. `None`: no account score.
    pub account: Option<AccountRollup>,
}

/// How an account's score in a model is made from its contacts' scores,
/// and the account's tiers (see [`crate::account`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AccountRollup {
    /// Sum of the `n` highest weighted contact scores; `None`: of all.
    pub top: Option<usize>,
    /// A contact's weight by one of its profile attributes; `None`: 1.
    pub weights: Option<Weights>,
    /// The model tier (index, 1 or more) at or above which a contact counts
    /// toward the account's breadth.
    pub breadth_tier: usize,
    /// The account tier below every threshold.
    pub base_tier: String,
    /// Account tiers above the base, lowest first.
    pub tiers: Vec<AccountTier>,
}

impl AccountRollup {
    /// Name of account tier `index` (0: the base tier).
    pub fn tier_name(&self, index: usize) -> &str {
        if index == 0 {
            &self.base_tier
        } else {
            &self.tiers[index - 1].name
        }
    }

    /// Index of the account tier with this name (0: base or unknown).
    pub fn tier_index(&self, name: &str) -> usize {
        self.tiers.iter().position(|t| t.name == name).map_or(0, |i| i + 1)
    }

    /// Whether a crossing between account tiers `from` and `to` raises an
    /// alert: when any tier it enters or leaves says `alert`.
    pub fn alerts_on(&self, from: usize, to: usize) -> bool {
        let (low, high) = if from < to { (from, to) } else { (to, from) };
        self.tiers.get(low..high).is_some_and(|crossed| crossed.iter().any(|t| t.alert))
    }

    /// A contact's weight given its attributes.
    pub fn weight(&self, attributes: &BTreeMap<String, String>) -> f64 {
        match &self.weights {
            None => 1.0,
            Some(w) => attributes.get(&w.attribute).and_then(|v| w.values.get(v)).copied().unwrap_or(w.default),
        }
    }
}

/// Contact weights by the value of one profile attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// The attribute (a contact's profile attribute, such as `role`).
    pub attribute: String,
    /// Weight by value.
    pub values: BTreeMap<String, f64>,
    /// Weight of a contact whose value is not listed (or missing).
    pub default: f64,
}

/// One account tier: hysteresis like a contact tier, and the least breadth
/// (contacts at or above the breadth tier) it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountTier {
    /// Name.
    pub name: String,
    /// The account score at which it is entered.
    pub enter: f64,
    /// The account score below which it is left.
    pub exit: f64,
    /// Contacts at or above the breadth tier needed to enter and to stay.
    pub min_contacts: u32,
    /// Whether crossing it raises an alert.
    pub alert: bool,
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

    /// The behaviour rules an event matches (each match counted in the
    /// rule's [`Rule::hits`]).
    pub fn matches<'a>(&'a self, event: &'a InteractionEvent) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.counts(event))
    }

    /// Whether a crossing from tier index `from` to `to` (0 the base tier)
    /// raises an alert: when any tier it enters or leaves says `alert`.
    pub fn alerts_on(&self, from: usize, to: usize) -> bool {
        let (low, high) = if from < to { (from, to) } else { (to, from) };
        self.tiers.get(low..high).is_some_and(|crossed| crossed.iter().any(|t| t.alert))
    }

    /// The fit points of a profile, by fit rule, for the rules that match.
    pub fn fit_parts(&self, profile: &BTreeMap<String, String>) -> Vec<(&str, f64)> {
        self.fit.iter().filter(|r| r.matches(profile)).map(|r| (r.id.as_str(), r.points)).collect()
    }

    /// Whether two models define the same scoring (version and role aside).
    pub fn same_definition(&self, other: &Model) -> bool {
        let plain = |m: &Model| format!("{:?}", Model { version: 0, shadow: false, ..m.clone() });
        plain(self) == plain(other)
    }
}

/// A validated set of scoring models, evaluated side by side.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// The models, in file order.
    pub models: Vec<Model>,
    /// The profile attributes a contact's state keeps: those a fit rule
    /// reads, and those the file's `keep_attributes` names. Others are not
    /// stored (data minimisation: hotlead holds what its rules need).
    pub kept_attributes: std::collections::BTreeSet<String>,
    /// Every name a contact's stored state may use under these rules
    /// (models, tiers, rules, fit rules, kept attributes), sorted: the
    /// stored state refers to them by position.
    pub vocabulary: Vec<String>,
    /// A fingerprint of [`RuleSet::vocabulary`] (FNV-1a, 32 bits), stored
    /// with each state so a reader knows which vocabulary it was written in.
    pub vocabulary_id: u32,
}

/// The fingerprint of a vocabulary (FNV-1a over the names, each ended by a
/// zero byte).
pub fn vocabulary_id(names: &[String]) -> u32 {
    names
        .iter()
        .flat_map(|n| n.bytes().chain([0]))
        .fold(0x811c_9dc5, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// One mistake or warning in a rules file, where it is.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Problem {
    /// Line of the offending value or key, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// The field path, e.g. `models[0].rules[2].when.kind`.
    pub field: String,
    /// A stable reason code, e.g. `unknown_kind` or `unreachable_tier`.
    pub code: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
    /// The name probably meant, when a near one exists.
    pub suggestion: Option<String>,
    /// Error or warning.
    pub severity: Severity,
}

/// How bad a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The file is refused.
    Error,
    /// The file loads, but probably does not do what its author meant
    /// (an error under `--strict`).
    Warning,
}

impl Problem {
    pub(crate) fn error(
        pos: yaml::Pos,
        field: &str,
        code: &'static str,
        message: String,
        suggestion: Option<String>,
    ) -> Self {
        Self {
            line: pos.line,
            column: pos.column,
            field: field.to_string(),
            code,
            message,
            suggestion,
            severity: Severity::Error,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.line, self.column)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean `{s}`?)")?;
        }
        Ok(())
    }
}

/// A rules text checked: the rule set if it has no error, its errors and
/// its lint warnings.
#[derive(Debug)]
pub struct Checked {
    /// The rule set, when there is no error.
    pub rules: Option<RuleSet>,
    /// Errors (the file is refused), in file order.
    pub errors: Vec<Problem>,
    /// Warnings ([`lint`]), in file order.
    pub warnings: Vec<Problem>,
}

impl RuleSet {
    /// A rule set of these models, keeping the attributes the fit rules
    /// read and `keep`.
    pub fn new(models: Vec<Model>, mut keep: std::collections::BTreeSet<String>) -> Self {
        for m in &models {
            for r in &m.fit {
                keep.extend(r.when.0.iter().map(|(attr, _)| attr.clone()));
            }
            // An account roll-up weighs contacts by an attribute: kept.
            if let Some(w) = m.account.as_ref().and_then(|a| a.weights.as_ref()) {
                keep.insert(w.attribute.clone());
            }
        }
        let mut vocabulary: Vec<String> = keep.iter().cloned().collect();
        for m in &models {
            vocabulary.push(m.name.clone());
            vocabulary.push(m.base_tier.clone());
            vocabulary.extend(m.tiers.iter().map(|t| t.name.clone()));
            vocabulary.extend(m.rules.iter().map(|r| r.id.clone()));
            vocabulary.extend(m.fit.iter().map(|r| r.id.clone()));
        }
        vocabulary.sort_unstable();
        vocabulary.dedup();
        let vocabulary_id = vocabulary_id(&vocabulary);
        Self { models, kept_attributes: keep, vocabulary, vocabulary_id }
    }

    /// Whether a contact's state keeps this profile attribute.
    pub fn keeps(&self, attribute: &str) -> bool {
        self.kept_attributes.contains(attribute)
    }

    /// Reads and validates a rules file.
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        Self::parse(&read(path)?, &path.display().to_string())
    }

    /// Parses and validates rules from YAML text; `origin` names the source
    /// in errors. Every mistake is reported, not only the first.
    pub fn parse(text: &str, origin: &str) -> Result<Self, RulesError> {
        let walked = parse::walk(text);
        match walked.rules {
            Some(rules) => Ok(rules),
            None => Err(RulesError::Invalid { path: origin.to_string(), problems: walked.problems }),
        }
    }

    /// Checks rules text: every error, and when there is none, every lint
    /// warning.
    pub fn check(text: &str) -> Checked {
        let walked = parse::walk(text);
        let warnings = walked.rules.as_ref().map(|r| lint::lint(r, &walked.positions)).unwrap_or_default();
        Checked { rules: walked.rules, errors: walked.problems, warnings }
    }

    /// A copy with its own hit counts from zero: for scoring that must not
    /// count as the service's (previews, tests).
    pub fn detached(&self) -> RuleSet {
        let mut copy = self.clone();
        for r in copy.models.iter_mut().flat_map(|m| m.rules.iter_mut()) {
            r.hits = HitCount::default();
        }
        copy
    }

    /// The rule set to run after a reload: `next`, with the version of every
    /// model whose definition changed raised above the one in force, so
    /// alerts after a change never carry an old version number.
    pub fn succeed(&self, mut next: RuleSet) -> RuleSet {
        for m in &mut next.models {
            if let Some(old) = self.models.iter().find(|o| o.name == m.name) {
                // A rule that stays the same keeps counting where it was.
                for r in &mut m.rules {
                    if let Some(o) = old.rules.iter().find(|o| o.id == r.id && format!("{o:?}") == format!("{r:?}")) {
                        r.hits = o.hits.clone();
                    }
                }
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

    #[test]
    fn the_kept_attributes_are_those_the_rules_read_and_those_named() {
        let text = "keep_attributes: [country]\nmodels: [{name: f, half_life: 1d, fit: [{id: a, when: {job_title: Founder}, points: 5}]}]";
        let r = RuleSet::parse(text, "t").unwrap();
        assert_eq!(r.kept_attributes.iter().collect::<Vec<_>>(), ["country", "job_title"]);
        assert!(r.keeps("job_title") && !r.keeps("industry"));
        // The vocabulary names everything a stored state may refer to, sorted.
        assert_eq!(r.vocabulary, ["a", "cold", "country", "f", "job_title"]);
        let other = RuleSet::parse(&text.replace("country", "industry"), "t").unwrap();
        assert_ne!(r.vocabulary_id, other.vocabulary_id);
        let e = RuleSet::parse(&text.replace("[country]", "3"), "t").unwrap_err().to_string();
        assert!(e.contains("keep_attributes") && e.contains("must be a list"), "{e}");
    }

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

    /// The condition `yaml` on a profile attribute.
    fn condition_from(yaml: &str) -> Condition {
        let rs =
            parse(&format!("models: [{{name: m, half_life: 1d, fit: [{{id: f, when: {{a: {yaml}}}, points: 1}}]}}]"))
                .unwrap();
        rs.models[0].fit[0].when.0[0].1.clone()
    }

    #[test]
    fn operators_cover_exists_not_and_numbers_in_text() {
        let c = condition_from("{ gte: 100, lt: 1000 }");
        assert!(c.holds(Some(&Value::Str("250"))));
        assert!(!c.holds(Some(&Value::Str("2500"))));
        assert!(!c.holds(Some(&Value::Str("many"))));
        let e = condition_from("{ exists: false }");
        assert!(e.holds(None) && !e.holds(Some(&Value::Str("x"))));
        let n = condition_from("{ not: { suffix: .edu } }");
        assert!(n.holds(Some(&Value::Str("acme.com"))) && !n.holds(Some(&Value::Str("mit.edu"))));
        assert!(n.holds(None), "`not` of a condition on an absent field holds");
    }

    #[test]
    fn broken_files_are_refused_naming_line_and_field() {
        let e = parse(&GOOD.replace("exit: 45, cooldown", "exit: 70, cooldown")).unwrap_err();
        assert!(e.contains("\nt.yaml:8:39: models[0].tiers[1].exit: exit (70)") && e.contains("flap"), "{e}");
        assert!(e.starts_with("2 mistakes:"), "an exit above the next tier's is out of order too: {e}");
        let e = parse(&GOOD.replace("points: 10\n", "points: 10\n        weight: 2\n")).unwrap_err();
        assert!(e.starts_with("t.yaml:17:9: models[0].rules[0].weight: unknown field"), "{e}");
        let e = parse(&GOOD.replace("(?i)", "(?i")).unwrap_err();
        assert!(
            e.starts_with("t.yaml:35:") && e.contains("models[1].fit[1].when.job_title.regex: invalid regex"),
            "{e}"
        );
        let e = parse(&GOOD.replace("url: { prefix", "form_id: { prefix")).unwrap_err();
        assert!(e.contains("models[0].rules[0].when.form_id") && e.contains("not a field of page_view"), "{e}");
        let e = parse(&GOOD.replace("kind: page_view", "kind: pageview")).unwrap_err();
        assert!(e.contains("t.yaml:15:") && e.contains("(did you mean `page_view`?)"), "{e}");
        let e = parse(&GOOD.replace("requires: { fit: 30 }", "requires: { fitness: 30 }")).unwrap_err();
        assert_eq!(
            e,
            "t.yaml:12:21: models[0].tiers[2].requires.fitness: no model is named `fitness`; models: engagement, fit"
        );
        let e = parse(&GOOD.replace("requires: { fit: 30 }", "requires: { fti: 30 }")).unwrap_err();
        assert!(e.ends_with("(did you mean `fit`?)"), "{e}");
        let e = parse(&GOOD.replace("7d\n    tiers", "soon\n    tiers")).unwrap_err();
        assert!(e.starts_with("t.yaml:5:16: models[0].half_life: `soon` is not a duration"), "{e}");
        let e = parse(&GOOD.replace("cap: { hits: 3, per: day }", "cap: { hits: 3, per: fortnight }")).unwrap_err();
        assert!(e.contains("models[0].rules[0].cap.per") && e.contains("fortnight"), "{e}");
    }

    proptest::proptest! {
        /// Whatever an edit breaks, the check answers without panicking,
        /// places every mistake inside the text, and builds rules exactly
        /// when it found no mistake.
        #[test]
        fn any_edit_is_reported_inside_the_text(at in 0usize..1200, cut in 0usize..8, put in "[ :{}\\[\\],a-z0-9#'\"-]{0,6}") {
            let at = at.min(GOOD.len());
            let end = (at + cut).min(GOOD.len());
            let text = format!("{}{put}{}", &GOOD[..at], &GOOD[end..]);
            let checked = RuleSet::check(&text);
            let lines = text.lines().count().max(1);
            for p in &checked.errors {
                proptest::prop_assert!(p.line >= 1 && p.line <= lines + 1 && p.column >= 1, "{p} in\n{text}");
            }
            proptest::prop_assert_eq!(checked.rules.is_some(), checked.errors.is_empty());
        }
    }

    #[test]
    fn hits_count_matches_and_survive_a_reload_that_keeps_the_rule() {
        let old = parse(GOOD).unwrap();
        let m = &old.models[0];
        assert_eq!(m.matches(&page("/pricing")).count(), 1);
        assert_eq!(m.matches(&page("/blog")).count(), 0);
        assert_eq!((m.rules[0].hits.get(), m.rules[1].hits.get()), (1, 0));
        let next = old.succeed(parse(&GOOD.replace("points: 30", "points: 31")).unwrap());
        assert_eq!(next.models[0].rules[0].hits.get(), 1, "an unchanged rule keeps counting");
        next.models[0].matches(&page("/pricing")).for_each(drop);
        assert_eq!(old.models[0].rules[0].hits.get(), 2, "one count, shared");
        let changed = old.succeed(parse(&GOOD.replace("points: 10\n", "points: 11\n")).unwrap());
        assert_eq!(changed.models[0].rules[0].hits.get(), 0, "a changed rule counts afresh");
        assert_eq!(old.detached().models[0].rules[0].hits.get(), 0);
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
