//! A stderr writer for the server that batches log lines.
//!
//! The server logs one line per request; written one `write(2)` each,
//! that line cost the proxy about 5 % of its CPU per request
//! (docs/PERFORMANCE.md). Lines at INFO and below are appended to a
//! buffer that goes out when it passes [`FLUSH_BYTES`], every
//! [`FLUSH_EVERY`] (a background thread), when a WARN or ERROR line is
//! written (which also goes out at once, after what was buffered, so the
//! order is kept) and when the [`FlushGuard`] is dropped at exit — the
//! same trade as nginx's `access_log … buffer= flush=`: a crash may lose
//! the last fraction of a second of routine lines, never a warning.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Buffered bytes that trigger an immediate write.
pub const FLUSH_BYTES: usize = 16 * 1024;
/// Longest time a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    stopped: bool,
}

/// Where lines finally go (stderr; a capture in tests).
type Sink = Box<dyn Fn(&[u8]) + Send + Sync>;

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    sink: Sink,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn out(&self, bytes: &[u8]) {
        if !bytes.is_empty() {
            (self.sink)(bytes);
        }
    }
}

/// Writes `bytes` to stderr. Errors are dropped: there is nowhere left
/// to report a failing stderr.
fn to_stderr(bytes: &[u8]) {
    let _ = io::stderr().lock().write_all(bytes);
}

/// The `MakeWriter` for the subscriber.
#[derive(Clone)]
pub struct BufferedStderr {
    shared: Arc<Shared>,
}

/// Flushes what is buffered and stops the flusher thread when dropped.
pub struct FlushGuard {
    shared: Arc<Shared>,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.stopped = true;
        self.shared.out(&std::mem::take(&mut state.buf));
        drop(state);
        self.shared.wake.notify_all();
    }
}

impl BufferedStderr {
    /// The writer, and the guard that flushes it at exit. Starts the
    /// flusher thread; if the thread cannot start, lines still go out
    /// when the buffer fills, on warnings and at exit.
    pub fn new() -> (BufferedStderr, FlushGuard) {
        Self::with_sink(Box::new(to_stderr))
    }

    fn with_sink(sink: Sink) -> (BufferedStderr, FlushGuard) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            sink,
        });
        let for_thread = Arc::clone(&shared);
        let _ = std::thread::Builder::new()
            .name("latchkey-log".into())
            .spawn(move || flusher(&for_thread));
        (
            BufferedStderr {
                shared: Arc::clone(&shared),
            },
            FlushGuard { shared },
        )
    }
}

fn flusher(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        let (next, _) = shared
            .wake
            .wait_timeout(state, FLUSH_EVERY)
            .unwrap_or_else(PoisonError::into_inner);
        state = next;
        if state.stopped {
            return;
        }
        // Written under the lock, so a warning written meanwhile cannot
        // overtake older lines.
        shared.out(&state.buf);
        state.buf.clear();
    }
}

/// One event's writer.
pub struct LineWriter<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        if self.urgent || state.stopped {
            self.shared.out(&state.buf);
            state.buf.clear();
            self.shared.out(bytes);
        } else {
            state.buf.extend_from_slice(bytes);
            if state.buf.len() >= FLUSH_BYTES {
                self.shared.out(&state.buf);
                state.buf.clear();
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose output is captured.
    fn captured() -> (BufferedStderr, FlushGuard, Arc<Mutex<Vec<u8>>>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink_out = Arc::clone(&out);
        let (w, guard) = BufferedStderr::with_sink(Box::new(move |b: &[u8]| {
            sink_out.lock().expect("capture").extend_from_slice(b);
        }));
        (w, guard, out)
    }

    fn line(w: &BufferedStderr, urgent: bool, text: &str) {
        let mut lw = LineWriter {
            shared: &w.shared,
            urgent,
        };
        lw.write_all(text.as_bytes()).expect("write");
    }

    fn written(out: &Mutex<Vec<u8>>) -> String {
        String::from_utf8(out.lock().expect("capture").clone()).expect("utf-8")
    }

    #[test]
    fn routine_lines_wait_warnings_flush_in_order() {
        let (w, guard, out) = captured();
        line(&w, false, "a\n");
        line(&w, false, "b\n");
        assert_eq!(written(&out), "", "routine lines are buffered");
        line(&w, true, "warn\n");
        assert_eq!(
            written(&out),
            "a\nb\nwarn\n",
            "a warning writes all, in order"
        );
        line(&w, false, "c\n");
        drop(guard);
        assert_eq!(
            written(&out),
            "a\nb\nwarn\nc\n",
            "the guard flushes at exit"
        );
        line(&w, false, "d\n");
        assert_eq!(
            written(&out),
            "a\nb\nwarn\nc\nd\n",
            "after the guard, lines go out at once"
        );
    }

    #[test]
    fn a_full_buffer_is_written_at_once() {
        let (w, _guard, out) = captured();
        let chunk = "x".repeat(FLUSH_BYTES / 4);
        for _ in 0..3 {
            line(&w, false, &chunk);
        }
        assert_eq!(written(&out), "");
        line(&w, false, &chunk);
        assert_eq!(written(&out).len(), FLUSH_BYTES);
    }

    #[test]
    fn the_flusher_writes_within_its_interval() {
        let (w, _guard, out) = captured();
        line(&w, false, "tick\n");
        let deadline = std::time::Instant::now() + FLUSH_EVERY * 30;
        while written(&out).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "not flushed within {:?}",
                FLUSH_EVERY * 30
            );
            std::thread::sleep(FLUSH_EVERY / 4);
        }
        assert_eq!(written(&out), "tick\n");
    }
}
