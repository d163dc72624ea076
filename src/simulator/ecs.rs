//! The ECS call, `PUT /v1/{project_id}/cloudservers/nics/{nic_id}` (bind or unbind a NIC's
//! VIP), once the gateway let it through: ECS's own checks (project header, content type, body),
//! the scripted fault it meets, its effect (now, or late) and its answer.

use serde_json::{Value, json};

use super::call::{EnvelopeError, Late, Outcome, SimRequest, Step, envelope};
use super::state::{CallRecord, Effect, Fault, Inner, NicFieldsIn, SimOperation, apply_after, take_fault};

/// Why ECS refuses a request body. The texts are what clients read in the 400 answer
/// (after "Invalid request parameter: "), so they must not change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum BodyError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("unknown field nic.{0}")]
    UnknownNicField(String),
    #[error("nic.{0} must be a string")]
    NotAString(&'static str),
    #[error("nic.{0} is required")]
    Required(&'static str),
    #[error("nic.reverse_binding must be a boolean")]
    ReverseBindingNotBool,
    #[error("nic.ip_address {0:?} is not an IP address")]
    NotAnIp(String),
    #[error("nic.subnet_id and nic.ip_address must both be empty (unbind) or both be set (bind)")]
    HalfSet,
}

/// Validates the body as ECS does: exactly `{"nic": {subnet_id, ip_address[, reverse_binding]}}`,
/// typed, with both strings empty (unbind) or both set to valid values (bind).
fn parse_body(body: &[u8]) -> Result<(SimOperation, NicFieldsIn), BodyError> {
    let nic = envelope(body, "nic")?;
    if let Some(k) = nic.keys().find(|k| !matches!(k.as_str(), "subnet_id" | "ip_address" | "reverse_binding")) {
        return Err(BodyError::UnknownNicField(k.clone()));
    }
    let string = |k: &'static str| -> Result<String, BodyError> {
        match nic.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(BodyError::NotAString(k)),
            None => Err(BodyError::Required(k)),
        }
    };
    let subnet_id = string("subnet_id")?;
    let ip_address = string("ip_address")?;
    let reverse_binding = match nic.get("reverse_binding") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(BodyError::ReverseBindingNotBool),
    };
    let op = match (subnet_id.is_empty(), ip_address.is_empty()) {
        (true, true) => SimOperation::Unbind,
        (false, false) => {
            if ip_address.parse::<std::net::IpAddr>().is_err() {
                return Err(BodyError::NotAnIp(ip_address));
            }
            SimOperation::Bind
        }
        _ => return Err(BodyError::HalfSet),
    };
    Ok((op, NicFieldsIn { subnet_id, ip_address, reverse_binding }))
}

/// The ECS call once the gateway let it through.
pub(super) fn decide_nic(inner: &mut Inner, req: &SimRequest<'_>, nic_id: &str, record: &mut CallRecord) -> Outcome {
    let (op, fields) = match validate(req) {
        Ok(parsed) => parsed,
        Err(refused) => return refused,
    };
    record.operation = Some(op);
    if !inner.missing.contains(nic_id) {
        inner.ports.know_nic(req.project_id, nic_id);
    }
    let fault = take_fault(inner, op.into(), Some(nic_id));
    perform(inner, req, nic_id, op, fields, fault)
}

/// ECS's own checks once the gateway let the call through: project header, content type, body.
fn validate(req: &SimRequest<'_>) -> Step<(SimOperation, NicFieldsIn)> {
    if req.headers.get("x-project-id").and_then(|v| v.to_str().ok()) != Some(req.project_id) {
        return Err(Outcome::error(400, "Ecs.0005", "X-Project-Id does not match the project in the URI"));
    }
    let content_type = req.headers.get("content-type").and_then(|v| v.to_str().ok());
    if !content_type.is_some_and(|v| v.starts_with("application/json")) {
        return Err(Outcome::error(400, "Ecs.0005", "Content-Type must be application/json"));
    }
    parse_body(req.body).map_err(|e| Outcome::error(400, "Ecs.0005", format!("Invalid request parameter: {e}")))
}

/// Does the call's effect (now, or late) and answers, unless an error fault or a missing NIC
/// answers instead.
fn perform(
    inner: &mut Inner,
    req: &SimRequest<'_>,
    nic_id: &str,
    op: SimOperation,
    fields: NicFieldsIn,
    fault: Option<Fault>,
) -> Outcome {
    let missing = inner.missing.contains(nic_id);
    let effect = Effect::Nic { op, project_id: req.project_id.to_string(), nic_id: nic_id.to_string(), fields };
    let after = apply_after(fault.as_ref());
    if let Some(f) = &fault
        && !(200..300).contains(&f.status)
    {
        let answer = Outcome::fault(f.clone());
        return match after {
            _ if missing => answer,
            Some(after) => answer.with_late(Late { after, effect }),
            None => {
                if f.apply {
                    effect.make(inner);
                }
                answer
            }
        };
    }
    let answer = if missing {
        Outcome::error(404, "Ecs.0614", format!("The NIC {nic_id} does not exist"))
    } else if let Some(after) = after {
        Outcome::ok(json!({"port_id": nic_id})).with_late(Late { after, effect })
    } else {
        effect.make(inner);
        Outcome::ok(json!({"port_id": nic_id}))
    };
    answer.unless(fault)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_validation() {
        let ok = |b: &str| parse_body(b.as_bytes()).map(|(op, _)| op);
        assert_eq!(ok(r#"{"nic":{"subnet_id":"","ip_address":"","reverse_binding":false}}"#), Ok(SimOperation::Unbind));
        assert_eq!(ok(r#"{"nic":{"subnet_id":"","ip_address":""}}"#), Ok(SimOperation::Unbind));
        assert_eq!(
            ok(r#"{"nic":{"subnet_id":"s","ip_address":"10.0.0.1","reverse_binding":true}}"#),
            Ok(SimOperation::Bind)
        );
        assert_eq!(ok(r#"{"nic":{"subnet_id":"s","ip_address":"fd00::1"}}"#), Ok(SimOperation::Bind));
        for bad in [
            r#"{"nic":{"subnet_id":"s","ip_address":""}}"#,
            r#"{"nic":{"subnet_id":"","ip_address":"10.0.0.1"}}"#,
            r#"{"nic":{"subnet_id":"s","ip_address":"300.1.1.1"}}"#,
            r#"{"nic":{"subnet_id":"s","ip_address":"10.0.0.1","reverse_binding":"true"}}"#,
            r#"{"nic":{"subnet_id":1,"ip_address":"10.0.0.1"}}"#,
            r#"{"nic":{"subnet_id":"s","ip_address":"10.0.0.1","extra":1}}"#,
            r#"{"nic":{"subnet_id":"s"}}"#,
            r#"{"nic":{},"other":1}"#,
            r#"{"nic":[]}"#,
            r#"[]"#,
            "not json",
            "",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
    }

    /// Clients read these texts in 400 answers: the typed errors must print what the strings did.
    #[test]
    fn error_texts_are_stable() {
        let text = |b: &str| parse_body(b.as_bytes()).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(text("[]"), "request body must be a JSON object");
        assert_eq!(text(r#"{"nic":{},"other":1}"#), r#"unknown field "other""#);
        assert_eq!(text(r#"{"nic":[]}"#), "field nic (object) is required");
        assert_eq!(text(r#"{"nic":{"x":1}}"#), "unknown field nic.x");
        assert_eq!(text(r#"{"nic":{"subnet_id":1}}"#), "nic.subnet_id must be a string");
        assert_eq!(text(r#"{"nic":{"subnet_id":"s"}}"#), "nic.ip_address is required");
        assert_eq!(
            text(r#"{"nic":{"subnet_id":"s","ip_address":"","reverse_binding":1}}"#),
            "nic.reverse_binding must be a boolean"
        );
        assert_eq!(text(r#"{"nic":{"subnet_id":"s","ip_address":"x"}}"#), r#"nic.ip_address "x" is not an IP address"#);
        assert_eq!(
            text(r#"{"nic":{"subnet_id":"s","ip_address":""}}"#),
            "nic.subnet_id and nic.ip_address must both be empty (unbind) or both be set (bind)"
        );
        assert!(text("not json").starts_with("request body is not JSON: "));
    }
}
