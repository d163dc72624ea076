//! The simulator's VPC ports: NIC ports and virtual IP ports over the same state as the ECS
//! calls, served as `GET /v1/{project_id}/ports/{port_id}`, `GET /v1/{project_id}/ports` and
//! `PUT /v1/{project_id}/ports/{port_id}` by [`super::vpc`]. Here: the ports themselves, the
//! checks every way of changing them goes through, and listing filters.
//!
//! What is modelled, and from where (see `huawei-vpc-ports.md` in the shared reference):
//! - A VIP is a port of its own (`device_owner: neutron:VIP_PORT`, status `DOWN`); it is bound to
//!   a NIC when its `allowed_address_pairs` holds the NIC's fixed IP. A NIC's port ID is the NIC
//!   ID. Ports belong to a project; another project's port is not found.
//! - A missing port answers 404 `{"code": "VPC.2502", "message": "Port <id> not found"}`.
//! - ECS bind with `reverse_binding: true` adds the NIC's IP/MAC pair to the VIP port's pairs
//!   (documented); the simulator's unbind with `reverse_binding: true` takes it out again.
//! - An update (`PUT`) replaces `allowed_address_pairs` whole (documented), with no version: the
//!   last writer wins. `0.0.0.0` and `0.0.0.0/0` are refused, `1.1.1.1/0` is taken (documented);
//!   an update must set at least one attribute (documented). The simulator supports no other
//!   attribute. Not confirmed, and the simulator's choice: the error code of a refused update
//!   (`VPC.2500`, documented for creating a port), the 404 of a missing port on update (`VPC.2502`,
//!   as for reads), the limit on pairs, the MAC format, and the order of the checks (body first,
//!   then the port). An update changes only the port: the ECS view of NIC → VIP
//!   (`nics` in the state) is what ECS calls said, as how Huawei links the two is not documented.
//! - The most pairs a port holds is a setting, not a constant, because Huawei's quota is not
//!   confirmed: [`SimulatorConfig::max_pairs`](super::SimulatorConfig::max_pairs), default
//!   [`DEFAULT_MAX_PAIRS`] (100), at most [`MAX_PAIRS_CEILING`](super::MAX_PAIRS_CEILING) (so a
//!   port stays bounded), changed while running by `PUT /sim/config` `{"max_pairs": N}` or
//!   [`Simulator::set_max_pairs`](super::Simulator::set_max_pairs). A VPC update with a longer
//!   list answers 400 `VPC.2500` "allowed_address_pairs holds at most N pairs"; the
//!   concurrent-writer hooks below keep to it too. Lowering it leaves longer lists already held
//!   as they are. Not held to it: the admin API's own writes (set-up and drift) and an ECS
//!   reverse binding (what Huawei's ECS bind does at a quota is not documented).
//! - A test can act as a concurrent writer between a reader's read and its write:
//!   [`Simulator::after_next_read`](super::Simulator::after_next_read) changes a port's pairs
//!   right after the next read that shows it; [`Simulator::after_next_write`](super::Simulator::after_next_write)
//!   right after the next write of it lands, before that write is answered.
//!
//! Deliberately independent of `crate::ecs::vpc`: its own wire types, so a serialisation bug in
//! the client's model cannot be mirrored here and "agree with itself".

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::config::{DEFAULT_MAX_PAIRS, SimError, check_max_pairs};

/// `device_owner` of a virtual IP's port.
pub const VIP_PORT_OWNER: &str = "neutron:VIP_PORT";

/// Ports per listing page: the default and the most one page holds.
pub const MAX_PAGE: usize = 2000;

/// Ports the simulator keeps at most (a long-running simulator must not grow for ever).
pub const MAX_PORTS: usize = 100_000;

/// The longest `ip_address` or `mac_address` of a pair taken (the longest IPv6 CIDR is 43).
pub const MAX_PAIR_FIELD_LEN: usize = 64;

/// `device_owner` of the NIC ports the simulator makes up: the simulator's convention (OpenStack
/// writes `compute:<availability zone>`), not a value Huawei documents.
pub const NIC_PORT_OWNER: &str = "compute:simulator";

/// A port as the simulator keeps it: the VPC API's fields and the project it belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimPort {
    /// Taken from the path by `PUT /sim/ports/{id}` when left out.
    #[serde(default)]
    pub id: String,
    pub project_id: String,
    #[serde(default)]
    pub device_owner: String,
    #[serde(default)]
    pub device_id: String,
    #[serde(default)]
    pub network_id: String,
    #[serde(default)]
    pub mac_address: String,
    #[serde(default)]
    pub fixed_ips: Vec<SimFixedIp>,
    #[serde(default)]
    pub allowed_address_pairs: Vec<SimAddressPair>,
    #[serde(default)]
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimFixedIp {
    #[serde(default)]
    pub subnet_id: String,
    pub ip_address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimAddressPair {
    pub ip_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
}

impl SimPort {
    /// A virtual IP's port: `fixed_ips [{subnet_id, ip_address}]`, no pairs, status `DOWN`.
    pub fn vip(id: &str, project_id: &str, network_id: &str, subnet_id: &str, ip_address: &str) -> Self {
        Self {
            id: id.into(),
            project_id: project_id.into(),
            device_owner: VIP_PORT_OWNER.into(),
            device_id: String::new(),
            network_id: network_id.into(),
            mac_address: String::new(),
            fixed_ips: vec![SimFixedIp { subnet_id: subnet_id.into(), ip_address: ip_address.into() }],
            allowed_address_pairs: vec![],
            status: "DOWN".into(),
        }
    }

    /// The port of a NIC the simulator learnt of from an ECS call. Its fixed IP (in 10.0.0.0/8)
    /// and MAC (`fa:16:3e:…`, OpenStack's default prefix) are derived from the NIC ID, so they
    /// are the same in every run: the simulator's convention, not Huawei's. Different NICs may
    /// rarely share an address (24 bits of a hash).
    pub fn nic(nic_id: &str, project_id: &str) -> Self {
        let h = fnv1a(nic_id.as_bytes()).to_be_bytes();
        let last = h[2] % 254 + 1;
        Self {
            id: nic_id.into(),
            project_id: project_id.into(),
            device_owner: NIC_PORT_OWNER.into(),
            device_id: String::new(),
            network_id: String::new(),
            mac_address: derived_mac(nic_id),
            fixed_ips: vec![SimFixedIp {
                subnet_id: String::new(),
                ip_address: format!("10.{}.{}.{last}", h[0], h[1]),
            }],
            allowed_address_pairs: vec![],
            status: "ACTIVE".into(),
        }
    }

    /// The port's first fixed IP.
    pub fn ip(&self) -> Option<&str> {
        self.fixed_ips.first().map(|f| f.ip_address.as_str())
    }

    /// The port as the VPC API shows it (no `project_id`: the reference does not list one).
    pub(super) fn wire(&self) -> Value {
        json!({
            "id": self.id,
            "device_owner": self.device_owner,
            "device_id": self.device_id,
            "network_id": self.network_id,
            "mac_address": self.mac_address,
            "fixed_ips": self.fixed_ips,
            "allowed_address_pairs": self.allowed_address_pairs,
            "status": self.status,
        })
    }
}

/// A MAC (`fa:16:3e:…`, OpenStack's default prefix) derived from a port ID: the same in every run
/// (the simulator's convention). Different ports may rarely share one (24 bits of a hash).
pub(super) fn derived_mac(port_id: &str) -> String {
    let h = fnv1a(port_id.as_bytes()).to_be_bytes();
    format!("fa:16:3e:{:02x}:{:02x}:{:02x}", h[3], h[4], h[5])
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// A port the admin API or [`Simulator::set_port`](super::Simulator::set_port) cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("a port needs an id of 1 to 255 characters")]
    BadId,
    #[error("the port's id {body:?} is not the id in the path {path:?}")]
    IdMismatch { path: String, body: String },
    #[error("a port needs a project_id")]
    NoProject,
    #[error("the simulator holds at most {MAX_PORTS} ports")]
    TooMany,
    #[error("no port {0}")]
    NotFound(String),
    #[error("port {0} exists already")]
    Exists(String),
    #[error("{0}")]
    InvalidPairs(PairsError),
}

/// Why a list of `allowed_address_pairs` is refused. The texts are what clients read in the 400
/// answer (after "Param is invalid: ").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairsError {
    #[error("allowed_address_pairs must be an array")]
    NotAnArray,
    /// The limit in force when the list was refused.
    #[error("allowed_address_pairs holds at most {0} pairs")]
    TooMany(usize),
    #[error("allowed_address_pairs[{0}] must be an object")]
    NotAnObject(usize),
    #[error("unknown field allowed_address_pairs[{0}].{1}")]
    UnknownField(usize, String),
    #[error("allowed_address_pairs[{0}].ip_address is required")]
    NoIp(usize),
    #[error("allowed_address_pairs[{0}].{1} must be a string")]
    NotAString(usize, &'static str),
    #[error("allowed_address_pairs[{0}].ip_address {1:?} is not an IP address or CIDR")]
    NotAnIp(usize, String),
    #[error("allowed_address_pairs[{0}].ip_address must not be 0.0.0.0 or 0.0.0.0/0")]
    AnyAddress(usize),
    #[error("allowed_address_pairs[{0}].mac_address {1:?} is not a MAC address")]
    NotAMac(usize, String),
}

/// A change to a port's `allowed_address_pairs` made by someone other than the caller (see
/// [`Simulator::after_next_read`](super::Simulator::after_next_read)). In JSON:
/// `{"add": {"ip_address": "10.0.0.9"}}`, `{"remove": "10.0.0.9"}`, `{"replace": [...]}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PairsChange {
    /// Appends the pair, unless a pair with its `ip_address` is there already (or the port holds
    /// the most it may, the `max_pairs` setting: that writer's update would be refused).
    Add(SimAddressPair),
    /// Removes every pair with this `ip_address`.
    Remove(String),
    /// Replaces the list whole.
    Replace(Vec<SimAddressPair>),
}

impl PairsChange {
    /// The change must be one the API would take under the limit `max_pairs`: that writer goes
    /// through the same checks.
    fn check(&self, max_pairs: usize) -> Result<(), PairsError> {
        match self {
            PairsChange::Add(pair) => check_pair(0, pair),
            PairsChange::Remove(_) => Ok(()),
            PairsChange::Replace(pairs) if pairs.len() > max_pairs => Err(PairsError::TooMany(max_pairs)),
            PairsChange::Replace(pairs) => pairs.iter().enumerate().try_for_each(|(i, p)| check_pair(i, p)),
        }
    }

    /// Makes the change under the limit in force when it fires (it may have changed since it
    /// was armed): a `Replace` checked against a higher limit is still made whole, as an update
    /// accepted on arrival is.
    fn apply(self, pairs: &mut Vec<SimAddressPair>, max_pairs: usize) {
        match self {
            PairsChange::Add(pair) => {
                if pairs.len() < max_pairs && !pairs.iter().any(|p| p.ip_address == pair.ip_address) {
                    pairs.push(pair);
                }
            }
            PairsChange::Remove(ip) => pairs.retain(|p| p.ip_address != ip),
            PairsChange::Replace(new) => *pairs = new,
        }
    }
}

/// One pair's checks: an IP or CIDR that is not "any" (`0.0.0.0`, `0.0.0.0/0`), and a MAC in the
/// colon form when given (Neutron takes other forms; whether Huawei does is not confirmed).
pub(super) fn check_pair(i: usize, pair: &SimAddressPair) -> Result<(), PairsError> {
    let ip = &pair.ip_address;
    let bad_ip = || PairsError::NotAnIp(i, ip.chars().take(MAX_PAIR_FIELD_LEN).collect());
    if ip.len() > MAX_PAIR_FIELD_LEN {
        return Err(bad_ip());
    }
    let (addr, prefix) = match ip.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (ip.as_str(), None),
    };
    let addr: std::net::IpAddr = addr.parse().map_err(|_| bad_ip())?;
    let prefix = match prefix {
        None => None,
        // Digits only: `u8::from_str` would take "+8".
        Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            Some(p.parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(bad_ip)?)
        }
        Some(_) => return Err(bad_ip()),
    };
    // Documented: "0.0.0.0" and "0.0.0.0/0" are refused. Other prefixes of 0.0.0.0, and `::/0`,
    // are not documented either way: taken.
    if addr == std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) && matches!(prefix, None | Some(0)) {
        return Err(PairsError::AnyAddress(i));
    }
    if let Some(mac) = &pair.mac_address
        && !is_mac(mac)
    {
        return Err(PairsError::NotAMac(i, mac.chars().take(MAX_PAIR_FIELD_LEN).collect()));
    }
    Ok(())
}

/// `xx:xx:xx:xx:xx:xx`, hexadecimal, either case.
pub(super) fn is_mac(mac: &str) -> bool {
    let groups: Vec<&str> = mac.split(':').take(7).collect();
    groups.len() == 6 && groups.iter().all(|g| g.len() == 2 && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Every port, and the NICs the simulator knows of.
#[derive(Debug)]
pub(super) struct Ports {
    ports: BTreeMap<String, SimPort>,
    /// NICs known to the simulator: a port removed through the admin API stays removed, even
    /// when an ECS call names the NIC again.
    known_nics: BTreeSet<String>,
    /// One-shot changes made right after the next read of a port (at most one a port, and
    /// only for ports that exist: bounded by [`MAX_PORTS`]).
    after_read: BTreeMap<String, PairsChange>,
    /// One-shot changes made right after the next write of a port lands, before its answer is
    /// made (another writer overtaking it; same bound).
    after_write: BTreeMap<String, PairsChange>,
    /// Pairs one port holds at most: a setting (see the module doc), kept across a reset as
    /// latency and qps are. Always 1 to [`MAX_PAIRS_CEILING`](super::MAX_PAIRS_CEILING).
    max_pairs: usize,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            ports: BTreeMap::new(),
            known_nics: BTreeSet::new(),
            after_read: BTreeMap::new(),
            after_write: BTreeMap::new(),
            max_pairs: DEFAULT_MAX_PAIRS,
        }
    }
}

impl Ports {
    /// No ports yet, holding at most `max_pairs` pairs each (refused out of bounds).
    pub(super) fn new(max_pairs: usize) -> Result<Self, SimError> {
        Ok(Self { max_pairs: check_max_pairs(max_pairs)?, ..Self::default() })
    }

    pub(super) fn max_pairs(&self) -> usize {
        self.max_pairs
    }

    /// Changes the limit for every write from now on (refused out of bounds, leaving it as is).
    pub(super) fn set_max_pairs(&mut self, max_pairs: usize) -> Result<(), SimError> {
        self.max_pairs = check_max_pairs(max_pairs)?;
        Ok(())
    }

    pub(super) fn set(&mut self, port: SimPort) -> Result<(), PortError> {
        if port.id.is_empty() || port.id.len() > 255 {
            return Err(PortError::BadId);
        }
        if port.project_id.is_empty() {
            return Err(PortError::NoProject);
        }
        if !self.ports.contains_key(&port.id) && self.ports.len() >= MAX_PORTS {
            return Err(PortError::TooMany);
        }
        self.known_nics.insert(port.id.clone());
        self.ports.insert(port.id.clone(), port);
        Ok(())
    }

    /// Creates new ports, all or none: each is checked as [`Ports::set`] checks one, none may
    /// exist already (a new server's NIC is a new port), and all must fit.
    pub(super) fn add_all(&mut self, ports: Vec<SimPort>) -> Result<(), PortError> {
        let mut seen = BTreeSet::new();
        for port in &ports {
            if port.id.is_empty() || port.id.len() > 255 {
                return Err(PortError::BadId);
            }
            if port.project_id.is_empty() {
                return Err(PortError::NoProject);
            }
            if self.ports.contains_key(&port.id) || !seen.insert(port.id.as_str()) {
                return Err(PortError::Exists(port.id.clone()));
            }
        }
        // Saturating: the sum is only compared with the bound.
        if self.ports.len().saturating_add(ports.len()) > MAX_PORTS {
            return Err(PortError::TooMany);
        }
        for port in ports {
            self.known_nics.insert(port.id.clone());
            self.ports.insert(port.id.clone(), port);
        }
        Ok(())
    }

    pub(super) fn remove(&mut self, id: &str) -> Option<SimPort> {
        self.after_read.remove(id);
        self.after_write.remove(id);
        self.ports.remove(id)
    }

    /// Arms the one-shot change of `id`'s pairs after its next read, replacing one armed before.
    pub(super) fn after_next_read(&mut self, id: &str, change: PairsChange) -> Result<(), PortError> {
        if !self.ports.contains_key(id) {
            return Err(PortError::NotFound(id.to_string()));
        }
        change.check(self.max_pairs).map_err(PortError::InvalidPairs)?;
        self.after_read.insert(id.to_string(), change);
        Ok(())
    }

    /// Arms the one-shot change of `id`'s pairs after its next write lands.
    pub(super) fn after_next_write(&mut self, id: &str, change: PairsChange) -> Result<(), PortError> {
        if !self.ports.contains_key(id) {
            return Err(PortError::NotFound(id.to_string()));
        }
        change.check(self.max_pairs).map_err(PortError::InvalidPairs)?;
        self.after_write.insert(id.to_string(), change);
        Ok(())
    }

    /// `id` was just written: its armed change happens now, once. Whether one did.
    pub(super) fn fire_after_write(&mut self, id: &str) -> bool {
        match (self.after_write.remove(id), self.ports.get_mut(id)) {
            (Some(change), Some(port)) => {
                change.apply(&mut port.allowed_address_pairs, self.max_pairs);
                true
            }
            _ => false,
        }
    }

    /// Disarms it. False when none was armed.
    pub(super) fn clear_after_next_read(&mut self, id: &str) -> bool {
        self.after_read.remove(id).is_some()
    }

    pub(super) fn pending_after_read(&self) -> BTreeMap<String, PairsChange> {
        self.after_read.clone()
    }

    /// The ports in `ids` were just shown to a reader: their armed changes happen now, once.
    /// Returns the ports changed.
    pub(super) fn fire_after_read<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        if self.after_read.is_empty() {
            return vec![];
        }
        let mut fired = vec![];
        for id in ids {
            if let Some(change) = self.after_read.remove(id)
                && let Some(port) = self.ports.get_mut(id)
            {
                change.apply(&mut port.allowed_address_pairs, self.max_pairs);
                fired.push(id.to_string());
            }
        }
        fired
    }

    /// Replaces a port's pairs (behind the operator's back). False when there is no such port.
    pub(super) fn set_pairs(&mut self, id: &str, pairs: Vec<SimAddressPair>) -> bool {
        match self.ports.get_mut(id) {
            Some(port) => {
                port.allowed_address_pairs = pairs;
                true
            }
            None => false,
        }
    }

    pub(super) fn get(&self, id: &str) -> Option<&SimPort> {
        self.ports.get(id)
    }

    pub(super) fn all(&self) -> BTreeMap<String, SimPort> {
        self.ports.clone()
    }

    pub(super) fn clear(&mut self) {
        self.ports.clear();
        self.known_nics.clear();
        self.after_read.clear();
        self.after_write.clear();
    }

    /// The first time the simulator hears of a NIC (an ECS call names it), the NIC's port comes
    /// into being in that project: it stands for a NIC that exists already. Nothing changes for
    /// a NIC known before, or once the simulator is full.
    pub(super) fn know_nic(&mut self, project_id: &str, nic_id: &str) {
        if self.known_nics.contains(nic_id) || self.ports.contains_key(nic_id) || self.ports.len() >= MAX_PORTS {
            return;
        }
        self.known_nics.insert(nic_id.into());
        self.ports.insert(nic_id.into(), SimPort::nic(nic_id, project_id));
    }

    /// The port as `project_id` sees it: another project's port, or a missing NIC's, is not found.
    pub(super) fn visible<'a>(&'a self, project_id: &str, id: &str, missing: &BTreeSet<String>) -> Option<&'a SimPort> {
        self.ports.get(id).filter(|p| p.project_id == project_id && !missing.contains(id))
    }

    /// One page of a listing, in port ID order (the simulator's order; Huawei's is not documented).
    pub(super) fn list(&self, project_id: &str, query: &ListQuery, missing: &BTreeSet<String>) -> Vec<&SimPort> {
        let from = query.marker.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        self.ports
            .range::<str, _>((from, Bound::Unbounded))
            .map(|(_, p)| p)
            .filter(|p| p.project_id == project_id && !missing.contains(&p.id) && query.matches(p))
            .take(query.limit)
            .collect()
    }

    /// The VIP ports in `project_id` whose fixed IP is `vip`.
    fn vip_ports_mut<'a>(&'a mut self, project_id: &'a str, vip: &'a str) -> impl Iterator<Item = &'a mut SimPort> {
        self.ports.values_mut().filter(move |p| {
            p.project_id == project_id
                && p.device_owner == VIP_PORT_OWNER
                && p.fixed_ips.iter().any(|f| f.ip_address == vip)
        })
    }

    /// ECS bind with `reverse_binding: true`: "add the NIC's IP/MAC pair to the VIP port's
    /// allowed_address_pairs" (documented). What the ECS call does to the NIC's own port is NOT
    /// documented: the NIC port is left as it is. A bind without `reverse_binding` touches no
    /// port at all (nothing documented says it does); nor does a bind that moves a NIC from one
    /// VIP to another touch the old VIP's port.
    pub(super) fn reverse_bind(&mut self, project_id: &str, nic_id: &str, vip: &str, missing: &BTreeSet<String>) {
        let Some((ip, mac)) = self.nic_address(project_id, nic_id, missing) else { return };
        for port in self.vip_ports_mut(project_id, vip) {
            if !port.allowed_address_pairs.iter().any(|p| p.ip_address == ip) {
                port.allowed_address_pairs.push(SimAddressPair { ip_address: ip.clone(), mac_address: mac.clone() });
            }
        }
    }

    /// ECS unbind with `reverse_binding: true`: the NIC's pair leaves the port of the VIP it
    /// had (the reverse of [`Ports::reverse_bind`]; as there, the NIC's own port is not touched).
    pub(super) fn reverse_unbind(&mut self, project_id: &str, nic_id: &str, vip: &str, missing: &BTreeSet<String>) {
        let Some((ip, _)) = self.nic_address(project_id, nic_id, missing) else { return };
        for port in self.vip_ports_mut(project_id, vip) {
            port.allowed_address_pairs.retain(|p| p.ip_address != ip);
        }
    }

    /// The NIC's own IP and MAC, from its port.
    fn nic_address(
        &self,
        project_id: &str,
        nic_id: &str,
        missing: &BTreeSet<String>,
    ) -> Option<(String, Option<String>)> {
        let port = self.visible(project_id, nic_id, missing)?;
        let mac = Some(port.mac_address.clone()).filter(|m| !m.is_empty());
        Some((port.ip()?.to_string(), mac))
    }
}

/// Why a listing's query is refused. The texts are what clients read in the 400 answer (after
/// "Param is invalid: ").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("parameter {0} is given more than once")]
    Repeated(String),
    #[error("fixed_ips {0:?} is not ip_address=<address>")]
    NotAnIpFilter(String),
    #[error("limit {0:?} is not a non-negative integer")]
    BadLimit(String),
    #[error("unknown parameter {0:?}")]
    Unknown(String),
}

/// A listing's query: the documented filters (`id`, `device_id`, `device_owner`, `network_id`,
/// `fixed_ips=ip_address=X`) and paging (`limit`, `marker`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ListQuery {
    id: Option<String>,
    device_id: Option<String>,
    device_owner: Option<String>,
    network_id: Option<String>,
    /// `fixed_ips=ip_address=X`, possibly repeated: a port with any of them matches (Neutron's
    /// reading of an array filter).
    ip_addresses: Vec<String>,
    limit: usize,
    marker: Option<String>,
}

impl ListQuery {
    /// Parses the raw (still percent-encoded) query. Strict: an unknown or repeated parameter
    /// is refused, so a client that misspells a filter finds out here rather than in the cloud.
    pub(super) fn parse(raw: Option<&str>) -> Result<Self, QueryError> {
        let mut q = ListQuery { limit: MAX_PAGE, ..Default::default() };
        for (key, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let single = |slot: &mut Option<String>| match slot {
                Some(_) => Err(QueryError::Repeated(key.to_string())),
                None => {
                    *slot = Some(value.to_string());
                    Ok(())
                }
            };
            match key.as_ref() {
                "id" => single(&mut q.id)?,
                "device_id" => single(&mut q.device_id)?,
                "device_owner" => single(&mut q.device_owner)?,
                "network_id" => single(&mut q.network_id)?,
                "marker" => single(&mut q.marker)?,
                "fixed_ips" => match value.strip_prefix("ip_address=") {
                    Some(ip) => q.ip_addresses.push(ip.to_string()),
                    None => return Err(QueryError::NotAnIpFilter(value.to_string())),
                },
                // 0 is the default page (the simulator's choice); more than a page is a page.
                "limit" => match value.parse::<u64>() {
                    Ok(0) => q.limit = MAX_PAGE,
                    Ok(n) => q.limit = usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE),
                    Err(_) => return Err(QueryError::BadLimit(value.to_string())),
                },
                other => return Err(QueryError::Unknown(other.to_string())),
            }
        }
        Ok(q)
    }

    fn matches(&self, port: &SimPort) -> bool {
        let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        is(&self.id, &port.id)
            && is(&self.device_id, &port.device_id)
            && is(&self.device_owner, &port.device_owner)
            && is(&self.network_id, &port.network_id)
            && (self.ip_addresses.is_empty()
                || port.fixed_ips.iter().any(|f| self.ip_addresses.contains(&f.ip_address)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "project-a";

    fn ports() -> Ports {
        let mut ports = Ports::default();
        for i in 1..=5 {
            ports.set(SimPort::vip(&format!("vip-{i}"), P, "net-1", "sub-1", &format!("192.168.0.{i}"))).unwrap();
        }
        ports.know_nic(P, "nic-1");
        ports.set(SimPort::vip("other", "project-b", "net-1", "sub-1", "192.168.0.1")).unwrap();
        ports
    }

    fn ids(page: &[&SimPort]) -> Vec<String> {
        page.iter().map(|p| p.id.clone()).collect()
    }

    fn list(ports: &Ports, query: &str) -> Vec<String> {
        ids(&ports.list(P, &ListQuery::parse(Some(query)).unwrap(), &BTreeSet::new()))
    }

    #[test]
    fn nic_ports_are_deterministic_and_in_the_simulators_range() {
        let a = SimPort::nic("d32019d3-bc6e-4319-9c1d-6722fc136a23", P);
        assert_eq!(a, SimPort::nic("d32019d3-bc6e-4319-9c1d-6722fc136a23", P));
        assert_ne!(a.ip(), SimPort::nic("another", P).ip());
        let ip: std::net::Ipv4Addr = a.ip().unwrap().parse().unwrap();
        assert_eq!(ip.octets()[0], 10);
        assert!((1..=254).contains(&ip.octets()[3]));
        assert!(a.mac_address.starts_with("fa:16:3e:"));
        assert_eq!(a.device_owner, NIC_PORT_OWNER);
        assert!(a.allowed_address_pairs.is_empty());
    }

    #[test]
    fn a_removed_nic_port_is_not_recreated_by_later_calls() {
        let mut ports = ports();
        assert!(ports.get("nic-1").is_some());
        ports.remove("nic-1");
        ports.know_nic(P, "nic-1");
        assert!(ports.get("nic-1").is_none());
        // A NIC known first in one project keeps its project.
        ports.know_nic(P, "nic-2");
        ports.know_nic("project-b", "nic-2");
        assert_eq!(ports.get("nic-2").map(|p| p.project_id.as_str()), Some(P));
    }

    #[test]
    fn listing_filters_and_pages_in_id_order() {
        let ports = ports();
        assert_eq!(list(&ports, ""), ["nic-1", "vip-1", "vip-2", "vip-3", "vip-4", "vip-5"]);
        assert_eq!(list(&ports, "device_owner=neutron%3AVIP_PORT&limit=2"), ["vip-1", "vip-2"]);
        assert_eq!(list(&ports, "device_owner=neutron%3AVIP_PORT&limit=2&marker=vip-2"), ["vip-3", "vip-4"]);
        assert_eq!(list(&ports, "device_owner=neutron:VIP_PORT&limit=2&marker=vip-4"), ["vip-5"]);
        assert_eq!(list(&ports, "fixed_ips=ip_address%3D192.168.0.3"), ["vip-3"]);
        assert_eq!(
            list(&ports, "fixed_ips=ip_address=192.168.0.3&fixed_ips=ip_address=192.168.0.5"),
            ["vip-3", "vip-5"]
        );
        assert_eq!(list(&ports, "network_id=net-1&id=vip-4"), ["vip-4"]);
        assert!(list(&ports, "network_id=net-2").is_empty());
        // A marker that is no port still pages by ID order.
        assert_eq!(list(&ports, "marker=vip-35"), ["vip-4", "vip-5"]);
        assert_eq!(list(&ports, "limit=0").len(), 6);
        assert_eq!(list(&ports, "limit=99999").len(), 6);
    }

    #[test]
    fn listing_by_device_id_finds_a_servers_nics() {
        let mut ports = ports();
        let mut nic = SimPort::nic("nic-s1", P);
        nic.device_id = "server-1".into();
        nic.network_id = "net-1".into();
        ports.set(nic).unwrap();
        assert_eq!(list(&ports, "device_id=server-1&network_id=net-1"), ["nic-s1"]);
        assert!(list(&ports, "device_id=server-1&network_id=net-2").is_empty());
        assert!(list(&ports, "device_id=server-2").is_empty());
    }

    #[test]
    fn ports_are_added_all_or_none() {
        let mut ports = ports();
        let before = ports.all();
        let new = |id: &str| SimPort::vip(id, P, "n", "s", "10.0.0.1");
        assert_eq!(ports.add_all(vec![new("a"), new("vip-1")]), Err(PortError::Exists("vip-1".into())));
        assert_eq!(ports.add_all(vec![new("a"), new("a")]), Err(PortError::Exists("a".into())));
        assert_eq!(
            ports.add_all(vec![new("a"), SimPort::vip("b", "", "n", "s", "10.0.0.1")]),
            Err(PortError::NoProject)
        );
        assert_eq!(ports.all(), before);
        ports.add_all(vec![new("a"), new("b")]).unwrap();
        assert!(ports.get("a").is_some() && ports.get("b").is_some());
    }

    #[test]
    fn other_projects_and_missing_nics_are_not_seen() {
        let ports = ports();
        let none = BTreeSet::new();
        assert!(ports.visible(P, "other", &none).is_none());
        assert!(ports.visible("project-b", "other", &none).is_some());
        let missing: BTreeSet<String> = ["nic-1".to_string()].into();
        assert!(ports.visible(P, "nic-1", &missing).is_none());
        let all = ListQuery::parse(None).unwrap();
        assert!(!ids(&ports.list(P, &all, &missing)).contains(&"nic-1".to_string()));
    }

    #[test]
    fn bad_queries_are_refused() {
        for bad in [
            "ip_address=1.2.3.4",
            "fixed_ips=1.2.3.4",
            "fixed_ips=subnet_id%3Ds",
            "limit=-1",
            "limit=x",
            "marker=a&marker=b",
            "device_owner=a&device_owner=a",
        ] {
            assert!(ListQuery::parse(Some(bad)).is_err(), "{bad}");
        }
        let q = ListQuery::parse(Some("limit=3&marker=m&device_owner=o+x")).unwrap();
        assert_eq!((q.limit, q.marker.as_deref(), q.device_owner.as_deref()), (3, Some("m"), Some("o x")));
    }

    /// Clients read these texts in 400 answers: the typed errors must print what the strings did.
    #[test]
    fn query_error_texts_are_stable() {
        let text = |q: &str| ListQuery::parse(Some(q)).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(text("marker=a&marker=b"), "parameter marker is given more than once");
        assert_eq!(text("fixed_ips=subnet_id%3Ds"), r#"fixed_ips "subnet_id=s" is not ip_address=<address>"#);
        assert_eq!(text("limit=-1"), r#"limit "-1" is not a non-negative integer"#);
        assert_eq!(text("ip_address=1.2.3.4"), r#"unknown parameter "ip_address""#);
    }

    #[test]
    fn reverse_binding_adds_and_removes_the_nics_pair_on_the_vip_port_only() {
        let mut ports = ports();
        let none = BTreeSet::new();
        let nic = ports.get("nic-1").cloned().unwrap();
        ports.reverse_bind(P, "nic-1", "192.168.0.2", &none);
        ports.reverse_bind(P, "nic-1", "192.168.0.2", &none);
        let vip = ports.get("vip-2").unwrap();
        assert_eq!(
            vip.allowed_address_pairs,
            vec![SimAddressPair { ip_address: nic.ip().unwrap().into(), mac_address: Some(nic.mac_address.clone()) }]
        );
        // The NIC's own port is not touched (undocumented), nor another project's VIP port.
        assert_eq!(ports.get("nic-1"), Some(&nic));
        assert!(ports.get("other").unwrap().allowed_address_pairs.is_empty());
        ports.reverse_unbind(P, "nic-1", "192.168.0.2", &none);
        assert!(ports.get("vip-2").unwrap().allowed_address_pairs.is_empty());
        // A VIP without a port, or a NIC without one, changes nothing.
        ports.reverse_bind(P, "nic-1", "192.168.9.9", &none);
        ports.reverse_bind(P, "unknown-nic", "192.168.0.2", &none);
        assert!(ports.get("vip-2").unwrap().allowed_address_pairs.is_empty());
    }

    #[test]
    fn admin_ports_are_checked() {
        let mut ports = Ports::default();
        assert_eq!(ports.set(SimPort::vip("", P, "n", "s", "1.1.1.1")), Err(PortError::BadId));
        assert_eq!(ports.set(SimPort::vip("x", "", "n", "s", "1.1.1.1")), Err(PortError::NoProject));
        assert!(!ports.set_pairs("x", vec![]));
        ports.set(SimPort::vip("x", P, "n", "s", "1.1.1.1")).unwrap();
        assert!(ports.set_pairs("x", vec![SimAddressPair { ip_address: "1.1.1.1/0".into(), mac_address: None }]));
        assert_eq!(ports.get("x").unwrap().allowed_address_pairs.len(), 1);
    }

    fn pair(ip: &str) -> SimAddressPair {
        SimAddressPair { ip_address: ip.into(), mac_address: None }
    }

    #[test]
    fn an_armed_change_fires_once_after_a_read_that_shows_the_port() {
        let mut ports = ports();
        assert_eq!(
            ports.after_next_read("nope", PairsChange::Remove("x".into())),
            Err(PortError::NotFound("nope".into()))
        );
        assert!(matches!(
            ports.after_next_read("vip-1", PairsChange::Add(pair("0.0.0.0"))),
            Err(PortError::InvalidPairs(PairsError::AnyAddress(0)))
        ));
        ports.after_next_read("vip-1", PairsChange::Add(pair("10.0.0.9"))).unwrap();
        assert_eq!(ports.fire_after_read(["vip-2"]), Vec::<String>::new());
        assert_eq!(ports.fire_after_read(["vip-1", "vip-2"]), ["vip-1"]);
        assert_eq!(ports.get("vip-1").unwrap().allowed_address_pairs, vec![pair("10.0.0.9")]);
        assert!(ports.fire_after_read(["vip-1"]).is_empty(), "one-shot");
        assert!(ports.pending_after_read().is_empty());

        // Add is idempotent; Remove and Replace do what they say.
        let mut list = vec![pair("10.0.0.9")];
        PairsChange::Add(pair("10.0.0.9")).apply(&mut list, DEFAULT_MAX_PAIRS);
        assert_eq!(list.len(), 1);
        PairsChange::Replace(vec![pair("10.0.0.1"), pair("10.0.0.2")]).apply(&mut list, DEFAULT_MAX_PAIRS);
        PairsChange::Remove("10.0.0.1".into()).apply(&mut list, DEFAULT_MAX_PAIRS);
        assert_eq!(list, vec![pair("10.0.0.2")]);

        // Removing the port disarms it.
        ports.after_next_read("vip-2", PairsChange::Replace(vec![])).unwrap();
        assert!(ports.clear_after_next_read("vip-2"));
        assert!(!ports.clear_after_next_read("vip-2"));
        ports.after_next_read("vip-2", PairsChange::Replace(vec![])).unwrap();
        ports.remove("vip-2");
        assert!(ports.pending_after_read().is_empty());
    }

    /// `n` distinct pairs: 10.0.x.y.
    fn pairs(n: usize) -> Vec<SimAddressPair> {
        (0..n).map(|i| pair(&format!("10.0.{}.{}", i / 250, i % 250 + 1))).collect()
    }

    #[test]
    fn concurrent_writers_follow_the_max_pairs_setting() {
        use crate::simulator::MAX_PAIRS_CEILING;

        let mut ports = ports();
        assert_eq!(ports.max_pairs(), DEFAULT_MAX_PAIRS);
        for bad in [0, MAX_PAIRS_CEILING + 1] {
            assert_eq!(
                ports.set_max_pairs(bad).map_err(|e| e.to_string()),
                Err(format!("max_pairs must be 1 to 10000, got {bad}"))
            );
        }
        assert_eq!(ports.max_pairs(), DEFAULT_MAX_PAIRS, "a refused value changes nothing");
        assert!(Ports::new(0).is_err() && Ports::new(MAX_PAIRS_CEILING + 1).is_err());
        assert_eq!(Ports::new(7).map(|p| p.max_pairs()).ok(), Some(7));

        // Raised, then lowered: a Replace is checked against the limit when armed.
        for limit in [250, 3] {
            ports.set_max_pairs(limit).unwrap();
            ports.after_next_read("vip-1", PairsChange::Replace(pairs(limit))).unwrap();
            assert_eq!(
                ports.after_next_read("vip-1", PairsChange::Replace(pairs(limit + 1))),
                Err(PortError::InvalidPairs(PairsError::TooMany(limit)))
            );
            assert_eq!(
                PortError::InvalidPairs(PairsError::TooMany(limit)).to_string(),
                format!("allowed_address_pairs holds at most {limit} pairs")
            );
            assert_eq!(ports.fire_after_read(["vip-1"]), ["vip-1"]);
            assert_eq!(ports.get("vip-1").unwrap().allowed_address_pairs, pairs(limit));
            // An Add stops at the limit in force when it fires.
            ports.after_next_write("vip-1", PairsChange::Add(pair("10.9.9.9"))).unwrap();
            assert!(ports.fire_after_write("vip-1"));
            assert_eq!(ports.get("vip-1").unwrap().allowed_address_pairs.len(), limit);
        }
        // A reset keeps the setting, as it keeps latency and qps.
        ports.clear();
        assert_eq!(ports.max_pairs(), 3);
    }

    #[test]
    fn wire_form_has_no_project() {
        let wire = SimPort::vip("v", P, "n", "s", "10.0.0.1").wire();
        assert_eq!(wire["device_owner"], VIP_PORT_OWNER);
        assert_eq!(wire["status"], "DOWN");
        assert_eq!(wire["fixed_ips"], json!([{"subnet_id": "s", "ip_address": "10.0.0.1"}]));
        assert!(wire.get("project_id").is_none());
    }
}
