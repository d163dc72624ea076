//! `make bench`: the release operator against the bundled simulator, on the e2e harness's API
//! backend (`VIPOP_E2E_KUBECONFIG`, else a private control plane from `KUBEBUILDER_ASSETS` —
//! what `make bench` sets up — else the in-repo fake API server).
//!
//! Phases: create N bindings at once (until all Ready); idle (RSS with N cached); delete a
//! sample one at a time (per-object delete overhead); delete the rest at once (until all gone);
//! BENCH_ROUNDS (10) rounds of creating and deleting N more (RSS after each: per-object state
//! must not outlive its object); then the API-server ceiling (below), with the operator idle.
//!
//! The *API-server ceiling* is what this API server, on this machine, sustains for the
//! operator's own Kubernetes work with no operator and no cloud in the way: a minimal client,
//! built from the operator's own request builders, runs the operator's per-binding sequences at
//! the same concurrency, on bindings in a namespace the operator does not watch:
//! create = create, add the finalizer, write the status; delete = delete, read the CRD (the
//! operator's uninstall check), write the status, remove the finalizer. Its bindings are
//! watched as the benchmark watches the operator's; the operator's own watch has no
//! counterpart there, as it is part of what an operator costs. The operator's
//! throughput is reported against `min(C/L, R)` and against the ceiling, and its delete overhead
//! against the ceiling client's own per-binding latency (one binding at a time, like the
//! overhead samples).
//! Knobs (environment): BENCH_N (1000), BENCH_LATENCY_MS (50), BENCH_QPS (200),
//! BENCH_CONCURRENCY (32). Prints a table and writes `target/bench/report.json`.

#[path = "../support/mod.rs"]
mod support;

#[path = "../e2e/harness.rs"]
#[allow(dead_code)]
mod harness;

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition as Crd;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::events::Reporter;
use kube::runtime::{WatchStreamExt, watcher};
use serde::Serialize;
use serde_json::json;
use vip_operator::api::v1alpha1::{CRD_NAME, Reason, VipBinding};
use vip_operator::controller::KubeOps;
use vip_operator::controller::{CondStatus, StatusBuilder};
use vip_operator::simulator::{CallRecord, SimOperation};

use common::{knob, nic, round};
use harness::{Env, admin_get, free_port, ready};

#[derive(Default)]
struct Seen {
    ready_at: HashMap<String, Instant>,
    gone_at: HashMap<String, Instant>,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct ProcStats {
    rss_mb: f64,
    peak_rss_mb: f64,
    cpu_seconds: f64,
}

fn proc_stats(pid: u32) -> Option<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<f64> {
        status.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse::<f64>().ok()
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ProcStats { rss_mb: kb("VmRSS:")? / 1024.0, peak_rss_mb: kb("VmHWM:")? / 1024.0, cpu_seconds: ticks / 100.0 })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Debug, Serialize)]
struct Phase {
    bindings: usize,
    seconds: f64,
    per_second: f64,
    limit_per_second: f64,
    fraction_of_limit: f64,
    cloud_calls_per_binding: f64,
    throttled_calls: usize,
    api_requests_per_binding: BTreeMap<String, f64>,
    api_writes_per_binding: f64,
}

/// The API-server ceiling (see the module doc).
#[derive(Debug, Serialize)]
struct Ceiling {
    create_per_second: f64,
    delete_per_second: f64,
    /// One delete sequence at a time: DELETE sent -> finalizer removal answered.
    delete_latency_ms: BTreeMap<String, f64>,
}

/// One binding of the ceiling client, as the operator would hold it after its create.
async fn ceiling_create(api: &kube::Api<VipBinding>, ops: &KubeOps, name: &str, i: usize) -> VipBinding {
    let b: VipBinding = serde_json::from_value(json!({
        "apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipBinding", "metadata": {"name": name},
        "spec": {"nicId": format!("00000000-0000-4000-9000-{i:012}"), "ipAddress": "10.9.0.1",
                 "subnetId": harness::SUBNET, "projectId": harness::PROJECT, "region": harness::REGION}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &b).await.expect("ceiling: create");
    let with_finalizer = ops.add_finalizer(&created).await.expect("ceiling: add finalizer");
    let status = StatusBuilder::new(&with_finalizer, Time(jiff::Timestamp::now()))
        .ready(CondStatus::True, Reason::Bound, "bound")
        .bound(CondStatus::True, Reason::Bound, "bound")
        .port_id(Some(with_finalizer.spec.nic_id.clone()))
        .build_always();
    ops.write_status(&with_finalizer, &status).await.expect("ceiling: status");
    with_finalizer
}

async fn ceiling_delete(api: &kube::Api<VipBinding>, crds: &kube::Api<Crd>, ops: &KubeOps, b: &VipBinding) {
    api.delete(&b.name_any(), &DeleteParams::default()).await.expect("ceiling: delete");
    crds.get(CRD_NAME).await.expect("ceiling: CRD check");
    let status = StatusBuilder::new(b, Time(jiff::Timestamp::now()))
        .ready(CondStatus::False, Reason::Unbound, "unbound")
        .bound(CondStatus::False, Reason::Unbound, "unbound")
        .build_always();
    ops.write_status(b, &status).await.expect("ceiling: status");
    ops.remove_finalizer(b).await.expect("ceiling: remove finalizer");
}

/// Runs the ceiling client in its own namespace (removed afterwards).
async fn ceiling(env: &Env, n: usize, concurrency: usize, samples: usize) -> Ceiling {
    use k8s_openapi::api::core::v1::Namespace;
    let namespace = format!("{}-ceiling", env.namespace);
    let namespaces: kube::Api<Namespace> = kube::Api::all(env.client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.expect("ceiling namespace");
    let api: kube::Api<VipBinding> = kube::Api::namespaced(env.client.clone(), &namespace);
    let crds: kube::Api<Crd> = kube::Api::all(env.client.clone());
    let ops = KubeOps::new(env.client.clone(), Reporter { controller: "bench-ceiling".into(), instance: None });
    // The operator phases are observed by the benchmark's watch, which costs the API server a
    // watch event per write; the ceiling's bindings are watched the same way.
    let observer =
        tokio::spawn(watcher(api.clone(), watcher::Config::default()).default_backoff().for_each(|_| async {}));

    let started = Instant::now();
    let bindings: Vec<VipBinding> = futures::stream::iter(0..n)
        .map(|i| {
            let (api, ops) = (&api, &ops);
            async move { ceiling_create(api, ops, &format!("c-{i:05}"), i).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let create_per_second = n as f64 / started.elapsed().as_secs_f64();

    let (one_by_one, rest) = bindings.split_at(samples.min(bindings.len()));
    let mut latencies = Vec::with_capacity(one_by_one.len());
    for b in one_by_one {
        let sent = Instant::now();
        ceiling_delete(&api, &crds, &ops, b).await;
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let started = Instant::now();
    futures::stream::iter(rest).for_each_concurrent(concurrency, |b| ceiling_delete(&api, &crds, &ops, b)).await;
    let delete_per_second = rest.len().max(1) as f64 / started.elapsed().as_secs_f64();
    observer.abort();
    let _ = namespaces.delete(&namespace, &DeleteParams::default()).await;
    Ceiling {
        create_per_second: round(create_per_second, 1),
        delete_per_second: round(delete_per_second, 1),
        delete_latency_ms: [
            ("p50".to_string(), round(percentile(&latencies, 50.0), 2)),
            ("p99".to_string(), round(percentile(&latencies, 99.0), 2)),
        ]
        .into(),
    }
}

#[derive(Debug, Serialize)]
struct Report {
    backend: &'static str,
    ceiling: Ceiling,
    n: usize,
    latency_ms: u64,
    qps: f64,
    concurrency: u16,
    create: Phase,
    delete: Phase,
    delete_overhead_ms: BTreeMap<String, f64>,
    delete_overhead_samples: usize,
    idle_rss_mb: f64,
    peak_rss_mb: f64,
    cpu_seconds: f64,
    checks: Vec<(String, bool)>,
}

/// Operator requests (by User-Agent) by verb, per binding.
fn api_requests(env: &Env, per: usize) -> (BTreeMap<String, f64>, f64) {
    let Some(api) = env.fake() else { return (BTreeMap::new(), f64::NAN) };
    let mut by_verb = BTreeMap::<String, f64>::new();
    let mut writes = 0.0;
    for r in api.requests().iter().filter(|r| r.user_agent.as_deref().is_some_and(|ua| ua.starts_with("vip-operator/")))
    {
        *by_verb.entry(r.verb.clone()).or_default() += 1.0 / per as f64;
        if matches!(r.verb.as_str(), "create" | "update" | "patch" | "delete") {
            writes += 1.0 / per as f64;
        }
    }
    (by_verb, writes)
}

/// One phase's numbers: `bindings` handled in `seconds`; cloud calls of `op` among `calls`
/// counted per `per` bindings; the operator's API requests per `per` bindings.
fn phase(
    env: &Env,
    calls: &[CallRecord],
    op: SimOperation,
    bindings: usize,
    seconds: f64,
    limit: f64,
    per: usize,
) -> Phase {
    let succeeded = calls.iter().filter(|c| c.operation == Some(op) && c.status == 200).count();
    let (requests, writes) = api_requests(env, per);
    let rate = bindings.max(1) as f64 / seconds;
    Phase {
        bindings,
        seconds: round(seconds, 3),
        per_second: round(rate, 1),
        limit_per_second: limit,
        fraction_of_limit: round(rate / limit, 3),
        cloud_calls_per_binding: round(succeeded as f64 / per as f64, 3),
        throttled_calls: calls.iter().filter(|c| c.status == 429).count(),
        api_requests_per_binding: requests.into_iter().map(|(k, v)| (k, round(v, 3))).collect(),
        api_writes_per_binding: round(writes, 3),
    }
}

/// Creates one binding per name, 64 at a time; the i-th gets the i-th NIC and address.
async fn create_fleet(env: &Env, names: &[String]) {
    futures::stream::iter(names.iter().enumerate())
        .for_each_concurrent(64, |(i, name)| async move {
            let ip = format!("10.{}.{}.{}", i / 62_500, (i / 250) % 250, i % 250 + 1);
            env.create(name, &nic(i), &ip, json!({})).await;
        })
        .await;
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: usize = knob("BENCH_N", 1000);
    let latency_ms: u64 = knob("BENCH_LATENCY_MS", 50);
    let qps: f64 = knob("BENCH_QPS", 200.0);
    let concurrency: u16 = knob("BENCH_CONCURRENCY", 32);
    let limit = (concurrency as f64 / (latency_ms as f64 / 1000.0)).min(qps);
    println!("bench: N={n} L={latency_ms}ms R={qps}/s concurrency={concurrency} -> limit {limit:.0} bindings/s");

    let mut env = Env::new("bench").await;
    println!("bench: API backend: {}", env.backend_name());
    let samples = (n / 10).clamp(1, 100);
    env.sim.set_latency(Duration::from_millis(latency_ms));
    // The cloud throttles just above R: an operator that overran its limit would see 429s.
    env.sim.set_qps(Some(qps * 1.1)).unwrap();
    let port = free_port();
    let mut builder = env.operator();
    // Diagnostics: pass allocator settings through to the operator (e.g. MALLOC_ARENA_MAX).
    if let Ok(v) = std::env::var("BENCH_MALLOC_ARENA_MAX") {
        builder = builder.env("MALLOC_ARENA_MAX", &v);
    }
    // Diagnostics: extra operator flags, space-separated.
    for arg in std::env::var("BENCH_OPERATOR_ARGS").unwrap_or_default().split_whitespace() {
        builder = builder.arg(arg);
    }
    let op = builder
        .log_level(&knob("BENCH_LOG", "warn".to_string()))
        .cloud_rate(qps, (qps / 10.0).ceil().max(1.0) as u32)
        .arg("--concurrency")
        .arg(&concurrency.to_string())
        .arg("--cloud-concurrency")
        .arg(&concurrency.to_string())
        .admin_port(port)
        .start()
        .await;
    let pid = op.pid().expect("operator pid");
    let deadline = Instant::now() + Duration::from_secs(60);
    while admin_get(port, "/readyz").await.is_none_or(|(s, _)| s != 200) {
        assert!(Instant::now() < deadline, "operator not ready:\n{}", op.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Our own watch times Ready and disappearance per object.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let changed = Arc::new(tokio::sync::Notify::new());
    let record = seen.clone();
    let notify = changed.clone();
    let stream = watcher(env.bindings(), watcher::Config::default()).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Ok(Some(event)) = stream.try_next().await {
            let now = Instant::now();
            let mut seen = record.lock().unwrap();
            match event {
                watcher::Event::Apply(b) | watcher::Event::InitApply(b) if ready(&b) == Some(("True", "Bound")) => {
                    seen.ready_at.entry(b.metadata.name.clone().unwrap_or_default()).or_insert(now);
                }
                watcher::Event::Delete(b) => {
                    seen.gone_at.insert(b.metadata.name.clone().unwrap_or_default(), now);
                    notify.notify_waiters();
                }
                _ => {}
            }
        }
    });
    if let Some(api) = env.fake() {
        api.reset_request_log();
    }

    // Create phase.
    let names: Vec<String> = (0..n).map(|i| format!("vip-{i:05}")).collect();
    let started = Instant::now();
    create_fleet(&env, &names).await;
    let created_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs((n as u64 / 20).max(120));
    while seen.lock().unwrap().ready_at.len() < n {
        assert!(Instant::now() < deadline, "not all bindings became Ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let create_seconds = seen.lock().unwrap().ready_at.values().max().unwrap().duration_since(started).as_secs_f64();
    let create = phase(&env, &env.sim.calls(), SimOperation::Bind, n, create_seconds, limit, n);
    println!("created {n} objects in {:.2}s; all Ready after {create_seconds:.2}s", created_in.as_secs_f64());

    // Idle: N bindings cached, nothing to do.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = proc_stats(pid).expect("operator stats");
    if let Some(api) = env.fake() {
        api.reset_request_log();
    }
    let calls_before_delete = env.sim.calls().len();

    // Per-object overhead: one deletion at a time, so no queueing is measured.
    let mut overheads = Vec::with_capacity(samples);
    let mut sent_wall = Vec::new();
    for name in &names[..samples] {
        sent_wall.push(jiff::Timestamp::now());
        let sent = Instant::now();
        env.bindings().delete(name, &DeleteParams::default()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(gone) = seen.lock().unwrap().gone_at.get(name) {
                // Minus the time the cloud (the simulator) actually took for the unbind, which
                // is L plus its timer's rounding.
                let nic = nic(names.iter().position(|n| n == name).unwrap_or(0));
                let cloud_ms = env
                    .sim
                    .calls()
                    .iter()
                    .rev()
                    .find(|c| c.nic_id.as_deref() == Some(nic.as_str()) && c.operation == Some(SimOperation::Unbind))
                    .map(|c| c.duration_us as f64 / 1000.0)
                    .unwrap_or(latency_ms as f64);
                overheads.push(gone.duration_since(sent).as_secs_f64() * 1000.0 - cloud_ms);
                break;
            }
            assert!(Instant::now() < deadline, "{name} not deleted");
            // Woken by the watcher when something is deleted (no polling noise in the timing).
            let _ = tokio::time::timeout(Duration::from_millis(100), changed.notified()).await;
        }
    }
    if std::env::var("BENCH_LOG").is_ok() {
        // Diagnostics: the operator's log around the first sampled deletion.
        for line in op.logs().lines().filter(|l| l.contains(&format!("\"{}\"", names[0])) || l.contains(&names[0])) {
            println!("{}", &line[..line.len().min(300)]);
        }
        println!("sample deletion overheads (ms): {:?}", &overheads[..overheads.len().min(10)]);
        println!(
            "first sample: DELETE sent at {}, gone after {:.2} ms",
            sent_wall[0],
            overheads[0] + latency_ms as f64
        );
    }
    if let Some(api) = env.fake() {
        // How long the fake API server itself took per request kind, during the sampled deletes.
        let mut by_kind = BTreeMap::<String, Vec<u64>>::new();
        for r in api.requests() {
            let kind = format!(
                "{} {}{}",
                r.verb,
                r.resource,
                r.subresource.as_ref().map(|s| format!("/{s}")).unwrap_or_default()
            );
            by_kind.entry(kind).or_default().push(r.duration_us);
        }
        for (kind, mut d) in by_kind {
            d.sort();
            println!(
                "fake API server: {kind:<32} n={:<5} p50 {:>6} us  p99 {:>6} us",
                d.len(),
                d[d.len() / 2],
                d[d.len() * 99 / 100]
            );
        }
    }
    overheads.sort_by(f64::total_cmp);

    // Delete phase: the rest at once.
    let rest = &names[samples..];
    let started = Instant::now();
    futures::stream::iter(rest)
        .for_each_concurrent(64, |name| {
            let env = &env;
            async move {
                env.bindings().delete(name, &DeleteParams::default()).await.unwrap();
            }
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs((n as u64 / 20).max(120));
    while seen.lock().unwrap().gone_at.len() < n {
        assert!(Instant::now() < deadline, "not all bindings went away");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delete_seconds = {
        let seen = seen.lock().unwrap();
        rest.iter()
            .filter_map(|n| seen.gone_at.get(n))
            .max()
            .map(|t| t.duration_since(started).as_secs_f64())
            .unwrap_or(0.0)
    };
    // Cloud calls and API requests of both delete stages, per binding.
    let delete = phase(
        &env,
        &env.sim.calls()[calls_before_delete..],
        SimOperation::Unbind,
        rest.len(),
        delete_seconds,
        limit,
        n,
    );
    let end = proc_stats(pid).expect("operator stats");
    assert!(env.sim.state().nics.is_empty(), "VIPs left bound");

    // Churn: rounds of creating and deleting N bindings. Per-object state must leave with its
    // object, so memory after the last round stays within 10% of after the first.
    let rounds: usize = knob("BENCH_ROUNDS", 10);
    let mut churn_rss = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let batch: Vec<String> = (0..n).map(|i| format!("r{round}-{i:05}")).collect();
        create_fleet(&env, &batch).await;
        let deadline = Instant::now() + Duration::from_secs((n as u64 / 20).max(120));
        while batch.iter().any(|b| !seen.lock().unwrap().ready_at.contains_key(b)) {
            assert!(Instant::now() < deadline, "round {round}: not all bindings became Ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        futures::stream::iter(&batch)
            .for_each_concurrent(64, |name| {
                let env = &env;
                async move {
                    env.bindings().delete(name, &DeleteParams::default()).await.unwrap();
                }
            })
            .await;
        while batch.iter().any(|b| !seen.lock().unwrap().gone_at.contains_key(b)) {
            assert!(Instant::now() < deadline, "round {round}: not all bindings went away");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        churn_rss.push(proc_stats(pid).expect("operator stats").rss_mb);
    }
    if !churn_rss.is_empty() {
        println!("churn: operator RSS after each of {rounds} rounds of {n} creates and deletes (MB): {churn_rss:.1?}");
    }

    // The ceiling last: right after start-up the API server is still busy (e.g. building the
    // OpenAPI spec of the CRD just applied), which would understate it.
    let ceiling = ceiling(&env, n, concurrency as usize, samples).await;
    println!(
        "API-server ceiling: create {:.0}/s, delete {:.0}/s, delete sequence one at a time p50 {:.2} ms p99 {:.2} ms",
        ceiling.create_per_second,
        ceiling.delete_per_second,
        ceiling.delete_latency_ms["p50"],
        ceiling.delete_latency_ms["p99"]
    );

    let p50 = percentile(&overheads, 50.0);
    let p99 = percentile(&overheads, 99.0);
    let create_target = limit.min(ceiling.create_per_second);
    let delete_target = limit.min(ceiling.delete_per_second);
    let ceiling_p99 = ceiling.delete_latency_ms["p99"];
    let mut checks = vec![
        (
            format!("create throughput >= 90% of min(limit, ceiling) = {create_target:.0}/s"),
            create.per_second >= 0.9 * create_target,
        ),
        (
            format!("delete throughput >= 90% of min(limit, ceiling) = {delete_target:.0}/s"),
            delete.per_second >= 0.9 * delete_target,
        ),
        ("exactly 1 bind call per binding".to_string(), create.cloud_calls_per_binding == 1.0),
        ("exactly 1 unbind call per binding".to_string(), delete.cloud_calls_per_binding == 1.0),
        (
            format!("delete overhead p99 <= 1.5 x the ceiling client's p99 ({:.2} ms)", 1.5 * ceiling_p99),
            p99 <= 1.5 * ceiling_p99,
        ),
        ("no cloud call throttled".to_string(), create.throttled_calls + delete.throttled_calls == 0),
    ];
    if env.is_fake() {
        checks.push(("<= 2 API writes per delete".to_string(), delete.api_writes_per_binding <= 2.0));
    }
    if n >= 10_000 {
        checks.push(("peak RSS < 64 MB at N >= 10000".to_string(), end.peak_rss_mb < 64.0));
    }
    if let (Some(first), Some(last)) = (churn_rss.first(), churn_rss.last())
        && churn_rss.len() > 1
    {
        checks.push((
            format!(
                "RSS after {} churn rounds within 10% of after the first ({first:.1} -> {last:.1} MB)",
                churn_rss.len()
            ),
            *last <= first * 1.1,
        ));
    }
    let report = Report {
        backend: env.backend_name(),
        ceiling,
        n,
        latency_ms,
        qps,
        concurrency,
        create,
        delete,
        delete_overhead_ms: [
            ("p50".to_string(), round(p50, 2)),
            ("p99".to_string(), round(p99, 2)),
            ("max".to_string(), round(*overheads.last().unwrap_or(&f64::NAN), 2)),
        ]
        .into(),
        delete_overhead_samples: overheads.len(),
        idle_rss_mb: round(idle.rss_mb, 1),
        peak_rss_mb: round(end.peak_rss_mb, 1),
        cpu_seconds: round(end.cpu_seconds, 2),
        checks,
    };

    println!();
    println!("backend: {}", report.backend);
    println!(
        "| phase  | bindings | seconds | per second | limit/s | of limit | ceiling/s | of ceiling | cloud calls/binding | API requests/binding (operator) | writes/binding |"
    );
    println!(
        "| ------ | -------- | ------- | ---------- | ------- | -------- | --------- | ---------- | ------------------- | ------------------------------- | -------------- |"
    );
    for (name, p, ceiling) in [
        ("create", &report.create, report.ceiling.create_per_second),
        ("delete", &report.delete, report.ceiling.delete_per_second),
    ] {
        let verbs: Vec<String> = p.api_requests_per_binding.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "| {name:<6} | {:>8} | {:>7.2} | {:>10.1} | {:>7.0} | {:>7.1}% | {:>9.0} | {:>9.1}% | {:>19} | {:<31} | {:>14} |",
            p.bindings,
            p.seconds,
            p.per_second,
            p.limit_per_second,
            p.fraction_of_limit * 100.0,
            ceiling,
            p.per_second / ceiling * 100.0,
            p.cloud_calls_per_binding,
            if verbs.is_empty() { "n/a (fake API server only)".to_string() } else { verbs.join(", ") },
            if p.api_writes_per_binding.is_nan() { "n/a".to_string() } else { p.api_writes_per_binding.to_string() }
        );
    }
    println!();
    println!(
        "delete overhead (deletion -> finalizer removed, minus the cloud call's own time), {} samples: p50 {:.2} ms, p99 {:.2} ms",
        report.delete_overhead_samples, p50, p99
    );
    println!(
        "ceiling client's delete sequence, one at a time: p50 {:.2} ms, p99 {:.2} ms (overhead p99 = {:.2}x)",
        report.ceiling.delete_latency_ms["p50"],
        ceiling_p99,
        p99 / ceiling_p99
    );
    println!(
        "operator: idle RSS {:.1} MB with {n} cached, peak RSS {:.1} MB, CPU {:.2} s",
        report.idle_rss_mb, report.peak_rss_mb, report.cpu_seconds
    );
    println!();
    for (check, ok) in &report.checks {
        println!("{} {check}", if *ok { "PASS" } else { "FAIL" });
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("\nreport: {}", dir.join("report.json").display());
    drop(op);
    env.cleanup().await;
}
