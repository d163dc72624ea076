//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager): only the leader
//! reconciles; a standby takes over within the lease duration when the leader dies; on shutdown
//! the leader releases the lease so a standby takes over at once.

use std::time::Duration;

use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    /// Seconds a lease stays valid after its last renewal.
    pub lease_duration: u64,
    /// Seconds before expiry at which the holder renews.
    pub renew_grace: u64,
}

pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, kube_lease_manager::LeaseManagerError>>,
}

impl Leadership {
    pub async fn start(client: kube::Client, config: LeaderConfig) -> Result<Self, String> {
        let manager = LeaseManagerBuilder::new(client, &config.lease_name)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(config.lease_duration)
            .with_grace(config.renew_grace)
            .with_field_manager(format!("vip-operator-{}", config.identity))
            .build()
            .await
            .map_err(|e| {
                format!("cannot use Lease {}/{} for leader election: {e}", config.namespace, config.lease_name)
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
