//! The e2e harness: one API backend per scenario, a fresh namespace, the bundled ECS simulator
//! on a free port, and the real operator binary started as a child process against them.
//!
//! The backend, in this order of choice:
//! 1. `VIPOP_E2E_KUBECONFIG`: an existing cluster;
//! 2. `KUBEBUILDER_ASSETS` naming an envtest-style folder (etcd, kube-apiserver, optionally
//!    kube-controller-manager): a private control plane started for the run and shared by its
//!    scenarios (`tests/support/control_plane.rs`);
//! 3. the in-repo fake API server, one per scenario.
//!
//! Scenarios that need behaviour the fake does not model ask for [`Needs::RealServer`] and are
//! skipped (saying so) on the fake; `VIPOP_E2E_REQUIRE_REAL=1` turns any use of the fake into a
//! failure, so CI cannot pass by silently falling back to it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::process::{Child, Command};
use vip_operator::api::v1alpha1::VipBinding;
use vip_operator::simulator::{Simulator, SimulatorConfig};

use crate::support::control_plane::{self, ControlPlane};
use crate::support::fake_apiserver::FakeApiServer;

pub const PROJECT: &str = "e2e0000000000000000000000000proj";
pub const REGION: &str = "cn-north-4";
pub const SUBNET: &str = "8c9d4f38-1a2b-4c3d-9e8f-001122334455";
pub const ACCESS_KEY: &str = "E2EACCESSKEY00000001";
pub const SECRET_KEY: &str = "e2e-secret-key-must-never-be-logged";

/// What a scenario needs of its API server.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Needs {
    /// Any backend, the fake included.
    Any,
    /// Behaviour the fake does not model (the CRD's schema and CEL rules, ...).
    RealServer,
    /// Cluster-wide changes (deleting the CRD): a cluster of its own. On an existing cluster
    /// only with `VIPOP_E2E_DESTRUCTIVE=1`.
    OwnCluster,
}

pub enum Backend {
    Fake(FakeApiServer),
    /// A cluster shared with other scenarios: `VIPOP_E2E_KUBECONFIG`, or the run's private
    /// control plane.
    Shared,
    /// A control plane of this scenario's own, stopped when the scenario drops it.
    Own {
        _plane: ControlPlane,
    },
}

pub struct Env {
    pub client: Client,
    pub namespace: String,
    pub sim: Simulator,
    pub backend: Backend,
    kubeconfig: PathBuf,
    dir: Option<tempfile::TempDir>,
    operators: usize,
    cleaned: bool,
    /// Whether the operator's requests must stay within the Helm chart's RBAC (checked on the
    /// fake): off for flags the chart never sets, such as `--install-crd`.
    pub chart_rbac: bool,
}

/// A real cluster's kubeconfig, when the suite runs against an existing cluster.
pub fn real_kubeconfig() -> Option<PathBuf> {
    std::env::var_os("VIPOP_E2E_KUBECONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn require_real() -> bool {
    std::env::var("VIPOP_E2E_REQUIRE_REAL").is_ok_and(|v| v == "1")
}

/// Where a scenario's own control plane keeps its state and logs.
fn dir_for_own(scenario: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("control-plane").join(format!("own-{scenario}-{}", suffix()))
}

fn suffix() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// A client for a kubeconfig file, with the VipBinding CRD applied and Established.
async fn connect(kubeconfig: &std::path::Path) -> Client {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).expect("read the kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("kubeconfig");
    let client = Client::try_from(config).expect("client");
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for crd in vip_operator::api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &PatchParams::apply("vip-operator-e2e").force(), &Patch::Apply(crd))
            .await
            .expect("apply the CRD");
    }
    wait_crd_established(&client).await;
    client
}

impl Env {
    /// A scenario that runs on any backend.
    pub async fn new(scenario: &str) -> Env {
        Env::with(scenario, Needs::Any).await.expect("any backend serves Needs::Any")
    }

    /// A scenario with needs: `None` (and a line on stderr saying why) when this run's backend
    /// cannot serve them.
    pub async fn with(scenario: &str, needs: Needs) -> Option<Env> {
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        let skip = |why: &str| {
            eprintln!("SKIPPED {scenario}: {why}");
            None
        };
        let (client, backend) = if let Some(path) = real_kubeconfig() {
            if needs == Needs::OwnCluster && !std::env::var("VIPOP_E2E_DESTRUCTIVE").is_ok_and(|v| v == "1") {
                return skip(
                    "changes cluster-wide state; set VIPOP_E2E_DESTRUCTIVE=1 to run it on VIPOP_E2E_KUBECONFIG",
                );
            }
            std::fs::copy(&path, &kubeconfig).expect("copy VIPOP_E2E_KUBECONFIG");
            (connect(&path).await, Backend::Shared)
        } else if let Some(assets) = control_plane::assets_from_env() {
            if needs == Needs::OwnCluster {
                let own = dir_for_own(scenario);
                let plane = tokio::task::spawn_blocking(move || ControlPlane::start(&assets, &own))
                    .await
                    .expect("start task")
                    .unwrap_or_else(|e| panic!("start a control plane for {scenario}: {e}"));
                std::fs::copy(plane.kubeconfig(), &kubeconfig).expect("copy the kubeconfig");
                (connect(&plane.kubeconfig()).await, Backend::Own { _plane: plane })
            } else {
                let shared = tokio::task::spawn_blocking(move || control_plane::shared(&assets))
                    .await
                    .expect("start task")
                    .unwrap_or_else(|e| panic!("start the private control plane: {e}"));
                std::fs::copy(&shared, &kubeconfig).expect("copy the kubeconfig");
                (connect(&shared).await, Backend::Shared)
            }
        } else {
            assert!(
                !require_real(),
                "VIPOP_E2E_REQUIRE_REAL=1 but neither VIPOP_E2E_KUBECONFIG nor KUBEBUILDER_ASSETS (with etcd and \
                 kube-apiserver) is set: the suite would run on the fake API server"
            );
            if needs == Needs::RealServer {
                return skip("needs a real API server (set KUBEBUILDER_ASSETS or VIPOP_E2E_KUBECONFIG)");
            }
            let api = FakeApiServer::start().await;
            for crd in vip_operator::api::crds() {
                api.register_crd(crd);
            }
            api.write_kubeconfig(&kubeconfig);
            (api.client(), Backend::Fake(api))
        };
        let namespace = format!("e2e-{}-{}", scenario.replace('_', "-"), suffix());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
        let sim = Simulator::start(SimulatorConfig::new("127.0.0.1:0".parse().unwrap(), ACCESS_KEY, SECRET_KEY))
            .await
            .expect("simulator");
        Some(Env {
            client,
            namespace,
            sim,
            backend,
            kubeconfig,
            dir: Some(dir),
            operators: 0,
            cleaned: false,
            chart_rbac: true,
        })
    }

    pub fn is_fake(&self) -> bool {
        matches!(self.backend, Backend::Fake(_))
    }

    pub fn fake(&self) -> Option<&FakeApiServer> {
        match &self.backend {
            Backend::Fake(api) => Some(api),
            Backend::Shared | Backend::Own { .. } => None,
        }
    }

    /// What the backend is, for reports.
    #[allow(dead_code)] // used by the benchmark
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Fake(_) => "fake API server",
            Backend::Shared if real_kubeconfig().is_some() => "real cluster (VIPOP_E2E_KUBECONFIG)",
            Backend::Shared | Backend::Own { .. } => "private kube-apiserver (KUBEBUILDER_ASSETS)",
        }
    }

    fn dir(&self) -> &std::path::Path {
        self.dir.as_ref().expect("temp dir lives as long as the Env").path()
    }

    /// The scenario's kubeconfig, for processes other than the operator (`vip-operator import`).
    pub fn kubeconfig_path(&self) -> &std::path::Path {
        &self.kubeconfig
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
            endpoint: None,
            kubeconfig: None,
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
    /// Returns once the watch has listed the object, so nothing the scenario does next can
    /// happen before the watch started.
    pub async fn history(&self, name: &str) -> History {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let state = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
        let changed = std::sync::Arc::new(tokio::sync::Notify::new());
        let (record, notify) = (state.clone(), changed.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream = watcher(self.bindings(), config).default_backoff();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(event)) = stream.next().await {
                let mut seen = record.lock().unwrap();
                match event {
                    watcher::Event::Apply(b) | watcher::Event::InitApply(b) => seen.versions.push(b),
                    watcher::Event::Delete(b) => {
                        seen.versions.push(b);
                        seen.deleted = true;
                    }
                    watcher::Event::InitDone => seen.synced = true,
                    watcher::Event::Init => {}
                }
                drop(seen);
                notify.notify_waiters();
            }
        });
        let history = History { state, changed, task };
        history.wait_until(Duration::from_secs(10), "the history watch synced", |s| s.synced).await;
        history
    }

    /// A kubeconfig for a ServiceAccount granted exactly what the chart grants the operator
    /// (`src/rbac.rs`: the core rows and credentials protection; leader election is off in the
    /// scenarios), as a Role in the scenario namespace and a ClusterRole (owned by the
    /// namespace, so they go with it). An operator run with it proves, on a real API server's
    /// RBAC, that its requests stay inside the grant. Real backends only.
    pub async fn chart_rbac_kubeconfig(&self) -> PathBuf {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
        use vip_operator::rbac::{Feature, PERMISSIONS, Scope};
        assert!(!self.is_fake(), "the fake API server has no RBAC");
        let ns = self.namespace.as_str();
        let rules = |scope: Scope| {
            PERMISSIONS
                .iter()
                .filter(|p| p.scope == scope && matches!(p.feature, Feature::Core | Feature::CredentialsProtection))
                .map(|p| {
                    let mut rule = json!({"apiGroups": [p.api_group], "resources": [p.resource], "verbs": p.verbs});
                    if !p.resource_names.is_empty() {
                        rule["resourceNames"] = json!(p.resource_names);
                    }
                    rule
                })
                .collect::<Vec<_>>()
        };
        let owner = Api::<Namespace>::all(self.client.clone()).get(ns).await.expect("the scenario namespace");
        let owned = json!([{"apiVersion": "v1", "kind": "Namespace", "name": ns, "uid": owner.uid()}]);
        let subject = json!([{"kind": "ServiceAccount", "name": "vip-operator", "namespace": ns}]);
        let pp = PostParams::default();
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "vip-operator"}})).unwrap();
        Api::<ServiceAccount>::namespaced(self.client.clone(), ns).create(&pp, &sa).await.expect("service account");
        let role: Role =
            serde_json::from_value(json!({"metadata": {"name": "vip-operator"}, "rules": rules(Scope::Watched)}))
                .unwrap();
        Api::<Role>::namespaced(self.client.clone(), ns).create(&pp, &role).await.expect("role");
        let rb: RoleBinding = serde_json::from_value(json!({"metadata": {"name": "vip-operator"}, "subjects": subject,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "vip-operator"}}))
        .unwrap();
        Api::<RoleBinding>::namespaced(self.client.clone(), ns).create(&pp, &rb).await.expect("role binding");
        let cluster_name = format!("vip-operator-{ns}");
        let cr: ClusterRole =
            serde_json::from_value(json!({"metadata": {"name": cluster_name, "ownerReferences": owned},
            "rules": rules(Scope::Cluster)}))
            .unwrap();
        Api::<ClusterRole>::all(self.client.clone()).create(&pp, &cr).await.expect("cluster role");
        let crb: ClusterRoleBinding = serde_json::from_value(json!({"metadata": {"name": cluster_name, "ownerReferences": owned},
            "subjects": subject, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name}}))
        .unwrap();
        Api::<ClusterRoleBinding>::all(self.client.clone()).create(&pp, &crb).await.expect("cluster role binding");
        let request = TokenRequest {
            spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
            ..Default::default()
        };
        let token = Api::<ServiceAccount>::namespaced(self.client.clone(), ns)
            .create_token_request("vip-operator", &pp, &request)
            .await
            .expect("token request")
            .status
            .and_then(|s| s.token)
            .expect("a token");
        let mut config = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read the kubeconfig");
        for named in &mut config.auth_infos {
            named.auth_info =
                Some(kube::config::AuthInfo { token: Some(token.clone().as_str().into()), ..Default::default() });
        }
        let path = self.dir().join("service-account.kubeconfig");
        std::fs::write(&path, serde_json::to_vec(&config).expect("kubeconfig as JSON")).expect("write the kubeconfig");
        path
    }

    /// Every request the operator made (told apart by its User-Agent) must be allowed by the
    /// permission table the Helm chart grants (`src/rbac.rs`). Fake backend only.
    pub fn assert_operator_requests_within_rbac(&self) {
        use vip_operator::rbac::{PERMISSIONS, Scope};
        let Some(api) = self.fake() else { return };
        if self.operators == 0 || !self.chart_rbac {
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
        for entry in std::fs::read_dir(self.dir()).expect("temp dir").flatten() {
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

    /// The end of a scenario that passed: the leak checks, then the namespace and everything in
    /// it removed from a shared cluster (waiting until it is gone).
    pub async fn cleanup(self) {
        self.cleanup_within(Duration::from_secs(60)).await
    }

    /// [`Env::cleanup`] for a namespace whose size needs longer than a scenario's (a bench's
    /// fleet: its objects are deleted one by one).
    pub async fn cleanup_within(mut self, within: Duration) {
        self.assert_operator_requests_within_rbac();
        self.assert_no_secrets_leaked().await;
        if matches!(self.backend, Backend::Shared) {
            remove_namespace(&self.client, &self.namespace, within).await.unwrap_or_else(|e| panic!("cleanup: {e}"));
        }
        // The simulator serves until the test's runtime ends.
        self.cleaned = true;
    }
}

impl Drop for Env {
    /// A scenario that did not reach `cleanup` (it failed): keep the operator's logs, mark the
    /// shared control plane's run as failed (its logs are kept), and still remove the namespace
    /// so that the next run on the same cluster starts clean.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        if let Some(dir) = self.dir.take() {
            eprintln!("operator logs kept in {}", dir.keep().display());
        }
        if !matches!(self.backend, Backend::Shared) {
            return;
        }
        control_plane::mark_failed();
        let (kubeconfig, namespace) = (self.kubeconfig.clone(), self.namespace.clone());
        // Drop runs inside the test's runtime: a thread with its own runtime and client does the
        // async work.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let config = kube::Config::from_custom_kubeconfig(
                    kube::config::Kubeconfig::read_from(&kubeconfig).ok()?,
                    &Default::default(),
                )
                .await
                .ok()?;
                let client = Client::try_from(config).ok()?;
                if let Err(e) = remove_namespace(&client, &namespace, Duration::from_secs(30)).await {
                    eprintln!("cleanup after failure: {e}");
                }
                Some(())
            })
        })
        .join();
    }
}

/// Deletes a namespace and waits until it is gone, without relying on the operator (which may
/// be stopped, paused or failing by now). Bindings and Secrets are deleted first, and the
/// operator's finalizers taken off them once they are deleting (when no finalizer can be added
/// back); the namespace controller then empties the namespace in one pass instead of waiting on
/// finalizers with its backoff.
async fn remove_namespace(client: &Client, namespace: &str, within: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    let groups: Api<vip_operator::api::group::VipGroup> = Api::namespaced(client.clone(), namespace);
    let bindings: Api<VipBinding> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    // Groups first: a group's finalizer waits on its members.
    empty(&groups, deadline).await?;
    empty(&bindings, deadline).await?;
    empty(&secrets, deadline).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.delete(namespace, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => return Err(format!("delete namespace {namespace}: {e}")),
    }
    while namespaces.get_opt(namespace).await.map_err(|e| e.to_string())?.is_some() {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("namespace {namespace} still there after {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Deletes every object of one kind in the namespace, taking finalizers off the deleting ones.
async fn empty<K>(api: &Api<K>, deadline: tokio::time::Instant) -> Result<(), String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let release = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    loop {
        let items = api.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items;
        if items.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            let names: Vec<String> = items.iter().map(|o| o.name_any()).collect();
            return Err(format!("still there: {names:?}"));
        }
        for o in &items {
            let meta = o.meta();
            if meta.deletion_timestamp.is_none() {
                let _ = api.delete(&o.name_any(), &DeleteParams::default()).await;
            } else if meta.finalizers.as_ref().is_some_and(|f| !f.is_empty()) {
                let _ = api.patch(&o.name_any(), &PatchParams::default(), &release).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_crd_established(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for _ in 0..100 {
        let mut established = true;
        for name in vip_operator::api::CRD_NAMES {
            established &= crds.get_opt(name).await.ok().flatten().and_then(|c| c.status).is_some_and(|s| {
                s.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Established" && c.status == "True")
            });
        }
        if established {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the operator's CRDs did not become Established");
}

#[derive(Default)]
pub struct Seen {
    versions: Vec<VipBinding>,
    synced: bool,
    deleted: bool,
}

pub struct History {
    state: std::sync::Arc<std::sync::Mutex<Seen>>,
    changed: std::sync::Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl History {
    pub fn versions(&self) -> Vec<VipBinding> {
        self.state.lock().unwrap().versions.clone()
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

    /// Waits until the watch has seen the object's deletion: every version it went through
    /// has been recorded by then.
    pub async fn wait_deleted(&self) {
        self.wait_until(Duration::from_secs(20), "the history watch saw the deletion", |s| s.deleted).await;
    }

    async fn wait_until(&self, within: Duration, what: &str, check: impl Fn(&Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            if check(&self.state.lock().unwrap()) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: not within {within:?}");
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
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
    endpoint: Option<String>,
    kubeconfig: Option<PathBuf>,
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

    /// `--ecs-endpoint` other than the simulator's own URL (e.g. a wrong path on it).
    pub fn endpoint(mut self, url: &str) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// Reach the API server through this kubeconfig (e.g. an [`ApiProxy`]'s).
    pub fn kubeconfig(mut self, path: &std::path::Path) -> Self {
        self.kubeconfig = Some(path.to_path_buf());
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

    pub async fn start(mut self) -> Operator {
        self.env.operators += 1;
        if !self.args.iter().any(|a| a.starts_with("--default-credentials-namespace")) {
            // The scenarios use the operator's credentials in their own namespace; the tenancy
            // scenarios set a policy of their own.
            self.args.push("--default-credentials-namespaces=*".into());
        }
        if !self.args.iter().any(|a| a.starts_with("--write-horizon")) {
            // Without late writes in a scenario, a horizon would only hold every deletion in the
            // first one after start (a new process's takeover window). The scenarios about
            // writes that land late (tests/e2e/shared.rs, chaos.rs) set a real one.
            self.args.push("--write-horizon=0s".into());
        }
        if !self.args.iter().any(|a| a.starts_with("--vpc-endpoint")) {
            // Ports are read from the simulator too, so releases are confirmed as in production.
            self.args.push(format!("--vpc-endpoint={}", self.env.sim.url()));
        }
        let log = self.env.dir().join(format!("operator-{}.log", self.env.operators));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vip-operator"));
        cmd.arg("run")
            .args(["--ecs-endpoint", &self.endpoint.unwrap_or_else(|| self.env.sim.url())])
            .args(["--namespace", &self.env.namespace])
            .args(["--metrics-addr", &self.admin])
            .args(["--cloud-qps", &self.cloud.0, "--cloud-burst", &self.cloud.1])
            .args(["--log-format", "json", "--log-level", &self.log_level])
            .args(&self.args)
            .env_clear()
            .env("KUBECONFIG", self.kubeconfig.as_ref().unwrap_or(&self.env.kubeconfig))
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

/// A TCP proxy in front of the API server, for one operator: `cut` drops its connections and
/// refuses new ones (a network partition between that operator and the API server).
pub struct ApiProxy {
    kubeconfig: PathBuf,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiProxy {
    pub async fn start(env: &Env) -> ApiProxy {
        use std::sync::atomic::Ordering;
        let mut config = kube::config::Kubeconfig::read_from(&env.kubeconfig).expect("kubeconfig");
        let cluster = config.clusters.first_mut().and_then(|c| c.cluster.as_mut()).expect("a cluster");
        let server: url::Url = cluster.server.as_deref().expect("server").parse().expect("server URL");
        let upstream =
            format!("{}:{}", server.host_str().expect("host"), server.port_or_known_default().expect("port"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let local = listener.local_addr().expect("proxy address");
        cluster.server = Some(format!("{}://127.0.0.1:{}", server.scheme(), local.port()));
        let kubeconfig = env.dir().join(format!("proxied-{}.kubeconfig", local.port()));
        std::fs::write(&kubeconfig, serde_json::to_string(&config).expect("kubeconfig")).expect("write kubeconfig");
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (is_cut, conns) = (cut.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if is_cut.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is reset
                }
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(conn.abort_handle());
            }
        });
        ApiProxy { kubeconfig, cut, connections, task }
    }

    pub fn kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for conn in self.connections.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
