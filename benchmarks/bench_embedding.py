"""Embedding throughput of each backend x batch size against the frozen graph at batch 1.

Everything is measured in one process and one run. Each round times every (backend, batch size)
configuration for ``--seconds``, each right after a measurement of the baseline (the original
frozen graph, ``FrozenGraphEmbedder``, one crop per call): A, B1, A, B2, ... Rounds repeat
``--rounds`` times; the table gives the median img/s of each configuration and the median of its
per-pair ratios to the baseline, so load from other processes hits both sides of every ratio.

Accuracy: the embeddings of each backend on real face crops against keras-fp32 (max / mean abs
difference, min cosine over rows). Crops are LFW deep-funneled images centre-cropped to 160 px
(``[45:205, 45:205]``, the face is centred), from ``--lfw-dir``; without LFW, shifted and mirrored
crops of ``skimage.data.astronaut()``'s face. onnx-int8 is calibrated on ``--calibration`` crops
disjoint from the ``--eval-crops`` ones.

    .venv/bin/python benchmarks/bench_embedding.py --json benchmarks/out/embedding.json
    .venv/bin/python benchmarks/bench_embedding.py --backends keras-fp32 onnx-fp32 --batch-sizes 1 8

Also reported: images per CPU second (process CPU time, all threads), which moves much less than
wall-clock throughput when other processes share the CPUs; its ratio tells which backend does
less work per image, the wall-clock one what a caller sees on this machine now.

Thread settings come from the environment (``TF_NUM_INTRAOP_THREADS``, ``TF_NUM_INTEROP_THREADS``,
...) and ``--ort-threads`` / ``--ort-spinning``; ``--jit on|off`` overrides each Keras
backend's default XLA setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as stdlib_platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from facenet_platform.core.standardization import STANDARDIZATIONS  # noqa: E402
from facenet_platform.core.backends import BACKENDS, RunnerOptions, create_runner  # noqa: E402
from facenet_platform.core.embedding import FrozenGraphEmbedder  # noqa: E402
from facenet_platform.core.weights import PRETRAINED, load_pretrained_model  # noqa: E402

DEFAULT_LFW = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "lfw"
LFW_CENTRE = slice(45, 205)  # 250 px deep-funneled LFW -> 160 px centred face
ASTRONAUT_FACE = (20, 170)  # top-left of a 160 px face crop in skimage.data.astronaut()


def face_crops(n: int, lfw_dir: Path, seed: int = 0) -> tuple[np.ndarray, str]:
    """``(n, 160, 160, 3) uint8`` real face crops and a description of where they came from."""
    files = sorted((lfw_dir / "lfw-deepfunneled").glob("*/*.jpg"))
    rng = np.random.default_rng(seed)
    if files:
        from PIL import Image

        picked = rng.choice(len(files), size=min(n, len(files)), replace=False)
        crops = [np.asarray(Image.open(files[i]).convert("RGB"))[LFW_CENTRE, LFW_CENTRE]
                 for i in picked]
        return np.stack(crops), f"LFW centre crops ({lfw_dir})"
    from skimage import data

    image = data.astronaut()
    crops = []
    for _ in range(n):
        dy, dx = rng.integers(-12, 13, size=2)
        y, x = ASTRONAUT_FACE[0] + dy, ASTRONAUT_FACE[1] + dx
        crop = image[y:y + 160, x:x + 160]
        crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return np.stack(crops), "skimage astronaut face (shifted/mirrored; LFW not found)"


def throughput(fn, x: np.ndarray, seconds: float) -> tuple[float, float]:
    """Images per wall second and per CPU second (all threads of this process) of ``fn(x)``,
    over at least ``seconds`` of wall time and at least one call."""
    done, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        fn(x)
        done += len(x)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed, done / max(time.process_time() - cpu_start, 1e-9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32, 64])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    ap.add_argument("--eval-crops", type=int, default=128, help="crops for the accuracy check")
    ap.add_argument("--calibration", type=int, default=128, help="onnx-int8 calibration crops")
    ap.add_argument("--ort-threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    ap.add_argument("--ort-spinning", action="store_true", help="ONNX Runtime threads spin")
    ap.add_argument("--jit", choices=["default", "on", "off"], default="default",
                    help="XLA for the Keras backends (default: each backend's own)")
    ap.add_argument("--lfw-dir", type=Path, default=Path(os.environ.get("LFW_DIR", DEFAULT_LFW)))
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()

    crops, source = face_crops(args.eval_crops + args.calibration, args.lfw_dir)
    standardize = STANDARDIZATIONS[PRETRAINED.standardization]  # what the model is fed
    calibration = standardize(crops[args.eval_crops:])
    x_eval = standardize(crops[:args.eval_crops])
    print(f"crops: {source}; {len(x_eval)} for accuracy, {len(calibration)} for calibration",
          flush=True)

    model = load_pretrained_model()
    jit = {"default": None, "on": True, "off": False}[args.jit]
    options = RunnerOptions(jit_compile=jit, threads=args.ort_threads,
                            ort_spinning=args.ort_spinning, model_id=PRETRAINED.model_id,
                            calibration=calibration)
    frozen = FrozenGraphEmbedder()

    # Build every runner (export / quantize / compile on first use), warm it, check accuracy.
    reference = create_runner("keras-fp32", model, max(args.batch_sizes), options)
    ref_emb = np.concatenate([reference(x_eval[i:i + reference.batch_size])
                              for i in range(0, len(x_eval), reference.batch_size)])
    accuracy = {"frozen-graph": frozen.embed_prewhitened(x_eval)}
    runners = {}
    for backend in args.backends:
        for bs in args.batch_sizes:
            t = time.perf_counter()
            runner = create_runner(backend, model, bs, options)
            x = x_eval[np.arange(bs) % len(x_eval)]
            runner(x), runner(x)
            runners[backend, bs] = (runner, x)
            print(f"{backend} batch {bs}: ready in {time.perf_counter() - t:.1f} s", flush=True)
        if backend not in accuracy:
            accuracy[backend] = np.concatenate([runner(x_eval[i:i + bs])
                                                for i in range(0, len(x_eval), bs)])
    agreement = {}
    for name, emb in accuracy.items():
        diff = np.abs(emb - ref_emb)
        cos = np.sum(emb * ref_emb, axis=1) / (
            np.linalg.norm(emb, axis=1) * np.linalg.norm(ref_emb, axis=1))
        agreement[name] = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                           "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}

    x1 = x_eval[:1]
    frozen.embed_prewhitened(x1)
    baseline: list[tuple[float, float]] = []
    pairs: dict[tuple[str, int], list[tuple[tuple[float, float], tuple[float, float]]]] = {
        key: [] for key in runners}
    load_before = os.getloadavg()
    for r in range(args.rounds):
        for key, (runner, x) in runners.items():
            base = throughput(frozen.embed_prewhitened, x1, args.seconds)
            speed = throughput(runner, x, args.seconds)
            baseline.append(base)
            pairs[key].append((base, speed))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    load_after = os.getloadavg()

    def summary(measured: list[tuple[tuple[float, float], tuple[float, float]]]) -> dict:
        med = statistics.median
        return {"images_per_second": med(s[0] for _, s in measured),
                "ratio_vs_frozen_b1": med(s[0] / b[0] for b, s in measured),
                "images_per_cpu_second": med(s[1] for _, s in measured),
                "cpu_ratio_vs_frozen_b1": med(s[1] / b[1] for b, s in measured)}

    rows = [{"backend": "frozen-graph", "batch_size": 1,
             **summary([(b, b) for b in baseline]), **agreement["frozen-graph"]}]
    for (backend, bs), measured in pairs.items():
        rows.append({"backend": backend, "batch_size": bs, **summary(measured),
                     **agreement[backend]})

    walls = [b[0] for b in baseline]
    print(f"\nbaseline: frozen graph, batch 1, {statistics.median(walls):.1f} img/s (median of "
          f"{len(walls)} measurements, {min(walls):.1f}..{max(walls):.1f}); load average "
          f"{load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| backend | batch | img/s | x frozen b1 | img/CPU-s | x frozen b1 (CPU) "
          "| max abs diff | mean abs diff | min cosine |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['backend']} | {row['batch_size']} | {row['images_per_second']:.1f} | "
              f"{row['ratio_vs_frozen_b1']:.2f} | {row['images_per_cpu_second']:.1f} | "
              f"{row['cpu_ratio_vs_frozen_b1']:.2f} | {row['max_abs']:.2e} | "
              f"{row['mean_abs']:.2e} | {row['min_cosine']:.5f} |")
    print("\n(ratios: median over the interleaved pairs; differences: against keras-fp32 on the "
          "accuracy crops)")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": " ".join(sys.argv),
            "crops": source, "eval_crops": len(x_eval), "calibration_crops": len(calibration),
            "seconds": args.seconds, "rounds": args.rounds, "jit": args.jit,
            "ort_threads": args.ort_threads, "ort_spinning": args.ort_spinning,
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                                                "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS")
                    if k in os.environ},
            "cpu_count": os.cpu_count(), "machine": stdlib_platform.processor() or None,
            "load_average": {"before": load_before, "after": load_after},
            "baseline_measurements": [{"images_per_second": w, "images_per_cpu_second": c}
                                      for w, c in baseline],
            "rows": rows,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
