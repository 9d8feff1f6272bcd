//! A YUYV frame as a camera driver hands it over (geometry + buffer) → RGB8.
#![no_main]

use edge_mnv2::source::yuyv_to_rgb;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let word = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
    let (width, height, stride) = (word(0), word(4), word(8));
    let buf = &data[12..];
    if let Ok(img) = yuyv_to_rgb(width, height, stride, buf) {
        assert_eq!((img.width(), img.height()), (width, height));
    }
});
