"""Algorithm 1 and the baselines recover planted segments on a tiny synthetic log."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from dmeta.c2m import baselines, demand, mst, train
from dmeta.c2m.sequences import BEHAVIOR_VOCAB, build_sequences, build_vocabulary
from dmeta.c2m.synthetic import synthetic_c2m
from dmeta.train import loop


@pytest.fixture(scope="module")
def pretrained():
    data = synthetic_c2m(n_users=96, n_segments=3, mean_events=25, n_purchases=3, seed=0)
    events = data.log.events
    items = build_vocabulary(events["item_id"].to_numpy(), max_size=64)
    cats = build_vocabulary(events["category_id"].to_numpy())
    seqs = build_sequences(events, max_len=48, items=items, categories=cats)
    ae = train.init_autoencoder(
        jax.random.key(0),
        n_behaviors=BEHAVIOR_VOCAB.size,
        n_items=items.size,
        n_categories=cats.size,
        d_model=16,
        n_heads=2,
        n_layers=1,
        latent_dim=4,
    )
    x, mask = seqs.features(), seqs.mask
    params, history = train.pretrain(
        ae, ae.params, x, mask, epochs=30, batch_size=32, learning_rate=3e-3, key=jax.random.key(1)
    )
    assert history[-1]["reconstruction"] < history[0]["reconstruction"]
    return ae, params, x, mask, data.segment[seqs.users], seqs, cats


def test_joint_training_recovers_segments(pretrained):
    ae, params, x, mask, truth, _, _ = pretrained
    seg = train.joint_segmentation(
        ae,
        params,
        x,
        mask,
        n_segments=3,
        alpha=0.5,
        beta=0.5,
        behavior_weights=np.ones(BEHAVIOR_VOCAB.size, np.float32),
        outlier_z=2.5,
        epochs=2,
        batch_size=32,
        learning_rate=1e-3,
        key=jax.random.key(2),
    )
    assert adjusted_rand_score(truth, seg.labels) >= 0.9
    assert 0.8 < seg.weights.mean() < 1.0  # some outliers, most users kept
    assert set(seg.history[-1]) == {"step", "loss", "reconstruction", "clustering", "preference"}
    assert [row["step"] for row in seg.history] == [3, 6]  # one row per epoch of 3 batches
    latent, labels = seg.assign(x, mask, None)  # other users get their nearest centroid
    np.testing.assert_array_equal(labels, seg.labels)
    np.testing.assert_allclose(latent, seg.latent, atol=1e-5)


def test_without_clustering_loss_the_centroids_follow_the_latent(pretrained):
    """alpha = 0 (Table 3's Framework 2): nothing trains the centroids, so Algorithm 1's
    "update the cluster model" moves them by Lloyd iterations; the final centroids are the
    k-means fixpoint of the final latent (each the mean of its inliers), not the initial ones."""
    ae, params, x, mask, _, _, _ = pretrained
    seg = train.joint_segmentation(
        ae, params, x, mask, n_segments=3, alpha=0.0, beta=0.5,
        behavior_weights=np.ones(BEHAVIOR_VOCAB.size, np.float32), outlier_z=2.5, epochs=2,
        batch_size=32, learning_rate=1e-2, key=jax.random.key(2),
    )  # fmt: skip
    inliers = seg.weights > 0
    for k in range(3):
        members = inliers & (seg.labels == k)
        np.testing.assert_allclose(seg.centroids[k], seg.latent[members].mean(0), atol=1e-4)


def test_step_8_refits_the_centroids_and_keeps_every_segment(pretrained):
    """Algorithm 1 step 8 at alpha > 0 too: eq. 6 trains the autoencoder only, and Lloyd
    iterations refit the centroids, moving a segment that no user is nearest to onto a user.
    Here (8 segments of 96 users) the centroids trained by eq. 6's gradient, as before
    2026-11-30, left 2 segments empty; now every segment holds inliers, the final centroids
    are the Lloyd fixpoint of the final latent's inliers (each the mean of its inliers, not an
    Adam update), and that latent is standardized by its inliers."""
    ae, params, x, mask, _, _, _ = pretrained
    seg = train.joint_segmentation(
        ae, params, x, mask, n_segments=8, alpha=1.0, beta=0.5,
        behavior_weights=np.ones(BEHAVIOR_VOCAB.size, np.float32), outlier_z=1.0, epochs=8,
        batch_size=32, learning_rate=3e-2, key=jax.random.key(2), normalize=True,
    )  # fmt: skip
    inliers = seg.weights > 0
    assert np.all(np.bincount(seg.labels[inliers], minlength=8) > 0)
    for k in range(8):
        members = inliers & (seg.labels == k)
        np.testing.assert_allclose(seg.centroids[k], seg.latent[members].mean(0), atol=1e-4)
    np.testing.assert_allclose(seg.latent[inliers].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.sum(seg.latent[inliers] ** 2, 1).mean(), 1.0, rtol=1e-4)
    latent, labels = seg.assign(x, mask, None)  # the embedding maps into the same space
    np.testing.assert_array_equal(labels, seg.labels)
    np.testing.assert_allclose(latent, seg.latent, atol=1e-5)


def test_polynomial_decay_in_the_optimizer_state():
    """With ``decay_end`` the rate falls linearly to ``decay_end`` times the initial one over
    the fit (Adam's step under a constant gradient is the rate itself); the rate and the
    decay live in the state, so one compiled update serves every rate and fit length."""
    opt = train._optimizer(1e-2, 10, 0.1)
    params = {"w": jnp.zeros(())}
    state = opt.init(params)
    update = jax.jit(train._optimizer(0.0, 1, 1.0).update)
    steps = []
    for _ in range(12):
        u, state = update({"w": jnp.ones(())}, state, params)
        steps.append(-float(u["w"]))
    want = [1e-2 * (1 - 0.9 * min(t / 10, 1.0)) for t in range(12)]
    np.testing.assert_allclose(steps, want, rtol=1e-4)
    assert update._cache_size() == 1


def test_learning_rates_share_one_compiled_step(pretrained):
    """The rate lives in the optimizer state: a tuning grid of rates traces the step once,
    and a diverging rate stops the fit with NonFiniteError (a NaN tuning score)."""
    ae, params, x, mask, *_ = pretrained
    traces = []

    def apply(p, x, m):
        traces.append(1)
        return ae.apply(p, x, m)

    counted = dataclasses.replace(ae, apply=apply)
    fit = functools.partial(
        train.pretrain, counted, params, x[:32], mask[:32], epochs=2, batch_size=32,
        key=jax.random.key(5),
    )  # fmt: skip
    _, slow = fit(learning_rate=1e-4)
    traced = len(traces)
    _, fast = fit(learning_rate=1e-2)
    assert len(traces) == traced > 0
    assert fast[-1]["reconstruction"] != slow[-1]["reconstruction"]  # each its own rate
    with pytest.raises(loop.NonFiniteError, match="c2m pretrain lr=nan"):
        fit(learning_rate=float("nan"))
    assert len(traces) == traced


def test_resumed_cell_with_fits_in_another_order_restores_only_equal_fits(pretrained, tmp_path):
    """A cell's fits are checkpointed by order and name; a cell resumed in a fresh process
    first reruns the seed's memoized fits (pretraining, tuning), which shifts the order, so a
    name must tell the fits of a cell apart (here two learning rates of DEC)."""
    ae, params, x, mask, *_ = pretrained
    dec = functools.partial(
        baselines.dec_segmentation, ae, params, x, mask, n_segments=3, epochs=1,
        batch_size=32, key=jax.random.key(6),
    )  # fmt: skip
    with loop.checkpoints(tmp_path):  # the cell run after others: no pretraining in it
        dec(learning_rate=1e-3)
        dec(learning_rate=3e-2)
    with loop.checkpoints(tmp_path):  # the same cell resumed first: pretraining comes first
        train.pretrain(ae, params, x[:32], mask[:32], epochs=1, batch_size=32,
                       learning_rate=1e-3, key=jax.random.key(7))  # fmt: skip
        got = dec(learning_rate=1e-3)
    np.testing.assert_array_equal(got.latent, dec(learning_rate=1e-3).latent)


def test_bag_of_categories_recovers(pretrained):
    _, _, _, mask, truth, seqs, cats = pretrained
    boc = baselines.bag_of_categories_segmentation(
        seqs.category, mask, cats.size, n_segments=3, key=jax.random.key(4)
    )
    assert adjusted_rand_score(truth, boc.labels) >= 0.9
    np.testing.assert_array_equal(boc.assign(None, mask, seqs.category)[1], boc.labels)


def test_dec_student_t_degrees_of_freedom():
    z = np.array([[0.0, 0.0], [2.0, 1.0]], np.float32)
    c = np.array([[0.0, 1.0], [3.0, 0.0]], np.float32)
    d2 = ((z[:, None] - c[None]) ** 2).sum(-1)
    for alpha in (1.0, 0.5):
        q = (1 + d2 / alpha) ** (-(alpha + 1) / 2)
        want = q / q.sum(1, keepdims=True)
        np.testing.assert_allclose(baselines.student_t(z, c, alpha), want, rtol=1e-5)


def test_dec_target_sharpens():
    q = np.array([[0.6, 0.4], [0.5, 0.5]], np.float32)
    p = np.asarray(baselines.dec_target(q))
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
    assert p[0, 0] > q[0, 0]


def test_market_segmentation_tree_splits_by_attribute_preference():
    """MST grows by the logit likelihood gain of its leaves: on 240 users whose 3 planted
    segments differ in category block and attribute preference (8 purchases each), its
    category-share splits recover most of the segments (ARI 0.76; 0 for random splits)."""
    data = synthetic_c2m(n_users=240, n_segments=3, n_purchases=8, seed=1)
    events = data.log.events
    cats = build_vocabulary(events["category_id"].to_numpy())
    items = build_vocabulary(events["item_id"].to_numpy(), max_size=64)
    seqs = build_sequences(events, max_len=48, items=items, categories=cats)
    choices = demand.choice_situations(events, data.log.attributes, n_alternatives=4)
    shares = baselines.category_shares(seqs.category, seqs.mask, cats.size)
    row = np.searchsorted(seqs.users, choices.user)
    embed = baselines.shares_embed(cats.size)
    seg = mst.mst_segmentation(shares, choices, row, embed, n_segments=3, key=jax.random.key(0))
    assert adjusted_rand_score(data.segment[seqs.users], seg.labels) > 0.6
    assert len(seg.history) == 2 and all(h["gain"] > 0 for h in seg.history)
    np.testing.assert_array_equal(seg.assign(None, seqs.mask, seqs.category)[1], seg.labels)
