//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager): only the leader
//! reconciles; a standby takes over within the lease duration when the leader dies; on shutdown
//! the leader releases the lease so a standby takes over at once.

use std::time::Duration;

use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ecs::FenceError;

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    /// Seconds a lease stays valid after its last renewal.
    pub lease_duration: u64,
    /// Seconds before expiry at which the holder renews.
    pub renew_grace: u64,
}

/// Leader election could not start.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("cannot use Lease {namespace}/{name} for leader election: {source}")]
    Lease { namespace: String, name: String, source: kube_lease_manager::LeaseManagerError },
}

pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, kube_lease_manager::LeaseManagerError>>,
}

impl Leadership {
    pub async fn start(client: kube::Client, config: LeaderConfig) -> Result<Self, LeaderError> {
        let manager = LeaseManagerBuilder::new(client, &config.lease_name)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(config.lease_duration)
            .with_grace(config.renew_grace)
            .with_field_manager(format!("vip-operator-{}", config.identity))
            .build()
            .await
            .map_err(|source| LeaderError::Lease {
                namespace: config.namespace.clone(),
                name: config.lease_name.clone(),
                source,
            })?;
        let (state, task) = manager.watch().await;
        Ok(Self { state, task })
    }

    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// Resolves once this replica holds the lease (false if the election task ended).
    pub async fn acquired(&mut self) -> bool {
        self.state.wait_for(|leader| *leader).await.is_ok()
    }

    /// Resolves when this replica no longer holds the lease.
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leader| !*leader).await;
    }

    /// Gives the lease up (so a standby takes over without waiting for it to expire).
    pub async fn release(self, within: Duration) {
        let Self { state, task } = self;
        // Dropping the last receiver makes the manager release the lease and return.
        drop(state);
        match tokio::time::timeout(within, task).await {
            Ok(Ok(Ok(_))) => tracing::info!("leader lease released"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not release the leader lease; it expires by itself"),
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election task failed"),
            Err(_) => tracing::warn!("releasing the leader lease timed out; it expires by itself"),
        }
    }
}

/// The leader's own evidence that it still leads: the Lease as the API server last showed it.
///
/// kube-lease-manager reports a lost lease only once it can talk to the API server again; a
/// leader cut off from it would go on calling the cloud while a standby takes over. This fence
/// closes `margin` before the lease, as last read with this replica as holder, could expire:
/// no cloud call starts after that, and none runs past it (the ECS client's per-attempt
/// timeout is the time left). It is kept open by [`confirm_leadership`] reading the Lease.
pub struct LeaseFence {
    lease: Duration,
    margin: Duration,
    until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl LeaseFence {
    pub fn new(lease: Duration, margin: Duration) -> Self {
        Self { lease, margin, until: std::sync::Mutex::new(None) }
    }

    /// The Lease was read with this replica as holder, last renewed `renewed_ago`.
    pub fn confirm(&self, renewed_ago: Duration) {
        let valid = self.lease.saturating_sub(self.margin).saturating_sub(renewed_ago);
        let until = crate::instant_after(valid);
        *self.until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
    }
}

impl crate::ecs::Fence for LeaseFence {
    fn remaining(&self) -> Result<Duration, FenceError> {
        let until = *self.until.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        match until {
            Some(until) if until > now => Ok(until - now),
            _ => Err(FenceError::LeadershipUnconfirmed { window: self.lease.saturating_sub(self.margin) }),
        }
    }
}

/// Reads the Lease every `every` and keeps `fence` open while it names this replica as holder.
pub async fn confirm_leadership(
    leases: kube::Api<k8s_openapi::api::coordination::v1::Lease>,
    config: LeaderConfig,
    fence: std::sync::Arc<LeaseFence>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        confirm_once(&leases, &config, &fence, every).await;
    }
}

/// One read of the Lease; `true` when it names this replica (and `fence` was moved on).
pub async fn confirm_once(
    leases: &kube::Api<k8s_openapi::api::coordination::v1::Lease>,
    config: &LeaderConfig,
    fence: &LeaseFence,
    timeout: Duration,
) -> bool {
    match tokio::time::timeout(timeout, leases.get(&config.lease_name)).await {
        Ok(Ok(lease)) => match renewed_ago(&lease, &config.identity, jiff::Timestamp::now()) {
            Some(ago) => {
                fence.confirm(ago);
                true
            }
            None => {
                tracing::warn!("the leader lease names another holder: no cloud calls from this replica");
                false
            }
        },
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the leader lease: cloud calls stop when it may have expired");
            false
        }
        Err(_) => {
            tracing::warn!("reading the leader lease timed out: cloud calls stop when it may have expired");
            false
        }
    }
}

/// How long ago `identity`'s lease was renewed (`None`: someone else holds it). A renewal time
/// in the future (clock skew between replicas) counts as now.
fn renewed_ago(
    lease: &k8s_openapi::api::coordination::v1::Lease,
    identity: &str,
    now: jiff::Timestamp,
) -> Option<Duration> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let ago = now.duration_since(renewed);
    Some(Duration::try_from(ago).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::Fence;

    fn lease(holder: &str, renewed: &str) -> k8s_openapi::api::coordination::v1::Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "vip-operator"},
            "spec": {"holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": 15}
        }))
        .expect("lease")
    }

    #[test]
    fn renewal_age_only_for_our_own_lease() {
        let now: jiff::Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        let ours = lease("a", "2026-01-01T00:00:04.000000Z");
        assert_eq!(renewed_ago(&ours, "a", now), Some(Duration::from_secs(6)));
        assert_eq!(renewed_ago(&ours, "b", now), None);
        let future = lease("a", "2026-01-01T00:00:20.000000Z");
        assert_eq!(renewed_ago(&future, "a", now), Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn the_fence_closes_margin_before_the_lease_could_expire() {
        let fence = LeaseFence::new(Duration::from_secs(15), Duration::from_secs(3));
        assert!(fence.remaining().is_err(), "closed until leadership is confirmed");
        fence.confirm(Duration::from_secs(4));
        assert_eq!(fence.remaining().unwrap(), Duration::from_secs(8));
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(fence.remaining().unwrap(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        let closed = fence.remaining().unwrap_err().to_string();
        assert!(closed.contains("leader lease"), "{closed}");
        // A renewal older than the lease itself opens nothing.
        fence.confirm(Duration::from_secs(60));
        assert!(fence.remaining().is_err());
    }
}
