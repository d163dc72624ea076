//! `managementPolicy: Observe` end to end: the operator reads and reports, never writes; drift is
//! reported, not repaired; switching to Manage adopts with only the writes that differ; a
//! deletion makes no cloud call.

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde_json::json;
use vip_operator::simulator::{PortOperation, SimAddressPair, SimPort};

use crate::NIC;
use crate::harness::{Env, PROJECT, SUBNET, ready};

const VIP: &str = "192.168.0.7";
const CHECK_OFF: &str = "1.1.1.1/0";

fn pair(ip: &str) -> SimAddressPair {
    SimAddressPair { ip_address: ip.into(), mac_address: None }
}

fn writes(env: &Env) -> usize {
    env.sim.calls().iter().filter(|c| c.port_operation == Some(PortOperation::UpdatePort)).count()
}

fn vip_writes(env: &Env) -> usize {
    env.sim
        .calls()
        .iter()
        .filter(|c| c.port_operation == Some(PortOperation::UpdatePort) && c.port_id.as_deref() == Some("vip-port"))
        .count()
}

fn vip_pairs(env: &Env) -> Vec<String> {
    env.sim.port("vip-port").expect("VIP port").allowed_address_pairs.into_iter().map(|p| p.ip_address).collect()
}

/// A VIP already bound to the NIC by someone else (the console, Terraform): the pair on the VIP
/// port, `1.1.1.1/0` on the NIC, and a foreign pair the operator must never touch.
fn already_bound(env: &Env) -> String {
    let mut nic = SimPort::nic(NIC, PROJECT);
    nic.network_id = SUBNET.into();
    nic.allowed_address_pairs = vec![pair(CHECK_OFF)];
    let nic_ip = nic.ip().expect("a fixed IP").to_string();
    env.sim.set_port(nic).unwrap();
    let mut vip = SimPort::vip("vip-port", PROJECT, SUBNET, "subnet-v4", VIP);
    vip.allowed_address_pairs = vec![pair("10.99.0.1"), pair(&nic_ip)];
    env.sim.set_port(vip).unwrap();
    nic_ip
}

async fn wait_reason(env: &Env, name: &str, reason: &str) -> vip_operator::api::v1alpha1::VipBinding {
    env.wait_for(name, Duration::from_secs(30), reason, |b| ready(b).is_some_and(|(_, r)| r == reason)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o1_observe_reports_drift_without_repairing_and_manage_adopts_with_one_write() {
    let mut env = Env::new("observe").await;
    let nic_ip = already_bound(&env);
    let _op = env.operator().arg("--resync-period").arg("1s").start().await;
    env.create("adopted", NIC, VIP, json!({"api": "VPC", "managementPolicy": "Observe"})).await;
    let b = wait_reason(&env, "adopted", "Observed").await;
    assert_eq!(ready(&b), Some(("True", "Observed")));
    assert!(b.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty()), "Observe adds no finalizer");
    let observed = b.status.as_ref().and_then(|s| s.observed.clone()).expect("status.observed");
    assert!(observed.bound && observed.vip_port_id == "vip-port" && observed.by == "observe", "{observed:?}");
    assert_eq!(writes(&env), 0, "Observe never writes");

    // The pair removed behind the operator's back: reported, not repaired.
    assert!(env.sim.set_allowed_address_pairs("vip-port", vec![pair("10.99.0.1")]));
    let b = wait_reason(&env, "adopted", "ObservedDrift").await;
    let message = b.condition("Ready").map(|c| c.message.clone()).unwrap_or_default();
    assert!(message.contains(&nic_ip) && message.contains("not repaired"), "{message}");
    assert_eq!(b.condition("Bound").map(|c| c.status.as_str()), Some("False"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(vip_pairs(&env), ["10.99.0.1"], "its port's pairs stay untouched");
    assert_eq!(writes(&env), 0, "still no write after several periods");

    // Manage adopts: one write to the VIP port puts the pair back; the NIC already had its
    // check-off, so nothing else is written.
    env.bindings()
        .patch("adopted", &PatchParams::default(), &Patch::Merge(json!({"spec": {"managementPolicy": "Manage"}})))
        .await
        .unwrap();
    let b = wait_reason(&env, "adopted", "Bound").await;
    assert_eq!(ready(&b), Some(("True", "Bound")));
    assert_eq!(vip_writes(&env), 1, "exactly one write to the VIP port");
    assert_eq!(writes(&env), 1, "and no other write");
    assert_eq!(vip_pairs(&env), ["10.99.0.1", nic_ip.as_str()]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o2_adopting_a_pair_in_place_costs_no_write_and_deleting_an_observed_binding_no_call() {
    let mut env = Env::new("observe-adopt").await;
    let nic_ip = already_bound(&env);
    let _op = env.operator().start().await;
    // Managed from the start, on a pair that is already in place: reads only.
    env.create("managed", NIC, VIP, json!({"api": "VPC", "deletionPolicy": "Orphan"})).await;
    env.wait_ready("managed").await;
    assert_eq!(writes(&env), 0, "adoption of a pair in place writes nothing: {:#?}", env.sim.calls());
    env.delete("managed").await;
    env.wait_gone("managed", Duration::from_secs(30)).await;

    // An Observe binding's deletion makes no cloud call at all.
    env.create("watched", NIC, VIP, json!({"api": "VPC", "managementPolicy": "Observe"})).await;
    wait_reason(&env, "watched", "Observed").await;
    let calls = env.sim.calls().len();
    env.delete("watched").await;
    env.wait_gone("watched", Duration::from_secs(30)).await;
    assert_eq!(env.sim.calls().len(), calls, "no cloud call: {:#?}", &env.sim.calls()[calls..]);
    assert_eq!(vip_pairs(&env), ["10.99.0.1", nic_ip.as_str()], "the pair stays");
    env.cleanup().await;
}
