"""GPU benchmark of fxq on ViT-base (transformers ViTConfig() defaults, random weights).

(a) Calibration: fxq.quantize end to end, and its calibration loop alone (timed by the batch
    iterator itself: a clock read, after a device sync, as each batch is handed out and when the
    iterator is exhausted), in images/s at batch 64, next to the float model's own forward rate.
(b) Fake-quant overhead: eager forward of the float model vs the fxq fake-quant model `qm`
    (torch.ops.fxq.fp8_qdq at every site), FP32 and FP16, batch 1 and 64, median of CUDA-event times.

Absolute times are only meaningful on a GPU: without CUDA the script says so and exits 0.

    python benchmarks/gpu.py                      # writes results/gpu.md
    python benchmarks/gpu.py --out /tmp/gpu.md
    python benchmarks/gpu.py --smoke              # tiny ViT on CPU: checks the script, no numbers
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import transformers

import fxq

ROOT = Path(__file__).resolve().parents[1]
IMAGE = (3, 224, 224)


class TimedBatches:
    """Calibration batches that clock the loop consuming them.

    marks[i] is the time batch i was handed out (after a device sync, so batch i-1's work is
    done); marks[-1] is the time the consumer asked for a batch past the last one.
    """

    def __init__(self, batches, device):
        self.batches, self.device, self.marks = batches, device, []

    def __len__(self):
        return len(self.batches)

    def _mark(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks.append(time.perf_counter())

    def __iter__(self):
        self.marks = []
        for b in self.batches:
            self._mark()
            yield b
        self._mark()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device, warmup: int, iters: int) -> float:
    """Median wall time of fn() in ms: CUDA events on a GPU, perf_counter on CPU."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        sync(device)
        times = []
        for _ in range(iters):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def hidden(out) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def make_vit(attn: str, smoke: bool) -> torch.nn.Module:
    cfg = transformers.ViTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                 intermediate_size=128) if smoke else transformers.ViTConfig()
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return transformers.ViTModel(cfg).eval()


def images(n: int, batch: int, dtype, device, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *IMAGE, generator=g).to(device=device, dtype=dtype) for _ in range(n)]


def calibration_row(attn: str, model, device, batch: int, n_batches: int, warmup: int, iters: int) -> dict:
    """Quantize the FP32 model with n_batches of `batch` images; returns the row and qm."""
    calib = TimedBatches(images(n_batches, batch, torch.float32, device, seed=1), device)
    x = calib.batches[0]
    float_ms = median_ms(lambda: model(x), device, warmup, iters)
    sync(device)
    t = time.perf_counter()
    qm = fxq.quantize(model, x[:1], calib, progress=False)
    sync(device)
    total = time.perf_counter() - t
    m = calib.marks
    loop = m[-1] - m[0]
    steady = m[-1] - m[1] if len(m) > 2 else float("nan")
    return {
        "row": {
            "attention": attn,
            "images": n_batches * batch,
            "quantize total s": f"{total:.2f}",
            "calibration loop s": f"{loop:.2f}",
            "rest s (capture, placement, Q/DQ insert)": f"{total - loop:.2f}",
            "calibration img/s (all batches)": f"{n_batches * batch / loop:,.0f}",
            "calibration img/s (after batch 1)": f"{(n_batches - 1) * batch / steady:,.0f}" if len(m) > 2 else "-",
            f"float FP32 forward img/s (batch {batch})": f"{batch / (float_ms / 1e3):,.0f}",
        },
        "qm": qm,
    }


def overhead_rows(attn: str, dtype, model, qm, device, batches, warmup: int, iters: int) -> list[dict]:
    rows = []
    for b in batches:
        x = images(1, b, dtype, device, seed=2)[0]
        f_ms = median_ms(lambda: model(x), device, warmup, iters)
        q_ms = median_ms(lambda: qm(x), device, warmup, iters)
        with torch.no_grad():
            cos = cosine(hidden(model(x)), hidden(qm(x)))
        rows.append({
            "attention": attn, "dtype": str(dtype).replace("torch.", ""), "batch": b,
            "float ms": f"{f_ms:.2f}", "fxq qm ms": f"{q_ms:.2f}", "qm / float": f"{q_ms / f_ms:.2f}x",
            "output cosine qm vs float": f"{cos:.4f}",
        })
    return rows


def error_row(columns: list[str], attn: str, what: str, e: BaseException) -> dict:
    msg = f"{what} failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return {columns[0]: attn, columns[1]: msg.replace("|", "/")}


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "gpu.md")
    p.add_argument("--calib-batches", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--smoke", action="store_true", help="tiny ViT on CPU, 2 batches of 4: checks the script only")
    args = p.parse_args(argv)

    if args.smoke:
        device, batch, n_batches, warmup, iters = torch.device("cpu"), 4, 2, 1, 2
    else:
        if not torch.cuda.is_available():
            print("CUDA is not available: benchmarks/gpu.py reports GPU times only; nothing measured.")
            return 0
        device, batch, n_batches, warmup, iters = (torch.device("cuda"), args.batch, args.calib_batches,
                                                   args.warmup, args.iters)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    header = [
        "# fxq on GPU: ViT-base calibration throughput and fake-quant overhead",
        "",
        f"- device: {name}" + (" — SMOKE RUN, tiny ViT: these times are not benchmark numbers" if args.smoke else ""),
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
        f"fxq {fxq.__version__}, Python {platform.python_version()}",
        f"- model: transformers ViTModel(ViTConfig(){' tiny' if args.smoke else ''}), random weights (seed 0), "
        f"input {batch}x{'x'.join(map(str, IMAGE))} random normal images already on the device",
        f"- fp32 matmul precision: {torch.get_float32_matmul_precision()} (PyTorch default; no TF32 unless 'high')",
        f"- times: median of {iters} runs after {warmup} warm-up runs, CUDA events per run; eager PyTorch, no torch.compile",
        "",
    ]
    print("\n".join(header), flush=True)

    calib_rows, over_rows = [], []
    for attn in ("eager", "sdpa"):
        model = make_vit(attn, args.smoke).to(device)
        qm = None
        try:
            r = calibration_row(attn, model, device, batch, n_batches, warmup, iters)
            calib_rows.append(r["row"])
            qm = r["qm"]
            print(markdown([r["row"]]), flush=True)
        except Exception as e:  # report and go on: one failure must not hide the other numbers
            traceback.print_exc()
            calib_rows.append(error_row(["attention", "images"], attn, "fxq.quantize (FP32)", e))
        if qm is not None:
            try:
                over_rows += overhead_rows(attn, torch.float32, model, qm, device, (1, batch), warmup, iters)
            except Exception as e:
                traceback.print_exc()
                over_rows.append(error_row(["attention", "dtype"], attn, "FP32 timing", e))
        del qm
        try:  # FP16: quantize the half model itself (2 calibration batches: only the numerics need them)
            half = model.half()
            qm16 = fxq.quantize(half, images(1, 1, torch.float16, device, 3)[0],
                                images(2, batch, torch.float16, device, 4), progress=False)
            over_rows += overhead_rows(attn, torch.float16, half, qm16, device, (1, batch), warmup, iters)
            del qm16
        except Exception as e:
            traceback.print_exc()
            over_rows.append(error_row(["attention", "dtype"], attn, "FP16 quantize/timing", e))
        print(markdown([r for r in over_rows if r.get("attention") == attn]), flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    text = "\n".join(header) + "\n## (a) Calibration (FP32 model, batch %d)\n\n" % batch + markdown(calib_rows)
    text += ("\nThe calibration loop is fxq's forward through the observed graph (an amax observer at every "
             "activation site); 'rest' is torch.export capture, placement and Q/DQ insertion. The first row "
             "includes any one-time torch.export warm-up of the process (not separated out).\n")
    text += "\n## (b) Fake-quant overhead: eager forward, float model vs fxq qm\n\n" + markdown(over_rows)
    text += ("\nqm runs FP8 fake-quant (Q/DQ in PyTorch), which simulates FP8 numerics and is not meant to be "
             "fast; FP8 speed comes from the TensorRT engine (benchmarks/trt_latency.py). The cosine is over "
             "last_hidden_state, a sanity check that qm runs FP8 numerics, not an accuracy figure: judge "
             "accuracy on trained weights.\n")
    print(text)
    if not args.smoke or args.out != ROOT / "results" / "gpu.md":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
