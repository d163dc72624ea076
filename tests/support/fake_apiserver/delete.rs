//! DELETE: finalizers, preconditions, and the special deletion of namespaces and CRDs, as in
//! kube-apiserver's generic store (`Store.Delete`) and the namespace and CRD storages.

use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::resources::{CRD_CLEANUP_FINALIZER, ResourceType};
use super::store::{ObjectKey, State, finalizers, is_deleting, meta_mut, meta_str, now, set_meta};

/// The immortal namespaces the NamespaceLifecycle admission plugin refuses to delete.
const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// The parts of `DeleteOptions` that are modelled.
#[derive(Debug, Default, Clone)]
pub(crate) struct DeleteOptions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub orphan: bool,
}

impl DeleteOptions {
    /// From the request body (may be empty) and the `propagationPolicy` query parameter.
    pub fn parse(body: &[u8], propagation_query: Option<&str>) -> ApiResult<Self> {
        let options: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
        };
        let text = |v: &Value| v.as_str().map(str::to_string);
        let policy = options["propagationPolicy"].as_str().or(propagation_query);
        Ok(Self {
            uid: text(&options["preconditions"]["uid"]),
            resource_version: text(&options["preconditions"]["resourceVersion"]),
            orphan: policy == Some("Orphan") || options["orphanDependents"] == json!(true),
        })
    }
}

/// The outcome of a delete: the object as it is now (terminating) or as it was when removed.
pub(crate) struct Deleted {
    pub object: Value,
    pub removed: bool,
}

/// DELETE of one object; also what the namespace controller, the CRD finalizer and the garbage
/// collector do to the objects they delete.
pub(crate) fn delete(
    st: &mut State,
    rt: &ResourceType,
    key: &ObjectKey,
    options: &DeleteOptions,
) -> ApiResult<Deleted> {
    let name = key.name.as_str();
    let Some(obj) = st.get(key).cloned() else {
        return Err(ApiError::not_found(rt, name));
    };
    if let Some(uid) = &options.uid
        && Some(uid.as_str()) != meta_str(&obj, "uid")
    {
        let why = format!(
            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
            meta_str(&obj, "uid").unwrap_or_default()
        );
        return Err(ApiError::conflict(rt, name, &why));
    }
    if let Some(rv) = &options.resource_version
        && Some(rv.as_str()) != meta_str(&obj, "resourceVersion")
    {
        let why = format!(
            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
            meta_str(&obj, "resourceVersion").unwrap_or_default()
        );
        return Err(ApiError::conflict(rt, name, &why));
    }
    if rt.is_namespace() && IMMORTAL_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden(rt, name, "this namespace may not be deleted"));
    }
    let existing = || Ok(Deleted { object: obj.clone(), removed: false });
    if rt.is_namespace() {
        // The namespace REST storage only marks it; the namespace controller does the rest.
        if is_deleting(&obj) {
            return existing();
        }
        let mut marked = obj.clone();
        set_meta(&mut marked, "deletionTimestamp", json!(now()));
        marked["status"]["phase"] = json!("Terminating");
        return Ok(Deleted { object: st.replace(key.clone(), marked), removed: false });
    }
    if rt.is_crd() {
        // The CRD storage marks it and adds the cleanup finalizer; the finalizer controller
        // deletes the instances and then the CRD.
        if is_deleting(&obj) {
            return existing();
        }
        let mut marked = obj.clone();
        set_meta(&mut marked, "deletionTimestamp", json!(now()));
        let mut fins = finalizers(&marked);
        if !fins.iter().any(|f| f == CRD_CLEANUP_FINALIZER) {
            fins.push(CRD_CLEANUP_FINALIZER.into());
        }
        set_meta(&mut marked, "finalizers", json!(fins));
        let terminating = json!({
            "type": "Terminating", "status": "True", "lastTransitionTime": now(),
            "reason": "InstanceDeletionPending",
            "message": "CustomResourceDefinition marked for deletion; CustomResource deletion will begin soon",
        });
        let mut conditions = marked["status"]["conditions"].as_array().cloned().unwrap_or_default();
        conditions.retain(|c| c["type"] != "Terminating");
        conditions.push(terminating);
        marked["status"]["conditions"] = json!(conditions);
        return Ok(Deleted { object: st.replace(key.clone(), marked), removed: false });
    }
    if is_deleting(&obj) {
        return existing();
    }
    if options.orphan
        && let Some(uid) = meta_str(&obj, "uid")
    {
        orphan_dependents(st, uid);
    }
    if !finalizers(&obj).is_empty() {
        let mut marked = obj.clone();
        set_meta(&mut marked, "deletionTimestamp", json!(now()));
        set_meta(&mut marked, "deletionGracePeriodSeconds", json!(0));
        if let Some(generation) = marked["metadata"]["generation"].as_i64().filter(|g| *g > 0) {
            set_meta(&mut marked, "generation", json!(generation + 1));
        }
        return Ok(Deleted { object: st.replace(key.clone(), marked), removed: false });
    }
    let last = st.remove(key).unwrap_or(obj);
    Ok(Deleted { object: last, removed: true })
}

/// What the garbage collector does for `propagationPolicy: Orphan`: drop the owner references.
fn orphan_dependents(st: &mut State, owner_uid: &str) {
    let dependents: Vec<(ObjectKey, Value)> = st
        .all_objects()
        .filter(|(_, o)| owner_refs(o).iter().any(|r| r["uid"] == owner_uid))
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect();
    for (key, mut obj) in dependents {
        let refs: Vec<Value> = owner_refs(&obj).into_iter().filter(|r| r["uid"] != owner_uid).collect();
        if refs.is_empty() {
            meta_mut(&mut obj).remove("ownerReferences");
        } else {
            set_meta(&mut obj, "ownerReferences", json!(refs));
        }
        st.replace(key, obj);
    }
}

pub(crate) fn owner_refs(obj: &Value) -> Vec<Value> {
    obj["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default()
}

/// The body of a DELETE response: the object, or a `Success` Status for types whose storage
/// does not return deleted objects (Secret, ConfigMap, Event, Lease) once the object is gone.
pub(crate) fn delete_response(rt: &ResourceType, outcome: &Deleted, already_deleting: bool) -> Value {
    if rt.returns_deleted_object() || !(outcome.removed || already_deleting) {
        return outcome.object.clone();
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": meta_str(&outcome.object, "name"),
            "group": rt.group,
            "kind": rt.plural,
            "uid": meta_str(&outcome.object, "uid"),
        },
    })
}
