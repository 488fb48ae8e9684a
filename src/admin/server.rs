//! The admin HTTP API (axum): `/status`, `/healthz`, `/readyz`, `/metrics`, and the actions
//! `POST /nodes/{name}/reconnect` and `POST /nodes/{name}/drain`. It listens on a Unix socket
//! (mode 0600) by default, or on TCP — loopback only unless explicitly allowed, since it can
//! drain nodes and has no authentication of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use super::document::StatusDocument;
use crate::pool::Pool;

/// What the admin API serves from.
#[derive(Clone)]
pub struct AdminState {
    pub pool: Arc<Pool>,
    /// Share of desired nodes that must be ready for /readyz (at least one node always).
    pub ready_share: f64,
    pub insecure_host_keys: bool,
    /// Cleared when a loop of the daemon (e.g. a CONNECT listener) ends unexpectedly.
    pub alive: Arc<AtomicBool>,
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
        .with_state(state)
}

async fn status(State(s): State<AdminState>) -> impl IntoResponse {
    axum::Json(StatusDocument::build(&s.pool, s.insecure_host_keys))
}

async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.alive.load(Ordering::Acquire) {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "a daemon loop stopped; see the log\n".to_string(),
        )
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
    if s.pool.reconnect(&name) {
        tracing::info!(node = %name, "reconnect requested over the admin API");
        (StatusCode::OK, format!("node {name}: reconnecting\n"))
    } else {
        (StatusCode::NOT_FOUND, format!("no node named '{name}'\n"))
    }
}

async fn drain(State(s): State<AdminState>, Path(name): Path<String>) -> impl IntoResponse {
    if s.pool.drain_node(&name) {
        tracing::info!(node = %name, "drain requested over the admin API");
        (
            StatusCode::OK,
            format!("node {name}: draining (until the node set names it again)\n"),
        )
    } else {
        (StatusCode::NOT_FOUND, format!("no node named '{name}'\n"))
    }
}
