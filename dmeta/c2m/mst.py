"""Market Segmentation Trees (Aouad, Elmachtoub, Ferreira and McNellis, MSOM 2023), the MST
baseline of C2M's Table 1.

An MST assigns customers to the leaves of a decision tree on their features, each leaf with
its own response model, and grows the tree greedily: each split is the one whose two children's
response models gain the most likelihood over their parent's. Here the response model is the
mining stage's conditional logit of the purchase choice situations (eq. 12), the features are
each user's category shares (BoC-KM's space), and the tree grows best first (the leaf and split
of largest gain) to ``n_segments`` leaves, each child keeping at least ``min_leaf_share`` of
the users. Candidate splits are the quartiles of the ``n_features`` categories of largest mean
share. The number of leaves is fixed (every Table 1 method gets the same number of segments),
where the MST paper may size its trees otherwise; its text is not in ``../shared/papers``, so
the split search here is ours. The likelihoods are fitted on at most ``max_situations``
situations drawn once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import numpy as np

from dmeta.c2m.demand import ChoiceData
from dmeta.c2m.train import Segmentation
from dmeta.mining.logit import fit_logit_batched

Leaf = tuple[tuple[int, float, bool], ...]  # conditions (feature, threshold, above it)
CHUNK = 16  # weightings per batched fit


def leaf_of(features: np.ndarray, leaves: list[Leaf]) -> np.ndarray:
    """i32[N]: the leaf whose conditions each row of ``features`` f[N, F] meets."""
    out = np.zeros(len(features), np.int32)
    for i, conditions in enumerate(leaves):
        inside = np.ones(len(features), bool)
        for f, threshold, above in conditions:
            inside &= (features[:, f] > threshold) == above
        out[inside] = i
    return out


def logliks(data: ChoiceData, weights: np.ndarray, l2: float) -> np.ndarray:
    """f[G]: the maximized log-likelihood of the conditional logit (alternative 0 chosen)
    under each weighting ``weights`` f[G, N] of the situations, in padded chunks of CHUNK."""
    g = len(weights)
    padded = np.zeros((-(-g // CHUNK) * CHUNK, weights.shape[1]))
    padded[:g] = weights
    shape = (CHUNK, *data.x.shape)
    out = []
    for start in range(0, len(padded), CHUNK):
        fit = fit_logit_batched(
            np.broadcast_to(data.x, shape),
            np.zeros(shape[:2], int),
            mask=np.broadcast_to(data.mask, shape[:3]),
            weights=padded[start : start + CHUNK],
            l2=l2,
        )
        out.append(np.asarray(fit.loglik))
    return np.concatenate(out)[:g]


def _candidates(features, label, n_leaves, columns, min_leaf) -> list[tuple[int, int, float]]:
    """(leaf, feature, threshold) of every allowed split: quartiles of the leaf's values."""
    out = []
    for leaf in range(n_leaves):
        rows = label == leaf
        for f in columns:
            for t in np.unique(np.quantile(features[rows, f], [0.25, 0.5, 0.75])):
                above = int((rows & (features[:, f] > t)).sum())
                if min(above, int(rows.sum()) - above) >= min_leaf:
                    out.append((leaf, int(f), float(t)))
    return out


def mst_segmentation(
    features: np.ndarray,
    data: ChoiceData,
    situation_user: np.ndarray,
    embed: Callable,
    *,
    n_segments: int,
    key: jax.Array,
    n_features: int = 10,
    min_leaf_share: float = 0.05,
    max_situations: int = 20_000,
    l2: float = 1e-3,
) -> Segmentation:
    """A market segmentation tree of ``n_segments`` leaves (module docstring).

    Args:
      features: f[U, F] features of the users the tree is fitted on.
      data: choice situations; situation_user: i[N] row of each situation's user in
        ``features`` (-1: not one of them).
      embed: the features of any users (``Segmentation.embed``).
      key: draws the situations kept when there are more than ``max_situations``.
    """
    rows = np.flatnonzero(situation_user >= 0)
    if len(rows) > max_situations:
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_situations, replace=False))
    sub = dataclasses.replace(
        data, x=data.x[rows], mask=data.mask[rows], user=data.user[rows],
        category=data.category[rows],
    )  # fmt: skip
    owner = situation_user[rows]
    columns = np.argsort(-features.mean(0), kind="stable")[:n_features]
    min_leaf = math.ceil(min_leaf_share * len(features))
    leaves: list[Leaf] = [()]
    leaf_ll = list(logliks(sub, np.ones((1, len(rows))), l2))
    history = []
    while len(leaves) < n_segments:
        label = leaf_of(features, leaves)
        cands = _candidates(features, label, len(leaves), columns, min_leaf)
        if not cands:
            break
        above = np.stack([(label == i) & (features[:, f] > t) for i, f, t in cands])
        below = np.stack([(label == i) & (features[:, f] <= t) for i, f, t in cands])
        ll = logliks(sub, np.concatenate([above, below])[:, owner].astype(float), l2)
        gain = ll[: len(cands)] + ll[len(cands) :] - np.array([leaf_ll[c[0]] for c in cands])
        best = int(np.argmax(gain))
        i, f, t = cands[best]
        leaves[i], leaf_ll[i] = (*leaves[i], (f, t, True)), ll[best]
        leaves.append((*leaves[i][:-1], (f, t, False)))
        leaf_ll.append(ll[len(cands) + best])
        history.append({"step": len(leaves) - 1, "gain": float(gain[best])})
    label = leaf_of(features, leaves)
    centroids = np.stack([features[label == i].mean(0) for i in range(len(leaves))])
    weights = np.ones(len(features), np.float32)
    predict = lambda z: leaf_of(z, leaves)
    return Segmentation(label, features, weights, history, centroids, embed, predict)
