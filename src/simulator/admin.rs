//! The admin API: what tests and demos use to set the cloud up, script it and read what it saw.
//! JSON, no authentication (bind the simulator to loopback); not throttled, faulted or recorded:
//! these routes read and change the state directly, behind the operator's back.
//!
//! - `GET /sim/state` — NIC → VIP state, ports, armed after-read changes, missing NICs, locked
//!   access keys, in-flight peak
//! - `GET /sim/calls` — every cloud call received, in order, with its outcome
//! - `POST /sim/faults` — script a fault ([`Fault`]); `DELETE /sim/faults` clears them
//! - `PUT|DELETE /sim/missing-nics/{nic_id}` — declare a NIC missing (404, and no port) or present
//!   again
//! - `PUT|DELETE /sim/nics/{nic_id}` — set or clear a NIC's VIP behind the operator's back (drift)
//! - `PUT /sim/ports/{port_id}` — create or replace a port ([`SimPort`]: a port plus `project_id`)
//! - `DELETE /sim/ports/{port_id}` — the port disappears (reads answer `VPC.2502`)
//! - `PUT /sim/ports/{port_id}/allowed-address-pairs` — `{"allowed_address_pairs": [...]}`:
//!   change a port's pairs behind the operator's back
//! - `PUT /sim/ports/{port_id}/after-next-read` — a [`PairsChange`] (`{"add": {pair}}`,
//!   `{"remove": "<ip>"}` or `{"replace": [pairs]}`): a concurrent writer, once; the next read
//!   that shows the port (GET or a listing) is answered, then the change happens (see
//!   [`Simulator::after_next_read`](super::Simulator::after_next_read)). 404 without such a
//!   port, 400 for a change the API would refuse. `DELETE` disarms it.
//! - `PUT /sim/config` — `{"latency_ms": N, "qps": N|null}`
//! - `POST /sim/credentials` — accept another AK/SK (optionally temporary, with a token)
//! - `POST /sim/reset` — forget state, ports, calls, faults and lockouts

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;

use super::config::{SimCredential, limiter};
use super::ports::{PairsChange, PortError, SimAddressPair, SimPort};
use super::state::{CallRecord, Fault, NicState, Shared, StateSnapshot, reset, set_nic, snapshot};

/// The `/sim/...` routes, for the simulator's router to merge with the cloud's.
pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/sim/state", get(admin_state))
        .route("/sim/calls", get(admin_calls))
        .route("/sim/faults", post(admin_add_fault).delete(admin_clear_faults))
        .route("/sim/missing-nics/{nic_id}", put(admin_set_missing).delete(admin_unset_missing))
        .route("/sim/nics/{nic_id}", put(admin_set_nic).delete(admin_clear_nic))
        .route("/sim/ports/{port_id}", put(admin_set_port).delete(admin_remove_port))
        .route("/sim/ports/{port_id}/allowed-address-pairs", put(admin_set_pairs))
        .route("/sim/ports/{port_id}/after-next-read", put(admin_after_next_read).delete(admin_clear_after_next_read))
        .route("/sim/config", put(admin_config))
        .route("/sim/credentials", post(admin_add_credential))
        .route("/sim/reset", post(admin_reset))
}

async fn admin_state(State(shared): State<Arc<Shared>>) -> axum::Json<StateSnapshot> {
    axum::Json(snapshot(&shared))
}

async fn admin_calls(State(shared): State<Arc<Shared>>) -> axum::Json<Vec<CallRecord>> {
    axum::Json(shared.lock().calls.clone())
}

async fn admin_add_fault(State(shared): State<Arc<Shared>>, axum::Json(fault): axum::Json<Fault>) -> StatusCode {
    shared.lock().faults.push(fault);
    StatusCode::CREATED
}

async fn admin_clear_faults(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.lock().faults.clear();
    StatusCode::NO_CONTENT
}

async fn admin_set_missing(State(shared): State<Arc<Shared>>, Path(nic): Path<String>) -> StatusCode {
    shared.lock().missing.insert(nic);
    StatusCode::NO_CONTENT
}

async fn admin_unset_missing(State(shared): State<Arc<Shared>>, Path(nic): Path<String>) -> StatusCode {
    shared.lock().missing.remove(&nic);
    StatusCode::NO_CONTENT
}

async fn admin_set_nic(
    State(shared): State<Arc<Shared>>,
    Path(nic): Path<String>,
    axum::Json(state): axum::Json<NicState>,
) -> StatusCode {
    set_nic(&mut shared.lock(), &nic, Some(state));
    StatusCode::NO_CONTENT
}

async fn admin_set_port(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    axum::Json(mut port): axum::Json<SimPort>,
) -> Response {
    if port.id.is_empty() {
        port.id.clone_from(&id);
    }
    let result = if port.id == id {
        shared.lock().ports.set(port)
    } else {
        Err(PortError::IdMismatch { path: id, body: port.id })
    };
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn admin_remove_port(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> StatusCode {
    shared.lock().ports.remove(&id);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct PairsUpdate {
    allowed_address_pairs: Vec<SimAddressPair>,
}

async fn admin_set_pairs(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    axum::Json(update): axum::Json<PairsUpdate>,
) -> Response {
    if shared.lock().ports.set_pairs(&id, update.allowed_address_pairs) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, format!("no port {id}")).into_response()
    }
}

async fn admin_after_next_read(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    axum::Json(change): axum::Json<PairsChange>,
) -> Response {
    match shared.lock().ports.after_next_read(&id, change) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e @ PortError::NotFound(_)) => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn admin_clear_after_next_read(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> StatusCode {
    shared.lock().ports.clear_after_next_read(&id);
    StatusCode::NO_CONTENT
}

async fn admin_clear_nic(State(shared): State<Arc<Shared>>, Path(nic): Path<String>) -> StatusCode {
    shared.lock().nics.remove(&nic);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct ConfigUpdate {
    latency_ms: Option<u64>,
    #[serde(default, with = "double_option")]
    qps: Option<Option<f64>>,
}

/// Distinguishes an absent field (leave as is) from `null` (turn off).
mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
        Ok(Some(Option::deserialize(d)?))
    }
}

async fn admin_config(State(shared): State<Arc<Shared>>, axum::Json(update): axum::Json<ConfigUpdate>) -> Response {
    let new_limiter = match update.qps.map(limiter) {
        Some(Err(e)) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        Some(Ok(l)) => Some(l),
        None => None,
    };
    let mut inner = shared.lock();
    if let Some(ms) = update.latency_ms {
        inner.latency = Duration::from_millis(ms);
    }
    if let Some(l) = new_limiter {
        inner.limiter = l;
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_add_credential(
    State(shared): State<Arc<Shared>>,
    axum::Json(credential): axum::Json<SimCredential>,
) -> StatusCode {
    shared.lock().credentials.push(credential);
    StatusCode::CREATED
}

async fn admin_reset(State(shared): State<Arc<Shared>>) -> StatusCode {
    reset(&shared);
    StatusCode::NO_CONTENT
}
