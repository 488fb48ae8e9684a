//! The pool's `Connector` with reverse mode on. A node's mode comes from
//! `--reverse-authorized` as the file reads at this attempt (`authorized`):
//! - reverse: its connection is the next session it opens to our listener, waited for up to
//!   the connect timeout; none is `ConnectError::NoSession`, which the supervisor takes as
//!   "still waiting" (state `waiting`, no backoff). An extra connection takes only a session
//!   already waiting (never waits).
//! - either: a session already waiting is taken at once; otherwise the node is dialled and,
//!   at the same time, a session is waited for: the first to succeed wins, the other is
//!   dropped (a dial dropped mid-way closes its socket; a wait takes nothing).
//! - forward (not in the file): dialled as before.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::link::{ReverseLink, Session};
use super::live::LiveAuthorized;
use super::registry::Registry;
use crate::error::ConnectError;
use crate::metrics::LinkStats;
use crate::node::Node;
use crate::pool::NodeMode;
use crate::pool::transport::{Connector, Link, SshConnector};
use crate::ssh::SshSettings;

/// Reverse nodes wait for their session; either nodes race a dial against it; the others go
/// to `forward`.
#[derive(Debug)]
pub struct ReverseConnector {
    registry: Arc<Registry>,
    authorized: Arc<LiveAuthorized>,
    forward: Arc<dyn Connector>,
}

impl ReverseConnector {
    /// Forward nodes are dialled over SSH (`SshConnector`).
    pub fn new(registry: Arc<Registry>, authorized: Arc<LiveAuthorized>) -> ReverseConnector {
        Self::with_forward(registry, authorized, Arc::new(SshConnector))
    }

    /// With another dialler for forward (and either) nodes (tests).
    pub fn with_forward(
        registry: Arc<Registry>,
        authorized: Arc<LiveAuthorized>,
        forward: Arc<dyn Connector>,
    ) -> ReverseConnector {
        ReverseConnector {
            registry,
            authorized,
            forward,
        }
    }
}

fn reverse_link(
    node: &Node,
    session: Session,
    settings: Arc<SshSettings>,
    link: LinkStats,
) -> Arc<dyn Link> {
    tracing::debug!(node = %node.name, key = %session.client_key, "reverse session taken");
    Arc::new(ReverseLink::new(node, session, settings, link))
}

impl ReverseConnector {
    /// An either node: a waiting session at once, else the dial and the wait race.
    async fn either(
        &self,
        node: &Node,
        settings: Arc<SshSettings>,
        link: LinkStats,
    ) -> Result<Arc<dyn Link>, ConnectError> {
        if let Some(s) = self.registry.take_now(&node.name) {
            return Ok(reverse_link(node, s, settings, link));
        }
        let limit = settings.connect_timeout;
        let dial = self.forward.connect(node, settings.clone(), link.clone());
        let wait = self.registry.take(&node.name, limit);
        tokio::pin!(dial, wait);
        let mut dial_error = None;
        let mut wait_over = false;
        // At most two rounds: each branch ends once (the dial within the connect timeout,
        // the wait at `limit`).
        for _ in 0..2 {
            tokio::select! {
                r = &mut dial, if dial_error.is_none() => match r {
                    Ok(l) => return Ok(l),
                    Err(e) => dial_error = Some(e),
                },
                s = &mut wait, if !wait_over => match s {
                    Some(s) => return Ok(reverse_link(node, s, settings, link)),
                    None => wait_over = true,
                },
            }
            if dial_error.is_some() && wait_over {
                break;
            }
        }
        Err(dial_error.unwrap_or(ConnectError::NoSession {
            node: node.name.clone(),
            waited: limit,
        }))
    }
}

impl Connector for ReverseConnector {
    fn connect<'a>(
        &'a self,
        node: &'a Node,
        settings: Arc<SshSettings>,
        link: LinkStats,
    ) -> BoxFuture<'a, Result<Arc<dyn Link>, ConnectError>> {
        match self.mode(node) {
            NodeMode::Forward => self.forward.connect(node, settings, link),
            NodeMode::Either => Box::pin(self.either(node, settings, link)),
            NodeMode::Reverse => Box::pin(async move {
                let limit = settings.connect_timeout;
                match self.registry.take(&node.name, limit).await {
                    Some(s) => Ok(reverse_link(node, s, settings, link)),
                    None => Err(ConnectError::NoSession {
                        node: node.name.clone(),
                        waited: limit,
                    }),
                }
            }),
        }
    }

    fn mode(&self, node: &Node) -> NodeMode {
        self.authorized.current().mode(&node.name)
    }

    fn connect_extra<'a>(
        &'a self,
        node: &'a Node,
        settings: Arc<SshSettings>,
        link: LinkStats,
    ) -> BoxFuture<'a, Result<Arc<dyn Link>, ConnectError>> {
        let mode = self.mode(node);
        if mode == NodeMode::Forward {
            return self.forward.connect(node, settings, link);
        }
        if let Some(s) = self.registry.take_now(&node.name) {
            return Box::pin(async move { Ok(reverse_link(node, s, settings, link)) });
        }
        if mode == NodeMode::Either {
            return self.forward.connect(node, settings, link);
        }
        Box::pin(async move {
            Err(ConnectError::NoSession {
                node: node.name.clone(),
                waited: std::time::Duration::ZERO,
            })
        })
    }

    fn arrival<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.registry.arrival(name))
    }
}
