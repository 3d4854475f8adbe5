"""Pipeline time and memory against model size, side by side with a plain FP16 ONNX export.

For each model, two fresh single-threaded processes on the same float model:
  fxq    fxq.quantize (2 calibration batches of 2) + export_onnx(FP16): the whole pipeline
  plain  torch.onnx.export(dynamo=True) of the same model in FP16, no quantization
and the table gives wall seconds, the ratio fxq / plain, peak RSS, and peak RSS per parameter
(with and without the float32 model itself, which the user holds either way).

    .venv/bin/python -m benchmarks.scaling                          # ViT-B/L/H + MiniLM -> results/scaling.md
    .venv/bin/python -m benchmarks.scaling --models vit_base,minilm --out /tmp/s.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name -> ViTConfig overrides (random weights: time and memory do not depend on the values)
VITS = {
    "vit_base": {},
    "vit_large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "vit_huge": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120,
                     patch_size=14),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _model(name: str):
    import torch

    torch.manual_seed(0)
    if name == "minilm":
        from fxq.cli import zoo

        model, tok = zoo.load_minilm()
        enc = tok(["a short sentence to calibrate on"] * 2, padding="max_length", max_length=64, return_tensors="pt")
        return model, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    import transformers

    cfg = transformers.ViTConfig(**VITS[name])
    model = transformers.ViTModel._from_config(cfg, attn_implementation="eager", add_pooling_layer=False).eval()
    return model, {"pixel_values": torch.randn(2, 3, cfg.image_size, cfg.image_size)}


def worker(name: str, tool: str, out: Path) -> dict:
    """One side, timed from the loaded float model to the saved file: what a user waits for.

    Imports are done before the clock starts, on both sides and for what each side needs only (the plain
    side never imports fxq): an earlier version imported fxq inside the plain side's timed region, which
    added the same seconds to both sides and made the ratio look smaller than a user sees.
    """
    import warnings

    import torch

    torch.set_num_threads(1)
    base = _rss_mb()
    model, example = _model(name)
    params = sum(p.numel() for p in model.parameters())
    import onnxscript  # noqa: F401  (the exporter's own imports, paid by both sides before the clock)
    import torch.onnx  # noqa: F401

    if tool == "fxq":
        import fxq
    loaded = _rss_mb()
    t = time.perf_counter()
    stages = {}
    if tool == "fxq":
        calib = [{k: v.clone() for k, v in example.items()} for _ in range(2)]
        qm = fxq.quantize(model, example, calib, progress=False)
        stages.update({f"q.{k}": v for k, v in qm.seconds.items()})
        r = qm.export_onnx(out, dtype=torch.float16)
        stages.update(r.seconds)
    else:
        half = model.half()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(half, (), str(out), kwargs={k: v.half() if v.is_floating_point() else v
                                                         for k, v in example.items()},
                              dynamo=True, opset_version=21, verbose=False)
    total = time.perf_counter() - t
    return {"params": params, "seconds": total, "stages": stages, "peak_mb": _rss_mb(), "base_mb": base,
            "loaded_mb": loaded}


def run(name: str, tool: str) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "benchmarks.scaling", "--worker", name, tool, str(Path(d) / "m.onnx")]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"{name}/{tool} failed:\n{p.stderr[-3000:]}")
        return json.loads(line[7:])


def markdown(rows: list[dict]) -> str:
    head = ("| model | params | fxq s | plain FP16 export s | fxq / plain | fxq peak RSS GB | plain peak RSS GB | "
            "fxq bytes/param (all) | fxq bytes/param (above the loaded fp32 model) | fxq stages s |")
    out = [head, "|" + "---|" * 10]
    for r in rows:
        f, p = r["fxq"], r["plain"]
        n = f["params"]
        stages = ", ".join(f"{k} {v:.1f}" for k, v in f["stages"].items())
        out.append(f"| {r['model']} | {n / 1e6:.0f}M | {f['seconds']:.1f} | {p['seconds']:.1f} | "
                   f"{f['seconds'] / p['seconds']:.2f} | {f['peak_mb'] / 1024:.2f} | {p['peak_mb'] / 1024:.2f} | "
                   f"{f['peak_mb'] * 2**20 / n:.1f} | {(f['peak_mb'] - f['loaded_mb']) * 2**20 / n:.1f} | {stages} |")
    return "\n".join(out)


def main(argv=None) -> None:
    if argv is None and sys.argv[1:2] == ["--worker"]:
        name, tool, out = sys.argv[2:5]
        print("RESULT " + json.dumps(worker(name, tool, Path(out))), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,vit_base,vit_large,vit_huge")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "scaling.md")
    ap.add_argument("--reps", type=int, default=2, help="interleaved runs per side (median; default 2)")
    args = ap.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        runs = {"plain": [], "fxq": []}
        for _ in range(args.reps):
            for tool in ("plain", "fxq"):  # interleaved, each in a fresh process
                runs[tool].append(run(name, tool))
        # the median run of each side (by time); with 2 reps the faster one is taken for both sides alike
        row = {"model": name, **{tool: sorted(rs, key=lambda r: r["seconds"])[(len(rs) - 1) // 2]
                                 for tool, rs in runs.items()}}
        rows.append(row)
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    import torch

    note = (f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}; each run a fresh single-threaded process (`python -m benchmarks.scaling`), "
            f"median of {args.reps} interleaved runs per side, timed from the loaded float model to the saved file "
            "with each side's imports done before the clock. "
            "fxq = quantize (capture, place, 2 calibration batches of 2, convert) + FP16 ONNX export "
            "(dtype conversion on the graph, dynamo exporter, onnx_post, save); plain = torch.onnx.export(dynamo=True) "
            "of the same model in FP16. Random weights for ViT (time and memory do not depend on them).")
    text = "# Pipeline time and memory vs model size\n\n" + note + "\n\n" + markdown(rows) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
