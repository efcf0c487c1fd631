"""Online triplet mining over the *global* batch.

Every worker computes the embeddings of its local rows, gathers all workers' rows with
``ReplicaContext.all_gather`` and picks triplets whose anchors are its own rows while positives
and negatives may be anywhere in the global batch. The full ``(N, N)`` distance matrix is
computed from the gathered embeddings on every worker (the same inputs and shapes as on one
worker, so the choice is bitwise the same), then the local anchor rows are sliced out: with N
workers, the union of the workers' triplets is exactly what one worker selects from the same
global batch (``tests/test_train_mining.py`` checks it on 2 local workers).

Mining strategies (``loss.mining``), distances are squared Euclidean:

- ``semihard`` (FaceNet, Schroff et al. 2015, as ``tfa.losses.triplet_semihard_loss``): every
  anchor-positive pair (a, p) with a local; the negative is the closest one *farther* than the
  positive (``d_an > d_ap``); when there is none, the farthest negative.
- ``hard`` (batch-hard, Hermans et al. 2017): per anchor, the farthest positive and the closest
  negative.

Ties are broken by the lowest global index. An anchor without a positive or without a negative
gives no triplet.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def pairwise_squared_distances(emb: tf.Tensor) -> tf.Tensor:
    """``(N, D) -> (N, N)`` squared Euclidean distances (clamped at 0)."""
    sq = tf.reduce_sum(tf.square(emb), axis=1)
    d = sq[:, None] + sq[None, :] - 2.0 * tf.matmul(emb, emb, transpose_b=True)
    return tf.maximum(d, 0.0)


def select_triplets(emb_all: tf.Tensor, labels_all: tf.Tensor, start, count, mining: str):
    """Triplets whose anchors are rows ``start .. start + count - 1`` of the global batch.

    Args:
        emb_all: ``(N, D)`` embeddings of the global batch (the selection takes no gradient).
        labels_all: ``(N,)`` integer identities.
        start, count: the anchor rows (this worker's slice of the global batch).
        mining: ``"semihard"`` or ``"hard"``.

    Returns:
        ``(anchors, positives, negatives)``: ``(T,) int32`` indices into the global batch.
    """
    emb_all = tf.stop_gradient(emb_all)
    labels_all = tf.convert_to_tensor(labels_all)
    n_all = tf.shape(emb_all)[0]
    start = tf.cast(start, tf.int32)
    count = tf.cast(count, tf.int32)
    dist = pairwise_squared_distances(emb_all)[start:start + count]  # (n, N)
    anchor_ids = start + tf.range(count, dtype=tf.int32)
    cols = tf.range(n_all, dtype=tf.int32)
    same = tf.equal(labels_all[start:start + count][:, None], labels_all[None, :])
    pos_mask = tf.logical_and(same, tf.not_equal(anchor_ids[:, None], cols[None, :]))
    neg_mask = tf.logical_not(same)
    has_pos = tf.reduce_any(pos_mask, axis=1)
    has_neg = tf.reduce_any(neg_mask, axis=1)
    inf = tf.constant(np.inf, dist.dtype)

    if mining == "hard":
        valid = tf.logical_and(has_pos, has_neg)
        hardest_pos = tf.argmax(tf.where(pos_mask, dist, -inf), axis=1, output_type=tf.int32)
        hardest_neg = tf.argmin(tf.where(neg_mask, dist, inf), axis=1, output_type=tf.int32)
        return (tf.boolean_mask(anchor_ids, valid), tf.boolean_mask(hardest_pos, valid),
                tf.boolean_mask(hardest_neg, valid))
    if mining != "semihard":
        raise ValueError(f"unknown mining {mining!r}")

    neg_dist = tf.where(neg_mask, dist, inf)
    order = tf.argsort(neg_dist, axis=1, stable=True)  # negatives first, by distance, then index
    sorted_neg = tf.gather(neg_dist, order, batch_dims=1)
    n_neg = tf.reduce_sum(tf.cast(neg_mask, tf.int32), axis=1)
    # position of the first negative strictly farther than each positive
    first_farther = tf.searchsorted(sorted_neg, tf.where(pos_mask, dist, 0.0), side="right",
                                    out_type=tf.int32)
    fallback = tf.maximum(n_neg - 1, 0)[:, None]  # the farthest negative
    pick = tf.where(first_farther < n_neg[:, None], first_farther, fallback)
    neg_for_pair = tf.gather(order, pick, batch_dims=1)  # (n, N) column of the chosen negative
    pairs = tf.where(tf.logical_and(pos_mask, has_neg[:, None]))  # (T, 2) [row, column]
    pairs = tf.cast(pairs, tf.int32)
    anchors = start + pairs[:, 0]
    positives = pairs[:, 1]
    negatives = tf.gather_nd(neg_for_pair, pairs)
    return anchors, positives, negatives


# ------------------------------------------------------------------------------------------
# reference implementation (NumPy, loops): what the tests compare against


def select_triplets_reference(emb: np.ndarray, labels: np.ndarray, mining: str):
    """Plain-loop version of :func:`select_triplets` over the whole batch (one worker)."""
    emb = np.asarray(emb, np.float64)
    labels = np.asarray(labels)
    n = len(emb)
    d = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
    out = []
    for a in range(n):
        pos = [j for j in range(n) if j != a and labels[j] == labels[a]]
        neg = [k for k in range(n) if labels[k] != labels[a]]
        if not pos or not neg:
            continue
        if mining == "hard":
            p = max(pos, key=lambda j: (d[a, j], -j))
            k = min(neg, key=lambda k: (d[a, k], k))
            out.append((a, p, k))
            continue
        for p in pos:
            farther = [k for k in neg if d[a, k] > d[a, p]]
            if farther:
                k = min(farther, key=lambda k: (d[a, k], k))
            else:
                k = max(neg, key=lambda k: (d[a, k], k))  # ties: the last in sorted order
            out.append((a, p, k))
    return out
