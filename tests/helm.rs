//! The Helm chart, rendered with the real `helm template`: RBAC grants exactly what
//! `vip_operator::rbac::PERMISSIONS` says the operator needs for the chosen values (no more, no
//! wildcards), the user-facing ClusterRoles aggregated into admin/edit/view grant VipBinding
//! rights only and are bound to nobody, the Deployment passes the expected flags and is
//! restricted-PSS compliant, optional objects appear only when they should, and bad values fail to
//! render with a clear message.
//!
//! Needs `helm` on PATH (or `$HELM`): `.ci/install-tools.sh` installs it into `.helm-tools/bin`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use vip_operator::rbac::{Feature, PERMISSIONS, Scope};

#[path = "support/chart.rs"]
mod chart;

use chart::{RELEASE_NS, Rendered, chart, render, template};

fn full_values() -> String {
    std::fs::read_to_string(chart().join("ci/full-values.yaml")).unwrap()
}

trait Workload {
    fn deployment(&self) -> &Value;
    fn pod(&self) -> &Value;
    fn container(&self) -> &Value;
    fn args(&self) -> Vec<String>;
    fn service_account(&self) -> String;
}

impl Workload for Rendered {
    fn deployment(&self) -> &Value {
        self.one("Deployment")
    }

    fn pod(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0]["name"], "vip-operator");
        &containers[0]
    }

    fn args(&self) -> Vec<String> {
        strings(&self.container()["args"])
    }

    fn service_account(&self) -> String {
        self.pod()["serviceAccountName"].as_str().unwrap().to_owned()
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().expect("expected a string").to_owned()).collect())
        .unwrap_or_default()
}

/// One atomic permission: (namespace or cluster-wide, apiGroup, resource, verb, resourceName or any).
type Grant = (Option<String>, String, String, String, Option<String>);

/// What the values turn on, as far as RBAC is concerned.
struct Features<'a> {
    watch_namespaces: &'a [&'a str],
    leader_election: bool,
    credentials_protection: bool,
    default_secret: Option<&'a str>,
}

/// The grants `rbac::PERMISSIONS` requires for these features.
fn needed(f: &Features) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for p in PERMISSIONS {
        let on = match p.feature {
            Feature::Core => true,
            Feature::LeaderElection => f.leader_election,
            Feature::CredentialsProtection => f.credentials_protection,
            Feature::DefaultCredentialsSecret => f.default_secret.is_some(),
        };
        if !on {
            continue;
        }
        let namespaces: Vec<Option<String>> = match p.scope {
            Scope::Cluster => vec![None],
            Scope::OperatorNamespace => vec![Some(RELEASE_NS.into())],
            Scope::Watched if f.watch_namespaces.is_empty() => vec![None],
            Scope::Watched => f.watch_namespaces.iter().map(|n| Some(n.to_string())).collect(),
        };
        let names: Vec<Option<String>> = if p.resource_names.is_empty() {
            vec![None]
        } else {
            p.resource_names
                .iter()
                .map(|n| match *n {
                    "<credentials.existingSecret>" => Some(f.default_secret.unwrap().to_owned()),
                    n if n.starts_with('<') => panic!("rbac.rs placeholder {n} unknown to this test"),
                    n => Some(n.to_owned()),
                })
                .collect()
        };
        for ns in &namespaces {
            for verb in p.verbs {
                for name in &names {
                    out.insert((ns.clone(), p.api_group.into(), p.resource.into(), verb.to_string(), name.clone()));
                }
            }
        }
    }
    out
}

fn expand(rules: &Value, ns: Option<&str>, out: &mut BTreeSet<Grant>) {
    for rule in rules.as_array().expect("rules must be a list") {
        assert!(rule.get("nonResourceURLs").is_none(), "unexpected nonResourceURLs rule: {rule}");
        let names = strings(&rule["resourceNames"]);
        let names: Vec<Option<String>> =
            if names.is_empty() { vec![None] } else { names.into_iter().map(Some).collect() };
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    for name in &names {
                        out.insert((
                            ns.map(str::to_owned),
                            group.clone(),
                            resource.clone(),
                            verb.clone(),
                            name.clone(),
                        ));
                    }
                }
            }
        }
    }
}

/// The built-in roles a ClusterRole's labels aggregate it into (`aggregate-to-admin` and so on).
fn aggregated_into(role: &Value) -> Vec<String> {
    role["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.strip_prefix("rbac.authorization.k8s.io/aggregate-to-")?, v)))
        .map(|(into, v)| {
            assert_eq!(v, "true", "aggregate-to-{into} label");
            into.to_owned()
        })
        .collect()
}

/// What the rendered RBAC grants the operator's ServiceAccount: the rules of the roles its
/// bindings refer to, nothing else. The render also holds the user-facing ClusterRoles, so
/// collecting every role would count their rights as the operator's, and skipping them by name
/// would hide them if they were bound to it: only the bindings decide. Also checks that every
/// binding binds only that ServiceAccount to a rendered role, and that every role is either the
/// operator's (bound, not aggregated) or user-facing (aggregated, not bound).
fn granted(r: &Rendered) -> BTreeSet<Grant> {
    let sa = r.service_account();
    let name = |d: &Value| d["metadata"]["name"].as_str().unwrap().to_owned();
    let ns = |d: &Value| d["metadata"]["namespace"].as_str().map(str::to_owned);
    let mut cluster_roles: BTreeMap<String, &Value> = BTreeMap::new();
    for d in r.all("ClusterRole") {
        // Its rules would be whatever the controller aggregates, not what the chart renders.
        assert!(d.get("aggregationRule").is_none(), "aggregated ClusterRole {}", name(d));
        cluster_roles.insert(name(d), d);
    }
    let mut roles: BTreeMap<(String, String), &Value> = BTreeMap::new();
    for d in r.all("Role") {
        roles.insert((ns(d).expect("Role without namespace"), name(d)), &d["rules"]);
    }
    let mut used = BTreeSet::new();
    let mut out = BTreeSet::new();
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        for b in r.all(kind) {
            let subjects = b["subjects"].as_array().unwrap();
            assert_eq!(subjects.len(), 1, "{kind} {} binds more than the operator", name(b));
            let s = &subjects[0];
            assert_eq!((s["kind"].as_str(), s["name"].as_str()), (Some("ServiceAccount"), Some(sa.as_str())));
            assert_eq!(s["namespace"], RELEASE_NS);
            let role_ref = &b["roleRef"];
            assert_eq!(role_ref["apiGroup"], "rbac.authorization.k8s.io");
            let role = role_ref["name"].as_str().unwrap().to_owned();
            let binding_ns = if kind == "RoleBinding" { ns(b) } else { None };
            let rules = match role_ref["kind"].as_str().unwrap() {
                "ClusterRole" => cluster_roles.get(&role).map(|d| &d["rules"]),
                "Role" => {
                    assert_eq!(kind, "RoleBinding");
                    roles.get(&(binding_ns.clone().unwrap(), role.clone())).copied()
                }
                other => panic!("roleRef kind {other}"),
            };
            let rules = rules.unwrap_or_else(|| panic!("{kind} {} refers to a missing role {role}", name(b)));
            used.insert((role_ref["kind"].as_str().unwrap().to_owned(), binding_ns.clone(), role));
            expand(rules, binding_ns.as_deref(), &mut out);
        }
    }
    for (role, d) in &cluster_roles {
        let bound = used.iter().any(|(k, _, n)| k == "ClusterRole" && n == role);
        if aggregated_into(d).is_empty() {
            assert!(bound, "ClusterRole {role} is not bound");
        } else {
            // Both: the operator's rights (Secrets, status) would reach every namespace user, or
            // the users' (create, delete) the operator.
            assert!(!bound, "ClusterRole {role} is aggregated into user-facing roles and bound to the operator");
        }
    }
    for (ns, role) in roles.keys() {
        assert!(used.contains(&("Role".into(), Some(ns.clone()), role.clone())), "Role {ns}/{role} is not bound");
    }
    out
}

fn describe(set: &BTreeSet<Grant>) -> String {
    set.iter()
        .map(|(ns, g, r, v, n)| {
            format!(
                "  {} {g}/{r} {v}{}\n",
                ns.as_deref().unwrap_or("<cluster>"),
                n.as_ref().map(|n| format!(" [{n}]")).unwrap_or_default()
            )
        })
        .collect()
}

fn assert_rbac(r: &Rendered, f: &Features) {
    for d in r.docs.iter().filter(|d| d["apiVersion"].as_str().unwrap_or("").starts_with("rbac.authorization.k8s.io")) {
        assert!(!d["rules"].to_string().contains('*'), "wildcard in {d}");
    }
    let granted = granted(r);
    let needed = needed(f);
    assert!(
        granted == needed,
        "chart RBAC differs from src/rbac.rs\ngranted but not needed:\n{}needed but not granted:\n{}",
        describe(&granted.difference(&needed).cloned().collect()),
        describe(&needed.difference(&granted).cloned().collect()),
    );
    // Spelled out, though implied by the equality: Secrets are never written except by the
    // finalizer patch, and cluster-wide only when every namespace is watched.
    for (ns, group, resource, verb, _) in &granted {
        if group.is_empty() && resource == "secrets" {
            assert!(["get", "list", "watch", "patch"].contains(&verb.as_str()), "secrets {verb} granted");
            if verb == "patch" {
                assert!(f.credentials_protection);
                assert!(ns.is_some() || f.watch_namespaces.is_empty(), "cluster-wide secrets patch");
            }
        }
    }
}

/// Restricted Pod Security Standard, plus the probes, env and image basics.
fn assert_pod_basics(r: &Rendered) {
    let pod = r.pod();
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["runAsUser"], 65532);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(pod.get(key).is_none(), "{key} set");
    }
    assert!(pod.get("volumes").is_none(), "no volumes expected");
    let c = r.container();
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"].get("add").is_none());
    assert_ne!(sc["privileged"], true);

    let env = c["env"].as_array().unwrap();
    for (name, path) in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")] {
        let var = env.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], path);
    }
    assert_eq!(c["ports"][0]["name"], "metrics");
    assert_eq!(c["livenessProbe"]["httpGet"], serde_json::json!({"path": "/healthz", "port": "metrics"}));
    assert_eq!(c["readinessProbe"]["httpGet"], serde_json::json!({"path": "/readyz", "port": "metrics"}));
    assert!(c["resources"]["requests"]["memory"].is_string() && c["resources"]["limits"]["memory"].is_string());
    assert_eq!(r.deployment()["metadata"]["namespace"], RELEASE_NS);
}

#[test]
fn default_values() {
    let r = render("{}");
    assert_eq!(
        r.args(),
        [
            "run",
            "--log-level=info",
            "--log-format=json",
            "--default-credentials-namespaces=vip-system",
            "--default-credentials-namespace-selector=vipoperator.dev/default-credentials=allowed",
            "--concurrency=16",
            "--cloud-qps=10",
            "--cloud-burst=10",
            "--resync-period=10m",
            "--write-horizon=90s",
            "--protect-credentials=true",
            "--leader-elect",
            "--leader-election-namespace=$(POD_NAMESPACE)",
            "--leader-lease-seconds=15",
            "--metrics-addr=0.0.0.0:8080",
        ]
    );
    assert_eq!(r.container()["image"], "ghcr.io/vip-operator/vip-operator:0.1.0");
    assert_eq!(r.deployment()["spec"]["replicas"], 2);
    assert_eq!(r.pod()["terminationGracePeriodSeconds"], 30);
    assert_pod_basics(&r);
    assert_rbac(
        &r,
        &Features { watch_namespaces: &[], leader_election: true, credentials_protection: true, default_secret: None },
    );
    // Soft anti-affinity across nodes, selecting the operator's own pods.
    let term = &r.pod()["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(term["podAffinityTerm"]["topologyKey"], "kubernetes.io/hostname");
    let selector = &r.deployment()["spec"]["selector"]["matchLabels"];
    assert_eq!(&term["podAffinityTerm"]["labelSelector"]["matchLabels"], selector);
    // Two replicas: a PDB over the same pods; no Secret, no checksum, no ServiceMonitor.
    let pdb = r.one("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
    assert!(r.all("Secret").is_empty());
    assert!(r.all("ServiceMonitor").is_empty());
    assert!(r.deployment()["spec"]["template"]["metadata"].get("annotations").is_none());
    assert_eq!(r.one("Service")["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(r.one("ServiceAccount")["metadata"]["name"], r.service_account());
}

#[test]
fn full_values_file() {
    let r = render(&full_values());
    assert_eq!(
        r.args(),
        [
            "run",
            "--log-level=info,vip_operator=debug",
            "--log-format=text",
            "--ecs-endpoint=https://ecs-proxy.example.com:8443",
            "--default-api=vpc",
            "--vpc-endpoint=https://vpc-proxy.example.com:8443",
            "--region=ap-southeast-1",
            "--project-id=0123456789abcdef0123456789abcdef",
            "--credentials-secret=vip-system/vipop-credentials",
            "--default-credentials-namespaces=team-a",
            "--default-credentials-namespaces=vip-system",
            "--default-credentials-namespace-selector=platform.example.com/tier in (gold, silver),vipoperator.dev/default-credentials=allowed",
            "--namespace=team-a",
            "--namespace=team-b",
            "--concurrency=8",
            "--cloud-qps=2.5",
            "--cloud-burst=5",
            "--resync-period=1h30m",
            "--write-horizon=2m",
            "--protect-credentials=true",
            "--leader-elect",
            "--leader-election-namespace=$(POD_NAMESPACE)",
            "--leader-lease-seconds=20",
            "--metrics-addr=0.0.0.0:9090",
            "--cloud-concurrency=8",
        ]
    );
    assert_pod_basics(&r);
    assert_rbac(
        &r,
        &Features {
            watch_namespaces: &["team-a", "team-b"],
            leader_election: true,
            credentials_protection: true,
            default_secret: Some("vipop-credentials"),
        },
    );
    assert_eq!(r.container()["image"], "registry.example.com/platform/vip-operator:0.1.0-rc.1");
    assert_eq!(r.service_account(), "vip-operator-sa");

    // The created Secret has the documented keys, and its checksum rolls the pods.
    let secret = r.one("Secret");
    assert_eq!(secret["metadata"]["name"], "vipop-credentials");
    let mut keys: Vec<&String> = secret["data"].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["accessKey", "projectId", "region", "secretKey", "securityToken"]);
    let checksum = &r.deployment()["spec"]["template"]["metadata"]["annotations"]["checksum/credentials"];
    assert!(checksum.as_str().is_some_and(|c| c.len() == 64), "checksum annotation: {checksum}");

    // ServiceMonitor scrapes the metrics Service's port, with the extra labels.
    let sm = r.one("ServiceMonitor");
    let svc = r.one("Service");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], svc["spec"]["ports"][0]["name"]);
    assert_eq!(sm["spec"]["endpoints"][0]["interval"], "15s");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&svc["metadata"]["labels"][k], v);
    }
    assert_eq!(svc["spec"]["ports"][0]["port"], 9090);

    assert_eq!(r.one("PodDisruptionBudget")["spec"]["minAvailable"], 2);
    // A topology spread constraint without a selector gets the pods' labels.
    let tsc = &r.pod()["topologySpreadConstraints"][0];
    assert_eq!(&tsc["labelSelector"]["matchLabels"], &r.deployment()["spec"]["selector"]["matchLabels"]);
    // User affinity replaces the default anti-affinity.
    assert!(r.pod()["affinity"].get("podAntiAffinity").is_none());
}

#[test]
fn watched_namespaces_with_an_existing_secret() {
    let r = render(
        "watchNamespaces: [apps, vip-system]\ncredentials:\n  existingSecret: huawei-default\nregion: cn-north-4\n",
    );
    let args = r.args();
    for expected in [
        "--namespace=apps",
        "--namespace=vip-system",
        "--credentials-secret=vip-system/huawei-default",
        "--region=cn-north-4",
    ] {
        assert!(args.iter().any(|a| a == expected), "{expected} missing from {args:?}");
    }
    assert_pod_basics(&r);
    assert_rbac(
        &r,
        &Features {
            watch_namespaces: &["apps", "vip-system"],
            leader_election: true,
            credentials_protection: true,
            default_secret: Some("huawei-default"),
        },
    );
    // Cluster-wide, the operator reads its CRD and Namespace metadata; the others are the
    // user-facing roles.
    let cluster_roles: BTreeSet<&str> =
        r.all("ClusterRole").iter().map(|c| c["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(
        cluster_roles,
        BTreeSet::from(["vip-operator-cluster", "vip-operator-admin", "vip-operator-edit", "vip-operator-view"])
    );
    // An existing Secret is not created, and its rotation needs no checksum.
    assert!(r.all("Secret").is_empty());
    assert!(r.deployment()["spec"]["template"]["metadata"].get("annotations").is_none());
}

#[test]
fn optional_features_disabled() {
    let r = render(
        "replicaCount: 1\nleaderElection: {enabled: false}\ncredentialsProtection: {enabled: false}\n\
         credentials: {metadataService: true}\nserviceAccount: {create: false, name: existing-sa}\n\
         metrics: {service: {enabled: false}}\n",
    );
    let args = r.args();
    assert!(args.contains(&"--protect-credentials=false".to_owned()));
    assert!(args.contains(&"--metadata-credentials".to_owned()));
    for absent in ["--leader-elect", "--leader-election-namespace", "--credentials-secret", "--namespace"] {
        assert!(!args.iter().any(|a| a.starts_with(absent)), "{absent} in {args:?}");
    }
    assert_pod_basics(&r);
    assert_rbac(
        &r,
        &Features {
            watch_namespaces: &[],
            leader_election: false,
            credentials_protection: false,
            default_secret: None,
        },
    );
    assert_eq!(r.service_account(), "existing-sa");
    // Nothing needed in the release namespace: no Role there at all.
    assert!(r.all("Role").is_empty());
    for kind in ["PodDisruptionBudget", "ServiceAccount", "Service", "ServiceMonitor", "Secret"] {
        assert!(r.all(kind).is_empty(), "unexpected {kind}");
    }
}

/// The user-facing ClusterRoles: those aggregated into a built-in role, by name.
fn user_roles(r: &Rendered) -> BTreeMap<String, &Value> {
    r.all("ClusterRole")
        .into_iter()
        .filter(|c| !aggregated_into(c).is_empty())
        .map(|c| (c["metadata"]["name"].as_str().unwrap().to_owned(), c))
        .collect()
}

/// Namespace users get VipBinding rights through the built-in admin/edit/view roles: exactly these
/// rules, never status writes (the operator's record of what it bound, which the finalizer
/// unbinds), and nothing beyond VipBindings (Secrets above all).
#[test]
fn user_roles_aggregate_into_admin_edit_view() {
    const WRITE: [&str; 8] = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"];
    const READ: [&str; 3] = ["get", "list", "watch"];
    let grants = |spec: &[(&str, &[&str])]| -> BTreeSet<Grant> {
        let mut out = BTreeSet::new();
        for (resource, verbs) in spec {
            for verb in *verbs {
                out.insert((None, "vipoperator.dev".into(), resource.to_string(), verb.to_string(), None));
            }
        }
        out
    };
    for (values, fullname) in [("{}".to_owned(), "vip-operator"), (full_values(), "vipop")] {
        let r = render(&values);
        let roles = user_roles(&r);
        let names: Vec<&str> = roles.keys().map(String::as_str).collect();
        let expected: Vec<String> = ["admin", "edit", "view"].iter().map(|b| format!("{fullname}-{b}")).collect();
        assert_eq!(names, expected);
        // The chart's standard labels (as on every object), plus the one aggregation label.
        let standard = r.deployment()["metadata"]["labels"].as_object().unwrap();
        for (builtin, write) in [("admin", true), ("edit", true), ("view", false)] {
            let role = roles[&format!("{fullname}-{builtin}")];
            let mut labels = role["metadata"]["labels"].as_object().unwrap().clone();
            let aggregate = format!("rbac.authorization.k8s.io/aggregate-to-{builtin}");
            assert_eq!(labels.remove(&aggregate), Some(Value::from("true")), "{aggregate} on {builtin}");
            assert_eq!(&labels, standard, "labels of the {builtin} role");
            assert!(role.get("aggregationRule").is_none());

            let mut got = BTreeSet::new();
            expand(&role["rules"], None, &mut got);
            let objects: &[&str] = if write { &WRITE } else { &READ };
            assert_eq!(
                got,
                grants(&[
                    ("vipbindings", objects),
                    ("vipbindings/status", &READ),
                    ("vipgroups", objects),
                    ("vipgroups/status", &READ)
                ]),
                "rules of the {builtin} role"
            );
            // Spelled out, though implied by the equality: statuses are the operator's.
            for (_, group, resource, verb, name) in &got {
                assert_eq!(group, "vipoperator.dev", "{builtin}: group {group}");
                assert!(
                    ["vipbindings", "vipbindings/status", "vipgroups", "vipgroups/status"].contains(&resource.as_str()),
                    "{builtin}: {resource}"
                );
                assert!(!resource.ends_with("/status") || READ.contains(&verb.as_str()), "{builtin}: status {verb}");
                assert!(name.is_none(), "{builtin}: resourceNames");
            }
            assert!(!role["rules"].to_string().contains("secrets"), "{builtin} mentions secrets");
        }
    }
}

#[test]
fn user_roles_can_be_left_out() {
    let r = render("userRoles: {aggregate: false}\n");
    assert!(user_roles(&r).is_empty());
    let cluster_roles: Vec<&str> =
        r.all("ClusterRole").iter().map(|c| c["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(cluster_roles, ["vip-operator-watched", "vip-operator-cluster"]);
    // The operator's own RBAC does not depend on them.
    assert_rbac(
        &r,
        &Features { watch_namespaces: &[], leader_election: true, credentials_protection: true, default_secret: None },
    );
}

/// Users get the roles through the built-in ones; a binding here would hand them to someone
/// directly (and to the operator, rights it must not have).
#[test]
fn user_roles_are_bound_by_nobody() {
    for values in ["{}".to_owned(), full_values(), "watchNamespaces: [apps]\n".to_owned()] {
        let r = render(&values);
        let roles = user_roles(&r);
        assert_eq!(roles.len(), 3, "{values}");
        for kind in ["ClusterRoleBinding", "RoleBinding"] {
            for b in r.all(kind) {
                let role = b["roleRef"]["name"].as_str().unwrap();
                assert!(
                    b["roleRef"]["kind"] != "ClusterRole" || !roles.contains_key(role),
                    "{kind} {} binds {role}",
                    b["metadata"]["name"]
                );
            }
        }
    }
}

#[test]
fn bad_values_fail_with_a_clear_message() {
    let cases = [
        ("replicacount: 3\n", "replicacount"),
        ("metrics: {serviceMonitor: {enable: true}}\n", "enable"),
        ("concurrency: many\n", "concurrency"),
        ("watchNamespaces: apps\n", "watchNamespaces"),
        ("logFormat: yaml\n", "logFormat"),
        ("replicaCount: 2\nleaderElection: {enabled: false}\n", "leaderElection.enabled is false"),
        (
            "credentials: {existingSecret: a, accessKey: b, secretKey: c}\n",
            "credentials.existingSecret is set together",
        ),
        ("credentials: {accessKey: b}\n", "without credentials.secretKey"),
        ("credentials: {metadataService: true, existingSecret: a}\n", "choose one default credentials source"),
        ("userRoles: {aggregated: true}\n", "aggregated"),
        ("userRoles: {aggregate: sometimes}\n", "userRoles/aggregate"),
    ];
    for (values, message) in cases {
        match template(values, &[]) {
            Ok(_) => panic!("values rendered but should fail:\n{values}"),
            Err(stderr) => assert!(stderr.contains(message), "for values\n{values}expected {message:?} in:\n{stderr}"),
        }
    }
}

#[test]
fn kube_version_floor() {
    let err = template("{}", &["--kube-version", "1.30.0"]).err().expect("kubeVersion >=1.31 should refuse 1.30");
    assert!(err.contains("kubeVersion"), "{err}");
}

/// The chart's default lets the operator's credentials be used in its own namespace and in
/// namespaces labelled for it, nowhere else (README, "Multi-tenant clusters").
#[test]
fn default_values_allow_default_credentials_only_in_the_release_namespace_and_labelled_ones() {
    use clap::Parser;
    use k8s_openapi::api::core::v1::Namespace;
    use kube::core::PartialObjectMeta;
    use vip_operator::controller::Tenancy;
    use vip_operator::settings::{SdkEnvironment, Settings};

    let r = render("credentials: {existingSecret: huawei-default}\n");
    let cli = vip_operator::cli::Cli::try_parse_from(std::iter::once("vip-operator".to_owned()).chain(r.args()))
        .expect("the chart's args parse");
    let vip_operator::cli::Command::Run(args) = cli.command else { panic!("not `run`") };
    let settings = Settings::new(*args, &SdkEnvironment::default()).expect("the chart's args are valid");
    assert!(!settings.demo_scope);
    let tenancy = Tenancy::new(settings.default_credentials_scope);
    let namespace = |name: &str, labels: &[(&str, &str)]| {
        let mut ns = PartialObjectMeta::<Namespace>::default();
        ns.metadata.name = Some(name.into());
        ns.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        ns
    };
    for ns in [
        namespace(RELEASE_NS, &[]),
        namespace("team-a", &[]),
        namespace("team-b", &[("vipoperator.dev/default-credentials", "allowed")]),
        namespace("team-c", &[("vipoperator.dev/default-credentials", "yes")]),
    ] {
        tenancy.apply(&kube::runtime::watcher::Event::Apply(ns));
    }
    let allowed: Vec<&str> = [RELEASE_NS, "team-a", "team-b", "team-c", "never-seen"]
        .into_iter()
        .filter(|ns| tenancy.may_use_default_credentials(ns).is_ok())
        .collect();
    assert_eq!(allowed, [RELEASE_NS, "team-b"]);
    // Turned off, only labelled namespaces remain; ["*"] is every namespace.
    for (values, expected) in [
        (
            "defaultCredentials: {allowReleaseNamespace: false}\n",
            vec!["--default-credentials-namespace-selector=vipoperator.dev/default-credentials=allowed"],
        ),
        (
            "defaultCredentials: {namespaces: ['*'], namespaceSelector: ''}\n",
            vec!["--default-credentials-namespaces=*", "--default-credentials-namespaces=vip-system"],
        ),
    ] {
        let args: Vec<String> =
            render(values).args().into_iter().filter(|a| a.starts_with("--default-credentials")).collect();
        assert_eq!(args, expected, "{values}");
    }
}

/// The Deployment's args parse with the binary's own command line.
#[test]
fn rendered_args_parse_with_the_cli() {
    use clap::Parser;
    for values in ["{}".to_owned(), full_values()] {
        let r = render(&values);
        let args = std::iter::once("vip-operator".to_owned()).chain(r.args());
        if let Err(e) = vip_operator::cli::Cli::try_parse_from(args) {
            panic!("{e}");
        }
    }
}
