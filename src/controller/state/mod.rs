//! What the controllers keep between reconciles, in memory: per-object state in one table
//! type ([`table::Keyed`]) keyed by [`key::ObjectKey`] ([`backoff`], [`drift`], [`memory`],
//! the second looks of [`inflight`]), the [`index`] of NICs and Secrets across every watched
//! namespace, and the writes that may still land ([`inflight`]).

pub(crate) mod backoff;
pub(crate) mod caches;
pub(crate) mod drift;
pub(crate) mod index;
pub(crate) mod inflight;
pub(crate) mod key;
pub(crate) mod memory;
pub(crate) mod table;
