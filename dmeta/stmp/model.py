"""STMP networks: amortized set encoders, linear baseline, jump-LSTM, fusion, generative head.

Shapes: ``K`` context points, ``L`` window days, ``F`` per-day features, ``A`` static
region attributes, ``Z`` latent size, ``H`` hidden size, ``S`` latent samples.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dmeta.nn.rnn import LSTM
from dmeta.types import Array, Key, Params

DAY_FEATURES = 3  # scaled y, observed flag, festival flag (see ``data.window``)
N_MONTHS = 12
HEADS = ("multiplicative", "additive", "direct")  # how the head's output gives the mean


class MLP(nnx.Module):
    """Linear -> ReLU -> ... -> Linear; ReLU after the last layer too when ``final_relu``."""

    def __init__(self, sizes: tuple[int, ...], *, final_relu: bool = False, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.final_relu = final_relu

    def __call__(self, x: Array) -> Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1 or self.final_relu:
                x = jax.nn.relu(x)
        return x


class SetEncoder(nnx.Module):
    """Amortization network: context set (+ static features) -> diagonal Gaussian.

    ``phi`` embeds each context point, masked means pool them (permutation invariant, any
    set size; one mean per group of points, ``groups`` of them), ``rho`` maps [pooled,
    static, log1p of each group's size] to (mean, log-variance).
    """

    def __init__(
        self, in_features: int, static: int, hidden: int, latent: int, *, groups: int = 1, rngs
    ):
        self.phi = MLP((in_features, hidden, hidden), final_relu=True, rngs=rngs)
        self.rho = MLP((groups * hidden + static + groups, hidden, 2 * latent), rngs=rngs)

    def pool(self, ctx: Array, masks: Array) -> Array:
        """ctx: f32[K, F], masks: f32[G, K] -> each group's masked mean embedding f32[G * H]."""
        emb = self.phi(ctx)
        pooled = [jnp.sum(emb * m[:, None], axis=0) / jnp.maximum(jnp.sum(m), 1.0) for m in masks]
        return jnp.concatenate(pooled)

    def __call__(self, ctx: Array, masks: Array, static: Array) -> tuple[Array, Array]:
        """ctx: f32[K, F], masks: f32[G, K], static: f32[A] -> (mu f32[Z], logvar f32[Z])."""
        size = jnp.log1p(jnp.sum(masks, axis=1))  # lets the posterior widen for small sets
        out = self.rho(jnp.concatenate([self.pool(ctx, masks), static, size]))
        mu, logvar = jnp.split(out, 2)
        return mu, jnp.clip(logvar, -8.0, 4.0)


class JumpLSTM(nnx.Module):
    """LSTM whose recurrence connects day t to day t - period (a skip-``period`` RNN).

    The window is cut into ``period`` interleaved chains (days with equal ``t mod
    period``), each run by a shared ``dmeta.nn.rnn.LSTM``.
    """

    def __init__(self, in_features: int, hidden: int, period: int, *, rngs: nnx.Rngs):
        self.lstm = LSTM(in_features, hidden, rngs=rngs)
        self.period = period

    def states(self, x: Array) -> Array:
        """x: f32[..., L, F] (L a multiple of period) -> hidden states f32[..., L, H] in day order."""
        *lead, length, feat = x.shape
        p = self.period
        chains = jnp.swapaxes(x.reshape(*lead, length // p, p, feat), -2, -3)  # [..., p, W, F]
        _, hs = self.lstm(chains, return_sequence=True)  # [..., p, W, H]
        return jnp.swapaxes(hs, -2, -3).reshape(*lead, length, -1)

    def __call__(self, x: Array) -> Array:
        """Final state of every chain, f32[..., period * H]; the first ends at day t - period."""
        hs = self.states(x)[..., -self.period :, :]
        return hs.reshape(*hs.shape[:-2], -1)


class STMP(nnx.Module):
    """The STMP model.

    Args:
      window: L input days.
      period: jump of the jump-LSTM (7 for daily data).
      n_types: number of date types.
      n_attrs: A static region attributes.
      n_regions: R (used only by deterministic latents).
      latent: Z, size of each latent.
      hidden: H.
      jump: use the jump-LSTM (else a plain LSTM over the whole window).
      recent_days: days the plain LSTM beside the jump-LSTM reads, the last ones of the
        window (the spec's choice: one period; ``window``: all of it); without ``jump``
        the plain LSTM reads the whole window.
      amortized: amortized Gaussian posteriors (else deterministic embedding tables
        per region and per date type, the "no amortization network" ablation).
      calendar: the target day's date type and month (one-hot) join its day of week in
        the fusion input, as the LSTM and XGBoost baselines get them (else the day of
        week alone; the date type then reaches the head only through z_d).
      context_path: the deterministic path of neural processes (Kim et al. 2019): each
        side's pooled context embedding (``SetEncoder.pool``, f32[H] per pooling group)
        joins its latent in the head, so what a cell's context shows (a region's uplift on
        this date type) reaches the prediction without paying KL; only with ``amortized``.
      split_pool: the region encoder pools its context points of the task's date type and
        the region's other points separately (two masked means), so a cell's own history
        (a region's past festival days) is not averaged into the region's ordinary days.
      baseline_gaps: what the linear baseline reads on the window's unobserved days (a
        closed store): "zero" (the scaled series as it is) or "mean" (the mean of the
        window's observed days), so that a window with closed days does not pull the
        multiplicative head's baseline toward 0.
      head: how the head's first output g gives the mean: "multiplicative" (baseline *
        exp(g), every run so far), "additive" (baseline + g) or "direct" (g, the baseline
        reaching it only through the fused features, as the LSTM baseline regresses the
        scaled level).
      rngs: NNX random streams.
    """

    def __init__(
        self,
        *,
        window: int,
        period: int,
        n_types: int,
        n_attrs: int,
        n_regions: int,
        latent: int = 16,
        hidden: int = 32,
        jump: bool = True,
        recent_days: int = 7,
        amortized: bool = True,
        calendar: bool = True,
        context_path: bool = False,
        split_pool: bool = False,
        baseline_gaps: str = "zero",
        head: str = "multiplicative",
        rngs: nnx.Rngs,
    ):
        if jump and window % period:
            raise ValueError(f"window {window} must be a multiple of period {period}")
        if not 0 < recent_days <= window:
            raise ValueError(f"recent_days {recent_days} must be in 1..window ({window})")
        if baseline_gaps not in ("zero", "mean"):
            raise ValueError(f"baseline_gaps must be 'zero' or 'mean', got {baseline_gaps!r}")
        self.fill_gaps = baseline_gaps == "mean"
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.head_form = head
        self.window, self.period, self.n_types = window, period, n_types
        self.jump_on, self.amortized, self.calendar = jump, amortized, calendar
        self.recent_days = recent_days if jump else window
        self.context_path = context_path and amortized
        self.region_groups = 2 if split_pool else 1
        self.region_encoder = SetEncoder(
            2 + n_types, n_attrs, hidden, latent, groups=self.region_groups, rngs=rngs
        )
        self.type_encoder = SetEncoder(2 + n_attrs, 0, hidden, latent, rngs=rngs)
        if not amortized:
            init = nnx.initializers.normal(0.1)
            self.region_table = nnx.Param(init(rngs.params(), (n_regions, latent)))
            self.type_table = nnx.Param(init(rngs.params(), (n_types, latent)))
        self.linear = nnx.Linear(
            window,
            1,
            kernel_init=nnx.initializers.constant(1.0 / window),
            bias_init=nnx.initializers.zeros,
            rngs=rngs,
        )
        self.jump = JumpLSTM(DAY_FEATURES, hidden, period, rngs=rngs)
        self.lstm = LSTM(DAY_FEATURES, hidden, rngs=rngs)
        fused_in = 1 + hidden + n_attrs + 7 + (period * hidden if jump else 0)
        fused_in += N_MONTHS + n_types if calendar else 0
        self.fusion = MLP((fused_in, hidden, hidden), final_relu=True, rngs=rngs)
        summaries = (1 + self.region_groups) * hidden if self.context_path else 0
        self.head = MLP((hidden + 2 * latent + summaries, hidden, 2), rngs=rngs)

    def features(
        self, x: Array, dow: Array, month: Array, date_type: Array, attrs: Array
    ) -> tuple[Array, Array]:
        """Linear baseline and fused features.

        Args:
          x: f32[..., L, 3] input windows (``data.window``).
          dow, month, date_type: i32[...] day of week, month and date type of the target.
          attrs: f32[..., A] static attributes of the target's region.

        Returns:
          baseline f32[...] (linear map of the window's scaled series, ``baseline_gaps``
          on its unobserved days) and fused f32[..., H].
        """
        ys = x[..., 0]
        if self.fill_gaps:
            obs = x[..., 1]
            mean = jnp.sum(ys * obs, -1, keepdims=True) / jnp.maximum(obs.sum(-1, keepdims=True), 1)
            ys = jnp.where(obs > 0, ys, mean)
        baseline = self.linear(ys)[..., 0]
        recent = self.lstm(x[..., -self.recent_days :, :])
        parts = [baseline[..., None], recent, attrs, jax.nn.one_hot(dow, 7)]
        if self.calendar:
            parts += [jax.nn.one_hot(month, N_MONTHS), jax.nn.one_hot(date_type, self.n_types)]
        if self.jump_on:
            parts.append(self.jump(x))
        return baseline, self.fusion(jnp.concatenate(parts, axis=-1))

    def generate(
        self, baseline: Array, fused: Array, z_r: Array, z_d: Array
    ) -> tuple[Array, Array]:
        """p(y | x, z_r, z_d) = N(mean, sigma^2), [g, log sigma] = head(...), mean by ``head``
        (default baseline * exp(g)).

        Args:
          baseline: f32[...] linear baseline; fused: f32[..., H]; z_r, z_d: f32[..., Z]
            (with ``context_path``: the latent, then the side's pooled context, f32[..., Z +
            G * H], G the side's pooling groups).

        Returns:
          mean f32[...] and log sigma f32[...]; the multiplicative form lets the latents
          carry a date type's uplift directly.
        """
        out = self.head(jnp.concatenate([fused, z_r, z_d], axis=-1))
        g = out[..., 0]
        if self.head_form == "multiplicative":
            mean = baseline * jnp.exp(jnp.clip(g, -5.0, 5.0))
        else:
            mean = baseline + g if self.head_form == "additive" else g
        return mean, jnp.clip(out[..., 1], -5.0, 3.0)

    def region_side(self, ctx: Array, mask: Array, attrs: Array, region: Array, date_type: Array):
        """A region task's posterior and pooled context.

        Args:
          ctx: f32[K, 2 + n_types] region context points (``train.region_context``).
          mask: f32[K] valid points; attrs: f32[A]; region, date_type: i32[] of the task.

        Returns:
          mu f32[Z], logvar f32[Z] (None when deterministic) and the context path's
          pooled context f32[G * H] (f32[0] without ``context_path``).
        """
        if self.region_groups == 2:
            same = ctx[:, 2 + date_type]  # the points' one-hot date type
            masks = jnp.stack([mask * same, mask * (1.0 - same)])
        else:
            masks = mask[None]
        if not self.amortized:
            return self.region_table[region], None, jnp.zeros((0,), ctx.dtype)
        mu, logvar = self.region_encoder(ctx, masks, attrs)
        return mu, logvar, self._summary(self.region_encoder, ctx, masks)

    def type_side(self, ctx: Array, mask: Array, date_type: Array):
        """A date-type task's posterior and pooled context: ctx f32[K, 2 + A], mask f32[K]
        -> mu f32[Z], logvar f32[Z] (None when deterministic), pooled f32[H] (or f32[0])."""
        if not self.amortized:
            return self.type_table[date_type], None, jnp.zeros((0,), ctx.dtype)
        masks = mask[None]
        mu, logvar = self.type_encoder(ctx, masks, jnp.zeros((0,), ctx.dtype))
        return mu, logvar, self._summary(self.type_encoder, ctx, masks)

    def _summary(self, encoder: SetEncoder, ctx: Array, masks: Array) -> Array:
        if not self.context_path:
            return jnp.zeros((0,), ctx.dtype)
        return encoder.pool(ctx, masks)


def gaussian_kl(mu: Array, logvar: Array) -> Array:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last axis: f32[...]."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mu) - 1.0 - logvar, axis=-1)


def sample_latent(key: Key, mu: Array, logvar: Array | None, n: int) -> Array:
    """n reparameterized samples f32[n, Z] (``mu`` repeated when ``logvar`` is None)."""
    if logvar is None:
        return jnp.broadcast_to(mu, (n,) + mu.shape)
    eps = jax.random.normal(key, (n,) + mu.shape, mu.dtype)
    return mu + jnp.exp(0.5 * logvar) * eps


def build(**kwargs: Any) -> tuple[nnx.GraphDef, Params]:
    """Builds ``STMP(**kwargs, rngs=nnx.Rngs(seed))`` and splits it: (graphdef, params dict)."""
    seed = kwargs.pop("seed", 0)
    graphdef, state = nnx.split(STMP(**kwargs, rngs=nnx.Rngs(seed)), nnx.Param)
    return graphdef, nnx.to_pure_dict(state)


def bind(graphdef: nnx.GraphDef, params: Params) -> STMP:
    """The model with ``params`` (call inside pure functions only)."""
    return nnx.merge(graphdef, params)
