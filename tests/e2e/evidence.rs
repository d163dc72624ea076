//! Evidence before a release, on a real API server with the simulator serving both the ECS and
//! the VPC calls over one state: "NIC gone" from ECS is believed once the VPC API agrees (that
//! case is s04 in main.rs), and not while the NIC's port is still there.

use std::time::Duration;

use serde_json::json;
use vip_operator::simulator::{Fault, SimOperation};

use crate::NIC;
use crate::harness::{Env, Needs, has_finalizer, ready};

async fn wait_reason(env: &Env, name: &str, reason: &str) -> String {
    let b = env.wait_for(name, Duration::from_secs(20), reason, |b| ready(b).is_some_and(|(_, r)| r == reason)).await;
    b.condition("Ready").map(|c| c.message.clone()).unwrap_or_default()
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
