//! The VipBinding controller: one reconcile per object, as named steps.
//! - [`reconcile`]: the driver (observe → decide → act → record) and the error policy;
//! - [`decide`]: the decision, pure;
//! - [`act`]: one binder per API (ECS, VPC), each returning an [`outcome::Outcome`];
//! - [`record`]: the outcome turned into status, finalizer, event and requeue;
//! - [`outcome`]: what act returns, and the names both steps share;
//! - [`status`]: conditions and the status builder;
//! - [`compare`]: the drift check of VPC bindings by listing.

pub(crate) mod act;
pub(crate) mod compare;
pub(crate) mod decide;
pub(crate) mod observe;
pub(crate) mod outcome;
pub(crate) mod reconcile;
pub(crate) mod record;
pub(crate) mod status;
