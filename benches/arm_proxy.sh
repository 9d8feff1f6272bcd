#!/usr/bin/env bash
# benches/arm_proxy.sh: guest instructions per MobileNetV2 frame on emulated Raspberry Pi cores,
# edge-mnv2 (this tree) against LiteRT (XNNPACK, its aarch64 wheel, the same .tflite), counted by a
# TCG plugin under qemu-user. No ARM board needed; not part of CI (setup downloads an arm64 Python
# and the LiteRT wheel; the two release builds take tens of minutes on 2 cores).
#
#   benches/arm_proxy.sh            # all of it: setup, build, the table, the int8 frame by function
#   benches/arm_proxy.sh setup      # qemu-user, cross gcc, plugin, arm64 Python + LiteRT wheels, frames
#   benches/arm_proxy.sh build      # unstripped aarch64 + armv7 release builds of this working tree
#   benches/arm_proxy.sh table      # the table (and $W/results.tsv) from the builds
#   benches/arm_proxy.sh profile BIN [int8|f32] [cpu]   # per-function split of a frame (unstripped BIN)
#
# Run from anywhere; ../shared (models, frames) sits beside the repository. Env: W (work dir,
# default /tmp/edge-mnv2-arm-proxy; also the builds' target dir, so the repo's target/ is left
# alone), MODELS (../shared/models), BIN64 / BIN32 (edge-mnv2 for aarch64 / armv7; default the
# builds'; BIN32= skips armv7), CPUS ("cortex-a72 cortex-a76 max"), N1/N2 (3/8 frames: per frame =
# (count(N2) - count(N1)) / (N2 - N1), so start-up and model load cancel), FAST=1 (build without
# fat LTO, 16 codegen units: quicker, and a few percent off the shipped profile's counts).
#
# A core's identity reaches the guest two ways: AT_HWCAP comes from qemu's -cpu; /proc/cpuinfo
# (which qemu 7.2 passes through from the x86 host) is faked under the -L prefix, so XNNPACK's
# cpuinfo and tract see an A72 (Pi 4) or A76 (Pi 5) part number and features. armv7 runs under
# `qemu-arm -cpu cortex-a7` (qemu-arm 7.2 has no cortex-a72; the same ARMv7+NEON ISA for what the
# binary can use) with TRACT_CPU_ISA=+neon, as CI does. Instructions are not cycles: compare
# engines on one core model, not across them.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${W:-/tmp/edge-mnv2-arm-proxy}
PROJECT=$PWD
MODELS=$(cd "${MODELS:-$PROJECT/../shared/models}" && pwd)
TARGET=$W/target
BIN64=${BIN64:-$TARGET/aarch64-unknown-linux-gnu/release/edge-mnv2}
BIN32=${BIN32-$TARGET/armv7-unknown-linux-gnueabihf/release/edge-mnv2}
CPUS=${CPUS:-cortex-a72 cortex-a76 max}
N1=${N1:-3}; N2=${N2:-8}
S64=$W/sysroot64; S32=$W/sysroot32; PLUGIN=$W/tbcount.so
export EDGE_MNV2_MODELS=$MODELS
# The helper files, written into $W by setup: the TCG plugin, the BMP writer, the LiteRT driver and
# the per-function split.
write_helpers() {
  mkdir -p "$W"
  cat > "$W/tbcount.c" <<'C_EOF'
/* Guest instruction counter for qemu-user (TCG plugin API v1, QEMU 7.2).
 * Counts every executed guest instruction (per translation block, inline add), and how many of
 * them are SIMD/FP instructions (AArch64: SIMD&FP data processing, SVE, loads/stores of V registers;
 * A32/T32: NEON/VFP encodings) and 8-bit dot products (SDOT/UDOT/xMMLA). Args: arch=a64|a32, dump=FILE (per-block vaddr,n,simd,count). */
#include <stdint.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t {
    const char *target_name;
    struct { int min; int cur; } version;
    bool system_emulation;
    union { struct { int smp_vcpus; int max_vcpus; } system; };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t, void *);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, qemu_plugin_vcpu_tb_trans_cb_t);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, enum qemu_plugin_op, void *, uint64_t);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, qemu_plugin_udata_cb_t, void *);
void qemu_plugin_outs(const char *);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

typedef struct Block { uint64_t vaddr; uint64_t count; uint32_t n, simd, dot; } Block;
enum { CHUNK = 65536 };
static Block **chunks; static size_t nchunks, used = CHUNK;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int a32 = 0;
static const char *dump;

static int is_simd_a64(uint32_t i) {
    uint32_t op0 = (i >> 25) & 0xf;
    if ((op0 & 0x7) == 0x7) return 1;                 /* x111: SIMD & FP data processing */
    if (op0 == 0x2) return 1;                          /* 0010: SVE (qemu's `max` has it) */
    if ((op0 & 0x5) == 0x4 && (i >> 26 & 1)) return 1; /* x1x0 loads/stores with V=1 */
    return 0;
}
/* SDOT/UDOT (vector, by element) and SMMLA/UMMLA/USMMLA: the 8-bit dot-product instructions. */
static int is_dot_a64(uint32_t i) {
    return (i & 0x9FE0FC00) == 0x0E809400 || (i & 0x9FC0F400) == 0x0F80E000 || (i & 0xDFE0F400) == 0x4E80A400;
}
static int is_simd_a32(uint32_t i, size_t size) {
    if (size == 4 && (i >> 25) == 0x79) return 1;               /* NEON data processing (A32) */
    if (size == 4 && (i >> 24) == 0xf4 && !(i >> 20 & 1)) return 1; /* NEON element/struct ld/st */
    if (size == 4 && (i >> 28) != 0xf) {
        uint32_t cp = (i >> 8) & 0xf;
        if ((cp == 10 || cp == 11) && (((i >> 24) & 0xf) == 0xe || ((i >> 25) & 7) == 6)) return 1; /* VFP */
    }
    return 0;
}

static void trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    uint32_t simd = 0, dot = 0;
    int thumb = (a32 == 2);
    if (a32 == 1)  /* a block with any 16-bit instruction is Thumb (Debian's armhf libc is T32) */
        for (size_t k = 0; k < n; k++)
            if (qemu_plugin_insn_size(qemu_plugin_tb_get_insn(tb, k)) == 2) { thumb = 1; break; }
    for (size_t k = 0; k < n; k++) {
        struct qemu_plugin_insn *in = qemu_plugin_tb_get_insn(tb, k);
        size_t sz = qemu_plugin_insn_size(in);
        uint32_t w = 0;
        memcpy(&w, qemu_plugin_insn_data(in), sz < 4 ? sz : 4);
        if (!a32) { simd += is_simd_a64(w); dot += is_dot_a64(w); continue; }
        if (!thumb) { simd += is_simd_a32(w, sz); continue; }
        if (sz != 4) continue;
        /* T32: first halfword is the high half of the encoding. */
        w = (w << 16) | (w >> 16);
        uint32_t top = w >> 24, cp = (w >> 8) & 0xf;
        if ((top & 0xef) == 0xef) simd++;                         /* NEON data processing */
        else if (top == 0xf9 && !(w >> 20 & 1)) simd++;           /* NEON element/struct ld/st */
        else if ((cp == 10 || cp == 11) && ((top & 0xef) == 0xee || ((w >> 25) & 0x77) == 0x76)) simd++; /* VFP */
    }
    pthread_mutex_lock(&lock);
    if (used == CHUNK) {
        chunks = realloc(chunks, (nchunks + 1) * sizeof *chunks);
        chunks[nchunks++] = calloc(CHUNK, sizeof(Block));
        used = 0;
    }
    Block *b = &chunks[nchunks - 1][used++];
    pthread_mutex_unlock(&lock);
    b->vaddr = qemu_plugin_tb_vaddr(tb); b->n = (uint32_t)n; b->simd = simd; b->dot = dot;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->count, 1);
}

static void done(qemu_plugin_id_t id, void *p) {
    (void)id; (void)p;
    unsigned __int128 insns = 0, simd = 0, blocks = 0, dot = 0;
    FILE *f = dump ? fopen(dump, "w") : NULL;
    for (size_t c = 0; c < nchunks; c++) {
        size_t lim = (c == nchunks - 1) ? used : CHUNK;
        for (size_t k = 0; k < lim; k++) {
            Block *b = &chunks[c][k];
            insns += (unsigned __int128)b->n * b->count;
            simd += (unsigned __int128)b->simd * b->count;
            dot += (unsigned __int128)b->dot * b->count;
            blocks += b->count;
            if (f && b->count) fprintf(f, "%llx %u %u %llu\n", (unsigned long long)b->vaddr, b->n, b->simd, (unsigned long long)b->count);
        }
    }
    if (f) fclose(f);
    char buf[256];
    snprintf(buf, sizeof buf, "tbcount insns %llu simd %llu blocks %llu dot %llu\n",
             (unsigned long long)insns, (unsigned long long)simd, (unsigned long long)blocks,
             (unsigned long long)dot);
    qemu_plugin_outs(buf);
    const char *out = getenv("TBCOUNT_OUT");
    if (out) { FILE *o = fopen(out, "w"); if (o) { fputs(buf, o); fclose(o); } }
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "arch=a32")) a32 = 1;
        else if (!strcmp(argv[i], "arch=t32")) a32 = 2;
        else if (!strncmp(argv[i], "dump=", 5)) dump = argv[i] + 5;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, trans);
    qemu_plugin_register_atexit_cb(id, done, NULL);
    return 0;
}
C_EOF
  cat > "$W/rgb2bmp.py" <<'PY_EOF'
# Raw 224x224 RGB frames (shared/models/images/rgb224) -> 24-bit BMPs, so `embed` decodes and
# resizes nothing (fit() is a clone at 224x224): a frame's count is the backbone's plus a copy.
import os, struct, sys
src, dst = sys.argv[1], sys.argv[2]
for f in sorted(os.listdir(src)):
    if not f.endswith(".rgb"): continue
    b = open(os.path.join(src, f), "rb").read(); w = h = 224; assert len(b) == w * h * 3
    rows = []
    for y in range(h - 1, -1, -1):
        r = bytearray(b[y * w * 3:(y + 1) * w * 3]); r[0::3], r[2::3] = r[2::3], r[0::3]; rows.append(bytes(r))
    px = b"".join(rows)
    hdr = b"BM" + struct.pack("<IHHI", 54 + len(px), 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(px), 2835, 2835, 0, 0)
    open(os.path.join(dst, f[:-4] + ".bmp"), "wb").write(hdr + px)
PY_EOF
  cat > "$W/litert_frames.py" <<'PY_EOF'
# LiteRT (XNNPACK) on the uint8 MobileNetV2: load, allocate, then N invokes on 224x224 RGB frames.
import os, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
models, n = sys.argv[1], int(sys.argv[2])
rgb = os.path.join(models, "images", "rgb224")
frames = [np.fromfile(os.path.join(rgb, f), dtype=np.uint8).reshape(1, 224, 224, 3)
          for f in sorted(os.listdir(rgb)) if f.endswith(".rgb")]
it = Interpreter(model_path=os.path.join(models, "mobilenet_v2_1.0_224_quant.tflite"), num_threads=1)
it.allocate_tensors()
inp = it.get_input_details()[0]["index"]
out = it.get_output_details()[0]["index"]
for i in range(n):
    it.set_tensor(inp, frames[i % len(frames)])
    it.invoke()
if n:
    print("top1", int(np.argmax(it.get_tensor(out))), "frames", n)
PY_EOF
  cat > "$W/symbols.py" <<'PY_EOF'
# One frame's guest instructions by function: per-block dumps of two runs (N1 and N2 frames) of an
# unstripped binary, mapped onto its symbols; the load base of the PIE is found from the blocks.
import bisect, collections, os, subprocess, sys
binary, d1, d2, frames = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
nm = os.environ.get("NM", "aarch64-linux-gnu-nm")
syms = []
for line in subprocess.run([nm, "-C", "--defined-only", "-n", binary], capture_output=True, text=True).stdout.splitlines():
    parts = line.split(" ", 2)
    if len(parts) == 3 and parts[1] in "tTwW":
        syms.append((int(parts[0], 16), parts[2]))
syms.sort(); starts = [a for a, _ in syms]
lo, hi = starts[0], starts[-1]
def load(path):
    blocks = []
    for line in open(path):
        a, n, s, c = line.split(); blocks.append((int(a, 16), int(n) * int(c), int(s) * int(c)))
    return blocks
b1, b2 = load(d1), load(d2)
def inside(base, blocks):
    return sum(i for a, i, _ in blocks if lo <= a - base < hi)
# qemu-user loads a PIE at 0x5500000000 (aarch64) or 0x40000000 (arm).
base = max([0, 0x5500000000, 0x40000000, 0x4000000000, 0x555555554000], key=lambda b: inside(b, b2))
def by_fn(blocks):
    ins, simd = collections.Counter(), collections.Counter()
    for a, i, s in blocks:
        off = a - base
        if lo <= off < hi:
            name = syms[bisect.bisect_right(starts, off) - 1][1]
        else:
            name = "(outside the binary: libc, vdso)"
        ins[name] += i; simd[name] += s
    return ins, simd
(i1, s1), (i2, s2) = by_fn(b1), by_fn(b2)
total = (sum(i2.values()) - sum(i1.values())) / frames
print(f"load base {base:#x}; per frame: {total/1e6:.1f} M instructions")
rows = sorted(((i2[k] - i1[k]) / frames, (s2[k] - s1[k]) / frames, k) for k in i2)
for ins, simd, name in reversed(rows[-25:]):
    print(f"{ins/1e6:9.2f} M {100*ins/total:5.1f}%  simd/fp {100*simd/max(ins,1):5.1f}%  {name[:150]}")
PY_EOF
}

setup() {
  mkdir -p "$W"
  if ! command -v qemu-aarch64 >/dev/null || ! command -v arm-linux-gnueabihf-gcc >/dev/null; then
    while pgrep -x apt-get >/dev/null || pgrep -x dpkg >/dev/null; do sleep 20; done
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user \
      gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
  fi
  write_helpers
  # The plugin (QEMU 7.2 = plugin API v1).
  gcc -O2 -shared -fPIC -fvisibility=hidden -Wall -o "$PLUGIN" "$W/tbcount.c"
  # arm64 Python 3.11 from Debian, through a private apt configuration (no dpkg --add-architecture).
  local A=$W/apt
  if [ ! -x "$S64/usr/bin/python3.11" ]; then
    mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/state" "$A/none"; : > "$A/state/status"
    for s in bookworm bookworm-updates; do
      echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $s main"
    done > "$A/sources.list"
    echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main" >> "$A/sources.list"
    cat > "$A/apt.conf" <<CONF
APT::Architecture "arm64"; APT::Architectures { "arm64"; };
Dir::Etc::SourceList "$A/sources.list"; Dir::Etc::SourceParts "$A/none";
Dir::Etc::Preferences "$A/none"; Dir::Etc::PreferencesParts "$A/none";
Dir::State "$A/state"; Dir::State::Lists "$A/lists"; Dir::State::Status "$A/state/status";
Dir::Cache "$A/cache"; Debug::NoLocking "true";
CONF
    APT_CONFIG=$A/apt.conf apt-get update -qq
    (cd "$A/cache/archives" && APT_CONFIG=$A/apt.conf apt-get install -y -qq --download-only \
      --no-install-recommends python3.11 libstdc++6)
    mkdir -p "$S64"; for d in "$A"/cache/archives/*.deb; do dpkg -x "$d" "$S64"; done
  fi
  # LiteRT 2.3.0 and numpy wheels for aarch64 / CPython 3.11, unpacked onto PYTHONPATH.
  if [ ! -d "$W/site/ai_edge_litert" ]; then
    mkdir -p "$W/wheels" "$W/site"
    pip download -q -d "$W/wheels" --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_27_aarch64 \
      --platform manylinux_2_28_aarch64 ai-edge-litert==2.3.0 "numpy<2.3"
    for w in "$W"/wheels/*.whl; do unzip -o -q "$w" -d "$W/site"; done
  fi
  # armhf prefix: the cross libc plus a fake /proc/cpuinfo.
  mkdir -p "$S32/proc"; ln -sfn /usr/arm-linux-gnueabihf/lib "$S32/lib"
  # 224x224 BMPs of the golden frames: `embed` then decodes a BMP and resizes nothing.
  mkdir -p "$W/frames"; python3 "$W/rgb2bmp.py" "$MODELS/images/rgb224" "$W/frames"
}

# Unstripped release builds of this working tree (the shipped profile with strip off, or FAST=1),
# into $W/target. No RUSTFLAGS: .cargo/config.toml's armv7 flags (NEON) must apply.
build() {
  rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf >/dev/null
  local fast=()
  [ "${FAST:-0}" = 1 ] && fast=(CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16)
  env -u RUSTFLAGS ${fast[@]+"${fast[@]}"} CARGO_TARGET_DIR="$TARGET" CARGO_PROFILE_RELEASE_STRIP=false \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc \
    bash -c 'nice -n 19 cargo build --locked --release --target aarch64-unknown-linux-gnu &&
      nice -n 19 cargo build --locked --release --target armv7-unknown-linux-gnueabihf'
}

# /proc/cpuinfo of a Pi 4 (A72) or Pi 5 (A76; also used for qemu's `max`) under prefix $1.
fake_cpuinfo() {
  local prefix=$1 cpu=$2 part var rev feat p
  case $cpu in
    cortex-a72) part=0xd08; var=0x0; rev=3; feat="fp asimd evtstrm crc32 cpuid" ;;
    armv7) part=0xd08; var=0x0; rev=3
      feat="half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32" ;;
    *) part=0xd0b; var=0x4; rev=1
      feat="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
  esac
  mkdir -p "$prefix/proc"; : > "$prefix/proc/cpuinfo"
  for p in 0 1; do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: %s\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %d\n\n' \
      $p "$feat" "$([ "$cpu" = armv7 ] && echo 7 || echo 8)" $var $part $rev >> "$prefix/proc/cpuinfo"
  done
}

frames() { ls "$W"/frames/*.bmp | awk -v n="$1" '{f[NR]=$0} END{for(i=0;i<n;i++) print f[i%NR+1]}'; }

# count ENGINE CPU N: guest instructions (and SIMD/FP ones) of one whole run; fails if the run does.
count() {
  local engine=$1 cpu=$2 n=$3 out=$W/count.$$ plug=$PLUGIN
  case $engine in
    litert) PYTHONPATH=$W/site TBCOUNT_OUT=$out nice -n 10 qemu-aarch64 -cpu "$cpu" -L "$S64" \
              -plugin "$plug" "$S64/usr/bin/python3.11" "$W/litert_frames.py" "$MODELS" "$n" >/dev/null 2>&1 ;;
    int8|f32|f16) TBCOUNT_OUT=$out nice -n 10 qemu-aarch64 -cpu "$cpu" -L "$S64" -plugin "$plug" \
              "$BIN64" embed --precision "$engine" $(frames "$n") >/dev/null || { rm -f "$out"; return 1; } ;;
    armv7-int8|armv7-f32) TRACT_CPU_ISA=+neon TBCOUNT_OUT=$out nice -n 10 qemu-arm -cpu "$cpu" -L "$S32" \
              -plugin "$plug,arch=a32" "$BIN32" embed --precision "${engine#armv7-}" $(frames "$n") >/dev/null || { rm -f "$out"; return 1; } ;;
  esac
  awk '{print $3, $5, $9}' "$out"; rm -f "$out"
}

# The table: aarch64 int8/f32/f16 and LiteRT on each of $CPUS, armv7 int8/f32 on cortex-a7, each
# with its ratio to LiteRT on the same core model (armv7's to LiteRT's on the A72).
table() {
  local res=$W/results.tsv cpu engine
  echo -e "engine\tcpu\tN1\tinsns_N1\tN2\tinsns_N2\tMinsn_per_frame\tsimd_fp_share\tM_dot_per_frame" > "$res"
  row() {
    local c1 c2
    # f16 is refused on a core without FP16 arithmetic (the A72): a row that says so.
    if ! c1=$(count "$1" "$2" "$N1") || ! c2=$(count "$1" "$2" "$N2") || [ -z "$c1" ]; then
      echo -e "$1\t$2\t$N1\t-\t$N2\t-\trefused\t-\t-" >> "$res"; return
    fi
    read -r i1 s1 t1 <<<"$c1"; read -r i2 s2 t2 <<<"$c2"
    awk -v e="$1" -v c="$2" -v n1="$N1" -v n2="$N2" -v i1="$i1" -v i2="$i2" -v s1="$s1" -v s2="$s2" -v t1="$t1" -v t2="$t2" \
      'BEGIN{d=(i2-i1)/(n2-n1); printf "%s\t%s\t%d\t%.0f\t%d\t%.0f\t%.1f\t%.3f\t%.2f\n", e, c, n1, i1, n2, i2, d/1e6, (s2-s1)/(i2-i1), (t2-t1)/(n2-n1)/1e6}' >> "$res"
  }
  for cpu in $CPUS; do
    fake_cpuinfo "$S64" "$cpu"
    for engine in litert int8 f32 f16; do row "$engine" "$cpu"; done
  done
  if [ -n "$BIN32" ]; then
    fake_cpuinfo "$S32" armv7
    for engine in armv7-int8 armv7-f32; do row "$engine" cortex-a7; done
  fi
  echo "guest instructions per frame (M), 1 thread; in brackets the ratio to LiteRT on the same core"
  echo "(armv7: to LiteRT's aarch64 count on the A72); simd = share of SIMD/FP instructions"
  awk -F'\t' 'NR>1{v[$1" "$2]=$7; s[$1" "$2]=$8; if (!($1 in seen)) {seen[$1]=1; e[++ne]=$1}; if (!($2 in cs)) {cs[$2]=1; c[++nc]=$2}}
    END{printf "%-11s", "engine"; for (j=1;j<=nc;j++) printf " | %-24s", c[j]; print "";
      for (i=1;i<=ne;i++) {printf "%-11s", e[i];
        for (j=1;j<=nc;j++) {k=e[i]" "c[j]; ref="litert "(c[j]=="cortex-a7" ? "cortex-a72" : c[j]);
          if (!(k in v)) cell=""; else if (v[k]=="refused") cell="refused";
          else if ((ref in v) && v[ref]+0>0) cell=sprintf("%.1f (%.2fx) simd %.0f%%", v[k], v[k]/v[ref], 100*s[k]);
          else cell=sprintf("%.1f", v[k]);
          printf " | %-24s", cell}
        print ""}}' "$res"
}

# profile BIN [PRECISION] [CPU]: one frame's instructions by function (N2 minus N1 frames), from a
# per-block dump of an unstripped aarch64 or armv7 build.
profile() {
  local bin=$1 prec=${2:-int8} cpu=${3:-} n
  if [ "$(od -An -tx1 -j4 -N1 "$bin" | tr -d ' ')" = 01 ]; then  # ELF32: armv7
    cpu=${cpu:-cortex-a7}; fake_cpuinfo "$S32" armv7
    for n in "$N1" "$N2"; do
      TRACT_CPU_ISA=+neon TBCOUNT_OUT=/dev/null nice -n 10 qemu-arm -cpu "$cpu" -L "$S32" \
        -plugin "$PLUGIN,arch=a32,dump=$W/blocks.$n" "$bin" embed --precision "$prec" $(frames "$n") >/dev/null
    done
    NM=arm-linux-gnueabihf-nm python3 "$W/symbols.py" "$bin" "$W/blocks.$N1" "$W/blocks.$N2" "$((N2 - N1))"
    return
  fi
  cpu=${cpu:-cortex-a72}; fake_cpuinfo "$S64" "$cpu"
  for n in "$N1" "$N2"; do
    TBCOUNT_OUT=/dev/null nice -n 10 qemu-aarch64 -cpu "$cpu" -L "$S64" -plugin "$PLUGIN,dump=$W/blocks.$n" \
      "$bin" embed --precision "$prec" $(frames "$n") >/dev/null
  done
  python3 "$W/symbols.py" "$bin" "$W/blocks.$N1" "$W/blocks.$N2" "$((N2 - N1))"
}

case ${1:-all} in
  setup) setup ;;
  build) build ;;
  table) table ;;
  profile) shift; profile "$@" ;;
  all) setup; build; table
    echo; echo "the int8 frame by function, aarch64, Cortex-A72:"; profile "$BIN64" int8 cortex-a72 ;;
  *) echo "usage: $0 [all | setup | build | table | profile BIN [int8|f32] [cpu]]" >&2; exit 2 ;;
esac
