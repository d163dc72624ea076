//! An index over the watched bindings, kept up to date from the same watch events that feed the
//! controller's cache: who owns each NIC, and which Secrets live bindings use. Decisions read it
//! in O(1), with no API call.
//!
//! Ownership: the unbind API names no VIP, so two bindings on one NIC would undo each other.
//! Ownership is sticky: a binding that may have sent a bind (it carries our finalizer, which goes
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

use crate::api::v1alpha1::VipBinding;

use super::key::ObjectKey;

/// A binding's claim on its NIC. The field order is the ownership order (derived `Ord`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Claim {
    /// No bind request can have been sent for it (no finalizer): after every one that may have.
    uncommitted: bool,
    created: Option<jiff::Timestamp>,
    uid: ObjectKey,
    namespace: String,
    name: String,
}

impl Claim {
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
    /// The Secrets it needs: the one its spec names, and the one its last bind used
    /// (`status.boundWith`), which the deletion's unbind signs with.
    secrets: Vec<(String, String)>,
    /// Shared with `by_nic`: one copy of the strings per binding.
    claim: std::sync::Arc<Claim>,
}

fn entry_of(b: &VipBinding) -> Option<Entry> {
    let uid = b.uid()?;
    let namespace = b.namespace().unwrap_or_default();
    Some(Entry {
        nic: b.spec.nic_id.clone(),
        secrets: {
            let spec = b.spec.credentials_secret_ref.as_ref().map(|r| r.name.clone());
            let recorded =
                b.status.as_ref().and_then(|s| s.bound_with.as_ref()).and_then(|w| w.credentials_secret.clone());
            let mut names: Vec<String> = spec.into_iter().chain(recorded).collect();
            names.dedup();
            names.into_iter().map(|name| (namespace.clone(), name)).collect()
        },
        claim: std::sync::Arc::new(Claim {
            uncommitted: !super::status::has_finalizer(b),
            created: b.metadata.creation_timestamp.as_ref().map(|t| t.0),
            namespace,
            name: b.name_any(),
            uid: ObjectKey::from(uid.as_str()),
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
}

impl Inner {
    fn owner(&self, nic: &str) -> Option<&Claim> {
        self.by_nic.get(nic).and_then(|c| c.first()).map(|c| &**c)
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
        let before = self.owner(&old.nic).cloned();
        if let Some(claims) = self.by_nic.get_mut(&old.nic) {
            claims.remove(&old.claim);
            if claims.is_empty() {
                self.by_nic.remove(&old.nic);
            }
        }
        let after = self.owner(&old.nic).cloned();
        if after.as_ref().map(|c| &c.uid) != before.as_ref().map(|c| &c.uid)
            && let Some(owner) = after
        {
            changes.new_owners.push(owner);
        }
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
            Some(old) if old.nic == entry.nic && old.secrets == entry.secrets && old.claim == entry.claim => return,
            Some(old) => Some(old.nic.clone()),
            None => None,
        };
        // Owners are compared before and after the whole replacement, by identity: an update
        // of the owner's own claim (its finalizer added) is no news, and nobody else became
        // owner for the moment the old claim was out.
        let mut nics = vec![entry.nic.clone()];
        nics.extend(old_nic.filter(|n| *n != entry.nic));
        let before: Vec<Option<ObjectKey>> = nics.iter().map(|n| self.owner(n).map(|c| c.uid.clone())).collect();
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
            if let Some(owner) = self.owner(nic)
                && Some(&owner.uid) != before.as_ref()
            {
                changes.new_owners.push(owner.clone());
            }
        }
    }
}

#[derive(Default)]
pub struct BindingIndex {
    inner: RwLock<Inner>,
}

impl BindingIndex {
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
        match event {
            watcher::Event::Apply(b) => {
                if let Some(e) = entry_of(b) {
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
                if let (Some(e), Some(buffer)) = (entry_of(b), inner.buffers.get_mut(&scope.map(str::to_string))) {
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

    /// `namespace/name` of another binding that owns `b`'s NIC.
    pub fn conflict_owner(&self, b: &VipBinding) -> Option<String> {
        let uid = b.uid()?;
        let inner = self.read();
        let owner = inner.owner(&b.spec.nic_id)?;
        // A binding the index has not seen yet is newer than everything it has seen.
        (owner.uid.as_str() != uid).then(|| owner.key())
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
