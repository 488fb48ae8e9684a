//! `--config FILE`: a TOML file whose keys are the subcommand's flag names (`ssh_user` or
//! `ssh-user`). It is applied by turning its entries into flags placed before the user's own,
//! skipping any flag the user gave or whose environment variable is set, so the precedence is
//! flag > environment > file > default, and clap validates every value the same way.
//!
//! The daemon's file is written for `run`. `check` and `dial` read the same file (the upgrade
//! task runs `check --config` on it first), so they take the keys they share with `run` and
//! skip `run`'s other keys. A key that neither this subcommand nor `run` knows is an error.

use std::ffi::OsString;
use std::path::Path;

use clap::{ArgAction, Command};

use super::CliError;

/// Returns `argv` with the config file's entries inserted after the subcommand.
pub fn expand(cmd: &Command, argv: Vec<OsString>) -> Result<Vec<OsString>, CliError> {
    let Some(sub_pos) = argv
        .iter()
        .skip(1)
        .position(|a| !a.to_string_lossy().starts_with('-'))
        .map(|p| p + 1)
    else {
        return Ok(argv);
    };
    let sub_name = argv[sub_pos].to_string_lossy().to_string();
    let Some(sub) = cmd.get_subcommands().find(|s| s.get_name() == sub_name) else {
        return Ok(argv);
    };
    let user: Vec<String> = argv[sub_pos + 1..]
        .iter()
        .map(|a| a.to_string_lossy().to_string())
        .collect();
    let mut file = None;
    for (i, a) in user.iter().enumerate() {
        if a == "--" {
            break;
        }
        if let Some(v) = a.strip_prefix("--config=") {
            file = Some(v.to_string());
        } else if a == "--config" {
            file = user.get(i + 1).cloned();
        }
    }
    let file = match file.or_else(|| std::env::var("KUBE_SSH_TUNNEL_CONFIG").ok()) {
        Some(f) => f,
        None => return Ok(argv),
    };
    let run = cmd.get_subcommands().find(|s| s.get_name() == "run");
    let extra = flags_from_file(sub, run, Path::new(&file), &user)?;
    let mut out: Vec<OsString> = argv[..=sub_pos].to_vec();
    out.extend(extra.into_iter().map(OsString::from));
    out.extend(argv[sub_pos + 1..].iter().cloned());
    Ok(out)
}

/// `sub`'s flags from the file at `path`; keys only `run` takes are skipped.
fn flags_from_file(
    sub: &Command,
    run: Option<&Command>,
    path: &Path,
    user: &[String],
) -> Result<Vec<String>, CliError> {
    let err = |reason: String| CliError::usage(format!("config file {}: {reason}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| err(e.message().to_string()))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let Some(arg) = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
        else {
            let for_run = run.is_some_and(|r| {
                r.get_arguments()
                    .any(|a| a.get_long() == Some(long.as_str()))
            });
            if for_run {
                continue;
            }
            let known: Vec<String> = sub
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| *l != "config" && *l != "help")
                .map(|l| l.replace('-', "_"))
                .collect();
            return Err(err(format!(
                "unknown key '{key}' for `{}`; known keys: {}",
                sub.get_name(),
                known.join(", ")
            )));
        };
        if long == "config" {
            return Err(err("a config file cannot name another config file".into()));
        }
        let flag = format!("--{long}");
        let given = user
            .iter()
            .any(|a| a == &flag || a.starts_with(&format!("{flag}=")));
        let from_env = arg.get_env().is_some_and(|e| std::env::var_os(e).is_some());
        if given || from_env {
            continue;
        }
        let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let scalar = |v: &toml::Value| -> Result<String, CliError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                other => Err(err(format!(
                    "key '{key}': expected a string, number or boolean, got {}",
                    other.type_str()
                ))),
            }
        };
        match (&value, is_switch) {
            (toml::Value::Boolean(true), true) => out.push(flag),
            (toml::Value::Boolean(false), true) => {}
            (_, true) => return Err(err(format!("key '{key}' is a switch: write {key} = true"))),
            (toml::Value::Array(items), false) => {
                for item in items {
                    out.push(flag.clone());
                    out.push(scalar(item)?);
                }
            }
            (v, false) => {
                out.push(flag);
                out.push(scalar(v)?);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Arg;

    fn cmd() -> Command {
        Command::new("kube-ssh-tunnel")
            .subcommand(
                Command::new("run")
                    .arg(Arg::new("config").long("config"))
                    .arg(Arg::new("ssh-user").long("ssh-user"))
                    .arg(Arg::new("node").long("node").action(ArgAction::Append))
                    .arg(
                        Arg::new("ssh-tunnel")
                            .long("ssh-tunnel")
                            .action(ArgAction::SetTrue),
                    )
                    .arg(Arg::new("dial-timeout").long("dial-timeout")),
            )
            .subcommand(
                Command::new("check")
                    .arg(Arg::new("config").long("config"))
                    .arg(Arg::new("ssh-user").long("ssh-user")),
            )
    }

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn strings(v: Vec<OsString>) -> Vec<String> {
        v.into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// Expands `kube-ssh-tunnel run --config FILE USER…` with `toml` as the file.
    fn expand_with(toml: &str, user: &[&str]) -> Result<Vec<String>, CliError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, toml).unwrap();
        let mut argv = args(&["kube-ssh-tunnel", "run", "--config", file.to_str().unwrap()]);
        argv.extend(args(user));
        expand(&cmd(), argv).map(|v| {
            strings(v)
                .into_iter()
                .filter(|a| !a.ends_with("config.toml"))
                .collect()
        })
    }

    #[test]
    fn without_a_config_file_argv_is_unchanged() {
        let argv = args(&["kube-ssh-tunnel", "run", "--ssh-user", "u"]);
        assert_eq!(expand(&cmd(), argv.clone()).unwrap(), argv);
    }

    #[test]
    fn file_entries_become_flags_before_the_users_own() {
        let got = expand_with(
            "ssh_user = \"file-user\"\nssh-tunnel = true\nnode = [\"a=192.0.2.1\", \"b=192.0.2.2\"]\ndial_timeout = 5\n",
            &["--ssh-user", "cli-user"],
        )
        .unwrap();
        // Inserted right after the subcommand (keys in order), before the user's own flags; the
        // user's --ssh-user wins (the file's is skipped); a switch becomes a bare flag; a list
        // repeats the flag; a number is its text.
        assert_eq!(
            got,
            [
                "kube-ssh-tunnel",
                "run",
                "--dial-timeout",
                "5",
                "--node",
                "a=192.0.2.1",
                "--node",
                "b=192.0.2.2",
                "--ssh-tunnel",
                "--config",
                "--ssh-user",
                "cli-user"
            ]
        );
    }

    #[test]
    fn a_switch_set_false_is_left_out_and_a_switch_with_a_value_is_refused() {
        let got = expand_with("ssh_tunnel = false\n", &[]).unwrap();
        assert_eq!(got, ["kube-ssh-tunnel", "run", "--config"]);
        let err = expand_with("ssh_tunnel = \"yes\"\n", &[]).unwrap_err();
        assert!(
            err.message.contains("is a switch: write ssh_tunnel = true"),
            "{}",
            err.message
        );
    }

    #[test]
    fn check_reads_a_run_file_and_skips_only_the_keys_of_run() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        let f = file.to_str().unwrap();
        std::fs::write(&file, "ssh_user = \"u\"\ndial_timeout = 5\n").unwrap();
        let got = expand(&cmd(), args(&["kube-ssh-tunnel", "check", "--config", f])).unwrap();
        assert_eq!(
            strings(got),
            ["kube-ssh-tunnel", "check", "--ssh-user", "u", "--config", f]
        );
        // A key that `run` does not know either is still refused.
        std::fs::write(&file, "ssh_usr = \"u\"\n").unwrap();
        let err = expand(&cmd(), args(&["kube-ssh-tunnel", "check", "--config", f])).unwrap_err();
        assert!(
            err.message.contains("unknown key 'ssh_usr' for `check`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn bad_files_are_usage_errors_naming_the_file_and_the_fix() {
        let err = expand_with("ssh_usr = \"x\"\n", &[]).unwrap_err();
        assert_eq!(err.code, super::super::EXIT_USAGE);
        assert!(
            err.message.contains("unknown key 'ssh_usr' for `run`")
                && err
                    .message
                    .contains("known keys: ssh_user, node, ssh_tunnel, dial_timeout"),
            "{}",
            err.message
        );
        let err = expand_with("config = \"other.toml\"\n", &[]).unwrap_err();
        assert!(
            err.message.contains("cannot name another config file"),
            "{}",
            err.message
        );
        let err = expand_with("[ssh_user]\nx = 1\n", &[]).unwrap_err();
        assert!(
            err.message
                .contains("expected a string, number or boolean, got table"),
            "{}",
            err.message
        );
        let err = expand_with("ssh_user = \n", &[]).unwrap_err();
        assert!(err.message.contains("config file "), "{}", err.message);
    }
}
