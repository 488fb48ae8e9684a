//! The kubeadm deployment (`deploy/kubeadm/`) stays right: every manifest deserializes into
//! the Kubernetes API types (k8s-openapi; the kubeconfig into kube-rs' type; the egress
//! selector and both kubeadm fragments, v1beta3 for kubeadm 1.30 and v1beta4 for 1.31 and
//! later, into strict types of their published schemas) and re-serializes without losing a
//! field, so an unknown or misspelt field fails; the CONNECT socket path is the same in the
//! Pod, its volume, kube-apiserver's mount and the egress selector; the Pod's admin socket is
//! the host CLI's default and its TCP listener is where its probes look; the watch's
//! kubeconfig does not target 127.0.0.1 (not in kubeadm's serving certificate); and the
//! binary accepts the Pod's flags.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn dir() -> PathBuf {
    support::repo().join("deploy/kubeadm")
}

/// Every YAML document of `file`, as JSON values.
fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join(file)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml_ng::Value = serde_yaml_ng::Value::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .collect()
}

/// Deserializes `raw` into `T` and checks that serializing it again gives `raw` back: a field
/// `T` does not know (misspelt, or at the wrong level) would be dropped and fail here.
fn round_trip<T: DeserializeOwned + serde::Serialize>(what: &str, raw: &Value) -> T {
    try_round_trip(what, raw).unwrap_or_else(|e| panic!("{e}"))
}

/// `round_trip`, with the failure as a message: it does not deserialize, or which fields
/// (dotted paths) the round trip lost or changed.
fn try_round_trip<T: DeserializeOwned + serde::Serialize>(
    what: &str,
    raw: &Value,
) -> Result<T, String> {
    let typed: T = serde_json::from_value(raw.clone())
        .map_err(|e| format!("{what}: does not deserialize: {e}"))?;
    let again = serde_json::to_value(&typed).unwrap();
    let mut lost = Vec::new();
    differences(raw, &again, "", &mut lost);
    if lost.is_empty() && &again == raw {
        Ok(typed)
    } else {
        Err(format!(
            "{what}: lost in the round trip (unknown or misspelt?): {}",
            lost.join(", ")
        ))
    }
}

/// The paths (`spec.hostNetwork`) where `again` differs from `raw`.
fn differences(raw: &Value, again: &Value, at: &str, out: &mut Vec<String>) {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match (raw, again) {
        (Value::Object(r), Value::Object(a)) => {
            for (k, v) in r {
                match a.get(k) {
                    Some(w) => differences(v, w, &join(k), out),
                    None => out.push(join(k)),
                }
            }
            for k in a.keys().filter(|k| !r.contains_key(*k)) {
                out.push(format!("{} (added)", join(k)));
            }
        }
        (Value::Array(r), Value::Array(a)) if r.len() == a.len() => {
            for (i, (v, w)) in r.iter().zip(a).enumerate() {
                differences(v, w, &join(&i.to_string()), out);
            }
        }
        _ if raw != again => out.push(if at.is_empty() {
            "(the whole document)".into()
        } else {
            at.to_string()
        }),
        _ => {}
    }
}

/// apiserver.k8s.io/v1beta1 EgressSelectorConfiguration, as published (strict).
#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EgressSelectorConfiguration {
    api_version: String,
    kind: String,
    egress_selections: Vec<EgressSelection>,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EgressSelection {
    name: String,
    connection: Connection,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Connection {
    proxy_protocol: String,
    transport: Transport,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Transport {
    uds: Uds,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Uds {
    uds_name: String,
}

/// kubeadm's ClusterConfiguration, the part the fragments use (strict). `A` is the shape of
/// `apiServer.extraArgs`: a map in kubeadm.k8s.io/v1beta3, a list of `Arg` in v1beta4.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ClusterConfiguration<A> {
    api_version: String,
    kind: String,
    api_server: ApiServer<A>,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApiServer<A> {
    extra_args: A,
    extra_volumes: Vec<HostPathMount>,
}

/// kubeadm.k8s.io/v1beta3 (kubeadm 1.30): `extraArgs` is a map.
type V1beta3 = ClusterConfiguration<BTreeMap<String, String>>;
/// kubeadm.k8s.io/v1beta4 (kubeadm 1.31 and later): `extraArgs` is a list of name/value.
type V1beta4 = ClusterConfiguration<Vec<Arg>>;

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Arg {
    name: String,
    value: String,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HostPathMount {
    name: String,
    host_path: String,
    mount_path: String,
    read_only: bool,
    path_type: String,
}

fn pod() -> Pod {
    let docs = documents("kube-ssh-tunnel.yaml");
    assert_eq!(docs.len(), 1);
    round_trip::<Pod>("kube-ssh-tunnel.yaml", &docs[0])
}

fn fragment_v1beta3() -> V1beta3 {
    let docs = documents("kubeadm-config-v1beta3.yaml");
    assert_eq!(docs.len(), 1);
    round_trip::<V1beta3>("kubeadm-config-v1beta3.yaml", &docs[0])
}

fn fragment_v1beta4() -> V1beta4 {
    let docs = documents("kubeadm-config-v1beta4.yaml");
    assert_eq!(docs.len(), 1);
    round_trip::<V1beta4>("kubeadm-config-v1beta4.yaml", &docs[0])
}

/// The value of `--flag=VALUE` in the Pod's container args.
fn flag(pod: &Pod, name: &str) -> String {
    let args = pod.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("--{name}=")).map(String::from))
        .unwrap_or_else(|| panic!("the Pod has no --{name}=…"))
}

#[test]
fn every_manifest_round_trips_through_the_kubernetes_types() {
    let p = pod();
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(p.metadata.namespace.as_deref(), Some("kube-system"));

    let rbac = documents("rbac.yaml");
    assert_eq!(rbac.len(), 2);
    let role = round_trip::<ClusterRole>("rbac.yaml ClusterRole", &rbac[0]);
    let binding = round_trip::<ClusterRoleBinding>("rbac.yaml ClusterRoleBinding", &rbac[1]);
    let rule = &role.rules.as_ref().unwrap()[0];
    assert_eq!(rule.resources.as_deref(), Some(&["nodes".to_string()][..]));
    assert_eq!(
        rule.verbs,
        ["get", "list", "watch"],
        "read-only, nodes only"
    );
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());

    let egress = documents("egress-selector-configuration.yaml");
    let egress =
        round_trip::<EgressSelectorConfiguration>("egress-selector-configuration.yaml", &egress[0]);
    assert_eq!(
        (egress.api_version.as_str(), egress.kind.as_str()),
        ("apiserver.k8s.io/v1beta1", "EgressSelectorConfiguration")
    );
    assert_eq!(egress.egress_selections[0].name, "cluster");
    assert_eq!(
        egress.egress_selections[0].connection.proxy_protocol,
        "HTTPConnect"
    );

    let (v3, v4) = (fragment_v1beta3(), fragment_v1beta4());
    assert_eq!(
        (v3.api_version.as_str(), v3.kind.as_str()),
        ("kubeadm.k8s.io/v1beta3", "ClusterConfiguration")
    );
    assert_eq!(
        (v4.api_version.as_str(), v4.kind.as_str()),
        ("kubeadm.k8s.io/v1beta4", "ClusterConfiguration")
    );

    let kubeconfig = documents("kube-ssh-tunnel.conf");
    let kc: kube::config::Kubeconfig = serde_json::from_value(kubeconfig[0].clone()).unwrap();
    assert_eq!(
        kc.current_context.as_deref(),
        Some("system:kube-ssh-tunnel@kubernetes")
    );
    assert_eq!(
        kc.auth_infos[0].name, "system:kube-ssh-tunnel",
        "the user rbac.yaml binds"
    );
    assert_eq!(
        binding.subjects.as_ref().unwrap()[0].name,
        kc.auth_infos[0].name
    );
}

#[test]
fn a_misspelt_field_fails_the_round_trip() {
    let mut raw = documents("kube-ssh-tunnel.yaml").remove(0);
    raw["spec"]["hostNetwrok"] = Value::Bool(true);
    let err = try_round_trip::<Pod>("misspelt", &raw).expect_err("an unknown field must not pass");
    assert_eq!(
        err, "misspelt: lost in the round trip (unknown or misspelt?): spec.hostNetwrok",
        "the round trip names the misspelt field, and only it"
    );
    // A strict type (the published schemas' `deny_unknown_fields`) refuses it outright.
    let mut egress = documents("egress-selector-configuration.yaml").remove(0);
    egress["egressSelections"][0]["conection"] = Value::Bool(true);
    let err = try_round_trip::<EgressSelectorConfiguration>("misspelt egress", &egress)
        .expect_err("an unknown field must not pass");
    assert!(
        err.starts_with("misspelt egress: does not deserialize: unknown field `conection`"),
        "{err}"
    );
    // The two kubeadm versions' shapes of extraArgs are not interchangeable: each fragment
    // fails the other version's type.
    let v3 = documents("kubeadm-config-v1beta3.yaml").remove(0);
    let v4 = documents("kubeadm-config-v1beta4.yaml").remove(0);
    assert!(try_round_trip::<V1beta4>("v1beta3 as v1beta4", &v3).is_err());
    assert!(try_round_trip::<V1beta3>("v1beta4 as v1beta3", &v4).is_err());
    let mut typo = v4;
    typo["apiServer"]["extraVolumes"][0]["hostpath"] = Value::Bool(true);
    let err = try_round_trip::<V1beta4>("misspelt v1beta4", &typo).expect_err("unknown field");
    assert!(err.contains("unknown field `hostpath`"), "{err}");
}

#[test]
fn the_socket_path_is_the_same_everywhere() {
    let p = pod();
    let socket = flag(&p, "proxy-uds");
    let socket_dir = Path::new(&socket)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let spec = p.spec.as_ref().unwrap();
    // The Pod's volume and mount for that directory.
    let mount = spec.containers[0]
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == socket_dir)
        .expect("the Pod mounts the socket's directory");
    let volume = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert_eq!(volume.host_path.as_ref().unwrap().path, socket_dir);
    // The egress selector names the same socket.
    let egress: EgressSelectorConfiguration =
        serde_json::from_value(documents("egress-selector-configuration.yaml").remove(0)).unwrap();
    assert_eq!(
        egress.egress_selections[0]
            .connection
            .transport
            .uds
            .uds_name,
        socket
    );
    // kube-apiserver mounts the same host directory at the same path, and reads the egress
    // selector from where the file says it goes.
    // Both kubeadm fragments (the same flag and mounts).
    for (version, args, volumes) in [
        (
            "v1beta3",
            fragment_v1beta3().api_server.extra_args,
            fragment_v1beta3().api_server.extra_volumes,
        ),
        (
            "v1beta4",
            fragment_v1beta4()
                .api_server
                .extra_args
                .into_iter()
                .map(|a| (a.name, a.value))
                .collect(),
            fragment_v1beta4().api_server.extra_volumes,
        ),
    ] {
        assert!(
            volumes
                .iter()
                .any(|v| v.host_path == socket_dir && v.mount_path == socket_dir && !v.read_only),
            "{version}: kube-apiserver mounts {socket_dir}"
        );
        let config_file = args
            .get("egress-selector-config-file")
            .unwrap_or_else(|| panic!("{version}: --egress-selector-config-file"));
        assert_eq!(
            config_file, "/etc/kubernetes/egress-selector-configuration.yaml",
            "{version}: where the README puts the egress selector"
        );
        assert!(
            volumes.iter().any(|v| &v.mount_path == config_file
                && &v.host_path == config_file
                && v.read_only
                && v.path_type == "File"),
            "{version}: kube-apiserver mounts {config_file}"
        );
        assert_eq!(args.len(), 1, "{version}: one flag");
        assert_eq!(volumes.len(), 2, "{version}: two mounts");
    }
    // The kubeconfig and the SSH files the flags name are mounted.
    for path in [
        flag(&p, "kubeconfig"),
        flag(&p, "ssh-keyfile"),
        flag(&p, "ssh-known-hosts"),
    ] {
        assert!(
            spec.containers[0]
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| Path::new(&path).starts_with(&m.mount_path) && m.read_only == Some(true)),
            "{path} is mounted read-only"
        );
    }
}

#[test]
fn the_binary_accepts_the_pods_flags() {
    let p = pod();
    let args = p.spec.as_ref().unwrap().containers[0].args.clone().unwrap();
    // Run with the Pod's flags: clap accepts every one of them (an unknown or malformed flag
    // is a clap error), and the daemon stops at the first file it needs, which exists only on
    // a control-plane node.
    let out = support::run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel"))
            .args(&args)
            .env_remove("RUST_LOG"),
        b"",
        Duration::from_secs(30),
    )
    .expect("the binary ends in time");
    let err = out.stderr_text();
    assert_eq!(out.code(), 2, "{err}");
    assert!(
        err.contains("/etc/kube-ssh-tunnel/id_ed25519"),
        "stopped at the key file, after parsing every flag: {err}"
    );
}

/// The CLI's default for `--admin-uds`, as `status --help` shows it.
fn cli_default_admin_socket() -> String {
    let out = support::run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel"))
            .args(["status", "--help"])
            .env_remove("KUBE_SSH_TUNNEL_ADMIN_UDS"),
        b"",
        Duration::from_secs(30),
    )
    .expect("the binary ends in time");
    let help = out.stdout_text();
    let after = &help[help.find("--admin-uds").expect("status has --admin-uds")..];
    let default = &after[after.find("[default: ").expect("--admin-uds has a default") + 10..];
    default[..default.find(']').unwrap()].to_string()
}

#[test]
fn the_pods_admin_socket_is_the_clis_default_and_its_probes_use_the_tcp_listener() {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let p = pod();
    let spec = p.spec.as_ref().unwrap();
    let c = &spec.containers[0];

    // The admin socket: the path `status`, `drain` and `reconnect` use by default on the host,
    // in a hostPath mounted at the same path (so the host sees the same file), beside the
    // CONNECT socket.
    let socket = flag(&p, "admin-uds");
    assert_eq!(socket, cli_default_admin_socket());
    let socket_dir = Path::new(&socket).parent().unwrap();
    assert_eq!(
        Path::new(&flag(&p, "proxy-uds")).parent().unwrap(),
        socket_dir,
        "beside the CONNECT socket"
    );
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| Path::new(&m.mount_path) == socket_dir)
        .expect("the Pod mounts the admin socket's directory");
    assert_ne!(mount.read_only, Some(true), "the daemon creates the socket");
    let volume = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert_eq!(
        Path::new(&volume.host_path.as_ref().unwrap().path),
        socket_dir,
        "the same path on the host"
    );

    // The TCP listener: loopback, and both probes GET it on their own paths.
    let listen: std::net::SocketAddr = flag(&p, "admin-listen").parse().unwrap();
    assert!(listen.ip().is_loopback(), "{listen}");
    for (probe, path) in [
        (c.liveness_probe.as_ref(), "/healthz"),
        (c.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an httpGet probe on {path}"));
        let port = match &get.port {
            IntOrString::Int(p) => *p,
            other => panic!("{other:?}"),
        };
        let host: std::net::IpAddr = get.host.as_deref().unwrap().parse().unwrap();
        assert_eq!(std::net::SocketAddr::new(host, port as u16), listen);
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.scheme.as_deref().unwrap_or("HTTP"), "HTTP");
    }
    // Probes and scrapes need no token: the Pod gives none (so reads are open on loopback
    // and drain/reconnect are refused on TCP).
    let args = c.args.clone().unwrap();
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--admin-token-for-reads")
                || a.starts_with("--admin-allow-remote")),
        "{args:?}"
    );
}

#[test]
fn the_watch_kubeconfig_targets_the_advertise_address_not_loopback() {
    let docs = documents("kube-ssh-tunnel.conf");
    let kc: kube::config::Kubeconfig = serde_json::from_value(docs[0].clone()).unwrap();
    let context = kc
        .contexts
        .iter()
        .find(|c| Some(&c.name) == kc.current_context.as_ref())
        .and_then(|c| c.context.as_ref())
        .expect("the current context");
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .expect("its cluster");
    let server = cluster.server.as_deref().unwrap();
    let authority = server.strip_prefix("https://").expect("https");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    assert!(
        !loopback,
        "{server}: kubeadm's serving certificate has no loopback SAN"
    );
    assert!(
        host.contains("ADVERTISE-ADDRESS"),
        "{server}: a placeholder that says what goes there"
    );
    // The file says how to fill it in, with the annotation kubeadm writes.
    let text = std::fs::read_to_string(dir().join("kube-ssh-tunnel.conf")).unwrap();
    assert!(
        text.contains("kube-apiserver.advertise-address.endpoint")
            && text.contains("kubectl config set-cluster"),
        "{text}"
    );
}

#[test]
fn with_its_files_present_the_pod_passes_every_flag_check() {
    // The Pod's args with its host files made up in a temporary directory: the daemon checks
    // every flag (the key, the admin listener on loopback, the service CIDR, …) and stops
    // at the kubeconfig, whose placeholders are not a certificate.
    let tmp = tempfile::tempdir().unwrap();
    let p = pod();
    let args = p.spec.as_ref().unwrap().containers[0].args.clone().unwrap();
    let out = support::run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel"))
            .args(["keygen", "--out"])
            .arg(tmp.path().join("id_ed25519")),
        b"",
        Duration::from_secs(30),
    )
    .expect("keygen ends in time");
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    std::fs::write(tmp.path().join("known_hosts"), "").unwrap();
    std::fs::copy(
        dir().join("kube-ssh-tunnel.conf"),
        tmp.path().join("kube-ssh-tunnel.conf"),
    )
    .unwrap();
    let moved: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace(
                "/etc/kube-ssh-tunnel/",
                &format!("{}/", tmp.path().display()),
            )
            .replace("/etc/kubernetes/", &format!("{}/", tmp.path().display()))
            .replace(
                "/run/kube-ssh-tunnel/",
                &format!("{}/", tmp.path().display()),
            )
        })
        .collect();
    assert!(
        !moved
            .iter()
            .any(|a| a.contains("=/etc/") || a.contains("=/run/")),
        "every file of the Pod is moved: {moved:?}"
    );
    let out = support::run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel"))
            .args(&moved)
            .env_remove("RUST_LOG"),
        b"",
        Duration::from_secs(30),
    )
    .expect("the binary ends in time");
    let err = out.stderr_text();
    assert_eq!(out.code(), 2, "{err}");
    assert!(
        err.contains("cannot read kubeconfig") && err.contains("kube-ssh-tunnel.conf"),
        "stopped at the kubeconfig, after every flag check: {err}"
    );
    assert!(
        !tmp.path().join("admin.sock").exists() && !tmp.path().join("proxy.sock").exists(),
        "nothing was left bound"
    );
}
