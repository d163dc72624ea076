//! One cloud call as the rooms hand it on: the request as received ([`SimRequest`], naming its
//! [`Resource`]), its answer before the latency ([`Outcome`], with a write's effect put off,
//! [`Late`]), and the `{"<key>": {...}}` envelope the bodies of both services come in.

use std::time::Duration;

use axum::http::{HeaderMap, Method, Uri};
use serde_json::Value;

use super::state::{Effect, Fault, fault_hold};

/// Outcome of a call before latency is applied.
pub(super) struct Outcome {
    pub(super) status: u16,
    /// `None` for a success, which answers `body`.
    pub(super) code: Option<String>,
    /// A boxed str: with the late effect, an `Outcome` stays small enough to be every step's
    /// error (clippy's `result_large_err`).
    pub(super) message: Box<str>,
    pub(super) retry_after: Option<u64>,
    pub(super) hold: Duration,
    pub(super) body: Value,
    /// The call's effect, put off ([`Fault::apply_after_ms`]). Boxed: rare, and every
    /// refusal is an `Outcome` too.
    pub(super) late: Option<Box<Late>>,
}

/// A write's effect, and how long after the call's arrival it lands.
pub(super) struct Late {
    pub(super) after: Duration,
    pub(super) effect: Effect,
}

impl Outcome {
    pub(super) fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: Some(code.into()),
            message: message.into().into_boxed_str(),
            retry_after: None,
            hold: Duration::ZERO,
            body: Value::Null,
            late: None,
        }
    }

    pub(super) fn ok(body: Value) -> Self {
        Self {
            status: 200,
            code: None,
            message: Box::default(),
            retry_after: None,
            hold: Duration::ZERO,
            body,
            late: None,
        }
    }

    /// A scripted error fault's answer.
    pub(super) fn fault(f: Fault) -> Self {
        let hold = fault_hold(Some(&f));
        Self {
            status: f.status,
            code: Some(f.code.unwrap_or_else(|| "Common.0001".into())),
            message: f.message.unwrap_or_else(|| "scripted fault".into()).into_boxed_str(),
            retry_after: f.retry_after,
            hold,
            body: Value::Null,
            late: None,
        }
    }

    /// This answer, with the call's effect to be made late.
    pub(super) fn with_late(mut self, late: Late) -> Self {
        self.late = Some(Box::new(late));
        self
    }

    /// This answer, unless an error fault answers instead; a 2xx fault holds it.
    pub(super) fn unless(mut self, fault: Option<Fault>) -> Self {
        match fault {
            Some(f) if !(200..300).contains(&f.status) => Self::fault(f),
            f => {
                self.hold = fault_hold(f.as_ref());
                self
            }
        }
    }
}

/// What a cloud call is about, from its route.
#[derive(Clone, Copy)]
pub(super) enum Resource<'a> {
    /// `PUT /v1/{project_id}/cloudservers/nics/{nic_id}`
    Nic(&'a str),
    /// `GET /v1/{project_id}/ports/{port_id}`
    Port(&'a str),
    /// `PUT /v1/{project_id}/ports/{port_id}`
    PortUpdate(&'a str),
    /// `GET /v1/{project_id}/ports`
    Ports,
}

/// One cloud call as received, borrowed from the handler's extractors.
pub(super) struct SimRequest<'a> {
    pub(super) method: &'a Method,
    pub(super) uri: &'a Uri,
    pub(super) headers: &'a HeaderMap,
    pub(super) body: &'a [u8],
    pub(super) project_id: &'a str,
    pub(super) resource: Resource<'a>,
}

/// A step of a call's checks: `Err` is the answer that ends the call before its effect.
pub(super) type Step<T> = Result<T, Outcome>;

/// Why a body is not `{"<key>": {...}}`, the envelope both the ECS and the VPC calls take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    // serde_json's error is kept as text: the variant must stay comparable in tests.
    #[error("request body is not JSON: {0}")]
    NotJson(String),
    #[error("request body must be a JSON object")]
    NotAnObject,
    #[error("unknown field {0:?}")]
    UnknownField(String),
    #[error("field {0} (object) is required")]
    Required(&'static str),
}

/// The object under `key` of a body that must be exactly `{"<key>": {...}}`.
pub(super) fn envelope(body: &[u8], key: &'static str) -> Result<serde_json::Map<String, Value>, EnvelopeError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
    let Value::Object(mut obj) = value else { return Err(EnvelopeError::NotAnObject) };
    if let Some(k) = obj.keys().find(|k| *k != key) {
        return Err(EnvelopeError::UnknownField(k.clone()));
    }
    match obj.remove(key) {
        Some(Value::Object(inner)) => Ok(inner),
        _ => Err(EnvelopeError::Required(key)),
    }
}
