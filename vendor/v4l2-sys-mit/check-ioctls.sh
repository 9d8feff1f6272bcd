#!/usr/bin/env bash
# Checks the bindings where they matter: `v4l` derives every VIDIOC_* ioctl number from these
# types' sizes, so for each target this compiles a C program printing the numbers from the
# target's <linux/videodev2.h> and a Rust program printing v4l's, runs both (under qemu-user for
# the ARM targets) and requires the same 63 numbers. Run after regenerating (README.md).
# Needs gcc, the cross gcc + headers of .ci/cross-env.sh, qemu-user, and the rustup targets.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
v4l_src="$(cargo metadata --manifest-path "$repo/Cargo.toml" --format-version 1 --locked \
  | grep -o '"manifest_path":"[^"]*/v4l-0\.14\.[0-9]*/Cargo.toml"' | head -n 1 | cut -d'"' -f4)"
names="$(grep -o 'pub const VIDIOC_[A-Z_0-9]*' "$(dirname "$v4l_src")/src/v4l2/vidioc.rs" \
  | sed 's/pub const //' | grep -v '^VIDIOC_RESERVED$')"   # not in the kernel's header any more
mkdir -p "$work/src"
{ echo '#include <stdio.h>'; echo '#include <linux/videodev2.h>'; echo 'int main(void) {'
  for n in $names; do echo "  printf(\"$n %lu\\n\", (unsigned long)$n);"; done; echo '  return 0;'; echo '}'; } > "$work/ioctls.c"
{ echo 'use v4l::v4l2::vidioc::*;'; echo 'fn main() {'
  for n in $names; do echo "    println!(\"$n {}\", $n as u64);"; done; echo '}'; } > "$work/src/main.rs"
cat > "$work/Cargo.toml" <<TOML
[package]
name = "v4l2-ioctl-check"
version = "0.0.0"
edition = "2021"
[workspace]
[dependencies]
v4l = "0.14"
[patch.crates-io]
v4l2-sys-mit = { path = "$here" }
TOML
cp "$repo/Cargo.lock" "$work/"   # the same v4l, libc and bitflags as edge-mnv2
export CARGO_TARGET_DIR="$work/target"
for t in x86_64 aarch64 armv7; do
  case "$t" in
    x86_64) triple=x86_64-unknown-linux-gnu cc=gcc run="" ;;
    aarch64) triple=aarch64-unknown-linux-gnu cc=aarch64-linux-gnu-gcc run="qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
    armv7) triple=armv7-unknown-linux-gnueabihf cc=arm-linux-gnueabihf-gcc run="qemu-arm -L /usr/arm-linux-gnueabihf" ;;
  esac
  "$cc" "$work/ioctls.c" -o "$work/c-$t"
  ( [ "$t" = x86_64 ] || source "$repo/.ci/cross-env.sh" "$t"
    cargo build -q --manifest-path "$work/Cargo.toml" --target "$triple" )
  $run "$work/c-$t" > "$work/$t.c.txt"
  $run "$CARGO_TARGET_DIR/$triple/debug/v4l2-ioctl-check" > "$work/$t.rs.txt"
  if ! diff "$work/$t.c.txt" "$work/$t.rs.txt"; then
    echo "$triple: v4l's ioctl numbers differ from the C header's (above)" >&2
    exit 1
  fi
  echo "$triple: $(wc -l < "$work/$t.c.txt") ioctl numbers, all equal to the C header's"
done
