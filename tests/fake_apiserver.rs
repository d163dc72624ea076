//! Tests of the fake API server itself: each behaviour the operator's correctness depends on,
//! through `kube::Client` (typed `Api`s, kube-runtime, kube-lease-manager) and through raw HTTP
//! where the wire format matters.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::{ObjectMeta, PartialObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use support::fake_apiserver::FakeApiServer;

/// The custom resource of these tests: namespaced, with a status subresource.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(group = "example.test", version = "v1", kind = "Widget", namespaced, status = "WidgetStatus")]
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

/// Awaits `fut`, failing the test instead of hanging.
async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), fut).await.expect("timed out")
}

async fn setup() -> (FakeApiServer, Client, Api<Widget>) {
    setup_with(FakeApiServer::start().await)
}

fn setup_with(api: FakeApiServer) -> (FakeApiServer, Client, Api<Widget>) {
    api.register_crd(Widget::crd());
    let client = api.client();
    let widgets = Api::namespaced(client.clone(), "default");
    (api, client, widgets)
}

fn widget(name: &str, size: i32) -> Widget {
    Widget::new(name, WidgetSpec { size, ..Default::default() })
}

async fn create(w: &Api<Widget>, name: &str, finalizers: &[&str]) -> Widget {
    let mut obj = widget(name, 1);
    obj.metadata.finalizers = (!finalizers.is_empty()).then(|| finalizers.iter().map(|f| f.to_string()).collect());
    within(w.create(&PostParams::default(), &obj)).await.expect("create")
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

fn secret(name: &str) -> Secret {
    Secret {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        string_data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    }
}

async fn merge<K: Clone + serde::de::DeserializeOwned + std::fmt::Debug>(
    api: &Api<K>,
    name: &str,
    patch: Value,
) -> Result<K, kube::Error> {
    within(api.patch(name, &PatchParams::default(), &Patch::Merge(patch))).await
}

async fn merge_status(w: &Api<Widget>, name: &str, patch: Value) -> Result<Widget, kube::Error> {
    within(w.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))).await
}

const WIDGETS: &str = "/apis/example.test/v1/namespaces/default/widgets";

/// Raw HTTP, for wire-level assertions.
fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("reqwest client")
}

/// A raw watch stream, one JSON event per line.
struct RawWatch {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

async fn raw_watch(api: &FakeApiServer, path_and_query: &str, accept: Option<&str>) -> RawWatch {
    let mut req = http().get(format!("{}{path_and_query}", api.url()));
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    let resp = within(req.send()).await.expect("open watch");
    assert_eq!(resp.status(), 200, "watch status");
    RawWatch { resp, buf: Vec::new() }
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

    /// Asserts the type and object name of the next event that is not a BOOKMARK.
    async fn expect(&mut self, event_type: &str, name: &str) -> Value {
        let event = loop {
            let event = self.next().await.expect("stream ended early");
            if event["type"] != "BOOKMARK" {
                break event;
            }
        };
        let seen = (event["type"].as_str(), event["object"]["metadata"]["name"].as_str());
        assert_eq!(seen, (Some(event_type), Some(name)), "unexpected event {event}");
        event
    }
}

fn event_rv(event: &Value) -> u64 {
    event["object"]["metadata"]["resourceVersion"].as_str().expect("rv").parse().expect("numeric rv")
}

#[tokio::test]
async fn a_kubeconfig_file_gives_a_working_client() {
    let api = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    api.write_kubeconfig(&path);
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("config");
    assert_eq!(
        (config.cluster_url.to_string(), config.default_namespace.as_str()),
        (format!("{}/", api.url()), "default")
    );
    let client = Client::try_from(config).expect("client");

    let version = within(client.apiserver_version()).await.expect("version");
    assert_eq!((version.major.as_str(), version.minor.as_str(), version.git_version.as_str()), ("1", "36", "v1.36.0"));
    let namespaces = within(Api::<Namespace>::all(client.clone()).list(&Default::default())).await.expect("list");
    let names: Vec<String> = namespaces.items.iter().map(|n| n.name_any()).collect();
    assert_eq!(names, ["default", "kube-node-lease", "kube-public", "kube-system"]);

    // What is not served is a 404 Status.
    let resp = within(http().get(format!("{}/api/v1/namespaces/default/pods", api.url())).send()).await.expect("get");
    assert_eq!(resp.status(), 404);
    let body: Value = within(resp.json()).await.expect("json");
    assert_eq!((body["kind"].as_str(), body["reason"].as_str()), (Some("Status"), Some("NotFound")));
    let widgets: Api<Widget> = Api::namespaced(client.clone(), "default");
    assert_eq!(api_error(within(widgets.get("w")).await).code, 404, "no CRD registered");
}

#[tokio::test]
async fn create_assigns_server_fields() {
    let (api, client, w) = setup().await;
    let before = api.resource_version();
    let created = create(&w, "a", &[]).await;
    assert!(created.uid().is_some_and(|u| !u.is_empty()));
    assert_eq!(rv_of(&created), before + 1, "one global counter");
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.namespace().as_deref(), Some("default"));
    assert_eq!(json!(within(w.get("a")).await.expect("get")), json!(created));

    let status = api_error(within(w.create(&PostParams::default(), &widget("a", 1))).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(status.message, "widgets.example.test \"a\" already exists");
    let elsewhere: Api<Widget> = Api::namespaced(client.clone(), "nope");
    let status = api_error(within(elsewhere.create(&PostParams::default(), &widget("a", 1))).await);
    assert_eq!((status.code, status.message.as_str()), (404, "namespaces \"nope\" not found"));

    // A Secret has no generation; its write-only stringData lands in data; type defaults.
    let secrets = Api::<Secret>::namespaced(client.clone(), "default");
    let s = within(secrets.create(&PostParams::default(), &secret("s"))).await.expect("create secret");
    assert_eq!(s.metadata.generation, None);
    assert_eq!(s.string_data, None);
    assert_eq!(s.data.as_ref().and_then(|d| d.get("k")).map(|b| b.0.as_slice()), Some(b"v".as_slice()));
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    let patched = merge(&secrets, "s", json!({ "stringData": { "k": "new" } })).await.expect("patch secret");
    assert_eq!(patched.data.as_ref().and_then(|d| d.get("k")).map(|b| b.0.as_slice()), Some(b"new".as_slice()));
}

async fn json_patch(w: &Api<Widget>, ops: Value) -> Result<Widget, kube::Error> {
    let patch = Patch::<()>::Json(serde_json::from_value(ops).expect("json patch"));
    within(w.patch("a", &PatchParams::default(), &patch)).await
}

#[tokio::test]
async fn json_patch_test_operations_follow_kube_apiserver() {
    let (_api, _client, w) = setup().await;
    create(&w, "a", &[]).await;

    // Against a missing path, `[]` and any other non-null value fail...
    for value in [json!([]), json!(["x"])] {
        let status =
            api_error(json_patch(&w, json!([{ "op": "test", "path": "/metadata/finalizers", "value": value }])).await);
        assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    }
    assert_eq!(
        api_error(json_patch(&w, json!([{ "op": "test", "path": "/spec/color", "value": "red" }])).await).code,
        422
    );
    // ...and null passes (kube-runtime's finalizer() and the operator rely on it).
    let first = json!({ "op": "test", "path": "/metadata/finalizers", "value": null });
    let added = json_patch(&w, json!([first, { "op": "add", "path": "/metadata/finalizers", "value": ["f/one"] }]))
        .await
        .expect("null test on a missing path passes");
    assert_eq!(added.finalizers(), ["f/one"]);

    // null fails once the path is present, and nothing of the patch is applied.
    let status = api_error(
        json_patch(&w, json!([first, { "op": "add", "path": "/metadata/finalizers", "value": ["other"] }])).await,
    );
    assert_eq!(status.code, 422);
    let causes = status.details.expect("details").causes;
    assert!(causes.iter().any(|c| c.message.contains("/metadata/finalizers")), "{causes:?}");
    assert_eq!(within(w.get("a")).await.expect("get").finalizers(), ["f/one"]);

    // A matching value passes; the ops apply in order.
    let patched = json_patch(
        &w,
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": ["f/one"] },
            { "op": "add", "path": "/metadata/finalizers/-", "value": "f/two" },
            { "op": "test", "path": "/metadata/finalizers/1", "value": "f/two" },
            { "op": "replace", "path": "/spec/size", "value": 7 },
        ]),
    )
    .await
    .expect("json patch");
    assert_eq!((patched.finalizers(), patched.spec.size), (&["f/one".to_string(), "f/two".to_string()][..], 7));
    let removed = json_patch(
        &w,
        json!([{ "op": "test", "path": "/metadata/finalizers/0", "value": "f/one" }, { "op": "remove", "path": "/metadata/finalizers/0" }]),
    )
    .await
    .expect("remove");
    assert_eq!(removed.finalizers(), ["f/two"]);
    // Removing a missing path fails; so does a test under a missing parent.
    assert_eq!(api_error(json_patch(&w, json!([{ "op": "remove", "path": "/spec/nope" }])).await).code, 422);
    assert_eq!(
        api_error(json_patch(&w, json!([{ "op": "test", "path": "/nope/deeper", "value": null }])).await).code,
        422
    );
}

#[tokio::test]
async fn merge_patches_conflict_on_a_stale_resource_version_and_no_ops_change_nothing() {
    let (api, client, w) = setup().await;
    let created = create(&w, "a", &[]).await;
    let mut watch = raw_watch(&api, &format!("{WIDGETS}?watch=true&resourceVersion={}", rv_of(&created)), None).await;

    let same = merge(&w, "a", json!({ "spec": { "size": 1 } })).await.expect("no-op");
    assert_eq!((rv_of(&same), api.resource_version()), (rv_of(&created), rv_of(&created)));
    let patched = merge(&w, "a", json!({ "spec": { "note": "n", "size": 2 }, "metadata": { "labels": { "l": "1" } } }))
        .await
        .expect("merge patch");
    assert_eq!(rv_of(&patched), rv_of(&created) + 1);
    assert_eq!(watch.expect("MODIFIED", "a").await["object"]["spec"]["size"], 2, "the no-op emitted nothing");
    let cleared = merge(&w, "a", json!({ "spec": { "note": null } })).await.expect("null deletes");
    assert_eq!(cleared.spec.note, None);

    // A resourceVersion in a patch is a precondition.
    let stale = json!({ "metadata": { "resourceVersion": created.resource_version() }, "spec": { "size": 3 } });
    let status = api_error(merge(&w, "a", stale).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Operation cannot be fulfilled on widgets.example.test \"a\": the object has been modified; please apply your \
         changes to the latest version and try again"
    );
    let current = json!({ "metadata": { "resourceVersion": cleared.resource_version() }, "spec": { "size": 3 } });
    assert_eq!(merge(&w, "a", current).await.expect("current rv").spec.size, 3);

    // Strategic merge patch: refused for custom resources, a merge patch for the built-ins.
    let status = api_error(within(w.patch("a", &PatchParams::default(), &Patch::Strategic(json!({})))).await);
    assert_eq!((status.code, status.reason.as_str()), (415, "UnsupportedMediaType"));
    let leases = Api::<Lease>::namespaced(client.clone(), "default");
    let lease: Lease =
        serde_json::from_value(json!({ "metadata": { "name": "l" }, "spec": { "holderIdentity": "me" } }))
            .expect("lease");
    within(leases.create(&PostParams::default(), &lease)).await.expect("create lease");
    let smp = Patch::Strategic(json!({ "spec": { "holderIdentity": null, "leaseDurationSeconds": 15 } }));
    let spec = within(leases.patch("l", &PatchParams::default(), &smp)).await.expect("smp").spec.expect("spec");
    assert_eq!((spec.holder_identity, spec.lease_duration_seconds), (None, Some(15)));
}

#[tokio::test]
async fn generation_and_the_status_subresource() {
    let (_api, _client, w) = setup().await;
    let mut with_status = widget("a", 1);
    with_status.status = Some(WidgetStatus { phase: Some("Ignored".into()), message: None });
    let created = within(w.create(&PostParams::default(), &with_status)).await.expect("create");
    assert_eq!(created.status, None, "status is dropped on create");

    // /status writes change only status, and never the generation.
    let patch =
        json!({ "spec": { "size": 99 }, "metadata": { "labels": { "x": "y" } }, "status": { "phase": "Ready" } });
    let patched = merge_status(&w, "a", patch).await.expect("patch status");
    assert_eq!((patched.spec.size, patched.labels().len(), patched.metadata.generation), (1, 0, Some(1)));
    assert_eq!(patched.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Ready"));
    assert_eq!(json!(within(w.get_status("a")).await.expect("get status")), json!(patched));

    // Main-resource writes never change status; metadata changes leave the generation alone.
    let labelled = merge(&w, "a", json!({ "metadata": { "labels": { "x": "y" } }, "status": { "phase": "Hacked" } }))
        .await
        .expect("label");
    assert_eq!(labelled.metadata.generation, Some(1));
    assert_eq!(labelled.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Ready"));
    let spec = merge(&w, "a", json!({ "spec": { "size": 3 } })).await.expect("spec");
    assert_eq!(spec.metadata.generation, Some(2));
    // A client can set neither the generation nor a deletion timestamp.
    let patch = json!({ "metadata": { "generation": 42, "deletionTimestamp": "2020-01-01T00:00:00Z" } });
    let ignored = merge(&w, "a", patch).await.expect("system fields are kept");
    assert_eq!((ignored.metadata.generation, ignored.metadata.deletion_timestamp), (Some(2), None));
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let (api, client, w) = setup().await;
    let created = create(&w, "a", &["f/one", "f/two"]).await;
    let mut watch = raw_watch(&api, &format!("{WIDGETS}?watch=true&resourceVersion={}", rv_of(&created)), None).await;

    let deleted = within(w.delete("a", &DeleteParams::default())).await.expect("delete");
    let terminating = deleted.left().expect("the object is returned while finalizers remain");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(0));
    assert_eq!(terminating.metadata.generation, Some(2), "marking as deleting bumps the generation");
    assert!(watch.expect("MODIFIED", "a").await["object"]["metadata"]["deletionTimestamp"].is_string());
    // Deleting again changes nothing.
    let rv = api.resource_version();
    assert!(within(w.delete("a", &DeleteParams::default())).await.expect("again").is_left());
    assert_eq!(api.resource_version(), rv);

    // No finalizer can be added (replacing one by another is adding one, too)...
    for finalizers in [json!(["f/one", "f/two", "f/three"]), json!(["f/one", "f/three"])] {
        let status = api_error(merge(&w, "a", json!({ "metadata": { "finalizers": finalizers } })).await);
        assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
        assert!(
            status.message.contains(
                "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted"
            ),
            "{}",
            status.message
        );
    }
    // ...but spec, status and removing finalizers still work (spec: the operator's escape hatch).
    assert_eq!(merge(&w, "a", json!({ "spec": { "size": 5 } })).await.expect("spec").spec.size, 5);
    merge_status(&w, "a", json!({ "status": { "phase": "Cleaning" } })).await.expect("status while deleting");
    let one_left = merge(&w, "a", json!({ "metadata": { "finalizers": ["f/two"] } })).await.expect("remove one");
    assert_eq!(one_left.finalizers(), ["f/two"]);
    for _ in 0..3 {
        watch.expect("MODIFIED", "a").await;
    }
    // Emptying the finalizers removes the object: DELETED only now.
    merge(&w, "a", json!({ "metadata": { "finalizers": null } })).await.expect("remove the last");
    assert_eq!(event_rv(&watch.expect("DELETED", "a").await), api.resource_version());
    assert_eq!(api_error(within(w.get("a")).await).code, 404);

    // Without finalizers a custom resource goes at once and the answer is the object; a
    // Secret's is a Success Status.
    create(&w, "b", &[]).await;
    let gone = within(w.delete("b", &DeleteParams::default())).await.expect("delete").left().expect("object");
    assert_eq!(gone.name_any(), "b");
    watch.expect("ADDED", "b").await;
    watch.expect("DELETED", "b").await;
    assert_eq!(api_error(within(w.delete("b", &DeleteParams::default())).await).code, 404);
    let secrets = Api::<Secret>::namespaced(client.clone(), "default");
    within(secrets.create(&PostParams::default(), &secret("s"))).await.expect("create secret");
    let status =
        within(secrets.delete("s", &DeleteParams::default())).await.expect("delete secret").right().expect("Status");
    assert_eq!(status.details.expect("details").name, "s");
}

#[tokio::test]
async fn watches_stream_changes_in_order_resume_and_filter_by_name() {
    let (api, client, w) = setup().await;
    let start = within(w.list(&ListParams::default())).await.expect("list").metadata.resource_version.expect("list rv");
    let path = format!("{WIDGETS}?watch=1");
    let mut watch = raw_watch(&api, &format!("{path}&resourceVersion={start}"), None).await;
    let by_name = format!("{path}&fieldSelector=metadata.name%3Db&resourceVersion={start}");
    let mut named = raw_watch(&api, &by_name, None).await;

    create(&w, "a", &[]).await;
    create(&w, "b", &[]).await;
    merge(&w, "a", json!({ "spec": { "size": 2 } })).await.expect("patch");
    within(w.delete("b", &DeleteParams::default())).await.expect("delete");
    // Other namespaces and resources do not show up.
    let other: Namespace = serde_json::from_value(json!({ "metadata": { "name": "other" } })).expect("ns");
    within(Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &other)).await.expect("create ns");
    let elsewhere: Api<Widget> = Api::namespaced(client.clone(), "other");
    create(&elsewhere, "elsewhere", &[]).await;

    let first = watch.expect("ADDED", "a").await;
    assert_eq!(
        (first["object"]["apiVersion"].as_str(), first["object"]["kind"].as_str()),
        (Some("example.test/v1"), Some("Widget"))
    );
    let events = [
        first,
        watch.expect("ADDED", "b").await,
        watch.expect("MODIFIED", "a").await,
        watch.expect("DELETED", "b").await,
    ];
    let rvs = events.each_ref().map(event_rv);
    assert!(rvs.windows(2).all(|p| p[0] < p[1]), "{rvs:?}");
    named.expect("ADDED", "b").await;
    named.expect("DELETED", "b").await;

    // Resuming from the second event replays what came after it.
    let mut resumed = raw_watch(&api, &format!("{path}&resourceVersion={}", rvs[1]), None).await;
    assert_eq!(event_rv(&resumed.expect("MODIFIED", "a").await), rvs[2]);
    assert_eq!(event_rv(&resumed.expect("DELETED", "b").await), rvs[3]);
    // Without a resourceVersion, the current objects come first as ADDED.
    let mut fresh = raw_watch(&api, &path, None).await;
    fresh.expect("ADDED", "a").await;
    create(&w, "c", &[]).await;
    fresh.expect("ADDED", "c").await;
    // An all-namespaces watch sees every namespace.
    let mut everywhere = raw_watch(&api, "/apis/example.test/v1/widgets?watch=true", None).await;
    for name in ["a", "c", "elsewhere"] {
        everywhere.expect("ADDED", name).await;
    }
}

#[tokio::test]
async fn a_watch_from_a_compacted_or_forgotten_resource_version_is_gone() {
    let (api, _client, w) = setup_with(FakeApiServer::builder().history_limit(3).start().await);
    let created = create(&w, "a", &[]).await;
    for size in 2..=6 {
        merge(&w, "a", json!({ "spec": { "size": size } })).await.expect("patch");
    }
    let path = format!("{WIDGETS}?watch=true&resourceVersion=");
    // Only the last three changes are kept.
    let mut recent = raw_watch(&api, &format!("{path}{}", api.resource_version() - 2), None).await;
    assert_eq!(recent.expect("MODIFIED", "a").await["object"]["spec"]["size"], 5);
    assert_eq!(recent.expect("MODIFIED", "a").await["object"]["spec"]["size"], 6);
    let mut old = raw_watch(&api, &format!("{path}{}", rv_of(&created)), None).await;
    let event = old.next().await.expect("an ERROR event");
    assert_eq!(event["type"], "ERROR");
    let status = &event["object"];
    assert_eq!(
        (status["kind"].as_str(), status["code"].as_u64(), status["reason"].as_str(), status["status"].as_str()),
        (Some("Status"), Some(410), Some("Expired"), Some("Failure"))
    );
    assert!(old.next().await.is_none(), "the stream ends after the error");

    // After compaction, kube surfaces an older resourceVersion as WatchEvent::Error 410...
    let before = api.resource_version();
    merge(&w, "a", json!({ "spec": { "size": 7 } })).await.expect("patch");
    api.compact();
    let mut events = within(w.watch(&WatchParams::default(), &before.to_string())).await.expect("watch").boxed();
    match within(events.next()).await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410),
        other => panic!("expected a 410 error event, got {other:?}"),
    }
    // ...while the current one is fine.
    let mut watch = raw_watch(&api, &format!("{path}{}", api.resource_version()), None).await;
    merge(&w, "a", json!({ "spec": { "size": 8 } })).await.expect("patch");
    watch.expect("MODIFIED", "a").await;
}

#[tokio::test]
async fn watches_get_bookmarks_when_allowed_and_end_at_their_timeout() {
    let (api, _client, w) =
        setup_with(FakeApiServer::builder().bookmark_interval(Duration::from_millis(50)).start().await);
    let created = create(&w, "a", &[]).await;
    let base = format!("{WIDGETS}?watch=true&resourceVersion={}", rv_of(&created));
    let mut watch = raw_watch(&api, &format!("{base}&allowWatchBookmarks=true"), None).await;
    let bookmark = watch.next().await.expect("bookmark");
    assert_eq!(bookmark["type"], "BOOKMARK");
    let expected = json!({ "kind": "Widget", "apiVersion": "example.test/v1", "metadata": { "resourceVersion": rv_of(&created).to_string() } });
    assert_eq!(bookmark["object"], expected);
    // A bookmark never overtakes a change: after a write, the next bookmark is at least as new.
    merge(&w, "a", json!({ "spec": { "size": 2 } })).await.expect("patch");
    watch.expect("MODIFIED", "a").await;
    let bookmark = watch.next().await.expect("bookmark");
    assert_eq!(bookmark["object"]["metadata"]["resourceVersion"], api.resource_version().to_string());

    // Without allowWatchBookmarks there are none, and timeoutSeconds ends the stream.
    let started = std::time::Instant::now();
    let mut quiet = raw_watch(
        &api,
        &format!("{WIDGETS}?watch=true&timeoutSeconds=1&resourceVersion={}", api.resource_version()),
        None,
    )
    .await;
    assert!(quiet.next().await.is_none(), "no bookmark, and the stream ends at the timeout");
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    drop(watch);
    // Watchers are unregistered when their streams end; shutdown ends the others.
    within(async {
        while api.watch_count() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut open = raw_watch(&api, "/api/v1/namespaces?watch=true", None).await;
    open.expect("ADDED", "default").await;
    within(api.shutdown()).await;
    while let Some(event) = open.next().await {
        assert_eq!(event["type"], "ADDED", "only the initial events were left");
    }
}

#[tokio::test]
async fn metadata_only_get_list_watch_and_patch() {
    let (api, client, w) = setup().await;
    let created = create(&w, "a", &[]).await;
    let meta = within(w.get_metadata("a")).await.expect("get_metadata");
    assert_eq!(meta.metadata.uid, created.metadata.uid);
    assert_eq!(meta.types.as_ref().map(|t| t.kind.as_str()), Some("PartialObjectMetadata"));
    let list = within(w.list_metadata(&ListParams::default())).await.expect("list_metadata");
    assert_eq!((list.items.len(), list.metadata.resource_version), (1, Some(api.resource_version().to_string())));

    let accept = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
    let mut watch =
        raw_watch(&api, &format!("{WIDGETS}?watch=true&resourceVersion={}", rv_of(&created)), Some(accept)).await;
    merge(&w, "a", json!({ "spec": { "size": 2 } })).await.expect("patch");
    let event = watch.expect("MODIFIED", "a").await;
    assert_eq!((event["object"]["kind"].as_str(), event["object"].get("spec")), (Some("PartialObjectMetadata"), None));

    // The operator's guard patches Secrets' finalizers and gets metadata only back.
    let secrets = Api::<Secret>::namespaced(client.clone(), "default");
    within(secrets.create(&PostParams::default(), &secret("s"))).await.expect("create secret");
    let patch = Patch::<()>::Json(
        serde_json::from_value(json!([{ "op": "test", "path": "/metadata/finalizers", "value": null }, { "op": "add", "path": "/metadata/finalizers", "value": ["f"] }]))
            .expect("patch"),
    );
    let patched = within(secrets.patch_metadata("s", &PatchParams::default(), &patch)).await.expect("patch_metadata");
    assert_eq!(patched.finalizers(), ["f"]);
    let raw = within(
        http()
            .patch(format!("{}/api/v1/namespaces/default/secrets/s", api.url()))
            .header("accept", accept)
            .header("content-type", "application/merge-patch+json")
            .body("{}")
            .send(),
    )
    .await
    .expect("patch");
    let body: Value = within(raw.json()).await.expect("json");
    assert!(body.get("data").is_none() && body["metadata"]["name"] == "s", "{body}");

    // kube-runtime's watcher of `PartialObjectMeta` uses metadata-only lists and watches.
    let metadata_api: Api<PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), "default");
    let mut stream = watcher(metadata_api, watcher::Config::default()).applied_objects().boxed();
    assert_eq!(within(stream.try_next()).await.expect("event").expect("object").name_any(), "s");
    merge(&secrets, "s", json!({ "metadata": { "labels": { "seen": "yes" } } })).await.expect("label");
    let next = within(stream.try_next()).await.expect("event").expect("object");
    assert_eq!(next.labels().get("seen").map(String::as_str), Some("yes"));
    let requests = api.requests();
    let watch = requests.iter().find(|r| r.resource == "secrets" && r.verb == "watch").expect("watch request");
    assert!(watch.accept.as_deref().is_some_and(|a| a.contains("as=PartialObjectMetadata")), "{watch:?}");
}

fn apply(manager: &str) -> PatchParams {
    PatchParams::apply(manager)
}

fn widget_apply(spec: Value) -> Patch<Value> {
    Patch::Apply(
        json!({ "apiVersion": "example.test/v1", "kind": "Widget", "metadata": { "name": "a" }, "spec": spec }),
    )
}

#[tokio::test]
async fn server_side_apply_creates_owns_removes_and_conflicts() {
    let (api, _client, w) = setup().await;
    let created = within(w.patch("a", &apply("alice"), &widget_apply(json!({ "size": 1, "color": "red" }))))
        .await
        .expect("apply creates");
    assert_eq!(created.metadata.generation, Some(1));
    let alice =
        created.managed_fields().iter().find(|e| e.manager.as_deref() == Some("alice")).cloned().expect("entry");
    assert_eq!(alice.operation.as_deref(), Some("Apply"));
    let fields = serde_json::to_value(&alice.fields_v1).expect("fieldsV1");
    assert!(fields["f:spec"]["f:color"].is_object() && fields["f:spec"]["f:size"].is_object(), "{fields}");
    let last = api.requests().pop().expect("a request");
    assert_eq!(
        (last.verb.as_str(), last.status, last.content_type.as_deref()),
        ("patch", 201, Some("application/apply-patch+yaml"))
    );

    // Another manager sets a field of its own with a merge patch.
    let bob = PatchParams { field_manager: Some("bob".into()), ..Default::default() };
    within(w.patch("a", &bob, &Patch::Merge(json!({ "spec": { "note": "bob's" } })))).await.expect("bob patches");
    // alice stops applying color: it goes; bob's note stays.
    let applied = within(w.patch("a", &apply("alice"), &widget_apply(json!({ "size": 1 })))).await.expect("apply");
    assert_eq!((applied.spec.color.as_deref(), applied.spec.note.as_deref()), (None, Some("bob's")));
    assert_eq!(applied.metadata.generation, Some(3));
    // Re-applying the same configuration is a no-op.
    let again = within(w.patch("a", &apply("alice"), &widget_apply(json!({ "size": 1 })))).await.expect("same apply");
    assert_eq!(again.resource_version(), applied.resource_version());

    // Changing a field that another manager owns conflicts, unless forced.
    let status = api_error(within(w.patch("a", &apply("carol"), &widget_apply(json!({ "note": "carol's" })))).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(status.message, "Apply failed with 1 conflict: conflict with \"bob\": .spec.note");
    // Applying the same value is shared ownership, not a conflict.
    within(w.patch("a", &apply("carol"), &widget_apply(json!({ "size": 1 })))).await.expect("shared");
    let forced = within(w.patch("a", &apply("carol").force(), &widget_apply(json!({ "size": 1, "note": "carol's" }))))
        .await
        .expect("forced");
    assert_eq!(forced.spec.note.as_deref(), Some("carol's"));
    // alice drops size, but carol still applies it: it stays.
    let applied = within(w.patch("a", &apply("alice"), &widget_apply(json!({})))).await.expect("apply nothing");
    assert_eq!(applied.spec.size, 1);
    // fieldManager is required.
    let status = api_error(within(w.patch("a", &PatchParams::default(), &widget_apply(json!({ "size": 2 })))).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
}

#[tokio::test]
async fn server_side_apply_on_status_as_the_operator_writes_it() {
    let (_api, _client, w) = setup().await;
    create(&w, "a", &[]).await;
    // Like the operator's: no metadata at all, forced.
    let status_apply =
        |status: Value| Patch::Apply(json!({ "apiVersion": "example.test/v1", "kind": "Widget", "status": status }));
    let ctrl = apply("ctrl").force();
    let applied = within(w.patch_status("a", &ctrl, &status_apply(json!({ "phase": "Ready", "message": "hi" }))))
        .await
        .expect("apply");
    assert_eq!(applied.status, Some(WidgetStatus { phase: Some("Ready".into()), message: Some("hi".into()) }));
    let entry = applied.managed_fields().iter().find(|e| e.manager.as_deref() == Some("ctrl")).cloned().expect("entry");
    assert_eq!(entry.subresource.as_deref(), Some("status"));
    // A field it no longer applies goes; nothing else changes, even if the body has more.
    let mut body = json!({ "apiVersion": "example.test/v1", "kind": "Widget", "status": { "phase": "Ready" } });
    body["spec"] = json!({ "size": 9 });
    let applied = within(w.patch_status("a", &ctrl, &Patch::Apply(body))).await.expect("apply");
    assert_eq!(applied.status, Some(WidgetStatus { phase: Some("Ready".into()), message: None }));
    assert_eq!((applied.spec.size, applied.metadata.generation), (1, Some(1)));
    // Main-resource writes do not disturb it; a status apply on a missing object is a 404.
    let spec = merge(&w, "a", json!({ "spec": { "size": 2 } })).await.expect("spec");
    assert_eq!(spec.status, applied.status);
    let missing = within(w.patch_status("missing", &ctrl, &status_apply(json!({})))).await;
    assert_eq!(api_error(missing).code, 404);
}

#[tokio::test]
async fn a_terminating_namespace_refuses_creates_and_goes_when_empty() {
    let (api, client, _w) = setup().await;
    let namespaces = Api::<Namespace>::all(client.clone());
    let doomed: Namespace = serde_json::from_value(json!({ "metadata": { "name": "doomed" } })).expect("ns");
    let created = within(namespaces.create(&PostParams::default(), &doomed)).await.expect("create ns");
    assert_eq!(created.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Active"));
    let w: Api<Widget> = Api::namespaced(client.clone(), "doomed");
    let secrets = Api::<Secret>::namespaced(client.clone(), "doomed");
    create(&w, "held", &["f/cleanup"]).await;
    create(&w, "free", &[]).await;
    within(secrets.create(&PostParams::default(), &secret("s"))).await.expect("create secret");
    let by_name = format!(
        "/api/v1/namespaces?watch=true&fieldSelector=metadata.name%3Ddoomed&resourceVersion={}",
        api.resource_version()
    );
    let mut ns_watch = raw_watch(&api, &by_name, None).await;

    let terminating =
        within(namespaces.delete("doomed", &DeleteParams::default())).await.expect("delete").left().expect("ns");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Terminating"));
    ns_watch.expect("MODIFIED", "doomed").await;
    // All content was deleted at once: what has no finalizers is gone, the rest terminates.
    assert_eq!(api_error(within(secrets.get("s")).await).code, 404);
    assert_eq!(api_error(within(w.get("free")).await).code, 404);
    assert!(within(w.get("held")).await.expect("held").metadata.deletion_timestamp.is_some());

    // Creates are refused, Events (which the operator publishes) included.
    let status = api_error(within(secrets.create(&PostParams::default(), &secret("new"))).await);
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "secrets \"new\" is forbidden: unable to create new content in namespace doomed because it is being terminated"
    );
    let cause = &status.details.expect("details").causes[0];
    assert_eq!((cause.reason.as_str(), cause.field.as_str()), ("NamespaceTerminating", "metadata.namespace"));
    let event: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
        "metadata": { "name": "e" }, "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "example.test/ctrl", "reportingInstance": "ctrl-1",
        "action": "Reconcile", "reason": "Test", "type": "Normal",
    }))
    .expect("event");
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), "doomed");
    assert_eq!(api_error(within(events.create(&PostParams::default(), &event)).await).code, 403);
    assert_eq!(api_error(within(w.create(&PostParams::default(), &widget("new", 1))).await).code, 403);

    // Status writes and the finalizer's release still work; then everything goes.
    merge_status(&w, "held", json!({ "status": { "phase": "Releasing" } })).await.expect("status");
    assert!(within(namespaces.get("doomed")).await.is_ok(), "the namespace waits for its content");
    merge(&w, "held", json!({ "metadata": { "finalizers": [] } })).await.expect("release");
    assert_eq!(api_error(within(w.get("held")).await).code, 404);
    assert_eq!(api_error(within(namespaces.get("doomed")).await).code, 404);
    ns_watch.expect("DELETED", "doomed").await;
    assert_eq!(api_error(within(secrets.create(&PostParams::default(), &secret("late"))).await).code, 404);
}

#[tokio::test]
async fn crd_deletion_deletes_the_instances_then_the_crd_and_its_resource() {
    let api = FakeApiServer::start().await;
    let client = api.client();
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let crd = within(crds.create(&PostParams::default(), &Widget::crd())).await.expect("create CRD");
    let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(conditions.iter().any(|c| c.type_ == "Established" && c.status == "True"));
    let w: Api<Widget> = Api::namespaced(client.clone(), "default");
    create(&w, "held", &["f/cleanup"]).await;
    create(&w, "free", &[]).await;
    let mut watch = raw_watch(
        &api,
        &format!("/apis/example.test/v1/widgets?watch=true&resourceVersion={}", api.resource_version()),
        None,
    )
    .await;

    let deleted = within(crds.delete("widgets.example.test", &DeleteParams::default())).await.expect("delete CRD");
    let deleted = deleted.left().expect("CRD object");
    assert!(deleted.metadata.deletion_timestamp.is_some());
    assert_eq!(deleted.finalizers(), ["customresourcecleanup.apiextensions.k8s.io"]);
    // The instances were deleted: the one with a finalizer terminates, and holds the CRD.
    watch.expect("DELETED", "free").await;
    assert!(watch.expect("MODIFIED", "held").await["object"]["metadata"]["deletionTimestamp"].is_string());
    let meta = within(crds.get_metadata("widgets.example.test")).await.expect("the operator's check");
    assert!(meta.metadata.deletion_timestamp.is_some());
    let status = api_error(within(w.create(&PostParams::default(), &widget("new", 1))).await);
    assert_eq!((status.code, status.reason.as_str()), (405, "MethodNotAllowed"));

    // Releasing the last instance removes the CRD, stops serving its resource, ends its watches.
    merge(&w, "held", json!({ "metadata": { "finalizers": null } })).await.expect("release");
    watch.expect("DELETED", "held").await;
    assert!(watch.next().await.is_none(), "watches of the resource end");
    assert_eq!(api_error(within(crds.get("widgets.example.test")).await).code, 404);
    assert_eq!(api_error(within(w.list(&ListParams::default())).await).code, 404);
}

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
    let (_api, _client, w) = setup().await;
    let created = create(&w, "a", &[]).await;
    assert_eq!(run_finalizer(&w, created).await.expect("add"), "none");
    let current = within(w.get("a")).await.expect("get");
    assert_eq!(current.finalizers(), ["example.test/cleanup"]);
    assert_eq!(run_finalizer(&w, current.clone()).await.expect("apply"), "apply");
    // A stale view (finalizer missing in it, present on the server) fails the test op.
    let mut stale = current;
    stale.metadata.finalizers = None;
    assert!(matches!(
        run_finalizer(&w, stale).await,
        Err(kube::runtime::finalizer::Error::AddFinalizer(kube::Error::Api(s))) if s.code == 422
    ));
    let other = create(&w, "b", &["someone/else"]).await;
    run_finalizer(&w, other).await.expect("add after another");
    assert_eq!(within(w.get("b")).await.expect("get b").finalizers(), ["someone/else", "example.test/cleanup"]);
    // Deleting: Cleanup, then the finalizer is removed and the object goes.
    within(w.delete("a", &DeleteParams::default())).await.expect("delete");
    let deleting = within(w.get("a")).await.expect("terminating");
    assert_eq!(run_finalizer(&w, deleting).await.expect("cleanup"), "cleanup");
    assert_eq!(api_error(within(w.get("a")).await).code, 404);
}

#[tokio::test]
async fn kube_runtime_watcher_follows_changes_and_relists_after_410() {
    let (api, _client, w) = setup().await;
    create(&w, "a", &[]).await;
    // Watches end after 1s; without bookmarks the watcher resumes from the list's resourceVersion.
    let config = watcher::Config::default().timeout(1).disable_bookmarks();
    let mut stream = watcher(w.clone(), config).boxed();
    let mut next = async || within(stream.try_next()).await.expect("watcher event").expect("stream ended");
    assert!(matches!(next().await, watcher::Event::Init));
    assert!(matches!(next().await, watcher::Event::InitApply(a) if a.name_any() == "a"));
    assert!(matches!(next().await, watcher::Event::InitDone));
    merge(&w, "a", json!({ "spec": { "size": 5 } })).await.expect("patch");
    assert!(matches!(next().await, watcher::Event::Apply(a) if a.spec.size == 5));
    within(w.delete("a", &DeleteParams::default())).await.expect("delete");
    assert!(matches!(next().await, watcher::Event::Delete(a) if a.name_any() == "a"));

    // Other writes move the resourceVersion on; compaction then makes the watcher's one too
    // old: it reports the 410 and relists.
    let secrets = Api::<Secret>::namespaced(w.clone().into_client(), "default");
    within(secrets.create(&PostParams::default(), &secret("s"))).await.expect("create secret");
    api.compact();
    let mut saw_gone = false;
    loop {
        match within(stream.next()).await.expect("watcher stream ended") {
            Err(watcher::Error::WatchError(status)) if status.code == 410 => saw_gone = true,
            Ok(watcher::Event::Init) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_gone);
    while !matches!(within(stream.try_next()).await.expect("watcher event"), Some(watcher::Event::InitDone)) {}
    let lists = api.requests().iter().filter(|r| r.resource == "widgets" && r.verb == "list").count();
    assert_eq!(lists, 2);
}

#[tokio::test]
async fn kube_lease_manager_elects_one_leader_at_a_time() {
    use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
    let (_api, client, _w) = setup().await;
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
async fn requests_are_recorded() {
    let (api, _client, w) = setup().await;
    api.reset_request_log();
    assert!(api.requests().is_empty());
    create(&w, "a", &[]).await;
    let params = PatchParams { field_manager: Some("m".into()), ..Default::default() };
    within(w.patch_status("a", &params, &Patch::Merge(json!({ "status": { "phase": "x" } })))).await.expect("patch");
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
    let patch = &requests[1];
    assert_eq!(
        (patch.group.as_str(), patch.namespace.as_deref(), patch.name.as_deref()),
        ("example.test", Some("default"), Some("a"))
    );
    assert_eq!(patch.content_type.as_deref(), Some("application/merge-patch+json"));
    assert_eq!((patch.field_manager.as_deref(), patch.query_param("fieldManager").as_deref()), (Some("m"), Some("m")));
    assert_eq!(patch.path, "/apis/example.test/v1/namespaces/default/widgets/a/status");
}
