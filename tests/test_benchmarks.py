"""Side-by-side benchmarks run end to end at a tiny shape."""

import os
import subprocess
import sys

import pytest
from _bench import ROOT, run_quick

from experiments.benchmarks.common import format_line, parse_report


def test_parse_report_reads_numeric_lines_only():
    text = "\n".join(
        [
            "command: python x.py --quick",
            format_line("a_rate", 12.3456, "steps/s"),
            format_line("ratio", 2.0),
            "load_avg_start: 1.00 (5 min 0.50, 15 min 0.20, 2 cores)",
        ]
    )
    assert parse_report(text) == {
        "a_rate": (12.35, "steps/s"),
        "ratio": (2.0, ""),
        "load_avg_start": (1.0, "(5 min 0.50, 15 min 0.20, 2 cores)"),
    }


def test_maml_throughput_quick(tmp_path):
    pytest.importorskip("torch")
    text, report = run_quick("maml_throughput.py", tmp_path, "--repeats", "1", "--no-compile")
    lines = text.splitlines()
    assert lines[-2].startswith("speedup_vs_best_torch: ")
    assert lines[-1].startswith("time_to_200_vs_best_torch: ")
    assert report["meta_grad_max_rel_diff"][0] <= 1e-4
    for kind in ("loop", "cell_loop", "func"):
        assert report[f"meta_grad_max_rel_diff_{kind}"][0] <= 1e-4, kind
        assert report[f"meta_grad_max_abs_diff_{kind}"][0] <= 1e-5, kind
    # second order matters at this shape, so the checks above could tell it from first order
    assert report["meta_grad_second_vs_first_order_rel_diff"][0] > 1e-3
    assert report["variants_metrics_max_rel_diff"][0] <= 1e-4
    assert "torch_second_order_func_compile" not in report
    for name in (
        "dmeta_second_order_engine_vmap",
        "dmeta_second_order_fused1_map",
        "torch_second_order_loop",
        "torch_second_order_cell_loop",
        "torch_second_order_func",
        "dmeta_first_order_engine_vmap",
        "torch_first_order_loop",
    ):
        value, unit = report[name]
        assert value > 0 and unit == "steps/s", name
        warmup = report[f"{name}_warmup_s"][0]
        assert report[f"{name}_time_to_200_s"][0] == pytest.approx(
            warmup + 199 / value, rel=1e-2
        ), name
    assert report["flops_per_second_order_step"][0] > 0
    assert 0 < report["dmeta_share_of_matmul"][0] < 100
    assert report["speedup_vs_torch_cell_loop"][0] > 0
    assert report["speedup_vs_torch_loop"][0] > 0
    best = max(v for k, (v, u) in report.items() if k.startswith("torch_second") and u == "steps/s")
    dmeta = max(
        v for k, (v, u) in report.items() if k.startswith("dmeta_second") and u == "steps/s"
    )
    assert report["speedup_vs_best_torch"][0] == pytest.approx(dmeta / best, rel=1e-2)
    assert report["time_to_200_vs_best_torch"][0] > 0


def test_torch_func_peer_traces_as_one_graph():
    """Dynamo traces the torch.func meta-loss whole (no graph break, no eager fallback), so
    the torch.compile peer is compiled; only Dynamo runs here, not the slow inductor."""
    torch = pytest.importorskip("torch")
    from experiments.benchmarks import _torch_mpfn as tm

    model = tm.TorchMPFN(3, 4, cell=True)
    split = (torch.randn(2, 3, 5, 3), torch.randn(2, 3, 5, 3), torch.randn(2, 3), torch.ones(2, 3))
    loss = tm.make_func_meta_loss(model, step_size=0.1)
    explained = torch._dynamo.explain(loss)(
        dict(model.named_parameters()), {"support": split, "query": split}
    )
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    # a frame Dynamo skips (as it did for nn.GRU) leaves the graph empty, not broken
    assert explained.op_count > 100, explained.op_count


def test_maml_throughput_two_host_devices(tmp_path):
    """The data-parallel variant runs on two simulated CPU devices and computes what the
    one-device engine does; without them it is skipped, and named."""
    pytest.importorskip("torch")
    quick = ("--repeats", "1", "--peers", "func", "--no-first-order", "--no-flops")
    text, report = run_quick("maml_throughput.py", tmp_path, *quick, "--host-devices", "2")
    assert "jax ['cpu:0', 'cpu:1']" in text
    assert "torch_compile_cache: cold" in text
    assert report["dmeta_second_order_engine_vmap_2dev"][0] > 0
    assert report["variants_metrics_max_rel_diff"][0] <= 1e-4
    text, report = run_quick("maml_throughput.py", tmp_path, *quick)
    assert "variants_skipped: engine_vmap_2dev (on a CPU: --host-devices 2;" in text
    assert "dmeta_second_order_engine_vmap_2dev" not in report


@pytest.mark.slow
def test_maml_throughput_func_compile_tiny(tmp_path):
    """The torch.compile peer at the tiny shape, alone with one dmeta variant (it compiles)."""
    pytest.importorskip("torch")
    text, report = run_quick(
        "maml_throughput.py",
        tmp_path,
        *("--repeats", "1", "--tasks", "2", "--peers", "func_compile"),
        *("--variants", "engine_vmap", "--no-first-order", "--no-flops"),
    )
    assert report["meta_grad_max_rel_diff_func_compile"][0] <= 1e-4
    assert report["torch_second_order_func_compile"][0] > 0
    assert report["torch_second_order_func_compile_warmup_s"][0] > 0
    assert text.splitlines()[-1].startswith("time_to_200_vs_best_torch: ")


def test_sales_cnn_throughput_quick(tmp_path):
    pytest.importorskip("torch")
    text, report = run_quick("sales_cnn_throughput.py", tmp_path, "--repeats", "1", "--no-compile")
    lines = text.splitlines()
    assert lines[0].startswith("command: ")
    assert lines[-1].startswith("speedup_vs_best_torch: ")
    report = parse_report(text)
    assert report["dmeta_params"][0] == report["torch_params"][0] > 0
    assert report["forward_max_rel_diff"][0] <= 1e-4
    for name in ("dmeta", "torch", "dmeta_bf16"):
        per_s, unit = report[f"{name}_cpu_samples_per_s"]
        assert per_s > 0 and unit == "samples/s", name
        assert report[f"{name}_cpu_samples_per_min"][0] == pytest.approx(60 * per_s, rel=1e-3)
        assert report[f"{name}_cpu_warmup_s"][0] > 0
        assert report[f"{name}_cpu_time_to_200_s"][0] > report[f"{name}_cpu_warmup_s"][0]
    value, unit = report["paper_k2200_samples_per_min"]
    assert value == 73000 and "not measured" in unit
    assert report["speedup_vs_torch"][0] > 0
    assert report["speedup_vs_best_torch"][0] == pytest.approx(report["speedup_vs_torch"][0])


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("DMETA_TEST_TORCH_COMPILE"),
    reason="compiles for minutes on 2 cores; set DMETA_TEST_TORCH_COMPILE=1",
)
def test_sales_cnn_throughput_compile_quick(tmp_path):
    """The torch.compile peer of the Sales CNN at the tiny shape."""
    pytest.importorskip("torch")
    text, report = run_quick("sales_cnn_throughput.py", tmp_path, "--repeats", "1")
    assert report["torch_compile_forward_max_rel_diff"][0] <= 1e-4
    assert report["torch_compile_cpu_samples_per_s"][0] > 0
    best = max(report[f"{n}_cpu_samples_per_s"][0] for n in ("torch", "torch_compile"))
    assert report["speedup_vs_best_torch"][0] == pytest.approx(
        report["dmeta_cpu_samples_per_s"][0] / best, rel=1e-2
    )


@pytest.mark.slow
def test_gpu_table_quick_on_cpu(tmp_path):
    """gpu_table.py end to end at tiny shapes with torch on the CPU (the script, not a GPU)."""
    pytest.importorskip("torch")
    out = tmp_path / "gpu_table.md"
    proc = subprocess.run(
        [
            sys.executable,
            "experiments/benchmarks/gpu_table.py",
            *("--device", "cpu", "--quick", "--no-compile", "--threads", "1"),
            *("--maml-variants", "engine_vmap", "--budget", "1200", "--out", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    for run in ("maml_T32", "sales_cnn", "maml_T128"):
        assert (tmp_path / f"gpu_table_{run}.txt").exists(), run
    rows = [
        line
        for line in text.splitlines()
        if line.startswith("| MAML") or line.startswith("| Sales")
    ]
    names = {row.split("|")[2].strip() for row in rows}
    assert {"`dmeta_second_order_engine_vmap`", "`torch_second_order_func`", "`dmeta_cpu`"} <= names
    assert not any("failed" in row for row in rows), rows
    assert "speedup_vs_best_torch" in text and "## Raw outputs" in text


@pytest.mark.slow
def test_multiprocess_throughput_quick(tmp_path):
    """1 process x 1 device, 1 x 2 and 2 processes x 1 at the tiny shape: same losses, rates."""
    text, report = run_quick("multiprocess_throughput.py", tmp_path, "--repeats", "1")
    names = ("1proc_1dev", "1proc_2dev", "2proc_1dev")
    last = [line.partition(":")[0] for line in text.splitlines()[-4:]]
    assert last == [f"steps_per_s_{n}" for n in names] + ["speedup_2proc_vs_1proc"]
    assert report["loss_check_steps"][0] == 2
    assert report["loss_max_rel_diff"][0] <= report["loss_rtol"][0] == 1e-4
    for name in names:
        value, unit = report[f"steps_per_s_{name}"]
        assert value > 0 and unit == "steps/s", name
        assert report[f"{name}_warmup_s"][0] > 0, name
    assert report["config_2proc_1dev"][1].endswith("2 tasks fed per process")
    assert report["speedup_2proc_vs_1proc"][0] == pytest.approx(
        report["steps_per_s_2proc_1dev"][0] / report["steps_per_s_1proc_1dev"][0], rel=1e-2
    )


def test_kmeans_vs_sklearn_quick(tmp_path):
    text, report = run_quick("kmeans_vs_sklearn.py", tmp_path)
    assert text.splitlines()[-1].startswith("speedup_vs_sklearn: ")
    for name in ("dmeta_fit_s", "sklearn_fit_s", "dmeta_compile_s"):
        value, unit = report[name]
        assert value > 0 and unit == "s", name
    # same data, seeding scheme and stopping rule: both reach clusterings of similar inertia
    assert 0.8 < report["inertia_ratio_min"][0] <= report["inertia_ratio_max"][0] < 1.25
    assert report["speedup_vs_sklearn"][0] > 0


def test_deepwalk_vs_gensim_quick(tmp_path):
    pytest.importorskip("gensim")
    text, report = run_quick("deepwalk_vs_gensim.py", tmp_path)
    assert text.splitlines()[-1].startswith("speedup_vs_gensim: ")
    assert report["dmeta_train_s"][0] > 0 and report["gensim_train_s"][0] > 0
    # four clearly planted communities: both embeddings separate them well above chance (0.25)
    for name in ("dmeta", "gensim"):
        assert report[f"{name}_community_accuracy"][0] >= 0.75, name
        assert -1 <= report[f"{name}_silhouette"][0] <= 1, name
    assert report["speedup_vs_gensim"][0] > 0


def test_run_all_quick_writes_table(tmp_path):
    pytest.importorskip("gensim")
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [
            sys.executable,
            "experiments/benchmarks/run_all.py",
            "--quick",
            "--only",
            "kmeans_vs_sklearn,deepwalk_vs_gensim",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text().partition("## GPU")[0]  # the CPU table (a GPU adds a second one)
    for heading in ("- machine: ", "- versions: python ", "- load average", "- command: "):
        assert heading in text, heading
    assert "gensim 4" in text and "scikit-learn 1" in text
    for name, ratio in (
        ("kmeans_vs_sklearn", "speedup_vs_sklearn"),
        ("deepwalk_vs_gensim", "speedup_vs_gensim"),
    ):
        rows = [line for line in text.splitlines() if line.startswith(f"| [{name}](")]
        assert len(rows) == 1, name
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        assert cells[4] == ratio and float(cells[5]) > 0, cells
        report = parse_report((tmp_path / "benchmarks" / f"{name}.txt").read_text())
        assert float(cells[5]) == pytest.approx(report[ratio][0], rel=0.01)
    assert "maml_throughput" not in text


@pytest.mark.slow
def test_rmldp_wall_time_quick(tmp_path):
    """Both GRUs, and the fused one on two host devices, through the whole (smoke)
    experiment: same results, all timed."""
    _, report = run_quick("rmldp_wall_time.py", tmp_path, "--work", str(tmp_path / "runs"))
    assert report["results_max_rel_diff"][0] <= 1e-3
    for other in ("fused", "fused_2dev"):
        assert report[f"wall_s_{other}"][0] > 0
        assert report[f"speedup_{other}_vs_scan"][0] == pytest.approx(
            report["wall_s_scan"][0] / report[f"wall_s_{other}"][0], rel=1e-2
        )


@pytest.mark.slow
def test_cdltvs_baseline_steps_quick(tmp_path):
    """TSUR's GAT and PTUPCDR's bridge, each as before and now: the same gradients, timed."""
    text, report = run_quick("cdltvs_baseline_steps.py", tmp_path)
    assert text.splitlines()[-1].startswith("speedup_ptupcdr_folded_vs_bridge: ")
    for old, new, model in (("projected", "input_space", "tsur"), ("bridge", "folded", "ptupcdr")):
        assert report[f"grad_max_rel_diff_{model}"][0] <= 1e-5
        assert report[f"speedup_{model}_{new}_vs_{old}"][0] == pytest.approx(
            report[f"{model}_{old}_step_ms"][0] / report[f"{model}_{new}_step_ms"][0], rel=1e-2
        )


@pytest.mark.slow
def test_stmp_step_quick(tmp_path):
    """Loop and unrolled LSTMs: the same step (checked inside), both timed."""
    text, report = run_quick("stmp_step.py", tmp_path)
    assert text.splitlines()[-1].startswith("speedup_unrolled_vs_loop: ")
    assert report["one_step_params_max_rel_diff"][0] <= 1e-4
    assert report["speedup_unrolled_vs_loop"][0] == pytest.approx(
        report["loop_step_ms"][0] / report["unrolled_step_ms"][0], rel=1e-2
    )
