"""The method behind benchmarks/README.md's memory and time figures, run on a tiny model: the rows
it makes have their structure and their ratios computed from the measured numbers (no timed
assertion: the values depend on the machine)."""
from __future__ import annotations

import importlib.util
import re
import sys

import pytest
from conftest import ROOT


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.e2e
def test_stream_cost_rows_give_time_against_cp_its_floor_and_peak_rss_against_the_weight_bytes(tmp_path):
    bench = load_bench()
    src = bench.models.vgg(tmp_path / "tiny.onnx", convs=(), fcs=(96,), image=4, channels_in=8,
                           external_data=True, weights_k_by_f=True)
    rows, raw = bench.stream_cost("tiny", src, tmp_path, reps=2)
    assert sorted(raw) == ["convert", "cp", "import", "weight_bytes"]
    assert raw["weight_bytes"] == (tmp_path / "tiny.onnx.data").stat().st_size == (8 * 4 * 4 * 96 + 96) * 4
    for runs in (raw["convert"], raw["cp"], raw["import"]):
        assert len(runs) == 2 and all(seconds > 0 and rss_mib > 0 for seconds, rss_mib in runs)
    time_row, floor_row, rss_row = rows
    assert [r.part for r in rows] == ["P7"] * 3 and [r.target for r in rows] == ["<= 1.2x", "-", "<= 1.2x"]
    cp_times = [t for t, _ in raw["cp"]]
    assert time_row.ratio == bench.paired_ratio([t for t, _ in raw["convert"]], cp_times)
    assert floor_row.ratio == bench.paired_ratio([i + c for (i, _), c in zip(raw["import"], cp_times)], cp_times)
    assert floor_row.ratio > 1 and floor_row.met is None
    peak = max(r for _, r in raw["convert"])
    assert rss_row.ratio == pytest.approx(peak / (raw["weight_bytes"] / (1 << 20)))
    assert rss_row.met is (rss_row.ratio <= 1.2) and time_row.met is (time_row.ratio <= 1.2)
    assert re.fullmatch(r"[\d.]+ s / [\d.]+ s", time_row.measured)
    assert re.fullmatch(r"[\d.]+ s \+ [\d.]+ s", floor_row.measured)
    assert re.fullmatch(r"[\d,]+ / [\d,]+ MiB", rss_row.measured)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx", "tiny.onnx.data"]  # OUT and the copies removed


@pytest.mark.e2e
@pytest.mark.parametrize("external", [True, False])
def test_prove_cost_rows_give_the_proofs_peak_rss_against_the_weight_bytes_and_the_session_floor(tmp_path, external):
    bench = load_bench()
    src = bench.models.vgg(tmp_path / "tiny.onnx", convs=(), fcs=(96,), image=4, channels_in=8, external_data=external)
    weights = (tmp_path / ("tiny.onnx.data" if external else "tiny.onnx")).stat().st_size
    rows, raw = bench.prove_cost("tiny", src, tmp_path, [2, 8, 4, 4])
    assert sorted(raw) == ["peak_rss_mib", "seconds", "session_peak_rss_mib", "weight_bytes"]
    assert raw["weight_bytes"] == weights and raw["seconds"] > 0
    proof_row, floor_row = rows
    assert [r.part for r in rows] == ["P8", "P8"] and [r.target for r in rows] == ["<= 2.0x", "-"]
    assert proof_row.ratio == pytest.approx(raw["peak_rss_mib"] / (weights / (1 << 20)))
    assert floor_row.ratio == pytest.approx(raw["session_peak_rss_mib"] / (weights / (1 << 20)))
    assert proof_row.met is (proof_row.ratio <= 2.0) and floor_row.met is None
    assert re.fullmatch(r"[\d,]+ / [\d,.]+ MiB", proof_row.measured)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in bench.models.files_of(src))
