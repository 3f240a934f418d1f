"""Digits heatmap demo: an 8x8 digit classifier becomes a fully convolutional detector.

1. Train a small MLP on sklearn's bundled 8x8 digits plus a "background" class
   (deterministic, a few seconds on 2 cores) and export it as ONNX:
   image [N,1,8,8] -> Flatten -> Gemm -> Relu -> Gemm -> Relu -> Gemm -> logits [N,11].
2. Convert it with onnx_fc2conv: the first Gemm becomes an 8x8 Conv, the others
   1x1 Convs, and the input takes any height and width.
3. Run the converted model once on a 32x48 canvas holding six held-out digits:
   out comes a [1,11,25,41] map of logits, one per 8x8 window. Check it equals
   the original classifier run on every crop, time both, and detect the digits.
4. Draw demo/out/digits_heatmap.png.

Run from the repository root: .venv/bin/python demo/run_demo.py  (or: make demo)
Set FC2CONV_DEMO_MAX_ITER to train for fewer/more epochs (default 60).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import traceback

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)  # the converter package, installed or not

import digits_demo as dd  # noqa: E402

OUT = os.path.join(HERE, "out")
TOL = 1e-4


def load_converter():
    """onnx_fc2conv's convert and cell_box, or None where the package does not import."""
    try:
        from onnx_fc2conv import cell_box, convert
    except ImportError:
        print("!! `from onnx_fc2conv import convert, cell_box` failed:")
        traceback.print_exc(limit=1, file=sys.stdout)
        return None
    return convert, cell_box


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threshold", type=float, default=0.9, help="min probability of the winning digit")
    ap.add_argument("--docs", action="store_true", help="also write docs/digits_heatmap.png")
    args = ap.parse_args(argv)
    os.makedirs(OUT, exist_ok=True)
    status = 0

    # 1-2. train and export ------------------------------------------------------------
    print("== 1. train the 8x8 classifier (10 digits + background)")
    t = dd.build()
    print(f"trained on {t.n_train} crops ({t.clf.n_iter_} epochs, MLP 64-{'-'.join(map(str, t.clf.hidden_layer_sizes))}-11) "
          f"in {t.seconds:.1f} s")
    print(f"held-out accuracy: digits {t.digit_acc:.4f} ({len(t.y_test)} test images, 11-way), "
          f"background crops {t.bg_acc:.4f}, overall {t.acc:.4f}")
    src = os.path.join(OUT, "digits_classifier.onnx")
    onnx.save(t.model, src)
    ops = " -> ".join(n.op_type for n in t.model.graph.node)
    print(f"wrote {os.path.relpath(src, ROOT)}: image {dd.shape_str(t.model.graph.input[0])} -> {ops} "
          f"-> logits {dd.shape_str(t.model.graph.output[0])}")

    # 3. convert ----------------------------------------------------------------------
    print("\n== 2. convert with onnx_fc2conv")
    converter = load_converter()
    fcn = None
    # Where each map cell looks in the canvas: the crop-by-crop map has one cell per 8x8 crop at
    # stride 1 by construction (crops_of); the converted map's boxes come from its window geometry.
    crop_grid = lambda r, c: (r, c, r + dd.WIN, c + dd.WIN)  # noqa: E731
    box_of = crop_grid
    if converter is not None:
        convert, cell_box = converter
        result = convert(os.path.relpath(src))  # relative to where it runs: a short label in the report
        print(result.report.render_text(verbose=True))
        fcn = result.model
        geometry = result.report.geometry["logits"]
        box_of = lambda r, c: cell_box(geometry, r, c)  # noqa: E731
        dst = os.path.join(OUT, "digits_fcn.onnx")
        onnx.save(fcn, dst)
        ops = " -> ".join(n.op_type for n in fcn.graph.node)
        print(f"wrote {os.path.relpath(dst, ROOT)}: {fcn.graph.input[0].name} {dd.shape_str(fcn.graph.input[0])} "
              f"-> {ops} -> {fcn.graph.output[0].name} {dd.shape_str(fcn.graph.output[0])}")
        problems = dd.describe_fcn(fcn)
        for p in problems:
            print(f"!! converted model: {p}")
        if problems:
            status = 1
    else:
        print("!! converter not available: the rest of the demo uses the crop-by-crop map of the original model")
        status = 1

    # 4. heat map on a larger canvas ---------------------------------------------------
    print("\n== 3. score map of a 32x48 canvas")
    canvas, truth = dd.make_canvas(t.x_test, t.y_test)
    orig = dd.session(t.model)
    ref = dd.reference_map(orig, canvas)  # original model, every crop (one batch)
    ref_loop = dd.reference_map(orig, canvas, batched=False)  # one run per crop
    n_crops = ref.shape[2] * ref.shape[3]
    print(f"canvas {list(canvas.shape)}: {n_crops} windows of 8x8")
    print(f"crop-by-crop map (original model): {list(ref.shape)}; "
          f"batched vs one-run-per-crop max |diff| {np.abs(ref - ref_loop).max():.2e}")
    t_loop = dd.best_time(lambda: dd.reference_map(orig, canvas, batched=False), repeat=3)
    t_batch = dd.best_time(lambda: dd.reference_map(orig, canvas), repeat=5, number=5)
    if fcn is not None:
        conv = dd.session(fcn)
        logit_map = dd.fcn_map(conv, canvas)
        print(f"converted model, one run on the whole canvas: logits map {list(logit_map.shape)}")
        if logit_map.shape != ref.shape:
            print(f"!! shape mismatch: converted {list(logit_map.shape)} vs crop-by-crop {list(ref.shape)}")
            status = 1
            logit_map, box_of = ref, crop_grid
        else:
            diff = float(np.abs(logit_map - ref).max())
            same = diff <= TOL
            print(f"converted map == crop-by-crop map of the original: max |diff| = {diff:.2e} "
                  f"({'OK' if same else 'MISMATCH'}, tolerance {TOL:g})")
            if not same:
                status = 1
            t_fcn = dd.best_time(lambda: dd.fcn_map(conv, canvas), repeat=5, number=5)
            print(f"time (onnxruntime CPU, best of runs): converted, 1 run {t_fcn * 1e3:.3f} ms | "
                  f"original, {n_crops} runs of 1 crop {t_loop * 1e3:.1f} ms ({t_loop / t_fcn:.0f}x slower) | "
                  f"original, 1 run of a batch of {n_crops} crops {t_batch * 1e3:.3f} ms ({t_batch / t_fcn:.1f}x)")
    else:
        logit_map = ref
        print(f"time (onnxruntime CPU): original, {n_crops} runs of 1 crop {t_loop * 1e3:.1f} ms | "
              f"1 run of a batch of {n_crops} crops {t_batch * 1e3:.3f} ms")

    dets = dd.place(dd.detect(logit_map, threshold=args.threshold), box_of)
    correct, missed, false_pos = dd.match(dets, truth, tol=0)
    print(f"\ndetections (digit wins with p > {args.threshold}, NMS +-3 cells), as (digit, row, col) of the "
          "box's top left:")
    print(f"  placed:   {sorted(truth, key=lambda x: (x[1], x[2]))}")
    print(f"  detected: {[(c, r, q) for c, r, q, *_ in dets]}")
    for c, r, q, r1, q1, prob in dets:
        tag = "ok" if any(tr == (c, r, q) for tr, _ in correct) else "WRONG"
        print(f"    digit {c} in box ({r:2d},{q:2d})-({r1:2d},{q1:2d}) p={prob:.4f}  {tag}")
    for m in missed:
        print(f"    missed: digit {m[0]} at ({m[1]},{m[2]})")
    print(f"found {len(correct)}/{len(truth)} placed digits with the right class and position, "
          f"{len(false_pos)} false detection(s)")

    # 5. picture -------------------------------------------------------------------------
    png = os.path.join(OUT, "digits_heatmap.png")
    which = ("the converted model, one run on the canvas" if fcn is not None
             else "the ORIGINAL model crop by crop (converter missing)")
    dd.plot(png, canvas, logit_map, truth, dets, box_of,
            title=f"an 8x8 digit classifier scanning a 32x48 canvas: {len(correct)}/{len(truth)} digits found\n"
                  f"(scores from {which})")
    print(f"\nwrote {os.path.relpath(png, ROOT)} ({os.path.getsize(png) / 1024:.0f} KB)")
    if args.docs:
        os.makedirs(os.path.join(ROOT, "docs"), exist_ok=True)
        shutil.copyfile(png, os.path.join(ROOT, "docs", "digits_heatmap.png"))
        print("copied to docs/digits_heatmap.png")
    if status:
        print("\ndemo finished WITH PROBLEMS (see the !! lines above)")
    return status


if __name__ == "__main__":
    sys.exit(main())
