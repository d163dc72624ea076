//! Every Kubernetes permission the operator uses, in one table. The Helm chart's RBAC is tested
//! against it (granted == needed, nothing more), and the e2e suite checks that the requests the
//! running operator makes stay inside it. Add a row here when the code starts using a new verb.

/// Where a permission must be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Cluster-wide (a ClusterRole), whatever namespaces are watched.
    Cluster,
    /// In every watched namespace (a ClusterRole when all namespaces are watched).
    Watched,
    /// In the operator's own namespace only.
    OperatorNamespace,
}

/// Optional features that need extra permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Always needed.
    Core,
    /// Leader election (`--leader-elect`).
    LeaderElection,
    /// Finalizers on credentials Secrets (`--protect-credentials`).
    CredentialsProtection,
    /// A default credentials Secret (`--credentials-secret`) in the operator's namespace; the
    /// grant is limited to that Secret's name.
    DefaultCredentialsSecret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    pub api_group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub scope: Scope,
    /// Limits the grant to these names (empty: any).
    pub resource_names: &'static [&'static str],
    pub feature: Feature,
    /// What uses it.
    pub why: &'static str,
}

pub const PERMISSIONS: &[Permission] = &[
    Permission {
        api_group: "vipoperator.dev",
        resource: "vipbindings",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        scope: Scope::Watched,
        resource_names: &[],
        feature: Feature::Core,
        why: "watch bindings; add and remove the finalizer (JSON patch); a VipGroup's members: create and put back (server-side apply), delete",
    },
    Permission {
        api_group: "vipoperator.dev",
        resource: "vipbindings/status",
        verbs: &["patch"],
        scope: Scope::Watched,
        resource_names: &[],
        feature: Feature::Core,
        why: "write status (server-side apply)",
    },
    Permission {
        api_group: "vipoperator.dev",
        resource: "vipbindings/finalizers",
        verbs: &["update"],
        scope: Scope::Watched,
        resource_names: &[],
        feature: Feature::Core,
        why: "finalizer changes on clusters that enforce OwnerReferencesPermissionEnforcement",
    },
    Permission {
        api_group: "vipoperator.dev",
        resource: "vipgroups",
        verbs: &["get", "list", "watch", "patch"],
        scope: Scope::Watched,
        resource_names: &[],
        feature: Feature::Core,
        why: "watch groups; add and remove their finalizer (JSON patch)",
    },
    Permission {
        api_group: "vipoperator.dev",
        resource: "vipgroups/status",
        verbs: &["patch"],
        scope: Scope::Watched,
        resource_names: &[],
        feature: Feature::Core,
        why: "write a group's status",
    },
    Permission {
        api_group: "vipoperator.dev",
        resource: "vipgroups/finalizers",
        verbs: &["update"],
        scope: Scope::Watched,
        resource_names: &[],
        feature: Feature::Core,
        why: "members' owner references with blockOwnerDeletion, on clusters that enforce OwnerReferencesPermissionEnforcement",
    },
    Permission {
        api_group: "",
        resource: "secrets",
        verbs: &["get", "list", "watch"],
        scope: Scope::Watched,
        resource_names: &[],
        feature: Feature::Core,
        why: "read spec.credentialsSecretRef; watch Secret metadata to react to rotation",
    },
    Permission {
        api_group: "",
        resource: "secrets",
        verbs: &["patch"],
        scope: Scope::Watched,
        resource_names: &[],
        feature: Feature::CredentialsProtection,
        why: "add/remove the vipoperator.dev/credentials-in-use finalizer",
    },
    Permission {
        api_group: "",
        resource: "secrets",
        verbs: &["get"],
        scope: Scope::OperatorNamespace,
        resource_names: &["<credentials.existingSecret>"],
        feature: Feature::DefaultCredentialsSecret,
        why: "read the operator's default credentials Secret",
    },
    Permission {
        api_group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        scope: Scope::Watched,
        resource_names: &[],
        feature: Feature::Core,
        why: "publish events (patch: event series)",
    },
    Permission {
        api_group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "patch"],
        scope: Scope::OperatorNamespace,
        resource_names: &[],
        feature: Feature::LeaderElection,
        why: "leader election lease",
    },
    Permission {
        api_group: "apiextensions.k8s.io",
        resource: "customresourcedefinitions",
        verbs: &["get"],
        scope: Scope::Cluster,
        resource_names: &["vipbindings.vipoperator.dev"],
        feature: Feature::Core,
        why: "before an unbind, check the VipBinding CRD is not being deleted (uninstall): then release without unbinding",
    },
    Permission {
        api_group: "",
        resource: "namespaces",
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
        resource_names: &[],
        feature: Feature::Core,
        why: "namespace labels and annotations (metadata only): who may use the default credentials, which projects a namespace may target",
    },
    Permission {
        api_group: "",
        resource: "nodes",
        verbs: &["get", "list", "watch"],
        scope: Scope::Cluster,
        resource_names: &[],
        feature: Feature::Core,
        why: "VIP groups: node labels and annotations (metadata watch), and a node's spec.providerID (one read per node)",
    },
];
