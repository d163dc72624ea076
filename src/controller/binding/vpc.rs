//! The bind and unbind steps of one reconcile for `api: VPC` bindings: the same ordering rules
//! as the ECS steps in [`crate::controller::binding::reconcile`] (finalizer before the first write, status before
//! the finalizer goes), with the edits of [`crate::controller::cloud::pairs`] in place of the ECS call.

use kube::runtime::controller::Action;

use crate::api::v1alpha1::{BoundWith, Reason, VipBinding};
use crate::ecs::{CloudTarget, EcsError, ErrorClass};

use crate::controller::cloud::Admitted;
use crate::controller::context::Context;
use crate::controller::state::key::ObjectKey;
use futures::future::BoxFuture;

use crate::controller::binding::reconcile::{
    Error, FailedBind, Failure, await_probe, failure_reason, record_bind_failure, record_failure, release,
    unbound_inside_horizon,
};
use crate::controller::binding::status::{BoundKnowledge, CondStatus, StatusBuilder};
use crate::controller::cloud::pairs::{
    BoundPairs, CheckOff, NicUsers, PairsError, PairsFailure, PairsRecord, PairsTarget, PortPairs, Recorded, Unbound,
};
use crate::controller::state::inflight::Direction;

/// How long an observation of a binding found in place stands before it is written again.
pub const OBSERVATION_REFRESH: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether the binding's observation is missing or older than [`OBSERVATION_REFRESH`].
pub fn observation_stale(b: &VipBinding, now: jiff::Timestamp) -> bool {
    let refresh = jiff::SignedDuration::try_from(OBSERVATION_REFRESH).unwrap_or(jiff::SignedDuration::MAX);
    b.status.as_ref().and_then(|s| s.observed.as_ref()).is_none_or(|o| now.duration_since(o.at.0) >= refresh)
}

/// Records that a VPC binding cannot be bound or unbound (`action`) by an operator that does not
/// know where the VPC API is. Nothing was sent; it waits for a change.
pub(super) async fn no_vpc_endpoint(
    b: &VipBinding,
    ctx: &Context,
    key: &ObjectKey,
    action: &'static str,
) -> Result<Action, Error> {
    let hint =
        if action == "Unbind" { "; set spec.deletionPolicy to Orphan to release it without unbinding" } else { "" };
    let failure = Failure {
        reason: Reason::Invalid,
        message: format!(
            "{}: spec.api is VPC, but the operator has no VPC endpoint (it runs with a fixed --ecs-endpoint and no --vpc-endpoint){hint}",
            action.to_lowercase()
        ),
        action,
        retry_after: None,
    };
    record_failure(b, ctx, key, StatusBuilder::new(b, ctx.now()).bound_unchanged(), failure).await
}

fn pairs_target(b: &VipBinding) -> PairsTarget<'_> {
    PairsTarget {
        nic_id: &b.spec.nic_id,
        network_id: &b.spec.subnet_id,
        vip: &b.spec.ip_address,
        with_mac: b.spec.reverse_binding,
    }
}

/// What the binding's record says an earlier VPC bind did.
fn recorded(b: &VipBinding) -> Recorded {
    match b.status.as_ref().and_then(|s| s.bound_with.as_ref()) {
        Some(w) => Recorded {
            vip_port_id: w.vip_port_id.clone(),
            nic_ip: w.nic_ip.clone(),
            source_check_off_added: w.source_check_off_added,
        },
        None => Recorded::default(),
    }
}

/// A bind about to be sent: leave from the gate, the record it will leave, what was known.
pub(super) struct BindStep<'a> {
    pub admitted: Admitted<'a>,
    pub pairs: &'a PortPairs,
    pub bound_with: BoundWith,
    pub knowledge: BoundKnowledge,
    pub reassert: bool,
}

/// The bindings on the NIC, as a VPC edit asks about them under the NIC's lock.
struct Users<'a> {
    b: &'a VipBinding,
    ctx: &'a Context,
    /// Where the bind goes, for the intent record.
    bound_with: Option<&'a BoundWith>,
    knowledge: BoundKnowledge,
    /// The status write of the intent failed: a Kubernetes failure, returned as the
    /// reconcile's error once the edit has given up.
    not_recorded: std::sync::Mutex<Option<kube::Error>>,
}

impl<'a> Users<'a> {
    fn new(b: &'a VipBinding, ctx: &'a Context, bound_with: Option<&'a BoundWith>, knowledge: BoundKnowledge) -> Self {
        Self { b, ctx, bound_with, knowledge, not_recorded: std::sync::Mutex::new(None) }
    }

    fn take_error(&self) -> Option<kube::Error> {
        self.not_recorded.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl NicUsers for Users<'_> {
    fn others_need_check_off(&self) -> bool {
        self.ctx.index.others_need_check_off(self.b)
    }

    fn needers_without_record(&self) -> Vec<String> {
        self.ctx.index.others_needing_unrecorded(self.b)
    }

    fn added_by_another(&self) -> bool {
        self.ctx.index.source_check_off_by_another(self.b)
    }

    fn before_check_off<'a>(&'a self, record: &'a PairsRecord) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let Some(bound_with) = self.bound_with else {
                return Err("an unbind never turns the check off".into());
            };
            let b = self.b;
            let builder =
                StatusBuilder::new(b, self.ctx.now()).bound_with(Some(with_record(bound_with.clone(), Some(record))));
            let message = format!(
                "binding: NIC {}'s source check goes off (1.1.1.1/0) before its IP {} goes into VIP port {}",
                b.spec.nic_id, record.nic_ip, record.vip_port_id
            );
            let builder = match self.knowledge {
                BoundKnowledge::Bound => builder.bound_unchanged(),
                _ => builder.bound(CondStatus::Unknown, Reason::Indeterminate, &message),
            };
            if let Some(status) = builder.build() {
                // Under the NIC's lock: a slow API server must not hold every edit of the NIC.
                let written = tokio::time::timeout(INTENT_TIMEOUT, self.ctx.record(b, &status)).await;
                let Ok(written) = written else {
                    return Err(format!("the status write took longer than {}s", INTENT_TIMEOUT.as_secs()));
                };
                match written {
                    Ok(()) => {}
                    Err(Error::Kube(e)) => {
                        let why = e.to_string();
                        *self.not_recorded.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        return Err(why);
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        })
    }
}

pub(super) async fn bind(b: &VipBinding, ctx: &Context, key: &ObjectKey, step: BindStep<'_>) -> Result<Action, Error> {
    let t = pairs_target(b);
    let BindStep { admitted, pairs, bound_with, knowledge, reassert } = step;
    let recorded = recorded(b);
    let users = Users::new(b, ctx, Some(&bound_with), knowledge);
    match admitted.bind_pairs(b, pairs, (&t, &recorded), &users).await {
        Ok(BoundPairs { record, wrote_vip, wrote_nic }) => {
            let wrote = wrote_vip || wrote_nic;
            // A drift check that found the pair in place wrote nothing and re-asserted nothing.
            ctx.asserted(b, key, reassert && wrote);
            let recheck = ctx.bound_inside_horizon(key, &[&record.vip_port_id, &b.spec.nic_id]);
            let message = format!(
                "VIP {} is bound to NIC {} through the VPC API (NIC IP {} in VIP port {}'s allowed_address_pairs){}",
                b.spec.ip_address,
                b.spec.nic_id,
                record.nic_ip,
                record.vip_port_id,
                if recheck.is_some() { RECHECK_NOTE } else { "" }
            );
            let now = ctx.now();
            let mut builder = StatusBuilder::new(b, now.clone())
                .port_id(Some(b.spec.nic_id.clone()))
                .bound_reverse_binding(Some(b.spec.reverse_binding))
                .bound_with(Some(with_record(bound_with, Some(&record))))
                .bound(CondStatus::True, Reason::Bound, &message)
                .ready(CondStatus::True, Reason::Bound, &message);
            // A re-bind that found the pair in place refreshes the observation only hourly.
            if wrote || !reassert || observation_stale(b, now.0) {
                builder = builder.observed(true, &record.vip_port_id, "bind");
            }
            let next = builder.build();
            if let Some(status) = next {
                ctx.record(b, &status).await?;
            }
            if wrote {
                tracing::info!(vip = %b.spec.ip_address, nic = %b.spec.nic_id, reassert, "bound through the VPC API");
            }
            if wrote_vip && reassert {
                let note = format!(
                    "VIP port {} did not hold NIC {}'s IP {}: put back",
                    record.vip_port_id, b.spec.nic_id, record.nic_ip
                );
                ctx.kube.event(b, true, Reason::DriftRepaired, "Bind", note).await;
            }
            if wrote_nic && reassert {
                let note = format!(
                    "NIC {}'s port had its source check on again (no 1.1.1.1/0), so VIP {}'s traffic was dropped: turned off again",
                    b.spec.nic_id, b.spec.ip_address
                );
                ctx.kube.event(b, true, Reason::DriftRepaired, "Bind", note).await;
            }
            Ok(ctx.after_success(b, key))
        }
        Err(failure) => {
            if let (PairsError::NotRecorded { .. }, Some(e)) = (&failure.error, users.take_error()) {
                // Nothing was written to the NIC: the reconcile's error policy retries.
                return Err(Error::Kube(e));
            }
            let failed = failed_bind(b, failure, bound_with);
            record_bind_failure(b, ctx, key, knowledge, failed).await
        }
    }
}

/// How long the intent's status write may hold the NIC's lock.
const INTENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Said in a Bound message when the bind is checked again after the horizon.
pub(super) const RECHECK_NOTE: &str =
    "; an earlier write that may still land could undo it, so it is checked again once that can no longer happen";

fn with_record(bound_with: BoundWith, record: Option<&crate::controller::cloud::pairs::PairsRecord>) -> BoundWith {
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

fn failed_bind(b: &VipBinding, f: PairsFailure, bound_with: BoundWith) -> FailedBind {
    let (reason, retry_after, gone) = match &f.error {
        PairsError::Cloud(e) => (failure_reason(e, false), e.retry_after(), e.class() == ErrorClass::Gone),
        PairsError::VipNotFound { .. } => (Reason::VipNotFound, None, false),
        PairsError::Contended { .. } => (Reason::PortContended, None, false),
        PairsError::NotAVip { .. } | PairsError::Ambiguous { .. } | PairsError::NicOutsideNetwork { .. } => {
            (Reason::BindFailed, None, false)
        }
        // Only without a Kubernetes error to return (see `bind`): retried like an unanswered call.
        PairsError::NotRecorded { .. } => (Reason::CloudUnavailable, None, false),
    };
    // A bind that wrote the NIC's check-off changed the cloud even when the VIP port's write
    // was refused: its deletion must unbind (and take the check-off away), not release as
    // "nothing was written".
    let may_have_applied = f.may_have_applied || f.wrote_nic;
    let keep = may_have_applied || f.partial.is_some();
    let detail = match &f.error {
        PairsError::Cloud(e) if e.class() == ErrorClass::Gone => {
            format!("{e} (NIC {}'s port, read through the VPC API)", b.spec.nic_id)
        }
        e => e.to_string(),
    };
    FailedBind {
        reason,
        detail,
        may_have_applied,
        gone,
        retry_after,
        record: keep.then(|| with_record(bound_with, f.partial.as_ref())),
    }
}

pub(super) async fn unbind(
    b: &VipBinding,
    ctx: &Context,
    key: &ObjectKey,
    target: &CloudTarget,
) -> Result<Action, Error> {
    let Some(pairs) = &ctx.pairs else { return no_vpc_endpoint(b, ctx, key, "Unbind").await };
    let admitted = match ctx.cloud.admit(target) {
        Ok(admitted) => admitted,
        Err(EcsError::AwaitingProbe(why)) => return Ok(await_probe(&why)),
        Err(e) => return unbind_failed(b, ctx, key, PairsFailure::from(PairsError::Cloud(e))).await,
    };
    let t = pairs_target(b);
    let users = Users::new(b, ctx, None, BoundKnowledge::Maybe);
    match admitted.unbind_pairs(b, pairs, (&t, &recorded(b)), &users).await {
        Ok((outcome, check_off)) => {
            let what = match &outcome {
                Unbound::Removed { vip_port_id } => {
                    format!("its IP left VIP port {vip_port_id}'s allowed_address_pairs")
                }
                Unbound::NotThere { vip_port_id } => format!("VIP port {vip_port_id} did not hold its IP"),
                Unbound::VipGone { vip_port_id } => format!("VIP port {vip_port_id} no longer exists"),
            };
            let nic = &b.spec.nic_id;
            let check = match &check_off {
                CheckOff::Removed => format!("; NIC {nic}'s source check is on again (1.1.1.1/0 removed)"),
                CheckOff::NotOurs => String::new(),
                CheckOff::StillNeeded => {
                    format!("; NIC {nic} keeps 1.1.1.1/0: another VPC binding on it is bound or binding")
                }
                CheckOff::StillPaired { vip_port_id } => {
                    format!("; NIC {nic} keeps 1.1.1.1/0: VIP port {vip_port_id} still lets its IP through")
                }
                CheckOff::Absent => String::new(),
                CheckOff::HandingOver { to } => {
                    let message = format!(
                        "VIP {} unbound from NIC {nic} ({what}); NIC {nic} keeps 1.1.1.1/0 for {}, still binding: this binding, whose record says the entry is the operator's, is released once they have read it",
                        b.spec.ip_address,
                        to.join(", ")
                    );
                    return handing_over(b, ctx, &message).await;
                }
            };
            let message = format!("VIP {} unbound from NIC {nic} ({what}){check}", b.spec.ip_address);
            if let Some(until) = ctx.writes.overtaken_until(&[outcome.vip_port_id(), nic], Direction::Unbind) {
                return unbound_inside_horizon(b, ctx, &message, until).await;
            }
            let builder = StatusBuilder::new(b, ctx.now())
                .port_id(Some(b.spec.nic_id.clone()))
                .bound_reverse_binding(None)
                .bound_with(None)
                .bound(CondStatus::False, Reason::Unbound, &message)
                .ready(CondStatus::False, Reason::Unbound, &message);
            release(b, ctx, key, builder, Reason::Unbound, &message).await
        }
        Err(f) => unbind_failed(b, ctx, key, f).await,
    }
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
    Ok(Action::requeue(std::time::Duration::from_secs(2)))
}

async fn unbind_failed(b: &VipBinding, ctx: &Context, key: &ObjectKey, f: PairsFailure) -> Result<Action, Error> {
    let nic = &b.spec.nic_id;
    match f.error {
        // Read from the NIC's own port (with no recorded IP to remove): the cloud's word.
        PairsError::Cloud(e) if e.class() == ErrorClass::Gone => {
            let message = format!(
                "NIC {nic} not found ({e}; its port read through the VPC API): no pair of it can be on the VIP port, nothing to unbind"
            );
            let builder = StatusBuilder::new(b, ctx.now())
                .bound_reverse_binding(None)
                .bound(CondStatus::False, Reason::NicNotFound, &message)
                .ready(CondStatus::False, Reason::NicNotFound, &message);
            release(b, ctx, key, builder, Reason::NicNotFound, &message).await
        }
        error => {
            let (reason, retry_after) = match &error {
                PairsError::Cloud(e) => (failure_reason(e, true), e.retry_after()),
                PairsError::VipNotFound { .. } => (Reason::VipNotFound, None),
                PairsError::Contended { .. } => (Reason::PortContended, None),
                PairsError::NotRecorded { .. } => (Reason::UnbindFailed, None),
                _ => (Reason::UnbindFailed, None),
            };
            let failure = Failure {
                reason,
                message: format!(
                    "unbind failed: {error}; set spec.deletionPolicy to Orphan to release the binding without unbinding"
                ),
                action: "Unbind",
                retry_after,
            };
            record_failure(b, ctx, key, StatusBuilder::new(b, ctx.now()).bound_unchanged(), failure).await
        }
    }
}
