"""FC layers inside If/Loop/Scan bodies are converted too: the bodies read their weights from the
outer scope, and keep their output shapes, so the enclosing node is unchanged."""
from __future__ import annotations

import graphs
import numpy as np
import onnx
import pytest
from conftest import SHARED_MODELS
from onnx import TensorProto, helper

from onnx_fc2conv import convert, verify

N, C, S, F = 2, 3, (3, 3), 4


def _backbone(rng):
    """x [N,2,5,5] -> Conv 3x3 -> Relu -> fmap [N,3,3,3], and the weights every body reads."""
    nodes = [helper.make_node("Conv", ["x", "conv.w"], ["conv"], name="conv", kernel_shape=[3, 3]),
             helper.make_node("Relu", ["conv"], ["fmap"], name="relu")]
    inits = [graphs.init("conv.w", graphs.weights(rng, C, 2, 3, 3)),
             graphs.init("fc.w", graphs.weights(rng, F, C * 9)), graphs.init("fc.b", graphs.weights(rng, F)),
             graphs.init("fc2.w", graphs.weights(rng, F, F))]
    return nodes, inits


def _fc_body(name, source, out, second_layer=False, extra=()):
    """Flatten(source) -> Gemm(outer fc.w, fc.b) [-> Relu -> Gemm(outer fc2.w)] -> out."""
    nodes = [helper.make_node("Flatten", [source], [f"{name}_flat"], name=f"{name}_flatten", axis=1),
             helper.make_node("Gemm", [f"{name}_flat", "fc.w", "fc.b"], [f"{name}_fc" if second_layer else out],
                              name=f"{name}_gemm", transB=1)]
    if second_layer:
        nodes += [helper.make_node("Relu", [f"{name}_fc"], [f"{name}_relu"], name=f"{name}_relu"),
                  helper.make_node("Gemm", [f"{name}_relu", "fc2.w"], [out], name=f"{name}_gemm2", transB=1)]
    return nodes + list(extra)


def if_model():
    nodes, inits = _backbone(np.random.default_rng(0))
    then_branch = helper.make_graph(_fc_body("then", "fmap", "y_then"), "then", [], [graphs.vi("y_then", ["N", F])])
    else_branch = helper.make_graph(_fc_body("else", "fmap", "y_else", second_layer=True), "else", [],
                                    [graphs.vi("y_else", ["N", F])])
    nodes.append(helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_branch,
                                  else_branch=else_branch))
    return graphs.model(nodes, [graphs.vi("x", ["N", 2, 5, 5]), graphs.vi("cond", [], TensorProto.BOOL)],
                        [graphs.vi("y", ["N", F])], inits)


def loop_model():
    """Loop twice: acc += FC(fmap); the body reads fmap and the weights from the outer scope."""
    nodes, inits = _backbone(np.random.default_rng(1))
    add = helper.make_node("Add", ["acc_in", "body_fc"], ["acc_out"], name="accumulate")
    keep = helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going")
    body = helper.make_graph(_fc_body("body", "fmap", "body_fc", extra=[add, keep]), "body",
                             [graphs.vi("i", [], TensorProto.INT64), graphs.vi("cond_in", [], TensorProto.BOOL),
                              graphs.vi("acc_in", ["N", F])],
                             [graphs.vi("cond_out", [], TensorProto.BOOL), graphs.vi("acc_out", ["N", F])])
    inits += [graphs.init("trips", np.array(2, np.int64)), graphs.init("true", np.array(True)),
              graphs.init("acc0", np.zeros((1, F), np.float32))]
    nodes.append(helper.make_node("Loop", ["trips", "true", "acc0"], ["y"], name="loop", body=body))
    return graphs.model(nodes, [graphs.vi("x", ["N", 2, 5, 5])], [graphs.vi("y", ["N", F])], inits)


def scan_model():
    """Scan over T feature maps [T,N,C,3,3]: one FC output per step, [T,N,F]."""
    _, inits = _backbone(np.random.default_rng(2))
    body = helper.make_graph(_fc_body("step", "frame", "step_fc"), "step", [graphs.vi("frame", [N, C, *S])],
                             [graphs.vi("step_fc", [N, F])])
    node = helper.make_node("Scan", ["frames"], ["y"], name="scan", body=body, num_scan_inputs=1)
    return graphs.model([node], [graphs.vi("frames", [5, N, C, *S])], [graphs.vi("y", [5, N, F])], inits[1:])


def _bodies(model):
    return [g for n in model.graph.node for a in n.attribute for g in ([a.g] if a.g.node else a.graphs)]


def _body_ops(model):
    return [[n.op_type for n in g.node] for g in _bodies(model)]


@pytest.mark.e2e
@pytest.mark.parametrize("cond", [True, False])
def test_fc_layers_in_both_if_branches_become_convs_and_verify(cond):
    model = if_model()
    feeds = {"x": np.random.default_rng(3).standard_normal((N, 2, 5, 5)).astype(np.float32), "cond": np.array(cond)}
    result = convert(model, input_data=feeds)
    report = result.report
    assert [(n.node, n.status, n.rule) for n in report.nodes] == [  # onnx.helper sorts attributes by name
        ("branch/else_branch/else_gemm", "converted", "flatten_gemm"),
        ("branch/else_branch/else_gemm2", "converted", "fc_chain"),
        ("branch/then_branch/then_gemm", "converted", "flatten_gemm")]
    assert _body_ops(result.model) == [["Conv", "Relu", "Conv", "Flatten"], ["Conv", "Flatten"]]
    assert {t.name for t in result.model.graph.initializer} == {"conv.w"}  # the old FC weights are gone
    assert report.verification and report.verification.max_abs_error < 1e-5
    onnx.checker.check_model(result.model, full_check=True)
    want, got = graphs.run(model, feeds)[0], graphs.run(result.model, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_fc_layer_in_a_loop_body_reads_outer_weights_and_verifies():
    result = convert(loop_model())
    # The Add mixes the map with the flat loop-carried value: a Flatten is put back before it.
    assert [(n.node, n.status, n.reason) for n in result.report.nodes] == [
        ("loop/body/body_gemm", "converted", None), ("loop/body/accumulate", "blocked", "fcn_blocked")]
    assert _body_ops(result.model) == [["Conv", "Identity", "Flatten", "Add"]]
    assert result.report.verification and result.report.verification.max_abs_error < 1e-5


@pytest.mark.e2e
def test_fc_layer_in_a_scan_body_on_a_scanned_feature_map_verifies():
    result = convert(scan_model())
    assert [(n.node, n.status) for n in result.report.nodes] == [("scan/body/step_gemm", "converted")]
    assert _body_ops(result.model) == [["Conv", "Flatten"]]
    assert result.report.verification and result.report.verification.max_abs_error < 1e-5


def test_converting_a_model_with_converted_bodies_again_changes_nothing(tmp_path):
    once = convert(if_model(), tmp_path / "once.onnx", verify=False)
    assert len(once.report.converted) == 3
    again = convert(tmp_path / "once.onnx", tmp_path / "twice.onnx", verify=False)
    assert again.report.converted == []
    assert (tmp_path / "twice.onnx").read_bytes() == (tmp_path / "once.onnx").read_bytes()


SILERO = SHARED_MODELS / "silero_vad_ifless_pytorch_op18.onnx"


@pytest.mark.e2e
@pytest.mark.skipif(not SILERO.exists(), reason="the shared real-model folder is absent")
@pytest.mark.parametrize("sr, samples", [(16000, 512), (8000, 256)])  # the If picks a branch by sample rate
def test_silero_vad_gemms_inside_its_if_convert_with_vector_fc_and_verify(sr, samples):
    rng = np.random.default_rng(0)
    feeds = {"input": rng.standard_normal((1, samples)).astype(np.float32), "sr": np.array(sr, np.int64),
             "state": rng.standard_normal((2, 1, 128)).astype(np.float32)}
    result = convert(SILERO, input_data=feeds, vector_fc=True)
    # Two LSTM-cell Gemms in each branch of its If: the hidden-state one (on the [1,128] state) becomes
    # a 1x1 Conv; the input one reads a Gather of the encoder map and is reported with its reason.
    gemms = [(n.node.split("/")[1], n.status) for n in result.report.nodes if n.op == "Gemm"]
    assert sorted(gemms) == [("else_branch", "converted"), ("else_branch", "skipped"),
                             ("then_branch", "converted"), ("then_branch", "skipped")]
    assert [sum(n.op_type == "Conv" for n in g.node) - 6 for g in _bodies(result.model)] == [1, 1]
    assert result.report.verification and result.report.verification.max_abs_error < 1e-4
    assert verify(SILERO, result.model, input_data=feeds)
