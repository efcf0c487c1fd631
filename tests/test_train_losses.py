"""Loss maths against hand-worked examples; mining against a plain-loop reference."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from facenet_platform.train import losses, mining  # noqa: E402


def test_triplet_terms_hand_worked():
    # a = (1, 0); p = (0.6, 0.8): d_ap = 0.4^2 + 0.8^2 = 0.8
    # n1 = (0, 1): d_an = 1 + 1 = 2.0      -> max(0.8 - 2.0 + 0.2, 0) = 0
    # n2 = (0.8, 0.6): d_an = 0.04 + 0.36 = 0.4 -> 0.8 - 0.4 + 0.2 = 0.6
    emb = tf.constant([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
    terms, d_ap, d_an = losses.triplet_terms(emb, [0, 0], [1, 1], [2, 3], margin=0.2)
    np.testing.assert_allclose(d_ap.numpy(), [0.8, 0.8], atol=1e-6)
    np.testing.assert_allclose(d_an.numpy(), [2.0, 0.4], atol=1e-6)
    np.testing.assert_allclose(terms.numpy(), [0.0, 0.6], atol=1e-6)


def _batch():
    # two people on a line: person 0 at x = 0, 1; person 1 at x = 1.5, 3 (1-d embeddings)
    return tf.constant([[0.0], [1.0], [1.5], [3.0]]), tf.constant([0, 0, 1, 1])


def test_hard_mining_hand_worked():
    emb, labels = _batch()
    a, p, n = mining.select_triplets(emb, labels, 0, 4, "hard")
    # anchor 0: only positive 1; closest negative 2 (d 2.25)
    # anchor 1: positive 0; closest negative 2 (d 0.25)
    # anchor 2: positive 3; closest negative 1 (d 0.25)
    # anchor 3: positive 2; closest negative 1 (d 4)
    assert list(zip(a.numpy(), p.numpy(), n.numpy())) == [(0, 1, 2), (1, 0, 2), (2, 3, 1), (3, 2, 1)]
    loss, metrics = losses.triplet_loss_global(emb, labels, 0.2, "hard")
    # terms: max(1 - 2.25 + .2, 0) = 0; 1 - .25 + .2 = .95; 2.25 - .25 + .2 = 2.2; 2.25 - 4 + .2 < 0
    np.testing.assert_allclose(loss.numpy(), (0.95 + 2.2) / 4, atol=1e-6)
    np.testing.assert_allclose(metrics["active_fraction"].numpy(), 0.5)
    assert metrics["triplets"].numpy() == 4


def test_semihard_mining_hand_worked():
    emb, labels = _batch()
    a, p, n = mining.select_triplets(emb, labels, 0, 4, "semihard")
    # (0,1): d_ap 1; negatives d 2.25 (2), 9 (3): closest farther than 1 -> 2
    # (1,0): d_ap 1; negatives d .25, 4: closest farther -> 3
    # (2,3): d_ap 2.25; negatives d 2.25 (0), .25 (1): none farther -> farthest, 0
    # (3,2): d_ap 2.25; negatives d 9, 4: closest farther -> 1
    assert list(zip(a.numpy(), p.numpy(), n.numpy())) == [(0, 1, 2), (1, 0, 3), (2, 3, 0), (3, 2, 1)]


@pytest.mark.parametrize("mining_name", ["semihard", "hard"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mining_matches_reference(mining_name, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(6), 4)
    rng.shuffle(labels)
    emb = rng.normal(size=(24, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    a, p, n = mining.select_triplets(tf.constant(emb), tf.constant(labels), 0, 24, mining_name)
    got = sorted(zip(a.numpy().tolist(), p.numpy().tolist(), n.numpy().tolist()))
    assert got == sorted(mining.select_triplets_reference(emb, labels, mining_name))
    # anchors of a slice: the same triplets as the whole batch restricted to those anchors
    a2, p2, n2 = mining.select_triplets(tf.constant(emb), tf.constant(labels), 12, 12, mining_name)
    part = sorted(zip(a2.numpy().tolist(), p2.numpy().tolist(), n2.numpy().tolist()))
    assert part == [t for t in got if t[0] >= 12]


def test_anchor_without_positive_gives_no_triplet():
    emb = tf.constant([[0.0], [1.0], [2.0]])
    a, _, _ = mining.select_triplets(emb, tf.constant([0, 0, 1]), 0, 3, "semihard")
    assert sorted(a.numpy().tolist()) == [0, 1]


def test_center_update_hand_worked():
    # centers c0 = (0, 0), c1 = (1, 1); features (1, 0), (0, 1) of class 0, (3, 1) of class 1
    # delta_0 = ((0-1, 0-0) + (0-0, 0-1)) / (1 + 2) = (-1/3, -1/3)
    # delta_1 = (1-3, 1-1) / (1 + 1) = (-1, 0);  alpha = 0.5 -> step 1 - alpha = 0.5
    centers = np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]], np.float32)
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 1.0]], np.float32)
    labels = np.array([0, 0, 1])
    new = losses.center_update(tf.constant(centers), tf.constant(feats), tf.constant(labels), 0.5)
    expected = [[1 / 6, 1 / 6], [1.5, 1.0], [5.0, 5.0]]  # class 2 absent: unchanged
    np.testing.assert_allclose(new.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(losses.center_update_reference(centers, feats, labels, 0.5),
                               expected, atol=1e-6)
    # alpha = 0.95 (the default) moves 5 % of the way: class 1 -> 1 + 0.05 * 1 = 1.05
    new = losses.center_update(tf.constant(centers), tf.constant(feats), tf.constant(labels), 0.95)
    np.testing.assert_allclose(new.numpy()[1], [1.05, 1.0], atol=1e-6)


def test_center_loss_and_prelogits_norm_hand_worked():
    centers = tf.constant([[0.0, 0.0], [1.0, 1.0]])
    feats = tf.constant([[1.0, 0.0], [3.0, 1.0]])
    terms = losses.center_loss_terms(feats, tf.constant([0, 1]), centers)
    np.testing.assert_allclose(terms.numpy(), [1.0, 4.0], atol=1e-6)
    norms = losses.prelogits_norm_terms(tf.constant([[3.0, -4.0]]), 2.0)
    np.testing.assert_allclose(norms.numpy(), [np.hypot(3 + 1e-4, 4 + 1e-4)], rtol=1e-6)
    np.testing.assert_allclose(losses.prelogits_norm_terms(tf.constant([[3.0, -4.0]]), 1.0).numpy(),
                               [7.0002], rtol=1e-6)


def test_softmax_center_loss_single_replica():
    pre = tf.constant([[1.0, 0.0], [3.0, 1.0]])
    logits = tf.constant([[2.0, 0.0], [0.0, 1.0]])
    labels = tf.constant([0, 1])
    centers = tf.Variable([[0.0, 0.0], [1.0, 1.0]])
    loss, metrics, new_centers = losses.softmax_center_loss_global(
        pre, logits, labels, centers, center_factor=0.1, center_alpha=0.5, norm_factor=0.01,
        norm_p=1.0)
    ce = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0))])
    center = np.mean([1.0, 4.0])
    norm = np.mean([1.0002, 4.0002])
    np.testing.assert_allclose(loss.numpy(), ce + 0.1 * center + 0.01 * norm, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"].numpy(), 1.0)
    np.testing.assert_allclose(metrics["center_loss"].numpy(), center, rtol=1e-6)
    np.testing.assert_allclose(new_centers.numpy(), [[0.25, 0.0], [1.5, 1.0]], atol=1e-6)
