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

use kube::runtime::reflector::ObjectRef;

use crate::api::v1alpha1::{Reason, VipBinding};
use crate::ecs::error::MAX_RETRY_AFTER;
use crate::ecs::{Credentials, EcsError, ErrorClass};

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
    hold: Option<(Option<Instant>, u64)>,
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
    entries: Mutex<HashMap<String, Entry>>,
}

impl Backoffs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a failure of `key` with `reason` and returns how long to wait: `base * 2^n`
    /// capped, with equal jitter (half fixed, half random) so that a fleet failing together
    /// does not retry together; `at_least` (e.g. a Retry-After) raises it. `None`: wait for a
    /// change. Either way the object is held (see [`Backoffs::holding`]).
    pub fn next(&self, key: &str, fingerprint: u64, reason: Reason, at_least: Option<Duration>) -> Option<Duration> {
        let mut entries = self.lock();
        let entry = entries.entry(key.to_string()).or_default();
        entry.failures = entry.failures.saturating_add(1);
        let delay = requeue_bounds(reason).map(|(base, cap)| {
            let full = base.saturating_mul(2u32.saturating_pow((entry.failures - 1).min(20))).min(cap);
            let half = full / 2;
            let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
            (half + Duration::from_millis(jitter)).max(at_least.unwrap_or_default().min(MAX_RETRY_AFTER))
        });
        entry.hold = Some((delay.map(crate::instant_after), fingerprint));
        delay
    }

    /// Whether `key` is still held; a changed `fingerprint` ends the hold.
    pub fn holding(&self, key: &str, fingerprint: u64) -> Option<Hold> {
        let mut entries = self.lock();
        let entry = entries.get_mut(key)?;
        let (until, held_fingerprint) = entry.hold?;
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
    pub fn release_hold(&self, key: &str) {
        if let Some(entry) = self.lock().get_mut(key) {
            entry.hold = None;
        }
    }

    /// Counts a failure that has no class of its own (a Kubernetes API error) and returns how
    /// many came before it; no hold.
    pub fn count(&self, key: &str) -> u32 {
        let mut entries = self.lock();
        let entry = entries.entry(key.to_string()).or_default();
        entry.failures = entry.failures.saturating_add(1);
        entry.failures - 1
    }

    pub fn reset(&self, key: &str) {
        self.lock().remove(key);
    }

    pub fn failures(&self, key: &str) -> u32 {
        self.lock().get(key).map(|e| e.failures).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The drift check: how often a bound binding's bind is re-asserted (so a VIP removed behind
/// the operator's back comes back). Jittered by ±10% so a fleet spreads out; after a restart,
/// the first check of each binding is at a random point within one period (not all at once).
///
/// Due bindings are found by one sweeper ([`Resync::take_due`]) rather than by a scheduled
/// requeue per binding: the controller's scheduler costs about 1.5 KB per pending entry, this
/// map about 100 bytes.
pub struct Resync {
    period: Duration,
    entries: Mutex<HashMap<String, DriftEntry>>,
}

#[derive(Debug, Clone)]
struct DriftEntry {
    next: Instant,
    /// When the sweeper last asked for a reconcile, so a slow or failing one is not asked again
    /// on every sweep.
    triggered: Option<Instant>,
    /// What to reconcile when it is due.
    target: ObjectRef<VipBinding>,
}

impl Resync {
    pub fn new(period: Duration) -> Self {
        Self { period, entries: Mutex::default() }
    }

    pub fn disabled() -> Self {
        Self::new(Duration::ZERO)
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, DriftEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn jittered(&self) -> Duration {
        let ms = self.period.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms * 9 / 10..=ms * 11 / 10))
    }

    /// Tracks a bound binding (a no-op when already tracked); its first check comes at a random
    /// point within one period.
    pub fn track(&self, key: &str, target: ObjectRef<VipBinding>) {
        if self.period.is_zero() {
            return;
        }
        let first = rand::rng().random_range(0..=self.period.as_millis() as u64);
        self.lock().entry(key.to_string()).or_insert_with(|| DriftEntry {
            next: crate::instant_after(Duration::from_millis(first)),
            triggered: None,
            target,
        });
    }

    pub fn is_due(&self, key: &str) -> bool {
        !self.period.is_zero() && self.lock().get(key).is_some_and(|e| e.next <= Instant::now())
    }

    /// A bind just succeeded: the next re-assert is one (jittered) period away.
    pub fn asserted(&self, key: &str, target: ObjectRef<VipBinding>) {
        if self.period.is_zero() {
            return;
        }
        let next = crate::instant_after(self.jittered());
        self.lock().insert(key.to_string(), DriftEntry { next, triggered: None, target });
    }

    /// The bindings whose drift check is due and that were not asked for in the last
    /// `retrigger_after`; they are marked as asked.
    pub fn take_due(&self, retrigger_after: Duration) -> Vec<ObjectRef<VipBinding>> {
        let now = Instant::now();
        let mut due = vec![];
        for entry in self.lock().values_mut() {
            if entry.next <= now && entry.triggered.is_none_or(|t| now.duration_since(t) >= retrigger_after) {
                entry.triggered = Some(now);
                due.push(entry.target.clone());
            }
        }
        due
    }

    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Strike {
    key_fingerprint: u64,
    until: Instant,
    strikes: u32,
    last_error: String,
}

/// What the gate keeps per (access key, project); a key-wide entry has an empty project.
#[derive(Default)]
struct GateEntry {
    /// Fingerprint of the credentials the cloud accepted here.
    trusted: Option<u64>,
    strike: Option<Strike>,
    /// A first call with these unproven credentials is in flight (since when).
    probing: Option<(u64, Instant)>,
}

impl GateEntry {
    /// Nothing worth remembering beyond a trusted fingerprint (which a new probe re-learns).
    fn idle(&self) -> bool {
        self.probing.is_none() && self.strike.as_ref().is_none_or(|s| s.until <= Instant::now())
    }
}

/// What the gate says about a cloud call.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead; settle the ticket with the answer.
    Go(Ticket),
    /// The first call with these credentials is still in flight: come back shortly. Nothing
    /// waits on a lock meanwhile, so reconciles for other keys keep every worker.
    Wait,
    /// Held back after the cloud refused these credentials (the message says until when).
    HeldBack(String),
}

/// Leave to make one call; hand it back to [`AuthGate::settle`] with the answer.
#[derive(Debug)]
pub struct Ticket {
    access_key: String,
    project: String,
    fingerprint: u64,
    probe: bool,
}

/// After the cloud refuses credentials, further calls with them are held back for a while,
/// whichever binding makes them: many bindings sharing one bad key must not add up to the five
/// failures that lock it. A bad signature (401) holds the access key back for every project; a
/// denied permission (403) only for the project it was denied in. New keys (rotation) pass at
/// once. Unproven credentials are tried by one call at a time (the probe); other callers are
/// told to wait and come back, and a probe that ends without an answer from the service (a 5xx,
/// a lost response) lets the next call probe again. The secret itself is never stored, only a
/// keyed hash to notice it changed. Entries with nothing to remember are dropped once there
/// are more than [`AuthGate::MAX_ENTRIES`] (keys from the metadata service rotate hourly).
pub struct AuthGate {
    hasher: RandomState,
    entries: Mutex<HashMap<(String, String), GateEntry>>,
    base: Duration,
    cap: Duration,
}

impl Default for AuthGate {
    fn default() -> Self {
        Self::new(Duration::from_secs(60), Duration::from_secs(900))
    }
}

/// A probe older than this is taken as lost (its reconcile was cancelled), not as in flight.
const PROBE_STALE: Duration = Duration::from_secs(120);

impl AuthGate {
    pub const MAX_ENTRIES: usize = 1024;

    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { hasher: RandomState::new(), entries: Mutex::default(), base, cap }
    }

    fn fingerprint(&self, creds: &Credentials) -> u64 {
        self.hasher.hash_one((creds.access_key(), creds.secret_key(), creds.security_token()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), GateEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a call with `creds` for `project` go now? Never waits.
    pub fn admit(&self, creds: &Credentials, project: &str) -> Admission {
        let fingerprint = self.fingerprint(creds);
        let now = Instant::now();
        let mut entries = self.lock();
        for scope in ["", project] {
            if let Some(s) =
                entries.get(&(creds.access_key().to_string(), scope.to_string())).and_then(|e| e.strike.as_ref())
                && s.key_fingerprint == fingerprint
                && now < s.until
            {
                return Admission::HeldBack(format!(
                    "not sent: the cloud refused access key {}{} ({}); it is retried in {}s, or at once when the credentials change (Huawei locks a key after 5 failed signatures in a row)",
                    creds.key_id(),
                    if scope.is_empty() { String::new() } else { format!(" for project {scope}") },
                    s.last_error,
                    (s.until - now).as_secs().max(1)
                ));
            }
        }
        if entries.len() >= Self::MAX_ENTRIES {
            entries.retain(|_, e| !e.idle());
        }
        let entry = entries.entry((creds.access_key().to_string(), project.to_string())).or_default();
        let ticket = |probe| Ticket {
            access_key: creds.access_key().to_string(),
            project: project.to_string(),
            fingerprint,
            probe,
        };
        if entry.trusted == Some(fingerprint) {
            return Admission::Go(ticket(false));
        }
        match entry.probing {
            Some((f, since)) if f == fingerprint && now.duration_since(since) < PROBE_STALE => Admission::Wait,
            _ => {
                entry.probing = Some((fingerprint, now));
                Admission::Go(ticket(true))
            }
        }
    }

    /// The call `ticket` allowed will not be made: a probe it held is over.
    pub fn abandon(&self, ticket: Ticket) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(&(ticket.access_key, ticket.project))
            && ticket.probe
            && entry.probing.is_some_and(|(f, _)| f == ticket.fingerprint)
        {
            entry.probing = None;
        }
    }

    /// Records what the cloud answered to the call `ticket` allowed.
    pub fn settle(&self, ticket: Ticket, answer: Result<(), &EcsError>) {
        let mut entries = self.lock();
        let key = (ticket.access_key.clone(), ticket.project.clone());
        let entry = entries.entry(key).or_default();
        if ticket.probe && entry.probing.is_some_and(|(f, _)| f == ticket.fingerprint) {
            entry.probing = None;
        }
        let refused = match answer {
            // Any answer from the service itself got past authentication.
            Ok(()) => None,
            Err(e) if matches!(e.class(), ErrorClass::Terminal | ErrorClass::Gone) => None,
            Err(e) if e.class() == ErrorClass::Auth => Some(e),
            // No answer that proves anything (5xx, transport, throttling): the key stays
            // unproven and the next call probes again.
            Err(_) => return,
        };
        let Some(e) = refused else {
            entry.trusted = Some(ticket.fingerprint);
            entry.strike = None;
            if let Some(wide) = entries.get_mut(&(ticket.access_key.clone(), String::new())) {
                wide.strike = None;
            }
            return;
        };
        entry.trusted = None;
        // A bad signature is the key's, whatever the project; a denial is the project's.
        let scope = if e.status() == Some(401) { String::new() } else { ticket.project.clone() };
        let entry = entries.entry((ticket.access_key.clone(), scope)).or_default();
        let strikes = match &entry.strike {
            Some(s) if s.key_fingerprint == ticket.fingerprint => s.strikes.saturating_add(1),
            _ => 1,
        };
        let hold = self.base.saturating_mul(2u32.saturating_pow((strikes - 1).min(20))).min(self.cap);
        entry.strike = Some(Strike {
            key_fingerprint: ticket.fingerprint,
            until: crate::instant_after(hold),
            strikes,
            last_error: e.to_string(),
        });
    }

    /// Entries kept (for tests and the benchmark's memory check).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
            let d = b.next("ns/a", 1, Reason::CloudUnavailable, None).unwrap();
            let full = Duration::from_secs(5).saturating_mul(1 << n).min(Duration::from_secs(300));
            assert!(d >= full / 2 && d <= full, "{n}: {d:?} vs {full:?}");
            last_cap = full;
        }
        assert_eq!(last_cap, Duration::from_secs(300));
        assert_eq!(b.failures("ns/a"), 12);
        // Other objects have their own count.
        assert!(b.next("ns/b", 1, Reason::CloudUnavailable, None).unwrap() <= Duration::from_secs(5));
        b.reset("ns/a");
        assert!(b.next("ns/a", 1, Reason::CloudUnavailable, None).unwrap() <= Duration::from_secs(5));
    }

    #[test]
    fn a_huge_retry_after_neither_panics_nor_holds_past_the_maximum() {
        let b = Backoffs::default();
        let d = b.next("k", 1, Reason::Throttled, Some(Duration::MAX)).unwrap();
        assert_eq!(d, MAX_RETRY_AFTER);
        assert!(matches!(b.holding("k", 1), Some(Hold::For(w)) if w <= MAX_RETRY_AFTER));
    }

    #[test]
    fn retry_after_raises_the_delay() {
        let b = Backoffs::default();
        let d = b.next("k", 1, Reason::Throttled, Some(Duration::from_secs(42))).unwrap();
        assert_eq!(d, Duration::from_secs(42));
    }

    #[test]
    fn terminal_reasons_wait_for_a_change() {
        for r in [Reason::BindFailed, Reason::UnbindFailed, Reason::Invalid, Reason::Paused] {
            assert_eq!(Backoffs::default().next("k", 1, r, None), None, "{r}");
        }
        assert!(requeue_bounds(Reason::AuthFailed).unwrap().0 >= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_holds_the_object_until_its_backoff_ends_or_it_changes() {
        let b = Backoffs::default();
        let d = b.next("k", 7, Reason::CloudUnavailable, None).unwrap();
        // Our own status write triggers a reconcile at once: it is held.
        assert!(matches!(b.holding("k", 7), Some(Hold::For(w)) if w <= d));
        tokio::time::advance(d).await;
        assert_eq!(b.holding("k", 7), None, "the backoff ran out");
        // A terminal failure holds until the object changes.
        assert_eq!(b.next("k", 7, Reason::BindFailed, None), None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(b.holding("k", 7), Some(Hold::UntilChange));
        assert_eq!(b.holding("k", 8), None, "a spec change ends the hold");
        // A Secret change releases the hold without forgetting the failure count.
        b.next("k", 8, Reason::CloudUnavailable, None);
        b.release_hold("k");
        assert_eq!(b.holding("k", 8), None);
        assert_eq!(b.failures("k"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn drift_checks_are_spread_then_periodic() {
        let r = Resync::new(Duration::from_secs(600));
        let web = || ObjectRef::<VipBinding>::new("web").within("ns");
        assert!(!r.is_due("k"), "untracked bindings are never due");
        r.track("k", web());
        // The first check is somewhere in the first period.
        tokio::time::advance(Duration::from_secs(601)).await;
        assert!(r.is_due("k"));
        assert_eq!(r.take_due(Duration::from_secs(30)), vec![web()]);
        assert!(r.take_due(Duration::from_secs(30)).is_empty(), "asked once, not on every sweep");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(r.take_due(Duration::from_secs(30)).len(), 1, "asked again if nothing happened");
        r.asserted("k", web());
        assert!(!r.is_due("k"));
        tokio::time::advance(Duration::from_secs(539)).await;
        assert!(!r.is_due("k"), "not before 90% of the period");
        tokio::time::advance(Duration::from_secs(122)).await;
        assert!(r.is_due("k"), "by 110% of the period");
        r.forget("k");
        assert!(r.is_empty());
        let off = Resync::disabled();
        off.track("k", web());
        assert!(!off.is_due("k") && off.is_empty());
    }

    fn api(status: u16, code: &str) -> EcsError {
        EcsError::Api(crate::ecs::ApiError {
            status,
            code: Some(code.into()),
            message: String::new(),
            detail_codes: vec![],
            request_id: None,
            retry_after: None,
        })
    }

    fn go(a: Admission) -> Ticket {
        match a {
            Admission::Go(t) => t,
            other => panic!("expected Go, got {other:?}"),
        }
    }

    #[test]
    fn unproven_keys_are_probed_one_call_at_a_time_and_nobody_waits_on_a_lock() {
        let gate = AuthGate::default();
        let creds = Credentials::new("AK9", "sk", None).unwrap();
        let probe = go(gate.admit(&creds, "p1"));
        // Others are told to come back (no lock held across the call)...
        assert!(matches!(gate.admit(&creds, "p1"), Admission::Wait));
        // ...a probe without an answer from the service (5xx) lets the next call probe...
        gate.settle(probe, Err(&api(503, "APIGW.0201")));
        let probe = go(gate.admit(&creds, "p1"));
        assert!(matches!(gate.admit(&creds, "p1"), Admission::Wait));
        // ...and any answer from the service (here a refused parameter) proves the key.
        gate.settle(probe, Err(&api(400, "Ecs.0039")));
        for _ in 0..3 {
            let t = go(gate.admit(&creds, "p1"));
            gate.settle(t, Ok(()));
        }
        // Another project is proven separately.
        let other = go(gate.admit(&creds, "p2"));
        assert!(matches!(gate.admit(&creds, "p2"), Admission::Wait));
        // A probe whose call is not made after all (the finalizer write failed) is over.
        gate.abandon(other);
        assert!(matches!(gate.admit(&creds, "p2"), Admission::Go(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_signature_holds_the_key_back_everywhere_a_denial_only_in_its_project() {
        let gate = AuthGate::new(Duration::from_secs(60), Duration::from_secs(600));
        let bad = Credentials::new("AK1", "wrong", None).unwrap();
        let t = go(gate.admit(&bad, "p1"));
        gate.settle(t, Err(&api(401, "APIGW.0301")));
        for project in ["p1", "p2"] {
            let Admission::HeldBack(held) = gate.admit(&bad, project) else { panic!("{project}: not held back") };
            assert!(held.contains(&bad.key_id()) && held.contains("APIGW.0301"), "{held}");
            assert!(!held.contains("AK1") && !held.contains("wrong"), "no key material: {held}");
        }
        // Rotated secret for the same AK: allowed at once; another key is unaffected.
        let right = Credentials::new("AK1", "right", None).unwrap();
        assert!(matches!(gate.admit(&right, "p1"), Admission::Go(_)));
        assert!(matches!(gate.admit(&Credentials::new("AK2", "x", None).unwrap(), "p1"), Admission::Go(_)));
        tokio::time::advance(Duration::from_secs(61)).await;
        let t = go(gate.admit(&bad, "p1"));
        // A second strike holds longer.
        gate.settle(t, Err(&api(401, "APIGW.0301")));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(gate.admit(&bad, "p1"), Admission::HeldBack(_)));

        // 403 in one project: the key still serves the others.
        let key = Credentials::new("AK3", "sk", None).unwrap();
        let t = go(gate.admit(&key, "denied"));
        gate.settle(t, Err(&api(403, "Ecs.0110")));
        assert!(matches!(gate.admit(&key, "denied"), Admission::HeldBack(_)));
        let t = go(gate.admit(&key, "allowed"));
        gate.settle(t, Ok(()));
        assert!(matches!(gate.admit(&key, "allowed"), Admission::Go(_)));
    }

    #[test]
    fn the_gate_forgets_idle_keys_beyond_its_bound() {
        let gate = AuthGate::default();
        for i in 0..(AuthGate::MAX_ENTRIES * 3) {
            let creds = Credentials::new(&format!("ROTATED{i:08}"), "sk", None).unwrap();
            let t = go(gate.admit(&creds, "p"));
            gate.settle(t, Ok(()));
        }
        assert!(gate.len() <= AuthGate::MAX_ENTRIES, "{}", gate.len());
    }
}
