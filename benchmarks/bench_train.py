"""Training proofs on real data (LFW), each a real Ray Train run on local workers.

    .venv/bin/python benchmarks/bench_train.py finetune    [--set KEY=VALUE ...]
    .venv/bin/python benchmarks/bench_train.py scratch     [--set KEY=VALUE ...]
    .venv/bin/python benchmarks/bench_train.py throughput  [--steps 12]
    .venv/bin/python benchmarks/bench_train.py fault       [--kill-after-epoch 2]

- finetune: ``configs/finetune_lfw_triplet.yaml``: the pretrained 20180408-102900 network,
  triplet loss (semi-hard, global mining) on LFW View 1 training people, 2 workers; validation
  accuracy on pairsDevTest.txt before training and after every epoch; loss / active-triplet
  curves as a PNG.
- scratch: ``configs/scratch_lfw_softmax.yaml``: a small Inception-ResNet-v1 (same code path)
  from random weights, softmax + center loss, LFW View 1 training people with >= 5 images,
  2 workers; dev-test accuracy per epoch against chance (0.5).
- throughput: the same global batch on 1 and on 2 workers (1 CPU thread each); steady-state
  step time and images/s per worker (the first, traced step excluded).
- fault: a 2-worker run; once the checkpoint of ``--kill-after-epoch`` is written, one
  training worker process is killed with SIGKILL; the run restarts from its last checkpoint
  (FailureConfig) and finishes; reports the epoch it resumed at.

Every mode prints markdown tables; ``--json`` writes the numbers, PNGs go to ``--out``
(default benchmarks/out/). Run from the repository root with FACENET_PLATFORM_CACHE set if the
converted weights live somewhere else than the default cache.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent


def load(config: str, overrides: list[str]):
    from facenet_platform.train.config import load_config

    return load_config(REPO / config, overrides)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def epoch_table(history: list[dict], keys: list[str]) -> str:
    keys = [k for k in keys if any(k in h for h in history)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for h in history:
        cells = []
        for k in keys:
            v = h.get(k)
            cells.append("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def step_history(checkpoint: str) -> list[dict]:
    return json.loads((Path(checkpoint) / "state.json").read_text())["steps"]


def plot_curves(steps: list[dict], keys: list[tuple[str, str]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6))
    x = [s["step"] for s in steps]
    for ax, (key, label) in zip(axes, keys):
        y = np.asarray([s[key] for s in steps], float)
        ax.plot(x, y, lw=0.8, alpha=0.45, label="per step")
        if len(y) >= 10:
            k = 10
            smooth = np.convolve(y, np.ones(k) / k, mode="valid")
            ax.plot(x[k - 1:], smooth, lw=1.8, label=f"mean of {k}")
            ax.legend(fontsize=8)
        ax.set_xlabel("global step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        epochs = sorted({s["epoch"] for s in steps})
        for e in epochs[1:]:
            first = min(s["step"] for s in steps if s["epoch"] == e)
            ax.axvline(first - 0.5, color="grey", lw=0.5, ls=":")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def print_run(result, cfg, wall: float) -> None:
    print(f"\nrun folder: {result.path}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"wall time (datasets + training + validation): {wall / 60:.1f} min; "
          f"load average now: {loadavg()}")


# ------------------------------------------------------------------------------------------


def bench_finetune(args) -> dict:
    from facenet_platform.train.trainer import run_training

    cfg = load("configs/finetune_lfw_triplet.yaml",
               [f"run.name=finetune-{time.strftime('%Y%m%d-%H%M%S')}", *args.set])
    t = time.perf_counter()
    result = run_training(cfg)
    wall = time.perf_counter() - t
    h = result.history
    before = h[0].get("val_accuracy_initial")
    after = h[-1]["val_accuracy"]
    best = max(x["val_accuracy"] for x in h)
    print("\n### Fine-tuning 20180408-102900 with triplet loss on LFW View 1 train people\n")
    print(f"config: configs/finetune_lfw_triplet.yaml {' '.join('--set ' + s for s in args.set)}")
    print(f"workers: {cfg.scaling.num_workers}, global batch {cfg.data.people_per_batch} people x "
          f"{cfg.data.images_per_person} images, {cfg.train.steps_per_epoch} steps/epoch, "
          f"validation pairs: {h[0].get('val_pairs', '')}\n")
    print(epoch_table(h, ["epoch", "loss", "active_fraction", "triplets", "learning_rate",
                          "val_accuracy", "val_accuracy_std", "val_auc", "train_time_s",
                          "val_time_s"]))
    print(f"\n| | dev-test accuracy |\n|---|---|\n| before (pretrained) | {before:.4f} "
          f"+- {h[0].get('val_accuracy_std_initial', 0):.4f} |\n| after epoch {h[-1]['epoch']} | "
          f"{after:.4f} +- {h[-1]['val_accuracy_std']:.4f} |\n| best epoch | {best:.4f} |")
    png = args.out / "finetune_triplet_curves.png"
    plot_curves(step_history(result.latest_checkpoint),
                [("loss", "triplet loss"), ("active_fraction", "active triplets (fraction)")],
                "Fine-tune 20180408-102900, triplet loss, 2 workers", png)
    print(f"\ncurves: {png}")
    print_run(result, cfg, wall)
    return {"history": h, "before": before, "after": after, "best": best,
            "best_checkpoint": result.best_checkpoint, "wall_s": wall, "png": str(png)}


def bench_scratch(args) -> dict:
    from facenet_platform.train.trainer import run_training

    cfg = load("configs/scratch_lfw_softmax.yaml",
               [f"run.name=scratch-{time.strftime('%Y%m%d-%H%M%S')}", *args.set])
    t = time.perf_counter()
    result = run_training(cfg)
    wall = time.perf_counter() - t
    h = result.history
    print("\n### From scratch: small Inception-ResNet-v1, softmax + center loss\n")
    print(f"config: configs/scratch_lfw_softmax.yaml {' '.join('--set ' + s for s in args.set)}")
    m = cfg.model
    print(f"model: {m.architecture} width {m.width} repeats {m.repeats}, {m.input_size} px, "
          f"{m.embedding_size}-d; workers {cfg.scaling.num_workers}; global batch "
          f"{cfg.global_batch_size}; chance = 0.5\n")
    print(epoch_table(h, ["epoch", "loss", "cross_entropy", "accuracy", "center_loss",
                          "learning_rate", "val_accuracy", "val_accuracy_std", "val_auc",
                          "train_time_s"]))
    before = h[0].get("val_accuracy_initial")
    best = max(x["val_accuracy"] for x in h)
    print(f"\ndev-test accuracy: random init {before}, final {h[-1]['val_accuracy']:.4f}, "
          f"best {best:.4f} (chance 0.5)")
    png = args.out / "scratch_softmax_curves.png"
    plot_curves(step_history(result.latest_checkpoint),
                [("loss", "total loss"), ("accuracy", "softmax accuracy (batch)")],
                "From scratch, softmax + center loss, 2 workers", png)
    print(f"curves: {png}")
    print_run(result, cfg, wall)
    return {"history": h, "best": best, "final": h[-1]["val_accuracy"], "initial": before,
            "best_checkpoint": result.best_checkpoint, "wall_s": wall, "png": str(png)}


def bench_throughput(args) -> dict:
    import ray

    from facenet_platform.train.trainer import run_training

    rows = []
    for workers in args.workers:
        overrides = [*args.set, f"scaling.num_workers={workers}", "validation.pairs=null",
                     f"train.steps_per_epoch={args.steps}", "train.epochs=1",
                     f"run.name=throughput-{workers}w-{int(time.time())}",
                     "validation.before_training=false"]
        cfg = load(args.config, overrides)
        result = run_training(cfg)
        h = result.history[-1]
        rows.append({"workers": workers, "global_batch": cfg.global_batch_size,
                     "local_batch": cfg.local_batch_size, "step_time_s": h["step_time_s"],
                     "images_per_s_per_worker": h["images_per_s_per_worker"],
                     "images_per_s_total": h["images_per_s_per_worker"] * workers,
                     "load": loadavg()})
        ray.shutdown()  # a fresh local Ray per setting
    m = cfg.model
    print(f"\n### Throughput: {args.config}, {m.architecture} {m.input_size} px, "
          f"{args.steps} steps (median step time, first traced step excluded)\n")
    print(epoch_table(rows, ["workers", "global_batch", "local_batch", "step_time_s",
                             "images_per_s_per_worker", "images_per_s_total", "load"]))
    return {"rows": rows}


def _descendants(root_pid: int) -> dict[int, str]:
    """Descendant processes of ``root_pid`` with their command lines (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = {}, [root_pid]
    while todo:
        pid = todo.pop()
        for c in children.get(pid, []):
            try:
                out[c] = (Path("/proc") / str(c) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            todo.append(c)
    return out


def bench_fault(args) -> dict:
    from facenet_platform.train.trainer import run_training

    cfg = load(args.config, [*args.set, f"run.name=fault-{int(time.time())}",
                             "run.max_failures=2"])
    run_dir = Path(cfg.run.storage_path or "~/ray_results").expanduser().resolve() / cfg.run.name
    box: dict = {}

    def target():
        try:
            box["result"] = run_training(cfg)
        except BaseException as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    killed = None
    def checkpointed_epochs() -> list[int]:
        done = []
        for state in run_dir.glob("checkpoint_*/state.json"):
            try:
                done.append(json.loads(state.read_text())["epoch"])
            except (OSError, ValueError):
                pass
        return done

    while thread.is_alive() and killed is None:
        time.sleep(1)
        done = checkpointed_epochs()
        if done and max(done) >= args.kill_after_epoch:
            time.sleep(args.kill_delay)  # into the next epoch
            workers = {pid: cmd for pid, cmd in _descendants(os.getpid()).items()
                       if "RayTrainWorker" in cmd}
            if not workers:
                continue
            pid = sorted(workers)[-1]
            latest = max(checkpointed_epochs())
            os.kill(pid, signal.SIGKILL)
            killed = {"pid": pid, "cmdline": workers[pid].strip(), "last_checkpoint_epoch": latest,
                      "at_s": time.perf_counter() - t0}
            print(f"killed training worker pid {pid} ({workers[pid].strip()[:60]}) "
                  f"{killed['at_s']:.0f} s into the run, during epoch {latest + 1} (last "
                  f"checkpoint: epoch {latest})", flush=True)
    thread.join()
    if "error" in box:
        raise box["error"]
    result = box["result"]
    h = result.history
    resumed = sorted({x["resumed_from_epoch"] for x in h if x.get("resumed_from_epoch")})
    print("\n### Fault tolerance: one of 2 training workers killed (SIGKILL) mid-run\n")
    print(epoch_table(h, ["epoch", "loss", "active_fraction", "accuracy", "val_accuracy",
                          "restarts", "resumed_from_epoch", "train_time_s"]))
    print(f"\nkilled: {killed}\nresumed from the checkpoint of epoch {resumed} "
          f"(training continued at epoch {resumed[0] + 1 if resumed else '?'}); "
          f"finished all {h[-1]['epoch']} epochs: {h[-1]['epoch'] == cfg.train.epochs}")
    print_run(result, cfg, time.perf_counter() - t0)
    return {"history": h, "killed": killed, "resumed_from_epoch": resumed,
            "finished": h[-1]["epoch"] == cfg.train.epochs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["finetune", "scratch", "throughput", "fault"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override (repeatable)")
    ap.add_argument("--config", default="configs/scratch_lfw_softmax.yaml",
                    help="throughput/fault: the config to run")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="throughput: settings")
    ap.add_argument("--steps", type=int, default=12, help="throughput: steps to time")
    ap.add_argument("--kill-after-epoch", type=int, default=2, help="fault: kill once this "
                    "epoch's checkpoint exists")
    ap.add_argument("--kill-delay", type=float, default=2.0,
                    help="fault: seconds to wait after that checkpoint before killing")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}\nload average at start: {loadavg()}",
          flush=True)
    result = {"finetune": bench_finetune, "scratch": bench_scratch,
              "throughput": bench_throughput, "fault": bench_fault}[args.mode](args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
