//! [`EcsClient`]: the signed HTTP implementation of [`EcsApi`] (ECS writes) and [`VpcApi`] (VPC
//! port reads) on one shared reqwest pool, with a token bucket per access key, region and
//! service ([`super::budget`]) and one concurrency cap for every cloud call the process makes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::Method;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tracing::Instrument;
use url::Url;

use super::api::{
    BindRequest, CloudTarget, EcsApi, Fence, InvalidId, InvalidRegion, NicBody, Operation, UnbindRequest, Written,
    check_path_id, check_region,
};
use super::budget::{BudgetKey, Budgets, Priority, Quota, Service, current_priority};
use super::clock::{Clock, SystemClock};
use super::error::{EcsError, TransportKind, parse_error_response, parse_retry_after};
use super::retry::{RetryPolicy, with_retries};
use super::sign::{RequestParts, sign};
use super::vpc::{AddressPair, InvalidFilter, PairsUpdate, Port, PortEnvelope, PortFilter, PortList, VpcApi};

/// An endpoint override (`--ecs-endpoint`, or `flag`) that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("{flag} {value:?} is not a URL: {source}")]
    NotAUrl { flag: &'static str, value: String, source: url::ParseError },
    #[error("{flag} {value:?} must be an http:// or https:// URL")]
    Scheme { flag: &'static str, value: String },
    #[error("{flag} {value:?} has no host")]
    NoHost { flag: &'static str, value: String },
    #[error("{flag} {value:?} must not have a query or fragment")]
    QueryOrFragment { flag: &'static str, value: String },
    #[error("{flag} {value:?} must not carry credentials")]
    Credentials { flag: &'static str, value: String },
}

/// A request URL that cannot be built from a binding's region and ids. Nothing is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error(transparent)]
    Id(#[from] InvalidId),
    #[error(transparent)]
    Region(#[from] InvalidRegion),
    #[error("region {region:?} does not make a valid endpoint: {source}")]
    RegionEndpoint { region: String, source: url::ParseError },
    /// A fixed endpoint URL that takes no path (`mailto:`, `data:`).
    #[error("the ECS endpoint cannot have a path")]
    NotABase,
    #[error(transparent)]
    Filter(#[from] InvalidFilter),
}

/// An [`EcsClientConfig`] the client cannot be built from.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("--cloud-qps must be a positive number, got {0}")]
    Qps(f64),
    /// So low that one token's period does not fit in a `Duration`.
    #[error("--cloud-qps {0} is too low")]
    QpsTooLow(f64),
    /// So high that one token's period rounds to zero.
    #[error("--cloud-qps {0} is too high")]
    QpsTooHigh(f64),
    #[error("--cloud-burst must be at least 1")]
    Burst,
    #[error("the cloud concurrency cap must be at least 1")]
    Concurrency,
    #[error("the number of cloud budgets kept must be at least 1")]
    Budgets,
    #[error("the largest cloud answer read must be at least 1 byte")]
    ResponseLimit,
    #[error("cannot build the HTTP client: {0}")]
    Http(reqwest::Error),
}

/// Where a service lives: the public regional endpoint, or one fixed URL (the simulator, a
/// private cloud, a proxy) used for every region. One value per service (ECS, VPC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `https://{service}.{region}.myhuaweicloud.com` (`ecs.` or `vpc.`)
    Regional,
    Fixed(Url),
}

/// Displays as the ECS endpoint; see [`Endpoint::vpc_display`] for the VPC one.
impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Regional => f.write_str("https://ecs.{region}.myhuaweicloud.com"),
            Endpoint::Fixed(url) => write!(f, "{url}"),
        }
    }
}

impl Endpoint {
    /// Parses an `--ecs-endpoint` value. http is allowed (simulator, private clouds).
    pub fn parse_override(value: &str) -> Result<Self, EndpointError> {
        Self::parse_override_for("--ecs-endpoint", value)
    }

    /// Parses an endpoint override given as `flag` (named in the errors), e.g. `--vpc-endpoint`.
    pub fn parse_override_for(flag: &'static str, value: &str) -> Result<Self, EndpointError> {
        let url =
            Url::parse(value.trim()).map_err(|source| EndpointError::NotAUrl { flag, value: value.into(), source })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EndpointError::Scheme { flag, value: value.into() });
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(EndpointError::NoHost { flag, value: value.into() });
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(EndpointError::QueryOrFragment { flag, value: value.into() });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(EndpointError::Credentials { flag, value: value.into() });
        }
        Ok(Endpoint::Fixed(url))
    }

    /// This endpoint as the VPC endpoint, for logs.
    pub fn vpc_display(&self) -> String {
        match self {
            Endpoint::Regional => "https://vpc.{region}.myhuaweicloud.com".into(),
            Endpoint::Fixed(url) => url.to_string(),
        }
    }

    fn service_base(&self, service: &str, region: &str) -> Result<Url, UrlError> {
        match self {
            Endpoint::Fixed(url) => Ok(url.clone()),
            Endpoint::Regional => {
                check_region(region)?;
                Url::parse(&format!("https://{service}.{region}.myhuaweicloud.com"))
                    .map_err(|source| UrlError::RegionEndpoint { region: region.into(), source })
            }
        }
    }

    /// The ECS base URL for `region`.
    pub fn base_url(&self, region: &str) -> Result<Url, UrlError> {
        self.service_base("ecs", region)
    }

    /// The VPC base URL for `region` (`https://vpc.{region}.myhuaweicloud.com`, or the override).
    pub fn vpc_base_url(&self, region: &str) -> Result<Url, UrlError> {
        self.service_base("vpc", region)
    }

    /// `{base}/v1/{project_id}/cloudservers/nics/{nic_id}`
    pub fn nic_url(&self, region: &str, project_id: &str, nic_id: &str) -> Result<Url, UrlError> {
        check_path_id("projectId", project_id)?;
        check_path_id("nicId", nic_id)?;
        with_path(self.base_url(region)?, &["v1", project_id, "cloudservers", "nics", nic_id])
    }

    /// `{vpc base}/v1/{project_id}/ports/{port_id}`
    pub fn port_url(&self, region: &str, project_id: &str, port_id: &str) -> Result<Url, UrlError> {
        check_path_id("projectId", project_id)?;
        check_path_id("portId", port_id)?;
        with_path(self.vpc_base_url(region)?, &["v1", project_id, "ports", port_id])
    }

    /// `{vpc base}/v1/{project_id}/ports?{filter}`, percent-encoded (`fixed_ips=ip_address%3DX`).
    pub fn ports_url(&self, region: &str, project_id: &str, filter: &PortFilter) -> Result<Url, UrlError> {
        check_path_id("projectId", project_id)?;
        let pairs = filter.query_pairs()?;
        let mut url = with_path(self.vpc_base_url(region)?, &["v1", project_id, "ports"])?;
        url.query_pairs_mut().extend_pairs(pairs);
        Ok(url)
    }
}

/// `base` with `segments` appended to its path (each escaped as a path segment).
fn with_path(mut url: Url, segments: &[&str]) -> Result<Url, UrlError> {
    {
        // The segments are written back into `url` when `path` is dropped.
        let mut path = url.path_segments_mut().map_err(|()| UrlError::NotABase)?;
        path.pop_if_empty().extend(segments);
    }
    Ok(url)
}

/// The largest answer the client reads, by default (any call, error answers included). A
/// listing page of 2000 ports is 2–3 MB; reading without a bound would let one endpoint (or
/// whatever answers in its place) exhaust the operator's memory.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Budgets (token buckets) kept at most, by default. Keys rotate and bindings name arbitrary
/// regions, so the map is bounded; refilled buckets go first, and losing one changes nothing.
pub const MAX_BUDGETS: usize = 4096;

#[derive(Debug, Clone)]
pub struct EcsClientConfig {
    pub endpoint: Endpoint,
    /// Where the VPC API lives; an override is one URL for every region, like `endpoint`.
    pub vpc_endpoint: Endpoint,
    pub connect_timeout: Duration,
    /// Whole-request timeout for one attempt.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Sustained cloud calls per second for each access key, region and service (ECS, VPC):
    /// every attempt counts, retries included.
    pub qps: f64,
    /// Calls a full budget lets go at once (per access key, region and service, like `qps`).
    pub burst: u32,
    /// Budgets kept at most ([`MAX_BUDGETS`]).
    pub max_budgets: usize,
    /// Cloud calls in flight at once.
    pub max_concurrency: usize,
    /// Answers larger than this are not read: the attempt fails (a protocol error).
    pub max_response_bytes: usize,
}

impl Default for EcsClientConfig {
    fn default() -> Self {
        Self {
            endpoint: Endpoint::Regional,
            vpc_endpoint: Endpoint::Regional,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            qps: 10.0,
            burst: 10,
            max_budgets: MAX_BUDGETS,
            max_concurrency: 16,
            max_response_bytes: MAX_RESPONSE_BYTES,
        }
    }
}

/// What one HTTP attempt came to, for metrics. `code` is a Huawei error code (bounded set).
#[derive(Debug, Clone)]
pub struct AttemptReport<'a> {
    pub operation: Operation,
    pub result: Result<(), &'a EcsError>,
    pub elapsed: Duration,
}

/// Receives one report per HTTP attempt (metrics live outside the client).
pub trait CallObserver: Send + Sync {
    fn attempt(&self, report: &AttemptReport<'_>);

    /// A write attempt on `subject` (the NIC for ECS calls, the port for a port update) ended
    /// without an answer that says whether it applied: a timeout, a lost connection, a 5xx, or
    /// the attempt dropped mid-flight. The cloud may still apply it later.
    fn write_unsettled(&self, _op: Operation, _subject: &str) {}

    /// An attempt waited `waited` (zero included) for a token of its budget.
    fn budget_waited(&self, _service: Service, _priority: Priority, _waited: Duration) {}
}

/// Two observers, each told everything (metrics and the writes-in-flight ledger).
pub struct BothObservers(pub Arc<dyn CallObserver>, pub Arc<dyn CallObserver>);

impl CallObserver for BothObservers {
    fn attempt(&self, report: &AttemptReport<'_>) {
        self.0.attempt(report);
        self.1.attempt(report);
    }

    fn write_unsettled(&self, op: Operation, subject: &str) {
        self.0.write_unsettled(op, subject);
        self.1.write_unsettled(op, subject);
    }

    fn budget_waited(&self, service: Service, priority: Priority, waited: Duration) {
        self.0.budget_waited(service, priority, waited);
        self.1.budget_waited(service, priority, waited);
    }
}

/// Tells the observer of a write attempt that ends without a trusted answer, also when the
/// attempt's future is dropped mid-flight (a cancelled reconcile: the request may be on its way).
struct UnsettledGuard<'a> {
    observer: Option<&'a dyn CallObserver>,
    op: Operation,
    subject: &'a str,
}

impl UnsettledGuard<'_> {
    /// An answer was read: only one that may have applied leaves the write unsettled.
    fn settle(mut self, result: Result<(), &EcsError>) {
        if result.is_ok() || result.is_err_and(|e| !e.may_have_applied()) {
            self.observer = None;
        }
    }
}

impl Drop for UnsettledGuard<'_> {
    fn drop(&mut self) {
        if let Some(observer) = self.observer.take() {
            observer.write_unsettled(self.op, self.subject);
        }
    }
}

#[derive(Clone)]
pub struct EcsClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    endpoint: Endpoint,
    vpc_endpoint: Endpoint,
    retry: RetryPolicy,
    budgets: Budgets,
    /// Process-wide, not per budget: it bounds the operator's own sockets and memory.
    in_flight: Semaphore,
    clock: Arc<dyn Clock>,
    observer: Option<Arc<dyn CallObserver>>,
    fence: Option<Arc<dyn Fence>>,
    request_timeout: Duration,
    max_response_bytes: usize,
}

#[derive(Deserialize)]
struct PortResponse {
    port_id: String,
}

/// One HTTP request: what it is (for metrics and logs), where it goes, and its body.
struct Call<'a> {
    op: Operation,
    /// What a write changes (the NIC or the port), for the writes-in-flight ledger.
    subject: &'a str,
    method: Method,
    url: &'a Url,
    /// Empty for reads (no body is sent).
    body: &'a [u8],
}

/// A 2xx answer, read in full (within the client's bound).
struct Answer {
    status: u16,
    body: Vec<u8>,
    request_id: Option<String>,
}

impl Answer {
    /// The answer is not what the API documents.
    fn protocol_error(&self, what: std::fmt::Arguments<'_>) -> EcsError {
        EcsError::Transport {
            kind: TransportKind::Protocol,
            message: format!("HTTP {} {what}{}", self.status, request_id_suffix(self.request_id.as_deref())),
        }
    }
}

fn request_id_suffix(request_id: Option<&str>) -> String {
    request_id.map(|id| format!(" [request id {id}]")).unwrap_or_default()
}

fn quota(qps: f64, burst: u32) -> Result<Quota, ClientConfigError> {
    if !(qps.is_finite() && qps > 0.0) {
        return Err(ClientConfigError::Qps(qps));
    }
    let period = Duration::try_from_secs_f64(1.0 / qps).map_err(|_| ClientConfigError::QpsTooLow(qps))?;
    if period.is_zero() {
        return Err(ClientConfigError::QpsTooHigh(qps));
    }
    if burst == 0 {
        return Err(ClientConfigError::Burst);
    }
    Ok(Quota { period, burst })
}

impl EcsClient {
    pub fn new(config: EcsClientConfig) -> Result<Self, ClientConfigError> {
        Self::with_clock(config, Arc::new(SystemClock), None)
    }

    pub fn with_clock(
        config: EcsClientConfig,
        clock: Arc<dyn Clock>,
        observer: Option<Arc<dyn CallObserver>>,
    ) -> Result<Self, ClientConfigError> {
        Self::fenced(config, clock, observer, None)
    }

    /// With a [`Fence`](super::Fence): no attempt starts while it is closed, and none runs
    /// past the time it leaves.
    pub fn fenced(
        config: EcsClientConfig,
        clock: Arc<dyn Clock>,
        observer: Option<Arc<dyn CallObserver>>,
        fence: Option<Arc<dyn Fence>>,
    ) -> Result<Self, ClientConfigError> {
        if config.max_concurrency == 0 {
            return Err(ClientConfigError::Concurrency);
        }
        if config.max_response_bytes == 0 {
            return Err(ClientConfigError::ResponseLimit);
        }
        if config.max_budgets == 0 {
            return Err(ClientConfigError::Budgets);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("vip-operator/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(ClientConfigError::Http)?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                endpoint: config.endpoint,
                vpc_endpoint: config.vpc_endpoint,
                retry: config.retry,
                budgets: Budgets::new(quota(config.qps, config.burst)?, config.max_budgets),
                in_flight: Semaphore::new(config.max_concurrency),
                clock,
                observer,
                fence,
                request_timeout: config.request_timeout,
                max_response_bytes: config.max_response_bytes,
            }),
        })
    }

    /// An ECS write (bind or unbind): the `PUT` on the NIC.
    async fn write(
        &self,
        op: Operation,
        target: &CloudTarget,
        nic_id: &str,
        body: &NicBody,
    ) -> Result<Written, EcsError> {
        let url = self
            .inner
            .endpoint
            .nic_url(&target.region, &target.project_id, nic_id)
            .map_err(|e| EcsError::InvalidRequest(e.to_string()))?;
        let body = serde_json::to_vec(body).map_err(|e| EcsError::InvalidRequest(e.to_string()))?;
        let call = Call { op, subject: nic_id, method: Method::PUT, url: &url, body: &body };
        self.execute(target, &call, parse_written)
            .instrument(tracing::debug_span!("ecs", op = op.as_str(), nic = nic_id))
            .await
    }

    async fn read_port(&self, target: &CloudTarget, port_id: &str) -> Result<Port, EcsError> {
        let url = self
            .inner
            .vpc_endpoint
            .port_url(&target.region, &target.project_id, port_id)
            .map_err(|e| EcsError::InvalidRequest(e.to_string()))?;
        let call = Call { op: Operation::GetPort, subject: port_id, method: Method::GET, url: &url, body: &[] };
        self.execute(target, &call, |answer| parse_port(answer, port_id))
            .instrument(tracing::debug_span!("vpc", op = call.op.as_str(), port = port_id))
            .await
    }

    async fn write_pairs(&self, target: &CloudTarget, port_id: &str, pairs: &[AddressPair]) -> Result<Port, EcsError> {
        let url = self
            .inner
            .vpc_endpoint
            .port_url(&target.region, &target.project_id, port_id)
            .map_err(|e| EcsError::InvalidRequest(e.to_string()))?;
        let body = serde_json::to_vec(&PairsUpdate::new(pairs)).map_err(|e| EcsError::InvalidRequest(e.to_string()))?;
        let call = Call { op: Operation::UpdatePort, subject: port_id, method: Method::PUT, url: &url, body: &body };
        self.execute(target, &call, |answer| parse_port(answer, port_id))
            .instrument(tracing::debug_span!("vpc", op = call.op.as_str(), port = port_id))
            .await
    }

    async fn read_ports(&self, target: &CloudTarget, filter: &PortFilter) -> Result<Vec<Port>, EcsError> {
        let url = self
            .inner
            .vpc_endpoint
            .ports_url(&target.region, &target.project_id, filter)
            .map_err(|e| EcsError::InvalidRequest(e.to_string()))?;
        let call = Call { op: Operation::ListPorts, subject: "", method: Method::GET, url: &url, body: &[] };
        self.execute(target, &call, parse_ports).instrument(tracing::debug_span!("vpc", op = call.op.as_str())).await
    }

    /// Budgets (token buckets) held now: at most [`EcsClientConfig::max_budgets`].
    pub fn budget_count(&self) -> usize {
        self.inner.budgets.len()
    }

    /// The call with retries. A read changes nothing, so "an earlier attempt may have reached the
    /// cloud" means nothing for it: its error is the last answer alone.
    async fn execute<T>(
        &self,
        target: &CloudTarget,
        call: &Call<'_>,
        parse: impl Fn(Answer) -> Result<T, EcsError>,
    ) -> Result<T, EcsError> {
        // Read once: every retry of the call draws from the same budget at the same priority.
        let budget = (BudgetKey::new(&target.credentials, &target.region, call.op.service()), current_priority());
        let result =
            with_retries(&self.inner.retry, call.op.resend_safe(), || self.attempt(target, &budget, call, &parse))
                .await;
        match result {
            Err(EcsError::Uncertain { last, .. }) if call.op.is_read() => Err(*last),
            other => other,
        }
    }

    /// One signed HTTP attempt: waits for a token of its budget and a concurrency slot first.
    async fn attempt<T>(
        &self,
        target: &CloudTarget,
        (key, priority): &(BudgetKey, Priority),
        call: &Call<'_>,
        parse: &impl Fn(Answer) -> Result<T, EcsError>,
    ) -> Result<T, EcsError> {
        let waiting = Instant::now();
        self.inner.budgets.acquire(key, *priority).await;
        if let Some(observer) = &self.inner.observer {
            observer.budget_waited(key.service(), *priority, waiting.elapsed());
        }
        let _slot = self
            .inner
            .in_flight
            .acquire()
            .await
            .map_err(|_| EcsError::Transport { kind: TransportKind::Protocol, message: "client closed".into() })?;
        // Checked last, right before sending: waiting for a token or a slot takes time.
        let timeout = match &self.inner.fence {
            Some(fence) => fence.remaining().map_err(EcsError::Fenced)?.min(self.inner.request_timeout),
            None => self.inner.request_timeout,
        };
        let started = Instant::now();
        let guard = (!call.op.is_read()).then(|| UnsettledGuard {
            observer: self.inner.observer.as_deref(),
            op: call.op,
            subject: call.subject,
        });
        let result = self.send(target, call, timeout).await.and_then(parse);
        if let Some(guard) = guard {
            guard.settle(result.as_ref().map(|_| ()));
        }
        if let Some(observer) = &self.inner.observer {
            observer.attempt(&AttemptReport {
                operation: call.op,
                result: result.as_ref().map(|_| ()),
                elapsed: started.elapsed(),
            });
        }
        if let Err(e) = &result {
            tracing::debug!(op = call.op.as_str(), error = %e, class = e.class().as_str(), "cloud attempt failed");
        }
        result
    }

    async fn send(&self, target: &CloudTarget, call: &Call<'_>, timeout: Duration) -> Result<Answer, EcsError> {
        let creds = &target.credentials;
        let mut headers: Vec<(&str, &str)> =
            vec![("Content-Type", "application/json"), ("X-Project-Id", target.project_id.as_str())];
        if let Some(token) = creds.security_token() {
            headers.push(("X-Security-Token", token));
        }
        // Signed per attempt: a retry gets a fresh X-Sdk-Date. The query is signed too.
        let parts = RequestParts { method: call.method.as_str(), url: call.url, headers: &headers, body: call.body };
        let signed = sign(&parts, creds.access_key(), creds.secret_key(), self.inner.clock.now())
            .map_err(|e| EcsError::InvalidRequest(e.to_string()))?;
        let mut req = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone())
            .header("Host", &signed.host)
            .header("X-Sdk-Date", &signed.sdk_date)
            .header("Authorization", &signed.authorization)
            .timeout(timeout);
        if !call.body.is_empty() {
            req = req.body(call.body.to_vec());
        }
        for (name, value) in &headers {
            req = req.header(*name, *value);
        }
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        let request_id = resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, self.inner.clock.now()));
        let body = read_bounded(resp, self.inner.max_response_bytes, request_id.as_deref()).await?;
        if !(200..300).contains(&status) {
            return Err(EcsError::Api(parse_error_response(status, &body, request_id.as_deref(), retry_after)));
        }
        Ok(Answer { status, body, request_id })
    }
}

/// Reads the whole answer, refusing one larger than `limit` bytes (by its `Content-Length`
/// first, then as it arrives: the header may be absent or lie).
async fn read_bounded(
    mut resp: reqwest::Response,
    limit: usize,
    request_id: Option<&str>,
) -> Result<Vec<u8>, EcsError> {
    let status = resp.status().as_u16();
    let too_large = || EcsError::Transport {
        kind: TransportKind::Protocol,
        message: format!("HTTP {status} answer larger than {limit} bytes, not read{}", request_id_suffix(request_id)),
    };
    let announced = resp.content_length().unwrap_or(0);
    if announced > u64::try_from(limit).unwrap_or(u64::MAX) {
        return Err(too_large());
    }
    // `announced` is at most `limit` here, so the capacity is bounded too.
    let mut body = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
    while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
        // `body.len() <= limit` always holds, so the subtraction cannot underflow.
        if chunk.len() > limit - body.len() {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn parse_written(answer: Answer) -> Result<Written, EcsError> {
    match serde_json::from_slice::<PortResponse>(&answer.body) {
        Ok(port) => Ok(Written { port_id: port.port_id, request_id: answer.request_id }),
        Err(e) => Err(answer.protocol_error(format_args!("without a port_id ({e})"))),
    }
}

/// `{"port": {...}}`, and the port asked for: an answer about another port is not believed.
fn parse_port(answer: Answer, port_id: &str) -> Result<Port, EcsError> {
    let envelope: PortEnvelope = serde_json::from_slice(&answer.body)
        .map_err(|e| answer.protocol_error(format_args!("without a port ({e})")))?;
    if envelope.port.id != port_id {
        return Err(answer.protocol_error(format_args!("answered for another port than {port_id}")));
    }
    Ok(envelope.port)
}

fn parse_ports(answer: Answer) -> Result<Vec<Port>, EcsError> {
    serde_json::from_slice::<PortList>(&answer.body)
        .map(|page| page.ports)
        .map_err(|e| answer.protocol_error(format_args!("without a list of ports ({e})")))
}

fn transport_error(e: reqwest::Error) -> EcsError {
    let kind = if e.is_timeout() {
        TransportKind::Timeout
    } else if e.is_connect() {
        TransportKind::Connect
    } else {
        TransportKind::Protocol
    };
    // The error chain names the cause (refused, reset, DNS); it never contains headers.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    EcsError::Transport { kind, message }
}

impl EcsApi for EcsClient {
    fn bind<'a>(&'a self, target: &'a CloudTarget, req: &'a BindRequest) -> BoxFuture<'a, Result<Written, EcsError>> {
        async move { self.write(Operation::Bind, target, &req.nic_id, &NicBody::bind(req)).await }.boxed()
    }

    fn unbind<'a>(
        &'a self,
        target: &'a CloudTarget,
        req: &'a UnbindRequest,
    ) -> BoxFuture<'a, Result<Written, EcsError>> {
        async move { self.write(Operation::Unbind, target, &req.nic_id, &NicBody::unbind(req)).await }.boxed()
    }
}

impl VpcApi for EcsClient {
    fn get_port<'a>(&'a self, target: &'a CloudTarget, port_id: &'a str) -> BoxFuture<'a, Result<Port, EcsError>> {
        async move { self.read_port(target, port_id).await }.boxed()
    }

    fn list_ports<'a>(
        &'a self,
        target: &'a CloudTarget,
        filter: &'a PortFilter,
    ) -> BoxFuture<'a, Result<Vec<Port>, EcsError>> {
        async move { self.read_ports(target, filter).await }.boxed()
    }

    fn update_pairs<'a>(
        &'a self,
        target: &'a CloudTarget,
        port_id: &'a str,
        pairs: &'a [AddressPair],
    ) -> BoxFuture<'a, Result<Port, EcsError>> {
        async move { self.write_pairs(target, port_id, pairs).await }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_override_validation() {
        assert!(Endpoint::parse_override("http://127.0.0.1:8080").is_ok());
        assert!(Endpoint::parse_override("https://ecs.private.example/prefix").is_ok());
        for bad in ["not a url", "ftp://x", "http://", "http://h/?a=b", "http://u:p@h/", "127.0.0.1:80", ""] {
            let err = Endpoint::parse_override(bad).unwrap_err().to_string();
            assert!(err.contains("--ecs-endpoint"), "{bad}: {err}");
        }
    }

    /// The texts are start-up errors and condition messages; they predate the typed errors.
    #[test]
    fn config_and_url_messages() {
        let endpoint = |value: &str| Endpoint::parse_override(value).unwrap_err().to_string();
        assert!(endpoint("not a url").starts_with(r#"--ecs-endpoint "not a url" is not a URL: "#));
        assert_eq!(endpoint("ftp://x"), r#"--ecs-endpoint "ftp://x" must be an http:// or https:// URL"#);
        assert_eq!(endpoint("http://h/?a=b"), r#"--ecs-endpoint "http://h/?a=b" must not have a query or fragment"#);
        assert_eq!(endpoint("http://u:p@h/"), r#"--ecs-endpoint "http://u:p@h/" must not carry credentials"#);
        let url = |region: &str, project: &str| Endpoint::Regional.nic_url(region, project, "n").unwrap_err();
        assert_eq!(url("", "p").to_string(), "region is empty");
        assert_eq!(url("cn-north-4", "").to_string(), "projectId is empty");
        assert_eq!(
            url("cn-north-4", "a b").to_string(),
            r#"projectId "a b" contains ' '; only letters, digits, '-', '_' and '.' are allowed"#
        );
        let quota_error = |qps: f64, burst: u32| quota(qps, burst).unwrap_err().to_string();
        assert_eq!(quota_error(0.0, 1), "--cloud-qps must be a positive number, got 0");
        // One token's period rounds to zero.
        assert_eq!(quota_error(1e300, 1), format!("--cloud-qps {} is too high", 1e300));
        assert_eq!(quota_error(1.0, 0), "--cloud-burst must be at least 1");
        assert_eq!(quota_error(1e-300, 1), format!("--cloud-qps {} is too low", 1e-300));
        let no_budgets = EcsClientConfig { max_budgets: 0, ..Default::default() };
        assert_eq!(
            EcsClient::new(no_budgets).err().map(|e| e.to_string()).as_deref(),
            Some("the number of cloud budgets kept must be at least 1")
        );
        let no_slots = EcsClientConfig { max_concurrency: 0, ..Default::default() };
        assert_eq!(
            EcsClient::new(no_slots).err().map(|e| e.to_string()).as_deref(),
            Some("the cloud concurrency cap must be at least 1")
        );
    }

    #[test]
    fn nic_urls() {
        let regional = Endpoint::Regional;
        assert_eq!(
            regional.nic_url("cn-north-4", "p1", "n-1").unwrap().as_str(),
            "https://ecs.cn-north-4.myhuaweicloud.com/v1/p1/cloudservers/nics/n-1"
        );
        let fixed = Endpoint::parse_override("http://127.0.0.1:9/").unwrap();
        assert_eq!(fixed.nic_url("", "p", "n").unwrap().as_str(), "http://127.0.0.1:9/v1/p/cloudservers/nics/n");
        let prefixed = Endpoint::parse_override("https://gw.example/ecs/").unwrap();
        assert_eq!(
            prefixed.nic_url("x", "p", "n").unwrap().as_str(),
            "https://gw.example/ecs/v1/p/cloudservers/nics/n"
        );
        assert!(regional.nic_url("bad/region", "p", "n").is_err());
        assert!(regional.nic_url("cn-north-4", "../x", "n").is_err());
        assert!(regional.nic_url("cn-north-4", "p", "").is_err());
    }

    #[test]
    fn port_urls() {
        let regional = Endpoint::Regional;
        assert_eq!(
            regional.port_url("cn-north-4", "p1", "port-1").unwrap().as_str(),
            "https://vpc.cn-north-4.myhuaweicloud.com/v1/p1/ports/port-1"
        );
        assert_eq!(regional.vpc_display(), "https://vpc.{region}.myhuaweicloud.com");
        let fixed = Endpoint::parse_override_for("--vpc-endpoint", "http://127.0.0.1:9/").unwrap();
        assert_eq!(fixed.port_url("", "p", "n").unwrap().as_str(), "http://127.0.0.1:9/v1/p/ports/n");
        let prefixed = Endpoint::parse_override("https://gw.example/vpc/").unwrap();
        assert_eq!(prefixed.port_url("x", "p", "n").unwrap().as_str(), "https://gw.example/vpc/v1/p/ports/n");
        assert!(regional.port_url("bad/region", "p", "n").is_err());
        assert!(regional.port_url("cn-north-4", "../x", "n").is_err());
        for bad in ["", "..", "a/b", "a?b", "a#b", "a%2Fb"] {
            let e = regional.port_url("cn-north-4", "p", bad).unwrap_err();
            assert!(e.to_string().starts_with("portId"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn ports_urls_carry_the_filters_encoded() {
        let filter = PortFilter {
            device_owner: Some(crate::ecs::vpc::VIP_PORT_OWNER.into()),
            device_id: Some("0d5f7c4e-1b2a-4c3d-9e8f-a1b2c3d4e5f6".into()),
            network_id: Some("net-1".into()),
            ip_addresses: vec!["192.168.0.7".into(), "192.168.0.8".into()],
            limit: 2,
            marker: Some("port-1".into()),
        };
        assert_eq!(
            Endpoint::Regional.ports_url("cn-north-4", "p1", &filter).unwrap().as_str(),
            "https://vpc.cn-north-4.myhuaweicloud.com/v1/p1/ports?device_owner=neutron%3AVIP_PORT\
             &device_id=0d5f7c4e-1b2a-4c3d-9e8f-a1b2c3d4e5f6&network_id=net-1\
             &fixed_ips=ip_address%3D192.168.0.7&fixed_ips=ip_address%3D192.168.0.8&limit=2&marker=port-1"
        );
        let fixed = Endpoint::parse_override("http://127.0.0.1:9").unwrap();
        let v6 = PortFilter { ip_addresses: vec!["fd00::7".into()], limit: 5000, ..Default::default() };
        assert_eq!(
            fixed.ports_url("", "p", &v6).unwrap().as_str(),
            "http://127.0.0.1:9/v1/p/ports?fixed_ips=ip_address%3Dfd00%3A%3A7&limit=2000"
        );
        let bad = PortFilter { ip_addresses: vec!["1.2.3.4&limit=1".into()], ..Default::default() };
        assert!(matches!(fixed.ports_url("", "p", &bad), Err(UrlError::Filter(_))));
        assert!(matches!(fixed.ports_url("", "", &PortFilter::default()), Err(UrlError::Id(_))));
    }

    #[test]
    fn override_errors_name_their_flag() {
        let e = Endpoint::parse_override_for("--vpc-endpoint", "ftp://x").unwrap_err();
        assert_eq!(e.to_string(), r#"--vpc-endpoint "ftp://x" must be an http:// or https:// URL"#);
        let none = EcsClientConfig { max_response_bytes: 0, ..Default::default() };
        assert_eq!(
            EcsClient::new(none).err().map(|e| e.to_string()).as_deref(),
            Some("the largest cloud answer read must be at least 1 byte")
        );
    }

    #[test]
    fn quota_validation() {
        assert_eq!(quota(10.0, 5).unwrap(), Quota { period: Duration::from_millis(100), burst: 5 });
        assert!(quota(0.5, 1).is_ok());
        assert!(quota(0.0, 1).is_err());
        assert!(quota(-1.0, 1).is_err());
        assert!(quota(f64::NAN, 1).is_err());
        assert!(quota(10.0, 0).is_err());
    }
}
