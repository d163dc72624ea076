//! What a reconcile works with: its dependencies (Kubernetes, the gated cloud, credentials) and
//! the per-object state it keeps between reconciles (backoffs, drift schedule, the memory of
//! its own status writes, the NIC-ownership index).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use crate::api::v1alpha1::{Reason, VipBinding, VipBindingStatus};
use crate::ecs::vpc::VpcApi;
use crate::ecs::{Clock, EcsApi};
use crate::metrics::Metrics;

use crate::controller::binding::decide::{self, Facts};
use crate::controller::cloud::GatedCloud;
use crate::controller::error::Error;
use crate::controller::kube_ops::{KubeOps, StatusWrite};
use crate::controller::state::backoff::{Backoffs, trigger_fingerprint};
use crate::controller::state::drift::Resync;
use crate::controller::state::index::BindingIndex;
use crate::controller::state::inflight::{Direction, WritesInFlight};
use crate::controller::state::key::ObjectKey;
use crate::controller::state::memory::Memory;
use crate::controller::target::TargetResolver;

/// `status.observed.by` of a read made for `managementPolicy: Observe`.
pub const OBSERVE_BY: &str = "observe";
/// An Observe binding whose ports could not be read is read again this soon.
pub const OBSERVE_RETRY: Duration = Duration::from_secs(30);

/// Everything a reconcile needs. Cloud and Kubernetes access sit behind `cloud`, `kube` and
/// `targets`; the decision itself is the pure [`decide::decide`].
pub struct Context {
    pub kube: KubeOps,
    pub cloud: GatedCloud,
    pub targets: TargetResolver,
    pub backoffs: Backoffs,
    pub clock: Arc<dyn Clock>,
    pub metrics: Option<Arc<Metrics>>,
    pub memory: Memory,
    /// NIC ownership and Secret use, across every watched namespace.
    pub index: Arc<BindingIndex>,
    pub resync: Resync,
    /// Writes that may still land, and the second looks they call for.
    pub writes: Arc<WritesInFlight>,
}

impl Context {
    pub fn new(kube: KubeOps, cloud: Arc<dyn EcsApi>, targets: TargetResolver, clock: Arc<dyn Clock>) -> Self {
        Self {
            kube,
            cloud: GatedCloud::new(cloud),
            targets,
            backoffs: Backoffs::default(),
            clock,
            metrics: None,
            memory: Memory::default(),
            index: Arc::default(),
            resync: Resync::disabled(),
            writes: Arc::default(),
        }
    }

    /// Confirms "NIC gone" answers with a read of the NIC's port, and binds `api: VPC`
    /// bindings (see [`GatedCloud::with_vpc`]).
    pub fn with_vpc(mut self, api: Arc<dyn VpcApi>) -> Self {
        self.cloud = self.cloud.with_vpc(api);
        self
    }

    /// A drift listing showed `in_place` bindings bound as recorded and `drifted` not.
    pub fn note_compared(&self, in_place: u64, drifted: u64) {
        if let Some(m) = &self.metrics {
            m.drift_compared_in_place.inc_by(in_place);
            m.drift_compared_drifted.inc_by(drifted);
        }
    }

    /// A bind whose binding left the API while it was in flight was undone (`true`), or could
    /// not be.
    pub fn note_orphaned_bind(&self, undone: bool) {
        if let Some(m) = &self.metrics {
            let outcome = if undone { "undone" } else { "left" };
            m.orphaned_binds.get_or_create(&crate::metrics::OutcomeLabels { outcome }).inc();
        }
    }

    pub fn note_reads_denied(&self) {
        if let Some(m) = &self.metrics {
            m.vpc_reads_denied.inc();
        }
    }

    /// Tracks writes that may still land (the same ledger the cloud client reports to).
    pub fn with_writes(mut self, writes: Arc<WritesInFlight>) -> Self {
        self.writes = writes;
        self
    }

    /// The NIC-ownership index, for an operator whose default API is not ECS.
    pub fn with_index(mut self, index: BindingIndex) -> Self {
        self.index = Arc::new(index);
        self
    }

    pub fn with_resync(mut self, period: Duration) -> Self {
        self.resync = Resync::new(period);
        self
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.cloud = self.cloud.with_metrics(metrics.clone());
        self.metrics = Some(metrics);
        self
    }

    /// Writes the status and remembers it until the cache shows it. [`Error::Gone`]: the
    /// object left the API (or was replaced by another of its name) first.
    pub async fn record(&self, b: &VipBinding, status: &VipBindingStatus) -> Result<(), Error> {
        match self.kube.write_status(b, status).await? {
            StatusWrite::Stored { generation } => {
                self.memory.wrote_status(b, generation, status);
                Ok(())
            }
            StatusWrite::Gone => Err(Error::Gone),
        }
    }

    /// Now, in whole seconds: the API stores condition times at second precision, and a
    /// status we write must read back equal to what we remember writing (see `memory`).
    pub fn now(&self) -> Time {
        let now = self.clock.now();
        Time(jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
    }

    /// What the decision needs beyond the object itself (the uninstall check is asked later,
    /// and only when it matters: it is an API call).
    pub fn facts(&self, b: &VipBinding, key: &ObjectKey) -> Facts {
        Facts {
            conflict_owner: self.index.conflict_owner(b),
            owner_shares_pair: self.index.conflict_owner_claim(b).is_some_and(|c| c.is_vpc()),
            crd_deleting: false,
            reassert_due: decide::bound_as_specified(b) && (self.resync.is_asked(key) || self.writes.recheck_due(key)),
            api: crate::controller::state::index::api_of(b, self.targets.defaults().api),
            observe_due: self.observe_in(b).is_none(),
        }
    }

    /// How often an Observe binding is read: the drift period, or 10 minutes without one.
    pub fn observe_period(&self) -> Duration {
        let period = self.resync.period();
        if period.is_zero() { Duration::from_secs(600) } else { period }
    }

    /// `managementPolicy: Observe`: how long until the binding is read again; `None` when it is
    /// due now (never read as this spec, or the last read is a period old). Not an Observe
    /// binding: `Some(ZERO)`, never due.
    pub fn observe_in(&self, b: &VipBinding) -> Option<Duration> {
        use crate::api::v1alpha1::{CONDITION_READY, ManagementPolicy};
        if b.spec.management_policy != ManagementPolicy::Observe {
            return Some(Duration::ZERO);
        }
        let ready = b.condition(CONDITION_READY)?;
        let observed = matches!(
            Reason::parse(&ready.reason),
            Some(Reason::Observed | Reason::ObservedDrift | Reason::Unobservable)
        );
        if !observed || ready.observed_generation != b.metadata.generation {
            return None;
        }
        // The last read: what the VIP port showed, else when the verdict was first written (a
        // read that failed: looked at again sooner).
        let (at, period) = match b.status.as_ref().and_then(|s| s.observed.as_ref()).filter(|o| o.by == OBSERVE_BY) {
            Some(o) => (o.at.0, self.observe_period()),
            None if ready.reason == Reason::Unobservable.as_str() => {
                (ready.last_transition_time.0, OBSERVE_RETRY.min(self.observe_period()))
            }
            None => (ready.last_transition_time.0, self.observe_period()),
        };
        let age = self.clock.now().duration_since(at).unsigned_abs();
        (age < period).then(|| period.saturating_sub(age))
    }

    /// After a reconcile that left the binding as its spec asks: wait for a change (the drift
    /// sweeper asks for the next check of a bound binding).
    pub fn after_success(&self, b: &VipBinding, key: &ObjectKey) -> Action {
        self.backoffs.reset(key);
        if b.metadata.deletion_timestamp.is_none() {
            if decide::bound_as_specified(b) {
                self.resync.track(key, ObjectRef::from_obj(b));
            }
            // A second look is pending (`b` may be the copy from before the bind): another
            // trigger must not make it be forgotten.
            if let Some(wait) = self.writes.recheck_in(key) {
                return Action::requeue(wait);
            }
        }
        Action::await_change()
    }

    /// A bind of `subjects` just completed. If a write going the other way may still land on
    /// them, the bind is checked again once it cannot any more; the requeue for that.
    pub fn bound_inside_horizon(&self, key: &ObjectKey, subjects: &[&str]) -> Option<Instant> {
        let until = self.writes.overtaken_until(subjects, Direction::Bind);
        match until {
            Some(at) => {
                tracing::info!(
                    in_s = at.saturating_duration_since(Instant::now()).as_secs(),
                    "bound while an earlier write may still land: it is checked again once that can no longer happen"
                );
                // Past the horizon, so a late write has landed by then.
                self.writes.recheck_at(key, at.checked_add(Duration::from_millis(200)).unwrap_or(at));
            }
            None => self.writes.rechecked(key),
        }
        until
    }

    /// `b` lost its NIC to an owner after its own bind may have reached the cloud: the owner's
    /// bind is re-asserted at the next drift sweep, replacing whatever `b` bound.
    pub fn reassert_owner_of(&self, b: &VipBinding) {
        if let Some(owner) = self.index.conflict_owner_claim(b) {
            tracing::info!(owner = %owner.key(), "re-asserting the bind of the NIC's owner");
            self.resync.due_now(owner.uid(), owner.object_ref());
        }
    }

    /// A bind succeeded: the next drift check is a period away.
    pub fn asserted(&self, b: &VipBinding, key: &ObjectKey, reassert: bool) {
        self.resync.asserted(key, ObjectRef::from_obj(b));
        if reassert && let Some(m) = &self.metrics {
            m.drift_reasserts.inc();
        }
    }

    /// The binding is gone from our point of view (finalizer removed).
    pub fn forget(&self, b: &VipBinding, key: &ObjectKey) {
        self.memory.released(b);
        self.forget_key(key);
    }

    /// Drops the per-object state kept under `key` (the object left the watch).
    pub fn forget_key(&self, key: &ObjectKey) {
        self.backoffs.reset(key);
        self.resync.forget(key);
        self.writes.rechecked(key);
        if let Some(ledger) = self.cloud.check_off_ledger() {
            ledger.unneed(key);
        }
    }

    /// After a recorded failure or hold: back off by its reason (holding the binding until then,
    /// see [`Backoffs`]), or wait for a change when retrying cannot help.
    pub fn requeue_after(&self, b: &VipBinding, key: &ObjectKey, reason: Reason, at_least: Option<Duration>) -> Action {
        match self.backoffs.next(key, trigger_fingerprint(b), reason, at_least) {
            Some(delay) => Action::requeue(delay),
            None => Action::await_change(),
        }
    }

    fn api_of(&self, b: &VipBinding) -> crate::api::v1alpha1::BindApi {
        crate::controller::state::index::api_of(b, self.targets.defaults().api)
    }

    /// A drift check of a bound binding starts.
    pub fn note_drift_check(&self, b: &VipBinding) {
        if let Some(m) = &self.metrics {
            m.drift_checks.get_or_create(&crate::metrics::ApiLabels { api: self.api_of(b).as_str() }).inc();
        }
    }

    /// A drift check found `b` undone in the cloud and put it back.
    pub fn note_drift_repaired(&self, b: &VipBinding) {
        if let Some(m) = &self.metrics {
            m.drift_repaired(b.metadata.namespace.as_deref().unwrap_or_default(), self.api_of(b).as_str());
        }
    }

    pub fn note_credentials_problem(&self, reason: Reason) {
        if let (Some(m), Reason::CredentialsUnavailable) = (&self.metrics, reason) {
            m.credentials_unavailable.inc();
        }
    }

    /// `ok`: left as the spec asks; `waiting`: requeued after a recorded failure or hold;
    /// `error`: a Kubernetes API failure.
    pub fn observe_reconcile(&self, result: &Result<Action, Error>, elapsed: Duration) {
        if let Some(m) = &self.metrics {
            let label = match result {
                Ok(a) if *a == Action::await_change() => "ok",
                Ok(_) => "waiting",
                Err(_) => "error",
            };
            m.reconciled(label, elapsed);
        }
    }
}
