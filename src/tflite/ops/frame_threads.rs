//! One frame over several cores: the int8 graph's products and depthwise convolutions split
//! their output rows over the threads the caller allows, so a single camera frame uses every
//! core a board has (LiteRT's XNNPACK does the same with its own pool).
//!
//! The count is set per calling thread around one run of a plan ([`with_frame_threads`]): tract
//! runs a plan's operators one after another on the thread that called `run`, so an operator
//! reads the count its frame was started with. Threads are scoped to each operator (no pool
//! lives between frames, none needs shutting down), and an operator too small to pay for them
//! runs on the calling thread alone.

use std::cell::Cell;
use std::ops::Range;
use std::thread::LocalKey;

thread_local! {
    /// Threads this thread's current frame may use (1: itself only).
    static THREADS: Cell<usize> = const { Cell::new(1) };
    /// At most this many, whatever a frame asks for: set where this thread is already one of
    /// several running frames side by side ([`one_thread_per_frame`]).
    static CAP: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Multiply-adds (or the like) below which a part is not worth a thread of its own: starting
/// and joining a thread costs tens of microseconds, about what AVX2 spends on 10^6 of them.
pub const MIN_WORK_PER_THREAD: usize = 1 << 21;

/// Runs `run` with this thread's operators splitting each frame over up to `threads` threads.
pub fn with_frame_threads<R>(threads: usize, run: impl FnOnce() -> R) -> R {
    with_set(&THREADS, threads.clamp(1, CAP.get()), run)
}

/// Runs `run` with every frame on this thread kept to this thread: for workers that already
/// run frames side by side, one per core, where splitting each frame again would only add
/// threads fighting for the same cores.
pub fn one_thread_per_frame<R>(run: impl FnOnce() -> R) -> R {
    with_set(&CAP, 1, run)
}

/// Whether frames run on this thread may start threads of their own: not where this thread is
/// already one of several frames side by side ([`one_thread_per_frame`]).
pub fn frames_may_spread() -> bool {
    CAP.get() > 1
}

/// Runs `run` with `cell` set to `value`, restored however `run` ends (a panic caught above
/// cannot leave the value behind).
fn with_set<R>(cell: &'static LocalKey<Cell<usize>>, value: usize, run: impl FnOnce() -> R) -> R {
    struct Restore(&'static LocalKey<Cell<usize>>, usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.set(self.1);
        }
    }
    let _restore = Restore(cell, cell.replace(value));
    run()
}

/// Threads the current frame may use.
pub fn frame_threads() -> usize {
    THREADS.get().min(CAP.get())
}

/// Calls `work(rows, out)` on consecutive bands of `rows` output rows of `row_len` values each
/// (`out` holds the band's rows), the bands spread over the frame's threads: band boundaries fall
/// on multiples of `granule` rows, and no band does less than [`MIN_WORK_PER_THREAD`] at
/// `work_per_row` each. The calling thread takes the first band.
pub fn split_rows<T: Send>(
    out: &mut [T],
    row_len: usize,
    granule: usize,
    work_per_row: usize,
    work: impl Fn(Range<usize>, &mut [T]) + Sync,
) {
    let rows = out.len().checked_div(row_len).unwrap_or(0);
    let parts = bands(rows, granule, work_per_row, frame_threads());
    if parts <= 1 {
        return work(0..rows, out);
    }
    let band = rows.div_ceil(parts).next_multiple_of(granule.max(1));
    let work = &work;
    std::thread::scope(|s| {
        let mut chunks = out.chunks_mut(band * row_len).enumerate();
        let first = chunks.next();
        for (i, chunk) in chunks {
            let start = i * band;
            s.spawn(move || work(start..start + chunk.len() / row_len, chunk));
        }
        if let Some((_, chunk)) = first {
            work(0..chunk.len() / row_len, chunk);
        }
    });
}

/// How many bands `rows` rows make on `threads` threads.
fn bands(rows: usize, granule: usize, work_per_row: usize, threads: usize) -> usize {
    let min_rows = MIN_WORK_PER_THREAD
        .div_ceil(work_per_row.max(1))
        .next_multiple_of(granule.max(1));
    threads.min(rows / min_rows).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_cover_every_row_once_on_whole_granules() {
        for threads in 1..=5 {
            for rows in [0, 1, 3, 4, 7, 49, 196, 784, 3136, 12544] {
                let row_len = 3;
                let mut out = vec![0u32; rows * row_len];
                with_frame_threads(threads, || {
                    split_rows(&mut out, row_len, 4, MIN_WORK_PER_THREAD / 64, |r, band| {
                        assert_eq!(band.len(), r.len() * row_len);
                        assert!(r.start % 4 == 0, "band at {r:?}");
                        for (i, v) in band.iter_mut().enumerate() {
                            *v += (r.start * row_len + i) as u32 + 1;
                        }
                    })
                });
                let expected: Vec<u32> = (1..=rows * row_len).map(|v| v as u32).collect();
                assert_eq!(out, expected, "{rows} rows on {threads} threads");
            }
        }
    }

    #[test]
    fn small_work_stays_on_the_calling_thread_and_counts_are_restored() {
        assert_eq!(bands(12544, 4, 1, 4), 1, "too little work per row to split");
        assert_eq!(bands(3136, 4, MIN_WORK_PER_THREAD, 4), 4);
        assert_eq!(
            bands(3, 4, MIN_WORK_PER_THREAD, 4),
            1,
            "fewer rows than a granule"
        );
        let caller = std::thread::current().id();
        with_frame_threads(4, || {
            assert_eq!(frame_threads(), 4);
            one_thread_per_frame(|| {
                with_frame_threads(4, || assert_eq!(frame_threads(), 1));
                let mut out = vec![0u8; 64];
                split_rows(&mut out, 1, 1, MIN_WORK_PER_THREAD, |_, _| {
                    assert_eq!(std::thread::current().id(), caller)
                });
            });
            assert_eq!(frame_threads(), 4);
        });
        assert_eq!(frame_threads(), 1);
    }
}
