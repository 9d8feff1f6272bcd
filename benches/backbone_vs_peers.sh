#!/usr/bin/env bash
# edge-mnv2's backbone against LiteRT and onnxruntime: median per-frame latency, batch 1, on the
# same six golden 224x224 frames, at 1 and 2 threads per frame, with each row's ratio to LiteRT
# at the same thread count. One command; not part of CI (it installs Python packages and takes
# several minutes).
#
# Usage: benches/backbone_vs_peers.sh
#   BENCH_RUNS=N            timed frames per engine and thread count (default 60, at least 50)
#   BENCH_THREAD_COUNTS="1 2"  thread counts to measure
#   EDGE_MNV2_BENCH_VENV=DIR   the Python virtual environment to create or reuse
#                           (default ${XDG_CACHE_HOME:-~/.cache}/edge-mnv2/bench-venv; outside the repo)
#   PYTHON=python3          the interpreter the environment is made from
#
# What it does:
#   1. creates (first run) or reuses the virtual environment and pip-installs ai-edge-litert,
#      onnxruntime and numpy into it; if that cannot be done it says why and goes on without the
#      peers that are missing;
#   2. builds benches/backbone.rs in the release profile
#      (`cargo bench --no-run`; fat LTO, so the first build takes minutes);
#   3. for each thread count, back to back: the peers (benches/peer/backbone_peers.py: LiteRT with
#      XNNPACK on mobilenet_v2_1.0_224_quant.tflite, onnxruntime f32 on the dequantized backbone,
#      onnxruntime int8 on the ONNX zoo model), then edge-mnv2's default model in every precision;
#   4. prints one table. The raw lines of the run are kept in $OUT (printed at the end).
#
# The models and frames come from ../shared/models (next to the repo root), as for the tests.
set -euo pipefail

cd "$(dirname -- "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
MODELS=$(realpath -m ../shared/models)
RUNS=${BENCH_RUNS:-60}
THREAD_COUNTS=${BENCH_THREAD_COUNTS:-"1 2"}
VENV=${EDGE_MNV2_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-mnv2/bench-venv}
PYTHON=${PYTHON:-python3}
PEER=benches/peer/backbone_peers.py
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$TARGET/backbone_vs_peers.txt
CORES=$(nproc) # before the loop sets OMP_NUM_THREADS, which nproc obeys

if ! [[ $RUNS =~ ^[0-9]+$ ]] || ((RUNS < 50)); then
    echo "error: BENCH_RUNS=$RUNS: at least 50 timed frames per configuration" >&2
    exit 2
fi
if [[ ! -f $MODELS/mobilenet_v2_1.0_224_quant.tflite || ! -d $MODELS/images/rgb224 ]]; then
    echo "error: $MODELS has no mobilenet_v2_1.0_224_quant.tflite or images/rgb224 (see MANIFEST.md there)" >&2
    exit 1
fi
mkdir -p "$TARGET"
: >"$OUT"

# --- 1. the Python peers' environment -------------------------------------------------------
# PEERS_OK=1 when the peer script can run; NO_PEERS says why not.
PEERS_OK=0
NO_PEERS=""
PIP_LOG=$TARGET/backbone_vs_peers.pip.log
venv_has() { # venv_has MODULE...: the environment imports all of them
    local m
    for m in "$@"; do
        "$VENV/bin/python" -c "import $m" >/dev/null 2>&1 || return 1
    done
}
setup_venv() {
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        NO_PEERS="no Python interpreter '$PYTHON' on PATH (set PYTHON=...)"
        return
    fi
    if [[ ! -x $VENV/bin/python ]]; then
        echo "creating the Python environment $VENV" >&2
        if ! "$PYTHON" -m venv "$VENV" >"$PIP_LOG" 2>&1; then
            NO_PEERS="'$PYTHON -m venv $VENV' failed: $(tail -n 1 "$PIP_LOG") (Debian: apt-get install python3-venv)"
            rm -rf -- "$VENV"
            return
        fi
    fi
    if ! venv_has numpy ai_edge_litert onnxruntime; then
        echo "installing ai-edge-litert onnxruntime numpy into $VENV (log: $PIP_LOG)" >&2
        "$VENV/bin/python" -m pip install --quiet --upgrade pip >>"$PIP_LOG" 2>&1 || true
        if ! "$VENV/bin/python" -m pip install --quiet ai-edge-litert onnxruntime numpy >>"$PIP_LOG" 2>&1; then
            # One at a time, so a runtime with no wheel for this platform does not keep out the others.
            local pkg
            for pkg in numpy onnxruntime ai-edge-litert; do
                "$VENV/bin/python" -m pip install --quiet "$pkg" >>"$PIP_LOG" 2>&1 ||
                    echo "warning: pip could not install $pkg for $("$VENV/bin/python" -V 2>&1) on $(uname -m):" \
                        "$(grep -m1 -iE 'error|no matching' "$PIP_LOG" | tail -n 1)" >&2
            done
        fi
    fi
    if ! venv_has numpy; then
        NO_PEERS="numpy is not installed in $VENV (see $PIP_LOG)"
        return
    fi
    local missing=()
    venv_has ai_edge_litert || missing+=(ai-edge-litert)
    venv_has onnxruntime || missing+=(onnxruntime)
    if ((${#missing[@]} == 2)); then
        NO_PEERS="neither ai-edge-litert nor onnxruntime could be installed in $VENV (see $PIP_LOG)"
        return
    fi
    ((${#missing[@]} == 0)) || echo "warning: ${missing[*]} not installed; those rows are skipped" >&2
    PEERS_OK=1
}
setup_venv
[[ $PEERS_OK == 1 ]] || echo "warning: no peers measured: $NO_PEERS" >&2

# --- 2. the edge-mnv2 bench ------------------------------------------------------------------
echo "building benches/backbone.rs (release profile)" >&2
BENCH_BIN=$(cargo bench --bench backbone --no-run --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
if [[ -z $BENCH_BIN || ! -x $BENCH_BIN ]]; then
    echo "error: cargo did not report the backbone bench executable" >&2
    exit 1
fi

# --- 3. the runs, back to back ----------------------------------------------------------------
export TF_CPP_MIN_LOG_LEVEL=2 # LiteRT's "Created TensorFlow Lite XNNPACK delegate" notice
for t in $THREAD_COUNTS; do
    # Every runtime gets the same thread budget; the explicit settings (num_threads,
    # intra_op_num_threads, BENCH_THREADS) are what count, these keep stray pools in line.
    export OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t MKL_NUM_THREADS=$t RAYON_NUM_THREADS=$t
    if [[ $PEERS_OK == 1 ]]; then
        echo "peers, $t thread(s)" >&2
        "$VENV/bin/python" "$PEER" --threads "$t" --runs "$RUNS" --models "$MODELS" \
            2> >(grep -v '^INFO: Created TensorFlow Lite' >&2) | tee -a "$OUT" >/dev/null ||
            echo "warning: the peer script exited with status $? at $t thread(s)" >&2
    fi
    echo "edge-mnv2, $t thread(s)" >&2
    BENCH_THREADS=$t BENCH_RUNS=$RUNS BENCH_DEFAULT_ONLY=1 "$BENCH_BIN" | tee -a "$OUT" | grep -v '^BENCH ' >&2 ||
        echo "warning: the edge-mnv2 bench failed at $t thread(s)" >&2
done

# --- 4. the table -----------------------------------------------------------------------------
echo
echo "backbone latency, batch 1, 224x224 RGB, ${RUNS} timed frames per row (6 golden frames round-robin)"
echo "$(uname -m), $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //'), $CORES cores;" \
    "edge-mnv2 $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src benches 2>/dev/null || echo '+changes')"
if [[ $PEERS_OK == 1 ]]; then
    "$VENV/bin/python" -c 'import ai_edge_litert as a, onnxruntime as o; print(f"ai-edge-litert {a.__version__}, onnxruntime {o.__version__}")' 2>/dev/null ||
        true
fi
echo
{ grep -E '^(PEER|BENCH) ' "$OUT" || true; } | awk '
function field(k,    i, kv) {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) return substr($i, length(k) + 2) }
    return ""
}
{
    engine = field("engine"); prec = field("precision"); t = field("threads")
    name = (engine == "edge-mnv2") ? engine " " prec : engine
    if (engine == "litert") name = "LiteRT (XNNPACK) uint8"
    else if (engine == "ort-f32") name = "onnxruntime f32"
    else if (engine == "ort-int8") name = "onnxruntime int8"
    med = field("median_ms")
    check = field("check"); if (check == "") check = field("cos_litert_min")
    if (engine == "edge-mnv2" && check != "" && check != "na") check = "cos_litert_min=" check
    if (field("status") == "skipped") { med = "skipped"; check = field("reason"); if (check == "") check = "did not load (reason above)" }
    n++; names[n] = name; threads[n] = t; meds[n] = med; checks[n] = check
    if (engine == "litert" && med != "skipped") litert[t] = med
}
END {
    printf "%-26s %7s %10s %9s  %s\n", "engine", "threads", "median ms", "/ LiteRT", "agreement"
    for (t = 1; t <= 64; t++) for (i = 1; i <= n; i++) {
        if (threads[i] != t) continue
        ratio = (meds[i] != "skipped" && (t in litert)) ? sprintf("%.2fx", meds[i] / litert[t]) : "-"
        medtxt = (meds[i] == "skipped") ? "skipped" : sprintf("%.2f", meds[i])
        printf "%-26s %7s %10s %9s  %s\n", names[i], t, medtxt, ratio, checks[i]
    }
}'
echo
if [[ $PEERS_OK != 1 ]]; then
    echo "no peer rows: $NO_PEERS"
fi
echo "agreement: LiteRT/onnxruntime int8: top-1 on the 6 frames vs golden/expected_top5.tsv; edge-mnv2 and"
echo "onnxruntime f32: lowest embedding cosine vs LiteRT's pooled features (golden/features_litert_*)."
echo "LiteRT and the zoo int8 model run their classifier layers too; edge-mnv2 and onnxruntime f32 stop at the pooled features."
echo "raw lines: $OUT"
