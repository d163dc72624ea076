//! One reconcile: observe → decide → act → record.
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
use tracing::Instrument;

use crate::api::v1alpha1::{BindApi, BoundWith, Reason, VipBinding};
use crate::ecs::{BindRequest, CloudTarget, EcsError, ErrorClass, UnbindRequest};

use crate::controller::binding::decide::{Plan, Verdict, decide};
use crate::controller::binding::status::{BoundKnowledge, CondStatus, StatusBuilder, bound_knowledge, has_finalizer};
use crate::controller::binding::vpc;
use crate::controller::cloud::evidence::{self, Gone};
use crate::controller::context::Context;
use crate::controller::state::backoff::{Hold, trigger_fingerprint};
use crate::controller::state::index::api_of;
use crate::controller::state::inflight::Direction;
use crate::controller::state::key::ObjectKey;
use crate::controller::state::memory::View;
use crate::controller::target::{Resolved, TargetResolver};

/// Failures of the reconcile itself (Kubernetes API calls); cloud failures are not errors here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// A bug: the reconcile panicked. Caught so that one object cannot stop the controller
    /// (every reconcile runs inside its task); retried with backoff like an API failure.
    #[error("reconcile panicked: {0}")]
    Panicked(String),
}

/// What kind of reconcile failure, for the requeue, the metric label and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 409: someone else wrote the object in between; retry soon with a fresh read.
    Conflict,
    /// 422: e.g. a finalizer patch whose `test` failed because the list changed.
    Invalid,
    NotFound,
    /// Any other answer from the API server.
    Api,
    /// No answer (connection, timeout, TLS).
    Transport,
    Panic,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Conflict => "conflict",
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Api => "api",
            ErrorKind::Transport => "transport",
            ErrorKind::Panic => "panic",
        }
    }

    /// How long to wait before the next try after `previous` failures of the same object:
    /// soon after a write race (the next read is fresh), exponentially otherwise, up to 60 s.
    pub fn requeue_after(self, previous: u32) -> Duration {
        let delay = match self {
            ErrorKind::Conflict | ErrorKind::Invalid => Duration::from_millis(500),
            _ => Duration::from_secs(1).saturating_mul(2u32.saturating_pow(previous.min(6))),
        };
        delay.min(Duration::from_secs(60))
    }
}

impl Error {
    pub fn class(&self) -> ErrorKind {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => ErrorKind::Conflict,
            Error::Kube(kube::Error::Api(s)) if s.code == 422 => ErrorKind::Invalid,
            Error::Kube(kube::Error::Api(s)) if s.code == 404 => ErrorKind::NotFound,
            Error::Kube(kube::Error::Api(_)) => ErrorKind::Api,
            Error::Kube(_) => ErrorKind::Transport,
            Error::Panicked(_) => ErrorKind::Panic,
        }
    }

    /// Bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        self.class().as_str()
    }
}

/// Requeue after a failed reconcile (a Kubernetes API error), by its kind, with per-object
/// backoff.
pub fn error_policy(b: Arc<VipBinding>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = %b.namespace().unwrap_or_default(), name = %b.name_any(), error = %error, kind = error.kind(), "reconcile failed");
    // Counted, so repeated API failures back off.
    let previous = ctx.backoffs.count(&ObjectKey::of(&b));
    Action::requeue(error.class().requeue_after(previous))
}

/// The Ready reason for a cloud failure.
pub fn failure_reason(e: &EcsError, unbinding: bool) -> Reason {
    if matches!(e, EcsError::Fenced(_)) {
        return Reason::LeaderUnconfirmed;
    }
    match e.class() {
        ErrorClass::Auth => Reason::AuthFailed,
        ErrorClass::Gone => Reason::NicNotFound,
        ErrorClass::Retryable if e.is_throttled() => Reason::Throttled,
        ErrorClass::Retryable => Reason::CloudUnavailable,
        ErrorClass::Terminal if matches!(e, EcsError::InvalidRequest(_)) => Reason::Invalid,
        ErrorClass::Terminal if e.is_unrecognised_not_found() => Reason::EndpointNotFound,
        ErrorClass::Terminal if unbinding => Reason::UnbindFailed,
        ErrorClass::Terminal => Reason::BindFailed,
    }
}

pub async fn reconcile(b: Arc<VipBinding>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = ObjectKey::of(&b);
    // The UID tells a binding from its successor of the same name in the logs.
    let span = tracing::info_span!("reconcile", namespace = %b.namespace().unwrap_or_default(), name = %b.name_any(), uid = %b.uid().unwrap_or_default());
    let started = std::time::Instant::now();
    let inner = std::panic::AssertUnwindSafe(reconcile_inner(&b, &ctx, &key).instrument(span.clone()));
    let result = match futures::FutureExt::catch_unwind(inner).await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            span.in_scope(|| tracing::error!(%message, "reconcile panicked; the other reconciles go on"));
            Err(Error::Panicked(message))
        }
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
        Plan::Nothing => {
            // Only a generation change (e.g. deletionPolicy edited) to acknowledge, or the
            // record of a bind made before records existed.
            if b.metadata.deletion_timestamp.is_none() && has_finalizer(b) {
                let builder = StatusBuilder::new(b, ctx.now()).bound_unchanged();
                if let Some(status) = backfill_record(b, ctx, builder).await.build() {
                    ctx.record(b, &status).await?;
                }
            }
            Ok(ctx.after_success(b, key))
        }
        Plan::Hold(verdict) => hold(b, ctx, key, &verdict).await,
        Plan::Release(verdict) => {
            let mut builder =
                StatusBuilder::new(b, ctx.now()).ready(CondStatus::False, verdict.reason, &verdict.message);
            builder = if verdict.reason == Reason::NotBound {
                builder.bound(CondStatus::False, Reason::NotBound, "no bind request for this binding reached the cloud")
            } else {
                builder.bound_unchanged()
            };
            release(b, ctx, key, builder, verdict.reason, &verdict.message).await
        }
        // A drift re-bind takes only what user work leaves of the cloud budget.
        Plan::Bind { reassert: true } => crate::ecs::in_background(bind(b, ctx, key, true)).await,
        Plan::Bind { reassert: false } => bind(b, ctx, key, false).await,
        Plan::Unbind => unbind(b, ctx, key).await,
    }
}

/// Records why a binding waits; no cloud call, no finalizer change.
async fn hold(b: &VipBinding, ctx: &Context, key: &ObjectKey, verdict: &Verdict) -> Result<Action, Error> {
    let next = StatusBuilder::new(b, ctx.now())
        .ready(CondStatus::False, verdict.reason, &verdict.message)
        .bound_unchanged()
        .build();
    if let Some(status) = next {
        let changed_reason = b.condition(crate::api::v1alpha1::CONDITION_READY).map(|c| c.reason.as_str())
            != Some(verdict.reason.as_str());
        ctx.record(b, &status).await?;
        if changed_reason {
            let warning = !matches!(verdict.reason, Reason::Paused);
            ctx.kube.event(b, warning, verdict.reason, "Reconcile", verdict.message.clone()).await;
        }
    }
    Ok(ctx.requeue_after(b, key, verdict.reason, None))
}

/// Writes the final status, then lets the object go.
pub(super) async fn release(
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
        ctx.kube.event(b, false, reason, "Release", message.to_string()).await;
    }
    Ok(Action::await_change())
}

/// An unbind that succeeded while a bind of ours (or a pair write, or any write of the process
/// before this one) may still land and undo it: not released yet. `Bound` says the outcome is
/// unknown, so no later pass takes "unbound" as the last word; once the write can no longer
/// land, the unbind is made again and only then released.
pub(super) async fn unbound_inside_horizon(
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

/// A deletion already held for a write that may still land, which still may: looked at again
/// when it can no longer land, with no cloud call and no status write meanwhile (another
/// trigger, such as our own status write's event, changes nothing).
fn still_held_for_writes_in_flight(b: &VipBinding, ctx: &Context) -> Option<Action> {
    let held = b.condition(crate::api::v1alpha1::CONDITION_READY).map(|c| c.reason.as_str())
        == Some(Reason::WritesInFlight.as_str());
    if !held {
        return None;
    }
    let vip_port = b.status.as_ref().and_then(|s| s.bound_with.as_ref()).and_then(|w| w.vip_port_id.as_deref());
    let subjects: Vec<&str> = vip_port.into_iter().chain([b.spec.nic_id.as_str()]).collect();
    let until = ctx.writes.overtaken_until(&subjects, Direction::Unbind)?;
    tracing::debug!("held until a write that may still land can no longer land");
    Some(Action::requeue(until.saturating_duration_since(tokio::time::Instant::now()) + Duration::from_millis(200)))
}

/// A failed attempt to bind or unbind (or to get the credentials for it).
pub(super) struct Failure {
    pub reason: Reason,
    pub message: String,
    pub action: &'static str,
    pub retry_after: Option<Duration>,
}

/// Another call with the same unproven credentials is in flight: nothing was sent and nothing
/// is recorded; look again shortly (jittered, so a fleet does not come back at once).
pub(super) fn await_probe(why: &str) -> Action {
    use rand::RngExt;
    tracing::debug!(why, "waiting for the credentials' first call to be answered");
    Action::requeue(Duration::from_millis(rand::rng().random_range(500..=1500)))
}

/// Records a failure in status and as a Warning event, and picks the requeue.
pub(super) async fn record_failure(
    b: &VipBinding,
    ctx: &Context,
    key: &ObjectKey,
    builder: StatusBuilder<'_>,
    f: Failure,
) -> Result<Action, Error> {
    tracing::warn!(reason = f.reason.as_str(), message = %f.message, "{} did not succeed", f.action);
    if let Some(status) = builder.ready(CondStatus::False, f.reason, &f.message).build() {
        ctx.record(b, &status).await?;
    }
    ctx.kube.event(b, true, f.reason, f.action, f.message).await;
    Ok(ctx.requeue_after(b, key, f.reason, f.retry_after))
}

/// A binding confirmed bound (`Bound=True`) by an operator that kept no record of where: write
/// it now, from the spec as it is at the first look, so that a later change of the spec's
/// credentials cannot steer the deletion's unbind.
async fn backfill_record<'a>(b: &VipBinding, ctx: &Context, builder: StatusBuilder<'a>) -> StatusBuilder<'a> {
    let recorded = b.status.as_ref().is_some_and(|s| s.bound_with.is_some());
    let confirmed = b.condition(crate::api::v1alpha1::CONDITION_BOUND).is_some_and(|c| c.status == "True");
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

/// A decision that needs the namespace's tenancy policy waits until the namespace watch has
/// seen the namespace (nothing is recorded meanwhile).
fn wait_for_policy(b: &VipBinding, ctx: &Context, needed: bool) -> Option<Action> {
    let namespace = b.namespace().unwrap_or_default();
    (needed && !ctx.targets.tenancy().knows(&namespace)).then(|| {
        tracing::debug!("waiting for the namespace's tenancy policy to be listed");
        Action::requeue(Duration::from_millis(500))
    })
}

/// The resolved target, or the failure recorded and the requeue to return. A policy refusal
/// decided while the policy changed is looked at again shortly instead of held: the change's
/// own trigger may have come and gone during this reconcile.
async fn or_record<T>(
    b: &VipBinding,
    ctx: &Context,
    key: &ObjectKey,
    action: &'static str,
    (resolved, epoch): (Result<T, Verdict>, u64),
) -> Result<Result<T, Action>, Error> {
    let verdict = match resolved {
        Ok(t) => return Ok(Ok(t)),
        Err(verdict) => verdict,
    };
    ctx.note_credentials_problem(verdict.reason);
    let policy = matches!(verdict.reason, Reason::DefaultCredentialsNotAllowed | Reason::ProjectNotAllowed);
    let builder = StatusBuilder::new(b, ctx.now()).bound_unchanged();
    let failure = Failure { reason: verdict.reason, message: verdict.message, action, retry_after: None };
    let next = record_failure(b, ctx, key, builder, failure).await?;
    if policy && ctx.targets.tenancy().epoch() != epoch {
        ctx.backoffs.release_hold(key);
        return Ok(Err(Action::requeue(Duration::from_millis(200))));
    }
    Ok(Err(next))
}

async fn bind(b: &VipBinding, ctx: &Context, key: &ObjectKey, reassert: bool) -> Result<Action, Error> {
    if let Some(wait) = wait_for_policy(b, ctx, true) {
        return Ok(wait);
    }
    let epoch = ctx.targets.tenancy().epoch();
    let resolved = ctx.targets.resolve_bind(b).await;
    let Resolved { target, bound_with } = match or_record(b, ctx, key, "Bind", (resolved, epoch)).await? {
        Ok(r) => r,
        Err(action) => return Ok(action),
    };
    // What we knew before this attempt; adding our finalizer below does not change it.
    let knowledge = bound_knowledge(b);
    let pairs = match (bound_with.api(), &ctx.pairs) {
        (BindApi::Ecs, _) => None,
        (BindApi::Vpc, Some(pairs)) => Some(pairs),
        (BindApi::Vpc, None) => return vpc::no_vpc_endpoint(b, ctx, key, "Bind").await,
    };
    // Asked before the finalizer goes on: a call that will not be made needs none.
    let admitted = match ctx.cloud.admit(&target) {
        Ok(admitted) => admitted,
        Err(EcsError::AwaitingProbe(why)) => return Ok(await_probe(&why)),
        Err(e) => return bind_failed(b, ctx, key, (knowledge, &bound_with), e).await,
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
    if let Some(pairs) = pairs {
        let step = vpc::BindStep { admitted, pairs, bound_with, knowledge, reassert };
        return vpc::bind(b, ctx, key, step).await;
    }
    let req = BindRequest {
        nic_id: b.spec.nic_id.clone(),
        subnet_id: b.spec.subnet_id.clone(),
        ip_address: b.spec.ip_address.clone(),
        reverse_binding: b.spec.reverse_binding,
    };
    match admitted.bind(b, &req).await.map(|written| written.port_id) {
        Ok(port_id) => {
            ctx.asserted(b, key, reassert);
            // ECS has no read: an unbind that may still land is answered by binding again.
            let recheck = ctx.bound_inside_horizon(key, &[&b.spec.nic_id]);
            let message = format!(
                "VIP {} is bound to NIC {} (port {port_id}){}",
                b.spec.ip_address,
                b.spec.nic_id,
                if recheck.is_some() { vpc::RECHECK_NOTE } else { "" }
            );
            let was_bound = knowledge == BoundKnowledge::Bound;
            let next = StatusBuilder::new(b, ctx.now())
                .port_id(Some(port_id))
                .bound_reverse_binding(Some(b.spec.reverse_binding))
                .bound_with(Some(bound_with.clone()))
                .bound(CondStatus::True, Reason::Bound, &message)
                .ready(CondStatus::True, Reason::Bound, &message)
                .build();
            if let Some(status) = next {
                ctx.record(b, &status).await?;
            }
            // No event for a routine bind: the Ready condition says it, and a create stays at
            // two API writes (finalizer, status). Failures are events.
            if !was_bound || !reassert {
                tracing::info!(vip = %b.spec.ip_address, nic = %b.spec.nic_id, reassert, "bound");
            }
            Ok(ctx.after_success(b, key))
        }
        Err(e) => bind_failed(b, ctx, key, (knowledge, &bound_with), e).await,
    }
}

/// Records a bind that did not succeed: what is now known about the cloud (what it knew
/// before, and where the attempt went), and the failure.
async fn bind_failed(
    b: &VipBinding,
    ctx: &Context,
    key: &ObjectKey,
    (knowledge, bound_with): (BoundKnowledge, &BoundWith),
    e: EcsError,
) -> Result<Action, Error> {
    let failed = FailedBind {
        reason: failure_reason(&e, false),
        detail: e.to_string(),
        may_have_applied: e.may_have_applied(),
        gone: e.class() == ErrorClass::Gone,
        retry_after: e.retry_after(),
        // The deletion must be able to undo whatever this attempt may have done.
        record: e.may_have_applied().then(|| bound_with.clone()),
    };
    record_bind_failure(b, ctx, key, knowledge, failed).await
}

/// A bind that did not succeed, through either API.
pub(super) struct FailedBind {
    pub reason: Reason,
    /// What went wrong (the condition message says `bind failed: {detail}`).
    pub detail: String,
    /// The attempt may have changed the cloud.
    pub may_have_applied: bool,
    /// The cloud said the NIC does not exist.
    pub gone: bool,
    pub retry_after: Option<Duration>,
    /// The record to keep for the deletion, when there is something to undo.
    pub record: Option<BoundWith>,
}

pub(super) async fn record_bind_failure(
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
        action: "Bind",
        retry_after: f.retry_after,
    };
    record_failure(b, ctx, key, builder, failure).await
}

async fn unbind(b: &VipBinding, ctx: &Context, key: &ObjectKey) -> Result<Action, Error> {
    if let Some(wait) = still_held_for_writes_in_flight(b, ctx) {
        return Ok(wait);
    }
    if let Some(wait) = wait_for_policy(b, ctx, TargetResolver::unbind_is_checked(b)) {
        return Ok(wait);
    }
    let epoch = ctx.targets.tenancy().epoch();
    let resolved = ctx.targets.resolve_for_unbind(b).await;
    let target = match or_record(b, ctx, key, "Unbind", (resolved, epoch)).await? {
        Ok(t) => t,
        Err(action) => return Ok(action),
    };
    if api_of(b, ctx.targets.defaults().api) == BindApi::Vpc {
        return vpc::unbind(b, ctx, key, &target).await;
    }
    let req = UnbindRequest { nic_id: b.spec.nic_id.clone(), reverse_binding: b.spec.reverse_binding };
    tracing::trace!("unbinding");
    let result = match ctx.cloud.admit(&target) {
        Ok(admitted) => admitted.unbind(b, &req).await.map(|written| written.port_id),
        Err(EcsError::AwaitingProbe(why)) => return Ok(await_probe(&why)),
        Err(e) => Err(e),
    };
    match result {
        Ok(port_id) => {
            tracing::trace!("unbound");
            let message = format!("VIP {} unbound from NIC {} (port {port_id})", b.spec.ip_address, b.spec.nic_id);
            if let Some(until) = ctx.writes.overtaken_until(&[&b.spec.nic_id], Direction::Unbind) {
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
        Err(e) if e.class() == ErrorClass::Gone => nic_gone(b, ctx, key, &target, e).await,
        Err(e) => {
            let reason = failure_reason(&e, true);
            let builder = StatusBuilder::new(b, ctx.now()).bound_unchanged();
            let hint = if reason == Reason::EndpointNotFound {
                "; this is not the cloud saying the NIC is gone: check the operator's endpoint and region; \
                 set spec.deletionPolicy to Orphan to release the binding without unbinding"
            } else {
                "; set spec.deletionPolicy to Orphan to release the binding without unbinding"
            };
            let failure = Failure {
                reason,
                message: format!("unbind failed: {e}{hint}"),
                action: "Unbind",
                retry_after: e.retry_after(),
            };
            record_failure(b, ctx, key, builder, failure).await
        }
    }
}

/// ECS says the NIC is gone: released only once the VPC API agrees (its port reads 404
/// `VPC.2502`), or when no read is possible (the ECS answer is then the evidence, as it was
/// before reads). A port still there, or a read that proves nothing, holds the binding.
async fn nic_gone(
    b: &VipBinding,
    ctx: &Context,
    key: &ObjectKey,
    target: &CloudTarget,
    e: EcsError,
) -> Result<Action, Error> {
    let nic = &b.spec.nic_id;
    let gone = match &ctx.reads {
        Some(reads) => reads.confirm_gone(target, nic).await,
        None => evidence::no_reads(),
    };
    let why = match gone {
        Gone::Confirmed => "confirmed by the VPC API: its port reads 404 VPC.2502".to_string(),
        Gone::Unconfirmed { why, newly_denied } => {
            if newly_denied {
                ctx.note_reads_denied();
                let note = format!("{why}: releases rest on the ECS answer alone");
                ctx.kube.event(b, true, Reason::VpcReadsDenied, "Read", note).await;
            }
            why
        }
        Gone::Contradicted { port_id } => {
            let message = format!(
                "unbind: ECS says NIC {nic} is gone ({e}), but the VPC API still has its port {port_id}: the VIP may still be bound, so the binding is not released; set spec.deletionPolicy to Orphan to release it without unbinding"
            );
            let failure = Failure { reason: Reason::GoneUnconfirmed, message, action: "Unbind", retry_after: None };
            return record_failure(b, ctx, key, StatusBuilder::new(b, ctx.now()).bound_unchanged(), failure).await;
        }
        Gone::Unknown(read) => {
            let message = format!(
                "unbind: ECS says NIC {nic} is gone ({e}); confirming it with the VPC API failed ({read}), so the binding is not released yet"
            );
            let failure = Failure {
                reason: failure_reason(&read, true),
                message,
                action: "Unbind",
                retry_after: read.retry_after(),
            };
            return record_failure(b, ctx, key, StatusBuilder::new(b, ctx.now()).bound_unchanged(), failure).await;
        }
    };
    let message = format!("NIC {nic} not found ({e}; {why}): nothing to unbind");
    let builder = StatusBuilder::new(b, ctx.now())
        .bound_reverse_binding(None)
        .bound(CondStatus::False, Reason::NicNotFound, &message)
        .ready(CondStatus::False, Reason::NicNotFound, &message);
    release(b, ctx, key, builder, Reason::NicNotFound, &message).await
}
