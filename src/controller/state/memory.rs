//! What this process itself last wrote, for as long as the watch cache may lag behind it.
//!
//! A reconcile reads the object from the cache. Right after we add the finalizer, bind and write
//! status, the cache can still hold the version from before our status write (the finalizer
//! event arrives first and triggers the next reconcile). Deciding from that stale copy would bind
//! again; after we release an object, a stale copy with the finalizer would unbind again. Both
//! calls are idempotent, but a second cloud call is still a wasted, rate-limited request and a
//! second chance for a race. So the reconciler overlays what it knows it wrote.

use super::key::ObjectKey;
use super::table::Keyed;
use std::time::Duration;

use kube::ResourceExt;
use tokio::time::Instant;

use crate::api::v1alpha1::{VipBinding, VipBindingStatus};

#[derive(Debug, Clone)]
enum Written {
    Status { generation: Option<i64>, status: Box<VipBindingStatus> },
    Released,
}

/// The view a reconcile should decide from.
pub enum View<'a> {
    /// The cache is current (or we know nothing newer).
    Cached(&'a VipBinding),
    /// The cache lags behind our own status write: the object with the status we wrote.
    Overlaid(Box<VipBinding>),
    /// We already released this object; the cache has not seen it go yet.
    Released,
}

pub struct Memory {
    entries: Keyed<Entry>,
    ttl: Duration,
}

struct Entry {
    at: Instant,
    written: Written,
    /// When the watch delivered what we wrote: the entry is kept a little longer, for a
    /// reconcile that took its (older) copy of the object just before.
    confirmed: Option<Instant>,
}

/// How long an entry outlives the watch event that confirmed it.
const CONFIRMED_GRACE: Duration = Duration::from_secs(5);

impl Default for Memory {
    fn default() -> Self {
        // Far longer than any watch lag; short enough that a manual status edit wins soon.
        Self::new(Duration::from_secs(60))
    }
}

impl Memory {
    pub fn new(ttl: Duration) -> Self {
        Self { entries: Keyed::default(), ttl }
    }

    fn key(b: &VipBinding) -> Option<ObjectKey> {
        b.uid().map(|uid| ObjectKey::from(uid.as_str()))
    }

    fn put(&self, b: &VipBinding, written: Written) {
        let Some(key) = Self::key(b) else { return };
        let mut entries = self.entries.lock();
        let now = Instant::now();
        let ttl = self.ttl;
        entries.retain(|_, e| {
            now.duration_since(e.at) < ttl && e.confirmed.is_none_or(|c| now.duration_since(c) < CONFIRMED_GRACE)
        });
        entries.insert(key, Entry { at: now, written, confirmed: None });
    }

    /// We wrote `status`; the server answered with the object at `generation` (newer than
    /// `b`'s when the object changed since `b` was read: a deletion bumps it).
    pub fn wrote_status(&self, b: &VipBinding, generation: Option<i64>, status: &VipBindingStatus) {
        let generation = generation.or(b.metadata.generation);
        self.put(b, Written::Status { generation, status: Box::new(status.clone()) });
    }

    pub fn released(&self, b: &VipBinding) {
        self.put(b, Written::Released);
    }

    /// Called for every object the watch delivers: drops what the cache now shows, at once
    /// (entries would otherwise wait for the object's next reconcile, which a large backlog
    /// can delay by minutes).
    pub fn observe(&self, b: &VipBinding) {
        let Some(key) = Self::key(b) else { return };
        let mut entries = self.entries.lock();
        if let Some(entry) = entries.get_mut(&key)
            && entry.confirmed.is_none()
            && let Written::Status { generation, status } = &entry.written
            && (b.status.as_ref() == Some(&**status) || newer(b.metadata.generation, *generation))
        {
            entry.confirmed = Some(Instant::now());
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn view<'a>(&self, b: &'a VipBinding) -> View<'a> {
        let Some(key) = Self::key(b) else { return View::Cached(b) };
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get(&key) else { return View::Cached(b) };
        if entry.at.elapsed() >= self.ttl {
            entries.remove(&key);
            return View::Cached(b);
        }
        match &entry.written {
            Written::Released => View::Released,
            Written::Status { generation, status } => {
                if b.status.as_ref() == Some(status) {
                    // Caught up: the cache is authoritative again.
                    entries.remove(&key);
                    View::Cached(b)
                } else if !newer(b.metadata.generation, *generation) {
                    // The cache holds the object as it was at our write or before it (the
                    // deletion of an object we were binding included): our status is the latest.
                    let mut overlaid = b.clone();
                    overlaid.status = Some((**status).clone());
                    View::Overlaid(Box::new(overlaid))
                } else {
                    // The spec changed since our write: decide from the cache.
                    entries.remove(&key);
                    View::Cached(b)
                }
            }
        }
    }
}

/// Whether the cached generation is past the one our write was answered with.
fn newer(cached: Option<i64>, written: Option<i64>) -> bool {
    match (cached, written) {
        (Some(cached), Some(written)) => cached > written,
        // Unknown on either side: only equality can vouch for our write.
        (cached, written) => cached != written,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::Fixture;

    fn status(port: &str) -> VipBindingStatus {
        VipBindingStatus { port_id: Some(port.into()), ..Default::default() }
    }

    #[test]
    fn overlays_our_status_until_the_cache_catches_up() {
        let m = Memory::default();
        let stale = VipBinding::test();
        m.wrote_status(&stale, None, &status("p"));
        match m.view(&stale) {
            View::Overlaid(b) => assert_eq!(b.status, Some(status("p"))),
            _ => panic!("expected an overlay"),
        }
        let current = VipBinding::test().with_status(status("p"));
        assert!(matches!(m.view(&current), View::Cached(_)));
        // The entry is gone once caught up.
        assert!(matches!(m.view(&stale), View::Cached(_)));
    }

    #[test]
    fn a_status_read_back_from_the_api_equals_what_we_wrote() {
        // Condition times go through the API at second precision; Context::now() writes them so.
        let at = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let mut written = status("p");
        crate::controller::binding::status::set_condition(
            &mut written.conditions,
            "Ready",
            crate::controller::binding::status::CondStatus::True,
            crate::api::v1alpha1::Reason::Bound,
            "m",
            Some(1),
            &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at),
        );
        let read_back: VipBindingStatus = serde_json::from_value(serde_json::to_value(&written).unwrap()).unwrap();
        assert_eq!(read_back, written);
        let m = Memory::default();
        m.wrote_status(&VipBinding::test(), None, &written);
        let cached = VipBinding::test().with_status(read_back);
        assert!(matches!(m.view(&cached), View::Cached(_)), "caught up");
    }

    #[tokio::test(start_paused = true)]
    async fn confirmed_entries_still_serve_a_stale_copy_then_go() {
        let m = Memory::default();
        let stale = VipBinding::test();
        m.wrote_status(&stale, None, &status("p"));
        m.observe(&stale);
        let current = VipBinding::test().with_status(status("p"));
        // The watch delivered our write...
        m.observe(&current);
        // ...while a reconcile still holds the copy from before it: it must see our status.
        assert!(matches!(m.view(&stale), View::Overlaid(_)));
        assert_eq!(m.len(), 1);
        // Confirmed entries are purged a few seconds later, on the next write.
        tokio::time::advance(CONFIRMED_GRACE + Duration::from_millis(1)).await;
        let other = VipBinding::test().with_uid("u2");
        m.released(&other);
        assert_eq!(m.len(), 1, "only the new entry is left");
    }

    #[test]
    fn a_spec_change_beats_memory() {
        let m = Memory::default();
        m.wrote_status(&VipBinding::test(), None, &status("p"));
        assert!(matches!(m.view(&VipBinding::test().generation(2)), View::Cached(_)));
    }

    #[test]
    fn a_deletion_that_came_before_our_write_does_not_hide_it() {
        // Bound from the copy read before the deletion (generation 1); the server answered the
        // status write at generation 2 (the deletion bumped it); the cache still shows the
        // deletion's version with the status from before the bind.
        let m = Memory::default();
        let before = VipBinding::test();
        m.wrote_status(&before, Some(2), &status("bound"));
        let deleting = VipBinding::test().generation(2).deleting();
        match m.view(&deleting) {
            View::Overlaid(b) => {
                assert_eq!(b.status, Some(status("bound")), "decided from our write, not the stale status");
                assert!(b.metadata.deletion_timestamp.is_some());
            }
            _ => panic!("expected an overlay"),
        }
        // A generation past the one our write was answered with is newer than our write.
        assert!(matches!(m.view(&VipBinding::test().generation(3)), View::Cached(_)));
    }

    #[test]
    fn released_objects_are_not_touched_again() {
        let m = Memory::default();
        m.released(&VipBinding::test());
        assert!(matches!(m.view(&VipBinding::test()), View::Released));
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire() {
        let m = Memory::new(Duration::from_secs(60));
        m.released(&VipBinding::test());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(m.view(&VipBinding::test()), View::Cached(_)));
    }
}
