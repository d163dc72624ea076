//! Start-up flags, validated: [`Settings::new`] turns `vip-operator run`'s arguments and the
//! `HUAWEICLOUD_SDK_*` environment into everything the operator starts from, or says which
//! flag is wrong. Pure (no network, no process environment of its own), so every rule is
//! unit-tested.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::{CredentialArgs, ImportArgs, OutputFormat, RunArgs};
use crate::controller::WatchConfig;
use crate::controller::{DefaultCredentials, OperatorDefaults};
use crate::controller::{DefaultCredentialsScope, SelectorError, parse_selector};
use crate::ecs::{
    CredentialsError, Endpoint, EndpointError, InvalidId, InvalidRegion, MetadataCredentials, RetryPolicy, SystemClock,
};

pub const SIMULATOR_ACCESS_KEY: &str = "SIMULATORACCESSKEY01";
pub const SIMULATOR_SECRET_KEY: &str = "simulator-secret-key";
pub const SIMULATOR_PROJECT_ID: &str = "0000000000000000000000000000demo";

/// A flag (or environment variable) that cannot be used. Exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("--region: {0}")]
    Region(#[from] InvalidRegion),
    #[error(transparent)]
    ProjectId(#[from] InvalidId),
    #[error("--default-api vpc needs a VPC endpoint: with --ecs-endpoint set, set --vpc-endpoint too")]
    VpcWithoutEndpoint,
    #[error("--credentials-secret {0:?} must be NAMESPACE/NAME")]
    SecretRef(String),
    #[error("HUAWEICLOUD_SDK_* credentials: {0}")]
    EnvCredentials(CredentialsError),
    #[error("set both HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK, or neither")]
    HalfEnvCredentials,
    #[error("{0}")]
    SimulatorCredentials(CredentialsError),
    #[error("--metadata-url {value:?}: {source}")]
    MetadataUrl { value: String, source: url::ParseError },
    #[error("--concurrency must be at least 1")]
    Concurrency,
    #[error("--cloud-max-attempts must be at least 1")]
    MaxAttempts,
    #[error("--metrics-addr {value:?}: {source}")]
    MetricsAddr { value: String, source: std::net::AddrParseError },
    #[error("--leader-elect needs --leader-election-namespace (or POD_NAMESPACE)")]
    LeaderNamespace,
    #[error("--default-credentials-namespaces: {0:?} is not a namespace name")]
    NamespaceName(String),
    #[error("--default-credentials-namespace-selector: {0}")]
    Selector(#[from] SelectorError),
    #[error("--write-horizon {0:?} is longer than the 10 minutes it may be")]
    WriteHorizon(Duration),
    #[error("--namespace {0:?} is not a namespace name")]
    ImportNamespace(String),
    #[error(
        "--name-prefix {0:?}: at most {MAX_NAME_PREFIX} lowercase letters, digits and '-', starting with a letter or digit"
    )]
    NamePrefix(String),
    #[error("--group-by-selector {0:?} is not a label key ([prefix/]name, as in kubernetes.io/hostname)")]
    LabelKey(String),
}

/// The longest `import --name-prefix`: a VipGroup's name (prefix + `vip-` + the VIP + a hash)
/// must stay within the 50 characters its CRD allows.
pub const MAX_NAME_PREFIX: usize = 24;

/// The longest `--write-horizon`: a deletion may wait this long for a write that may still land.
pub const MAX_WRITE_HORIZON: Duration = Duration::from_secs(600);

/// What the operator reads from its environment besides flags (Huawei's SDK variables).
#[derive(Debug, Clone, Default)]
pub struct SdkEnvironment {
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub security_token: Option<String>,
    pub project_id: Option<String>,
}

impl SdkEnvironment {
    /// The `HUAWEICLOUD_SDK_*` variables of this process; blank counts as unset.
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            access_key: var("HUAWEICLOUD_SDK_AK"),
            secret_key: var("HUAWEICLOUD_SDK_SK"),
            security_token: var("HUAWEICLOUD_SDK_SECURITY_TOKEN"),
            project_id: var("HUAWEICLOUD_SDK_PROJECT_ID"),
        }
    }
}

/// Leader election, when asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderSettings {
    pub namespace: String,
    pub lease_name: String,
    /// At least 2 s; renewals start a third of it (at least 1 s) before expiry.
    pub lease_seconds: u64,
}

/// The bundled simulator, when `--simulator` is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatorSettings {
    pub listen: SocketAddr,
    pub latency: Duration,
}

/// The cloud client's limits.
#[derive(Debug, Clone)]
pub struct CloudSettings {
    /// The ECS endpoint; with the simulator, replaced by its address once it listens.
    pub endpoint: Endpoint,
    /// Where ports are read; `None` when no VPC endpoint is known (a fixed `--ecs-endpoint`
    /// without `--vpc-endpoint`): releases then rest on the ECS answer alone.
    pub vpc_endpoint: Option<Endpoint>,
    pub qps: f64,
    pub burst: u32,
    pub concurrency: usize,
    pub retry: RetryPolicy,
}

/// Everything `vip-operator run` starts from, validated.
#[derive(Debug)]
pub struct Settings {
    pub defaults: OperatorDefaults,
    /// Which namespaces may use `defaults.credentials`.
    pub default_credentials_scope: DefaultCredentialsScope,
    /// Every namespace may, because this is the demo against the simulator (said at start-up).
    pub demo_scope: bool,
    pub cloud: CloudSettings,
    pub watch: WatchConfig,
    pub resync_period: Duration,
    /// How long after an attempt without a trusted answer the cloud may still apply it.
    pub write_horizon: Duration,
    pub metrics_addr: Option<SocketAddr>,
    pub leader: Option<LeaderSettings>,
    pub simulator: Option<SimulatorSettings>,
    pub install_crd: bool,
    pub shutdown_timeout: Duration,
}

impl Settings {
    /// Validates every flag before anything touches the network: bad input fails fast and
    /// clearly, naming the flag.
    pub fn new(args: RunArgs, env: &SdkEnvironment) -> Result<Self, ConfigError> {
        let endpoint = match &args.ecs_endpoint {
            Some(url) => Endpoint::parse_override(url)?,
            None => Endpoint::Regional,
        };
        let vpc_endpoint = match (&args.vpc_endpoint, &endpoint) {
            (Some(url), _) => Some(Endpoint::parse_override_for("--vpc-endpoint", url)?),
            (None, Endpoint::Regional) => Some(Endpoint::Regional),
            // A proxy or private cloud for ECS says nothing about where its VPC API is.
            (None, _) => None,
        };
        if args.default_api == crate::cli::ApiFlag::Vpc && vpc_endpoint.is_none() && !args.simulator {
            return Err(ConfigError::VpcWithoutEndpoint);
        }
        let credentials = credentials(&args.credentials, args.simulator, env)?;
        if let Some(region) = &args.region {
            crate::ecs::check_region(region)?;
        }
        let project_id = match (&args.project_id, args.simulator) {
            (Some(p), _) => Some(p.clone()),
            (None, true) => Some(SIMULATOR_PROJECT_ID.to_string()),
            (None, false) => env.project_id.clone(),
        };
        if let Some(p) = &project_id {
            crate::ecs::check_path_id("--project-id", p)?;
        }
        if args.concurrency == 0 {
            return Err(ConfigError::Concurrency);
        }
        if args.write_horizon > MAX_WRITE_HORIZON {
            return Err(ConfigError::WriteHorizon(args.write_horizon));
        }
        if args.cloud_max_attempts == 0 {
            return Err(ConfigError::MaxAttempts);
        }
        let metrics_addr = match args.metrics_addr.trim() {
            "" | "off" | "none" => None,
            a => Some(a.parse().map_err(|source| ConfigError::MetricsAddr { value: a.to_string(), source })?),
        };
        let leader = leader(&args)?;
        let (default_credentials_scope, demo_scope) = default_credentials_scope(&args)?;
        Ok(Self {
            default_credentials_scope,
            demo_scope,
            defaults: OperatorDefaults {
                credentials,
                project_id,
                region: args.region.clone(),
                // With a fixed endpoint (or the simulator) the region only goes into signatures.
                region_required: endpoint == Endpoint::Regional && !args.simulator,
                api: args.default_api.into(),
            },
            cloud: CloudSettings {
                endpoint,
                vpc_endpoint,
                qps: args.cloud_qps,
                burst: args.cloud_burst,
                concurrency: args.cloud_concurrency,
                retry: RetryPolicy { max_attempts: args.cloud_max_attempts, ..RetryPolicy::default() },
            },
            watch: WatchConfig {
                namespaces: args.namespaces,
                concurrency: args.concurrency,
                protect_credentials: args.protect_credentials,
            },
            resync_period: args.resync_period,
            write_horizon: args.write_horizon,
            metrics_addr,
            leader,
            simulator: args.simulator.then(|| SimulatorSettings {
                listen: args.simulator_listen,
                latency: Duration::from_millis(args.simulator_latency_ms),
            }),
            install_crd: args.install_crd,
            shutdown_timeout: args.shutdown_timeout,
        })
    }
}

fn leader(args: &RunArgs) -> Result<Option<LeaderSettings>, ConfigError> {
    if !args.leader_elect {
        return Ok(None);
    }
    let namespace =
        args.leader_election_namespace.clone().filter(|n| !n.is_empty()).ok_or(ConfigError::LeaderNamespace)?;
    Ok(Some(LeaderSettings {
        namespace,
        lease_name: args.leader_election_id.clone(),
        lease_seconds: args.leader_lease_seconds.max(2),
    }))
}

/// Who may use the default credentials: names (`*`: everyone) and a label selector; neither
/// means nobody, except in the demo against the simulator.
fn default_credentials_scope(args: &RunArgs) -> Result<(DefaultCredentialsScope, bool), ConfigError> {
    let names = &args.default_credentials_namespaces;
    if names.iter().any(|n| n.trim() == "*") {
        return Ok((DefaultCredentialsScope::Everywhere, false));
    }
    if names.is_empty() && args.default_credentials_namespace_selector.is_none() {
        return Ok(if args.simulator {
            (DefaultCredentialsScope::Everywhere, true)
        } else {
            (DefaultCredentialsScope::nowhere(), false)
        });
    }
    let mut namespaces = std::collections::BTreeSet::new();
    for name in names.iter().map(|n| n.trim()) {
        if !is_dns_label(name) {
            return Err(ConfigError::NamespaceName(name.to_string()));
        }
        namespaces.insert(name.to_string());
    }
    let selector = args.default_credentials_namespace_selector.as_deref().map(parse_selector).transpose()?;
    Ok((DefaultCredentialsScope::Only { namespaces, selector }, false))
}

/// A namespace name (RFC 1123 label).
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 letters,
/// digits, `-`, `_` and `.`, beginning and ending with a letter or digit.
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_dns_label));
    name_ok && prefix_ok
}

/// What `vip-operator import` starts from, validated like [`Settings`] (pure).
#[derive(Debug)]
pub struct ImportSettings {
    pub credentials: DefaultCredentials,
    /// The flag, else `HUAWEICLOUD_SDK_PROJECT_ID`; `None`: a credentials Secret's `projectId`.
    pub project_id: Option<String>,
    /// The flag; `None`: a credentials Secret's `region`.
    pub region: Option<String>,
    pub vpc_endpoint: Endpoint,
    pub network: Option<String>,
    pub namespace: String,
    pub name_prefix: String,
    pub output: OutputFormat,
    pub group_by: Option<String>,
    pub management_policy: crate::api::v1alpha1::ManagementPolicy,
    pub qps: f64,
}

impl ImportSettings {
    pub fn new(args: &ImportArgs, env: &SdkEnvironment) -> Result<Self, ConfigError> {
        let vpc_endpoint = match &args.vpc_endpoint {
            Some(url) => Endpoint::parse_override_for("--vpc-endpoint", url)?,
            None => Endpoint::Regional,
        };
        let credentials = credentials(&args.credentials, false, env)?;
        let project_id = args.project_id.clone().or_else(|| env.project_id.clone());
        if let Some(p) = &project_id {
            crate::ecs::check_path_id("--project-id", p)?;
        }
        if let Some(region) = &args.region {
            crate::ecs::check_region(region)?;
        }
        if let Some(network) = &args.network {
            crate::ecs::check_path_id("--network", network)?;
        }
        if !is_dns_label(&args.namespace) {
            return Err(ConfigError::ImportNamespace(args.namespace.clone()));
        }
        let prefix = &args.name_prefix;
        let prefix_ok = prefix.len() <= MAX_NAME_PREFIX
            && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !prefix.starts_with('-');
        if !prefix_ok {
            return Err(ConfigError::NamePrefix(prefix.clone()));
        }
        if let Some(key) = &args.group_by_selector
            && !is_label_key(key)
        {
            return Err(ConfigError::LabelKey(key.clone()));
        }
        Ok(Self {
            credentials,
            project_id,
            region: args.region.clone(),
            vpc_endpoint,
            network: args.network.clone(),
            namespace: args.namespace.clone(),
            name_prefix: prefix.clone(),
            output: args.output,
            group_by: args.group_by_selector.clone(),
            management_policy: args.management_policy.into(),
            qps: args.cloud_qps,
        })
    }
}

fn parse_secret_ref(value: &str) -> Result<(String, String), ConfigError> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok((ns.into(), name.into())),
        _ => Err(ConfigError::SecretRef(value.to_string())),
    }
}

/// Operator default credentials: `--credentials-secret`, else the simulator's keys with
/// `--simulator`, else the `HUAWEICLOUD_SDK_*` environment, else the metadata service when
/// asked for, else none (bindings must then name their own Secret).
fn credentials(
    args: &CredentialArgs,
    simulator: bool,
    env: &SdkEnvironment,
) -> Result<DefaultCredentials, ConfigError> {
    use crate::ecs::Credentials;
    if let Some(s) = &args.credentials_secret {
        let (namespace, name) = parse_secret_ref(s)?;
        return Ok(DefaultCredentials::Secret { namespace, name });
    }
    if simulator {
        return Credentials::new(SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY, None)
            .map(DefaultCredentials::Static)
            .map_err(ConfigError::SimulatorCredentials);
    }
    match (&env.access_key, &env.secret_key) {
        (Some(ak), Some(sk)) => {
            let token = env.security_token.as_deref().map(str::trim);
            return Credentials::new(ak.trim(), sk.trim(), token)
                .map(DefaultCredentials::Static)
                .map_err(ConfigError::EnvCredentials);
        }
        (Some(_), None) | (None, Some(_)) => return Err(ConfigError::HalfEnvCredentials),
        (None, None) => {}
    }
    if args.metadata_credentials {
        let url = args
            .metadata_url
            .parse()
            .map_err(|source| ConfigError::MetadataUrl { value: args.metadata_url.clone(), source })?;
        return Ok(DefaultCredentials::Metadata(Arc::new(MetadataCredentials::new(
            url,
            Duration::from_secs(40 * 60),
            Arc::new(SystemClock),
        ))));
    }
    Ok(DefaultCredentials::None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(flags: &[&str]) -> RunArgs {
        let cli = crate::cli::Cli::try_parse_from(["vip-operator", "run"].iter().chain(flags)).expect("flags parse");
        match cli.command {
            crate::cli::Command::Run(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    fn settings(flags: &[&str], env: &SdkEnvironment) -> Result<Settings, ConfigError> {
        Settings::new(args(flags), env)
    }

    fn error(flags: &[&str]) -> String {
        match settings(flags, &SdkEnvironment::default()) {
            Ok(_) => panic!("{flags:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_bad_flag_is_named() {
        assert_eq!(error(&["--concurrency", "0"]), "--concurrency must be at least 1");
        assert_eq!(error(&["--cloud-max-attempts", "0"]), "--cloud-max-attempts must be at least 1");
        assert!(error(&["--metrics-addr", "nowhere"]).starts_with("--metrics-addr \"nowhere\""));
        assert!(error(&["--region", "CN North"]).starts_with("--region: "));
        assert!(error(&["--project-id", "../x"]).contains("--project-id"));
        assert!(error(&["--ecs-endpoint", "ftp://x"]).contains("--ecs-endpoint"));
        assert_eq!(
            error(&["--credentials-secret", "no-slash"]),
            "--credentials-secret \"no-slash\" must be NAMESPACE/NAME"
        );
        assert_eq!(error(&["--credentials-secret", "a/b/c"]), "--credentials-secret \"a/b/c\" must be NAMESPACE/NAME");
        assert_eq!(error(&["--leader-elect"]), "--leader-elect needs --leader-election-namespace (or POD_NAMESPACE)");
        assert!(error(&["--metadata-credentials", "--metadata-url", "not a url"]).starts_with("--metadata-url"));
        assert_eq!(
            error(&["--default-credentials-namespaces", "ok,Not_A_Namespace"]),
            "--default-credentials-namespaces: \"Not_A_Namespace\" is not a namespace name"
        );
        assert!(
            error(&["--default-credentials-namespace-selector", "a in b"])
                .starts_with("--default-credentials-namespace-selector: ")
        );
    }

    #[test]
    fn default_credentials_are_for_nobody_unless_granted_except_in_the_demo() {
        let scope = |flags: &[&str]| {
            let s = settings(flags, &SdkEnvironment::default()).expect("valid");
            (s.default_credentials_scope, s.demo_scope)
        };
        assert_eq!(scope(&[]), (DefaultCredentialsScope::nowhere(), false));
        assert_eq!(scope(&["--simulator"]), (DefaultCredentialsScope::Everywhere, true));
        assert_eq!(scope(&["--default-credentials-namespaces", "*"]), (DefaultCredentialsScope::Everywhere, false));
        let (granted, demo) = scope(&[
            "--simulator",
            "--default-credentials-namespaces",
            "ops,team-a",
            "--default-credentials-namespace-selector",
            "vipoperator.dev/default-credentials=allowed",
        ]);
        assert!(!demo, "an explicit grant is not the demo");
        match granted {
            DefaultCredentialsScope::Only { namespaces, selector } => {
                assert_eq!(namespaces.into_iter().collect::<Vec<_>>(), vec!["ops", "team-a"]);
                assert_eq!(
                    selector.map(|s| s.to_string()).as_deref(),
                    Some("vipoperator.dev/default-credentials=allowed")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    fn import(flags: &[&str], env: &SdkEnvironment) -> Result<ImportSettings, ConfigError> {
        let cli = crate::cli::Cli::try_parse_from(["vip-operator", "import"].iter().chain(flags)).expect("flags parse");
        match cli.command {
            crate::cli::Command::Import(args) => ImportSettings::new(&args, env),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn import_takes_credentials_and_project_as_run_does_and_checks_its_own_flags() {
        let env = SdkEnvironment {
            access_key: Some("ENVAK".into()),
            secret_key: Some("envsk".into()),
            project_id: Some("envproject".into()),
            ..Default::default()
        };
        let s = import(&["--region", "cn-north-4", "--group-by-selector", "node-role.example.com/lb"], &env)
            .expect("valid");
        assert!(matches!(&s.credentials, DefaultCredentials::Static(c) if c.access_key() == "ENVAK"));
        assert_eq!(s.project_id.as_deref(), Some("envproject"));
        assert_eq!((s.namespace.as_str(), s.name_prefix.as_str()), ("default", ""));
        assert_eq!(s.output, OutputFormat::Yaml);
        assert_eq!(s.vpc_endpoint, Endpoint::Regional);
        let s =
            import(&["--credentials-secret", "ops/creds", "-o", "json"], &SdkEnvironment::default()).expect("valid");
        assert!(matches!(&s.credentials, DefaultCredentials::Secret { name, .. } if name == "creds"));
        assert_eq!((s.project_id, s.region, s.output), (None, None, OutputFormat::Json));
        let error = |flags: &[&str]| import(flags, &SdkEnvironment::default()).err().map(|e| e.to_string());
        assert_eq!(
            error(&["--namespace", "Not_A_Namespace"]).as_deref(),
            Some("--namespace \"Not_A_Namespace\" is not a namespace name")
        );
        assert!(error(&["--name-prefix", "UPPER-"]).is_some_and(|e| e.starts_with("--name-prefix")));
        assert!(error(&["--name-prefix", &"a".repeat(MAX_NAME_PREFIX + 1)]).is_some());
        assert!(error(&["--name-prefix", &"a".repeat(MAX_NAME_PREFIX)]).is_none());
        assert!(error(&["--network", "a/b"]).is_some_and(|e| e.starts_with("--network")));
        assert!(error(&["--region", "CN North"]).is_some_and(|e| e.starts_with("--region")));
        assert!(error(&["--vpc-endpoint", "ftp://x"]).is_some_and(|e| e.starts_with("--vpc-endpoint")));
        for bad in ["", "a b", "-a", "a/", "/a", "a/b/c", "Bad_Prefix/x"] {
            assert!(
                error(&[format!("--group-by-selector={bad}").as_str()])
                    .is_some_and(|e| e.starts_with("--group-by-selector")),
                "{bad:?}"
            );
        }
        for good in ["role", "kubernetes.io/hostname", "a.b-c/D_e.f"] {
            assert!(error(&["--group-by-selector", good]).is_none(), "{good:?}");
        }
    }

    #[test]
    fn half_a_key_pair_in_the_environment_is_refused() {
        let env = SdkEnvironment { access_key: Some("AK".into()), ..Default::default() };
        assert_eq!(
            settings(&[], &env).err().map(|e| e.to_string()).as_deref(),
            Some("set both HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK, or neither")
        );
    }

    #[test]
    fn credentials_come_from_the_secret_flag_then_the_simulator_then_the_environment() {
        let env = SdkEnvironment {
            access_key: Some(" ENVAK ".into()),
            secret_key: Some("envsk".into()),
            project_id: Some("envproject".into()),
            ..Default::default()
        };
        let s = settings(&["--credentials-secret", "ops/creds"], &env).expect("valid");
        assert!(
            matches!(&s.defaults.credentials, DefaultCredentials::Secret { namespace, name } if namespace == "ops" && name == "creds")
        );
        assert_eq!(s.defaults.project_id.as_deref(), Some("envproject"));
        let s = settings(&["--simulator"], &env).expect("valid");
        assert!(
            matches!(&s.defaults.credentials, DefaultCredentials::Static(c) if c.access_key() == SIMULATOR_ACCESS_KEY)
        );
        assert_eq!(s.defaults.project_id.as_deref(), Some(SIMULATOR_PROJECT_ID));
        assert!(s.simulator.is_some());
        let s = settings(&[], &env).expect("valid");
        assert!(matches!(&s.defaults.credentials, DefaultCredentials::Static(c) if c.access_key() == "ENVAK"));
        let s = settings(&[], &SdkEnvironment::default()).expect("valid");
        assert!(matches!(s.defaults.credentials, DefaultCredentials::None));
        assert!(s.defaults.region_required, "the public endpoint needs a region");
    }

    #[test]
    fn flags_reach_their_settings() {
        let s = settings(
            &[
                "--leader-elect",
                "--leader-election-namespace",
                "ops",
                "--leader-lease-seconds",
                "1",
                "--metrics-addr",
                "off",
                "--namespace",
                "a,b",
                "--cloud-max-attempts",
                "2",
                "--ecs-endpoint",
                "http://127.0.0.1:1",
            ],
            &SdkEnvironment::default(),
        )
        .expect("valid");
        assert_eq!(
            s.leader,
            Some(LeaderSettings { namespace: "ops".into(), lease_name: "vip-operator".into(), lease_seconds: 2 })
        );
        assert_eq!(s.metrics_addr, None);
        assert_eq!(s.watch.namespaces, vec!["a", "b"]);
        assert_eq!(s.cloud.retry.max_attempts, 2);
        assert!(!s.defaults.region_required, "a fixed endpoint serves every region");
        assert_eq!(s.cloud.vpc_endpoint, None, "a fixed ECS endpoint says nothing about VPC");
    }

    #[test]
    fn vpc_reads_follow_the_endpoints() {
        let env = SdkEnvironment::default();
        let public = settings(&[], &env).expect("valid");
        assert_eq!(public.cloud.vpc_endpoint, Some(Endpoint::Regional));
        let both =
            settings(&["--ecs-endpoint", "http://127.0.0.1:1", "--vpc-endpoint", "http://127.0.0.1:2/vpc"], &env)
                .expect("valid");
        assert_eq!(both.cloud.vpc_endpoint, Some(Endpoint::parse_override("http://127.0.0.1:2/vpc").unwrap()));
        let only_vpc = settings(&["--vpc-endpoint", "https://vpc.private.example"], &env).expect("valid");
        assert!(only_vpc.defaults.region_required, "ECS still needs a region");
        assert_eq!(
            error(&["--vpc-endpoint", "ftp://x"]),
            r#"--vpc-endpoint "ftp://x" must be an http:// or https:// URL"#
        );
        assert_eq!(
            error(&["--ecs-endpoint", "http://127.0.0.1:1", "--default-api", "vpc"]),
            "--default-api vpc needs a VPC endpoint: with --ecs-endpoint set, set --vpc-endpoint too"
        );
        let vpc = settings(&["--default-api", "vpc"], &env).expect("valid");
        assert_eq!(vpc.defaults.api, crate::api::v1alpha1::BindApi::Vpc);
    }
}
