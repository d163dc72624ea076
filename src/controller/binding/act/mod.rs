//! Act: the cloud side of a bind or an unbind, one [`Binder`] per API ([`ecs`], [`vpc`]), each
//! returning an [`Outcome`](super::outcome::Outcome): what was done and what is known. A binder decides nothing (the
//! plan is made before it runs) and writes no status: the one write made while it acts, a VPC
//! bind's intent under the NIC's lock, is the record step's ([`super::record::intent`]).

pub(crate) mod binder;
pub(crate) mod ecs;
pub(crate) mod vpc;

use crate::api::v1alpha1::BindApi;

pub(crate) use binder::{BindAsk, Binder, Job};

/// The binder of `api`.
pub(crate) fn binder(api: BindApi) -> &'static dyn Binder {
    match api {
        BindApi::Ecs => &ecs::EcsBinder,
        BindApi::Vpc => &vpc::VpcBinder,
    }
}
