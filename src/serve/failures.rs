//! Frames that fail one after another — a folder of broken images, a file that is no image, a
//! camera sending garbage: the inference loop waits between them instead of spinning, the log
//! gets at most one warning a minute (with how many failed since the last), and after
//! [`DEGRADED_AFTER`] in a row `/healthz` says the service is degraded, and why.

use std::time::{Duration, Instant};

use super::backoff::Backoff;

/// The first wait after a failed frame: under a 30 fps camera's frame interval, so one corrupt
/// frame among good ones costs nothing.
const FRAME_BACKOFF_START: Duration = Duration::from_millis(10);
/// The longest: doubling from 10 ms reaches it after 9 failures in a row (~5 s), after which a
/// source of nothing but broken frames is tried 12 times a minute, and one that was mended
/// (images copied in, a camera that recovered) is picked up within 5 s.
const FRAME_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// At most one warning this often; the next one counts those it did not log.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Failures in a row after which the service is degraded: a corrupt frame is a one-off (a bit
/// error in one JPEG), five in a row are a source that yields no image. Reached within 0.2 s of
/// back-off, before any health check looks twice.
pub const DEGRADED_AFTER: u64 = 5;

/// The failures since the last frame that was classified, and since the last warning.
#[derive(Debug)]
pub struct FrameFailures {
    in_a_row: u64,
    last: String,
    backoff: Backoff,
    last_warning: Option<Instant>,
    unlogged: u64,
}

/// What to do after a failed frame.
#[derive(Debug, PartialEq)]
pub struct Failed {
    /// How long the inference loop waits before it takes the next frame.
    pub wait: Duration,
    /// The warning to log, if one is due.
    pub warning: Option<String>,
}

impl Default for FrameFailures {
    fn default() -> FrameFailures {
        FrameFailures {
            in_a_row: 0,
            last: String::new(),
            backoff: Backoff::between(FRAME_BACKOFF_START, FRAME_BACKOFF_MAX),
            last_warning: None,
            unlogged: 0,
        }
    }
}

impl FrameFailures {
    /// Records that frame `name` failed with `error` at `now`.
    pub fn failed(&mut self, name: &str, error: &str, now: Instant) -> Failed {
        self.in_a_row += 1;
        // Decode errors name their frame already.
        self.last = if error.starts_with(name) {
            error.to_string()
        } else {
            format!("{name}: {error}")
        };
        let wait = self.backoff.next_wait();
        let due = self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY);
        if !due {
            self.unlogged += 1;
            return Failed {
                wait,
                warning: None,
            };
        }
        let mut warning = format!("frame {name} skipped: {error}");
        if let Some(t) = self.last_warning.filter(|_| self.unlogged > 0) {
            warning.push_str(&format!(
                " ({} more failed since the last warning {} s ago; {} in a row, waiting {wait:?} before the next)",
                self.unlogged,
                now.duration_since(t).as_secs(),
                self.in_a_row
            ));
        }
        self.last_warning = Some(now);
        self.unlogged = 0;
        Failed {
            wait,
            warning: Some(warning),
        }
    }

    /// A frame was classified: the next failure waits the shortest time again.
    pub fn succeeded(&mut self) {
        self.in_a_row = 0;
        self.backoff.reset();
    }

    /// Why the service is degraded, after [`DEGRADED_AFTER`] failures in a row.
    pub fn degraded(&self) -> Option<String> {
        (self.in_a_row >= DEGRADED_AFTER).then(|| {
            format!(
                "the last {} frames could not be classified (last: {})",
                self.in_a_row, self.last
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_warn_once_a_minute_with_a_count_and_degrade() {
        let mut f = FrameFailures::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let first = f.failed("a.jpg", "not an image", at(0));
        assert_eq!(first.wait, Duration::from_millis(10));
        assert_eq!(
            first.warning.as_deref(),
            Some("frame a.jpg skipped: not an image")
        );
        assert_eq!(f.degraded(), None);
        let mut waits = vec![first.wait];
        for i in 1..14 {
            let failed = f.failed("b.jpg", "truncated", at(1000 * i));
            assert_eq!(failed.warning, None, "{i}");
            waits.push(failed.wait);
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5000, 5000, 5000, 5000, 5000]
        );
        assert_eq!(
            f.degraded().as_deref(),
            Some("the last 14 frames could not be classified (last: b.jpg: truncated)")
        );
        let late = f.failed("c.jpg", "truncated", at(61_000));
        assert_eq!(
            late.warning.as_deref(),
            Some("frame c.jpg skipped: truncated (13 more failed since the last warning 61 s ago; 15 in a row, waiting 5s before the next)")
        );
        f.succeeded();
        assert_eq!(f.degraded(), None);
        let again = f.failed("d.jpg", "truncated", at(62_000));
        assert_eq!(
            (again.wait, again.warning),
            (Duration::from_millis(10), None)
        );
    }
}
