"""Sales panels and the paper's Data Frames (Zhao & Wang, section 3.2.1, eq. 2-6).

A ``SalesPanel`` is a dense item x region x period cube of ``d`` log indicators.
``indicator_matrices`` adds the brand, category and region aggregates (eq. 2, 3, 5): the
panel's ``GroupTotals`` when it has them (totals over every product of the regions, also
those left out of the panel), else the sums over the panel's items. ``build_frames``
cuts, for every (region, item, end point) at once, the Data Frame
``DF_ir = [X_ir, X_brand(i)r, X_category(i)r, X_r]`` (eq. 6) of length ``T`` and the
target: total sales over the next ``k`` periods.

Shape legend: ``R`` regions, ``I`` items, ``B`` brands, ``C`` categories, ``L`` periods,
``D`` indicators, ``E`` end points, ``T`` frame length, ``M = 4`` indicator matrices.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dmeta.types import Array

N_MATRICES = 4  # item, brand, category, region
MATRIX_NAMES = ("item", "brand", "category", "region")


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=("brand", "category", "region"),
    meta_fields=(),
)
@dataclasses.dataclass(frozen=True, eq=False)
class GroupTotals:
    """Brand, category and region indicator series of a panel, in the units of its ``x``.

    Attributes:
      brand: f32[R, B, L, D] series of each brand (the panel's brand indices) per region.
      category: f32[R, C, L, D] series of each category per region.
      region: f32[R, L, D] series of each region.
    """

    brand: Array
    category: Array
    region: Array

    def check(self, x: np.ndarray, brand: np.ndarray, category: np.ndarray) -> None:
        """Raises ValueError unless the totals fit a panel's ``x`` f32[R, I, L, D] and its
        i32[I] ``brand`` and ``category`` indices."""
        r, _, n_periods, d = np.shape(x)
        n_groups = {"brand": int(np.max(brand)) + 1, "category": int(np.max(category)) + 1}
        for name, n in n_groups.items():
            shape = np.shape(getattr(self, name))
            if len(shape) != 4 or shape[1] < n or shape[:1] + shape[2:] != (r, n_periods, d):
                raise ValueError(
                    f"GroupTotals.{name}: shape {shape}, the panel needs "
                    f"({r}, >= {n}, {n_periods}, {d})"
                )
        if np.shape(self.region) != (r, n_periods, d):
            raise ValueError(
                f"GroupTotals.region: shape {np.shape(self.region)}, the panel needs "
                f"({r}, {n_periods}, {d})"
            )
        if not all(np.isfinite(a).all() for a in (self.brand, self.category, self.region)):
            raise ValueError("GroupTotals hold NaN or inf values")

    def take(
        self,
        *,
        regions=slice(None),
        brands=slice(None),
        categories=slice(None),
        periods=slice(None),
    ) -> GroupTotals:
        """The totals at region, brand, category and period indices (or slices)."""
        return GroupTotals(
            brand=self.brand[regions][:, brands][:, :, periods],
            category=self.category[regions][:, categories][:, :, periods],
            region=self.region[regions][:, periods],
        )


@dataclasses.dataclass(frozen=True, eq=False)
class SalesPanel:
    """A dense item x region panel of log indicators (0 where nothing was logged).

    Attributes:
      x: f32[R, I, L, D] indicator values.
      brand: i32[I] brand index of each item (0..B-1).
      category: i32[I] category index of each item (0..C-1).
      target: index into the D indicators of the sales indicator.
      regions, items, indicators: names along R, I and D.
      dates: datetime64[L] period start (or label) dates, evenly spaced (their step is
        the panel's time unit, ``period_days``).
      totals: the brand, category and region series over every product of the regions
        (``GroupTotals``, indexed by ``brand`` and ``category``), or None: the Data Frames'
        group rows sum the panel's items.
    """

    x: np.ndarray
    brand: np.ndarray
    category: np.ndarray
    target: int
    regions: tuple[str, ...]
    items: tuple[str, ...]
    indicators: tuple[str, ...]
    dates: np.ndarray
    totals: GroupTotals | None = None

    def __post_init__(self):
        r, i, n_periods, d = self.x.shape
        checks = {
            "regions": (len(self.regions), r),
            "items": (len(self.items), i),
            "indicators": (len(self.indicators), d),
            "dates": (len(self.dates), n_periods),
            "brand": (len(self.brand), i),
            "category": (len(self.category), i),
        }
        for name, (got, want) in checks.items():
            if got != want:
                raise ValueError(f"SalesPanel.{name}: length {got}, x has {want}")
        if not np.isfinite(self.x).all():
            raise ValueError("SalesPanel.x holds NaN or inf values")
        if not 0 <= self.target < d:
            raise ValueError(f"SalesPanel.target={self.target} outside 0..{d - 1}")
        if self.totals is not None:
            self.totals.check(self.x, self.brand, self.category)

    @property
    def period_days(self) -> float:
        """Days per period: the median step between ``dates`` (1.0 for a single date)."""
        if len(self.dates) < 2:
            return 1.0
        step = np.median(np.diff(np.asarray(self.dates, "datetime64[s]")).astype(np.float64))
        return float(step) / 86400.0

    @property
    def sales(self) -> np.ndarray:
        """f32[R, I, L] the target indicator."""
        return self.x[..., self.target]

    def select_regions(self, keep: np.ndarray) -> SalesPanel:
        """The panel restricted to region indices ``keep`` (i32[R'])."""
        keep = np.asarray(keep)
        return dataclasses.replace(
            self,
            x=self.x[keep],
            regions=tuple(self.regions[k] for k in keep),
            totals=None if self.totals is None else self.totals.take(regions=keep),
        )

    def select_items(self, keep: np.ndarray) -> SalesPanel:
        """The panel restricted to item indices ``keep`` (i32[I']); brand and category
        indices renumbered 0.. over the kept items. Without ``totals`` the group rows then
        cover the kept items only; ``totals`` keep every product (re-indexed to match)."""
        keep = np.asarray(keep)
        brands, brand = np.unique(self.brand[keep], return_inverse=True)
        categories, category = np.unique(self.category[keep], return_inverse=True)
        totals = self.totals
        if totals is not None:
            totals = totals.take(brands=brands, categories=categories)
        return dataclasses.replace(
            self,
            x=self.x[:, keep],
            brand=brand.astype(np.int32),
            category=category.astype(np.int32),
            items=tuple(self.items[k] for k in keep),
            totals=totals,
        )

    def first_periods(self, n: int) -> SalesPanel:
        """The panel's first ``n`` periods."""
        return dataclasses.replace(
            self,
            x=self.x[:, :, :n],
            dates=self.dates[:n],
            totals=None if self.totals is None else self.totals.take(periods=slice(n)),
        )


def indicator_matrices(
    x: Array, brand: Array, category: Array, totals: GroupTotals | None = None
) -> Array:
    """Item, brand, category and region indicator series (eq. 2, 3, 5), stacked.

    Args:
      x: f32[R, I, L, D] item indicators ``x_ir_t``.
      brand: i32[I] brand index of each item.
      category: i32[I] category index of each item.
      totals: the group series (``GroupTotals``: brand f32[R, B, L, D], category
        f32[R, C, L, D], region f32[R, L, D]), or None: sums over the items of ``x``.

    Returns:
      f32[R, I, 4, L, D]: for item i in region r, its own series, its brand's, its
      category's and its region's series.
    """
    x = jnp.asarray(x)
    if totals is None:
        groups = _item_sums(x, brand, category)
    else:
        groups = (
            jnp.asarray(totals.brand)[:, brand],
            jnp.asarray(totals.category)[:, category],
            jnp.broadcast_to(jnp.asarray(totals.region)[:, None], x.shape),
        )
    return jnp.stack([x, *groups], axis=2)


def _item_sums(x: Array, brand: Array, category: Array) -> tuple[Array, Array, Array]:
    """Brand, category and region sums over the items of ``x`` f32[R, I, L, D], each
    f32[R, I, L, D] (item i's group's sum at i)."""
    n_items = x.shape[1]
    by_item = jnp.moveaxis(x, 1, 0)  # [I, R, L, D]

    def group_sum(group):
        sums = jax.ops.segment_sum(by_item, group, num_segments=n_items)
        return jnp.moveaxis(sums[group], 0, 1)  # [R, I, L, D]

    region = jnp.broadcast_to(x.sum(axis=1, keepdims=True), x.shape)
    return group_sum(brand), group_sum(category), region


@functools.partial(jax.jit, static_argnames=("length", "horizon", "target"))
def build_frames(
    x: Array,
    brand: Array,
    category: Array,
    ends: Array,
    totals: GroupTotals | None = None,
    *,
    length: int,
    horizon: int,
    target: int,
) -> tuple[Array, Array]:
    """Data Frames and targets for every (region, item, end point) at once.

    Args:
      x: f32[R, I, L, D] item indicators.
      brand, category: i32[I] group index of each item.
      ends: i32[E] inclusive end period of each frame; needs
        ``length - 1 <= ends`` and ``ends + horizon < L``.
      totals: the brand, category and region series (``indicator_matrices``), or None:
        sums over the items of ``x``.
      length: frame length ``T``.
      horizon: target interval length ``k``.
      target: index of the sales indicator.

    Returns:
      frames: f32[R, I, E, 4, D, T], rows are indicators and columns periods
        ``ends - T + 1 .. ends`` (eq. 6, the paper's d x T matrices).
      y: f32[R, I, E] total sales over periods ``ends + 1 .. ends + k``.
    """
    matrices = indicator_matrices(x, brand, category, totals)  # [R, I, 4, L, D]
    window = ends[:, None] - length + 1 + jnp.arange(length)  # [E, T]
    frames = matrices[:, :, :, window, :]  # [R, I, 4, E, T, D]
    frames = jnp.transpose(frames, (0, 1, 3, 2, 5, 4))
    future = ends[:, None] + 1 + jnp.arange(horizon)  # [E, k]
    y = jnp.asarray(x)[:, :, future, target].sum(-1)
    return frames, y


@dataclasses.dataclass(frozen=True)
class EndSplit:
    """Frame end points for training and testing (paper section 5.2).

    Attributes:
      train: i32[E_train] end points of training frames, each ``<= sp - k - 1``
        so that no training target overlaps the test interval.
      test: i32[E_test] end points of test frames (the last ones available).
      sp: first period of the (first) target interval that is forecast at test time.
    """

    train: np.ndarray
    test: np.ndarray
    sp: int


def split_ends(n_periods: int, *, length: int, horizon: int, n_test: int = 1) -> EndSplit:
    """Training end points slide up to the test interval; tests use the last ``n_test``.

    Raises:
      ValueError: when the panel is too short for one training frame.
    """
    last = n_periods - 1 - horizon
    test = np.arange(last - n_test + 1, last + 1)
    sp = int(test[0]) + 1
    train = np.arange(length - 1, sp - horizon)
    if len(train) == 0 or test[0] < length - 1:
        raise ValueError(
            f"{n_periods} periods are too few for frames of length {length}, "
            f"horizon {horizon} and {n_test} test end points"
        )
    return EndSplit(train=train, test=test, sp=sp)
