//! `vipoperator.dev/v1alpha1` `VipGroup`: one VIP on every node a selector matches.
//!
//! Doc comments on spec and status fields are user documentation: they become the
//! `kubectl explain` text of the generated CRD.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::v1alpha1::{BindApi, DeletionPolicy, ManagementPolicy, SecretRef};

pub const GROUP_KIND: &str = "VipGroup";
pub const GROUP_CRD_NAME: &str = "vipgroups.vipoperator.dev";
/// Held by a group until every member binding is gone.
pub const GROUP_FINALIZER: &str = "vipoperator.dev/members";
/// On every member binding: the group's name (`kubectl get vipb -l vipoperator.dev/group=web`).
pub const GROUP_LABEL: &str = "vipoperator.dev/group";
/// On every member binding: its node's name (a hash when the name is longer than a label value
/// may be).
pub const NODE_LABEL: &str = "vipoperator.dev/node";
/// Node annotation: the node's ECS server ID, for nodes whose providerID does not carry it.
pub const SERVER_ID_ANNOTATION: &str = "vipoperator.dev/server-id";
/// Node annotation: the NIC (port) ID to bind, for self-managed nodes; no lookup is made.
pub const NIC_ID_ANNOTATION: &str = "vipoperator.dev/nic-id";
/// Members listed in the status at most; the counts cover every member.
pub const MAX_LISTED_MEMBERS: usize = 100;
pub const DEFAULT_MAX_NODES: u32 = 64;

/// One virtual IP bound to the NIC of every node that matches a selector, following the nodes as
/// they come and go (keepalived, kube-vip in ARP mode: the VIP must be allowed on every NIC that
/// may hold it). Each member is a VipBinding the group owns, named after the group and the node.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vipoperator.dev",
    version = "v1alpha1",
    kind = "VipGroup",
    plural = "vipgroups",
    shortname = "vipg",
    namespaced,
    status = "VipGroupStatus",
    derive = "PartialEq",
    doc = "Binds one Huawei Cloud virtual IP to the NIC of every node matching spec.nodeSelector, through one member VipBinding per node. Deleting the VipGroup deletes its members, which unbind (see spec.deletionPolicy).",
    printcolumn(name = "VIP", type_ = "string", json_path = ".spec.ipAddress"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.desired"),
    printcolumn(name = "Bound", type_ = "integer", json_path = ".status.bound"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 50").message("a VipGroup's name is at most 50 characters: it is a label value on every member and the start of each member's name")
)]
#[x_kube(validation = Rule::new("has(self.projectId) == has(oldSelf.projectId)").message("projectId is immutable (it cannot be added or removed): create a new VipGroup instead"))]
#[x_kube(validation = Rule::new("has(self.region) == has(oldSelf.region)").message("region is immutable (it cannot be added or removed): create a new VipGroup instead"))]
#[x_kube(validation = Rule::new("self.api != 'VPC' || ip(self.ipAddress).family() == 4").message("api VPC binds IPv4 VIPs only: how Huawei turns the NIC's source check off for IPv6 is not documented"))]
#[serde(rename_all = "camelCase")]
pub struct VipGroupSpec {
    /// The virtual IP address to bind to every member's NIC, e.g. "192.168.0.7". It must belong
    /// to the network given by subnetId. Immutable.
    #[schemars(length(min = 2, max = 45))]
    #[x_kube(validation = Rule::new("isIP(self)").message("ipAddress must be an IPv4 or IPv6 address"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("ipAddress is immutable: create a new VipGroup to bind another address"))]
    pub ip_address: String,

    /// ID of the network of the VPC subnet the VIP and the nodes' NICs are in (shown as
    /// "Network ID" in the console). A node's NIC is its server's port in this network.
    /// Immutable.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("subnetId is immutable: create a new VipGroup instead"))]
    pub subnet_id: String,

    /// Which nodes get the VIP: a label selector (matchLabels and/or matchExpressions). It must
    /// select something: an empty selector is refused, so a typo never means "every node".
    /// Nodes that stop matching lose the VIP; NotReady nodes stay members.
    #[x_kube(validation = Rule::new("(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)").message("nodeSelector must have matchLabels or matchExpressions: an empty selector would match every node"))]
    pub node_selector: NodeSelector,

    /// Which Huawei API binds the VIP to each member: VPC (default; one NIC may carry several
    /// VIPs, so the group coexists with other VipBindings on the same NICs) or ECS (one VIP per
    /// NIC). Immutable.
    #[serde(default = "default_api")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("api is immutable: create a new VipGroup instead"))]
    pub api: BindApi,

    /// Huawei Cloud project ID. Defaults to the credentials Secret's projectId, then to the
    /// operator's --project-id. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("projectId is immutable: create a new VipGroup instead"))]
    pub project_id: Option<String>,

    /// Huawei Cloud region, e.g. "cn-north-4". Defaults to the credentials Secret's region, then
    /// to the operator's --region. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("region is immutable: create a new VipGroup instead"))]
    pub region: Option<String>,

    /// A Secret in this namespace holding the credentials (as on a VipBinding). Used to find the
    /// nodes' NICs and by every member. Defaults to the operator's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,

    /// What deleting a member does to the cloud (a node leaving the group, or the group being
    /// deleted): Unbind (default) or Orphan. Copied to every member; may be changed at any time.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// The most members the group may have. A selector that matches more changes nothing (no
    /// member is added or removed) and says TooManyNodes: a selector widened by mistake must
    /// not bind a VIP to a whole cluster, nor unbind the members it has.
    #[serde(default = "default_max_nodes")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_nodes: u32,

    /// Manage (default) or Observe, copied to every member (see a VipBinding's
    /// managementPolicy): under Observe the members only read and report. May be changed at any
    /// time.
    #[serde(default, skip_serializing_if = "ManagementPolicy::is_manage")]
    pub management_policy: ManagementPolicy,
}

fn default_api() -> BindApi {
    BindApi::Vpc
}

fn default_max_nodes() -> u32 {
    DEFAULT_MAX_NODES
}

/// A label selector over Nodes.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelector {
    /// Labels a node must all have, with these values.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub match_labels: std::collections::BTreeMap<String, String>,
    /// Requirements a node's labels must all meet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// One requirement of a label selector.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)").message("In and NotIn need values; Exists and DoesNotExist take none"))]
pub struct SelectorRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    /// In, NotIn, Exists or DoesNotExist.
    pub operator: SelectorOperator,
    /// The values for In and NotIn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub values: Vec<String>,
}

/// How a requirement's key and values are matched.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl NodeSelector {
    /// As Kubernetes' own type, for matching.
    pub fn to_label_selector(&self) -> LabelSelector {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        LabelSelector {
            match_labels: (!self.match_labels.is_empty()).then(|| self.match_labels.clone()),
            match_expressions: (!self.match_expressions.is_empty()).then(|| {
                self.match_expressions
                    .iter()
                    .map(|r| LabelSelectorRequirement {
                        key: r.key.clone(),
                        operator: format!("{:?}", r.operator),
                        values: (!r.values.is_empty()).then(|| r.values.clone()),
                    })
                    .collect()
            }),
        }
    }
}

/// Observed state of the group, written by the operator.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VipGroupStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes that match the selector (members wanted).
    #[serde(default)]
    pub desired: u32,
    /// Members whose VIP is bound (their VipBinding is Ready).
    #[serde(default)]
    pub bound: u32,
    /// Members that cannot be bound as things stand: no server ID or NIC found for the node, or
    /// a member VipBinding that failed.
    #[serde(default)]
    pub failing: u32,
    /// The members, by node name (at most 100; the counts cover all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
    /// Members left out of `members` for its size.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub members_omitted: u32,
    /// Ready: every member is bound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One node of the group and how its VIP stands.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// The node's name.
    pub node: String,
    /// The node's NIC in the VIP's network, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_id: Option<String>,
    /// The member VipBinding, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
    /// The VIP is bound to the node's NIC.
    pub ready: bool,
    /// Bound; Binding (on its way); NotReady (the member VipBinding's own condition, in the
    /// message); NoServerId, NoNicInNetwork or SeveralNics (the node's NIC cannot be told, so
    /// nothing is bound); LookupFailed (the NIC lookup failed for now; retried); TooManyNodes.
    pub reason: String,
    /// What to do about it, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl VipGroupStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// Why a group is or is not Ready. A closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupReason {
    /// Every member is bound.
    AllBound,
    /// The selector matches no node.
    NoMatchingNodes,
    /// The selector matches more nodes than spec.maxNodes: nothing is changed.
    TooManyNodes,
    /// Some members are still binding.
    MembersPending,
    /// Some members cannot be bound (see status.members).
    MembersFailing,
    /// The group is being deleted: its members are unbinding.
    Deleting,
    /// The node selector cannot be evaluated.
    InvalidSelector,
}

impl GroupReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupReason::AllBound => "AllBound",
            GroupReason::NoMatchingNodes => "NoMatchingNodes",
            GroupReason::TooManyNodes => "TooManyNodes",
            GroupReason::MembersPending => "MembersPending",
            GroupReason::MembersFailing => "MembersFailing",
            GroupReason::Deleting => "Deleting",
            GroupReason::InvalidSelector => "InvalidSelector",
        }
    }
}

/// Why a node is not (yet) a bound member. A closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberReason {
    Bound,
    /// The member VipBinding is binding.
    Binding,
    /// The member VipBinding is not Ready for another reason (its own condition says which).
    NotReady,
    /// The node has no providerID with a server ID and no vipoperator.dev/server-id annotation.
    NoServerId,
    /// The node's server has no port in the VIP's network.
    NoNicInNetwork,
    /// The node's server has several ports in the VIP's network: which one is meant is the
    /// user's to say (vipoperator.dev/nic-id).
    SeveralNics,
    /// The NIC lookup failed for now (throttled, unavailable, credentials); retried.
    LookupFailed,
}

impl MemberReason {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberReason::Bound => "Bound",
            MemberReason::Binding => "Binding",
            MemberReason::NotReady => "NotReady",
            MemberReason::NoServerId => "NoServerId",
            MemberReason::NoNicInNetwork => "NoNicInNetwork",
            MemberReason::SeveralNics => "SeveralNics",
            MemberReason::LookupFailed => "LookupFailed",
        }
    }
}
