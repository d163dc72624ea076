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
    pub details: Option<Value>,
}

/// One entry of a 422 `Invalid` error (`field.Error` in apimachinery).
#[derive(Debug, Clone)]
pub(crate) struct FieldError {
    /// `FieldValueInvalid`, `FieldValueForbidden`, `FieldValueRequired`, ...
    pub cause: &'static str,
    pub field: String,
    /// The full `field.Error.ErrorBody()`, e.g. `Forbidden: no new finalizers ...`.
    pub body: String,
}

impl FieldError {
    pub fn forbidden(field: &str, detail: &str) -> Self {
        Self { cause: "FieldValueForbidden", field: field.into(), body: format!("Forbidden: {detail}") }
    }

    pub fn required(field: &str, detail: &str) -> Self {
        Self { cause: "FieldValueRequired", field: field.into(), body: format!("Required value: {detail}") }
    }

    pub fn invalid(field: &str, value: &Value, detail: &str) -> Self {
        Self { cause: "FieldValueInvalid", field: field.into(), body: format!("Invalid value: {value}: {detail}") }
    }

    pub fn immutable(field: &str, value: &Value) -> Self {
        Self::invalid(field, value, "field is immutable")
    }
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: String, details: Option<Value>) -> Self {
        Self { code, reason, message, details }
    }

    fn resource_details(rt: &ResourceType, name: &str) -> Value {
        json!({ "name": name, "group": rt.group, "kind": rt.plural })
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        let message = format!("{} \"{name}\" not found", rt.qualified());
        Self::new(StatusCode::NOT_FOUND, "NotFound", message, Some(Self::resource_details(rt, name)))
    }

    /// `namespaces "x" not found`, as returned by the NamespaceLifecycle admission plugin.
    pub fn namespace_not_found(namespace: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("namespaces \"{namespace}\" not found"),
            Some(json!({ "name": namespace, "kind": "namespaces" })),
        )
    }

    /// What the server answers for a path that names no served resource.
    pub fn unknown_resource() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".into(),
            Some(json!({})),
        )
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        let message = format!("{} \"{name}\" already exists", rt.qualified());
        Self::new(StatusCode::CONFLICT, "AlreadyExists", message, Some(Self::resource_details(rt, name)))
    }

    pub fn conflict(rt: &ResourceType, name: &str, why: &str) -> Self {
        let message = format!("Operation cannot be fulfilled on {} \"{name}\": {why}", rt.qualified());
        Self::new(StatusCode::CONFLICT, "Conflict", message, Some(Self::resource_details(rt, name)))
    }

    pub fn modified(rt: &ResourceType, name: &str) -> Self {
        Self::conflict(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// Server-side apply conflicts (`409`, causes of type `FieldManagerConflict`).
    pub fn apply_conflicts(conflicts: &[(String, String)]) -> Self {
        let mut managers: Vec<&str> = conflicts.iter().map(|(m, _)| m.as_str()).collect();
        managers.dedup();
        let noun = if conflicts.len() == 1 { "conflict" } else { "conflicts" };
        let mut message = format!("Apply failed with {} {noun}:", conflicts.len());
        for manager in &managers {
            message.push_str(&format!(" conflict with \"{manager}\":"));
            for (_, field) in conflicts.iter().filter(|(m, _)| m == manager) {
                message.push_str(&format!(" {field}"));
            }
        }
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, f)| json!({ "reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": f }))
            .collect();
        Self::new(StatusCode::CONFLICT, "Conflict", message, Some(json!({ "causes": causes })))
    }

    /// `422 Invalid` with field causes, as `errors.NewInvalid(kind, name, errs)`.
    pub fn invalid(rt: &ResourceType, name: &str, errors: &[FieldError]) -> Self {
        let qualified_kind = if rt.group.is_empty() { rt.kind.clone() } else { format!("{}.{}", rt.kind, rt.group) };
        Self::invalid_kind(&qualified_kind, &rt.group, &rt.kind, name, errors)
    }

    pub fn invalid_kind(qualified_kind: &str, group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Self {
        let rendered: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.body)).collect();
        let aggregate = match rendered.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let causes: Vec<Value> =
            errors.iter().map(|e| json!({ "reason": e.cause, "message": e.body, "field": e.field })).collect();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{qualified_kind} \"{name}\" is invalid: {aggregate}"),
            Some(json!({ "name": name, "group": group, "kind": kind, "causes": causes })),
        )
    }

    /// The 422 that the patch handler returns when a JSON patch cannot be applied
    /// (`errors.NewGenericServerResponse(422, ...)`), e.g. for a failed `test` operation.
    pub fn patch_not_applicable(why: String) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "the server rejected our request due to an error in our request".into(),
            Some(json!({ "causes": [{ "reason": "UnexpectedServerResponse", "message": why }] })),
        )
    }

    pub fn forbidden(rt: &ResourceType, name: &str, why: &str) -> Self {
        let message = if name.is_empty() {
            format!("{} is forbidden: {why}", rt.qualified())
        } else {
            format!("{} \"{name}\" is forbidden: {why}", rt.qualified())
        };
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message, Some(Self::resource_details(rt, name)))
    }

    /// NamespaceLifecycle admission refusing a create in a terminating namespace.
    pub fn namespace_terminating(rt: &ResourceType, name: &str, namespace: &str) -> Self {
        let mut err = Self::forbidden(
            rt,
            name,
            &format!("unable to create new content in namespace {namespace} because it is being terminated"),
        );
        if let Some(details) = err.details.as_mut() {
            details["causes"] = json!([{
                "reason": "NamespaceTerminating",
                "message": format!("namespace {namespace} is being terminated"),
                "field": "metadata.namespace",
            }]);
        }
        err
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message.into(), None)
    }

    pub fn method_not_allowed(rt: &ResourceType, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            message.into(),
            Some(json!({ "group": rt.group, "kind": rt.plural })),
        )
    }

    pub fn unsupported_media_type(content_type: &str, accepted: &[&str]) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {} (got {content_type:?})",
                accepted.join(", ")
            ),
            None,
        )
    }

    pub fn not_acceptable(accept: &str) -> Self {
        Self::new(
            StatusCode::NOT_ACCEPTABLE,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json, application/json;as=PartialObjectMetadata(List);g=meta.k8s.io;v=v1 (got {accept:?})"
            ),
            None,
        )
    }

    /// `410 Gone` for a watch from a compacted resourceVersion (sent as an `ERROR` watch event).
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(StatusCode::GONE, "Expired", format!("too old resource version: {requested} ({oldest})"), None)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
            None,
        )
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
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;
