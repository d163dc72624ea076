//! The cloud as the reconciler sees it: every call passes the [`AuthGate`] first, and what the
//! gate holds back is counted. A wrapper around any [`EcsApi`] that is itself one.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::ecs::{BindRequest, CloudTarget, EcsApi, EcsError, UnbindRequest};
use crate::metrics::Metrics;

use super::auth_gate::{Admission, AuthGate, Ticket};

pub struct GatedCloud {
    inner: Arc<dyn EcsApi>,
    gate: AuthGate,
    metrics: Option<Arc<Metrics>>,
}

/// Leave from the gate to make one call with `target`'s credentials. Dropping it unused ends
/// the probe it may hold, so the next caller probes instead of waiting for a call that will
/// never be made (e.g. the finalizer write before a bind failed).
pub struct Admitted<'a> {
    cloud: &'a GatedCloud,
    target: &'a CloudTarget,
    ticket: Option<Ticket>,
}

impl GatedCloud {
    pub fn new(inner: Arc<dyn EcsApi>) -> Self {
        Self { inner, gate: AuthGate::default(), metrics: None }
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn gate(&self) -> &AuthGate {
        &self.gate
    }

    /// May a call with `target`'s credentials go now? `Err`: [`EcsError::HeldBack`] (refused
    /// recently) or [`EcsError::AwaitingProbe`] (the first call with these credentials is in
    /// flight; come back shortly). Nothing was sent either way.
    pub fn admit<'a>(&'a self, target: &'a CloudTarget) -> Result<Admitted<'a>, EcsError> {
        match self.gate.admit(&target.credentials, &target.project_id) {
            Admission::Go(ticket) => Ok(Admitted { cloud: self, target, ticket: Some(ticket) }),
            Admission::Wait => Err(EcsError::AwaitingProbe(format!(
                "waiting for the first call with access key {} to be answered",
                target.credentials.key_id()
            ))),
            Admission::HeldBack(message) => {
                if let Some(m) = &self.metrics {
                    m.held_back.inc();
                }
                Err(EcsError::HeldBack(message))
            }
        }
    }
}

impl Admitted<'_> {
    pub async fn bind(mut self, req: &BindRequest) -> Result<String, EcsError> {
        let result = self.cloud.inner.bind(self.target, req).await;
        self.settle(&result);
        result
    }

    pub async fn unbind(mut self, req: &UnbindRequest) -> Result<String, EcsError> {
        let result = self.cloud.inner.unbind(self.target, req).await;
        self.settle(&result);
        result
    }

    fn settle(&mut self, result: &Result<String, EcsError>) {
        if let Some(ticket) = self.ticket.take() {
            self.cloud.gate.settle(ticket, result.as_ref().map(|_| ()));
        }
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        // Also reached when the call's future is dropped mid-flight (a cancelled reconcile).
        if let Some(ticket) = self.ticket.take() {
            self.cloud.gate.abandon(ticket);
        }
    }
}

impl EcsApi for GatedCloud {
    fn bind<'a>(&'a self, target: &'a CloudTarget, req: &'a BindRequest) -> BoxFuture<'a, Result<String, EcsError>> {
        Box::pin(async move { self.admit(target)?.bind(req).await })
    }

    fn unbind<'a>(
        &'a self,
        target: &'a CloudTarget,
        req: &'a UnbindRequest,
    ) -> BoxFuture<'a, Result<String, EcsError>> {
        Box::pin(async move { self.admit(target)?.unbind(req).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::Credentials;

    /// Answers every call with 401, counting them.
    #[derive(Default)]
    struct Refusing(std::sync::atomic::AtomicUsize);

    impl Refusing {
        fn refuse(&self) -> Result<String, EcsError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(EcsError::Api(crate::ecs::ApiError {
                status: 401,
                code: Some("APIGW.0301".into()),
                message: String::new(),
                detail_codes: vec![],
                request_id: None,
                retry_after: None,
            }))
        }
    }

    impl EcsApi for Refusing {
        fn bind<'a>(&'a self, _: &'a CloudTarget, _: &'a BindRequest) -> BoxFuture<'a, Result<String, EcsError>> {
            Box::pin(async move { self.refuse() })
        }
        fn unbind<'a>(&'a self, _: &'a CloudTarget, _: &'a UnbindRequest) -> BoxFuture<'a, Result<String, EcsError>> {
            Box::pin(async move { self.refuse() })
        }
    }

    fn target() -> CloudTarget {
        CloudTarget {
            region: "r".into(),
            project_id: "p".into(),
            credentials: Credentials::new("AK", "sk", None).expect("credentials"),
        }
    }

    #[tokio::test]
    async fn an_unused_admission_ends_its_probe_and_a_refusal_holds_the_key_back() {
        let inner = Arc::new(Refusing::default());
        let cloud = GatedCloud::new(inner.clone());
        let target = target();
        let first = cloud.admit(&target).expect("the first call probes");
        assert!(matches!(cloud.admit(&target), Err(EcsError::AwaitingProbe(_))), "one probe at a time");
        drop(first);
        let req = UnbindRequest { nic_id: "nic".into(), reverse_binding: false };
        // Through the EcsApi face: admitted, sent, refused, settled.
        assert!(matches!(EcsApi::unbind(&cloud, &target, &req).await, Err(EcsError::Api(_))));
        assert!(matches!(EcsApi::unbind(&cloud, &target, &req).await, Err(EcsError::HeldBack(_))));
        assert_eq!(inner.0.load(std::sync::atomic::Ordering::SeqCst), 1, "the held-back call was not sent");
    }
}
