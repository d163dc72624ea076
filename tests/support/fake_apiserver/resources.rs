//! The resource types the fake serves: a fixed set of built-ins plus the registered CRDs.

use std::collections::BTreeMap;

use serde_json::Value;

/// `(group, plural)`: identifies a resource independently of the version it is served at.
pub(crate) type ResourceKey = (String, String);

pub(crate) const CRD_CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// How one resource behaves. The flags mirror the per-type strategies of kube-apiserver.
#[derive(Debug, Clone)]
pub(crate) struct ResourceType {
    pub group: String,
    /// Served versions, storage version first. Objects are stored once and rendered at the
    /// requested version (a CRD's conversion strategy `None`: only `apiVersion` differs).
    pub versions: Vec<String>,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// Main-resource writes keep the stored status; `/status` writes change nothing else.
    pub status_subresource: bool,
    /// A custom resource (served because of a CRD).
    pub custom: bool,
    /// The storage version's `openAPIV3Schema` (only its `pattern`s are checked).
    pub schema: Value,
}

impl ResourceType {
    fn builtin(group: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        let (group, plural, kind) = (group.into(), plural.into(), kind.into());
        let versions = vec!["v1".into()];
        Self {
            group,
            versions,
            plural,
            kind,
            namespaced,
            status_subresource: false,
            custom: false,
            schema: Value::Null,
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

    /// `secrets`, `widgets.example.test`: the `GroupResource` of error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    pub fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.plural == "namespaces"
    }

    pub fn is_crd(&self) -> bool {
        self.group == "apiextensions.k8s.io" && self.plural == "customresourcedefinitions"
    }

    /// Only custom resources and CRDs (of the types served here) maintain `metadata.generation`.
    pub fn has_generation(&self) -> bool {
        self.custom || self.is_crd()
    }

    /// `ReturnDeletedObject`: a DELETE that removes the object answers with it rather than with
    /// a `Success` Status (Secrets, Events and Leases answer with the Status).
    pub fn returns_deleted_object(&self) -> bool {
        self.custom || self.is_crd() || self.is_namespace()
    }

    /// Builds the type served for a `CustomResourceDefinition` object.
    pub fn from_crd(crd: &Value) -> Result<Self, String> {
        let spec = &crd["spec"];
        let text = |v: &Value, what: &str| v.as_str().map(str::to_string).ok_or(format!("{what}: Required value"));
        let group = text(&spec["group"], "spec.group")?;
        let plural = text(&spec["names"]["plural"], "spec.names.plural")?;
        let kind = text(&spec["names"]["kind"], "spec.names.kind")?;
        let namespaced = match spec["scope"].as_str() {
            Some("Namespaced") => true,
            Some("Cluster") => false,
            _ => return Err("spec.scope: Unsupported value: must be Namespaced or Cluster".into()),
        };
        let mut served: Vec<&Value> = spec["versions"]
            .as_array()
            .ok_or("spec.versions: Required value")?
            .iter()
            .filter(|v| v["served"].as_bool() == Some(true))
            .collect();
        served.sort_by_key(|v| v["storage"].as_bool() != Some(true));
        let versions = served.iter().map(|v| text(&v["name"], "spec.versions[].name")).collect::<Result<_, _>>()?;
        let expected_name = format!("{plural}.{group}");
        if crd["metadata"]["name"].as_str() != Some(expected_name.as_str()) {
            return Err(format!(
                "metadata.name: Invalid value: must be spec.names.plural+\".\"+spec.group ({expected_name})"
            ));
        }
        Ok(Self {
            group,
            versions,
            plural,
            kind,
            namespaced,
            status_subresource: served.iter().any(|v| v["subresources"]["status"].is_object()),
            custom: true,
            schema: served.first().map(|v| v["schema"]["openAPIV3Schema"].clone()).unwrap_or_default(),
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
        let mut namespaces = ResourceType::builtin("", "namespaces", "Namespace", false);
        namespaces.status_subresource = true;
        let mut crds = ResourceType::builtin(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
        );
        crds.status_subresource = true;
        let builtins = [
            namespaces,
            ResourceType::builtin("", "secrets", "Secret", true),
            ResourceType::builtin("events.k8s.io", "events", "Event", true),
            ResourceType::builtin("coordination.k8s.io", "leases", "Lease", true),
            crds,
        ];
        Self { types: builtins.into_iter().map(|t| (t.key(), t)).collect() }
    }

    pub fn get(&self, key: &ResourceKey) -> Option<&ResourceType> {
        self.types.get(key)
    }

    /// The type serving `group/version` `plural`, if that version is served.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.get(&(group.to_string(), plural.to_string())).filter(|t| t.versions.iter().any(|v| v == version))
    }

    pub fn insert(&mut self, rt: ResourceType) {
        self.types.insert(rt.key(), rt);
    }

    pub fn remove(&mut self, key: &ResourceKey) {
        self.types.remove(key);
    }
}
