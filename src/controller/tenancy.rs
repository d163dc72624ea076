//! Who may spend the operator's cloud credentials, and on which projects.
//!
//! - **Default credentials are opt-in per namespace.** A binding that names no Secret uses the
//!   operator's own credentials only in a namespace the admin allowed: named on the command
//!   line (`--default-credentials-namespaces`) or matching a label selector
//!   (`--default-credentials-namespace-selector`).
//! - **Projects and regions are scoped per namespace**, for default credentials and a
//!   namespace's own Secrets alike, by the annotations [`ALLOWED_PROJECTS_ANNOTATION`] and
//!   [`ALLOWED_REGIONS_ANNOTATION`] on the Namespace (absent: no restriction).
//!
//! Both live on the Namespace object, which is cluster-scoped: a namespace's own users (even
//! with the built-in `admin` role, granted by a RoleBinding) cannot change them, only whoever
//! may update Namespaces, normally the cluster admin. They are read from a metadata-only watch
//! of Namespaces, so relabelling takes effect without a restart. Nothing is decided before
//! that watch has listed every namespace once.
//!
//! The checks gate binds only. A deletion unbinds with what the bind used (recorded in
//! `status.boundWith`), whatever the policy says now: narrowing a policy must never trap a VIP.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::core::{Expression, PartialObjectMeta, Selector, SelectorExt};
use kube::runtime::watcher;

use crate::api::v1alpha1::Reason;

use crate::controller::binding::decide::Verdict;

/// Comma-separated Huawei project IDs bindings in the namespace may target.
pub const ALLOWED_PROJECTS_ANNOTATION: &str = "vipoperator.dev/allowed-projects";
/// Comma-separated regions bindings in the namespace may target.
pub const ALLOWED_REGIONS_ANNOTATION: &str = "vipoperator.dev/allowed-regions";

/// Which namespaces may use the operator's default credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultCredentialsScope {
    /// Every namespace (the demo against the simulator, or an admin's explicit `*`).
    Everywhere,
    /// These namespaces by name, and those whose labels match the selector.
    Only { namespaces: BTreeSet<String>, selector: Option<Selector> },
}

impl DefaultCredentialsScope {
    pub fn nowhere() -> Self {
        Self::Only { namespaces: BTreeSet::new(), selector: None }
    }

    pub fn is_nowhere(&self) -> bool {
        matches!(self, Self::Only { namespaces, selector: None } if namespaces.is_empty())
    }

    fn allows(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Self::Everywhere => true,
            Self::Only { namespaces, selector } => {
                namespaces.contains(namespace) || selector.as_ref().is_some_and(|s| s.matches(labels))
            }
        }
    }

    /// What an admin does to let `namespace` in, in words a person can follow.
    fn how_to_allow(&self, namespace: &str) -> String {
        let Self::Only { selector, .. } = self else { return String::new() };
        let single_label = selector.as_ref().and_then(|s| {
            let mut exprs = s.clone().into_iter();
            match (exprs.next(), exprs.next()) {
                (Some(Expression::Equal(k, v)), None) => Some(format!("{k}={v}")),
                // kubectl needs a value; any value exists.
                (Some(Expression::Exists(k)), None) => Some(format!("{k}=true")),
                _ => None,
            }
        });
        match (single_label, selector) {
            (Some(label), _) => {
                format!("a cluster admin allows it with `kubectl label namespace {namespace} {label} --overwrite`")
            }
            (None, Some(s)) => format!("a cluster admin allows it by labelling the namespace to match `{s}`"),
            (None, None) => "a cluster admin allows it with the operator's --default-credentials-namespaces".into(),
        }
    }
}

/// A label selector in the kubectl syntax (`a=b,c!=d,e in (f,g),h notin (i),j,!k`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{selector:?} is not a label selector: {why}")]
pub struct SelectorError {
    selector: String,
    why: &'static str,
}

/// Parses a label selector. kube-rs builds selectors but does not parse the string form.
pub fn parse_selector(text: &str) -> Result<Selector, SelectorError> {
    let fail = |why| SelectorError { selector: text.to_string(), why };
    let mut exprs = vec![];
    for term in split_terms(text).ok_or_else(|| fail("unbalanced parentheses"))? {
        let term = term.trim();
        if term.is_empty() {
            return Err(fail("empty term"));
        }
        exprs.push(parse_term(term).ok_or_else(|| fail("expected key, !key, key=value, key!=value or key in (...)"))?);
    }
    if exprs.is_empty() {
        return Err(fail("empty (use --default-credentials-namespaces '*' for every namespace)"));
    }
    Ok(exprs.into_iter().collect())
}

/// Splits on commas outside parentheses.
fn split_terms(text: &str) -> Option<Vec<&str>> {
    let (mut depth, mut start, mut terms) = (0i32, 0usize, vec![]);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return None;
        }
    }
    (depth == 0).then(|| {
        terms.push(&text[start..]);
        terms
    })
}

fn parse_term(term: &str) -> Option<Expression> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 317
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    };
    let value_ok = |s: &str| s.is_empty() || valid(s);
    let set = |rest: &str| -> Option<BTreeSet<String>> {
        let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
        let values: BTreeSet<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
        values.iter().all(|v| value_ok(v)).then_some(values)
    };
    if let Some(key) = term.strip_prefix('!') {
        return valid(key.trim()).then(|| Expression::DoesNotExist(key.trim().into()));
    }
    if let Some((key, value)) = term.split_once("!=") {
        let (key, value) = (key.trim(), value.trim());
        return (valid(key) && value_ok(value)).then(|| Expression::NotEqual(key.into(), value.into()));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        let (key, value) = (key.trim(), value.trim());
        return (valid(key) && value_ok(value)).then(|| Expression::Equal(key.into(), value.into()));
    }
    let mut words = term.splitn(2, char::is_whitespace);
    let key = words.next()?.trim();
    match words.next().map(str::trim_start) {
        None => valid(key).then(|| Expression::Exists(key.into())),
        Some(rest) if valid(key) && rest.starts_with("notin") => Some(Expression::NotIn(key.into(), set(&rest[5..])?)),
        Some(rest) if valid(key) && rest.starts_with("in") => Some(Expression::In(key.into(), set(&rest[2..])?)),
        Some(_) => None,
    }
}

/// What the policy says about one namespace: only what decisions read, so that unrelated label
/// churn is no news (and releases nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NamespacePolicy {
    default_credentials: bool,
    projects: Option<BTreeSet<String>>,
    regions: Option<BTreeSet<String>>,
}

/// A comma-separated annotation. Present but empty means "none allowed" (the stricter reading
/// of an admin's edit); absent means "no restriction".
fn list(annotation: Option<&String>) -> Option<BTreeSet<String>> {
    annotation.map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
}

/// At most this many allowed values are named in a message (events refuse notes over 1 KiB).
const NAMED_IN_MESSAGES: usize = 8;

fn named(values: &BTreeSet<String>) -> String {
    if values.is_empty() {
        return "none".into();
    }
    let shown: Vec<&str> = values.iter().take(NAMED_IN_MESSAGES).map(String::as_str).collect();
    let more = values.len().saturating_sub(NAMED_IN_MESSAGES);
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

/// The tenancy policy and what the namespaces' labels and annotations make of it.
pub struct Tenancy {
    scope: DefaultCredentialsScope,
    namespaces: RwLock<HashMap<String, NamespacePolicy>>,
    buffer: RwLock<Option<HashMap<String, NamespacePolicy>>>,
    /// Whether decisions wait for the namespace watch (false in tests that drive a reconcile
    /// without one: every namespace then looks unlabelled and unannotated).
    watched: AtomicBool,
    listed: AtomicBool,
    /// Bumped on every policy change: a refusal decided under an older epoch is looked at
    /// again instead of held (the change may have raced the decision).
    epoch: AtomicU64,
}

impl Default for Tenancy {
    /// Default credentials everywhere, nothing scoped: what a caller that sets no policy gets.
    fn default() -> Self {
        Self::new(DefaultCredentialsScope::Everywhere)
    }
}

impl Tenancy {
    pub fn new(scope: DefaultCredentialsScope) -> Self {
        Self {
            scope,
            namespaces: RwLock::default(),
            buffer: RwLock::default(),
            watched: AtomicBool::new(false),
            listed: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
        }
    }

    pub fn scope(&self) -> &DefaultCredentialsScope {
        &self.scope
    }

    fn policy_of(&self, ns: &PartialObjectMeta<Namespace>) -> NamespacePolicy {
        let annotations = ns.annotations();
        NamespacePolicy {
            default_credentials: self.scope.allows(&ns.name_any(), ns.labels()),
            projects: list(annotations.get(ALLOWED_PROJECTS_ANNOTATION)),
            regions: list(annotations.get(ALLOWED_REGIONS_ANNOTATION)),
        }
    }

    /// Without the watch (tests), an unlisted namespace has no labels and no annotations.
    fn policy(&self, namespace: &str) -> NamespacePolicy {
        let map = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
        map.get(namespace).cloned().unwrap_or_else(|| NamespacePolicy {
            default_credentials: self.scope.allows(namespace, &BTreeMap::new()),
            ..Default::default()
        })
    }

    /// The namespace watch feeds this from now on: decide nothing before it has listed.
    pub fn expect_watch(&self) {
        self.watched.store(true, Ordering::SeqCst);
    }

    pub fn synced(&self) -> bool {
        !self.watched.load(Ordering::SeqCst) || self.listed.load(Ordering::SeqCst)
    }

    /// Whether the policy of `namespace` is known: the watch has listed, and has seen this
    /// namespace. A binding in a namespace created a moment ago can arrive before its
    /// Namespace does; deciding then would read "no annotations" and allow anything.
    pub fn knows(&self, namespace: &str) -> bool {
        if !self.watched.load(Ordering::SeqCst) {
            return true;
        }
        self.listed.load(Ordering::SeqCst)
            && self.namespaces.read().unwrap_or_else(|p| p.into_inner()).contains_key(namespace)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Applies a namespace watch event; returns the namespaces whose policy changed. The first
    /// list reports nothing: no binding has been decided before it.
    pub fn apply(&self, event: &watcher::Event<PartialObjectMeta<Namespace>>) -> Vec<String> {
        let mut map = self.namespaces.write().unwrap_or_else(|p| p.into_inner());
        let mut buffer = self.buffer.write().unwrap_or_else(|p| p.into_inner());
        let mut changed = vec![];
        let mut set = |map: &mut HashMap<String, NamespacePolicy>, name: String, policy: Option<NamespacePolicy>| {
            let before = map.get(&name).cloned();
            match &policy {
                Some(p) => map.insert(name.clone(), p.clone()),
                None => map.remove(&name),
            };
            if before != policy {
                changed.push(name);
            }
        };
        match event {
            watcher::Event::Apply(ns) => set(&mut map, ns.name_any(), Some(self.policy_of(ns))),
            watcher::Event::Delete(ns) => set(&mut map, ns.name_any(), None),
            watcher::Event::Init => *buffer = Some(HashMap::new()),
            watcher::Event::InitApply(ns) => {
                if let Some(b) = buffer.as_mut() {
                    b.insert(ns.name_any(), self.policy_of(ns));
                }
            }
            watcher::Event::InitDone => {
                let fresh = buffer.take().unwrap_or_default();
                let gone: Vec<String> = map.keys().filter(|k| !fresh.contains_key(*k)).cloned().collect();
                for name in gone {
                    set(&mut map, name, None);
                }
                for (name, policy) in fresh {
                    set(&mut map, name, Some(policy));
                }
                if !self.listed.swap(true, Ordering::SeqCst) {
                    changed.clear();
                }
            }
        }
        if !changed.is_empty() {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        changed
    }

    /// May a binding in `namespace` use the operator's default credentials?
    pub fn may_use_default_credentials(&self, namespace: &str) -> Result<(), Verdict> {
        if self.policy(namespace).default_credentials {
            return Ok(());
        }
        Err(Verdict {
            reason: Reason::DefaultCredentialsNotAllowed,
            message: format!(
                "namespace {namespace} may not use the operator's default credentials: {}, or set spec.credentialsSecretRef to a Secret in {namespace}",
                self.scope.how_to_allow(namespace)
            ),
        })
    }

    /// May a binding in `namespace` target `project` in `region` (whatever its credentials)?
    pub fn may_target(&self, namespace: &str, project: &str, region: &str) -> Result<(), Verdict> {
        let policy = self.policy(namespace);
        let refuse = |what: &str, value: &str, annotation: &str, allowed: &BTreeSet<String>| Verdict {
            reason: Reason::ProjectNotAllowed,
            message: format!(
                "{what} {value:?} is not allowed in namespace {namespace} (its {annotation} annotation allows {}): use an allowed one, or ask a cluster admin to add it",
                named(allowed)
            ),
        };
        if let Some(allowed) = &policy.projects
            && !allowed.contains(project)
        {
            return Err(refuse("project", project, ALLOWED_PROJECTS_ANNOTATION, allowed));
        }
        if let Some(allowed) = &policy.regions
            && !allowed.contains(region)
        {
            return Err(refuse("region", region, ALLOWED_REGIONS_ANNOTATION, allowed));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> PartialObjectMeta<Namespace> {
        let mut meta = PartialObjectMeta::<Namespace>::default();
        meta.metadata.name = Some(name.into());
        meta.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        meta.metadata.annotations = Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        meta
    }

    fn selector(s: &str) -> Selector {
        parse_selector(s).expect("valid selector")
    }

    #[test]
    fn selectors_parse_as_kubectl_reads_them() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let s = selector("team in (a, b),env!=prod,vipoperator.dev/default-credentials,!frozen");
        assert!(s.matches(&labels(&[("team", "a"), ("vipoperator.dev/default-credentials", "x")])));
        assert!(!s.matches(&labels(&[("team", "c"), ("vipoperator.dev/default-credentials", "x")])));
        assert!(!s.matches(&labels(&[("team", "a"), ("vipoperator.dev/default-credentials", "x"), ("frozen", "")])));
        assert!(!s.matches(&labels(&[("team", "a"), ("env", "prod"), ("vipoperator.dev/default-credentials", "")])));
        assert!(selector("a==b").matches(&labels(&[("a", "b")])));
        assert!(selector("a notin (b)").matches(&labels(&[("a", "c")])));
        for bad in ["", ",", "a=b,", "a in b", "a in (b", "a)(", "a b", "a=b c", "!", "t€am notin (x)", "a in (b c)"]
        {
            assert!(parse_selector(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn default_credentials_follow_names_and_labels_and_relabelling() {
        let t = Tenancy::new(DefaultCredentialsScope::Only {
            namespaces: BTreeSet::from(["ops".to_string()]),
            selector: Some(selector("vipoperator.dev/default-credentials=allowed")),
        });
        t.expect_watch();
        assert!(!t.synced(), "nothing is decided before the namespaces are listed");
        t.apply(&watcher::Event::Init);
        t.apply(&watcher::Event::InitApply(ns("team-a", &[], &[])));
        t.apply(&watcher::Event::InitDone);
        assert!(t.synced());
        assert!(t.may_use_default_credentials("ops").is_ok(), "named on the command line");
        let refused = t.may_use_default_credentials("team-a").expect_err("not labelled");
        assert_eq!(refused.reason, Reason::DefaultCredentialsNotAllowed);
        assert!(
            refused.message.contains("kubectl label namespace team-a vipoperator.dev/default-credentials=allowed"),
            "{}",
            refused.message
        );
        let changed =
            t.apply(&watcher::Event::Apply(ns("team-a", &[("vipoperator.dev/default-credentials", "allowed")], &[])));
        assert_eq!(changed, vec!["team-a"]);
        assert!(t.may_use_default_credentials("team-a").is_ok());
        assert!(
            t.apply(&watcher::Event::Apply(ns("team-a", &[("vipoperator.dev/default-credentials", "allowed")], &[])))
                .is_empty(),
            "no change, no news"
        );
        assert!(DefaultCredentialsScope::Everywhere.allows("any", &BTreeMap::new()));
        assert!(Tenancy::new(DefaultCredentialsScope::nowhere()).may_use_default_credentials("ops").is_err());
    }

    #[test]
    fn projects_and_regions_are_scoped_by_annotation() {
        let t = Tenancy::default();
        assert!(t.may_target("team-a", "p1", "r1").is_ok(), "no annotation: no restriction");
        t.apply(&watcher::Event::Apply(ns(
            "team-a",
            &[],
            &[(ALLOWED_PROJECTS_ANNOTATION, "p1, p2"), (ALLOWED_REGIONS_ANNOTATION, "cn-north-4")],
        )));
        assert!(t.may_target("team-a", "p2", "cn-north-4").is_ok());
        let refused = t.may_target("team-a", "p3", "cn-north-4").expect_err("p3 is not listed");
        assert_eq!(refused.reason, Reason::ProjectNotAllowed);
        assert!(refused.message.contains("\"p3\"") && refused.message.contains("p1, p2"), "{}", refused.message);
        assert!(t.may_target("team-a", "p1", "ap-southeast-1").is_err());
        assert!(t.may_target("team-b", "p3", "anywhere").is_ok(), "other namespaces are not affected");
        let changed = t.apply(&watcher::Event::Delete(ns("team-a", &[], &[])));
        assert_eq!(changed, vec!["team-a"]);
        assert!(t.may_target("team-a", "p3", "x").is_ok());
    }
}
