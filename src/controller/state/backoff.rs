//! How long to wait before looking at a binding again after a failure: per class of failure
//! (its [`Reason`]), with per-object exponential backoff and jitter, reset on success.

use super::table::Keyed;
use std::time::Duration;

use rand::RngExt;
use tokio::time::Instant;

use crate::api::v1alpha1::{Reason, VipBinding};
use crate::ecs::error::MAX_RETRY_AFTER;

use crate::controller::state::key::ObjectKey;

/// Base and cap of the requeue backoff for a failure reason; `None` waits for a change to the
/// object (terminal errors: retrying the same request cannot help).
pub fn requeue_bounds(reason: Reason) -> Option<(Duration, Duration)> {
    let s = Duration::from_secs;
    match reason {
        Reason::CloudUnavailable | Reason::Indeterminate => Some((s(5), s(300))),
        // Leadership is confirmed (or lost, and the process exits) within a lease duration.
        Reason::LeaderUnconfirmed => Some((s(2), s(15))),
        Reason::Throttled => Some((s(10), s(300))),
        // Huawei locks a key after 5 bad signatures in a row: go slowly.
        Reason::AuthFailed => Some((s(60), s(1800))),
        Reason::CredentialsUnavailable => Some((s(30), s(600))),
        // A NIC can appear late (eventual consistency after server creation).
        Reason::NicNotFound => Some((s(60), s(1800))),
        // ECS and VPC disagree about the NIC: either may settle (eventual consistency).
        Reason::GoneUnconfirmed => Some((s(60), s(1800))),
        // The VIP may be created later; nothing was written meanwhile.
        Reason::VipNotFound => Some((s(60), s(1800))),
        Reason::PortContended => Some((s(5), s(300))),
        // Most likely the operator's configuration (fixed by a restart, which retries at once);
        // retried slowly in case the gateway itself was briefly wrong.
        Reason::EndpointNotFound => Some((s(60), s(1800))),
        // Looked at again so that an uninstall (the CRD being deleted, which sends no event
        // for an object already deleting) releases it; one GET of the CRD a minute.
        Reason::DeletionPaused => Some((s(30), s(60))),
        // Wait for the owner to go (its deletion triggers us too; this is a safety net).
        Reason::Conflict => Some((s(60), s(600))),
        _ => None,
    }
}

/// What must happen before a held binding is looked at again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The backoff has this long to run.
    For(Duration),
    /// A terminal failure: only a change to the object (or its Secret) helps.
    UntilChange,
}

#[derive(Debug, Default)]
struct Entry {
    failures: u32,
    /// Set by a recorded failure; `None` inside means until the object changes.
    hold: Option<(Option<Instant>, u64, Reason)>,
}

/// Per-object failure counts and holds.
///
/// A recorded failure writes status, and that write comes back as a watch event that triggers
/// the next reconcile at once. Without a hold, that event would retry the cloud immediately,
/// bypassing the backoff (and, for terminal errors, loop forever). So a failure holds the
/// object until its backoff expires — unless something a user can change to unblock it
/// (generation, deletion, the pause annotation: the `fingerprint`) has changed, or a Secret
/// the binding uses changed ([`Backoffs::release_hold`]).
#[derive(Default)]
pub struct Backoffs {
    entries: Keyed<Entry>,
}

impl Backoffs {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<ObjectKey, Entry>> {
        self.entries.lock()
    }

    /// Records a failure of `key` with `reason` and returns how long to wait: `base * 2^n`
    /// capped, with equal jitter (half fixed, half random) so that a fleet failing together
    /// does not retry together; `at_least` (e.g. a Retry-After) raises it. `None`: wait for a
    /// change. Either way the object is held (see [`Backoffs::holding`]).
    pub fn next(
        &self,
        key: &ObjectKey,
        fingerprint: u64,
        reason: Reason,
        at_least: Option<Duration>,
    ) -> Option<Duration> {
        let mut entries = self.lock();
        let entry = entries.entry(key.clone()).or_default();
        entry.failures = entry.failures.saturating_add(1);
        let delay = requeue_bounds(reason).map(|(base, cap)| {
            let full = base.saturating_mul(2u32.saturating_pow((entry.failures - 1).min(20))).min(cap);
            let half = full / 2;
            let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
            (half + Duration::from_millis(jitter)).max(at_least.unwrap_or_default().min(MAX_RETRY_AFTER))
        });
        entry.hold = Some((delay.map(crate::instant_after), fingerprint, reason));
        delay
    }

    /// Whether `key` is still held; a changed `fingerprint` ends the hold.
    pub fn holding(&self, key: &ObjectKey, fingerprint: u64) -> Option<Hold> {
        let mut entries = self.lock();
        let entry = entries.get_mut(key)?;
        let (until, held_fingerprint, _) = entry.hold?;
        if held_fingerprint != fingerprint {
            entry.hold = None;
            return None;
        }
        match until {
            None => Some(Hold::UntilChange),
            Some(at) => {
                let now = Instant::now();
                if at > now {
                    Some(Hold::For(at - now))
                } else {
                    entry.hold = None;
                    None
                }
            }
        }
    }

    /// Lets the next reconcile through (keeps the failure count for the backoff).
    pub fn release_hold(&self, key: &ObjectKey) {
        if let Some(entry) = self.lock().get_mut(key) {
            entry.hold = None;
        }
    }

    /// Lets the next reconcile through only if `key` is held for one of `reasons` (a policy
    /// change must not cut short, say, the backoff of a refused access key).
    pub fn release_hold_for(&self, key: &ObjectKey, reasons: &[Reason]) {
        if let Some(entry) = self.lock().get_mut(key)
            && entry.hold.is_some_and(|(_, _, reason)| reasons.contains(&reason))
        {
            entry.hold = None;
        }
    }

    /// Counts a failure that has no class of its own (a Kubernetes API error) and returns how
    /// many came before it; no hold.
    pub fn count(&self, key: &ObjectKey) -> u32 {
        let mut entries = self.lock();
        let entry = entries.entry(key.clone()).or_default();
        entry.failures = entry.failures.saturating_add(1);
        entry.failures - 1
    }

    pub fn reset(&self, key: &ObjectKey) {
        self.entries.remove(key);
    }

    pub fn failures(&self, key: &ObjectKey) -> u32 {
        self.lock().get(key).map(|e| e.failures).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a user can change to unblock a held binding: the spec (generation), deleting it, and
/// the pause annotation. Our own writes (status, our finalizer) do not change it.
pub fn trigger_fingerprint(b: &VipBinding) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.metadata.generation.hash(&mut h);
    b.metadata.deletion_timestamp.is_some().hash(&mut h);
    b.is_paused().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_jitters_and_resets() {
        let b = Backoffs::default();
        let mut last_cap = Duration::ZERO;
        for n in 0..12 {
            let d = b.next(&"ns/a".into(), 1, Reason::CloudUnavailable, None).unwrap();
            let full = Duration::from_secs(5).saturating_mul(1 << n).min(Duration::from_secs(300));
            assert!(d >= full / 2 && d <= full, "{n}: {d:?} vs {full:?}");
            last_cap = full;
        }
        assert_eq!(last_cap, Duration::from_secs(300));
        assert_eq!(b.failures(&"ns/a".into()), 12);
        // Other objects have their own count.
        assert!(b.next(&"ns/b".into(), 1, Reason::CloudUnavailable, None).unwrap() <= Duration::from_secs(5));
        b.reset(&"ns/a".into());
        assert!(b.next(&"ns/a".into(), 1, Reason::CloudUnavailable, None).unwrap() <= Duration::from_secs(5));
    }

    #[test]
    fn a_huge_retry_after_neither_panics_nor_holds_past_the_maximum() {
        let b = Backoffs::default();
        let d = b.next(&"k".into(), 1, Reason::Throttled, Some(Duration::MAX)).unwrap();
        assert_eq!(d, MAX_RETRY_AFTER);
        assert!(matches!(b.holding(&"k".into(), 1), Some(Hold::For(w)) if w <= MAX_RETRY_AFTER));
    }

    #[test]
    fn retry_after_raises_the_delay() {
        let b = Backoffs::default();
        let d = b.next(&"k".into(), 1, Reason::Throttled, Some(Duration::from_secs(42))).unwrap();
        assert_eq!(d, Duration::from_secs(42));
    }

    #[test]
    fn terminal_reasons_wait_for_a_change() {
        for r in [Reason::BindFailed, Reason::UnbindFailed, Reason::Invalid, Reason::Paused] {
            assert_eq!(Backoffs::default().next(&"k".into(), 1, r, None), None, "{r}");
        }
        assert!(requeue_bounds(Reason::AuthFailed).unwrap().0 >= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_holds_the_object_until_its_backoff_ends_or_it_changes() {
        let b = Backoffs::default();
        let d = b.next(&"k".into(), 7, Reason::CloudUnavailable, None).unwrap();
        // Our own status write triggers a reconcile at once: it is held.
        assert!(matches!(b.holding(&"k".into(), 7), Some(Hold::For(w)) if w <= d));
        tokio::time::advance(d).await;
        assert_eq!(b.holding(&"k".into(), 7), None, "the backoff ran out");
        // A terminal failure holds until the object changes.
        assert_eq!(b.next(&"k".into(), 7, Reason::BindFailed, None), None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(b.holding(&"k".into(), 7), Some(Hold::UntilChange));
        assert_eq!(b.holding(&"k".into(), 8), None, "a spec change ends the hold");
        // A Secret change releases the hold without forgetting the failure count.
        b.next(&"k".into(), 8, Reason::CloudUnavailable, None);
        b.release_hold(&"k".into());
        assert_eq!(b.holding(&"k".into(), 8), None);
        assert_eq!(b.failures(&"k".into()), 3);
    }

    #[test]
    fn a_policy_change_releases_only_a_policy_refusal() {
        let b = Backoffs::default();
        let k = ObjectKey::from("k");
        b.next(&k, 8, Reason::AuthFailed, None);
        b.release_hold_for(&k, &[Reason::DefaultCredentialsNotAllowed]);
        assert!(b.holding(&k, 8).is_some(), "a refused key keeps its backoff");
        b.next(&k, 8, Reason::DefaultCredentialsNotAllowed, None);
        assert_eq!(b.holding(&k, 8), Some(Hold::UntilChange));
        b.release_hold_for(&k, &[Reason::DefaultCredentialsNotAllowed]);
        assert_eq!(b.holding(&k, 8), None);
    }
}
