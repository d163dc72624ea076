//! Nodes as groups see them: labels (for selectors), the server ID (from `spec.providerID` or an
//! annotation) and a NIC named by annotation.
//!
//! Watching Nodes at 5,000 nodes: a full Node is 10–30 KiB (images, conditions, addresses) and
//! is rewritten on every status report; the operator needs its labels, two annotations and
//! `spec.providerID`, which the API server only lets change from empty to set. So the watch is
//! of metadata only (`PartialObjectMeta<Node>`), and `spec.providerID` is read once per node
//! (by UID) when a group first needs it, and kept: a node's providerID never changes once set.
//! A node whose providerID is still empty is read again at most every
//! [`EMPTY_PROVIDER_ID_RECHECK`]. A status report (the kubelet's, every few minutes, or a
//! condition change) still reaches the metadata watch as a new resourceVersion; its
//! fingerprint (labels, our annotations, deletion) is unchanged, so it triggers nothing: no
//! reconcile, no read, no cloud call.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::core::PartialObjectMeta;
use tokio::time::Instant;

use crate::api::group::{NIC_ID_ANNOTATION, SERVER_ID_ANNOTATION};

/// How long a node read with an empty providerID is trusted before it is read again (a cloud
/// controller sets it shortly after the node registers).
pub const EMPTY_PROVIDER_ID_RECHECK: Duration = Duration::from_secs(60);
/// Longest annotation value taken as an ID: anything longer is not one.
const MAX_ID_LEN: usize = 64;
/// Nodes remembered at most (their providerIDs): far above any cluster's node count.
const MAX_NODES: usize = 50_000;

/// What a group needs of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// `vipoperator.dev/server-id`.
    pub server_annotation: Option<String>,
    /// `vipoperator.dev/nic-id`.
    pub nic_annotation: Option<String>,
}

/// Where a node's server ID comes from, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerId {
    /// The NIC is named on the node: no lookup.
    Nic(String),
    Server(String),
    /// Not known yet: the node's providerID has not been read.
    Unread,
    Missing(String),
}

impl NodeView {
    pub fn of(node: &PartialObjectMeta<Node>) -> Option<Self> {
        Self::from_meta(&node.metadata)
    }

    /// From a node's metadata (a full Node read, as `vip-operator import` makes).
    pub fn from_meta(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<Self> {
        let annotation = |key: &str| {
            meta.annotations.as_ref().and_then(|a| a.get(key)).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
        };
        Some(Self {
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
            labels: meta.labels.clone().unwrap_or_default(),
            server_annotation: annotation(SERVER_ID_ANNOTATION),
            nic_annotation: annotation(NIC_ID_ANNOTATION),
        })
    }

    /// What decides whether a group's members change: a status report changes none of it.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.labels, &self.server_annotation, &self.nic_annotation).hash(&mut h);
        h.finish()
    }

    /// The node's server (or NIC), given its providerID as read (`None`: not read yet).
    pub fn server_id(&self, provider_id: Option<&str>) -> ServerId {
        if let Some(nic) = &self.nic_annotation {
            return match valid_id(nic) {
                true => ServerId::Nic(nic.clone()),
                false => ServerId::Missing(format!("annotation {NIC_ID_ANNOTATION} {nic:?} is not a port ID")),
            };
        }
        if let Some(server) = &self.server_annotation {
            return match valid_id(server) {
                true => ServerId::Server(server.clone()),
                false => ServerId::Missing(format!("annotation {SERVER_ID_ANNOTATION} {server:?} is not a server ID")),
            };
        }
        match provider_id {
            None => ServerId::Unread,
            Some("") => ServerId::Missing(format!(
                "node has no spec.providerID and no {SERVER_ID_ANNOTATION} or {NIC_ID_ANNOTATION} annotation"
            )),
            Some(p) => match server_from_provider_id(p) {
                Some(id) => ServerId::Server(id),
                None => ServerId::Missing(format!(
                    "spec.providerID {:?} names no Huawei Cloud server (expected huaweicloud://<server-id>); set the {SERVER_ID_ANNOTATION} annotation",
                    cut(p)
                )),
            },
        }
    }
}

fn cut(s: &str) -> String {
    s.chars().take(128).collect()
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// `huaweicloud://<server-id>`, also with zone segments (`huaweicloud:///<az>/<server-id>`,
/// `huaweicloud://<region>/<az>/<server-id>`): the last segment that is a UUID.
pub fn server_from_provider_id(provider_id: &str) -> Option<String> {
    let rest = provider_id.trim().strip_prefix("huaweicloud://")?;
    rest.split('/').rev().find(|s| is_uuid(s)).map(|s| s.to_ascii_lowercase())
}

/// Each node's providerID as read, by UID (see the module doc).
#[derive(Default)]
pub struct ProviderIds {
    inner: Mutex<HashMap<String, (String, Instant)>>,
}

impl ProviderIds {
    /// The providerID read for `uid`, if it is still to be trusted.
    pub fn get(&self, uid: &str) -> Option<String> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .get(uid)
            .filter(|(p, at)| !p.is_empty() || at.elapsed() < EMPTY_PROVIDER_ID_RECHECK)
            .map(|(p, _)| p.clone())
    }

    pub fn put(&self, uid: &str, provider_id: String) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.len() >= MAX_NODES && !inner.contains_key(uid) {
            // Far past any cluster: drop the empty ones first, then anything.
            inner.retain(|_, (p, _)| !p.is_empty());
            if inner.len() >= MAX_NODES {
                inner.clear();
            }
        }
        inner.insert(uid.to_string(), (provider_id, Instant::now()));
    }

    pub fn forget(&self, uid: &str) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b6e2a9c-36c4-4d4b-9f36-1f4d2c3b9a10";

    #[test]
    fn provider_ids_with_and_without_zones() {
        assert_eq!(server_from_provider_id(&format!("huaweicloud://{ID}")).as_deref(), Some(ID));
        assert_eq!(server_from_provider_id(&format!("huaweicloud:///cn-north-4a/{ID}")).as_deref(), Some(ID));
        assert_eq!(server_from_provider_id(&format!("huaweicloud://cn-north-4/cn-north-4a/{ID}")).as_deref(), Some(ID));
        assert_eq!(server_from_provider_id(&format!("huaweicloud://{}", ID.to_uppercase())).as_deref(), Some(ID));
        assert_eq!(server_from_provider_id(&format!("aws:///us-east-1a/{ID}")), None);
        assert_eq!(server_from_provider_id("huaweicloud://not-a-uuid"), None);
        assert_eq!(server_from_provider_id("huaweicloud://"), None);
        assert_eq!(server_from_provider_id(""), None);
    }

    fn node(annotations: &[(&str, &str)]) -> NodeView {
        NodeView {
            name: "n1".into(),
            uid: "u1".into(),
            labels: BTreeMap::new(),
            server_annotation: annotations.iter().find(|(k, _)| *k == SERVER_ID_ANNOTATION).map(|(_, v)| v.to_string()),
            nic_annotation: annotations.iter().find(|(k, _)| *k == NIC_ID_ANNOTATION).map(|(_, v)| v.to_string()),
        }
    }

    #[test]
    fn annotations_come_before_the_provider_id_and_bad_ones_say_why() {
        let pid = format!("huaweicloud://{ID}");
        assert_eq!(node(&[]).server_id(Some(&pid)), ServerId::Server(ID.into()));
        assert_eq!(node(&[]).server_id(None), ServerId::Unread);
        assert!(matches!(node(&[]).server_id(Some("")), ServerId::Missing(m) if m.contains("no spec.providerID")));
        assert!(matches!(node(&[]).server_id(Some("kind://docker/n1")), ServerId::Missing(m) if m.contains("kind://")));
        assert_eq!(node(&[(SERVER_ID_ANNOTATION, "srv-1")]).server_id(Some(&pid)), ServerId::Server("srv-1".into()));
        assert_eq!(
            node(&[(SERVER_ID_ANNOTATION, "srv-1"), (NIC_ID_ANNOTATION, "nic-1")]).server_id(None),
            ServerId::Nic("nic-1".into())
        );
        assert!(matches!(node(&[(NIC_ID_ANNOTATION, "a b")]).server_id(None), ServerId::Missing(_)));
        let long = "x".repeat(65);
        assert!(matches!(node(&[(SERVER_ID_ANNOTATION, &long)]).server_id(None), ServerId::Missing(_)));
    }

    #[test]
    fn a_status_report_leaves_the_fingerprint_alone_and_a_label_does_not() {
        let a = node(&[]);
        let mut b = a.clone();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.labels.insert("role".into(), "lb".into());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
