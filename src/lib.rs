//! hotlead: a real-time lead scorer.
//!
//! Interaction events (protobuf `InteractionEvent`) arrive on a Kafka topic;
//! hotlead keeps a time-decayed score per contact and scoring model in Redis
//! and publishes a `ScoreAlert` the moment a contact crosses a tier threshold.
//!
//! # Layout
//!
//! The pipeline reads top to bottom:
//!
//! - [`proto`]: the generated `hotlead.v1` event and alert types.
//! - [`config`]: the configuration file, environment overrides, validation.
//! - [`rules`]: the rules language: models, conditions, caps, fit, tiers;
//!   every mistake at its line, lint, models in words.
//! - [`reload`]: the rules in force, reloaded on change or SIGHUP.
//! - [`decode`]: raw payload -> validated event, or a dead-letter reason.
//! - [`score`]: pure decay math, tiers with hysteresis, crossings.
//! - [`codec`]: a contact's state as compact, versioned bytes; pure.
//! - [`engine`]: a partition's messages and contact states in, typed
//!   effects out (states, alerts, dead letters, counts); pure.
//! - [`store`]: Redis keys, effects -> the atomic batch commit, the outbox.
//! - [`pipeline`]: the consumer loop and one worker per owned partition:
//!   decode -> engine -> store -> relay -> store offsets.
//! - [`retry`]: the one retry policy for infrastructure calls.
//! - [`service`]: the service wired (rules, HTTP listener, pipeline):
//!   [`run`].
//! - [`query`]: a contact's scores and explanations, decayed to now.
//! - [`account_query`]: accounts' roll-ups read back: an account's contacts
//!   and shares, account leaderboards, recent account alerts.
//! - [`history`]: a contact's score history in a model, rebuilt from its
//!   events (pure).
//! - [`compare`]: a shadow model against a live one over every contact:
//!   tier migrations, alerts gained and lost, score distributions.
//! - [`api`]: the HTTP listener (`/metrics`, `/healthz`, `/readyz`).
//! - [`workbench`]: the rules workbench on the board: check, preview, save.
//! - [`adjust`]: manual adjustments of a score (the write route and
//!   `hotlead adjust`), produced to the input topic like any event.
//! - [`telemetry`]: metric names, logging, one function per notable event.
//! - [`kafka`]: topic administration and the alert reader.
//! - [`notify`]: `hotlead notify`: alerts delivered to webhooks, chat and email.
//! - [`simulate`]: a realistic, seeded stream of interaction events.
//! - [`replay`]: `hotlead rules test`: events from JSON lines, scored offline.
//! - [`cli`]: the `hotlead` command line.

pub mod account;
pub mod account_query;
pub mod adjust;
pub mod api;
pub mod cli;
pub mod codec;
pub mod compare;
pub mod config;
pub mod decode;
pub mod engine;
pub mod history;
pub mod kafka;
pub mod notify;
pub mod pipeline;
pub mod query;
pub mod reload;
pub mod replay;
pub mod retry;
pub mod rules;
pub mod score;
pub mod service;
pub mod shadow;
pub mod simulate;
pub mod store;
pub mod telemetry;
pub mod workbench;

pub use service::run;

/// The `hotlead.v1` protobuf types, generated from `proto/hotlead/v1`.
#[allow(missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/hotlead.v1.rs"));
}

impl proto::email_engagement::Action {
    /// Every action with its name in rules files and JSON lines: the one
    /// place these names are spelled.
    pub const NAMES: [(Self, &'static str); 5] = [
        (Self::Unspecified, "unspecified"),
        (Self::Open, "open"),
        (Self::Click, "click"),
        (Self::Unsubscribe, "unsubscribe"),
        (Self::Bounce, "bounce"),
    ];

    /// The action's name (`open`, `click`, ...).
    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(a, _)| *a == self).map_or("unspecified", |(_, n)| n)
    }

    /// The action a name means, in any case; `None` for an unknown name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES.iter().find(|(_, n)| n.eq_ignore_ascii_case(name)).map(|(a, _)| *a)
    }

    /// The name of a raw enum value (`unspecified` for an undefined one).
    pub fn name_of(value: i32) -> &'static str {
        Self::try_from(value).map_or("unspecified", Self::name)
    }
}

/// Resolves when the process receives Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
