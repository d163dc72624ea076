//! The resource types the fake serves: a fixed set of built-ins plus whatever CRDs are registered.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// `(group, plural)`: identifies a resource independently of the version it is served at.
pub(crate) type ResourceKey = (String, String);

pub(crate) const CRD_CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// How one resource behaves. The flags mirror the per-type strategies of kube-apiserver.
#[derive(Debug, Clone)]
pub(crate) struct ResourceType {
    pub group: String,
    /// Served versions; objects are stored once and rendered at the requested version
    /// (like a CRD with conversion strategy `None`: only `apiVersion` differs).
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub short_names: Vec<String>,
    pub namespaced: bool,
    /// Has a `/status` subresource: main-resource writes keep the stored status and
    /// `/status` writes change nothing but status.
    pub status_subresource: bool,
    /// A custom resource (served because of a CRD).
    pub custom: bool,
    /// `openAPIV3Schema` per version, for pruning custom resources.
    pub schemas: BTreeMap<String, Value>,
}

impl ResourceType {
    fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            versions: vec![version.into()],
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            short_names: Vec::new(),
            namespaced,
            status_subresource: false,
            custom: false,
            schemas: BTreeMap::new(),
        }
    }

    pub fn key(&self) -> ResourceKey {
        (self.group.clone(), self.plural.clone())
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() { version.to_string() } else { format!("{}/{version}", self.group) }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// `secrets`, `widgets.example.test`: the `GroupResource` used in error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    pub fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.plural == "namespaces"
    }

    pub fn is_crd(&self) -> bool {
        self.group == "apiextensions.k8s.io" && self.plural == "customresourcedefinitions"
    }

    /// Custom resources and CRDs maintain `metadata.generation`; the other built-ins served
    /// here (Secret, ConfigMap, Event, Lease, Namespace) do not set it at all.
    pub fn has_generation(&self) -> bool {
        self.custom || self.is_crd()
    }

    /// `AllowUnconditionalUpdate()`: false for custom resources and CRDs, whose PUT must carry
    /// `metadata.resourceVersion`.
    pub fn allow_unconditional_update(&self) -> bool {
        !(self.custom || self.is_crd())
    }

    /// `ReturnDeletedObject`: a DELETE answers with the object rather than a `Success` Status.
    pub fn returns_deleted_object(&self) -> bool {
        self.custom || self.is_crd() || self.is_namespace()
    }

    /// Strategic merge patch is only defined for built-in types.
    pub fn supports_strategic_merge(&self) -> bool {
        !self.custom
    }

    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    /// Builds the type served for a `CustomResourceDefinition` object.
    pub fn from_crd(crd: &Value) -> Result<Self, String> {
        let spec = crd.get("spec").ok_or("spec: Required value")?;
        let text = |v: &Value, what: &str| -> Result<String, String> {
            v.as_str().map(str::to_string).ok_or(format!("{what}: Required value"))
        };
        let group = text(&spec["group"], "spec.group")?;
        let names = &spec["names"];
        let plural = text(&names["plural"], "spec.names.plural")?;
        let kind = text(&names["kind"], "spec.names.kind")?;
        let singular = names["singular"].as_str().map_or_else(|| kind.to_lowercase(), str::to_string);
        let short_names = names["shortNames"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let namespaced = match spec["scope"].as_str() {
            Some("Namespaced") => true,
            Some("Cluster") => false,
            _ => return Err("spec.scope: Unsupported value: must be Namespaced or Cluster".into()),
        };
        let versions = spec["versions"].as_array().ok_or("spec.versions: Required value")?;
        let served: Vec<&Value> = versions.iter().filter(|v| v["served"].as_bool() == Some(true)).collect();
        // The storage version is the preferred one in discovery; put it first.
        let mut ordered: Vec<&Value> =
            served.iter().copied().filter(|v| v["storage"].as_bool() == Some(true)).collect();
        ordered.extend(served.iter().copied().filter(|v| v["storage"].as_bool() != Some(true)));
        let version_names =
            ordered.iter().map(|v| text(&v["name"], "spec.versions[].name")).collect::<Result<Vec<_>, _>>()?;
        let status_subresource = ordered.iter().any(|v| v["subresources"]["status"].is_object());
        let schemas = ordered
            .iter()
            .filter_map(|v| Some((v["name"].as_str()?.to_string(), v["schema"].get("openAPIV3Schema")?.clone())))
            .collect();
        let expected_name = format!("{plural}.{group}");
        if crd["metadata"]["name"].as_str() != Some(expected_name.as_str()) {
            return Err(format!(
                "metadata.name: Invalid value: must be spec.names.plural+\".\"+spec.group ({expected_name})"
            ));
        }
        Ok(Self {
            group,
            versions: version_names,
            plural,
            singular,
            kind,
            short_names,
            namespaced,
            status_subresource,
            custom: true,
            schemas,
        })
    }
}

/// All served resources, by `(group, plural)`.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    types: BTreeMap<ResourceKey, ResourceType>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let mut namespaces = ResourceType::builtin("", "v1", "namespaces", "Namespace", false);
        namespaces.status_subresource = true;
        namespaces.short_names = vec!["ns".into()];
        let mut crds = ResourceType::builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
        );
        crds.status_subresource = true;
        crds.short_names = vec!["crd".into(), "crds".into()];
        let builtins = [
            namespaces,
            ResourceType::builtin("", "v1", "secrets", "Secret", true),
            ResourceType::builtin("", "v1", "configmaps", "ConfigMap", true),
            ResourceType::builtin("", "v1", "events", "Event", true),
            ResourceType::builtin("events.k8s.io", "v1", "events", "Event", true),
            ResourceType::builtin("coordination.k8s.io", "v1", "leases", "Lease", true),
            crds,
        ];
        Self { types: builtins.into_iter().map(|t| (t.key(), t)).collect() }
    }

    pub fn get(&self, key: &ResourceKey) -> Option<&ResourceType> {
        self.types.get(key)
    }

    /// The type serving `group/version` `plural`, if that version is served.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types.get(&(group.to_string(), plural.to_string())).filter(|t| t.serves(version))
    }

    pub fn insert(&mut self, rt: ResourceType) {
        self.types.insert(rt.key(), rt);
    }

    pub fn remove(&mut self, key: &ResourceKey) {
        self.types.remove(key);
    }

    /// Groups with their versions, preferred (first registered) version first; core excluded.
    fn groups(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for rt in self.types.values().filter(|t| !t.group.is_empty()) {
            let versions = groups.entry(rt.group.as_str()).or_default();
            for v in &rt.versions {
                if !versions.contains(&v.as_str()) {
                    versions.push(v);
                }
            }
        }
        groups
    }

    /// `GET /api`
    pub fn core_versions(&self, server_address: &str) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }],
        })
    }

    fn group_json(group: &str, versions: &[&str]) -> Value {
        let versions: Vec<Value> =
            versions.iter().map(|v| json!({ "groupVersion": format!("{group}/{v}"), "version": v })).collect();
        json!({
            "name": group,
            "versions": versions,
            "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
        })
    }

    /// `GET /apis`
    pub fn group_list(&self) -> Value {
        let groups: Vec<Value> = self.groups().iter().map(|(g, versions)| Self::group_json(g, versions)).collect();
        json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
    }

    /// `GET /apis/{group}`
    pub fn group(&self, group: &str) -> Option<Value> {
        let groups = self.groups();
        let versions = groups.get(group)?;
        let mut doc = Self::group_json(group, versions);
        doc["kind"] = json!("APIGroup");
        doc["apiVersion"] = json!("v1");
        Some(doc)
    }

    /// `GET /api` or `GET /apis` as an aggregated `APIGroupDiscoveryList` (`apidiscovery.k8s.io/v2`):
    /// the core group for `/api`, every other group for `/apis`.
    pub fn aggregated_discovery(&self, core: bool) -> Value {
        let group_names: Vec<String> =
            if core { vec![String::new()] } else { self.groups().keys().map(|g| g.to_string()).collect() };
        let items: Vec<Value> = group_names
            .iter()
            .map(|group| {
                let versions = if group.is_empty() {
                    vec!["v1"]
                } else {
                    self.groups().get(group.as_str()).cloned().unwrap_or_default()
                };
                let versions: Vec<Value> = versions
                    .iter()
                    .map(|version| {
                        let resources: Vec<Value> = self
                            .types
                            .values()
                            .filter(|t| &t.group == group && t.serves(version))
                            .map(|t| {
                                let kind = json!({ "group": t.group, "version": version, "kind": t.kind });
                                let subresources: Vec<Value> = if t.status_subresource {
                                    vec![json!({ "subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"] })]
                                } else {
                                    Vec::new()
                                };
                                json!({
                                    "resource": t.plural,
                                    "responseKind": kind,
                                    "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                                    "singularResource": t.singular,
                                    "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                                    "shortNames": t.short_names,
                                    "subresources": subresources,
                                })
                            })
                            .collect();
                        json!({ "version": version, "resources": resources, "freshness": "Current" })
                    })
                    .collect();
                json!({ "metadata": { "name": group }, "versions": versions })
            })
            .collect();
        json!({ "kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items })
    }

    /// `GET /api/v1`, `GET /apis/{group}/{version}`
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let mut resources = Vec::new();
        for rt in self.types.values().filter(|t| t.group == group && t.serves(version)) {
            resources.push(json!({
                "name": rt.plural,
                "singularName": rt.singular,
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                "shortNames": rt.short_names,
            }));
            if rt.status_subresource {
                resources.push(json!({
                    "name": format!("{}/status", rt.plural),
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": ["get", "patch", "update"],
                }));
            }
        }
        if resources.is_empty() {
            return None;
        }
        let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }))
    }
}
