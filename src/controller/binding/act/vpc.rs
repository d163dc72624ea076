//! The VPC binder: a bind puts the NIC's IP into the VIP port's `allowed_address_pairs` (and
//! `1.1.1.1/0` on the NIC's port, the source check off, if it lacks it); an unbind takes exactly
//! that IP out again, and the NIC's `1.1.1.1/0` with it when no other binding needs it. The
//! edits themselves, one port at a time, are [`crate::controller::cloud::pairs`]'s.

use futures::future::BoxFuture;

use crate::api::v1alpha1::{BoundWith, VipBinding};
use crate::controller::binding::outcome::{
    Bound, FailedBind, Failure, NicGone, Outcome, Step, Unbound, pairs_reason, with_pairs,
};
use crate::controller::binding::record;
use crate::controller::binding::status::BoundKnowledge;
use crate::controller::cloud::Admitted;
use crate::controller::cloud::pairs::{
    BoundPairs, CheckOff, NicUsers, PairsError, PairsFailure, PairsRecord, PairsTarget, Recorded,
    Unbound as PairsUnbound,
};
use crate::controller::context::Context;
use crate::controller::error::Error;
use crate::ecs::ErrorClass;

use super::binder::{BindAsk, Binder, Job};

/// How long the intent's status write may hold the NIC's lock.
const INTENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(crate) struct VpcBinder;

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

    fn before_check_off<'a>(&'a self, pairs: &'a PairsRecord) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let Some(bound_with) = self.bound_with else {
                return Err("an unbind never turns the check off".into());
            };
            // Under the NIC's lock: a slow API server must not hold every edit of the NIC.
            let intent = record::intent(self.b, self.ctx, bound_with, self.knowledge, pairs);
            match tokio::time::timeout(INTENT_TIMEOUT, intent).await {
                Err(_) => Err(format!("the status write took longer than {}s", INTENT_TIMEOUT.as_secs())),
                Ok(Ok(())) => Ok(()),
                Ok(Err(Error::Kube(e))) => {
                    let why = e.to_string();
                    *self.not_recorded.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    Err(why)
                }
                Ok(Err(e)) => Err(e.to_string()),
            }
        })
    }
}

impl Binder for VpcBinder {
    fn bind<'a>(&'a self, job: Job<'a>, admitted: Admitted<'a>, ask: BindAsk) -> BoxFuture<'a, Result<Outcome, Error>> {
        Box::pin(async move {
            let b = job.b;
            let t = pairs_target(b);
            let BindAsk { bound_with, knowledge, reassert } = ask;
            let users = Users::new(b, job.ctx, Some(&bound_with), knowledge);
            let result = admitted.bind_pairs(b, (&t, &recorded(b)), &users).await;
            let BoundPairs { record: pairs, wrote_vip, wrote_nic } = match result {
                Ok(bound) => bound,
                Err(failure) => {
                    if let (PairsError::NotRecorded { .. }, Some(e)) = (&failure.error, users.take_error()) {
                        // Nothing was written to the NIC: the reconcile's error policy retries.
                        return Err(Error::Kube(e));
                    }
                    return Ok(Outcome::BindFailed(failed_bind(b, failure, bound_with)));
                }
            };
            let nic = &b.spec.nic_id;
            if wrote_vip || wrote_nic {
                tracing::info!(vip = %b.spec.ip_address, nic = %nic, reassert, "bound through the VPC API");
            }
            let mut repaired = vec![];
            if wrote_vip && reassert {
                repaired.push(format!(
                    "VIP port {} did not hold NIC {nic}'s IP {}: put back",
                    pairs.vip_port_id, pairs.nic_ip
                ));
            }
            if wrote_nic && reassert {
                repaired.push(format!(
                    "NIC {nic}'s port had its source check on again (no 1.1.1.1/0), so VIP {}'s traffic was dropped: turned off again",
                    b.spec.ip_address
                ));
            }
            Ok(Outcome::Bound(Bound {
                port_id: nic.clone(),
                message: format!(
                    "VIP {} is bound to NIC {nic} through the VPC API (NIC IP {} in VIP port {}'s allowed_address_pairs)",
                    b.spec.ip_address, pairs.nic_ip, pairs.vip_port_id
                ),
                subjects: vec![pairs.vip_port_id.clone(), nic.clone()],
                wrote: wrote_vip || wrote_nic,
                repaired,
                observed: Some(pairs.vip_port_id.clone()),
                bound_with: with_pairs(bound_with, Some(&pairs)),
            }))
        })
    }

    fn unbind<'a>(&'a self, job: Job<'a>, admitted: Admitted<'a>) -> BoxFuture<'a, Result<Outcome, Error>> {
        Box::pin(async move {
            let b = job.b;
            let t = pairs_target(b);
            let users = Users::new(b, job.ctx, None, BoundKnowledge::Maybe);
            Ok(match admitted.unbind_pairs(b, (&t, &recorded(b)), &users).await {
                Ok((unbound, check_off)) => unbound_outcome(b, &unbound, &check_off),
                Err(f) => unbind_failed(b, f),
            })
        })
    }
}

fn unbound_outcome(b: &VipBinding, unbound: &PairsUnbound, check_off: &CheckOff) -> Outcome {
    let what = match unbound {
        PairsUnbound::Removed { vip_port_id } => format!("its IP left VIP port {vip_port_id}'s allowed_address_pairs"),
        PairsUnbound::NotThere { vip_port_id } => format!("VIP port {vip_port_id} did not hold its IP"),
        PairsUnbound::VipGone { vip_port_id } => format!("VIP port {vip_port_id} no longer exists"),
    };
    let nic = &b.spec.nic_id;
    let check = match check_off {
        CheckOff::Removed => format!("; NIC {nic}'s source check is on again (1.1.1.1/0 removed)"),
        CheckOff::NotOurs | CheckOff::Absent => String::new(),
        CheckOff::StillNeeded => format!("; NIC {nic} keeps 1.1.1.1/0: another VPC binding on it is bound or binding"),
        CheckOff::StillPaired { vip_port_id } => {
            format!("; NIC {nic} keeps 1.1.1.1/0: VIP port {vip_port_id} still lets its IP through")
        }
        CheckOff::HandingOver { to } => {
            return Outcome::HandingOver {
                message: format!(
                    "VIP {} unbound from NIC {nic} ({what}); NIC {nic} keeps 1.1.1.1/0 for {}, still binding: this binding, whose record says the entry is the operator's, is released once they have read it",
                    b.spec.ip_address,
                    to.join(", ")
                ),
            };
        }
    };
    Outcome::Unbound(Unbound {
        port_id: nic.clone(),
        message: format!("VIP {} unbound from NIC {nic} ({what}){check}", b.spec.ip_address),
        subjects: vec![unbound.vip_port_id().to_string(), nic.clone()],
    })
}

fn unbind_failed(b: &VipBinding, f: PairsFailure) -> Outcome {
    match f.error {
        // Read from the NIC's own port (with no recorded IP to remove): the cloud's word.
        PairsError::Cloud(e) if e.class() == ErrorClass::Gone => Outcome::NicGone(NicGone {
            message: format!(
                "NIC {} not found ({e}; its port read through the VPC API): no pair of it can be on the VIP port, nothing to unbind",
                b.spec.nic_id
            ),
            reads_denied: None,
        }),
        error => {
            let (reason, retry_after) = pairs_reason(&error, Step::Unbind);
            Outcome::Failed(Failure::unbind(reason, &error, retry_after))
        }
    }
}

fn failed_bind(b: &VipBinding, f: PairsFailure, bound_with: BoundWith) -> FailedBind {
    let (reason, retry_after) = pairs_reason(&f.error, Step::Bind);
    let gone = matches!(&f.error, PairsError::Cloud(e) if e.class() == ErrorClass::Gone);
    // A bind that wrote the NIC's check-off changed the cloud even when the VIP port's write
    // was refused: its deletion must unbind (and take the check-off away), not release as
    // "nothing was written".
    let may_have_applied = f.may_have_applied || f.wrote_nic;
    let keep = may_have_applied || f.partial.is_some();
    let detail = match &f.error {
        PairsError::Cloud(e) if gone => format!("{e} (NIC {}'s port, read through the VPC API)", b.spec.nic_id),
        e => e.to_string(),
    };
    FailedBind {
        reason,
        detail,
        may_have_applied,
        gone,
        retry_after,
        record: keep.then(|| with_pairs(bound_with, f.partial.as_ref())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gone_nic_port_is_the_clouds_word_and_other_failures_wait() {
        use crate::api::testing::Fixture;
        let b = VipBinding::test();
        let gone = crate::ecs::EcsError::Api(crate::ecs::ApiError {
            status: 404,
            code: Some("VPC.2502".into()),
            message: String::new(),
            detail_codes: vec![],
            request_id: None,
            retry_after: None,
        });
        assert!(matches!(unbind_failed(&b, PairsError::Cloud(gone).into()), Outcome::NicGone(_)));
        let contended = PairsError::Contended { port_id: "p".into(), wrote: false };
        let Outcome::Failed(f) = unbind_failed(&b, contended.into()) else { panic!("a contended port waits") };
        assert_eq!(f.reason, crate::api::v1alpha1::Reason::PortContended);
    }
}
