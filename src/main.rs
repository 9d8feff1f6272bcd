//! The `edge-mnv2` command line: parses the arguments, sets up logging, hands the command to its
//! module under `cli`, and turns the outcome into the exit code.
//! Exit codes: 0 success, 1 any error (a one-line message on stderr), 2 never used, 141 stdout
//! closed by its reader (quietly; `cli::errors`).

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

mod cli;

use cli::args::{Cli, Command};
use cli::{calibrate, config, errors, images, models, push, serve, train};

/// glibc grows its mmap threshold as large blocks are freed, after which every worker's
/// multi-megabyte activation and image buffers stay in its heap arena: peak RSS was 155 MB
/// instead of 98 MB for a two-thread `finetune`. A fixed 1 MiB threshold hands them back.
fn limit_heap_growth() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() -> ExitCode {
    limit_heap_growth();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(&cli.command);
    errors::exit_code(config::with_config_file(cli.command, &argv).and_then(run))
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Classify(args) => images::classify(&args),
        Command::Embed(args) => images::embed(&args),
        Command::Predict(args) => images::predict(&args),
        Command::Finetune(args) => train::finetune(&args),
        Command::Evaluate(args) => train::evaluate(&args),
        Command::Calibrate(args) => calibrate::run(&args),
        Command::Models(args) => models::run(&args),
        Command::Serve(args) => serve::serve(args),
        Command::Capture(args) => serve::capture(args),
        Command::PushHead(args) => push::push_head(&args),
    }
}

/// Long-running commands log what they do (info); the others only warnings. Under systemd
/// (JOURNAL_STREAM set) lines carry a `<N>` syslog priority prefix, which journald turns into the
/// entry's priority, and no timestamp or colour (journald adds its own).
fn init_logging(command: &Command) {
    let default = match command {
        Command::Serve(_) | Command::Capture(_) => "info",
        _ => "warn",
    };
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    builder.format_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.format(|f, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(f, "<{priority}>{}", record.args())
        });
    }
    builder.init();
}
