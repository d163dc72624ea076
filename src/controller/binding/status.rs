//! Status computation. Conditions follow Kubernetes conventions: `lastTransitionTime` changes
//! only when a condition's `status` changes, and each condition carries the generation it was
//! computed for.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::v1alpha1::{CONDITION_BOUND, CONDITION_READY, Reason, VipBinding, VipBindingStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CondStatus {
    True,
    False,
    Unknown,
}

impl CondStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CondStatus::True => "True",
            CondStatus::False => "False",
            CondStatus::Unknown => "Unknown",
        }
    }
}

/// Sets `type_` in `conditions`, keeping `lastTransitionTime` when the status is unchanged.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: CondStatus,
    reason: Reason,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) {
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status.as_str())
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    let condition = Condition {
        type_: type_.to_string(),
        status: status.as_str().to_string(),
        reason: reason.as_str().to_string(),
        message: truncate(message),
        observed_generation: generation,
        last_transition_time,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
    // A stable order keeps status writes (and their diffs) deterministic.
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// Condition messages are bounded (the API allows 32 KiB; events and `kubectl` do not need it).
fn truncate(message: &str) -> String {
    const MAX: usize = 1024;
    if message.len() <= MAX {
        return message.to_string();
    }
    let mut end = MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// How long an observation of a binding found in place stands before it is written again.
pub const OBSERVATION_REFRESH: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether the binding's observation (`status.observed`) is missing or older than
/// [`OBSERVATION_REFRESH`].
pub fn observation_stale(b: &VipBinding, now: jiff::Timestamp) -> bool {
    let refresh = jiff::SignedDuration::try_from(OBSERVATION_REFRESH).unwrap_or(jiff::SignedDuration::MAX);
    b.status.as_ref().and_then(|s| s.observed.as_ref()).is_none_or(|o| now.duration_since(o.at.0) >= refresh)
}

/// What we know about the VIP on the NIC, from the `Bound` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundKnowledge {
    /// A bind succeeded and nothing has undone it since.
    Bound,
    /// No bind request for this binding can have changed the cloud (or it was unbound).
    NotBound,
    /// A bind request may have reached the cloud without an answer we recorded (an error after
    /// sending, or a crash between adding the finalizer and writing status).
    Maybe,
}

pub fn has_finalizer(b: &VipBinding) -> bool {
    b.metadata.finalizers.as_ref().is_some_and(|f| f.iter().any(|x| x == crate::api::v1alpha1::FINALIZER))
}

pub fn bound_knowledge(b: &VipBinding) -> BoundKnowledge {
    match b.condition(CONDITION_BOUND).map(|c| c.status.as_str()) {
        Some("True") => BoundKnowledge::Bound,
        Some("False") => BoundKnowledge::NotBound,
        Some(_) => BoundKnowledge::Maybe,
        // The finalizer is added right before the first cloud call; without it nothing was sent.
        None if has_finalizer(b) => BoundKnowledge::Maybe,
        None => BoundKnowledge::NotBound,
    }
}

/// Builds the next status from the current one.
pub struct StatusBuilder<'a> {
    binding: &'a VipBinding,
    status: VipBindingStatus,
    now: Time,
}

impl<'a> StatusBuilder<'a> {
    pub fn new(binding: &'a VipBinding, now: Time) -> Self {
        let mut status = binding.status.clone().unwrap_or_default();
        status.observed_generation = binding.metadata.generation;
        Self { binding, status, now }
    }

    fn generation(&self) -> Option<i64> {
        self.binding.metadata.generation
    }

    pub fn ready(mut self, status: CondStatus, reason: Reason, message: &str) -> Self {
        let generation = self.generation();
        set_condition(&mut self.status.conditions, CONDITION_READY, status, reason, message, generation, &self.now);
        self
    }

    pub fn bound(mut self, status: CondStatus, reason: Reason, message: &str) -> Self {
        let generation = self.generation();
        set_condition(&mut self.status.conditions, CONDITION_BOUND, status, reason, message, generation, &self.now);
        self
    }

    /// Keeps the `Bound` condition as it is, or records `NotBound` when there is none and
    /// nothing can have been sent (no finalizer yet).
    pub fn bound_unchanged(self) -> Self {
        match (self.binding.condition(CONDITION_BOUND).is_some(), bound_knowledge(self.binding)) {
            (false, BoundKnowledge::NotBound) => {
                self.bound(CondStatus::False, Reason::NotBound, "no bind request has been sent to the cloud")
            }
            (false, BoundKnowledge::Maybe) => self.bound(
                CondStatus::Unknown,
                Reason::Indeterminate,
                "a bind request may have reached the cloud before the operator could record its outcome",
            ),
            _ => self.refresh_bound_generation(),
        }
    }

    fn refresh_bound_generation(mut self) -> Self {
        let generation = self.generation();
        if let Some(c) = self.status.conditions.iter_mut().find(|c| c.type_ == CONDITION_BOUND) {
            c.observed_generation = generation;
        }
        self
    }

    pub fn port_id(mut self, port_id: Option<String>) -> Self {
        self.status.port_id = port_id;
        self
    }

    pub fn bound_reverse_binding(mut self, value: Option<bool>) -> Self {
        self.status.bound_reverse_binding = value;
        self
    }

    /// Where a bind request was sent (the evidence a deletion unbinds with), or none after an
    /// unbind.
    pub fn bound_with(mut self, value: Option<crate::api::v1alpha1::BoundWith>) -> Self {
        self.status.bound_with = value;
        self
    }

    /// What the VPC API showed, read now by `by`.
    pub fn observed(mut self, bound: bool, vip_port_id: &str, by: &str) -> Self {
        self.status.observed = Some(crate::api::v1alpha1::Observed {
            bound,
            vip_port_id: vip_port_id.to_string(),
            at: self.now.clone(),
            by: by.to_string(),
        });
        self
    }

    /// The new status, or `None` when it equals the current one (no write needed).
    pub fn build(self) -> Option<VipBindingStatus> {
        (self.binding.status.as_ref() != Some(&self.status)).then_some(self.status)
    }

    pub fn build_always(self) -> VipBindingStatus {
        self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut c = vec![];
        set_condition(
            &mut c,
            "Ready",
            CondStatus::False,
            Reason::CloudUnavailable,
            "a",
            Some(1),
            &t("2024-01-01T00:00:00Z"),
        );
        set_condition(&mut c, "Ready", CondStatus::False, Reason::Throttled, "b", Some(2), &t("2024-01-01T00:01:00Z"));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, t("2024-01-01T00:00:00Z"));
        assert_eq!(c[0].reason, "Throttled");
        assert_eq!(c[0].message, "b");
        assert_eq!(c[0].observed_generation, Some(2));
        set_condition(&mut c, "Ready", CondStatus::True, Reason::Bound, "ok", Some(2), &t("2024-01-01T00:02:00Z"));
        assert_eq!(c[0].last_transition_time, t("2024-01-01T00:02:00Z"));
        set_condition(&mut c, "Bound", CondStatus::True, Reason::Bound, "ok", Some(2), &t("2024-01-01T00:03:00Z"));
        assert_eq!(c.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), vec!["Bound", "Ready"]);
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let mut c = vec![];
        let long = "é".repeat(2000);
        set_condition(&mut c, "Ready", CondStatus::False, Reason::Invalid, &long, None, &t("2024-01-01T00:00:00Z"));
        assert!(c[0].message.len() <= 1024 + "…".len());
        assert!(c[0].message.ends_with('…'));
    }
}
