"""Scale: graph passes stay linear, constants are sized before they are folded, and a Conv kernel
over 2 GiB still gets an ONNX Runtime session (issue 17, classes 6, 12 and 13)."""
from __future__ import annotations

import graphs
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_fc2conv import convert, inspect
from onnx_fc2conv.graph import cleanup, toposort
from onnx_fc2conv.verify import needs_nchwc_off


def _head_with_dead_chain(length: int) -> onnx.ModelProto:
    """conv_flatten_gemm's head, plus ``length`` Neg nodes chained on the input that nothing reads."""
    model = graphs.conv_flatten_gemm()
    previous = model.graph.input[0].name
    for i in range(length):
        model.graph.node.append(helper.make_node("Neg", [previous], [f"dead{i}"], name=f"dead{i}"))
        previous = f"dead{i}"
    return model


def test_a_dead_chain_of_20000_nodes_goes_in_one_cleanup():
    model = _head_with_dead_chain(20_000)
    live = len(model.graph.node) - 20_000
    cleanup(model.graph)
    assert len(model.graph.node) == live
    assert not any(n.name.startswith("dead") for n in model.graph.node)


def test_a_model_with_a_dead_chain_of_20000_nodes_converts_without_it():
    result = convert(_head_with_dead_chain(20_000), verify=False)
    assert [n.rule for n in result.report.converted] == ["flatten_gemm"]
    assert not any(n.name.startswith("dead") for n in result.model.graph.node)
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Relu", "Conv"]


def test_toposort_of_a_reversed_chain_of_20000_nodes_orders_it():
    x = graphs.vi("x", [1, 2])
    nodes = [helper.make_node("Neg", ["x" if i == 0 else f"t{i - 1}"], [f"t{i}"], name=f"n{i}") for i in range(20_000)]
    graph = helper.make_graph(nodes[::-1], "chain", [x], [graphs.vi("t19999", [1, 2])])
    toposort(graph)
    assert [n.name for n in graph.node] == [f"n{i}" for i in range(20_000)]


def _constant_of_shape_head() -> onnx.ModelProto:
    """A few hundred bytes whose Gemm weight is ConstantOfShape([56000, 18000]): 4 GB of float32."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [56000, 18000])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["w"], name="bomb",
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
             helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["y"], name="fc")]
    g = helper.make_graph(nodes, "bomb", [graphs.vi("x", [1, 18000, 1, 1])], [graphs.vi("y", [1, 56000])],
                          initializer=[shape])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_a_4_gb_constant_of_shape_weight_is_not_folded_and_says_why():
    model = _constant_of_shape_head()
    assert model.ByteSize() < 400
    row = inspect(model).nodes[0]
    assert (row.status, row.reason) == ("skipped", "weight_not_constant")
    assert row.detail == "folding ConstantOfShape 'bomb' would need 4.0 GB (more than 256 MB beyond its inputs)"
    result = convert(model, verify=False)
    assert result.report.converted == [] and result.report.nodes[0].reason == "weight_not_constant"


@pytest.mark.e2e
def test_a_small_constant_of_shape_weight_still_converts():
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [4, 3])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["w"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
             helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"], name="fc")]
    g = helper.make_graph(nodes, "small", [graphs.vi("x", [1, 4, 1, 1])], [graphs.vi("y", [1, 3])], initializer=[shape])
    result = convert(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    assert [n.rule for n in result.report.converted] == ["flatten_gemm"] and result.report.verification.passed


def _conv_with_kernel(dims) -> onnx.ModelProto:
    """A Conv whose kernel has ``dims`` (declared only: the check reads dims, never bytes)."""
    kernel = TensorProto(name="k", data_type=TensorProto.FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
    kernel.external_data.add(key="location", value="k.bin")
    node = helper.make_node("Conv", ["x", "k"], ["y"])
    g = helper.make_graph([node], "conv", [graphs.vi("x", [1, dims[1], *dims[2:]])], [graphs.vi("y", None)],
                          initializer=[kernel])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("dims, off", [
    ([540000, 64, 4, 4], True),  # 2.2 GB: the NCHWc copy fails to load
    ([335544, 64, 5, 5], True),  # under 2 GiB as stored, over it once padded to 16 output channels
    ([524288, 64, 4, 4], False),  # exactly 2 GiB: loads (measured with ONNX Runtime 1.32)
    ([64, 64, 3, 3], False),
])
def test_nchwc_is_turned_off_only_where_a_padded_kernel_passes_2_gib(dims, off):
    assert needs_nchwc_off(_conv_with_kernel(dims)) is off


@pytest.mark.e2e
def test_the_nchwc_setting_names_a_transform_onnx_runtime_has(tmp_path):
    # ONNX Runtime ignores an unknown optimizer name without a word, so prove this one takes effect.
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    kernel = graphs.init("k", rng.standard_normal((32, 16, 3, 3)).astype(np.float32))
    g = helper.make_graph([helper.make_node("Conv", ["x", "k"], ["y"])], "conv", [graphs.vi("x", [1, 16, 8, 8])],
                          [graphs.vi("y", [1, 32, 6, 6])], initializer=[kernel])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])

    def optimized_domains(disable: bool) -> set[str]:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(tmp_path / f"opt{disable}.onnx")
        if disable:
            opts.add_session_config_entry("optimization.disable_specified_optimizers", "NchwcTransformer")
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return {n.domain for n in onnx.load(opts.optimized_model_filepath).graph.node}

    if "com.microsoft.nchwc" not in optimized_domains(False):
        pytest.skip("this CPU's ONNX Runtime does not use the NCHWc layout")
    assert "com.microsoft.nchwc" not in optimized_domains(True)
