//! Cloud call budgets: one token bucket per (access key, region, service), and user work ahead
//! of background work on each.
//!
//! Huawei throttles per account and region, and per service: one bucket for everything would let
//! a busy region (or a key that fails and retries) hold back calls that Huawei would accept. The
//! buckets are created on first use and the map is bounded: a bucket that has refilled is the
//! same as a new one, so it can be dropped at any time.
//!
//! Each bucket is a GCRA (the "virtual scheduling" form of a token bucket): its whole state is
//! the theoretical arrival time `tat` of the next call. A user call *reserves* the next slot
//! (advancing `tat`, even into the future) and sleeps until it; a background call only takes a
//! slot that is free *now*. A waiting user call has already pushed `tat` forward, so no
//! background call can take a token ahead of it, and user calls go in arrival order.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::credentials::Credentials;
use super::credentials::key_id;

/// Whose work a cloud call is: a user's change (bind, unbind, delete) or the operator's own
/// background checks (drift re-asserts, periodic reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Priority {
    #[default]
    User,
    /// Takes a token only when no user call is waiting on the same budget.
    Background,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::User => "user",
            Priority::Background => "background",
        }
    }
}

tokio::task_local! {
    // A task-local rather than a parameter: the priority reaches the client without changing
    // the `EcsApi`/`VpcApi` signatures or the code in between.
    static PRIORITY: Priority;
}

/// Runs `f` with every cloud call it makes (retries included) at [`Priority::Background`].
/// Only `f` itself is covered: tasks it spawns start again at [`Priority::User`].
pub async fn in_background<F: Future>(f: F) -> F::Output {
    PRIORITY.scope(Priority::Background, f).await
}

/// The priority of cloud calls made here: [`Priority::User`] unless inside [`in_background`].
pub fn current_priority() -> Priority {
    PRIORITY.try_with(|p| *p).unwrap_or_default()
}

/// The Huawei service a call goes to; each has its own throttling, hence its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Ecs,
    Vpc,
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Ecs => "ecs",
            Service::Vpc => "vpc",
        }
    }
}

/// Sustained rate and burst of one budget, validated (see `client::quota`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Time between two tokens (1 / qps).
    pub period: Duration,
    /// Calls that may go at once from a full bucket (at least 1).
    pub burst: u32,
}

impl Quota {
    /// How far ahead of its `tat` a call may go: the burst beyond the first token.
    fn tolerance(self) -> Duration {
        self.period.saturating_mul(self.burst.saturating_sub(1))
    }
}

/// Which budget a call draws from. `Debug` shows the key's fingerprint, never the key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BudgetKey {
    /// The key itself, not its fingerprint: two keys whose fingerprints collide must not share.
    access_key: Arc<str>,
    region: String,
    service: Service,
}

impl BudgetKey {
    pub fn service(&self) -> Service {
        self.service
    }

    pub fn new(credentials: &Credentials, region: &str, service: Service) -> Self {
        Self { access_key: credentials.access_key_shared(), region: region.into(), service }
    }
}

impl fmt::Debug for BudgetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetKey")
            .field("key", &key_id(&self.access_key))
            .field("region", &self.region)
            .field("service", &self.service)
            .finish()
    }
}

/// The budgets of one client: buckets by key, at most `max_buckets` of them.
pub(crate) struct Budgets {
    quota: Quota,
    max_buckets: usize,
    /// Each bucket's `tat`. One lock for all: every operation on it is O(1) but the sweep,
    /// which runs only when the map is full, and none is held across an await.
    buckets: Mutex<HashMap<BudgetKey, Instant>>,
}

impl Budgets {
    pub(crate) fn new(quota: Quota, max_buckets: usize) -> Self {
        Self { quota, max_buckets: max_buckets.max(1), buckets: Mutex::new(HashMap::new()) }
    }

    /// Buckets held now (tests, and to show the map stays bounded).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Waits until a call at `priority` may go on `key`'s budget, and takes its token.
    ///
    /// A user call reserves its slot at once. If it is dropped while waiting, the slot goes
    /// unused: the budget is then under-used for one period, never exceeded.
    ///
    /// A background call polls: it sleeps until the next token would be free and tries again.
    /// Each wake-up is O(1) and lands on a moment a token frees up, so it is no busy loop; with
    /// several background calls waiting, one gets the token and the others sleep again.
    pub(crate) async fn acquire(&self, key: &BudgetKey, priority: Priority) {
        match priority {
            Priority::User => {
                let start = self.reserve(key, Instant::now());
                if start > Instant::now() {
                    self.log_wait(key, priority, start);
                    tokio::time::sleep_until(start).await;
                }
            }
            Priority::Background => {
                let mut logged = false;
                while let Err(ready_at) = self.try_take(key, Instant::now()) {
                    if !logged {
                        self.log_wait(key, priority, ready_at);
                        logged = true;
                    }
                    tokio::time::sleep_until(ready_at).await;
                }
            }
        }
    }

    fn log_wait(&self, key: &BudgetKey, priority: Priority, until: Instant) {
        tracing::debug!(
            key = %key_id(&key.access_key),
            region = %key.region,
            service = key.service.as_str(),
            priority = priority.as_str(),
            wait_ms = until.saturating_duration_since(Instant::now()).as_millis(),
            "waiting for cloud budget"
        );
    }

    /// Takes the next token, now or in the future: returns when the call may go.
    fn reserve(&self, key: &BudgetKey, now: Instant) -> Instant {
        let mut buckets = self.lock();
        let tat = self.bucket(&mut buckets, key, now);
        let start = earliest(*tat, self.quota.tolerance(), now);
        *tat = advance(*tat, self.quota.period, now);
        start
    }

    /// Takes a token if one is free now; otherwise says when the next one frees up (always
    /// later than `now`). Reserved tokens are not free.
    fn try_take(&self, key: &BudgetKey, now: Instant) -> Result<(), Instant> {
        let mut buckets = self.lock();
        let tat = self.bucket(&mut buckets, key, now);
        let start = earliest(*tat, self.quota.tolerance(), now);
        if start > now {
            return Err(start);
        }
        *tat = advance(*tat, self.quota.period, now);
        Ok(())
    }

    /// `key`'s bucket, created full if it is not there. Makes room first when the map is full.
    fn bucket<'m>(
        &self,
        buckets: &'m mut HashMap<BudgetKey, Instant>,
        key: &BudgetKey,
        now: Instant,
    ) -> &'m mut Instant {
        if !buckets.contains_key(key) && buckets.len() >= self.max_buckets {
            make_room(buckets, self.max_buckets, now);
        }
        buckets.entry(key.clone()).or_insert(now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BudgetKey, Instant>> {
        // The map holds plain instants, consistent after any panic: poisoning carries no meaning.
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// When a call may go on a bucket whose next call is due at `tat`: up to `tolerance` early.
fn earliest(tat: Instant, tolerance: Duration, now: Instant) -> Instant {
    tat.checked_sub(tolerance).map_or(now, |start| start.max(now))
}

/// The bucket's `tat` after one more call.
fn advance(tat: Instant, period: Duration, now: Instant) -> Instant {
    let base = tat.max(now);
    // Saturating: a period too long to add (not reachable with a validated quota) means "never".
    base.checked_add(period).unwrap_or(base)
}

/// Frees at least one place in a full map. Full buckets go first: they are the same as new ones.
/// If every bucket is in use (thousands of keys busy at once: hostile input), the one closest to
/// full goes; that key may then briefly exceed its rate by what it still owed.
fn make_room(buckets: &mut HashMap<BudgetKey, Instant>, max_buckets: usize, now: Instant) {
    buckets.retain(|_, tat| *tat > now);
    if buckets.len() >= max_buckets {
        let oldest = buckets.iter().min_by_key(|(_, tat)| **tat).map(|(key, _)| key.clone());
        if let Some(key) = oldest {
            tracing::debug!(key = ?key, "cloud budget map full: dropped a bucket still in use");
            buckets.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(qps: f64, burst: u32) -> Quota {
        Quota { period: Duration::from_secs_f64(1.0 / qps), burst }
    }

    fn key(ak: &str, region: &str, service: Service) -> BudgetKey {
        BudgetKey::new(&Credentials::new(ak, "sk", None).unwrap(), region, service)
    }

    /// Acquires on `budgets` in a task of its own, then records `name` in `order`.
    fn spawn_acquire(
        budgets: &Arc<Budgets>,
        key: BudgetKey,
        priority: Priority,
        name: &'static str,
        order: &Arc<Mutex<Vec<&'static str>>>,
    ) -> tokio::task::JoinHandle<()> {
        let (budgets, order) = (budgets.clone(), order.clone());
        tokio::spawn(async move {
            budgets.acquire(&key, priority).await;
            order.lock().unwrap().push(name);
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_budget_delays_no_other_key_region_or_service() {
        let budgets = Budgets::new(quota(1.0, 1), 16);
        let a = key("AK1", "cn-north-4", Service::Ecs);
        let start = Instant::now();
        budgets.acquire(&a, Priority::User).await;
        for other in [
            key("AK1", "cn-east-3", Service::Ecs),
            key("AK2", "cn-north-4", Service::Ecs),
            key("AK1", "cn-north-4", Service::Vpc),
        ] {
            budgets.acquire(&other, Priority::User).await;
            assert_eq!(Instant::now(), start, "{other:?} waited for {a:?}");
        }
        budgets.acquire(&a, Priority::User).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn user_calls_go_before_background_calls_queued_earlier() {
        let budgets = Arc::new(Budgets::new(quota(1.0, 1), 16));
        let order = Arc::new(Mutex::new(Vec::new()));
        let k = key("AK1", "cn-north-4", Service::Ecs);
        budgets.acquire(&k, Priority::User).await;
        let mut tasks = Vec::new();
        for name in ["bg1", "bg2", "bg3"] {
            tasks.push(spawn_acquire(&budgets, k.clone(), Priority::Background, name, &order));
        }
        // The background calls are all waiting for the next token when the user calls come.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(order.lock().unwrap().is_empty());
        tasks.push(spawn_acquire(&budgets, k.clone(), Priority::User, "user1", &order));
        tasks.push(spawn_acquire(&budgets, k.clone(), Priority::User, "user2", &order));
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(&order[..2], ["user1", "user2"]);
        let mut background = order[2..].to_vec();
        background.sort_unstable();
        assert_eq!(background, ["bg1", "bg2", "bg3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn background_calls_use_what_is_left_and_respect_the_rate() {
        let budgets = Budgets::new(quota(2.0, 3), 16);
        let k = key("AK1", "cn-north-4", Service::Vpc);
        let start = Instant::now();
        // A full bucket: the burst goes at once, background or not.
        for _ in 0..3 {
            budgets.acquire(&k, Priority::Background).await;
        }
        assert_eq!(Instant::now(), start);
        // Then one every half second.
        for n in 1..=4u32 {
            budgets.acquire(&k, Priority::Background).await;
            assert_eq!(Instant::now() - start, Duration::from_millis(500) * n);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_map_stays_bounded_and_drops_refilled_buckets_first() {
        let budgets = Budgets::new(quota(1.0, 1), 8);
        for n in 0..100 {
            budgets.acquire(&key(&format!("AK{n}"), "cn-north-4", Service::Ecs), Priority::User).await;
            assert!(budgets.len() <= 8);
        }
        // Every bucket is in use (none refilled yet): the newest ones are kept.
        let newest = key("AK99", "cn-north-4", Service::Ecs);
        assert!(budgets.lock().contains_key(&newest));
        // Once they refill, a new key sweeps them all out.
        tokio::time::advance(Duration::from_secs(2)).await;
        budgets.acquire(&key("AK-new", "cn-north-4", Service::Ecs), Priority::User).await;
        assert_eq!(budgets.len(), 1);
        // A dropped bucket that had refilled is the same as a new one: no wait.
        let start = Instant::now();
        budgets.acquire(&newest, Priority::User).await;
        assert_eq!(Instant::now(), start);
    }

    #[tokio::test]
    async fn priority_is_task_local_and_user_by_default() {
        assert_eq!(current_priority(), Priority::User);
        assert_eq!(in_background(async { current_priority() }).await, Priority::Background);
        let nested = in_background(async { tokio::spawn(async { current_priority() }).await.unwrap() }).await;
        assert_eq!(nested, Priority::User);
        assert_eq!(current_priority(), Priority::User);
    }

    #[test]
    fn keys_do_not_show_the_access_key() {
        let shown = format!("{:?}", key("SECRETACCESSKEY123", "cn-north-4", Service::Ecs));
        assert!(!shown.contains("SECRETACCESSKEY123"), "{shown}");
        assert!(shown.contains("ak#"), "{shown}");
    }
}
