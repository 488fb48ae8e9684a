//! The node set from the cluster itself: a kube-rs watcher + reflector on Node objects (list,
//! then watch; a 410 Gone or a dropped watch relists, with kube-rs' default backoff), each
//! change sent as a whole node set on a `watch` channel (see `source`; the daemon applies it).
//! Errors are logged and retried: the last set stands while the API server is away.

use std::path::PathBuf;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node as K8sNode;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::AddressTypes;
use super::kube_node::{KubeNode, convert};
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

/// Builds the client now (so a bad kubeconfig is a start-up error), then returns the task
/// that sends the cluster's node set on `tx` whenever it changes, until `cancel`.
pub async fn start(
    cfg: WatchConfig,
    tx: watch::Sender<Vec<Node>>,
    cancel: CancellationToken,
) -> Result<impl std::future::Future<Output = ()> + Send, WatchError> {
    let config = match &cfg.source {
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
    let client = kube::Client::try_from(config).map_err(|e| WatchError::Client(e.to_string()))?;
    let api: kube::Api<K8sNode> = kube::Api::all(client);
    let mut wc = watcher::Config::default();
    if let Some(sel) = &cfg.label_selector {
        wc = wc.labels(sel);
    }
    let (store, writer) = reflector::store();
    let types = cfg.address_types.clone();
    Ok(async move {
        let events = reflector::reflector(writer, watcher(api, wc)).default_backoff();
        futures::pin_mut!(events);
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => break,
                e = events.next() => e,
            };
            match event {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, nodes = tx.borrow().len(), "watching Nodes failed; keeping the current node set and retrying");
                }
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                Some(Ok(
                    watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_),
                )) => send(&tx, &store, &types),
            }
        }
    })
}

/// Sends the store's current nodes, when they differ from the last set sent.
fn send(tx: &watch::Sender<Vec<Node>>, store: &Store<K8sNode>, types: &AddressTypes) {
    let mut items: Vec<KubeNode> = Vec::new();
    for obj in store.state() {
        // One conversion path for files and the watch: through the Node's JSON.
        match serde_json::to_value(obj.as_ref()).and_then(serde_json::from_value::<KubeNode>) {
            Ok(k) => items.push(k),
            Err(e) => tracing::warn!(error = %e, "skipping a Node object that does not decode"),
        }
    }
    let (mut nodes, skipped) = convert(&items, types);
    for s in &skipped {
        tracing::warn!("skipping a node: {s}");
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    tx.send_if_modified(|last| {
        if *last == nodes {
            return false;
        }
        *last = nodes;
        true
    });
}
