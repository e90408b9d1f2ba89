//! What guests make the daemon log, bounded: a guest's stderr becomes log
//! lines tagged with its service and replica (never raw bytes in the
//! daemon's log, where a guest could forge daemon lines), and each service
//! has a budget of lines per second shared by its stderr and the node's own
//! "request failed" warnings about it. Anyone who can reach a published port
//! can make a faulty guest trap or print on every request; without the
//! budget that fills the node's disk (12 s of traffic at a trapping guest
//! wrote 19 MB of log before this).
//!
//! Written here rather than with a tracing rate-limit layer: the budget is
//! per service and the "N lines suppressed" line must name it.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Lines a service may log at once, then per second.
const BURST: f64 = 50.0;
const PER_SECOND: f64 = 10.0;
/// A longer guest line is cut (the rest up to the newline is dropped).
const MAX_LINE: usize = 4096;

/// A token bucket of log lines for one service.
#[derive(Debug)]
pub struct LogBudget {
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl LogBudget {
    fn new() -> LogBudget {
        LogBudget {
            state: Mutex::new(Bucket {
                tokens: BURST,
                last: Instant::now(),
                suppressed: 0,
            }),
        }
    }

    /// The budget of the service `name` (one per service name in this
    /// process, so it survives the routing table being rebuilt).
    pub fn of_service(name: &str) -> Arc<LogBudget> {
        static ALL: OnceLock<Mutex<HashMap<String, Arc<LogBudget>>>> = OnceLock::new();
        let mut all = ALL
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        all.entry(name.to_string())
            .or_insert_with(|| Arc::new(LogBudget::new()))
            .clone()
    }

    /// Takes one line: `None` if the budget is spent (the line is dropped
    /// and counted), else how many lines were dropped since the last one
    /// that passed.
    pub fn take(&self) -> Option<u64> {
        self.take_at(Instant::now())
    }

    fn take_at(&self, now: Instant) -> Option<u64> {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.last = now;
        b.tokens = (b.tokens + elapsed * PER_SECOND).min(BURST);
        if b.tokens < 1.0 {
            b.suppressed += 1;
            return None;
        }
        b.tokens -= 1.0;
        Some(std::mem::take(&mut b.suppressed))
    }
}

/// Logs `line` about `service` within its budget, first saying how many
/// lines were dropped before it.
pub fn warn(budget: &LogBudget, service: &str, replica: &str, line: std::fmt::Arguments<'_>) {
    match budget.take() {
        None => {}
        Some(dropped) => {
            if dropped > 0 {
                tracing::warn!(%service, "{dropped} log lines about this service were dropped (at most {PER_SECOND} a second)");
            }
            tracing::warn!(%service, %replica, "{line}");
        }
    }
}

/// A guest's stderr (`WasiCtxBuilder::stderr`).
#[derive(Clone)]
pub struct GuestStderr {
    pub service: Arc<str>,
    pub replica: Arc<str>,
    pub budget: Arc<LogBudget>,
}

impl IsTerminal for GuestStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStderr {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            to: self.clone(),
            line: Vec::new(),
            cut: false,
        })
    }
}

/// Collects bytes into lines; each complete line is logged.
struct LineWriter {
    to: GuestStderr,
    line: Vec<u8>,
    /// The current line passed `MAX_LINE`.
    cut: bool,
}

impl LineWriter {
    fn push(&mut self, data: &[u8]) {
        for part in data.split_inclusive(|b| *b == b'\n') {
            let (text, ends) = match part.strip_suffix(b"\n") {
                Some(t) => (t, true),
                None => (part, false),
            };
            let room = MAX_LINE.saturating_sub(self.line.len());
            if text.len() > room {
                self.cut = true;
            }
            self.line.extend_from_slice(&text[..text.len().min(room)]);
            if ends {
                self.emit();
            }
        }
    }

    fn emit(&mut self) {
        if self.line.is_empty() && !self.cut {
            return;
        }
        let text = render(&self.line, self.cut);
        match self.to.budget.take() {
            None => {}
            Some(dropped) => {
                if dropped > 0 {
                    tracing::warn!(service = %self.to.service, "{dropped} log lines about this service were dropped (at most {PER_SECOND} a second)");
                }
                tracing::info!(target: "guest", service = %self.to.service, replica = %self.to.replica, "stderr: {text}");
            }
        }
        self.line.clear();
        self.cut = false;
    }
}

/// One guest line as logged: invalid UTF-8 and control characters (ANSI
/// escapes, carriage returns) shown as U+FFFD, not obeyed, so the line
/// cannot rewrite what an operator's terminal shows.
fn render(line: &[u8], cut: bool) -> String {
    let mut text: String = String::from_utf8_lossy(line)
        .trim_end_matches('\r')
        .chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect();
    if cut {
        text.push_str(" [line cut]");
    }
    text
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().push(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().emit();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_budget_allows_a_burst_then_ten_a_second_and_counts_what_it_dropped() {
        let b = LogBudget::new();
        let t0 = Instant::now();
        for _ in 0..50 {
            assert_eq!(b.take_at(t0), Some(0));
        }
        assert_eq!(b.take_at(t0), None);
        assert_eq!(b.take_at(t0), None);
        // 100 ms later: one more line, which learns that 2 were dropped.
        assert_eq!(b.take_at(t0 + Duration::from_millis(100)), Some(2));
        assert_eq!(b.take_at(t0 + Duration::from_millis(100)), None);
        // A quiet minute refills the burst, not more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..50 {
            assert!(b.take_at(later).is_some());
        }
        assert_eq!(b.take_at(later), None);
    }

    #[test]
    fn guest_output_is_split_into_lines_cut_and_stripped_of_control_characters() {
        let mut w = LineWriter {
            to: GuestStderr {
                service: "svc".into(),
                replica: "svc.1".into(),
                budget: Arc::new(LogBudget::new()),
            },
            line: Vec::new(),
            cut: false,
        };
        w.push(b"one\ntw");
        assert!(w.line == b"tw");
        w.push(b"o\n");
        assert!(w.line.is_empty());
        w.push(&vec![b'x'; MAX_LINE + 10]);
        assert_eq!(w.line.len(), MAX_LINE);
        assert!(w.cut);
        w.push(b"\n");
        assert!(w.line.is_empty() && !w.cut);
        assert_eq!(
            render(b"\x1b[2J fake\rdaemon line\r", false),
            "\u{fffd}[2J fake\u{fffd}daemon line"
        );
        assert_eq!(render(b"a\tb \xff", true), "a\tb \u{fffd} [line cut]");
    }
}
