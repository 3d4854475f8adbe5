"""The fxq command line: `fxq quantize`, `fxq sensitivity` and `fxq check`."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EPILOG = """examples:
  fxq quantize minilm --out out/minilm_fp8.onnx
  fxq quantize ./my-vit-folder --calib-images ./photos --out vit_fp8.onnx --dtype fp16
  fxq quantize ./my-bert-folder --calib-text sentences.txt --seq-len 128 --save-calib bert.calib.json --out bert.onnx
  fxq quantize vit-base --calib-synthetic 16 --out vit.onnx --report
  fxq quantize vit-base --calib-synthetic 16 --fallback-max-error 0.002 --out vit.onnx
  fxq sensitivity minilm --plot sens.png
  fxq check model.onnx --strict
"""
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
N_EVAL_BUILTIN = 16  # built-in sentences held out from calibration to measure FP8 drift


class CliError(Exception):
    pass


def add_model_arguments(p: argparse.ArgumentParser):
    """The model, calibration-data and config options `fxq quantize` and `fxq sensitivity` share.

    Returns the calibration-source group, so a command can add its own sources to it."""
    from .config import PRESETS
    from .sources import BUILTINS

    p.add_argument("model", help="a local Hugging Face model folder, or a built-in: "
                   + "; ".join(f"{k} ({v})" for k, v in BUILTINS.items()))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--calib-images", type=Path, metavar="DIR", help="folder of calibration images")
    src.add_argument("--calib-text", type=Path, metavar="FILE", help="text file, one calibration sentence per line")
    src.add_argument("--calib-synthetic", type=int, metavar="N", help="N random samples (structure checks only)")
    p.add_argument("--config", type=Path, metavar="JSON", help="QuantConfig as JSON (QuantConfig.to_dict format)")
    p.add_argument("--preset", choices=PRESETS, default="tensorrt-fp8", help="named config (default tensorrt-fp8)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration batch size (default 8)")
    p.add_argument("--seq-len", type=int, default=64, help="text models: fixed sequence length (default 64)")
    p.add_argument("--attn", choices=["eager", "sdpa"], default="eager", help="attention implementation to load")
    return src


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fxq", description="FP8 (E4M3) quantization for TensorRT through torch.export.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize", help="quantize, calibrate and export a model to FP8 ONNX",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    src = add_model_arguments(q)
    src.add_argument("--load-calib", type=Path, metavar="JSON", help="reuse a saved calibration instead of calibrating")
    q.add_argument("--out", required=True, type=Path, help="ONNX file to write")
    q.add_argument("--save-calib", type=Path, metavar="JSON", help="save the calibration results")
    q.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="graph dtype (default fp16)")
    q.add_argument("--opset", type=int, default=None, help="ONNX opset (>= 19; default 21, 23 for --dtype bf16)")
    q.add_argument("--static-batch", action="store_true", help="export a fixed batch size instead of a dynamic one")
    q.add_argument("--dynamic-seq", action="store_true",
                   help="text models: dynamic sequence length (TensorRT may not fuse FP8 attention then; see fxq check)")
    q.add_argument("--report", action="store_true", help="print the per-quantizer table")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.add_argument("--fallback-max-error", type=float, metavar="X",
                   help="leave in FP16 the fewest GEMM/attention FLOPs that bring 1 - cosine on the held-out "
                        "batch within X (fxq.Fallback)")
    from .sensitivity_cli import add_parser as add_sensitivity

    add_sensitivity(sub)
    c = sub.add_parser("check", help="TensorRT FP8 readiness of any ONNX file", add_help=False)
    c.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def _config(args):
    from .config import preset
    from .validate import config_file

    return preset(args.preset) if args.config is None else config_file(args.config)


def _check_arguments(args) -> None:
    """Everything that can be checked before loading a model or calibrating (fxq/validate.py)."""
    from . import validate

    import torch

    from .onnx_export import pick_opset

    pick_opset(getattr(torch, DTYPES[args.dtype]), args.opset)  # bf16 needs opset >= 22
    validate.seq_len(args.seq_len)
    validate.output_path(args.out, "--out")
    if args.save_calib is not None:
        validate.output_path(args.save_calib, "--save-calib")
        if args.save_calib.resolve() == args.out.resolve():
            raise CliError(f"--save-calib and --out are the same file ({args.out}); the ONNX would overwrite the "
                           "calibration; fix: give the calibration its own name, e.g. model.calib.json")


def _calibration_items(args) -> list | None:
    """Read calibration files before the (slow) model load, so bad paths fail fast."""
    from .sources import read_images, read_texts

    if args.batch_size < 1:
        raise CliError("--batch-size must be at least 1")
    if args.calib_synthetic is not None and args.calib_synthetic < 1:
        raise CliError("--calib-synthetic needs a positive number of samples")
    if args.calib_text is not None:
        return read_texts(args.calib_text)
    if args.calib_images is not None:
        return read_images(args.calib_images)
    return None


def _calibration(args, source, items):
    """(calibration batches, held-out evaluation batch)."""
    from .sources import batched

    if args.calib_text is not None and source.kind != "text":
        raise CliError(f"--calib-text needs a text model; {source.name} takes images (use --calib-images)")
    if args.calib_images is not None and source.kind != "vision":
        raise CliError(f"--calib-images needs a vision model; {source.name} takes text (use --calib-text)")
    if items is not None:  # user data: evaluate on the first calibration batch
        batches = [source.encode(b) for b in batched(items, args.batch_size)]
        return batches, batches[0]
    if args.calib_synthetic is not None:
        n = args.calib_synthetic
        batches = [source.synthetic(min(args.batch_size, n - i)) for i in range(0, n, args.batch_size)]
        return batches, source.synthetic(4)
    if args.load_calib is not None:
        return None, source.synthetic(4)
    if source.default_texts:  # built-in sentences: calibrate on most, evaluate on the held-out rest
        texts = source.default_texts
        calib, held_out = texts[:-N_EVAL_BUILTIN], texts[-N_EVAL_BUILTIN:]
        return [source.encode(b) for b in batched(calib, args.batch_size)], source.encode(held_out)
    raise CliError(f"no calibration data for {source.name}: pass --calib-images, --calib-text or --calib-synthetic N")


def _quantize(args) -> int:
    import torch
    import transformers

    import fxq
    from onnx_post.checker import check_model

    from .sources import load_source
    from .verify import compare, first_output, run_onnx
    from .zoo import sentence_embedding

    times = {}
    t = time.perf_counter()
    _check_arguments(args)
    config = _config(args)
    items = _calibration_items(args)
    if args.quiet:
        transformers.utils.logging.disable_progress_bar()
    source = load_source(args.model, args.seq_len, args.attn)
    if source.kind == "text":
        from .validate import seq_len

        seq_len(args.seq_len, getattr(getattr(source.model, "config", None), "max_position_embeddings", None))
    batches, eval_batch = _calibration(args, source, items)
    times["load"] = time.perf_counter() - t

    t = time.perf_counter()
    example = batches[0] if batches else eval_batch
    fallback = None if args.fallback_max_error is None else fxq.Fallback([eval_batch], args.fallback_max_error)
    qm = fxq.quantize(source.model, example, batches, config, calibration=args.load_calib,
                      dynamic_batch=not args.static_batch, dynamic_seq=args.dynamic_seq, progress=not args.quiet,
                      fallback=fallback)
    times["quantize+calibrate"] = time.perf_counter() - t
    if args.save_calib:
        qm.save_calibration(args.save_calib)
    print(qm.report().table() if args.report else qm.report().summary())
    if fallback is not None:
        p = qm.fallback_plan
        print(f"fallback: 1 - cosine {p.all_fp8:.3g} all FP8 -> {p.final:.3g} (budget {p.max_error:.3g}) with "
              f"{len(p.choices)} groups in FP16: " + (", ".join(f"{c.group} (gain {c.gain:.2g})" for c in p.choices)
                                                     or "none needed"))

    dtype = getattr(torch, DTYPES[args.dtype])
    result = qm.export_onnx(args.out, dtype=dtype, opset=args.opset)
    times["export"] = result.seconds.get("convert_dtype", 0) + result.seconds["onnx_export"] + result.seconds["save"]
    times["post-process"] = result.seconds.get("post_process", 0.0)

    t = time.perf_counter()
    readiness = check_model(result.path)
    times["check"] = time.perf_counter() - t

    t = time.perf_counter()
    eval_inputs = eval_batch if not args.static_batch else {k: v[: example[k].shape[0]] for k, v in eval_batch.items()}
    with torch.no_grad():
        ref, fq = first_output(source.model(**eval_inputs)), first_output(qm(**eval_inputs))
    ort = torch.from_numpy(run_onnx(result.path, eval_inputs, dtype)[0]).float()
    ort_label = f"FP8 ONNX {args.dtype} (onnxruntime" + (", FP32 upcast copy)" if dtype == torch.bfloat16 else ")")
    rows = [("FP8 torch (fake-quant)", compare(ref, fq)), (ort_label, compare(ref, ort))]
    if source.kind == "text":
        mask = eval_inputs["attention_mask"]
        e32 = sentence_embedding(ref, mask)
        for label, out in (("FP8 torch sentence embedding", fq), (f"FP8 ONNX {args.dtype} sentence embedding", ort)):
            e8 = sentence_embedding(out, mask)
            cos = torch.nn.functional.cosine_similarity(e32, e8, dim=-1)
            rows.append((label, {"cosine": float(cos.mean()), "min_cosine": float(cos.min())}))
    times["verify"] = time.perf_counter() - t

    print(f"\nTensorRT readiness ({result.path}): {readiness.summary()}")
    print(f"\nFP8 vs FP32 on {len(next(iter(eval_inputs.values())))} held-out samples ({source.name}):")
    for label, m in rows:
        if m.get("nonfinite") or m.get("reference_nonfinite"):
            which = "FP8" if m.get("nonfinite") else "FP32 reference"
            n = m.get("nonfinite") or m.get("reference_nonfinite")
            print(f"  {label:<40} non-finite: {which} output has {n} NaN/inf values")
            continue
        print(f"  {label:<40} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    print(f"\nfile: {result.path} ({result.bytes / 2**20:.1f} MiB, {args.dtype}, opset {result.opset})")
    print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
    broken = [label for label, m in rows if m.get("nonfinite") or m.get("reference_nonfinite")]
    if broken:  # a file that computes NaN is not a result: say so and fail
        print(f"fxq quantize: error: {broken[0]} output is non-finite (NaN/inf) on the evaluation batch; "
              f"{result.path} is written but unusable; fix: run `fxq check {result.path} --verify`", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        from onnx_post.check_cli import main as check_main

        return check_main(argv[1:])
    args = _parser().parse_args(argv)
    from .errors import FxqError

    try:
        if args.command == "sensitivity":
            from .sensitivity_cli import run

            return run(args)
        return _quantize(args)
    except KeyboardInterrupt:
        print(f"fxq {args.command}: interrupted (no partial output file is left)", file=sys.stderr)
        return 130
    except (CliError, FxqError, ImportError, OSError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()
        print(f"fxq {args.command}: error: {first[0] if first else type(e).__name__}", file=sys.stderr)
        for line in first[1:3]:
            print(f"  {line.strip()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
