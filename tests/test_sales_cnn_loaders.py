"""Sales panel loaders: shared real-data samples (skipped when absent) and bad input."""

import numpy as np
import pandas as pd
import pytest

from dmeta.data.frames import DataError
from dmeta.data.spec import data_root
from dmeta.datasets import cainiao, completejourney, frat, itemlog
from dmeta.sales_cnn.frames import build_frames
from dmeta.sales_cnn.protocol import from_completejourney, from_itemlog, group_rows

CAINIAO_INDICATORS = cainiao.INDICATORS
read_cainiao_config = cainiao.read_config


def load_frat(path):
    return from_itemlog(frat.load(path))


def load_cainiao(path):
    return from_itemlog(cainiao.load(path))


def _shared(folder):
    path = data_root() / folder
    if not path.exists():
        pytest.skip(f"shared data folder {path} is absent")
    return path


def test_frat_shared():
    panel = load_frat(_shared("dunnhumby_breakfast_at_the_frat"))
    assert panel.x.shape == (77, 55, 156, 9)
    assert panel.period_days == 7.0
    assert panel.indicators[panel.target] == "units"
    assert panel.sales.sum() == pytest.approx(10_293_354, rel=1e-6)
    assert panel.category.max() + 1 == 4
    assert np.isfinite(panel.x).all()  # price NAs were repaired


def test_cainiao_sample_headerless_and_header(tmp_path):
    folder = _shared("cainiao")
    panel = load_cainiao(folder)
    assert panel.x.shape == (1, 1, 165, 25)  # 2015-07-16 .. 2015-12-27, days without a row are 0
    assert panel.regions == ("all",)
    raw = pd.read_csv(folder / "item_feature2_sample_item100038.csv", header=None)
    assert panel.sales.sum() == raw.iloc[:, -2].sum()  # qty_alipay_njhs
    header = raw.set_axis(
        [
            "date",
            "item_id",
            "cate_id",
            "cate_level_id",
            "brand_id",
            "supplier_id",
            *CAINIAO_INDICATORS,
        ],
        axis=1,
    )
    file = tmp_path / "item_store_feature2.csv"
    header.assign(store_code="3").to_csv(file, index=False)
    regional = load_cainiao(file)
    assert regional.regions == ("3",)
    np.testing.assert_array_equal(regional.x, panel.x)
    config = read_cainiao_config(folder / "config2.csv")
    assert len(config) == 5778 and (config["a"] > 0).all()


def test_cainiao_malformed_rows(tmp_path):
    lines = (_shared("cainiao") / "item_feature2_sample_item100038.csv").read_text().splitlines()
    bad = tmp_path / "item_feature2.csv"
    bad.write_text("\n".join([*lines[:3], lines[3].rsplit(",", 2)[0], *lines[4:]]) + "\n")
    with pytest.raises(
        DataError, match=r"item_feature2.csv: column 'qty_alipay_njhs', line 4: missing"
    ):
        load_cainiao(bad)
    fields = lines[5].split(",")
    fields[7] = "n/a"
    bad.write_text("\n".join([*lines[:5], ",".join(fields), *lines[6:]]) + "\n")
    with pytest.raises(DataError, match=r"item_feature2.csv: column 'pv_uv'.*line 6"):
        load_cainiao(bad)


def test_completejourney_shared():
    src = completejourney.load(_shared("cj8451_completejourney"))
    panel = from_completejourney(src, n_items=6, n_regions=2)
    assert panel.x.shape == (2, 6, 365, 6) and panel.period_days == 1.0
    assert str(panel.dates[-1])[:10] == "2017-12-31"  # the partial 2018-01-01 is cut
    # the stores with the most baskets, the products with the most baskets in them
    assert set(panel.regions) == {"367", "381"}
    departments = src.products.set_index("product_id").loc[list(panel.items), "department"]
    assert not departments.isin(["FUEL", "MISCELLANEOUS"]).any()
    baskets = panel.x[..., 4].sum((0, 2))
    assert baskets.min() > 100 and panel.sales.max() < 100  # units, not gallons


def _store_day(src, store: str, day: str) -> pd.DataFrame:
    """The transactions of ``store`` on ``day`` with their products' manufacturer, fuel and
    kiosk departments left out (as the panel's)."""
    products = src.products[["product_id", "manufacturer_id", "department"]]
    tx = src.transactions.merge(products, on="product_id")  # known products only
    on_day = tx["timestamp"].dt.floor("D") == pd.Timestamp(day)
    kept = ~tx["department"].isin(["FUEL", "MISCELLANEOUS"])
    return tx[(tx["store_id"] == store) & on_day & kept]


def test_completejourney_group_rows_are_store_totals():
    src = completejourney.load(_shared("cj8451_completejourney"))
    panel = from_completejourney(src)  # the 100 products of the 5 stores
    r, day = panel.regions.index("367"), "2017-06-15"
    t = int(np.flatnonzero(panel.dates == np.datetime64(day))[0])
    tx = _store_day(src, "367", day)
    opts = dict(length=1, horizon=1, target=0)
    args = (panel.x, panel.brand, panel.category, np.array([t]))
    rows = np.asarray(build_frames(*args, panel.totals, **opts)[0])[r, :, 0, :, :, 0]  # [I, 4, D]
    sums = np.asarray(build_frames(*args, **opts)[0])[r, :, 0, :, :, 0]
    assert (rows[:, 3, 0] == tx["quantity"].sum()).all()  # every product of the store
    assert (rows[:, 3, 4] == tx["basket_id"].nunique()).all()
    assert (rows[:, 3, 5] == tx["household_id"].nunique()).all()
    assert sums[0, 3, 0] == panel.x[r, :, t, 0].sum() < 0.5 * rows[0, 3, 0]  # not the 100's sum
    maker = src.products.set_index("product_id").loc[panel.items[0], "manufacturer_id"]
    brand = tx[tx["manufacturer_id"] == maker]
    assert rows[0, 1, 0] == brand["quantity"].sum() > sums[0, 1, 0]
    # a basket with two products of the brand counts once (the products' sum counts it twice)
    per_product = brand.groupby("product_id")["basket_id"].nunique().sum()
    assert rows[0, 1, 4] == brand["basket_id"].nunique() < per_product
    selected = group_rows(panel, "selected")
    assert selected.totals is None and group_rows(panel, "totals") is panel


def _log():
    log = pd.DataFrame(
        {
            "item_id": ["a", "a", "b", "b"],
            "region_id": ["r1", "r1", "r1", "r2"],
            "ds": ["2024-01-01", "2024-01-03", "2024-01-01", "2024-01-02"],
            "sales": [1.0, 2.0, 3.0, 4.0],
        }
    )
    attrs = pd.DataFrame({"item_id": ["a", "b"], "brand": ["x", "y"], "category": ["c", "c"]})
    return log, attrs


def _write(folder, log, attrs):
    log.to_csv(folder / "log.csv", index=False)
    attrs.to_csv(folder / "attributes.csv", index=False)
    return folder


def test_generic_log_fills_gaps(tmp_path):
    panel = from_itemlog(itemlog.load(_write(tmp_path, *_log())))
    assert panel.x.shape == (2, 2, 3, 1)
    np.testing.assert_array_equal(panel.sales[0, 0], [1.0, 0.0, 2.0])
    np.testing.assert_array_equal(panel.sales[1, 1], [0.0, 4.0, 0.0])


def test_generic_log_keeps_a_weekly_frequency(tmp_path):
    log, attrs = _log()
    log["ds"] = ["2024-01-07", "2024-01-21", "2024-01-07", "2024-01-14"]
    loaded = itemlog.load(_write(tmp_path, log, attrs))
    assert loaded.freq == "W-SUN" and from_itemlog(loaded).x.shape == (2, 2, 3, 1)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda df: df.assign(sales=["1", "x", "3", "4"]), r"log.csv: column 'sales', line 3"),
        (
            lambda df: df.assign(region_id="r1", ds=df["ds"].where(df.index != 3, "2024-01-01")),
            r"column 'ds', lines 4, 5: repeats",
        ),
        (
            lambda df: df.assign(item_id=["a", "a", "b", "z"]),
            r"column 'item_id', line 5: is an item without attributes",
        ),
        (lambda df: df.drop(columns="region_id"), r"missing column.*region_id"),
    ],
)
def test_generic_log_bad_input(tmp_path, change, match):
    log, attrs = _log()
    with pytest.raises(DataError, match=match):
        itemlog.load(_write(tmp_path, change(log), attrs))
