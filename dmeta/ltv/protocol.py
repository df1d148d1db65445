"""The CDLtvS protocol (5.1): data, cells, methods, tuning and scoring.

A share P of customers loses its target-domain history (C_na) in train, validation and
test; customers are split 7:2:1 (the same test customers for every seed, which redraws
train / validation: ``data.split_customers``); every method predicts the target-domain
LTV of the test customers; NMAE, NRMSE and normalized Gini overall and for C_na / C_a. One cell is one
(P, method, seed): ``setting`` is the P label (``P=50%``). Every method is tuned on the
validation customers (:func:`grid`, ``tuning.trials`` points): the Table 1 methods, and with
the same procedure and budget the Figure 5 ablations and the Figure 6 expert sweep (``k=<k>``,
seeds ``0..sweep_seeds-1``), which vary CDLtvS; every row has ``experiment = "cdltvs"`` and
:func:`table_of` tells the three tables apart by method. Figure 5's reference is Table 1's
CDLtvS. The methods with an Expert Mask Network (:func:`routed`) also log the share of the
test samples each expert gets (:func:`usage_rows`).

Stage 1 (LtvS per domain) is shared by LtvS, CDLtvS and the w/o L_AP / w/o L_AT ablations:
:class:`Protocol` keeps the fits of the current (P, seed) in memory, and a cell that finds
none (a resumed run) recomputes them, with the same numbers. Single-domain data
(``--data cdnow``) runs P = 0 with LtvS (stage 1 only) and the single-domain baselines.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmeta import metrics
from dmeta.data.frames import DataError
from dmeta.data.spec import parse_data_spec
from dmeta.datasets import LOADERS as SOURCES
from dmeta.datasets import _csv, cdnow, completejourney, transactions
from dmeta.ltv import baselines as B
from dmeta.ltv import data as ltv_data
from dmeta.ltv.config import CDLtvSConfig, ModelConfig, TrainConfig, Windows
from dmeta.ltv.train import CDLtvSFit, fit_stage1, fit_stage2
from dmeta.ltv.tsur import tsur
from dmeta.train.harness import Cell, hp_rows, shared_choice, tune, tuning_memo

logger = logging.getLogger(__name__)

BASELINES = (
    "ARIMA",
    "BG/NBD+GG",
    "XGBoost-2stage",
    "LSTM",
    "Informer",
    "TSUR",
    "TCN",
    "ZILN",
    "PTUPCDR",
    "DASL-style",
)
METHODS = (*BASELINES, "LtvS", "CDLtvS")
CROSS_DOMAIN = ("PTUPCDR", "DASL-style", "CDLtvS")
ABLATIONS = ("CDLtvS w/o L_AP", "CDLtvS w/o L_AT", "CDLtvS w/o L_ExMN")
SINGLE_DOMAIN_DATA = ("cdnow",)
METRICS = {"nmae": metrics.nmae, "nrmse": metrics.nrmse, "gini": metrics.normalized_gini}

Predictor = Callable[[ltv_data.CrossDomainData], np.ndarray]
# data -> (f32[N] LTV, {domain: i32[N] experts}), no experts for the baselines
Routed = Callable[[ltv_data.CrossDomainData], tuple[np.ndarray, dict[str, np.ndarray]]]
Splits = tuple[ltv_data.CrossDomainData, ltv_data.CrossDomainData, ltv_data.CrossDomainData]


def load_data(spec: str, cfg: CDLtvSConfig, seed: int = 0) -> tuple[str, ltv_data.CrossDomainData]:
    """``synthetic`` | ``completejourney[:PATH]`` | ``transactions:PATH`` | ``cdnow[:PATH]``.

    Returns:
      The source name and its samples; real data keeps a seeded subset of its windows'
      ``max_customers`` customers when set.

    Raises:
      DataError: an unknown name or a malformed file (named with its line and column).
    """
    parsed = parse_data_spec(spec)
    if parsed.name == "synthetic":
        d = cfg.data
        return "synthetic", ltv_data.make_synthetic(
            d.n_customers, d.n_periods, d.horizon, seed=seed
        )
    if parsed.name not in ADAPTERS:
        raise DataError(f"--data {spec!r}: cdltvs reads synthetic, {', '.join(ADAPTERS)}")
    windows: Windows = cfg.data.cdnow if parsed.name == "cdnow" else cfg.data.transactions
    data = ADAPTERS[parsed.name](SOURCES[parsed.name](parsed.path), **windows.loader_kwargs())
    customers = np.unique(data.customer)
    if windows.max_customers is not None and len(customers) > windows.max_customers:
        keep = np.random.default_rng(seed).choice(customers, windows.max_customers, replace=False)
        data = data.take(np.isin(data.customer, keep))
    return parsed.name, data


def _check_windows(src, build: Callable[[], ltv_data.CrossDomainData]) -> ltv_data.CrossDomainData:
    try:
        return build()
    except ValueError as err:  # too few windows for the history, horizon and anchors
        raise DataError(f"{src.path}: {err}") from err


def from_transactions(src: transactions.Transactions, **kwargs) -> ltv_data.CrossDomainData:
    """Generic purchases -> samples (windows as ``ltv_data.from_transactions``)."""
    tx = src.tx.assign(customer_id=_csv.natural_ids(src.tx["customer_id"]))
    attributes = src.attributes
    if attributes is not None:
        attributes = attributes.assign(customer_id=_csv.natural_ids(attributes["customer_id"]))
    return _check_windows(src, lambda: ltv_data.from_transactions(tx, attributes, **kwargs))


def from_completejourney(
    src: completejourney.CompleteJourney, **kwargs
) -> ltv_data.CrossDomainData:
    """Households as customers; source = shelf-stable departments, target = fresh food
    (``ltv_data.CJ_*``); other departments (fuel, misc, ...) are left out; amount =
    ``sales_value``. Portraits: the demographics (both domains) and each domain's own
    purchases in the history window (main department, items, spend per item, discount share
    of retail + coupon discounts). 30-day windows by default."""
    tx = src.transactions.merge(src.products[["product_id", "department"]], on="product_id",
                                how="left")  # fmt: skip
    domain = np.select(
        [tx["department"].isin(ltv_data.CJ_SOURCE_DEPARTMENTS),
         tx["department"].isin(ltv_data.CJ_TARGET_DEPARTMENTS)],
        ["source", "target"], "",
    )  # fmt: skip
    frame = pd.DataFrame({
        "customer_id": _csv.natural_ids(tx["household_id"]),
        "timestamp": tx["timestamp"].to_numpy(),
        "amount": tx["sales_value"].to_numpy(float),
        "domain": domain,
        "category": tx["department"].to_numpy(object),
        "discount": (tx["retail_disc"] + tx["coupon_disc"]).to_numpy(float),
    })[domain != ""].reset_index(drop=True)  # fmt: skip
    demo = src.demographics.rename(columns={"household_id": "customer_id"})
    demo = demo[["customer_id", *ltv_data.CJ_DEMOGRAPHICS]]
    demo = demo.assign(customer_id=_csv.natural_ids(demo["customer_id"]))
    return _check_windows(src, lambda: ltv_data.from_transactions(frame, demo, **kwargs))


def from_cdnow(
    src: cdnow.CDNOW,
    *,
    period_days: int = 7,
    n_periods: int = 39,
    horizon: int = 39,
    n_anchors: int = 1,
) -> ltv_data.CrossDomainData:
    """Single-domain samples, purchases in the target domain (the source domain all zeros).

    Defaults give the classic BG/NBD split on CDNOW (Fader, Hardie & Lee 2005): weeks from
    1997-01-01, history = the 39 calibration weeks, label = spend in the 39 holdout weeks,
    one sample per customer. Customers without spend in the history are dropped (logged; in
    CDNOW the 70 whose 1997-Q1 purchases are all $0).
    """
    tx = src.purchases.assign(customer_id=_csv.natural_ids(src.purchases["customer_id"]))
    data = _check_windows(src, lambda: ltv_data.from_transactions(
        tx.assign(domain="target"), period_days=period_days, n_periods=n_periods,
        horizon=horizon, n_anchors=n_anchors,
    ))  # fmt: skip
    dropped = tx["customer_id"].nunique() - len(np.unique(data.customer))
    if dropped:
        logger.info("%d customers without spend in the history windows dropped", dropped)
    return data


ADAPTERS = {
    "completejourney": from_completejourney,
    "transactions": from_transactions,
    "cdnow": from_cdnow,
}


def table_of(method: str) -> str:
    """``"ablation"`` (Figure 5), ``"experts"`` (Figure 6, methods ``k=<k>``) or ``"table1"``."""
    if method in ABLATIONS:
        return "ablation"
    return "experts" if method.startswith("k=") else "table1"


def p_label(p: float) -> str:
    """The setting of sparsity level ``p``: ``P=50%``."""
    return f"P={round(100 * p)}%"


def score(test: ltv_data.CrossDomainData, pred: np.ndarray, label: str) -> list[dict]:
    """Rows ``group=<label>/{all,C_na,C_a}`` x ``metric`` for one prediction f32[N_test]."""
    rows = []
    groups = {"all": np.ones(test.n, bool), "C_na": test.sparse, "C_a": ~test.sparse}
    for group, mask in groups.items():
        if mask.sum() < 2:
            continue
        for name, fn in METRICS.items():
            value = float(fn(test.t_y[mask], pred[mask]))
            rows.append({"group": f"{label}/{group}", "metric": name, "value": value})
    return rows


def routed(method: str) -> bool:
    """Whether ``method`` runs the Expert Mask Network (LtvS, CDLtvS, ablations, ``k=<k>``)."""
    return method in ("LtvS", "CDLtvS", *ABLATIONS) or method.startswith("k=")


def experts_of(cfg: CDLtvSConfig, method: str) -> int:
    """k of a :func:`routed` method (``k=<k>``, else ``model.k``)."""
    return int(method.removeprefix("k=")) if method.startswith("k=") else cfg.model.k


def grid(cfg: CDLtvSConfig, method: str) -> dict[str, tuple]:
    """The tuning grid of a method: configured value first, then ``cfg.tuning``'s (hidden
    sizes that k experts do not divide are left out for :func:`routed` methods)."""
    t = cfg.tuning
    if method in ("ARIMA", "BG/NBD+GG"):
        return {}
    if method == "XGBoost-2stage":
        b = cfg.baselines
        values = {
            "max_depth": (b.xgb_max_depth, *t.xgb_max_depth),
            "learning_rate": (b.xgb_learning_rate, *t.xgb_learning_rate),
        }
    else:
        hidden = (cfg.model.hidden, *t.hidden)
        if routed(method):
            hidden = tuple(h for h in hidden if h % experts_of(cfg, method) == 0)
        values = {"lr": (cfg.train.lr, *t.lr), "hidden": hidden}
    return {name: tuple(dict.fromkeys(v)) for name, v in values.items()}


def model_at(cfg: CDLtvSConfig, method: str, point: dict[str, Any]) -> ModelConfig:
    """The model of a :func:`routed` method at grid point ``point``: its hidden size h, d
    scaled with it (``model.align * h / model.hidden``, so d < h at every point, the paper's
    d/h at the configured one) and its k."""
    c = cfg.model
    align = max(1, round(c.align * point["hidden"] / c.hidden))
    return dataclasses.replace(c, hidden=point["hidden"], align=align, k=experts_of(cfg, method))


def usage_rows(experts: dict[str, np.ndarray], k: int, group: str) -> list[dict]:
    """Routing of the test samples: ``expert_share_<d><j>``, the share routed to expert j of
    domain d (``s`` / ``t``), and for k > 1 ``expert_entropy_<d>``, the entropy of those
    shares over log k (1: uniform, 0: every sample on one expert, a collapsed router)."""
    rows = []
    for domain, expert in sorted(experts.items()):
        share = np.bincount(expert, minlength=k) / len(expert)
        rows += [{"group": group, "metric": f"expert_share_{domain}{j}", "value": float(v)}
                 for j, v in enumerate(share)]  # fmt: skip
        if k > 1:
            used = share[share > 0]
            entropy = float(-(used * np.log(used)).sum() / np.log(k))
            rows.append({"group": group, "metric": f"expert_entropy_{domain}", "value": entropy})
    return rows


def save_scatter(path: Path, **arrays: np.ndarray) -> None:
    """Adds ``arrays`` to the npz file ``path`` (atomically; keys already there are kept)."""
    if path.exists():
        with np.load(path) as old:
            arrays = {**{k: old[k] for k in old.files}, **arrays}
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


@dataclasses.dataclass
class Protocol:
    """One run: its samples, config and output folder; runs cells.

    Attributes:
      data: all samples.
      cfg: the run's config.
      dataset: source name (``synthetic``, ``cdnow``, ...).
      out: run folder (Figure 7's ``scatter_P=<first P>_seed0.npz`` goes there).
    """

    data: ltv_data.CrossDomainData
    cfg: CDLtvSConfig
    dataset: str
    out: Path
    _memo: dict = dataclasses.field(default_factory=dict, repr=False)
    _memo_at: tuple | None = dataclasses.field(default=None, repr=False)
    _borrowed: float = dataclasses.field(default=0.0, repr=False)

    @property
    def single_domain(self) -> bool:
        """No source domain: P = 0, no stage 2, no cross-domain baselines."""
        return self.dataset in SINGLE_DOMAIN_DATA

    def settings(self) -> dict[str, float]:
        """P label -> P of the run's settings."""
        levels = (0.0,) if self.single_domain else self.cfg.protocol.sparsity
        return {p_label(p): p for p in levels}

    def cells(self, methods: Sequence[str], seeds: int) -> list[Cell]:
        """Per P and seed: the chosen Table 1 methods, then (with CDLtvS) the ablations and
        the k sweep. On single-domain data the cross-domain methods are left out (logged)."""
        if self.single_domain:
            skipped = [m for m in methods if m in CROSS_DOMAIN]
            if skipped:
                logger.warning("%s has one domain: %s not applicable", self.dataset, skipped)
            methods = [m for m in methods if m not in CROSS_DOMAIN]
        proto, cells = self.cfg.protocol, []
        for label in self.settings():
            for seed in range(seeds):
                names = list(methods)
                if "CDLtvS" in methods:
                    names += list(ABLATIONS) if proto.ablations else []
                    names += [f"k={k}" for k in proto.sweep_k] if seed < proto.sweep_seeds else []
                cells += [Cell(name, seed, label) for name in names]
        return cells

    def run_cell(self, cell: Cell) -> list[dict]:
        """The long-schema rows of one cell (scores, ``seconds``, chosen hyperparameters and,
        for :func:`routed` methods, expert usage)."""
        start, self._borrowed = time.perf_counter(), 0.0
        p = self.settings()[cell.setting]
        test = self._split(p, cell.seed)[2]
        pred, extra = self._tuned(cell, p)
        seconds = time.perf_counter() - start + self._borrowed
        rows = score(test, pred, cell.setting)
        rows.append({"group": f"{cell.setting}/all", "metric": "seconds", "value": seconds})
        keys = dict(experiment="cdltvs", dataset=self.dataset, method=cell.method, seed=cell.seed)
        return [dict(r, **keys) for r in rows + extra]

    def _tuned(self, cell: Cell, p: float) -> tuple[np.ndarray, list[dict]]:
        """Tunes a method on validation NMAE (``tuning.per_seed`` False: once per method and
        setting, see ``shared_choice``); its test prediction and extra rows (``hp:<name>``
        and, for :func:`routed` methods, :func:`usage_rows`)."""
        _, val, test = self._split(p, cell.seed)
        fitted: dict[tuple, Routed] = {}

        def evaluate(point: dict[str, Any]) -> float:
            fitted[tuple(point.items())] = self._fit(cell.method, p, cell.seed, point)
            return float(metrics.nmae(val.t_y, fitted[tuple(point.items())](val)[0]))

        per_seed = self.cfg.tuning.per_seed

        def choose() -> dict[str, Any]:
            points, trials = grid(self.cfg, cell.method), self.cfg.tuning.trials
            memo = tuning_memo(self.out, cell, per_seed=per_seed)
            return tune(points, evaluate, trials=trials, score_single=True, memo=memo).best

        best = shared_choice(self.out, cell, choose, per_seed=per_seed)
        if tuple(best.items()) not in fitted:  # chosen by the method's first seed
            fitted[tuple(best.items())] = self._fit(cell.method, p, cell.seed, best)
        pred, experts = fitted[tuple(best.items())](test)
        group = f"{cell.setting}/all"
        rows = hp_rows(best, group=group)
        if experts:
            rows += usage_rows(experts, experts_of(self.cfg, cell.method), group)
        first = cell.seed == 0 and p == next(iter(self.settings().values()))
        if first and self.out is not None and cell.method == "CDLtvS":
            self._save_scatter(cell, p, best, test, pred, experts["t"])
        elif first and self.out is not None and cell.method == "LtvS" and self.single_domain:
            save_scatter(self._scatter_path(cell), y=test.t_y, ltvs=pred, ltvs_expert=experts["t"])
        return pred, rows

    def _scatter_path(self, cell: Cell) -> Path:
        return self.out / f"scatter_{cell.setting.replace('%', '')}_seed{cell.seed}.npz"

    def _save_scatter(self, cell: Cell, p: float, best, test, pred, expert) -> None:
        """Figure 7's data: the test LTV, CDLtvS's predictions and target experts (stage 2)
        and those of the stage 1 it started from (its target LtvS at the same point; on
        single-domain data, with no CDLtvS, the LtvS cell writes stage 1 alone)."""
        borrowed = self._borrowed  # a lookup of the cell's own stage 1, not more work
        model = model_at(self.cfg, cell.method, best)
        stage1 = self._stage1(
            p, cell.seed, model, dataclasses.replace(self.cfg.train, lr=best["lr"])
        )
        self._borrowed = borrowed
        ltvs, ltvs_experts = stage1.predict_ltvs(test)
        save_scatter(self._scatter_path(cell), y=test.t_y, ltvs=ltvs,
                     ltvs_expert=ltvs_experts["t"], cd=pred, cd_expert=expert)  # fmt: skip

    def _fit(self, method: str, p: float, seed: int, point: dict[str, Any]) -> Routed:
        """Method ``method`` at grid point ``point``, fitted on the (P, seed) split."""
        train, val, _ = self._split(p, seed)
        if routed(method):
            return self._ours(method, p, seed, point)
        if method == "XGBoost-2stage":
            b = self.cfg.baselines
            fixed = dict(n_estimators=b.xgb_estimators, early_stopping=b.xgb_early_stopping)
            return _unrouted(B.two_stage_xgboost(train, val, seed=seed, **fixed, **point))
        if method in B.CLASSICAL:
            return _unrouted(B.CLASSICAL[method](train, val, seed=seed, **point))
        model = dataclasses.replace(self.cfg.model, hidden=point["hidden"])
        train_cfg = dataclasses.replace(self.cfg.train, lr=point["lr"])
        fit_kwargs = dict(seed=seed, hidden=model.hidden, **train_cfg.fit_kwargs())
        if method == "PTUPCDR":
            meta_dim = self.cfg.baselines.ptupcdr_meta_dim
            return _unrouted(B.ptupcdr(train, val, meta_dim=meta_dim, **fit_kwargs))
        if method == "TSUR":
            return _unrouted(tsur(train, val, **self.cfg.baselines.tsur_kwargs(), **fit_kwargs))
        return _unrouted(B.neural_baseline(B.NEURAL_NAMES[method], train, val, **fit_kwargs))

    def _ours(self, method: str, p: float, seed: int, point: dict[str, Any]) -> Routed:
        """LtvS (stage 1), CDLtvS (stage 2), an ablation or ``k=<k>`` at ``point``."""
        model = model_at(self.cfg, method, point)
        train = dataclasses.replace(self.cfg.train, lr=point["lr"])
        if method == "LtvS":
            return self._stage1(p, seed, model, train).predict_ltvs
        l1, l2, l3, l4 = model.lambdas
        variant = {
            "CDLtvS w/o L_AP": dict(lambdas=(l1, l2, 0.0, l4)),
            "CDLtvS w/o L_AT": dict(lambdas=(l1, l2, l3, 0.0)),
            "CDLtvS w/o L_ExMN": dict(exmn_loss=False),
        }.get(method, {})
        return self._stage2(p, seed, model, train, **variant).predict

    def _split(self, p: float, seed: int) -> Splits:
        """Train / validation / test of sparsity ``p`` and ``seed`` (7:2:1 by customer)."""
        return self._memoized(
            p,
            seed,
            ("split",),
            lambda: ltv_data.split_customers(ltv_data.apply_sparsity(self.data, p, seed), seed),
        )

    def _stage1(
        self, p: float, seed: int, model: ModelConfig, train: TrainConfig, exmn_loss: bool = True
    ) -> CDLtvSFit:
        """Stage 1 (both domains; the target alone on single-domain data)."""
        tr, val, _ = self._split(p, seed)
        domains = ("t",) if self.single_domain else ("s", "t")
        kwargs = dict(seed=seed, domains=domains, exmn_loss=exmn_loss, **train.fit_kwargs())
        return self._memoized(
            p,
            seed,
            ("stage1", model, train, exmn_loss),
            lambda: fit_stage1(tr, val, **dataclasses.asdict(model), **kwargs),
        )

    def _stage2(
        self,
        p: float,
        seed: int,
        model: ModelConfig,
        train: TrainConfig,
        *,
        exmn_loss: bool = True,
        lambdas: tuple[float, ...] | None = None,
    ) -> CDLtvSFit:
        """Stage 2 from :meth:`_stage1` (``lambdas`` default: the model's)."""
        stage1 = self._stage1(p, seed, model, train, exmn_loss)
        tr, val, _ = self._split(p, seed)
        lambdas = model.lambdas if lambdas is None else lambdas
        return self._memoized(
            p,
            seed,
            ("stage2", model, train, exmn_loss, lambdas),
            lambda: fit_stage2(stage1, tr, val, lambdas=lambdas, seed=seed, **train.fit_kwargs()),
        )

    def _memoized(self, p: float, seed: int, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per (p, seed, key); only the current (p, seed) is kept. A hit
        adds the seconds the computation took to the current cell's time."""
        if self._memo_at != (p, seed):
            self._memo, self._memo_at = {}, (p, seed)
        if key in self._memo:
            value, seconds = self._memo[key]
            self._borrowed += seconds
            return value
        start = time.perf_counter()
        value = compute()
        self._memo[key] = (value, time.perf_counter() - start)
        return value


def _unrouted(predict: Predictor) -> Routed:
    """A baseline's predictor as a :data:`Routed` one (no experts)."""
    return lambda data: (predict(data), {})
