//! The controllers and what they share, one room per concern:
//! - [`binding`]: the VipBinding controller (reconcile, decide, act, record);
//! - [`cloud`]: the gated cloud, the only way out to Huawei Cloud, with evidence reads, VPC
//!   pair edits and the NIC check-off ledger;
//! - [`state`]: what is kept between reconciles (backoff, drift, memory, index, writes in
//!   flight), keyed by object;
//! - [`context`]: the dependencies a reconcile works with;
//! - [`kube_ops`]: every Kubernetes call a reconcile makes;
//! - [`target`] and [`tenancy`]: where a call goes, with whose keys, and who may ask;
//! - [`group`]: the VipGroup controller (members that follow nodes);
//! - [`guard`]: the credentials Secret guard;
//! - [`wiring`]: watches, triggers, the drift sweeper and the guard, started by [`run`].
//!
//! What `run.rs`, `settings.rs` and the tests use is re-exported here, and only here.

pub(crate) mod binding;
pub(crate) mod cloud;
pub(crate) mod context;
pub(crate) mod error;
pub(crate) mod group;
pub(crate) mod guard;
pub(crate) mod kube_ops;
pub(crate) mod state;
pub(crate) mod target;
pub(crate) mod tenancy;
pub(crate) mod wiring;

pub use binding::decide::{Facts, Plan, SpecError, decide, validate_spec};
pub use binding::reconcile::{error_policy, reconcile};
pub use binding::status::{CondStatus, StatusBuilder};
pub use context::Context;
pub use error::{Error, ErrorKind};
/// A node's server (or NIC) as groups read it; `vip-operator import` groups by the same rules.
pub(crate) use group::nodes::{NodeView, ServerId};
pub use kube_ops::{FIELD_MANAGER, KubeOps};
pub use state::caches::Caches;
pub use state::index::BindingIndex;
pub use state::inflight::WritesInFlight;
pub use state::key::ObjectKey;
pub use target::{DefaultCredentials, OperatorDefaults, SecretReader, TargetResolver};
pub use tenancy::{
    ALLOWED_PROJECTS_ANNOTATION, ALLOWED_REGIONS_ANNOTATION, DefaultCredentialsScope, SelectorError, Tenancy,
    parse_selector,
};
pub use wiring::{Hooks, WatchConfig, run};
