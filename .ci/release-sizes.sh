#!/usr/bin/env bash
# Builds the release binary for the host, aarch64 and armv7 and prints each stripped size.
# Usage: bash .ci/release-sizes.sh [TARGET...]   (default: host aarch64 armv7)
# FEATURES="--all-features" (or "--features onnx", "--no-default-features") measures another set.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(host aarch64 armv7)
read -r -a features <<< "${FEATURES:-}"
printf '%-36s %12s   features: %s\n' target "bytes" "${FEATURES:-default}"
for t in "${targets[@]}"; do
  case "$t" in
    host) triple=$(rustc -vV | sed -n 's/^host: //p'); ( cargo build --release --locked -q ${features[@]+"${features[@]}"} ) ;;
    aarch64) triple=aarch64-unknown-linux-gnu; ( source .ci/cross-env.sh aarch64; cargo build --release --locked -q --target "$triple" ${features[@]+"${features[@]}"} ) ;;
    armv7) triple=armv7-unknown-linux-gnueabihf; ( source .ci/cross-env.sh armv7; cargo build --release --locked -q --target "$triple" ${features[@]+"${features[@]}"} ) ;;
    *) echo "unknown target $t (host | aarch64 | armv7)" >&2; exit 2 ;;
  esac
  bin=target/release/edge-mnv2
  [ "$t" = host ] || bin=target/$triple/release/edge-mnv2
  printf '%-36s %12s  (%s MiB)\n' "$triple" "$(stat -c %s "$bin")" "$(awk -v b="$(stat -c %s "$bin")" 'BEGIN{printf "%.1f", b/1048576}')"
done
