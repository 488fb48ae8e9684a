//! The admin HTTP API (axum): `/status`, `/healthz`, `/readyz`, `/metrics`, and the actions
//! `POST /nodes/{name}/reconnect` and `POST /nodes/{name}/drain`. It listens on a Unix socket
//! (mode 0600: the file mode is its access control), on TCP — loopback only unless explicitly
//! allowed — or on both at once, each with its own router. On TCP (`AdminAuth`): the actions need the bearer token of
//! `--admin-token-file` (reads too with `--admin-token-for-reads`), and the Host header must be
//! an IP address, `localhost` or `kube-ssh-tunnel`, so that a web page cannot reach the API
//! through DNS rebinding. A node can be reconnected at most once per `RECONNECT_INTERVAL`
//! (bringing back a node an operator drained is not limited). `/healthz` fails once a task
//! the daemon needs has ended early (`tasks::Tasks`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::caller::Caller;
use super::document::StatusDocument;
use crate::pool::Pool;
use crate::tasks::Tasks;

/// What the admin API serves from.
#[derive(Clone)]
pub struct AdminState {
    pub pool: Arc<Pool>,
    /// Share of desired nodes that must be ready for /readyz (at least one node always).
    pub ready_share: f64,
    pub insecure_host_keys: bool,
    /// The daemon's tasks: unhealthy once a task it needs (an accept loop, the admin API, the
    /// node source) has ended early.
    pub tasks: Tasks,
    /// Who may use the API (on TCP).
    pub auth: AdminAuth,
    /// When each node was last reconnected through the API.
    pub reconnected: Arc<Mutex<HashMap<String, Instant>>>,
}

/// A node is reconnected through the API at most this often.
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(10);

/// Access control of the API on TCP (the Unix socket's 0600 mode is its own).
#[derive(Clone, Debug, Default)]
pub struct AdminAuth {
    /// Served on TCP: the Host check and the token apply.
    pub tcp: bool,
    /// The bearer token actions need (None on TCP: actions are refused); read per request,
    /// so a rotated token file applies at once after its reload.
    pub token: Option<Arc<super::token::AdminToken>>,
    /// Reads need the token too.
    pub token_for_reads: bool,
}

/// The Host header names us: an IP literal (any port), `localhost` or `kube-ssh-tunnel`. A
/// DNS-rebinding page always sends its own DNS name.
pub fn host_allowed(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        }
    };
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.eq_ignore_ascii_case("kube-ssh-tunnel")
}

/// Equal in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn guard(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    if !s.auth.tcp {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !host_allowed(host) {
        return (
            StatusCode::FORBIDDEN,
            format!("Host '{host}' is not allowed: use an IP address or localhost\n"),
        )
            .into_response();
    }
    let action = req.method() != Method::GET && req.method() != Method::HEAD;
    if !action && !s.auth.token_for_reads {
        return next.run(req).await;
    }
    let Some(token) = &s.auth.token else {
        return (
            StatusCode::FORBIDDEN,
            "actions over TCP need a token: start the daemon with --admin-token-file\n",
        )
            .into_response();
    };
    let offered = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same_secret(offered.trim().as_bytes(), token.get().as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid bearer token is needed (--admin-token-file)\n",
        )
            .into_response();
    }
    next.run(req).await
}

/// The router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/nodes/{name}/reconnect", post(reconnect))
        .route("/nodes/{name}/drain", post(drain))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

async fn status(State(s): State<AdminState>) -> impl IntoResponse {
    axum::Json(StatusDocument::build(&s.pool, s.insecure_host_keys))
}

async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    match s.tasks.health() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(ended) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stopped: {}; see the log\n", ended.join(", ")),
        ),
    }
}

/// Nodes that must be ready: at least one, and at least `share` of the desired ones.
pub fn ready_needed(desired: usize, share: f64) -> usize {
    ((desired as f64) * share.clamp(0.0, 1.0)).ceil().max(1.0) as usize
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let doc = StatusDocument::build(&s.pool, s.insecure_host_keys);
    let needed = ready_needed(doc.desired, s.ready_share);
    let body = format!(
        "{} of {} nodes ready (need {needed})\n",
        doc.ready, doc.desired
    );
    let code = if doc.ready >= needed {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    s.pool.refresh_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.pool.metrics().encode(),
    )
}

async fn reconnect(State(s): State<AdminState>, Path(name): Path<String>) -> impl IntoResponse {
    // Bringing a drained node back is not a reconnect storm: not limited.
    if !s.pool.is_drained(&name) {
        // A reverse node without a session has no connection to drop: only its own ssh can
        // bring it up, so say so instead of answering "reconnecting" and doing nothing.
        if s.pool
            .status(&name)
            .is_some_and(|st| st.state == crate::tunnel_state::TunnelState::Waiting)
        {
            return (
                StatusCode::CONFLICT,
                format!(
                    "node {name} is waiting for its own ssh to dial in: there is no connection to reconnect (start or restart the node's ssh)\n"
                ),
            );
        }
        let mut last = s.reconnected.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(at) = last.get(&name)
            && now.duration_since(*at) < RECONNECT_INTERVAL
        {
            let wait = RECONNECT_INTERVAL - now.duration_since(*at);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "node {name} was reconnected {:.0?} ago; at most one reconnect per {:?} per node (retry in {:.0?})\n",
                    now.duration_since(*at),
                    RECONNECT_INTERVAL,
                    wait
                ),
            );
        }
        last.insert(name.clone(), now);
        last.retain(|_, at| now.duration_since(*at) < RECONNECT_INTERVAL);
    }
    if s.pool.reconnect(&name) {
        tracing::info!(node = %name, "reconnect requested over the admin API");
        (StatusCode::OK, format!("node {name}: reconnecting\n"))
    } else {
        (StatusCode::NOT_FOUND, format!("no node named '{name}'\n"))
    }
}

async fn drain(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    ext: axum::http::Extensions,
) -> impl IntoResponse {
    // Served with connect info by the daemon; a library user's router may lack it.
    let by = match ext.get::<axum::extract::ConnectInfo<Caller>>() {
        Some(c) => c.0.to_string(),
        None if s.auth.tcp => "admin API over TCP".to_string(),
        None => "admin socket".to_string(),
    };
    if s.pool.drain_node_by(&name, &by) {
        tracing::info!(node = %name, drained_by = %by, "drain requested over the admin API");
        (
            StatusCode::OK,
            format!(
                "node {name}: draining, then drained (until `kube-ssh-tunnel reconnect {name}`, or until it leaves the node source)\n"
            ),
        )
    } else {
        (StatusCode::NOT_FOUND, format!("no node named '{name}'\n"))
    }
}
