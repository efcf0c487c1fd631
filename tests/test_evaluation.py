"""Tests of the LFW verification maths (facenet_platform.core.evaluation)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facenet_platform.core.evaluation import (
    EvaluationInputError,
    VerificationReport,
    best_threshold,
    centered_distances,
    evaluate_embeddings,
    evaluate_verification,
    plot_roc,
    squared_distances,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# Hand-worked example: 3 folds x 4 pairs (2 same, 2 different in each fold).
#
#   fold 0: same 0.20, 0.70   different 0.45, 1.20
#   fold 1: same 0.40, 1.00   different 0.90, 1.40
#   fold 2: same 0.30, 0.42   different 0.80, 1.10
#
# Rule: same when distance <= threshold; candidate thresholds are midpoints of consecutive
# training distances; the smallest best one wins.
#
# Test fold 0, train = folds 1+2, sorted (P = same, N = different) and #correct of 8 when
# accepting everything up to and including that distance (accepting none: 4 correct):
#   0.30P 5 | 0.40P 6 | 0.42P 7 | 0.80N 6 | 0.90N 5 | 1.00P 6 | 1.10N 5 | 1.40N 4
#   best 7 at <= 0.42 -> threshold (0.42 + 0.80) / 2 = 0.61
#   fold 0 at 0.61: 0.20P accept (ok), 0.70P reject (wrong), 0.45N accept (wrong),
#   1.20N reject (ok) -> accuracy 2/4 = 0.50
# Test fold 1, train = folds 0+2:
#   0.20P 5 | 0.30P 6 | 0.42P 7 | 0.45N 6 | 0.70P 7 | 0.80N 6 | 1.10N 5 | 1.20N 4
#   best 7 at <= 0.42 and at <= 0.70: the smaller wins -> threshold (0.42 + 0.45) / 2 = 0.435
#   fold 1 at 0.435: 0.40P ok, 1.00P wrong, 0.90N ok, 1.40N ok -> 3/4 = 0.75
# Test fold 2, train = folds 0+1:
#   0.20P 5 | 0.40P 6 | 0.45N 5 | 0.70P 6 | 0.90N 5 | 1.00P 6 | 1.20N 5 | 1.40N 4
#   best 6 first at <= 0.40 -> threshold (0.40 + 0.45) / 2 = 0.425
#   fold 2 at 0.425: 0.30P ok, 0.42P ok, 0.80N ok, 1.10N ok -> 4/4 = 1.00
# Accuracy = mean(0.5, 0.75, 1.0) = 0.75; std = sqrt((0.25^2 + 0 + 0.25^2) / 3) = 0.2041241
#
# All 12 pairs, sorted: 0.20P 0.30P 0.40P 0.42P 0.45N 0.70P 0.80N 0.90N 1.00P 1.10N 1.20N 1.40N
#   #correct of 12: none 6 | 7 8 9 10 | 9 | 10 | 9 8 | 9 | 8 7 6
#   best 10 first at <= 0.42 -> deployed threshold 0.435, accuracy 10/12
# AUC: for each different-pair, the same-pairs with a smaller distance:
#   0.45: 4, 0.80: 5, 0.90: 5, 1.10: 6, 1.20: 6, 1.40: 6 -> 32 of 6 * 6 = 36 -> AUC = 8/9
# ROC walking up the sorted list (fpr, tpr) in sixths: (0,0) (0,1) (0,2) (0,3) (0,4) (1,4)
#   (1,5) (2,5) (3,5) (3,6) (4,6) (5,6) (6,6). fpr + tpr - 1 first reaches 0 at (1/6, 5/6),
#   so FPR == 1 - TPR there: EER = 1/6.
HAND_DIST = np.array(
    [0.20, 0.70, 0.45, 1.20, 0.40, 1.00, 0.90, 1.40, 0.30, 0.42, 0.80, 1.10], dtype=np.float32
)
HAND_SAME = np.array([1, 1, 0, 0] * 3, dtype=bool)
HAND_FOLDS = np.repeat([0, 1, 2], 4)


def test_hand_worked_example():
    r = evaluate_verification(HAND_DIST, HAND_SAME, HAND_FOLDS)
    assert r.n_pairs == 12 and r.n_folds == 3
    np.testing.assert_allclose(r.fold_thresholds, [0.61, 0.435, 0.425], atol=1e-6)
    np.testing.assert_allclose(r.fold_accuracies, [0.5, 0.75, 1.0])
    assert r.accuracy == pytest.approx(0.75)
    assert r.accuracy_std == pytest.approx(np.sqrt(0.125 / 3))
    assert r.accuracy_std == pytest.approx(0.2041241, abs=1e-7)
    assert r.threshold == pytest.approx(0.435, abs=1e-6)
    assert r.auc == pytest.approx(8 / 9)
    assert r.eer == pytest.approx(1 / 6)
    assert best_threshold(HAND_DIST, HAND_SAME) == (pytest.approx(0.435, abs=1e-6), pytest.approx(10 / 12))
    # contiguous folds: folds=None with n_folds=3 is the same split
    r2 = evaluate_verification(HAND_DIST, HAND_SAME, n_folds=3)
    np.testing.assert_array_equal(r2.fold_accuracies, r.fold_accuracies)
    # fold ids need not be 0..K-1
    r3 = evaluate_verification(HAND_DIST, HAND_SAME, HAND_FOLDS * 10 + 7)
    np.testing.assert_array_equal(r3.fold_thresholds, r.fold_thresholds)
    # ROC arrays: ascending thresholds, from (0, 0) to (1, 1)
    assert np.all(np.diff(r.roc_thresholds) > 0)
    assert (r.fpr[0], r.tpr[0], r.fpr[-1], r.tpr[-1]) == (0, 0, 1, 1)
    assert len(r.fpr) == len(r.tpr) == len(r.roc_thresholds) == 13


def test_ties_give_half_credit_and_interpolated_eer():
    # same 0.1, 0.5; different 0.5, 0.9. Pairs ordered right: (0.1<0.5), (0.1<0.9), (0.5<0.9),
    # and the tie 0.5=0.5 counts 1/2 -> AUC = 3.5 / 4. ROC: (0,0) (0,.5) (.5,1) (1,1); the
    # diagonal segment (0,.5)-(.5,1) meets fpr = 1 - tpr at fpr = 0.25 -> EER 0.25.
    d = np.array([0.1, 0.5, 0.5, 0.9])
    y = np.array([True, True, False, False])
    r = evaluate_verification(d, y, np.zeros(4, dtype=int))
    assert r.auc == pytest.approx(0.875)
    assert r.eer == pytest.approx(0.25)


def test_threshold_is_inclusive():
    # The chosen threshold separates 0.2 | 0.6 at 0.4; a distance equal to it counts as same.
    thr, acc = best_threshold([0.2, 0.6], [True, False])
    assert thr == pytest.approx(0.4) and acc == 1.0
    r = evaluate_verification(np.array([0.2, 0.6, 0.4, 0.6]), np.array([1, 0, 1, 0]), np.array([0, 0, 1, 1]))
    assert r.fold_thresholds[1] == pytest.approx(0.4)
    assert r.fold_accuracies[1] == 1.0  # 0.4 <= 0.4 accepted


def test_perfect_separation():
    rng = np.random.default_rng(1)
    y = np.tile(np.repeat([True, False], 300), 10)
    d = np.where(y, rng.uniform(0.2, 0.9, y.size), rng.uniform(1.1, 2.5, y.size))
    r = evaluate_verification(d, y)
    assert r.accuracy == 1.0 and r.accuracy_std == 0.0
    assert r.auc == 1.0
    assert r.eer == 0.0
    # 2,700 training negatives: FAR 1e-3 = 2.7 negatives, so the VAL threshold lies between the
    # 2nd and 3rd smallest training negative distance, above every positive.
    assert r.val == 1.0 and r.far < 2e-3
    assert np.all(r.fold_val_thresholds > d[y].max())
    assert d[y].max() < r.threshold < d[~y].min()


def test_reversed_separation():
    rng = np.random.default_rng(2)
    y = np.tile(np.repeat([True, False], 50), 10)
    d = np.where(y, rng.uniform(1.1, 2.5, y.size), rng.uniform(0.2, 0.9, y.size))
    r = evaluate_verification(d, y)
    assert r.auc == 0.0
    assert r.eer == 1.0
    assert r.accuracy == pytest.approx(0.5)  # best a threshold can do is accept all or none


def test_val_at_far_constructed():
    # Two folds, each with different-pair distances 0.5 0.6 0.7 0.8 1.0. On the training fold
    # FAR (5 negatives) steps to 0.2 at 0.5, 0.4 at 0.6, ...; the curve starts at (0, 0.0).
    # FAR target 0.3 -> interpolate between (0.2, 0.5) and (0.4, 0.6): threshold 0.55.
    #   test fold 0 same 0.10 0.30 0.54 0.56 -> 3 of 4 accepted; different: only 0.5 -> FAR 0.2
    #   test fold 1 same 0.20 0.58 0.60 0.90 -> 1 of 4 accepted; FAR 0.2
    # VAL = mean(0.75, 0.25) = 0.5, std 0.25, FAR 0.2.
    # FAR target 0.1 -> between (0, 0.0) and (0.2, 0.5): threshold 0.25 -> VAL 1/4 in both, FAR 0.
    neg = [0.5, 0.6, 0.7, 0.8, 1.0]
    d = np.array([0.10, 0.30, 0.54, 0.56] + neg + [0.20, 0.58, 0.60, 0.90] + neg)
    y = np.array([True] * 4 + [False] * 5 + [True] * 4 + [False] * 5)
    folds = np.repeat([0, 1], 9)
    r = evaluate_verification(d, y, folds, far_target=0.3)
    np.testing.assert_allclose(r.fold_val_thresholds, [0.55, 0.55])
    np.testing.assert_allclose(r.fold_vals, [0.75, 0.25])
    assert (r.val, r.val_std, r.far, r.far_target) == (pytest.approx(0.5), pytest.approx(0.25), pytest.approx(0.2), 0.3)
    r = evaluate_verification(d, y, folds, far_target=0.1)
    np.testing.assert_allclose(r.fold_val_thresholds, [0.25, 0.25])
    assert (r.val, r.val_std, r.far) == (pytest.approx(0.25), 0.0, 0.0)


def test_random_distances_are_chance():
    rng = np.random.default_rng(3)
    y = np.tile(np.repeat([True, False], 300), 10)
    d = rng.uniform(0.0, 4.0, y.size)
    r = evaluate_verification(d, y)
    assert r.accuracy == pytest.approx(0.5, abs=0.04)
    assert r.auc == pytest.approx(0.5, abs=0.03)
    assert r.eer == pytest.approx(0.5, abs=0.04)


def test_single_fold():
    r = evaluate_verification(HAND_DIST, HAND_SAME, np.zeros(12, dtype=int))
    assert r.n_folds == 1 and r.accuracy_std == 0.0 and r.val_std == 0.0
    assert r.accuracy == pytest.approx(10 / 12)  # threshold chosen on the same pairs
    assert r.fold_thresholds[0] == pytest.approx(r.threshold)
    assert "single fold" in r.summary()


# --------------------------------------------------------------------------------------------
# Agreement with davidsandberg/facenet's grid search (facenet.calculate_roc / calculate_val),
# re-implemented here with its loops. KFold(shuffle=False) == contiguous folds.


def _kfold(n, k):
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    return [np.arange(bounds[i], bounds[i + 1]) for i in range(k)]


def _calculate_accuracy(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    fp = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict_issame), actual_issame))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    acc = float(tp + tn) / dist.size
    return tpr, fpr, acc


def _reference_roc_accuracy(dist, issame, nrof_folds=10):
    thresholds = np.arange(0, 4, 0.01)
    accuracy = np.zeros(nrof_folds)
    best = np.zeros(nrof_folds)
    indices = np.arange(len(dist))
    for fold_idx, test_set in enumerate(_kfold(len(dist), nrof_folds)):
        train_set = np.setdiff1d(indices, test_set)
        acc_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            _, _, acc_train[threshold_idx] = _calculate_accuracy(threshold, dist[train_set], issame[train_set])
        best_threshold_index = np.argmax(acc_train)
        best[fold_idx] = thresholds[best_threshold_index]
        _, _, accuracy[fold_idx] = _calculate_accuracy(thresholds[best_threshold_index], dist[test_set], issame[test_set])
    return accuracy, best


def _reference_val(dist, issame, far_target=1e-3, nrof_folds=10):
    thresholds = np.arange(0, 4, 0.001)
    val = np.zeros(nrof_folds)
    far = np.zeros(nrof_folds)
    indices = np.arange(len(dist))
    for fold_idx, test_set in enumerate(_kfold(len(dist), nrof_folds)):
        train_set = np.setdiff1d(indices, test_set)
        neg_train = dist[train_set][~issame[train_set]]
        far_train = np.array([np.mean(np.less(neg_train, t)) for t in thresholds])
        if np.max(far_train) >= far_target:
            # interp1d(far_train, thresholds, kind='slinear') needs unique x in current scipy:
            # keep the first threshold of each FAR value (the usual fix).
            x, first = np.unique(far_train, return_index=True)
            threshold = np.interp(far_target, x, thresholds[first])
        else:
            threshold = 0.0
        predict = np.less(dist[test_set], threshold)
        val[fold_idx] = np.mean(predict[issame[test_set]])
        far[fold_idx] = np.mean(predict[~issame[test_set]])
    return val, far


def _lfw_like(rng, n_folds=10, per_fold=300):
    y = np.tile(np.repeat([True, False], per_fold), n_folds)
    d = np.where(y, rng.normal(0.9, 0.25, y.size), rng.normal(1.7, 0.25, y.size))
    return np.clip(d, 0.0, 3.99), y


def test_matches_davidsandberg_grid_continuous():
    d, y = _lfw_like(np.random.default_rng(4))
    r = evaluate_verification(d, y)
    ref_acc, _ = _reference_roc_accuracy(d, y)
    assert r.accuracy == pytest.approx(ref_acc.mean(), abs=1e-3)
    ref_val, ref_far = _reference_val(d, y)
    assert r.val == pytest.approx(ref_val.mean(), abs=0.02)
    assert r.far == pytest.approx(ref_far.mean(), abs=5e-4)


def test_matches_davidsandberg_grid_exactly_on_grid_aligned_data():
    # Distances on 0.005 + 0.01 k: every midpoint between neighbouring values is a grid point,
    # so both searches see the same splits and must agree exactly (up to float rounding).
    d, y = _lfw_like(np.random.default_rng(5))
    d = 0.005 + 0.01 * np.floor(d / 0.01)
    r = evaluate_verification(d, y)
    ref_acc, ref_thr = _reference_roc_accuracy(d, y)
    np.testing.assert_allclose(r.fold_accuracies, ref_acc, atol=1e-12)
    np.testing.assert_allclose(r.fold_thresholds, ref_thr, atol=1e-9)
    ref_val, ref_far = _reference_val(d, y)
    np.testing.assert_allclose(r.fold_vals, ref_val, atol=1e-12)
    np.testing.assert_allclose(r.fold_fars, ref_far, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Input validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(distances=np.zeros((4, 2)), issame=[1, 0, 1, 0]), "1-D"),
        (dict(distances=np.array([0.1, np.nan, 0.3, 0.4]), issame=[1, 0, 1, 0]), "non-finite"),
        (dict(distances=np.array([0.1, np.inf, 0.3, 0.4]), issame=[1, 0, 1, 0]), "non-finite"),
        (dict(distances=np.array([0.1, 0.2, 0.3]), issame=[True, False]), "shape"),
        (dict(distances=np.array([0.1, 0.2]), issame=np.array([0.5, 1.0])), "boolean"),
        (dict(distances=np.array([0.1, 0.2]), issame=np.array([2, 0])), "boolean"),
        (dict(distances=np.array([]), issame=np.array([], dtype=bool)), "empty"),
        (dict(distances=["a", "b"], issame=[True, False]), "numeric"),
        (dict(distances=[0.1, 0.2, 0.3, 0.4], issame=[1, 0, 1, 0], folds=[0, 0, 1]), "folds"),
        (dict(distances=[0.1, 0.2, 0.3, 0.4], issame=[1, 0, 1, 0], folds=[0.0, 0.0, 1.0, 1.0]), "integer"),
        (dict(distances=[0.1, 0.2, 0.3, 0.4], issame=[1, 0, 0, 0], folds=[0, 0, 1, 1]), "fold 1 has no positive"),
        (dict(distances=[0.1, 0.2, 0.3, 0.4], issame=[0, 1, 1, 0], folds=[0, 1, 1, 0]), "no positive|no negative"),
        (dict(distances=[0.1, 0.2, 0.3, 0.4], issame=[1, 0, 1, 0], n_folds=5), "n_folds"),
        (dict(distances=[0.1, 0.2, 0.3, 0.4], issame=[1, 0, 1, 0], n_folds=1, far_target=0.0), "far_target"),
        (dict(distances=[0.1, 0.2, 0.3, 0.4], issame=[1, 0, 1, 0], n_folds=1, far_target=1.5), "far_target"),
    ],
)
def test_input_validation(kwargs, match):
    with pytest.raises(EvaluationInputError, match=match) as info:
        evaluate_verification(**kwargs)
    assert isinstance(info.value, ValueError)


def test_fold_without_negatives():
    with pytest.raises(ValueError, match="fold 0 has no negative"):
        evaluate_verification([0.1, 0.2, 0.3, 0.4], [1, 1, 1, 0], [0, 0, 1, 1])


def test_integer_labels_accepted():
    r1 = evaluate_verification(HAND_DIST, HAND_SAME.astype(int), HAND_FOLDS)
    r2 = evaluate_verification(HAND_DIST, HAND_SAME, HAND_FOLDS)
    assert r1.accuracy == r2.accuracy


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_evaluate_embeddings_without_mean_is_evaluate_verification():
    rng = np.random.default_rng(3)
    a, b = _unit(rng.normal(size=(40, 16))), _unit(rng.normal(size=(40, 16)))
    same = np.tile([True, False], 20)
    b[same] = _unit(a[same] + 0.5 * b[same])
    folds = np.repeat(np.arange(4), 10)
    r1 = evaluate_embeddings(a, b, same, folds)
    r2 = evaluate_verification(squared_distances(a, b), same, folds)
    assert r1.to_dict() == r2.to_dict()


def test_subtract_mean_uses_only_the_training_folds():
    """davidsandberg's --subtract_mean: fold k's distances are centred on folds != k only."""
    rng = np.random.default_rng(4)
    offset = np.zeros(16)
    offset[0] = 3.0  # a shared direction that hides identity in the raw vectors
    a = _unit(rng.normal(size=(60, 16)) + offset)
    b = _unit(rng.normal(size=(60, 16)) + offset)
    same = np.tile([True, False], 30)
    b[same] = _unit(a[same] + 0.3 * rng.normal(size=(30, 16)))
    folds = np.repeat(np.arange(3), 20)
    report = evaluate_embeddings(a, b, same, folds, subtract_mean=True)
    for k in range(3):
        train = folds != k
        mean = np.concatenate([a[train], b[train]]).mean(axis=0)
        d = centered_distances(a, b, mean)
        thr, _ = best_threshold(d[train], same[train])
        assert report.fold_thresholds[k] == pytest.approx(thr)
        assert report.fold_accuracies[k] == pytest.approx(np.mean((d[~train] <= thr) == same[~train]))
    everything = centered_distances(a, b, np.concatenate([a, b]).mean(axis=0))
    assert report.threshold == pytest.approx(best_threshold(everything, same)[0])
    # centring equals the cosine distance of the mean-subtracted vectors
    m = a.mean(axis=0)
    cos = np.sum((a - m) * (b - m), axis=1) / np.linalg.norm(a - m, axis=1) / np.linalg.norm(b - m, axis=1)
    np.testing.assert_allclose(centered_distances(a, b, m), 2 - 2 * cos, atol=1e-5)


def test_squared_distances():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(50, 512))
    b = rng.normal(size=(50, 512))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    d = squared_distances(a, b)
    assert d.dtype == np.float32 and d.shape == (50,)
    np.testing.assert_allclose(d, 2.0 - 2.0 * np.sum(a * b, axis=1), atol=1e-5)
    assert np.all((d >= 0) & (d <= 4))
    np.testing.assert_allclose(squared_distances(a, a), 0.0, atol=1e-6)
    np.testing.assert_allclose(squared_distances(a, -a), 4.0, atol=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        squared_distances(a, b[:, :10])
    with pytest.raises(ValueError, match="same shape"):
        squared_distances(a[0], b[0])


# --------------------------------------------------------------------------------------------
# Output


def test_to_dict_is_json_serialisable():
    r = evaluate_verification(HAND_DIST, HAND_SAME, HAND_FOLDS)
    small = json.loads(json.dumps(r.to_dict()))
    assert "fpr" not in small
    assert small["accuracy"] == pytest.approx(0.75)
    assert small["n_folds"] == 3 and small["same_when"] == "distance <= threshold"
    assert len(small["fold_accuracies"]) == 3
    full = json.loads(json.dumps(r.to_dict(include_arrays=True)))
    assert len(full["fpr"]) == len(full["tpr"]) == len(full["roc_thresholds"]) == 13


def test_summary_text():
    r = evaluate_verification(HAND_DIST, HAND_SAME, HAND_FOLDS)
    text = r.summary()
    assert "Accuracy: 0.75000 +- 0.20412" in text
    assert "Validation rate:" in text and "@ FAR=" in text
    assert "AUC: 0.889" in text
    assert "EER: 0.167" in text
    assert "Threshold: 0.4350" in text
    assert isinstance(r, VerificationReport)


@pytest.mark.parametrize("log_fpr", [True, False])
def test_plot_roc_writes_png(tmp_path, log_fpr):
    d, y = _lfw_like(np.random.default_rng(7), n_folds=10, per_fold=50)
    r = evaluate_verification(d, y)
    out = plot_roc(r, tmp_path / "sub" / "roc.png", title="test", log_fpr=log_fpr)
    assert out == tmp_path / "sub" / "roc.png"
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_roc_perfect_separation(tmp_path):
    y = np.tile(np.repeat([True, False], 5), 2)
    d = np.where(y, 0.5, 1.5) + np.arange(y.size) * 1e-3
    r = evaluate_verification(d, y, n_folds=2)
    out = plot_roc(r, tmp_path / "perfect.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
