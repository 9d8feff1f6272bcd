#!/usr/bin/env bash
# Runs two edge-mnv2 binaries through the same commands on the same inputs and diffs what each
# printed and wrote: a refactor must leave every output byte-identical. Not part of CI (a dataset
# finetune per binary); run by hand before and after a change that should not change behaviour:
#   bash .ci/compare-outputs.sh OLD_BINARY NEW_BINARY [WORK_DIR]
# Times, timestamps, latencies and the temporary paths are masked; everything else is compared.
# Each binary gets an empty embedding cache and HOME of its own, so neither reads the other's;
# both run from the checkout (where the models and calibration frames are found), under the
# same file name (usage lines print it).
set -uo pipefail
old="$(realpath "$1")"
new="$(realpath "$2")"
work="${3:-$(mktemp -d)}"
root="$(cd "$(dirname "$0")/.." && pwd)"
shared="$root/../shared"
hym="$shared/datasets/hymenoptera"
images="$shared/models/images"

# One command, its stdout, stderr and exit code, in $out/NAME.{out,err,rc}.
run() {
  local name="$1"
  shift
  (cd "$root" && timeout 600 "$bin" "$@" >"$out/$name.out" 2>"$out/$name.err" </dev/null)
  echo $? >"$out/$name.rc"
}

# `serve --frames N` with the times its JSON lines carry removed.
serve_lines() {
  local name="$1"
  shift
  run "$name" serve "$@"
  sed -E -i 's/"(ts|latency_ms)":[^,}]*,?//g' "$out/$name.out"
}

commands() {
  local bin="$1" out="$2"
  mkdir -p "$out/home"
  export HOME="$out/home" XDG_CACHE_HOME="$out/home/.cache" EDGE_MNV2_CACHE="$out/home/.cache/emb"
  unset EDGE_MNV2_CALIBRATION 2>/dev/null || true
  run noargs
  run version --version
  run help --help
  for c in classify embed finetune evaluate predict models serve push-head capture calibrate; do
    run "help-$c" "$c" --help
  done
  run models-help models fetch --help
  local jpgs=("$hym/val/ants"/1*.jpg)
  run classify classify "${jpgs[@]:0:3}" "$images"/*.bmp
  run classify-json classify --json -k 3 "${jpgs[@]:0:3}" "$images"/*.bmp
  run classify-missing classify "$images/no-such.jpg"
  for p in int8 f32 f16; do run "classify-$p" classify --precision "$p" --json "$images"/*.bmp; done
  run classify-bad classify /etc/passwd
  run classify-bad-precision classify --precision f64 "$images"/cat.bmp
  run embed-json embed --json "$images"/cat.bmp
  run embed-out embed --out "$out/emb.txt" "$images"/cat.bmp "$images"/bird.bmp
  sha256sum <"$out/emb.txt" >"$out/embed-out.file"
  run models models
  run models-json models list --json
  run fetch-unknown models fetch no-such-model
  run finetune-json finetune "$hym" --out "$out/head" --json
  run finetune-text finetune "$hym" --out "$out/head-text" --epochs 5
  for d in head head-text; do
    (cd "$out/$d" && for f in $(ls | sort); do
      # The reports hold times: compared below, masked.
      case "$f" in report.*) continue ;; esac
      [ -f "$f" ] && printf '%s %s\n' "$(sha256sum <"$f" | cut -c1-64)" "$f"
    done) >"$out/$d.files"
    for r in report.json report.md; do cp "$out/$d/$r" "$out/$d-$r" 2>/dev/null; done
  done
  run predict predict --head "$out/head" "$hym/val/ants"/*.jpg "$hym/val/bees"/*.jpg
  run predict-json predict --head "$out/head" --json "$hym/val/ants"/*.jpg
  run evaluate evaluate --head "$out/head" "$hym/val"
  run evaluate-json evaluate --head "$out/head" --json "$hym/val"
  serve_lines serve-frames --head "$out/head" --source "$hym/val/bees" --frames 6 --no-http
  run serve-no-head serve --head "$out/missing" --source "$hym/val/bees" --frames 1 --no-http
  run serve-bad-threshold serve --head "$out/head" --threshold 2 --frames 1 --no-http
  printf 'head = "%s"\nsource = "%s"\nthreshold = 0.6\nviews = 2\nframes = 4\nno_http = true\n' \
    "$out/head" "$hym/val/ants" >"$out/serve.toml"
  serve_lines serve-config --config "$out/serve.toml"
  serve_lines serve-config-flags --config "$out/serve.toml" --threshold 0 --frames 3
  run serve-config-bad serve --config "$out/serve.toml" --no-such-flag
  printf 'threshold = "high"\n' >"$out/bad.toml"
  run serve-config-bad-value serve --config "$out/bad.toml" --frames 1 --no-http
  printf 'no_such_key = 1\n' >"$out/unknown.toml"
  run serve-config-unknown-key serve --config "$out/unknown.toml" --frames 1 --no-http
  http_answers
  mkdir -p "$out/captured"
  run capture capture --source "$hym/val/ants" --class ants --count 3 "$out/captured"
  (cd "$out/captured" && find . -type f | sort | xargs sha256sum) >"$out/capture.files"
}

# HTTP: serve on a free loopback port, the answers of each endpoint (headers and body), then a
# clean stop. A body's length follows its latency's digits, so lengths are masked too. Counters, times and dates vary from run to run and are masked; labels are not.
http_answers() {
  local port pid i
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  (cd "$root" && exec "$bin" serve --head "$out/head" --source "$hym/val/bees" --fps 2 \
    --listen "127.0.0.1:$port" >"$out/http-serve.lines" 2>"$out/http-serve.log") &
  pid=$!
  for i in $(seq 1 240); do
    curl -fs "http://127.0.0.1:$port/latest" 2>/dev/null | grep -q label && break
    sleep 0.5
  done
  local url="http://127.0.0.1:$port"
  http() { curl -s -i "$@" | sed -E -e 's/^(date|Date): .*/\1: D/' -e 's/\r$//'; }
  {
    echo "## healthz"; http "$url/healthz"
    echo "## latest"; http "$url/latest"
    echo "## metrics"; http "$url/metrics"
  } | sed -E -e 's/[0-9]+(\.[0-9]+)?(e-?[0-9]+)?/N/g' >"$out/http.counters"
  {
    echo "## 404"; http "$url/no-such-page"
    echo "## 405"; http -X DELETE "$url/healthz"
    echo "## classify"; http --data-binary @"$hym/val/ants/$(ls "$hym/val/ants" | sort | head -1)" "$url/classify"
    echo "## classify a bad image"; http --data-binary @/etc/passwd "$url/classify"
    echo "## reload"; http -X POST "$url/reload"
  } | sed -E -e 's/"(ts|latency_ms)":[^,}]*,?//g' -e 's/^Content-Length: .*/Content-Length: N/' >"$out/http.answers"
  kill -TERM "$pid"
  wait "$pid"
  echo "exit $?" >>"$out/http.answers"
  sed -E -i 's/"(ts|latency_ms)":[^,}]*,?//g' "$out/http-serve.lines"
  # Replay at 2 frames/s: how many frames ran is timing; what each one said is not.
  sort -u "$out/http-serve.lines" -o "$out/http-serve.lines"
  rm -f "$out/http-serve.log"
}

for side in old new; do
  mkdir -p "$work/$side/bin"
  cp "${!side}" "$work/$side/bin/edge-mnv2"
  bin="$work/$side/bin/edge-mnv2"
  echo "== $side: ${!side}"
  commands "$bin" "$work/$side"
done

# Masks: the work folder (each side's own), times, and the report's wall-clock fields.
mask() {
  sed -E -e "s#$work/(old|new)#WORK#g" \
    -e 's/[0-9]+(\.[0-9]+)? ?(ms|s)\b/TIME/g' \
    -e 's/^\[[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]+Z /[DATE] /' \
    -e 's/"(seconds|[a-z]+_s|created|trained_at|ts|latency_ms)": ?[^,}]*/"\1":T/g' "$1"
}
status=0
for f in $(cd "$work/old" && ls | sort); do
  [ -f "$work/old/$f" ] || continue
  if ! diff -q <(mask "$work/old/$f") <(mask "$work/new/$f") >/dev/null 2>&1; then
    echo "DIFFERS: $f"
    diff <(mask "$work/old/$f") <(mask "$work/new/$f") | head -20
    status=1
  fi
done
[ "$status" = 0 ] && echo "every output identical ($(ls "$work/old" | wc -l) files compared, in $work)"
exit "$status"
