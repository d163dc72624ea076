//! Test support, not API: one `VipBinding` fixture for the unit tests under `src/` and the
//! integration tests under `tests/`. Nothing outside tests may use it.
//!
//! `VipBinding::test()` is a valid, live binding; each modifier returns it changed, e.g.
//! `VipBinding::test().named("team-a", "web-vip").with_finalizer().deleting()`.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::v1alpha1::{
    BindApi, DeletionPolicy, FINALIZER, PAUSED_ANNOTATION, SecretRef, VipBinding, VipBindingSpec, VipBindingStatus,
};

/// A status whose only condition is `Bound` with `status` ("True", "False", "Unknown"), at
/// generation 1: what the decision and the index read of what was sent.
pub fn bound_status(status: &str) -> VipBindingStatus {
    VipBindingStatus {
        conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: super::v1alpha1::CONDITION_BOUND.into(),
            status: status.into(),
            reason: "x".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(DELETED_AT),
        }],
        ..Default::default()
    }
}

/// The default `spec.nicId`.
pub const NIC: &str = "d32019d3-bc6e-4319-9c1d-6722fc136a23";
/// The default `spec.ipAddress`.
pub const IP: &str = "192.168.0.7";
/// The default `spec.subnetId`.
pub const SUBNET: &str = "8c9d4f38-1a2b-4c3d-9e8f-001122334455";
/// The `metadata.deletionTimestamp` of `.deleting()`: 2024-01-01T00:00:00Z.
const DELETED_AT: Timestamp = Timestamp::constant(1_704_067_200, 0);

/// Builds `VipBinding` test objects. Import it to call `VipBinding::test()`.
pub trait Fixture: Sized {
    /// Namespace `ns`, name `b`, uid `ns-b`, generation 1; spec: NIC [`NIC`], VIP [`IP`] in
    /// subnet [`SUBNET`], no reverse binding, no project, region or Secret, deletionPolicy
    /// Unbind. No finalizer, no annotations, no status.
    fn test() -> Self;
    /// Another object: this namespace and name, and the uid `{ns}-{name}`.
    fn named(self, ns: impl Into<String>, name: impl Into<String>) -> Self;
    fn with_uid(self, uid: impl Into<String>) -> Self;
    fn generation(self, generation: i64) -> Self;
    fn created(self, at: Timestamp) -> Self;
    fn nic(self, nic: impl Into<String>) -> Self;
    fn ip(self, ip: impl Into<String>) -> Self;
    fn subnet(self, subnet: impl Into<String>) -> Self;
    fn project(self, project: Option<String>) -> Self;
    fn region(self, region: Option<String>) -> Self;
    fn reverse_binding(self, reverse: bool) -> Self;
    /// `spec.api`.
    fn api(self, api: BindApi) -> Self;
    /// `spec.credentialsSecretRef` names this Secret.
    fn secret(self, name: impl Into<String>) -> Self;
    /// deletionPolicy Orphan.
    fn orphan(self) -> Self;
    /// The operator's finalizer, and no other.
    fn with_finalizer(self) -> Self;
    /// A deletion timestamp (2024-01-01T00:00:00Z).
    fn deleting(self) -> Self;
    /// The paused annotation, set to `"true"`.
    fn paused(self) -> Self;
    fn with_status(self, status: VipBindingStatus) -> Self;
}

impl Fixture for VipBinding {
    fn test() -> Self {
        let spec = VipBindingSpec {
            nic_id: NIC.into(),
            ip_address: IP.into(),
            subnet_id: SUBNET.into(),
            reverse_binding: false,
            project_id: None,
            region: None,
            credentials_secret_ref: None,
            deletion_policy: DeletionPolicy::Unbind,
            api: None,
            management_policy: Default::default(),
        };
        VipBinding::new("b", spec).named("ns", "b").generation(1)
    }

    fn named(mut self, ns: impl Into<String>, name: impl Into<String>) -> Self {
        let (ns, name) = (ns.into(), name.into());
        self.metadata.uid = Some(format!("{ns}-{name}"));
        self.metadata.namespace = Some(ns);
        self.metadata.name = Some(name);
        self
    }

    fn with_uid(mut self, uid: impl Into<String>) -> Self {
        self.metadata.uid = Some(uid.into());
        self
    }

    fn generation(mut self, generation: i64) -> Self {
        self.metadata.generation = Some(generation);
        self
    }

    fn created(mut self, at: Timestamp) -> Self {
        self.metadata.creation_timestamp = Some(Time(at));
        self
    }

    fn nic(mut self, nic: impl Into<String>) -> Self {
        self.spec.nic_id = nic.into();
        self
    }

    fn ip(mut self, ip: impl Into<String>) -> Self {
        self.spec.ip_address = ip.into();
        self
    }

    fn subnet(mut self, subnet: impl Into<String>) -> Self {
        self.spec.subnet_id = subnet.into();
        self
    }

    fn project(mut self, project: Option<String>) -> Self {
        self.spec.project_id = project;
        self
    }

    fn region(mut self, region: Option<String>) -> Self {
        self.spec.region = region;
        self
    }

    fn api(mut self, api: BindApi) -> Self {
        self.spec.api = Some(api);
        self
    }

    fn reverse_binding(mut self, reverse: bool) -> Self {
        self.spec.reverse_binding = reverse;
        self
    }

    fn secret(mut self, name: impl Into<String>) -> Self {
        self.spec.credentials_secret_ref = Some(SecretRef { name: name.into() });
        self
    }

    fn orphan(mut self) -> Self {
        self.spec.deletion_policy = DeletionPolicy::Orphan;
        self
    }

    fn with_finalizer(mut self) -> Self {
        self.metadata.finalizers = Some(vec![FINALIZER.into()]);
        self
    }

    fn deleting(mut self) -> Self {
        self.metadata.deletion_timestamp = Some(Time(DELETED_AT));
        self
    }

    fn paused(mut self) -> Self {
        self.metadata.annotations = Some([(PAUSED_ANNOTATION.to_string(), "true".to_string())].into());
        self
    }

    fn with_status(mut self, status: VipBindingStatus) -> Self {
        self.status = Some(status);
        self
    }
}
