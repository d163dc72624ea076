//! Prometheus metrics. Every label value comes from a closed set (reasons, error classes,
//! operations, a fixed list of Huawei codes), never from object names or error text.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::group::VipGroup;
use crate::api::v1alpha1::{BindApi, CONDITION_READY, Reason, VipBinding};
use crate::ecs::budget::{Priority, Service};
use crate::ecs::client::{AttemptReport, CallObserver};
use crate::ecs::{EcsError, ErrorClass};

/// Huawei codes worth a label of their own (the documented ones); others are "other".
const KNOWN_CODES: &[&str] = &[
    "Ecs.0005",
    "Ecs.0000",
    "Ecs.0038",
    "Ecs.0039",
    "Ecs.0014",
    "Ecs.0010",
    "Ecs.0085",
    "Ecs.0213",
    "Ecs.0307",
    "Ecs.0323",
    "APIGW.0301",
    "Common.0013",
    "APIGW.0302",
    "Ecs.0110",
    "Pdp.0001",
    "Ecs.0114",
    "Ecs.0614",
    "APIGW.0308",
    "Common.0001",
    "Common.1503",
    "APIGW.0201",
    "Ecs.0603",
    "APIGW.0101",
];

pub fn code_label(e: &EcsError) -> &'static str {
    match e.code() {
        None => "none",
        Some(code) => KNOWN_CODES.iter().find(|k| **k == code).copied().unwrap_or("other"),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloudLabels {
    pub operation: &'static str,
    pub outcome: &'static str,
    pub code: &'static str,
    /// The HTTP status as a class (`2xx`, `4xx`, `429`, `5xx`), `none` without an answer: what
    /// the 5xx and throttling alerts need, which the outcome (`retryable` covers both) lacks.
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    /// `ecs` or `vpc`.
    pub service: &'static str,
    /// `user` or `background`.
    pub priority: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// `ECS` or `VPC`.
    pub api: &'static str,
}

/// VipBindings of one namespace with one Ready reason. Bounded by namespaces x reasons present
/// (a pair with no binding has no series), not by bindings.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceReasonLabels {
    pub namespace: String,
    pub reason: &'static str,
}

/// The oldest deleting VipBinding of one namespace and reason, named: one series per
/// (namespace, reason) with deletions, so an alert can name a binding without a series per
/// binding.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OldestDeletionLabels {
    pub namespace: String,
    pub reason: &'static str,
    pub binding: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceApiLabels {
    pub namespace: String,
    pub api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

const GROUP_MEMBERS_HELP: &str =
    "Each VipGroup's members by state: desired (matching nodes), bound, failing (cannot be bound as things stand)";

/// One VipGroup's members in one state. Bounded by the number of groups (objects users create
/// by hand, like namespaces), not by members; a group's series go when the group does.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub namespace: String,
    pub group: String,
    /// `desired`, `bound` or `failing`.
    pub state: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub cloud_requests: Family<CloudLabels, Counter>,
    pub cloud_latency: Family<OperationLabels, Histogram>,
    /// Time each cloud attempt waited for its budget's token, by service and priority.
    pub budget_wait: Family<BudgetLabels, Histogram>,
    pub bindings: Family<NamespaceReasonLabels, Gauge>,
    /// Deleting VipBindings by namespace and reason.
    pub deleting: Family<NamespaceReasonLabels, Gauge>,
    /// The oldest deleting VipBinding's age, per namespace and reason, named.
    pub deletion_age: Family<OldestDeletionLabels, Gauge<f64, AtomicU64>>,
    pub oldest_terminating_seconds: Gauge<f64, AtomicU64>,
    pub leader: Gauge,
    /// 1 while /readyz answers ready (set at scrape time).
    pub ready: Gauge,
    pub drift_reasserts: Counter,
    /// Drift checks started (re-binds of a bound binding at its resync), by API.
    pub drift_checks: Family<ApiLabels, Counter>,
    /// Drift checks that found the cloud changed and put it back, by namespace and API.
    pub drift_repairs: Family<NamespaceApiLabels, Counter>,
    pub credentials_unavailable: Counter,
    pub held_back: Counter,
    pub vpc_reads_denied: Counter,
    /// `managementPolicy: Observe` bindings found not matching their spec (reported, not repaired).
    pub observed_drift: Counter,
    pub drift_compared_in_place: Counter,
    pub drift_compared_drifted: Counter,
    /// Write attempts that ended without a trusted answer (they may still land), by operation.
    pub writes_unsettled: Family<OperationLabels, Counter>,
    /// Binds whose binding left the API while they were in flight, by whether they were undone.
    pub orphaned_binds: Family<OutcomeLabels, Counter>,
    /// Each VipGroup's members: desired, bound, failing.
    pub group_members: Family<GroupLabels, Gauge>,
    /// The label sets of the cache gauges set at the last scrape: the next one removes those it
    /// does not set again (a namespace emptied, a deletion done), so a gone series goes stale
    /// instead of lingering at its last value. Held across the whole refresh: scrapes do not
    /// interleave their removals.
    cache_series: std::sync::Mutex<CacheSeries>,
}

#[derive(Default)]
struct CacheSeries {
    bindings: HashSet<NamespaceReasonLabels>,
    deleting: HashSet<NamespaceReasonLabels>,
    deletion_age: HashSet<OldestDeletionLabels>,
    groups: HashSet<GroupLabels>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    // 5 ms .. ~82 s
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

const WRITES_UNSETTLED_HELP: &str = "Cloud write attempts that ended without an answer saying whether they applied (timeout, lost connection, 5xx): the cloud may still apply them within --write-horizon";
const ORPHANED_BINDS_HELP: &str = "Binds whose binding left the API while they were in flight, its finalizer notwithstanding (a kube-apiserver race), by outcome: undone, or left (the undo failed; the VIP may still be bound)";

/// A counter registered under `name`.
fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    registered(registry, name, help, Counter::default())
}

/// `metric`, registered under `name`.
fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// `metric`, registered under `name` in seconds.
fn registered_seconds<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register_with_unit(name, help, prometheus_client::registry::Unit::Seconds, metric.clone());
    metric
}

/// Each metric's help text.
mod help {
    pub const RECONCILES: &str = "Reconciles by result: ok (as the spec asks), waiting (held or a recorded cloud failure), error (Kubernetes API failure)";
    pub const RECONCILE_DURATION: &str = "Duration of one reconcile, cloud calls included";
    pub const CLOUD_REQUESTS: &str =
        "Cloud HTTP attempts (ECS and VPC) by operation, outcome (ok or error class) and Huawei error code";
    pub const CLOUD_REQUEST_DURATION: &str = "Latency of one cloud HTTP attempt (ECS or VPC)";
    pub const CLOUD_BUDGET_WAIT: &str =
        "Time a cloud attempt waited for a token of its budget (access key, region, service), by service and priority";
    pub const BINDINGS: &str = "VipBindings by namespace and the reason of their Ready condition (None: no status yet); a pair with none has no series";
    pub const DELETING_BINDINGS: &str =
        "VipBindings being deleted (finalizer held) by namespace and the reason of their Ready condition";
    pub const OLDEST_DELETION_AGE: &str =
        "For each namespace and reason among VipBindings being deleted: how long the oldest has waited, and its name";
    pub const OLDEST_TERMINATING_BINDING_AGE: &str =
        "How long the oldest VipBinding has been waiting to be deleted (0 when none)";
    pub const LEADER: &str = "1 while this replica is the leader and reconciles";
    pub const READY: &str = "1 while this replica's /readyz answers ready";
    pub const DRIFT_CHECKS: &str =
        "Drift checks started: a bound binding checked against the cloud at its resync, by API";
    pub const DRIFT_REPAIRS: &str = "Drift checks that found the binding undone in the cloud and put it back, by namespace and API (VPC: ECS's bind call cannot tell a repair from a no-op)";
    pub const DRIFT_REASSERTS: &str = "Binds re-asserted by the periodic drift check";
    pub const CREDENTIALS_UNAVAILABLE: &str = "Reconciles that found no usable credentials for a binding";
    pub const OBSERVED_DRIFT: &str =
        "Times an Observe binding was found not matching its spec (reported, not repaired)";
    pub const VPC_READS_DENIED: &str = "Credentials (access key and project) found without VPC read permission: releases then rest on ECS answers alone";
    pub const DRIFT_COMPARED_IN_PLACE: &str =
        "VPC bindings a drift listing showed bound as recorded (no call of their own)";
    pub const DRIFT_COMPARED_DRIFTED: &str = "VPC bindings a drift listing showed not bound (reconciled and re-bound)";
    pub const CLOUD_CALLS_HELD_BACK: &str =
        "Cloud calls not sent because the cloud had just refused the same access key";
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vipop");
        let r = &mut registry;
        let cloud_latency =
            Family::<OperationLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let budget_wait =
            Family::<BudgetLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        Self {
            reconciles: registered(r, "reconciles", help::RECONCILES, Family::default()),
            reconcile_duration: registered_seconds(
                r,
                "reconcile_duration",
                help::RECONCILE_DURATION,
                latency_histogram(),
            ),
            cloud_requests: registered(r, "cloud_requests", help::CLOUD_REQUESTS, Family::default()),
            cloud_latency: registered_seconds(r, "cloud_request_duration", help::CLOUD_REQUEST_DURATION, cloud_latency),
            budget_wait: registered_seconds(r, "cloud_budget_wait", help::CLOUD_BUDGET_WAIT, budget_wait),
            bindings: registered(r, "bindings", help::BINDINGS, Family::default()),
            deleting: registered(r, "deleting_bindings", help::DELETING_BINDINGS, Family::default()),
            deletion_age: registered_seconds(r, "oldest_deletion_age", help::OLDEST_DELETION_AGE, Family::default()),
            oldest_terminating_seconds: registered_seconds(
                r,
                "oldest_terminating_binding_age",
                help::OLDEST_TERMINATING_BINDING_AGE,
                Gauge::<f64, AtomicU64>::default(),
            ),
            leader: registered(r, "leader", help::LEADER, Gauge::default()),
            ready: registered(r, "ready", help::READY, Gauge::default()),
            drift_checks: registered(r, "drift_checks", help::DRIFT_CHECKS, Family::default()),
            drift_repairs: registered(r, "drift_repairs", help::DRIFT_REPAIRS, Family::default()),
            writes_unsettled: registered(r, "writes_unsettled", WRITES_UNSETTLED_HELP, Family::default()),
            orphaned_binds: registered(r, "orphaned_binds", ORPHANED_BINDS_HELP, Family::default()),
            group_members: registered(r, "group_members", GROUP_MEMBERS_HELP, Family::default()),
            drift_reasserts: counter(r, "drift_reasserts", help::DRIFT_REASSERTS),
            credentials_unavailable: counter(r, "credentials_unavailable", help::CREDENTIALS_UNAVAILABLE),
            observed_drift: counter(r, "observed_drift", help::OBSERVED_DRIFT),
            vpc_reads_denied: counter(r, "vpc_reads_denied", help::VPC_READS_DENIED),
            drift_compared_in_place: counter(r, "drift_compared_in_place", help::DRIFT_COMPARED_IN_PLACE),
            drift_compared_drifted: counter(r, "drift_compared_drifted", help::DRIFT_COMPARED_DRIFTED),
            held_back: counter(r, "cloud_calls_held_back", help::CLOUD_CALLS_HELD_BACK),
            cache_series: std::sync::Mutex::default(),
            // Last: the fields above register into it first.
            registry,
        }
        .initialized()
    }

    /// Creates the series of the bounded families at zero, so that `rate()` and the dashboard
    /// see them from the first scrape, not from the first event.
    fn initialized(self) -> Self {
        for result in ["ok", "waiting", "error"] {
            drop(self.reconciles.get_or_create(&ResultLabels { result }));
        }
        for op in [crate::ecs::Operation::Bind, crate::ecs::Operation::Unbind, crate::ecs::Operation::UpdatePort] {
            drop(self.writes_unsettled.get_or_create(&OperationLabels { operation: op.as_str() }));
        }
        for outcome in ["undone", "left"] {
            drop(self.orphaned_binds.get_or_create(&OutcomeLabels { outcome }));
        }
        for api in [BindApi::Ecs, BindApi::Vpc] {
            drop(self.drift_checks.get_or_create(&ApiLabels { api: api.as_str() }));
        }
        for service in [Service::Ecs, Service::Vpc] {
            for priority in [Priority::User, Priority::Background] {
                drop(
                    self.budget_wait
                        .get_or_create(&BudgetLabels { service: service.as_str(), priority: priority.as_str() }),
                );
            }
        }
        self
    }

    pub fn drift_repaired(&self, namespace: &str, api: &'static str) {
        self.drift_repairs.get_or_create(&NamespaceApiLabels { namespace: namespace.into(), api }).inc();
    }

    pub fn reconciled(&self, result: &'static str, elapsed: Duration) {
        self.reconciles.get_or_create(&ResultLabels { result }).inc();
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    /// The group gauges from the groups' status, at scrape time: a group gone (however: its
    /// finalizer stripped by hand too) or deleting has no series; one without a status yet
    /// neither.
    pub fn refresh_groups<'a>(&self, groups: impl Iterator<Item = &'a VipGroup>) {
        let mut now = HashMap::new();
        for g in groups.filter(|g| g.metadata.deletion_timestamp.is_none()) {
            let Some(s) = &g.status else { continue };
            let (namespace, group) = (g.metadata.namespace.clone().unwrap_or_default(), g.metadata.name.clone());
            for (state, n) in [("desired", s.desired), ("bound", s.bound), ("failing", s.failing)] {
                let labels =
                    GroupLabels { namespace: namespace.clone(), group: group.clone().unwrap_or_default(), state };
                now.insert(labels, i64::from(n));
            }
        }
        let mut seen = self.cache_series.lock().unwrap_or_else(|p| p.into_inner());
        seen.groups = replace_series(&self.group_members, &seen.groups, now, |g, n| {
            g.set(n);
        });
    }

    /// Recomputes the gauges that describe the cache (called at scrape time).
    pub fn refresh_bindings<'a>(&self, bindings: impl Iterator<Item = &'a VipBinding>, now: jiff::Timestamp) {
        let mut counts: HashMap<NamespaceReasonLabels, i64> = HashMap::new();
        let mut deleting: HashMap<NamespaceReasonLabels, i64> = HashMap::new();
        // Per (namespace, reason): the oldest deletion's timestamp and name.
        let mut oldest_by: HashMap<NamespaceReasonLabels, (jiff::Timestamp, String)> = HashMap::new();
        let mut oldest: Option<jiff::Timestamp> = None;
        let mut vpc_namespaces = HashSet::new();
        for b in bindings {
            let reason =
                b.condition(CONDITION_READY).and_then(|c| Reason::parse(&c.reason)).map_or("None", Reason::as_str);
            let key = NamespaceReasonLabels { namespace: b.metadata.namespace.clone().unwrap_or_default(), reason };
            if b.status.as_ref().and_then(|s| s.bound_with.as_ref()).is_some_and(|w| w.api() == BindApi::Vpc) {
                vpc_namespaces.insert(key.namespace.clone());
            }
            *counts.entry(key.clone()).or_default() += 1;
            if let Some(ts) = &b.metadata.deletion_timestamp {
                oldest = Some(oldest.map_or(ts.0, |o| o.min(ts.0)));
                *deleting.entry(key.clone()).or_default() += 1;
                let name = b.metadata.name.clone().unwrap_or_default();
                let entry = oldest_by.entry(key).or_insert_with(|| (ts.0, name.clone()));
                // Ties go to the smaller name, so the named binding does not flap between scrapes.
                if (ts.0, &name) < (entry.0, &entry.1) {
                    *entry = (ts.0, name);
                }
            }
        }
        // A namespace's repair series exists, at zero, from the first scrape that sees one of its
        // VPC bindings bound: increase() cannot see a series' first value, so a counter born
        // at 1 would hide the namespace's first repair.
        for namespace in vpc_namespaces {
            drop(self.drift_repairs.get_or_create(&NamespaceApiLabels { namespace, api: BindApi::Vpc.as_str() }));
        }
        let age = |t: jiff::Timestamp| (now.as_millisecond().saturating_sub(t.as_millisecond())).max(0) as f64 / 1000.0;
        let mut seen = self.cache_series.lock().unwrap_or_else(|p| p.into_inner());
        seen.bindings = replace_series(&self.bindings, &seen.bindings, counts, |g, n| {
            g.set(n);
        });
        seen.deleting = replace_series(&self.deleting, &seen.deleting, deleting, |g, n| {
            g.set(n);
        });
        let ages = oldest_by
            .into_iter()
            .map(|(k, (ts, binding))| {
                (OldestDeletionLabels { namespace: k.namespace, reason: k.reason, binding }, age(ts))
            })
            .collect();
        seen.deletion_age = replace_series(&self.deletion_age, &seen.deletion_age, ages, |g, a| {
            g.set(a);
        });
        self.oldest_terminating_seconds.set(oldest.map(age).unwrap_or(0.0));
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Sets `family` to `now` and removes the series set last time (`before`) but not now; returns
/// the label sets now set.
fn replace_series<L, M, V>(
    family: &Family<L, M>,
    before: &HashSet<L>,
    now: HashMap<L, V>,
    set: impl Fn(&M, V),
) -> HashSet<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
    M: prometheus_client::metrics::TypedMetric + Default + Send + Sync + 'static,
    Family<L, M>: prometheus_client::registry::Metric,
{
    for gone in before.iter().filter(|l| !now.contains_key(*l)) {
        family.remove(gone);
    }
    let mut labels = HashSet::with_capacity(now.len());
    for (l, v) in now {
        set(&family.get_or_create(&l), v);
        labels.insert(l);
    }
    labels
}

impl CallObserver for Metrics {
    fn attempt(&self, report: &AttemptReport<'_>) {
        let operation = report.operation.as_str();
        let (outcome, code, status) = match report.result {
            Ok(()) => ("ok", "none", "2xx"),
            Err(e) => (class_label(e.class()), code_label(e), status_label(e)),
        };
        self.cloud_requests.get_or_create(&CloudLabels { operation, outcome, code, status }).inc();
        self.cloud_latency.get_or_create(&OperationLabels { operation }).observe(report.elapsed.as_secs_f64());
    }

    fn write_unsettled(&self, op: crate::ecs::Operation, _subject: &str) {
        self.writes_unsettled.get_or_create(&OperationLabels { operation: op.as_str() }).inc();
    }

    fn budget_waited(&self, service: Service, priority: Priority, waited: Duration) {
        let labels = BudgetLabels { service: service.as_str(), priority: priority.as_str() };
        self.budget_wait.get_or_create(&labels).observe(waited.as_secs_f64());
    }
}

/// The HTTP status class of an error answer; `none` when there was none (timeout, transport).
/// `429` also for the gateway's flow-control codes, whatever status carried them: throttling.
fn status_label(e: &EcsError) -> &'static str {
    if e.is_throttled() {
        return "429";
    }
    match e.status() {
        None => "none",
        Some(500..=599) => "5xx",
        Some(400..=499) => "4xx",
        Some(_) => "other",
    }
}

fn class_label(class: ErrorClass) -> &'static str {
    class.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::group::VipGroup;
    use crate::ecs::Operation;
    use crate::ecs::error::ApiError;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn api(status: u16, code: &str) -> EcsError {
        EcsError::Api(ApiError {
            status,
            code: Some(code.into()),
            message: "m".into(),
            detail_codes: vec![],
            request_id: Some("rid-should-not-appear".into()),
            retry_after: None,
        })
    }

    #[test]
    fn cloud_attempts_are_counted_with_bounded_labels() {
        let m = Metrics::new();
        let ok = AttemptReport { operation: Operation::Bind, result: Ok(()), elapsed: Duration::from_millis(40) };
        m.attempt(&ok);
        let e = api(500, "Common.0001");
        m.attempt(&AttemptReport { operation: Operation::Unbind, result: Err(&e), elapsed: Duration::from_millis(5) });
        let weird = api(400, "Made.Up.Code.12345");
        m.attempt(&AttemptReport { operation: Operation::Bind, result: Err(&weird), elapsed: Duration::ZERO });
        let throttled = api(429, "APIGW.0308");
        m.attempt(&AttemptReport { operation: Operation::Bind, result: Err(&throttled), elapsed: Duration::ZERO });
        let flow_control = api(400, "Common.1503");
        m.attempt(&AttemptReport { operation: Operation::Bind, result: Err(&flow_control), elapsed: Duration::ZERO });
        let text = m.encode().unwrap();
        assert!(
            text.contains(r#"vipop_cloud_requests_total{operation="bind",outcome="ok",code="none",status="2xx"} 1"#),
            "{text}"
        );
        assert!(text.contains(
            r#"vipop_cloud_requests_total{operation="unbind",outcome="retryable",code="Common.0001",status="5xx"} 1"#
        ));
        assert!(text.contains(
            r#"vipop_cloud_requests_total{operation="bind",outcome="terminal",code="other",status="4xx"} 1"#
        ));
        assert!(text.contains(r#"code="APIGW.0308",status="429"} 1"#), "{text}");
        assert!(text.contains(r#"code="Common.1503",status="429"} 1"#), "flow control is throttling too: {text}");
        assert!(!text.contains("Made.Up"));
        assert!(!text.contains("rid-should-not-appear"));
        assert!(text.contains("vipop_cloud_request_duration_seconds_count{operation=\"bind\"} 4"));
    }

    fn binding(ns: &str, name: &str, reason: Option<&str>, deleting_since: Option<&str>) -> VipBinding {
        let mut b: VipBinding = serde_json::from_value(serde_json::json!({
            "apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipBinding",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"nicId": "n1", "ipAddress": "10.0.0.1", "subnetId": "s"},
        }))
        .unwrap();
        if let Some(reason) = reason {
            b.status = serde_json::from_value(serde_json::json!({"conditions": [{"type": "Ready", "status": "False",
                "reason": reason, "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}))
            .unwrap();
        }
        b.metadata.deletion_timestamp = deleting_since.map(|t| Time(t.parse().unwrap()));
        b
    }

    #[test]
    fn binding_gauges_count_by_namespace_and_reason_and_name_the_oldest_deletion() {
        let m = Metrics::new();
        let t0 = "2026-01-01T00:00:00Z";
        let bindings = [
            binding("team-a", "a", Some("EndpointNotFound"), Some(t0)),
            binding("team-a", "b", Some("EndpointNotFound"), Some("2026-01-01T00:00:30Z")),
            binding("team-a", "c", Some("Bound"), None),
            binding("team-b", "d", None, None),
        ];
        m.refresh_bindings(bindings.iter(), "2026-01-01T00:01:40Z".parse().unwrap());
        let text = m.encode().unwrap();
        assert!(text.contains(r#"vipop_bindings{namespace="team-a",reason="EndpointNotFound"} 2"#), "{text}");
        assert!(text.contains(r#"vipop_bindings{namespace="team-a",reason="Bound"} 1"#));
        assert!(text.contains(r#"vipop_bindings{namespace="team-b",reason="None"} 1"#));
        assert!(!text.contains(r#"reason="CloudUnavailable""#), "no series for a pair without bindings: {text}");
        assert!(text.contains(r#"vipop_deleting_bindings{namespace="team-a",reason="EndpointNotFound"} 2"#));
        assert!(
            text.contains(
                r#"vipop_oldest_deletion_age_seconds{namespace="team-a",reason="EndpointNotFound",binding="a"} 100.0"#
            ),
            "{text}"
        );
        assert!(text.contains("vipop_oldest_terminating_binding_age_seconds 100.0"));

        // The oldest goes, team-b's binding goes: their series go with them (stale, not frozen).
        m.refresh_bindings([&bindings[1], &bindings[2]].into_iter(), "2026-01-01T00:01:40Z".parse().unwrap());
        let text = m.encode().unwrap();
        assert!(text.contains(r#"vipop_bindings{namespace="team-a",reason="EndpointNotFound"} 1"#), "{text}");
        assert!(!text.contains(r#"namespace="team-b""#), "{text}");
        assert!(text.contains(r#"reason="EndpointNotFound",binding="b"} 70.0"#), "{text}");
        assert!(!text.contains(r#"binding="a""#), "{text}");
        assert!(text.contains("vipop_oldest_terminating_binding_age_seconds 70.0"));

        m.refresh_bindings(std::iter::empty(), "2026-01-01T00:01:40Z".parse().unwrap());
        let text = m.encode().unwrap();
        assert!(!text.contains("vipop_bindings{"), "{text}");
        assert!(!text.contains("vipop_oldest_deletion_age_seconds{"), "{text}");
        assert!(text.contains("vipop_oldest_terminating_binding_age_seconds 0.0"));
    }

    #[test]
    fn group_gauges_follow_the_groups_status_and_go_with_the_group() {
        let m = Metrics::new();
        let group = |name: &str, failing: u32, deleting: bool| -> VipGroup {
            let mut g: VipGroup = serde_json::from_value(serde_json::json!({
                "apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipGroup",
                "metadata": {"name": name, "namespace": "team-a"},
                "spec": {"ipAddress": "10.0.0.1", "subnetId": "s", "nodeSelector": {"matchLabels": {"a": "b"}}},
                "status": {"desired": 3, "bound": 3 - failing, "failing": failing},
            }))
            .unwrap();
            if deleting {
                g.metadata.deletion_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
            }
            g
        };
        m.refresh_groups([group("web", 1, false), group("db", 0, false)].iter());
        let text = m.encode().unwrap();
        assert!(text.contains(r#"vipop_group_members{namespace="team-a",group="web",state="failing"} 1"#), "{text}");
        assert!(text.contains(r#"vipop_group_members{namespace="team-a",group="db",state="bound"} 3"#), "{text}");
        // web is deleting, db gone (say its finalizer was stripped by hand): no series lingers.
        m.refresh_groups([group("web", 1, true)].iter());
        let text = m.encode().unwrap();
        assert!(!text.contains("vipop_group_members{"), "{text}");
    }

    #[test]
    fn a_namespace_with_a_bound_vpc_binding_has_its_repair_series_before_its_first_repair() {
        let m = Metrics::new();
        let mut vpc = binding("team-v", "v", Some("Bound"), None);
        vpc.status.as_mut().unwrap().bound_with =
            serde_json::from_value(serde_json::json!({"projectId": "p", "api": "VPC"})).unwrap();
        let ecs = binding("team-e", "e", Some("Bound"), None);
        m.refresh_bindings([&vpc, &ecs].into_iter(), "2026-01-01T00:01:40Z".parse().unwrap());
        let text = m.encode().unwrap();
        assert!(text.contains(r#"vipop_drift_repairs_total{namespace="team-v",api="VPC"} 0"#), "{text}");
        assert!(!text.contains(r#"namespace="team-e",api="#), "{text}");
    }

    #[test]
    fn bounded_families_start_at_zero() {
        let text = Metrics::new().encode().unwrap();
        for series in [
            r#"vipop_reconciles_total{result="error"} 0"#,
            r#"vipop_writes_unsettled_total{operation="update_port"} 0"#,
            r#"vipop_orphaned_binds_total{outcome="left"} 0"#,
            r#"vipop_drift_checks_total{api="VPC"} 0"#,
            r#"vipop_cloud_budget_wait_seconds_count{service="ecs",priority="background"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[test]
    fn budget_waits_and_drift_repairs_are_counted() {
        let m = Metrics::new();
        m.budget_waited(Service::Vpc, Priority::User, Duration::from_millis(300));
        m.drift_repaired("team-a", "VPC");
        let text = m.encode().unwrap();
        assert!(text.contains(r#"vipop_cloud_budget_wait_seconds_count{service="vpc",priority="user"} 1"#), "{text}");
        assert!(text.contains(r#"vipop_drift_repairs_total{namespace="team-a",api="VPC"} 1"#), "{text}");
    }
}
