"""RMLDP (section 4): MPFN base model, relation-aware modulation, Algorithm 1 and eq. 8.

Meta-parameters Theta are one dict::

    {"theta": MPFN params,                     # the shared initialization theta_0
     "encoder": MPFN_s + decoder params,       # data-driven q_d (use_data)
     "graph": {"w", "b"},                      # q_g = tanh(u_g W + b) (use_graph)
     "modulator": {"w", "b"},                  # M(q) = sigmoid(q W_m + b_m), eq. 11
     "alpha": like theta}                      # only for Meta-SGD

The ablations are switches of ``RMLDP``: ``use_data=False`` is RMLDP-d,
``use_graph=False`` RMLDP-g, ``use_season=False`` RMLDP-szn, ``use_local=False``
RMLDP-local; with neither representation it is plain MAML (or Meta-SGD).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from dmeta.meta.maml import adapt_tasks, init_meta_params, make_maml_task_loss
from dmeta.meta.modulation import init_modulator, modulate, modulator
from dmeta.meta.steps import make_meta_train_step
from dmeta.models.mpfn import DEFAULT_GRU_IMPL, MPFN, split_loss
from dmeta.nn.functional import split_params
from dmeta.nn.rnn import GRUImpl
from dmeta.parallel import constrain_batch
from dmeta.rmldp.segment_encoder import Decoder, SegmentEncoder
from dmeta.types import Array, Key, Params, Split, TaskBatch


@dataclasses.dataclass(frozen=True, eq=False)
class RMLDP:
    """Static structure of an RMLDP variant: pure apply functions and switches.

    Attributes:
      apply: ``apply(theta, x_local, x_season) -> f32[...]`` the MPFN base model f.
      encode: ``encode(encoder_params, support) -> (q_d, L_rec)`` (None without use_data).
      use_data, use_graph: which segment representations feed the modulator.
    """

    apply: Callable[..., Array]
    encode: Callable[..., tuple[Array, Array]] | None
    use_data: bool
    use_graph: bool

    @property
    def modulated(self) -> bool:
        """Whether the initialization is customized per segment (False: MAML / Meta-SGD)."""
        return self.use_data or self.use_graph

    def loss(self, theta: Params, split: Split) -> Array:
        """Empirical risk L(D; theta): masked MSE of eq. 5 on one split."""
        return split_loss(self.apply, theta, split)

    def representation(
        self, meta_params: Params, support: Split, segment: Array, graph_emb: Array
    ) -> tuple[Array, Array]:
        """Segment representation q = q_d (+) q_g and L_rec for one task.

        Args:
          meta_params: Theta.
          support: the task's support ``Split`` [N, ...].
          segment: i32[] the task's segment (row of ``graph_emb``).
          graph_emb: f32[I, D] DeepWalk embeddings u_g.

        Returns:
          (q f32[q_dim], L_rec f32[], 0 without use_data).
        """
        parts, rec = [], jnp.zeros(())
        if self.use_data:
            q_d, rec = self.encode(meta_params["encoder"], support)
            parts.append(q_d)
        if self.use_graph:
            g = meta_params["graph"]
            parts.append(jnp.tanh(graph_emb[segment] @ g["w"] + g["b"]))
        return jnp.concatenate(parts), rec

    def init_fn(self, graph_emb: Array, lam: float) -> Callable | None:
        """``init_fn(Theta, task, key) -> (theta_0i, aux)`` for the engine (eq. 11-13).

        aux holds ``rec_loss`` and ``extra_loss = lam * rec_loss``, which the engine adds
        to the query loss (eq. 13). None when the variant is not modulated.
        """
        if not self.modulated:
            return None

        def init_fn(meta_params: Params, task: TaskBatch, key: Key):
            del key
            q, rec = self.representation(meta_params, task.support, task.segment, graph_emb)
            theta = meta_params["theta"]
            theta_0i = modulate(modulator(meta_params["modulator"], q, theta), theta)
            return theta_0i, {"rec_loss": rec, "extra_loss": lam * rec}

        return init_fn


def init_rmldp(
    key: Key,
    *,
    n_features: int,
    seq_len: int,
    hidden: int = 128,
    q_d_dim: int = 32,
    q_g_dim: int = 16,
    graph_dim: int = 16,
    encoder_hidden: int | None = None,
    decoder: Decoder = "mpfn",
    modulator_bias: float = 3.0,
    gru_impl: GRUImpl = DEFAULT_GRU_IMPL,
    use_data: bool = True,
    use_graph: bool = True,
    use_local: bool = True,
    use_season: bool = True,
    meta_sgd: bool = False,
    step_size: float = 1e-4,
) -> tuple[RMLDP, Params]:
    """Builds an RMLDP variant and its initial meta-parameters Theta.

    Args:
      key: PRNG key.
      n_features: F (demand first).
      seq_len: S = |T_c|.
      hidden: MPFN GRU size (128 in Table 1).
      q_d_dim, q_g_dim: sizes of q_d and q_g (32 and 16 in Table 1).
      graph_dim: size of the DeepWalk embeddings u_g.
      encoder_hidden: MPFN_s GRU size (default ``hidden``).
      decoder: MPFN_s_dec of eq. 10, ``"mpfn"`` (the paper's) or ``"linear"`` (ablation).
      modulator_bias: initial b_m of eq. 11 (``dmeta.meta.modulation.init_modulator``).
      gru_impl: the MPFN's ``dmeta.nn.rnn.GRU`` implementation (``"fused"`` or ``"scan"``).
      use_data, use_graph, use_local, use_season: ablation switches (module docstring).
      meta_sgd: learn per-parameter inner step sizes, initialized at ``step_size``.
      step_size: alpha (only used to initialize Meta-SGD's step sizes).

    Returns:
      ``(RMLDP, Theta)``.
    """
    k_mpfn, k_enc, k_graph, k_mod = jax.random.split(key, 4)
    apply, theta = split_params(
        MPFN(
            n_features,
            hidden,
            use_local=use_local,
            use_season=use_season,
            gru_impl=gru_impl,
            rngs=nnx.Rngs(k_mpfn),
        )
    )
    meta_params = init_meta_params(theta, meta_sgd=meta_sgd, step_size=step_size)
    encode = None
    q_dim = 0
    if use_data:
        enc = SegmentEncoder(
            n_features,
            seq_len,
            encoder_hidden or hidden,
            q_d_dim,
            decoder=decoder,
            rngs=nnx.Rngs(k_enc),
        )
        encode, meta_params["encoder"] = split_params(enc)
        q_dim += q_d_dim
    if use_graph:
        w = jax.random.normal(k_graph, (graph_dim, q_g_dim)) / jnp.sqrt(graph_dim)
        meta_params["graph"] = {"w": w, "b": jnp.zeros(q_g_dim)}
        q_dim += q_g_dim
    if use_data or use_graph:
        # init_modulator's bias is weakly typed; a strong f32 keeps jitted steps from retracing.
        meta_params["modulator"] = jax.tree.map(
            lambda a: a.astype(jnp.float32),
            init_modulator(k_mod, q_dim, theta, bias=modulator_bias),
        )
    return RMLDP(apply, encode, use_data, use_graph), meta_params


def make_task_loss(
    model: RMLDP,
    graph_emb: Array,
    *,
    lam: float = 0.5,
    steps: int = 1,
    step_size: float = 1e-4,
    first_order: bool = False,
    remat: bool = False,
) -> Callable:
    """Per-segment objective of eq. 13: query loss after the inner step(s) + lam * L_rec.

    ``remat=True`` wraps each inner step in ``jax.checkpoint`` (same gradients, the
    unroll's activations are recomputed in the backward pass instead of stored).
    """
    return make_maml_task_loss(
        model.loss,
        steps=steps,
        step_size=step_size,
        first_order=first_order,
        remat=remat,
        init_fn=model.init_fn(graph_emb, lam),
    )


def make_train_step(
    model: RMLDP,
    graph_emb: Array,
    optimizer: optax.GradientTransformation,
    *,
    lam: float = 0.5,
    steps: int = 1,
    step_size: float = 1e-4,
    first_order: bool = False,
    strategy: str = "vmap",
    remat: bool = False,
    mesh: Mesh | None = None,
) -> Callable:
    """Algorithm 1, lines 3-11: ``train_step(state, batch, key) -> (state, metrics)``.

    The segments of a meta-batch are ``vmap``-ed (or ``lax.map``-ed); wrap the result
    (e.g. ``jax.jit(with_sampler(step, sample))``) to get one jitted meta-step.

    With ``mesh`` (``dmeta.parallel.data_mesh()``) the meta-batch's task axis T is split
    over the mesh's devices by a sharding constraint, so a batch drawn inside the jitted
    step (``with_sampler``, from a pool that stays replicated) is sharded where it is made;
    T must divide by the device count. Jit the result with
    ``dmeta.parallel.jit_step(step, mesh)`` so that Theta and the optimizer state are
    replicated; the task-mean gradient becomes an all-reduce. ``remat``: see
    ``make_task_loss``.
    """
    task_loss = make_task_loss(
        model,
        graph_emb,
        lam=lam,
        steps=steps,
        step_size=step_size,
        first_order=first_order,
        remat=remat,
    )
    step = make_meta_train_step(task_loss, optimizer, strategy=strategy)
    if mesh is None:
        return step

    def sharded_step(state, batch: TaskBatch, key: Key):
        return step(state, constrain_batch(batch, mesh), key)

    return sharded_step


@functools.partial(jax.jit, static_argnames=("model", "steps"))
def meta_test(
    model: RMLDP,
    meta_params: Params,
    graph_emb: Array,
    tasks: TaskBatch,
    *,
    steps: int = 1,
    step_size: float = 1e-4,
) -> Array:
    """Eq. 8: adapt from theta_0t on each target support set, predict its query set.

    Args:
      model: the variant.
      meta_params: trained Theta.
      graph_emb: f32[I, D].
      tasks: target tasks (e.g. ``eval_tasks``), support / query [T, N, ...].
      steps: inner steps.
      step_size: alpha (ignored with learned Meta-SGD step sizes).

    Returns:
      f32[T, N_q] scaled query predictions.
    """
    adapted = adapt_tasks(
        model.loss,
        meta_params,
        tasks,
        steps=steps,
        step_size=step_size,
        init_fn=model.init_fn(graph_emb, 0.0),
    )
    return jax.vmap(model.apply)(adapted, tasks.query.x_local, tasks.query.x_season)


def segment_representations(
    model: RMLDP, meta_params: Params, graph_emb: Array, tasks: TaskBatch
) -> Array:
    """q f32[T, q_dim] of each task (for the 2-D map of Figure 7)."""
    fn = jax.jit(jax.vmap(lambda s, g: model.representation(meta_params, s, g, graph_emb)[0]))
    return fn(tasks.support, tasks.segment)
