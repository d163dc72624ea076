//! Test support, not API: one fake of Huawei Cloud for the unit tests under `src/` and the
//! integration tests under `tests/`. Nothing outside tests may use it.
//!
//! [`FakeCloud`] is both an [`EcsApi`] and a [`VpcApi`]. It keeps the state the calls change
//! (each NIC's ECS virtual IP, and ports with their `allowed_address_pairs`) and answers from it
//! as the cloud would; it records every call; and any call can be scripted instead, per
//! operation and NIC or port: an answer, an error, no answer at all, or a panic.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::future::BoxFuture;

use super::budget::Service;
use super::error::coded;
use super::vpc::{AddressPair, Port, PortFilter, VpcApi};
use super::{BindRequest, CloudTarget, EcsApi, EcsError, Operation, UnbindRequest, Written};

/// What one call answers, in place of the fake's state.
#[derive(Debug)]
pub enum Reply {
    /// What the state answers (what every unscripted call gets, unless its service is
    /// [`FakeCloud::only_scripted`]). Scripted to let earlier calls pass before a later reply.
    State,
    /// What the state answers; then another writer replaces the named port's pairs with these,
    /// between this call and the caller's next.
    ThenOthersWrite(Vec<AddressPair>),
    /// A port read or update: the call takes effect, then another writer replaces the port's
    /// pairs with these before the answer is made, so the answer shows theirs.
    OvertakenBy(Vec<AddressPair>),
    /// An ECS write's answer. The state is left as it was.
    Written(Written),
    /// A port read's or update's answer. The state is left as it was.
    Port(Port),
    /// A listing's page. The state is left as it was.
    Ports(Vec<Port>),
    Error(EcsError),
    /// No answer, ever: a cloud that hangs.
    Hang,
    /// A panic inside the call: a bug below its caller.
    Panic(String),
}

impl From<EcsError> for Reply {
    fn from(e: EcsError) -> Self {
        Reply::Error(e)
    }
}

impl From<Written> for Reply {
    fn from(w: Written) -> Self {
        Reply::Written(w)
    }
}

impl From<Port> for Reply {
    fn from(p: Port) -> Self {
        Reply::Port(p)
    }
}

impl<T: Into<Reply>> From<Result<T, EcsError>> for Reply {
    fn from(r: Result<T, EcsError>) -> Self {
        r.map_or_else(Reply::Error, Into::into)
    }
}

/// One call as the fake received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub region: String,
    pub project: String,
    pub access_key: String,
    pub sent: Sent,
}

/// What a call sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Bind(BindRequest),
    Unbind(UnbindRequest),
    GetPort(String),
    ListPorts(PortFilter),
    UpdatePairs { port_id: String, pairs: Vec<AddressPair> },
}

impl Call {
    pub fn op(&self) -> Operation {
        match &self.sent {
            Sent::Bind(_) => Operation::Bind,
            Sent::Unbind(_) => Operation::Unbind,
            Sent::GetPort(_) => Operation::GetPort,
            Sent::ListPorts(_) => Operation::ListPorts,
            Sent::UpdatePairs { .. } => Operation::UpdatePort,
        }
    }

    /// The NIC (ECS writes) or port (port reads and updates) the call names; `""` for a listing.
    pub fn id(&self) -> &str {
        match &self.sent {
            Sent::Bind(r) => &r.nic_id,
            Sent::Unbind(r) => &r.nic_id,
            Sent::GetPort(id) | Sent::UpdatePairs { port_id: id, .. } => id,
            Sent::ListPorts(_) => "",
        }
    }
}

/// A stateful, scriptable fake of the ECS and VPC APIs (see the module's doc).
#[derive(Default)]
pub struct FakeCloud {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The VIP each NIC has through the ECS API. ECS writes take any NIC to exist: a NIC the
    /// cloud does not know is scripted (`Ecs.0614`).
    ecs_vips: BTreeMap<String, String>,
    /// By ID: listings page in ID order, as the VPC API does.
    ports: BTreeMap<String, Port>,
    scripts: HashMap<(Operation, String), VecDeque<Reply>>,
    only_scripted: Vec<Service>,
    calls: Vec<Call>,
}

impl FakeCloud {
    /// No ports, no VIPs, nothing scripted.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn with_ports(ports: Vec<Port>) -> Arc<Self> {
        let cloud = Self::new();
        ports.into_iter().for_each(|p| cloud.put_port(p));
        cloud
    }

    /// The next calls of `op` naming `id` (a NIC or port; `""` for listings) answer `replies`, in
    /// order; later ones answer from the state again.
    pub fn script<R: Into<Reply>>(&self, op: Operation, id: &str, replies: impl IntoIterator<Item = R>) {
        let mut state = self.lock();
        let queue = state.scripts.entry((op, id.to_string())).or_default();
        queue.extend(replies.into_iter().map(Into::into));
    }

    /// A call to `service` that nothing was scripted for panics: for tests where any other call
    /// is a bug (e.g. evidence reads, which never list nor write).
    pub fn only_scripted(&self, service: Service) {
        self.lock().only_scripted.push(service);
    }

    /// Whether every reply scripted for `op` has been given.
    pub fn all_answered(&self, op: Operation) -> bool {
        self.lock().scripts.iter().all(|((o, _), queue)| *o != op || queue.is_empty())
    }

    /// Every call so far, in the order received.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// How many calls of `op` were received.
    pub fn count(&self, op: Operation) -> usize {
        self.lock().calls.iter().filter(|c| c.op() == op).count()
    }

    /// Adds the port, or replaces the one with its ID.
    pub fn put_port(&self, port: Port) {
        self.lock().ports.insert(port.id.clone(), port);
    }

    pub fn remove_port(&self, id: &str) -> Option<Port> {
        self.lock().ports.remove(id)
    }

    pub fn port(&self, id: &str) -> Option<Port> {
        self.lock().ports.get(id).cloned()
    }

    /// Changes the port as another writer would. Panics if there is no such port.
    pub fn edit_port(&self, id: &str, edit: impl FnOnce(&mut Port)) {
        let mut state = self.lock();
        let port = state.ports.get_mut(id).unwrap_or_else(|| panic!("no port {id} to edit"));
        edit(port);
    }

    /// The addresses in the port's `allowed_address_pairs`. Panics if there is no such port.
    pub fn pairs(&self, id: &str) -> Vec<String> {
        let port = self.port(id).unwrap_or_else(|| panic!("no port {id}"));
        port.allowed_address_pairs.into_iter().map(|p| p.ip_address).collect()
    }

    /// The VIP the NIC has through the ECS API.
    pub fn ecs_vip(&self, nic: &str) -> Option<String> {
        self.lock().ecs_vips.get(nic).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding it has failed already; the state is still readable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the call, and answers it with its next scripted reply or `from_state`.
    fn serve<T: Fits + Send + 'static>(
        &self,
        target: &CloudTarget,
        sent: Sent,
        from_state: impl FnOnce(&mut State) -> Result<T, EcsError>,
    ) -> BoxFuture<'static, Result<T, EcsError>> {
        let outcome = {
            let mut state = self.lock();
            let call = Call {
                region: target.region.clone(),
                project: target.project_id.clone(),
                access_key: target.credentials.access_key().into(),
                sent,
            };
            let reply = state.next_reply(&call);
            let (op, id) = (call.op(), call.id().to_string());
            state.calls.push(call);
            match reply {
                Reply::State => Outcome::Answer(from_state(&mut state)),
                Reply::ThenOthersWrite(pairs) => {
                    let answer = from_state(&mut state);
                    if let Some(port) = state.ports.get_mut(&id) {
                        port.allowed_address_pairs = pairs;
                    }
                    Outcome::Answer(answer)
                }
                Reply::OvertakenBy(pairs) => match from_state(&mut state) {
                    Err(e) => Outcome::Answer(Err(e)),
                    Ok(_) => match state.ports.get_mut(&id) {
                        Some(port) => {
                            port.allowed_address_pairs = pairs;
                            let shown = format!("OvertakenBy is no answer to {op:?} {id:?}");
                            T::fits(Reply::Port(port.clone())).map_or(Outcome::Panic(shown), |a| Outcome::Answer(Ok(a)))
                        }
                        None => Outcome::Answer(Err(port_not_found())),
                    },
                },
                Reply::Error(e) => Outcome::Answer(Err(e)),
                Reply::Hang => Outcome::Hang,
                Reply::Panic(message) => Outcome::Panic(message),
                answer => {
                    let shown = format!("scripted {answer:?} is no answer to {op:?} {id:?}");
                    T::fits(answer).map_or(Outcome::Panic(shown), |answer| Outcome::Answer(Ok(answer)))
                }
            }
        };
        // Panics and hangs happen inside the call, as they would below a real client.
        Box::pin(async move {
            match outcome {
                Outcome::Answer(answer) => answer,
                Outcome::Hang => std::future::pending().await,
                Outcome::Panic(message) => panic!("{message}"),
            }
        })
    }
}

impl State {
    fn next_reply(&mut self, call: &Call) -> Reply {
        let op = call.op();
        match self.scripts.get_mut(&(op, call.id().to_string())).and_then(VecDeque::pop_front) {
            Some(reply) => reply,
            None if self.only_scripted.contains(&op.service()) => Reply::Panic(format!("unscripted call {call:?}")),
            None => Reply::State,
        }
    }

    fn port(&self, id: &str) -> Result<Port, EcsError> {
        self.ports.get(id).cloned().ok_or_else(port_not_found)
    }

    /// One page, as the VPC API filters and pages it.
    fn list(&self, filter: &PortFilter) -> Vec<Port> {
        let given = |f: &Option<String>| f.as_deref().filter(|v| !v.is_empty()).map(str::to_string);
        let (owner, device, network, marker) =
            (given(&filter.device_owner), given(&filter.device_id), given(&filter.network_id), given(&filter.marker));
        // Repeated `fixed_ips` filters: a port holding any of them matches.
        let ips: Vec<&String> = filter.ip_addresses.iter().filter(|ip| !ip.is_empty()).collect();
        self.ports
            .values()
            .filter(|p| marker.as_ref().is_none_or(|m| p.id > *m))
            .filter(|p| owner.as_ref().is_none_or(|o| p.device_owner == *o))
            .filter(|p| device.as_ref().is_none_or(|d| p.device_id == *d))
            .filter(|p| network.as_ref().is_none_or(|n| p.network_id == *n))
            .filter(|p| ips.is_empty() || p.fixed_ips.iter().any(|f| ips.contains(&&f.ip_address)))
            .take(filter.page_size() as usize)
            .cloned()
            .collect()
    }

    fn update_pairs(&mut self, id: &str, pairs: &[AddressPair]) -> Result<Port, EcsError> {
        let port = self.ports.get_mut(id).ok_or_else(port_not_found)?;
        port.allowed_address_pairs = pairs.to_vec();
        Ok(port.clone())
    }
}

/// The VPC API's word that a port does not exist.
fn port_not_found() -> EcsError {
    coded(404, "VPC.2502")
}

/// An ECS write's answer: the NIC's port (a NIC's port ID is the NIC ID).
fn written(op: Operation, nic: &str) -> Written {
    Written { port_id: nic.into(), request_id: Some(format!("fake-{}", op.as_str())) }
}

enum Outcome<T> {
    Answer(Result<T, EcsError>),
    Hang,
    Panic(String),
}

/// The answers a call of one kind can be scripted with.
trait Fits: Sized {
    /// The answer in `reply`, if it is an answer of this kind.
    fn fits(reply: Reply) -> Option<Self>;
}

impl Fits for Written {
    fn fits(reply: Reply) -> Option<Self> {
        match reply {
            Reply::Written(w) => Some(w),
            _ => None,
        }
    }
}

impl Fits for Port {
    fn fits(reply: Reply) -> Option<Self> {
        match reply {
            Reply::Port(p) => Some(p),
            _ => None,
        }
    }
}

impl Fits for Vec<Port> {
    fn fits(reply: Reply) -> Option<Self> {
        match reply {
            Reply::Ports(p) => Some(p),
            _ => None,
        }
    }
}

impl EcsApi for FakeCloud {
    fn bind<'a>(&'a self, target: &'a CloudTarget, req: &'a BindRequest) -> BoxFuture<'a, Result<Written, EcsError>> {
        self.serve(target, Sent::Bind(req.clone()), |state| {
            state.ecs_vips.insert(req.nic_id.clone(), req.ip_address.clone());
            Ok(written(Operation::Bind, &req.nic_id))
        })
    }

    fn unbind<'a>(
        &'a self,
        target: &'a CloudTarget,
        req: &'a UnbindRequest,
    ) -> BoxFuture<'a, Result<Written, EcsError>> {
        self.serve(target, Sent::Unbind(req.clone()), |state| {
            state.ecs_vips.remove(&req.nic_id);
            Ok(written(Operation::Unbind, &req.nic_id))
        })
    }
}

impl VpcApi for FakeCloud {
    fn get_port<'a>(&'a self, target: &'a CloudTarget, port_id: &'a str) -> BoxFuture<'a, Result<Port, EcsError>> {
        self.serve(target, Sent::GetPort(port_id.into()), |state| state.port(port_id))
    }

    fn list_ports<'a>(
        &'a self,
        target: &'a CloudTarget,
        filter: &'a PortFilter,
    ) -> BoxFuture<'a, Result<Vec<Port>, EcsError>> {
        self.serve(target, Sent::ListPorts(filter.clone()), |state| Ok(state.list(filter)))
    }

    fn update_pairs<'a>(
        &'a self,
        target: &'a CloudTarget,
        port_id: &'a str,
        pairs: &'a [AddressPair],
    ) -> BoxFuture<'a, Result<Port, EcsError>> {
        let sent = Sent::UpdatePairs { port_id: port_id.into(), pairs: pairs.to_vec() };
        self.serve(target, sent, |state| state.update_pairs(port_id, pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::Credentials;
    use crate::ecs::vpc::{FixedIp, VIP_PORT_OWNER};

    fn target() -> CloudTarget {
        CloudTarget {
            region: "r".into(),
            project_id: "p".into(),
            credentials: Credentials::new("AK", "sk", None).unwrap(),
        }
    }

    fn port(id: &str, owner: &str, ip: &str) -> Port {
        serde_json::from_value(serde_json::json!({
            "id": id, "device_owner": owner, "network_id": "net", "fixed_ips": [{"ip_address": ip}]
        }))
        .unwrap()
    }

    fn bind(nic: &str) -> BindRequest {
        BindRequest { nic_id: nic.into(), subnet_id: "s".into(), ip_address: "10.0.0.9".into(), reverse_binding: false }
    }

    #[tokio::test]
    async fn ecs_writes_change_the_nics_vip_and_are_recorded() {
        let cloud = FakeCloud::new();
        let written = cloud.bind(&target(), &bind("nic")).await.unwrap();
        assert_eq!(written, Written { port_id: "nic".into(), request_id: Some("fake-bind".into()) });
        assert_eq!(cloud.ecs_vip("nic").as_deref(), Some("10.0.0.9"));
        cloud.unbind(&target(), &UnbindRequest { nic_id: "nic".into(), reverse_binding: false }).await.unwrap();
        assert_eq!(cloud.ecs_vip("nic"), None);
        let calls = cloud.calls();
        assert_eq!(calls.iter().map(Call::op).collect::<Vec<_>>(), [Operation::Bind, Operation::Unbind]);
        assert_eq!((calls[0].id(), calls[0].project.as_str(), calls[0].access_key.as_str()), ("nic", "p", "AK"));
        assert_eq!(calls[0].sent, Sent::Bind(bind("nic")));
    }

    #[tokio::test]
    async fn scripts_answer_in_order_per_operation_and_id_then_the_state_does() {
        let cloud = FakeCloud::with_ports(vec![port("a", "compute:az1", "10.0.0.5")]);
        let refused = coded(429, "APIGW.0308");
        cloud.script(Operation::GetPort, "a", [Reply::State, Reply::Error(refused)]);
        cloud.script(Operation::GetPort, "b", [Reply::Port(port("b", "x", "10.0.0.6"))]);
        assert_eq!(cloud.get_port(&target(), "a").await.unwrap().id, "a");
        assert_eq!(cloud.get_port(&target(), "b").await.unwrap().id, "b", "b's script, not a's");
        assert_eq!(cloud.get_port(&target(), "a").await.unwrap_err().status(), Some(429));
        assert!(cloud.all_answered(Operation::GetPort));
        assert_eq!(cloud.get_port(&target(), "b").await.unwrap_err().code(), Some("VPC.2502"), "no port b");
        cloud.script(Operation::UpdatePort, "a", [Reply::Hang]);
        let pairs = [AddressPair { ip_address: "10.0.0.7".into(), mac_address: None }];
        let t = target();
        let hung = tokio::time::timeout(std::time::Duration::from_millis(20), cloud.update_pairs(&t, "a", &pairs));
        assert!(hung.await.is_err());
        assert!(cloud.pairs("a").is_empty(), "a scripted reply changes nothing");
        cloud.update_pairs(&target(), "a", &pairs).await.unwrap();
        assert_eq!(cloud.pairs("a"), ["10.0.0.7"]);
        assert_eq!(cloud.count(Operation::GetPort), 4);
    }

    #[tokio::test]
    async fn a_read_can_be_followed_by_another_writer() {
        let cloud = FakeCloud::with_ports(vec![port("vip", VIP_PORT_OWNER, "10.0.0.100")]);
        let theirs = vec![AddressPair { ip_address: "10.0.0.44".into(), mac_address: None }];
        cloud.script(Operation::GetPort, "vip", [Reply::ThenOthersWrite(theirs)]);
        assert!(cloud.get_port(&target(), "vip").await.unwrap().allowed_address_pairs.is_empty());
        assert_eq!(cloud.pairs("vip"), ["10.0.0.44"]);
    }

    #[tokio::test]
    async fn listings_filter_and_page_in_id_order() {
        let mut ports: Vec<Port> =
            (0..5).map(|i| port(&format!("v{i}"), VIP_PORT_OWNER, &format!("10.0.0.{i}"))).collect();
        let mut nic = port("nic", "compute:az1", "10.0.0.50");
        nic.device_id = "server-1".into();
        ports.push(nic);
        ports.push(port("nic-unheld", "compute:az1", "10.0.0.51"));
        ports[1].network_id = "other".into();
        let cloud = FakeCloud::with_ports(ports);
        let filter = PortFilter {
            device_owner: Some(VIP_PORT_OWNER.into()),
            network_id: Some("net".into()),
            limit: 2,
            ..PortFilter::default()
        };
        let ids = |page: Vec<Port>| page.into_iter().map(|p| p.id).collect::<Vec<_>>();
        assert_eq!(ids(cloud.list_ports(&target(), &filter).await.unwrap()), ["v0", "v2"]);
        let next = PortFilter { marker: Some("v2".into()), ..filter.clone() };
        assert_eq!(ids(cloud.list_ports(&target(), &next).await.unwrap()), ["v3", "v4"]);
        let by_ip = PortFilter { ip_addresses: vec!["10.0.0.50".into()], ..PortFilter::default() };
        assert_eq!(ids(cloud.list_ports(&target(), &by_ip).await.unwrap()), ["nic"]);
        let by_ips = PortFilter { ip_addresses: vec!["10.0.0.51".into(), "10.0.0.50".into()], ..PortFilter::default() };
        assert_eq!(ids(cloud.list_ports(&target(), &by_ips).await.unwrap()), ["nic", "nic-unheld"]);
        // A server's NICs, by device_id (and network): only the ports that server holds.
        let by_server = |device: &str| PortFilter {
            device_id: Some(device.into()),
            network_id: Some("net".into()),
            ..PortFilter::default()
        };
        assert_eq!(ids(cloud.list_ports(&target(), &by_server("server-1")).await.unwrap()), ["nic"]);
        assert!(cloud.list_ports(&target(), &by_server("server-2")).await.unwrap().is_empty());
        let fixed = FixedIp { subnet_id: String::new(), ip_address: "10.0.0.50".into() };
        assert_eq!(cloud.port("nic").map(|p| p.fixed_ips), Some(vec![fixed]));
    }

    #[tokio::test]
    #[should_panic(expected = "unscripted call")]
    async fn only_scripted_services_panic_on_anything_else() {
        let cloud = FakeCloud::new();
        cloud.only_scripted(Service::Vpc);
        cloud.bind(&target(), &bind("nic")).await.unwrap();
        let _ = cloud.list_ports(&target(), &PortFilter::default()).await;
    }

    #[tokio::test]
    #[should_panic(expected = "a bug below")]
    async fn a_scripted_panic_happens_inside_the_call() {
        let cloud = FakeCloud::new();
        cloud.script(Operation::Bind, "nic", [Reply::Panic("a bug below".into())]);
        let (t, req) = (target(), bind("nic"));
        let call = cloud.bind(&t, &req);
        assert_eq!(cloud.calls().len(), 1, "recorded before it panics");
        let _ = call.await;
    }
}
