//! glibc malloc settings for the daemon's byte path.
//!
//! Why this exists: russh decodes every SSH data packet into a fresh buffer of up to 32 KiB,
//! and the stream frees it once the client has the bytes. With glibc's defaults, a freed heap
//! top above 128 KiB goes back to the kernel (and the sliding mmap threshold sends some
//! buffers to mmap), so the next packets fault the same pages in again: about 40,000 page
//! faults per GiB downloaded, each a zero-filled page, measured with `perf stat` on the side
//! benchmark (`docs/testing.md`). With the heap kept (trim threshold 32 MiB) and the mmap
//! threshold fixed at 4 MiB, the count falls to a few hundred, most in the first GiB.
//! The cost is at most 32 MiB of freed heap kept per malloc arena after a burst. Other
//! allocators (musl) are left alone, and so is glibc's malloc when the operator tunes it
//! (`GLIBC_TUNABLES` with a `glibc.malloc.` setting, or a `MALLOC_…_` variable).

/// Freed heap at the top of an arena kept for reuse, up to this much.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 32 << 20;
/// Allocations at least this large use mmap. Fixing it also stops glibc from raising it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 4 << 20;

/// Whether the environment tunes glibc's malloc itself.
fn operator_tunes_malloc(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> bool {
    vars.into_iter().any(|(k, v)| {
        let k = k.to_string_lossy();
        (k == "GLIBC_TUNABLES" && v.to_string_lossy().contains("glibc.malloc."))
            || (k.starts_with("MALLOC_") && k.ends_with('_'))
    })
}

/// Applies the settings above; false where it did not (the operator tunes malloc, the
/// allocator refused one, or it is not glibc's).
pub fn tune() -> bool {
    if operator_tunes_malloc(std::env::vars_os()) {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's parameters, under glibc's own lock.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
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
            "MALLOC_ARENA_MAX_",
            "2"
        )])));
        assert!(!super::operator_tunes_malloc(env(&[(
            "GLIBC_TUNABLES",
            "glibc.rtld.optional_static_tls=512"
        )])));
        assert!(!super::operator_tunes_malloc(env(&[("PATH", "/usr/bin")])));
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_both_settings() {
        if !super::operator_tunes_malloc(std::env::vars_os()) {
            assert!(super::tune());
        }
    }
}
