//! The VPC ports API (Huawei's current API for virtual IPs): the wire model and the narrow seam
//! the controller reads the cloud through. See `../shared/reference/huawei-vpc-ports.md`.
//!
//! A VIP is a port of its own (`device_owner: neutron:VIP_PORT`); it is bound to a server NIC
//! when the VIP port's `allowed_address_pairs` holds the NIC's own fixed IP. A NIC's port ID is
//! the NIC ID. A port that does not exist answers 404 `VPC.2502`: the cloud's own word that the
//! NIC is gone (class [`ErrorClass::Gone`](super::ErrorClass::Gone)).

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{CloudTarget, EcsError};

/// `device_owner` of a virtual IP's port.
pub const VIP_PORT_OWNER: &str = "neutron:VIP_PORT";

/// Listing pages hold at most this many ports (Huawei's usual maximum and default).
pub const MAX_PAGE: u32 = 2000;

/// A port as the VPC API returns it (only the fields the operator reads; others are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub id: String,
    #[serde(default)]
    pub device_owner: String,
    #[serde(default)]
    pub device_id: String,
    #[serde(default)]
    pub network_id: String,
    #[serde(default)]
    pub fixed_ips: Vec<FixedIp>,
    #[serde(default)]
    pub allowed_address_pairs: Vec<AddressPair>,
    #[serde(default)]
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedIp {
    #[serde(default)]
    pub subnet_id: String,
    pub ip_address: String,
}

/// An entry of `allowed_address_pairs`: an address (or CIDR, such as `1.1.1.1/0`) and an
/// optional MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPair {
    pub ip_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
}

/// `{"port": {...}}`, the envelope of a single port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortEnvelope {
    pub port: Port,
}

/// `{"ports": [...]}`, a page of a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortList {
    pub ports: Vec<Port>,
}

/// Filters of a port listing (`GET /v1/{project_id}/ports?...`); empty ones are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortFilter {
    pub device_owner: Option<String>,
    pub network_id: Option<String>,
    /// `fixed_ips=ip_address=X`.
    pub ip_address: Option<String>,
    /// At most [`MAX_PAGE`].
    pub limit: u32,
    /// The last port ID of the previous page.
    pub marker: Option<String>,
}

impl Port {
    /// The port's first fixed IP (a NIC's own address).
    pub fn ip(&self) -> Option<&str> {
        self.fixed_ips.first().map(|f| f.ip_address.as_str())
    }

    /// Whether `ip` is in the port's `allowed_address_pairs` (bound, for a VIP port).
    pub fn allows(&self, ip: &str) -> bool {
        self.allowed_address_pairs.iter().any(|p| p.ip_address == ip)
    }
}

/// The VPC reads the controller makes. Implementations: the signed HTTP client and test fakes.
pub trait VpcApi: Send + Sync {
    /// `GET /v1/{project_id}/ports/{port_id}`. A missing port is `Err` with class `Gone`.
    fn get_port<'a>(&'a self, target: &'a CloudTarget, port_id: &'a str) -> BoxFuture<'a, Result<Port, EcsError>>;

    /// One page of `GET /v1/{project_id}/ports?...`.
    fn list_ports<'a>(
        &'a self,
        target: &'a CloudTarget,
        filter: &'a PortFilter,
    ) -> BoxFuture<'a, Result<Vec<Port>, EcsError>>;
}
