"""The plan is pure: rules answer a Match or a Skip, and nothing is built until the apply step asks.

These tests read the plan (planner.plan_graph) and the kernels a match builds, without running
ONNX Runtime.
"""
from __future__ import annotations

import re

import graphs
import numpy as np
import onnx
import pytest
from conftest import MODELS
from onnx import numpy_helper

from onnx_fc2conv import Fc2ConvError, Options, UsageError, convert, inspect
from onnx_fc2conv.index import GraphIndex
from onnx_fc2conv.planner import plan_graph
from onnx_fc2conv.rules import Match, Skip, _dense


@pytest.fixture
def kernels_built(monkeypatch) -> list[str]:
    """The layer of every conv kernel a match builds, recorded as it is made (float kernels come
    from _conv_weight, quantized ones from quantized_kernel)."""
    made = []
    for name in ("_conv_weight", "quantized_kernel"):
        real = getattr(_dense, name)

        def recording(index, dense, *args, real=real):
            made.append(dense.name)
            return real(index, dense, *args)

        monkeypatch.setattr(_dense, name, recording)
    return made


def _plan(model: onnx.ModelProto, **options):
    return plan_graph(GraphIndex(model), Options(**options))


def test_the_seed_fc_plans_one_flatten_gemm_match_and_builds_its_kernel_only_when_asked(kernels_built):
    model = onnx.load(MODELS / "seed_fc.onnx")
    plan = _plan(model)
    [decision] = [d for d in plan.decisions if d.status == "converted"]
    assert decision.rule == "flatten_gemm" and isinstance(decision.outcome, Match)
    assert kernels_built == [] and [n.op_type for n in model.graph.node] == ["Flatten", "Gemm", "Relu"]
    built = decision.outcome.build()
    [conv] = [n for n in built.nodes if n.op_type == "Conv"]
    values = {t.name: numpy_helper.to_array(t) for t in built.initializers}
    weight = values.get(conv.input[1])
    if weight is None:  # an owned [F,K] weight is reshaped in place: the kernel is the same bytes
        weight = numpy_helper.to_array(model.graph.initializer[0]).reshape(built.reshaped[conv.input[1]])
    assert weight.reshape(2, 3).tolist() == [[0, 1, 1], [2, 3, 5]]
    assert values[conv.input[2]].tolist() == [8, 13]


def test_a_k_by_f_weight_is_transposed_only_by_build(kernels_built):
    model = onnx.load(MODELS / "matmul_add_head.onnx")
    plan = _plan(model)
    matches = [d.outcome for d in plan.decisions if isinstance(d.outcome, Match) and d.outcome.kind == "fc"]
    assert matches and kernels_built == []
    matches[0].build()
    assert kernels_built == [matches[0].removed[0].name]


def test_inspect_builds_no_kernel(kernels_built):
    for name in ("lenet5.onnx", "matmul_add_head.onnx", "vgg_small.onnx", "gap_head.onnx"):
        rows = inspect(MODELS / name, dense_pool=True).nodes
        assert any(r.status == "converts" for r in rows)
    assert kernels_built == []


def test_a_disabled_rule_builds_no_kernel(kernels_built):
    result = convert(graphs.conv_flatten_gemm(), skip_rules=["flatten_gemm"], verify=False)
    assert [(n.rule, n.reason) for n in result.report.nodes] == [("flatten_gemm", "rule_disabled")]
    assert kernels_built == []


def test_dense_pool_looks_ahead_at_the_head_rules_and_builds_each_kernel_once(kernels_built):
    result = convert(MODELS / "gap_head.onnx", dense_pool=True, verify=False)
    assert "stride 1" in result.report.converted[0].detail
    assert sorted(kernels_built) == sorted(n.node for n in result.report.converted)


def test_a_gemm_with_trans_a_is_planned_as_a_skip_with_its_reason():
    plan = _plan(graphs.conv_flatten_gemm(trans_a=1))
    [decision] = [d for d in plan.decisions if d.status is not None]
    assert isinstance(decision.outcome, Skip) and decision.outcome.reason == "trans_a"


def test_kernel_layout_reorders_nhwc_rows_into_the_conv_kernel():
    f, c, h, w = 2, 3, 2, 2
    kernel = np.arange(f * c * h * w, dtype=np.float32).reshape(f, c, h, w)
    rows_hwc = kernel.transpose(0, 2, 3, 1).reshape(f, -1)  # what a NHWC flatten's weight holds
    assert np.array_equal(_dense.kernel_layout(rows_hwc, False, (f, c, h, w), (0, 2, 3, 1)), kernel)
    assert np.array_equal(_dense.kernel_layout(rows_hwc.T, True, (f, c, h, w), (0, 2, 3, 1)), kernel)


def test_an_unknown_option_is_one_line():
    with pytest.raises(Fc2ConvError, match="unknown option 'keep_output_shapes'; options are: keep_output_shape"):
        convert(MODELS / "seed_fc.onnx", keep_output_shapes=True)


def test_options_and_keywords_combine_with_keywords_winning():
    result = convert(MODELS / "seed_fc.onnx", options=Options(keep_output_shape=False), keep_output_shape=True,
                     verify=False)
    assert result.report.mode == "keep_output_shape"


def test_a_string_for_include_or_exclude_is_one_glob_not_its_letters():
    assert Options(include="fc1", exclude="f*").include == ("fc1",)
    assert Options(exclude="fc1").exclude == ("fc1",)
    result = convert(graphs.conv_flatten_gemm(), exclude="fc", verify=False)
    assert [(n.node, n.reason) for n in result.report.nodes] == [("fc", "excluded")]


@pytest.mark.parametrize("options, message", [
    (dict(keep_output_shape="no"), "option keep_output_shape takes True or False, not 'no'"),
    (dict(include=[1]), "option include takes names or globs (strings), not [1]"),
    (dict(input_shapes=[("x", (1, 2))]), "option input_shapes takes a dict of input name -> dims"),
])
def test_an_option_of_the_wrong_type_is_one_line(options, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        Options(**options)
