//! A `kube-ssh-tunnel run` (or `demo`) process under test: started with arguments, its stderr
//! and stdout collected as they come, stopped by PID (also when dropped); and
//! `connect_uds`, which speaks to its front as kube-apiserver does.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A `run` daemon under test, with its log collected as it comes.
pub struct Daemon {
    pub child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    out: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Appends everything `from` produces to `sink`, in a thread.
fn collect(
    mut from: impl Read + Send + 'static,
    sink: std::sync::Arc<std::sync::Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

impl Daemon {
    pub fn start(args: &[String]) -> Daemon {
        Self::start_program(Path::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")), args)
    }

    /// Starts `program` (the daemon, or a stand-in that takes its flags) with `args`.
    pub fn start_program(program: &Path, args: &[String]) -> Daemon {
        // `run` always serves an admin socket: a test's must be its own, never the system
        // default that another test (or a real daemon) may hold. (A `--config` file may name
        // it instead.)
        assert!(
            args.first().map(String::as_str) != Some("run")
                || args
                    .iter()
                    .any(|a| a.starts_with("--admin-uds") || a == "--config"),
            "a test daemon needs its own --admin-uds: {args:?}"
        );
        let mut child = Command::new(program)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let reader = collect(child.stderr.take().unwrap(), log.clone());
        collect(child.stdout.take().unwrap(), out.clone());
        Daemon {
            child,
            log,
            out,
            reader: Some(reader),
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn wait_log(&self, needle: &str, count: usize, limit: Duration) -> bool {
        super::process::wait_until(limit, || self.log().matches(needle).count() >= count)
    }

    /// Sends `sig` and waits (bounded) for the exit code.
    pub fn stop(&mut self, sig: i32) -> Option<i32> {
        super::process::signal(self.child.id(), sig);
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return st.code();
            }
            if start.elapsed() > Duration::from_secs(40) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends kube-apiserver's CONNECT request on a Unix socket (blocking) and returns the stream
/// and the response head (read byte by byte, never past its end).
pub fn connect_uds(sock: &Path, target: &str) -> (std::os::unix::net::UnixStream, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
        head.push(b[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}
