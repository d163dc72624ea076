//! Test support, not API: a VPC API fake for the unit tests under `src/` and the integration
//! tests under `tests/`. Nothing outside tests may use it.

use std::collections::VecDeque;
use std::sync::Mutex;

use futures::future::BoxFuture;

use super::vpc::{AddressPair, Port, PortFilter, VpcApi};
use super::{CloudTarget, EcsError};

/// Answers port reads from a script, in order. A read beyond the script, a listing or a write
/// fails the test: what reads evidence never lists nor writes.
pub struct ScriptedReads(Mutex<VecDeque<Result<Port, EcsError>>>);

impl ScriptedReads {
    pub fn new(reads: Vec<Result<Port, EcsError>>) -> Self {
        Self(Mutex::new(reads.into()))
    }

    /// Whether every scripted answer has been read.
    pub fn all_read(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
}

impl VpcApi for ScriptedReads {
    fn get_port<'a>(&'a self, _: &'a CloudTarget, port_id: &'a str) -> BoxFuture<'a, Result<Port, EcsError>> {
        let next = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        Box::pin(async move { next.unwrap_or_else(|| panic!("unexpected read of port {port_id}")) })
    }

    fn list_ports<'a>(&'a self, _: &'a CloudTarget, _: &'a PortFilter) -> BoxFuture<'a, Result<Vec<Port>, EcsError>> {
        Box::pin(async { panic!("no listing expected") })
    }

    fn update_pairs<'a>(
        &'a self,
        _: &'a CloudTarget,
        port_id: &'a str,
        _: &'a [AddressPair],
    ) -> BoxFuture<'a, Result<Port, EcsError>> {
        Box::pin(async move { panic!("evidence never writes (port {port_id})") })
    }
}
