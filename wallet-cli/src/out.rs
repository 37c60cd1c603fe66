//! Our stdout, told apart from every other closed connection.
//!
//! A reader that stops early (`mpc-did … | head -1`) is not an error, so `main` exits 0
//! when a command failed because our stdout is a closed pipe. A network error carries the
//! same `io::ErrorKind::BrokenPipe` (a mediator that answered `413` and closed while we
//! were still sending the body), and that must never exit 0. So every explicit write to
//! stdout goes through [`stdout`], which marks a broken pipe as [`StdoutClosed`]; `main`
//! looks for that marker, never for the bare error kind.

use std::io::{self, Write};

/// Writing our stdout failed because its reader has gone (`EPIPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

/// `err` with a broken pipe marked as [`StdoutClosed`] (call it only on errors of writes
/// to our stdout); every other error unchanged.
#[must_use]
pub fn mark(err: io::Error) -> io::Error {
    if err.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        err
    }
}

/// Whether `err` (or anything in its chain) says our stdout was closed.
#[must_use]
pub fn is_stdout_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.is::<StdoutClosed>()
            || e.downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

/// A writer whose broken-pipe errors are [`StdoutClosed`].
#[derive(Debug)]
pub struct Marked<W>(pub W);

impl<W: Write> Write for Marked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// Our stdout, locked, for explicit writes (`writeln!(out, …)?`).
#[must_use]
pub fn stdout() -> Marked<io::StdoutLock<'static>> {
    Marked(io::stdout().lock())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    // Audit #18 H1: a network error of kind BrokenPipe (reqwest → hyper → EPIPE) is a
    // failure, not a closed stdout.
    #[test]
    fn only_our_stdout_counts_as_closed() {
        let net = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("sending to did:key:z6Mk… failed");
        assert!(!is_stdout_closed(&net));
        assert!(
            !crate::is_broken_pipe(&net),
            "a network EPIPE must exit non-zero"
        );

        let ours = writeln!(Marked(Closed), "hello")
            .context("printing")
            .unwrap_err();
        assert!(is_stdout_closed(&ours));
        assert!(crate::is_broken_pipe(&ours));
    }
}
