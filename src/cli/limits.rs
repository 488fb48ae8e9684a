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
    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let (before, after) = super::raise_open_files().expect("limits readable");
        assert!(after >= before);
        let (again, same) = super::raise_open_files().unwrap();
        assert_eq!((again, same), (after, after), "idempotent");
    }
}
