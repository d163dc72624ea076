//! The real ECS and VPC client against the bundled simulator, over real HTTP on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::routing::{get, put};
use serde_json::{Value, json};
use vip_operator::ecs::client::{AttemptReport, CallObserver};
use vip_operator::ecs::vpc::{AddressPair, FixedIp, Port, PortFilter, VpcApi};
use vip_operator::ecs::{
    BindRequest, Clock, CloudTarget, Credentials, EcsApi, EcsClient, EcsClientConfig, Endpoint, ErrorClass, FenceError,
    MetadataCredentials, Operation, RetryPolicy, SystemClock, UnbindRequest,
};
use vip_operator::simulator::{
    Fault, PairsChange, PortOperation, SimAddressPair, SimCredential, SimOperation, SimPort, Simulator, SimulatorConfig,
};

const AK: &str = "TESTACCESSKEY0000001";
const SK: &str = "test-secret-key";
const PROJECT: &str = "0123456789abcdef0123456789abcdef";
const NIC: &str = "d32019d3-bc6e-4319-9c1d-6722fc136a23";

async fn simulator() -> Simulator {
    Simulator::start(SimulatorConfig::new("127.0.0.1:0".parse().unwrap(), AK, SK)).await.unwrap()
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_elapsed: Duration::from_secs(10),
    }
}

fn client_for(sim: &Simulator) -> EcsClient {
    client_with(sim, |_| {})
}

fn client_with(sim: &Simulator, tweak: impl FnOnce(&mut EcsClientConfig)) -> EcsClient {
    let mut config = EcsClientConfig {
        endpoint: Endpoint::parse_override(&sim.url()).unwrap(),
        retry: fast_retries(),
        qps: 1000.0,
        burst: 100,
        ..Default::default()
    };
    tweak(&mut config);
    EcsClient::new(config).unwrap()
}

fn target(sk: &str) -> CloudTarget {
    CloudTarget {
        region: "cn-north-4".into(),
        project_id: PROJECT.into(),
        credentials: Credentials::new(AK, sk, None).unwrap(),
    }
}

fn bind_req(nic: &str) -> BindRequest {
    BindRequest {
        nic_id: nic.into(),
        subnet_id: "8c9d4f38-1a2b-4c3d-9e8f-001122334455".into(),
        ip_address: "192.168.0.7".into(),
        reverse_binding: true,
    }
}

async fn admin_get(sim: &Simulator, path: &str) -> Value {
    reqwest::get(format!("{}{path}", sim.url())).await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn bind_then_unbind_changes_cloud_state() {
    let sim = simulator().await;
    let client = client_for(&sim);

    let port = client.bind(&target(SK), &bind_req(NIC)).await.unwrap().port_id;
    assert_eq!(port, NIC);
    let state = admin_get(&sim, "/sim/state").await;
    assert_eq!(
        state["nics"][NIC],
        json!({"project_id": PROJECT, "ip_address": "192.168.0.7", "subnet_id": "8c9d4f38-1a2b-4c3d-9e8f-001122334455", "reverse_binding": true})
    );

    let port = client
        .unbind(&target(SK), &UnbindRequest { nic_id: NIC.into(), reverse_binding: false })
        .await
        .unwrap()
        .port_id;
    assert_eq!(port, NIC);
    let state = admin_get(&sim, "/sim/state").await;
    assert_eq!(state["nics"], json!({}));

    let calls = admin_get(&sim, "/sim/calls").await;
    let calls = calls.as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["operation"], "bind");
    assert_eq!(calls[1]["operation"], "unbind");
    assert_eq!(calls[1]["method"], "PUT");
    assert_eq!(calls[1]["path"], format!("/v1/{PROJECT}/cloudservers/nics/{NIC}"));
    assert_eq!(calls[1]["body"], r#"{"nic":{"subnet_id":"","ip_address":"","reverse_binding":false}}"#);
    assert_eq!(calls[1]["access_key"], AK);
    assert!(calls.iter().all(|c| c["status"] == 200));
    sim.shutdown().await;
}

#[tokio::test]
async fn wrong_secret_key_is_auth_and_sends_exactly_one_request() {
    let sim = simulator().await;
    let err = client_for(&sim).bind(&target("wrong"), &bind_req(NIC)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth);
    assert_eq!(err.status(), Some(401));
    assert_eq!(err.code(), Some("APIGW.0301"));
    assert!(err.request_id().is_some());
    assert_eq!(sim.calls().len(), 1);
    assert!(sim.state().nics.is_empty());
}

#[tokio::test]
async fn repeated_bad_signatures_lock_the_key_as_huawei_does() {
    // Why Auth is never retried: 5 failures in a row lock the AK, even for good requests.
    let sim = simulator().await;
    let client = client_for(&sim);
    for _ in 0..5 {
        assert_eq!(client.bind(&target("wrong"), &bind_req(NIC)).await.unwrap_err().class(), ErrorClass::Auth);
    }
    assert_eq!(sim.calls().len(), 5);
    assert!(sim.state().locked_access_keys.contains(AK));
    let err = client.bind(&target(SK), &bind_req(NIC)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth);
    assert!(sim.state().nics.is_empty());
}

#[tokio::test]
async fn two_server_errors_then_success_takes_three_requests() {
    let sim = simulator().await;
    sim.add_fault(Fault::error(500, "Common.0001", 2));
    let port = client_for(&sim).bind(&target(SK), &bind_req(NIC)).await.unwrap().port_id;
    assert_eq!(port, NIC);
    let statuses: Vec<u16> = sim.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![500, 500, 200]);
    // Each attempt is signed afresh and verified by the simulator.
    assert!(sim.calls().iter().all(|c| c.access_key.as_deref() == Some(AK)));
    assert!(sim.state().nics.contains_key(NIC));
}

#[tokio::test]
async fn retries_stop_at_the_attempt_bound() {
    let sim = simulator().await;
    sim.add_fault(Fault::error(503, "APIGW.0201", 0));
    let err = client_for(&sim).bind(&target(SK), &bind_req(NIC)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Retryable);
    assert_eq!(err.code(), Some("APIGW.0201"));
    assert_eq!(sim.calls().len(), 4);
}

#[tokio::test]
async fn throttled_with_retry_after_waits_then_succeeds() {
    let sim = simulator().await;
    let mut fault = Fault::error(429, "APIGW.0308", 1);
    fault.retry_after = Some(1);
    sim.add_fault(fault);
    let started = Instant::now();
    client_for(&sim).bind(&target(SK), &bind_req(NIC)).await.unwrap();
    // The backoff alone would be at most 10 ms; Retry-After: 1 must have been honoured.
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    let statuses: Vec<u16> = sim.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![429, 200]);
}

#[tokio::test]
async fn missing_nic_is_gone_and_not_retried() {
    let sim = simulator().await;
    sim.set_missing(NIC, true);
    let client = client_for(&sim);
    let err =
        client.unbind(&target(SK), &UnbindRequest { nic_id: NIC.into(), reverse_binding: false }).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Gone);
    assert_eq!(err.status(), Some(404));
    assert_eq!(sim.calls().len(), 1);
}

#[tokio::test]
async fn invalid_body_is_terminal_and_not_retried() {
    let sim = simulator().await;
    let mut req = bind_req(NIC);
    req.ip_address = "not-an-ip".into();
    let err = client_for(&sim).bind(&target(SK), &req).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Terminal);
    assert_eq!(err.code(), Some("Ecs.0005"));
    assert!(err.to_string().contains("not an IP address"), "{err}");
    assert_eq!(sim.calls().len(), 1);
}

#[tokio::test]
async fn all_three_error_shapes_are_parsed_with_request_id() {
    let sim = simulator().await;
    let client = client_with(&sim, |c| c.retry = RetryPolicy::none());
    for (status, code) in [(400, "Ecs.0039"), (403, "APIGW.0302"), (400, "Common.0002")] {
        sim.add_fault(Fault::error(status, code, 1).on(SimOperation::Bind));
        let err = client.bind(&target(SK), &bind_req(NIC)).await.unwrap_err();
        assert_eq!(err.code(), Some(code));
        assert_eq!(err.status(), Some(status));
        let last = sim.calls().pop().unwrap();
        assert_eq!(err.request_id(), Some(last.request_id.as_str()));
        assert!(err.to_string().contains(&last.request_id));
    }
}

/// A success names the answer's request id too: what the operator's audit line records.
#[tokio::test]
async fn successes_carry_the_request_id_the_simulator_recorded() {
    let sim = simulator().await;
    let client = client_for(&sim);
    let bound = client.bind(&target(SK), &bind_req(NIC)).await.unwrap();
    let unbound =
        client.unbind(&target(SK), &UnbindRequest { nic_id: NIC.into(), reverse_binding: false }).await.unwrap();
    let calls = sim.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(bound.request_id.as_deref(), Some(calls[0].request_id.as_str()));
    assert_eq!(unbound.request_id.as_deref(), Some(calls[1].request_id.as_str()));
    assert_ne!(calls[0].request_id, calls[1].request_id);
    for call in &calls {
        assert_eq!(call.request_id.len(), 32, "{}", call.request_id);
        assert!(call.request_id.chars().all(|c| c.is_ascii_hexdigit()), "{}", call.request_id);
    }
}

/// Like Huawei's gateway, the simulator puts an `X-Request-Id` on every answer, unique per
/// request: an unknown API, a method the route does not take, the admin API.
#[tokio::test]
async fn every_simulator_answer_has_its_own_request_id() {
    let sim = simulator().await;
    let http = reqwest::Client::new();
    let nic_url = format!("{}/v1/{PROJECT}/cloudservers/nics/{NIC}", sim.url());
    let answers = [
        http.get(format!("{}/v2/nothing", sim.url())).send().await.unwrap(),
        http.get(&nic_url).send().await.unwrap(),
        http.put(&nic_url).send().await.unwrap(),
        http.get(format!("{}/sim/state", sim.url())).send().await.unwrap(),
    ];
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|r| r.headers().get("x-request-id").expect("X-Request-Id").to_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), answers.len(), "{ids:?}");
    assert!(ids.iter().all(|id| id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit())), "{ids:?}");
    // Only the cloud call is recorded, with the id its answer carried.
    let calls = sim.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(answers[2].headers()["x-request-id"].to_str().unwrap(), calls[0].request_id);
}

#[tokio::test]
async fn clock_skew_beyond_fifteen_minutes_is_refused() {
    struct Late;
    impl Clock for Late {
        fn now(&self) -> jiff::Timestamp {
            jiff::Timestamp::now() - jiff::SignedDuration::from_mins(16)
        }
    }
    let sim = simulator().await;
    let config = EcsClientConfig { endpoint: Endpoint::parse_override(&sim.url()).unwrap(), ..Default::default() };
    let client = EcsClient::with_clock(config, Arc::new(Late), None).unwrap();
    let err = client.bind(&target(SK), &bind_req(NIC)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth);
    assert_eq!(sim.calls().len(), 1);
}

#[tokio::test]
async fn connection_refused_is_retryable_and_bounded() {
    // Bind a port, then free it: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = EcsClientConfig {
        endpoint: Endpoint::parse_override(&format!("http://127.0.0.1:{port}")).unwrap(),
        retry: fast_retries(),
        ..Default::default()
    };
    let err = EcsClient::new(config).unwrap().bind(&target(SK), &bind_req(NIC)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Retryable);
    assert!(!err.may_have_applied());
}

#[tokio::test]
async fn concurrent_calls_stay_within_qps_and_concurrency() {
    let sim = simulator().await;
    // The simulator's gateway throttles above 60/s (burst 60); the client is limited to 50/s
    // with a burst of 5 and 4 calls in flight. A client that ignored its limits would be
    // throttled (see the next test).
    sim.set_qps(Some(60.0)).unwrap();
    let client = client_with(&sim, |c| {
        c.qps = 50.0;
        c.burst = 5;
        c.max_concurrency = 4;
        c.retry = RetryPolicy::none();
    });
    let results = futures::future::join_all((0..200).map(|i| {
        let client = client.clone();
        async move { client.bind(&target(SK), &bind_req(&format!("nic-{i}"))).await }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok), "{:?}", results.iter().find(|r| r.is_err()));
    let calls = sim.calls();
    assert_eq!(calls.len(), 200);
    assert_eq!(calls.iter().filter(|c| c.status == 429).count(), 0);
    assert_eq!(sim.state().nics.len(), 200);
    assert!(sim.state().max_in_flight <= 4, "max in flight {}", sim.state().max_in_flight);
}

#[tokio::test]
async fn a_client_without_limits_gets_throttled() {
    let sim = simulator().await;
    sim.set_qps(Some(60.0)).unwrap();
    let client = client_with(&sim, |c| {
        c.qps = 100_000.0;
        c.burst = 1000;
        c.max_concurrency = 200;
        c.retry = RetryPolicy::none();
    });
    let results = futures::future::join_all((0..200).map(|i| {
        let client = client.clone();
        async move { client.bind(&target(SK), &bind_req(&format!("nic-{i}"))).await }
    }))
    .await;
    let throttled = results.iter().filter(|r| r.as_ref().is_err_and(|e| e.is_throttled())).count();
    assert!(throttled > 0);
    assert_eq!(sim.calls().iter().filter(|c| c.status == 429).count(), throttled);
}

/// A local stand-in for the ECS metadata service.
async fn metadata_service(expires_in: jiff::SignedDuration, hits: Arc<AtomicUsize>) -> String {
    let app = axum::Router::new().route("/meta-data/latest/api/token", put(|| async { "session-token" })).route(
        "/openstack/latest/securitykey",
        get(move |headers: axum::http::HeaderMap| {
            let hits = hits.clone();
            async move {
                assert_eq!(headers.get("x-metadata-token").unwrap(), "session-token");
                let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
                let expires = jiff::Timestamp::now() + expires_in;
                axum::Json(json!({"credential": {
                    "access": format!("TEMPAK{n:014}"),
                    "secret": format!("temp-secret-{n}"),
                    "securitytoken": format!("temp-token-{n}"),
                    "expires_at": expires.to_string(),
                }}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/")
}

#[tokio::test]
async fn temporary_credentials_from_the_metadata_service() {
    let sim = simulator().await;
    for n in 1..=3 {
        sim.add_credential(SimCredential {
            access_key: format!("TEMPAK{n:014}"),
            secret_key: format!("temp-secret-{n}"),
            security_token: Some(format!("temp-token-{n}")),
        });
    }
    let client = client_for(&sim);

    // Long-lived keys: fetched once, reused.
    let hits = Arc::new(AtomicUsize::new(0));
    let url = metadata_service(jiff::SignedDuration::from_hours(24), hits.clone()).await;
    let provider = MetadataCredentials::new(url.parse().unwrap(), Duration::from_secs(40 * 60), Arc::new(SystemClock));
    for _ in 0..3 {
        let creds = provider.credentials().await.unwrap();
        assert!(creds.is_temporary());
        let t = CloudTarget { region: "r".into(), project_id: PROJECT.into(), credentials: creds };
        client.bind(&t, &bind_req(NIC)).await.unwrap();
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(sim.calls().iter().all(|c| c.status == 200 && c.access_key.as_deref() == Some("TEMPAK00000000000001")));

    // Keys with less than the refresh margin left are refreshed on every use.
    let hits = Arc::new(AtomicUsize::new(0));
    let url = metadata_service(jiff::SignedDuration::from_mins(30), hits.clone()).await;
    let provider = MetadataCredentials::new(url.parse().unwrap(), Duration::from_secs(40 * 60), Arc::new(SystemClock));
    let a = provider.credentials().await.unwrap();
    let b = provider.credentials().await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_ne!(a.access_key(), b.access_key());
    assert!(!format!("{b:?}").contains("temp-secret"));
}

#[tokio::test]
async fn temporary_key_without_its_token_is_refused() {
    let sim = simulator().await;
    sim.add_credential(SimCredential {
        access_key: "TEMPAK".into(),
        secret_key: "tsk".into(),
        security_token: Some("the-token".into()),
    });
    let client = client_for(&sim);
    let no_token = CloudTarget {
        region: "r".into(),
        project_id: PROJECT.into(),
        credentials: Credentials::new("TEMPAK", "tsk", None).unwrap(),
    };
    let err = client.bind(&no_token, &bind_req(NIC)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth);
    assert_eq!(err.code(), Some("Common.0013"));
    let with_token =
        CloudTarget { credentials: Credentials::new("TEMPAK", "tsk", Some("the-token")).unwrap(), ..no_token };
    client.bind(&with_token, &bind_req(NIC)).await.unwrap();
}

#[tokio::test]
async fn project_header_must_match_the_path_and_requests_must_be_signed() {
    let sim = simulator().await;
    let http = reqwest::Client::new();
    let url: url::Url = format!("{}/v1/{PROJECT}/cloudservers/nics/{NIC}", sim.url()).parse().unwrap();
    let body = br#"{"nic":{"subnet_id":"","ip_address":"","reverse_binding":false}}"#;

    let unsigned =
        http.put(url.clone()).header("Content-Type", "application/json").body(&body[..]).send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    assert!(unsigned.headers().contains_key("x-request-id"));

    // Correctly signed, but for another project than the URI names.
    let headers = [("Content-Type", "application/json"), ("X-Project-Id", "another-project")];
    let parts = vip_operator::ecs::sign::RequestParts { method: "PUT", url: &url, headers: &headers, body };
    let signed = vip_operator::ecs::sign::sign(&parts, AK, SK, jiff::Timestamp::now()).unwrap();
    let resp = http
        .put(url.clone())
        .header("Host", signed.host)
        .header("X-Sdk-Date", signed.sdk_date)
        .header("Authorization", signed.authorization)
        .header("Content-Type", "application/json")
        .header("X-Project-Id", "another-project")
        .body(&body[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "Ecs.0005");
    assert!(err["error"]["message"].as_str().unwrap().contains("X-Project-Id"));
}

#[tokio::test]
async fn admin_api_scripts_faults_and_missing_nics() {
    let sim = simulator().await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/sim/faults", sim.url()))
        .json(&json!({"operation": "unbind", "status": 500, "code": "Common.0001", "count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    http.put(format!("{}/sim/missing-nics/gone-nic", sim.url())).send().await.unwrap();
    let client = client_with(&sim, |c| c.retry = RetryPolicy::none());
    client.bind(&target(SK), &bind_req(NIC)).await.unwrap();
    let err =
        client.unbind(&target(SK), &UnbindRequest { nic_id: NIC.into(), reverse_binding: false }).await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    client.unbind(&target(SK), &UnbindRequest { nic_id: NIC.into(), reverse_binding: false }).await.unwrap();
    let err = client.bind(&target(SK), &bind_req("gone-nic")).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Gone);
    let state = admin_get(&sim, "/sim/state").await;
    assert_eq!(state["missing_nics"], json!(["gone-nic"]));
    assert_eq!(state["nics"], json!({}));
}

/// A fence with a fixed answer (the leader's lease fence, as the client sees it).
struct FixedFence(Result<Duration, FenceError>);

impl vip_operator::ecs::Fence for FixedFence {
    fn remaining(&self) -> Result<Duration, FenceError> {
        self.0.clone()
    }
}

fn fenced_client(sim: &Simulator, fence: FixedFence) -> EcsClient {
    let config = EcsClientConfig {
        endpoint: Endpoint::parse_override(&sim.url()).unwrap(),
        retry: fast_retries(),
        qps: 1000.0,
        burst: 100,
        ..Default::default()
    };
    EcsClient::fenced(config, Arc::new(SystemClock), None, Some(Arc::new(fence))).unwrap()
}

#[tokio::test]
async fn a_closed_fence_sends_nothing_and_says_why() {
    let sim = simulator().await;
    let client = fenced_client(&sim, FixedFence(Err(FenceError::Closed("lease not confirmed".into()))));
    let err = client.unbind(&target(SK), &UnbindRequest { nic_id: NIC.into(), reverse_binding: false }).await;
    let err = err.unwrap_err();
    assert!(matches!(err, vip_operator::ecs::EcsError::Fenced(_)), "{err:?}");
    assert!(!err.may_have_applied());
    assert!(err.to_string().contains("lease not confirmed"), "{err}");
    assert!(sim.calls().is_empty(), "{:?}", sim.calls());
}

#[tokio::test]
async fn no_attempt_outlives_the_fence() {
    let sim = simulator().await;
    sim.set_latency(Duration::from_secs(3));
    let client = fenced_client(&sim, FixedFence(Ok(Duration::from_millis(300))));
    let started = Instant::now();
    let err = client.bind(&target(SK), &bind_req(NIC)).await.unwrap_err();
    // Cut at the fence's 300 ms, not the 30 s request timeout; it may have reached the cloud.
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(err.may_have_applied(), "{err}");
}

// --- The VPC ports API (reads) against the simulator ---

const VIP_OWNER: &str = "neutron:VIP_PORT";
const NET: &str = "0a2b3c4d-0000-4000-8000-00000000000a";
const SUBNET: &str = "8c9d4f38-1a2b-4c3d-9e8f-001122334455";

fn vpc_client(sim: &Simulator, tweak: impl FnOnce(&mut EcsClientConfig)) -> EcsClient {
    client_with(sim, |c| {
        c.vpc_endpoint = Endpoint::parse_override_for("--vpc-endpoint", &sim.url()).unwrap();
        tweak(c);
    })
}

fn vip_port(n: u8) -> SimPort {
    SimPort::vip(&format!("vip-port-{n}"), PROJECT, NET, SUBNET, &format!("192.168.0.{n}"))
}

fn ids(ports: &[Port]) -> Vec<String> {
    ports.iter().map(|p| p.id.clone()).collect()
}

#[tokio::test]
async fn a_nic_named_by_an_ecs_call_has_a_port() {
    let sim = simulator().await;
    let client = vpc_client(&sim, |_| {});
    client.bind(&target(SK), &bind_req(NIC)).await.unwrap();
    let port = client.get_port(&target(SK), NIC).await.unwrap();
    let held = sim.port(NIC).unwrap();
    assert_eq!(port.id, NIC);
    assert_eq!(port.ip(), held.ip());
    assert!(port.ip().unwrap().starts_with("10."), "{port:?}");
    assert_eq!(port.mac_address, held.mac_address);
    assert_eq!(port.status, "ACTIVE");
    assert!(port.allowed_address_pairs.is_empty());
    let calls = sim.calls();
    assert_eq!(calls[1].method, "GET");
    assert_eq!(calls[1].path, format!("/v1/{PROJECT}/ports/{NIC}"));
    assert_eq!(calls[1].port_operation, Some(PortOperation::GetPort));
    assert_eq!(calls[1].port_id.as_deref(), Some(NIC));
    assert_eq!(calls[1].access_key.as_deref(), Some(AK));
    // The state lists it, with its project.
    let state = admin_get(&sim, "/sim/state").await;
    assert_eq!(state["ports"][NIC]["project_id"], PROJECT);
}

#[tokio::test]
async fn a_vip_port_created_through_the_admin_api_reads_back() {
    let sim = simulator().await;
    let http = reqwest::Client::new();
    let body = json!({
        "project_id": PROJECT,
        "device_owner": VIP_OWNER,
        "network_id": NET,
        "fixed_ips": [{"subnet_id": SUBNET, "ip_address": "192.168.0.50"}],
        "allowed_address_pairs": [{"ip_address": "1.1.1.1/0"}],
        "status": "DOWN",
    });
    let r = http.put(format!("{}/sim/ports/vip-50", sim.url())).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let port = vpc_client(&sim, |_| {}).get_port(&target(SK), "vip-50").await.unwrap();
    assert_eq!(port.device_owner, VIP_OWNER);
    assert_eq!(port.network_id, NET);
    assert_eq!(port.status, "DOWN");
    assert_eq!(port.fixed_ips, vec![FixedIp { subnet_id: SUBNET.into(), ip_address: "192.168.0.50".into() }]);
    assert_eq!(port.allowed_address_pairs, vec![AddressPair { ip_address: "1.1.1.1/0".into(), mac_address: None }]);
    // An id in the body must be the path's.
    let r = http
        .put(format!("{}/sim/ports/vip-51", sim.url()))
        .json(&json!({"id": "vip-52", "project_id": PROJECT}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let sim = simulator().await;
    for n in 1..=5 {
        sim.set_port(vip_port(n)).unwrap();
    }
    let mut other_net = vip_port(9);
    other_net.network_id = "another-network".into();
    sim.set_port(other_net).unwrap();
    sim.set_port(SimPort::vip("foreign", "another-project", NET, SUBNET, "192.168.0.3")).unwrap();
    let client = vpc_client(&sim, |_| {});
    client.bind(&target(SK), &bind_req(NIC)).await.unwrap();
    let t = target(SK);

    // Paging: 5 VIP ports in this network, 2 a page, by marker.
    let mut filter = PortFilter {
        device_owner: Some(VIP_OWNER.into()),
        network_id: Some(NET.into()),
        limit: 2,
        ..Default::default()
    };
    let mut pages = vec![];
    loop {
        let page = client.list_ports(&t, &filter).await.unwrap();
        pages.push(ids(&page));
        if page.len() < filter.page_size() as usize {
            break;
        }
        filter.marker = page.last().map(|p| p.id.clone());
    }
    assert_eq!(pages, vec![vec!["vip-port-1", "vip-port-2"], vec!["vip-port-3", "vip-port-4"], vec!["vip-port-5"]]);

    // Each filter alone.
    let only = |f: PortFilter| {
        let client = client.clone();
        let t = t.clone();
        async move { ids(&client.list_ports(&t, &f).await.unwrap()) }
    };
    let by_ip = PortFilter { ip_addresses: vec!["192.168.0.3".into()], ..Default::default() };
    assert_eq!(only(by_ip).await, vec!["vip-port-3"], "another project's port with that IP is not seen");
    // Repeated `fixed_ips`: any of the addresses (one listing for several NICs).
    let by_ips = PortFilter {
        ip_addresses: vec!["192.168.0.5".into(), "192.168.0.3".into(), "192.168.9.9".into()],
        ..Default::default()
    };
    assert_eq!(only(by_ips).await, vec!["vip-port-3", "vip-port-5"]);
    let by_owner = PortFilter { device_owner: Some(VIP_OWNER.into()), ..Default::default() };
    assert_eq!(only(by_owner).await.len(), 6);
    let by_network = PortFilter { network_id: Some("another-network".into()), ..Default::default() };
    assert_eq!(only(by_network).await, vec!["vip-port-9"]);
    let everything = only(PortFilter::default()).await;
    assert_eq!(everything.len(), 7, "{everything:?}");
    assert!(everything.contains(&NIC.to_string()));

    // What went over the wire: the exact forms, percent-encoded, each one verified.
    let queries: Vec<String> = sim.calls().iter().filter_map(|c| c.query.clone()).collect();
    assert!(queries.contains(&"fixed_ips=ip_address%3D192.168.0.3&limit=2000".to_string()), "{queries:?}");
    let repeated = "fixed_ips=ip_address%3D192.168.0.5&fixed_ips=ip_address%3D192.168.0.3&fixed_ips=ip_address%3D192.168.9.9&limit=2000";
    assert!(queries.contains(&repeated.to_string()), "{queries:?}");
    assert!(queries.iter().any(|q| q.starts_with("device_owner=neutron%3AVIP_PORT&network_id=")), "{queries:?}");
    assert!(queries.iter().any(|q| q.ends_with("&limit=2&marker=vip-port-4")), "{queries:?}");
    assert!(sim.calls().iter().all(|c| c.status == 200 && c.access_key.as_deref() == Some(AK)));
}

#[tokio::test]
async fn a_servers_nic_is_listed_by_device_and_network() {
    let sim = simulator().await;
    // Two NIC ports of one server in two networks, and another server's NIC in the first.
    let nic = |id: &str, server: &str, net: &str, ip: &str| {
        let mut p = SimPort::vip(id, PROJECT, net, SUBNET, ip);
        p.device_owner = "compute:az1".into();
        p.device_id = server.into();
        p.status = "ACTIVE".into();
        p
    };
    sim.set_port(nic("port-a1", "server-a", NET, "192.168.0.21")).unwrap();
    sim.set_port(nic("port-a2", "server-a", "another-network", "192.168.1.21")).unwrap();
    sim.set_port(nic("port-b1", "server-b", NET, "192.168.0.22")).unwrap();
    sim.set_port(vip_port(1)).unwrap();
    let client = vpc_client(&sim, |c| c.retry = RetryPolicy::none());
    let t = target(SK);
    let f = |server: &str| PortFilter {
        device_id: Some(server.into()),
        network_id: Some(NET.into()),
        ..Default::default()
    };
    let found = client.list_ports(&t, &f("server-a")).await.unwrap();
    assert_eq!(ids(&found), vec!["port-a1"]);
    assert_eq!((found[0].device_id.as_str(), found[0].ip()), ("server-a", Some("192.168.0.21")));
    assert_eq!(ids(&client.list_ports(&t, &f("server-b")).await.unwrap()), vec!["port-b1"]);
    assert!(client.list_ports(&t, &f("server-c")).await.unwrap().is_empty());
    // The exact query, signed by the client and verified by the simulator.
    let calls = sim.calls();
    assert_eq!(calls[0].query.as_deref(), Some(format!("device_id=server-a&network_id={NET}&limit=2000").as_str()));
    assert!(calls.iter().all(|c| c.status == 200 && c.access_key.as_deref() == Some(AK)), "{calls:?}");
    // A hostile server ID is refused before anything is sent.
    let bad = PortFilter { device_id: Some("server-a&device_id=server-b".into()), ..Default::default() };
    assert!(client.list_ports(&t, &bad).await.is_err());
    assert_eq!(sim.calls().len(), 3);
}

#[tokio::test]
async fn signatures_cover_the_query() {
    let sim = simulator().await;
    sim.set_port(SimPort::vip("vip-v6", PROJECT, NET, SUBNET, "fd00::7")).unwrap();
    let client = vpc_client(&sim, |c| c.retry = RetryPolicy::none());
    // Colons, '=' and the IPv6 form, signed by the client and verified independently.
    let f = PortFilter { ip_addresses: vec!["fd00:0::7".into()], ..Default::default() };
    assert_eq!(ids(&client.list_ports(&target(SK), &f).await.unwrap()), vec!["vip-v6"]);
    assert_eq!(sim.calls()[0].query.as_deref(), Some("fixed_ips=ip_address%3Dfd00%3A%3A7&limit=2000"));

    // A correctly signed listing whose query is changed on the way is refused.
    let http = reqwest::Client::new();
    let url: url::Url =
        format!("{}/v1/{PROJECT}/ports?fixed_ips=ip_address%3D192.168.0.1&limit=1", sim.url()).parse().unwrap();
    let headers = [("Content-Type", "application/json"), ("X-Project-Id", PROJECT)];
    let parts = vip_operator::ecs::sign::RequestParts { method: "GET", url: &url, headers: &headers, body: b"" };
    let signed = vip_operator::ecs::sign::sign(&parts, AK, SK, jiff::Timestamp::now()).unwrap();
    let send = |url: String, project: &'static str| {
        http.get(url)
            .header("Host", &signed.host)
            .header("X-Sdk-Date", &signed.sdk_date)
            .header("Authorization", &signed.authorization)
            .header("Content-Type", "application/json")
            .header("X-Project-Id", project)
            .send()
    };
    assert_eq!(send(url.to_string(), PROJECT).await.unwrap().status(), 200);
    let tampered = url.as_str().replace("192.168.0.1", "192.168.0.2");
    let r = send(tampered, PROJECT).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error_code"], "APIGW.0301");

    // Signed, but for another project than the path names: the VPC service refuses it.
    let other = [("Content-Type", "application/json"), ("X-Project-Id", "another-project")];
    let parts = vip_operator::ecs::sign::RequestParts { method: "GET", url: &url, headers: &other, body: b"" };
    let signed = vip_operator::ecs::sign::sign(&parts, AK, SK, jiff::Timestamp::now()).unwrap();
    let r = http
        .get(url.clone())
        .header("Host", signed.host)
        .header("X-Sdk-Date", signed.sdk_date)
        .header("Authorization", signed.authorization)
        .header("Content-Type", "application/json")
        .header("X-Project-Id", "another-project")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "VPC.0007");
}

#[tokio::test]
async fn a_missing_port_is_gone_with_vpc_2502() {
    let sim = simulator().await;
    let client = vpc_client(&sim, |_| {});
    let t = target(SK);
    sim.set_port(vip_port(1)).unwrap();
    sim.set_port(SimPort::vip("foreign", "another-project", NET, SUBNET, "192.168.0.1")).unwrap();
    client.bind(&t, &bind_req(NIC)).await.unwrap();
    sim.set_missing("declared-missing", true);
    client.bind(&t, &bind_req("removed-nic")).await.unwrap();
    assert!(sim.remove_port("removed-nic"));
    // A NIC whose port was removed keeps its ECS state but has no port, even after more calls.
    client.bind(&t, &bind_req("removed-nic")).await.unwrap();

    for (id, why) in [
        ("never-heard-of", "unknown"),
        ("foreign", "another project's"),
        ("declared-missing", "a missing NIC's"),
        ("removed-nic", "removed through the admin API"),
    ] {
        let before = sim.calls().len();
        let err = client.get_port(&t, id).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Gone, "{why}: {err}");
        assert_eq!(err.status(), Some(404), "{why}");
        assert_eq!(err.code(), Some("VPC.2502"), "{why}");
        assert!(!err.is_unrecognised_not_found(), "{why}");
        assert_eq!(
            err.to_string(),
            format!("HTTP 404 VPC.2502: Port {id} not found [request id {}]", err.request_id().unwrap())
        );
        assert_eq!(sim.calls().len(), before + 1, "{why}: a 404 is not retried");
    }
    // A missing NIC that comes back has its port again.
    sim.set_missing(NIC, true);
    assert_eq!(client.get_port(&t, NIC).await.unwrap_err().class(), ErrorClass::Gone);
    sim.set_missing(NIC, false);
    assert_eq!(client.get_port(&t, NIC).await.unwrap().id, NIC);

    // Through the admin API as well.
    let http = reqwest::Client::new();
    let r = http.delete(format!("{}/sim/ports/vip-port-1", sim.url())).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(client.get_port(&t, "vip-port-1").await.unwrap_err().code(), Some("VPC.2502"));
}

#[tokio::test]
async fn an_unknown_path_answers_like_the_gateway_and_is_not_gone() {
    let sim = simulator().await;
    // A VPC endpoint with a wrong prefix: every read lands on a path the gateway does not know.
    let misdirected = vpc_client(&sim, |c| {
        c.vpc_endpoint = Endpoint::parse_override(&format!("{}/wrong-prefix/", sim.url())).unwrap();
    });
    let err = misdirected.get_port(&target(SK), NIC).await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.code(), Some("APIGW.0101"));
    assert_ne!(err.class(), ErrorClass::Gone);
    assert!(err.is_unrecognised_not_found());
    let err = misdirected.list_ports(&target(SK), &PortFilter::default()).await.unwrap_err();
    assert!(err.is_unrecognised_not_found());

    // Any method on any path the simulator does not serve, known paths included.
    let http = reqwest::Client::new();
    let base = sim.url();
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/{PROJECT}/cloudservers/nics/{NIC}")),
        (reqwest::Method::DELETE, format!("/v1/{PROJECT}/ports/{NIC}")),
        (reqwest::Method::PATCH, format!("/v1/{PROJECT}/ports/{NIC}")),
        (reqwest::Method::POST, format!("/v1/{PROJECT}/ports")),
        (reqwest::Method::GET, format!("/v2.0/ports/{NIC}")),
        (reqwest::Method::GET, format!("/v1/{PROJECT}/ports/{NIC}/extra")),
    ] {
        let r = http.request(method.clone(), format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error_code"], "APIGW.0101", "{method} {path}");
        assert!(body["request_id"].is_string());
    }
    assert!(sim.calls().is_empty(), "nothing reached a service");
}

#[tokio::test]
async fn a_403_on_a_read_is_auth_and_not_retried() {
    let sim = simulator().await;
    sim.add_fault(Fault::error(403, "VPC.2201", 0).on(PortOperation::GetPort).for_nic(NIC));
    let client = vpc_client(&sim, |_| {});
    let err = client.get_port(&target(SK), NIC).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth);
    assert_eq!(err.code(), Some("VPC.2201"));
    assert_eq!(sim.calls().len(), 1);
    // The fault targets that read only: the ECS call and a listing go through.
    client.bind(&target(SK), &bind_req(NIC)).await.unwrap();
    client.list_ports(&target(SK), &PortFilter::default()).await.unwrap();
}

#[tokio::test]
async fn scripted_server_errors_on_reads_are_retried() {
    let sim = simulator().await;
    sim.set_port(vip_port(1)).unwrap();
    sim.add_fault(Fault::error(500, "VPC.0001", 2).on(PortOperation::ListPorts));
    let client = vpc_client(&sim, |_| {});
    let page = client.list_ports(&target(SK), &PortFilter::default()).await.unwrap();
    assert_eq!(ids(&page), vec!["vip-port-1"]);
    let statuses: Vec<u16> = sim.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![500, 500, 200]);

    // A read that timed out and then found nothing is simply not found: reads change nothing.
    let mut slow = Fault::error(200, "", 1).on(PortOperation::GetPort);
    slow.latency_ms = Some(2_000);
    sim.add_fault(slow);
    let client = vpc_client(&sim, |c| c.request_timeout = Duration::from_millis(300));
    let err = client.get_port(&target(SK), "nothing-here").await.unwrap_err();
    assert!(matches!(err, vip_operator::ecs::EcsError::Api(_)), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Gone);
}

#[tokio::test]
async fn answers_above_the_size_limit_are_refused() {
    let sim = simulator().await;
    for n in 1..=5 {
        sim.set_port(vip_port(n)).unwrap();
    }
    let client = vpc_client(&sim, |c| {
        c.max_response_bytes = 1024;
        c.retry = RetryPolicy::none();
    });
    let err = client.list_ports(&target(SK), &PortFilter::default()).await.unwrap_err();
    assert!(
        matches!(&err, vip_operator::ecs::EcsError::Transport { kind: vip_operator::ecs::TransportKind::Protocol, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("larger than 1024 bytes"), "{err}");
    // A small answer still fits.
    client.get_port(&target(SK), "vip-port-1").await.unwrap();
}

#[tokio::test]
async fn reverse_binding_writes_the_nics_pair_on_the_vip_port() {
    let sim = simulator().await;
    sim.set_port(vip_port(7)).unwrap();
    let client = vpc_client(&sim, |_| {});
    let t = target(SK);

    // Without reverse_binding the VIP port is left alone.
    let mut plain = bind_req(NIC);
    plain.reverse_binding = false;
    client.bind(&t, &plain).await.unwrap();
    assert!(client.get_port(&t, "vip-port-7").await.unwrap().allowed_address_pairs.is_empty());

    let nic_before = client.get_port(&t, NIC).await.unwrap();
    client.bind(&t, &bind_req(NIC)).await.unwrap();
    let vip = client.get_port(&t, "vip-port-7").await.unwrap();
    let nic_ip = nic_before.ip().unwrap();
    assert!(vip.allows(nic_ip), "{vip:?}");
    assert_eq!(vip.allowed_address_pairs[0].mac_address.as_deref(), Some(nic_before.mac_address.as_str()));
    // The NIC's own port: not documented, so not touched.
    assert_eq!(client.get_port(&t, NIC).await.unwrap(), nic_before);
    // Found by the listing a controller would make.
    let f = PortFilter {
        device_owner: Some(VIP_OWNER.into()),
        ip_addresses: vec!["192.168.0.7".into()],
        ..Default::default()
    };
    assert!(client.list_ports(&t, &f).await.unwrap()[0].allows(nic_ip));

    client.unbind(&t, &UnbindRequest { nic_id: NIC.into(), reverse_binding: true }).await.unwrap();
    assert!(!client.get_port(&t, "vip-port-7").await.unwrap().allows(nic_ip));
}

#[tokio::test]
async fn pairs_changed_behind_the_operators_back_are_seen() {
    let sim = simulator().await;
    sim.set_port(vip_port(7)).unwrap();
    let client = vpc_client(&sim, |_| {});
    let http = reqwest::Client::new();
    let url = format!("{}/sim/ports/vip-port-7/allowed-address-pairs", sim.url());
    let r = http
        .put(&url)
        .json(&json!({"allowed_address_pairs": [{"ip_address": "10.9.9.9", "mac_address": "fa:16:3e:00:00:09"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(client.get_port(&target(SK), "vip-port-7").await.unwrap().allows("10.9.9.9"));
    assert!(sim.set_allowed_address_pairs("vip-port-7", vec![]));
    assert!(client.get_port(&target(SK), "vip-port-7").await.unwrap().allowed_address_pairs.is_empty());
    let r = http
        .put(format!("{}/sim/ports/no-such-port/allowed-address-pairs", sim.url()))
        .json(&json!({"allowed_address_pairs": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn reads_are_observed_with_their_own_operation() {
    #[derive(Default)]
    struct Seen(std::sync::Mutex<Vec<(Operation, bool)>>);
    impl CallObserver for Seen {
        fn attempt(&self, report: &AttemptReport<'_>) {
            self.0.lock().unwrap().push((report.operation, report.result.is_ok()));
        }
    }
    let sim = simulator().await;
    let seen = Arc::new(Seen::default());
    let config = EcsClientConfig {
        endpoint: Endpoint::parse_override(&sim.url()).unwrap(),
        vpc_endpoint: Endpoint::parse_override(&sim.url()).unwrap(),
        retry: RetryPolicy::none(),
        ..Default::default()
    };
    let client = EcsClient::with_clock(config, Arc::new(SystemClock), Some(seen.clone())).unwrap();
    client.get_port(&target(SK), "nothing").await.unwrap_err();
    client.list_ports(&target(SK), &PortFilter::default()).await.unwrap();
    assert_eq!(*seen.0.lock().unwrap(), vec![(Operation::GetPort, false), (Operation::ListPorts, true)]);
}

// --- The VPC port update (PUT) against the simulator ---

fn pair(ip: &str) -> AddressPair {
    AddressPair { ip_address: ip.into(), mac_address: None }
}

fn sim_pair(ip: &str) -> SimAddressPair {
    SimAddressPair { ip_address: ip.into(), mac_address: None }
}

fn sim_pairs(sim: &Simulator, port: &str) -> Vec<String> {
    sim.port(port).unwrap().allowed_address_pairs.into_iter().map(|p| p.ip_address).collect()
}

fn puts(sim: &Simulator) -> Vec<vip_operator::simulator::CallRecord> {
    sim.calls().into_iter().filter(|c| c.method == "PUT").collect()
}

#[tokio::test]
async fn update_pairs_replaces_the_list_whole_and_answers_the_port() {
    let sim = simulator().await;
    sim.set_port(vip_port(7)).unwrap();
    assert!(sim.set_allowed_address_pairs("vip-port-7", vec![sim_pair("10.0.0.1"), sim_pair("10.0.0.2")]));
    let client = vpc_client(&sim, |_| {});
    let t = target(SK);

    let new = [
        pair("10.0.0.3"),
        AddressPair { ip_address: "10.0.0.4".into(), mac_address: Some("fa:16:3e:00:00:04".into()) },
    ];
    let port = client.update_pairs(&t, "vip-port-7", &new).await.unwrap();
    assert_eq!(port.id, "vip-port-7");
    assert_eq!(port.allowed_address_pairs, new, "replaced whole, in order");
    assert_eq!(port.device_owner, VIP_OWNER);
    assert_eq!(port.fixed_ips, vec![FixedIp { subnet_id: SUBNET.into(), ip_address: "192.168.0.7".into() }]);
    assert_eq!(client.get_port(&t, "vip-port-7").await.unwrap(), port);
    let state = admin_get(&sim, "/sim/state").await;
    assert_eq!(
        state["ports"]["vip-port-7"]["allowed_address_pairs"],
        json!([{"ip_address": "10.0.0.3"}, {"ip_address": "10.0.0.4", "mac_address": "fa:16:3e:00:00:04"}])
    );
    let call = &sim.calls()[0];
    assert_eq!((call.method.as_str(), call.status), ("PUT", 200));
    assert_eq!(call.path, format!("/v1/{PROJECT}/ports/vip-port-7"));
    assert_eq!(call.port_operation, Some(PortOperation::UpdatePort));
    assert_eq!(call.port_id.as_deref(), Some("vip-port-7"));
    assert_eq!(call.access_key.as_deref(), Some(AK));

    // `[]` clears the list, and is sent as `[]`.
    let port = client.update_pairs(&t, "vip-port-7", &[]).await.unwrap();
    assert!(port.allowed_address_pairs.is_empty());
    assert!(sim_pairs(&sim, "vip-port-7").is_empty());
    assert_eq!(puts(&sim).last().unwrap().body, r#"{"port":{"allowed_address_pairs":[]}}"#);

    // A NIC's port takes `1.1.1.1/0` (source/destination check off).
    client.bind(&t, &bind_req(NIC)).await.unwrap();
    let nic = client.update_pairs(&t, NIC, &[pair("1.1.1.1/0")]).await.unwrap();
    assert!(nic.allows("1.1.1.1/0"));
    assert_eq!(nic.mac_address, sim.port(NIC).unwrap().mac_address);
}

#[tokio::test]
async fn a_server_error_on_update_is_not_resent() {
    let sim = simulator().await;
    sim.set_port(vip_port(7)).unwrap();
    sim.add_fault(Fault::error(500, "VPC.0001", 0).on(PortOperation::UpdatePort));
    let client = vpc_client(&sim, |_| {});
    let err = client.update_pairs(&target(SK), "vip-port-7", &[pair("10.0.0.3")]).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Retryable);
    assert_eq!(err.status(), Some(500));
    assert!(err.may_have_applied(), "{err}");
    assert_eq!(puts(&sim).len(), 1, "a write that may have applied is never resent");
    assert!(sim_pairs(&sim, "vip-port-7").is_empty());

    // A cloud that wrote the list and then failed to say so: the same error, and the list is new.
    sim.clear_faults();
    let mut applied = Fault::error(502, "APIGW.0202", 1).on(PortOperation::UpdatePort);
    applied.apply = true;
    sim.add_fault(applied);
    let err = client.update_pairs(&target(SK), "vip-port-7", &[pair("10.0.0.3")]).await.unwrap_err();
    assert!(err.may_have_applied());
    assert_eq!(puts(&sim).len(), 2);
    assert_eq!(sim_pairs(&sim, "vip-port-7"), ["10.0.0.3"]);

    // A write whose answer never came (timeout) is not resent either; the cloud did it.
    let mut slow = Fault::error(200, "", 1).on(PortOperation::UpdatePort);
    slow.latency_ms = Some(2_000);
    sim.add_fault(slow);
    let impatient = vpc_client(&sim, |c| c.request_timeout = Duration::from_millis(300));
    let err = impatient.update_pairs(&target(SK), "vip-port-7", &[]).await.unwrap_err();
    assert!(err.may_have_applied(), "{err}");
    assert_eq!(puts(&sim).len(), 3);
    assert!(sim_pairs(&sim, "vip-port-7").is_empty());
}

#[tokio::test]
async fn a_throttled_update_is_resent() {
    let sim = simulator().await;
    sim.set_port(vip_port(7)).unwrap();
    sim.add_fault(Fault::error(429, "APIGW.0308", 2).on(PortOperation::UpdatePort).for_nic("vip-port-7"));
    let client = vpc_client(&sim, |_| {});
    let port = client.update_pairs(&target(SK), "vip-port-7", &[pair("10.0.0.3")]).await.unwrap();
    assert!(port.allows("10.0.0.3"));
    let statuses: Vec<u16> = puts(&sim).iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![429, 429, 200]);
    assert!(puts(&sim).iter().all(|c| c.body == r#"{"port":{"allowed_address_pairs":[{"ip_address":"10.0.0.3"}]}}"#));

    // The gateway's own rate limit too: refused before anything is looked at, then resent.
    sim.set_qps(Some(1.0)).unwrap();
    let patient = vpc_client(&sim, |c| {
        c.retry = RetryPolicy {
            max_attempts: 20,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_millis(400),
            max_elapsed: Duration::from_secs(10),
        }
    });
    patient.get_port(&target(SK), "vip-port-7").await.unwrap();
    let port = patient.update_pairs(&target(SK), "vip-port-7", &[]).await.unwrap();
    assert!(port.allowed_address_pairs.is_empty());
    let last: Vec<u16> = sim.calls().iter().skip(3).map(|c| c.status).collect();
    assert!(last.contains(&429), "{last:?}");
    assert_eq!(last.last(), Some(&200));
}

#[tokio::test]
async fn updating_a_missing_port_is_gone_with_vpc_2502() {
    let sim = simulator().await;
    sim.set_port(SimPort::vip("foreign", "another-project", NET, SUBNET, "192.168.0.3")).unwrap();
    let client = vpc_client(&sim, |_| {});
    let t = target(SK);
    client.bind(&t, &bind_req(NIC)).await.unwrap();
    sim.set_missing(NIC, true);
    for id in ["never-heard-of", "foreign", NIC] {
        let before = sim.calls().len();
        let err = client.update_pairs(&t, id, &[pair("10.0.0.3")]).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Gone, "{id}: {err}");
        assert_eq!((err.status(), err.code()), (Some(404), Some("VPC.2502")), "{id}");
        assert!(!err.may_have_applied());
        assert_eq!(sim.calls().len(), before + 1, "{id}: a 404 is not resent");
        assert_eq!(sim.calls().last().unwrap().port_operation, Some(PortOperation::UpdatePort));
    }
    assert!(sim.port("foreign").unwrap().allowed_address_pairs.is_empty());
    assert!(sim.port(NIC).unwrap().allowed_address_pairs.is_empty());
}

#[tokio::test]
async fn the_any_address_is_refused_as_terminal() {
    let sim = simulator().await;
    sim.set_port(vip_port(7)).unwrap();
    assert!(sim.set_allowed_address_pairs("vip-port-7", vec![sim_pair("10.0.0.1")]));
    let client = vpc_client(&sim, |_| {});
    for any in ["0.0.0.0/0", "0.0.0.0"] {
        let before = sim.calls().len();
        let err = client.update_pairs(&target(SK), "vip-port-7", &[pair("10.0.0.2"), pair(any)]).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Terminal, "{any}: {err}");
        assert_eq!((err.status(), err.code()), (Some(400), Some("VPC.2500")));
        assert!(err.to_string().contains("must not be 0.0.0.0 or 0.0.0.0/0"), "{err}");
        assert!(!err.may_have_applied());
        assert_eq!(sim.calls().len(), before + 1);
    }
    assert_eq!(sim_pairs(&sim, "vip-port-7"), ["10.0.0.1"], "nothing written");
    // Not an address at all: refused the same way.
    let err = client.update_pairs(&target(SK), "vip-port-7", &[pair("not-an-ip")]).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Terminal);
    // A scripted fault is not used up by a refused body.
    sim.add_fault(Fault::error(500, "VPC.0001", 1).on(PortOperation::UpdatePort));
    client.update_pairs(&target(SK), "vip-port-7", &[pair("0.0.0.0")]).await.unwrap_err();
    assert_eq!(client.update_pairs(&target(SK), "vip-port-7", &[]).await.unwrap_err().status(), Some(500));
}

#[tokio::test]
async fn bodies_the_update_api_refuses() {
    let sim = simulator().await;
    sim.set_port(vip_port(7)).unwrap();
    let http = reqwest::Client::new();
    let url: url::Url = format!("{}/v1/{PROJECT}/ports/vip-port-7", sim.url()).parse().unwrap();
    let send = |body: &'static str| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let headers = [("Content-Type", "application/json"), ("X-Project-Id", PROJECT)];
            let parts = vip_operator::ecs::sign::RequestParts {
                method: "PUT",
                url: &url,
                headers: &headers,
                body: body.as_bytes(),
            };
            let signed = vip_operator::ecs::sign::sign(&parts, AK, SK, jiff::Timestamp::now()).unwrap();
            let req = http
                .put(url.clone())
                .header("Host", signed.host)
                .header("X-Sdk-Date", signed.sdk_date)
                .header("Authorization", signed.authorization)
                .header("Content-Type", "application/json")
                .header("X-Project-Id", PROJECT)
                .body(body);
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    for (body, why) in [
        (r#"{"port":{}}"#, "at least one attribute"),
        (r#"{"port":{"name":"x"}}"#, "port.name is not supported"),
        (r#"{"allowed_address_pairs":[]}"#, "unknown field"),
        (r#"{"port":{"allowed_address_pairs":[{"ip_address":"10.0.0.1/33"}]}}"#, "not an IP address or CIDR"),
    ] {
        let (status, answer) = send(body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer["code"], "VPC.2500", "{body}");
        assert!(answer["message"].as_str().unwrap().contains(why), "{body}: {answer}");
    }
    let (status, answer) = send(r#"{"port":{"allowed_address_pairs":[{"ip_address":"10.0.0.0/24"}]}}"#).await;
    assert_eq!(status, 200);
    assert_eq!(answer["port"]["allowed_address_pairs"], json!([{"ip_address": "10.0.0.0/24"}]));
    assert_eq!(answer["port"]["id"], "vip-port-7");
}

#[tokio::test]
async fn a_concurrent_writer_after_the_read_fires_once() {
    let sim = simulator().await;
    sim.set_port(vip_port(7)).unwrap();
    assert!(sim.set_allowed_address_pairs("vip-port-7", vec![sim_pair("10.0.0.1")]));
    let client = vpc_client(&sim, |c| c.retry = RetryPolicy::none());
    let t = target(SK);
    sim.after_next_read("vip-port-7", PairsChange::Add(sim_pair("10.0.0.9"))).unwrap();
    assert!(sim.state().after_next_read.contains_key("vip-port-7"));

    // An ECS call and a failed read are no reads of the port: nothing fires.
    client.bind(&t, &BindRequest { reverse_binding: false, ..bind_req(NIC) }).await.unwrap();
    sim.add_fault(Fault::error(500, "VPC.0001", 1).on(PortOperation::GetPort));
    client.get_port(&t, "vip-port-7").await.unwrap_err();
    assert_eq!(sim_pairs(&sim, "vip-port-7"), ["10.0.0.1"]);

    // The reader sees the list before; the change lands right after its read.
    let read = client.get_port(&t, "vip-port-7").await.unwrap();
    assert_eq!(read.allowed_address_pairs, vec![pair("10.0.0.1")]);
    assert_eq!(sim_pairs(&sim, "vip-port-7"), ["10.0.0.1", "10.0.0.9"]);
    assert_eq!(sim.calls().last().unwrap().after_read_fired, ["vip-port-7"]);
    assert!(sim.state().after_next_read.is_empty());

    // A read-modify-write from the stale read loses the other writer's pair (no version):
    // why a writer must read back.
    let mut mine = read.allowed_address_pairs.clone();
    mine.push(pair("10.0.0.5"));
    client.update_pairs(&t, "vip-port-7", &mine).await.unwrap();
    let again = client.get_port(&t, "vip-port-7").await.unwrap();
    assert_eq!(again.allowed_address_pairs, mine, "the hook fired once only");
    assert!(sim.calls().last().unwrap().after_read_fired.is_empty());

    // Through the admin API, set off by a listing that shows the port.
    let http = reqwest::Client::new();
    let url = format!("{}/sim/ports/vip-port-7/after-next-read", sim.url());
    let r = http.put(&url).json(&json!({"replace": [{"ip_address": "10.0.0.7"}]})).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        admin_get(&sim, "/sim/state").await["after_next_read"]["vip-port-7"],
        json!({"replace": [{"ip_address": "10.0.0.7"}]})
    );
    let f = PortFilter { ip_addresses: vec!["192.168.0.7".into()], ..Default::default() };
    let page = client.list_ports(&t, &f).await.unwrap();
    assert_eq!(page[0].allowed_address_pairs, mine);
    assert_eq!(sim_pairs(&sim, "vip-port-7"), ["10.0.0.7"]);
    client.list_ports(&t, &f).await.unwrap();
    assert_eq!(sim_pairs(&sim, "vip-port-7"), ["10.0.0.7"]);

    // Armed, then disarmed: nothing happens.
    let r = http.put(&url).json(&json!({"remove": "10.0.0.7"})).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(http.delete(&url).send().await.unwrap().status(), 204);
    client.get_port(&t, "vip-port-7").await.unwrap();
    assert_eq!(sim_pairs(&sim, "vip-port-7"), ["10.0.0.7"]);

    // No such port: 404; a change the update API would refuse: 400.
    let r = http
        .put(format!("{}/sim/ports/no-such-port/after-next-read", sim.url()))
        .json(&json!({"remove": "10.0.0.7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http.put(&url).json(&json!({"add": {"ip_address": "0.0.0.0/0"}})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(sim.state().after_next_read.is_empty());
}

// --- Budgets: one per access key, region and service; user calls ahead of background ones ---

const AK2: &str = "TESTACCESSKEY0000002";
const SK2: &str = "test-secret-key-2";

fn target_in(ak: &str, sk: &str, region: &str) -> CloudTarget {
    CloudTarget {
        region: region.into(),
        project_id: PROJECT.into(),
        credentials: Credentials::new(ak, sk, None).unwrap(),
    }
}

/// NICs of the ECS calls the simulator received, in the order it received them.
fn nics_in_order(sim: &Simulator) -> Vec<String> {
    let mut calls = sim.calls();
    calls.sort_by_key(|c| c.seq);
    calls.into_iter().filter_map(|c| c.nic_id).collect()
}

/// Within `limit`, or the call waited for a budget it does not draw from.
async fn soon<T>(limit: Duration, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, call).await.expect("the call waited for another budget")
}

#[tokio::test]
async fn an_exhausted_budget_delays_no_other_region_key_or_service() {
    let sim = simulator().await;
    sim.add_credential(SimCredential { access_key: AK2.into(), secret_key: SK2.into(), security_token: None });
    sim.set_port(vip_port(7)).unwrap();
    // One token every 20 s: the first call empties (AK, cn-north-4, ECS) and the next one on it
    // waits 20 s, far longer than the other calls may take.
    let client = vpc_client(&sim, |c| {
        c.qps = 0.05;
        c.burst = 1;
        c.retry = RetryPolicy::none();
    });
    let busy = target_in(AK, SK, "cn-north-4");
    client.bind(&busy, &bind_req("nic-a1")).await.unwrap();
    let queued = tokio::spawn({
        let (client, busy) = (client.clone(), busy.clone());
        async move { client.bind(&busy, &bind_req("nic-a2")).await }
    });
    let limit = Duration::from_secs(5);
    soon(limit, client.bind(&target_in(AK, SK, "cn-east-3"), &bind_req("nic-region"))).await.unwrap();
    soon(limit, client.bind(&target_in(AK2, SK2, "cn-north-4"), &bind_req("nic-key"))).await.unwrap();
    let port = soon(limit, client.get_port(&busy, "vip-port-7")).await.unwrap();
    assert_eq!(port.id, "vip-port-7");
    // The call queued on the empty budget is still waiting, and was not sent.
    assert!(!queued.is_finished());
    assert_eq!(nics_in_order(&sim), ["nic-a1", "nic-region", "nic-key"]);
    assert_eq!(sim.calls().len(), 4);
    assert_eq!(client.budget_count(), 4);
    queued.abort();
}

/// Spawns `client.bind(nic)` as background work.
fn spawn_background_bind(client: &EcsClient, nic: &str) -> tokio::task::JoinHandle<Result<(), ErrorClass>> {
    let (client, nic) = (client.clone(), nic.to_string());
    tokio::spawn(vip_operator::ecs::in_background(async move {
        client.bind(&target(SK), &bind_req(&nic)).await.map(|_| ()).map_err(|e| e.class())
    }))
}

#[tokio::test]
async fn a_user_call_goes_before_background_calls_queued_earlier() {
    let sim = simulator().await;
    let client = client_with(&sim, |c| {
        c.qps = 1.0;
        c.burst = 1;
        c.retry = RetryPolicy::none();
    });
    client.bind(&target(SK), &bind_req("nic-first")).await.unwrap();
    let background: Vec<_> = (1..=3).map(|n| spawn_background_bind(&client, &format!("nic-bg{n}"))).collect();
    // The next token frees up 1 s after the first call; the user call comes well before that.
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.bind(&target(SK), &bind_req("nic-user")).await.unwrap();
    for task in background {
        task.await.unwrap().unwrap();
    }
    let order = nics_in_order(&sim);
    assert_eq!(order[..2], ["nic-first", "nic-user"], "{order:?}");
    let mut rest = order[2..].to_vec();
    rest.sort();
    assert_eq!(rest, ["nic-bg1", "nic-bg2", "nic-bg3"]);
}

#[tokio::test]
async fn a_retry_keeps_the_priority_of_its_call() {
    let sim = simulator().await;
    sim.add_fault(Fault::error(500, "Common.0001", 1).for_nic("nic-bg"));
    let client = client_with(&sim, |c| {
        c.qps = 1.0;
        c.burst = 1;
    });
    // The background call takes the full bucket's token, fails with a 500 and waits to retry.
    let background = spawn_background_bind(&client, "nic-bg");
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.bind(&target(SK), &bind_req("nic-user")).await.unwrap();
    background.await.unwrap().unwrap();
    let statuses: Vec<(Option<String>, u16)> = {
        let mut calls = sim.calls();
        calls.sort_by_key(|c| c.seq);
        calls.into_iter().map(|c| (c.nic_id, c.status)).collect()
    };
    let nic = |n: &str| Some(n.to_string());
    assert_eq!(statuses, [(nic("nic-bg"), 500), (nic("nic-user"), 200), (nic("nic-bg"), 200)]);
}

#[tokio::test]
async fn the_budget_map_stays_bounded_under_many_regions_and_keys() {
    let sim = simulator().await;
    let client = vpc_client(&sim, |c| c.max_budgets = 8);
    for n in 0..40 {
        client.bind(&target_in(AK, SK, &format!("region-{n}")), &bind_req(&format!("nic-{n}"))).await.unwrap();
        assert!(client.budget_count() <= 8, "{} budgets", client.budget_count());
    }
    // Keys the cloud does not know: refused (401, never retried), but each drew from a budget.
    for n in 0..40 {
        let t = target_in(&format!("UNKNOWNKEY{n:04}"), "sk", "cn-north-4");
        let err = client.list_ports(&t, &PortFilter::default()).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Auth);
        assert!(client.budget_count() <= 8, "{} budgets", client.budget_count());
    }
    assert_eq!(sim.calls().len(), 80);
}
