//! Dialling through the pool: which node a destination belongs to (`route`), waiting
//! (bounded) for that node to be usable, and opening the channel on its supervised
//! connection — or on an extra one past the channel limit or beside a congested connection
//! (`overflow`). Every dial is counted (`accounting`).

use std::sync::Arc;

use super::slot::NodeSlot;
use super::state::TunnelState;
use super::{Pool, overflow, route};
use crate::destination::Destination;
use crate::error::{DialError, OpenError};
use crate::node::Node;
use crate::ssh::TunnelStream;

impl Pool {
    /// The slot a dial to `dest` goes through now, or why there is none. With `any_ready`, a
    /// destination no node owns goes to the least-loaded ready node; without, it has no route.
    fn route(
        &self,
        routes: &route::RouteTable,
        dest: &Destination,
        any_ready: bool,
    ) -> Result<Arc<NodeSlot>, DialError> {
        let name = match routes.classify(dest) {
            route::Route::Node(n) | route::Route::PodOf(n) => n,
            route::Route::Ambiguous(nodes) => {
                return Err(DialError::Ambiguous {
                    destination: dest.to_string(),
                    nodes,
                });
            }
            route::Route::AnyReady if !any_ready => {
                return Err(DialError::NoRoute {
                    destination: dest.to_string(),
                });
            }
            route::Route::AnyReady => {
                let candidates: Vec<(String, bool, usize)> = self
                    .all_slots()
                    .iter()
                    .filter_map(|s| {
                        let st = s.status().state;
                        s.live()?;
                        st.accepts_dials()
                            .then(|| (s.name(), st == TunnelState::Ready, s.load().1))
                    })
                    .collect();
                route::least_loaded(&candidates)
                    .map(str::to_string)
                    .ok_or_else(|| DialError::NoReadyNode {
                        destination: dest.to_string(),
                    })?
            }
        };
        self.slot(&name).ok_or_else(|| DialError::NoRoute {
            destination: dest.to_string(),
        })
    }

    /// Opens a channel to `dest` through the node that owns it (by name or address, then by
    /// pod CIDR); `NoRoute` if no node does.
    pub async fn dial(&self, dest: &Destination) -> Result<TunnelStream, DialError> {
        self.dial_routed(&self.routes(), dest, false).await
    }

    /// Like `dial`, but a destination no node owns (a service ClusterIP, say) goes through the
    /// least-loaded ready node. Check such destinations against a `Policy` first.
    pub async fn dial_any(&self, dest: &Destination) -> Result<TunnelStream, DialError> {
        self.dial_routed(&self.routes(), dest, true).await
    }

    /// Like `dial_any`, routed by `routes`, a snapshot taken earlier with `routes()`: the one
    /// the caller's policy check judged `dest` by, so that both see the same nodes. A node of
    /// the snapshot that has left the pool since is `NoRoute` (its address is not handed to
    /// another node as if nobody owned it).
    pub async fn dial_any_in(
        &self,
        routes: &route::RouteTable,
        dest: &Destination,
    ) -> Result<TunnelStream, DialError> {
        self.dial_routed(routes, dest, true).await
    }

    async fn dial_routed(
        &self,
        routes: &route::RouteTable,
        dest: &Destination,
        any_ready: bool,
    ) -> Result<TunnelStream, DialError> {
        let start = std::time::Instant::now();
        let slot = match self.route(routes, dest, any_ready) {
            Ok(slot) => slot,
            Err(e) => {
                self.account(None, Some(&e), start.elapsed());
                return Err(e);
            }
        };
        let result = self.dial_via(&slot, dest).await;
        self.account(Some(&slot), result.as_ref().err(), start.elapsed());
        result
    }

    /// Opens a channel to `dest` through the named node, whatever the destination.
    pub async fn dial_through(
        &self,
        node: &str,
        dest: &Destination,
    ) -> Result<TunnelStream, DialError> {
        let start = std::time::Instant::now();
        let slot = self.slot(node).ok_or_else(|| DialError::NoRoute {
            destination: format!("{dest} (no node named '{node}')"),
        })?;
        let result = self.dial_via(&slot, dest).await;
        self.account(Some(&slot), result.as_ref().err(), start.elapsed());
        result
    }

    /// Opens a channel on one of the node's extra connections (making one when all are full,
    /// or, for isolation, all congested).
    async fn open_overflow(
        &self,
        slot: &NodeSlot,
        node: &Node,
        reason: overflow::Reason,
        host: &str,
        port: u16,
    ) -> Result<TunnelStream, OpenError> {
        let limit = self.cfg.max_channels_per_connection;
        let dial = overflow::OverflowDial {
            node,
            reason,
            limit,
            max_connections: self.cfg.max_connections_per_node,
            primary: slot.live(),
            settings: &self.cfg.ssh,
            link: slot.link(),
            handshakes: &self.handshakes,
            connector: &self.cfg.connector,
            tasks: &self.tasks,
        };
        match slot.overflow().open(dial, host, port).await {
            Ok(s) => Ok(s),
            Err(overflow::OverflowError::Open(e)) => Err(e),
            // Logged (warn) once by the growth that failed, not by every dial it turns away.
            Err(overflow::OverflowError::Connect(e)) => {
                tracing::debug!(node = %node.name, error = %e, "channel limit reached and another connection to the node failed");
                Err(OpenError::AtCapacity { limit })
            }
        }
    }

    async fn dial_via(
        &self,
        slot: &NodeSlot,
        dest: &Destination,
    ) -> Result<TunnelStream, DialError> {
        let node = slot.name();
        let deadline = tokio::time::Instant::now() + self.cfg.reconnect_wait();
        loop {
            let tunnel = slot.wait_usable(deadline).await.map_err(|n| {
                let last_error = slot.status().last_connect_error;
                // A retry in progress says only "connecting": name why the last attempt
                // failed too (a backoff's reason already does).
                let reason = match (&last_error, n.state) {
                    (Some(e), TunnelState::Connecting) => {
                        format!("{}; the last attempt failed: {e}", n.reason)
                    }
                    _ => n.reason,
                };
                DialError::NotReady {
                    node: node.clone(),
                    destination: dest.to_string(),
                    state: n.state,
                    reason,
                    last_error,
                }
            })?;
            let node_now = slot.node();
            let host = node_now.channel_host(&dest.host);
            let host: &str = &host;
            let limit = self.cfg.max_channels_per_connection;
            // A new dial avoids a congested connection (ssh::congestion) while another can be
            // had; at the node's connection cap it may take the least busy one.
            let opened = if tunnel.is_congested() && self.cfg.max_connections_per_node > 1 {
                self.open_overflow(
                    slot,
                    &node_now,
                    overflow::Reason::Isolation,
                    host,
                    dest.port,
                )
                .await
            } else {
                match tunnel.open_limited(host, dest.port, limit).await {
                    Err(OpenError::AtCapacity { .. }) => {
                        self.open_overflow(
                            slot,
                            &node_now,
                            overflow::Reason::Capacity,
                            host,
                            dest.port,
                        )
                        .await
                    }
                    r => r,
                }
            };
            match opened {
                Ok(s) => return Ok(s),
                // The connection died under us: wait for the supervisor's reconnect, if time is left.
                Err(OpenError::ConnectionLost) if tokio::time::Instant::now() < deadline => {
                    continue;
                }
                Err(source) => {
                    return Err(DialError::Open {
                        node,
                        destination: dest.to_string(),
                        source,
                    });
                }
            }
        }
    }
}
