//! Image bytes (an HTTP body, an MJPEG frame, a dataset file) → RGB8 → the model's input tensor,
//! in every input layout a manifest may ask for. Through the bounded decoder, full size and
//! reduced (as `serve` and `classify` decode): run it with `-rss_limit_mb=256`.
#![no_main]

use edge_mnv2::models::{InputDtype, InputSpec, Layout};
use edge_mnv2::preprocess;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A small side keeps each run fast; the resize and tensor code are the same at 224.
    let side = 32;
    // The reduced decode differs from the full one only for JPEGs four times the side.
    let _ = preprocess::decode_rgb_reduced(data, "fuzz-input", side);
    let Ok(img) = preprocess::decode_rgb(data, "fuzz-input") else {
        return;
    };
    let fitted = preprocess::fit(&img, side);
    assert_eq!((fitted.width(), fitted.height()), (side, side));
    for (dtype, layout) in [
        (InputDtype::U8, Layout::Nhwc),
        (InputDtype::F32, Layout::Nchw),
    ] {
        let spec = InputSpec {
            layout,
            dtype,
            size: side,
            mean: Some([0.485, 0.456, 0.406]),
            std: Some([0.229, 0.224, 0.225]),
        };
        let t = preprocess::to_tensor(&spec, &[&fitted]);
        assert_eq!(t.len(), (side * side * 3) as usize);
    }
});
