//! The one place error lines are printed: `edge-mnv2: error: <what>` on stderr, on one line, so a
//! log or a script sees each failure whole.

use std::process::ExitCode;

/// Prints `e` (with its causes) as one error line.
pub fn print(e: &anyhow::Error) {
    print_reason(&one_line(e));
}

/// Prints an error line for a failure the library reported as text (an unreadable image).
pub fn print_reason(reason: &str) {
    eprintln!("edge-mnv2: error: {reason}");
}

/// The exit code of a command: its own, or 1 after printing its error.
pub fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|e| {
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
