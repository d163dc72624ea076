//! The VipBinding controller: watches, the reconcile context, and the error policy.

pub mod decide;
pub mod guard;
pub mod index;
pub mod kube;
pub mod memory;
pub mod policy;
pub mod reconcile;
pub mod status;
pub mod target;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ::kube::api::Api;
use ::kube::core::PartialObjectMeta;
use ::kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use ::kube::runtime::reflector::{self, ObjectRef, Store};
use ::kube::runtime::{WatchStreamExt, watcher};
use ::kube::{Resource, ResourceExt};
use futures::{Future, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio_util::sync::CancellationToken;

use crate::api::v1alpha1::{Reason, VipBinding};
use crate::ecs::{BindRequest, Clock, CloudTarget, EcsApi, EcsError, UnbindRequest};

use self::decide::{Facts, Verdict};
use self::index::BindingIndex;
use self::kube::KubeOps;
use self::policy::{Admission, AuthGate, Backoffs, Resync, Ticket};
use self::reconcile::{Error, object_key};
use self::target::TargetResolver;

/// Everything a reconcile needs. Cloud and Kubernetes access sit behind `cloud`, `kube` and
/// `targets`; the decision itself is the pure [`decide::decide`].
pub struct Context {
    pub kube: KubeOps,
    pub cloud: Arc<dyn EcsApi>,
    pub targets: TargetResolver,
    pub auth_gate: AuthGate,
    pub backoffs: Backoffs,
    pub clock: Arc<dyn Clock>,
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    pub memory: memory::Memory,
    /// NIC ownership and Secret use, across every watched namespace.
    pub index: Arc<BindingIndex>,
    pub resync: Resync,
    /// Before an unbind, GET the CRD to make sure it is not being deleted (uninstall).
    pub check_crd_before_unbind: bool,
}

impl Context {
    pub fn new(kube: KubeOps, cloud: Arc<dyn EcsApi>, targets: TargetResolver, clock: Arc<dyn Clock>) -> Self {
        Self {
            kube,
            cloud,
            targets,
            auth_gate: AuthGate::default(),
            backoffs: Backoffs::default(),
            clock,
            metrics: None,
            memory: memory::Memory::default(),
            index: Arc::default(),
            resync: Resync::disabled(),
            check_crd_before_unbind: true,
        }
    }

    pub fn with_resync(mut self, period: Duration) -> Self {
        self.resync = Resync::new(period);
        self
    }

    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Writes the status and remembers it until the cache shows it.
    pub async fn record(&self, b: &VipBinding, status: &crate::api::v1alpha1::VipBindingStatus) -> Result<(), Error> {
        self.kube.write_status(b, status).await?;
        self.memory.wrote_status(b, status);
        Ok(())
    }

    /// Now, in whole seconds: the API stores condition times at second precision, and a
    /// status we write must read back equal to what we remember writing (see `memory`).
    pub fn now(&self) -> Time {
        let now = self.clock.now();
        Time(jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
    }

    pub fn facts(&self, b: &VipBinding, key: &str) -> Facts {
        Facts {
            conflict_owner: self.index.conflict_owner(b),
            crd_deleting: false,
            reassert_due: decide::bound_as_specified(b) && self.resync.is_due(key),
        }
    }

    /// Whether the VipBinding CRD is being deleted (an uninstall): then bindings are released
    /// without unbinding. Asked right before each unbind, so no watch lag can let one through.
    pub async fn crd_deleting(&self) -> bool {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        if !self.check_crd_before_unbind {
            return false;
        }
        let crds: Api<CustomResourceDefinition> = Api::all(self.kube.client().clone());
        match crds.get_metadata_opt(crate::api::v1alpha1::CRD_NAME).await {
            Ok(Some(crd)) => crd.metadata.deletion_timestamp.is_some(),
            // Gone already: its objects are going too.
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check whether the VipBinding CRD is being deleted; proceeding with the unbind");
                false
            }
        }
    }

    /// After a reconcile that left the binding as its spec asks: wait for a change (the drift
    /// sweeper asks for the next check of a bound binding).
    pub fn after_success(&self, b: &VipBinding, key: &str) -> Action {
        self.backoffs.reset(key);
        if b.metadata.deletion_timestamp.is_none() && decide::bound_as_specified(b) {
            self.resync.track(key, ObjectRef::from_obj(b));
        }
        Action::await_change()
    }

    /// The binding is gone from our point of view (finalizer removed).
    pub fn forget(&self, b: &VipBinding, key: &str) {
        self.memory.released(b);
        self.forget_key(key);
    }

    /// Drops the per-object state kept under `key` (the object left the watch).
    pub fn forget_key(&self, key: &str) {
        self.backoffs.reset(key);
        self.resync.forget(key);
    }

    /// After a recorded failure or hold: back off by its reason (holding the binding until then,
    /// see [`Backoffs`]), or wait for a change when retrying cannot help.
    pub fn requeue_after(&self, b: &VipBinding, key: &str, reason: Reason, at_least: Option<Duration>) -> Action {
        match self.backoffs.next(key, trigger_fingerprint(b), reason, at_least) {
            Some(delay) => Action::requeue(delay),
            None => Action::await_change(),
        }
    }

    pub fn note_credentials_problem(&self, _b: &VipBinding, verdict: &Verdict) {
        if let (Some(m), Reason::CredentialsUnavailable) = (&self.metrics, verdict.reason) {
            m.credentials_unavailable.inc();
        }
    }

    /// `ok`: left as the spec asks; `waiting`: requeued after a recorded failure or hold;
    /// `error`: a Kubernetes API failure.
    pub fn observe_reconcile(&self, result: &Result<Action, Error>, elapsed: Duration) {
        if let Some(m) = &self.metrics {
            let label = match result {
                Ok(a) if *a == Action::await_change() => "ok",
                Ok(_) => "waiting",
                Err(_) => "error",
            };
            m.reconciled(label, elapsed);
        }
    }

    /// Asks the auth gate whether a call with `target`'s credentials may go now. `Err`:
    /// [`EcsError::HeldBack`] (refused recently) or [`EcsError::AwaitingProbe`] (the first
    /// call with these credentials is in flight; come back shortly). Nothing was sent.
    pub fn admit(&self, target: &CloudTarget) -> Result<Ticket, EcsError> {
        match self.auth_gate.admit(&target.credentials, &target.project_id) {
            Admission::Go(ticket) => Ok(ticket),
            Admission::Wait => Err(EcsError::AwaitingProbe(format!(
                "waiting for the first call with access key {} to be answered",
                target.credentials.key_id()
            ))),
            Admission::HeldBack(message) => {
                if let Some(m) = &self.metrics {
                    m.held_back.inc();
                }
                Err(EcsError::HeldBack(message))
            }
        }
    }

    pub async fn bind(
        &self,
        ticket: Ticket,
        b: &VipBinding,
        target: &CloudTarget,
        req: &BindRequest,
        reassert: bool,
    ) -> Result<String, EcsError> {
        let result = self.cloud.bind(target, req).await;
        self.auth_gate.settle(ticket, result.as_ref().map(|_| ()));
        if result.is_ok() {
            self.resync.asserted(&object_key(b), ObjectRef::from_obj(b));
            if reassert && let Some(m) = &self.metrics {
                m.drift_reasserts.inc();
            }
        }
        result
    }

    pub async fn unbind(&self, ticket: Ticket, target: &CloudTarget, req: &UnbindRequest) -> Result<String, EcsError> {
        let result = self.cloud.unbind(target, req).await;
        self.auth_gate.settle(ticket, result.as_ref().map(|_| ()));
        result
    }
}

/// What a user can change to unblock a held binding: the spec (generation), deleting it, and
/// the pause annotation. Our own writes (status, our finalizer) do not change it.
pub fn trigger_fingerprint(b: &VipBinding) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.metadata.generation.hash(&mut h);
    b.metadata.deletion_timestamp.is_some().hash(&mut h);
    b.is_paused().hash(&mut h);
    h.finish()
}

/// Requeue after a failed reconcile (a Kubernetes API error): quickly for write conflicts,
/// with per-object exponential backoff otherwise.
pub fn error_policy(b: Arc<VipBinding>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = %b.namespace().unwrap_or_default(), name = %b.name_any(), error = %error, "reconcile failed");
    // Counted, so repeated API failures back off.
    let n = ctx.backoffs.count(&object_key(&b));
    let delay = match error.kind() {
        "conflict" | "invalid" => Duration::from_millis(500),
        _ => Duration::from_secs(1).saturating_mul(2u32.saturating_pow(n.min(6))),
    };
    Action::requeue(delay.min(Duration::from_secs(60)))
}

#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Watch these namespaces; all when empty.
    pub namespaces: Vec<String>,
    /// Reconciles in parallel (per watched namespace when several are given).
    pub concurrency: u16,
    /// Run the credentials Secret guard (finalizer on Secrets in use).
    pub protect_credentials: bool,
}

/// Lets the rest of the process see the controller's caches (metrics, readiness).
#[derive(Clone, Default)]
pub struct Hooks {
    pub stores: Arc<std::sync::RwLock<Vec<Store<VipBinding>>>>,
    pub health: Option<Arc<crate::admin::Health>>,
}

/// Counts down the watches that still have to finish their initial list.
struct Synced {
    remaining: AtomicUsize,
    health: Option<Arc<crate::admin::Health>>,
}

impl Synced {
    fn one_done(&self) {
        if self.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
            tracing::info!("initial watch sync complete");
            if let Some(h) = &self.health {
                h.synced();
            }
        }
    }
}

type Trigger<K> = futures::channel::mpsc::UnboundedSender<ObjectRef<K>>;

/// Sends reconcile requests to the controller whose watch covers an object's namespace.
struct Triggers {
    bindings: Vec<(Option<String>, Trigger<VipBinding>)>,
    secrets: Vec<(Option<String>, Trigger<PartialObjectMeta<Secret>>)>,
}

fn covers(scope: &Option<String>, namespace: &str) -> bool {
    scope.as_deref().is_none_or(|s| s == namespace)
}

impl Triggers {
    fn binding(&self, binding: ObjectRef<VipBinding>) {
        let namespace = binding.namespace.clone().unwrap_or_default();
        for (scope, tx) in &self.bindings {
            if covers(scope, &namespace) {
                let _ = tx.unbounded_send(binding.clone());
            }
        }
    }

    fn secret(&self, namespace: &str, name: &str) {
        for (scope, tx) in &self.secrets {
            if covers(scope, namespace) {
                let _ = tx.unbounded_send(ObjectRef::new(name).within(namespace));
            }
        }
    }
}

fn strip_managed_fields<K: Resource>(obj: &mut K) {
    // managedFields are the largest part of most objects and we never read them.
    obj.meta_mut().managed_fields = None;
}

/// What the cache keeps of a binding: everything but what the operator never reads
/// (managedFields, labels, annotations other than its own — `kubectl apply` stores a copy of
/// the whole object in one). Memory per cached binding is what limits a large fleet.
fn slim_binding(b: &mut VipBinding) {
    strip_managed_fields(b);
    let meta = b.meta_mut();
    meta.labels = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k.starts_with("vipoperator.dev/"));
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// Runs the controllers until `stop` is cancelled, then lets in-flight reconciles finish.
/// Several namespaces run one controller each (a watch covers one namespace or all), sharing
/// the context: one cloud client, one rate limit, one backoff table, one binding index.
pub async fn run(
    client: ::kube::Client,
    ctx: Arc<Context>,
    config: WatchConfig,
    hooks: Hooks,
    stop: CancellationToken,
) {
    let scopes: Vec<Option<String>> =
        if config.namespaces.is_empty() { vec![None] } else { config.namespaces.iter().cloned().map(Some).collect() };
    // Readiness comes from the watch streams themselves (their first InitDone), not from
    // Store::wait_until_ready: that future keeps only its latest waiter's waker, and the
    // controller itself waits on it.
    ctx.index.expect_scopes(&scopes);
    let synced = Arc::new(Synced { remaining: AtomicUsize::new(scopes.len()), health: hooks.health.clone() });
    let mut triggers = Triggers { bindings: vec![], secrets: vec![] };
    let mut receivers = vec![];
    for scope in &scopes {
        let (btx, brx) = futures::channel::mpsc::unbounded();
        let (stx, srx) = futures::channel::mpsc::unbounded();
        triggers.bindings.push((scope.clone(), btx));
        triggers.secrets.push((scope.clone(), stx));
        receivers.push((brx, srx));
    }
    let triggers = Arc::new(triggers);
    if !ctx.resync.period().is_zero() {
        tokio::spawn(drift_sweeper(ctx.clone(), triggers.clone(), stop.clone()));
    }
    let mut tasks: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = vec![];
    for (scope, (brx, srx)) in scopes.into_iter().zip(receivers) {
        let scope_synced = Arc::new(AtomicBool::new(false));
        let parts = Parts {
            client: client.clone(),
            ctx: ctx.clone(),
            namespace: scope.clone(),
            concurrency: config.concurrency,
            stop: stop.clone(),
            synced: synced.clone(),
            scope_synced: scope_synced.clone(),
            triggers: triggers.clone(),
        };
        let (controller, reader) = build(parts, brx);
        if let Ok(mut stores) = hooks.stores.write() {
            stores.push(reader);
        }
        tasks.push(Box::pin(controller));
        if config.protect_credentials {
            tasks.push(Box::pin(guard_controller(
                client.clone(),
                ctx.index.clone(),
                scope,
                scope_synced,
                srx,
                stop.clone(),
            )));
        }
    }
    futures::future::join_all(tasks).await;
}

struct Parts {
    client: ::kube::Client,
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    stop: CancellationToken,
    synced: Arc<Synced>,
    scope_synced: Arc<AtomicBool>,
    triggers: Arc<Triggers>,
}

fn scoped_api<K>(client: ::kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = ::kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

fn build(
    p: Parts,
    triggered: futures::channel::mpsc::UnboundedReceiver<ObjectRef<VipBinding>>,
) -> (impl Future<Output = ()> + use<>, Store<VipBinding>) {
    let bindings: Api<VipBinding> = scoped_api(p.client.clone(), p.namespace.as_deref());
    // Metadata only: enough to notice a Secret changed, without caching every Secret's data.
    let secrets: Api<PartialObjectMeta<Secret>> = scoped_api(p.client.clone(), p.namespace.as_deref());
    let (reader, writer) = reflector::store();
    let (index, triggers, scope) = (p.ctx.index.clone(), p.triggers.clone(), p.namespace.clone());
    let (synced, scope_synced, backoffs_ctx) = (p.synced.clone(), p.scope_synced.clone(), p.ctx.clone());
    let memory_ctx = p.ctx.clone();
    let binding_stream = watcher(bindings, watcher::Config::default())
        .default_backoff()
        .modify(slim_binding)
        .reflect(writer)
        .inspect(move |event| {
            let Ok(event) = event else { return };
            if let watcher::Event::Apply(b) | watcher::Event::InitApply(b) = event {
                memory_ctx.memory.observe(b);
            }
            let changes = index.apply(scope.as_deref(), event);
            for owner in changes.new_owners {
                // The NIC's previous owner is gone: the next in line may bind now.
                backoffs_ctx.backoffs.release_hold(owner.uid());
                triggers.binding(owner.object_ref());
            }
            for (ns, name) in changes.secrets {
                triggers.secret(&ns, &name);
            }
            for claim in changes.gone {
                // Backoffs and drift entries of an object that left without a release (no
                // finalizer yet, or one removed by hand) would otherwise stay for ever.
                backoffs_ctx.forget_key(claim.uid());
            }
            if matches!(event, watcher::Event::InitDone) && !scope_synced.swap(true, Ordering::SeqCst) {
                synced.one_done();
            }
        })
        .touched_objects();
    let secret_stream = watcher(secrets, watcher::Config::default()).default_backoff().touched_objects();
    let store = reader.clone();
    let mapper_ctx = p.ctx.clone();
    // A Secret event re-examines the bindings that use it (e.g. one waiting for credentials):
    // found through the index, so a cluster's stream of unrelated Secret changes costs nothing.
    let secret_mapper = move |secret: PartialObjectMeta<Secret>| {
        let (ns, name) = (secret.namespace().unwrap_or_default(), secret.name_any());
        let mut refs: Vec<ObjectRef<VipBinding>> =
            mapper_ctx.index.secret_users(&ns, &name).iter().map(index::Claim::object_ref).collect();
        if mapper_ctx.targets.is_default_secret(&ns, &name) {
            refs.extend(
                store
                    .state()
                    .iter()
                    .filter(|b| b.spec.credentials_secret_ref.is_none())
                    .map(|b| ObjectRef::from_obj(&**b)),
            );
        }
        for uid in refs.iter().filter_map(|r| r.extra.uid.as_deref()) {
            // New or rotated credentials deserve a try now, whatever the backoff says.
            mapper_ctx.backoffs.release_hold(uid);
        }
        refs
    };
    let controller = Controller::for_stream(binding_stream, reader.clone())
        .watches_stream(secret_stream, secret_mapper)
        .reconcile_on(triggered)
        .with_config(ControllerConfig::default().concurrency(p.concurrency))
        .graceful_shutdown_on(p.stop.cancelled_owned())
        .run(reconcile::reconcile, error_policy, p.ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, action)) => tracing::trace!(object = %obj, ?action, "reconciled"),
                Err(::kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    tracing::trace!(object = %obj, "object gone before reconcile")
                }
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        });
    (controller, reader)
}

/// Asks for a reconcile of every bound binding whose drift check is due.
async fn drift_sweeper(ctx: Arc<Context>, triggers: Arc<Triggers>, stop: CancellationToken) {
    let every = (ctx.resync.period() / 20).clamp(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        for due in ctx.resync.take_due(Duration::from_secs(30).max(every * 4)) {
            triggers.binding(due);
        }
    }
}

/// The credentials Secret guard for one watch scope (see [`guard`]).
async fn guard_controller(
    client: ::kube::Client,
    index: Arc<BindingIndex>,
    namespace: Option<String>,
    synced: Arc<AtomicBool>,
    triggered: futures::channel::mpsc::UnboundedReceiver<ObjectRef<PartialObjectMeta<Secret>>>,
    stop: CancellationToken,
) {
    let secrets: Api<PartialObjectMeta<Secret>> = scoped_api(client.clone(), namespace.as_deref());
    let ctx = Arc::new(guard::GuardContext { client, index, synced });
    Controller::new(secrets, watcher::Config::default())
        .reconcile_on(triggered)
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(guard::reconcile, guard::error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
