//! Record: the plan and the [`Outcome`] of acting on it, turned into status (port id, record,
//! conditions), the finalizer's removal on release, an event when something unusual happened,
//! and the requeue. It never calls the cloud.
//!
//! Ordering: on release the final status is written before the finalizer is removed, and a
//! failed status write keeps the finalizer (the idempotent unbind is then simply redone).

use std::time::Duration;

use kube::runtime::controller::Action;

use crate::api::v1alpha1::{BoundWith, CONDITION_BOUND, CONDITION_READY, Reason, VipBinding};
use crate::controller::binding::decide::Verdict;
use crate::controller::binding::outcome::{Bound, FailedBind, Failure, NicGone, Outcome, Step, Unbound, with_pairs};
use crate::controller::binding::status::{BoundKnowledge, CondStatus, StatusBuilder, has_finalizer, observation_stale};
use crate::controller::cloud::pairs::PairsRecord;
use crate::controller::context::Context;
use crate::controller::error::Error;
use crate::controller::state::inflight::Direction;
use crate::controller::state::key::ObjectKey;

/// Said in a Bound message when the bind is checked again after the horizon.
const RECHECK_NOTE: &str =
    "; an earlier write that may still land could undo it, so it is checked again once that can no longer happen";

/// What the plan asked of a bind, for recording its outcome.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt {
    /// What was known of the VIP before it.
    pub knowledge: BoundKnowledge,
    /// A drift check of a binding already bound.
    pub reassert: bool,
}

impl Attempt {
    /// An unbind: nothing about a bind to record.
    pub(crate) fn unbind() -> Self {
        Self { knowledge: BoundKnowledge::Maybe, reassert: false }
    }
}

/// Records `outcome` and picks the requeue.
pub(crate) async fn outcome(
    b: &VipBinding,
    ctx: &Context,
    key: &ObjectKey,
    attempt: Attempt,
    outcome: Outcome,
) -> Result<Action, Error> {
    match outcome {
        Outcome::Bound(bound) => bound_(b, ctx, key, attempt, bound).await,
        Outcome::Unbound(unbound) => unbound_(b, ctx, key, unbound).await,
        Outcome::HandingOver { message } => handing_over(b, ctx, &message).await,
        Outcome::NicGone(gone) => nic_gone(b, ctx, key, gone).await,
        Outcome::BindFailed(failed) => bind_failure(b, ctx, key, attempt.knowledge, failed).await,
        Outcome::Failed(failure) => {
            record_failure(b, ctx, key, StatusBuilder::new(b, ctx.now()).bound_unchanged(), failure).await
        }
        Outcome::AwaitingProbe(why) => Ok(await_probe(&why)),
    }
}

/// Another call with the same unproven credentials is in flight: nothing was sent and nothing
/// is recorded; look again shortly (jittered, so a fleet does not come back at once).
pub(crate) fn await_probe(why: &str) -> Action {
    use rand::RngExt;
    tracing::debug!(why, "waiting for the credentials' first call to be answered");
    Action::requeue(Duration::from_millis(rand::rng().random_range(500..=1500)))
}

async fn bound_(
    b: &VipBinding,
    ctx: &Context,
    key: &ObjectKey,
    attempt: Attempt,
    bound: Bound,
) -> Result<Action, Error> {
    let Bound { port_id, bound_with, message, subjects, wrote, repaired, observed } = bound;
    // A drift check that found everything in place wrote nothing and re-asserted nothing.
    ctx.asserted(b, key, attempt.reassert && wrote);
    let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
    // Bound now, but a write going the other way that may still land could undo it: not
    // `Bound=True` until it can no longer land and the second look agrees.
    let (bound, ready, reason, message) = match ctx.bound_inside_horizon(key, &subjects) {
        None => (CondStatus::True, CondStatus::True, Reason::Bound, message),
        Some(_) => (CondStatus::Unknown, CondStatus::False, Reason::WritesInFlight, format!("{message}{RECHECK_NOTE}")),
    };
    let now = ctx.now();
    let mut builder = StatusBuilder::new(b, now.clone())
        .port_id(Some(port_id))
        .bound_reverse_binding(Some(b.spec.reverse_binding))
        .bound_with(Some(bound_with))
        .bound(bound, reason, &message)
        .ready(ready, reason, &message);
    // A re-bind that found the pair in place refreshes the observation only hourly.
    if let Some(vip_port) = observed
        && (wrote || !attempt.reassert || observation_stale(b, now.0))
    {
        builder = builder.observed(true, &vip_port, "bind");
    }
    if let Some(status) = builder.build() {
        ctx.record(b, &status).await?;
    }
    // No event for a routine bind: the Ready condition says it, and a create stays at two API
    // writes (finalizer, status). A repair of drift is an event.
    if !repaired.is_empty() {
        ctx.note_drift_repaired(b);
    }
    for note in repaired {
        ctx.kube.event(b, true, Reason::DriftRepaired, Step::Bind.as_str(), note).await;
    }
    Ok(ctx.after_success(b, key))
}

async fn unbound_(b: &VipBinding, ctx: &Context, key: &ObjectKey, unbound: Unbound) -> Result<Action, Error> {
    let Unbound { port_id, message, subjects } = unbound;
    let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
    if let Some(until) = ctx.writes.overtaken_until(&subjects, Direction::Unbind) {
        return unbound_inside_horizon(b, ctx, &message, until).await;
    }
    let builder = StatusBuilder::new(b, ctx.now())
        .port_id(Some(port_id))
        .bound_reverse_binding(None)
        .bound_with(None)
        .bound(CondStatus::False, Reason::Unbound, &message)
        .ready(CondStatus::False, Reason::Unbound, &message);
    release(b, ctx, key, builder, Reason::Unbound, &message).await
}

async fn nic_gone(b: &VipBinding, ctx: &Context, key: &ObjectKey, gone: NicGone) -> Result<Action, Error> {
    if let Some(note) = gone.reads_denied {
        ctx.note_reads_denied();
        ctx.kube.event(b, true, Reason::VpcReadsDenied, Step::Read.as_str(), note).await;
    }
    let message = gone.message;
    let builder = StatusBuilder::new(b, ctx.now())
        .bound_reverse_binding(None)
        .bound(CondStatus::False, Reason::NicNotFound, &message)
        .ready(CondStatus::False, Reason::NicNotFound, &message);
    release(b, ctx, key, builder, Reason::NicNotFound, &message).await
}

/// A bind whose binding left the API while it was in flight was undone (see
/// `reconcile::undo_orphaned_bind`): said in an event and the log, as the object is gone.
pub(crate) async fn orphaned_bind_undone(b: &VipBinding, ctx: &Context, key: &ObjectKey, unbound: &str) -> Action {
    let note = format!(
        "deleted while its bind was in flight, though its finalizer was on (a kube-apiserver race): the bind was undone: {unbound}"
    );
    tracing::warn!(%note, "orphaned bind undone");
    ctx.kube.event(b, true, Reason::DeletedWhileBinding, Step::Unbind.as_str(), note).await;
    ctx.note_orphaned_bind(true);
    ctx.forget(b, key);
    Action::await_change()
}

/// The undo of an orphaned bind did not succeed: said loudly, as nothing will try again.
pub(crate) async fn orphaned_bind_not_undone(b: &VipBinding, ctx: &Context, key: &ObjectKey, why: &str) -> Action {
    let note = format!(
        "deleted while its bind was in flight, though its finalizer was on (a kube-apiserver race), and its bind could not be undone ({why}): VIP {} may still be bound to NIC {}",
        b.spec.ip_address, b.spec.nic_id
    );
    tracing::error!(%note, "orphaned bind left in the cloud");
    ctx.kube.event(b, true, Reason::DeletedWhileBinding, Step::Unbind.as_str(), note).await;
    ctx.note_orphaned_bind(false);
    ctx.forget(b, key);
    Action::await_change()
}

/// A bind is about to be sent by a binding whose record says nothing was: `Bound` becomes
/// `Unknown` first, so no crash before the outcome is written can leave that record standing.
pub(crate) async fn bind_under_way(b: &VipBinding, ctx: &Context) -> Result<(), Error> {
    let next = StatusBuilder::new(b, ctx.now())
        .bound(CondStatus::Unknown, Reason::Indeterminate, "a bind request is being sent to the cloud")
        .build();
    if let Some(status) = next {
        ctx.record(b, &status).await?;
    }
    Ok(())
}

/// Records why a binding waits; no cloud call, no finalizer change.
pub(crate) async fn hold(b: &VipBinding, ctx: &Context, key: &ObjectKey, verdict: &Verdict) -> Result<Action, Error> {
    let next = StatusBuilder::new(b, ctx.now())
        .ready(CondStatus::False, verdict.reason, &verdict.message)
        .bound_unchanged()
        .build();
    if let Some(status) = next {
        let changed_reason = b.condition(CONDITION_READY).map(|c| c.reason.as_str()) != Some(verdict.reason.as_str());
        ctx.record(b, &status).await?;
        if changed_reason {
            let warning = !matches!(verdict.reason, Reason::Paused);
            ctx.kube.event(b, warning, verdict.reason, Step::Reconcile.as_str(), verdict.message.clone()).await;
        }
    }
    Ok(ctx.requeue_after(b, key, verdict.reason, None))
}

/// A release without a cloud call (Orphan, an uninstall, a conflict, nothing ever bound).
pub(crate) async fn release_verdict(
    b: &VipBinding,
    ctx: &Context,
    key: &ObjectKey,
    verdict: &Verdict,
) -> Result<Action, Error> {
    let builder = StatusBuilder::new(b, ctx.now()).ready(CondStatus::False, verdict.reason, &verdict.message);
    let builder = if verdict.reason == Reason::NotBound {
        builder.bound(CondStatus::False, Reason::NotBound, "no bind request for this binding reached the cloud")
    } else {
        builder.bound_unchanged()
    };
    release(b, ctx, key, builder, verdict.reason, &verdict.message).await
}

/// Nothing to do but acknowledge a generation change (e.g. deletionPolicy edited), or write
/// the record of a bind made before records existed.
/// An Observe binding's verdict: `Bound` as read, `Ready` True only when the cloud matches the
/// spec, what the VIP port showed; an event and the drift counter when it stops matching. The
/// next read is a period away (sooner when nothing could be read).
pub(crate) async fn observed(
    b: &VipBinding,
    ctx: &Context,
    key: &ObjectKey,
    o: &crate::controller::binding::observe::Observation,
) -> Result<Action, Error> {
    let ready = if o.reason == Reason::Observed { CondStatus::True } else { CondStatus::False };
    let mut builder =
        StatusBuilder::new(b, ctx.now()).ready(ready, o.reason, &o.message).bound(o.bound, o.reason, &o.message);
    if let Some((paired, port)) = &o.vip_port {
        builder = builder.observed(*paired, port, crate::controller::context::OBSERVE_BY);
    }
    // Written every time: `observed.at` says when it was last read (and the next read is timed
    // from it); a read that shows the same costs one status write a period.
    let status = builder.build_always();
    let before = b.condition(CONDITION_READY).map(|c| c.reason.clone());
    ctx.record(b, &status).await?;
    if before.as_deref() != Some(o.reason.as_str()) && o.reason != Reason::Observed {
        if o.reason == Reason::ObservedDrift
            && let Some(m) = &ctx.metrics
        {
            m.observed_drift.inc();
        }
        ctx.kube.event(b, true, o.reason, Step::Read.as_str(), o.message.clone()).await;
    }
    ctx.backoffs.reset(key);
    let next = if o.reason == Reason::Unobservable && o.vip_port.is_none() {
        crate::controller::context::OBSERVE_RETRY.min(ctx.observe_period())
    } else {
        ctx.observe_period()
    };
    Ok(Action::requeue(next))
}

pub(crate) async fn nothing(b: &VipBinding, ctx: &Context, key: &ObjectKey) -> Result<Action, Error> {
    if b.metadata.deletion_timestamp.is_none() && has_finalizer(b) {
        let builder = StatusBuilder::new(b, ctx.now()).bound_unchanged();
        if let Some(status) = backfill_record(b, ctx, builder).await.build() {
            ctx.record(b, &status).await?;
        }
    }
    Ok(ctx.after_success(b, key))
}

/// Writes the final status, then lets the object go.
async fn release(
    b: &VipBinding,
    ctx: &Context,
    key: &ObjectKey,
    builder: StatusBuilder<'_>,
    reason: Reason,
    message: &str,
) -> Result<Action, Error> {
    if let Some(status) = builder.build() {
        ctx.record(b, &status).await?;
        tracing::trace!("final status written");
    }
    ctx.kube.remove_finalizer(b).await?;
    tracing::trace!("finalizer removed");
    ctx.forget(b, key);
    tracing::info!(reason = reason.as_str(), "released");
    // A routine unbind is in the status (and the object is gone); an event is for the
    // unusual ways out: Orphaned, NotBound, NicNotFound, Conflict. This keeps a deletion at
    // two API writes.
    if reason != Reason::Unbound {
        ctx.kube.event(b, false, reason, Step::Release.as_str(), message.to_string()).await;
    }
    Ok(Action::await_change())
}

/// An unbind that succeeded while a bind of ours (or a pair write, or any write of the process
/// before this one) may still land and undo it: not released yet. `Bound` says the outcome is
/// unknown, so no later pass takes "unbound" as the last word; once the write can no longer
/// land, the unbind is made again and only then released.
async fn unbound_inside_horizon(
    b: &VipBinding,
    ctx: &Context,
    unbound: &str,
    until: tokio::time::Instant,
) -> Result<Action, Error> {
    let wait = until.saturating_duration_since(tokio::time::Instant::now()) + Duration::from_millis(200);
    // No countdown in the text: a message that changes on every pass would be a status write,
    // and a watch event, on every pass.
    let message = format!(
        "{unbound}; an earlier write that may still land (answered 504, given up on, or sent by a previous leader) could bind it again, so the unbind is repeated once it can no longer land (--write-horizon after it), before the binding is released"
    );
    tracing::info!(wait_s = wait.as_secs(), "unbound inside the horizon of a write that may still land; holding");
    let next = StatusBuilder::new(b, ctx.now())
        .bound(CondStatus::Unknown, Reason::WritesInFlight, &message)
        .ready(CondStatus::False, Reason::WritesInFlight, &message)
        .build();
    if let Some(status) = next {
        ctx.record(b, &status).await?;
    }
    Ok(Action::requeue(wait))
}

/// Unbound, but not let go yet: its record of who added the NIC's `1.1.1.1/0` is the only one
/// until the bindings that still need the entry record it too (they read it at their next
/// bind). `Bound` is `Unknown` so no later pass takes the unbind as the last word.
async fn handing_over(b: &VipBinding, ctx: &Context, message: &str) -> Result<Action, Error> {
    tracing::info!("unbound; waiting for the NIC's other bindings to record whose 1.1.1.1/0 it is");
    let next = StatusBuilder::new(b, ctx.now())
        .bound(CondStatus::Unknown, Reason::HandingOver, message)
        .ready(CondStatus::False, Reason::HandingOver, message)
        .build();
    if let Some(status) = next {
        ctx.record(b, &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(2)))
}

/// Records a failure in status and as a Warning event, and picks the requeue.
async fn record_failure(
    b: &VipBinding,
    ctx: &Context,
    key: &ObjectKey,
    builder: StatusBuilder<'_>,
    f: Failure,
) -> Result<Action, Error> {
    tracing::warn!(reason = f.reason.as_str(), message = %f.message, "{} did not succeed", f.step.as_str());
    if let Some(status) = builder.ready(CondStatus::False, f.reason, &f.message).build() {
        ctx.record(b, &status).await?;
    }
    ctx.kube.event(b, true, f.reason, f.step.as_str(), f.message).await;
    Ok(ctx.requeue_after(b, key, f.reason, f.retry_after))
}

/// Records a bind that did not succeed: what is now known about the cloud (what it knew
/// before, and where the attempt went), and the failure.
async fn bind_failure(
    b: &VipBinding,
    ctx: &Context,
    key: &ObjectKey,
    knowledge: BoundKnowledge,
    f: FailedBind,
) -> Result<Action, Error> {
    let mut builder = StatusBuilder::new(b, ctx.now());
    if let Some(record) = f.record {
        builder = builder.bound_with(Some(record));
    }
    let builder = match (knowledge, f.gone) {
        // An earlier bind still stands; this attempt changed nothing we know of.
        (BoundKnowledge::Bound, _) => builder.bound_unchanged(),
        (_, true) => {
            builder.bound(CondStatus::False, Reason::NicNotFound, &format!("NIC {} does not exist", b.spec.nic_id))
        }
        (BoundKnowledge::Maybe, _) => builder.bound(
            CondStatus::Unknown,
            Reason::Indeterminate,
            "an earlier bind request may have reached the cloud; its outcome is unknown",
        ),
        (BoundKnowledge::NotBound, _) if f.may_have_applied => builder.bound(
            CondStatus::Unknown,
            Reason::Indeterminate,
            &format!("the bind request may have reached the cloud: {}", f.detail),
        ),
        (BoundKnowledge::NotBound, _) => {
            builder.bound(CondStatus::False, Reason::NotBound, "the cloud refused the bind request; nothing is bound")
        }
    };
    let failure = Failure {
        reason: f.reason,
        message: format!("bind failed: {}", f.detail),
        step: Step::Bind,
        retry_after: f.retry_after,
    };
    record_failure(b, ctx, key, builder, failure).await
}

/// A binding confirmed bound (`Bound=True`) by an operator that kept no record of where: write
/// it now, from the spec as it is at the first look, so that a later change of the spec's
/// credentials cannot steer the deletion's unbind.
async fn backfill_record<'a>(b: &VipBinding, ctx: &Context, builder: StatusBuilder<'a>) -> StatusBuilder<'a> {
    let recorded = b.status.as_ref().is_some_and(|s| s.bound_with.is_some());
    let confirmed = b.condition(CONDITION_BOUND).is_some_and(|c| c.status == "True");
    if recorded || !confirmed {
        return builder;
    }
    match ctx.targets.resolve_unchecked(b).await {
        // Bound before records existed, so before there was a choice of API: through ECS.
        Ok(r) => builder.bound_with(Some(BoundWith { api: None, ..r.bound_with })),
        Err(verdict) => {
            tracing::debug!(reason = verdict.reason.as_str(), "cannot record where the earlier bind went yet");
            builder
        }
    }
}

/// The resolved target, or the failure recorded and the requeue to return. A policy refusal
/// decided while the policy changed is looked at again shortly instead of held: the change's
/// own trigger may have come and gone during this reconcile.
pub(crate) async fn or_record<T>(
    b: &VipBinding,
    ctx: &Context,
    key: &ObjectKey,
    step: Step,
    (resolved, epoch): (Result<T, Verdict>, u64),
) -> Result<Result<T, Action>, Error> {
    let verdict = match resolved {
        Ok(t) => return Ok(Ok(t)),
        Err(verdict) => verdict,
    };
    ctx.note_credentials_problem(verdict.reason);
    let policy = matches!(verdict.reason, Reason::DefaultCredentialsNotAllowed | Reason::ProjectNotAllowed);
    let builder = StatusBuilder::new(b, ctx.now()).bound_unchanged();
    let failure = Failure { reason: verdict.reason, message: verdict.message, step, retry_after: None };
    let next = record_failure(b, ctx, key, builder, failure).await?;
    if policy && ctx.targets.tenancy().epoch() != epoch {
        ctx.backoffs.release_hold(key);
        return Ok(Err(Action::requeue(Duration::from_millis(200))));
    }
    Ok(Err(next))
}

/// A VPC bind's intent, written before the NIC's source check goes off (under the NIC's lock):
/// the record says the operator turns it off, so a deletion or a new process finds the entry
/// again whatever happens next. `Bound` says `Unknown` unless an earlier bind still stands.
pub(crate) async fn intent(
    b: &VipBinding,
    ctx: &Context,
    bound_with: &BoundWith,
    knowledge: BoundKnowledge,
    pairs: &PairsRecord,
) -> Result<(), Error> {
    let builder = StatusBuilder::new(b, ctx.now()).bound_with(Some(with_pairs(bound_with.clone(), Some(pairs))));
    let message = format!(
        "binding: NIC {}'s source check goes off (1.1.1.1/0) before its IP {} goes into VIP port {}",
        b.spec.nic_id, pairs.nic_ip, pairs.vip_port_id
    );
    let builder = match knowledge {
        BoundKnowledge::Bound => builder.bound_unchanged(),
        _ => builder.bound(CondStatus::Unknown, Reason::Indeterminate, &message),
    };
    if let Some(status) = builder.build() {
        ctx.record(b, &status).await?;
    }
    Ok(())
}
