"""`python -m onnx_post MODEL.onnx [--json] [--strict] [--verify]`: the readiness checker without torch or fxq."""
import sys

from onnx_post.check_cli import main

sys.exit(main(prog="python -m onnx_post"))
