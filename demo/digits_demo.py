"""Helpers for the digits heatmap demo (used by demo/run_demo.py and tests/test_demo.py).

Everything here is deterministic: fixed seeds for the data split, the synthetic
background crops, the MLP and the test canvas.

The classifier sees one 8x8 crop (pixels scaled to 0..1) and predicts 11 classes:
the digits 0..9 and class 10, "background". Background examples teach it to fire
only when a digit is centred in the window: blank crops, noise, digits moved off-centre
(often only partly visible), and windows of canvases of several digits whose
top-left corner is >= MIN_BG_SHIFT pixels (rows or columns) away from every digit.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIN = 8  # crop size the classifier is trained on
N_CLASSES = 11
BACKGROUND = 10
# Windows whose top-left corner is at least this far (rows or columns) from every
# digit are background. The brief asked for >= 3 (off-centre or partly visible);
# 1 includes that and gives one sharp peak per digit in the score map instead of
# a 3x3 plateau whose maximum (and sometimes class) is arbitrary.
MIN_BG_SHIFT = 1
OPSET = 13
SEED = 0


# --------------------------------------------------------------------------- data


def load_split(seed: int = SEED):
    """sklearn's bundled 8x8 digits, scaled to 0..1, split 75/25 (stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)  # [1797, 8, 8], 0..1
    return train_test_split(images, d.target, test_size=0.25, random_state=seed, stratify=d.target)


def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move img by (dy, dx) inside its 8x8 frame, filling with zeros."""
    out = np.zeros_like(img)
    h, w = img.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = img[ys, xs]
    return out


def _background_from_canvases(digits: np.ndarray, n: int, rng: np.random.Generator, win: int = WIN,
                              min_shift: int = MIN_BG_SHIFT, size: int = 24) -> np.ndarray:
    """n windows (win x win) of random size x size canvases of 1-3 of the digits (each win x win),
    each window >= min_shift away from every digit."""
    out = []
    while len(out) < n:
        canvas = np.zeros((size, size), np.float32)
        pos = []
        for _ in range(rng.integers(1, 4)):
            for _try in range(20):
                r, c = rng.integers(0, size - win + 1, size=2)
                if all(max(abs(r - r2), abs(c - c2)) >= win for r2, c2 in pos):
                    pos.append((int(r), int(c)))
                    canvas[r:r + win, c:c + win] = digits[rng.integers(len(digits))]
                    break
        # windows may hang over the canvas edge by up to win-1 (zero padding), so
        # digits can also be seen only partly from outside
        padded = np.pad(canvas, win - 1)
        for _ in range(8):
            r, c = rng.integers(-(win - 1), size, size=2)
            if all(max(abs(r - r2), abs(c - c2)) >= min_shift for r2, c2 in pos):
                out.append(padded[r + win - 1:r + 2 * win - 1, c + win - 1:c + 2 * win - 1])
    return np.stack(out[:n])


def make_training_set(images: np.ndarray, labels: np.ndarray, seed: int = SEED, bg_per_digit: int = 3):
    """Centred digits (their labels) and bg_per_digit (>= 2) background crops per digit."""
    assert bg_per_digit >= 2, bg_per_digit
    rng = np.random.default_rng(seed)
    xs, ys = [images], [labels]
    n = len(images)
    n_bg = bg_per_digit * n
    blank = np.zeros((n // 10, WIN, WIN), np.float32)
    noise_u = rng.uniform(0, 1, (n // 10, WIN, WIN)).astype(np.float32) * rng.uniform(0.1, 1, (n // 10, 1, 1))
    sparse = (rng.uniform(size=(n // 10, WIN, WIN)) < rng.uniform(0.05, 0.4, (n // 10, 1, 1))).astype(np.float32)
    # near misses: every digit moved off-centre by MIN_BG_SHIFT..7 pixels (so only
    # partly visible), mostly by the smallest shifts, where confusion is likeliest
    near = []
    for im in images:
        k = min(int(rng.geometric(0.5)) + MIN_BG_SHIFT - 1, WIN - 1)
        dy, dx = rng.integers(-k, k + 1, size=2)
        if rng.uniform() < 0.5:
            dy = k * rng.choice([-1, 1])
        else:
            dx = k * rng.choice([-1, 1])
        near.append(_shift(im, int(dy), int(dx)))
    near = np.stack(near)
    bg_canvas = _background_from_canvases(images, n_bg - 3 * (n // 10) - n, rng)
    bg = np.concatenate([blank, noise_u.astype(np.float32), sparse, near, bg_canvas])
    xs.append(bg)
    ys.append(np.full(len(bg), BACKGROUND))
    x = np.concatenate(xs).reshape(-1, WIN * WIN).astype(np.float32)
    y = np.concatenate(ys).astype(np.int64)
    perm = rng.permutation(len(x))
    return x[perm], y[perm]


# --------------------------------------------------------------------------- model


def train(x: np.ndarray, y: np.ndarray, hidden=(64, 32), max_iter: int = 60, seed: int = SEED):
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=hidden, activation="relu", solver="adam",
                        alpha=1e-4, batch_size=128, learning_rate_init=2e-3,
                        max_iter=max_iter, random_state=seed)
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    assert list(clf.classes_) == list(range(N_CLASSES)), clf.classes_
    return clf


def to_onnx(clf) -> onnx.ModelProto:
    """image [N,1,8,8] -> Flatten -> Gemm(transB=1) -> Relu -> ... -> Gemm -> logits [N,11]."""
    nodes, inits = [], []
    nodes.append(helper.make_node("Flatten", ["image"], ["flat"], axis=1, name="flatten"))
    cur = "flat"
    n_layers = len(clf.coefs_)
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        wname, bname = f"fc{i}.weight", f"fc{i}.bias"
        # sklearn stores W as [in, out]; Gemm with transB=1 wants B as [out, in]
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T).astype(np.float32), wname))
        inits.append(numpy_helper.from_array(b.astype(np.float32), bname))
        last = i == n_layers - 1
        out = "logits" if last else f"fc{i}"
        nodes.append(helper.make_node("Gemm", [cur, wname, bname], [out], transB=1, name=f"fc{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"relu{i}"))
            cur = f"relu{i}"
    graph = helper.make_graph(
        nodes, "digits_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, WIN, WIN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", N_CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnx-fc2conv demo")
    model.ir_version = 8  # readable by older onnxruntime releases too
    onnx.checker.check_model(model, full_check=True)
    return model


def session(model):
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def predict(sess, crops: np.ndarray) -> np.ndarray:
    """Logits for crops [N,8,8] or [N,1,8,8]."""
    x = crops.reshape(-1, 1, WIN, WIN).astype(np.float32)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@dataclass
class Trained:
    clf: object
    model: onnx.ModelProto
    digit_acc: float  # held-out digits (centred), 11-way: calling a digit "background" is wrong
    bg_acc: float  # held-out background crops made from held-out digits
    acc: float  # both together
    n_train: int
    seconds: float
    x_test: np.ndarray
    y_test: np.ndarray


def build(max_iter: int | None = None, seed: int = SEED) -> Trained:
    """Split, make the training set, train, export to ONNX and score it on held-out data."""
    if max_iter is None:
        max_iter = int(os.environ.get("FC2CONV_DEMO_MAX_ITER", "60"))
    t0 = time.perf_counter()
    x_tr, x_te, y_tr, y_te = load_split(seed)
    x, y = make_training_set(x_tr, y_tr, seed)
    clf = train(x, y, max_iter=max_iter, seed=seed)
    model = to_onnx(clf)
    seconds = time.perf_counter() - t0
    sess = session(model)
    pred_digits = predict(sess, x_te).argmax(1)
    # held-out background: same recipe as training, built only from held-out digits
    xb, yb = make_training_set(x_te, y_te, seed + 1, bg_per_digit=2)
    xb = xb[yb == BACKGROUND]
    pred_bg = predict(sess, xb).argmax(1)
    digit_acc = float((pred_digits == y_te).mean())
    bg_acc = float((pred_bg == BACKGROUND).mean())
    acc = float(((pred_digits == y_te).sum() + (pred_bg == BACKGROUND).sum()) / (len(y_te) + len(xb)))
    return Trained(clf, model, digit_acc, bg_acc, acc, len(x), seconds, x_te, y_te)


# --------------------------------------------------------------------------- canvas / maps

CANVAS_SHAPE = (32, 48)
# top-left corners of the placed digits; >= 8 apart, so no two digits overlap
PLACEMENTS = [(2, 3), (4, 19), (1, 36), (20, 9), (22, 26), (18, 40)]


def make_canvas(x_test: np.ndarray, y_test: np.ndarray, seed: int = SEED):
    """A [1,1,32,48] canvas with held-out digits of distinct classes at PLACEMENTS.

    Returns (canvas, truth) with truth = [(digit, row, col), ...], row/col being the
    top-left corner of the digit, i.e. the index of the window it fills in the map.
    """
    rng = np.random.default_rng(seed + 100)
    classes = rng.choice(10, size=len(PLACEMENTS), replace=False)
    canvas = np.zeros((1, 1) + CANVAS_SHAPE, np.float32)
    truth = []
    for cls, (r, c) in zip(classes, PLACEMENTS):
        idx = rng.choice(np.flatnonzero(y_test == cls))
        canvas[0, 0, r:r + WIN, c:c + WIN] = x_test[idx]
        truth.append((int(cls), r, c))
    return canvas, truth


def crops_of(canvas: np.ndarray) -> np.ndarray:
    """Every 8x8 window of a [1,1,H,W] canvas, row-major: [(H-7)*(W-7), 1, 8, 8]."""
    v = np.lib.stride_tricks.sliding_window_view(canvas[0, 0], (WIN, WIN))
    return np.ascontiguousarray(v.reshape(-1, 1, WIN, WIN))


def reference_map(sess, canvas: np.ndarray, batched: bool = True) -> np.ndarray:
    """The original classifier run on every 8x8 crop -> logits map [1,11,H-7,W-7].

    batched=False runs one inference per crop (the naive sliding window).
    """
    h, w = canvas.shape[2] - WIN + 1, canvas.shape[3] - WIN + 1
    crops = crops_of(canvas)
    if batched:
        logits = predict(sess, crops)
    else:
        name = sess.get_inputs()[0].name
        logits = np.concatenate([sess.run(None, {name: crops[i:i + 1]})[0] for i in range(len(crops))])
    return logits.reshape(h, w, N_CLASSES).transpose(2, 0, 1)[None].copy()


def fcn_map(sess, canvas: np.ndarray) -> np.ndarray:
    """The converted (fully convolutional) model run once on the whole canvas."""
    return sess.run(None, {sess.get_inputs()[0].name: canvas.astype(np.float32)})[0]


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def detect(logit_map: np.ndarray, threshold: float = 0.9, nms_radius: int = 3):
    """Map cells where a digit class wins with probability > threshold, after NMS.

    A candidate survives if its digit probability is the largest within
    +-nms_radius rows and columns of the map (ties go to the first in row-major order).
    Returns [(digit, row, col, prob), ...] in map cells, sorted by row then column.
    """
    p = softmax(logit_map[0], axis=0)  # [11, h, w]
    cls = p.argmax(0)
    score = np.where(cls != BACKGROUND, p.max(0), 0.0)
    h, w = score.shape
    cand = [(score[r, c], r, c) for r in range(h) for c in range(w) if score[r, c] > threshold]
    cand.sort(key=lambda t: -t[0])
    kept = []
    for s, r, c in cand:
        if all(max(abs(r - r2), abs(c - c2)) > nms_radius for _, r2, c2, _ in kept):
            kept.append((int(cls[r, c]), r, c, float(s)))
    return sorted(kept, key=lambda t: (t[1], t[2]))


def place(cells, box_of):
    """Detections in map cells -> the input boxes their windows see: [(digit, y0, x0, y1, x1, prob), ...].

    ``box_of(row, col)`` gives a cell's box (y0, x0, y1, x1): onnx_fc2conv.cell_box with the
    converted output's geometry, so no stride or window size is worked out here.
    """
    return [(digit, *box_of(r, c), prob) for digit, r, c, prob in cells]


def match(detections, truth, tol: int = 1):
    """Pair placed detections (digit, y0, x0, ...) with ground truth (digit, row, col): same class,
    top-left corner within +-tol pixels.

    Returns (correct, missed, false_positives): lists of (truth, detection) pairs,
    truths not found, detections not matched.
    """
    left = list(detections)
    correct, missed = [], []
    for t in truth:
        hit = next((d for d in left if d[0] == t[0] and abs(d[1] - t[1]) <= tol and abs(d[2] - t[2]) <= tol), None)
        if hit is None:
            missed.append(t)
        else:
            left.remove(hit)
            correct.append((t, hit))
    return correct, missed, left


def best_time(fn, repeat: int = 5, number: int = 1) -> float:
    """Best wall time of fn() in seconds over `repeat` rounds of `number` calls."""
    fn()  # warm up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def describe_fcn(model: onnx.ModelProto) -> list[str]:
    """Check the converted model has the promised shape; returns a list of problems."""
    problems = []
    ops = [n.op_type for n in model.graph.node]
    if "Flatten" in ops:
        problems.append("a Flatten is still there")
    if "Gemm" in ops or "MatMul" in ops:
        problems.append(f"FC ops left: {[o for o in ops if o in ('Gemm', 'MatMul')]}")
    kernels = []
    for n in model.graph.node:
        if n.op_type == "Conv":
            ks = [list(a.ints) for a in n.attribute if a.name == "kernel_shape"]
            kernels.append(ks[0] if ks else None)
    if not kernels or kernels[0] not in ([WIN, WIN], None):
        problems.append(f"first Conv kernel is {kernels[:1]}, expected [8, 8]")
    if any(k not in ([1, 1], None) for k in kernels[1:]):
        problems.append(f"later Conv kernels {kernels[1:]}, expected 1x1")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or any(d.HasField("dim_value") for d in dims[2:]):
        problems.append("input spatial dims are not symbolic: "
                        + str([d.dim_param or d.dim_value for d in dims]))
    return problems


def shape_str(value_info) -> str:
    dims = value_info.type.tensor_type.shape.dim
    return "[" + ", ".join(d.dim_param if d.dim_param else str(d.dim_value) for d in dims) + "]"


def map_extent(box_of, h: int, w: int) -> tuple[float, float, float, float]:
    """Where imshow draws an h x w map over the canvas (left, right, bottom, top): map cell (r, c)
    scores the window box_of(r, c), so it is drawn one stride wide at the window's centre and the
    map lines up with the canvas (pixel k spans k-0.5..k+0.5)."""
    y0, x0, y1, x1 = box_of(0, 0)
    step_y, step_x = box_of(1, 1)[0] - y0, box_of(1, 1)[1] - x0
    top, left = (y0 + y1 - 1 - step_y) / 2, (x0 + x1 - 1 - step_x) / 2
    return (left, left + w * step_x, top + h * step_y, top)


def plot(path: str, canvas: np.ndarray, logit_map: np.ndarray, truth, detections, box_of, title: str = ""):
    """Canvas with ground truth and placed detections (see place), the best-digit score map and
    per-class maps, each cell drawn at the centre of the box ``box_of(row, col)`` it sees."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    p = softmax(logit_map[0], axis=0)
    h, w = p.shape[1:]
    H, W = canvas.shape[2:]
    extent = map_extent(box_of, h, w)
    y0, x0, y1, x1 = box_of(0, 0)
    fig = plt.figure(figsize=(12, 7.6), dpi=90)
    gs = fig.add_gridspec(3, 5, height_ratios=[2.4, 1, 1], hspace=0.35, wspace=0.15)
    ax0 = fig.add_subplot(gs[0, :3])
    ax0.imshow(canvas[0, 0], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    for cls, r, c in truth:
        ax0.add_patch(Rectangle((c - 0.5, r - 0.5), WIN, WIN, fill=False, ec="tab:blue", lw=1.2, ls="--"))
        ax0.text(c - 0.4, r + WIN - 0.5, f"true {cls}", color="tab:blue", fontsize=8, va="top")
    for cls, r, c, r1, c1, prob in detections:
        ok = any(t == (cls, r, c) for t in truth)
        color = "tab:green" if ok else "tab:red"
        ax0.add_patch(Rectangle((c - 0.5, r - 0.5), c1 - c, r1 - r, fill=False, ec=color, lw=2))
        ax0.text(c - 0.4, r - 0.7, f"{cls} ({prob:.2f})", color=color, fontsize=10, weight="bold")
    ax0.set_title("canvas: dashed = placed digit, solid = detection (green right, red wrong)", fontsize=9)
    ax0.set_xlim(-0.5, W - 0.5)
    ax0.set_ylim(H + 1.5, -2.5)

    ax1 = fig.add_subplot(gs[0, 3:])
    best = p[:BACKGROUND].max(0)
    ax1.imshow(canvas[0, 0], cmap="gray_r", vmin=0, vmax=3, interpolation="nearest")
    im = ax1.imshow(np.ma.masked_less(best, 0.02), cmap="plasma", vmin=0, vmax=1, extent=extent,
                    interpolation="nearest")
    ax1.add_patch(Rectangle((extent[0], extent[3]), w, h, fill=False, ec="0.5", lw=0.8, ls=":"))
    for cls, r, c, r1, c1, _ in detections:
        ax1.annotate(str(cls), ((c + c1 - 1) / 2, (r + r1 - 1) / 2), xytext=(7, -7), textcoords="offset points",
                     color="black", fontsize=10, weight="bold")
    ax1.set_xlim(-0.5, W - 0.5)
    ax1.set_ylim(H - 0.5, -0.5)
    ax1.set_title(f"max digit probability ({h}x{w} map, dotted)\n"
                  f"one cell per {y1 - y0}x{x1 - x0} window, at the window centre", fontsize=9)
    fig.colorbar(im, ax=ax1, fraction=0.035, pad=0.02)

    for k in range(10):
        ax = fig.add_subplot(gs[1 + k // 5, k % 5])
        ax.imshow(canvas[0, 0], cmap="gray_r", vmin=0, vmax=3, interpolation="nearest")
        ax.imshow(np.ma.masked_less(p[k], 0.02), cmap="plasma", vmin=0, vmax=1, extent=extent,
                  interpolation="nearest")
        ax.set_xlim(-0.5, W - 0.5)
        ax.set_ylim(H - 0.5, -0.5)
        ax.set_title(f"P(digit {k})", fontsize=8, pad=2)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
