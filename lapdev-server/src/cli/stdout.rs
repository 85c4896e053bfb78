//! What the CLI prints on stdout, and a reader that stopped reading.
//!
//! `lapdev … | head -1` closes stdout early. As with other Unix tools, that
//! is no error to print: a write that finds stdout closed ends the command
//! quietly ([`StdoutClosed`], caught in `run`) with [`CLOSED_STATUS`], the
//! status of a process SIGPIPE ended. Only writes to stdout are treated so: a
//! broken connection to the server is still reported, and `workspace proxy`
//! (whose stdout is a connection's other end) reports a broken pipe as an
//! error.

use std::io::Write;

/// The exit status when stdout's reader went away: 128 + SIGPIPE (13).
pub const CLOSED_STATUS: i32 = 141;

/// Stdout was closed by its reader.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct StdoutClosed;

/// Locked stdout whose "broken pipe" errors carry [`StdoutClosed`].
pub struct Out(std::io::StdoutLock<'static>);

/// Stdout, locked, for a command's output.
pub fn out() -> Out {
    Out(std::io::stdout().lock())
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

fn mark(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::other(StdoutClosed)
    } else {
        e
    }
}

/// An error writing to stdout through tokio: [`StdoutClosed`] when the
/// reader went away.
pub fn write_error(e: std::io::Error) -> anyhow::Error {
    anyhow::Error::new(mark(e))
}

/// Whether `e` comes from a stdout whose reader went away.
pub fn is_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<StdoutClosed>()
            || c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_broken_pipe_counts_as_a_closed_stdout() {
        let closed = anyhow::Error::new(mark(std::io::ErrorKind::BrokenPipe.into()))
            .context("printing the table");
        assert!(is_closed(&closed));
        let other = anyhow::Error::new(mark(std::io::ErrorKind::PermissionDenied.into()));
        assert!(!is_closed(&other));
        // A socket's broken pipe (not through `mark`) stays an error.
        let socket = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(!is_closed(&socket));
    }
}
