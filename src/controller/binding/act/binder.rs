//! The one act interface: a [`Binder`] binds and unbinds through one API and returns what
//! happened as an [`Outcome`].

use futures::future::BoxFuture;

use crate::api::v1alpha1::{BoundWith, VipBinding};
use crate::controller::binding::outcome::Outcome;
use crate::controller::binding::status::BoundKnowledge;
use crate::controller::cloud::Admitted;
use crate::controller::context::Context;
use crate::controller::error::Error;
use crate::ecs::CloudTarget;

/// The binding acted for, and where its calls go.
#[derive(Clone, Copy)]
pub(crate) struct Job<'a> {
    pub b: &'a VipBinding,
    pub ctx: &'a Context,
    pub target: &'a CloudTarget,
}

/// What a bind is asked to do beyond the binding itself.
pub(crate) struct BindAsk {
    /// Where the bind goes and whose keys sign it: the record it leaves.
    pub bound_with: BoundWith,
    /// What was known of the VIP before this attempt.
    pub knowledge: BoundKnowledge,
    /// A drift check of a binding already bound.
    pub reassert: bool,
}

/// Binds and unbinds through one API. `admitted` is the gate's leave for the call.
pub(crate) trait Binder: Sync {
    fn bind<'a>(&'a self, job: Job<'a>, admitted: Admitted<'a>, ask: BindAsk) -> BoxFuture<'a, Result<Outcome, Error>>;
    fn unbind<'a>(&'a self, job: Job<'a>, admitted: Admitted<'a>) -> BoxFuture<'a, Result<Outcome, Error>>;
}
