//! The library's modules form no cycle: no module imports one that imports it back (directly or
//! through others). Read from the source: every path a module names (`use` items, inline
//! `crate::`/`super::`/`self::` paths, and its own child modules by name) is an edge to the
//! deepest module it reaches. Test modules (`#[cfg(test)] mod tests`) are left out: they are
//! children that may look anywhere. A cycle fails the test, named module by module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `a::b` for `src/a/b.rs` and `src/a/b/mod.rs`; `crate` for `src/lib.rs`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    if last != "mod.rs" && last != "lib.rs" {
        parts.push(last.trim_end_matches(".rs").to_string());
    }
    if parts.is_empty() { "crate".into() } else { format!("crate::{}", parts.join("::")) }
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments, string literals and its test module.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") && lines.peek().is_some_and(|l| l.trim_start().starts_with("mod ")) {
            break;
        }
        let mut kept = String::new();
        let mut in_string = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' => in_string = !in_string,
                '\\' if in_string => {
                    chars.next();
                }
                '/' if !in_string && chars.peek() == Some(&'/') => break,
                c if !in_string => kept.push(c),
                _ => {}
            }
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// `use` items with braces expanded: `use a::{b, c::{d}}` gives `a::b`, `a::c::d`.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = format!("{prefix}{}", &tree[..open]);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&head, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&head, &inner[start..], out);
    } else if !tree.is_empty() {
        out.push(format!("{prefix}{}", tree.split(" as ").next().unwrap_or(tree).trim()));
    }
}

fn paths(code: &str) -> Vec<String> {
    let mut out = vec![];
    // `use` items (which may span lines).
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        rest = &rest[at + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest.find(';').unwrap_or(rest.len());
        expand("", &rest[..end].replace('\n', " "), &mut out);
        rest = &rest[end..];
    }
    // Inline paths.
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let is_start =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':');
        if is_start && (bytes[i].is_ascii_lowercase() || bytes[i] == b'_') {
            let mut j = i;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b':') {
                j += 1;
            }
            let word = &code[i..j];
            // `a::{…}` (a grouped `use`, read above) ends in `::`: not a path of its own.
            if word.contains("::") && !word.ends_with("::") {
                out.push(word.to_string());
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// The module `path` reaches from `module` (whose children are `children`), if it is one of
/// the library's.
fn resolve(module: &str, path: &str, modules: &BTreeSet<String>, children: &BTreeSet<String>) -> Option<String> {
    let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    let mut base: Vec<String> = module.split("::").map(str::to_string).collect();
    match parts.first().copied() {
        Some("crate") => {
            base = vec!["crate".into()];
            parts.remove(0);
        }
        Some("vip_operator") => {
            base = vec!["crate".into()];
            parts.remove(0);
        }
        Some("self") => {
            parts.remove(0);
        }
        Some("super") => {
            while parts.first() == Some(&"super") {
                parts.remove(0);
                base.pop();
            }
        }
        Some(first) if children.contains(first) => {}
        _ => return None,
    }
    let mut found = None;
    let mut current = base.join("::");
    for part in parts {
        current = format!("{current}::{part}");
        if modules.contains(&current) {
            found = Some(current.clone());
        } else {
            break;
        }
    }
    found.or_else(|| Some(base.join("::")).filter(|m| modules.contains(m)))
}

/// Every cycle of the graph, as found by a depth-first search (one per back edge).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            found.push(cycle);
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, stack, done, found);
        }
        stack.pop();
        done.insert(node.to_string());
    }
    let (mut done, mut found) = (BTreeSet::new(), vec![]);
    for node in graph.keys() {
        visit(node, graph, &mut vec![], &mut done, &mut found);
    }
    found
}

fn graph_of(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut all = vec![];
    files(src, &mut all);
    // The binary is its own crate.
    all.retain(|f| f.file_name().is_some_and(|n| n != "main.rs"));
    let modules: BTreeSet<String> = all.iter().map(|f| module_of(src, f)).collect();
    let mut graph = BTreeMap::new();
    for file in &all {
        let module = module_of(src, file);
        let text = std::fs::read_to_string(file).expect("read a source file");
        let code = code(&text);
        let children: BTreeSet<String> = modules
            .iter()
            .filter_map(|m| m.strip_prefix(&format!("{module}::")))
            .filter(|rest| !rest.contains("::"))
            .map(str::to_string)
            .collect();
        let edges: BTreeSet<String> = paths(&code)
            .iter()
            .filter_map(|p| resolve(&module, p, &modules, &children))
            .filter(|target| *target != module)
            .collect();
        graph.insert(module, edges);
    }
    graph
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph_of(&src);
    assert!(graph.len() > 40, "the modules were not found: {:?}", graph.keys());
    let found = cycles(&graph);
    let shown: Vec<String> = found.iter().map(|c| c.join(" → ")).collect();
    assert!(found.is_empty(), "module cycles:\n{}", shown.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle_through_a_parent_and_a_child() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).expect("folder");
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").expect("write");
    // a re-exports its child; the child imports through its parent: a → a::c → a.
    std::fs::write(src.join("a/mod.rs"), "mod c;\npub use c::C;\npub struct A;\n").expect("write");
    std::fs::write(src.join("a/c.rs"), "use super::A;\npub struct C(A);\n").expect("write");
    // b names a only in a comment, a string and its tests: no edge.
    std::fs::write(
        src.join("b.rs"),
        "// crate::a::A\nconst S: &str = \"crate::a::A\";\n#[cfg(test)]\nmod tests {\n    use crate::a::A;\n}\n",
    )
    .expect("write");
    let graph = graph_of(src);
    assert_eq!(graph["crate::b"], BTreeSet::new(), "{graph:?}");
    let found = cycles(&graph);
    assert!(
        found.iter().any(|c| c.contains(&"crate::a".to_string()) && c.contains(&"crate::a::c".to_string())),
        "{found:?}"
    );
}
