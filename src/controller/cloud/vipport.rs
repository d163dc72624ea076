//! Edits of VIP ports' `allowed_address_pairs`, queued per VIP and coalesced: one worker per VIP
//! drains its queue in batches of one fresh read, every queued edit applied in arrival order,
//! one write if anything changed, and the write's answer as the read-back. A node group of 200
//! NICs on one VIP is one read and one write of the VIP port, not 200 read-modify-writes.
//!
//! The queue is keyed by the VIP (region, project, network, address), not by the port's ID, so a
//! batch's read can itself find the port: a GET when a member knows the port's ID (its record),
//! else the listing filtered by network and address, whose answer is checked (one port, holding
//! the address, a VIP port) before anything is written. One worker per VIP is what serialises
//! the writes to its port inside the process.
//!
//! Lost updates: the list is replaced whole and has no version. What is written is built from a
//! read made by the worker itself, after every earlier batch's write was answered. The moment
//! between that read and the write stays open to writers outside the process; a second read
//! right before the write (the old rule) would not close it, only move it. The PUT answers the
//! port as stored: when it does not show every edit of the batch, the port is read again and
//! the edits redone on what it holds (other writers' entries kept), at most [`MAX_ROUNDS`]
//! times. A write without an answer is never resent in the same batch.
//!
//! The worker is a task of its own: a reconcile that stops waiting (cancelled) cannot cancel
//! or half-do the edits of the other bindings in its batch.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::ecs::vpc::{AddressPair, PortFilter, VIP_PORT_OWNER, VpcApi};
use crate::ecs::{CloudTarget, EcsError, ErrorClass, TransportKind};

/// Read-modify-write rounds of one batch before it gives up (`Contended`).
pub const MAX_ROUNDS: usize = 4;
/// Edits applied by one write at most; the rest go in the next batch.
pub const MAX_BATCH: usize = 1_000;

/// What one member wants of the VIP port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The NIC's IP goes into the pairs (with its MAC for `reverseBinding`), if no pair has it.
    Add { ip: String, mac: Option<String> },
    /// Exactly this IP leaves the pairs.
    Remove { ip: String },
    /// Nothing: only the VIP's port, checked (a bind about to turn a NIC's check off first
    /// makes sure the VIP exists).
    Find,
}

/// Which VIP: the queue's key, and what the batch's read looks for.
#[derive(Debug, Clone, Copy)]
pub struct Vip<'a> {
    pub network: &'a str,
    pub address: &'a str,
    /// The port's ID as a member knows it (recorded by its bind): read directly.
    pub port_hint: Option<&'a str>,
}

/// How a member's edit went.
#[derive(Debug)]
pub enum Done {
    /// A write of this batch carried the member's change.
    Written,
    /// The port already was as the member wanted.
    AlreadyThere,
    /// The port read by its recorded ID does not exist (404 `VPC.2502`), or read back so after
    /// the batch's write.
    PortGone,
    /// [`Change::Find`]: the VIP's port is the one named by [`Answer::port_id`].
    Found,
}

/// Why a member's edit failed; every member of a batch gets the batch's answer.
#[derive(Debug, Clone)]
pub enum Failed {
    /// No port holds the address in the network.
    NotFound,
    NotAVip {
        port_id: String,
        owner: String,
    },
    Ambiguous {
        count: usize,
    },
    Cloud(EcsError),
    /// Other writers kept replacing the list.
    Contended {
        port_id: String,
        wrote: bool,
    },
}

#[derive(Debug)]
pub struct Answer {
    /// The VIP's port, once the batch found it.
    pub port_id: Option<String>,
    pub result: Result<Done, Failed>,
    /// A write carrying the member's change may have landed (answered, or sent without an
    /// answer), whatever `result` says.
    pub may_have_applied: bool,
}

impl Answer {
    fn failed(port_id: Option<String>, failed: Failed, may_have_applied: bool) -> Self {
        Self { port_id, result: Err(failed), may_have_applied }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    region: String,
    project: String,
    network: String,
    address: String,
}

struct Member {
    target: CloudTarget,
    change: Change,
    hint: Option<String>,
    reply: oneshot::Sender<Answer>,
    /// In a batch of its own: a batch it was in was refused as a whole (see [`run_batch`]).
    solo: bool,
}

#[derive(Default)]
struct Queues {
    /// A VIP with edits waiting or being applied; its worker removes it when it runs dry, so the
    /// map holds only VIPs with work.
    queues: HashMap<Key, VecDeque<Member>>,
}

/// The VIP ports' edit queues.
#[derive(Clone)]
pub struct VipPorts {
    api: Arc<dyn VpcApi>,
    shared: Arc<Mutex<Queues>>,
}

impl VipPorts {
    pub fn new(api: Arc<dyn VpcApi>) -> Self {
        Self { api, shared: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// VIPs with queued edits (the map holds no idle entry).
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.lock().queues.len()
    }

    /// Queues `change` for the VIP and waits for its batch's answer. Dropping the future leaves
    /// the edit queued: it is applied with the others (the caller treats it as may-have-applied).
    pub async fn submit(&self, target: &CloudTarget, vip: Vip<'_>, change: Change) -> Answer {
        let key = Key {
            region: target.region.clone(),
            project: target.project_id.clone(),
            network: vip.network.to_string(),
            address: vip.address.to_string(),
        };
        let (reply, answer) = oneshot::channel();
        let member =
            Member { target: target.clone(), change, hint: vip.port_hint.map(str::to_string), reply, solo: false };
        let start = {
            let mut queues = self.lock();
            match queues.queues.get_mut(&key) {
                Some(queue) => {
                    queue.push_back(member);
                    false
                }
                None => {
                    queues.queues.insert(key.clone(), VecDeque::from([member]));
                    true
                }
            }
        };
        if start {
            let worker = Worker { ports: self.clone(), key, done: false };
            tokio::spawn(worker.run());
        }
        answer.await.unwrap_or_else(|_| {
            // The worker stopped without answering (a panic below it): nothing is known.
            let lost = EcsError::Transport {
                kind: TransportKind::Protocol,
                message: "the VIP port's edit queue stopped before answering".into(),
            };
            Answer::failed(None, Failed::Cloud(lost), true)
        })
    }
}

struct Worker {
    ports: VipPorts,
    key: Key,
    /// Set when the queue ran dry; a worker dropped before (a panic) drops its queue, which
    /// answers every waiting member "unknown".
    done: bool,
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.done {
            self.ports.lock().queues.remove(&self.key);
        }
    }
}

/// How a batch reads the port.
enum Read {
    ById(String),
    Listing,
}

impl Worker {
    async fn run(mut self) {
        while let Some((target, read, batch)) = self.next_batch() {
            let requeue = run_batch(self.ports.api.as_ref(), &target, &self.key, read, batch).await;
            if !requeue.is_empty() {
                let mut queues = self.ports.lock();
                if let Some(queue) = queues.queues.get_mut(&self.key) {
                    requeue.into_iter().rev().for_each(|m| queue.push_front(m));
                }
            }
        }
    }

    /// The next batch: members signed with the first member's keys (another Secret's edits are
    /// never sent with these), read by one recorded port ID if any of them knows one (the others
    /// with a different ID wait), at most [`MAX_BATCH`]. `None`: the queue ran dry and is gone.
    fn next_batch(&mut self) -> Option<(CloudTarget, Read, Vec<Member>)> {
        let mut queues = self.ports.lock();
        let queue = queues.queues.get_mut(&self.key)?;
        let Some(first) = queue.front() else {
            queues.queues.remove(&self.key);
            self.done = true;
            return None;
        };
        let target = first.target.clone();
        if first.solo {
            let read = first.hint.clone().map_or(Read::Listing, Read::ById);
            let batch: Vec<Member> = queue.pop_front().into_iter().collect();
            return Some((target, read, batch));
        }
        let same = |m: &Member| m.target.credentials.same_keys(&target.credentials);
        let hint = queue.iter().filter(|m| same(m)).find_map(|m| m.hint.clone());
        let mut batch = Vec::new();
        let mut rest = VecDeque::with_capacity(queue.len());
        while let Some(m) = queue.pop_front() {
            let fits = same(&m) && !m.solo && (m.hint.is_none() || m.hint == hint);
            if fits && batch.len() < MAX_BATCH {
                batch.push(m);
            } else {
                rest.push_back(m);
            }
        }
        *queue = rest;
        let read = hint.map_or(Read::Listing, Read::ById);
        Some((target, read, batch))
    }
}

/// One batch: read, apply, write, verify; every member answered. Returns the members to queue
/// again (those without a port ID, when the recorded ID read 404: the listing finds theirs).
async fn run_batch(api: &dyn VpcApi, target: &CloudTarget, key: &Key, read: Read, batch: Vec<Member>) -> Vec<Member> {
    let port = match read {
        Read::ById(id) => match api.get_port(target, &id).await {
            Ok(port) => port,
            Err(e) if e.class() == ErrorClass::Gone => {
                let (gone, unhinted): (Vec<_>, Vec<_>) = batch.into_iter().partition(|m| m.hint.is_some());
                for m in gone {
                    let done =
                        Answer { port_id: Some(id.clone()), result: Ok(Done::PortGone), may_have_applied: false };
                    let _ = m.reply.send(done);
                }
                return unhinted;
            }
            Err(e) => return answer_all(batch, || Answer::failed(Some(id.clone()), Failed::Cloud(e.clone()), false)),
        },
        Read::Listing => match find(api, target, key).await {
            Ok(port) => port,
            Err(failed) => return answer_all(batch, || Answer::failed(None, failed.clone(), false)),
        },
    };
    // A port read by one member's recorded ID serves the members without one only if it is
    // this VIP's port (checked as the listing's answer is); otherwise the listing finds theirs.
    let is_the_vip = port.device_owner == VIP_PORT_OWNER
        && port.fixed_ips.iter().any(|ip| ip.ip_address == key.address)
        && (port.network_id.is_empty() || port.network_id == key.network);
    let (batch, requeue): (Vec<_>, Vec<_>) = batch.into_iter().partition(|m| is_the_vip || m.hint.is_some());
    let port_id = port.id.clone();
    let (finds, edits): (Vec<_>, Vec<_>) = batch.into_iter().partition(|m| m.change == Change::Find);
    for m in finds {
        let _ =
            m.reply.send(Answer { port_id: Some(port_id.clone()), result: Ok(Done::Found), may_have_applied: false });
    }
    let changes: Vec<&Change> = edits.iter().map(|m| &m.change).collect();
    let outcome = edit_rounds(api, target, &port_id, port.allowed_address_pairs, &changes).await;
    tracing::debug!(port = %port_id, edits = edits.len(), wrote = outcome.wrote, "VIP port batch done");
    // The cloud refused the batch's one write outright (a 4xx that changed nothing: a quota on
    // the pairs, one bad entry): the edits go again one by one, so one member's refusal does not
    // become everyone's. Huawei's limit on a port's pairs is not documented; this binds as many
    // members as the cloud takes and fails the rest with its own answer.
    let carriers = outcome.carried.iter().filter(|c| **c).count();
    if let Err(RoundsFailed::Cloud(e)) = &outcome.result
        && !outcome.wrote
        && carriers > 1
        && e.class() == ErrorClass::Terminal
        && !e.may_have_applied()
    {
        tracing::info!(port = %port_id, edits = carriers, error = %e, "the VIP port refused a batched write; its edits go one by one");
        let mut again = requeue;
        again.extend(edits.into_iter().map(|m| Member { solo: true, ..m }));
        return again;
    }
    for (i, m) in edits.into_iter().enumerate() {
        let carried = outcome.carried.get(i).copied().unwrap_or(false);
        let answer = match &outcome.result {
            Ok(None) => Answer {
                port_id: Some(port_id.clone()),
                result: Ok(if carried { Done::Written } else { Done::AlreadyThere }),
                may_have_applied: carried,
            },
            Ok(Some(_gone)) => {
                Answer { port_id: Some(port_id.clone()), result: Ok(Done::PortGone), may_have_applied: carried }
            }
            Err(RoundsFailed::Cloud(e)) => {
                Answer::failed(Some(port_id.clone()), Failed::Cloud(e.clone()), carried && e.may_have_applied())
            }
            Err(RoundsFailed::Contended) => Answer::failed(
                Some(port_id.clone()),
                Failed::Contended { port_id: port_id.clone(), wrote: outcome.wrote },
                carried,
            ),
        };
        // A member that stopped waiting is answered by nobody: its edit was applied all the same.
        let _ = m.reply.send(answer);
    }
    requeue
}

fn answer_all(batch: Vec<Member>, mut answer: impl FnMut() -> Answer) -> Vec<Member> {
    for m in batch {
        let _ = m.reply.send(answer());
    }
    vec![]
}

/// The VIP's port: the one port holding the address in the network, a VIP port. One listing,
/// whose answer carries the port's pairs (the batch's read).
async fn find(api: &dyn VpcApi, target: &CloudTarget, key: &Key) -> Result<crate::ecs::vpc::Port, Failed> {
    let filter = PortFilter {
        network_id: Some(key.network.clone()),
        ip_addresses: vec![key.address.clone()],
        ..PortFilter::default()
    };
    let ports = match api.list_ports(target, &filter).await {
        Ok(ports) => ports,
        // A listing's 404 says nothing about any one port; filtered by the VIP, it finds none.
        Err(e) if e.class() == ErrorClass::Gone => return Err(Failed::NotFound),
        Err(e) => return Err(Failed::Cloud(e)),
    };
    the_vip_port(ports, &key.network, &key.address)
}

/// The VIP's port in a listing filtered by network and address: the one port holding the
/// address in the network, a VIP port. The filters are the server's; the answer is checked, not
/// trusted.
pub fn the_vip_port(
    ports: Vec<crate::ecs::vpc::Port>,
    network: &str,
    address: &str,
) -> Result<crate::ecs::vpc::Port, Failed> {
    let mut matching = ports.into_iter().filter(|p| {
        p.fixed_ips.iter().any(|ip| ip.ip_address == address) && (p.network_id.is_empty() || p.network_id == network)
    });
    let Some(port) = matching.next() else { return Err(Failed::NotFound) };
    let rest = matching.count();
    if rest > 0 {
        return Err(Failed::Ambiguous { count: rest.saturating_add(1) });
    }
    if port.device_owner != VIP_PORT_OWNER {
        return Err(Failed::NotAVip { port_id: port.id, owner: port.device_owner });
    }
    Ok(port)
}

enum RoundsFailed {
    Cloud(EcsError),
    Contended,
}

struct Rounds {
    /// `Ok(None)`: every edit is in place; `Ok(Some(gone))`: the port went away (read back 404).
    result: Result<Option<EcsError>, RoundsFailed>,
    /// A write was answered.
    wrote: bool,
    /// Per edit: a write carrying its change was sent.
    carried: Vec<bool>,
}

/// The edits applied in order to `pairs`; which of them changed the list.
fn apply(pairs: &[AddressPair], changes: &[&Change]) -> (Vec<AddressPair>, Vec<bool>) {
    let mut next = pairs.to_vec();
    let changed = changes
        .iter()
        .map(|change| match change {
            Change::Add { ip, mac } if !next.iter().any(|p| &p.ip_address == ip) => {
                next.push(AddressPair { ip_address: ip.clone(), mac_address: mac.clone() });
                true
            }
            Change::Remove { ip } if next.iter().any(|p| &p.ip_address == ip) => {
                next.retain(|p| &p.ip_address != ip);
                true
            }
            _ => false,
        })
        .collect();
    (next, changed)
}

/// Whether `pairs` shows every edit (for each address, the last edit of it wins).
fn shows(pairs: &[AddressPair], changes: &[&Change]) -> bool {
    let mut wanted: HashMap<&str, bool> = HashMap::new();
    for change in changes {
        match change {
            Change::Add { ip, .. } => wanted.insert(ip, true),
            Change::Remove { ip } => wanted.insert(ip, false),
            Change::Find => None,
        };
    }
    wanted.into_iter().all(|(ip, present)| pairs.iter().any(|p| p.ip_address == ip) == present)
}

async fn edit_rounds(
    api: &dyn VpcApi,
    target: &CloudTarget,
    port_id: &str,
    mut pairs: Vec<AddressPair>,
    changes: &[&Change],
) -> Rounds {
    let mut carried = vec![false; changes.len()];
    let mut wrote = false;
    // A read that fails after our write was answered must not make the edit look unwritten.
    let after_write = |wrote: bool, last: EcsError| match last {
        last if wrote && !last.may_have_applied() => EcsError::Uncertain {
            last: Box::new(last),
            earlier: format!("a write to port {port_id} was answered before this read"),
        },
        last => last,
    };
    for _ in 0..MAX_ROUNDS {
        let (next, changed) = apply(&pairs, changes);
        if next == pairs {
            return Rounds { result: Ok(None), wrote, carried };
        }
        for (c, changed) in carried.iter_mut().zip(changed) {
            *c |= changed;
        }
        let answer = match api.update_pairs(target, port_id, &next).await {
            Ok(answer) => answer,
            // Not resent: without an answer nobody knows what the port holds.
            Err(e) => return Rounds { result: Err(RoundsFailed::Cloud(after_write(wrote, e))), wrote, carried },
        };
        wrote = true;
        if shows(&answer.allowed_address_pairs, changes) {
            return Rounds { result: Ok(None), wrote, carried };
        }
        // The answer shows another writer's list: read it, and redo the edits on it.
        tracing::debug!(port = port_id, "the port's answer does not show every edit; reading it again");
        pairs = match api.get_port(target, port_id).await {
            Ok(port) if shows(&port.allowed_address_pairs, changes) => {
                return Rounds { result: Ok(None), wrote, carried };
            }
            Ok(port) => port.allowed_address_pairs,
            Err(e) if e.class() == ErrorClass::Gone => return Rounds { result: Ok(Some(e)), wrote, carried },
            Err(e) => return Rounds { result: Err(RoundsFailed::Cloud(after_write(wrote, e))), wrote, carried },
        };
    }
    Rounds { result: Err(RoundsFailed::Contended), wrote, carried }
}
