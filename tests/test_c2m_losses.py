"""C2M losses against hand-computed values and eq. 7's dense form; sinusoidal positions;
autoencoder masking."""

import jax
import jax.numpy as jnp
import numpy as np

from dmeta.c2m import train
from dmeta.c2m.autoencoder import sinusoidal_positions
from dmeta.c2m.losses import clustering_loss, preference_loss
from dmeta.c2m.train import init_autoencoder, standardize
from dmeta.train.state import init_train_state


def test_clustering_loss_eq6_by_hand():
    z = jnp.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.0, 3.0]])
    c = jnp.array([[0.0, 0.0], [10.0, 1.0]])
    w = jnp.array([1.0, 1.0, 1.0, 0.0])  # the last point is an outlier
    # nearest squared distances: 0, 1, 1, 9 -> (0 + 1 + 1) / (4 - 1)
    np.testing.assert_allclose(clustering_loss(z, c, w), 2.0 / 3.0, rtol=1e-6)


def interaction_shares(behavior_p, target_p, mask):
    """Eq. 7's shares over the whole vocabulary, f[B, J, U]: ``sum_l p(j) p(u) / sum_l p(j)``
    (0 where the user has no type-j event), from f[B, L, J], f[B, L, U] and bool[B, L]."""
    bp = behavior_p * mask[..., None]
    joint = jnp.einsum("blj,blu->bju", bp, target_p)
    return joint / jnp.maximum(bp.sum(1)[..., None], 1e-9)


def dense_preference_loss(logits, x, mask, behavior_weights):
    """Eq. 7 written over every (behaviour, item) pair: the reference of ``preference_loss``."""
    b_in = jax.nn.one_hot(x[..., 0], logits[0].shape[-1])
    b_rec = jax.nn.softmax(logits[0], axis=-1)
    total = 0.0
    for f in (1, 2):
        f_in = interaction_shares(b_in, jax.nn.one_hot(x[..., f], logits[f].shape[-1]), mask)
        f_rec = interaction_shares(b_rec, jax.nn.softmax(logits[f], axis=-1), mask)
        per_user = jnp.einsum("j,bju->b", behavior_weights, f_in * (f_in - f_rec) ** 2)
        total = total + per_user.mean()
    return total


def test_interaction_shares_by_hand():
    # one user, behaviours (view, view, cart, pad), items (0, 1, 1, 0)
    b = jax.nn.one_hot(jnp.array([[0, 0, 1, 0]]), 2)
    u = jax.nn.one_hot(jnp.array([[0, 1, 1, 0]]), 2)
    mask = jnp.array([[True, True, True, False]])
    shares = interaction_shares(b, u, mask)
    np.testing.assert_allclose(shares[0], [[0.5, 0.5], [0.0, 1.0]])


def test_preference_loss_eq7_by_hand():
    # codes: behaviour (J=2), item (U=2), category (C=2); one user, two real events.
    x = jnp.array([[[0, 0, 1], [1, 1, 1], [0, 0, 0]]])
    mask = jnp.array([[True, True, False]])
    big = 30.0  # decoder logits ~one-hot: behaviours reproduced, items all predicted as item 1
    lb = jnp.array([[[big, 0], [0, big], [0, 0]]])
    li = jnp.array([[[0, big], [0, big], [0, 0]]])
    lc = jnp.array([[[0, big], [0, big], [0, 0]]])
    w = jnp.array([1.0, 2.0])
    # items: type 0 in = (1, 0), rec = (0, 1): w0 * [1 * (1 - 0)^2 + 0] = 1;
    #        type 1 in = (0, 1), rec = (0, 1): 0.  Categories reproduced exactly: 0.
    np.testing.assert_allclose(preference_loss((lb, li, lc), x, mask, w), 1.0, atol=1e-5)


def test_preference_loss_equals_the_dense_form():
    """Values and gradients; the small behaviour and item vocabularies make events repeat
    (multiplicities > 1), the category one mostly not."""
    vocab, b, length = (3, 4, 60), 3, 12
    keys = jax.random.split(jax.random.key(0), 7)
    logits = tuple(2 * jax.random.normal(keys[i], (b, length, v)) for i, v in enumerate(vocab))
    codes = [jax.random.randint(keys[3 + i], (b, length), 0, v) for i, v in enumerate(vocab)]
    x = jnp.stack(codes, -1)
    mask = jnp.arange(length)[None, :] < jnp.array([[12], [7], [1]])
    w = jnp.linspace(0.5, 2.0, vocab[0])

    def both(lg):
        return preference_loss(lg, x, mask, w), dense_preference_loss(lg, x, mask, w)

    (got, want), vjp = jax.vjp(jax.jit(both), logits)
    assert float(want) > 0.01
    np.testing.assert_allclose(got, want, rtol=1e-5)
    grad_got, grad_want = vjp((1.0, 0.0)), vjp((0.0, 1.0))
    for a, e in zip(jax.tree.leaves(grad_got), jax.tree.leaves(grad_want), strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-6)


def test_sinusoidal_positions_eq4_5():
    pe = sinusoidal_positions(7, 6)
    p, i = 5, 1
    np.testing.assert_allclose(pe[p, 2 * i], np.sin(p / 10000 ** (2 * i / 6)), rtol=1e-6)
    np.testing.assert_allclose(pe[p, 2 * i + 1], np.cos(p / 10000 ** (2 * i / 6)), rtol=1e-6)


def test_latent_ignores_padding():
    ae = init_autoencoder(
        jax.random.key(0),
        n_behaviors=4,
        n_items=5,
        n_categories=3,
        d_model=8,
        n_heads=2,
        n_layers=1,
        latent_dim=4,
    )
    x = jnp.array([[[1, 2, 1], [2, 3, 2], [0, 0, 0]]])
    mask = jnp.array([[True, True, False]])
    x_other_pad = x.at[0, 2].set(jnp.array([3, 4, 2]))
    z1, logits = ae.apply(ae.params, x, mask)
    z2 = ae.encode(ae.params, x_other_pad, mask)
    np.testing.assert_allclose(z1, z2, atol=1e-6)
    assert [lg.shape for lg in logits] == [(1, 3, 4), (1, 3, 5), (1, 3, 3)]


def test_dropout_only_with_a_key():
    """Dropout acts while training (a key given) and never when encoding for clustering; at
    rate 0 a key changes nothing, so the default config keeps its numbers."""
    kw = dict(n_behaviors=4, n_items=5, n_categories=3, d_model=8, n_heads=2, n_layers=1)
    x = jnp.array([[[1, 2, 1], [2, 3, 2], [3, 4, 2]]])
    mask = jnp.array([[True, True, True]])
    drop = init_autoencoder(jax.random.key(0), **kw, latent_dim=4, dropout=0.5)
    plain = init_autoencoder(jax.random.key(0), **kw, latent_dim=4)
    z = drop.encode(drop.params, x, mask)
    np.testing.assert_array_equal(z, plain.encode(plain.params, x, mask))
    k1, k2 = jax.random.split(jax.random.key(1))
    z1 = drop.train_encode(drop.params, x, mask, k1)
    assert not np.allclose(z1, z) and not np.allclose(
        z1, drop.train_encode(drop.params, x, mask, k2)
    )
    np.testing.assert_allclose(plain.train_apply(plain.params, x, mask, k1)[0], z, atol=1e-6)


def test_normalized_latent_cannot_lower_eq6_by_shrinking():
    """Eq. 6 on the raw latent falls with its scale (the shrinking the joint training showed:
    total variance -20% after 40 epochs at alpha 1, -38% at alpha 10 on a 96-user log); on the
    standardized latent it does not move."""
    z = jax.random.normal(jax.random.key(0), (20, 3)) + 5.0
    c = jnp.array([[5.0, 5.0, 5.0], [6.0, 5.0, 4.0]])
    w = jnp.ones(20)
    raw = clustering_loss(0.5 * z, 0.5 * c, w)
    np.testing.assert_allclose(raw, 0.25 * clustering_loss(z, c, w), rtol=1e-5)
    cs = jnp.array([[0.0, 0.0, 0.0], [1.0, 0.0, -1.0]])
    np.testing.assert_allclose(
        clustering_loss(standardize(0.5 * z), cs, w), clustering_loss(standardize(z), cs, w),
        rtol=1e-5,
    )  # fmt: skip
    s = standardize(z)
    np.testing.assert_allclose(jnp.mean(jnp.sum(s**2, axis=1)), 1.0, rtol=1e-5)


def test_outliers_cannot_lower_eq6_by_moving_away():
    """Eq. 6 sums over the inliers; on the latent standardized by all points' statistics it
    fell as the outliers moved out (they raise the scale: 0.95 -> 0.17 here as half the
    points move 8x out). Standardized by the inliers' (``standardize`` with the weights),
    points of weight 0 change nothing wherever they go, and shrinking changes nothing."""
    z = jax.random.normal(jax.random.key(0), (32, 3))
    w = jnp.concatenate([jnp.ones(16), jnp.zeros(16)])
    c = jnp.array([[0.5, 0.0, 0.0], [-0.5, 0.0, 0.0]])

    def eq6(z, weights):
        return clustering_loss(standardize(z, weights), c, w)

    base = eq6(z, w)
    for moved in (z.at[16:].multiply(8.0), z.at[16:].add(1e3), z.at[16:].set(0.0), 0.5 * z):
        np.testing.assert_allclose(eq6(moved, w), base, rtol=1e-5)
    assert eq6(z.at[16:].multiply(8.0), None) < 0.2 * eq6(z, None)
    s = standardize(z, w)[:16]
    np.testing.assert_allclose(s.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(jnp.mean(jnp.sum(s**2, axis=1)), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(standardize(z, jnp.zeros(32)), standardize(z))  # no inlier


def test_joint_loss_ignores_outliers_and_trains_no_centroid():
    """``_joint_loss`` standardizes each batch by its inliers (moving an outlier's latent
    leaves eq. 6 as it is), and an Adam step of the joint training leaves the centroids
    exactly where they are (Algorithm 1 step 7 updates the autoencoder; step 8 refits the
    centroids), with or without the standardization."""
    vocab = 1000

    def apply(params, x, mask):  # latent: the first event's item and category codes
        z = params["scale"] * x[:, 0, 1:].astype(jnp.float32)
        items = jnp.broadcast_to(params["logits"], (*x.shape[:2], vocab))
        return z, (jnp.zeros((*x.shape[:2], 1)), items, items)

    ae = train.Autoencoder(apply, lambda p, x, m: apply(p, x, m)[0], {})
    rng = np.random.default_rng(0)
    codes = np.concatenate([rng.integers(0, 20, (12, 2, 2)), rng.integers(30, 100, (4, 2, 2))])
    x = np.concatenate([np.zeros((16, 2, 1), np.int64), codes], axis=2).astype(np.int32)
    batch = {"x": x, "mask": np.ones((16, 2), bool), "weights": np.repeat([1.0, 0.0], [12, 4])}
    far = x.copy()
    far[12:, :, 1:] *= 8  # the outliers' latents 8x farther out
    moved = {**batch, "x": far}
    consts = {"alpha": 1.0, "beta": 0.5, "behavior_weights": jnp.ones(1)}
    params = {
        "ae": {"scale": jnp.float32(0.1), "logits": jnp.zeros(vocab)},
        "centroids": jnp.array([[-1.0, 0.0], [1.0, 0.5]]),
    }
    key = jax.random.key(0)
    for normalize in (True, False):
        loss_fn = train._joint_loss(ae, normalize)
        if normalize:
            got = [loss_fn(params, b, consts, key)[1]["clustering"] for b in (batch, moved)]
            np.testing.assert_allclose(got[1], got[0], rtol=1e-5)
        state = init_train_state(params, train._optimizer(1e-2), key)
        new, _ = train._train_step(loss_fn)(state, batch, consts)
        np.testing.assert_array_equal(new.params["centroids"], params["centroids"])
        assert not np.allclose(new.params["ae"]["logits"], params["ae"]["logits"])
