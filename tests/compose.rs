//! docker-compose.yml for real, all four services: the compose nodes (Debian + OpenSSH sshd +
//! the kubelet stub, built from tests/node/) and the daemon's own image (`tunnel`, built from
//! the Dockerfile's `prebuilt` target around the binary under test, on the same base image)
//! run under podman + podman-compose on their own network 198.18.0.0/24. The `tunnel`
//! container's `status` shows 3/3 ready and a throwaway container CONNECTs through the socket
//! volume; a second daemon on the host carries kubelet, pod and service traffic to the same
//! nodes. `down` leaves no container, network or volume. No image registry is used: the
//! base image comes from debootstrap (scripts/podman-base-image.sh, cached in podman's store).
//!
//! Needs root, podman, runc, debootstrap and podman-compose (`.ci/run` installs them). Where
//! they are missing or podman cannot run a container, the test FAILS with the reason; it
//! never passes without running the nodes.

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::{repo, run_bounded};

const PROJECT: &str = "kst-test";
/// The daemon image the compose file names.
const TUNNEL_IMAGE: &str = "localhost/kube-ssh-tunnel:latest";
/// Where the binary under test is staged for the image (the Dockerfile's BINARY; allowed by
/// .dockerignore).
const STAGED_BINARY: &str = "target/compose/kube-ssh-tunnel";
const BASE_IMAGE: &str = "localhost/debian:bookworm";
const NODES: [(&str, &str); 3] = [
    ("node-1", "198.18.0.11"),
    ("node-2", "198.18.0.12"),
    ("node-3", "198.18.0.13"),
];

/// podman-compose from PATH, or from the venv `.ci/run` makes.
fn podman_compose() -> Result<PathBuf, String> {
    let venv = PathBuf::from("/opt/kube-ssh-tunnel-ci/venv/bin/podman-compose");
    if venv.exists() {
        return Ok(venv);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("podman-compose"))
        .find(|p| p.exists())
        .ok_or_else(|| {
            "podman-compose not found (pip install podman-compose, or apt-get install podman-compose)".into()
        })
}

fn run_ok(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let what = format!("{cmd:?}");
    let out = run_bounded(cmd, b"", limit)?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The compose project, brought down (containers and network) when dropped.
struct Compose {
    bin: PathBuf,
    keys: PathBuf,
}

impl Compose {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.current_dir(repo())
            .env("CONTAINERS_CONF", repo().join("tests/node/containers.conf"))
            .env("KST_KEYS_DIR", &self.keys)
            .env("BASE_IMAGE", BASE_IMAGE)
            .env("KST_TUNNEL_TARGET", "prebuilt")
            .env("KST_TUNNEL_BINARY", STAGED_BINARY)
            .args(["-p", PROJECT, "-f", "docker-compose.yml"]);
        c
    }

    fn down(&self) {
        let _ = run_bounded(
            self.cmd().args(["down", "-v", "-t", "2"]),
            b"",
            Duration::from_secs(120),
        );
        // The daemon image is rebuilt around each binary under test: not kept.
        let _ = run_bounded(
            &mut podman(&["rmi", "-f", TUNNEL_IMAGE]),
            b"",
            Duration::from_secs(60),
        );
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        self.down();
    }
}

/// Everything the compose nodes need on this machine, or why it is missing.
fn preflight() -> Result<PathBuf, String> {
    if !support::is_root() {
        return Err("must run as root (rootful podman, container networks)".into());
    }
    for tool in ["podman", "runc", "debootstrap"] {
        let found = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .any(|d| d.join(tool).exists());
        if !found {
            return Err(format!(
                "{tool} is not installed (apt-get install -y podman runc debootstrap)"
            ));
        }
    }
    podman_compose()
}

fn podman(args: &[&str]) -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", repo().join("tests/node/containers.conf"))
        .args(args);
    c
}

#[test]
fn compose_nodes_carry_kubelet_pod_and_service_traffic() {
    let bin = preflight().unwrap_or_else(|why| panic!("the compose test cannot run here: {why}"));
    let t0 = Instant::now();
    // podman itself must work (the §2 settings in tests/node/containers.conf).
    run_ok(&mut podman(&["info"]), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("podman does not work here: {e}"));

    // The base image, without a registry (cached in podman's store across runs).
    run_ok(
        Command::new("sh")
            .arg(repo().join("scripts/podman-base-image.sh"))
            .arg(BASE_IMAGE)
            .env("CONTAINERS_CONF", repo().join("tests/node/containers.conf")),
        Duration::from_secs(600),
    )
    .unwrap_or_else(|e| panic!("cannot make the base image: {e}"));
    let t_base = t0.elapsed();

    // Keys: the tunnel's key pair for the nodes' authorized_keys, and hostkeys/ where each
    // node publishes its own host key.
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(keys.join("hostkeys")).unwrap();
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")).args([
            "keygen",
            "--out",
            keys.join("id_ed25519").to_str().unwrap(),
        ]),
        Duration::from_secs(30),
    )
    .unwrap();
    let compose = Compose {
        bin,
        keys: keys.clone(),
    };
    compose.down(); // leftovers of a killed run
    run_ok(
        compose.cmd().args(["build", "node-1"]),
        Duration::from_secs(600),
    )
    .unwrap_or_else(|e| panic!("cannot build the node image: {e}"));
    // The daemon image from the Dockerfile's `prebuilt` target, around the binary under test
    // (its debug info stripped: the image needs none).
    let staged = repo().join(STAGED_BINARY);
    std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&staged);
    let stripped = run_bounded(
        Command::new("objcopy").args([
            "--strip-debug",
            env!("CARGO_BIN_EXE_kube-ssh-tunnel"),
            staged.to_str().unwrap(),
        ]),
        b"",
        Duration::from_secs(60),
    )
    .is_ok_and(|o| o.status.success());
    if !stripped {
        std::fs::copy(env!("CARGO_BIN_EXE_kube-ssh-tunnel"), &staged).unwrap();
    }
    run_ok(
        compose.cmd().args(["build", "tunnel"]),
        Duration::from_secs(600),
    )
    .unwrap_or_else(|e| panic!("cannot build the daemon image (--target prebuilt): {e}"));
    let t_build = t0.elapsed();
    run_ok(compose.cmd().args(["up", "-d"]), Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("podman-compose up failed: {e}"));

    // Each node's host key, as the node published it.
    let published = support::wait_until(Duration::from_secs(60), || {
        NODES
            .iter()
            .all(|(n, _)| keys.join("hostkeys").join(n).exists())
    });
    let logs = || {
        NODES
            .iter()
            .map(|(n, _)| {
                let out = run_bounded(
                    &mut podman(&["logs", &format!("kst-{n}")]),
                    b"",
                    Duration::from_secs(20),
                );
                format!(
                    "--- {n}: {:?}",
                    out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        published,
        "the nodes did not publish their host keys:\n{}",
        logs()
    );
    let known_hosts = dir.path().join("known_hosts");
    let mut kh = String::new();
    for (n, addr) in NODES {
        let line = std::fs::read_to_string(keys.join("hostkeys").join(n)).unwrap();
        assert!(line.starts_with(&format!("{addr} ssh-ed25519 ")), "{line}");
        kh.push_str(&line);
    }
    std::fs::write(&known_hosts, kh).unwrap();

    // The daemon on the host, against the nodes' addresses on the compose network.
    let proxy = dir.path().join("proxy.sock");
    let admin = dir.path().join("admin.sock");
    let args: Vec<String> = [
        "run",
        "--ssh-tunnel",
        "--ssh-user",
        "root",
        "--ssh-keyfile",
        keys.join("id_ed25519").to_str().unwrap(),
        "--ssh-known-hosts",
        known_hosts.to_str().unwrap(),
        "--nodes",
        repo().join("examples/compose-nodes.toml").to_str().unwrap(),
        "--service-cidr",
        "10.96.0.0/12",
        "--proxy-uds",
        proxy.to_str().unwrap(),
        "--admin-uds",
        admin.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut d = Daemon::start(&args);
    let status = || {
        run_bounded(
            Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")).args([
                "status",
                "--admin-uds",
                admin.to_str().unwrap(),
            ]),
            b"",
            Duration::from_secs(60),
        )
        .unwrap()
    };
    let ready = support::wait_until(Duration::from_secs(60), || {
        status().status.code() == Some(0)
    });
    let st = status();
    let table = String::from_utf8_lossy(&st.stdout).into_owned();
    assert!(
        ready,
        "not every compose node is ready:\n{table}\n{}\n{}",
        d.log(),
        logs()
    );
    assert!(table.contains("3/3 nodes ready"), "{table}");
    for (n, addr) in NODES {
        let row = table.lines().find(|l| l.starts_with(n)).unwrap_or_default();
        assert!(
            row.contains(addr) && row.contains(" ready "),
            "{row}\n{table}"
        );
    }

    // kubelet (node address), pod (node-3's pod CIDR), service (any node): each answered by
    // the stub that really sits there.
    let whoami = |target: &str| -> String {
        let (mut s, head) = support::connect_uds(&proxy, target);
        assert!(head.starts_with("HTTP/1.1 200"), "CONNECT {target}: {head}");
        s.write_all(b"GET /whoami HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    assert_eq!(whoami("198.18.0.12:10250"), "node-2 198.18.0.12:10250");
    assert_eq!(whoami("node-1:10250"), "node-1 198.18.0.11:10250");
    assert_eq!(whoami("10.244.3.10:8080"), "node-3 10.244.3.10:8080");
    let svc = whoami("10.96.0.10:8080");
    assert!(
        NODES
            .iter()
            .any(|(n, _)| svc == format!("{n} 10.96.0.10:8080")),
        "service answered {svc:?}"
    );

    assert_eq!(d.stop(libc::SIGTERM), Some(0), "{}", d.log());

    // The compose `tunnel` (the daemon's own image) serves the same nodes: its status says
    // 3/3 ready.
    let tunnel_status = || {
        run_bounded(
            compose.cmd().args([
                "exec",
                "tunnel",
                "kube-ssh-tunnel",
                "status",
                "--admin-uds",
                "/run/kube-ssh-tunnel/admin.sock",
            ]),
            b"",
            Duration::from_secs(60),
        )
        .unwrap()
    };
    let tunnel_logs = || {
        run_bounded(
            &mut podman(&["logs", "kst-tunnel"]),
            b"",
            Duration::from_secs(20),
        )
        .map(|o| o.stderr_text())
        .unwrap_or_default()
    };
    let ready = support::wait_until(Duration::from_secs(90), || tunnel_status().code() == 0);
    let st = tunnel_status();
    assert!(
        ready && st.stdout_text().contains("3/3 nodes ready"),
        "the compose tunnel is not ready:\n{}\n{}\n{}",
        st.stdout_text(),
        st.stderr_text(),
        tunnel_logs()
    );

    // A throwaway container on the same network CONNECTs through the socket volume.
    let volume = format!("{PROJECT}_tunnel-sockets");
    let network = format!("{PROJECT}_nodes");
    let through_volume = run_bounded(
        &mut podman(&[
            "run",
            "--rm",
            "-i",
            "--network",
            &network,
            "-v",
            &format!("{volume}:/run/kube-ssh-tunnel"),
            TUNNEL_IMAGE,
            "dial",
            "--proxy-uds",
            "/run/kube-ssh-tunnel/proxy.sock",
            "198.18.0.13:10250",
        ]),
        b"GET /whoami HTTP/1.0\r\n\r\n",
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(
        through_volume
            .stdout_text()
            .contains("node-3 198.18.0.13:10250"),
        "CONNECT through the socket volume: {}\n{}\n{}",
        through_volume.stdout_text(),
        through_volume.stderr_text(),
        tunnel_logs()
    );

    // down: nothing of the project is left (containers, network, volume).
    drop(compose);
    let left = run_ok(
        &mut podman(&[
            "ps",
            "-a",
            "--filter",
            "name=kst-",
            "--format",
            "{{.Names}}",
        ]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(left.trim().is_empty(), "containers left behind: {left}");
    let volumes = run_ok(
        &mut podman(&["volume", "ls", "--format", "{{.Name}}"]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        !volumes.lines().any(|v| v == volume),
        "volume left behind: {volume}"
    );
    let networks = run_ok(
        &mut podman(&["network", "ls", "--format", "{{.Name}}"]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        !networks.lines().any(|n| n == network),
        "network left behind: {network}"
    );
    eprintln!(
        "compose test: base image ready after {:.1} s, node image after {:.1} s, all done in {:.1} s",
        t_base.as_secs_f64(),
        t_build.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
