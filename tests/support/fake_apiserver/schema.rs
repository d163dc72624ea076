//! Pruning of unknown fields in custom resources, as kube-apiserver does with a CRD's structural
//! schema: a field that the schema does not declare is dropped, unless
//! `x-kubernetes-preserve-unknown-fields: true` or `additionalProperties` allows it.
//! Only pruning is modelled: no validation (types, formats, CEL rules) and no defaulting.

use serde_json::Value;

/// Prunes `obj` (a whole custom resource) in place; returns the dropped fields' paths.
pub(crate) fn prune(obj: &mut Value, schema: &Value) -> Vec<String> {
    let mut pruned = Vec::new();
    if let Value::Object(map) = obj {
        for (key, value) in map.iter_mut() {
            // apiVersion, kind and metadata are handled by the generic machinery.
            if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(sub) = schema.get("properties").and_then(|p| p.get(key)) {
                prune_node(value, sub, &format!(".{key}"), &mut pruned);
            }
        }
        map.retain(|key, _| {
            let keep = matches!(key.as_str(), "apiVersion" | "kind" | "metadata") || allows(schema, key);
            if !keep {
                pruned.push(format!(".{key}"));
            }
            keep
        });
    }
    pruned
}

fn preserves_unknown(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true)
}

/// Whether an object with `schema` may hold a field named `key`.
fn allows(schema: &Value, key: &str) -> bool {
    schema.get("properties").is_some_and(|p| p.get(key).is_some())
        || schema.get("additionalProperties").is_some_and(|a| *a != Value::Bool(false))
        || preserves_unknown(schema)
}

fn prune_node(value: &mut Value, schema: &Value, path: &str, pruned: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let embedded = schema["x-kubernetes-embedded-resource"] == Value::Bool(true);
            map.retain(|key, _| {
                let keep =
                    allows(schema, key) || (embedded && matches!(key.as_str(), "apiVersion" | "kind" | "metadata"));
                if !keep {
                    pruned.push(format!("{path}.{key}"));
                }
                keep
            });
            for (key, child) in map.iter_mut() {
                let sub = schema
                    .get("properties")
                    .and_then(|p| p.get(key))
                    .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(sub) = sub {
                    prune_node(child, sub, &format!("{path}.{key}"), pruned);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_node(item, sub, &format!("{path}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}
