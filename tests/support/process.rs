//! Running processes and reading `/proc`, for everything else in the harness.
//!
//! Tests start the binary and tools (ssh-keygen, ip, curl, python3); a hung child must fail its
//! test instead of hanging the run, so `run_bounded` kills the child at a time limit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The repository's root (where `Cargo.toml`, `tests/` and the README are).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` with `stdin` fed to it, killing it (by PID) when it runs past `limit`; its
/// output, or why there is none.
pub fn run_bounded(
    cmd: &mut Command,
    stdin: &[u8],
    limit: Duration,
) -> Result<std::process::Output, String> {
    use std::io::{Read, Write};
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    // Threads feed and drain the pipes so that a chatty command cannot block on a full pipe.
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not finish within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = feeder.join();
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs a command (at most a minute) and returns its stdout (panics on failure).
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run_bounded(cmd, b"", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Runs `ssh-keygen -q -N '' -t TYPE [-b BITS] -f PATH -C COMMENT`.
pub fn keygen(path: &Path, kind: &str, bits: Option<u32>) {
    let mut c = Command::new("ssh-keygen");
    c.args([
        "-q",
        "-N",
        "",
        "-t",
        kind,
        "-C",
        "kube-ssh-tunnel-test",
        "-f",
    ])
    .arg(path);
    if let Some(b) = bits {
        c.args(["-b", &b.to_string()]);
    }
    run_ok(&mut c);
}

/// `SHA256:…` fingerprint of an OpenSSH public key line.
pub fn fingerprint(pub_line: &str) -> String {
    let key: russh::keys::PublicKey = pub_line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .parse()
        .unwrap();
    key.fingerprint(russh::keys::HashAlg::Sha256).to_string()
}

/// The user the tests run as (`id -un`).
pub fn current_user() -> String {
    run_ok(Command::new("id").arg("-un")).trim().to_string()
}

/// True when the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Sends `sig` to `pid` (ignoring a process that is already gone).
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill with a pid we started; an error only means it is gone.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// PIDs of the direct children of `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..." — comm may contain spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let _state = f.next();
        if f.next().and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Resident set size of this process in bytes (from /proc/self/status).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}
