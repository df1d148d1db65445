"""Cross-domain LTV data: one array per field, the same customers in a source and a target domain.

Every builder returns a :class:`CrossDomainData` whose rows are samples (a customer at one
anchor date). Per domain ``x`` in ``("s", "t")``:

- ``x_series: f32[N, L]`` consumption per period over the history window,
- ``x_observed: f32[N, L]`` 1 where the period's history is available, 0 where it was removed,
- ``x_cat: i32[N, Cx]`` categorical portrait features (codes below ``x_cat_sizes``),
- ``x_num: f32[N, Mx]`` numeric portrait features,
- ``x_y: f32[N]`` the cumulative value over the next ``horizon`` periods (the LTV label).

``sparse: bool[N]`` marks C_na (target history removed) and ``customer: i64[N]`` the customer
of each sample (splits are by customer). The last ``history_portrait = (categorical, numeric)``
portrait columns of each domain summarize that domain's own history window (built by
:func:`from_transactions`); removing a customer's target history clears them too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DOMAINS = ("s", "t")
ARRAY_FIELDS = tuple(
    f"{d}_{f}" for d in DOMAINS for f in ("series", "observed", "cat", "num", "y")
) + ("sparse", "customer")

# completejourney: shelf-stable departments as the source domain, fresh food as the target.
CJ_SOURCE_DEPARTMENTS = ("GROCERY", "DRUG GM")
CJ_TARGET_DEPARTMENTS = (
    "PRODUCE",
    "MEAT",
    "MEAT-PCKGD",
    "DELI",
    "PASTRY",
    "SEAFOOD",
    "SEAFOOD-PCKGD",
    "SALAD BAR",
    "FLORAL",
)
CJ_DEMOGRAPHICS = (
    "age",
    "income",
    "home_ownership",
    "marital_status",
    "household_size",
    "household_comp",
    "kids_count",
)


@dataclasses.dataclass(frozen=True)
class CrossDomainData:
    """Samples of a two-domain LTV problem (field layout in the module docstring)."""

    s_series: np.ndarray
    s_observed: np.ndarray
    s_cat: np.ndarray
    s_num: np.ndarray
    s_y: np.ndarray
    t_series: np.ndarray
    t_observed: np.ndarray
    t_cat: np.ndarray
    t_num: np.ndarray
    t_y: np.ndarray
    sparse: np.ndarray
    customer: np.ndarray
    s_cat_sizes: tuple[int, ...]
    t_cat_sizes: tuple[int, ...]
    horizon: int
    history_portrait: tuple[int, int] = (0, 0)

    def __post_init__(self):
        n = self.customer.shape[0]
        for name in ARRAY_FIELDS:
            value = getattr(self, name)
            if value.shape[0] != n:
                raise ValueError(f"{name}: {value.shape[0]} rows, expected {n}")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                row = int(np.argwhere(~np.isfinite(value))[0, 0])
                raise ValueError(f"{name}: non-finite value in row {row}")

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.customer.shape[0])

    def take(self, idx: np.ndarray) -> CrossDomainData:
        """The samples ``idx`` (int indices or a bool mask)."""
        return dataclasses.replace(self, **{k: getattr(self, k)[idx] for k in ARRAY_FIELDS})

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-sample arrays as a dict (the batch layout of the models)."""
        return {k: getattr(self, k) for k in ARRAY_FIELDS}


def apply_sparsity(data: CrossDomainData, p: float, seed: int) -> CrossDomainData:
    """Removes the target-domain history of a share ``p`` of the customers (C_na).

    Only ``t_series`` and ``t_observed`` (set to 0) of the chosen customers change, their
    target portrait columns summarizing the history (``history_portrait``: set to 0, the
    value of a customer without purchases), and ``sparse``; labels, the other portrait
    columns and the source domain are untouched.

    Args:
      data: samples; all samples of a chosen customer become sparse.
      p: share of customers in [0, 1].
      seed: seed of the customer draw.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"sparsity share p={p} is not in [0, 1]")
    customers = np.unique(data.customer)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(customers, size=int(round(p * len(customers))), replace=False)
    sparse = np.isin(data.customer, chosen)
    keep = (~sparse)[:, None].astype(np.float32)
    t_cat, t_num = data.t_cat.copy(), data.t_num.copy()
    n_cat, n_num = data.history_portrait
    t_cat[sparse, t_cat.shape[1] - n_cat :] = 0
    t_num[sparse, t_num.shape[1] - n_num :] = 0.0
    return dataclasses.replace(
        data,
        t_series=data.t_series * keep,
        t_observed=data.t_observed * keep,
        t_cat=t_cat,
        t_num=t_num,
        sparse=sparse,
    )


def split_customers(
    data: CrossDomainData, seed: int, ratios: tuple[float, float, float] = (0.7, 0.2, 0.1)
) -> tuple[CrossDomainData, CrossDomainData, CrossDomainData]:
    """Train / validation / test split by customer in ``ratios`` (7:2:1 by default).

    The test customers are the same for every seed (the last share of a permutation drawn
    with seed 0); ``seed`` redraws which of the others train and which validate. So a choice
    tuned on one seed's validation customers (``tuning.per_seed = false``) never scores
    another seed's test customers. Seed 0 gives the plain permutation split.
    """
    customers = np.unique(data.customer)
    cuts = np.round(np.cumsum(ratios)[:2] / np.sum(ratios) * len(customers)).astype(int)
    test = np.random.default_rng(0).permutation(customers)[cuts[1] :]
    order = np.random.default_rng(seed).permutation(customers)
    train, val = np.split(order[~np.isin(order, test)], cuts[:1])
    return tuple(data.take(np.isin(data.customer, part)) for part in (train, val, test))


def _standardize(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean(0)) / np.maximum(x.std(0), 1e-6)).astype(np.float32)


def make_synthetic(
    n_customers: int = 3000,
    n_periods: int = 12,
    horizon: int = 3,
    *,
    seed: int = 0,
    ship_share: float = 0.6,
) -> CrossDomainData:
    """Two domains over the same customers with a known long-tailed, source-driven target.

    Ground truth: each customer has a value segment (0 dormant, 1 low, 2 mid, 3 high; shares
    0.3/0.35/0.23/0.12) and a shared size ``u``. Source amounts are lognormal per active period
    with an AR(1) drift; target amounts are a customer-specific share (``ship_share`` times a
    Beta(4, 2) draw, zero for dormant customers) of the previous period's source amount plus an
    own lognormal term. Dormant customers never buy in the target domain, which gives the LTV a
    zero mass; the segments give a lognormal mixture tail. Portraits are noisy views of the
    segment, ``u`` and the share.

    Args:
      n_customers: N (one sample per customer).
      n_periods: L history periods.
      horizon: future periods summed into the LTV labels.
      seed: numpy seed.
      ship_share: mean strength of the source -> target coupling.
    """
    rng = np.random.default_rng(seed)
    n, total = n_customers, n_periods + horizon + 1
    seg = rng.choice(4, n, p=[0.3, 0.35, 0.23, 0.12])
    u = rng.normal(size=n)
    v = rng.normal(size=n)
    drift = np.zeros((n, total))
    for t in range(1, total):
        drift[:, t] = 0.7 * drift[:, t - 1] + 0.3 * rng.normal(size=n)
    log_s = (np.array([0.0, 1.0, 2.0, 3.2])[seg] + 0.5 * u)[:, None] + drift
    p_s = np.array([0.2, 0.55, 0.75, 0.9])[seg][:, None]
    s = (rng.random((n, total)) < p_s) * np.exp(log_s + 0.4 * rng.normal(size=(n, total)))
    share = ship_share * rng.beta(4.0, 2.0, size=n) * (seg > 0)
    log_t = (np.array([0.0, 0.3, 1.0, 2.0])[seg] + 0.3 * u + 0.5 * v)[:, None]
    p_t = np.array([0.0, 0.3, 0.5, 0.7])[seg][:, None]
    own = (rng.random((n, total)) < p_t) * np.exp(log_t + 0.5 * rng.normal(size=(n, total)))
    t_amt = np.concatenate([np.zeros((n, 1)), share[:, None] * s[:, :-1]], axis=1) + own
    s, t_amt = s[:, 1:], t_amt[:, 1:]
    hist, fut = slice(0, n_periods), slice(n_periods, n_periods + horizon)
    industry = np.where(rng.random(n) < 0.7, seg + 2 * (u > 0), rng.integers(0, 8, n))
    region = rng.integers(0, 5, n)
    tier = np.where(
        rng.random(n) < 0.7, np.digitize(share, [0.05, 0.3, 0.45]), rng.integers(0, 4, n)
    )
    ones = np.ones((n, n_periods), np.float32)
    return CrossDomainData(
        s_series=s[:, hist].astype(np.float32),
        s_observed=ones,
        s_cat=np.stack([industry, region], 1).astype(np.int32),
        s_num=_standardize(np.stack([u + 0.5 * rng.normal(size=n), rng.normal(size=n)], 1)),
        s_y=s[:, fut].sum(1).astype(np.float32),
        t_series=t_amt[:, hist].astype(np.float32),
        t_observed=ones.copy(),
        t_cat=np.stack([tier, region], 1).astype(np.int32),
        t_num=_standardize(np.stack([v + 0.7 * rng.normal(size=n)], 1)),
        t_y=t_amt[:, fut].sum(1).astype(np.float32),
        sparse=np.zeros(n, bool),
        customer=np.arange(n),
        s_cat_sizes=(8, 5),
        t_cat_sizes=(4, 5),
        horizon=horizon,
    )


def from_transactions(
    tx: pd.DataFrame,
    attributes: pd.DataFrame | None = None,
    *,
    period_days: int = 30,
    n_periods: int = 6,
    horizon: int = 1,
    n_anchors: int = 6,
) -> CrossDomainData:
    """Builds samples from ``customer_id, timestamp, amount, domain`` (domain source|target).

    Time is cut into ``period_days`` windows from the first timestamp. For each of the last
    ``n_anchors`` anchors that leave ``horizon`` future windows, a sample per customer holds
    the ``n_periods`` windows before the anchor and the sum of the ``horizon`` windows after it.
    Samples with no purchase in either domain's history are dropped.

    Each domain's portrait is built from that domain's own purchases in the sample's history
    window (:func:`_profiles`), after the customer attributes and two numbers shared by both
    domains (anchor position, has a known attribute).

    Args:
      tx: transactions; negative amounts (returns) are kept and net out within a window.
        Optional columns: ``category`` (text) and ``discount`` (>= 0, in amount units).
      attributes: optional ``customer_id`` + categorical columns, in the portrait of both
        domains; customers without a row get the category "unknown" (logged).
      period_days: window length in days.
      n_periods: L history windows.
      horizon: future windows in the label.
      n_anchors: anchors per customer.
    """
    t0 = tx["timestamp"].min().normalize()
    period = ((tx["timestamp"] - t0).dt.days // period_days).to_numpy()
    customers, cust_idx = np.unique(tx["customer_id"].to_numpy(), return_inverse=True)
    n_win = int(period.max()) + 1
    if (period == n_win - 1).mean() < 0.5 * (period == n_win - 2).mean():
        n_win -= 1  # a last, clearly partial window is dropped
    anchors = range(n_win - horizon - n_anchors + 1, n_win - horizon + 1)
    if min(anchors) < n_periods:
        raise ValueError(f"{n_win} windows cannot hold {n_periods} + {horizon} + {n_anchors - 1}")
    ok = period < n_win
    index = ((tx["domain"].astype(str).to_numpy() == "target").astype(int)[ok], cust_idx[ok],
             period[ok])  # fmt: skip

    def windows(values: np.ndarray, *extra: int) -> np.ndarray:
        """f64[2, customers, windows, *extra] sums of ``values`` (index extended by extra)."""
        grid = np.zeros((2, len(customers), n_win, *extra))
        np.add.at(grid, index + tuple(v[ok] for v in values[1:]), values[0][ok])
        return grid

    def history(grid: np.ndarray) -> np.ndarray:
        """[2, customers, windows, ...] -> [2, samples, n_periods, ...] (anchor-major)."""
        return np.concatenate([grid[:, :, a - n_periods : a] for a in anchors], axis=1)

    grid = np.maximum(windows((tx["amount"].to_numpy(float),)), 0.0)
    hist = history(grid)
    fut = np.concatenate([grid[:, :, a : a + horizon].sum(-1) for a in anchors], axis=1)
    anchor_pos = np.repeat(np.arange(len(anchors)), len(customers)).astype(np.float32)
    cust = np.tile(np.arange(len(customers)), len(anchors))
    keep = hist.sum((0, 2)) > 0
    cat, sizes = _attribute_codes(customers, attributes)
    num = np.stack([anchor_pos / max(len(anchors) - 1, 1), (cat[cust] != 0).any(1)], 1)
    p_cat, p_num, p_sizes = _profiles(tx, hist, windows, history)
    ones = np.ones(hist.shape[1:], np.float32)
    data = CrossDomainData(
        s_series=hist[0].astype(np.float32),
        s_observed=ones,
        s_cat=np.concatenate([cat[cust], p_cat[0]], 1),
        s_num=np.concatenate([num, p_num[0]], 1).astype(np.float32),
        s_y=fut[0].astype(np.float32),
        t_series=hist[1].astype(np.float32),
        t_observed=ones.copy(),
        t_cat=np.concatenate([cat[cust], p_cat[1]], 1),
        t_num=np.concatenate([num, p_num[1]], 1).astype(np.float32),
        t_y=fut[1].astype(np.float32),
        sparse=np.zeros(len(cust), bool),
        customer=customers[cust],
        s_cat_sizes=sizes + p_sizes,
        t_cat_sizes=sizes + p_sizes,
        horizon=horizon,
        history_portrait=(p_cat.shape[-1], p_num.shape[-1]),
    )
    return data.take(keep)


def _profiles(
    tx: pd.DataFrame, hist: np.ndarray, windows: Callable, history: Callable
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Each domain's own portrait over each sample's history window.

    Numbers: ``log1p`` of the purchases (rows), ``log1p`` of the spend per purchase and, when
    ``tx`` has ``discount``, the discount share ``discount / (spend + discount)``. Category,
    when ``tx`` has ``category``: the one with the most spend (code 0: no purchase). All are 0
    for a window without purchases in the domain.

    Args:
      tx: the transactions of :func:`from_transactions`.
      hist: f64[2, S, L] the samples' clipped spend per window.
      windows, history: :func:`from_transactions`'s window sums and history slices.

    Returns:
      i32[2, S, Cp] codes, f64[2, S, Mp] numbers and the Cp category sizes.
    """
    spend = hist.sum(-1)
    items = history(windows((np.ones(len(tx)),))).sum(-1)
    num = [np.log1p(items), np.log1p(spend / np.maximum(items, 1.0))]
    if "discount" in tx.columns:
        disc = history(windows((tx["discount"].to_numpy(float),))).sum(-1)
        num.append(disc / np.maximum(spend + disc, 1e-9))
    if "category" not in tx.columns:
        return np.zeros(spend.shape + (0,), np.int32), np.stack(num, -1), ()
    levels, codes = np.unique(tx["category"].astype(str).to_numpy(), return_inverse=True)
    by_cat = history(windows((tx["amount"].to_numpy(float), codes), len(levels))).sum(2)
    main = np.where(by_cat.max(-1) > 0, by_cat.argmax(-1) + 1, 0).astype(np.int32)
    return main[..., None], np.stack(num, -1), (len(levels) + 1,)


def _attribute_codes(
    customers: np.ndarray, attributes: pd.DataFrame | None
) -> tuple[np.ndarray, tuple[int, ...]]:
    """i32[C, A] codes of the attribute columns per customer (0 = unknown) and the sizes."""
    if attributes is None or attributes.shape[1] < 2:
        return np.zeros((len(customers), 1), np.int32), (1,)
    table = attributes.set_index("customer_id").reindex(customers)
    unknown = table.isna().all(axis=1).to_numpy()
    if unknown.any():
        log.info(
            "%d of %d customers have no attribute row: coded 'unknown'", unknown.sum(), len(unknown)
        )
    codes, sizes = [], []
    for col in table.columns:
        values = table[col].astype("string").fillna("unknown").to_numpy(dtype=object)
        levels = ["unknown"] + sorted(set(values) - {"unknown"})
        lookup = {lv: i for i, lv in enumerate(levels)}
        codes.append([lookup[x] for x in values])
        sizes.append(len(levels))
    return np.asarray(codes, np.int32).T, tuple(sizes)
