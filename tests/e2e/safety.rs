//! Deletion safety in the real world: ownership conflicts, credentials lifecycle, uninstall,
//! pause, crash recovery, drift, bad input. Each scenario fails without its feature.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vip_operator::simulator::{Fault, NicState, SimCredential, SimOperation};

use crate::harness::{self, ACCESS_KEY, Env, Needs, SECRET_KEY, free_port, has_finalizer, metric, ready};

const NIC: &str = "5f1d0c2e-7a4b-4c8d-9e0f-112233445566";
const NIC2: &str = "6a2e1d3f-8b5c-4d9e-8f10-223344556677";

fn calls_for(env: &Env, nic: &str, op: SimOperation) -> usize {
    env.sim.calls().iter().filter(|c| c.nic_id.as_deref() == Some(nic) && c.operation == Some(op)).count()
}

async fn ready_message(env: &Env, name: &str) -> String {
    let b = env.get(name).await.unwrap();
    b.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").map(|c| c.message).unwrap_or_default()
}

async fn wait_reason(env: &Env, name: &str, reason: &'static str) -> vip_operator::api::v1alpha1::VipBinding {
    env.wait_for(name, Duration::from_secs(20), reason, move |b| ready(b).map(|r| r.1) == Some(reason)).await
}

async fn create_secret(env: &Env, name: &str, data: serde_json::Value) {
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
    Api::<Secret>::namespaced(env.client.clone(), &env.namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

async fn event_reasons(env: &Env) -> Vec<String> {
    use k8s_openapi::api::events::v1::Event;
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    events
        .list(&Default::default())
        .await
        .map(|l| l.items.into_iter().filter_map(|e| e.reason).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_one_owner_per_nic() {
    let mut env = Env::new("owner").await;
    let _op = env.operator().start().await;
    env.create("first", NIC, "192.168.1.10", json!({})).await;
    env.wait_ready("first").await;
    // Make sure the second is younger (creation timestamps have second granularity).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.create("second", NIC, "192.168.1.20", json!({})).await;
    wait_reason(&env, "second", "Conflict").await;
    let message = ready_message(&env, "second").await;
    assert!(message.contains(&format!("{}/first", env.namespace)), "{message}");
    let second = env.get("second").await.unwrap();
    assert!(!has_finalizer(&second), "a binding that never calls the cloud needs no finalizer");
    assert_eq!(calls_for(&env, NIC, SimOperation::Bind), 1, "the conflicting binding never calls the cloud");

    // Deleting the conflicting one never unbinds the owner's VIP.
    env.delete("second").await;
    env.wait_gone("second", Duration::from_secs(10)).await;
    assert_eq!(calls_for(&env, NIC, SimOperation::Unbind), 0);
    assert_eq!(env.sim.state().nics[NIC].ip_address, "192.168.1.10");

    // When the owner goes, the next in line binds (after the owner's unbind).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.create("third", NIC, "192.168.1.30", json!({})).await;
    wait_reason(&env, "third", "Conflict").await;
    env.delete("first").await;
    env.wait_gone("first", Duration::from_secs(10)).await;
    env.wait_ready("third").await;
    let calls: Vec<_> = env.sim.calls().into_iter().filter(|c| c.nic_id.as_deref() == Some(NIC)).collect();
    let ops: Vec<_> = calls.iter().map(|c| c.operation.unwrap()).collect();
    assert_eq!(ops, vec![SimOperation::Bind, SimOperation::Unbind, SimOperation::Bind]);
    assert_eq!(env.sim.state().nics[NIC].ip_address, "192.168.1.30");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_credentials_outlive_the_bindings_that_need_them() {
    let mut env = Env::new("creds").await;
    // No operator default credentials: the bindings use their namespace's Secret.
    let _op = env.operator().env("HUAWEICLOUD_SDK_AK", "").env("HUAWEICLOUD_SDK_SK", "").start().await;
    create_secret(&env, "hw", json!({"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY})).await;
    for (i, nic) in [NIC, NIC2].iter().enumerate() {
        env.create(
            &format!("web-{i}"),
            nic,
            &format!("192.168.2.{}", 10 + i),
            json!({"credentialsSecretRef": {"name": "hw"}}),
        )
        .await;
    }
    env.wait_ready("web-0").await;
    env.wait_ready("web-1").await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = secrets.get("hw").await.unwrap();
        if s.metadata.finalizers.unwrap_or_default().iter().any(|f| f == "vipoperator.dev/credentials-in-use") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the Secret in use was not protected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Rotation takes effect without a restart.
    env.sim.add_credential(SimCredential {
        access_key: "ROTATEDACCESSKEY0001".into(),
        secret_key: "rotated-secret".into(),
        security_token: None,
    });
    secrets
        .patch(
            "hw",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"accessKey": "ROTATEDACCESSKEY0001", "secretKey": "rotated-secret"}})),
        )
        .await
        .unwrap();
    env.patch_spec("web-0", json!({"reverseBinding": true})).await.unwrap();
    env.wait_for("web-0", Duration::from_secs(15), "re-bound", |b| {
        b.status.as_ref().and_then(|s| s.bound_reverse_binding) == Some(true)
    })
    .await;
    let last = env.sim.calls().into_iter().rev().find(|c| c.operation == Some(SimOperation::Bind)).unwrap();
    assert_eq!(last.access_key.as_deref(), Some("ROTATEDACCESSKEY0001"));

    // Deleting the namespace deletes the Secret and the bindings at once; the unbinds still
    // have their credentials, and the namespace goes.
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces.delete(&env.namespace, &DeleteParams::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while namespaces.get_opt(&env.namespace).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "namespace stuck: {:?}", env.sim.calls());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(env.sim.state().nics.is_empty(), "{:?}", env.sim.state().nics);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2b_without_credentials_the_deletion_waits_visibly_and_orphan_releases_it() {
    let mut env = Env::new("nocreds").await;
    let port = free_port();
    let _op = env
        .operator()
        .env("HUAWEICLOUD_SDK_AK", "")
        .env("HUAWEICLOUD_SDK_SK", "")
        .arg("--protect-credentials=false")
        .admin_port(port)
        .start()
        .await;
    create_secret(&env, "hw", json!({"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY})).await;
    env.create("web", NIC, "192.168.3.10", json!({"credentialsSecretRef": {"name": "hw"}})).await;
    env.wait_ready("web").await;
    Api::<Secret>::namespaced(env.client.clone(), &env.namespace).delete("hw", &DeleteParams::default()).await.unwrap();
    env.delete("web").await;
    wait_reason(&env, "web", "CredentialsUnavailable").await;
    assert!(ready_message(&env, "web").await.contains("not found"));
    assert!(event_reasons(&env).await.iter().any(|r| r == "CredentialsUnavailable"));
    assert!(metric(port, "vipop_credentials_unavailable_total").await >= 1.0);
    // The escape hatch.
    env.patch_spec("web", json!({"deletionPolicy": "Orphan"})).await.unwrap();
    env.wait_gone("web", Duration::from_secs(10)).await;
    assert_eq!(calls_for(&env, NIC, SimOperation::Unbind), 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_uninstall_does_not_unbind_the_fleet() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    // Deleting the cluster-wide CRD would disturb every other scenario: a cluster of its own.
    let Some(mut env) = Env::with("uninstall", Needs::OwnCluster).await else { return };
    let _op = env.operator().start().await;
    env.create("web-0", NIC, "192.168.4.10", json!({})).await;
    env.create("web-1", NIC2, "192.168.4.11", json!({})).await;
    env.wait_ready("web-0").await;
    env.wait_ready("web-1").await;
    let history = env.history("web-0").await;
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    crds.delete(vip_operator::api::v1alpha1::CRD_NAME, &DeleteParams::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while crds.get_opt(vip_operator::api::v1alpha1::CRD_NAME).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "CRD deletion stuck");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    history.wait_deleted().await;
    assert_eq!(env.sim.state().nics.len(), 2, "VIPs stay bound when the operator is uninstalled");
    assert!(env.sim.calls().iter().all(|c| c.operation == Some(SimOperation::Bind)));
    assert!(history.ready_reasons().contains(&"Orphaned".to_string()), "{:?}", history.ready_reasons());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_pause_stops_cloud_calls_and_a_paused_deletion_waits_visibly() {
    let mut env = Env::new("pause").await;
    let _op = env.operator().start().await;
    let paused = json!({"metadata": {"annotations": {"vipoperator.dev/paused": "true"}}});
    let unpaused = json!({"metadata": {"annotations": {"vipoperator.dev/paused": null}}});
    let bindings = env.bindings();
    env.create("web", NIC, "192.168.5.10", json!({})).await;
    env.wait_ready("web").await;
    bindings.patch("web", &PatchParams::default(), &Patch::Merge(&paused)).await.unwrap();
    wait_reason(&env, "web", "Paused").await;
    env.sim.set_nic(NIC, None); // drift while paused is not corrected
    env.delete("web").await;
    wait_reason(&env, "web", "DeletionPaused").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.get("web").await.is_some(), "a paused deletion waits");
    assert_eq!(calls_for(&env, NIC, SimOperation::Unbind), 0);
    assert!(event_reasons(&env).await.iter().any(|r| r == "DeletionPaused"));
    assert!(ready_message(&env, "web").await.contains("Orphan"), "the message names the escape hatch");
    bindings.patch("web", &PatchParams::default(), &Patch::Merge(&unpaused)).await.unwrap();
    env.wait_gone("web", Duration::from_secs(15)).await;
    assert_eq!(calls_for(&env, NIC, SimOperation::Unbind), 1);
    assert_eq!(calls_for(&env, NIC, SimOperation::Bind), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_crash_between_the_cloud_call_and_the_status_write_converges() {
    let mut env = Env::new("crash").await;
    // The cloud applies the bind, then holds its answer; the operator dies meanwhile.
    let mut hold = Fault::error(200, "", 1).on(SimOperation::Bind);
    hold.code = None;
    hold.latency_ms = Some(3000);
    env.sim.add_fault(hold);
    let mut first = env.operator().start().await;
    env.create("web", NIC, "192.168.6.10", json!({})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while env.sim.state().nics.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "bind never reached the cloud");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().await;
    let b = env.get("web").await.unwrap();
    assert!(has_finalizer(&b) && b.status.is_none(), "crashed after the call, before the status write");

    let mut second = env.operator().start().await;
    env.wait_ready("web").await;
    let state = env.sim.state();
    assert_eq!(state.nics[NIC].ip_address, "192.168.6.10");
    assert_eq!(calls_for(&env, NIC, SimOperation::Bind), 2, "one idempotent re-bind, nothing else");

    // Same for the unbind.
    let mut hold = Fault::error(200, "", 1).on(SimOperation::Unbind);
    hold.code = None;
    hold.latency_ms = Some(3000);
    env.sim.add_fault(hold);
    env.delete("web").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !env.sim.state().nics.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "unbind never reached the cloud");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.kill().await;
    assert!(env.get("web").await.is_some(), "still held by the finalizer");
    let _third = env.operator().start().await;
    env.wait_gone("web", Duration::from_secs(15)).await;
    assert!(env.sim.state().nics.is_empty());
    assert_eq!(calls_for(&env, NIC, SimOperation::Unbind), 2);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d6_drift_is_corrected_except_for_paused_bindings() {
    let mut env = Env::new("drift").await;
    let port = free_port();
    let _op = env.operator().arg("--resync-period").arg("1s").admin_port(port).start().await;
    env.create("web", NIC, "192.168.7.10", json!({})).await;
    env.create("held", NIC2, "192.168.7.11", json!({})).await;
    env.wait_ready("web").await;
    env.wait_ready("held").await;
    env.bindings()
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"vipoperator.dev/paused": "true"}}})),
        )
        .await
        .unwrap();
    wait_reason(&env, "held", "Paused").await;
    // Someone removes both VIPs behind the operator's back.
    env.sim.set_nic(NIC, None);
    env.sim.set_nic(NIC2, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !env.sim.state().nics.contains_key(NIC) {
        assert!(tokio::time::Instant::now() < deadline, "drift not corrected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        env.sim.state().nics[NIC],
        NicState {
            project_id: harness::PROJECT.into(),
            ip_address: "192.168.7.10".into(),
            subnet_id: harness::SUBNET.into(),
            reverse_binding: false
        }
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!env.sim.state().nics.contains_key(NIC2), "a paused binding is never re-asserted");
    assert!(metric(port, "vipop_drift_reasserts_total").await >= 1.0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d7_bad_input_never_reaches_the_cloud() {
    let mut env = Env::new("badinput").await;
    let _op = env.operator().start().await;
    // A Secret with a missing key, and one whose project ID would change the request path.
    create_secret(&env, "no-sk", json!({"accessKey": ACCESS_KEY})).await;
    create_secret(
        &env,
        "bad-project",
        json!({"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY, "projectId": "../../admin"}),
    )
    .await;
    let no_project = json!({"projectId": null});
    env.create("a", NIC, "192.168.8.10", json!({"credentialsSecretRef": {"name": "no-sk"}})).await;
    let mut b_spec = json!({"credentialsSecretRef": {"name": "bad-project"}});
    b_spec.as_object_mut().unwrap().extend(no_project.as_object().unwrap().clone());
    env.create("b", NIC2, "192.168.8.11", b_spec).await;
    wait_reason(&env, "a", "Invalid").await;
    wait_reason(&env, "b", "Invalid").await;
    let a = ready_message(&env, "a").await;
    assert!(a.contains("key `secretKey` is missing"), "{a}");
    let b = ready_message(&env, "b").await;
    assert!(b.contains("projectId") && b.contains("contains '/'"), "{b}");
    // A real API server refuses the rest before the operator sees it (the CRD's schema; the
    // fake does not model it).
    if !env.is_fake() {
        let err = env
            .bindings()
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipBinding",
                    "metadata": {"name": "c"}, "spec": {"nicId": "../x", "ipAddress": "10.0.0.1", "subnetId": "s"}}))
                .unwrap(),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nicId"), "{err}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.sim.calls().is_empty(), "{:?}", env.sim.calls());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d8_a_binding_waiting_for_its_secret_binds_as_soon_as_it_appears() {
    let mut env = Env::new("latesecret").await;
    let _op = env.operator().env("HUAWEICLOUD_SDK_AK", "").env("HUAWEICLOUD_SDK_SK", "").start().await;
    env.create("web", NIC, "192.168.9.10", json!({"credentialsSecretRef": {"name": "later"}})).await;
    wait_reason(&env, "web", "CredentialsUnavailable").await;
    // The backoff for missing credentials starts at 15-30 s; the Secret's arrival cuts it short.
    let created = std::time::Instant::now();
    create_secret(&env, "later", json!({"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY})).await;
    env.wait_ready("web").await;
    assert!(created.elapsed() < Duration::from_secs(10), "took {:?}", created.elapsed());
    assert_eq!(calls_for(&env, NIC, SimOperation::Bind), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d9_a_gateway_404_is_no_evidence_the_nic_is_gone_and_never_releases() {
    let mut env = Env::new("gateway404").await;
    let mut op = env.operator().start().await;
    env.create("web", NIC, "192.168.10.10", json!({})).await;
    env.wait_ready("web").await;
    op.kill().await;
    // A wrong endpoint path: the API gateway answers 404 APIGW.0101 for an API it does not know.
    let wrong = format!("{}/typo", env.sim.url());
    let mut op = env.operator().endpoint(&wrong).start().await;
    env.delete("web").await;
    let held = wait_reason(&env, "web", "EndpointNotFound").await;
    assert!(has_finalizer(&held));
    let message = ready_message(&env, "web").await;
    assert!(message.contains("APIGW.0101") && message.contains("request id"), "{message}");
    assert!(env.sim.state().nics.contains_key(NIC), "the VIP is still bound, so the binding must stay");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(env.get("web").await.is_some(), "held, not released");
    assert!(event_reasons(&env).await.iter().any(|r| r == "EndpointNotFound"));
    // With the endpoint fixed, the deletion unbinds.
    op.kill().await;
    let _op = env.operator().start().await;
    env.wait_gone("web", Duration::from_secs(20)).await;
    assert!(env.sim.state().nics.is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d10_a_huge_retry_after_neither_crashes_the_operator_nor_stops_other_bindings() {
    let mut env = Env::new("retryafter").await;
    let mut op = env.operator().start().await;
    let mut fault = Fault::error(429, "APIGW.0308", 0).on(SimOperation::Bind).for_nic(NIC);
    fault.retry_after = Some(u64::MAX);
    env.sim.add_fault(fault);
    env.create("throttled", NIC, "192.168.10.11", json!({})).await;
    wait_reason(&env, "throttled", "Throttled").await;
    env.create("fine", NIC2, "192.168.10.12", json!({})).await;
    env.wait_ready("fine").await;
    let status = op.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}; logs:\n{}", op.logs());
    assert!(!op.logs().contains("panicked"), "{}", op.logs());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d11_bindings_waiting_for_a_key_probe_do_not_take_the_workers_of_other_keys() {
    let mut env = Env::new("probeslots").await;
    env.sim.add_credential(SimCredential {
        access_key: "OTHERACCESSKEY000001".into(),
        secret_key: "other-secret".into(),
        security_token: None,
    });
    create_secret(&env, "other", json!({"accessKey": "OTHERACCESSKEY000001", "secretKey": "other-secret"})).await;
    let _op = env.operator().args(&["--concurrency", "2"]).start().await;
    // The first call with the operator's own key (an unproven key: the probe) takes 3 s.
    let nics: Vec<String> = (0..3).map(|i| format!("{NIC}-{i}")).collect();
    for nic in &nics {
        let mut slow = Fault::error(200, "", 1).on(SimOperation::Bind).for_nic(nic);
        slow.code = None;
        slow.latency_ms = Some(3000);
        env.sim.add_fault(slow);
    }
    for (i, nic) in nics.iter().enumerate() {
        env.create(&format!("a-{i}"), nic, &format!("192.168.11.{}", 10 + i), json!({})).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while env.sim.calls().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no probe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While the probe is in flight, a binding with another key binds at once: the bindings
    // waiting for the probe hold no worker.
    let created = std::time::Instant::now();
    env.create("b", NIC2, "192.168.11.20", json!({"credentialsSecretRef": {"name": "other"}})).await;
    env.wait_ready("b").await;
    assert!(created.elapsed() < Duration::from_millis(2000), "took {:?}", created.elapsed());
    for i in 0..3 {
        env.wait_ready(&format!("a-{i}")).await;
    }
    // One probe, then the rest: exactly one bind per binding.
    assert_eq!(env.sim.calls().len(), 4, "{:#?}", env.sim.calls());
    env.cleanup().await;
}
