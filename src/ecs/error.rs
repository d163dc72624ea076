//! ECS errors: what went wrong (HTTP status, Huawei code, message, request id) and what class of
//! problem it is. The class drives every policy: retry inside a call, requeue, condition reason.

use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

/// Why a [`Fence`](super::api::Fence) is closed. Cloned into every [`EcsError::Fenced`] it causes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    /// The leader lease was not seen naming this replica within the last `window`.
    #[error(
        "this replica could not confirm it holds the leader lease within the last {}s (API server unreachable?)",
        window.as_secs()
    )]
    LeadershipUnconfirmed { window: std::time::Duration },
    /// Any other fence, in its own words (the trait is open to other implementations).
    #[error("{0}")]
    Closed(String),
}

/// The four classes of failure. Each has one policy (see `docs` in the README):
/// - `Retryable`: transient (5xx, 429, flow control, timeouts, connection errors) — retried
///   within a call with backoff, then requeued.
/// - `Terminal`: the request is wrong (other 4xx) — retrying the same request cannot help; wait
///   for a spec change.
/// - `Auth`: bad keys or permissions (401/403) — never retried in a loop (Huawei locks an AK
///   after 5 failed signatures in a row).
/// - `Gone`: the service itself said the NIC, server or port does not exist (`Ecs.0085`,
///   `Ecs.0114`, `Ecs.0614`; the VPC API's `VPC.2502`, port not found). A 404 without such a
///   code (the API gateway's `APIGW.0101`, a proxy's page) is no evidence about the NIC: it is
///   `Terminal` (see [`EcsError::is_unrecognised_not_found`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    Retryable,
    Terminal,
    Auth,
    Gone,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Terminal => "terminal",
            ErrorClass::Auth => "auth",
            ErrorClass::Gone => "gone",
        }
    }
}

/// An error answer from the ECS or VPC endpoint, or the API gateway in front of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// Huawei error code (`Ecs.0005`, `APIGW.0301`, …) when the body had one.
    pub code: Option<String>,
    pub message: String,
    /// Codes from `error.details[]` (ECS shape), kept for diagnostics.
    pub detail_codes: Vec<String>,
    /// `X-Request-Id` header, or `request_id` from the gateway body.
    pub request_id: Option<String>,
    /// `Retry-After`, when the server sent one we could parse.
    pub retry_after: Option<Duration>,
}

/// An answer with `status` and `code` and nothing else, for tests and their fakes.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn coded(status: u16, code: &str) -> EcsError {
    EcsError::Api(ApiError {
        status,
        code: Some(code.into()),
        message: String::new(),
        detail_codes: vec![],
        request_id: None,
        retry_after: None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Timeout,
    Connect,
    /// The response could not be read or was not what the API documents.
    Protocol,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EcsError {
    #[error("{}", describe_api(.0))]
    Api(ApiError),
    #[error("{kind:?} error talking to the cloud endpoint: {message}")]
    Transport { kind: TransportKind, message: String },
    /// The request could not be built (a value that cannot go into a URL, a missing project).
    /// Nothing was sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Not sent because the same credentials were just refused by the cloud (see the
    /// controller's auth gate). Classified as Auth.
    #[error("{0}")]
    HeldBack(String),
    /// Not sent: the first call with the same unproven credentials is still in flight (see
    /// the controller's auth gate). Not a failure: the caller comes back shortly.
    #[error("not sent: {0}")]
    AwaitingProbe(String),
    /// Not sent: this process could not confirm it still leads (see [`super::api::Fence`]).
    #[error("not sent: {0}")]
    Fenced(FenceError),
    /// The last attempt of a call was refused, but an earlier one may have reached the cloud
    /// (it timed out or got a 5xx): the call may have applied. Class, code and status are the
    /// last answer's.
    #[error("{last} (an earlier attempt may have reached the cloud: {earlier})")]
    Uncertain { last: Box<EcsError>, earlier: String },
}

fn describe_api(e: &ApiError) -> String {
    let mut s = format!("HTTP {}", e.status);
    if let Some(code) = &e.code {
        s.push(' ');
        s.push_str(code);
    }
    if !e.message.is_empty() {
        s.push_str(": ");
        s.push_str(&e.message);
    }
    if !e.detail_codes.is_empty() {
        s.push_str(&format!(" (details: {})", e.detail_codes.join(", ")));
    }
    if let Some(id) = &e.request_id {
        s.push_str(&format!(" [request id {id}]"));
    }
    s
}

/// The longest server-supplied delay the operator honours (`Retry-After`): anything longer is
/// taken as this, so no input can overflow a clock or park a binding for ever.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Huawei codes that override the class their HTTP status would give.
fn class_of_code(code: &str) -> Option<ErrorClass> {
    match code {
        // "The server has no such NIC" (400), "server / NIC not found" said by ECS itself (404).
        "Ecs.0085" | "Ecs.0114" | "Ecs.0614" => Some(ErrorClass::Gone),
        // "Port xx not found", said by the VPC service (404). A port ID is a NIC ID.
        "VPC.2502" => Some(ErrorClass::Gone),
        // Failed to update / query port / query NICs: backend hiccups reported as 400.
        "Ecs.0213" | "Ecs.0307" | "Ecs.0323" => Some(ErrorClass::Retryable),
        // Another operation is running on the server; retry later.
        "Ecs.0603" => Some(ErrorClass::Retryable),
        _ => None,
    }
}

/// The class of an HTTP error answer. Unknown codes and bodies classify by status.
pub fn classify(status: u16, code: Option<&str>) -> ErrorClass {
    if let Some(class) = code.and_then(class_of_code) {
        return class;
    }
    match status {
        401 | 403 => ErrorClass::Auth,
        429 => ErrorClass::Retryable,
        500..=599 => ErrorClass::Retryable,
        // 408 Request Timeout is the server asking us to try again.
        408 => ErrorClass::Retryable,
        _ => ErrorClass::Terminal,
    }
}

impl EcsError {
    pub fn class(&self) -> ErrorClass {
        match self {
            EcsError::Api(e) => classify(e.status, e.code.as_deref()),
            EcsError::Transport { .. } => ErrorClass::Retryable,
            EcsError::InvalidRequest(_) => ErrorClass::Terminal,
            EcsError::HeldBack(_) => ErrorClass::Auth,
            // Transient (leadership comes back, or another replica takes over), but never
            // retried inside a call: the controller's requeue decides, once leadership is known.
            EcsError::Fenced(_) | EcsError::AwaitingProbe(_) => ErrorClass::Retryable,
            EcsError::Uncertain { last, .. } => last.class(),
        }
    }

    /// The last answer, for an [`EcsError::Uncertain`]; the error itself otherwise.
    fn answer(&self) -> &EcsError {
        match self {
            EcsError::Uncertain { last, .. } => last.answer(),
            other => other,
        }
    }

    /// A 404 that is not the service saying "does not exist": the gateway found no such API or
    /// a proxy answered. A configuration problem (endpoint, path, region), never evidence that
    /// the NIC is gone.
    pub fn is_unrecognised_not_found(&self) -> bool {
        matches!(self.answer(), EcsError::Api(e) if e.status == 404) && self.class() != ErrorClass::Gone
    }

    /// Throttling (429, gateway flow control) as opposed to the cloud being unwell.
    pub fn is_throttled(&self) -> bool {
        match self.answer() {
            EcsError::Api(e) => e.status == 429 || matches!(e.code.as_deref(), Some("APIGW.0308" | "Common.1503")),
            _ => false,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self.answer() {
            EcsError::Api(e) => e.code.as_deref(),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.answer() {
            EcsError::Api(e) => Some(e.status),
            _ => None,
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self.answer() {
            EcsError::Api(e) => e.request_id.as_deref(),
            _ => None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self.answer() {
            EcsError::Api(e) => e.retry_after,
            _ => None,
        }
    }

    /// Whether the request may have changed cloud state. A gateway or validation refusal (4xx)
    /// happened before anything was applied; a 5xx or a lost response may or may not have.
    pub fn may_have_applied(&self) -> bool {
        match self {
            EcsError::Api(e) => e.status >= 500,
            EcsError::Transport { kind, .. } => *kind != TransportKind::Connect,
            EcsError::InvalidRequest(_) | EcsError::HeldBack(_) | EcsError::Fenced(_) | EcsError::AwaitingProbe(_) => {
                false
            }
            EcsError::Uncertain { .. } => true,
        }
    }
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    error: Option<EcsShape>,
    error_code: Option<String>,
    error_msg: Option<String>,
    request_id: Option<String>,
    /// The VPC shape, `{"code": "VPC.xxxx", "message": "..."}`. Kept as values: other services
    /// put numbers here, and such a body must still be read (by status) rather than refused.
    code: Option<Value>,
    message: Option<Value>,
}

#[derive(Deserialize, Default)]
struct EcsShape {
    code: Option<String>,
    message: Option<String>,
    #[serde(default)]
    details: Vec<Detail>,
}

#[derive(Deserialize, Default)]
struct Detail {
    code: Option<String>,
}

/// The longest server-supplied message kept: it reaches conditions, events and logs.
pub const MAX_MESSAGE_CHARS: usize = 1000;

/// Builds an [`ApiError`] from an error response. Accepts the documented body shapes (ECS
/// `{"error":{...}}`, generic and API-gateway `{"error_code","error_msg"}`, VPC
/// `{"code","message"}`); anything else keeps the status and a short excerpt of the body as the
/// message.
pub fn parse_error_response(
    status: u16,
    body: &[u8],
    request_id_header: Option<&str>,
    retry_after: Option<Duration>,
) -> ApiError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (code, message, detail_codes, body_request_id) = match parsed {
        Some(ErrorBody { error: Some(e), .. }) => {
            (e.code, e.message.unwrap_or_default(), e.details.into_iter().filter_map(|d| d.code).collect(), None)
        }
        Some(ErrorBody { error_code: code @ Some(_), error_msg, request_id, .. }) => {
            (code, error_msg.unwrap_or_default(), vec![], request_id)
        }
        Some(ErrorBody { code: Some(Value::String(code)), message, request_id, .. }) => {
            let message = match message {
                Some(Value::String(m)) => m,
                _ => String::new(),
            };
            (Some(code), message, vec![], request_id)
        }
        _ => (None, excerpt(status, body), vec![], None),
    };
    ApiError {
        status,
        code: code.filter(|c| !c.is_empty()),
        message: bounded(message),
        detail_codes,
        request_id: request_id_header.map(str::to_string).or(body_request_id).filter(|s| !s.is_empty()),
        retry_after,
    }
}

/// At most [`MAX_MESSAGE_CHARS`] characters, with an ellipsis when cut.
fn bounded(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => {
            let mut short = message[..cut].to_string();
            short.push('…');
            short
        }
        None => message,
    }
}

fn excerpt(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("error").to_string();
    }
    let mut cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

/// `Retry-After` as delay-seconds or an HTTP date, relative to `now`, at most
/// [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let delta = at.as_millisecond().saturating_sub(now.as_millisecond());
    Some(Duration::from_millis(u64::try_from(delta).unwrap_or(0)).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classification_table() {
        let cases: &[(u16, Option<&str>, ErrorClass)] = &[
            (400, Some("Ecs.0005"), ErrorClass::Terminal),
            (400, Some("Ecs.0000"), ErrorClass::Terminal),
            (400, Some("Ecs.0038"), ErrorClass::Terminal),
            (400, Some("Ecs.0039"), ErrorClass::Terminal),
            (400, Some("Ecs.0014"), ErrorClass::Terminal),
            (400, Some("Ecs.0010"), ErrorClass::Terminal),
            (400, Some("Ecs.0085"), ErrorClass::Gone),
            (400, Some("Ecs.0213"), ErrorClass::Retryable),
            (400, Some("Ecs.0307"), ErrorClass::Retryable),
            (400, Some("Ecs.0323"), ErrorClass::Retryable),
            (401, Some("APIGW.0301"), ErrorClass::Auth),
            (401, Some("Common.0013"), ErrorClass::Auth),
            (403, Some("APIGW.0302"), ErrorClass::Auth),
            (403, Some("Ecs.0110"), ErrorClass::Auth),
            (403, Some("Pdp.0001"), ErrorClass::Auth),
            (404, Some("Ecs.0114"), ErrorClass::Gone),
            (404, Some("Ecs.0614"), ErrorClass::Gone),
            // Not the service saying "does not exist": the gateway, a proxy, an unknown code.
            (404, None, ErrorClass::Terminal),
            (404, Some("APIGW.0101"), ErrorClass::Terminal),
            (404, Some("Ecs.9999"), ErrorClass::Terminal),
            (405, None, ErrorClass::Terminal),
            (409, Some("Ecs.9999"), ErrorClass::Terminal),
            (429, Some("APIGW.0308"), ErrorClass::Retryable),
            (429, None, ErrorClass::Retryable),
            (500, Some("Common.0001"), ErrorClass::Retryable),
            (502, None, ErrorClass::Retryable),
            (503, Some("Common.1503"), ErrorClass::Retryable),
            (504, Some("APIGW.0201"), ErrorClass::Retryable),
            (501, Some("Ecs.0603"), ErrorClass::Retryable),
            (418, Some("Whatever.1"), ErrorClass::Terminal),
            // The VPC API: only "port not found" is the service saying a NIC is gone.
            (404, Some("VPC.2502"), ErrorClass::Gone),
            (404, Some("VPC.0003"), ErrorClass::Terminal),
            (400, Some("VPC.2500"), ErrorClass::Terminal),
            (400, Some("VPC.0007"), ErrorClass::Terminal),
            (403, Some("VPC.0010"), ErrorClass::Auth),
            (403, Some("VPC.2201"), ErrorClass::Auth),
            (500, Some("VPC.0001"), ErrorClass::Retryable),
        ];
        for (status, code, want) in cases {
            assert_eq!(classify(*status, *code), *want, "{status} {code:?}");
        }
    }

    #[test]
    fn only_the_service_saying_so_makes_a_404_gone() {
        let gateway = parse_error_response(
            404,
            br#"{"error_code":"APIGW.0101","error_msg":"The API does not exist","request_id":"r1"}"#,
            None,
            None,
        );
        let gateway = EcsError::Api(gateway);
        assert!(gateway.is_unrecognised_not_found());
        assert_ne!(gateway.class(), ErrorClass::Gone);
        let proxy = EcsError::Api(parse_error_response(404, b"<html>404 Not Found</html>", None, None));
        assert!(proxy.is_unrecognised_not_found());
        assert_ne!(proxy.class(), ErrorClass::Gone);
        let ecs = EcsError::Api(parse_error_response(404, br#"{"error":{"code":"Ecs.0614"}}"#, None, None));
        assert!(!ecs.is_unrecognised_not_found());
        assert_eq!(ecs.class(), ErrorClass::Gone);
    }

    #[test]
    fn parses_the_vpc_shape() {
        let body = br#"{"code":"VPC.2502","message":"Port 5e2b not found"}"#;
        let e = parse_error_response(404, body, Some("req-9"), None);
        assert_eq!(e.code.as_deref(), Some("VPC.2502"));
        assert_eq!(e.message, "Port 5e2b not found");
        assert_eq!(e.request_id.as_deref(), Some("req-9"));
        let e = EcsError::Api(e);
        assert_eq!(e.class(), ErrorClass::Gone);
        assert!(!e.is_unrecognised_not_found());
        assert_eq!(e.to_string(), "HTTP 404 VPC.2502: Port 5e2b not found [request id req-9]");
        // A request id in the body is kept when no header carried one.
        let e = parse_error_response(403, br#"{"code":"VPC.2201","message":"no","request_id":"b"}"#, None, None);
        assert_eq!(e.request_id.as_deref(), Some("b"));
        assert_eq!(EcsError::Api(e).class(), ErrorClass::Auth);
    }

    #[test]
    fn a_vpc_404_without_its_code_is_not_gone() {
        for body in [
            &br#"{"error_code":"APIGW.0101","error_msg":"The API does not exist or has not been published in the environment"}"#[..],
            b"<html><body>404 Not Found</body></html>",
            b"",
            // Numbers where VPC puts strings: read by status, never as a code.
            br#"{"code":404,"message":"not found"}"#,
            br#"{"code":"","message":"not found"}"#,
        ] {
            let e = EcsError::Api(parse_error_response(404, body, None, None));
            assert_ne!(e.class(), ErrorClass::Gone, "{}", String::from_utf8_lossy(body));
            assert!(e.is_unrecognised_not_found(), "{}", String::from_utf8_lossy(body));
        }
        // The code decides, not the status (Huawei warns its statuses may be inaccurate).
        let e = EcsError::Api(parse_error_response(400, br#"{"code":"VPC.2502","message":"x"}"#, None, None));
        assert_eq!(e.class(), ErrorClass::Gone);
    }

    #[test]
    fn server_messages_are_bounded() {
        let long = "é".repeat(5000);
        for body in [
            json!({"code": "VPC.0001", "message": long}),
            json!({"error": {"code": "Ecs.0001", "message": long}}),
            json!({"error_code": "APIGW.0201", "error_msg": long}),
        ] {
            let e = parse_error_response(500, body.to_string().as_bytes(), None, None);
            assert_eq!(e.message.chars().count(), MAX_MESSAGE_CHARS + 1, "{body}");
            assert!(e.message.ends_with('…'));
        }
        assert_eq!(parse_error_response(500, br#"{"code":"C","message":"short"}"#, None, None).message, "short");
    }

    #[test]
    fn a_huge_retry_after_is_clamped() {
        let now = jiff::Timestamp::UNIX_EPOCH;
        assert_eq!(parse_retry_after("18446744073709551615", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Sat, 01 Jan 2000 00:00:00 GMT", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", jiff::Timestamp::MAX), Some(Duration::ZERO));
    }

    #[test]
    fn transport_errors_are_retryable_and_invalid_requests_terminal() {
        let t = EcsError::Transport { kind: TransportKind::Timeout, message: "x".into() };
        assert_eq!(t.class(), ErrorClass::Retryable);
        assert!(t.may_have_applied());
        let c = EcsError::Transport { kind: TransportKind::Connect, message: "x".into() };
        assert!(!c.may_have_applied());
        assert_eq!(EcsError::InvalidRequest("x".into()).class(), ErrorClass::Terminal);
    }

    #[test]
    fn parses_the_ecs_shape_with_details() {
        let body =
            br#"{"error":{"code":"Ecs.0005","message":"bad param","details":[{"code":"Ecs.0039","message":"ip"}]}}"#;
        let e = parse_error_response(400, body, Some("req-1"), None);
        assert_eq!(e.code.as_deref(), Some("Ecs.0005"));
        assert_eq!(e.message, "bad param");
        assert_eq!(e.detail_codes, vec!["Ecs.0039"]);
        assert_eq!(e.request_id.as_deref(), Some("req-1"));
        let text = EcsError::Api(e).to_string();
        assert_eq!(text, "HTTP 400 Ecs.0005: bad param (details: Ecs.0039) [request id req-1]");
    }

    #[test]
    fn parses_the_generic_shape() {
        let e = parse_error_response(400, br#"{"error_code":"IMG.0001","error_msg":"no"}"#, None, None);
        assert_eq!(e.code.as_deref(), Some("IMG.0001"));
        assert_eq!(e.message, "no");
        assert_eq!(e.request_id, None);
    }

    #[test]
    fn parses_the_gateway_shape_with_body_request_id() {
        let body =
            br#"{"error_code":"APIGW.0301","error_msg":"Incorrect IAM authentication information","request_id":"abc"}"#;
        let e = parse_error_response(401, body, None, None);
        assert_eq!(e.code.as_deref(), Some("APIGW.0301"));
        assert_eq!(e.request_id.as_deref(), Some("abc"));
        // The header wins when both are present.
        let e = parse_error_response(401, body, Some("hdr"), None);
        assert_eq!(e.request_id.as_deref(), Some("hdr"));
    }

    #[test]
    fn unknown_and_non_json_bodies_classify_by_status() {
        for body in [&b"<html>bad gateway</html>"[..], b"", br#"{"weird":1}"#, b"[]"] {
            let e = EcsError::Api(parse_error_response(502, body, None, None));
            assert_eq!(e.class(), ErrorClass::Retryable);
            assert_eq!(e.code(), None);
            let e = EcsError::Api(parse_error_response(403, body, None, None));
            assert_eq!(e.class(), ErrorClass::Auth);
        }
        let e = parse_error_response(502, b"", None, None);
        assert_eq!(e.message, "Bad Gateway");
        let long = vec![b'x'; 1000];
        assert!(parse_error_response(500, &long, None, None).message.chars().count() <= 201);
    }

    #[test]
    fn throttling_is_recognised() {
        let throttled = EcsError::Api(parse_error_response(
            429,
            br#"{"error_code":"APIGW.0308","error_msg":"over ratelimit"}"#,
            None,
            None,
        ));
        assert!(throttled.is_throttled());
        let flow = EcsError::Api(parse_error_response(
            503,
            br#"{"error_code":"Common.1503","error_msg":"flow control"}"#,
            None,
            None,
        ));
        assert!(flow.is_throttled());
        let busy = EcsError::Api(parse_error_response(500, b"", None, None));
        assert!(!busy.is_throttled());
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now: jiff::Timestamp = "2015-10-21T07:28:00Z".parse().unwrap();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
