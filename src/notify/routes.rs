//! The routes file: named destinations, the routes that send alerts to them,
//! and owner routing. The reference is `docs/notify.md`.
//!
//! ```yaml
//! owners_file: owners.yaml          # optional: account -> owner -> destination
//! destinations:
//!   crm:
//!     webhook: { url: "https://crm.example/hooks/hotlead", secret_file: crm.secret, timeout: 5s }
//!     retry: { attempts: 8, initial_backoff: 1s, max_backoff: 2m }
//!   sales-channel:
//!     slack: { url: "https://chat.example/hooks/T000/B000" }
//!     rate_limit: { requests: 1, per: 1s }
//! routes:
//!   - name: hot-leads
//!     when: { model: engagement, direction: heated, tier: hot, min_score: 60 }
//!     to: [crm, sales-channel, owner]
//!     quiet_hours: { from: "20:00", to: "07:00", utc_offset: "+01:00" }
//! ```
//!
//! Matching is pure: [`RouteTable::plan`] turns an alert and the time into
//! the destinations it goes to, each once, with the moment it may be sent.
//! Loading validates everything the notifier relies on; errors name the
//! file, the field path (`routes[1].to[2]`) and, where known, the line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::proto::{score_alert::Direction, ScoreAlert};

/// The name a route uses in `to` for "the owner of the alert's account".
pub const OWNER: &str = "owner";

/// Why a routes or owners file was refused: it could not be read, or a
/// field (`routes[1].to[2]`) is wrong, with the line where known.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A field is wrong.
    #[error("{file}: {at}: {problem}")]
    Invalid {
        /// The file.
        file: String,
        /// The field's path.
        at: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

/// A secret read from a file (trailing newline removed); never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How often a destination is retried and how long it waits between tries.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Tries in all, the first included; past them the alert is
    /// dead-lettered.
    pub attempts: u32,
    /// Wait before the second try; each later wait doubles.
    #[serde(deserialize_with = "duration")]
    pub initial_backoff: Duration,
    /// The longest wait between two tries.
    #[serde(deserialize_with = "duration")]
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self { attempts: 10, initial_backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(120) }
    }
}

/// At most `requests` sends per `per`, in bursts of up to `requests`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sends allowed per window.
    pub requests: u32,
    /// The window.
    #[serde(deserialize_with = "duration")]
    pub per: Duration,
}

/// A JSON webhook.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// `http://` or `https://` URL the alert is POSTed to.
    #[serde(default)]
    pub url: String,
    /// A file holding the URL instead (relative to the routes file), when
    /// the URL carries a token; `url` is then read from it.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// File holding the HMAC-SHA256 signing secret (relative to the routes
    /// file); unset sends no signature.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The secret, read from `secret_file` when the routes file is loaded
    /// (so a changed secret is picked up like a changed route).
    #[serde(skip)]
    pub secret: Option<Secret>,
    /// How long one request may take.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

/// A Slack-compatible incoming webhook (Block Kit).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSpec {
    /// The incoming webhook URL.
    #[serde(default)]
    pub url: String,
    /// A file holding the URL instead (relative to the routes file): an
    /// incoming webhook's URL is its secret. `url` is then read from it.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// How long one request may take.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

/// Email over SMTP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSpec {
    /// `smtp://host:port` (plain, or STARTTLS when the server offers it
    /// with `?tls=required`), or `smtps://host:port` (TLS).
    pub smtp: String,
    /// SMTP user, if the server requires a login.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the SMTP password (relative to the routes file).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The password, read from `password_file` when the routes file is loaded.
    #[serde(skip)]
    pub password: Option<Secret>,
    /// Sender, e.g. `hotlead <hotlead@example.com>`.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Send one digest of the alerts gathered every this long instead of
    /// one message per alert.
    #[serde(default, deserialize_with = "optional_duration")]
    pub digest: Option<Duration>,
    /// How long one SMTP exchange may take.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

/// What a destination is.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A JSON webhook.
    Webhook(WebhookSpec),
    /// A Slack-compatible incoming webhook.
    Slack(SlackSpec),
    /// Email over SMTP.
    Email(EmailSpec),
}

impl Kind {
    /// `webhook`, `slack` or `email`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Webhook(_) => "webhook",
            Kind::Slack(_) => "slack",
            Kind::Email(_) => "email",
        }
    }
}

/// A named destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    /// Its name in the routes file (also its metric label).
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Retry budget and backoff.
    pub retry: Retry,
    /// Rate limit, if any.
    pub rate_limit: Option<RateLimit>,
    /// Sends in flight at once.
    pub concurrency: usize,
}

/// Which alerts a route takes; an empty list or an absent field matches all.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Model names.
    #[serde(default, deserialize_with = "one_or_many")]
    pub model: Vec<String>,
    /// `heated` or `cooled`.
    #[serde(default)]
    pub direction: Option<DirectionMatch>,
    /// Tiers entered.
    #[serde(default, deserialize_with = "one_or_many")]
    pub tier: Vec<String>,
    /// Tiers left.
    #[serde(default, deserialize_with = "one_or_many")]
    pub previous_tier: Vec<String>,
    /// Account ids.
    #[serde(default, deserialize_with = "one_or_many")]
    pub account: Vec<String>,
    /// `live` (the default), `historical` or `any`.
    #[serde(default)]
    pub alert: Freshness,
    /// Lowest score at the crossing.
    #[serde(default)]
    pub min_score: Option<f64>,
}

/// A direction to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectionMatch {
    /// Entered a higher tier.
    Heated,
    /// Fell to a lower tier.
    Cooled,
}

/// Live or historical alerts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Freshness {
    /// Only alerts raised near their crossing (`historical = false`).
    #[default]
    Live,
    /// Only alerts raised long after their crossing (catch-up, rebuild).
    Historical,
    /// Both.
    Any,
}

/// Hours of the day when a route holds its alerts, sending them when the
/// quiet hours end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    /// Start, minutes after local midnight.
    pub from_min: i64,
    /// End, minutes after local midnight (before `from_min` when the quiet
    /// hours span midnight).
    pub to_min: i64,
    /// Local time minus UTC, in minutes.
    pub utc_offset_min: i64,
}

impl QuietHours {
    /// When an alert raised at `now_ms` may be sent: `None` right away, or
    /// the end of the quiet hours in milliseconds.
    pub fn release_at(&self, now_ms: i64) -> Option<i64> {
        const DAY: i64 = 86_400_000;
        let local = now_ms + self.utc_offset_min * 60_000;
        let day_start = local.div_euclid(DAY) * DAY;
        let minute = (local - day_start) / 60_000;
        let quiet = if self.from_min <= self.to_min {
            (self.from_min..self.to_min).contains(&minute)
        } else {
            minute >= self.from_min || minute < self.to_min
        };
        if !quiet {
            return None;
        }
        let mut end = day_start + self.to_min * 60_000;
        if end <= local {
            end += DAY;
        }
        Some(end - self.utc_offset_min * 60_000)
    }
}

/// One route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Its name, for logs.
    pub name: String,
    /// Which alerts it takes.
    pub when: Match,
    /// Destination names; [`OWNER`] stands for the account owner's.
    pub to: Vec<String>,
    /// Hours when its alerts are held.
    pub quiet_hours: Option<QuietHours>,
}

/// Account -> owner -> destination, with a default destination for
/// accounts without a known owner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Owners {
    /// Destination for alerts whose account has no known owner.
    pub default: Option<String>,
    /// Each owner's destination.
    pub owners: BTreeMap<String, String>,
    /// Each account's owner.
    pub accounts: BTreeMap<String, String>,
}

impl Owners {
    /// The destination of the owner of `account`, else the default.
    pub fn destination(&self, account: &str) -> Option<&str> {
        self.accounts
            .get(account)
            .and_then(|owner| self.owners.get(owner))
            .or(self.default.as_ref())
            .map(String::as_str)
    }
}

/// A validated routes file, with its owners.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteTable {
    /// Destinations by name.
    pub destinations: BTreeMap<String, Destination>,
    /// Routes, in file order.
    pub routes: Vec<Route>,
    /// Owner routing.
    pub owners: Owners,
}

/// One destination an alert goes to.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The destination's name.
    pub destination: String,
    /// The routes that send it there.
    pub routes: Vec<String>,
    /// Not before this moment (milliseconds since the epoch), when every
    /// such route is in its quiet hours.
    pub not_before_ms: Option<i64>,
}

impl Match {
    /// Whether `alert` satisfies every condition.
    pub fn matches(&self, alert: &ScoreAlert) -> bool {
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        let direction_ok = match self.direction {
            None => true,
            Some(DirectionMatch::Heated) => alert.direction == Direction::Heated as i32,
            Some(DirectionMatch::Cooled) => alert.direction == Direction::Cooled as i32,
        };
        let fresh_ok = match self.alert {
            Freshness::Live => !alert.historical,
            Freshness::Historical => alert.historical,
            Freshness::Any => true,
        };
        direction_ok
            && fresh_ok
            && any(&self.model, &alert.model)
            && any(&self.tier, &alert.tier)
            && any(&self.previous_tier, &alert.previous_tier)
            && any(&self.account, &alert.account_id)
            && self.min_score.is_none_or(|m| alert.score >= m)
    }
}

impl RouteTable {
    /// The destinations `alert` goes to at `now_ms`, each once, in name
    /// order. A destination named by several routes is sent as soon as any
    /// of them allows.
    pub fn plan(&self, alert: &ScoreAlert, now_ms: i64) -> Vec<Planned> {
        let mut out: BTreeMap<String, Planned> = BTreeMap::new();
        for route in self.routes.iter().filter(|r| r.when.matches(alert)) {
            let release = route.quiet_hours.and_then(|q| q.release_at(now_ms));
            for name in &route.to {
                let name = if name == OWNER {
                    match self.owners.destination(&alert.account_id) {
                        Some(d) => d,
                        None => continue,
                    }
                } else {
                    name.as_str()
                };
                let p = out.entry(name.to_string()).or_insert_with(|| Planned {
                    destination: name.to_string(),
                    routes: Vec::new(),
                    not_before_ms: release,
                });
                if !p.routes.contains(&route.name) {
                    p.routes.push(route.name.clone());
                }
                p.not_before_ms = match (p.not_before_ms, release) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    _ => None,
                };
            }
        }
        out.into_values().collect()
    }

    /// Reads and validates a routes file and the files it names (owners,
    /// secrets).
    pub fn load(path: &Path) -> Result<Self, RoutesError> {
        Self::parse_with(&read(path)?, path, read)
    }

    /// Parses a routes file's text; `path` names it in errors and anchors
    /// relative paths; `read_file` reads the files it names (the owners
    /// file, secret files).
    pub fn parse_with(
        text: &str,
        path: &Path,
        read_file: impl Fn(&Path) -> Result<String, RoutesError>,
    ) -> Result<Self, RoutesError> {
        let origin = path.display().to_string();
        let base = path.parent().unwrap_or(Path::new("."));
        let raw: RawRoutes = parse_yaml(text, &origin)?;
        let invalid =
            |field: String, message: String| RoutesError::Invalid { file: origin.clone(), at: field, problem: message };
        let line = |needle: &str| {
            text.lines().position(|l| l.contains(needle)).map(|i| format!(" (line {})", i + 1)).unwrap_or_default()
        };
        let mut destinations = BTreeMap::new();
        for (name, d) in raw.destinations {
            let at = |f: &str| format!("destinations.{name}{f}");
            if name == OWNER || name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(invalid(
                    at(""),
                    format!(
                        "`{name}` cannot name a destination: use letters, digits, `-`, `_`, `.`, and not `owner`{}",
                        line(&format!("{name}:"))
                    ),
                ));
            }
            let secret = |file: &Option<PathBuf>, field: &str| -> Result<_, RoutesError> {
                let Some(f) = file else { return Ok((None, None)) };
                let path = base.join(f);
                let text = read_file(&path)
                    .map_err(|e| invalid(at(field), format!("{e}{}", line(&f.display().to_string()))))?;
                Ok((Some(Secret(text.trim_end_matches(['\n', '\r']).to_string())), Some(path)))
            };
            let url = |inline: String, file: &Option<PathBuf>, kind: &str| -> Result<_, RoutesError> {
                let (url, from_file) = match (inline.is_empty(), file) {
                    (false, None) => (inline, None),
                    (true, Some(_)) => {
                        let (url, path) = secret(file, &format!(".{kind}.url_file"))?;
                        (url.map(|u| u.0).unwrap_or_default(), path)
                    }
                    _ => {
                        return Err(invalid(
                            at(&format!(".{kind}")),
                            format!("give one of `url` and `url_file`{}", line(&format!("{kind}:"))),
                        ))
                    }
                };
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    let (shown, near) = match file {
                        Some(f) => ("the URL in `url_file`".to_string(), f.display().to_string()),
                        None => (format!("`{url}`"), url.clone()),
                    };
                    return Err(invalid(
                        at(&format!(".{kind}.url")),
                        format!("{shown} is not an http:// or https:// URL{}", line(&near)),
                    ));
                }
                Ok((url, from_file))
            };
            let kind = match (d.webhook, d.slack, d.email) {
                (Some(w), None, None) => {
                    let (secret, secret_file) = secret(&w.secret_file, ".webhook.secret_file")?;
                    let (url, url_file) = url(w.url, &w.url_file, "webhook")?;
                    Kind::Webhook(WebhookSpec { url, url_file, secret_file, secret, ..w })
                }
                (None, Some(s), None) => {
                    let (url, url_file) = url(s.url, &s.url_file, "slack")?;
                    Kind::Slack(SlackSpec { url, url_file, ..s })
                }
                (None, None, Some(e)) => {
                    let (password, password_file) = secret(&e.password_file, ".email.password_file")?;
                    Kind::Email(EmailSpec { password_file, password, ..e })
                }
                _ => {
                    return Err(invalid(
                        at(""),
                        format!("give exactly one of `webhook`, `slack` or `email`{}", line(&format!("{name}:"))),
                    ))
                }
            };
            if let Kind::Email(e) = &kind {
                if !(e.smtp.starts_with("smtp://") || e.smtp.starts_with("smtps://")) {
                    return Err(invalid(
                        at(".email.smtp"),
                        format!("`{}` is not an smtp:// or smtps:// URL{}", e.smtp, line(&e.smtp)),
                    ));
                }
                for (i, addr) in e.to.iter().chain(std::iter::once(&e.from)).enumerate() {
                    if addr.parse::<lettre::message::Mailbox>().is_err() {
                        let field = if i < e.to.len() { format!(".email.to[{i}]") } else { ".email.from".into() };
                        return Err(invalid(at(&field), format!("`{addr}` is not an email address{}", line(addr))));
                    }
                }
                if e.to.is_empty() {
                    return Err(invalid(at(".email.to"), "name at least one recipient".into()));
                }
                if e.digest.is_some_and(|d| d < Duration::from_secs(1)) {
                    return Err(invalid(at(".email.digest"), "must be at least 1s".into()));
                }
            }
            if d.retry.attempts == 0 {
                return Err(invalid(at(".retry.attempts"), "must be at least 1 (the first try)".into()));
            }
            if d.retry.initial_backoff > d.retry.max_backoff {
                return Err(invalid(at(".retry.initial_backoff"), "must be at most max_backoff".into()));
            }
            if let Some(r) = &d.rate_limit {
                if r.requests == 0 || r.per.is_zero() {
                    return Err(invalid(at(".rate_limit"), "requests and per must be above zero".into()));
                }
            }
            if d.concurrency == 0 {
                return Err(invalid(at(".concurrency"), "must be at least 1".into()));
            }
            destinations.insert(
                name.clone(),
                Destination { name, kind, retry: d.retry, rate_limit: d.rate_limit, concurrency: d.concurrency },
            );
        }
        let owners = match &raw.owners_file {
            None => Owners::default(),
            Some(f) => {
                let owners_path = base.join(f);
                let text = read_file(&owners_path)?;
                parse_owners(&text, &owners_path, &destinations)?
            }
        };
        if raw.routes.is_empty() {
            return Err(invalid("routes".into(), "at least one route is required".into()));
        }
        let mut routes: Vec<Route> = Vec::new();
        for (ri, r) in raw.routes.into_iter().enumerate() {
            let at = |f: &str| format!("routes[{ri}].{f}");
            if routes.iter().any(|x| x.name == r.name) {
                return Err(invalid(at("name"), format!("route `{}` is defined twice{}", r.name, line(&r.name))));
            }
            if r.to.is_empty() {
                return Err(invalid(at("to"), "name at least one destination".into()));
            }
            for (ti, name) in r.to.iter().enumerate() {
                if name == OWNER {
                    if raw.owners_file.is_none() {
                        return Err(invalid(
                            at(&format!("to[{ti}]")),
                            format!("`owner` needs an `owners_file` naming each account's owner{}", line(OWNER)),
                        ));
                    }
                } else if !destinations.contains_key(name) {
                    return Err(invalid(
                        at(&format!("to[{ti}]")),
                        format!("no destination `{name}` is defined{}", line(name)),
                    ));
                }
            }
            let quiet_hours = match r.quiet_hours {
                None => None,
                Some(q) => {
                    Some(quiet(&q).map_err(|m| invalid(at("quiet_hours"), format!("{m}{}", line("quiet_hours"))))?)
                }
            };
            routes.push(Route { name: r.name, when: r.when, to: r.to, quiet_hours });
        }
        Ok(RouteTable { destinations, routes, owners })
    }
}

fn read(path: &Path) -> Result<String, RoutesError> {
    std::fs::read_to_string(path).map_err(|source| RoutesError::Io { path: path.to_path_buf(), source })
}

fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, RoutesError> {
    serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text)).map_err(|e| RoutesError::Invalid {
        file: origin.to_string(),
        at: e.path().to_string(),
        problem: e.into_inner().to_string(),
    })
}

fn parse_owners(text: &str, path: &Path, destinations: &BTreeMap<String, Destination>) -> Result<Owners, RoutesError> {
    let origin = path.display().to_string();
    let raw: RawOwners = parse_yaml(text, &origin)?;
    let invalid =
        |field: String, message: String| RoutesError::Invalid { file: origin.clone(), at: field, problem: message };
    let known = |d: &str| destinations.contains_key(d);
    if let Some(d) = raw.default.as_deref().filter(|d| !known(d)) {
        return Err(invalid("default".into(), format!("no destination `{d}` is defined in the routes file")));
    }
    if let Some((owner, d)) = raw.owners.iter().find(|(_, d)| !known(d)) {
        return Err(invalid(format!("owners.{owner}"), format!("no destination `{d}` is defined in the routes file")));
    }
    if let Some((account, owner)) = raw.accounts.iter().find(|(_, o)| !raw.owners.contains_key(*o)) {
        return Err(invalid(format!("accounts.{account}"), format!("owner `{owner}` is not listed under `owners`")));
    }
    Ok(Owners { default: raw.default, owners: raw.owners, accounts: raw.accounts })
}

fn quiet(q: &RawQuietHours) -> Result<QuietHours, String> {
    let hm = |s: &str| -> Option<i64> {
        let (h, m) = s.split_once(':')?;
        let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
        ((0..24).contains(&h) && (0..60).contains(&m)).then_some(h * 60 + m)
    };
    let from = hm(&q.from).ok_or_else(|| format!("from: `{}` is not a time; write e.g. `20:00`", q.from))?;
    let to = hm(&q.to).ok_or_else(|| format!("to: `{}` is not a time; write e.g. `07:30`", q.to))?;
    if from == to {
        return Err("from and to are the same time".into());
    }
    let offset = match q.utc_offset.as_deref() {
        None | Some("Z") => 0,
        Some(s) => {
            let (sign, rest) = match s.as_bytes().first() {
                Some(b'+') => (1, &s[1..]),
                Some(b'-') => (-1, &s[1..]),
                _ => return Err(format!("utc_offset: `{s}` is not an offset; write e.g. `+01:00`")),
            };
            sign * hm(rest).ok_or_else(|| format!("utc_offset: `{s}` is not an offset; write e.g. `-05:00`"))?
        }
    };
    Ok(QuietHours { from_min: from, to_min: to, utc_offset_min: offset })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoutes {
    #[serde(default)]
    owners_file: Option<PathBuf>,
    #[serde(default)]
    destinations: BTreeMap<String, RawDestination>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    #[serde(default)]
    webhook: Option<WebhookSpec>,
    #[serde(default)]
    slack: Option<SlackSpec>,
    #[serde(default)]
    email: Option<EmailSpec>,
    #[serde(default)]
    retry: Retry,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    #[serde(default)]
    when: Match,
    #[serde(deserialize_with = "one_or_many")]
    to: Vec<String>,
    #[serde(default)]
    quiet_hours: Option<RawQuietHours>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuietHours {
    from: String,
    to: String,
    #[serde(default)]
    utc_offset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwners {
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    owners: BTreeMap<String, String>,
    #[serde(default)]
    accounts: BTreeMap<String, String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_concurrency() -> usize {
    8
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration ({e}); write e.g. `500ms` or `2m`")))
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    use serde_yaml_ng::Value;
    let name = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match Value::deserialize(d)? {
        Value::Sequence(items) => items.iter().map(name).collect::<Option<Vec<_>>>(),
        other => name(&other).map(|s| vec![s]),
    }
    .ok_or_else(|| serde::de::Error::custom("expected a name or a list of names, e.g. `hot` or `[warm, hot]`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = r#"
owners_file: owners.yaml
destinations:
  crm:
    webhook: { url: "http://127.0.0.1:1/crm", secret_file: crm.secret, timeout: 2s }
    retry: { attempts: 3, initial_backoff: 100ms, max_backoff: 1s }
  chat:
    slack: { url: "http://127.0.0.1:1/chat" }
    rate_limit: { requests: 5, per: 1s }
  alice-mail:
    email: { smtp: "smtp://127.0.0.1:25", from: "hotlead <h@example.com>", to: [alice@example.com] }
  team-mail:
    email: { smtp: "smtp://127.0.0.1:25", from: "h@example.com", to: [team@example.com], digest: 15m }
routes:
  - name: hot
    when: { model: engagement, direction: heated, tier: hot, min_score: 60 }
    to: [crm, chat, owner]
  - name: cooled
    when: { direction: cooled, alert: any }
    to: chat
    quiet_hours: { from: "20:00", to: "07:00", utc_offset: "+01:00" }
"#;
    const OWNERS: &str = "default: team-mail\nowners: { alice: alice-mail }\naccounts: { acct-1: alice }\n";

    fn table(routes: &str, owners: &str) -> Result<RouteTable, String> {
        let owners = owners.to_string();
        RouteTable::parse_with(routes, Path::new("/etc/hotlead/routes.yaml"), move |p| match p.to_str() {
            Some("/etc/hotlead/owners.yaml") => Ok(owners.clone()),
            Some("/etc/hotlead/crm.secret") => Ok("s3cret\n".into()),
            Some("/etc/hotlead/chat.url") => Ok("https://chat.example.com/hooks/T000/B000/XXXX\n".into()),
            Some("/etc/hotlead/bad.url") => Ok("hooks/T000/B000/XXXX".into()),
            _ => Err(RoutesError::Io { path: p.to_path_buf(), source: std::io::ErrorKind::NotFound.into() }),
        })
        .map_err(|e| e.to_string())
    }

    fn alert(tier: &str, direction: Direction, score: f64, account: &str) -> ScoreAlert {
        ScoreAlert {
            alert_id: "a1".into(),
            contact_id: "c1".into(),
            account_id: account.into(),
            model: "engagement".into(),
            direction: direction as i32,
            tier: tier.into(),
            previous_tier: "warm".into(),
            score,
            ..Default::default()
        }
    }

    const NOON: i64 = 1_767_268_800_000; // 2026-01-01T12:00:00Z

    #[test]
    fn routes_match_and_resolve_owners() {
        let t = table(ROUTES, OWNERS).unwrap();
        let names = |a: &ScoreAlert| t.plan(a, NOON).into_iter().map(|p| p.destination).collect::<Vec<_>>();
        assert_eq!(names(&alert("hot", Direction::Heated, 61.0, "acct-1")), ["alice-mail", "chat", "crm"]);
        assert_eq!(names(&alert("hot", Direction::Heated, 61.0, "acct-9")), ["chat", "crm", "team-mail"]);
        assert!(names(&alert("hot", Direction::Heated, 59.0, "acct-1")).is_empty(), "below min_score");
        assert!(names(&alert("warm", Direction::Heated, 61.0, "acct-1")).is_empty(), "another tier");
        let mut old = alert("hot", Direction::Heated, 61.0, "acct-1");
        old.historical = true;
        assert!(names(&old).is_empty(), "routes take live alerts unless they ask");
        let mut cooled = alert("warm", Direction::Cooled, 10.0, "");
        cooled.historical = true;
        assert_eq!(names(&cooled), ["chat"], "alert: any takes historical ones");
        let t = table(&ROUTES.replace("previous_tier", "x"), OWNERS).unwrap();
        let mut a = alert("hot", Direction::Heated, 61.0, "acct-1");
        a.model = "upsell".into();
        assert!(t.plan(&a, NOON).is_empty(), "another model");
    }

    #[test]
    fn a_destination_named_twice_is_planned_once_with_both_routes() {
        let t = table(&ROUTES.replace("to: [crm, chat, owner]", "to: [crm, chat, chat]"), OWNERS).unwrap();
        let mut a = alert("hot", Direction::Heated, 61.0, "");
        let plan = t.plan(&a, NOON);
        assert_eq!(plan.iter().filter(|p| p.destination == "chat").count(), 1);
        a.direction = Direction::Cooled as i32;
        let t2 = table(&ROUTES.replace("direction: heated, ", ""), OWNERS).unwrap();
        let chat = t2.plan(&a, NOON).into_iter().find(|p| p.destination == "chat").unwrap();
        assert_eq!(chat.routes, ["hot", "cooled"]);
        assert_eq!(chat.not_before_ms, None, "the route without quiet hours sends now");
    }

    #[test]
    fn quiet_hours_hold_until_they_end() {
        let q = QuietHours { from_min: 20 * 60, to_min: 7 * 60, utc_offset_min: 60 };
        // 12:00Z is 13:00 local: not quiet.
        assert_eq!(q.release_at(NOON), None);
        // 20:30Z is 21:30 local: held until 07:00 local = 06:00Z next day.
        let evening = NOON + (8 * 60 + 30) * 60_000;
        assert_eq!(q.release_at(evening), Some(NOON + 18 * 3_600_000));
        // 03:00Z is 04:00 local: held until 06:00Z the same day.
        let night = NOON + 15 * 3_600_000;
        assert_eq!(q.release_at(night), Some(NOON + 18 * 3_600_000));
        let day = QuietHours { from_min: 12 * 60, to_min: 14 * 60, utc_offset_min: 0 };
        assert_eq!(day.release_at(NOON), Some(NOON + 2 * 3_600_000));
        assert_eq!(day.release_at(NOON + 2 * 3_600_000), None);
    }

    #[test]
    fn bad_files_are_refused_naming_line_and_field() {
        let e = table(&ROUTES.replace("to: [crm, chat, owner]", "to: [crm, chatt]"), OWNERS).unwrap_err();
        assert!(e.contains("routes[0].to[1]") && e.contains("chatt") && e.contains("line 17"), "{e}");
        let e = table(&ROUTES.replace("timeout: 2s", "timeout: soon"), OWNERS).unwrap_err();
        assert!(e.contains("destinations.crm.webhook.timeout") && e.contains("line 5"), "{e}");
        let e = table(&ROUTES.replace("min_score: 60", "min_scor: 60"), OWNERS).unwrap_err();
        assert!(e.contains("routes[0].when") && e.contains("min_scor") && e.contains("line 16"), "{e}");
        let e = table(&ROUTES.replace("http://127.0.0.1:1/chat", "ftp://x"), OWNERS).unwrap_err();
        assert!(e.contains("destinations.chat.slack.url") && e.contains("line 8"), "{e}");
        let e = table(&ROUTES.replace("to: [alice@example.com]", "to: [not an address]"), OWNERS).unwrap_err();
        assert!(e.contains("destinations.alice-mail.email.to[0]"), "{e}");
        let e = table(&ROUTES.replace("20:00", "25:00"), OWNERS).unwrap_err();
        assert!(e.contains("routes[1].quiet_hours") && e.contains("25:00"), "{e}");
        let e = table(&ROUTES.replace("owners_file: owners.yaml\n", ""), OWNERS).unwrap_err();
        assert!(e.contains("routes[0].to[2]") && e.contains("owners_file"), "{e}");
        let e = table(ROUTES, "default: nowhere\n").unwrap_err();
        assert!(e.contains("owners.yaml: default") && e.contains("nowhere"), "{e}");
        let e = table(ROUTES, "owners: { bob: chat }\naccounts: { acct-1: alice }\n").unwrap_err();
        assert!(e.contains("accounts.acct-1") && e.contains("alice"), "{e}");
        let e = table(&ROUTES.replace("crm.secret", "gone.secret"), OWNERS).unwrap_err();
        assert!(
            e.contains("destinations.crm.webhook.secret_file") && e.contains("gone.secret") && e.contains("line 5"),
            "{e}"
        );
        let e = table(&ROUTES.replace("attempts: 3", "attempts: 0"), OWNERS).unwrap_err();
        assert!(e.contains("destinations.crm.retry.attempts"), "{e}");
        let e =
            table(&ROUTES.replace("    slack:", "    webhook: { url: \"http://x\" }\n    slack:"), OWNERS).unwrap_err();
        assert!(e.contains("destinations.chat") && e.contains("exactly one"), "{e}");
    }

    #[test]
    fn relative_files_are_read_beside_the_routes_file() {
        let t = table(ROUTES, OWNERS).unwrap();
        match &t.destinations["crm"].kind {
            Kind::Webhook(w) => {
                assert_eq!(w.secret_file.as_deref(), Some(Path::new("/etc/hotlead/crm.secret")));
                assert_eq!(w.secret, Some(Secret("s3cret".into())), "read, without its newline");
                assert_eq!(format!("{:?}", w.secret), "Some(<redacted>)");
            }
            k => panic!("{k:?}"),
        }
        assert_eq!(t.destinations["chat"].concurrency, 8);
        let t = table(&ROUTES.replace("url: \"http://127.0.0.1:1/chat\"", "url_file: chat.url"), OWNERS).unwrap();
        match &t.destinations["chat"].kind {
            Kind::Slack(s) => assert_eq!(s.url, "https://chat.example.com/hooks/T000/B000/XXXX", "read from url_file"),
            k => panic!("{k:?}"),
        }
        let e = table(&ROUTES.replace("url: \"http://127.0.0.1:1/chat\"", "url_file: bad.url"), OWNERS).unwrap_err();
        assert!(e.contains("destinations.chat.slack.url") && e.contains("the URL in `url_file`"), "{e}");
        assert!(!e.contains("T000"), "the URL from a file is a secret: {e}");
        let both = ROUTES.replace("url: \"http://127.0.0.1:1/chat\"", "url: \"http://x\", url_file: chat.url");
        let e = table(&both, OWNERS).unwrap_err();
        assert!(e.contains("destinations.chat.slack") && e.contains("one of `url` and `url_file`"), "{e}");
        assert_eq!(t.destinations["chat"].retry, Retry::default());
    }
}
