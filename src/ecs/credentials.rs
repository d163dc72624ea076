//! Credentials for signing: static AK/SK (+ security token), from a Kubernetes Secret's data,
//! or temporary keys from the ECS metadata service. `Debug` never shows a secret.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;

use super::clock::Clock;

/// Secret keys (the Kubernetes Secret's `data` keys).
pub const KEY_ACCESS_KEY: &str = "accessKey";
pub const KEY_SECRET_KEY: &str = "secretKey";
pub const KEY_SECURITY_TOKEN: &str = "securityToken";
pub const KEY_PROJECT_ID: &str = "projectId";
pub const KEY_REGION: &str = "region";

/// An AK/SK pair, with a security token for temporary credentials.
#[derive(Clone)]
pub struct Credentials {
    access_key: Arc<str>,
    secret_key: Arc<SecretString>,
    security_token: Option<Arc<SecretString>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("key", &self.key_id())
            .field("secret_key", &"[REDACTED]")
            .field("security_token", &self.security_token.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("key `{0}` is missing")]
    MissingKey(&'static str),
    #[error("key `{0}` is empty")]
    EmptyKey(&'static str),
    #[error("key `{0}` is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("key `{key}` is invalid: {reason}")]
    InvalidValue { key: &'static str, reason: &'static str },
    #[error("the metadata service could not be used: {0}")]
    Metadata(String),
}

fn check_header_safe(key: &'static str, value: &str) -> Result<(), CredentialsError> {
    if value.is_empty() {
        return Err(CredentialsError::EmptyKey(key));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(CredentialsError::InvalidValue { key, reason: "contains whitespace or control characters" });
    }
    if !value.is_ascii() {
        return Err(CredentialsError::InvalidValue { key, reason: "is not ASCII" });
    }
    Ok(())
}

/// See [`Credentials::key_id`].
pub(crate) fn key_id(access_key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(access_key.as_bytes());
    format!("ak#{}", hex::encode(&digest[..4]))
}

impl Credentials {
    /// Validates and builds credentials. The access key goes into the `Authorization` header
    /// verbatim, so it may not carry separators; the token goes into a header of its own.
    pub fn new(access_key: &str, secret_key: &str, security_token: Option<&str>) -> Result<Self, CredentialsError> {
        check_header_safe(KEY_ACCESS_KEY, access_key)?;
        if access_key.contains([',', '=', ';']) {
            return Err(CredentialsError::InvalidValue { key: KEY_ACCESS_KEY, reason: "contains ',', '=' or ';'" });
        }
        if secret_key.is_empty() {
            return Err(CredentialsError::EmptyKey(KEY_SECRET_KEY));
        }
        if secret_key.chars().any(char::is_control) {
            return Err(CredentialsError::InvalidValue { key: KEY_SECRET_KEY, reason: "contains control characters" });
        }
        if let Some(token) = security_token {
            check_header_safe(KEY_SECURITY_TOKEN, token)?;
        }
        Ok(Self {
            access_key: access_key.into(),
            secret_key: Arc::new(secret_key.into()),
            security_token: security_token.map(|t| Arc::new(t.into())),
        })
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// A stable, non-reversible name for the access key (`ak#` + 8 hex digits of its SHA-256),
    /// for logs, events and conditions: the key itself never appears there.
    pub fn key_id(&self) -> String {
        key_id(&self.access_key)
    }

    /// The access key, shared (budgets are kept by it).
    pub(crate) fn access_key_shared(&self) -> Arc<str> {
        self.access_key.clone()
    }

    pub(crate) fn secret_key(&self) -> &str {
        self.secret_key.expose_secret()
    }

    pub(crate) fn security_token(&self) -> Option<&str> {
        self.security_token.as_deref().map(ExposeSecret::expose_secret)
    }

    pub fn is_temporary(&self) -> bool {
        self.security_token.is_some()
    }

    /// True when both hold the same keys (used to notice rotation without exposing them).
    pub fn same_keys(&self, other: &Credentials) -> bool {
        self.access_key == other.access_key
            && self.secret_key() == other.secret_key()
            && self.security_token() == other.security_token()
    }
}

/// What a credentials Secret provides: keys, and optionally the project and region they are for.
#[derive(Debug, Clone)]
pub struct SecretCredentials {
    pub credentials: Credentials,
    pub project_id: Option<String>,
    pub region: Option<String>,
}

fn utf8_value<'a>(
    data: &'a BTreeMap<String, ByteString>,
    key: &'static str,
) -> Result<Option<&'a str>, CredentialsError> {
    match data.get(key) {
        None => Ok(None),
        Some(bytes) => std::str::from_utf8(&bytes.0)
            .map(|s| Some(s.trim_end_matches(['\n', '\r'])))
            .map_err(|_| CredentialsError::NotUtf8(key)),
    }
}

/// Parses a credentials Secret's `data`. Trailing newlines (from `echo > file`) are tolerated;
/// anything else that could not be sent in a header is refused with the key's name.
pub fn from_secret_data(data: &BTreeMap<String, ByteString>) -> Result<SecretCredentials, CredentialsError> {
    let ak = utf8_value(data, KEY_ACCESS_KEY)?.ok_or(CredentialsError::MissingKey(KEY_ACCESS_KEY))?;
    let sk = utf8_value(data, KEY_SECRET_KEY)?.ok_or(CredentialsError::MissingKey(KEY_SECRET_KEY))?;
    let token = utf8_value(data, KEY_SECURITY_TOKEN)?.filter(|t| !t.is_empty());
    let credentials = Credentials::new(ak, sk, token)?;
    let project_id = utf8_value(data, KEY_PROJECT_ID)?.filter(|s| !s.is_empty()).map(str::to_string);
    let region = utf8_value(data, KEY_REGION)?.filter(|s| !s.is_empty()).map(str::to_string);
    Ok(SecretCredentials { credentials, project_id, region })
}

/// Temporary credentials from the ECS metadata service (a node with an IAM agency).
///
/// Fetched on first use and refreshed when less than `refresh_before` of their life remains
/// (the Huawei SDKs use 40 minutes). Concurrent callers share one fetch.
pub struct MetadataCredentials {
    http: reqwest::Client,
    base: Url,
    refresh_before: Duration,
    clock: Arc<dyn Clock>,
    cache: Mutex<Option<(Credentials, jiff::Timestamp)>>,
}

#[derive(Deserialize)]
struct SecurityKeyResponse {
    credential: SecurityKey,
}

#[derive(Deserialize)]
struct SecurityKey {
    access: String,
    secret: String,
    securitytoken: String,
    expires_at: String,
}

pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254";

impl MetadataCredentials {
    pub fn new(base: Url, refresh_before: Duration, clock: Arc<dyn Clock>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            // The metadata service is link-local; a proxy from the environment must not apply.
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self { http, base, refresh_before, clock, cache: Mutex::new(None) }
    }

    /// Current credentials, refreshing them first when they are close to expiry. When a refresh
    /// fails but the cached keys are still valid, the cached keys are used.
    pub async fn credentials(&self) -> Result<Credentials, CredentialsError> {
        let mut cache = self.cache.lock().await;
        let now = self.clock.now();
        let refresh_at = |expires: jiff::Timestamp| {
            expires
                .checked_sub(jiff::SignedDuration::try_from(self.refresh_before).unwrap_or_default())
                .unwrap_or(expires)
        };
        if let Some((creds, expires)) = cache.as_ref()
            && now < refresh_at(*expires)
        {
            return Ok(creds.clone());
        }
        match self.fetch().await {
            Ok((creds, expires)) => {
                tracing::info!(key = %creds.key_id(), %expires, "fetched temporary credentials from the metadata service");
                *cache = Some((creds.clone(), expires));
                Ok(creds)
            }
            Err(e) => match cache.as_ref() {
                Some((creds, expires)) if now < *expires => {
                    tracing::warn!(error = %e, %expires, "metadata credentials refresh failed; using the cached keys until they expire");
                    Ok(creds.clone())
                }
                _ => Err(e),
            },
        }
    }

    async fn session_token(&self) -> Option<String> {
        // Token-protected metadata (like IMDSv2) is optional: use it when the service offers it.
        let url = self.base.join("meta-data/latest/api/token").ok()?;
        let resp = self.http.put(url).header("X-Metadata-Token-Ttl-Seconds", "21600").send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.text().await.ok().filter(|t| !t.trim().is_empty())
    }

    async fn fetch(&self) -> Result<(Credentials, jiff::Timestamp), CredentialsError> {
        let err = |m: String| CredentialsError::Metadata(m);
        let url = self.base.join("openstack/latest/securitykey").map_err(|e| err(e.to_string()))?;
        let mut req = self.http.get(url);
        if let Some(token) = self.session_token().await {
            req = req.header("X-Metadata-Token", token.trim());
        }
        let resp = req.send().await.map_err(|e| err(format!("request failed: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(err(format!("HTTP {status} from the security key endpoint")));
        }
        let body: SecurityKeyResponse =
            resp.json().await.map_err(|e| err(format!("unexpected security key response: {e}")))?;
        let key = body.credential;
        let expires: jiff::Timestamp =
            key.expires_at.parse().map_err(|_| err(format!("unparseable expires_at {:?}", key.expires_at)))?;
        let creds = Credentials::new(&key.access, &key.secret, Some(&key.securitytoken))?;
        Ok((creds, expires))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &[u8])]) -> BTreeMap<String, ByteString> {
        pairs.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect()
    }

    #[test]
    fn debug_redacts_secret_and_token() {
        let c = Credentials::new("AKID", "very-secret-sk", Some("tok-123")).unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains(&c.key_id()));
        assert!(!shown.contains("AKID"), "not even the access key: {shown}");
        assert!(!shown.contains("very-secret-sk"));
        assert!(!shown.contains("tok-123"));
        let s = SecretCredentials { credentials: c, project_id: None, region: None };
        assert!(!format!("{s:?}").contains("very-secret-sk"));
    }

    #[test]
    fn key_ids_are_stable_and_distinct() {
        let a = Credentials::new("AKID", "x", None).unwrap();
        assert_eq!(a.key_id(), Credentials::new("AKID", "other", None).unwrap().key_id());
        assert_ne!(a.key_id(), Credentials::new("AKIE", "x", None).unwrap().key_id());
        assert!(a.key_id().starts_with("ak#") && a.key_id().len() == 11);
    }

    #[test]
    fn secret_data_full() {
        let d = data(&[
            ("accessKey", b"AK1\n"),
            ("secretKey", b"SK1"),
            ("securityToken", b"TOK"),
            ("projectId", b"p1"),
            ("region", b"cn-north-4"),
        ]);
        let s = from_secret_data(&d).unwrap();
        assert_eq!(s.credentials.access_key(), "AK1");
        assert_eq!(s.credentials.secret_key(), "SK1");
        assert_eq!(s.credentials.security_token(), Some("TOK"));
        assert_eq!(s.project_id.as_deref(), Some("p1"));
        assert_eq!(s.region.as_deref(), Some("cn-north-4"));
    }

    #[test]
    fn secret_data_errors_name_the_key() {
        let cases: Vec<(BTreeMap<String, ByteString>, CredentialsError)> = vec![
            (data(&[("secretKey", b"x")]), CredentialsError::MissingKey("accessKey")),
            (data(&[("accessKey", b"x")]), CredentialsError::MissingKey("secretKey")),
            (data(&[("accessKey", b""), ("secretKey", b"x")]), CredentialsError::EmptyKey("accessKey")),
            (data(&[("accessKey", b"a"), ("secretKey", b"")]), CredentialsError::EmptyKey("secretKey")),
            (data(&[("accessKey", b"\xff\xfe"), ("secretKey", b"x")]), CredentialsError::NotUtf8("accessKey")),
            (data(&[("accessKey", b"a"), ("secretKey", b"\xc3\x28")]), CredentialsError::NotUtf8("secretKey")),
            (
                data(&[("accessKey", b"a b"), ("secretKey", b"x")]),
                CredentialsError::InvalidValue {
                    key: "accessKey",
                    reason: "contains whitespace or control characters",
                },
            ),
            (
                data(&[("accessKey", b"a,b"), ("secretKey", b"x")]),
                CredentialsError::InvalidValue { key: "accessKey", reason: "contains ',', '=' or ';'" },
            ),
            (
                data(&[("accessKey", b"a"), ("secretKey", b"x"), ("securityToken", b"t\x01")]),
                CredentialsError::InvalidValue {
                    key: "securityToken",
                    reason: "contains whitespace or control characters",
                },
            ),
            (
                data(&[("accessKey", b"a"), ("secretKey", b"x"), ("projectId", b"\xff")]),
                CredentialsError::NotUtf8("projectId"),
            ),
        ];
        for (d, want) in cases {
            assert_eq!(from_secret_data(&d).unwrap_err(), want);
        }
    }

    #[test]
    fn empty_optional_values_are_absent() {
        let d = data(&[("accessKey", b"a"), ("secretKey", b"s"), ("securityToken", b""), ("region", b"")]);
        let s = from_secret_data(&d).unwrap();
        assert!(!s.credentials.is_temporary());
        assert_eq!(s.region, None);
    }

    #[test]
    fn same_keys_compares_all_parts() {
        let a = Credentials::new("a", "s", None).unwrap();
        assert!(a.same_keys(&Credentials::new("a", "s", None).unwrap()));
        assert!(!a.same_keys(&Credentials::new("a", "s2", None).unwrap()));
        assert!(!a.same_keys(&Credentials::new("a", "s", Some("t")).unwrap()));
    }
}
