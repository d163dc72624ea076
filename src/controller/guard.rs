//! Credentials protection: a Secret that a binding uses carries the finalizer
//! `vipoperator.dev/credentials-in-use`, so it outlives the bindings that need it to unbind.
//!
//! Deleting a namespace deletes its Secrets and its bindings at once. Without this, a binding's
//! unbind would find its credentials gone and the namespace would hang. The finalizer is removed
//! when no binding (live or being deleted) refers to the Secret any more.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};

use crate::controller::kube_ops::{add_finalizer_patch, remove_finalizer_patch};
use crate::controller::state::index::BindingIndex;

pub const CREDENTIALS_FINALIZER: &str = "vipoperator.dev/credentials-in-use";

pub struct GuardContext {
    pub client: Client,
    pub index: Arc<BindingIndex>,
    /// The binding watch of this scope has finished its first list: before that, the index
    /// cannot say a Secret is unused.
    pub synced: Arc<AtomicBool>,
}

/// What the guard does with one Secret (pure, for tests).
#[derive(Debug, PartialEq, Eq)]
pub enum GuardPlan {
    Add,
    Remove(usize),
    Nothing,
}

pub fn plan(secret: &PartialObjectMeta<Secret>, in_use: bool) -> GuardPlan {
    let position = secret.finalizers().iter().position(|f| f == CREDENTIALS_FINALIZER);
    match (in_use, position) {
        // No finalizer may be added once a deletion started (the API refuses it anyway).
        (true, None) if secret.metadata.deletion_timestamp.is_none() => GuardPlan::Add,
        (false, Some(i)) => GuardPlan::Remove(i),
        _ => GuardPlan::Nothing,
    }
}

pub async fn reconcile(secret: Arc<PartialObjectMeta<Secret>>, ctx: Arc<GuardContext>) -> Result<Action, kube::Error> {
    if !ctx.synced.load(Ordering::SeqCst) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let (namespace, name) = (secret.namespace().unwrap_or_default(), secret.name_any());
    let in_use = ctx.index.secret_in_use(&namespace, &name);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = match plan(&secret, in_use) {
        GuardPlan::Nothing => {
            return Ok(if in_use { Action::requeue(Duration::from_secs(600)) } else { Action::await_change() });
        }
        GuardPlan::Add => add_finalizer_patch(
            secret.metadata.uid.as_deref(),
            secret.metadata.finalizers.as_deref(),
            CREDENTIALS_FINALIZER,
        )?,
        GuardPlan::Remove(i) => remove_finalizer_patch(secret.metadata.uid.as_deref(), i, CREDENTIALS_FINALIZER)?,
    };
    // Metadata only: the answer does not carry the Secret's data.
    match api.patch_metadata(&name, &PatchParams::default(), &Patch::<()>::Json(patch)).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), protected = in_use, "credentials Secret finalizer updated");
            Ok(if in_use { Action::requeue(Duration::from_secs(600)) } else { Action::await_change() })
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

pub fn error_policy(_secret: Arc<PartialObjectMeta<Secret>>, error: &kube::Error, _ctx: Arc<GuardContext>) -> Action {
    tracing::debug!(%error, "credentials Secret finalizer update failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn secret(finalizers: &[&str], deleting: bool) -> PartialObjectMeta<Secret> {
        let mut s = PartialObjectMeta::<Secret>::default();
        s.metadata.name = Some("creds".into());
        s.metadata.finalizers = (!finalizers.is_empty()).then(|| finalizers.iter().map(|f| f.to_string()).collect());
        if deleting {
            s.metadata.deletion_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        }
        s
    }

    #[test]
    fn protect_while_used_release_when_not() {
        assert_eq!(plan(&secret(&[], false), true), GuardPlan::Add);
        assert_eq!(plan(&secret(&["x"], false), true), GuardPlan::Add);
        assert_eq!(plan(&secret(&[CREDENTIALS_FINALIZER], false), true), GuardPlan::Nothing);
        assert_eq!(plan(&secret(&["x", CREDENTIALS_FINALIZER], true), false), GuardPlan::Remove(1));
        assert_eq!(plan(&secret(&[], false), false), GuardPlan::Nothing);
        // Too late to protect a Secret already being deleted.
        assert_eq!(plan(&secret(&[], true), true), GuardPlan::Nothing);
        // Still used while being deleted: keep it.
        assert_eq!(plan(&secret(&[CREDENTIALS_FINALIZER], true), true), GuardPlan::Nothing);
    }
}
