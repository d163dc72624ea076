//! The admin API: what tests and demos use to set the cloud up, script it and read what it saw.
//! JSON, no authentication (bind the simulator to loopback); not throttled, faulted or recorded:
//! these routes read and change the state directly, behind the operator's back.
//!
//! - `GET /sim/state` — NIC → VIP state, ports, servers, armed after-read changes, missing NICs,
//!   locked access keys, in-flight peak
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
//! - `POST /sim/servers` — add a server ([`NewServer`]: `{"id", "project_id", "nics": [{"port_id",
//!   "network_id", "subnet_id"?, "ip_address", "mac_address"?}]}`): each NIC a port whose
//!   `device_id` is the server; 201 with the server, 400 for a body out of bounds, 409 for a
//!   server or port ID taken. `GET /sim/servers` lists them.
//! - `DELETE /sim/servers/{server_id}` — the server goes, and its NICs' ports with it: the NICs
//!   are missing from then on (port reads 404 `VPC.2502`). 404 without such a server.
//! - `DELETE /sim/servers/{server_id}/nics/{port_id}` — the same for one NIC of the server.
//! - `PUT /sim/config` — `{"latency_ms": N, "qps": N|null, "max_pairs": N}`, any of them: 400
//!   and no change for a value out of bounds (`max_pairs` 1 to
//!   [`MAX_PAIRS_CEILING`](super::MAX_PAIRS_CEILING)), an unknown field or a malformed body
//! - `POST /sim/credentials` — accept another AK/SK (optionally temporary, with a token)
//! - `POST /sim/reset` — forget state, ports, servers, calls, faults and lockouts

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::Deserialize;

use super::config::{SimCredential, limiter};
use super::ports::{PairsChange, PortError, SimAddressPair, SimPort};
use super::servers::{NewServer, ServerError, SimServer};
use super::state::{
    CallRecord, Fault, NicState, Shared, StateSnapshot, add_server, remove_server, remove_server_nic, reset, set_nic,
    snapshot,
};

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
        .route("/sim/servers", post(admin_add_server).get(admin_list_servers))
        .route("/sim/servers/{server_id}", delete(admin_remove_server))
        .route("/sim/servers/{server_id}/nics/{port_id}", delete(admin_remove_server_nic))
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

/// The longest refusal text answered: serde's messages quote what they refuse, which may be as
/// long as the body.
const MAX_REFUSAL_LEN: usize = 512;

fn refusal(status: StatusCode, text: &str) -> Response {
    (status, text.chars().take(MAX_REFUSAL_LEN).collect::<String>()).into_response()
}

fn server_refusal(e: &ServerError) -> Response {
    let status = match e {
        ServerError::NotFound(_) | ServerError::NoSuchNic { .. } => StatusCode::NOT_FOUND,
        ServerError::Exists(_) | ServerError::Ports(_) => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    refusal(status, &e.to_string())
}

/// Any body it cannot take, malformed JSON or a field of the wrong kind alike, answers 400 with
/// why (axum would answer 422 for the latter).
async fn admin_add_server(
    State(shared): State<Arc<Shared>>,
    body: Result<axum::Json<NewServer>, JsonRejection>,
) -> Response {
    let server = match body {
        Ok(axum::Json(server)) => server,
        Err(rejection) => return refusal(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    match add_server(&mut shared.lock(), server) {
        Ok(server) => (StatusCode::CREATED, axum::Json(server)).into_response(),
        Err(e) => server_refusal(&e),
    }
}

async fn admin_list_servers(State(shared): State<Arc<Shared>>) -> axum::Json<Vec<SimServer>> {
    axum::Json(shared.lock().servers.list())
}

async fn admin_remove_server(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match remove_server(&mut shared.lock(), &id) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => server_refusal(&e),
    }
}

async fn admin_remove_server_nic(
    State(shared): State<Arc<Shared>>,
    Path((server, port)): Path<(String, String)>,
) -> Response {
    match remove_server_nic(&mut shared.lock(), &server, &port) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => server_refusal(&e),
    }
}

/// Unknown fields are refused: a misspelt setting must not answer 204 and change nothing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigUpdate {
    latency_ms: Option<u64>,
    #[serde(default, with = "double_option")]
    qps: Option<Option<f64>>,
    max_pairs: Option<usize>,
}

/// Distinguishes an absent field (leave as is) from `null` (turn off).
mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
        Ok(Some(Option::deserialize(d)?))
    }
}

/// Every value is checked before any is set, so a refused update changes nothing. Any body it
/// cannot take (a negative `max_pairs` included) answers 400 with why, as `POST /sim/servers`.
async fn admin_config(
    State(shared): State<Arc<Shared>>,
    body: Result<axum::Json<ConfigUpdate>, JsonRejection>,
) -> Response {
    let update = match body {
        Ok(axum::Json(update)) => update,
        Err(rejection) => return refusal(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    let new_limiter = match update.qps.map(limiter) {
        Some(Err(e)) => return refusal(StatusCode::BAD_REQUEST, &e.to_string()),
        Some(Ok(l)) => Some(l),
        None => None,
    };
    let mut inner = shared.lock();
    // The one setting that may still be refused goes first, leaving the others as they were.
    if let Some(n) = update.max_pairs
        && let Err(e) = inner.ports.set_max_pairs(n)
    {
        return refusal(StatusCode::BAD_REQUEST, &e.to_string());
    }
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::ecs::vpc::{AddressPair, PortFilter, VpcApi};
    use crate::ecs::{
        BindRequest, CloudTarget, Credentials, EcsApi, EcsClient, EcsClientConfig, Endpoint, ErrorClass, RetryPolicy,
    };
    use crate::simulator::{MAX_NICS_PER_SERVER, MAX_PAIRS_CEILING, SimNic, SimPort, Simulator, SimulatorConfig};

    const AK: &str = "UNITACCESSKEY0000002";
    const SK: &str = "unit-secret-key";
    const PROJECT: &str = "0123456789abcdef0123456789abcdef";
    const NET: &str = "net-1";

    async fn sim() -> Simulator {
        Simulator::start(SimulatorConfig::new("127.0.0.1:0".parse().unwrap(), AK, SK)).await.unwrap()
    }

    /// The operator's own client, one attempt per call, on both services.
    fn client(sim: &Simulator) -> EcsClient {
        EcsClient::new(EcsClientConfig {
            endpoint: Endpoint::parse_override(&sim.url()).unwrap(),
            vpc_endpoint: Endpoint::parse_override_for("--vpc-endpoint", &sim.url()).unwrap(),
            retry: RetryPolicy::none(),
            qps: 1000.0,
            burst: 100,
            ..Default::default()
        })
        .unwrap()
    }

    fn target() -> CloudTarget {
        CloudTarget {
            region: "cn-north-4".into(),
            project_id: PROJECT.into(),
            credentials: Credentials::new(AK, SK, None).unwrap(),
        }
    }

    fn by_server(server: &str, network: &str) -> PortFilter {
        PortFilter { device_id: Some(server.into()), network_id: Some(network.into()), ..PortFilter::default() }
    }

    async fn post(sim: &Simulator, body: Value) -> (u16, String) {
        let r = reqwest::Client::new().post(format!("{}/sim/servers", sim.url())).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn delete(sim: &Simulator, path: &str) -> (u16, String) {
        let r = reqwest::Client::new().delete(format!("{}{path}", sim.url())).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    fn node(id: &str, nics: Value) -> Value {
        json!({"id": id, "project_id": PROJECT, "nics": nics})
    }

    #[tokio::test]
    async fn a_server_added_is_listed_by_device_and_network_and_removed_nics_are_gone() {
        let sim = sim().await;
        let body = node(
            "server-a",
            json!([
                {"port_id": "port-a1", "network_id": NET, "subnet_id": "sub-1", "ip_address": "192.168.0.21"},
                {"port_id": "port-a2", "network_id": "net-2", "ip_address": "192.168.1.21",
                 "mac_address": "fa:16:3e:aa:bb:cc"}
            ]),
        );
        let (status, text) = post(&sim, body).await;
        assert_eq!(status, 201, "{text}");
        let created: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(created, json!({"id": "server-a", "project_id": PROJECT, "nics": ["port-a1", "port-a2"]}));
        assert_eq!(
            post(
                &sim,
                node("server-b", json!([{"port_id": "port-b1", "network_id": NET, "ip_address": "192.168.0.22"}]))
            )
            .await
            .0,
            201
        );
        // Listed by the admin API, and in the snapshot.
        let listed: Value = reqwest::get(format!("{}/sim/servers", sim.url())).await.unwrap().json().await.unwrap();
        assert_eq!(listed.as_array().map(|a| a.len()), Some(2), "{listed}");
        assert_eq!(listed[0]["id"], "server-a");
        assert_eq!(sim.state().servers["server-b"].nics, ["port-b1"]);

        // The operator's listing: by server and network, through its signed client.
        let (c, t) = (client(&sim), target());
        let found = c.list_ports(&t, &by_server("server-a", NET)).await.unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        let nic = &found[0];
        assert_eq!((nic.id.as_str(), nic.device_id.as_str(), nic.network_id.as_str()), ("port-a1", "server-a", NET));
        assert_eq!(nic.ip(), Some("192.168.0.21"));
        assert_eq!(nic.fixed_ips[0].subnet_id, "sub-1");
        assert!(nic.device_owner.starts_with("compute:"), "{nic:?}");
        assert!(nic.mac_address.starts_with("fa:16:3e:"), "a MAC is made up: {nic:?}");
        let other = c.list_ports(&t, &by_server("server-a", "net-2")).await.unwrap();
        assert_eq!(
            other.iter().map(|p| (p.id.as_str(), p.mac_address.as_str())).collect::<Vec<_>>(),
            [("port-a2", "fa:16:3e:aa:bb:cc")]
        );
        let b = c.list_ports(&t, &by_server("server-b", NET)).await.unwrap();
        assert_eq!(b.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["port-b1"]);

        // One NIC off: that port is gone (404 VPC.2502, class Gone), the other NIC stays.
        assert_eq!(delete(&sim, "/sim/servers/server-a/nics/port-a2").await.0, 204);
        let gone = c.get_port(&t, "port-a2").await.unwrap_err();
        assert_eq!((gone.status(), gone.code(), gone.class()), (Some(404), Some("VPC.2502"), ErrorClass::Gone));
        assert!(c.list_ports(&t, &by_server("server-a", "net-2")).await.unwrap().is_empty());
        assert_eq!(c.get_port(&t, "port-a1").await.unwrap().device_id, "server-a");
        assert_eq!(delete(&sim, "/sim/servers/server-a/nics/port-a2").await.0, 404, "removed already");

        // The whole server: its ports answer VPC.2502 and are listed no more; the other server
        // is untouched.
        assert_eq!(delete(&sim, "/sim/servers/server-a").await.0, 204);
        let gone = c.get_port(&t, "port-a1").await.unwrap_err();
        assert_eq!((gone.status(), gone.code()), (Some(404), Some("VPC.2502")));
        assert!(c.list_ports(&t, &by_server("server-a", NET)).await.unwrap().is_empty());
        assert_eq!(c.list_ports(&t, &by_server("server-b", NET)).await.unwrap().len(), 1);
        let (status, text) = delete(&sim, "/sim/servers/server-a").await;
        assert_eq!((status, text.as_str()), (404, "no server server-a"));
        assert!(sim.state().missing_nics.contains("port-a1"));
        assert!(!sim.state().servers.contains_key("server-a"));
    }

    #[tokio::test]
    async fn a_servers_nic_takes_ecs_and_vpc_binds_and_a_removed_one_takes_neither() {
        let sim = sim().await;
        sim.set_port(SimPort::vip("vip-port", PROJECT, NET, "sub-1", "192.168.0.100")).unwrap();
        let nic =
            SimNic { mac_address: Some("fa:16:3e:00:00:21".into()), ..SimNic::new("port-n1", NET, "192.168.0.21") };
        sim.add_server(PROJECT, "node-1", &[nic]).unwrap();
        let (c, t) = (client(&sim), target());
        let bind = BindRequest {
            nic_id: "port-n1".into(),
            subnet_id: "sub-1".into(),
            ip_address: "192.168.0.100".into(),
            reverse_binding: true,
        };
        // ECS: the reverse binding puts the server NIC's own address and MAC on the VIP port.
        c.bind(&t, &bind).await.unwrap();
        assert_eq!(sim.state().nics["port-n1"].ip_address, "192.168.0.100");
        let vip = c.get_port(&t, "vip-port").await.unwrap();
        assert_eq!(
            vip.allowed_address_pairs,
            [AddressPair { ip_address: "192.168.0.21".into(), mac_address: Some("fa:16:3e:00:00:21".into()) }]
        );
        // VPC: the NIC's own port takes an update.
        let off = [AddressPair { ip_address: "1.1.1.1/0".into(), mac_address: None }];
        assert_eq!(c.update_pairs(&t, "port-n1", &off).await.unwrap().allowed_address_pairs, off);

        // Removed: the ECS binding is forgotten, and both APIs say the NIC is gone.
        sim.remove_server("node-1").unwrap();
        assert!(!sim.state().nics.contains_key("port-n1"));
        assert_eq!(c.bind(&t, &bind).await.unwrap_err().status(), Some(404));
        assert_eq!(c.update_pairs(&t, "port-n1", &off).await.unwrap_err().code(), Some("VPC.2502"));
        // The same NIC on a new server is present again.
        sim.add_server(PROJECT, "node-2", &[SimNic::new("port-n1", NET, "192.168.0.23")]).unwrap();
        let back = c.get_port(&t, "port-n1").await.unwrap();
        assert_eq!((back.device_id.as_str(), back.ip()), ("node-2", Some("192.168.0.23")));
        assert!(back.allowed_address_pairs.is_empty(), "a new NIC port");
        c.bind(&t, &bind).await.unwrap();
    }

    async fn put_config(sim: &Simulator, body: Value) -> (u16, String) {
        let r = reqwest::Client::new().put(format!("{}/sim/config", sim.url())).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// `n` distinct pairs.
    fn pairs(n: usize) -> Vec<AddressPair> {
        (0..n)
            .map(|i| AddressPair { ip_address: format!("10.1.{}.{}", i / 250, i % 250 + 1), mac_address: None })
            .collect()
    }

    /// Whether the VIP port takes an update of exactly `limit` pairs and refuses `limit + 1` with
    /// 400 `VPC.2500` naming the limit (and keeps the list it had).
    async fn holds_at_most(sim: &Simulator, limit: usize) {
        let (c, t) = (client(sim), target());
        let taken = c.update_pairs(&t, "vip-port", &pairs(limit)).await.unwrap();
        assert_eq!(taken.allowed_address_pairs.len(), limit);
        let err = c.update_pairs(&t, "vip-port", &pairs(limit + 1)).await.unwrap_err();
        assert_eq!((err.status(), err.code()), (Some(400), Some("VPC.2500")), "{err}");
        let why = format!("allowed_address_pairs holds at most {limit} pairs");
        assert!(err.to_string().contains(&why), "{err}");
        assert_eq!(sim.port("vip-port").unwrap().allowed_address_pairs.len(), limit);
    }

    #[tokio::test]
    async fn the_pairs_limit_is_set_through_the_admin_api_and_the_hook() {
        let sim = sim().await;
        sim.set_port(SimPort::vip("vip-port", PROJECT, NET, "sub-1", "192.168.0.100")).unwrap();
        holds_at_most(&sim, crate::simulator::DEFAULT_MAX_PAIRS).await;
        // Raised through the admin API (a VIP shared by 200+ NICs), then lowered through it.
        assert_eq!(put_config(&sim, json!({"max_pairs": 250})).await, (204, String::new()));
        holds_at_most(&sim, 250).await;
        assert_eq!(put_config(&sim, json!({"max_pairs": 3, "latency_ms": 0})).await.0, 204);
        holds_at_most(&sim, 3).await;
        // The same through the hook.
        sim.set_max_pairs(220).unwrap();
        holds_at_most(&sim, 220).await;
        sim.set_max_pairs(2).unwrap();
        holds_at_most(&sim, 2).await;
        // The ceiling itself is a limit the API can reach.
        sim.set_max_pairs(MAX_PAIRS_CEILING).unwrap();
        holds_at_most(&sim, MAX_PAIRS_CEILING).await;
        sim.set_max_pairs(2).unwrap();

        // Bad values: refused, and nothing in the update changes (the limit stays 2).
        let out_of_bounds = |n: u64| format!("max_pairs must be 1 to 10000, got {n}");
        for (body, why) in [
            (json!({"max_pairs": 0}), out_of_bounds(0)),
            (json!({"max_pairs": 10_001}), out_of_bounds(10_001)),
            (json!({"max_pairs": u64::MAX}), out_of_bounds(u64::MAX)),
            (json!({"max_pairs": 0, "latency_ms": 60_000}), out_of_bounds(0)),
            (json!({"max_pairs": -1}), "max_pairs: invalid value".into()),
            (json!({"max_pairs": 2.5}), "max_pairs: invalid type".into()),
            (json!({"max_pairs": "300"}), "max_pairs: invalid type".into()),
            (json!({"max_pair": 300}), "unknown field `max_pair`".into()),
        ] {
            let (status, text) = put_config(&sim, body.clone()).await;
            assert_eq!(status, 400, "{body}: {text}");
            assert!(text.contains(&why), "{body}: {text}");
        }
        for bad in [0, MAX_PAIRS_CEILING + 1, usize::MAX] {
            assert_eq!(
                sim.set_max_pairs(bad).map_err(|e| e.to_string()),
                Err(format!("max_pairs must be 1 to 10000, got {bad}"))
            );
        }
        holds_at_most(&sim, 2).await;
        let started = std::time::Instant::now();
        client(&sim).get_port(&target(), "vip-port").await.unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the refused latency was not set");

        // A reset keeps the setting, as it keeps latency and qps.
        sim.reset();
        sim.set_port(SimPort::vip("vip-port", PROJECT, NET, "sub-1", "192.168.0.100")).unwrap();
        holds_at_most(&sim, 2).await;

        // Out of bounds at start: refused before anything listens.
        for bad in [0, MAX_PAIRS_CEILING + 1] {
            let mut config = SimulatorConfig::new("127.0.0.1:0".parse().unwrap(), AK, SK);
            config.max_pairs = bad;
            let err = Simulator::start(config).await.err().map(|e| e.to_string());
            assert_eq!(err, Some(format!("max_pairs must be 1 to 10000, got {bad}")));
        }
    }

    #[tokio::test]
    async fn bad_servers_are_refused_with_400_and_change_nothing() {
        let sim = sim().await;
        let nic = |port: &str, ip: &str| json!({"port_id": port, "network_id": NET, "ip_address": ip});
        let too_many: Vec<Value> = (0..=MAX_NICS_PER_SERVER).map(|i| nic(&format!("p{i}"), "10.0.0.1")).collect();
        let huge_id = "x".repeat(1_000_000);
        for (body, why) in [
            (json!([]), "Failed to deserialize"),
            (json!({"id": "s", "nics": [nic("p", "10.0.0.1")]}), "project_id"),
            (node("s", json!([{"port_id": "p", "network_id": NET}])), "ip_address"),
            (
                node("s", json!([nic("p", "10.0.0.1")]))
                    .as_object()
                    .cloned()
                    .map(|mut o| {
                        o.insert("extra".into(), json!(1));
                        Value::Object(o)
                    })
                    .unwrap(),
                "unknown field",
            ),
            (node("s", json!([{"port_id": 1, "network_id": NET, "ip_address": "10.0.0.1"}])), "port_id"),
            (node("s", json!([])), "a server needs 1 to 16 NICs"),
            (node("s", Value::Array(too_many)), "a server needs 1 to 16 NICs"),
            (node("a/b", json!([nic("p", "10.0.0.1")])), r#"server id "a/b""#),
            (node(&huge_id, json!([nic("p", "10.0.0.1")])), "server id"),
            (node("s", json!([nic("p q", "10.0.0.1")])), "port_id"),
            (node("s", json!([nic("p", "10.0.0.300")])), r#"nics[0].ip_address "10.0.0.300" is not an IP address"#),
            (node("s", json!([nic("p", "10.0.0.1"), nic("p", "10.0.0.2")])), "port p is named twice"),
            (
                node("s", json!([{"port_id": "p", "network_id": NET, "ip_address": "10.0.0.1", "mac_address": "zz"}])),
                "mac_address",
            ),
        ] {
            let (status, text) = post(&sim, body).await;
            assert_eq!(status, 400, "{text:.200}");
            assert!(text.contains(why), "{why}: {text:.200}");
            assert!(text.len() <= 512, "bounded: {}", text.len());
        }
        let raw = reqwest::Client::new()
            .post(format!("{}/sim/servers", sim.url()))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status().as_u16(), 400);
        assert!(sim.servers().is_empty() && sim.state().ports.is_empty(), "nothing was added");

        // Taken IDs: 409, and still nothing half-added.
        sim.set_port(SimPort::vip("vip-port", PROJECT, NET, "sub-1", "192.168.0.100")).unwrap();
        assert_eq!(post(&sim, node("s", json!([nic("p1", "10.0.0.1")]))).await.0, 201);
        let (status, text) = post(&sim, node("s", json!([nic("p2", "10.0.0.2")]))).await;
        assert_eq!((status, text.as_str()), (409, "server s exists already"));
        let (status, text) = post(&sim, node("t", json!([nic("p3", "10.0.0.3"), nic("vip-port", "10.0.0.4")]))).await;
        assert_eq!((status, text.as_str()), (409, "port vip-port exists already"));
        assert!(sim.port("p3").is_none() && sim.servers().len() == 1);
        assert_eq!(sim.port("vip-port").map(|p| p.device_owner), Some("neutron:VIP_PORT".into()));
        assert_eq!(delete(&sim, "/sim/servers/nope/nics/p1").await.0, 404);
        assert_eq!(delete(&sim, "/sim/servers/s/nics/nope").await.0, 404);
    }
}
