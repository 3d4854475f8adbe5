"""Export time and host memory: a plain BF16 torch.onnx.export(dynamo=True) against fxq's export of the same model.

Each side runs in its own fresh process on the same model (random weights, BF16; time and memory do not depend on
the values), and writes ONNX with external data:
  plain  torch.onnx.export(model, dynamo=True, opset 23, external_data=True): the model as it is, no quantization
  fxq    fxq.quantize (2 calibration batches) -> the float model dropped -> qm.export_onnx(dtype=bfloat16,
         external_data_bytes=0: external data at any size, as torch writes it; a 12B model gets it by default)
Peak host RSS is measured over each export alone (VmHWM reset through /proc/self/clear_refs) and given against
the model's BF16 weight bytes; fxq's quantize peak is given per parameter above the loaded model's own RSS.
Each side's row is appended to <out>_export.jsonl as soon as it is measured, and the section of --out for this
model, size and device is rewritten from each side's latest row (so the sides may run in separate commands).

    python -m benchmarks.export_memory --model flux --full --out $OUT/diffusion_scale.md  # Flux.1-dev 12B, GPU
    python -m benchmarks.export_memory --model sd3 --full --out $OUT/diffusion_scale.md   # SD3.5-Large 8.1B, GPU
    python -m benchmarks.export_memory --model flux --blocks 1,2        # full width, 1+2 blocks (0.7B), CPU
    python -m benchmarks.export_memory --model vit-l                     # ViT-L/16 in BF16, CPU
    python -m benchmarks.export_memory --model flux --tiny --out /tmp/x.md   # seconds: checks the script
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class Window:
    """Peak RSS (bytes) and seconds of the code inside; the peak is this window's own where Linux lets a
    process reset its high-water mark, else the process's peak so far (flagged: `peak_is_process_wide`)."""

    def __enter__(self):
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.windowed = True
        except OSError:
            self.windowed = False
        self.start = _status_kib("VmRSS") * 1024
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t
        self.peak = (_status_kib("VmHWM") * 1024 if self.windowed
                     else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    def row(self, prefix: str) -> dict:
        return {f"{prefix}_s": self.seconds, f"{prefix}_peak": self.peak, f"{prefix}_start": self.start,
                "peak_is_process_wide": not self.windowed}


def build(args):
    """(model, [example, calibration batch, calibration batch]) at BF16 on args.device, random weights."""
    import torch

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # init straight in BF16 (a 12B model's fp32 copy would be 48 GB)
    try:
        with torch.device(args.device):
            if args.model in DIFFUSION:
                from benchmarks.lower_diffusion import MODELS
                from benchmarks.lower_diffusion import build as build_transformer

                full, smoke, make_inputs = MODELS[args.model]
                cfg = smoke if args.tiny else dict(full, **_blocks(args))
                model = build_transformer(args.model, cfg).eval()
            else:
                import transformers

                from benchmarks.scaling import VITS

                size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128) \
                    if args.tiny else VITS["vit_large" if args.model == "vit-l" else "vit_huge"]
                cfg = transformers.ViTConfig(**size)
                model = transformers.ViTModel._from_config(cfg, attn_implementation="sdpa",
                                                           add_pooling_layer=False).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    # Inputs outside the device and dtype defaults: their generators are on the CPU, Flux's position ids fp32.
    if args.model in DIFFUSION:  # 1024x1024 (4096 image tokens) with --full, else few tokens
        return model, [make_inputs(cfg, seed, args.device, smoke=not args.full) for seed in range(3)]
    side = cfg.image_size
    return model, [{"pixel_values": torch.randn(2, 3, side, side).to(args.device, torch.bfloat16)} for _ in range(3)]


DIFFUSION = ("flux", "sd3")


def _blocks(args) -> dict:
    if args.full:
        return {}
    double, single = (int(n) for n in args.blocks.split(","))
    return dict(num_layers=double, num_single_layers=single) if args.model == "flux" else dict(num_layers=double)


def worker(args, side: str, out: Path) -> dict:
    """One side in this process; returns its row."""
    import torch
    import torch.onnx  # noqa: F401  (both sides import the exporter before any clock)

    loaded_from = _status_kib("VmRSS") * 1024
    model, batches = build(args)
    params = sum(p.numel() for p in model.parameters())
    row = {"side": side, "params": params, "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
           "loaded_rss": _status_kib("VmRSS") * 1024 - loaded_from}
    cuda = torch.device(args.device).type == "cuda"
    if side == "plain":
        with Window() as w:
            torch.onnx.export(model, (), str(out), kwargs=batches[0], dynamo=True, opset_version=23,
                              external_data=True, verbose=False)
        row.update(w.row("export"))
    else:
        import fxq
        from fxq.memory import release_free_memory

        with Window() as q, torch.no_grad():
            qm = fxq.quantize(model, batches[0], batches[1:], dynamic_batch=False, progress=False)
        row.update(q.row("quantize"))
        row["quantize_stages"] = qm.seconds
        del model  # qm owns its state; the float model is not needed to export
        release_free_memory()
        with Window() as w:
            r = qm.export_onnx(out, dtype=torch.bfloat16, external_data_bytes=0)
        row.update(w.row("export"))
        row["export_stages"] = r.seconds
        from onnx_post.checker import check_model
        row["check"] = check_model(out).summary()  # the graph only: the checker never loads external weights
    row["file_bytes"] = sum(p.stat().st_size for p in out.parent.iterdir())
    if cuda:
        row["gpu_peak"] = torch.cuda.max_memory_allocated()
    return row


def run_side(args, side: str) -> dict:
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        cmd = [sys.executable, "-m", "benchmarks.export_memory", *args.argv, "--worker", side, str(Path(d) / "m.onnx")]
        p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"{side} failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
        return json.loads(line[7:])


def table(args, rows: dict) -> str:
    head = ["| side | params | BF16 weights GB | export s | export peak RSS GB | peak / weights | RSS at start GB |"
            " peak above start / weights | file GB | notes |", "|" + "---|" * 10]
    for side, r in rows.items():
        w = r["weight_bytes"]
        notes = []
        if side == "fxq":
            q = r["quantize_peak"] - r["quantize_start"]  # the start holds the loaded model
            notes.append(f"quantize {r['quantize_s']:.0f} s, peak {r['quantize_peak'] / GIB:.2f} GB = "
                         f"{q / r['params']:.2f} B/param above the RSS with the model loaded")
            notes.append("export " + ", ".join(f"{k} {v:.1f}" for k, v in r["export_stages"].items()))
            notes.append(f"fxq check: {r['check']}")
        if "gpu_peak" in r:
            notes.append(f"GPU peak {r['gpu_peak'] / GIB:.1f} GB")
        if r["peak_is_process_wide"]:
            notes.append("peak is the process's (VmHWM could not be reset)")
        head.append(f"| {side} | {r['params'] / 1e9:.2f}B | {w / GIB:.2f} | {r['export_s']:.1f} | "
                    f"{r['export_peak'] / GIB:.2f} | {r['export_peak'] / w:.2f} | {r['export_start'] / GIB:.2f} | "
                    f"{(r['export_peak'] - r['export_start']) / w:.2f} | {r['file_bytes'] / GIB:.2f} | "
                    f"{'; '.join(notes)} |")
    if len(rows) == 2:
        head.append(f"\nfxq export time / plain export time: "
                    f"**{rows['fxq']['export_s'] / rows['plain']['export_s']:.2f}** (goal <= 1.5); "
                    f"fxq export peak / BF16 weights: **{rows['fxq']['export_peak'] / rows['fxq']['weight_bytes']:.2f}**"
                    " (goal <= 1.5)")
    return "\n".join(head)


def write_section(path: Path, key: str, text: str) -> None:
    """Replace the section `key` of `path` (kept between markers: one per model, size and device), leaving the
    rest of the file as it is."""
    from fxq.atomic import write_text

    old = path.read_text() if path.exists() else "# Diffusion transformers at scale\n"
    begin, end = f"<!-- export_memory {key} -->", f"<!-- /export_memory {key} -->"
    block = f"{begin}\n{text}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    write_text(path, pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block + "\n")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=[*DIFFUSION, "vit-l", "vit-h"], default="flux")
    ap.add_argument("--full", action="store_true", help="the full transformer, on CUDA: Flux.1-dev (19+38 blocks, "
                    "11.9B) or SD3.5-Large (38 blocks, 8.1B)")
    ap.add_argument("--tiny", action="store_true", help="a tiny config: checks the script in seconds")
    ap.add_argument("--blocks", default="1,2", help="blocks at full width when not --full: Flux double,single; "
                    "SD3 the first number")
    ap.add_argument("--device", default=None, help="default: cuda for --full, else cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "diffusion_scale.md")
    ap.add_argument("--tmp", default=None, help="folder for the ONNX files (default: the system's temp folder)")
    ap.add_argument("--sides", default="fxq,plain",
                    help="which sides to run, in order (one per command when a device limits a command's time)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.device = args.device or ("cuda" if args.full else "cpu")
    if args.worker:
        print("RESULT " + json.dumps(worker(args, args.worker[0], Path(args.worker[1]))), flush=True)
        return
    args.argv = list(argv)
    import torch

    size = "tiny" if args.tiny else {"flux": "full (11.9B)", "sd3": "full (8.1B)"}.get(args.model, "full") \
        if args.full or args.model not in DIFFUSION else f"{args.blocks} blocks at full width"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    title = (f"## Export time and host memory: {args.model} ({size}), BF16, random weights\n\n"
             f"{datetime.date.today()}, {device} ({args.device}), {os.cpu_count()} CPU cores, torch {torch.__version__}; "
             f"`python -m benchmarks.export_memory {' '.join(args.argv)}`. Each side in a fresh process; peak RSS "
             "over the export alone. plain = torch.onnx.export(dynamo=True, opset 23, external data) of the BF16 "
             "model; fxq = qm.export_onnx(dtype=bfloat16) of the quantized model, the float model dropped first.\n")
    size_key = "tiny" if args.tiny else "full" if args.full or args.model not in DIFFUSION else args.blocks
    key = f"{args.model}-{size_key}-{args.device}"
    log = args.out.with_name(args.out.stem + "_export.jsonl")  # every row; the table takes each side's latest
    for side in args.sides.split(","):
        row = {"key": key, "date": str(datetime.date.today()), "device": device, **run_side(args, side)}
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")
        rows = {r["side"]: r for r in map(json.loads, log.read_text().splitlines()) if r["key"] == key}
        rows = {s: rows[s] for s in ("plain", "fxq") if s in rows}
        write_section(args.out, key, title + "\n" + table(args, rows))
        print(table(args, {side: row}).splitlines()[-1], flush=True)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
