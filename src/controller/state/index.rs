//! An index over the watched bindings, kept up to date from the same watch events that feed the
//! controller's cache: who owns each NIC, and which Secrets live bindings use. Decisions read it
//! in O(1), with no API call.
//!
//! Ownership: the ECS unbind names no VIP, so an ECS binding claims its whole NIC: two bindings
//! on one NIC, either of them ECS, would undo each other. A VPC binding claims its (NIC, VIP)
//! pair only: its unbind removes exactly its NIC's IP from its own VIP's port, so VPC bindings
//! of different VIPs share a NIC. Ownership is sticky: a binding that may have sent a bind (it carries our finalizer, which goes
//! on right before the first cloud call) owns the NIC over any that cannot have; among equals
//! the oldest (creationTimestamp, then UID: stable, unlike names, which order by chance) wins.
//! The owner keeps the NIC while it is being deleted, so the next one in line binds only after
//! the owner's unbind is done. Nothing is decided before every watched namespace has been
//! listed once ([`BindingIndex::synced`]), so one namespace cannot decide before the others
//! are known.
//! NIC IDs are globally unique (Neutron port UUIDs), so the key is the NIC ID alone — stricter
//! than also comparing project and region, never looser.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::RwLock;

use kube::ResourceExt;
use kube::runtime::watcher;

use crate::api::v1alpha1::{BindApi, VipBinding};

use crate::controller::state::key::ObjectKey;

/// A binding's claim on its NIC. The field order is the ownership order (derived `Ord`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Claim {
    /// No bind request can have been sent for it (no finalizer): after every one that may have.
    uncommitted: bool,
    created: Option<jiff::Timestamp>,
    uid: ObjectKey,
    namespace: String,
    name: String,
    /// `None`: the whole NIC (ECS). `Some(vip)`: only that VIP on the NIC (VPC).
    vip: Option<String>,
}

impl Claim {
    /// Whether the two cannot both act on their NIC.
    fn conflicts(&self, other: &Claim) -> bool {
        match (&self.vip, &other.vip) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }

    /// A VPC binding's claim (of one VIP on the NIC), not an ECS one (of the whole NIC).
    pub fn is_vpc(&self) -> bool {
        self.vip.is_some()
    }

    /// `namespace/name`, for people (condition messages, logs).
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The key of the binding's per-object state.
    pub fn uid(&self) -> &ObjectKey {
        &self.uid
    }

    /// A reference to trigger the binding's reconcile.
    pub fn object_ref(&self) -> kube::runtime::reflector::ObjectRef<VipBinding> {
        let mut r = kube::runtime::reflector::ObjectRef::new(&self.name).within(&self.namespace);
        r.extra.uid = Some(self.uid.to_string());
        r
    }
}

#[derive(Debug, Clone)]
struct Entry {
    nic: String,
    /// Its record says the operator turned the NIC's source check off (`1.1.1.1/0`).
    source_check_off_added: bool,
    /// A VPC binding that is bound or may be (committed, live, not known unbound): it needs
    /// the NIC's check off.
    needs_check_off: bool,
    /// It has a record of a bind (`status.boundWith`), even one that found the check off there.
    recorded: bool,
    /// A VPC binding that may have bound and still holds our finalizer, live or being deleted:
    /// its bind may still be under way, or its unbind still to come.
    may_touch_nic: bool,
    /// The Secrets it needs: the one its spec names, and the one its last bind used
    /// (`status.boundWith`), which the deletion's unbind signs with.
    secrets: Vec<(String, String)>,
    /// Shared with `by_nic`: one copy of the strings per binding.
    claim: std::sync::Arc<Claim>,
}

/// The API a binding is (or will be) bound through: its record, else its spec, else the
/// operator's default.
pub fn api_of(b: &VipBinding, default: BindApi) -> BindApi {
    match b.status.as_ref().and_then(|s| s.bound_with.as_ref()) {
        Some(record) => record.api(),
        None => b.spec.api.unwrap_or(default),
    }
}

/// A VPC binding that may have bound (committed, not known unbound), live or deleting.
fn may_touch_nic(b: &VipBinding, default_api: BindApi) -> bool {
    api_of(b, default_api) == BindApi::Vpc
        && crate::controller::binding::status::has_finalizer(b)
        && crate::controller::binding::status::bound_knowledge(b)
            != crate::controller::binding::status::BoundKnowledge::NotBound
}

fn entry_of(b: &VipBinding, default_api: BindApi) -> Option<Entry> {
    let uid = b.uid()?;
    let namespace = b.namespace().unwrap_or_default();
    let record = b.status.as_ref().and_then(|s| s.bound_with.as_ref());
    Some(Entry {
        nic: b.spec.nic_id.clone(),
        source_check_off_added: record.is_some_and(|w| w.source_check_off_added),
        recorded: record.is_some(),
        needs_check_off: may_touch_nic(b, default_api) && b.metadata.deletion_timestamp.is_none(),
        may_touch_nic: may_touch_nic(b, default_api),
        secrets: {
            let spec = b.spec.credentials_secret_ref.as_ref().map(|r| r.name.clone());
            let recorded =
                b.status.as_ref().and_then(|s| s.bound_with.as_ref()).and_then(|w| w.credentials_secret.clone());
            let mut names: Vec<String> = spec.into_iter().chain(recorded).collect();
            names.dedup();
            names.into_iter().map(|name| (namespace.clone(), name)).collect()
        },
        claim: std::sync::Arc::new(Claim {
            uncommitted: !crate::controller::binding::status::has_finalizer(b),
            created: b.metadata.creation_timestamp.as_ref().map(|t| t.0),
            namespace,
            name: b.name_any(),
            uid: ObjectKey::from(uid.as_str()),
            vip: (api_of(b, default_api) == BindApi::Vpc).then(|| b.spec.ip_address.clone()),
        }),
    })
}

/// What an index change may have made actionable.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Bindings that became the owner of their NIC (they may bind now).
    pub new_owners: Vec<Claim>,
    /// Secrets whose in-use state may have changed.
    pub secrets: Vec<(String, String)>,
    /// Bindings that left the watch (deleted, or missing from a re-list): whatever is kept
    /// about them can go.
    pub gone: Vec<Claim>,
}

#[derive(Default)]
struct Inner {
    by_uid: HashMap<ObjectKey, Entry>,
    by_nic: HashMap<String, BTreeSet<std::sync::Arc<Claim>>>,
    by_secret: HashMap<(String, String), HashSet<ObjectKey>>,
    /// Initial lists in progress, per watch scope (namespace, or all).
    buffers: HashMap<Option<String>, Vec<Entry>>,
    /// The watch scopes that must have been listed before ownership is decided (`None`: not
    /// told, as in tests that feed the index directly).
    expected: Option<HashSet<Option<String>>>,
    listed: HashSet<Option<String>>,
    default_api: BindApi,
}

impl Inner {
    /// The claims on the NIC that may act: no claim ordered before them conflicts with them.
    /// (A claim behind a waiting one waits too when they conflict: simple, and never looser.)
    fn owners(&self, nic: &str) -> Vec<&Claim> {
        let Some(claims) = self.by_nic.get(nic) else { return vec![] };
        let mut owners = Vec::new();
        for (i, claim) in claims.iter().enumerate() {
            if !claims.iter().take(i).any(|earlier| earlier.conflicts(claim)) {
                owners.push(&**claim);
            }
        }
        owners
    }

    /// The claims on `nic` and their entries, leaving out the binding whose UID is `except`.
    fn on_nic<'a>(&'a self, nic: &str, except: Option<&'a str>) -> impl Iterator<Item = (&'a Claim, &'a Entry)> + 'a {
        self.by_nic
            .get(nic)
            .into_iter()
            .flatten()
            .filter(move |c| except.is_none_or(|uid| c.uid.as_str() != uid))
            .filter_map(|c| self.by_uid.get(c.uid.as_str()).map(|e| (&**c, e)))
    }

    fn owner_uids(&self, nic: &str) -> HashSet<ObjectKey> {
        self.owners(nic).into_iter().map(|c| c.uid.clone()).collect()
    }

    /// Claims that became owners on `nic` since `before`.
    fn new_owners(&self, nic: &str, before: &HashSet<ObjectKey>) -> Vec<Claim> {
        self.owners(nic).into_iter().filter(|c| !before.contains(&c.uid)).cloned().collect()
    }

    /// The binding left the watch for good.
    fn leave(&mut self, uid: &str, changes: &mut Changes) {
        if let Some(old) = self.by_uid.get(uid) {
            changes.gone.push((*old.claim).clone());
        }
        self.remove(uid, changes);
    }

    fn remove(&mut self, uid: &str, changes: &mut Changes) {
        let Some(old) = self.by_uid.remove(uid) else { return };
        let before = self.owner_uids(&old.nic);
        if let Some(claims) = self.by_nic.get_mut(&old.nic) {
            claims.remove(&old.claim);
            if claims.is_empty() {
                self.by_nic.remove(&old.nic);
            }
        }
        changes.new_owners.extend(self.new_owners(&old.nic, &before));
        for secret in old.secrets {
            if let Some(users) = self.by_secret.get_mut(&secret) {
                users.remove(uid);
                if users.is_empty() {
                    self.by_secret.remove(&secret);
                }
            }
            changes.secrets.push(secret);
        }
    }

    fn insert(&mut self, entry: Entry, changes: &mut Changes) {
        let uid = entry.claim.uid.clone();
        let old_nic = match self.by_uid.get(&uid) {
            Some(old)
                if old.nic == entry.nic
                    && old.secrets == entry.secrets
                    && old.claim == entry.claim
                    && old.source_check_off_added == entry.source_check_off_added
                    && old.needs_check_off == entry.needs_check_off
                    && old.may_touch_nic == entry.may_touch_nic
                    && old.recorded == entry.recorded =>
            {
                return;
            }
            Some(old) => Some(old.nic.clone()),
            None => None,
        };
        // Owners are compared before and after the whole replacement, by identity: an update
        // of the owner's own claim (its finalizer added) is no news, and nobody else became
        // owner for the moment the old claim was out.
        let mut nics = vec![entry.nic.clone()];
        nics.extend(old_nic.filter(|n| *n != entry.nic));
        let before: Vec<HashSet<ObjectKey>> = nics.iter().map(|n| self.owner_uids(n)).collect();
        let mut replaced = Changes::default();
        self.remove(uid.as_str(), &mut replaced);
        changes.secrets.extend(replaced.secrets);
        self.by_nic.entry(entry.nic.clone()).or_default().insert(entry.claim.clone());
        for secret in &entry.secrets {
            self.by_secret.entry(secret.clone()).or_default().insert(uid.clone());
            changes.secrets.push(secret.clone());
        }
        self.by_uid.insert(uid, entry);
        for (nic, before) in nics.iter().zip(before) {
            let new = self.new_owners(nic, &before);
            changes.new_owners.extend(new);
        }
    }
}

#[derive(Default)]
pub struct BindingIndex {
    inner: RwLock<Inner>,
}

impl BindingIndex {
    /// An index for an operator whose bindings without `spec.api` use `default_api`.
    pub fn new(default_api: BindApi) -> Self {
        Self { inner: RwLock::new(Inner { default_api, ..Inner::default() }) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one watch event from the watch covering `scope` (a namespace, or all).
    pub fn apply(&self, scope: Option<&str>, event: &watcher::Event<VipBinding>) -> Changes {
        let mut changes = Changes::default();
        let mut inner = self.write();
        let api = inner.default_api;
        match event {
            watcher::Event::Apply(b) => {
                if let Some(e) = entry_of(b, api) {
                    inner.insert(e, &mut changes);
                }
            }
            watcher::Event::Delete(b) => {
                if let Some(uid) = b.uid() {
                    inner.leave(&uid, &mut changes);
                }
            }
            watcher::Event::Init => {
                inner.buffers.insert(scope.map(str::to_string), Vec::new());
            }
            watcher::Event::InitApply(b) => {
                if let (Some(e), Some(buffer)) = (entry_of(b, api), inner.buffers.get_mut(&scope.map(str::to_string))) {
                    buffer.push(e);
                }
            }
            watcher::Event::InitDone => {
                inner.listed.insert(scope.map(str::to_string));
                let fresh = inner.buffers.remove(&scope.map(str::to_string)).unwrap_or_default();
                let fresh_uids: HashSet<&str> = fresh.iter().map(|e| e.claim.uid.as_str()).collect();
                // A re-list replaces everything this watch covers.
                let stale: Vec<ObjectKey> = inner
                    .by_uid
                    .values()
                    .filter(|e| scope.is_none_or(|ns| e.claim.namespace == ns))
                    .filter(|e| !fresh_uids.contains(e.claim.uid.as_str()))
                    .map(|e| e.claim.uid.clone())
                    .collect();
                for uid in stale {
                    inner.leave(uid.as_str(), &mut changes);
                }
                for e in fresh {
                    inner.insert(e, &mut changes);
                }
            }
        }
        changes
    }

    /// The watch scopes (namespaces, or `None` for all) that feed this index.
    pub fn expect_scopes(&self, scopes: &[Option<String>]) {
        self.write().expected = Some(scopes.iter().cloned().collect());
    }

    /// Whether every expected scope has been listed at least once: before that, ownership is
    /// not known.
    pub fn synced(&self) -> bool {
        let inner = self.read();
        inner.expected.as_ref().is_none_or(|scopes| scopes.iter().all(|s| inner.listed.contains(s)))
    }

    /// `namespace/name` of another binding whose claim on `b`'s NIC comes first and conflicts
    /// with `b`'s (see the module comment).
    pub fn conflict_owner(&self, b: &VipBinding) -> Option<String> {
        self.conflict_owner_claim(b).map(|c| c.key())
    }

    /// The claim of the binding that owns `b`'s NIC over `b` (see [`Self::conflict_owner`]).
    pub fn conflict_owner_claim(&self, b: &VipBinding) -> Option<Claim> {
        let uid = b.uid()?;
        let inner = self.read();
        let claims = inner.by_nic.get(&b.spec.nic_id)?;
        let mine = match inner.by_uid.get(uid.as_str()) {
            Some(entry) => entry.claim.clone(),
            // A binding the index has not seen yet is newer than everything it has seen.
            None => std::sync::Arc::new(entry_of(b, inner.default_api)?.claim.as_ref().clone()),
        };
        claims.iter().take_while(|c| c.uid != mine.uid).find(|c| c.conflicts(&mine)).map(|c| (**c).clone())
    }

    /// Whether another binding on `b`'s NIC recorded turning its source check off: `b` then
    /// shares that, so whichever of them is unbound last turns it back on.
    pub fn source_check_off_by_another(&self, b: &VipBinding) -> bool {
        self.read().on_nic(&b.spec.nic_id, b.uid().as_deref()).any(|(_, e)| e.source_check_off_added)
    }

    /// Whether a VPC binding other than `b` on `b`'s NIC is bound or may be (committed, live,
    /// not known unbound): it needs the NIC's check off. Asked under the NIC's lock, right
    /// before the write that would turn the check back on.
    pub fn others_need_check_off(&self, b: &VipBinding) -> bool {
        self.read().on_nic(&b.spec.nic_id, b.uid().as_deref()).any(|(_, e)| e.needs_check_off)
    }

    /// `namespace/name` of the VPC bindings other than `b` on `b`'s NIC that may have bound and
    /// have no record of a bind yet: live ones binding, and deleting ones whose bind was cut
    /// short (chaos seed 105: one deleted while its bind was in flight). `b`'s record, which says
    /// the entry is the operator's, must outlive `b` until they have read it or are gone, or the
    /// last of them would leave the entry behind (a process's own memory of it dies with a
    /// leader). One that recorded finding the entry there is not waited for: it has bound
    /// already, and waiting would not change what it read.
    pub fn others_needing_unrecorded(&self, b: &VipBinding) -> Vec<String> {
        let inner = self.read();
        inner
            .on_nic(&b.spec.nic_id, b.uid().as_deref())
            .filter(|(_, e)| e.may_touch_nic && !e.recorded)
            .map(|(c, _)| c.key())
            .collect()
    }

    /// Whether any VPC binding on `nic` is bound or may be (see [`Self::others_need_check_off`]).
    /// Whether a binding other than `b` claims what `b`'s bind through `api` wrote: through ECS,
    /// any binding on its NIC (an unbind names no VIP); through VPC, one with the same VIP on
    /// it (the pair is the NIC's IP in that VIP's port).
    pub fn others_claim_bind_of(&self, b: &VipBinding, api: BindApi) -> bool {
        self.read().on_nic(&b.spec.nic_id, b.uid().as_deref()).any(|(c, _)| match api {
            BindApi::Ecs => true,
            BindApi::Vpc => c.vip.as_deref() == Some(b.spec.ip_address.as_str()),
        })
    }

    pub fn nic_needs_check_off(&self, nic: &str) -> bool {
        self.read().on_nic(nic, None).any(|(_, e)| e.needs_check_off)
    }

    /// Whether a binding (live or being deleted) uses this Secret.
    pub fn secret_in_use(&self, namespace: &str, name: &str) -> bool {
        self.read().by_secret.contains_key(&(namespace.to_string(), name.to_string()))
    }

    /// `(namespace, name)` of the bindings that use this Secret.
    /// The bindings (live or being deleted) that use this Secret.
    pub fn secret_users(&self, namespace: &str, name: &str) -> Vec<Claim> {
        let inner = self.read();
        let Some(uids) = inner.by_secret.get(&(namespace.to_string(), name.to_string())) else { return vec![] };
        uids.iter().filter_map(|uid| inner.by_uid.get(uid)).map(|e| (*e.claim).clone()).collect()
    }

    /// The bindings (live or being deleted) in `namespace`. A scan: asked only when a
    /// namespace's policy changes.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Claim> {
        let inner = self.read();
        inner.by_uid.values().filter(|e| e.claim.namespace == namespace).map(|e| (*e.claim).clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.read().by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::Fixture;

    fn at(rfc3339: &str) -> jiff::Timestamp {
        rfc3339.parse().unwrap()
    }

    #[test]
    fn the_nics_check_off_is_needed_by_live_vpc_bindings_that_are_or_may_be_bound() {
        let bound = crate::api::testing::bound_status;
        let idx = BindingIndex::default();
        // Known unbound itself, so whether the NIC needs the check off is the other's alone.
        let me = VipBinding::test()
            .named("a", "me")
            .nic("nic")
            .ip("10.0.0.1")
            .api(BindApi::Vpc)
            .with_finalizer()
            .with_status(bound("False"));
        idx.apply(None, &watcher::Event::Apply(me.clone()));
        assert!(!idx.others_need_check_off(&me), "its own need is not another's");
        let other = || VipBinding::test().named("a", "o").nic("nic").ip("10.0.0.2");
        let vpc = || other().api(BindApi::Vpc).with_finalizer();
        for (other, needs) in [
            (other().api(BindApi::Vpc), false),
            (vpc(), true),
            (vpc().with_status(bound("False")), false),
            (vpc().with_status(bound("True")), true),
            (vpc().with_status(bound("True")).deleting(), false),
            (other().with_finalizer().with_status(bound("True")), false),
        ] {
            idx.apply(None, &watcher::Event::Apply(other.clone()));
            assert_eq!(idx.others_need_check_off(&me), needs, "{:?}", other.status);
            assert_eq!(idx.nic_needs_check_off("nic"), needs, "{:?}", other.status);
        }
        // Waited for by a binding that recorded adding the entry: the unrecorded ones that may
        // have bound, live or deleting (a bind cut short by its deletion).
        for (other, waited) in [
            (vpc(), true),
            (vpc().deleting(), true),
            (vpc().with_status(bound("False")).deleting(), false),
            (other().with_finalizer().deleting(), false),
        ] {
            idx.apply(None, &watcher::Event::Apply(other.clone()));
            assert_eq!(!idx.others_needing_unrecorded(&me).is_empty(), waited, "{other:?}");
        }
    }

    #[test]
    fn vpc_bindings_share_a_nic_per_vip_and_an_ecs_binding_takes_it_whole() {
        let idx = BindingIndex::default();
        let t = |s: u32| at(&format!("2026-01-01T00:00:{s:02}Z"));
        let vip1 = VipBinding::test().named("a", "vip1").nic("nic").ip("10.0.0.1").api(BindApi::Vpc).created(t(1));
        let vip2 = VipBinding::test().named("a", "vip2").nic("nic").ip("10.0.0.2").api(BindApi::Vpc).created(t(2));
        let vip1_again =
            VipBinding::test().named("b", "again").nic("nic").ip("10.0.0.1").api(BindApi::Vpc).created(t(3));
        let ecs = VipBinding::test().named("b", "ecs").nic("nic").ip("10.0.0.3").created(t(4));
        for b in [&vip1, &vip2, &vip1_again, &ecs] {
            idx.apply(None, &watcher::Event::Apply(b.clone()));
        }
        assert_eq!(idx.conflict_owner(&vip1), None);
        assert_eq!(idx.conflict_owner(&vip2), None, "another VIP on the same NIC");
        assert_eq!(idx.conflict_owner(&vip1_again).as_deref(), Some("a/vip1"), "the same VIP on the same NIC");
        assert_eq!(idx.conflict_owner(&ecs).as_deref(), Some("a/vip1"), "ECS takes the whole NIC");
        // vip1 goes: its successor for the same VIP may act; ECS still waits for vip2.
        let changes = idx.apply(None, &watcher::Event::Delete(vip1));
        assert_eq!(changes.new_owners.iter().map(Claim::key).collect::<Vec<_>>(), vec!["b/again"]);
        assert_eq!(idx.conflict_owner(&ecs).as_deref(), Some("a/vip2"));
        idx.apply(None, &watcher::Event::Delete(vip2));
        let changes = idx.apply(None, &watcher::Event::Delete(vip1_again));
        assert_eq!(changes.new_owners.iter().map(Claim::key).collect::<Vec<_>>(), vec!["b/ecs"]);
        // Unset spec.api follows the operator's default.
        let vpc_default = BindingIndex::new(BindApi::Vpc);
        let plain1 = VipBinding::test().named("a", "p1").nic("nic").ip("10.0.0.1").created(t(1));
        let plain2 = VipBinding::test().named("a", "p2").nic("nic").ip("10.0.0.2").created(t(2));
        vpc_default.apply(None, &watcher::Event::Apply(plain1));
        vpc_default.apply(None, &watcher::Event::Apply(plain2.clone()));
        assert_eq!(vpc_default.conflict_owner(&plain2), None);
    }

    #[test]
    fn the_oldest_binding_owns_the_nic_and_the_next_takes_over() {
        let idx = BindingIndex::default();
        let first = VipBinding::test().named("a", "first").nic("nic").created(at("2026-01-01T00:00:00Z"));
        let second = VipBinding::test().named("b", "second").nic("nic").created(at("2026-01-01T00:00:05Z"));
        let other = VipBinding::test().named("a", "other").nic("nic2").created(at("2026-01-01T00:00:01Z"));
        // Arrival order does not matter, age does.
        idx.apply(None, &watcher::Event::Apply(second.clone()));
        let changes = idx.apply(None, &watcher::Event::Apply(first.clone()));
        assert_eq!(changes.new_owners.iter().map(Claim::key).collect::<Vec<_>>(), vec!["a/first"]);
        idx.apply(None, &watcher::Event::Apply(other.clone()));
        assert_eq!(idx.conflict_owner(&first), None);
        assert_eq!(idx.conflict_owner(&second).as_deref(), Some("a/first"));
        assert_eq!(idx.conflict_owner(&other), None);
        // Still the owner while being deleted; the next in line is told when it is gone.
        let changes = idx.apply(None, &watcher::Event::Delete(first));
        assert_eq!(changes.new_owners.iter().map(Claim::key).collect::<Vec<_>>(), vec!["b/second"]);
        assert_eq!(idx.conflict_owner(&second), None);
    }

    #[test]
    fn same_second_ties_break_by_uid_not_by_name() {
        let idx = BindingIndex::default();
        let x = VipBinding::test().named("ns", "x").nic("nic").created(at("2026-01-01T00:00:00Z")).with_uid("f0000000");
        let y = VipBinding::test().named("ns", "y").nic("nic").created(at("2026-01-01T00:00:00Z")).with_uid("0a000000");
        idx.apply(None, &watcher::Event::Apply(x.clone()));
        idx.apply(None, &watcher::Event::Apply(y.clone()));
        assert_eq!(idx.conflict_owner(&x).as_deref(), Some("ns/y"));
    }

    #[test]
    fn a_binding_that_may_have_bound_keeps_the_nic_over_an_older_one_that_cannot_have() {
        let idx = BindingIndex::default();
        // The newer binding was decided before the older one was seen, and bound.
        let newer =
            VipBinding::test().named("ns", "newer").nic("nic").created(at("2026-01-01T00:00:05Z")).with_finalizer();
        idx.apply(None, &watcher::Event::Apply(newer.clone()));
        let older = VipBinding::test().named("ns", "older").nic("nic").created(at("2026-01-01T00:00:00Z"));
        let changes = idx.apply(None, &watcher::Event::Apply(older.clone()));
        assert!(changes.new_owners.is_empty(), "{changes:?}");
        assert_eq!(idx.conflict_owner(&older).as_deref(), Some("ns/newer"));
        assert_eq!(idx.conflict_owner(&newer), None);
        // Among bindings that may both have bound, age decides again.
        let older = older.with_finalizer();
        idx.apply(None, &watcher::Event::Apply(older.clone()));
        assert_eq!(idx.conflict_owner(&newer).as_deref(), Some("ns/older"));
    }

    #[test]
    fn bindings_that_leave_the_watch_are_reported_gone() {
        let idx = BindingIndex::default();
        let a = VipBinding::test().named("ns", "a").nic("nic").created(at("2026-01-01T00:00:00Z"));
        let c = VipBinding::test().named("ns", "c").nic("nic2").created(at("2026-01-01T00:00:00Z"));
        idx.apply(Some("ns"), &watcher::Event::Apply(a.clone()));
        idx.apply(Some("ns"), &watcher::Event::Apply(c.clone()));
        assert!(idx.apply(Some("ns"), &watcher::Event::Apply(a.clone())).gone.is_empty());
        let gone = idx.apply(Some("ns"), &watcher::Event::Delete(a)).gone;
        assert_eq!(gone.iter().map(Claim::key).collect::<Vec<_>>(), vec!["ns/a"]);
        // Missing from a re-list (deleted while the watch was down).
        idx.apply(Some("ns"), &watcher::Event::Init);
        let gone = idx.apply(Some("ns"), &watcher::Event::InitDone).gone;
        assert_eq!(gone.iter().map(Claim::key).collect::<Vec<_>>(), vec!["ns/c"]);
    }

    #[test]
    fn the_owner_adding_its_finalizer_is_no_news() {
        let idx = BindingIndex::default();
        let owner = VipBinding::test().named("ns", "owner").nic("nic").created(at("2026-01-01T00:00:00Z"));
        let next = VipBinding::test().named("ns", "next").nic("nic").created(at("2026-01-01T00:00:05Z"));
        idx.apply(None, &watcher::Event::Apply(owner.clone()));
        idx.apply(None, &watcher::Event::Apply(next.clone()));
        let owner = owner.with_finalizer();
        let changes = idx.apply(None, &watcher::Event::Apply(owner.clone()));
        assert!(changes.new_owners.is_empty(), "{changes:?}");
        assert_eq!(idx.conflict_owner(&next).as_deref(), Some("ns/owner"));
    }

    #[test]
    fn ownership_is_unknown_until_every_namespace_is_listed() {
        let idx = BindingIndex::default();
        assert!(idx.synced(), "an index that was told of no scopes decides at once");
        idx.expect_scopes(&[Some("a".into()), Some("b".into())]);
        assert!(!idx.synced());
        for event in [watcher::Event::Init, watcher::Event::InitDone] {
            idx.apply(Some("a"), &event);
        }
        assert!(!idx.synced(), "namespace b not listed yet");
        for event in [watcher::Event::Init, watcher::Event::InitDone] {
            idx.apply(Some("b"), &event);
        }
        assert!(idx.synced());
    }

    #[test]
    fn secrets_in_use_follow_the_bindings() {
        let idx = BindingIndex::default();
        let one = VipBinding::test().named("ns", "one").nic("n1").created(at("2026-01-01T00:00:00Z")).secret("creds");
        let two = VipBinding::test().named("ns", "two").nic("n2").created(at("2026-01-01T00:00:00Z")).secret("creds");
        let changes = idx.apply(None, &watcher::Event::Apply(one.clone()));
        assert_eq!(changes.secrets, vec![("ns".to_string(), "creds".to_string())]);
        idx.apply(None, &watcher::Event::Apply(two.clone()));
        assert!(idx.secret_in_use("ns", "creds"));
        assert!(!idx.secret_in_use("other", "creds"));
        let mut users: Vec<String> = idx.secret_users("ns", "creds").iter().map(Claim::key).collect();
        users.sort();
        assert_eq!(users, vec!["ns/one", "ns/two"]);
        idx.apply(None, &watcher::Event::Delete(one));
        assert!(idx.secret_in_use("ns", "creds"));
        // Switching to another Secret releases the old one.
        let moved = two.clone().secret("rotated");
        let changes = idx.apply(None, &watcher::Event::Apply(moved));
        assert!(changes.secrets.contains(&("ns".to_string(), "creds".to_string())));
        assert!(!idx.secret_in_use("ns", "creds"));
        assert!(idx.secret_in_use("ns", "rotated"));
    }

    #[test]
    fn a_relist_replaces_only_its_own_scope() {
        let idx = BindingIndex::default();
        let a = VipBinding::test().named("a", "x").nic("n1").created(at("2026-01-01T00:00:00Z"));
        let bb = VipBinding::test().named("b", "y").nic("n2").created(at("2026-01-01T00:00:00Z"));
        idx.apply(Some("a"), &watcher::Event::Apply(a.clone()));
        idx.apply(Some("b"), &watcher::Event::Apply(bb.clone()));
        // Namespace a re-lists and finds nothing (x was deleted while the watch was down).
        idx.apply(Some("a"), &watcher::Event::Init);
        assert_eq!(idx.len(), 2, "the old view stays until the list is complete");
        idx.apply(Some("a"), &watcher::Event::InitDone);
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.conflict_owner(&bb), None);
        // A full re-list in an all-namespaces watch.
        idx.apply(None, &watcher::Event::Init);
        idx.apply(None, &watcher::Event::InitApply(a.clone()));
        idx.apply(None, &watcher::Event::InitDone);
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.conflict_owner(&a), None);
    }
}
