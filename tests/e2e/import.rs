//! `vip-operator import` end to end, on a real API server: VIPs bound behind the operator's
//! back in the simulator, the real binary's output applied to the API server (which validates
//! it against the CRDs), then the operator adopting what was imported.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use vip_operator::simulator::{PortOperation, SimAddressPair, SimNic, SimPort};

use crate::harness::{ACCESS_KEY, Env, Needs, PROJECT, REGION, SECRET_KEY, SUBNET, ready};

const CHECK_OFF: &str = "1.1.1.1/0";

fn uuid() -> String {
    let h = format!("{:032x}", rand::random::<u128>());
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn pair(ip: &str) -> SimAddressPair {
    SimAddressPair { ip_address: ip.into(), mac_address: None }
}

/// What one run of the binary printed, and how it ended.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn skipped(&self) -> Vec<&str> {
        self.stderr.lines().filter_map(|l| l.strip_prefix("skipped: ")).collect()
    }
}

/// `vip-operator import` against the scenario's simulator, with the harness's keys in the
/// environment (as an operator would set them) and nothing else.
async fn import(env: &Env, extra: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vip-operator"))
        .arg("import")
        .args(["--vpc-endpoint", &env.sim.url(), "--project-id", PROJECT, "--region", REGION])
        .args(["--namespace", &env.namespace, "--name-prefix", "imp-"])
        .args(extra)
        .env_clear()
        .env("HUAWEICLOUD_SDK_AK", ACCESS_KEY)
        .env("HUAWEICLOUD_SDK_SK", SECRET_KEY)
        .env("KUBECONFIG", env.kubeconfig_path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run vip-operator import");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// Applies every document of `yaml` as `kubectl apply --server-side` would: the API server
/// validates each against its CRD.
async fn apply(env: &Env, yaml: &str) -> Vec<(String, String)> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).expect("the output is YAML");
    let mut applied = vec![];
    for doc in docs {
        let kind = doc["kind"].as_str().expect("kind").to_string();
        let name = doc["metadata"]["name"].as_str().expect("name").to_string();
        assert_eq!(doc["metadata"]["namespace"].as_str(), Some(env.namespace.as_str()));
        let gvk = GroupVersionKind::gvk("vipoperator.dev", "v1alpha1", &kind);
        let api: Api<DynamicObject> =
            Api::namespaced_with(env.client.clone(), &env.namespace, &ApiResource::from_gvk(&gvk));
        let object: DynamicObject = serde_json::from_value(doc).expect("an object");
        api.patch(&name, &PatchParams::apply("kubectl"), &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
        applied.push((kind, name));
    }
    applied
}

fn writes(env: &Env) -> usize {
    env.sim
        .calls()
        .iter()
        .filter(|c| c.port_operation == Some(PortOperation::UpdatePort) || c.operation.is_some())
        .count()
}

/// 10 VIPs × 5 NICs, bound in the cloud, plus entries that are no binding: the import prints
/// 50 VipBindings (3 listings, no write), reports the rest, prints the same bytes twice; the
/// API server takes the output; the operator then finds every binding bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i01_fifty_bound_pairs_import_apply_and_adopt() {
    let Some(mut env) = Env::with("import", Needs::RealServer).await else { return };
    let mut nics = vec![];
    for i in 0..50u8 {
        let (server, nic, ip) = (uuid(), uuid(), format!("192.168.1.{}", i + 10));
        env.sim.add_server(PROJECT, &server, &[SimNic::new(&nic, SUBNET, &ip)]).unwrap();
        // As the console leaves a bound NIC: its source check off.
        assert!(env.sim.set_allowed_address_pairs(&nic, vec![pair(CHECK_OFF)]));
        nics.push((nic, ip));
    }
    for v in 0..10usize {
        let id = format!("vip-port-{v}");
        env.sim.set_port(SimPort::vip(&id, PROJECT, SUBNET, "subnet-v4", &format!("192.168.0.{}", 100 + v))).unwrap();
        let mut pairs: Vec<SimAddressPair> = nics[v * 5..v * 5 + 5].iter().map(|(_, ip)| pair(ip)).collect();
        match v {
            0 => pairs.push(pair(CHECK_OFF)),
            1 => {
                pairs.push(SimAddressPair { ip_address: String::new(), mac_address: Some("fa:16:3e:00:00:99".into()) })
            }
            2 => pairs.push(pair("10.0.0.0/24")),
            3 => pairs.push(pair("192.168.9.9")),
            _ => {}
        }
        assert!(env.sim.set_allowed_address_pairs(&id, pairs));
    }
    let before = env.sim.calls().len();

    let run = import(&env, &[]).await;
    assert!(run.ok, "{}", run.stderr);
    let calls = env.sim.calls().split_off(before);
    assert_eq!(
        calls.iter().map(|c| c.port_operation).collect::<Vec<_>>(),
        vec![Some(PortOperation::ListPorts); 3],
        "one listing of VIP ports, two by address (the 50 NICs' and 192.168.9.9: 50 a listing): {calls:#?}"
    );
    assert!(calls.iter().all(|c| c.method == "GET" && c.status == 200));
    assert_eq!(writes(&env), 0, "an import writes nothing");
    assert_eq!(
        run.skipped(),
        [
            r#"VIP 192.168.0.100 (port vip-port-0): pair "1.1.1.1/0": foreign: 1.1.1.1/0 turns a NIC's source check off; on a VIP port it binds nothing"#,
            r#"VIP 192.168.0.101 (port vip-port-1): pair "": a MAC-only pair (no address): no NIC to name"#,
            r#"VIP 192.168.0.102 (port vip-port-2): pair "10.0.0.0/24": a CIDR, not one NIC's address"#,
            &format!(
                "VIP 192.168.0.103 (port vip-port-3): pair 192.168.9.9: no port in network {SUBNET} holds this address"
            ),
        ]
    );
    assert_eq!(run.stdout.matches("\nkind: VipBinding\n").count(), 50);
    let again = import(&env, &[]).await;
    assert_eq!(again.stdout, run.stdout, "the same cloud prints the same bytes");
    assert_eq!(again.stderr, run.stderr);

    let applied = apply(&env, &run.stdout).await;
    assert_eq!(applied.len(), 50);
    let names: BTreeSet<&str> = applied.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names.len(), 50, "names are unique");
    assert_eq!(writes(&env), 0);

    // Printed as Observe: the operator reads each pair, finds it bound, writes nothing.
    let before_operator = env.sim.calls().len();
    let _op = env.operator().start().await;
    for (_, name) in &applied {
        let b = env.wait_for(name, Duration::from_secs(60), "Ready", |b| ready(b) == Some(("True", "Observed"))).await;
        assert_eq!(b.spec.deletion_policy, vip_operator::api::v1alpha1::DeletionPolicy::Orphan);
        assert_eq!(b.spec.management_policy, vip_operator::api::v1alpha1::ManagementPolicy::Observe);
    }
    assert_eq!(writes(&env), 0, "observing writes nothing");
    // Reviewed and handed over: switched to Manage, each is adopted with reads only.
    for (_, name) in &applied {
        let manage = serde_json::json!({"spec": {"managementPolicy": "Manage"}});
        env.bindings().patch(name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(manage)).await.unwrap();
    }
    for (_, name) in &applied {
        env.wait_for(name, Duration::from_secs(60), "Ready", |b| ready(b) == Some(("True", "Bound"))).await;
    }
    let updates = writes(&env);
    let reads = env.sim.calls().len().saturating_sub(before_operator).saturating_sub(updates);
    eprintln!("observing, then adopting, 50 imported bindings made {updates} cloud writes and {reads} reads");
    assert_eq!(updates, 0, "adopting what is bound writes nothing");
    env.cleanup().await;
}

/// `--group-by-selector`: a VIP bound to exactly the nodes of one label value is one VipGroup;
/// one bound to some of them stays VipBindings, and stderr says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i02_group_by_selector_prints_a_group_for_a_whole_label_value() {
    let Some(env) = Env::with("importgroup", Needs::RealServer).await else { return };
    // Nodes are cluster-wide: the label key is this scenario's own.
    let label = env.namespace.clone();
    let nodes: Api<Node> = Api::all(env.client.clone());
    let mut made = vec![];
    let mut ips = vec![];
    for n in 0..3u8 {
        let (server, nic, ip) = (uuid(), uuid(), format!("192.168.1.{}", n + 10));
        env.sim.add_server(PROJECT, &server, &[SimNic::new(&nic, SUBNET, &ip)]).unwrap();
        let name = format!("{}-n{n}", env.namespace);
        // One by providerID with a zone, one by annotation, one naming its NIC.
        let (provider, annotations) = match n {
            0 => (Some(format!("huaweicloud:///cn-north-4a/{server}")), json!({})),
            1 => (None, json!({"vipoperator.dev/server-id": server})),
            _ => (None, json!({"vipoperator.dev/nic-id": nic})),
        };
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {label.as_str(): "lb"}, "annotations": annotations},
            "spec": {"providerID": provider},
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.expect("create node");
        made.push(name);
        ips.push(ip);
    }
    env.sim.set_port(SimPort::vip("vip-all", PROJECT, SUBNET, "subnet-v4", "192.168.0.50")).unwrap();
    env.sim.set_port(SimPort::vip("vip-some", PROJECT, SUBNET, "subnet-v4", "192.168.0.51")).unwrap();
    assert!(env.sim.set_allowed_address_pairs("vip-all", ips.iter().map(|ip| pair(ip)).collect()));
    assert!(env.sim.set_allowed_address_pairs("vip-some", ips[..2].iter().map(|ip| pair(ip)).collect()));

    let run = import(&env, &["--group-by-selector", &label]).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout.matches("\nkind: VipGroup\n").count(), 1, "{}", run.stdout);
    assert_eq!(run.stdout.matches("\nkind: VipBinding\n").count(), 2, "{}", run.stdout);
    assert_eq!(
        run.skipped(),
        [format!(
            "VIP 192.168.0.51 (port vip-some): not grouped, bindings instead: {label}=lb also selects node(s) {} that the VIP is not bound to: a group would bind it there",
            made[2]
        )]
    );
    let applied = apply(&env, &run.stdout).await;
    assert_eq!(applied.iter().filter(|(k, _)| k == "VipGroup").count(), 1);
    assert_eq!(writes(&env), 0);
    // JSON: one v1 List of the same objects.
    let json_run = import(&env, &["--group-by-selector", &label, "-o", "json"]).await;
    let list: serde_json::Value = serde_json::from_str(&json_run.stdout).expect("JSON");
    assert_eq!((list["apiVersion"].as_str(), list["kind"].as_str()), (Some("v1"), Some("List")));
    assert_eq!(list["items"].as_array().map(Vec::len), Some(3));
    for name in made {
        let _ = nodes.delete(&name, &DeleteParams::default()).await;
    }
    env.cleanup().await;
}

/// Failures are one line and a non-zero exit: no credentials; the cloud refusing the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i03_failures_are_one_clear_line() {
    let Some(env) = Env::with("importfail", Needs::RealServer).await else { return };
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vip-operator"))
        .args(["import", "--vpc-endpoint", &env.sim.url(), "--project-id", PROJECT, "--region", REGION])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: no credentials: set HUAWEICLOUD_SDK_AK"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vip-operator"))
        .args(["import", "--vpc-endpoint", &env.sim.url(), "--project-id", PROJECT, "--region", REGION])
        .env_clear()
        .env("HUAWEICLOUD_SDK_AK", ACCESS_KEY)
        .env("HUAWEICLOUD_SDK_SK", "definitely-wrong")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].starts_with("error: the cloud refused to list ports: ") && errors[0].contains("APIGW.0301"),
        "{stderr}"
    );
    assert!(!stderr.contains("definitely-wrong") && !stderr.contains("Signature="), "{stderr}");
    assert!(out.stdout.is_empty());
    env.cleanup().await;
}
