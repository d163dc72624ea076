//! Tenancy on a real API server: who may use the operator's default credentials, which projects
//! a namespace may target, and that narrowing the policy never traps a deletion.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use vip_operator::simulator::SimOperation;

use crate::harness::{self, Env, Needs, ready};
use crate::{NIC, calls};

const LABEL: &str = "vipoperator.dev/default-credentials";
const SELECTOR: &str = "--default-credentials-namespace-selector=vipoperator.dev/default-credentials=allowed";

/// Sets (or, with `null`, removes) labels and annotations on the scenario's namespace, as a
/// cluster admin would.
async fn admin_edits_namespace(env: &Env, metadata: serde_json::Value) {
    Api::<Namespace>::all(env.client.clone())
        .patch(&env.namespace, &PatchParams::default(), &Patch::Merge(json!({ "metadata": metadata })))
        .await
        .expect("patch the namespace");
}

async fn wait_reason(env: &Env, name: &str, reason: &str) -> String {
    let b = env.wait_for(name, Duration::from_secs(20), reason, |b| ready(b).is_some_and(|(_, r)| r == reason)).await;
    b.condition("Ready").map(|c| c.message.clone()).unwrap_or_default()
}

async fn warning_reasons(env: &Env) -> Vec<String> {
    use k8s_openapi::api::events::v1::Event;
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    let list = events.list(&Default::default()).await.expect("list events");
    list.items.into_iter().filter(|e| e.type_.as_deref() == Some("Warning")).filter_map(|e| e.reason).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_a_namespace_must_be_granted_the_default_credentials_and_a_label_grants_them_live() {
    let Some(mut env) = Env::with("tenancy-grant", Needs::RealServer).await else { return };
    let _op = env.operator().arg(SELECTOR).start().await;
    env.create("web", NIC, "192.168.0.7", json!({})).await;
    let message = wait_reason(&env, "web", "DefaultCredentialsNotAllowed").await;
    let hint = format!("kubectl label namespace {} {LABEL}=allowed", env.namespace);
    assert!(message.contains(&hint), "{message}");
    assert!(env.sim.calls().is_empty(), "no cloud call: {:#?}", env.sim.calls());
    let b = env.get("web").await.expect("binding");
    assert!(!harness::has_finalizer(&b), "nothing was sent, so nothing needs a finalizer");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !warning_reasons(&env).await.iter().any(|r| r == "DefaultCredentialsNotAllowed") {
        assert!(tokio::time::Instant::now() < deadline, "no Warning event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The admin grants the namespace: the same binding binds, without a restart.
    admin_edits_namespace(&env, json!({"labels": {LABEL: "allowed"}})).await;
    env.wait_ready("web").await;
    assert_eq!(calls(&env, SimOperation::Bind).len(), 1);
    env.assert_no_secrets_leaked().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_a_project_outside_the_namespace_scope_is_refused_before_any_cloud_call() {
    let Some(mut env) = Env::with("tenancy-project", Needs::RealServer).await else { return };
    admin_edits_namespace(
        &env,
        json!({"labels": {LABEL: "allowed"}, "annotations": {"vipoperator.dev/allowed-projects": "another-project"}}),
    )
    .await;
    let _op = env.operator().arg(SELECTOR).start().await;
    env.create("web", NIC, "192.168.0.7", json!({})).await;
    let message = wait_reason(&env, "web", "ProjectNotAllowed").await;
    assert!(message.contains(harness::PROJECT) && message.contains("another-project"), "{message}");
    assert!(env.sim.calls().is_empty(), "no cloud call: {:#?}", env.sim.calls());
    // Allowing the project lets it bind, again without a restart.
    let allowed = format!("another-project,{}", harness::PROJECT);
    admin_edits_namespace(&env, json!({"annotations": {"vipoperator.dev/allowed-projects": allowed}})).await;
    env.wait_ready("web").await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t3_narrowing_the_policy_after_a_bind_still_lets_the_deletion_unbind() {
    let Some(mut env) = Env::with("tenancy-narrow", Needs::RealServer).await else { return };
    admin_edits_namespace(&env, json!({"labels": {LABEL: "allowed"}})).await;
    let _op = env.operator().arg(SELECTOR).start().await;
    env.create("web", NIC, "192.168.0.7", json!({})).await;
    let b = env.wait_ready("web").await;
    let recorded = b.status.as_ref().and_then(|s| s.bound_with.clone()).expect("status.boundWith");
    assert_eq!((recorded.project_id.as_str(), recorded.credentials_secret), (harness::PROJECT, None));

    // The spec now names a Secret that does not exist: re-resolving the spec could not unbind,
    // so only the record can.
    env.patch_spec("web", json!({"credentialsSecretRef": {"name": "never-created"}})).await.expect("patch spec");
    // The admin takes the default credentials away and scopes the namespace to another project.
    admin_edits_namespace(
        &env,
        json!({"labels": {LABEL: null}, "annotations": {"vipoperator.dev/allowed-projects": "another-project"}}),
    )
    .await;
    let history = env.history("web").await;
    env.delete("web").await;
    env.wait_gone("web", Duration::from_secs(20)).await;
    history.wait_deleted().await;
    let unbinds = calls(&env, SimOperation::Unbind);
    assert_eq!(unbinds.len(), 1, "{unbinds:#?}");
    assert_eq!(unbinds[0].path, format!("/v1/{}/cloudservers/nics/{NIC}", harness::PROJECT));
    assert_eq!(unbinds[0].status, 200);
    assert!(env.sim.state().nics.is_empty(), "the VIP is unbound");
    env.cleanup().await;
}
