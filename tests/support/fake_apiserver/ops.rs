//! The verbs: what create, patch, apply and delete do to stored objects, following the generic
//! registry store of kube-apiserver (`k8s.io/apiserver/pkg/registry/generic/registry`) and the
//! strategies of the types served here.

use http::StatusCode;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::managed::{self, Scope};
use super::patch;
use super::resources::{CRD_CLEANUP_FINALIZER, ResourceType};
use super::store::{ObjectKey, State, finalizers, is_deleting, meta_mut, meta_str, now, set_meta};

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
    /// A create or patch by this manager: it takes over the fields it changes.
    Update(&'a str),
    /// Server-side apply already computed them.
    Precomputed,
}

fn crd_key(rt: &ResourceType) -> ObjectKey {
    let crds = ("apiextensions.k8s.io".to_string(), "customresourcedefinitions".to_string());
    ObjectKey::new(&crds, "", &format!("{}.{}", rt.plural, rt.group))
}

pub(crate) fn get(st: &State, t: &Target, name: &str) -> ApiResult<Value> {
    st.get(&t.key(name)).cloned().ok_or_else(|| ApiError::not_found(&t.rt, name))
}

/// `apiVersion`, `kind` and `metadata.namespace` of a body must match the URL; missing ones are
/// filled in.
fn check_body(t: &Target, obj: &mut Value) -> ApiResult<()> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    }
    let expected = [("apiVersion", t.rt.api_version(&t.version)), ("kind", t.rt.kind.clone())];
    for (field, expected) in expected {
        match obj[field].as_str() {
            Some(v) if v != expected => {
                return Err(ApiError::bad_request(format!("the {field} in the data ({v}) does not match {expected}")));
            }
            _ => obj[field] = json!(expected),
        }
    }
    if !t.rt.namespaced {
        meta_mut(obj).remove("namespace");
    } else if meta_str(obj, "namespace").is_some_and(|ns| !ns.is_empty() && ns != t.namespace) {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    } else {
        set_meta(obj, "namespace", json!(t.namespace));
    }
    Ok(())
}

/// What a write's object goes through before it is stored: a Secret's write-only `stringData`
/// is merged into `data` (base64) and its `type` defaults to `Opaque`. Custom resources are not
/// checked against their schema (the real server's job; `tests/crd.rs` and the real-server e2e
/// run cover it).
fn normalize(t: &Target, obj: &mut Value) {
    if !(t.rt.group.is_empty() && t.rt.plural == "secrets") {
        return;
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
}

/// POST (also server-side apply of a missing object).
pub(crate) fn create(st: &mut State, t: &Target, mut obj: Value, ownership: Ownership) -> ApiResult<Value> {
    check_body(t, &mut obj)?;
    let rt = &t.rt;
    let name = meta_str(&obj, "name").unwrap_or_default().to_string();
    if name.is_empty() {
        return Err(ApiError::invalid(
            rt,
            "",
            "FieldValueRequired",
            "metadata.name",
            "Required value: name is required",
        ));
    }
    // NamespaceLifecycle admission, and the CRD handler's refusal while the CRD terminates.
    if rt.custom && st.get(&crd_key(rt)).is_some_and(is_deleting) {
        let why = "create not allowed while custom resource definition is terminating";
        return Err(ApiError::method_not_allowed(rt, why));
    }
    if rt.namespaced {
        let ns_key = ObjectKey::new(&(String::new(), "namespaces".into()), "", &t.namespace);
        match st.get(&ns_key) {
            None => return Err(ApiError::namespace_not_found(&t.namespace)),
            Some(ns) if is_deleting(ns) => return Err(ApiError::namespace_terminating(rt, &name, &t.namespace)),
            Some(_) => {}
        }
    }
    let uid = st.new_uid();
    let meta = meta_mut(&mut obj);
    meta.insert("uid".into(), json!(uid));
    meta.insert("creationTimestamp".into(), json!(now()));
    for system_field in ["deletionTimestamp", "deletionGracePeriodSeconds", "generation", "resourceVersion"] {
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
    normalize(t, &mut obj);
    let crd_type = if rt.is_crd() {
        let crd_type = crd_type(rt, &name, &obj)?;
        let established = json!({ "type": "Established", "status": "True", "lastTransitionTime": now(),
            "reason": "InitialNamesAccepted", "message": "the initial names have been accepted" });
        obj["status"] = json!({ "conditions": [established], "acceptedNames": obj["spec"]["names"] });
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
    let created = st.put(key, obj);
    if let Some(crd_type) = crd_type {
        st.registry.insert(crd_type);
    }
    Ok(created)
}

fn crd_type(rt: &ResourceType, name: &str, crd: &Value) -> ApiResult<ResourceType> {
    ResourceType::from_crd(crd).map_err(|e| {
        let (field, detail) = e.split_once(": ").unwrap_or(("spec", &e));
        ApiError::invalid(rt, name, "FieldValueInvalid", field, detail)
    })
}

/// What the update strategies do before a write: keep what this request may not change.
fn prepare_update(t: &Target, old: &Value, incoming: Value) -> Value {
    let keep = |new: &mut Value, field: &str| match old.get(field) {
        Some(value) => new[field] = value.clone(),
        None => {
            new.as_object_mut().map(|m| m.remove(field));
        }
    };
    let mut new = match t.sub {
        Sub::Status => {
            let mut new = old.clone();
            match incoming.get("status") {
                Some(status) => new["status"] = status.clone(),
                None => keep(&mut new, "status"),
            }
            if let Some(managed_fields) = incoming["metadata"].get("managedFields") {
                set_meta(&mut new, "managedFields", managed_fields.clone());
            }
            new
        }
        Sub::Main => {
            let mut new = incoming;
            if t.rt.status_subresource {
                keep(&mut new, "status");
            }
            if t.rt.is_namespace() {
                new["spec"]["finalizers"] = old["spec"]["finalizers"].clone();
            }
            new
        }
    };
    keep(&mut new, "apiVersion");
    keep(&mut new, "kind");
    // System fields; an update can neither set nor clear the deletion timestamp.
    let old_meta = &old["metadata"];
    let meta = meta_mut(&mut new);
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "resourceVersion",
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old_meta.get(field) {
            Some(v) => meta.insert(field.into(), v.clone()),
            None => meta.remove(field),
        };
    }
    new
}

/// The common tail of patch and apply on an existing object.
fn finish_write(st: &mut State, t: &Target, old: &Value, mut new: Value, ownership: Ownership) -> ApiResult<Value> {
    let (rt, name) = (&t.rt, meta_str(old, "name").unwrap_or_default().to_string());
    if is_deleting(old) {
        let before = finalizers(old);
        let added: Vec<String> = finalizers(&new).into_iter().filter(|f| !before.contains(f)).collect();
        if !added.is_empty() {
            let body = format!(
                "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                added.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ")
            );
            return Err(ApiError::invalid(rt, &name, "FieldValueForbidden", "metadata.finalizers", &body));
        }
    }
    normalize(t, &mut new);
    let crd_type = if rt.is_crd() { Some(crd_type(rt, &name, &new)?) } else { None };
    // Only the main resource's strategy bumps the generation, when anything but metadata changes.
    let without_metadata = |o: &Value| {
        let mut copy = o.clone();
        copy.as_object_mut().map(|m| m.remove("metadata"));
        copy
    };
    if rt.has_generation() && t.sub == Sub::Main && without_metadata(old) != without_metadata(&new) {
        set_meta(&mut new, "generation", json!(old["metadata"]["generation"].as_i64().unwrap_or(0) + 1));
    }
    if let Ownership::Update(manager) = ownership {
        managed::track_update(Some(old), &mut new, manager, t.scope());
    }
    if *old == new {
        return Ok(new); // A no-op: no new resourceVersion, no event.
    }
    let key = t.key(&name);
    if is_deleting(&new) && finalizers(&new).is_empty() && !rt.is_namespace() {
        // Store.Update with emptied finalizers deletes instead (deleteWithoutFinalizers).
        let last = st.remove(&key).unwrap_or(new);
        if let Some(crd_type) = crd_type {
            st.registry.remove(&crd_type.key());
            st.close_watchers_of(&crd_type.key());
        }
        return Ok(last);
    }
    let stored = st.put(key, new);
    if let Some(crd_type) = crd_type {
        st.registry.insert(crd_type);
    }
    Ok(stored)
}

/// Parameters of a PATCH.
pub(crate) struct PatchRequest<'a> {
    /// The media type, without parameters.
    pub content_type: &'a str,
    pub body: &'a [u8],
    /// `fieldManager` from the query, else (not for apply) the User-Agent up to its first `/`.
    pub manager: Option<&'a str>,
    pub force: bool,
}

const APPLY: &str = "application/apply-patch+yaml";
const JSON_PATCH: &str = "application/json-patch+json";
const MERGE_PATCH: &str = "application/merge-patch+json";
const STRATEGIC_PATCH: &str = "application/strategic-merge-patch+json";

/// PATCH. Returns 201 when server-side apply created the object.
pub(crate) fn patch(st: &mut State, t: &Target, name: &str, req: &PatchRequest) -> ApiResult<(StatusCode, Value)> {
    let body: Value = serde_json::from_slice(req.body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch (JSON only): {e}")))?;
    if req.content_type == APPLY {
        return apply(st, t, name, body, req);
    }
    let old = get(st, t, name)?;
    let mut patched = old.clone();
    match req.content_type {
        JSON_PATCH => patch::json_patch(&mut patched, &body)?,
        // A merge patch is a strategic merge patch for the built-ins served here (Lease,
        // Secret, Event, Namespace, CRD) as long as no list with a merge key is patched.
        MERGE_PATCH => patch::merge_patch(&mut patched, &body),
        STRATEGIC_PATCH if !t.rt.custom => patch::merge_patch(&mut patched, &body),
        other => return Err(ApiError::unsupported_media_type(other, &[JSON_PATCH, MERGE_PATCH, APPLY])),
    }
    let rv = meta_str(&patched, "resourceVersion").unwrap_or_default();
    if !rv.is_empty() && Some(rv) != meta_str(&old, "resourceVersion") {
        return Err(ApiError::modified(&t.rt, name));
    }
    let new = prepare_update(t, &old, patched);
    let stored = finish_write(st, t, &old, new, Ownership::Update(req.manager.unwrap_or_default()))?;
    Ok((StatusCode::OK, stored))
}

fn apply(
    st: &mut State,
    t: &Target,
    name: &str,
    mut applied: Value,
    req: &PatchRequest,
) -> ApiResult<(StatusCode, Value)> {
    let Some(manager) = req.manager.filter(|m| !m.is_empty()) else {
        return Err(ApiError::field_manager_required());
    };
    for field in ["apiVersion", "kind"] {
        if applied[field].as_str().is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(format!("Object '{field}' is missing in '{applied}'")));
        }
    }
    check_body(t, &mut applied)?;
    // An applied configuration may leave out the name of an existing object.
    let existing = st.get(&t.key(name)).cloned();
    if existing.is_none() && t.sub == Sub::Status {
        return Err(ApiError::not_found(&t.rt, name)); // Only the main resource creates.
    }
    let applied_name = meta_str(&applied, "name").unwrap_or_default();
    if applied_name != name && (existing.is_none() || !applied_name.is_empty()) {
        let why = format!("the name of the object ({applied_name}) does not match the name on the URL ({name})");
        return Err(ApiError::bad_request(why));
    }
    let merged = managed::apply(existing.as_ref(), &applied, manager, t.scope(), req.force)
        .map_err(|conflicts| ApiError::apply_conflicts(&conflicts))?;
    let Some(old) = existing else {
        let mut obj = merged;
        set_meta(&mut obj, "name", json!(name));
        return Ok((StatusCode::CREATED, create(st, t, obj, Ownership::Precomputed)?));
    };
    let rv = meta_str(&applied, "resourceVersion").unwrap_or_default();
    if !rv.is_empty() && Some(rv) != meta_str(&old, "resourceVersion") {
        return Err(ApiError::modified(&t.rt, name));
    }
    let new = prepare_update(t, &old, merged);
    Ok((StatusCode::OK, finish_write(st, t, &old, new, Ownership::Precomputed)?))
}

/// The outcome of a delete: the object as it is now (terminating) or as it was when removed.
pub(crate) struct Deleted {
    pub object: Value,
    pub removed: bool,
}

/// DELETE of one object (no preconditions, propagation policies or grace periods); also what
/// the namespace controller and the CRD finalizer do to the objects they delete.
///
/// A namespace only turns `Terminating` (the namespace controller does the rest); a CRD gets
/// the `customresourcecleanup.apiextensions.k8s.io` finalizer; an object with finalizers gets
/// `deletionTimestamp` (and grace period 0, and a generation bump); anything else goes.
pub(crate) fn delete(st: &mut State, rt: &ResourceType, key: &ObjectKey) -> ApiResult<Deleted> {
    let obj = st.get(key).cloned().ok_or_else(|| ApiError::not_found(rt, &key.name))?;
    if is_deleting(&obj) {
        return Ok(Deleted { object: obj, removed: false });
    }
    if !(rt.is_namespace() || rt.is_crd() || !finalizers(&obj).is_empty()) {
        let last = st.remove(key).unwrap_or(obj);
        return Ok(Deleted { object: last, removed: true });
    }
    let mut marked = obj;
    set_meta(&mut marked, "deletionTimestamp", json!(now()));
    if rt.is_namespace() {
        marked["status"]["phase"] = json!("Terminating");
    } else if rt.is_crd() {
        let mut fins = finalizers(&marked);
        fins.push(CRD_CLEANUP_FINALIZER.into());
        set_meta(&mut marked, "finalizers", json!(fins));
    } else {
        set_meta(&mut marked, "deletionGracePeriodSeconds", json!(0));
        if let Some(generation) = marked["metadata"]["generation"].as_i64() {
            set_meta(&mut marked, "generation", json!(generation + 1));
        }
    }
    Ok(Deleted { object: st.put(key.clone(), marked), removed: false })
}

/// The body of a DELETE response: the object, or a `Success` Status for the types whose
/// storage does not return deleted objects, once the object is gone.
pub(crate) fn delete_response(rt: &ResourceType, outcome: &Deleted) -> Value {
    if rt.returns_deleted_object() || !outcome.removed {
        return outcome.object.clone();
    }
    let (name, uid) = (meta_str(&outcome.object, "name"), meta_str(&outcome.object, "uid"));
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": { "name": name, "group": rt.group, "kind": rt.plural, "uid": uid },
    })
}
