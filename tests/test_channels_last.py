"""ConvNeXt's channels-last MLP (``channels_last_mlp``): with --token-layout every block MatMul becomes a
1x1 Conv on the NCHW map, the model's closing Transpose goes, and no block has more Transposes than
before; proved at the original size and on larger inputs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import MODELS, load_build_models
from graphs import init, initializer, model, ops, vi

from onnx_fc2conv import convert, inspect

bm = load_build_models()
BLOCK_MATMULS = [f"stages.0.blocks.{i}.mlp.{fc}.matmul/MatMul" for i in range(2) for fc in ("fc1", "fc2")]
OPSETS = (13, 17, 20)  # LayerNorm decomposed / LayerNormalization / and the Gelu op


def block_ops(model: onnx.ModelProto, block: int) -> list[str]:
    prefix = f"stages.0.blocks.{block}."
    return [n.op_type for n in model.graph.node if n.name.startswith(prefix)]


@pytest.mark.parametrize("layout", ["conv1d", "conv2d"])
@pytest.mark.parametrize("opset", OPSETS)
def test_every_convnext_block_matmul_converts_with_token_layout(opset, layout):
    rows = {r.node: r for r in inspect(bm.convnext_blocks(opset), token_layout=layout).nodes}
    assert [(n, rows[n].status, rows[n].rule) for n in BLOCK_MATMULS] == [
        (n, "converts", "channels_last_mlp" if ".fc1." in n else "fc_chain") for n in BLOCK_MATMULS]
    assert rows["head.fc/Gemm"].rule == "flatten_gemm"


def test_without_token_layout_the_block_matmuls_name_the_flag():
    rows = {r.node: r for r in inspect(bm.convnext_blocks(17)).nodes}
    assert {(rows[n].reason, rows[n].detail) for n in BLOCK_MATMULS} == {
        ("token_matmul", f"the MatMul runs on a channels-last map [N,8,8,{c}] (see --token-layout: a 1x1 Conv on "
                         "the channels-first map)") for c in (16, 64)}


@pytest.mark.parametrize("opset", OPSETS)
def test_a_converted_block_has_as_many_transposes_as_before_and_no_matmul(opset):
    original = bm.convnext_blocks(opset)
    result = convert(original, token_layout="conv2d", verify=False)
    model, report = result.model, result.report
    assert ops(model).count("Transpose") == ops(original).count("Transpose") == 8
    assert "MatMul" not in ops(model) and ops(model).count("Conv") == 8
    gelu = ["Gelu"] if opset >= 20 else ["Div", "Erf", "Add", "Mul", "Mul"]
    norm = ["LayerNormalization"] if opset >= 17 else ["ReduceMean", "Sub", "Pow", "ReduceMean", "Add", "Sqrt",
                                                       "Div", "Mul", "Add"]
    for block in range(2):  # the LayerNorm on the model's own NHWC tensor, then the map
        named = block_ops(model, block)
        assert named == ["Conv", "Transpose", *norm, "Transpose", "Conv", *gelu, "Conv", "Mul", "Add"], named
    assert initializer(model, "stages.0.blocks.0.gamma_per_channel").shape == (16, 1, 1)
    assert [(len(r.converted), r.transposes_added, r.transposes_removed, r.ends) for r in report.runs] == [
        (2, 1, 1, [f"stages.0.blocks.{i}.to_nchw/Transpose"]) for i in range(2)]
    assert (report.transposes_added, report.transposes_removed) == (2, 2)
    assert "added 0 Flatten and 2 Transpose nodes, removed 2 Transpose" in report.render_text()


@pytest.mark.e2e
@pytest.mark.parametrize("opset", OPSETS)
def test_a_converted_convnext_is_proved_at_its_size_and_on_larger_inputs(opset):
    result = convert(bm.convnext_blocks(opset), token_layout="conv2d")
    v = result.report.verification
    assert v.passed and v.max_abs_error < 1e-5, v.render_text(verbose=True)
    assert [c.check for c in v.checks] == ["original size", "sliding window 64x64", "sliding window 48x65"]
    assert result.report.symbolic_inputs == {"input": ["N", 3, "height", "width"]}


@pytest.mark.e2e
def test_a_converted_convnext_equals_the_original_run_at_a_larger_size():
    import onnxruntime as ort

    original = bm.convnext_blocks(17)
    converted = convert(original, token_layout="conv2d").model
    free = onnx.ModelProto()
    free.CopyFrom(original)  # the original's blocks and global pool take any size once its input does
    for axis, name in ((2, "height"), (3, "width")):
        free.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
    x = np.random.default_rng(3).standard_normal((2, 3, 72, 56)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
           for m in (free, converted)]
    assert run[1].shape == (2, 10, 1, 1)
    np.testing.assert_allclose(run[1][:, :, 0, 0], run[0], rtol=1e-4, atol=1e-5)


def test_a_channels_last_map_without_a_closing_transpose_gets_its_layout_back():
    w = init("w", np.arange(8 * 6, dtype=np.float32).reshape(8, 6))
    node = onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")
    m = model([node], [vi("x", ["N", 4, 5, 8])], [vi("y", ["N", 4, 5, 6])], [w])
    result = convert(m, token_layout="conv1d", verify=False)
    assert ops(result.model) == ["Transpose", "Conv", "Transpose"]
    assert (result.report.transposes_added, result.report.transposes_removed) == (2, 0)


@pytest.mark.e2e
@pytest.mark.parametrize("opset, layout", [(13, None), (17, None), (17, "conv2d"), (20, "conv1d")])
def test_dense_pool_goes_through_the_convnext_heads_layer_norm(opset, layout):
    result = convert(bm.convnext_blocks(opset), dense_pool=True, token_layout=layout)
    head = next(n for n in result.report.converted if n.node == "head.fc/Gemm")
    assert (head.rule, head.detail) == ("dense_pool", "Gemm 16->10 -> Conv 10x16x1x1, GlobalAveragePool -> "
                                                      "AveragePool 8x8 stride 1")
    assert "GlobalAveragePool" not in ops(result.model)
    assert len(result.report.converted) == (5 if layout else 1)
    v = result.report.verification
    assert v.passed and v.max_abs_error < 1e-5, v.render_text(verbose=True)
    assert [c.compared for c in v.checks if c.check.startswith("sliding window")] == [11, 10]


def _timm_block(gamma_after_permute: bool, closing_transposes: int = 1):
    """[N,C,H,W] -> Transpose(0,2,3,1) -> MatMul+Add -> Relu -> MatMul+Add -> (Mul gamma [C]) -> Transpose(0,3,1,2)
    -> (Mul gamma [1,C,1,1], timm's spelling today) -> Add(x); ``closing_transposes`` Transposes read the map.
    No LayerNorm between the first Transpose and fc1: the run's entry undoes that Transpose."""
    rng = np.random.default_rng(8)
    c, f = 4, 8
    nodes = [onnx.helper.make_node("Transpose", ["x"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
             onnx.helper.make_node("MatMul", ["nhwc", "w1"], ["h1"], name="fc1"),
             onnx.helper.make_node("Add", ["h1", "b1"], ["h1b"], name="fc1_bias"),
             onnx.helper.make_node("Relu", ["h1b"], ["act"], name="act"),
             onnx.helper.make_node("MatMul", ["act", "w2"], ["h2"], name="fc2"),
             onnx.helper.make_node("Add", ["h2", "b2"], ["mlp"], name="fc2_bias")]
    if gamma_after_permute:
        nodes += [onnx.helper.make_node("Transpose", ["mlp"], ["back"], name="to_nchw", perm=[0, 3, 1, 2]),
                  onnx.helper.make_node("Mul", ["back", "gamma4"], ["scaled"], name="gamma")]
    else:
        nodes += [onnx.helper.make_node("Mul", ["mlp", "gamma"], ["mlp_scaled"], name="gamma"),
                  onnx.helper.make_node("Transpose", ["mlp_scaled"], ["scaled"], name="to_nchw", perm=[0, 3, 1, 2])]
    nodes.append(onnx.helper.make_node("Add", ["scaled", "x"], ["y"], name="residual"))
    outputs = [vi("y", ["N", c, 5, 6])]
    if closing_transposes == 2:
        nodes.append(onnx.helper.make_node("Transpose", [nodes[-2].input[0]], ["y2"], name="again", perm=[0, 3, 1, 2]))
        outputs.append(vi("y2", ["N", c, 5, 6]))
    inits = [init("w1", rng.standard_normal((c, f)).astype(np.float32)), init("b1", np.ones(f, np.float32)),
             init("w2", rng.standard_normal((f, c)).astype(np.float32)), init("b2", np.ones(c, np.float32)),
             init("gamma", rng.standard_normal(c).astype(np.float32)),
             init("gamma4", rng.standard_normal((1, c, 1, 1)).astype(np.float32))]
    return model(nodes, [vi("x", ["N", c, 5, 6])], outputs, inits)


@pytest.mark.e2e
@pytest.mark.parametrize("gamma_after_permute", [False, True])
def test_a_block_without_a_norm_loses_both_transposes_with_gamma_before_or_after_the_permute(gamma_after_permute):
    original = _timm_block(gamma_after_permute)  # the entry cancels with the model's first Transpose too
    result = convert(original, token_layout="conv1d")
    assert ops(original).count("Transpose") == 2
    assert ops(result.model) == ["Conv", "Relu", "Conv", "Mul", "Add"]
    assert (result.report.transposes_added, result.report.transposes_removed) == (0, 2)
    v = result.report.verification
    assert v.passed and v.max_abs_error < 1e-5, v.render_text(verbose=True)


@pytest.mark.e2e
def test_a_map_read_by_two_closing_transposes_keeps_them_and_gets_its_layout_back():
    result = convert(_timm_block(False, closing_transposes=2), token_layout="conv1d")
    assert ops(result.model).count("Transpose") == 3  # the model's 2 closing ones and the layout back for both
    assert (result.report.transposes_added, result.report.transposes_removed) == (1, 1)
    assert result.report.verification.passed


@pytest.mark.e2e
def test_a_closing_transpose_that_is_a_graph_output_goes_and_the_map_takes_its_name():
    w = init("w", np.random.default_rng(4).standard_normal((4, 6)).astype(np.float32))
    nodes = [onnx.helper.make_node("Transpose", ["x"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
             onnx.helper.make_node("LayerNormalization", ["nhwc", "scale"], ["normed"], name="norm", axis=-1),
             onnx.helper.make_node("MatMul", ["normed", "w"], ["mlp"], name="fc"),
             onnx.helper.make_node("Transpose", ["mlp"], ["features"], name="to_nchw", perm=[0, 3, 1, 2])]
    m = model(nodes, [vi("x", ["N", 4, 5, 6])], [vi("features", ["N", 6, 5, 6])],
              [w, init("scale", np.ones(4, np.float32))], opset=17)
    result = convert(m, token_layout="conv1d")
    assert ops(result.model) == ["Transpose", "LayerNormalization", "Transpose", "Conv"]
    assert result.model.graph.node[-1].output[0] == "features"
    assert (result.report.transposes_added, result.report.transposes_removed) == (1, 1)
    v = result.report.verification
    assert v.passed and v.max_abs_error < 1e-5, v.render_text(verbose=True)


@pytest.mark.e2e
@pytest.mark.parametrize("exporter", ["dynamo", "ts17"])
def test_a_torch_exported_timm_convnext_converts_every_block_layer_with_as_many_transposes(exporter):
    original = onnx.load(str(MODELS / f"timm_convnext_{exporter}.onnx"))
    result = convert(original, token_layout="conv2d")
    assert len(result.report.converted) == 5 and "MatMul" not in ops(result.model)  # 2 blocks of 2, and the head
    assert ops(result.model).count("Transpose") == ops(original).count("Transpose") == 10
    assert [(len(r.converted), r.transposes_added, r.transposes_removed) for r in result.report.runs] == [(2, 1, 1)] * 2
    v = result.report.verification
    assert v.passed and v.max_abs_error < 1e-5, v.render_text(verbose=True)


@pytest.mark.parametrize("exporter, detail", [
    ("ts17", "GlobalAveragePool -> AveragePool 4x4 stride 1"),  # through the head's LayerNorm2d
    ("dynamo", "ReduceMean 'node_mean' kept: Gather 'node_as_strided' between it and the head does not work on "
               "each position alone"),  # the dynamo exporter writes adaptive_avg_pool2d's view as a Gather
])
def test_dense_pool_on_a_torch_exported_convnext_widens_its_pool_or_names_what_keeps_it(exporter, detail):
    [head] = [r for r in inspect(MODELS / f"timm_convnext_{exporter}.onnx", dense_pool=True).nodes if r.op == "Gemm"]
    assert head.rule == "dense_pool" and head.detail.endswith(detail), head.detail
