//! The VipBinding controller: watches, the reconcile context, and the error policy.

pub mod decide;
pub mod kube;
pub mod memory;
pub mod policy;
pub mod reconcile;
pub mod status;
pub mod target;

use std::sync::Arc;
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

use crate::api::v1alpha1::VipBinding;
use crate::ecs::{BindRequest, Clock, CloudTarget, EcsApi, EcsError, ErrorClass, UnbindRequest};

use self::decide::{Facts, Verdict};
use self::kube::KubeOps;
use self::policy::{AuthGate, Backoffs};
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
        }
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

    pub fn now(&self) -> Time {
        Time(self.clock.now())
    }

    pub fn facts(&self, _b: &VipBinding) -> Facts {
        Facts::default()
    }

    /// What to do after a reconcile that left the binding as its spec asks.
    pub fn after_success(&self, _b: &VipBinding, key: &str) -> Action {
        self.backoffs.reset(key);
        Action::await_change()
    }

    /// The binding is gone from our point of view (finalizer removed).
    pub fn forget(&self, b: &VipBinding) {
        self.backoffs.reset(&object_key(b));
    }

    pub fn note_credentials_problem(&self, _b: &VipBinding, verdict: &Verdict) {
        if let (Some(m), crate::api::v1alpha1::Reason::CredentialsUnavailable) = (&self.metrics, verdict.reason) {
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

    async fn gated<F>(&self, target: &CloudTarget, call: F) -> Result<String, EcsError>
    where
        F: Future<Output = Result<String, EcsError>>,
    {
        let _probe = match self.auth_gate.admit(&target.credentials).await {
            Ok(probe) => probe,
            Err(message) => {
                if let Some(m) = &self.metrics {
                    m.held_back.inc();
                }
                return Err(EcsError::HeldBack(message));
            }
        };
        let result = call.await;
        match &result {
            Ok(_) => self.auth_gate.accepted(&target.credentials),
            Err(e) if e.class() == ErrorClass::Auth => self.auth_gate.refused(&target.credentials, &e.to_string()),
            Err(_) => {}
        }
        result
    }

    pub async fn bind(&self, target: &CloudTarget, req: &BindRequest, _reassert: bool) -> Result<String, EcsError> {
        self.gated(target, self.cloud.bind(target, req)).await
    }

    pub async fn unbind(&self, target: &CloudTarget, req: &UnbindRequest) -> Result<String, EcsError> {
        self.gated(target, self.cloud.unbind(target, req)).await
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
    let key = object_key(&b);
    let n = ctx.backoffs.failures(&key);
    let delay = match error.kind() {
        "conflict" | "invalid" => Duration::from_millis(500),
        _ => Duration::from_secs(1).saturating_mul(2u32.saturating_pow(n.min(6))),
    };
    // Count it, so repeated API failures back off.
    let _ = ctx.backoffs.next(&key, trigger_fingerprint(&b), crate::api::v1alpha1::Reason::CloudUnavailable, None);
    ctx.backoffs.release_hold(&key);
    Action::requeue(delay.min(Duration::from_secs(60)))
}

#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Watch these namespaces; all when empty.
    pub namespaces: Vec<String>,
    /// Reconciles in parallel (per watched namespace when several are given).
    pub concurrency: u16,
}

/// Lets the rest of the process see the controller's caches (metrics, readiness).
#[derive(Clone, Default)]
pub struct Hooks {
    pub stores: Arc<std::sync::RwLock<Vec<Store<VipBinding>>>>,
    pub health: Option<Arc<crate::admin::Health>>,
}

/// Counts down the watches that still have to finish their initial list.
struct Synced {
    remaining: std::sync::atomic::AtomicUsize,
    health: Option<Arc<crate::admin::Health>>,
}

impl Synced {
    fn one_done(&self) {
        if self.remaining.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            tracing::info!("initial watch sync complete");
            if let Some(h) = &self.health {
                h.synced();
            }
        }
    }
}

fn strip_managed_fields<K: Resource>(obj: &mut K) {
    // managedFields are the largest part of most objects and we never read them.
    obj.meta_mut().managed_fields = None;
}

/// Runs the controller until `stop` is cancelled, then lets in-flight reconciles finish.
/// Several namespaces run one controller each (a watch covers one namespace or all), sharing
/// the context: one cloud client, one rate limit, one backoff table.
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
    let synced =
        Arc::new(Synced { remaining: std::sync::atomic::AtomicUsize::new(scopes.len()), health: hooks.health.clone() });
    let controllers: Vec<_> = scopes
        .into_iter()
        .map(|namespace| {
            let (controller, reader) =
                build(client.clone(), ctx.clone(), namespace, config.concurrency, stop.clone(), synced.clone());
            if let Ok(mut stores) = hooks.stores.write() {
                stores.push(reader);
            }
            controller
        })
        .collect();
    futures::future::join_all(controllers).await;
}

fn build(
    client: ::kube::Client,
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    stop: CancellationToken,
    synced: Arc<Synced>,
) -> (impl Future<Output = ()> + use<>, Store<VipBinding>) {
    let namespace = namespace.as_deref();
    let bindings: Api<VipBinding> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // Metadata only: enough to notice a Secret changed, without caching every Secret's data.
    let secrets: Api<PartialObjectMeta<Secret>> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    let first_sync = std::sync::atomic::AtomicBool::new(false);
    let binding_stream = watcher(bindings, watcher::Config::default())
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(writer)
        .inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone))
                && !first_sync.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                synced.one_done();
            }
        })
        .touched_objects();
    let secret_stream = watcher(secrets, watcher::Config::default()).default_backoff().touched_objects();
    let store = reader.clone();
    let mapper_ctx = ctx.clone();
    // A Secret event re-examines the bindings that use it (e.g. one waiting for credentials).
    let secret_mapper = move |secret: PartialObjectMeta<Secret>| {
        let (ns, name) = (secret.namespace().unwrap_or_default(), secret.name_any());
        store
            .state()
            .into_iter()
            .filter(|b| mapper_ctx.targets.uses_secret(b, &ns, &name))
            .map(|b| {
                // New or rotated credentials deserve a try now, whatever the backoff says.
                mapper_ctx.backoffs.release_hold(&object_key(&b));
                ObjectRef::from_obj(&*b)
            })
            .collect::<Vec<_>>()
    };
    let controller = Controller::for_stream(binding_stream, reader.clone())
        .watches_stream(secret_stream, secret_mapper)
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile::reconcile, error_policy, ctx)
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
