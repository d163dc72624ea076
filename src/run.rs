//! `vip-operator run`: connect to the cluster, build the ECS client and credentials, and run the
//! controller until SIGTERM. Also usable in-process (tests) through [`run`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::Reporter;
use kube::{Client, Config, CustomResourceExt};

use crate::admin::{AdminState, Health};
use crate::api::v1alpha1::{CRD_NAME, VipBinding};
use crate::cli::RunArgs;
use crate::controller::kube_ops::{FIELD_MANAGER, KubeOps};
use crate::controller::target::{DefaultCredentials, OperatorDefaults, TargetResolver};
use crate::controller::{Context, Hooks, WatchConfig};
use crate::ecs::{Credentials, EcsClient, EcsClientConfig, Endpoint, MetadataCredentials, RetryPolicy, SystemClock};
use crate::leader::{LeaderConfig, Leadership, LeaseFence};
use crate::metrics::Metrics;
use crate::simulator::{Simulator, SimulatorConfig};

/// Start-up failures, each with a message that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    NoCluster(String),
    #[error("{0}")]
    Cluster(String),
}

impl StartError {
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 2,
            StartError::NoCluster(_) => 3,
            StartError::Cluster(_) => 1,
        }
    }
}

pub const USER_AGENT: &str = concat!("vip-operator/", env!("CARGO_PKG_VERSION"));
pub const SIMULATOR_ACCESS_KEY: &str = "SIMULATORACCESSKEY01";
pub const SIMULATOR_SECRET_KEY: &str = "simulator-secret-key";
pub const SIMULATOR_PROJECT_ID: &str = "0000000000000000000000000000demo";

/// Connects with the current kubeconfig (or in-cluster config) and checks the API server answers.
pub async fn connect() -> Result<Client, StartError> {
    let mut config = Config::infer().await.map_err(|e| {
        StartError::NoCluster(format!(
            "no Kubernetes cluster configured: {e}. Point KUBECONFIG at a cluster (for a local one: `kind create cluster`)"
        ))
    })?;
    let server = config.cluster_url.to_string();
    // Audit logs (and tests) can tell the operator's requests apart.
    config.headers.push((http::header::USER_AGENT, http::HeaderValue::from_static(USER_AGENT)));
    let client = Client::try_from(config)
        .map_err(|e| StartError::NoCluster(format!("cannot build a client for {server}: {e}")))?;
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(info)) => {
            tracing::info!(server, version = %info.git_version, "connected to the Kubernetes API server");
            Ok(client)
        }
        Ok(Err(e)) => Err(StartError::NoCluster(format!(
            "the Kubernetes API server at {server} (current kubeconfig context) is not reachable: {e}. Start the cluster or switch context (`kubectl config use-context`)"
        ))),
        Err(_) => Err(StartError::NoCluster(format!(
            "the Kubernetes API server at {server} (current kubeconfig context) did not answer within 10s. Start the cluster or switch context"
        ))),
    }
}

/// Server-side applies the CRD (development convenience; production installs it with Helm).
/// The leader's fence (see [`LeaseFence`]): confirmed once before any reconcile, then kept
/// open by reading the Lease. kube-lease-manager renews `renew_grace` before expiry; the
/// fence closes halfway through that window and the Lease is read four times in it, so a
/// healthy leader's fence never closes between two renewals.
async fn start_fence(client: &Client, config: LeaderConfig, stop: &CancellationToken) -> Arc<dyn crate::ecs::Fence> {
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

/// How long `--install-crd` waits for the CRD to be served.
const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn install_crd(client: &Client) -> Result<(), StartError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let applied = api
        .patch(CRD_NAME, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(VipBinding::crd()))
        .await
        .map_err(|e| StartError::Cluster(format!("cannot install the VipBinding CRD: {e}")))?;
    tracing::info!(crd = CRD_NAME, "CRD applied; waiting until it is established");
    // The API server serves the new resource only once the CRD is Established: watching
    // before then fails as "not installed".
    let deadline = crate::instant_after(CRD_ESTABLISHED_TIMEOUT);
    let mut crd = applied;
    loop {
        match crd_state(&crd) {
            CrdState::Established => break,
            CrdState::Deleting => {
                return Err(StartError::Cluster(format!(
                    "the VipBinding CRD ({CRD_NAME}) is being deleted (an uninstall is in progress): wait until it is gone, then start again"
                )));
            }
            CrdState::Pending(why) if tokio::time::Instant::now() >= deadline => {
                return Err(StartError::Cluster(format!(
                    "the VipBinding CRD ({CRD_NAME}) was not established within {}s: {why}",
                    CRD_ESTABLISHED_TIMEOUT.as_secs()
                )));
            }
            CrdState::Pending(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        crd =
            api.get(CRD_NAME).await.map_err(|e| StartError::Cluster(format!("cannot read the VipBinding CRD: {e}")))?;
    }
    tracing::info!(crd = CRD_NAME, "CRD established");
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

async fn check_crd(client: &Client, namespace: Option<&str>) -> Result<(), StartError> {
    let api: Api<VipBinding> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(StartError::Cluster(format!(
            "the VipBinding CRD ({CRD_NAME}) is not installed: `kubectl apply -f crds/`, install the Helm chart, or run with --install-crd"
        ))),
        Err(kube::Error::Api(e)) if e.code == 403 => Err(StartError::Cluster(format!(
            "not allowed to list VipBindings ({}): check the operator's RBAC",
            e.message
        ))),
        Err(e) => Err(StartError::Cluster(format!("cannot list VipBindings: {e}"))),
    }
}

fn parse_secret_ref(value: &str) -> Result<(String, String), StartError> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok((ns.into(), name.into())),
        _ => Err(StartError::Config(format!("--credentials-secret {value:?} must be NAMESPACE/NAME"))),
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Operator default credentials: `--credentials-secret`, else the `HUAWEICLOUD_SDK_*`
/// environment, else the metadata service when asked for, else none (bindings must then name
/// their own Secret).
fn default_credentials(args: &RunArgs) -> Result<DefaultCredentials, StartError> {
    if let Some(s) = &args.credentials_secret {
        let (namespace, name) = parse_secret_ref(s)?;
        return Ok(DefaultCredentials::Secret { namespace, name });
    }
    match (env_nonempty("HUAWEICLOUD_SDK_AK"), env_nonempty("HUAWEICLOUD_SDK_SK")) {
        (Some(ak), Some(sk)) => {
            let token = env_nonempty("HUAWEICLOUD_SDK_SECURITY_TOKEN");
            let creds = Credentials::new(ak.trim(), sk.trim(), token.as_deref().map(str::trim))
                .map_err(|e| StartError::Config(format!("HUAWEICLOUD_SDK_* credentials: {e}")))?;
            return Ok(DefaultCredentials::Static(creds));
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(StartError::Config("set both HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK, or neither".into()));
        }
        (None, None) => {}
    }
    if args.metadata_credentials {
        let url = args
            .metadata_url
            .parse()
            .map_err(|e| StartError::Config(format!("--metadata-url {:?}: {e}", args.metadata_url)))?;
        return Ok(DefaultCredentials::Metadata(Arc::new(MetadataCredentials::new(
            url,
            Duration::from_secs(40 * 60),
            Arc::new(SystemClock),
        ))));
    }
    Ok(DefaultCredentials::None)
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

/// Runs the operator until `shutdown` resolves (or leadership is lost, which is an error: the
/// process exits so that it restarts as a standby).
pub async fn run(
    mut args: RunArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    // Validate flags before touching the network: bad input fails fast and clearly.
    let mut endpoint = match &args.ecs_endpoint {
        Some(url) => Endpoint::parse_override(url).map_err(|e| StartError::Config(e.to_string()))?,
        None => Endpoint::Regional,
    };
    let credentials = if args.simulator && args.credentials_secret.is_none() {
        DefaultCredentials::Static(
            Credentials::new(SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY, None)
                .map_err(|e| StartError::Config(e.to_string()))?,
        )
    } else {
        default_credentials(&args)?
    };
    if let Some(region) = &args.region {
        crate::ecs::check_region(region).map_err(|e| StartError::Config(format!("--region: {e}")))?;
    }
    if args.simulator {
        args.project_id.get_or_insert_with(|| SIMULATOR_PROJECT_ID.into());
    }
    let project_id = args.project_id.clone().or_else(|| env_nonempty("HUAWEICLOUD_SDK_PROJECT_ID"));
    if let Some(p) = &project_id {
        crate::ecs::check_path_id("--project-id", p).map_err(|e| StartError::Config(e.to_string()))?;
    }
    if args.concurrency == 0 {
        return Err(StartError::Config("--concurrency must be at least 1".into()));
    }
    if args.cloud_max_attempts == 0 {
        return Err(StartError::Config("--cloud-max-attempts must be at least 1".into()));
    }
    let metrics_addr: Option<SocketAddr> = match args.metrics_addr.trim() {
        "" | "off" | "none" => None,
        a => Some(a.parse().map_err(|e| StartError::Config(format!("--metrics-addr {a:?}: {e}")))?),
    };
    let leader_namespace = if args.leader_elect {
        Some(args.leader_election_namespace.clone().filter(|n| !n.is_empty()).ok_or_else(|| {
            StartError::Config("--leader-elect needs --leader-election-namespace (or POD_NAMESPACE)".into())
        })?)
    } else {
        None
    };

    // One signal for everything that must stop; readiness turns false the moment it fires.
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        let health = health.clone();
        tokio::spawn(async move {
            shutdown.await;
            health.shutting_down();
            stop.cancel();
        });
    }
    let stores = Arc::new(std::sync::RwLock::new(Vec::new()));
    let admin_stop = CancellationToken::new();
    if let Some(addr) = metrics_addr {
        let state = AdminState { health: health.clone(), metrics: metrics.clone(), stores: stores.clone() };
        let local = crate::admin::serve(addr, state, admin_stop.clone())
            .await
            .map_err(|e| StartError::Config(e.to_string()))?;
        tracing::info!(%local, "admin server: /metrics /healthz /readyz");
    }

    let client = connect().await?;
    if args.install_crd {
        install_crd(&client).await?;
    }
    for ns in namespaces_or_all(&args.namespaces) {
        check_crd(&client, ns).await?;
    }
    health.started();

    let mut leadership = None;
    let mut fence: Option<Arc<dyn crate::ecs::Fence>> = None;
    if let Some(namespace) = leader_namespace {
        let config = LeaderConfig {
            namespace,
            lease_name: args.leader_election_id.clone(),
            identity: identity(),
            lease_duration: args.leader_lease_seconds.max(2),
            renew_grace: (args.leader_lease_seconds / 3).max(1),
        };
        tracing::info!(lease = %format!("{}/{}", config.namespace, config.lease_name), identity = %config.identity, "waiting for leadership");
        let mut l =
            Leadership::start(client.clone(), config.clone()).await.map_err(|e| StartError::Cluster(e.to_string()))?;
        tokio::select! {
            acquired = l.acquired() => {
                if !acquired {
                    return Err(StartError::Cluster("leader election stopped before this replica was elected".into()));
                }
            }
            _ = stop.cancelled() => {
                l.release(Duration::from_secs(5)).await;
                admin_stop.cancel();
                return Ok(());
            }
        }
        tracing::info!("elected leader");
        leadership = Some(l);
        fence = Some(start_fence(&client, config, &stop).await);
    }
    metrics.leader.set(1);
    health.leading(true);

    let mut simulator = None;
    if args.simulator {
        let mut config = SimulatorConfig::new(args.simulator_listen, SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY);
        config.latency = Duration::from_millis(args.simulator_latency_ms);
        let sim = Simulator::start(config).await.map_err(|e| StartError::Config(e.to_string()))?;
        tracing::info!(endpoint = %sim.url(), "started the bundled ECS simulator in place of Huawei Cloud; its state: {}/sim/state", sim.url());
        endpoint = Endpoint::parse_override(&sim.url()).map_err(|e| StartError::Config(e.to_string()))?;
        simulator = Some(sim);
    }
    let retry = RetryPolicy { max_attempts: args.cloud_max_attempts, ..RetryPolicy::default() };
    let cloud = EcsClient::fenced(
        EcsClientConfig {
            endpoint: endpoint.clone(),
            qps: args.cloud_qps,
            burst: args.cloud_burst,
            max_concurrency: args.cloud_concurrency,
            retry,
            ..Default::default()
        },
        Arc::new(SystemClock),
        Some(metrics.clone()),
        fence,
    )
    .map_err(|e| StartError::Config(e.to_string()))?;
    tracing::info!(credentials = ?credentials, endpoint = %endpoint, "cloud configuration");

    let reporter = Reporter {
        controller: "vip-operator".into(),
        instance: std::env::var("POD_NAME").ok().or_else(|| std::env::var("HOSTNAME").ok()),
    };
    let defaults = OperatorDefaults {
        credentials,
        project_id,
        region: args.region.clone(),
        region_required: endpoint == Endpoint::Regional,
    };
    let ctx = Arc::new(
        Context::new(
            KubeOps::new(client.clone(), reporter),
            Arc::new(cloud),
            TargetResolver::new(Arc::new(client.clone()), defaults),
            Arc::new(SystemClock),
        )
        .with_metrics(metrics.clone())
        .with_resync(args.resync_period),
    );
    let watch = WatchConfig {
        namespaces: args.namespaces.clone(),
        concurrency: args.concurrency,
        protect_credentials: args.protect_credentials,
    };
    tracing::info!(namespaces = ?watch.namespaces, concurrency = watch.concurrency, "watching VipBindings (all namespaces when empty)");
    let hooks = Hooks { stores, health: Some(health.clone()) };
    let mut controller = tokio::spawn(crate::controller::run(client, ctx, watch, hooks, stop.clone()));

    let mut lost_leadership = false;
    let mut stopped_unexpectedly = false;
    let mut controller_done = false;
    tokio::select! {
        biased;
        _ = stop.cancelled() => {}
        _ = async { match leadership.as_mut() { Some(l) => l.lost().await, None => std::future::pending().await } } => {
            tracing::error!("lost leadership: stopping reconciles");
            lost_leadership = true;
            health.shutting_down();
            stop.cancel();
        }
        _ = &mut controller => {
            controller_done = true;
            if !stop.is_cancelled() {
                tracing::error!("controller stopped unexpectedly");
                stopped_unexpectedly = true;
            }
            health.shutting_down();
            stop.cancel();
        }
    }
    // In-flight reconciles finish their cloud calls and status writes, within a bound.
    if !controller_done {
        match tokio::time::timeout(args.shutdown_timeout, &mut controller).await {
            Ok(_) => tracing::info!("controller stopped"),
            Err(_) => {
                tracing::warn!(timeout = ?args.shutdown_timeout, "in-flight reconciles did not finish in time; aborting them");
                controller.abort();
            }
        }
    }
    metrics.leader.set(0);
    if let Some(l) = leadership {
        l.release(Duration::from_secs(5)).await;
    }
    if let Some(sim) = simulator {
        sim.shutdown().await;
    }
    admin_stop.cancel();
    if lost_leadership {
        return Err(StartError::Cluster("lost leadership; exiting so that this replica restarts as a standby".into()));
    }
    if stopped_unexpectedly {
        // Never exit 0 for this: a supervisor must see a failure and restart the operator.
        return Err(StartError::Cluster("the controller stopped unexpectedly".into()));
    }
    Ok(())
}

fn namespaces_or_all(namespaces: &[String]) -> Vec<Option<&str>> {
    if namespaces.is_empty() { vec![None] } else { namespaces.iter().map(|n| Some(n.as_str())).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

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
