//! Shared support code for the integration tests. Each test binary uses a subset of it.
#![allow(dead_code)]

pub mod control_plane;
pub mod fake_apiserver;
