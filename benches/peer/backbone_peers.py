#!/usr/bin/env python3
"""Per-frame latency of edge-mnv2's peers on the golden frames, batch 1, one thread count.

Run by benches/backbone_vs_peers.sh (which makes the virtual environment); by hand:

    python3 benches/peer/backbone_peers.py --threads 1 [--runs 60] [--models DIR]

Engines, each on the same six 224x224 RGB frames fed round-robin, warmed up, then `--runs`
timed frames (the median is what the table shows):
  litert    ai_edge_litert Interpreter (default delegate: XNNPACK), mobilenet_v2_1.0_224_quant.tflite,
            uint8 NHWC in, full classifier (softmax) out
  ort-f32   onnxruntime, derived/mnv2_1.0_224_dequant.f32.backbone.onnx, uint8 NHWC in, pooled
            features out (the same weights as the .tflite, dequantized)
  ort-int8  onnxruntime, mobilenetv2-12-int8.onnx (ONNX zoo, QOperator int8), f32 NCHW normalised
            in, logits out

What is timed per frame: copying the input in, the run, copying the output out. Input
preparation that only one engine needs (the zoo model's f32 NCHW normalisation) is done once per
frame before timing, since the other engines take the raw bytes.

Prints one machine-readable line per engine, `key=value` fields without spaces:
  PEER engine=E precision=P threads=T runs=N median_ms=X p90_ms=Y check=...
or `PEER engine=E ... status=skipped reason=...` when an engine cannot run. Human notes go to
stderr. Exit status 3: a runtime is not installed (the script says which).
"""

import argparse
import os
import statistics
import sys
import time
import warnings

FRAMES = ["bird", "cat", "dragonfly", "grace_hopper", "missvickie_potato_chips", "sunflower"]
WARMUP_ROUNDS = 2  # each frame this many times before timing


def note(msg):
    print(msg, file=sys.stderr, flush=True)


def emit(**fields):
    parts = []
    for k, v in fields.items():
        v = str(v).replace(" ", "_")
        parts.append(f"{k}={v}")
    print("PEER " + " ".join(parts), flush=True)


def time_frames(run_one, inputs, runs):
    """Warm up on every input, then time `runs` calls round-robin; returns (median, p90) in ms."""
    for _ in range(WARMUP_ROUNDS):
        for x in inputs:
            run_one(x)
    times = []
    for i in range(runs):
        x = inputs[i % len(inputs)]
        t = time.perf_counter()
        run_one(x)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return statistics.median(times), times[len(times) * 9 // 10]


def cosine(a, b):
    import numpy as np

    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def expected_top1(models, model_file):
    """{image: class index} of rank 1 for `model_file` in golden/expected_top5.tsv."""
    out = {}
    path = os.path.join(models, "golden", "expected_top5.tsv")
    try:
        with open(path) as f:
            next(f)
            for line in f:
                cols = line.rstrip("\n").split("\t")
                if len(cols) >= 5 and cols[0] == model_file and cols[3] == "1":
                    out.setdefault(cols[2], int(cols[4]))
    except OSError:
        pass
    return out


def golden_features(models, folder):
    import numpy as np

    feats = {}
    for n in FRAMES:
        p = os.path.join(models, "golden", folder, n + ".f32")
        if os.path.isfile(p):
            feats[n] = np.fromfile(p, dtype="<f4")
    return feats


def top1_check(top1, expected):
    """'top1=6/6' style agreement with the golden rank-1 classes (na without golden data)."""
    if not expected:
        return "na"
    same = sum(1 for n, c in top1.items() if expected.get(n) == c)
    return f"{same}/{len(top1)}"


def bench_litert(models, frames, threads, runs):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    path = os.path.join(models, "mobilenet_v2_1.0_224_quant.tflite")
    interp = Interpreter(model_path=path, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    inputs = [frames[n][None] for n in FRAMES]

    def run_one(x):
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return interp.get_tensor(out["index"])

    # Agreement, untimed: top-1 of the timed interpreter, and the pooled features from a second
    # interpreter that keeps its intermediate tensors (which slows it, so it is not the timed one).
    top1 = {n: int(np.argmax(run_one(frames[n][None]))) for n in FRAMES}
    check = "top1=" + top1_check(top1, expected_top1(models, os.path.basename(path)))
    golden = golden_features(models, "features_litert_mobilenet_v2_1.0_224_quant_AvgPool")
    try:
        with warnings.catch_warnings():  # "for debugging purposes only": that is the use here
            warnings.simplefilter("ignore")
            full = Interpreter(
                model_path=path, num_threads=threads, experimental_preserve_all_tensors=True
            )
        full.allocate_tensors()
        pooled = next(
            t for t in full.get_tensor_details() if t["name"] == "MobilenetV2/Logits/AvgPool"
        )
        scale, zp = pooled["quantization"]
        cos = []
        for n in FRAMES:
            full.set_tensor(full.get_input_details()[0]["index"], frames[n][None])
            full.invoke()
            q = full.get_tensor(pooled["index"]).astype(np.float32).ravel()
            if n in golden:
                cos.append(cosine((q - zp) * scale, golden[n]))
        if cos:
            check += f",cos_golden_min={min(cos):.5f}"
    except Exception as e:  # the check is optional; the timing stands without it
        note(f"litert: pooled-feature check skipped: {e}")
    median, p90 = time_frames(run_one, inputs, runs)
    emit(engine="litert", precision="uint8", threads=threads, runs=runs,
         median_ms=f"{median:.3f}", p90_ms=f"{p90:.3f}", check=check)


def ort_session(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def bench_ort_f32(models, frames, threads, runs):
    path = os.path.join(models, "derived", "mnv2_1.0_224_dequant.f32.backbone.onnx")
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    inputs = [frames[n][None] for n in FRAMES]

    def run_one(x):
        return sess.run(None, {name: x})[0]

    golden = golden_features(models, "features_ort_mnv2_1.0_224_dequant.f32.backbone")
    golden_litert = golden_features(models, "features_litert_mobilenet_v2_1.0_224_quant_AvgPool")
    feats = {n: run_one(frames[n][None]) for n in FRAMES}
    check = []
    if golden:
        check.append(f"cos_golden_min={min(cosine(feats[n], golden[n]) for n in golden):.5f}")
    if golden_litert:
        cos = min(cosine(feats[n], golden_litert[n]) for n in golden_litert)
        check.append(f"cos_litert_min={cos:.5f}")
    median, p90 = time_frames(run_one, inputs, runs)
    emit(engine="ort-f32", precision="f32", threads=threads, runs=runs,
         median_ms=f"{median:.3f}", p90_ms=f"{p90:.3f}", check=",".join(check) or "na")


def bench_ort_int8(models, frames, threads, runs):
    import numpy as np

    path = os.path.join(models, "mobilenetv2-12-int8.onnx")
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)

    def prepare(rgb):
        x = (rgb.astype(np.float32) / 255.0 - mean) / std
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    prepared = {n: prepare(frames[n]) for n in FRAMES}
    inputs = [prepared[n] for n in FRAMES]

    def run_one(x):
        return sess.run(None, {name: x})[0]

    top1 = {n: int(np.argmax(run_one(prepared[n]))) for n in FRAMES}
    check = "top1=" + top1_check(top1, expected_top1(models, os.path.basename(path)))
    median, p90 = time_frames(run_one, inputs, runs)
    emit(engine="ort-int8", precision="int8", threads=threads, runs=runs,
         median_ms=f"{median:.3f}", p90_ms=f"{p90:.3f}", check=check)


ENGINES = {"litert": bench_litert, "ort-f32": bench_ort_f32, "ort-int8": bench_ort_int8}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--models", default=os.path.normpath(os.path.join(here, "../../../shared/models")))
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES))
    args = ap.parse_args()
    if args.runs < 1 or args.threads < 1:
        ap.error("--runs and --threads must be at least 1")

    try:
        import numpy as np
    except ImportError as e:
        note(f"numpy is not installed: {e}")
        return 3
    frames = {}
    for n in FRAMES:
        p = os.path.join(args.models, "images", "rgb224", n + ".rgb")
        frames[n] = np.fromfile(p, dtype=np.uint8).reshape(224, 224, 3)

    versions = []
    for mod in ("ai_edge_litert", "onnxruntime"):
        try:
            m = __import__(mod)
            versions.append(f"{mod}={getattr(m, '__version__', '?')}")
        except ImportError as e:
            versions.append(f"{mod}=missing({e})")
    note("peers: " + ", ".join(versions))

    status = 0
    for engine in args.engines.split(","):
        try:
            ENGINES[engine](args.models, frames, args.threads, args.runs)
        except ImportError as e:
            note(f"{engine}: runtime not installed: {e}")
            emit(engine=engine, threads=args.threads, status="skipped", reason=f"not-installed:{e.name}")
            status = 3
        except Exception as e:
            note(f"{engine}: failed: {type(e).__name__}: {e}")
            emit(engine=engine, threads=args.threads, status="skipped", reason=type(e).__name__)
            status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
