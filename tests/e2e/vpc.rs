//! `api: VPC` bindings end to end: the operator binds through the VIP port's
//! allowed_address_pairs on the simulator, which serves the ECS and VPC calls over one state.

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde_json::json;
use vip_operator::simulator::{PairsChange, PortOperation, SimAddressPair, SimPort};

use crate::NIC;
use crate::harness::{Env, Needs, PROJECT, SUBNET, ready};

const VIP_A: &str = "192.168.0.7";
const VIP_B: &str = "192.168.0.8";
const FOREIGN: &str = "10.99.0.1";
const CHECK_OFF: &str = "1.1.1.1/0";

fn pair(ip: &str) -> SimAddressPair {
    SimAddressPair { ip_address: ip.into(), mac_address: None }
}

/// The NIC's port (in the bindings' network) and two VIP ports; returns the NIC's IP.
fn ports(env: &Env) -> String {
    let mut nic = SimPort::nic(NIC, PROJECT);
    nic.network_id = SUBNET.into();
    let nic_ip = nic.ip().expect("a fixed IP").to_string();
    env.sim.set_port(nic).unwrap();
    let mut a = SimPort::vip("vip-port-a", PROJECT, SUBNET, "subnet-v4", VIP_A);
    // Someone else's pair on the VIP: never ours to remove.
    a.allowed_address_pairs = vec![pair(FOREIGN)];
    env.sim.set_port(a).unwrap();
    env.sim.set_port(SimPort::vip("vip-port-b", PROJECT, SUBNET, "subnet-v4", VIP_B)).unwrap();
    nic_ip
}

fn pairs(env: &Env, port: &str) -> Vec<String> {
    env.sim.port(port).expect("port").allowed_address_pairs.into_iter().map(|p| p.ip_address).collect()
}

fn updates(env: &Env, port: &str) -> usize {
    env.sim
        .calls()
        .iter()
        .filter(|c| c.port_operation == Some(PortOperation::UpdatePort) && c.port_id.as_deref() == Some(port))
        .count()
}

fn reads(env: &Env, port: &str) -> usize {
    env.sim
        .calls()
        .iter()
        .filter(|c| c.port_operation == Some(PortOperation::GetPort) && c.port_id.as_deref() == Some(port))
        .count()
}

fn listings(env: &Env) -> usize {
    env.sim.calls().iter().filter(|c| c.port_operation == Some(PortOperation::ListPorts)).count()
}

async fn warning_reasons(env: &Env) -> Vec<String> {
    use k8s_openapi::api::events::v1::Event;
    let events: kube::Api<Event> = kube::Api::namespaced(env.client.clone(), &env.namespace);
    let list = events.list(&Default::default()).await.expect("list events");
    list.items.into_iter().filter(|e| e.type_.as_deref() == Some("Warning")).filter_map(|e| e.reason).collect()
}

async fn until(what: &str, within: Duration, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_two_vips_share_a_nic_and_each_unbind_takes_only_its_own_pair() {
    let mut env = Env::new("vpc-share").await;
    let nic_ip = ports(&env);
    let _op = env.operator().start().await;
    env.create("a", NIC, VIP_A, json!({"api": "VPC"})).await;
    env.create("b", NIC, VIP_B, json!({"api": "VPC"})).await;
    let a = env.wait_ready("a").await;
    env.wait_ready("b").await;
    assert_eq!(pairs(&env, "vip-port-a"), [FOREIGN, nic_ip.as_str()]);
    assert_eq!(pairs(&env, "vip-port-b"), [nic_ip.as_str()]);
    assert_eq!(pairs(&env, NIC), [CHECK_OFF], "the NIC's source check is turned off once");
    assert!(env.sim.state().nics.is_empty(), "no ECS call was made");
    let record = a.status.as_ref().and_then(|s| s.bound_with.clone()).expect("a record");
    assert_eq!(record.vip_port_id.as_deref(), Some("vip-port-a"));
    assert_eq!(record.nic_ip.as_deref(), Some(nic_ip.as_str()));
    assert_eq!(a.status.as_ref().and_then(|s| s.port_id.as_deref()), Some(NIC));
    let observed = a.status.as_ref().and_then(|s| s.observed.clone()).expect("what the VPC API showed");
    assert!(observed.bound);
    assert_eq!((observed.vip_port_id.as_str(), observed.by.as_str()), ("vip-port-a", "bind"));

    env.delete("a").await;
    env.wait_gone("a", Duration::from_secs(20)).await;
    assert_eq!(pairs(&env, "vip-port-a"), [FOREIGN], "only our pair left; someone else's stays");
    assert_eq!(pairs(&env, "vip-port-b"), [nic_ip.as_str()], "the other VIP on the NIC stays bound");
    assert_eq!(pairs(&env, NIC), [CHECK_OFF], "still needed by b");

    env.delete("b").await;
    env.wait_gone("b", Duration::from_secs(20)).await;
    assert!(pairs(&env, "vip-port-b").is_empty());
    assert!(pairs(&env, NIC).is_empty(), "the last binding on the NIC turns its source check back on");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_a_pair_removed_behind_our_back_is_put_back_without_rewriting_intact_ones() {
    let mut env = Env::new("vpc-drift").await;
    let nic_ip = ports(&env);
    let _op = env.operator().arg("--resync-period").arg("1s").start().await;
    env.create("a", NIC, VIP_A, json!({"api": "VPC"})).await;
    env.create("b", NIC, VIP_B, json!({"api": "VPC"})).await;
    env.wait_ready("a").await;
    env.wait_ready("b").await;
    let b_writes = updates(&env, "vip-port-b");
    // After a drift round has listed the project (a listing is reused for a while: the repair
    // must not wait for ever on it)...
    until("a drift listing", Duration::from_secs(10), || listings(&env) > 0).await;
    // ...someone removes a's pair, keeping theirs.
    assert!(env.sim.set_allowed_address_pairs("vip-port-a", vec![pair(FOREIGN)]));
    until("the pair to be put back", Duration::from_secs(15), || pairs(&env, "vip-port-a").contains(&nic_ip)).await;
    assert_eq!(pairs(&env, "vip-port-a"), [FOREIGN, nic_ip.as_str()]);
    // The repair says so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !warning_reasons(&env).await.iter().any(|r| r == "DriftRepaired") {
        assert!(tokio::time::Instant::now() < deadline, "no DriftRepaired event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // An observation older than an hour is refreshed by the listing (b's, made old here).
    let old = json!({"status": {"observed": {"bound": true, "vipPortId": "vip-port-b", "at": "2026-01-01T00:00:00Z", "by": "bind"}}});
    env.bindings().patch_status("b", &PatchParams::default(), &Patch::Merge(old)).await.expect("age b's observation");
    let refreshed = env
        .wait_for("b", Duration::from_secs(10), "a refreshed observation", |b| {
            b.status.as_ref().and_then(|s| s.observed.as_ref()).is_some_and(|o| o.by == "listing")
        })
        .await;
    let observed = refreshed.status.as_ref().and_then(|s| s.observed.clone()).expect("observed");
    assert!(observed.bound && observed.at.0 > "2026-06-01T00:00:00Z".parse().unwrap());
    assert_eq!(ready(&refreshed), Some(("True", "Bound")), "only the observation was written");
    // Several drift rounds pass over b: the project's listing shows it in place, so it gets
    // no call of its own, neither a write nor a read.
    let (b_reads, lists) = (reads(&env, "vip-port-b"), listings(&env));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(listings(&env) >= lists + 2, "drift rounds list the project's VIP ports");
    assert_eq!(updates(&env, "vip-port-b"), b_writes, "an intact binding is not re-bound");
    assert_eq!(reads(&env, "vip-port-b"), b_reads, "nor read one by one");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v7_a_nic_that_lost_its_source_check_is_put_back_by_the_drift_listing() {
    let mut env = Env::new("vpc-nic-drift").await;
    let nic_ip = ports(&env);
    // A second NIC, bound too, whose check-off stays: it must get no call of its own.
    let mut other = SimPort::nic(crate::NIC2, PROJECT);
    other.network_id = SUBNET.into();
    env.sim.set_port(other).unwrap();
    let _op = env.operator().arg("--resync-period").arg("1s").start().await;
    env.create("a", NIC, VIP_A, json!({"api": "VPC"})).await;
    env.create("b", crate::NIC2, VIP_B, json!({"api": "VPC"})).await;
    env.wait_ready("a").await;
    env.wait_ready("b").await;
    until("a drift listing", Duration::from_secs(10), || listings(&env) > 0).await;
    let nic2_writes = updates(&env, crate::NIC2);
    // Someone turns a's NIC's source check back on: the VIP pair is intact, the traffic dropped.
    assert!(env.sim.set_allowed_address_pairs(NIC, vec![]));
    until("the check-off to be put back", Duration::from_secs(15), || pairs(&env, NIC) == [CHECK_OFF]).await;
    assert_eq!(pairs(&env, "vip-port-a"), [FOREIGN, nic_ip.as_str()], "the VIP port was not rewritten");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !warning_reasons(&env).await.iter().any(|r| r == "DriftRepaired") {
        assert!(tokio::time::Instant::now() < deadline, "no DriftRepaired event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (b_reads, lists) = (reads(&env, crate::NIC2), listings(&env));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(listings(&env) >= lists + 2, "drift rounds list the network's ports");
    assert_eq!(updates(&env, crate::NIC2), nic2_writes, "an intact NIC is not written");
    assert_eq!(reads(&env, crate::NIC2), b_reads, "nor read one by one");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_a_writer_that_overtakes_our_write_keeps_its_change_and_ours_is_redone_on_it() {
    let mut env = Env::new("vpc-race").await;
    let nic_ip = ports(&env);
    // No drift rounds: this re-bind is the user's (a spec change).
    let _op = env.operator().arg("--resync-period").arg("0s").start().await;
    env.create("a", NIC, VIP_A, json!({"api": "VPC"})).await;
    env.wait_ready("a").await;
    // Our pair goes missing; right after the operator's next write of the VIP port lands,
    // another writer replaces the list with its own (without ours), before our write is
    // answered: the answer shows their list.
    assert!(env.sim.set_allowed_address_pairs("vip-port-a", vec![pair(FOREIGN)]));
    let theirs = vec![pair(FOREIGN), pair("10.99.0.2")];
    env.sim.after_next_write("vip-port-a", PairsChange::Replace(theirs)).unwrap();
    let (reads_before, writes_before) = (reads(&env, "vip-port-a"), updates(&env, "vip-port-a"));
    env.patch_spec("a", json!({"reverseBinding": true})).await.expect("re-bind");
    until("the pair to be put back", Duration::from_secs(15), || pairs(&env, "vip-port-a").contains(&nic_ip)).await;
    let now = pairs(&env, "vip-port-a");
    assert_eq!(now, [FOREIGN, "10.99.0.2", nic_ip.as_str()], "theirs kept, ours redone on it");
    let fired: Vec<_> = env.sim.calls().into_iter().filter(|c| !c.after_read_fired.is_empty()).collect();
    assert_eq!(fired.len(), 1, "the race happened once: {fired:#?}");
    assert_eq!(fired[0].port_operation, Some(PortOperation::UpdatePort), "right after our write");
    // The batch's read by the recorded ID, the overtaken write, the read-back, the write again.
    assert_eq!(reads(&env, "vip-port-a") - reads_before, 2);
    assert_eq!(updates(&env, "vip-port-a") - writes_before, 2);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_a_vip_that_does_not_exist_is_reported_and_nothing_is_written() {
    let mut env = Env::new("vpc-novip").await;
    ports(&env);
    let _op = env.operator().start().await;
    env.create("c", NIC, "192.168.0.9", json!({"api": "VPC"})).await;
    let b = env
        .wait_for("c", Duration::from_secs(20), "VipNotFound", |b| ready(b).is_some_and(|(_, r)| r == "VipNotFound"))
        .await;
    let message = b.condition("Ready").map(|c| c.message.clone()).unwrap_or_default();
    assert!(message.contains("192.168.0.9"), "{message}");
    assert_eq!(updates(&env, "vip-port-a") + updates(&env, "vip-port-b") + updates(&env, NIC), 0);
    // Never bound: the deletion needs no cloud call.
    env.delete("c").await;
    env.wait_gone("c", Duration::from_secs(20)).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_the_api_server_keeps_the_api_fixed_and_vpc_to_ipv4() {
    // CEL rules are the API server's to enforce: a real one.
    let Some(env) = Env::with("vpc-cel", Needs::RealServer).await else { return };
    env.create("web", NIC, VIP_A, json!({"api": "VPC", "deletionPolicy": "Orphan"})).await;
    for patch in [json!({"api": "ECS"}), json!({"api": null})] {
        match env.patch_spec("web", patch.clone()).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{patch}");
                assert!(e.message.contains("api is immutable"), "{}", e.message);
            }
            other => panic!("{patch}: expected 422, got {other:?}"),
        }
    }
    let v6 = json!({"apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipBinding", "metadata": {"name": "v6"},
        "spec": {"nicId": NIC, "ipAddress": "fd00::7", "subnetId": SUBNET, "api": "VPC"}});
    let err = env.bindings().create(&Default::default(), &serde_json::from_value(v6).unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("api VPC binds IPv4 VIPs only"), "{err}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v6_deletions_go_on_the_clouds_word_a_gone_nic_still_loses_its_pair() {
    let mut env = Env::new("vpc-gone").await;
    let nic_ip = ports(&env);
    let _op = env.operator().start().await;
    env.create("a", NIC, VIP_A, json!({"api": "VPC"})).await;
    env.create("b", NIC, VIP_B, json!({"api": "VPC"})).await;
    env.wait_ready("a").await;
    env.wait_ready("b").await;
    // The NIC's port is gone: the pair it left on the VIP port is removed by the recorded IP.
    assert!(env.sim.remove_port(NIC));
    env.delete("a").await;
    env.wait_gone("a", Duration::from_secs(20)).await;
    assert_eq!(pairs(&env, "vip-port-a"), [FOREIGN], "the stale pair of {nic_ip} is gone too");
    // The VIP port is gone (it reads 404 VPC.2502): nothing can be bound to it.
    assert!(env.sim.remove_port("vip-port-b"));
    let history = env.history("b").await;
    env.delete("b").await;
    env.wait_gone("b", Duration::from_secs(20)).await;
    history.wait_deleted().await;
    let last = history.versions().into_iter().rev().find(|b| ready(b).is_some()).expect("a final status");
    let message = last.condition("Ready").map(|c| c.message.clone()).unwrap_or_default();
    assert!(message.contains("VIP port vip-port-b no longer exists"), "{message}");
    env.cleanup().await;
}
