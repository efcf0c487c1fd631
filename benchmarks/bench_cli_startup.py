"""Start-up time of CLI commands that need no model, against baselines measured in the same run.

Each command runs as a fresh process (``subprocess``, output discarded), ``--repeats`` times,
interleaved round by round so that load on the machine hits every command alike; the medians are
reported, with ratios to the bare interpreter (``python -c pass``) and to ``python -c "import
tensorflow"`` (what every command paid before the CLI started TensorFlow only for the commands
that run a model).

    .venv/bin/python benchmarks/bench_cli_startup.py --repeats 7 [--json out.json]

Commands timed:

* ``python -c pass``: the interpreter alone (baseline)
* ``python -c "import tensorflow"``: TensorFlow's import (baseline)
* ``facenet-platform --help``, ``facenet-platform index cluster --help``
* ``facenet-platform index cluster --index IDX --no-sheets --json``: a real run on a generated
  collection of 125 faces (FAISS k-NN graph + clustering; no model, no Ray)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PYTHON = sys.executable
CLI = str(Path(sys.executable).with_name("facenet-platform"))


def _collection(root: Path, people: int = 5, per_person: int = 25, dim: int = 512) -> Path:
    """An index directory with a faces table of ``people`` planted clusters (no photos read:
    the run below writes no contact sheets)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(people, dim))
    x = np.repeat(centres, per_person, axis=0) + 0.35 * rng.normal(size=(people * per_person, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    n = len(x)

    def fixed(values, size):
        return pa.FixedSizeListArray.from_arrays(
            pa.array(np.asarray(values, np.float32).reshape(-1), pa.float32()), size)

    table = pa.table({
        "path": pa.array([f"/photos/{i:05d}.jpg" for i in range(n)], pa.string()),
        "content_hash": pa.array([f"hash{i:05d}" for i in range(n)], pa.string()),
        "face_index": pa.array([0] * n, pa.int32()),
        "box": fixed(np.tile([45, 40, 115, 130], (n, 1)), 4),
        "landmarks": fixed(np.zeros((n, 10)), 10),
        "score": pa.array([0.99] * n, pa.float32()),
        "embedding": fixed(x, dim),
        "model_id": pa.array(["facenet-20180408-102900"] * n, pa.string()),
    })
    index_dir = root / "idx"
    (index_dir / "faces").mkdir(parents=True)
    pq.write_table(table, index_dir / "faces" / "part-00000.parquet")
    return index_dir


def _time(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each command")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        index_dir = _collection(Path(tmp))
        commands = {
            "python -c pass": [PYTHON, "-c", "pass"],
            "python -c 'import tensorflow'": [PYTHON, "-c", "import tensorflow"],
            "facenet-platform --help": [CLI, "--help"],
            "facenet-platform index cluster --help": [CLI, "index", "cluster", "--help"],
            "facenet-platform index cluster (125 faces)": [
                CLI, "index", "cluster", "--index", str(index_dir), "--no-sheets", "--json"],
        }
        for cmd in commands.values():  # warm the file cache once, untimed
            _time(cmd)
        runs: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, cmd in commands.items():
                runs[name].append(_time(cmd))

    medians = {name: statistics.median(v) for name, v in runs.items()}
    bare = medians["python -c pass"]
    tf = medians["python -c 'import tensorflow'"]
    rows = []
    print(f"{'command':45s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'- bare s':>9s} "
          f"{'/ import tf':>11s}")
    for name, values in runs.items():
        row = {"command": name, "median_s": round(medians[name], 3),
               "min_s": round(min(values), 3), "max_s": round(max(values), 3),
               "over_bare_s": round(medians[name] - bare, 3),
               "ratio_to_import_tensorflow": round(medians[name] / tf, 3)}
        rows.append(row)
        print(f"{name:45s} {row['median_s']:9.3f} {row['min_s']:7.3f} {row['max_s']:7.3f} "
              f"{row['over_bare_s']:9.3f} {row['ratio_to_import_tensorflow']:11.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
