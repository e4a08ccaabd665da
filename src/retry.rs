//! The one retry policy for infrastructure calls (Redis, Kafka metadata,
//! the relay): exponential backoff from 100 ms, doubling to at most 10 s,
//! 12 attempts (about a minute in all); then the last error is returned for
//! the caller to stop on, so a supervisor restarts the process.

use std::future::Future;
use std::time::Duration;

use crate::telemetry;

/// Attempts before giving up.
pub const ATTEMPTS: u32 = 12;

/// The delay before attempt `attempt + 1` (attempts count from 1).
pub fn backoff(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << (attempt.saturating_sub(1)).min(16));
    Duration::from_millis(ms).min(Duration::from_secs(10))
}

/// Runs `f` until it succeeds, fails with an error `retryable` refuses, or
/// [`ATTEMPTS`] attempts have failed; each retry is logged and counted
/// under `operation`.
pub async fn retry<T, E, F, Fut>(operation: &'static str, mut f: F, retryable: impl Fn(&E) -> bool) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                telemetry::retrying(operation, attempt, &e);
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                if retryable(&e) {
                    telemetry::fatal(operation, &e);
                }
                return Err(e);
            }
        }
    }
}

/// [`retry`] for calls that every failure may be retried.
pub async fn always<T, E, F, Fut>(operation: &'static str, f: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry(operation, f, |_| true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        let d: Vec<u64> = (1..=ATTEMPTS).map(|a| backoff(a).as_millis() as u64).collect();
        assert_eq!(&d[..8], [100, 200, 400, 800, 1600, 3200, 6400, 10_000]);
        assert!(d.iter().all(|ms| *ms <= 10_000));
        let total: u64 = d[..ATTEMPTS as usize - 1].iter().sum();
        assert!((50_000..=70_000).contains(&total), "about a minute in all: {total} ms");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_attempts_or_at_a_final_error() {
        let mut calls = 0;
        let r: Result<(), String> = always("t", || {
            calls += 1;
            async { Err("down".to_string()) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, ATTEMPTS);
        let mut calls = 0;
        let r: Result<(), String> = retry(
            "t",
            || {
                calls += 1;
                async { Err("fenced".to_string()) }
            },
            |e: &String| e != "fenced",
        )
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
