//! vip-operator: binds Huawei Cloud ECS virtual IPs to server NICs as Kubernetes objects.

// A function longer than a screen is several steps that deserve names (see clippy.toml).
#![warn(clippy::too_many_lines)]

pub mod admin;
pub mod api;
pub mod cli;
pub mod controller;
pub mod ecs;
pub mod import;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod run;
pub mod settings;
pub mod simulator;
pub mod telemetry;

/// `Instant::now() + d`, saturating instead of panicking: `d` may come from outside (a
/// `Retry-After`, a flag), and `Instant + Duration` panics on overflow.
pub fn instant_after(d: std::time::Duration) -> tokio::time::Instant {
    // tokio's clock: the one the controller's timers use (and tests can pause).
    let now = tokio::time::Instant::now();
    // About 30 years: far enough to mean "not in this process's life", near enough to fit.
    const FAR: std::time::Duration = std::time::Duration::from_secs(1 << 30);
    now.checked_add(d).or_else(|| now.checked_add(FAR)).unwrap_or(now)
}

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
