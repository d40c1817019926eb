//! A log sink that batches lines: one `write` system call per flush period instead of one per line.
//!
//! The gateway writes one log line per request. Written straight to stderr that is a system call
//! on the request's path, every time: measurable next to a bare forwarder (see
//! `docs/benchmarks.md`). [`BufferedLog`] collects lines in memory and a background thread writes
//! them out every period (100 ms in `mcp-oauth serve`), when the buffer fills, and when the log is
//! flushed or dropped. Lines keep their order; a line appears at most one period late.
//!
//! ```
//! use std::io::Write;
//! let log = mcp_oauth_runtime::log::BufferedLog::stderr(std::time::Duration::from_millis(100));
//! let mut writer = log.writer();
//! writer.write_all(b"one line\n")?;
//! log.flush();
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

/// Past this many buffered bytes a write goes out at once.
const CAPACITY: usize = 64 * 1024;

type Sink = Box<dyn Write + Send>;

struct Shared {
    buffer: Mutex<Vec<u8>>,
    sink: Mutex<Sink>,
}

impl Shared {
    fn buffer(&self) -> MutexGuard<'_, Vec<u8>> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes out what is buffered. A sink that fails drops the lines: logging never fails a
    /// request.
    fn flush(&self) {
        let pending = std::mem::take(&mut *self.buffer());
        if pending.is_empty() {
            return;
        }
        let mut sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = sink.write_all(&pending);
        let _ = sink.flush();
    }
}

/// The batching log; flushes what it holds when dropped.
pub struct BufferedLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BufferedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferedLog").field("buffered", &self.shared.buffer().len()).finish()
    }
}

impl BufferedLog {
    /// Batches lines for stderr, written out every `period` by a background thread.
    pub fn stderr(period: Duration) -> Self {
        Self::to(Box::new(std::io::stderr()), period)
    }

    /// Batches lines for `sink`, written out every `period` by a background thread (named
    /// `mcp-oauth-log`), which ends once the log is dropped.
    pub fn to(sink: Box<dyn Write + Send>, period: Duration) -> Self {
        let shared = Arc::new(Shared { buffer: Mutex::new(Vec::new()), sink: Mutex::new(sink) });
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        // Without the thread, the buffer still goes out when full and when the log is dropped.
        let _detached = std::thread::Builder::new().name("mcp-oauth-log".to_owned()).spawn(move || {
            loop {
                std::thread::sleep(period);
                match weak.upgrade() {
                    Some(shared) => shared.flush(),
                    None => break,
                }
            }
        });
        Self { shared }
    }

    /// A writer into the buffer, for a logging library (`tracing_subscriber::fmt().with_writer(move
    /// || log.writer())`).
    pub fn writer(&self) -> LogWriter {
        LogWriter { shared: Arc::clone(&self.shared) }
    }

    /// Writes out what is buffered now.
    pub fn flush(&self) {
        self.shared.flush();
    }
}

impl Drop for BufferedLog {
    fn drop(&mut self) {
        self.shared.flush();
    }
}

/// Appends to a [`BufferedLog`]; cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter").finish_non_exhaustive()
    }
}

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut buffer = self.shared.buffer();
            buffer.extend_from_slice(bytes);
            buffer.len() >= CAPACITY
        };
        if full {
            self.shared.flush();
        }
        Ok(bytes.len())
    }

    /// Buffered lines go out with the next period; an explicit flush is [`BufferedLog::flush`].
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that records each `write` call separately.
    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Calls {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(bytes.to_vec());
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_batched_into_one_write_in_order() {
        let calls = Calls::default();
        let log = BufferedLog::to(Box::new(calls.clone()), Duration::from_secs(3600));
        let mut writer = log.writer();
        for line in 0..100 {
            writer.write_all(format!("line {line}\n").as_bytes()).unwrap();
        }
        assert!(calls.0.lock().unwrap().is_empty(), "nothing is written before a flush");
        log.flush();
        let written = calls.0.lock().unwrap().clone();
        assert_eq!(written.len(), 1, "one write for a hundred lines");
        let text = String::from_utf8(written.concat()).unwrap();
        assert!(text.starts_with("line 0\nline 1\n") && text.ends_with("line 99\n"));
    }

    #[test]
    fn the_period_and_the_drop_flush_and_a_full_buffer_goes_out_at_once() {
        let calls = Calls::default();
        let log = BufferedLog::to(Box::new(calls.clone()), Duration::from_millis(10));
        log.writer().write_all(b"late\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while calls.0.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(calls.0.lock().unwrap().concat(), b"late\n", "the background flush wrote it");

        let calls = Calls::default();
        let log = BufferedLog::to(Box::new(calls.clone()), Duration::from_secs(3600));
        log.writer().write_all(&vec![b'x'; CAPACITY]).unwrap();
        assert_eq!(calls.0.lock().unwrap().concat().len(), CAPACITY, "a full buffer is written at once");
        log.writer().write_all(b"last\n").unwrap();
        drop(log);
        assert!(calls.0.lock().unwrap().concat().ends_with(b"last\n"), "dropping flushes");
    }
}
