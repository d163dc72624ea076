//! The VipGroup controller: one VIP on the NIC of every node a selector matches. A group owns
//! one member VipBinding per node; members bind and unbind through the binding controller like
//! any binding, so a group adds no cloud write of its own (it only lists ports to find a
//! node's NIC).
//!
//! Its rooms: [`nodes`] (a node's labels and server ID; why the node watch is of metadata),
//! [`nics`] (a server's NIC in the VIP's network, looked up and kept), [`plan`] (the pure
//! decision: which members, created, put back or deleted, and the status) and [`reconcile`]
//! (the I/O). The watches that feed it are in [`crate::controller::wiring`].

pub(crate) mod nics;
pub(crate) mod nodes;
pub(crate) mod plan;
pub(crate) mod reconcile;
