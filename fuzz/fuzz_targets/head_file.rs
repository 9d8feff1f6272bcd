//! A head file's bytes (what `--head` and `POST /reload` read) → a checked head, which must then
//! predict without panicking.
#![no_main]

use std::path::PathBuf;

use edge_mnv2::head::Head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = Head::parse(data.to_vec(), PathBuf::from("fuzz/head.json")) else {
        return;
    };
    let head = file.head;
    let probs = head.predict(&vec![0.5; head.backbone.embedding_dim]);
    assert_eq!(probs.len(), head.classes.len());
});
