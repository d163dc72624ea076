//! What the simulator is started with, and what can be changed while it runs: listen address,
//! credentials, latency, rate limit, lockout, the pairs a port may hold. Nothing here knows of
//! the state or the routes.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

/// Pairs one port holds unless set otherwise. Huawei's quota is NOT confirmed: this is the
/// simulator's choice (see the ports module).
pub const DEFAULT_MAX_PAIRS: usize = 100;

/// The most `max_pairs` may be set to, so that no setting (an admin body included) makes a
/// port's list unbounded.
pub const MAX_PAIRS_CEILING: usize = 10_000;

/// Why the simulator could not start or take a new setting.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    // The I/O error is part of the message (not a `source`) so that it is printed exactly once.
    #[error("cannot listen on {addr}: {error}")]
    Listen { addr: SocketAddr, error: std::io::Error },
    #[error("{0}")]
    LocalAddr(std::io::Error),
    #[error("qps must be positive, got {0}")]
    InvalidQps(f64),
    #[error("qps {0} is too high")]
    QpsTooHigh(f64),
    #[error("max_pairs must be 1 to {MAX_PAIRS_CEILING}, got {0}")]
    InvalidMaxPairs(usize),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimCredential {
    pub access_key: String,
    pub secret_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    pub listen: SocketAddr,
    pub credentials: Vec<SimCredential>,
    /// Added to every cloud call, after its effect is applied and before the answer.
    pub latency: Duration,
    /// Above this rate the gateway answers 429 `APIGW.0308`. Burst: one second's worth.
    pub qps: Option<f64>,
    pub missing_nics: Vec<String>,
    pub max_clock_skew: Duration,
    /// Consecutive signature failures that lock an access key, and for how long.
    pub lockout_after: u32,
    pub lockout_for: Duration,
    /// Pairs one port's `allowed_address_pairs` holds at most (1 to [`MAX_PAIRS_CEILING`]): a
    /// longer update is refused with 400 `VPC.2500`.
    pub max_pairs: usize,
}

impl SimulatorConfig {
    pub fn new(listen: SocketAddr, access_key: &str, secret_key: &str) -> Self {
        Self {
            listen,
            credentials: vec![SimCredential {
                access_key: access_key.into(),
                secret_key: secret_key.into(),
                security_token: None,
            }],
            latency: Duration::ZERO,
            qps: None,
            missing_nics: vec![],
            max_clock_skew: Duration::from_secs(15 * 60),
            lockout_after: 5,
            lockout_for: Duration::from_secs(5 * 60),
            max_pairs: DEFAULT_MAX_PAIRS,
        }
    }
}

/// The gateway's rate limiter for `qps` (none without one): burst is one second's worth.
pub(super) fn limiter(qps: Option<f64>) -> Result<Option<Arc<DefaultDirectRateLimiter>>, SimError> {
    let Some(qps) = qps else { return Ok(None) };
    if !(qps.is_finite() && qps > 0.0) {
        return Err(SimError::InvalidQps(qps));
    }
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / qps)).ok_or(SimError::QpsTooHigh(qps))?;
    let burst = NonZeroU32::new(qps.ceil() as u32).unwrap_or(NonZeroU32::MIN);
    Ok(Some(Arc::new(RateLimiter::direct(quota.allow_burst(burst)))))
}

/// `n` if it may be the limit of pairs a port holds: 1 to [`MAX_PAIRS_CEILING`] (with 0 a port
/// could hold no pair at all).
pub(super) fn check_max_pairs(n: usize) -> Result<usize, SimError> {
    if (1..=MAX_PAIRS_CEILING).contains(&n) { Ok(n) } else { Err(SimError::InvalidMaxPairs(n)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Admin clients read this text in a 400 answer: the typed error must print what the string did.
    #[test]
    fn qps_error_text_is_stable() {
        assert_eq!(
            limiter(Some(-1.0)).err().map(|e| e.to_string()).unwrap_or_default(),
            "qps must be positive, got -1"
        );
    }

    #[test]
    fn max_pairs_is_bounded() {
        assert_eq!(check_max_pairs(1).ok(), Some(1));
        assert_eq!(check_max_pairs(MAX_PAIRS_CEILING).ok(), Some(MAX_PAIRS_CEILING));
        for bad in [0, MAX_PAIRS_CEILING + 1, usize::MAX] {
            assert_eq!(
                check_max_pairs(bad).err().map(|e| e.to_string()),
                Some(format!("max_pairs must be 1 to 10000, got {bad}"))
            );
        }
    }
}
