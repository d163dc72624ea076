//! Retries inside one ECS call: only the `Retryable` class, exponential backoff with full
//! jitter, bounded by attempts and by total time, honouring `Retry-After`.
//!
//! The total-time bound keeps every attempt well inside the 15-minute validity of a signature
//! (each attempt is re-signed anyway) and keeps one reconcile from holding a worker for long;
//! the controller's requeue takes over after that.

use std::future::Future;
use std::time::Duration;

use backon::Retryable;
use rand::RngExt;
use tokio::time::Instant;

use super::error::{EcsError, ErrorClass};

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in total, the first included. 1 disables retries.
    pub max_attempts: u32,
    /// Cap of the first backoff; it doubles per retry up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// No retry starts later than this after the first attempt started.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    pub fn none() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// The upper bound of the n-th backoff (n = 0 for the first retry).
    pub fn cap(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.min(31));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Full-jitter backoff: the n-th delay is uniform in `[0, min(max_delay, base * 2^n)]`
/// (spreads retries of many callers better than equal or no jitter). Stops after
/// `max_attempts - 1` delays.
#[derive(Debug)]
pub struct FullJitter {
    policy: RetryPolicy,
    retries: u32,
}

impl FullJitter {
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy, retries: 0 }
    }
}

impl Iterator for FullJitter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.retries + 1 >= self.policy.max_attempts {
            return None;
        }
        let cap = self.policy.cap(self.retries);
        self.retries += 1;
        let millis = cap.as_millis() as u64;
        Some(Duration::from_millis(rand::rng().random_range(0..=millis)))
    }
}

/// Runs `attempt` until it succeeds, fails with a non-retryable error, or the policy's bounds
/// are reached. A `Retry-After` longer than the computed backoff wins; one that would end past
/// the time budget stops the retries (the error is returned and the caller requeues).
///
/// Whether the call may have changed the cloud is decided over every attempt, not the last
/// one: a timed-out first attempt followed by a refused second one is
/// [`EcsError::Uncertain`].
///
/// With `resend_safe` false, an attempt that may have reached the cloud is not repeated: only
/// failures that certainly changed nothing (a refused connection, a 4xx throttle) are retried.
pub async fn with_retries<T, F, Fut>(policy: &RetryPolicy, resend_safe: bool, mut attempt: F) -> Result<T, EcsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, EcsError>>,
{
    let deadline = crate::instant_after(policy.max_elapsed);
    let earlier = std::sync::Mutex::new(None::<String>);
    let result = (|| {
        let next = attempt();
        let earlier = &earlier;
        async move {
            let result = next.await;
            if let Err(e) = &result
                && e.may_have_applied()
            {
                // The first such attempt is the one the cloud may have acted on.
                earlier.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| e.to_string());
            }
            result
        }
    })
    .retry(FullJitter::new(policy.clone()))
    .when(|e: &EcsError| {
        e.class() == ErrorClass::Retryable
            && !matches!(e, EcsError::Fenced(_))
            && (resend_safe || !e.may_have_applied())
    })
    .adjust(|e: &EcsError, next: Option<Duration>| {
        let delay = next?.max(e.retry_after().unwrap_or_default());
        // Checked: a server-supplied delay must not be able to overflow the clock.
        Instant::now().checked_add(delay).is_some_and(|at| at <= deadline).then_some(delay)
    })
    .notify(|e: &EcsError, delay: Duration| {
        tracing::debug!(error = %e, delay_ms = delay.as_millis() as u64, "retrying ECS call");
    })
    .await;
    match result {
        Err(last) if !last.may_have_applied() => match earlier.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(earlier) => Err(EcsError::Uncertain { last: Box::new(last), earlier }),
            None => Err(last),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::error::{ApiError, TransportKind};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn api(status: u16, code: Option<&str>, retry_after: Option<u64>) -> EcsError {
        EcsError::Api(ApiError {
            status,
            code: code.map(str::to_string),
            message: String::new(),
            detail_codes: vec![],
            request_id: None,
            retry_after: retry_after.map(Duration::from_secs),
        })
    }

    #[test]
    fn full_jitter_delays_stay_under_the_cap_and_stop() {
        let policy = RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            max_elapsed: Duration::from_secs(60),
        };
        for _ in 0..200 {
            let delays: Vec<Duration> = FullJitter::new(policy.clone()).collect();
            assert_eq!(delays.len(), 5);
            for (n, d) in delays.iter().enumerate() {
                assert!(*d <= policy.cap(n as u32), "{n}: {d:?}");
            }
        }
        assert_eq!(policy.cap(0), Duration::from_millis(100));
        assert_eq!(policy.cap(2), Duration::from_millis(400));
        assert_eq!(policy.cap(3), Duration::from_millis(500));
        assert_eq!(policy.cap(100), Duration::from_millis(500));
        assert_eq!(FullJitter::new(RetryPolicy::none()).count(), 0);
    }

    #[test]
    fn full_jitter_actually_jitters() {
        let policy = RetryPolicy { max_attempts: 2, base_delay: Duration::from_secs(1), ..Default::default() };
        let seen: std::collections::HashSet<Duration> =
            (0..50).filter_map(|_| FullJitter::new(policy.clone()).next()).collect();
        assert!(seen.len() > 10, "delays should vary: {seen:?}");
    }

    async fn run(policy: &RetryPolicy, errors: Vec<EcsError>) -> (Result<u32, EcsError>, u32) {
        let calls = AtomicU32::new(0);
        let errors = std::sync::Mutex::new(errors.into_iter());
        let res = with_retries(policy, true, || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let next = errors.lock().unwrap().next();
            async move {
                match next {
                    Some(e) => Err(e),
                    None => Ok(n),
                }
            }
        })
        .await;
        (res, calls.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_retryable_errors() {
        let p = RetryPolicy::default();
        let (res, calls) = run(&p, vec![api(500, None, None), api(503, None, None)]).await;
        assert_eq!(res.unwrap(), 3);
        assert_eq!(calls, 3);

        for terminal in [
            api(401, Some("APIGW.0301"), None),
            api(403, None, None),
            api(400, Some("Ecs.0005"), None),
            api(404, None, None),
        ] {
            let (res, calls) = run(&p, vec![terminal.clone(), api(500, None, None)]).await;
            assert_eq!(calls, 1, "{terminal} must not be retried");
            assert_eq!(res.unwrap_err().status(), terminal.status());
        }

        let timeout = EcsError::Transport { kind: TransportKind::Timeout, message: "t".into() };
        let (res, calls) = run(&p, vec![timeout, api(501, Some("Ecs.0603"), None), api(429, None, None)]).await;
        assert_eq!(res.unwrap(), 4);
        assert_eq!(calls, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_may_have_applied_once_stays_uncertain_whatever_comes_last() {
        let p = RetryPolicy::default();
        let timeout = EcsError::Transport { kind: TransportKind::Timeout, message: "lost".into() };
        for last in [api(429, Some("APIGW.0308"), Some(100)), api(400, Some("Ecs.0039"), None)] {
            let (res, _) = run(&p, vec![timeout.clone(), api(503, None, None), last.clone()]).await;
            let e = res.unwrap_err();
            assert!(e.may_have_applied(), "{e}");
            // The last answer still decides the class and what the status says.
            assert_eq!(e.class(), last.class());
            assert_eq!(e.code(), last.code());
            assert!(e.to_string().contains("lost"), "{e}");
        }
        // Refusals only: not applied.
        let (res, _) = run(&p, vec![api(429, None, None), api(400, Some("Ecs.0039"), None)]).await;
        assert!(!res.unwrap_err().may_have_applied());
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_bounded() {
        let p = RetryPolicy { max_attempts: 3, ..Default::default() };
        let (res, calls) = run(&p, vec![api(500, None, None); 10]).await;
        assert_eq!(calls, 3);
        assert_eq!(res.unwrap_err().status(), Some(500));
    }

    #[tokio::test(start_paused = true)]
    async fn total_time_is_bounded_and_retry_after_is_honoured() {
        let p = RetryPolicy { max_attempts: 10, max_elapsed: Duration::from_secs(5), ..Default::default() };
        let start = Instant::now();
        // Retry-After 2s is honoured twice (t=2, t=4); a third would end at t=6 > 5.
        let (res, calls) = run(&p, vec![api(429, None, Some(2)); 10]).await;
        assert_eq!(calls, 3);
        assert!(res.is_err());
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_secs(4) && elapsed < Duration::from_secs(5), "{elapsed:?}");

        // A Retry-After beyond the budget stops at once.
        let start = Instant::now();
        let (_, calls) = run(&p, vec![api(429, None, Some(60)), api(429, None, None)]).await;
        assert_eq!(calls, 1);
        assert!(start.elapsed() < Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_that_would_overflow_the_clock_stops_the_retries() {
        let p = RetryPolicy { max_attempts: 10, max_elapsed: Duration::from_secs(5), ..Default::default() };
        let (res, calls) = run(&p, vec![api(429, None, Some(u64::MAX)), api(429, None, None)]).await;
        assert_eq!(calls, 1);
        assert_eq!(res.unwrap_err().status(), Some(429));
    }
}
