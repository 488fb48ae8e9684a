//! Running processes and reading `/proc`, for everything else in the harness.
//!
//! Tests start the binary and tools (ssh-keygen, ip, curl, python3); a hung child must fail its
//! test instead of hanging the run, so every one goes through `run_bounded` (or `wait_bounded`
//! when a test sets up the child's pipes itself), which kills the child at a time limit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a tool (ssh-keygen, ip, curl, python3, …) may run before it is killed.
pub const TOOL_LIMIT: Duration = Duration::from_secs(60);

/// The repository's root (where `Cargo.toml`, `tests/` and the README are).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What a command run by `run_bounded` did: its exit status and output (the fields of
/// `std::process::Output`), and whether all of its stdin could be written.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The write of `stdin` to the child (an error when it closed stdin before taking it all).
    pub fed: std::io::Result<()>,
}

impl Ran {
    /// The exit code, or -1 when a signal ended the command.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// stdout as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl std::fmt::Debug for Ran {
    /// As `std::process::Output` prints itself, plus a failed stdin write.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let output = std::process::Output {
            status: self.status,
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
        };
        write!(f, "{output:?}")?;
        if let Err(e) = &self.fed {
            write!(f, " (writing stdin failed: {e})")?;
        }
        Ok(())
    }
}

/// Waits for `child` to exit, polling every 20 ms; kills (and reaps) it when it runs past
/// `limit`. Its exit status, or `None` when it was killed for running too long.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> std::io::Result<Option<ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` with `stdin` fed to it, killing it (by PID) when it runs past `limit`; its
/// output, or why there is none.
pub fn run_bounded(cmd: &mut Command, stdin: &[u8], limit: Duration) -> Result<Ran, String> {
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
    let feeder = std::thread::spawn(move || input.write_all(&data));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let Some(status) = wait_bounded(&mut child, limit).map_err(|e| e.to_string())? else {
        return Err(format!("{what} did not finish within {limit:?}"));
    };
    let fed = feeder
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the stdin writer panicked")));
    Ok(Ran {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        fed,
    })
}

/// Runs a command (at most `TOOL_LIMIT`) and returns its stdout (panics on failure).
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run_bounded(cmd, b"", TOOL_LIMIT).unwrap_or_else(|e| panic!("{e}"));
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

/// PIDs of the direct children of `pid` (from /proc). Best effort, for cleanup: an empty list
/// when /proc cannot be read (use `try_children_of` to count).
pub fn children_of(pid: u32) -> Vec<u32> {
    try_children_of(pid).unwrap_or_default()
}

/// PIDs of the direct children of `pid` (from /proc), or why /proc could not be listed.
/// Processes that end while /proc is being read are left out.
pub fn try_children_of(pid: u32) -> std::io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // A process that ended since the listing has no stat any more: not a child now.
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
    Ok(out)
}

/// Resident set size of this process in bytes (from /proc/self/status).
pub fn rss_bytes() -> u64 {
    rss_bytes_of("self")
}

/// Resident memory of process `pid` ("self" for this one), in bytes. Panics, naming the
/// process, when it cannot be read (gone, or a zombie without memory): a 0 would pass every
/// "at most" check.
pub fn rss_bytes_of(pid: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the RSS of process {pid}: {path}: {e}"));
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap_or_else(|| {
            panic!("cannot read the RSS of process {pid}: {path} has no VmRSS line (exited?)")
        });
    let kb: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("cannot read the RSS of process {pid}: VmRSS {line:?}: {e}"));
    kb * 1024
}

/// Open file descriptors of this process. Panics when /proc/self/fd cannot be read (a 0
/// would pass every "no more than before" check).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap_or_else(|e| panic!("cannot count open file descriptors: /proc/self/fd: {e}"))
        .count()
}

/// CPU time (user + system) process `pid` has used, in seconds. Panics, naming the process,
/// when /proc/PID/stat cannot be read or parsed.
pub fn cpu_seconds_of(pid: u32) -> f64 {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the CPU time of process {pid}: {path}: {e}"));
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("cannot read the CPU time of process {pid}: {path}: {stat:?}"));
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 0 here, utime 11 and stime 12 (proc(5) fields 14, 15).
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| {
                panic!("cannot read the CPU time of process {pid}: {path}: {stat:?}")
            })
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Raises this process's soft open-files limit to the hard one (many nodes need many
/// sockets; children inherit it).
pub fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}
