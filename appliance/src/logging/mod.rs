//! Structured logs with `tracing`: human-readable on a terminal, JSON
//! otherwise (or as configured). Logs go to stderr; stdout is for command
//! output that scripts read. The server batches routine lines
//! ([`buffered`]); one-shot commands write each line at once. JSON lines
//! are written by [`json`], the shape of `tracing-subscriber`'s format.

mod buffered;
mod json;

use crate::cli::LogFormatArg;
use crate::context::Context;
use buffered::{BufferedStderr, FlushGuard};
use latchkey_core::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::EitherWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The installed subscriber's handles: the server's batching guard and the
/// level filter `systemctl reload` (SIGHUP) may change.
#[must_use = "dropping the guard stops batching log lines"]
pub struct Logging {
    _flush: Option<FlushGuard>,
    level: LevelHandle,
    /// `LATCHKEY_LOG` was set: it wins over `log.level`, also on reload.
    from_env: bool,
}

type LevelHandle = reload::Handle<EnvFilter, Registry>;

impl Logging {
    /// Applies `log.level` from a re-read configuration. `Ok(false)`: left
    /// alone because `LATCHKEY_LOG` overrides it.
    pub fn set_level(&self, level: &str) -> Result<bool, String> {
        if self.from_env {
            return Ok(false);
        }
        let filter = quiet_drivers(EnvFilter::try_new(level).map_err(|e| e.to_string())?);
        self.level.reload(filter).map_err(|e| e.to_string())?;
        Ok(true)
    }
}

/// Caps libraries whose debug lines would carry data: the PostgreSQL
/// driver logs every statement's parameters (the store's rows) at debug.
fn quiet_drivers(filter: EnvFilter) -> EnvFilter {
    latchkey_core::store::QUIET_LOG_DIRECTIVES
        .iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, EnvFilter::add_directive)
}

/// Where lines go: batched (the server) or straight to stderr. An enum
/// rather than a `BoxMakeWriter`, which boxes every line's writer: an
/// allocation per line, one per proxied request.
enum Out {
    Batched(BufferedStderr),
    Stderr,
}

impl<'a> MakeWriter<'a> for Out {
    type Writer = EitherWriter<buffered::LineWriter<'a>, std::io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        match self {
            Out::Batched(b) => EitherWriter::A(b.make_writer()),
            Out::Stderr => EitherWriter::B(std::io::stderr()),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        match self {
            Out::Batched(b) => EitherWriter::A(b.make_writer_for(meta)),
            Out::Stderr => EitherWriter::B(std::io::stderr()),
        }
    }
}

/// Installs the subscriber. Hold the returned [`Logging`] until the end:
/// dropping it flushes the server's batched lines.
pub fn init(ctx: &Context, serving: bool) -> Logging {
    let format = match ctx.global.log_format {
        Some(LogFormatArg::Human) => LogFormat::Human,
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Auto) | None => ctx.settings.log.format,
    };
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // One-shot commands print their own messages; only warnings are logged.
    let default = if serving {
        ctx.settings.log.level.as_str()
    } else {
        "warn"
    };
    let env_filter = EnvFilter::try_from_env("LATCHKEY_LOG").ok();
    let from_env = env_filter.is_some();
    let filter = env_filter
        .or_else(|| EnvFilter::try_new(default).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, level) = reload::Layer::new(quiet_drivers(filter));
    let (writer, flush) = if serving {
        let (w, g) = BufferedStderr::new();
        (Out::Batched(w), Some(g))
    } else {
        (Out::Stderr, None)
    };
    let (json_layer, human_layer) = if json {
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .event_format(json::JsonLines::default())
            .with_writer(writer);
        (Some(layer), None)
    } else {
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(writer);
        (None, Some(layer))
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(json_layer)
        .with(human_layer)
        .try_init();
    Logging {
        _flush: flush,
        level,
        from_env,
    }
}
