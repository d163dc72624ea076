//! The in-memory cloud: NICs and the VIPs ECS bound to them, ports, servers, missing NICs, accepted
//! credentials and lockouts, scripted faults, the call log and the in-flight counters, all behind
//! one lock ([`Shared::lock`]); what a write does to it ([`Effect`]), on arrival or late; and the
//! snapshot the admin API shows. The rooms that serve calls read and change it; it knows none of
//! them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::DefaultDirectRateLimiter;
use serde::{Deserialize, Serialize};

use super::config::SimCredential;
use super::ports::{PairsChange, Ports, SimAddressPair, SimPort};
use super::servers::{NewServer, ServerError, Servers, SimServer};

/// The ECS calls (the `PUT` on a NIC).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SimOperation {
    Bind,
    Unbind,
}

/// The VPC port calls. Kept apart from [`SimOperation`], which callers match exhaustively.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PortOperation {
    GetPort,
    ListPorts,
    /// `PUT /v1/{project_id}/ports/{port_id}`.
    UpdatePort,
}

/// Every cloud call the simulator serves: what a [`Fault`] can target. In JSON: `bind`,
/// `unbind`, `get_port`, `list_ports`, `update_port`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CloudOperation {
    Bind,
    Unbind,
    GetPort,
    ListPorts,
    UpdatePort,
}

impl From<SimOperation> for CloudOperation {
    fn from(op: SimOperation) -> Self {
        match op {
            SimOperation::Bind => CloudOperation::Bind,
            SimOperation::Unbind => CloudOperation::Unbind,
        }
    }
}

impl From<PortOperation> for CloudOperation {
    fn from(op: PortOperation) -> Self {
        match op {
            PortOperation::GetPort => CloudOperation::GetPort,
            PortOperation::ListPorts => CloudOperation::ListPorts,
            PortOperation::UpdatePort => CloudOperation::UpdatePort,
        }
    }
}

/// A scripted fault. The first fault that matches a call (operation and NIC, when given) and
/// has uses left is consumed. Without an operation a fault matches every cloud call, port calls
/// included; its `nic_id` matches an ECS call on that NIC and a read or update of the port with
/// that ID (a NIC's port ID is its NIC ID), never a listing. A 2xx `status` does the call
/// normally but holds the answer for `latency_ms` (a slow cloud, or a response the client never
/// receives if it dies meanwhile). An error `status` answers with that error; with `apply: true`
/// an ECS call's or a port update's effect happens anyway (a cloud that did the work but failed
/// to say so).
///
/// `apply_after_ms` models a write that lands after the client gave up (Huawei's gateway
/// answers 504 while the service behind it is still working): the write's effect (an ECS
/// call's, or a port update's) is not made on arrival but that long after it, by a task of its
/// own, whatever the answer and whether or not the client is still there. With an error
/// `status` the effect happens (late) whether or not `apply` is set. The call is checked on
/// arrival as always; a call that would have had no effect (refused, missing NIC or port) gets
/// none later either. Reads ignore it. At most [`MAX_APPLY_AFTER`]. The call's record says when
/// the effect landed ([`CallRecord::late`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fault {
    #[serde(default)]
    pub operation: Option<CloudOperation>,
    #[serde(default)]
    pub nic_id: Option<String>,
    #[serde(default = "default_fault_status")]
    pub status: u16,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// Uses; 0 means until cleared.
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default)]
    pub retry_after: Option<u64>,
    #[serde(default)]
    pub latency_ms: Option<u64>,
    #[serde(default)]
    pub apply: bool,
    #[serde(default)]
    pub apply_after_ms: Option<u64>,
}

fn default_fault_status() -> u16 {
    500
}
fn one() -> u32 {
    1
}

impl Fault {
    pub fn error(status: u16, code: &str, count: u32) -> Self {
        Self {
            operation: None,
            nic_id: None,
            status,
            code: Some(code.into()),
            message: None,
            count,
            retry_after: None,
            latency_ms: None,
            apply: false,
            apply_after_ms: None,
        }
    }

    pub fn on(mut self, operation: impl Into<CloudOperation>) -> Self {
        self.operation = Some(operation.into());
        self
    }

    pub fn for_nic(mut self, nic_id: &str) -> Self {
        self.nic_id = Some(nic_id.into());
        self
    }
}

/// Consumes one use of the first scripted fault matching the call, if any. `subject` is the NIC
/// or port the call names (none for a listing).
pub(super) fn take_fault(inner: &mut Inner, op: CloudOperation, subject: Option<&str>) -> Option<Fault> {
    let i = inner
        .faults
        .iter()
        .position(|f| f.operation.is_none_or(|o| o == op) && f.nic_id.as_deref().is_none_or(|n| Some(n) == subject))?;
    let f = inner.faults[i].clone();
    if f.count == 1 {
        inner.faults.remove(i);
    } else if f.count > 1 {
        inner.faults[i].count -= 1;
    }
    Some(f)
}

/// How long after arrival the fault puts the call's effect off, if it does: bounded by
/// [`MAX_APPLY_AFTER`].
pub(super) fn apply_after(fault: Option<&Fault>) -> Option<Duration> {
    fault?.apply_after_ms.map(|ms| Duration::from_millis(ms).min(MAX_APPLY_AFTER))
}

/// How long a fault holds the call's answer ([`Fault::latency_ms`]).
pub(super) fn fault_hold(fault: Option<&Fault>) -> Duration {
    fault.and_then(|f| f.latency_ms).map(Duration::from_millis).unwrap_or_default()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NicState {
    pub project_id: String,
    pub ip_address: String,
    pub subnet_id: String,
    pub reverse_binding: bool,
}

/// The longest a cloud call is held (configured latency and a fault's together).
pub const MAX_LATENCY: Duration = Duration::from_secs(3600);

/// Calls kept in the log; the oldest tenth goes when it is full.
pub const MAX_CALL_LOG: usize = 100_000;

/// The longest a write's effect is put off ([`Fault::apply_after_ms`]): admin input is hostile.
pub const MAX_APPLY_AFTER: Duration = Duration::from_secs(600);

/// Late effects waiting at most; past that a late effect is made on arrival (and its record
/// says so), so a flood of calls cannot pile up tasks without bound.
pub const MAX_PENDING_LATE: usize = 10_000;

/// A write whose effect was put off ([`Fault::apply_after_ms`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LateApply {
    /// When the effect was due, in milliseconds after the request was received (bounded).
    pub due_after_ms: u64,
    pub state: LateState,
    /// When it was made (or found nothing to act on), in microseconds after the request was
    /// received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_after_us: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LateState {
    /// Not due yet.
    Pending,
    /// The effect was made, late.
    Applied,
    /// Made on arrival after all: [`MAX_PENDING_LATE`] effects were waiting already.
    AppliedOnArrival,
    /// When it was due, its NIC was missing or its port gone: nothing changed.
    TargetGone,
}

/// One cloud call as the simulator saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallRecord {
    pub seq: u64,
    /// When the request arrived: with [`LateApply::done_after_us`], when a late effect landed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<jiff::Timestamp>,
    pub method: String,
    pub path: String,
    /// The raw query, as received (listings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    pub project_id: Option<String>,
    /// The NIC of an ECS call.
    pub nic_id: Option<String>,
    /// The ECS operation, once the body said which.
    pub operation: Option<SimOperation>,
    /// The port read or updated (`GET|PUT .../ports/{port_id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_id: Option<String>,
    /// The VPC operation, once the call passed the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_operation: Option<PortOperation>,
    /// Ports whose armed [`PairsChange`] this read set off (right after its answer was taken).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_read_fired: Vec<String>,
    pub access_key: Option<String>,
    /// The body exactly as received.
    pub body: String,
    pub status: u16,
    pub code: Option<String>,
    /// The `X-Request-Id` the answer carried: unique per request, to match against the
    /// operator's logs (its audit trail) and errors.
    pub request_id: String,
    /// Microseconds from receiving the request to answering it (its latency, faults included).
    #[serde(default)]
    pub duration_us: u64,
    /// A write whose effect was put off, and whether it has landed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late: Option<LateApply>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StateSnapshot {
    pub nics: BTreeMap<String, NicState>,
    /// Every port (NIC ports and VIP ports), by port ID.
    #[serde(default)]
    pub ports: BTreeMap<String, SimPort>,
    /// Changes armed by [`Simulator::after_next_read`](super::Simulator::after_next_read) that no read has set off yet, by port ID.
    #[serde(default)]
    pub after_next_read: BTreeMap<String, PairsChange>,
    /// Servers and their NICs' port IDs, by server ID.
    #[serde(default)]
    pub servers: BTreeMap<String, SimServer>,
    pub missing_nics: BTreeSet<String>,
    pub locked_access_keys: BTreeSet<String>,
    pub max_in_flight: usize,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) nics: BTreeMap<String, NicState>,
    pub(super) ports: Ports,
    pub(super) servers: Servers,
    pub(super) missing: BTreeSet<String>,
    pub(super) credentials: Vec<SimCredential>,
    pub(super) faults: Vec<Fault>,
    pub(super) calls: Vec<CallRecord>,
    pub(super) failures: HashMap<String, u32>,
    pub(super) locked_until: HashMap<String, jiff::Timestamp>,
    pub(super) latency: Duration,
    pub(super) limiter: Option<Arc<DefaultDirectRateLimiter>>,
}

pub(super) struct Shared {
    pub(super) inner: Mutex<Inner>,
    pub(super) seq: AtomicU64,
    /// Late effects not made yet ([`Fault::apply_after_ms`]).
    pub(super) late_pending: AtomicUsize,
    /// Moved on by every reset, under the lock: a late effect scheduled before a reset is
    /// dropped rather than landing in the new state.
    pub(super) epoch: AtomicU64,
    pub(super) in_flight: AtomicUsize,
    pub(super) max_in_flight: AtomicUsize,
    pub(super) max_skew: Duration,
    pub(super) lockout_after: u32,
    pub(super) lockout_for: Duration,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters for a simulator; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn snapshot(shared: &Shared) -> StateSnapshot {
    let inner = shared.lock();
    let now = jiff::Timestamp::now();
    StateSnapshot {
        nics: inner.nics.clone(),
        ports: inner.ports.all(),
        after_next_read: inner.ports.pending_after_read(),
        servers: inner.servers.all(),
        missing_nics: inner.missing.clone(),
        locked_access_keys: inner
            .locked_until
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(ak, _)| ak.clone())
            .collect(),
        max_in_flight: shared.max_in_flight.load(Ordering::SeqCst),
    }
}

/// Sets or clears a NIC's VIP behind the operator's back. A NIC named so is known to the
/// simulator: it has a port from then on, as after an ECS call.
pub(super) fn set_nic(inner: &mut Inner, nic_id: &str, state: Option<NicState>) {
    match state {
        Some(s) => {
            inner.ports.know_nic(&s.project_id, nic_id);
            inner.nics.insert(nic_id.into(), s);
        }
        None => {
            inner.nics.remove(nic_id);
        }
    }
}

/// Missing NICs that removing servers adds at most: a NIC of a removed server stays missing
/// (so the cloud keeps answering "not found" for it), and removals must not grow the set for ever.
pub const MAX_MISSING_NICS: usize = 100_000;

/// Adds a server and its NICs' ports, all or nothing. Its NICs are usable at once by ECS calls
/// (a NIC with a port is a known NIC, as after `PUT /sim/ports`) and by port calls; a NIC missing
/// before (a removed server's) is present again.
pub(super) fn add_server(inner: &mut Inner, server: NewServer) -> Result<SimServer, ServerError> {
    let (server, ports) = server.check()?;
    inner.servers.can_add(&server.id)?;
    inner.ports.add_all(ports).map_err(|e| ServerError::Ports(e.to_string()))?;
    for nic in &server.nics {
        inner.missing.remove(nic);
    }
    inner.servers.insert(server.clone());
    Ok(server)
}

/// Removes a server: its NICs' ports go and the NICs become missing, so reads of the ports answer
/// 404 `VPC.2502` and ECS calls on the NICs 404, as for a NIC that is gone; the VIP ECS had bound
/// to each is forgotten. VIP ports whose pairs hold the NICs' addresses are left as they are
/// (what Huawei does to them is not documented).
pub(super) fn remove_server(inner: &mut Inner, id: &str) -> Result<SimServer, ServerError> {
    let server = inner.servers.get(id).ok_or_else(|| ServerError::not_found(id))?;
    room_for_missing(inner, &server.nics)?;
    let server = inner.servers.remove(id).ok_or_else(|| ServerError::not_found(id))?;
    for nic in &server.nics {
        drop_nic(inner, nic);
    }
    Ok(server)
}

/// Takes one NIC off a server, as [`remove_server`] does all of them.
pub(super) fn remove_server_nic(inner: &mut Inner, server: &str, port: &str) -> Result<(), ServerError> {
    room_for_missing(inner, &[port.to_string()])?;
    inner.servers.remove_nic(server, port)?;
    drop_nic(inner, port);
    Ok(())
}

/// Checked before anything changes, so a refused removal changes nothing.
fn room_for_missing(inner: &Inner, nics: &[String]) -> Result<(), ServerError> {
    let new = nics.iter().filter(|n| !inner.missing.contains(*n)).count();
    if inner.missing.len().saturating_add(new) > MAX_MISSING_NICS {
        return Err(ServerError::TooManyMissing(MAX_MISSING_NICS));
    }
    Ok(())
}

fn drop_nic(inner: &mut Inner, nic: &str) {
    inner.ports.remove(nic);
    inner.nics.remove(nic);
    inner.missing.insert(nic.into());
}

pub(super) fn reset(shared: &Shared) {
    let mut inner = shared.lock();
    shared.epoch.fetch_add(1, Ordering::SeqCst);
    inner.nics.clear();
    inner.ports.clear();
    inner.servers.clear();
    inner.calls.clear();
    inner.faults.clear();
    inner.failures.clear();
    inner.locked_until.clear();
    shared.max_in_flight.store(0, Ordering::SeqCst);
}

/// A write's effect kept to be made later, exactly as the call would have made it.
pub(super) enum Effect {
    Nic { op: SimOperation, project_id: String, nic_id: String, fields: NicFieldsIn },
    Pairs { port_id: String, pairs: Vec<SimAddressPair> },
}

impl Effect {
    pub(super) fn make(self, inner: &mut Inner) -> LateState {
        match self {
            Effect::Nic { nic_id, .. } if inner.missing.contains(&nic_id) => LateState::TargetGone,
            Effect::Nic { op, project_id, nic_id, fields } => {
                apply(inner, op, &project_id, &nic_id, fields);
                LateState::Applied
            }
            Effect::Pairs { port_id, pairs } => {
                if inner.ports.set_pairs(&port_id, pairs) {
                    LateState::Applied
                } else {
                    LateState::TargetGone
                }
            }
        }
    }
}

pub(super) struct NicFieldsIn {
    pub(super) subnet_id: String,
    pub(super) ip_address: String,
    pub(super) reverse_binding: bool,
}

/// The ECS call's effect on the NIC and, with `reverse_binding`, on the VIP's port (see
/// [`Ports::reverse_bind`] for what is and is not documented).
fn apply(inner: &mut Inner, op: SimOperation, project_id: &str, nic_id: &str, fields: NicFieldsIn) {
    match op {
        SimOperation::Bind => {
            if fields.reverse_binding {
                inner.ports.reverse_bind(project_id, nic_id, &fields.ip_address, &inner.missing);
            }
            inner.nics.insert(
                nic_id.into(),
                NicState {
                    project_id: project_id.into(),
                    ip_address: fields.ip_address,
                    subnet_id: fields.subnet_id,
                    reverse_binding: fields.reverse_binding,
                },
            );
        }
        SimOperation::Unbind => {
            let had = inner.nics.remove(nic_id);
            if fields.reverse_binding
                && let Some(had) = had
            {
                inner.ports.reverse_unbind(project_id, nic_id, &had.ip_address, &inner.missing);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_that_would_overfill_the_missing_nics_changes_nothing() {
        use crate::simulator::servers::SimNic;
        let mut inner = Inner::default();
        let nics = vec![SimNic::new("p1", "n", "10.0.0.1"), SimNic::new("p2", "n", "10.0.0.2")];
        add_server(&mut inner, NewServer { id: "s".into(), project_id: "proj".into(), nics }).unwrap();
        inner.missing = (1..MAX_MISSING_NICS).map(|i| format!("m{i}")).collect();
        assert_eq!(remove_server(&mut inner, "s"), Err(ServerError::TooManyMissing(MAX_MISSING_NICS)));
        assert!(inner.servers.get("s").is_some() && inner.ports.get("p1").is_some());
        // One NIC fits.
        remove_server_nic(&mut inner, "s", "p1").unwrap();
        assert!(inner.ports.get("p1").is_none() && inner.missing.contains("p1"));
        assert_eq!(remove_server(&mut inner, "s"), Err(ServerError::TooManyMissing(MAX_MISSING_NICS)));
        // Adding a server with a missing NIC makes it present again (and makes room).
        let back = vec![SimNic::new("p1", "n", "10.0.0.1")];
        add_server(&mut inner, NewServer { id: "t".into(), project_id: "proj".into(), nics: back }).unwrap();
        assert!(!inner.missing.contains("p1"));
        assert_eq!(remove_server(&mut inner, "s").map(|s| s.nics), Ok(vec!["p2".to_string()]));
    }

    #[test]
    fn apply_after_is_optional_and_bounded() {
        let f: Fault = serde_json::from_str(r#"{"operation":"bind","status":504}"#).unwrap();
        assert_eq!(f.apply_after_ms, None);
        let f: Fault = serde_json::from_str(r#"{"status":504,"apply_after_ms":18446744073709551615}"#).unwrap();
        assert_eq!(apply_after(Some(&f)), Some(MAX_APPLY_AFTER));
        assert_eq!(apply_after(None), None);
    }
}
