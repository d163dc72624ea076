//! The simulator's servers: which NIC ports each server holds. A server's NIC is a [`SimPort`]
//! whose `device_id` is the server's ID and whose `device_owner` is `compute:<zone>`, with one
//! fixed IP in a network and a MAC; listing ports with `device_id=<server>&network_id=<network>`
//! finds it, as on Huawei (see `huawei-vpc-ports.md` in the shared reference). The ports
//! themselves live with every other port ([`super::ports`]); here are what a server is, the
//! checks on a new one (admin input is hostile: every field bounded) and the ports it brings.
//!
//! The simulator's choices, not Huawei's: the zone is always `simulator`
//! ([`NIC_PORT_OWNER`](super::ports::NIC_PORT_OWNER)), a MAC left out is derived from the port
//! ID, a server may be left with no NIC, and addresses are not checked against other ports'
//! (two NICs may share an IP).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::ports::{NIC_PORT_OWNER, SimFixedIp, SimPort, derived_mac, is_mac};

/// Servers the simulator keeps at most.
pub const MAX_SERVERS: usize = 10_000;

/// NICs one server holds at most (the simulator's bound; Huawei's quota is not checked here).
pub const MAX_NICS_PER_SERVER: usize = 16;

/// The longest ID taken (server, port, project, network, subnet): what the client sends as a
/// path ID at most.
pub const MAX_ID_LEN: usize = 64;

/// Characters of a refused value quoted back in an error.
const QUOTED: usize = 64;

/// One NIC of a server to add. In JSON: `{"port_id", "network_id", "subnet_id"?, "ip_address",
/// "mac_address"?}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SimNic {
    /// The NIC's port ID (the NIC ID, as for ECS).
    pub port_id: String,
    pub network_id: String,
    #[serde(default)]
    pub subnet_id: String,
    pub ip_address: String,
    /// Derived from the port ID when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
}

impl SimNic {
    /// A NIC with no subnet and a derived MAC.
    pub fn new(port_id: &str, network_id: &str, ip_address: &str) -> Self {
        Self {
            port_id: port_id.into(),
            network_id: network_id.into(),
            subnet_id: String::new(),
            ip_address: ip_address.into(),
            mac_address: None,
        }
    }
}

/// A server to add (`POST /sim/servers`): `{"id", "project_id", "nics": [SimNic]}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NewServer {
    pub id: String,
    pub project_id: String,
    pub nics: Vec<SimNic>,
}

/// A server as the simulator keeps it. Its NICs' ports hold their addresses; this holds which
/// ports are its NICs, in the order added.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimServer {
    pub id: String,
    pub project_id: String,
    pub nics: Vec<String>,
}

/// Why a server cannot be added or removed. The texts are what the admin API answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("{what} {value:?} must be 1 to {MAX_ID_LEN} letters, digits, '-', '_' or '.'")]
    BadId { what: &'static str, value: String },
    #[error("a server needs 1 to {MAX_NICS_PER_SERVER} NICs")]
    NicCount,
    #[error("nics[{index}].ip_address {value:?} is not an IP address of a host")]
    NotAnIp { index: usize, value: String },
    #[error("nics[{index}].mac_address {value:?} is not a MAC address (xx:xx:xx:xx:xx:xx)")]
    NotAMac { index: usize, value: String },
    #[error("port {0} is named twice")]
    Repeated(String),
    #[error("the simulator holds at most {MAX_SERVERS} servers")]
    TooManyServers,
    #[error("server {0} exists already")]
    Exists(String),
    #[error("no server {0}")]
    NotFound(String),
    #[error("server {server} has no NIC {port}")]
    NoSuchNic { server: String, port: String },
    /// The port store refused the NICs (a port ID taken, or no room).
    #[error("{0}")]
    Ports(String),
    #[error("the simulator keeps at most {0} missing NICs; DELETE /sim/missing-nics/{{id}} some first")]
    TooManyMissing(usize),
}

impl ServerError {
    /// `NotFound`, with the ID shortened (it may come from a path of any length).
    pub(super) fn not_found(id: &str) -> Self {
        ServerError::NotFound(quoted(id))
    }
}

/// A refused value, shortened: it is quoted back and may be arbitrarily long.
fn quoted(value: &str) -> String {
    value.chars().take(QUOTED).collect()
}

/// 1 to [`MAX_ID_LEN`] ASCII letters, digits, `-`, `_`, `.`, and not `.` or `..` (IDs go into
/// paths, the cloud's and the admin API's).
fn check_id(what: &'static str, value: &str) -> Result<(), ServerError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value != "."
        && value != "..";
    if ok { Ok(()) } else { Err(ServerError::BadId { what, value: quoted(value) }) }
}

impl NewServer {
    /// Checks every field and gives the server and its NICs' ports (IPs in their canonical
    /// form, so listings by `fixed_ips=ip_address=X` match what a client sends).
    pub(super) fn check(self) -> Result<(SimServer, Vec<SimPort>), ServerError> {
        check_id("server id", &self.id)?;
        check_id("project_id", &self.project_id)?;
        if self.nics.is_empty() || self.nics.len() > MAX_NICS_PER_SERVER {
            return Err(ServerError::NicCount);
        }
        let mut seen = BTreeSet::new();
        let mut ports = Vec::with_capacity(self.nics.len());
        for (index, nic) in self.nics.into_iter().enumerate() {
            check_id("port_id", &nic.port_id)?;
            check_id("network_id", &nic.network_id)?;
            if !nic.subnet_id.is_empty() {
                check_id("subnet_id", &nic.subnet_id)?;
            }
            if !seen.insert(nic.port_id.clone()) {
                return Err(ServerError::Repeated(nic.port_id));
            }
            let ip = nic
                .ip_address
                .parse::<std::net::IpAddr>()
                .ok()
                .filter(|ip| !ip.is_unspecified() && !ip.is_multicast())
                .ok_or_else(|| ServerError::NotAnIp { index, value: quoted(&nic.ip_address) })?;
            let mac_address = match nic.mac_address {
                Some(mac) if is_mac(&mac) => mac.to_ascii_lowercase(),
                Some(mac) => return Err(ServerError::NotAMac { index, value: quoted(&mac) }),
                None => derived_mac(&nic.port_id),
            };
            ports.push(SimPort {
                id: nic.port_id,
                project_id: self.project_id.clone(),
                device_owner: NIC_PORT_OWNER.into(),
                device_id: self.id.clone(),
                network_id: nic.network_id,
                mac_address,
                fixed_ips: vec![SimFixedIp { subnet_id: nic.subnet_id, ip_address: ip.to_string() }],
                allowed_address_pairs: vec![],
                status: "ACTIVE".into(),
            });
        }
        let server =
            SimServer { id: self.id, project_id: self.project_id, nics: ports.iter().map(|p| p.id.clone()).collect() };
        Ok((server, ports))
    }
}

/// Every server, by ID.
#[derive(Debug, Default)]
pub(super) struct Servers {
    servers: BTreeMap<String, SimServer>,
}

impl Servers {
    /// Whether `id` may be added: not there yet, and room for it.
    pub(super) fn can_add(&self, id: &str) -> Result<(), ServerError> {
        if self.servers.contains_key(id) {
            return Err(ServerError::Exists(id.into()));
        }
        if self.servers.len() >= MAX_SERVERS {
            return Err(ServerError::TooManyServers);
        }
        Ok(())
    }

    /// Keeps a server checked by [`Servers::can_add`].
    pub(super) fn insert(&mut self, server: SimServer) {
        self.servers.insert(server.id.clone(), server);
    }

    pub(super) fn get(&self, id: &str) -> Option<&SimServer> {
        self.servers.get(id)
    }

    pub(super) fn remove(&mut self, id: &str) -> Option<SimServer> {
        self.servers.remove(id)
    }

    /// Takes one NIC off a server (the server stays, possibly with none).
    pub(super) fn remove_nic(&mut self, server: &str, port: &str) -> Result<(), ServerError> {
        let s = self.servers.get_mut(server).ok_or_else(|| ServerError::not_found(server))?;
        let before = s.nics.len();
        s.nics.retain(|n| n != port);
        if s.nics.len() == before {
            return Err(ServerError::NoSuchNic { server: server.into(), port: quoted(port) });
        }
        Ok(())
    }

    pub(super) fn all(&self) -> BTreeMap<String, SimServer> {
        self.servers.clone()
    }

    pub(super) fn list(&self) -> Vec<SimServer> {
        self.servers.values().cloned().collect()
    }

    pub(super) fn clear(&mut self) {
        self.servers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(nics: Vec<SimNic>) -> NewServer {
        NewServer { id: "server-1".into(), project_id: "project-a".into(), nics }
    }

    #[test]
    fn a_servers_nics_are_ports_it_holds() {
        let mut nic = SimNic::new("port-1", "net-1", "fd00:0::5");
        nic.mac_address = Some("FA:16:3E:00:00:0A".into());
        let (s, ports) = server(vec![SimNic::new("port-0", "net-1", "192.168.0.10"), nic]).check().unwrap();
        assert_eq!(
            s,
            SimServer {
                id: "server-1".into(),
                project_id: "project-a".into(),
                nics: vec!["port-0".into(), "port-1".into()]
            }
        );
        assert_eq!(ports[0].device_id, "server-1");
        assert_eq!(ports[0].device_owner, "compute:simulator");
        assert_eq!(ports[0].project_id, "project-a");
        assert_eq!(ports[0].network_id, "net-1");
        assert_eq!(ports[0].ip(), Some("192.168.0.10"));
        assert_eq!(ports[0].mac_address, derived_mac("port-0"));
        assert_eq!(ports[0].status, "ACTIVE");
        assert_eq!(ports[1].ip(), Some("fd00::5"), "canonical form");
        assert_eq!(ports[1].mac_address, "fa:16:3e:00:00:0a");
    }

    #[test]
    fn bad_servers_are_refused_with_what_is_wrong() {
        let text = |s: NewServer| s.check().err().map(|e| e.to_string()).unwrap_or_default();
        let ok = || SimNic::new("port-0", "net-1", "10.0.0.1");
        let with = |f: fn(&mut SimNic)| {
            let mut n = ok();
            f(&mut n);
            server(vec![n])
        };
        assert_eq!(text(server(vec![])), "a server needs 1 to 16 NICs");
        let many = (0..17).map(|i| SimNic::new(&format!("p{i}"), "n", "10.0.0.1")).collect();
        assert_eq!(text(server(many)), "a server needs 1 to 16 NICs");
        assert_eq!(text(server(vec![ok(), ok()])), "port port-0 is named twice");
        assert_eq!(
            text(NewServer { id: "a/b".into(), ..server(vec![ok()]) }),
            r#"server id "a/b" must be 1 to 64 letters, digits, '-', '_' or '.'"#
        );
        assert!(text(NewServer { project_id: String::new(), ..server(vec![ok()]) }).starts_with("project_id \"\""));
        assert!(text(NewServer { id: "..".into(), ..server(vec![ok()]) }).starts_with("server id"));
        let long = text(NewServer { id: "x".repeat(100_000), ..server(vec![ok()]) });
        assert!(long.len() < 200, "{long}");
        assert!(text(with(|n| n.port_id = "p?x".into())).starts_with("port_id"));
        assert!(text(with(|n| n.network_id = "n".repeat(65))).starts_with("network_id"));
        assert!(text(with(|n| n.subnet_id = "s s".into())).starts_with("subnet_id"));
        assert_eq!(
            text(with(|n| n.ip_address = "10.0.0.256".into())),
            r#"nics[0].ip_address "10.0.0.256" is not an IP address of a host"#
        );
        for ip in ["", "0.0.0.0", "::", "224.0.0.1", "10.0.0.0/24", " 10.0.0.1"] {
            let mut n = ok();
            n.ip_address = ip.into();
            assert!(matches!(server(vec![n]).check(), Err(ServerError::NotAnIp { .. })), "{ip:?}");
        }
        assert_eq!(
            text(with(|n| n.mac_address = Some("fa:16:3e:00:00".into()))),
            r#"nics[0].mac_address "fa:16:3e:00:00" is not a MAC address (xx:xx:xx:xx:xx:xx)"#
        );
    }

    #[test]
    fn servers_are_bounded_and_nics_come_off_one_by_one() {
        let mut servers = Servers::default();
        let s = |id: &str| SimServer { id: id.into(), project_id: "p".into(), nics: vec!["a".into(), "b".into()] };
        servers.insert(s("s1"));
        assert_eq!(servers.can_add("s1"), Err(ServerError::Exists("s1".into())));
        assert_eq!(servers.can_add("s2"), Ok(()));
        assert_eq!(
            servers.remove_nic("s1", "c"),
            Err(ServerError::NoSuchNic { server: "s1".into(), port: "c".into() })
        );
        assert_eq!(servers.remove_nic("s2", "a"), Err(ServerError::NotFound("s2".into())));
        servers.remove_nic("s1", "a").unwrap();
        assert_eq!(servers.get("s1").map(|s| s.nics.clone()), Some(vec!["b".to_string()]));
        for i in 1..MAX_SERVERS {
            servers.insert(s(&format!("x{i}")));
        }
        assert_eq!(servers.can_add("one-more"), Err(ServerError::TooManyServers));
        assert!(servers.remove("s1").is_some());
        assert_eq!(servers.can_add("one-more"), Ok(()));
    }
}
