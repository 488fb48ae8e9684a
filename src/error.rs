//! Typed errors of the library. Each one names the thing that is wrong (node, destination,
//! file and line) and, where a human has to act, how to fix it, so the CLI can print it as
//! one line and callers can match on the variant (`DialError::NoRoute`, ...).

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// A problem with the client key; each message names the file and the fix.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("SSH key file {} does not exist; create one with `kube-ssh-tunnel keygen --out {}` or point --ssh-keyfile at your key", path.display(), path.display())]
    NotFound { path: PathBuf },
    #[error("SSH key file {} cannot be read: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("SSH key file {} has mode {mode:o}, which lets group or others read it; fix with `chmod 600 {}`", path.display(), path.display())]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("SSH key file {} is encrypted; give its passphrase with --ssh-key-passphrase-file FILE", path.display())]
    Encrypted { path: PathBuf },
    #[error("SSH key file {} could not be decrypted with the passphrase from {}: wrong passphrase or corrupt key", path.display(), passphrase_file.display())]
    BadPassphrase {
        path: PathBuf,
        passphrase_file: PathBuf,
    },
    #[error("SSH key file {} is not an OpenSSH private key ({reason}); expected the private half made by ssh-keygen, not the .pub file", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// A problem with a known_hosts file.
#[derive(Debug, Error)]
pub enum KnownHostsError {
    #[error("known_hosts file {} cannot be read: {reason}; create it (e.g. `ssh-keyscan NODE_ADDR > {}`) or point --ssh-known-hosts at yours", path.display(), path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("known_hosts file {}:{line} is malformed ({reason}); expected `[@marker] HOSTS KEYTYPE BASE64KEY [comment]`, fix or delete that line", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Bad configuration or input, found before any connection is made (CLI exit code 2).
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("invalid node '{node}': {reason}")]
    InvalidNode { node: String, reason: String },
    #[error("invalid destination '{input}': {reason}")]
    InvalidDestination { input: String, reason: String },
    #[error("cannot use {what} file {}: {reason}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    KnownHosts(#[from] KnownHostsError),
    #[error("{0}")]
    Invalid(String),
}

/// Why the SSH connection to one node could not be (re)established.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("node {node}: cannot resolve address '{address}': {reason}")]
    Resolve {
        node: String,
        address: String,
        reason: String,
    },
    #[error("node {node}: TCP connect to {addr} failed: {source}")]
    Tcp {
        node: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "node {node}: timed out after {after:?} during {stage} (connect+handshake+auth timeout)"
    )]
    Timeout {
        node: String,
        stage: &'static str,
        after: Duration,
    },
    #[error("node {node}: SSH handshake failed: {reason}")]
    Handshake { node: String, reason: String },
    /// Reverse mode: no session of the node was there to take (it dials in with `ssh -R`).
    #[error(
        "node {node}: no session of the node's own ssh was waiting (reverse mode: it dials in with ssh -R; waited {waited:?})"
    )]
    NoSession { node: String, waited: Duration },
    #[error(
        "node {node}: HOST KEY CHANGED: the server offered {offered} but {file}:{line} holds \
         {expected}; refusing to connect (possible man-in-the-middle). If the node's key really \
         changed, replace that line with the new key"
    )]
    HostKeyMismatch {
        node: String,
        offered: String,
        expected: String,
        file: String,
        line: usize,
    },
    #[error(
        "node {node}: HOST KEY CHANGED: the server offered {offered} but its Node's annotation \
         {annotations} holds {expected}; refusing to connect (possible man-in-the-middle). If \
         the node's host key really changed, run `kube-ssh-tunnel publish-host-key` on the node \
         again (or add its key to known_hosts, which wins over the annotation)"
    )]
    HostKeyAnnotationMismatch {
        node: String,
        offered: String,
        annotations: String,
        expected: String,
    },
    #[error(
        "node {node}: the host key annotation on its Node cannot be used ({reason}); refusing \
         to connect. Run `kube-ssh-tunnel publish-host-key` on the node again, or remove the \
         annotation (`kubectl annotate node {node} {annotation}-`)"
    )]
    HostKeyAnnotationMalformed {
        node: String,
        annotation: String,
        reason: String,
    },
    #[error("node {node}: host certificate {certificate} refused: {reason}")]
    HostCertificateRejected {
        node: String,
        certificate: String,
        reason: String,
    },
    #[error("node {node}: ssh-agent: {reason}")]
    Agent { node: String, reason: String },
    #[error(
        "node {node}: host key {offered} is not in {files}; refusing to connect. Add it after \
         checking it out of band, e.g. `ssh-keyscan -p {port} {address} >> <known_hosts>`"
    )]
    HostKeyUnknown {
        node: String,
        offered: String,
        files: String,
        address: String,
        port: u16,
    },
    #[error(
        "node {node}: host key {offered} is marked @revoked in {file}:{line}; refusing to connect"
    )]
    HostKeyRevoked {
        node: String,
        offered: String,
        file: String,
        line: usize,
    },
    #[error(
        "node {node}: authentication as '{user}' with key {key} was rejected; add the key's \
         public half to the node's authorized_keys (see `kube-ssh-tunnel keygen`)"
    )]
    AuthRejected {
        node: String,
        user: String,
        key: String,
    },
}

impl ConnectError {
    /// True when the node's host key or host certificate was refused (a change to known_hosts
    /// could let it in).
    pub fn is_host_key_refusal(&self) -> bool {
        matches!(
            self,
            ConnectError::HostKeyMismatch { .. }
                | ConnectError::HostKeyAnnotationMismatch { .. }
                | ConnectError::HostKeyAnnotationMalformed { .. }
                | ConnectError::HostCertificateRejected { .. }
                | ConnectError::HostKeyUnknown { .. }
                | ConnectError::HostKeyRevoked { .. }
        )
    }

    /// True for failures that retrying soon will not fix (a human must act).
    pub fn needs_human(&self) -> bool {
        matches!(
            self,
            ConnectError::HostKeyMismatch { .. }
                | ConnectError::HostKeyAnnotationMismatch { .. }
                | ConnectError::HostKeyAnnotationMalformed { .. }
                | ConnectError::HostCertificateRejected { .. }
                | ConnectError::Agent { .. }
                | ConnectError::HostKeyUnknown { .. }
                | ConnectError::HostKeyRevoked { .. }
                | ConnectError::AuthRejected { .. }
        )
    }
}

/// Why a `direct-tcpip` channel could not be opened on an established connection.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("the node refused or could not reach it: {reason}")]
    Refused { reason: String },
    #[error("channel open timed out after {after:?}")]
    Timeout { after: Duration },
    #[error("the SSH connection to the node is closed")]
    ConnectionLost,
    #[error("the SSH connection already has {limit} channels open (its limit)")]
    AtCapacity { limit: usize },
}

/// Why `Pool::dial` failed; every variant names the destination and, once routed, the node.
#[derive(Debug, Error)]
pub enum DialError {
    #[error("no node matches destination {destination}")]
    NoRoute { destination: String },
    #[error("no ready tunnel for destination {destination}: no node is ready")]
    NoReadyNode { destination: String },
    #[error("destination {destination} matches more than one node ({}); refused: it must name one node", nodes.join(", "))]
    Ambiguous {
        destination: String,
        nodes: Vec<String>,
    },
    #[error("dial {destination} via node {node}: the node's tunnel is {state}: {reason}")]
    NotReady {
        node: String,
        destination: String,
        state: crate::tunnel_state::TunnelState,
        reason: String,
        /// The latest failed connection attempt, if that is why.
        #[source]
        last_error: Option<std::sync::Arc<ConnectError>>,
    },
    #[error("dial {destination} via node {node}: {source}")]
    Open {
        node: String,
        destination: String,
        #[source]
        source: OpenError,
    },
}

impl DialError {
    /// The node the dial was routed to, if it got that far.
    pub fn node(&self) -> Option<&str> {
        match self {
            DialError::NoRoute { .. }
            | DialError::NoReadyNode { .. }
            | DialError::Ambiguous { .. } => None,
            DialError::NotReady { node, .. } | DialError::Open { node, .. } => Some(node),
        }
    }
}

/// Why a health probe through a node's connection failed (`pool::health`). The details are
/// text where the cause is an I/O or TLS error, so that the result can be shared in the
/// node's status.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ProbeError {
    #[error("health probe timed out after {after:?}")]
    Timeout { after: Duration },
    #[error("health probe {target}: {source}")]
    Open { target: String, source: OpenError },
    #[error("health probe {url}: no TLS settings for an https probe")]
    NoTlsSettings { url: String },
    #[error("{0}")]
    ServerName(String),
    #[error("health probe {url}: TLS: {reason}")]
    Tls { url: String, reason: String },
    #[error("health probe {url}: {reason}")]
    Io { url: String, reason: String },
    #[error("health probe {url}: {status_line}")]
    Status { url: String, status_line: String },
    /// A failed probe that gave no reason.
    #[error("health probe failed")]
    Failed,
}
