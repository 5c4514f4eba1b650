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
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Installs the subscriber. The returned guard (the server's) flushes the
/// batched lines when dropped: hold it until the end.
#[must_use = "dropping the guard stops batching log lines"]
pub fn init(ctx: &Context, serving: bool) -> Option<FlushGuard> {
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
    let filter = EnvFilter::try_from_env("LATCHKEY_LOG")
        .or_else(|_| EnvFilter::try_new(default))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = if serving {
        let (w, g) = BufferedStderr::new();
        (BoxMakeWriter::new(w), Some(g))
    } else {
        (BoxMakeWriter::new(std::io::stderr), None)
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = if json {
        builder
            .json()
            .event_format(json::JsonLines::default())
            .try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    guard
}
