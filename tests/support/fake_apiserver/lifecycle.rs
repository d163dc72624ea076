//! The controllers that the fake runs itself, after every write: the namespace controller, the
//! CRD finalizer and the garbage collector (background propagation).
//!
//! They run synchronously, right after the write that made them necessary and before the
//! next request is served; their writes go through the same store, so watchers see them.
//! `FakeApiServer::pause_controllers` stops them to let a test observe intermediate states.

use serde_json::{Value, json};

use super::delete::{self, DeleteOptions, owner_refs};
use super::resources::{CRD_CLEANUP_FINALIZER, ResourceType};
use super::store::{ObjectKey, State, finalizers, is_deleting, set_meta};

/// Runs every controller until none has anything left to do.
pub(crate) fn reconcile(st: &mut State) {
    if st.controllers_paused {
        return;
    }
    // Each pass makes progress or changes nothing; the bound only guards against a bug.
    for _ in 0..1000 {
        let before = st.current_rv();
        namespace_controller(st);
        crd_finalizer(st);
        garbage_collector(st);
        if st.current_rv() == before {
            return;
        }
    }
}

/// Deletes what is not yet being deleted (ignoring errors: the object may be gone already).
fn delete_all(st: &mut State, keys: Vec<ObjectKey>) {
    for key in keys {
        if st.get(&key).is_none_or(is_deleting) {
            continue;
        }
        match st.registry.get(&key.resource()).cloned() {
            Some(rt) => {
                let _ = delete::delete(st, &rt, &key, &DeleteOptions::default());
            }
            None => {
                st.remove(&key);
            }
        }
    }
}

/// For each terminating namespace: delete all its content at once (objects with finalizers
/// become terminating and stay), and once it is empty, remove the `kubernetes` finalizer
/// (`/finalize`), which deletes the namespace unless `metadata.finalizers` still holds it.
fn namespace_controller(st: &mut State) {
    let ns_resource = (String::new(), "namespaces".to_string());
    let terminating: Vec<(ObjectKey, Value)> =
        st.objects_of(&ns_resource).filter(|(_, ns)| is_deleting(ns)).map(|(k, v)| (k.clone(), v.clone())).collect();
    for (ns_key, mut namespace) in terminating {
        let content = st.keys_in_namespace(&ns_key.name);
        delete_all(st, content);
        if !st.keys_in_namespace(&ns_key.name).is_empty() {
            continue;
        }
        let spec_finalizers = namespace["spec"]["finalizers"].as_array().cloned().unwrap_or_default();
        if spec_finalizers.iter().any(|f| f == "kubernetes") {
            let remaining: Vec<Value> = spec_finalizers.into_iter().filter(|f| f != "kubernetes").collect();
            namespace["spec"]["finalizers"] = json!(remaining);
            if remaining.is_empty() && finalizers(&namespace).is_empty() {
                st.remove(&ns_key);
            } else {
                st.replace(ns_key, namespace);
            }
        }
    }
}

/// For each terminating CRD: delete all its instances; once none is left, remove the
/// `customresourcecleanup.apiextensions.k8s.io` finalizer, which deletes the CRD (and stops
/// serving its resource) unless other finalizers remain.
fn crd_finalizer(st: &mut State) {
    let crd_resource = ("apiextensions.k8s.io".to_string(), "customresourcedefinitions".to_string());
    let terminating: Vec<(ObjectKey, Value)> =
        st.objects_of(&crd_resource).filter(|(_, crd)| is_deleting(crd)).map(|(k, v)| (k.clone(), v.clone())).collect();
    for (crd_key, mut crd) in terminating {
        let Ok(rt) = ResourceType::from_crd(&crd) else {
            continue;
        };
        let instances: Vec<ObjectKey> = st.objects_of(&rt.key()).map(|(k, _)| k.clone()).collect();
        delete_all(st, instances);
        if st.objects_of(&rt.key()).next().is_some() {
            continue;
        }
        let mut remaining = finalizers(&crd);
        if !remaining.iter().any(|f| f == CRD_CLEANUP_FINALIZER) {
            continue;
        }
        remaining.retain(|f| f != CRD_CLEANUP_FINALIZER);
        if remaining.is_empty() {
            st.remove(&crd_key);
            st.registry.remove(&rt.key());
            st.close_watchers_of(&rt.key());
        } else {
            set_meta(&mut crd, "finalizers", json!(remaining));
            st.replace(crd_key, crd);
        }
    }
}

/// Deletes objects all of whose owners (by `ownerReferences[].uid`) no longer exist.
///
/// Only a removal can orphan anything, so it runs after removals only (keeping the fake's cost
/// per write independent of how many objects it holds).
fn garbage_collector(st: &mut State) {
    if st.removals == st.gc_seen_removals {
        return;
    }
    st.gc_seen_removals = st.removals;
    let orphans: Vec<ObjectKey> = st
        .dependents()
        .into_iter()
        .filter(|k| {
            st.get(k).is_some_and(|o| {
                let refs = owner_refs(o);
                !refs.is_empty() && refs.iter().all(|r| r["uid"].as_str().is_none_or(|uid| !st.has_uid(uid)))
            })
        })
        .collect();
    delete_all(st, orphans);
}
