//! A process-wide brake on access keys the cloud has just refused, and one probe at a time
//! for credentials not yet proven.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::ecs::{Credentials, EcsError, ErrorClass};

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

    use crate::ecs::error::coded as api;

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
