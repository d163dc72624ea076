//! What a group's members should be, decided from the nodes, their NICs and the members there
//! are: pure, no I/O. The reconciler applies the plan (create, put back, delete) and writes the
//! status it carries.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference};
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::group::{
    GROUP_KIND, GROUP_LABEL, GroupReason, MAX_LISTED_MEMBERS, Member, MemberReason, NODE_LABEL, VipGroup,
    VipGroupStatus,
};
use crate::api::v1alpha1::{CONDITION_READY, Reason, VipBinding, VipBindingSpec};

/// The longest object name the API server takes.
const MAX_NAME: usize = 253;
/// The longest label value.
const MAX_LABEL_VALUE: usize = 63;

/// A node that matches the selector, and what is known of its NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: String,
    pub nic: Nic,
}

/// A matching node's NIC in the VIP's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nic {
    Found(String),
    /// Known not to be usable (no server ID, no port or several in the network): a member
    /// condition, and no member binding.
    Missing {
        reason: MemberReason,
        message: String,
    },
    /// Not known for now (a lookup failed): whatever member the node has stays as it is.
    Unknown(String),
}

/// What the group decides.
#[derive(Debug, Default)]
pub struct GroupPlan {
    /// Members to create, or to put back as the group wants them (server-side applied).
    pub apply: Vec<VipBinding>,
    /// Members to delete: name, uid, node, and why (an event).
    pub delete: Vec<Leave>,
    /// Nodes joining (a new member): node, NIC.
    pub joins: Vec<(String, String)>,
    pub status: VipGroupStatus,
    /// Whether every member is gone (a deleting group may let go).
    pub empty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leave {
    pub name: String,
    pub uid: Option<String>,
    pub node: String,
    pub why: String,
}

/// The member's name: the group's, the node's (cut to fit) and a hash of node and NIC, so a
/// node that comes back with another NIC gets a new member, not the old one edited.
pub fn member_name(group: &str, node: &str, nic: &str) -> String {
    let hash = short_hash(&format!("{node}\0{nic}"));
    let room = MAX_NAME.saturating_sub(group.len() + hash.len() + 2);
    let node: String = node.chars().take(room).collect();
    let node = node.trim_end_matches(['-', '.']);
    format!("{group}-{node}-{hash}")
}

fn short_hash(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    hex::encode(&digest[..4])
}

/// The node label's value: the node's name, or a hash of it when it is too long for a label.
pub fn node_label(node: &str) -> String {
    if node.len() <= MAX_LABEL_VALUE { node.to_string() } else { format!("h-{}", short_hash(node)) }
}

/// Whether `b` is a member of `group`: its controller is the group (by UID).
pub fn is_member_of(b: &VipBinding, group: &VipGroup) -> bool {
    let uid = group.uid();
    b.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == GROUP_KIND && Some(&o.uid) == uid.as_ref())
}

/// The member binding the group wants for `node` on `nic`.
pub fn desired_member(group: &VipGroup, node: &str, nic: &str) -> VipBinding {
    let spec = &group.spec;
    let name = member_name(&group.name_any(), node, nic);
    let mut b = VipBinding::new(
        &name,
        VipBindingSpec {
            nic_id: nic.to_string(),
            ip_address: spec.ip_address.clone(),
            subnet_id: spec.subnet_id.clone(),
            reverse_binding: false,
            project_id: spec.project_id.clone(),
            region: spec.region.clone(),
            credentials_secret_ref: spec.credentials_secret_ref.clone(),
            api: Some(spec.api),
            deletion_policy: spec.deletion_policy,
            management_policy: spec.management_policy,
        },
    );
    b.metadata = ObjectMeta {
        name: Some(name),
        namespace: group.namespace(),
        labels: Some(BTreeMap::from([
            (GROUP_LABEL.to_string(), group.name_any()),
            (NODE_LABEL.to_string(), node_label(node)),
        ])),
        owner_references: Some(vec![owner(group)]),
        ..ObjectMeta::default()
    };
    b
}

fn owner(group: &VipGroup) -> OwnerReference {
    OwnerReference {
        api_version: VipGroup::api_version(&()).to_string(),
        kind: GROUP_KIND.to_string(),
        name: group.name_any(),
        uid: group.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `have` is as the group wants it (`want`): the spec, our labels, our owner reference.
fn as_wanted(have: &VipBinding, want: &VipBinding) -> bool {
    let labels_ok = want.labels().iter().all(|(k, v)| have.labels().get(k) == Some(v));
    let owner_ok = want.owner_references().iter().all(|o| have.owner_references().contains(o));
    have.spec == want.spec && labels_ok && owner_ok
}

/// The node a member is for: the one it was created for (its name's hash says which NIC).
fn member_node<'a>(b: &'a VipBinding, nodes_by_label: &'a HashMap<String, String>) -> Option<&'a str> {
    let label = b.labels().get(NODE_LABEL)?;
    Some(nodes_by_label.get(label).map(String::as_str).unwrap_or(label.as_str()))
}

/// A member's readiness as the group reports it.
fn member_state(b: &VipBinding) -> (bool, MemberReason, String) {
    match b.condition(CONDITION_READY) {
        Some(c) if c.status == "True" => (true, MemberReason::Bound, String::new()),
        None => (false, MemberReason::Binding, "the member binding has not reported yet".into()),
        Some(c) => {
            let pending = matches!(
                Reason::parse(&c.reason),
                Some(
                    Reason::Indeterminate
                        | Reason::WritesInFlight
                        | Reason::Throttled
                        | Reason::LeaderUnconfirmed
                        | Reason::HandingOver
                )
            );
            let reason = if pending { MemberReason::Binding } else { MemberReason::NotReady };
            (false, reason, format!("{}: {}", c.reason, c.message))
        }
    }
}

/// Decides the members of `group` (not being deleted) from the matching nodes (`Err`: the
/// selector could not be read, with why) and the members it has.
pub fn plan(group: &VipGroup, candidates: Result<Vec<Candidate>, String>, members: &[VipBinding]) -> GroupPlan {
    let generation = group.meta().generation;
    let mut out = GroupPlan { empty: members.is_empty(), ..GroupPlan::default() };
    let live: Vec<&VipBinding> = members.iter().filter(|b| b.meta().deletion_timestamp.is_none()).collect();
    let candidates = match candidates {
        Ok(c) => c,
        Err(why) => {
            out.status = status(generation, 0, vec![], (GroupReason::InvalidSelector, why));
            return out;
        }
    };
    let max = usize::try_from(group.spec.max_nodes).unwrap_or(usize::MAX);
    let by_label: HashMap<String, String> = candidates.iter().map(|c| (node_label(&c.node), c.node.clone())).collect();
    let mut of_node: HashMap<&str, Vec<&VipBinding>> = HashMap::new();
    for b in &live {
        if let Some(node) = member_node(b, &by_label) {
            of_node.entry(node).or_default().push(b);
        }
    }
    // A member whose node label was removed by hand is still its node's, by its name.
    for c in &candidates {
        if let Nic::Found(nic) = &c.nic {
            let want = member_name(&group.name_any(), &c.node, nic);
            if let Some(b) = live.iter().find(|b| b.labels().get(NODE_LABEL).is_none() && b.name_any() == want) {
                of_node.entry(c.node.as_str()).or_default().push(b);
            }
        }
    }
    // Over the limit nothing joins or leaves: a selector widened by mistake changes nothing.
    let over = candidates.len() > max;
    let mut listed = vec![];
    for c in &candidates {
        let existing = of_node.remove(c.node.as_str()).unwrap_or_default();
        listed.push(decide_node(group, c, &existing, over, &mut out));
    }
    // Members of nodes that match no more, or are gone.
    for (node, members) in of_node {
        for old in members.into_iter().filter(|_| !over) {
            out.delete.push(leave(old, node, format!("node {node} no longer matches the selector, or is gone")));
        }
    }
    // Members without a node label (edited by hand) that no node wants under their name.
    let wanted: std::collections::HashSet<String> = listed.iter().filter_map(|m| m.binding.clone()).collect();
    for b in live.iter().filter(|b| b.labels().get(NODE_LABEL).is_none() && !wanted.contains(&b.name_any())) {
        if !over {
            out.delete.push(leave(b, "?", "member without a node label: not one the group wants".into()));
        }
    }
    // A binding that only carries the group's label (no owner reference: made or edited by
    // hand) is put back when it is the member a node wants, and never deleted: a label alone
    // must not let the group unbind someone's binding.
    out.delete.retain(|l| members.iter().any(|b| b.uid() == l.uid && is_member_of(b, group)));
    let failing = listed.iter().filter(|m| !m.ready && is_failing(&m.reason)).count();
    let bound = listed.iter().filter(|m| m.ready).count();
    let ready = readiness(group, candidates.len(), bound, failing, over);
    out.status = status(generation, candidates.len(), listed, ready);
    out.status.bound = clamp(bound);
    out.status.failing = clamp(failing);
    out
}

fn readiness(group: &VipGroup, matching: usize, bound: usize, failing: usize, over: bool) -> (GroupReason, String) {
    if over {
        (
            GroupReason::TooManyNodes,
            format!(
                "the selector matches {matching} nodes, more than spec.maxNodes ({}): no member is added or removed until it matches fewer",
                group.spec.max_nodes
            ),
        )
    } else if matching == 0 {
        (GroupReason::NoMatchingNodes, "no node matches spec.nodeSelector".into())
    } else if failing > 0 {
        (GroupReason::MembersFailing, format!("{failing} of {matching} members cannot be bound (see status.members)"))
    } else if bound < matching {
        (GroupReason::MembersPending, format!("{bound} of {matching} members bound"))
    } else {
        (GroupReason::AllBound, format!("VIP {} is bound on all {bound} members", group.spec.ip_address))
    }
}

/// One matching node: its member (created, put back, replaced or left alone) and how it stands.
fn decide_node(group: &VipGroup, c: &Candidate, existing: &[&VipBinding], over: bool, out: &mut GroupPlan) -> Member {
    let node = c.node.clone();
    match &c.nic {
        Nic::Found(nic) => {
            let want = desired_member(group, &c.node, nic);
            let want_name = want.name_any();
            for old in existing.iter().filter(|b| b.name_any() != want_name && !over) {
                out.delete.push(leave(old, &c.node, format!("node {}'s NIC is now {nic}", c.node)));
            }
            let base = Member { node, nic_id: Some(nic.clone()), ..Member::default() };
            match existing.iter().find(|b| b.name_any() == want_name) {
                Some(b) => {
                    if !as_wanted(b, &want) {
                        out.apply.push(want);
                    }
                    let (ready, reason, message) = member_state(b);
                    Member { binding: Some(want_name), ready, reason: reason.as_str().into(), message, ..base }
                }
                None if over => Member {
                    reason: GroupReason::TooManyNodes.as_str().into(),
                    message: "not added while the selector matches more nodes than spec.maxNodes".into(),
                    ..base
                },
                None => {
                    out.joins.push((c.node.clone(), nic.clone()));
                    out.apply.push(want);
                    Member {
                        binding: Some(want_name),
                        reason: MemberReason::Binding.as_str().into(),
                        message: "member binding created".into(),
                        ..base
                    }
                }
            }
        }
        Nic::Missing { reason, message } => {
            for old in existing.iter().filter(|_| !over) {
                out.delete.push(leave(old, &c.node, format!("node {}: {message}", c.node)));
            }
            Member { node, reason: reason.as_str().into(), message: message.clone(), ..Member::default() }
        }
        // Unknown is not "gone": a member the node has stays, and says how it is.
        Nic::Unknown(message) => match existing.first() {
            Some(b) => {
                let (ready, reason, msg) = member_state(b);
                Member {
                    node,
                    nic_id: Some(b.spec.nic_id.clone()),
                    binding: Some(b.name_any()),
                    ready,
                    reason: reason.as_str().into(),
                    message: format!("{msg} (NIC lookup failed: {message})").trim_start().to_string(),
                }
            }
            None => Member {
                node,
                reason: MemberReason::LookupFailed.as_str().into(),
                message: message.clone(),
                ..Member::default()
            },
        },
    }
}

fn is_failing(reason: &str) -> bool {
    reason != MemberReason::Binding.as_str() && reason != GroupReason::TooManyNodes.as_str()
}

/// What a group being deleted does: delete every member, and say how many are left.
pub fn plan_deletion(group: &VipGroup, members: &[VipBinding]) -> GroupPlan {
    // Only the group's own (by owner reference): a label alone is not membership to delete.
    let members: Vec<VipBinding> = members.iter().filter(|b| is_member_of(b, group)).cloned().collect();
    let members = members.as_slice();
    let delete = members
        .iter()
        .filter(|b| b.meta().deletion_timestamp.is_none())
        .map(|b| {
            let node = b.labels().get(NODE_LABEL).cloned().unwrap_or_default();
            leave(b, &node, "the group is being deleted".into())
        })
        .collect();
    let left: Vec<String> = members.iter().take(10).map(|b| b.name_any()).collect();
    let message = if members.is_empty() {
        "every member is gone".into()
    } else {
        format!("waiting for {} member(s) to unbind and go: {}", members.len(), left.join(", "))
    };
    let mut status = status(group.meta().generation, members.len(), vec![], (GroupReason::Deleting, message));
    status.bound = clamp(members.iter().filter(|b| member_state(b).0).count());
    GroupPlan { delete, empty: members.is_empty(), status, ..GroupPlan::default() }
}

fn leave(b: &VipBinding, node: &str, why: String) -> Leave {
    Leave { name: b.name_any(), uid: b.uid(), node: node.to_string(), why }
}

fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn status(
    generation: Option<i64>,
    desired: usize,
    mut members: Vec<Member>,
    (reason, message): (GroupReason, String),
) -> VipGroupStatus {
    members.sort_by(|a, b| a.node.cmp(&b.node));
    let omitted = members.len().saturating_sub(MAX_LISTED_MEMBERS);
    // The ones that need attention first, then the rest.
    members.sort_by_key(|m| m.ready);
    members.truncate(MAX_LISTED_MEMBERS);
    members.sort_by(|a, b| a.node.cmp(&b.node));
    VipGroupStatus {
        observed_generation: generation,
        desired: clamp(desired),
        bound: 0,
        failing: 0,
        members,
        members_omitted: clamp(omitted),
        conditions: vec![Condition {
            type_: CONDITION_READY.into(),
            status: if reason == GroupReason::AllBound { "True" } else { "False" }.into(),
            reason: reason.as_str().into(),
            message,
            observed_generation: generation,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::group::{NodeSelector, VipGroupSpec};
    use crate::api::v1alpha1::{BindApi, DeletionPolicy};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn group(max_nodes: u32) -> VipGroup {
        let mut g = VipGroup::new(
            "web",
            VipGroupSpec {
                ip_address: "192.168.0.50".into(),
                subnet_id: "net-1".into(),
                node_selector: NodeSelector {
                    match_labels: BTreeMap::from([("role".into(), "lb".into())]),
                    ..NodeSelector::default()
                },
                api: BindApi::Vpc,
                project_id: None,
                region: None,
                credentials_secret_ref: None,
                deletion_policy: DeletionPolicy::Unbind,
                max_nodes,
                management_policy: Default::default(),
            },
        );
        g.metadata.namespace = Some("ns".into());
        g.metadata.uid = Some("group-uid".into());
        g.metadata.generation = Some(3);
        g
    }

    fn found(node: &str, nic: &str) -> Candidate {
        Candidate { node: node.into(), nic: Nic::Found(nic.into()) }
    }

    /// The member as the API would hold it once bound.
    fn bound(g: &VipGroup, node: &str, nic: &str) -> VipBinding {
        let mut b = desired_member(g, node, nic);
        b.metadata.uid = Some(format!("uid-{node}-{nic}"));
        let mut status = crate::api::testing::bound_status("True");
        let mut ready = status.conditions[0].clone();
        ready.type_ = CONDITION_READY.into();
        status.conditions.push(ready);
        b.status = Some(status);
        b
    }

    fn names(plan: &GroupPlan) -> (Vec<String>, Vec<String>) {
        (plan.apply.iter().map(ResourceExt::name_any).collect(), plan.delete.iter().map(|l| l.name.clone()).collect())
    }

    #[test]
    fn new_nodes_join_bound_ones_stay_and_gone_ones_leave() {
        let g = group(64);
        let have = [bound(&g, "a", "nic-a"), bound(&g, "b", "nic-b")];
        let plan = plan(&g, Ok(vec![found("a", "nic-a"), found("c", "nic-c")]), &have);
        let (apply, delete) = names(&plan);
        assert_eq!(apply, [member_name("web", "c", "nic-c")]);
        assert_eq!(delete, [member_name("web", "b", "nic-b")]);
        assert_eq!(plan.joins, [("c".to_string(), "nic-c".to_string())]);
        let s = &plan.status;
        assert_eq!((s.desired, s.bound, s.failing), (2, 1, 0));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.condition(CONDITION_READY).unwrap().reason, "MembersPending");
        let member = &plan.apply[0];
        assert_eq!(member.labels().get(GROUP_LABEL).map(String::as_str), Some("web"));
        assert_eq!(member.labels().get(NODE_LABEL).map(String::as_str), Some("c"));
        assert!(is_member_of(member, &g), "its controller is the group");
        assert_eq!(member.spec.api, Some(BindApi::Vpc));
    }

    #[test]
    fn a_settled_group_is_ready_and_writes_nothing() {
        let g = group(64);
        let have = [bound(&g, "a", "nic-a"), bound(&g, "b", "nic-b")];
        let plan = plan(&g, Ok(vec![found("a", "nic-a"), found("b", "nic-b")]), &have);
        assert!(plan.apply.is_empty() && plan.delete.is_empty() && plan.joins.is_empty());
        let ready = plan.status.condition(CONDITION_READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "AllBound"));
    }

    #[test]
    fn a_hand_edited_member_is_put_back() {
        let g = group(64);
        let mut edited = bound(&g, "a", "nic-a");
        edited.spec.deletion_policy = DeletionPolicy::Orphan;
        let mut unlabelled = bound(&g, "b", "nic-b");
        unlabelled.metadata.labels = None;
        let plan = plan(&g, Ok(vec![found("a", "nic-a"), found("b", "nic-b")]), &[edited, unlabelled]);
        let (apply, delete) = names(&plan);
        assert_eq!(apply, [member_name("web", "a", "nic-a"), member_name("web", "b", "nic-b")], "both put back");
        assert_eq!(plan.apply[0].spec.deletion_policy, DeletionPolicy::Unbind);
        assert!(plan.apply[1].labels().contains_key(NODE_LABEL));
        // The unlabelled member is the one node b wants (by its name): put back, not replaced.
        assert!(delete.is_empty() && plan.joins.is_empty(), "{delete:?} {:?}", plan.joins);
        assert_eq!(plan.status.bound, 2);
    }

    #[test]
    fn a_binding_with_only_the_group_label_is_never_deleted() {
        let g = group(64);
        let mut foreign = bound(&g, "x", "nic-x");
        foreign.metadata.owner_references = None;
        let plan1 = plan(&g, Ok(vec![found("a", "nic-a")]), std::slice::from_ref(&foreign));
        assert!(plan1.delete.is_empty(), "{:?}", plan1.delete);
        let plan2 = plan_deletion(&g, &[foreign]);
        assert!(plan2.delete.is_empty() && plan2.empty);
    }

    #[test]
    fn a_node_with_a_new_nic_gets_a_new_member_and_the_old_one_goes() {
        let g = group(64);
        let plan = plan(&g, Ok(vec![found("a", "nic-new")]), &[bound(&g, "a", "nic-old")]);
        let (apply, delete) = names(&plan);
        assert_eq!(apply, [member_name("web", "a", "nic-new")]);
        assert_eq!(delete, [member_name("web", "a", "nic-old")]);
    }

    #[test]
    fn unknown_keeps_the_member_and_missing_lets_it_go() {
        let g = group(64);
        let have = [bound(&g, "a", "nic-a"), bound(&g, "b", "nic-b")];
        let candidates = vec![
            Candidate { node: "a".into(), nic: Nic::Unknown("throttled".into()) },
            Candidate {
                node: "b".into(),
                nic: Nic::Missing { reason: MemberReason::NoNicInNetwork, message: "no port".into() },
            },
            Candidate { node: "c".into(), nic: Nic::Unknown("throttled".into()) },
        ];
        let plan = plan(&g, Ok(candidates), &have);
        let (apply, delete) = names(&plan);
        assert!(apply.is_empty());
        assert_eq!(delete, [member_name("web", "b", "nic-b")], "an unknown lookup is never 'gone'");
        let s = &plan.status;
        assert_eq!((s.desired, s.bound, s.failing), (3, 1, 2));
        let c = s.members.iter().find(|m| m.node == "c").unwrap();
        assert_eq!(c.reason, "LookupFailed");
        assert_eq!(s.condition(CONDITION_READY).unwrap().reason, "MembersFailing");
    }

    #[test]
    fn too_many_nodes_changes_nothing() {
        let g = group(2);
        let have = [bound(&g, "a", "nic-a"), bound(&g, "gone", "nic-x")];
        let candidates = vec![found("a", "nic-a"), found("b", "nic-b"), found("c", "nic-c")];
        let plan = plan(&g, Ok(candidates), &have);
        assert!(plan.apply.is_empty() && plan.delete.is_empty() && plan.joins.is_empty(), "{plan:?}");
        assert_eq!(plan.status.condition(CONDITION_READY).unwrap().reason, "TooManyNodes");
    }

    #[test]
    fn no_matching_nodes_and_a_bad_selector_say_so() {
        let g = group(64);
        let plan1 = plan(&g, Ok(vec![]), &[]);
        assert_eq!(plan1.status.condition(CONDITION_READY).unwrap().reason, "NoMatchingNodes");
        let plan2 = plan(&g, Err("bad".into()), &[bound(&g, "a", "nic-a")]);
        assert!(plan2.delete.is_empty(), "a selector that cannot be read deletes nothing");
        assert_eq!(plan2.status.condition(CONDITION_READY).unwrap().reason, "InvalidSelector");
    }

    #[test]
    fn deletion_deletes_every_live_member_and_waits_for_all() {
        let g = group(64);
        let mut going = bound(&g, "b", "nic-b");
        going.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        let plan = plan_deletion(&g, &[bound(&g, "a", "nic-a"), going]);
        assert_eq!(plan.delete.iter().map(|l| l.name.clone()).collect::<Vec<_>>(), [member_name("web", "a", "nic-a")]);
        assert!(!plan.empty);
        assert_eq!(plan.status.condition(CONDITION_READY).unwrap().reason, "Deleting");
        assert!(plan_deletion(&g, &[]).empty);
    }

    #[test]
    fn the_member_list_is_bounded_and_names_fit() {
        let g = group(1000);
        let candidates: Vec<Candidate> = (0..150).map(|i| found(&format!("n{i:03}"), &format!("nic-{i}"))).collect();
        let plan = plan(&g, Ok(candidates), &[]);
        assert_eq!(plan.status.members.len(), MAX_LISTED_MEMBERS);
        assert_eq!(plan.status.members_omitted, 50);
        assert_eq!(plan.status.desired, 150);
        let long = "x".repeat(300);
        let name = member_name("web", &long, "nic");
        assert!(name.len() <= MAX_NAME && name.starts_with("web-x"), "{}", name.len());
        assert!(node_label(&long).len() <= MAX_LABEL_VALUE);
        assert_ne!(member_name("web", "a", "nic-1"), member_name("web", "a", "nic-2"));
    }
}
