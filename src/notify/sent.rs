//! Which alerts each destination has taken, remembered in Redis for
//! `notify.dedup_window`.
//!
//! The stored offset waits for an alert's slowest destination, so after a
//! crash or a stop an alert is read again even when some of its
//! destinations took it already. Those are skipped: a destination sees an
//! alert again only if the notifier died between the destination taking it
//! and the mark being written. Redis trouble never blocks a delivery: the
//! check then answers "not sent" and the alert goes out (at least once
//! still holds).

use std::time::Duration;

use crate::store::Connection;
use crate::telemetry;

/// The memory of deliveries; [`SentLog::off`] remembers nothing.
#[derive(Clone)]
pub struct SentLog {
    conn: Option<Connection>,
    window: Duration,
}

impl SentLog {
    /// A log that remembers nothing (`notify.dedup_window = "0s"`).
    pub fn off() -> Self {
        Self { conn: None, window: Duration::ZERO }
    }

    /// A log in the Redis of `redis`, remembering for `window`.
    pub async fn connect(
        redis: &crate::config::RedisConfig,
        window: Duration,
    ) -> Result<Self, crate::store::StoreError> {
        let store = crate::store::Store::connect_with(redis).await?;
        Ok(Self { conn: Some(store.connection()), window })
    }

    fn key(destination: &str, alert_id: &str) -> String {
        format!("hl:notify:sent:{destination}:{alert_id}")
    }

    /// Whether `destination` took `alert_id` within the window.
    pub async fn was_sent(&self, destination: &str, alert_id: &str) -> bool {
        let Some(conn) = &self.conn else { return false };
        let mut conn = conn.clone();
        match redis::cmd("EXISTS").arg(Self::key(destination, alert_id)).query_async::<i64>(&mut conn).await {
            Ok(n) => n > 0,
            Err(e) => {
                telemetry::notify_sent_log_error("check", &e);
                false
            }
        }
    }

    /// Remembers that `destination` took these alerts.
    pub async fn mark(&self, destination: &str, alert_ids: &[&str]) {
        let Some(conn) = &self.conn else { return };
        let mut conn = conn.clone();
        for id in alert_ids {
            let set = redis::cmd("SET")
                .arg(Self::key(destination, id))
                .arg(1)
                .arg("PX")
                .arg(self.window.as_millis() as u64)
                .query_async::<()>(&mut conn)
                .await;
            if let Err(e) = set {
                telemetry::notify_sent_log_error("mark", &e);
            }
        }
    }
}
