//! Where the node set comes from: a file (our TOML list, or the JSON `kubectl get nodes -o
//! json` prints) and, behind the `kube` feature, a watch of the cluster's Node objects.
//! Both turn Kubernetes Node objects into [`Node`](crate::Node)s the same way
//! ([`kube_node`]).

pub mod address_types;
pub mod file;
pub mod host_key_annotations;
pub mod kube_node;
#[cfg(feature = "kube")]
pub mod lean_node;
pub mod source;
#[cfg(feature = "kube")]
pub mod watch;

pub use address_types::{AddressType, AddressTypes};
pub use file::load as load_file;
pub use source::NodeSource;
