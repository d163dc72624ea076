//! `vip-operator import`: the VIPs already bound in one project and region (by the console,
//! Terraform, scripts), printed as VipBindings (or VipGroups) to review and apply.
//!
//! A VIP is bound to a NIC when the VIP port's `allowed_address_pairs` holds the NIC's own
//! address (see `README.md`, "Two APIs"). So: one listing of the VIP ports, then the NICs'
//! ports by address, 50 addresses a listing (never one read per address), then a pure mapping
//! ([`plan`]) from what was read to objects and to what was skipped, and why.
//!
//! Read-only by construction: the cloud is reached only through [`ReadOnlyPorts`], which
//! exposes listings and nothing else; no ECS client is ever used.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, ListParams};
use serde::Serialize;
use sha2::Digest;

use crate::api::group::{NodeSelector, VipGroup, VipGroupSpec};
use crate::api::v1alpha1::{BindApi, DeletionPolicy, ManagementPolicy, VipBinding, VipBindingSpec};
use crate::cli::{ImportArgs, OutputFormat};
use crate::controller::{DefaultCredentials, NodeView, ServerId};
use crate::ecs::client::ClientConfigError;
use crate::ecs::vpc::{MAX_FILTER_IPS, Port, PortFilter, VIP_PORT_OWNER, VpcApi};
use crate::ecs::{CloudTarget, Credentials, EcsClient, EcsClientConfig, EcsError};
use crate::settings::{ConfigError, ImportSettings, SdkEnvironment};

/// Pages of one listing read at most (2,000 ports each, as the drift check's bound): a listing
/// that never ends is an error, not a loop.
pub const MAX_LIST_PAGES: usize = 100;
/// Pages of Nodes read at most (500 each).
const MAX_NODE_PAGES: usize = 200;
/// The most members a VipGroup may have (its CRD's bound on maxNodes).
const MAX_GROUP_NODES: usize = 1000;
/// The longest cloud string quoted in a report line.
const MAX_SHOWN: usize = 64;

/// Why the import failed. Skipped entries are no failure.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "no credentials: set HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK, or --credentials-secret NAMESPACE/NAME, or --metadata-credentials"
    )]
    NoCredentials,
    #[error("no project: set --project-id (or HUAWEICLOUD_SDK_PROJECT_ID, or projectId in the credentials Secret)")]
    NoProject,
    #[error("no region: set --region (or region in the credentials Secret)")]
    NoRegion,
    #[error("the credentials Secret's {what}: {why}")]
    SecretValue { what: &'static str, why: String },
    #[error(transparent)]
    CloudClient(#[from] ClientConfigError),
    #[error("no Kubernetes cluster to read {what} from: {why}")]
    NoCluster { what: &'static str, why: String },
    #[error("cannot read the credentials Secret {name}: {why}")]
    Secret { name: String, why: String },
    #[error("the metadata service gave no credentials: {0}")]
    Metadata(String),
    #[error("the cloud refused to list ports: {0}")]
    Cloud(EcsError),
    #[error("cannot list Nodes: {0}")]
    Nodes(String),
    #[error("cannot render the output: {0}")]
    Render(String),
}

impl ImportError {
    /// 2: fix the flags or the environment; 3: no cluster; 1: the cloud or the cluster refused.
    pub fn exit_code(&self) -> u8 {
        match self {
            ImportError::Config(_)
            | ImportError::NoCredentials
            | ImportError::NoProject
            | ImportError::NoRegion
            | ImportError::SecretValue { .. }
            | ImportError::CloudClient(_) => 2,
            ImportError::NoCluster { .. } => 3,
            ImportError::Secret { .. }
            | ImportError::Metadata(_)
            | ImportError::Cloud(_)
            | ImportError::Nodes(_)
            | ImportError::Render(_) => 1,
        }
    }
}

// ---- the cloud, read-only --------------------------------------------------------------------

/// The only cloud access `import` has: port listings. The client it wraps is private and no
/// method writes, so nothing in this module (or any flag of it) can reach `update_pairs` or an
/// ECS call.
pub struct ReadOnlyPorts<'a> {
    api: &'a dyn VpcApi,
    target: CloudTarget,
}

impl<'a> ReadOnlyPorts<'a> {
    pub fn new(api: &'a dyn VpcApi, target: CloudTarget) -> Self {
        Self { api, target }
    }

    /// Every page of a listing, bounded by [`MAX_LIST_PAGES`].
    async fn list_all(&self, mut filter: PortFilter) -> Result<Vec<Port>, EcsError> {
        let mut all = Vec::new();
        for _ in 0..MAX_LIST_PAGES {
            let page = self.api.list_ports(&self.target, &filter).await?;
            let full = page.len() >= filter.page_size() as usize;
            let last = page.last().map(|p| p.id.clone());
            all.extend(page);
            match last {
                Some(last) if full && filter.marker.as_deref() != Some(last.as_str()) => filter.marker = Some(last),
                Some(_) if full => {
                    return Err(EcsError::InvalidRequest("the port listing repeated its last page".into()));
                }
                _ => return Ok(all),
            }
        }
        Err(EcsError::InvalidRequest(format!("the port listing ran past {MAX_LIST_PAGES} pages")))
    }

    /// The project's VIP ports (in `network`, when given).
    pub async fn vip_ports(&self, network: Option<&str>) -> Result<Vec<Port>, EcsError> {
        self.list_all(PortFilter {
            device_owner: Some(VIP_PORT_OWNER.into()),
            network_id: network.map(str::to_string),
            ..PortFilter::default()
        })
        .await
    }

    /// The ports holding `addresses` in each network, [`MAX_FILTER_IPS`] addresses a listing:
    /// each port with the network it was listed for.
    pub async fn ports_by_address(
        &self,
        lookups: &BTreeMap<String, BTreeSet<Ipv4Addr>>,
    ) -> Result<Vec<(String, Port)>, EcsError> {
        let mut found = Vec::new();
        for (network, addresses) in lookups {
            let addresses: Vec<String> = addresses.iter().map(ToString::to_string).collect();
            for chunk in addresses.chunks(MAX_FILTER_IPS) {
                let filter = PortFilter {
                    network_id: Some(network.clone()),
                    ip_addresses: chunk.to_vec(),
                    ..PortFilter::default()
                };
                found.extend(self.list_all(filter).await?.into_iter().map(|p| (network.clone(), p)));
            }
        }
        Ok(found)
    }
}

// ---- the pure mapping ------------------------------------------------------------------------

/// What every printed object carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub namespace: String,
    pub name_prefix: String,
    pub project_id: String,
    pub region: String,
    /// Only VIP ports in this network.
    pub network: Option<String>,
    /// `--group-by-selector`.
    pub group_by: Option<String>,
    /// `--management-policy`: Observe by default, so applying the output writes nothing.
    pub management_policy: ManagementPolicy,
}

/// A node as grouping needs it: its name, the value of the `--group-by-selector` label, and
/// its server (or NIC) as the group controller reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub label: Option<String>,
    pub id: ServerId,
}

impl NodeInfo {
    /// From a Node read in full (its providerID with it).
    pub fn of(node: &Node, label: &str) -> Option<Self> {
        let view = NodeView::from_meta(&node.metadata)?;
        let provider_id = node.spec.as_ref().and_then(|s| s.provider_id.clone()).unwrap_or_default();
        Some(Self { label: view.labels.get(label).cloned(), id: view.server_id(Some(&provider_id)), name: view.name })
    }
}

/// One object to print, with the comment above it.
#[derive(Debug, Clone, PartialEq)]
pub enum Imported {
    Binding { comment: String, binding: Box<VipBinding> },
    Group { comment: String, group: Box<VipGroup> },
}

/// What an import prints: objects (sorted by VIP, then NIC address), and one line per entry
/// skipped and per VIP not grouped (sorted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub objects: Vec<Imported>,
    pub skipped: Vec<String>,
}

/// A VIP port whose ID, network and address can go into an object.
#[derive(Debug, Clone)]
struct Vip<'a> {
    port: &'a Port,
    address: Ipv4Addr,
}

/// One (VIP, NIC) pair found bound.
#[derive(Debug, Clone)]
struct Pair<'a> {
    nic: &'a Port,
    address: Ipv4Addr,
}

/// What the CRDs take as an ID (nicId, subnetId, projectId): `^[A-Za-z0-9][A-Za-z0-9._-]*$`,
/// at most 64.
fn crd_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A cloud string, quoted and cut, safe on one line.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(MAX_SHOWN).collect();
    if cut.len() < s.len() { format!("{cut:?}...") } else { format!("{cut:?}") }
}

/// The VIP ports that can be imported, sorted by address (then network, then port ID); the
/// others are reported.
fn vips<'a>(ports: &'a [Port], opts: &Options, skipped: &mut Vec<String>) -> Vec<Vip<'a>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for port in ports {
        // The filters are the server's; the answer is checked, not trusted.
        if port.device_owner != VIP_PORT_OWNER
            || opts.network.as_deref().is_some_and(|n| n != port.network_id)
            || !seen.insert(port.id.as_str())
        {
            continue;
        }
        if !crd_id(&port.id) {
            skipped.push(format!("VIP port {}: not a port ID", shown(&port.id)));
            continue;
        }
        if !crd_id(&port.network_id) {
            skipped.push(format!("VIP port {}: network {} is not a network ID", port.id, shown(&port.network_id)));
            continue;
        }
        let address = port.fixed_ips.iter().find_map(|f| f.ip_address.parse::<Ipv4Addr>().ok());
        match address {
            Some(address) => out.push(Vip { port, address }),
            None => skipped.push(format!(
                "VIP port {}: no IPv4 address (api VPC binds IPv4 VIPs only): fixed_ips {}",
                port.id,
                shown(&port.fixed_ips.iter().map(|f| f.ip_address.as_str()).collect::<Vec<_>>().join(","))
            )),
        }
    }
    out.sort_by(|a, b| (a.address, &a.port.network_id, &a.port.id).cmp(&(b.address, &b.port.network_id, &b.port.id)));
    out
}

/// The NIC addresses a VIP's pairs hold, sorted and once each; every other entry is reported.
fn nic_addresses(vip: &Vip<'_>, skipped: &mut Vec<String>) -> BTreeSet<Ipv4Addr> {
    let mut out = BTreeSet::new();
    for pair in &vip.port.allowed_address_pairs {
        let ip = pair.ip_address.as_str();
        let why = if ip.is_empty() {
            "a MAC-only pair (no address): no NIC to name"
        } else if ip == "1.1.1.1/0" {
            "foreign: 1.1.1.1/0 turns a NIC's source check off; on a VIP port it binds nothing"
        } else if ip.contains('/') {
            "a CIDR, not one NIC's address"
        } else if let Ok(address) = ip.parse::<Ipv4Addr>() {
            out.insert(address);
            continue;
        } else if ip.parse::<std::net::Ipv6Addr>().is_ok() {
            "an IPv6 address (api VPC binds IPv4 only)"
        } else {
            "not an IPv4 address"
        };
        skipped.push(format!("VIP {} (port {}): pair {}: {why}", vip.address, vip.port.id, shown(ip)));
    }
    out
}

/// What to look up: each network's NIC addresses, over every importable VIP.
pub fn lookups(vip_ports: &[Port], opts: &Options) -> BTreeMap<String, BTreeSet<Ipv4Addr>> {
    let mut ignored = Vec::new();
    let mut out: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for vip in vips(vip_ports, opts, &mut ignored) {
        out.entry(vip.port.network_id.clone()).or_default().extend(nic_addresses(&vip, &mut ignored));
    }
    out
}

/// Each (network, address) and the distinct ports the listings showed holding it there.
fn index(nic_ports: &[(String, Port)]) -> BTreeMap<(&str, Ipv4Addr), Vec<&Port>> {
    let mut out: BTreeMap<(&str, Ipv4Addr), Vec<&Port>> = BTreeMap::new();
    for (network, port) in nic_ports {
        if !port.network_id.is_empty() && port.network_id != *network {
            continue;
        }
        for address in port.fixed_ips.iter().filter_map(|f| f.ip_address.parse::<Ipv4Addr>().ok()) {
            let held = out.entry((network.as_str(), address)).or_default();
            if !held.iter().any(|p| p.id == port.id) {
                held.push(port);
            }
        }
    }
    out
}

/// The VIP's bound NICs: the one port holding each address; the others are reported.
fn pairs<'a>(
    vip: &Vip<'_>,
    index: &BTreeMap<(&str, Ipv4Addr), Vec<&'a Port>>,
    skipped: &mut Vec<String>,
) -> Vec<Pair<'a>> {
    let mut out = Vec::new();
    for address in nic_addresses(vip, &mut Vec::new()) {
        let at = format!("VIP {} (port {}): pair {address}", vip.address, vip.port.id);
        let held = index.get(&(vip.port.network_id.as_str(), address)).map(Vec::as_slice).unwrap_or_default();
        let why = match held {
            [] => format!("no port in network {} holds this address", vip.port.network_id),
            [nic] if nic.device_owner == VIP_PORT_OWNER => format!("held by VIP port {}, not a NIC", shown(&nic.id)),
            [nic] if !crd_id(&nic.id) => format!("held by port {}: not a port ID", shown(&nic.id)),
            [nic] if !nic.device_id.is_empty() && !crd_id(&nic.device_id) => {
                format!("held by port {} of server {}: not a server ID", nic.id, shown(&nic.device_id))
            }
            [nic] => {
                out.push(Pair { nic, address });
                continue;
            }
            several => format!(
                "held by {} ports ({}): which one is the NIC is not clear",
                several.len(),
                several.iter().map(|p| shown(&p.id)).collect::<Vec<_>>().join(", ")
            ),
        };
        skipped.push(format!("{at}: {why}"));
    }
    out
}

/// A short, stable hash of `parts`: it keeps names unique where the addresses alone are not
/// (the same VIP address in two networks).
fn short_hash(parts: &[&str]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().take(3).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

fn binding(vip: &Vip<'_>, pair: &Pair<'_>, opts: &Options) -> Imported {
    let network = vip.port.network_id.as_str();
    let hash = short_hash(&[network, &vip.address.to_string(), &pair.nic.id]);
    let name = format!("{}vip-{}-{}-{hash}", opts.name_prefix, dashed(vip.address), dashed(pair.address));
    let mut binding = VipBinding::new(
        &name,
        VipBindingSpec {
            nic_id: pair.nic.id.clone(),
            ip_address: vip.address.to_string(),
            subnet_id: network.to_string(),
            reverse_binding: false,
            project_id: Some(opts.project_id.clone()),
            region: Some(opts.region.clone()),
            credentials_secret_ref: None,
            api: Some(BindApi::Vpc),
            deletion_policy: DeletionPolicy::Orphan,
            management_policy: opts.management_policy,
        },
    );
    binding.metadata.namespace = Some(opts.namespace.clone());
    let server = match pair.nic.device_id.as_str() {
        "" => "no server".to_string(),
        id => format!("server {id}"),
    };
    let comment = format!("VIP {} on {server}, NIC {} ({})", vip.address, pair.nic.id, pair.address);
    Imported::Binding { comment, binding: Box::new(binding) }
}

/// Nodes by the NIC they name and by their server.
struct NodeIndex<'a> {
    by_nic: BTreeMap<&'a str, Vec<&'a NodeInfo>>,
    /// Lowercase: providerIDs are read lowercase, annotations and device IDs may not be.
    by_server: BTreeMap<String, Vec<&'a NodeInfo>>,
}

impl<'a> NodeIndex<'a> {
    fn new(nodes: &'a [NodeInfo]) -> Self {
        let (mut by_nic, mut by_server): (BTreeMap<_, Vec<_>>, BTreeMap<_, Vec<_>>) = Default::default();
        for node in nodes {
            match &node.id {
                ServerId::Nic(nic) => by_nic.entry(nic.as_str()).or_default().push(node),
                ServerId::Server(server) => by_server.entry(server.to_ascii_lowercase()).or_default().push(node),
                ServerId::Unread | ServerId::Missing(_) => {}
            }
        }
        Self { by_nic, by_server }
    }

    /// The one node a NIC belongs to (as the group controller would find it), or why not.
    fn node_of(&self, nic: &Port) -> Result<&'a NodeInfo, String> {
        let nodes = match self.by_nic.get(nic.id.as_str()) {
            Some(nodes) => nodes.as_slice(),
            None => self.by_server.get(&nic.device_id.to_ascii_lowercase()).map(Vec::as_slice).unwrap_or_default(),
        };
        match nodes {
            [node] => Ok(node),
            [] => Err(format!("NIC {} (server {}) is no node's", nic.id, shown(&nic.device_id))),
            several => Err(format!("NIC {} belongs to {} nodes", nic.id, several.len())),
        }
    }
}

/// One VipGroup for the VIP, when its NICs are exactly the nodes with one value of `label`
/// (at least 2): a group then binds what is bound now and nothing more. Otherwise why not.
fn group(
    vip: &Vip<'_>,
    pairs: &[Pair<'_>],
    label: &str,
    nodes: &[NodeInfo],
    index: &NodeIndex<'_>,
    opts: &Options,
) -> Result<Imported, String> {
    if pairs.len() < 2 {
        return Err(format!("{} NIC: a group needs at least 2", pairs.len()));
    }
    let mut members = BTreeSet::new();
    let mut value = None;
    for pair in pairs {
        let node = index.node_of(pair.nic)?;
        let Some(v) = &node.label else {
            return Err(format!("node {} has no label {label}", node.name));
        };
        match &value {
            None => value = Some(v.clone()),
            Some(first) if first != v => return Err(format!("its nodes have several values of {label}")),
            Some(_) => {}
        }
        if !members.insert(node.name.as_str()) {
            return Err(format!("node {} holds two of its NICs (a group binds one NIC per node)", node.name));
        }
    }
    let value = value.unwrap_or_default();
    let selected: BTreeSet<&str> =
        nodes.iter().filter(|n| n.label.as_deref() == Some(value.as_str())).map(|n| n.name.as_str()).collect();
    if selected != members {
        let more: Vec<&str> = selected.difference(&members).copied().collect();
        return Err(format!(
            "{label}={value} also selects node(s) {} that the VIP is not bound to: a group would bind it there",
            more.join(", ")
        ));
    }
    if members.len() > MAX_GROUP_NODES {
        return Err(format!("{} nodes: a group takes at most {MAX_GROUP_NODES}", members.len()));
    }
    let network = vip.port.network_id.as_str();
    let name =
        format!("{}vip-{}-{}", opts.name_prefix, dashed(vip.address), short_hash(&[network, &vip.address.to_string()]));
    let max_nodes = u32::try_from(members.len().max(crate::api::group::DEFAULT_MAX_NODES as usize)).unwrap_or(1000);
    let mut group = VipGroup::new(
        &name,
        VipGroupSpec {
            ip_address: vip.address.to_string(),
            subnet_id: network.to_string(),
            node_selector: NodeSelector {
                match_labels: BTreeMap::from([(label.to_string(), value.clone())]),
                match_expressions: vec![],
            },
            api: BindApi::Vpc,
            project_id: Some(opts.project_id.clone()),
            region: Some(opts.region.clone()),
            credentials_secret_ref: None,
            deletion_policy: DeletionPolicy::Orphan,
            max_nodes,
            management_policy: opts.management_policy,
        },
    );
    group.metadata.namespace = Some(opts.namespace.clone());
    let comment = format!(
        "VIP {} on the {} nodes with {label}={value}: {}",
        vip.address,
        members.len(),
        members.iter().copied().collect::<Vec<_>>().join(", ")
    );
    Ok(Imported::Group { comment, group: Box::new(group) })
}

/// What was read, to objects and skipped entries. `nic_ports` are the listings by address,
/// each port with the network it was listed for; `nodes` is given with `--group-by-selector`.
pub fn plan(vip_ports: &[Port], nic_ports: &[(String, Port)], nodes: Option<&[NodeInfo]>, opts: &Options) -> Plan {
    let mut skipped = Vec::new();
    let mut objects = Vec::new();
    let held = index(nic_ports);
    let node_index = nodes.map(NodeIndex::new);
    for vip in vips(vip_ports, opts, &mut skipped) {
        nic_addresses(&vip, &mut skipped);
        let pairs = pairs(&vip, &held, &mut skipped);
        if let (Some(label), Some(nodes), Some(node_index)) = (&opts.group_by, nodes, &node_index) {
            match group(&vip, &pairs, label, nodes, node_index, opts) {
                Ok(group) => {
                    objects.push(group);
                    continue;
                }
                Err(why) if !pairs.is_empty() => {
                    skipped.push(format!(
                        "VIP {} (port {}): not grouped, bindings instead: {why}",
                        vip.address, vip.port.id
                    ));
                }
                Err(_) => {}
            }
        }
        objects.extend(pairs.iter().map(|pair| binding(&vip, pair, opts)));
    }
    skipped.sort();
    skipped.dedup();
    Plan { objects, skipped }
}

// ---- output ----------------------------------------------------------------------------------

fn object_json(object: &Imported) -> Result<serde_json::Value, serde_json::Error> {
    match object {
        Imported::Binding { binding, .. } => serde_json::to_value(binding),
        Imported::Group { group, .. } => serde_json::to_value(group),
    }
}

/// The objects as `kubectl apply -f -` takes them: YAML documents with a comment above each,
/// or a `v1` `List`.
pub fn render(objects: &[Imported], format: OutputFormat) -> Result<String, ImportError> {
    let render = |e: &dyn std::fmt::Display| ImportError::Render(e.to_string());
    match format {
        OutputFormat::Json => {
            let items = objects.iter().map(object_json).collect::<Result<Vec<_>, _>>().map_err(|e| render(&e))?;
            #[derive(Serialize)]
            #[serde(rename_all = "camelCase")]
            struct List {
                api_version: &'static str,
                kind: &'static str,
                items: Vec<serde_json::Value>,
            }
            let list = List { api_version: "v1", kind: "List", items };
            serde_json::to_string_pretty(&list).map(|s| s + "\n").map_err(|e| render(&e))
        }
        OutputFormat::Yaml => {
            let mut out = String::new();
            for object in objects {
                let (comment, yaml) = match object {
                    Imported::Binding { comment, binding } => (comment, serde_saphyr::to_string(binding)),
                    Imported::Group { comment, group } => (comment, serde_saphyr::to_string(group)),
                };
                let yaml = yaml.map_err(|e| render(&e))?;
                // Every part of the comment was checked (IDs, addresses, node names): one line.
                let _ = write!(out, "---\n# {}\n{yaml}", comment.replace(['\n', '\r'], " "));
            }
            Ok(out)
        }
    }
}

// ---- the command -----------------------------------------------------------------------------

/// `vip-operator import`: read, map, print the objects on stdout and what was skipped on stderr.
pub async fn run(args: ImportArgs) -> Result<(), ImportError> {
    let settings = ImportSettings::new(&args, &SdkEnvironment::from_process())?;
    let mut kube = None;
    let (credentials, project_id, region) = resolve_target(&settings, &mut kube).await?;
    let client = EcsClient::new(EcsClientConfig {
        endpoint: settings.vpc_endpoint.clone(),
        vpc_endpoint: settings.vpc_endpoint.clone(),
        qps: settings.qps,
        ..EcsClientConfig::default()
    })?;
    let opts = Options {
        namespace: settings.namespace.clone(),
        name_prefix: settings.name_prefix.clone(),
        project_id: project_id.clone(),
        region: region.clone(),
        network: settings.network.clone(),
        group_by: settings.group_by.clone(),
        management_policy: settings.management_policy,
    };
    let ports = ReadOnlyPorts::new(&client, CloudTarget { region, project_id, credentials });
    let vip_ports = ports.vip_ports(settings.network.as_deref()).await.map_err(ImportError::Cloud)?;
    let nic_ports = ports.ports_by_address(&lookups(&vip_ports, &opts)).await.map_err(ImportError::Cloud)?;
    let nodes = match &settings.group_by {
        Some(label) => Some(read_nodes(cluster(&mut kube, "Nodes").await?, label).await?),
        None => None,
    };
    let plan = plan(&vip_ports, &nic_ports, nodes.as_deref(), &opts);
    let output = render(&plan.objects, settings.output)?;
    for line in &plan.skipped {
        eprintln!("skipped: {line}");
    }
    print!("{output}");
    Ok(())
}

async fn cluster(kube: &mut Option<kube::Client>, what: &'static str) -> Result<kube::Client, ImportError> {
    if let Some(client) = kube {
        return Ok(client.clone());
    }
    let client = kube::Client::try_default().await.map_err(|e| ImportError::NoCluster { what, why: e.to_string() })?;
    *kube = Some(client.clone());
    Ok(client)
}

/// Credentials, project and region, from the flags and environment, else the Secret.
async fn resolve_target(
    settings: &ImportSettings,
    kube: &mut Option<kube::Client>,
) -> Result<(Credentials, String, String), ImportError> {
    let (mut project, mut region) = (settings.project_id.clone(), settings.region.clone());
    let credentials = match &settings.credentials {
        DefaultCredentials::None => return Err(ImportError::NoCredentials),
        DefaultCredentials::Static(c) => c.clone(),
        DefaultCredentials::Metadata(m) => m.credentials().await.map_err(|e| ImportError::Metadata(e.to_string()))?,
        DefaultCredentials::Secret { namespace, name } => {
            let client = cluster(kube, "the credentials Secret").await?;
            let full = format!("{namespace}/{name}");
            let secret = Api::<Secret>::namespaced(client, namespace)
                .get_opt(name)
                .await
                .map_err(|e| ImportError::Secret { name: full.clone(), why: e.to_string() })?
                .ok_or_else(|| ImportError::Secret { name: full.clone(), why: "not found".into() })?;
            let parsed = crate::ecs::credentials::from_secret_data(&secret.data.unwrap_or_default())
                .map_err(|e| ImportError::Secret { name: full, why: e.to_string() })?;
            project = project.or(parsed.project_id);
            region = region.or(parsed.region);
            parsed.credentials
        }
    };
    let project = project.ok_or(ImportError::NoProject)?;
    let region = region.ok_or(ImportError::NoRegion)?;
    // A Secret's values are checked as the flags are.
    crate::ecs::check_path_id("projectId", &project)
        .map_err(|e| ImportError::SecretValue { what: "projectId", why: e.to_string() })?;
    crate::ecs::check_region(&region).map_err(|e| ImportError::SecretValue { what: "region", why: e.to_string() })?;
    Ok((credentials, project, region))
}

/// Every Node, in pages of 500 (bounded).
async fn read_nodes(client: kube::Client, label: &str) -> Result<Vec<NodeInfo>, ImportError> {
    let api = Api::<Node>::all(client);
    let mut params = ListParams::default().limit(500);
    let mut out = Vec::new();
    for _ in 0..MAX_NODE_PAGES {
        let list = api.list(&params).await.map_err(|e| ImportError::Nodes(e.to_string()))?;
        out.extend(list.items.iter().filter_map(|n| NodeInfo::of(n, label)));
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
    Err(ImportError::Nodes(format!("the listing ran past {MAX_NODE_PAGES} pages")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::vpc::{AddressPair, FixedIp};

    const NET: &str = "net-1";

    fn opts() -> Options {
        Options {
            namespace: "default".into(),
            name_prefix: String::new(),
            project_id: "proj".into(),
            region: "cn-north-4".into(),
            network: None,
            group_by: None,
            management_policy: ManagementPolicy::Observe,
        }
    }

    fn port(id: &str, owner: &str, device: &str, ip: &str) -> Port {
        Port {
            id: id.into(),
            device_owner: owner.into(),
            device_id: device.into(),
            network_id: NET.into(),
            fixed_ips: vec![FixedIp { subnet_id: "s".into(), ip_address: ip.into() }],
            allowed_address_pairs: vec![],
            status: String::new(),
            mac_address: String::new(),
        }
    }

    fn vip(id: &str, ip: &str, pairs: &[&str]) -> Port {
        let mut p = port(id, VIP_PORT_OWNER, "", ip);
        p.allowed_address_pairs =
            pairs.iter().map(|ip| AddressPair { ip_address: ip.to_string(), mac_address: None }).collect();
        p
    }

    fn nic(id: &str, server: &str, ip: &str) -> (String, Port) {
        (NET.to_string(), port(id, "compute:az1", server, ip))
    }

    fn bindings(plan: &Plan) -> Vec<(String, String, String)> {
        plan.objects
            .iter()
            .filter_map(|o| match o {
                Imported::Binding { binding, .. } => Some((
                    binding.metadata.name.clone().unwrap_or_default(),
                    binding.spec.ip_address.clone(),
                    binding.spec.nic_id.clone(),
                )),
                Imported::Group { .. } => None,
            })
            .collect()
    }

    #[test]
    fn bound_pairs_become_orphan_vpc_bindings_and_everything_else_is_reported() {
        let mut mac_only = vip("vip-b", "192.168.0.10", &["192.168.1.2"]);
        mac_only
            .allowed_address_pairs
            .push(AddressPair { ip_address: String::new(), mac_address: Some("fa:16:3e:00:00:01".into()) });
        let vips = vec![
            mac_only,
            vip("vip-a", "192.168.0.9", &["192.168.1.1", "1.1.1.1/0", "10.0.0.0/24", "192.168.1.1", "fd00::1", "x"]),
            vip("vip-c", "192.168.0.11", &["192.168.1.99", "192.168.0.9", "192.168.1.3"]),
        ];
        let nics = vec![
            nic("nic-1", "srv-1", "192.168.1.1"),
            nic("nic-2", "srv-2", "192.168.1.2"),
            nic("nic-3a", "srv-3", "192.168.1.3"),
            nic("nic-3b", "srv-4", "192.168.1.3"),
            // The VIP's own port, as a listing by its address shows it.
            (NET.to_string(), vip("vip-a", "192.168.0.9", &[])),
        ];
        let plan = plan(&vips, &nics, None, &opts());
        let b = bindings(&plan);
        // Sorted by VIP (as addresses: .9 before .10), names stable.
        assert_eq!(
            b.iter().map(|(_, ip, nic)| (ip.as_str(), nic.as_str())).collect::<Vec<_>>(),
            [("192.168.0.9", "nic-1"), ("192.168.0.10", "nic-2")]
        );
        assert!(b[0].0.starts_with("vip-192-168-0-9-192-168-1-1-"), "{}", b[0].0);
        let Imported::Binding { binding, comment } = &plan.objects[0] else { panic!() };
        assert_eq!(comment, "VIP 192.168.0.9 on server srv-1, NIC nic-1 (192.168.1.1)");
        let spec = &binding.spec;
        assert_eq!((spec.api, spec.deletion_policy), (Some(BindApi::Vpc), DeletionPolicy::Orphan));
        assert_eq!(
            (spec.subnet_id.as_str(), spec.project_id.as_deref(), spec.region.as_deref()),
            (NET, Some("proj"), Some("cn-north-4"))
        );
        assert_eq!(binding.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            plan.skipped,
            [
                r#"VIP 192.168.0.10 (port vip-b): pair "": a MAC-only pair (no address): no NIC to name"#,
                "VIP 192.168.0.11 (port vip-c): pair 192.168.0.9: held by VIP port \"vip-a\", not a NIC",
                "VIP 192.168.0.11 (port vip-c): pair 192.168.1.3: held by 2 ports (\"nic-3a\", \"nic-3b\"): which one is the NIC is not clear",
                "VIP 192.168.0.11 (port vip-c): pair 192.168.1.99: no port in network net-1 holds this address",
                r#"VIP 192.168.0.9 (port vip-a): pair "1.1.1.1/0": foreign: 1.1.1.1/0 turns a NIC's source check off; on a VIP port it binds nothing"#,
                r#"VIP 192.168.0.9 (port vip-a): pair "10.0.0.0/24": a CIDR, not one NIC's address"#,
                r#"VIP 192.168.0.9 (port vip-a): pair "fd00::1": an IPv6 address (api VPC binds IPv4 only)"#,
                r#"VIP 192.168.0.9 (port vip-a): pair "x": not an IPv4 address"#,
            ]
        );
        // The same input prints the same bytes, whatever order the cloud listed it in.
        let mut reversed = vips.clone();
        reversed.reverse();
        let again = super::plan(&reversed, &nics, None, &opts());
        assert_eq!(
            render(&again.objects, OutputFormat::Yaml).unwrap(),
            render(&plan.objects, OutputFormat::Yaml).unwrap()
        );
        assert_eq!(again.skipped, plan.skipped);
        // What is looked up: each network's NIC addresses, once each.
        let wanted = lookups(&vips, &opts());
        let wanted: Vec<String> = wanted[NET].iter().map(ToString::to_string).collect();
        assert_eq!(wanted, ["192.168.0.9", "192.168.1.1", "192.168.1.2", "192.168.1.3", "192.168.1.99"]);
    }

    #[test]
    fn hostile_strings_are_reported_and_never_emitted() {
        let mut bad_network = vip("vip-n", "192.168.0.2", &["192.168.1.2"]);
        bad_network.network_id = "net\n- evil".into();
        let vips = vec![
            vip("vip\nkind: Secret", "192.168.0.1", &["192.168.1.1"]),
            bad_network,
            vip("vip-v6", "fd00::5", &["192.168.1.1"]),
            vip("vip-ok", "192.168.0.3", &["192.168.1.3", "192.168.1.4", "192.168.1.5\n#"]),
        ];
        let nics = vec![
            nic("nic\n#x", "srv-3", "192.168.1.3"),
            nic("nic-4", "srv\"4\n", "192.168.1.4"),
            // Listed for the network but in another: not taken.
            ("net-1".into(), Port { network_id: "net-2".into(), ..port("nic-5", "compute", "srv", "192.168.1.5") }),
        ];
        let plan = plan(&vips, &nics, None, &opts());
        assert!(plan.objects.is_empty(), "{:#?}", plan.objects);
        assert_eq!(plan.skipped.len(), 6, "{:#?}", plan.skipped);
        assert!(plan.skipped.iter().all(|l| !l.contains('\n')), "{:#?}", plan.skipped);
        assert!(plan.skipped.iter().any(|l| l.contains("no IPv4 address")));
        let long = vip(&"v".repeat(65), "192.168.0.4", &[]);
        let plan = super::plan(&[long], &[], None, &opts());
        assert!(plan.skipped[0].ends_with("...: not a port ID"), "{:?}", plan.skipped);
    }

    fn node(name: &str, label: Option<&str>, id: ServerId) -> NodeInfo {
        NodeInfo { name: name.into(), label: label.map(str::to_string), id }
    }

    fn grouped(nodes: &[NodeInfo], pairs: &[&str]) -> Plan {
        let vips = vec![vip("vip-g", "192.168.0.50", pairs)];
        let nics = vec![
            nic("nic-1", "SRV-1", "192.168.1.1"),
            nic("nic-2", "srv-2", "192.168.1.2"),
            nic("nic-3", "", "192.168.1.3"),
        ];
        plan(&vips, &nics, Some(nodes), &Options { group_by: Some("role".into()), ..opts() })
    }

    #[test]
    fn a_vip_on_exactly_the_nodes_of_one_label_value_is_one_group() {
        let srv = |s: &str| ServerId::Server(s.into());
        let nodes = vec![
            node("a", Some("lb"), srv("srv-1")),
            node("b", Some("lb"), srv("srv-2")),
            node("c", Some("lb"), ServerId::Nic("nic-3".into())),
            node("d", Some("web"), srv("srv-9")),
            node("e", None, ServerId::Missing("no providerID".into())),
        ];
        let plan = grouped(&nodes, &["192.168.1.1", "192.168.1.2", "192.168.1.3"]);
        assert_eq!(plan.skipped, Vec::<String>::new());
        let [Imported::Group { group, comment }] = plan.objects.as_slice() else { panic!("{:#?}", plan.objects) };
        assert_eq!(comment, "VIP 192.168.0.50 on the 3 nodes with role=lb: a, b, c");
        assert!(group.metadata.name.as_deref().is_some_and(|n| n.starts_with("vip-192-168-0-50-") && n.len() <= 50));
        let spec = &group.spec;
        assert_eq!(spec.node_selector.match_labels, BTreeMap::from([("role".to_string(), "lb".to_string())]));
        assert_eq!((spec.api, spec.deletion_policy, spec.max_nodes), (BindApi::Vpc, DeletionPolicy::Orphan, 64));

        // A selector that would reach a node the VIP is not on: bindings, and why.
        let plan = grouped(&nodes, &["192.168.1.1", "192.168.1.2"]);
        assert_eq!(bindings(&plan).len(), 2);
        assert_eq!(
            plan.skipped,
            [
                "VIP 192.168.0.50 (port vip-g): not grouped, bindings instead: role=lb also selects node(s) c that the VIP is not bound to: a group would bind it there"
            ]
        );
        // Nodes with different values, a NIC of no node, a single NIC: bindings.
        let mixed = vec![node("a", Some("lb"), srv("srv-1")), node("b", Some("web"), srv("srv-2"))];
        let plan = grouped(&mixed, &["192.168.1.1", "192.168.1.2"]);
        assert!(plan.skipped[0].ends_with("its nodes have several values of role"), "{:?}", plan.skipped);
        let plan = grouped(&mixed, &["192.168.1.1", "192.168.1.3"]);
        assert!(plan.skipped[0].ends_with("NIC nic-3 (server \"\") is no node's"), "{:?}", plan.skipped);
        let plan = grouped(&mixed, &["192.168.1.1"]);
        assert!(plan.skipped[0].ends_with("1 NIC: a group needs at least 2"), "{:?}", plan.skipped);
        assert_eq!(bindings(&plan).len(), 1);
        let unlabelled = vec![node("a", Some("lb"), srv("srv-1")), node("b", None, srv("srv-2"))];
        let plan = grouped(&unlabelled, &["192.168.1.1", "192.168.1.2"]);
        assert!(plan.skipped[0].ends_with("node b has no label role"), "{:?}", plan.skipped);
    }

    #[test]
    fn output_is_yaml_documents_with_comments_or_a_v1_list() {
        let vips = vec![vip("vip-a", "192.168.0.9", &["192.168.1.1"])];
        let plan = plan(
            &vips,
            &[nic("nic-1", "srv-1", "192.168.1.1")],
            None,
            &Options { name_prefix: "imp-".into(), ..opts() },
        );
        let yaml = render(&plan.objects, OutputFormat::Yaml).unwrap();
        assert!(yaml.starts_with("---\n# VIP 192.168.0.9 on server srv-1, NIC nic-1 (192.168.1.1)\napiVersion: vipoperator.dev/v1alpha1\nkind: VipBinding\n"), "{yaml}");
        assert!(yaml.contains("name: imp-vip-192-168-0-9-192-168-1-1-"), "{yaml}");
        assert!(!yaml.contains("status"), "{yaml}");
        let json: serde_json::Value =
            serde_json::from_str(&render(&plan.objects, OutputFormat::Json).unwrap()).unwrap();
        assert_eq!((json["apiVersion"].as_str(), json["kind"].as_str()), (Some("v1"), Some("List")));
        let b: VipBinding = serde_json::from_value(json["items"][0].clone()).unwrap();
        assert_eq!(b.spec.nic_id, "nic-1");
        assert_eq!(render(&[], OutputFormat::Yaml).unwrap(), "");
    }

    #[tokio::test]
    async fn addresses_are_looked_up_fifty_a_listing_and_nothing_is_written() {
        use crate::ecs::testing::FakeCloud;
        let mut all = vec![];
        let mut pairs = vec![];
        for i in 0..120u8 {
            let ip = format!("192.168.1.{i}");
            all.push(port(&format!("nic-{i:03}"), "compute:az1", "srv", &ip));
            pairs.push(ip);
        }
        let pairs: Vec<&str> = pairs.iter().map(String::as_str).collect();
        all.push(vip("vip-a", "192.168.0.9", &pairs));
        let cloud = FakeCloud::with_ports(all);
        let target = CloudTarget {
            region: "r".into(),
            project_id: "p".into(),
            credentials: Credentials::new("AK", "sk", None).unwrap(),
        };
        let ports = ReadOnlyPorts::new(cloud.as_ref(), target);
        let vips = ports.vip_ports(None).await.unwrap();
        let nics = ports.ports_by_address(&lookups(&vips, &opts())).await.unwrap();
        let plan = plan(&vips, &nics, None, &opts());
        assert_eq!(bindings(&plan).len(), 120);
        assert!(plan.skipped.is_empty(), "{:?}", plan.skipped);
        // One listing of VIP ports, three by address (50 + 50 + 20); no write.
        assert_eq!(cloud.count(crate::ecs::Operation::ListPorts), 4);
        assert_eq!(cloud.calls().len(), 4);
    }
}
