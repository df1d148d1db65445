"""Expert Mask Network (section 4.2.2), the single-domain LtvS model and the two-domain CDLtvS.

Experts are not separate sub-networks: the router picks ``a`` of ``k`` experts per sample and
the choice becomes a mask over blocks of ``h / k`` units of one shared representation, so all
experts run as one batched computation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from dmeta.ltv.encoders import TCN, DeepFM, output_relu, series_inputs
from dmeta.types import Array


class ExmnOut(NamedTuple):
    """Outputs of :class:`ExMN` for N samples.

    Attributes:
      pred: f32[N] LTV prediction (eq. 5).
      e: f32[N, h] masked representation ``e``.
      ec_logits: f32[N, k] ``FFN_smax`` outputs (eq. 8 before the softmax).
      eo_logits: f32[N, k] ``FFN_smoid`` outputs (eq. 10 before the sigmoid).
      expert: i32[N] the highest-scoring expert.
    """

    pred: Array
    e: Array
    ec_logits: Array
    eo_logits: Array
    expert: Array


def route(logits: Array, *, a: int, hidden: int) -> Array:
    """Top-a routing mask (eq. 2-4): softmax over the top ``a`` logits, each weight repeated
    ``hidden / k`` times.

    For ``a = 1`` the value is an exact one-hot block mask whose gradient with respect to
    the logits is zero, as in the paper: the router (``FFN_smax``) learns from the expert
    losses L_EC and L_EO (eq. 7-9) alone, not from the prediction loss.

    Args:
      logits: f32[N, k] router scores ``FFN_smax(g_hat)``.
      a: experts kept per sample, 1 <= a <= k.
      hidden: h, a multiple of k.

    Returns:
      f32[N, hidden] mask.
    """
    k = logits.shape[-1]
    if hidden % k or not 1 <= a <= k:
        raise ValueError(f"need hidden % k == 0 and 1 <= a <= k, got h={hidden}, k={k}, a={a}")
    kth = jax.lax.top_k(logits, a)[0][..., -1:]
    weights = jax.nn.softmax(jnp.where(logits >= kth, logits, -jnp.inf), axis=-1)
    return jnp.repeat(weights, hidden // k, axis=-1)


class ExMN(nnx.Module):
    """Fusion ``FFN_f`` (eq. 1), router ``FFN_g`` + ``FFN_smax`` (eq. 2-4), ordinal head
    ``FFN_smoid`` (eq. 10), mask, output ``FNN_o`` (eq. 5).

    The output bias starts at 1, the mean of the (mean-scaled) labels, so the output ReLU
    starts alive for most samples.

    Args:
      in_features: size of the concatenated encoder outputs (2h).
      hidden: h.
      k: number of experts (divides h).
      a: experts per sample.
      rngs: NNX random streams.
    """

    def __init__(self, in_features: int, hidden: int, k: int, *, a: int = 1, rngs: nnx.Rngs):
        self.hidden, self.a = hidden, a
        self.fuse = nnx.Linear(in_features, hidden, rngs=rngs)
        self.gate = nnx.Linear(hidden, hidden, rngs=rngs)
        self.smax = nnx.Linear(hidden, k, rngs=rngs)
        self.smoid = nnx.Linear(hidden, k, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, bias_init=nnx.initializers.ones, rngs=rngs)

    def __call__(self, x: Array) -> ExmnOut:
        """x: f32[N, in_features] -> :class:`ExmnOut`."""
        e_hat = nnx.relu(self.fuse(x))
        g_hat = nnx.relu(self.gate(e_hat))
        ec_logits = self.smax(g_hat)
        e = e_hat * route(ec_logits, a=self.a, hidden=self.hidden)
        pred = output_relu(self.out(e))[..., 0]
        return ExmnOut(pred, e, ec_logits, self.smoid(g_hat), jnp.argmax(ec_logits, -1))


class LtvS(nnx.Module):
    """Single-domain LtvS: DeepFM(portrait) and TCN(series) fused by ExMN (section 4.2).

    Args:
      cat_sizes: levels per categorical portrait field.
      n_num: numeric portrait fields.
      hidden: h.
      k: experts.
      a: experts per sample.
      tcn_levels: TCN residual blocks.
      portrait: the DeepFM portrait branch (False: ExMN sees the TCN's series embedding
        alone, the diagnostic "LtvS without portraits").
      rngs: NNX random streams.
    """

    def __init__(
        self,
        cat_sizes: tuple[int, ...],
        n_num: int,
        *,
        hidden: int = 128,
        k: int = 4,
        a: int = 1,
        tcn_levels: int = 3,
        portrait: bool = True,
        rngs: nnx.Rngs,
    ):
        self.portrait = DeepFM(cat_sizes, n_num, hidden, rngs=rngs) if portrait else None
        self.series = TCN(2, hidden, levels=tcn_levels, rngs=rngs)
        self.exmn = ExMN((2 if portrait else 1) * hidden, hidden, k, a=a, rngs=rngs)

    def __call__(self, batch: dict[str, Array], domain: str) -> ExmnOut:
        """Runs on ``batch[f"{domain}_cat" | "_num" | "_series" | "_observed"]`` (N rows)."""
        e_l = self.series(series_inputs(batch[f"{domain}_series"], batch[f"{domain}_observed"]))
        if self.portrait is None:
            return self.exmn(e_l)
        e_p = self.portrait(batch[f"{domain}_cat"], batch[f"{domain}_num"])
        return self.exmn(jnp.concatenate([e_p, e_l], axis=-1))


class CrossOut(NamedTuple):
    """Outputs of :class:`CDLtvS` for N samples.

    Attributes:
      pred: f32[N] target-domain LTV prediction (eq. 14).
      e_mo: f32[N, d] projected transferred source knowledge ``W^m e^m``.
      e_to: f32[N, d] projected target representation ``W^t e^t``.
      expert_s: i32[N] source-domain expert.
      expert_t: i32[N] target-domain expert.
    """

    pred: Array
    e_mo: Array
    e_to: Array
    expert_s: Array
    expert_t: Array


class CDLtvS(nnx.Module):
    """Cross-domain LTV (section 4.3): source and target LtvS, ``FFN_trans`` (eq. 13), a
    two-layer ReLU MLP over ``[e^m, e^t]`` (eq. 14), alignment projections ``W^m, W^t``.

    Args:
      s_cat_sizes, s_num: source portrait fields.
      t_cat_sizes, t_num: target portrait fields.
      hidden: h.
      align: alignment size d < h.
      k: experts.
      a: experts per sample.
      tcn_levels: TCN residual blocks.
      portrait: both LtvS keep their DeepFM portrait branch (see :class:`LtvS`).
      rngs: NNX random streams.
    """

    def __init__(
        self,
        s_cat_sizes: tuple[int, ...],
        s_num: int,
        t_cat_sizes: tuple[int, ...],
        t_num: int,
        *,
        hidden: int = 128,
        align: int = 80,
        k: int = 4,
        a: int = 1,
        tcn_levels: int = 3,
        portrait: bool = True,
        rngs: nnx.Rngs,
    ):
        kw = dict(hidden=hidden, k=k, a=a, tcn_levels=tcn_levels, portrait=portrait, rngs=rngs)
        self.source = LtvS(s_cat_sizes, s_num, **kw)
        self.target = LtvS(t_cat_sizes, t_num, **kw)
        self.trans = nnx.Linear(hidden, hidden, rngs=rngs)
        self.mlp1 = nnx.Linear(2 * hidden, hidden, rngs=rngs)
        self.mlp2 = nnx.Linear(hidden, 1, bias_init=nnx.initializers.ones, rngs=rngs)
        self.w_m = nnx.Linear(hidden, align, use_bias=False, rngs=rngs)
        self.w_t = nnx.Linear(hidden, align, use_bias=False, rngs=rngs)

    def __call__(self, batch: dict[str, Array]) -> CrossOut:
        """batch: the arrays of :class:`dmeta.ltv.data.CrossDomainData` -> :class:`CrossOut`."""
        src, tgt = self.source(batch, "s"), self.target(batch, "t")
        e_m = nnx.relu(self.trans(src.e))
        hid = nnx.relu(self.mlp1(jnp.concatenate([e_m, tgt.e], axis=-1)))
        pred = output_relu(self.mlp2(hid))[..., 0]
        return CrossOut(pred, self.w_m(e_m), self.w_t(tgt.e), src.expert, tgt.expert)
