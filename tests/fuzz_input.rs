//! Bad input never reaches the cloud: property tests feed malformed specs, Secrets and cloud
//! answers to the decision logic, the credentials resolver, the URL builder, the signer and the
//! error parser. None may panic, and nothing malformed may come out as a cloud request.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use proptest::prelude::*;
use vip_operator::api::testing::Fixture;
use vip_operator::api::v1alpha1::{BindApi, DeletionPolicy, Reason, VipBinding};
use vip_operator::controller::{DefaultCredentials, OperatorDefaults, SecretReader, TargetResolver};
use vip_operator::controller::{Facts, Plan, decide, validate_spec};
use vip_operator::ecs::credentials::from_secret_data;
use vip_operator::ecs::error::parse_error_response;
use vip_operator::ecs::sign::{RequestParts, sign};
use vip_operator::ecs::{Credentials, Endpoint, check_path_id, check_region};

/// Strings that look like IDs, IPs and regions, and strings that only pretend to.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-f0-9-]{0,40}",
        "[A-Za-z0-9._/%?#:@ -]{0,20}",
        Just("..".to_string()),
        Just("a/../b".to_string()),
        Just("%2F".to_string()),
        Just("192.168.0.7".to_string()),
        Just("300.1.1.1".to_string()),
        Just("fd00::7".to_string()),
        Just("cn-north-4".to_string()),
        Just("\u{0}\n\r\t".to_string()),
        "\\PC{0,12}",
        ".{60,80}",
    ]
}

/// Live bindings with any spec: everything else about them is `VipBinding::test()`.
fn spec() -> impl Strategy<Value = VipBinding> {
    (
        nasty(),
        nasty(),
        nasty(),
        proptest::option::of(nasty()),
        proptest::option::of(nasty()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(nic, ip, subnet, project, region, reverse, orphan)| {
            let b = VipBinding::test().nic(nic).ip(ip).subnet(subnet).project(project).region(region);
            let b = b.reverse_binding(reverse);
            if orphan { b.orphan() } else { b }
        })
}

fn binding(b: VipBinding, finalizer: bool, deleting: bool, paused: bool) -> VipBinding {
    let b = if finalizer { b.with_finalizer() } else { b };
    let b = if deleting { b.deleting() } else { b };
    if paused { b.paused() } else { b }
}

fn secret_data() -> impl Strategy<Value = BTreeMap<String, ByteString>> {
    let key = prop_oneof![
        Just("accessKey".to_string()),
        Just("secretKey".to_string()),
        Just("securityToken".to_string()),
        Just("projectId".to_string()),
        Just("region".to_string()),
        "[a-zA-Z]{1,8}",
    ];
    let value = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        nasty().prop_map(String::into_bytes),
        Just(b"AKVALID000000000001".to_vec()),
    ];
    proptest::collection::btree_map(key, value.prop_map(ByteString), 0..6)
}

struct OneSecret(Option<Secret>);

impl SecretReader for OneSecret {
    fn get<'a>(&'a self, _ns: &'a str, _name: &'a str) -> BoxFuture<'a, Result<Option<Secret>, kube::Error>> {
        let s = self.0.clone();
        async move { Ok(s) }.boxed()
    }
}

fn path_segments(url: &url::Url) -> Vec<String> {
    url.path_segments().map(|s| s.map(str::to_string).collect()).unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decisions_never_send_a_malformed_request(
        spec in spec(), finalizer in any::<bool>(), deleting in any::<bool>(), paused in any::<bool>(),
        conflict in any::<bool>(), crd_deleting in any::<bool>(), reassert in any::<bool>(), vpc in any::<bool>(),
        observe in any::<bool>(), observe_due in any::<bool>(),
    ) {
        let mut b = binding(spec, finalizer, deleting, paused);
        if observe {
            b.spec.management_policy = vip_operator::api::v1alpha1::ManagementPolicy::Observe;
        }
        let api = if vpc { BindApi::Vpc } else { BindApi::Ecs };
        let facts = Facts { conflict_owner: conflict.then(|| "ns/owner".to_string()), crd_deleting, reassert_due: reassert, api, observe_due, owner_shares_pair: conflict && vpc };
        let plan = decide(&b, &facts);
        // Observe never writes: no bind, no unbind, whatever else is true.
        prop_assert!(!observe || !matches!(plan, Plan::Bind { .. } | Plan::Unbind | Plan::Yield(_)), "{:?}", plan);
        match plan {
            Plan::Observe => {
                prop_assert!(observe && observe_due && !deleting && !paused && !conflict);
                prop_assert!(validate_spec(&b.spec).is_ok());
            }
            Plan::Bind { .. } => {
                // Only well-formed specs get to bind, and their URL path is exactly as intended.
                prop_assert!(validate_spec(&b.spec).is_ok());
                prop_assert!(!deleting && !paused && !conflict);
                let project = b.spec.project_id.clone().unwrap_or_else(|| "p".into());
                let url = Endpoint::Regional.nic_url(b.spec.region.as_deref().unwrap_or("cn-north-4"), &project, &b.spec.nic_id);
                let url = url.expect("a valid spec makes a valid URL");
                prop_assert_eq!(path_segments(&url), vec!["v1".to_string(), project, "cloudservers".into(), "nics".into(), b.spec.nic_id.clone()]);
                prop_assert!(url.host_str().unwrap().ends_with(".myhuaweicloud.com"));
            }
            Plan::Unbind => {
                // A conflicted binding unbinds only its own VPC pair (an ECS unbind names no VIP).
                prop_assert!(deleting && finalizer && !paused && (!conflict || vpc) && !crd_deleting);
                prop_assert_eq!(b.spec.deletion_policy, DeletionPolicy::Unbind);
            }
            Plan::Hold(v) | Plan::Release(v) | Plan::Yield(v) => prop_assert!(!v.message.is_empty()),
            Plan::Nothing => {}
        }
    }

    #[test]
    fn url_building_rejects_or_contains_every_input(region in nasty(), project in nasty(), nic in nasty()) {
        if let Ok(url) = Endpoint::Regional.nic_url(&region, &project, &nic) {
            prop_assert!(check_region(&region).is_ok() && check_path_id("p", &project).is_ok() && check_path_id("n", &nic).is_ok());
            prop_assert_eq!(path_segments(&url).len(), 5);
        }
    }

    #[test]
    fn malformed_secrets_are_refused_with_the_key_named(data in secret_data()) {
        match from_secret_data(&data) {
            Ok(parsed) => {
                let ak = parsed.credentials.access_key();
                let header = format!("SDK-HMAC-SHA256 Access={ak}, SignedHeaders=host, Signature=0");
                prop_assert!(http::HeaderValue::from_str(&header).is_ok());
                prop_assert!(!ak.contains([',', '=', ';', ' ']));
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(["accessKey", "secretKey", "securityToken", "projectId", "region"].iter().any(|k| text.contains(k)), "{}", text);
            }
        }
    }

    #[test]
    fn resolution_yields_a_sendable_target_or_a_reason(data in secret_data(), spec in spec(), region_required in any::<bool>()) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let b = binding(spec.secret("creds"), false, false, false);
        let secret = Secret { data: Some(data), ..Default::default() };
        let defaults = OperatorDefaults { credentials: DefaultCredentials::None, project_id: None, region: None, region_required, api: Default::default() };
        let resolver = TargetResolver::new(Arc::new(OneSecret(Some(secret))), defaults);
        match runtime.block_on(resolver.resolve(&b)) {
            Ok(target) => {
                prop_assert!(check_path_id("projectId", &target.project_id).is_ok());
                let region_ok = check_region(&target.region).is_ok();
                prop_assert!(region_ok || (!region_required && target.region.is_empty()));
            }
            Err(v) => prop_assert!(matches!(v.reason, Reason::Invalid | Reason::CredentialsUnavailable), "{:?}", v),
        }
    }

    #[test]
    fn error_bodies_never_panic_the_parser(status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..300), rid in proptest::option::of(nasty())) {
        let e = parse_error_response(status, &body, rid.as_deref(), None);
        prop_assert_eq!(e.status, status);
        prop_assert!(e.message.chars().count() <= 201 || serde_json::from_slice::<serde_json::Value>(&body).is_ok());
    }

    #[test]
    fn the_signer_takes_any_request(path in "[ -~]{0,40}", query in "[ -~]{0,40}", body in proptest::collection::vec(any::<u8>(), 0..100)) {
        if let Ok(url) = url::Url::parse(&format!("https://h.example/{path}?{query}")) {
            let creds = Credentials::new("AK", "SK", None).unwrap();
            let signed = sign(&RequestParts { method: "PUT", url: &url, headers: &[("Content-Type", "application/json")], body: &body }, creds.access_key(), "SK", jiff::Timestamp::UNIX_EPOCH).unwrap();
            prop_assert!(signed.authorization.starts_with("SDK-HMAC-SHA256 Access=AK, SignedHeaders=content-type;host;x-sdk-date, Signature="));
        }
    }
}
