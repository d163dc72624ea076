//! A stateful fake Kubernetes API server for tests, served over real HTTP on loopback.
//!
//! An operator process or a `kube::Client` talks to it as to a cluster, through a kubeconfig
//! (plain `http://127.0.0.1:PORT`, no authentication). It models just what the operator, its
//! kube-runtime watchers and kube-lease-manager, the e2e suite (`tests/e2e`) and the benchmark
//! (`tests/perf`) need, following kube-apiserver's documented behaviour:
//!
//! - **Resources**: `namespaces` (`default`, `kube-system`, `kube-public`, `kube-node-lease`
//!   exist at start), `secrets`, `events.k8s.io/v1` `events`, `coordination.k8s.io/v1` `leases`,
//!   `customresourcedefinitions` and the custom resources of every CRD created through the API
//!   or [`FakeApiServer::register_crd`]; `/version`. Anything else is a 404 `Status`.
//! - **Reads**: get; list (one page, namespaced or across namespaces, with the current
//!   `metadata.resourceVersion`); `fieldSelector` on `metadata.name`/`metadata.namespace`;
//!   metadata-only answers (`Accept: ...;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`),
//!   also for watches and writes.
//! - **Watch**: without `resourceVersion` (or `0`) the current objects come first as ADDED;
//!   from a resourceVersion, the changes after it are replayed from a bounded history, or a 410
//!   `Expired` ERROR event ends the stream ([`FakeApiServer::compact`] drops the history);
//!   periodic BOOKMARKs with `allowWatchBookmarks=true`; `timeoutSeconds`.
//! - **Writes**: create (uid, one global resourceVersion counter, creationTimestamp; 409
//!   AlreadyExists; the namespace must exist, 404, and not be terminating, 403); JSON patch
//!   with `evanphx/json-patch`'s exact `test` semantics (422 on failure); merge patch (also
//!   standing in for strategic merge patch on built-ins); a stale `metadata.resourceVersion` in
//!   a patch is a 409; server-side apply (`managed.rs`: managedFields per manager and
//!   subresource, removal of fields a manager stops applying, 409 conflicts, `force`). No-op
//!   writes keep the resourceVersion and emit nothing. `metadata.generation` (custom resources
//!   and CRDs) increases when anything outside `metadata` changes; with a status subresource,
//!   main-resource writes keep the stored status and `/status` writes change nothing else. A
//!   Secret's `stringData` is folded into `data`, its `type` defaults to `Opaque`.
//! - **Deletion**: finalizers hold an object with `deletionTimestamp` (grace period 0, a
//!   generation bump) until a write empties them, then it goes (DELETED); no finalizer may be
//!   added meanwhile (422). A custom resource's DELETE answers with the object, a Secret's,
//!   Event's or Lease's with a `Success` Status once it is gone.
//! - **Controllers** (`lifecycle.rs`, run right after each write): the namespace controller (a
//!   deleted namespace turns `Terminating`, all its content is deleted at once, the namespace
//!   goes when empty) and the CRD finalizer (a deleted CRD gets
//!   `customresourcecleanup.apiextensions.k8s.io`, refuses new instances with 405, deletes all
//!   instances, and goes with its resource and watches when none remains).
//!
//! Deliberately not modelled: a CRD's `openAPIV3Schema` (structural validation, patterns,
//! CEL rules, pruning, defaulting, ratcheting: `tests/crd.rs` checks the schema and its rules,
//! the real server enforces them; the operator reads its optional fields with serde defaults);
//! strategic merge patch proper (merge keys, directives); PUT and deletecollection (405),
//! dry-run, DELETE options (preconditions, propagation, grace periods), garbage collection,
//! `generateName`, name validation; label selectors, pagination (`limit`/`continue`), list
//! snapshots, streaming lists (`sendInitialEvents`); discovery (`/api`, `/apis`); core/v1
//! Events, ConfigMaps and other types; authentication, authorization, admission; protobuf,
//! YAML, tables, HTTP/2. Scenarios that need any of this ask the e2e harness for a real API
//! server (`Needs::RealServer`) and are skipped on the fake. CI runs the whole e2e suite
//! against a real kube-apiserver v1.36 too (`make e2e-real`, the binaries from `../shared/k8s`),
//! which checks what the fake models against the real server.
//!
//! The server is a task on the test's Tokio runtime: while a test waits for something (e.g. an
//! operator child process), it must wait asynchronously (`tokio::process`, `tokio::time`), or
//! use `#[tokio::test(flavor = "multi_thread")]`, or the fake cannot answer.

mod error;
mod http;
mod lifecycle;
mod managed;
mod ops;
mod patch;
mod resources;
mod store;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::ops::{Ownership, Sub, Target};
use self::store::State;

/// One request the fake served, for assertions about what a client sent.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string (without `?`).
    pub query: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` or `deletecollection`.
    pub verb: String,
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    /// Empty for non-resource paths (`/version`).
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The media type of a PATCH (`application/merge-patch+json`, ...).
    pub content_type: Option<String>,
    /// The `Accept` header, e.g. to tell metadata-only requests.
    pub accept: Option<String>,
    /// The `User-Agent` header (tells the operator's requests from a test's own).
    pub user_agent: Option<String>,
    pub field_manager: Option<String>,
    /// The HTTP status of the response (200 for a watch, whatever its events).
    pub status: u16,
    /// Time spent serving the request (for a watch: until its stream started).
    pub duration_us: u64,
}

impl RecordedRequest {
    /// The value of a query parameter.
    pub fn query_param(&self, key: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
    }
}

/// State shared by the HTTP handlers and the watch tasks.
pub(crate) struct Shared {
    state: Mutex<State>,
    requests: Mutex<Vec<RecordedRequest>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) bookmark_interval: Duration,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("fake apiserver state lock poisoned")
    }

    fn record(&self, request: RecordedRequest) {
        self.requests.lock().expect("request log lock poisoned").push(request);
    }
}

/// Settings for [`FakeApiServer`]; `FakeApiServer::start()` uses the defaults.
#[derive(Debug, Clone)]
pub struct FakeApiServerBuilder {
    bookmark_interval: Duration,
    history_limit: usize,
}

impl Default for FakeApiServerBuilder {
    fn default() -> Self {
        Self { bookmark_interval: Duration::from_secs(1), history_limit: 10_000 }
    }
}

impl FakeApiServerBuilder {
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK (default 1s).
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// How many changes the watch history keeps (default 10 000); older resourceVersions get 410.
    pub fn history_limit(mut self, limit: usize) -> Self {
        self.history_limit = limit.max(1);
        self
    }

    /// Binds `127.0.0.1:0` and serves in a background task.
    pub async fn start(self) -> FakeApiServer {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake apiserver to a loopback port");
        let addr = listener.local_addr().expect("local address of the fake apiserver");
        let mut state = State::new(self.history_limit);
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let ns = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } });
            create(&mut state, "", "namespaces", ns).expect("create a built-in namespace");
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            requests: Mutex::new(Vec::new()),
            shutdown: CancellationToken::new(),
            bookmark_interval: self.bookmark_interval,
        });
        let app = http::router(shared.clone());
        let stop = shared.shutdown.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .expect("fake apiserver failed");
        });
        FakeApiServer { shared, addr, task: Some(task) }
    }
}

/// A create of a cluster-scoped object, bypassing HTTP.
fn create(state: &mut State, group: &str, plural: &str, obj: Value) -> Result<Value, String> {
    let rt = state.registry.get(&(group.into(), plural.into())).cloned().ok_or("not served")?;
    let target = Target { rt, version: "v1".into(), namespace: String::new(), sub: Sub::Main };
    ops::create(state, &target, obj, Ownership::Update("fake-apiserver")).map_err(|e| e.message)
}

/// A running fake API server. Dropping it stops serving (watches end).
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Starts a server with default settings.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    pub fn builder() -> FakeApiServerBuilder {
        FakeApiServerBuilder::default()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client for this server (default namespace `default`).
    pub fn client(&self) -> kube::Client {
        let url = self.url().parse().expect("the fake apiserver URL is a valid URI");
        kube::Client::try_from(kube::Config::new(url)).expect("build a kube client for the fake apiserver")
    }

    /// Writes a kubeconfig for this server (plain http, no credentials, namespace `default`)
    /// as YAML, e.g. for a child process's `KUBECONFIG`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) {
        let kubeconfig = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "fake", "cluster": { "server": self.url() } }],
            "users": [{ "name": "fake", "user": {} }],
            "contexts": [{ "name": "fake", "context": { "cluster": "fake", "user": "fake", "namespace": "default" } }],
            "current-context": "fake",
        });
        let yaml = serde_saphyr::to_string(&kubeconfig).expect("serialize the kubeconfig");
        std::fs::write(path.as_ref(), yaml).expect("write the kubeconfig file");
    }

    /// Creates a CustomResourceDefinition (typed or JSON), as `POST` would: its resource is
    /// served from now on. Returns the stored CRD. Panics if it is invalid or exists.
    pub fn register_crd(&self, crd: impl Serialize) -> Value {
        let crd = serde_json::to_value(crd).expect("serialize the CRD");
        create(&mut self.shared.lock(), "apiextensions.k8s.io", "customresourcedefinitions", crd)
            .unwrap_or_else(|e| panic!("register_crd failed: {e}"))
    }

    /// Every request served so far, in order of completion.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().expect("request log lock poisoned").clone()
    }

    pub fn reset_request_log(&self) {
        self.shared.requests.lock().expect("request log lock poisoned").clear();
    }

    /// Drops the watch history: watches from any resourceVersion older than the current one
    /// now get 410 Gone (established watches are not affected).
    pub fn compact(&self) {
        self.shared.lock().compact();
    }

    /// The latest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().current_rv()
    }

    /// How many watches are open.
    pub fn watch_count(&self) -> usize {
        self.shared.lock().watcher_count()
    }

    /// Stops serving: open watches end, the listener closes.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        if let Some(task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), task).await.is_err()
        {
            panic!("the fake apiserver did not shut down within 5s");
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
