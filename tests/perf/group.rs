//! `make bench` (groups): the release operator, the simulator as its cloud, on the e2e
//! harness's API backend (a private real control plane under `make bench`), with Node objects
//! created through the API.
//!
//! Phases:
//! 1. a lone `api: VPC` binding: VPC calls for its bind and for its unbind;
//! 2. a group whose selector matches GROUP_N (200) nodes: time until every member is bound, and
//!    the VPC calls split into reads and writes, the VIP port's writes apart;
//! 3. GROUP_REPLACEMENTS (20) node replacements one by one (the old node and server deleted, a
//!    new one added): convergence time (until the VIP port holds exactly the new set and the
//!    group is Ready) p50/p99, and calls per replacement;
//! 4. the group deleted: time until it is gone, with every pair off.
//!
//! Knobs: GROUP_N (200), GROUP_REPLACEMENTS (20), BENCH_LATENCY_MS (50), GROUP_QPS (the cloud
//! rate limit per key, region and service: 10, the operator's default), GROUP_MAX_PAIRS (the
//! simulator's pairs per port: 1,000; Huawei's quota is not documented). Prints a table and
//! writes `target/bench/group.json`.

#[path = "../support/mod.rs"]
mod support;

#[path = "../e2e/harness.rs"]
#[allow(dead_code)]
mod harness;

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde::Serialize;
use serde_json::json;
use vip_operator::api::group::VipGroup;
use vip_operator::simulator::{CallRecord, PortOperation, SimNic, SimPort};

use common::{knob, round};
use harness::{Env, PROJECT, REGION, SUBNET, ready};

const VIP: &str = "192.168.200.1";
const VIP_PORT: &str = "vip-port-bench-group";
const LONE_VIP: &str = "192.168.200.2";

fn uuid(i: u64, kind: u16) -> String {
    format!("00000000-{kind:04x}-4000-8000-{i:012}")
}

fn ip(i: u64) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, (i & 0xff).max(1))
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Calls {
    reads: usize,
    listings: usize,
    writes: usize,
    vip_port_writes: usize,
}

fn count(calls: &[CallRecord]) -> Calls {
    let mut c = Calls::default();
    for call in calls {
        match call.port_operation {
            Some(PortOperation::GetPort) => c.reads += 1,
            Some(PortOperation::ListPorts) => c.listings += 1,
            Some(PortOperation::UpdatePort) => {
                c.writes += 1;
                if call.port_id.as_deref() == Some(VIP_PORT) {
                    c.vip_port_writes += 1;
                }
            }
            None => {}
        }
    }
    c
}

fn total(c: &Calls) -> usize {
    c.reads + c.listings + c.writes
}

struct Pool<'a> {
    env: &'a Env,
    nodes: Api<Node>,
    next: u64,
    /// (node name, server, NIC IP) of the pool's current nodes.
    live: Vec<(String, String, String)>,
}

impl Pool<'_> {
    async fn add(&mut self) {
        self.next += 1;
        let i = self.next;
        let (server, nic, addr) = (uuid(i, 1), uuid(i, 2), ip(i));
        self.env.sim.add_server(PROJECT, &server, &[SimNic::new(&nic, SUBNET, &addr)]).expect("add server");
        let name = format!("{}-n{i}", self.env.namespace);
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"bench-pool": self.env.namespace}},
            "spec": {"providerID": format!("huaweicloud://{server}")},
        }))
        .unwrap();
        self.nodes.create(&PostParams::default(), &node).await.expect("create node");
        self.live.push((name, server, addr));
    }

    async fn remove_first(&mut self) {
        let (name, server, _) = self.live.remove(0);
        self.nodes.delete(&name, &DeleteParams::default()).await.expect("delete node");
        self.env.sim.remove_server(&server).expect("remove server");
    }

    fn ips(&self) -> BTreeSet<String> {
        self.live.iter().map(|(_, _, ip)| ip.clone()).collect()
    }

    async fn cleanup(&self) {
        for (name, _, _) in &self.live {
            let _ = self.nodes.delete(name, &DeleteParams::default()).await;
        }
    }
}

fn vip_pairs(env: &Env) -> BTreeSet<String> {
    env.sim
        .port(VIP_PORT)
        .map(|p| p.allowed_address_pairs.into_iter().map(|p| p.ip_address).collect())
        .unwrap_or_default()
}

async fn group_ready(api: &Api<VipGroup>, n: u32) -> bool {
    api.get_opt("bench")
        .await
        .ok()
        .flatten()
        .and_then(|g| g.status)
        .is_some_and(|s| s.bound == n && s.desired == n && s.condition("Ready").is_some_and(|c| c.status == "True"))
}

async fn wait(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[derive(Serialize)]
struct Report {
    n: usize,
    latency_ms: u64,
    qps: f64,
    lone_bind: Calls,
    lone_unbind: Calls,
    group_bind_s: f64,
    group_bind_calls: Calls,
    replacements: usize,
    replacement_p50_s: f64,
    replacement_p99_s: f64,
    calls_per_replacement: f64,
    group_delete_s: f64,
}

#[tokio::main]
async fn main() {
    let n: usize = knob("GROUP_N", 200);
    let replacements: usize = knob("GROUP_REPLACEMENTS", 20);
    let latency_ms: u64 = knob("BENCH_LATENCY_MS", 50);
    let qps: f64 = knob("GROUP_QPS", 10.0);
    println!("group bench: N={n} replacements={replacements} L={latency_ms}ms cloud rate {qps}/s per key");
    let mut env = Env::new("bench-group").await;
    println!("group bench: API backend: {}", env.backend_name());
    env.sim.set_latency(Duration::from_millis(latency_ms));
    // Huawei's limit on a port's pairs is not documented; the simulator's default (100) would
    // refuse a 200-member VIP port. GROUP_MAX_PAIRS sets it (see the e2e for what happens at it).
    env.sim.set_max_pairs(knob("GROUP_MAX_PAIRS", 1000)).unwrap();
    env.sim.set_port(SimPort::vip(VIP_PORT, PROJECT, SUBNET, "subnet-v4", VIP)).unwrap();
    env.sim.set_port(SimPort::vip("vip-port-lone", PROJECT, SUBNET, "subnet-v4", LONE_VIP)).unwrap();
    let op = env
        .operator()
        .log_level(&knob("BENCH_LOG", "warn".to_string()))
        .cloud_rate(qps, (qps / 10.0).ceil().max(1.0) as u32)
        .start()
        .await;
    let mut pool = Pool { env: &env, nodes: Api::all(env.client.clone()), next: 0, live: vec![] };

    // 1. A lone VPC binding on a NIC of its own.
    let lone_nic = uuid(999_999, 3);
    env.sim.add_server(PROJECT, &uuid(999_999, 4), &[SimNic::new(&lone_nic, SUBNET, "10.250.0.1")]).unwrap();
    let mark = env.sim.calls().len();
    env.create("lone", &lone_nic, LONE_VIP, json!({"api": "VPC"})).await;
    env.wait_ready("lone").await;
    let lone_bind = count(&env.sim.calls()[mark..]);
    let mark = env.sim.calls().len();
    env.delete("lone").await;
    env.wait_gone("lone", Duration::from_secs(60)).await;
    let lone_unbind = count(&env.sim.calls()[mark..]);

    // 2. The group over N nodes.
    for _ in 0..n {
        pool.add().await;
    }
    let groups: Api<VipGroup> = Api::namespaced(env.client.clone(), &env.namespace);
    let mark = env.sim.calls().len();
    let g: VipGroup = serde_json::from_value(json!({
        "apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipGroup", "metadata": {"name": "bench"},
        "spec": {"ipAddress": VIP, "subnetId": SUBNET, "projectId": PROJECT, "region": REGION,
                 "maxNodes": n.max(1), "nodeSelector": {"matchLabels": {"bench-pool": env.namespace}}},
    }))
    .unwrap();
    groups.create(&PostParams::default(), &g).await.expect("create group");
    let within = Duration::from_secs(120 + (n as u64) * 2);
    let bind_time = wait("every member bound", within, async || group_ready(&groups, n as u32).await).await;
    assert_eq!(vip_pairs(&env), pool.ips(), "the VIP port holds every member's IP");
    let group_bind_calls = count(&env.sim.calls()[mark..]);

    // 3. Node replacements, one by one.
    let mut times = vec![];
    let mark = env.sim.calls().len();
    for _ in 0..replacements {
        pool.remove_first().await;
        pool.add().await;
        let want = pool.ips();
        let t = wait("the replacement", Duration::from_secs(120), async || {
            vip_pairs(&env) == want && group_ready(&groups, n as u32).await
        })
        .await;
        times.push(t.as_secs_f64());
    }
    let replacement_calls = count(&env.sim.calls()[mark..]);
    times.sort_by(f64::total_cmp);

    // 4. The group deleted.
    let started = Instant::now();
    groups.delete("bench", &DeleteParams::default()).await.unwrap();
    wait("the group gone", within, async || groups.get_opt("bench").await.ok().flatten().is_none()).await;
    let group_delete = started.elapsed();
    assert!(vip_pairs(&env).is_empty(), "every pair is off");
    let left = env.bindings().list(&ListParams::default()).await.unwrap().items;
    assert!(left.iter().all(|b| ready(b).is_none()) || left.is_empty());

    let report = Report {
        n,
        latency_ms,
        qps,
        lone_bind,
        lone_unbind,
        group_bind_s: round(bind_time.as_secs_f64(), 2),
        group_bind_calls,
        replacements,
        replacement_p50_s: round(percentile(&times, 50.0), 2),
        replacement_p99_s: round(percentile(&times, 99.0), 2),
        calls_per_replacement: round(total(&replacement_calls) as f64 / replacements.max(1) as f64, 1),
        group_delete_s: round(group_delete.as_secs_f64(), 2),
    };
    println!("| measure | value |");
    println!("| --- | --- |");
    let c = |c: &Calls| format!("{} ({} reads, {} listings, {} writes)", total(c), c.reads, c.listings, c.writes);
    println!("| lone VPC bind: calls | {} |", c(&report.lone_bind));
    println!("| lone VPC unbind: calls | {} |", c(&report.lone_unbind));
    println!("| {n}-node group: time to all bound | {} s |", report.group_bind_s);
    println!(
        "| {n}-node group: calls | {}; VIP port writes: {} |",
        c(&report.group_bind_calls),
        report.group_bind_calls.vip_port_writes
    );
    println!(
        "| {replacements} replacements: convergence p50 / p99 | {} s / {} s |",
        report.replacement_p50_s, report.replacement_p99_s
    );
    println!("| calls per replacement | {} |", report.calls_per_replacement);
    println!("| group deleted: time to gone, every pair off | {} s |", report.group_delete_s);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("group.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
    drop(op);
    pool.cleanup().await;
    env.cleanup_within(Duration::from_secs(300)).await;
}
