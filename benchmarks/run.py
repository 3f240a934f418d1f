#!/usr/bin/env python3
"""Measure onnx-fc2conv against its performance targets and write the figures down.

    python benchmarks/run.py                 # everything (~15 min on 2 cores; needs ~12 GB of disk)
    python benchmarks/run.py --only P2,P3    # a part
    python benchmarks/run.py --no-large      # P1 without the 3 GB model

The models are generated here with random weights (benchmarks/models.py); nothing is downloaded.
Prints one table, writes it with the machine it came from into benchmarks/README.md (between the
``results`` markers), the raw figures into benchmarks/plots/results.json, and PNG plots next to it
when matplotlib is installed (``pip install .[plot]``). Generated models go to a temporary folder
under benchmarks/out/ and are deleted at the end.

P1  pass cost: ``onnx-fc2conv IN OUT --no-verify`` in a child process against the floor,
    ``onnx.load`` + ``onnx.save`` of the same model in a child process, interleaved in the same run
    (median of the per-round time ratios, peak RSS from ``wait4``). onnx-graphsurgeon's import+export round trip is shown
    for comparison. Targets: time <= 1.3x, peak RSS <= 1.2x.
P2  dense maps: one run of the converted VGG-style net (padded 3x3 convs) on an input twice the
    original size, against the original run on every window crop (stride = the net's stride, 8).
    Target >= 8x faster.
P3  latency at the original size on ONNX Runtime CPU, converted / original, batch 1 and 32, and
    with ``--fold-batch``. Targets: batch 1 <= 1.1x; batch 32 <= 1.5x with --fold-batch.
P4  ``onnx-fc2conv inspect`` is a dry run: against ``onnx.load`` of the same file in a child
    process, interleaved, on VGG16 with its FC weights stored [F,K] and [K,F]. Targets: time and
    peak RSS <= 1.1x.
P5  one FC weight over 2 GiB (540000 x 1024 float32): ``onnx-fc2conv IN OUT`` converts and proves
    it (ONNX Runtime's NCHWc transform off, see the README); time, peak RSS and the max abs error.
P6  a finer output stride: one run of the P2 net converted with ``--output-stride N`` on a 128x128
    image, against shift-and-stitch (the stride-8 conversion run on each of the (8/N)^2 shifted
    images, the maps interleaved), at N = 4, 2 and 1, in interleaved rounds (median of the per-round
    ratios); the values must be equal on every cell whose window lies inside the image by the padding
    margin. Target: the one run is faster (> 1x).
P7  external data streamed: ``onnx-fc2conv IN OUT --no-verify`` of an external-data model against
    ``cp`` of its files, interleaved, and its peak RSS against the weight bytes, on VGG16 with [K,F]
    weights and the 3 GB model with [F,K] and [K,F] weights; beside the time, its floor (starting
    Python and importing what the conversion imports, plus ``cp``). Targets: time and peak RSS <= 1.2x.
P8  the proof's memory: ``onnx-fc2conv IN OUT`` (convert and verify) in a child process, its peak RSS
    against the weight bytes, on VGG16 with external data and with its weights inline (read whole),
    and the peak RSS of an ONNX Runtime session of the converted model alone (built and run once, its
    default options), the floor a proof with ONNX Runtime's kernels cannot go under. Target <= 2.0x.
P9  a Llama-style decoder (benchmarks/models.py: hidden 2048, FFN 5632, 16 heads and 4 KV heads, vocabulary
    128256, external data) of 24 blocks in fp16 (1.6 B parameters, 3.2 GB) and 12 blocks in fp32 (4.3 GB): ``onnx-fc2conv IN OUT
    --token-layout conv2d`` in a child process, its time and peak RSS against the weight bytes,
    the layers converted (target: every one, proved at the original and two other sequence lengths)
    and the Transposes added per block. Target <= 2.0x.
"""
from __future__ import annotations

import argparse
import compileall
import datetime
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import models  # noqa: E402  (benchmarks/models.py)

README = HERE / "README.md"
PLOTS = HERE / "plots"
MARK_START, MARK_END = "<!-- results:start -->", "<!-- results:end -->"
TARGETS = {"time": 1.3, "rss": 1.2, "dense": 8.0, "batch1": 1.1, "batch32_folded": 1.5, "inspect": 1.1,
           "finer_stride": 1.0,
           "stream_time": 1.2, "stream_rss": 1.2, "prove_rss": 2.0}


@dataclass
class Row:
    """One line of the table: a figure, its target and whether it is met."""

    part: str
    what: str
    measured: str
    ratio: float
    target: str
    met: bool | None  # None: shown for comparison, no target


# ---- machine -------------------------------------------------------------------------------------

def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
        memory = f"{mem_kb / (1 << 20):.0f} GiB RAM"
    except (OSError, StopIteration):
        memory = "RAM unknown"
    import onnx
    import onnxruntime

    return (f"{cpu}, {os.cpu_count()} cores, {memory}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}")


# ---- P1: pass cost ----------------------------------------------------------------------------------

def run_child(args: list[str], allowed_exits: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """Wall time (s) and peak RSS (MiB) of one child process, which must exit with one of ``allowed_exits``."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in allowed_exits:
        raise RuntimeError(f"{' '.join(args[:4])}... failed: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return elapsed, usage.ru_maxrss / 1024


def build_in_child(builder: str, path: Path) -> Path:
    """Build a model in a child process. On Linux a child's peak RSS counts the memory of the
    process it was forked from, so the process that measures P1 must stay small."""
    subprocess.run([sys.executable, "-c", f"import models; models.{builder}({str(path)!r})"], cwd=HERE, check=True)
    return path


def roundtrip_command(src: Path, dst: Path, external: bool, graphsurgeon: bool = False) -> list[str]:
    save_extra = f", save_as_external_data=True, location={dst.name + '.data'!r}" if external else ""
    through = "m = gs.export_onnx(gs.import_onnx(m)); " if graphsurgeon else ""
    imports = "import onnx, onnx_graphsurgeon as gs" if graphsurgeon else "import onnx"
    return [sys.executable, "-c", f"{imports}; m = onnx.load({str(src)!r}); {through}"
                                  f"onnx.save(m, {str(dst)!r}{save_extra})"]


def p1(work: Path, large: bool, reps: int) -> tuple[list[Row], dict]:
    cases = [("VGG16 (553 MB, Gemm head)", "vgg16.onnx", models.vgg16, False)]
    if large:
        cases.append(("3 GB external data", "wide.onnx", models.wide_external, True))
    rows, raw = [], {}
    for label, name, build, external in cases:
        src = build_in_child(build.__name__, work / name)
        size = models.size_of(src)
        floor_out, ours_out, gs_out = work / f"floor_{name}", work / f"ours_{name}", work / f"gs_{name}"
        ours_cmd = [sys.executable, "-m", "onnx_fc2conv", str(src), str(ours_out), "--no-verify", "-q"]
        floor, ours = [], []
        for _ in range(reps):  # interleaved, so a busy moment hits both
            floor.append(run_child(roundtrip_command(src, floor_out, external)))
            _remove(floor_out)
            ours.append(run_child(ours_cmd))
            _remove(ours_out)
        graphsurgeon = run_child(roundtrip_command(src, gs_out, external, graphsurgeon=True))
        _remove(gs_out)
        _remove(src)
        ft, fr = statistics.median(t for t, _ in floor), max(r for _, r in floor)
        ot, orss = statistics.median(t for t, _ in ours), max(r for _, r in ours)
        time_ratio = paired_ratio([t for t, _ in ours], [t for t, _ in floor])
        gt, grss = graphsurgeon
        raw[name] = {"bytes": size, "floor": floor, "ours": ours, "graphsurgeon": graphsurgeon}
        rows += [
            Row("P1", f"{label}: time, convert --no-verify / load+save",
                f"{ot:.1f} s / {ft:.1f} s", time_ratio, f"<= {TARGETS['time']}x", time_ratio <= TARGETS["time"]),
            Row("P1", f"{label}: peak RSS, convert / load+save",
                f"{orss:,.0f} / {fr:,.0f} MiB", orss / fr, f"<= {TARGETS['rss']}x", orss / fr <= TARGETS["rss"]),
            Row("P1", f"{label}: onnx-graphsurgeon round trip / load+save (for comparison)",
                f"{gt:.1f} s, {grss:,.0f} MiB", gt / ft, "-", None),
        ]
    return rows, raw


def paired_ratio(measured: list[float], baseline: list[float]) -> float:
    """The median of per-round ratios: each round runs both back to back, so a busy moment on a
    shared machine hits both sides of a ratio instead of one side of a median."""
    return statistics.median(m / b for m, b in zip(measured, baseline))


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".data")):
        p.unlink(missing_ok=True)


# ---- P2 / P3: ONNX Runtime runs ----------------------------------------------------------------------

def session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def timed(fn, reps: int) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def convert_file(src: Path, dst: Path, **options):
    from onnx_fc2conv import convert

    return convert(src, dst, **options)


def p2(work: Path, reps: int) -> tuple[list[Row], dict]:
    src = models.small_vgg(work / "small_vgg.onnx")
    dst = work / "small_vgg_fcn.onnx"
    result = convert_file(src, dst)
    original, converted = session(src), session(dst)
    size, stride = 64, 8
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 2 * size, 2 * size)).astype(np.float32)
    dense = converted.run(None, {"input": image})[0]
    positions = [(i, j) for i in range(dense.shape[2]) for j in range(dense.shape[3])]
    crops = np.concatenate([image[:, :, i * stride:i * stride + size, j * stride:j * stride + size]
                            for i, j in positions])

    def one_by_one():
        for k in range(len(crops)):
            original.run(None, {"input": crops[k:k + 1]})

    t_dense = timed(lambda: converted.run(None, {"input": image}), reps)
    t_crops = timed(one_by_one, max(2, reps // 5))
    t_batched = timed(lambda: original.run(None, {"input": crops}), max(2, reps // 5))
    _remove(src)
    _remove(dst)
    n = len(positions)
    raw = {"positions": n, "dense_s": t_dense, "crops_one_by_one_s": t_crops, "crops_one_batch_s": t_batched,
           "verification_passed": bool(result.report.verification)}
    rows = [
        Row("P2", f"dense map {dense.shape[2]}x{dense.shape[3]} of a 64x64 VGG-style net on 128x128: "
                  f"{n} crops one by one / one converted run",
            f"{t_crops * 1e3:.1f} ms / {t_dense * 1e3:.2f} ms", t_crops / t_dense, f">= {TARGETS['dense']:.0f}x",
            t_crops / t_dense >= TARGETS["dense"]),
        Row("P2", f"the same, the {n} crops as one batch / one converted run (for comparison)",
            f"{t_batched * 1e3:.1f} ms / {t_dense * 1e3:.2f} ms", t_batched / t_dense, "-", None),
    ]
    return rows, raw


def p3(work: Path, reps: int) -> tuple[list[Row], dict]:
    cases = [("VGG16 classifier on its 512x7x7 map (472 MB)", models.vgg16_head, "vgg16_head", (512, 7, 7)),
             ("VGG-style net, 64x64 input", models.small_vgg, "small_vgg", (3, 64, 64))]
    rows, raw = [], {}
    for label, build, name, shape in cases:
        src = build(work / f"{name}.onnx")
        plain, folded = work / f"{name}_conv.onnx", work / f"{name}_folded.onnx"
        convert_file(src, plain, verify=False)
        verified = convert_file(src, folded, fold_batch=True)  # the folded model is proved like any other
        check = verified.report.verification
        sessions = {"original": session(src), "converted": session(plain), "folded": session(folded)}
        figures, ratios = {}, {}
        for batch in (1, 32):
            x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
            n = reps if batch == 1 else max(3, reps // 2)
            times = {key: [] for key in sessions}
            for _ in range(n):  # interleaved, so a busy moment hits every variant
                for key, s in sessions.items():
                    times[key].append(timed(lambda s=s, x=x: s.run(None, {"input": x}), 1))
            figures[batch] = {key: statistics.median(t) for key, t in times.items()}
            ratios[batch] = {key: paired_ratio(t, times["original"]) for key, t in times.items()}
        raw[name] = {"seconds": figures, "folded_verification_passed": bool(check),
                     "folded_max_abs_error": check.max_abs_error}
        for path in (src, plain, folded):
            _remove(path)
        o1, c1, f1 = (figures[1][k] for k in ("original", "converted", "folded"))
        o32, c32, f32 = (figures[32][k] for k in ("original", "converted", "folded"))
        rc1, rf1, rc32, rf32 = ratios[1]["converted"], ratios[1]["folded"], ratios[32]["converted"], ratios[32]["folded"]
        rows += [
            Row("P3", f"{label}: batch 1, converted / original", f"{c1 * 1e3:.2f} / {o1 * 1e3:.2f} ms",
                rc1, f"<= {TARGETS['batch1']}x", rc1 <= TARGETS["batch1"]),
            Row("P3", f"{label}: batch 32, converted / original", f"{c32 * 1e3:.1f} / {o32 * 1e3:.1f} ms",
                rc32, "-", None),
            Row("P3", f"{label}: batch 32, --fold-batch / original (verified: max abs error "
                      f"{check.max_abs_error:.2g})", f"{f32 * 1e3:.1f} / {o32 * 1e3:.1f} ms", rf32,
                f"<= {TARGETS['batch32_folded']}x", rf32 <= TARGETS["batch32_folded"] and bool(check)),
            Row("P3", f"{label}: batch 1, --fold-batch / original", f"{f1 * 1e3:.2f} / {o1 * 1e3:.2f} ms",
                rf1, "-", None),
        ]
    return rows, raw


# ---- P4 / P5: inspect, and a weight over 2 GiB --------------------------------------------------------

def p4(work: Path, reps: int) -> tuple[list[Row], dict]:
    cases = [("VGG16, FC weights [F,K]", "vgg16.onnx", models.vgg16),
             ("VGG16, FC weights [K,F]", "vgg16_kf.onnx", models.vgg16_k_by_f)]
    rows, raw = [], {}
    for label, name, build in cases:
        src = build_in_child(build.__name__, work / name)
        inspect_cmd = [sys.executable, "-m", "onnx_fc2conv", "inspect", str(src)]
        load_cmd = [sys.executable, "-c", f"import onnx; onnx.load({str(src)!r})"]
        loads, inspects = [], []
        for _ in range(reps):  # interleaved, so a busy moment hits both
            loads.append(run_child(load_cmd))
            inspects.append(run_child(inspect_cmd))
        _remove(src)
        time_ratio = paired_ratio([t for t, _ in inspects], [t for t, _ in loads])
        lt, lr = statistics.median(t for t, _ in loads), max(r for _, r in loads)
        it, ir = statistics.median(t for t, _ in inspects), max(r for _, r in inspects)
        raw[name] = {"onnx_load": loads, "inspect": inspects}
        rows += [
            Row("P4", f"{label}: time, inspect / onnx.load", f"{it:.2f} s / {lt:.2f} s", time_ratio,
                f"<= {TARGETS['inspect']}x", time_ratio <= TARGETS["inspect"]),
            Row("P4", f"{label}: peak RSS, inspect / onnx.load", f"{ir:,.0f} / {lr:,.0f} MiB", ir / lr,
                f"<= {TARGETS['inspect']}x", ir / lr <= TARGETS["inspect"]),
        ]
    return rows, raw


def p5(work: Path) -> tuple[list[Row], dict]:  # about 1 min, 11 GB peak RSS, 5 GB of disk
    src = build_in_child("huge_fc", work / "huge.onnx")
    out, report = work / "huge_conv.onnx", work / "huge_report.json"
    seconds, rss = run_child([sys.executable, "-m", "onnx_fc2conv", str(src), str(out), "--report-json", str(report)])
    verification = json.loads(report.read_text())["verification"]
    _remove(src)
    _remove(out)
    error = max(c["max_abs_error"] for c in verification["checks"])
    raw = {"seconds": seconds, "peak_rss_mib": rss, "passed": verification["passed"], "max_abs_error": error,
           "notes": verification["notes"]}
    return [Row("P5", "one 540000x1024 FC weight (2.2 GB): convert and prove, NCHWc off "
                      f"(passed: {verification['passed']}, max abs error {error:.2g})",
                f"{seconds:.0f} s, {rss:,.0f} MiB", 1.0, "proved", bool(verification["passed"]))], raw


# ---- output --------------------------------------------------------------------------------------------

# ---- P6: a finer output stride against shift-and-stitch ----------------------------------------------

def p6(work: Path, reps: int) -> tuple[list[Row], dict]:
    from onnx_fc2conv.geometry import cells_within
    from onnx_fc2conv.metadata import read_record
    from onnx_fc2conv.stride import crop_geometry

    src = models.small_vgg(work / "small_vgg.onnx")
    coarse_path = work / "small_vgg_fcn.onnx"
    convert_file(src, coarse_path)
    coarse = session(coarse_path)
    size, stride = 64, 8
    image = np.random.default_rng(6).standard_normal((1, 3, 2 * size, 2 * size)).astype(np.float32)
    rows, raw = [], {}
    for n in (4, 2, 1):
        fine_path = work / f"small_vgg_stride{n}.onnx"
        result = convert_file(src, fine_path, output_stride=n)
        fine = session(fine_path)
        r = stride // n

        one_run = fine.run(None, {"input": image})[0]
        interleaved = shift_and_stitch(coarse, image, n, r)
        record = read_record(onnx_load(fine_path)).output_stride
        crops = crop_geometry(record, "input", [2, 3], [size, size])
        cells = list(itertools.product(*cells_within(crops, (0, 0, *image.shape[2:]), one_run.shape[2:])))
        got = np.stack([one_run[:, :, i, j] for i, j in cells])
        want = np.stack([interleaved[:, :, i, j] for i, j in cells])
        error = float(np.abs(got - want).max())
        assert np.allclose(got, want, rtol=1e-4, atol=1e-5), f"output stride {n}: max abs {error}"
        fines, stitches = [], []
        for _ in range(max(3, reps // 4)):  # interleaved rounds: both sides of a ratio see the same load
            fines.append(timed(lambda: fine.run(None, {"input": image}), 1))  # noqa: B023 - timed in this pass
            stitches.append(timed(lambda: shift_and_stitch(coarse, image, n, r), 1))  # noqa: B023
        t_fine, t_stitch, ratio = statistics.median(fines), statistics.median(stitches), paired_ratio(stitches, fines)
        raw[f"stride_{n}"] = {"shifts": r * r, "one_run_s": t_fine, "shift_and_stitch_s": t_stitch,
                              "cells_compared": len(cells), "max_abs_diff": error, "map": list(one_run.shape[2:]),
                              "verification_passed": bool(result.report.verification)}
        rows.append(Row("P6", f"output stride {n} (the net's is 8) on 128x128, map {one_run.shape[2]}x"
                              f"{one_run.shape[3]}: shift-and-stitch, {r * r} runs / one run (equal on "
                              f"{len(cells)} cells, max abs {error:.1e})",
                        f"{t_stitch * 1e3:.1f} ms / {t_fine * 1e3:.1f} ms", ratio,
                        f"> {TARGETS['finer_stride']:.0f}x", ratio > TARGETS["finer_stride"]))
        _remove(fine_path)
    _remove(src)
    _remove(coarse_path)
    return rows, raw


def shift_and_stitch(coarse, image: np.ndarray, n: int, r: int) -> np.ndarray:
    """FCN's shift-and-stitch: the stride-S model on each image shifted by (a*n, b*n), a, b < r = S/n,
    its maps interleaved into one r times finer (cells no shift reaches stay NaN)."""
    maps = {(a, b): coarse.run(None, {"input": image[:, :, a * n:, b * n:]})[0] for a in range(r) for b in range(r)}
    full = maps[0, 0]
    out = np.full((*full.shape[:2], full.shape[2] * r, full.shape[3] * r), np.nan, full.dtype)
    for (a, b), part in maps.items():
        out[:, :, a::r, b::r][:, :, :part.shape[2], :part.shape[3]] = part
    return out


def onnx_load(path: Path):
    import onnx

    return onnx.load(str(path))


# ---- P7: external data streamed -------------------------------------------------------------------------

def p7(work: Path, large: bool, reps: int) -> tuple[list[Row], dict]:
    cases = [("VGG16 external data, FC weights [K,F]", "vgg16_kf_external.onnx", "vgg16_k_by_f_external")]
    if large:
        cases += [("3 GB external data, FC weights [F,K]", "wide.onnx", "wide_external"),
                  ("3 GB external data, FC weights [K,F]", "wide_kf.onnx", "wide_external_k_by_f")]
    rows, raw = [], {}
    for label, name, builder in cases:
        src = build_in_child(builder, work / name)
        case_rows, raw[name] = stream_cost(label, src, work, reps)
        _remove(src)
        rows += case_rows
    return rows, raw


def stream_cost(label: str, src: Path, work: Path, reps: int) -> tuple[list[Row], dict]:
    """``onnx-fc2conv IN OUT --no-verify`` of an external-data model against ``cp`` of its files,
    interleaved as in P1 (the ratio is the median of the per-round ratios), and the conversion's peak
    RSS against the bytes of IN's weights (its data file). The floor, in the same rounds: a child that
    only starts Python and imports what the conversion imports (``onnx_fc2conv.cli``: onnx, numpy,
    click, no ONNX Runtime), plus the round's ``cp``, the least a conversion that moves the bytes does."""
    weight_bytes = models.files_of(src)[1].stat().st_size
    out, copies = work / f"streamed_{src.name}", work / f"cp_{src.stem}"
    convert_cmd = [sys.executable, "-m", "onnx_fc2conv", str(src), str(out), "--no-verify", "-q"]
    cp_cmd = ["cp", *(str(p) for p in models.files_of(src)), str(copies)]
    import_cmd = [sys.executable, "-c", "import onnx_fc2conv.cli"]
    ours, cps, imports = [], [], []
    for _ in range(reps):
        copies.mkdir()
        cps.append(run_child(cp_cmd))
        shutil.rmtree(copies)
        ours.append(run_child(convert_cmd))
        _remove(out)
        imports.append(run_child(import_cmd))
    cp_times = [t for t, _ in cps]
    time_ratio = paired_ratio([t for t, _ in ours], cp_times)
    floor_ratio = paired_ratio([i + c for (i, _), c in zip(imports, cp_times)], cp_times)
    ot, ct = statistics.median(t for t, _ in ours), statistics.median(cp_times)
    it = statistics.median(t for t, _ in imports)
    peak, weight_mib = max(r for _, r in ours), weight_bytes / (1 << 20)
    rss_ratio = peak / weight_mib
    return [
        Row("P7", f"{label}: time, convert --no-verify / cp of its files", f"{ot:.1f} s / {ct:.1f} s", time_ratio,
            f"<= {TARGETS['stream_time']}x", time_ratio <= TARGETS["stream_time"]),
        Row("P7", f"{label}: time, the floor (Python importing onnx_fc2conv.cli, then cp) / cp",
            f"{it:.1f} s + {ct:.1f} s", floor_ratio, "-", None),
        Row("P7", f"{label}: peak RSS, convert --no-verify / weight bytes", f"{peak:,.0f} / {weight_mib:,.0f} MiB",
            rss_ratio, f"<= {TARGETS['stream_rss']}x", rss_ratio <= TARGETS["stream_rss"]),
    ], {"weight_bytes": weight_bytes, "convert": ours, "cp": cps, "import": imports}


# ---- P8: the proof's memory ------------------------------------------------------------------------------

def p8(work: Path) -> tuple[list[Row], dict]:
    cases = [("VGG16 external data", "vgg16_external.onnx", "vgg16", True),
             ("VGG16 weights inline", "vgg16.onnx", "vgg16", False)]
    rows, raw = [], {}
    for label, name, builder, external in cases:
        src = work / name
        subprocess.run([sys.executable, "-c", f"import models; models.{builder}({str(src)!r}, external_data={external})"],
                       cwd=HERE, check=True)
        case_rows, raw[name] = prove_cost(label, src, work, [2, 3, 224, 224])
        _remove(src)
        rows += case_rows
    return rows, raw


SESSION_OF = ("import sys, numpy as np, onnxruntime as ort; s = ort.InferenceSession(sys.argv[1]); "
              "s.run(None, {s.get_inputs()[0].name: np.zeros([int(d) for d in sys.argv[2:]], np.float32)})")


def prove_cost(label: str, src: Path, work: Path, input_shape: list[int]) -> tuple[list[Row], dict]:
    """``onnx-fc2conv IN OUT`` (converted and proved) in a child process: its time and peak RSS against
    the bytes of IN's weights (its data file, or the whole file where they are inline), and the peak
    RSS of a child that builds an ONNX Runtime session of OUT and runs it once on ``input_shape``
    (the floor)."""
    files = models.files_of(src)
    weight_bytes = files[-1].stat().st_size
    out = work / f"proved_{src.name}"
    seconds, peak = run_child([sys.executable, "-m", "onnx_fc2conv", str(src), str(out), "-q"])
    _, session_peak = run_child([sys.executable, "-c", SESSION_OF, str(out), *map(str, input_shape)])
    _remove(out)
    weight_mib = weight_bytes / (1 << 20)
    ratio = peak / weight_mib
    return [
        Row("P8", f"{label}: peak RSS, convert + verify / weight bytes ({seconds:.1f} s)",
            f"{peak:,.0f} / {weight_mib:,.0f} MiB", ratio, f"<= {TARGETS['prove_rss']}x", ratio <= TARGETS["prove_rss"]),
        Row("P8", f"{label}: peak RSS, one ORT session of OUT / weight bytes (the floor)",
            f"{session_peak:,.0f} / {weight_mib:,.0f} MiB", session_peak / weight_mib, "-", None),
    ], {"weight_bytes": weight_bytes, "seconds": seconds, "peak_rss_mib": peak, "session_peak_rss_mib": session_peak}


# ---- P9: a Llama-style decoder -------------------------------------------------------------------------

def p9(work: Path) -> tuple[list[Row], dict]:
    rows, raw = [], {}
    # fp16 at 24 blocks (3.2 GB), the decoder, and fp32 at half the blocks (4.3 GB), its alternative
    # for a CPU without fp16 kernels (ONNX Runtime's casts fp16 MatMul and Conv to fp32 here)
    for layers, dtype in ((24, "float16"), (12, "float32")):
        config = {**models.LLAMA_1_5B, "layers": layers}
        src = work / f"llama_{layers}_{dtype}.onnx"
        subprocess.run([sys.executable, "-c", f"import models; models.llama_decoder({str(src)!r}, dtype={dtype!r}, "
                                              f"**{config!r})"], cwd=HERE, check=True)
        billions = models.llama_parameters(**config) / 1e9
        label = f"Llama-style decoder, {layers} blocks, {billions:.2f} B parameters, {dtype}"
        case_rows, raw[src.stem] = decoder_cost(label, src, work, layers)
        _remove(src)
        rows += case_rows
    return rows, raw


def decoder_cost(label: str, src: Path, work: Path, layers: int) -> tuple[list[Row], dict]:
    """``onnx-fc2conv IN OUT --token-layout conv2d`` (converted and proved) of a decoder in a child
    process: its time, peak RSS against the weight bytes, the layers converted (7 a block and the LM
    head), the Transposes added per block and the sequence lengths the proof covered."""
    weight_bytes = models.files_of(src)[-1].stat().st_size
    out, report_file = work / f"proved_{src.name}", work / "decoder_report.json"
    # A failed proof exits 1 and writes no OUT, but its report is written: the row says what it needed.
    seconds, peak = run_child([sys.executable, "-m", "onnx_fc2conv", str(src), str(out), "--token-layout", "conv2d",
                               "--report-json", str(report_file), "-q"], allowed_exits=(0, 1))
    _remove(out)
    report = json.loads(report_file.read_text())
    converted = sum(n["status"] == "converted" for n in report["nodes"])
    per_block = (report["transposes_added"] - sum(r["transposes_added"] for r in report["runs"]
                                                 if r["converted"] == ["/lm_head/MatMul"])) / layers
    verification = report["verification"]
    lengths = sorted({int(c["check"].split()[-1]) for c in verification["checks"]
                      if c["check"].startswith("sequence length")})
    error = max(c["max_abs_error"] for c in verification["checks"])
    needed = max(c["needed_atol"] for c in verification["checks"])
    # the share of its atol (rounding's allowance where that is larger) the closest check used
    used = max((c["needed_atol"] / c["allowed_atol"] for c in verification["checks"] if c["allowed_atol"] > 0),
               default=math.inf)
    weight_mib = weight_bytes / (1 << 20)
    ratio = peak / weight_mib
    proved = bool(verification["passed"]) and len(lengths) == 2 and converted == 7 * layers + 1
    raw = {"weight_bytes": weight_bytes, "seconds": seconds, "peak_rss_mib": peak, "converted": converted,
           "layers": len(report["nodes"]), "transposes_per_block": per_block, "passed": verification["passed"],
           "sequence_lengths": lengths, "max_abs_error": error, "needed_atol": needed, "atol": verification["atol"],
           "rtol": verification["rtol"], "allowance_used": used, "skipped": verification["skipped"]}
    return [
        Row("P9", f"{label}: convert + prove, layers converted / MatMul layers ("
                  f"{'proved' if verification['passed'] else 'NOT proved'} at the original length and "
                  f"{', '.join(map(str, lengths))}; max abs error {error:.2g}, the closest check used {used:.0%} "
                  f"of its atol, rounding's allowance where above {verification['atol']:g})",
            f"{converted} / {len(report['nodes'])} in {seconds:.0f} s", converted / len(report["nodes"]),
            "every layer, proved", proved),
        Row("P9", f"{label}: peak RSS, convert + prove / weight bytes", f"{peak:,.0f} / {weight_mib:,.0f} MiB", ratio,
            f"<= {TARGETS['prove_rss']}x", ratio <= TARGETS["prove_rss"]),
        Row("P9", f"{label}: Transposes added per block (the LM head's 2 aside)", f"{per_block:g}", per_block, "-",
            None),
    ], raw


def keep_parts_not_run(rows: list[Row], raw: dict, parts: set[str], when: str) -> tuple[list[Row], dict, str]:
    """This run's rows and figures, plus those of the parts it did not run from the last results
    (``--only``), so the table and results.json always hold every part; the returned ``when`` says
    which parts were measured when (kept per part in results.json under "measured")."""
    previous_file = PLOTS / "results.json"
    previous = json.loads(previous_file.read_text()) if previous_file.exists() else {}
    kept = [Row(**r) for r in previous.get("rows", []) if r["part"] not in parts]
    kept_parts = sorted({r.part for r in kept})
    measured = {**{p: previous.get("measured", {}).get(p, previous.get("when", "earlier")) for p in kept_parts},
                **{p: when for p in sorted(parts)}}
    by_time: dict[str, list[str]] = {}
    for part, at in measured.items():
        by_time.setdefault(at, []).append(part)
    when = "; ".join(f"{', '.join(sorted(ps))} {at}" for at, ps in sorted(by_time.items(), reverse=True))
    raw = {**{p: previous[p] for p in kept_parts if p in previous}, **raw, "when": when, "measured": measured}
    return sorted(kept + rows, key=lambda r: r.part), raw, when


def table(rows: list[Row]) -> str:
    lines = ["| part | what | measured | ratio | target | met |", "|---|---|---|---:|---|---|"]
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.part} | {r.what} | {r.measured} | {r.ratio:.2f}x | {r.target} | {met} |")
    return "\n".join(lines)


def write_readme(rows: list[Row], where: str, when: str, load: str) -> None:
    text = README.read_text()
    block = (f"{MARK_START}\nMeasured {when} on: {where}. {load}\n\n{table(rows)}\n{MARK_END}")
    start, end = text.index(MARK_START), text.index(MARK_END) + len(MARK_END)
    README.write_text(text[:start] + block + text[end:])


def plot(rows: list[Row]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install .[plot])", file=sys.stderr)
        return []
    written = []
    for part, title in (("P1", "P1 pass cost, / floor (lower is better)"),
                        ("P2", "P2 dense map speed-up (higher is better)"),
                        ("P3", "P3 latency, converted / original (lower is better)"),
                        ("P4", "P4 inspect, / onnx.load (lower is better)")):
        chosen = [r for r in rows if r.part == part]
        if not chosen:
            continue
        fig, ax = plt.subplots(figsize=(9, 0.55 * len(chosen) + 1.2))
        colors = ["tab:gray" if r.met is None else ("tab:green" if r.met else "tab:red") for r in chosen]
        ax.barh(range(len(chosen)), [r.ratio for r in chosen], color=colors)
        ax.set_yticks(range(len(chosen)), [_short(r.what) for r in chosen], fontsize=8)
        ax.invert_yaxis()
        for i, r in enumerate(chosen):
            if r.target != "-":
                ax.plot([float(r.target.split()[1].rstrip("x"))] * 2, [i - 0.4, i + 0.4], color="black")
        ax.set_xlabel("ratio (black line: target; green met, red missed, grey no target)")
        ax.set_title(title)
        fig.tight_layout()
        path = PLOTS / f"{part.lower()}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _short(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="P1,P2,P3,P4,P5,P6,P7,P8,P9", help="comma-separated parts to run (default: all)")
    parser.add_argument("--no-large", action="store_true", help="P1 and P7 without the 3 GB external-data models")
    parser.add_argument("--reps", type=int, default=20, help="timing repetitions for P2/P3 (default 20)")
    parser.add_argument("--p1-reps", type=int, default=3, help="interleaved runs per P1 model (default 3)")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite benchmarks/README.md")
    args = parser.parse_args()
    parts = {p.strip().upper() for p in args.only.split(",")}
    need = (12 if parts & {"P1", "P7"} and not args.no_large else 6 if parts & {"P5", "P9"} else 3) << 30
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    free = shutil.disk_usage(out).free
    if free < need:
        print(f"benchmarks: need {need >> 30} GB free in {out}, have {free / (1 << 30):.1f} GB", file=sys.stderr)
        return 2
    # Child processes import the package as an installed one does: from bytecode, which pip writes at
    # install time (an editable install, or PYTHONDONTWRITEBYTECODE=1, would compile it in every child).
    compileall.compile_dir(str(ROOT / "onnx_fc2conv"), quiet=1)
    where, when = machine(), datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"machine: {where}", flush=True)
    load_start = os.getloadavg()[1]
    rows, raw = [], {"machine": where, "when": when}
    with tempfile.TemporaryDirectory(dir=out, prefix="run-") as tmp:
        work = Path(tmp)
        for part, fn in (("P1", lambda: p1(work, not args.no_large, args.p1_reps)),
                         ("P2", lambda: p2(work, args.reps)), ("P3", lambda: p3(work, args.reps)),
                         ("P4", lambda: p4(work, args.p1_reps)), ("P5", lambda: p5(work)),
                         ("P6", lambda: p6(work, args.reps)),
                         ("P7", lambda: p7(work, not args.no_large, args.p1_reps)), ("P8", lambda: p8(work)),
                         ("P9", lambda: p9(work))):
            if part in parts:
                start = time.perf_counter()
                part_rows, raw[part] = fn()
                rows += part_rows
                print(f"{part} done in {time.perf_counter() - start:.0f} s", flush=True)
    load = (f"Load average (5 min) {load_start:.1f} at the start, {os.getloadavg()[1]:.1f} at the end: "
            "other processes sharing the cores inflate absolute times; the ratios come from interleaved runs.")
    raw["load"] = load
    print(load)
    print(table(rows))
    PLOTS.mkdir(exist_ok=True)
    rows, raw, when = keep_parts_not_run(rows, raw, parts, when)
    (PLOTS / "results.json").write_text(json.dumps({**raw, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    for path in plot(rows):
        print(f"wrote {path.relative_to(ROOT)}")
    if not args.no_readme:
        write_readme(rows, where, when, load)
        print(f"wrote the table into {README.relative_to(ROOT)}")
    return 0 if all(r.met is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
