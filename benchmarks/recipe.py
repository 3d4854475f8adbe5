"""The accuracy levers measured together, and NVIDIA ModelOpt on the same test items (issue 19).

Per task (benchmarks/accuracy.py: DINOv2 / Fashion-MNIST, MiniLM / Rotten Tomatoes), one FP32 probe and
one paired bootstrap, then every combination that matters: key centering x per-channel weights
(x GPTQ), each with and without the budgeted fallback (a cosine budget keeping every attention block in
FP8, and a prediction-flip budget of 0.5% on the eval split), plus ModelOpt 0.47's FP8 recipe (MHA
quantized, as in its ViT example) in torch and, on a documented subset, its FP16 ONNX in onnxruntime.
Results go to OUT/recipe_<task>.json after every row, so a cut run keeps what it measured.

    python -m benchmarks.recipe --quick                                   # CPU smoke run
    python -m benchmarks.recipe --device cuda --bundle B --onnx-n 2000    # the full run (one H200)
    python -m benchmarks.recipe_report OUT --out results/accuracy.md --section   # JSON -> the recipe section
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks import accuracy_tasks as T
from benchmarks import accuracy_variants as V
from benchmarks.recipe_explain import ablation_rows, fp16_graph_rows
from fxq.accuracy.groups import Evaluator, fp8_gemm_flop_share, fp8_gemms

ROOT = Path(__file__).resolve().parents[1]
MODELOPT_PY = ROOT / ".venv-modelopt" / "bin" / "python"
ABLATED = "fxq K centered + per-channel W"  # the recipe --ablation takes apart
FLIP_BUDGET = 0.005  # share of eval-split predictions allowed to flip against FP32 (issue 19)
# name -> (probe train n, test n (None = all), calib n, eval split n for the fallback)
SIZES = {"full": {"text": (3000, None, 256, 256), "vision": (5000, None, 256, 512)},
         "quick": {"text": (200, 128, 32, 64), "vision": (200, 128, 32, 64)}}


@dataclass(frozen=True)
class Recipe:
    """One combination of fxq's accuracy levers."""

    label: str
    center_keys: bool = False
    weight_axis: int | None = None
    weight_rounding: str = "nearest"
    fallback: str | None = None  # None, "cosine" (GEMMs only, every attention block stays FP8), "cosine-all" or "flip"

    def config(self):
        import fxq

        return dataclasses.replace(fxq.preset("tensorrt-fp8"), weight_axis=self.weight_axis,
                                   weight_rounding=self.weight_rounding)


RECIPES = (
    Recipe("fxq default"),
    Recipe("fxq K centered", center_keys=True),
    Recipe("fxq per-channel W", weight_axis=0),
    Recipe("fxq K centered + per-channel W", center_keys=True, weight_axis=0),
    Recipe("fxq K centered + per-channel W + GPTQ", center_keys=True, weight_axis=0, weight_rounding="gptq"),
    Recipe("fxq K centered + per-channel W + fallback (GEMMs, cosine budget)", True, 0, fallback="cosine"),
    Recipe("fxq K centered + per-channel W + fallback (any group, cosine budget)", True, 0, fallback="cosine-all"),
    Recipe("fxq default + fallback (0.5% flip budget)", fallback="flip"),
    Recipe("fxq K centered + per-channel W + fallback (0.5% flip budget)", True, 0, fallback="flip"),
)


def flip_metric(probe, features):
    """Share of items whose probe prediction differs between the reference and the quantized output."""
    from fxq.verify import first_output

    def metric(ref, out):
        a = probe.predict(features(first_output(ref), None).cpu())
        b = probe.predict(features(first_output(out), None).cpu())
        return float((a != b).double().mean())
    return metric


def counts(qm) -> dict:
    p = qm.placement
    info = V._placement_info(qm)
    info.update(gemms_fp8=len(fp8_gemms(p)), gemms=sum(1 for g in p.groups if g.kind == "gemm"))
    return info


def quantize_recipe(task, recipe: Recipe, models: dict, base, device, log):
    """(QuantizedModel, extra info) for one recipe; the fallback budget is decided on the eval split only."""
    import fxq

    model = models["centered" if recipe.center_keys else "plain"]
    if recipe.fallback is None:
        return V._quantize(task, model, recipe.config(), device), {}
    evals = [T._to(b, device) for b in task.evals]
    if recipe.fallback == "flip":
        fb = fxq.Fallback(evals, FLIP_BUDGET, metric=flip_metric(base.probe, task.features))
        return V._quantize(task, model, recipe.config(), device, fallback=fb), {"budget": f"{FLIP_BUDGET:.1%} flips"}
    plain = V._quantize(task, model, recipe.config(), device)
    all_fp8 = Evaluator(model, plain.graph_module, evals, None).measure()
    kinds = ("gemm",) if recipe.fallback == "cosine" else ("attention", "gemm")
    chosen = None
    for frac in (0.9, 0.8, 0.7, 0.6, 0.5):  # the tightest that keeps >= 90% of GEMM FLOPs in FP8
        try:
            qm = V._quantize(task, model, recipe.config(), device,
                             fallback=fxq.Fallback(evals, frac * all_fp8, kinds=kinds))
        except fxq.ConfigError as e:  # out of reach with GEMMs alone
            log(f"    budget {frac}x: {e}")
            break
        share = fp8_gemm_flop_share(qm.placement)
        log(f"    budget {frac}x all-FP8 cosine ({frac * all_fp8:.2e}): GEMM FP8 {100 * share:.1f}%")
        if share < V.MIN_GEMM_SHARE:
            break
        chosen = (qm, {"budget": f"{frac}x all-FP8 eval 1-cosine ({frac * all_fp8:.2e})"})
    return chosen or (plain, {"budget": "none kept >= 90% GEMM FLOPs FP8: no fallback"})


def sizes_of(args) -> dict:
    """SIZES for --quick or the full run, with --n-train / --n-test / --n-eval applied to every task."""
    over = (args.n_train, args.n_test, None, args.n_eval)
    return {k: tuple(o if o is not None else d for o, d in zip(over, v))
            for k, v in SIZES["quick" if args.quick else "full"].items()}


def size_args(args) -> list[str]:
    return ["--quick"] * args.quick + [a for k in ("n_train", "n_test", "n_eval") if getattr(args, k) is not None
                                       for a in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]


def modelopt_rows(task_name, args, out_dir: Path, log) -> dict | None:
    """ModelOpt's FP8 recipe in its own process (its venv here, the same python where it is installed)."""
    py = MODELOPT_PY if MODELOPT_PY.exists() else Path(sys.executable)
    cmd = [str(py), "-m", "benchmarks.recipe_modelopt", "--task", task_name, "--device", args.device,
           "--out", str(out_dir), "--batch", str(args.batch)] + size_args(args) + \
        (["--bundle", str(args.bundle)] if args.bundle else []) + (["--no-onnx"] if args.onnx_n <= 0 else [])
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode:
        log(f"  ModelOpt failed (rc {p.returncode}): {p.stderr.strip().splitlines()[-1:] or p.stdout[-300:]}")
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads((out_dir / f"modelopt_{task_name}.json").read_text())


def run_task(task, args, out_dir: Path, log) -> None:
    import fxq
    from benchmarks.recipe_onnx import FP16_ORT, onnx_rows, subset

    t0 = time.perf_counter()
    task.model.to(args.device)  # the bundle loads on the CPU
    base = T.fp32_baseline(task, args.device)
    doc = {"task": task.name, "model": task.model_name, "info": task.info, "n_test": len(base.correct),
           "n_train": len(task.train_labels), "n_eval": sum(len(next(iter(b.values()))) for b in task.evals),
           "device": args.device, "onnx_n": args.onnx_n, "rows": {}, "argv": sys.argv[1:], "note": _note(args)}
    correct = {"FP32 torch": base.correct}

    def add(label, row, info=None):
        correct[label] = row.pop("correct")
        row.pop("vs_delta_pp", None)
        doc["rows"][label] = {**row, **(info or {})}
        fp16 = correct.get(FP16_ORT)
        for lab, r in doc["rows"].items():  # ONNX rows against plain FP16 ONNX, paired on the same subset
            if "n" in r and fp16 is not None and lab != FP16_ORT and len(correct[lab]) == len(fp16):
                d = T.paired_delta(correct[lab], fp16, subset(task, base, r["n"])[1].boot)
                r.update({f"vs_{k}": v for k, v in d.items()})
        json_out = json.dumps(doc, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
        (out_dir / f"recipe_{task.name}.json").write_text(json_out)
        np.savez_compressed(out_dir / f"recipe_correct_{task.name}.npz", **correct)
        r = doc["rows"][label]
        log(f"  {label}: {100 * r['acc']:.2f}% ({r['delta_pp']:+.2f} pp [{r['ci_lo']:+.2f}, {r['ci_hi']:+.2f}])"
            + (f" GEMMs FP8 {r['gemms_fp8']}/{r['gemms']} ({100 * r['gemm_fp8_share']:.1f}% FLOPs), attention "
               f"{r['attention_fp8']}/{r['attention_blocks']}" if "gemms" in r else ""))

    log(f"  FP32 features + probe: {time.perf_counter() - t0:.0f} s")
    models = {"plain": task.model.to(args.device)}
    centered, n = fxq.center_attention_keys(models["plain"], T._to(task.example, args.device),
                                            [T._to(b, args.device) for b in task.calib])
    models["centered"] = centered
    doc["k_centered"] = n
    qms = {}

    def torch_rows(with_fallback: bool):
        for recipe in RECIPES:
            if recipe.label not in args.recipes or (recipe.fallback is not None) != with_fallback or \
                    (recipe.fallback == "flip" and task.name != "vision"):
                continue  # the flip metric reads features from the output alone: vision's CLS ++ mean patch
            t = time.perf_counter()
            try:
                qm, extra = quantize_recipe(task, recipe, models, base, args.device, log)
            except Exception as e:  # keep going: one lever failing is a result too
                log(f"  {recipe.label} failed: {type(e).__name__}: {e}")
                continue
            qms[recipe.label] = qm
            row = base.score(T.torch_features(task, qm, task.test, args.device))
            add(recipe.label + " torch", row, {**counts(qm), **extra, "seconds": time.perf_counter() - t,
                                               "recipe": dataclasses.asdict(recipe)})

    torch_rows(with_fallback=False)
    torch_rows(with_fallback=True)
    try:  # explanatory rows: one failing must not stop ModelOpt's and the ONNX rows
        if args.ablation:
            ablation_rows(task, base, next(r for r in RECIPES if r.label == ABLATED), models, args.device, add)
        if args.fp16_graph:
            fp16_graph_rows(task, base, qms, models, args.device, add, log)
    except Exception as e:  # noqa: BLE001
        log(f"  failed: {type(e).__name__}: {e}")
    if not args.no_modelopt:
        mo = modelopt_rows(task.name, args, out_dir, log)
        doc["modelopt"] = mo
        feats = out_dir / f"modelopt_features_{task.name}.pt"
        if mo and "error" not in mo and feats.is_file():
            add("ModelOpt FP8 (MHA) torch", base.score(torch.load(feats)), {"attention_fp8": mo["attention_fp8"],
                "attention_blocks": mo["attention_blocks"], "gemms_fp8": mo["gemms_fp8"], "gemms": mo["gemms"],
                "gemm_fp8_share": mo["gemm_fp8_share"], "fallback": []})
    onnx_rows(task, base, args, models, qms, doc, add, log)  # last: the slow part, cut by --minutes
    log(f"  {task.name} done in {time.perf_counter() - t0:.0f} s")


def _note(args) -> str:
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    import transformers

    return (f"{dev}, {os.cpu_count()} CPU cores, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"onnxruntime {__import__('onnxruntime').__version__} (CPU), {platform.node() or 'host'}, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (CPU smoke run)")
    ap.add_argument("--tasks", default="vision,text")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bundle", type=Path, help="weights + data written by benchmarks.accuracy --save-bundle")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "results" / "tmp" / "recipe")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--onnx-n", type=int, default=2000, help="test items per ONNX row (0: none)")
    ap.add_argument("--minutes", type=float, default=60.0, help="start no ONNX row this many minutes after the start")
    ap.add_argument("--n-train", type=int, help="probe train items (default: SIZES)")
    ap.add_argument("--n-test", type=int, help="test items (default: SIZES; full: every test item)")
    ap.add_argument("--n-eval", type=int, help="eval split items for the fallback (default: SIZES)")
    ap.add_argument("--recipes", default="all", help="';'-separated recipe labels (default all)")
    ap.add_argument("--no-modelopt", action="store_true")
    ap.add_argument("--fp16-graph", action="store_true",
                    help="also score each recipe's program converted to FP16 (the ONNX graph's numerics) in torch")
    ap.add_argument("--ablation", action="store_true", help=f"also score {ABLATED!r} with one role class float")
    ap.add_argument("--save-bundle", type=Path, metavar="DIR", help="write weights + data for --bundle and exit")
    args = ap.parse_args(argv)
    args.recipes = [r.label for r in RECIPES] if args.recipes == "all" else args.recipes.split(";")
    torch.manual_seed(T.SEED)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    start = args.start = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - start:6.0f} s] {s}", flush=True)  # noqa: E731
    sizes = sizes_of(args)
    for name in args.tasks.split(","):
        if args.save_bundle:
            T.save_bundle(name, sizes, args.save_bundle)
            continue
        log(f"{name}: loading")
        run_task(T.load_task(name, sizes, args.bundle, args.batch), args, args.out_dir, log)


if __name__ == "__main__":
    main()
