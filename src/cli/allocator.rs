//! glibc malloc settings for the daemon's byte path.
//!
//! Why this exists: russh decodes every SSH data packet into a new buffer of up to 32 KiB.
//! The stream frees it once the client has the bytes. With glibc's defaults, a freed top of
//! the heap larger than 128 KiB goes back to the kernel. The next packets then fault the
//! same pages in again, each one zero-filled. `perf stat` on a 1 GiB download counted 10,000
//! to 45,000 page faults in the daemon (`docs/testing.md` has the recipe). With a trim
//! threshold of 32 MiB and the mmap threshold fixed at 4 MiB, it counted 0 to about 1,500.
//!
//! The cost: each malloc arena keeps up to 32 MiB of freed memory at its top after a burst.
//! glibc makes an arena for each thread that allocates at the same time as others, up to 8
//! per core. Setting either threshold also stops glibc from moving them on its own. Other
//! allocators (musl) are left alone, and so is glibc's malloc when the operator tunes it:
//! `GLIBC_TUNABLES` with a `glibc.malloc.` setting, or any `MALLOC_` variable.

/// Freed memory at the top of an arena kept for reuse, up to this much.
#[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
const TRIM_THRESHOLD: i32 = 32 << 20;
/// Allocations at least this large use mmap.
#[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
const MMAP_THRESHOLD: i32 = 4 << 20;

/// Whether the environment tunes glibc's malloc itself.
fn operator_tunes_malloc(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> bool {
    vars.into_iter().any(|(k, v)| {
        let k = k.to_string_lossy();
        (k == "GLIBC_TUNABLES" && v.to_string_lossy().contains("glibc.malloc."))
            || k.starts_with("MALLOC_")
    })
}

/// Applies the settings above; false where it did not (the operator tunes malloc, the
/// allocator refused one, or it is not 64-bit glibc's).
///
/// Call it before any other thread starts: glibc documents `mallopt` as unsafe to call
/// while other threads run.
pub fn tune() -> bool {
    if operator_tunes_malloc(std::env::vars_os()) {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
    {
        // SAFETY: called before any other thread starts (see above); mallopt only sets the
        // allocator's parameters.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_operators_own_malloc_settings_win() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect::<Vec<_>>()
                .into_iter()
        };
        assert!(super::operator_tunes_malloc(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.trim_threshold=131072"
        )])));
        assert!(super::operator_tunes_malloc(env(&[(
            "MALLOC_TRIM_THRESHOLD_",
            "131072"
        )])));
        assert!(super::operator_tunes_malloc(env(&[(
            "MALLOC_ARENA_MAX",
            "2"
        )])));
        assert!(!super::operator_tunes_malloc(env(&[(
            "GLIBC_TUNABLES",
            "glibc.rtld.optional_static_tls=512"
        )])));
        assert!(!super::operator_tunes_malloc(env(&[("PATH", "/usr/bin")])));
    }
}
