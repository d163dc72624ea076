//! Which objects a list or watch covers, and `?watch=true`: a newline-delimited stream of
//! watch events, as served by the watch cache.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::Shared;
use super::error::{ApiError, ApiResult};
use super::resources::ResourceType;
use super::store::{Change, meta_str};

/// The namespace of the request and its `fieldSelector`: `metadata.name` and
/// `metadata.namespace` with `=`, `==` or `!=` (no label selectors).
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    /// `None` for cluster-scoped resources and all-namespaces requests.
    pub namespace: Option<String>,
    /// `(field, equal, value)`
    fields: Vec<(String, bool, String)>,
}

impl Filter {
    pub fn new(namespace: Option<&str>, field_selector: Option<&str>) -> ApiResult<Self> {
        let mut fields = Vec::new();
        for term in field_selector.unwrap_or_default().split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = match (term.split_once("!="), term.split_once('=')) {
                (Some((f, v)), _) => (f, false, v),
                (None, Some((f, v))) => (f, true, v.strip_prefix('=').unwrap_or(v)),
                _ => return Err(ApiError::bad_request(format!("invalid selector: can't understand '{term}'"))),
            };
            if !matches!(field.trim(), "metadata.name" | "metadata.namespace") {
                return Err(ApiError::bad_request(format!("field label not supported: {}", field.trim())));
            }
            fields.push((field.trim().to_string(), equal, value.trim().to_string()));
        }
        Ok(Self { namespace: namespace.map(str::to_string), fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let in_namespace = self.namespace.as_deref().is_none_or(|ns| meta_str(obj, "namespace") == Some(ns));
        in_namespace
            && self.fields.iter().all(|(field, equal, value)| {
                let actual = meta_str(obj, field.trim_start_matches("metadata.")).unwrap_or_default();
                (actual == value) == *equal
            })
    }
}

/// An object as served: at the requested version, or as `PartialObjectMetadata`.
pub(crate) fn render_object(obj: &Value, rt: &ResourceType, version: &str, metadata_only: bool) -> Value {
    if metadata_only {
        return json!({ "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"] });
    }
    let mut out = obj.clone();
    out["apiVersion"] = json!(rt.api_version(version));
    out
}

/// A parsed watch request.
pub(crate) struct WatchRequest {
    pub rt: ResourceType,
    pub version: String,
    pub filter: Filter,
    /// `resourceVersion`; `None` or `Some(0)` means "current state first, then changes".
    pub resource_version: Option<u64>,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    pub metadata_only: bool,
}

impl WatchRequest {
    fn line(&self, event_type: &str, object: &Value) -> Bytes {
        let object = if event_type == "ERROR" || event_type == "BOOKMARK" {
            object.clone()
        } else {
            render_object(object, &self.rt, &self.version, self.metadata_only)
        };
        Bytes::from(format!("{}\n", json!({ "type": event_type, "object": object })))
    }

    /// The event this watcher sees for a change, if any. (The selectors are on immutable
    /// fields, so a change never makes an object start or stop matching.)
    fn event_for(&self, change: &Change) -> Option<Bytes> {
        self.filter.matches(&change.object).then(|| self.line(change.kind, &change.object))
    }

    fn bookmark(&self, rv: u64) -> Bytes {
        let (kind, api_version) = if self.metadata_only {
            ("PartialObjectMetadata".to_string(), "meta.k8s.io/v1".to_string())
        } else {
            (self.rt.kind.clone(), self.rt.api_version(&self.version))
        };
        let object =
            json!({ "kind": kind, "apiVersion": api_version, "metadata": { "resourceVersion": rv.to_string() } });
        self.line("BOOKMARK", &object)
    }
}

type Chunk = Result<Bytes, std::convert::Infallible>;

/// Starts a watch: returns the stream of response body chunks. The initial events (or the
/// replay from `resourceVersion`) are computed under the lock that registers the watcher, so
/// no change can fall between them.
pub(crate) fn start(shared: Arc<Shared>, req: WatchRequest) -> mpsc::UnboundedReceiver<Chunk> {
    let (out, body) = mpsc::unbounded_channel::<Chunk>();
    let (feed, mut changes) = mpsc::unbounded_channel::<Arc<Change>>();
    let watcher_id = {
        let mut st = shared.lock();
        let resource = req.rt.key();
        match req.resource_version {
            None | Some(0) => {
                for (_, obj) in st.objects_of(&resource).filter(|(_, o)| req.filter.matches(o)) {
                    let _ = out.send(Ok(req.line("ADDED", obj)));
                }
            }
            Some(rv) => match st.changes_since(&resource, rv) {
                Ok(replay) => {
                    for line in replay.iter().filter_map(|c| req.event_for(c)) {
                        let _ = out.send(Ok(line));
                    }
                }
                Err(gone) => {
                    let _ = out.send(Ok(req.line("ERROR", &gone.to_status())));
                    return body;
                }
            },
        }
        st.add_watcher(resource, feed)
    };

    tokio::spawn(async move {
        let deadline = req.timeout.map(|t| Instant::now() + t);
        let period = shared.bookmark_interval;
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                _ = out.closed() => break,
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => break,
                change = changes.recv() => match change {
                    Some(change) => {
                        if let Some(line) = req.event_for(&change) && out.send(Ok(line)).is_err() {
                            break;
                        }
                    }
                    // The store dropped this watcher (its resource is no longer served).
                    None => break,
                },
                _ = ticks.tick(), if req.bookmarks => {
                    // Drain under the lock so that the bookmark cannot overtake a queued change.
                    let (pending, rv) = {
                        let st = shared.lock();
                        let mut pending = Vec::new();
                        while let Ok(change) = changes.try_recv() {
                            pending.push(change);
                        }
                        (pending, st.current_rv())
                    };
                    for line in pending.iter().filter_map(|c| req.event_for(c)) {
                        let _ = out.send(Ok(line));
                    }
                    if out.send(Ok(req.bookmark(rv))).is_err() {
                        break;
                    }
                }
            }
        }
        shared.lock().remove_watcher(watcher_id);
    });
    body
}
