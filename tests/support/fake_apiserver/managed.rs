//! `metadata.managedFields` and server-side apply, simplified.
//!
//! Ownership is tracked per leaf field: nested maps are descended into, every other value
//! (including lists) is one leaf, except `metadata.finalizers`, whose items are owned one by one
//! (it is a set, `listType: set`, in the real schema). So a list such as `status.conditions`
//! (`listType: map` in most CRDs) is owned wholly by the last manager that set it.
//!
//! Tracked fields are everything except `apiVersion`, `kind` and `metadata`, plus
//! `metadata.labels`, `metadata.annotations`, `metadata.finalizers` and
//! `metadata.ownerReferences` (a leaf). For a type with a status subresource, main-resource
//! writes only track non-status fields and `/status` writes only track `status`, each in its own
//! managedFields entry (`subresource: status`), as kube-apiserver does.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::store::{meta_mut, now};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Elem {
    /// A map key (`f:name` in FieldsV1).
    Field(String),
    /// A member of a set-like list, as JSON text (`v:"x"` in FieldsV1).
    Item(String),
}

pub(crate) type FieldPath = Vec<Elem>;

/// Which part of an object a write may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The main resource; `with_status` when the type has no status subresource.
    Main { with_status: bool },
    /// The `/status` subresource.
    Status,
    /// Everything that can be owned.
    All,
}

impl Scope {
    pub fn subresource(self) -> &'static str {
        match self {
            Scope::Status => "status",
            _ => "",
        }
    }

    fn includes(self, top_level: &str) -> bool {
        match (self, top_level) {
            (Scope::All, _) => true,
            (Scope::Status, field) => field == "status",
            (Scope::Main { with_status }, "status") => with_status,
            (Scope::Main { .. }, _) => true,
        }
    }
}

/// Every owned leaf of `obj` within `scope`, with its value.
pub(crate) fn leaves(obj: &Value, scope: Scope) -> BTreeMap<FieldPath, Value> {
    let mut out = BTreeMap::new();
    let Some(top) = obj.as_object() else {
        return out;
    };
    for (key, value) in top {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                if scope == Scope::Status {
                    continue;
                }
                let meta = |f: &str| vec![Elem::Field("metadata".into()), Elem::Field(f.into())];
                for f in ["labels", "annotations", "ownerReferences"] {
                    if let Some(v) = value.get(f) {
                        collect(v, meta(f), &mut out);
                    }
                }
                for item in value.get("finalizers").and_then(Value::as_array).into_iter().flatten() {
                    let mut path = meta("finalizers");
                    path.push(Elem::Item(item.to_string()));
                    out.insert(path, item.clone());
                }
            }
            field if scope.includes(field) => collect(value, vec![Elem::Field(field.into())], &mut out),
            _ => {}
        }
    }
    out
}

fn collect(value: &Value, path: FieldPath, out: &mut BTreeMap<FieldPath, Value>) {
    match value {
        Value::Null => {}
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let mut child = path.clone();
                child.push(Elem::Field(k.clone()));
                collect(v, child, out);
            }
        }
        leaf => {
            out.insert(path, leaf.clone());
        }
    }
}

fn render(path: &FieldPath) -> String {
    path.iter()
        .map(|e| match e {
            Elem::Field(f) => format!(".{f}"),
            Elem::Item(v) => format!("[={v}]"),
        })
        .collect()
}

fn overlaps(a: &FieldPath, b: &FieldPath) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub manager: String,
    pub apply: bool,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: BTreeSet<FieldPath>,
}

impl Entry {
    fn is(&self, manager: &str, apply: bool, subresource: &str) -> bool {
        self.manager == manager && self.apply == apply && self.subresource == subresource
    }

    fn to_json(&self) -> Value {
        let mut fields_v1 = Map::new();
        for path in &self.fields {
            let mut node = &mut fields_v1;
            for elem in path {
                let key = match elem {
                    Elem::Field(f) => format!("f:{f}"),
                    Elem::Item(v) => format!("v:{v}"),
                };
                let child = node.entry(key).or_insert_with(|| json!({}));
                node = match child {
                    Value::Object(m) => m,
                    _ => unreachable!("FieldsV1 nodes are objects"),
                };
            }
        }
        let mut entry = json!({
            "manager": self.manager,
            "operation": if self.apply { "Apply" } else { "Update" },
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_v1,
        });
        if !self.subresource.is_empty() {
            entry["subresource"] = json!(self.subresource);
        }
        entry
    }

    fn from_json(v: &Value) -> Self {
        let mut fields = BTreeSet::new();
        parse_fields_v1(&v["fieldsV1"], Vec::new(), &mut fields);
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Self {
            manager: text("manager"),
            apply: v["operation"] == "Apply",
            api_version: text("apiVersion"),
            time: text("time"),
            subresource: text("subresource"),
            fields,
        }
    }
}

fn parse_fields_v1(node: &Value, prefix: FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Some(map) = node.as_object() else {
        return;
    };
    for (key, child) in map {
        let elem = if let Some(f) = key.strip_prefix("f:") {
            Elem::Field(f.into())
        } else if let Some(v) = key.strip_prefix("v:") {
            Elem::Item(v.into())
        } else {
            continue;
        };
        let mut path = prefix.clone();
        path.push(elem);
        let has_children = child.as_object().is_some_and(|m| m.keys().any(|k| k != "."));
        if has_children {
            parse_fields_v1(child, path, out);
        } else {
            out.insert(path);
        }
    }
}

pub(crate) fn read_entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"].as_array().map(|a| a.iter().map(Entry::from_json).collect()).unwrap_or_default()
}

/// Drops ownership of fields that no longer exist and empty entries, then stores the entries.
fn write_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    let existing = leaves(obj, Scope::All);
    for e in &mut entries {
        e.fields.retain(|p| existing.contains_key(p));
    }
    entries.retain(|e| !e.fields.is_empty());
    if entries.is_empty() {
        meta_mut(obj).remove("managedFields");
    } else {
        let rendered = entries.iter().map(Entry::to_json).collect();
        meta_mut(obj).insert("managedFields".into(), Value::Array(rendered));
    }
}

/// Records a non-apply write (create, update, patch) by `manager`: it takes ownership of every
/// field it set or changed, which other managers lose. `new` gets the resulting managedFields
/// (whatever the client sent there is ignored).
pub(crate) fn track_update(old: Option<&Value>, new: &mut Value, manager: &str, scope: Scope) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let before = old.map(|o| leaves(o, scope)).unwrap_or_default();
    let changed: BTreeSet<FieldPath> =
        leaves(new, scope).into_iter().filter(|(p, v)| before.get(p) != Some(v)).map(|(p, _)| p).collect();
    let subresource = scope.subresource();
    for e in entries.iter_mut().filter(|e| !e.is(manager, false, subresource)) {
        e.fields.retain(|p| !changed.contains(p));
    }
    if !changed.is_empty() {
        let api_version = new["apiVersion"].as_str().unwrap_or_default().to_string();
        match entries.iter_mut().find(|e| e.is(manager, false, subresource)) {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now();
                e.api_version = api_version;
            }
            None => entries.push(Entry {
                manager: manager.into(),
                apply: false,
                api_version,
                time: now(),
                subresource: subresource.into(),
                fields: changed,
            }),
        }
    }
    write_entries(new, entries);
}

fn get_path<'a>(obj: &'a Value, path: &FieldPath) -> Option<&'a Value> {
    let mut current = obj;
    for elem in path {
        current = match elem {
            Elem::Field(f) => current.get(f)?,
            Elem::Item(v) => {
                let item: Value = serde_json::from_str(v).ok()?;
                current.as_array()?.iter().find(|x| **x == item)?
            }
        };
    }
    Some(current)
}

fn set_path(obj: &mut Value, path: &FieldPath, value: &Value) {
    let mut current = obj;
    for (i, elem) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        match elem {
            Elem::Field(f) => {
                if !current.is_object() {
                    *current = json!({});
                }
                let Value::Object(map) = current else { unreachable!("just made an object") };
                if last {
                    let keep_existing_map =
                        value.as_object().is_some_and(Map::is_empty) && map.get(f).is_some_and(Value::is_object);
                    if !keep_existing_map {
                        map.insert(f.clone(), value.clone());
                    }
                    return;
                }
                current = map.entry(f.clone()).or_insert(Value::Null);
            }
            Elem::Item(_) => {
                if !current.is_array() {
                    *current = json!([]);
                }
                if let Value::Array(items) = current
                    && !items.contains(value)
                {
                    items.push(value.clone());
                }
                return;
            }
        }
    }
}

/// Removes the field at `path`, then any maps left empty by that (below the top level).
fn remove_path(obj: &mut Value, path: &FieldPath) {
    fn go(node: &mut Value, path: &[Elem], depth: usize) {
        match path {
            [] => {}
            [Elem::Item(v)] => {
                if let (Value::Array(items), Ok(item)) = (node, serde_json::from_str::<Value>(v)) {
                    items.retain(|x| *x != item);
                }
            }
            [Elem::Field(f), rest @ ..] => {
                let Value::Object(map) = node else { return };
                if rest.is_empty() {
                    map.remove(f);
                    return;
                }
                if let Some(child) = map.get_mut(f) {
                    go(child, rest, depth + 1);
                    let emptied = match child {
                        Value::Object(m) => m.is_empty(),
                        Value::Array(a) => a.is_empty(),
                        _ => false,
                    };
                    if emptied && depth >= 1 {
                        map.remove(f);
                    }
                }
            }
            [Elem::Item(_), ..] => {}
        }
    }
    go(obj, path, 0);
}

/// Field-manager conflicts: `(manager, field)` pairs.
pub(crate) type Conflicts = Vec<(String, String)>;

/// Server-side apply of `applied` by `manager` onto `live` (or onto nothing, for a create).
///
/// Sets every field of the applied configuration; removes the fields this manager applied
/// last time but omits now, unless another manager also owns them; reports conflicts when a
/// field would change that another manager owns (unless `force`, which takes them over).
/// Returns the merged object, with managedFields, but without any of the main/status
/// subresource reset rules applied yet.
pub(crate) fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    scope: Scope,
    force: bool,
) -> Result<Value, Conflicts> {
    let subresource = scope.subresource();
    let mut entries = live.map(read_entries).unwrap_or_default();
    let wanted = leaves(applied, scope);
    let previous: BTreeSet<FieldPath> =
        entries.iter().find(|e| e.is(manager, true, subresource)).map(|e| e.fields.clone()).unwrap_or_default();

    let mut conflicts = Vec::new();
    if let Some(live) = live {
        for (path, value) in &wanted {
            let current = get_path(live, path);
            let unchanged = current == Some(value)
                || (value.as_object().is_some_and(Map::is_empty) && current.is_some_and(Value::is_object));
            if unchanged {
                continue;
            }
            for e in entries.iter_mut().filter(|e| e.manager != manager) {
                if e.fields.iter().any(|owned| overlaps(owned, path)) {
                    conflicts.push((e.manager.clone(), render(path)));
                    if force {
                        e.fields.retain(|owned| !overlaps(owned, path));
                    }
                }
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }

    let mut result = live.cloned().unwrap_or_else(|| json!({}));
    for (path, value) in &wanted {
        set_path(&mut result, path, value);
    }
    for path in previous.iter().filter(|p| !wanted.contains_key(*p)) {
        let owned_elsewhere =
            entries.iter().filter(|e| !e.is(manager, true, subresource)).any(|e| e.fields.contains(path));
        if !owned_elsewhere {
            remove_path(&mut result, path);
        }
    }
    let entry = Entry {
        manager: manager.into(),
        apply: true,
        api_version: applied["apiVersion"].as_str().unwrap_or_default().to_string(),
        time: now(),
        subresource: subresource.into(),
        fields: wanted.into_keys().collect(),
    };
    // Keep the entry's position, so that re-applying the same configuration is a no-op.
    match entries.iter_mut().find(|e| e.is(manager, true, subresource)) {
        Some(existing) => *existing = entry,
        None => entries.push(entry),
    }
    write_entries(&mut result, entries);
    Ok(result)
}
