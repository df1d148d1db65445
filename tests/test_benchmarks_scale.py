"""Scale, memory and profiling benchmarks (issue 8) at their ``--quick`` sizes.

Kept apart from ``test_benchmarks.py`` so that the two files run on different pytest workers.
"""

import pytest
from _bench import run_quick

from experiments.benchmarks.common import parse_report

# Whole benchmark scripts at quick size: `make test-slow` (not in `make test`, which stays
# under 10 minutes on 2 cores).
pytestmark = pytest.mark.slow


def test_rmldp_segments_quick(tmp_path):
    text, report = run_quick("rmldp_segments.py", tmp_path, "--repeats", "1")
    lines = text.splitlines()
    assert lines[0].startswith("command: ")
    assert lines[-3].startswith("per_segment_cost_ratio_4_vs_2_vmap: ")
    assert lines[-2].startswith("per_segment_cost_ratio_4_vs_2_map: ")
    assert lines[-1].startswith("per_segment_cost_ratio_4_vs_2_map_remat: ")
    assert "skipped: none" in lines
    report = parse_report(text)
    rows = [line.strip("|").split("|") for line in lines if line[:3] in ("| 2", "| 4")]
    modes = ("map", "map_remat", "vmap")
    assert sorted((int(r[0]), r[1].strip()) for r in rows) == [
        (s, m) for s in (2, 4) for m in modes
    ]
    for r in rows:
        seconds, per_s, ms, _, traces, compiles = (float(c) for c in r[2:8])
        assert traces == compiles == 1
        assert per_s == pytest.approx(int(r[0]) / seconds, rel=1e-3)
        assert ms == pytest.approx(1e3 * seconds / int(r[0]), rel=1e-3)
    for size in (2, 4):
        assert report[f"T{size}_vmap_vs_map_loss_rel_diff"][0] <= 1e-5
        assert report[f"T{size}_map_remat_vs_map_loss_rel_diff"][0] <= 1e-5
        for mode in modes:
            value, unit = report[f"{mode}_T{size}_segments_per_s"]
            assert value > 0 and unit == "segments/s"
    for mode in modes:
        assert report[f"per_segment_cost_ratio_4_vs_2_{mode}"][0] > 0


def test_memory_inner_steps_quick(tmp_path):
    text, report = run_quick("memory_inner_steps.py", tmp_path)
    assert text.splitlines()[-1].startswith("remat_memory_ratio_at_3: ")
    for n in (1, 3):
        for variant in ("plain", "remat"):
            assert report[f"steps{n}_{variant}_xla_peak_mib"][0] > 0
            assert report[f"steps{n}_{variant}_step_s"][0] > 0
    # without remat memory grows with the inner steps; with it, it does not grow as fast
    assert report["steps3_plain_xla_peak_mib"][0] > report["steps1_plain_xla_peak_mib"][0]
    assert report["remat_memory_ratio_at_3"][0] < 1.0


def test_scale_throughput_quick(tmp_path):
    text, report = run_quick("scale_throughput.py", tmp_path)
    for users in (500, 1000):
        for name in ("sequences_users_per_s", "encode_sequences_per_s", "train_sequences_per_s"):
            assert report[f"c2m_{users}_{name}"][0] > 0, name
        assert report[f"c2m_{users}_kmeans_points_per_s"][0] > 0
        assert report[f"c2m_{users}_peak_rss_mib"][0] > 0
    # frames f32[R, I, E, 4, D, T]: 100 pairs x 4 end points x 4 matrices x 5 indicators x T 8
    assert report["frames_100_frames_bytes_mib"][0] == pytest.approx(
        100 * 4 * 4 * 5 * 8 * 4 / 2**20, rel=1e-3
    )
    assert report["frames_100_xla_peak_mib"][0] >= report["frames_100_frames_bytes_mib"][0]
    assert "| item-region pairs |" in text


def test_profile_sales_cnn_quick(tmp_path):
    _, report = run_quick("profile_sales_cnn.py", tmp_path)
    for order in (1, 2, 3):
        assert report[f"order{order}_forward_backward_s"][0] > 0
        assert report[f"order{order}_gflops_per_s"][0] > 0
        # the grouped-convolution layout computes the same thing as dmeta's im2col
        assert report[f"order{order}_grouped_vs_im2col_max_abs_diff"][0] < 1e-4
    for name in ("full_forward_backward_s", "adamax_update_s", "dense_forward_backward_s"):
        assert report[name][0] > 0, name


def test_profile_maml_quick(tmp_path):
    _, report = run_quick("profile_maml.py", tmp_path)
    for name in (
        "matmul_square_gflops",
        "matmul_gru_shared_weights_gflops",
        "matmul_gru_per_task_weights_gflops",
        "forward_gflops",
    ):
        assert report[name][0] > 0, name
    # a second-order step costs more than the forward pass and the first-order step
    assert report["second_order_over_forward"][0] > 1
    assert report["second_order_s"][0] > 0 and report["first_order_s"][0] > 0
    # every meta-step variant (GRU implementations, library rewriters) computes the same step
    for variant in ("fused", "fused_xnn_dot", "fused_ynn_dot", "fused_onednn_dot"):
        assert report[f"meta_step_{variant}_metrics_rel_diff"][0] < 1e-5, variant
        assert report[f"meta_step_{variant}_steps_per_s"][0] > 0, variant
