//! [`EcsClient`]: the signed HTTP implementation of [`EcsApi`] on one shared reqwest pool, with
//! one token bucket and one concurrency cap for every cloud call the process makes.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tracing::Instrument;
use url::Url;

use super::error::{EcsError, TransportKind, parse_error_response, parse_retry_after};
use super::retry::{RetryPolicy, with_retries};
use super::sign::{RequestParts, sign};
use super::{
    BindRequest, Clock, CloudTarget, EcsApi, InvalidId, InvalidRegion, NicBody, Operation, SystemClock, UnbindRequest,
    Written, check_path_id, check_region,
};

/// An `--ecs-endpoint` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("--ecs-endpoint {value:?} is not a URL: {source}")]
    NotAUrl { value: String, source: url::ParseError },
    #[error("--ecs-endpoint {value:?} must be an http:// or https:// URL")]
    Scheme { value: String },
    #[error("--ecs-endpoint {value:?} has no host")]
    NoHost { value: String },
    #[error("--ecs-endpoint {value:?} must not have a query or fragment")]
    QueryOrFragment { value: String },
    #[error("--ecs-endpoint {value:?} must not carry credentials")]
    Credentials { value: String },
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
}

/// An [`EcsClientConfig`] the client cannot be built from.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("--cloud-qps must be a positive number, got {0}")]
    Qps(f64),
    /// So high that one token's period rounds to zero.
    #[error("--cloud-qps {0} is too high")]
    QpsTooHigh(f64),
    #[error("--cloud-burst must be at least 1")]
    Burst,
    #[error("the cloud concurrency cap must be at least 1")]
    Concurrency,
    #[error("cannot build the HTTP client: {0}")]
    Http(reqwest::Error),
}

/// Where ECS lives: the public regional endpoint, or one fixed URL (the simulator, a private
/// cloud, a proxy) used for every region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `https://ecs.{region}.myhuaweicloud.com`
    Regional,
    Fixed(Url),
}

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
        let url = Url::parse(value.trim()).map_err(|source| EndpointError::NotAUrl { value: value.into(), source })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EndpointError::Scheme { value: value.into() });
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(EndpointError::NoHost { value: value.into() });
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(EndpointError::QueryOrFragment { value: value.into() });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(EndpointError::Credentials { value: value.into() });
        }
        Ok(Endpoint::Fixed(url))
    }

    pub fn base_url(&self, region: &str) -> Result<Url, UrlError> {
        match self {
            Endpoint::Fixed(url) => Ok(url.clone()),
            Endpoint::Regional => {
                check_region(region)?;
                Url::parse(&format!("https://ecs.{region}.myhuaweicloud.com"))
                    .map_err(|source| UrlError::RegionEndpoint { region: region.into(), source })
            }
        }
    }

    /// `{base}/v1/{project_id}/cloudservers/nics/{nic_id}`
    pub fn nic_url(&self, region: &str, project_id: &str, nic_id: &str) -> Result<Url, UrlError> {
        check_path_id("projectId", project_id)?;
        check_path_id("nicId", nic_id)?;
        let mut url = self.base_url(region)?;
        {
            // The segments are written back into `url` when `path` is dropped.
            let mut path = url.path_segments_mut().map_err(|()| UrlError::NotABase)?;
            path.pop_if_empty().extend(["v1", project_id, "cloudservers", "nics", nic_id]);
        }
        Ok(url)
    }
}

#[derive(Debug, Clone)]
pub struct EcsClientConfig {
    pub endpoint: Endpoint,
    pub connect_timeout: Duration,
    /// Whole-request timeout for one attempt.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Sustained cloud calls per second (every attempt counts, retries included).
    pub qps: f64,
    pub burst: u32,
    /// Cloud calls in flight at once.
    pub max_concurrency: usize,
}

impl Default for EcsClientConfig {
    fn default() -> Self {
        Self {
            endpoint: Endpoint::Regional,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            qps: 10.0,
            burst: 10,
            max_concurrency: 16,
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
}

#[derive(Clone)]
pub struct EcsClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    endpoint: Endpoint,
    retry: RetryPolicy,
    limiter: DefaultDirectRateLimiter,
    in_flight: Semaphore,
    clock: Arc<dyn Clock>,
    observer: Option<Arc<dyn CallObserver>>,
    fence: Option<Arc<dyn super::Fence>>,
    request_timeout: Duration,
}

#[derive(Deserialize)]
struct PortResponse {
    port_id: String,
}

fn quota(qps: f64, burst: u32) -> Result<Quota, ClientConfigError> {
    if !(qps.is_finite() && qps > 0.0) {
        return Err(ClientConfigError::Qps(qps));
    }
    let period = Duration::from_secs_f64(1.0 / qps);
    let quota = Quota::with_period(period).ok_or(ClientConfigError::QpsTooHigh(qps))?;
    let burst = NonZeroU32::new(burst).ok_or(ClientConfigError::Burst)?;
    Ok(quota.allow_burst(burst))
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
        fence: Option<Arc<dyn super::Fence>>,
    ) -> Result<Self, ClientConfigError> {
        if config.max_concurrency == 0 {
            return Err(ClientConfigError::Concurrency);
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
                retry: config.retry,
                limiter: RateLimiter::direct(quota(config.qps, config.burst)?),
                in_flight: Semaphore::new(config.max_concurrency),
                clock,
                observer,
                fence,
                request_timeout: config.request_timeout,
            }),
        })
    }

    async fn call(
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
        with_retries(&self.inner.retry, || self.attempt(op, target, &url, &body))
            .instrument(tracing::debug_span!("ecs", op = op.as_str(), nic = nic_id))
            .await
    }

    /// One signed HTTP attempt: waits for a rate-limit token and a concurrency slot first.
    async fn attempt(&self, op: Operation, target: &CloudTarget, url: &Url, body: &[u8]) -> Result<Written, EcsError> {
        self.inner.limiter.until_ready().await;
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
        let result = self.send(target, url, body, timeout).await;
        if let Some(observer) = &self.inner.observer {
            observer.attempt(&AttemptReport {
                operation: op,
                result: result.as_ref().map(|_| ()),
                elapsed: started.elapsed(),
            });
        }
        if let Err(e) = &result {
            tracing::debug!(op = op.as_str(), error = %e, class = e.class().as_str(), "ECS attempt failed");
        }
        result
    }

    async fn send(&self, target: &CloudTarget, url: &Url, body: &[u8], timeout: Duration) -> Result<Written, EcsError> {
        let creds = &target.credentials;
        let mut headers: Vec<(&str, &str)> =
            vec![("Content-Type", "application/json"), ("X-Project-Id", target.project_id.as_str())];
        if let Some(token) = creds.security_token() {
            headers.push(("X-Security-Token", token));
        }
        // Signed per attempt: a retry gets a fresh X-Sdk-Date.
        let signed = sign(
            &RequestParts { method: "PUT", url, headers: &headers, body },
            creds.access_key(),
            creds.secret_key(),
            self.inner.clock.now(),
        )
        .map_err(|e| EcsError::InvalidRequest(e.to_string()))?;
        let mut req = self
            .inner
            .http
            .put(url.clone())
            .header("Host", &signed.host)
            .header("X-Sdk-Date", &signed.sdk_date)
            .header("Authorization", &signed.authorization)
            .timeout(timeout)
            .body(body.to_vec());
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
        let bytes = resp.bytes().await.map_err(transport_error)?;
        if !(200..300).contains(&status) {
            return Err(EcsError::Api(parse_error_response(status, &bytes, request_id.as_deref(), retry_after)));
        }
        let port: PortResponse = serde_json::from_slice(&bytes).map_err(|e| EcsError::Transport {
            kind: TransportKind::Protocol,
            message: format!(
                "HTTP {status} without a port_id ({e}){}",
                request_id.as_deref().map(|id| format!(" [request id {id}]")).unwrap_or_default()
            ),
        })?;
        Ok(Written { port_id: port.port_id, request_id })
    }
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
        async move { self.call(Operation::Bind, target, &req.nic_id, &NicBody::bind(req)).await }.boxed()
    }

    fn unbind<'a>(
        &'a self,
        target: &'a CloudTarget,
        req: &'a UnbindRequest,
    ) -> BoxFuture<'a, Result<Written, EcsError>> {
        async move { self.call(Operation::Unbind, target, &req.nic_id, &NicBody::unbind(req)).await }.boxed()
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
    fn quota_validation() {
        assert!(quota(10.0, 5).is_ok());
        assert!(quota(0.5, 1).is_ok());
        assert!(quota(0.0, 1).is_err());
        assert!(quota(-1.0, 1).is_err());
        assert!(quota(f64::NAN, 1).is_err());
        assert!(quota(10.0, 0).is_err());
    }
}
