#!/usr/bin/env bash
# Release artefacts for x86_64, aarch64 and armv7 (not run by CI by default: three fat-LTO builds,
# ~10 min each on 2 cores): per target a Debian package (cargo deb) and a .tar.gz with the binary,
# the systemd unit, the sample config and the READMEs, then SHA256SUMS over all of them.
# Usage: bash .ci/release.sh [OUT_DIR] [TARGET...]   (default dist/, all three targets)
# Needs: the cross gcc for aarch64/armv7 (see .ci/cross-env.sh), `cargo install cargo-deb --locked`.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(x86_64 aarch64 armv7)
command -v cargo-deb >/dev/null || { echo "release.sh: needs cargo-deb (cargo install cargo-deb --locked)" >&2; exit 1; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"

for t in "${targets[@]}"; do
  case "$t" in
    x86_64) triple=x86_64-unknown-linux-gnu ;;
    aarch64) triple=aarch64-unknown-linux-gnu ;;
    armv7) triple=armv7-unknown-linux-gnueabihf ;;
    *) echo "release.sh: unknown target $t (x86_64 | aarch64 | armv7)" >&2; exit 2 ;;
  esac
  printf '\n== %s (%ss)\n' "$triple" "$SECONDS"
  # The host's own target builds into target/release, as `cargo build --release` (and
  # release-sizes.sh) do, so an existing release build is reused.
  target_args=(--target "$triple") bin="$target_dir/$triple/release/edge-mnv2"
  if [ "$triple" = "$(rustc -vV | sed -n 's/^host: //p')" ]; then
    target_args=() bin="$target_dir/release/edge-mnv2"
  fi
  (
    [ "$t" = x86_64 ] || source .ci/cross-env.sh "$t"
    rustup target add "$triple" >/dev/null
    cargo build --release --locked ${target_args[@]+"${target_args[@]}"}
    # --no-build: package exactly the binary just built (cargo deb would rebuild it otherwise).
    cargo deb --no-build --locked ${target_args[@]+"${target_args[@]}"} --output "$out"
  )
  name="edge-mnv2-$version-$triple"
  stage="$(mktemp -d)"
  mkdir -p "$stage/$name"
  install -m 0755 "$bin" "$stage/$name/edge-mnv2"
  install -m 0644 deploy/edge-mnv2.service deploy/config.toml README.md "$stage/$name/"
  install -m 0644 deploy/README.md "$stage/$name/README.deploy.md"
  # Reproducible-ish: fixed owner and order, the commit's time as every file's time.
  mtime="$(git log -1 --format=%cI 2>/dev/null || date -u +%FT%TZ)"
  tar -C "$stage" --owner=0 --group=0 --numeric-owner --sort=name --mtime="$mtime" \
    -czf "$out/$name.tar.gz" "$name"
  rm -rf "$stage"
done

cd "$out"
rm -f SHA256SUMS
sha256sum -- *.deb *.tar.gz > SHA256SUMS
printf '\n== %s (%ss)\n' "$out" "$SECONDS"
ls -l
cat SHA256SUMS
