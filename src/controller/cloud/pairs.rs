//! Binding through the VPC ports API (`api: VPC`). A VIP is bound to a NIC when the VIP port's
//! `allowed_address_pairs` holds the NIC's IP; the NIC's port carries `1.1.1.1/0` so the VIP's
//! traffic passes its source check (Huawei's "update port" page; its console adds it too).
//!
//! Lost updates: the list is replaced whole and has no version. Writes to one port are
//! serialised inside the operator: a NIC's port under its lock, a VIP port by its VIP's queue
//! ([`crate::controller::cloud::vipport`], which also coalesces the edits of many bindings into
//! one write). A list is built from one read made under that serialisation and written once;
//! the write's answer (the port as stored) is the read-back, and the port is read again, and the
//! edit redone on what it holds, only when the answer does not show the edit (bounded). What no
//! client can close without a version on Huawei's side is the moment between the read and the
//! write; an extra read right before the write (the rule before) did not close it, only moved
//! it, for one more call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::ecs::vpc::{AddressPair, MAX_PAGE, PortFilter, VIP_PORT_OWNER, VpcApi};
use crate::ecs::{CloudTarget, EcsError, ErrorClass};

use crate::controller::cloud::checkoff::{CheckOffLedger, Cleanup};
use crate::controller::cloud::vipport::{Change, Done, Failed, Vip, VipPorts};
use crate::controller::state::key::ObjectKey;

/// What the NIC's port carries to let traffic for other addresses through (source check off).
pub const SOURCE_CHECK_OFF: &str = "1.1.1.1/0";
pub use crate::controller::cloud::vipport::MAX_ROUNDS;
/// Pages of one project's VIP ports read at most (2,000 each): a listing that never ends (a
/// server that ignores the marker) is an error, not a loop.
pub const MAX_LIST_PAGES: usize = 100;

/// Each VIP port of a project, and the addresses its `allowed_address_pairs` hold.
pub type VipPairs = HashMap<String, std::collections::HashSet<String>>;
/// Each NIC port of a network, and whether its source check is off (`1.1.1.1/0`).
pub type NicChecks = HashMap<String, bool>;

/// What one listing of a network's ports shows the drift check.
#[derive(Debug, Default)]
pub struct NetworkPorts {
    pub vips: VipPairs,
    pub nics: NicChecks,
}

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

/// A bind that succeeded: its record, and what it had to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPairs {
    pub record: PairsRecord,
    /// The VIP port lacked the NIC's IP (false: bound already).
    pub wrote_vip: bool,
    /// The NIC's port lacked `1.1.1.1/0`.
    pub wrote_nic: bool,
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
    /// The binding's intent could not be recorded before the NIC's check was turned off; the
    /// NIC was not written.
    #[error("could not record the binding's intent before turning the NIC's source check off: {why}")]
    NotRecorded { why: String },
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
            PairsError::Contended { .. } | PairsError::VipNotFound { .. } | PairsError::NotRecorded { .. } => true,
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
    /// This attempt wrote the NIC's `1.1.1.1/0` (or may have): the binding is not "never
    /// bound" any more, whatever the VIP port's write came to.
    pub wrote_nic: bool,
}

impl From<PairsError> for PairsFailure {
    fn from(error: PairsError) -> Self {
        let may_have_applied = error.may_have_written();
        Self { error, partial: None, may_have_applied, wrote_nic: false }
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

impl Unbound {
    pub fn vip_port_id(&self) -> &str {
        match self {
            Unbound::Removed { vip_port_id } | Unbound::NotThere { vip_port_id } | Unbound::VipGone { vip_port_id } => {
                vip_port_id
            }
        }
    }
}

/// What became of the NIC's `1.1.1.1/0` after an unbind, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOff {
    /// The last binding on the NIC took it away.
    Removed,
    /// Not the operator's: it was there before the first binding, and stays.
    NotOurs,
    /// Another VPC binding on the NIC is bound or binding.
    StillNeeded,
    /// Another VPC binding on the NIC needs it and is still binding: this binding, whose record
    /// says the entry is the operator's, is not let go until their binds have read that.
    HandingOver { to: Vec<String> },
    /// A VIP port in the NIC's network still holds the NIC's IP (the cloud's listing says so).
    StillPaired { vip_port_id: String },
    /// The NIC's port is gone, or had no `1.1.1.1/0` left.
    Absent,
}

/// What the bindings on a NIC say, read fresh under the NIC's lock (the reconciler answers from
/// the index and the binding's own status; the edit decides).
pub trait NicUsers: Sync {
    /// Another VPC binding on the NIC is bound or may be (live, committed, not known unbound).
    fn others_need_check_off(&self) -> bool;
    /// Those of them with no record of a bind yet (`namespace/name`): they are binding, and
    /// read who added the entry from the unbinding binding's record.
    fn needers_without_record(&self) -> Vec<String>;
    /// Another binding on the NIC records that the operator turned the NIC's check off.
    fn added_by_another(&self) -> bool;
    /// Records, durably and before the write, that this binding is about to turn the NIC's
    /// check off (`record` is what it will have done): a crash between the write and the
    /// bind's status then still leaves who added it on record. `Err`: not recorded, so the
    /// check is not turned off either.
    fn before_check_off<'a>(&'a self, record: &'a PairsRecord) -> BoxFuture<'a, Result<(), String>>;
}

/// How an edit of the NIC's port went.
#[derive(Debug)]
enum Edit {
    /// The port already was as wanted: nothing was written.
    AlreadyThere,
    Written,
    /// The port does not exist: the read's own answer (404 `VPC.2502`).
    PortGone(EcsError),
}

/// Runs once, right before an edit's first write (see [`NicUsers::before_check_off`]).
type BeforeWrite<'a> = Option<BoxFuture<'a, Result<(), PairsError>>>;

/// What the NIC's half of a bind found and did, under the NIC's lock.
struct NicHalf {
    nic_ip: String,
    mac: Option<String>,
    /// The VIP's port, when known before the VIP's edit (recorded, or found before turning the
    /// NIC's check off).
    vip_port_id: Option<String>,
    edit: Edit,
}

/// VPC binds and unbinds: the NIC's port edited under its lock, the VIP port's edits queued and
/// coalesced per VIP ([`vipport`]).
pub struct PortPairs {
    api: Arc<dyn VpcApi>,
    /// One per NIC port being edited.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    vips: VipPorts,
    /// Who needs each NIC's check off, and which this process turned off.
    ledger: CheckOffLedger,
}

impl PortPairs {
    pub fn new(api: Arc<dyn VpcApi>) -> Self {
        Self { vips: VipPorts::new(api.clone()), api, locks: Mutex::default(), ledger: CheckOffLedger::default() }
    }

    pub fn ledger(&self) -> &CheckOffLedger {
        &self.ledger
    }

    /// Binds: the NIC's port gets `1.1.1.1/0` if it lacks it, then the VIP port gets the NIC's
    /// IP. Also says which of the two had to be written (neither: it was bound already).
    /// `who` registers its need of the NIC's check off before anything is read.
    pub async fn bind(
        &self,
        target: &CloudTarget,
        t: &PairsTarget<'_>,
        (who, recorded): (&ObjectKey, &Recorded),
        users: &dyn NicUsers,
    ) -> Result<BoundPairs, PairsFailure> {
        self.ledger.need(t.nic_id, who);
        let result = self.bind_needed(target, t, recorded, users).await;
        // A bind that wrote nothing, of a binding that recorded nothing, needs nothing: its
        // registration would keep another's unbind from taking the check away.
        if let Err(f) = &result
            && !f.wrote_nic
            && !f.may_have_applied
            && recorded.vip_port_id.is_none()
        {
            self.ledger.unneed(who);
        }
        result
    }

    async fn bind_needed(
        &self,
        target: &CloudTarget,
        t: &PairsTarget<'_>,
        recorded: &Recorded,
        users: &dyn NicUsers,
    ) -> Result<BoundPairs, PairsFailure> {
        let lock = self.lock_for(t.nic_id);
        let held = lock.lock().await;
        let half = self.nic_half_of_bind(target, t, recorded, users).await;
        // The entry is the operator's once a write of it may have landed (not on a refusal).
        let wrote = |h: &Result<NicHalf, PairsFailure>| match h {
            Ok(h) => matches!(h.edit, Edit::Written),
            Err(f) => f.wrote_nic,
        };
        if wrote(&half) {
            self.ledger.mark_added(t.nic_id);
        }
        // Read under the lock: a binding bound on this NIC before us may have added it.
        let inherited = self.ledger.added(t.nic_id) || users.added_by_another();
        drop(held);
        self.forget_unused(t.nic_id, lock);
        let NicHalf { nic_ip, mac, vip_port_id, edit } = half?;
        let (added, wrote_nic) = match edit {
            Edit::Written => (true, true),
            Edit::AlreadyThere => (recorded.source_check_off_added || inherited, false),
            // The NIC's port went away since it was read.
            Edit::PortGone(gone) => return Err(cloud(gone)),
        };
        let vip = Vip { network: t.network_id, address: t.vip, port_hint: vip_port_id.as_deref() };
        let answer = self.vips.submit(target, vip, Change::Add { ip: nic_ip.clone(), mac }).await;
        let record = |id: Option<String>| {
            id.map(|vip_port_id| PairsRecord { vip_port_id, nic_ip: nic_ip.clone(), source_check_off_added: added })
        };
        let port_id = answer.port_id.or(vip_port_id);
        let may_have_applied = answer.may_have_applied;
        let error = match answer.result {
            Ok(done @ (Done::Written | Done::AlreadyThere | Done::Found)) => {
                let wrote_vip = matches!(done, Done::Written);
                let Some(record) = record(port_id) else {
                    // Every answer past the batch's read names the port.
                    return Err(PairsFailure {
                        error: PairsError::Cloud(EcsError::InvalidRequest("the VIP port's edit named no port".into())),
                        partial: None,
                        may_have_applied,
                        wrote_nic,
                    });
                };
                return Ok(BoundPairs { record, wrote_vip, wrote_nic });
            }
            Ok(Done::PortGone) | Err(Failed::NotFound) => {
                PairsError::VipNotFound { vip: t.vip.into(), network: t.network_id.into() }
            }
            Err(failed) => vip_error(t, failed),
        };
        Err(PairsFailure { error, partial: record(port_id), may_have_applied, wrote_nic })
    }

    /// Under the NIC's lock: one read of the NIC's port (its IP, MAC, network and pairs), and,
    /// when it lacks `1.1.1.1/0`, the VIP's port made sure of (nothing is turned off for a VIP
    /// that does not exist), the intent recorded, and one write.
    async fn nic_half_of_bind(
        &self,
        target: &CloudTarget,
        t: &PairsTarget<'_>,
        recorded: &Recorded,
        users: &dyn NicUsers,
    ) -> Result<NicHalf, PairsFailure> {
        let nic = self.api.get_port(target, t.nic_id).await.map_err(cloud)?;
        let nic_ip = nic
            .fixed_ips
            .iter()
            .find(|ip| ip.ip_address.parse::<std::net::Ipv4Addr>().is_ok())
            .filter(|_| nic.network_id.is_empty() || nic.network_id == t.network_id)
            .map(|ip| ip.ip_address.clone())
            .ok_or_else(|| PairsError::NicOutsideNetwork { nic: t.nic_id.into(), network: t.network_id.into() })?;
        let mac = (t.with_mac && !nic.mac_address.is_empty()).then(|| nic.mac_address.clone());
        if has_check_off(&nic.allowed_address_pairs) {
            let vip_port_id = recorded.vip_port_id.clone();
            return Ok(NicHalf { nic_ip, mac, vip_port_id, edit: Edit::AlreadyThere });
        }
        let vip_port_id = match &recorded.vip_port_id {
            Some(id) => id.clone(),
            None => self.find_vip_port(target, t).await?,
        };
        let intent =
            PairsRecord { vip_port_id: vip_port_id.clone(), nic_ip: nic_ip.clone(), source_check_off_added: true };
        let before: BeforeWrite<'_> = Some(Box::pin(async {
            users.before_check_off(&intent).await.map_err(|why| PairsError::NotRecorded { why })
        }));
        let add = |pairs: &[AddressPair]| {
            (!has_check_off(pairs)).then(|| {
                let mut next = pairs.to_vec();
                next.push(AddressPair { ip_address: SOURCE_CHECK_OFF.into(), mac_address: None });
                next
            })
        };
        match self.edit_nic_locked(target, t.nic_id, Some(nic.allowed_address_pairs), &add, before).await {
            Ok(edit) => Ok(NicHalf { nic_ip, mac, vip_port_id: Some(vip_port_id), edit }),
            Err(error) => {
                let wrote_nic = error.may_have_written();
                let partial = wrote_nic.then(|| intent.clone());
                Err(PairsFailure { error, partial, may_have_applied: false, wrote_nic })
            }
        }
    }

    /// The VIP's port, checked (one port with the address in the network, a VIP port), through
    /// the VIP's queue: binds on many NICs of one VIP share one listing.
    async fn find_vip_port(&self, target: &CloudTarget, t: &PairsTarget<'_>) -> Result<String, PairsFailure> {
        let vip = Vip { network: t.network_id, address: t.vip, port_hint: None };
        let answer = self.vips.submit(target, vip, Change::Find).await;
        match (answer.result, answer.port_id) {
            (Ok(_), Some(id)) => Ok(id),
            (Ok(_), None) | (Err(Failed::NotFound), _) => {
                Err(PairsError::VipNotFound { vip: t.vip.into(), network: t.network_id.into() }.into())
            }
            (Err(failed), _) => Err(vip_error(t, failed).into()),
        }
    }

    /// Unbinds: exactly this NIC's IP leaves the VIP port's pairs; then, under the NIC's lock,
    /// `1.1.1.1/0` leaves the NIC's port if the operator added it and nothing needs it any more
    /// (see [`crate::controller::cloud::checkoff`]). `Ok` also when the VIP port is gone (nothing can be bound to
    /// it). A NIC whose port is gone, with no recorded IP, is the cloud's `Gone` (404
    /// `VPC.2502`).
    pub async fn unbind(
        &self,
        target: &CloudTarget,
        t: &PairsTarget<'_>,
        (who, recorded): (&ObjectKey, &Recorded),
        users: &dyn NicUsers,
    ) -> Result<(Unbound, CheckOff), PairsFailure> {
        // Going away: its own need no longer holds the check off.
        self.ledger.unneed(who);
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
        let vip = Vip { network: t.network_id, address: t.vip, port_hint: recorded.vip_port_id.as_deref() };
        let answer = self.vips.submit(target, vip, Change::Remove { ip: nic_ip.clone() }).await;
        let vip_port_id = answer.port_id.or_else(|| recorded.vip_port_id.clone()).unwrap_or_default();
        let outcome = match answer.result {
            Ok(Done::Written) => Unbound::Removed { vip_port_id },
            Ok(Done::AlreadyThere | Done::Found) => Unbound::NotThere { vip_port_id },
            Ok(Done::PortGone) => Unbound::VipGone { vip_port_id },
            Err(failed) => {
                let error = match failed {
                    Failed::NotFound => PairsError::VipNotFound { vip: t.vip.into(), network: t.network_id.into() },
                    failed => vip_error(t, failed),
                };
                let may_have_applied = answer.may_have_applied;
                return Err(PairsFailure { error, partial: None, may_have_applied, wrote_nic: false });
            }
        };
        let check_off = self.release_check_off(target, t, (who, recorded), &nic_ip, users).await?;
        Ok((outcome, check_off))
    }

    /// The NIC's half of an unbind, decided and written under the NIC's lock.
    async fn release_check_off(
        &self,
        target: &CloudTarget,
        t: &PairsTarget<'_>,
        (who, recorded): (&ObjectKey, &Recorded),
        nic_ip: &str,
        users: &dyn NicUsers,
    ) -> Result<CheckOff, PairsFailure> {
        let lock = self.lock_for(t.nic_id);
        let held = lock.lock().await;
        let decided = async {
            let ours = recorded.source_check_off_added || self.ledger.added(t.nic_id) || users.added_by_another();
            if !ours {
                return Ok(CheckOff::NotOurs);
            }
            // The NIC's fact, not this binding's: it outlives this record, for whoever is last.
            self.ledger.mark_added(t.nic_id);
            let still_needed = self.ledger.needed_by_another(t.nic_id, who) || users.others_need_check_off();
            let waiting = if still_needed { users.needers_without_record() } else { vec![] };
            if !waiting.is_empty() {
                return Ok(CheckOff::HandingOver { to: waiting });
            }
            let decided = self.remove_check_off_locked(target, (t.nic_id, t.network_id, nic_ip), still_needed).await;
            if matches!(decided, Ok(CheckOff::StillNeeded | CheckOff::StillPaired { .. })) {
                let cleanup = Cleanup { target: target.clone(), network: t.network_id.into(), nic_ip: nic_ip.into() };
                self.ledger.remember_cleanup(t.nic_id, cleanup);
            }
            decided
        }
        .await;
        drop(held);
        self.forget_unused(t.nic_id, lock);
        decided
    }

    /// Takes away a `1.1.1.1/0` that an unbind left for another binding, if nothing needs it
    /// now (`still_used`: a binding on the NIC, asked under the lock). For the drift check.
    pub async fn release_unneeded(
        &self,
        nic: &str,
        cleanup: &Cleanup,
        still_used: impl Fn() -> bool,
    ) -> Result<CheckOff, PairsFailure> {
        let lock = self.lock_for(nic);
        let held = lock.lock().await;
        let still_needed = self.ledger.needed(nic) || still_used();
        let decided =
            self.remove_check_off_locked(&cleanup.target, (nic, &cleanup.network, &cleanup.nic_ip), still_needed).await;
        drop(held);
        self.forget_unused(nic, lock);
        let retry = decided.as_ref().is_err_and(|f| {
            f.error.is_retryable() && !matches!(&f.error, PairsError::Cloud(e) if e.class() == ErrorClass::Auth)
        });
        if !retry {
            // Needed (by a binding, or by a pair a VIP port keeps): the unbind of whoever needs
            // it decides. Gone, or not ours to touch with these keys: nothing left to do.
            self.ledger.forget_cleanup(nic);
        }
        decided
    }

    /// The last step of taking a NIC's check-off away, under its lock: nothing the bindings
    /// know of needs it (`still_needed` false), and no VIP port in its network lets its IP
    /// through (the cloud's word: another operator's binding, a late write). One listing of the
    /// network's ports shows both that and the NIC's own pairs, read now, under the lock.
    async fn remove_check_off_locked(
        &self,
        target: &CloudTarget,
        (nic, network, nic_ip): (&str, &str, &str),
        still_needed: bool,
    ) -> Result<CheckOff, PairsFailure> {
        if still_needed {
            return Ok(CheckOff::StillNeeded);
        }
        let nic_pairs = match self.network_ports_of(target, network, nic).await {
            Ok((vips, nic_pairs)) => {
                if let Some(port) = vips.iter().find(|(_, ips)| ips.contains(nic_ip)).map(|(id, _)| id) {
                    return Ok(CheckOff::StillPaired { vip_port_id: port.clone() });
                }
                // Not in the listing: its absence proves nothing, so the port is read.
                nic_pairs
            }
            // Credentials that may not list: the bindings' word alone, as before listings.
            Err(e) if e.class() == ErrorClass::Auth => {
                tracing::debug!(nic, error = %e, "cannot list the network's ports; deciding the NIC's check-off from the bindings alone");
                None
            }
            Err(e) => return Err(cloud(e)),
        };
        let remove_check_off = |pairs: &[AddressPair]| {
            has_check_off(pairs).then(|| pairs.iter().filter(|p| p.ip_address != SOURCE_CHECK_OFF).cloned().collect())
        };
        // The VIP is off the NIC already; a NIC that is gone needs nothing more.
        match self.edit_nic_locked(target, nic, nic_pairs, &remove_check_off, None).await {
            Ok(Edit::Written) => {
                self.ledger.mark_removed(nic);
                Ok(CheckOff::Removed)
            }
            Ok(Edit::AlreadyThere | Edit::PortGone(_)) => {
                self.ledger.mark_removed(nic);
                Ok(CheckOff::Absent)
            }
            Err(e) => Err(PairsFailure::from(e)),
        }
    }

    /// One listing of a network's ports: the VIP ports with the addresses they let through, and
    /// `nic`'s own pairs (`None` when the listing does not show it).
    async fn network_ports_of(
        &self,
        target: &CloudTarget,
        network: &str,
        nic: &str,
    ) -> Result<(VipPairs, Option<Vec<AddressPair>>), EcsError> {
        let filter = PortFilter { network_id: Some(network.into()), limit: MAX_PAGE, ..PortFilter::default() };
        let mut vips = VipPairs::new();
        let mut nic_pairs = None;
        self.list_all(target, filter, |port| {
            // The filter is the server's; the answer is checked, not trusted.
            if !(port.network_id.is_empty() || port.network_id == network) {
                return;
            }
            if port.device_owner == VIP_PORT_OWNER {
                vips.insert(port.id, port.allowed_address_pairs.into_iter().map(|p| p.ip_address).collect());
            } else if port.id == nic {
                nic_pairs = Some(port.allowed_address_pairs);
            }
        })
        .await?;
        Ok((vips, nic_pairs))
    }

    /// Every port of one network: the VIP ports with the addresses they let through, and the
    /// others (the NICs) with whether their source check is off. One listing ([`MAX_PAGE`]
    /// ports a page) instead of reads per binding.
    pub async fn network_ports(&self, target: &CloudTarget, network: &str) -> Result<NetworkPorts, EcsError> {
        let filter = PortFilter { network_id: Some(network.into()), limit: MAX_PAGE, ..PortFilter::default() };
        let mut all = NetworkPorts::default();
        self.list_all(target, filter, |port| {
            // The filter is the server's; the answer is checked, not trusted.
            if !(port.network_id.is_empty() || port.network_id == network) {
                return;
            }
            if port.device_owner == VIP_PORT_OWNER {
                all.vips.insert(port.id, port.allowed_address_pairs.into_iter().map(|p| p.ip_address).collect());
            } else {
                let off = has_check_off(&port.allowed_address_pairs);
                all.nics.insert(port.id, off);
            }
        })
        .await?;
        Ok(all)
    }

    /// The ports of each of `servers` in one network, from one listing of the network's ports
    /// ([`MAX_PAGE`] a page) instead of one listing per server: how a group finds many nodes'
    /// NICs at once. A server with no port in the network maps to an empty list.
    pub async fn server_ports_in(
        &self,
        target: &CloudTarget,
        network: &str,
        servers: &std::collections::HashSet<String>,
    ) -> Result<HashMap<String, Vec<String>>, EcsError> {
        let filter = PortFilter { network_id: Some(network.into()), limit: MAX_PAGE, ..PortFilter::default() };
        let mut found: HashMap<String, Vec<String>> = servers.iter().map(|s| (s.clone(), vec![])).collect();
        self.list_all(target, filter, |port| {
            // The filter is the server's; the answer is checked, not trusted.
            let in_network = port.network_id.is_empty() || port.network_id == network;
            if in_network
                && port.device_owner != VIP_PORT_OWNER
                && let Some(ports) = found.get_mut(&port.device_id)
            {
                ports.push(port.id);
            }
        })
        .await?;
        Ok(found)
    }

    /// Every page of a listing, bounded: a listing that never ends (a server that ignores the
    /// marker) is an error, not a loop.
    async fn list_all(
        &self,
        target: &CloudTarget,
        mut filter: PortFilter,
        mut each: impl FnMut(crate::ecs::vpc::Port),
    ) -> Result<(), EcsError> {
        for _ in 0..MAX_LIST_PAGES {
            let page = self.api.list_ports(target, &filter).await?;
            let full = page.len() >= filter.page_size() as usize;
            let last = page.last().map(|p| p.id.clone());
            page.into_iter().for_each(&mut each);
            match last {
                Some(last) if full && filter.marker.as_deref() != Some(last.as_str()) => filter.marker = Some(last),
                Some(_) if full => {
                    return Err(EcsError::InvalidRequest("the port listing repeated its last page".into()));
                }
                _ => return Ok(()),
            }
        }
        Err(EcsError::InvalidRequest(format!("the port listing ran past {MAX_LIST_PAGES} pages")))
    }

    /// Read-modify-write of a NIC port's pairs; the caller holds the NIC's lock. `read` is a
    /// read made under that lock (`None`: read it now). `change` returns the new list, or `None`
    /// when the port already is as wanted. The write's answer (the port as stored) is the
    /// read-back; only when it does not show the change is the port read again, and the edit
    /// redone on what it holds (bounded).
    async fn edit_nic_locked(
        &self,
        target: &CloudTarget,
        port_id: &str,
        read: Option<Vec<AddressPair>>,
        change: &impl Fn(&[AddressPair]) -> Option<Vec<AddressPair>>,
        mut before_write: BeforeWrite<'_>,
    ) -> Result<Edit, PairsError> {
        let mut written = false;
        // A read that fails after our write was answered must not make the edit look unwritten.
        let after_write = |written: bool, last: EcsError| match last {
            last if written && !last.may_have_applied() => PairsError::Cloud(EcsError::Uncertain {
                last: Box::new(last),
                earlier: format!("a write to port {port_id} was answered before this call"),
            }),
            last => PairsError::Cloud(last),
        };
        let mut pairs = match read {
            Some(pairs) => pairs,
            None => match self.api.get_port(target, port_id).await {
                Ok(port) => port.allowed_address_pairs,
                Err(e) if e.class() == ErrorClass::Gone => return Ok(Edit::PortGone(e)),
                Err(e) => return Err(PairsError::Cloud(e)),
            },
        };
        for _ in 0..MAX_ROUNDS {
            let Some(next) = change(&pairs) else {
                return Ok(if written { Edit::Written } else { Edit::AlreadyThere });
            };
            if let Some(before) = before_write.take() {
                before.await?;
            }
            let answer = self.api.update_pairs(target, port_id, &next).await.map_err(|e| after_write(written, e))?;
            written = true;
            if change(&answer.allowed_address_pairs).is_none() {
                return Ok(Edit::Written);
            }
            // Another writer's list replaced ours: read it, and redo the change on it.
            tracing::debug!(port = port_id, "the port's answer does not show the change; reading it again");
            pairs = match self.api.get_port(target, port_id).await {
                Ok(port) => port.allowed_address_pairs,
                Err(e) if e.class() == ErrorClass::Gone => return Ok(Edit::PortGone(e)),
                Err(e) => return Err(after_write(written, e)),
            };
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

fn has_check_off(pairs: &[AddressPair]) -> bool {
    pairs.iter().any(|p| p.ip_address == SOURCE_CHECK_OFF)
}

/// A VIP batch's failure as this binding's.
fn vip_error(t: &PairsTarget<'_>, failed: Failed) -> PairsError {
    match failed {
        Failed::NotFound => PairsError::VipNotFound { vip: t.vip.into(), network: t.network_id.into() },
        Failed::NotAVip { port_id, owner } => PairsError::NotAVip { vip: t.vip.into(), port_id, owner },
        Failed::Ambiguous { count } => PairsError::Ambiguous { vip: t.vip.into(), network: t.network_id.into(), count },
        Failed::Cloud(e) => PairsError::Cloud(e),
        Failed::Contended { port_id, wrote } => PairsError::Contended { port_id, wrote },
    }
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;

    use super::*;
    use crate::ecs::testing::{FakeCloud, Reply};
    use crate::ecs::vpc::{FixedIp, Port};
    use crate::ecs::{Credentials, Operation};

    const NET: &str = "net-1";
    const VIP: &str = "10.0.0.100";
    const NIC: &str = "nic-1";
    const NIC_IP: &str = "10.0.0.5";

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

    /// The other bindings on the NIC, as the reconciler would answer for them.
    #[derive(Default)]
    struct Others {
        need: bool,
        added: bool,
        refuse_intent: bool,
        intents: Mutex<Vec<PairsRecord>>,
    }

    impl Others {
        fn needing(need: bool) -> Self {
            Self { need, ..Self::default() }
        }
    }

    impl NicUsers for Others {
        fn others_need_check_off(&self) -> bool {
            self.need
        }

        fn needers_without_record(&self) -> Vec<String> {
            vec![]
        }

        fn added_by_another(&self) -> bool {
            self.added
        }

        fn before_check_off<'a>(&'a self, record: &'a PairsRecord) -> BoxFuture<'a, Result<(), String>> {
            self.intents.lock().unwrap().push(record.clone());
            let refuse = self.refuse_intent;
            Box::pin(async move { if refuse { Err("the API server is down".into()) } else { Ok(()) } })
        }
    }

    /// What a bind to "vip-port" from NIC_IP left on record.
    fn recorded(source_check_off_added: bool) -> Recorded {
        Recorded { vip_port_id: Some("vip-port".into()), nic_ip: Some(NIC_IP.into()), source_check_off_added }
    }

    fn who() -> ObjectKey {
        ObjectKey::from("uid-a")
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

    fn setup(vip_pairs: &[&str], nic_pairs: &[&str]) -> (Arc<FakeCloud>, PortPairs) {
        let cloud = FakeCloud::with_ports(vec![
            port("vip-port", VIP_PORT_OWNER, VIP, vip_pairs),
            port(NIC, "compute:az1", NIC_IP, nic_pairs),
        ]);
        let pairs = PortPairs::new(cloud.clone());
        (cloud, pairs)
    }

    #[tokio::test]
    async fn bind_adds_the_nic_ip_and_the_source_check_off_keeping_every_other_pair() {
        let (cloud, pairs) = setup(&["10.0.0.9"], &["10.0.0.77"]);
        let (record, wrote) = pairs
            .bind(&target(), &t(), (&who(), &Recorded::default()), &Others::default())
            .await
            .map(|b| (b.record, b.wrote_vip))
            .unwrap();
        assert!(wrote);
        assert_eq!(
            record,
            PairsRecord { vip_port_id: "vip-port".into(), nic_ip: NIC_IP.into(), source_check_off_added: true }
        );
        assert_eq!(cloud.pairs("vip-port"), ["10.0.0.9", NIC_IP]);
        assert_eq!(cloud.pairs(NIC), ["10.0.0.77", SOURCE_CHECK_OFF]);
        // Bound already: reads only, and the record of who added 1.1.1.1/0 is kept.
        let writes = cloud.count(Operation::UpdatePort);
        let (again, wrote) = pairs
            .bind(
                &target(),
                &t(),
                (&who(), &Recorded { source_check_off_added: true, ..Default::default() }),
                &Others::default(),
            )
            .await
            .map(|b| (b.record, b.wrote_vip))
            .unwrap();
        assert!(!wrote);
        assert!(again.source_check_off_added);
        assert_eq!(cloud.count(Operation::UpdatePort), writes);
    }

    #[tokio::test]
    async fn a_source_check_already_off_is_not_ours_to_remove() {
        let (cloud, pairs) = setup(&[], &[SOURCE_CHECK_OFF]);
        let (record, _) = pairs
            .bind(&target(), &t(), (&who(), &Recorded::default()), &Others::default())
            .await
            .map(|b| (b.record, b.wrote_vip))
            .unwrap();
        assert!(!record.source_check_off_added);
        let recorded = Recorded {
            vip_port_id: Some(record.vip_port_id),
            nic_ip: Some(record.nic_ip),
            source_check_off_added: false,
        };
        pairs.unbind(&target(), &t(), (&who(), &recorded), &Others::needing(false)).await.map(|(u, _)| u).unwrap();
        assert_eq!(cloud.pairs(NIC), [SOURCE_CHECK_OFF]);
        assert!(cloud.pairs("vip-port").is_empty());
    }

    #[tokio::test]
    async fn unbind_removes_exactly_its_own_ip_and_the_check_off_only_from_a_nic_nobody_else_uses() {
        let (cloud, pairs) = setup(&["10.0.0.9", NIC_IP, "10.0.0.10"], &[SOURCE_CHECK_OFF, "10.0.0.77"]);
        let recorded = recorded(true);
        // Another binding still uses the NIC: 1.1.1.1/0 stays.
        let out =
            pairs.unbind(&target(), &t(), (&who(), &recorded), &Others::needing(true)).await.map(|(u, _)| u).unwrap();
        assert_eq!(out, Unbound::Removed { vip_port_id: "vip-port".into() });
        assert_eq!(cloud.pairs("vip-port"), ["10.0.0.9", "10.0.0.10"]);
        assert_eq!(cloud.pairs(NIC), [SOURCE_CHECK_OFF, "10.0.0.77"]);
        // The last one: it goes, and only it.
        let out =
            pairs.unbind(&target(), &t(), (&who(), &recorded), &Others::needing(false)).await.map(|(u, _)| u).unwrap();
        assert_eq!(out, Unbound::NotThere { vip_port_id: "vip-port".into() });
        assert_eq!(cloud.pairs(NIC), ["10.0.0.77"]);
    }

    #[tokio::test]
    async fn another_writer_replacing_our_list_right_after_our_write_is_seen_and_our_edit_redone_on_theirs() {
        let (cloud, pairs) = setup(&["10.0.0.9"], &[SOURCE_CHECK_OFF]);
        // Our write lands, then someone writes their own list (without ours, and without .9)
        // before the answer: the answer shows theirs.
        cloud.script(Operation::UpdatePort, "vip-port", [Reply::OvertakenBy(vec![pair("10.0.0.44")])]);
        let bound = pairs.bind(&target(), &t(), (&who(), &Recorded::default()), &Others::default()).await.unwrap();
        assert!(bound.wrote_vip);
        assert_eq!(cloud.pairs("vip-port"), ["10.0.0.44", NIC_IP], "theirs kept, ours redone on it");
        // NIC read, the VIP's listing, write (overtaken), read-back, write again.
        assert_eq!(
            ops(&cloud),
            ["GetPort nic-1", "ListPorts ", "UpdatePort vip-port", "GetPort vip-port", "UpdatePort vip-port"]
        );
    }

    #[tokio::test]
    async fn a_pair_removed_behind_our_back_is_put_back_by_the_next_bind() {
        let (cloud, pairs) = setup(&[], &[SOURCE_CHECK_OFF]);
        pairs
            .bind(&target(), &t(), (&who(), &Recorded::default()), &Others::default())
            .await
            .map(|b| (b.record, b.wrote_vip))
            .unwrap();
        cloud.edit_port("vip-port", |p| p.allowed_address_pairs = vec![pair("10.0.0.44")]);
        let (_, wrote) = pairs
            .bind(&target(), &t(), (&who(), &Recorded::default()), &Others::default())
            .await
            .map(|b| (b.record, b.wrote_vip))
            .unwrap();
        assert!(wrote, "the drift is repaired");
        assert_eq!(cloud.pairs("vip-port"), ["10.0.0.44", NIC_IP]);
    }

    #[tokio::test]
    async fn writers_that_replace_our_list_after_every_write_end_contended_with_a_write_on_record() {
        let (cloud, pairs) = setup(&[], &[SOURCE_CHECK_OFF]);
        // Every write of ours is replaced by another writer's list before it is answered.
        let others = (0..MAX_ROUNDS).map(|i| Reply::OvertakenBy(vec![pair(&format!("10.0.1.{i}"))]));
        cloud.script(Operation::UpdatePort, "vip-port", others);
        let failure =
            pairs.bind(&target(), &t(), (&who(), &Recorded::default()), &Others::default()).await.unwrap_err();
        assert!(matches!(failure.error, PairsError::Contended { wrote: true, .. }), "{failure:?}");
        assert!(failure.may_have_applied, "our writes were answered");
        assert_eq!(failure.partial.as_ref().map(|r| r.vip_port_id.as_str()), Some("vip-port"));
        let vip_writes =
            cloud.calls().iter().filter(|c| c.op() == Operation::UpdatePort && c.id() == "vip-port").count();
        assert_eq!(vip_writes, MAX_ROUNDS, "bounded");
        assert!(cloud.all_answered(Operation::UpdatePort));
    }

    #[tokio::test]
    async fn no_vip_port_a_port_that_is_no_vip_and_a_nic_elsewhere_write_nothing() {
        let (cloud, pairs) = setup(&[], &[]);
        cloud.remove_port("vip-port");
        let f = pairs.bind(&target(), &t(), (&who(), &Recorded::default()), &Others::default()).await.unwrap_err();
        assert!(matches!(f.error, PairsError::VipNotFound { .. }), "{f:?}");
        cloud.put_port(port("srv", "compute:az1", VIP, &[]));
        let f = pairs.bind(&target(), &t(), (&who(), &Recorded::default()), &Others::default()).await.unwrap_err();
        assert!(matches!(f.error, PairsError::NotAVip { .. }), "{f:?}");
        assert!(!f.error.is_retryable());
        cloud.remove_port("srv");
        cloud.put_port(port("vip-port", VIP_PORT_OWNER, VIP, &[]));
        cloud.edit_port(NIC, |p| p.network_id = "net-2".into());
        let f = pairs.bind(&target(), &t(), (&who(), &Recorded::default()), &Others::default()).await.unwrap_err();
        assert!(matches!(f.error, PairsError::NicOutsideNetwork { .. }), "{f:?}");
        assert_eq!(cloud.count(Operation::UpdatePort), 0);
    }

    #[tokio::test]
    async fn a_nic_that_is_gone_unbinds_by_its_recorded_ip_or_is_the_clouds_gone() {
        let (cloud, pairs) = setup(&[NIC_IP, "10.0.0.9"], &[]);
        cloud.remove_port(NIC);
        let recorded = recorded(true);
        let out =
            pairs.unbind(&target(), &t(), (&who(), &recorded), &Others::needing(false)).await.map(|(u, _)| u).unwrap();
        assert_eq!(out, Unbound::Removed { vip_port_id: "vip-port".into() });
        assert_eq!(cloud.pairs("vip-port"), ["10.0.0.9"]);
        // Nothing recorded: the NIC's port answering 404 VPC.2502 is the cloud's word.
        let f = pairs
            .unbind(&target(), &t(), (&who(), &Recorded::default()), &Others::needing(false))
            .await
            .map(|(u, _)| u)
            .unwrap_err();
        assert!(matches!(&f.error, PairsError::Cloud(e) if e.class() == ErrorClass::Gone), "{f:?}");
    }

    #[tokio::test]
    async fn a_vip_port_that_is_gone_leaves_nothing_bound() {
        let (cloud, pairs) = setup(&[], &[]);
        cloud.remove_port("vip-port");
        let recorded = recorded(false);
        let out =
            pairs.unbind(&target(), &t(), (&who(), &recorded), &Others::needing(false)).await.map(|(u, _)| u).unwrap();
        assert_eq!(out, Unbound::VipGone { vip_port_id: "vip-port".into() });
    }

    #[tokio::test]
    async fn a_write_without_an_answer_may_have_applied_and_is_not_resent() {
        let (cloud, pairs) = setup(&[], &[SOURCE_CHECK_OFF]);
        cloud.script(Operation::UpdatePort, "vip-port", [crate::ecs::error::coded(500, "VPC.0001")]);
        let f = pairs.bind(&target(), &t(), (&who(), &Recorded::default()), &Others::default()).await.unwrap_err();
        assert!(f.may_have_applied);
        assert_eq!(f.partial.as_ref().map(|r| r.vip_port_id.as_str()), Some("vip-port"));
        assert_eq!(cloud.count(Operation::UpdatePort), 1);
    }

    #[tokio::test]
    async fn an_unbind_keeps_the_check_off_for_a_bind_that_registered_before_the_unbind_decided() {
        let (cloud, pairs) = setup(&[NIC_IP], &[SOURCE_CHECK_OFF]);
        let recorded = recorded(true);
        // B is on its way (registered before its NIC read); the index does not show it yet.
        pairs.ledger().need(NIC, &ObjectKey::from("uid-b"));
        let (_, check) = pairs.unbind(&target(), &t(), (&who(), &recorded), &Others::default()).await.unwrap();
        assert_eq!(check, CheckOff::StillNeeded);
        assert_eq!(cloud.pairs(NIC), [SOURCE_CHECK_OFF]);
        // B's bind found it there and inherits who added it, so B's own unbind takes it away.
        let b = ObjectKey::from("uid-b");
        let (record, _) = pairs
            .bind(&target(), &t(), (&b, &Recorded::default()), &Others::default())
            .await
            .map(|b| (b.record, b.wrote_vip))
            .unwrap();
        assert!(record.source_check_off_added, "the operator's entry, found by the last one to use it");
        let recorded_b = Recorded { vip_port_id: Some(record.vip_port_id), nic_ip: Some(record.nic_ip), ..recorded };
        let (_, check) = pairs.unbind(&target(), &t(), (&b, &recorded_b), &Others::default()).await.unwrap();
        assert_eq!(check, CheckOff::Removed);
        assert!(cloud.pairs(NIC).is_empty());
        assert!(pairs.ledger().is_empty());
    }

    #[tokio::test]
    async fn a_vip_port_that_still_lets_the_nic_through_keeps_the_check_off() {
        let (cloud, pairs) = setup(&[NIC_IP], &[SOURCE_CHECK_OFF]);
        // Another VIP in the network still pairs the NIC's IP (a binding the index does not know).
        cloud.put_port(port("vip-2", VIP_PORT_OWNER, "10.0.0.101", &[NIC_IP]));
        let recorded = recorded(true);
        let (out, check) = pairs.unbind(&target(), &t(), (&who(), &recorded), &Others::default()).await.unwrap();
        assert_eq!(out, Unbound::Removed { vip_port_id: "vip-port".into() });
        assert_eq!(check, CheckOff::StillPaired { vip_port_id: "vip-2".into() });
        assert_eq!(cloud.pairs(NIC), [SOURCE_CHECK_OFF]);
        // A binding on the NIC that the index shows bound keeps it too, listing or not.
        cloud.remove_port("vip-2");
        let (_, check) = pairs.unbind(&target(), &t(), (&who(), &recorded), &Others::needing(true)).await.unwrap();
        assert_eq!(check, CheckOff::StillNeeded);
        let (_, check) = pairs.unbind(&target(), &t(), (&who(), &recorded), &Others::default()).await.unwrap();
        assert_eq!(check, CheckOff::Removed);
    }

    #[tokio::test]
    async fn the_intent_is_recorded_before_the_check_off_and_without_it_nothing_is_written() {
        let (cloud, pairs) = setup(&[], &[]);
        let refusing = Others { refuse_intent: true, ..Others::default() };
        let f = pairs.bind(&target(), &t(), (&who(), &Recorded::default()), &refusing).await.unwrap_err();
        assert!(matches!(f.error, PairsError::NotRecorded { .. }), "{f:?}");
        assert!(!f.wrote_nic && !f.may_have_applied);
        assert_eq!(cloud.count(Operation::UpdatePort), 0, "no intent on record, no write");
        assert!(pairs.ledger().is_empty(), "a bind that wrote nothing needs nothing");
        let others = Others::default();
        pairs
            .bind(&target(), &t(), (&who(), &Recorded::default()), &others)
            .await
            .map(|b| (b.record, b.wrote_vip))
            .unwrap();
        assert_eq!(
            *others.intents.lock().unwrap(),
            [PairsRecord { vip_port_id: "vip-port".into(), nic_ip: NIC_IP.into(), source_check_off_added: true }]
        );
        // Already off: no intent, no write.
        let others = Others::default();
        pairs
            .bind(&target(), &t(), (&who(), &Recorded::default()), &others)
            .await
            .map(|b| (b.record, b.wrote_vip))
            .unwrap();
        assert!(others.intents.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_bind_that_wrote_the_nic_and_then_failed_says_so() {
        let (cloud, pairs) = setup(&[], &[]);
        // The NIC's write goes through; the VIP port's is refused (a 429 that changed nothing).
        cloud.script(Operation::UpdatePort, "vip-port", [crate::ecs::error::coded(429, "APIGW.0308")]);
        let f = pairs.bind(&target(), &t(), (&who(), &Recorded::default()), &Others::default()).await.unwrap_err();
        assert!(f.wrote_nic, "{f:?}");
        assert!(!f.may_have_applied, "the VIP port's write was refused");
        assert!(f.partial.as_ref().is_some_and(|r| r.source_check_off_added));
        assert_eq!(cloud.pairs(NIC), [SOURCE_CHECK_OFF]);
        assert!(pairs.ledger().added(NIC) && !pairs.ledger().is_empty(), "its deletion must take it away");
    }

    #[tokio::test]
    async fn a_check_off_left_for_a_bind_that_then_wrote_nothing_is_taken_away_by_the_sweep() {
        let (cloud, pairs) = setup(&[NIC_IP], &[SOURCE_CHECK_OFF]);
        let recorded = recorded(true);
        let b = ObjectKey::from("uid-b");
        pairs.ledger().need(NIC, &b);
        let (_, check) = pairs.unbind(&target(), &t(), (&who(), &recorded), &Others::default()).await.unwrap();
        assert_eq!(check, CheckOff::StillNeeded);
        assert!(pairs.ledger().cleanups().is_empty(), "b still binds: not the sweep's to decide");
        // b's bind wrote nothing (its VIP does not exist) and it went: nothing needs the entry.
        pairs.ledger().unneed(&b);
        let [(nic, cleanup)] = <[_; 1]>::try_from(pairs.ledger().cleanups()).unwrap();
        assert_eq!(
            pairs.release_unneeded(&nic, &cleanup, || true).await.unwrap(),
            CheckOff::StillNeeded,
            "a binding the index shows bound keeps it"
        );
        assert!(pairs.ledger().cleanups().is_empty(), "left to that binding's own unbind");
        pairs.ledger().remember_cleanup(NIC, cleanup.clone());
        assert_eq!(pairs.release_unneeded(NIC, &cleanup, || false).await.unwrap(), CheckOff::Removed);
        assert!(cloud.pairs(NIC).is_empty());
        assert!(pairs.ledger().cleanups().is_empty() && !pairs.ledger().added(NIC));
    }

    #[tokio::test]
    async fn a_write_whose_read_back_is_refused_still_counts_as_written() {
        let (cloud, pairs) = setup(&[], &[]);
        // The NIC's write is answered with another writer's list (no check-off), and the
        // read-back that follows is throttled.
        let throttled = crate::ecs::error::coded(429, "APIGW.0308");
        cloud.script(Operation::UpdatePort, NIC, [Reply::OvertakenBy(vec![])]);
        cloud.script(Operation::GetPort, NIC, [Reply::State, Reply::Error(throttled)]);
        let f = pairs.bind(&target(), &t(), (&who(), &Recorded::default()), &Others::default()).await.unwrap_err();
        assert!(cloud.all_answered(Operation::GetPort), "the read-back was made");
        assert!(f.wrote_nic, "a refused read-back does not unwrite it: {f:?}");
        assert!(matches!(&f.error, PairsError::Cloud(EcsError::Uncertain { .. })), "{f:?}");
        assert!(f.partial.as_ref().is_some_and(|r| r.source_check_off_added));
        assert!(pairs.ledger().added(NIC) && !pairs.ledger().is_empty());
        assert_eq!(cloud.count(Operation::UpdatePort), 1, "the VIP port was not written");
    }

    #[tokio::test]
    async fn a_refused_check_off_write_does_not_make_the_entry_ours() {
        let (cloud, pairs) = setup(&[], &[]);
        cloud.script(Operation::UpdatePort, NIC, [crate::ecs::error::coded(400, "VPC.0002")]);
        let f = pairs.bind(&target(), &t(), (&who(), &Recorded::default()), &Others::default()).await.unwrap_err();
        assert!(!f.wrote_nic && !f.may_have_applied, "{f:?}");
        assert!(!pairs.ledger().added(NIC), "nothing of ours is on the NIC");
        assert!(pairs.ledger().is_empty());
    }

    #[tokio::test]
    async fn locks_are_dropped_after_use() {
        let (_cloud, pairs) = setup(&[], &[]);
        pairs
            .bind(&target(), &t(), (&who(), &Recorded::default()), &Others::default())
            .await
            .map(|b| (b.record, b.wrote_vip))
            .unwrap();
        assert!(pairs.locks.lock().unwrap().is_empty());
        assert_eq!(pairs.vips.queued(), 0, "the VIP's queue went with its last edit");
    }

    /// Every call so far, as `Operation id`.
    fn ops(cloud: &FakeCloud) -> Vec<String> {
        cloud.calls().iter().map(|c| format!("{:?} {}", c.op(), c.id())).collect()
    }

    fn nic(i: usize) -> (String, String) {
        (format!("nic-{i:03}"), format!("10.0.1.{i}"))
    }

    /// `n` more NICs in the network, with or without the check-off.
    fn add_nics(cloud: &FakeCloud, n: usize, check_off: bool) {
        for i in 0..n {
            let (id, ip) = nic(i);
            let pairs: &[&str] = if check_off { &[SOURCE_CHECK_OFF] } else { &[] };
            cloud.put_port(port(&id, "compute:az1", &ip, pairs));
        }
    }

    #[tokio::test]
    async fn a_lone_bind_makes_three_calls_or_five_when_it_turns_the_check_off() {
        let (cloud, pairs) = setup(&[], &[SOURCE_CHECK_OFF]);
        pairs.bind(&target(), &t(), (&who(), &Recorded::default()), &Others::default()).await.unwrap();
        // The NIC's read; the VIP's listing is the VIP port's read; one write.
        assert_eq!(ops(&cloud), ["GetPort nic-1", "ListPorts ", "UpdatePort vip-port"]);

        let (cloud, pairs) = setup(&[], &[]);
        pairs.bind(&target(), &t(), (&who(), &Recorded::default()), &Others::default()).await.unwrap();
        // The VIP is made sure of before the NIC's check goes off; the VIP port is then read
        // by the ID found, under its queue.
        assert_eq!(
            ops(&cloud),
            ["GetPort nic-1", "ListPorts ", "UpdatePort nic-1", "GetPort vip-port", "UpdatePort vip-port"]
        );
        assert_eq!(cloud.pairs(NIC), [SOURCE_CHECK_OFF]);
        assert_eq!(cloud.pairs("vip-port"), [NIC_IP]);
    }

    #[tokio::test]
    async fn a_rebind_with_a_recorded_port_reads_it_by_id_and_a_lone_unbind_makes_four_calls() {
        let (cloud, pairs) = setup(&[], &[]);
        let recorded = recorded(true);
        pairs.bind(&target(), &t(), (&who(), &recorded), &Others::default()).await.unwrap();
        assert_eq!(ops(&cloud), ["GetPort nic-1", "UpdatePort nic-1", "GetPort vip-port", "UpdatePort vip-port"]);
        // Bound already: two reads.
        let before = cloud.calls().len();
        let bound = pairs.bind(&target(), &t(), (&who(), &recorded), &Others::default()).await.unwrap();
        assert!(!bound.wrote_vip && !bound.wrote_nic);
        assert_eq!(ops(&cloud)[before..], ["GetPort nic-1", "GetPort vip-port"]);
        // The unbind: the VIP port's read and write, one listing of the network (other VIP
        // ports' pairs and the NIC's own), the NIC's write.
        let before = cloud.calls().len();
        let (out, check) = pairs.unbind(&target(), &t(), (&who(), &recorded), &Others::default()).await.unwrap();
        assert_eq!((out, check), (Unbound::Removed { vip_port_id: "vip-port".into() }, CheckOff::Removed));
        assert_eq!(
            ops(&cloud)[before..],
            ["GetPort vip-port", "UpdatePort vip-port", "ListPorts ", "UpdatePort nic-1"]
        );
        assert!(cloud.pairs(NIC).is_empty() && cloud.pairs("vip-port").is_empty());
    }

    #[tokio::test]
    async fn many_nics_binding_one_vip_at_once_make_one_write_to_its_port() {
        const N: usize = 50;
        let (cloud, pairs) = setup(&["10.0.0.9"], &[]);
        add_nics(&cloud, N, false);
        let keys: Vec<ObjectKey> = (0..N).map(|i| ObjectKey::from(format!("uid-{i}").as_str())).collect();
        let targets: Vec<PairsTarget<'_>> = (0..N).map(|_| t()).collect();
        let ids: Vec<String> = (0..N).map(|i| nic(i).0).collect();
        let others = Others::default();
        let binds = (0..N).map(|i| {
            let t = PairsTarget { nic_id: &ids[i], ..targets[i].clone() };
            let (pairs, others, key) = (&pairs, &others, &keys[i]);
            async move { pairs.bind(&target(), &t, (key, &Recorded::default()), others).await }
        });
        let results = futures::future::join_all(binds).await;
        for (i, r) in results.iter().enumerate() {
            let bound = r.as_ref().unwrap_or_else(|f| panic!("{i}: {f:?}"));
            assert!(bound.wrote_nic && bound.record.source_check_off_added, "{i}");
        }
        let mut want: Vec<String> = std::iter::once("10.0.0.9".to_string()).chain((0..N).map(|i| nic(i).1)).collect();
        let mut got = cloud.pairs("vip-port");
        want.sort();
        got.sort();
        assert_eq!(got, want, "every member bound, the other pair kept");
        let vip_writes =
            cloud.calls().iter().filter(|c| c.op() == Operation::UpdatePort && c.id() == "vip-port").count();
        assert_eq!(vip_writes, 1, "one write for the whole batch");
        assert_eq!(cloud.count(Operation::ListPorts), 1, "one listing found the VIP for all");
        assert_eq!(cloud.count(Operation::UpdatePort), N + 1, "one write per NIC that lacked the check-off");
        assert_eq!(pairs.vips.queued(), 0);
    }

    #[tokio::test]
    async fn a_bind_and_an_unbind_of_one_vip_share_a_batch() {
        let (tg, me, o) = (target(), who(), Others::default());
        let t_ = t();
        let none_ = Recorded::default();
        let (cloud, pairs) = setup(&["10.0.1.0", "10.0.0.9"], &[SOURCE_CHECK_OFF]);
        add_nics(&cloud, 1, true);
        let (nic0, ip0) = nic(0);
        let gone = PairsTarget { nic_id: &nic0, ..t() };
        let recorded0 =
            Recorded { vip_port_id: Some("vip-port".into()), nic_ip: Some(ip0.clone()), source_check_off_added: false };
        let b = ObjectKey::from("uid-b");
        let (bound, unbound) =
            tokio::join!(pairs.bind(&tg, &t_, (&me, &none_), &o), pairs.unbind(&tg, &gone, (&b, &recorded0), &o),);
        assert!(bound.unwrap().wrote_vip);
        assert_eq!(unbound.unwrap(), (Unbound::Removed { vip_port_id: "vip-port".into() }, CheckOff::NotOurs));
        assert_eq!(cloud.pairs("vip-port"), ["10.0.0.9", NIC_IP]);
        // The unbind knew the port's ID: the batch read it by ID, and no listing was needed.
        assert_eq!(ops(&cloud), ["GetPort nic-1", "GetPort vip-port", "UpdatePort vip-port"]);
    }

    #[tokio::test]
    async fn a_batched_write_the_cloud_refuses_goes_again_one_edit_at_a_time() {
        let (tg, me, o) = (target(), who(), Others::default());
        let t_ = t();
        let (cloud, pairs) = setup(&[], &[SOURCE_CHECK_OFF]);
        add_nics(&cloud, 2, true);
        // The batch of three is refused (a quota on the pairs, say); alone, the first and the
        // third fit and the second is refused again.
        let refused = || crate::ecs::error::coded(400, "VPC.2500");
        cloud.script(
            Operation::UpdatePort,
            "vip-port",
            [Reply::Error(refused()), Reply::State, Reply::Error(refused())],
        );
        let ids = [nic(0).0, nic(1).0];
        let (t0, t1) = (PairsTarget { nic_id: &ids[0], ..t() }, PairsTarget { nic_id: &ids[1], ..t() });
        let (k0, k1) = (ObjectKey::from("uid-0"), ObjectKey::from("uid-1"));
        let none = Recorded::default();
        let (a, b, c) = tokio::join!(
            pairs.bind(&tg, &t_, (&me, &none), &o),
            pairs.bind(&tg, &t0, (&k0, &none), &o),
            pairs.bind(&tg, &t1, (&k1, &none), &o),
        );
        let results = [a, b, c];
        let bound = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(bound, 2, "{results:?}");
        let refused_one = results.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert!(
            matches!(&refused_one.error, PairsError::Cloud(e) if e.code() == Some("VPC.2500")),
            "the cloud's own answer: {refused_one:?}"
        );
        assert!(!refused_one.may_have_applied, "a refusal changed nothing");
        assert_eq!(cloud.pairs("vip-port").len(), 2, "the two that fit are bound");
        let vip_writes =
            cloud.calls().iter().filter(|c| c.op() == Operation::UpdatePort && c.id() == "vip-port").count();
        assert_eq!(vip_writes, 4, "one refused batch, then one write each");
        assert_eq!(pairs.vips.queued(), 0);
    }

    #[tokio::test]
    async fn a_write_without_an_answer_leaves_every_member_may_have_applied_and_is_not_resent() {
        let (tg, me, o) = (target(), who(), Others::default());
        let t_ = t();
        let (cloud, pairs) = setup(&[], &[SOURCE_CHECK_OFF]);
        add_nics(&cloud, 2, true);
        cloud.script(Operation::UpdatePort, "vip-port", [crate::ecs::error::coded(504, "APIGW.0201")]);
        let ids = [nic(0).0, nic(1).0];
        let (t0, t1) = (PairsTarget { nic_id: &ids[0], ..t() }, PairsTarget { nic_id: &ids[1], ..t() });
        let (k0, k1) = (ObjectKey::from("uid-0"), ObjectKey::from("uid-1"));
        let none = Recorded::default();
        let (a, b, c) = tokio::join!(
            pairs.bind(&tg, &t_, (&me, &none), &o),
            pairs.bind(&tg, &t0, (&k0, &none), &o),
            pairs.bind(&tg, &t1, (&k1, &none), &o),
        );
        for f in [a.unwrap_err(), b.unwrap_err(), c.unwrap_err()] {
            assert!(f.may_have_applied, "{f:?}");
            assert_eq!(f.partial.as_ref().map(|r| r.vip_port_id.as_str()), Some("vip-port"), "{f:?}");
        }
        assert_eq!(cloud.count(Operation::UpdatePort), 1, "not resent");
        assert_eq!(pairs.ledger().len(), 3, "each may be bound: each keeps its need of the check-off");
    }

    #[tokio::test]
    async fn the_batchs_answer_about_the_vip_reaches_every_member_and_nothing_is_written() {
        let (tg, me, o) = (target(), who(), Others::default());
        let t_ = t();
        let (cloud, pairs) = setup(&[], &[]);
        add_nics(&cloud, 2, false);
        let ids = [nic(0).0, nic(1).0];
        let none = Recorded::default();
        let (k0, k1) = (ObjectKey::from("uid-0"), ObjectKey::from("uid-1"));
        let all = async || {
            let (t0, t1) = (PairsTarget { nic_id: &ids[0], ..t() }, PairsTarget { nic_id: &ids[1], ..t() });
            let (a, b, c) = tokio::join!(
                pairs.bind(&tg, &t_, (&me, &none), &o),
                pairs.bind(&tg, &t0, (&k0, &none), &o),
                pairs.bind(&tg, &t1, (&k1, &none), &o),
            );
            [a.unwrap_err(), b.unwrap_err(), c.unwrap_err()].map(|f| f.error)
        };
        cloud.remove_port("vip-port");
        let lists = cloud.count(Operation::ListPorts);
        for e in all().await {
            assert!(matches!(e, PairsError::VipNotFound { .. }), "{e:?}");
        }
        assert_eq!(cloud.count(Operation::ListPorts), lists + 1, "one listing answered all three");
        cloud.put_port(port("srv", "compute:az1", VIP, &[]));
        for e in all().await {
            assert!(matches!(e, PairsError::NotAVip { .. }), "{e:?}");
        }
        cloud.put_port(port("vip-port", VIP_PORT_OWNER, VIP, &[]));
        for e in all().await {
            assert!(matches!(e, PairsError::Ambiguous { count: 2, .. }), "{e:?}");
        }
        assert_eq!(cloud.count(Operation::UpdatePort), 0, "no NIC's check goes off for a VIP not made sure of");
        assert!(pairs.ledger().is_empty());
    }

    #[tokio::test]
    async fn a_submitter_that_stops_waiting_does_not_stop_the_batch() {
        let (tg, me, o) = (target(), who(), Others::default());
        let t_ = t();
        let (cloud, pairs) = setup(&[], &[SOURCE_CHECK_OFF]);
        add_nics(&cloud, 1, true);
        let (nic0, ip0) = nic(0);
        let t0 = PairsTarget { nic_id: &nic0, ..t() };
        let k0 = ObjectKey::from("uid-0");
        let none = Recorded::default();
        // a's reconcile is cancelled once its edit is queued; b's waits.
        let mut a = Box::pin(pairs.bind(&tg, &t_, (&me, &none), &o));
        assert!(futures::poll!(a.as_mut()).is_pending(), "a waits for its batch");
        drop(a);
        let b = pairs.bind(&tg, &t0, (&k0, &none), &o).await;
        assert!(b.unwrap().wrote_vip);
        // a's edit was applied with b's (a's caller treats it as may-have-applied).
        assert_eq!(cloud.pairs("vip-port"), [NIC_IP, ip0.as_str()]);
        assert_eq!(cloud.count(Operation::UpdatePort), 1);
        assert_eq!(pairs.vips.queued(), 0);
    }

    #[tokio::test]
    async fn an_unbind_whose_nic_the_listing_does_not_show_reads_the_nic() {
        let (tg, me, o) = (target(), who(), Others::default());
        let (cloud, pairs) = setup(&[NIC_IP], &[SOURCE_CHECK_OFF]);
        // The listing shows no NIC (a server that filters oddly): its absence proves nothing.
        cloud.script(Operation::ListPorts, "", [Reply::Ports(vec![])]);
        let (_, check) = pairs.unbind(&tg, &t(), (&me, &recorded(true)), &o).await.unwrap();
        assert_eq!(check, CheckOff::Removed);
        assert!(cloud.pairs(NIC).is_empty());
        assert_eq!(
            ops(&cloud),
            ["GetPort vip-port", "UpdatePort vip-port", "ListPorts ", "GetPort nic-1", "UpdatePort nic-1"]
        );
    }
}
