//! Live rules: the rule set in force, reloaded when its file changes or on
//! SIGHUP.
//!
//! A valid file is swapped in atomically: a batch is scored entirely with the
//! rules it started with. A model whose definition changed gets a new
//! version ([`RuleSet::succeed`]). An invalid file is refused with an error
//! log and a metric, and the rules in force keep scoring.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::rules::{RuleSet, RulesError};
use crate::telemetry;

/// The rule set in force and the file it comes from.
#[derive(Debug)]
pub struct LiveRules {
    path: PathBuf,
    current: RwLock<Arc<RuleSet>>,
    last_text: Mutex<String>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The file is unchanged.
    Unchanged,
    /// A new rule set is in force.
    Swapped,
}

impl LiveRules {
    /// Loads the rules file; fails if it is invalid.
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        let text = read(path)?;
        let rules = RuleSet::parse(&text, &path.display().to_string())?;
        telemetry::rules_in_force(&rules);
        Ok(Self { path: path.to_path_buf(), current: RwLock::new(Arc::new(rules)), last_text: Mutex::new(text) })
    }

    /// The rule set in force.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.read().expect("rules lock").clone()
    }

    /// The rules file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file; swaps in a valid new rule set, refuses an invalid
    /// one (the rules in force stay).
    pub fn reload(&self) -> Result<Reloaded, RulesError> {
        let result = self.try_reload();
        match &result {
            Ok(Reloaded::Swapped) => telemetry::rules_reloaded(&self.current()),
            Ok(Reloaded::Unchanged) => {}
            Err(e) => telemetry::rules_refused(e),
        }
        result
    }

    fn try_reload(&self) -> Result<Reloaded, RulesError> {
        let text = read(&self.path)?;
        let mut last = self.last_text.lock().expect("rules text lock");
        if *last == text {
            return Ok(Reloaded::Unchanged);
        }
        // Remember the text even when refused, so a bad file is reported once.
        *last = text.clone();
        let next = RuleSet::parse(&text, &self.path.display().to_string())?;
        let mut current = self.current.write().expect("rules lock");
        *current = Arc::new(current.succeed(next));
        Ok(Reloaded::Swapped)
    }

    /// Reloads whenever the file changes (checked every `interval`) or the
    /// process receives SIGHUP, until `shutdown` completes.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: impl std::future::Future<Output = ()>) {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {},
                _ = hup => tracing::info!(path = %self.path.display(), "SIGHUP: reloading rules."),
            }
            let _ = self.reload();
        }
    }
}

fn read(path: &Path) -> Result<String, RulesError> {
    crate::rules::read(path)
}
