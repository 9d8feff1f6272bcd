#!/usr/bin/env bash
# Soak test for `serve` (not part of CI or `cargo test`): streams FRAMES frames (default 10000) from a
# file source through the service and reports frames/s, drops, capture→result latency p50/p99 and the
# process's RSS shortly after start and at the end.
#
#   benches/serve_soak.sh [BIN] [HEAD]      env: FRAMES=10000 SOURCE=DIR|FILE FPS=N
#
# BIN defaults to target/release/edge-mnv2, else target/debug/edge-mnv2. Without HEAD a head is
# trained on hymenoptera/train first (--augment 0). SOURCE defaults to hymenoptera/val, looped.
# Without FPS the folder is replayed as fast as inference takes frames (no drops by design); with
# FPS it is paced like a camera and the single-slot mailbox drops frames under load.
set -euo pipefail
cd "$(dirname "$0")/.."
shared="$(cd ../shared && pwd)"
bin="${1:-}"
if [ -z "$bin" ]; then
  if [ -x target/release/edge-mnv2 ]; then bin=target/release/edge-mnv2; else bin=target/debug/edge-mnv2; fi
fi
frames="${FRAMES:-10000}"
source="${SOURCE:-$shared/datasets/hymenoptera/val}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export EDGE_MNV2_MODELS="$shared/models" EDGE_MNV2_CACHE="$work/cache"
unset RUST_LOG JOURNAL_STREAM

head="${2:-}"
if [ -z "$head" ]; then
  echo "training a head on hymenoptera/train ..." >&2
  "$bin" finetune "$shared/datasets/hymenoptera/train" --out "$work/head" --augment 0 >/dev/null
  head="$work/head"
fi

args=(serve --head "$head" --source "$source" --frames "$frames" --listen 127.0.0.1:0)
[ -n "${FPS:-}" ] && args+=(--fps "$FPS")
echo "binary: $bin ($(file -b "$bin" | cut -d, -f1-2)); source: $source; frames: $frames; fps: ${FPS:-unpaced}" >&2
start=$(date +%s.%N)
"$bin" "${args[@]}" >"$work/lines.jsonl" 2>"$work/log" &
pid=$!
rss() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true; }
rss_first="" rss_start="" rss_end="" rss_max=0
while kill -0 "$pid" 2>/dev/null; do
  r="$(rss)"
  if [ -n "$r" ]; then
    [ -z "$rss_first" ] && rss_first=$r
    # "start": the first sample once 100 frames are classified (backbone loaded, buffers warm).
    if [ -z "$rss_start" ] && [ "$(wc -l <"$work/lines.jsonl")" -ge 100 ]; then rss_start=$r; fi
    rss_end=$r
    [ "$r" -gt "$rss_max" ] && rss_max=$r
  fi
  sleep 1
done
wait "$pid"
end=$(date +%s.%N)

python3 - "$work/lines.jsonl" "$work/log" "$rss_first" "$rss_start" "$rss_end" "$rss_max" "$start" "$end" <<'PY'
import json, re, sys
path, log, rss_first, rss_start, rss_end, rss_max, t0, t1 = sys.argv[1:]
lines = [json.loads(l) for l in open(path)]
if not lines:
    sys.exit("no frame was classified; the service's log:\n" + open(log).read())
# The service's own totals at exit ("stopped: N frames classified, D dropped, F failed; ..."):
# every captured frame was classified, dropped (replaced in the slot), failed to decode, or was
# still in the slot when the service stopped. The last line's `frame` is only the sequence number
# of the last frame classified, and its `dropped` the count at that moment.
m = re.search(r"stopped: (\d+) frames classified, (\d+) dropped, (\d+) failed", open(log).read())
classified, dropped, failed = (int(g) for g in m.groups()) if m else (len(lines), lines[-1]["dropped"], 0)
lat = sorted(l["latency_ms"] for l in lines)
def pct(p):
    return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))]
span = lines[-1]["ts"] - lines[0]["ts"]
print(f"frames classified   {classified}")
print(f"frames captured     {classified + dropped + failed} (+ at most one left in the slot at the stop)")
print(f"frames dropped      {dropped}")
print(f"frames failed       {failed}")
if len(lines) > 1 and span > 0:
    print(f"throughput          {(len(lines) - 1) / span:.1f} frames/s (first to last result)")
else:
    print("throughput          - (fewer than two results)")
print(f"latency p50 / p99   {pct(50):.1f} / {pct(99):.1f} ms (capture to result)")
mib = lambda kb: f"{int(kb) / 1024:.1f}" if kb else "-"
if rss_start:
    print(f"RSS start / end     {mib(rss_start)} / {mib(rss_end)} MiB (max {mib(rss_max)}; start: after 100 frames)")
else:
    print(f"RSS first / end     {mib(rss_first)} / {mib(rss_end)} MiB (max {mib(rss_max)}; fewer than 100 frames, first sample)")
print(f"wall time           {float(t1) - float(t0):.1f} s including backbone load")
PY
tail -n 1 "$work/log"
