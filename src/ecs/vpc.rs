//! The VPC ports API (Huawei's current API for virtual IPs): the wire model and the narrow seam
//! the controller reads the cloud through. See `../shared/reference/huawei-vpc-ports.md`.
//!
//! A VIP is a port of its own (`device_owner: neutron:VIP_PORT`); it is bound to a server NIC
//! when the VIP port's `allowed_address_pairs` holds the NIC's own fixed IP. A NIC's port ID is
//! the NIC ID. A port that does not exist answers 404 `VPC.2502`: the cloud's own word that the
//! NIC is gone (class [`ErrorClass::Gone`](super::ErrorClass::Gone)).

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::api::{CloudTarget, InvalidId, check_path_id};
use super::error::EcsError;

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
    /// The MAC Huawei pairs with the port's IP (what `reverse_binding` adds to a VIP port).
    #[serde(default)]
    pub mac_address: String,
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

/// The body of a port update that replaces `allowed_address_pairs` and nothing else. An empty
/// list is sent as `[]` (it clears the list; leaving it out would change nothing).
#[derive(Debug, Serialize)]
pub struct PairsUpdate<'a> {
    port: PairsOnly<'a>,
}

#[derive(Debug, Serialize)]
struct PairsOnly<'a> {
    allowed_address_pairs: &'a [AddressPair],
}

impl<'a> PairsUpdate<'a> {
    pub fn new(pairs: &'a [AddressPair]) -> Self {
        Self { port: PairsOnly { allowed_address_pairs: pairs } }
    }
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
    /// The server that holds the port (a server's NICs are its ports; Huawei's SDK sends
    /// exactly `device_id`).
    pub device_id: Option<String>,
    pub network_id: Option<String>,
    /// `fixed_ips=ip_address=X`, one parameter per address, in this order (the SDK's
    /// `fixed_ips` is a repeatable array): a port holding any of them matches. At most
    /// [`MAX_FILTER_IPS`]; empty entries are left out.
    pub ip_addresses: Vec<String>,
    /// Ports per page: at most [`MAX_PAGE`]; 0 asks for the API's default page, [`MAX_PAGE`]
    /// (see [`PortFilter::page_size`]).
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

/// The longest filter value sent. Device owners and IDs are short; anything longer is no filter
/// the API would match, and must not make a URL grow without bound.
pub const MAX_FILTER_LEN: usize = 255;

/// Addresses one listing filters by at most: 50 `fixed_ips` parameters keep the URL under 4 KiB
/// even for IPv6 (far below the usual 8 KiB a gateway takes), and a listing by address of a
/// whole fleet is still one call per 50 NICs.
pub const MAX_FILTER_IPS: usize = 50;

/// A [`PortFilter`] that cannot be sent. Nothing is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidFilter {
    #[error("the ip_address filter {0:?} is not an IP address")]
    NotAnIp(String),
    #[error("{0} ip_address filters in one listing; at most {MAX_FILTER_IPS}")]
    TooManyIps(usize),
    #[error("the {what} filter is longer than {MAX_FILTER_LEN} characters")]
    TooLong { what: &'static str },
    #[error("the {what} filter contains a control character")]
    ControlCharacter { what: &'static str },
    /// `device_id`, `network_id` and `marker` are IDs, checked as path IDs are.
    #[error(transparent)]
    Id(#[from] InvalidId),
}

impl PortFilter {
    /// The `limit` sent: within `1..=MAX_PAGE`. Zero (the `Default`) means the API's own default
    /// page rather than a page of one, which would turn one listing into thousands of calls.
    pub fn page_size(&self) -> u32 {
        match self.limit {
            0 => MAX_PAGE,
            n => n.min(MAX_PAGE),
        }
    }

    /// The query parameters, in order, unencoded: `device_owner`, `device_id`, `network_id`,
    /// `fixed_ips=ip_address=X` (repeated, in order), `limit`, `marker`. Empty filters are left out.
    pub fn query_pairs(&self) -> Result<Vec<(&'static str, String)>, InvalidFilter> {
        let given = |v: &Option<String>| v.as_deref().filter(|v| !v.is_empty()).map(str::to_string);
        let mut pairs = Vec::with_capacity(5 + self.ip_addresses.len());
        if let Some(owner) = given(&self.device_owner) {
            check_text("device_owner", &owner)?;
            pairs.push(("device_owner", owner));
        }
        if let Some(device) = given(&self.device_id) {
            // A server ID: checked as path IDs are, like the network.
            check_path_id("device_id", &device)?;
            pairs.push(("device_id", device));
        }
        if let Some(network) = given(&self.network_id) {
            check_path_id("network_id", &network)?;
            pairs.push(("network_id", network));
        }
        if self.ip_addresses.len() > MAX_FILTER_IPS {
            return Err(InvalidFilter::TooManyIps(self.ip_addresses.len()));
        }
        for ip in self.ip_addresses.iter().filter(|ip| !ip.is_empty()) {
            check_text("ip_address", ip)?;
            // Sent in the canonical form: the API compares addresses as text.
            let ip: std::net::IpAddr = ip.trim().parse().map_err(|_| InvalidFilter::NotAnIp(ip.clone()))?;
            pairs.push(("fixed_ips", format!("ip_address={ip}")));
        }
        pairs.push(("limit", self.page_size().to_string()));
        if let Some(marker) = given(&self.marker) {
            check_path_id("marker", &marker)?;
            pairs.push(("marker", marker));
        }
        Ok(pairs)
    }
}

fn check_text(what: &'static str, value: &str) -> Result<(), InvalidFilter> {
    if value.len() > MAX_FILTER_LEN {
        return Err(InvalidFilter::TooLong { what });
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidFilter::ControlCharacter { what });
    }
    Ok(())
}

/// The VPC calls the controller makes. Implementations: the signed HTTP client and test fakes.
pub trait VpcApi: Send + Sync {
    /// `GET /v1/{project_id}/ports/{port_id}`. A missing port is `Err` with class `Gone`.
    fn get_port<'a>(&'a self, target: &'a CloudTarget, port_id: &'a str) -> BoxFuture<'a, Result<Port, EcsError>>;

    /// One page of `GET /v1/{project_id}/ports?...`, in the API's order. A page shorter than
    /// [`PortFilter::page_size`] is the last; the next page starts after the last port's ID
    /// (`marker`). An error of class `Gone` on a listing says nothing about any one NIC.
    fn list_ports<'a>(
        &'a self,
        target: &'a CloudTarget,
        filter: &'a PortFilter,
    ) -> BoxFuture<'a, Result<Vec<Port>, EcsError>>;

    /// `PUT /v1/{project_id}/ports/{port_id}` replacing the port's `allowed_address_pairs` with
    /// `pairs`, whole; the answer is the port as written. Not resent after an answer that may
    /// have applied: the list has no version, so only a caller that has read the port again
    /// may write again.
    fn update_pairs<'a>(
        &'a self,
        target: &'a CloudTarget,
        port_id: &'a str,
        pairs: &'a [AddressPair],
    ) -> BoxFuture<'a, Result<Port, EcsError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> PortFilter {
        PortFilter::default()
    }

    #[test]
    fn an_empty_pair_list_is_sent_as_an_empty_array() {
        let body = serde_json::to_string(&PairsUpdate::new(&[])).unwrap();
        assert_eq!(body, r#"{"port":{"allowed_address_pairs":[]}}"#);
        let pairs = [
            AddressPair { ip_address: "192.168.0.10".into(), mac_address: None },
            AddressPair { ip_address: "192.168.0.11".into(), mac_address: Some("fa:16:3e:00:00:01".into()) },
        ];
        assert_eq!(
            serde_json::to_string(&PairsUpdate::new(&pairs)).unwrap(),
            r#"{"port":{"allowed_address_pairs":[{"ip_address":"192.168.0.10"},{"ip_address":"192.168.0.11","mac_address":"fa:16:3e:00:00:01"}]}}"#
        );
    }

    #[test]
    fn page_size_is_within_one_to_max_page() {
        assert_eq!(filter().page_size(), MAX_PAGE);
        assert_eq!(PortFilter { limit: 1, ..filter() }.page_size(), 1);
        assert_eq!(PortFilter { limit: 2000, ..filter() }.page_size(), 2000);
        assert_eq!(PortFilter { limit: u32::MAX, ..filter() }.page_size(), MAX_PAGE);
    }

    #[test]
    fn query_pairs_in_order_and_empty_filters_left_out() {
        let all = PortFilter {
            device_owner: Some(VIP_PORT_OWNER.into()),
            device_id: Some("server-1".into()),
            network_id: Some("net-1".into()),
            ip_addresses: vec![" 192.168.0.7 ".into(), String::new(), "10.0.0.1".into()],
            limit: 2,
            marker: Some("port-9".into()),
        };
        assert_eq!(
            all.query_pairs().unwrap(),
            vec![
                ("device_owner", "neutron:VIP_PORT".to_string()),
                ("device_id", "server-1".to_string()),
                ("network_id", "net-1".to_string()),
                ("fixed_ips", "ip_address=192.168.0.7".to_string()),
                ("fixed_ips", "ip_address=10.0.0.1".to_string()),
                ("limit", "2".to_string()),
                ("marker", "port-9".to_string()),
            ]
        );
        let empty = PortFilter {
            device_owner: Some(String::new()),
            device_id: Some(String::new()),
            marker: Some(String::new()),
            ..filter()
        };
        assert_eq!(empty.query_pairs().unwrap(), vec![("limit", "2000".to_string())]);
        let v6 = PortFilter { ip_addresses: vec!["FD00:0:0::1".into()], ..filter() };
        assert_eq!(v6.query_pairs().unwrap()[0], ("fixed_ips", "ip_address=fd00::1".to_string()));
    }

    #[test]
    fn hostile_filters_are_refused() {
        let bad = [
            PortFilter { ip_addresses: vec!["10.0.0.1&limit=1".into()], ..filter() },
            PortFilter { ip_addresses: vec!["10.0.0.1".into(), "x".repeat(300)], ..filter() },
            PortFilter { ip_addresses: vec!["10.0.0.1".into(); MAX_FILTER_IPS + 1], ..filter() },
            PortFilter { device_owner: Some("a\nb".into()), ..filter() },
            PortFilter { device_owner: Some("o".repeat(MAX_FILTER_LEN + 1)), ..filter() },
            PortFilter { network_id: Some("../x".into()), ..filter() },
            PortFilter { device_id: Some("srv&limit=1".into()), ..filter() },
            PortFilter { device_id: Some("..".into()), ..filter() },
            PortFilter { device_id: Some("s".repeat(65)), ..filter() },
            PortFilter { marker: Some("a&b".into()), ..filter() },
        ];
        for f in bad {
            assert!(f.query_pairs().is_err(), "{f:?}");
        }
        let e = PortFilter { ip_addresses: vec!["nope".into()], ..filter() }.query_pairs().unwrap_err();
        assert_eq!(e.to_string(), r#"the ip_address filter "nope" is not an IP address"#);
        let e = PortFilter { device_id: Some("a/b".into()), ..filter() }.query_pairs().unwrap_err();
        assert!(e.to_string().starts_with("device_id"), "{e}");
        let many = PortFilter { ip_addresses: vec!["10.0.0.1".into(); 51], ..filter() }.query_pairs().unwrap_err();
        assert_eq!(many.to_string(), "51 ip_address filters in one listing; at most 50");
        let most = PortFilter { ip_addresses: vec!["10.0.0.1".into(); MAX_FILTER_IPS], ..filter() };
        assert_eq!(most.query_pairs().unwrap().len(), MAX_FILTER_IPS + 1);
    }

    #[test]
    fn a_port_reads_its_ip_and_pairs() {
        let port: Port = serde_json::from_str(
            r#"{"id":"p","fixed_ips":[{"subnet_id":"s","ip_address":"10.0.0.5"}],
                "allowed_address_pairs":[{"ip_address":"10.0.0.9","mac_address":"fa:16:3e:00:00:01"}],
                "mac_address":"fa:16:3e:00:00:02","unknown":1}"#,
        )
        .unwrap();
        assert_eq!(port.ip(), Some("10.0.0.5"));
        assert!(port.allows("10.0.0.9"));
        assert!(!port.allows("10.0.0.5"));
        assert_eq!(port.mac_address, "fa:16:3e:00:00:02");
    }
}
