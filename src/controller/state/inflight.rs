//! Writes that may still land. An attempt that ended without an answer the operator can trust
//! (a timeout, a lost connection, a 5xx such as the gateway's 504, or the attempt dropped
//! mid-flight) may be applied by the cloud later: Huawei's API gateway gives up on a slow
//! backend (and answers 504) without stopping it, and a client's timeout stops nothing on the
//! server. No client can prevent such a late write; it can know it may come, and not rest a
//! decision on a read or an answer the late write could still overtake.
//!
//! Each such write is kept per subject (the NIC for ECS calls, the port for a VPC pair write)
//! until its horizon: how long after the attempt ended the cloud could still apply it. A new
//! process (a new leader, or a restart) cannot see the writes of the one before it, so for one
//! horizon after it starts every subject counts as having such a write.
//!
//! The default horizon: the API gateway's backend timeout is at most 60 s by default (Huawei
//! APIG's documented maximum for a backend), so a request it accepted is answered, or given up
//! on, within 60 s of its arrival; 30 s more covers a backend that applies a request just as the
//! gateway gives up, and the clocks of the two sides. 90 s, after the attempt ended.

use super::table::Keyed;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::ecs::Operation;
use crate::ecs::client::{AttemptReport, CallObserver};

use crate::controller::state::key::ObjectKey;

/// Subjects kept at most; past it the oldest horizons are dropped first (they are the ones
/// closest to passing). A fleet has one subject per NIC and VIP port.
const MAX_SUBJECTS: usize = 65_536;
/// How long a subject's horizon is remembered after it passed: a listing taken before then may
/// still be used (see [`WritesInFlight::may_land_after`]), so no listing is kept longer.
pub const REMEMBERED: Duration = Duration::from_secs(600);

/// Whether `u`'s last horizon passed so long ago that no kept listing can predate it.
fn forgotten(u: &Unsettled, now: Instant) -> bool {
    u.latest().is_none_or(|at| at.checked_add(REMEMBERED).is_none_or(|until| until <= now))
}

/// Which way a write moves a subject; a decision is overtaken only by a write going the other
/// way (an unbind landing after a bind, a bind after an unbind). A port's pair list is replaced
/// whole, so a late pair write can undo anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Bind,
    Unbind,
    Pairs,
}

impl Direction {
    fn of(op: Operation) -> Option<Self> {
        match op {
            Operation::Bind => Some(Direction::Bind),
            Operation::Unbind => Some(Direction::Unbind),
            Operation::UpdatePort => Some(Direction::Pairs),
            Operation::GetPort | Operation::ListPorts => None,
        }
    }

    fn overtakes(self, decided: Direction) -> bool {
        self == Direction::Pairs || decided == Direction::Pairs || self != decided
    }
}

#[derive(Debug, Clone, Copy)]
struct Unsettled {
    /// The latest horizon of each direction seen on the subject.
    bind: Option<Instant>,
    unbind: Option<Instant>,
    pairs: Option<Instant>,
}

impl Unsettled {
    fn latest(&self) -> Option<Instant> {
        [self.bind, self.unbind, self.pairs].into_iter().flatten().max()
    }

    fn slot(&mut self, d: Direction) -> &mut Option<Instant> {
        match d {
            Direction::Bind => &mut self.bind,
            Direction::Unbind => &mut self.unbind,
            Direction::Pairs => &mut self.pairs,
        }
    }

    fn against(&self, decided: Direction) -> Option<Instant> {
        [(Direction::Bind, self.bind), (Direction::Unbind, self.unbind), (Direction::Pairs, self.pairs)]
            .into_iter()
            .filter(|(d, _)| d.overtakes(decided))
            .filter_map(|(_, at)| at)
            .max()
    }
}

/// The writes of this process (and, for one horizon after it started, of the one before it)
/// that the cloud may still apply.
pub struct WritesInFlight {
    horizon: Duration,
    /// Until then, every subject may still get a write of the process before this one.
    takeover_until: Option<Instant>,
    subjects: Mutex<HashMap<String, Unsettled>>,
    /// Bindings whose bind completed inside a horizon: checked again once it has passed.
    rechecks: Keyed<Instant>,
}

impl Default for WritesInFlight {
    /// Tracks nothing: for tests and tools that make no cloud writes of their own.
    fn default() -> Self {
        Self { horizon: Duration::ZERO, takeover_until: None, subjects: Mutex::default(), rechecks: Keyed::default() }
    }
}

impl WritesInFlight {
    /// A ledger whose process took over from an earlier one (or may have) just now.
    pub fn taking_over(horizon: Duration) -> Self {
        Self { horizon, takeover_until: Some(crate::instant_after(horizon)), ..Self::default() }
    }

    /// A ledger with nothing before it (tests).
    pub fn new(horizon: Duration) -> Self {
        Self { horizon, ..Self::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Unsettled>> {
        self.subjects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A write on `subject` ended without a trusted answer just now.
    pub fn note(&self, op: Operation, subject: &str) {
        let Some(direction) = Direction::of(op) else { return };
        if self.horizon.is_zero() || subject.is_empty() {
            return;
        }
        let until = crate::instant_after(self.horizon);
        let now = Instant::now();
        let mut subjects = self.lock();
        if subjects.len() >= MAX_SUBJECTS && !subjects.contains_key(subject) {
            subjects.retain(|_, u| !forgotten(u, now));
            if subjects.len() >= MAX_SUBJECTS
                && let Some(oldest) = subjects.iter().min_by_key(|(_, u)| u.latest()).map(|(k, _)| k.clone())
            {
                subjects.remove(&oldest);
            }
        }
        let entry = subjects.entry(subject.to_string()).or_insert(Unsettled { bind: None, unbind: None, pairs: None });
        let slot = entry.slot(direction);
        *slot = Some(slot.map_or(until, |at| at.max(until)));
        tracing::debug!(subject, op = op.as_str(), horizon_s = self.horizon.as_secs(), "a write may still land");
    }

    /// Until when a `decided` write's outcome on any of `subjects` may still be overtaken by a
    /// write going the other way; `None` when nothing can overtake it any more.
    pub fn overtaken_until(&self, subjects: &[&str], decided: Direction) -> Option<Instant> {
        let now = Instant::now();
        let takeover = self.takeover_until.filter(|at| *at > now);
        let mut map = self.lock();
        let mut latest = takeover;
        for subject in subjects {
            let Some(u) = map.get(*subject).copied() else { continue };
            if forgotten(&u, now) {
                map.remove(*subject);
                continue;
            }
            latest = latest.max(u.against(decided).filter(|at| *at > now));
        }
        latest
    }

    /// Whether a write going against `decided` on any of `subjects` may have landed after
    /// `since`, or still may: a listing or read taken at `since` then proves nothing about them,
    /// however late it is used. (Checking only "may a write still land now" would trust a
    /// listing taken inside a horizon that has passed since.) `since` must be within
    /// [`REMEMBERED`] of now.
    pub fn may_land_after(&self, subjects: &[&str], decided: Direction, since: Instant) -> bool {
        if self.takeover_until.is_some_and(|at| at > since) {
            return true;
        }
        let map = self.lock();
        subjects.iter().any(|s| map.get(*s).and_then(|u| u.against(decided)).is_some_and(|at| at > since))
    }

    /// `key`'s bind completed while a write could still overtake it until `at`: it is checked
    /// again then (a read for VPC, a re-assert for ECS, which has no read).
    pub fn recheck_at(&self, key: &ObjectKey, at: Instant) {
        let mut rechecks = self.rechecks.lock();
        if rechecks.len() >= MAX_SUBJECTS && !rechecks.contains_key(key) {
            // Bounded: the oldest is the one most overdue, and is checked by the drift check.
            if let Some(oldest) = rechecks.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone()) {
                rechecks.remove(&oldest);
            }
        }
        let entry = rechecks.entry(key.clone()).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// Whether `key`'s second look is due now.
    pub fn recheck_due(&self, key: &ObjectKey) -> bool {
        let rechecks = self.rechecks.lock();
        rechecks.get(key).is_some_and(|at| *at <= Instant::now())
    }

    /// How long until `key`'s second look, when one is pending and not yet due.
    pub fn recheck_in(&self, key: &ObjectKey) -> Option<Duration> {
        let rechecks = self.rechecks.lock();
        rechecks.get(key).map(|at| at.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
    }

    /// `key` was checked again (or is gone): no second look is pending any more.
    pub fn rechecked(&self, key: &ObjectKey) {
        self.rechecks.remove(key);
    }

    /// Subjects with a write that may still land.
    #[cfg(test)]
    fn pending(&self) -> usize {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, u| u.latest().is_some_and(|at| at > now));
        map.len()
    }
}

/// Fed by the cloud client: every write attempt that ends unsettled.
impl CallObserver for WritesInFlight {
    fn attempt(&self, _: &AttemptReport<'_>) {}

    fn write_unsettled(&self, op: Operation, subject: &str) {
        self.note(op, subject);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_overtakes_only_the_other_way_and_only_until_its_horizon() {
        let w = WritesInFlight::new(Duration::from_secs(90));
        assert_eq!(w.overtaken_until(&["nic"], Direction::Bind), None);
        w.note(Operation::Unbind, "nic");
        let until = w.overtaken_until(&["nic"], Direction::Bind).expect("an unbind may still land on a bind");
        assert!(until > Instant::now() + Duration::from_secs(89));
        assert_eq!(w.overtaken_until(&["nic"], Direction::Unbind), None, "a late unbind cannot undo an unbind");
        assert_eq!(w.overtaken_until(&["other"], Direction::Bind), None);
        tokio::time::advance(Duration::from_secs(91)).await;
        assert_eq!(w.overtaken_until(&["nic"], Direction::Bind), None);
        assert_eq!(w.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pair_write_overtakes_everything_and_reads_never_count() {
        let w = WritesInFlight::new(Duration::from_secs(10));
        w.note(Operation::GetPort, "port");
        w.note(Operation::ListPorts, "port");
        assert_eq!(w.pending(), 0);
        w.note(Operation::UpdatePort, "port");
        assert!(w.overtaken_until(&["nic", "port"], Direction::Pairs).is_some());
        assert!(w.overtaken_until(&["port"], Direction::Bind).is_some());
        assert!(w.overtaken_until(&["port"], Direction::Unbind).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_process_treats_every_subject_as_written_for_one_horizon() {
        let w = WritesInFlight::taking_over(Duration::from_secs(5));
        assert!(w.overtaken_until(&["anything"], Direction::Unbind).is_some());
        assert!(w.overtaken_until(&[], Direction::Bind).is_some());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(w.overtaken_until(&["anything"], Direction::Unbind), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_listing_taken_inside_a_horizon_proves_nothing_even_after_it_passed() {
        let w = WritesInFlight::new(Duration::from_secs(10));
        let before = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        // A write that was in flight when the listing was taken, noted when its attempt ended.
        let taken = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        w.note(Operation::UpdatePort, "port");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(w.overtaken_until(&["port"], Direction::Bind), None, "nothing can land now");
        assert!(w.may_land_after(&["port"], Direction::Bind, taken), "but it may have landed after the listing");
        assert!(w.may_land_after(&["port"], Direction::Bind, before));
        assert!(!w.may_land_after(&["other"], Direction::Bind, taken));
        assert!(!w.may_land_after(&["port"], Direction::Bind, Instant::now()), "a listing taken now is good");
        // Remembered for as long as a listing is kept, then forgotten.
        tokio::time::advance(REMEMBERED).await;
        assert_eq!(w.overtaken_until(&["port"], Direction::Bind), None);
        assert_eq!(w.lock().len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_listing_taken_during_a_takeover_proves_nothing() {
        let w = WritesInFlight::taking_over(Duration::from_secs(5));
        let taken = Instant::now();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(w.may_land_after(&["anything"], Direction::Bind, taken));
        assert!(!w.may_land_after(&["anything"], Direction::Bind, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_ledger_is_bounded() {
        let w = WritesInFlight::new(Duration::from_secs(10));
        for i in 0..MAX_SUBJECTS + 10 {
            w.note(Operation::Bind, &format!("nic-{i}"));
        }
        assert!(w.pending() <= MAX_SUBJECTS);
        assert_eq!(WritesInFlight::default().overtaken_until(&["x"], Direction::Bind), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_look_is_due_at_the_horizon_and_only_once() {
        let w = WritesInFlight::new(Duration::from_secs(10));
        let k = ObjectKey::from("k");
        assert!(!w.recheck_due(&k) && w.recheck_in(&k).is_none());
        w.recheck_at(&k, Instant::now() + Duration::from_secs(10));
        w.recheck_at(&k, Instant::now() + Duration::from_secs(5));
        assert!(!w.recheck_due(&k));
        assert_eq!(w.recheck_in(&k), Some(Duration::from_secs(10)), "the later horizon wins");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(w.recheck_due(&k));
        assert_eq!(w.recheck_in(&k), None, "due: nothing left to wait for");
        w.rechecked(&k);
        assert!(!w.recheck_due(&k));
    }
}
