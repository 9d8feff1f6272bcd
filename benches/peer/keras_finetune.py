#!/usr/bin/env python3
"""The TF/Keras "peer" that `edge-mnv2 finetune` is benchmarked against.

It is the classic transfer-learning notebook recipe, done as fairly and as fast as TF allows:

  1. embeddings: every image goes once through the *same* quantized backbone edge-mnv2 uses
     (mobilenet_v2_1.0_224_quant.tflite, run by tf.lite.Interpreter with 2 threads), and we read
     the pooled 1280-d features `MobilenetV2/Logits/AvgPool` (uint8) and dequantize them;
  2. head: a single softmax Dense layer trained with Adam + early stopping on those embeddings;
  3. evaluation on the held-out split: accuracy and macro F1.

Fairness rules (so the comparison measures the runtimes, not different experiments):
  * same pixels: EXIF-upright, RGB, plain bilinear resize to 224x224 (no crop, no aspect keep),
    raw 0..255 uint8 NHWC — the model has the normalisation baked in;
  * same split as edge-mnv2 (hash of the relative path, see `split_dataset`);
  * no augmentation (the benchmark runs edge-mnv2 with --augment 0).

stdout gets exactly ONE JSON line at the end; everything else (TF logs, Keras progress) goes to
stderr. Exit code 3 means TensorFlow (or Pillow) is not importable, so a driver can skip the peer.

Usage: python3 benches/peer/keras_finetune.py --data DIR
"""
import time

T0 = time.perf_counter()  # total_s counts from here, i.e. it includes importing TF

import argparse
import hashlib
import json
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

# Everything but the final JSON line must go to stderr, including what C++ code (TFLite's
# "Created XNNPACK delegate") and Keras write to fd 1. So point fd 1 at stderr for the whole run
# and keep a private handle on the real stdout for the result.
_REAL_STDOUT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TF's INFO/WARNING chatter
warnings.filterwarnings("ignore")  # tf.lite.Interpreter deprecation notice etc.

try:
    import numpy as np
    from PIL import Image, ImageOps
    import tensorflow as tf
    from tensorflow import keras
except ImportError as e:  # the driver treats 3 as "peer not available, skip it"
    print(f"keras_finetune: cannot import {e.name}: {e} (pip install tensorflow pillow)", file=sys.stderr)
    sys.exit(3)

# shared/ sits beside the repo: <repo>/benches/peer/this.py -> <repo>/../shared/models/...
MODEL = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                      "../../../shared/models/mobilenet_v2_1.0_224_quant.tflite"))
FEATURES_TENSOR = "MobilenetV2/Logits/AvgPool"  # [1,1,1,1280] uint8
SEED = 0
VAL_FRACTION = 0.15  # carved from train when the data has no separate validation split
FLAT_TRAIN, FLAT_VAL = 0.70, 0.85  # flat layout: 70 / 15 / 15


# ---------------------------------------------------------------- data split (must match edge-mnv2)

def hash_unit(rel):
    """Deterministic number in [0,1) from a '/'-separated relative path; same formula as edge-mnv2."""
    return int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big") / 2**64


# edge-mnv2 (src/dataset.rs) takes files by extension, searches sub-folders of a class folder,
# and skips hidden entries; we do the same so both tools see the same images.
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


def visible(names):
    return sorted(n for n in names if not n.startswith("."))


def class_dirs(root):
    return [n for n in visible(os.listdir(root)) if os.path.isdir(os.path.join(root, n))]


def class_images(class_root):
    """Image paths under one class folder (recursively), relative to it, '/'-separated, sorted."""
    out = []
    for d, subdirs, files in os.walk(class_root):
        subdirs[:] = visible(subdirs)
        rel_dir = os.path.relpath(d, class_root).replace(os.sep, "/")
        for f in visible(files):
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                out.append(f if rel_dir == "." else f"{rel_dir}/{f}")
    return sorted(out, key=lambda r: r.split("/"))  # component-wise, like Rust's Path ordering


def list_images(root, classes):
    """[(path, rel, class_index)] for root/<class>/<image>; rel is relative to root ('/' separators)."""
    out = []
    for c in class_dirs(root):
        files = class_images(os.path.join(root, c))
        if files and c not in classes:
            sys.exit(f"keras_finetune: {root}/{c}: class not present in the training split")
        out += [(os.path.join(root, c, *f.split("/")), f"{c}/{f}", classes.index(c)) for f in files]
    return out


def split_dataset(data):
    """Returns (class_names, train, val, test) with the three layouts edge-mnv2 understands:
    train/val/test as given; train/ + val/ only -> test = val, validation carved from train by hash
    (train/ + test/ only -> validation carved the same way); flat <class>/<image> -> 70/15/15 by
    hash of the path relative to DATA."""
    sub = lambda n: os.path.join(data, n)
    has = lambda n: os.path.isdir(sub(n))
    if has("train"):
        classes = class_dirs(sub("train"))
        train = list_images(sub("train"), classes)
        if has("val") and has("test"):
            val, test = list_images(sub("val"), classes), list_images(sub("test"), classes)
        elif has("val") or has("test"):
            val = [x for x in train if hash_unit(x[1]) < VAL_FRACTION]
            train = [x for x in train if hash_unit(x[1]) >= VAL_FRACTION]
            test = list_images(sub("test" if has("test") else "val"), classes)
        else:
            sys.exit(f"keras_finetune: {data} has train/ but neither val/ nor test/")
    else:
        classes = class_dirs(data)
        everything = list_images(data, classes)
        train = [x for x in everything if hash_unit(x[1]) < FLAT_TRAIN]
        val = [x for x in everything if FLAT_TRAIN <= hash_unit(x[1]) < FLAT_VAL]
        test = [x for x in everything if hash_unit(x[1]) >= FLAT_VAL]
    # As edge-mnv2: a class the hash put entirely into val/test would be unlearnable, so its
    # first image (by path) moves into training.
    for label in range(len(classes)):
        if not any(c == label for _, _, c in train):
            for split in (val, test):
                i = next((i for i, x in enumerate(split) if x[2] == label), None)
                if i is not None:
                    train.append(split.pop(i))
                    break
    return classes, train, val, test


# ---------------------------------------------------------------- embeddings

class Embedder:
    def __init__(self, model_path):
        # experimental_preserve_all_tensors: AvgPool is an intermediate tensor; without it the
        # interpreter may reuse its memory for later ops, so reading it after invoke() is not
        # guaranteed to give the pooled features. (No measurable speed cost on this model.)
        self.it = tf.lite.Interpreter(model_path=model_path, num_threads=2,
                                      experimental_preserve_all_tensors=True)
        self.it.allocate_tensors()
        self.input = self.it.get_input_details()[0]["index"]
        feats = [d for d in self.it.get_tensor_details() if d["name"] == FEATURES_TENSOR]
        if not feats:
            sys.exit(f"keras_finetune: {model_path} has no tensor {FEATURES_TENSOR}")
        self.feats = feats[0]["index"]
        self.scale, self.zero = feats[0]["quantization"]

    @staticmethod
    def pixels(path):
        """The exact preprocessing edge-mnv2 does: upright, RGB, squash to 224x224, raw uint8."""
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB").resize((224, 224), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)[None]  # [1,224,224,3] NHWC

    def __call__(self, items):
        out = np.empty((len(items), 1280), np.float32)
        # One helper thread decodes/resizes image i+1 while the interpreter runs image i (PIL and
        # TFLite both release the GIL). Only one image ahead, so memory stays flat; the pixels and
        # so the features are identical to a plain loop.
        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(self.pixels, items[0][0]) if items else None
            for i in range(len(items)):
                x = nxt.result()
                if i + 1 < len(items):
                    nxt = pool.submit(self.pixels, items[i + 1][0])
                # Fixed batch of 1: resizing the input to N fails in the XNNPACK delegate.
                self.it.set_tensor(self.input, x)
                self.it.invoke()
                q = self.it.get_tensor(self.feats).reshape(1280)
                out[i] = (q.astype(np.float32) - self.zero) * self.scale
        return out


# ---------------------------------------------------------------- metrics (no sklearn needed)

def macro_f1(y_true, y_pred):
    """Unweighted mean of per-class F1 over the classes present in y_true or y_pred (as sklearn)."""
    f1s = []
    for c in sorted(set(y_true.tolist()) | set(y_pred.tolist())):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1s))


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="dataset folder (train/val[/test] or flat <class>/<image>)")
    ap.add_argument("--model", default=MODEL, help="quantized MobileNetV2 .tflite (default: %(default)s)")
    args = ap.parse_args()
    for path, what in ((args.data, "dataset folder"), (args.model, "model file")):
        if not os.path.exists(path):
            sys.exit(f"keras_finetune: {what} {path} not found")

    classes, train, val, test = split_dataset(args.data)
    if len(classes) < 2 or not train or not val or not test:
        sys.exit(f"keras_finetune: need >=2 classes and non-empty splits, got {len(classes)} classes, "
                 f"train {len(train)} / val {len(val)} / test {len(test)}")
    print(f"classes {classes}; train {len(train)} / val {len(val)} / test {len(test)}", file=sys.stderr)

    t = time.perf_counter()
    embed = Embedder(args.model)
    x_train, x_val, x_test = embed(train), embed(val), embed(test)
    embed_s = time.perf_counter() - t
    print(f"embedded {len(train) + len(val) + len(test)} images in {embed_s:.2f} s", file=sys.stderr)

    onehot = lambda items: keras.utils.to_categorical([c for _, _, c in items], len(classes))
    y_train, y_val = onehot(train), onehot(val)
    y_test = np.array([c for _, _, c in test])

    t = time.perf_counter()
    keras.utils.set_random_seed(SEED)  # Python, NumPy and TF seeds: weight init + shuffling
    head = keras.Sequential([keras.Input(shape=(1280,)),
                             keras.layers.Dense(len(classes), activation="softmax")])
    head.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                 loss="categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True)
    hist = head.fit(x_train, y_train, validation_data=(x_val, y_val), batch_size=32, epochs=100,
                    callbacks=[stop], verbose=0)  # per-epoch logging costs ~8% here
    train_s = time.perf_counter() - t
    print(f"trained {len(hist.history['loss'])} epochs in {train_s:.2f} s, best val_loss "
          f"{min(hist.history['val_loss']):.4f}", file=sys.stderr)

    y_pred = np.argmax(head.predict(x_test, batch_size=256, verbose=0), axis=1)
    result = {
        "tool": "keras",
        "tf_version": tf.__version__,
        "n_train": len(train), "n_val": len(val), "n_test": len(test),
        "embed_s": round(embed_s, 3),
        "train_s": round(train_s, 3),
        "total_s": round(time.perf_counter() - T0, 3),
        "test_accuracy": round(float(np.mean(y_pred == y_test)), 6),
        "test_macro_f1": round(macro_f1(y_test, y_pred), 6),
        "epochs_run": len(hist.history["loss"]),
    }
    _REAL_STDOUT.write(json.dumps(result) + "\n")
    _REAL_STDOUT.flush()


if __name__ == "__main__":
    main()
