//! The `serve` config file (TOML) → the arguments its keys stand for, as `serve --config` reads
//! it. The keys here stand in for serve's flags (the command line gives the real list, from clap),
//! one of each kind.
#![no_main]

use std::path::Path;

use edge_mnv2::serve::config::{self, Key, KeyKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let keys: Vec<Key> = [
        ("head", KeyKind::Path),
        ("token-file", KeyKind::Path),
        ("threshold", KeyKind::Value),
        ("source", KeyKind::Value),
        ("mqtt-discovery", KeyKind::Value),
        ("no-http", KeyKind::Switch),
    ]
    .map(|(flag, kind)| Key {
        flag: flag.into(),
        kind,
    })
    .into();
    if let Ok(args) = config::parse(
        text,
        Path::new("/etc/edge-mnv2/config.toml"),
        &keys,
        &|_, _| Ok(()),
    ) {
        for a in args {
            let key = keys
                .iter()
                .find(|k| k.flag == a.flag)
                .expect("an accepted key");
            assert_eq!(a.key, key.name());
            if let Some(arg) = a.arg {
                let arg = arg.to_string_lossy();
                assert!(arg.starts_with(&format!("--{}", key.flag)), "{arg}");
                if key.kind == KeyKind::Path {
                    // Relative paths are made relative to the file's folder.
                    assert!(arg.contains("=/"), "{arg}");
                }
            }
        }
    }
});
