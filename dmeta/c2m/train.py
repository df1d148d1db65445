"""Deep customer segmentation (C2M Algorithm 1): pretraining and Ours' joint training.

Every deep method (the baselines of ``dmeta.c2m.baselines`` included) trains through
``train_epochs``: ``dmeta.train.loop.fit`` over epochs (``loop.epoch_step``) of a jitted
``(state, batch, consts) -> (state, metrics)`` Adam step on fixed-size batches of users, with
per-epoch targets (outlier weights, DEC's target distribution, DeepCluster's pseudo-labels)
recomputed from the latents of all users before each epoch. The step is compiled once per
loss (the learning rate lives in the optimizer state, and so does the polynomial decay of
the paper when ``decay_end`` is set), and C2M trains a fixed number of epochs (no validation
early stopping), one log row per epoch. With a dropout rate in the model, every training step
draws its dropout mask from ``fold_in(state.key, state.step)``; encoding for clustering and
scoring is deterministic.

* ``pretrain``: reconstruction only (Algorithm 1, step 1).
* ``joint_segmentation``: reconstruction + alpha * clustering (eq. 6) + beta * preference (eq. 7)
  trains the autoencoder only; before every epoch and at the end the cluster model (centroids
  and outlier weights) is refitted by Lloyd iterations on the latent of all fit users (step 2),
  labels from the nearest centroid (step 3). With ``normalize`` eq. 6 acts on the latent
  standardized to unit total variance of its inliers (in the loss the batch's inliers, for the
  cluster model the fit users'), so the loss can fall neither by shrinking the latent nor by
  pushing outliers away.

Every segmentation (these and ``dmeta.c2m.baselines``) is fitted on some users and carries
its centroids and an ``embed`` function, so other users are assigned to their nearest centroid
in the method's own space (``Segmentation.assign``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dmeta import distributed
from dmeta.c2m.autoencoder import BehaviorAutoencoder
from dmeta.c2m.losses import clustering_loss, preference_loss, reconstruction_loss
from dmeta.cluster.kmeans import KMeansResult, kmeans, refit, sq_distances
from dmeta.distributed import Strata
from dmeta.nn.functional import split_params
from dmeta.parallel import data_mesh, jit_step
from dmeta.train.logs import Row
from dmeta.train.loop import epoch_step, fit
from dmeta.train.state import TrainState, init_train_state
from dmeta.types import Params


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """A segmentation of the U users it was fitted on.

    Attributes:
      labels: i32[U]; latent: f[U, Z] (the space the labels were found in); weights: f[U]
        (0 for outliers); history: per-epoch rows (``step`` and mean losses) of the training;
      centroids: f[K, Z] in the latent space (the segments' centres);
      embed: ``(x i32[N, L, 3], mask bool[N, L], category i32[N, L]) -> f[N, Z]``, the latent
        space of any users;
      predict: latents f[N, Z] -> labels i32[N]; None: the nearest centroid (every method but
        a tree's).
    """

    labels: np.ndarray
    latent: np.ndarray
    weights: np.ndarray
    history: list[Row]
    centroids: np.ndarray
    embed: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    predict: Callable[[np.ndarray], np.ndarray] | None = None

    def assign(self, x, mask, category) -> tuple[np.ndarray, np.ndarray]:
        """(latent f[N, Z], labels i32[N]) of any N users."""
        z = np.asarray(self.embed(x, mask, category))
        if self.predict is not None:
            return z, np.asarray(self.predict(z), np.int32)
        labels = np.asarray(jnp.argmin(sq_distances(z, self.centroids), axis=1), np.int32)
        return z, labels


@dataclasses.dataclass(frozen=True, eq=False)
class Autoencoder:
    """The model's pure functions and its parameters: ``apply(params, x, mask[, key]) -> (z,
    logits)``, ``encode(params, x, mask[, key]) -> z`` (``key``: dropout). Hashed by identity:
    jitted steps are cached per model, so reuse one ``Autoencoder`` (with other ``params``)
    across seeds and sweeps of one config."""

    apply: Callable
    encode: Callable
    params: Params
    dropout: float = 0.0

    def train_apply(self, params: Params, x, mask, key: jax.Array):
        """``apply`` with dropout drawn from ``key`` (deterministic at rate 0)."""
        return self.apply(params, x, mask, key) if self.dropout else self.apply(params, x, mask)

    def train_encode(self, params: Params, x, mask, key: jax.Array):
        """``encode`` with dropout drawn from ``key`` (deterministic at rate 0)."""
        return self.encode(params, x, mask, key) if self.dropout else self.encode(params, x, mask)


def init_autoencoder(
    key: jax.Array,
    *,
    n_behaviors: int,
    n_items: int,
    n_categories: int,
    d_model: int,
    n_heads: int,
    n_layers: int,
    latent_dim: int,
    dropout: float = 0.0,
) -> Autoencoder:
    """Builds ``BehaviorAutoencoder`` (``dropout``: rate while training) and splits it once
    into pure functions."""
    model = BehaviorAutoencoder(
        n_behaviors=n_behaviors,
        n_items=n_items,
        n_categories=n_categories,
        d_model=d_model,
        n_heads=n_heads,
        n_layers=n_layers,
        latent_dim=latent_dim,
        dropout=dropout,
        rngs=nnx.Rngs(key),
    )
    apply, params = split_params(model)
    encode, _ = split_params(model, "encode")
    return Autoencoder(apply, jax.jit(encode), params, dropout)


def encode_all(ae: Autoencoder, params: Params, x, mask, batch_size: int = 256) -> np.ndarray:
    """Latents ``f[U, Z]`` of all users, in batches."""
    enc = jax.jit(ae.encode)
    out = [
        enc(params, x[i : i + batch_size], mask[i : i + batch_size])
        for i in range(0, len(x), batch_size)
    ]
    return np.asarray(jnp.concatenate(out))


def encode_users(
    ae: Autoencoder, params: Params, x, mask, strata: Strata | None = None
) -> np.ndarray:
    """Latents f[U, Z] of all U users: ``encode_all`` of ``x`` i32[U, L, 3], or with
    ``strata`` of every process's users (``x``: this process's N, stratum after stratum),
    encoded stratum by stratum and gathered, the same on every process (a collective;
    ``params`` on the host or fully addressable)."""
    if strata is None:
        return encode_all(ae, params, x, mask)
    return strata.gather([encode_all(ae, params, x[b], mask[b]) for b in strata.local_slices()])


def _adam_decay(
    learning_rate, decay_steps, end_ratio, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0
) -> optax.GradientTransformation:
    """Adam whose rate decays linearly (polynomial decay of power 1, TensorFlow's default)
    from ``learning_rate`` to ``end_ratio * learning_rate`` over ``decay_steps`` updates."""

    def rate(count):
        return learning_rate * (1.0 - (1.0 - end_ratio) * jnp.minimum(count / decay_steps, 1.0))

    return optax.chain(
        optax.scale_by_adam(b1, b2, eps, eps_root), optax.scale_by_learning_rate(rate)
    )


def _optimizer(
    learning_rate: float, decay_steps: int | None = None, decay_end: float | None = None
) -> optax.GradientTransformation:
    """Adam with the learning rate in its state (``optax.inject_hyperparams``); with
    ``decay_end`` its rate decays to ``decay_end * learning_rate`` over ``decay_steps``
    (both in the state too). The betas and eps stay Python constants, as in ``optax.adam``
    (injected as f32 arrays, ``1 - b2`` would be rounded differently and the moments would no
    longer match bit for bit)."""
    static = ("b1", "b2", "eps", "eps_root")
    if decay_end is None:
        return optax.inject_hyperparams(optax.adam, static_args=static)(learning_rate=learning_rate)
    return optax.inject_hyperparams(_adam_decay, static_args=static)(
        learning_rate=learning_rate, decay_steps=decay_steps, end_ratio=decay_end
    )


@functools.cache
def _train_step(loss_fn: Callable, shard: bool = False, decay: bool = False) -> Callable:
    """Jitted ``step(state, batch, consts) -> (state, metrics)``, one per loss, ``shard``
    (split the batch over all visible devices, the rest replicated) and ``decay`` (the
    learning-rate decay on). The learning rate and its decay are read from
    ``state.opt_state``, so fits at other rates and lengths reuse the compiled step;
    ``loss_fn(params, batch, consts, key)`` gets the step's dropout key."""
    optimizer = _optimizer(0.0, 1, 1.0 if decay else None)  # the rates come from the state

    def step(state: TrainState, batch, consts):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        key = jax.random.fold_in(state.key, state.step)
        (_, metrics), grads = grad_fn(state.params, batch, consts, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1, state.key), metrics

    return jit_step(step, data_mesh() if shard else None, batch_argnums=(1,))


def train_epochs(
    params: Params,
    loss_fn: Callable,
    data: dict[str, np.ndarray],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    key: jax.Array,
    desc: str,
    decay_end: float | None = None,
    consts: dict | None = None,
    before_epoch: Callable[[TrainState, int], tuple[TrainState, dict[str, np.ndarray]]]
    | None = None,
    shard: bool = False,
    strata: Strata | None = None,
) -> tuple[Params, list[Row]]:
    """Minibatch Adam over users with ``dmeta.train.loop.fit``, one log row per epoch.

    Args:
      params: the trained pytree.
      loss_fn: ``loss_fn(params, batch, consts, key) -> (loss, metrics)`` (``key``: dropout).
      data: per-user arrays (leading axis U).
      key: shuffles the users (split once per epoch, ``loop.epoch_step``) and draws dropout.
      desc: names the fit (checkpoint folder, curve, errors); the learning rate, batch
        size and U are appended, so the fits of one cell have distinct names.
      decay_end: None (constant rate) or the final rate over the initial one of a linear
        decay over the whole fit (the paper's polynomial decay).
      consts: traced hyper-parameters.
      before_epoch: ``(state, epoch) -> (state, targets)`` before each epoch: may reset
        parameters and adds per-user targets (f[U, ...]).
      shard: split each batch over all visible devices (``dmeta.parallel``; the batch
        size, or U if smaller, must divide by the device count).
      strata: ``data`` (and ``before_epoch``'s targets) are this process's users of
        several processes' (``dmeta.distributed.Strata``): stratified global batches of
        ``batch_size`` over all devices of all processes (``loop.epoch_step``); implies
        ``shard``.

    Returns:
      The trained params and ``fit``'s rows (``step``, per-epoch mean metrics).

    Raises:
      NonFiniteError: an epoch's mean metric is NaN or infinite.
    """
    n = len(data["x"]) if strata is None else int(sum(strata.sizes))
    shard = shard or strata is not None

    def prepare(state: TrainState):
        return before_epoch(state, int(state.step) // step.steps)

    step = epoch_step(
        _train_step(loss_fn, shard, decay_end is not None),
        data,
        batch_size=batch_size,
        consts=lambda epoch: {} if consts is None else consts,
        before_epoch=None if before_epoch is None else prepare,
        strata=strata,
        mesh=data_mesh() if strata is not None else None,
    )
    n_steps = epochs * step.steps
    decay = "" if decay_end is None else f" decay_end={decay_end:g}"
    result = fit(
        step,
        init_train_state(params, _optimizer(learning_rate, n_steps, decay_end), key),
        n_steps=n_steps,
        steps_per_call=step.steps,
        eval_every=step.steps,
        desc=f"{desc} lr={learning_rate:g}{decay} batch={batch_size} users={n}",
        settings=dict(data=data, consts=consts),  # outside the state: the users, the weights
    )
    return result.state.params, result.history


@functools.cache
def _pretrain_loss(ae: Autoencoder) -> Callable:
    def loss_fn(params, batch, consts, key):
        _, logits = ae.train_apply(params, batch["x"], batch["mask"], key)
        loss = reconstruction_loss(logits, batch["x"], batch["mask"])
        return loss, {"reconstruction": loss}

    return loss_fn


def moments(z, weights=None) -> tuple[jax.Array, jax.Array]:
    """The weighted mean f[Z] of ``z: f[N, Z]`` and the root f[] of its weighted total
    variance (mean squared distance to the mean, at least 1e-12); ``weights: f[N]`` (e.g. 0
    for outliers), all 1 when None or when they sum to 0."""
    w = jnp.ones(z.shape[0]) if weights is None else jnp.asarray(weights)
    w = jnp.where(w.sum() > 0, w, 1.0)
    mean = (w @ z) / w.sum()
    var = (w @ jnp.sum((z - mean) ** 2, axis=1)) / w.sum()
    return mean, jnp.sqrt(jnp.maximum(var, 1e-24))


def standardize(z, weights=None):
    """``(z - mean) / scale`` with the ``moments`` of ``z: f[N, Z]`` weighted by ``weights``:
    the points of weight > 0 get mean 0 and total variance 1 (distances shrink or grow
    together: SC and CH do not change), whatever the points of weight 0 do."""
    mean, scale = moments(z, weights)
    return (z - mean) / scale


@functools.cache
def _joint_loss(ae: Autoencoder, normalize: bool = False) -> Callable:
    """Algorithm 1's joint loss; the centroids (the cluster model) take no gradient, so Adam
    leaves them as they are (zero gradients, zero moments)."""

    def loss_fn(state, batch, consts, key):
        z, logits = ae.train_apply(state["ae"], batch["x"], batch["mask"], key)
        rec = reconstruction_loss(logits, batch["x"], batch["mask"])
        z = standardize(z, batch["weights"]) if normalize else z
        centroids = jax.lax.stop_gradient(state["centroids"])
        clus = clustering_loss(z, centroids, batch["weights"])
        pref = preference_loss(logits, batch["x"], batch["mask"], consts["behavior_weights"])
        loss = rec + consts["alpha"] * clus + consts["beta"] * pref
        return loss, {"loss": loss, "reconstruction": rec, "clustering": clus, "preference": pref}

    return loss_fn


def pretrain(
    ae: Autoencoder,
    params: Params,
    x,
    mask,
    *,
    epochs,
    batch_size,
    learning_rate,
    key,
    decay_end: float | None = None,
    shard: bool = False,
    strata: Strata | None = None,
) -> tuple[Params, list[Row]]:
    """Algorithm 1, step 1: reconstruction only, from ``params`` (e.g. ``ae.params``).

    ``decay_end``, ``shard`` (split each batch of users over all visible devices) and
    ``strata`` (``x``, ``mask``: this process's users) as in ``train_epochs``.
    """
    return train_epochs(
        params,
        _pretrain_loss(ae),
        {"x": x, "mask": mask},
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        key=key,
        desc="c2m pretrain",
        decay_end=decay_end,
        shard=shard,
        strata=strata,
    )


def latent_space(
    ae: Autoencoder,
    params: Params,
    x,
    mask,
    *,
    normalize: bool = False,
    weights: np.ndarray | None = None,
    strata: Strata | None = None,
) -> tuple[np.ndarray, Callable]:
    """The latents f[U, Z] of users ``x`` (with ``strata``: of all processes' users,
    ``encode_users``) and the ``Segmentation.embed`` of that space: ``encode_all`` (with
    ``normalize``, standardized by these users' ``moments`` weighted by ``weights`` f[U])."""
    if strata is not None:  # replicated global arrays -> host, for each process's encoding
        params = distributed.to_host(params)
    z = encode_users(ae, params, x, mask, strata)
    if not normalize:
        return z, lambda x, mask, category: encode_all(ae, params, x, mask)
    space = _affine(*moments(z, weights))
    return space(z), lambda x, mask, category: space(encode_all(ae, params, x, mask))


def _affine(mean, scale) -> Callable[[np.ndarray], np.ndarray]:
    """``z f[N, Z] -> (z - mean) / scale`` on the host."""
    mean, scale = np.asarray(mean), np.asarray(scale)
    return lambda z: (np.asarray(z) - mean) / scale


def joint_segmentation(
    ae: Autoencoder,
    params: Params,
    x,
    mask,
    *,
    n_segments: int,
    alpha: float,
    beta: float,
    behavior_weights: np.ndarray,
    outlier_z: float | None,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    key: jax.Array,
    normalize: bool = False,
    decay_end: float | None = None,
    shard: bool = False,
    strata: Strata | None = None,
) -> Segmentation:
    """Algorithm 1, steps 2-3, from pretrained ``params``.

    The cluster model (centroids f[K, Z], the fit users' outlier weights f[U]) rides in the
    trained state but takes no gradient (``_joint_loss``): k-means++ with outlier removal on
    the pretrained latent, refitted before every epoch and at the end (``_cluster_model``).

    Args:
      behavior_weights: f[J] eq. 7 weight of each behaviour code.
      outlier_z: outlier threshold (``dmeta.cluster.kmeans.outlier_weights``); None keeps all.
      normalize: eq. 6 on the latent standardized by the ``moments`` of its inliers: in the
        loss each batch's under the epoch's weights; for the cluster model the fit users'
        under the current weights (at the first epoch the initial k-means's, itself run on
        the latent standardized over all fit users), and after each refit the latent and the
        centroids are standardized again with the new weights (``_inlier_space``).
      decay_end, shard: as in ``train_epochs``.
      strata: ``x``, ``mask`` are this process's users of several processes'
        (``train_epochs``); k-means++, the outlier weights and the segmentation are computed
        on every process from the gathered latents of all users, so all processes agree.
    """
    key, k_init = jax.random.split(key)
    z0, _ = latent_space(ae, params, x, mask, normalize=normalize, strata=strata)
    init = kmeans(k_init, z0, n_segments, outlier_z=outlier_z)
    centroids, w0, _ = _inlier_space(init, z0, normalize)
    state = {"ae": params, "centroids": jnp.asarray(centroids), "weights": jnp.asarray(w0)}
    consts = {
        "alpha": jnp.float32(alpha),
        "beta": jnp.float32(beta),
        "behavior_weights": jnp.asarray(behavior_weights, jnp.float32),
    }

    def cluster_model(state: TrainState, epoch: int):
        now = state.params
        centroids, w = (distributed.to_host(now[k]) for k in ("centroids", "weights"))
        z, _ = latent_space(ae, now["ae"], x, mask, normalize=normalize, weights=w, strata=strata)
        centroids, w, _ = _cluster_model(z, centroids, outlier_z, normalize)
        state = _with_cluster_model(state, centroids, w)
        return state, {"weights": w if strata is None else w[strata.rows()]}

    norm = " normalized" if normalize else ""
    state, history = train_epochs(
        state,
        _joint_loss(ae, normalize),
        {"x": x, "mask": mask},
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        key=key,
        desc=f"c2m joint alpha={alpha:g} beta={beta:g} outlier_z={outlier_z}{norm}",
        decay_end=decay_end,
        consts=consts,
        before_epoch=cluster_model,
        shard=shard,
        strata=strata,
    )
    centroids, w = (distributed.to_host(state[k]) for k in ("centroids", "weights"))
    z, embed = latent_space(ae, state["ae"], x, mask, normalize=normalize, weights=w, strata=strata)
    centroids, w, space = _cluster_model(z, centroids, outlier_z, normalize)
    z = space(z)
    labels = np.asarray(jnp.argmin(sq_distances(z, centroids), axis=1), np.int32)
    embed_space = lambda x, mask, category: space(embed(x, mask, category))
    return Segmentation(labels, z, w, history, centroids, embed_space)


def _cluster_model(z, centroids, outlier_z: float | None, normalize: bool):
    """Algorithm 1 step 8 ("update parameters of the cluster model") on the fit users'
    latents z f[U, Z], for every alpha: Lloyd iterations from the centroids f[K, Z] where they
    are, with the initial k-means's outlier removal, a cluster that no user is nearest to
    moved onto the user farthest from its centroid (``refit``); then ``_inlier_space``.
    Eq. 6 trains the autoencoder only (step 7). Until 2026-11-30, with alpha > 0 the
    centroids were trained by eq. 6's gradient and only the weights were updated here."""
    res = refit(z, centroids, outlier_z=outlier_z, relocate_empty=True)
    return _inlier_space(res, z, normalize)


def _inlier_space(res: KMeansResult, z, normalize: bool):
    """(centroids f[K, Z], weights f[U], space) of the fit ``res`` on latents z f[U, Z]:
    with ``normalize``, ``space`` maps z's space to z standardized by the ``moments`` of its
    inliers (``res.weights``), the centroids given in it (nearest centroids and the outlier
    rule do not change under a shift and a common scale); else the identity."""
    centroids, weights = np.asarray(res.centroids), np.asarray(res.weights)
    space = _affine(*moments(z, weights)) if normalize else np.asarray
    return space(centroids), weights, space


def _with_cluster_model(
    state: TrainState, centroids: np.ndarray, weights: np.ndarray
) -> TrainState:
    """``state`` with new centroids and outlier weights, placed like the old ones (replicated
    when sharded)."""
    new = {}
    for name, value in (("centroids", centroids), ("weights", weights)):
        old = state.params[name]
        new[name] = jax.make_array_from_process_local_data(
            old.sharding, np.asarray(value, old.dtype)
        )
    return dataclasses.replace(state, params={**state.params, **new})
