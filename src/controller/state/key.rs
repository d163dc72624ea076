//! The key of a binding's per-object state (backoff, drift schedule).

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use kube::ResourceExt;

use crate::api::v1alpha1::VipBinding;

/// A binding's UID: a new object with an old name starts fresh, and a key is never built
/// from, or split into, `namespace/name`. Cheap to clone (shared string).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(Arc<str>);

impl ObjectKey {
    /// The key of `b`. An object without a UID never comes from the API server (only from
    /// tests that build one by hand); its name stands in.
    pub fn of(b: &VipBinding) -> Self {
        match b.metadata.uid.as_deref() {
            Some(uid) => Self(uid.into()),
            None => Self(format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any()).into()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ObjectKey {
    fn from(uid: &str) -> Self {
        Self(uid.into())
    }
}

impl Borrow<str> for ObjectKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
