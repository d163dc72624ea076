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

    /// `server`'s port in `network`.
    pub async fn nic_of(&self, cloud: &GatedCloud, target: &CloudTarget, server: &str, network: &str) -> Nic {
        let key = Key {
            project: target.project_id.clone(),
            region: target.region.clone(),
            network: network.into(),
            server: server.into(),
        };
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
