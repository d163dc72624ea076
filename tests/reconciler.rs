//! Reconciler tests: the shared cloud fake and a tower-test mock API server. Every Kubernetes request
//! the reconciler makes is recorded and asserted exactly (method, path, query, content type,
//! body); a scenario that should make none asserts radio silence.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::client::Body;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};
use vip_operator::api::testing::{Fixture, NIC, SUBNET};
use vip_operator::api::v1alpha1::{BindApi, FINALIZER, VipBinding, VipBindingStatus};
use vip_operator::controller::Context;
use vip_operator::controller::KubeOps;
use vip_operator::controller::reconcile;
use vip_operator::controller::{ALLOWED_PROJECTS_ANNOTATION, DefaultCredentialsScope, Tenancy, parse_selector};
use vip_operator::controller::{DefaultCredentials, OperatorDefaults, TargetResolver};
use vip_operator::ecs::error::{ApiError, TransportKind};
use vip_operator::ecs::testing::{Call, FakeCloud, Reply, Sent};
use vip_operator::ecs::vpc::Port;
use vip_operator::ecs::{Clock, Credentials, EcsError, Operation, Service};

const NS: &str = "team-a";
const NAME: &str = "web-vip";
const PROJECT: &str = "0123456789abcdef0123456789abcdef";
const NOW: &str = "2026-11-29T10:00:00Z";
const EARLIER: &str = "2026-11-29T09:00:00Z";

// ---------------------------------------------------------------- fakes

struct FixedClock;
impl Clock for FixedClock {
    fn now(&self) -> jiff::Timestamp {
        NOW.parse().unwrap()
    }
}

#[derive(Debug, Clone, PartialEq)]
struct CloudCall {
    op: &'static str,
    nic: String,
    project: String,
    region: String,
    access_key: String,
    subnet: String,
    ip: String,
    reverse_binding: bool,
}

/// The ECS writes the cloud received, in order (the fake's port reads left out).
fn ecs_calls(cloud: &FakeCloud) -> Vec<CloudCall> {
    let call = |c: &Call, op, nic: &str, (subnet, ip): (&str, &str), reverse_binding| CloudCall {
        op,
        nic: nic.into(),
        project: c.project.clone(),
        region: c.region.clone(),
        access_key: c.access_key.clone(),
        subnet: subnet.into(),
        ip: ip.into(),
        reverse_binding,
    };
    cloud
        .calls()
        .iter()
        .filter_map(|c| match &c.sent {
            Sent::Bind(r) => Some(call(c, "bind", &r.nic_id, (&r.subnet_id, &r.ip_address), r.reverse_binding)),
            Sent::Unbind(r) => Some(call(c, "unbind", &r.nic_id, ("", ""), r.reverse_binding)),
            _ => None,
        })
        .collect()
}

/// A cloud whose next `op` on the NIC answers `reply`; everything else answers from its state.
fn answering(op: Operation, reply: impl Into<Reply>) -> Arc<FakeCloud> {
    let cloud = FakeCloud::new();
    cloud.script(op, NIC, [reply]);
    cloud
}

fn api_error(status: u16, code: &str, request_id: &str) -> EcsError {
    EcsError::Api(ApiError {
        status,
        code: Some(code.into()),
        message: "simulated".into(),
        detail_codes: vec![],
        request_id: Some(request_id.into()),
        retry_after: None,
    })
}

/// One request as the API server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    content_type: Option<String>,
    body: Value,
}

impl Seen {
    /// The status a status write sets: the value of its `add /status` (after the UID test).
    fn status(&self) -> &Value {
        self.body
            .as_array()
            .and_then(|ops| ops.iter().find(|op| op["op"] == "add" && op["path"] == "/status"))
            .map_or(&Value::Null, |op| &op["value"])
    }
}

/// A small stand-in for the API server behind the mock: it applies the reconciler's patches to
/// the objects it stores, by name (so responses are what a server would return, a write meant
/// for another object of the same name included), and records every request.
struct MockApi {
    seen: Arc<Mutex<Vec<Seen>>>,
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    task: tokio::task::JoinHandle<()>,
}

fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message});
    Response::builder().status(code).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
}

fn json_response(v: &Value) -> Response<Body> {
    Response::builder().status(200).body(Body::from(serde_json::to_vec(v).unwrap())).unwrap()
}

/// RFC 6902 as kube-apiserver evaluates it: a `test` of `null` passes when the path is missing
/// (the `json-patch` crate would fail it), everything else as the RFC says.
fn apply_json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let mut next = doc.clone();
    for op in ops.as_array().ok_or("a JSON patch is an array")? {
        if op["op"] == "test" && op["value"].is_null() {
            let path = op["path"].as_str().ok_or("test without path")?;
            match next.pointer(path) {
                None | Some(Value::Null) => continue,
                Some(_) => return Err(format!("test failed: {path} is present")),
            }
        }
        let single: json_patch::Patch = serde_json::from_value(json!([op])).map_err(|e| e.to_string())?;
        json_patch::patch(&mut next, &single).map_err(|e| e.to_string())?;
    }
    *doc = next;
    Ok(())
}

#[derive(Default)]
struct MockOptions {
    secret: Option<Secret>,
    events_forbidden: bool,
    crd_deleting: bool,
    /// The object is removed right after the patch that adds a finalizer, as kube-apiserver
    /// does when a DELETE that read it before races the patch (kubernetes/kubernetes#77988).
    vanish_after_finalizer: bool,
}

impl MockApi {
    fn start(object: &VipBinding, opts: MockOptions) -> (kube::Client, Self) {
        let MockOptions { secret, events_forbidden, crd_deleting, vanish_after_finalizer } = opts;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let objects = Arc::new(Mutex::new(BTreeMap::new()));
        objects.lock().unwrap().insert(object.name_any(), serde_json::to_value(object).unwrap());
        let stored = objects.clone();
        let task = tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let uri = request.uri().to_string();
                let content_type = request.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
                record.lock().unwrap().push(Seen {
                    method: method.clone(),
                    uri: uri.clone(),
                    content_type: content_type.clone(),
                    body: body.clone(),
                });
                let path = uri.split('?').next().unwrap().to_string();
                let name = path.split("/vipbindings/").nth(1).map(|rest| rest.trim_end_matches("/status").to_string());
                let mut objects = stored.lock().unwrap();
                let current = name.as_ref().and_then(|n| objects.get_mut(n));
                let response = if name.is_some() && method == "PATCH" && current.is_none() {
                    status_response(404, "NotFound", "vipbindings not found")
                } else if let (Some(current), true) = (current, method == "PATCH") {
                    // A status patch is tested against the whole object; only its status changes.
                    let mut patched = current.clone();
                    match apply_json_patch(&mut patched, &body) {
                        Ok(()) if path.ends_with("/status") => {
                            current["status"] = patched["status"].clone();
                            json_response(current)
                        }
                        Ok(()) => {
                            *current = patched;
                            let response = json_response(current);
                            if vanish_after_finalizer && let Some(name) = &name {
                                objects.remove(name);
                            }
                            response
                        }
                        Err(e) => status_response(422, "Invalid", &e),
                    }
                } else if let (Some(name), true) = (&name, method == "GET" && !path.ends_with("/status")) {
                    let Some(current) = objects.get(name) else {
                        send.send_response(status_response(404, "NotFound", "vipbindings not found"));
                        continue;
                    };
                    let meta = &current["metadata"];
                    json_response(
                        &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": meta}),
                    )
                } else if path.contains("/events") && method == "POST" {
                    if events_forbidden {
                        status_response(
                            403,
                            "Forbidden",
                            "unable to create new content in namespace team-a because it is being terminated",
                        )
                    } else {
                        json_response(&body)
                    }
                } else if path.ends_with("/customresourcedefinitions/vipbindings.vipoperator.dev") && method == "GET" {
                    let mut meta = json!({"name": "vipbindings.vipoperator.dev", "uid": "crd-uid"});
                    if crd_deleting {
                        meta["deletionTimestamp"] = json!(EARLIER);
                    }
                    json_response(
                        &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": meta}),
                    )
                } else if path.contains("/secrets/") && method == "GET" {
                    match &secret {
                        Some(s) => json_response(&serde_json::to_value(s).unwrap()),
                        None => status_response(404, "NotFound", "secrets not found"),
                    }
                } else {
                    status_response(404, "NotFound", &format!("unexpected {method} {uri}"))
                };
                send.send_response(response);
            }
        });
        (kube::Client::new(service, "default"), Self { seen, objects, task })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// `object` is stored now (created, or in place of another of its name).
    fn put(&self, object: &VipBinding) {
        self.objects.lock().unwrap().insert(object.name_any(), serde_json::to_value(object).unwrap());
    }
}

impl Drop for MockApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------- fixtures

/// The binding every scenario starts from: `team-a/web-vip`, with a project and a region.
fn binding() -> VipBinding {
    VipBinding::test().named(NS, NAME).project(Some(PROJECT.into())).region(Some("cn-north-4".into()))
}

/// `binding()` as a successful create left it: finalizer, Bound and Ready since EARLIER, and
/// the record of where the bind went.
fn bound_binding() -> VipBinding {
    let mut b = legacy_bound_binding();
    if let Some(status) = b.status.as_mut() {
        status.bound_with = serde_json::from_value(json!({"projectId": PROJECT, "region": "cn-north-4"})).unwrap();
    }
    b
}

/// `bound_binding()` as an operator that kept no record of where it bound left it.
fn legacy_bound_binding() -> VipBinding {
    let msg = format!("VIP 192.168.0.7 is bound to NIC {NIC} (port {NIC})");
    let status: VipBindingStatus = serde_json::from_value(json!({
        "portId": NIC,
        "observedGeneration": 1,
        "boundReverseBinding": false,
        "conditions": [
            {"type": "Bound", "status": "True", "reason": "Bound", "message": msg, "observedGeneration": 1, "lastTransitionTime": EARLIER},
            {"type": "Ready", "status": "True", "reason": "Bound", "message": msg, "observedGeneration": 1, "lastTransitionTime": EARLIER},
        ]
    })).unwrap();
    binding().with_finalizer().with_status(status)
}

fn static_defaults() -> OperatorDefaults {
    OperatorDefaults {
        credentials: DefaultCredentials::Static(Credentials::new("DEFAULTAK", "default-sk", None).unwrap()),
        project_id: None,
        region: None,
        region_required: true,
        api: Default::default(),
    }
}

fn context(client: kube::Client, cloud: Arc<FakeCloud>, defaults: OperatorDefaults) -> Arc<Context> {
    let reporter = Reporter { controller: "vip-operator".into(), instance: Some("test".into()) };
    Arc::new(Context::new(
        KubeOps::new(client.clone(), reporter),
        cloud,
        TargetResolver::new(Arc::new(client), defaults),
        Arc::new(FixedClock),
    ))
}

struct Run {
    action: Action,
    seen: Vec<Seen>,
}

/// A tenancy policy where only `ops` may use the default credentials, and `team-a` may target
/// only `allowed-project` (annotations as a cluster admin would write them).
fn narrow_tenancy() -> Arc<Tenancy> {
    let tenancy = Tenancy::new(DefaultCredentialsScope::Only {
        namespaces: ["ops".to_string()].into(),
        selector: Some(parse_selector("vipoperator.dev/default-credentials=allowed").unwrap()),
    });
    let mut ns = PartialObjectMeta::<Namespace>::default();
    ns.metadata.name = Some(NS.into());
    ns.metadata.annotations = Some([(ALLOWED_PROJECTS_ANNOTATION.to_string(), "allowed-project".to_string())].into());
    tenancy.apply(&kube::runtime::watcher::Event::Apply(ns));
    Arc::new(tenancy)
}

async fn run_with_tenancy(object: VipBinding, cloud: Arc<FakeCloud>, opts: MockOptions) -> Run {
    let (client, api) = MockApi::start(&object, opts);
    let reporter = Reporter { controller: "vip-operator".into(), instance: Some("test".into()) };
    let ctx = Arc::new(Context::new(
        KubeOps::new(client.clone(), reporter),
        cloud,
        TargetResolver::new(Arc::new(client), static_defaults()).with_tenancy(narrow_tenancy()),
        Arc::new(FixedClock),
    ));
    let action = reconcile(Arc::new(object), ctx).await.expect("reconcile failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
    Run { action, seen: api.seen() }
}

async fn run_once(object: VipBinding, cloud: Arc<FakeCloud>, defaults: OperatorDefaults, opts: MockOptions) -> Run {
    let (client, api) = MockApi::start(&object, opts);
    let ctx = context(client, cloud, defaults);
    let action = tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(object), ctx))
        .await
        .expect("reconcile hung")
        .expect("reconcile failed");
    // Anything sent after the reconcile returned would be a stray write.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Run { action, seen: api.seen() }
}

/// The UID of `binding()` (the test builder's `{namespace}-{name}`).
const UID: &str = "team-a-web-vip";
const BINDING_PATH: &str = "/apis/vipoperator.dev/v1alpha1/namespaces/team-a/vipbindings/web-vip";

/// Right before an unbind the reconciler checks the CRD is not being deleted (uninstall).
fn assert_crd_checked(s: &Seen) {
    assert_eq!(s.method, "GET");
    assert_eq!(s.uri, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/vipbindings.vipoperator.dev");
}

/// The requests after the CRD check that precedes every unbind.
fn after_crd_check(seen: &[Seen]) -> Vec<Seen> {
    assert!(!seen.is_empty(), "no requests");
    assert_crd_checked(&seen[0]);
    seen[1..].to_vec()
}

fn assert_finalizer_added(s: &Seen) {
    assert_eq!(s.method, "PATCH");
    assert_eq!(s.uri, format!("{BINDING_PATH}?"));
    assert_eq!(s.content_type.as_deref(), Some("application/json-patch+json"));
    assert_eq!(
        s.body,
        json!([
            {"op": "test", "path": "/metadata/uid", "value": UID},
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    );
}

fn assert_finalizer_removed(s: &Seen) {
    assert_eq!(s.method, "PATCH");
    assert_eq!(s.uri, format!("{BINDING_PATH}?"));
    assert_eq!(s.content_type.as_deref(), Some("application/json-patch+json"));
    assert_eq!(
        s.body,
        json!([
            {"op": "test", "path": "/metadata/uid", "value": UID},
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
}

/// The whole status, written to this object only (a successor of the same name fails the test).
fn assert_status_write(s: &Seen, status: Value) {
    assert_eq!(s.method, "PATCH");
    assert_eq!(s.uri, format!("{BINDING_PATH}/status?&fieldManager=vip-operator"));
    assert_eq!(s.content_type.as_deref(), Some("application/json-patch+json"));
    assert_eq!(
        s.body,
        json!([
            {"op": "test", "path": "/metadata/uid", "value": UID},
            {"op": "add", "path": "/status", "value": status},
        ])
    );
}

fn assert_event(s: &Seen, type_: &str, reason: &str, note_contains: &str) {
    assert_eq!(s.method, "POST");
    assert_eq!(s.uri, "/apis/events.k8s.io/v1/namespaces/team-a/events?");
    assert_eq!(s.body["type"], type_);
    assert_eq!(s.body["reason"], reason);
    assert_eq!(s.body["regarding"]["name"], NAME);
    assert_eq!(s.body["regarding"]["kind"], "VipBinding");
    assert_eq!(s.body["reportingController"], "vip-operator");
    let note = s.body["note"].as_str().unwrap();
    assert!(note.contains(note_contains), "{note:?} should contain {note_contains:?}");
}

fn cond(type_: &str, status: &str, reason: &str, message: &str, time: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message, "observedGeneration": 1, "lastTransitionTime": time})
}

// ---------------------------------------------------------------- scenarios

#[tokio::test]
async fn create_adds_finalizer_binds_once_and_records_status() {
    let cloud = FakeCloud::new();
    let run = run_once(binding(), cloud.clone(), static_defaults(), MockOptions::default()).await;

    assert_eq!(
        ecs_calls(&cloud),
        vec![CloudCall {
            op: "bind",
            nic: NIC.into(),
            project: PROJECT.into(),
            region: "cn-north-4".into(),
            access_key: "DEFAULTAK".into(),
            subnet: SUBNET.into(),
            ip: "192.168.0.7".into(),
            reverse_binding: false,
        }]
    );
    // Two writes per create: the finalizer, then the status. No event for a routine bind.
    assert_eq!(run.seen.len(), 2, "{:#?}", run.seen);
    assert_finalizer_added(&run.seen[0]);
    let msg = format!("VIP 192.168.0.7 is bound to NIC {NIC} (port {NIC})");
    assert_status_write(
        &run.seen[1],
        json!({
            "portId": NIC,
            "observedGeneration": 1,
            "boundReverseBinding": false,
            // What the deletion will unbind with: the operator's credentials (no Secret named).
            "boundWith": {"projectId": PROJECT, "region": "cn-north-4"},
            "conditions": [cond("Bound", "True", "Bound", &msg, NOW), cond("Ready", "True", "Bound", &msg, NOW)],
        }),
    );
    // The drift check is off in this context: nothing to wait for but a change.
    assert_eq!(run.action, Action::await_change());
}

#[tokio::test]
async fn resync_of_a_bound_binding_makes_no_calls_at_all() {
    let cloud = FakeCloud::new();
    let run = run_once(bound_binding(), cloud.clone(), static_defaults(), MockOptions::default()).await;
    assert!(ecs_calls(&cloud).is_empty());
    assert!(run.seen.is_empty(), "radio silence expected, got {:#?}", run.seen);
    assert_eq!(run.action, Action::await_change());
}

#[tokio::test]
async fn a_due_drift_check_is_made_only_when_the_sweeper_asks() {
    let object = bound_binding();
    let (client, _api) = MockApi::start(&object, MockOptions::default());
    let cloud = FakeCloud::new();
    let reporter = Reporter { controller: "vip-operator".into(), instance: Some("test".into()) };
    let ctx = Arc::new(
        Context::new(
            KubeOps::new(client.clone(), reporter),
            cloud.clone(),
            TargetResolver::new(Arc::new(client), static_defaults()),
            Arc::new(FixedClock),
        )
        .with_resync(Duration::from_millis(20)),
    );
    let key = vip_operator::controller::ObjectKey::of(&object);
    let target = kube::runtime::reflector::ObjectRef::from_obj(&object);
    ctx.resync.track(&key, target.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Due, but an unrelated event (a status write, say) starts this reconcile: the check is the
    // sweeper's, which compares VPC bindings with a listing instead of reading each one.
    reconcile(Arc::new(object.clone()), ctx.clone()).await.unwrap();
    assert!(ecs_calls(&cloud).is_empty(), "{:?}", ecs_calls(&cloud));
    // Taken by the sweeper but not yet handed over (still being compared): the same.
    assert_eq!(ctx.resync.take_due(Duration::from_secs(30)), vec![target.clone()]);
    reconcile(Arc::new(object.clone()), ctx.clone()).await.unwrap();
    assert!(ecs_calls(&cloud).is_empty(), "{:?}", ecs_calls(&cloud));
    // Handed to the reconcile: the bind is re-asserted.
    ctx.resync.ask(std::slice::from_ref(&target));
    reconcile(Arc::new(object), ctx).await.unwrap();
    let ops: Vec<_> = ecs_calls(&cloud).iter().map(|c| c.op).collect();
    assert_eq!(ops, ["bind"]);
}

#[tokio::test]
async fn delete_unbinds_records_port_and_conditions_then_releases() {
    let cloud = FakeCloud::new();
    let run = run_once(bound_binding().deleting(), cloud.clone(), static_defaults(), MockOptions::default()).await;

    let calls = ecs_calls(&cloud);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].op, "unbind");
    assert_eq!(calls[0].nic, NIC);
    assert!(!calls[0].reverse_binding);

    // Two writes per delete: the final status, then the finalizer. No event for a routine unbind.
    let seen = after_crd_check(&run.seen);
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let msg = format!("VIP 192.168.0.7 unbound from NIC {NIC} (port {NIC})");
    assert_status_write(
        &seen[0],
        json!({
            "portId": NIC,
            "observedGeneration": 1,
            "conditions": [cond("Bound", "False", "Unbound", &msg, NOW), cond("Ready", "False", "Unbound", &msg, NOW)],
        }),
    );
    assert_finalizer_removed(&seen[1]);
}

#[tokio::test]
async fn a_paused_deletion_is_released_as_orphaned_while_the_crd_is_deleted() {
    // Pause protects against cloud calls; releasing at uninstall makes none, so a paused binding
    // must not keep `kubectl delete crd` waiting.
    let cloud = FakeCloud::new();
    let paused = bound_binding().deleting().paused();
    let run =
        run_once(paused, cloud.clone(), static_defaults(), MockOptions { crd_deleting: true, ..Default::default() })
            .await;
    assert!(ecs_calls(&cloud).is_empty(), "{:?}", ecs_calls(&cloud));
    let seen = after_crd_check(&run.seen);
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert_eq!(condition(seen[0].status(), "Ready")["reason"], "Orphaned");
    assert_finalizer_removed(&seen[1]);
}

#[tokio::test]
async fn a_paused_deletion_is_looked_at_again_so_an_uninstall_can_release_it() {
    let cloud = FakeCloud::new();
    let paused = bound_binding().deleting().paused();
    let run = run_once(paused, cloud.clone(), static_defaults(), MockOptions::default()).await;
    assert!(ecs_calls(&cloud).is_empty());
    let seen = after_crd_check(&run.seen);
    assert_eq!(condition(seen[0].status(), "Ready")["reason"], "DeletionPaused");
    assert!(requeue_delay(&run.action).is_some_and(|d| d <= Duration::from_secs(60)), "{:?}", run.action);
}

#[tokio::test]
async fn delete_with_the_nic_gone_releases_with_nic_not_found() {
    let cloud = answering(Operation::Unbind, api_error(404, "Ecs.0614", "req-404"));
    let run = run_once(bound_binding().deleting(), cloud.clone(), static_defaults(), MockOptions::default()).await;
    assert_eq!(ecs_calls(&cloud).len(), 1);
    let seen = after_crd_check(&run.seen);
    assert_eq!(seen.len(), 3);
    let status = seen[0].status();
    assert_eq!(status["conditions"][1]["reason"], "NicNotFound");
    assert_eq!(status["conditions"][0]["reason"], "NicNotFound");
    assert_eq!(status["conditions"][0]["status"], "False");
    assert!(status["conditions"][1]["message"].as_str().unwrap().contains("req-404"));
    assert_finalizer_removed(&seen[1]);
    assert_event(&seen[2], "Normal", "NicNotFound", "nothing to unbind");
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).unwrap()
}

#[tokio::test]
async fn delete_with_a_gateway_404_holds_the_finalizer_and_says_why() {
    // The API gateway found no such API (a wrong endpoint or path): no evidence about the NIC.
    let cloud = answering(Operation::Unbind, api_error(404, "APIGW.0101", "req-gw"));
    let run = run_once(bound_binding().deleting(), cloud.clone(), static_defaults(), MockOptions::default()).await;
    assert_eq!(ecs_calls(&cloud).len(), 1);
    let seen = after_crd_check(&run.seen);
    assert_eq!(seen.len(), 2, "a status write and an event, and no finalizer removal: {seen:#?}");
    let status = seen[0].status();
    let ready = condition(status, "Ready");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("EndpointNotFound")));
    let message = ready["message"].as_str().unwrap();
    assert!(message.contains("req-gw") && message.contains("APIGW.0101") && message.contains("endpoint"), "{message}");
    assert_eq!(condition(status, "Bound")["status"], "True", "still bound as far as anyone knows");
    assert_event(&seen[1], "Warning", "EndpointNotFound", "not the cloud saying the NIC is gone");
    assert!(requeue_delay(&run.action).is_some_and(|d| d >= Duration::from_secs(30)), "{:?}", run.action);
}

#[tokio::test]
async fn a_panic_inside_a_reconcile_is_an_error_not_an_unwind() {
    let (client, _api) = MockApi::start(&bound_binding(), MockOptions::default());
    let ctx = context(
        client,
        answering(Operation::Unbind, Reply::Panic("a bug in the cloud client".into())),
        static_defaults(),
    );
    let object = bound_binding().deleting();
    let result = tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(object), ctx)).await.unwrap();
    match result {
        Err(e) => {
            assert_eq!(e.kind(), "panic");
            assert!(e.to_string().contains("a bug in the cloud client"), "{e}");
        }
        Ok(action) => panic!("expected an error, got {action:?}"),
    }
}

#[tokio::test]
async fn a_new_object_with_an_old_name_does_not_inherit_its_backoff() {
    let cloud = answering(Operation::Unbind, api_error(500, "Common.0001", "req-500"));
    let object = bound_binding().deleting();
    let (client, api) = MockApi::start(&object, MockOptions::default());
    let ctx = context(client, cloud.clone(), static_defaults());
    let old = reconcile(Arc::new(object.clone()), ctx.clone()).await.unwrap();
    assert!(requeue_delay(&old).is_some_and(|d| d >= Duration::from_millis(2500)), "{old:?}");
    // The same object again at once is held by its backoff...
    let _ = reconcile(Arc::new(object.clone()), ctx.clone()).await.unwrap();
    assert_eq!(ecs_calls(&cloud).len(), 1, "held");
    // ...but another object under the same name (deleted and created again) is not.
    let new = object.with_uid("uid-new");
    api.put(&new);
    let _ = reconcile(Arc::new(new), ctx).await.unwrap();
    assert_eq!(ecs_calls(&cloud).len(), 2, "{:?}", ecs_calls(&cloud));
}

/// A reconcile from a stale copy of a binding that has gone (a late trigger, a previous leader's
/// cache) meets its successor of the same name on the server: the release it decided must not
/// rewrite the successor's status or take its finalizer away, or the successor's bind would be
/// left with no binding to unbind it (found by the chaos test, seeds 106 and 107).
#[tokio::test]
async fn a_release_meant_for_a_gone_binding_leaves_its_successor_of_the_same_name_alone() {
    let successor = bound_binding().with_uid("uid-successor");
    let (client, api) = MockApi::start(&successor, MockOptions::default());
    let ctx = context(client, FakeCloud::new(), static_defaults());
    let stale = bound_binding().orphan().deleting();
    let result = tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(stale), ctx)).await.unwrap();
    // The refused write is looked into: another object has the name, so this one is gone.
    assert_eq!(result.expect("a gone object is no error"), Action::await_change());
    let seen = api.seen();
    let writes: Vec<_> = seen.iter().filter(|s| s.method == "PATCH").collect();
    assert_eq!(writes.len(), 1, "the release stops at its first refused write: {seen:#?}");
    assert_status_write(writes[0], writes[0].status().clone());
    assert_eq!(seen.last().map(|s| (s.method.as_str(), s.uri.as_str())), Some(("GET", BINDING_PATH)));
    let stored: VipBinding = serde_json::from_value(api.objects.lock().unwrap()[NAME].clone()).unwrap();
    assert_eq!(stored, successor, "the successor is untouched");
}

/// A binding whose record says nothing was sent (written by a hold before it owned its NIC)
/// says a bind is under way before it sends one: a crash between the cloud's answer and the
/// status write must not leave "nothing was sent" standing, or its deletion would release as
/// NotBound with the VIP bound (chaos seed 2426686475).
#[tokio::test]
async fn a_binding_recorded_not_bound_says_a_bind_is_under_way_before_sending_one() {
    let status: VipBindingStatus = serde_json::from_value(json!({"conditions": [
        cond("Bound", "False", "NotBound", "no bind request has been sent to the cloud", EARLIER),
        cond("Ready", "False", "Conflict", "VipBinding team-a/other already owns NIC", EARLIER),
    ]}))
    .unwrap();
    let cloud = FakeCloud::new();
    let run = run_once(binding().with_status(status), cloud.clone(), static_defaults(), MockOptions::default()).await;
    assert_finalizer_added(&run.seen[0]);
    let under_way = condition(run.seen[1].status(), "Bound");
    assert_eq!((under_way["status"].as_str(), under_way["reason"].as_str()), (Some("Unknown"), Some("Indeterminate")));
    assert_eq!(ecs_calls(&cloud).iter().map(|c| c.op).collect::<Vec<_>>(), ["bind"]);
    assert_eq!(condition(run.seen[2].status(), "Bound")["status"], "True");
}

/// kube-apiserver can let a DELETE that read a binding before our finalizer was added remove it
/// all the same once the finalizer is on (kubernetes/kubernetes#77988; seen by the chaos test,
/// seeds 105, 106 and 107): its bind, already sent, would be left with no binding to unbind it.
/// The status write after the bind finds the object gone, and the bind is undone.
#[tokio::test]
async fn a_bind_whose_binding_vanished_around_its_finalizer_is_undone() {
    let cloud = FakeCloud::new();
    let opts = MockOptions { vanish_after_finalizer: true, ..MockOptions::default() };
    let run = run_once(binding(), cloud.clone(), static_defaults(), opts).await;
    assert_eq!(ecs_calls(&cloud).iter().map(|c| c.op).collect::<Vec<_>>(), ["bind", "unbind"]);
    assert_eq!(run.action, Action::await_change());
    assert_finalizer_added(&run.seen[0]);
    assert_eq!(run.seen[1].method, "PATCH", "the status write after the bind: {:#?}", run.seen);
    let event = run.seen.last().unwrap();
    assert_event(event, "Warning", "DeletedWhileBinding", "the bind was undone");
}

/// The same, but another binding already claims the NIC: the unbind would be its, so none is
/// made (the ECS unbind names no VIP).
#[tokio::test]
async fn a_vanished_bind_is_left_to_the_binding_that_now_claims_its_nic() {
    let cloud = FakeCloud::new();
    let opts = MockOptions { vanish_after_finalizer: true, ..MockOptions::default() };
    let first = jiff::Timestamp::from_second(1_700_000_000).unwrap();
    let object = binding().created(first);
    let (client, _api) = MockApi::start(&object, opts);
    let ctx = context(client, cloud.clone(), static_defaults());
    // Younger: the vanished binding owned the NIC when it bound.
    let other = binding().named(NS, "successor").created(first + jiff::SignedDuration::from_secs(1));
    ctx.index.apply(None, &kube::runtime::watcher::Event::Apply(object.clone()));
    ctx.index.apply(None, &kube::runtime::watcher::Event::Apply(other));
    reconcile(Arc::new(object), ctx).await.expect("reconcile");
    assert_eq!(ecs_calls(&cloud).iter().map(|c| c.op).collect::<Vec<_>>(), ["bind"]);
}

#[tokio::test]
async fn delete_with_a_server_error_keeps_the_finalizer_then_succeeds() {
    let cloud = answering(Operation::Unbind, api_error(500, "Common.0001", "req-500"));
    let first = run_once(bound_binding().deleting(), cloud.clone(), static_defaults(), MockOptions::default()).await;
    let first_seen = after_crd_check(&first.seen);
    assert_eq!(first_seen.len(), 2, "{first_seen:#?}");
    let msg = "unbind failed: HTTP 500 Common.0001: simulated [request id req-500]; set spec.deletionPolicy to Orphan to release the binding without unbinding";
    let bound_msg = format!("VIP 192.168.0.7 is bound to NIC {NIC} (port {NIC})");
    assert_status_write(
        &first_seen[0],
        json!({
            "portId": NIC,
            "observedGeneration": 1,
            "boundReverseBinding": false,
            // The record stays until the unbind succeeds.
            "boundWith": {"projectId": PROJECT, "region": "cn-north-4"},
            "conditions": [cond("Bound", "True", "Bound", &bound_msg, EARLIER), cond("Ready", "False", "CloudUnavailable", msg, NOW)],
        }),
    );
    assert_event(&first_seen[1], "Warning", "CloudUnavailable", "req-500");
    let delay = requeue_delay(&first.action).expect("a retryable failure must requeue");
    assert!(delay >= Duration::from_millis(2500) && delay <= Duration::from_secs(5), "{delay:?}");

    // The next reconcile sees the status the first one wrote, and succeeds.
    let object =
        bound_binding().deleting().with_status(serde_json::from_value(first_seen[0].status().clone()).unwrap());
    let second = run_once(object, cloud.clone(), static_defaults(), MockOptions::default()).await;
    assert_eq!(ecs_calls(&cloud).len(), 2);
    let second_seen = after_crd_check(&second.seen);
    assert_eq!(second_seen.len(), 2);
    assert_eq!(second_seen[0].status()["conditions"][1]["reason"], "Unbound");
    assert_finalizer_removed(&second_seen[1]);
}

#[tokio::test]
async fn orphan_policy_releases_without_a_cloud_call() {
    let cloud = FakeCloud::new();
    let object = bound_binding().deleting().orphan();
    let run = run_once(object, cloud.clone(), static_defaults(), MockOptions::default()).await;
    assert!(ecs_calls(&cloud).is_empty());
    assert_eq!(run.seen.len(), 3);
    let conditions = &run.seen[0].status()["conditions"];
    assert_eq!(conditions[1]["reason"], "Orphaned");
    assert_eq!(conditions[1]["status"], "False");
    // The VIP stays bound, and status says so.
    assert_eq!(conditions[0]["status"], "True");
    assert_finalizer_removed(&run.seen[1]);
    assert_event(&run.seen[2], "Normal", "Orphaned", "stays bound");
}

#[tokio::test]
async fn auth_failure_is_recorded_and_the_key_is_not_retried_in_a_loop() {
    let cloud = answering(Operation::Bind, api_error(401, "APIGW.0301", "req-401"));
    let (client, api) = MockApi::start(&binding(), MockOptions::default());
    let ctx = context(client, cloud.clone(), static_defaults());
    let action = reconcile(Arc::new(binding()), ctx.clone()).await.unwrap();
    let seen = api.seen();
    // Finalizer (the call was about to be made), status, warning event.
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert_finalizer_added(&seen[0]);
    let status = seen[1].status();
    assert_eq!(status["conditions"][1]["reason"], "AuthFailed");
    assert!(status["conditions"][1]["message"].as_str().unwrap().contains("APIGW.0301"));
    // A 401 proves nothing was bound.
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_event(&seen[2], "Warning", "AuthFailed", "req-401");
    let Some(delay) = requeue_delay(&action) else { panic!("auth failures requeue slowly") };
    assert!(delay >= Duration::from_secs(30), "{delay:?}");

    // Another binding using the same key right after: held back without a cloud call.
    let other = binding().named(NS, "other").with_finalizer();
    api.put(&other);
    let _ = reconcile(Arc::new(other), ctx).await.unwrap();
    assert_eq!(ecs_calls(&cloud).len(), 1, "the refused key must not be sent again at once");
    let seen = api.seen();
    let held = &seen[3].status()["conditions"][1];
    assert_eq!(held["reason"], "AuthFailed");
    let key_id = Credentials::new("DEFAULTAK", "x", None).unwrap().key_id();
    assert!(
        held["message"].as_str().unwrap().contains(&format!("not sent: the cloud refused access key {key_id}")),
        "{held}"
    );
    assert!(!held.to_string().contains("DEFAULTAK"));
}

fn requeue_delay(action: &Action) -> Option<Duration> {
    // Action has no public accessors; its Debug output carries the requeue duration
    // (`Action { requeue_after: Some(12.5s) }`).
    let text = format!("{action:?}");
    let inner = text.split("Some(").nth(1)?.split(')').next()?;
    let (number, scale) = if let Some(n) = inner.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = inner.strip_suffix("µs") {
        (n, 1e-6)
    } else if let Some(n) = inner.strip_suffix("ns") {
        (n, 1e-9)
    } else {
        (inner.strip_suffix('s')?, 1.0)
    };
    Some(Duration::from_secs_f64(number.parse::<f64>().ok()? * scale))
}

#[tokio::test]
async fn missing_credentials_never_reach_the_cloud_and_add_no_finalizer() {
    let cloud = FakeCloud::new();
    let defaults = OperatorDefaults { credentials: DefaultCredentials::None, ..static_defaults() };
    let run = run_once(binding(), cloud.clone(), defaults, MockOptions::default()).await;
    assert!(ecs_calls(&cloud).is_empty());
    assert_eq!(run.seen.len(), 2, "{:#?}", run.seen);
    let status = run.seen[0].status();
    assert_eq!(status["conditions"][1]["reason"], "CredentialsUnavailable");
    assert_eq!(status["conditions"][0]["reason"], "NotBound");
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_event(&run.seen[1], "Warning", "CredentialsUnavailable", "no credentials");
    assert!(requeue_delay(&run.action).is_some());
}

#[tokio::test]
async fn binding_secret_is_read_and_wins_over_defaults() {
    let cloud = FakeCloud::new();
    let object = binding().secret("hw-creds").project(None).region(None);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "hw-creds", "namespace": NS},
        "data": {
            "accessKey": "U0VDUkVUQUs=",          // SECRETAK
            "secretKey": "c2VjcmV0LXNr",          // secret-sk
            "projectId": "cHJvamVjdGZyb21zZWNyZXQ=", // projectfromsecret
            "region": "YXAtc291dGhlYXN0LTE=",       // ap-southeast-1
        }
    }))
    .unwrap();
    let run =
        run_once(object, cloud.clone(), static_defaults(), MockOptions { secret: Some(secret), ..Default::default() })
            .await;
    assert_eq!(run.seen[0].method, "GET");
    assert_eq!(run.seen[0].uri, "/api/v1/namespaces/team-a/secrets/hw-creds");
    let call = &ecs_calls(&cloud)[0];
    assert_eq!(call.access_key, "SECRETAK");
    assert_eq!(call.project, "projectfromsecret");
    assert_eq!(call.region, "ap-southeast-1");
    // No secret material in anything written to the cluster.
    for s in &run.seen {
        assert!(!s.body.to_string().contains("secret-sk"));
    }
}

#[tokio::test]
async fn a_secret_with_a_missing_key_is_invalid_with_a_precise_message() {
    let cloud = FakeCloud::new();
    let object = binding().secret("hw-creds");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "hw-creds", "namespace": NS},
        "data": {"accessKey": "U0VDUkVUQUs="}
    }))
    .unwrap();
    let run =
        run_once(object, cloud.clone(), static_defaults(), MockOptions { secret: Some(secret), ..Default::default() })
            .await;
    assert!(ecs_calls(&cloud).is_empty());
    let ready = &run.seen[1].status()["conditions"][1];
    assert_eq!(ready["reason"], "Invalid");
    assert_eq!(ready["message"], "credentials Secret team-a/hw-creds: key `secretKey` is missing");
}

#[tokio::test]
async fn deleting_a_binding_that_never_reached_the_cloud_needs_no_unbind() {
    // Never got a finalizer (credentials were missing from the start): nothing to do at all.
    let cloud = FakeCloud::new();
    let object = binding().deleting().with_status(
        serde_json::from_value(json!({
            "conditions": [cond("Bound", "False", "NotBound", "no bind request has been sent to the cloud", EARLIER)]
        }))
        .unwrap(),
    );
    let run = run_once(object.clone(), cloud.clone(), static_defaults(), MockOptions::default()).await;
    assert!(ecs_calls(&cloud).is_empty());
    assert!(run.seen.is_empty(), "{:#?}", run.seen);

    // Had the finalizer, but the cloud refused the only bind (Bound=False): released, no call.
    let object = object.with_finalizer();
    let run = run_once(object, cloud.clone(), static_defaults(), MockOptions::default()).await;
    assert!(ecs_calls(&cloud).is_empty());
    assert_eq!(run.seen.len(), 3);
    assert_eq!(run.seen[0].status()["conditions"][1]["reason"], "NotBound");
    assert_finalizer_removed(&run.seen[1]);
}

#[tokio::test]
async fn event_failures_never_block_a_deletion() {
    // A terminating namespace refuses new events; the binding must still be released (here
    // through NicNotFound, a release that publishes an event).
    let cloud = answering(Operation::Unbind, api_error(404, "Ecs.0614", "req-404"));
    let run = run_once(
        bound_binding().deleting(),
        cloud.clone(),
        static_defaults(),
        MockOptions { events_forbidden: true, ..Default::default() },
    )
    .await;
    let seen = after_crd_check(&run.seen);
    assert_eq!(seen.len(), 3);
    assert_finalizer_removed(&seen[1]);
    assert_eq!(seen[2].method, "POST", "the event was attempted (and refused)");
    assert_eq!(run.action, Action::await_change());
}

#[tokio::test]
async fn a_lost_bind_answer_is_recorded_as_indeterminate_and_deletion_still_unbinds() {
    let timeout = EcsError::Transport { kind: TransportKind::Timeout, message: "operation timed out".into() };
    let cloud = answering(Operation::Bind, timeout);
    let run = run_once(binding(), cloud.clone(), static_defaults(), MockOptions::default()).await;
    let status = run.seen[1].status();
    assert_eq!(status["conditions"][0]["status"], "Unknown");
    assert_eq!(status["conditions"][0]["reason"], "Indeterminate");
    assert_eq!(status["conditions"][1]["reason"], "CloudUnavailable");

    let object = binding().deleting().with_finalizer().with_status(serde_json::from_value(status.clone()).unwrap());
    let run = run_once(object, cloud.clone(), static_defaults(), MockOptions::default()).await;
    assert_eq!(ecs_calls(&cloud).last().unwrap().op, "unbind");
    assert_finalizer_removed(&after_crd_check(&run.seen)[1]);
}

#[tokio::test]
async fn terminal_bind_errors_wait_for_a_spec_change() {
    let cloud = answering(Operation::Bind, api_error(400, "Ecs.0039", "req-400"));
    let run = run_once(binding(), cloud.clone(), static_defaults(), MockOptions::default()).await;
    assert_eq!(run.seen[1].status()["conditions"][1]["reason"], "BindFailed");
    assert_eq!(run.action, Action::await_change());
}

#[tokio::test]
async fn a_vpc_binding_without_a_vpc_endpoint_is_invalid_and_nothing_is_sent() {
    // This context has no VPC client (a fixed --ecs-endpoint and no --vpc-endpoint).
    let cloud = FakeCloud::new();
    let run = run_once(binding().api(BindApi::Vpc), cloud.clone(), static_defaults(), MockOptions::default()).await;
    assert!(ecs_calls(&cloud).is_empty(), "{:?}", ecs_calls(&cloud));
    // The failure is recorded, then said: no finalizer went on, since nothing was sent.
    assert_eq!(run.seen.len(), 2, "{:#?}", run.seen);
    let ready = condition(run.seen[0].status(), "Ready");
    assert_eq!(ready["reason"], "Invalid");
    assert!(ready["message"].as_str().unwrap().contains("no VPC endpoint"), "{ready}");
    assert_event(&run.seen[1], "Warning", "Invalid", "--vpc-endpoint");
    assert_eq!(run.action, Action::await_change());
}

#[tokio::test]
async fn crd_being_deleted_releases_without_unbinding() {
    // An uninstall deletes the CRD, which deletes every binding: that must not unbind the fleet.
    let cloud = FakeCloud::new();
    let run = run_once(
        bound_binding().deleting(),
        cloud.clone(),
        static_defaults(),
        MockOptions { crd_deleting: true, ..Default::default() },
    )
    .await;
    assert!(ecs_calls(&cloud).is_empty(), "{:?}", ecs_calls(&cloud));
    let seen = after_crd_check(&run.seen);
    assert_eq!(seen.len(), 3);
    let ready = &seen[0].status()["conditions"][1];
    assert_eq!(ready["reason"], "Orphaned");
    assert!(ready["message"].as_str().unwrap().contains("CRD is being deleted"));
    assert_finalizer_removed(&seen[1]);
}

// ---------------------------------------------------------------- tenancy

#[tokio::test]
async fn a_namespace_not_granted_the_default_credentials_gets_a_reason_an_event_and_no_cloud_call() {
    let cloud = FakeCloud::new();
    let run = run_with_tenancy(binding(), cloud.clone(), MockOptions::default()).await;
    assert!(ecs_calls(&cloud).is_empty());
    // No finalizer either: nothing can have been sent.
    assert_eq!(run.seen.len(), 2, "{:#?}", run.seen);
    let ready = condition(run.seen[0].status(), "Ready");
    assert_eq!(ready["reason"], "DefaultCredentialsNotAllowed");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("kubectl label namespace team-a vipoperator.dev/default-credentials=allowed"),
        "{message}"
    );
    assert_event(
        &run.seen[1],
        "Warning",
        "DefaultCredentialsNotAllowed",
        "may not use the operator's default credentials",
    );
    // Only a change helps (a relabel releases the hold through the namespace watch).
    assert_eq!(run.action, Action::await_change());
}

#[tokio::test]
async fn a_project_outside_the_namespace_scope_is_refused_even_with_the_namespace_s_own_secret() {
    let cloud = FakeCloud::new();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "team-creds", "namespace": NS},
        "data": {"accessKey": "VEVBTUFL", "secretKey": "dGVhbS1zaw=="},
    }))
    .unwrap();
    let object = binding().secret("team-creds");
    let run = run_with_tenancy(object, cloud.clone(), MockOptions { secret: Some(secret), ..Default::default() }).await;
    assert!(ecs_calls(&cloud).is_empty());
    assert_eq!(run.seen[0].uri, "/api/v1/namespaces/team-a/secrets/team-creds");
    let ready = condition(run.seen[1].status(), "Ready");
    assert_eq!(ready["reason"], "ProjectNotAllowed");
    assert!(ready["message"].as_str().unwrap().contains(PROJECT), "{ready}");
}

const RECORDED_PROJECT: &str = "fedcba9876543210fedcba9876543210";

fn team_secret(name: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS},
        "data": {"accessKey": "VEVBTUFL", "secretKey": "dGVhbS1zaw=="}, // TEAMAK, team-sk
    }))
    .unwrap()
}

#[tokio::test]
async fn a_narrowed_policy_never_traps_a_deletion_it_unbinds_where_the_bind_went() {
    // Bound with the Secret team-creds in RECORDED_PROJECT (its projectId then); since then the
    // spec names no Secret, the namespace lost the default credentials, and its annotation
    // allows neither project. The unbind goes where the bind went, signed as it was.
    let cloud = FakeCloud::new();
    let mut object = bound_binding().project(None).deleting();
    if let Some(status) = object.status.as_mut() {
        status.bound_with = serde_json::from_value(
            json!({"projectId": RECORDED_PROJECT, "region": "ap-southeast-1", "credentialsSecret": "team-creds"}),
        )
        .unwrap();
    }
    let opts = MockOptions { secret: Some(team_secret("team-creds")), ..Default::default() };
    let run = run_with_tenancy(object, cloud.clone(), opts).await;
    let calls = ecs_calls(&cloud);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        (calls[0].op, calls[0].project.as_str(), calls[0].region.as_str(), calls[0].access_key.as_str()),
        ("unbind", RECORDED_PROJECT, "ap-southeast-1", "TEAMAK")
    );
    let seen: Vec<Seen> = after_crd_check(&run.seen).into_iter().filter(|s| s.method != "GET").collect();
    assert_eq!(condition(seen[0].status(), "Ready")["reason"], "Unbound");
    assert!(seen[0].status().get("boundWith").is_none(), "the record goes with the unbind");
    assert_finalizer_removed(&seen[1]);
}

#[tokio::test]
async fn a_binding_bound_before_records_existed_gets_its_record_at_first_sight() {
    // One status write (the record, from the spec as it is now); no cloud call.
    let cloud = FakeCloud::new();
    let run = run_with_tenancy(legacy_bound_binding(), cloud.clone(), MockOptions::default()).await;
    assert!(ecs_calls(&cloud).is_empty());
    assert_eq!(run.seen.len(), 1, "{:#?}", run.seen);
    assert_eq!(run.seen[0].status()["boundWith"], json!({"projectId": PROJECT, "region": "cn-north-4"}));
    assert_eq!(condition(run.seen[0].status(), "Ready")["reason"], "Bound");
}

#[tokio::test]
async fn a_binding_bound_before_the_record_existed_still_unbinds() {
    // Deleted before the upgraded operator first saw it: Bound=True (only the operator writes
    // it) and no record. It unbinds as its spec resolves.
    let cloud = FakeCloud::new();
    let run = run_with_tenancy(legacy_bound_binding().deleting(), cloud.clone(), MockOptions::default()).await;
    assert_eq!(ecs_calls(&cloud).iter().map(|c| c.op).collect::<Vec<_>>(), ["unbind"]);
    assert_finalizer_removed(&after_crd_check(&run.seen)[1]);
}

#[tokio::test]
async fn a_hand_added_finalizer_cannot_turn_a_refused_binding_into_an_unbind() {
    // Never bound (refused by the policy), but someone added the finalizer by hand: the
    // operator has no evidence it ever sent a bind, so the unbind is checked like a bind.
    let cloud = FakeCloud::new();
    let run = run_with_tenancy(binding().with_finalizer().deleting(), cloud.clone(), MockOptions::default()).await;
    assert!(ecs_calls(&cloud).is_empty(), "{:?}", ecs_calls(&cloud));
    let seen = after_crd_check(&run.seen);
    // The refusal (status, then its event), and no finalizer removal.
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(condition(seen[0].status(), "Ready")["reason"], "DefaultCredentialsNotAllowed");
    assert_event(&seen[1], "Warning", "DefaultCredentialsNotAllowed", "team-a");
}

// ---------------------------------------------------------------- evidence before a release

/// Deletes `bound_binding()` with ECS answering "NIC gone" and the port read answering `read`.
async fn delete_with_nic_gone_and_port_read(read: Result<Port, EcsError>) -> Run {
    let ecs = vec![api_error(400, "Ecs.0085", "req-ecs")];
    reconcile_with_port_reads(bound_binding().deleting(), ecs, vec![read]).await
}

/// One reconcile of `object` with ECS answering `ecs` and port reads answering `reads` (all of
/// which must be read).
async fn reconcile_with_port_reads(object: VipBinding, ecs: Vec<EcsError>, reads: Vec<Result<Port, EcsError>>) -> Run {
    let cloud = FakeCloud::new();
    cloud.script(Operation::Unbind, NIC, ecs);
    // Any VPC call but these reads fails the test.
    cloud.only_scripted(Service::Vpc);
    cloud.script(Operation::GetPort, NIC, reads);
    let (client, api) = MockApi::start(&object, MockOptions::default());
    let reporter = Reporter { controller: "vip-operator".into(), instance: Some("test".into()) };
    let ctx = Arc::new(
        Context::new(
            KubeOps::new(client.clone(), reporter),
            cloud.clone(),
            TargetResolver::new(Arc::new(client), static_defaults()),
            Arc::new(FixedClock),
        )
        .with_vpc(cloud.clone()),
    );
    let action = reconcile(Arc::new(object), ctx).await.expect("reconcile failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(cloud.all_answered(Operation::GetPort), "the port was read");
    Run { action, seen: api.seen() }
}

fn nic_port() -> Port {
    serde_json::from_value(json!({"id": NIC, "device_owner": "compute:cn-north-4a", "fixed_ips": [{"subnet_id": SUBNET, "ip_address": "192.168.0.20"}]})).unwrap()
}

#[tokio::test]
async fn a_vpc_deletion_with_no_recorded_nic_ip_is_released_when_the_nics_port_reads_404() {
    // The finalizer went on, but no status followed (a crash): the bind may have been sent,
    // and there is no record of the NIC's IP. The NIC's own port answering 404 VPC.2502 is the
    // cloud's word that no pair of it can be bound.
    let object = binding().api(BindApi::Vpc).with_finalizer().deleting();
    let run = reconcile_with_port_reads(object, vec![], vec![Err(api_error(404, "VPC.2502", "req-vpc"))]).await;
    let seen = after_crd_check(&run.seen);
    let ready = condition(seen[0].status(), "Ready");
    assert_eq!(ready["reason"], "NicNotFound");
    assert!(ready["message"].as_str().unwrap().contains("read through the VPC API"), "{ready}");
    assert_finalizer_removed(&seen[1]);
}

#[tokio::test]
async fn a_nic_gone_for_ecs_is_released_once_its_port_reads_404() {
    let run = delete_with_nic_gone_and_port_read(Err(api_error(404, "VPC.2502", "req-vpc"))).await;
    let seen = after_crd_check(&run.seen);
    let ready = condition(seen[0].status(), "Ready");
    assert_eq!(ready["reason"], "NicNotFound");
    assert!(ready["message"].as_str().unwrap().contains("confirmed by the VPC API"), "{ready}");
    assert_finalizer_removed(&seen[1]);
}

#[tokio::test]
async fn a_nic_gone_for_ecs_whose_port_still_exists_is_held_not_released() {
    let run = delete_with_nic_gone_and_port_read(Ok(nic_port())).await;
    let seen = after_crd_check(&run.seen);
    assert_eq!(seen.len(), 2, "status and event, no finalizer removal: {seen:#?}");
    let ready = condition(seen[0].status(), "Ready");
    assert_eq!(ready["reason"], "GoneUnconfirmed");
    assert!(ready["message"].as_str().unwrap().contains("still has its port"), "{ready}");
    assert_eq!(condition(seen[0].status(), "Bound")["status"], "True", "still possibly bound");
    assert_event(&seen[1], "Warning", "GoneUnconfirmed", "Orphan");
    assert!(requeue_delay(&run.action).is_some(), "looked at again");
}

#[tokio::test]
async fn a_port_read_that_proves_nothing_holds_the_binding_and_retries() {
    for unknown in [api_error(404, "APIGW.0101", "req-gw"), api_error(503, "VPC.0001", "req-5xx")] {
        let run = delete_with_nic_gone_and_port_read(Err(unknown)).await;
        let seen = after_crd_check(&run.seen);
        assert_eq!(seen.len(), 2, "status and event, no finalizer removal: {seen:#?}");
        let ready = condition(seen[0].status(), "Ready");
        assert_ne!(ready["reason"], "NicNotFound");
        assert!(ready["message"].as_str().unwrap().contains("not released yet"), "{ready}");
    }
}

#[tokio::test]
async fn without_read_permission_the_release_rests_on_the_ecs_answer_and_says_so() {
    let run = delete_with_nic_gone_and_port_read(Err(api_error(403, "VPC.0003", "req-403"))).await;
    let seen = after_crd_check(&run.seen);
    assert_event(&seen[0], "Warning", "VpcReadsDenied", "may not read VPC ports");
    let ready = condition(seen[1].status(), "Ready");
    assert_eq!(ready["reason"], "NicNotFound");
    assert!(ready["message"].as_str().unwrap().contains("not confirmed"), "{ready}");
    assert_finalizer_removed(&seen[2]);
}

// ---------------------------------------------------------------- writes that may still land

/// A reconcile whose context knows of a write that may still land: `op` on the NIC.
async fn run_after_unsettled(object: VipBinding, cloud: Arc<FakeCloud>, op: vip_operator::ecs::Operation) -> Run {
    use vip_operator::controller::WritesInFlight;
    let (client, api) = MockApi::start(&object, MockOptions::default());
    let reporter = Reporter { controller: "vip-operator".into(), instance: Some("test".into()) };
    let writes = Arc::new(WritesInFlight::new(Duration::from_secs(90)));
    writes.note(op, NIC);
    let ctx = Context::new(
        KubeOps::new(client.clone(), reporter),
        cloud,
        TargetResolver::new(Arc::new(client), static_defaults()),
        Arc::new(FixedClock),
    )
    .with_writes(writes);
    let action = tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(object), Arc::new(ctx)))
        .await
        .expect("reconcile hung")
        .expect("reconcile failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
    Run { action, seen: api.seen() }
}

#[tokio::test]
async fn an_unbind_that_a_bind_still_in_flight_could_undo_is_held_and_the_finalizer_stays() {
    let cloud = FakeCloud::new();
    let run = run_after_unsettled(bound_binding().deleting(), cloud.clone(), vip_operator::ecs::Operation::Bind).await;
    assert_eq!(ecs_calls(&cloud).len(), 1, "unbound once");
    let seen = after_crd_check(&run.seen);
    assert_eq!(seen.len(), 1, "the status only: the finalizer stays {seen:#?}");
    let status = seen[0].status();
    assert_eq!(condition(status, "Bound")["status"], "Unknown");
    assert_eq!(condition(status, "Bound")["reason"], "WritesInFlight");
    assert_eq!(condition(status, "Ready")["reason"], "WritesInFlight");
    let delay = requeue_delay(&run.action).expect("looked at again");
    assert!(delay >= Duration::from_secs(89) && delay <= Duration::from_secs(91), "{delay:?}");
    // A late unbind cannot undo an unbind: released at once.
    let cloud = FakeCloud::new();
    let run = run_after_unsettled(bound_binding().deleting(), cloud, vip_operator::ecs::Operation::Unbind).await;
    assert_finalizer_removed(after_crd_check(&run.seen).last().unwrap());
}

#[tokio::test]
async fn a_bind_that_an_unbind_still_in_flight_could_undo_is_checked_again_after_the_horizon() {
    let cloud = FakeCloud::new();
    let run = run_after_unsettled(binding(), cloud.clone(), vip_operator::ecs::Operation::Unbind).await;
    assert_eq!(ecs_calls(&cloud).iter().map(|c| c.op).collect::<Vec<_>>(), ["bind"]);
    let status = &run.seen.last().unwrap().status();
    // Bound now, but not said to be until the unbind in flight can no longer undo it.
    assert_eq!(condition(status, "Bound")["status"], "Unknown");
    assert_eq!(condition(status, "Bound")["reason"], "WritesInFlight");
    assert_eq!(condition(status, "Ready")["status"], "False");
    let message = condition(status, "Ready")["message"].as_str().unwrap();
    assert!(message.contains("is bound") && message.contains("checked again"), "{message}");
    let delay = requeue_delay(&run.action).expect("a second look is scheduled");
    assert!(delay >= Duration::from_secs(89) && delay <= Duration::from_secs(91), "{delay:?}");
}
