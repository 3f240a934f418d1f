"""Helpers for the output-stride demo (used by demo/run_stride_demo.py and tests/test_demo.py).

The digits demo's classifier has no strides: its map steps by one pixel already. This one has a
strided backbone, so its converted map steps by 4 pixels, and ``output_stride=1`` makes it step by 1:

    image [N,1,16,16] -> Conv 3x3 (8) -> Relu -> MaxPool 2/2 -> Conv 2x2 (16) -> Relu -> MaxPool 2/2
                      -> Flatten [N,144] -> Gemm -> Relu -> Gemm -> logits [N,11]

Sizes 16 -> 14 -> 7 -> 6 -> 3: no padding, and no pooling drops a row, so one cell's window is the
whole 16x16 crop and cell (i, j) equals the classifier run on the crop at (4i, 4j) (1i, 1j finer).

The backbone's features are fixed (random filters from a seeded generator, never trained); only the
head (Flatten + Gemm + Relu + Gemm, sklearn's MLPClassifier) is trained, on the backbone's features
of the 8x8 digits upsampled to 16x16, digits moved by up to JITTER pixels counting as the digit and
windows >= MIN_BG_SHIFT pixels from every digit as class 10, background. Everything is seeded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import digits_demo as dd

if TYPE_CHECKING:
    from onnx_fc2conv import Geometry
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIN = 16  # crop size the classifier sees: the 8x8 digits upsampled 2x
UPSAMPLE = WIN // dd.WIN
JITTER = 2  # a digit moved by up to this many pixels is still that digit (a detection this close is right)
MIN_BG_SHIFT = 3  # windows this far (rows or columns) from every digit are background
CHANNELS = (8, 16)
KERNELS = (3, 2)
FEATURE_SIZE = 3  # the feature map of one 16x16 crop is 16 x 3 x 3
HIDDEN = 64
OPSET = 13
SEED = 0


def upsample(images: np.ndarray) -> np.ndarray:
    """[N, 8, 8] digits -> [N, 16, 16], each pixel repeated 2x2."""
    return np.kron(images, np.ones((UPSAMPLE, UPSAMPLE), np.float32)).astype(np.float32)


def make_training_set(images: np.ndarray, labels: np.ndarray, seed: int = SEED):
    """16x16 crops and labels: each digit centred and moved by up to JITTER pixels (its label), and
    background: blank, noise, each digit moved by MIN_BG_SHIFT..15 pixels, windows of multi-digit
    canvases >= MIN_BG_SHIFT from every digit."""
    rng = np.random.default_rng(seed)
    n = len(images)
    jittered = [dd._shift(im, *(int(v) for v in rng.integers(-JITTER, JITTER + 1, size=2))) for im in images]
    near = []
    for im in images:
        k = int(rng.integers(MIN_BG_SHIFT, WIN))
        dy, dx = (int(v) for v in rng.integers(-k, k + 1, size=2))
        dy, dx = (k * int(rng.choice([-1, 1])), dx) if rng.uniform() < 0.5 else (dy, k * int(rng.choice([-1, 1])))
        near.append(dd._shift(im, dy, dx))
    noise = rng.uniform(0, 1, (n // 10, WIN, WIN)) * rng.uniform(0.1, 1, (n // 10, 1, 1))
    canvases = dd._background_from_canvases(images, 2 * n, rng, win=WIN, min_shift=MIN_BG_SHIFT, size=48)
    bg = np.concatenate([np.zeros((n // 10, WIN, WIN)), noise, np.stack(near), canvases]).astype(np.float32)
    x = np.concatenate([images, np.stack(jittered), bg])
    y = np.concatenate([labels, labels, np.full(len(bg), dd.BACKGROUND)]).astype(np.int64)
    perm = rng.permutation(len(x))
    return x[perm, None], y[perm]


def backbone_weights(seed: int = SEED) -> list[np.ndarray]:
    """The fixed filters: zero-mean random kernels (so a blank window has no response but the
    bias's), biases slightly negative so a Relu keeps only clear responses."""
    rng = np.random.default_rng(seed + 7)
    weights, c_in = [], 1
    for c_out, k in zip(CHANNELS, KERNELS):
        w = rng.normal(0, 1, (c_out, c_in, k, k))
        w -= w.mean(axis=(1, 2, 3), keepdims=True)
        w /= np.sqrt((w ** 2).sum(axis=(1, 2, 3), keepdims=True))
        weights += [w.astype(np.float32), np.full(c_out, -0.05, np.float32)]
        c_in = c_out
    return weights


def to_onnx(backbone: list[np.ndarray], head=None) -> onnx.ModelProto:
    """The backbone, then the head (an MLPClassifier: Flatten + Gemm + Relu + Gemm) when given; without
    it the graph ends at the flattened features [N, 144]."""
    nodes, inits, cur = [], [], "image"
    for i, (w, b) in enumerate(zip(backbone[::2], backbone[1::2])):
        inits += [numpy_helper.from_array(w, f"conv{i}.weight"), numpy_helper.from_array(b, f"conv{i}.bias")]
        nodes += [helper.make_node("Conv", [cur, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}"],
                                   kernel_shape=list(w.shape[2:]), name=f"conv{i}"),
                  helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"),
                  helper.make_node("MaxPool", [f"relu{i}"], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2],
                                   name=f"pool{i}")]
        cur = f"pool{i}"
    nodes.append(helper.make_node("Flatten", [cur], ["features"], axis=1, name="flatten"))
    out, width = "features", CHANNELS[-1] * FEATURE_SIZE ** 2
    if head is not None:
        last = len(head.coefs_) - 1
        for i, (w, b) in enumerate(zip(head.coefs_, head.intercepts_)):
            inits += [numpy_helper.from_array(np.ascontiguousarray(w.T).astype(np.float32), f"fc{i}.weight"),
                      numpy_helper.from_array(b.astype(np.float32), f"fc{i}.bias")]
            gemm = "logits" if i == last else f"fc{i}"
            nodes.append(helper.make_node("Gemm", [out, f"fc{i}.weight", f"fc{i}.bias"], [gemm], transB=1,
                                          name=f"fc{i}"))
            out = gemm
            if i != last:
                nodes.append(helper.make_node("Relu", [gemm], [f"fc_relu{i}"], name=f"fc_relu{i}"))
                out = f"fc_relu{i}"
        width = dd.N_CLASSES
    graph = helper.make_graph(nodes, "digits_strided_classifier" if head is not None else "digits_backbone",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, WIN, WIN])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnx-fc2conv demo")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def run(sess, x: np.ndarray) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)})[0]


@dataclass
class Trained:
    model: onnx.ModelProto
    digit_acc: float  # held-out digits, centred, 11-way
    bg_acc: float  # held-out background crops made from held-out digits
    n_train: int
    epochs: int
    seconds: float
    x_test: np.ndarray  # held-out digits, 16x16
    y_test: np.ndarray


def build(max_iter: int = 80, seed: int = SEED) -> Trained:
    """Split, compute the fixed backbone's features with ONNX Runtime, train the head on them, export."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    t0 = time.perf_counter()
    x_tr, x_te, y_tr, y_te = dd.load_split(seed)
    x_tr, x_te = upsample(x_tr), upsample(x_te)
    backbone = backbone_weights(seed)
    features = dd.session(to_onnx(backbone))
    x, y = make_training_set(x_tr, y_tr, seed)
    head = MLPClassifier(hidden_layer_sizes=(HIDDEN,), alpha=1e-2, batch_size=128, learning_rate_init=2e-3,
                         max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        head.fit(run(features, x), y)
    model = to_onnx(backbone, head)
    seconds = time.perf_counter() - t0
    sess = dd.session(model)
    xb, yb = make_training_set(x_te, y_te, seed + 1)
    digit_acc = float((run(sess, x_te[:, None]).argmax(1) == y_te).mean())
    bg_acc = float((run(sess, xb[yb == dd.BACKGROUND]).argmax(1) == dd.BACKGROUND).mean())
    return Trained(model, digit_acc, bg_acc, len(x), head.n_iter_, seconds, x_te, y_te)


# --------------------------------------------------------------------------- canvas / maps

CANVAS_SHAPE = (48, 80)
# top-left corners, >= 16 apart, at every phase modulo the backbone's stride 4 (rows 2 1 1 1 2 3,
# columns 3 2 1 1 1 2), so most lie between the cells of the stride-4 map
PLACEMENTS = [(2, 3), (5, 22), (1, 45), (29, 9), (30, 33), (27, 58)]


def make_canvas(x_test: np.ndarray, y_test: np.ndarray, seed: int = SEED):
    """A [1,1,48,80] canvas with held-out 16x16 digits of distinct classes at PLACEMENTS; returns
    (canvas, truth) with truth = [(digit, row, col), ...] of each digit's top-left corner."""
    rng = np.random.default_rng(seed + 100)
    canvas = np.zeros((1, 1) + CANVAS_SHAPE, np.float32)
    truth = []
    for cls, (r, c) in zip(rng.choice(10, size=len(PLACEMENTS), replace=False), PLACEMENTS):
        canvas[0, 0, r:r + WIN, c:c + WIN] = x_test[rng.choice(np.flatnonzero(y_test == cls))]
        truth.append((int(cls), r, c))
    return canvas, truth


def crops_at(canvas: np.ndarray, boxes) -> np.ndarray:
    """The crops (y0, x0, y1, x1) of a [1,1,H,W] canvas, stacked [N,1,h,w]."""
    return np.stack([canvas[0, :, y0:y1, x0:x1] for y0, x0, y1, x1 in boxes])


def position_errors(matched) -> list[int]:
    """For (truth, detection) pairs: how many pixels the detection's box is off, the larger of rows
    and columns."""
    return [max(abs(d[1] - t[1]), abs(d[2] - t[2])) for t, d in matched]


@dataclass
class Scan:
    """One converted model run once on the canvas, checked against the original on crops."""

    stride: int  # input pixels between neighbouring cells, from the conversion's geometry
    geometry: Geometry  # of the map: the conversion report's
    report: str  # the conversion report, as text
    logit_map: np.ndarray  # [1, 11, h, w]
    cells_inside: tuple[int, int]  # cells whose window lies inside the canvas (cells_within), per axis
    crop_max_diff: float  # max |map - original model on the cell's crop| over every cell
    detections: list  # (digit, y0, x0, y1, x1, prob), boxes from cell_box
    correct: list  # (truth, detection) pairs: right class, box within JITTER px
    missed: list
    false_pos: list


def scan(model: onnx.ModelProto, canvas: np.ndarray, truth, output_stride: int | None = None,
         threshold: float = 0.9) -> Scan:
    """Convert ``model`` (at the backbone's stride, or ``output_stride``), run it once on the canvas,
    compare each cell with ``model`` itself run on the crop the cell stands for, and detect the digits."""
    from onnx_fc2conv import cell_box, cells_within, convert, crop_box

    result = convert(model, output_stride=output_stride)
    geometry = result.report.geometry["logits"]
    logit_map = run(dd.session(result.model), canvas)
    h, w = logit_map.shape[2:]
    inside = cells_within(geometry, (0, 0, *canvas.shape[2:]))
    crops = crops_at(canvas, [crop_box(geometry, i, j) for i in range(h) for j in range(w)])
    ref = run(dd.session(model), crops).reshape(h, w, -1).transpose(2, 0, 1)[None]
    stride = geometry.axes[0].stride
    box_of = lambda r, c: cell_box(geometry, r, c)  # noqa: E731
    # NMS over half a window: 2 cells at stride 4, 8 at stride 1
    detections = dd.place(dd.detect(logit_map, threshold, nms_radius=max(1, WIN // 2 // stride)), box_of)
    correct, missed, false_pos = dd.match(detections, truth, tol=JITTER)
    return Scan(stride, geometry, result.report.render_text(), logit_map, (len(inside[0]), len(inside[1])),
                float(np.abs(logit_map - ref).max()), detections, correct, missed, false_pos)


def plot(path: str, canvas: np.ndarray, panels, truth, title: str = ""):
    """Side by side, one panel per (label, Scan): the canvas, the best-digit probability of each cell
    drawn at the centre of the box it sees (cell_box), and the placed detections' boxes
    (green: right class within JITTER px; red: wrong)."""
    import matplotlib

    from onnx_fc2conv import cell_box

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    h_img, w_img = canvas.shape[2:]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), dpi=80)
    for ax, (label, result) in zip(axes, panels):
        p = dd.softmax(result.logit_map[0], axis=0)[:dd.BACKGROUND].max(0)
        extent = dd.map_extent(lambda r, c: cell_box(result.geometry, r, c), *p.shape)  # noqa: B023
        ax.imshow(canvas[0, 0], cmap="gray_r", vmin=0, vmax=2.5, interpolation="nearest")
        im = ax.imshow(np.ma.masked_less(p, 0.02), cmap="plasma", vmin=0, vmax=1, alpha=0.85, extent=extent,
                       interpolation="nearest")
        for _, r, c in truth:
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), WIN, WIN, fill=False, ec="tab:blue", lw=1, ls="--"))
        right = [d for _, d in result.correct]
        for detection in result.detections:
            cls, y0, x0, y1, x1, _ = detection
            color = "tab:green" if detection in right else "tab:red"
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=color, lw=2))
            ax.text(x0 - 0.4, y0 - 0.9, f"{cls}", color=color, fontsize=10, weight="bold")
        ax.set_xlim(-0.5, w_img - 0.5)
        ax.set_ylim(h_img + 0.5, -3)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01, label="max digit probability of a cell")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
