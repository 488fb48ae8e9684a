//! The `--ssh-tunnel` gate: SSH tunnel mode is deprecated in Kubernetes, so it must be asked
//! for explicitly. The texts live here so the CLI, the docs and the tests say the same thing.

/// Printed (with exit code 2) when `run` or `dial` is started without `--ssh-tunnel`.
pub const GATE_REFUSAL: &str = "SSH tunnel mode is deprecated (removed from kube-apiserver in \
Kubernetes 1.22) and must be enabled explicitly: pass --ssh-tunnel (or set \
KUBE_SSH_TUNNEL_SSH_TUNNEL=true). Konnectivity (apiserver-network-proxy) is the supported \
replacement; use this only for clusters whose nodes are reachable over SSH alone.";

/// Logged once, as a warning, when the gate is passed.
pub const DEPRECATION_WARNING: &str = "running in deprecated SSH tunnel mode (--ssh-tunnel); \
Konnectivity is the supported replacement for kube-apiserver's SSH tunnels";
