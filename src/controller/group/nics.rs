//! A node's NIC in the VIP's network: its server's port there, found with one listing of the
//! VPC ports API (`device_id` + `network_id`), kept per server and network so a group's
//! reconcile does not list again for nodes it has seen.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::api::group::MemberReason;
use crate::controller::cloud::GatedCloud;
use crate::ecs::CloudTarget;

use super::plan::Nic;

/// A server's NIC, once found, is trusted this long (a NIC is rarely swapped on a live server;
/// a replaced node is another server).
const FOUND_FOR: Duration = Duration::from_secs(600);
/// "No port" or "several ports" is looked at again after this.
const MISSING_FOR: Duration = Duration::from_secs(60);
/// From this many servers to look up, one listing of the whole network is cheaper than one
/// listing per server (a page holds 2,000 ports).
const PREFETCH_FROM: usize = 4;
/// Entries kept at most: one per server and network a group has looked up.
const MAX_ENTRIES: usize = 20_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    project: String,
    region: String,
    network: String,
    server: String,
}

/// Looked-up NICs, per server and network.
#[derive(Default)]
pub struct NicLookup {
    cache: Mutex<HashMap<Key, (Nic, Instant)>>,
}

impl NicLookup {
    fn cached(&self, key: &Key) -> Option<Nic> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (nic, at) = cache.get(key)?;
        let ttl = if matches!(nic, Nic::Found(_)) { FOUND_FOR } else { MISSING_FOR };
        (at.elapsed() < ttl).then(|| nic.clone())
    }

    fn remember(&self, key: Key, nic: &Nic) {
        if matches!(nic, Nic::Unknown(_)) {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_ENTRIES && !cache.contains_key(&key) {
            cache.retain(|_, (n, at)| at.elapsed() < if matches!(n, Nic::Found(_)) { FOUND_FOR } else { MISSING_FOR });
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (nic.clone(), Instant::now()));
    }

    /// Servers not looked up yet, or whose entry expired, among `servers`.
    pub fn unknown<'a>(
        &self,
        target: &CloudTarget,
        network: &str,
        servers: impl Iterator<Item = &'a str>,
    ) -> Vec<String> {
        let mut out: Vec<String> =
            servers.filter(|s| self.cached(&key(target, network, s)).is_none()).map(str::to_string).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Looks up many servers' NICs with one listing of the network's ports (a group's first
    /// reconcile, or many new nodes): one call where one per server would be hundreds. A
    /// failed listing leaves them to be looked up one by one.
    pub async fn prefetch(&self, cloud: &GatedCloud, target: &CloudTarget, network: &str, servers: &[String]) {
        if servers.len() < PREFETCH_FROM || !cloud.has_vpc() {
            return;
        }
        let Ok(admitted) = cloud.admit(target) else { return };
        let wanted: std::collections::HashSet<String> = servers.iter().cloned().collect();
        match admitted.server_ports_in(network, &wanted).await {
            Ok(found) => {
                for (server, ports) in found {
                    let nic = judge(&server, network, ports);
                    self.remember(key(target, network, &server), &nic);
                }
            }
            Err(e) => {
                tracing::debug!(network, error = %e, "listing the network for NICs failed; looking them up one by one")
            }
        }
    }

    /// `server`'s port in `network`.
    pub async fn nic_of(&self, cloud: &GatedCloud, target: &CloudTarget, server: &str, network: &str) -> Nic {
        let key = key(target, network, server);
        if let Some(nic) = self.cached(&key) {
            return nic;
        }
        if !cloud.has_vpc() {
            return Nic::Unknown("the operator has no VPC endpoint to find the node's NIC with".into());
        }
        let admitted = match cloud.admit(target) {
            Ok(a) => a,
            Err(e) => return Nic::Unknown(format!("NIC lookup not sent: {e}")),
        };
        let nic = match admitted.server_ports(server, network).await {
            Ok(ports) => judge(server, network, ports.into_iter().map(|p| p.id).collect()),
            // A listing's answer, whatever it is, says nothing certain about the server.
            Err(e) => Nic::Unknown(format!("listing server {server}'s ports failed: {e}")),
        };
        self.remember(key, &nic);
        nic
    }
}

fn key(target: &CloudTarget, network: &str, server: &str) -> Key {
    Key {
        project: target.project_id.clone(),
        region: target.region.clone(),
        network: network.into(),
        server: server.into(),
    }
}

/// A listing said the server has no port in the network, or several, while the node's member
/// binds `member_nic`: before that member is let go, the NIC itself is read. Only the cloud's
/// 404 for it, or a port now on another server or network, confirms the listing; a port that
/// is still the server's keeps the member (one of several: as it is; not shown: unknown).
pub async fn confirm_missing(
    cloud: &GatedCloud,
    target: &CloudTarget,
    (server, network): (&str, &str),
    member_nic: &str,
    listed: Nic,
) -> Nic {
    let Nic::Missing { reason, message } = listed else { return listed };
    let admitted = match cloud.admit(target) {
        Ok(a) => a,
        Err(e) => return Nic::Unknown(format!("{message}; NIC {member_nic} not read to confirm it: {e}")),
    };
    match admitted.read_port(member_nic).await {
        Err(e) if e.class() == crate::ecs::ErrorClass::Gone => Nic::Missing { reason, message },
        Err(e) => Nic::Unknown(format!("{message}; NIC {member_nic} could not be read to confirm it: {e}")),
        Ok(port) if port.device_id != server || !(port.network_id.is_empty() || port.network_id == network) => {
            Nic::Missing {
                reason,
                message: format!("{message}; NIC {member_nic} is no longer this server's port in the network"),
            }
        }
        Ok(_) if reason == MemberReason::SeveralNics => Nic::Found(member_nic.to_string()),
        Ok(_) => Nic::Unknown(format!(
            "the listing did not show server {server}'s port in network {network}, but a read shows NIC {member_nic} still is: its member stays"
        )),
    }
}

/// One port is the NIC; none or several is the user's to sort out.
fn judge(server: &str, network: &str, mut ports: Vec<String>) -> Nic {
    ports.sort();
    ports.dedup();
    match ports.as_slice() {
        [one] => Nic::Found(one.clone()),
        [] => Nic::Missing {
            reason: MemberReason::NoNicInNetwork,
            message: format!("server {server} has no port in network {network}"),
        },
        several => Nic::Missing {
            reason: MemberReason::SeveralNics,
            message: format!(
                "server {server} has {} ports in network {network} ({}): name one with the vipoperator.dev/nic-id annotation",
                several.len(),
                several.iter().take(4).cloned().collect::<Vec<_>>().join(", ")
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::testing::FakeCloud;
    use crate::ecs::vpc::{FixedIp, Port};
    use crate::ecs::{Credentials, Operation};

    fn server_port(id: &str, server: &str, network: &str, owner: &str) -> Port {
        Port {
            id: id.into(),
            device_owner: owner.into(),
            device_id: server.into(),
            network_id: network.into(),
            fixed_ips: vec![FixedIp { subnet_id: "sub".into(), ip_address: "10.0.0.1".into() }],
            allowed_address_pairs: vec![],
            status: "ACTIVE".into(),
            mac_address: "fa:16:3e:00:00:01".into(),
        }
    }

    fn target() -> CloudTarget {
        CloudTarget {
            region: "r".into(),
            project_id: "p".into(),
            credentials: Credentials::new("AK", "sk", None).unwrap(),
        }
    }

    #[tokio::test]
    async fn many_servers_are_found_with_one_listing_and_few_one_by_one() {
        let mut ports: Vec<Port> =
            (0..10).map(|i| server_port(&format!("nic-{i}"), &format!("srv-{i}"), "net", "compute:az1")).collect();
        // srv-0 has a second port in the network; srv-1 one elsewhere only; a VIP port is no NIC.
        ports.push(server_port("nic-0b", "srv-0", "net", "compute:az1"));
        ports[1].network_id = "other".into();
        ports.push(server_port("vip", "srv-2", "net", crate::ecs::vpc::VIP_PORT_OWNER));
        let fake = FakeCloud::with_ports(ports);
        let cloud = GatedCloud::new(fake.clone()).with_vpc(fake.clone());
        let lookup = NicLookup::default();
        let servers: Vec<String> = (0..10).map(|i| format!("srv-{i}")).collect();
        let unknown = lookup.unknown(&target(), "net", servers.iter().map(String::as_str));
        assert_eq!(unknown.len(), 10);
        lookup.prefetch(&cloud, &target(), "net", &unknown).await;
        assert_eq!(fake.count(Operation::ListPorts), 1, "one listing for ten servers");
        assert!(lookup.unknown(&target(), "net", servers.iter().map(String::as_str)).is_empty());
        assert!(matches!(
            lookup.nic_of(&cloud, &target(), "srv-0", "net").await,
            Nic::Missing { reason: MemberReason::SeveralNics, .. }
        ));
        assert!(matches!(
            lookup.nic_of(&cloud, &target(), "srv-1", "net").await,
            Nic::Missing { reason: MemberReason::NoNicInNetwork, .. }
        ));
        assert_eq!(lookup.nic_of(&cloud, &target(), "srv-2", "net").await, Nic::Found("nic-2".into()));
        assert_eq!(fake.count(Operation::ListPorts), 1, "answered from what the listing showed");
        // A few new servers are looked up one by one, by device_id.
        lookup.prefetch(&cloud, &target(), "net", &["srv-new".to_string()]).await;
        assert_eq!(fake.count(Operation::ListPorts), 1, "too few to list the network");
        assert!(matches!(lookup.nic_of(&cloud, &target(), "srv-new", "net").await, Nic::Missing { .. }));
        assert_eq!(fake.count(Operation::ListPorts), 2);
    }

    #[tokio::test]
    async fn a_listing_that_no_longer_shows_a_members_nic_is_confirmed_by_reading_it() {
        let fake = FakeCloud::with_ports(vec![
            server_port("nic-a", "srv-a", "net", "compute:az1"),
            server_port("nic-moved", "srv-other", "net", "compute:az1"),
        ]);
        let cloud = GatedCloud::new(fake.clone()).with_vpc(fake.clone());
        let none = || Nic::Missing { reason: MemberReason::NoNicInNetwork, message: "no port".into() };
        let several = || Nic::Missing { reason: MemberReason::SeveralNics, message: "two ports".into() };
        let ask = |nic: &'static str, listed: Nic| {
            let cloud = &cloud;
            async move { confirm_missing(cloud, &target(), ("srv-a", "net"), nic, listed).await }
        };
        // Still the server's port: not gone on a listing's word.
        assert!(matches!(ask("nic-a", none()).await, Nic::Unknown(m) if m.contains("its member stays")));
        assert_eq!(ask("nic-a", several()).await, Nic::Found("nic-a".into()), "one of several: as it is");
        // The cloud's 404 for the NIC, or the port now another server's: confirmed.
        assert!(matches!(ask("nic-gone", none()).await, Nic::Missing { .. }));
        assert!(matches!(ask("nic-moved", several()).await, Nic::Missing { .. }));
        // A found NIC is not second-guessed (and costs no read).
        let reads = fake.count(Operation::GetPort);
        assert_eq!(ask("nic-a", Nic::Found("nic-a".into())).await, Nic::Found("nic-a".into()));
        assert_eq!(fake.count(Operation::GetPort), reads);
    }

    #[test]
    fn one_port_is_the_nic_and_none_or_several_say_so() {
        assert_eq!(judge("s", "n", vec!["p1".into()]), Nic::Found("p1".into()));
        assert_eq!(judge("s", "n", vec!["p1".into(), "p1".into()]), Nic::Found("p1".into()));
        assert!(matches!(judge("s", "n", vec![]), Nic::Missing { reason: MemberReason::NoNicInNetwork, .. }));
        assert!(matches!(
            judge("s", "n", vec!["p1".into(), "p2".into()]),
            Nic::Missing { reason: MemberReason::SeveralNics, message } if message.contains("p1, p2")
        ));
    }
}
