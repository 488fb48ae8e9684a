//! Standard output for the commands that print (status, reference, completions, man, keygen,
//! check): a reader that goes away (`kube-ssh-tunnel status | head -1`) ends the command
//! quietly, like other Unix tools, instead of the panic `print!` gives on a broken pipe. The
//! process keeps ignoring SIGPIPE (Rust's default), so a closed socket elsewhere is an error
//! to handle, never a silent death.

use std::io::Write;

/// Writes `text` to stdout and flushes; on a broken pipe the process exits at once with
/// `EXIT_BROKEN_PIPE` and says nothing (nobody is reading). Other errors are reported.
pub fn write_stdout(text: &[u8]) {
    let mut out = std::io::stdout().lock();
    let r = out.write_all(text).and_then(|()| out.flush());
    match r {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(EXIT_BROKEN_PIPE)
        }
        Err(e) => {
            eprintln!("kube-ssh-tunnel: cannot write to stdout: {e}");
            std::process::exit(super::EXIT_FAILURE)
        }
    }
}

/// The exit code after the reader of stdout went away (what a shell reports for SIGPIPE).
pub const EXIT_BROKEN_PIPE: i32 = 141;

/// `print!` that ends the command quietly when stdout's reader is gone.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::cli::output::write_stdout(format!($($t)*).as_bytes())
    };
}

/// `println!` that ends the command quietly when stdout's reader is gone.
macro_rules! outln {
    () => {
        $crate::cli::output::write_stdout(b"\n")
    };
    ($($t:tt)*) => {
        $crate::cli::output::write_stdout(format!("{}\n", format_args!($($t)*)).as_bytes())
    };
}

pub(crate) use {out, outln};
