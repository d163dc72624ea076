//! `?watch=true`: a newline-delimited stream of watch events, as served by the watch cache.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::Shared;
use super::error::ApiError;
use super::resources::ResourceType;
use super::selectors::Filter;
use super::store::{Change, ChangeType, set_meta};

/// A parsed watch request.
pub(crate) struct WatchRequest {
    pub rt: ResourceType,
    pub version: String,
    pub filter: Filter,
    /// `resourceVersion`; `None` or `Some(0)` means "current state first, then changes".
    pub resource_version: Option<u64>,
    pub send_initial_events: bool,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    pub metadata_only: bool,
}

impl WatchRequest {
    /// Renders an object as this watcher asked for it (version, metadata only or not).
    fn render(&self, obj: &Value) -> Value {
        render_object(obj, &self.rt, &self.version, self.metadata_only)
    }

    fn line(&self, event_type: &str, object: Value) -> Bytes {
        let mut line = json!({ "type": event_type, "object": object }).to_string();
        line.push('\n');
        Bytes::from(line)
    }

    /// The event this watcher sees for a change, if any. A modification that makes an object
    /// start or stop matching the selectors is an ADDED or DELETED, as in the watch cache.
    fn event_for(&self, change: &Change) -> Option<Bytes> {
        let matches_now = self.filter.matches(&change.object);
        let (event_type, object) = match change.kind {
            ChangeType::Added => ("ADDED", change.object.clone()),
            ChangeType::Deleted => ("DELETED", change.object.clone()),
            ChangeType::Modified => {
                let matched_before = change.prev.as_ref().is_some_and(|p| self.filter.matches(p));
                match (matched_before, matches_now) {
                    (true, true) => ("MODIFIED", change.object.clone()),
                    (false, true) => ("ADDED", change.object.clone()),
                    (true, false) => {
                        // The previous content, at the resourceVersion of this change.
                        let mut prev = change.prev.clone().unwrap_or_default();
                        set_meta(&mut prev, "resourceVersion", json!(change.rv.to_string()));
                        return Some(self.line("DELETED", self.render(&prev)));
                    }
                    (false, false) => return None,
                }
            }
        };
        (matches_now).then(|| self.line(event_type, self.render(&object)))
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let (kind, api_version) = if self.metadata_only {
            ("PartialObjectMetadata".to_string(), "meta.k8s.io/v1".to_string())
        } else {
            (self.rt.kind.clone(), self.rt.api_version(&self.version))
        };
        let mut metadata = json!({ "resourceVersion": rv.to_string() });
        if initial_events_end {
            metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        self.line("BOOKMARK", json!({ "kind": kind, "apiVersion": api_version, "metadata": metadata }))
    }
}

/// An object as served: at the requested version, or as `PartialObjectMetadata`.
pub(crate) fn render_object(obj: &Value, rt: &ResourceType, version: &str, metadata_only: bool) -> Value {
    if metadata_only {
        return json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        });
    }
    let mut out = obj.clone();
    out["apiVersion"] = json!(rt.api_version(version));
    out
}

type Chunk = Result<Bytes, std::convert::Infallible>;

/// Starts a watch: returns the stream of response body chunks. Initial events and the replay
/// from `resourceVersion` are computed under the same lock that registers the watcher, so no
/// change can fall between them.
pub(crate) fn start(shared: Arc<Shared>, req: WatchRequest) -> mpsc::UnboundedReceiver<Chunk> {
    let (out, body) = mpsc::unbounded_channel::<Chunk>();
    let (feed, mut changes) = mpsc::unbounded_channel::<Arc<Change>>();
    let watcher_id = {
        let mut st = shared.lock();
        let resource = req.rt.key();
        let initial = req.send_initial_events || matches!(req.resource_version, None | Some(0));
        if initial {
            let current: Vec<Value> =
                st.objects_of(&resource).filter(|(_, o)| req.filter.matches(o)).map(|(_, o)| o.clone()).collect();
            for obj in current {
                let _ = out.send(Ok(req.line("ADDED", req.render(&obj))));
            }
            if req.send_initial_events {
                let _ = out.send(Ok(req.bookmark(st.current_rv(), true)));
            }
        } else if let Some(rv) = req.resource_version {
            match st.changes_since(&resource, rv) {
                Ok(replay) => {
                    for change in replay {
                        if let Some(line) = req.event_for(&change) {
                            let _ = out.send(Ok(line));
                        }
                    }
                }
                Err(gone) => {
                    let _ = out.send(Ok(req.line("ERROR", gone.to_status())));
                    return body;
                }
            }
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
                    // Drain under the lock so the bookmark cannot overtake a queued change.
                    let (pending, rv) = {
                        let _st = shared.lock();
                        let mut pending = Vec::new();
                        while let Ok(change) = changes.try_recv() {
                            pending.push(change);
                        }
                        (pending, _st.current_rv())
                    };
                    for change in pending {
                        if let Some(line) = req.event_for(&change) {
                            let _ = out.send(Ok(line));
                        }
                    }
                    if out.send(Ok(req.bookmark(rv, false))).is_err() {
                        break;
                    }
                }
            }
        }
        shared.lock().remove_watcher(watcher_id);
    });
    body
}

/// Parses the `resourceVersion` of a watch.
pub(crate) fn parse_resource_version(rv: Option<&str>) -> Result<Option<u64>, ApiError> {
    match rv {
        None | Some("") => Ok(None),
        Some(text) => {
            text.parse().map(Some).map_err(|_| ApiError::bad_request(format!("invalid resource version: {text}")))
        }
    }
}
