from .cli import main

main(prog_name="onnx-fc2conv")
