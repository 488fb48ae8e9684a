//! Architecture invariants that the compiler does not check: the library's top-level modules
//! import each other without cycles (a cycle ties every file on it together), and the
//! library does not depend on the binary's modules or on the `cli`/`demo` features.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`pool` for `src/pool/slot.rs`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file without its `#[cfg(test)]` module (tests may import anything).
fn non_test_code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The module a file of `src/` is (`["pool", "slot"]` for `src/pool/slot.rs`, `["pool"]` for
/// `src/pool/mod.rs`, `[]` for `src/lib.rs`).
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap().with_extension("");
    let mut path: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        path.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        path.pop();
    }
    path
}

/// True for `#[cfg(test)]`.
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && matches!(&a.meta, syn::Meta::List(l) if l.tokens.to_string() == "test")
    })
}

/// The attributes of an item (of the kinds that can carry `#[cfg(test)]` here).
fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item::*;
    match item {
        Const(i) => &i.attrs,
        Enum(i) => &i.attrs,
        ExternCrate(i) => &i.attrs,
        Fn(i) => &i.attrs,
        ForeignMod(i) => &i.attrs,
        Impl(i) => &i.attrs,
        Macro(i) => &i.attrs,
        Mod(i) => &i.attrs,
        Static(i) => &i.attrs,
        Struct(i) => &i.attrs,
        Trait(i) => &i.attrs,
        TraitAlias(i) => &i.attrs,
        Type(i) => &i.attrs,
        Union(i) => &i.attrs,
        Use(i) => &i.attrs,
        _ => &[],
    }
}

/// Where a path inside module `at` leads in the crate (its segments from the crate root), if
/// it starts at `crate`, `self` or `super`; `None` for other paths (external crates, local
/// names, which reach the crate only through a `use` that is read too).
fn resolve(at: &[String], segments: &[String]) -> Option<Vec<String>> {
    let (mut base, rest) = match segments.first()?.as_str() {
        "crate" => (Vec::new(), &segments[1..]),
        "self" => (at.to_vec(), &segments[1..]),
        "super" => {
            let supers = segments.iter().take_while(|s| *s == "super").count();
            let mut base = at.to_vec();
            for _ in 0..supers {
                base.pop()?;
            }
            (base, &segments[supers..])
        }
        _ => return None,
    };
    base.extend(rest.iter().filter(|s| *s != "self").cloned());
    Some(base)
}

/// Every path of a file's non-test code that reaches into the crate, resolved from the
/// crate root: `use` trees (groups, renames, globs), paths in code and types, visibilities,
/// and `crate::`/`super::` paths inside macro calls (read from their tokens).
struct CratePaths {
    at: Vec<String>,
    found: Vec<Vec<String>>,
    /// A `use` glob of the crate root (it would import every module).
    root_glob: bool,
}

impl CratePaths {
    fn add(&mut self, segments: &[String]) {
        if let Some(p) = resolve(&self.at, segments) {
            self.found.push(p);
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.add(&prefix.clone());
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.add(&prefix.clone());
                prefix.pop();
            }
            syn::UseTree::Glob(_) => {
                self.root_glob |= resolve(&self.at, prefix).is_some_and(|p| p.is_empty());
                self.add(&prefix.clone());
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// `crate::a::b`, `super::super::c`, `self::d` in a macro's tokens.
    fn macro_tokens(&mut self, tokens: &str) {
        // Identifiers and `::` in order; anything else ends a path.
        let mut words: Vec<String> = Vec::new();
        let mut chars = tokens.chars().peekable();
        while let Some(c) = chars.next() {
            if c.is_alphanumeric() || c == '_' {
                let mut w = c.to_string();
                while let Some(&d) = chars.peek().filter(|d| d.is_alphanumeric() || **d == '_') {
                    w.push(d);
                    chars.next();
                }
                words.push(w);
            } else if c == ':' && chars.peek() == Some(&':') {
                chars.next();
                words.push("::".into());
            } else if !c.is_whitespace() {
                words.push(c.to_string());
            }
        }
        let mut i = 0;
        while i < words.len() {
            let starts = matches!(words[i].as_str(), "crate" | "super" | "self")
                && (i == 0 || words[i - 1] != "::");
            if !starts {
                i += 1;
                continue;
            }
            let mut segments = vec![words[i].clone()];
            i += 1;
            while i + 1 < words.len()
                && words[i] == "::"
                && words[i + 1]
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_')
            {
                segments.push(words[i + 1].clone());
                i += 2;
            }
            self.add(&segments);
        }
    }
}

impl<'ast> syn::visit::Visit<'ast> for CratePaths {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if !is_test(item_attrs(item)) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_test(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.at.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.at.pop();
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut prefix = Vec::new();
        if u.leading_colon.is_none() {
            self.use_tree(&mut prefix, &u.tree);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none() {
            let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
            self.add(&segments);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.macro_tokens(&m.tokens.to_string());
        syn::visit::visit_macro(self, m);
    }
}

/// The crate paths a file's non-test code names (see `CratePaths`).
fn crate_paths(file: &Path) -> Vec<Vec<String>> {
    let rel = file.strip_prefix(src()).unwrap().display().to_string();
    let text = std::fs::read_to_string(file).unwrap();
    let parsed = syn::parse_file(&text)
        .unwrap_or_else(|e| panic!("{}: does not parse: {e}", file.display()));
    let mut v = CratePaths {
        at: module_path(file),
        found: Vec::new(),
        root_glob: false,
    };
    syn::visit::Visit::visit_file(&mut v, &parsed);
    assert!(
        !v.root_glob,
        "src/{rel} imports every module of the crate (a `use` glob of the crate root): name them"
    );
    v.found
}

/// The names `src/lib.rs` re-exports at the crate root (`Pool`), each with the module it
/// comes from (`pool`): `crate::Pool` depends on `pool`.
fn root_reexports() -> BTreeMap<String, String> {
    fn walk(prefix: &mut Vec<String>, tree: &syn::UseTree, out: &mut BTreeMap<String, String>) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                walk(prefix, &p.tree, out);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                if let Some(m) = prefix.first() {
                    out.insert(n.ident.to_string(), m.clone());
                }
            }
            syn::UseTree::Rename(r) => {
                if let Some(m) = prefix.first() {
                    out.insert(r.rename.to_string(), m.clone());
                }
            }
            syn::UseTree::Glob(_) => panic!("src/lib.rs re-exports a glob: name what it exports"),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    walk(prefix, t, out);
                }
            }
        }
    }
    let text = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let parsed = syn::parse_file(&text).unwrap();
    let mut out = BTreeMap::new();
    for item in &parsed.items {
        if let syn::Item::Use(u) = item {
            walk(&mut Vec::new(), &u.tree, &mut out);
        }
    }
    out
}

/// The library's module graph: top-level module → the top-level modules it names (through
/// `crate::`, `self::` or `super::`, or a name `src/lib.rs` re-exports from a module), each
/// with the first file and path that names it.
fn graph() -> BTreeMap<String, BTreeMap<String, String>> {
    let reexports = root_reexports();
    assert!(
        reexports.get("Pool").map(String::as_str) == Some("pool"),
        "the re-exports of src/lib.rs were read: {reexports:?}"
    );
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut g: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for f in files {
        let m = module_of(&f);
        if m == "cli" || m == "main" || m == "lib" {
            continue;
        }
        let deps = g.entry(m.clone()).or_default();
        for path in crate_paths(&f) {
            let rel = f.strip_prefix(src()).unwrap().display().to_string();
            // An empty path is the crate root itself (`pub(crate)`): no module.
            let dep = path.first().map(|d| reexports.get(d).unwrap_or(d));
            if let Some(dep) = dep.filter(|d| **d != m) {
                deps.entry(dep.clone())
                    .or_insert_with(|| format!("src/{rel}: crate::{}", path.join("::")));
            }
        }
    }
    g
}

/// A cycle through `start`, if there is one.
fn cycle_from(
    g: &BTreeMap<String, BTreeMap<String, String>>,
    start: &str,
    at: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    for next in g.get(at).into_iter().flat_map(|d| d.keys()) {
        if next == start {
            let mut c = path.clone();
            c.push(start.to_string());
            return Some(c);
        }
        if path.contains(next) {
            continue;
        }
        path.push(next.clone());
        if let Some(c) = cycle_from(g, start, next, path) {
            return Some(c);
        }
        path.pop();
    }
    None
}

#[test]
fn the_library_modules_import_each_other_without_cycles() {
    let g = graph();
    assert!(g.len() > 10, "the graph was read: {g:?}");
    assert!(
        g["pool"].contains_key("ssh") && g["daemon"].contains_key("pool"),
        "the edges were read: {g:#?}"
    );
    for m in g.keys() {
        let mut path = vec![m.clone()];
        if let Some(c) = cycle_from(&g, m, m, &mut path) {
            let witnesses: Vec<&str> = c.windows(2).map(|w| g[&w[0]][&w[1]].as_str()).collect();
            panic!(
                "import cycle: {} ({})",
                c.join(" -> "),
                witnesses.join("; ")
            );
        }
    }
}

/// Node sources only produce node sets; the daemon's loop applies them to the pool.
#[test]
fn node_sources_import_neither_the_pool_nor_the_daemon() {
    let g = graph();
    let nodes = g.get("nodes").expect("src/nodes was read");
    for forbidden in ["pool", "daemon"] {
        if let Some(witness) = nodes.get(forbidden) {
            panic!("src/nodes imports {forbidden} ({witness}): a node source must not touch it");
        }
    }
}

#[test]
fn the_library_does_not_use_the_binary_or_its_crates() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for f in files {
        let m = module_of(&f);
        if m == "cli" || m == "main" {
            continue;
        }
        let code = non_test_code(&f);
        for needle in [
            "crate::cli",
            "clap::",
            "clap_complete",
            "clap_mangen",
            "tracing_subscriber",
        ] {
            assert!(
                !code.contains(needle),
                "{} uses {needle}: the library must build without the `cli` feature",
                f.display()
            );
        }
        if m != "demo" {
            assert!(
                !code.contains("rcgen") && !code.contains("crate::demo"),
                "{} uses the demo: the library must build without the `demo` feature",
                f.display()
            );
        }
    }
    // Also through `super::` or a `use crate::{...}` group, which the text search misses.
    for (m, deps) in graph() {
        if m != "demo" {
            assert!(
                !deps.contains_key("demo"),
                "{m} uses the demo ({}): the library must build without the `demo` feature",
                deps["demo"]
            );
        }
    }
}
