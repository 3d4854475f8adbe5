"""`fxq quantize MODEL --out FILE`: check, load, quantize, export, check the file, verify it, print."""
from __future__ import annotations

import argparse
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from fxq.cli import checks as cli_checks
from fxq.cli.common import CliError, add_model_arguments, calibration, calibration_items, config, load

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def add_parser(sub, epilog: str) -> None:
    q = sub.add_parser("quantize", help="quantize, calibrate and export a model to FP8 ONNX",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog)
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
    q.add_argument("--fallback-max-error", type=float, metavar="X",
                   help="leave in FP16 the fewest GEMM/attention FLOPs that bring 1 - cosine on the held-out "
                        "batch within X (fxq.Fallback)")


def check_arguments(args) -> None:
    """Everything that can be checked before loading a model or calibrating."""
    import torch

    from fxq.export.to_onnx import pick_opset

    cli_checks.before_loading(args, {"--out": args.out, "--save-calib": args.save_calib})
    pick_opset(getattr(torch, DTYPES[args.dtype]), args.opset)  # bf16 needs opset >= 22
    x = args.fallback_max_error
    if x is not None and not (math.isfinite(x) and x >= 0):  # fxq.Fallback's own rule, said before the load
        raise CliError(f"--fallback-max-error {x}: Fallback max_error must be a finite number >= 0 (the budget for "
                       "1 - cosine); fix: e.g. --fallback-max-error 0.002")


@contextmanager
def timed(times: dict, stage: str):
    t = time.perf_counter()
    yield
    times[stage] = times.get(stage, 0.0) + time.perf_counter() - t


def quantize(args, source, batches, eval_batch, cfg):
    """The fxq.QuantizedModel (calibrated, or from --load-calib; with --fallback-max-error, fallback searched)."""
    import fxq

    example = batches[0] if batches else eval_batch
    fallback = None if args.fallback_max_error is None else fxq.Fallback([eval_batch], args.fallback_max_error)
    qm = fxq.quantize(source.model, example, batches, cfg, calibration=args.load_calib,
                      dynamic_batch=not args.static_batch, dynamic_seq=args.dynamic_seq, progress=not args.quiet,
                      fallback=fallback)
    return qm, example


def describe_quantization(args, qm) -> None:
    print(qm.report().table() if args.report else qm.report().summary())
    if args.fallback_max_error is not None:
        p = qm.fallback_plan
        print(f"fallback: 1 - cosine {p.all_fp8:.3g} all FP8 -> {p.final:.3g} (budget {p.max_error:.3g}) with "
              f"{len(p.choices)} groups in FP16: " + (", ".join(f"{c.group} (gain {c.gain:.2g})" for c in p.choices)
                                                     or "none needed"))


def export(args, qm, times: dict):
    """The ExportResult of writing --out; its stage times go into `times`."""
    import torch

    result = qm.export_onnx(args.out, dtype=getattr(torch, DTYPES[args.dtype]), opset=args.opset)
    times["export"] = result.seconds.get("convert_dtype", 0) + result.seconds["onnx_export"] + result.seconds["save"]
    times["post-process"] = result.seconds.get("post_process", 0.0)
    return result


def verify(args, source, qm, example, eval_batch, path) -> tuple[list[tuple[str, dict]], int]:
    """((label, metrics) of the fake-quant model and the ONNX file against the float model, samples)."""
    import torch

    from fxq.verify import compare, first_output, run_onnx
    from fxq.cli.zoo import sentence_embedding

    inputs = eval_batch if not args.static_batch else {k: v[: example[k].shape[0]] for k, v in eval_batch.items()}
    with torch.no_grad():
        ref, fq = first_output(source.model(**inputs)), first_output(qm(**inputs))
    dtype = getattr(torch, DTYPES[args.dtype])
    ort = torch.from_numpy(run_onnx(path, inputs, dtype)[0]).float()
    ort_label = f"FP8 ONNX {args.dtype} (onnxruntime" + (", FP32 upcast copy)" if dtype == torch.bfloat16 else ")")
    rows = [("FP8 torch (fake-quant)", compare(ref, fq)), (ort_label, compare(ref, ort))]
    if source.kind == "text":
        mask = inputs["attention_mask"]
        e32 = sentence_embedding(ref, mask)
        for label, out in (("FP8 torch sentence embedding", fq), (f"FP8 ONNX {args.dtype} sentence embedding", ort)):
            cos = torch.nn.functional.cosine_similarity(e32, sentence_embedding(out, mask), dim=-1)
            rows.append((label, {"cosine": float(cos.mean()), "min_cosine": float(cos.min())}))
    return rows, len(ref)


def nonfinite(metrics: dict) -> bool:
    return bool(metrics.get("nonfinite") or metrics.get("reference_nonfinite"))


def print_results(args, source, result, readiness, rows, samples: int, times: dict) -> None:
    print(f"\nTensorRT readiness ({result.path}): {readiness.summary()}")
    print(f"\nFP8 vs FP32 on {samples} held-out samples ({source.name}):")
    for label, m in rows:
        if nonfinite(m):
            which = "FP8" if m.get("nonfinite") else "FP32 reference"
            print(f"  {label:<40} non-finite: {which} output has {m.get('nonfinite') or m.get('reference_nonfinite')}"
                  " NaN/inf values")
            continue
        print(f"  {label:<40} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    print(f"\nfile: {result.path} ({result.bytes / 2**20:.1f} MiB, {args.dtype}, opset {result.opset})")
    print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))


def run(args) -> int:
    from onnx_post.checker import check_model

    times = {}
    with timed(times, "load"):
        check_arguments(args)
        cfg, items = config(args), calibration_items(args)
        source = load(args)
        batches, eval_batch = calibration(args, source, items)
    with timed(times, "quantize+calibrate"):
        qm, example = quantize(args, source, batches, eval_batch, cfg)
    if args.save_calib:
        qm.save_calibration(args.save_calib)
    describe_quantization(args, qm)
    result = export(args, qm, times)
    with timed(times, "check"):
        readiness = check_model(result.path)
    with timed(times, "verify"):
        rows, samples = verify(args, source, qm, example, eval_batch, result.path)
    print_results(args, source, result, readiness, rows, samples, times)
    broken = [label for label, m in rows if nonfinite(m)]
    if broken:  # a file that computes NaN is not a result: say so and fail
        print(f"fxq quantize: error: {broken[0]} output is non-finite (NaN/inf) on the evaluation batch; "
              f"{result.path} is written but unusable; fix: run `fxq check {result.path} --verify`", file=sys.stderr)
        return 1
    return 0
