"""fxq vs NVIDIA ModelOpt, side by side on the same models, machine and calibration batches.

Per model, each tool's whole pipeline runs in a fresh process (benchmarks/pipeline_stage.py;
ModelOpt's in .venv-modelopt), repeated and interleaved, medians reported. Then both FP16 ONNX
files go through fxq's TensorRT-readiness checker and, for the two pretrained models, through
the accuracy probes of benchmarks/accuracy.py in onnxruntime.

    python -m benchmarks.vs_modelopt                # writes results/vs_modelopt.md
    python -m benchmarks.vs_modelopt --quick        # 1 repeat, tiny eval, results/vs_modelopt_quick.md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import accuracy_tasks as T
from benchmarks import datasets as D

ROOT = Path(__file__).resolve().parents[1]
MODELOPT_PY = ROOT / ".venv-modelopt" / "bin" / "python"
MODELS = {  # name -> (label, accuracy task or None, calibration samples)
    "vit_base": ("ViT-base (HF ViTConfig(), random init)", None, 32),
    "minilm": ("all-MiniLM-L6-v2", "text", 256),
    "dinov2": ("DINOv2 ViT-S/14", "vision", 256),
}
STAGES = ("quantize", "export", "post_process", "save", "total", "peak_rss_mb", "bytes")


def calibration_batches(model: str, n: int) -> dict:
    """The calibration batches both tools get (train side only), batches of 32."""
    if model == "minilm":
        calib = T.load_task("text", {"text": (n, 1, n, 0)}, None, 32).calib  # (train, test, calib, eval) sizes
    else:
        size = 224 if model == "vit_base" else T.IMAGE_SIZE
        images, _ = D.fashion_mnist("train", n)
        calib = [{"pixel_values": D.fashion_mnist_pixels(c, size)} for c in T._chunks(images, 32)]
    return {"example": {k: v[:2] for k, v in calib[0].items()}, "calib": calib}


def run_stage(tool: str, model: str, batches: Path, out: Path) -> dict:
    py = sys.executable if tool == "fxq" else str(MODELOPT_PY)
    cmd = [py, str(ROOT / "benchmarks" / "pipeline_stage.py"), "--tool", tool, "--model", model,
           "--batches", str(batches), "--out", str(out)]
    # One thread for both tools: on this shared 2-core machine, 2-thread OpenMP regions stall on
    # descheduled threads and the timings swing 2-3x from run to run.
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    if p.returncode or not lines:
        raise RuntimeError(f"{tool} on {model} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    res["process_wall"] = wall
    return res


def median_of(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {"config": runs[0]["config"]}


def readiness(path: Path) -> dict:
    from onnx_post.checker import check_model

    r = check_model(path)
    return {"gemm": f"{sum(g.ready for g in r.gemms)}/{len(r.gemms)}",
            "attn": f"{sum(a.ready for a in r.attention)}/{len(r.attention)}", "casts": r.casts,
            "ready": r.ready, "reasons": sorted({x for g in r.gemms + r.attention for x in g.reasons})}


def onnx_accuracy(task_name: str, files: dict, sizes: tuple) -> dict:
    """Probe on FP32 features, then each ONNX file's features of the same test samples."""
    from fxq.verify import onnx_session

    task = T.load_task(task_name, {task_name: sizes})
    base = T.fp32_baseline(task)
    out = {"n_test": len(task.test_labels), "n_train": len(task.train_labels), "fp32": base.acc, "notes": []}
    for tool, path in files.items():
        try:
            onnx_session(path)
        except Exception as e:  # an invalid file is a result too: report it, keep going
            out[tool] = {"error": str(e).splitlines()[0][:300]}
            continue
        # NOTES: ORT's graph optimizations once broke ModelOpt's graph; check before trusting them.
        b = list(task.test[0].values())
        feed = lambda s: {i.name: (v.half() if v.is_floating_point() else v).numpy()  # noqa: E731
                          for i, v in zip(s.get_inputs(), b)}
        on, off = (torch.from_numpy(s.run(None, feed(s))[0]).float()
                   for s in (onnx_session(path), onnx_session(path, optimize=False)))
        if not torch.allclose(on, off, atol=5e-2):
            out["notes"].append(f"{tool}: ORT optimized vs unoptimized differ (max {(on - off).abs().max():.3g})")
        out[tool] = base.score(T.onnx_features(task, path, task.test))
    return out


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def markdown(meta: dict, timing: dict, ready: dict, acc: dict, workarounds: list[str]) -> str:
    L = ["# fxq vs NVIDIA ModelOpt (FP8, FP16 ONNX for TensorRT)", "", meta["note"], ""]
    L += ["## Wall time (s, median of %d fresh processes each), peak RSS, file size" % meta["reps"], "",
          "| model | tool | quantize+calibrate | ONNX export | post-process | save | pipeline total | peak RSS (MB) | file (MB) |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m, per in timing.items():
        for tool in ("fxq", "modelopt"):
            r = per[tool]
            L.append(f"| {MODELS[m][0]} | {tool} | {r['quantize']:.1f} | {r['export']:.1f} | {r['post_process']:.1f} | "
                     f"{r['save']:.1f} | **{r['total']:.1f}** | {r['peak_rss_mb']:.0f} | {r['bytes'] / 1e6:.1f} |")
        f, o = per["fxq"], per["modelopt"]
        L.append(f"| {MODELS[m][0]} | ratio fxq/ModelOpt | {fmt_ratio(f['quantize'], o['quantize'])} | "
                 f"{fmt_ratio(f['export'], o['export'])} | {fmt_ratio(f['post_process'], o['post_process'])} | "
                 f"{fmt_ratio(f['save'], o['save'])} | **{fmt_ratio(f['total'], o['total'])}** | "
                 f"{fmt_ratio(f['peak_rss_mb'], o['peak_rss_mb'])} | {fmt_ratio(f['bytes'], o['bytes'])} |")
    L += ["", "ONNX export = capture/trace + torch.onnx.export (fxq: dynamo exporter, opset 21; ModelOpt: "
          "TorchScript exporter, opset 20). fxq's save includes onnx.checker full_check; ModelOpt's "
          "post-process includes the load fixes listed below.", ""]
    L += ["## TensorRT readiness (fxq's checker, onnx_post/checker.py)", "",
          "| model | tool | GEMMs ready | attention blocks ready | Casts | all ready | reasons seen |", "|---|---|---:|---:|---:|---|---|"]
    for m, per in ready.items():
        for tool, r in per.items():
            L.append(f"| {MODELS[m][0]} | {tool} | {r['gemm']} | {r['attn']} | {r['casts']} | {r['ready']} | "
                     f"{', '.join(r['reasons']) or '-'} |")
    if acc:
        L += ["", "## Accuracy of both FP16 ONNX files in onnxruntime (linear probe on FP32 features)", "",
              "| task | eval n | FP32 torch | fxq ONNX (delta pp, cosine) | ModelOpt ONNX (delta pp, cosine) |",
              "|---|---:|---:|---|---|"]
        for t, a in acc.items():
            cell = lambda s: (f"onnxruntime cannot load it: {s['error']}" if "error" in s  # noqa: E731
                              else f"{100 * s['acc']:.2f}% ({s['delta_pp']:+.2f}, {s['cosine']:.4f})")
            L.append(f"| {t} | {a['n_test']} | {100 * a['fp32']:.2f}% | {cell(a['fxq'])} | {cell(a['modelopt'])} |")
        L.append("")
        L.append(f"Probe trained on {', '.join(str(a['n_train']) for a in acc.values())} FP32 samples; a smaller eval "
                 "set than results/accuracy.md to keep the run short. "
                 + " ".join(n for a in acc.values() for n in a["notes"]))
    L += ["", "## ModelOpt config", "", "`mtq.FP8_DEFAULT_CFG` (per-tensor E4M3 weight and input quantizers on "
          "Linear, max calibration) with these entries appended:", "", "```", meta["modelopt_config"], "```", "",
          "## What had to be worked around to run ModelOpt", ""] + [f"- {w}" for w in workarounds]
    return "\n".join(L) + "\n"


WORKAROUNDS = [
    "`pip install nvidia-modelopt` lacks `requests` (imported by modelopt.torch.utils); installed it.",
    "The `[onnx]` extra pins onnx~=1.21, onnxruntime-gpu and cupy-cuda12x; instead only its imported "
    "modules were installed (onnxconverter-common~=1.16, lief, cppimport, onnxslim, polygraphy) with "
    "onnx 1.23.2 / onnxruntime 1.32.0 held.",
    "`get_onnx_bytes_and_metadata` calls the model with inputs positionally; HF forward signatures break "
    "that (BertModel: 'got multiple values for argument use_cache'), so the model is wrapped in a module "
    "taking positional tensors and returning a plain tuple (benchmarks/pipeline_stage.py `_Positional`).",
    "It returns base64 JSON (`OnnxBytes`), not ONNX bytes: decoded with `OnnxBytes.from_bytes(...)"
    ".get_onnx_model_file_bytes()`.",
    "Its Q/DQ nodes keep domain 'trt' after being renamed to QuantizeLinear/DequantizeLinear "
    "(onnxruntime: 'trt:DequantizeLinear(-1) is not a registered function/op'); set the domain to "
    "the default, dropped the unused 'trt' opset import, cleared stale value_info and re-ran ONNX shape "
    "inference (without it fxq's checker sees the DQ inputs as non-FP8). Timed as part of its post-process.",
    "Dynamo export (`dynamo_export=True`) is not used: NOTES records that its FP8 dynamo path fails; "
    "the TorchScript path at opset 20 is ModelOpt's default.",
]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--eval", default="1500,500", help="probe train n, test n for the accuracy section")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--reuse-timing", action="store_true", help="reuse the last run's timings and ONNX files")
    args = ap.parse_args(argv)
    if not MODELOPT_PY.exists():
        sys.exit(f"{MODELOPT_PY} missing; see benchmarks/README.md for how to create .venv-modelopt")
    reps = args.reps or (1 if args.quick else 3)
    n_train, n_test = (200, 100) if args.quick else map(int, args.eval.split(","))
    tmp = ROOT / "results" / "tmp" / "vs_modelopt"
    tmp.mkdir(parents=True, exist_ok=True)
    models = args.models.split(",")
    ready = {}
    for m in [] if args.reuse_timing else models:
        torch.save(calibration_batches(m, MODELS[m][2]), tmp / f"{m}_batches.pt")
    raw = tmp / "timing_runs.json"  # kept, so --reuse-timing can redo the rest without rerunning
    runs = json.loads(raw.read_text()) if args.reuse_timing else {}
    for rep in range(0 if args.reuse_timing else reps):
        for m in models:
            tools = ("fxq", "modelopt") if rep % 2 == 0 else ("modelopt", "fxq")  # interleave against drift
            for tool in tools:
                out = tmp / f"{m}_{tool}.onnx"
                r = run_stage(tool, m, tmp / f"{m}_batches.pt", out)
                runs.setdefault(m, {}).setdefault(tool, []).append(r)
                raw.write_text(json.dumps(runs))
                print(f"[rep {rep}] {m} {tool}: total {r['total']:.1f}s, peak {r['peak_rss_mb']:.0f} MB", flush=True)
    files = {m: {t: tmp / f"{m}_{t}.onnx" for t in per} for m, per in runs.items()}
    reps = min(len(rs) for per in runs.values() for rs in per.values())
    timing = {m: {t: median_of(rs) for t, rs in per.items()} for m, per in runs.items() if m in models}
    for m in models:
        ready[m] = {t: readiness(p) for t, p in files[m].items()}
    acc = {}
    if not args.no_accuracy:
        for m in models:
            if MODELS[m][1]:
                acc[MODELS[m][1]] = onnx_accuracy(MODELS[m][1], files[m], (n_train, n_test, 1))
    mo_version = subprocess.run([str(MODELOPT_PY), "-c", "import modelopt; print(modelopt.__version__)"],
                                capture_output=True, text=True).stdout.strip()
    first = next(iter(timing.values()))["modelopt"]
    meta = {"reps": reps, "modelopt_config": json.dumps(json.loads(first["config"]), indent=1),
            "note": (f"nvidia-modelopt {mo_version} vs fxq, torch {torch.__version__} CPU, {os.cpu_count()} cores "
                     "shared with other jobs (timings are noisy; medians of interleaved runs). Same calibration "
                     "batches for both (train side only: " + ", ".join(f"{MODELS[m][0]} {MODELS[m][2]} samples"
                     for m in models) + "; batches of 32; MiniLM padded to 64 tokens, DINOv2 at 112 px, "
                     "ViT-base at 224 px). Each tool's pipeline runs in its own fresh single-threaded process "
                     "(OMP_NUM_THREADS=1) after one untimed FP32 warm-up forward; peak RSS is that process's ru_maxrss (model + data included).")}
    text = markdown(meta, timing, ready, acc, WORKAROUNDS)
    out = ROOT / "results" / ("vs_modelopt_quick.md" if args.quick else "vs_modelopt.md")
    out.write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
