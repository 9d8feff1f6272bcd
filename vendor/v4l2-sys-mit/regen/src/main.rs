//! Writes ../src/bindings/{x86_64,aarch64,arm}.rs: upstream v4l2-sys-mit 0.3.0's build script
//! (bindgen's default builder on `wrapper.h`), run once per target with that target's headers.
//! Usage: `cargo run --manifest-path vendor/v4l2-sys-mit/regen/Cargo.toml`.

use std::path::Path;

/// (file stem, clang target, the Debian multiarch include directory of that target's libc and
/// kernel headers).
const TARGETS: &[(&str, &str, &[&str])] = &[
    (
        "x86_64",
        "x86_64-unknown-linux-gnu",
        &["/usr/include/x86_64-linux-gnu", "/usr/include"],
    ),
    ("aarch64", "aarch64-unknown-linux-gnu", &["/usr/aarch64-linux-gnu/include"]),
    ("arm", "armv7-unknown-linux-gnueabihf", &["/usr/arm-linux-gnueabihf/include"]),
];

fn main() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crate dir");
    let out_dir = crate_dir.join("src/bindings");
    std::fs::create_dir_all(&out_dir).expect("create src/bindings");
    for (stem, clang_target, includes) in TARGETS {
        // Only that target's headers (never the build machine's /usr/include for a cross
        // target); clang's own builtin headers (stddef.h, ...) stay.
        let mut args = vec![format!("--target={clang_target}"), "-nostdlibinc".into()];
        for include in *includes {
            assert!(
                Path::new(include).is_dir(),
                "{include}: missing; install the headers for {clang_target}"
            );
            args.push(format!("-isystem{include}"));
        }
        let bindings = bindgen::Builder::default()
            .header(crate_dir.join("wrapper.h").to_str().expect("utf-8 path"))
            .clang_args(&args)
            .generate()
            .unwrap_or_else(|e| panic!("{clang_target}: bindgen failed: {e}"));
        let path = out_dir.join(format!("{stem}.rs"));
        bindings.write_to_file(&path).expect("write bindings");
        println!("{}: {clang_target}, headers from {includes:?}", path.display());
    }
}
