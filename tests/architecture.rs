//! Architecture invariants that the compiler does not check: the library's top-level modules
//! import each other without cycles (a cycle ties every file on it together), and the
//! library does not depend on the binary's modules or on the `cli`/`demo` features.

use std::collections::{BTreeMap, BTreeSet};
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

/// The library's module graph: module → the top-level modules it names as `crate::X`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let m = module_of(&f);
        if m == "cli" || m == "main" || m == "lib" {
            continue;
        }
        let code = non_test_code(&f);
        let deps = g.entry(m.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != m {
                deps.insert(name);
            }
        }
    }
    g
}

/// A cycle through `start`, if there is one.
fn cycle_from(
    g: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    at: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    for next in g.get(at).into_iter().flatten() {
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
    for m in g.keys() {
        let mut path = vec![m.clone()];
        if let Some(c) = cycle_from(&g, m, m, &mut path) {
            panic!("import cycle: {}", c.join(" -> "));
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
}
