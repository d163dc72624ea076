//! `Status` errors shaped like kube-apiserver's (`k8s.io/apimachinery/pkg/api/errors`).

use http::StatusCode;
use serde_json::{Value, json};

use super::resources::ResourceType;

/// A failed request, rendered as a `meta/v1 Status` with `status: Failure`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>, details: Value) -> Self {
        Self { code, reason, message: message.into(), details }
    }

    fn details(rt: &ResourceType, name: &str) -> Value {
        json!({ "name": name, "group": rt.group, "kind": rt.plural })
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        let message = format!("{} \"{name}\" not found", rt.qualified());
        Self::new(StatusCode::NOT_FOUND, "NotFound", message, Self::details(rt, name))
    }

    /// `namespaces "x" not found`, as the NamespaceLifecycle admission plugin says it.
    pub fn namespace_not_found(namespace: &str) -> Self {
        let details = json!({ "name": namespace, "kind": "namespaces" });
        Self::new(StatusCode::NOT_FOUND, "NotFound", format!("namespaces \"{namespace}\" not found"), details)
    }

    /// A path that names no served resource.
    pub fn unknown_resource() -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource", json!({}))
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        let message = format!("{} \"{name}\" already exists", rt.qualified());
        Self::new(StatusCode::CONFLICT, "AlreadyExists", message, Self::details(rt, name))
    }

    /// A stale `metadata.resourceVersion`.
    pub fn modified(rt: &ResourceType, name: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your \
             changes to the latest version and try again",
            rt.qualified()
        );
        Self::new(StatusCode::CONFLICT, "Conflict", message, Self::details(rt, name))
    }

    /// Server-side apply conflicts: `(manager, field)` pairs, as causes `FieldManagerConflict`.
    pub fn apply_conflicts(conflicts: &[(String, String)]) -> Self {
        let noun = if conflicts.len() == 1 { "conflict" } else { "conflicts" };
        let mut message = format!("Apply failed with {} {noun}:", conflicts.len());
        for (manager, field) in conflicts {
            message.push_str(&format!(" conflict with \"{manager}\": {field}"));
        }
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, f)| json!({ "reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": f }))
            .collect();
        Self::new(StatusCode::CONFLICT, "Conflict", message, json!({ "causes": causes }))
    }

    /// `422 Invalid` for one field, as `errors.NewInvalid`: `<Kind>.<group> "<name>" is invalid:
    /// <field>: <body>`, with one cause of type `cause` (e.g. `FieldValueInvalid`).
    pub fn invalid(rt: &ResourceType, name: &str, cause: &str, field: &str, body: &str) -> Self {
        let kind = if rt.group.is_empty() { rt.kind.clone() } else { format!("{}.{}", rt.kind, rt.group) };
        let causes = json!([{ "reason": cause, "message": body, "field": field }]);
        let details = json!({ "name": name, "group": rt.group, "kind": rt.kind, "causes": causes });
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {field}: {body}"),
            details,
        )
    }

    /// The 422 of a JSON patch that cannot be applied (e.g. a failed `test` operation).
    pub fn patch_not_applicable(why: String) -> Self {
        let details = json!({ "causes": [{ "reason": "UnexpectedServerResponse", "message": why }] });
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "the server rejected our request due to an error in our request",
            details,
        )
    }

    /// `422` for an apply patch without `fieldManager`.
    pub fn field_manager_required() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            json!({ "group": "meta.k8s.io", "kind": "PatchOptions" }),
        )
    }

    /// NamespaceLifecycle admission refusing a create in a terminating namespace.
    pub fn namespace_terminating(rt: &ResourceType, name: &str, namespace: &str) -> Self {
        let message = format!(
            "{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
            rt.qualified()
        );
        let mut details = Self::details(rt, name);
        details["causes"] = json!([{
            "reason": "NamespaceTerminating",
            "message": format!("namespace {namespace} is being terminated"),
            "field": "metadata.namespace",
        }]);
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message, details)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message, Value::Null)
    }

    pub fn method_not_allowed(rt: &ResourceType, message: impl Into<String>) -> Self {
        let details = json!({ "group": rt.group, "kind": rt.plural });
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message, details)
    }

    pub fn unsupported_media_type(content_type: &str, accepted: &[&str]) -> Self {
        let message = format!(
            "the body of the request was in an unknown format - accepted media types include: {} (got {content_type:?})",
            accepted.join(", ")
        );
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", message, Value::Null)
    }

    /// `410 Gone` for a watch from a compacted resourceVersion (sent as an `ERROR` watch event).
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(StatusCode::GONE, "Expired", format!("too old resource version: {requested} ({oldest})"), Value::Null)
    }

    /// The `meta/v1 Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }
}
