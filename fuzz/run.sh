#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, one after the other (not part of CI).
#
#   fuzz/run.sh [SECONDS] [TARGET...]     default: 600 s each, every target
#   RSS_LIMIT_MB=256 fuzz/run.sh ...      libFuzzer's -rss_limit_mb (default 3072)
#
# Needs a nightly toolchain and cargo-fuzz; both are installed here if missing. The corpora live
# in fuzz/corpus/<target> (not committed); the TFLite target is seeded at run time from the
# shared Coral model (EDGE_MNV2_MODELS, default ../shared/models), never from a committed copy.
# Each target's last libFuzzer status line (execs, corpus size) goes to fuzz/logs/<target>.log.
# A crash stops that target and leaves its input in fuzz/artifacts/<target>/; turn it into a
# regression test under tests/ (see fuzz/README.md) before fixing it.
#
# A new target is a file fuzz_targets/<name>.rs plus a [[bin]] entry in Cargo.toml; the loop
# below picks up every [[bin]] (the HTTP request target joins the same way).
set -euo pipefail

cd "$(dirname "$0")"
SECONDS_EACH=${1:-600}
shift || true

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

MODELS=${EDGE_MNV2_MODELS:-../../shared/models}
DATASETS=${EDGE_MNV2_DATASETS:-$MODELS/../datasets}
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    mapfile -t TARGETS < <(cargo +nightly fuzz list)
fi

# Small hand-made seeds, so each target starts from valid inputs rather than nothing.
seed() {
    local target=$1 dir=corpus/$1
    mkdir -p "$dir"
    case $target in
    tflite_build)
        cp "$MODELS/mobilenet_v2_1.0_224_quant.tflite" "$dir/coral_quant.seed"
        ;;
    image_decode | mjpeg_split)
        # The four smallest dataset JPEGs (2-3 KB), and for the splitter also concatenated.
        mapfile -t jpegs < <(find "$DATASETS/imagenette_224_subset" -name '*.JPEG' -size -3k | sort | head -4)
        for f in "${jpegs[@]}"; do cp "$f" "$dir/$(basename "$f").seed"; done
        [ "$target" = mjpeg_split ] && cat "${jpegs[@]}" >"$dir/stream.mjpeg.seed"
        # A tiny BMP (the golden images' header and first rows) for the decoder's other format.
        [ "$target" = image_decode ] && head -c 4096 "$MODELS/images/cat.bmp" >"$dir/cat-head.bmp.seed"
        ;;
    serve_config)
        cp ../deploy/config.toml "$dir/deploy.toml.seed"
        ;;
    esac
}

for t in "${TARGETS[@]}"; do
    seed "$t"
    mkdir -p logs artifacts/"$t"
    max_len=()
    [ "$t" = tflite_build ] && max_len=(-max_len=4200000)
    echo "== $t: ${SECONDS_EACH}s"
    status=0
    nice -n 19 cargo +nightly fuzz run "$t" corpus/"$t" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb="${RSS_LIMIT_MB:-3072}" -timeout=60 \
        -artifact_prefix=artifacts/"$t"/ -print_final_stats=1 "${max_len[@]}" \
        >logs/"$t".log 2>&1 || status=$?
    grep -E '^#[0-9]+' logs/"$t".log | tail -1 || true
    grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' logs/"$t".log || true
    echo "corpus files: $(find corpus/"$t" -type f | wc -l)"
    if [ "$status" -ne 0 ]; then
        echo "!! $t exited with $status: see logs/$t.log and artifacts/$t/"
    fi
done
