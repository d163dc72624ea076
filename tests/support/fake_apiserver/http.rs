//! HTTP: turns requests into verbs on resources (like kube-apiserver's `RequestInfoFactory`),
//! negotiates the response shape, records every request, and writes JSON responses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::lifecycle;
use super::ops::{self, PatchRequest, Sub, Target};
use super::watch::{self, Filter, WatchRequest, render_object};
use super::{RecordedRequest, Shared};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// What a resource URL addresses: `/api/v1/...` or `/apis/{group}/{version}/...`, then
/// `[namespaces/{ns}/]{resource}[/{name}[/{subresource}]]`.
#[derive(Debug, Clone, Default)]
struct ResourcePath {
    group: String,
    version: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<ResourcePath> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (group, version, mut rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let mut namespace = None;
    // namespaces/{ns}/{resource}/..., unless that is a namespace's own subresource.
    if rest.first() == Some(&"namespaces") && rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
        namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    if rest.is_empty() || rest.len() > 3 {
        return None;
    }
    Some(ResourcePath {
        group: group.to_string(),
        version: version.to_string(),
        namespace,
        resource: rest[0].to_string(),
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn verb(method: &Method, path: Option<&ResourcePath>, query: &BTreeMap<String, String>) -> &'static str {
    let named = path.is_some_and(|p| p.name.is_some());
    match *method {
        Method::GET if path.is_none() || named => "get",
        Method::GET if query.get("watch").is_some_and(|w| w == "true" || w == "1") => "watch",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let started = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let raw_query = parts.uri.query().unwrap_or_default().to_string();
    let query: BTreeMap<String, String> = url::form_urlencoded::parse(raw_query.as_bytes()).into_owned().collect();
    let route = parse_path(parts.uri.path());
    let verb = verb(&parts.method, route.as_ref(), &query);
    let header = |name: header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type = header(header::CONTENT_TYPE).map(|v| v.split(';').next().unwrap_or_default().trim().to_string());

    let result = match (axum::body::to_bytes(body, 64 * 1024 * 1024).await, &route) {
        (Err(e), _) => Err(ApiError::bad_request(format!("reading request body: {e}"))),
        (Ok(_), None) if parts.uri.path() == "/version" => Ok(json_response(StatusCode::OK, &version_info())),
        (Ok(_), None) => Err(ApiError::unknown_resource()),
        (Ok(bytes), Some(path)) => {
            resource_request(&shared, &parts.headers, path, verb, &query, content_type.as_deref(), &bytes)
        }
    };
    let response = result.unwrap_or_else(|e| json_response(e.code, &e.to_status()));

    let path = route.unwrap_or_default();
    shared.record(RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: raw_query,
        verb: verb.to_string(),
        group: path.group,
        version: path.version,
        namespace: path.namespace,
        resource: path.resource,
        name: path.name,
        subresource: path.subresource,
        content_type: if parts.method == Method::PATCH { content_type } else { None },
        accept: header(header::ACCEPT),
        user_agent: header(header::USER_AGENT),
        field_manager: query.get("fieldManager").cloned(),
        status: response.status().as_u16(),
        duration_us: started.elapsed().as_micros() as u64,
    });
    response
}

fn version_info() -> Value {
    json!({
        "major": "1", "minor": "36", "gitVersion": "v1.36.0",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25.0", "compiler": "gc", "platform": "linux/amd64",
    })
}

fn resource_request(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    path: &ResourcePath,
    verb: &str,
    query: &BTreeMap<String, String>,
    content_type: Option<&str>,
    body: &[u8],
) -> ApiResult<Response> {
    let mut st = shared.lock();
    let rt = st
        .registry
        .lookup(&path.group, &path.version, &path.resource)
        .cloned()
        .ok_or_else(ApiError::unknown_resource)?;
    // A namespaced resource is addressed within a namespace (except list/watch across all
    // namespaces); a cluster-scoped one never is.
    let namespace = match (&path.namespace, rt.namespaced) {
        (Some(ns), true) => ns.clone(),
        (None, true) if matches!(verb, "list" | "watch") => String::new(),
        (None, false) => String::new(),
        _ => return Err(ApiError::unknown_resource()),
    };
    let sub = match path.subresource.as_deref() {
        None => Sub::Main,
        Some("status") if rt.status_subresource && matches!(verb, "get" | "patch") => Sub::Status,
        Some(_) => return Err(ApiError::unknown_resource()),
    };
    let target = Target { rt: rt.clone(), version: path.version.clone(), namespace: namespace.clone(), sub };
    let name = path.name.clone().unwrap_or_default();
    // `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`
    let metadata_only = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata") && a.contains("g=meta.k8s.io"));
    let render = |obj: &Value| render_object(obj, &rt, &path.version, metadata_only);
    let filter = || {
        Filter::new(
            (!namespace.is_empty()).then_some(namespace.as_str()),
            query.get("fieldSelector").map(String::as_str),
        )
    };

    let (code, value) = match verb {
        "get" => (StatusCode::OK, render(&ops::get(&st, &target, &name)?)),
        // `limit` and `continue` are ignored: everything comes in one page.
        "list" => {
            let filter = filter()?;
            let items: Vec<Value> =
                st.objects_of(&rt.key()).filter(|(_, o)| filter.matches(o)).map(|(_, o)| render(o)).collect();
            let (kind, api_version) = if metadata_only {
                ("PartialObjectMetadataList".to_string(), "meta.k8s.io/v1".to_string())
            } else {
                (rt.list_kind(), rt.api_version(&path.version))
            };
            let metadata = json!({ "resourceVersion": st.current_rv().to_string() });
            (StatusCode::OK, json!({ "kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items }))
        }
        "watch" => {
            let resource_version = match query.get("resourceVersion").map(String::as_str) {
                None | Some("") => None,
                Some(rv) => {
                    Some(rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?)
                }
            };
            let request = WatchRequest {
                rt: rt.clone(),
                version: path.version.clone(),
                filter: filter()?,
                resource_version,
                bookmarks: query.get("allowWatchBookmarks").is_some_and(|v| v == "true"),
                timeout: query.get("timeoutSeconds").and_then(|t| t.parse().ok()).map(Duration::from_secs),
                metadata_only,
            };
            drop(st);
            let mut chunks = watch::start(shared.clone(), request);
            let stream = futures::stream::poll_fn(move |cx| chunks.poll_recv(cx));
            return Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(stream))
                .unwrap_or_else(|_| Response::new(Body::empty())));
        }
        "create" if !namespace.is_empty() || !rt.namespaced => {
            let body =
                serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding body: {e}")))?;
            let manager = query.get("fieldManager").cloned().unwrap_or_else(|| default_manager(headers));
            let created = ops::create(&mut st, &target, body, ops::Ownership::Update(&manager));
            lifecycle::reconcile(&mut st);
            (StatusCode::CREATED, render(&created?))
        }
        "patch" => {
            let apply = content_type == Some("application/apply-patch+yaml");
            let manager = query.get("fieldManager").cloned().or_else(|| (!apply).then(|| default_manager(headers)));
            let request = PatchRequest {
                content_type: content_type.unwrap_or_default(),
                body,
                manager: manager.as_deref(),
                force: query.get("force").is_some_and(|f| f == "true"),
            };
            let patched = ops::patch(&mut st, &target, &name, &request);
            lifecycle::reconcile(&mut st);
            let (code, obj) = patched?;
            (code, render(&obj))
        }
        "delete" => {
            let outcome = ops::delete(&mut st, &rt, &target.key(&name));
            lifecycle::reconcile(&mut st);
            let response = ops::delete_response(&rt, &outcome?);
            (StatusCode::OK, if response["kind"] == "Status" { response } else { render(&response) })
        }
        _ => return Err(ApiError::method_not_allowed(&rt, format!("{verb} is not supported by the fake apiserver"))),
    };
    Ok(json_response(code, &value))
}

/// Who a non-apply write without `fieldManager` is attributed to in managedFields: the
/// User-Agent up to its first `/`, as kube-apiserver does (empty without one).
fn default_manager(headers: &HeaderMap) -> String {
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    user_agent.split('/').next().unwrap_or_default().to_string()
}
