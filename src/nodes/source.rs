//! `NodeSource`: where a daemon's node set comes from. A source only *produces* node sets —
//! whole ones, on a `watch` channel, so a burst of changes collapses into the latest set — and
//! one loop of the daemon applies them to the pool (`Pool::update`, whose changes come from
//! the pure `pool::diff`). Sources never touch the pool, so each can be tested by what it
//! sends.
//!
//! - `Static`: a fixed list, sent once.
//! - `File`: a node file (our TOML list, or `kubectl get nodes -o json`), re-read when its
//!   modification time or size changes, or on request (SIGHUP); a file that fails to load keeps
//!   the last good set.
//! - `Kube`: a watch of the cluster's Node objects (feature `kube`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::AddressTypes;
use crate::error::ConfigError;
use crate::node::Node;

/// Where the node set comes from.
#[derive(Debug, Clone)]
pub enum NodeSource {
    /// A fixed list.
    Static(Vec<Node>),
    /// A node file, checked for changes every `interval`; `extra` nodes (given beside the file)
    /// are part of every set.
    File {
        path: PathBuf,
        extra: Vec<Node>,
        address_types: AddressTypes,
        interval: Duration,
    },
    /// The cluster's Node objects.
    #[cfg(feature = "kube")]
    Kube(super::watch::WatchConfig),
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The node file (or a fixed node) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Kubernetes client could not be built.
    #[cfg(feature = "kube")]
    #[error(transparent)]
    Watch(#[from] super::watch::WatchError),
}

/// The task that follows a source's changes, if it has any.
pub type SourceTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A started source: the node sets (the first one is already in it), how the source is
/// doing, and the task that sends the next sets until it is cancelled.
pub struct Started {
    pub nodes: watch::Receiver<Vec<Node>>,
    pub health: watch::Receiver<SourceHealth>,
    pub task: Option<SourceTask>,
}

/// How a node source is doing: its failures so far (a Node watch error, a node file that did
/// not load). While it fails, the last good node set stays in use; the daemon counts the
/// failures in `node_source_errors_total`, which an alert can watch. (A recovered Node watch
/// sends nothing until a Node changes, so there is no honest "healthy again" signal: a rate of
/// errors is what can be alerted on.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceHealth {
    /// Failures since the source started.
    pub errors: u64,
}

impl SourceHealth {
    /// Records a failure on `tx`.
    pub fn failed(tx: &watch::Sender<SourceHealth>) {
        tx.send_modify(|h| h.errors += 1);
    }
}

impl NodeSource {
    /// `kind()` of a static list.
    pub const STATIC: &'static str = "node list";
    /// `kind()` of a node file.
    pub const FILE: &'static str = "node file";
    /// `kind()` of the Kubernetes watch.
    pub const KUBE: &'static str = "Kubernetes API";

    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeSource::Static(_) => NodeSource::STATIC,
            NodeSource::File { .. } => NodeSource::FILE,
            #[cfg(feature = "kube")]
            NodeSource::Kube(_) => NodeSource::KUBE,
        }
    }

    /// True when the source gives its nodes only later (the pool may start empty).
    pub fn is_dynamic(&self) -> bool {
        match self {
            NodeSource::Static(_) | NodeSource::File { .. } => false,
            #[cfg(feature = "kube")]
            NodeSource::Kube(_) => true,
        }
    }

    /// Loads the first node set now (a node file that does not load, or a kubeconfig that
    /// does not, is an error here) and returns it with the task that follows changes until
    /// `cancel`. `reload` makes a file source re-read its file at once.
    pub async fn start(
        self,
        reload: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Result<Started, SourceError> {
        match self {
            NodeSource::Static(nodes) => {
                let (_tx, rx) = watch::channel(nodes);
                Ok(Started {
                    nodes: rx,
                    health: watch::channel(SourceHealth::default()).1,
                    task: None,
                })
            }
            NodeSource::File {
                path,
                extra,
                address_types,
                interval,
            } => {
                // The stamp first: a write while the file loads is then seen as a change.
                let seen = stamp(&path);
                let mut first = extra.clone();
                first.extend(crate::nodes::load_file(&path, &address_types)?);
                let (tx, rx) = watch::channel(first);
                let (health_tx, health) = watch::channel(SourceHealth::default());
                let file = FileSource {
                    stamp: seen,
                    path,
                    extra,
                    address_types,
                };
                let task = file.follow(tx, health_tx, interval, reload, cancel);
                Ok(Started {
                    nodes: rx,
                    health,
                    task: Some(Box::pin(task)),
                })
            }
            #[cfg(feature = "kube")]
            NodeSource::Kube(cfg) => {
                let (tx, rx) = watch::channel(Vec::new());
                let (health_tx, health) = watch::channel(SourceHealth::default());
                let task = super::watch::start(cfg, tx, health_tx, cancel).await?;
                Ok(Started {
                    nodes: rx,
                    health,
                    task: Some(Box::pin(task)),
                })
            }
        }
    }
}

/// A node file being followed.
struct FileSource {
    path: PathBuf,
    extra: Vec<Node>,
    address_types: AddressTypes,
    /// Modification time and size when last read.
    stamp: Option<(SystemTime, u64)>,
}

impl FileSource {
    /// Sends the file's node set whenever it changes (or on `reload`) until `cancel`.
    async fn follow(
        mut self,
        tx: watch::Sender<Vec<Node>>,
        health: watch::Sender<SourceHealth>,
        interval: Duration,
        reload: Arc<Notify>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = reload.notified() => {
                    tracing::info!(file = %self.path.display(), "reloading the node file");
                    self.stamp = stamp(&self.path);
                }
                _ = tick.tick() => {
                    let now = stamp(&self.path);
                    if now == self.stamp {
                        continue;
                    }
                    self.stamp = now;
                }
            }
            match crate::nodes::load_file(&self.path, &self.address_types) {
                Ok(nodes) => {
                    let mut set = self.extra.clone();
                    set.extend(nodes);
                    // Sent even when equal: a reload re-applies (a drained node whose entry
                    // changed back, say); the pool's update is a no-op otherwise.
                    tx.send_replace(set);
                }
                Err(e) => {
                    tracing::error!(error = %e, "node file did not load; keeping the last good node set");
                    SourceHealth::failed(&health);
                }
            }
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(nodes: &[Node]) -> Vec<&str> {
        nodes.iter().map(|n| n.name.as_str()).collect()
    }

    #[tokio::test]
    async fn a_static_list_is_the_first_set_and_has_no_task() {
        let source = NodeSource::Static(vec![Node::parse_spec("a=192.0.2.1").unwrap()]);
        let started = source
            .start(Arc::default(), CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(names(&started.nodes.borrow()), ["a"]);
        assert!(started.task.is_none());
    }

    #[tokio::test]
    async fn a_file_source_sends_changes_keeps_the_last_good_set_and_reloads_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.toml");
        let write = |text: &str| std::fs::write(&path, text).unwrap();
        write("[[nodes]]\nname = \"a\"\naddress = \"192.0.2.1\"\n");
        let source = NodeSource::File {
            path: path.clone(),
            extra: vec![Node::parse_spec("fixed=192.0.2.100").unwrap()],
            address_types: AddressTypes::default(),
            interval: Duration::from_millis(100),
        };
        let reload = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let mut started = source.start(reload.clone(), cancel.clone()).await.unwrap();
        assert_eq!(names(&started.nodes.borrow_and_update()), ["fixed", "a"]);
        let task = tokio::spawn(started.task.take().unwrap());
        // Every set the source sends, in order. The source sends from its own task and awaits
        // before it can send again, so on this single-threaded runtime the recorder sees each
        // set (a watch channel would otherwise keep only the latest).
        let (sets_tx, mut sets) = tokio::sync::mpsc::unbounded_channel::<Vec<String>>();
        let mut rx = started.nodes;
        let recorder = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let set = names(&rx.borrow_and_update())
                    .into_iter()
                    .map(String::from)
                    .collect();
                let _ = sets_tx.send(set);
            }
        });
        async fn next(sets: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<String>>) -> Vec<String> {
            tokio::time::timeout(Duration::from_secs(10), sets.recv())
                .await
                .expect("a new set within 10 s")
                .expect("the recorder runs")
        }

        // A changed file (another size) is sent.
        write(
            "[[nodes]]\nname = \"a\"\naddress = \"192.0.2.1\"\n\n[[nodes]]\nname = \"b\"\naddress = \"192.0.2.2\"\n",
        );
        assert_eq!(next(&mut sets).await, ["fixed", "a", "b"]);

        // A file that does not load sends nothing: the last good set stays. Seen by what comes
        // next: after a few checks of the bad file, a good file's set is the only one sent.
        write("not toml [");
        tokio::time::sleep(Duration::from_millis(400)).await;
        write("[[nodes]]\nname = \"c\"\naddress = \"192.0.2.3\"\n");
        assert_eq!(
            next(&mut sets).await,
            ["fixed", "c"],
            "the set after the bad file is the good file's (nothing for the bad one)"
        );
        assert!(
            started.health.borrow().errors >= 1,
            "the bad file counts as a failure of the source"
        );

        // A reload on request re-reads the file and sends its set, even unchanged (the
        // periodic check sends nothing for a file that did not change).
        reload.notify_one();
        assert_eq!(next(&mut sets).await, ["fixed", "c"]);

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the source stops when cancelled")
            .unwrap();
        recorder.await.unwrap();
        let mut extra = Vec::new();
        while let Ok(set) = sets.try_recv() {
            extra.push(set);
        }
        assert!(
            extra.is_empty(),
            "exactly one set per change and per reload, but also: {extra:?}"
        );
    }

    #[tokio::test]
    async fn a_node_file_that_does_not_load_is_a_start_error() {
        let source = NodeSource::File {
            path: PathBuf::from("/nonexistent/nodes.toml"),
            extra: Vec::new(),
            address_types: AddressTypes::default(),
            interval: Duration::from_secs(1),
        };
        let err = source
            .start(Arc::default(), CancellationToken::new())
            .await
            .err()
            .expect("an error");
        assert!(err.to_string().contains("/nonexistent/nodes.toml"), "{err}");
    }
}
