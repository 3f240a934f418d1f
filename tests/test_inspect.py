"""`onnx-fc2conv inspect`: one row per FC-like node, the same decisions as convert, nothing written."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import MODELS, ROOT, SHARED_MODELS
from graphs import conv_flatten_gemm, init, model, vi, weights
from onnx import helper

from onnx_fc2conv import REASONS, RULE_NAMES, InvalidModelError, convert, inspect
from onnx_fc2conv.cli import main

EXAMPLE_MODELS = sorted(MODELS.glob("*.onnx"))


def test_lenet5_rows_give_shapes_feeder_and_rule():
    rows = inspect(MODELS / "lenet5.onnx").nodes
    assert [(r.node, r.op, r.status, r.rule) for r in rows] == [
        ("c5/Gemm", "Gemm", "converts", "flatten_gemm"),
        ("f6/Gemm", "Gemm", "converts", "fc_chain"),
        ("output/Gemm", "Gemm", "converts", "fc_chain"),
    ]
    head = rows[0]
    assert head.input_shape == ["N", 400] and head.weight_shape == [120, 400]
    assert head.fed_by == "Flatten of [N,16,5,5]"
    assert head.detail == "Gemm 400->120 -> Conv 120x16x5x5"
    assert rows[1].fed_by == "Relu"


def test_skipped_node_shows_its_reason_code():
    original = conv_flatten_gemm(trans_a=0, bias="per_sample")
    (row,) = inspect(original).nodes
    assert (row.status, row.reason, row.rule) == ("skipped", "bias_per_sample", "flatten_gemm")
    assert "[bias_per_sample]" in inspect(original).render_text()


@pytest.mark.parametrize("path", EXAMPLE_MODELS, ids=lambda p: p.stem)
def test_inspect_makes_the_same_decisions_as_convert(path):
    rows = inspect(path).nodes
    report = convert(path, verify=False).report
    as_rows = [(n.node, n.status.replace("converted", "converts"), n.rule, n.reason) for n in report.nodes]
    assert [(r.node, r.status, r.rule, r.reason) for r in rows] == as_rows


@pytest.mark.parametrize("path", EXAMPLE_MODELS, ids=lambda p: p.stem)
def test_inspect_explains_every_fc_node_of_the_example_models(path):
    m = onnx.load(str(path))
    consts = {t.name: t for t in m.graph.initializer}
    fc_nodes = [n.name for n in m.graph.node
                if n.op_type == "Gemm" or (n.op_type == "MatMul" and len(consts.get(n.input[1], init("x", [0])).dims) == 2)]
    rows = inspect(path).nodes
    assert [r.node for r in rows if r.op in ("Gemm", "MatMul")] == fc_nodes
    assert all(r.rule in RULE_NAMES if r.status == "converts" else r.reason in REASONS for r in rows)


def _manifest():
    path = SHARED_MODELS / "MANIFEST.tsv"
    if not path.exists():
        return []
    with path.open() as f:
        return [(row["file"], int(row["fc_nodes"])) for row in csv.DictReader(f, delimiter="\t")]


@pytest.mark.parametrize("name, fc_nodes", _manifest() or [pytest.param("", 0, marks=pytest.mark.skip("no shared models"))])
def test_inspect_explains_every_fc_node_of_the_shared_models(name, fc_nodes):
    path = SHARED_MODELS / name
    if not path.exists():
        pytest.skip(f"{path} is absent")
    rows = [r for r in inspect(path).nodes if r.status != "blocked" or r.op in ("Gemm", "MatMul")]
    # MANIFEST's fc_nodes counts Gemm/QGemm and MatMul-like nodes with a constant rank-2 weight,
    # inside If/Loop bodies too: each one gets a row with a rule or a reason code.
    assert len(rows) == fc_nodes
    for r in rows:
        assert (r.rule in RULE_NAMES) if r.status == "converts" else (r.reason in REASONS and r.detail), r


def test_map_meeting_an_op_that_needs_the_flat_tensor_is_a_blocked_row():
    m = conv_flatten_gemm(after=[("Concat", {"axis": 1}, ["side"])], extra_inputs=[vi("side", ["N", 2])])
    result = inspect(m)
    assert [(r.node, r.op, r.status, r.reason) for r in result.nodes] == [
        ("fc", "Gemm", "converts", None), ("after0", "Concat", "blocked", "fcn_blocked")]
    assert result.nodes[1].fed_by == "Gemm"
    assert "1 of 1 FC nodes will convert" in result.render_text()  # the Concat is no FC node


def test_quantized_fc_operator_is_reported_not_converted():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("MatMulInteger", ["flat", "w"], ["y"], name="qfc")]
    m = model(nodes, [vi("x", ["N", 2, 2, 2], onnx.TensorProto.UINT8)], [vi("y", None, onnx.TensorProto.INT32)],
              [init("w", (weights(rng, 8, 3) * 50).astype(np.uint8))])
    (row,) = inspect(m).nodes
    assert (row.op, row.status, row.reason, row.weight_shape) == ("MatMulInteger", "skipped", "quantized_op", [8, 3])


def test_fc_layer_inside_an_if_body_is_inspected_in_its_body():
    rng = np.random.default_rng(0)
    branch = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y_then"], name="inner_fc", transB=1)],
                               "then", [], [vi("y_then", None)])
    other = helper.make_graph([helper.make_node("Identity", ["zeros"], ["y_else"])], "else", [], [vi("y_else", None)])
    nodes = [helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=branch, else_branch=other)]
    m = model(nodes, [vi("x", ["N", 4]), vi("cond", [], onnx.TensorProto.BOOL)], [vi("y", None)],
              [init("w", weights(rng, 3, 4)), init("zeros", np.zeros((1, 3), np.float32))])
    (row,) = inspect(m).nodes
    assert (row.node, row.status, row.reason, row.fed_by) == ("branch/then_branch/inner_fc", "skipped",
                                                              "not_a_feature_map", "input x")


def test_cli_inspect_prints_a_table_and_writes_nothing(tmp_path):
    src = tmp_path / "lenet5.onnx"
    src.write_bytes((MODELS / "lenet5.onnx").read_bytes())
    result = CliRunner().invoke(main, ["inspect", str(src)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith("3 of 3 FC nodes will convert; nothing written")
    assert lines[1].split() == ["node", "op", "input", "weight", "fed", "by", "verdict"]
    assert len(lines) == 5 and all("converts by" in line for line in lines[2:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet5.onnx"]


def test_cli_inspect_json_lists_every_row():
    result = CliRunner().invoke(main, ["inspect", str(MODELS / "vgg_small.onnx"), "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert [n["rule"] for n in data["nodes"]] == ["flatten_gemm", "fc_chain", "fc_chain"]
    assert set(data["nodes"][0]) == {"node", "op", "input_shape", "weight_shape", "fed_by", "status", "rule",
                                     "reason", "detail"}


def test_cli_inspect_bad_input_exits_2_with_one_line(tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "missing.onnx")])
    assert result.exit_code == 2
    assert result.output.strip() == f"onnx-fc2conv: error: {tmp_path / 'missing.onnx'}: no such file"


@pytest.mark.e2e
def test_python_m_runs_both_subcommands(tmp_path):
    run = [sys.executable, "-m", "onnx_fc2conv"]
    shown = subprocess.run([*run, "inspect", str(MODELS / "gap_head.onnx")], capture_output=True, text=True, cwd=ROOT)
    assert shown.returncode == 0 and "converts by flatten_gemm" in shown.stdout
    out = tmp_path / "o.onnx"
    done = subprocess.run([*run, str(MODELS / "gap_head.onnx"), str(out), "-q"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout == "" and out.exists()


def test_model_that_convert_refuses_is_still_explained_with_a_note():
    m = onnx.load(str(MODELS / "gap_head.onnx"))
    m.graph.node.append(helper.make_node("NoSuchOp", [m.graph.input[0].name], ["side"], name="odd"))
    result = inspect(m)
    assert [r.status for r in result.nodes] == ["converts"]
    assert result.notes == ["convert refuses this model: the input is not a valid ONNX model: "
                            "No Op registered for NoSuchOp with domain_version of 13"]


def test_help_names_both_commands_and_the_default():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "onnx-fc2conv IN OUT [options]" in result.output
    commands = result.output.split("Commands:")[1].split()
    assert commands[0] == "convert" and "inspect" in commands


def test_inspect_says_convert_refuses_a_model_whose_conversion_record_was_edited():
    model = onnx.load(MODELS / "lenet5.onnx")
    model.metadata_props.add(key="onnx_fc2conv", value="not json")
    result = inspect(model)
    assert len(result.notes) == 1 and result.notes[0].startswith(
        "convert refuses this model: the model's 'onnx_fc2conv' metadata is not a conversion record (JSONDecodeError")
    with pytest.raises(InvalidModelError, match="metadata is not a conversion record"):
        convert(model, verify=False)


def test_a_bert_layer_fused_by_onnx_runtime_reads_as_tokens_without_options():
    """ONNX's shape inference knows no com.microsoft op; ONNX Runtime's symbolic inference types what
    Attention, SkipLayerNormalization and BiasGelu write, in every mode, so the first answer is right."""
    rows = inspect(MODELS / "bert_layer_fused.onnx").nodes
    assert [(r.node, r.input_shape, r.fed_by, r.status, r.reason) for r in rows] == [
        ("attention.output.matmul/MatMul", ["B", "T", 32], "com.microsoft::Attention", "skipped", "token_matmul"),
        ("ffn.intermediate.matmul/MatMul", ["B", "T", 32], "com.microsoft::SkipLayerNormalization", "skipped",
         "token_matmul"),
        ("ffn.output.matmul/MatMul", ["B", "T", 64], "com.microsoft::BiasGelu", "skipped", "token_matmul"),
    ]
    assert all("(see --token-layout)" in r.detail for r in rows)


TRANSFORMER_SHARED_MODELS = ["ortgenai_tiny_gpt2_fp32_op11.onnx", "ortgenai_tiny_qwen35_fp16_op21.onnx",
                             "tribuo_tinybert_pytorch_op11.onnx"]


@pytest.mark.parametrize("path", [*EXAMPLE_MODELS, *(SHARED_MODELS / n for n in TRANSFORMER_SHARED_MODELS)],
                         ids=lambda p: p.stem)
def test_inspect_shapes_and_reasons_do_not_depend_on_options_that_decide_what_converts(path):
    if not path.exists():
        pytest.skip(f"{path} is absent")
    plain = inspect(path).nodes
    for options in ({"vector_fc": True}, {"token_layout": "conv1d"}):
        rows = inspect(path, **options).nodes
        assert [(r.node, r.input_shape, r.weight_shape, r.fed_by) for r in rows] == \
               [(r.node, r.input_shape, r.weight_shape, r.fed_by) for r in plain], options
        # a node either option leaves skipped has the reason it had without it
        assert [(r.node, r.reason) for r in rows if r.status == "skipped"] == \
               [(p.node, p.reason) for p, r in zip(plain, rows) if r.status == "skipped"], options
    assert all(r.input_shape is not None for r in plain if r.op == "MatMul")


def test_embed_layer_normalization_and_fast_gelu_outputs_are_tokens_without_options():
    # The other fused ops ONNX Runtime's optimizer writes into a BERT: the embeddings
    # (EmbedLayerNormalization of word, position and segment tables) and a tanh GELU with its bias.
    rng = np.random.default_rng(0)
    ms = dict(domain="com.microsoft")
    nodes = [helper.make_node("EmbedLayerNormalization", ["ids", "segments", "word", "position", "segment", "gamma",
                                                          "beta"], ["embedded", "mask_index"], name="embed",
                              epsilon=1e-12, **ms),
             helper.make_node("MatMul", ["embedded", "w1"], ["h"], name="ffn.in"),
             helper.make_node("FastGelu", ["h", "b1"], ["g"], name="gelu", **ms),
             helper.make_node("MatMul", ["g", "w2"], ["y"], name="ffn.out")]
    tables = [init("word", weights(rng, 50, 16)), init("position", weights(rng, 64, 16)),
              init("segment", weights(rng, 2, 16)), init("gamma", np.ones(16, np.float32)),
              init("beta", np.zeros(16, np.float32)), init("w1", weights(rng, 16, 32)),
              init("b1", np.zeros(32, np.float32)), init("w2", weights(rng, 32, 16))]
    graph = helper.make_graph(nodes, "embeddings", [vi("ids", ["batch", "seq"], onnx.TensorProto.INT32),
                                                    vi("segments", ["batch", "seq"], onnx.TensorProto.INT32)],
                              [vi("y", ["batch", "seq", 16])], tables)
    fused = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=7)
    for options in ({}, {"vector_fc": True}):
        rows = inspect(fused, **options).nodes
        assert [(r.node, r.input_shape, r.reason) for r in rows] == [
            ("ffn.in", ["batch", "seq", 16], "token_matmul"), ("ffn.out", ["batch", "seq", 32], "token_matmul")]


def test_inspect_of_a_converted_model_says_in_one_note_which_version_converted_it_and_how():
    from onnx_fc2conv import __version__

    converted = convert(MODELS / "vgg_small.onnx", verify=False, output_stride=2).model
    result = inspect(converted)
    assert result.notes == [f"already converted by onnx-fc2conv {__version__} (fully convolutional, 1 head, "
                            "output stride 2x2)"]
    assert result.render_text().splitlines()[1] == f"  note: {result.notes[0]}"
    kept = inspect(convert(MODELS / "lenet5.onnx", verify=False, keep_output_shape=True).model)
    assert kept.notes == [f"already converted by onnx-fc2conv {__version__} (output shape kept, 1 head)"]
