//! Progress on a terminal (bars and epoch lines on stderr), nothing when stderr is not one, so
//! machine output on stdout stays clean; and Ctrl-C turned into a clean stop.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use edge_mnv2::fetch::FetchProgress;
use edge_mnv2::finetune::Progress;
use edge_mnv2::head::EpochStats;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Terminal {
    tty: bool,
    bar: ProgressBar,
}

impl Terminal {
    pub fn new() -> Terminal {
        // Drawn only between start() and finish(): an idle bar would print an empty gauge.
        Terminal {
            tty: std::io::stderr().is_terminal(),
            bar: ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden()),
        }
    }

    /// A line above the bar (or alone when no bar is shown).
    fn print(&self, msg: &str) {
        self.bar.suspend(|| eprintln!("{msg}"));
    }
}

impl Progress for Terminal {
    fn stage(&self, msg: &str) {
        if self.tty {
            self.print(msg);
        } else {
            log::info!("{msg}");
        }
    }

    fn start(&self, total: usize, what: &str) {
        if !self.tty {
            return;
        }
        self.bar.reset();
        self.bar.set_length(total as u64);
        self.bar.set_style(
            ProgressStyle::with_template("{msg:>16} [{bar:30}] {pos}/{len} images, eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        self.bar.set_message(what.to_string());
        self.bar.set_draw_target(ProgressDrawTarget::stderr());
    }

    fn advance(&self, done: usize) {
        self.bar.set_position(done as u64);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
        self.bar.set_draw_target(ProgressDrawTarget::hidden());
    }

    fn epoch(&self, e: &EpochStats) {
        if !self.tty {
            return;
        }
        let val = match (e.val_loss, e.val_accuracy) {
            (Some(l), Some(a)) => format!("val loss {l:.4} acc {a:.4}"),
            _ => "no validation set".into(),
        };
        self.print(&format!(
            "epoch {:>3}: train loss {:.4} acc {:.4}, {val}",
            e.epoch, e.train_loss, e.train_accuracy
        ));
    }
}

/// A byte-count bar for `models fetch` on a terminal; nothing otherwise.
pub struct Download {
    tty: bool,
    bar: ProgressBar,
}

impl Download {
    pub fn new() -> Download {
        Download {
            tty: std::io::stderr().is_terminal(),
            bar: ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden()),
        }
    }
}

impl FetchProgress for Download {
    fn start(&self, url: &str, total: Option<u64>) {
        if !self.tty {
            return;
        }
        self.bar.reset();
        // Without a Content-Length there is no gauge to fill: a spinner with the byte count.
        let template = match total {
            Some(_) => "[{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, eta {eta}  {msg}",
            None => "{spinner} {bytes} {bytes_per_sec}  {msg}",
        };
        self.bar.set_length(total.unwrap_or(0));
        self.bar.set_style(
            ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        self.bar.set_message(url.to_string());
        self.bar.set_draw_target(ProgressDrawTarget::stderr());
    }

    fn advance(&self, done: u64) {
        self.bar.set_position(done);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
        self.bar.set_draw_target(ProgressDrawTarget::hidden());
    }
}

/// A flag set by the first Ctrl-C (or SIGTERM); long jobs check it and stop without writing.
/// A second Ctrl-C exits at once (nothing half-written: every write is atomic).
pub fn cancel_on_ctrl_c() -> &'static AtomicBool {
    static FLAG: OnceLock<&'static AtomicBool> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("edge-mnv2: interrupted, stopping (nothing is written)");
        });
        flag
    })
}
