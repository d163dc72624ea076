//! `make bench`, second part: the drift check of `api: VPC` bindings at fleet size, on the same
//! API backend as the first part (a private real control plane under `make bench`).
//!
//! 1. A fast operator (no cloud limit, no drift) binds N VPC bindings in one project (N NIC
//!    ports, N VIP ports), then is stopped.
//! 2. The measured operator starts on the bound fleet with `--resync-period P` and a cloud
//!    budget of R calls/s: one drift round is the time until its listing of the network's ports
//!    (VIP ports and NIC ports: both halves of every binding) has vouched for all N bindings (`vipop_drift_compared_in_place_total` = N). Cloud calls in that window are
//!    counted by kind: listings, port reads, port writes, ECS calls.
//! 3. Still during drift, M more VPC bindings are created at once: the create rate with drift.
//! 4. The same operator flags with drift off (`--resync-period 0s`), M more: the rate without.
//!
//! Knobs: BENCH_DRIFT_N (10000), BENCH_DRIFT_PERIOD_S (60), BENCH_DRIFT_QPS (50),
//! BENCH_DRIFT_CREATES (150). Prints a table and writes `target/bench/drift.json`.

#[path = "../support/mod.rs"]
mod support;

#[path = "../e2e/harness.rs"]
#[allow(dead_code)]
mod harness;

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Serialize;
use serde_json::json;
use vip_operator::simulator::{CallRecord, PortOperation, SimPort};

use common::{knob, nic, round};
use harness::{Env, PROJECT, SUBNET, free_port, metric, ready};

fn vip(i: usize) -> String {
    format!("10.{}.{}.{}", 100 + i / 62_500, (i / 250) % 250, i % 250 + 1)
}

/// Every binding's NIC port and VIP port, in one project and network.
fn ports(env: &Env, count: usize) {
    for i in 0..count {
        let mut port = SimPort::nic(&nic(i), PROJECT);
        port.network_id = SUBNET.into();
        env.sim.set_port(port).expect("NIC port");
        env.sim
            .set_port(SimPort::vip(&format!("vip-port-{i:06}"), PROJECT, SUBNET, "subnet-v4", &vip(i)))
            .expect("VIP port");
    }
}

/// Names of the bindings seen Ready (Bound), from our own watch.
type Seen = Arc<Mutex<HashSet<String>>>;

fn watch_ready(env: &Env) -> Seen {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let stream = watcher(env.bindings(), watcher::Config::default()).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Ok(Some(event)) = stream.try_next().await {
            if let watcher::Event::Apply(b) | watcher::Event::InitApply(b) = event
                && ready(&b) == Some(("True", "Bound"))
            {
                record.lock().unwrap().insert(b.metadata.name.clone().unwrap_or_default());
            }
        }
    });
    seen
}

/// Creates bindings `range` (64 at a time) and waits until all are Ready; the seconds taken.
async fn create_and_wait(env: &Env, seen: &Seen, prefix: &str, range: std::ops::Range<usize>) -> f64 {
    let started = Instant::now();
    let names: Vec<String> = range.clone().map(|i| format!("{prefix}-{i:06}")).collect();
    futures::stream::iter(range.zip(names.iter()))
        .for_each_concurrent(64, |(i, name)| async move {
            env.create(name, &nic(i), &vip(i), json!({"api": "VPC"})).await;
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(600);
    while names.iter().any(|n| !seen.lock().unwrap().contains(n)) {
        assert!(Instant::now() < deadline, "{prefix}: not all bindings became Ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed().as_secs_f64()
}

#[derive(Debug, Default, Serialize)]
struct RoundCalls {
    list_ports: usize,
    get_port: usize,
    update_port: usize,
    ecs: usize,
    throttled: usize,
}

fn count(calls: &[CallRecord]) -> RoundCalls {
    let of = |op| calls.iter().filter(|c| c.port_operation == Some(op)).count();
    RoundCalls {
        list_ports: of(PortOperation::ListPorts),
        get_port: of(PortOperation::GetPort),
        update_port: of(PortOperation::UpdatePort),
        ecs: calls.iter().filter(|c| c.operation.is_some()).count(),
        throttled: calls.iter().filter(|c| c.status == 429).count(),
    }
}

#[derive(Debug, Serialize)]
struct Report {
    backend: &'static str,
    n: usize,
    period_s: u64,
    qps: f64,
    creates: usize,
    round_seconds: f64,
    round_calls: RoundCalls,
    per_binding_calls_before: &'static str,
    create_per_second_during_drift: f64,
    create_per_second_without_drift: f64,
    checks: Vec<(String, bool)>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: usize = knob("BENCH_DRIFT_N", 10_000);
    let period: u64 = knob("BENCH_DRIFT_PERIOD_S", 60);
    let qps: f64 = knob("BENCH_DRIFT_QPS", 50.0);
    let m: usize = knob("BENCH_DRIFT_CREATES", 150);
    println!("drift bench: N={n} VPC bindings, period {period}s, R={qps}/s per key/region/service, bursts of {m}");
    let mut env = Env::new("drift-bench").await;
    println!("drift bench: API backend: {}", env.backend_name());
    ports(&env, n + 2 * m);
    let seen = watch_ready(&env);

    // 1. The fleet, bound by an operator without limits.
    let mut fast = env
        .operator()
        .log_level("warn")
        .cloud_rate(100_000.0, 1_000)
        .args(&["--resync-period", "0s", "--concurrency", "64", "--cloud-concurrency", "64"])
        .start()
        .await;
    let setup = create_and_wait(&env, &seen, "fleet", 0..n).await;
    println!("drift bench: {n} VPC bindings bound in {setup:.1}s (setup)");
    fast.kill().await;

    // 2. One drift round of the measured operator.
    let port = free_port();
    let resync = format!("{period}s");
    let flags = ["--concurrency", "32", "--cloud-concurrency", "32"];
    let mut measured = env
        .operator()
        .log_level("warn")
        .cloud_rate(qps, 10)
        .args(&flags)
        .args(&["--resync-period", &resync])
        .admin_port(port)
        .start()
        .await;
    // The simulator keeps a bounded call history: calls are told apart by sequence number.
    let offset = env.sim.calls().last().map_or(0, |c| c.seq);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(period * 2 + 120);
    while metric(port, "vipop_drift_compared_in_place_total").await < n as f64 {
        assert!(Instant::now() < deadline, "no full drift round:\n{}", measured.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let round_seconds = started.elapsed().as_secs_f64();
    let round_calls = count(&env.sim.calls().into_iter().filter(|c| c.seq > offset).collect::<Vec<_>>());
    println!("drift bench: one round over {n} bindings in {round_seconds:.1}s: {round_calls:?}");

    // 3. A create burst while drift goes on.
    let during = m as f64 / create_and_wait(&env, &seen, "during", n..n + m).await;
    measured.kill().await;
    // 4. The same without drift.
    let _quiet = env
        .operator()
        .log_level("warn")
        .cloud_rate(qps, 10)
        .args(&flags)
        .args(&["--resync-period", "0s"])
        .start()
        .await;
    let without = m as f64 / create_and_wait(&env, &seen, "quiet", n + m..n + 2 * m).await;

    // One listing of the network's ports shows both halves of every binding: its VIP ports' pairs
    // and its NICs' source checks. The network holds a NIC port and a VIP port per binding.
    let pages = (2 * (n + 2 * m)).div_ceil(2000);
    let checks = vec![
        (
            format!("a round lists the network a handful of times ({} <= {})", round_calls.list_ports, 6 * pages),
            round_calls.list_ports <= 6 * pages,
        ),
        (
            format!("no port writes in a round without drift ({})", round_calls.update_port),
            round_calls.update_port == 0,
        ),
        (format!("no per-binding reads in a round ({})", round_calls.get_port), round_calls.get_port == 0),
        (
            format!("creates during drift at >= 90% of the rate without ({during:.1}/s vs {without:.1}/s)"),
            during >= 0.9 * without,
        ),
    ];
    let report = Report {
        backend: env.backend_name(),
        n,
        period_s: period,
        qps,
        creates: m,
        round_seconds: round(round_seconds, 1),
        round_calls,
        per_binding_calls_before: "one re-bind per binding per round (ECS: N PUTs; VPC read by binding: about 3N reads)",
        create_per_second_during_drift: round(during, 1),
        create_per_second_without_drift: round(without, 1),
        checks,
    };
    println!("\n| drift round, N = {n} VPC bindings | |\n| --- | --- |");
    println!("| listings (2,000 ports a page) | {} |", report.round_calls.list_ports);
    println!("| port reads / port writes | {} / {} |", report.round_calls.get_port, report.round_calls.update_port);
    println!("| ECS calls | {} |", report.round_calls.ecs);
    println!("| round took | {:.1} s (period {period} s) |", report.round_seconds);
    println!("| creates of {m} VPC bindings, during drift / without | {:.1}/s / {:.1}/s |", during, without);
    let mut ok = true;
    for (what, passed) in &report.checks {
        println!("{} {what}", if *passed { "PASS" } else { "FAIL" });
        ok &= passed;
    }
    std::fs::create_dir_all("target/bench").ok();
    std::fs::write("target/bench/drift.json", serde_json::to_string_pretty(&report).unwrap()).unwrap();
    // The fleet is deleted one object at a time: a minute plus 20 ms a binding.
    env.cleanup_within(Duration::from_secs(60) + Duration::from_millis(20u64.saturating_mul(n as u64))).await;
    assert!(ok, "a drift target was missed");
}
