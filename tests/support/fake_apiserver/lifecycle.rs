//! The controllers the fake runs itself, synchronously after every write (before the next
//! request is served): the namespace controller and the CRD finalizer. Their writes go through
//! the same store, so watchers see them.

use serde_json::json;

use super::ops;
use super::resources::{CRD_CLEANUP_FINALIZER, ResourceKey, ResourceType};
use super::store::{ObjectKey, State, finalizers, is_deleting, set_meta};

/// Runs both controllers until neither has anything left to do.
pub(crate) fn reconcile(st: &mut State) {
    // Each pass makes progress or changes nothing; the bound only guards against a bug.
    for _ in 0..100 {
        let before = st.current_rv();
        namespace_controller(st);
        crd_finalizer(st);
        if st.current_rv() == before {
            return;
        }
    }
}

/// Deletes what is not being deleted yet.
fn delete_all(st: &mut State, keys: Vec<ObjectKey>) {
    for key in keys {
        if let Some(rt) = st.registry.get(&key.resource()).cloned()
            && st.get(&key).is_some_and(|o| !is_deleting(o))
        {
            let _ = ops::delete(st, &rt, &key);
        }
    }
}

fn terminating(st: &State, resource: &ResourceKey) -> Vec<ObjectKey> {
    st.objects_of(resource).filter(|(_, o)| is_deleting(o)).map(|(k, _)| k.clone()).collect()
}

/// A terminating namespace: all its content is deleted at once (what has finalizers terminates
/// and stays); once it is empty, the namespace goes (unless `metadata.finalizers` hold it).
fn namespace_controller(st: &mut State) {
    for ns_key in terminating(st, &(String::new(), "namespaces".into())) {
        let content = st.keys_in_namespace(&ns_key.name);
        delete_all(st, content);
        if st.keys_in_namespace(&ns_key.name).is_empty() && st.get(&ns_key).is_some_and(|ns| finalizers(ns).is_empty())
        {
            st.remove(&ns_key);
        }
    }
}

/// A terminating CRD: all its instances are deleted; once none is left, the
/// `customresourcecleanup.apiextensions.k8s.io` finalizer goes, and with it the CRD (unless
/// other finalizers remain), its resource and the watches on it.
fn crd_finalizer(st: &mut State) {
    for crd_key in terminating(st, &("apiextensions.k8s.io".into(), "customresourcedefinitions".into())) {
        let Some(mut crd) = st.get(&crd_key).cloned() else { continue };
        let (Ok(rt), true) =
            (ResourceType::from_crd(&crd), finalizers(&crd).iter().any(|f| f == CRD_CLEANUP_FINALIZER))
        else {
            continue;
        };
        let instances = st.objects_of(&rt.key()).map(|(k, _)| k.clone()).collect();
        delete_all(st, instances);
        if st.objects_of(&rt.key()).next().is_some() {
            continue;
        }
        let remaining: Vec<String> = finalizers(&crd).into_iter().filter(|f| f != CRD_CLEANUP_FINALIZER).collect();
        if remaining.is_empty() {
            st.remove(&crd_key);
            st.registry.remove(&rt.key());
            st.close_watchers_of(&rt.key());
        } else {
            set_meta(&mut crd, "finalizers", json!(remaining));
            st.put(crd_key, crd);
        }
    }
}
