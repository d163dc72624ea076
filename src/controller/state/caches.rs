//! The watch caches of one kind, one per watched scope, shared with whoever reads them beside
//! the controller that fills them (the scrape-time gauges, the group controller, the triggers).

use std::sync::{Arc, RwLock};

use kube::Resource;
use kube::runtime::reflector::Store;

pub struct Caches<K: Resource + Clone + 'static>(Arc<RwLock<Vec<Store<K>>>>)
where
    K::DynamicType: Eq + std::hash::Hash + Clone;

impl<K: Resource + Clone + 'static> Clone for Caches<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K: Resource + Clone + 'static> Default for Caches<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<K: Resource + Clone + 'static> Caches<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    /// A controller's cache, once it is built.
    pub fn add(&self, store: Store<K>) {
        if let Ok(mut stores) = self.0.write() {
            stores.push(store);
        }
    }

    /// The caches now (cheap: each is a handle); none before the controllers run.
    pub fn stores(&self) -> Vec<Store<K>> {
        self.0.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Every cached object; `None` before any controller runs (a standby), which is not the
    /// same as no objects.
    pub fn objects(&self) -> Option<Vec<Arc<K>>> {
        let stores = self.stores();
        (!stores.is_empty()).then(|| stores.iter().flat_map(|s| s.state()).collect())
    }
}
