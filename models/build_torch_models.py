"""Example models exported from PyTorch, the way a user's model reaches the tool.

Needs torch (not a dependency of the project; build in a throwaway venv, see models/README.md):

    python3.11 -m venv /tmp/venv-torch
    /tmp/venv-torch/bin/pip install torch==2.13.0 onnx onnxscript transformers
    /tmp/venv-torch/bin/python models/build_torch_models.py

(transformers for the GPT-2 blocks: Hugging Face's own ``GPT2Block``, random weights, nothing downloaded.)

``TORCH_MODELS`` names the files it writes, so tests can tell them from build_models.py's without torch.
"""
from __future__ import annotations

import argparse
from pathlib import Path

TORCH_MODELS = ("torch_encoder_layer.onnx", "hf_gpt2_torchscript.onnx", "hf_gpt2_dynamo.onnx",
                "timm_convnext_dynamo.onnx", "timm_convnext_ts17.onnx")
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
    _drop_stack_traces(path)


def hf_gpt2(path: Path, dynamo: bool) -> None:
    """Two of Hugging Face transformers' ``GPT2Block`` and the final LayerNorm (hidden 32, 4 heads,
    eager attention, seed 0) on ``[B,T,32]`` with B and T symbolic: every FC layer is transformers'
    ``Conv1D``, as the TorchScript exporter (opset 17: sizes traced through Shape/Gather/Unsqueeze/
    Concat) or the dynamo exporter (opset 18: Shape with start/end, and the attention's c_proj reading
    the [B,T,4,8] heads through one Reshape) writes it."""
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager")
    gpt2 = GPT2Model(config).eval()

    class Blocks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.h, self.ln_f = gpt2.h, gpt2.ln_f

        def forward(self, hidden):
            for block in self.h:
                out = block(hidden)
                hidden = out[0] if isinstance(out, tuple) else out
            return self.ln_f(hidden)

    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        if dynamo:
            program = torch.onnx.export(Blocks().eval(), (x,), dynamo=True, opset_version=18, input_names=["hidden"],
                                        output_names=["out"], external_data=False, dynamic_shapes=(
                                            {0: torch.export.Dim("B"), 1: torch.export.Dim("T", max=64)},))
            program.save(str(path))
            _drop_stack_traces(path)
        else:
            torch.onnx.export(Blocks().eval(), (x,), str(path), dynamo=False, opset_version=17, input_names=["hidden"],
                              output_names=["out"], dynamic_axes={"hidden": {0: "B", 1: "T"}, "out": {0: "B", 1: "T"}})


def _drop_stack_traces(path: Path) -> None:
    """The dynamo exporter records each node's Python stack, with this machine's paths: not kept."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(model, str(path))


def timm_convnext(path: Path, dynamo: bool) -> None:
    """A 2-stage ConvNeXt (dims 16 and 32, one block each, 10 classes, input [1,3,32,32]) written with
    the torch ops of timm 1.0's ``ConvNeXt(conv_mlp=False)`` (stem, LayerNorm2d, ConvNeXtBlock with
    ``ls_init_value``, the downsample, ``NormMlpClassifierHead``) so that no timm is needed; exported by
    the dynamo exporter (opset 20 here: LayerNormalization, Gelu) or by the TorchScript one at opset 17."""
    import torch
    from torch import nn
    from torch.nn import functional

    class LayerNorm2d(nn.LayerNorm):  # timm.layers.LayerNorm2d
        def forward(self, x):
            x = x.permute(0, 2, 3, 1)
            x = functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
            return x.permute(0, 3, 1, 2)

    class Block(nn.Module):  # timm ConvNeXtBlock, conv_mlp=False: the MLP runs channels-last
        def __init__(self, dim):
            super().__init__()
            self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
            self.gamma = nn.Parameter(torch.rand(dim) * 2 - 1)  # trained-like, not the 1e-6 it starts at

        def forward(self, x):
            shortcut = x
            x = self.conv_dw(x).permute(0, 2, 3, 1)
            x = self.fc2(self.act(self.fc1(self.norm(x)))).permute(0, 3, 1, 2)
            return x.mul(self.gamma.reshape(1, -1, 1, 1)) + shortcut

    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 4, stride=4), LayerNorm2d(16, eps=1e-6), Block(16),
        LayerNorm2d(16, eps=1e-6), nn.Conv2d(16, 32, 2, stride=2), Block(32),
        nn.AdaptiveAvgPool2d(1), LayerNorm2d(32, eps=1e-6), nn.Flatten(1), nn.Linear(32, 10)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        if dynamo:
            torch.onnx.export(model, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                              external_data=False).save(str(path))
            _drop_stack_traces(path)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["logits"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch_encoder_layer(args.out / TORCH_MODELS[0])
    hf_gpt2(args.out / TORCH_MODELS[1], dynamo=False)
    hf_gpt2(args.out / TORCH_MODELS[2], dynamo=True)
    timm_convnext(args.out / TORCH_MODELS[3], dynamo=True)
    timm_convnext(args.out / TORCH_MODELS[4], dynamo=False)
    for name in TORCH_MODELS:
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
