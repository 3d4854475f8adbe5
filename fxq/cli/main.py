"""The fxq command line: `fxq quantize`, `fxq sensitivity` and `fxq check`.

This module only parses and dispatches; each command lives in its own module (fxq/cli/quantize.py,
fxq/cli/sensitivity.py, onnx_post/check_cli.py), and fxq/cli/checks.py holds what is checked before
a model loads."""
from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  fxq quantize minilm --out out/minilm_fp8.onnx
  fxq quantize ./my-vit-folder --calib-images ./photos --out vit_fp8.onnx --dtype fp16
  fxq quantize ./my-bert-folder --calib-text sentences.txt --seq-len 128 --save-calib bert.calib.json --out bert.onnx
  fxq quantize vit-base --calib-synthetic 16 --out vit.onnx --report
  fxq quantize vit-base --calib-synthetic 16 --fallback-max-error 0.002 --out vit.onnx
  fxq sensitivity minilm --plot sens.png
  fxq check model.onnx --strict
"""


def parser() -> argparse.ArgumentParser:
    from fxq.cli.quantize import add_parser as add_quantize
    from fxq.cli.sensitivity import add_parser as add_sensitivity

    p = argparse.ArgumentParser(prog="fxq", description="FP8 (E4M3) quantization for TensorRT through torch.export.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True)
    add_quantize(sub, EPILOG)
    add_sensitivity(sub)
    c = sub.add_parser("check", help="TensorRT FP8 readiness of any ONNX file", add_help=False)
    c.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def print_error(command: str, e: BaseException) -> None:
    """One line (and at most two indented ones) on stderr: the message, never a traceback."""
    lines = str(e).strip().splitlines()
    print(f"fxq {command}: error: {lines[0] if lines else type(e).__name__}", file=sys.stderr)
    for line in lines[1:3]:
        print(f"  {line.strip()}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        from onnx_post.check_cli import main as check_main

        return check_main(argv[1:])
    args = parser().parse_args(argv)
    from fxq.cli import quantize as cli_quantize
    from fxq.cli import sensitivity as cli_sensitivity
    from fxq.cli.common import CliError, quiet_dependencies
    from fxq.errors import FxqError

    command = cli_sensitivity if args.command == "sensitivity" else cli_quantize
    try:
        with quiet_dependencies():
            return command.run(args)
    except KeyboardInterrupt:
        print(f"fxq {args.command}: interrupted (no partial output file is left)", file=sys.stderr)
        return 130
    except (CliError, FxqError, ImportError, OSError, ValueError, TypeError) as e:
        print_error(args.command, e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
