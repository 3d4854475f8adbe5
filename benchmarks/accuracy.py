"""FP8 accuracy on real pretrained weights, with paired bootstrap 95% CIs on every delta.

Two tasks, each a linear probe fitted on FP32 features (fixed split and seed) and then fed the
features every variant computes for the same test items:
  text    all-MiniLM-L6-v2 sentence embeddings, Rotten Tomatoes fresh/rotten: every held-out snippet
  vision  DINOv2 ViT-S/14 features (CLS + mean patch), Fashion-MNIST at 112 px: all 10,000 test images

Variants: FP32 torch (the reference), a plain FP16 ONNX file (no FP8: the deployment baseline),
fxq's default FP8 (torch and ONNX FP16), fxq with the budgeted fallback (torch and ONNX FP16) at a
budget chosen on an eval split disjoint from the test set, the same with every attention block
kept in FP8, and the gemm-only preset. Every delta is paired: the same bootstrap resample of test
items is applied to both variants.

    python -m benchmarks.accuracy --tasks vision --device cuda --out-dir results/acc   # one task
    python -m benchmarks.accuracy --quick                                             # smoke run
    python -m benchmarks.accuracy --save-bundle DIR --tasks vision    # weights + data for another machine
    python -m benchmarks.accuracy --bundle DIR ...                    # run from such a bundle
    python -m benchmarks.accuracy --report results/acc                # JSON results -> results/accuracy.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

# This module is the command line; the work is in accuracy_tasks (data, features, FP32 probe, paired scoring),
# accuracy_variants (how each variant is quantized), accuracy_run (one task's run), accuracy_onnx_from
# (--onnx-from) and accuracy_report (--report). Those that import fxq set HF_HUB_OFFLINE first.
from benchmarks.accuracy_onnx_from import onnx_from
from benchmarks.accuracy_report import report
from benchmarks.accuracy_run import run_task
from benchmarks.accuracy_tasks import BOOTSTRAP, SEED, SIZES, load_task, save_bundle
from benchmarks.accuracy_variants import BUDGET_FRACTIONS, MIN_GEMM_SHARE

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--tasks", default="text,vision")
    ap.add_argument("--device", default="cpu", help="torch device for the torch-side rows (ONNX runs on CPU)")
    ap.add_argument("--bundle", type=Path, help="read weights and data from a --save-bundle folder")
    ap.add_argument("--save-bundle", type=Path, metavar="DIR", help="write weights + data for --bundle and exit")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "results" / "acc")
    ap.add_argument("--onnx", default="fxq FP8 + fallback torch;FP16 ONNX;fxq FP8 torch;"
                                      "fxq FP8 + fallback, all attention FP8, torch",
                    help="which variants get an ONNX FP16 row, in order (';'-separated labels)")
    ap.add_argument("--fractions", default=",".join(map(str, BUDGET_FRACTIONS)),
                    help="fallback budgets to try, as fractions of the all-FP8 eval metric")
    ap.add_argument("--fractions-attention-fp8", default=",".join(map(str, BUDGET_FRACTIONS)),
                    help="the same, for the fallback that keeps every attention block in FP8 (GEMMs only)")
    ap.add_argument("--no-sensitivity", action="store_true", help="skip the sensitivity table and plot")
    ap.add_argument("--onnx-minutes", type=float, default=60.0, help="start no ONNX row after this many minutes")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n-eval", type=int, help="eval split size (sensitivity, fallback budget) instead of the default")
    ap.add_argument("--onnx-from", type=Path, metavar="DIR",
                    help="only the ONNX rows (--onnx, ONNX labels), on this CPU, for the torch run in DIR")
    ap.add_argument("--report", type=Path, metavar="DIR", help="only write results/accuracy.md from DIR's JSON")
    args = ap.parse_args(argv)
    torch.manual_seed(SEED)
    sizes = {k: tuple(v) for k, v in SIZES["quick" if args.quick else "full"].items()}
    if args.n_eval:
        sizes = {k: v[:3] + (args.n_eval,) for k, v in sizes.items()}
    if args.save_bundle:
        for name in args.tasks.split(","):
            save_bundle(name, sizes, args.save_bundle)
        return
    if args.report:
        text = report(args.report)
        (ROOT / "results" / "accuracy.md").write_text(text)
        print(text)
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    deadline = start + 60 * args.onnx_minutes
    onnx_rows = [k.strip() for k in args.onnx.split(";") if k.strip()]
    fractions = tuple(float(f) for f in args.fractions.split(","))
    fractions_attn = () if args.fractions_attention_fp8 == "none" else \
        tuple(float(f) for f in args.fractions_attention_fp8.split(","))
    log = lambda s: print(f"[{time.perf_counter() - start:6.0f} s] {s}", flush=True)  # noqa: E731
    for name in args.tasks.split(","):
        log(f"{name}: loading")
        task = load_task(name, sizes, args.bundle, args.batch)
        if args.onnx_from:
            onnx_from(task, args.onnx_from, args.out_dir, onnx_rows, log)
            continue
        run_task(task, args.device, args.out_dir, onnx_rows, deadline, log, fractions, fractions_attn,
                 not args.no_sensitivity)
        note = (f"Linear probe (benchmarks/probe.py, L-BFGS, seed {SEED}) fitted on FP32 torch features of the train "
                "split, applied unchanged to every variant's features of the same test items. Deltas: paired bootstrap "
                f"95% CI ({BOOTSTRAP} resamples of the test items, the same resample for both sides). Agreement: share "
                "of test items whose predicted class equals the FP32 prediction. Fallback budget: the tightest of "
                f"{fractions} (all-attention-FP8 variant: {fractions_attn}) x the all-FP8 metric (1 - cosine of last_hidden_state) on the eval split that keeps "
                f">= {100 * MIN_GEMM_SHARE:.0f}% of GEMM FLOPs in FP8. ONNX: onnxruntime "
                f"{__import__('onnxruntime').__version__} CPU, default optimizations. torch {torch.__version__}, "
                f"{platform.node() or 'host'}: {os.cpu_count()} CPU cores"
                + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else "")
                + f"; {time.strftime('%Y-%m-%d', time.gmtime())}.")
        doc = json.loads((args.out_dir / f"accuracy_{name}.json").read_text())
        doc["note"] = note
        (args.out_dir / f"accuracy_{name}.json").write_text(json.dumps(doc, indent=1))
        log(f"{name}: done")


if __name__ == "__main__":
    main()
