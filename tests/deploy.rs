//! The kubeadm deployment (`deploy/kubeadm/`) stays right: every manifest deserializes into
//! the Kubernetes API types (k8s-openapi; the kubeconfig into kube-rs' type; the egress
//! selector and kubeadm configurations into strict types of their published schemas) and
//! re-serializes without losing a field, so an unknown or misspelt field fails; the CONNECT
//! socket path is the same in the Pod, its volume, kube-apiserver's mount and the egress
//! selector; and the binary accepts the Pod's flags.

mod support;

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

/// kubeadm.k8s.io/v1beta4 ClusterConfiguration, the part the fragment uses (strict).
#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ClusterConfiguration {
    api_version: String,
    kind: String,
    api_server: ApiServer,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApiServer {
    extra_args: Vec<Arg>,
    extra_volumes: Vec<HostPathMount>,
}

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

    let kubeadm = documents("kubeadm-config.yaml");
    let kubeadm = round_trip::<ClusterConfiguration>("kubeadm-config.yaml", &kubeadm[0]);
    assert_eq!(kubeadm.api_version, "kubeadm.k8s.io/v1beta4");

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
    let kubeadm: ClusterConfiguration =
        serde_json::from_value(documents("kubeadm-config.yaml").remove(0)).unwrap();
    assert!(
        kubeadm
            .api_server
            .extra_volumes
            .iter()
            .any(|v| v.host_path == socket_dir && v.mount_path == socket_dir && !v.read_only),
        "kube-apiserver mounts {socket_dir}"
    );
    let config_file = &kubeadm.api_server.extra_args[0];
    assert_eq!(config_file.name, "egress-selector-config-file");
    assert!(
        kubeadm
            .api_server
            .extra_volumes
            .iter()
            .any(|v| v.mount_path == config_file.value),
        "kube-apiserver mounts {}",
        config_file.value
    );
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
    // The probes reach the admin API where the flags put it.
    let admin = flag(&p, "admin-listen");
    let probe = spec.containers[0].liveness_probe.as_ref().unwrap();
    let get = probe.http_get.as_ref().unwrap();
    let port = match &get.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => p.to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(format!("{}:{port}", get.host.as_deref().unwrap()), admin);
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
