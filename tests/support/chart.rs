//! The Helm chart rendered with the real `helm template` (tests/helm.rs, tests/alerts.rs and
//! the e2e Prometheus scenario), and the Prometheus tools from Debian's `prometheus` package.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");
pub const RELEASE: &str = "vip-operator";
pub const RELEASE_NS: &str = "vip-system";
/// The chart's kubeVersion floor; rendering checks the chart accepts it.
pub const KUBE_VERSION: &str = "1.31.0";

pub fn chart() -> PathBuf {
    Path::new(ROOT).join("charts/vip-operator")
}

/// `name` on PATH, else `$ENV_VAR`, else `fallback` when it exists.
fn tool(name: &str, env_var: &str, fallback: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var).filter(|h| !h.is_empty()) {
        return Some(p.into());
    }
    let on_path =
        std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|dir| dir.join(name)).find(|p| p.is_file());
    on_path.or_else(|| fallback.filter(|p| p.is_file()))
}

pub fn helm() -> PathBuf {
    tool("helm", "HELM", Some(Path::new(ROOT).join(".helm-tools/bin/helm"))).unwrap_or_else(|| {
        panic!(
            "helm not found (not on PATH, $HELM unset, no .helm-tools/bin/helm): run `.ci/install-tools.sh` \
             and `export PATH=\"$PWD/.helm-tools/bin:$PATH\"` (.ci/run does both)"
        )
    })
}

/// Whether a missing Prometheus tool fails the test (CI: `.ci/run` sets
/// VIPOP_REQUIRE_PROMETHEUS=1 after installing the package) or skips it (a laptop without it).
pub fn prometheus_required() -> bool {
    std::env::var("VIPOP_REQUIRE_PROMETHEUS").is_ok_and(|v| v == "1")
}

/// `promtool` or `prometheus` (Debian's `prometheus` package): None, after saying SKIPPED, when
/// it is missing and not required; a failure when required.
pub fn prometheus_tool(name: &str) -> Option<PathBuf> {
    let env_var = name.to_uppercase();
    match tool(name, &env_var, None) {
        Some(p) => Some(p),
        None if prometheus_required() => {
            panic!(
                "{name} not found and VIPOP_REQUIRE_PROMETHEUS=1: install Debian's prometheus package (.ci/run does)"
            )
        }
        None => {
            eprintln!(
                "SKIPPED: {name} not found (install Debian's `prometheus` package, or set ${env_var}); \
                 with VIPOP_REQUIRE_PROMETHEUS=1, as in CI, this fails"
            );
            None
        }
    }
}

/// `helm template` with `values` (YAML) as a values file; Err(stderr) when rendering fails.
pub fn template(values: &str, extra: &[&str]) -> Result<Rendered, String> {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    file.write_all(values.as_bytes()).unwrap();
    let out = Command::new(helm())
        .args(["template", RELEASE])
        .arg(chart())
        .args(["--namespace", RELEASE_NS, "--kube-version", KUBE_VERSION, "--values"])
        .arg(file.path())
        .args(extra)
        .output()
        .expect("cannot run helm");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("rendered YAML: {e}\n{text}"));
    Ok(Rendered { docs })
}

pub fn render(values: &str) -> Rendered {
    template(values, &[]).unwrap_or_else(|e| panic!("helm template failed:\n{e}"))
}

pub struct Rendered {
    pub docs: Vec<Value>,
}

impl Rendered {
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    pub fn one(&self, kind: &str) -> &Value {
        let found = self.all(kind);
        assert_eq!(found.len(), 1, "expected exactly one {kind}, found {}", found.len());
        found[0]
    }

    /// The PrometheusRule's rule groups, as a Prometheus rule file (JSON is YAML).
    pub fn rule_file(&self) -> String {
        serde_json::to_string_pretty(&self.one("PrometheusRule")["spec"]).unwrap()
    }

    /// The alerting rules, by name.
    pub fn alerts(&self) -> Vec<&Value> {
        self.one("PrometheusRule")["spec"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect()
    }

    /// The Grafana dashboard's JSON model from its ConfigMap.
    pub fn dashboard(&self) -> Value {
        let cm = self
            .all("ConfigMap")
            .into_iter()
            .find(|c| c["metadata"]["name"].as_str().is_some_and(|n| n.ends_with("-dashboard")))
            .expect("the dashboard ConfigMap");
        let text = cm["data"]["vip-operator.json"].as_str().expect("data.vip-operator.json");
        serde_json::from_str(text).expect("the dashboard is JSON")
    }
}
