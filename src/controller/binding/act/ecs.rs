//! The ECS binder: one signed `PUT` each way. ECS names no VIP in an unbind and has no read, so
//! an unbind answered "this NIC is gone" is confirmed by a read of the NIC's port through the
//! VPC API before it is taken as gone (see [`crate::controller::cloud::evidence`]).

use futures::future::BoxFuture;

use crate::api::v1alpha1::Reason;
use crate::controller::binding::outcome::{
    Bound, FailedBind, Failure, NicGone, ORPHAN_HINT, Outcome, Step, Unbound, failure_reason,
};
use crate::controller::binding::status::BoundKnowledge;
use crate::controller::cloud::Admitted;
use crate::controller::cloud::evidence::{self, Gone};
use crate::controller::error::Error;
use crate::ecs::{BindRequest, EcsError, ErrorClass, UnbindRequest};

use super::binder::{BindAsk, Binder, Job};

pub(crate) struct EcsBinder;

impl Binder for EcsBinder {
    fn bind<'a>(&'a self, job: Job<'a>, admitted: Admitted<'a>, ask: BindAsk) -> BoxFuture<'a, Result<Outcome, Error>> {
        Box::pin(async move {
            let b = job.b;
            let req = BindRequest {
                nic_id: b.spec.nic_id.clone(),
                subnet_id: b.spec.subnet_id.clone(),
                ip_address: b.spec.ip_address.clone(),
                reverse_binding: b.spec.reverse_binding,
            };
            Ok(match admitted.bind(b, &req).await {
                Ok(written) => {
                    // A re-assert of a binding already bound is routine: not logged.
                    if ask.knowledge != BoundKnowledge::Bound || !ask.reassert {
                        tracing::info!(vip = %b.spec.ip_address, nic = %b.spec.nic_id, reassert = ask.reassert, "bound");
                    }
                    Outcome::Bound(Bound {
                        message: format!(
                            "VIP {} is bound to NIC {} (port {})",
                            b.spec.ip_address, b.spec.nic_id, written.port_id
                        ),
                        port_id: written.port_id,
                        bound_with: ask.bound_with,
                        subjects: vec![b.spec.nic_id.clone()],
                        // No read first: every bind is a write.
                        wrote: true,
                        repaired: vec![],
                        observed: None,
                    })
                }
                Err(e) => Outcome::BindFailed(FailedBind::ecs(&e, &ask.bound_with)),
            })
        })
    }

    fn unbind<'a>(&'a self, job: Job<'a>, admitted: Admitted<'a>) -> BoxFuture<'a, Result<Outcome, Error>> {
        Box::pin(async move {
            let b = job.b;
            let req = UnbindRequest { nic_id: b.spec.nic_id.clone(), reverse_binding: b.spec.reverse_binding };
            tracing::trace!("unbinding");
            Ok(match admitted.unbind(b, &req).await {
                Ok(written) => {
                    tracing::trace!("unbound");
                    let port_id = written.port_id;
                    Outcome::Unbound(Unbound {
                        message: format!(
                            "VIP {} unbound from NIC {} (port {port_id})",
                            b.spec.ip_address, b.spec.nic_id
                        ),
                        port_id,
                        subjects: vec![b.spec.nic_id.clone()],
                    })
                }
                Err(e) if e.class() == ErrorClass::Gone => nic_gone(job, e).await,
                Err(e) => Outcome::Failed(Failure::unbind_refused(&e)),
            })
        })
    }
}

/// ECS says the NIC is gone: gone only once the VPC API agrees (its port reads 404
/// `VPC.2502`), or when no read is possible (the ECS answer is then the evidence, as it was
/// before reads). A port still there, or a read that proves nothing, holds the binding.
async fn nic_gone(job: Job<'_>, e: EcsError) -> Outcome {
    let nic = &job.b.spec.nic_id;
    let gone = if job.ctx.cloud.has_vpc() {
        match job.ctx.cloud.admit(job.target) {
            Ok(admitted) => admitted.confirm_gone(nic).await,
            Err(refused) => Gone::Unknown(refused),
        }
    } else {
        evidence::no_reads()
    };
    let (why, reads_denied) = match gone {
        Gone::Confirmed => ("confirmed by the VPC API: its port reads 404 VPC.2502".to_string(), None),
        Gone::Unconfirmed { why, newly_denied } => {
            let note = newly_denied.then(|| format!("{why}: releases rest on the ECS answer alone"));
            (why, note)
        }
        Gone::Contradicted { port_id } => {
            return Outcome::Failed(Failure {
                reason: Reason::GoneUnconfirmed,
                message: format!(
                    "unbind: ECS says NIC {nic} is gone ({e}), but the VPC API still has its port {port_id}: the VIP may still be bound, so the binding is not released; {ORPHAN_HINT}"
                ),
                step: Step::Unbind,
                retry_after: None,
            });
        }
        Gone::Unknown(read) => {
            return Outcome::Failed(Failure {
                reason: failure_reason(&read, Step::Unbind),
                message: format!(
                    "unbind: ECS says NIC {nic} is gone ({e}); confirming it with the VPC API failed ({read}), so the binding is not released yet"
                ),
                step: Step::Unbind,
                retry_after: read.retry_after(),
            });
        }
    };
    Outcome::NicGone(NicGone { message: format!("NIC {nic} not found ({e}; {why}): nothing to unbind"), reads_denied })
}
