//! PATCH bodies other than server-side apply: JSON merge patch (RFC 7386) and JSON patch
//! (RFC 6902) with the exact semantics of the library kube-apiserver uses (`evanphx/json-patch`).

use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Parses an RFC 6901 pointer into reference tokens.
fn parse_pointer(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest =
        path.strip_prefix('/').ok_or_else(|| format!("JSON pointer must be empty or start with '/': {path:?}"))?;
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

fn array_index(token: &str, len: usize, allow_end: bool) -> Option<usize> {
    if allow_end && token == "-" {
        return Some(len);
    }
    if token.len() > 1 && token.starts_with('0') {
        return None;
    }
    let i: usize = token.parse().ok()?;
    let limit = if allow_end { len } else { len.saturating_sub(1) };
    (i <= limit && (allow_end || len > 0)).then_some(i)
}

/// The container (object or array) that holds the last token of `tokens`.
fn parent_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    let mut current = doc;
    for token in &tokens[..tokens.len().saturating_sub(1)] {
        current = match current {
            Value::Object(map) => map.get_mut(token)?,
            Value::Array(items) => {
                let i = array_index(token, items.len(), false)?;
                items.get_mut(i)?
            }
            _ => return None,
        };
    }
    Some(current)
}

fn get<'a>(doc: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    let mut current = doc;
    for token in tokens {
        current = match current {
            Value::Object(map) => map.get(token)?,
            Value::Array(items) => items.get(array_index(token, items.len(), false)?)?,
            _ => return None,
        };
    }
    Some(current)
}

fn add(doc: &mut Value, tokens: &[String], value: Value, path: &str) -> Result<(), String> {
    let Some(last) = tokens.last() else {
        *doc = value;
        return Ok(());
    };
    let missing = || format!("add operation does not apply: doc is missing path: {path:?}: missing value");
    match parent_mut(doc, tokens).ok_or_else(missing)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) => {
            let i = array_index(last, items.len(), true)
                .ok_or_else(|| format!("add operation does not apply: index out of bounds: {path:?}"))?;
            items.insert(i, value);
            Ok(())
        }
        _ => Err(missing()),
    }
}

fn remove(doc: &mut Value, tokens: &[String], path: &str, op: &str) -> Result<Value, String> {
    let missing = || format!("{op} operation does not apply: doc is missing path: {path:?}: missing value");
    let last = tokens.last().ok_or_else(missing)?;
    match parent_mut(doc, tokens).ok_or_else(missing)? {
        Value::Object(map) => map.remove(last).ok_or_else(missing),
        Value::Array(items) => {
            let i = array_index(last, items.len(), false).ok_or_else(missing)?;
            Ok(items.remove(i))
        }
        _ => Err(missing()),
    }
}

/// Applies an RFC 6902 JSON patch. Any failure (including a failed `test`) is the 422 that
/// kube-apiserver returns; a body that is not a list of operations is a 400.
///
/// `test` follows `evanphx/json-patch` v4: when the path's parent exists but the value is
/// missing (or null), the test passes only for `"value": null`; a null test value against a
/// present value fails; otherwise the values must be equal.
pub(crate) fn json_patch(doc: &mut Value, patch: &Value) -> ApiResult<()> {
    let ops = patch.as_array().ok_or_else(|| ApiError::bad_request("json patch must be a JSON array of operations"))?;
    for op in ops {
        let Some(kind) = op.get("op").and_then(Value::as_str) else {
            return Err(ApiError::bad_request(format!("json patch operation without \"op\": {op}")));
        };
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::patch_not_applicable(format!("operation {kind:?} is missing \"path\"")))?;
        apply_op(doc, kind, path, op).map_err(ApiError::patch_not_applicable)?;
    }
    Ok(())
}

fn apply_op(doc: &mut Value, kind: &str, path: &str, op: &Value) -> Result<(), String> {
    let tokens = parse_pointer(path)?;
    let value = || op.get("value").cloned().ok_or_else(|| format!("{kind} operation is missing \"value\""));
    match kind {
        "add" => add(doc, &tokens, value()?, path),
        "remove" => remove(doc, &tokens, path, "remove").map(drop),
        "replace" => {
            let new = value()?;
            remove(doc, &tokens, path, "replace")?;
            add(doc, &tokens, new, path)
        }
        "test" => {
            let expected = value()?;
            if !tokens.is_empty() && parent_mut(doc, &tokens).is_none() {
                return Err(format!("test operation does not apply: is missing path: {path:?}"));
            }
            let actual = get(doc, &tokens).filter(|v| !v.is_null());
            let passed = match actual {
                None => expected.is_null(),
                Some(actual) => !expected.is_null() && *actual == expected,
            };
            if passed { Ok(()) } else { Err(format!("testing value {path:?} failed: test failed")) }
        }
        other => Err(format!("Unexpected kind: {other}")), // move and copy are not modelled
    }
}
