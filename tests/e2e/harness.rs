//! The e2e harness: one API backend per scenario (the in-repo fake API server, or a real cluster
//! when `VIPOP_E2E_KUBECONFIG` is set), a fresh namespace, the bundled ECS simulator on a free
//! port, and the real operator binary started as a child process against them.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::json;
use tokio::process::{Child, Command};
use vip_operator::api::v1alpha1::{CRD_NAME, VipBinding};
use vip_operator::simulator::{Simulator, SimulatorConfig};

use crate::support::fake_apiserver::FakeApiServer;

pub const PROJECT: &str = "e2e0000000000000000000000000proj";
pub const REGION: &str = "cn-north-4";
pub const SUBNET: &str = "8c9d4f38-1a2b-4c3d-9e8f-001122334455";
pub const ACCESS_KEY: &str = "E2EACCESSKEY00000001";
pub const SECRET_KEY: &str = "e2e-secret-key-must-never-be-logged";

pub enum Backend {
    Fake(FakeApiServer),
    Real,
}

pub struct Env {
    pub client: Client,
    pub namespace: String,
    pub sim: Simulator,
    pub backend: Backend,
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
    operators: usize,
}

/// A real cluster's kubeconfig, when the suite runs in real-cluster mode.
pub fn real_kubeconfig() -> Option<PathBuf> {
    std::env::var_os("VIPOP_E2E_KUBECONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Scenarios that touch cluster-wide state (deleting the CRD) run on the fake API server, and
/// on a real cluster only when asked for (`VIPOP_E2E_DESTRUCTIVE=1`, run them alone).
pub fn destructive_allowed() -> bool {
    real_kubeconfig().is_none() || std::env::var("VIPOP_E2E_DESTRUCTIVE").is_ok_and(|v| v == "1")
}

fn suffix() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

impl Env {
    pub async fn new(scenario: &str) -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        let (client, backend) = match real_kubeconfig() {
            Some(path) => {
                std::fs::copy(&path, &kubeconfig).expect("copy VIPOP_E2E_KUBECONFIG");
                let config = kube::Config::from_custom_kubeconfig(
                    kube::config::Kubeconfig::read_from(&path).expect("read VIPOP_E2E_KUBECONFIG"),
                    &Default::default(),
                )
                .await
                .expect("kubeconfig");
                let client = Client::try_from(config).expect("client");
                let crds: Api<
                    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
                > = Api::all(client.clone());
                crds.patch(CRD_NAME, &PatchParams::apply("vip-operator-e2e").force(), &Patch::Apply(VipBinding::crd()))
                    .await
                    .expect("apply the CRD");
                wait_crd_established(&client).await;
                (client, Backend::Real)
            }
            None => {
                let api = FakeApiServer::start().await;
                api.register_crd(VipBinding::crd());
                api.write_kubeconfig(&kubeconfig);
                (api.client(), Backend::Fake(api))
            }
        };
        let namespace = format!("e2e-{}-{}", scenario.replace('_', "-"), suffix());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
        let sim = Simulator::start(SimulatorConfig::new("127.0.0.1:0".parse().unwrap(), ACCESS_KEY, SECRET_KEY))
            .await
            .expect("simulator");
        Env { client, namespace, sim, backend, kubeconfig, dir, operators: 0 }
    }

    pub fn is_fake(&self) -> bool {
        matches!(self.backend, Backend::Fake(_))
    }

    pub fn fake(&self) -> Option<&FakeApiServer> {
        match &self.backend {
            Backend::Fake(api) => Some(api),
            Backend::Real => None,
        }
    }

    pub fn bindings(&self) -> Api<VipBinding> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The operator, watching this scenario's namespace, with the simulator as its cloud.
    pub fn operator(&mut self) -> OperatorBuilder<'_> {
        OperatorBuilder {
            env: self,
            admin: "127.0.0.1:0".into(),
            log_level: "info,vip_operator=debug".into(),
            cloud: ("200".into(), "50".into()),
            args: vec![],
            envs: vec![
                ("HUAWEICLOUD_SDK_AK".into(), ACCESS_KEY.into()),
                ("HUAWEICLOUD_SDK_SK".into(), SECRET_KEY.into()),
            ],
        }
    }

    pub async fn create(&self, name: &str, nic: &str, ip: &str, extra: serde_json::Value) -> VipBinding {
        let mut spec =
            json!({"nicId": nic, "ipAddress": ip, "subnetId": SUBNET, "projectId": PROJECT, "region": REGION});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        let b: VipBinding =
            serde_json::from_value(json!({"apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipBinding", "metadata": {"name": name}, "spec": spec}))
                .unwrap();
        self.bindings().create(&PostParams::default(), &b).await.expect("create binding")
    }

    pub async fn delete(&self, name: &str) {
        self.bindings().delete(name, &DeleteParams::default()).await.expect("delete binding");
    }

    pub async fn patch_spec(&self, name: &str, spec: serde_json::Value) -> Result<VipBinding, kube::Error> {
        self.bindings().patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": spec}))).await
    }

    pub async fn get(&self, name: &str) -> Option<VipBinding> {
        self.bindings().get_opt(name).await.expect("get binding")
    }

    /// Polls until `check` accepts the binding (or panics after `within`).
    pub async fn wait_for(
        &self,
        name: &str,
        within: Duration,
        what: &str,
        check: impl Fn(&VipBinding) -> bool,
    ) -> VipBinding {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = None;
        loop {
            if let Some(b) = self.get(name).await {
                if check(&b) {
                    return b;
                }
                last = Some(b);
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{name}: not {what} within {within:?}; last seen: {:#?}", last.map(|b| b.status));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_ready(&self, name: &str) -> VipBinding {
        self.wait_for(name, Duration::from_secs(20), "Ready", |b| ready(b) == Some(("True", "Bound"))).await
    }

    pub async fn wait_gone(&self, name: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.get(name).await.is_some() {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{name} still exists after {within:?}: {:#?}",
                    self.get(name).await.map(|b| (b.metadata.finalizers, b.status))
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Records every version of a binding the API server shows from now on (a watch), so that
    /// short-lived states (a status written just before the object goes) are not missed.
    pub fn history(&self, name: &str) -> History {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<VipBinding>::new()));
        let record = seen.clone();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream = watcher(self.bindings(), config).default_backoff().applied_objects();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(b)) = stream.next().await {
                record.lock().unwrap().push(b);
            }
        });
        History { seen, task }
    }

    /// Every request the operator made (told apart by its User-Agent) must be allowed by the
    /// permission table the Helm chart grants (`src/rbac.rs`). Fake backend only.
    pub fn assert_operator_requests_within_rbac(&self) {
        use vip_operator::rbac::{PERMISSIONS, Scope};
        let Some(api) = self.fake() else { return };
        if self.operators == 0 {
            return;
        }
        let operator_requests: Vec<_> = api
            .requests()
            .into_iter()
            .filter(|r| r.user_agent.as_deref().is_some_and(|ua| ua.starts_with("vip-operator/")))
            .collect();
        assert!(!operator_requests.is_empty(), "no request carried the operator's User-Agent");
        for r in operator_requests.iter().filter(|r| !r.resource.is_empty()) {
            let resource = match &r.subresource {
                Some(sub) => format!("{}/{sub}", r.resource),
                None => r.resource.clone(),
            };
            let allowed = PERMISSIONS.iter().any(|p| {
                p.api_group == r.group
                    && p.resource == resource
                    && p.verbs.contains(&r.verb.as_str())
                    && match p.scope {
                        // The operator runs in the scenario namespace here.
                        Scope::Watched | Scope::OperatorNamespace => {
                            r.namespace.as_deref() == Some(self.namespace.as_str())
                        }
                        Scope::Cluster => r.namespace.is_none(),
                    }
                    && (p.resource_names.is_empty()
                        || p.resource_names.iter().any(|n| n.starts_with('<'))
                        || r.name.as_deref().is_some_and(|n| p.resource_names.contains(&n))
                        || r.query_param("fieldSelector")
                            .is_some_and(|f| p.resource_names.iter().any(|n| f == format!("metadata.name={n}"))))
            });
            assert!(
                allowed,
                "the operator made a request its RBAC does not grant: {} {} {:?} {:?}",
                r.verb, resource, r.namespace, r.name
            );
        }
    }

    /// No access key, secret key or signature in anything the operator wrote: its logs, and
    /// the events and binding statuses in the namespace.
    pub async fn assert_no_secrets_leaked(&self) {
        use k8s_openapi::api::events::v1::Event as NewEvent;
        let mut texts = vec![];
        for entry in std::fs::read_dir(self.dir.path()).expect("temp dir").flatten() {
            if entry.file_name().to_string_lossy().starts_with("operator-") {
                texts.push((
                    entry.path().display().to_string(),
                    std::fs::read_to_string(entry.path()).unwrap_or_default(),
                ));
            }
        }
        let events: Api<NewEvent> = Api::namespaced(self.client.clone(), &self.namespace);
        if let Ok(list) = events.list(&Default::default()).await {
            texts.push(("events".into(), serde_json::to_string(&list.items).unwrap()));
        }
        if let Ok(list) = self.bindings().list(&Default::default()).await {
            texts.push(("bindings".into(), serde_json::to_string(&list.items).unwrap()));
        }
        for (what, text) in texts {
            for needle in
                [SECRET_KEY, ACCESS_KEY, "rotated-secret", "ROTATEDACCESSKEY0001", "definitely-wrong", "Signature="]
            {
                assert!(!text.contains(needle), "{needle:?} leaked into {what}");
            }
        }
    }

    /// Deletes the scenario's namespace (real cluster) and stops the simulator.
    pub async fn cleanup(self) {
        self.assert_operator_requests_within_rbac();
        self.assert_no_secrets_leaked().await;
        if !self.is_fake() {
            let _ = Api::<Namespace>::all(self.client.clone()).delete(&self.namespace, &DeleteParams::default()).await;
        }
        self.sim.shutdown().await;
        drop(self.dir);
    }
}

async fn wait_crd_established(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for _ in 0..100 {
        let established = crds.get_opt(CRD_NAME).await.ok().flatten().and_then(|c| c.status).is_some_and(|s| {
            s.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the VipBinding CRD did not become Established");
}

pub struct History {
    seen: std::sync::Arc<std::sync::Mutex<Vec<VipBinding>>>,
    task: tokio::task::JoinHandle<()>,
}

impl History {
    pub fn versions(&self) -> Vec<VipBinding> {
        self.seen.lock().unwrap().clone()
    }
    pub fn ready_reasons(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for b in self.versions() {
            if let Some((_, reason)) = ready(&b)
                && out.last().map(String::as_str) != Some(reason)
            {
                out.push(reason.to_string());
            }
        }
        out
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `(status, reason)` of the Ready condition.
pub fn ready(b: &VipBinding) -> Option<(&str, &str)> {
    b.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready").map(|c| (c.status.as_str(), c.reason.as_str()))
}

pub fn has_finalizer(b: &VipBinding) -> bool {
    b.finalizers().iter().any(|f| f == vip_operator::api::v1alpha1::FINALIZER)
}

pub struct OperatorBuilder<'a> {
    env: &'a mut Env,
    admin: String,
    log_level: String,
    cloud: (String, String),
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl OperatorBuilder<'_> {
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.retain(|(k, _)| k != key);
        self.envs.push((key.into(), value.into()));
        self
    }

    /// `--metrics-addr 127.0.0.1:PORT`, to read its /metrics and /readyz.
    pub fn admin_port(mut self, port: u16) -> Self {
        self.admin = format!("127.0.0.1:{port}");
        self
    }

    #[allow(dead_code)] // used by the benchmark (tests/perf), which shares this harness
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.into();
        self
    }

    /// `--cloud-qps` and `--cloud-burst`.
    #[allow(dead_code)] // used by the benchmark
    pub fn cloud_rate(mut self, qps: f64, burst: u32) -> Self {
        self.cloud = (qps.to_string(), burst.to_string());
        self
    }

    pub async fn start(self) -> Operator {
        self.env.operators += 1;
        let log = self.env.dir.path().join(format!("operator-{}.log", self.env.operators));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vip-operator"));
        cmd.arg("run")
            .args(["--ecs-endpoint", &self.env.sim.url()])
            .args(["--namespace", &self.env.namespace])
            .args(["--metrics-addr", &self.admin])
            .args(["--cloud-qps", &self.cloud.0, "--cloud-burst", &self.cloud.1])
            .args(["--log-format", "json", "--log-level", &self.log_level])
            .args(&self.args)
            .env_clear()
            .env("KUBECONFIG", &self.env.kubeconfig)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd.spawn().expect("start the operator");
        Operator { child, log }
    }
}

pub struct Operator {
    child: Child,
    log: PathBuf,
}

/// A port that was free a moment ago (for an operator's admin server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A counter or gauge without labels from an operator's /metrics (0 when absent).
pub async fn metric(port: u16, name: &str) -> f64 {
    let (_, text) = admin_get(port, "/metrics").await.unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// GET on an operator's admin server: (status, body).
pub async fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.unwrap_or_default()))
}

impl Operator {
    /// SIGKILL: no chance to finish anything (a crash).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, and the exit status.
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            // SAFETY-free: kill(1) via the standard tool keeps this test free of libc bindings.
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        tokio::time::timeout(within, self.child.wait()).await.expect("operator did not stop in time").expect("wait")
    }

    #[allow(dead_code)] // used by the benchmark
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
