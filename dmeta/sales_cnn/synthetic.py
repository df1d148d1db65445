"""A synthetic sales panel with known structure (the smoke and test data of Sales CNN)."""

from __future__ import annotations

import numpy as np

from dmeta.sales_cnn.frames import SalesPanel

SYNTHETIC_INDICATORS = ("sales", "pv", "uv", "price", "promo")


def synthetic_panel(
    seed: int = 0,
    *,
    n_regions: int = 3,
    n_items: int = 24,
    n_brands: int = 6,
    n_categories: int = 3,
    n_periods: int = 120,
) -> tuple[SalesPanel, np.ndarray]:
    """Sales driven by lagged traffic with brand, category and regional effects.

    Page views follow an item level, a regional scale, a slow brand trend, a
    category cycle and irregular promotions (1-3 periods, price cut and traffic
    boost). Expected sales are ``0.4 * (0.5 pv[t-1] + 0.3 pv[t-2] + 0.2 pv[t-3])``
    times a price effect and a regional conversion rate; observed sales are Poisson.

    Returns:
      panel: indicators ``sales, pv, uv, price, promo``.
      expected: f32[R, I, L] the noise-free expected sales (ground truth).
    """
    rng = np.random.default_rng(seed)
    r, i, n = n_regions, n_items, n_periods
    t = np.arange(n)
    brand = rng.permutation(np.arange(i) % n_brands).astype(np.int32)
    category = (np.arange(i) % n_categories).astype(np.int32)
    item_level = rng.normal(3.0, 0.5, i)
    region_scale = rng.normal(0.0, 0.4, r)
    conversion = rng.uniform(0.7, 1.3, r)
    brand_trend = rng.normal(0.0, 0.006, n_brands)[:, None] * t  # [B, L]
    phase = rng.uniform(0, 2 * np.pi, n_categories)[:, None]
    category_cycle = 0.4 * np.sin(2 * np.pi * t / 26 + phase)  # [C, L]
    starts = rng.random((r, i, n)) < 0.04
    durations = rng.integers(1, 4, (r, i, n))
    promo = np.zeros((r, i, n))
    for lag in range(3):
        promo[..., lag:] = np.maximum(
            promo[..., lag:], starts[..., : n - lag] * (durations[..., : n - lag] > lag)
        )
    log_pv = (
        item_level[None, :, None]
        + region_scale[:, None, None]
        + brand_trend[brand][None]
        + category_cycle[category][None]
        + 0.8 * promo
        + rng.normal(0.0, 0.15, (r, i, n))
    )
    pv = rng.poisson(np.exp(log_pv)).astype(np.float64)
    uv = rng.binomial(pv.astype(np.int64), 0.6).astype(np.float64)
    base_price = rng.uniform(2.0, 6.0, i)[None, :, None]
    price = base_price * (1.0 - 0.25 * promo)
    lagged = np.zeros_like(pv)
    for lag, w in zip((1, 2, 3), (0.5, 0.3, 0.2), strict=True):
        lagged[..., lag:] += w * pv[..., :-lag]
    lagged[..., :3] = pv[..., :3]
    expected = 0.4 * lagged * (base_price / price) ** 1.5 * conversion[:, None, None]
    sales = rng.poisson(expected).astype(np.float64)
    x = np.stack([sales, pv, uv, price, promo], axis=-1).astype(np.float32)
    panel = SalesPanel(
        x=x,
        brand=brand,
        category=category,
        target=0,
        regions=tuple(f"region{k + 1}" for k in range(r)),
        items=tuple(f"item{k}" for k in range(i)),
        indicators=SYNTHETIC_INDICATORS,
        dates=np.datetime64("2020-01-06") + 7 * t.astype("timedelta64[D]"),
    )
    return panel, expected.astype(np.float32)
