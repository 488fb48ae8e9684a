//! Documentation generated from the clap definitions, so it cannot drift from `--help`:
//! shell completions (`completions bash|zsh|fish`), the man page (`man`), and the Markdown
//! configuration reference in docs/reference.md (`reference`, hidden; a test compares them).

use std::fmt::Write as _;

use clap::{Args, Command, ValueEnum};

use super::CliError;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    pub shell: Shell,
}

/// Writes the completion script for `shell` to stdout.
pub fn completions(mut cmd: Command, a: CompletionsArgs) -> Result<i32, CliError> {
    let shell = match a.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    super::output::write_stdout(&out);
    Ok(0)
}

/// Writes the man page (roff) to stdout: the command, then one section per subcommand.
pub fn man(mut cmd: Command) -> Result<i32, CliError> {
    cmd.build();
    let mut out: Vec<u8> = Vec::new();
    let io = |e: std::io::Error| CliError::failure(format!("cannot render the man page: {e}"));
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(&mut out).map_err(io)?;
    man.render_name_section(&mut out).map_err(io)?;
    man.render_synopsis_section(&mut out).map_err(io)?;
    man.render_description_section(&mut out).map_err(io)?;
    man.render_subcommands_section(&mut out).map_err(io)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("{} {}", cmd.get_name(), sub.get_name());
        out.extend_from_slice(format!(".SH \"{}\"\n", name.to_uppercase()).as_bytes());
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            out.extend_from_slice(format!("{}\n", roff_escape(&about.to_string())).as_bytes());
        }
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            out.extend_from_slice(
                format!(
                    ".TP\n\\fB{}\\fR\n{}\n",
                    roff_escape(&flag_text(arg)),
                    roff_escape(&describe(arg))
                )
                .as_bytes(),
            );
        }
    }
    man.render_version_section(&mut out).map_err(io)?;
    super::output::write_stdout(&out);
    Ok(0)
}

fn roff_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('-', "\\-")
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `--flag VALUE` (or `NAME` for a positional).
fn flag_text(arg: &clap::Arg) -> String {
    let value = arg
        .get_value_names()
        .map(|v| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
    let takes = arg.get_num_args().is_some_and(|n| n.takes_values());
    match (arg.get_long(), arg.get_short()) {
        (Some(l), Some(s)) if takes => format!("-{s}, --{l} {value}"),
        (Some(l), Some(s)) => format!("-{s}, --{l}"),
        (Some(l), None) if takes => format!("--{l} {value}"),
        (Some(l), None) => format!("--{l}"),
        (None, Some(s)) => format!("-{s}"),
        (None, None) => value,
    }
}

/// The default value(s), comma-separated, if any.
fn default_text(arg: &clap::Arg) -> Option<String> {
    let v: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().to_string())
        .collect();
    (!v.is_empty()).then(|| v.join(","))
}

/// Help text plus default and environment variable.
fn describe(arg: &clap::Arg) -> String {
    let mut d = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string().replace('\n', " "))
        .unwrap_or_default();
    if let Some(default) = default_text(arg) {
        let _ = write!(d, " [default: {default}]");
    }
    if let Some(env) = arg.get_env() {
        let _ = write!(d, " [env: {}]", env.to_string_lossy());
    }
    d
}

/// The configuration reference in Markdown: per subcommand, every flag with its environment
/// variable, `--config` key, default and help.
pub fn reference(cmd: &Command) -> String {
    let mut cmd = cmd.clone();
    cmd.build();
    let cmd = &cmd;
    let mut out = String::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let args: Vec<&clap::Arg> = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && a.get_id() != "help" && a.get_id() != "version")
            .collect();
        let _ = writeln!(out, "### `{} {}`\n", cmd.get_name(), sub.get_name());
        if let Some(about) = sub.get_about() {
            let _ = writeln!(out, "{}\n", about.to_string().replace('\n', " "));
        }
        if args.is_empty() {
            continue;
        }
        // Subcommands that take --config also read every flag from that file.
        let config = args.iter().any(|a| a.get_long() == Some("config"));
        if config {
            let _ = writeln!(
                out,
                "| flag | environment | `--config` key | default | what |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|");
        } else {
            let _ = writeln!(out, "| flag | environment | default | what |");
            let _ = writeln!(out, "|---|---|---|---|");
        }
        for a in args {
            let flag = flag_text(a);
            let env = a
                .get_env()
                .map(|e| format!("`{}`", e.to_string_lossy()))
                .unwrap_or_default();
            let key = a
                .get_long()
                .filter(|l| *l != "config")
                .map(|l| format!("`{}`", l.replace('-', "_")))
                .unwrap_or_default();
            let default = default_text(a)
                .map(|d| format!("`{d}`"))
                .unwrap_or_default();
            let help = a
                .get_help()
                .map(|h| h.to_string().replace('\n', " ").replace('|', "\\|"))
                .unwrap_or_default();
            if config {
                let _ = writeln!(out, "| `{flag}` | {env} | {key} | {default} | {help} |");
            } else {
                let _ = writeln!(out, "| `{flag}` | {env} | {default} | {help} |");
            }
        }
        out.push('\n');
    }
    out
}
