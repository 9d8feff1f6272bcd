//! An embedding-cache entry's bytes → the embedding, or nothing. Anything accepted must be an
//! entry the writer could have written (so a damaged entry is never trusted).
//!
//! Fuzzed bytes almost never carry a valid checksum, so the reader's accepting path is reached
//! the other way round too: an entry written from fuzzed values must read back bit for bit under
//! its key, and be refused with any one byte changed or under another key.
#![no_main]

use edge_mnv2::features::{decode_entry, encode_entry};
use edge_mnv2::backbone::EMBEDDING_DIM;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = "ab12";
    if let Some(v) = decode_entry(key, data) {
        assert_eq!(encode_entry(key, &v), data);
        assert!(decode_entry("ab13", data).is_none(), "read back under another key");
    }

    let Some((&at, rest)) = data.split_first() else {
        return;
    };
    if rest.is_empty() {
        return;
    }
    // The values: the rest of the input, repeated to fill an embedding (NaNs and infinities included).
    let bytes: Vec<u8> = rest.iter().copied().cycle().take(EMBEDDING_DIM * 4).collect();
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let entry = encode_entry(key, &values);
    let back = decode_entry(key, &entry).expect("a written entry reads back");
    assert!(back.iter().map(|x| x.to_bits()).eq(values.iter().map(|x| x.to_bits())));
    assert!(decode_entry("ab13", &entry).is_none(), "read back under another key");
    let mut damaged = entry.clone();
    let i = (at as usize * 7919) % damaged.len();
    damaged[i] ^= 1 << (at % 8);
    assert!(decode_entry(key, &damaged).is_none(), "byte {i} changed, still read");
    assert!(decode_entry(key, &entry[..entry.len() - 1]).is_none(), "a short entry read");
});
