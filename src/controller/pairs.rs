//! Binding through the VPC ports API (`api: VPC`). A VIP is bound to a NIC when the VIP port's
//! `allowed_address_pairs` holds the NIC's IP; the NIC's port carries `1.1.1.1/0` so the VIP's
//! traffic passes its source check (Huawei's "update port" page; its console adds it too).
//!
//! Lost updates: the list is replaced whole and has no version. Writes to one port are
//! serialised inside the operator; a list is written only when two reads in a row agree (a
//! writer that changed the port in between is seen, and the edit starts again from its
//! list); the port is read back after the write, and the edit is repeated (bounded) when
//! another writer's list replaced ours. What no client can close without a version on
//! Huawei's side is the moment between the last read and the write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::ecs::vpc::{AddressPair, MAX_PAGE, PortFilter, VIP_PORT_OWNER, VpcApi};
use crate::ecs::{CloudTarget, EcsError, ErrorClass};

/// What the NIC's port carries to let traffic for other addresses through (source check off).
pub const SOURCE_CHECK_OFF: &str = "1.1.1.1/0";
/// Read-modify-write rounds on one port before giving up for this reconcile.
const MAX_ROUNDS: usize = 4;
/// Pages of one project's VIP ports read at most (2,000 each): a listing that never ends (a
/// server that ignores the marker) is an error, not a loop.
pub const MAX_LIST_PAGES: usize = 100;

/// Each VIP port of a project, and the addresses its `allowed_address_pairs` hold.
pub type VipPairs = HashMap<String, std::collections::HashSet<String>>;

/// A VPC bind or unbind: which VIP, in which network, on which NIC.
#[derive(Debug, Clone)]
pub struct PairsTarget<'a> {
    pub nic_id: &'a str,
    /// The network the VIP and the NIC are in (`spec.subnetId`).
    pub network_id: &'a str,
    pub vip: &'a str,
    /// Also pair the NIC's MAC with its IP (`spec.reverseBinding`).
    pub with_mac: bool,
}

/// What a VPC bind did, for the record the deletion undoes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairsRecord {
    pub vip_port_id: String,
    pub nic_ip: String,
    pub source_check_off_added: bool,
}

/// What is known of an earlier bind, for the unbind.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub vip_port_id: Option<String>,
    pub nic_ip: Option<String>,
    pub source_check_off_added: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PairsError {
    /// A cloud call failed; classified as usual.
    #[error("{0}")]
    Cloud(EcsError),
    /// No port holds the VIP's address in the network: nothing was written (the operator
    /// does not create VIPs).
    #[error("no VIP port has address {vip} in network {network}: create the virtual IP first")]
    VipNotFound { vip: String, network: String },
    /// The address belongs to a port that is not a VIP (a server's own NIC, a load balancer).
    #[error("address {vip} belongs to port {port_id}, which is not a virtual IP (device_owner {owner:?})")]
    NotAVip { vip: String, port_id: String, owner: String },
    #[error("{count} VIP ports have address {vip} in network {network}; expected one")]
    Ambiguous { vip: String, network: String, count: usize },
    #[error("NIC {nic} has no IPv4 address in network {network}")]
    NicOutsideNetwork { nic: String, network: String },
    /// Other writers kept changing the port's list; nothing built from a stale read was written.
    #[error("port {port_id} kept changing under concurrent writers; trying again later")]
    Contended { port_id: String, wrote: bool },
}

impl PairsError {
    /// Whether the failed edit may have changed the port.
    pub fn may_have_written(&self) -> bool {
        match self {
            PairsError::Cloud(e) => e.may_have_applied(),
            PairsError::Contended { wrote, .. } => *wrote,
            _ => false,
        }
    }

    /// Whether retrying the same spec can help without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            PairsError::Cloud(e) => e.class() == ErrorClass::Retryable,
            PairsError::Contended { .. } | PairsError::VipNotFound { .. } => true,
            PairsError::NotAVip { .. } | PairsError::Ambiguous { .. } | PairsError::NicOutsideNetwork { .. } => false,
        }
    }
}

/// A failed VPC bind or unbind, and what it may have changed.
#[derive(Debug)]
pub struct PairsFailure {
    pub error: PairsError,
    /// Facts learned before the failure that the record must keep (the NIC got `1.1.1.1/0`
    /// from us; the VIP port and NIC IP the pair went to).
    pub partial: Option<PairsRecord>,
    /// A write to the VIP port was sent without a known outcome.
    pub may_have_applied: bool,
}

impl From<PairsError> for PairsFailure {
    fn from(error: PairsError) -> Self {
        let may_have_applied = error.may_have_written();
        Self { error, partial: None, may_have_applied }
    }
}

fn cloud(e: EcsError) -> PairsFailure {
    PairsError::Cloud(e).into()
}

/// How an unbind went (all three leave nothing bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unbound {
    Removed {
        vip_port_id: String,
    },
    /// The VIP port did not hold the NIC's IP (nothing was written to it).
    NotThere {
        vip_port_id: String,
    },
    /// The VIP port reads 404 `VPC.2502`: nothing can be bound to it.
    VipGone {
        vip_port_id: String,
    },
}

/// How an edit went.
#[derive(Debug)]
enum Edit {
    /// The port already was as wanted: nothing was written.
    AlreadyThere,
    Written,
    /// The port does not exist: the read's own answer (404 `VPC.2502`).
    PortGone(EcsError),
}

/// VPC binds and unbinds, with writes to each port serialised.
pub struct PortPairs {
    api: Arc<dyn VpcApi>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl PortPairs {
    pub fn new(api: Arc<dyn VpcApi>) -> Self {
        Self { api, locks: Mutex::default() }
    }

    /// Binds: the NIC's port gets `1.1.1.1/0` if it lacks it, then the VIP port gets the NIC's
    /// IP. Also says whether the VIP port had to be written (false: it was bound already).
    pub async fn bind(
        &self,
        target: &CloudTarget,
        t: &PairsTarget<'_>,
        recorded: &Recorded,
    ) -> Result<(PairsRecord, bool), PairsFailure> {
        // A VIP's port keeps its ID: a re-bind (drift) reads it directly instead of listing.
        let vip_port_id = match &recorded.vip_port_id {
            Some(id) => id.clone(),
            None => self.find_vip_port(target, t).await?,
        };
        let nic = self.api.get_port(target, t.nic_id).await.map_err(cloud)?;
        let nic_ip = nic
            .fixed_ips
            .iter()
            .find(|ip| ip.ip_address.parse::<std::net::Ipv4Addr>().is_ok())
            .filter(|_| nic.network_id.is_empty() || nic.network_id == t.network_id)
            .map(|ip| ip.ip_address.clone())
            .ok_or_else(|| PairsError::NicOutsideNetwork { nic: t.nic_id.into(), network: t.network_id.into() })?;
        let mac = (t.with_mac && !nic.mac_address.is_empty()).then(|| nic.mac_address.clone());
        let check_off = |pairs: &[AddressPair]| {
            (!pairs.iter().any(|p| p.ip_address == SOURCE_CHECK_OFF)).then(|| {
                let mut next = pairs.to_vec();
                next.push(AddressPair { ip_address: SOURCE_CHECK_OFF.into(), mac_address: None });
                next
            })
        };
        let added = match self.edit(target, t.nic_id, check_off).await {
            Ok(Edit::Written) => true,
            Ok(Edit::AlreadyThere) => recorded.source_check_off_added,
            // The NIC's port went away since it was read above.
            Ok(Edit::PortGone(gone)) => return Err(cloud(gone)),
            Err(e) => return Err(e.into()),
        };
        let record =
            PairsRecord { vip_port_id: vip_port_id.clone(), nic_ip: nic_ip.clone(), source_check_off_added: added };
        let add_ip = |pairs: &[AddressPair]| {
            (!pairs.iter().any(|p| p.ip_address == nic_ip)).then(|| {
                let mut next = pairs.to_vec();
                next.push(AddressPair { ip_address: nic_ip.clone(), mac_address: mac.clone() });
                next
            })
        };
        match self.edit(target, &vip_port_id, add_ip).await {
            Ok(Edit::Written) => Ok((record, true)),
            Ok(Edit::AlreadyThere) => Ok((record, false)),
            Ok(Edit::PortGone(_)) => Err(PairsFailure {
                error: PairsError::VipNotFound { vip: t.vip.into(), network: t.network_id.into() },
                partial: Some(record),
                may_have_applied: false,
            }),
            Err(error) => {
                let may_have_applied = error.may_have_written();
                Err(PairsFailure { error, partial: Some(record), may_have_applied })
            }
        }
    }

    /// Unbinds: exactly this NIC's IP leaves the VIP port's pairs; `1.1.1.1/0` leaves the NIC's
    /// port only if the operator added it and `nic_still_used` is false. `Ok` also when the VIP
    /// port is gone (nothing can be bound to it). A NIC whose port is gone, with no recorded IP,
    /// is the cloud's `Gone` (404 `VPC.2502`).
    pub async fn unbind(
        &self,
        target: &CloudTarget,
        t: &PairsTarget<'_>,
        recorded: &Recorded,
        nic_still_used: bool,
    ) -> Result<Unbound, PairsFailure> {
        let nic_ip = match &recorded.nic_ip {
            Some(ip) => ip.clone(),
            None => {
                let nic = self.api.get_port(target, t.nic_id).await.map_err(cloud)?;
                match nic.fixed_ips.iter().find(|ip| ip.ip_address.parse::<std::net::Ipv4Addr>().is_ok()) {
                    Some(ip) => ip.ip_address.clone(),
                    None => {
                        return Err(PairsError::NicOutsideNetwork {
                            nic: t.nic_id.into(),
                            network: t.network_id.into(),
                        }
                        .into());
                    }
                }
            }
        };
        let vip_port_id = match &recorded.vip_port_id {
            Some(id) => id.clone(),
            None => self.find_vip_port(target, t).await?,
        };
        let remove = |pairs: &[AddressPair]| {
            pairs
                .iter()
                .any(|p| p.ip_address == nic_ip)
                .then(|| pairs.iter().filter(|p| p.ip_address != nic_ip).cloned().collect())
        };
        let outcome = match self.edit(target, &vip_port_id, remove).await {
            Ok(Edit::Written) => Unbound::Removed { vip_port_id },
            Ok(Edit::AlreadyThere) => Unbound::NotThere { vip_port_id },
            Ok(Edit::PortGone(_)) => Unbound::VipGone { vip_port_id },
            Err(error) => {
                let may_have_applied = error.may_have_written();
                return Err(PairsFailure { error, partial: None, may_have_applied });
            }
        };
        if recorded.source_check_off_added && !nic_still_used {
            let remove_check_off = |pairs: &[AddressPair]| {
                pairs
                    .iter()
                    .any(|p| p.ip_address == SOURCE_CHECK_OFF)
                    .then(|| pairs.iter().filter(|p| p.ip_address != SOURCE_CHECK_OFF).cloned().collect())
            };
            // The VIP is off the NIC already; a NIC that is gone needs nothing more.
            self.edit(target, t.nic_id, remove_check_off).await.map_err(PairsFailure::from)?;
        }
        Ok(outcome)
    }

    /// Every VIP port of the target's project with the addresses it lets through: one listing
    /// (filtered by `device_owner`, [`MAX_PAGE`] ports a page) instead of a read per binding.
    pub async fn vip_pairs(&self, target: &CloudTarget) -> Result<VipPairs, EcsError> {
        let mut all = VipPairs::new();
        let mut filter =
            PortFilter { device_owner: Some(VIP_PORT_OWNER.into()), limit: MAX_PAGE, ..PortFilter::default() };
        for _ in 0..MAX_LIST_PAGES {
            let page = self.api.list_ports(target, &filter).await?;
            let full = page.len() >= filter.page_size() as usize;
            let last = page.last().map(|p| p.id.clone());
            for port in page.into_iter().filter(|p| p.device_owner == VIP_PORT_OWNER) {
                all.insert(port.id, port.allowed_address_pairs.into_iter().map(|p| p.ip_address).collect());
            }
            match last {
                Some(last) if full && filter.marker.as_deref() != Some(last.as_str()) => filter.marker = Some(last),
                Some(_) if full => {
                    return Err(EcsError::InvalidRequest("the port listing repeated its last page".into()));
                }
                _ => return Ok(all),
            }
        }
        Err(EcsError::InvalidRequest(format!("the VIP port listing ran past {MAX_LIST_PAGES} pages")))
    }

    /// The VIP's port: the one port with the VIP's address in the network, a VIP port.
    async fn find_vip_port(&self, target: &CloudTarget, t: &PairsTarget<'_>) -> Result<String, PairsFailure> {
        let filter = PortFilter {
            network_id: Some(t.network_id.into()),
            ip_address: Some(t.vip.into()),
            ..PortFilter::default()
        };
        let ports = match self.api.list_ports(target, &filter).await {
            Ok(ports) => ports,
            // A listing's 404 says nothing about any one port (and never that the NIC is gone).
            Err(e) if e.class() == ErrorClass::Gone => {
                return Err(PairsError::VipNotFound { vip: t.vip.into(), network: t.network_id.into() }.into());
            }
            Err(e) => return Err(cloud(e)),
        };
        // The filter is the server's; the answer is checked, not trusted.
        let mut matching = ports.into_iter().filter(|p| p.fixed_ips.iter().any(|ip| ip.ip_address == t.vip));
        let Some(port) = matching.next() else {
            return Err(PairsError::VipNotFound { vip: t.vip.into(), network: t.network_id.into() }.into());
        };
        let rest = matching.count();
        if rest > 0 {
            return Err(PairsError::Ambiguous {
                vip: t.vip.into(),
                network: t.network_id.into(),
                count: rest.saturating_add(1),
            }
            .into());
        }
        if port.device_owner != VIP_PORT_OWNER {
            return Err(PairsError::NotAVip { vip: t.vip.into(), port_id: port.id, owner: port.device_owner }.into());
        }
        Ok(port.id)
    }

    /// Read-modify-write of one port's pairs under its lock. `change` returns the new list, or
    /// `None` when the port already is as wanted.
    async fn edit(
        &self,
        target: &CloudTarget,
        port_id: &str,
        change: impl Fn(&[AddressPair]) -> Option<Vec<AddressPair>>,
    ) -> Result<Edit, PairsError> {
        let lock = self.lock_for(port_id);
        let _held = lock.lock().await;
        let result = self.edit_locked(target, port_id, &change).await;
        drop(_held);
        self.forget_unused(port_id, lock);
        result
    }

    async fn edit_locked(
        &self,
        target: &CloudTarget,
        port_id: &str,
        change: &impl Fn(&[AddressPair]) -> Option<Vec<AddressPair>>,
    ) -> Result<Edit, PairsError> {
        // `Ok(Err(gone))`: the port does not exist; other failures end the edit.
        let read = |what| async move {
            match self.api.get_port(target, port_id).await {
                Ok(port) => Ok(Ok(port.allowed_address_pairs)),
                Err(e) if e.class() == ErrorClass::Gone => Ok(Err(e)),
                Err(e) => {
                    tracing::debug!(port = port_id, error = %e, "reading the port {what} failed");
                    Err(PairsError::Cloud(e))
                }
            }
        };
        let mut written = false;
        for _ in 0..MAX_ROUNDS {
            let first = match read("before an edit").await? {
                Ok(pairs) => pairs,
                Err(gone) => return Ok(Edit::PortGone(gone)),
            };
            let Some(next) = change(&first) else {
                return Ok(if written { Edit::Written } else { Edit::AlreadyThere });
            };
            // Written only when a second read agrees with the one the list was built from.
            let second = match read("right before the write").await? {
                Ok(pairs) => pairs,
                Err(gone) => return Ok(Edit::PortGone(gone)),
            };
            if second != first {
                tracing::debug!(port = port_id, "the port changed between two reads; building the list again");
                continue;
            }
            self.api.update_pairs(target, port_id, &next).await.map_err(PairsError::Cloud)?;
            written = true;
            // The next round's first read is the read-back: done if it shows the change.
        }
        Err(PairsError::Contended { port_id: port_id.into(), wrote: written })
    }

    fn lock_for(&self, port_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(port_id.to_string()).or_default().clone()
    }

    /// Drops the port's lock once nobody holds or waits for it (ports are many; locks few).
    fn forget_unused(&self, port_id: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        drop(lock);
        if locks.get(port_id).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(port_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use futures::future::BoxFuture;

    use super::*;
    use crate::ecs::Credentials;
    use crate::ecs::vpc::{FixedIp, Port};

    const NET: &str = "net-1";
    const VIP: &str = "10.0.0.100";
    const NIC: &str = "nic-1";
    const NIC_IP: &str = "10.0.0.5";

    /// Ports in memory. `after_read` runs once, right after the read it is queued for: another
    /// writer acting between our read and our write. `fail_update` answers the next update.
    #[derive(Default)]
    struct Cloud {
        ports: Mutex<HashMap<String, Port>>,
        after_read: Mutex<VecDeque<(String, Vec<AddressPair>)>>,
        fail_update: Mutex<Option<EcsError>>,
        calls: Mutex<Vec<String>>,
    }

    fn pair(ip: &str) -> AddressPair {
        AddressPair { ip_address: ip.into(), mac_address: None }
    }

    fn port(id: &str, owner: &str, ip: &str, pairs: &[&str]) -> Port {
        Port {
            id: id.into(),
            device_owner: owner.into(),
            device_id: String::new(),
            network_id: NET.into(),
            fixed_ips: vec![FixedIp { subnet_id: "sub".into(), ip_address: ip.into() }],
            allowed_address_pairs: pairs.iter().map(|p| pair(p)).collect(),
            status: "DOWN".into(),
            mac_address: "fa:16:3e:00:00:01".into(),
        }
    }

    fn not_found() -> EcsError {
        crate::ecs::error::coded(404, "VPC.2502")
    }

    impl Cloud {
        fn with(ports: Vec<Port>) -> Arc<Self> {
            let cloud = Self::default();
            *cloud.ports.lock().unwrap() = ports.into_iter().map(|p| (p.id.clone(), p)).collect();
            Arc::new(cloud)
        }

        fn pairs(&self, id: &str) -> Vec<String> {
            self.ports.lock().unwrap()[id].allowed_address_pairs.iter().map(|p| p.ip_address.clone()).collect()
        }

        fn updates(&self) -> usize {
            self.calls.lock().unwrap().iter().filter(|c| c.starts_with("put")).count()
        }
    }

    impl VpcApi for Cloud {
        fn get_port<'a>(&'a self, _: &'a CloudTarget, id: &'a str) -> BoxFuture<'a, Result<Port, EcsError>> {
            self.calls.lock().unwrap().push(format!("get {id}"));
            let answer = self.ports.lock().unwrap().get(id).cloned().ok_or_else(not_found);
            let mut queue = self.after_read.lock().unwrap();
            if queue.front().is_some_and(|(port, _)| port == id) {
                let (_, pairs) = queue.pop_front().unwrap();
                if let Some(p) = self.ports.lock().unwrap().get_mut(id) {
                    p.allowed_address_pairs = pairs;
                }
            }
            Box::pin(async move { answer })
        }

        fn list_ports<'a>(
            &'a self,
            _: &'a CloudTarget,
            f: &'a PortFilter,
        ) -> BoxFuture<'a, Result<Vec<Port>, EcsError>> {
            self.calls.lock().unwrap().push("list".into());
            let ports = self.ports.lock().unwrap();
            let found = ports
                .values()
                .filter(|p| f.network_id.as_deref().is_none_or(|n| p.network_id == n))
                .filter(|p| f.ip_address.as_deref().is_none_or(|ip| p.fixed_ips.iter().any(|x| x.ip_address == ip)))
                .cloned()
                .collect();
            Box::pin(async move { Ok(found) })
        }

        fn update_pairs<'a>(
            &'a self,
            _: &'a CloudTarget,
            id: &'a str,
            pairs: &'a [AddressPair],
        ) -> BoxFuture<'a, Result<Port, EcsError>> {
            self.calls.lock().unwrap().push(format!("put {id}"));
            if let Some(e) = self.fail_update.lock().unwrap().take() {
                return Box::pin(async move { Err(e) });
            }
            let answer = match self.ports.lock().unwrap().get_mut(id) {
                Some(p) => {
                    p.allowed_address_pairs = pairs.to_vec();
                    Ok(p.clone())
                }
                None => Err(not_found()),
            };
            Box::pin(async move { answer })
        }
    }

    fn target() -> CloudTarget {
        CloudTarget {
            region: "r".into(),
            project_id: "p".into(),
            credentials: Credentials::new("AK", "sk", None).unwrap(),
        }
    }

    fn t() -> PairsTarget<'static> {
        PairsTarget { nic_id: NIC, network_id: NET, vip: VIP, with_mac: false }
    }

    fn setup(vip_pairs: &[&str], nic_pairs: &[&str]) -> (Arc<Cloud>, PortPairs) {
        let cloud = Cloud::with(vec![
            port("vip-port", VIP_PORT_OWNER, VIP, vip_pairs),
            port(NIC, "compute:az1", NIC_IP, nic_pairs),
        ]);
        let pairs = PortPairs::new(cloud.clone());
        (cloud, pairs)
    }

    #[tokio::test]
    async fn bind_adds_the_nic_ip_and_the_source_check_off_keeping_every_other_pair() {
        let (cloud, pairs) = setup(&["10.0.0.9"], &["10.0.0.77"]);
        let (record, wrote) = pairs.bind(&target(), &t(), &Recorded::default()).await.unwrap();
        assert!(wrote);
        assert_eq!(
            record,
            PairsRecord { vip_port_id: "vip-port".into(), nic_ip: NIC_IP.into(), source_check_off_added: true }
        );
        assert_eq!(cloud.pairs("vip-port"), ["10.0.0.9", NIC_IP]);
        assert_eq!(cloud.pairs(NIC), ["10.0.0.77", SOURCE_CHECK_OFF]);
        // Bound already: reads only, and the record of who added 1.1.1.1/0 is kept.
        let writes = cloud.updates();
        let (again, wrote) = pairs
            .bind(&target(), &t(), &Recorded { source_check_off_added: true, ..Default::default() })
            .await
            .unwrap();
        assert!(!wrote);
        assert!(again.source_check_off_added);
        assert_eq!(cloud.updates(), writes);
    }

    #[tokio::test]
    async fn a_source_check_already_off_is_not_ours_to_remove() {
        let (cloud, pairs) = setup(&[], &[SOURCE_CHECK_OFF]);
        let (record, _) = pairs.bind(&target(), &t(), &Recorded::default()).await.unwrap();
        assert!(!record.source_check_off_added);
        let recorded = Recorded {
            vip_port_id: Some(record.vip_port_id),
            nic_ip: Some(record.nic_ip),
            source_check_off_added: false,
        };
        pairs.unbind(&target(), &t(), &recorded, false).await.unwrap();
        assert_eq!(cloud.pairs(NIC), [SOURCE_CHECK_OFF]);
        assert!(cloud.pairs("vip-port").is_empty());
    }

    #[tokio::test]
    async fn unbind_removes_exactly_its_own_ip_and_the_check_off_only_from_a_nic_nobody_else_uses() {
        let (cloud, pairs) = setup(&["10.0.0.9", NIC_IP, "10.0.0.10"], &[SOURCE_CHECK_OFF, "10.0.0.77"]);
        let recorded = Recorded {
            vip_port_id: Some("vip-port".into()),
            nic_ip: Some(NIC_IP.into()),
            source_check_off_added: true,
        };
        // Another binding still uses the NIC: 1.1.1.1/0 stays.
        let out = pairs.unbind(&target(), &t(), &recorded, true).await.unwrap();
        assert_eq!(out, Unbound::Removed { vip_port_id: "vip-port".into() });
        assert_eq!(cloud.pairs("vip-port"), ["10.0.0.9", "10.0.0.10"]);
        assert_eq!(cloud.pairs(NIC), [SOURCE_CHECK_OFF, "10.0.0.77"]);
        // The last one: it goes, and only it.
        let out = pairs.unbind(&target(), &t(), &recorded, false).await.unwrap();
        assert_eq!(out, Unbound::NotThere { vip_port_id: "vip-port".into() });
        assert_eq!(cloud.pairs(NIC), ["10.0.0.77"]);
    }

    #[tokio::test]
    async fn a_writer_between_our_read_and_our_write_keeps_its_change() {
        let (cloud, pairs) = setup(&["10.0.0.9"], &[SOURCE_CHECK_OFF]);
        // Right after our first read of the VIP port, someone adds 10.0.0.44.
        cloud.after_read.lock().unwrap().push_back(("vip-port".into(), vec![pair("10.0.0.9"), pair("10.0.0.44")]));
        pairs.bind(&target(), &t(), &Recorded::default()).await.unwrap();
        assert_eq!(cloud.pairs("vip-port"), ["10.0.0.9", "10.0.0.44", NIC_IP]);
    }

    #[tokio::test]
    async fn a_pair_removed_behind_our_back_is_put_back_by_the_next_bind() {
        let (cloud, pairs) = setup(&[], &[SOURCE_CHECK_OFF]);
        pairs.bind(&target(), &t(), &Recorded::default()).await.unwrap();
        cloud.ports.lock().unwrap().get_mut("vip-port").unwrap().allowed_address_pairs = vec![pair("10.0.0.44")];
        let (_, wrote) = pairs.bind(&target(), &t(), &Recorded::default()).await.unwrap();
        assert!(wrote, "the drift is repaired");
        assert_eq!(cloud.pairs("vip-port"), ["10.0.0.44", NIC_IP]);
    }

    #[tokio::test]
    async fn writers_that_never_stop_leave_the_port_untouched_and_say_so() {
        let (cloud, pairs) = setup(&[], &[SOURCE_CHECK_OFF]);
        // Every read is followed by another writer's change, so no two reads ever agree.
        for i in 0..2 * MAX_ROUNDS {
            cloud.after_read.lock().unwrap().push_back(("vip-port".into(), vec![pair(&format!("10.0.1.{i}"))]));
        }
        let failure = pairs.bind(&target(), &t(), &Recorded::default()).await.unwrap_err();
        assert!(matches!(failure.error, PairsError::Contended { wrote: false, .. }), "{failure:?}");
        assert!(!failure.may_have_applied);
        assert_eq!(cloud.calls.lock().unwrap().iter().filter(|c| *c == "put vip-port").count(), 0);
    }

    #[tokio::test]
    async fn no_vip_port_a_port_that_is_no_vip_and_a_nic_elsewhere_write_nothing() {
        let (cloud, pairs) = setup(&[], &[]);
        cloud.ports.lock().unwrap().remove("vip-port");
        let f = pairs.bind(&target(), &t(), &Recorded::default()).await.unwrap_err();
        assert!(matches!(f.error, PairsError::VipNotFound { .. }), "{f:?}");
        cloud.ports.lock().unwrap().insert("srv".into(), port("srv", "compute:az1", VIP, &[]));
        let f = pairs.bind(&target(), &t(), &Recorded::default()).await.unwrap_err();
        assert!(matches!(f.error, PairsError::NotAVip { .. }), "{f:?}");
        assert!(!f.error.is_retryable());
        cloud.ports.lock().unwrap().remove("srv");
        cloud.ports.lock().unwrap().insert("vip-port".into(), port("vip-port", VIP_PORT_OWNER, VIP, &[]));
        cloud.ports.lock().unwrap().get_mut(NIC).unwrap().network_id = "net-2".into();
        let f = pairs.bind(&target(), &t(), &Recorded::default()).await.unwrap_err();
        assert!(matches!(f.error, PairsError::NicOutsideNetwork { .. }), "{f:?}");
        assert_eq!(cloud.updates(), 0);
    }

    #[tokio::test]
    async fn a_nic_that_is_gone_unbinds_by_its_recorded_ip_or_is_the_clouds_gone() {
        let (cloud, pairs) = setup(&[NIC_IP, "10.0.0.9"], &[]);
        cloud.ports.lock().unwrap().remove(NIC);
        let recorded = Recorded {
            vip_port_id: Some("vip-port".into()),
            nic_ip: Some(NIC_IP.into()),
            source_check_off_added: true,
        };
        let out = pairs.unbind(&target(), &t(), &recorded, false).await.unwrap();
        assert_eq!(out, Unbound::Removed { vip_port_id: "vip-port".into() });
        assert_eq!(cloud.pairs("vip-port"), ["10.0.0.9"]);
        // Nothing recorded: the NIC's port answering 404 VPC.2502 is the cloud's word.
        let f = pairs.unbind(&target(), &t(), &Recorded::default(), false).await.unwrap_err();
        assert!(matches!(&f.error, PairsError::Cloud(e) if e.class() == ErrorClass::Gone), "{f:?}");
    }

    #[tokio::test]
    async fn a_vip_port_that_is_gone_leaves_nothing_bound() {
        let (cloud, pairs) = setup(&[], &[]);
        cloud.ports.lock().unwrap().remove("vip-port");
        let recorded = Recorded {
            vip_port_id: Some("vip-port".into()),
            nic_ip: Some(NIC_IP.into()),
            source_check_off_added: false,
        };
        let out = pairs.unbind(&target(), &t(), &recorded, false).await.unwrap();
        assert_eq!(out, Unbound::VipGone { vip_port_id: "vip-port".into() });
    }

    #[tokio::test]
    async fn a_write_without_an_answer_may_have_applied_and_is_not_resent() {
        let (cloud, pairs) = setup(&[], &[SOURCE_CHECK_OFF]);
        *cloud.fail_update.lock().unwrap() = Some(crate::ecs::error::coded(500, "VPC.0001"));
        let f = pairs.bind(&target(), &t(), &Recorded::default()).await.unwrap_err();
        assert!(f.may_have_applied);
        assert_eq!(f.partial.as_ref().map(|r| r.vip_port_id.as_str()), Some("vip-port"));
        assert_eq!(cloud.updates(), 1);
    }

    #[tokio::test]
    async fn locks_are_dropped_after_use() {
        let (_cloud, pairs) = setup(&[], &[]);
        pairs.bind(&target(), &t(), &Recorded::default()).await.unwrap();
        assert!(pairs.locks.lock().unwrap().is_empty());
    }
}
