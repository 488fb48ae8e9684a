//! `status`, `reconnect NODE` (the rolling form is `rolling`) and `drain NODE`: clients of a
//! running daemon's admin API. Exit codes for `status`: 0 every desired node ready (drained
//! nodes are not desired: a drain is intended), 1 some not, 2 daemon unreachable. A state name
//! this build does not know (a newer daemon) is shown as it came (`StateName::Unknown`).

use std::io::IsTerminal;
use std::time::Duration;

use super::table::{Format, exit_code, render};
use clap::Args;
use kube_ssh_tunnel::admin::client::{Endpoint, request_with_token};
use kube_ssh_tunnel::admin::document::StatusDocument;

use super::CliError;
use super::args::AdminArgs;
use super::output::out;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub admin: AdminArgs,

    /// Output: table, wide (adds host key and how it was trusted, client key, pod CIDRs, bytes,
    /// reconnects) or json (the raw document).
    #[arg(short = 'o', long = "output", default_value = "table", value_parser = ["table", "wide", "json"])]
    pub output: String,

    /// Redraw every second until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Args, Debug)]
pub struct NodeActionArgs {
    #[command(flatten)]
    pub admin: AdminArgs,

    /// The node's name.
    pub node: String,
}

pub(super) fn endpoint(a: &AdminArgs) -> Endpoint {
    match a.admin_listen {
        Some(addr) => Endpoint::Tcp(addr),
        None => Endpoint::Unix(a.admin_uds.clone()),
    }
}

pub(super) fn unreachable(ep: &Endpoint, e: impl std::fmt::Display) -> CliError {
    CliError::usage(format!(
        "cannot reach the kube-ssh-tunnel daemon at {ep}: {e}; is `kube-ssh-tunnel run` running? \
         Point to it with --admin-uds PATH or --admin-listen ADDR"
    ))
}

pub(super) async fn fetch(
    ep: &Endpoint,
    token: Option<&str>,
) -> Result<(StatusDocument, String), CliError> {
    let (code, body) = request_with_token(ep, "GET", "/status", REQUEST_TIMEOUT, token)
        .await
        .map_err(|e| unreachable(ep, e))?;
    if code != 200 {
        return Err(unreachable(ep, format!("HTTP {code}: {}", body.trim())));
    }
    let doc: StatusDocument = serde_json::from_str(&body)
        .map_err(|e| unreachable(ep, format!("the answer is not a status document: {e}")))?;
    Ok((doc, body))
}

pub async fn status(args: StatusArgs) -> Result<i32, CliError> {
    let ep = endpoint(&args.admin);
    let token = args.admin.token()?;
    let terminal = std::io::stdout().is_terminal();
    let color = terminal && std::env::var_os("NO_COLOR").is_none();
    let format = if args.output == "wide" {
        Format::Wide
    } else {
        Format::Table
    };
    loop {
        let (doc, raw) = fetch(&ep, token.as_deref()).await?;
        let text = if args.output == "json" {
            format!("{}\n", raw.trim_end())
        } else {
            render(&doc, format, color)
        };
        if args.watch && terminal {
            out!("\x1b[2J\x1b[H{text}");
        } else {
            out!("{text}");
        }
        let _ = std::io::Write::flush(&mut std::io::stdout());
        if !args.watch {
            return Ok(exit_code(&doc));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(exit_code(&doc)),
        }
    }
}

/// What `reconnect` and `drain` ask the daemon to do to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeAction {
    Reconnect,
    Drain,
}

impl NodeAction {
    /// The admin API's path segment: `POST /nodes/{name}/{segment}`.
    fn segment(self) -> &'static str {
        match self {
            NodeAction::Reconnect => "reconnect",
            NodeAction::Drain => "drain",
        }
    }
}

pub async fn node_action(args: NodeActionArgs, action: NodeAction) -> Result<i32, CliError> {
    let ep = endpoint(&args.admin);
    let path = format!("/nodes/{}/{}", args.node, action.segment());
    let token = args.admin.token()?;
    let (code, body) = request_with_token(&ep, "POST", &path, REQUEST_TIMEOUT, token.as_deref())
        .await
        .map_err(|e| unreachable(&ep, e))?;
    match code {
        200 => {
            out!("{body}");
            Ok(0)
        }
        404 => Err(CliError::failure(body.trim())),
        _ => Err(CliError::failure(format!("HTTP {code}: {}", body.trim()))),
    }
}
