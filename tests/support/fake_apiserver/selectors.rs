//! `labelSelector` and `fieldSelector` query parameters.

use serde_json::Value;

use super::store::meta_str;

#[derive(Debug, Clone, PartialEq)]
enum LabelOp {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// A parsed label selector: equality-based (`k=v`, `k==v`, `k!=v`), set-based
/// (`k in (a,b)`, `k notin (a,b)`) and existence (`k`, `!k`) requirements, all ANDed.
#[derive(Debug, Clone, Default)]
pub(crate) struct LabelSelector(Vec<(String, LabelOp)>);

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in split_terms(s) {
            let (key, op) = if let Some(key) = term.strip_prefix('!') {
                (key.trim(), LabelOp::DoesNotExist)
            } else if let Some((lhs, rest)) = term.split_once('(') {
                let values_text = rest
                    .strip_suffix(')')
                    .ok_or_else(|| format!("unable to parse requirement: missing ')' in {term:?}"))?;
                let values: Vec<String> = values_text.split(',').map(|v| v.trim().to_string()).collect();
                let mut words = lhs.split_whitespace();
                let (key, op) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
                let op = match op {
                    "in" => LabelOp::In(values),
                    "notin" => LabelOp::NotIn(values),
                    other => {
                        return Err(format!("unable to parse requirement: unknown operator {other:?}"));
                    }
                };
                (key, op)
            } else if let Some((k, v)) = term.split_once("!=") {
                (k.trim(), LabelOp::NotEquals(v.trim().to_string()))
            } else if let Some((k, v)) = term.split_once("==") {
                (k.trim(), LabelOp::Equals(v.trim().to_string()))
            } else if let Some((k, v)) = term.split_once('=') {
                (k.trim(), LabelOp::Equals(v.trim().to_string()))
            } else {
                (term, LabelOp::Exists)
            };
            if !valid_key(key) {
                return Err(format!("unable to parse requirement: invalid label key {key:?}"));
            }
            requirements.push((key.to_string(), op));
        }
        Ok(Self(requirements))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        self.0.iter().all(|(key, op)| {
            let value = labels.get(key).and_then(Value::as_str);
            match op {
                LabelOp::Equals(v) => value == Some(v.as_str()),
                LabelOp::NotEquals(v) => value != Some(v.as_str()),
                LabelOp::In(vs) => value.is_some_and(|x| vs.iter().any(|v| v == x)),
                LabelOp::NotIn(vs) => !value.is_some_and(|x| vs.iter().any(|v| v == x)),
                LabelOp::Exists => value.is_some(),
                LabelOp::DoesNotExist => value.is_none(),
            }
        })
    }
}

/// A parsed field selector. Like kube-apiserver for custom resources, only
/// `metadata.name` and `metadata.namespace` are supported (with `=`, `==` and `!=`).
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in split_terms(s) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{term}'"));
            };
            let field = field.trim();
            if field != "metadata.name" && field != "metadata.namespace" {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(Self(terms))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => meta_str(obj, "name"),
                _ => meta_str(obj, "namespace"),
            }
            .unwrap_or_default();
            (actual == value) == *equal
        })
    }
}

/// Which objects a list or watch is about.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    /// `None` for cluster-scoped resources and all-namespaces requests.
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, obj: &Value) -> bool {
        let in_namespace = self.namespace.as_deref().is_none_or(|ns| meta_str(obj, "namespace") == Some(ns));
        in_namespace && self.labels.matches(obj) && self.fields.matches(obj)
    }
}
