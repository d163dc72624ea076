//! The VipBinding controller, one room per concern:
//! - [`wiring`]: watches, triggers, the drift sweeper and the credentials guard, started by
//!   [`run`];
//! - [`reconcile`]: one reconcile (observe → decide → act → record) and the error policy;
//! - [`decide`]: the decision itself, pure;
//! - [`context`]: what a reconcile works with;
//! - [`cloud`]: cloud calls, gated by the [`auth_gate`]; [`evidence`]: VPC reads that back a
//!   release; [`pairs`]: VPC binds and unbinds, one port at a time, with [`checkoff`] owning each
//!   NIC's `1.1.1.1/0`; [`inflight`]: writes that may still land, and the second looks they
//!   call for;
//! - [`kube_ops`]: every Kubernetes call a reconcile makes;
//! - [`target`] and [`tenancy`]: where a call goes, with whose keys, and who may ask;
//! - per-object state: [`backoff`], [`drift`], [`memory`], [`index`], keyed by [`key`].

pub mod auth_gate;
pub mod backoff;
pub mod checkoff;
pub mod cloud;
pub mod compare;
pub mod context;
pub mod decide;
pub mod drift;
pub mod evidence;
pub mod guard;
pub mod index;
pub mod inflight;
pub mod key;
pub mod kube_ops;
pub mod memory;
pub mod pairs;
pub mod reconcile;
pub mod reconcile_vpc;
pub mod status;
pub mod target;
pub mod tenancy;
pub mod wiring;

pub use context::Context;
pub use reconcile::error_policy;
pub use wiring::{Hooks, WatchConfig, run};
