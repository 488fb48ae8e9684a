//! The documentation stays true:
//! - docs/reference.md's configuration reference is what `kube-ssh-tunnel reference` prints
//!   and names every flag and environment variable that `--help` shows; completions and the
//!   man page render;
//! - the README opens with the two set-up commands, and `scripts/test` is a script;
//! - every relative link in README.md and docs/*.md reaches a file (and heading) of the
//!   repository, and no file points into a directory outside it;
//! - every `src/...` and `tests/...` path docs/architecture.md names exists, and every test
//!   an invariant names (`tests/FILE.rs::NAME`) is a test function there;
//! - what the docs say the program prints is what it prints: every message a troubleshooting
//!   table quotes is in a string literal of src/, the flags the docs call settable by
//!   environment variable have one (and those listed without have none), the `/status` field
//!   list names every field, and the `keygen` output shown is keygen's.

// Included as every test file does (`support` allows its own unused items).
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn bin(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel"));
    cmd.args(args).env_remove("RUST_LOG");
    let out = support::run_bounded(&mut cmd, b"", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn readme() -> String {
    read("README.md")
}

fn reference_doc() -> String {
    read("docs/reference.md")
}

/// docs/reference.md's generated section.
fn generated_reference() -> String {
    let r = reference_doc();
    let start = r
        .find("<!-- BEGIN GENERATED REFERENCE")
        .expect("the BEGIN GENERATED REFERENCE marker");
    let body = &r[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let end = body
        .find("<!-- END GENERATED REFERENCE")
        .expect("the END GENERATED REFERENCE marker");
    body[..end].to_string()
}

const SUBCOMMANDS: [&str; 10] = [
    "demo",
    "run",
    "dial",
    "status",
    "reconnect",
    "drain",
    "keygen",
    "check",
    "completions",
    "man",
];

#[test]
fn the_reference_doc_is_the_generated_one() {
    let (code, generated, err) = bin(&["reference"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        generated_reference().trim() == generated.trim(),
        "docs/reference.md is stale: run scripts/reference.sh"
    );
}

#[test]
fn the_reference_doc_names_every_flag_and_variable_of_help() {
    let section = generated_reference();
    let (_, top, _) = bin(&["--help"]);
    for sub in SUBCOMMANDS {
        assert!(
            top.contains(&format!("  {sub}")),
            "--help lists no {sub}:\n{top}"
        );
        let (code, help, err) = bin(&[sub, "--help"]);
        assert_eq!(code, 0, "{sub} --help: {err}");
        assert!(
            section.contains(&format!("### `kube-ssh-tunnel {sub}`")),
            "the reference has no section for {sub}"
        );
        // This subcommand's part of the reference.
        let part = section
            .split("### `kube-ssh-tunnel ")
            .find(|p| p.starts_with(&format!("{sub}`")))
            .unwrap();
        let mut flags = BTreeSet::new();
        let mut envs = BTreeSet::new();
        for line in help.lines() {
            // An option line: "  -o, --output <OUTPUT>  help…"; the spec ends at two spaces.
            let t = line.trim_start();
            if t.starts_with('-') {
                let spec = t.split("  ").next().unwrap_or_default();
                if let Some(opt) = spec
                    .split([' ', ','])
                    .find(|w| w.starts_with("--"))
                    .filter(|w| *w != "--help" && *w != "--version")
                {
                    flags.insert(opt.to_string());
                }
            }
            if let Some(i) = line.find("[env: ") {
                let v = &line[i + 6..];
                envs.insert(v[..v.find(['=', ']']).unwrap()].to_string());
            }
        }
        assert!(
            !flags.is_empty() || sub == "man" || sub == "completions",
            "{sub}: no flags parsed from:\n{help}"
        );
        for f in &flags {
            assert!(
                part.contains(&format!("{f} ")) || part.contains(&format!("{f}`")),
                "{sub}: {f} from --help is missing in docs/reference.md"
            );
        }
        for e in &envs {
            assert!(
                part.contains(&format!("`{e}`")),
                "{sub}: {e} from --help is missing in docs/reference.md"
            );
        }
    }
}

#[test]
fn completions_and_the_man_page_render() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = bin(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(
            out.contains("kube-ssh-tunnel") && out.contains("ssh-known-hosts"),
            "{shell}"
        );
    }
    let (code, _, err) = bin(&["completions", "powershell"]);
    assert_eq!(code, 2, "{err}");
    let (code, man, err) = bin(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(man.contains(".TH kube-ssh-tunnel"), "{man}");
    assert!(
        man.contains("KUBE\\-SSH\\-TUNNEL RUN") || man.contains("KUBE-SSH-TUNNEL RUN"),
        "{man}"
    );
    assert!(
        man.contains("ssh\\-known\\-hosts"),
        "the man page documents the flags"
    );
}

#[test]
fn the_readme_opens_with_the_two_set_up_commands() {
    let r = readme();
    // The title, then at once the block with the two commands.
    let lines: Vec<&str> = r.lines().filter(|l| !l.trim().is_empty()).take(5).collect();
    assert_eq!(
        lines,
        [
            "# kube-ssh-tunnel",
            "```sh",
            "cargo run --release -- demo",
            "scripts/test",
            "```"
        ],
        "README.md must open with its two set-up commands"
    );
    let script = read("scripts/test");
    assert!(
        script.starts_with("#!/usr/bin/env bash\n") && script.contains("\nset -euo pipefail\n"),
        "scripts/test is a strict bash script"
    );
    assert!(
        script.contains("cargo test \"$@\""),
        "scripts/test runs cargo test with its arguments"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(repo().join("scripts/test"))
        .unwrap()
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "scripts/test is executable");
    assert!(
        read(".ci/run").contains("\nscripts/test\n"),
        ".ci/run runs the README's test command"
    );
    let example = read("examples/kube-ssh-tunnel.service");
    assert!(example.contains("ExecReload=/bin/kill -HUP $MAINPID"));
}

/// README.md and every Markdown file in docs/, as paths relative to the repository.
fn markdown_docs() -> Vec<String> {
    let mut v = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 5, "docs/ holds the documentation: {docs:?}");
    v.extend(docs);
    v
}

/// The lines of a Markdown text outside fenced code blocks, with their line numbers, inline
/// code spans removed.
fn prose_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop `code spans`: a link inside one is not a link.
        let mut kept = String::new();
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            } else if !in_code {
                kept.push(c);
            }
        }
        out.push((i + 1, kept));
    }
    out
}

/// The link targets of a Markdown text: inline `[text](target)` and reference definitions
/// `[name]: target`, with their line numbers.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose_lines(text) {
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((n, target.trim_matches(['<', '>']).to_string()));
            rest = &after[end..];
        }
        let t = line.trim_start();
        if t.starts_with('[')
            && let Some(i) = t.find("]:")
            && !t[..i].contains('(')
        {
            let target = t[i + 2..].split_whitespace().next().unwrap_or("");
            out.push((n, target.to_string()));
        }
    }
    out
}

/// GitHub's anchors for the headings of a Markdown text: lower case, spaces to hyphens, other
/// punctuation dropped; a repeated heading gets `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        let mut k = 0;
        while seen.contains(&unique) {
            k += 1;
            unique = format!("{slug}-{k}");
        }
        seen.insert(unique);
    }
    seen
}

#[test]
fn every_relative_link_in_the_docs_reaches_a_file_of_the_repository() {
    let root = repo().canonicalize().unwrap();
    let mut checked = 0;
    let mut broken = Vec::new();
    for doc in markdown_docs() {
        let text = read(&doc);
        let dir = Path::new(&doc).parent().unwrap().to_path_buf();
        for (line, target) in link_targets(&text) {
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                repo().join(&doc)
            } else {
                repo().join(&dir).join(path)
            };
            let Ok(real) = file.canonicalize() else {
                broken.push(format!("{doc}:{line}: {target}: no such file"));
                continue;
            };
            if !real.starts_with(&root) || real.starts_with(root.join("target")) {
                broken.push(format!("{doc}:{line}: {target}: outside the repository"));
                continue;
            }
            if let Some(anchor) = anchor
                && real.extension().is_some_and(|e| e == "md")
            {
                let there = std::fs::read_to_string(&real).unwrap();
                if !anchors(&there).contains(anchor) {
                    broken.push(format!(
                        "{doc}:{line}: {target}: no heading with that anchor"
                    ));
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} relative links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Every file under `dir` (relative to the repository) whose name ends with one of `exts`,
/// except build output and git's own files.
fn files_under(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(repo().join(dir)).unwrap() {
        let e = e.unwrap();
        let rel = dir.join(e.file_name());
        let name = e.file_name().to_string_lossy().into_owned();
        let kind = e.file_type().unwrap();
        if kind.is_dir() {
            if rel != Path::new("target") && name != ".git" {
                files_under(&rel, exts, out);
            }
        } else if exts.iter().any(|x| name.ends_with(x)) {
            out.push(rel);
        }
    }
}

#[test]
fn no_file_points_outside_the_repository() {
    // Spelled in two pieces so that this file does not name it itself.
    let outside = ["..", "/shared"].concat();
    let mut files = Vec::new();
    files_under(Path::new(""), &[".md", ".rs"], &mut files);
    assert!(files.len() > 50, "found only {} files", files.len());
    let naming: Vec<String> = files
        .iter()
        .filter(|f| std::fs::read_to_string(repo().join(f)).is_ok_and(|t| t.contains(&outside)))
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        naming.is_empty(),
        "these files point to {outside}, outside the repository: {naming:?}"
    );
}

/// `src/...` and `tests/...` paths named in a text (a path ends at a character a path here
/// never has, and trailing dots end sentences).
fn repo_paths(text: &str) -> BTreeSet<String> {
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    let mut out = BTreeSet::new();
    for prefix in ["src/", "tests/"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(prefix) {
            let start = from + i;
            from = start + prefix.len();
            if text[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                continue;
            }
            let path: String = text[start..]
                .chars()
                .take_while(|c| is_path_char(*c))
                .collect();
            out.insert(path.trim_end_matches('.').to_string());
        }
    }
    out
}

#[test]
fn every_path_the_architecture_names_exists() {
    let arch = read("docs/architecture.md");
    let paths = repo_paths(&arch);
    assert!(
        paths.len() >= 60,
        "only {} paths found: {paths:?}",
        paths.len()
    );
    let missing: Vec<&String> = paths.iter().filter(|p| !repo().join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md names paths that do not exist: {missing:?}"
    );
    // The code map covers every folder of src/.
    for e in std::fs::read_dir(repo().join("src")).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            let folder = format!("src/{}/", e.file_name().to_string_lossy());
            assert!(
                arch.contains(&format!("`{folder}`")),
                "the code map in docs/architecture.md has no entry for {folder}"
            );
        }
    }
}

/// `FILE::NAME` references to test functions in a text, e.g. `tests/tunnel.rs::some_test`.
fn test_refs(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for span in text.split('`').skip(1).step_by(2) {
        if let Some((file, name)) = span.split_once("::")
            && (file.starts_with("tests/") || file.starts_with("src/"))
            && file.ends_with(".rs")
            && !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            out.push((file.to_string(), name.to_string()));
        }
    }
    out
}

/// What `file` has under the name of a test.
#[derive(Debug, PartialEq)]
enum Named {
    /// `fn name` with `#[test]` or `#[tokio::test...]` and no `#[ignore]`: it runs.
    Runs,
    /// A test, but `#[ignore]`d: it never runs in `scripts/test`, so it shows nothing.
    Ignored,
    /// No such test function.
    Missing,
}

/// What `text` (a Rust source file) has under the name `name`.
fn named_in_text(text: &str, name: &str) -> Named {
    for pat in [format!("fn {name}("), format!("fn {name}<")] {
        if let Some(i) = text.find(&pat) {
            // The attributes between the previous item and this one.
            let before = &text[..i];
            let item_start = before.rfind(['}', ';']).map_or(0, |j| j + 1);
            let attrs = &before[item_start..];
            if !(attrs.contains("#[test]") || attrs.contains("#[tokio::test")) {
                return Named::Missing;
            }
            if attrs.contains("#[ignore") || attrs.contains("ignore)]") {
                return Named::Ignored;
            }
            return Named::Runs;
        }
    }
    Named::Missing
}

/// What `file` has under the name `name`.
fn named_in(file: &str, name: &str) -> Named {
    match std::fs::read_to_string(repo().join(file)) {
        Ok(text) => named_in_text(&text, name),
        Err(_) => Named::Missing,
    }
}

/// True when `file` defines `fn name` as a test that runs (not `#[ignore]`d).
fn is_test_in(file: &str, name: &str) -> bool {
    named_in(file, name) == Named::Runs
}

/// Why `file::name` is no evidence, for a message.
fn why_not(file: &str, name: &str) -> String {
    match named_in(file, name) {
        Named::Ignored => format!("test {name} in {file} is #[ignore]d, so it never runs"),
        _ => format!("no test fn {name} in {file}"),
    }
}

#[test]
fn an_ignored_or_missing_test_is_no_evidence() {
    let src = "#[test]\nfn runs() {}\n\n#[test]\n#[ignore = \"slow\"]\nfn skipped() {}\n\n\
               #[tokio::test(flavor = \"multi_thread\")]\n#[ignore]\nasync fn skipped_too() {}\n\n\
               fn helper() {}\n";
    assert_eq!(named_in_text(src, "runs"), Named::Runs);
    assert_eq!(named_in_text(src, "skipped"), Named::Ignored);
    assert_eq!(named_in_text(src, "skipped_too"), Named::Ignored);
    assert_eq!(named_in_text(src, "helper"), Named::Missing);
    assert_eq!(named_in_text(src, "absent"), Named::Missing);
}

#[test]
fn every_invariant_names_a_test_that_exists() {
    let arch = read("docs/architecture.md");
    let start = arch
        .find("\n## Invariants\n")
        .expect("docs/architecture.md has an Invariants section");
    let section = &arch[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    // Each invariant is a top-level bullet with its continuation lines.
    let mut invariants: Vec<String> = Vec::new();
    for line in section.lines() {
        if let Some(rest) = line.strip_prefix("- ") {
            invariants.push(rest.to_string());
        } else if let Some(last) = invariants.last_mut()
            && line.starts_with("  ")
        {
            last.push(' ');
            last.push_str(line.trim());
        }
    }
    assert!(
        invariants.len() >= 8,
        "only {} invariants",
        invariants.len()
    );
    let mut problems = Vec::new();
    for inv in &invariants {
        let title = inv.split("**").nth(1).unwrap_or(inv).to_string();
        let refs = test_refs(inv);
        if refs.is_empty() && !inv.contains("Not tested") {
            problems.push(format!(
                "\"{title}\" names no test and does not say \"Not tested\""
            ));
        }
        if !refs.is_empty() && !inv.contains("Test: `") {
            problems.push(format!(
                "\"{title}\" names its tests without \"Test: `FILE::NAME`\""
            ));
        }
        for (file, name) in refs {
            if !is_test_in(&file, &name) {
                problems.push(format!("\"{title}\": {}", why_not(&file, &name)));
            }
        }
    }
    // A test named as FILE::NAME anywhere else in the docs exists too.
    for doc in markdown_docs() {
        for (file, name) in test_refs(&read(&doc)) {
            if !is_test_in(&file, &name) {
                problems.push(format!("{doc}: {}", why_not(&file, &name)));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_test_the_docs_name_by_itself_exists() {
    // A test named without its file (`some_long_test_name`) anywhere in the docs: a snake_case
    // span of five words or more. The generated reference holds config keys, not tests.
    let mut sources = Vec::new();
    files_under(Path::new("src"), &[".rs"], &mut sources);
    files_under(Path::new("tests"), &[".rs"], &mut sources);
    let mut named = BTreeSet::new();
    for doc in markdown_docs() {
        if doc == "docs/reference.md" {
            continue;
        }
        for span in read(&doc).split('`').skip(1).step_by(2) {
            if span.matches('_').count() >= 4
                && span
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                named.insert((doc.clone(), span.to_string()));
            }
        }
    }
    assert!(named.len() >= 10, "only {} tests named", named.len());
    let missing: Vec<String> = named
        .iter()
        .filter(|(_, name)| {
            !sources
                .iter()
                .any(|f| is_test_in(&f.display().to_string(), name))
        })
        .map(|(doc, name)| format!("{doc}: {name}"))
        .collect();
    assert!(
        missing.is_empty(),
        "the docs name tests that do not exist:\n{}",
        missing.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Quoted messages, environment variables, the `/status` fields and keygen's output: what the
// docs say the program prints is what it prints.

/// The string literals of a Rust source text, read with syn's tokenizer: doc comments and
/// `#[cfg(test)]` items (unit tests) are left out, attributes (`#[error("…")]`) and macro
/// arguments (`format!`, `tracing::info!`) are included.
fn string_literals(text: &str) -> Vec<String> {
    use syn::parse::{ParseStream, Parser};

    fn skip_item(input: ParseStream) -> syn::Result<()> {
        while !input.is_empty() {
            if input.peek(syn::token::Brace) {
                let body;
                syn::braced!(body in input);
                // Every token must be consumed, or syn reports the rest as unexpected.
                while !body.is_empty() {
                    step(&body)?;
                }
                return Ok(());
            }
            if input.peek(syn::Token![;]) {
                input.parse::<syn::Token![;]>()?;
                return Ok(());
            }
            step(input)?;
        }
        Ok(())
    }

    fn step(input: ParseStream) -> syn::Result<()> {
        input.step(|cursor| match cursor.token_tree() {
            Some((_, next)) => Ok(((), next)),
            None => Err(cursor.error("unexpected end")),
        })
    }

    fn walk(input: ParseStream, out: &mut Vec<String>) -> syn::Result<()> {
        while !input.is_empty() {
            let outer = input.peek(syn::Token![#]) && input.peek2(syn::token::Bracket);
            let inner = input.peek(syn::Token![#])
                && input.peek2(syn::Token![!])
                && input.peek3(syn::token::Bracket);
            if outer || inner {
                let attrs = if inner {
                    input.call(syn::Attribute::parse_inner)?
                } else {
                    input.call(syn::Attribute::parse_outer)?
                };
                let mut test_only = false;
                for a in &attrs {
                    if a.path().is_ident("doc") {
                        continue;
                    }
                    match &a.meta {
                        syn::Meta::List(l) => {
                            if a.path().is_ident("cfg") && l.tokens.to_string() == "test" {
                                test_only = true;
                            }
                            l.parse_args_with(|i: ParseStream| walk(i, out))?;
                        }
                        syn::Meta::NameValue(nv) => {
                            if let syn::Expr::Lit(syn::ExprLit {
                                lit: syn::Lit::Str(s),
                                ..
                            }) = &nv.value
                            {
                                out.push(s.value());
                            }
                        }
                        syn::Meta::Path(_) => {}
                    }
                }
                if test_only {
                    skip_item(input)?;
                }
                continue;
            }
            if input.peek(syn::LitStr) {
                out.push(input.parse::<syn::LitStr>()?.value());
            } else if input.peek(syn::token::Paren) {
                let inside;
                syn::parenthesized!(inside in input);
                walk(&inside, out)?;
            } else if input.peek(syn::token::Bracket) {
                let inside;
                syn::bracketed!(inside in input);
                walk(&inside, out)?;
            } else if input.peek(syn::token::Brace) {
                let inside;
                syn::braced!(inside in input);
                walk(&inside, out)?;
            } else {
                step(input)?;
            }
        }
        Ok(())
    }

    let mut out = Vec::new();
    (|input: ParseStream| walk(input, &mut out))
        .parse_str(text)
        .unwrap_or_else(|e| panic!("cannot tokenize: {e}"));
    out
}

/// Every string literal of src/ (format strings with `{{`/`}}` also as printed).
fn source_literals() -> Vec<String> {
    let mut files = Vec::new();
    files_under(Path::new("src"), &[".rs"], &mut files);
    let mut out = Vec::new();
    for f in files {
        for lit in string_literals(&read(&f.display().to_string())) {
            if lit.contains("{{") || lit.contains("}}") {
                out.push(lit.replace("{{", "{").replace("}}", "}"));
            }
            out.push(lit);
        }
    }
    out
}

/// The first cells of the body rows of every Markdown table whose first header cell starts
/// with "message", with their line numbers.
fn message_cells(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_table = false;
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        let cells: Vec<&str> = line.split('|').collect();
        if fenced || !line.starts_with('|') || cells.len() < 3 {
            in_table = false;
            continue;
        }
        let first = cells[1].trim();
        if first.to_lowercase().starts_with("message") {
            in_table = true;
        } else if in_table && !first.starts_with("---") {
            out.push((i + 1, first.to_string()));
        }
    }
    out
}

/// The `code spans` of a text.
fn code_spans(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Why `message` (`…` stands for text that varies) is not one the code can emit, or None:
/// each fixed part must occur in one of `literals`, and one part must be long enough to mean
/// something.
fn not_emitted(message: &str, literals: &[String]) -> Option<String> {
    let parts: Vec<&str> = message
        .split('…')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.iter().all(|p| p.chars().count() < 8) {
        return Some(format!(
            "`{message}` has no fixed part of 8 characters or more to look for"
        ));
    }
    let missing: Vec<&str> = parts
        .iter()
        .copied()
        .filter(|p| !literals.iter().any(|l| l.contains(p)))
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "`{message}`: no string literal in src/ contains {missing:?}"
        ))
    }
}

#[test]
fn a_quoted_message_the_code_does_not_emit_is_caught() {
    let src = "//! `node {node}: made up`\n\
               #[derive(Debug, thiserror::Error)]\n\
               enum E { #[error(\"node {node}: host key {offered} is not in {files}; \\\n\
               refusing to connect\")] A }\n\
               fn f() { tracing::warn!(x = %y, \"watching failed; retrying\"); }\n\
               #[cfg(test)]\nmod tests { fn t() { let _ = \"only in a unit test\"; } }\n";
    let lits = string_literals(src);
    assert_eq!(
        lits,
        [
            "node {node}: host key {offered} is not in {files}; refusing to connect",
            "watching failed; retrying"
        ]
    );
    assert_eq!(
        not_emitted("host key … is not in …; refusing to connect", &lits),
        None
    );
    assert_eq!(not_emitted("watching failed; retrying", &lits), None);
    assert!(
        not_emitted("node …: made up", &lits).is_some(),
        "doc comments do not count"
    );
    assert!(not_emitted("only in a unit test", &lits).is_some());
    assert!(not_emitted("host key … was rejected", &lits).is_some());
    assert!(
        not_emitted("… (…)", &lits).is_some(),
        "too little to look for"
    );
    let table = "| message (STATE) | meaning |\n|---|---|\n| `a … b` (failed) | x |\n\n\
                 | status | when |\n|---|---|\n| `not a message` | y |\n";
    assert_eq!(message_cells(table), [(3, "`a … b` (failed)".to_string())]);
}

#[test]
fn every_message_the_troubleshooting_tables_quote_is_in_the_code() {
    let literals = source_literals();
    assert!(literals.len() > 500, "only {} literals", literals.len());
    let mut quoted = 0;
    let mut problems = Vec::new();
    for doc in markdown_docs() {
        for (line, cell) in message_cells(&read(&doc)) {
            let spans = code_spans(&cell);
            if spans.is_empty() {
                problems.push(format!("{doc}:{line}: quotes no message in `code`"));
            }
            for m in spans {
                quoted += 1;
                if let Some(why) = not_emitted(&m, &literals) {
                    problems.push(format!("{doc}:{line}: {why}"));
                }
            }
        }
    }
    assert!(quoted >= 20, "only {quoted} messages quoted");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The subcommands whose flags may have environment variables.
const FLAG_SUBCOMMANDS: [&str; 9] = [
    "run",
    "dial",
    "check",
    "status",
    "reconnect",
    "drain",
    "keygen",
    "demo",
    "publish-host-key",
];

/// A subcommand's long flags from its `--help`, each with its environment variable if it has
/// one. An option's block runs from its line (indented less than 8 spaces) to the next one, so
/// a `[env: …]` below a list of possible values still belongs to it.
fn flags_and_variables(sub: &str) -> Vec<(String, Option<String>)> {
    let (code, help, err) = bin(&[sub, "--help"]);
    assert_eq!(code, 0, "{sub} --help: {err}");
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        if t.starts_with('-') && indent < 8 {
            let spec = t.split("  ").next().unwrap_or_default();
            let long = spec
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .unwrap_or_default()
                .to_string();
            out.push((long, None));
        } else if let Some(i) = line.find("[env: ")
            && let Some(last) = out.last_mut()
        {
            let v = &line[i + 6..];
            last.1 = Some(v[..v.find(['=', ']']).unwrap()].to_string());
        }
    }
    out.retain(|(f, _)| f != "--help" && f != "--version" && !f.is_empty());
    assert!(!out.is_empty(), "{sub}: no flags parsed from:\n{help}");
    out
}

#[test]
fn the_flags_the_docs_call_environment_settable_have_a_variable() {
    let mut variables = BTreeSet::new();
    let mut with = BTreeSet::new();
    let mut without = BTreeSet::new();
    for sub in FLAG_SUBCOMMANDS {
        let flags = flags_and_variables(sub);
        if flags.iter().any(|(_, v)| v.is_some()) {
            with.insert(sub.to_string());
        }
        if flags.iter().all(|(_, v)| v.is_none()) {
            without.insert(sub.to_string());
            continue;
        }
        for (flag, var) in flags {
            match var {
                Some(v) => {
                    variables.insert(v);
                }
                None => {
                    without.insert(format!("{sub} {flag}"));
                }
            }
        }
    }
    assert!(
        variables.contains("KUBE_SSH_TUNNEL_SSH_USER"),
        "{variables:?}"
    );

    // Every variable the prose names is one that --help shows.
    let mut problems = Vec::new();
    for doc in markdown_docs() {
        if doc == "docs/reference.md" {
            continue;
        }
        let text = read(&doc);
        for (i, _) in text.match_indices("KUBE_SSH_TUNNEL_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.ends_with('_') && !variables.contains(&name) {
                problems.push(format!("{doc}: {name} is no flag's environment variable"));
            }
        }
    }

    // The sentence in operations.md says which subcommands' flags have one, and which flags
    // have none.
    let ops = read("docs/operations.md");
    let flat = ops.replace('\n', " ");
    let start = flat
        .find("Every flag of `")
        .expect("operations.md says which flags have an environment variable");
    let sentence = &flat[start..];
    let sentence = &sentence[..sentence.find(". The ").expect("the sentence ends")];
    let (settable, none) = sentence
        .split_once("which have none:")
        .expect("the sentence lists the flags without one after \"which have none:\"");
    let said_with: BTreeSet<String> = code_spans(settable)
        .into_iter()
        .filter(|s| !s.starts_with("KUBE_SSH_TUNNEL_"))
        .collect();
    let said_without: BTreeSet<String> = code_spans(none).into_iter().collect();
    if said_with != with {
        problems.push(format!(
            "operations.md says the flags of {said_with:?} have variables; --help shows them for {with:?}"
        ));
    }
    if said_without != without {
        problems.push(format!(
            "operations.md says {said_without:?} have no variable; --help shows none for {without:?}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The field names of the named structs in a Rust source text.
fn struct_fields(text: &str, names: &[&str]) -> Vec<String> {
    let file = syn::parse_file(text).expect("parses");
    let mut out = Vec::new();
    for item in file.items {
        if let syn::Item::Struct(s) = item
            && names.contains(&s.ident.to_string().as_str())
        {
            for f in s.fields {
                out.push(f.ident.expect("named fields").to_string());
            }
        }
    }
    out
}

#[test]
fn the_status_field_list_names_every_field_of_the_document() {
    let fields = struct_fields(
        &read("src/admin/document.rs"),
        &["StatusDocument", "NodeDocument", "HealthDocument"],
    );
    assert!(
        fields.len() >= 35,
        "only {} fields: {fields:?}",
        fields.len()
    );
    let ops = read("docs/operations.md");
    let start = ops
        .find("\n`/status`: ")
        .expect("operations.md lists the /status fields in a paragraph opening with `/status`:");
    let para = &ops[start + 1..];
    let para = &para[..para.find("\n\n").unwrap_or(para.len())];
    let named: BTreeSet<String> = code_spans(para)
        .iter()
        .flat_map(|s| {
            s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let missing: Vec<&String> = fields.iter().filter(|f| !named.contains(*f)).collect();
    assert!(
        missing.is_empty(),
        "the /status list in docs/operations.md leaves out {missing:?}"
    );
}

/// `text` with each run of base64 characters after `marker` replaced by `…` (keys and
/// fingerprints differ on every run).
fn mask_after(text: &str, marker: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(marker) {
        out.push_str(&rest[..i + marker.len()]);
        rest = &rest[i + marker.len()..];
        let n = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "+/=".contains(c)))
            .unwrap_or(rest.len());
        if n > 0 {
            out.push('…');
        }
        rest = &rest[n..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_keygen_output_the_docs_show_is_what_keygen_prints() {
    let ops = read("docs/operations.md");
    // The fenced block that opens with `$ kube-ssh-tunnel keygen …`, indented as a list item.
    let mut block: Option<Vec<String>> = None;
    let mut lines = ops.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```text"
            && let Some(first) = lines.clone().next()
            && first.trim_start().starts_with("$ kube-ssh-tunnel keygen")
        {
            let indent = line.len() - line.trim_start().len();
            let mut body = Vec::new();
            for l in lines.by_ref() {
                if l.trim() == "```" {
                    break;
                }
                body.push(l.get(indent..).unwrap_or("").to_string());
            }
            block = Some(body);
            break;
        }
    }
    let block = block.expect("operations.md shows keygen's output in a ```text block");
    let args: Vec<&str> = block[0]
        .trim_start_matches("$ kube-ssh-tunnel ")
        .split_whitespace()
        .collect();
    assert!(
        !args.iter().any(|a| a.starts_with("--out")),
        "the example writes the default keys/id_ed25519"
    );
    let dir = std::env::temp_dir().join(format!("kst-docs-keygen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel"));
    cmd.args(&args).current_dir(&dir).env_remove("RUST_LOG");
    let out = support::run_bounded(&mut cmd, b"", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    let printed = mask_after(&mask_after(&printed, "SHA256:"), "ssh-ed25519 AAAA");
    let shown = block[1..].join("\n");
    assert!(
        printed.trim_end() == shown.trim_end(),
        "docs/operations.md shows keygen's output as:\n{shown}\n\nbut `kube-ssh-tunnel {}` prints:\n{printed}",
        args.join(" ")
    );
}
