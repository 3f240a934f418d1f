"""Example models exported from PyTorch, the way a user's model reaches the tool.

Needs torch (not a dependency of the project; build in a throwaway venv, see models/README.md):

    python3.11 -m venv /tmp/venv-torch
    /tmp/venv-torch/bin/pip install torch==2.13.0 onnx onnxscript
    /tmp/venv-torch/bin/python models/build_torch_models.py

``TORCH_MODELS`` names the files it writes, so tests can tell them from build_models.py's without torch.
"""
from __future__ import annotations

import argparse
from pathlib import Path

TORCH_MODELS = ("torch_encoder_layer.onnx",)
D_MODEL, HEADS, FFN = 64, 4, 128


def torch_encoder_layer(path: Path) -> None:
    """``nn.TransformerEncoderLayer`` (post-norm, ReLU FFN), batch-first ``[1,T,64]``, exported by the
    dynamo exporter with a symbolic sequence length T and batch 1, as it is deployed. (With a symbolic
    batch too, OpenVINO 2026.4 compiled even the old conv2d layout that failed on this one.)"""
    import torch

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(D_MODEL, HEADS, dim_feedforward=FFN, dropout=0.0,
                                             batch_first=True).eval()
    x = torch.randn(1, 5, D_MODEL)
    tokens = torch.export.Dim("T", min=2, max=4096)
    with torch.no_grad():
        program = torch.onnx.export(layer, (x,), dynamo=True, input_names=["hidden"], output_names=["out"],
                                    dynamic_shapes=({1: tokens},), external_data=False)
    program.save(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch_encoder_layer(args.out / TORCH_MODELS[0])
    print(f"wrote {args.out / TORCH_MODELS[0]}")


if __name__ == "__main__":
    main()
