//! The one-frame mailbox between the capture and inference threads ([`FrameSlot`]), the frame it
//! carries ([`Captured`]), and the poison-tolerant [`lock`] every part of the service uses.
//!
//! The capture thread overwrites whatever the inference thread has not taken yet (counting a
//! drop), so under load the newest frame is always the next one classified and memory never grows
//! with a backlog.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::source::RawFrame;

/// Locks `m` even when another thread panicked holding it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another thread must not take the service down with poisoned locks.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A captured frame and its sequence number (gaps mean dropped frames).
pub struct Captured {
    pub seq: u64,
    pub frame: RawFrame,
}

/// The one-frame mailbox between capture and inference.
#[derive(Default)]
pub struct FrameSlot {
    state: Mutex<SlotState>,
    changed: Condvar,
}

#[derive(Default)]
struct SlotState {
    frame: Option<Captured>,
    /// The consumer is blocked in `take` (lets a replay read the next file only when it is wanted,
    /// so its latency is not inflated by a frame sitting in the slot).
    consumer_waiting: bool,
}

impl FrameSlot {
    /// Stores `frame`, replacing an untaken one; returns whether one was replaced (a drop).
    pub fn put(&self, frame: Captured) -> bool {
        let replaced = lock(&self.state).frame.replace(frame).is_some();
        self.changed.notify_all();
        replaced
    }

    /// Takes the frame, waiting up to `timeout` for one.
    pub fn take(&self, timeout: Duration) -> Option<Captured> {
        let mut guard = lock(&self.state);
        if guard.frame.is_none() {
            guard.consumer_waiting = true;
            self.changed.notify_all();
            guard = self
                .changed
                .wait_timeout_while(guard, timeout, |s| s.frame.is_none())
                .unwrap_or_else(|p| p.into_inner())
                .0;
            guard.consumer_waiting = false;
        }
        guard.frame.take()
    }

    /// Waits up to `timeout` until the slot is empty and the consumer is waiting for a frame;
    /// returns whether it is.
    pub fn wait_wanted(&self, timeout: Duration) -> bool {
        let guard = lock(&self.state);
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |s| s.frame.is_some() || !s.consumer_waiting)
            .unwrap_or_else(|p| p.into_inner());
        guard.frame.is_none() && guard.consumer_waiting
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::source::FramePixels;

    fn frame(seq: u64) -> Captured {
        Captured {
            seq,
            frame: RawFrame {
                pixels: FramePixels::Encoded(vec![]),
                name: format!("f{seq}"),
                captured: Instant::now(),
            },
        }
    }

    #[test]
    fn slot_keeps_only_the_newest_frame_and_reports_drops() {
        let slot = FrameSlot::default();
        assert!(!slot.put(frame(1)));
        assert!(slot.put(frame(2)));
        assert!(slot.put(frame(3)));
        assert_eq!(slot.take(Duration::ZERO).unwrap().seq, 3);
        assert!(slot.take(Duration::from_millis(10)).is_none());
        // Nobody is waiting in `take` now: a replay would not read ahead.
        assert!(!slot.wait_wanted(Duration::from_millis(10)));
    }

    #[test]
    fn slot_wakes_a_waiting_consumer() {
        let slot = Arc::new(FrameSlot::default());
        let s = slot.clone();
        let t = std::thread::spawn(move || s.take(Duration::from_secs(5)).map(|c| c.seq));
        assert!(
            slot.wait_wanted(Duration::from_secs(5)),
            "consumer is waiting"
        );
        slot.put(frame(7));
        assert_eq!(t.join().unwrap(), Some(7));
    }
}
