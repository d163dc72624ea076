//! Error policy: how long to wait before trying a binding again, per class of failure, with
//! per-object exponential backoff and jitter (reset on success), and a process-wide brake on
//! access keys the cloud has just refused.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

use rand::RngExt;
use tokio::time::Instant;

use crate::api::v1alpha1::Reason;
use crate::ecs::Credentials;

/// Base and cap of the requeue backoff for a failure reason; `None` waits for a change to the
/// object (terminal errors: retrying the same request cannot help).
pub fn requeue_bounds(reason: Reason) -> Option<(Duration, Duration)> {
    let s = Duration::from_secs;
    match reason {
        Reason::CloudUnavailable | Reason::Indeterminate => Some((s(5), s(300))),
        Reason::Throttled => Some((s(10), s(300))),
        // Huawei locks a key after 5 bad signatures in a row: go slowly.
        Reason::AuthFailed => Some((s(60), s(1800))),
        Reason::CredentialsUnavailable => Some((s(30), s(600))),
        // A NIC can appear late (eventual consistency after server creation).
        Reason::NicNotFound => Some((s(60), s(1800))),
        // Wait for the owner to go (its deletion triggers us too; this is a safety net).
        Reason::Conflict => Some((s(60), s(600))),
        _ => None,
    }
}

/// Per-object failure counts.
#[derive(Default)]
pub struct Backoffs {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoffs {
    /// The next delay for `key` failing with `reason`: `base * 2^n` capped, with equal jitter
    /// (half fixed, half random) so that a fleet failing together does not retry together.
    /// `at_least` (e.g. a Retry-After) raises it.
    pub fn next(&self, key: &str, reason: Reason, at_least: Option<Duration>) -> Option<Duration> {
        let (base, cap) = requeue_bounds(reason)?;
        let n = {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let n = failures.entry(key.to_string()).or_default();
            *n = n.saturating_add(1);
            *n - 1
        };
        let full = base.saturating_mul(2u32.saturating_pow(n.min(20))).min(cap);
        let half = full / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        Some((half + Duration::from_millis(jitter)).max(at_least.unwrap_or_default()))
    }

    pub fn reset(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    pub fn failures(&self, key: &str) -> u32 {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied().unwrap_or_default()
    }
}

struct Strike {
    key_fingerprint: u64,
    until: Instant,
    strikes: u32,
    last_error: String,
}

/// After the cloud refuses an access key (401/403), further calls with the same key (and the
/// same secret) are held back for a while, whichever binding makes them: many bindings sharing
/// one bad key must not add up to the five failures that lock it. New keys (rotation) pass at
/// once. The secret itself is never stored, only a keyed hash to notice it changed.
pub struct AuthGate {
    hasher: RandomState,
    strikes: Mutex<HashMap<String, Strike>>,
    base: Duration,
    cap: Duration,
}

impl Default for AuthGate {
    fn default() -> Self {
        Self::new(Duration::from_secs(60), Duration::from_secs(900))
    }
}

impl AuthGate {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { hasher: RandomState::new(), strikes: Mutex::default(), base, cap }
    }

    fn fingerprint(&self, creds: &Credentials) -> u64 {
        self.hasher.hash_one((creds.secret_key(), creds.security_token()))
    }

    /// `Err(message)` when calls with these credentials are being held back.
    pub fn check(&self, creds: &Credentials) -> Result<(), String> {
        let strikes = self.strikes.lock().unwrap_or_else(|p| p.into_inner());
        match strikes.get(creds.access_key()) {
            Some(s) if s.key_fingerprint == self.fingerprint(creds) && Instant::now() < s.until => {
                let wait = s.until - Instant::now();
                Err(format!(
                    "not sent: the cloud refused access key {} ({}); it is retried in {}s, or at once when the credentials change (Huawei locks a key after 5 failed signatures in a row)",
                    creds.access_key(),
                    s.last_error,
                    wait.as_secs().max(1)
                ))
            }
            _ => Ok(()),
        }
    }

    pub fn refused(&self, creds: &Credentials, error: &str) {
        let fingerprint = self.fingerprint(creds);
        let mut strikes = self.strikes.lock().unwrap_or_else(|p| p.into_inner());
        let n = match strikes.get(creds.access_key()) {
            Some(s) if s.key_fingerprint == fingerprint => s.strikes + 1,
            _ => 1,
        };
        let hold = self.base.saturating_mul(2u32.saturating_pow((n - 1).min(20))).min(self.cap);
        strikes.insert(
            creds.access_key().to_string(),
            Strike {
                key_fingerprint: fingerprint,
                until: Instant::now() + hold,
                strikes: n,
                last_error: error.to_string(),
            },
        );
    }

    pub fn accepted(&self, creds: &Credentials) {
        self.strikes.lock().unwrap_or_else(|p| p.into_inner()).remove(creds.access_key());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_jitters_and_resets() {
        let b = Backoffs::default();
        let mut last_cap = Duration::ZERO;
        for n in 0..12 {
            let d = b.next("ns/a", Reason::CloudUnavailable, None).unwrap();
            let full = Duration::from_secs(5).saturating_mul(1 << n).min(Duration::from_secs(300));
            assert!(d >= full / 2 && d <= full, "{n}: {d:?} vs {full:?}");
            last_cap = full;
        }
        assert_eq!(last_cap, Duration::from_secs(300));
        assert_eq!(b.failures("ns/a"), 12);
        // Other objects have their own count.
        assert!(b.next("ns/b", Reason::CloudUnavailable, None).unwrap() <= Duration::from_secs(5));
        b.reset("ns/a");
        assert!(b.next("ns/a", Reason::CloudUnavailable, None).unwrap() <= Duration::from_secs(5));
    }

    #[test]
    fn retry_after_raises_the_delay() {
        let b = Backoffs::default();
        let d = b.next("k", Reason::Throttled, Some(Duration::from_secs(42))).unwrap();
        assert_eq!(d, Duration::from_secs(42));
    }

    #[test]
    fn terminal_reasons_wait_for_a_change() {
        for r in [Reason::BindFailed, Reason::UnbindFailed, Reason::Invalid, Reason::Paused] {
            assert_eq!(Backoffs::default().next("k", r, None), None, "{r}");
        }
        assert!(requeue_bounds(Reason::AuthFailed).unwrap().0 >= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn auth_gate_holds_back_a_refused_key_until_it_changes_or_time_passes() {
        let gate = AuthGate::new(Duration::from_secs(60), Duration::from_secs(600));
        let bad = Credentials::new("AK1", "wrong", None).unwrap();
        assert!(gate.check(&bad).is_ok());
        gate.refused(&bad, "HTTP 401 APIGW.0301");
        let held = gate.check(&bad).unwrap_err();
        assert!(held.contains("AK1") && held.contains("APIGW.0301"), "{held}");
        assert!(!held.contains("wrong"));
        // Rotated secret for the same AK: allowed at once.
        assert!(gate.check(&Credentials::new("AK1", "right", None).unwrap()).is_ok());
        // Another key is unaffected.
        assert!(gate.check(&Credentials::new("AK2", "wrong", None).unwrap()).is_ok());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(gate.check(&bad).is_ok());
        // A second strike holds longer.
        gate.refused(&bad, "again");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(gate.check(&bad).is_err());
        gate.accepted(&bad);
        assert!(gate.check(&bad).is_ok());
    }
}
