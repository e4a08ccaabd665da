//! The scoring service, wired: the rules in force (reloaded on change or
//! SIGHUP), the HTTP listener (metrics, health, read API, board) and the
//! pipeline. `hotlead run` calls [`run`]; tests start the same service with
//! [`Service`].
//!
//! The read side stands apart from the writer: the listener starts first,
//! keeps serving while the pipeline rebalances, and stops only with the
//! service.
//!
//! Private by default: a service whose listener reaches beyond loopback
//! with no token is refused before anything starts
//! ([`Config::check_serving`]), and its answers leave out
//! `privacy.hidden_attributes`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::config::Config;
use crate::pipeline::{Clock, Status};
use crate::reload::LiveRules;

/// Runs the service until `shutdown` completes (as `hotlead run` does).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Service::new(config)?.run(shutdown).await
}

/// The service, before it runs.
pub struct Service {
    config: Config,
    rules: Arc<LiveRules>,
    status: Arc<Status>,
    clock: Clock,
}

impl Service {
    /// Checks that the configuration may serve the read API
    /// ([`Config::check_serving`]) and loads the rules it names.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        config.check_serving().context("invalid configuration")?;
        let rules = Arc::new(LiveRules::load(&config.rules.path).map_err(crate::cli::rules_hint)?);
        Ok(Self { config, rules, status: Arc::default(), clock: Arc::new(crate::decode::now_ms) })
    }

    /// The same service with another wall clock (for the cooling sweep).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<LiveRules> {
        self.rules.clone()
    }

    /// What the pipeline is doing.
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Serves and scores until `shutdown` completes or the pipeline fails.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self { config, rules, status, clock } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|v| *v).await;
            }
        };
        let mut listener = None;
        if !config.http.listen.is_empty() {
            let socket = tokio::net::TcpListener::bind(&config.http.listen)
                .await
                .with_context(|| format!("cannot listen on http.listen = {}", config.http.listen))?;
            let store = crate::store::Store::connect_with(&config.redis).await.context("cannot connect to Redis")?;
            let mut ctx = crate::api::ApiContext::new(
                store,
                rules.clone(),
                status.clone(),
                config.topics.input.clone(),
                &config.client_config(),
            )?;
            ctx.metrics = crate::telemetry::metrics_handle();
            ctx.token = config.http.token.clone();
            ctx.privacy = Arc::new(config.privacy.clone());
            ctx.rules_editable = config.rules.editable;
            ctx.limits = config.limits();
            ctx.dedup = config.dedup();
            ctx.account_topic = config.topics.account_contributions.clone();
            tracing::info!(address = %config.http.listen, auth = ctx.token.is_some(), hidden_attributes = ctx.privacy.hidden_attributes.len(), "Serving /metrics, /healthz, /readyz, /v1 and the board.");
            let s = stopped();
            listener = Some(tokio::spawn(async move {
                if let Err(e) = crate::api::serve(socket, ctx, s).await {
                    tracing::error!(error = %e, "HTTP listener failed.");
                }
            }));
        }
        let interval = config.rules.reload_interval;
        let watcher = rules.clone();
        let watch_stop = stopped();
        let watching = tokio::spawn(async move {
            // Zero: SIGHUP only, with a tick that never comes in practice.
            let every = if interval.is_zero() { Duration::from_secs(100 * 365 * 86_400) } else { interval };
            watcher.watch(every, watch_stop).await;
        });
        let result = crate::pipeline::run(&config, rules, status, shutdown, clock).await;
        let _ = stop_tx.send(true);
        let _ = watching.await;
        if let Some(l) = listener {
            let _ = l.await;
        }
        result?;
        tracing::info!("Stopped cleanly.");
        Ok(())
    }
}
