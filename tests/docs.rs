//! The documentation generated from clap stays true: docs/reference.md's configuration
//! reference is what `kube-ssh-tunnel reference` prints and names every flag and environment
//! variable that `--help` shows; completions and the man page render; the README opens with
//! the two set-up commands.

use std::collections::BTreeSet;
use std::process::Command;

fn bin(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

fn reference_doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference.md")).unwrap()
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
    let block: Vec<&str> = r
        .lines()
        .skip_while(|l| *l != "```sh")
        .skip(1)
        .take(3)
        .collect();
    assert_eq!(block, ["cargo run --release -- demo", "scripts/test", "```"]);
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/kube-ssh-tunnel.service"
    ))
    .unwrap();
    assert!(example.contains("ExecReload=/bin/kill -HUP $MAINPID"));
}
