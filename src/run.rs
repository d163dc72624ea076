//! `vip-operator run`, as named steps: validate the flags ([`Settings`]), connect to the
//! cluster and check it, await leadership, start the cloud side (simulator, client), then
//! supervise the controller until something stops it, and say why. Also usable in-process
//! (tests) through [`run`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::Reporter;
use kube::{Client, Config};

use crate::admin::{AdminError, AdminState, Health};
use crate::api::group::GROUP_CRD_NAME;
use crate::api::v1alpha1::{CRD_NAME, VipBinding};
use crate::cli::RunArgs;
use crate::controller::BindingIndex;
use crate::controller::WritesInFlight;
use crate::controller::{Caches, Context, Hooks};
use crate::controller::{DefaultCredentials, TargetResolver};
use crate::controller::{DefaultCredentialsScope, Tenancy};
use crate::controller::{FIELD_MANAGER, KubeOps};
use crate::ecs::client::{BothObservers, ClientConfigError};
use crate::ecs::{EcsClient, EcsClientConfig, Endpoint, Fence, SystemClock};
use crate::leader::{LeaderConfig, LeaderError, Leadership, LeaseFence};
use crate::metrics::Metrics;
use crate::settings::{
    ConfigError, LeaderSettings, SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY, SdkEnvironment, Settings,
};
use crate::simulator::{SimError, Simulator, SimulatorConfig};

/// Start-up failures, each with a message that says what to do; the variant picks the exit code.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Simulator(#[from] SimError),
    #[error(transparent)]
    CloudClient(#[from] ClientConfigError),
    #[error(transparent)]
    NoCluster(#[from] NoCluster),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Leader(#[from] LeaderError),
    #[error("leader election stopped before this replica was elected")]
    NotElected,
    #[error("lost leadership; exiting so that this replica restarts as a standby")]
    LostLeadership,
    /// Never an exit 0: a supervisor must see a failure and restart the operator.
    #[error("the controller stopped unexpectedly")]
    ControllerStopped,
}

impl StartError {
    /// 2: fix the flags; 3: no cluster to talk to; 1: the cluster refused, or the run ended badly.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) | StartError::Admin(_) | StartError::Simulator(_) | StartError::CloudClient(_) => 2,
            StartError::NoCluster(_) => 3,
            StartError::Cluster(_)
            | StartError::Leader(_)
            | StartError::NotElected
            | StartError::LostLeadership
            | StartError::ControllerStopped => 1,
        }
    }
}

/// No cluster to talk to (exit code 3).
#[derive(Debug, thiserror::Error)]
pub enum NoCluster {
    #[error(
        "no Kubernetes cluster configured: {0}. Point KUBECONFIG at a cluster (for a local one: `kind create cluster`)"
    )]
    NotConfigured(kube::config::InferConfigError),
    #[error("cannot build a client for {server}: {source}")]
    Client { server: String, source: kube::Error },
    #[error(
        "the Kubernetes API server at {server} (current kubeconfig context) is not reachable: {source}. Start the cluster or switch context (`kubectl config use-context`)"
    )]
    Unreachable { server: String, source: kube::Error },
    #[error(
        "the Kubernetes API server at {server} (current kubeconfig context) did not answer within 10s. Start the cluster or switch context"
    )]
    Timeout { server: String },
}

/// The cluster answered, but cannot be used as it is (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot install the operator's CRDs: {0}")]
    InstallCrd(kube::Error),
    #[error("cannot read the VipBinding CRD: {0}")]
    ReadCrd(kube::Error),
    #[error(
        "an operator CRD ({CRD_NAME} or {GROUP_CRD_NAME}) is being deleted (an uninstall is in progress): wait until it is gone, then start again"
    )]
    CrdDeleting,
    #[error("an operator CRD was not established within {}s: {why}", CRD_ESTABLISHED_TIMEOUT.as_secs())]
    CrdNotEstablished { why: String },
    #[error(
        "the VipBinding CRD ({CRD_NAME}) is not installed: `kubectl apply -f crds/`, install the Helm chart, or run with --install-crd"
    )]
    CrdMissing,
    #[error("not allowed to list VipBindings ({0}): check the operator's RBAC")]
    Forbidden(String),
    #[error("cannot list VipBindings: {0}")]
    List(kube::Error),
    #[error(
        "the installed VipBinding CRD ({CRD_NAME}) is older than this operator (its status has no boundWith): `kubectl apply --server-side -f crds/` (Helm does not upgrade CRDs), or run with --install-crd"
    )]
    StaleCrd,
    #[error(
        "not allowed to list Namespaces ({0}): the tenancy policy needs list and watch on namespaces; check the operator's RBAC"
    )]
    NamespacesForbidden(String),
    #[error("cannot list Namespaces: {0}")]
    ListNamespaces(kube::Error),
}

pub const USER_AGENT: &str = concat!("vip-operator/", env!("CARGO_PKG_VERSION"));

/// Runs the operator until `shutdown` resolves (or leadership is lost, which is an error: the
/// process exits so that it restarts as a standby).
pub async fn run(
    args: RunArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let settings = Settings::new(args, &SdkEnvironment::from_process())?;
    let process = Process::start(settings.metrics_addr, shutdown).await?;
    let outcome = run_steps(&settings, &process).await;
    process.admin_stop.cancel();
    outcome
}

async fn run_steps(settings: &Settings, process: &Process) -> Result<(), StartError> {
    let client = connect_and_check(settings).await?;
    process.health.started();
    let (mut leadership, fence) = match await_leadership(&client, settings.leader.as_ref(), &process.stop).await? {
        Elected::Yes { leadership, fence } => (leadership, fence),
        Elected::StoppedWhileWaiting => return Ok(()),
    };
    process.metrics.leader.set(1);
    process.health.leading(true);
    let result = async {
        let cloud = CloudSide::start(settings, process.metrics.clone(), fence).await?;
        let ctx = context(&client, settings, &cloud, process.metrics.clone());
        let why = supervise(client, ctx, settings, process, leadership.as_mut()).await;
        if let Some(sim) = cloud.simulator {
            sim.shutdown().await;
        }
        why.into_result()
    }
    .await;
    process.metrics.leader.set(0);
    if let Some(l) = leadership {
        l.release(Duration::from_secs(5)).await;
    }
    result
}

/// What lives for the whole process: metrics, health, the stop signal and the admin server.
struct Process {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// One signal for everything that must stop; readiness turns false the moment it fires.
    stop: CancellationToken,
    stores: Caches<VipBinding>,
    groups: Caches<crate::api::group::VipGroup>,
    admin_stop: CancellationToken,
}

impl Process {
    async fn start(
        metrics_addr: Option<SocketAddr>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<Self, StartError> {
        let process = Self {
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(Health::default()),
            stop: CancellationToken::new(),
            stores: Caches::default(),
            groups: Caches::default(),
            admin_stop: CancellationToken::new(),
        };
        let (stop, health) = (process.stop.clone(), process.health.clone());
        tokio::spawn(async move {
            shutdown.await;
            health.shutting_down();
            stop.cancel();
        });
        if let Some(addr) = metrics_addr {
            let state = AdminState {
                health: process.health.clone(),
                metrics: process.metrics.clone(),
                stores: process.stores.clone(),
                groups: process.groups.clone(),
            };
            let local = crate::admin::serve(addr, state, process.admin_stop.clone()).await?;
            tracing::info!(%local, "admin server: /metrics /healthz /readyz");
        }
        Ok(process)
    }
}

/// Connects, installs the CRD when asked, and checks every watched namespace can be listed.
async fn connect_and_check(settings: &Settings) -> Result<Client, StartError> {
    let client = connect().await?;
    if settings.install_crd {
        install_crd(&client).await?;
    }
    for ns in namespaces_or_all(&settings.watch.namespaces) {
        check_crd(&client, ns).await?;
    }
    check_crd_schema(&client).await?;
    check_namespaces(&client).await?;
    Ok(client)
}

/// The served CRD must know `status.boundWith`: with an older one the API server silently
/// drops it, and deletions would lose the record they unbind with. (Helm does not upgrade
/// `crds/`.)
async fn check_crd_schema(client: &Client) -> Result<(), ClusterError> {
    let crd =
        Api::<CustomResourceDefinition>::all(client.clone()).get(CRD_NAME).await.map_err(ClusterError::ReadCrd)?;
    let knows_record = crd.spec.versions.iter().filter(|v| v.served).all(|v| {
        let status = v
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| s.properties.as_ref())
            .and_then(|p| p.get("status"))
            .and_then(|s| s.properties.as_ref());
        status.is_some_and(|p| p.contains_key("boundWith"))
    });
    if knows_record { Ok(()) } else { Err(ClusterError::StaleCrd) }
}

/// The tenancy policy lives on Namespaces: without `list` and `watch` on them, every binding
/// that needs it would wait for ever.
async fn check_namespaces(client: &Client) -> Result<(), ClusterError> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::core::PartialObjectMeta;
    match Api::<PartialObjectMeta<Namespace>>::all(client.clone()).list_metadata(&ListParams::default().limit(1)).await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 403 => Err(ClusterError::NamespacesForbidden(e.message)),
        Err(e) => Err(ClusterError::ListNamespaces(e)),
    }
}

/// Connects with the current kubeconfig (or in-cluster config) and checks the API server answers.
pub async fn connect() -> Result<Client, NoCluster> {
    let mut config = Config::infer().await.map_err(NoCluster::NotConfigured)?;
    let server = config.cluster_url.to_string();
    // Audit logs (and tests) can tell the operator's requests apart.
    config.headers.push((http::header::USER_AGENT, http::HeaderValue::from_static(USER_AGENT)));
    let client = Client::try_from(config).map_err(|source| NoCluster::Client { server: server.clone(), source })?;
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(info)) => {
            tracing::info!(server, version = %info.git_version, "connected to the Kubernetes API server");
            Ok(client)
        }
        Ok(Err(source)) => Err(NoCluster::Unreachable { server, source }),
        Err(_) => Err(NoCluster::Timeout { server }),
    }
}

enum Elected {
    /// Leading (or no election asked for: then `leadership` is `None` and so is the fence).
    Yes {
        leadership: Option<Leadership>,
        fence: Option<Arc<dyn Fence>>,
    },
    StoppedWhileWaiting,
}

/// Waits until this replica leads (at once without leader election), then confirms it once
/// before any reconcile: the fence every cloud call goes through.
async fn await_leadership(
    client: &Client,
    leader: Option<&LeaderSettings>,
    stop: &CancellationToken,
) -> Result<Elected, StartError> {
    let Some(leader) = leader else {
        return Ok(Elected::Yes { leadership: None, fence: None });
    };
    let config = LeaderConfig {
        namespace: leader.namespace.clone(),
        lease_name: leader.lease_name.clone(),
        identity: identity(),
        lease_duration: leader.lease_seconds,
        renew_grace: (leader.lease_seconds / 3).max(1),
    };
    tracing::info!(namespace = %config.namespace, lease = %config.lease_name, identity = %config.identity, "waiting for leadership");
    let mut l = Leadership::start(client.clone(), config.clone()).await?;
    tokio::select! {
        acquired = l.acquired() => {
            if !acquired {
                return Err(StartError::NotElected);
            }
        }
        _ = stop.cancelled() => {
            l.release(Duration::from_secs(5)).await;
            return Ok(Elected::StoppedWhileWaiting);
        }
    }
    tracing::info!("elected leader");
    let fence = start_fence(client, config, stop).await;
    Ok(Elected::Yes { leadership: Some(l), fence: Some(fence) })
}

/// The leader's fence (see [`LeaseFence`]): confirmed once before any reconcile, then kept
/// open by reading the Lease. kube-lease-manager renews `renew_grace` before expiry; the
/// fence closes halfway through that window and the Lease is read four times in it, so a
/// healthy leader's fence never closes between two renewals.
async fn start_fence(client: &Client, config: LeaderConfig, stop: &CancellationToken) -> Arc<dyn Fence> {
    let lease = Duration::from_secs(config.lease_duration);
    let grace = Duration::from_secs(config.renew_grace);
    let fence = Arc::new(LeaseFence::new(lease, grace / 2));
    let every = (grace / 4).max(Duration::from_millis(200));
    let leases = Api::namespaced(client.clone(), &config.namespace);
    if !crate::leader::confirm_once(&leases, &config, &fence, every.max(Duration::from_secs(2))).await {
        tracing::warn!("could not confirm the new leadership yet: cloud calls wait for it");
    }
    tokio::spawn(crate::leader::confirm_leadership(leases, config, fence.clone(), every, stop.clone()));
    fence
}

fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "vip-operator".into());
    // Two processes on one host (or a restarted pod name) must not share an identity.
    format!("{base}-{:08x}", rand::random::<u32>())
}

/// The cloud client, and the simulator it talks to in demo mode.
struct CloudSide {
    client: EcsClient,
    /// Writes the client saw end without a trusted answer.
    writes: Arc<WritesInFlight>,
    /// Whether the client knows where to read VPC ports.
    reads: bool,
    simulator: Option<Simulator>,
}

impl CloudSide {
    async fn start(
        settings: &Settings,
        metrics: Arc<Metrics>,
        fence: Option<Arc<dyn Fence>>,
    ) -> Result<Self, StartError> {
        let mut endpoint = settings.cloud.endpoint.clone();
        let mut vpc_endpoint = settings.cloud.vpc_endpoint.clone();
        let mut simulator = None;
        if let Some(sim) = &settings.simulator {
            let mut config = SimulatorConfig::new(sim.listen, SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY);
            config.latency = sim.latency;
            let sim = Simulator::start(config).await?;
            tracing::info!(endpoint = %sim.url(), "started the bundled ECS simulator in place of Huawei Cloud; its state: {}/sim/state", sim.url());
            endpoint = Endpoint::parse_override(&sim.url()).map_err(ConfigError::from)?;
            vpc_endpoint = Some(endpoint.clone());
            simulator = Some(sim);
        }
        let config = EcsClientConfig {
            endpoint: endpoint.clone(),
            vpc_endpoint: vpc_endpoint.clone().unwrap_or(Endpoint::Regional),
            qps: settings.cloud.qps,
            burst: settings.cloud.burst,
            max_concurrency: settings.cloud.concurrency,
            retry: settings.cloud.retry.clone(),
            ..Default::default()
        };
        // The new process cannot see the old one's writes: every subject counts as written for
        // one horizon.
        let writes = Arc::new(WritesInFlight::taking_over(settings.write_horizon));
        let observer = Arc::new(BothObservers(metrics, writes.clone()));
        let client = EcsClient::fenced(config, Arc::new(SystemClock), Some(observer), fence)?;
        tracing::info!(credentials = ?settings.defaults.credentials, endpoint = %endpoint, "cloud configuration");
        match &vpc_endpoint {
            Some(vpc) => {
                tracing::info!(endpoint = %vpc.vpc_display(), "VPC port reads confirm a NIC is gone before a release")
            }
            None => tracing::warn!(
                "no VPC endpoint (a fixed --ecs-endpoint without --vpc-endpoint): releases as NicNotFound rest on the ECS answer alone"
            ),
        }
        say_who_may_use_default_credentials(settings);
        if !settings.write_horizon.is_zero() {
            tracing::info!(
                horizon_s = settings.write_horizon.as_secs(),
                "writes without a trusted answer are taken to land up to --write-horizon later; decisions in the first horizon after start are checked again"
            );
        }
        Ok(Self { client, writes, reads: vpc_endpoint.is_some(), simulator })
    }
}

fn say_who_may_use_default_credentials(settings: &Settings) {
    let scope = &settings.default_credentials_scope;
    if matches!(settings.defaults.credentials, DefaultCredentials::None) {
        return;
    }
    if settings.demo_scope {
        tracing::warn!(
            "demo: every namespace may use the simulator's credentials (--simulator without --default-credentials-namespaces or --default-credentials-namespace-selector); a real install grants them per namespace"
        );
    } else if scope.is_nowhere() {
        tracing::warn!(
            "no namespace may use the operator's default credentials: bindings must name their own Secret, or grant namespaces with --default-credentials-namespaces / --default-credentials-namespace-selector"
        );
    } else if *scope == DefaultCredentialsScope::Everywhere {
        tracing::info!(
            "every namespace may use the operator's default credentials (--default-credentials-namespaces '*')"
        );
    } else {
        tracing::info!(?scope, "namespaces that may use the operator's default credentials");
    }
}

fn context(client: &Client, settings: &Settings, cloud: &CloudSide, metrics: Arc<Metrics>) -> Arc<Context> {
    let reporter = Reporter {
        controller: "vip-operator".into(),
        instance: std::env::var("POD_NAME").ok().or_else(|| std::env::var("HOSTNAME").ok()),
    };
    let mut ctx = Context::new(
        KubeOps::new(client.clone(), reporter),
        Arc::new(cloud.client.clone()),
        TargetResolver::new(Arc::new(client.clone()), settings.defaults.clone())
            .with_tenancy(Arc::new(Tenancy::new(settings.default_credentials_scope.clone()))),
        Arc::new(SystemClock),
    )
    .with_metrics(metrics)
    .with_resync(settings.resync_period)
    .with_writes(cloud.writes.clone())
    .with_index(BindingIndex::new(settings.defaults.api));
    if cloud.reads {
        ctx = ctx.with_vpc(Arc::new(cloud.client.clone()));
    }
    Arc::new(ctx)
}

/// Why the controller stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// SIGTERM (or the caller's shutdown future).
    Requested,
    LostLeadership,
    /// The controller returned without being asked to.
    Unexpectedly,
}

impl Stopped {
    fn into_result(self) -> Result<(), StartError> {
        match self {
            Stopped::Requested => Ok(()),
            Stopped::LostLeadership => Err(StartError::LostLeadership),
            Stopped::Unexpectedly => Err(StartError::ControllerStopped),
        }
    }
}

/// Runs the controller until a stop is asked for, leadership is lost or the controller ends;
/// then lets in-flight reconciles finish their cloud calls and status writes, within a bound.
async fn supervise(
    client: Client,
    ctx: Arc<Context>,
    settings: &Settings,
    process: &Process,
    leadership: Option<&mut Leadership>,
) -> Stopped {
    tracing::info!(namespaces = ?settings.watch.namespaces, concurrency = settings.watch.concurrency, "watching VipBindings (all namespaces when empty)");
    let hooks =
        Hooks { stores: process.stores.clone(), groups: process.groups.clone(), health: Some(process.health.clone()) };
    let stop = process.stop.clone();
    let mut controller = tokio::spawn(crate::controller::run(client, ctx, settings.watch.clone(), hooks, stop.clone()));
    let lost = async {
        match leadership {
            Some(l) => l.lost().await,
            None => std::future::pending().await,
        }
    };
    let why = tokio::select! {
        biased;
        _ = stop.cancelled() => Stopped::Requested,
        _ = lost => {
            tracing::error!("lost leadership: stopping reconciles");
            Stopped::LostLeadership
        }
        _ = &mut controller => {
            if stop.is_cancelled() { Stopped::Requested } else {
                tracing::error!("controller stopped unexpectedly");
                Stopped::Unexpectedly
            }
        }
    };
    process.health.shutting_down();
    stop.cancel();
    if !controller.is_finished() {
        match tokio::time::timeout(settings.shutdown_timeout, &mut controller).await {
            Ok(_) => tracing::info!("controller stopped"),
            Err(_) => {
                tracing::warn!(timeout = ?settings.shutdown_timeout, "in-flight reconciles did not finish in time; aborting them");
                controller.abort();
            }
        }
    }
    why
}

/// How long `--install-crd` waits for the CRD to be served.
const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);

/// Server-side applies the CRDs (development convenience; production installs them with Helm)
/// and waits until each is served.
pub async fn install_crd(client: &Client) -> Result<(), ClusterError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crate::api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let mut crd = api
            .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(crd))
            .await
            .map_err(ClusterError::InstallCrd)?;
        tracing::info!(crd = %name, "CRD applied; waiting until it is established");
        // The API server serves the new resource only once the CRD is Established: watching
        // before then fails as "not installed".
        let deadline = crate::instant_after(CRD_ESTABLISHED_TIMEOUT);
        loop {
            match crd_state(&crd) {
                CrdState::Established => break,
                CrdState::Deleting => return Err(ClusterError::CrdDeleting),
                CrdState::Pending(why) if tokio::time::Instant::now() >= deadline => {
                    return Err(ClusterError::CrdNotEstablished { why });
                }
                CrdState::Pending(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
            crd = api.get(&name).await.map_err(ClusterError::ReadCrd)?;
        }
        tracing::info!(crd = %name, "CRD established");
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum CrdState {
    Established,
    Deleting,
    /// Not served yet; why, from its conditions.
    Pending(String),
}

fn crd_state(crd: &CustomResourceDefinition) -> CrdState {
    if crd.metadata.deletion_timestamp.is_some() {
        return CrdState::Deleting;
    }
    let conditions = crd.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    if conditions.iter().any(|c| c.type_ == "Established" && c.status == "True") {
        return CrdState::Established;
    }
    let why: Vec<String> = conditions
        .iter()
        .filter(|c| c.status != "True" || c.type_ == "NamesAccepted")
        .map(|c| format!("{}={} {}", c.type_, c.status, c.message.as_deref().unwrap_or_default()))
        .collect();
    CrdState::Pending(if why.is_empty() { "no conditions yet".into() } else { why.join("; ") })
}

async fn check_crd(client: &Client, namespace: Option<&str>) -> Result<(), ClusterError> {
    let api: Api<VipBinding> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(ClusterError::CrdMissing),
        Err(kube::Error::Api(e)) if e.code == 403 => Err(ClusterError::Forbidden(e.message)),
        Err(e) => Err(ClusterError::List(e)),
    }
}

fn namespaces_or_all(namespaces: &[String]) -> Vec<Option<&str>> {
    if namespaces.is_empty() { vec![None] } else { namespaces.iter().map(|n| Some(n.as_str())).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn crd(json: serde_json::Value) -> CustomResourceDefinition {
        let mut base = serde_json::to_value(VipBinding::crd()).expect("crd");
        if let (Some(base), Some(extra)) = (base.as_object_mut(), json.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(base).expect("crd")
    }

    #[test]
    fn a_crd_is_usable_only_once_established_and_never_while_deleting() {
        assert!(matches!(crd_state(&crd(serde_json::json!({}))), CrdState::Pending(_)));
        let names_only = crd(serde_json::json!({"status": {"conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "False", "reason": "Installing", "message": "the initial names have not been accepted"}
        ]}}));
        match crd_state(&names_only) {
            CrdState::Pending(why) => assert!(why.contains("Established=False"), "{why}"),
            other => panic!("{other:?}"),
        }
        let established = crd(serde_json::json!({"status": {"conditions": [
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": ""}
        ]}}));
        assert_eq!(crd_state(&established), CrdState::Established);
        let mut deleting = established.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(crd_state(&deleting), CrdState::Deleting);
    }
}
