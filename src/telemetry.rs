//! Logging setup: human-readable text on a terminal, JSON lines otherwise (systemd, Kubernetes).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` (or `TOKEND_LOG`) overrides `level`; `format`
/// `auto` writes text on a terminal and JSON lines otherwise.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_env("TOKEND_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},tokio_cron_scheduler=warn")));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(std::io::stderr))
            .try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).try_init()
    };
    // Already installed (tests): keep the first.
    let _ = result;
}
