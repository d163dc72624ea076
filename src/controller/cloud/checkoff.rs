//! The NIC's source check: `1.1.1.1/0` in the NIC port's allowed_address_pairs turns it off, so
//! the VPC passes traffic for the VIPs bound to the NIC. That entry is one thing in the cloud
//! shared by every VPC binding on the NIC, so it has one owner in the process:
//!
//! - every bind and unbind of a VPC binding edits the NIC's port under that port's lock (see
//!   [`crate::controller::cloud::pairs`]), and a binding registers here that it needs the check off *before* it
//!   reads the NIC, so an unbind deciding under the lock sees a bind that is on its way;
//! - the unbind removes the entry only if, right before that write and under the lock, no other
//!   binding needs it (this ledger, and the bindings' records read fresh from the index), the
//!   operator added it (this ledger, or any binding's record on the NIC), and no VIP port in the
//!   NIC's network still holds the NIC's IP (one listing: the cloud's word).
//!
//! After a restart the ledger starts empty; the index (every binding's record) stands in for it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::ecs::CloudTarget;

use crate::controller::state::key::ObjectKey;

/// NICs left with the operator's `1.1.1.1/0` by an unbind that found it still needed, kept at
/// most: one per NIC that had VPC bindings.
const MAX_CLEANUPS: usize = 65_536;

/// What the drift check needs to take away a `1.1.1.1/0` that an unbind left for another
/// binding, once nothing needs it any more (that binding went without unbinding: its bind
/// wrote nothing, or it was released by policy).
#[derive(Debug, Clone)]
pub struct Cleanup {
    pub target: CloudTarget,
    pub network: String,
    pub nic_ip: String,
}

#[derive(Default)]
struct Inner {
    /// Bindings of this process that are binding or bound through the VPC API, per NIC.
    needs: HashMap<String, HashSet<ObjectKey>>,
    nic_of: HashMap<ObjectKey, String>,
    /// NICs whose check this process turned off and has not turned back on.
    added: HashSet<String>,
    cleanups: HashMap<String, Cleanup>,
}

#[derive(Default)]
pub struct CheckOffLedger {
    inner: Mutex<Inner>,
}

impl CheckOffLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `key` is about to bind on `nic` (or is bound there): an unbind of another binding on the
    /// NIC must leave the check off.
    pub fn need(&self, nic: &str, key: &ObjectKey) {
        let mut inner = self.lock();
        if let Some(old) = inner.nic_of.insert(key.clone(), nic.to_string())
            && old != nic
        {
            remove_need(&mut inner, &old, key);
        }
        inner.needs.entry(nic.to_string()).or_default().insert(key.clone());
    }

    /// `key` no longer needs its NIC's check off (it is unbinding, released, or its bind wrote
    /// nothing).
    pub fn unneed(&self, key: &ObjectKey) {
        let mut inner = self.lock();
        if let Some(nic) = inner.nic_of.remove(key) {
            remove_need(&mut inner, &nic, key);
        }
    }

    /// Whether a binding other than `key` registered that it needs `nic`'s check off.
    pub fn needed_by_another(&self, nic: &str, key: &ObjectKey) -> bool {
        self.lock().needs.get(nic).is_some_and(|keys| keys.iter().any(|k| k != key))
    }

    /// Whether any binding registered that it needs `nic`'s check off.
    pub fn needed(&self, nic: &str) -> bool {
        self.lock().needs.contains_key(nic)
    }

    /// Whether this process turned `nic`'s check off (and has not turned it back on).
    pub fn added(&self, nic: &str) -> bool {
        self.lock().added.contains(nic)
    }

    pub fn mark_added(&self, nic: &str) {
        self.lock().added.insert(nic.to_string());
    }

    pub fn mark_removed(&self, nic: &str) {
        let mut inner = self.lock();
        inner.added.remove(nic);
        inner.cleanups.remove(nic);
    }

    /// An unbind left `nic`'s `1.1.1.1/0` for others: the drift check looks at it again.
    pub fn remember_cleanup(&self, nic: &str, cleanup: Cleanup) {
        let mut inner = self.lock();
        if inner.cleanups.len() < MAX_CLEANUPS || inner.cleanups.contains_key(nic) {
            inner.cleanups.insert(nic.to_string(), cleanup);
        }
    }

    /// The NICs whose entry an unbind left, and that no binding of this process needs now.
    pub fn cleanups(&self) -> Vec<(String, Cleanup)> {
        let inner = self.lock();
        inner
            .cleanups
            .iter()
            .filter(|(nic, _)| !inner.needs.contains_key(*nic))
            .map(|(nic, c)| (nic.clone(), c.clone()))
            .collect()
    }

    /// `nic` was looked at: it is needed again (a binding bound there), or taken care of.
    pub fn forget_cleanup(&self, nic: &str) {
        self.lock().cleanups.remove(nic);
    }

    /// Bindings registered (for tests and the memory bound).
    pub fn len(&self) -> usize {
        self.lock().nic_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn remove_need(inner: &mut Inner, nic: &str, key: &ObjectKey) {
    if let Some(keys) = inner.needs.get_mut(nic) {
        keys.remove(key);
        if keys.is_empty() {
            inner.needs.remove(nic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_are_per_binding_and_follow_a_binding_that_moves() {
        let l = CheckOffLedger::default();
        let (a, b) = (ObjectKey::from("a"), ObjectKey::from("b"));
        l.need("n1", &a);
        assert!(!l.needed_by_another("n1", &a), "its own need is not another's");
        l.need("n1", &b);
        assert!(l.needed_by_another("n1", &a));
        l.need("n2", &b);
        assert!(!l.needed_by_another("n1", &a), "b moved to n2");
        l.unneed(&a);
        l.unneed(&b);
        assert!(l.is_empty());
        assert!(l.lock().needs.is_empty());
        l.mark_added("n1");
        assert!(l.added("n1") && !l.added("n2"));
        l.mark_removed("n1");
        assert!(!l.added("n1"));
    }
}
