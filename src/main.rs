//! The `kube-ssh-tunnel` binary: parses the command line and hands off to `cli`.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
