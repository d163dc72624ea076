//! VIP groups end to end, on a real API server: Node objects are created through the API (no
//! kubelet), their servers and NICs in the simulator; a group binds its VIP to every matching
//! node's NIC through member VipBindings and follows the nodes as they come and go.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vip_operator::api::group::VipGroup;
use vip_operator::api::v1alpha1::VipBinding;
use vip_operator::simulator::{SimNic, SimPort};

use crate::harness::{Env, Needs, PROJECT, REGION, SUBNET, ready};

pub(crate) const VIP: &str = "192.168.0.50";
const OTHER_VIP: &str = "192.168.0.51";
pub(crate) const VIP_PORT: &str = "vip-port-group";
const CHECK_OFF: &str = "1.1.1.1/0";

fn uuid() -> String {
    let r: u128 = rand::random();
    let h = format!("{r:032x}");
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// One node of a scenario: its Node object's name, its server, its NIC and the NIC's IP.
#[derive(Clone, Debug)]
pub(crate) struct TestNode {
    pub name: String,
    pub server: String,
    pub nic: String,
    pub ip: String,
}

pub(crate) struct Fleet {
    nodes: Api<Node>,
    /// The label every node of this scenario carries (nodes are cluster-wide; scenarios share
    /// the control plane).
    pub pool: String,
    made: Vec<String>,
}

impl Fleet {
    pub(crate) fn new(env: &Env) -> Self {
        env.sim.set_port(SimPort::vip(VIP_PORT, PROJECT, SUBNET, "subnet-v4", VIP)).unwrap();
        Self { nodes: Api::all(env.client.clone()), pool: env.namespace.clone(), made: vec![] }
    }

    /// A server with one NIC in the VIP's network, and its Node (`role=lb` when `in_pool`).
    pub(crate) async fn node(&mut self, env: &Env, n: u8, in_pool: bool) -> TestNode {
        let server = uuid();
        let nic = uuid();
        let ip = format!("192.168.1.{n}");
        env.sim.add_server(PROJECT, &server, &[SimNic::new(&nic, SUBNET, &ip)]).unwrap();
        let name = format!("{}-n{n}", self.pool);
        self.create_node(&name, Some(&format!("huaweicloud://{server}")), in_pool, &[]).await;
        TestNode { name, server, nic, ip }
    }

    async fn create_node(
        &mut self,
        name: &str,
        provider_id: Option<&str>,
        in_pool: bool,
        annotations: &[(&str, &str)],
    ) {
        let mut labels = json!({"pool": self.pool});
        if in_pool {
            labels["role"] = json!("lb");
        }
        let annotations: serde_json::Map<String, serde_json::Value> =
            annotations.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"providerID": provider_id},
        }))
        .unwrap();
        self.nodes.create(&PostParams::default(), &node).await.expect("create node");
        self.made.push(name.to_string());
    }

    async fn label(&self, node: &str, in_pool: bool) {
        let role = if in_pool { json!("lb") } else { serde_json::Value::Null };
        let patch = json!({"metadata": {"labels": {"role": role}}});
        self.nodes.patch(node, &PatchParams::default(), &Patch::Merge(patch)).await.expect("label node");
    }

    async fn delete_node(&self, node: &str) {
        self.nodes.delete(node, &DeleteParams::default()).await.expect("delete node");
    }

    /// A status report, as a kubelet's heartbeat writes it: groups must not notice.
    async fn heartbeat(&self, node: &str) {
        let now = jiff::Timestamp::now().to_string();
        let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
        self.nodes.patch_status(node, &PatchParams::default(), &Patch::Merge(patch)).await.expect("heartbeat");
    }

    pub(crate) async fn cleanup(self) {
        for name in &self.made {
            let _ = self.nodes.delete(name, &DeleteParams::default()).await;
        }
    }
}

fn groups(env: &Env) -> Api<VipGroup> {
    Api::namespaced(env.client.clone(), &env.namespace)
}

pub(crate) async fn create_group(env: &Env, name: &str, vip: &str, pool: &str) {
    let g: VipGroup = serde_json::from_value(json!({
        "apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipGroup",
        "metadata": {"name": name},
        "spec": {"ipAddress": vip, "subnetId": SUBNET, "projectId": PROJECT, "region": REGION,
                 "nodeSelector": {"matchLabels": {"role": "lb", "pool": pool}}},
    }))
    .unwrap();
    groups(env).create(&PostParams::default(), &g).await.expect("create group");
}

pub(crate) fn vip_pairs(env: &Env) -> BTreeSet<String> {
    env.sim.port(VIP_PORT).expect("VIP port").allowed_address_pairs.into_iter().map(|p| p.ip_address).collect()
}

fn nic_pairs(env: &Env, nic: &str) -> Vec<String> {
    env.sim.port(nic).map(|p| p.allowed_address_pairs.into_iter().map(|p| p.ip_address).collect()).unwrap_or_default()
}

async fn members(env: &Env, group: &str) -> Vec<VipBinding> {
    let lp = kube::api::ListParams::default().labels(&format!("vipoperator.dev/group={group}"));
    env.bindings().list(&lp).await.expect("list members").items
}

pub(crate) async fn until<F: AsyncFn() -> bool>(what: &str, within: Duration, check: F) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn ips(nodes: &[&TestNode]) -> BTreeSet<String> {
    nodes.iter().map(|n| n.ip.clone()).collect()
}

async fn group_status(env: &Env, name: &str) -> Option<vip_operator::api::group::VipGroupStatus> {
    groups(env).get_opt(name).await.ok().flatten().and_then(|g| g.status)
}

pub(crate) async fn all_bound(env: &Env, group: &str, n: u32) -> bool {
    let Some(s) = group_status(env, group).await else { return false };
    let ready = s.condition("Ready").is_some_and(|c| c.status == "True");
    ready && s.bound == n && s.desired == n && members(env, group).await.iter().all(ready_true)
}

fn ready_true(b: &VipBinding) -> bool {
    ready(b).is_some_and(|(s, _)| s == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_group_follows_its_nodes_and_its_deletion_unbinds_every_member() {
    let Some(mut env) = Env::with("group-follow", Needs::RealServer).await else { return };
    let mut fleet = Fleet::new(&env);
    let (a, b, c) = (fleet.node(&env, 1, true).await, fleet.node(&env, 2, true).await, fleet.node(&env, 3, true).await);
    let outsider = fleet.node(&env, 4, false).await;
    // With exactly the chart's RBAC: the group's requests must be granted by a real API server.
    let kubeconfig = env.chart_rbac_kubeconfig().await;
    let port = crate::harness::free_port();
    let _op = env.operator().kubeconfig(&kubeconfig).admin_port(port).start().await;
    create_group(&env, "web", VIP, &fleet.pool).await;
    until("3 members bound", Duration::from_secs(60), async || all_bound(&env, "web", 3).await).await;
    let series =
        |state: &str| format!("vipop_group_members{{namespace=\"{}\",group=\"web\",state=\"{state}\"}}", env.namespace);
    until("the group's metrics", Duration::from_secs(30), async || {
        crate::harness::metric(port, &series("bound")).await == 3.0
            && crate::harness::metric(port, &series("desired")).await == 3.0
    })
    .await;
    assert_eq!(crate::harness::metric(port, &series("failing")).await, 0.0);
    assert_eq!(vip_pairs(&env), ips(&[&a, &b, &c]), "the VIP port holds the 3 NIC IPs");
    for n in [&a, &b, &c] {
        assert_eq!(nic_pairs(&env, &n.nic), [CHECK_OFF], "{}'s source check is off", n.name);
    }
    assert!(nic_pairs(&env, &outsider.nic).is_empty(), "a node outside the selector is left alone");
    let before: Vec<(String, Option<String>)> =
        members(&env, "web").await.iter().map(|m| (m.metadata.name.clone().unwrap(), m.metadata.uid.clone())).collect();

    // A status report (heartbeat) changes nothing the group reads: no cloud call follows.
    let calls = env.sim.calls().len();
    fleet.heartbeat(&a.name).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.sim.calls().len(), calls, "a heartbeat cost a cloud call: {:#?}", &env.sim.calls()[calls..]);

    // b relabelled out: its pair and check-off go, a and c are untouched.
    fleet.label(&b.name, false).await;
    until("b's pair gone", Duration::from_secs(60), async || {
        vip_pairs(&env) == ips(&[&a, &c]) && members(&env, "web").await.len() == 2
    })
    .await;
    assert!(nic_pairs(&env, &b.nic).is_empty(), "b's check-off went with its last binding");
    let after: Vec<(String, Option<String>)> =
        members(&env, "web").await.iter().map(|m| (m.metadata.name.clone().unwrap(), m.metadata.uid.clone())).collect();
    assert!(after.iter().all(|m| before.contains(m)), "a and c kept their members: {before:?} → {after:?}");

    // c's node is replaced: deleted, and a new node with a new server joins.
    fleet.delete_node(&c.name).await;
    env.sim.remove_server(&c.server).unwrap();
    let d = fleet.node(&env, 5, true).await;
    until("the new set", Duration::from_secs(60), async || {
        vip_pairs(&env) == ips(&[&a, &d]) && all_bound(&env, "web", 2).await
    })
    .await;

    // A member edited by hand is put back.
    let member = members(&env, "web").await.into_iter().find(|m| m.spec.nic_id == a.nic).unwrap();
    let name = member.metadata.name.clone().unwrap();
    env.bindings()
        .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"deletionPolicy": "Orphan"}})))
        .await
        .unwrap();
    until("the hand edit put back", Duration::from_secs(30), async || {
        env.get(&name)
            .await
            .is_some_and(|m| m.spec.deletion_policy == vip_operator::api::v1alpha1::DeletionPolicy::Unbind)
    })
    .await;

    // The group deleted: every pair goes, then the group.
    groups(&env).delete("web", &DeleteParams::default()).await.unwrap();
    until("the group gone", Duration::from_secs(60), async || groups(&env).get_opt("web").await.unwrap().is_none())
        .await;
    assert!(vip_pairs(&env).is_empty(), "every pair is gone before the group is");
    let (_, text) = crate::harness::admin_get(port, "/metrics").await.unwrap_or_default();
    assert!(!text.contains("group=\"web\""), "a gone group's series go with it");
    assert!(members(&env, "web").await.is_empty());
    for n in [&a, &d] {
        assert!(nic_pairs(&env, &n.nic).is_empty(), "{}'s check-off is gone", n.name);
    }
    fleet.cleanup().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_a_node_without_a_server_id_is_a_member_condition_and_binds_nothing() {
    let Some(mut env) = Env::with("group-noserver", Needs::RealServer).await else { return };
    let mut fleet = Fleet::new(&env);
    let a = fleet.node(&env, 1, true).await;
    let bare = format!("{}-bare", fleet.pool);
    fleet.create_node(&bare, None, true, &[]).await;
    let _op = env.operator().start().await;
    create_group(&env, "web", VIP, &fleet.pool).await;
    until("the bare node reported", Duration::from_secs(60), async || {
        group_status(&env, "web").await.is_some_and(|s| {
            s.bound == 1 && s.failing == 1 && s.members.iter().any(|m| m.node == bare && m.reason == "NoServerId")
        })
    })
    .await;
    let s = group_status(&env, "web").await.unwrap();
    let ready = s.condition("Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "MembersFailing"), "{ready:?}");
    let m = s.members.iter().find(|m| m.node == bare).unwrap();
    assert!(m.message.contains("providerID"), "{m:?}");
    assert_eq!(members(&env, "web").await.len(), 1, "no member for a node without a NIC");
    assert_eq!(vip_pairs(&env), ips(&[&a]));
    // Naming its NIC by annotation makes it a member.
    let nic = uuid();
    env.sim.add_server(PROJECT, &uuid(), &[SimNic::new(&nic, SUBNET, "192.168.1.9")]).unwrap();
    let patch = json!({"metadata": {"annotations": {"vipoperator.dev/nic-id": nic}}});
    fleet.nodes.patch(&bare, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    until("both bound", Duration::from_secs(60), async || all_bound(&env, "web", 2).await).await;
    groups(&env).delete("web", &DeleteParams::default()).await.unwrap();
    until("the group gone", Duration::from_secs(60), async || groups(&env).get_opt("web").await.unwrap().is_none())
        .await;
    assert!(vip_pairs(&env).is_empty());
    fleet.cleanup().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_a_group_and_a_binding_with_another_vip_share_a_nic() {
    let Some(mut env) = Env::with("group-share", Needs::RealServer).await else { return };
    let mut fleet = Fleet::new(&env);
    env.sim.set_port(SimPort::vip("vip-port-other", PROJECT, SUBNET, "subnet-v4", OTHER_VIP)).unwrap();
    let (a, b) = (fleet.node(&env, 1, true).await, fleet.node(&env, 2, true).await);
    let op = env.operator().start().await;
    env.create("solo", &a.nic, OTHER_VIP, json!({"api": "VPC"})).await;
    env.wait_ready("solo").await;
    create_group(&env, "web", VIP, &fleet.pool).await;
    until("2 members bound", Duration::from_secs(60), async || all_bound(&env, "web", 2).await).await;
    assert_eq!(vip_pairs(&env), ips(&[&a, &b]));
    // A restart: the new process decides nothing before its caches are listed, so no member
    // goes for a node it has not seen yet.
    let uids = |ms: Vec<VipBinding>| ms.into_iter().filter_map(|m| m.metadata.uid).collect::<BTreeSet<_>>();
    let before = uids(members(&env, "web").await);
    drop(op);
    let _op = env.operator().start().await;
    until("the group reconciled again", Duration::from_secs(30), async || all_bound(&env, "web", 2).await).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(uids(members(&env, "web").await), before, "the same members");
    assert_eq!(vip_pairs(&env), ips(&[&a, &b]));
    groups(&env).delete("web", &DeleteParams::default()).await.unwrap();
    until("the group gone", Duration::from_secs(60), async || groups(&env).get_opt("web").await.unwrap().is_none())
        .await;
    assert!(vip_pairs(&env).is_empty());
    let other: BTreeSet<String> =
        env.sim.port("vip-port-other").unwrap().allowed_address_pairs.into_iter().map(|p| p.ip_address).collect();
    assert_eq!(other, ips(&[&a]), "the lone binding's VIP stays on a's NIC");
    assert_eq!(nic_pairs(&env, &a.nic), [CHECK_OFF], "a keeps its check-off: the lone binding needs it");
    assert!(nic_pairs(&env, &b.nic).is_empty(), "b's went with the group");
    assert!(ready_true(&env.get("solo").await.unwrap()));
    fleet.cleanup().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g4_the_namespace_policy_applies_to_a_group_and_granting_it_takes_effect_live() {
    const SELECTOR: &str = "--default-credentials-namespace-selector=vipoperator.dev/default-credentials=allowed";
    let Some(mut env) = Env::with("group-tenancy", Needs::RealServer).await else { return };
    let mut fleet = Fleet::new(&env);
    let a = fleet.node(&env, 1, true).await;
    let _op = env.operator().arg(SELECTOR).start().await;
    create_group(&env, "web", VIP, &fleet.pool).await;
    until("the refusal reported", Duration::from_secs(30), async || {
        group_status(&env, "web").await.is_some_and(|s| {
            s.members
                .iter()
                .any(|m| m.reason == "LookupFailed" && m.message.contains("vipoperator.dev/default-credentials"))
        })
    })
    .await;
    assert!(env.sim.calls().is_empty(), "no cloud call for a refused namespace: {:#?}", env.sim.calls());
    assert!(members(&env, "web").await.is_empty());
    Api::<k8s_openapi::api::core::v1::Namespace>::all(env.client.clone())
        .patch(
            &env.namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"vipoperator.dev/default-credentials": "allowed"}}})),
        )
        .await
        .unwrap();
    // Sooner than the group's own recheck (30 s): the namespace event wakes it.
    until("bound once granted", Duration::from_secs(20), async || all_bound(&env, "web", 1).await).await;
    assert_eq!(vip_pairs(&env), ips(&[&a]));
    groups(&env).delete("web", &DeleteParams::default()).await.unwrap();
    until("the group gone", Duration::from_secs(60), async || groups(&env).get_opt("web").await.unwrap().is_none())
        .await;
    fleet.cleanup().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_a_group_larger_than_the_ports_quota_binds_what_fits_and_says_why_for_the_rest() {
    let Some(mut env) = Env::with("group-quota", Needs::RealServer).await else { return };
    // The simulator's stand-in for Huawei's (undocumented) limit on a port's pairs.
    env.sim.set_max_pairs(3).unwrap();
    let mut fleet = Fleet::new(&env);
    let mut nodes = vec![];
    for n in 1..=5 {
        nodes.push(fleet.node(&env, n, true).await);
    }
    let _op = env.operator().start().await;
    create_group(&env, "web", VIP, &fleet.pool).await;
    until("3 bound, 2 refused", Duration::from_secs(60), async || {
        group_status(&env, "web").await.is_some_and(|s| s.bound == 3 && s.failing == 2)
    })
    .await;
    assert_eq!(vip_pairs(&env).len(), 3, "the members that fit are bound");
    let s = group_status(&env, "web").await.unwrap();
    let refused: Vec<_> = s.members.iter().filter(|m| !m.ready).collect();
    assert!(
        refused.iter().all(|m| m.message.contains("at most 3 pairs")),
        "each refused member says why, in the cloud's words: {refused:#?}"
    );
    groups(&env).delete("web", &DeleteParams::default()).await.unwrap();
    until("the group gone", Duration::from_secs(60), async || groups(&env).get_opt("web").await.unwrap().is_none())
        .await;
    assert!(vip_pairs(&env).is_empty());
    for n in &nodes {
        assert!(nic_pairs(&env, &n.nic).is_empty(), "{}'s check-off is gone", n.name);
    }
    fleet.cleanup().await;
    env.cleanup().await;
}
