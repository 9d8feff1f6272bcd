//! The waits between attempts to reopen what failed — a camera, a broker connection: 0.5 s,
//! doubling up to 30 s, and back to 0.5 s once the thing works again. One schedule for both, so
//! the README's one sentence about it stays true. Frames that fail one after another back off on
//! a schedule of their own ([`Backoff::between`], `super::failures`).

use std::time::Duration;

/// First and largest wait between attempts.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    start: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff::between(BACKOFF_START, BACKOFF_MAX)
    }

    /// Waits from `start`, doubling up to `max`.
    pub const fn between(start: Duration, max: Duration) -> Backoff {
        Backoff {
            next: start,
            start,
            max,
        }
    }

    /// The wait before the next attempt; the one after it is twice as long, up to the maximum.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(self.max);
        wait
    }

    /// After a success: the next failure waits the shortest time again.
    pub fn reset(&mut self) {
        self.next = self.start;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_to_thirty_and_resets() {
        let mut b = Backoff::new();
        let waits: Vec<f64> = (0..9).map(|_| b.next_wait().as_secs_f64()).collect();
        assert_eq!(waits, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(500));
        assert_eq!(b.next_wait(), Duration::from_secs(1));
    }
}
