//! The object store: every object of every resource, one global resourceVersion counter, a
//! bounded history of changes for watch resumption, and the registered watchers.
//!
//! Only this file assigns resourceVersions and emits watch events, so every write (whoever
//! makes it: a request, the namespace controller, the CRD finalizer) is seen the same way.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::resources::{Registry, ResourceKey};

/// `(group, plural, namespace, name)`; the namespace is empty for cluster-scoped objects.
/// Ordered like etcd keys, so lists come out sorted by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ObjectKey {
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(resource: &ResourceKey, namespace: &str, name: &str) -> Self {
        Self { group: resource.0.clone(), plural: resource.1.clone(), namespace: namespace.into(), name: name.into() }
    }

    pub fn resource(&self) -> ResourceKey {
        (self.group.clone(), self.plural.clone())
    }
}

/// One committed write, as the watch history keeps it: `ADDED`, `MODIFIED` or `DELETED`, and
/// the object (for `DELETED`, its last state at the deletion's resourceVersion).
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub resource: ResourceKey,
    pub kind: &'static str,
    pub object: Value,
}

struct Watcher {
    id: u64,
    resource: ResourceKey,
    feed: mpsc::UnboundedSender<Arc<Change>>,
}

pub(crate) struct State {
    pub registry: Registry,
    objects: BTreeMap<ObjectKey, Value>,
    rv: u64,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// A watch may resume from any resourceVersion `>= oldest_watchable`; older ones get 410.
    oldest_watchable: u64,
    watchers: Vec<Watcher>,
    next_id: u64,
    uid_prefix: u32,
}

impl State {
    pub fn new(history_limit: usize) -> Self {
        Self {
            registry: Registry::with_builtins(),
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_limit,
            oldest_watchable: 0,
            watchers: Vec::new(),
            next_id: 0,
            uid_prefix: rand::random(),
        }
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn new_uid(&mut self) -> String {
        self.next_id += 1;
        format!("{:08x}-0000-4000-8000-{:012x}", self.uid_prefix, self.next_id)
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Value> {
        self.objects.get(key)
    }

    /// All objects of a resource (in all namespaces), in key order.
    pub fn objects_of<'a>(&'a self, resource: &ResourceKey) -> impl Iterator<Item = (&'a ObjectKey, &'a Value)> {
        let resource = resource.clone();
        let start = ObjectKey::new(&resource, "", "");
        self.objects.range(start..).take_while(move |(k, _)| k.group == resource.0 && k.plural == resource.1)
    }

    /// All namespaced objects stored in `namespace`, of any resource.
    pub fn keys_in_namespace(&self, namespace: &str) -> Vec<ObjectKey> {
        self.objects.keys().filter(|k| k.namespace == namespace).cloned().collect()
    }

    /// Stores a new object (`ADDED`) or replaces one (`MODIFIED`), assigning a resourceVersion.
    pub fn put(&mut self, key: ObjectKey, mut obj: Value) -> Value {
        self.rv += 1;
        set_meta(&mut obj, "resourceVersion", json!(self.rv.to_string()));
        let kind = if self.objects.insert(key.clone(), obj.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        self.record(Change { rv: self.rv, resource: key.resource(), kind, object: obj.clone() });
        obj
    }

    /// Removes an object (`DELETED`); returns its last stored state, as etcd's delete does.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<Value> {
        let stored = self.objects.remove(key)?;
        self.rv += 1;
        let mut object = stored.clone();
        set_meta(&mut object, "resourceVersion", json!(self.rv.to_string()));
        self.record(Change { rv: self.rv, resource: key.resource(), kind: "DELETED", object });
        Some(stored)
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest_watchable = dropped.rv;
            }
        }
        // A send only fails when the watcher is gone; its own task unregisters it.
        for w in self.watchers.iter().filter(|w| w.resource == change.resource) {
            let _ = w.feed.send(change.clone());
        }
    }

    /// Changes of `resource` after `rv`, or `410 Expired` when some of them were compacted away.
    pub fn changes_since(&self, resource: &ResourceKey, rv: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        if rv < self.oldest_watchable {
            return Err(ApiError::expired(rv, self.oldest_watchable));
        }
        Ok(self.history.iter().filter(|c| c.rv > rv && &c.resource == resource).cloned().collect())
    }

    /// Forgets all history: watches can only resume from the current resourceVersion on.
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest_watchable = self.rv;
    }

    pub fn add_watcher(&mut self, resource: ResourceKey, feed: mpsc::UnboundedSender<Arc<Change>>) -> u64 {
        self.next_id += 1;
        self.watchers.push(Watcher { id: self.next_id, resource, feed });
        self.next_id
    }

    pub fn remove_watcher(&mut self, id: u64) {
        self.watchers.retain(|w| w.id != id);
    }

    /// Ends every watch on `resource` (their channels close), e.g. when its CRD is gone.
    pub fn close_watchers_of(&mut self, resource: &ResourceKey) {
        self.watchers.retain(|w| &w.resource != resource);
    }

    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }
}

/// `metadata.<field>` as a string.
pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

pub(crate) fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

pub(crate) fn set_meta(obj: &mut Value, field: &str, value: Value) {
    meta_mut(obj).insert(field.to_string(), value);
}

pub(crate) fn finalizers(obj: &Value) -> Vec<String> {
    let items = obj["metadata"]["finalizers"].as_array();
    items.map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

pub(crate) fn is_deleting(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

/// Now as an RFC 3339 timestamp with second precision (`metav1.Time`).
pub(crate) fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}
