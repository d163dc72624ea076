//! Drift by comparison, for VPC bindings: the due bindings of one network (same project, region
//! and credentials) are checked against one listing of its ports, and only those whose NIC IP
//! is missing from their VIP port, or whose NIC lost its `1.1.1.1/0`, are reconciled (and
//! re-bound). ECS bindings, and VPC ones
//! without a complete record of their bind, are reconciled as before.
//!
//! A listing is reused for a quarter of the drift period ([`Listings`]): due times are spread
//! over the period, so without it every sweep would list the whole project again. The cost is a
//! later repair: a pair removed just after a listing is seen up to a quarter period later.
//!
//! Why a listing by network: a VIP and the NICs bound to it share a network, so one listing
//! shows both halves of every binding in it (ports / 2,000 pages). Listing the NICs by `id`
//! instead would cost a call per 100 or so bindings (the query string's length), and a
//! project-wide listing of VIP ports would still leave the NICs unseen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::api::v1alpha1::{BindApi, VipBinding};
use crate::ecs::ErrorClass;

use crate::api::v1alpha1::Observed;
use crate::controller::cloud::pairs::{CheckOff, NetworkPorts, PairsError};
use crate::controller::context::Context;
use crate::controller::state::index::api_of;
use crate::controller::state::inflight::Direction;
use crate::controller::state::key::ObjectKey;

/// Recent listings of a network's ports, per project, region, credentials and network.
pub struct Listings {
    networks: Kept<(Listing, String), NetworkPorts>,
}

impl Listings {
    /// Listings reused for a quarter of `period`, and never longer than the ledger of writes
    /// that may still land remembers a passed horizon (a listing's use checks it).
    pub fn for_period(period: Duration) -> Self {
        Self { networks: Kept::new((period / 4).min(crate::controller::state::inflight::REMEMBERED)) }
    }
}

/// Listings of one kind, each kept for `max_age` after it was taken.
struct Kept<K, V> {
    max_age: Duration,
    taken: Mutex<HashMap<K, (Instant, Arc<V>)>>,
}

impl<K: Clone + Eq + std::hash::Hash, V> Kept<K, V> {
    fn new(max_age: Duration) -> Self {
        Self { max_age, taken: Mutex::default() }
    }

    fn fresh(&self, key: &K) -> Option<(Instant, Arc<V>)> {
        let taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        taken.get(key).filter(|(at, _)| at.elapsed() < self.max_age).cloned()
    }

    /// The listing for `key` and when it was taken (when its request started: what it shows
    /// is no older than that): a fresh one kept, else `list`'s (kept when it succeeds). Using
    /// a kept listing does not make it younger.
    async fn get_or_list<E, F: Future<Output = Result<V, E>>>(
        &self,
        key: &K,
        list: impl FnOnce() -> F,
    ) -> Result<(Instant, Arc<V>), E> {
        if let Some(kept) = self.fresh(key) {
            return Ok(kept);
        }
        let started = Instant::now();
        let seen = Arc::new(list().await?);
        self.keep(key.clone(), started, seen.clone());
        Ok((started, seen))
    }

    fn forget(&self, key: &K) {
        self.taken.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    fn keep(&self, key: K, at: Instant, value: Arc<V>) {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        // Old ones go: projects come and go, and a stale listing is never used anyway.
        taken.retain(|_, (at, _)| at.elapsed() < self.max_age);
        taken.insert(key, (at, value));
    }
}

/// Bindings whose records say one listing covers them all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Listing {
    project: String,
    region: String,
    /// The Secret (namespace, name) that signed their binds; `None`: the default credentials.
    secret: Option<(String, String)>,
}

/// A VPC binding checkable against a listing: its VIP port and NIC IP are on record.
struct Checkable {
    binding: Arc<VipBinding>,
    vip_port_id: String,
    nic_ip: String,
}

fn checkable(b: Arc<VipBinding>, default_api: BindApi) -> Result<(Listing, Checkable), Arc<VipBinding>> {
    if api_of(&b, default_api) != BindApi::Vpc {
        return Err(b);
    }
    let Some(w) = b.status.as_ref().and_then(|s| s.bound_with.as_ref()) else { return Err(b) };
    let (Some(vip_port_id), Some(nic_ip)) = (w.vip_port_id.clone(), w.nic_ip.clone()) else { return Err(b) };
    let listing = Listing {
        project: w.project_id.clone(),
        region: w.region.clone(),
        secret: w.credentials_secret.clone().map(|name| (b.namespace().unwrap_or_default(), name)),
    };
    Ok((listing, Checkable { binding: b, vip_port_id, nic_ip }))
}

/// Observations written at most per sweep: the API server's budget is the fleet's first.
const MAX_REFRESHES_PER_SWEEP: usize = 100;

/// Writes "bound, seen by a listing" into a binding whose observation is stale (see
/// [`crate::api::v1alpha1::Observed`]); true when it wrote.
async fn refresh_observation(ctx: &Context, c: &Checkable, allowed: bool) -> bool {
    let now = ctx.now();
    if !allowed || !crate::controller::binding::status::observation_stale(&c.binding, now.0) {
        return false;
    }
    let observed = Observed { bound: true, vip_port_id: c.vip_port_id.clone(), at: now, by: "listing".into() };
    match ctx.kube.write_observed(&c.binding, &observed).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "could not write the observation; the next round tries again");
            false
        }
    }
}

/// Why no listing vouches for a group.
enum ListFailed {
    /// Their credentials or project cannot be resolved now.
    NoTarget,
    Cloud(crate::ecs::EcsError),
}

/// Of the due bindings, the ones to reconcile: ECS ones, VPC ones a listing could not vouch
/// for, and VPC ones whose pair is missing from their VIP port or whose NIC lost its
/// `1.1.1.1/0`. The ones a listing shows in place are marked checked (their next check is a
/// period away).
pub async fn due_to_reconcile(
    ctx: &Context,
    listings: &Listings,
    due: Vec<ObjectRef<VipBinding>>,
    lookup: impl Fn(&ObjectRef<VipBinding>) -> Option<Arc<VipBinding>>,
) -> Vec<ObjectRef<VipBinding>> {
    if !ctx.cloud.has_vpc() {
        return due;
    }
    let default_api = ctx.targets.defaults().api;
    let mut reconcile = vec![];
    // One listing of each network's ports shows both halves: the VIP ports' pairs and the NIC
    // ports' source checks (a VIP and its NICs share the network).
    let mut groups: HashMap<(Listing, String), Vec<Checkable>> = HashMap::new();
    let mut refreshes = MAX_REFRESHES_PER_SWEEP;
    for r in due {
        match lookup(&r).map(|b| checkable(b, default_api)) {
            Some(Ok((listing, c))) => groups.entry((listing, c.binding.spec.subnet_id.clone())).or_default().push(c),
            Some(Err(_)) => reconcile.push(r),
            // Not in this sweep's snapshot of the cache yet (a loaded start-up: the store fills
            // while the sweeper runs). Handing it to a reconcile would check it by reads of its
            // own; it stays due and is compared by a later sweep's listing instead.
            None => tracing::debug!(binding = %r, "due, but not in the cache snapshot yet; compared later"),
        }
    }
    for (key, group) in groups {
        let Some(first) = group.first().map(|c| c.binding.clone()) else { continue };
        let (listing, network) = &key;
        let seen = listings
            .networks
            .get_or_list(&key, || async {
                let target = ctx.targets.resolve_for_unbind(&first).await.map_err(|_| ListFailed::NoTarget)?;
                // Through the gate: a key the cloud refused lists nothing either.
                let admitted = ctx.cloud.admit(&target).map_err(ListFailed::Cloud)?;
                admitted.network_ports(network).await.map_err(ListFailed::Cloud)
            })
            .await;
        let (taken, seen) = match seen {
            Ok(kept) => kept,
            // Their reconciles say why (and record it).
            Err(ListFailed::NoTarget) => {
                reconcile.extend(group.iter().map(|c| ObjectRef::from_obj(&*c.binding)));
                continue;
            }
            // Credentials that may not list: each binding's own reads then.
            Err(ListFailed::Cloud(e)) if e.class() == ErrorClass::Auth => {
                tracing::info!(project = %listing.project, error = %e, "cannot list ports; checking each binding instead");
                reconcile.extend(group.iter().map(|c| ObjectRef::from_obj(&*c.binding)));
                continue;
            }
            // Unknown: asked again by the sweeper shortly (they stay due).
            Err(ListFailed::Cloud(e)) => {
                tracing::warn!(project = %listing.project, %network, error = %e, bindings = group.len(), "the drift listing failed; trying again shortly");
                continue;
            }
        };
        let (mut in_place, mut drifted, mut outdated) = (0u64, 0u64, false);
        for c in group {
            // A listing taken while a write of ours may still land on these ports proves
            // nothing, however late it is used: they stay due, and a sweep with a listing
            // taken after the write can no longer land compares them again.
            let subjects = [c.vip_port_id.as_str(), c.binding.spec.nic_id.as_str()];
            if ctx.writes.may_land_after(&subjects, Direction::Bind, taken) {
                outdated |= ctx.writes.overtaken_until(&subjects, Direction::Bind).is_none();
                continue;
            }
            let paired = seen.vips.get(&c.vip_port_id).is_some_and(|ips| ips.contains(&c.nic_ip));
            // A NIC port the listing does not show is left to the VIP port's word: a NIC that
            // is gone is found by the binding's own next bind.
            let check_on = seen.nics.get(&c.binding.spec.nic_id) == Some(&false);
            if !paired || check_on {
                if check_on {
                    tracing::info!(nic = %c.binding.spec.nic_id, "the NIC's port has its source check on again; re-binding");
                }
                reconcile.push(ObjectRef::from_obj(&*c.binding));
                drifted += 1;
                continue;
            }
            ctx.resync.asserted(&ObjectKey::of(&c.binding), ObjectRef::from_obj(&*c.binding));
            in_place += 1;
            refreshes = refreshes.saturating_sub(refresh_observation(ctx, &c, refreshes > 0).await.into());
        }
        if outdated {
            // Nothing can land on them any more: the next sweep's listing will vouch for them.
            listings.networks.forget(&key);
        }
        ctx.note_compared(in_place, drifted);
        tracing::debug!(project = %listing.project, region = %listing.region, %network, in_place, drifted, "drift compared by listing");
    }
    reconcile
}

/// NICs whose `1.1.1.1/0` an unbind left for a binding that then went without needing it: taken
/// away now if nothing needs it (decided under the NIC's lock, as an unbind decides), through
/// the gate with the credentials the unbind used.
pub async fn release_unneeded_check_offs(ctx: &Context) {
    let Some(ledger) = ctx.cloud.check_off_ledger() else { return };
    for (nic, cleanup) in ledger.cleanups() {
        let released = match ctx.cloud.admit(&cleanup.target) {
            Ok(admitted) => admitted.release_unneeded(&nic, &cleanup, || ctx.index.nic_needs_check_off(&nic)).await,
            Err(e) => Err(PairsError::Cloud(e).into()),
        };
        match released {
            Ok(CheckOff::Removed) => {
                tracing::info!(nic = %nic, "NIC's source check on again: the binding it was kept for went without needing it");
            }
            Ok(_) => {}
            Err(f) => {
                tracing::debug!(nic = %nic, error = %f.error, "could not look at a NIC's check-off; trying again next sweep")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::cloud::pairs::VipPairs;

    #[tokio::test(start_paused = true)]
    async fn a_listing_serves_a_quarter_period_then_is_taken_again() {
        let listings: Kept<Listing, VipPairs> = Kept::new(Duration::from_secs(150));
        let key = Listing { project: "p".into(), region: "r".into(), secret: None };
        assert!(listings.fresh(&key).is_none());
        listings.keep(key.clone(), Instant::now(), Arc::new(VipPairs::new()));
        tokio::time::advance(Duration::from_secs(149)).await;
        assert!(listings.fresh(&key).is_some());
        let other = Listing { secret: Some(("ns".into(), "s".into())), ..key.clone() };
        assert!(listings.fresh(&other).is_none(), "other credentials list for themselves");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(listings.fresh(&key).is_none());
        listings.keep(other, Instant::now(), Arc::new(VipPairs::new()));
        assert_eq!(listings.taken.lock().unwrap().len(), 1, "stale ones are dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn using_a_listing_does_not_keep_it_young() {
        let listings: Kept<Listing, VipPairs> = Kept::new(Duration::from_secs(1));
        let key = Listing { project: "p".into(), region: "r".into(), secret: None };
        let taken = std::sync::atomic::AtomicUsize::new(0);
        let list = || async {
            taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, ()>(VipPairs::new())
        };
        // Used every 100 ms for 3 s: listed again each second (a quarter of the period).
        for _ in 0..30 {
            listings.get_or_list(&key, list).await.unwrap();
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 3);
        // A failed listing is not kept.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(listings.get_or_list(&key, || async { Err::<VipPairs, _>("down") }).await.is_err());
        assert!(listings.fresh(&key).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_listing_says_when_it_was_taken_and_can_be_dropped() {
        let listings: Kept<Listing, VipPairs> = Kept::new(Duration::from_secs(60));
        let key = Listing { project: "p".into(), region: "r".into(), secret: None };
        let started = Instant::now();
        let (taken, _) = listings
            .get_or_list(&key, || async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok::<_, ()>(VipPairs::new())
            })
            .await
            .unwrap();
        assert_eq!(taken, started, "taken when its request started, not when it was answered");
        tokio::time::advance(Duration::from_secs(10)).await;
        let (again, _) = listings.get_or_list(&key, || async { Err(()) }).await.unwrap();
        assert_eq!(again, started, "a kept listing keeps its age");
        listings.forget(&key);
        assert!(listings.fresh(&key).is_none());
    }
}
