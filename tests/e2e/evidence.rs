//! Evidence before a release, on a real API server with the simulator serving both the ECS and
//! the VPC calls over one state: "NIC gone" from ECS is believed once the VPC API agrees.

use std::time::Duration;

use serde_json::json;
use vip_operator::simulator::{Fault, PortOperation, SimOperation};

use crate::NIC;
use crate::harness::{Env, Needs, has_finalizer, ready};

async fn wait_reason(env: &Env, name: &str, reason: &str) -> String {
    let b = env.wait_for(name, Duration::from_secs(20), reason, |b| ready(b).is_some_and(|(_, r)| r == reason)).await;
    b.condition("Ready").map(|c| c.message.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e1_a_nic_whose_port_reads_404_is_released_as_nic_not_found() {
    let Some(mut env) = Env::with("evidence-gone", Needs::RealServer).await else { return };
    let _op = env.operator().start().await;
    env.create("web", NIC, "192.168.0.7", json!({})).await;
    env.wait_ready("web").await;
    // The server and its NIC go away behind the operator's back: ECS and VPC both say so.
    env.sim.set_missing(NIC, true);
    let history = env.history("web").await;
    env.delete("web").await;
    env.wait_gone("web", Duration::from_secs(20)).await;
    history.wait_deleted().await;
    let last = history.versions().into_iter().rev().find(|b| ready(b).is_some()).expect("a final status");
    let (_, reason) = ready(&last).expect("Ready");
    assert_eq!(reason, "NicNotFound");
    let message = last.condition("Ready").map(|c| c.message.clone()).unwrap_or_default();
    assert!(message.contains("confirmed by the VPC API"), "{message}");
    let reads: Vec<_> =
        env.sim.calls().into_iter().filter(|c| c.port_operation == Some(PortOperation::GetPort)).collect();
    assert_eq!(reads.len(), 1, "one read of the NIC's port: {reads:#?}");
    assert_eq!(reads[0].status, 404);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2_ecs_saying_gone_while_the_port_exists_is_not_believed() {
    let Some(mut env) = Env::with("evidence-contradicted", Needs::RealServer).await else { return };
    let _op = env.operator().start().await;
    env.create("web", NIC, "192.168.0.7", json!({})).await;
    env.wait_ready("web").await;
    // ECS answers the unbind "the server does not have the interface"; the port is still there.
    env.sim.add_fault(Fault::error(400, "Ecs.0085", 1).on(SimOperation::Unbind));
    env.delete("web").await;
    let message = wait_reason(&env, "web", "GoneUnconfirmed").await;
    assert!(message.contains("still has its port"), "{message}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = env.get("web").await.expect("not released");
    assert!(has_finalizer(&b));
    assert!(env.sim.state().nics.contains_key(NIC), "and the VIP is still bound in the cloud");
    // The escape hatch still works.
    env.patch_spec("web", json!({"deletionPolicy": "Orphan"})).await.expect("orphan");
    env.wait_gone("web", Duration::from_secs(20)).await;
    env.cleanup().await;
}
