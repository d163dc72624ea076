//! The bundled cloud simulator: a stand-in for the Huawei Cloud ECS and VPC endpoints that
//! behaves like the cloud (signature checks, body validation, state, throttling, faults), so the
//! operator can be tried without an account and tested end to end. One listener serves both
//! services over one state; give its URL as both endpoints.
//!
//! Its rooms, each using only rooms listed after it:
//! - `mod.rs` — the public face: [`Simulator`] (start, test hooks, shutdown), the router that
//!   puts the cloud and admin routes on one listener, and the re-exports.
//! - `admin.rs` — the admin API, `/sim/...` (listed there): sets the cloud up, scripts it and
//!   shows what it saw, straight on the state.
//! - `pipeline.rs` — the cloud API (listed there) and the pipeline every cloud call goes
//!   through: request id, throttle, signature, the service's own room, fault, effect (now or
//!   late), call record, latency, answer.
//! - `ecs.rs` — the ECS NIC call (bind/unbind): its body, checks, fault, effect and answer.
//! - `vpc.rs` — the VPC port calls: read, list, update.
//! - `call.rs` — one cloud call as the rooms pass it on: request, outcome, late effect, and the
//!   body envelope both services use.
//! - `state.rs` — the in-memory cloud: NICs, ports, servers, missing NICs, credentials and
//!   lockouts, faults, late writes, the call log, the snapshot; and what a write does to it
//!   (adding and removing a server included).
//! - `servers.rs` — servers and which NIC ports each holds (a NIC's port has the server's ID as
//!   its `device_id`, so a listing by `device_id` and `network_id` finds it); the checks on a
//!   new server and the ports it brings.
//! - `ports.rs` — the port model: ports, their pairs and the checks on them, listing filters;
//!   what is modelled of Huawei's VPC, and from where.
//! - `config.rs` — what the simulator starts with and can be re-set to ([`SimulatorConfig`],
//!   credentials, the qps limiter, [`SimError`]).
//! - `verify.rs` — the independent signature check.
//!
//! Servers are set up through the admin API or [`Simulator::add_server`]; the cloud serves no
//! server call yet. One would get a route in `pipeline.rs` and its handling in `ecs.rs`.

mod admin;
mod call;
mod config;
mod ecs;
mod pipeline;
mod ports;
mod servers;
mod state;
mod verify;
mod vpc;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use call::EnvelopeError;
pub use config::{DEFAULT_MAX_PAIRS, MAX_PAIRS_CEILING, SimCredential, SimError, SimulatorConfig};
pub use ports::{PairsChange, PairsError, PortError, SimAddressPair, SimFixedIp, SimPort};
pub use servers::{MAX_ID_LEN, MAX_NICS_PER_SERVER, MAX_SERVERS, NewServer, ServerError, SimNic, SimServer};
pub use state::{
    CallRecord, CloudOperation, Fault, LateApply, LateState, MAX_APPLY_AFTER, MAX_CALL_LOG, MAX_LATENCY,
    MAX_MISSING_NICS, MAX_PENDING_LATE, NicState, PortOperation, SimOperation, StateSnapshot,
};

use config::limiter;
use ports::Ports;
use state::{Inner, Shared, add_server, remove_server, remove_server_nic, reset, set_nic, snapshot};

/// A running simulator. Dropping it does not stop it; call [`Simulator::shutdown`].
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Simulator {
    pub async fn start(config: SimulatorConfig) -> Result<Self, SimError> {
        // Settings are checked before anything listens.
        let ports = Ports::new(config.max_pairs)?;
        let limiter = limiter(config.qps)?;
        let listener =
            TcpListener::bind(config.listen).await.map_err(|error| SimError::Listen { addr: config.listen, error })?;
        let addr = listener.local_addr().map_err(SimError::LocalAddr)?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                missing: config.missing_nics.iter().cloned().collect(),
                credentials: config.credentials.clone(),
                latency: config.latency,
                limiter,
                ports,
                ..Default::default()
            }),
            seq: AtomicU64::new(0),
            late_pending: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            max_skew: config.max_clock_skew,
            lockout_after: config.lockout_after,
            lockout_for: config.lockout_for,
        });
        let stop = CancellationToken::new();
        let app = router(shared.clone());
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "simulator server failed");
            }
        });
        Ok(Self { addr, shared, stop, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint to give the operator (`--ecs-endpoint`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> StateSnapshot {
        snapshot(&self.shared)
    }

    pub fn calls(&self) -> Vec<CallRecord> {
        self.shared.lock().calls.clone()
    }

    pub fn add_fault(&self, fault: Fault) {
        self.shared.lock().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Late effects ([`Fault::apply_after_ms`]) that have not landed yet.
    pub fn late_pending(&self) -> usize {
        self.shared.late_pending.load(Ordering::SeqCst)
    }

    pub fn set_missing(&self, nic_id: &str, missing: bool) {
        let mut inner = self.shared.lock();
        if missing {
            inner.missing.insert(nic_id.into());
        } else {
            inner.missing.remove(nic_id);
        }
    }

    pub fn set_nic(&self, nic_id: &str, state: Option<NicState>) {
        set_nic(&mut self.shared.lock(), nic_id, state);
    }

    /// Creates or replaces a port (its `id` and `project_id` say which, and whose).
    pub fn set_port(&self, port: SimPort) -> Result<(), PortError> {
        self.shared.lock().ports.set(port)
    }

    /// The port disappears: reads answer `VPC.2502`. False when there was none.
    pub fn remove_port(&self, port_id: &str) -> bool {
        self.shared.lock().ports.remove(port_id).is_some()
    }

    /// Replaces a port's `allowed_address_pairs`, behind the operator's back. False when there
    /// is no such port.
    pub fn set_allowed_address_pairs(&self, port_id: &str, pairs: Vec<SimAddressPair>) -> bool {
        self.shared.lock().ports.set_pairs(port_id, pairs)
    }

    /// A concurrent writer, for tests of read-modify-write: the next time the VPC API shows port
    /// `port_id` to a reader (a GET of it, or a listing page that holds it, answered 200), the
    /// answer is taken first and `change` is made to the port's `allowed_address_pairs` right
    /// after, once. The reader sees the list before; every call decided after that read (the
    /// reader's own write included) sees the list after. Arming a port again replaces its
    /// change; removing the port or a reset disarms it. An ECS call is no read.
    ///
    /// `Err(NotFound)` without such a port; `Err(InvalidPairs)` for a change the update API
    /// would refuse (that writer goes through the same checks).
    pub fn after_next_read(&self, port_id: &str, change: PairsChange) -> Result<(), PortError> {
        self.shared.lock().ports.after_next_read(port_id, change)
    }

    /// Arms a one-shot change of `port_id`'s pairs made right after its next update lands and
    /// before that update is answered: another writer overtaking it, so the answer shows their
    /// list (recorded in the call's `after_read_fired`). Errors as for
    /// [`Simulator::after_next_read`].
    pub fn after_next_write(&self, port_id: &str, change: PairsChange) -> Result<(), PortError> {
        self.shared.lock().ports.after_next_write(port_id, change)
    }

    /// Disarms [`Simulator::after_next_read`] for the port. False when nothing was armed.
    pub fn clear_after_next_read(&self, port_id: &str) -> bool {
        self.shared.lock().ports.clear_after_next_read(port_id)
    }

    /// The port as the simulator holds it (whatever its project, missing or not).
    pub fn port(&self, port_id: &str) -> Option<SimPort> {
        self.shared.lock().ports.get(port_id).cloned()
    }

    /// Adds server `id` in `project_id` with its NICs, each a port with `device_id` = `id` in its
    /// network (checked as `POST /sim/servers` checks them; all or nothing). The NICs are usable
    /// by ECS and port calls at once.
    pub fn add_server(&self, project_id: &str, id: &str, nics: &[SimNic]) -> Result<SimServer, ServerError> {
        let server = NewServer { id: id.into(), project_id: project_id.into(), nics: nics.to_vec() };
        add_server(&mut self.shared.lock(), server)
    }

    /// Removes a server: its NICs' ports go and the NICs become missing (port reads answer 404
    /// `VPC.2502`, ECS calls 404).
    pub fn remove_server(&self, id: &str) -> Result<SimServer, ServerError> {
        remove_server(&mut self.shared.lock(), id)
    }

    /// Removes one NIC of a server, as [`Simulator::remove_server`] removes all of them.
    pub fn remove_server_nic(&self, server_id: &str, port_id: &str) -> Result<(), ServerError> {
        remove_server_nic(&mut self.shared.lock(), server_id, port_id)
    }

    /// Every server, by ID.
    pub fn servers(&self) -> Vec<SimServer> {
        self.shared.lock().servers.list()
    }

    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    pub fn set_qps(&self, qps: Option<f64>) -> Result<(), SimError> {
        let l = limiter(qps)?;
        self.shared.lock().limiter = l;
        Ok(())
    }

    /// Sets the most pairs a port's `allowed_address_pairs` holds, for every write from now on
    /// (updates, and changes armed or fired by [`Simulator::after_next_read`] and
    /// [`Simulator::after_next_write`]). `Err(InvalidMaxPairs)`, and no change, outside 1 to
    /// [`MAX_PAIRS_CEILING`]. Kept across [`Simulator::reset`].
    pub fn set_max_pairs(&self, max_pairs: usize) -> Result<(), SimError> {
        self.shared.lock().ports.set_max_pairs(max_pairs)
    }

    pub fn add_credential(&self, credential: SimCredential) {
        self.shared.lock().credentials.push(credential);
    }

    pub fn reset(&self) {
        reset(&self.shared);
    }

    /// Stops accepting connections and waits for in-flight calls to finish.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Runs until `stop` is cancelled (for the CLI).
    pub async fn run_until(self, stop: CancellationToken) {
        stop.cancelled().await;
        self.shutdown().await;
    }
}

/// The cloud's routes and the admin routes on one listener, behind the gateway's answers for
/// everything else.
fn router(shared: Arc<Shared>) -> Router {
    pipeline::routes()
        .merge(admin::routes())
        // The gateway matches method and path together: a known path with another method is
        // as unknown as any other path.
        .fallback(pipeline::unknown_api)
        .method_not_allowed_fallback(pipeline::unknown_api)
        .layer(axum::middleware::map_response(pipeline::ensure_request_id))
        .with_state(shared)
}
