//! `vipoperator.dev/v1alpha1` `VipBinding`.
//!
//! Doc comments on spec and status fields are user documentation: they become the
//! `kubectl explain` text of the generated CRD.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "vipoperator.dev";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "VipBinding";
pub const PLURAL: &str = "vipbindings";
pub const CRD_NAME: &str = "vipbindings.vipoperator.dev";
pub const FINALIZER: &str = "vipoperator.dev/unbind";
/// Set to `"true"` to stop all cloud calls for a binding.
pub const PAUSED_ANNOTATION: &str = "vipoperator.dev/paused";

/// Which virtual IP goes on which NIC, with which credentials, and what deleting the VipBinding
/// does. Creating a VipBinding binds the VIP to the NIC; deleting it unbinds the VIP (unless
/// deletionPolicy is Orphan) before the object goes away.
// kube's printcolumn(...) repeats `type_ = ...` per column, which the lint mistakes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vipoperator.dev",
    version = "v1alpha1",
    kind = "VipBinding",
    plural = "vipbindings",
    shortname = "vipb",
    namespaced,
    status = "VipBindingStatus",
    derive = "PartialEq",
    doc = "Binds a Huawei Cloud virtual IP (VIP) to the NIC of an ECS server. Deleting the VipBinding unbinds the VIP (see spec.deletionPolicy).",
    printcolumn(name = "VIP", type_ = "string", json_path = ".spec.ipAddress"),
    printcolumn(name = "NIC", type_ = "string", json_path = ".spec.nicId"),
    printcolumn(name = "Port", type_ = "string", json_path = ".status.portId"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.projectId) == has(oldSelf.projectId)").message("projectId is immutable (it cannot be added or removed): create a new VipBinding instead"))]
#[x_kube(validation = Rule::new("has(self.region) == has(oldSelf.region)").message("region is immutable (it cannot be added or removed): create a new VipBinding instead"))]
#[x_kube(validation = Rule::new("has(self.api) == has(oldSelf.api)").message("api is immutable (it cannot be added or removed): create a new VipBinding instead"))]
#[x_kube(validation = Rule::new("!has(self.api) || self.api != 'VPC' || ip(self.ipAddress).family() == 4").message("api VPC binds IPv4 VIPs only: how Huawei turns the NIC's source check off for IPv6 is not documented"))]
#[serde(rename_all = "camelCase")]
pub struct VipBindingSpec {
    /// ID of the ECS server NIC (port) to bind the VIP to, e.g.
    /// "d32019d3-bc6e-4319-9c1d-6722fc136a23" (ECS console: server > Network Interfaces).
    /// Immutable.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("nicId is immutable: create a new VipBinding to bind another NIC"))]
    pub nic_id: String,

    /// The virtual IP address to bind, IPv4 or IPv6, e.g. "192.168.0.7". It must belong to the
    /// subnet given by subnetId. Immutable.
    #[schemars(length(min = 2, max = 45))]
    #[x_kube(validation = Rule::new("isIP(self)").message("ipAddress must be an IPv4 or IPv6 address"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("ipAddress is immutable: create a new VipBinding to bind another address"))]
    pub ip_address: String,

    /// ID of the network of the VPC subnet the server is in (shown as "Network ID" in the
    /// console; not the neutron subnet ID). Immutable.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("subnetId is immutable: create a new VipBinding instead"))]
    pub subnet_id: String,

    /// Whether the VIP's allowed_address_pairs also gets the NIC's IP/MAC pair. Changing it
    /// re-binds with the new value.
    #[serde(default)]
    pub reverse_binding: bool,

    /// Huawei Cloud project ID. Defaults to the credentials Secret's projectId, then to the
    /// operator's --project-id. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("projectId is immutable: create a new VipBinding instead"))]
    pub project_id: Option<String>,

    /// Huawei Cloud region, e.g. "cn-north-4". Defaults to the credentials Secret's region, then
    /// to the operator's --region. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("region is immutable: create a new VipBinding instead"))]
    pub region: Option<String>,

    /// A Secret in this namespace holding the credentials to use (keys accessKey, secretKey,
    /// optional securityToken, projectId, region). Defaults to the operator's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,

    /// Which Huawei API binds and unbinds this VIP. ECS: the server NIC call (what the operator
    /// has always used; Huawei lists it as discarded). VPC: the VIP port's
    /// allowed_address_pairs (what Huawei's console and Terraform use; IPv4 only). Absent: the
    /// operator's --default-api, recorded at the first bind. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("api is immutable: create a new VipBinding instead"))]
    pub api: Option<BindApi>,

    /// What deleting this VipBinding does to the cloud: Unbind (default) unbinds the VIP from the
    /// NIC; Orphan leaves it bound. Can be changed at any time, also while the VipBinding is
    /// being deleted: switching a stuck deletion to Orphan releases it without a cloud call.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Manage (default): the operator binds, repairs drift and unbinds on deletion. Observe: it
    /// never writes to the cloud: it reads, says in the Ready and Bound conditions whether the
    /// cloud matches this spec (and why not), reports drift without repairing it, and a deletion
    /// releases without a cloud call. Switching to Manage adopts: the first act is a read, and
    /// only what differs is written. May be changed at any time.
    #[serde(default, skip_serializing_if = "ManagementPolicy::is_manage")]
    pub management_policy: ManagementPolicy,
}

/// Whether the operator may write to the cloud for an object.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ManagementPolicy {
    /// Bind, repair and unbind.
    #[default]
    Manage,
    /// Read and report only; never write.
    Observe,
}

impl ManagementPolicy {
    pub fn is_manage(&self) -> bool {
        *self == ManagementPolicy::Manage
    }
}

/// Reference to a Secret in the VipBinding's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
}

/// The Huawei API a binding is made through.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum BindApi {
    /// `PUT /v1/{project_id}/cloudservers/nics/{nic_id}`: one VIP per NIC.
    #[default]
    #[serde(rename = "ECS")]
    Ecs,
    /// The VIP port's `allowed_address_pairs` (and `1.1.1.1/0` on the NIC's port): several
    /// VIPs per NIC.
    #[serde(rename = "VPC")]
    Vpc,
}

impl BindApi {
    pub fn as_str(self) -> &'static str {
        match self {
            BindApi::Ecs => "ECS",
            BindApi::Vpc => "VPC",
        }
    }
}

/// What deleting a VipBinding does to the cloud.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Unbind the VIP from the NIC.
    #[default]
    Unbind,
    /// Leave the VIP bound.
    Orphan,
}

/// Observed state of the binding, written by the operator.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VipBindingStatus {
    /// The port_id the cloud returned for the last successful bind or unbind (the NIC's ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_id: Option<String>,

    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The reverseBinding value the VIP is currently bound with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_reverse_binding: Option<bool>,

    /// `api: VPC`: what the VPC API last showed of this binding (see [`Observed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observed>,

    /// Where the last bind request was sent and whose credentials signed it. A deletion
    /// unbinds with the same, whatever the namespace's policy says by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_with: Option<BoundWith>,

    /// Ready: the binding is in the state its spec asks for. Bound: whether the VIP is bound to
    /// the NIC (Unknown when a request may have reached the cloud without an answer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// The cloud target of a bind request, as sent.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BoundWith {
    /// The Huawei project the request went to.
    pub project_id: String,
    /// Its region (empty with a fixed endpoint that serves every region).
    #[serde(default)]
    pub region: String,
    /// The Secret in this namespace whose keys signed it; absent: the operator's default
    /// credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// The API the bind went through; absent: ECS (records written before there was a choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<BindApi>,
    /// VPC: the VIP's port, whose allowed_address_pairs got the NIC's IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_port_id: Option<String>,
    /// VPC: the NIC's IP that went into the VIP port's pairs (removed by the unbind even if the
    /// NIC is gone by then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_ip: Option<String>,
    /// VPC: the operator added `1.1.1.1/0` (source check off) to the NIC's port, so the last
    /// binding on that NIC takes it away again. False: it was there already, and stays.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source_check_off_added: bool,
}

/// What the VPC API showed when the operator last read this binding's VIP port: whether its
/// allowed_address_pairs held the NIC's IP. Written when a bind reads the port; a drift listing
/// that finds the binding in place refreshes it at most hourly (a write per binding per round
/// would cost the API server as much as the fleet itself).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Observed {
    /// The VIP port held the NIC's IP.
    pub bound: bool,
    pub vip_port_id: String,
    /// When it was read.
    pub at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// What found it: `bind` (a bind or re-bind read the port) or `listing` (a drift listing).
    pub by: String,
}

impl BoundWith {
    /// The API the recorded bind went through.
    pub fn api(&self) -> BindApi {
        self.api.unwrap_or_default()
    }
}

impl VipBindingStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

impl VipBinding {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status.as_ref().and_then(|s| s.condition(type_))
    }

    pub fn is_paused(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PAUSED_ANNOTATION))
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }
}

pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_BOUND: &str = "Bound";

/// Condition reasons. A closed set: also used as a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The VIP is bound to the NIC as the spec asks.
    Bound,
    /// The VIP was unbound (the binding is being deleted).
    Unbound,
    /// No bind request for this binding ever reached the cloud, so nothing needs unbinding.
    NotBound,
    /// A bind request may have reached the cloud but no answer came back.
    Indeterminate,
    /// The NIC (or its server) does not exist, as the cloud service itself said.
    NicNotFound,
    /// A 404 that is not the service saying the NIC is gone (the API gateway found no such API,
    /// or a proxy answered): a wrong endpoint, path or region. Never taken as "NIC gone".
    EndpointNotFound,
    /// Released without unbinding (deletionPolicy Orphan, or the CRD is being removed).
    Orphaned,
    BindFailed,
    UnbindFailed,
    AuthFailed,
    CredentialsUnavailable,
    Throttled,
    CloudUnavailable,
    /// The spec or its configuration cannot be sent to the cloud.
    Invalid,
    /// Another VipBinding owns this NIC.
    Conflict,
    Paused,
    DeletionPaused,
    /// Not sent: this replica could not confirm it still holds the leader lease.
    LeaderUnconfirmed,
    /// The binding names no Secret, and its namespace may not use the operator's default
    /// credentials.
    DefaultCredentialsNotAllowed,
    /// The binding targets a project or region its namespace may not use.
    ProjectNotAllowed,
    /// ECS said the NIC is gone, but the VPC API still has its port: not released.
    GoneUnconfirmed,
    /// (Events only.) The credentials may not read VPC ports: releases rest on ECS answers.
    VpcReadsDenied,
    /// `api: VPC`: no VIP port has the address in the network. Nothing was written.
    VipNotFound,
    /// `api: VPC`: other writers kept changing a port between the operator's reads; nothing
    /// built from a stale read was written.
    PortContended,
    /// (Events only.) `api: VPC`: the drift check found the NIC's IP missing from the VIP port
    /// and put it back.
    DriftRepaired,
    /// Unbound, but a write of the operator's that may still land (an attempt answered 504 or
    /// given up on, or one of a previous leader) could undo it: released once that can no
    /// longer happen and a second look agrees.
    WritesInFlight,
    /// `api: VPC`: unbound, but other bindings on the NIC that need its `1.1.1.1/0` are still
    /// binding: released once they have read that the operator added it.
    HandingOver,
    /// (Events only.) The binding left the API while its bind was in flight, though it carried
    /// the finalizer (kube-apiserver can let a DELETE that read it before the finalizer was
    /// added remove it all the same): its bind was undone, since no deletion will.
    DeletedWhileBinding,
    /// `managementPolicy: Observe`: the cloud matches the spec (read, nothing written).
    Observed,
    /// `managementPolicy: Observe`: the cloud does not match the spec; reported, not repaired.
    ObservedDrift,
    /// `managementPolicy: Observe`: the cloud cannot be read for this binding (an ECS binding
    /// whose VIP port shows nothing, credentials that may not read ports): nothing is guessed.
    Unobservable,
}

impl Reason {
    pub const ALL: [Reason; 31] = [
        Reason::Bound,
        Reason::Unbound,
        Reason::NotBound,
        Reason::Indeterminate,
        Reason::NicNotFound,
        Reason::EndpointNotFound,
        Reason::Orphaned,
        Reason::BindFailed,
        Reason::UnbindFailed,
        Reason::AuthFailed,
        Reason::CredentialsUnavailable,
        Reason::Throttled,
        Reason::CloudUnavailable,
        Reason::Invalid,
        Reason::Conflict,
        Reason::Paused,
        Reason::DeletionPaused,
        Reason::LeaderUnconfirmed,
        Reason::DefaultCredentialsNotAllowed,
        Reason::ProjectNotAllowed,
        Reason::GoneUnconfirmed,
        Reason::VpcReadsDenied,
        Reason::VipNotFound,
        Reason::PortContended,
        Reason::DriftRepaired,
        Reason::WritesInFlight,
        Reason::HandingOver,
        Reason::DeletedWhileBinding,
        Reason::Observed,
        Reason::ObservedDrift,
        Reason::Unobservable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Bound => "Bound",
            Reason::Unbound => "Unbound",
            Reason::NotBound => "NotBound",
            Reason::Indeterminate => "Indeterminate",
            Reason::NicNotFound => "NicNotFound",
            Reason::EndpointNotFound => "EndpointNotFound",
            Reason::Orphaned => "Orphaned",
            Reason::BindFailed => "BindFailed",
            Reason::UnbindFailed => "UnbindFailed",
            Reason::AuthFailed => "AuthFailed",
            Reason::CredentialsUnavailable => "CredentialsUnavailable",
            Reason::Throttled => "Throttled",
            Reason::CloudUnavailable => "CloudUnavailable",
            Reason::Invalid => "Invalid",
            Reason::Conflict => "Conflict",
            Reason::Paused => "Paused",
            Reason::DeletionPaused => "DeletionPaused",
            Reason::LeaderUnconfirmed => "LeaderUnconfirmed",
            Reason::DefaultCredentialsNotAllowed => "DefaultCredentialsNotAllowed",
            Reason::ProjectNotAllowed => "ProjectNotAllowed",
            Reason::GoneUnconfirmed => "GoneUnconfirmed",
            Reason::VpcReadsDenied => "VpcReadsDenied",
            Reason::VipNotFound => "VipNotFound",
            Reason::PortContended => "PortContended",
            Reason::DriftRepaired => "DriftRepaired",
            Reason::WritesInFlight => "WritesInFlight",
            Reason::HandingOver => "HandingOver",
            Reason::DeletedWhileBinding => "DeletedWhileBinding",
            Reason::Observed => "Observed",
            Reason::ObservedDrift => "ObservedDrift",
            Reason::Unobservable => "Unobservable",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
