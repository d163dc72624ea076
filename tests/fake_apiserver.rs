//! Tests of the fake API server itself: each modelled behaviour, through `kube::Client`
//! (typed and dynamic `Api`s, kube-runtime) and through raw HTTP where the exact wire format
//! matters.

// The CRD literals of the validation tests nest deeply.
#![recursion_limit = "256"]

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    Preconditions, WatchEvent, WatchParams,
};
use kube::core::{ObjectMeta, PartialObjectMeta};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use support::fake_apiserver::FakeApiServer;

/// The custom resource used by these tests: namespaced, with a status subresource.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(group = "example.test", version = "v1", kind = "Widget", namespaced, status = "WidgetStatus", shortname = "wd")]
pub struct WidgetSpec {
    pub size: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct WidgetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

const LIMIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test instead of hanging.
async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut).await.expect("timed out")
}

async fn setup() -> (FakeApiServer, Client) {
    let api = FakeApiServer::start().await;
    api.register_crd(Widget::crd());
    let client = api.client();
    (api, client)
}

fn widget(name: &str, size: i32) -> Widget {
    Widget::new(name, WidgetSpec { size, ..Default::default() })
}

fn widgets(client: &Client, ns: &str) -> Api<Widget> {
    Api::namespaced(client.clone(), ns)
}

/// The `Status` of a failed call.
fn api_error<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn rv_of<K: kube::Resource>(obj: &K) -> u64 {
    obj.meta().resource_version.as_deref().expect("resourceVersion").parse().expect("numeric resourceVersion")
}

async fn create_namespace(client: &Client, name: &str) {
    let ns = Namespace { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() };
    within(Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns)).await.expect("create namespace");
}

fn secret(name: &str) -> Secret {
    Secret {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        string_data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    }
}

fn merge(v: Value) -> Patch<Value> {
    Patch::Merge(v)
}

/// Raw HTTP, for exact wire-level assertions.
struct Raw {
    http: reqwest::Client,
    base: String,
}

impl Raw {
    fn new(api: &FakeApiServer) -> Self {
        let http = reqwest::Client::builder().no_proxy().build().expect("reqwest client");
        Self { http, base: api.url() }
    }

    async fn send(&self, method: &str, path: &str, content_type: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(body) = body {
            req = req.body(body.to_string());
        }
        let resp = within(req.send()).await.expect("send");
        let status = resp.status().as_u16();
        let text = within(resp.text()).await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send("GET", path, None, None).await
    }

    async fn watch(&self, path_and_query: &str, accept: Option<&str>) -> RawWatch {
        let mut req = self.http.get(format!("{}{path_and_query}", self.base));
        if let Some(accept) = accept {
            req = req.header("accept", accept);
        }
        let resp = within(req.send()).await.expect("open watch");
        assert_eq!(resp.status(), 200, "watch status");
        RawWatch { resp, buf: Vec::new() }
    }
}

/// A raw watch stream, one JSON event per line.
struct RawWatch {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl RawWatch {
    /// The next event, or `None` when the server ended the stream.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).expect("watch event is JSON"));
            }
            match within(self.resp.chunk()).await.expect("read watch stream") {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => return None,
            }
        }
    }

    /// The next event that is not a BOOKMARK.
    async fn next_change(&mut self) -> Option<Value> {
        loop {
            let event = self.next().await?;
            if event["type"] != "BOOKMARK" {
                return Some(event);
            }
        }
    }

    /// Asserts the next change's type and object name.
    async fn expect(&mut self, event_type: &str, name: &str) -> Value {
        let event = self.next_change().await.expect("stream ended early");
        assert_eq!(
            (event["type"].as_str(), event["object"]["metadata"]["name"].as_str()),
            (Some(event_type), Some(name)),
            "unexpected event {event}"
        );
        event
    }
}

fn event_rv(event: &Value) -> u64 {
    event["object"]["metadata"]["resourceVersion"].as_str().expect("rv").parse().expect("numeric rv")
}

// ---------------------------------------------------------------------------------------
// Serving, discovery, kubeconfig
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn serves_version_and_discovery() {
    let (_api, client) = setup().await;
    let version = within(client.apiserver_version()).await.expect("version");
    assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "36"));
    assert_eq!(version.git_version, "v1.36.0");

    let discovery = within(kube::Discovery::new(client.clone()).run()).await.expect("discovery");
    let (widget_ar, caps) =
        discovery.resolve_gvk(&GroupVersionKind::gvk("example.test", "v1", "Widget")).expect("Widget is discoverable");
    assert_eq!(widget_ar.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(caps.subresources.iter().any(|(ar, _)| ar.plural == "widgets/status" || ar.plural == "status"));
    for (group, version, kind) in [
        ("", "v1", "Secret"),
        ("", "v1", "Namespace"),
        ("coordination.k8s.io", "v1", "Lease"),
        ("events.k8s.io", "v1", "Event"),
        ("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
    ] {
        assert!(
            discovery.resolve_gvk(&GroupVersionKind::gvk(group, version, kind)).is_some(),
            "{kind} is discoverable"
        );
    }
}

#[tokio::test]
async fn serves_aggregated_discovery() {
    let (_api, client) = setup().await;
    let discovery = within(kube::Discovery::new(client.clone()).run_aggregated()).await.expect("aggregated discovery");
    let (widget_ar, caps) =
        discovery.resolve_gvk(&GroupVersionKind::gvk("example.test", "v1", "Widget")).expect("Widget is discoverable");
    assert_eq!(widget_ar.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let (secret_ar, _) =
        discovery.resolve_gvk(&GroupVersionKind::gvk("", "v1", "Secret")).expect("Secret is discoverable");
    assert_eq!(secret_ar.plural, "secrets");
    let (ns_ar, caps) =
        discovery.resolve_gvk(&GroupVersionKind::gvk("", "v1", "Namespace")).expect("Namespace is discoverable");
    assert_eq!((ns_ar.plural.as_str(), caps.scope), ("namespaces", kube::discovery::Scope::Cluster));
}

#[tokio::test]
async fn kubeconfig_file_gives_a_working_client() {
    let api = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    api.write_kubeconfig(&path);

    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("config from kubeconfig");
    assert_eq!(config.cluster_url.to_string(), format!("{}/", api.url()));
    assert_eq!(config.default_namespace, "default");
    let client = Client::try_from(config).expect("client");
    let names: Vec<String> = within(Api::<Namespace>::all(client).list(&Default::default()))
        .await
        .expect("list namespaces")
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert!(names.contains(&"default".to_string()) && names.contains(&"kube-system".to_string()), "{names:?}");

    let in_memory = kube::Config::from_custom_kubeconfig(api.kubeconfig(), &Default::default())
        .await
        .expect("config from in-memory kubeconfig");
    assert_eq!(in_memory.cluster_url.to_string(), format!("{}/", api.url()));
}

#[tokio::test]
async fn unknown_resources_are_404_status() {
    let (api, client) = setup().await;
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("nope.test", "v1", "Thing"), "things");
    let things: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let status = api_error(within(things.get("x")).await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));

    let raw = Raw::new(&api);
    let (code, body) = raw.get("/api/v1/namespaces/default/pods").await;
    assert_eq!(code, 404);
    assert_eq!((body["kind"].as_str(), body["status"].as_str()), (Some("Status"), Some("Failure")));
    // Served resource, unserved version.
    assert_eq!(raw.get("/apis/example.test/v2/namespaces/default/widgets").await.0, 404);
    // A subresource that does not exist.
    let (code, _) = raw.get("/api/v1/namespaces/default/secrets/x/scale").await;
    assert_eq!(code, 404);
}

// ---------------------------------------------------------------------------------------
// Create, get, list
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn create_assigns_server_fields() {
    let (api, client) = setup().await;
    let w = widgets(&client, "default");
    let before = api.resource_version();
    let created = within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");
    assert!(created.uid().is_some_and(|u| !u.is_empty()));
    assert_eq!(rv_of(&created), before + 1, "one global counter");
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.namespace().as_deref(), Some("default"));

    let fetched = within(w.get("a")).await.expect("get");
    assert_eq!(json!(fetched), json!(created));

    let mut generated = widget("", 2);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let generated = within(w.create(&PostParams::default(), &generated)).await.expect("generateName");
    let name = generated.name_any();
    assert!(name.starts_with("gen-") && name.len() == "gen-".len() + 5, "{name}");

    let status = api_error(within(w.create(&PostParams::default(), &widget("a", 1))).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(status.message, "widgets.example.test \"a\" already exists");

    // Built-in types without a generation do not get one.
    let s = within(Api::<Secret>::namespaced(client.clone(), "default").create(&PostParams::default(), &secret("s")))
        .await
        .expect("create secret");
    assert_eq!(s.metadata.generation, None);
    assert_eq!(rv_of(&s), rv_of(&generated) + 1);

    // Names must be DNS-1123 subdomains (labels for namespaces).
    let status = api_error(within(w.create(&PostParams::default(), &widget("Not_Valid", 1))).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(status.message.contains("metadata.name: Invalid value: \"Not_Valid\""), "{}", status.message);
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": "a.b" } })).expect("ns");
    let status = api_error(within(Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns)).await);
    assert_eq!(status.code, 422);

    // A resourceVersion must not be sent on create.
    let mut with_rv = widget("b", 1);
    with_rv.metadata.resource_version = Some("5".into());
    let status = api_error(within(w.create(&PostParams::default(), &with_rv)).await);
    assert_eq!(status.code, 500);
}

#[tokio::test]
async fn create_needs_an_existing_namespace() {
    let (_api, client) = setup().await;
    let status = api_error(within(widgets(&client, "nope").create(&PostParams::default(), &widget("a", 1))).await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, "namespaces \"nope\" not found");
    let status = api_error(
        within(Api::<Secret>::namespaced(client.clone(), "nope").create(&PostParams::default(), &secret("s"))).await,
    );
    assert_eq!(status.code, 404);
}

#[tokio::test]
async fn list_filters_by_label_and_field_selectors() {
    let (api, client) = setup().await;
    create_namespace(&client, "other").await;
    for (ns, name, labels) in [
        ("default", "a", json!({ "app": "x", "tier": "web" })),
        ("default", "b", json!({ "app": "y" })),
        ("default", "c", json!({})),
        ("other", "d", json!({ "app": "x" })),
    ] {
        let cm: ConfigMap =
            serde_json::from_value(json!({ "metadata": { "name": name, "labels": labels } })).expect("cm");
        within(Api::<ConfigMap>::namespaced(client.clone(), ns).create(&PostParams::default(), &cm))
            .await
            .expect("create configmap");
    }
    let names = |list: kube::core::ObjectList<ConfigMap>| list.items.iter().map(|c| c.name_any()).collect::<Vec<_>>();
    let default_ns = Api::<ConfigMap>::namespaced(client.clone(), "default");
    let all = Api::<ConfigMap>::all(client.clone());
    let list = |api: Api<ConfigMap>, lp: ListParams| async move { within(api.list(&lp)).await.expect("list") };

    let everything = list(default_ns.clone(), ListParams::default()).await;
    assert_eq!(everything.metadata.resource_version, Some(api.resource_version().to_string()));
    assert_eq!(names(everything), ["a", "b", "c"]);
    assert_eq!(names(list(default_ns.clone(), ListParams::default().labels("app=x")).await), ["a"]);
    assert_eq!(names(list(default_ns.clone(), ListParams::default().labels("app==x")).await), ["a"]);
    assert_eq!(names(list(default_ns.clone(), ListParams::default().labels("app!=x")).await), ["b", "c"]);
    assert_eq!(names(list(default_ns.clone(), ListParams::default().labels("app")).await), ["a", "b"]);
    assert_eq!(names(list(default_ns.clone(), ListParams::default().labels("!app")).await), ["c"]);
    assert_eq!(names(list(default_ns.clone(), ListParams::default().labels("app in (x, y),tier")).await), ["a"]);
    assert_eq!(names(list(default_ns.clone(), ListParams::default().labels("app notin (x)")).await), ["b", "c"]);
    assert_eq!(names(list(default_ns.clone(), ListParams::default().fields("metadata.name=b")).await), ["b"]);
    assert_eq!(names(list(default_ns.clone(), ListParams::default().fields("metadata.name!=b")).await), ["a", "c"]);
    assert_eq!(names(list(all.clone(), ListParams::default().labels("app=x")).await), ["a", "d"]);
    assert_eq!(names(list(all.clone(), ListParams::default().fields("metadata.namespace=other")).await), ["d"]);

    let status = api_error(within(default_ns.list(&ListParams::default().fields("spec.x=1"))).await);
    assert_eq!((status.code, status.reason.as_str()), (400, "BadRequest"));
    let status = api_error(within(default_ns.list(&ListParams::default().labels("a in (b"))).await);
    assert_eq!(status.code, 400);
}

#[tokio::test]
async fn list_paginates_with_limit_and_continue() {
    let (_api, client) = setup().await;
    let w = widgets(&client, "default");
    for name in ["a", "b", "c", "d", "e"] {
        within(w.create(&PostParams::default(), &widget(name, 1))).await.expect("create");
    }
    let first = within(w.list(&ListParams::default().limit(2))).await.expect("page 1");
    assert_eq!(first.items.iter().map(|w| w.name_any()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().expect("continue token");
    let second = within(w.list(&ListParams::default().limit(2).continue_token(&token))).await.expect("page 2");
    assert_eq!(second.items.iter().map(|w| w.name_any()).collect::<Vec<_>>(), ["c", "d"]);
    assert_eq!(second.metadata.resource_version, first.metadata.resource_version);
    let token = second.metadata.continue_.clone().expect("continue token");
    let third = within(w.list(&ListParams::default().limit(2).continue_token(&token))).await.expect("page 3");
    assert_eq!(third.items.iter().map(|w| w.name_any()).collect::<Vec<_>>(), ["e"]);
    assert!(third.metadata.continue_.is_none());
}

// ---------------------------------------------------------------------------------------
// Update and patch
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn update_uses_optimistic_concurrency() {
    let (_api, client) = setup().await;
    let w = widgets(&client, "default");
    let created = within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");

    let mut changed = created.clone();
    changed.spec.size = 2;
    let updated = within(w.replace("a", &PostParams::default(), &changed)).await.expect("replace");
    assert_eq!(updated.spec.size, 2);
    assert!(rv_of(&updated) > rv_of(&created));

    // `changed` still carries the old resourceVersion.
    let status = api_error(within(w.replace("a", &PostParams::default(), &changed)).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Operation cannot be fulfilled on widgets.example.test \"a\": the object has been modified; \
         please apply your changes to the latest version and try again"
    );

    // Custom resources refuse an update without resourceVersion, like the real server...
    let mut unconditional = updated.clone();
    unconditional.metadata.resource_version = None;
    let status = api_error(within(w.replace("a", &PostParams::default(), &unconditional)).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(status.message.contains("metadata.resourceVersion"), "{}", status.message);

    // ...while built-in types such as Secret allow it.
    let secrets = Api::<Secret>::namespaced(client.clone(), "default");
    within(secrets.create(&PostParams::default(), &secret("s"))).await.expect("create secret");
    let mut replacement = secret("s");
    replacement.string_data = Some([("k".to_string(), "new".to_string())].into());
    let replaced = within(secrets.replace("s", &PostParams::default(), &replacement)).await.expect("replace secret");
    // stringData is write-only: it lands in data.
    assert_eq!(replaced.string_data, None);
    assert_eq!(replaced.data.as_ref().and_then(|d| d.get("k")).map(|b| b.0.as_slice()), Some(b"new".as_slice()));
    assert_eq!(replaced.type_.as_deref(), Some("Opaque"));

    // The name in the body must match the URL.
    let status = api_error(within(w.replace("other", &PostParams::default(), &updated)).await);
    assert_eq!(status.code, 400);
    // Updating something that does not exist is a 404.
    let mut ghost = updated.clone();
    ghost.metadata.name = Some("ghost".into());
    assert_eq!(api_error(within(w.replace("ghost", &PostParams::default(), &ghost)).await).code, 404);
}

#[tokio::test]
async fn merge_and_strategic_merge_patches() {
    let (_api, client) = setup().await;
    let w = widgets(&client, "default");
    let mut created = widget("a", 1);
    created.spec.color = Some("red".into());
    within(w.create(&PostParams::default(), &created)).await.expect("create");

    let patched = within(w.patch(
        "a",
        &PatchParams::default(),
        &merge(json!({ "spec": { "color": null, "note": "n" }, "metadata": { "labels": { "l": "1" } } })),
    ))
    .await
    .expect("merge patch");
    assert_eq!((patched.spec.color.as_deref(), patched.spec.note.as_deref()), (None, Some("n")));
    assert_eq!(patched.labels().get("l").map(String::as_str), Some("1"));

    // A stale resourceVersion in a patch is a precondition.
    let status = api_error(
        within(w.patch("a", &PatchParams::default(), &merge(json!({ "metadata": { "resourceVersion": "1" } })))).await,
    );
    assert_eq!(status.code, 409);

    // Strategic merge patch is for built-in types only.
    let status = api_error(within(w.patch("a", &PatchParams::default(), &Patch::Strategic(json!({})))).await);
    assert_eq!((status.code, status.reason.as_str()), (415, "UnsupportedMediaType"));

    // On built-ins, metadata.finalizers merges (patchStrategy: merge).
    let secrets = Api::<Secret>::namespaced(client.clone(), "default");
    let mut s = secret("s");
    s.metadata.finalizers = Some(vec!["one".into()]);
    within(secrets.create(&PostParams::default(), &s)).await.expect("create secret");
    let patched = within(secrets.patch(
        "s",
        &PatchParams::default(),
        &Patch::Strategic(json!({ "metadata": { "finalizers": ["two"] }, "stringData": { "k2": "v2" } })),
    ))
    .await
    .expect("strategic patch");
    assert_eq!(patched.finalizers(), ["one", "two"]);
    let patched = within(secrets.patch(
        "s",
        &PatchParams::default(),
        &Patch::Strategic(json!({ "metadata": { "$deleteFromPrimitiveList/finalizers": ["one"] } })),
    ))
    .await
    .expect("strategic delete from list");
    assert_eq!(patched.finalizers(), ["two"]);
    // With merge patch the list is replaced.
    let patched =
        within(secrets.patch("s", &PatchParams::default(), &merge(json!({ "metadata": { "finalizers": ["three"] } }))))
            .await
            .expect("merge patch finalizers");
    assert_eq!(patched.finalizers(), ["three"]);
}

async fn json_patch(w: &Api<Widget>, ops: Value) -> Result<Widget, kube::Error> {
    // The operations deserialize into kube's `json_patch::Patch` without naming that crate.
    let patch = Patch::<()>::Json(serde_json::from_value(ops).expect("json patch"));
    within(w.patch("a", &PatchParams::default(), &patch)).await
}

#[tokio::test]
async fn json_patch_test_operations_follow_kube_apiserver() {
    let (_api, client) = setup().await;
    let w = widgets(&client, "default");
    within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");

    // `[]` does not match a missing path.
    let status =
        api_error(json_patch(&w, json!([{ "op": "test", "path": "/metadata/finalizers", "value": [] }])).await);
    assert_eq!(
        (status.code, status.reason.as_str(), status.status),
        (422, "Invalid", Some(kube::core::response::StatusSummary::Failure))
    );
    // Nor does any other non-null value.
    let status =
        api_error(json_patch(&w, json!([{ "op": "test", "path": "/metadata/finalizers", "value": ["x"] }])).await);
    assert_eq!(status.code, 422);
    let status = api_error(json_patch(&w, json!([{ "op": "test", "path": "/spec/color", "value": "red" }])).await);
    assert_eq!(status.code, 422);

    // null passes against a missing path (kube-runtime's finalizer() relies on it).
    let added = json_patch(
        &w,
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": ["example.test/cleanup"] },
        ]),
    )
    .await
    .expect("null test on a missing path passes");
    assert_eq!(added.finalizers(), ["example.test/cleanup"]);

    // null fails once the path is present, and nothing of the patch is applied.
    let status = api_error(
        json_patch(
            &w,
            json!([
                { "op": "test", "path": "/metadata/finalizers", "value": null },
                { "op": "add", "path": "/metadata/finalizers", "value": ["other"] },
            ]),
        )
        .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    let causes = status.details.expect("details").causes;
    assert!(causes.iter().any(|c| c.message.contains("/metadata/finalizers")), "{causes:?}");
    assert_eq!(within(w.get("a")).await.expect("get").finalizers(), ["example.test/cleanup"]);

    // A matching value passes; ops apply in order.
    let patched = json_patch(
        &w,
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": ["example.test/cleanup"] },
            { "op": "add", "path": "/metadata/finalizers/-", "value": "second" },
            { "op": "test", "path": "/metadata/finalizers/1", "value": "second" },
            { "op": "replace", "path": "/spec/size", "value": 7 },
            { "op": "copy", "from": "/metadata/name", "path": "/spec/note" },
            { "op": "move", "from": "/spec/note", "path": "/spec/color" },
        ]),
    )
    .await
    .expect("json patch");
    assert_eq!(patched.finalizers(), ["example.test/cleanup", "second"]);
    assert_eq!(patched.spec.size, 7);
    assert_eq!((patched.spec.note.as_deref(), patched.spec.color.as_deref()), (None, Some("a")));

    // Removing a missing path fails; so does a test under a missing parent.
    assert_eq!(api_error(json_patch(&w, json!([{ "op": "remove", "path": "/spec/nope" }])).await).code, 422);
    assert_eq!(
        api_error(json_patch(&w, json!([{ "op": "test", "path": "/nope/deeper", "value": null }])).await).code,
        422
    );
}

#[tokio::test]
async fn noop_writes_keep_the_resource_version_and_emit_nothing() {
    let (api, client) = setup().await;
    let w = widgets(&client, "default");
    let created = within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");
    let raw = Raw::new(&api);
    let mut watch = raw
        .watch(
            &format!("/apis/example.test/v1/namespaces/default/widgets?watch=true&resourceVersion={}", rv_of(&created)),
            None,
        )
        .await;

    let same =
        within(w.patch("a", &PatchParams::default(), &merge(json!({ "spec": { "size": 1 } })))).await.expect("noop");
    assert_eq!(rv_of(&same), rv_of(&created));
    let same = within(w.replace("a", &PostParams::default(), &created)).await.expect("noop replace");
    assert_eq!(rv_of(&same), rv_of(&created));
    assert_eq!(api.resource_version(), rv_of(&created));

    let changed =
        within(w.patch("a", &PatchParams::default(), &merge(json!({ "spec": { "size": 2 } })))).await.expect("change");
    assert_eq!(rv_of(&changed), rv_of(&created) + 1);
    let event = watch.expect("MODIFIED", "a").await;
    assert_eq!(event["object"]["spec"]["size"], 2, "the no-ops emitted no events");
}

#[tokio::test]
async fn generation_changes_only_with_spec() {
    let (_api, client) = setup().await;
    let w = widgets(&client, "default");
    within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");
    let labelled =
        within(w.patch("a", &PatchParams::default(), &merge(json!({ "metadata": { "labels": { "x": "y" } } }))))
            .await
            .expect("label");
    assert_eq!(labelled.metadata.generation, Some(1));
    let status =
        within(w.patch_status("a", &PatchParams::default(), &merge(json!({ "status": { "phase": "Ready" } }))))
            .await
            .expect("status");
    assert_eq!(status.metadata.generation, Some(1));
    let spec =
        within(w.patch("a", &PatchParams::default(), &merge(json!({ "spec": { "size": 3 } })))).await.expect("spec");
    assert_eq!(spec.metadata.generation, Some(2));
    let spec = within(w.patch("a", &PatchParams::default(), &merge(json!({ "spec": { "color": "blue" } }))))
        .await
        .expect("spec");
    assert_eq!(spec.metadata.generation, Some(3));
    // A client cannot set the generation.
    let status = within(w.patch("a", &PatchParams::default(), &merge(json!({ "metadata": { "generation": 42 } }))))
        .await
        .expect("generation is ignored");
    assert_eq!(status.metadata.generation, Some(3));
}

#[tokio::test]
async fn status_subresource_isolates_status_from_the_rest() {
    let (_api, client) = setup().await;
    let w = widgets(&client, "default");
    let mut with_status = widget("a", 1);
    with_status.status = Some(WidgetStatus { phase: Some("Ignored".into()), message: None });
    let created = within(w.create(&PostParams::default(), &with_status)).await.expect("create");
    assert_eq!(created.status, None, "status is dropped on create");

    // /status writes change only status.
    let patched = within(w.patch_status(
        "a",
        &PatchParams::default(),
        &merge(
            json!({ "spec": { "size": 99 }, "metadata": { "labels": { "x": "y" } }, "status": { "phase": "Ready" } }),
        ),
    ))
    .await
    .expect("patch status");
    assert_eq!(patched.spec.size, 1);
    assert!(patched.labels().is_empty());
    assert_eq!(patched.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Ready"));

    // Main-resource writes never change status.
    let patched = within(w.patch(
        "a",
        &PatchParams::default(),
        &merge(json!({ "spec": { "size": 2 }, "status": { "phase": "Hacked" } })),
    ))
    .await
    .expect("patch main");
    assert_eq!(patched.spec.size, 2);
    assert_eq!(patched.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Ready"));
    let mut replaced = patched.clone();
    replaced.status = None;
    let replaced = within(w.replace("a", &PostParams::default(), &replaced)).await.expect("replace main");
    assert_eq!(replaced.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Ready"));

    // PUT /status replaces the status (absent → removed) and nothing else.
    let mut status_put = replaced.clone();
    status_put.spec.size = 50;
    status_put.status = Some(WidgetStatus { phase: None, message: Some("m".into()) });
    let after = within(w.replace_status("a", &PostParams::default(), &status_put)).await.expect("replace status");
    assert_eq!(after.spec.size, 2);
    assert_eq!(after.status, Some(WidgetStatus { phase: None, message: Some("m".into()) }));
    let got = within(w.get_status("a")).await.expect("get status");
    assert_eq!(json!(got), json!(after));
}

#[tokio::test]
async fn without_status_subresource_status_is_ordinary_data() {
    let (api, client) = setup().await;
    api.register_crd(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "gadgets.example.test" },
        "spec": {
            "group": "example.test",
            "names": { "plural": "gadgets", "singular": "gadget", "kind": "Gadget" },
            "scope": "Cluster",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } },
            }],
        },
    }));
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.test", "v1", "Gadget"), "gadgets");
    let gadgets: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let mut obj = DynamicObject::new("g", &ar);
    obj.data = json!({ "spec": { "a": 1 }, "status": { "s": "kept" } });
    let created = within(gadgets.create(&PostParams::default(), &obj)).await.expect("create gadget");
    assert_eq!(created.data["status"]["s"], "kept");
    assert_eq!(created.namespace(), None, "cluster-scoped");
    let patched = within(gadgets.patch("g", &PatchParams::default(), &merge(json!({ "status": { "s": "changed" } }))))
        .await
        .expect("patch");
    assert_eq!(patched.data["status"]["s"], "changed");
    // Like the real server, any non-metadata change bumps the generation here.
    assert_eq!(patched.metadata.generation, Some(2));
    let status = api_error(within(gadgets.get_status("g")).await);
    assert_eq!(status.code, 404, "no status subresource");
}

#[tokio::test]
async fn crd_versions_are_served_with_their_own_api_version() {
    let (api, client) = setup().await;
    api.register_crd(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "sprockets.example.test" },
        "spec": {
            "group": "example.test",
            "names": { "plural": "sprockets", "kind": "Sprocket" },
            "scope": "Namespaced",
            "versions": [
                { "name": "v1", "served": true, "storage": true, "subresources": { "status": {} } },
                { "name": "v1beta1", "served": true, "storage": false },
                { "name": "v1alpha1", "served": false, "storage": false },
            ],
        },
    }));
    let gvk = |v: &str| GroupVersionKind::gvk("example.test", v, "Sprocket");
    let v1: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &ApiResource::from_gvk_with_plural(&gvk("v1"), "sprockets"));
    let beta: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk("v1beta1"), "sprockets"),
    );
    let alpha: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk("v1alpha1"), "sprockets"),
    );
    let obj = DynamicObject::new("s", &ApiResource::from_gvk_with_plural(&gvk("v1"), "sprockets"))
        .data(json!({ "spec": {} }));
    within(v1.create(&PostParams::default(), &obj)).await.expect("create");
    let seen = within(beta.get("s")).await.expect("get at v1beta1");
    assert_eq!(seen.types.expect("types").api_version, "example.test/v1beta1");
    assert_eq!(api_error(within(alpha.get("s")).await).code, 404);
}

// ---------------------------------------------------------------------------------------
// Deletion and finalizers
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let (api, client) = setup().await;
    let w = widgets(&client, "default");
    let mut held = widget("a", 1);
    held.metadata.finalizers = Some(vec!["example.test/cleanup".into()]);
    let created = within(w.create(&PostParams::default(), &held)).await.expect("create");
    let raw = Raw::new(&api);
    let mut watch = raw
        .watch(
            &format!("/apis/example.test/v1/namespaces/default/widgets?watch=true&resourceVersion={}", rv_of(&created)),
            None,
        )
        .await;

    let deleted = within(w.delete("a", &DeleteParams::default())).await.expect("delete");
    let terminating = deleted.left().expect("the object is returned while finalizers remain");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(0));
    assert_eq!(terminating.metadata.generation, Some(2), "marking as deleting bumps the generation");
    let event = watch.expect("MODIFIED", "a").await;
    assert!(event["object"]["metadata"]["deletionTimestamp"].is_string());

    // Still readable and writable (spec and status) while terminating.
    assert!(within(w.get("a")).await.expect("get").metadata.deletion_timestamp.is_some());
    within(w.patch_status("a", &PatchParams::default(), &merge(json!({ "status": { "phase": "Cleaning" } }))))
        .await
        .expect("status while deleting");
    watch.expect("MODIFIED", "a").await;

    // Deleting again changes nothing.
    let rv = api.resource_version();
    let again = within(w.delete("a", &DeleteParams::default())).await.expect("delete again");
    assert!(again.is_left());
    assert_eq!(api.resource_version(), rv);

    // Emptying the finalizers removes the object: DELETED only now.
    within(w.patch("a", &PatchParams::default(), &merge(json!({ "metadata": { "finalizers": null } }))))
        .await
        .expect("remove finalizer");
    let event = watch.expect("DELETED", "a").await;
    assert_eq!(event_rv(&event), api.resource_version());
    assert_eq!(api_error(within(w.get("a")).await).code, 404);
}

#[tokio::test]
async fn no_new_finalizers_while_deleting() {
    let (_api, client) = setup().await;
    let w = widgets(&client, "default");
    let mut held = widget("a", 1);
    held.metadata.finalizers = Some(vec!["one".into(), "two".into()]);
    within(w.create(&PostParams::default(), &held)).await.expect("create");
    within(w.delete("a", &DeleteParams::default())).await.expect("delete");

    let status = api_error(
        within(w.patch(
            "a",
            &PatchParams::default(),
            &merge(json!({ "metadata": { "finalizers": ["one", "two", "three"] } })),
        ))
        .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(
        status
            .message
            .contains("metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted"),
        "{}",
        status.message
    );
    // Replacing one finalizer by another is adding one, too.
    let status = api_error(
        within(w.patch(
            "a",
            &PatchParams::default(),
            &merge(json!({ "metadata": { "finalizers": ["one", "three"] } })),
        ))
        .await,
    );
    assert_eq!(status.code, 422);

    // Spec changes and removing finalizers still work.
    let patched =
        within(w.patch("a", &PatchParams::default(), &merge(json!({ "spec": { "size": 5 } })))).await.expect("spec");
    assert_eq!(patched.spec.size, 5);
    let patched =
        within(w.patch("a", &PatchParams::default(), &merge(json!({ "metadata": { "finalizers": ["two"] } }))))
            .await
            .expect("remove one");
    assert_eq!(patched.finalizers(), ["two"]);
}

#[tokio::test]
async fn deletion_timestamp_cannot_be_set_or_cleared_by_clients() {
    let (_api, client) = setup().await;
    let w = widgets(&client, "default");
    within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");
    let status = api_error(
        within(w.patch(
            "a",
            &PatchParams::default(),
            &merge(json!({ "metadata": { "deletionTimestamp": "2020-01-01T00:00:00Z" } })),
        ))
        .await,
    );
    assert_eq!(status.code, 422);

    let mut held = widget("b", 1);
    held.metadata.finalizers = Some(vec!["f".into()]);
    within(w.create(&PostParams::default(), &held)).await.expect("create");
    within(w.delete("b", &DeleteParams::default())).await.expect("delete");
    let patched = within(w.patch(
        "b",
        &PatchParams::default(),
        &merge(json!({ "metadata": { "deletionTimestamp": null, "deletionGracePeriodSeconds": null } })),
    ))
    .await
    .expect("clearing is ignored");
    assert!(patched.metadata.deletion_timestamp.is_some());
}

#[tokio::test]
async fn delete_responses_and_preconditions() {
    let (api, client) = setup().await;
    let w = widgets(&client, "default");
    let created = within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");
    let raw = Raw::new(&api);
    let mut watch = raw
        .watch(
            &format!("/apis/example.test/v1/namespaces/default/widgets?watch=true&resourceVersion={}", rv_of(&created)),
            None,
        )
        .await;

    let wrong_uid = DeleteParams {
        preconditions: Some(Preconditions { uid: Some("not-the-uid".into()), resource_version: None }),
        ..Default::default()
    };
    let status = api_error(within(w.delete("a", &wrong_uid)).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(status.message.contains("Precondition failed: UID in precondition"), "{}", status.message);
    let wrong_rv = DeleteParams {
        preconditions: Some(Preconditions { uid: None, resource_version: Some("1".into()) }),
        ..Default::default()
    };
    assert_eq!(api_error(within(w.delete("a", &wrong_rv)).await).code, 409);

    // Custom resources answer with the deleted object...
    let right = DeleteParams {
        preconditions: Some(Preconditions { uid: created.uid(), resource_version: created.resource_version() }),
        ..Default::default()
    };
    let gone = within(w.delete("a", &right)).await.expect("delete").left().expect("object");
    assert_eq!(gone.uid(), created.uid());
    let event = watch.expect("DELETED", "a").await;
    assert_eq!(event_rv(&event), rv_of(&created) + 1);
    assert_eq!(api_error(within(w.delete("a", &DeleteParams::default())).await).code, 404);

    // ...Secrets with a Success Status.
    let secrets = Api::<Secret>::namespaced(client.clone(), "default");
    within(secrets.create(&PostParams::default(), &secret("s"))).await.expect("create secret");
    let status =
        within(secrets.delete("s", &DeleteParams::default())).await.expect("delete secret").right().expect("Status");
    assert_eq!(status.details.expect("details").name, "s");

    // deletecollection
    for name in ["x", "y"] {
        within(w.create(&PostParams::default(), &widget(name, 1))).await.expect("create");
    }
    within(w.delete_collection(&DeleteParams::default(), &ListParams::default())).await.expect("delete collection");
    assert!(within(w.list(&ListParams::default())).await.expect("list").items.is_empty());
}

#[tokio::test]
async fn garbage_collector_deletes_dependents_of_deleted_owners() {
    let (_api, client) = setup().await;
    let w = widgets(&client, "default");
    let secrets = Api::<Secret>::namespaced(client.clone(), "default");
    let mut owned = Vec::new();
    for name in ["owner", "orphaning-owner"] {
        let owner = within(w.create(&PostParams::default(), &widget(name, 1))).await.expect("owner");
        let mut dependent = secret(&format!("{name}-secret"));
        dependent.metadata.owner_references = Some(vec![owner.controller_owner_ref(&()).expect("owner ref")]);
        within(secrets.create(&PostParams::default(), &dependent)).await.expect("dependent");
        owned.push(dependent.name_any());
    }
    within(w.delete("owner", &DeleteParams::default())).await.expect("delete owner");
    assert_eq!(api_error(within(secrets.get("owner-secret")).await).code, 404);

    within(w.delete("orphaning-owner", &DeleteParams::orphan())).await.expect("delete with orphan");
    let kept = within(secrets.get("orphaning-owner-secret")).await.expect("orphan kept");
    assert!(kept.metadata.owner_references.is_none());
}

// ---------------------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn watch_streams_changes_in_order_and_resumes() {
    let (api, client) = setup().await;
    let w = widgets(&client, "default");
    let list = within(w.list(&ListParams::default())).await.expect("list");
    let start = list.metadata.resource_version.clone().expect("list rv");
    let raw = Raw::new(&api);
    let path = "/apis/example.test/v1/namespaces/default/widgets?watch=1";
    let mut watch = raw.watch(&format!("{path}&resourceVersion={start}"), None).await;

    within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create a");
    within(w.create(&PostParams::default(), &widget("b", 1))).await.expect("create b");
    within(w.patch("a", &PatchParams::default(), &merge(json!({ "spec": { "size": 2 } })))).await.expect("patch");
    within(w.delete("b", &DeleteParams::default())).await.expect("delete");
    // Other namespaces and resources do not show up.
    create_namespace(&client, "other").await;
    within(widgets(&client, "other").create(&PostParams::default(), &widget("elsewhere", 1))).await.expect("create");

    let first = watch.expect("ADDED", "a").await;
    assert_eq!(first["object"]["apiVersion"], "example.test/v1");
    assert_eq!(first["object"]["kind"], "Widget");
    let second = watch.expect("ADDED", "b").await;
    let third = watch.expect("MODIFIED", "a").await;
    assert_eq!(third["object"]["spec"]["size"], 2);
    let fourth = watch.expect("DELETED", "b").await;
    let rvs = [&first, &second, &third, &fourth].map(event_rv);
    assert!(rvs.windows(2).all(|p| p[0] < p[1]), "{rvs:?}");

    // Resuming from the second event replays what came after it.
    let mut resumed = raw.watch(&format!("{path}&resourceVersion={}", rvs[1]), None).await;
    assert_eq!(event_rv(&resumed.expect("MODIFIED", "a").await), rvs[2]);
    assert_eq!(event_rv(&resumed.expect("DELETED", "b").await), rvs[3]);

    // Without resourceVersion, the current objects come first as ADDED.
    let mut fresh = raw.watch(path, None).await;
    fresh.expect("ADDED", "a").await;
    within(w.create(&PostParams::default(), &widget("c", 1))).await.expect("create c");
    fresh.expect("ADDED", "c").await;

    // All-namespaces watch sees both namespaces.
    let mut everywhere = raw.watch("/apis/example.test/v1/widgets?watch=true", None).await;
    let mut names = vec![
        everywhere.next_change().await.expect("event")["object"]["metadata"]["name"].clone(),
        everywhere.next_change().await.expect("event")["object"]["metadata"]["name"].clone(),
        everywhere.next_change().await.expect("event")["object"]["metadata"]["name"].clone(),
    ];
    names.sort_by_key(|n| n.to_string());
    assert_eq!(names, [json!("a"), json!("c"), json!("elsewhere")]);
}

#[tokio::test]
async fn watch_from_a_compacted_resource_version_is_gone() {
    let (api, client) = setup().await;
    let w = widgets(&client, "default");
    let created = within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");
    within(w.patch("a", &PatchParams::default(), &merge(json!({ "spec": { "size": 2 } })))).await.expect("patch");
    api.compact();

    let raw = Raw::new(&api);
    let mut watch = raw
        .watch(
            &format!("/apis/example.test/v1/namespaces/default/widgets?watch=true&resourceVersion={}", rv_of(&created)),
            None,
        )
        .await;
    let event = watch.next().await.expect("an ERROR event");
    assert_eq!(event["type"], "ERROR");
    let status = &event["object"];
    assert_eq!(
        (status["kind"].as_str(), status["code"].as_u64(), status["reason"].as_str(), status["status"].as_str()),
        (Some("Status"), Some(410), Some("Expired"), Some("Failure"))
    );
    assert!(watch.next().await.is_none(), "the stream ends after the error");

    // kube surfaces it as WatchEvent::Error with code 410.
    let mut events =
        within(w.watch(&WatchParams::default(), &rv_of(&created).to_string())).await.expect("watch").boxed();
    match within(events.next()).await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410),
        other => panic!("expected a 410 error event, got {other:?}"),
    }

    // The current resourceVersion is still fine.
    let mut watch = raw
        .watch(
            &format!(
                "/apis/example.test/v1/namespaces/default/widgets?watch=true&resourceVersion={}",
                api.resource_version()
            ),
            None,
        )
        .await;
    within(w.patch("a", &PatchParams::default(), &merge(json!({ "spec": { "size": 3 } })))).await.expect("patch");
    watch.expect("MODIFIED", "a").await;
}

#[tokio::test]
async fn history_limit_bounds_resumption() {
    let api = FakeApiServer::builder().history_limit(3).start().await;
    api.register_crd(Widget::crd());
    let client = api.client();
    let w = widgets(&client, "default");
    let first = within(w.create(&PostParams::default(), &widget("a", 0))).await.expect("create");
    for size in 1..=5 {
        within(w.patch("a", &PatchParams::default(), &merge(json!({ "spec": { "size": size } }))))
            .await
            .expect("patch");
    }
    let raw = Raw::new(&api);
    let path = "/apis/example.test/v1/namespaces/default/widgets?watch=true&resourceVersion=";
    let mut old = raw.watch(&format!("{path}{}", rv_of(&first)), None).await;
    assert_eq!(old.next().await.expect("event")["type"], "ERROR");
    let mut recent = raw.watch(&format!("{path}{}", api.resource_version() - 2), None).await;
    assert_eq!(recent.expect("MODIFIED", "a").await["object"]["spec"]["size"], 4);
    assert_eq!(recent.expect("MODIFIED", "a").await["object"]["spec"]["size"], 5);
}

#[tokio::test]
async fn watch_sends_bookmarks_when_allowed() {
    let api = FakeApiServer::builder().bookmark_interval(Duration::from_millis(50)).start().await;
    api.register_crd(Widget::crd());
    let client = api.client();
    let w = widgets(&client, "default");
    let created = within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");
    let raw = Raw::new(&api);
    let base =
        format!("/apis/example.test/v1/namespaces/default/widgets?watch=true&resourceVersion={}", rv_of(&created));

    let mut watch = raw.watch(&format!("{base}&allowWatchBookmarks=true"), None).await;
    let bookmark = watch.next().await.expect("bookmark");
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(
        bookmark["object"],
        json!({ "kind": "Widget", "apiVersion": "example.test/v1", "metadata": { "resourceVersion": rv_of(&created).to_string() } })
    );
    // A bookmark never overtakes a change: after a write, the next bookmark is at least as new.
    within(w.patch("a", &PatchParams::default(), &merge(json!({ "spec": { "size": 2 } })))).await.expect("patch");
    let mut seen_change = false;
    loop {
        let event = watch.next().await.expect("event");
        match event["type"].as_str() {
            Some("MODIFIED") => seen_change = true,
            Some("BOOKMARK") if seen_change => {
                assert_eq!(event["object"]["metadata"]["resourceVersion"], api.resource_version().to_string());
                break;
            }
            Some("BOOKMARK") => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    // Without allowWatchBookmarks there are none.
    let now = format!(
        "/apis/example.test/v1/namespaces/default/widgets?watch=true&timeoutSeconds=1&resourceVersion={}",
        api.resource_version()
    );
    let mut quiet = raw.watch(&now, None).await;
    assert!(quiet.next().await.is_none(), "no bookmark, and the stream ends at the timeout");
}

#[tokio::test]
async fn watch_honours_timeout_seconds() {
    let (api, _client) = setup().await;
    let raw = Raw::new(&api);
    let started = std::time::Instant::now();
    let mut watch = raw
        .watch(
            &format!(
                "/api/v1/namespaces/default/secrets?watch=true&timeoutSeconds=1&resourceVersion={}",
                api.resource_version()
            ),
            None,
        )
        .await;
    assert!(watch.next().await.is_none());
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    // The watcher is unregistered when its stream ends.
    within(async {
        while api.watch_count() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn watch_selectors_turn_transitions_into_added_and_deleted() {
    let (api, client) = setup().await;
    let w = widgets(&client, "default");
    let rv = api.resource_version();
    let raw = Raw::new(&api);
    let mut watch = raw
        .watch(
            &format!(
                "/apis/example.test/v1/namespaces/default/widgets?watch=true&labelSelector=app%3Dx&resourceVersion={rv}"
            ),
            None,
        )
        .await;
    let mut by_name = raw
        .watch(
            &format!("/apis/example.test/v1/namespaces/default/widgets?watch=true&fieldSelector=metadata.name%3Db&resourceVersion={rv}"),
            None,
        )
        .await;

    within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");
    within(w.create(&PostParams::default(), &widget("b", 1))).await.expect("create b");
    let label = |v: Value| merge(json!({ "metadata": { "labels": { "app": v } } }));
    within(w.patch("a", &PatchParams::default(), &label(json!("x")))).await.expect("label");
    within(w.patch("a", &PatchParams::default(), &merge(json!({ "spec": { "size": 2 } })))).await.expect("spec");
    let unlabelled = within(w.patch("a", &PatchParams::default(), &label(json!("y")))).await.expect("relabel");

    watch.expect("ADDED", "a").await;
    watch.expect("MODIFIED", "a").await;
    let deleted = watch.expect("DELETED", "a").await;
    // The previous content, at the resourceVersion of the change.
    assert_eq!(deleted["object"]["metadata"]["labels"]["app"], "x");
    assert_eq!(event_rv(&deleted), rv_of(&unlabelled));

    by_name.expect("ADDED", "b").await;
    within(w.delete("b", &DeleteParams::default())).await.expect("delete b");
    by_name.expect("DELETED", "b").await;
}

#[tokio::test]
async fn send_initial_events_ends_with_a_marked_bookmark() {
    let (api, client) = setup().await;
    let w = widgets(&client, "default");
    for name in ["a", "b"] {
        within(w.create(&PostParams::default(), &widget(name, 1))).await.expect("create");
    }
    let raw = Raw::new(&api);
    let mut watch = raw
        .watch(
            "/apis/example.test/v1/namespaces/default/widgets?watch=true&sendInitialEvents=true\
             &resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
            None,
        )
        .await;
    watch.expect("ADDED", "a").await;
    watch.expect("ADDED", "b").await;
    let bookmark = watch.next().await.expect("bookmark");
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
    assert_eq!(bookmark["object"]["metadata"]["resourceVersion"], api.resource_version().to_string());
}

#[tokio::test]
async fn shutdown_ends_open_watches() {
    let (api, _client) = setup().await;
    let raw = Raw::new(&api);
    let mut watch = raw.watch("/api/v1/namespaces?watch=true", None).await;
    for _ in 0..4 {
        assert_eq!(watch.next().await.expect("initial namespace")["type"], "ADDED");
    }
    within(api.shutdown()).await;
    assert!(watch.next().await.is_none());
}

// ---------------------------------------------------------------------------------------
// Metadata-only requests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn metadata_only_get_list_and_watch() {
    let (api, client) = setup().await;
    let w = widgets(&client, "default");
    let mut labelled = widget("a", 1);
    labelled.metadata.labels = Some([("app".to_string(), "x".to_string())].into());
    let created = within(w.create(&PostParams::default(), &labelled)).await.expect("create");

    let meta = within(w.get_metadata("a")).await.expect("get_metadata");
    assert_eq!(meta.metadata.uid, created.metadata.uid);
    assert_eq!(meta.types.as_ref().map(|t| t.kind.as_str()), Some("PartialObjectMetadata"));
    let list = within(w.list_metadata(&ListParams::default().labels("app=x"))).await.expect("list_metadata");
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.metadata.resource_version, Some(api.resource_version().to_string()));

    let raw = Raw::new(&api);
    let (code, body) = raw.get("/apis/example.test/v1/namespaces/default/widgets/a").await;
    assert_eq!(code, 200);
    assert!(body.get("spec").is_some());
    let accept = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("{}/apis/example.test/v1/namespaces/default/widgets/a", api.url()))
        .header("accept", accept)
        .send()
        .await
        .expect("send");
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        (body["kind"].as_str(), body["apiVersion"].as_str()),
        (Some("PartialObjectMetadata"), Some("meta.k8s.io/v1"))
    );
    assert!(body.get("spec").is_none());

    let mut watch = raw
        .watch(
            &format!("/apis/example.test/v1/namespaces/default/widgets?watch=true&resourceVersion={}", rv_of(&created)),
            Some(accept),
        )
        .await;
    within(w.patch("a", &PatchParams::default(), &merge(json!({ "spec": { "size": 2 } })))).await.expect("patch");
    let event = watch.expect("MODIFIED", "a").await;
    assert_eq!(event["object"]["kind"], "PartialObjectMetadata");
    assert!(event["object"].get("spec").is_none());

    // kube's metadata watch parses the same.
    let mut events = within(w.watch_metadata(&WatchParams::default(), &rv_of(&created).to_string()))
        .await
        .expect("watch_metadata")
        .boxed();
    match within(events.next()).await {
        Some(Ok(WatchEvent::Modified(m))) => assert_eq!(m.metadata.name.as_deref(), Some("a")),
        other => panic!("expected MODIFIED, got {other:?}"),
    }

    // Table and other unsupported shapes are refused when nothing else is acceptable.
    let refused = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("{}/apis/example.test/v1/namespaces/default/widgets", api.url()))
        .header("accept", "application/json;as=Table;g=meta.k8s.io;v=v1")
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 406);
}

// ---------------------------------------------------------------------------------------
// Server-side apply
// ---------------------------------------------------------------------------------------

fn apply_params(manager: &str) -> PatchParams {
    PatchParams::apply(manager)
}

fn widget_apply(spec: Value) -> Patch<Value> {
    Patch::Apply(
        json!({ "apiVersion": "example.test/v1", "kind": "Widget", "metadata": { "name": "a" }, "spec": spec }),
    )
}

#[tokio::test]
async fn server_side_apply_creates_owns_and_removes_fields() {
    let (api, client) = setup().await;
    let w = widgets(&client, "default");

    let created = within(w.patch("a", &apply_params("alice"), &widget_apply(json!({ "size": 1, "color": "red" }))))
        .await
        .expect("apply creates");
    assert_eq!(created.metadata.generation, Some(1));
    let alice = created
        .metadata
        .managed_fields
        .as_ref()
        .and_then(|m| m.iter().find(|e| e.manager.as_deref() == Some("alice")))
        .expect("alice's managedFields entry");
    assert_eq!(alice.operation.as_deref(), Some("Apply"));
    let fields = serde_json::to_value(&alice.fields_v1).expect("fieldsV1");
    assert!(fields["f:spec"]["f:color"].is_object() && fields["f:spec"]["f:size"].is_object(), "{fields}");
    assert_eq!(
        api.requests().last().map(|r| (r.verb.clone(), r.status, r.content_type.clone())),
        Some(("patch".into(), 201, Some("application/apply-patch+yaml".into())))
    );

    // Another manager sets a field of its own with a merge patch.
    within(w.patch(
        "a",
        &PatchParams { field_manager: Some("bob".into()), ..Default::default() },
        &merge(json!({ "spec": { "note": "bob's" } })),
    ))
    .await
    .expect("bob patches");

    // alice stops applying color: it goes; bob's note stays.
    let applied = within(w.patch("a", &apply_params("alice"), &widget_apply(json!({ "size": 1 }))))
        .await
        .expect("apply without color");
    assert_eq!(applied.spec.color, None);
    assert_eq!(applied.spec.note.as_deref(), Some("bob's"));
    assert_eq!(applied.metadata.generation, Some(3));

    // Re-applying the same configuration is a no-op.
    let again =
        within(w.patch("a", &apply_params("alice"), &widget_apply(json!({ "size": 1 })))).await.expect("same apply");
    assert_eq!(again.resource_version(), applied.resource_version());

    // Changing a field that another manager owns conflicts, unless forced.
    let status =
        api_error(within(w.patch("a", &apply_params("carol"), &widget_apply(json!({ "note": "carol's" })))).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(status.message.contains("bob") && status.message.contains(".spec.note"), "{}", status.message);
    // Applying the same value is shared ownership, not a conflict.
    within(w.patch("a", &apply_params("carol"), &widget_apply(json!({ "size": 1 })))).await.expect("shared");
    let forced =
        within(w.patch("a", &apply_params("carol").force(), &widget_apply(json!({ "size": 1, "note": "carol's" }))))
            .await
            .expect("forced");
    assert_eq!(forced.spec.note.as_deref(), Some("carol's"));

    // alice drops size, but carol still applies it: it stays.
    let applied = within(w.patch("a", &apply_params("alice"), &widget_apply(json!({})))).await.expect("apply nothing");
    assert_eq!(applied.spec.size, 1);

    // fieldManager is required.
    let status = api_error(within(w.patch("a", &PatchParams::default(), &widget_apply(json!({ "size": 2 })))).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(status.message.contains("fieldManager"), "{}", status.message);
}

#[tokio::test]
async fn server_side_apply_on_status_and_metadata() {
    let (_api, client) = setup().await;
    let w = widgets(&client, "default");
    within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");
    let status_apply = |status: Value| {
        Patch::Apply(
            json!({ "apiVersion": "example.test/v1", "kind": "Widget", "metadata": { "name": "a" }, "status": status }),
        )
    };
    let applied =
        within(w.patch_status("a", &apply_params("ctrl"), &status_apply(json!({ "phase": "Ready", "message": "hi" }))))
            .await
            .expect("status apply");
    assert_eq!(applied.status.as_ref().and_then(|s| s.message.as_deref()), Some("hi"));
    let entry = applied
        .metadata
        .managed_fields
        .as_ref()
        .and_then(|m| m.iter().find(|e| e.manager.as_deref() == Some("ctrl")))
        .expect("ctrl entry");
    assert_eq!(entry.subresource.as_deref(), Some("status"));
    let applied = within(w.patch_status("a", &apply_params("ctrl"), &status_apply(json!({ "phase": "Ready" }))))
        .await
        .expect("status apply without message");
    assert_eq!(applied.status, Some(WidgetStatus { phase: Some("Ready".into()), message: None }));
    assert_eq!(applied.metadata.generation, Some(1));

    // Status apply on a missing object is a 404 (only the main resource creates).
    assert_eq!(
        api_error(
            within(w.patch_status(
                "missing",
                &apply_params("ctrl"),
                &Patch::Apply(json!({ "apiVersion": "example.test/v1", "kind": "Widget", "metadata": { "name": "missing" }, "status": {} })),
            ))
            .await
        )
        .code,
        404
    );

    // Labels and finalizers are owned per key / per item.
    let meta_apply = |labels: Value, finalizers: Value| {
        Patch::Apply(json!({
            "apiVersion": "example.test/v1", "kind": "Widget",
            "metadata": { "name": "a", "labels": labels, "finalizers": finalizers },
        }))
    };
    within(w.patch("a", &apply_params("one"), &meta_apply(json!({ "one": "1" }), json!(["one/f"]))))
        .await
        .expect("one");
    let both = within(w.patch("a", &apply_params("two"), &meta_apply(json!({ "two": "2" }), json!(["two/f"]))))
        .await
        .expect("two");
    assert_eq!(both.finalizers(), ["one/f", "two/f"]);
    let after = within(w.patch("a", &apply_params("one"), &meta_apply(json!({}), json!([])))).await.expect("one drops");
    assert_eq!(after.finalizers(), ["two/f"]);
    assert_eq!(after.labels().keys().collect::<Vec<_>>(), ["two"]);
    assert_eq!(after.spec.size, 1, "fields set by create are untouched");
}

// ---------------------------------------------------------------------------------------
// Namespaces and CRDs
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn namespace_termination_refuses_creates_and_cleans_up() {
    let (api, client) = setup().await;
    create_namespace(&client, "doomed").await;
    let namespaces = Api::<Namespace>::all(client.clone());
    let created_ns = within(namespaces.get("doomed")).await.expect("get ns");
    assert_eq!(created_ns.spec.as_ref().and_then(|s| s.finalizers.clone()), Some(vec!["kubernetes".to_string()]));
    assert_eq!(created_ns.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Active"));

    let w = widgets(&client, "doomed");
    let secrets = Api::<Secret>::namespaced(client.clone(), "doomed");
    let mut held = widget("held", 1);
    held.metadata.finalizers = Some(vec!["example.test/cleanup".into()]);
    within(w.create(&PostParams::default(), &held)).await.expect("create held");
    within(w.create(&PostParams::default(), &widget("free", 1))).await.expect("create free");
    within(secrets.create(&PostParams::default(), &secret("s"))).await.expect("create secret");
    let raw = Raw::new(&api);
    let mut ns_watch = raw
        .watch(
            &format!(
                "/api/v1/namespaces?watch=true&fieldSelector=metadata.name%3Ddoomed&resourceVersion={}",
                api.resource_version()
            ),
            None,
        )
        .await;

    let deleted = within(namespaces.delete("doomed", &DeleteParams::default())).await.expect("delete ns");
    let terminating = deleted.left().expect("namespace object");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Terminating"));
    ns_watch.expect("MODIFIED", "doomed").await;

    // All content was deleted at once: what has no finalizers is gone, the rest terminates.
    assert_eq!(api_error(within(secrets.get("s")).await).code, 404);
    assert_eq!(api_error(within(w.get("free")).await).code, 404);
    assert!(within(w.get("held")).await.expect("held").metadata.deletion_timestamp.is_some());

    // Creates are refused, for every resource, Events of both APIs included.
    let status = api_error(within(secrets.create(&PostParams::default(), &secret("new"))).await);
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "secrets \"new\" is forbidden: unable to create new content in namespace doomed because it is being terminated"
    );
    let cause = &status.details.expect("details").causes[0];
    assert_eq!((cause.reason.as_str(), cause.field.as_str()), ("NamespaceTerminating", "metadata.namespace"));
    let core_event: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
        "metadata": { "name": "e1" },
        "involvedObject": { "kind": "Widget", "name": "held", "namespace": "doomed" },
        "reason": "Test", "message": "m", "type": "Normal",
    }))
    .expect("core event");
    let status = api_error(
        within(
            Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), "doomed")
                .create(&PostParams::default(), &core_event),
        )
        .await,
    );
    assert_eq!(status.code, 403);
    let new_event: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
        "metadata": { "name": "e2" },
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "example.test/ctrl", "reportingInstance": "ctrl-1",
        "action": "Reconcile", "reason": "Test", "type": "Normal",
        "regarding": { "kind": "Widget", "name": "held", "namespace": "doomed" },
    }))
    .expect("events.k8s.io event");
    let status = api_error(
        within(
            Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), "doomed")
                .create(&PostParams::default(), &new_event),
        )
        .await,
    );
    assert_eq!(status.code, 403);
    let status = api_error(within(w.create(&PostParams::default(), &widget("new", 1))).await);
    assert_eq!(status.code, 403);

    // The operator can still write status and release its finalizer; then everything goes.
    within(w.patch_status("held", &PatchParams::default(), &merge(json!({ "status": { "phase": "Releasing" } }))))
        .await
        .expect("status in terminating namespace");
    assert!(within(namespaces.get("doomed")).await.is_ok(), "namespace waits for its content");
    within(w.patch("held", &PatchParams::default(), &merge(json!({ "metadata": { "finalizers": [] } }))))
        .await
        .expect("release");
    assert_eq!(api_error(within(w.get("held")).await).code, 404);
    assert_eq!(api_error(within(namespaces.get("doomed")).await).code, 404);
    ns_watch.expect("DELETED", "doomed").await;

    // Creating in it now is a plain 404.
    assert_eq!(api_error(within(secrets.create(&PostParams::default(), &secret("late"))).await).code, 404);
}

#[tokio::test]
async fn paused_controllers_leave_a_terminating_namespace_populated() {
    let (api, client) = setup().await;
    create_namespace(&client, "slow").await;
    let secrets = Api::<Secret>::namespaced(client.clone(), "slow");
    within(secrets.create(&PostParams::default(), &secret("s"))).await.expect("create");
    api.pause_controllers();
    within(Api::<Namespace>::all(client.clone()).delete("slow", &DeleteParams::default())).await.expect("delete");
    // The Secret is still readable, but nothing new can be created.
    within(secrets.get("s")).await.expect("still there");
    assert_eq!(api_error(within(secrets.create(&PostParams::default(), &secret("t"))).await).code, 403);
    api.resume_controllers();
    assert_eq!(api_error(within(secrets.get("s")).await).code, 404);
    assert!(api.object("", "namespaces", "", "slow").is_none());
}

#[tokio::test]
async fn built_in_namespaces_cannot_be_deleted() {
    let (_api, client) = setup().await;
    let status =
        api_error(within(Api::<Namespace>::all(client.clone()).delete("default", &DeleteParams::default())).await);
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
}

#[tokio::test]
async fn crd_created_through_the_api_is_served() {
    let api = FakeApiServer::start().await;
    let client = api.client();
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let crd = within(crds.create(&PostParams::default(), &Widget::crd())).await.expect("create CRD");
    let conditions = crd.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    assert!(conditions.iter().any(|c| c.type_ == "Established" && c.status == "True"));
    within(widgets(&client, "default").create(&PostParams::default(), &widget("a", 1)))
        .await
        .expect("instances are served");

    let mut bad = Widget::crd();
    bad.metadata.name = Some("wrong.example.test".into());
    let status = api_error(within(crds.create(&PostParams::default(), &bad)).await);
    assert_eq!(status.code, 422);
}

#[tokio::test]
async fn crd_deletion_waits_for_instances() {
    let (api, client) = setup().await;
    let w = widgets(&client, "default");
    let mut held = widget("held", 1);
    held.metadata.finalizers = Some(vec!["example.test/cleanup".into()]);
    within(w.create(&PostParams::default(), &held)).await.expect("create held");
    within(w.create(&PostParams::default(), &widget("free", 1))).await.expect("create free");
    let raw = Raw::new(&api);
    let mut watch = raw
        .watch(&format!("/apis/example.test/v1/widgets?watch=true&resourceVersion={}", api.resource_version()), None)
        .await;

    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let deleted = within(crds.delete("widgets.example.test", &DeleteParams::default()))
        .await
        .expect("delete CRD")
        .left()
        .expect("CRD object");
    assert!(deleted.metadata.deletion_timestamp.is_some());
    assert_eq!(deleted.finalizers(), ["customresourcecleanup.apiextensions.k8s.io"]);

    // Instances were deleted: the one with a finalizer is terminating.
    watch.expect("DELETED", "free").await;
    let modified = watch.expect("MODIFIED", "held").await;
    assert!(modified["object"]["metadata"]["deletionTimestamp"].is_string());
    let crd = within(crds.get("widgets.example.test")).await.expect("CRD still there");
    assert!(crd.metadata.deletion_timestamp.is_some());
    let status = api_error(within(w.create(&PostParams::default(), &widget("new", 1))).await);
    assert_eq!((status.code, status.reason.as_str()), (405, "MethodNotAllowed"));

    // Releasing the last instance removes the CRD and stops serving the resource.
    within(w.patch("held", &PatchParams::default(), &merge(json!({ "metadata": { "finalizers": null } }))))
        .await
        .expect("release");
    watch.expect("DELETED", "held").await;
    assert!(watch.next().await.is_none(), "watches of the resource end");
    assert_eq!(api_error(within(crds.get("widgets.example.test")).await).code, 404);
    assert_eq!(api_error(within(w.list(&ListParams::default())).await).code, 404);
}

// ---------------------------------------------------------------------------------------
// kube-runtime against the fake
// ---------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
#[error("reconcile failed")]
struct ReconcileError;

/// One pass of kube-runtime's finalizer helper; returns which event it produced.
async fn run_finalizer(
    w: &Api<Widget>,
    obj: Widget,
) -> Result<&'static str, kube::runtime::finalizer::Error<ReconcileError>> {
    use kube::runtime::controller::Action;
    use kube::runtime::finalizer::{Event, finalizer};
    let seen = Arc::new(std::sync::Mutex::new("none"));
    let record = seen.clone();
    within(finalizer(w, "example.test/cleanup", Arc::new(obj), |event| async move {
        *record.lock().expect("lock") = match event {
            Event::Apply(_) => "apply",
            Event::Cleanup(_) => "cleanup",
        };
        Ok::<_, ReconcileError>(Action::await_change())
    }))
    .await?;
    let seen = *seen.lock().expect("lock");
    Ok(seen)
}

#[tokio::test]
async fn kube_runtime_finalizer_helper_adds_and_removes_its_finalizer() {
    let (api, client) = setup().await;
    let w = widgets(&client, "default");
    let created = within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");

    // No finalizers yet: test null + add.
    assert_eq!(run_finalizer(&w, created).await.expect("add"), "none");
    let current = within(w.get("a")).await.expect("get");
    assert_eq!(current.finalizers(), ["example.test/cleanup"]);
    let patch = api.requests().into_iter().rfind(|r| r.verb == "patch").expect("patch request");
    assert_eq!(patch.content_type.as_deref(), Some("application/json-patch+json"));

    // With the finalizer: Apply.
    assert_eq!(run_finalizer(&w, current.clone()).await.expect("apply"), "apply");

    // A stale object (finalizer missing in its view, but present on the server) fails the test op.
    let mut stale = current.clone();
    stale.metadata.finalizers = None;
    assert!(matches!(
        run_finalizer(&w, stale).await,
        Err(kube::runtime::finalizer::Error::AddFinalizer(kube::Error::Api(s))) if s.code == 422
    ));

    // With another finalizer already there: test the list + add at the end.
    let mut other = widget("b", 1);
    other.metadata.finalizers = Some(vec!["someone/else".into()]);
    let other = within(w.create(&PostParams::default(), &other)).await.expect("create b");
    run_finalizer(&w, other).await.expect("add after another");
    let b = within(w.get("b")).await.expect("get b");
    assert_eq!(b.finalizers(), ["someone/else", "example.test/cleanup"]);

    // Deleting: Cleanup, then the finalizer is removed and the object goes.
    within(w.delete("a", &DeleteParams::default())).await.expect("delete");
    let deleting = within(w.get("a")).await.expect("terminating");
    assert_eq!(run_finalizer(&w, deleting).await.expect("cleanup"), "cleanup");
    assert_eq!(api_error(within(w.get("a")).await).code, 404);
}

#[tokio::test]
async fn kube_runtime_reflector_syncs_and_follows_updates() {
    let (api, client) = setup().await;
    let w = widgets(&client, "default");
    within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");
    let (reader, writer) = reflector::store::<Widget>();
    let stream = reflector(writer, watcher(w.clone(), watcher::Config::default())).applied_objects().boxed();
    let driver = tokio::spawn(async move {
        let _ = stream.try_for_each(|_| async { Ok(()) }).await;
    });
    within(reader.wait_until_ready()).await.expect("store ready");
    assert_eq!(reader.state().len(), 1);

    within(w.patch("a", &PatchParams::default(), &merge(json!({ "spec": { "size": 5 } })))).await.expect("patch");
    within(w.create(&PostParams::default(), &widget("b", 1))).await.expect("create b");
    within(async {
        loop {
            let sizes: Vec<i32> = reader.state().iter().map(|w| w.spec.size).collect();
            if sizes.len() == 2 && sizes.contains(&5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    within(w.delete("b", &DeleteParams::default())).await.expect("delete b");
    within(async {
        while reader.state().len() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // The default watcher config lists (limit 500) and then watches with bookmarks.
    let requests = api.requests();
    let list = requests.iter().find(|r| r.resource == "widgets" && r.verb == "list").expect("list");
    assert_eq!(list.query_param("limit").as_deref(), Some("500"));
    let watch = requests.iter().find(|r| r.resource == "widgets" && r.verb == "watch").expect("watch");
    assert_eq!(watch.query_param("allowWatchBookmarks").as_deref(), Some("true"));
    driver.abort();
}

#[tokio::test]
async fn kube_runtime_metadata_watcher_sees_changes() {
    let (api, client) = setup().await;
    let w = widgets(&client, "default");
    within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");
    // `Api<PartialObjectMeta<K>>` makes kube-runtime's watcher use metadata-only requests.
    let metadata_api: Api<PartialObjectMeta<Widget>> = Api::namespaced(client.clone(), "default");
    let mut stream = watcher(metadata_api, watcher::Config::default()).touched_objects().boxed();
    let first = within(stream.try_next()).await.expect("event").expect("object");
    assert_eq!(first.metadata.name.as_deref(), Some("a"));
    within(w.patch("a", &PatchParams::default(), &merge(json!({ "metadata": { "labels": { "seen": "yes" } } }))))
        .await
        .expect("label");
    let next = within(stream.try_next()).await.expect("event").expect("object");
    assert_eq!(next.metadata.labels.and_then(|l| l.get("seen").cloned()).as_deref(), Some("yes"));
    within(w.delete("a", &DeleteParams::default())).await.expect("delete");
    let watch =
        api.requests().into_iter().find(|r| r.resource == "widgets" && r.verb == "watch").expect("watch request");
    assert!(watch.accept.as_deref().is_some_and(|a| a.contains("as=PartialObjectMetadata")), "{watch:?}");
    let gone = within(stream.try_next()).await.expect("event").expect("object");
    assert_eq!(gone.metadata.name.as_deref(), Some("a"));
}

// ---------------------------------------------------------------------------------------
// Other resources and the request log
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn leases_and_events_are_generic_namespaced_objects() {
    use k8s_openapi::api::coordination::v1::Lease;
    let (_api, client) = setup().await;
    let leases = Api::<Lease>::namespaced(client.clone(), "default");
    let lease: Lease =
        serde_json::from_value(json!({ "metadata": { "name": "l" }, "spec": { "holderIdentity": "me" } }))
            .expect("lease");
    within(leases.create(&PostParams::default(), &lease)).await.expect("create lease");
    let patched = within(leases.patch(
        "l",
        &PatchParams::default(),
        &Patch::Strategic(json!({ "spec": { "holderIdentity": null, "leaseDurationSeconds": 15 } })),
    ))
    .await
    .expect("strategic patch lease");
    let spec = patched.spec.expect("spec");
    assert_eq!((spec.holder_identity, spec.lease_duration_seconds), (None, Some(15)));
    // An applied configuration needs no metadata.name for an existing object...
    let applied = within(leases.patch(
        "l",
        &PatchParams::apply("holder"),
        &Patch::Apply(
            json!({ "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": { "leaseTransitions": 1 } }),
        ),
    ))
    .await
    .expect("apply without a name");
    assert_eq!(applied.spec.and_then(|s| s.lease_transitions), Some(1));
    // ...but does to create one.
    let missing = within(leases.patch(
        "missing",
        &PatchParams::apply("holder"),
        &Patch::Apply(json!({ "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {} })),
    ))
    .await;
    assert_eq!(api_error(missing).code, 400);
    let applied = within(leases.patch(
        "l",
        &PatchParams::apply("holder"),
        &Patch::Apply(json!({ "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": { "name": "l" }, "spec": { "holderIdentity": "holder" } })),
    ))
    .await
    .expect("apply lease");
    assert_eq!(applied.spec.and_then(|s| s.holder_identity).as_deref(), Some("holder"));

    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), "default");
    let event: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
        "metadata": { "generateName": "w." },
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "example.test/ctrl", "reportingInstance": "ctrl-1",
        "action": "Reconcile", "reason": "Test", "type": "Normal",
    }))
    .expect("event");
    let created = within(events.create(&PostParams::default(), &event)).await.expect("create event");
    assert!(created.name_any().starts_with("w."));
}

#[tokio::test]
async fn requests_are_recorded() {
    let (api, client) = setup().await;
    api.reset_request_log();
    assert!(api.requests().is_empty());
    let w = widgets(&client, "default");
    within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");
    within(w.patch_status(
        "a",
        &PatchParams { field_manager: Some("m".into()), ..Default::default() },
        &merge(json!({ "status": { "phase": "x" } })),
    ))
    .await
    .expect("patch status");
    let _ = within(w.get("missing")).await;
    let requests = api.requests();
    let summary: Vec<_> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.verb.as_str(), r.resource.as_str(), r.subresource.as_deref(), r.status))
        .collect();
    assert_eq!(
        summary,
        [
            ("POST", "create", "widgets", None, 201),
            ("PATCH", "patch", "widgets", Some("status"), 200),
            ("GET", "get", "widgets", None, 404),
        ]
    );
    assert_eq!(requests[1].content_type.as_deref(), Some("application/merge-patch+json"));
    assert_eq!(requests[1].field_manager.as_deref(), Some("m"));
    assert_eq!(requests[1].namespace.as_deref(), Some("default"));
    assert_eq!(requests[1].name.as_deref(), Some("a"));
    assert_eq!(requests[1].path, "/apis/example.test/v1/namespaces/default/widgets/a/status");
    assert_eq!(requests[1].query_param("fieldManager").as_deref(), Some("m"));
}

#[tokio::test]
async fn kube_lease_manager_elects_one_leader_at_a_time() {
    use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
    let (_api, client) = setup().await;
    let manager = |identity: &'static str| {
        let client = client.clone();
        async move {
            LeaseManagerBuilder::new(client, "leader")
                .with_namespace("default")
                .with_identity(identity)
                .with_duration(3)
                .with_grace(1)
                .build()
                .await
                .expect("lease manager")
        }
    };
    let one: LeaseManager = within(manager("one")).await;
    let two: LeaseManager = within(manager("two")).await;
    assert!(within(one.changed()).await.expect("one acquires"), "one leads");
    // two cannot take a lease that one holds (its apply would conflict with one's fields).
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), two.changed()).await.is_err(),
        "two must not become leader while one holds the lease"
    );
    within(one.release()).await.expect("one releases");
    assert!(within(two.changed()).await.expect("two acquires"), "two leads after release");
}

#[tokio::test]
async fn kube_runtime_watcher_relists_after_410() {
    let (api, client) = setup().await;
    let w = widgets(&client, "default");
    within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");
    // Watches end after 1s; without bookmarks the watcher resumes from the list's resourceVersion.
    let config = watcher::Config::default().timeout(1).disable_bookmarks();
    let mut stream = watcher(w.clone(), config).boxed();
    loop {
        match within(stream.try_next()).await.expect("watcher event") {
            Some(watcher::Event::InitDone) => break,
            Some(_) => {}
            None => panic!("watcher stream ended"),
        }
    }
    // Other writes move the resourceVersion on; compaction then makes the watcher's one too old.
    within(Api::<Secret>::namespaced(client.clone(), "default").create(&PostParams::default(), &secret("s")))
        .await
        .expect("create secret");
    api.compact();
    // The watcher reports the 410 and starts over with a new list (Init ... InitDone).
    let mut saw_gone = false;
    loop {
        match within(stream.next()).await.expect("watcher stream ended") {
            Err(watcher::Error::WatchError(status)) if status.code == 410 => saw_gone = true,
            Ok(watcher::Event::Init) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_gone);
    loop {
        match within(stream.try_next()).await.expect("watcher event") {
            Some(watcher::Event::InitApply(w)) => assert_eq!(w.name_any(), "a"),
            Some(watcher::Event::InitDone) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let lists = api.requests().iter().filter(|r| r.resource == "widgets" && r.verb == "list").count();
    assert_eq!(lists, 2);
}

#[tokio::test]
async fn unknown_custom_resource_fields_are_pruned() {
    let (api, client) = setup().await;
    let raw = Raw::new(&api);
    let path = "/apis/example.test/v1/namespaces/default/widgets";
    let body = json!({
        "apiVersion": "example.test/v1", "kind": "Widget",
        "metadata": { "name": "a" },
        "spec": { "size": 1, "bogus": true },
        "extra": "dropped",
    });
    let (code, created) = raw.send("POST", path, Some("application/json"), Some(body.clone())).await;
    assert_eq!(code, 201);
    assert_eq!(created["spec"], json!({ "size": 1 }));
    assert!(created.get("extra").is_none());

    // With fieldValidation=Strict the same fields are an error.
    let mut strict = body.clone();
    strict["metadata"]["name"] = json!("b");
    let (code, status) =
        raw.send("POST", &format!("{path}?fieldValidation=Strict"), Some("application/json"), Some(strict)).await;
    assert_eq!(code, 400, "{status}");
    assert!(status["message"].as_str().is_some_and(|m| m.contains("spec.bogus")), "{status}");

    // Patches and applies are pruned too.
    let w = widgets(&client, "default");
    within(w.patch("a", &PatchParams::default(), &merge(json!({ "spec": { "other": 1 } })))).await.expect("patch");
    let (_, stored) = raw.get(&format!("{path}/a")).await;
    assert_eq!(stored["spec"], json!({ "size": 1 }));
    let applied = within(w.patch(
        "a",
        // The creator owns spec.size, so taking it over needs force.
        &apply_params("m").force(),
        &widget_apply(json!({ "size": 2, "nope": 1 })),
    ))
    .await
    .expect("apply");
    assert_eq!(applied.spec.size, 2);
    let (_, stored) = raw.get(&format!("{path}/a")).await;
    assert!(stored["spec"].get("nope").is_none());
}

#[tokio::test]
async fn dry_run_is_refused_rather_than_performed() {
    let (_api, client) = setup().await;
    let w = widgets(&client, "default");
    let status =
        api_error(within(w.create(&PostParams { dry_run: true, ..Default::default() }, &widget("a", 1))).await);
    assert_eq!(status.code, 400);
    within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");
    let status = api_error(within(w.delete("a", &DeleteParams { dry_run: true, ..Default::default() })).await);
    assert_eq!(status.code, 400);
    within(w.get("a")).await.expect("still there");
}

/// The deprecated `metadata_watcher` entry point (same requests, `Api<K>` in metadata mode).
#[allow(deprecated)]
#[tokio::test]
async fn kube_runtime_deprecated_metadata_watcher_works_too() {
    let (api, client) = setup().await;
    let w = widgets(&client, "default");
    within(w.create(&PostParams::default(), &widget("a", 1))).await.expect("create");
    let mut stream = kube::runtime::metadata_watcher(w.clone(), watcher::Config::default()).applied_objects().boxed();
    let first = within(stream.try_next()).await.expect("event").expect("object");
    assert_eq!(first.metadata.name.as_deref(), Some("a"));
    let list = api.requests().into_iter().find(|r| r.resource == "widgets" && r.verb == "list").expect("list request");
    assert_eq!(list.status, 200);
    assert!(list.accept.as_deref().is_some_and(|a| a.contains("as=PartialObjectMetadataList")), "{list:?}");
}

// ---------------------------------------------------------------------------------------------
// CRD schema validation and defaulting
// ---------------------------------------------------------------------------------------------

/// A CRD exercising what the fake validates: defaults (a bool, an enum, a nested object), a
/// required string with pattern and maxLength, an `isIP` rule, an immutable field, an
/// optional immutable field guarded at the parent, formats, lists, maps, and a status with
/// an integer and its own rule.
fn gadget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "gadgets.valid.test" },
        "spec": {
            "group": "valid.test",
            "names": { "kind": "Gadget", "plural": "gadgets", "singular": "gadget", "listKind": "GadgetList" },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": { "status": {} },
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["name", "address", "zone"],
                            "x-kubernetes-validations": [
                                { "rule": "has(self.slot) == has(oldSelf.slot)", "message": "slot is immutable (it cannot be added or removed)" },
                                {
                                    "rule": "self.policy != 'Drop' || self.enabled",
                                    "messageExpression": "'policy ' + self.policy + ' needs enabled'",
                                    "fieldPath": ".policy",
                                    "reason": "FieldValueForbidden"
                                }
                            ],
                            "properties": {
                                "name": { "type": "string", "pattern": "^[a-z][a-z0-9-]*$", "maxLength": 12 },
                                "address": {
                                    "type": "string", "maxLength": 45,
                                    "x-kubernetes-validations": [{ "rule": "isIP(self)", "message": "address must be an IPv4 or IPv6 address" }]
                                },
                                "zone": {
                                    "type": "string",
                                    "x-kubernetes-validations": [{ "rule": "self == oldSelf", "message": "zone is immutable" }]
                                },
                                "slot": {
                                    "type": "integer", "minimum": 0, "maximum": 7,
                                    "x-kubernetes-validations": [{ "rule": "self == oldSelf", "message": "slot is immutable" }]
                                },
                                "enabled": { "type": "boolean", "default": false },
                                "policy": { "type": "string", "enum": ["Keep", "Drop"], "default": "Keep" },
                                "options": {
                                    "type": "object",
                                    "properties": {
                                        "retries": { "type": "integer", "default": 3 },
                                        "mode": { "type": "string", "default": "fast" }
                                    }
                                },
                                "port": { "x-kubernetes-int-or-string": true },
                                "since": { "type": "string", "format": "date-time" },
                                "ratio": { "type": "number", "nullable": true },
                                "tags": {
                                    "type": "array", "minItems": 1, "maxItems": 3,
                                    "x-kubernetes-list-type": "set",
                                    "items": { "type": "string" }
                                },
                                "labels": { "type": "object", "additionalProperties": { "type": "string", "maxLength": 5 } },
                                "extra": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
                            }
                        },
                        "status": {
                            "type": "object",
                            "x-kubernetes-validations": [
                                { "rule": "!has(self.count) || self.count <= 100", "message": "count must be at most 100", "fieldPath": ".count" }
                            ],
                            "properties": {
                                "count": { "type": "integer", "minimum": 0 },
                                "phase": { "type": "string" },
                                "conditions": {
                                    "type": "array",
                                    "x-kubernetes-list-type": "map",
                                    "x-kubernetes-list-map-keys": ["type"],
                                    "items": {
                                        "type": "object", "required": ["type"],
                                        "properties": { "type": { "type": "string" }, "status": { "type": "string" } }
                                    }
                                }
                            }
                        }
                    }
                }}
            }]
        }
    })
}

const GADGETS: &str = "/apis/valid.test/v1/namespaces/default/gadgets";

fn gadget(name: &str, spec: Value) -> Value {
    json!({ "apiVersion": "valid.test/v1", "kind": "Gadget", "metadata": { "name": name }, "spec": spec })
}

fn gadget_spec() -> Value {
    json!({ "name": "alpha", "address": "10.0.0.1", "zone": "z1" })
}

fn gadget_with(key: &str, value: Value) -> Value {
    let mut spec = gadget_spec();
    spec[key] = value;
    gadget("g", spec)
}

async fn gadget_setup() -> (FakeApiServer, Raw) {
    let api = FakeApiServer::start().await;
    api.register_crd(gadget_crd());
    let raw = Raw::new(&api);
    (api, raw)
}

/// The cause kube-apiserver adds when schema errors keep it from evaluating the CEL rules.
const NOT_CHECKED: (&str, &str, &str) = (
    "FieldValueInvalid",
    "<nil>",
    "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
);

/// Asserts a `422 Invalid` Status: its exact message and its causes as
/// `(reason, field, message)`.
fn assert_invalid((code, body): (u16, Value), kind: &str, name: &str, message: &str, causes: &[(&str, &str, &str)]) {
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["status"], "Failure", "{body}");
    assert_eq!(body["reason"], "Invalid", "{body}");
    assert_eq!(body["code"], 422, "{body}");
    assert_eq!(body["message"], message, "{body}");
    let (group, kind) = kind.split_once('/').expect("group/Kind");
    assert_eq!(body["details"]["name"], name, "{body}");
    assert_eq!(body["details"]["group"], group, "{body}");
    assert_eq!(body["details"]["kind"], kind, "{body}");
    let expected: Vec<Value> = causes
        .iter()
        .map(|(reason, field, message)| json!({ "reason": reason, "field": field, "message": message }))
        .collect();
    assert_eq!(body["details"]["causes"], json!(expected), "{body}");
}

async fn post_gadget(raw: &Raw, obj: Value) -> (u16, Value) {
    raw.send("POST", GADGETS, Some("application/json"), Some(obj)).await
}

#[tokio::test]
async fn crd_defaults_are_applied_to_present_objects() {
    let (_api, raw) = gadget_setup().await;

    // Missing fields with a default get it; an object without a default stays absent.
    let (code, created) = post_gadget(&raw, gadget("a", gadget_spec())).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(
        created["spec"],
        json!({ "name": "alpha", "address": "10.0.0.1", "zone": "z1", "enabled": false, "policy": "Keep" })
    );

    // Inside an object that is present, its properties' defaults apply (after pruning).
    let (code, created) = post_gadget(&raw, gadget_with("options", json!({ "retries": 5, "bogus": 1 }))).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["spec"]["options"], json!({ "retries": 5, "mode": "fast" }));

    // A null where the schema allows none: replaced by the default, or dropped without one;
    // a nullable field keeps its null.
    let mut spec = gadget_spec();
    spec["enabled"] = Value::Null;
    spec["slot"] = Value::Null;
    spec["ratio"] = Value::Null;
    let (code, created) = post_gadget(&raw, gadget("c", spec)).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["spec"]["enabled"], false);
    assert!(created["spec"].get("slot").is_none(), "{created}");
    assert_eq!(created["spec"]["ratio"], Value::Null);
    assert!(created["spec"].as_object().unwrap().contains_key("ratio"));

    // An update that removes a defaulted field gets the default back: PUT ...
    let mut updated = created.clone();
    updated["spec"]["policy"] = json!("Drop");
    updated["spec"]["enabled"] = json!(true);
    let (code, updated) = raw.send("PUT", &format!("{GADGETS}/c"), Some("application/json"), Some(updated)).await;
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["spec"]["policy"], "Drop");
    let mut without = updated.clone();
    without["spec"].as_object_mut().unwrap().remove("policy");
    let (code, put) = raw.send("PUT", &format!("{GADGETS}/c"), Some("application/json"), Some(without)).await;
    assert_eq!(code, 200, "{put}");
    assert_eq!(put["spec"]["policy"], "Keep");
    // ... merge patch (null deletes) ...
    let (code, patched) = raw
        .send(
            "PATCH",
            &format!("{GADGETS}/c"),
            Some("application/merge-patch+json"),
            Some(json!({ "spec": { "enabled": null, "options": {} } })),
        )
        .await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["spec"]["enabled"], false);
    assert_eq!(patched["spec"]["options"], json!({ "retries": 3, "mode": "fast" }));
    // ... and server-side apply, whose manager does not own what defaulting filled in.
    let (code, applied) = raw
        .send(
            "PATCH",
            &format!("{GADGETS}/d?fieldManager=applier"),
            Some("application/apply-patch+yaml"),
            Some(gadget("d", json!({ "name": "delta", "address": "::1", "zone": "z2", "options": {} }))),
        )
        .await;
    assert_eq!(code, 201, "{applied}");
    assert_eq!(applied["spec"]["policy"], "Keep");
    assert_eq!(applied["spec"]["options"]["retries"], 3);
    let owned = applied["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"].clone();
    assert!(owned.get("f:name").is_some(), "{owned}");
    assert!(owned.get("f:policy").is_none(), "{owned}");
}

#[tokio::test]
async fn crd_schema_violations_are_refused_with_kube_apiserver_errors() {
    let (_api, raw) = gadget_setup().await;
    let kind = "valid.test/Gadget";

    // Required field (a blocking error: the CEL rules are then not evaluated).
    let mut spec = gadget_spec();
    spec.as_object_mut().unwrap().remove("name");
    assert_invalid(
        post_gadget(&raw, gadget("g", spec)).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: [spec.name: Required value, <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]",
        &[("FieldValueRequired", "spec.name", "Required value"), NOT_CHECKED],
    );

    // pattern
    assert_invalid(
        post_gadget(&raw, gadget_with("name", json!("Bad_Name"))).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: spec.name: Invalid value: \"Bad_Name\": spec.name in body should match '^[a-z][a-z0-9-]*$'",
        &[(
            "FieldValueInvalid",
            "spec.name",
            "Invalid value: \"Bad_Name\": spec.name in body should match '^[a-z][a-z0-9-]*$'",
        )],
    );

    // maxLength (the value is not repeated)
    assert_invalid(
        post_gadget(&raw, gadget_with("name", json!("abcdefghijklm"))).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: [spec.name: Too long: may not be more than 12 bytes, <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]",
        &[("FieldValueTooLong", "spec.name", "Too long: may not be more than 12 bytes"), NOT_CHECKED],
    );

    // enum
    assert_invalid(
        post_gadget(&raw, gadget_with("policy", json!("Delete"))).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: [spec.policy: Unsupported value: \"Delete\": supported values: \"Keep\", \"Drop\", <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]",
        &[
            (
                "FieldValueNotSupported",
                "spec.policy",
                "Unsupported value: \"Delete\": supported values: \"Keep\", \"Drop\"",
            ),
            NOT_CHECKED,
        ],
    );

    // type
    assert_invalid(
        post_gadget(&raw, gadget_with("enabled", json!("yes"))).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: [spec.enabled: Invalid value: \"string\": spec.enabled in body must be of type boolean: \"string\", <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]",
        &[
            (
                "FieldValueTypeInvalid",
                "spec.enabled",
                "Invalid value: \"string\": spec.enabled in body must be of type boolean: \"string\"",
            ),
            NOT_CHECKED,
        ],
    );

    // CEL rule: the bad value shown is the schema type, as kube-apiserver reports rule failures.
    assert_invalid(
        post_gadget(&raw, gadget_with("address", json!("300.1.1.1"))).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: spec.address: Invalid value: \"string\": address must be an IPv4 or IPv6 address",
        &[("FieldValueInvalid", "spec.address", "Invalid value: \"string\": address must be an IPv4 or IPv6 address")],
    );

    // CEL rule with messageExpression, fieldPath and reason.
    assert_invalid(
        post_gadget(&raw, gadget_with("policy", json!("Drop"))).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: spec.policy: Forbidden: policy Drop needs enabled",
        &[("FieldValueForbidden", "spec.policy", "Forbidden: policy Drop needs enabled")],
    );

    // minimum / maximum
    assert_invalid(
        post_gadget(&raw, gadget_with("slot", json!(9))).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: spec.slot: Invalid value: 9: spec.slot in body should be less than or equal to 7",
        &[("FieldValueInvalid", "spec.slot", "Invalid value: 9: spec.slot in body should be less than or equal to 7")],
    );

    // format (a blocking type error)
    assert_invalid(
        post_gadget(&raw, gadget_with("since", json!("yesterday"))).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: [spec.since: Invalid value: \"yesterday\": spec.since in body must be of type date-time: \"yesterday\", <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]",
        &[
            (
                "FieldValueTypeInvalid",
                "spec.since",
                "Invalid value: \"yesterday\": spec.since in body must be of type date-time: \"yesterday\"",
            ),
            NOT_CHECKED,
        ],
    );

    // minItems, maxItems, list-type set
    assert_invalid(
        post_gadget(&raw, gadget_with("tags", json!([]))).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: spec.tags: Invalid value: 0: spec.tags in body should have at least 1 items",
        &[("FieldValueInvalid", "spec.tags", "Invalid value: 0: spec.tags in body should have at least 1 items")],
    );
    assert_invalid(
        post_gadget(&raw, gadget_with("tags", json!(["a", "b", "c", "d"]))).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: [spec.tags: Too many: 4: must have at most 3 items, <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]",
        &[("FieldValueTooMany", "spec.tags", "Too many: 4: must have at most 3 items"), NOT_CHECKED],
    );
    assert_invalid(
        post_gadget(&raw, gadget_with("tags", json!(["a", "a"]))).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: spec.tags[1]: Duplicate value: \"a\"",
        &[("FieldValueDuplicate", "spec.tags[1]", "Duplicate value: \"a\"")],
    );

    // additionalProperties values are validated
    assert_invalid(
        post_gadget(&raw, gadget_with("labels", json!({ "ok": "x", "k": "toolong" }))).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: [spec.labels.k: Too long: may not be more than 5 bytes, <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]",
        &[("FieldValueTooLong", "spec.labels.k", "Too long: may not be more than 5 bytes"), NOT_CHECKED],
    );

    // x-kubernetes-int-or-string
    assert_invalid(
        post_gadget(&raw, gadget_with("port", json!(true))).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: [spec.port: Invalid value: \"boolean\": spec.port in body must be of type integer,string: \"boolean\", <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]",
        &[
            (
                "FieldValueTypeInvalid",
                "spec.port",
                "Invalid value: \"boolean\": spec.port in body must be of type integer,string: \"boolean\"",
            ),
            NOT_CHECKED,
        ],
    );

    // Several non-blocking errors: schema errors first, then the rules, joined in [...].
    let mut spec = gadget_spec();
    spec["name"] = json!("Bad_Name");
    spec["address"] = json!("abc");
    spec["slot"] = json!(-1);
    assert_invalid(
        post_gadget(&raw, gadget("g", spec)).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: [spec.name: Invalid value: \"Bad_Name\": spec.name in body should match '^[a-z][a-z0-9-]*$', spec.slot: Invalid value: -1: spec.slot in body should be greater than or equal to 0, spec.address: Invalid value: \"string\": address must be an IPv4 or IPv6 address]",
        &[
            (
                "FieldValueInvalid",
                "spec.name",
                "Invalid value: \"Bad_Name\": spec.name in body should match '^[a-z][a-z0-9-]*$'",
            ),
            (
                "FieldValueInvalid",
                "spec.slot",
                "Invalid value: -1: spec.slot in body should be greater than or equal to 0",
            ),
            ("FieldValueInvalid", "spec.address", "Invalid value: \"string\": address must be an IPv4 or IPv6 address"),
        ],
    );

    // Nothing was stored; valid values of every kind are accepted.
    let (code, list) = raw.get(GADGETS).await;
    assert_eq!((code, list["items"].as_array().map(Vec::len)), (200, Some(0)));
    let mut spec = gadget_spec();
    spec["address"] = json!("fd00::7");
    spec["port"] = json!("http");
    spec["since"] = json!("2024-02-29T23:59:59.123+01:00");
    spec["tags"] = json!(["a", "b", "c"]);
    spec["labels"] = json!({ "k": "12345" });
    spec["extra"] = json!({ "anything": { "nested": [1, "two"] } });
    spec["ratio"] = json!(0.5);
    spec["slot"] = json!(7);
    spec["policy"] = json!("Drop");
    spec["enabled"] = json!(true);
    let (code, created) = post_gadget(&raw, gadget("ok", spec)).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["spec"]["extra"]["anything"]["nested"], json!([1, "two"]));
    let (code, created) = post_gadget(&raw, gadget_with("port", json!(8080))).await;
    assert_eq!(code, 201, "{created}");
}

fn gadgets_api(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("valid.test", "v1", "Gadget");
    Api::namespaced_with(client.clone(), "default", &ApiResource::from_gvk(&gvk))
}

fn dynamic(obj: Value) -> DynamicObject {
    serde_json::from_value(obj).expect("a DynamicObject")
}

/// The message of a `422 Invalid` returned through `kube::Client`.
fn invalid_message<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> String {
    let status = api_error(result);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"), "{status:?}");
    status.message
}

#[tokio::test]
async fn immutable_fields_are_refused_by_every_kind_of_write() {
    let (api, _raw) = gadget_setup().await;
    let gadgets = gadgets_api(&api.client());
    let mut spec = gadget_spec();
    spec["slot"] = json!(1);
    let created = within(gadgets.create(&PostParams::default(), &dynamic(gadget("g", spec)))).await.expect("create");
    let zone_immutable = "Gadget.valid.test \"g\" is invalid: spec.zone: Invalid value: \"string\": zone is immutable";

    // PUT
    let mut changed = created.clone();
    changed.data["spec"]["zone"] = json!("z2");
    assert_eq!(invalid_message(within(gadgets.replace("g", &PostParams::default(), &changed)).await), zone_immutable);
    // merge patch
    let zone = json!({ "spec": { "zone": "z2" } });
    assert_eq!(
        invalid_message(within(gadgets.patch("g", &PatchParams::default(), &merge(zone))).await),
        zone_immutable
    );
    // JSON patch
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{ "op": "replace", "path": "/spec/zone", "value": "z2" }])).expect("patch");
    assert_eq!(
        invalid_message(within(gadgets.patch("g", &PatchParams::default(), &Patch::<Value>::Json(ops))).await),
        zone_immutable
    );
    // server-side apply, forced or not
    let applied = gadget("g", json!({ "name": "alpha", "address": "10.0.0.1", "zone": "z2", "slot": 1 }));
    let params = apply_params("applier").force();
    assert_eq!(invalid_message(within(gadgets.patch("g", &params, &Patch::Apply(applied))).await), zone_immutable);

    // Changing the optional immutable field, adding or removing it.
    let slot = json!({ "spec": { "slot": 2 } });
    assert_eq!(
        invalid_message(within(gadgets.patch("g", &PatchParams::default(), &merge(slot))).await),
        "Gadget.valid.test \"g\" is invalid: spec.slot: Invalid value: \"integer\": slot is immutable"
    );
    let slot_presence = "Gadget.valid.test \"g\" is invalid: spec: Invalid value: \"object\": slot is immutable (it cannot be added or removed)";
    let unset = json!({ "spec": { "slot": null } });
    assert_eq!(
        invalid_message(within(gadgets.patch("g", &PatchParams::default(), &merge(unset))).await),
        slot_presence
    );
    let mut other = created.clone();
    other.metadata = ObjectMeta { name: Some("h".into()), ..Default::default() };
    other.data["spec"].as_object_mut().expect("spec").remove("slot");
    within(gadgets.create(&PostParams::default(), &other)).await.expect("create h without slot");
    let add = json!({ "spec": { "slot": 3 } });
    assert_eq!(
        invalid_message(within(gadgets.patch("h", &PatchParams::default(), &merge(add))).await),
        slot_presence.replace("\"g\"", "\"h\"")
    );

    // Several errors at once (kube-apiserver walks sibling fields in Go map order, which
    // varies; the fake walks them in name order).
    let both = json!({ "spec": { "zone": "z9", "slot": 5 } });
    assert_eq!(
        invalid_message(within(gadgets.patch("g", &PatchParams::default(), &merge(both))).await),
        "Gadget.valid.test \"g\" is invalid: [spec.slot: Invalid value: \"integer\": slot is immutable, spec.zone: Invalid value: \"string\": zone is immutable]"
    );

    // Nothing changed; mutable fields, metadata and no-op writes pass.
    let stored = within(gadgets.get("g")).await.expect("get");
    assert_eq!(stored.data["spec"], created.data["spec"]);
    assert_eq!(stored.metadata.resource_version, created.metadata.resource_version);
    let edit =
        json!({ "metadata": { "labels": { "a": "b" } }, "spec": { "name": "beta", "enabled": true, "tags": ["x"] } });
    let edited = within(gadgets.patch("g", &PatchParams::default(), &merge(edit))).await.expect("mutable fields");
    assert_eq!(edited.data["spec"]["name"], "beta");
    assert_eq!(edited.metadata.generation, Some(2));
    let applied = gadget("g", json!({ "name": "beta", "address": "10.0.0.1", "zone": "z1", "slot": 1 }));
    within(gadgets.patch("g", &params, &Patch::Apply(applied))).await.expect("apply the same immutable values");
    let again = within(gadgets.get("g")).await.expect("get");
    let replaced = within(gadgets.replace("g", &PostParams::default(), &again)).await.expect("no-op PUT");
    assert_eq!(replaced.metadata.resource_version, again.metadata.resource_version);
}

#[tokio::test]
async fn status_writes_validate_the_status_only() {
    let (_api, raw) = gadget_setup().await;
    let kind = "valid.test/Gadget";
    let (code, created) = post_gadget(&raw, gadget("g", gadget_spec())).await;
    assert_eq!(code, 201, "{created}");
    let status_path = format!("{GADGETS}/g/status");
    let patch_status = |status: Value| {
        raw.send("PATCH", &status_path, Some("application/merge-patch+json"), Some(json!({ "status": status })))
    };

    let (code, ok) = patch_status(json!({ "count": 3, "phase": "Ready" })).await;
    assert_eq!((code, &ok["status"]["count"]), (200, &json!(3)), "{ok}");

    // The status schema's messages name fields relative to status, as the apiserver's
    // status validator does; the field paths are complete.
    assert_invalid(
        patch_status(json!({ "count": -1 })).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: status.count: Invalid value: -1: count in body should be greater than or equal to 0",
        &[(
            "FieldValueInvalid",
            "status.count",
            "Invalid value: -1: count in body should be greater than or equal to 0",
        )],
    );
    assert_invalid(
        patch_status(json!({ "count": "many" })).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: [status.count: Invalid value: \"string\": count in body must be of type integer: \"string\", <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]",
        &[
            (
                "FieldValueTypeInvalid",
                "status.count",
                "Invalid value: \"string\": count in body must be of type integer: \"string\"",
            ),
            NOT_CHECKED,
        ],
    );
    // The status's CEL rule (with a fieldPath).
    assert_invalid(
        patch_status(json!({ "count": 101 })).await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: status.count: Invalid value: \"object\": count must be at most 100",
        &[("FieldValueInvalid", "status.count", "Invalid value: \"object\": count must be at most 100")],
    );
    // list-type map keys are unique
    assert_invalid(
        patch_status(json!({ "conditions": [{ "type": "A", "status": "True" }, { "type": "A", "status": "False" }] }))
            .await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: status.conditions[1]: Duplicate value: {\"type\":\"A\"}",
        &[("FieldValueDuplicate", "status.conditions[1]", "Duplicate value: {\"type\":\"A\"}")],
    );

    // A main-resource write ignores the status it carries, so its status is not validated.
    let (_, current) = raw.get(&format!("{GADGETS}/g")).await;
    let mut body = current.clone();
    body["status"] = json!({ "count": "many" });
    body["spec"]["enabled"] = json!(true);
    let (code, put) = raw.send("PUT", &format!("{GADGETS}/g"), Some("application/json"), Some(body)).await;
    assert_eq!(code, 200, "{put}");
    assert_eq!(put["status"]["count"], 3);

    // Tighten the schema so that the stored spec is invalid (name longer than 3): writes
    // that leave it as it is still pass (ratcheting), as status writes do; changing it to
    // another invalid value does not.
    let crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gadgets.valid.test";
    let (_, mut crd) = raw.get(crd_path).await;
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["name"]["maxLength"] =
        json!(3);
    let (code, body) = raw.send("PUT", crd_path, Some("application/json"), Some(crd)).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = patch_status(json!({ "count": 4 })).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = raw
        .send(
            "PATCH",
            &format!("{GADGETS}/g"),
            Some("application/merge-patch+json"),
            Some(json!({ "spec": { "enabled": false } })),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = raw.send("PUT", &format!("{GADGETS}/g"), Some("application/json"), Some(body)).await;
    assert_eq!(code, 200, "no-op update of a stored object: {body}");
    assert_invalid(
        raw.send(
            "PATCH",
            &format!("{GADGETS}/g"),
            Some("application/merge-patch+json"),
            Some(json!({ "spec": { "name": "beta" } })),
        )
        .await,
        kind,
        "g",
        "Gadget.valid.test \"g\" is invalid: [spec.name: Too long: may not be more than 3 bytes, <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]",
        &[("FieldValueTooLong", "spec.name", "Too long: may not be more than 3 bytes"), NOT_CHECKED],
    );
    let (code, body) = raw
        .send(
            "PATCH",
            &format!("{GADGETS}/g"),
            Some("application/merge-patch+json"),
            Some(json!({ "spec": { "name": "abc" } })),
        )
        .await;
    assert_eq!((code, &body["spec"]["name"]), (200, &json!("abc")), "{body}");
}

#[tokio::test]
async fn the_operator_crd_is_validated_and_defaulted() {
    use vip_operator::api::v1alpha1::VipBinding;

    let api = FakeApiServer::start().await;
    api.register_crd(VipBinding::crd());
    let raw = Raw::new(&api);
    let path = "/apis/vipoperator.dev/v1alpha1/namespaces/default/vipbindings";
    let binding = |spec: Value| json!({ "apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipBinding", "metadata": { "name": "b" }, "spec": spec });
    let spec = json!({
        "nicId": "d32019d3-bc6e-4319-9c1d-6722fc136a23",
        "ipAddress": "192.168.0.7",
        "subnetId": "8c9d4f38-1a2b-4c3d-9e8f-001122334455",
    });
    let kind = "vipoperator.dev/VipBinding";

    let mut bad_ip = spec.clone();
    bad_ip["ipAddress"] = json!("300.1.1.1");
    assert_invalid(
        raw.send("POST", path, Some("application/json"), Some(binding(bad_ip))).await,
        kind,
        "b",
        "VipBinding.vipoperator.dev \"b\" is invalid: spec.ipAddress: Invalid value: \"string\": ipAddress must be an IPv4 or IPv6 address",
        &[(
            "FieldValueInvalid",
            "spec.ipAddress",
            "Invalid value: \"string\": ipAddress must be an IPv4 or IPv6 address",
        )],
    );
    let mut no_nic = spec.clone();
    no_nic.as_object_mut().expect("spec").remove("nicId");
    assert_invalid(
        raw.send("POST", path, Some("application/json"), Some(binding(no_nic))).await,
        kind,
        "b",
        "VipBinding.vipoperator.dev \"b\" is invalid: [spec.nicId: Required value, <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]",
        &[("FieldValueRequired", "spec.nicId", "Required value"), NOT_CHECKED],
    );
    let mut delete = spec.clone();
    delete["deletionPolicy"] = json!("Delete");
    assert_invalid(
        raw.send("POST", path, Some("application/json"), Some(binding(delete))).await,
        kind,
        "b",
        "VipBinding.vipoperator.dev \"b\" is invalid: [spec.deletionPolicy: Unsupported value: \"Delete\": supported values: \"Unbind\", \"Orphan\", <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]",
        &[
            (
                "FieldValueNotSupported",
                "spec.deletionPolicy",
                "Unsupported value: \"Delete\": supported values: \"Unbind\", \"Orphan\"",
            ),
            NOT_CHECKED,
        ],
    );

    // Defaults, read back through the typed API.
    let (code, body) = raw.send("POST", path, Some("application/json"), Some(binding(spec))).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["spec"]["reverseBinding"], false);
    assert_eq!(body["spec"]["deletionPolicy"], "Unbind");
    let bindings: Api<VipBinding> = Api::namespaced(api.client(), "default");
    let typed = within(bindings.get("b")).await.expect("get");
    assert!(!typed.spec.reverse_binding);

    // Immutable fields; a mutable one passes.
    let nic = json!({ "spec": { "nicId": "other-nic" } });
    assert_eq!(
        invalid_message(within(bindings.patch("b", &PatchParams::default(), &merge(nic))).await),
        "VipBinding.vipoperator.dev \"b\" is invalid: spec.nicId: Invalid value: \"string\": nicId is immutable: create a new VipBinding to bind another NIC"
    );
    let region = json!({ "spec": { "region": "cn-north-4" } });
    assert_eq!(
        invalid_message(within(bindings.patch("b", &PatchParams::default(), &merge(region))).await),
        "VipBinding.vipoperator.dev \"b\" is invalid: spec: Invalid value: \"object\": region is immutable (it cannot be added or removed): create a new VipBinding instead"
    );
    let orphan = json!({ "spec": { "deletionPolicy": "Orphan", "reverseBinding": true } });
    let patched = within(bindings.patch("b", &PatchParams::default(), &merge(orphan))).await.expect("mutable fields");
    assert!(patched.spec.reverse_binding);

    // The operator's status writes pass the status schema (conditions with date-times).
    let status = json!({ "status": {
        "portId": "d32019d3-bc6e-4319-9c1d-6722fc136a23",
        "observedGeneration": 2,
        "boundReverseBinding": true,
        "conditions": [{ "type": "Ready", "status": "True", "reason": "Bound", "message": "", "lastTransitionTime": "2026-01-02T03:04:05Z", "observedGeneration": 2 }],
    }});
    let written = within(bindings.patch_status("b", &PatchParams::default(), &merge(status))).await.expect("status");
    assert_eq!(written.condition("Ready").map(|c| c.status.as_str()), Some("True"));
    let bad_time = json!({ "status": { "conditions": [{ "type": "Ready", "status": "True", "reason": "Bound", "message": "", "lastTransitionTime": "now" }] } });
    assert_eq!(
        invalid_message(within(bindings.patch_status("b", &PatchParams::default(), &merge(bad_time))).await),
        "VipBinding.vipoperator.dev \"b\" is invalid: [status.conditions[0].lastTransitionTime: Invalid value: \"now\": conditions[0].lastTransitionTime in body must be of type date-time: \"now\", <nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]"
    );
}

#[tokio::test]
async fn schema_errors_of_a_crd_without_rules_stand_alone() {
    let (api, client) = setup().await;
    let raw = Raw::new(&api);
    let mut bad = serde_json::to_value(widget("w", 1)).expect("widget");
    bad["spec"]["size"] = json!("x");
    // No CEL rules in the schema: no "rules were not checked" error.
    assert_invalid(
        raw.send("POST", "/apis/example.test/v1/namespaces/default/widgets", Some("application/json"), Some(bad)).await,
        "example.test/Widget",
        "w",
        "Widget.example.test \"w\" is invalid: spec.size: Invalid value: \"string\": spec.size in body must be of type integer: \"string\"",
        &[(
            "FieldValueTypeInvalid",
            "spec.size",
            "Invalid value: \"string\": spec.size in body must be of type integer: \"string\"",
        )],
    );
    let missing = json!({ "apiVersion": "example.test/v1", "kind": "Widget", "metadata": { "name": "w" }, "spec": {} });
    let (code, body) = raw
        .send("POST", "/apis/example.test/v1/namespaces/default/widgets", Some("application/json"), Some(missing))
        .await;
    assert_eq!(
        (code, &body["message"]),
        (422, &json!("Widget.example.test \"w\" is invalid: spec.size: Required value"))
    );
    assert!(within(widgets(&client, "default").get_opt("w")).await.expect("get").is_none());
}
