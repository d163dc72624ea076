//! Validation of custom resources against their CRD's `openAPIV3Schema`, as kube-apiserver's
//! custom resource strategy does it (`apiextensions-apiserver/pkg/registry/customresource`),
//! after pruning and defaulting (`schema.rs`):
//!
//! 1. the OpenAPI value validations, as kube-openapi's `SchemaValidator` checks them and
//!    `kubeOpenAPIResultToFieldErrors` turns them into field errors: `type` (with `nullable`
//!    and `x-kubernetes-int-or-string`), the formats the apiserver supports (others are
//!    ignored, as `StripUnsupportedFormatsPostProcessor` does), `maxLength`/`minLength`/
//!    `pattern`, `multipleOf`/`minimum`/`maximum` (and the exclusive forms), `items`/
//!    `minItems`/`maxItems`/`uniqueItems`, `enum`, `min/maxProperties`,
//!    `additionalProperties`, `properties`, `required`, `allOf`/`anyOf`/`oneOf`/`not`.
//!    On a create the whole object is checked; on an update of the main resource too, and
//!    on a `/status` write only `status`, against the status schema (its messages name
//!    fields relative to `status`, like the real status validator's);
//! 2. the `x-kubernetes-list-type` invariants (`set` items and `map` keys unique);
//! 3. the `x-kubernetes-validations` CEL rules, evaluated node by node with kube-cel (`self`;
//!    `oldSelf` on updates where the old value correlates: object fields, `map`-type list
//!    items by key; transition rules do not run without it unless `optionalOldSelf`),
//!    unless step 1 or 2 found an error of a blocking type (Required, NotSupported,
//!    TooLong, TooMany, TypeInvalid), in which case the apiserver adds one error instead.
//!
//! Updates ratchet (the `CRDValidationRatcheting` behaviour, GA since 1.33): an error found in
//! a value that equals its correlated old value (or whose nearest correlated ancestor does) is
//! dropped, except the errors of rules that use `oldSelf`. So a status write does not fail on
//! an unchanged spec, and an object stored before a schema change can still be updated.
//!
//! Metadata (`apiVersion`, `kind`, `metadata`) is not validated against the schema.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::{LazyLock, Mutex};

use regex::Regex;
use serde_json::{Map, Number, Value, json};

use super::error::{FieldError, go_float, go_json, go_quote};

/// Which write is validated.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Write<'a> {
    Create,
    /// A write of the main resource (PUT, patch, apply) over the stored object.
    Update(&'a Value),
    /// A write of the `/status` subresource over the stored object.
    Status(&'a Value),
}

const NOT_CHECKED: &str = "some validation rules were not checked because the object was invalid; \
                           correct the existing errors to complete validation";

/// The field errors kube-apiserver's strategy finds in `obj` (already pruned and defaulted),
/// in its order: schema, list types, CEL.
pub(crate) fn validate(schema: &Value, obj: &Value, write: Write) -> Vec<FieldError> {
    let old = match write {
        Write::Create => None,
        Write::Update(old) | Write::Status(old) => Some(old),
    };
    let mut errors = Vec::new();
    match write {
        Write::Status(old) => {
            let status_schema = schema.get("properties").and_then(|p| p.get("status"));
            if let (Some(status), Some(status_schema)) = (obj.get("status"), status_schema) {
                let checker = Structural { prefix: "status" };
                errors.extend(checker.node(status_schema, status, "", old.get("status"), false, false));
            }
        }
        Write::Create | Write::Update(_) => {
            let checker = Structural { prefix: "" };
            errors.extend(checker.node(schema, obj, "", old, false, true));
        }
    }

    let list_errors = |v: &Value| {
        let mut errs = Vec::new();
        list_types(schema, v, &Path::default(), &mut errs);
        errs
    };
    match write {
        Write::Create => errors.extend(list_errors(obj)),
        Write::Update(old) => {
            if list_errors(old).is_empty() {
                errors.extend(list_errors(obj));
            }
        }
        Write::Status(old) => {
            let new = list_errors(obj);
            if !new.is_empty() && list_errors(old).is_empty() {
                errors.extend(new);
            }
        }
    }

    if has_rules(schema) {
        if errors.iter().any(FieldError::blocks_cel) {
            errors.push(FieldError::invalid("<nil>", &Value::Null, NOT_CHECKED));
        } else {
            let mut cel = Cel { errors: &mut errors };
            cel.node(schema, obj, old, &Path::default(), old, false, true);
        }
    }
    errors
}

// ---------------------------------------------------------------------------------------------
// OpenAPI value validations (kube-openapi `validate.SchemaValidator`)
// ---------------------------------------------------------------------------------------------

/// The formats a CRD's string schema can use (`apiextensions-apiserver/pkg/apiserver/validation/
/// formats.go` at 1.36, names without dashes as go-openapi normalizes them).
const STRING_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
    "quantity",
    "k8sshortname",
    "k8slongname",
];

struct Structural {
    /// `status` when validating the status of a `/status` write, else empty.
    prefix: &'static str,
}

/// The schema types of a node: `x-kubernetes-int-or-string` means integer or string.
fn types_of(s: &Value) -> Vec<&str> {
    if s["x-kubernetes-int-or-string"] == Value::Bool(true) {
        return vec!["integer", "string"];
    }
    s.get("type").and_then(Value::as_str).filter(|t| !t.is_empty()).into_iter().collect()
}

/// The node's `format` if the apiserver checks it (`StripUnsupportedFormatsPostProcessor`).
fn effective_format<'a>(s: &'a Value, types: &[&str]) -> Option<&'a str> {
    let format = s.get("format")?.as_str().filter(|f| !f.is_empty())?;
    let single = if types.len() == 1 { types[0] } else { "" };
    let kept = match single {
        "" | "string" => STRING_FORMATS.contains(&format.replace('-', "").as_str()),
        "integer" => matches!(format, "int32" | "int64"),
        "number" => matches!(format, "float" | "double"),
        _ => false,
    };
    kept.then_some(format)
}

fn as_i64(s: &Value, key: &str) -> Option<i64> {
    s.get(key).and_then(Value::as_i64)
}

impl Structural {
    /// The field path of an error whose kube-openapi name is `name` (`.spec` for a required
    /// field of the root: the leading dot goes).
    fn field(&self, name: &str) -> String {
        let name = name.strip_prefix('.').unwrap_or(name);
        match (self.prefix.is_empty(), name.is_empty()) {
            (true, true) => "<nil>".into(),
            (true, false) => name.into(),
            (false, true) => self.prefix.into(),
            (false, false) => format!("{}.{name}", self.prefix),
        }
    }

    /// The errors of one value (and its children). `path` is its name in messages, `corr` its
    /// correlated old value, `inherited` whether its nearest correlated ancestor is unchanged.
    fn node(
        &self,
        s: &Value,
        v: &Value,
        path: &str,
        corr: Option<&Value>,
        inherited: bool,
        top: bool,
    ) -> Vec<FieldError> {
        let ratchet = corr.map_or(inherited, |old| old == v);
        if ratchet {
            // Every error found here would be ratcheted away.
            return Vec::new();
        }
        self.check(s, v, path, corr, top)
    }

    fn check(&self, s: &Value, v: &Value, path: &str, corr: Option<&Value>, top: bool) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let types = types_of(s);
        let format = effective_format(s, &types);
        let enumeration = s.get("enum").and_then(Value::as_array).filter(|e| !e.is_empty());
        if v.is_null() {
            let nullable = s["nullable"] == Value::Bool(true);
            if !types.is_empty() && !types.contains(&"null") && !nullable {
                errs.push(self.type_error(path, &types.join(","), "null"));
            }
            if let Some(values) = enumeration {
                self.enum_check(values, v, path, &mut errs);
            }
            return errs;
        }
        if (!types.is_empty() || format.is_some())
            && let Some(e) = self.type_check(path, &types, format, v)
        {
            errs.push(e);
        }
        self.junctors(s, v, path, corr, &mut errs);
        match v {
            Value::String(text) => {
                if let Some(e) = self.string_check(s, text, path) {
                    errs.push(e);
                }
                if let Some(format) = format
                    && !format_ok(&format.replace('-', ""), text)
                {
                    errs.push(FieldError::type_invalid(
                        &self.field(path),
                        v,
                        &format!("{path} in body must be of type {format}: {}", go_quote(text)),
                    ));
                }
            }
            Value::Number(n) => self.number_check(s, n, path, &mut errs),
            Value::Array(items) => self.slice_check(s, items, path, corr, &mut errs),
            _ => {}
        }
        if let Some(values) = enumeration {
            self.enum_check(values, v, path, &mut errs);
        }
        if let Value::Object(map) = v {
            self.object_check(s, map, path, corr, top, &mut errs);
        }
        errs
    }

    fn type_error(&self, path: &str, type_name: &str, actual: &str) -> FieldError {
        FieldError::type_invalid(
            &self.field(path),
            &Value::String(actual.into()),
            &format!("{path} in body must be of type {type_name}: {}", go_quote(actual)),
        )
    }

    /// kube-openapi's `typeValidator`, quirks included (a string or array under a string
    /// format passes it, a non-string value under a string format fails with the format).
    fn type_check(&self, path: &str, types: &[&str], format: Option<&str>, v: &Value) -> Option<FieldError> {
        let (actual, actual_format) = match v {
            Value::Bool(_) => ("boolean", ""),
            Value::String(_) => ("string", ""),
            Value::Number(n) if n.is_f64() => ("number", "float64"),
            Value::Number(_) => ("integer", "int64"),
            Value::Array(_) => ("array", ""),
            _ => ("object", ""),
        };
        let has = |t: &str| types.contains(&t);
        let float_int = actual == "number"
            && v.as_f64().is_some_and(|f| f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0)
            && has("integer");
        let int_float = actual == "integer" && has("number");
        let string_or_slice = v.is_string() || v.is_array();
        if let Some(format) = format {
            // (JSON numbers decode as int64 or float64, never the "lower" int32/float32.)
            if !(string_or_slice || has(actual) || actual_format == format || float_int || int_float) {
                return Some(self.type_error(path, format, actual_format));
            }
            if !(has("number") || has("integer")) && string_or_slice {
                return None;
            }
        }
        if !(has(actual) || float_int || int_float) {
            return Some(self.type_error(path, &types.join(","), actual));
        }
        None
    }

    /// `allOf`, `anyOf`, `oneOf`, `not` (kube-openapi `schemaPropsValidator`). Their summary
    /// errors are not `*errors.Validation`s, so the apiserver reports them on the root path.
    fn junctors(&self, s: &Value, v: &Value, path: &str, corr: Option<&Value>, errs: &mut Vec<FieldError>) {
        let summary = |message: String| FieldError::invalid(&self.field(""), &json!(""), &message);
        let branches = |key: &str| s.get(key).and_then(Value::as_array).filter(|b| !b.is_empty());
        if let Some(any_of) = branches("anyOf") {
            let mut first_failure = None;
            let mut succeeded = false;
            for branch in any_of {
                let result = self.check(branch, v, path, corr, false);
                if result.is_empty() {
                    succeeded = true;
                    break;
                }
                first_failure.get_or_insert(result);
            }
            if !succeeded {
                errs.push(summary(format!("{path} must validate at least one schema (anyOf)")));
                errs.extend(first_failure.unwrap_or_default());
            }
        }
        if let Some(one_of) = branches("oneOf") {
            let mut first_failure = None;
            let mut valid = 0;
            for branch in one_of {
                let result = self.check(branch, v, path, corr, false);
                if result.is_empty() {
                    valid += 1;
                } else if valid == 0 {
                    first_failure.get_or_insert(result);
                }
            }
            if valid != 1 {
                let found = if valid == 0 {
                    "Found none valid".to_string()
                } else {
                    format!("Found {valid} valid alternatives")
                };
                errs.push(summary(format!("{path} must validate one and only one schema (oneOf). {found}")));
                if valid == 0 {
                    errs.extend(first_failure.unwrap_or_default());
                }
            }
        }
        if let Some(all_of) = branches("allOf") {
            let mut valid = 0;
            for branch in all_of {
                let result = self.check(branch, v, path, corr, false);
                if result.is_empty() {
                    valid += 1;
                }
                errs.extend(result);
            }
            if valid != all_of.len() {
                let none = if valid == 0 { ". None validated" } else { "" };
                errs.push(summary(format!("{path} must validate all the schemas (allOf){none}")));
            }
        }
        if let Some(not) = s.get("not").filter(|n| n.is_object())
            && self.check(not, v, path, corr, false).is_empty()
        {
            errs.push(summary(format!("{path} must not validate the schema (not)")));
        }
    }

    /// `maxLength`, `minLength`, `pattern`: the first that fails (lengths in characters).
    fn string_check(&self, s: &Value, text: &str, path: &str) -> Option<FieldError> {
        let len = text.chars().count() as i64;
        let field = self.field(path);
        if let Some(max) = as_i64(s, "maxLength")
            && len > max
        {
            return Some(FieldError::too_long(&field, max));
        }
        if let Some(min) = as_i64(s, "minLength")
            && len < min
        {
            return Some(FieldError::invalid(
                &field,
                &json!(text),
                &format!("{path} in body should be at least {min} chars long"),
            ));
        }
        if let Some(pattern) = s.get("pattern").and_then(Value::as_str)
            && let Some(re) = regex(pattern)
            && !re.is_match(text)
        {
            return Some(FieldError::invalid(
                &field,
                &json!(text),
                &format!("{path} in body should match '{pattern}'"),
            ));
        }
        None
    }

    /// `multipleOf`, `minimum`, `maximum` (kube-openapi compares integers as integers).
    fn number_check(&self, s: &Value, n: &Number, path: &str, errs: &mut Vec<FieldError>) {
        let value = Value::Number(n.clone());
        let int = if n.is_f64() { None } else { n.as_i64() };
        let data = n.as_f64().unwrap_or_default();
        let field = self.field(path);
        let bound = |f: f64| match int {
            Some(_) => (f as i64).to_string(),
            None => go_float(f),
        };
        if let Some(factor) = s.get("multipleOf").and_then(Value::as_f64)
            && factor > 0.0
            && (data / factor).fract() != 0.0
        {
            errs.push(FieldError::invalid(
                &field,
                &value,
                &format!("{path} in body should be a multiple of {}", bound(factor)),
            ));
        }
        if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
            let exclusive = s["exclusiveMinimum"] == Value::Bool(true);
            let below = match int {
                Some(i) => i < min as i64 || (exclusive && i == min as i64),
                None => data < min || (exclusive && data == min),
            };
            if below {
                let relation = if exclusive { "greater than" } else { "greater than or equal to" };
                errs.push(FieldError::invalid(
                    &field,
                    &value,
                    &format!("{path} in body should be {relation} {}", bound(min)),
                ));
            }
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
            let exclusive = s["exclusiveMaximum"] == Value::Bool(true);
            let above = match int {
                Some(i) => i > max as i64 || (exclusive && i == max as i64),
                None => data > max || (exclusive && data == max),
            };
            if above {
                let relation = if exclusive { "less than" } else { "less than or equal to" };
                errs.push(FieldError::invalid(
                    &field,
                    &value,
                    &format!("{path} in body should be {relation} {}", bound(max)),
                ));
            }
        }
    }

    /// `items` (each item; correlated for ratcheting only in `map`-type lists), then
    /// `minItems`, `maxItems`, `uniqueItems`.
    fn slice_check(&self, s: &Value, items: &[Value], path: &str, corr: Option<&Value>, errs: &mut Vec<FieldError>) {
        if let Some(item_schema) = s.get("items").filter(|i| i.is_object()) {
            let old_items = corr.and_then(Value::as_array);
            for (i, item) in items.iter().enumerate() {
                let item_corr = old_items.and_then(|old| correlate_item(s, old, item));
                // This node is not unchanged (or it would not be checked).
                errs.extend(self.node(item_schema, item, &format!("{path}[{i}]"), item_corr, false, false));
            }
        }
        let size = items.len() as i64;
        let field = self.field(path);
        if let Some(min) = as_i64(s, "minItems")
            && size < min
        {
            errs.push(FieldError::invalid(
                &field,
                &json!(size),
                &format!("{path} in body should have at least {min} items"),
            ));
        }
        if let Some(max) = as_i64(s, "maxItems")
            && size > max
        {
            errs.push(FieldError::too_many(&field, size, max));
        }
        if s["uniqueItems"] == Value::Bool(true) && items.iter().enumerate().any(|(i, item)| items[..i].contains(item))
        {
            errs.push(FieldError::invalid(&field, &json!(""), &format!("{path} in body shouldn't contain duplicates")));
        }
    }

    /// `enum`: `Unsupported value`, listing the allowed values (non-strings as JSON).
    fn enum_check(&self, values: &[Value], v: &Value, path: &str, errs: &mut Vec<FieldError>) {
        let same = |a: &Value, b: &Value| match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            _ => a == b,
        };
        if v.is_null() || !values.iter().any(|allowed| same(allowed, v)) {
            let supported: Vec<String> = values
                .iter()
                .map(|allowed| match allowed {
                    Value::String(s) => s.clone(),
                    other => go_json(other),
                })
                .collect();
            errs.push(FieldError::not_supported(&self.field(path), v, &supported));
        }
    }

    /// `min/maxProperties`, `additionalProperties`, `properties`, `required`, in
    /// kube-openapi's order.
    fn object_check(
        &self,
        s: &Value,
        map: &Map<String, Value>,
        path: &str,
        corr: Option<&Value>,
        top: bool,
        errs: &mut Vec<FieldError>,
    ) {
        let field = self.field(path);
        let count = map.len() as i64;
        if let Some(min) = as_i64(s, "minProperties")
            && count < min
        {
            errs.push(FieldError::invalid(
                &field,
                &json!(min),
                &format!("{path} in body should have at least {min} properties"),
            ));
            return;
        }
        if let Some(max) = as_i64(s, "maxProperties")
            && count > max
        {
            errs.push(FieldError::too_many(&field, count, max));
            return;
        }
        let empty = Map::new();
        let properties = s.get("properties").and_then(Value::as_object).unwrap_or(&empty);
        let child_corr = |key: &str| corr.and_then(|old| old.get(key));
        match s.get("additionalProperties") {
            Some(Value::Bool(false)) => {
                for key in map.keys().filter(|k| !properties.contains_key(*k)) {
                    errs.push(FieldError::invalid(
                        &field,
                        &json!(key),
                        &format!("{path}.{key} in body is a forbidden property"),
                    ));
                }
            }
            Some(additional @ Value::Object(_)) => {
                for (key, child) in map.iter().filter(|(k, _)| !properties.contains_key(*k)) {
                    errs.extend(self.node(additional, child, &format!("{path}.{key}"), child_corr(key), false, false));
                }
            }
            _ => {}
        }
        for (key, property) in properties {
            if top && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(child) = map.get(key) {
                let name = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                errs.extend(self.node(property, child, &name, child_corr(key), false, false));
            }
        }
        for key in s.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if !map.contains_key(key) {
                errs.push(FieldError::required(&self.field(&format!("{path}.{key}")), ""));
            }
        }
    }
}

/// The old item that a new item of a list correlates with: only `map`-type lists correlate,
/// by their keys (`CorrelatedObject.Index`).
fn correlate_item<'a>(list_schema: &Value, old: &'a [Value], item: &Value) -> Option<&'a Value> {
    if list_schema["x-kubernetes-list-type"] != "map" {
        return None;
    }
    let keys: Vec<&str> =
        list_schema["x-kubernetes-list-map-keys"].as_array()?.iter().filter_map(Value::as_str).collect();
    let item = item.as_object()?;
    old.iter().find(|o| o.as_object().is_some_and(|o| keys.iter().all(|k| o.get(*k) == item.get(*k))))
}

thread_local! {
    /// Compiled CEL rules by schema node: compiling is by far the most expensive part of a
    /// write, and a CRD's rules do not change between writes.
    static CEL: std::cell::RefCell<HashMap<String, std::rc::Rc<kube_cel::CompiledSchema>>> =
        std::cell::RefCell::new(HashMap::new());
}

fn compiled_rules(node: &Value) -> std::rc::Rc<kube_cel::CompiledSchema> {
    let key = node.to_string();
    CEL.with(|cache| {
        cache.borrow_mut().entry(key).or_insert_with(|| std::rc::Rc::new(kube_cel::compile_schema(node))).clone()
    })
}

static REGEXES: LazyLock<Mutex<HashMap<String, Option<Regex>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// A compiled `pattern` (Go RE2 and Rust `regex` agree on the syntax CRDs use); `None` if it
/// does not compile (the apiserver would have refused the CRD).
fn regex(pattern: &str) -> Option<Regex> {
    let mut cache = REGEXES.lock().expect("regex cache lock poisoned");
    cache.entry(pattern.to_string()).or_insert_with(|| Regex::new(pattern).ok()).clone()
}

fn matches(pattern: &str, text: &str) -> bool {
    regex(pattern).is_some_and(|re| re.is_match(text))
}

/// The kube-openapi `strfmt` check of a format (name without dashes). Formats it cannot tell
/// apart well (email, uri, isbn, creditcard, password) accept anything non-suspicious: the
/// aim is never to refuse what the apiserver accepts.
fn format_ok(format: &str, s: &str) -> bool {
    const LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
    match format {
        "datetime" => is_date_time(s),
        "date" => is_date(s),
        "duration" => is_duration(s),
        "byte" => is_base64(s),
        "uuid" => matches(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", s),
        "uuid3" => matches(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?3[0-9a-f]{3}-?[0-9a-f]{4}-?[0-9a-f]{12}$", s),
        "uuid4" => matches(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?4[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$", s),
        "uuid5" => matches(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?5[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$", s),
        "ipv4" => s.parse::<std::net::IpAddr>().is_ok() && s.contains('.'),
        "ipv6" => s.parse::<std::net::IpAddr>().is_ok() && s.contains(':'),
        "cidr" => s.split_once('/').is_some_and(|(ip, bits)| {
            let max = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => 32,
                Ok(std::net::IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            !bits.is_empty() && bits.bytes().all(|b| b.is_ascii_digit()) && bits.parse::<u32>().is_ok_and(|b| b <= max)
        }),
        "mac" => matches(
            r"^([0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){7}|[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){19}|[0-9A-Fa-f]{4}(\.[0-9A-Fa-f]{4}){2}|[0-9A-Fa-f]{4}(\.[0-9A-Fa-f]{4}){3}|[0-9A-Fa-f]{4}(\.[0-9A-Fa-f]{4}){9})$",
            s,
        ),
        "hostname" => {
            s.len() <= 255
                && matches(
                    r"^([a-zA-Z0-9\p{S}\p{L}]((-?[a-zA-Z0-9\p{S}\p{L}]{0,62})?)|([a-zA-Z0-9\p{S}\p{L}](([a-zA-Z0-9-\p{S}\p{L}]{0,61}[a-zA-Z0-9\p{S}\p{L}])?)(\.)){1,}([a-zA-Z\p{L}]){2,63})$",
                    s,
                )
        }
        "hexcolor" => matches(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$", s),
        "rgbcolor" => matches(
            r"^rgb\(\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*\)$",
            s,
        ),
        "bsonobjectid" => s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()),
        "ssn" => matches(r"^\d{3}[- ]?\d{2}[- ]?\d{4}$", s),
        "quantity" => matches(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$", s),
        "k8sshortname" => s.len() <= 63 && matches(LABEL, s),
        "k8slongname" => s.len() <= 253 && s.split('.').all(|segment| matches(LABEL, segment)),
        "email" => s.contains('@'),
        _ => true,
    }
}

/// strfmt `IsDate`: `2006-01-02`, a real calendar date.
fn is_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return false;
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return false;
    }
    let (Ok(year), Ok(month), Ok(day)) = (y.parse::<u32>(), m.parse::<u32>(), d.parse::<u32>()) else {
        return false;
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

/// strfmt `IsDateTime`: a date, `t`, then `hh:mm:ss[.frac](z|±hh:mm)` (case-insensitive).
fn is_date_time(s: &str) -> bool {
    if s.len() < 4 {
        return false;
    }
    let lower = s.to_lowercase();
    let parts: Vec<&str> = lower.split('t').collect();
    if parts.len() < 2 || !is_date(parts[0]) {
        return false;
    }
    let Some(re) = regex(r"^([0-9]{2}):([0-9]{2}):([0-9]{2})(.[0-9]+)?(z|([+-][0-9]{2}:[0-9]{2}))$") else {
        return false;
    };
    re.captures(parts[1]).is_some_and(|c| &c[1] <= "23" && &c[2] <= "59" && &c[3] <= "59")
}

/// strfmt `ParseDuration`: a Go duration (`1h30m`), or numbers with unit words (`3 days`).
fn is_duration(s: &str) -> bool {
    if s == "0" || matches(r"^[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+$", s) {
        return true;
    }
    const UNITS: &[&str] = &[
        "ns",
        "nano",
        "nanos",
        "nanosecond",
        "nanoseconds",
        "us",
        "µs",
        "micro",
        "micros",
        "microsecond",
        "microseconds",
        "ms",
        "milli",
        "millis",
        "millisecond",
        "milliseconds",
        "s",
        "sec",
        "secs",
        "second",
        "seconds",
        "m",
        "min",
        "mins",
        "minute",
        "minutes",
        "h",
        "hr",
        "hrs",
        "hour",
        "hours",
        "d",
        "day",
        "days",
        "w",
        "wk",
        "wks",
        "week",
        "weeks",
    ];
    regex(r"([0-9]+)\s*([A-Za-zµ]+)")
        .is_some_and(|re| re.captures_iter(s).any(|c| UNITS.contains(&c[2].to_lowercase().as_str())))
}

/// `base64.StdEncoding` (line breaks ignored, as Go's decoder does).
fn is_base64(s: &str) -> bool {
    let s: Vec<u8> = s.bytes().filter(|b| !matches!(b, b'\r' | b'\n')).collect();
    if !s.len().is_multiple_of(4) {
        return false;
    }
    let padding = s.iter().rev().take_while(|b| **b == b'=').count();
    padding <= 2 && s[..s.len() - padding].iter().all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

// ---------------------------------------------------------------------------------------------
// x-kubernetes-list-type invariants (`apiserver/schema/listtype`)
// ---------------------------------------------------------------------------------------------

/// A `field.Path`: `a.b`, `a[key]`, `a[0]`; the root renders as `<nil>`.
#[derive(Debug, Clone, Default)]
struct Path(Option<String>);

impl Path {
    fn child(&self, name: &str) -> Path {
        Path(Some(match &self.0 {
            None => name.to_string(),
            Some(p) => format!("{p}.{name}"),
        }))
    }

    fn key(&self, key: &str) -> Path {
        Path(Some(format!("{}[{key}]", self.0.as_deref().unwrap_or(""))))
    }

    fn index(&self, i: usize) -> Path {
        Path(Some(format!("{}[{i}]", self.0.as_deref().unwrap_or(""))))
    }

    fn render(&self) -> String {
        self.0.clone().unwrap_or_else(|| "<nil>".into())
    }
}

fn list_types(s: &Value, v: &Value, path: &Path, errs: &mut Vec<FieldError>) {
    match v {
        Value::Object(map) => {
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (key, child) in map {
                    if let Some(prop) = props.get(key) {
                        list_types(prop, child, &path.child(key), errs);
                    }
                }
            }
            if let Some(additional) = s.get("additionalProperties").filter(|a| a.is_object()) {
                for (key, child) in map {
                    list_types(additional, child, &path.key(key), errs);
                }
            }
        }
        Value::Array(items) => {
            match s["x-kubernetes-list-type"].as_str() {
                Some("set") => {
                    for (i, item) in items.iter().enumerate() {
                        if items[..i].contains(item) {
                            errs.push(FieldError::duplicate(&path.index(i).render(), item));
                        }
                    }
                }
                Some("map") => list_map_keys(s, items, path, errs),
                _ => {}
            }
            if let Some(item_schema) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    list_types(item_schema, item, &path.index(i), errs);
                }
            }
        }
        _ => {}
    }
}

fn list_map_keys(s: &Value, items: &[Value], path: &Path, errs: &mut Vec<FieldError>) {
    if let Some((i, item)) = items.iter().enumerate().find(|(_, x)| !x.is_null() && !x.is_object()) {
        errs.push(FieldError::invalid(
            &path.index(i).render(),
            item,
            "must be an object for an array of list-type map",
        ));
        return;
    }
    let keys: Vec<&str> =
        s["x-kubernetes-list-map-keys"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let mut seen: Vec<Map<String, Value>> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(item) = item.as_object() else {
            continue;
        };
        let key: Map<String, Value> = keys
            .iter()
            .map(|k| {
                let value = item
                    .get(*k)
                    .cloned()
                    .unwrap_or_else(|| s["items"]["properties"][*k].get("default").cloned().unwrap_or(Value::Null));
                (k.to_string(), value)
            })
            .collect();
        if seen.contains(&key) {
            errs.push(FieldError::duplicate(&path.index(i).render(), &Value::Object(key)));
        } else {
            seen.push(key);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// x-kubernetes-validations (`apiserver/schema/cel`), rules evaluated by kube-cel
// ---------------------------------------------------------------------------------------------

const JUNCTORS: [&str; 4] = ["allOf", "anyOf", "oneOf", "not"];

/// Whether a schema has CEL rules anywhere (`hasXValidations`).
fn has_rules(s: &Value) -> bool {
    if s.get("x-kubernetes-validations").and_then(Value::as_array).is_some_and(|r| !r.is_empty()) {
        return true;
    }
    let props = s.get("properties").and_then(Value::as_object).is_some_and(|p| p.values().any(has_rules));
    let nested = ["items", "additionalProperties", "not"]
        .iter()
        .filter_map(|k| s.get(*k))
        .any(|c| c.is_object() && has_rules(c));
    let branches = ["allOf", "anyOf", "oneOf"]
        .iter()
        .filter_map(|k| s.get(*k).and_then(Value::as_array))
        .any(|b| b.iter().any(has_rules));
    props || nested || branches
}

fn rules_of(s: &Value) -> Option<&Vec<Value>> {
    s.get("x-kubernetes-validations").and_then(Value::as_array).filter(|r| !r.is_empty())
}

/// The node's schema with only its own rules: kube-cel evaluates what it is given all the way
/// down, and the walk here evaluates each node itself (for its correlation and ratcheting).
fn own_rules_only(s: &Value, rules: &[Value]) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("x-kubernetes-validations");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut node = s.clone();
    if let Some(map) = node.as_object_mut() {
        for junctor in JUNCTORS {
            map.remove(junctor);
        }
        for (key, child) in map.iter_mut() {
            if matches!(key.as_str(), "properties" | "items" | "additionalProperties") {
                strip(child);
            }
        }
        map.insert("x-kubernetes-validations".into(), Value::Array(rules.to_vec()));
    }
    node
}

/// `ruleErrorString`: the trimmed message, else the trimmed rule.
fn rule_error_string(rule: &Value) -> String {
    match rule["message"].as_str().filter(|m| !m.is_empty()) {
        Some(message) => message.trim().to_string(),
        None => rule["rule"].as_str().unwrap_or_default().trim().to_string(),
    }
}

/// `ruleMessageOrDefault`: the trimmed message, else `failed rule: <rule>`.
fn rule_message_or_default(rule: &Value) -> String {
    match rule["message"].as_str().filter(|m| !m.is_empty()) {
        Some(message) => message.trim().to_string(),
        None => format!("failed rule: {}", rule_error_string(rule)),
    }
}

/// A rule's `fieldPath` (`.a.b`, `.a['b.c']`) as the apiserver normalizes it against the
/// schema: named properties become `.name`, map keys `[key]`.
fn normalize_field_path(field_path: &str, schema: &Value) -> String {
    let fallback = || field_path.trim_start_matches('.').to_string();
    let mut path = Path::default();
    let mut current = schema;
    let mut rest = field_path;
    while !rest.is_empty() {
        let name = if let Some(r) = rest.strip_prefix("['") {
            let Some(end) = r.find("']") else {
                return fallback();
            };
            rest = &r[end + 2..];
            r[..end].replace("\\'", "'").replace("\\\\", "\\")
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            rest = &r[end..];
            r[..end].to_string()
        } else {
            return fallback();
        };
        if let Some(prop) = current.get("properties").and_then(|p| p.get(&name)) {
            path = path.child(&name);
            current = prop;
        } else if let Some(additional) = current.get("additionalProperties").filter(|a| a.is_object()) {
            path = path.key(&name);
            current = additional;
        } else {
            return fallback();
        }
    }
    path.0.unwrap_or_else(fallback)
}

/// `fieldErrorForReason`.
fn error_for_reason(field: &str, value: &Value, detail: &str, reason: Option<&str>) -> FieldError {
    match reason {
        Some("FieldValueForbidden") => FieldError::forbidden(field, detail),
        Some("FieldValueRequired") => FieldError::required(field, detail),
        Some("FieldValueDuplicate") => FieldError::duplicate(field, value),
        _ => FieldError::invalid(field, value, detail),
    }
}

struct Cel<'e> {
    errors: &'e mut Vec<FieldError>,
}

impl Cel<'_> {
    /// The CEL validator's walk: `old` is `oldSelf` (for CEL), `corr` the correlated old value
    /// (for ratcheting), `inherited` whether the nearest correlated ancestor is unchanged.
    #[allow(clippy::too_many_arguments)]
    fn node(
        &mut self,
        s: &Value,
        v: &Value,
        old: Option<&Value>,
        path: &Path,
        corr: Option<&Value>,
        inherited: bool,
        top: bool,
    ) {
        // Rules only validate non-null values.
        if v.is_null() || !has_rules(s) {
            return;
        }
        let ratchet = corr.map_or(inherited, |o| o == v);
        if let Some(rules) = rules_of(s) {
            self.evaluate(s, rules, v, old, path, ratchet);
        }
        // allOf rules are evaluated on this node, but ratchet with its parent (the apiserver
        // gives them no correlation of their own).
        for branch in s.get("allOf").and_then(Value::as_array).into_iter().flatten() {
            if let Some(rules) = rules_of(branch) {
                self.evaluate(s, rules, v, old, path, inherited);
            }
        }
        match v {
            Value::Object(map) => {
                let correlatable = s["x-kubernetes-map-type"] != "atomic";
                let old_of = |key: &str| {
                    if correlatable { old.and_then(|o| o.get(key)) } else { None }
                };
                if let Some(additional) = s.get("additionalProperties").filter(|a| a.is_object()) {
                    for (key, child) in map {
                        let child_corr = corr.and_then(|o| o.get(key));
                        self.node(additional, child, old_of(key), &path.key(key), child_corr, ratchet, false);
                    }
                }
                if let Some(props) = s.get("properties").and_then(Value::as_object) {
                    for (key, child) in map {
                        let Some(prop) = props.get(key) else {
                            continue;
                        };
                        let (child_corr, child_inherited) = if top && matches!(key.as_str(), "apiVersion" | "kind") {
                            (None, false)
                        } else {
                            (corr.and_then(|o| o.get(key)), ratchet)
                        };
                        self.node(prop, child, old_of(key), &path.child(key), child_corr, child_inherited, false);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = s.get("items").filter(|i| i.is_object()) {
                    for (i, item) in items.iter().enumerate() {
                        let correlated = |o: Option<&Value>| {
                            o.and_then(Value::as_array).and_then(|old| correlate_item(s, old, item)).cloned()
                        };
                        let item_old = correlated(old);
                        let item_corr = correlated(corr);
                        self.node(
                            item_schema,
                            item,
                            item_old.as_ref(),
                            &path.index(i),
                            item_corr.as_ref(),
                            ratchet,
                            false,
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// Evaluates `rules` on the value of node `s` and records the failures as the apiserver
    /// reports them: `Invalid value: "<schema type>": <message>` at the node's path (plus the
    /// rule's `fieldPath`), or the field error its `reason` asks for.
    fn evaluate(&mut self, s: &Value, rules: &[Value], v: &Value, old: Option<&Value>, path: &Path, ratchet: bool) {
        let node = own_rules_only(s, rules);
        let compiled = compiled_rules(&node);
        let uses_old_self: HashMap<String, bool> = compiled
            .validations
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|r| (r.rule.rule.clone(), r.is_transition_rule))
            .collect();
        let Err(failures) = kube_cel::validate_compiled(&compiled, v, old) else {
            return;
        };
        let schema_type = json!(s["type"].as_str().unwrap_or_default());
        for failure in failures.iter() {
            let rule = rules.iter().find(|r| r["rule"].as_str() == Some(failure.rule.as_str()));
            match failure.kind {
                kube_cel::ErrorKind::ValidationFailure => {
                    let Some(rule) = rule else {
                        continue;
                    };
                    let transition = uses_old_self.get(&failure.rule).copied().unwrap_or(false);
                    if ratchet && !transition {
                        continue;
                    }
                    let field = match rule["fieldPath"].as_str().filter(|p| !p.is_empty()) {
                        Some(field_path) => path.child(&normalize_field_path(field_path, s)),
                        None => path.clone(),
                    };
                    let detail = match rule["messageExpression"].as_str().filter(|m| !m.is_empty()) {
                        Some(_) => {
                            let message = failure.message.trim();
                            if message.is_empty() || message.contains('\n') || message.len() > 5120 {
                                rule_message_or_default(rule)
                            } else {
                                message.to_string()
                            }
                        }
                        None => rule_message_or_default(rule),
                    };
                    self.errors.push(error_for_reason(&field.render(), &schema_type, &detail, rule["reason"].as_str()));
                }
                kube_cel::ErrorKind::CompilationFailure | kube_cel::ErrorKind::InvalidRule => {
                    self.errors.push(FieldError::invalid(
                        &path.render(),
                        &schema_type,
                        &format!("rule compile error: {}", failure.message),
                    ));
                }
                _ => {
                    let cause = failure.source().map_or_else(|| failure.message.clone(), |c| c.to_string());
                    let rule_text = rule.map_or_else(|| failure.rule.trim().to_string(), rule_error_string);
                    self.errors.push(FieldError::invalid(
                        &path.render(),
                        &schema_type,
                        &format!("{cause} evaluating rule: {rule_text}"),
                    ));
                }
            }
        }
    }
}
