"""Losses: triplet (with global online mining), softmax + center loss, pre-logit norm.

Distribution convention (TensorFlow's): every replica returns its share of the *global* mean,
``sum(local terms) / global count``, and the optimizer sums gradients over replicas, so the
update equals one worker's update on the global batch. Counts are all-reduced in the forward
pass.

Formulas (d = squared Euclidean distance):

- triplet: ``max(d(a, p) - d(a, n) + margin, 0)`` averaged over the selected triplets, on
  L2-normalised embeddings (FaceNet). The fraction of triplets with a positive loss is reported
  as ``active_fraction``.
- center loss (Wen et al. 2016): ``mean_i ||x_i - c_{y_i}||^2`` on the pre-logits, times
  ``center_loss_factor``. Centers are updated outside the gradient (eq. 4 of the paper):
  ``delta_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)``, ``c_j <- c_j - (1 - alpha) * delta_j``,
  with ``alpha = center_alpha`` (0.95) in davidsandberg's parameterisation (his
  ``center_loss_alfa``; the paper's learning rate is ``1 - alpha``).
- pre-logit norm (davidsandberg): ``mean_i || |x_i| + 1e-4 ||_p`` times ``prelogits_norm_factor``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .mining import select_triplets

PRELOGITS_NORM_EPS = 1e-4


def _ctx():
    return tf.distribute.get_replica_context()


@tf.custom_gradient
def _dense_gradient(x):
    """Identity whose gradient is made dense: ``all_gather``'s gradient cannot take the
    ``IndexedSlices`` that ``tf.gather`` of the gathered rows produces."""

    def grad(dy):
        return tf.convert_to_tensor(dy)

    return tf.identity(x), grad


def gather_global(x: tf.Tensor) -> tf.Tensor:
    """All workers' ``x`` concatenated along axis 0 in replica order (differentiable: the
    gradient of a gathered row goes back to the worker that owns it)."""
    ctx = _ctx()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    if x.dtype.is_integer:  # collectives gather floats; identities < 2**24 survive float32
        return tf.cast(ctx.all_gather(tf.cast(x, tf.float32), axis=0), x.dtype)
    return _dense_gradient(ctx.all_gather(x, axis=0))


def sum_global(x: tf.Tensor) -> tf.Tensor:
    ctx = _ctx()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


def replica_id() -> tf.Tensor:
    ctx = _ctx()
    if ctx is None:
        return tf.constant(0, tf.int32)
    return tf.cast(ctx.replica_id_in_sync_group, tf.int32)


def triplet_terms(emb: tf.Tensor, anchors, positives, negatives, margin: float):
    """Per-triplet ``max(d_ap - d_an + margin, 0)`` and the two distances."""
    a = tf.gather(emb, anchors)
    d_ap = tf.reduce_sum(tf.square(a - tf.gather(emb, positives)), axis=1)
    d_an = tf.reduce_sum(tf.square(a - tf.gather(emb, negatives)), axis=1)
    return tf.nn.relu(d_ap - d_an + margin), d_ap, d_an


def triplet_loss_global(emb_local: tf.Tensor, labels_local: tf.Tensor, margin: float,
                        mining: str):
    """This replica's share of the triplet loss mined over the global batch.

    Returns ``(loss, metrics)``: ``loss`` sums to the global mean over replicas; ``metrics``
    (``triplet_loss``, ``active_fraction``, ``triplets``) are global values, identical on every
    replica.
    """
    emb_all = gather_global(emb_local)
    labels_all = gather_global(labels_local)
    n = tf.shape(emb_local)[0]
    start = replica_id() * n
    anchors, positives, negatives = select_triplets(emb_all, labels_all, start, n, mining)
    terms, _, _ = triplet_terms(emb_all, anchors, positives, negatives, margin)
    local_count = tf.cast(tf.shape(terms)[0], tf.float32)
    local_active = tf.reduce_sum(tf.cast(terms > 0, tf.float32))
    local_sum = tf.reduce_sum(terms)
    totals = sum_global(tf.stack([local_count, local_active, tf.stop_gradient(local_sum)]))
    count = tf.maximum(totals[0], 1.0)
    loss = local_sum / count
    metrics = {
        "triplet_loss": totals[2] / count,
        "active_fraction": totals[1] / count,
        "triplets": totals[0],
    }
    return loss, metrics


# ------------------------------------------------------------------------------------------
# center loss


def center_loss_terms(features: tf.Tensor, labels: tf.Tensor, centers) -> tf.Tensor:
    """``||x_i - c_{y_i}||^2`` per example (centers take no gradient)."""
    c = tf.gather(tf.stop_gradient(tf.convert_to_tensor(centers)), labels)
    return tf.reduce_sum(tf.square(features - c), axis=1)


def center_update(centers: tf.Tensor, features: tf.Tensor, labels: tf.Tensor,
                  alpha: float) -> tf.Tensor:
    """New centers after one batch (Wen et al. eq. 4, step ``1 - alpha``)."""
    centers = tf.convert_to_tensor(centers)
    features = tf.stop_gradient(tf.cast(features, centers.dtype))
    num = tf.shape(centers)[0]
    diff = tf.gather(centers, labels) - features
    sums = tf.math.unsorted_segment_sum(diff, labels, num)
    counts = tf.math.unsorted_segment_sum(tf.ones_like(labels, centers.dtype), labels, num)
    delta = sums / (1.0 + counts)[:, None]
    return centers - (1.0 - alpha) * delta


def center_update_reference(centers: np.ndarray, features: np.ndarray, labels: np.ndarray,
                            alpha: float) -> np.ndarray:
    """Loop version of :func:`center_update` (for tests)."""
    out = np.array(centers, np.float64)
    for j in np.unique(labels):
        members = features[labels == j]
        delta = (centers[j] - members).sum(0) / (1 + len(members))
        out[j] = centers[j] - (1 - alpha) * delta
    return out


def prelogits_norm_terms(prelogits: tf.Tensor, p: float) -> tf.Tensor:
    """``|| |x_i| + eps ||_p`` per example (davidsandberg's pre-logit norm)."""
    x = tf.abs(prelogits) + PRELOGITS_NORM_EPS
    return tf.pow(tf.reduce_sum(tf.pow(x, p), axis=1), 1.0 / p)


def softmax_center_loss_global(prelogits, logits, labels, centers_var, *, center_factor: float,
                               center_alpha: float, norm_factor: float, norm_p: float):
    """This replica's share of cross-entropy + center loss + pre-logit norm, and the center
    update computed on the global batch (gathered pre-logits and labels, so every worker's copy
    of the centers stays identical).

    Returns ``(loss, metrics, new_centers)``.
    """
    n_local = tf.cast(tf.shape(labels)[0], tf.float32)
    n_global = sum_global(n_local)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    center = center_loss_terms(prelogits, labels, centers_var)
    norm = prelogits_norm_terms(prelogits, norm_p)
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=labels.dtype),
                                             labels), tf.float32))
    parts = tf.stack([tf.reduce_sum(ce), tf.reduce_sum(center), tf.reduce_sum(norm)])
    loss = (parts[0] + center_factor * parts[1] + norm_factor * parts[2]) / n_global
    totals = sum_global(tf.concat([tf.stop_gradient(parts), correct[None]], 0)) / n_global
    metrics = {
        "cross_entropy": totals[0],
        "center_loss": totals[1],
        "prelogits_norm": totals[2],
        "accuracy": totals[3],
    }
    new_centers = center_update(centers_var, gather_global(tf.stop_gradient(prelogits)),
                                gather_global(labels), center_alpha)
    return loss, metrics, new_centers
