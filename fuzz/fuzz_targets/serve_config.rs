//! The `serve` config file (TOML) → its settings, merged with flags as `serve` does.
#![no_main]

use std::path::Path;

use edge_mnv2::serve::ServeConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = ServeConfig::parse(text, Path::new("/etc/edge-mnv2/config.toml")) {
        let merged = ServeConfig::default().overridden_by(cfg.clone());
        assert_eq!(merged, cfg);
    }
});
