//! Command line: `vip-operator run | import | crd | simulator`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::simulator::{SimCredential, SimError, Simulator, SimulatorConfig};
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "vip-operator",
    version,
    about = "Binds Huawei Cloud ECS virtual IPs to server NICs as Kubernetes VipBinding objects"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter: a level (`info`) or tracing directives (`info,vip_operator=debug`). RUST_LOG overrides it.
    #[arg(long, global = true, env = "VIPOP_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    #[arg(long, global = true, env = "VIPOP_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: watch VipBindings and bind/unbind their VIPs.
    Run(Box<RunArgs>),
    /// Print VipBindings (or VipGroups) for the VIPs already bound in one project and region, to
    /// review and `kubectl apply -f -`. Reads the cloud, never writes it.
    Import(Box<ImportArgs>),
    /// Print the CustomResourceDefinitions (VipBinding, VipGroup) as YAML.
    Crd(CrdArgs),
    /// Serve the bundled ECS simulator (a stand-in for Huawei Cloud, for demos and tests).
    Simulator(SimulatorArgs),
}

#[derive(Debug, clap::Args)]
pub struct CrdArgs {
    /// Print only this CRD (e.g. vipgroups.vipoperator.dev); all of them by default.
    #[arg(long)]
    pub name: Option<String>,
}

/// `--default-api` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ApiFlag {
    Ecs,
    Vpc,
}

impl From<ApiFlag> for crate::api::v1alpha1::BindApi {
    fn from(flag: ApiFlag) -> Self {
        match flag {
            ApiFlag::Ecs => Self::Ecs,
            ApiFlag::Vpc => Self::Vpc,
        }
    }
}

/// Credentials can also come from the environment: HUAWEICLOUD_SDK_AK, HUAWEICLOUD_SDK_SK and
/// (temporary keys) HUAWEICLOUD_SDK_SECURITY_TOKEN, used when --credentials-secret is not given.
/// A VipBinding's own spec.credentialsSecretRef always wins.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// ECS endpoint URL for every region (the simulator, a private cloud, a proxy). Default:
    /// https://ecs.{region}.myhuaweicloud.com. http:// is allowed.
    #[arg(long, env = "VIPOP_ECS_ENDPOINT")]
    pub ecs_endpoint: Option<String>,
    /// VPC endpoint URL for every region, used to read ports before a release (evidence that a
    /// NIC is gone). Default: https://vpc.{region}.myhuaweicloud.com, unless --ecs-endpoint is
    /// set: a fixed ECS endpoint without a VPC one means no reads.
    #[arg(long, env = "VIPOP_VPC_ENDPOINT")]
    pub vpc_endpoint: Option<String>,
    /// The API for bindings whose spec.api is not set: ECS (the NIC call) or VPC (the VIP
    /// port's allowed_address_pairs). Recorded at each binding's first bind, so changing it
    /// later does not move existing bindings.
    #[arg(long, env = "VIPOP_DEFAULT_API", value_enum, default_value = "ecs")]
    pub default_api: ApiFlag,
    /// Default region for bindings that set none (and whose Secret sets none).
    #[arg(long, env = "VIPOP_REGION")]
    pub region: Option<String>,
    /// Default project ID (falls back to HUAWEICLOUD_SDK_PROJECT_ID).
    #[arg(long, env = "VIPOP_PROJECT_ID")]
    pub project_id: Option<String>,
    #[command(flatten)]
    pub credentials: CredentialArgs,
    /// Namespaces whose bindings may use the operator's default credentials (repeat or
    /// comma-separate); `*` for every namespace. Default: none (with --simulator: every one).
    #[arg(long, env = "VIPOP_DEFAULT_CREDENTIALS_NAMESPACES", value_delimiter = ',')]
    pub default_credentials_namespaces: Vec<String>,
    /// Namespaces whose labels match this selector may use them too, e.g.
    /// `vipoperator.dev/default-credentials=allowed` (kubectl selector syntax).
    #[arg(long, env = "VIPOP_DEFAULT_CREDENTIALS_NAMESPACE_SELECTOR")]
    pub default_credentials_namespace_selector: Option<String>,
    /// Watch only this namespace; repeat (or comma-separate) for several. Default: all namespaces.
    #[arg(long = "namespace", env = "VIPOP_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Bindings reconciled in parallel.
    #[arg(long, env = "VIPOP_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Cloud API calls per second, for each access key, region and service (ECS, VPC) apart
    /// (retries included).
    #[arg(long, env = "VIPOP_CLOUD_QPS", default_value_t = 10.0)]
    pub cloud_qps: f64,
    /// Cloud API calls allowed in a burst above --cloud-qps.
    #[arg(long, env = "VIPOP_CLOUD_BURST", default_value_t = 10)]
    pub cloud_burst: u32,
    /// Cloud API calls in flight at once.
    #[arg(long, env = "VIPOP_CLOUD_CONCURRENCY", default_value_t = 16)]
    pub cloud_concurrency: usize,
    /// Attempts per cloud call (the first included) for retryable errors, before the binding is
    /// requeued with backoff.
    #[arg(long, env = "VIPOP_CLOUD_MAX_ATTEMPTS", default_value_t = 4)]
    pub cloud_max_attempts: u32,
    /// Re-assert the bind of bound bindings this often (jittered), so a VIP removed behind the
    /// operator's back comes back. 0 disables.
    #[arg(long, env = "VIPOP_RESYNC_PERIOD", default_value = "10m", value_parser = humantime::parse_duration)]
    pub resync_period: std::time::Duration,
    /// How long after a write attempt without a trusted answer (a timeout, a lost connection, a
    /// 5xx such as the gateway's 504) the cloud may still apply it; until then no decision rests
    /// on a read it could overtake, and what is decided is checked again afterwards. Also how
    /// long a new leader treats every write of the one before as possibly landing. The default
    /// covers Huawei API Gateway's 60 s backend timeout plus 30 s. 0 assumes writes never land
    /// late (tests only). At most 10m.
    #[arg(long, env = "VIPOP_WRITE_HORIZON", default_value = "90s", value_parser = humantime::parse_duration)]
    pub write_horizon: std::time::Duration,
    /// Keep credentials Secrets referenced by live bindings from being deleted before the
    /// bindings are (a finalizer on the Secret).
    #[arg(long, env = "VIPOP_PROTECT_CREDENTIALS", default_value_t = true, action = clap::ArgAction::Set)]
    pub protect_credentials: bool,
    /// Admin server address for /metrics, /healthz and /readyz ("off" disables it).
    #[arg(long, env = "VIPOP_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: String,
    /// Run leader election so that only one replica reconciles.
    #[arg(long, env = "VIPOP_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the leader election Lease (default: the pod's namespace from POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader election Lease.
    #[arg(long, default_value = "vip-operator")]
    pub leader_election_id: String,
    /// Seconds the Lease stays valid without renewal: how fast a standby takes over a dead leader.
    #[arg(long, default_value_t = 15)]
    pub leader_lease_seconds: u64,
    /// On SIGTERM, how long in-flight reconciles (and their cloud calls) may take to finish.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: std::time::Duration,
    /// Apply the VipBinding CRD at start (development; the Helm chart installs it in production).
    #[arg(long)]
    pub install_crd: bool,
    /// Demo mode: start the bundled ECS simulator in this process and use it instead of Huawei
    /// Cloud, with its credentials and a demo project ID. No Huawei account needed.
    #[arg(long)]
    pub simulator: bool,
    /// Where the --simulator listens.
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub simulator_listen: SocketAddr,
    /// Latency the --simulator adds to each cloud call.
    #[arg(long, default_value_t = 200)]
    pub simulator_latency_ms: u64,
}

/// Where the operator's own credentials come from (besides HUAWEICLOUD_SDK_AK/SK in the
/// environment); `run` and `import` take the same.
#[derive(Debug, Clone, Args)]
pub struct CredentialArgs {
    /// Default credentials Secret, NAMESPACE/NAME (keys accessKey, secretKey, optional securityToken, projectId, region).
    #[arg(long, env = "VIPOP_CREDENTIALS_SECRET")]
    pub credentials_secret: Option<String>,
    /// Use temporary credentials from the ECS metadata service (a node with an IAM agency) as the default.
    #[arg(long, env = "VIPOP_METADATA_CREDENTIALS")]
    pub metadata_credentials: bool,
    /// Base URL of the ECS metadata service.
    #[arg(long, env = "VIPOP_METADATA_URL", default_value = crate::ecs::credentials::DEFAULT_METADATA_URL)]
    pub metadata_url: String,
}

/// `import -o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One YAML document per object, a comment above each.
    Yaml,
    /// A `v1` `List` of the objects.
    Json,
}

/// `vip-operator import`: credentials, project and region as `run` takes them (flags, then the
/// HUAWEICLOUD_SDK_* environment; a --credentials-secret's projectId and region when the flags
/// leave them out).
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The Huawei Cloud project to read (falls back to HUAWEICLOUD_SDK_PROJECT_ID).
    #[arg(long, env = "VIPOP_PROJECT_ID")]
    pub project_id: Option<String>,
    /// The region to read, e.g. cn-north-4 (also written into every object).
    #[arg(long, env = "VIPOP_REGION")]
    pub region: Option<String>,
    /// VPC endpoint URL (the simulator, a private cloud, a proxy). Default:
    /// https://vpc.{region}.myhuaweicloud.com.
    #[arg(long, env = "VIPOP_VPC_ENDPOINT")]
    pub vpc_endpoint: Option<String>,
    #[command(flatten)]
    pub credentials: CredentialArgs,
    /// Only the VIPs in this network (the "Network ID" of their subnet).
    #[arg(long)]
    pub network: Option<String>,
    /// Namespace of the printed objects.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Put in front of every printed object's name (lowercase letters, digits, '-'; at most 24).
    #[arg(long, default_value = "")]
    pub name_prefix: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    pub output: OutputFormat,
    /// Read the cluster's Nodes (current kubeconfig) and print one VipGroup selecting
    /// LABEL=<value> for a VIP whose NICs are exactly the nodes with that value (at least 2).
    #[arg(long, value_name = "LABEL")]
    pub group_by_selector: Option<String>,
    /// Cloud API calls per second.
    #[arg(long, default_value_t = 10.0)]
    pub cloud_qps: f64,
    /// The managementPolicy of what is printed: observe (default: applying it writes nothing,
    /// whatever has changed since; switch each to Manage after review) or manage.
    #[arg(long, value_enum, default_value = "observe")]
    pub management_policy: PolicyFlag,
}

/// `--management-policy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyFlag {
    Observe,
    Manage,
}

impl From<PolicyFlag> for crate::api::v1alpha1::ManagementPolicy {
    fn from(flag: PolicyFlag) -> Self {
        match flag {
            PolicyFlag::Observe => Self::Observe,
            PolicyFlag::Manage => Self::Manage,
        }
    }
}

#[derive(Debug, Args)]
pub struct SimulatorArgs {
    /// Address to listen on. The admin API (/sim/...) is unauthenticated: keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub listen: SocketAddr,
    /// Access key the simulator accepts.
    #[arg(long, env = "VIPOP_SIM_ACCESS_KEY", default_value = "SIMULATORACCESSKEY01")]
    pub access_key: String,
    /// Secret key for --access-key.
    #[arg(long, env = "VIPOP_SIM_SECRET_KEY", hide_env_values = true, default_value = "simulator-secret-key")]
    pub secret_key: String,
    /// Latency added to every cloud call (after its effect is applied).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Calls per second above which the gateway answers 429 APIGW.0308 (unlimited by default).
    #[arg(long)]
    pub qps: Option<f64>,
    /// A NIC id that does not exist (answers 404); repeatable.
    #[arg(long = "missing-nic")]
    pub missing_nics: Vec<String>,
    /// Pairs one port's allowed_address_pairs holds at most (1 to 10000): a longer update answers
    /// 400 VPC.2500. Huawei's quota is not confirmed; 100 is the simulator's choice.
    #[arg(long, default_value_t = crate::simulator::DEFAULT_MAX_PAIRS)]
    pub max_pairs: usize,
}

impl SimulatorArgs {
    pub fn config(&self) -> SimulatorConfig {
        let mut config = SimulatorConfig::new(self.listen, &self.access_key, &self.secret_key);
        config.credentials = vec![SimCredential {
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            security_token: None,
        }];
        config.latency = Duration::from_millis(self.latency_ms);
        config.qps = self.qps;
        config.missing_nics = self.missing_nics.clone();
        config.max_pairs = self.max_pairs;
        config
    }

    pub async fn run(self) -> Result<(), SimError> {
        let sim = Simulator::start(self.config()).await?;
        tracing::info!(endpoint = %sim.url(), access_key = %self.access_key, "ECS simulator listening; admin API under /sim/");
        let stop = tokio_util::sync::CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            crate::shutdown_signal().await;
            on_signal.cancel();
        });
        sim.run_until(stop).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};
    use crate::simulator::DEFAULT_MAX_PAIRS;

    fn max_pairs(args: &[&str]) -> Option<usize> {
        match Cli::try_parse_from(args).ok()?.command {
            Command::Simulator(args) => Some(args.config().max_pairs),
            _ => None,
        }
    }

    /// `--max-pairs` reaches the simulator's config; its bounds are checked at start (see the
    /// simulator's tests), so clap takes any non-negative integer.
    #[test]
    fn the_pairs_limit_flag_reaches_the_config() {
        assert_eq!(max_pairs(&["vip-operator", "simulator"]), Some(DEFAULT_MAX_PAIRS));
        assert_eq!(max_pairs(&["vip-operator", "simulator", "--max-pairs", "250"]), Some(250));
        assert_eq!(max_pairs(&["vip-operator", "simulator", "--max-pairs", "-1"]), None);
    }
}
