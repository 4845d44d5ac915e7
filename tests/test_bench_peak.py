"""`mnv2 bench` states how close each engine is to this machine's fp32 peak, measured in the same run."""

import math

import pytest

from mnv2.bench.profile import summarize
from mnv2.bench.speed import format_table, measure_matmul_peak, run_bench
from mnv2.errors import ConfigError
from mnv2.models import create_model

MODEL, RES, BATCH, THREADS = "mobilenetv2_035", 64, 2, 2


@pytest.fixture(scope="module")
def bench():
    # One tiny run shared by the tests: torch engine only, so it stays a few seconds on a busy 2-core machine.
    records = run_bench(
        model_name=MODEL, resolution=RES, batch=BATCH, rounds=1, threads=THREADS, iters_1=3, iters_n=2,
        peers=False, int8=False, only=["mnv2 torch"], peak_n=1024,
    )  # fmt: skip
    return records


def test_peak_is_positive_and_bounds_the_torch_engine(bench):
    peak = measure_matmul_peak(THREADS, n=1024, repeats=3)
    assert math.isfinite(peak) and peak > 0
    # The tiny model's convolutions are far from GEMM efficiency: a matmul on the same threads beats them.
    assert peak >= max(r.gflops for r in bench)


def test_peak_restores_thread_count():
    import torch

    before = torch.get_num_threads()
    measure_matmul_peak(1, n=256, warmup=1, repeats=3)
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError):
        measure_matmul_peak(0)


def test_records_carry_gflops_and_peak_fraction(bench):
    madds = summarize(create_model(MODEL).eval(), RES).madds
    assert {(r.engine, r.batch) for r in bench} == {("mnv2 torch", 1), ("mnv2 torch", BATCH)}
    for r in bench:
        assert r.madds_per_image == madds
        assert r.gflops == pytest.approx(2 * madds * r.images_per_s / 1e9)
        assert 0 < r.peak_fraction < 1.5
        assert r.peak_fraction == pytest.approx(r.gflops / r.peak_gflops)
        assert r.peak_threads == THREADS and r.peak_n == 1024
        d = r.to_dict()
        assert {"gflops", "peak_fraction", "peak_gflops", "madds_per_image"} <= set(d)


def test_table_prints_peak_line_and_columns(bench):
    table = format_table(bench, BATCH)
    peak = bench[0].peak_gflops
    assert f"fp32 matmul peak on {THREADS} threads: {peak:.1f} GFLOP/s, n=1024" in table
    assert "GFLOP/s" in table.splitlines()[0] and "% of peak" in table.splitlines()[0]
    row = next(line for line in table.splitlines() if line.startswith("mnv2 torch"))
    n = next(r for r in bench if r.batch == BATCH)
    assert row.split()[-2:] == [f"{n.gflops:.3g}", f"{100 * n.peak_fraction:.3g}"]
    assert "fp32-equivalent" in table


def test_task_bench_times_the_paper_detector_and_segmenter_per_engine():
    """`mnv2 bench --task detection|segmentation`: one record per engine and size, MAdds from the model summary."""
    from mnv2.bench.task_speed import format_task_table, run_task_bench

    det = run_task_bench("detection", [(128, 128)], threads=1, rounds=1, iters=2, only=["torch"])
    seg = run_task_bench("segmentation", [(64, 96)], threads=1, rounds=1, iters=2, only=["torch"])
    assert [(r.task, r.engine, r.height, r.width) for r in det + seg] == [
        ("detection", "torch", 128, 128), ("segmentation", "torch", 64, 96)]  # fmt: skip
    for r in det + seg:
        assert r.median_ms > 0 and r.madds > 0 and 0 < r.peak_fraction < 1
        assert r.gflops == pytest.approx(2 * r.madds / (r.median_ms / 1e3) / 1e9, rel=0.01)
    assert "| detection | 128x128 | torch |" in format_task_table(det)
