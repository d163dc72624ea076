//! One reconcile of a VipBinding, as named steps: observe (the cache, overlaid with what this
//! process last wrote) → [`decide`] (pure) → act (a [`binder`] per API, returning an
//! [`Outcome`]) → [`record`] (status, finalizer, event, requeue).
//!
//! Ordering rules that keep the cloud and the cluster consistent:
//! - the finalizer is added before the first cloud call (so a bind is never untracked);
//! - on deletion, the status (port id, conditions) is written before the finalizer is removed,
//!   and a failed status write keeps the finalizer (the idempotent unbind is simply redone);
//! - cloud failures are recorded in status and requeued by class; they are not reconcile errors.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use crate::api::v1alpha1::{BindApi, CONDITION_BOUND, CONDITION_READY, Reason, VipBinding};
use crate::controller::binding::act::{BindAsk, Job, binder};
use crate::controller::binding::decide::{Plan, decide};
use crate::controller::binding::outcome::{FailedBind, Failure, Outcome, Step, Unbound};
use crate::controller::binding::record::{self, Attempt, await_probe};
use crate::controller::binding::status::{BoundKnowledge, bound_knowledge, has_finalizer};
use crate::controller::context::Context;
use crate::controller::error::Error;
use crate::controller::state::backoff::{Hold, trigger_fingerprint};
use crate::controller::state::index::api_of;
use crate::controller::state::inflight::Direction;
use crate::controller::state::key::ObjectKey;
use crate::controller::state::memory::View;
use crate::controller::target::{Resolved, TargetResolver};
use crate::ecs::EcsError;

/// Requeue after a failed reconcile (a Kubernetes API error), by its kind, with per-object
/// backoff.
pub fn error_policy(b: Arc<VipBinding>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = %b.namespace().unwrap_or_default(), name = %b.name_any(), error = %error, kind = error.kind(), "reconcile failed");
    // Counted, so repeated API failures back off.
    let previous = ctx.backoffs.count(&ObjectKey::of(&b));
    Action::requeue(error.class().requeue_after(previous))
}

pub async fn reconcile(b: Arc<VipBinding>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = ObjectKey::of(&b);
    // The UID tells a binding from its successor of the same name in the logs.
    let span = tracing::info_span!("reconcile", namespace = %b.namespace().unwrap_or_default(), name = %b.name_any(), uid = %b.uid().unwrap_or_default());
    let started = std::time::Instant::now();
    let result = crate::controller::error::catching_panics(&span, reconcile_inner(&b, &ctx, &key)).await;
    let result = match result {
        // Nothing is left to reconcile: its watch event drops the rest of its state.
        Err(Error::Gone) => {
            span.in_scope(|| tracing::debug!("the object left the API during the reconcile"));
            ctx.forget(&b, &key);
            Ok(Action::await_change())
        }
        other => other,
    };
    ctx.observe_reconcile(&result, started.elapsed());
    result
}

async fn reconcile_inner(cached: &VipBinding, ctx: &Context, key: &ObjectKey) -> Result<Action, Error> {
    let view = ctx.memory.view(cached);
    let b = match &view {
        View::Cached(b) => *b,
        View::Overlaid(b) => {
            tracing::debug!("cache lags behind our last status write; deciding from what we wrote");
            b
        }
        View::Released => {
            tracing::debug!("already released; the cache has not seen it go yet");
            return Ok(Action::await_change());
        }
    };
    match ctx.backoffs.holding(key, trigger_fingerprint(b)) {
        Some(Hold::For(wait)) => {
            tracing::debug!(?wait, "held by backoff after a failure");
            return Ok(Action::requeue(wait));
        }
        Some(Hold::UntilChange) => {
            tracing::debug!("held until the binding or its credentials change");
            return Ok(Action::await_change());
        }
        None => {}
    }
    if !ctx.index.synced() {
        // Ownership of a NIC is not known before every watched namespace is listed.
        tracing::debug!("waiting for every watched namespace to be listed");
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let mut facts = ctx.facts(b, key);
    let mut plan = decide(b, &facts);
    tracing::trace!(?plan, "first decision");
    // The uninstall check, right before anything that would keep or unbind a deleting binding:
    // a paused one (a Hold) must not keep the CRD's deletion waiting either.
    let deleting = b.metadata.deletion_timestamp.is_some();
    if deleting && matches!(plan, Plan::Unbind | Plan::Hold(_)) && ctx.kube.crd_deleting().await {
        facts.crd_deleting = true;
        plan = decide(b, &facts);
    }
    tracing::debug!(?plan, "decided");
    match plan {
        // An Observe binding read less than a period ago: the next read is timed from that one.
        Plan::Nothing if observing(b) => {
            Ok(Action::requeue(ctx.observe_in(b).filter(|w| !w.is_zero()).unwrap_or_else(|| ctx.observe_period())))
        }
        Plan::Nothing => record::nothing(b, ctx, key).await,
        Plan::Hold(verdict) => record::hold(b, ctx, key, &verdict).await,
        Plan::Release(verdict) => record::release_verdict(b, ctx, key, &verdict).await,
        Plan::Yield(verdict) => {
            ctx.reassert_owner_of(b);
            record::release_verdict(b, ctx, key, &verdict).await
        }
        // A drift re-bind takes only what user work leaves of the cloud budget.
        Plan::Bind { reassert: true } => {
            ctx.note_drift_check(b);
            crate::ecs::in_background(bind(b, ctx, key, true)).await
        }
        Plan::Bind { reassert: false } => bind(b, ctx, key, false).await,
        Plan::Unbind => unbind(b, ctx, key).await,
        Plan::Observe => observe(b, ctx, key).await,
    }
}

fn observing(b: &VipBinding) -> bool {
    b.metadata.deletion_timestamp.is_none()
        && b.spec.management_policy == crate::api::v1alpha1::ManagementPolicy::Observe
}

/// `managementPolicy: Observe`: two reads (the NIC's port and the VIP's), the verdict recorded;
/// never a write, never the finalizer.
async fn observe(b: &VipBinding, ctx: &Context, key: &ObjectKey) -> Result<Action, Error> {
    if let Some(wait) = wait_for_policy(b, ctx, true) {
        return Ok(wait);
    }
    let epoch = ctx.targets.tenancy().epoch();
    let resolved = ctx.targets.resolve_bind(b).await;
    let Resolved { target, .. } = match record::or_record(b, ctx, key, Step::Read, (resolved, epoch)).await? {
        Ok(r) => r,
        Err(action) => return Ok(action),
    };
    let api = crate::controller::state::index::api_of(b, ctx.targets.defaults().api);
    let seen = if ctx.cloud.has_vpc() {
        match ctx.cloud.admit(&target) {
            Ok(admitted) => admitted.observe(&b.spec.nic_id, &b.spec.subnet_id, &b.spec.ip_address).await,
            Err(EcsError::AwaitingProbe(why)) => return Ok(await_probe(&why)),
            Err(e) => Err(e),
        }
    } else {
        Err(EcsError::InvalidRequest("the operator has no VPC endpoint to read ports with".into()))
    };
    let observation = crate::controller::binding::observe::judge(b, api, seen);
    record::observed(b, ctx, key, &observation).await
}

/// A deletion already held for a write that may still land, which still may: looked at again
/// when it can no longer land, with no cloud call and no status write meanwhile (another
/// trigger, such as our own status write's event, changes nothing).
fn still_held_for_writes_in_flight(b: &VipBinding, ctx: &Context) -> Option<Action> {
    let held = b.condition(CONDITION_READY).map(|c| c.reason.as_str()) == Some(Reason::WritesInFlight.as_str());
    if !held {
        return None;
    }
    let vip_port = b.status.as_ref().and_then(|s| s.bound_with.as_ref()).and_then(|w| w.vip_port_id.as_deref());
    let subjects: Vec<&str> = vip_port.into_iter().chain([b.spec.nic_id.as_str()]).collect();
    let until = ctx.writes.overtaken_until(&subjects, Direction::Unbind)?;
    tracing::debug!("held until a write that may still land can no longer land");
    Some(Action::requeue(until.saturating_duration_since(tokio::time::Instant::now()) + Duration::from_millis(200)))
}

/// A decision that needs the namespace's tenancy policy waits until the namespace watch has
/// seen the namespace (nothing is recorded meanwhile).
fn wait_for_policy(b: &VipBinding, ctx: &Context, needed: bool) -> Option<Action> {
    let namespace = b.namespace().unwrap_or_default();
    (needed && !ctx.targets.tenancy().knows(&namespace)).then(|| {
        tracing::debug!("waiting for the namespace's tenancy policy to be listed");
        Action::requeue(Duration::from_millis(500))
    })
}

/// Resolves where the bind goes, admits it at the gate, adds the finalizer, then acts and
/// records what happened.
async fn bind(b: &VipBinding, ctx: &Context, key: &ObjectKey, reassert: bool) -> Result<Action, Error> {
    if let Some(wait) = wait_for_policy(b, ctx, true) {
        return Ok(wait);
    }
    let epoch = ctx.targets.tenancy().epoch();
    let resolved = ctx.targets.resolve_bind(b).await;
    let Resolved { target, bound_with } = match record::or_record(b, ctx, key, Step::Bind, (resolved, epoch)).await? {
        Ok(r) => r,
        Err(action) => return Ok(action),
    };
    // What we knew before this attempt; adding our finalizer below does not change it.
    let attempt = Attempt { knowledge: bound_knowledge(b), reassert };
    let api = bound_with.api();
    if api == BindApi::Vpc && !ctx.cloud.has_vpc() {
        return record::outcome(b, ctx, key, attempt, Outcome::Failed(Failure::no_vpc_endpoint(Step::Bind))).await;
    }
    // Asked before the finalizer goes on: a call that will not be made needs none.
    let admitted = match ctx.cloud.admit(&target) {
        Ok(admitted) => admitted,
        Err(EcsError::AwaitingProbe(why)) => return Ok(await_probe(&why)),
        Err(e) => {
            return record::outcome(b, ctx, key, attempt, Outcome::BindFailed(FailedBind::ecs(&e, &bound_with))).await;
        }
    };
    // The finalizer goes on before the cloud can change: from here on a deletion unbinds.
    let added;
    let b = if has_finalizer(b) {
        b
    } else {
        // On failure no call follows, and dropping `admitted` lets the next caller probe.
        added = ctx.kube.add_finalizer(b).await?;
        if added.metadata.generation != b.metadata.generation {
            // The spec changed since it was read: the target and the record were chosen from
            // the old one. Decide again from the new one.
            return Ok(Action::requeue(Duration::from_millis(100)));
        }
        &added
    };
    // `Bound=False` was written while nothing had been sent (a hold, a refused bind): from
    // here on a bind may be, and a crash between its answer and the status write must not
    // leave the record saying nothing was (chaos seed 2426686475: a leader killed there, and
    // the deletion released as NotBound with the pair in the cloud).
    if attempt.knowledge == BoundKnowledge::NotBound && b.condition(CONDITION_BOUND).is_some() {
        record::bind_under_way(b, ctx).await?;
    }
    let job = Job { b, ctx, target: &target };
    let ask = BindAsk { bound_with, knowledge: attempt.knowledge, reassert };
    let outcome = binder(api).bind(job, admitted, ask).await?;
    let wrote = outcome.may_have_written();
    match record::outcome(b, ctx, key, attempt, outcome).await {
        Err(Error::Gone) if wrote => undo_orphaned_bind(job, key, api).await,
        other => other,
    }
}

/// How often, and how far apart, an orphaned bind's undo is tried before it is given up (and
/// said so): the object is gone, so no later reconcile will try again.
const UNDO_ATTEMPTS: u32 = 4;
const UNDO_FIRST_PAUSE: Duration = Duration::from_secs(1);

/// The binding left the API while its bind was in flight, though our finalizer was on it:
/// kube-apiserver can let a DELETE that read the object before the finalizer was added remove
/// it all the same (kubernetes/kubernetes#77988), so no deletion of ours will ever unbind it.
/// Undone here, as its deletion would have, unless another binding now claims what it bound
/// (then that binding's own bind or unbind decides, and undoing it here would be wrong).
async fn undo_orphaned_bind(job: Job<'_>, key: &ObjectKey, api: BindApi) -> Result<Action, Error> {
    let Job { b, ctx, .. } = job;
    if ctx.index.others_claim_bind_of(b, api) {
        tracing::warn!(
            "the binding left the API while its bind was in flight; another binding now claims its NIC, so its bind is left to that one"
        );
        ctx.forget(b, key);
        return Ok(Action::await_change());
    }
    tracing::warn!(
        "the binding left the API while its bind was in flight, its finalizer notwithstanding; undoing the bind"
    );
    let mut pause = UNDO_FIRST_PAUSE;
    let mut last = String::new();
    for attempt in 1..=UNDO_ATTEMPTS {
        match unbind_now(job, api).await {
            Ok(Outcome::Unbound(Unbound { message, .. }) | Outcome::HandingOver { message }) => {
                return Ok(record::orphaned_bind_undone(b, ctx, key, &message).await);
            }
            Ok(Outcome::NicGone(gone)) => return Ok(record::orphaned_bind_undone(b, ctx, key, &gone.message).await),
            Ok(other) => last = format!("{other:?}"),
            Err(e) => last = e.to_string(),
        }
        if attempt < UNDO_ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        }
    }
    Ok(record::orphaned_bind_not_undone(b, ctx, key, &last).await)
}

/// Resolves where the unbind goes (where the bind went), admits it at the gate, then acts and
/// records what happened.
async fn unbind(b: &VipBinding, ctx: &Context, key: &ObjectKey) -> Result<Action, Error> {
    if let Some(wait) = still_held_for_writes_in_flight(b, ctx) {
        return Ok(wait);
    }
    if let Some(wait) = wait_for_policy(b, ctx, TargetResolver::unbind_is_checked(b)) {
        return Ok(wait);
    }
    let epoch = ctx.targets.tenancy().epoch();
    let resolved = ctx.targets.resolve_for_unbind(b).await;
    let target = match record::or_record(b, ctx, key, Step::Unbind, (resolved, epoch)).await? {
        Ok(t) => t,
        Err(action) => return Ok(action),
    };
    let api = api_of(b, ctx.targets.defaults().api);
    if api == BindApi::Vpc && !ctx.cloud.has_vpc() {
        let outcome = Outcome::Failed(Failure::no_vpc_endpoint(Step::Unbind));
        return record::outcome(b, ctx, key, Attempt::unbind(), outcome).await;
    }
    let outcome = unbind_now(Job { b, ctx, target: &target }, api).await?;
    record::outcome(b, ctx, key, Attempt::unbind(), outcome).await
}

/// The unbind through `api`, if the gate lets it go.
async fn unbind_now(job: Job<'_>, api: BindApi) -> Result<Outcome, Error> {
    match job.ctx.cloud.admit(job.target) {
        Ok(admitted) => binder(api).unbind(job, admitted).await,
        Err(EcsError::AwaitingProbe(why)) => Ok(Outcome::AwaitingProbe(why)),
        Err(e) => Ok(Outcome::Failed(Failure::unbind_refused(&e))),
    }
}
