//! Process limits a daemon with thousands of nodes needs: one socket per node connection,
//! one per CONNECT client and spill files for slow readers easily pass the usual soft limit
//! of 1,024 open files. At start `run` raises its soft RLIMIT_NOFILE to the hard limit (the
//! ceiling an administrator set), as most network daemons do; it never raises the hard one.

/// Raises the soft open-files limit to the hard limit; returns (before, after), or None when
/// the limits cannot be read.
pub fn raise_open_files() -> Option<(u64, u64)> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return None;
    }
    let before = l.rlim_cur;
    if l.rlim_cur < l.rlim_max {
        l.rlim_cur = l.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
            return Some((before, before));
        }
    }
    Some((before, l.rlim_cur))
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Set in the child this test runs itself as: the child lowers its own soft limit first,
    /// so that the test process (and the tests beside it) keep theirs.
    const CHILD: &str = "KUBE_SSH_TUNNEL_TEST_LIMITS_CHILD";

    fn limits() -> (u64, u64) {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct we pass.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
        (l.rlim_cur, l.rlim_max)
    }

    /// In the child: lowers the soft limit below the hard one, raises it, and prints what
    /// happened for the parent to check.
    fn child() {
        let (_, hard) = limits();
        assert!(hard > 16, "a hard limit of {hard} leaves nothing to raise");
        let low = 16.max(hard.min(1 << 20) / 4);
        let l = libc::rlimit {
            rlim_cur: low,
            rlim_max: hard,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) }, 0);
        assert_eq!(limits(), (low, hard), "the soft limit was lowered");
        let (before, after) = super::raise_open_files().expect("limits readable");
        let now = limits();
        let (again, same) = super::raise_open_files().unwrap();
        println!(
            "LIMITS low={low} hard={hard} before={before} after={after} now_soft={} now_hard={} again={again} same={same}",
            now.0, now.1
        );
    }

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        if std::env::var_os(CHILD).is_some() {
            return child();
        }
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "cli::limits::tests::the_soft_limit_ends_at_the_hard_limit",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run this test binary again as the child");
        let start = Instant::now();
        let status = loop {
            if let Some(st) = c.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = c.kill();
                let _ = c.wait();
                panic!("the child did not finish within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(status.success(), "the child failed: {stdout}{stderr}");
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("LIMITS ").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("the child ran no check: {stdout}{stderr}"));
        let v: std::collections::BTreeMap<&str, u64> = line
            .split_whitespace()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k, v.parse().unwrap())
            })
            .collect();
        let hard = v["hard"];
        assert!(v["low"] < hard, "{line}");
        assert_eq!(
            v["before"], v["low"],
            "before is the lowered soft limit: {line}"
        );
        assert_eq!(
            v["after"], hard,
            "the soft limit was raised to the hard one: {line}"
        );
        assert_eq!(
            (v["now_soft"], v["now_hard"]),
            (hard, hard),
            "the process's soft limit is the hard one, which stays: {line}"
        );
        assert_eq!((v["again"], v["same"]), (hard, hard), "idempotent: {line}");
    }
}
