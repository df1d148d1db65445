"""From a panel to per-region forecasts of every method in the paper's Table 1.

``prepare`` cuts train/test Data Frames (section 5.2), keeps the (region, item)
series that sold anything in the training window, z-scores inputs and targets
and stacks the samples per region. ``forecast_network`` trains one of the networks
(CNN, CNN+WD, CNN+WD+TL, Single-CNN, DNN) and returns its test forecasts per region
(the baselines are in ``dmeta.sales_cnn.baselines``).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dmeta.sales_cnn.baselines import SalesDNN
from dmeta.sales_cnn.frames import SalesPanel, build_frames, split_ends
from dmeta.sales_cnn.model import SalesCNN
from dmeta.sales_cnn.train import (
    Samples,
    Scaler,
    broadcast_params,
    fit,
    fit_regions,
    fit_scaler,
    predict_regions,
    sample_weights,
    split_model,
    stack_params,
)

log = logging.getLogger(__name__)

METHODS = ("ARIMA", "FE+GBRT", "DNN", "CNN", "CNN+WD", "CNN+WD+TL", "Single-CNN", "Naive")
NETWORKS = ("DNN", "CNN", "CNN+WD", "CNN+WD+TL", "Single-CNN")


@dataclasses.dataclass(frozen=True, eq=False)
class Prepared:
    """Region-stacked train and test samples of one panel.

    Attributes:
      train: Samples [R, N, 4, D, T] z-scored, ``w`` ones (set per method).
      train_ends: i32[R, N] frame end point of each training sample.
      train_raw: f32[R, N, 4, D, T] unscaled frames (for FE+GBRT).
      train_y: f32[R, N] raw targets.
      val: Samples [R, V, 4, D, T] z-scored validation frames (the last ``n_val``
        training end points, held out for early stopping; ``w`` ones), or None;
        val_ends: i32[R, V] their end points, or None.
      test_x: f32[R, Q, 4, D, T] z-scored test frames; test_raw the unscaled ones.
      test_y: f32[R, Q] raw targets; test_n: i32[R] real test rows per region.
      series: f32[R, I_max, L] sales of each region's kept items (ARIMA, naive);
        test row ``q`` is item ``q // E_test`` at end ``test_ends[q % E_test]``.
      test_ends: i32[E_test] test frame end points.
      scaler: the z-score statistics; sp, horizon, period_days (days per period): for
        the weights (eq. 18, beta per day).
      regions: region names.
    """

    train: Samples
    train_ends: np.ndarray
    train_raw: np.ndarray
    train_y: np.ndarray
    val: Samples | None
    val_ends: np.ndarray | None
    test_x: np.ndarray
    test_raw: np.ndarray
    test_y: np.ndarray
    test_n: np.ndarray
    series: np.ndarray
    test_ends: np.ndarray
    scaler: Scaler
    sp: int
    horizon: int
    period_days: float
    regions: tuple[str, ...]


def _pad_stack(arrays: list[np.ndarray]) -> np.ndarray:
    n_max = max(len(a) for a in arrays)
    return np.stack(
        [np.concatenate([a, np.zeros((n_max - len(a), *a.shape[1:]), a.dtype)]) for a in arrays]
    )


def _rows(frames: np.ndarray, y: np.ndarray, items: list[np.ndarray], ends: np.ndarray):
    """Region-stacked rows of the kept items at ``ends``, item-major.

    Args:
      frames: f32[R, I, E, 4, D, T]; y: f32[R, I, E]; items: kept item indices per region.

    Returns:
      (frames f32[R, N, 4, D, T], y f32[R, N], ends i32[R, N], n i32[R]), zero-padded.
    """
    d, t = frames.shape[-2:]
    return (
        _pad_stack([frames[r, i].reshape(-1, 4, d, t) for r, i in enumerate(items)]),
        _pad_stack([y[r, i].reshape(-1) for r, i in enumerate(items)]),
        _pad_stack([np.tile(ends, len(i)) for i in items]),
        np.array([len(i) * len(ends) for i in items], np.int32),
    )


def _samples(scaler: Scaler, raw: np.ndarray, y: np.ndarray, n: np.ndarray) -> Samples:
    """z-scored ``Samples`` with unit weights."""
    w = jnp.ones(y.shape, jnp.float32)
    return Samples(scaler.x(jnp.asarray(raw)), scaler.y(jnp.asarray(y)), w, jnp.asarray(n))


def prepare(
    panel: SalesPanel,
    *,
    length: int,
    horizon: int,
    n_test: int = 1,
    train_periods: int | None = None,
    n_val: int = 0,
    period_days: float | None = None,
) -> Prepared:
    """Train/validation/test Data Frames per region.

    Args:
      panel: the sales panel (its ``totals``, when given, are the frames' group rows).
      length: frame length ``T``; horizon: target interval ``k``.
      n_test: number of last end points used as test frames (paper: 1).
      train_periods: keep training end points within this many periods before the
        test interval (paper: about one year); None keeps all.
      n_val: the last ``n_val`` of those end points are held out as validation frames
        (early stopping), neither trained on nor in the z-score statistics; 0: none. The
        ``horizon - 1`` end points before them are dropped, so no training target shares
        a period with a validation target (as between training and test).
      period_days: days per panel period (eq. 18's exponent is in days); None: the
        panel's date step (``SalesPanel.period_days``).
    """
    split = split_ends(len(panel.dates), length=length, horizon=horizon, n_test=n_test)
    ends = split.train
    if train_periods is not None:
        ends = ends[ends >= split.sp - horizon - train_periods]
    gap = horizon - 1 if n_val else 0
    if not 0 <= n_val < len(ends) - gap:
        raise ValueError(
            f"n_val={n_val} and the {gap}-period gap leave no training end point of {len(ends)}"
        )
    train_ends, val_ends = ends[: len(ends) - n_val - gap], ends[len(ends) - n_val :]
    args = (panel.x, panel.brand, panel.category)
    opts = dict(length=length, horizon=horizon, target=panel.target)
    frames, y = (
        np.asarray(a) for a in build_frames(*args, jnp.asarray(ends), panel.totals, **opts)
    )
    test_frames, test_y = (
        np.asarray(a) for a in build_frames(*args, jnp.asarray(split.test), panel.totals, **opts)
    )
    first = int(ends[0]) - length + 1
    active = panel.sales[:, :, first : split.sp].sum(-1) > 0  # [R, I]
    n_train = len(train_ends)
    scaler = fit_scaler(frames[:, :, :n_train][active], y[:, :, :n_train][active])
    items = [np.flatnonzero(active[r]) for r in range(len(panel.regions))]
    raw, ys, train_ends, n = _rows(frames[:, :, :n_train], y[:, :, :n_train], items, train_ends)
    n_first_val = len(ends) - n_val
    val_raw, val_y, val_ends, val_n = _rows(
        frames[:, :, n_first_val:], y[:, :, n_first_val:], items, val_ends
    )
    test_raw, test_y, _, test_n = _rows(test_frames, test_y, items, split.test)
    return Prepared(
        train=_samples(scaler, raw, ys, n),
        train_ends=train_ends,
        train_raw=raw,
        train_y=ys,
        val=_samples(scaler, val_raw, val_y, val_n) if n_val else None,
        val_ends=val_ends if n_val else None,
        test_x=np.asarray(scaler.x(jnp.asarray(test_raw))),
        test_raw=test_raw,
        test_y=test_y,
        test_n=test_n,
        series=_pad_stack([panel.sales[r, i] for r, i in enumerate(items)]),
        test_ends=split.test,
        scaler=scaler,
        sp=split.sp,
        horizon=horizon,
        period_days=panel.period_days if period_days is None else period_days,
        regions=panel.regions,
    )


def weighted(data: Prepared, beta: float, *, val: bool = False) -> Samples:
    """Training samples (``val``: the validation ones) with the weights of eq. 18, ``beta``
    per day (``beta = 0``: all ones)."""
    samples, ends = (data.val, data.val_ends) if val else (data.train, data.train_ends)
    w = sample_weights(
        ends, sp=data.sp, horizon=data.horizon, beta=beta, period_days=data.period_days
    )
    return dataclasses.replace(samples, w=w)


def pooled(samples: Samples) -> Samples:
    """All regions' real rows as one sample set (the paper's D = union of D_r)."""
    n = np.asarray(samples.n)
    take = lambda a: jnp.concatenate([a[r, : n[r]] for r in range(len(n))])  # noqa: E731
    return Samples(x=take(samples.x), y=take(samples.y), w=take(samples.w), n=jnp.asarray(n.sum()))


def step_budgets(
    method: str,
    n: np.ndarray,
    *,
    epochs: float,
    finetune_epochs: float,
    batch_size: int,
    eval_every: int,
    schedule: str = "matched",
) -> tuple[int, ...]:
    """Optimizer steps of each training stage of a network (the most it runs; early
    stopping may end a stage sooner).

    ``"paper"`` (section 4.5): ``epochs`` over a region's samples (CNN, CNN+WD, DNN), over
    the pooled samples (Single-CNN; CNN+WD+TL's pretraining) and ``finetune_epochs`` over
    a region's (CNN+WD+TL's fine-tuning), so CNN+WD+TL trains longest. ``"matched"``:
    every network gets CNN+WD+TL's two stages' total, so a region's model takes the same
    number of steps whichever network it is. Each stage is rounded up to whole
    ``eval_every`` intervals.

    Args:
      n: i32[R] training samples per region.

    Returns:
      (pretraining, fine-tuning) steps for CNN+WD+TL, one stage's steps for the others.
    """
    if schedule not in ("matched", "paper"):
        raise ValueError(f"schedule={schedule!r}; use 'matched' or 'paper'")
    if method not in NETWORKS:
        raise ValueError(f"unknown network method {method!r}; one of {NETWORKS}")

    def steps(n_epochs, n_samples):
        batches = max(1, math.ceil(n_epochs * n_samples / batch_size))
        return math.ceil(batches / eval_every) * eval_every

    pooled = steps(epochs, int(np.sum(n)))
    transfer = steps(finetune_epochs, int(np.max(n)))
    if method == "CNN+WD+TL":
        return pooled, transfer
    if schedule == "matched":
        return (pooled + transfer,)
    return (pooled,) if method == "Single-CNN" else (steps(epochs, int(np.max(n))),)


def method_keys(seed: int, position: int) -> tuple[jax.Array, jax.Array]:
    """(fit key, fine-tune key) of the network at ``position`` of a run of several: the
    ``position + 1``-th of a chain of three-way splits of ``key(seed)``."""
    key = jax.random.key(seed)
    for _ in range(position + 1):
        key, k_fit, k_tune = jax.random.split(key, 3)
    return k_fit, k_tune


def forecast_network(
    data: Prepared,
    method: str,
    *,
    seed: int,
    position: int = 0,
    model: dict,
    dnn: dict,
    learning_rate: float = 2e-3,
    batch_size: int = 128,
    epochs: float = 10.0,
    finetune_epochs: float = 10.0,
    beta: float = 0.02,
    eval_every: int = 50,
    patience: int | None = 5,
    schedule: str = "matched",
    region_stopping: str = "per_region",
    shard: bool = False,
) -> np.ndarray:
    """Trains one network and returns its test forecasts f32[R, Q] (raw sales units).

    Per-region methods (CNN, CNN+WD, DNN) train one model per region from its own
    initialisation, all regions in one vmapped program; Single-CNN trains one model on the
    pooled samples; CNN+WD+TL pretrains on the pooled weighted samples and fine-tunes per
    region (vmapped). ``schedule`` sets their step budgets (``step_budgets``: ``"matched"``
    gives every network CNN+WD+TL's total, ``"paper"`` the paper's epochs per stage). With
    validation frames (``data.val``) every stage logs its
    validation MSE (unweighted for every method, as the test metric; until 2026-11-30 the
    weight-decay methods' was weighted like their training loss) every ``eval_every`` steps, stops
    after ``patience`` evaluations without improvement (None: never) and keeps its best
    state; in the per-region stages each region on its own (``region_stopping =
    "per_region"``) or all at one step chosen on their mean (``"shared"``). ``shard=True`` runs on all visible devices (``dmeta.sales_cnn.train``: pooled
    minibatches split, regions split in the per-region programs; the batch size and R
    must divide by the device count).

    Args:
      model: ``SalesCNN`` keyword arguments (``orders, maps, hidden, rate, dtype``).
      dnn: ``SalesDNN`` ``hidden`` and ``layers`` (dropout ``model["rate"]``).
      position: selects the training keys (``method_keys``).
    """
    if region_stopping not in ("per_region", "shared"):
        raise ValueError(f"region_stopping={region_stopping!r}; use 'per_region' or 'shared'")
    n_regions, _, _, d, t = data.train.x.shape
    k_fit, k_tune = method_keys(seed, position)
    early = patience if data.val is not None else None
    opts = dict(learning_rate=learning_rate, batch_size=batch_size, eval_every=eval_every)
    opts |= dict(patience=early, shard=shard, options=dict(model=model, dnn=dnn))
    region_opts = dict(opts, shard=shard and n_regions % jax.device_count() == 0)
    if shard and not region_opts["shard"]:
        log.warning(
            "%d regions do not split evenly over %d devices: the per-region programs run "
            "unsharded (pooled training stays sharded)",
            n_regions,
            jax.device_count(),
        )
    budgets = step_budgets(
        method,
        np.asarray(data.train.n),
        epochs=epochs,
        finetune_epochs=finetune_epochs,
        batch_size=batch_size,
        eval_every=eval_every,
        schedule=schedule,
    )

    def cnn(s):
        return SalesCNN(d, t, **model, rngs=nnx.Rngs(s))

    def sets(b):  # training samples weighted with beta b; validation unweighted (the metric)
        return weighted(data, b), weighted(data, 0.0, val=True) if data.val is not None else None

    def per_region(graphdef, params, b, key, n_steps, stage):
        train, val = sets(b)
        kw = dict(region_opts, n_steps=n_steps, val=val, desc=f"{method} {stage}")
        kw["per_region"] = region_stopping == "per_region"
        return fit_regions(graphdef, params, train, key, **kw).best_state.params

    def predict(graphdef, params_r):
        test_x = jnp.asarray(data.test_x)
        return np.asarray(data.scaler.inverse_y(predict_regions(graphdef, params_r, test_x)))

    if method in ("CNN", "CNN+WD", "DNN"):
        make = cnn
        if method == "DNN":
            make = lambda s: SalesDNN(4 * d * t, **dnn, rate=model["rate"], rngs=nnx.Rngs(s))  # noqa: E731
        models = [split_model(make(seed * 1000 + r)) for r in range(n_regions)]
        graphdef, params = models[0][0], stack_params([p for _, p in models])
        b = beta if method == "CNN+WD" else 0.0
        return predict(graphdef, per_region(graphdef, params, b, k_fit, budgets[0], "regions"))
    transfer = method == "CNN+WD+TL"
    graphdef, params = split_model(cnn(seed * 1000 + 999))
    train, val = sets(beta if transfer else 0.0)
    kw = dict(opts, n_steps=budgets[0], val=None if val is None else pooled(val))
    res = fit(graphdef, params, pooled(train), k_fit, desc=f"{method} pooled", **kw)
    params = broadcast_params(res.best_state.params, n_regions)
    if transfer:
        params = per_region(graphdef, params, beta, k_tune, budgets[1], "transfer")
    return predict(graphdef, params)


def region_mse(data: Prepared, pred: np.ndarray) -> np.ndarray:
    """f64[R] test MSE per region over its real test rows."""
    mask = np.arange(data.test_y.shape[1])[None, :] < data.test_n[:, None]
    err = np.where(mask, (np.asarray(pred, np.float64) - data.test_y) ** 2, 0.0)
    return err.sum(1) / data.test_n
