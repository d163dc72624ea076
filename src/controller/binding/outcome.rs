//! What acting on the cloud found, as a value: [`super::act`] returns an [`Outcome`],
//! [`super::record`] turns it into status, events and the requeue. Also what both steps name
//! the same way: the [`Step`] a reconcile is on, the hint every waiting deletion carries, and
//! the one mapping from a cloud failure to a `Ready` reason.

use std::time::Duration;

use crate::api::v1alpha1::{BoundWith, Reason};
use crate::controller::cloud::pairs::{PairsError, PairsRecord};
use crate::ecs::{EcsError, ErrorClass};

/// The step of a reconcile, as events name it (their `action`) and logs say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Recording why a binding waits.
    Reconcile,
    Bind,
    Unbind,
    /// Letting a binding go (its finalizer removed).
    Release,
    /// A read of the cloud, for evidence.
    Read,
}

impl Step {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Step::Reconcile => "Reconcile",
            Step::Bind => "Bind",
            Step::Unbind => "Unbind",
            Step::Release => "Release",
            Step::Read => "Read",
        }
    }
}

/// Said wherever a deletion waits on the cloud: the way out that needs no cloud call.
pub(crate) const ORPHAN_HINT: &str = "set spec.deletionPolicy to Orphan to release the binding without unbinding";

/// What a bind or an unbind did, and what is known after it.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Bound as the spec asks.
    Bound(Bound),
    /// The VIP is off the NIC.
    Unbound(Unbound),
    /// Unbound, but the binding's record of who added the NIC's `1.1.1.1/0` is the only one
    /// until the NIC's other bindings, still binding, have read it.
    HandingOver { message: String },
    /// The NIC is gone, on the cloud's word: nothing to unbind.
    NicGone(NicGone),
    /// A bind that did not succeed: what it may have changed, and why.
    BindFailed(FailedBind),
    /// An unbind (or the read behind one, or a call that could not be made) that did not
    /// succeed; what is known of the VIP is unchanged.
    Failed(Failure),
    /// Nothing was sent: the first call with these credentials is in flight.
    AwaitingProbe(String),
}

impl Outcome {
    /// Whether the cloud may have been changed by the bind this is the outcome of.
    pub(crate) fn may_have_written(&self) -> bool {
        match self {
            Outcome::Bound(bound) => bound.wrote,
            Outcome::BindFailed(failed) => failed.may_have_applied || failed.record.is_some(),
            _ => false,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Bound {
    /// The port the bind answered with (ECS), or the NIC (VPC).
    pub port_id: String,
    /// Where the bind went, with what it wrote (the record a deletion unbinds by).
    pub bound_with: BoundWith,
    /// What is bound, for the conditions.
    pub message: String,
    /// What a write still in flight could undo: the NIC, and the VIP port (VPC).
    pub subjects: Vec<String>,
    /// The cloud was written (a drift check that found everything in place wrote nothing).
    pub wrote: bool,
    /// What a drift check found undone and put back, one note each.
    pub repaired: Vec<String>,
    /// The VIP port the VPC API showed the binding in (VPC only).
    pub observed: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Unbound {
    /// The port the unbind answered with (ECS), or the NIC (VPC).
    pub port_id: String,
    pub message: String,
    /// What a write still in flight could bind again.
    pub subjects: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct NicGone {
    pub message: String,
    /// The credentials may not read VPC ports, seen for the first time: said once.
    pub reads_denied: Option<String>,
}

/// A bind that did not succeed, through either API.
#[derive(Debug)]
pub(crate) struct FailedBind {
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

impl FailedBind {
    /// An ECS bind (or the gate before it) that failed; `bound_with` is where it went.
    pub(crate) fn ecs(e: &EcsError, bound_with: &BoundWith) -> Self {
        Self {
            reason: failure_reason(e, Step::Bind),
            detail: e.to_string(),
            may_have_applied: e.may_have_applied(),
            gone: e.class() == ErrorClass::Gone,
            retry_after: e.retry_after(),
            // The deletion must be able to undo whatever this attempt may have done.
            record: e.may_have_applied().then(|| bound_with.clone()),
        }
    }
}

/// A step that did not succeed, recorded as the `Ready` reason and a Warning event.
#[derive(Debug)]
pub(crate) struct Failure {
    pub reason: Reason,
    pub message: String,
    pub step: Step,
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// An unbind that failed with `error` (classified as `reason`): the deletion waits, and
    /// the message says how to let it go.
    pub(crate) fn unbind(reason: Reason, error: impl std::fmt::Display, retry_after: Option<Duration>) -> Self {
        let hint = if reason == Reason::EndpointNotFound {
            "; this is not the cloud saying the NIC is gone: check the operator's endpoint and region"
        } else {
            ""
        };
        Self {
            reason,
            message: format!("unbind failed: {error}{hint}; {ORPHAN_HINT}"),
            step: Step::Unbind,
            retry_after,
        }
    }

    /// An unbind the cloud (or the gate before it) answered with `e`.
    pub(crate) fn unbind_refused(e: &EcsError) -> Self {
        Self::unbind(failure_reason(e, Step::Unbind), e, e.retry_after())
    }

    /// A VPC binding, and an operator that does not know where the VPC API is: nothing was
    /// sent, and nothing will be until the binding or the operator changes.
    pub(crate) fn no_vpc_endpoint(step: Step) -> Self {
        let hint = if step == Step::Unbind { format!("; {ORPHAN_HINT}") } else { String::new() };
        Self {
            reason: Reason::Invalid,
            message: format!(
                "{}: spec.api is VPC, but the operator has no VPC endpoint (it runs with a fixed --ecs-endpoint and no --vpc-endpoint){hint}",
                step.as_str().to_lowercase()
            ),
            step,
            retry_after: None,
        }
    }
}

/// `bound_with` with what a VPC bind recorded of its edit (the VIP port, the NIC's IP, whether
/// it turned the NIC's source check off).
pub(crate) fn with_pairs(bound_with: BoundWith, record: Option<&PairsRecord>) -> BoundWith {
    match record {
        Some(r) => BoundWith {
            vip_port_id: Some(r.vip_port_id.clone()),
            nic_ip: Some(r.nic_ip.clone()),
            source_check_off_added: r.source_check_off_added,
            ..bound_with
        },
        None => bound_with,
    }
}

/// The `Ready` reason for a cloud failure during `step`.
pub(crate) fn failure_reason(e: &EcsError, step: Step) -> Reason {
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
        ErrorClass::Terminal if step == Step::Unbind => Reason::UnbindFailed,
        ErrorClass::Terminal => Reason::BindFailed,
    }
}

/// The `Ready` reason for a VPC edit that did not succeed during `step`, and how long the cloud
/// asked to wait.
pub(crate) fn pairs_reason(e: &PairsError, step: Step) -> (Reason, Option<Duration>) {
    match e {
        PairsError::Cloud(e) => (failure_reason(e, step), e.retry_after()),
        PairsError::VipNotFound { .. } => (Reason::VipNotFound, None),
        PairsError::Contended { .. } => (Reason::PortContended, None),
        // The intent could not be written: retried like an unanswered call.
        PairsError::NotRecorded { .. } if step == Step::Bind => (Reason::CloudUnavailable, None),
        _ if step == Step::Unbind => (Reason::UnbindFailed, None),
        _ => (Reason::BindFailed, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_waiting_deletion_says_how_to_let_it_go() {
        let failure = Failure::unbind(Reason::UnbindFailed, "HTTP 400", None);
        assert_eq!(failure.message, format!("unbind failed: HTTP 400; {ORPHAN_HINT}"));
        let endpoint = Failure::unbind(Reason::EndpointNotFound, "HTTP 404 APIGW.0101", None);
        assert!(
            endpoint.message.contains("not the cloud saying the NIC is gone")
                && endpoint.message.ends_with(ORPHAN_HINT)
        );
        assert!(Failure::no_vpc_endpoint(Step::Unbind).message.ends_with(ORPHAN_HINT));
        assert!(!Failure::no_vpc_endpoint(Step::Bind).message.contains("Orphan"), "a bind has nothing to release");
        assert!(Failure::no_vpc_endpoint(Step::Bind).message.starts_with("bind: "));
    }

    #[test]
    fn pair_errors_map_to_one_reason_per_step() {
        let contended = PairsError::Contended { port_id: "p".into(), wrote: false };
        assert_eq!(pairs_reason(&contended, Step::Bind).0, Reason::PortContended);
        let vip = PairsError::VipNotFound { vip: "v".into(), network: "n".into() };
        assert_eq!(pairs_reason(&vip, Step::Unbind).0, Reason::VipNotFound);
        let not_recorded = PairsError::NotRecorded { why: "w".into() };
        assert_eq!(pairs_reason(&not_recorded, Step::Bind).0, Reason::CloudUnavailable);
        assert_eq!(pairs_reason(&not_recorded, Step::Unbind).0, Reason::UnbindFailed);
        let outside = PairsError::NicOutsideNetwork { nic: "n".into(), network: "x".into() };
        assert_eq!(pairs_reason(&outside, Step::Bind).0, Reason::BindFailed);
        assert_eq!(pairs_reason(&outside, Step::Unbind).0, Reason::UnbindFailed);
    }
}
