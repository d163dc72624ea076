//! End-to-end scenarios: the real operator binary, the bundled ECS simulator, and a Kubernetes
//! API — the in-repo fake (always, in CI) or a real cluster (`VIPOP_E2E_KUBECONFIG`, see
//! `make e2e`). Each scenario has its own namespace, simulator and operator process.

#[path = "../support/mod.rs"]
mod support;

#[path = "../support/chart.rs"]
mod chart;

mod audit;
mod chaos;
mod evidence;
mod group;
mod harness;
mod import;
mod observe;
mod prometheus;
mod safety;
mod shared;
mod tenancy;
mod vpc;

use std::time::Duration;

use serde_json::json;
use vip_operator::simulator::{Fault, SimOperation};

use harness::{Env, Needs, admin_get, free_port, has_finalizer, ready};

pub(crate) const NIC: &str = "d32019d3-bc6e-4319-9c1d-6722fc136a23";
pub(crate) const NIC2: &str = "0b7e6a9c-5a3e-4d8e-9f1a-2b3c4d5e6f70";
const SEED_UNBIND_BODY: &str = r#"{"nic":{"subnet_id":"","ip_address":"","reverse_binding":false}}"#;

fn calls(env: &Env, op: SimOperation) -> Vec<vip_operator::simulator::CallRecord> {
    env.sim.calls().into_iter().filter(|c| c.operation == Some(op)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_apply_binds_once_and_reports_ready() {
    let mut env = Env::new("apply").await;
    let _op = env.operator().start().await;
    env.create("web", NIC, "192.168.0.7", json!({})).await;
    let b = env.wait_ready("web").await;

    let status = b.status.as_ref().unwrap();
    assert_eq!(status.port_id.as_deref(), Some(NIC));
    assert_eq!(status.observed_generation, b.metadata.generation);
    assert!(has_finalizer(&b));
    let bound = b.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Bound").unwrap();
    assert_eq!(bound.status, "True");
    let state = env.sim.state();
    let nic = state.nics.get(NIC).expect("the VIP is bound in the cloud");
    assert_eq!(nic.ip_address, "192.168.0.7");
    assert_eq!(nic.subnet_id, harness::SUBNET);
    assert!(!nic.reverse_binding);
    // Resyncs and the operator's own status write cause no further cloud calls.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.sim.calls().len(), 1, "{:#?}", env.sim.calls());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_delete_unbinds_with_the_seed_body_and_the_object_goes() {
    let mut env = Env::new("delete").await;
    let _op = env.operator().start().await;
    env.create("web", NIC, "192.168.0.7", json!({})).await;
    env.wait_ready("web").await;
    let history = env.history("web").await;
    env.delete("web").await;
    env.wait_gone("web", Duration::from_secs(20)).await;
    history.wait_deleted().await;

    let unbinds = calls(&env, SimOperation::Unbind);
    assert_eq!(unbinds.len(), 1);
    assert_eq!(unbinds[0].method, "PUT");
    assert_eq!(unbinds[0].path, format!("/v1/{}/cloudservers/nics/{NIC}", harness::PROJECT));
    assert_eq!(unbinds[0].body, SEED_UNBIND_BODY);
    assert_eq!(unbinds[0].status, 200);
    assert!(env.sim.state().nics.is_empty());
    // The final status (port id, Unbound) was written before the object went.
    let last = history.versions().into_iter().rev().find(|b| ready(b).is_some()).unwrap();
    assert_eq!(ready(&last), Some(("False", "Unbound")));
    assert_eq!(last.status.unwrap().port_id.as_deref(), Some(NIC));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_delete_through_server_errors_retries_then_releases() {
    let mut env = Env::new("errors").await;
    // Two attempts per reconcile: the third 500 comes after a visible, requeued failure.
    let _op = env.operator().arg("--cloud-max-attempts").arg("2").start().await;
    env.create("web", NIC, "192.168.0.7", json!({})).await;
    env.wait_ready("web").await;
    env.sim.add_fault(Fault::error(500, "Common.0001", 3).on(SimOperation::Unbind));
    env.delete("web").await;

    let stuck = env
        .wait_for("web", Duration::from_secs(15), "terminating with CloudUnavailable", |b| {
            b.metadata.deletion_timestamp.is_some() && ready(b) == Some(("False", "CloudUnavailable"))
        })
        .await;
    assert!(has_finalizer(&stuck));
    let message = &stuck.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap().message;
    assert!(message.contains("Common.0001") && message.contains("request id"), "{message}");
    env.wait_gone("web", Duration::from_secs(30)).await;

    let statuses: Vec<u16> = calls(&env, SimOperation::Unbind).iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![500, 500, 500, 200]);
    assert!(env.sim.state().nics.is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_delete_with_the_nic_gone_releases_with_nic_not_found() {
    let mut env = Env::new("nicgone").await;
    let _op = env.operator().start().await;
    env.create("web", NIC, "192.168.0.7", json!({})).await;
    env.wait_ready("web").await;
    env.sim.set_missing(NIC, true);
    let history = env.history("web").await;
    env.delete("web").await;
    env.wait_gone("web", Duration::from_secs(20)).await;
    history.wait_deleted().await;
    assert!(history.ready_reasons().contains(&"NicNotFound".to_string()), "{:?}", history.ready_reasons());
    let unbinds = calls(&env, SimOperation::Unbind);
    assert_eq!(unbinds.len(), 1, "a missing NIC is not retried");
    assert_eq!(unbinds[0].status, 404);
    // Released on evidence: ECS and the VPC API (the NIC's port reads 404 VPC.2502) agree.
    let last = history.versions().into_iter().rev().find(|b| ready(b).is_some()).expect("a final status");
    assert_eq!(ready(&last).map(|(_, r)| r), Some("NicNotFound"));
    let message = last.condition("Ready").map(|c| c.message.clone()).unwrap_or_default();
    assert!(message.contains("confirmed by the VPC API"), "{message}");
    let reads: Vec<_> = env
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.port_operation == Some(vip_operator::simulator::PortOperation::GetPort))
        .collect();
    assert_eq!(reads.len(), 1, "one read of the NIC's port: {reads:#?}");
    assert_eq!(reads[0].status, 404);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_wrong_secret_key_is_auth_failed_without_a_retry_storm() {
    let mut env = Env::new("auth").await;
    let op = env.operator().env("HUAWEICLOUD_SDK_SK", "definitely-wrong").start().await;
    for i in 0..3 {
        env.create(&format!("web-{i}"), &format!("{NIC}-{i}"), "192.168.0.7", json!({})).await;
    }
    env.wait_for("web-0", Duration::from_secs(20), "AuthFailed", |b| ready(b) == Some(("False", "AuthFailed"))).await;
    // Watch the cloud for a fixed window: three bindings share the refused key, and the key
    // must not be tried again (five failures in a row would lock it).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let unauthorized = env.sim.calls().iter().filter(|c| c.status == 401).count();
    assert_eq!(unauthorized, 1, "{:#?}", env.sim.calls());
    assert!(env.sim.state().locked_access_keys.is_empty());
    for i in 0..3 {
        let b = env.get(&format!("web-{i}")).await.unwrap();
        assert_eq!(ready(&b), Some(("False", "AuthFailed")), "web-{i}");
    }
    assert!(!op.logs().contains("definitely-wrong"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_orphan_policy_and_the_escape_hatch() {
    let mut env = Env::new("orphan").await;
    let _op = env.operator().arg("--cloud-max-attempts").arg("1").start().await;

    // Orphan from the start: deleting leaves the VIP bound, with no unbind call.
    env.create("keep", NIC, "192.168.0.7", json!({"deletionPolicy": "Orphan"})).await;
    env.wait_ready("keep").await;
    env.delete("keep").await;
    env.wait_gone("keep", Duration::from_secs(20)).await;
    assert!(calls(&env, SimOperation::Unbind).is_empty());
    assert!(env.sim.state().nics.contains_key(NIC), "an orphaned VIP stays bound");

    // A deletion stuck on a cloud that keeps failing is released by switching to Orphan.
    env.create("stuck", NIC2, "192.168.0.8", json!({})).await;
    env.wait_ready("stuck").await;
    env.sim.add_fault(Fault::error(503, "APIGW.0201", 0).on(SimOperation::Unbind));
    env.delete("stuck").await;
    env.wait_for("stuck", Duration::from_secs(15), "stuck terminating", |b| {
        ready(b) == Some(("False", "CloudUnavailable"))
    })
    .await;
    env.patch_spec("stuck", json!({"deletionPolicy": "Orphan"})).await.expect("policy is editable while deleting");
    env.wait_gone("stuck", Duration::from_secs(20)).await;
    assert!(calls(&env, SimOperation::Unbind).iter().all(|c| c.status == 503));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_operator_restarted_between_delete_and_unbind_converges() {
    let mut env = Env::new("restart").await;
    let mut first = env.operator().start().await;
    env.create("web", NIC, "192.168.0.7", json!({})).await;
    env.wait_ready("web").await;
    first.kill().await;

    env.delete("web").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = env.get("web").await.expect("held by the finalizer while no operator runs");
    assert!(b.metadata.deletion_timestamp.is_some());
    assert!(env.sim.state().nics.contains_key(NIC));

    let _second = env.operator().start().await;
    env.wait_gone("web", Duration::from_secs(20)).await;
    assert!(env.sim.state().nics.is_empty(), "no VIP left bound");
    assert_eq!(calls(&env, SimOperation::Bind).len(), 1);
    assert_eq!(calls(&env, SimOperation::Unbind).len(), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_namespace_deletion_unbinds_everything_and_the_namespace_goes() {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, DeleteParams};
    let mut env = Env::new("nsdelete").await;
    let _op = env.operator().start().await;
    for i in 0..3 {
        env.create(&format!("web-{i}"), &format!("nic-{i}"), &format!("192.168.0.{}", 10 + i), json!({})).await;
    }
    for i in 0..3 {
        env.wait_ready(&format!("web-{i}")).await;
    }
    assert_eq!(env.sim.state().nics.len(), 3);
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces.delete(&env.namespace, &DeleteParams::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while namespaces.get_opt(&env.namespace).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "namespace still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(env.sim.state().nics.is_empty(), "{:?}", env.sim.state().nics);
    assert_eq!(calls(&env, SimOperation::Unbind).len(), 3);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_immutable_fields_are_refused_by_the_api() {
    // The CRD's schema and CEL rules are the API server's to enforce: a real one.
    let Some(env) = Env::with("immutable", Needs::RealServer).await else { return };
    let created = env.create("web", NIC, "192.168.0.7", json!({})).await;
    // Schema defaults are applied by the API server.
    assert!(!created.spec.reverse_binding);
    assert_eq!(created.spec.deletion_policy, vip_operator::api::v1alpha1::DeletionPolicy::Unbind);
    for (field, value, message) in [
        ("nicId", json!(NIC2), "nicId is immutable"),
        ("ipAddress", json!("192.168.0.9"), "ipAddress is immutable"),
        ("subnetId", json!("another-network"), "subnetId is immutable"),
        ("region", json!("cn-east-3"), "region is immutable"),
    ] {
        match env.patch_spec("web", json!({ field: value })).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{field}");
                assert!(e.message.contains(message) && e.message.contains("create a new VipBinding"), "{}", e.message);
            }
            other => panic!("{field}: expected 422, got {other:?}"),
        }
    }
    // Bad input on create is refused with the schema's message.
    let mut bad = json!({"apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipBinding", "metadata": {"name": "bad"},
        "spec": {"nicId": NIC2, "ipAddress": "300.1.1.1", "subnetId": harness::SUBNET}});
    let err =
        env.bindings().create(&Default::default(), &serde_json::from_value(bad.take()).unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("ipAddress must be an IPv4 or IPv6 address"), "{err}");
    env.patch_spec("web", json!({"deletionPolicy": "Orphan", "reverseBinding": true})).await.expect("editable fields");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_two_hundred_bindings_each_bound_and_unbound_exactly_once() {
    let mut env = Env::new("fleet").await;
    let _op = env.operator().arg("--concurrency").arg("32").start().await;
    const N: usize = 200;
    let names: Vec<String> = (0..N).map(|i| format!("vip-{i:03}")).collect();
    futures::future::join_all(names.iter().enumerate().map(|(i, n)| {
        let (nic, ip) = (format!("nic-{i:03}"), format!("10.0.{}.{}", i / 250, i % 250 + 1));
        let env = &env;
        async move { env.create(n, &nic, &ip, json!({})).await }
    }))
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let list = env.bindings().list(&Default::default()).await.unwrap();
        if list.items.iter().filter(|b| ready(b) == Some(("True", "Bound"))).count() == N {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not all {N} bindings became Ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(env.sim.state().nics.len(), N);
    futures::future::join_all(names.iter().map(|n| env.delete(n))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !env.bindings().list(&Default::default()).await.unwrap().items.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "bindings left");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(env.sim.state().nics.is_empty());
    let mut per_nic = std::collections::BTreeMap::<String, (usize, usize)>::new();
    for c in env.sim.calls() {
        assert_eq!(c.status, 200, "{c:?}");
        let entry = per_nic.entry(c.nic_id.clone().unwrap()).or_default();
        match c.operation {
            Some(SimOperation::Bind) => entry.0 += 1,
            Some(SimOperation::Unbind) => entry.1 += 1,
            None => panic!("{c:?}"),
        }
    }
    assert_eq!(per_nic.len(), N);
    assert!(per_nic.values().all(|v| *v == (1, 1)), "{per_nic:?}");
    env.cleanup().await;
}

async fn lease_holder(env: &Env) -> Option<String> {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: kube::Api<Lease> = kube::Api::namespaced(env.client.clone(), &env.namespace);
    leases
        .get_opt("vip-operator")
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

async fn wait_until(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_only_the_leader_reconciles_and_a_standby_takes_over() {
    let mut env = Env::new("leader").await;
    let ns = env.namespace.clone();
    let (port_a, port_b) = (free_port(), free_port());
    let election = ["--leader-elect", "--leader-election-namespace", &ns, "--leader-lease-seconds", "4"];
    let mut a = env.operator().args(&election).admin_port(port_a).start().await;
    wait_until(Duration::from_secs(15), "first replica leads", async || lease_holder(&env).await.is_some()).await;
    let mut b = env.operator().args(&election).admin_port(port_b).start().await;

    env.create("web", NIC, "192.168.0.7", json!({})).await;
    env.wait_ready("web").await;
    // The standby is ready (start-up checks passed) but does not lead.
    wait_until(Duration::from_secs(10), "standby ready", async || {
        admin_get(port_b, "/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    let leader_metric = |text: &str| text.lines().any(|l| l == "vipop_leader 1");
    let (_, a_metrics) = admin_get(port_a, "/metrics").await.unwrap();
    let (_, b_metrics) = admin_get(port_b, "/metrics").await.unwrap();
    assert!(leader_metric(&a_metrics) && !leader_metric(&b_metrics), "exactly the first replica leads");
    assert_eq!(calls(&env, SimOperation::Bind).len(), 1, "only the leader reconciles");

    // The leader dies without releasing the lease: the standby takes over within the lease duration.
    a.kill().await;
    let killed_at = tokio::time::Instant::now();
    env.create("web2", NIC2, "192.168.0.8", json!({})).await;
    env.wait_ready("web2").await;
    assert!(killed_at.elapsed() < Duration::from_secs(15), "takeover took {:?}", killed_at.elapsed());
    let (_, b_metrics) = admin_get(port_b, "/metrics").await.unwrap();
    assert!(leader_metric(&b_metrics));
    assert_eq!(calls(&env, SimOperation::Bind).len(), 2);
    let status = b.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}; logs:\n{}", b.logs());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_sigterm_finishes_the_in_flight_call_releases_the_lease_and_exits_0() {
    let mut env = Env::new("sigterm").await;
    let ns = env.namespace.clone();
    let port = free_port();
    let mut op = env
        .operator()
        .arg("--leader-elect")
        .arg("--leader-election-namespace")
        .arg(&ns)
        .arg("--leader-lease-seconds")
        .arg("30")
        .admin_port(port)
        .start()
        .await;
    wait_until(Duration::from_secs(15), "leading", async || lease_holder(&env).await.is_some()).await;
    wait_until(Duration::from_secs(10), "ready", async || {
        admin_get(port, "/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    // The cloud takes 2 s to answer this bind; SIGTERM arrives while it is in flight.
    let mut slow = Fault::error(200, "", 1).on(SimOperation::Bind);
    slow.code = None;
    slow.latency_ms = Some(2000);
    env.sim.add_fault(slow);
    env.create("web", NIC, "192.168.0.7", json!({})).await;
    wait_until(Duration::from_secs(10), "bind in flight", async || !env.sim.calls().is_empty()).await;
    let status = op.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status:?}; logs:\n{}", op.logs());
    // The in-flight call finished and its outcome was recorded before exit.
    let b = env.get("web").await.unwrap();
    assert_eq!(ready(&b), Some(("True", "Bound")), "{:#?}", b.status);
    // The lease was released, so a standby could take over at once.
    assert_eq!(lease_holder(&env).await, None);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_failures_respect_backoff_and_terminal_errors_wait_for_a_change() {
    let mut env = Env::new("backoff").await;
    let _op = env.operator().arg("--cloud-max-attempts").arg("1").start().await;
    // Retryable: the status write after the failure must not trigger an immediate retry.
    env.sim.add_fault(Fault::error(500, "Common.0001", 0).on(SimOperation::Bind).for_nic(NIC));
    // Terminal: retrying the same request cannot help.
    env.sim.add_fault(Fault::error(400, "Ecs.0039", 0).on(SimOperation::Bind).for_nic(NIC2));
    env.create("flaky", NIC, "192.168.0.7", json!({})).await;
    env.create("wrong", NIC2, "192.168.9.9", json!({})).await;
    env.wait_for("flaky", Duration::from_secs(15), "CloudUnavailable", |b| {
        ready(b) == Some(("False", "CloudUnavailable"))
    })
    .await;
    let flaky_failed = tokio::time::Instant::now();
    env.wait_for("wrong", Duration::from_secs(15), "BindFailed", |b| ready(b) == Some(("False", "BindFailed"))).await;
    let wrong_failed = tokio::time::Instant::now();
    let per_nic = |nic: &str| env.sim.calls().iter().filter(|c| c.nic_id.as_deref() == Some(nic)).count();
    // Each is watched for 2 s after its own failure (the two need not fail together: the
    // second call with a new key waits for the first one's answer). The first retry of a 500
    // comes after 2.5–5 s, not on the status write's watch event.
    let mut windows = [(flaky_failed, NIC), (wrong_failed, NIC2)];
    windows.sort();
    for (failed, nic) in windows {
        tokio::time::sleep_until(failed + Duration::from_secs(2)).await;
        assert_eq!(per_nic(nic), 1, "{nic}: {:#?}", env.sim.calls());
    }
    // Fixing the spec (here: another reverseBinding) is what makes the terminal one try again.
    env.sim.clear_faults();
    env.patch_spec("wrong", json!({"reverseBinding": true})).await.unwrap();
    env.wait_ready("wrong").await;
    assert_eq!(per_nic(NIC2), 2);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_install_crd_on_a_cluster_that_never_saw_it_waits_until_it_is_served() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, DeleteParams};
    // The CRD comes and goes cluster-wide: a cluster of its own.
    let Some(mut env) = Env::with("installcrd", Needs::OwnCluster).await else { return };
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    crds.delete(vip_operator::api::v1alpha1::CRD_NAME, &DeleteParams::default()).await.unwrap();
    wait_until(Duration::from_secs(30), "the CRD gone", async || {
        crds.get_opt(vip_operator::api::v1alpha1::CRD_NAME).await.unwrap().is_none()
    })
    .await;
    // `--install-crd` is for `make run`; the chart installs the CRD itself and grants no CRD writes.
    env.chart_rbac = false;
    let port = free_port();
    let mut op = env.operator().arg("--install-crd").admin_port(port).start().await;
    wait_until(Duration::from_secs(30), "ready", async || {
        admin_get(port, "/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    env.create("web", NIC, "192.168.0.7", json!({})).await;
    env.wait_ready("web").await;
    assert!(op.logs().contains("CRD established"), "{}", op.logs());
    let status = op.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}; logs:\n{}", op.logs());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s15_a_leader_cut_off_from_the_api_server_stops_calling_the_cloud_before_a_standby_leads() {
    use vip_operator::simulator::SimCredential;
    const STANDBY_AK: &str = "STANDBYACCESSKEY0001";
    let mut env = Env::new("fence").await;
    let ns = env.namespace.clone();
    // The standby signs with its own key, so the cloud's log tells the two replicas apart.
    env.sim.add_credential(SimCredential {
        access_key: STANDBY_AK.into(),
        secret_key: "standby-secret".into(),
        security_token: None,
    });
    let proxy = harness::ApiProxy::start(&env).await;
    let election = ["--leader-elect", "--leader-election-namespace", &ns, "--leader-lease-seconds", "4"];
    let leader = env.operator().args(&election).kubeconfig(proxy.kubeconfig()).start().await;
    wait_until(Duration::from_secs(15), "first replica leads", async || lease_holder(&env).await.is_some()).await;
    let first = lease_holder(&env).await;
    let _standby = env
        .operator()
        .args(&election)
        .env("HUAWEICLOUD_SDK_AK", STANDBY_AK)
        .env("HUAWEICLOUD_SDK_SK", "standby-secret")
        .start()
        .await;
    env.create("web", NIC, "192.168.0.7", json!({})).await;
    env.wait_ready("web").await;
    // The leader keeps calling the cloud: its unbind fails and is retried.
    env.sim.add_fault(Fault::error(503, "APIGW.0201", 0).on(SimOperation::Unbind));
    env.delete("web").await;
    let from = |key: &str| env.sim.calls().into_iter().filter(|c| c.access_key.as_deref() == Some(key)).count();
    wait_until(Duration::from_secs(10), "the leader retrying its unbind", async || {
        calls(&env, SimOperation::Unbind).len() >= 2
    })
    .await;

    proxy.cut();
    wait_until(Duration::from_secs(20), "the standby takes over", async || {
        lease_holder(&env).await.is_some_and(|h| Some(&h) != first.as_ref())
    })
    .await;
    let at_takeover = from(harness::ACCESS_KEY);
    // Without the fence the cut-off leader would go on retrying (every 2.5-5 s, then slower).
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(from(harness::ACCESS_KEY), at_takeover, "the deposed leader called the cloud:\n{}", leader.logs());
    assert!(leader.logs().contains("LeaderUnconfirmed") || leader.logs().contains("could not confirm"));
    // The new leader finishes the deletion once the cloud recovers.
    env.sim.clear_faults();
    env.wait_gone("web", Duration::from_secs(60)).await;
    assert!(from(STANDBY_AK) >= 1);
    assert!(env.sim.state().nics.is_empty());
    drop(proxy);
    env.cleanup().await;
}
