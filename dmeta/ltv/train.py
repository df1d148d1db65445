"""Two-stage CDLtvS training (sections 4.2.3, 4.3.2, 5.1.4) and the fit it shares with the
neural baselines.

Stage 1 trains one LtvS per domain with ``L_LTV + lambda_1 L_EC + lambda_2 L_EO`` (eq. 12);
stage 2 starts the source and target LtvS of CDLtvS from them and trains everything with
``L_LTV + lambda_3 L_AP + lambda_4 L_AT`` (eq. 17). The lambdas drop to ``drop_factor`` times
their value after ``drop_epoch`` epochs. Labels are divided by their training mean (NMAE and
the other reported metrics are scale-free); predictions come back in the original units.

:func:`fit` trains through :func:`dmeta.train.loop.fit` (progress, early stopping, resumable
checkpoints): one call of its step is an epoch of shuffled fixed-size batches
(:func:`dmeta.train.loop.epoch_step`, the permutation drawn from ``state.key``, the last batch
filled up with weight-0 rows) with that epoch's lambdas as the step's constants, and it stops
on the validation MAE with the patience counted in epochs, never before the epoch of the drop
has been trained; for a loss with lambdas the epochs before the drop do not count against the
patience, so the prediction loss gets ``patience`` epochs after the drop to beat the best. The
learning rate lives in the Adam state, so one compiled step serves every learning rate of a
tuning grid.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dmeta.ltv.data import CrossDomainData
from dmeta.ltv.exmn import CDLtvS
from dmeta.ltv.losses import (
    expert_classification_loss,
    expert_ordinal_loss,
    infonce_loss,
    level_labels,
    ltv_loss,
    type_alignment_loss,
)
from dmeta.nn.functional import split_params
from dmeta.parallel import data_mesh, jit_step
from dmeta.train import loop
from dmeta.train.loop import check_finite
from dmeta.train.state import TrainState, init_train_state
from dmeta.types import Array, Params

log = logging.getLogger(__name__)

Batch = dict[str, Array]
LossFn = Callable[[Params, Batch, Array], tuple[Array, dict[str, Array]]]
PredictFn = Callable[[Params, Batch], Array]

PAPER_LAMBDAS = (10.0, 20.0, 2.0, 1.0)


def model_batch(data: CrossDomainData, scale_s: float, scale_t: float) -> dict[str, np.ndarray]:
    """The model inputs of ``data`` with labels divided by ``scale_s`` / ``scale_t`` and a
    ``weight`` of ones (padding rows get weight 0)."""
    arrays = data.arrays()
    arrays.pop("customer")
    arrays["s_y"] = arrays["s_y"] / np.float32(scale_s)
    arrays["t_y"] = arrays["t_y"] / np.float32(scale_t)
    arrays["weight"] = np.ones(data.n, np.float32)
    return arrays


def make_train_step(
    loss_fn: LossFn, optimizer: optax.GradientTransformation
) -> Callable[[TrainState, Batch, Array], tuple[TrainState, dict[str, Array]]]:
    """``step(state, batch, lambdas) -> (state, metrics)``: one Adam update on ``loss_fn``.

    Not jitted here: callers wrap it (``jax.jit``, or ``chex.assert_max_traces`` first).
    ``lambdas: f32[4]`` is an argument so the schedule never retraces the step.
    """

    def step(state: TrainState, batch: Batch, lambdas: Array):
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch, lambdas)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(params, opt_state, state.step + 1, state.key)
        return new, metrics

    return step


def predict(
    predict_fn: PredictFn, params: Params, arrays: dict[str, np.ndarray], batch_size: int = 1024
) -> np.ndarray:
    """f32[N] predictions of ``predict_fn`` over ``arrays`` in padded chunks of ``batch_size``."""
    n = len(arrays["weight"])
    fn = _jit(predict_fn)
    chunk = min(batch_size, n)
    out = []
    for start in range(0, n, chunk):
        idx = np.arange(start, start + chunk) % n
        out.append(np.asarray(fn(params, {k: v[idx] for k, v in arrays.items()})))
    return np.concatenate(out)[:n]


@functools.lru_cache(maxsize=256)
def _jit(fn: Callable) -> Callable:
    """One ``jax.jit`` wrapper per function object, so repeated fits reuse compilations."""
    return jax.jit(fn)


def adam(lr: float) -> optax.GradientTransformation:
    """Adam with the learning rate in its state (``optax.inject_hyperparams``): a step jitted
    once applies whatever learning rate the state it is given holds."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr)


@functools.lru_cache(maxsize=256)
def _jitted_step(loss_fn: LossFn, step_wrapper: Callable | None, shard: bool) -> Callable:
    """One jitted step per loss, wrapper and layout (not per learning rate: see :func:`adam`)."""
    step = make_train_step(loss_fn, adam(0.0))  # the rate comes from ``state.opt_state``
    step = step_wrapper(step) if step_wrapper else step
    return jit_step(step, data_mesh() if shard else None, batch_argnums=(1,))


def lambda_schedule(
    lambdas: tuple[float, ...], drop_epoch: int, drop_factor: float
) -> Callable[[int], Array]:
    """``epoch -> f32[4]``: ``lambdas`` before ``drop_epoch``, ``drop_factor`` times them after."""
    base = np.asarray(lambdas, np.float32)
    return lambda epoch: jnp.asarray(base * (1.0 if epoch < drop_epoch else drop_factor))


def fit(
    loss_fn: LossFn,
    predict_fn: PredictFn,
    params: Params,
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    *,
    label: str,
    desc: str,
    lr: float = 1e-3,
    batch_size: int = 256,
    max_epochs: int = 50,
    patience: int = 7,
    lambdas: tuple[float, ...] | None = None,
    drop_epoch: int = 20,
    drop_factor: float = 0.01,
    seed: int = 0,
    step_wrapper: Callable[[Callable], Callable] | None = None,
    shard: bool = False,
) -> loop.FitResult:
    """Adam on epochs of shuffled fixed-size batches (:func:`dmeta.train.loop.epoch_step`)
    through :func:`dmeta.train.loop.fit`, early-stopped on the validation MAE of
    ``val[label]`` (``val_mae``). Stopping waits until the epoch of the lambda drop has been
    trained: after epoch ``e`` (from 0) the run stops when ``e >= drop_epoch`` and the best
    epoch is at least ``patience`` epochs back, counting, for a loss with ``lambdas``, only
    epochs from the drop on (the paper's patience of 7 after the drop, so the prediction loss
    gets its turn; the best epoch may still come before it).

    Args:
      loss_fn: ``(params, batch, lambdas) -> (loss, metrics)``.
      predict_fn: ``(params, batch) -> f32[N]`` in the units of ``label``.
      params: initial parameters.
      train, val: model batches (:func:`model_batch`).
      label: key of the label early stopping compares with.
      desc: the fit's name (its checkpoint folder and curve inside the method harness), to
        which `` lr=<lr>`` is appended so the points of a learning-rate grid stay apart.
      lr: Adam learning rate.
      batch_size: samples per step.
      max_epochs: epoch limit.
      patience: epochs without improvement before stopping.
      lambdas: loss factors handed to ``loss_fn`` before the drop; None: the loss takes
        none (it gets zeros) and patience counts from the first epoch.
      drop_epoch: epochs after which the lambdas are multiplied by ``drop_factor``.
      drop_factor: the factor.
      seed: seeds ``state.key``, which draws each epoch's permutation.
      step_wrapper: applied to the step before ``jax.jit`` (e.g. ``chex.assert_max_traces``).
      shard: split each batch over all visible devices, parameters replicated
        (``dmeta.parallel``); ``batch_size`` (or the training size, if smaller) must divide
        by the device count.

    Returns:
      :class:`dmeta.train.loop.FitResult`; ``best_state.params`` are the parameters of the
      best epoch, ``history`` has one row per epoch (``step``, mean train metrics,
      ``val_mae``).
    """
    desc = f"{desc} lr={lr:g}"
    step = loop.epoch_step(
        _jitted_step(loss_fn, step_wrapper, shard),
        train,
        batch_size=batch_size,
        consts=lambda_schedule(lambdas or (0.0,) * 4, drop_epoch, drop_factor),
        pad_weight="weight",
    )

    def eval_fn(state) -> dict[str, float]:
        mae = float(np.mean(np.abs(predict(predict_fn, state.params, val) - val[label])))
        check_finite({"val_mae": mae}, f"{desc}: step {int(state.step)}")
        return {"val_mae": mae}

    res = loop.fit(
        step,
        init_train_state(params, adam(lr), jax.random.key(seed)),
        n_steps=max_epochs * step.steps,
        eval_fn=eval_fn,
        eval_every=step.steps,
        patience=patience,
        monitor="val_mae",
        min_steps=(drop_epoch + 1) * step.steps,
        patience_from=0 if lambdas is None else drop_epoch * step.steps,
        steps_per_call=step.steps,
        desc=desc,
        settings=dict(train=train, val=val, label=label, batch_size=batch_size,
                      lambdas=lambdas, drop_epoch=drop_epoch, drop_factor=drop_factor),
    )  # fmt: skip
    # no rows when a finished fit is restored without its curve
    best = min((row["val_mae"] for row in res.history), default=np.nan)
    epoch = res.best_step // step.steps - 1
    log.info("%s: best epoch %d of %d, val MAE %.4f", desc, epoch, len(res.history), best)
    return res


def stage1_loss(apply: Callable, *, domain: str, k: int) -> LossFn:
    """Eq. 12 for one domain: ``L_LTV + lambda_1 L_EC + lambda_2 L_EO`` (lambdas[0:2])."""

    def loss_fn(params: Params, batch: Batch, lambdas: Array):
        out = apply(params, batch, domain)
        v, w = batch[f"{domain}_y"], batch["weight"]
        levels = level_labels(v, k, w)
        l_ltv = ltv_loss(v, out.pred, w)
        l_ec = expert_classification_loss(out.ec_logits, levels, w)
        l_eo = expert_ordinal_loss(out.eo_logits, levels, w)
        loss = l_ltv + lambdas[0] * l_ec + lambdas[1] * l_eo
        return loss, {"loss": loss, "ltv": l_ltv, "ec": l_ec, "eo": l_eo}

    return loss_fn


def stage2_loss(apply: Callable, *, temperature: float, margin: float) -> LossFn:
    """Eq. 17: ``L_LTV + lambda_3 L_AP + lambda_4 L_AT`` (lambdas[2:4])."""

    def loss_fn(params: Params, batch: Batch, lambdas: Array):
        out = apply(params, batch)
        w, sparse = batch["weight"], batch["sparse"]
        l_ltv = ltv_loss(batch["t_y"], out.pred, w)
        l_ap = infonce_loss(out.e_mo, out.e_to, ~sparse, w, temperature=temperature)
        l_at = type_alignment_loss(out.e_mo, out.e_to, sparse, w, margin=margin)
        loss = l_ltv + lambdas[2] * l_ap + lambdas[3] * l_at
        return loss, {"loss": loss, "ltv": l_ltv, "ap": l_ap, "at": l_at}

    return loss_fn


@dataclasses.dataclass(frozen=True)
class CDLtvSFns:
    """The pure functions of one CDLtvS architecture (built once, shared by every fit so the
    jitted steps compile once per architecture)."""

    apply: Callable
    stage1: dict[str, LossFn]
    stage2: LossFn
    predict_ltvs: dict[str, PredictFn]
    predict: PredictFn
    expert_ltvs: PredictFn
    expert: PredictFn


@functools.lru_cache(maxsize=32)
def cdltvs_fns(arch: tuple, *, k: int, temperature: float, margin: float) -> CDLtvSFns:
    """Pure functions for ``arch = (s_cat_sizes, s_num, t_cat_sizes, t_num, hidden, align, a,
    tcn_levels, portrait)`` with k experts."""
    model = _model(arch, k, 0)
    apply, _ = split_params(model)
    # each domain's own graph: the DeepFM embedding offsets follow that domain's field sizes
    ltvs_apply = {"s": split_params(model.source)[0], "t": split_params(model.target)[0]}
    return CDLtvSFns(
        apply=apply,
        stage1={d: stage1_loss(ltvs_apply[d], domain=d, k=k) for d in ("s", "t")},
        stage2=stage2_loss(apply, temperature=temperature, margin=margin),
        predict_ltvs={d: (lambda p, b, d=d: ltvs_apply[d](p, b, d).pred) for d in ("s", "t")},
        predict=lambda p, b: apply(p, b).pred,
        expert_ltvs=lambda p, b: ltvs_apply["t"](p, b, "t").expert,
        expert=lambda p, b: _experts(apply(p, b)),
    )


def _experts(out) -> Array:
    """i32[N, 2] the source and target experts of a :class:`dmeta.ltv.exmn.CrossOut`."""
    return jnp.stack([out.expert_s, out.expert_t], -1)


def _model(arch: tuple, k: int, seed: int) -> CDLtvS:
    s_cat, s_num, t_cat, t_num, hidden, align, a, levels, portrait = arch
    return CDLtvS(
        s_cat,
        s_num,
        t_cat,
        t_num,
        hidden=hidden,
        align=align,
        k=k,
        a=a,
        tcn_levels=levels,
        portrait=portrait,
        rngs=nnx.Rngs(seed),
    )


@dataclasses.dataclass(frozen=True)
class CDLtvSFit:
    """A trained model: the stage-1 LtvS of both domains and, after stage 2, CDLtvS.

    Attributes:
      fns: the architecture's pure functions.
      params: CDLtvS parameters (after stage 1 only ``source`` / ``target`` are trained).
      stage2_done: whether ``params`` went through stage 2.
      scale_s, scale_t: label scales (training means).
      histories: per-stage fit histories (:func:`fit`).
      name: the fits' ``desc`` prefix, ``cdltvs hidden=<h>``.
    """

    fns: CDLtvSFns
    params: Params
    stage2_done: bool
    scale_s: float
    scale_t: float
    histories: dict[str, list[dict[str, float]]]
    name: str

    def _run(self, data: CrossDomainData, fn: PredictFn, params: Params) -> np.ndarray:
        return predict(fn, params, model_batch(data, self.scale_s, self.scale_t))

    def predict_ltvs(self, data: CrossDomainData) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Stage-1 target LtvS: f32[N] LTV in original units and ``{"t": i32[N]}`` its
        experts."""
        p = self.params["target"]
        pred = self._run(data, self.fns.predict_ltvs["t"], p) * self.scale_t
        return pred, {"t": self._run(data, self.fns.expert_ltvs, p).astype(np.int32)}

    def predict(self, data: CrossDomainData) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Stage-2 CDLtvS: f32[N] LTV in original units and ``{"s": i32[N], "t": i32[N]}`` the
        experts of its source and target LtvS."""
        if not self.stage2_done:
            raise ValueError("stage 2 has not run: call fit_stage2 first")
        pred = self._run(data, self.fns.predict, self.params) * self.scale_t
        experts = self._run(data, self.fns.expert, self.params).astype(np.int32)
        return pred, {"s": experts[:, 0], "t": experts[:, 1]}


def fit_stage1(
    train: CrossDomainData,
    val: CrossDomainData,
    *,
    hidden: int = 128,
    align: int = 80,
    k: int = 4,
    a: int = 1,
    tcn_levels: int = 3,
    portrait: bool = True,
    lambdas: tuple[float, float, float, float] = PAPER_LAMBDAS,
    exmn_loss: bool = True,
    temperature: float = 1.0,
    margin: float = 0.1,
    seed: int = 0,
    domains: tuple[str, ...] = ("s", "t"),
    **fit_kwargs: Any,
) -> CDLtvSFit:
    """Stage 1: LtvS per domain (eq. 12) on ``train``, early-stopped on ``val``.

    Args:
      train, val: samples (after :func:`dmeta.ltv.data.apply_sparsity`).
      hidden: h; align: d; k: experts; a: experts per sample; tcn_levels: TCN blocks;
        portrait: keep the DeepFM portrait branches (:class:`dmeta.ltv.exmn.LtvS`).
      lambdas: (lambda_1 .. lambda_4).
      exmn_loss: False drops L_EC and L_EO (the w/o L_ExMN ablation).
      temperature: InfoNCE temperature; margin: eta of L_AT (used by stage 2).
      seed: initialization and shuffling seed.
      domains: the domains to train, ``"s"`` and/or ``"t"`` (single-domain data: ``("t",)``;
        an untrained domain keeps its initialization).
      **fit_kwargs: lr, batch_size, max_epochs, patience, drop_epoch, drop_factor,
        step_wrapper, shard (see :func:`fit`).
    """
    arch = (
        train.s_cat_sizes,
        train.s_num.shape[1],
        train.t_cat_sizes,
        train.t_num.shape[1],
        hidden,
        align,
        a,
        tcn_levels,
        portrait,
    )
    fns = cdltvs_fns(arch, k=k, temperature=temperature, margin=margin)
    _, params = split_params(_model(arch, k, seed))
    scale_s = float(max(train.s_y.mean(), 1e-6))
    scale_t = float(max(train.t_y.mean(), 1e-6))
    tr, va = model_batch(train, scale_s, scale_t), model_batch(val, scale_s, scale_t)
    lam = tuple(lambdas) if exmn_loss else (0.0, 0.0, *lambdas[2:])
    histories, fit_name = {}, f"cdltvs hidden={hidden}"
    for i, (domain, name) in enumerate((("s", "source"), ("t", "target"))):
        if domain not in domains:
            continue
        res = fit(
            fns.stage1[domain],
            fns.predict_ltvs[domain],
            params[name],
            tr,
            va,
            label=f"{domain}_y",
            desc=f"{fit_name} stage1 {name}",
            lambdas=lam,
            seed=seed + 1 + i,
            **fit_kwargs,
        )
        params = {**params, name: res.best_state.params}
        histories[f"stage1_{name}"] = res.history
    return CDLtvSFit(fns, params, False, scale_s, scale_t, histories, fit_name)


def fit_stage2(
    stage1: CDLtvSFit,
    train: CrossDomainData,
    val: CrossDomainData,
    *,
    lambdas: tuple[float, float, float, float] = PAPER_LAMBDAS,
    seed: int = 0,
    **fit_kwargs: Any,
) -> CDLtvSFit:
    """Stage 2: CDLtvS (eq. 17) from the stage-1 parameters. ``lambdas[2] = 0`` /
    ``lambdas[3] = 0`` give the w/o L_AP / w/o L_AT ablations."""
    tr = model_batch(train, stage1.scale_s, stage1.scale_t)
    va = model_batch(val, stage1.scale_s, stage1.scale_t)
    res = fit(
        stage1.fns.stage2,
        stage1.fns.predict,
        stage1.params,
        tr,
        va,
        label="t_y",
        desc=f"{stage1.name} stage2",
        lambdas=lambdas,
        seed=seed + 3,
        **fit_kwargs,
    )
    return dataclasses.replace(
        stage1,
        params=res.best_state.params,
        stage2_done=True,
        histories={**stage1.histories, "stage2": res.history},
    )
