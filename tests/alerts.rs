//! The chart's alerts and dashboard: `promtool test rules` on the rendered PrometheusRule (each
//! alert has a case that fires and one that does not: tests/prometheus/alerts.test.yaml), every
//! expression names only metrics the operator exports, every alert has its runbook in the
//! README, the README lists every dashboard panel with its query, and the values shape them.
//!
//! Needs `helm` (like tests/helm.rs) and `promtool` (Debian's `prometheus` package). Without
//! promtool the promtool test says SKIPPED, unless VIPOP_REQUIRE_PROMETHEUS=1 (CI), where it fails.

#[path = "support/chart.rs"]
mod chart;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use chart::{ROOT, Rendered, prometheus_tool, render, template};
use serde_json::Value;

const ENABLED: &str = "metrics: {prometheusRule: {enabled: true}, dashboard: {enabled: true}}";

fn readme() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn names(r: &Rendered) -> BTreeSet<String> {
    r.alerts().iter().map(|a| s(&a["alert"]).to_owned()).collect()
}

#[test]
fn promtool_unit_tests_pass_for_the_rendered_rules() {
    let Some(promtool) = prometheus_tool("promtool") else { return };
    let r = render(ENABLED);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), r.rule_file()).unwrap();
    let tests = dir.path().join("alerts.test.yaml");
    std::fs::copy(Path::new(ROOT).join("tests/prometheus/alerts.test.yaml"), &tests).unwrap();
    // The full values file's rules (every alert value set) must load too.
    let full = std::fs::read_to_string(chart::chart().join("ci/full-values.yaml")).unwrap();
    std::fs::write(dir.path().join("full-rules.yaml"), render(&full).rule_file()).unwrap();
    for args in [
        vec!["check", "rules", "rules.yaml"],
        vec!["check", "rules", "full-rules.yaml"],
        vec!["test", "rules", "alerts.test.yaml"],
    ] {
        let out = Command::new(&promtool).args(&args).current_dir(dir.path()).output().expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Each alert is tested firing and not firing, and the test file tests no alert that is gone.
#[test]
fn every_alert_has_a_firing_and_a_quiet_case() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("tests/prometheus/alerts.test.yaml")).unwrap();
    let tests: Value = serde_saphyr::from_str(&text).unwrap();
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for t in tests["tests"].as_array().unwrap() {
        for case in t["alert_rule_test"].as_array().unwrap() {
            let entry = cases.entry(s(&case["alertname"]).to_owned()).or_default();
            if case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }
    let alerts = names(&render(ENABLED));
    assert_eq!(cases.keys().cloned().collect::<BTreeSet<_>>(), alerts, "tested alerts vs the chart's");
    for (alert, (firing, quiet)) in cases {
        assert!(firing > 0 && quiet > 0, "{alert}: {firing} firing and {quiet} quiet cases");
    }
}

/// GitHub's anchor for a heading: lower case, spaces to dashes, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The README's runbook section: `### <Alert>` headings under "## Alerts and runbooks".
fn runbooks() -> BTreeMap<String, String> {
    let readme = readme();
    let start = readme.find("\n## Alerts and runbooks").expect("README section \"Alerts and runbooks\"");
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let mut out = BTreeMap::new();
    for part in section[..end].split("\n### ").skip(1) {
        let (heading, body) = part.split_once('\n').unwrap_or((part, ""));
        out.insert(heading.trim().to_owned(), body.to_owned());
    }
    out
}

#[test]
fn every_alert_is_labelled_annotated_and_has_a_runbook() {
    let r = render(ENABLED);
    let runbooks = runbooks();
    let chart_yaml: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart::chart().join("Chart.yaml")).unwrap()).unwrap();
    let home = s(&chart_yaml["home"]);
    for a in r.alerts() {
        let name = s(&a["alert"]);
        assert!(["critical", "warning", "info"].contains(&s(&a["labels"]["severity"])), "{name}: severity");
        for key in ["summary", "description"] {
            assert!(!s(&a["annotations"][key]).trim().is_empty(), "{name}: {key}");
        }
        let url = s(&a["annotations"]["runbook_url"]);
        let (base, fragment) = url.split_once('#').unwrap_or_else(|| panic!("{name}: runbook_url {url} has no anchor"));
        assert_eq!(base, format!("{home}/blob/main/README.md"), "{name}: the README of the chart's home");
        assert_eq!(fragment, anchor(name), "{name}: the anchor of its README heading");
        let body = runbooks.get(name).unwrap_or_else(|| panic!("README has no runbook `### {name}`"));
        for part in ["**Means:**", "**Look:**", "**Do:**"] {
            assert!(body.contains(part), "{name}'s runbook lacks {part}");
        }
    }
    assert_eq!(runbooks.keys().cloned().collect::<BTreeSet<_>>(), names(&r), "runbooks vs alerts");
}

/// The metric names in a PromQL expression (`vipop_…` and `up`), histogram suffixes dropped.
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("vipop_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        out.insert(base.to_owned());
        rest = &tail[end..];
    }
    out
}

/// Every family the operator exports (their `# TYPE` lines), counters with `_total`. A family
/// shows only once it has a series: each gets one first.
fn exported() -> BTreeSet<String> {
    use vip_operator::ecs::Operation;
    use vip_operator::ecs::client::{AttemptReport, CallObserver};
    let m = vip_operator::metrics::Metrics::new();
    m.attempt(&AttemptReport { operation: Operation::Bind, result: Ok(()), elapsed: std::time::Duration::ZERO });
    let deleting: vip_operator::api::v1alpha1::VipBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipBinding",
        "metadata": {"name": "a", "namespace": "n", "deletionTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nicId": "n1", "ipAddress": "10.0.0.1", "subnetId": "s"},
    }))
    .unwrap();
    m.refresh_bindings(std::iter::once(&deleting), "2026-01-01T00:01:00Z".parse().unwrap());
    let group: vip_operator::api::group::VipGroup = serde_json::from_value(serde_json::json!({
        "apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipGroup",
        "metadata": {"name": "g", "namespace": "n"},
        "spec": {"ipAddress": "10.0.0.1", "subnetId": "s", "nodeSelector": {"matchLabels": {"a": "b"}}},
        "status": {"desired": 1, "bound": 1, "failing": 0},
    }))
    .unwrap();
    m.refresh_groups(std::iter::once(&group));
    m.drift_repaired("n", "VPC");
    let text = m.encode().unwrap();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            out.insert(if kind == "counter" { format!("{name}_total") } else { name.to_owned() });
        }
    }
    out
}

/// Each panel (rows aside) with its targets' expressions.
fn panels(dashboard: &Value) -> Vec<(String, Vec<String>)> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .map(|p| {
            let exprs = p["targets"].as_array().unwrap().iter().map(|t| s(&t["expr"]).to_owned()).collect();
            (s(&p["title"]).to_owned(), exprs)
        })
        .collect()
}

#[test]
fn alerts_and_panels_query_only_metrics_the_operator_exports() {
    let exported = exported();
    let r = render(ENABLED);
    let mut used = BTreeSet::new();
    for a in r.alerts() {
        used.extend(metrics_in(s(&a["expr"])));
    }
    for (_, exprs) in panels(&r.dashboard()) {
        for e in exprs {
            used.extend(metrics_in(&e));
        }
    }
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(unknown.is_empty(), "not exported by the operator: {unknown:?}\nexported: {exported:?}");
    assert!(used.len() > 15, "{used:?}");
}

#[test]
fn the_dashboard_uses_a_datasource_variable_and_the_readme_lists_every_panel_query() {
    let r = render(ENABLED);
    let cm = r.all("ConfigMap").into_iter().find(|c| c["metadata"]["name"] == "vip-operator-dashboard").unwrap();
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let d = r.dashboard();
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"));
    // No hard-coded datasource anywhere: every uid in the model is the variable.
    fn uids<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(ds)) = m.get("datasource") {
                    out.push(ds.get("uid").unwrap_or(&Value::Null));
                }
                m.values().for_each(|x| uids(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| uids(x, out)),
            _ => {}
        }
    }
    let mut found = vec![];
    uids(&d, &mut found);
    assert!(found.len() > 16, "{found:?}");
    assert!(found.iter().all(|u| *u == "${datasource}"), "{found:?}");
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id {}", p["id"]);
    }
    let readme = readme();
    let panels = panels(&d);
    assert!(panels.len() >= 10);
    for (title, exprs) in panels {
        assert!(readme.contains(&format!("| {title} |")), "README's panel table lacks \"{title}\"");
        for e in exprs {
            assert!(readme.contains(&format!("`{e}`")), "README lacks panel \"{title}\"'s query `{e}`");
        }
    }
}

/// The values reach the rules: disabled alerts go, labels, job, thresholds and `for` follow.
#[test]
fn alert_values_shape_the_rules() {
    let none = render("{}");
    assert!(none.all("PrometheusRule").is_empty() && none.all("ConfigMap").is_empty(), "both off by default");

    let r = render(
        "leaderElection: {leaseSeconds: 20}
metrics:
  prometheusRule:
    enabled: true
    namespace: monitoring
    labels: {release: prom}
    alertLabels: {team: platform}
    job: my-job
    alerts:
      VipBindingNotReady: {enabled: false, severity: warning, for: 30m}
      VipBindingDeletionHeld: {enabled: true, severity: critical, for: 2m, threshold: 60}",
    );
    let rule = r.one("PrometheusRule");
    assert_eq!(rule["metadata"]["namespace"], "monitoring");
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    let alerts: BTreeMap<_, _> = r.alerts().into_iter().map(|a| (s(&a["alert"]).to_owned(), a)).collect();
    assert!(!alerts.contains_key("VipBindingNotReady"));
    let held = alerts["VipBindingDeletionHeld"];
    assert_eq!(held["for"], "2m");
    assert_eq!(held["labels"]["severity"], "critical");
    assert!(s(&held["expr"]).trim_end().ends_with("> 60"), "{}", held["expr"]);
    for (name, a) in &alerts {
        assert_eq!(a["labels"]["team"], "platform", "{name}");
        assert!(s(&a["expr"]).contains(r#"job="my-job""#), "{name}: {}", a["expr"]);
    }
    assert_eq!(alerts["VipOperatorNoLeader"]["for"], "100s", "two lease durations and a minute");
    assert_eq!(alerts["VipOperatorDown"]["labels"]["job"], "my-job");
}

/// Values that would render rules Prometheus refuses (or templates it would expand) fail at
/// `helm install`, with the value's path.
#[test]
fn bad_alert_values_fail_to_render() {
    for (values, path) in [
        (r#"alertLabels: {"team/x": a}"#, "propertyName"),
        ("alertLabels: {severity: page}", "propertyName"),
        ("alertLabels: {job: x}", "propertyName"),
        (r#"alertLabels: {team: "{{ $value }}"}"#, "/metrics/prometheusRule/alertLabels/team"),
        (r#"job: "{{x}}""#, "/metrics/prometheusRule/job"),
        (r#"job: 'a"b'"#, "/metrics/prometheusRule/job"),
        (r#"runbookUrl: "https://x/{{y}}""#, "/metrics/prometheusRule/runbookUrl"),
        (
            "alerts: {VipOperatorCloudErrors: {enabled: true, severity: warning, for: 1m, threshold: 1.5}}",
            "/metrics/prometheusRule/alerts/VipOperatorCloudErrors/threshold",
        ),
        (
            "alerts: {VipOperatorDown: {enabled: true, severity: page, for: 1m}}",
            "/metrics/prometheusRule/alerts/VipOperatorDown/severity",
        ),
        (
            "alerts: {VipOperatorDown: {enabled: true, severity: warning, for: 5}}",
            "/metrics/prometheusRule/alerts/VipOperatorDown/for",
        ),
        (
            "alerts: {VipOperatorDown: {enabled: true, severity: warning, for: soon}}",
            "/metrics/prometheusRule/alerts/VipOperatorDown/for",
        ),
        ("alerts: {VipOperatorSlow: {enabled: true, severity: warning, for: 1m}}", "VipOperatorSlow"),
    ] {
        let values = format!("metrics:\n  prometheusRule:\n    enabled: true\n    {values}\n");
        let err = match template(&values, &[]) {
            Err(e) => e,
            Ok(_) => panic!("rendered:\n{values}"),
        };
        assert!(err.contains(path), "{values}: {err}");
    }
}
