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

/// `field.Error.ErrorBody()`: the type, then the bad value (for the types that show one),
/// then `: detail` unless the detail is empty.
fn body(kind: &str, value: Option<&Value>, detail: &str) -> String {
    let mut body = kind.to_string();
    if let Some(value) = value {
        body.push_str(": ");
        body.push_str(&go_value(value));
    }
    if !detail.is_empty() {
        body.push_str(": ");
        body.push_str(detail);
    }
    body
}

impl FieldError {
    fn new(cause: &'static str, field: &str, body: String) -> Self {
        Self { cause, field: field.into(), body }
    }

    pub fn forbidden(field: &str, detail: &str) -> Self {
        Self::new("FieldValueForbidden", field, body("Forbidden", None, detail))
    }

    /// `Required value`, or `Required value: detail`.
    pub fn required(field: &str, detail: &str) -> Self {
        Self::new("FieldValueRequired", field, body("Required value", None, detail))
    }

    pub fn invalid(field: &str, value: &Value, detail: &str) -> Self {
        Self::new("FieldValueInvalid", field, body("Invalid value", Some(value), detail))
    }

    /// The value does not have the schema's type (rendered like `invalid`).
    pub fn type_invalid(field: &str, value: &Value, detail: &str) -> Self {
        Self::new("FieldValueTypeInvalid", field, body("Invalid value", Some(value), detail))
    }

    /// `Unsupported value: "x": supported values: "a", "b"`.
    pub fn not_supported(field: &str, value: &Value, supported: &[String]) -> Self {
        let detail = if supported.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self::new("FieldValueNotSupported", field, body("Unsupported value", Some(value), &detail))
    }

    /// `Too long: may not be more than N bytes` (the value is never shown).
    pub fn too_long(field: &str, max: i64) -> Self {
        let detail = match max {
            1 => "may not be more than 1 byte".to_string(),
            n if n >= 0 => format!("may not be more than {n} bytes"),
            _ => "value is too long".to_string(),
        };
        Self::new("FieldValueTooLong", field, body("Too long", None, &detail))
    }

    /// `Too many: 3: must have at most 2 items`.
    pub fn too_many(field: &str, actual: i64, max: i64) -> Self {
        let detail = match max {
            1 => "must have at most 1 item".to_string(),
            n if n >= 0 => format!("must have at most {n} items"),
            _ => "too many items".to_string(),
        };
        let actual = (actual >= 0).then(|| Value::from(actual));
        Self::new("FieldValueTooMany", field, body("Too many", actual.as_ref(), &detail))
    }

    /// `Duplicate value: {"type":"Ready"}`.
    pub fn duplicate(field: &str, value: &Value) -> Self {
        Self::new("FieldValueDuplicate", field, body("Duplicate value", Some(value), ""))
    }

    pub fn immutable(field: &str, value: &Value) -> Self {
        Self::invalid(field, value, "field is immutable")
    }

    /// The error types after which kube-apiserver skips a CRD's CEL rules (`hasBlockingErr`).
    pub fn blocks_cel(&self) -> bool {
        matches!(
            self.cause,
            "FieldValueNotSupported"
                | "FieldValueRequired"
                | "FieldValueTooLong"
                | "FieldValueTooMany"
                | "FieldValueTypeInvalid"
        )
    }
}

/// A bad value as `field.Error.ErrorBody()` prints it: strings Go-quoted (`%q`), numbers and
/// booleans plainly (`%v`), anything else (null, objects, arrays) as `json.Marshal` output.
pub(crate) fn go_value(value: &Value) -> String {
    match value {
        Value::String(s) => go_quote(s),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => go_float(f),
            _ => n.to_string(),
        },
        Value::Null | Value::Array(_) | Value::Object(_) => go_json(value),
    }
}

/// Go's `strconv.Quote`.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%v` of a float64: the shortest `%g`, which switches to an exponent when it is
/// below -4 or at least 6 (`1e+06`, `1.5e-05`).
pub(crate) fn go_float(f: f64) -> String {
    if !f.is_finite() {
        return if f.is_nan() {
            "NaN".into()
        } else if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let exp = decimal_exponent(f);
    if f != 0.0 && !(-4..6).contains(&exp) { go_exp(f) } else { f.to_string() }
}

fn decimal_exponent(f: f64) -> i32 {
    let sci = format!("{f:e}");
    sci.split_once('e').and_then(|(_, e)| e.parse().ok()).unwrap_or(0)
}

/// Go's shortest `%e`: `1.5e+06`, `1e-07`.
fn go_exp(f: f64) -> String {
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. "1.5e6".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.abs())
}

/// Go's `json.Marshal` of a decoded JSON value: object keys sorted, no spaces, `<`, `>`
/// and `&` escaped.
pub(crate) fn go_json(value: &Value) -> String {
    fn write(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(&Value::String(k.clone()), out);
                    out.push(':');
                    write(&map[k], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or_default();
                // encoding/json: 'f' format unless the value is below 1e-6 or from 1e21 on,
                // and then without a leading zero in a negative exponent.
                let abs = f.abs();
                if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
                    let e = go_exp(f);
                    out.push_str(&match e.split_once("e-0") {
                        Some((m, d)) => format!("{m}e-{d}"),
                        None => e,
                    });
                } else {
                    out.push_str(&f.to_string());
                }
            }
            Value::String(s) => {
                let encoded = Value::String(s.clone()).to_string();
                out.push_str(
                    &encoded
                        .replace('<', "\\u003c")
                        .replace('>', "\\u003e")
                        .replace('&', "\\u0026")
                        .replace('\u{2028}', "\\u2028")
                        .replace('\u{2029}', "\\u2029"),
                );
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
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

    /// `422 Invalid` with field causes, as `errors.NewInvalid(kind, name, errs)`: the message
    /// is `<Kind>.<group> "<name>" is invalid: <field>: <body>`, several errors as
    /// `[<field>: <body>, <field>: <body>]`.
    pub fn invalid(rt: &ResourceType, name: &str, errors: &[FieldError]) -> Self {
        let qualified_kind = if rt.group.is_empty() { rt.kind.clone() } else { format!("{}.{}", rt.kind, rt.group) };
        Self::invalid_kind(&qualified_kind, &rt.group, &rt.kind, name, errors)
    }

    pub fn invalid_kind(qualified_kind: &str, group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Self {
        // `ErrorList.ToAggregate()` drops repeated messages (the causes keep them).
        let mut rendered: Vec<String> = Vec::new();
        for e in errors {
            let line = format!("{}: {}", e.field, e.body);
            if !rendered.contains(&line) {
                rendered.push(line);
            }
        }
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
