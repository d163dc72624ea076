//! Server-side SDK-HMAC-SHA256 verification for the simulator.
//!
//! Deliberately independent of `crate::ecs::sign`: it works from the request as received (raw
//! path and query, header map, body bytes), uses aws-lc-rs for SHA-256/HMAC instead of the
//! RustCrypto crates the client uses, and does its own escaping. A client signer bug therefore
//! cannot be mirrored here and "agree with itself".

use aws_lc_rs::{constant_time, digest, hmac};
use http::HeaderMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No or malformed `Authorization` header.
    Malformed(&'static str),
    MissingHeader(&'static str),
    /// `host` or `x-sdk-date` not among SignedHeaders.
    UnsignedHeader(&'static str),
    BadDate,
    ClockSkew,
    UnknownAccessKey(String),
    BadSignature(String),
    BadToken(String),
}

impl AuthFailure {
    pub fn message(&self) -> String {
        match self {
            AuthFailure::Malformed(m) => format!("Incorrect IAM authentication information: {m}"),
            AuthFailure::MissingHeader(h) => format!("Incorrect IAM authentication information: header {h} is missing"),
            AuthFailure::UnsignedHeader(h) => format!("Incorrect IAM authentication information: header {h} must be signed"),
            AuthFailure::BadDate => "Incorrect IAM authentication information: X-Sdk-Date is not YYYYMMDDTHHMMSSZ".into(),
            AuthFailure::ClockSkew => "Incorrect IAM authentication information: the request time differs from the server time by more than 15 minutes".into(),
            AuthFailure::UnknownAccessKey(_) => "Incorrect IAM authentication information: AK not found".into(),
            AuthFailure::BadSignature(_) => "Incorrect IAM authentication information: verify aksk signature fail".into(),
            AuthFailure::BadToken(_) => "The security token is invalid or does not belong to this access key".into(),
        }
    }

    /// The access key the request claimed, when it got that far.
    pub fn access_key(&self) -> Option<&str> {
        match self {
            AuthFailure::UnknownAccessKey(ak) | AuthFailure::BadSignature(ak) | AuthFailure::BadToken(ak) => Some(ak),
            _ => None,
        }
    }
}

pub struct Authorization {
    pub access_key: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

pub fn parse_authorization(value: &str) -> Result<Authorization, AuthFailure> {
    let rest = value.strip_prefix("SDK-HMAC-SHA256 ").ok_or(AuthFailure::Malformed("unsupported algorithm"))?;
    let (mut access, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            return Err(AuthFailure::Malformed("Authorization parameters"));
        };
        match k {
            "Access" => access = Some(v.to_string()),
            "SignedHeaders" => signed = Some(v.to_string()),
            "Signature" => signature = Some(v.to_string()),
            _ => return Err(AuthFailure::Malformed("unknown Authorization parameter")),
        }
    }
    let signed_headers: Vec<String> =
        signed.ok_or(AuthFailure::Malformed("SignedHeaders missing"))?.split(';').map(str::to_string).collect();
    Ok(Authorization {
        access_key: access.ok_or(AuthFailure::Malformed("Access missing"))?,
        signed_headers,
        signature: signature.ok_or(AuthFailure::Malformed("Signature missing"))?,
    })
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b'~'
}

fn unescape(s: &str, plus_is_space: bool) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if plus_is_space && b == b'+' { b' ' } else { b });
        i += 1;
    }
    out
}

fn escape(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for &b in raw {
        if is_unreserved(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn lower_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn canonical_request(
    method: &str,
    raw_path: &str,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    signed_headers: &[String],
    body: &[u8],
) -> Result<String, AuthFailure> {
    let mut uri = raw_path.split('/').map(|seg| escape(&unescape(seg, false))).collect::<Vec<_>>().join("/");
    if !uri.ends_with('/') {
        uri.push('/');
    }
    let mut params: Vec<(String, String)> = raw_query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.find('=') {
            Some(i) => (escape(&unescape(&p[..i], true)), escape(&unescape(&p[i + 1..], true))),
            None => (escape(&unescape(p, true)), String::new()),
        })
        .collect();
    params.sort();
    let query = params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let mut block = String::new();
    for name in signed_headers {
        let value = headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .ok_or(AuthFailure::Malformed("a signed header is not in the request"))?;
        block.push_str(name);
        block.push(':');
        block.push_str(value.trim());
        block.push('\n');
    }
    let body_hash = lower_hex(digest::digest(&digest::SHA256, body).as_ref());
    Ok(format!("{method}\n{uri}\n{query}\n{block}\n{}\n{body_hash}", signed_headers.join(";")))
}

pub fn parse_sdk_date(value: &str) -> Option<jiff::Timestamp> {
    let dt = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", value).ok()?;
    dt.to_zoned(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp())
}

/// What a successfully verified request proved.
pub struct Verified {
    pub access_key: String,
}

/// Key material the simulator knows for an access key.
pub struct KnownKey<'a> {
    pub secret_key: &'a str,
    pub security_token: Option<&'a str>,
}

/// A request exactly as received: the parts its signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// Path and query still percent-encoded, as the client signed them.
    pub raw_path: &'a str,
    pub raw_query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Checks `req`'s SDK-HMAC-SHA256 signature, its date against `now` (within `max_skew`) and, for
/// a temporary key, its security token; `lookup` gives the key material of an access key.
pub fn verify<'k>(
    req: &SignedRequest<'_>,
    now: jiff::Timestamp,
    max_skew: std::time::Duration,
    lookup: impl Fn(&str) -> Option<KnownKey<'k>>,
) -> Result<Verified, AuthFailure> {
    let headers = req.headers;
    let auth = headers
        .get("authorization")
        .ok_or(AuthFailure::MissingHeader("Authorization"))?
        .to_str()
        .map_err(|_| AuthFailure::Malformed("non-ASCII Authorization"))?;
    let auth = parse_authorization(auth)?;
    for required in ["host", "x-sdk-date"] {
        if headers.get(required).is_none() {
            return Err(AuthFailure::MissingHeader(if required == "host" { "Host" } else { "X-Sdk-Date" }));
        }
        if !auth.signed_headers.iter().any(|h| h == required) {
            return Err(AuthFailure::UnsignedHeader(required));
        }
    }
    let date =
        headers.get("x-sdk-date").and_then(|v| v.to_str().ok()).and_then(parse_sdk_date).ok_or(AuthFailure::BadDate)?;
    let skew = (now.as_second() - date.as_second()).unsigned_abs();
    if skew > max_skew.as_secs() {
        return Err(AuthFailure::ClockSkew);
    }
    let key = lookup(&auth.access_key).ok_or_else(|| AuthFailure::UnknownAccessKey(auth.access_key.clone()))?;
    let canonical =
        canonical_request(req.method, req.raw_path, req.raw_query, headers, &auth.signed_headers, req.body)?;
    let sts = format!(
        "SDK-HMAC-SHA256\n{}\n{}",
        headers.get("x-sdk-date").and_then(|v| v.to_str().ok()).unwrap_or_default(),
        lower_hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let mac_key = hmac::Key::new(hmac::HMAC_SHA256, key.secret_key.as_bytes());
    let expected = lower_hex(hmac::sign(&mac_key, sts.as_bytes()).as_ref());
    if constant_time::verify_slices_are_equal(expected.as_bytes(), auth.signature.as_bytes()).is_err() {
        return Err(AuthFailure::BadSignature(auth.access_key));
    }
    if let Some(token) = key.security_token {
        // A temporary key is only valid with its token, and the token must be signed.
        let sent = headers.get("x-security-token").and_then(|v| v.to_str().ok());
        if sent != Some(token) || !auth.signed_headers.iter().any(|h| h == "x-security-token") {
            return Err(AuthFailure::BadToken(auth.access_key));
        }
    }
    Ok(Verified { access_key: auth.access_key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    /// The published example, verified by this independent implementation.
    #[test]
    fn verifies_the_published_vector() {
        let h = headers(&[
            ("content-type", "application/json"),
            ("x-sdk-date", "20191115T033655Z"),
            ("host", "service.region.example.com"),
            (
                "authorization",
                "SDK-HMAC-SHA256 Access=QTWAOYTTINDUT2QVKYUC, SignedHeaders=content-type;host;x-sdk-date, Signature=7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe",
            ),
        ]);
        let path = "/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs";
        let query = Some("limit=2&marker=13551d6b-755d-4757-b956-536f674975c0");
        let now = parse_sdk_date("20191115T033655Z").unwrap();
        let skew = std::time::Duration::from_secs(900);
        let lookup = |ak: &str| {
            (ak == "QTWAOYTTINDUT2QVKYUC")
                .then_some(KnownKey { secret_key: "MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc", security_token: None })
        };
        let canonical = canonical_request(
            "GET",
            path,
            query,
            &h,
            &["content-type".into(), "host".into(), "x-sdk-date".into()],
            b"",
        )
        .unwrap();
        assert_eq!(
            lower_hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref()),
            "b25362e603ee30f4f25e7858e8a7160fd36e803bb2dfe206278659d71a9bcd7a"
        );
        let get = SignedRequest { method: "GET", raw_path: path, raw_query: query, headers: &h, body: b"" };
        assert!(verify(&get, now, skew, lookup).is_ok());
        // One changed byte anywhere fails.
        assert!(matches!(
            verify(&SignedRequest { body: b"x", ..get }, now, skew, lookup),
            Err(AuthFailure::BadSignature(_))
        ));
        assert!(matches!(
            verify(&SignedRequest { method: "PUT", ..get }, now, skew, lookup),
            Err(AuthFailure::BadSignature(_))
        ));
        assert!(matches!(
            verify(&SignedRequest { raw_query: Some("limit=3"), ..get }, now, skew, lookup),
            Err(AuthFailure::BadSignature(_))
        ));
        // 16 minutes later the same request is refused for skew.
        let late = now.checked_add(jiff::SignedDuration::from_secs(16 * 60)).unwrap();
        assert_eq!(verify(&get, late, skew, lookup).err(), Some(AuthFailure::ClockSkew));
    }

    #[test]
    fn escaping_matches_the_rules() {
        assert_eq!(escape(&unescape("a%3ab", false)), "a%3Ab");
        assert_eq!(escape(&unescape("x y", false)), "x%20y");
        assert_eq!(escape(&unescape("a+b", true)), "a%20b");
        assert_eq!(escape(&unescape("a+b", false)), "a%2Bb");
        assert_eq!(escape(&unescape("%7E", false)), "~");
        assert_eq!(escape(&unescape("100%", false)), "100%25");
    }

    #[test]
    fn rejects_unsigned_host_or_date_and_bad_headers() {
        fn put(headers: &HeaderMap) -> SignedRequest<'_> {
            SignedRequest { method: "PUT", raw_path: "/", raw_query: None, headers, body: b"" }
        }
        let now = parse_sdk_date("20240101T000000Z").unwrap();
        let skew = std::time::Duration::from_secs(900);
        let lookup = |_: &str| Some(KnownKey { secret_key: "s", security_token: None });
        let h = headers(&[
            ("host", "h"),
            ("x-sdk-date", "20240101T000000Z"),
            ("authorization", "SDK-HMAC-SHA256 Access=a, SignedHeaders=x-sdk-date, Signature=00"),
        ]);
        assert_eq!(verify(&put(&h), now, skew, lookup).err(), Some(AuthFailure::UnsignedHeader("host")));
        let h = headers(&[
            ("host", "h"),
            ("authorization", "SDK-HMAC-SHA256 Access=a, SignedHeaders=host;x-sdk-date, Signature=00"),
        ]);
        assert_eq!(verify(&put(&h), now, skew, lookup).err(), Some(AuthFailure::MissingHeader("X-Sdk-Date")));
        let h = headers(&[
            ("host", "h"),
            ("x-sdk-date", "2024-01-01"),
            ("authorization", "SDK-HMAC-SHA256 Access=a, SignedHeaders=host;x-sdk-date, Signature=00"),
        ]);
        assert_eq!(verify(&put(&h), now, skew, lookup).err(), Some(AuthFailure::BadDate));
        let h = headers(&[
            ("host", "h"),
            ("x-sdk-date", "20240101T000000Z"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=x"),
        ]);
        assert!(matches!(verify(&put(&h), now, skew, lookup), Err(AuthFailure::Malformed(_))));
        let h = headers(&[("host", "h"), ("x-sdk-date", "20240101T000000Z")]);
        assert_eq!(verify(&put(&h), now, skew, lookup).err(), Some(AuthFailure::MissingHeader("Authorization")));
    }
}
