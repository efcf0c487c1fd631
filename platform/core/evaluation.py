"""The LFW verification protocol: accuracy (10-fold), VAL@FAR, AUC, EER and the ROC.

This follows davidsandberg/facenet (``src/lfw.py`` ``evaluate`` with ``facenet.calculate_roc`` and
``facenet.calculate_val``) with three deliberate differences:

* **Folds are explicit.** ``folds[k]`` is the fold of pair ``k`` (``read_pairs`` gives them); when
  ``folds`` is ``None`` the pairs are split into ``n_folds`` contiguous folds exactly as
  ``sklearn.model_selection.KFold(n_folds, shuffle=False)`` does (the first ``N % n_folds``
  folds get one pair more).
* **Exact thresholds instead of a grid.** davidsandberg searches ``np.arange(0, 4, 0.01)`` (and
  ``0.001`` for VAL). Here the candidate thresholds are the midpoints between consecutive sorted
  unique distances, plus one just below the smallest (``- 0.005``, accept nothing) and one just
  above the largest (``+ 0.005``, accept everything). Every way a threshold can split the data is
  therefore tried, so the training accuracy found is the exact optimum; on LFW-sized data the
  results agree with the grid to within rounding (the grid can only be *worse* on the training
  folds, by missing a split that falls between two grid points). Ties are broken like
  ``np.argmax`` on the grid: the smallest best threshold wins.
* **Vectorised.** One sort and cumulative sums per fold; no loop over thresholds.

Decision rule, used everywhere in this module and by the platform: **same person when
``distance <= threshold``** (davidsandberg uses ``<``; with midpoint thresholds the two agree
except for a distance exactly equal to a threshold).

Distances are squared Euclidean distances between L2-normalised embeddings (``0..4``), see
:func:`squared_distances`. Standard deviations are population ones (``np.std``, ``ddof=0``), as
in davidsandberg's code.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facenet_platform.core.errors import EvaluationInputError

logger = logging.getLogger(__name__)

#: The decision rule, for reports.
SAME_WHEN = "distance <= threshold"
#: How far below the smallest / above the largest distance the "accept nothing" / "accept
#: everything" candidate thresholds lie (half of davidsandberg's 0.01 grid step).
EDGE_MARGIN = 0.005


# --------------------------------------------------------------------------------------------
# Validation helpers


def _as_distances(distances: Any, name: str = "distances") -> np.ndarray:
    try:
        d = np.asarray(distances, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EvaluationInputError(f"{name} must be numeric: {exc}") from None
    if d.ndim != 1:
        raise EvaluationInputError(f"{name} must be a 1-D array of shape (N,), got shape {d.shape}")
    if d.size == 0:
        raise EvaluationInputError(f"{name} is empty: need at least one pair")
    bad = ~np.isfinite(d)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise EvaluationInputError(
            f"{name} has {int(bad.sum())} non-finite value(s) (NaN/inf), first at index {first} "
            f"({d[first]}); check the embeddings of that pair"
        )
    return d


def _as_labels(issame: Any, n: int) -> np.ndarray:
    y = np.asarray(issame)
    if y.ndim != 1 or y.shape[0] != n:
        raise EvaluationInputError(
            f"issame must have shape ({n},) like distances, got shape {y.shape}"
        )
    if y.dtype == np.bool_:
        return y
    if np.issubdtype(y.dtype, np.integer) and np.isin(y, (0, 1)).all():
        return y.astype(bool)
    raise EvaluationInputError(
        f"issame must be boolean (True = same person), or integers 0/1; got dtype {y.dtype}"
        + (f" with values {np.unique(y)[:5].tolist()}" if y.dtype != object else "")
    )


def _as_folds(folds: Any, n: int, n_folds: int) -> np.ndarray:
    if folds is None:
        n_folds = int(n_folds)
        if not 1 <= n_folds <= n:
            raise EvaluationInputError(f"n_folds must be between 1 and the number of pairs ({n}), got {n_folds}")
        sizes = np.full(n_folds, n // n_folds, dtype=np.int64)
        sizes[: n % n_folds] += 1
        return np.repeat(np.arange(n_folds, dtype=np.int64), sizes)
    f = np.asarray(folds)
    if f.ndim != 1 or f.shape[0] != n:
        raise EvaluationInputError(f"folds must have shape ({n},) like distances, got shape {f.shape}")
    if not np.issubdtype(f.dtype, np.integer):
        raise EvaluationInputError(f"folds must be integer fold ids, got dtype {f.dtype}")
    return f.astype(np.int64)


def _validate(distances: Any, issame: Any) -> tuple[np.ndarray, np.ndarray]:
    d = _as_distances(distances)
    return d, _as_labels(issame, d.shape[0])


# --------------------------------------------------------------------------------------------
# Core curves


def _threshold_curve(d: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (ascending) and the true/false accept counts at each.

    With ``u`` the sorted unique distances, candidate ``j`` accepts exactly the pairs with
    ``distance <= u[j - 1]`` (candidate 0 accepts nothing): thresholds are
    ``[u[0] - m, (u[0] + u[1]) / 2, ..., (u[-2] + u[-1]) / 2, u[-1] + m]``, ``m = EDGE_MARGIN``.
    """
    order = np.argsort(d, kind="stable")
    ds = d[order]
    ys = y[order]
    last = np.flatnonzero(np.append(ds[1:] != ds[:-1], True))  # last index of each unique value
    u = ds[last]
    tp = np.concatenate(([0], np.cumsum(ys)[last]))
    fp = np.concatenate(([0], np.cumsum(~ys)[last]))
    mids = u[:-1] + (u[1:] - u[:-1]) / 2.0
    mids = np.where(mids < u[1:], mids, u[:-1])  # float rounding must never accept u[j + 1]
    below = min(u[0] - EDGE_MARGIN, np.nextafter(u[0], -np.inf))
    above = max(u[-1] + EDGE_MARGIN, u[-1])
    thresholds = np.concatenate(([below], mids, [above]))
    return thresholds, tp, fp


def _best_threshold(d: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    thresholds, tp, fp = _threshold_curve(d, y)
    n_neg = int((~y).sum())
    correct = tp + (n_neg - fp)
    i = int(np.argmax(correct))  # first (smallest) best threshold, like np.argmax on the grid
    return float(thresholds[i]), float(correct[i] / d.shape[0])


def _far_threshold(d: np.ndarray, y: np.ndarray, far_target: float) -> float:
    """The threshold at which the false accept rate on ``(d, y)`` equals ``far_target``.

    As ``calculate_val``: interpolate linearly in the (FAR, threshold) curve. FAR reaches
    ``c_j / M`` (``c_j`` negatives with distance ``<= v_j``) first at ``threshold = v_j``; the
    curve starts at ``(0, 0.0)`` as davidsandberg's grid does (or just below the smallest
    negative distance if that is <= 0). Between two steps the interpolated threshold lies
    between two negative distances, so the achieved FAR on these pairs never exceeds the target.
    """
    neg = np.sort(d[~y])
    last = np.flatnonzero(np.append(neg[1:] != neg[:-1], True))
    far = (last + 1) / neg.shape[0]
    v = neg[last]
    t0 = min(0.0, float(np.nextafter(v[0], -np.inf)))
    return float(np.interp(far_target, np.concatenate(([0.0], far)), np.concatenate(([t0], v))))


def _roc(d: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """(fpr, tpr, thresholds) in ascending threshold order, AUC and EER, over the given pairs."""
    thresholds, tp, fp = _threshold_curve(d, y)
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    tpr = tp / n_pos
    fpr = fp / n_neg
    # Trapezoid rule on the step-wise ROC: equals the fraction of (positive, negative) pairs
    # ordered correctly (positive closer), ties counting one half (Mann-Whitney U / (P * N)).
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    # EER: where the linearly interpolated ROC meets fpr == 1 - tpr. g rises from -1 to +1.
    g = fpr + tpr - 1.0
    i = int(np.argmax(g >= 0.0))
    s = -g[i - 1] / (g[i] - g[i - 1])
    eer = float(fpr[i - 1] + s * (fpr[i] - fpr[i - 1]))
    return fpr, tpr, thresholds, auc, eer


# --------------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True, eq=False)
class VerificationReport:
    """Result of :func:`evaluate_verification`. Same person when ``distance <= threshold``."""

    accuracy: float
    accuracy_std: float
    val: float
    val_std: float
    far: float
    far_target: float
    auc: float
    eer: float
    threshold: float
    fold_accuracies: np.ndarray
    fold_thresholds: np.ndarray
    fpr: np.ndarray
    tpr: np.ndarray
    roc_thresholds: np.ndarray
    n_pairs: int
    n_folds: int
    fold_vals: np.ndarray
    fold_fars: np.ndarray
    fold_val_thresholds: np.ndarray

    def to_dict(self, include_arrays: bool = False) -> dict[str, Any]:
        """JSON-safe dict. Per-fold arrays are always included (they are small); the ROC
        (``fpr``, ``tpr``, ``roc_thresholds``: one point per unique distance) only when asked."""
        out: dict[str, Any] = {
            "accuracy": float(self.accuracy),
            "accuracy_std": float(self.accuracy_std),
            "val": float(self.val),
            "val_std": float(self.val_std),
            "far": float(self.far),
            "far_target": float(self.far_target),
            "auc": float(self.auc),
            "eer": float(self.eer),
            "threshold": float(self.threshold),
            "same_when": SAME_WHEN,
            "n_pairs": int(self.n_pairs),
            "n_folds": int(self.n_folds),
            "fold_accuracies": [float(x) for x in self.fold_accuracies],
            "fold_thresholds": [float(x) for x in self.fold_thresholds],
            "fold_vals": [float(x) for x in self.fold_vals],
            "fold_fars": [float(x) for x in self.fold_fars],
            "fold_val_thresholds": [float(x) for x in self.fold_val_thresholds],
        }
        if include_arrays:
            out["fpr"] = [float(x) for x in self.fpr]
            out["tpr"] = [float(x) for x in self.tpr]
            out["roc_thresholds"] = [float(x) for x in self.roc_thresholds]
        return out

    def summary(self) -> str:
        """Human-readable multi-line summary (davidsandberg's ``validate_on_lfw`` style)."""
        lines = [
            f"Pairs: {self.n_pairs} in {self.n_folds} fold(s); same person when {SAME_WHEN}",
            f"Accuracy: {self.accuracy:.5f} +- {self.accuracy_std:.5f}",
            f"Validation rate: {self.val:.5f} +- {self.val_std:.5f} @ FAR={self.far:.5f}"
            f" (target {self.far_target:.5f})",
            f"AUC: {self.auc:.3f}",
            f"EER: {self.eer:.3f}",
            f"Threshold: {self.threshold:.4f}",
        ]
        if self.n_folds == 1:
            lines.append(
                "Note: single fold: thresholds were chosen on the same pairs they were measured on"
            )
        return "\n".join(lines)


def squared_distances(emb1: np.ndarray, emb2: np.ndarray) -> np.ndarray:
    """Row-wise squared Euclidean distance ``sum((emb1 - emb2) ** 2, axis=1)``: ``(N, D), (N, D)
    -> (N,) float32``; ``0..4`` for L2-normalised embeddings."""
    a = np.asarray(emb1, dtype=np.float32)
    b = np.asarray(emb2, dtype=np.float32)
    if a.ndim != 2 or a.shape != b.shape:
        raise EvaluationInputError(
            f"embeddings must be two (N, D) arrays of the same shape, got {a.shape} and {b.shape}"
        )
    diff = a - b
    return np.einsum("ij,ij->i", diff, diff).astype(np.float32, copy=False)


def best_threshold(distances: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """``(threshold, accuracy)`` maximising accuracy of ``distance <= threshold`` on these pairs.

    The threshold is a midpoint between two consecutive unique distances (or ``EDGE_MARGIN``
    outside the range); among equally good thresholds the smallest is returned.
    """
    d, y = _validate(distances, issame)
    return _best_threshold(d, y)


def evaluate_verification(
    distances: np.ndarray,
    issame: np.ndarray,
    folds: np.ndarray | None = None,
    *,
    n_folds: int = 10,
    far_target: float = 1e-3,
) -> VerificationReport:
    """The LFW protocol on pair distances.

    For each fold: the accuracy threshold is chosen on the *other* folds (best training accuracy)
    and accuracy is measured on the fold; the VAL threshold is the one where the other folds'
    FAR equals ``far_target`` (linear interpolation, as ``calculate_val``), and VAL (true accept
    rate) and FAR are measured on the fold. ``accuracy``/``val``/``far`` are means over folds,
    ``*_std`` population standard deviations. ``auc``, ``eer``, the ROC and ``threshold`` (best
    accuracy; what a deployed model should use) are computed on all pairs together.

    ``folds`` gives each pair's fold id (any integers); when ``None`` the pairs are split into
    ``n_folds`` contiguous folds like ``KFold(n_folds, shuffle=False)`` (``n_folds`` is ignored
    when ``folds`` is given). With a **single fold** (View 1 files) there is nothing to hold out:
    thresholds are chosen on the same pairs they are measured on (optimistic), and the stds are 0.

    Raises :class:`EvaluationInputError` (a ``ValueError``) on shape mismatches, NaN/inf
    distances, non-boolean labels, non-integer folds, a fold without positive or without
    negative pairs, or ``far_target`` outside ``(0, 1)``.
    """
    d, y = _validate(distances, issame)
    return _evaluate(lambda train: d, d, y, _as_folds(folds, d.shape[0], n_folds), far_target)


def centered_distances(emb1: np.ndarray, emb2: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Squared distances after subtracting ``mean`` from every embedding and re-normalising.

    ``(N, D), (N, D), (D,) -> (N,) float32`` in ``0..4``. For unit vectors the squared distance
    is ``2 - 2 cos``, so decisions equal davidsandberg's cosine distance (``--distance_metric 1``)
    on mean-subtracted embeddings (``--subtract_mean``).
    """
    from .embedding import l2_normalize

    m = np.asarray(mean, dtype=np.float32)
    return squared_distances(l2_normalize(np.asarray(emb1, np.float32) - m),
                             l2_normalize(np.asarray(emb2, np.float32) - m))


def evaluate_embeddings(
    emb1: np.ndarray,
    emb2: np.ndarray,
    issame: np.ndarray,
    folds: np.ndarray | None = None,
    *,
    subtract_mean: bool = False,
    n_folds: int = 10,
    far_target: float = 1e-3,
) -> VerificationReport:
    """The LFW protocol on pair embeddings (``(N, D)`` each, L2-normalised).

    ``subtract_mean=False`` is :func:`evaluate_verification` on :func:`squared_distances`.
    ``subtract_mean=True`` is davidsandberg's ``validate_on_lfw --subtract_mean
    --distance_metric 1``: for each fold, the mean of the *training* folds' pair embeddings is
    subtracted from every embedding before the (cosine-equivalent) distance, so the test fold
    never contributes to its own centring. AUC, EER, the ROC and the overall threshold use the
    mean of all pairs.
    """
    a = np.asarray(emb1, dtype=np.float32)
    b = np.asarray(emb2, dtype=np.float32)
    plain = squared_distances(a, b)  # validates the shapes
    if not subtract_mean:
        return evaluate_verification(plain, issame, folds, n_folds=n_folds, far_target=far_target)
    y = _as_labels(issame, plain.shape[0])
    f = _as_folds(folds, plain.shape[0], n_folds)

    def fold_distances(train: np.ndarray) -> np.ndarray:
        mean = np.concatenate([a[train], b[train]]).mean(axis=0)
        return centered_distances(a, b, mean).astype(np.float64)

    overall = fold_distances(np.ones(plain.shape[0], bool))
    return _evaluate(fold_distances, overall, y, f, far_target)


def _evaluate(fold_distances, overall: np.ndarray, y: np.ndarray, f: np.ndarray,
              far_target: float) -> VerificationReport:
    """The protocol proper. ``fold_distances(train_mask)`` gives every pair's distance as the
    fold with that training set sees it (the same array for plain distances); ``overall`` is
    what AUC, EER, the ROC and the deployed threshold are computed on."""
    n = overall.shape[0]
    far_target = float(far_target)
    if not 0.0 < far_target < 1.0:
        raise EvaluationInputError(f"far_target must be in (0, 1), got {far_target}")
    fold_ids = np.unique(f)
    for fid in fold_ids:
        in_fold = f == fid
        n_pos = int(y[in_fold].sum())
        if n_pos == 0 or n_pos == int(in_fold.sum()):
            kind = "positive (same-person)" if n_pos == 0 else "negative (different-person)"
            raise EvaluationInputError(
                f"fold {int(fid)} has no {kind} pairs ({int(in_fold.sum())} pairs); every fold "
                "needs both to measure accuracy, VAL and FAR"
            )
    k = fold_ids.shape[0]
    if k == 1:
        logger.info("single fold: thresholds chosen and measured on the same %d pairs", n)

    fold_acc = np.empty(k)
    fold_thr = np.empty(k)
    fold_val = np.empty(k)
    fold_far = np.empty(k)
    fold_vthr = np.empty(k)
    for i, fid in enumerate(fold_ids):
        test = f == fid
        train = ~test if k > 1 else test
        d = fold_distances(train)
        d_tr, y_tr, d_te, y_te = d[train], y[train], d[test], y[test]
        thr, _ = _best_threshold(d_tr, y_tr)
        fold_thr[i] = thr
        fold_acc[i] = np.mean((d_te <= thr) == y_te)
        vthr = _far_threshold(d_tr, y_tr, far_target)
        fold_vthr[i] = vthr
        accept = d_te <= vthr
        fold_val[i] = np.mean(accept[y_te])
        fold_far[i] = np.mean(accept[~y_te])

    fpr, tpr, roc_thr, auc, eer = _roc(overall, y)
    threshold, _ = _best_threshold(overall, y)
    return VerificationReport(
        accuracy=float(fold_acc.mean()),
        accuracy_std=float(fold_acc.std()),
        val=float(fold_val.mean()),
        val_std=float(fold_val.std()),
        far=float(fold_far.mean()),
        far_target=far_target,
        auc=auc,
        eer=eer,
        threshold=threshold,
        fold_accuracies=fold_acc,
        fold_thresholds=fold_thr,
        fpr=fpr,
        tpr=tpr,
        roc_thresholds=roc_thr,
        n_pairs=n,
        n_folds=k,
        fold_vals=fold_val,
        fold_fars=fold_far,
        fold_val_thresholds=fold_vthr,
    )


def plot_roc(
    report: VerificationReport,
    path: str | os.PathLike[str],
    title: str = "ROC (LFW verification)",
    *,
    log_fpr: bool = True,
    dpi: int = 120,
) -> Path:
    """Write the ROC of ``report`` as a PNG (matplotlib Agg canvas; global backend untouched).

    Marks the EER point and the FAR target (with the VAL measured there). ``log_fpr`` puts the
    FPR axis on a log scale (zero FPRs are drawn at the axis' left edge). Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    fpr = np.asarray(report.fpr, dtype=np.float64)
    tpr = np.asarray(report.tpr, dtype=np.float64)
    if log_fpr:
        positive = fpr[fpr > 0]
        xmin = min(report.far_target, positive.min() if positive.size else 1.0) / 2.0
        x = np.maximum(fpr, xmin)
        ax.set_xscale("log")
        ax.set_xlim(xmin, 1.0)
    else:
        xmin = 0.0
        x = fpr
        ax.set_xlim(0.0, 1.0)
    ax.plot(x, tpr, color="C0", lw=1.5, label=f"ROC (AUC = {report.auc:.4f})")
    ax.plot(
        [max(report.eer, xmin)], [1.0 - report.eer], "o", color="C3",
        label=f"EER = {report.eer:.4f}",
    )
    ax.axvline(report.far_target, color="C2", ls="--", lw=1.0, label=f"FAR target = {report.far_target:g}")
    ax.plot(
        [max(report.far, xmin)], [report.val], "s", color="C2",
        label=f"VAL = {report.val:.4f} @ FAR = {report.far:.5f}",
    )
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("False accept rate (FPR)" + (", log scale" if log_fpr else ""))
    ax.set_ylabel("True accept rate (TPR)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=dpi)
    logger.info("wrote ROC plot %s", path)
    return path
