//! The one place error lines are printed: `edge-mnv2: error: <what>` on stderr, on one line, so a
//! log or a script sees each failure whole. Also where a closed stdout is told from an error: every
//! command writes its output through [`stdout`], and a reader that went away (`| head`) ends the
//! command quietly with [`STDOUT_CLOSED`] instead of an error line.

use std::io::{self, StdoutLock, Write};
use std::process::ExitCode;

/// The exit status when stdout's reader went away: what a shell shows for a process ended by
/// SIGPIPE (128 + 13), as `cat` or `grep` end in `... | head`. Not 0: the output was cut short
/// (not every image was classified); not 1: nothing failed, and no error line is printed.
pub const STDOUT_CLOSED: u8 = 141;

/// The reason of a write error on stdout whose reader went away.
#[derive(Debug, thiserror::Error)]
#[error("stdout closed by its reader")]
pub struct StdoutClosed;

/// Stdout, whose broken-pipe errors are marked [`StdoutClosed`], so that [`exit_code`] tells them
/// from a broken pipe anywhere else (a network peer's).
pub struct Stdout(StdoutLock<'static>);

/// The locked stdout every command prints its results to.
pub fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

fn mark_closed(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(mark_closed)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark_closed)
    }
}

/// Whether `e` is (caused by) a write to [`stdout`] whose reader went away.
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<StdoutClosed>()
            || cause
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

/// Prints `e` (with its causes) as one error line.
pub fn print(e: &anyhow::Error) {
    print_reason(&one_line(e));
}

/// Prints an error line for a failure the library reported as text (an unreadable image).
pub fn print_reason(reason: &str) {
    eprintln!("edge-mnv2: error: {reason}");
}

/// The exit code of a command: its own; [`STDOUT_CLOSED`], quietly, when its stdout was closed;
/// or 1 after printing its error.
pub fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|e| {
        if is_stdout_closed(&e) {
            return ExitCode::from(STDOUT_CLOSED);
        }
        print(&e);
        ExitCode::from(1)
    })
}

/// The closing line of a command that went on past failed images; exit code 1 if any failed.
pub fn failed_images(failed: usize, total: usize) -> ExitCode {
    if failed > 0 {
        eprintln!("edge-mnv2: {failed} of {total} images failed");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// anyhow's `{:#}` joins the causes with ": "; tract errors may still carry newlines.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
