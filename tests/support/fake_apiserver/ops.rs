//! The verbs: what create, update, patch and delete do to stored objects, following the
//! generic registry store of kube-apiserver (`k8s.io/apiserver/pkg/registry/generic/registry`)
//! and the strategies of the types served here.

use http::StatusCode;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult, FieldError};
use super::managed::{self, Scope};
use super::patch;
use super::resources::ResourceType;
use super::schema;
use super::selectors::Filter;
use super::store::{ObjectKey, State, finalizers, is_deleting, meta_mut, meta_str, now, set_meta};
use super::validation::{self, Write};

/// Which part of an object a request addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sub {
    Main,
    Status,
}

/// The object a request is about.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub rt: ResourceType,
    pub version: String,
    /// Empty for cluster-scoped resources.
    pub namespace: String,
    pub sub: Sub,
    /// `fieldValidation=Strict`: unknown fields of a custom resource are an error, not pruned.
    pub strict: bool,
}

impl Target {
    pub fn key(&self, name: &str) -> ObjectKey {
        ObjectKey::new(&self.rt.key(), &self.namespace, name)
    }

    fn scope(&self) -> Scope {
        match self.sub {
            Sub::Status => Scope::Status,
            Sub::Main => Scope::Main { with_status: !self.rt.status_subresource },
        }
    }
}

/// How a write's managedFields are computed.
pub(crate) enum Ownership<'a> {
    /// A create/update/patch by this manager: it takes over the fields it changes.
    Update(&'a str),
    /// Server-side apply already computed them.
    Precomputed,
}

fn as_object(body: Value) -> ApiResult<Value> {
    if body.is_object() {
        Ok(body)
    } else {
        Err(ApiError::bad_request("the body of the request must be a JSON object"))
    }
}

fn namespace_key(name: &str) -> ObjectKey {
    ObjectKey::new(&(String::new(), "namespaces".into()), "", name)
}

fn crd_key(rt: &ResourceType) -> ObjectKey {
    ObjectKey::new(
        &("apiextensions.k8s.io".into(), "customresourcedefinitions".into()),
        "",
        &format!("{}.{}", rt.plural, rt.group),
    )
}

pub(crate) fn get(st: &State, t: &Target, name: &str) -> ApiResult<Value> {
    st.get(&t.key(name)).cloned().ok_or_else(|| ApiError::not_found(&t.rt, name))
}

/// One page of a list.
pub(crate) struct ListPage {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: usize,
}

/// Lists matching objects in key order. `limit`/`continue` paginate over the current state
/// (not over a snapshot at the first page's resourceVersion, as etcd would).
pub(crate) fn list(st: &State, t: &Target, filter: &Filter, limit: usize, cont: Option<&str>) -> ApiResult<ListPage> {
    let (resource_version, after) = match cont {
        None => (st.current_rv(), None),
        Some(token) => {
            let bad = || ApiError::bad_request("continue key is not valid");
            let bytes = hex::decode(token).map_err(|_| bad())?;
            let (rv, ns, name): (u64, String, String) = serde_json::from_slice(&bytes).map_err(|_| bad())?;
            (rv, Some((ns, name)))
        }
    };
    let mut matching = st
        .objects_of(&t.rt.key())
        .filter(|(k, _)| after.as_ref().is_none_or(|(ns, name)| (&k.namespace, &k.name) > (ns, name)))
        .filter(|(_, v)| filter.matches(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<Vec<_>>();
    let mut continue_token = None;
    let mut remaining = 0;
    if limit > 0 && matching.len() > limit {
        remaining = matching.len() - limit;
        matching.truncate(limit);
        if let Some((last, _)) = matching.last() {
            let token = serde_json::to_vec(&(resource_version, &last.namespace, &last.name))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            continue_token = Some(hex::encode(token));
        }
    }
    Ok(ListPage { items: matching.into_iter().map(|(_, v)| v).collect(), resource_version, continue_token, remaining })
}

/// NamespaceLifecycle admission and the CRD handler's refusal to create while terminating.
fn admit_create(st: &State, rt: &ResourceType, namespace: &str, name: &str) -> ApiResult<()> {
    if rt.custom && st.get(&crd_key(rt)).is_some_and(is_deleting) {
        return Err(ApiError::method_not_allowed(
            rt,
            "create not allowed while custom resource definition is terminating",
        ));
    }
    if rt.namespaced {
        match st.get(&namespace_key(namespace)) {
            None => return Err(ApiError::namespace_not_found(namespace)),
            Some(ns) if is_deleting(ns) || ns["status"]["phase"] == "Terminating" => {
                return Err(ApiError::namespace_terminating(rt, name, namespace));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Checks `metadata.namespace` of a request body against the URL and fills it in.
fn check_namespace(t: &Target, obj: &mut Value) -> ApiResult<()> {
    if t.rt.namespaced {
        match meta_str(obj, "namespace") {
            Some(ns) if !ns.is_empty() && ns != t.namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => set_meta(obj, "namespace", json!(t.namespace)),
        }
    } else {
        meta_mut(obj).remove("namespace");
    }
    Ok(())
}

fn check_type(t: &Target, obj: &mut Value) -> ApiResult<()> {
    let expected_version = t.rt.api_version(&t.version);
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != expected_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({expected_version})"
            )));
        }
        _ => obj["apiVersion"] = json!(expected_version),
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != t.rt.kind => Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            t.rt.kind
        ))),
        _ => {
            obj["kind"] = json!(t.rt.kind);
            Ok(())
        }
    }
}

fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect();
    format!("{prefix}{suffix}")
}

/// The name rules of the served types: a DNS-1123 label for namespaces, a DNS-1123
/// subdomain for everything else.
fn validate_name(rt: &ResourceType, name: &str) -> ApiResult<()> {
    let label = |s: &str| {
        let bytes = s.as_bytes();
        !bytes.is_empty()
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    };
    let error = if rt.is_namespace() {
        (!(label(name) && name.len() <= 63)).then_some(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
             and must start and end with an alphanumeric character",
        )
    } else {
        (!(name.len() <= 253 && name.split('.').all(label))).then_some(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', \
             and must start and end with an alphanumeric character",
        )
    };
    match error {
        Some(detail) => Err(ApiError::invalid(rt, name, &[FieldError::invalid("metadata.name", &json!(name), detail)])),
        None => Ok(()),
    }
}

/// Drops the fields of a custom resource that its CRD's schema does not declare; with
/// `fieldValidation=Strict`, refuses them instead.
fn prune(t: &Target, obj: &mut Value) -> ApiResult<()> {
    let Some(schema) = t.rt.schemas.get(&t.version) else {
        return Ok(());
    };
    let pruned = schema::prune(obj, schema);
    if t.strict && !pruned.is_empty() {
        let fields: Vec<String> = pruned.iter().map(|p| format!("unknown field \"{}\"", &p[1..])).collect();
        return Err(ApiError::bad_request(format!("strict decoding error: {}", fields.join(", "))));
    }
    Ok(())
}

/// What a write's object goes through before it is stored: the decoding of custom resources
/// (pruning, then the dropping of disallowed nulls and the CRD's defaults), and the conversion
/// and defaulting of Secrets that clients can observe (the write-only `stringData` is merged
/// into `data` as base64; `type` defaults to `Opaque`).
fn normalize(t: &Target, obj: &mut Value) -> ApiResult<()> {
    prune(t, obj)?;
    if let Some(schema) = t.rt.schemas.get(&t.version) {
        schema::prune_nulls(obj, schema);
        schema::default(obj, schema);
    }
    if !(t.rt.group.is_empty() && t.rt.plural == "secrets") {
        return Ok(());
    }
    if let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
        for (key, value) in string_data {
            let bytes = value.as_str().unwrap_or_default().as_bytes().to_vec();
            obj["data"][key] = serde_json::to_value(k8s_openapi::ByteString(bytes)).unwrap_or_default();
        }
    }
    if obj["type"].as_str().is_none_or(str::is_empty) {
        obj["type"] = json!("Opaque");
    }
    Ok(())
}

/// Validates a custom resource against its CRD's schema (types, formats, ..., CEL rules), as
/// the custom resource strategies do: `old` is the stored object of an update.
fn validate_custom(t: &Target, name: &str, old: Option<&Value>, new: &Value) -> ApiResult<()> {
    let Some(schema) = t.rt.schemas.get(&t.version) else {
        return Ok(());
    };
    let write = match (old, t.sub) {
        (None, _) => Write::Create,
        (Some(old), Sub::Main) => Write::Update(old),
        (Some(old), Sub::Status) => Write::Status(old),
    };
    let errors = validation::validate(schema, new, write);
    if errors.is_empty() { Ok(()) } else { Err(ApiError::invalid(&t.rt, name, &errors)) }
}

/// POST: creates an object (also used by server-side apply of a missing object).
pub(crate) fn create(st: &mut State, t: &Target, body: Value, ownership: Ownership) -> ApiResult<Value> {
    let mut obj = as_object(body)?;
    check_type(t, &mut obj)?;
    check_namespace(t, &mut obj)?;
    let rt = &t.rt;
    let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
        (Some(name), _) if !name.is_empty() => name.to_string(),
        (_, Some(prefix)) if !prefix.is_empty() => loop {
            let candidate = generate_name(prefix);
            if st.get(&t.key(&candidate)).is_none() {
                break candidate;
            }
        },
        _ => {
            return Err(ApiError::invalid(
                rt,
                "",
                &[FieldError::required("metadata.name", "name or generateName is required")],
            ));
        }
    };
    admit_create(st, rt, &t.namespace, &name)?;
    validate_name(rt, &name)?;
    if meta_str(&obj, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
        return Err(ApiError::internal("resourceVersion should not be set on objects to be created"));
    }

    let uid = st.new_uid();
    let meta = meta_mut(&mut obj);
    meta.insert("name".into(), json!(name));
    meta.insert("uid".into(), json!(uid));
    meta.insert("creationTimestamp".into(), json!(now()));
    for system_field in ["deletionTimestamp", "deletionGracePeriodSeconds", "generation", "selfLink"] {
        meta.remove(system_field);
    }
    if rt.has_generation() {
        meta.insert("generation".into(), json!(1));
    }
    if rt.status_subresource
        && let Some(map) = obj.as_object_mut()
    {
        map.remove("status");
    }
    if rt.is_namespace() {
        obj["spec"]["finalizers"] = json!(["kubernetes"]);
        obj["status"] = json!({ "phase": "Active" });
    }
    normalize(t, &mut obj)?;
    validate_custom(t, &name, None, &obj)?;
    let crd_type = if rt.is_crd() {
        let crd_type = ResourceType::from_crd(&obj).map_err(|e| crd_invalid(rt, &name, &e))?;
        obj["status"] = crd_status(&obj, &crd_type);
        Some(crd_type)
    } else {
        None
    };
    if let Ownership::Update(manager) = ownership {
        managed::track_update(None, &mut obj, manager, t.scope());
    }

    let key = t.key(&name);
    if st.get(&key).is_some() {
        return Err(ApiError::already_exists(rt, &name));
    }
    let created = st.insert(key, obj);
    if let Some(crd_type) = crd_type {
        st.registry.insert(crd_type);
    }
    Ok(created)
}

fn crd_invalid(rt: &ResourceType, name: &str, error: &str) -> ApiError {
    let (field, detail) = error.split_once(": ").unwrap_or(("spec", error));
    ApiError::invalid(rt, name, &[FieldError::invalid(field, &Value::Null, detail)])
}

/// The status the apiextensions controllers give an accepted CRD.
fn crd_status(crd: &Value, rt: &ResourceType) -> Value {
    let mut accepted = crd["spec"]["names"].clone();
    accepted["singular"] = json!(rt.singular);
    accepted["listKind"] = json!(rt.list_kind());
    let condition = |kind: &str, reason: &str, message: &str| json!({ "type": kind, "status": "True", "lastTransitionTime": now(), "reason": reason, "message": message });
    json!({
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": accepted,
        "storedVersions": [rt.versions.first()],
    })
}

/// What the update strategies do before a write: keep what this request may not change.
fn prepare_update(t: &Target, old: &Value, incoming: Value) -> ApiResult<Value> {
    let rt = &t.rt;
    let name = meta_str(old, "name").unwrap_or_default().to_string();
    let mut new = match t.sub {
        Sub::Status => {
            let mut new = old.clone();
            match incoming.get("status") {
                Some(status) => new["status"] = status.clone(),
                None => {
                    if let Some(map) = new.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
            if let Some(mf) = incoming["metadata"].get("managedFields") {
                set_meta(&mut new, "managedFields", mf.clone());
            }
            new
        }
        Sub::Main => {
            let mut new = incoming;
            if rt.status_subresource {
                match old.get("status") {
                    Some(status) => new["status"] = status.clone(),
                    None => {
                        if let Some(map) = new.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
            }
            if rt.is_namespace() {
                // spec.finalizers only changes through /finalize.
                new["spec"]["finalizers"] = old["spec"]["finalizers"].clone();
            }
            new
        }
    };
    new["apiVersion"] = old["apiVersion"].clone();
    new["kind"] = old["kind"].clone();

    let mut errors = Vec::new();
    let old_meta = old["metadata"].clone();
    let meta = meta_mut(&mut new);
    for field in ["name", "namespace", "creationTimestamp", "resourceVersion", "generation"] {
        match old_meta.get(field) {
            Some(v) => meta.insert(field.into(), v.clone()),
            None => meta.remove(field),
        };
    }
    match meta.get("uid") {
        None => {
            meta.insert("uid".into(), old_meta["uid"].clone());
        }
        Some(uid) if *uid == Value::String(String::new()) => {
            meta.insert("uid".into(), old_meta["uid"].clone());
        }
        Some(uid) if *uid != old_meta["uid"] => errors.push(FieldError::immutable("metadata.uid", uid)),
        Some(_) => {}
    }
    // An update can neither set nor clear deletionTimestamp / deletionGracePeriodSeconds.
    for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
        match (old_meta.get(field), meta.get(field)) {
            (Some(old_value), _) => {
                meta.insert(field.into(), old_value.clone());
            }
            (None, Some(new_value)) if !new_value.is_null() => {
                errors.push(FieldError::immutable(&format!("metadata.{field}"), new_value));
            }
            (None, _) => {
                meta.remove(field);
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(rt, &name, &errors));
    }
    Ok(new)
}

/// Everything but `metadata`: a change here bumps `metadata.generation`.
fn without_metadata(obj: &Value) -> Value {
    let mut copy = obj.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
    }
    copy
}

/// The object with managedFields timestamps cleared, to recognise no-op writes.
fn without_managed_times(obj: &Value) -> Value {
    let mut copy = obj.clone();
    if let Some(Value::Array(entries)) = copy["metadata"].get_mut("managedFields") {
        for e in entries {
            if let Some(map) = e.as_object_mut() {
                map.remove("time");
            }
        }
    }
    copy
}

/// The common tail of update, patch and apply on an existing object.
fn finish_write(
    st: &mut State,
    t: &Target,
    name: &str,
    old: &Value,
    mut new: Value,
    ownership: Ownership,
) -> ApiResult<Value> {
    let rt = &t.rt;
    if is_deleting(old) {
        let before = finalizers(old);
        let added: Vec<String> = finalizers(&new).into_iter().filter(|f| !before.contains(f)).collect();
        if !added.is_empty() {
            let detail = format!(
                "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                added.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ")
            );
            return Err(ApiError::invalid(rt, name, &[FieldError::forbidden("metadata.finalizers", &detail)]));
        }
    }
    normalize(t, &mut new)?;
    validate_custom(t, name, Some(old), &new)?;
    let crd_type =
        if rt.is_crd() { Some(ResourceType::from_crd(&new).map_err(|e| crd_invalid(rt, name, &e))?) } else { None };
    // Only the main resource's strategy bumps the generation; status writes never do.
    if rt.has_generation() && t.sub == Sub::Main && without_metadata(old) != without_metadata(&new) {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        set_meta(&mut new, "generation", json!(generation));
    }
    if let Ownership::Update(manager) = ownership {
        managed::track_update(Some(old), &mut new, manager, t.scope());
    }
    if without_managed_times(old) == without_managed_times(&new) {
        return Ok(old.clone());
    }
    let key = t.key(name);
    let spec_finalizers_pending =
        rt.is_namespace() && new["spec"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    if is_deleting(&new) && finalizers(&new).is_empty() && !spec_finalizers_pending {
        // Store.Update with emptied finalizers deletes instead (deleteWithoutFinalizers).
        let last = st.remove(&key).unwrap_or_else(|| old.clone());
        if rt.is_crd() {
            unregister_crd(st, &new);
        }
        return Ok(last);
    }
    let stored = st.replace(key, new);
    if let Some(crd_type) = crd_type {
        st.registry.insert(crd_type);
    }
    Ok(stored)
}

fn unregister_crd(st: &mut State, crd: &Value) {
    if let Ok(rt) = ResourceType::from_crd(crd) {
        st.registry.remove(&rt.key());
        st.close_watchers_of(&rt.key());
    }
}

/// PUT.
pub(crate) fn update(st: &mut State, t: &Target, name: &str, body: Value, manager: &str) -> ApiResult<Value> {
    let mut body = as_object(body)?;
    check_type(t, &mut body)?;
    if meta_str(&body, "name") != Some(name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta_str(&body, "name").unwrap_or_default()
        )));
    }
    check_namespace(t, &mut body)?;
    let old = get(st, t, name)?;
    match meta_str(&body, "resourceVersion").filter(|rv| !rv.is_empty()) {
        None if !t.rt.allow_unconditional_update() => {
            return Err(ApiError::invalid(
                &t.rt,
                name,
                &[FieldError {
                    cause: "FieldValueInvalid",
                    field: "metadata.resourceVersion".into(),
                    body: "Invalid value: 0x0: must be specified for an update".into(),
                }],
            ));
        }
        Some(rv) if Some(rv) != meta_str(&old, "resourceVersion") => {
            return Err(ApiError::modified(&t.rt, name));
        }
        _ => {}
    }
    let new = prepare_update(t, &old, body)?;
    finish_write(st, t, name, &old, new, Ownership::Update(manager))
}

/// Parameters of a PATCH.
pub(crate) struct PatchRequest<'a> {
    /// The media type, without parameters.
    pub content_type: &'a str,
    pub body: &'a [u8],
    /// `fieldManager` from the query, if given.
    pub field_manager: Option<&'a str>,
    /// The manager recorded for non-apply patches without `fieldManager`.
    pub default_manager: &'a str,
    pub force: bool,
}

const APPLY: &str = "application/apply-patch+yaml";
const JSON_PATCH: &str = "application/json-patch+json";
const MERGE_PATCH: &str = "application/merge-patch+json";
const STRATEGIC_PATCH: &str = "application/strategic-merge-patch+json";

fn parse_json(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

/// PATCH. Returns 201 when server-side apply created the object.
pub(crate) fn patch(st: &mut State, t: &Target, name: &str, req: &PatchRequest) -> ApiResult<(StatusCode, Value)> {
    let rt = &t.rt;
    if req.content_type == APPLY {
        return apply(st, t, name, req);
    }
    let manager = req.field_manager.unwrap_or(req.default_manager);
    let old = get(st, t, name)?;
    let mut patched = old.clone();
    match req.content_type {
        JSON_PATCH => patch::json_patch(&mut patched, &parse_json(req.body)?)?,
        MERGE_PATCH => patch::merge_patch(&mut patched, &parse_json(req.body)?),
        STRATEGIC_PATCH if rt.supports_strategic_merge() => {
            patch::strategic_merge_patch(&mut patched, &parse_json(req.body)?)?;
        }
        other => {
            let mut accepted = vec![JSON_PATCH, MERGE_PATCH, APPLY];
            if rt.supports_strategic_merge() {
                accepted.push(STRATEGIC_PATCH);
            }
            return Err(ApiError::unsupported_media_type(other, &accepted));
        }
    }
    let patched = as_object(patched)?;
    if meta_str(&patched, "name") != Some(name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta_str(&patched, "name").unwrap_or_default()
        )));
    }
    let rv = meta_str(&patched, "resourceVersion").unwrap_or_default();
    if !rv.is_empty() && Some(rv) != meta_str(&old, "resourceVersion") {
        return Err(ApiError::modified(rt, name));
    }
    let new = prepare_update(t, &old, patched)?;
    Ok((StatusCode::OK, finish_write(st, t, name, &old, new, Ownership::Update(manager))?))
}

fn apply(st: &mut State, t: &Target, name: &str, req: &PatchRequest) -> ApiResult<(StatusCode, Value)> {
    let rt = &t.rt;
    let Some(manager) = req.field_manager.filter(|m| !m.is_empty()) else {
        return Err(ApiError::invalid_kind(
            "PatchOptions.meta.k8s.io",
            "meta.k8s.io",
            "PatchOptions",
            "",
            &[FieldError::required("fieldManager", "is required for apply patch")],
        ));
    };
    let text = std::str::from_utf8(req.body).map_err(|_| ApiError::bad_request("apply patch is not UTF-8"))?;
    let applied: Value = serde_json::from_str(text)
        .or_else(|_| serde_saphyr::from_str(text))
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    let mut applied = as_object(applied)?;
    if applied.get("kind").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(format!("Object 'Kind' is missing in '{applied}'")));
    }
    if applied.get("apiVersion").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(format!("Object 'apiVersion' is missing in '{applied}'")));
    }
    if !applied["metadata"]["managedFields"].is_null() {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    check_type(t, &mut applied)?;
    check_namespace(t, &mut applied)?;
    prune(t, &mut applied)?;
    let scope = t.scope();
    // The name is checked on the merged object (`checkName`): an applied configuration
    // without a name is fine for an existing object, which keeps its own.
    let existing = st.get(&t.key(name)).cloned();
    let applied_name = meta_str(&applied, "name").unwrap_or_default();
    if applied_name != name && (existing.is_none() || !applied_name.is_empty()) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({applied_name}) does not match the name on the URL ({name})"
        )));
    }

    let Some(old) = existing else {
        if t.sub == Sub::Status {
            return Err(ApiError::not_found(rt, name));
        }
        let mut obj = managed::apply(None, &applied, manager, scope, req.force)
            .map_err(|conflicts| ApiError::apply_conflicts(&conflicts))?;
        obj["apiVersion"] = applied["apiVersion"].clone();
        obj["kind"] = applied["kind"].clone();
        set_meta(&mut obj, "name", json!(name));
        if rt.namespaced {
            set_meta(&mut obj, "namespace", json!(t.namespace));
        }
        return Ok((StatusCode::CREATED, create(st, t, obj, Ownership::Precomputed)?));
    };
    let rv = meta_str(&applied, "resourceVersion").unwrap_or_default();
    if !rv.is_empty() && Some(rv) != meta_str(&old, "resourceVersion") {
        return Err(ApiError::modified(rt, name));
    }
    let merged = managed::apply(Some(&old), &applied, manager, scope, req.force)
        .map_err(|conflicts| ApiError::apply_conflicts(&conflicts))?;
    let new = prepare_update(t, &old, merged)?;
    Ok((StatusCode::OK, finish_write(st, t, name, &old, new, Ownership::Precomputed)?))
}
