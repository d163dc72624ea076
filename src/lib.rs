//! vip-operator: binds Huawei Cloud ECS virtual IPs to server NICs as Kubernetes objects.

pub mod admin;
pub mod api;
pub mod cli;
pub mod controller;
pub mod ecs;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod run;
pub mod simulator;
pub mod telemetry;

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
