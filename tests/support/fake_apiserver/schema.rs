//! What kube-apiserver's decoder does to a custom resource with its CRD's structural schema,
//! before any validation (`apiextensions-apiserver/pkg/apiserver/schema/{pruning,defaulting}`):
//!
//! 1. [`prune`]: a field that the schema does not declare is dropped, unless
//!    `x-kubernetes-preserve-unknown-fields: true` or `additionalProperties` allows it;
//! 2. [`prune_nulls`]: a `null` where the schema allows none (not `nullable`) and has no
//!    `default` is dropped (`PruneNonNullableNullsWithoutDefaults`);
//! 3. [`default`]: a missing field with a `default`, or a non-nullable `null` one, gets the
//!    default (`structuraldefaulting.Default`), inside every object that is present, defaults
//!    just inserted included.
//!
//! `kube_cel::apply_defaults` is close but not the same: it neither replaces non-nullable
//! nulls nor defaults inside a default it has just inserted (a `default: {}` object whose
//! properties have defaults), so the apiserver's algorithm is reproduced here.

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

fn nullable(schema: &Value) -> bool {
    schema["nullable"] == Value::Bool(true)
}

/// The schema of field `key` of an object with `schema`: its property, else
/// `additionalProperties` when that is a schema.
fn field_schema<'a>(schema: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    let schema = schema?;
    schema
        .get("properties")
        .and_then(|p| p.get(key))
        .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
}

/// Drops `null` values that the schema neither allows (`nullable`) nor defaults.
pub(crate) fn prune_nulls(obj: &mut Value, schema: &Value) {
    fn walk(value: &mut Value, schema: Option<&Value>) {
        match value {
            Value::Object(map) => {
                map.retain(|key, child| {
                    let sub = field_schema(schema, key);
                    !(child.is_null() && sub.is_some_and(|s| !nullable(s) && s.get("default").is_none()))
                });
                for (key, child) in map.iter_mut() {
                    walk(child, field_schema(schema, key));
                }
            }
            Value::Array(items) => {
                let sub = schema.and_then(|s| s.get("items"));
                for item in items {
                    walk(item, sub);
                }
            }
            _ => {}
        }
    }
    walk(obj, Some(schema));
}

/// Fills in `default`s: a property that is missing, or `null` without being `nullable`, gets a
/// copy of its default; then every value the schema describes is defaulted in turn.
pub(crate) fn default(value: &mut Value, schema: &Value) {
    let non_nullable_null = |v: &Value, s: &Value| v.is_null() && !nullable(s);
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = schema.get("properties") {
                for (key, prop) in props {
                    let Some(default) = prop.get("default") else {
                        continue;
                    };
                    if map.get(key).is_none_or(|v| non_nullable_null(v, prop)) {
                        map.insert(key.clone(), default.clone());
                    }
                }
            }
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map.iter_mut() {
                if let Some(prop) = schema.get("properties").and_then(|p| p.get(key)) {
                    default(child, prop);
                } else if let Some(additional) = additional {
                    if non_nullable_null(child, additional) {
                        *child = additional.get("default").cloned().unwrap_or(Value::Null);
                    }
                    default(child, additional);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for item in items {
                    if non_nullable_null(item, sub) {
                        *item = sub.get("default").cloned().unwrap_or(Value::Null);
                    }
                    default(item, sub);
                }
            }
        }
        _ => {}
    }
}
