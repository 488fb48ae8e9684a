//! Logging set-up: tracing to stderr; level from `--log-level`, else `RUST_LOG`, else `info`.
//! Colour only on a terminal, and never when `NO_COLOR` is set.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (once), text or JSON lines on stderr.
pub fn init_with(level: Option<&str>, format: super::args::LogFormat) {
    init_inner(level, format == super::args::LogFormat::Json)
}

/// Installs the global subscriber (once), text.
pub fn init(level: Option<&str>) {
    init_inner(level, false)
}

fn init_inner(level: Option<&str>, json: bool) {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).ok(),
        None => EnvFilter::try_from_default_env().ok(),
    }
    .unwrap_or_else(|| EnvFilter::new("info"));
    // russh logs a line per packet at debug; keep it quiet unless asked for by name.
    let filter = if level.is_none() && std::env::var_os("RUST_LOG").is_none() {
        filter.add_directive("russh=warn".parse().expect("static directive"))
    } else {
        filter
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .try_init()
    };
}
