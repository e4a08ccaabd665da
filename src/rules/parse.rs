//! From a YAML tree to a [`RuleSet`]: one walk that checks every field and
//! collects every mistake, each at the line and column of the value (or key)
//! that is wrong, with a suggestion where a near name exists.
//!
//! A rule set is built only when the walk found no mistake; nothing about a
//! broken file ever reaches the scorer.

use std::collections::HashMap;
use std::time::Duration;

use super::yaml::{Kind, Node, Pos, Scalar};
use super::{
    AccountRollup, AccountTier, Cap, CapLimit, Condition, Conditions, FitRule, HitCount, InteractionKind, Model,
    Problem, Requirement, Rule, RuleSet, Tier, Weights, Window,
};
use crate::score::Millis;

/// The operators of a condition.
const OPERATORS: &[&str] =
    &["equals", "one_of", "prefix", "suffix", "contains", "regex", "gt", "gte", "lt", "lte", "exists", "not"];

/// What the walk found: the rule set when there was no mistake, the
/// mistakes, and where each field was (for lint).
pub(super) struct Walked {
    pub rules: Option<RuleSet>,
    pub problems: Vec<Problem>,
    pub positions: HashMap<String, Pos>,
}

/// Walks a rules file's text.
pub(super) fn walk(text: &str) -> Walked {
    let mut c = Checker { problems: Vec::new(), positions: HashMap::new() };
    let rules = match super::yaml::parse(text) {
        Err(e) => {
            c.error(e.pos, "", "syntax", format!("not valid YAML: {}", e.message));
            None
        }
        Ok(None) => {
            c.error(Pos { line: 1, column: 1 }, "models", "missing_field", "the file is empty; it needs `models:`");
            None
        }
        Ok(Some(root)) => c.file(&root),
    };
    let rules = if c.problems.is_empty() { rules } else { None };
    c.problems.sort_by_key(|p| (p.line, p.column));
    Walked { rules, problems: c.problems, positions: c.positions }
}

struct Checker {
    problems: Vec<Problem>,
    positions: HashMap<String, Pos>,
}

/// A mapping's fields, checked against the names allowed.
struct Fields<'n> {
    path: String,
    pos: Pos,
    entries: Vec<(&'n str, &'n Node)>,
    /// Names suggested for unknown keys: a field misspelt is reported once,
    /// as misspelt, not also as missing.
    suggested: Vec<String>,
}

/// The key and value of `key` in a mapping node.
fn pair<'n>(node: &'n Node, key: &str) -> Option<&'n (Node, Node)> {
    match &node.kind {
        Kind::Map(e) => e.iter().find(|(k, _)| k.text() == Some(key)),
        _ => None,
    }
}

/// The value of `key` in a mapping node.
fn entry<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    pair(node, key).map(|(_, v)| v)
}

/// The key node of `key` in a mapping node.
fn key_of<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    pair(node, key).map(|(k, _)| k)
}

impl<'n> Fields<'n> {
    fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    fn at(&self, name: &str) -> String {
        join(&self.path, name)
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// The candidate nearest to `word`, if it is near enough to be a slip.
pub(super) fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

/// Edit distance where swapping two neighbours counts as one edit.
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.to_lowercase().chars().collect(), b.to_lowercase().chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// The condensed message of a regex error: its `error:` line.
fn regex_message(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map_or_else(|| text.lines().last().unwrap_or_default().trim().to_string(), str::to_string)
}

impl Checker {
    fn error(&mut self, pos: Pos, field: &str, code: &'static str, message: impl Into<String>) {
        self.problems.push(Problem::error(pos, field, code, message.into(), None));
    }

    fn error_near(&mut self, pos: Pos, field: &str, code: &'static str, message: String, suggestion: Option<String>) {
        self.problems.push(Problem::error(pos, field, code, message, suggestion));
    }

    /// A mapping's fields; unknown and repeated keys are mistakes.
    fn fields<'n>(&mut self, node: &'n Node, path: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        self.positions.insert(path.to_string(), node.pos);
        let Kind::Map(entries) = &node.kind else {
            let want = allowed.iter().take(3).map(|f| format!("`{f}:`")).collect::<Vec<_>>().join(", ");
            self.error(
                node.pos,
                path,
                "wrong_type",
                format!("must be a mapping of fields ({want} ...), not {}", node.describe()),
            );
            return None;
        };
        let mut out = Fields { path: path.to_string(), pos: node.pos, entries: Vec::new(), suggested: Vec::new() };
        for (k, v) in entries {
            let Some(name) = k.text() else {
                self.error(k.pos, path, "wrong_type", "field names are plain text");
                continue;
            };
            if out.get(name).is_some() {
                self.error(k.pos, &join(path, name), "duplicate", format!("`{name}` is given twice"));
                continue;
            }
            if !allowed.is_empty() && !allowed.contains(&name) {
                let list = allowed.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ");
                let near = suggest(name, allowed.iter().copied());
                out.suggested.extend(near.clone());
                self.error_near(
                    k.pos,
                    &join(path, name),
                    "unknown_field",
                    format!("unknown field `{name}`; the fields here are {list}"),
                    near,
                );
                continue;
            }
            self.positions.insert(join(path, name), v.pos);
            out.entries.push((name, v));
        }
        Some(out)
    }

    fn require<'n>(&mut self, f: &Fields<'n>, name: &str) -> Option<&'n Node> {
        let v = f.get(name);
        if v.is_none() && !f.suggested.iter().any(|s| s == name) {
            self.error(f.pos, &f.at(name), "missing_field", format!("`{name}` is required here"));
        }
        v
    }

    /// A list's items with their paths.
    fn seq<'n>(&mut self, node: &'n Node, path: &str) -> Vec<(String, &'n Node)> {
        match &node.kind {
            Kind::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let p = format!("{path}[{i}]");
                    self.positions.insert(p.clone(), n.pos);
                    (p, n)
                })
                .collect(),
            _ if node.scalar() == Some(Scalar::Null) => Vec::new(),
            _ => {
                self.error(
                    node.pos,
                    path,
                    "wrong_type",
                    format!("must be a list (`- ...` items), not {}", node.describe()),
                );
                Vec::new()
            }
        }
    }

    fn number(&mut self, node: &Node, path: &str) -> Option<f64> {
        match node.scalar() {
            Some(Scalar::Num(n)) if n.is_finite() => Some(n),
            Some(Scalar::Num(_)) => {
                self.error(node.pos, path, "not_finite", "must be a finite number");
                None
            }
            _ => {
                let what = node.text().map_or_else(|| node.describe().to_string(), |t| format!("`{t}`"));
                self.error(
                    node.pos,
                    path,
                    "not_a_number",
                    format!("{what} is not a number; write digits, e.g. `10` or `-2.5`"),
                );
                None
            }
        }
    }

    fn whole(&mut self, node: &Node, path: &str, what: &str) -> Option<u32> {
        let n = self.number(node, path)?;
        if n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&n) {
            Some(n as u32)
        } else {
            self.error(node.pos, path, "not_whole", format!("{what} is a whole number from 0, not {n}"));
            None
        }
    }

    fn flag(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.scalar() {
            Some(Scalar::Bool(b)) => Some(b),
            _ => {
                self.error(node.pos, path, "not_a_flag", format!("must be true or false, not {}", node.describe()));
                None
            }
        }
    }

    fn text(&mut self, node: &Node, path: &str) -> Option<String> {
        match (&node.kind, node.text()) {
            (Kind::Scalar { .. }, Some(t)) => Some(t.to_string()),
            _ => {
                self.error(node.pos, path, "not_text", format!("must be a text value, not {}", node.describe()));
                None
            }
        }
    }

    /// A model, tier or rule name: it ends up in Redis fields and metric
    /// labels.
    fn name(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.text(node, path)?;
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if ok {
            Some(s)
        } else {
            self.error(
                node.pos,
                path,
                "invalid_name",
                format!("`{s}` is not a valid name: use 1-64 letters, digits, `-`, `_` or `.`"),
            );
            None
        }
    }

    fn duration(&mut self, node: &Node, path: &str, example: &str) -> Option<Duration> {
        let s = self.text(node, path)?;
        match humantime::parse_duration(&s) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.error(node.pos, path, "invalid_duration", "must be greater than zero");
                None
            }
            Err(e) => {
                self.error(
                    node.pos,
                    path,
                    "invalid_duration",
                    format!("`{s}` is not a duration ({e}); write e.g. {example}"),
                );
                None
            }
        }
    }

    fn file(&mut self, root: &Node) -> Option<RuleSet> {
        let f = self.fields(root, "", &["models", "keep_attributes"])?;
        let mut keep = std::collections::BTreeSet::new();
        if let Some(list) = f.get("keep_attributes") {
            for (path, n) in self.seq(list, "keep_attributes") {
                if let Some(name) = self.text(n, &path) {
                    keep.insert(name);
                }
            }
        }
        let list = self.require(&f, "models")?;
        let items = self.seq(list, "models");
        if items.is_empty() && (matches!(list.kind, Kind::Seq(_)) || list.scalar() == Some(Scalar::Null)) {
            self.error(list.pos, "models", "empty", "at least one model is required");
        }
        // Names first: a tier may require a model defined after it.
        let names: Vec<Option<String>> =
            items.iter().map(|(_, n)| entry(n, "name").and_then(|v| v.text().map(str::to_string))).collect();
        let mut models = Vec::new();
        for (mi, (path, node)) in items.iter().enumerate() {
            if let Some(name) = &names[mi] {
                if names[..mi].contains(&Some(name.clone())) {
                    self.error(node.pos, &join(path, "name"), "duplicate", format!("model `{name}` is defined twice"));
                }
            }
            if let Some(m) = self.model(node, path, mi, &names) {
                models.push(m);
            }
        }
        Some(RuleSet::new(models, keep))
    }

    fn model(&mut self, node: &Node, path: &str, index: usize, names: &[Option<String>]) -> Option<Model> {
        let f = self.fields(
            node,
            path,
            &["name", "version", "half_life", "base_tier", "alert", "shadow", "tiers", "rules", "fit", "account"],
        )?;
        let name = self.require(&f, "name").and_then(|n| self.name(n, &f.at("name")));
        let version = match f.get("version") {
            None => Some(1),
            Some(v) => self.whole(v, &f.at("version"), "a version"),
        };
        let half_life =
            self.require(&f, "half_life").and_then(|n| self.duration(n, &f.at("half_life"), "`14d` or `36h`"));
        let base_tier = match f.get("base_tier") {
            None => Some("cold".to_string()),
            Some(n) => self.name(n, &f.at("base_tier")),
        };
        let alert = match f.get("alert") {
            None => Some(true),
            Some(n) => self.flag(n, &f.at("alert")),
        };
        let shadow = match f.get("shadow") {
            None => Some(false),
            Some(n) => self.flag(n, &f.at("shadow")),
        };
        let rules: Vec<Option<Rule>> = match f.get("rules") {
            None => Vec::new(),
            Some(n) => self.seq(n, &f.at("rules")).into_iter().map(|(p, r)| self.rule(r, &p)).collect(),
        };
        let fit: Vec<Option<FitRule>> = match f.get("fit") {
            None => Vec::new(),
            Some(n) => self.seq(n, &f.at("fit")).into_iter().map(|(p, r)| self.fit_rule(r, &p)).collect(),
        };
        if rules.is_empty() && fit.is_empty() {
            self.error(
                f.pos,
                &f.at("rules"),
                "empty",
                format!("model `{}` has no rules and no fit rules", name.as_deref().unwrap_or("?")),
            );
        }
        // Ids as written, so a repeat is found even in a rule with other
        // mistakes.
        let mut ids: Vec<&str> = Vec::new();
        for list in ["rules", "fit"] {
            let Some(Kind::Seq(items)) = f.get(list).map(|n| &n.kind) else { continue };
            for (i, id) in items.iter().enumerate().filter_map(|(i, item)| Some((i, entry(item, "id")?))) {
                let Some(text) = id.text() else { continue };
                if ids.contains(&text) {
                    let at = f.at(&format!("{list}[{i}].id"));
                    self.error(id.pos, &at, "duplicate", format!("rule id `{text}` is used twice in the model"));
                }
                ids.push(text);
            }
        }
        let tiers = match f.get("tiers") {
            None => Some(Vec::new()),
            Some(n) => self.tiers(n, &f.at("tiers"), index, base_tier.as_deref(), alert.unwrap_or(true), names),
        };
        let account = match (f.get("account"), &tiers) {
            (None, _) => Some(None),
            (Some(n), Some(t)) => self
                .account(n, &f.at("account"), t, base_tier.as_deref().unwrap_or("cold"), alert.unwrap_or(true))
                .map(Some),
            (Some(_), None) => None,
        };
        Some(Model {
            name: name?,
            version: version?,
            half_life_secs: half_life?.as_secs_f64(),
            base_tier: base_tier?,
            shadow: shadow?,
            tiers: tiers?,
            rules: rules.into_iter().collect::<Option<_>>()?,
            fit: fit.into_iter().collect::<Option<_>>()?,
            account: account?,
        })
    }

    /// A model's `account:` roll-up; `tiers` are the model's contact tiers
    /// (the breadth tier names one of them).
    fn account(&mut self, node: &Node, path: &str, tiers: &[Tier], base: &str, alert: bool) -> Option<AccountRollup> {
        let f = self.fields(node, path, &["top", "weights", "breadth", "base_tier", "alert", "tiers"])?;
        let top = match f.get("top") {
            None => Some(None),
            Some(n) => match self.whole(n, &f.at("top"), "`top`") {
                Some(0) => {
                    self.error(n.pos, &f.at("top"), "out_of_range", "`top` counts contacts: 1 or more");
                    None
                }
                t => t.map(|t| Some(t as usize)),
            },
        };
        let weights = match f.get("weights") {
            None => Some(None),
            Some(n) => self.weights(n, &f.at("weights")).map(Some),
        };
        let breadth_tier = match f.get("breadth") {
            None if tiers.is_empty() => {
                self.error(
                    f.pos,
                    &f.at("breadth"),
                    "no_tiers",
                    "an account roll-up counts contacts at or above a tier of the model: give the model `tiers:`",
                );
                None
            }
            None => Some(1),
            Some(n) => {
                let name = self.text(n, &f.at("breadth"))?;
                match tiers.iter().position(|t| t.name == name) {
                    Some(i) => Some(i + 1),
                    None => {
                        let near = suggest(&name, tiers.iter().map(|t| t.name.as_str()));
                        let list = tiers.iter().map(|t| format!("`{}`", t.name)).collect::<Vec<_>>().join(", ");
                        self.error_near(
                            n.pos,
                            &f.at("breadth"),
                            "unknown_tier",
                            format!("`{name}` is not a tier of the model; its tiers are {list}"),
                            near,
                        );
                        None
                    }
                }
            }
        };
        let base_tier = match f.get("base_tier") {
            None => Some(base.to_string()),
            Some(n) => self.name(n, &f.at("base_tier")),
        };
        let alert = match f.get("alert") {
            None => Some(alert),
            Some(n) => self.flag(n, &f.at("alert")),
        };
        let mut out: Vec<Option<AccountTier>> = Vec::new();
        if let Some(n) = self.require(&f, "tiers") {
            for (tpath, tnode) in self.seq(n, &f.at("tiers")) {
                let tier = self.account_tier(tnode, &tpath, alert.unwrap_or(true));
                if let Some(t) = &tier {
                    let before: Vec<(&str, f64, f64)> =
                        out.iter().flatten().map(|x| (x.name.as_str(), x.enter, x.exit)).collect();
                    let base = base_tier.as_deref();
                    self.listed_tier(&tpath, tnode.pos, (&t.name, t.enter, t.exit), base, &before);
                }
                out.push(tier);
            }
            if out.is_empty() {
                self.error(n.pos, &f.at("tiers"), "empty", "an account roll-up needs at least one tier");
            }
        }
        Some(AccountRollup {
            top: top?,
            weights: weights?,
            breadth_tier: breadth_tier?,
            base_tier: base_tier?,
            tiers: out.into_iter().collect::<Option<_>>()?,
        })
    }

    fn weights(&mut self, node: &Node, path: &str) -> Option<Weights> {
        let f = self.fields(node, path, &["attribute", "values", "default"])?;
        let attribute = self.require(&f, "attribute").and_then(|n| self.name(n, &f.at("attribute")));
        let default = match f.get("default") {
            None => Some(1.0),
            Some(n) => self.weight(n, &f.at("default")),
        };
        let mut values = std::collections::BTreeMap::new();
        let mut ok = true;
        if let Some(n) = self.require(&f, "values") {
            let v = self.fields(n, &f.at("values"), &[])?;
            for &(value, w) in &v.entries {
                match self.weight(w, &v.at(value)) {
                    Some(w) => {
                        values.insert(value.to_string(), w);
                    }
                    None => ok = false,
                }
            }
        }
        ok.then_some(())?;
        Some(Weights { attribute: attribute?, values, default: default? })
    }

    /// A weight: a number from 0.
    fn weight(&mut self, node: &Node, path: &str) -> Option<f64> {
        let w = self.number(node, path)?;
        if w < 0.0 {
            self.error(node.pos, path, "out_of_range", format!("a weight is 0 or more, not {w}"));
            return None;
        }
        Some(w)
    }

    /// A tier's `enter` and `exit`: enter above zero, exit above zero and
    /// at most enter.
    fn thresholds(&mut self, f: &Fields<'_>) -> (Option<f64>, Option<f64>) {
        let enter = self.require(f, "enter").and_then(|n| self.number(n, &f.at("enter")));
        let exit = self.require(f, "exit").and_then(|n| self.number(n, &f.at("exit")));
        if let (Some(e), Some(n)) = (enter, f.get("enter")) {
            if e <= 0.0 {
                self.error(n.pos, &f.at("enter"), "out_of_range", "must be a number greater than zero");
            }
        }
        if let (Some(enter), Some(x), Some(n)) = (enter, exit, f.get("exit")) {
            if !(x > 0.0 && x <= enter) {
                self.error(
                    n.pos,
                    &f.at("exit"),
                    "tier_exit",
                    format!("exit ({x}) must be greater than zero and at most enter ({enter}); an exit above enter would make the tier flap"),
                );
            }
        }
        (enter, exit)
    }

    /// Checks a listed tier (name, enter, exit) against the base tier and
    /// the tiers listed before it: no name twice, each above the one before.
    fn listed_tier(
        &mut self,
        tpath: &str,
        fallback: Pos,
        (name, enter, exit): (&str, f64, f64),
        base: Option<&str>,
        before: &[(&str, f64, f64)],
    ) {
        let pos = |c: &Self, f: &str| c.positions.get(&join(tpath, f)).copied().unwrap_or(fallback);
        if Some(name) == base || before.iter().any(|x| x.0 == name) {
            let p = pos(self, "name");
            self.error(p, &join(tpath, "name"), "duplicate", format!("tier `{name}` is the base tier or listed twice"));
        }
        if let Some(&(prev, prev_enter, prev_exit)) = before.last() {
            if enter <= prev_enter || exit <= prev_exit {
                let p = pos(self, "enter");
                self.error(
                    p,
                    &join(tpath, "enter"),
                    "tier_order",
                    format!(
                        "tiers are listed lowest first: enter and exit of `{name}` ({enter}/{exit}) must exceed those of `{prev}` ({prev_enter}/{prev_exit})"
                    ),
                );
            }
        }
    }

    fn account_tier(&mut self, node: &Node, path: &str, alert: bool) -> Option<AccountTier> {
        let f = self.fields(node, path, &["name", "enter", "exit", "min_contacts", "alert"])?;
        let name = self.require(&f, "name").and_then(|n| self.name(n, &f.at("name")));
        let (enter, exit) = self.thresholds(&f);
        let min_contacts = match f.get("min_contacts") {
            None => Some(0),
            Some(n) => self.whole(n, &f.at("min_contacts"), "`min_contacts`"),
        };
        let alert = match f.get("alert") {
            None => Some(alert),
            Some(n) => self.flag(n, &f.at("alert")),
        };
        Some(AccountTier { name: name?, enter: enter?, exit: exit?, min_contacts: min_contacts?, alert: alert? })
    }

    fn tiers(
        &mut self,
        node: &Node,
        path: &str,
        model: usize,
        base: Option<&str>,
        alert: bool,
        names: &[Option<String>],
    ) -> Option<Vec<Tier>> {
        let mut tiers: Vec<Option<Tier>> = Vec::new();
        for (tpath, tnode) in self.seq(node, path) {
            let tier = self.tier(tnode, &tpath, model, alert, names);
            if let Some(t) = &tier {
                let before: Vec<(&str, f64, f64)> =
                    tiers.iter().flatten().map(|x| (x.name.as_str(), x.enter, x.exit)).collect();
                self.listed_tier(&tpath, tnode.pos, (&t.name, t.enter, t.exit), base, &before);
            }
            tiers.push(tier);
        }
        tiers.into_iter().collect()
    }

    fn tier(&mut self, node: &Node, path: &str, model: usize, alert: bool, names: &[Option<String>]) -> Option<Tier> {
        let f = self.fields(node, path, &["name", "enter", "exit", "cooldown", "requires", "alert"])?;
        let name = self.require(&f, "name").and_then(|n| self.name(n, &f.at("name")));
        let (enter, exit) = self.thresholds(&f);
        let cooldown = match f.get("cooldown") {
            None => Some(None),
            Some(n) => self.duration(n, &f.at("cooldown"), "`7d`").map(|d| Some(d.as_millis() as Millis)),
        };
        let tier_alert = match f.get("alert") {
            None => Some(alert),
            Some(n) => self.flag(n, &f.at("alert")),
        };
        let requires = match f.get("requires") {
            None => Some(Vec::new()),
            Some(n) => self.requires(n, &f.at("requires"), model, names),
        };
        Some(Tier {
            name: name?,
            enter: enter?,
            exit: exit?,
            cooldown_ms: cooldown?,
            requires: requires?,
            alert: tier_alert?,
        })
    }

    fn requires(
        &mut self,
        node: &Node,
        path: &str,
        model: usize,
        names: &[Option<String>],
    ) -> Option<Vec<Requirement>> {
        let f = self.fields(node, path, &[])?;
        let known: Vec<&str> = names.iter().flatten().map(String::as_str).collect();
        let mut out = Vec::new();
        let mut ok = true;
        for &(other, v) in &f.entries {
            let at = f.at(other);
            let band = match &v.kind {
                Kind::Map(_) => self.fields(v, &at, &["enter", "exit"]).and_then(|b| {
                    let enter = self.require(&b, "enter").and_then(|n| self.number(n, &b.at("enter")))?;
                    let exit = match b.get("exit") {
                        None => enter,
                        Some(n) => self.number(n, &b.at("exit"))?,
                    };
                    if exit > enter {
                        self.error(
                            v.pos,
                            &b.at("exit"),
                            "tier_exit",
                            format!("exit ({exit}) must be at most enter ({enter})"),
                        );
                        return None;
                    }
                    Some((enter, exit))
                }),
                _ => self.number(v, &at).map(|x| (x, x)),
            };
            let key_pos = key_of(node, other).map_or(v.pos, |k| k.pos);
            let idx = names.iter().position(|n| n.as_deref() == Some(other));
            match idx {
                None => {
                    self.error_near(
                        key_pos,
                        &at,
                        "unknown_model",
                        format!("no model is named `{other}`; models: {}", known.join(", ")),
                        suggest(other, known.iter().copied()),
                    );
                    ok = false;
                }
                Some(i) if i == model => {
                    self.error(key_pos, &at, "self_requirement", "a tier cannot require its own model");
                    ok = false;
                }
                Some(i) => {
                    if let Some((enter, exit)) = band {
                        out.push(Requirement { model: i, model_name: other.to_string(), enter, exit });
                    } else {
                        ok = false;
                    }
                }
            }
        }
        ok.then_some(out)
    }

    fn rule(&mut self, node: &Node, path: &str) -> Option<Rule> {
        let f = self.fields(node, path, &["id", "when", "points", "cap", "once"])?;
        let id = self.require(&f, "id").and_then(|n| self.name(n, &f.at("id")));
        let when = self.require(&f, "when").and_then(|n| self.when(n, &f.at("when")));
        let points = self.require(&f, "points").and_then(|n| self.number(n, &f.at("points")));
        let cap = match f.get("cap") {
            None => Some(None),
            Some(n) => self.cap(n, &f.at("cap")).map(Some),
        };
        let once = match f.get("once") {
            None => Some(false),
            Some(n) => self.flag(n, &f.at("once")),
        };
        if let (Some(true), Some(Some(_)), Some(n)) = (once, cap, f.get("once")) {
            self.error(n.pos, &f.at("once"), "conflict", "use either `once` or `cap`, not both");
        }
        let (kind, when) = when?;
        Some(Rule { id: id?, kind, when, points: points?, cap: cap?, once: once?, hits: HitCount::default() })
    }

    fn fit_rule(&mut self, node: &Node, path: &str) -> Option<FitRule> {
        let f = self.fields(node, path, &["id", "when", "points"])?;
        let id = self.require(&f, "id").and_then(|n| self.name(n, &f.at("id")));
        let when = self.require(&f, "when").and_then(|n| self.conditions(n, &f.at("when"), None));
        let points = self.require(&f, "points").and_then(|n| self.number(n, &f.at("points")));
        Some(FitRule { id: id?, when: when?, points: points? })
    }

    fn cap(&mut self, node: &Node, path: &str) -> Option<Cap> {
        let f = self.fields(node, path, &["hits", "points", "per"])?;
        let per = self.require(&f, "per").and_then(|n| {
            let s = self.text(n, &f.at("per"))?;
            let w = Window::from_name(&s);
            if w.is_none() {
                self.error_near(
                    n.pos,
                    &f.at("per"),
                    "unknown_window",
                    format!("`{s}` is not a window; use day, week or month"),
                    suggest(&s, ["day", "week", "month"]),
                );
            }
            w
        });
        let above_zero = |c: &mut Self, n: &Node, at: &str, ok: bool| {
            if !ok {
                c.error(n.pos, at, "out_of_range", "must be above zero");
            }
            ok
        };
        let limit = match (f.get("hits"), f.get("points")) {
            (Some(h), None) => {
                let at = f.at("hits");
                self.whole(h, &at, "`hits`").filter(|n| above_zero(self, h, &at, *n > 0)).map(CapLimit::Hits)
            }
            (None, Some(p)) => {
                let at = f.at("points");
                self.number(p, &at).filter(|x| above_zero(self, p, &at, *x > 0.0)).map(CapLimit::Points)
            }
            _ => {
                self.error(f.pos, path, "invalid_cap", "a cap needs exactly one of `hits` or `points`, above zero");
                None
            }
        };
        Some(Cap { limit: limit?, per: per? })
    }

    /// `when:` of a behaviour rule: `kind` plus conditions on its fields.
    fn when(&mut self, node: &Node, path: &str) -> Option<(InteractionKind, Conditions)> {
        let f = self.fields(node, path, &[])?;
        let kind = match f.get("kind") {
            None => {
                let all: Vec<&str> = InteractionKind::ALL.iter().map(|k| k.as_str()).collect();
                self.error(f.pos, &f.at("kind"), "missing_field", format!("`when` needs a `kind`: {}", all.join(", ")));
                None
            }
            Some(n) => self.text(n, &f.at("kind")).and_then(|s| {
                let k = InteractionKind::from_name(&s);
                if k.is_none() {
                    let all: Vec<&str> = InteractionKind::ALL.iter().map(|k| k.as_str()).collect();
                    self.error_near(
                        n.pos,
                        &f.at("kind"),
                        "unknown_kind",
                        format!("`{s}` is not a kind of interaction; use one of: {}", all.join(", ")),
                        suggest(&s, all.iter().copied()),
                    );
                }
                k
            }),
        };
        let conditions = self.conditions(node, path, Some(kind));
        Some((kind?, conditions?))
    }

    /// Conditions by field. `kind` is `Some` for a behaviour rule (its
    /// fields are checked, and `kind` itself skipped; `Some(None)` when the
    /// kind was wrong) and `None` for fit rules (any attribute name).
    fn conditions(&mut self, node: &Node, path: &str, kind: Option<Option<InteractionKind>>) -> Option<Conditions> {
        let f = self.fields(node, path, &[])?;
        let mut out = Vec::new();
        let mut ok = true;
        for &(field, v) in &f.entries {
            if kind.is_some() && field == "kind" {
                continue;
            }
            let at = f.at(field);
            if let Some(Some(k)) = kind {
                if !k.has_field(field) {
                    let all = k.field_names();
                    let key_pos = key_of(node, field).map_or(v.pos, |k| k.pos);
                    self.error_near(
                        key_pos,
                        &at,
                        "unknown_event_field",
                        format!("`{field}` is not a field of {}; use one of: {}", k.as_str(), all.join(", ")),
                        suggest(field, all.iter().map(String::as_str)),
                    );
                    ok = false;
                    continue;
                }
            }
            match self.condition(v, &at) {
                Some(c) => out.push((field.to_string(), c)),
                None => ok = false,
            }
        }
        ok.then_some(Conditions(out))
    }

    fn condition(&mut self, node: &Node, path: &str) -> Option<Condition> {
        match &node.kind {
            Kind::Scalar { .. } => match node.text() {
                Some(t) => Some(Condition::Equals(t.to_string())),
                None => {
                    self.error(
                        node.pos,
                        path,
                        "wrong_type",
                        "a condition needs a value; for an absent field write `{ exists: false }`",
                    );
                    None
                }
            },
            Kind::Seq(items) => {
                let mut values = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match (&item.kind, item.text()) {
                        (Kind::Scalar { .. }, Some(t)) => values.push(t.to_string()),
                        _ => self.error(
                            item.pos,
                            &format!("{path}[{i}]"),
                            "wrong_type",
                            "a list of values must hold plain values",
                        ),
                    }
                }
                (values.len() == items.len()).then_some(Condition::OneOf(values))
            }
            Kind::Map(entries) => {
                let mut all = Vec::new();
                let mut ok = true;
                for (k, v) in entries {
                    let op = k.text().unwrap_or_default();
                    let at = join(path, op);
                    let c = match op {
                        "equals" => self.text(v, &at).map(Condition::Equals),
                        "one_of" => match &v.kind {
                            Kind::Seq(_) => self.condition(v, &at),
                            _ => {
                                self.error(v.pos, &at, "wrong_type", "`one_of` needs a list, e.g. `one_of: [a, b]`");
                                None
                            }
                        },
                        "prefix" => self.text(v, &at).map(Condition::Prefix),
                        "suffix" => self.text(v, &at).map(Condition::Suffix),
                        "contains" => self.text(v, &at).map(Condition::Contains),
                        "regex" => self.text(v, &at).and_then(|s| match regex::Regex::new(&s) {
                            Ok(r) => Some(Condition::Regex(r)),
                            Err(e) => {
                                self.error(
                                    v.pos,
                                    &at,
                                    "invalid_regex",
                                    format!("invalid regex `{s}`: {}", regex_message(&e)),
                                );
                                None
                            }
                        }),
                        "gt" => self.number(v, &at).map(Condition::Gt),
                        "gte" => self.number(v, &at).map(Condition::Gte),
                        "lt" => self.number(v, &at).map(Condition::Lt),
                        "lte" => self.number(v, &at).map(Condition::Lte),
                        "exists" => self.flag(v, &at).map(Condition::Exists),
                        "not" => self.condition(v, &at).map(|c| Condition::Not(Box::new(c))),
                        other => {
                            self.error_near(
                                k.pos,
                                &at,
                                "unknown_operator",
                                format!("unknown operator `{other}`; use {}", OPERATORS.join(", ")),
                                suggest(other, OPERATORS.iter().copied()),
                            );
                            None
                        }
                    };
                    match c {
                        Some(c) => all.push(c),
                        None => ok = false,
                    }
                }
                if entries.is_empty() {
                    self.error(node.pos, path, "empty", "an empty condition matches nothing; give an operator");
                    return None;
                }
                if !ok {
                    return None;
                }
                Some(if all.len() == 1 { all.pop().expect("one") } else { Condition::All(all) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(text: &str) -> Vec<(usize, &'static str)> {
        walk(text).problems.iter().map(|p| (p.line, p.code)).collect()
    }

    #[test]
    fn a_misspelt_field_is_one_mistake_and_repeats_show_in_broken_rules() {
        let rule = |a: &str, b: &str| {
            format!("models:\n  - name: m\n    half_life: 7d\n    rules:\n      - {{ id: a, when: {{ kind: page_view }}, {a} }}\n      - {{ id: {b}, when: {{ kind: page_view }}, points: 1 }}\n")
        };
        assert_eq!(codes(&rule("pionts: 10", "b")), [(5, "unknown_field")], "not also `points` missing");
        assert_eq!(codes(&rule("weight: 10", "b")), [(5, "missing_field"), (5, "unknown_field")]);
        assert_eq!(codes(&rule("pionts: 10", "a")), [(5, "unknown_field"), (6, "duplicate")]);
        assert_eq!(codes(&rule("points: 10", "b")), []);
    }

    #[test]
    fn suggestions_catch_slips_not_other_words() {
        let kinds = ["page_view", "form_submission", "custom"];
        assert_eq!(suggest("page_veiw", kinds).as_deref(), Some("page_view"));
        assert_eq!(suggest("pageview", kinds).as_deref(), Some("page_view"));
        assert_eq!(suggest("webinar", kinds), None);
        assert_eq!(suggest("prefx", OPERATORS.iter().copied()).as_deref(), Some("prefix"));
    }
}
