//! A .tflite file's bytes → the tract graph, in both precisions (seeded with the Coral
//! MobileNetV2 file by run.sh; the file itself is never committed).
#![no_main]

use edge_mnv2::models::Precision;
use edge_mnv2::tflite;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for precision in [Precision::F32, Precision::Int8] {
        let _ = tflite::build(data, precision);
    }
});
