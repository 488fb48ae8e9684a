//! The pool's `Connector` with reverse mode on: a node named in `--reverse-authorized` (as
//! the file reads at this attempt) is a reverse node, whose connection is the next session it opens to our listener (waited for
//! up to the connect timeout, then a `Timeout` like a dial that got no answer, so the
//! supervisor's backoff, states, status and metrics work unchanged). Every other node is
//! dialled as before.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::link::ReverseLink;
use super::live::LiveAuthorized;
use super::registry::Registry;
use crate::error::ConnectError;
use crate::metrics::LinkStats;
use crate::node::Node;
use crate::pool::transport::{Connector, Link, SshConnector};
use crate::ssh::SshSettings;

/// Reverse nodes wait for their session; the others go to `forward`.
#[derive(Debug)]
pub struct ReverseConnector {
    registry: Arc<Registry>,
    authorized: Arc<LiveAuthorized>,
    forward: Arc<dyn Connector>,
}

impl ReverseConnector {
    /// Forward nodes are dialled over SSH (`SshConnector`).
    pub fn new(registry: Arc<Registry>, authorized: Arc<LiveAuthorized>) -> ReverseConnector {
        ReverseConnector {
            registry,
            authorized,
            forward: Arc::new(SshConnector),
        }
    }
}

impl Connector for ReverseConnector {
    fn connect<'a>(
        &'a self,
        node: &'a Node,
        settings: Arc<SshSettings>,
        link: LinkStats,
    ) -> BoxFuture<'a, Result<Arc<dyn Link>, ConnectError>> {
        if !self.authorized.current().is_reverse(&node.name) {
            return self.forward.connect(node, settings, link);
        }
        Box::pin(async move {
            let limit = settings.connect_timeout;
            match self.registry.take(&node.name, limit).await {
                Some(session) => {
                    tracing::debug!(node = %node.name, key = %session.client_key, "reverse session taken");
                    Ok(Arc::new(ReverseLink::new(node, session, settings, link)) as Arc<dyn Link>)
                }
                None => Err(ConnectError::Timeout {
                    node: node.name.clone(),
                    stage: "waiting for the node to dial in (reverse)",
                    after: limit,
                }),
            }
        })
    }
}
