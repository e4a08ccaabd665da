//! The rules file: scoring models, their rules, half-lives and tiers.
//!
//! A rules file is YAML that a marketer can read:
//!
//! ```yaml
//! models:
//!   - name: engagement
//!     version: 1
//!     half_life: 14d
//!     base_tier: cold
//!     tiers:
//!       - { name: warm, enter: 30, exit: 20 }
//!       - { name: hot,  enter: 60, exit: 45 }
//!     rules:
//!       - { id: pricing-visit, kind: page_view, points: 2 }
//!       - { id: demo-request,  kind: form_submission, points: 25 }
//! ```
//!
//! Loading validates everything a running scorer relies on and reports the
//! offending field by its path (`models[0].tiers[1].exit`).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::proto::interaction_event::Interaction;
use crate::proto::InteractionEvent;

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
    /// The YAML does not parse or does not fit the schema.
    #[error("{path}: {field}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The field path, e.g. `models[0].rules[2].kind`.
        field: String,
        /// What is wrong, with the line where known.
        message: String,
    },
    /// The file parses but a value is not allowed.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The field path.
        field: String,
        /// What is wrong and how to fix it.
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
}

/// A validated set of scoring models, evaluated side by side.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// The models, in file order.
    pub models: Vec<Model>,
}

/// One scoring model: a half-life, tiers and rules.
#[derive(Debug, Clone)]
pub struct Model {
    /// Name, used in Redis keys, alerts and metrics.
    pub name: String,
    /// Version of the rules, carried on alerts.
    pub version: u32,
    /// Half-life in seconds: points lose half their worth in this time.
    pub half_life_secs: f64,
    /// The tier a contact is in below every threshold.
    pub base_tier: String,
    /// Tiers above the base tier, in ascending order of threshold.
    pub tiers: Vec<Tier>,
    /// The rules, in file order.
    pub rules: Vec<Rule>,
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
}

/// A rule: events of one kind add points.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Stable id, shown in explanations and alerts.
    pub id: String,
    /// The interaction kind it matches.
    pub kind: InteractionKind,
    /// Points per matching event; may be negative.
    pub points: f64,
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

    /// The rules that match an event, with their points.
    pub fn matches<'a>(&'a self, event: &InteractionEvent) -> impl Iterator<Item = &'a Rule> + 'a {
        let kind = InteractionKind::of(event);
        self.rules.iter().filter(move |r| Some(r.kind) == kind)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    models: Vec<RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    #[serde(default = "one")]
    version: u32,
    half_life: String,
    #[serde(default = "cold")]
    base_tier: String,
    #[serde(default)]
    tiers: Vec<RawTier>,
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    name: String,
    enter: f64,
    exit: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    kind: InteractionKind,
    points: f64,
}

fn one() -> u32 {
    1
}

fn cold() -> String {
    "cold".to_string()
}

/// Whether a name may be used as a model, tier or rule id: it ends up in
/// Redis field names and metric labels.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

impl RuleSet {
    /// Reads and validates a rules file.
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates rules from YAML text; `origin` names the source
    /// in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, RulesError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let raw: RawFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            RulesError::Syntax {
                path: origin.to_string(),
                field,
                message: e.into_inner().to_string(),
            }
        })?;
        let invalid = |field: String, message: String| RulesError::Invalid {
            path: origin.to_string(),
            field,
            message,
        };
        if raw.models.is_empty() {
            return Err(invalid("models".into(), "at least one model is required".into()));
        }
        let mut models = Vec::with_capacity(raw.models.len());
        for (mi, m) in raw.models.into_iter().enumerate() {
            let at = |f: &str| format!("models[{mi}].{f}");
            if !valid_name(&m.name) {
                return Err(invalid(
                    at("name"),
                    format!(
                        "`{}` is not a valid name: use 1-64 letters, digits, `-`, `_` or `.`",
                        m.name
                    ),
                ));
            }
            if models.iter().any(|x: &Model| x.name == m.name) {
                return Err(invalid(at("name"), format!("model `{}` is defined twice", m.name)));
            }
            let half_life: Duration = humantime::parse_duration(&m.half_life).map_err(|e| {
                invalid(
                    at("half_life"),
                    format!("`{}` is not a duration ({e}); write e.g. `14d` or `36h`", m.half_life),
                )
            })?;
            if half_life.is_zero() {
                return Err(invalid(at("half_life"), "must be greater than zero".into()));
            }
            if !valid_name(&m.base_tier) {
                return Err(invalid(
                    at("base_tier"),
                    format!("`{}` is not a valid name", m.base_tier),
                ));
            }
            let mut tiers: Vec<Tier> = Vec::new();
            for (ti, t) in m.tiers.into_iter().enumerate() {
                let tat = |f: &str| at(&format!("tiers[{ti}].{f}"));
                if !valid_name(&t.name) || t.name == m.base_tier || tiers.iter().any(|x| x.name == t.name) {
                    return Err(invalid(
                        tat("name"),
                        format!("`{}` must be a valid name, unique, and not the base tier", t.name),
                    ));
                }
                if !(t.enter.is_finite() && t.enter > 0.0) {
                    return Err(invalid(tat("enter"), "must be a number greater than zero".into()));
                }
                if !(t.exit.is_finite() && t.exit > 0.0 && t.exit <= t.enter) {
                    return Err(invalid(
                        tat("exit"),
                        format!(
                            "must be greater than zero and at most enter ({}); exit {} would make the tier flap",
                            t.enter, t.exit
                        ),
                    ));
                }
                if let Some(prev) = tiers.last() {
                    if t.enter <= prev.enter || t.exit <= prev.exit {
                        return Err(invalid(
                            tat("enter"),
                            format!(
                                "tiers must be listed in ascending order: enter and exit must exceed those of `{}`",
                                prev.name
                            ),
                        ));
                    }
                }
                tiers.push(Tier {
                    name: t.name,
                    enter: t.enter,
                    exit: t.exit,
                });
            }
            let mut rules: Vec<Rule> = Vec::new();
            for (ri, r) in m.rules.into_iter().enumerate() {
                let rat = |f: &str| at(&format!("rules[{ri}].{f}"));
                if !valid_name(&r.id) || rules.iter().any(|x| x.id == r.id) {
                    return Err(invalid(
                        rat("id"),
                        format!("`{}` must be a valid name and unique within the model", r.id),
                    ));
                }
                if !r.points.is_finite() {
                    return Err(invalid(rat("points"), "must be a finite number".into()));
                }
                rules.push(Rule {
                    id: r.id,
                    kind: r.kind,
                    points: r.points,
                });
            }
            models.push(Model {
                name: m.name,
                version: m.version,
                half_life_secs: half_life.as_secs_f64(),
                base_tier: m.base_tier,
                tiers,
                rules,
            });
        }
        Ok(RuleSet { models })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
models:
  - name: engagement
    version: 3
    half_life: 7d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - { id: page, kind: page_view, points: 2 }
      - { id: unsub, kind: email_engagement, points: -5 }
"#;

    #[test]
    fn parses_a_model() {
        let rs = RuleSet::parse(GOOD, "t.yaml").unwrap();
        let m = &rs.models[0];
        assert_eq!(m.version, 3);
        assert_eq!(m.half_life_secs, 7.0 * 86400.0);
        assert_eq!(m.tier_name(0), "cold");
        assert_eq!(m.tier_name(2), "hot");
        assert_eq!(m.tier_index("warm"), 1);
        assert_eq!(m.tier_index("gone"), 0);
        assert_eq!(m.rules[1].points, -5.0);
    }

    #[test]
    fn refuses_exit_above_enter_naming_the_field() {
        let bad = GOOD.replace("exit: 45", "exit: 70");
        let e = RuleSet::parse(&bad, "t.yaml").unwrap_err().to_string();
        assert!(e.contains("models[0].tiers[1].exit"), "{e}");
    }

    #[test]
    fn refuses_unknown_fields_and_kinds() {
        let bad = GOOD.replace("points: 2", "points: 2, weight: 3");
        let e = RuleSet::parse(&bad, "t.yaml").unwrap_err().to_string();
        assert!(e.contains("models[0].rules[0]") && e.contains("weight"), "{e}");
        let bad = GOOD.replace("kind: page_view", "kind: pageview");
        let e = RuleSet::parse(&bad, "t.yaml").unwrap_err().to_string();
        assert!(e.contains("models[0].rules[0].kind") && e.contains("line"), "{e}");
    }

    #[test]
    fn refuses_bad_half_life_and_unordered_tiers() {
        let e = RuleSet::parse(&GOOD.replace("7d", "soon"), "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("models[0].half_life"), "{e}");
        let bad = GOOD.replace("enter: 60, exit: 45", "enter: 25, exit: 15");
        let e = RuleSet::parse(&bad, "t.yaml").unwrap_err().to_string();
        assert!(e.contains("models[0].tiers[1].enter"), "{e}");
    }
}
