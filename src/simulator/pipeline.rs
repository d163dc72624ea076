//! The request pipeline every cloud call goes through, in the order the real gateway and services
//! act: the route names the call ([`Resource`]); the gateway throttles it and checks its
//! signature (with lockout); the service (ECS in [`super::ecs`], VPC in [`super::vpc`]) checks
//! it, meets its scripted fault and makes its effect, now or put off ([`schedule_late`]); the
//! call is recorded; the answer waits out the latency and carries an `X-Request-Id`.
//!
//! Cloud API (every call signed, `X-Project-Id` checked, throttled, delayed and open to scripted
//! faults alike):
//! - `PUT /v1/{project_id}/cloudservers/nics/{nic_id}` — ECS bind/unbind, exactly as documented
//! - `GET /v1/{project_id}/ports/{port_id}` — VPC: one port (404 `VPC.2502` when there is none)
//! - `GET /v1/{project_id}/ports` — VPC: a page of ports; filters `id`, `device_id`,
//!   `device_owner`, `network_id`, `fixed_ips=ip_address=X`; `limit` (default and most 2000) and
//!   `marker` page in port ID order. See [`super::ports`] for what is modelled.
//! - `PUT /v1/{project_id}/ports/{port_id}` — VPC: `{"port": {"allowed_address_pairs": [...]}}`
//!   replaces the port's pairs whole and answers `{"port": {...}}` (400 `VPC.2500` for a body
//!   it refuses, 404 `VPC.2502` when there is no port)
//!
//! Anything else (any method) answers as the API gateway does: 404 `APIGW.0101`. Every answer,
//! success or error, carries a unique `X-Request-Id`, kept with the call in `/sim/calls`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::json;

use super::call::{Late, Outcome, Resource, SimRequest, Step};
use super::state::{CallRecord, Inner, LateApply, LateState, MAX_CALL_LOG, MAX_LATENCY, MAX_PENDING_LATE, Shared};
use super::verify::{self, AuthFailure, KnownKey, SignedRequest, Verified};
use super::{ecs, vpc};

/// The cloud's routes: every one goes through [`serve`].
pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/{project_id}/cloudservers/nics/{nic_id}", put(nic_call))
        .route("/v1/{project_id}/ports", get(list_ports_call))
        .route("/v1/{project_id}/ports/{port_id}", get(port_call).put(port_call))
}

/// The next call's sequence number and request id. Request ids look like Huawei's (32 hex
/// characters) and are unique per request: 96 random bits, then the sequence number's low 32.
fn request_id(shared: &Shared) -> (u64, String) {
    let seq = shared.seq.fetch_add(1, Ordering::SeqCst) + 1;
    let random: u128 = rand::random();
    (seq, format!("{:024x}{:08x}", random >> 32, seq & 0xffff_ffff))
}

/// Like Huawei's gateway, every answer carries an `X-Request-Id`. Cloud calls set (and record)
/// their own; any other answer (the admin API, a method a route does not take) gets a random
/// one here, without using up a call sequence number.
pub(super) async fn ensure_request_id(mut resp: Response) -> Response {
    if !resp.headers().contains_key("x-request-id") {
        resp = with_request_id(resp, &format!("{:032x}", rand::random::<u128>()));
    }
    resp
}

/// Error bodies in the shape the real service uses for each family of codes.
fn error_response(status: u16, code: &str, message: &str, request_id: &str, retry_after: Option<u64>) -> Response {
    let body = if code.starts_with("APIGW.") {
        json!({"error_code": code, "error_msg": message, "request_id": request_id})
    } else if code.starts_with("Ecs.") {
        json!({"error": {"code": code, "message": message}})
    } else if code.starts_with("VPC.") {
        json!({"code": code, "message": message})
    } else {
        json!({"error_code": code, "error_msg": message})
    };
    let mut resp =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body)).into_response();
    if let Some(secs) = retry_after
        && let Ok(v) = secs.to_string().parse()
    {
        resp.headers_mut().insert("retry-after", v);
    }
    resp
}

fn with_request_id(mut resp: Response, request_id: &str) -> Response {
    if let Ok(v) = request_id.parse() {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs a cloud call through the checks in the order the real gateway and the service make
/// them, then does it (or plays a scripted fault). Records who called and what they asked for.
fn decide(shared: &Shared, inner: &mut Inner, req: &SimRequest<'_>, record: &mut CallRecord) -> Outcome {
    if let Err(refused) = throttle(inner).and_then(|()| authenticate(shared, inner, req, record)) {
        return refused;
    }
    match req.resource {
        Resource::Nic(nic_id) => ecs::decide_nic(inner, req, nic_id, record),
        Resource::Port(port_id) => vpc::get_port(inner, req, port_id, record),
        Resource::PortUpdate(port_id) => vpc::update_port(inner, req, port_id, record),
        Resource::Ports => vpc::list_ports(inner, req, record),
    }
}

/// The gateway's rate limit comes first: a throttled call is not even authenticated.
fn throttle(inner: &Inner) -> Step<()> {
    if let Some(l) = &inner.limiter
        && l.check().is_err()
    {
        return Err(Outcome::error(
            429,
            "APIGW.0308",
            "The throttling threshold has been reached: policy ip over ratelimit",
        ));
    }
    Ok(())
}

/// Signature check with lockout: a locked key is refused before its signature is looked at, and
/// `lockout_after` consecutive bad signatures lock it. Sets `record.access_key` to the key the
/// call proved or, failing that, claimed.
fn authenticate(shared: &Shared, inner: &mut Inner, req: &SimRequest<'_>, record: &mut CallRecord) -> Step<()> {
    let now = jiff::Timestamp::now();
    let claimed = req
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| verify::parse_authorization(v).ok())
        .map(|a| a.access_key);
    if let Some(ak) = &claimed
        && inner.locked_until.get(ak).is_some_and(|until| *until > now)
    {
        record.access_key = Some(ak.clone());
        return Err(Outcome::error(
            401,
            "APIGW.0301",
            "Incorrect IAM authentication information: the access key is locked after repeated signature failures",
        ));
    }
    match verify_signature(shared, inner, req, now) {
        Ok(v) => {
            inner.failures.remove(&v.access_key);
            record.access_key = Some(v.access_key);
            Ok(())
        }
        Err(failure) => {
            record.access_key = failure.access_key().map(str::to_string).or(claimed);
            if let AuthFailure::BadSignature(ak) = &failure {
                count_signature_failure(shared, inner, ak, now);
            }
            let code = if matches!(failure, AuthFailure::BadToken(_)) { "Common.0013" } else { "APIGW.0301" };
            Err(Outcome::error(401, code, failure.message()))
        }
    }
}

fn verify_signature(
    shared: &Shared,
    inner: &Inner,
    req: &SimRequest<'_>,
    now: jiff::Timestamp,
) -> Result<Verified, AuthFailure> {
    let signed = SignedRequest {
        method: req.method.as_str(),
        raw_path: req.uri.path(),
        raw_query: req.uri.query(),
        headers: req.headers,
        body: req.body,
    };
    verify::verify(&signed, now, shared.max_skew, |ak| {
        inner
            .credentials
            .iter()
            .find(|c| c.access_key == ak)
            .map(|c| KnownKey { secret_key: &c.secret_key, security_token: c.security_token.as_deref() })
    })
}

/// Counts a bad signature against `ak`; the `lockout_after`-th in a row locks it for `lockout_for`.
fn count_signature_failure(shared: &Shared, inner: &mut Inner, ak: &str, now: jiff::Timestamp) {
    let n = inner.failures.entry(ak.to_string()).or_default();
    *n += 1;
    if *n >= shared.lockout_after {
        inner.failures.remove(ak);
        let until =
            now.checked_add(jiff::SignedDuration::try_from(shared.lockout_for).unwrap_or_default()).unwrap_or(now);
        inner.locked_until.insert(ak.to_string(), until);
    }
}

async fn nic_call(
    State(shared): State<Arc<Shared>>,
    Path((project_id, nic_id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = Received { method, uri, headers, body };
    serve(&shared, &project_id, Resource::Nic(&nic_id), &received).await
}

/// A port read (`GET`) or update (`PUT`): the router sends no other method here.
async fn port_call(
    State(shared): State<Arc<Shared>>,
    Path((project_id, port_id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resource = if method == Method::PUT { Resource::PortUpdate(&port_id) } else { Resource::Port(&port_id) };
    let received = Received { method, uri, headers, body };
    serve(&shared, &project_id, resource, &received).await
}

async fn list_ports_call(
    State(shared): State<Arc<Shared>>,
    Path(project_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = Received { method, uri, headers, body };
    serve(&shared, &project_id, Resource::Ports, &received).await
}

/// A cloud call's request, as the handler's extractors gave it.
struct Received {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

/// Every cloud call: decided and recorded under the lock, then answered after the latency.
async fn serve(shared: &Arc<Shared>, project_id: &str, resource: Resource<'_>, received: &Received) -> Response {
    let _in_flight = InFlight::enter(shared);
    let started = tokio::time::Instant::now();
    let (seq, rid) = request_id(shared);
    let mut record = CallRecord {
        seq,
        received_at: Some(jiff::Timestamp::now()),
        method: received.method.to_string(),
        path: received.uri.path().to_string(),
        query: received.uri.query().map(str::to_string),
        project_id: Some(project_id.to_string()),
        nic_id: None,
        operation: None,
        port_id: None,
        port_operation: None,
        after_read_fired: vec![],
        access_key: None,
        body: String::from_utf8_lossy(&received.body).into_owned(),
        status: 0,
        code: None,
        request_id: rid.clone(),
        duration_us: 0,
        late: None,
    };
    match resource {
        Resource::Nic(nic) => record.nic_id = Some(nic.to_string()),
        Resource::Port(port) | Resource::PortUpdate(port) => record.port_id = Some(port.to_string()),
        Resource::Ports => {}
    }
    let (outcome, latency) = {
        let mut inner = shared.lock();
        let req = SimRequest {
            method: &received.method,
            uri: &received.uri,
            headers: &received.headers,
            body: &received.body,
            project_id,
            resource,
        };
        let mut outcome = decide(shared, &mut inner, &req, &mut record);
        record.status = outcome.status;
        record.code = outcome.code.clone();
        if let Some(late) = outcome.late.take() {
            record.late = Some(schedule_late(shared, &mut inner, seq, started, *late));
        }
        // Bounded: a long-running simulator (make run) must not grow for ever.
        if inner.calls.len() >= MAX_CALL_LOG {
            inner.calls.drain(..MAX_CALL_LOG / 10);
        }
        inner.calls.push(record);
        (outcome, inner.latency)
    };
    // Latencies come from the admin API: bounded, so no sum can overflow the clock.
    let wait = latency.saturating_add(outcome.hold).min(MAX_LATENCY);
    if !wait.is_zero() {
        tokio::time::sleep_until(started + wait).await;
    }
    let resp = match outcome.code {
        None => (StatusCode::OK, axum::Json(outcome.body)).into_response(),
        Some(code) => error_response(outcome.status, &code, &outcome.message, &rid, outcome.retry_after),
    };
    let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    if let Some(call) = shared.lock().calls.iter_mut().rev().find(|c| c.seq == seq) {
        call.duration_us = took;
    }
    with_request_id(resp, &rid)
}

/// Puts a call's effect off until `late.after` past `started`, in a task of its own: it lands
/// whether or not the client is still waiting. Called under the lock, with the call's record
/// not yet in the log; returns what the record says of it.
fn schedule_late(
    shared: &Arc<Shared>,
    inner: &mut Inner,
    seq: u64,
    started: tokio::time::Instant,
    late: Late,
) -> LateApply {
    let due_after_ms = u64::try_from(late.after.as_millis()).unwrap_or(u64::MAX);
    if shared.late_pending.load(Ordering::SeqCst) >= MAX_PENDING_LATE {
        let state = match late.effect.make(inner) {
            LateState::Applied => LateState::AppliedOnArrival,
            other => other,
        };
        return LateApply { due_after_ms, state, done_after_us: Some(0) };
    }
    shared.late_pending.fetch_add(1, Ordering::SeqCst);
    let epoch = shared.epoch.load(Ordering::SeqCst);
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(started + late.after).await;
        let mut inner = shared.lock();
        // A reset since: the state this effect was meant for is gone.
        if shared.epoch.load(Ordering::SeqCst) == epoch {
            let state = late.effect.make(&mut inner);
            let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            if let Some(call) = inner.calls.iter_mut().rev().find(|c| c.seq == seq)
                && let Some(l) = call.late.as_mut()
            {
                l.state = state;
                l.done_after_us = Some(took);
            }
        }
        drop(inner);
        shared.late_pending.fetch_sub(1, Ordering::SeqCst);
    });
    LateApply { due_after_ms, state: LateState::Pending, done_after_us: None }
}

pub(super) async fn unknown_api(State(shared): State<Arc<Shared>>) -> Response {
    let (_, rid) = request_id(&shared);
    with_request_id(
        error_response(
            404,
            "APIGW.0101",
            "The API does not exist or has not been published in the environment",
            &rid,
            None,
        ),
        &rid,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ecs::vpc::{AddressPair, VpcApi};
    use crate::ecs::{
        BindRequest, CloudTarget, Credentials, EcsApi, EcsClient, EcsClientConfig, Endpoint, RetryPolicy, UnbindRequest,
    };
    use crate::simulator::{Fault, PortOperation, SimAddressPair, SimOperation, SimPort, Simulator, SimulatorConfig};

    const AK: &str = "UNITACCESSKEY0000001";
    const SK: &str = "unit-secret-key";
    const PROJECT: &str = "0123456789abcdef0123456789abcdef";
    const NIC: &str = "d32019d3-bc6e-4319-9c1d-6722fc136a23";

    async fn sim() -> Simulator {
        Simulator::start(SimulatorConfig::new("127.0.0.1:0".parse().unwrap(), AK, SK)).await.unwrap()
    }

    /// One attempt per call: what the simulator did with that one request is what is tested.
    fn client(sim: &Simulator, timeout: Duration) -> EcsClient {
        EcsClient::new(EcsClientConfig {
            endpoint: Endpoint::parse_override(&sim.url()).unwrap(),
            vpc_endpoint: Endpoint::parse_override_for("--vpc-endpoint", &sim.url()).unwrap(),
            request_timeout: timeout,
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

    fn bind_req() -> BindRequest {
        BindRequest {
            nic_id: NIC.into(),
            subnet_id: "subnet-1".into(),
            ip_address: "192.168.0.7".into(),
            reverse_binding: false,
        }
    }

    fn late_fault(status: u16, after_ms: u64) -> Fault {
        let mut f = Fault::error(status, "APIGW.0204", 1);
        f.apply_after_ms = Some(after_ms);
        f
    }

    fn last_late(sim: &Simulator) -> Option<LateApply> {
        sim.calls().last().and_then(|c| c.late.clone())
    }

    async fn landed(sim: &Simulator) -> LateApply {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while sim.late_pending() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the late effect never landed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last_late(sim).expect("a late record")
    }

    fn pair(ip: &str) -> SimAddressPair {
        SimAddressPair { ip_address: ip.into(), mac_address: None }
    }

    fn pairs_of(sim: &Simulator, port: &str) -> Vec<String> {
        sim.port(port).unwrap().allowed_address_pairs.into_iter().map(|p| p.ip_address).collect()
    }

    #[tokio::test]
    async fn a_504_with_apply_after_binds_the_nic_late() {
        let sim = sim().await;
        sim.add_fault(late_fault(504, 300).on(SimOperation::Bind));
        let err = client(&sim, Duration::from_secs(5)).bind(&target(), &bind_req()).await.unwrap_err();
        assert_eq!(err.status(), Some(504));
        assert!(sim.state().nics.is_empty(), "not on arrival");
        assert_eq!(last_late(&sim).map(|l| (l.due_after_ms, l.state)), Some((300, LateState::Pending)));
        assert_eq!(sim.late_pending(), 1);
        let late = landed(&sim).await;
        assert_eq!(late.state, LateState::Applied);
        assert!(late.done_after_us.is_some_and(|us| us >= 300_000), "{late:?}");
        assert_eq!(sim.state().nics[NIC].ip_address, "192.168.0.7", "exactly the bind the call asked for");
        let arrived = sim.calls()[0].received_at.expect("an arrival time");
        assert!(arrived <= jiff::Timestamp::now() - jiff::SignedDuration::from_millis(300), "{arrived}");
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn an_unbind_the_client_timed_out_on_lands_later() {
        let sim = sim().await;
        let c = client(&sim, Duration::from_millis(200));
        c.bind(&target(), &bind_req()).await.unwrap();
        // A success held past the client's timeout; the unbind lands after the client gave up.
        let mut slow = late_fault(200, 600).on(SimOperation::Unbind);
        slow.code = None;
        slow.latency_ms = Some(2_000);
        sim.add_fault(slow);
        let err = c.unbind(&target(), &UnbindRequest { nic_id: NIC.into(), reverse_binding: false }).await.unwrap_err();
        assert!(err.may_have_applied(), "{err}");
        assert!(sim.state().nics.contains_key(NIC), "still bound when the client gave up");
        assert_eq!(landed(&sim).await.state, LateState::Applied);
        assert!(sim.state().nics.is_empty());
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn a_late_port_update_replaces_the_pairs_with_the_list_it_carried() {
        let sim = sim().await;
        sim.set_port(SimPort::vip("vip-1", PROJECT, "net-1", "sub-1", "192.168.0.7")).unwrap();
        assert!(sim.set_allowed_address_pairs("vip-1", vec![pair("10.0.0.1")]));
        sim.add_fault(late_fault(504, 300).on(PortOperation::UpdatePort).for_nic("vip-1"));
        let c = client(&sim, Duration::from_secs(5));
        let carried = [AddressPair { ip_address: "10.0.0.2".into(), mac_address: None }];
        let err = c.update_pairs(&target(), "vip-1", &carried).await.unwrap_err();
        assert_eq!(err.status(), Some(504));
        assert_eq!(pairs_of(&sim, "vip-1"), ["10.0.0.1"], "not on arrival");
        // Another writer meanwhile: the late write is a whole replacement, and wins.
        assert!(sim.set_allowed_address_pairs("vip-1", vec![pair("10.0.0.1"), pair("10.0.0.3")]));
        assert_eq!(landed(&sim).await.state, LateState::Applied);
        assert_eq!(pairs_of(&sim, "vip-1"), ["10.0.0.2"]);

        // A 2xx answers the port as written, before the list is.
        let mut ok = late_fault(200, 300).on(PortOperation::UpdatePort);
        ok.code = None;
        sim.add_fault(ok);
        let shown = c.update_pairs(&target(), "vip-1", &[]).await.unwrap();
        assert!(shown.allowed_address_pairs.is_empty());
        assert_eq!(pairs_of(&sim, "vip-1"), ["10.0.0.2"], "not yet");
        landed(&sim).await;
        assert!(pairs_of(&sim, "vip-1").is_empty());
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn late_effects_need_a_target_and_a_reset_drops_them() {
        let sim = sim().await;
        let c = client(&sim, Duration::from_secs(5));
        // A call that would have changed nothing changes nothing later either.
        sim.add_fault(late_fault(504, 100).on(PortOperation::UpdatePort));
        c.update_pairs(&target(), "no-such-port", &[]).await.unwrap_err();
        assert_eq!(last_late(&sim), None);
        assert_eq!(sim.late_pending(), 0);
        // The port goes before its late write is due.
        sim.set_port(SimPort::vip("vip-1", PROJECT, "net-1", "sub-1", "192.168.0.7")).unwrap();
        sim.add_fault(late_fault(504, 200).on(PortOperation::UpdatePort));
        c.update_pairs(&target(), "vip-1", &[]).await.unwrap_err();
        assert!(sim.remove_port("vip-1"));
        assert_eq!(landed(&sim).await.state, LateState::TargetGone);
        // A reset forgets what was pending.
        sim.add_fault(late_fault(504, 200).on(SimOperation::Bind));
        c.bind(&target(), &bind_req()).await.unwrap_err();
        sim.reset();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(sim.late_pending(), 0);
        assert!(sim.state().nics.is_empty());
        sim.shutdown().await;
    }
}
