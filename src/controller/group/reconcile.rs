//! The VipGroup reconcile: find the matching nodes and their NICs, let [`plan`] decide the
//! members, then create, put back and delete member VipBindings and write the group's status.
//! Members bind and unbind through the VipBinding controller like any binding (finalizer,
//! evidence, conflicts, tenancy, audit, drift): the group never calls a cloud write itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::core::{PartialObjectMeta, SelectorExt};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::api::group::{GROUP_FINALIZER, GROUP_LABEL, MemberReason, VipGroup, VipGroupStatus};
use crate::api::v1alpha1::{CONDITION_READY, VipBinding};
use crate::controller::context::Context;
use crate::controller::error::Error;
use crate::controller::kube_ops::{add_finalizer_patch, remove_finalizer_patch, status_patch};
use crate::controller::state::caches::Caches;

use super::nics::{NicLookup, confirm_missing};
use super::nodes::{NodeView, ProviderIds, ServerId};
use super::plan::{self, Candidate, GroupPlan, Nic};

/// The field manager of the members' spec, labels and owner reference (server-side apply): a
/// hand edit of any of them is put back by the next reconcile.
pub const GROUP_MANAGER: &str = "vip-operator-group";
/// NIC lookups and node reads in flight at once for one group.
const LOOKUPS_AT_ONCE: usize = 16;
/// A group with members still binding, or nodes whose NIC is unknown, looks again this soon.
const RECHECK_SOON: Duration = Duration::from_secs(30);
/// A settled group looks again this often (a NIC swapped on a server, a cache entry expired).
const RECHECK: Duration = Duration::from_secs(600);

/// What a group reconcile works with.
pub struct GroupContext {
    pub ctx: Arc<Context>,
    pub nodes: Store<PartialObjectMeta<Node>>,
    pub provider_ids: ProviderIds,
    pub nics: NicLookup,
    /// The binding controllers' caches (the members are found there, not watched twice).
    pub bindings: Caches<VipBinding>,
    /// The node watch has listed every node once. Before, an empty cache would read as "no node
    /// matches" and delete every member.
    pub nodes_listed: std::sync::atomic::AtomicBool,
}

impl GroupContext {
    fn client(&self) -> &kube::Client {
        self.ctx.kube.client()
    }

    /// `group`'s members: bindings it controls, and bindings labelled as its own that lost
    /// their owner reference (a hand edit, put back).
    fn members(&self, group: &VipGroup) -> Vec<VipBinding> {
        let (ns, name) = (group.namespace(), group.name_any());
        let mut out: Vec<VipBinding> = vec![];
        for store in self.bindings.stores() {
            for b in store.state() {
                if b.namespace() != ns {
                    continue;
                }
                let controlled = b.owner_references().iter().any(|o| o.controller == Some(true));
                let labelled = b.labels().get(GROUP_LABEL) == Some(&name) && !controlled;
                if (plan::is_member_of(&b, group) || labelled) && !out.iter().any(|o| o.uid() == b.uid()) {
                    out.push((*b).clone());
                }
            }
        }
        out
    }
}

pub fn error_policy(group: Arc<VipGroup>, error: &Error, _ctx: Arc<GroupContext>) -> Action {
    tracing::warn!(namespace = %group.namespace().unwrap_or_default(), name = %group.name_any(), error = %error, "group reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

pub async fn reconcile(group: Arc<VipGroup>, gctx: Arc<GroupContext>) -> Result<Action, Error> {
    let span =
        tracing::info_span!("group", namespace = %group.namespace().unwrap_or_default(), name = %group.name_any());
    crate::controller::error::catching_panics(&span, reconcile_inner(&group, &gctx)).await
}

async fn reconcile_inner(group: &VipGroup, gctx: &GroupContext) -> Result<Action, Error> {
    // Nothing is decided from caches that have not been listed: no node would match, and no
    // member would be known.
    if !gctx.nodes_listed.load(std::sync::atomic::Ordering::SeqCst) || !gctx.ctx.index.synced() {
        tracing::debug!("waiting for the node and binding caches to be listed");
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let api: Api<VipGroup> = Api::namespaced(gctx.client().clone(), &group.namespace().unwrap_or_default());
    let finalizers = group.finalizers();
    let has_finalizer = finalizers.iter().any(|f| f == GROUP_FINALIZER);
    let members = gctx.members(group);
    if group.meta().deletion_timestamp.is_some() {
        if !has_finalizer {
            return Ok(Action::await_change());
        }
        let plan = plan::plan_deletion(group, &members);
        apply_plan(group, gctx, &plan).await?;
        write_status(&api, group, plan.status).await?;
        if plan.empty {
            if let Some(index) = finalizers.iter().position(|f| f == GROUP_FINALIZER) {
                let patch = remove_finalizer_patch(group.uid().as_deref(), index, GROUP_FINALIZER)?;
                match api.patch(&group.name_any(), &PatchParams::default(), &Patch::Json::<()>(patch)).await {
                    Ok(_) => tracing::info!("every member is gone: group released"),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(Action::await_change());
        }
        // Member events wake it too; this is the floor.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    if !has_finalizer {
        let existing = group.meta().finalizers.as_deref();
        let patch = add_finalizer_patch(group.uid().as_deref(), existing, GROUP_FINALIZER)?;
        api.patch(&group.name_any(), &PatchParams::default(), &Patch::Json::<()>(patch)).await?;
        // The patch is seen as a change: the next reconcile goes on from here.
        return Ok(Action::await_change());
    }
    let candidates = candidates(group, gctx, &members).await;
    let plan = plan::plan(group, candidates, &members);
    apply_plan(group, gctx, &plan).await?;
    let settled = plan
        .status
        .condition(CONDITION_READY)
        .is_some_and(|c| c.status == "True" || c.reason == crate::api::group::GroupReason::NoMatchingNodes.as_str());
    write_status(&api, group, plan.status).await?;
    Ok(Action::requeue(if settled { RECHECK } else { RECHECK_SOON }))
}

/// The nodes the selector matches, with their NICs (`Err`: the selector cannot be read). No
/// NIC is looked up for a group over its maxNodes: nothing would be done with them.
async fn candidates(group: &VipGroup, gctx: &GroupContext, members: &[VipBinding]) -> Result<Vec<Candidate>, String> {
    // The NIC each node's member binds, to confirm a listing that no longer shows it.
    let member_nics: HashMap<String, String> = members
        .iter()
        .filter(|b| plan::is_member_of(b, group) && b.meta().deletion_timestamp.is_none())
        .filter_map(|b| Some((b.labels().get(crate::api::group::NODE_LABEL)?.clone(), b.spec.nic_id.clone())))
        .collect();
    let member_nics = &member_nics;
    let selector: kube::core::Selector = group
        .spec
        .node_selector
        .to_label_selector()
        .try_into()
        .map_err(|e| format!("spec.nodeSelector cannot be used: {e}"))?;
    let mut matching: Vec<NodeView> = gctx
        .nodes
        .state()
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter_map(|n| NodeView::of(n))
        .filter(|n| selector.matches(&n.labels))
        .collect();
    matching.sort_by(|a, b| a.name.cmp(&b.name));
    let max = usize::try_from(group.spec.max_nodes).unwrap_or(usize::MAX);
    if matching.len() > max {
        return Ok(matching
            .into_iter()
            .map(|n| Candidate { node: n.name, nic: Nic::Unknown("not looked up: too many nodes".into()) })
            .collect());
    }
    // The group's cloud target, as its members' would be (the namespace's policy applies).
    let probe = plan::desired_member(group, "-", "-");
    let target = gctx.ctx.targets.resolve(&probe).await;
    let servers: Vec<(NodeView, ServerId)> = futures::stream::iter(matching)
        .map(|node| async move {
            let server = node_server(gctx, &node).await;
            (node, server)
        })
        .buffer_unordered(LOOKUPS_AT_ONCE)
        .collect()
        .await;
    if let Ok(target) = &target {
        let ids = servers.iter().filter_map(|(_, s)| match s {
            ServerId::Server(id) => Some(id.as_str()),
            _ => None,
        });
        let unknown = gctx.nics.unknown(target, &group.spec.subnet_id, ids);
        gctx.nics.prefetch(&gctx.ctx.cloud, target, &group.spec.subnet_id, &unknown).await;
    }
    let lookups = futures::stream::iter(servers)
        .map(|(node, server)| {
            let target = target.clone();
            async move {
                let nic = match server {
                    ServerId::Nic(nic) => Nic::Found(nic),
                    ServerId::Missing(message) => Nic::Missing { reason: MemberReason::NoServerId, message },
                    ServerId::Unread => Nic::Unknown("the node's providerID could not be read".into()),
                    ServerId::Server(server) => match &target {
                        Ok(target) => {
                            let member_nic = member_nics.get(&plan::node_label(&node.name)).map(String::as_str);
                            server_nic(gctx, target, (&server, &group.spec.subnet_id), member_nic).await
                        }
                        Err(verdict) => Nic::Unknown(format!("cannot look the NIC up: {}", verdict.message)),
                    },
                };
                Candidate { node: node.name, nic }
            }
        })
        .buffer_unordered(LOOKUPS_AT_ONCE);
    let mut out: Vec<Candidate> = lookups.collect().await;
    out.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(out)
}

/// A server's NIC in the network, as looked up; a listing that says "none" or "several" while
/// the node's member binds `member_nic` is confirmed by reading that NIC first.
async fn server_nic(
    gctx: &GroupContext,
    target: &crate::ecs::CloudTarget,
    (server, network): (&str, &str),
    member_nic: Option<&str>,
) -> Nic {
    let listed = gctx.nics.nic_of(&gctx.ctx.cloud, target, server, network).await;
    match (&listed, member_nic) {
        (Nic::Missing { reason: MemberReason::NoNicInNetwork | MemberReason::SeveralNics, .. }, Some(nic)) => {
            confirm_missing(&gctx.ctx.cloud, target, (server, network), nic, listed).await
        }
        _ => listed,
    }
}

/// The node's server ID, reading its providerID when it is not known yet.
async fn node_server(gctx: &GroupContext, node: &NodeView) -> ServerId {
    let known = gctx.provider_ids.get(&node.uid);
    let first = node.server_id(known.as_deref());
    if first != ServerId::Unread {
        return first;
    }
    let nodes: Api<Node> = Api::all(gctx.client().clone());
    match nodes.get_opt(&node.name).await {
        Ok(Some(n)) if n.uid().as_deref() == Some(node.uid.as_str()) => {
            let provider_id = n.spec.and_then(|s| s.provider_id).unwrap_or_default();
            gctx.provider_ids.put(&node.uid, provider_id.clone());
            node.server_id(Some(&provider_id))
        }
        // Gone or replaced since the watch saw it: the next event sorts it out.
        Ok(_) => ServerId::Unread,
        Err(e) => {
            tracing::debug!(node = %node.name, error = %e, "cannot read the node's providerID");
            ServerId::Unread
        }
    }
}

async fn apply_plan(group: &VipGroup, gctx: &GroupContext, plan: &GroupPlan) -> Result<(), Error> {
    let ns = group.namespace().unwrap_or_default();
    let bindings: Api<VipBinding> = Api::namespaced(gctx.client().clone(), &ns);
    let params = PatchParams::apply(GROUP_MANAGER).force();
    let joined: HashMap<&str, &str> = plan.joins.iter().map(|(n, nic)| (n.as_str(), nic.as_str())).collect();
    let applies = futures::stream::iter(plan.apply.iter().map(Ok::<_, Error>)).try_for_each_concurrent(
        LOOKUPS_AT_ONCE,
        |member| {
            let (bindings, params) = (&bindings, &params);
            async move {
                let mut member = member.clone();
                // An apply names its kind; the owner's UID keeps it from landing on a group's
                // successor of the same name.
                member.meta_mut().managed_fields = None;
                bindings.patch(&member.name_any(), params, &Patch::Apply(&member)).await?;
                Ok(())
            }
        },
    );
    applies.await?;
    for (node, nic) in &joined {
        gctx.ctx
            .kube
            .event_on(
                &group.object_ref(&()),
                false,
                "MemberJoined",
                "Join",
                format!("node {node} joined: VIP on NIC {nic}"),
            )
            .await;
    }
    for leave in &plan.delete {
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid: leave.uid.clone(), resource_version: None }),
            ..DeleteParams::background()
        };
        match bindings.delete(&leave.name, &params).await {
            Ok(_) => {}
            // Gone, or a successor of the same name (the precondition): not ours to delete.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
        let note =
            format!("node {} left ({}): member {} deleted, its finalizer unbinds", leave.node, leave.why, leave.name);
        gctx.ctx.kube.event_on(&group.object_ref(&()), false, "MemberLeft", "Leave", note).await;
    }
    Ok(())
}

/// Writes the status, keeping the Ready condition's transition time while its status stays.
async fn write_status(api: &Api<VipGroup>, group: &VipGroup, mut status: VipGroupStatus) -> Result<(), Error> {
    let old = group.status.as_ref();
    for c in &mut status.conditions {
        if let Some(prev) = old.and_then(|s| s.condition(&c.type_))
            && prev.status == c.status
        {
            c.last_transition_time = prev.last_transition_time.clone();
        }
    }
    if old == Some(&status) {
        return Ok(());
    }
    let value = serde_json::to_value(&status).map_err(kube::Error::SerdeError)?;
    let patch = status_patch(group.uid().as_deref(), None, value)?;
    let params = PatchParams {
        field_manager: Some(crate::controller::kube_ops::FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match api.patch_status(&group.name_any(), &params, &Patch::Json::<()>(patch)).await {
        Ok(_) => Ok(()),
        // Gone, or replaced (a failed `test`): nothing to say it to.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The group a binding event concerns (a member's controller, or its group label).
pub fn group_of(b: &VipBinding) -> Option<ObjectRef<VipGroup>> {
    let ns = b.namespace()?;
    let owner = b
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == crate::api::group::GROUP_KIND)
        .map(|o| o.name.clone());
    let name = owner.or_else(|| b.labels().get(GROUP_LABEL).cloned())?;
    Some(ObjectRef::new(&name).within(&ns))
}
