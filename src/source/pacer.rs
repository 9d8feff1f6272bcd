//! Frame pacing: the service uses [`Pacer`] to replay file sources, which deliver as fast as they
//! are asked, at the fps the user gave. No source depends on it, hence a file of its own.

use std::time::{Duration, Instant};

/// Sleeps so that successive calls are at least `1/fps` apart (no-op for `fps == 0`).
pub struct Pacer {
    period: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    pub fn new(fps: f64) -> Pacer {
        Pacer {
            period: (fps > 0.0).then(|| Duration::from_secs_f64(1.0 / fps)),
            next: None,
        }
    }

    /// How long to wait before the next frame is due (zero when due or unpaced), and books it.
    pub fn wait_time(&mut self) -> Duration {
        let Some(period) = self.period else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let due = self.next.unwrap_or(now);
        // After a long stall, restart the schedule instead of bursting to catch up.
        let due = if now > due + period * 4 { now } else { due };
        self.next = Some(due + period);
        due.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spaces_frames() {
        let mut p = Pacer::new(100.0);
        assert_eq!(p.wait_time(), Duration::ZERO);
        let w = p.wait_time();
        assert!(
            w > Duration::from_millis(5) && w <= Duration::from_millis(10),
            "{w:?}"
        );
        assert_eq!(Pacer::new(0.0).wait_time(), Duration::ZERO);
    }
}
