//! The decision: a pure function from what we observed to what to do. No I/O, no clock.

use std::net::IpAddr;

use crate::api::v1alpha1::{
    BindApi, CONDITION_BOUND, DeletionPolicy, ManagementPolicy, Reason, VipBinding, VipBindingSpec,
};
use crate::ecs::{InvalidId, InvalidRegion, check_path_id, check_region};

use crate::controller::binding::outcome::ORPHAN_HINT;
use crate::controller::binding::status::{BoundKnowledge, bound_knowledge, has_finalizer};

/// Facts the decision needs beyond the object itself, all from in-memory state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `namespace/name` of another VipBinding that owns the same NIC.
    pub conflict_owner: Option<String>,
    /// That owner is a VPC binding of the same VIP: its pair on the VIP port is this one's too.
    pub owner_shares_pair: bool,
    /// The VipBinding CRD itself is being deleted (operator uninstall).
    pub crd_deleting: bool,
    /// The periodic drift check is due: re-assert the bind.
    pub reassert_due: bool,
    /// The API the binding is (or will be) bound through.
    pub api: BindApi,
    /// `managementPolicy: Observe`: the cloud is to be read now (never read, the spec changed,
    /// or the last read is older than the observation period).
    pub observe_due: bool,
}

/// Why a binding is held or released without a cloud call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub reason: Reason,
    pub message: String,
}

impl Verdict {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The binding is as its spec asks (or not ours): no cloud call, no finalizer change.
    Nothing,
    /// Record why the binding cannot proceed; no cloud call, no finalizer change.
    Hold(Verdict),
    /// Add the finalizer if missing, then bind. `reassert`: a drift check of a bound binding.
    Bind { reassert: bool },
    /// Unbind, record, then remove the finalizer.
    Unbind,
    /// Record the verdict and remove the finalizer without a cloud call.
    Release(Verdict),
    /// As `Release`, for an ECS binding that lost its NIC to an owner after its own bind may
    /// have reached the cloud: an unbind would take the owner's VIP too (it names none), so the
    /// owner's bind is re-asserted instead, which replaces whatever this one bound.
    Yield(Verdict),
    /// `managementPolicy: Observe`: read the cloud and record whether it matches the spec; no
    /// write, no finalizer.
    Observe,
}

/// What is wrong with a spec (see [`validate_spec`]); its text is the Invalid condition's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `spec.nicId`, `spec.subnetId` or `spec.projectId` (the error names which).
    #[error(transparent)]
    Id(#[from] InvalidId),
    #[error("spec.ipAddress {0:?} is not an IPv4 or IPv6 address")]
    IpAddress(String),
    /// The region error says "region ..."; the prefix makes it the field's path.
    #[error("spec.{0}")]
    Region(InvalidRegion),
}

/// Checks what the CRD schema also checks, so that a binding that slipped past it (an older or
/// edited CRD, a cluster without CEL) still never reaches the cloud with a malformed request.
pub fn validate_spec(spec: &VipBindingSpec) -> Result<(), SpecError> {
    check_path_id("spec.nicId", &spec.nic_id)?;
    check_path_id("spec.subnetId", &spec.subnet_id)?;
    if spec.ip_address.parse::<IpAddr>().is_err() {
        return Err(SpecError::IpAddress(spec.ip_address.clone()));
    }
    if let Some(project) = &spec.project_id {
        check_path_id("spec.projectId", project)?;
    }
    if let Some(region) = &spec.region {
        check_region(region).map_err(SpecError::Region)?;
    }
    Ok(())
}

/// True when the VIP is bound with exactly what the spec asks.
pub fn bound_as_specified(b: &VipBinding) -> bool {
    bound_knowledge(b) == BoundKnowledge::Bound
        && b.status.as_ref().and_then(|s| s.bound_reverse_binding) == Some(b.spec.reverse_binding)
}

pub fn decide(b: &VipBinding, facts: &Facts) -> Plan {
    if b.metadata.deletion_timestamp.is_some() { decide_deleting(b, facts) } else { decide_live(b, facts) }
}

fn decide_live(b: &VipBinding, facts: &Facts) -> Plan {
    if let Err(e) = validate_spec(&b.spec) {
        return Plan::Hold(Verdict::new(Reason::Invalid, e.to_string()));
    }
    if let Some(owner) = &facts.conflict_owner {
        return Plan::Hold(Verdict::new(
            Reason::Conflict,
            format!(
                "VipBinding {owner} already owns NIC {}; this binding waits and will bind when that one is deleted (the unbind API names no VIP, so two bindings on one NIC would undo each other)",
                b.spec.nic_id
            ),
        ));
    }
    if b.is_paused() {
        return Plan::Hold(Verdict::new(
            Reason::Paused,
            "paused by the vipoperator.dev/paused annotation: no cloud calls are made",
        ));
    }
    if b.spec.management_policy == ManagementPolicy::Observe {
        return if facts.observe_due { Plan::Observe } else { Plan::Nothing };
    }
    if bound_as_specified(b) {
        if facts.reassert_due { Plan::Bind { reassert: true } } else { Plan::Nothing }
    } else {
        Plan::Bind { reassert: false }
    }
}

fn decide_deleting(b: &VipBinding, facts: &Facts) -> Plan {
    if !has_finalizer(b) {
        return Plan::Nothing;
    }
    if b.spec.management_policy == ManagementPolicy::Observe {
        return Plan::Release(Verdict::new(
            Reason::Orphaned,
            format!(
                "managementPolicy is Observe: released without a cloud call; whatever is bound of VIP {} on NIC {} stays",
                b.spec.ip_address, b.spec.nic_id
            ),
        ));
    }
    if b.spec.deletion_policy == DeletionPolicy::Orphan {
        return Plan::Release(Verdict::new(
            Reason::Orphaned,
            format!(
                "deletionPolicy is Orphan: released without unbinding; VIP {} stays bound to NIC {}",
                b.spec.ip_address, b.spec.nic_id
            ),
        ));
    }
    if facts.crd_deleting {
        return Plan::Release(Verdict::new(
            Reason::Orphaned,
            "the VipBinding CRD is being deleted: released without unbinding, so removing the operator does not take VIPs down",
        ));
    }
    if let Some(owner) = &facts.conflict_owner {
        // Two bindings created together can both bind before either sees the other; the one
        // that lost the NIC then has its own bind in the cloud.
        let may_have_bound =
            bound_knowledge(b) != BoundKnowledge::NotBound || b.status.as_ref().is_some_and(|s| s.bound_with.is_some());
        let nic = &b.spec.nic_id;
        match (may_have_bound, facts.api) {
            (false, _) => {
                return Plan::Release(Verdict::new(
                    Reason::Conflict,
                    format!("VipBinding {owner} owns NIC {nic}: released without unbinding it"),
                ));
            }
            // The owner binds the same VIP on the same NIC: the pair on the VIP port is one and
            // the same, and taking it out would unbind the owner. Released; the owner's bind is
            // re-asserted (it puts back whatever this one's bind or unbind touched).
            (true, BindApi::Vpc) if facts.owner_shares_pair => {
                return Plan::Yield(Verdict::new(
                    Reason::Conflict,
                    format!(
                        "VipBinding {owner} binds VIP {} on NIC {nic} too: released without unbinding (the pair is the owner's as well); the owner's bind is re-asserted",
                        b.spec.ip_address
                    ),
                ));
            }
            // Its pair is its own (the owner is an ECS binding of the NIC: the unbind takes
            // exactly this binding's IP from its VIP port, and the NIC's check-off by the rules
            // every binding on the NIC shares): unbound as usual.
            (true, BindApi::Vpc) => {}
            (true, BindApi::Ecs) => {
                return Plan::Yield(Verdict::new(
                    Reason::Conflict,
                    format!(
                        "VipBinding {owner} owns NIC {nic}: released without unbinding it (an ECS unbind names no VIP and would take the owner's); this binding's own bind may have reached the cloud first, so the owner's bind is re-asserted"
                    ),
                ));
            }
        }
    }
    // An earlier pass unbound (or found the NIC gone) and wrote that down, but could not remove
    // the finalizer: finish with that record, not as "nothing was ever bound".
    if let Some(done) = b.condition(CONDITION_BOUND).filter(|c| c.status == "False")
        && let Some(reason @ (Reason::Unbound | Reason::NicNotFound)) = Reason::parse(&done.reason)
    {
        return Plan::Release(Verdict::new(reason, done.message.clone()));
    }
    if bound_knowledge(b) == BoundKnowledge::NotBound {
        return Plan::Release(Verdict::new(
            Reason::NotBound,
            "no bind request for this binding reached the cloud: released without a cloud call",
        ));
    }
    if b.is_paused() {
        return Plan::Hold(Verdict::new(
            Reason::DeletionPaused,
            format!(
                "deletion is waiting: the binding is paused (vipoperator.dev/paused); remove the annotation to unbind, or {ORPHAN_HINT}"
            ),
        ));
    }
    Plan::Unbind
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::Fixture;
    use crate::api::v1alpha1::{PAUSED_ANNOTATION, VipBindingStatus};

    fn bound(status: &str, reverse: Option<bool>) -> VipBindingStatus {
        VipBindingStatus { bound_reverse_binding: reverse, ..crate::api::testing::bound_status(status) }
    }

    fn none() -> Facts {
        Facts::default()
    }

    fn reason(plan: Plan) -> Reason {
        match plan {
            Plan::Hold(v) | Plan::Release(v) | Plan::Yield(v) => v.reason,
            other => panic!("expected a verdict, got {other:?}"),
        }
    }

    #[test]
    fn a_deletion_already_unbound_is_finished_with_its_own_record() {
        for done in [Reason::Unbound, Reason::NicNotFound] {
            let mut b = VipBinding::test().with_status(bound("False", None)).with_finalizer().deleting();
            let bound = &mut b.status.as_mut().unwrap().conditions[0];
            bound.reason = done.as_str().into();
            bound.message = "VIP 192.168.0.7 unbound from NIC d3 (port p1)".into();
            match decide(&b, &none()) {
                Plan::Release(v) => {
                    assert_eq!(v.reason, done);
                    assert_eq!(v.message, "VIP 192.168.0.7 unbound from NIC d3 (port p1)");
                }
                other => panic!("{done}: {other:?}"),
            }
        }
        // Refused before anything was sent: still NotBound.
        let b = VipBinding::test().with_status(bound("False", None)).with_finalizer().deleting();
        assert_eq!(reason(decide(&b, &none())), Reason::NotBound);
    }

    #[test]
    fn observe_reads_when_due_never_binds_and_its_deletion_makes_no_call() {
        let mut b = VipBinding::test();
        b.spec.management_policy = ManagementPolicy::Observe;
        let due = Facts { observe_due: true, ..none() };
        assert_eq!(decide(&b, &due), Plan::Observe);
        assert_eq!(decide(&b, &none()), Plan::Nothing, "read less than a period ago");
        // Whatever the record says, and a drift check due: no bind.
        let recorded = b.clone().with_status(bound("False", None)).with_finalizer();
        assert_eq!(decide(&recorded, &Facts { reassert_due: true, ..due.clone() }), Plan::Observe);
        // Paused and invalid come first, as for Manage.
        let mut paused = b.clone();
        paused.metadata.annotations = Some([(PAUSED_ANNOTATION.to_string(), "true".to_string())].into());
        assert_eq!(reason(decide(&paused, &due)), Reason::Paused);
        // Deleting: no finalizer (Observe adds none), nothing; one left from Manage, released.
        assert_eq!(decide(&b.clone().deleting(), &due), Plan::Nothing);
        let from_manage = b.with_status(bound("True", Some(false))).with_finalizer().deleting();
        match decide(&from_manage, &due) {
            Plan::Release(v) => assert!(v.message.contains("Observe"), "{}", v.message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn new_binding_binds() {
        assert_eq!(decide(&VipBinding::test(), &none()), Plan::Bind { reassert: false });
    }

    #[test]
    fn bound_binding_is_left_alone_until_a_drift_check_is_due() {
        let b = VipBinding::test().with_status(bound("True", Some(false))).with_finalizer();
        assert_eq!(decide(&b, &none()), Plan::Nothing);
        assert_eq!(decide(&b, &Facts { reassert_due: true, ..none() }), Plan::Bind { reassert: true });
    }

    #[test]
    fn changing_reverse_binding_rebinds() {
        let b = VipBinding::test().with_status(bound("True", Some(false))).with_finalizer().reverse_binding(true);
        assert_eq!(decide(&b, &none()), Plan::Bind { reassert: false });
    }

    #[test]
    fn unknown_or_failed_bind_is_retried() {
        for status in ["Unknown", "False"] {
            let b = VipBinding::test().with_status(bound(status, None)).with_finalizer();
            assert_eq!(decide(&b, &none()), Plan::Bind { reassert: false });
        }
    }

    #[test]
    fn invalid_specs_are_held_before_anything_else() {
        let cases: [fn(VipBinding) -> VipBinding; 7] = [
            |b| b.ip("300.1.1.1"),
            |b| b.ip("abc"),
            |b| b.nic("../../x"),
            |b| b.nic(""),
            |b| b.subnet("a b"),
            |b| b.project(Some("p/../q".into())),
            |b| b.region(Some("Cn_North".into())),
        ];
        for mutate in cases {
            let b = mutate(VipBinding::test());
            match decide(&b, &Facts { conflict_owner: Some("ns/other".into()), ..none() }) {
                Plan::Hold(v) => {
                    assert_eq!(v.reason, Reason::Invalid);
                    assert!(v.message.starts_with("spec."), "{}", v.message);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn ipv6_is_valid() {
        let b = VipBinding::test().ip("fd00::7");
        assert_eq!(decide(&b, &none()), Plan::Bind { reassert: false });
    }

    #[test]
    fn conflict_and_pause_hold_live_bindings() {
        let facts = Facts { conflict_owner: Some("ns/first".into()), ..none() };
        match decide(&VipBinding::test(), &facts) {
            Plan::Hold(v) => {
                assert_eq!(v.reason, Reason::Conflict);
                assert!(v.message.contains("ns/first"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(reason(decide(&VipBinding::test().paused(), &none())), Reason::Paused);
        // Paused also stops the drift check.
        let b = VipBinding::test().with_status(bound("True", Some(false))).with_finalizer().paused();
        assert_eq!(reason(decide(&b, &Facts { reassert_due: true, ..none() })), Reason::Paused);
    }

    #[test]
    fn deleting_a_bound_binding_unbinds() {
        let b = VipBinding::test().with_status(bound("True", Some(false))).with_finalizer().deleting();
        assert_eq!(decide(&b, &none()), Plan::Unbind);
    }

    #[test]
    fn deleting_after_a_crash_before_any_status_unbinds() {
        // Finalizer present, no status: a bind may have been sent.
        assert_eq!(decide(&VipBinding::test().with_finalizer().deleting(), &none()), Plan::Unbind);
        let b = VipBinding::test().with_status(bound("Unknown", None)).with_finalizer().deleting();
        assert_eq!(decide(&b, &none()), Plan::Unbind);
    }

    #[test]
    fn deleting_a_never_sent_binding_releases_without_a_call() {
        let b = VipBinding::test().with_status(bound("False", None)).with_finalizer().deleting();
        assert_eq!(reason(decide(&b, &none())), Reason::NotBound);
    }

    #[test]
    fn deleting_without_our_finalizer_is_not_our_business() {
        assert_eq!(decide(&VipBinding::test().deleting(), &none()), Plan::Nothing);
        let mut b = VipBinding::test().deleting();
        b.metadata.finalizers = Some(vec!["other.io/x".into()]);
        assert_eq!(decide(&b, &none()), Plan::Nothing);
    }

    #[test]
    fn orphan_policy_releases_even_when_paused_or_conflicted() {
        let b =
            VipBinding::test().with_status(bound("True", Some(false))).with_finalizer().deleting().paused().orphan();
        let facts = Facts { conflict_owner: Some("ns/x".into()), ..none() };
        assert_eq!(reason(decide(&b, &facts)), Reason::Orphaned);
    }

    #[test]
    fn crd_deletion_releases_without_unbinding() {
        let b = VipBinding::test().with_status(bound("True", Some(false))).with_finalizer().deleting();
        let plan = decide(&b, &Facts { crd_deleting: true, ..none() });
        assert_eq!(reason(plan), Reason::Orphaned);
    }

    #[test]
    fn a_conflicted_binding_never_unbinds_the_owners_nic() {
        let b = VipBinding::test().with_status(bound("Unknown", None)).with_finalizer().deleting();
        let plan = decide(&b, &Facts { conflict_owner: Some("ns/owner".into()), ..none() });
        assert_eq!(reason(plan), Reason::Conflict);
    }

    /// Created together on one NIC, both bound before either saw the other (chaos seed 101):
    /// the one that lost the NIC must not leave its own bind behind.
    #[test]
    fn a_conflicted_binding_that_bound_first_undoes_its_own_part_only() {
        let facts = |api| Facts { conflict_owner: Some("ns/owner".into()), api, ..none() };
        let bound_one = VipBinding::test().with_status(bound("True", Some(false))).with_finalizer().deleting();
        // VPC, the owner an ECS binding of the NIC: its pair is its own: unbound like any other.
        assert_eq!(decide(&bound_one, &facts(BindApi::Vpc)), Plan::Unbind);
        // VPC, the owner a VPC binding of the same VIP: the pair is the owner's too: it yields.
        let shared = Facts { owner_shares_pair: true, ..facts(BindApi::Vpc) };
        let Plan::Yield(v) = decide(&bound_one, &shared) else { panic!("a VPC loser of the same VIP yields") };
        assert!(v.message.contains("the pair is the owner's as well"), "{}", v.message);
        // ECS: an unbind would take the owner's VIP: the owner re-asserts instead.
        let Plan::Yield(v) = decide(&bound_one, &facts(BindApi::Ecs)) else { panic!("an ECS loser yields") };
        assert!(v.message.contains("re-asserted"), "{}", v.message);
        // Never bound: released as before, whatever the API.
        let never = VipBinding::test().with_status(bound("False", None)).with_finalizer().deleting();
        assert!(matches!(decide(&never, &facts(BindApi::Vpc)), Plan::Release(_)));
    }

    #[test]
    fn paused_deletion_waits_visibly() {
        let b = VipBinding::test().with_status(bound("True", Some(false))).with_finalizer().deleting().paused();
        assert_eq!(reason(decide(&b, &none())), Reason::DeletionPaused);
        // Nothing to unbind: no reason to wait.
        let b = VipBinding::test().with_status(bound("False", None)).with_finalizer().deleting().paused();
        assert_eq!(reason(decide(&b, &none())), Reason::NotBound);
    }

    #[test]
    fn paused_annotation_must_say_true() {
        let mut b = VipBinding::test();
        b.metadata.annotations = Some([(PAUSED_ANNOTATION.to_string(), "false".to_string())].into());
        assert_eq!(decide(&b, &none()), Plan::Bind { reassert: false });
        b.metadata.annotations = Some([(PAUSED_ANNOTATION.to_string(), " TRUE ".to_string())].into());
        assert_eq!(reason(decide(&b, &none())), Reason::Paused);
    }
}
