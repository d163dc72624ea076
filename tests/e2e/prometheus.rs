//! The chart's alerts and dashboard against a real Prometheus (Debian's `prometheus` package)
//! scraping the running operator on loopback, with the chart's rules loaded (short `for:` and
//! thresholds through a values override, as a user would set them). Through a scenario (binds,
//! a VIP group, a drift repair, a deletion held by a gateway 404, a bad key) it checks over the
//! Prometheus HTTP API that every dashboard query returns series, that the held-deletion and
//! auth alerts fire carrying the binding's namespace, and that both resolve once fixed.
//!
//! The scrape config is what the chart's ServiceMonitor gives: `honor_labels: true` and a
//! target `namespace` label (the operator's): the alerts must carry the binding's namespace,
//! not that one.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use vip_operator::simulator::{Fault, SimOperation};

use crate::chart::{prometheus_tool, render};
use crate::group::{Fleet, VIP, VIP_PORT, all_bound, create_group, ips, until, vip_pairs};
use crate::harness::{ACCESS_KEY, Env, Needs, SECRET_KEY, free_port, ready};
use crate::{NIC, NIC2};

const JOB: &str = "vip-operator-e2e";
/// The operator's own namespace, as a ServiceMonitor's target labels give it.
const OPERATOR_NS: &str = "vip-system";

/// The chart's rules with the two alerts under test made quick.
const RULE_VALUES: &str = "
metrics:
  prometheusRule:
    enabled: true
    job: vip-operator-e2e
    alerts:
      VipBindingDeletionHeld: {enabled: true, severity: warning, for: 0s, threshold: 1}
      VipOperatorCloudAuthFailed: {enabled: true, severity: critical, for: 0s}
  dashboard:
    enabled: true
";

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Prometheus {
    async fn start(binary: &Path, target_port: u16, rules: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [{
                "job_name": JOB,
                "honor_labels": true,
                "static_configs": [{"targets": [format!("127.0.0.1:{target_port}")], "labels": {"namespace": OPERATOR_NS}}],
            }],
        });
        std::fs::write(dir.path().join("prometheus.yml"), config.to_string()).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir, http: reqwest::Client::new() };
        let ready =
            async || p.http.get(format!("{}/-/ready", p.url)).send().await.is_ok_and(|r| r.status().is_success());
        until("prometheus ready", Duration::from_secs(30), ready).await;
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's result vector (empty on any error: the callers poll).
    async fn query(&self, expr: &str) -> Vec<Value> {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.url), [("query", expr)]).unwrap();
        let resp = self.http.get(url).send().await;
        let Ok(body) = (match resp {
            Ok(r) => r.json::<Value>().await,
            Err(e) => Err(e),
        }) else {
            return vec![];
        };
        assert_ne!(body["status"], "error", "query {expr}: {body}");
        body["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Alerts pending or firing now.
    async fn alerts(&self) -> Vec<Value> {
        let Ok(r) = self.http.get(format!("{}/api/v1/alerts", self.url)).send().await else { return vec![] };
        let body: Value = r.json().await.unwrap_or_default();
        body["data"]["alerts"].as_array().cloned().unwrap_or_default()
    }

    async fn firing(&self, name: &str) -> Vec<Value> {
        self.alerts()
            .await
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
            .map(|a| a["labels"].clone())
            .collect()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Each dashboard target's expression, with the variables set as Grafana would: this job, the
/// scenario's namespace, a rate interval of a few scrapes.
fn panel_queries(dashboard: &Value, namespace: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    for p in dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "20s")
                .replace("$job", JOB)
                .replace("$namespace", namespace);
            assert!(!expr.contains('$'), "a variable the test does not set: {expr}");
            out.push((p["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    out
}

async fn secret(env: &Env, name: &str, secret_key: &str) {
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"accessKey": ACCESS_KEY, "secretKey": secret_key},
    }))
    .unwrap();
    let api: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(s)).await.expect("apply the Secret");
}

/// A dashboard panel (by title) showing a series with this label value, and what its value must be.
type Shown<'a> = (&'a str, &'a str, &'a str, fn(f64) -> bool);

/// A short resync: the drift repair below is found within seconds.
async fn start_operator(env: &mut Env, port: u16) -> crate::harness::Operator {
    env.operator().admin_port(port).arg("--resync-period=1s").start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_prometheus_runs_the_dashboard_queries_and_the_alerts_fire_and_resolve() {
    let Some(binary) = prometheus_tool("prometheus") else { return };
    let Some(mut env) = Env::with("prometheus", Needs::RealServer).await else { return };
    let rendered = render(RULE_VALUES);
    let dashboard = rendered.dashboard();
    let port = free_port();
    let prom = Prometheus::start(&binary, port, &rendered.rule_file()).await;
    let mut op = start_operator(&mut env, port).await;
    until("the operator scraped", Duration::from_secs(30), async || {
        prom.query(&format!("up{{job=\"{JOB}\"}} == 1")).await.len() == 1
    })
    .await;

    // A VIP group of one node (VPC API), an ECS binding, and one signed with a wrong key.
    let mut fleet = Fleet::new(&env);
    let node = fleet.node(&env, 1, true).await;
    create_group(&env, "grp", VIP, &fleet.pool).await;
    env.create("web", NIC, "192.168.0.7", json!({})).await;
    secret(&env, "bad-key", "not-the-secret-key").await;
    env.create("auth", NIC2, "192.168.0.8", json!({"credentialsSecretRef": {"name": "bad-key"}})).await;
    env.wait_ready("web").await;
    until("the group bound", Duration::from_secs(60), async || all_bound(&env, "grp", 1).await).await;
    env.wait_for("auth", Duration::from_secs(30), "AuthFailed", |b| ready(b) == Some(("False", "AuthFailed"))).await;

    // Someone removes the group's pair from the VIP port: the drift check puts it back. (Once
    // Prometheus has the namespace's repair series at zero, as it has long before any real
    // repair: a series first seen at 1 is no increase.)
    let repairs = format!("vipop_drift_repairs_total{{namespace=\"{}\"}} == 0", env.namespace);
    until("the repair series scraped", Duration::from_secs(30), async || !prom.query(&repairs).await.is_empty()).await;
    assert!(env.sim.set_allowed_address_pairs(VIP_PORT, vec![]));
    until("the pair put back", Duration::from_secs(30), async || vip_pairs(&env) == ips(&[&node])).await;

    // The deletion of `web` meets a gateway 404 (no evidence the NIC is gone): held.
    env.sim.add_fault(Fault::error(404, "APIGW.0101", 0).on(SimOperation::Unbind).for_nic(NIC));
    env.delete("web").await;
    env.wait_for("web", Duration::from_secs(30), "EndpointNotFound", |b| {
        ready(b) == Some(("False", "EndpointNotFound"))
    })
    .await;

    // Every dashboard query returns series.
    let queries = panel_queries(&dashboard, &env.namespace);
    assert!(queries.len() >= 16, "{queries:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut empty = vec![];
        for (title, expr) in &queries {
            if prom.query(expr).await.is_empty() {
                empty.push(format!("{title}: {expr}"));
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dashboard queries without series:\n{}\noperator log:\n{}",
            empty.join("\n"),
            op.logs()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // And what they show is this scenario: a query of each section, by panel, with a value.
    let shown = |title: &str, label: &str, value: &str| {
        let exprs: Vec<&String> = queries.iter().filter(|(t, _)| t == title).map(|(_, e)| e).collect();
        assert!(!exprs.is_empty(), "no panel {title}");
        let (expr, label, value) = (exprs[0].clone(), label.to_owned(), value.to_owned());
        let prom = &prom;
        async move {
            prom.query(&expr)
                .await
                .iter()
                .find(|r| r["metric"][&label] == value.as_str())
                .and_then(|r| r["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
        }
    };
    let expected: [Shown; 8] = [
        ("Bindings by reason", "reason", "AuthFailed", |v| v == 1.0),
        ("Deleting bindings by reason", "reason", "EndpointNotFound", |v| v == 1.0),
        ("Oldest deletion per namespace and reason", "binding", "web", |v| v > 0.0),
        ("VIP group members", "state", "bound", |v| v == 1.0),
        ("Cloud errors by code", "code", "APIGW.0101", |v| v >= 0.0),
        ("Drift repairs", "api", "VPC", |v| v > 0.0),
        ("Leader and readiness", "instance", &format!("127.0.0.1:{port}"), |v| v == 1.0),
        ("Reconciles by result", "result", "ok", |v| v >= 0.0),
    ];
    for (title, label, value, ok) in expected {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = shown(title, label, value).await;
            if got.is_some_and(ok) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "panel {title}: {label}={value} shows {got:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // Both alerts fire, labelled with the binding's namespace (not the operator's).
    until("VipBindingDeletionHeld firing", Duration::from_secs(60), async || {
        !prom.firing("VipBindingDeletionHeld").await.is_empty()
    })
    .await;
    let held = prom.firing("VipBindingDeletionHeld").await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["namespace"], env.namespace.as_str(), "{held:?}");
    assert_eq!(held[0]["binding"], "web");
    assert_eq!(held[0]["reason"], "EndpointNotFound");
    until("VipOperatorCloudAuthFailed firing", Duration::from_secs(60), async || {
        !prom.firing("VipOperatorCloudAuthFailed").await.is_empty()
    })
    .await;
    let auth = prom.firing("VipOperatorCloudAuthFailed").await;
    assert_eq!(auth.len(), 1, "{auth:?}");
    assert_eq!(auth[0]["namespace"], env.namespace.as_str(), "{auth:?}");
    assert_eq!(auth[0]["severity"], "critical");
    // Nothing else fires. (Pending is not checked: the other alerts wait minutes, and a
    // reconcile error or a scrape during the restart may start one's clock.)
    let others: Vec<_> = prom
        .alerts()
        .await
        .into_iter()
        .filter(|a| a["state"] == "firing")
        .filter(|a| {
            !["VipBindingDeletionHeld", "VipOperatorCloudAuthFailed"]
                .contains(&a["labels"]["alertname"].as_str().unwrap_or(""))
        })
        .collect();
    assert!(others.is_empty(), "{others:#?}");

    // The fixes: the right key in the Secret; the endpoint fixed and the operator restarted.
    secret(&env, "bad-key", SECRET_KEY).await;
    env.wait_for("auth", Duration::from_secs(60), "Bound", |b| ready(b) == Some(("True", "Bound"))).await;
    env.sim.clear_faults();
    op.kill().await;
    op = start_operator(&mut env, port).await;
    env.wait_gone("web", Duration::from_secs(30)).await;
    until("both alerts resolved", Duration::from_secs(60), async || {
        prom.firing("VipBindingDeletionHeld").await.is_empty()
            && prom.firing("VipOperatorCloudAuthFailed").await.is_empty()
    })
    .await;
    let left: Vec<_> = prom.alerts().await.into_iter().filter(|a| a["state"] == "firing").collect();
    assert!(left.is_empty(), "{left:#?}\nprometheus log:\n{}", prom.log());

    drop(op);
    prom.stop().await;
    fleet.cleanup().await;
    env.cleanup().await;
}
