//! SDK-HMAC-SHA256 request signing (Huawei Cloud API Gateway, AK/SK).
//!
//! A pure function of the request parts, the keys and the time: no I/O, no clock. The transport
//! calls [`sign`] once per attempt, so a retried request carries a fresh `X-Sdk-Date`.

use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};
use url::Url;

pub const ALGORITHM: &str = "SDK-HMAC-SHA256";

/// Everything except the RFC 3986 unreserved characters is encoded (uppercase hex), as the
/// Huawei SDKs' `escape` does.
const STRICT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// The request as it will be sent. `headers` are the extra headers to sign (e.g. `Content-Type`,
/// `X-Project-Id`, `X-Security-Token`); `Host` and `X-Sdk-Date` are added by [`sign`].
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub url: &'a Url,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// The headers a signed request must carry, in addition to the caller's own.
#[derive(Clone, PartialEq, Eq)]
pub struct Signed {
    pub host: String,
    pub sdk_date: String,
    pub authorization: String,
}

impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The signature is a credential for 15 minutes: never print it.
        f.debug_struct("Signed")
            .field("host", &self.host)
            .field("sdk_date", &self.sdk_date)
            .field("authorization", &"[REDACTED]")
            .finish()
    }
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
pub fn sdk_date(at: jiff::Timestamp) -> String {
    at.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// The `Host` header value: the port is included only when it is not the scheme's default,
/// which is what HTTP clients send.
pub fn host_header(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, STRICT).to_string()
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

fn canonical_uri(url: &Url) -> String {
    // Segments are decoded first so that what the URL library chose to escape does not matter;
    // then each is escaped with the strict set. The canonical form always ends in '/'.
    let mut out: String = url.path().split('/').map(|segment| encode(&decode(segment))).collect::<Vec<_>>().join("/");
    if !out.ends_with('/') {
        out.push('/');
    }
    out
}

fn canonical_query(url: &Url) -> String {
    let Some(query) = url.query() else {
        return String::new();
    };
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            // `+` in a form-encoded query is a space.
            (encode(&decode(&k.replace('+', " "))), encode(&decode(&v.replace('+', " "))))
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Lowercase, sorted, de-duplicated header list with trimmed values.
fn normalized_headers(parts: &RequestParts<'_>, host: &str, sdk_date: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(k, _)| k != "host" && k != "x-sdk-date")
        .collect();
    headers.push(("host".into(), host.to_string()));
    headers.push(("x-sdk-date".into(), sdk_date.to_string()));
    headers.sort();
    headers.dedup_by(|a, b| a.0 == b.0);
    headers
}

/// The canonical request string (step 2 of the algorithm). Public for tests and diagnostics.
pub fn canonical_request(parts: &RequestParts<'_>, host: &str, sdk_date: &str) -> String {
    let headers = normalized_headers(parts, host, sdk_date);
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(";");
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        parts.method.to_ascii_uppercase(),
        canonical_uri(parts.url),
        canonical_query(parts.url),
        canonical_headers,
        signed_headers,
        hex_sha256(parts.body),
    )
}

/// The secret key could not key the HMAC (HMAC takes keys of any length, so this does not
/// happen in practice; it is an error rather than a panic all the same).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the secret key cannot be used as an HMAC-SHA256 key")]
pub struct SignError;

/// Signs a request. `secret_key` is only read here; nothing derived from it is stored.
pub fn sign(
    parts: &RequestParts<'_>,
    access_key: &str,
    secret_key: &str,
    at: jiff::Timestamp,
) -> Result<Signed, SignError> {
    let host = host_header(parts.url);
    let date = sdk_date(at);
    let canonical = canonical_request(parts, &host, &date);
    let string_to_sign = format!("{ALGORITHM}\n{date}\n{}", hex_sha256(canonical.as_bytes()));
    let signed_headers =
        normalized_headers(parts, &host, &date).into_iter().map(|(k, _)| k).collect::<Vec<_>>().join(";");
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret_key.as_bytes()).map_err(|_| SignError)?;
    mac.update(string_to_sign.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    Ok(Signed {
        host,
        sdk_date: date,
        authorization: format!(
            "{ALGORITHM} Access={access_key}, SignedHeaders={signed_headers}, Signature={signature}"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    // Huawei's published example (API Request Signing Guide).
    const AK: &str = "QTWAOYTTINDUT2QVKYUC";
    const SK: &str = "MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc";

    #[test]
    fn published_vector_canonical_request_and_signature() {
        let url = Url::parse("https://service.region.example.com/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs?limit=2&marker=13551d6b-755d-4757-b956-536f674975c0").unwrap();
        let parts =
            RequestParts { method: "GET", url: &url, headers: &[("Content-Type", "application/json")], body: b"" };
        let at = ts("2019-11-15T03:36:55Z");
        let canonical = canonical_request(&parts, "service.region.example.com", &sdk_date(at));
        assert_eq!(
            canonical,
            "GET\n/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs/\nlimit=2&marker=13551d6b-755d-4757-b956-536f674975c0\n\
             content-type:application/json\nhost:service.region.example.com\nx-sdk-date:20191115T033655Z\n\n\
             content-type;host;x-sdk-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex_sha256(canonical.as_bytes()),
            "b25362e603ee30f4f25e7858e8a7160fd36e803bb2dfe206278659d71a9bcd7a"
        );
        let signed = sign(&parts, AK, SK, at).unwrap();
        assert_eq!(signed.sdk_date, "20191115T033655Z");
        assert_eq!(signed.host, "service.region.example.com");
        assert_eq!(
            signed.authorization,
            "SDK-HMAC-SHA256 Access=QTWAOYTTINDUT2QVKYUC, SignedHeaders=content-type;host;x-sdk-date, \
             Signature=7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"
        );
    }

    #[test]
    fn query_is_sorted_by_name_then_value_and_strictly_encoded() {
        let url = Url::parse("http://h/p?b=2&a=z&a=y&c=x%20y&d=a+b&e&f=%2F~").unwrap();
        assert_eq!(canonical_query(&url), "a=y&a=z&b=2&c=x%20y&d=a%20b&e=&f=%2F~");
    }

    #[test]
    fn empty_query_is_empty() {
        assert_eq!(canonical_query(&Url::parse("http://h/p").unwrap()), "");
        assert_eq!(canonical_query(&Url::parse("http://h/p?").unwrap()), "");
    }

    #[test]
    fn path_segments_are_decoded_then_strictly_encoded_with_trailing_slash() {
        // `url` leaves ':' '@' '!' unescaped in paths; the canonical form must escape them.
        let url = Url::parse("http://h/v1/a:b@c!d/x%20y/%7Etilde").unwrap();
        assert_eq!(canonical_uri(&url), "/v1/a%3Ab%40c%21d/x%20y/~tilde/");
        assert_eq!(canonical_uri(&Url::parse("http://h/").unwrap()), "/");
        assert_eq!(canonical_uri(&Url::parse("http://h/a/").unwrap()), "/a/");
        let unicode = Url::parse("http://h/ü").unwrap();
        assert_eq!(canonical_uri(&unicode), "/%C3%BC/");
    }

    #[test]
    fn host_header_keeps_non_default_port_only() {
        assert_eq!(host_header(&Url::parse("https://ecs.x.com/").unwrap()), "ecs.x.com");
        assert_eq!(host_header(&Url::parse("https://ecs.x.com:443/").unwrap()), "ecs.x.com");
        assert_eq!(host_header(&Url::parse("http://127.0.0.1:8080/").unwrap()), "127.0.0.1:8080");
        assert_eq!(host_header(&Url::parse("http://[::1]:9/").unwrap()), "[::1]:9");
    }

    #[test]
    fn security_token_and_project_headers_are_signed_and_trimmed() {
        let url = Url::parse("https://ecs.cn-north-4.myhuaweicloud.com/v1/p/cloudservers/nics/n").unwrap();
        let body = br#"{"nic":{"subnet_id":"","ip_address":"","reverse_binding":false}}"#;
        let parts = RequestParts {
            method: "put",
            url: &url,
            headers: &[("Content-Type", "application/json"), ("X-Project-Id", "  p "), ("X-Security-Token", "tok")],
            body,
        };
        let at = ts("2024-01-02T03:04:05Z");
        let c = canonical_request(&parts, "ecs.cn-north-4.myhuaweicloud.com", &sdk_date(at));
        let lines: Vec<&str> = c.split('\n').collect();
        assert_eq!(lines[0], "PUT");
        assert_eq!(lines[1], "/v1/p/cloudservers/nics/n/");
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], "content-type:application/json");
        assert_eq!(lines[5], "x-project-id:p");
        assert_eq!(lines[6], "x-sdk-date:20240102T030405Z");
        assert_eq!(lines[7], "x-security-token:tok");
        assert_eq!(lines[8], "");
        assert_eq!(lines[9], "content-type;host;x-project-id;x-sdk-date;x-security-token");
        assert_eq!(lines[10], hex_sha256(body));
        let signed = sign(&parts, "AK", "SK", at).unwrap();
        assert!(
            signed.authorization.contains("SignedHeaders=content-type;host;x-project-id;x-sdk-date;x-security-token,")
        );
    }

    #[test]
    fn empty_body_hashes_to_the_sha256_of_nothing() {
        let url = Url::parse("http://h/").unwrap();
        let parts = RequestParts { method: "DELETE", url: &url, headers: &[], body: b"" };
        let c = canonical_request(&parts, "h", "20200101T000000Z");
        assert!(c.ends_with("\nhost;x-sdk-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    }

    #[test]
    fn signature_changes_with_time_body_and_key() {
        let url = Url::parse("http://h/v1/p/cloudservers/nics/n").unwrap();
        let p = |body: &'static [u8]| RequestParts { method: "PUT", url: &url, headers: &[], body };
        let t0 = ts("2024-01-01T00:00:00Z");
        let t1 = ts("2024-01-01T00:00:01Z");
        let base = sign(&p(b"{}"), "AK", "SK", t0).unwrap().authorization;
        assert_ne!(base, sign(&p(b"{}"), "AK", "SK", t1).unwrap().authorization);
        assert_ne!(base, sign(&p(b"{ }"), "AK", "SK", t0).unwrap().authorization);
        assert_ne!(base, sign(&p(b"{}"), "AK", "SK2", t0).unwrap().authorization);
        assert_eq!(base, sign(&p(b"{}"), "AK", "SK", t0).unwrap().authorization);
    }

    #[test]
    fn debug_never_shows_the_signature() {
        let url = Url::parse("http://h/").unwrap();
        let parts = RequestParts { method: "GET", url: &url, headers: &[], body: b"" };
        let s = sign(&parts, "AK", "SK", ts("2024-01-01T00:00:00Z")).unwrap();
        let sig = s.authorization.rsplit('=').next().unwrap().to_string();
        assert!(!format!("{s:?}").contains(&sig));
    }
}
