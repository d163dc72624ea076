//! The Kubernetes calls the reconciler makes, in one place: finalizer add/remove and status
//! (JSON patches guarded by `test`), events (best effort), and the uninstall check (is the CRD
//! being deleted?).
//!
//! Every write names its object and is guarded by a `test` of its UID: a write meant for an
//! object that has gone (a reconcile from a stale copy, a request that arrived late) must fail
//! on a successor of the same name instead of taking its finalizer away or rewriting its status.
//! The API server ignores `metadata.uid` in a merge patch or an apply of the status subresource
//! (checked on v1.36), but evaluates a JSON patch's `test` against the whole object.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use crate::api::v1alpha1::{CRD_NAME, FINALIZER, Reason, VipBinding, VipBindingStatus};

pub const FIELD_MANAGER: &str = "vip-operator";

/// events.k8s.io refuses a note over 1 KiB: the event would be lost, not shortened.
const MAX_EVENT_NOTE: usize = 1024;

/// At most `max` bytes, cut on a character boundary, with an ellipsis when cut.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

/// The object a write is for: its UID, which a successor of the same name does not share.
/// `None` only for an object that was never stored (tests); the write is then unguarded.
fn same_object(uid: Option<&str>) -> Vec<serde_json::Value> {
    uid.map(|uid| json!({"op": "test", "path": "/metadata/uid", "value": uid})).into_iter().collect()
}

fn patch_of(ops: Vec<serde_json::Value>) -> Result<json_patch::Patch, kube::Error> {
    serde_json::from_value(serde_json::Value::Array(ops)).map_err(kube::Error::SerdeError)
}

/// A JSON patch adding `finalizer` to the object `uid` whose finalizers were `existing`. The
/// `test` ops make it fail (422) if the object was replaced or the list changed since it was
/// read, instead of overwriting someone else's change; kube-apiserver passes a `null` test on a
/// missing path, which covers the first finalizer.
pub fn add_finalizer_patch(
    uid: Option<&str>,
    existing: Option<&[String]>,
    finalizer: &str,
) -> Result<json_patch::Patch, kube::Error> {
    let mut ops = same_object(uid);
    match existing {
        None | Some([]) => ops.extend([
            json!({"op": "test", "path": "/metadata/finalizers", "value": null}),
            json!({"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}),
        ]),
        Some(existing) => ops.extend([
            json!({"op": "test", "path": "/metadata/finalizers", "value": existing}),
            json!({"op": "add", "path": "/metadata/finalizers/-", "value": finalizer}),
        ]),
    }
    patch_of(ops)
}

/// A JSON patch removing `finalizer` at `index` of the object `uid`, guarded by `test`s that it
/// is still that object and the finalizer is still there.
pub fn remove_finalizer_patch(
    uid: Option<&str>,
    index: usize,
    finalizer: &str,
) -> Result<json_patch::Patch, kube::Error> {
    let path = format!("/metadata/finalizers/{index}");
    let mut ops = same_object(uid);
    ops.extend([json!({"op": "test", "path": path, "value": finalizer}), json!({"op": "remove", "path": path})]);
    patch_of(ops)
}

/// A JSON patch for the status subresource setting `/status/{field}` (the whole status when
/// `field` is `None`) of the object `uid`. The status is ours alone (no other manager writes
/// it), so a whole-status write replaces: a field we no longer set is removed.
pub fn status_patch(
    uid: Option<&str>,
    field: Option<&str>,
    value: serde_json::Value,
) -> Result<json_patch::Patch, kube::Error> {
    let path = field.map_or_else(|| "/status".to_string(), |f| format!("/status/{f}"));
    let mut ops = same_object(uid);
    ops.push(json!({"op": "add", "path": path, "value": value}));
    patch_of(ops)
}

pub struct KubeOps {
    client: kube::Client,
    recorder: Recorder,
    event_timeout: Duration,
}

fn api(client: &kube::Client, b: &VipBinding) -> Api<VipBinding> {
    Api::namespaced(client.clone(), &b.namespace().unwrap_or_default())
}

/// Status writes name their manager, so `managedFields` says who wrote the status.
fn status_params() -> PatchParams {
    PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PatchParams::default() }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn is_invalid(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422)
}

/// What became of a status write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusWrite {
    /// Stored; `generation` is the object's as the server had it after the write, which may be
    /// newer than the copy's (a deletion bumps it).
    Stored { generation: Option<i64> },
    /// The object left the API, or another of its name took its place.
    Gone,
}

impl KubeOps {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Self { recorder: Recorder::new(client.clone(), reporter), client, event_timeout: Duration::from_secs(5) }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// Adds our finalizer (see [`add_finalizer_patch`]).
    pub async fn add_finalizer(&self, b: &VipBinding) -> Result<VipBinding, kube::Error> {
        let patch = add_finalizer_patch(b.metadata.uid.as_deref(), b.metadata.finalizers.as_deref(), FINALIZER)?;
        api(&self.client, b).patch(&b.name_any(), &PatchParams::default(), &Patch::<()>::Json(patch)).await
    }

    /// Removes our finalizer; an object that is already gone is fine.
    pub async fn remove_finalizer(&self, b: &VipBinding) -> Result<(), kube::Error> {
        let Some(index) = b.finalizers().iter().position(|f| f == FINALIZER) else {
            return Ok(());
        };
        let patch = remove_finalizer_patch(b.metadata.uid.as_deref(), index, FINALIZER)?;
        match api(&self.client, b).patch(&b.name_any(), &PatchParams::default(), &Patch::<()>::Json(patch)).await {
            Err(e) if is_not_found(&e) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Writes the whole status of `b` (not of a successor of the same name; see
    /// [`status_patch`]).
    pub async fn write_status(&self, b: &VipBinding, status: &VipBindingStatus) -> Result<StatusWrite, kube::Error> {
        let value = serde_json::to_value(status).map_err(kube::Error::SerdeError)?;
        let patch = status_patch(b.metadata.uid.as_deref(), None, value)?;
        let api = api(&self.client, b);
        match api.patch_status(&b.name_any(), &status_params(), &Patch::<()>::Json(patch)).await {
            Ok(written) => Ok(StatusWrite::Stored { generation: written.metadata.generation }),
            Err(e) if is_not_found(&e) => Ok(StatusWrite::Gone),
            // The UID test failed, or the status is invalid: the answer does not say which
            // (a failed test is a bare 422), so the object is looked at.
            Err(e) if is_invalid(&e) => match api.get_metadata_opt(&b.name_any()).await? {
                Some(now) if now.metadata.uid == b.metadata.uid => Err(e),
                _ => Ok(StatusWrite::Gone),
            },
            Err(e) => Err(e),
        }
    }

    /// Sets `status.observed` alone: written outside a reconcile, from a cached object, so the
    /// rest of the status must not be rewritten from that copy. A copy without a status (never
    /// the case for a bound binding, the only kind observed) writes a status of that field alone.
    pub async fn write_observed(
        &self,
        b: &VipBinding,
        observed: &crate::api::v1alpha1::Observed,
    ) -> Result<(), kube::Error> {
        let value = serde_json::to_value(observed).map_err(kube::Error::SerdeError)?;
        let uid = b.metadata.uid.as_deref();
        let patch = match b.status {
            Some(_) => status_patch(uid, Some("observed"), value)?,
            None => status_patch(uid, None, json!({ "observed": value }))?,
        };
        match api(&self.client, b).patch_status(&b.name_any(), &status_params(), &Patch::<()>::Json(patch)).await {
            Err(e) if is_not_found(&e) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Whether the VipBinding CRD is being deleted (an uninstall): then bindings are released
    /// without unbinding. Asked right before each unbind, so no watch lag can let one through.
    pub async fn crd_deleting(&self) -> bool {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        match crds.get_metadata_opt(CRD_NAME).await {
            Ok(Some(crd)) => crd.metadata.deletion_timestamp.is_some(),
            // Gone already: its objects are going too.
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check whether the VipBinding CRD is being deleted; proceeding with the unbind");
                false
            }
        }
    }

    /// Publishes an event; failures are logged and otherwise ignored (a terminating namespace
    /// refuses new objects, and a deletion must not wait on that).
    pub async fn event(&self, b: &VipBinding, warning: bool, reason: Reason, action: &str, note: String) {
        self.event_on(&b.object_ref(&()), warning, reason.as_str(), action, note).await
    }

    /// [`KubeOps::event`] on any object (a group's joins and leaves).
    pub async fn event_on(&self, reference: &ObjectReference, warning: bool, reason: &str, action: &str, note: String) {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_string(),
            note: Some(truncate(note, MAX_EVENT_NOTE)),
            action: action.to_string(),
            secondary: None,
        };
        match tokio::time::timeout(self.event_timeout, self.recorder.publish(&event, reference)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, reason, "event not published"),
            Err(_) => tracing::debug!(reason, "event not published: timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_notes_fit_the_api_limit_on_a_char_boundary() {
        let long = "é".repeat(1000);
        let cut = super::truncate(long, super::MAX_EVENT_NOTE);
        assert!(cut.len() <= super::MAX_EVENT_NOTE && cut.ends_with('…'), "{}", cut.len());
        assert_eq!(super::truncate("short".into(), super::MAX_EVENT_NOTE), "short");
    }
}
