//! Prometheus metrics. Every label value comes from a closed set (reasons, error classes,
//! operations, a fixed list of Huawei codes), never from object names or error text.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::v1alpha1::{CONDITION_READY, Reason, VipBinding};
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
    pub bindings: Family<ReasonLabels, Gauge>,
    pub oldest_terminating_seconds: Gauge<f64, AtomicU64>,
    pub leader: Gauge,
    pub drift_reasserts: Counter,
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

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vipop");
        let r = &mut registry;
        let cloud_latency =
            Family::<OperationLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        Self {
            reconciles: registered(
                r,
                "reconciles",
                "Reconciles by result: ok (as the spec asks), waiting (held or a recorded cloud failure), error (Kubernetes API failure)",
                Family::default(),
            ),
            reconcile_duration: registered_seconds(
                r,
                "reconcile_duration",
                "Duration of one reconcile, cloud calls included",
                latency_histogram(),
            ),
            cloud_requests: registered(
                r,
                "cloud_requests",
                "Cloud HTTP attempts (ECS and VPC) by operation, outcome (ok or error class) and Huawei error code",
                Family::default(),
            ),
            cloud_latency: registered_seconds(
                r,
                "cloud_request_duration",
                "Latency of one cloud HTTP attempt (ECS or VPC)",
                cloud_latency,
            ),
            bindings: registered(
                r,
                "bindings",
                "VipBindings by the reason of their Ready condition (None: no status yet)",
                Family::default(),
            ),
            oldest_terminating_seconds: registered_seconds(
                r,
                "oldest_terminating_binding_age",
                "How long the oldest VipBinding has been waiting to be deleted (0 when none)",
                Gauge::<f64, AtomicU64>::default(),
            ),
            leader: registered(r, "leader", "1 while this replica is the leader and reconciles", Gauge::default()),
            writes_unsettled: registered(r, "writes_unsettled", WRITES_UNSETTLED_HELP, Family::default()),
            orphaned_binds: registered(r, "orphaned_binds", ORPHANED_BINDS_HELP, Family::default()),
            group_members: registered(r, "group_members", GROUP_MEMBERS_HELP, Family::default()),
            drift_reasserts: counter(r, "drift_reasserts", "Binds re-asserted by the periodic drift check"),
            credentials_unavailable: counter(
                r,
                "credentials_unavailable",
                "Reconciles that found no usable credentials for a binding",
            ),
            observed_drift: counter(
                r,
                "observed_drift",
                "Times an Observe binding was found not matching its spec (reported, not repaired)",
            ),
            vpc_reads_denied: counter(
                r,
                "vpc_reads_denied",
                "Credentials (access key and project) found without VPC read permission: releases then rest on ECS answers alone",
            ),
            drift_compared_in_place: counter(
                r,
                "drift_compared_in_place",
                "VPC bindings a drift listing showed bound as recorded (no call of their own)",
            ),
            drift_compared_drifted: counter(
                r,
                "drift_compared_drifted",
                "VPC bindings a drift listing showed not bound (reconciled and re-bound)",
            ),
            held_back: counter(
                r,
                "cloud_calls_held_back",
                "Cloud calls not sent because the cloud had just refused the same access key",
            ),
            // Last: the fields above register into it first.
            registry,
        }
    }

    pub fn reconciled(&self, result: &'static str, elapsed: Duration) {
        self.reconciles.get_or_create(&ResultLabels { result }).inc();
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    /// Recomputes the gauges that describe the cache (called at scrape time).
    /// A group's counts as its status says them; `None`: the group is gone, its series too.
    pub fn set_group(&self, namespace: &str, group: &str, counts: Option<(u32, u32, u32)>) {
        for (i, state) in ["desired", "bound", "failing"].into_iter().enumerate() {
            let labels = GroupLabels { namespace: namespace.into(), group: group.into(), state };
            match counts {
                Some((desired, bound, failing)) => {
                    let n = [desired, bound, failing][i];
                    self.group_members.get_or_create(&labels).set(i64::from(n));
                }
                None => {
                    self.group_members.remove(&labels);
                }
            }
        }
    }

    pub fn refresh_bindings<'a>(&self, bindings: impl Iterator<Item = &'a VipBinding>, now: jiff::Timestamp) {
        let mut counts = [0i64; Reason::ALL.len()];
        let mut none = 0i64;
        let mut oldest: Option<jiff::Timestamp> = None;
        for b in bindings {
            match b.condition(CONDITION_READY).and_then(|c| Reason::parse(&c.reason)) {
                Some(r) => {
                    if let Some(i) = Reason::ALL.iter().position(|x| *x == r) {
                        counts[i] += 1;
                    }
                }
                None => none += 1,
            }
            if let Some(ts) = &b.metadata.deletion_timestamp {
                oldest = Some(oldest.map_or(ts.0, |o| o.min(ts.0)));
            }
        }
        for (i, r) in Reason::ALL.iter().enumerate() {
            self.bindings.get_or_create(&ReasonLabels { reason: r.as_str() }).set(counts[i]);
        }
        self.bindings.get_or_create(&ReasonLabels { reason: "None" }).set(none);
        let age = oldest.map(|o| (now.as_millisecond() - o.as_millisecond()).max(0) as f64 / 1000.0).unwrap_or(0.0);
        self.oldest_terminating_seconds.set(age);
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl CallObserver for Metrics {
    fn attempt(&self, report: &AttemptReport<'_>) {
        let operation = report.operation.as_str();
        let (outcome, code) = match report.result {
            Ok(()) => ("ok", "none"),
            Err(e) => (class_label(e.class()), code_label(e)),
        };
        self.cloud_requests.get_or_create(&CloudLabels { operation, outcome, code }).inc();
        self.cloud_latency.get_or_create(&OperationLabels { operation }).observe(report.elapsed.as_secs_f64());
    }

    fn write_unsettled(&self, op: crate::ecs::Operation, _subject: &str) {
        self.writes_unsettled.get_or_create(&OperationLabels { operation: op.as_str() }).inc();
    }
}

fn class_label(class: ErrorClass) -> &'static str {
    class.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::Operation;
    use crate::ecs::error::ApiError;

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
        let text = m.encode().unwrap();
        assert!(text.contains(r#"vipop_cloud_requests_total{operation="bind",outcome="ok",code="none"} 1"#), "{text}");
        assert!(
            text.contains(r#"vipop_cloud_requests_total{operation="unbind",outcome="retryable",code="Common.0001"} 1"#)
        );
        assert!(text.contains(r#"vipop_cloud_requests_total{operation="bind",outcome="terminal",code="other"} 1"#));
        assert!(!text.contains("Made.Up"));
        assert!(!text.contains("rid-should-not-appear"));
        assert!(text.contains("vipop_cloud_request_duration_seconds_count{operation=\"bind\"} 2"));
    }

    #[test]
    fn binding_gauges_cover_every_reason_and_the_oldest_deletion() {
        let m = Metrics::new();
        let mut a: VipBinding = serde_json::from_value(serde_json::json!({
            "apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipBinding",
            "metadata": {"name": "a", "namespace": "n", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nicId": "n1", "ipAddress": "10.0.0.1", "subnetId": "s"},
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "CloudUnavailable", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap();
        let b = a.clone();
        a.metadata.name = Some("b".into());
        let mut c = b.clone();
        c.status = None;
        c.metadata.deletion_timestamp = None;
        m.refresh_bindings([&a, &b, &c].into_iter(), "2026-01-01T00:01:40Z".parse().unwrap());
        let text = m.encode().unwrap();
        assert!(text.contains(r#"vipop_bindings{reason="CloudUnavailable"} 2"#), "{text}");
        assert!(text.contains(r#"vipop_bindings{reason="Bound"} 0"#));
        assert!(text.contains(r#"vipop_bindings{reason="None"} 1"#));
        assert!(text.contains("vipop_oldest_terminating_binding_age_seconds 100.0"));
    }
}
