//! The audit trail: every cloud write the operator makes is one info line on the
//! `vip_operator::audit` target, naming the binding, the project, the access key's fingerprint
//! and the request id the cloud answered with, so "who unbound this VIP" has an answer.

use std::time::Duration;

use kube::ResourceExt;
use serde_json::{Value, json};
use vip_operator::ecs::Credentials;
use vip_operator::simulator::{CallRecord, SimOperation};

use crate::harness::{self, ACCESS_KEY, Env, SECRET_KEY};

const NIC: &str = "7c3f2e4a-9d6b-4e1f-8a21-334455667788";
const VIP: &str = "192.168.0.9";

/// The operator's audit lines (its `--log-format json` output, one object per line).
fn audit_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "vip_operator::audit")
        .collect()
}

fn the_call(env: &Env, op: SimOperation) -> CallRecord {
    let calls: Vec<CallRecord> = env.sim.calls().into_iter().filter(|c| c.operation == Some(op)).collect();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    calls.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a01_bind_and_unbind_are_audited_with_binding_project_key_and_request_id() {
    let mut env = Env::new("audit").await;
    let op = env.operator().start().await;
    let created = env.create("web", NIC, VIP, json!({})).await;
    env.wait_ready("web").await;
    env.delete("web").await;
    env.wait_gone("web", Duration::from_secs(20)).await;

    let bind = the_call(&env, SimOperation::Bind);
    let unbind = the_call(&env, SimOperation::Unbind);
    assert_ne!(bind.request_id, unbind.request_id);
    let logs = op.logs();
    let lines = audit_lines(&logs);
    assert_eq!(lines.len(), 2, "one line per write:\n{logs}");
    let binding = format!("{}/web", env.namespace);
    let key = Credentials::new(ACCESS_KEY, SECRET_KEY, None).unwrap().key_id();
    for (line, operation, call) in [(&lines[0], "bind", &bind), (&lines[1], "unbind", &unbind)] {
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["operation"], operation, "{line}");
        assert_eq!(line["binding"], binding.as_str(), "{line}");
        assert_eq!(line["uid"], created.uid().unwrap().as_str(), "{line}");
        assert_eq!(line["project"], harness::PROJECT, "{line}");
        assert_eq!(line["region"], harness::REGION, "{line}");
        assert_eq!(line["nic"], NIC, "{line}");
        assert_eq!(line["key"], key.as_str(), "{line}");
        assert_eq!(line["request_id"], call.request_id.as_str(), "{line}");
        assert_eq!(line["outcome"], "ok", "{line}");
        assert_eq!(line["port"], NIC, "{line}");
    }
    assert_eq!(lines[0]["vip"], VIP);
    assert!(lines[1].get("vip").is_none(), "an unbind names no VIP: {}", lines[1]);
    // The fingerprint, never the key: nothing the operator wrote holds key material.
    env.assert_no_secrets_leaked().await;
    env.cleanup().await;
}
