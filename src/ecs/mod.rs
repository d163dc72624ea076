//! The Huawei Cloud client: the narrow interfaces the controller uses ([`EcsApi`] for the ECS
//! writes, [`vpc::VpcApi`] for the VPC port reads), their signed HTTP implementation
//! ([`EcsClient`]), error classes, credentials and the request signer.

pub mod budget;
pub mod client;
pub mod credentials;
pub mod error;
pub mod retry;
pub mod sign;
// Test support, not API: compiled only for tests (see `api::testing`).
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod vpc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use budget::{Priority, Service, current_priority, in_background};
pub use client::{
    ClientConfigError, EcsClient, EcsClientConfig, Endpoint, EndpointError, MAX_RESPONSE_BYTES, UrlError,
};
pub use credentials::{Credentials, CredentialsError, MetadataCredentials, SecretCredentials};
pub use error::{ApiError, EcsError, ErrorClass, TransportKind};
pub use retry::RetryPolicy;

/// Whether this process may still reach the cloud, and for how long: a deposed leader must
/// not. Checked before every attempt; an attempt never runs past the time returned.
pub trait Fence: Send + Sync {
    /// `Ok(time left)` while leadership is confirmed; `Err(why)` otherwise.
    fn remaining(&self) -> Result<std::time::Duration, FenceError>;
}

/// Why a [`Fence`] is closed. Cloned into every [`EcsError::Fenced`] it causes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    /// The leader lease was not seen naming this replica within the last `window`.
    #[error(
        "this replica could not confirm it holds the leader lease within the last {}s (API server unreachable?)",
        window.as_secs()
    )]
    LeadershipUnconfirmed { window: std::time::Duration },
    /// Any other fence, in its own words (the trait is open to other implementations).
    #[error("{0}")]
    Closed(String),
}

/// The calls the operator makes: the ECS writes (the same idempotent `PUT` on the NIC) and the
/// VPC port reads. [`Operation::as_str`] is a metric label: the set stays this small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Bind,
    Unbind,
    /// `GET /v1/{project_id}/ports/{port_id}`
    GetPort,
    /// `GET /v1/{project_id}/ports?...` (one page)
    ListPorts,
    /// `PUT /v1/{project_id}/ports/{port_id}` with a whole `allowed_address_pairs` list
    UpdatePort,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Bind => "bind",
            Operation::Unbind => "unbind",
            Operation::GetPort => "get_port",
            Operation::ListPorts => "list_ports",
            Operation::UpdatePort => "update_port",
        }
    }

    /// Whether sending the same request again after an answer that may have applied is safe.
    /// The ECS `PUT` sets one NIC's binding, so a repeat lands on the same state; a port update
    /// replaces a whole list that another writer may have changed in between, so only the
    /// caller, after reading the port again, may decide to write again.
    pub fn resend_safe(self) -> bool {
        !matches!(self, Operation::UpdatePort)
    }

    /// The service the call goes to (and whose budget it draws from).
    pub fn service(self) -> Service {
        match self {
            Operation::Bind | Operation::Unbind => Service::Ecs,
            Operation::GetPort | Operation::ListPorts | Operation::UpdatePort => Service::Vpc,
        }
    }

    /// Whether the call only reads: it cannot change the cloud, so it is always safe to repeat.
    pub fn is_read(self) -> bool {
        matches!(self, Operation::GetPort | Operation::ListPorts)
    }
}

/// Where a call goes and whose keys sign it.
#[derive(Debug, Clone)]
pub struct CloudTarget {
    pub region: String,
    pub project_id: String,
    pub credentials: Credentials,
}

/// Bind `ip_address` (a VIP in the subnet's network `subnet_id`) to the NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindRequest {
    pub nic_id: String,
    pub subnet_id: String,
    pub ip_address: String,
    pub reverse_binding: bool,
}

/// Unbind the NIC's virtual IP. The API names no VIP: it is identified by the NIC alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnbindRequest {
    pub nic_id: String,
    pub reverse_binding: bool,
}

/// The request body both calls share (`{"nic": {...}}`); empty strings mean unbind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NicBody {
    pub nic: NicFields,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NicFields {
    pub subnet_id: String,
    pub ip_address: String,
    pub reverse_binding: bool,
}

impl NicBody {
    pub fn bind(req: &BindRequest) -> Self {
        Self {
            nic: NicFields {
                subnet_id: req.subnet_id.clone(),
                ip_address: req.ip_address.clone(),
                reverse_binding: req.reverse_binding,
            },
        }
    }

    pub fn unbind(req: &UnbindRequest) -> Self {
        Self {
            nic: NicFields {
                subnet_id: String::new(),
                ip_address: String::new(),
                reverse_binding: req.reverse_binding,
            },
        }
    }
}

/// A write the cloud accepted: the port it names, and the answer's `X-Request-Id` (what Huawei
/// support asks for, and what the audit trail records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub port_id: String,
    /// `None` when the answer carried no `X-Request-Id` (Huawei's gateway always sends one).
    pub request_id: Option<String>,
}

/// The ECS calls the controller needs. Implementations: [`EcsClient`] (signed HTTP) and test
/// fakes. Both return the `port_id` the cloud answered with, and the answer's request id.
pub trait EcsApi: Send + Sync {
    fn bind<'a>(&'a self, target: &'a CloudTarget, req: &'a BindRequest) -> BoxFuture<'a, Result<Written, EcsError>>;

    fn unbind<'a>(
        &'a self,
        target: &'a CloudTarget,
        req: &'a UnbindRequest,
    ) -> BoxFuture<'a, Result<Written, EcsError>>;
}

/// Wall-clock time, injectable so signing and credential expiry can be tested.
pub trait Clock: Send + Sync {
    fn now(&self) -> jiff::Timestamp;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
}

/// An identifier that cannot go into the URL path. `what` names it as the user knows it
/// (`spec.nicId`, `--project-id`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    /// The value itself is left out: it may be arbitrarily long.
    #[error("{what} is longer than 64 characters")]
    TooLong { what: &'static str },
    #[error("{what} {value:?} contains {bad:?}; only letters, digits, '-', '_' and '.' are allowed")]
    BadCharacter { what: &'static str, value: String, bad: char },
    /// `.` or `..`: path segments with a meaning of their own.
    #[error("{what} {value:?} is not an identifier")]
    DotSegment { what: &'static str, value: String },
}

/// A region name that cannot go into the endpoint's host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRegion {
    #[error("region is empty")]
    Empty,
    #[error("region {0:?} is not a region name (lowercase letters, digits and '-', like cn-north-4)")]
    NotARegionName(String),
}

/// Identifiers that go into the URL path. Huawei project ids are 32 hex characters and NIC ids
/// are UUIDs; this accepts a little more, but nothing that could change the path's meaning.
pub fn check_path_id(what: &'static str, value: &str) -> Result<(), InvalidId> {
    if value.is_empty() {
        return Err(InvalidId::Empty { what });
    }
    if value.len() > 64 {
        return Err(InvalidId::TooLong { what });
    }
    if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(InvalidId::BadCharacter { what, value: value.into(), bad });
    }
    if value == "." || value == ".." {
        return Err(InvalidId::DotSegment { what, value: value.into() });
    }
    Ok(())
}

/// Region names go into the endpoint's host name (`ecs.{region}.myhuaweicloud.com`).
pub fn check_region(region: &str) -> Result<(), InvalidRegion> {
    if region.is_empty() {
        return Err(InvalidRegion::Empty);
    }
    if region.len() > 63
        || !region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || region.starts_with('-')
        || region.ends_with('-')
    {
        return Err(InvalidRegion::NotARegionName(region.into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbind_body_is_the_seed_body() {
        let body = NicBody::unbind(&UnbindRequest { nic_id: "n".into(), reverse_binding: false });
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"nic":{"subnet_id":"","ip_address":"","reverse_binding":false}}"#
        );
    }

    #[test]
    fn bind_body_carries_the_vip() {
        let body = NicBody::bind(&BindRequest {
            nic_id: "n".into(),
            subnet_id: "s".into(),
            ip_address: "192.168.0.7".into(),
            reverse_binding: true,
        });
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"nic":{"subnet_id":"s","ip_address":"192.168.0.7","reverse_binding":true}}"#
        );
    }

    #[test]
    fn path_ids() {
        assert!(check_path_id("nicId", "d32019d3-bc6e-4319-9c1d-6722fc136a23").is_ok());
        assert!(check_path_id("projectId", "77b6a44cba5143ab91d13ab9a8ff44fd").is_ok());
        for bad in ["", "a/b", "..", ".", "a?b", "a%2F", "a b", &"x".repeat(65), "ü"] {
            assert!(check_path_id("id", bad).is_err(), "{bad:?}");
        }
    }

    /// The texts reach conditions, logs and start-up errors; they predate the typed errors.
    #[test]
    fn input_and_fence_messages() {
        let id = |value: &str| check_path_id("nicId", value).unwrap_err().to_string();
        assert_eq!(id(""), "nicId is empty");
        assert_eq!(id(&"x".repeat(65)), "nicId is longer than 64 characters");
        assert_eq!(id("a/b"), r#"nicId "a/b" contains '/'; only letters, digits, '-', '_' and '.' are allowed"#);
        assert_eq!(id(".."), r#"nicId ".." is not an identifier"#);
        assert_eq!(check_region("").unwrap_err().to_string(), "region is empty");
        assert_eq!(
            check_region("A").unwrap_err().to_string(),
            r#"region "A" is not a region name (lowercase letters, digits and '-', like cn-north-4)"#
        );
        let closed = FenceError::LeadershipUnconfirmed { window: std::time::Duration::from_millis(12_500) };
        assert_eq!(
            closed.to_string(),
            "this replica could not confirm it holds the leader lease within the last 12s (API server unreachable?)"
        );
        assert_eq!(
            EcsError::Fenced(closed).to_string(),
            "not sent: this replica could not confirm it holds the leader lease within the last 12s (API server unreachable?)"
        );
    }

    /// Metric labels: one per operation, fixed, distinct.
    #[test]
    fn operation_labels() {
        let all = [Operation::Bind, Operation::Unbind, Operation::GetPort, Operation::ListPorts, Operation::UpdatePort];
        let labels: std::collections::BTreeSet<&str> = all.iter().map(|o| o.as_str()).collect();
        assert_eq!(labels.len(), all.len());
        assert_eq!(all.iter().filter(|o| o.is_read()).count(), 2);
        assert_eq!(all.iter().filter(|o| !o.resend_safe()).collect::<Vec<_>>(), [&Operation::UpdatePort]);
        let ecs: Vec<_> = all.iter().filter(|o| o.service() == Service::Ecs).collect();
        assert_eq!(ecs, [&Operation::Bind, &Operation::Unbind]);
    }

    #[test]
    fn regions() {
        for ok in ["cn-north-4", "ap-southeast-1", "eu-west-0", "tr-west-1"] {
            assert!(check_region(ok).is_ok());
        }
        for bad in ["", "CN-NORTH-4", "cn.north", "-a", "a-", "a/b", "a:80"] {
            assert!(check_region(bad).is_err(), "{bad:?}");
        }
    }
}
