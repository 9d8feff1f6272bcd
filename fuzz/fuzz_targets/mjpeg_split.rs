//! An MJPEG stream file's bytes → the JPEG frames it holds. Every frame handed out must be one
//! complete SOI..EOI image, and the splitter must always make progress.
#![no_main]

use std::io::Cursor;

use edge_mnv2::source::next_jpeg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Cursor::new(data);
    let mut frames = 0usize;
    while let Ok(Some(frame)) = next_jpeg(&mut r) {
        assert!(frame.starts_with(&[0xFF, 0xD8]), "a frame starts with SOI");
        assert!(frame.ends_with(&[0xFF, 0xD9]), "a frame ends with EOI");
        assert!(frame.len() <= data.len());
        frames += 1;
        // Each frame is at least SOI + EOI, so a stream cannot hold more than this many.
        assert!(frames <= data.len() / 4);
    }
});
