#!/usr/bin/env bash
# edge-mnv2 finetune vs. the TF/Keras notebook recipe (benches/peer/keras_finetune.py).
#
# Usage: benches/finetune_vs_keras.sh [DATA]
#   DATA defaults to ../shared/datasets/hymenoptera (relative to the repo root).
#
# Runs, each under /usr/bin/time (wall seconds + peak RSS):
#   a) edge-mnv2 finetune, fresh embedding cache  (first run: decode + backbone + head)
#   b) edge-mnv2 finetune again, same cache       (second run: cached embeddings + head)
#   c) the Keras peer                              (skipped if TensorFlow is not installed)
# then prints a table and the ratios the project targets:
#   keras_wall / edge_first_wall  >= 1.5
#   keras_wall / edge_second_wall >= 20
#   edge_peak_rss / keras_peak_rss <= 0.2
# The Keras peer runs under $EDGE_MNV2_KERAS_PYTHON (default: python3), e.g. a virtual environment
# made with: python3 -m venv ~/.cache/edge-mnv2/keras-venv && ~/.cache/edge-mnv2/keras-venv/bin/pip
# install tensorflow-cpu pillow; then EDGE_MNV2_KERAS_PYTHON=~/.cache/edge-mnv2/keras-venv/bin/python.
# Both tools run with augmentation off, one view (no test-time views) and seed 0 and split DATA the same way, so accuracy and
# macro F1 should agree closely; a large gap means the comparison is not like for like.
set -euo pipefail

# Resolve a DATA given on the command line against the caller's directory, then work from the
# repo root so the binary and the peer script are found wherever this is run from.
if [[ $# -gt 1 ]]; then
    echo "usage: $0 [DATA]" >&2
    exit 2
fi
if [[ $# -eq 1 ]]; then
    DATA=$(realpath -m -- "$1")
fi
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."
DATA=${DATA:-$(realpath -m ../shared/datasets/hymenoptera)}

BIN=target/release/edge-mnv2
PEER=benches/peer/keras_finetune.py
TIME=/usr/bin/time

if [[ ! -x $TIME ]]; then
    echo "error: $TIME not found (GNU time measures wall time and peak RSS): apt-get install time" >&2
    exit 1
fi
if [[ ! -x $BIN ]]; then
    echo "error: $BIN not found: run 'cargo build --release' first" >&2
    exit 1
fi
if [[ ! -d $DATA ]]; then
    echo "error: dataset folder $DATA not found" >&2
    exit 1
fi

TMP=$(mktemp -d)
trap 'rm -rf -- "$TMP"' EXIT
echo "data: $DATA" >&2

# run NAME CMD...: runs CMD under GNU time; stdout -> $TMP/NAME.out, stderr -> $TMP/NAME.err,
# "wall_s peak_rss_kib" -> last line of $TMP/NAME.time. Returns CMD's exit code.
run() {
    local name=$1
    shift
    echo "running $name: $*" >&2
    local rc=0
    "$TIME" -f '%e %M' -o "$TMP/$name.time" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" || rc=$?
    return "$rc"
}

fail() {
    echo "error: $1 failed (exit $2); its stderr:" >&2
    tail -n 20 "$TMP/$1.err" >&2
    exit 1
}

rc=0
EDGE_MNV2_CACHE=$TMP/cache run edge_first \
    "$BIN" finetune "$DATA" --out "$TMP/a" --augment 0 --views 1 --seed 0 --json || rc=$?
[[ $rc -eq 0 ]] || fail edge_first "$rc"

EDGE_MNV2_CACHE=$TMP/cache run edge_second \
    "$BIN" finetune "$DATA" --out "$TMP/b" --augment 0 --views 1 --seed 0 --json || rc=$?
[[ $rc -eq 0 ]] || fail edge_second "$rc"

run keras "${EDGE_MNV2_KERAS_PYTHON:-python3}" "$PEER" --data "$DATA" || rc=$?
if [[ $rc -eq 3 ]]; then
    echo "skipping the Keras peer: $(tail -n 1 "$TMP/keras.err")" >&2
    echo "  (install it with: pip install tensorflow pillow)" >&2
    rm -f "$TMP/keras.out"
elif [[ $rc -ne 0 ]]; then
    fail keras "$rc"
fi

# Parse the JSON reports and /usr/bin/time lines, print the table and the ratios.
# (A quoted here-doc as the -c program, so the Python needs no shell escaping.)
python3 -c "$(cat <<'PY'
import json, os, sys

tmp = sys.argv[1]

def report(name):
    """The JSON report on the tool's stdout: the whole output, or else its last JSON line."""
    path = os.path.join(tmp, name + ".out")
    if not os.path.exists(path):
        return None
    text = open(path).read()
    try:
        return json.loads(text)
    except ValueError:
        for line in reversed(text.splitlines()):
            try:
                return json.loads(line)
            except ValueError:
                pass
    sys.exit(f"error: no JSON report on the stdout of {name}")

def measured(name):
    """(wall s, peak RSS MiB) from GNU time (its last line; an earlier one may note the exit code)."""
    wall, kib = open(os.path.join(tmp, name + ".time")).read().split("\n")[-2].split()
    return float(wall), int(kib) / 1024

rows = []
for name in ("edge_first", "edge_second", "keras"):
    r = report(name)
    if r is None:
        continue
    if name == "keras":
        acc, f1 = r["test_accuracy"], r["test_macro_f1"]
        tool = f"keras (TF {r['tf_version']})"
    else:
        acc, f1 = r["test"]["accuracy"], r["test"]["macro_f1"]
        tool = "edge-mnv2 " + name.split("_")[1] + " run"
    wall, rss = measured(name)
    rows.append((name, tool, wall, rss, acc, f1, r))

print(f"{'tool':<24} {'wall s':>8} {'peak RSS MiB':>13} {'test acc':>9} {'macro F1':>9}")
for _, tool, wall, rss, acc, f1, _ in rows:
    print(f"{tool:<24} {wall:>8.2f} {rss:>13.1f} {acc:>9.4f} {f1:>9.4f}")
by = {row[0]: row for row in rows}
if "keras" in by:
    k = by["keras"][6]
    print(f"keras split: train {k['n_train']} / val {k['n_val']} / test {k['n_test']}; "
          f"embed {k['embed_s']:.2f} s, train {k['train_s']:.2f} s, {k['epochs_run']} epochs")
print()

if "keras" not in by:
    print("ratios: n/a (Keras peer skipped)")
    sys.exit(0)
kw, krss = by["keras"][2], by["keras"][3]
ratios = [
    ("speed-up, first run   keras_wall / edge_first_wall", kw / by["edge_first"][2], ">=", 1.5),
    ("speed-up, cached run  keras_wall / edge_second_wall", kw / by["edge_second"][2], ">=", 20),
    ("memory  edge_peak_rss / keras_peak_rss", max(by["edge_first"][3], by["edge_second"][3]) / krss, "<=", 0.2),
]
for label, value, op, target in ratios:
    ok = value >= target if op == ">=" else value <= target
    print(f"{label:<52} {value:8.3f}  (target {op} {target}: {'met' if ok else 'NOT met'})")
PY
)" "$TMP"
