"""`fxq check MODEL.onnx [--json] [--strict] [--verify]`: TensorRT FP8 readiness report for any ONNX file.

Also `python -m onnx_post MODEL.onnx ...` on a machine without torch or fxq (onnx_post/__main__.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap

from google.protobuf.message import DecodeError

from onnx_post.checker import REASONS, InvalidModelError, NotOnnxModelError, UnloadableFileError, check_model
from onnx_post.external_data import ExternalDataError
from onnx_post.checker_verify import VerifyError, format_verify, verify_outputs

CODE_WIDTH = max(map(len, REASONS)) + 2  # the longest code and two spaces before its text

EPILOG = """\
example:
  fxq check out/vit_fp8.onnx            # per-layer table, then the summary line
  fxq check out/vit_fp8.onnx --strict   # exit 1 if any GEMM or attention block is not ready
  fxq check model.onnx --json > readiness.json
  fxq check model.onnx --verify         # also run onnxruntime on random inputs; exit 1 on NaN/inf outputs

exit codes: 0 checked (and, with --strict, all ready), 1 not ready with --strict (skipped by design
does not count: GEMMs with K or N < 16 or GEMVs, float attention blocks whose head size is outside
TensorRT's window; numeric problems do count), or --verify found non-finite outputs, 2 bad arguments
or a file that cannot be read or is not valid (not ONNX, not a regular file, rejected by onnx.checker,
external data truncated or outside the model's folder, ...).

reason codes:
""" + "\n".join(textwrap.fill(text, 100, initial_indent=f"  {code:{CODE_WIDTH}}",
                              subsequent_indent=" " * (CODE_WIDTH + 2))
              for code, text in REASONS.items())


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Say, for every GEMM and attention block of an ONNX model, whether "
                    "TensorRT's FP8 (E4M3) fusion rules are met, and why not where they are not.")
    p.add_argument("model", help="path to the .onnx file (external data is read on demand)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when anything is not ready (for CI)")
    p.add_argument("--verify", action="store_true",
                   help="run onnxruntime on random inputs of the declared shapes; exit 1 on NaN/inf outputs")
    return p


def main(argv: list[str] | None = None, prog: str = "fxq check") -> int:
    def _error(what: str, fix: str) -> int:
        print(f"{prog}: error: {what} ({fix})", file=sys.stderr)
        return 2

    try:
        args = _parser(prog).parse_args(argv)
    except SystemExit as e:  # --help or a usage error: argparse already printed
        return int(e.code or 0)
    try:
        rep = check_model(args.model)
    except IsADirectoryError:
        return _error(f"{args.model} is a directory", "pass the .onnx file inside it")
    except FileNotFoundError:
        return _error(f"no such file: {args.model}", "check the path")
    except (DecodeError, NotOnnxModelError):
        return _error(f"{args.model} is not an ONNX model",
                      "pass a .onnx file written by torch.onnx.export, fxq or ModelOpt")
    except UnloadableFileError as e:
        return _error(str(e), "pass a .onnx file")
    except InvalidModelError as e:
        return _error(f"{args.model} is not a valid ONNX graph: {e}",
                      "onnx.checker.check_model(model, full_check=True) shows the problem")
    except ExternalDataError as e:
        return _error(f"cannot read {args.model}: {e}", e.fix)
    except OSError as e:
        return _error(f"cannot read {args.model}: {e.strerror or e}", "check the file and its permissions")
    if args.verify:
        try:
            rep.verify = verify_outputs(args.model)
        except VerifyError as e:
            return _error(f"{args.model}: {e}", "check the file with onnx.checker.check_model")
    text = rep.format_table() + ("\n\n" + format_verify(rep.verify) if rep.verify else "")
    print(json.dumps(rep.to_dict(), indent=2) if args.json else text)
    if rep.verify is not None and not rep.verify["ok"]:
        return 1
    return 1 if args.strict and not rep.ready else 0


if __name__ == "__main__":
    sys.exit(main())
