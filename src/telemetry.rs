//! Logging setup: structured `tracing` output as text or JSON, filtered by `--log-level`
//! (an `EnvFilter` directive such as `info` or `info,vip_operator=debug`; `RUST_LOG` wins).

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `level` is the `--log-level` value, even when the directives came from `RUST_LOG`.
    #[error("invalid log level {level:?}: {source}")]
    Filter { level: String, source: tracing_subscriber::filter::ParseError },
    /// Typically: a global subscriber is already installed.
    #[error("cannot initialise logging: {0}")]
    Init(Box<dyn std::error::Error + Send + Sync>),
}

pub fn init(level: &str, format: LogFormat) -> Result<(), TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(level),
    }
    .map_err(|source| TelemetryError::Filter { level: level.into(), source })?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(use_colour(
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    result.map_err(TelemetryError::Init)
}

/// Colour only for a person at a terminal: not in a file, a pipe or `kubectl logs`, and never
/// when `NO_COLOR` is set to anything non-empty (no-color.org).
fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::use_colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("".as_ref())));
        assert!(!use_colour(true, Some("1".as_ref())));
        assert!(!use_colour(false, None));
    }
}
