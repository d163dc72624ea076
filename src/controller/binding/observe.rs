//! `managementPolicy: Observe`: what two reads of the cloud say about a binding, judged without
//! guessing. Pure: the reads are made by the driver (`reconcile.rs`) through the gated cloud,
//! and the verdict is recorded by `record.rs`.

use crate::api::v1alpha1::{BindApi, Reason, VipBinding};
use crate::controller::binding::status::CondStatus;
use crate::controller::cloud::evidence::Seen;
use crate::ecs::EcsError;

/// What an observation records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The `Bound` condition: whether the VIP is bound to the NIC, as read.
    pub bound: CondStatus,
    /// `Observed` (the cloud matches the spec), `ObservedDrift` (it does not) or
    /// `Unobservable` (it cannot be told).
    pub reason: Reason,
    pub message: String,
    /// What the VIP port showed (`status.observed`), when it was read.
    pub vip_port: Option<(bool, String)>,
}

impl Observation {
    fn new(bound: CondStatus, reason: Reason, message: String, vip_port: Option<(bool, String)>) -> Self {
        Self { bound, reason, message, vip_port }
    }
}

/// The verdict on `seen` for binding `b` bound through `api`.
pub fn judge(b: &VipBinding, api: BindApi, seen: Result<Seen, EcsError>) -> Observation {
    let (vip, nic) = (&b.spec.ip_address, &b.spec.nic_id);
    let seen = match seen {
        Ok(seen) => seen,
        Err(e) if e.status() == Some(403) => {
            return Observation::new(
                CondStatus::Unknown,
                Reason::Unobservable,
                format!("cannot be observed: the credentials may not read VPC ports ({e}); nothing is guessed"),
                None,
            );
        }
        Err(e) => {
            return Observation::new(
                CondStatus::Unknown,
                Reason::Unobservable,
                format!("the cloud could not be read ({e}); read again shortly"),
                None,
            );
        }
    };
    match seen {
        Seen::NicGone => Observation::new(
            CondStatus::False,
            Reason::ObservedDrift,
            format!("NIC {nic} does not exist (its port reads 404 VPC.2502): VIP {vip} cannot be bound to it"),
            None,
        ),
        Seen::NicWithoutIp => Observation::new(
            CondStatus::False,
            Reason::ObservedDrift,
            format!("NIC {nic} has no IPv4 address: VIP {vip} cannot be bound to it through the VPC API"),
            None,
        ),
        Seen::NoVipPort(why) => Observation::new(CondStatus::False, Reason::ObservedDrift, why, None),
        Seen::Ports { nic_ip, check_off, vip_port_id, paired } => {
            let port = Some((paired, vip_port_id.clone()));
            match (api, paired, check_off) {
                (_, true, true) => Observation::new(
                    CondStatus::True,
                    Reason::Observed,
                    format!(
                        "VIP {vip} is bound to NIC {nic}: VIP port {vip_port_id} lets NIC IP {nic_ip} through and the NIC carries 1.1.1.1/0 (observed; nothing written)"
                    ),
                    port,
                ),
                (_, true, false) => Observation::new(
                    CondStatus::False,
                    Reason::ObservedDrift,
                    format!(
                        "VIP port {vip_port_id} lets NIC IP {nic_ip} through, but NIC {nic} has its source check on (no 1.1.1.1/0), so the VPC drops VIP {vip}'s traffic; not repaired under Observe"
                    ),
                    port,
                ),
                (BindApi::Vpc, false, _) => Observation::new(
                    CondStatus::False,
                    Reason::ObservedDrift,
                    format!(
                        "VIP port {vip_port_id} does not let NIC {nic}'s IP {nic_ip} through: VIP {vip} is not bound to it; not repaired under Observe"
                    ),
                    port,
                ),
                // The ECS API has no read, and what its bind leaves on the VIP port without
                // reverseBinding is not documented: absence proves nothing.
                (BindApi::Ecs, false, _) => Observation::new(
                    CondStatus::Unknown,
                    Reason::Unobservable,
                    format!(
                        "cannot be observed: the ECS API has no read, and VIP port {vip_port_id} does not show NIC IP {nic_ip} (an ECS bind without reverseBinding need not put it there); nothing is guessed"
                    ),
                    port,
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::Fixture;

    fn ports(paired: bool, check_off: bool) -> Result<Seen, EcsError> {
        Ok(Seen::Ports { nic_ip: "10.0.0.5".into(), check_off, vip_port_id: "vp".into(), paired })
    }

    #[test]
    fn a_pair_in_place_is_observed_and_anything_less_is_drift_or_unknown() {
        let b = VipBinding::test();
        let o = judge(&b, BindApi::Vpc, ports(true, true));
        assert_eq!((o.bound, o.reason, o.vip_port), (CondStatus::True, Reason::Observed, Some((true, "vp".into()))));
        let o = judge(&b, BindApi::Vpc, ports(false, true));
        assert_eq!((o.bound, o.reason), (CondStatus::False, Reason::ObservedDrift));
        assert!(o.message.contains("does not let"), "{}", o.message);
        let o = judge(&b, BindApi::Vpc, ports(true, false));
        assert_eq!((o.bound, o.reason), (CondStatus::False, Reason::ObservedDrift));
        assert!(o.message.contains("source check on"), "{}", o.message);
        assert_eq!(judge(&b, BindApi::Vpc, Ok(Seen::NicGone)).reason, Reason::ObservedDrift);
    }

    #[test]
    fn an_ecs_binding_is_never_guessed_unbound_and_failed_reads_say_unknown() {
        let b = VipBinding::test();
        assert_eq!(judge(&b, BindApi::Ecs, ports(true, true)).reason, Reason::Observed);
        let o = judge(&b, BindApi::Ecs, ports(false, true));
        assert_eq!((o.bound, o.reason), (CondStatus::Unknown, Reason::Unobservable));
        let denied = crate::ecs::error::coded(403, "VPC.0015");
        let o = judge(&b, BindApi::Vpc, Err(denied));
        assert_eq!((o.bound, o.reason), (CondStatus::Unknown, Reason::Unobservable));
        assert!(o.message.contains("may not read"), "{}", o.message);
        let o = judge(&b, BindApi::Vpc, Err(crate::ecs::error::coded(503, "VPC.0001")));
        assert_eq!((o.bound, o.reason), (CondStatus::Unknown, Reason::Unobservable));
    }
}
