//! Log setup: human-readable by default, JSON with `--log-format json`.

use std::fs::File;
use std::sync::Mutex;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `RUST_LOG` if set, else `default_level`.
fn filter(default_level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level))
}

/// Installs the global subscriber. `RUST_LOG` overrides `default_level`.
pub fn init(format: LogFormat, default_level: &str) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(default_level))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Installs the global subscriber writing to `file` (in `format`, without
/// colours) and, when `also_stderr`, to stderr as [`init`] does: for a
/// command whose own output is on the terminal (the demo). `RUST_LOG`
/// overrides `default_level` for both.
pub fn init_to_file(format: LogFormat, default_level: &str, file: File, also_stderr: bool) {
    let to_file = fmt_layer(format, Mutex::new(file), false);
    let to_stderr = also_stderr.then(|| fmt_layer(format, std::io::stderr, true));
    let _ = tracing_subscriber::registry()
        .with(filter(default_level))
        .with(to_file)
        .with(to_stderr)
        .try_init();
}

/// One `fmt` output in `format`; `terminal` keeps the default colouring
/// (on unless `NO_COLOR`), otherwise none.
fn fmt_layer<S, W>(format: LogFormat, writer: W, terminal: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    let layer = if terminal {
        layer
    } else {
        layer.with_ansi(false)
    };
    match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    }
}
