//! Flags shared by `run` and `dial`: the gate, SSH identity and trust, the nodes, timeouts.
//! Every flag has an environment variable `KUBE_SSH_TUNNEL_<FLAG>`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kube_ssh_tunnel::nodes::AddressTypes;

use super::duration::parse_duration;
use super::size::parse_size;

#[derive(Args, Debug, Clone)]
pub struct SshArgs {
    /// TOML file whose keys are these flags' names (e.g. ssh_user = "kube-tunnel"); flags and
    /// environment variables take precedence over it.
    #[arg(long, env = "KUBE_SSH_TUNNEL_CONFIG")]
    pub config: Option<PathBuf>,

    /// Enable the deprecated SSH tunnel mode (required; Konnectivity is the supported replacement).
    #[arg(long, env = "KUBE_SSH_TUNNEL_SSH_TUNNEL")]
    pub ssh_tunnel: bool,

    /// SSH user on the nodes.
    #[arg(long, env = "KUBE_SSH_TUNNEL_SSH_USER")]
    pub ssh_user: Option<String>,

    /// Private key file (OpenSSH format: ed25519, ECDSA or RSA), mode 0600.
    #[arg(long, env = "KUBE_SSH_TUNNEL_SSH_KEYFILE")]
    pub ssh_keyfile: Option<PathBuf>,

    /// File whose first line is the passphrase of an encrypted key.
    #[arg(long, env = "KUBE_SSH_TUNNEL_SSH_KEY_PASSPHRASE_FILE")]
    pub ssh_key_passphrase_file: Option<PathBuf>,

    /// known_hosts file(s) holding the nodes' host keys (repeatable; default ~/.ssh/known_hosts).
    #[arg(long, env = "KUBE_SSH_TUNNEL_SSH_KNOWN_HOSTS", value_delimiter = ',')]
    pub ssh_known_hosts: Vec<PathBuf>,

    /// Host key policy: strict (known_hosts only) or accept-new (trust on first use, recorded in
    /// --learned-known-hosts; a later change is refused).
    #[arg(long, env = "KUBE_SSH_TUNNEL_HOST_KEY_POLICY", value_enum, default_value_t = HostKeyChoice::Strict)]
    pub host_key_policy: HostKeyChoice,

    /// Our own known_hosts file that accept-new records learned keys in.
    #[arg(long, env = "KUBE_SSH_TUNNEL_LEARNED_KNOWN_HOSTS")]
    pub learned_known_hosts: Option<PathBuf>,

    /// OpenSSH user certificate for --ssh-keyfile (default: KEYFILE-cert.pub when it exists).
    #[arg(long, env = "KUBE_SSH_TUNNEL_SSH_CERTIFICATE")]
    pub ssh_certificate: Option<PathBuf>,

    /// Authenticate with the ssh-agent at $SSH_AUTH_SOCK (before --ssh-keyfile, which becomes optional).
    #[arg(long, env = "KUBE_SSH_TUNNEL_SSH_AGENT")]
    pub ssh_agent: bool,

    /// Accept any host key (INSECURE: allows man-in-the-middle). Logged loudly.
    #[arg(long, env = "KUBE_SSH_TUNNEL_INSECURE_SKIP_HOST_KEY_VERIFICATION")]
    pub insecure_skip_host_key_verification: bool,

    /// A node, NAME=ADDR[:SSHPORT] (repeatable), e.g. node-1=10.0.0.5 or node-2=[fd00::5]:2222.
    #[arg(long = "node", env = "KUBE_SSH_TUNNEL_NODE", value_delimiter = ',')]
    pub nodes: Vec<String>,

    /// Node list file: TOML ([[nodes]] name, address, ssh_port, pod_cidrs) or the JSON of
    /// `kubectl get nodes -o json`. Re-read on change and on SIGHUP.
    #[arg(long = "nodes", env = "KUBE_SSH_TUNNEL_NODES")]
    pub nodes_file: Option<PathBuf>,

    /// Kubernetes node address types to connect to, most preferred first (like
    /// kube-apiserver's --kubelet-preferred-address-types).
    #[arg(
        long,
        env = "KUBE_SSH_TUNNEL_NODE_ADDRESS_TYPES",
        default_value = "InternalIP,ExternalIP,Hostname",
        value_parser = parse_address_types
    )]
    pub node_address_types: AddressTypes,

    /// Timeout for TCP connect + SSH handshake + authentication.
    #[arg(long, env = "KUBE_SSH_TUNNEL_CONNECT_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Timeout for opening one channel (a dial).
    #[arg(long, env = "KUBE_SSH_TUNNEL_DIAL_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub dial_timeout: Duration,

    /// SSH keepalive interval (0 turns keepalives off).
    #[arg(long, env = "KUBE_SSH_TUNNEL_KEEPALIVE_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,

    /// Unanswered keepalives before a connection is declared dead.
    #[arg(long, env = "KUBE_SSH_TUNNEL_KEEPALIVE_COUNT", default_value_t = 3)]
    pub keepalive_count: usize,

    /// Log level or filter (e.g. info, debug, kube_ssh_tunnel=debug); default from RUST_LOG, else info.
    #[arg(long, env = "KUBE_SSH_TUNNEL_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Log format: text or json (one JSON object per line).
    #[arg(long, env = "KUBE_SSH_TUNNEL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Where the admin API listens (run) or is looked for (status, reconnect, drain).
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// Admin API Unix socket, mode 0600: whoever can open it may use every action (the file
    /// mode is its access control). `run` always serves it; `status`, `drain` and `reconnect`
    /// use it unless --admin-listen is given.
    #[arg(
        long,
        env = "KUBE_SSH_TUNNEL_ADMIN_UDS",
        default_value = "/run/kube-ssh-tunnel/admin.sock"
    )]
    pub admin_uds: PathBuf,

    /// `run`: also serve the admin API on this TCP address, for probes and Prometheus
    /// (loopback only unless --admin-allow-remote). Reads need no token unless
    /// --admin-token-for-reads; drain and reconnect need --admin-token-file. `status`,
    /// `drain`, `reconnect`: use this address instead of the socket.
    #[arg(long, env = "KUBE_SSH_TUNNEL_ADMIN_LISTEN")]
    pub admin_listen: Option<std::net::SocketAddr>,

    /// File holding the admin API's bearer token (first line, at least 16 characters, mode
    /// 0600). `run`: drain and reconnect over --admin-listen need it; without it they are
    /// refused there (a warning says so) and only reads work on TCP. The Unix socket never
    /// needs it. `status`, `drain`, `reconnect`: send it as a bearer token.
    #[arg(long, env = "KUBE_SSH_TUNNEL_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

impl AdminArgs {
    /// The token from --admin-token-file, if given: its first line, trimmed, non-empty.
    pub fn token(&self) -> Result<Option<String>, super::CliError> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        kube_ssh_tunnel::admin::token::read_token_file(path)
            .map(Some)
            .map_err(|e| super::CliError::usage(e.to_string()))
    }
}

/// Flags of `run` that shape supervision: health probes, backoff, drain, stall handling.
#[derive(Args, Debug, Clone)]
pub struct SuperviseArgs {
    /// Health probe through each tunnel: tcp (open a channel to --health-port), http (GET
    /// --health-url), or none (keepalives only).
    #[arg(long, env = "KUBE_SSH_TUNNEL_HEALTH_PROBE", value_enum, default_value_t = ProbeKind::Tcp)]
    pub health_probe: ProbeKind,

    /// Port the tcp probe opens on the node's address.
    #[arg(long, env = "KUBE_SSH_TUNNEL_HEALTH_PORT", default_value_t = 10250)]
    pub health_port: u16,

    /// URL the http probe GETs as seen from the node (HOST may be {address}); wants a 2xx.
    /// The key line must permit it (keygen --loopback-port 10248 for the default). https://
    /// needs --health-ca (or --health-insecure-skip-tls-verify) and sends no client
    /// certificate (a kubeadm node's kubelet answers 401).
    #[arg(
        long,
        env = "KUBE_SSH_TUNNEL_HEALTH_URL",
        default_value = "http://127.0.0.1:10248/healthz"
    )]
    pub health_url: String,

    /// CA certificate(s) (PEM) that https probes verify the node's serving certificate with.
    #[arg(long, env = "KUBE_SSH_TUNNEL_HEALTH_CA")]
    pub health_ca: Option<std::path::PathBuf>,

    /// Let https probes accept any certificate (INSECURE; for self-signed kubelet certificates).
    #[arg(long, env = "KUBE_SSH_TUNNEL_HEALTH_INSECURE_SKIP_TLS_VERIFY")]
    pub health_insecure_skip_tls_verify: bool,

    /// Time between health probes.
    #[arg(long, env = "KUBE_SSH_TUNNEL_HEALTH_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub health_interval: Duration,

    /// Timeout of one health probe.
    #[arg(long, env = "KUBE_SSH_TUNNEL_HEALTH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub health_timeout: Duration,

    /// Consecutive failed probes before the connection is replaced (1 marks it degraded).
    #[arg(long, env = "KUBE_SSH_TUNNEL_HEALTH_FAILURES", default_value_t = 3)]
    pub health_failures: u32,

    /// First reconnect delay (then doubling, full jitter).
    #[arg(long, env = "KUBE_SSH_TUNNEL_BACKOFF_MIN", default_value = "500ms", value_parser = parse_duration)]
    pub backoff_min: Duration,

    /// Cap of the reconnect delay after transient failures.
    #[arg(long, env = "KUBE_SSH_TUNNEL_BACKOFF_MAX", default_value = "30s", value_parser = parse_duration)]
    pub backoff_max: Duration,

    /// Cap of the reconnect delay after authentication or host key failures.
    #[arg(long, env = "KUBE_SSH_TUNNEL_BACKOFF_AUTH_MAX", default_value = "5m", value_parser = parse_duration)]
    pub backoff_auth_max: Duration,

    /// How long removed nodes' (and, on SIGTERM, all) open streams may run before closing.
    #[arg(long, env = "KUBE_SSH_TUNNEL_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// A channel whose reader is behind by its whole memory and spill share (or holds spilled
    /// bytes, or memory a reader that reads needs) and does not read at all for this long is
    /// closed; counted from its last read or its first unread byte, whichever is later.
    #[arg(long, env = "KUBE_SSH_TUNNEL_STALL_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub stall_timeout: Duration,

    /// While a node keeps failing the same way, log a summary (attempts, last error, next
    /// retry) at most this often; the first failure, a new kind of failure and recovery are
    /// always logged.
    #[arg(long, env = "KUBE_SSH_TUNNEL_FAILURE_LOG_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub failure_log_interval: Duration,

    /// Memory one channel may hold for a reader that is behind (e.g. 4MiB).
    #[arg(long, env = "KUBE_SSH_TUNNEL_CHANNEL_BUFFER", default_value = "4MiB", value_parser = parse_size)]
    pub channel_buffer: u64,

    /// Memory all channels together may hold for readers that are behind.
    #[arg(long, env = "KUBE_SSH_TUNNEL_BUFFER_BUDGET", default_value = "256MiB", value_parser = parse_size)]
    pub buffer_budget: u64,

    /// Where spill files go (unlinked, mode 0600) when a reader is behind by its memory
    /// share; default $TMPDIR, else /var/tmp.
    #[arg(long, env = "KUBE_SSH_TUNNEL_SPILL_DIR")]
    pub spill_dir: Option<PathBuf>,

    /// Unread bytes one channel may hold in its spill file (0 turns spilling off).
    #[arg(long, env = "KUBE_SSH_TUNNEL_CHANNEL_SPILL", default_value = "1GiB", value_parser = parse_size)]
    pub channel_spill: u64,

    /// Disk all spill files together may use (0 turns spilling off).
    #[arg(long, env = "KUBE_SSH_TUNNEL_SPILL_BUDGET", default_value = "2GiB", value_parser = parse_size)]
    pub spill_budget: u64,

    /// Most SSH connections to one node: the supervised one plus extras opened past the
    /// channel limit or beside a congested connection (1 turns isolation off).
    #[arg(
        long,
        env = "KUBE_SSH_TUNNEL_MAX_CONNECTIONS_PER_NODE",
        default_value_t = 8
    )]
    pub max_connections_per_node: usize,

    /// Channels per SSH connection; past it the node gets another connection (OpenSSH
    /// aborts a connection at 16,384 channels, so at most 16,383).
    #[arg(
        long,
        env = "KUBE_SSH_TUNNEL_MAX_CHANNELS_PER_CONNECTION",
        default_value_t = 8192
    )]
    pub max_channels_per_connection: usize,

    /// An extra connection (past the channel limit) idle this long is closed.
    #[arg(long, env = "KUBE_SSH_TUNNEL_EXTRA_CONNECTION_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub extra_connection_idle_timeout: Duration,

    /// At most this many SSH handshakes in flight at once.
    #[arg(long, env = "KUBE_SSH_TUNNEL_MAX_HANDSHAKES", default_value_t = 32)]
    pub max_handshakes: usize,

    /// How often the --nodes file and the --ssh-known-hosts files are checked for changes (SIGHUP
    /// reloads at once).
    #[arg(long, env = "KUBE_SSH_TUNNEL_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub reload_interval: Duration,
}

/// Flags of `run` for the CONNECT front and its destination policy.
#[derive(Args, Debug, Clone)]
pub struct FrontArgs {
    /// Unix socket for kube-apiserver's egress selector (HTTPConnect over uds); mode 0660.
    /// Served by default (at /run/kube-ssh-tunnel/proxy.sock) unless only --proxy-listen is given.
    #[arg(long, env = "KUBE_SSH_TUNNEL_PROXY_UDS")]
    pub proxy_uds: Option<std::path::PathBuf>,

    /// TCP address for CONNECT over TLS with client certificates (needs --tls-cert, --tls-key, --client-ca).
    #[arg(long, env = "KUBE_SSH_TUNNEL_PROXY_LISTEN")]
    pub proxy_listen: Option<std::net::SocketAddr>,

    /// Serving certificate (PEM chain) of the TLS listener.
    #[arg(long, env = "KUBE_SSH_TUNNEL_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of the TLS listener.
    #[arg(long, env = "KUBE_SSH_TUNNEL_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,

    /// CA (PEM) that client certificates of the TLS listener must chain to.
    #[arg(long, env = "KUBE_SSH_TUNNEL_CLIENT_CA")]
    pub client_ca: Option<std::path::PathBuf>,

    /// Service CIDR(s) whose ClusterIPs may be dialled (any port), e.g. 10.96.0.0/12.
    #[arg(long, env = "KUBE_SSH_TUNNEL_SERVICE_CIDR", value_delimiter = ',')]
    pub service_cidr: Vec<ipnet::IpNet>,

    /// Ports allowed on node addresses (default: the kubelet's 10250).
    #[arg(
        long,
        env = "KUBE_SSH_TUNNEL_NODE_PORT",
        value_delimiter = ',',
        default_value = "10250"
    )]
    pub node_port: Vec<u16>,

    /// Further CIDRs that may be dialled (any port).
    #[arg(long, env = "KUBE_SSH_TUNNEL_ALLOW_CIDR", value_delimiter = ',')]
    pub allow_cidr: Vec<ipnet::IpNet>,

    /// Ports allowed on a node's own loopback (e.g. 10248); none by default.
    #[arg(long, env = "KUBE_SSH_TUNNEL_LOOPBACK_PORT", value_delimiter = ',')]
    pub loopback_port: Vec<u16>,

    /// Refuse pod IPs (by default IPs inside a node's pod CIDRs may be dialled).
    #[arg(long, env = "KUBE_SSH_TUNNEL_DENY_POD_IPS")]
    pub deny_pod_ips: bool,

    /// A client must send its CONNECT request within this time.
    #[arg(long, env = "KUBE_SSH_TUNNEL_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Concurrent client connections; beyond it new CONNECTs get 503. On the TLS listener a
    /// connection counts only once its handshake is done.
    #[arg(long, env = "KUBE_SSH_TUNNEL_MAX_CONNECTIONS", default_value_t = 8192)]
    pub max_connections: usize,

    /// TLS handshakes pending at once on --proxy-listen; at the cap the oldest is dropped.
    #[arg(
        long,
        env = "KUBE_SSH_TUNNEL_MAX_TLS_HANDSHAKES",
        default_value_t = 1024
    )]
    pub max_tls_handshakes: usize,

    /// A client on --proxy-listen must finish its TLS handshake within this time.
    #[arg(long, env = "KUBE_SSH_TUNNEL_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,
}

fn parse_address_types(s: &str) -> Result<AddressTypes, String> {
    AddressTypes::parse(s).map_err(|e| e.to_string())
}

/// `--host-key-policy`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKeyChoice {
    /// known_hosts only.
    Strict,
    /// Trust on first use, recorded in --learned-known-hosts.
    AcceptNew,
}

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `--health-probe`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Open a channel to --health-port.
    Tcp,
    /// GET --health-url.
    Http,
    /// Keepalives only.
    None,
}
