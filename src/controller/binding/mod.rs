//! The VipBinding controller: one reconcile per object (observe → decide → act → record).
//! - [`reconcile`]: the driver and the error policy;
//! - [`decide`]: the decision, pure;
//! - [`vpc`]: the bind and unbind steps of `api: VPC` bindings;
//! - [`status`]: conditions and the status builder;
//! - [`compare`]: the drift check of VPC bindings by listing.

pub(crate) mod compare;
pub(crate) mod decide;
pub(crate) mod reconcile;
pub(crate) mod status;
pub(crate) mod vpc;
