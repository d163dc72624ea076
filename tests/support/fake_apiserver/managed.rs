//! Server-side apply and `metadata.managedFields`, simplified.
//!
//! Ownership is per leaf field: maps are descended into, everything else (lists included, even
//! `listType: map` ones such as `status.conditions`) is one leaf owned whole. Owned fields are
//! everything but `apiVersion`, `kind` and `metadata`, plus `metadata.labels`,
//! `metadata.annotations` (per key) and `metadata.finalizers` (whole). With a status
//! subresource, main-resource writes own non-status fields and `/status` writes own `status`,
//! each in its own entry (`subresource: status`). Entries carry no timestamps.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::store::meta_mut;

type Path = Vec<String>;

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
    fn subresource(self) -> &'static str {
        if self == Scope::Status { "status" } else { "" }
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
fn leaves(obj: &Value, scope: Scope) -> BTreeMap<Path, Value> {
    let mut out = BTreeMap::new();
    for (key, value) in obj.as_object().into_iter().flatten() {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" if scope != Scope::Status => {
                for f in ["labels", "annotations", "finalizers"] {
                    collect(&value[f], vec!["metadata".into(), f.into()], &mut out);
                }
            }
            field if field != "metadata" && scope.includes(field) => collect(value, vec![field.into()], &mut out),
            _ => {}
        }
    }
    out
}

/// Empty maps and nulls own nothing.
fn collect(value: &Value, path: Path, out: &mut BTreeMap<Path, Value>) {
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (k, v) in map {
                let mut child = path.clone();
                child.push(k.clone());
                collect(v, child, out);
            }
        }
        leaf => {
            out.insert(path, leaf.clone());
        }
    }
}

fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    apply: bool,
    subresource: String,
    api_version: String,
    fields: BTreeSet<Path>,
}

impl Entry {
    fn is(&self, manager: &str, apply: bool, scope: Scope) -> bool {
        self.manager == manager && self.apply == apply && self.subresource == scope.subresource()
    }

    fn to_json(&self) -> Value {
        let mut fields_v1 = json!({});
        for path in &self.fields {
            let mut node = &mut fields_v1;
            for f in path {
                node = &mut node[format!("f:{f}")];
                if node.is_null() {
                    *node = json!({});
                }
            }
        }
        let mut entry = json!({
            "manager": self.manager,
            "operation": if self.apply { "Apply" } else { "Update" },
            "apiVersion": self.api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_v1,
        });
        if !self.subresource.is_empty() {
            entry["subresource"] = json!(self.subresource);
        }
        entry
    }

    fn from_json(v: &Value) -> Self {
        fn parse(node: &Value, prefix: &Path, out: &mut BTreeSet<Path>) {
            for (key, child) in node.as_object().into_iter().flatten() {
                let Some(field) = key.strip_prefix("f:") else { continue };
                let mut path = prefix.clone();
                path.push(field.to_string());
                if child.as_object().is_some_and(|m| m.keys().any(|k| k.starts_with("f:"))) {
                    parse(child, &path, out);
                } else {
                    out.insert(path);
                }
            }
        }
        let mut fields = BTreeSet::new();
        parse(&v["fieldsV1"], &Vec::new(), &mut fields);
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Self {
            manager: text("manager"),
            apply: v["operation"] == "Apply",
            subresource: text("subresource"),
            api_version: text("apiVersion"),
            fields,
        }
    }
}

fn read_entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"].as_array().map(|a| a.iter().map(Entry::from_json).collect()).unwrap_or_default()
}

/// Drops ownership of fields that no longer exist and entries left empty, then stores them.
fn write_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    let existing = leaves(obj, Scope::All);
    for e in &mut entries {
        e.fields.retain(|p| existing.contains_key(p));
    }
    entries.retain(|e| !e.fields.is_empty());
    let meta = meta_mut(obj);
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), entries.iter().map(Entry::to_json).collect());
    }
}

/// Records a non-apply write (create, update, patch) by `manager`: it takes over every field it
/// set or changed. `new` gets the resulting managedFields (whatever the client sent is ignored).
pub(crate) fn track_update(old: Option<&Value>, new: &mut Value, manager: &str, scope: Scope) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let before = old.map(|o| leaves(o, scope)).unwrap_or_default();
    let changed: BTreeSet<Path> =
        leaves(new, scope).into_iter().filter(|(p, v)| before.get(p) != Some(v)).map(|(p, _)| p).collect();
    for e in entries.iter_mut().filter(|e| !e.is(manager, false, scope)) {
        e.fields.retain(|p| !changed.contains(p));
    }
    if !changed.is_empty() {
        let api_version = new["apiVersion"].as_str().unwrap_or_default().to_string();
        match entries.iter_mut().find(|e| e.is(manager, false, scope)) {
            Some(e) => e.fields.extend(changed),
            None => entries.push(Entry {
                manager: manager.into(),
                apply: false,
                subresource: scope.subresource().into(),
                api_version,
                fields: changed,
            }),
        }
    }
    write_entries(new, entries);
}

fn get_path<'a>(obj: &'a Value, path: &Path) -> Option<&'a Value> {
    path.iter().try_fold(obj, |node, f| node.get(f))
}

fn set_path(obj: &mut Value, path: &Path, value: &Value) {
    let mut node = obj;
    for f in path {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        node = &mut node[f.as_str()];
    }
    *node = value.clone();
}

/// Removes the field at `path`, then the maps that this left empty (below the top level).
fn remove_path(obj: &mut Value, path: &[String], top: bool) {
    let Some((first, rest)) = path.split_first() else { return };
    let Some(map) = obj.as_object_mut() else { return };
    if rest.is_empty() {
        map.remove(first);
        return;
    }
    if let Some(child) = map.get_mut(first) {
        remove_path(child, rest, false);
        if !top && child.as_object().is_some_and(Map::is_empty) {
            map.remove(first);
        }
    }
}

/// Server-side apply of `applied` by `manager` onto `live` (or onto nothing, for a create).
///
/// Sets every field of the applied configuration; removes the fields this manager applied last
/// time but omits now, unless another manager also owns them; reports `(manager, field)`
/// conflicts when a field would change that another manager owns (unless `force`, which takes
/// them over). Returns the merged object with its managedFields.
pub(crate) fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    scope: Scope,
    force: bool,
) -> Result<Value, Vec<(String, String)>> {
    let mut entries = live.map(read_entries).unwrap_or_default();
    let wanted = leaves(applied, scope);
    let mine = entries.iter().position(|e| e.is(manager, true, scope));
    let previous = mine.map(|i| entries[i].fields.clone()).unwrap_or_default();

    let mut conflicts = Vec::new();
    for (path, _) in wanted.iter().filter(|(p, v)| live.and_then(|l| get_path(l, p)) != Some(*v)) {
        for e in entries.iter_mut().filter(|e| e.manager != manager) {
            if e.fields.iter().any(|owned| overlaps(owned, path)) {
                conflicts.push((e.manager.clone(), format!(".{}", path.join("."))));
                e.fields.retain(|owned| !overlaps(owned, path));
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
        if !entries.iter().any(|e| !e.is(manager, true, scope) && e.fields.contains(path)) {
            remove_path(&mut result, path, true);
        }
    }
    let entry = Entry {
        manager: manager.into(),
        apply: true,
        subresource: scope.subresource().into(),
        api_version: applied["apiVersion"].as_str().unwrap_or_default().to_string(),
        fields: wanted.into_keys().collect(),
    };
    // Keep the entry's position, so that re-applying the same configuration is a no-op.
    match mine {
        Some(i) => entries[i] = entry,
        None => entries.push(entry),
    }
    write_entries(&mut result, entries);
    Ok(result)
}
