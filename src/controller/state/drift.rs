//! The drift check: how often a bound binding's bind is re-asserted, so a VIP removed behind
//! the operator's back comes back, and the sweeper that asks for the due ones.

use super::table::Keyed;
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use rand::RngExt;
use tokio::time::Instant;

use crate::api::v1alpha1::VipBinding;

use crate::controller::state::key::ObjectKey;

/// The drift check: how often a bound binding's bind is re-asserted (so a VIP removed behind
/// the operator's back comes back). Jittered by ±10% so a fleet spreads out; after a restart,
/// the first check of each binding is at a random point within one period (not all at once).
///
/// Due bindings are found by one sweeper ([`Resync::take_due`]) rather than by a scheduled
/// requeue per binding: the controller's scheduler costs about 1.5 KB per pending entry, this
/// map about 100 bytes.
pub struct Resync {
    period: Duration,
    entries: Keyed<DriftEntry>,
}

#[derive(Debug, Clone)]
struct DriftEntry {
    next: Instant,
    /// When the sweeper last took it as due, so a slow or failing check is not taken again on
    /// every sweep.
    triggered: Option<Instant>,
    /// Whether the sweeper, having taken it, handed it to a reconcile (see [`Resync::ask`]).
    asked: bool,
    /// What to reconcile when it is due.
    target: ObjectRef<VipBinding>,
}

impl Resync {
    pub fn new(period: Duration) -> Self {
        Self { period, entries: Keyed::default() }
    }

    pub fn disabled() -> Self {
        Self::new(Duration::ZERO)
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<ObjectKey, DriftEntry>> {
        self.entries.lock()
    }

    fn jittered(&self) -> Duration {
        let ms = self.period.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms * 9 / 10..=ms * 11 / 10))
    }

    /// Tracks a bound binding (a no-op when already tracked); its first check comes at a random
    /// point within one period.
    pub fn track(&self, key: &ObjectKey, target: ObjectRef<VipBinding>) {
        if self.period.is_zero() {
            return;
        }
        let first = rand::rng().random_range(0..=self.period.as_millis() as u64);
        self.lock().entry(key.clone()).or_insert_with(|| DriftEntry {
            next: crate::instant_after(Duration::from_millis(first)),
            triggered: None,
            asked: false,
            target,
        });
    }

    /// Whether the sweeper has handed this binding's due drift check to a reconcile. Only then
    /// does a reconcile re-assert: one that an unrelated event starts (a status or label write)
    /// while the check is merely due, or while the sweeper is still comparing it with a listing,
    /// leaves it to the sweeper, which checks VPC bindings by listing instead of one by one.
    pub fn is_asked(&self, key: &ObjectKey) -> bool {
        !self.period.is_zero() && self.lock().get(key).is_some_and(|e| e.next <= Instant::now() && e.asked)
    }

    /// The sweeper hands `targets` (taken by [`Resync::take_due`]) to reconciles.
    pub fn ask(&self, targets: &[ObjectRef<VipBinding>]) {
        if targets.is_empty() {
            return;
        }
        let targets: std::collections::HashSet<_> = targets.iter().collect();
        for entry in self.lock().values_mut() {
            if entry.triggered.is_some() && targets.contains(&entry.target) {
                entry.asked = true;
            }
        }
    }

    /// A bind just succeeded: the next re-assert is one (jittered) period away.
    pub fn asserted(&self, key: &ObjectKey, target: ObjectRef<VipBinding>) {
        if self.period.is_zero() {
            return;
        }
        let next = crate::instant_after(self.jittered());
        self.lock().insert(key.clone(), DriftEntry { next, triggered: None, asked: false, target });
    }

    /// The bindings whose drift check is due and that were not asked for in the last
    /// `retrigger_after`; they are marked as asked.
    pub fn take_due(&self, retrigger_after: Duration) -> Vec<ObjectRef<VipBinding>> {
        let now = Instant::now();
        let mut due = vec![];
        for entry in self.lock().values_mut() {
            if entry.next <= now && entry.triggered.is_none_or(|t| now.duration_since(t) >= retrigger_after) {
                entry.triggered = Some(now);
                entry.asked = false;
                due.push(entry.target.clone());
            }
        }
        due
    }

    /// `key`'s bind is to be re-asserted at the next sweep (another binding may have bound over
    /// it); a no-op when drift checks are off.
    pub fn due_now(&self, key: &ObjectKey, target: ObjectRef<VipBinding>) {
        if self.period.is_zero() {
            return;
        }
        let next = Instant::now();
        self.lock().insert(key.clone(), DriftEntry { next, triggered: None, asked: false, target });
    }

    pub fn forget(&self, key: &ObjectKey) {
        self.entries.remove(key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Hands every bound binding whose drift check is due to `check` (which reconciles them, or
/// compares them with the cloud first), every sweep (with none due, too), until `stop`.
pub async fn sweep<F: Future<Output = ()>>(
    resync: &Resync,
    check: impl Fn(Vec<ObjectRef<VipBinding>>) -> F,
    stop: tokio_util::sync::CancellationToken,
) {
    let every = (resync.period() / 20).clamp(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        // Also with nothing due: a sweep has NIC-level work too (check-offs left for others).
        let due = resync.take_due(Duration::from_secs(30).max(every * 4));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = check(due) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drift_checks_are_spread_then_periodic() {
        let r = Resync::new(Duration::from_secs(600));
        let web = || ObjectRef::<VipBinding>::new("web").within("ns");
        assert!(!r.is_asked(&"k".into()), "untracked bindings are never due");
        r.track(&"k".into(), web());
        // The first check is somewhere in the first period.
        tokio::time::advance(Duration::from_secs(601)).await;
        assert!(!r.is_asked(&"k".into()), "due, but a reconcile re-asserts only when the sweeper asks");
        assert_eq!(r.take_due(Duration::from_secs(30)), vec![web()]);
        assert!(!r.is_asked(&"k".into()), "taken, but still being compared with a listing");
        r.ask(&[web()]);
        assert!(r.is_asked(&"k".into()), "handed to a reconcile");
        assert!(r.take_due(Duration::from_secs(30)).is_empty(), "asked once, not on every sweep");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(r.take_due(Duration::from_secs(30)).len(), 1, "asked again if nothing happened");
        r.asserted(&"k".into(), web());
        assert!(!r.is_asked(&"k".into()));
        tokio::time::advance(Duration::from_secs(539)).await;
        assert!(r.take_due(Duration::from_secs(30)).is_empty(), "not before 90% of the period");
        tokio::time::advance(Duration::from_secs(122)).await;
        assert_eq!(r.take_due(Duration::from_secs(30)).len(), 1, "by 110% of the period");
        r.due_now(&"k".into(), web());
        assert_eq!(r.take_due(Duration::from_secs(30)), vec![web()], "due at the next sweep");
        r.forget(&"k".into());
        assert!(r.is_empty());
        let off = Resync::disabled();
        off.track(&"k".into(), web());
        assert!(off.take_due(Duration::ZERO).is_empty() && off.is_empty());
    }
}
