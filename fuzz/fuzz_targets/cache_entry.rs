//! An embedding-cache entry's bytes → the embedding, or nothing. Anything accepted must be an
//! entry the writer could have written (so a damaged entry is never trusted).
#![no_main]

use edge_mnv2::features::{decode_entry, encode_entry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = "ab12";
    if let Some(v) = decode_entry(key, data) {
        assert_eq!(encode_entry(key, &v), data);
        assert!(decode_entry("ab13", data).is_none(), "read back under another key");
    }
});
