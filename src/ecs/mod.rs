//! The Huawei Cloud client: the narrow interfaces the controller uses ([`EcsApi`] for the ECS
//! writes, [`vpc::VpcApi`] for the VPC port reads; [`api`]), their signed HTTP implementation
//! ([`EcsClient`]), error classes, credentials, budgets and the request signer. This file only
//! names the rooms and re-exports; the rooms import each other, never it.

pub mod api;
pub mod budget;
pub mod client;
pub mod clock;
pub mod credentials;
pub mod error;
pub mod retry;
pub mod sign;
// Test support, not API: compiled only for tests (see `api::testing`).
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod vpc;

pub use api::{
    BindRequest, CloudTarget, EcsApi, Fence, InvalidId, InvalidRegion, NicBody, NicFields, Operation, UnbindRequest,
    Written, check_path_id, check_region,
};
pub use budget::{Priority, Service, current_priority, in_background};
pub use client::{
    ClientConfigError, EcsClient, EcsClientConfig, Endpoint, EndpointError, MAX_RESPONSE_BYTES, UrlError,
};
pub use clock::{Clock, SystemClock};
pub use credentials::{Credentials, CredentialsError, MetadataCredentials, SecretCredentials};
pub use error::{ApiError, EcsError, ErrorClass, FenceError, TransportKind};
pub use retry::RetryPolicy;
