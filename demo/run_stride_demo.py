"""Output-stride demo: one strided classifier's map at the backbone's stride 4 and at stride 1.

1. A 16x16 digit classifier with a strided backbone (Conv 3x3 -> MaxPool 2/2 -> Conv 2x2 -> MaxPool
   2/2, total stride 4) whose filters are fixed random ones: only its head (Flatten + Gemm + Relu +
   Gemm) is trained, on sklearn's 8x8 digits upsampled to 16x16 (demo/stride_demo.py).
2. Convert it twice with onnx_fc2conv: at the backbone's stride, and with ``output_stride=1``.
3. Run both once on a 48x80 canvas of six held-out digits; check every cell against the original
   model run on the crop the geometry says it stands for, and the finer map's phase-0 cells against
   the coarse map; detect the digits, boxes placed by ``cell_box``.
4. Draw demo/out/digits_output_stride.png (--docs: also docs/digits_output_stride.png).

Run from the repository root: .venv/bin/python demo/run_stride_demo.py  (make demo runs it)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)  # the converter package, installed or not

import stride_demo as sd  # noqa: E402

OUT = os.path.join(HERE, "out")
TOL = 1e-4
FINE = 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", action="store_true", help="also write docs/digits_output_stride.png")
    args = ap.parse_args(argv)
    os.makedirs(OUT, exist_ok=True)

    print("== 1. a 16x16 classifier with a strided backbone (fixed random filters, trained head)")
    t = sd.build()
    ops = " -> ".join(n.op_type for n in t.model.graph.node)
    print(f"{ops}; head trained on {t.n_train} crops ({t.epochs} epochs) in {t.seconds:.1f} s")
    print(f"held-out accuracy: digits {t.digit_acc:.4f} ({len(t.y_test)} test images, 11-way), "
          f"background crops {t.bg_acc:.4f}")

    print("\n== 2-3. convert at the backbone's stride and at output stride 1, run both on a 48x80 canvas")
    canvas, truth = sd.make_canvas(t.x_test, t.y_test)
    scans = {}
    status = 0
    for name, output_stride in (("coarse", None), ("fine", FINE)):
        s = scans[name] = sd.scan(t.model, canvas, truth, output_stride)
        h, w = s.logit_map.shape[2:]
        print(s.report)
        print(f"{name}: windows {s.geometry.line()}; map {list(s.logit_map.shape)} "
              f"(cells inside the canvas by the geometry: {s.cells_inside[0]}x{s.cells_inside[1]})")
        ok = s.crop_max_diff <= TOL and (h, w) == s.cells_inside
        status |= not ok
        print(f"  every one of its {h * w} cells vs the original model on the cell's crop (crop_box): "
              f"max |diff| {s.crop_max_diff:.2e} ({'OK' if ok else 'MISMATCH'}, tolerance {TOL:g})")
    coarse, fine = scans["coarse"], scans["fine"]
    step = coarse.stride // fine.stride
    phase0 = float(np.abs(fine.logit_map[..., ::step, ::step] - coarse.logit_map).max())
    status |= phase0 > TOL
    print(f"stride {coarse.stride} -> {fine.stride}: the finer map's phase-0 cells [::{step}, ::{step}] vs the "
          f"coarse map: max |diff| {phase0:.2e}")

    print(f"\ndetections (p > 0.9, NMS over half a window), right = right class and box within {sd.JITTER} px:")
    print(f"  placed: {sorted(truth, key=lambda x: (x[1], x[2]))}")
    for s in scans.values():
        errors = sd.position_errors(s.correct)
        print(f"  stride {s.stride}: detected {[(c, y, x) for c, y, x, *_ in s.detections]}")
        print(f"    found {len(s.correct)}/{len(truth)}, box off by {errors} px, "
              f"{len(s.missed)} missed, {len(s.false_pos)} false")

    png = os.path.join(OUT, "digits_output_stride.png")
    panels = [(f"{label}: stride {s.stride}, {'x'.join(map(str, s.logit_map.shape[2:]))} map, "
               f"{len(s.correct)}/{len(truth)} digits found", s)
              for label, s in (("converted as is", coarse), (f"converted with output_stride={FINE}", fine))]
    sd.plot(png, canvas, panels, truth,
            title="one 16x16 classifier (stride-4 backbone, fixed filters, trained head) on a 48x80 canvas; "
                  "dashed = placed digit, solid = detection box from cell_box")
    print(f"\nwrote {os.path.relpath(png, ROOT)} ({os.path.getsize(png) / 1024:.0f} KB)")
    if args.docs:
        shutil.copyfile(png, os.path.join(ROOT, "docs", "digits_output_stride.png"))
        print("copied to docs/digits_output_stride.png")
    if status:
        print("\ndemo finished WITH PROBLEMS (see MISMATCH above)")
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
