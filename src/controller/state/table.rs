//! The one table type of per-object state: entries keyed by the object's UID ([`ObjectKey`]),
//! so a new object under an old name starts fresh, behind one lock.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::key::ObjectKey;

pub(crate) struct Keyed<V> {
    entries: Mutex<HashMap<ObjectKey, V>>,
}

impl<V> Default for Keyed<V> {
    fn default() -> Self {
        Self { entries: Mutex::default() }
    }
}

impl<V> Keyed<V> {
    /// The entries. A panic while another reconcile held the lock leaves them as they were
    /// (each edit is a whole insert, update or removal), so the poison is ignored: one
    /// reconcile's panic must not stop the others.
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<ObjectKey, V>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn remove(&self, key: &ObjectKey) -> Option<V> {
        self.lock().remove(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_under_the_lock_does_not_stop_the_others() {
        let table = std::sync::Arc::new(Keyed::<u32>::default());
        table.lock().insert(ObjectKey::from("a"), 1);
        let poisoner = table.clone();
        let panicked = std::thread::spawn(move || {
            let _held = poisoner.lock();
            panic!("a bug while holding the lock");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(table.lock().get("a"), Some(&1));
        assert_eq!(table.remove(&ObjectKey::from("a")), Some(1));
        assert_eq!(table.len(), 0);
    }
}
