//! The node set from the cluster itself: a kube-rs watcher on Node objects (list, then watch;
//! a 410 Gone or a dropped watch relists, with kube-rs' default backoff), read as `LeanNode`s
//! (only what the tunnel uses). Each event converts only the object it carries into the
//! watch's own store; changes within `COALESCE` go out together as one whole node set on a
//! `watch` channel (see `source`; the daemon applies it). Errors are logged and retried: the
//! last set stands while the API server is away.

use std::path::PathBuf;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::AddressTypes;
use super::lean_node::LeanNode;
use super::source::SourceHealth;
use crate::node::Node;

/// Where the API server is.
#[derive(Clone, Debug)]
pub enum ApiSource {
    /// A kubeconfig file (its current context).
    Kubeconfig(PathBuf),
    /// The pod's service account (KUBERNETES_SERVICE_HOST/PORT and the mounted token).
    InCluster,
}

/// What to watch and how to turn it into nodes.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    pub source: ApiSource,
    /// Only nodes with these labels, e.g. `node.kubernetes.io/ssh-tunnel=true`.
    pub label_selector: Option<String>,
    pub address_types: AddressTypes,
}

/// Why the watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot read kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("not running in a cluster (in-cluster config): {0}")]
    InCluster(String),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(String),
}

/// A Kubernetes client for `source` (the watch's, and `publish-host-key`'s); `adjust` may
/// change the configuration first (e.g. its timeouts).
pub async fn client(
    source: &ApiSource,
    adjust: impl FnOnce(&mut kube::Config),
) -> Result<kube::Client, WatchError> {
    let mut config = match source {
        ApiSource::Kubeconfig(path) => {
            let err = |reason: String| WatchError::Kubeconfig {
                path: path.clone(),
                reason,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.to_string()))?
        }
        ApiSource::InCluster => {
            kube::Config::incluster().map_err(|e| WatchError::InCluster(e.to_string()))?
        }
    };
    adjust(&mut config);
    kube::Client::try_from(config).map_err(|e| WatchError::Client(e.to_string()))
}

/// Builds the client now (so a bad kubeconfig is a start-up error), then returns the task
/// that sends the cluster's node set on `tx` whenever it changes, until `cancel`.
pub async fn start(
    cfg: WatchConfig,
    tx: watch::Sender<Vec<Node>>,
    health: watch::Sender<SourceHealth>,
    cancel: CancellationToken,
) -> Result<impl std::future::Future<Output = ()> + Send, WatchError> {
    let client = client(&cfg.source, |_| {}).await?;
    let api: kube::Api<LeanNode> = kube::Api::all(client);
    let mut wc = watcher::Config::default();
    if let Some(sel) = &cfg.label_selector {
        wc = wc.labels(sel);
    }
    let types = cfg.address_types.clone();
    Ok(async move {
        let events = watcher(api, wc).default_backoff();
        futures::pin_mut!(events);
        let mut store = Store::default();
        loop {
            let flush_at = store.flush_at();
            let event = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(flush_at), if store.dirty => {
                    store.publish(&tx);
                    continue;
                }
                e = events.next() => e,
            };
            match event {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, nodes = store.nodes.len(), "watching Nodes failed; keeping the current node set and retrying");
                    SourceHealth::failed(&health);
                }
                Some(Ok(e)) => store.apply(e, &types),
            }
            if store.dirty && tokio::time::Instant::now() >= store.flush_at() {
                store.publish(&tx);
            }
        }
    })
}

/// A burst of changes within this time is sent as one node set.
const COALESCE: Duration = Duration::from_millis(100);

/// The watch's own node store: the tunnel nodes derived from the Node objects, by name (only
/// the object that changed is converted), and whether it changed since the last set sent.
#[derive(Default)]
struct Store {
    nodes: BTreeMap<String, Node>,
    /// The objects of a (re)list in progress: they replace `nodes` when it is done.
    relist: Option<BTreeMap<String, Node>>,
    dirty: bool,
    sent: Option<tokio::time::Instant>,
}

impl Store {
    /// When a pending change may be sent: at once after a quiet spell, else one coalescing
    /// period after the last set.
    fn flush_at(&self) -> tokio::time::Instant {
        match self.sent {
            Some(t) => t + COALESCE,
            None => tokio::time::Instant::now(),
        }
    }

    fn apply(&mut self, event: watcher::Event<LeanNode>, types: &AddressTypes) {
        match event {
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(obj) => {
                if let Some(n) = convert(obj, types)
                    && let Some(relist) = self.relist.as_mut()
                {
                    relist.insert(n.name.clone(), n);
                }
            }
            watcher::Event::InitDone => {
                if let Some(relist) = self.relist.take()
                    && relist != self.nodes
                {
                    self.nodes = relist;
                    self.dirty = true;
                }
            }
            watcher::Event::Apply(obj) => {
                let name = obj.name().to_string();
                match convert(obj, types) {
                    Some(n) if self.nodes.get(&name) != Some(&n) => {
                        self.nodes.insert(name, n);
                        self.dirty = true;
                    }
                    Some(_) => {}
                    None => self.dirty |= self.nodes.remove(&name).is_some(),
                }
            }
            watcher::Event::Delete(obj) => {
                self.dirty |= self.nodes.remove(obj.name()).is_some();
            }
        }
    }

    /// Sends the current node set (sorted by name), if it differs from the last one sent.
    fn publish(&mut self, tx: &watch::Sender<Vec<Node>>) {
        self.dirty = false;
        self.sent = Some(tokio::time::Instant::now());
        let set: Vec<Node> = self.nodes.values().cloned().collect();
        tx.send_if_modified(|last| {
            if *last == set {
                return false;
            }
            *last = set;
            true
        });
    }
}

/// The tunnel node of `obj`, or None (logged) when it cannot be one.
fn convert(obj: LeanNode, types: &AddressTypes) -> Option<Node> {
    match obj.into_node(types) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!("skipping a node: {e}");
            None
        }
    }
}
