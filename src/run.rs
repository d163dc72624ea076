//! `vip-operator run`: connect to the cluster, build the ECS client and credentials, and run the
//! controller until SIGTERM. Also usable in-process (tests) through [`run`].

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::Reporter;
use kube::{Client, Config, CustomResourceExt};

use crate::api::v1alpha1::{CRD_NAME, VipBinding};
use crate::cli::RunArgs;
use crate::controller::kube::{FIELD_MANAGER, KubeOps};
use crate::controller::target::{DefaultCredentials, OperatorDefaults, TargetResolver};
use crate::controller::{Context, WatchConfig};
use crate::ecs::{Credentials, EcsClient, EcsClientConfig, Endpoint, MetadataCredentials, RetryPolicy, SystemClock};
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

pub const SIMULATOR_ACCESS_KEY: &str = "SIMULATORACCESSKEY01";
pub const SIMULATOR_SECRET_KEY: &str = "simulator-secret-key";
pub const SIMULATOR_PROJECT_ID: &str = "0000000000000000000000000000demo";

/// Connects with the current kubeconfig (or in-cluster config) and checks the API server answers.
pub async fn connect() -> Result<Client, StartError> {
    let config = Config::infer().await.map_err(|e| {
        StartError::NoCluster(format!(
            "no Kubernetes cluster configured: {e}. Point KUBECONFIG at a cluster (for a local one: `kind create cluster`)"
        ))
    })?;
    let server = config.cluster_url.to_string();
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
pub async fn install_crd(client: &Client) -> Result<(), StartError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(CRD_NAME, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(VipBinding::crd()))
        .await
        .map_err(|e| StartError::Cluster(format!("cannot install the VipBinding CRD: {e}")))?;
    tracing::info!(crd = CRD_NAME, "CRD applied");
    Ok(())
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

/// Runs the operator until `shutdown` resolves.
pub async fn run(
    mut args: RunArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    // Validate flags before touching the network: bad input fails fast and clearly.
    if let Some(url) = &args.ecs_endpoint {
        Endpoint::parse_override(url).map_err(StartError::Config)?;
    }
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
        crate::ecs::check_path_id("--project-id", p).map_err(StartError::Config)?;
    }
    if args.concurrency == 0 {
        return Err(StartError::Config("--concurrency must be at least 1".into()));
    }

    let client = connect().await?;
    if args.install_crd {
        install_crd(&client).await?;
    }
    check_crd(&client, args.namespace.as_deref()).await?;

    let mut simulator = None;
    if args.simulator {
        let mut config = SimulatorConfig::new(args.simulator_listen, SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY);
        config.latency = Duration::from_millis(args.simulator_latency_ms);
        let sim = Simulator::start(config).await.map_err(StartError::Config)?;
        tracing::info!(endpoint = %sim.url(), "started the bundled ECS simulator in place of Huawei Cloud; its state: {}/sim/state", sim.url());
        args.ecs_endpoint = Some(sim.url());
        simulator = Some(sim);
    }
    let endpoint = match &args.ecs_endpoint {
        Some(url) => Endpoint::parse_override(url).map_err(StartError::Config)?,
        None => Endpoint::Regional,
    };
    let cloud = EcsClient::new(EcsClientConfig {
        endpoint: endpoint.clone(),
        qps: args.cloud_qps,
        burst: args.cloud_burst,
        max_concurrency: args.cloud_concurrency,
        retry: RetryPolicy::default(),
        ..Default::default()
    })
    .map_err(StartError::Config)?;
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
    let ctx = Arc::new(Context::new(
        KubeOps::new(client.clone(), reporter),
        Arc::new(cloud),
        TargetResolver::new(Arc::new(client.clone()), defaults),
        Arc::new(SystemClock),
    ));
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("(all)"),
        concurrency = args.concurrency,
        "watching VipBindings"
    );
    crate::controller::run(
        client,
        ctx,
        WatchConfig { namespace: args.namespace.clone(), concurrency: args.concurrency },
        shutdown,
    )
    .await;
    tracing::info!("controller stopped");
    if let Some(sim) = simulator {
        sim.shutdown().await;
    }
    Ok(())
}
