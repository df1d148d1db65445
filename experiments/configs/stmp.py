"""Config for ``dmeta run stmp`` (STMP festival purchase prediction)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class STMPConfig:
    """Sizes of one STMP run; ``get_config(smoke=True)`` runs in seconds.

    Attributes:
      window: L input days (a multiple of the jump period).
      latent, hidden: latent size Z and hidden size H.
      n_steps, lr: outer-loop Adam steps and learning rate (cosine decay).
      n_tasks, n_query, n_context: tasks per step, query targets per task, context points.
      eval_context: context points per posterior at test time.
      n_samples: latent samples averaged in the ML-PIP likelihood.
      beta: KL weight.
      switch_every: steps per view before switching (alternating training).
      test_days: the last ``test_days`` days are the test period.
      synthetic_regions, synthetic_days: size of ``--data synthetic``.
      baselines: baselines to run (cheapest first).
      ablations: STMP ablations (deterministic latents, no jump-LSTM, joint training).
      one_week: also run the one-week-of-festival-data robustness setting.
      xgb_estimators, lstm_steps: baseline sizes (lstm_steps also sets MAML's outer steps).
      max_regions: keep only the first regions (None: all).
    """

    window: int = 28
    latent: int = 16
    hidden: int = 32
    n_steps: int = 300
    lr: float = 3e-3
    n_tasks: int = 16
    n_query: int = 16
    n_context: int = 32
    eval_context: int = 64
    n_samples: int = 4
    beta: float = 1e-2
    switch_every: int = 50
    test_days: int = 365
    synthetic_regions: int = 24
    synthetic_days: int = 3 * 365
    baselines: tuple[str, ...] = ("historical_average", "arima", "xgboost", "lstm", "maml")
    ablations: tuple[str, ...] = ("deterministic", "no_jump", "joint")
    one_week: bool = True
    data_parallel: bool = False  # split each step's tasks over all visible devices
    xgb_estimators: int = 100
    lstm_steps: int = 300
    max_regions: int | None = None


def get_config(smoke: bool = False) -> STMPConfig:
    """The full config, or a tiny one for smoke runs and tests."""
    if not smoke:
        return STMPConfig()
    return STMPConfig(
        window=14,
        latent=4,
        hidden=8,
        n_steps=20,
        n_tasks=4,
        n_query=4,
        n_context=8,
        eval_context=8,
        n_samples=2,
        switch_every=5,
        test_days=60,
        synthetic_regions=4,
        synthetic_days=300,
        xgb_estimators=10,
        lstm_steps=20,
        max_regions=4,
    )
