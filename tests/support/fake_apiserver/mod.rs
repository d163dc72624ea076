//! A stateful fake Kubernetes API server for tests, served over real HTTP on loopback.
//!
//! An operator process or a `kube::Client` talks to it exactly as to a cluster, through a
//! kubeconfig (plain `http://127.0.0.1:PORT`, no authentication). It models kube-apiserver's
//! documented behaviour for the resources it serves:
//!
//! - **Resources**: core/v1 `namespaces` (`default`, `kube-system`, `kube-public` and
//!   `kube-node-lease` exist at start), `secrets`, `configmaps`, `events`;
//!   `events.k8s.io/v1` `events`; `coordination.k8s.io/v1` `leases`;
//!   `apiextensions.k8s.io/v1` `customresourcedefinitions`, and the custom resources of every
//!   CRD created through the API or [`FakeApiServer::register_crd`]. Discovery (`/api`,
//!   `/apis`, `/apis/{group}[/{version}]`, also aggregated `apidiscovery.k8s.io/v2` when
//!   asked for) and `/version`. Anything else is a 404 `Status`.
//! - **Reads**: get; list with `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `in`,
//!   `notin`), `fieldSelector` (`metadata.name`, `metadata.namespace`, with `=`/`==`/`!=`),
//!   `limit`/`continue`, namespaced and all-namespaces paths. Lists carry the current
//!   `metadata.resourceVersion`. `Accept: ...;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`
//!   answers with metadata only (also for watches and writes).
//! - **Watch**: ADDED/MODIFIED/DELETED lines; without `resourceVersion` (or with `0`) the
//!   current objects come first as ADDED; with a resourceVersion, the changes after it are
//!   replayed from a bounded history, or a 410 `Expired` ERROR event ends the stream when it
//!   is older than the history ([`FakeApiServer::compact`] drops it). Periodic `BOOKMARK`s
//!   with `allowWatchBookmarks=true`; `sendInitialEvents=true` ends the initial ADDED events
//!   with the `k8s.io/initial-events-end` bookmark; `timeoutSeconds` ends the stream. Selectors
//!   apply to events: an object that starts/stops matching is ADDED/DELETED for that watcher.
//! - **Writes**: create (uid, global decimal resourceVersion, creationTimestamp,
//!   `generateName`, 409 AlreadyExists, namespace must exist: 404, must not be terminating:
//!   403 `NamespaceTerminating`), update (optimistic concurrency on resourceVersion; custom
//!   resources and CRDs refuse PUT without it, with 422, as the real strategies do), JSON
//!   patch (exact `evanphx/json-patch` `test` semantics, 422 on failure), merge patch,
//!   strategic merge patch (built-in types only; 415 for custom resources), server-side apply
//!   (see `managed.rs`: managedFields per manager, removal of fields a manager stops applying,
//!   409 conflicts, `force`). No-op writes do not change the resourceVersion nor emit events.
//!   `metadata.generation` (custom resources and CRDs only, like the real server) increases
//!   when anything outside `metadata` changes; with a status subresource, main-resource
//!   writes keep the stored status and `/status` writes change nothing else.
//! - **Deletion**: finalizers hold an object with `deletionTimestamp` (+ grace period 0 and a
//!   generation bump) until a write empties them; then it is removed (DELETED). No finalizer
//!   may be added while deleting (422). Preconditions (uid, resourceVersion) give 409. Secrets,
//!   ConfigMaps, Events and Leases answer a completed DELETE with a `Success` Status, custom
//!   resources with the object. `propagationPolicy: Orphan` drops the owner references of
//!   dependents; other policies behave as `Background`.
//! - **Controllers** (`lifecycle.rs`, run right after each write): the namespace controller
//!   (a deleted namespace turns `Terminating`, all its content is deleted at once, the
//!   namespace goes when empty), the CRD finalizer (a deleted CRD gets
//!   `customresourcecleanup.apiextensions.k8s.io`, refuses new instances with 405, deletes all
//!   instances and goes when none remains, ending its watches) and the garbage collector
//!   (objects whose owners are all gone are deleted).
//! - **Custom resources and their CRD's `openAPIV3Schema`** (`schema.rs`, `validation.rs`),
//!   on create, update, merge/JSON patch and server-side apply, main resource and `/status`:
//!   - *pruning* of undeclared fields (`x-kubernetes-preserve-unknown-fields` and
//!     `additionalProperties` respected; with `fieldValidation=Strict` they are a 400), then
//!     of `null`s the schema neither allows (`nullable`) nor defaults;
//!   - *defaulting*: a missing (or non-nullable `null`) property with a `default` gets it,
//!     inside every object present, defaults just inserted included (not owned by an
//!     applier);
//!   - *validation*, a 422 `Invalid` worded like kube-apiserver's (e.g. `Widget.example.test
//!     "w" is invalid: spec.size: Invalid value: "string": spec.size in body must be of
//!     type integer: "string"`; several errors as `[<error>, <error>]`; causes with the
//!     `FieldValue*` reasons): `type` (`nullable`, `x-kubernetes-int-or-string`), `required`,
//!     `enum`, `pattern`, `minLength`/`maxLength`, `minimum`/`maximum` (exclusive too),
//!     `multipleOf`, `minItems`/`maxItems`/`uniqueItems`, `min/maxProperties`,
//!     `additionalProperties`, `allOf`/`anyOf`/`oneOf`/`not`, the formats the apiserver
//!     checks (`date-time`, `date`, `duration`, `byte`, `uuid*`, `ipv4`/`ipv6`/`cidr`, `mac`,
//!     `hostname`, `quantity`, `k8s-short-name`, ...; `int32`/`int64` and unsupported formats
//!     are not checked), `x-kubernetes-list-type` `set`/`map` uniqueness, and the
//!     `x-kubernetes-validations` CEL rules (kube-cel: `isIP` and the other Kubernetes
//!     libraries, transition rules with `oldSelf` and `optionalOldSelf`, `messageExpression`,
//!     `reason`, `fieldPath`), reported as `<field>: Invalid value: "<schema type>":
//!     <message>` as the apiserver does, and skipped after a blocking schema error (with
//!     the apiserver's `<nil>: Invalid value: null: some validation rules were not checked
//!     ...`). A `/status` write validates `status` against the status schema (and the rules,
//!     whose unchanged parts ratchet); updates ratchet like 1.33+ (errors in values equal to
//!     their correlated old values are dropped, except those of `oldSelf` rules), so a
//!     no-op update always passes. Metadata is not validated against the schema.
//! - **Other server-side processing**: a Secret's `stringData` is folded into `data` and its
//!   `type` defaults to `Opaque`; names must be DNS-1123 subdomains (labels for
//!   namespaces); errors are `Status` objects with the real reasons, codes and (mostly)
//!   messages.
//!
//! Not modelled: authentication/authorization; admission webhooks; CEL cost estimation and
//! budgets, and CEL's exact runtime error texts (kube-cel's are used); the order of sibling
//! errors (the apiserver follows Go map order, the fake name order); pruning and defaulting on
//! read (objects stored before a schema change keep their old shape); validation of metadata
//! and embedded resources' metadata by the schema; `x-kubernetes-validations` in
//! `anyOf`/`oneOf`; dry-run (refused with 400 rather than performed); version conversion beyond
//! rewriting `apiVersion` (conversion strategy `None`); `x-kubernetes-list-type: map` for
//! server-side apply (such lists are owned wholly by one field manager); the link between core
//! and `events.k8s.io` Events (two separate resources here, not two views of one); list
//! snapshots (`continue` pages read the current state; `resourceVersion` and
//! `resourceVersionMatch` on lists and gets are ignored); watches from a resourceVersion newer
//! than the server's (they just start now); `/finalize`, `/scale` and other subresources; field
//! selectors on other fields; protobuf/YAML/Table output; graceful deletion
//! (`gracePeriodSeconds`); foreground deletion and the `orphan`/`foregroundDeletion`
//! finalizers; removal of dangling owner references; namespace status conditions; the order in
//! which the namespace controller deletes content (all at once here); HTTP/2; gzip.
//!
//! # Usage
//!
//! ```ignore
//! mod support;
//! use support::fake_apiserver::FakeApiServer;
//!
//! #[tokio::test]
//! async fn reconciles() {
//!     let api = FakeApiServer::start().await;
//!     api.register_crd(MyResource::crd());
//!     let client = api.client(); // or: api.write_kubeconfig(&path) and KUBECONFIG=path
//!     // ... run the operator against `client`, then assert on objects, events, api.requests()
//! }
//! ```
//!
//! The server is a task on the test's Tokio runtime: while a test waits for something (e.g. an
//! operator child process), it must wait asynchronously (`tokio::process`, `tokio::time`), or
//! use `#[tokio::test(flavor = "multi_thread")]`, or the fake cannot answer.

mod delete;
mod error;
mod http;
mod lifecycle;
mod managed;
mod ops;
mod patch;
mod resources;
mod schema;
mod selectors;
mod store;
mod validation;
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
use self::store::{ObjectKey, State};

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
    /// Empty for non-resource paths (`/version`, discovery).
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
    /// `127.0.0.1:PORT`, for discovery.
    pub(crate) address: String,
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
            create_namespace(&mut state, name);
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            requests: Mutex::new(Vec::new()),
            shutdown: CancellationToken::new(),
            bookmark_interval: self.bookmark_interval,
            address: addr.to_string(),
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

fn create_namespace(state: &mut State, name: &str) {
    let target = Target {
        rt: state.registry.lookup("", "v1", "namespaces").cloned().expect("namespaces are always served"),
        version: "v1".into(),
        namespace: String::new(),
        sub: Sub::Main,
        strict: false,
    };
    let ns = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } });
    ops::create(state, &target, ns, Ownership::Update("kube-apiserver")).expect("create a built-in namespace");
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

    fn kubeconfig_json(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "fake", "cluster": { "server": self.url() } }],
            "users": [{ "name": "fake", "user": {} }],
            "contexts": [{ "name": "fake", "context": { "cluster": "fake", "user": "fake", "namespace": "default" } }],
            "current-context": "fake",
        })
    }

    /// A kubeconfig for this server: plain http, no credentials, namespace `default`.
    pub fn kubeconfig(&self) -> kube::config::Kubeconfig {
        serde_json::from_value(self.kubeconfig_json()).expect("the generated kubeconfig is valid")
    }

    /// Writes [`Self::kubeconfig`] as YAML, e.g. for a child process's `KUBECONFIG`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) {
        let yaml = serde_saphyr::to_string(&self.kubeconfig_json()).expect("serialize the kubeconfig");
        std::fs::write(path.as_ref(), yaml).expect("write the kubeconfig file");
    }

    /// Creates a CustomResourceDefinition (typed or JSON), as `POST` would: its resource is
    /// served from now on. Returns the stored CRD. Panics if it is invalid or exists.
    pub fn register_crd(&self, crd: impl Serialize) -> Value {
        let crd = serde_json::to_value(crd).expect("serialize the CRD");
        let mut st = self.shared.lock();
        let target = Target {
            rt: st
                .registry
                .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
                .cloned()
                .expect("CRDs are always served"),
            version: "v1".into(),
            namespace: String::new(),
            sub: Sub::Main,
            strict: false,
        };
        match ops::create(&mut st, &target, crd, Ownership::Update("fake-apiserver")) {
            Ok(created) => created,
            Err(e) => panic!("register_crd failed: {}", e.message),
        }
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

    /// Stops the namespace controller, the CRD finalizer and the garbage collector, so that
    /// e.g. a terminating namespace keeps its content until [`Self::resume_controllers`].
    pub fn pause_controllers(&self) {
        self.shared.lock().controllers_paused = true;
    }

    /// Restarts the controllers, which catch up at once.
    pub fn resume_controllers(&self) {
        let mut st = self.shared.lock();
        st.controllers_paused = false;
        lifecycle::reconcile(&mut st);
    }

    /// The stored object, bypassing HTTP (for assertions). `group` is `""` for core;
    /// `namespace` is `""` for cluster-scoped objects.
    pub fn object(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = ObjectKey::new(&(group.into(), plural.into()), namespace, name);
        self.shared.lock().get(&key).cloned()
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
