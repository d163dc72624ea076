//! Admin HTTP server: `/metrics` (OpenMetrics text), `/healthz` (the process serves requests),
//! `/readyz` (ready to do its job: see [`Health`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::v1alpha1::VipBinding;
use crate::controller::state::caches::Caches;
use crate::metrics::Metrics;

/// Readiness: a standby replica is ready once its start-up checks passed (API server reachable,
/// CRD installed, RBAC allows listing); the leader only after its first full watch sync. Both
/// turn unready as soon as shutdown begins.
#[derive(Debug, Default)]
pub struct Health {
    started: AtomicBool,
    leading: AtomicBool,
    synced: AtomicBool,
    shutting_down: AtomicBool,
}

impl Health {
    pub fn started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }
    pub fn leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
        if !leading {
            self.synced.store(false, Ordering::SeqCst);
        }
    }
    pub fn synced(&self) {
        self.synced.store(true, Ordering::SeqCst);
    }
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        let load = |b: &AtomicBool| b.load(Ordering::SeqCst);
        load(&self.started) && !load(&self.shutting_down) && (!load(&self.leading) || load(&self.synced))
    }
}

#[derive(Clone)]
pub struct AdminState {
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// The controller's caches, once it runs (for the binding gauges).
    pub stores: Caches<VipBinding>,
    /// The group controller's caches, once it runs (for the group gauges).
    pub groups: Caches<crate::api::group::VipGroup>,
}

async fn metrics(State(state): State<AdminState>) -> Response {
    state.metrics.ready.set(i64::from(state.health.is_ready()));
    if let Some(bindings) = state.stores.objects() {
        state.metrics.refresh_bindings(bindings.iter().map(|b| &**b), jiff::Timestamp::now());
    }
    if let Some(groups) = state.groups.objects() {
        state.metrics.refresh_groups(groups.iter().map(|g| &**g));
    }
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.health.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// In use, not local, not permitted: a configuration problem.
    #[error("--metrics-addr {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The bound socket's own address (for port 0) could not be read.
    #[error(transparent)]
    LocalAddr(std::io::Error),
}

/// Binds the admin server (a bad address is a start-up error) and serves until `stop`.
pub async fn serve(addr: SocketAddr, state: AdminState, stop: CancellationToken) -> Result<SocketAddr, AdminError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| AdminError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(AdminError::LocalAddr)?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(state)).with_graceful_shutdown(stop.cancelled_owned()).await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_rules() {
        let h = Health::default();
        assert!(!h.is_ready(), "not ready before start-up checks");
        h.started();
        assert!(h.is_ready(), "a standby is ready after start-up checks");
        h.leading(true);
        assert!(!h.is_ready(), "a new leader is not ready before its first sync");
        h.synced();
        assert!(h.is_ready());
        h.shutting_down();
        assert!(!h.is_ready(), "unready during shutdown");
    }
}
