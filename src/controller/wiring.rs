//! The wiring: which watches feed which controller, how a watch event becomes a reconcile
//! (directly, through the binding index, or through a Secret), the drift sweeper and the
//! credentials guard. Nothing here decides anything about a binding.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures::{Future, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Secret};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::api::group::VipGroup;
use crate::api::v1alpha1::VipBinding;

use crate::controller::binding::reconcile::{self, error_policy};
use crate::controller::context::Context;
use crate::controller::group;
use crate::controller::guard;
use crate::controller::state::caches::Caches;
use crate::controller::state::index::{BindingIndex, Claim};
use crate::controller::state::key::ObjectKey;

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
    pub stores: Caches<VipBinding>,
    /// The VipGroup caches: a node change wakes each group, and the group gauges are read from
    /// their status at scrape time.
    pub groups: Caches<VipGroup>,
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
    groups: Vec<(Option<String>, Trigger<VipGroup>)>,
    /// Every group controller's cache ([`Hooks::groups`]), for a node change to wake each group.
    group_stores: Caches<VipGroup>,
}

fn covers(scope: &Option<String>, namespace: &str) -> bool {
    scope.as_deref().is_none_or(|s| s == namespace)
}

type Receivers<K> = futures::channel::mpsc::UnboundedReceiver<ObjectRef<K>>;

impl Triggers {
    /// One channel of each kind per watch scope, and their receiving ends.
    #[allow(clippy::type_complexity)]
    fn for_scopes(
        scopes: &[Option<String>],
        group_stores: Caches<VipGroup>,
    ) -> (Self, Vec<(Receivers<VipBinding>, Receivers<PartialObjectMeta<Secret>>)>, Vec<Receivers<VipGroup>>) {
        let mut triggers = Triggers { bindings: vec![], secrets: vec![], groups: vec![], group_stores };
        let (mut receivers, mut group_receivers) = (vec![], vec![]);
        for scope in scopes {
            let (btx, brx) = futures::channel::mpsc::unbounded();
            let (stx, srx) = futures::channel::mpsc::unbounded();
            let (gtx, grx) = futures::channel::mpsc::unbounded();
            triggers.bindings.push((scope.clone(), btx));
            triggers.secrets.push((scope.clone(), stx));
            triggers.groups.push((scope.clone(), gtx));
            receivers.push((brx, srx));
            group_receivers.push(grx);
        }
        (triggers, receivers, group_receivers)
    }

    fn binding(&self, binding: ObjectRef<VipBinding>) {
        let namespace = binding.namespace.clone().unwrap_or_default();
        for (scope, tx) in &self.bindings {
            if covers(scope, &namespace) {
                let _ = tx.unbounded_send(binding.clone());
            }
        }
    }

    fn group(&self, group: ObjectRef<VipGroup>) {
        let namespace = group.namespace.clone().unwrap_or_default();
        for (scope, tx) in &self.groups {
            if covers(scope, &namespace) {
                let _ = tx.unbounded_send(group.clone());
            }
        }
    }

    /// A node changed what groups select on: every group looks (groups are few; each
    /// reconcile reads caches, and looks up only NICs it has not seen).
    fn all_groups(&self) {
        self.groups_where(|_| true);
    }

    /// The groups in a namespace whose policy changed (their NIC lookups use its credentials).
    fn groups_in(&self, namespace: &str) {
        self.groups_where(|g| g.namespace().as_deref() == Some(namespace));
    }

    fn groups_where(&self, pick: impl Fn(&VipGroup) -> bool) {
        for store in self.group_stores.stores() {
            for g in store.state().iter().filter(|g| pick(g)) {
                self.group(ObjectRef::from_obj(&**g));
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
/// (managedFields, labels and annotations other than its own — `kubectl apply` stores a copy of
/// the whole object in one). Memory per cached binding is what limits a large fleet. Its own
/// labels say which group and node a member is for.
fn slim_binding(b: &mut VipBinding) {
    strip_managed_fields(b);
    let meta = b.meta_mut();
    if let Some(labels) = meta.labels.as_mut() {
        labels.retain(|k, _| k.starts_with("vipoperator.dev/"));
        if labels.is_empty() {
            meta.labels = None;
        }
    }
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
pub async fn run(client: kube::Client, ctx: Arc<Context>, config: WatchConfig, hooks: Hooks, stop: CancellationToken) {
    let scopes = config_scopes(&config);
    // Readiness comes from the watch streams themselves (their first InitDone), not from
    // Store::wait_until_ready: that future keeps only its latest waiter's waker, and the
    // controller itself waits on it.
    ctx.index.expect_scopes(&scopes);
    // One per binding watch, and one for the namespace watch (the tenancy policy).
    let synced = Arc::new(Synced { remaining: AtomicUsize::new(scopes.len() + 1), health: hooks.health.clone() });
    let (triggers, receivers, group_receivers) = Triggers::for_scopes(&scopes, hooks.groups.clone());
    let triggers = Arc::new(triggers);
    if !ctx.resync.period().is_zero() {
        let (ctx, triggers, stop, stores) = (ctx.clone(), triggers.clone(), stop.clone(), hooks.stores.clone());
        tokio::spawn(async move {
            let listings = Arc::new(crate::controller::binding::compare::Listings::for_period(ctx.resync.period()));
            let check = |due: Vec<ObjectRef<VipBinding>>| {
                let (ctx, triggers, stores, listings) =
                    (ctx.clone(), triggers.clone(), stores.clone(), listings.clone());
                async move {
                    let compared = if due.is_empty() {
                        vec![]
                    } else {
                        // One snapshot of the stores per sweep, not one per due binding.
                        let stores = stores.stores();
                        let lookup = |r: &ObjectRef<VipBinding>| stores.iter().find_map(|s| s.get(r));
                        let compared =
                            crate::controller::binding::compare::due_to_reconcile(&ctx, &listings, due, lookup);
                        crate::ecs::in_background(compared).await
                    };
                    crate::ecs::in_background(crate::controller::binding::compare::release_unneeded_check_offs(&ctx))
                        .await;
                    ctx.resync.ask(&compared);
                    for r in compared {
                        triggers.binding(r);
                    }
                }
            };
            crate::controller::state::drift::sweep(&ctx.resync, check, stop).await
        });
    }
    let mut tasks: Vec<Task> = vec![];
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
        hooks.stores.add(reader);
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
    if groups_served(&client, &config.namespaces).await {
        tasks.extend(group_tasks(&client, &ctx, &config, &hooks, &triggers, group_receivers, &stop));
    }
    ctx.targets.tenancy().expect_watch();
    tasks.push(Box::pin(watch_namespaces(client.clone(), ctx.clone(), triggers.clone(), synced, stop.clone())));
    futures::future::join_all(tasks).await;
}

type Task = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The group controllers (one per watch scope, like the bindings') and the node watch.
fn group_tasks(
    client: &kube::Client,
    ctx: &Arc<Context>,
    config: &WatchConfig,
    hooks: &Hooks,
    triggers: &Arc<Triggers>,
    receivers: Vec<Receivers<VipGroup>>,
    stop: &CancellationToken,
) -> Vec<Task> {
    let mut tasks: Vec<Task> = vec![];
    let (nodes, node_writer) = reflector::store();
    let gctx = Arc::new(group::reconcile::GroupContext {
        ctx: ctx.clone(),
        nodes,
        provider_ids: Default::default(),
        nics: Default::default(),
        bindings: hooks.stores.clone(),
        nodes_listed: AtomicBool::new(false),
    });
    for (scope, grx) in config_scopes(config).into_iter().zip(receivers) {
        let groups: Api<VipGroup> = scoped_api(client.clone(), scope.as_deref());
        let controller = Controller::new(groups, watcher::Config::default());
        hooks.groups.add(controller.store());
        let controller = controller
            .reconcile_on(grx)
            .with_config(ControllerConfig::default().concurrency(4))
            .graceful_shutdown_on(stop.clone().cancelled_owned())
            .run(group::reconcile::reconcile, group::reconcile::error_policy, gctx.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "group controller event");
                }
            });
        tasks.push(Box::pin(controller));
    }
    tasks.push(Box::pin(watch_nodes(client.clone(), gctx, node_writer, triggers.clone(), stop.clone())));
    tasks
}

fn config_scopes(config: &WatchConfig) -> Vec<Option<String>> {
    if config.namespaces.is_empty() { vec![None] } else { config.namespaces.iter().cloned().map(Some).collect() }
}

/// Whether the VipGroup CRD is served: an install whose CRDs predate groups (Helm does not
/// upgrade `crds/`) runs without them, and says so once.
async fn groups_served(client: &kube::Client, namespaces: &[String]) -> bool {
    let api: Api<VipGroup> = scoped_api(client.clone(), namespaces.first().map(String::as_str));
    match api.list_metadata(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            tracing::warn!(
                "the VipGroup CRD (vipgroups.vipoperator.dev) is not installed: VIP groups are off (`kubectl apply --server-side -f crds/`, then restart)"
            );
            false
        }
        // Anything else (RBAC, a blip): run the controller; its watch says what is wrong.
        Err(e) => {
            tracing::warn!(error = %e, "cannot list VipGroups; starting the group controller all the same");
            true
        }
    }
}

/// What the node cache keeps: the name, UID, labels and the operator's annotations.
fn slim_node(n: &mut PartialObjectMeta<Node>) {
    strip_managed_fields(n);
    let meta = n.meta_mut();
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k.starts_with("vipoperator.dev/"));
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// Nodes, metadata only (see [`group::nodes`]): a change of what groups select on wakes the
/// groups; a status report changes nothing they read, and wakes nothing.
async fn watch_nodes(
    client: kube::Client,
    gctx: Arc<group::reconcile::GroupContext>,
    writer: reflector::store::Writer<PartialObjectMeta<Node>>,
    triggers: Arc<Triggers>,
    stop: CancellationToken,
) {
    use std::collections::HashMap;
    let nodes: Api<PartialObjectMeta<Node>> = Api::all(client);
    let events = watcher(nodes, watcher::Config::default()).default_backoff().modify(slim_node).reflect(writer);
    let mut events = std::pin::pin!(events.take_until(stop.cancelled_owned()));
    let mut seen: HashMap<String, u64> = HashMap::new();
    // A relist rebuilds the fingerprints: nodes deleted while the watch was down leave no
    // Delete event, and must not stay in the map.
    let mut relisted: HashMap<String, u64> = HashMap::new();
    let mut listing = false;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch Nodes: VIP groups do not follow node changes until it works");
                continue;
            }
        };
        match event {
            watcher::Event::Init => {
                listing = true;
                relisted.clear();
            }
            watcher::Event::InitApply(n) => {
                if let Some(v) = group::nodes::NodeView::of(&n) {
                    let fingerprint = v.fingerprint();
                    relisted.insert(v.uid, fingerprint);
                }
            }
            watcher::Event::InitDone => {
                listing = false;
                seen = std::mem::take(&mut relisted);
                gctx.nodes_listed.store(true, Ordering::SeqCst);
                triggers.all_groups();
            }
            watcher::Event::Apply(n) => {
                let Some(v) = group::nodes::NodeView::of(&n) else { continue };
                let fingerprint = v.fingerprint();
                if seen.insert(v.uid, fingerprint) != Some(fingerprint) && !listing {
                    triggers.all_groups();
                }
            }
            watcher::Event::Delete(n) => {
                if let Some(uid) = n.uid() {
                    seen.remove(&uid);
                    gctx.provider_ids.forget(&uid);
                }
                triggers.all_groups();
            }
        }
    }
}

/// Namespaces' labels and annotations (metadata only: nothing else of a Namespace is read)
/// feed the tenancy policy; a change re-examines the namespace's bindings held by a policy
/// refusal at once, so relabelling a namespace takes effect without a restart.
async fn watch_namespaces(
    client: kube::Client,
    ctx: Arc<Context>,
    triggers: Arc<Triggers>,
    synced: Arc<Synced>,
    stop: CancellationToken,
) {
    use crate::api::v1alpha1::Reason;
    let namespaces: Api<PartialObjectMeta<Namespace>> = Api::all(client);
    let events = watcher(namespaces, watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events.take_until(stop.cancelled_owned()));
    let mut listed = false;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                // Bindings that need the policy wait for it (and /readyz says not ready until
                // the first list): say why. The watcher backs off between tries.
                tracing::warn!(error = %e, "cannot watch Namespaces (the tenancy policy): bindings that need it wait");
                continue;
            }
        };
        for namespace in ctx.targets.tenancy().apply(&event) {
            triggers.groups_in(&namespace);
            for claim in ctx.index.in_namespace(&namespace) {
                ctx.backoffs
                    .release_hold_for(claim.uid(), &[Reason::DefaultCredentialsNotAllowed, Reason::ProjectNotAllowed]);
                triggers.binding(claim.object_ref());
            }
        }
        if matches!(event, watcher::Event::InitDone) && !listed {
            listed = true;
            synced.one_done();
        }
    }
}

struct Parts {
    client: kube::Client,
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    stop: CancellationToken,
    synced: Arc<Synced>,
    scope_synced: Arc<AtomicBool>,
    triggers: Arc<Triggers>,
}

fn scoped_api<K>(client: kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
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
    let observer = Arc::new(Observer {
        ctx: p.ctx.clone(),
        triggers: p.triggers.clone(),
        scope: p.namespace.clone(),
        synced: p.synced.clone(),
        scope_synced: p.scope_synced.clone(),
    });
    let binding_stream = watcher(bindings, watcher::Config::default())
        .default_backoff()
        .modify(slim_binding)
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                observer.binding_event(event);
            }
        })
        .touched_objects();
    let secret_stream = watcher(secrets, watcher::Config::default()).default_backoff().touched_objects();
    let (store, mapper_ctx) = (reader.clone(), p.ctx.clone());
    let secret_mapper = move |secret: PartialObjectMeta<Secret>| users_of_secret(&mapper_ctx, &store, &secret);
    let controller = Controller::for_stream(binding_stream, reader.clone())
        .watches_stream(secret_stream, secret_mapper)
        .reconcile_on(triggered)
        .with_config(ControllerConfig::default().concurrency(p.concurrency))
        .graceful_shutdown_on(p.stop.cancelled_owned())
        .run(reconcile::reconcile, error_policy, p.ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, action)) => tracing::trace!(object = %obj, ?action, "reconciled"),
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    tracing::trace!(object = %obj, "object gone before reconcile")
                }
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        });
    (controller, reader)
}

/// What one scope's binding watch events do besides filling the cache.
struct Observer {
    ctx: Arc<Context>,
    triggers: Arc<Triggers>,
    scope: Option<String>,
    synced: Arc<Synced>,
    scope_synced: Arc<AtomicBool>,
}

impl Observer {
    fn binding_event(&self, event: &watcher::Event<VipBinding>) {
        if let watcher::Event::Apply(b) | watcher::Event::InitApply(b) = event {
            self.ctx.memory.observe(b);
        }
        if let watcher::Event::Apply(b) | watcher::Event::Delete(b) = event
            && let Some(group) = group::reconcile::group_of(b)
        {
            self.triggers.group(group);
        }
        let changes = self.ctx.index.apply(self.scope.as_deref(), event);
        for owner in changes.new_owners {
            // The NIC's previous owner is gone: the next in line may bind now.
            self.ctx.backoffs.release_hold(owner.uid());
            self.triggers.binding(owner.object_ref());
        }
        for (ns, name) in changes.secrets {
            self.triggers.secret(&ns, &name);
        }
        for claim in changes.gone {
            // Backoffs and drift entries of an object that left without a release (no
            // finalizer yet, or one removed by hand) would otherwise stay for ever.
            self.ctx.forget_key(claim.uid());
        }
        if matches!(event, watcher::Event::InitDone) && !self.scope_synced.swap(true, Ordering::SeqCst) {
            self.synced.one_done();
        }
    }
}

/// A Secret event re-examines the bindings that use it (e.g. one waiting for credentials):
/// found through the index, so a cluster's stream of unrelated Secret changes costs nothing.
fn users_of_secret(
    ctx: &Context,
    store: &Store<VipBinding>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<VipBinding>> {
    let (ns, name) = (secret.namespace().unwrap_or_default(), secret.name_any());
    let mut refs: Vec<ObjectRef<VipBinding>> =
        ctx.index.secret_users(&ns, &name).iter().map(Claim::object_ref).collect();
    if ctx.targets.is_default_secret(&ns, &name) {
        refs.extend(
            store.state().iter().filter(|b| b.spec.credentials_secret_ref.is_none()).map(|b| ObjectRef::from_obj(&**b)),
        );
    }
    for uid in refs.iter().filter_map(|r| r.extra.uid.as_deref()) {
        // New or rotated credentials deserve a try now, whatever the backoff says.
        ctx.backoffs.release_hold(&ObjectKey::from(uid));
    }
    refs
}

/// The credentials Secret guard for one watch scope (see [`guard`]).
async fn guard_controller(
    client: kube::Client,
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
