//! Evidence before a release: when ECS answers an unbind with "this NIC is gone", the NIC's port
//! is read from the VPC API before the binding is let go. A 404 `VPC.2502` confirms it; a port
//! that is still there contradicts it (the VIP may still be bound: hold); an answer that proves
//! nothing (5xx, a lost response, a gateway 404) is unknown (hold and retry, never "gone").
//!
//! Reads are optional: credentials without VPC read permission (403 on a read) are noted once
//! per access key and project, said once (a Warning event and a metric), and releases then rest
//! on the ECS answer alone, as before reads existed. The note expires, so a permission granted
//! later is used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::ecs::vpc::VpcApi;
use crate::ecs::{CloudTarget, EcsError, ErrorClass};

/// How long a refused read permission is believed before reads are tried again.
const DENIAL_KEPT: Duration = Duration::from_secs(600);
/// Keys of refused permissions remembered at most (keys rotate; each entry is small).
const MAX_DENIALS: usize = 1024;

/// What the VPC API says about a NIC the ECS API called gone.
#[derive(Debug)]
pub enum Gone {
    /// Its port reads 404 `VPC.2502`: released on the cloud's own word, twice.
    Confirmed,
    /// No read was possible (no VPC client, or no permission): the ECS answer stands alone.
    /// `newly_denied` is true the first time a permission refusal is seen for these credentials.
    Unconfirmed { why: String, newly_denied: bool },
    /// The port is still there: the VIP may still be bound to it.
    Contradicted { port_id: String },
    /// The read did not answer with anything that proves either way.
    Unknown(EcsError),
}

/// The VPC reads, and the credentials they were refused for.
pub struct Reads {
    api: Arc<dyn VpcApi>,
    denied: Mutex<HashMap<(String, String), Instant>>,
}

impl Reads {
    pub fn new(api: Arc<dyn VpcApi>) -> Self {
        Self { api, denied: Mutex::default() }
    }

    fn denied_since(&self, target: &CloudTarget) -> bool {
        let key = (target.credentials.access_key().to_string(), target.project_id.clone());
        let mut denied = self.denied.lock().unwrap_or_else(|p| p.into_inner());
        match denied.get(&key) {
            Some(since) if since.elapsed() < DENIAL_KEPT => true,
            Some(_) => {
                denied.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Notes a refusal; true when it is news.
    fn deny(&self, target: &CloudTarget) -> bool {
        let key = (target.credentials.access_key().to_string(), target.project_id.clone());
        let mut denied = self.denied.lock().unwrap_or_else(|p| p.into_inner());
        if denied.len() >= MAX_DENIALS {
            denied.retain(|_, since| since.elapsed() < DENIAL_KEPT);
        }
        denied.insert(key, Instant::now()).is_none()
    }

    /// Reads the NIC's port (its ID is the NIC ID).
    pub async fn confirm_gone(&self, target: &CloudTarget, nic_id: &str) -> Gone {
        if self.denied_since(target) {
            return Gone::Unconfirmed {
                why: format!(
                    "not confirmed: access key {} may not read VPC ports in project {} (vpc:ports:get)",
                    target.credentials.key_id(),
                    target.project_id
                ),
                newly_denied: false,
            };
        }
        match self.api.get_port(target, nic_id).await {
            Err(e) if e.class() == ErrorClass::Gone => Gone::Confirmed,
            Ok(port) => Gone::Contradicted { port_id: port.id },
            Err(e) if e.status() == Some(403) => Gone::Unconfirmed {
                why: format!(
                    "not confirmed: access key {} may not read VPC ports in project {} (vpc:ports:get; {e})",
                    target.credentials.key_id(),
                    target.project_id
                ),
                newly_denied: self.deny(target),
            },
            Err(e) => Gone::Unknown(e),
        }
    }
}

/// Without a VPC client (tests that drive a reconcile without one).
pub fn no_reads() -> Gone {
    Gone::Unconfirmed { why: "not confirmed: no VPC client".into(), newly_denied: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::testing::FakeCloud;
    use crate::ecs::vpc::Port;
    use crate::ecs::{Credentials, Operation, Service};

    use crate::ecs::error::coded as api;

    fn port(id: &str) -> Port {
        serde_json::from_value(serde_json::json!({"id": id})).unwrap()
    }

    fn target() -> CloudTarget {
        CloudTarget {
            region: "r".into(),
            project_id: "p".into(),
            credentials: Credentials::new("AK", "sk", None).unwrap(),
        }
    }

    /// Reads of the port `nic` answer `reads`, in order; any other VPC call fails the test:
    /// evidence never lists nor writes.
    fn reading(reads: Vec<Result<Port, EcsError>>) -> Reads {
        let cloud = FakeCloud::new();
        cloud.only_scripted(Service::Vpc);
        cloud.script(Operation::GetPort, "nic", reads);
        Reads::new(cloud)
    }

    #[tokio::test]
    async fn only_the_vpc_api_saying_so_confirms_a_nic_is_gone() {
        let reads = reading(vec![
            Err(api(404, "VPC.2502")),
            Ok(port("nic")),
            Err(api(404, "APIGW.0101")),
            Err(api(503, "VPC.0001")),
        ]);
        assert!(matches!(reads.confirm_gone(&target(), "nic").await, Gone::Confirmed));
        assert!(
            matches!(reads.confirm_gone(&target(), "nic").await, Gone::Contradicted { port_id } if port_id == "nic")
        );
        assert!(matches!(reads.confirm_gone(&target(), "nic").await, Gone::Unknown(_)), "a gateway 404 proves nothing");
        assert!(matches!(reads.confirm_gone(&target(), "nic").await, Gone::Unknown(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_read_permission_is_said_once_then_believed_for_a_while() {
        let reads = reading(vec![Err(api(403, "VPC.0003")), Err(api(404, "VPC.2502"))]);
        assert!(matches!(reads.confirm_gone(&target(), "nic").await, Gone::Unconfirmed { newly_denied: true, .. }));
        // No read is sent while the refusal is believed.
        assert!(matches!(reads.confirm_gone(&target(), "nic").await, Gone::Unconfirmed { newly_denied: false, .. }));
        tokio::time::advance(DENIAL_KEPT).await;
        assert!(matches!(reads.confirm_gone(&target(), "nic").await, Gone::Confirmed), "tried again later");
    }
}

/// What two reads show of a binding, for `managementPolicy: Observe`: the NIC's port and the
/// VIP's port (found by the network and address, as a bind finds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The NIC's port read 404 `VPC.2502`: the cloud's word that it does not exist.
    NicGone,
    /// The NIC has no IPv4 address.
    NicWithoutIp,
    /// No port holds the VIP's address in the network, or several do, or it is no VIP port.
    NoVipPort(String),
    Ports {
        nic_ip: String,
        check_off: bool,
        vip_port_id: String,
        /// The VIP port's pairs hold the NIC's IP.
        paired: bool,
    },
}

impl Reads {
    /// Reads a binding's two ports (two calls; no write). `Err`: a read failed (a refusal, a
    /// timeout, a 403): nothing is known.
    pub async fn observe(
        &self,
        target: &CloudTarget,
        nic_id: &str,
        network: &str,
        vip: &str,
    ) -> Result<Seen, EcsError> {
        let nic = match self.api.get_port(target, nic_id).await {
            Ok(port) => port,
            Err(e) if e.class() == crate::ecs::ErrorClass::Gone => return Ok(Seen::NicGone),
            Err(e) => return Err(e),
        };
        let Some(nic_ip) =
            nic.fixed_ips.iter().map(|f| f.ip_address.as_str()).find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        else {
            return Ok(Seen::NicWithoutIp);
        };
        let check_off = nic.allowed_address_pairs.iter().any(|p| p.ip_address == super::pairs::SOURCE_CHECK_OFF);
        let filter = crate::ecs::vpc::PortFilter {
            network_id: Some(network.into()),
            ip_addresses: vec![vip.into()],
            ..Default::default()
        };
        let ports = match self.api.list_ports(target, &filter).await {
            Ok(ports) => ports,
            // A listing's 404 says nothing about any one port.
            Err(e) => return Err(e),
        };
        use super::vipport::Failed;
        let port = match super::vipport::the_vip_port(ports, network, vip) {
            Ok(port) => port,
            Err(Failed::NotFound) => {
                return Ok(Seen::NoVipPort(format!("no VIP port has address {vip} in network {network}")));
            }
            Err(Failed::NotAVip { port_id, owner }) => {
                return Ok(Seen::NoVipPort(format!(
                    "address {vip} belongs to port {port_id}, which is not a virtual IP (device_owner {owner:?})"
                )));
            }
            Err(Failed::Ambiguous { count }) => {
                return Ok(Seen::NoVipPort(format!("{count} ports have address {vip} in network {network}")));
            }
            // Not answers of a check: a listing is neither a cloud error nor contended here.
            Err(Failed::Cloud(e)) => return Err(e),
            Err(Failed::Contended { .. }) => {
                return Err(EcsError::InvalidRequest("a VIP port check cannot be contended".into()));
            }
        };
        let paired = port.allowed_address_pairs.iter().any(|p| p.ip_address == nic_ip);
        Ok(Seen::Ports { nic_ip: nic_ip.to_string(), check_off, vip_port_id: port.id, paired })
    }
}
