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

use super::delete::{self, DeleteOptions};
use super::error::{ApiError, ApiResult};
use super::lifecycle;
use super::ops::{self, PatchRequest, Sub, Target};
use super::selectors::{FieldSelector, Filter, LabelSelector};
use super::watch::{self, WatchRequest, render_object};
use super::{RecordedRequest, Shared};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// What a URL path addresses.
#[derive(Debug, Clone, PartialEq)]
enum Route {
    Version,
    CoreVersions,
    Groups,
    Group(String),
    ResourceList { group: String, version: String },
    Resource(ResourcePath),
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct ResourcePath {
    group: String,
    version: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Route {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (group, version, rest) = match parts.as_slice() {
        ["version"] => return Route::Version,
        ["api"] => return Route::CoreVersions,
        ["apis"] => return Route::Groups,
        ["apis", group] => return Route::Group(group.to_string()),
        ["api", version] => {
            return Route::ResourceList { group: String::new(), version: version.to_string() };
        }
        ["apis", group, version] => {
            return Route::ResourceList { group: group.to_string(), version: version.to_string() };
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Route::Unknown,
    };
    let mut rest = rest;
    let mut namespace = None;
    // /namespaces/{ns}/{resource}/... unless the third part is a namespace subresource.
    if rest.first() == Some(&"namespaces") && rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
        namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    if rest.len() > 3 {
        return Route::Unknown;
    }
    Route::Resource(ResourcePath {
        group: group.to_string(),
        version: version.to_string(),
        namespace,
        resource: rest[0].to_string(),
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn verb(method: &Method, route: &Route, query: &BTreeMap<String, String>) -> &'static str {
    let named = matches!(route, Route::Resource(ResourcePath { name: Some(_), .. }));
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    match *method {
        Method::GET if !matches!(route, Route::Resource(_)) || named => "get",
        Method::GET if watch => "watch",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

/// The shape of the response body the client accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Full,
    Metadata,
}

/// Content negotiation on `Accept`: plain JSON, or `PartialObjectMetadata[List]` in
/// `meta.k8s.io/v1` (or `v1beta1`). Other `as=` kinds (e.g. `Table`) and other media types are
/// skipped in favour of later alternatives; if nothing is acceptable, 406.
fn negotiate(headers: &HeaderMap, list: bool) -> ApiResult<Shape> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Shape::Full);
    };
    if accept.trim().is_empty() {
        return Ok(Shape::Full);
    }
    for range in accept.split(',') {
        let mut pieces = range.split(';').map(str::trim);
        let media = pieces.next().unwrap_or_default();
        let params: BTreeMap<&str, &str> = pieces.filter_map(|p| p.split_once('=')).collect();
        if !matches!(media, "application/json" | "application/*" | "*/*") {
            continue;
        }
        match params.get("as") {
            None => return Ok(Shape::Full),
            Some(kind) => {
                let wanted = if list { "PartialObjectMetadataList" } else { "PartialObjectMetadata" };
                let meta_group = params.get("g") == Some(&"meta.k8s.io")
                    && matches!(params.get("v"), Some(&"v1") | Some(&"v1beta1"));
                if *kind == wanted && meta_group {
                    return Ok(Shape::Metadata);
                }
            }
        }
    }
    Err(ApiError::not_acceptable(accept))
}

const AGGREGATED_DISCOVERY: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether `Accept` prefers aggregated discovery (`apidiscovery.k8s.io/v2`) to the plain lists.
fn wants_aggregated_discovery(headers: &HeaderMap) -> bool {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    for range in accept.split(',') {
        let params: BTreeMap<&str, &str> = range.split(';').skip(1).filter_map(|p| p.trim().split_once('=')).collect();
        match params.get("as") {
            Some(&"APIGroupDiscoveryList")
                if params.get("g") == Some(&"apidiscovery.k8s.io") && params.get("v") == Some(&"v2") =>
            {
                return true;
            }
            Some(_) => continue,
            None => return false,
        }
    }
    false
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn error_response(err: &ApiError) -> Response {
    json_response(err.code, &err.to_status())
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let started = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().unwrap_or_default().to_string();
    let query: BTreeMap<String, String> = url::form_urlencoded::parse(raw_query.as_bytes()).into_owned().collect();
    let route = parse_path(&path);
    let verb = verb(&parts.method, &route, &query);
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_string());

    let response = match axum::body::to_bytes(body, 64 * 1024 * 1024).await {
        Ok(bytes) => {
            dispatch(&shared, &parts.method, &parts.headers, &route, verb, &query, content_type.as_deref(), &bytes)
        }
        Err(e) => error_response(&ApiError::bad_request(format!("reading request body: {e}"))),
    };

    let resource = match &route {
        Route::Resource(r) => r.clone(),
        _ => ResourcePath::default(),
    };
    shared.record(RecordedRequest {
        method: parts.method.to_string(),
        path,
        query: raw_query,
        verb: verb.to_string(),
        group: resource.group,
        version: resource.version,
        namespace: resource.namespace,
        resource: resource.resource,
        name: resource.name,
        subresource: resource.subresource,
        content_type: if parts.method == Method::PATCH { content_type } else { None },
        accept: parts.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).map(str::to_string),
        user_agent: parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string),
        field_manager: query.get("fieldManager").cloned(),
        status: response.status().as_u16(),
        duration_us: started.elapsed().as_micros() as u64,
    });
    response
}

#[allow(clippy::too_many_arguments)]
fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    route: &Route,
    verb: &str,
    query: &BTreeMap<String, String>,
    content_type: Option<&str>,
    body: &[u8],
) -> Response {
    let result = match route {
        Route::Version => Ok(json_response(StatusCode::OK, &version_info())),
        Route::CoreVersions | Route::Groups => {
            let core = *route == Route::CoreVersions;
            let registry = &shared.lock().registry;
            Ok(if wants_aggregated_discovery(headers) {
                let body = registry.aggregated_discovery(core).to_string();
                Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, AGGREGATED_DISCOVERY)
                    .body(Body::from(body))
                    .unwrap_or_else(|_| Response::new(Body::empty()))
            } else if core {
                json_response(StatusCode::OK, &registry.core_versions(&shared.address))
            } else {
                json_response(StatusCode::OK, &registry.group_list())
            })
        }
        Route::Group(group) => shared
            .lock()
            .registry
            .group(group)
            .map(|g| json_response(StatusCode::OK, &g))
            .ok_or_else(ApiError::unknown_resource),
        Route::ResourceList { group, version } => shared
            .lock()
            .registry
            .resource_list(group, version)
            .map(|l| json_response(StatusCode::OK, &l))
            .ok_or_else(ApiError::unknown_resource),
        Route::Resource(path) => resource_request(shared, method, headers, path, verb, query, content_type, body),
        Route::Unknown => Err(ApiError::unknown_resource()),
    };
    result.unwrap_or_else(|e| error_response(&e))
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "36",
        "gitVersion": "v1.36.0",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn filter_from(query: &BTreeMap<String, String>, namespace: Option<&str>) -> ApiResult<Filter> {
    let labels = match query.get("labelSelector") {
        Some(s) => LabelSelector::parse(s).map_err(ApiError::bad_request)?,
        None => LabelSelector::default(),
    };
    let fields = match query.get("fieldSelector") {
        Some(s) => FieldSelector::parse(s).map_err(ApiError::bad_request)?,
        None => FieldSelector::default(),
    };
    Ok(Filter { namespace: namespace.map(str::to_string), labels, fields })
}

fn parse_body(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))
}

/// Who a non-apply write is attributed to in managedFields: `fieldManager`, else the
/// User-Agent up to its first `/`, as kube-apiserver does (kube-rs sends no User-Agent, so
/// its writes are recorded under an empty manager name, as in a real cluster).
fn default_manager(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .unwrap_or_default()
        .to_string()
}

#[allow(clippy::too_many_arguments)]
fn resource_request(
    shared: &Arc<Shared>,
    method: &Method,
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
        Some("status") if rt.status_subresource => Sub::Status,
        Some(_) => return Err(ApiError::unknown_resource()),
    };
    if sub == Sub::Status && !matches!(verb, "get" | "update" | "patch") {
        return Err(ApiError::method_not_allowed(&rt, format!("{verb} is not supported on the status subresource")));
    }
    // Dry-run is not modelled: refuse it rather than perform the write for real.
    let dry_run_body =
        serde_json::from_slice::<Value>(body).is_ok_and(|b| b["dryRun"].as_array().is_some_and(|d| !d.is_empty()));
    if query.contains_key("dryRun") || (verb.starts_with("delete") && dry_run_body) {
        return Err(ApiError::bad_request("dryRun is not supported by the fake apiserver"));
    }
    if verb == "create" && (namespace.is_empty() && rt.namespaced) {
        return Err(ApiError::method_not_allowed(&rt, "create needs a namespace in the path"));
    }
    let target = Target {
        rt: rt.clone(),
        version: path.version.clone(),
        namespace: namespace.clone(),
        sub,
        strict: query.get("fieldValidation").is_some_and(|v| v == "Strict"),
    };
    let list_namespace = (!namespace.is_empty()).then_some(namespace.as_str());
    let name = path.name.clone().unwrap_or_default();
    let manager = query.get("fieldManager").cloned().unwrap_or_else(|| default_manager(headers));
    let render = |obj: &Value, shape: Shape| render_object(obj, &rt, &path.version, shape == Shape::Metadata);

    let (code, value) = match verb {
        "get" => {
            let shape = negotiate(headers, false)?;
            (StatusCode::OK, render(&ops::get(&st, &target, &name)?, shape))
        }
        "list" => {
            let shape = negotiate(headers, true)?;
            let filter = filter_from(query, list_namespace)?;
            let limit = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
            let page = ops::list(&st, &target, &filter, limit, query.get("continue").map(String::as_str))?;
            let mut metadata = json!({ "resourceVersion": page.resource_version.to_string() });
            if let Some(token) = page.continue_token {
                metadata["continue"] = json!(token);
                metadata["remainingItemCount"] = json!(page.remaining);
            }
            let items: Vec<Value> = page.items.iter().map(|o| render(o, shape)).collect();
            let (kind, api_version) = match shape {
                Shape::Full => (rt.list_kind(), rt.api_version(&path.version)),
                Shape::Metadata => ("PartialObjectMetadataList".into(), "meta.k8s.io/v1".into()),
            };
            let list = json!({ "kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items });
            (StatusCode::OK, list)
        }
        "watch" => {
            let shape = negotiate(headers, false)?;
            let request = WatchRequest {
                rt: rt.clone(),
                version: path.version.clone(),
                filter: filter_from(query, list_namespace)?,
                resource_version: watch::parse_resource_version(query.get("resourceVersion").map(String::as_str))?,
                send_initial_events: query.get("sendInitialEvents").is_some_and(|v| v == "true"),
                bookmarks: query.get("allowWatchBookmarks").is_some_and(|v| v == "true"),
                timeout: query.get("timeoutSeconds").and_then(|t| t.parse().ok()).map(Duration::from_secs),
                metadata_only: shape == Shape::Metadata,
            };
            drop(st);
            let mut chunks = watch::start(shared.clone(), request);
            let stream = futures::stream::poll_fn(move |cx| chunks.poll_recv(cx));
            return Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CACHE_CONTROL, "no-cache, private")
                .body(Body::from_stream(stream))
                .map_err(|e| ApiError::internal(e.to_string()));
        }
        "create" => {
            let shape = negotiate(headers, false)?;
            let created = ops::create(&mut st, &target, parse_body(body)?, ops::Ownership::Update(&manager));
            lifecycle::reconcile(&mut st);
            (StatusCode::CREATED, render(&created?, shape))
        }
        "update" => {
            let shape = negotiate(headers, false)?;
            let updated = ops::update(&mut st, &target, &name, parse_body(body)?, &manager);
            lifecycle::reconcile(&mut st);
            (StatusCode::OK, render(&updated?, shape))
        }
        "patch" => {
            let shape = negotiate(headers, false)?;
            let request = PatchRequest {
                content_type: content_type.unwrap_or_default(),
                body,
                field_manager: query.get("fieldManager").map(String::as_str),
                default_manager: &manager,
                force: query.get("force").is_some_and(|f| f == "true"),
            };
            let patched = ops::patch(&mut st, &target, &name, &request);
            lifecycle::reconcile(&mut st);
            let (code, obj) = patched?;
            (code, render(&obj, shape))
        }
        "delete" => {
            let shape = negotiate(headers, false)?;
            let options = DeleteOptions::parse(body, query.get("propagationPolicy").map(String::as_str))?;
            let already_deleting = st.get(&target.key(&name)).is_some_and(super::store::is_deleting);
            let outcome = delete::delete(&mut st, &rt, &target.key(&name), &options);
            lifecycle::reconcile(&mut st);
            let response = delete::delete_response(&rt, &outcome?, already_deleting);
            let response = if response["kind"] == "Status" { response } else { render(&response, shape) };
            (StatusCode::OK, response)
        }
        "deletecollection" => {
            let options = DeleteOptions::parse(body, query.get("propagationPolicy").map(String::as_str))?;
            let filter = filter_from(query, list_namespace)?;
            let keys: Vec<_> =
                st.objects_of(&rt.key()).filter(|(_, o)| filter.matches(o)).map(|(k, _)| k.clone()).collect();
            let mut items = Vec::new();
            for key in keys {
                if let Ok(outcome) = delete::delete(&mut st, &rt, &key, &options) {
                    items.push(render(&outcome.object, Shape::Full));
                }
            }
            lifecycle::reconcile(&mut st);
            let list = json!({
                "kind": rt.list_kind(),
                "apiVersion": rt.api_version(&path.version),
                "metadata": { "resourceVersion": st.current_rv().to_string() },
                "items": items,
            });
            (StatusCode::OK, list)
        }
        _ => {
            return Err(ApiError::method_not_allowed(&rt, format!("method {method} is not supported")));
        }
    };
    Ok(json_response(code, &value))
}
