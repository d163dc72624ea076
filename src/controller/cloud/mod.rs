//! The cloud as the controllers see it, and their only way out to it: every call, ECS and VPC,
//! writes, drift listings and evidence reads alike, passes the [`gate::AuthGate`] first (a key
//! the cloud refused is held back everywhere), then the client's budget and leader fence; what
//! the gate holds back is counted. A wrapper around any [`EcsApi`] that is itself one.
//!
//! Every write that leaves is also the audit trail's: one info line on [`AUDIT_TARGET`] once it
//! is answered, naming the binding, the project and the access key's fingerprint (never a key).
//!
//! Its rooms: [`gate`] (the auth gate), [`evidence`] (VPC reads that back a release), [`pairs`]
//! (VPC binds and unbinds), [`vipport`] (each VIP port's edits, queued and coalesced into one
//! write per batch) and [`checkoff`] (who owns each NIC's `1.1.1.1/0`).

pub(crate) mod checkoff;
pub(crate) mod evidence;
pub(crate) mod gate;
pub(crate) mod pairs;
pub(crate) mod vipport;

use std::sync::Arc;

use futures::future::BoxFuture;
use kube::ResourceExt;

use crate::api::v1alpha1::VipBinding;
use crate::ecs::vpc::{MAX_PAGE, Port, PortFilter, VpcApi};
use crate::ecs::{BindRequest, CloudTarget, EcsApi, EcsError, Operation, UnbindRequest, Written};
use crate::metrics::Metrics;

use crate::controller::state::key::ObjectKey;
use checkoff::{CheckOffLedger, Cleanup};
use evidence::{Gone, Reads};
use gate::{Admission, AuthGate, Ticket};
use pairs::{
    BoundPairs, CheckOff, NetworkPorts, NicUsers, PairsError, PairsFailure, PairsTarget, PortPairs, Recorded, Unbound,
};

/// The tracing target of the audit trail, so it can be filtered and routed on its own
/// (`--log-level warn,vip_operator::audit=info`; the `target` field of a JSON line).
pub const AUDIT_TARGET: &str = "vip_operator::audit";

/// The VPC ports API, when the operator knows where it is: pair edits and evidence reads.
struct Vpc {
    pairs: PortPairs,
    reads: Reads,
    /// For reads of no binding's (a group's NIC lookups).
    api: Arc<dyn VpcApi>,
}

pub struct GatedCloud {
    inner: Arc<dyn EcsApi>,
    vpc: Option<Vpc>,
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

/// What a VPC call gets without a VPC endpoint (callers ask [`GatedCloud::has_vpc`] first).
fn no_vpc() -> EcsError {
    EcsError::InvalidRequest("the operator has no VPC endpoint".into())
}

impl GatedCloud {
    pub fn new(inner: Arc<dyn EcsApi>) -> Self {
        Self { inner, vpc: None, gate: AuthGate::default(), metrics: None }
    }

    /// Binds `api: VPC` bindings through `api`, and confirms "NIC gone" answers with its reads.
    pub fn with_vpc(mut self, api: Arc<dyn VpcApi>) -> Self {
        self.vpc = Some(Vpc { reads: Reads::new(api.clone()), pairs: PortPairs::new(api.clone()), api });
        self
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn gate(&self) -> &AuthGate {
        &self.gate
    }

    /// Whether the VPC API can be called (an operator with a fixed ECS endpoint and no VPC
    /// endpoint cannot).
    pub fn has_vpc(&self) -> bool {
        self.vpc.is_some()
    }

    /// Who needs each NIC's check-off, and which this process turned off (with the VPC API).
    pub fn check_off_ledger(&self) -> Option<&CheckOffLedger> {
        self.vpc.as_ref().map(|v| v.pairs.ledger())
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
    /// Binds the VIP for `binding` (named in the audit line).
    pub async fn bind(self, binding: &VipBinding, req: &BindRequest) -> Result<Written, EcsError> {
        self.bind_for(Some(binding), req).await
    }

    /// Unbinds the NIC's VIP for `binding` (named in the audit line).
    pub async fn unbind(self, binding: &VipBinding, req: &UnbindRequest) -> Result<Written, EcsError> {
        self.unbind_for(Some(binding), req).await
    }

    async fn bind_for(mut self, binding: Option<&VipBinding>, req: &BindRequest) -> Result<Written, EcsError> {
        let audit = AuditEntry::new(binding, self.target, Operation::Bind, &req.nic_id, Some(&req.ip_address));
        let result = self.cloud.inner.bind(self.target, req).await;
        audit.answered(&result);
        self.settle(&result);
        result
    }

    async fn unbind_for(mut self, binding: Option<&VipBinding>, req: &UnbindRequest) -> Result<Written, EcsError> {
        let audit = AuditEntry::new(binding, self.target, Operation::Unbind, &req.nic_id, None);
        let result = self.cloud.inner.unbind(self.target, req).await;
        audit.answered(&result);
        self.settle(&result);
        result
    }

    fn pairs(&self) -> Option<&PortPairs> {
        self.cloud.vpc.as_ref().map(|v| &v.pairs)
    }

    /// Binds the VIP for `binding` through the VPC ports API.
    pub async fn bind_pairs(
        mut self,
        binding: &VipBinding,
        (t, recorded): (&PairsTarget<'_>, &Recorded),
        users: &dyn NicUsers,
    ) -> Result<BoundPairs, PairsFailure> {
        let audit = AuditEntry::new(Some(binding), self.target, Operation::UpdatePort, t.nic_id, Some(t.vip));
        let result = match self.pairs() {
            Some(pairs) => pairs.bind(self.target, t, (&ObjectKey::of(binding), recorded), users).await,
            None => Err(PairsError::Cloud(no_vpc()).into()),
        };
        audit.answered_pairs(result.as_ref().map(|b| b.record.vip_port_id.as_str()).map_err(|f| &f.error));
        self.settle_pairs(result.as_ref().map(|_| ()).map_err(|f| &f.error));
        result
    }

    /// Unbinds the VIP for `binding` through the VPC ports API.
    pub async fn unbind_pairs(
        mut self,
        binding: &VipBinding,
        (t, recorded): (&PairsTarget<'_>, &Recorded),
        users: &dyn NicUsers,
    ) -> Result<(Unbound, CheckOff), PairsFailure> {
        let audit = AuditEntry::new(Some(binding), self.target, Operation::UpdatePort, t.nic_id, Some(t.vip));
        let result = match self.pairs() {
            Some(pairs) => pairs.unbind(self.target, t, (&ObjectKey::of(binding), recorded), users).await,
            None => Err(PairsError::Cloud(no_vpc()).into()),
        };
        audit.answered_pairs(result.as_ref().map(|_| t.nic_id).map_err(|f| &f.error));
        self.settle_pairs(result.as_ref().map(|_| ()).map_err(|f| &f.error));
        result
    }

    /// Takes away a `1.1.1.1/0` an unbind left for another binding, if nothing needs it now
    /// (`still_used`, asked under the NIC's lock): a write of no binding's, audited as the
    /// sweep's.
    pub async fn release_unneeded(
        mut self,
        nic: &str,
        cleanup: &Cleanup,
        still_used: impl Fn() -> bool,
    ) -> Result<CheckOff, PairsFailure> {
        let audit =
            AuditEntry::new(None, self.target, Operation::UpdatePort, nic, None).because("check-off no binding needs");
        let result = match self.pairs() {
            Some(pairs) => pairs.release_unneeded(nic, cleanup, still_used).await,
            None => Err(PairsError::Cloud(no_vpc()).into()),
        };
        match &result {
            Ok(CheckOff::Removed) => audit.answered_pairs(Ok(nic)),
            Ok(_) => audit.not_a_write(),
            Err(f) => audit.answered_pairs(Err(&f.error)),
        }
        self.settle_pairs(result.as_ref().map(|_| ()).map_err(|f| &f.error));
        result
    }

    /// Reads the NIC's port to confirm an ECS "NIC gone" (see [`evidence`]). Without the VPC
    /// API the ECS answer stands alone.
    pub async fn confirm_gone(mut self, nic_id: &str) -> Gone {
        let Some(vpc) = &self.cloud.vpc else { return evidence::no_reads() };
        let gone = vpc.reads.confirm_gone(self.target, nic_id).await;
        match &gone {
            Gone::Unknown(e) => self.settle_read(Err(e)),
            _ => self.settle_read(Ok(())),
        }
        gone
    }

    /// Reads a binding's NIC port and VIP port for `managementPolicy: Observe` (see
    /// [`Reads::observe`]); never writes.
    pub async fn observe(mut self, nic_id: &str, network: &str, vip: &str) -> Result<evidence::Seen, EcsError> {
        let result = match &self.cloud.vpc {
            Some(vpc) => vpc.reads.observe(self.target, nic_id, network, vip).await,
            None => Err(no_vpc()),
        };
        self.settle_read(result.as_ref().map(|_| ()));
        result
    }

    /// Every port of one network (see [`PortPairs::network_ports`]): the drift check's listing.
    pub async fn network_ports(mut self, network: &str) -> Result<NetworkPorts, EcsError> {
        let result = match &self.cloud.vpc {
            Some(vpc) => vpc.pairs.network_ports(self.target, network).await,
            None => Err(no_vpc()),
        };
        self.settle_read(result.as_ref().map(|_| ()));
        result
    }

    /// One port, read (a group confirming what a listing did not show before it lets a member
    /// go).
    pub async fn read_port(mut self, port_id: &str) -> Result<Port, EcsError> {
        let result = match &self.cloud.vpc {
            Some(vpc) => vpc.api.get_port(self.target, port_id).await,
            None => Err(no_vpc()),
        };
        self.settle_read(result.as_ref().map(|_| ()));
        result
    }

    /// The ports of server `server` in network `network` (a node's NIC, for a group): one
    /// listing filtered by `device_id` and `network_id`, its answer checked against both.
    pub async fn server_ports(mut self, server: &str, network: &str) -> Result<Vec<Port>, EcsError> {
        let result = match &self.cloud.vpc {
            Some(vpc) => {
                let filter = PortFilter {
                    device_id: Some(server.into()),
                    network_id: Some(network.into()),
                    limit: MAX_PAGE,
                    ..PortFilter::default()
                };
                vpc.api.list_ports(self.target, &filter).await.map(|ports| {
                    ports
                        .into_iter()
                        .filter(|p| p.device_id == server && (p.network_id.is_empty() || p.network_id == network))
                        .collect()
                })
            }
            None => Err(no_vpc()),
        };
        self.settle_read(result.as_ref().map(|_| ()));
        result
    }

    /// The ports of each of `servers` in `network`, from one listing of the network (see
    /// [`PortPairs::server_ports_in`]).
    pub async fn server_ports_in(
        mut self,
        network: &str,
        servers: &std::collections::HashSet<String>,
    ) -> Result<std::collections::HashMap<String, Vec<String>>, EcsError> {
        let result = match &self.cloud.vpc {
            Some(vpc) => vpc.pairs.server_ports_in(self.target, network, servers).await,
            None => Err(no_vpc()),
        };
        self.settle_read(result.as_ref().map(|_| ()));
        result
    }

    fn settle_pairs(&mut self, result: Result<(), &PairsError>) {
        if let Some(ticket) = self.ticket.take() {
            let answer = match result {
                Err(PairsError::Cloud(e)) => Err(e),
                // Answers about the ports, not the credentials: they worked.
                _ => Ok(()),
            };
            self.cloud.gate.settle(ticket, answer);
        }
    }

    /// A read's answer: a 403 is a policy without read permission (said by the caller), not
    /// a refused key, so it holds back no write.
    fn settle_read(&mut self, result: Result<(), &EcsError>) {
        if let Some(ticket) = self.ticket.take() {
            let answer = match result {
                Err(e) if e.status() == Some(403) => Ok(()),
                other => other,
            };
            self.cloud.gate.settle(ticket, answer);
        }
    }

    fn settle(&mut self, result: &Result<Written, EcsError>) {
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

/// One write on its way to the cloud, for the audit trail. Logged exactly once: with the answer
/// ([`AuditEntry::answered`]), or as `abandoned` when the caller stops waiting for it (a
/// cancelled reconcile), since it may have reached the cloud all the same.
struct AuditEntry<'a> {
    /// `namespace/name` and uid; `-` for a call made through the bare [`EcsApi`] face.
    binding: String,
    uid: String,
    operation: Operation,
    target: &'a CloudTarget,
    nic: &'a str,
    vip: Option<&'a str>,
    /// Why a write of no binding's was made.
    reason: Option<&'static str>,
    logged: bool,
}

impl<'a> AuditEntry<'a> {
    fn new(
        binding: Option<&VipBinding>,
        target: &'a CloudTarget,
        operation: Operation,
        nic: &'a str,
        vip: Option<&'a str>,
    ) -> Self {
        let (binding, uid) = match binding {
            Some(b) => (format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any()), b.uid().unwrap_or_default()),
            None => ("-".into(), "-".into()),
        };
        Self { binding, uid, operation, target, nic, vip, reason: None, logged: false }
    }

    fn because(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// The call turned out to write nothing (it decided, under a lock, not to).
    fn not_a_write(mut self) {
        self.logged = true;
    }

    fn answered(mut self, result: &Result<Written, EcsError>) {
        self.logged = true;
        match result {
            Ok(w) => self.log("ok", w.request_id.as_deref(), Some(&w.port_id)),
            // Refused before it left this process: not a write.
            Err(e) if never_sent(e) => {}
            Err(e) => self.log(e.code().unwrap_or(e.class().as_str()), e.request_id(), None),
        }
    }

    /// A VPC bind or unbind: one line for the whole edit (its port reads and writes).
    fn answered_pairs(mut self, result: Result<&str, &PairsError>) {
        self.logged = true;
        match result {
            Ok(port) => self.log("ok", None, Some(port)),
            Err(PairsError::Cloud(e)) if never_sent(e) => {}
            Err(PairsError::Cloud(e)) => self.log(e.code().unwrap_or(e.class().as_str()), e.request_id(), None),
            Err(e) if !e.may_have_written() => self.log("not_written", None, None),
            Err(_) => self.log("contended", None, None),
        }
    }

    fn log(&self, outcome: &str, request_id: Option<&str>, port: Option<&str>) {
        tracing::info!(
            target: AUDIT_TARGET,
            binding = %self.binding,
            uid = %self.uid,
            operation = self.operation.as_str(),
            project = %self.target.project_id,
            region = %self.target.region,
            nic = self.nic,
            vip = self.vip,
            // The fingerprint only: the key, secret, token and signature never reach a log.
            key = %self.target.credentials.key_id(),
            request_id = request_id.unwrap_or("none"),
            outcome,
            port,
            reason = self.reason,
            "cloud write"
        );
    }
}

impl Drop for AuditEntry<'_> {
    fn drop(&mut self) {
        if !self.logged {
            self.log("abandoned", None, None);
        }
    }
}

/// Errors that mean the request never left this process (the gate, the fence, a request that
/// could not be built): no write happened, so there is nothing to audit.
fn never_sent(e: &EcsError) -> bool {
    matches!(e, EcsError::InvalidRequest(_) | EcsError::HeldBack(_) | EcsError::AwaitingProbe(_) | EcsError::Fenced(_))
}

/// Without a binding to name: the audit line says `binding="-"`. The reconciler goes through
/// [`GatedCloud::admit`] and names its binding.
impl EcsApi for GatedCloud {
    fn bind<'a>(&'a self, target: &'a CloudTarget, req: &'a BindRequest) -> BoxFuture<'a, Result<Written, EcsError>> {
        Box::pin(async move { self.admit(target)?.bind_for(None, req).await })
    }

    fn unbind<'a>(
        &'a self,
        target: &'a CloudTarget,
        req: &'a UnbindRequest,
    ) -> BoxFuture<'a, Result<Written, EcsError>> {
        Box::pin(async move { self.admit(target)?.unbind_for(None, req).await })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::Value;

    use super::*;
    use crate::api::testing::Fixture;
    use crate::ecs::testing::{FakeCloud, Reply};
    use crate::ecs::{ApiError, Credentials};

    const AK: &str = "AUDITACCESSKEY000001";
    const SK: &str = "audit-secret-key-never-logged";
    const PROJECT: &str = "0123456789abcdef0123456789abcdef";

    fn api_error(status: u16, code: &str, request_id: Option<&str>) -> EcsError {
        EcsError::Api(ApiError {
            status,
            code: Some(code.into()),
            message: String::new(),
            detail_codes: vec![],
            request_id: request_id.map(str::to_string),
            retry_after: None,
        })
    }

    fn audit_target() -> CloudTarget {
        CloudTarget {
            region: "cn-north-4".into(),
            project_id: PROJECT.into(),
            credentials: Credentials::new(AK, SK, Some("audit-security-token")).expect("credentials"),
        }
    }

    fn bind_req() -> BindRequest {
        BindRequest {
            nic_id: "nic-1".into(),
            subnet_id: "subnet-1".into(),
            ip_address: "192.168.0.7".into(),
            reverse_binding: false,
        }
    }

    fn unbind_req() -> UnbindRequest {
        UnbindRequest { nic_id: "nic-1".into(), reverse_binding: false }
    }

    /// Everything logged while `f` runs, as the operator's JSON format writes it.
    async fn logged<F: std::future::Future<Output = ()>>(f: F) -> String {
        let buffer = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        // Thread-local: the current-thread test runtime polls `f` on this thread.
        let _guard = tracing::subscriber::set_default(subscriber);
        f.await;
        String::from_utf8(buffer.lock().unwrap().clone()).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn audit_lines(logs: &str) -> Vec<Value> {
        logs.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["target"] == AUDIT_TARGET)
            .collect()
    }

    fn assert_no_key_material(logs: &str) {
        for secret in [AK, SK, "audit-security-token", "Signature="] {
            assert!(!logs.contains(secret), "{secret:?} in the logs:\n{logs}");
        }
    }

    #[tokio::test]
    async fn every_answered_write_is_audited_once_with_who_what_and_the_request_id() {
        let inner = FakeCloud::new();
        let answer = Written { port_id: "port-1".into(), request_id: Some("rid-bind".into()) };
        inner.script(Operation::Bind, "nic-1", [answer]);
        inner.script(Operation::Unbind, "nic-1", [api_error(400, "Ecs.0085", Some("rid-unbind"))]);
        let cloud = GatedCloud::new(inner.clone());
        let target = audit_target();
        let binding = VipBinding::test().named("team-a", "web-vip").with_uid("uid-1");
        let logs = logged(async {
            let written = cloud.admit(&target).unwrap().bind(&binding, &bind_req()).await.unwrap();
            assert_eq!(written.request_id.as_deref(), Some("rid-bind"));
            let refused = cloud.admit(&target).unwrap().unbind(&binding, &unbind_req()).await.unwrap_err();
            assert_eq!(refused.request_id(), Some("rid-unbind"));
        })
        .await;
        assert_eq!(inner.calls().len(), 2);
        let lines = audit_lines(&logs);
        assert_eq!(lines.len(), 2, "{logs}");
        let key = target.credentials.key_id();
        for (line, operation, request_id, outcome) in
            [(&lines[0], "bind", "rid-bind", "ok"), (&lines[1], "unbind", "rid-unbind", "Ecs.0085")]
        {
            assert_eq!(line["level"], "INFO", "{line}");
            assert_eq!(line["message"], "cloud write");
            assert_eq!(line["binding"], "team-a/web-vip");
            assert_eq!(line["uid"], "uid-1");
            assert_eq!(line["operation"], operation);
            assert_eq!(line["project"], PROJECT);
            assert_eq!(line["region"], "cn-north-4");
            assert_eq!(line["nic"], "nic-1");
            assert_eq!(line["key"], key.as_str());
            assert_eq!(line["request_id"], request_id);
            assert_eq!(line["outcome"], outcome);
        }
        assert_eq!(lines[0]["vip"], "192.168.0.7");
        assert_eq!(lines[0]["port"], "port-1");
        assert!(lines[1].get("vip").is_none() && lines[1].get("port").is_none(), "{}", lines[1]);
        assert!(key.starts_with("ak#"), "{key}");
        assert_no_key_material(&logs);
    }

    #[tokio::test]
    async fn held_back_calls_are_not_writes_and_the_bare_face_names_no_binding() {
        let inner = FakeCloud::new();
        inner.script(Operation::Unbind, "nic-1", [api_error(401, "APIGW.0301", None)]);
        let cloud = GatedCloud::new(inner.clone());
        let target = audit_target();
        let logs = logged(async {
            assert!(matches!(EcsApi::unbind(&cloud, &target, &unbind_req()).await, Err(EcsError::Api(_))));
            // Held back by the gate after the refusal: never sent, so no audit line.
            assert!(matches!(EcsApi::unbind(&cloud, &target, &unbind_req()).await, Err(EcsError::HeldBack(_))));
            assert!(matches!(cloud.admit(&target), Err(EcsError::HeldBack(_))));
        })
        .await;
        assert_eq!(inner.calls().len(), 1);
        let lines = audit_lines(&logs);
        assert_eq!(lines.len(), 1, "{logs}");
        assert_eq!(lines[0]["binding"], "-");
        assert_eq!(lines[0]["uid"], "-");
        assert_eq!(lines[0]["request_id"], "none");
        assert_eq!(lines[0]["outcome"], "APIGW.0301");
        assert_no_key_material(&logs);
    }

    #[tokio::test]
    async fn a_write_whose_caller_stops_waiting_is_audited_as_abandoned() {
        // The call never returns, like a cloud that hangs.
        let inner = FakeCloud::new();
        inner.script(Operation::Unbind, "nic-1", [Reply::Hang]);
        let cloud = GatedCloud::new(inner.clone());
        let target = audit_target();
        let binding = VipBinding::test().named("team-a", "web-vip");
        let req = unbind_req();
        let logs = logged(async {
            let call = cloud.admit(&target).unwrap().unbind(&binding, &req);
            let waited = tokio::time::timeout(std::time::Duration::from_millis(20), call).await;
            assert!(waited.is_err(), "the scripted cloud never answers");
        })
        .await;
        assert_eq!(inner.calls().len(), 1);
        let lines = audit_lines(&logs);
        assert_eq!(lines.len(), 1, "{logs}");
        assert_eq!(lines[0]["binding"], "team-a/web-vip");
        assert_eq!(lines[0]["outcome"], "abandoned");
        // The abandoned call's probe ended with it: the next caller may go.
        assert!(cloud.admit(&target).is_ok());
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
        let inner = FakeCloud::new();
        inner.script(Operation::Unbind, "nic", [api_error(401, "APIGW.0301", None)]);
        let cloud = GatedCloud::new(inner.clone());
        let target = target();
        let first = cloud.admit(&target).expect("the first call probes");
        assert!(matches!(cloud.admit(&target), Err(EcsError::AwaitingProbe(_))), "one probe at a time");
        drop(first);
        let req = UnbindRequest { nic_id: "nic".into(), reverse_binding: false };
        // Through the EcsApi face: admitted, sent, refused, settled.
        assert!(matches!(EcsApi::unbind(&cloud, &target, &req).await, Err(EcsError::Api(_))));
        assert!(matches!(EcsApi::unbind(&cloud, &target, &req).await, Err(EcsError::HeldBack(_))));
        assert_eq!(inner.calls().len(), 1, "the held-back call was not sent");
    }
}
