//! The generated CRD: the committed file is current, and its schema refuses bad input the way
//! kube-apiserver would (OpenAPI structure with `jsonschema`, CEL rules with kube-cel, which
//! implements the Kubernetes CEL libraries including `isIP` and transition rules).

use serde_json::{Value, json};
use vip_operator::api::{CRD_NAMES, crd_yaml};

const CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/vipbindings.vipoperator.dev.yaml");

#[test]
fn committed_crds_match_the_code() {
    for name in CRD_NAMES {
        let file = format!("{}/crds/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
        let committed = std::fs::read_to_string(&file).unwrap_or_else(|_| panic!("{file} missing: run `make crds`"));
        assert!(committed == crd_yaml(name).unwrap(), "{file} is stale: run `make crds` and commit the result");
    }
}

#[test]
fn chart_crds_are_the_same_generated_files() {
    for name in CRD_NAMES {
        let file = format!("{}/charts/vip-operator/crds/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
        let chart = std::fs::read_to_string(&file).unwrap_or_else(|_| panic!("{file} missing: run `make crds`"));
        assert!(chart == crd_yaml(name).unwrap(), "{file} is stale: run `make crds` and commit the result");
    }
}

fn crd() -> Value {
    let text = std::fs::read_to_string(CRD_FILE).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

fn schema() -> Value {
    crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Drops Kubernetes-only keywords that JSON Schema validators do not understand, and lets
/// `nullable` fields be null, as the apiserver does.
fn as_json_schema(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, val) in map {
                if k.starts_with("x-kubernetes-") || k == "nullable" {
                    continue;
                }
                out.insert(k.clone(), as_json_schema(val));
            }
            if map.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(t)) = map.get("type")
            {
                out.insert("type".into(), json!([t, "null"]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(as_json_schema).collect()),
        other => other.clone(),
    }
}

/// What the API server would say about a create (`old` = None) or an update.
fn admit(object: &Value, old: Option<&Value>) -> Result<(), Vec<String>> {
    admit_with(schema(), object, old)
}

fn admit_with(schema: Value, object: &Value, old: Option<&Value>) -> Result<(), Vec<String>> {
    let structural = jsonschema::validator_for(&as_json_schema(&schema)).unwrap();
    let mut errors: Vec<String> =
        structural.iter_errors(object).map(|e| format!("{}: {e}", e.instance_path())).collect();
    if let Err(cel) = kube_cel::validate(&schema, object, old) {
        errors.extend(cel.into_vec().into_iter().map(|e| format!("{}: {}", e.field_path, e.message)));
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn binding(spec: Value) -> Value {
    json!({"apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipBinding", "metadata": {"name": "b", "namespace": "ns"}, "spec": spec})
}

fn good_spec() -> Value {
    json!({
        "nicId": "d32019d3-bc6e-4319-9c1d-6722fc136a23",
        "ipAddress": "192.168.0.7",
        "subnetId": "8c9d4f38-1a2b-4c3d-9e8f-001122334455",
    })
}

fn with(mut spec: Value, key: &str, value: Value) -> Value {
    spec[key] = value;
    spec
}

fn rejected_with(object: &Value, old: Option<&Value>, needle: &str) {
    match admit(object, old) {
        Ok(()) => panic!("expected rejection containing {needle:?} for {object}"),
        Err(errors) => assert!(errors.iter().any(|e| e.contains(needle)), "{needle:?} not in {errors:#?}"),
    }
}

#[test]
fn a_good_binding_is_admitted() {
    admit(&binding(good_spec()), None).unwrap();
    let full = with(
        with(
            with(
                with(good_spec(), "projectId", json!("0123456789abcdef0123456789abcdef")),
                "region",
                json!("cn-north-4"),
            ),
            "credentialsSecretRef",
            json!({"name": "hw-creds"}),
        ),
        "deletionPolicy",
        json!("Orphan"),
    );
    admit(&binding(full), None).unwrap();
    admit(&binding(with(good_spec(), "ipAddress", json!("fd00::7"))), None).unwrap();
}

#[test]
fn ip_address_must_be_an_ip() {
    for bad in ["300.1.1.1", "abc", "192.168.0", "192.168.0.7/24", "::g"] {
        rejected_with(
            &binding(with(good_spec(), "ipAddress", json!(bad))),
            None,
            "ipAddress must be an IPv4 or IPv6 address",
        );
    }
}

#[test]
fn required_fields_and_id_patterns() {
    for field in ["nicId", "ipAddress", "subnetId"] {
        let mut spec = good_spec();
        spec.as_object_mut().unwrap().remove(field);
        rejected_with(&binding(spec), None, field);
    }
    for (field, bad) in [
        ("nicId", ""),
        ("nicId", "../x"),
        ("subnetId", "a b"),
        ("projectId", "p/q"),
        ("region", "CN_NORTH"),
        ("nicId", &"a".repeat(65)),
    ] {
        let errors = admit(&binding(with(good_spec(), field, json!(bad))), None).unwrap_err();
        assert!(!errors.is_empty(), "{field}={bad:?}");
    }
    rejected_with(&binding(with(good_spec(), "deletionPolicy", json!("Delete"))), None, "deletionPolicy");
    rejected_with(&binding(with(good_spec(), "reverseBinding", json!("yes"))), None, "reverseBinding");
    rejected_with(
        &binding(with(good_spec(), "credentialsSecretRef", json!({"name": "Bad_Name"}))),
        None,
        "credentialsSecretRef",
    );
}

#[test]
fn identity_fields_are_immutable_with_a_helpful_message() {
    let old = binding(with(with(good_spec(), "projectId", json!("p1")), "region", json!("cn-north-4")));
    for (field, new) in [
        ("nicId", json!("00000000-0000-0000-0000-000000000000")),
        ("ipAddress", json!("192.168.0.8")),
        ("subnetId", json!("other-subnet")),
        ("projectId", json!("p2")),
        ("region", json!("cn-east-3")),
    ] {
        let mut updated = old.clone();
        updated["spec"][field] = new;
        rejected_with(&updated, Some(&old), &format!("{field} is immutable"));
        rejected_with(&updated, Some(&old), "create a new VipBinding");
    }
    // Optional identity fields cannot be added or removed either.
    let bare = binding(good_spec());
    rejected_with(&old, Some(&bare), "projectId is immutable");
    rejected_with(&bare, Some(&old), "region is immutable");
    // The API too: it cannot be changed, added or removed.
    let vpc = binding(with(good_spec(), "api", json!("VPC")));
    let mut ecs = vpc.clone();
    ecs["spec"]["api"] = json!("ECS");
    rejected_with(&ecs, Some(&vpc), "api is immutable");
    rejected_with(&vpc, Some(&bare), "api is immutable");
    rejected_with(&bare, Some(&vpc), "api is immutable");
}

#[test]
fn the_vpc_api_takes_ipv4_vips_only() {
    let v4 = with(good_spec(), "api", json!("VPC"));
    assert!(admit(&binding(v4.clone()), None).is_ok());
    let v6 = with(v4, "ipAddress", json!("fd00::7"));
    rejected_with(&binding(v6), None, "api VPC binds IPv4 VIPs only");
    assert!(admit(&binding(with(good_spec(), "ipAddress", json!("fd00::7"))), None).is_ok(), "ECS takes IPv6");
    rejected_with(&binding(with(good_spec(), "api", json!("EC2"))), None, "api");
}

#[test]
fn policy_and_reverse_binding_stay_editable() {
    let old = binding(good_spec());
    let mut updated = old.clone();
    updated["spec"]["deletionPolicy"] = json!("Orphan");
    updated["spec"]["reverseBinding"] = json!(true);
    updated["spec"]["credentialsSecretRef"] = json!({"name": "rotated"});
    admit(&updated, Some(&old)).unwrap();
}

#[test]
fn crd_shape() {
    let crd = crd();
    assert_eq!(crd["metadata"]["name"], "vipbindings.vipoperator.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["vipb"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<(&str, &str)> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["jsonPath"].as_str().unwrap()))
        .collect();
    assert_eq!(
        columns,
        vec![
            ("VIP", ".spec.ipAddress"),
            ("NIC", ".spec.nicId"),
            ("Port", ".status.portId"),
            ("Ready", ".status.conditions[?(@.type==\"Ready\")].status"),
            ("Reason", ".status.conditions[?(@.type==\"Ready\")].reason"),
            ("Age", ".metadata.creationTimestamp"),
        ]
    );
    let schema = schema();
    assert_eq!(schema["properties"]["spec"]["properties"]["deletionPolicy"]["default"], "Unbind");
    assert_eq!(schema["properties"]["spec"]["properties"]["reverseBinding"]["default"], false);
    let conditions = &schema["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    // Every CEL rule on a string has a bounded cost (maxLength), as the apiserver requires.
    let ip = &schema["properties"]["spec"]["properties"]["ipAddress"];
    assert!(ip["maxLength"].as_u64().unwrap() <= 64);
}

#[test]
fn user_facing_field_docs_exist() {
    let spec = &schema()["properties"]["spec"]["properties"];
    for field in [
        "nicId",
        "ipAddress",
        "subnetId",
        "reverseBinding",
        "projectId",
        "region",
        "credentialsSecretRef",
        "deletionPolicy",
    ] {
        let d = spec[field]["description"].as_str().unwrap_or_default();
        assert!(d.len() > 30, "{field} needs a kubectl-explain description");
    }
}

fn group_schema() -> Value {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/vipgroups.vipoperator.dev.yaml");
    let crd: Value = serde_saphyr::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn group(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "vipoperator.dev/v1alpha1", "kind": "VipGroup", "metadata": {"name": name, "namespace": "ns"}, "spec": spec})
}

fn good_group_spec() -> Value {
    json!({
        "ipAddress": "192.168.0.50",
        "subnetId": "8c9d4f38-1a2b-4c3d-9e8f-001122334455",
        "api": "VPC",
        "nodeSelector": {"matchLabels": {"role": "lb"}},
    })
}

fn group_rejected_with(object: &Value, old: Option<&Value>, needle: &str) {
    match admit_with(group_schema(), object, old) {
        Ok(()) => panic!("expected rejection containing {needle:?} for {object}"),
        Err(errors) => assert!(errors.iter().any(|e| e.contains(needle)), "{needle:?} not in {errors:#?}"),
    }
}

#[test]
fn a_good_group_is_admitted_and_an_empty_selector_is_not() {
    admit_with(group_schema(), &group("web", good_group_spec()), None).unwrap();
    let expressions = with(
        good_group_spec(),
        "nodeSelector",
        json!({"matchExpressions": [{"key": "role", "operator": "In", "values": ["lb"]}, {"key": "spot", "operator": "DoesNotExist"}]}),
    );
    admit_with(group_schema(), &group("web", expressions), None).unwrap();
    for empty in [json!({}), json!({"matchLabels": {}}), json!({"matchExpressions": []})] {
        group_rejected_with(
            &group("web", with(good_group_spec(), "nodeSelector", empty)),
            None,
            "an empty selector would match every node",
        );
    }
    let no_values = json!({"matchExpressions": [{"key": "role", "operator": "In"}]});
    group_rejected_with(
        &group("web", with(good_group_spec(), "nodeSelector", no_values)),
        None,
        "In and NotIn need values",
    );
    let bad_operator = json!({"matchExpressions": [{"key": "role", "operator": "Gt", "values": ["1"]}]});
    assert!(
        admit_with(group_schema(), &group("web", with(good_group_spec(), "nodeSelector", bad_operator)), None).is_err()
    );
}

#[test]
fn a_group_refuses_long_names_ipv6_on_vpc_out_of_range_max_nodes_and_spec_changes_that_cannot_be() {
    group_rejected_with(&group(&"g".repeat(51), good_group_spec()), None, "at most 50 characters");
    group_rejected_with(
        &group("web", with(good_group_spec(), "ipAddress", json!("fd00::7"))),
        None,
        "api VPC binds IPv4 VIPs only",
    );
    admit_with(
        group_schema(),
        &group("web", with(with(good_group_spec(), "ipAddress", json!("fd00::7")), "api", json!("ECS"))),
        None,
    )
    .unwrap();
    for bad in [json!(0), json!(1001)] {
        assert!(admit_with(group_schema(), &group("web", with(good_group_spec(), "maxNodes", bad)), None).is_err());
    }
    let old = group("web", good_group_spec());
    for (field, value) in [("ipAddress", json!("192.168.0.51")), ("subnetId", json!("other")), ("api", json!("ECS"))] {
        group_rejected_with(&group("web", with(good_group_spec(), field, value)), Some(&old), "immutable");
    }
    // The selector, the policy and the limit may change.
    let changed = with(with(good_group_spec(), "deletionPolicy", json!("Orphan")), "maxNodes", json!(10));
    admit_with(group_schema(), &group("web", changed), Some(&old)).unwrap();
}
