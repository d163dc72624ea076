//! The failures of a reconcile itself (Kubernetes API calls, a panic), as every controller
//! here has them; cloud failures are not errors: they are recorded in status.

use std::time::Duration;

/// Failures of the reconcile itself (Kubernetes API calls); cloud failures are not errors here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// A bug: the reconcile panicked. Caught so that one object cannot stop the controller
    /// (every reconcile runs inside its task); retried with backoff like an API failure.
    #[error("reconcile panicked: {0}")]
    Panicked(String),
    /// The object this reconcile worked on left the API (or was replaced by another of its
    /// name) before its status could be written.
    #[error("the object is gone")]
    Gone,
}

/// What kind of reconcile failure, for the requeue, the metric label and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 409: someone else wrote the object in between; retry soon with a fresh read.
    Conflict,
    /// 422: e.g. a finalizer patch whose `test` failed because the list changed.
    Invalid,
    NotFound,
    /// Any other answer from the API server.
    Api,
    /// No answer (connection, timeout, TLS).
    Transport,
    Panic,
    /// The object is gone: nothing to retry.
    Gone,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Conflict => "conflict",
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Api => "api",
            ErrorKind::Transport => "transport",
            ErrorKind::Panic => "panic",
            ErrorKind::Gone => "gone",
        }
    }

    /// How long to wait before the next try after `previous` failures of the same object:
    /// soon after a write race (the next read is fresh), exponentially otherwise, up to 60 s.
    pub fn requeue_after(self, previous: u32) -> Duration {
        let delay = match self {
            ErrorKind::Conflict | ErrorKind::Invalid => Duration::from_millis(500),
            _ => Duration::from_secs(1).saturating_mul(2u32.saturating_pow(previous.min(6))),
        };
        delay.min(Duration::from_secs(60))
    }
}

impl Error {
    pub fn class(&self) -> ErrorKind {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => ErrorKind::Conflict,
            Error::Kube(kube::Error::Api(s)) if s.code == 422 => ErrorKind::Invalid,
            Error::Kube(kube::Error::Api(s)) if s.code == 404 => ErrorKind::NotFound,
            Error::Kube(kube::Error::Api(_)) => ErrorKind::Api,
            Error::Kube(_) => ErrorKind::Transport,
            Error::Panicked(_) => ErrorKind::Panic,
            Error::Gone => ErrorKind::Gone,
        }
    }

    /// Bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        self.class().as_str()
    }
}

/// Runs a reconcile so that a panic in it becomes [`Error::Panicked`] (logged in `span`), and
/// the controller's other reconciles go on.
pub(crate) async fn catching_panics<T>(
    span: &tracing::Span,
    reconcile: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    use tracing::Instrument;
    let inner = std::panic::AssertUnwindSafe(reconcile.instrument(span.clone()));
    match futures::FutureExt::catch_unwind(inner).await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            span.in_scope(|| tracing::error!(%message, "reconcile panicked; the other reconciles go on"));
            Err(Error::Panicked(message))
        }
    }
}
