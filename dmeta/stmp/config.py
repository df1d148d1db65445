"""Config of ``dmeta run stmp`` (STMP festival purchase prediction), as nested frozen dataclasses.

``dmeta config stmp`` prints every field; ``dmeta run stmp --set PATH=VALUE`` overrides any
of them (e.g. ``--set train.n_steps=2000 --set protocol.one_week=false``).

Equal tuning: every method of the main table with hyperparameters gets the same procedure
(``dmeta.train.harness.tune``): its grid is the value the config holds (the first point,
today's setting) followed by the alternatives in ``tuning``, ``tuning.trials`` points of it
are scored by MSE on the validation period (the ``protocol.test_days`` before the test
period) and the lowest wins. ``trials = 1`` (the default) runs the config's values without
any validation fit; ``--set tuning.trials=N`` gives every method N points.

Equal budget: STMP, its ablations, the LSTM and MAML all train for at most
``train.n_steps`` steps and early-stop on the MSE of the last ``protocol.val_days`` before
their cutoff (``train.eval_every``, ``train.patience``), keeping their best state.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The panel.

    Attributes:
      synthetic_regions: regions of ``--data synthetic``.
      synthetic_days: days of ``--data synthetic``.
      max_regions: keep only the first regions (None: all; Rossmann reads 100 when None).
    """

    synthetic_regions: int = 24
    synthetic_days: int = 3 * 365
    max_regions: int | None = None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """STMP's sizes (``dmeta.stmp.model.STMP``; the LSTM and MAML baselines share them).

    Attributes:
      window: L input days (a multiple of the jump period).
      recent_days: days the plain LSTM beside the jump-LSTM reads (the window's last;
        the spec's choice, one week; ``window`` for all of it).
      latent: latent size Z.
      hidden: hidden size H.
      calendar: the target day's date type and month enter the fusion (as the baselines
        get them); False: its day of week only (the date type only through z_d).
      context_path: each side's pooled context embedding joins its latent in the head
        (the deterministic path of neural processes; ``dmeta.stmp.model.STMP``). On by
        choice of the validation-year comparison (``experiments/stmp_design.py``, Favorita,
        2 seeds, results in ``experiments/results/stmp/design_2026-11-28``): mean MSE over
        the validation year 25.6k with it, 30.5k without (the posteriors' KL fell to
        about 0.02 nats, i.e. the latents carried almost nothing).
      split_pool: the region encoder pools the context points of the task's date type and
        the region's other points separately (``dmeta.stmp.model.STMP``): one mean over
        both lets a region's past festival days drown in its ordinary days (synthetic
        generator, ``design_2026-11-28/STMP_split_pool_synthetic``). On by the
        validation-year comparison (Favorita, 2 seeds, ``design_2026-11-28/STMP_split_pool``):
        23.3k with it, 26.0k without (regular days 18.7k vs 21.0k, festival days 53.0k vs
        58.0k).
      baseline_gaps: what STMP's linear baseline reads on a window's unobserved days:
        "zero" (every run so far) or "mean", the mean of the window's observed days
        (``dmeta.stmp.model.STMP``; added 2026-11-30 after a code review).
      head: how the generative head gives the mean (``dmeta.stmp.model.STMP``):
        "multiplicative" (baseline * exp(g), every run so far), "additive" (baseline + g)
        or "direct" (g; the spec's fully connected generative network on the fused
        features, which hold the baseline). Added 2026-11-30 for ``design_head/``.
    """

    window: int = 28
    recent_days: int = 7
    latent: int = 16
    hidden: int = 32
    calendar: bool = True
    context_path: bool = True
    split_pool: bool = True
    baseline_gaps: Literal["zero", "mean"] = "zero"
    head: Literal["multiplicative", "additive", "direct"] = "multiplicative"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The neural methods' outer loop (``dmeta.stmp.train.fit``; ``n_steps``, ``eval_every``
    and ``patience`` also for the LSTM and MAML).

    Attributes:
      n_steps: Adam steps at most (cosine decay of ``lr`` over them).
      eval_every: steps between validation scores (early stopping).
      patience: validation scores without improvement before stopping. 10 (was 5): on
        Favorita STMP's validation MSE swings by up to 30% between scores 100 steps
        apart, and at 5 a run stopped 500 steps after a lucky early score while runs
        that went on kept improving for another 1000 steps (pilot runs of 2026-11-28,
        validation curves only).
      lr: learning rate.
      ema: decay of the average of the iterates that is scored and kept
        (``dmeta.train.averaging``; 0 the iterate itself), for every neural method
        alike. 0.99 by the same validation-year comparison as ``model.context_path``: it
        cut the relative change of STMP's early-stopping score between evaluations from
        about 0.2 to 0.03 at an equal validation-year MSE (25.7k vs 25.6k with the
        context path; 27.9k vs 30.5k without it; the LSTM 30.3k vs 29.6k).
      n_tasks: (region, date type) tasks per step.
      n_query: query targets per task.
      n_context: context points per set.
      n_samples: latent samples averaged in the ML-PIP likelihood.
      beta: KL weight.
      objective: fixed_sigma (the ML-PIP Gaussian likelihood at scale ``sigma``),
        learned_sigma (its scale from the head) or mse (see ``dmeta.stmp.train``).
      sigma: the likelihood's scale with objective=fixed_sigma (scaled targets).
      query_weights: matched (festival and regular queries weighed to the training
        calendar's mix, the evaluation's) or task (a mean per task, then over tasks).
      spatial_types: the spatial view draws a region's date types by frequency or
        uniform (festival cells then train the region encoder as often as regular ones).
      switch_every: steps per view before switching (alternating training).
      type_dropout: share of STMP's festival training tasks whose date type is hidden as
        it is at test time for a type without known targets (``train.hide_types``: empty
        date-type context, no own-cell region context, no type one-hot; pair it with
        ``protocol.unseen_types=zero``). 0 (the default) draws nothing.
      context_days: "any" (every training day but the query dates can be context, later
        days of the same festival included) or "past" (a random cut per task: queries from
        it on, context before it, as the spec's "past observations" and the test time's
        context sets; ``dmeta.stmp.train.sample_tasks``). STMP's alone: the MAML baseline's
        supports are drawn the "any" way.
      lr_decays: reduce on plateau for STMP, the LSTM and MAML alike: the first
        ``lr_decays`` times ``patience`` runs out, the learning rate is multiplied by
        ``lr_factor`` and training goes on (``dmeta.train.loop.fit``); 0 (the default):
        stop at the first plateau. Early stopping halts most fits before the cosine decay
        over ``n_steps`` has lowered the rate much.
      lr_factor: the factor of each cut.
      min_steps: no early stop before this step, for STMP, the LSTM and MAML alike (the
        kept state is still the best scored one). 3000 (the default since 2026-12-02, by
        `design_closed_min_steps/`'s registered rule); 0 (every run before): a fit may stop
        as soon as ``patience`` scores pass without improvement (one fit of
        `design_closed/` stopped at step 1,500 of 10,000, its best at 500).
      backbone_lr_scale: STMP's day-feature backbone (linear baseline, LSTM, jump-LSTM,
        fusion MLP) learns at this multiple of ``lr``, the set encoders and the head at
        ``lr`` (``dmeta.stmp.train.adam``); 1 (the default): one rate for all.
      data_parallel: split each step's tasks over all visible devices.
    """

    n_steps: int = 5000
    eval_every: int = 100
    patience: int = 10
    lr: float = 3e-3
    ema: float = 0.99
    n_tasks: int = 16
    n_query: int = 16
    n_context: int = 32
    n_samples: int = 4
    beta: float = 1e-2
    objective: str = "fixed_sigma"
    sigma: float = 0.1
    query_weights: str = "matched"
    spatial_types: str = "frequency"
    switch_every: int = 50
    type_dropout: float = 0.0
    context_days: str = "any"
    lr_decays: int = 0
    min_steps: int = 3000
    lr_factor: float = 0.1
    backbone_lr_scale: float = 1.0
    data_parallel: bool = False


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """Splits and evaluation.

    Attributes:
      test_days: the last ``test_days`` days (at most a quarter of the panel) are the
        test period; the same number of days before it is the validation period.
      val_days: the last days before a fit's cutoff (at most an eighth of the panel) that
        the neural methods early-stop on instead of training on.
      classical_targets: what HistAvg, ARIMA and XGBoost fit on: ``"train"`` the neural
        methods' training targets (the ``val_days`` days stay inputs only, as for the neural
        methods), so every method learns from the same targets; ``"known"`` every target
        before the cutoff (the runs before issue #20's fairness fix).
      eval_context: context points per posterior at test time.
      eval_draws: STMP's forecasts (validation scores and test alike): 0 (the default, every
        run so far) the generative mean at the posterior means of both latents; N > 0 the
        mean over N joint draws of the two latents from their posteriors, taken in the
        level space (``baseline * exp(g)``; with a nonlinear head the two differ).
      full: run the setting with all festival training data.
      one_week: also run the one-week-of-festival-data robustness setting.
      unseen_types: how STMP, the LSTM and MAML see a target day whose date type has no
        training target (in the one-week setting most festival types): ``"one_hot"`` its own
        one-hot input, whose weights keep their random initialization; ``"zero"`` an
        all-zero one-hot, as XGBoost's unsplit columns see it (``dmeta.stmp.data.prepare``).
      closed_days: what the input windows of STMP, the LSTM and MAML read on a region's
        unobserved days (Favorita's stores close on December 25 and January 1), their
        observed flag staying 0: ``"last_week"`` (the default since 2026-12-02, by
        `design_closed_min_steps/`'s registered rule), the same weekday's input a week
        earlier (``dmeta.stmp.data.fill_last_period``), or ``"zero"`` (every run before).
        HistAvg, ARIMA and XGBoost read their lags as before (zeros with the flags as
        regressors).
      test_forecasts: every cell also writes its forecast of every test target
        (``forecasts/<cell>.test.csv.gz``; ``dmeta.stmp.protocol.test_frame``), for
        per-day and per-region diagnoses (``experiments.stmp_gap``).
    """

    test_days: int = 365
    val_days: int = 90
    classical_targets: Literal["train", "known"] = "train"
    eval_context: int = 64
    eval_draws: int = 0
    full: bool = True
    one_week: bool = True
    unseen_types: Literal["one_hot", "zero"] = "one_hot"
    closed_days: Literal["zero", "last_week"] = "last_week"
    test_forecasts: bool = False


@dataclasses.dataclass(frozen=True)
class BaselinesConfig:
    """Baseline sizes (``dmeta.stmp.baselines``).

    Attributes:
      xgb_estimators: XGBoost trees.
      xgb_max_depth: XGBoost tree depth.
      xgb_learning_rate: XGBoost shrinkage.
      lstm_lr: LSTM learning rate.
      maml_lr: MAML outer learning rate.
      maml_inner_lr: MAML inner SGD step size.
      maml_inner_clip: the inner gradient's global norm is clipped to this.
      arima_lags: p of the per-region AR(p).
    """

    xgb_estimators: int = 100
    xgb_max_depth: int = 6
    xgb_learning_rate: float = 0.05
    lstm_lr: float = 3e-3
    maml_lr: float = 3e-3
    maml_inner_lr: float = 0.05
    maml_inner_clip: float = 1.0
    arima_lags: int = 14


@dataclasses.dataclass(frozen=True)
class TuningConfig:
    """Equal tuning: the alternatives tried after each method's configured value.

    Attributes:
      trials: grid points per method (1: the configured values, no validation fits).
      per_seed: tune every (method, seed) cell on its own; False: the first seed's cell of
        a (method, setting) tunes and the other seeds reuse its choice
        (``dmeta.train.harness.shared_choice``), the same for every method.
      stmp_lr, stmp_beta, stmp_n_context, stmp_hidden, stmp_n_tasks: after ``train.lr`` /
        ``train.beta`` / ``train.n_context`` / ``model.hidden`` / ``train.n_tasks`` (STMP
        and its ablations; the meta-batch sets how noisy a step is).
      xgb_max_depth, xgb_learning_rate: after ``baselines.xgb_*``.
      lstm_lr, lstm_hidden: after ``baselines.lstm_lr`` / ``model.hidden``.
      maml_lr, maml_inner_lr: after ``baselines.maml_lr`` / ``baselines.maml_inner_lr``.
      arima_lags: after ``baselines.arima_lags``.
    """

    trials: int = 1
    per_seed: bool = True
    stmp_lr: tuple[float, ...] = (1e-3, 1e-2)
    stmp_beta: tuple[float, ...] = (1e-3, 1e-1)
    stmp_n_context: tuple[int, ...] = (16, 64)
    stmp_hidden: tuple[int, ...] = (16, 64)
    stmp_n_tasks: tuple[int, ...] = (32, 64)
    xgb_max_depth: tuple[int, ...] = (4, 8)
    xgb_learning_rate: tuple[float, ...] = (0.02, 0.1)
    lstm_lr: tuple[float, ...] = (1e-3, 1e-2)
    lstm_hidden: tuple[int, ...] = (16, 64)
    maml_lr: tuple[float, ...] = (1e-3, 1e-2)
    maml_inner_lr: tuple[float, ...] = (0.01, 0.1)
    arima_lags: tuple[int, ...] = (7, 28)


@dataclasses.dataclass(frozen=True)
class STMPConfig:
    """One STMP run: ``data``, ``model``, ``train``, ``protocol``, ``baselines``, ``tuning``.
    ``BEFORE_ADDED``: what runs saved before a field existed did, where its default is a new
    behaviour (``dmeta.train.harness``)."""

    BEFORE_ADDED: ClassVar[dict[str, object]] = {
        "protocol.closed_days": "zero",
        "train.min_steps": 0,
    }

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    tuning: TuningConfig = TuningConfig()


def get_config(*, smoke: bool = False, size: str = "cpu") -> STMPConfig:
    """The run's config; ``smoke=True`` runs in seconds.

    The paper gives no sizes beyond the protocol, so ``size="paper"`` is the default
    (CPU-sized) config.

    Raises:
      ValueError: an unknown ``size``.
    """
    if size not in ("cpu", "paper"):
        raise ValueError(f"size={size!r}; use 'cpu' or 'paper'")
    if not smoke:
        return STMPConfig()
    return STMPConfig(
        data=DataConfig(synthetic_regions=4, synthetic_days=300, max_regions=4),
        model=ModelConfig(window=14, latent=4, hidden=8),
        train=TrainConfig(
            n_steps=40,
            eval_every=10,
            patience=2,
            n_tasks=4,
            n_query=4,
            n_context=8,
            n_samples=2,
            switch_every=5,
        ),
        protocol=ProtocolConfig(test_days=60, val_days=30, eval_context=8),
        baselines=BaselinesConfig(xgb_estimators=10),
    )
