//! `reconnect NODE` and `reconnect --all --rolling`: the rolling form moves every node to a
//! new connection one at a time (after a client-key rotation, say), waiting for each to come
//! back `ready` (or `failed`) before the next, so that at most one node is ever without its
//! connection because of it. Exit 0 when every node came back ready, 1 otherwise.

use std::time::{Duration, Instant};

use clap::Args;
use kube_ssh_tunnel::admin::client::{Endpoint, request_with_token};
use kube_ssh_tunnel::pool::TunnelState;

use super::CliError;
use super::args::AdminArgs;
use super::duration::parse_duration;
use super::output::out;
use super::status::{NodeAction, NodeActionArgs, endpoint, fetch, node_action, unreachable};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the rolling reconnect reads `/status` while it waits for a node.
const POLL: Duration = Duration::from_millis(250);
/// How long it waits before asking again when the admin API's per-node limit refused it.
const RETRY_LIMITED: Duration = Duration::from_secs(1);

#[derive(Args, Debug)]
pub struct ReconnectArgs {
    #[command(flatten)]
    pub admin: AdminArgs,

    /// The node's name (or --all --rolling).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub node: Option<String>,

    /// Every node of the set (drained ones are left alone); needs --rolling.
    #[arg(long, requires = "rolling")]
    pub all: bool,

    /// With --all: one node at a time, each back ready (or failed) before the next; one line
    /// per node with its result and the client key its new connection authenticated with.
    /// Exit 0 when every node came back ready, 1 otherwise.
    #[arg(long, requires = "all")]
    pub rolling: bool,

    /// With --rolling: wait this long after a node before the next one.
    #[arg(long, default_value = "5s", value_parser = parse_duration, requires = "rolling")]
    pub pause: Duration,

    /// With --rolling: give up on a node that is neither ready nor failed after this long
    /// (it counts as not back; the next node follows).
    #[arg(long, default_value = "60s", value_parser = parse_duration, requires = "rolling")]
    pub timeout: Duration,
}

/// How one node of a rolling reconnect ended.
enum Outcome {
    /// Ready on a connection made after the request; the client key it authenticated with.
    Ready(String),
    /// `failed` after the request, with why.
    Failed(String),
    /// Neither within --timeout: the state it was in, and why.
    TimedOut(String),
    /// Gone from the node set meanwhile.
    Gone,
    /// The daemon refused the request.
    Refused(String),
}

pub async fn reconnect(args: ReconnectArgs) -> Result<i32, CliError> {
    // clap does not check `requires` of a flag given beside a NODE that conflicts with --all.
    if args.rolling && !args.all {
        return Err(CliError::usage(
            "--rolling needs --all (`reconnect --all --rolling`); to reconnect one node, give \
             its name alone",
        ));
    }
    if !args.all {
        let Some(node) = args.node else {
            return Err(CliError::usage(
                "reconnect needs a node name, or --all --rolling",
            ));
        };
        return node_action(
            NodeActionArgs {
                admin: args.admin,
                node,
            },
            NodeAction::Reconnect,
        )
        .await;
    }
    let ep = endpoint(&args.admin);
    let token = args.admin.token()?;
    let (doc, _) = fetch(&ep, token.as_deref()).await?;
    // A reconnect brings a drained node back: an operator's drain is left alone
    // (`draining`, and `drained` where the daemon shows that state).
    // So is a reverse node waiting for its session: it has no connection to drop.
    let (left, names): (Vec<_>, Vec<_>) = doc
        .nodes
        .iter()
        .partition(|n| n.state.to_string().starts_with("drain") || n.state == TunnelState::Waiting);
    for n in left {
        if n.state == TunnelState::Waiting {
            out!(
                "{}: left alone (waiting for its own ssh to dial in: no connection to reconnect)\n",
                n.name
            );
        } else {
            out!("{}: left alone ({})\n", n.name, n.state);
        }
    }
    let names: Vec<String> = names.into_iter().map(|n| n.name.clone()).collect();
    if names.is_empty() {
        out!("no nodes to reconnect\n");
        return Ok(0);
    }
    let mut all_ready = true;
    for (i, name) in names.iter().enumerate() {
        let outcome = one_node(&ep, token.as_deref(), name, args.timeout).await?;
        let line = match &outcome {
            Outcome::Ready(key) => format!("{name}: ready, client key {key}"),
            Outcome::Failed(why) => format!("{name}: failed: {why}"),
            Outcome::TimedOut(what) => {
                format!("{name}: not back within {:?} ({what})", args.timeout)
            }
            Outcome::Gone => format!("{name}: gone from the node set"),
            Outcome::Refused(why) => format!("{name}: not reconnected: {why}"),
        };
        all_ready &= matches!(outcome, Outcome::Ready(_));
        out!("{line}\n");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        if i + 1 < names.len() {
            tokio::time::sleep(args.pause).await;
        }
    }
    Ok(if all_ready { 0 } else { 1 })
}

/// Asks the daemon to reconnect `name`, then waits (within `timeout`) for it to be ready on
/// a connection made after the request, or failed after it.
async fn one_node(
    ep: &Endpoint,
    token: Option<&str>,
    name: &str,
    timeout: Duration,
) -> Result<Outcome, CliError> {
    let deadline = Instant::now() + timeout;
    let path = format!("/nodes/{name}/reconnect");
    // Taken before each request: the new connection may be up before the answer arrives.
    let mut asked;
    loop {
        asked = Instant::now();
        let (code, body) = request_with_token(ep, "POST", &path, REQUEST_TIMEOUT, token)
            .await
            .map_err(|e| unreachable(ep, e))?;
        match code {
            200 => break,
            404 => return Ok(Outcome::Gone),
            // Reconnected through the API less than 10 s ago: ask again once it allows.
            429 if Instant::now() + RETRY_LIMITED < deadline => {
                tokio::time::sleep(RETRY_LIMITED).await;
            }
            _ => return Ok(Outcome::Refused(format!("HTTP {code}: {}", body.trim()))),
        }
    }
    loop {
        tokio::time::sleep(POLL).await;
        let (doc, _) = fetch(ep, token).await?;
        let Some(n) = doc.nodes.iter().find(|n| n.name == name) else {
            return Ok(Outcome::Gone);
        };
        let waited = asked.elapsed().as_secs_f64();
        if n.state == TunnelState::Ready && n.uptime_s.is_some_and(|up| up < waited) {
            return Ok(Outcome::Ready(
                n.client_key.clone().unwrap_or_else(|| "-".into()),
            ));
        }
        if n.state == TunnelState::Failed && n.for_s < waited {
            return Ok(Outcome::Failed(
                n.last_error.clone().unwrap_or_else(|| n.reason.clone()),
            ));
        }
        if Instant::now() >= deadline {
            return Ok(Outcome::TimedOut(format!("{}: {}", n.state, n.reason)));
        }
    }
}
