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
//! - [`store`]: Redis keys, the atomic batch commit, the outbox.
//! - [`pipeline`]: consume -> score -> commit -> relay -> store offsets.
//! - [`query`]: a contact's scores and explanations, decayed to now.
//! - [`api`]: the HTTP listener (`/metrics`, `/healthz`, `/readyz`).
//! - [`workbench`]: the rules workbench on the board: check, preview, save.
//! - [`telemetry`]: metric names, logging, one function per notable event.
//! - [`kafka`]: topic administration and the alert reader.
//! - [`simulate`]: a realistic, seeded stream of interaction events.
//! - [`replay`]: `hotlead rules test`: events from JSON lines, scored offline.
//! - [`cli`]: the `hotlead` command line.

pub mod api;
pub mod cli;
pub mod config;
pub mod decode;
pub mod kafka;
pub mod pipeline;
pub mod query;
pub mod reload;
pub mod replay;
pub mod rules;
pub mod score;
pub mod simulate;
pub mod store;
pub mod telemetry;
pub mod workbench;

/// The `hotlead.v1` protobuf types, generated from `proto/hotlead/v1`.
#[allow(missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/hotlead.v1.rs"));
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
