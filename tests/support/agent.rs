//! An ssh-agent of the test's own, for the tests that authenticate through an agent: started
//! on a socket in a temp dir, never the user's agent, and killed by PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::process::{run_ok, wait_until};

/// An ssh-agent of our own on a socket in `dir`; killed by PID when dropped.
pub struct Agent {
    pub socket: PathBuf,
    child: Child,
}

impl Agent {
    pub fn start(dir: &Path) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ssh-agent");
        assert!(
            wait_until(Duration::from_secs(10), || socket.exists()),
            "ssh-agent socket"
        );
        Agent { socket, child }
    }

    /// `ssh-add KEY` into this agent.
    pub fn add(&self, key: &Path) {
        run_ok(
            Command::new("ssh-add")
                .env("SSH_AUTH_SOCK", &self.socket)
                .arg(key),
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
