//! `make bench`, last part: the cost of one `/metrics` scrape at fleet size, without a cluster.
//! The binding and group gauges are computed from the caches at scrape time (namespace x reason
//! counts, the oldest deletion per namespace and reason, each group's members), so a scrape
//! walks every cached binding: this measures that walk and the encoding, and what Prometheus
//! gets (bytes, series).
//!
//! Knobs: BENCH_METRICS_BINDINGS (20000), BENCH_METRICS_NAMESPACES (500),
//! BENCH_METRICS_DELETING (1000), BENCH_METRICS_GROUPS (200). Prints a table and writes
//! `target/bench/metrics.json`.

mod common;

use std::time::Instant;

use serde_json::json;
use vip_operator::api::group::VipGroup;
use vip_operator::api::v1alpha1::VipBinding;
use vip_operator::metrics::Metrics;

use common::{knob, round};

const REASONS: [&str; 6] = ["Bound", "Bound", "Bound", "BindFailed", "EndpointNotFound", "CloudUnavailable"];

fn main() {
    let n = knob("BENCH_METRICS_BINDINGS", 20_000);
    let namespaces = knob("BENCH_METRICS_NAMESPACES", 500).max(1);
    let deleting = knob("BENCH_METRICS_DELETING", 1_000);
    let n_groups = knob("BENCH_METRICS_GROUPS", 200);
    let bindings: Vec<VipBinding> = (0..n)
        .map(|i| {
            let mut b: VipBinding = serde_json::from_value(json!({
                "apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipBinding",
                "metadata": {"name": format!("b-{i}"), "namespace": format!("team-{}", i % namespaces)},
                "spec": {"nicId": format!("nic-{i}"), "ipAddress": "10.0.0.1", "subnetId": "s"},
                "status": {
                    "boundWith": {"projectId": "p", "api": if i % 2 == 0 { "VPC" } else { "ECS" }},
                    "conditions": [{"type": "Ready", "status": "False", "reason": REASONS[i % REASONS.len()],
                                    "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
            }))
            .expect("binding");
            if i < deleting {
                b.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2026-01-01T00:00:00Z".parse().unwrap()));
            }
            b
        })
        .collect();
    let groups: Vec<VipGroup> = (0..n_groups)
        .map(|i| {
            serde_json::from_value(json!({
                "apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipGroup",
                "metadata": {"name": format!("g-{i}"), "namespace": format!("team-{}", i % namespaces)},
                "spec": {"ipAddress": "10.0.0.1", "subnetId": "s", "nodeSelector": {"matchLabels": {"a": "b"}}},
                "status": {"desired": 10, "bound": 9, "failing": 1},
            }))
            .expect("group")
        })
        .collect();
    let m = Metrics::new();
    let now: jiff::Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
    let rounds = 20;
    let mut refresh = vec![];
    let mut encode = vec![];
    let mut text = String::new();
    for _ in 0..rounds {
        let t = Instant::now();
        m.refresh_bindings(bindings.iter(), now);
        m.refresh_groups(groups.iter());
        refresh.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        text = m.encode().expect("encode");
        encode.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let series = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();
    let (refresh_ms, encode_ms) = (median(&mut refresh), median(&mut encode));
    println!(
        "| /metrics at {n} bindings in {namespaces} namespaces ({deleting} deleting), {n_groups} groups | value |"
    );
    println!("| --- | --- |");
    println!("| cache gauges recomputed (median of {rounds}) | {refresh_ms:.1} ms |");
    println!("| encoded (median of {rounds}) | {encode_ms:.1} ms |");
    println!("| body | {} KiB |", text.len() / 1024);
    println!("| samples | {series} |");
    let report = json!({
        "bindings": n, "namespaces": namespaces, "deleting": deleting, "groups": n_groups,
        "refresh_ms": round(refresh_ms, 2), "encode_ms": round(encode_ms, 2), "bytes": text.len(), "samples": series,
    });
    let _ = std::fs::create_dir_all("target/bench");
    let _ = std::fs::write("target/bench/metrics.json", report.to_string());
}
