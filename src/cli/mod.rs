//! The command line: subcommands, exit codes, and the one place errors become messages.
//! Exit codes: 0 success, 1 a runtime failure (node or destination unreachable), 2 usage or
//! configuration error (including the `--ssh-tunnel` gate).

mod allocator;
mod args;
mod check;
mod config_file;
#[cfg(feature = "demo")]
mod demo;
mod dial;
mod docs;
mod duration;
mod gate;
mod keygen;
mod limits;
mod logging;
mod nft;
mod node_setup;
mod output;
#[cfg(feature = "kube")]
mod publish_host_key;
mod reverse;
mod rolling;
mod run;
mod settings;
mod size;
mod status;
mod table;

use clap::{CommandFactory, Parser, Subcommand};

/// Exit code for usage and configuration errors.
pub const EXIT_USAGE: i32 = 2;
/// Exit code for runtime failures.
pub const EXIT_FAILURE: i32 = 1;

/// An error with the exit code it deserves.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl std::fmt::Display) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.to_string(),
        }
    }
    pub fn failure(message: impl std::fmt::Display) -> Self {
        Self {
            code: EXIT_FAILURE,
            message: message.to_string(),
        }
    }
}

impl From<kube_ssh_tunnel::ConfigError> for CliError {
    fn from(e: kube_ssh_tunnel::ConfigError) -> Self {
        CliError::usage(e)
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "kube-ssh-tunnel",
    version,
    about = "Kubernetes' legacy SSH tunnel mode as a standalone tunnel manager (deprecated mode; gated by --ssh-tunnel)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Try it with nothing installed: in-process SSH nodes, the real daemon, one request of
    /// each kind, the status table; runs until Ctrl-C.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// Run the tunnel daemon: one supervised SSH connection per node, kept open.
    Run(Box<run::RunArgs>),
    /// Relay stdin/stdout through one channel to NODE or HOST:PORT (like `ssh -W`).
    Dial(Box<dial::DialArgs>),
    /// Show every node of a running daemon (exit 0 all ready, 1 some not, 2 unreachable).
    Status(status::StatusArgs),
    /// Make a running daemon drop a node's connection and reconnect now (--all --rolling:
    /// every node, one at a time).
    Reconnect(rolling::ReconnectArgs),
    /// Make a running daemon drain a node: no new dials; open streams finish.
    Drain(status::NodeActionArgs),
    /// Write an ed25519 key pair and print the restricted authorized_keys line for the nodes.
    Keygen(keygen::KeygenArgs),
    /// Write what a reverse node needs (key or certificate, known_hosts, one systemd unit per
    /// control plane) and print its --reverse-authorized line.
    NodeSetup(Box<node_setup::NodeSetupArgs>),
    /// Validate config, keys, known_hosts and nodes without connecting (--connect: try each node).
    Check(Box<check::CheckArgs>),
    /// On a node: write its SSH host public keys onto its own Node object (annotations
    /// ssh.kube-ssh-tunnel.io/host-TYPE), for `run --host-key-source nodes`.
    #[cfg(feature = "kube")]
    PublishHostKey(publish_host_key::PublishHostKeyArgs),
    /// Print shell completions (bash, zsh or fish) to stdout.
    Completions(docs::CompletionsArgs),
    /// Print the man page (roff) to stdout, e.g. `kube-ssh-tunnel man | man -l -`.
    Man,
    /// Print the configuration reference (Markdown) that docs/reference.md carries.
    #[command(hide = true)]
    Reference,
}

/// Most threads `run --worker-threads` may ask for.
const MAX_WORKER_THREADS: usize = 1024;

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let argv = match config_file::expand(&Cli::command(), std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kube-ssh-tunnel: {}", e.message);
            return e.code;
        }
    };
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Run(a) = &cli.command {
        if let Some(n) = a.worker_threads {
            if !(1..=MAX_WORKER_THREADS).contains(&n) {
                eprintln!(
                    "kube-ssh-tunnel: --worker-threads (KUBE_SSH_TUNNEL_WORKER_THREADS, worker_threads in --config) must be from 1 to {MAX_WORKER_THREADS}; leave it out for one per CPU core"
                );
                return EXIT_USAGE;
            }
            builder.worker_threads(n);
        }
        // Before the runtime starts its threads (mallopt is not safe beside them).
        allocator::tune();
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kube-ssh-tunnel: cannot start the async runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            #[cfg(feature = "demo")]
            Command::Demo(a) => demo::demo(a).await,
            Command::Run(a) => run::run(*a).await.map(|()| 0),
            Command::Dial(a) => dial::dial(*a).await.map(|()| 0),
            Command::Status(a) => status::status(a).await,
            Command::Reconnect(a) => rolling::reconnect(a).await,
            Command::Drain(a) => status::node_action(a, status::NodeAction::Drain).await,
            Command::Keygen(a) => keygen::keygen(a).map(|()| 0),
            Command::NodeSetup(a) => node_setup::node_setup(*a).map(|()| 0),
            Command::Check(a) => check::check(*a).await,
            #[cfg(feature = "kube")]
            Command::PublishHostKey(a) => publish_host_key::publish_host_key(a).await,
            Command::Completions(a) => docs::completions(Cli::command(), a),
            Command::Man => docs::man(Cli::command()),
            Command::Reference => {
                output::write_stdout(docs::reference(&Cli::command()).as_bytes());
                Ok(0)
            }
        }
    });
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kube-ssh-tunnel: {}", e.message);
            e.code
        }
    };
    // Don't wait for a blocking stdin read to finish.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}
