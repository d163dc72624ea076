//! The Huawei Cloud ECS client: the narrow interface the controller uses ([`EcsApi`]), the signed
//! HTTP implementation ([`EcsClient`]), error classes, credentials and the request signer.

pub mod client;
pub mod credentials;
pub mod error;
pub mod retry;
pub mod sign;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use client::{EcsClient, EcsClientConfig, Endpoint};
pub use credentials::{Credentials, CredentialsError, MetadataCredentials, SecretCredentials};
pub use error::{ApiError, EcsError, ErrorClass, TransportKind};
pub use retry::RetryPolicy;

/// Whether this process may still reach the cloud, and for how long: a deposed leader must
/// not. Checked before every attempt; an attempt never runs past the time returned.
pub trait Fence: Send + Sync {
    /// `Ok(time left)` while leadership is confirmed; `Err(why)` otherwise.
    fn remaining(&self) -> Result<std::time::Duration, String>;
}

/// The two calls the operator makes. Both are the same idempotent `PUT` on the NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Bind,
    Unbind,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Bind => "bind",
            Operation::Unbind => "unbind",
        }
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

/// The ECS calls the controller needs. Implementations: [`EcsClient`] (signed HTTP) and test
/// fakes. Both return the `port_id` the cloud answered with.
pub trait EcsApi: Send + Sync {
    fn bind<'a>(&'a self, target: &'a CloudTarget, req: &'a BindRequest) -> BoxFuture<'a, Result<String, EcsError>>;

    fn unbind<'a>(&'a self, target: &'a CloudTarget, req: &'a UnbindRequest)
    -> BoxFuture<'a, Result<String, EcsError>>;
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

/// Identifiers that go into the URL path. Huawei project ids are 32 hex characters and NIC ids
/// are UUIDs; this accepts a little more, but nothing that could change the path's meaning.
pub fn check_path_id(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.len() > 64 {
        return Err(format!("{what} is longer than 64 characters"));
    }
    if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(format!("{what} {value:?} contains {bad:?}; only letters, digits, '-', '_' and '.' are allowed"));
    }
    if value == "." || value == ".." {
        return Err(format!("{what} {value:?} is not an identifier"));
    }
    Ok(())
}

/// Region names go into the endpoint's host name (`ecs.{region}.myhuaweicloud.com`).
pub fn check_region(region: &str) -> Result<(), String> {
    if region.is_empty() {
        return Err("region is empty".into());
    }
    if region.len() > 63
        || !region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || region.starts_with('-')
        || region.ends_with('-')
    {
        return Err(format!(
            "region {region:?} is not a region name (lowercase letters, digits and '-', like cn-north-4)"
        ));
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
