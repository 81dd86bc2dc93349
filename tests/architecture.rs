// SPDX-License-Identifier: GPL-3.0-or-later
//! Architecture rules, checked on the source: the library's modules import each other
//! without cycles, and the policy core stays pure (no I/O, no clock, no adapter).
//!
//! The source is parsed with `syn`. Each file is a module; a module depends on another
//! when it names an item of it (through `use`, or a path starting with `crate`, `super`,
//! `self` or a name a `use` brought in). Re-exports are followed to the module that
//! defines the item, so `crate::policy::MessageFacts` counts as a use of `policy::facts`.
//! A module that names its own descendants (a parent re-exporting its children) adds no
//! edge: a parent owns its children. Test code (`#[cfg(test)]`) is left out.
//!
//! `FANOUT_MODULE_GRAPH=1 cargo test --test architecture -- --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

/// A module path inside the library, e.g. `["policy", "facts"]` (the crate root is `[]`).
type ModPath = Vec<String>;

/// One parsed module file.
struct Module {
    file: PathBuf,
    /// Full paths this module names (after expanding its `use` aliases).
    refs: Vec<Vec<String>>,
    /// Names this module re-exports (`pub use`), to the full path they stand for.
    exports: BTreeMap<String, Vec<String>>,
    /// Glob re-exports (`pub use x::*`).
    glob_exports: Vec<Vec<String>>,
    /// External crates and std paths named (`tokio::...`, `std::fs::...`).
    externals: BTreeSet<String>,
}

fn is_test_attr(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| match &a.meta {
        syn::Meta::List(l) if l.path.is_ident("cfg") => {
            let text = l.tokens.to_string();
            text.contains("test") && !text.contains("not")
        }
        _ => false,
    })
}

/// Expands a `use` tree into (local name, full path, is glob) triples.
fn flatten_use(prefix: &[String], tree: &syn::UseTree, out: &mut Vec<(String, Vec<String>, bool)>) {
    match tree {
        syn::UseTree::Path(p) => {
            let mut next = prefix.to_vec();
            next.push(p.ident.to_string());
            flatten_use(&next, &p.tree, out);
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            if name == "self" {
                if let Some(last) = prefix.last() {
                    out.push((last.clone(), prefix.to_vec(), false));
                }
            } else {
                let mut full = prefix.to_vec();
                full.push(name.clone());
                out.push((name, full, false));
            }
        }
        syn::UseTree::Rename(r) => {
            let mut full = prefix.to_vec();
            if r.ident != "self" {
                full.push(r.ident.to_string());
            }
            out.push((r.rename.to_string(), full, false));
        }
        syn::UseTree::Glob(_) => out.push((String::new(), prefix.to_vec(), true)),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten_use(prefix, t, out);
            }
        }
    }
}

/// Collects every path a file names, outside test code.
#[derive(Default)]
struct Collector {
    paths: Vec<Vec<String>>,
    uses: Vec<(String, Vec<String>, bool, bool)>,
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Type(t) => &t.attrs,
            syn::Item::Macro(m) => &m.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if is_test_attr(attrs) {
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let public = !matches!(u.vis, syn::Visibility::Inherited);
        let mut out = Vec::new();
        flatten_use(&[], &u.tree, &mut out);
        for (name, full, glob) in out {
            self.uses.push((name, full, glob, public));
        }
    }

    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {
        // `pub(super)`, `pub(in crate::x)` restrict who sees an item: no import.
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.paths
            .push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        // Paths inside macro calls (format args, assert!) are tokens, not syntax: take
        // the `crate::a::b` and `super::x` sequences from them.
        let tokens: Vec<String> = m
            .tokens
            .clone()
            .into_iter()
            .map(|t| t.to_string())
            .collect();
        let mut i = 0;
        while i < tokens.len() {
            if tokens[i] == "crate" || tokens[i] == "super" {
                let mut path = vec![tokens[i].clone()];
                let mut j = i + 1;
                while j + 1 < tokens.len() && tokens[j] == ":" && tokens[j + 1] == ":" {
                    if let Some(seg) = tokens.get(j + 2) {
                        path.push(seg.clone());
                    }
                    j += 3;
                }
                self.paths.push(path);
                i = j;
            } else {
                i += 1;
            }
        }
        syn::visit::visit_macro(self, m);
    }
}

/// Finds the library's module files by following `mod` declarations from `root`.
fn module_files(src: &Path, root: &Path) -> BTreeMap<ModPath, PathBuf> {
    let mut found = BTreeMap::new();
    let mut todo = vec![(ModPath::new(), root.to_path_buf())];
    while let Some((path, file)) = todo.pop() {
        let text = std::fs::read_to_string(&file).unwrap();
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let dir = if path.is_empty() {
            src.to_path_buf()
        } else if file.file_name().is_some_and(|n| n == "mod.rs") {
            file.parent().unwrap().to_path_buf()
        } else {
            file.with_extension("")
        };
        for item in &ast.items {
            if let syn::Item::Mod(m) = item
                && m.content.is_none()
                && !is_test_attr(&m.attrs)
            {
                let name = m.ident.to_string();
                let flat = dir.join(format!("{name}.rs"));
                let nested = dir.join(&name).join("mod.rs");
                let child = if flat.exists() { flat } else { nested };
                assert!(
                    child.exists(),
                    "module {name} of {} has no file",
                    file.display()
                );
                let mut p = path.clone();
                p.push(name);
                todo.push((p, child));
            }
        }
        found.insert(path, file);
    }
    found
}

fn parse(files: &BTreeMap<ModPath, PathBuf>) -> BTreeMap<ModPath, Module> {
    let crates_std = ["std", "core", "alloc"];
    let mut modules = BTreeMap::new();
    for (path, file) in files {
        let text = std::fs::read_to_string(file).unwrap();
        let ast = syn::parse_file(&text).unwrap();
        let mut c = Collector::default();
        c.visit_file(&ast);
        let resolve = |p: &[String]| -> Option<Vec<String>> {
            let first = p.first()?;
            match first.as_str() {
                "crate" => Some(p[1..].to_vec()),
                "self" => Some(path.iter().cloned().chain(p[1..].iter().cloned()).collect()),
                "super" => {
                    let mut base = path.clone();
                    let mut rest = p;
                    while rest.first().is_some_and(|s| s == "super") {
                        base.pop();
                        rest = &rest[1..];
                    }
                    Some(base.into_iter().chain(rest.iter().cloned()).collect())
                }
                _ => None,
            }
        };
        let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut exports = BTreeMap::new();
        let mut glob_exports = Vec::new();
        let mut refs = Vec::new();
        let mut externals = BTreeSet::new();
        for (name, full, glob, public) in &c.uses {
            let absolute = match resolve(full) {
                Some(a) => a,
                None if files.contains_key(&[path.clone(), vec![full[0].clone()]].concat()) => {
                    path.iter().cloned().chain(full.iter().cloned()).collect()
                }
                None => {
                    externals.insert(full.join("::"));
                    continue;
                }
            };
            refs.push(absolute.clone());
            if *glob {
                if *public {
                    glob_exports.push(absolute);
                }
            } else {
                if *public {
                    exports.insert(name.clone(), absolute.clone());
                }
                aliases.insert(name.clone(), absolute);
            }
        }
        for p in &c.paths {
            if let Some(a) = resolve(p) {
                refs.push(a);
            } else if let Some(base) = aliases.get(&p[0]) {
                refs.push(base.iter().cloned().chain(p[1..].iter().cloned()).collect());
            } else if crates_std.contains(&p[0].as_str()) || p.len() > 1 {
                externals.insert(p.join("::"));
            }
        }
        modules.insert(
            path.clone(),
            Module {
                file: file.clone(),
                refs,
                exports,
                glob_exports,
                externals,
            },
        );
    }
    modules
}

/// The module that defines the item `path` names, following re-exports.
fn owner(modules: &BTreeMap<ModPath, Module>, path: &[String], depth: usize) -> ModPath {
    let mut prefix = path.len();
    while prefix > 0 && !modules.contains_key(&path[..prefix].to_vec()) {
        prefix -= 1;
    }
    let module = path[..prefix].to_vec();
    if depth < 8
        && let Some(next) = path.get(prefix)
        && let Some(m) = modules.get(&module)
    {
        if let Some(target) = m.exports.get(next) {
            let mut full = target.clone();
            full.extend(path[prefix + 1..].iter().cloned());
            return owner(modules, &full, depth + 1);
        }
        for glob in &m.glob_exports {
            let mut full = glob.clone();
            full.extend(path[prefix..].iter().cloned());
            let found = owner(modules, &full, depth + 1);
            if found != *glob && found.len() > glob.len() {
                return found;
            }
        }
    }
    module
}

fn graph(modules: &BTreeMap<ModPath, Module>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (from, m) in modules {
        let out = edges.entry(from.clone()).or_default();
        for r in &m.refs {
            let to = owner(modules, r, 0);
            if to != *from && !to.starts_with(from) {
                out.insert(to);
            }
        }
    }
    edges
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct State<'a> {
        edges: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a ModPath) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                scc.push(w.clone());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.found.push(scc);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn name(p: &ModPath) -> String {
    if p.is_empty() {
        "crate".into()
    } else {
        p.join("::")
    }
}

fn library() -> BTreeMap<ModPath, Module> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    parse(&module_files(&src, &src.join("lib.rs")))
}

#[test]
fn library_modules_import_each_other_without_cycles() {
    let modules = library();
    assert!(modules.len() > 20, "found only {} modules", modules.len());
    let edges = graph(&modules);
    if std::env::var_os("FANOUT_MODULE_GRAPH").is_some() {
        for (from, to) in &edges {
            let to: Vec<String> = to.iter().map(name).collect();
            println!("{} -> {}", name(from), to.join(", "));
        }
    }
    let found = cycles(&edges);
    let text: Vec<String> = found
        .iter()
        .map(|scc| {
            let members: Vec<String> = scc
                .iter()
                .map(|m| {
                    let into: Vec<String> = edges[m]
                        .iter()
                        .filter(|t| scc.contains(t))
                        .map(name)
                        .collect();
                    format!(
                        "  {} ({}) -> {}",
                        name(m),
                        modules[m].file.display(),
                        into.join(", ")
                    )
                })
                .collect();
            members.join("\n")
        })
        .collect();
    assert!(found.is_empty(), "import cycles:\n{}", text.join("\n\n"));
}

/// The graph with each top-level module (a folder and everything in it) as one node.
fn top_level(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let top = |p: &ModPath| -> ModPath { p.iter().take(1).cloned().collect() };
    let mut out: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (from, to) in edges {
        let node = out.entry(top(from)).or_default();
        for t in to {
            if top(t) != top(from) && !t.is_empty() {
                node.insert(top(t));
            }
        }
    }
    out
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let edges = top_level(&graph(&library()));
    let found = cycles(&edges);
    let text: Vec<String> = found
        .iter()
        .flatten()
        .map(|m| {
            let into: Vec<String> = edges[m].iter().map(name).collect();
            format!("  {} -> {}", name(m), into.join(", "))
        })
        .collect();
    assert!(
        found.is_empty(),
        "cycles between top-level modules:\n{}",
        text.join("\n")
    );
}

#[test]
fn the_cycle_finder_finds_a_cycle_and_the_owner_follows_re_exports() {
    let m = |refs: &[&str], exports: &[(&str, &str)]| Module {
        file: PathBuf::new(),
        refs: refs
            .iter()
            .map(|r| r.split("::").map(String::from).collect())
            .collect(),
        exports: exports
            .iter()
            .map(|(n, t)| (n.to_string(), t.split("::").map(String::from).collect()))
            .collect(),
        glob_exports: Vec::new(),
        externals: BTreeSet::new(),
    };
    let p = |s: &str| -> ModPath { s.split("::").map(String::from).collect() };
    let mut modules = BTreeMap::new();
    modules.insert(ModPath::new(), m(&[], &[]));
    modules.insert(p("a"), m(&["a::b::X"], &[("Facts", "a::b::Facts")]));
    modules.insert(p("a::b"), m(&["a::c::Y"], &[]));
    modules.insert(p("a::c"), m(&["a::Facts"], &[]));
    let edges = graph(&modules);
    assert_eq!(owner(&modules, &p("a::Facts"), 0), p("a::b"));
    assert!(edges[&p("a")].is_empty(), "a parent owns its children");
    assert_eq!(cycles(&edges), vec![vec![p("a::b"), p("a::c")]]);
}

#[test]
fn the_policy_core_does_no_io_and_imports_no_adapter() {
    let modules = library();
    let forbidden = [
        "tokio",
        "indymilter",
        "std::fs",
        "std::io",
        "std::env",
        "std::net",
        "std::process",
        "std::thread",
        "SystemTime::now",
        "Instant::now",
        "rusqlite",
        "redis",
        "ldap3",
        "lettre",
        "ureq",
        "nix",
    ];
    let edges = graph(&modules);
    let mut problems = Vec::new();
    for (path, m) in &modules {
        if path.first().map(String::as_str) != Some("policy") {
            continue;
        }
        for ext in &m.externals {
            if forbidden
                .iter()
                .any(|f| ext.starts_with(f) || ext.contains(f))
            {
                problems.push(format!("{} uses {ext}", m.file.display()));
            }
        }
        for to in &edges[path] {
            let inside = to.first().map(String::as_str) == Some("policy");
            if !inside && to != &vec!["text".to_string()] {
                problems.push(format!("{} imports crate::{}", m.file.display(), name(to)));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
