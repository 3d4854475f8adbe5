"""The FP16 ONNX rows of benchmarks/recipe.py: onnxruntime (CPU) on the first test items, paired against FP32 on
those same items, with what fxq's checker says TensorRT would fuse."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from benchmarks import accuracy_tasks as T
from benchmarks import accuracy_variants as V
from onnx_post.checker import check_model

ROWS = ("fxq K centered + per-channel W", "fxq K centered + per-channel W + fallback (any group, cosine budget)",
        "FP16 ONNX, no FP8", "fxq default", "fxq K centered + per-channel W + fallback (GEMMs, cosine budget)")
# most important first; ModelOpt's row comes after these
FP16_ORT = "FP16 ONNX, no FP8 (ORT)"
MODELOPT = "ModelOpt FP8 (MHA)"


def subset(task, base, n: int):
    """The first whole test batches holding at least n items, and a Baseline scored on them alone."""
    batches, k = [], 0
    for b in task.test:
        if k >= n:
            break
        batches.append(b)
        k += len(next(iter(b.values())))
    sub = dataclasses.replace(task, test=batches, test_labels=task.test_labels[:k])
    boot = np.random.default_rng(T.SEED).integers(0, k, size=(T.BOOTSTRAP, k))
    return sub, T.Baseline(sub, base.probe, base.feats[:k], base.preds[:k], base.correct[:k], boot)


def onnx_row(task, base, qm_or_path, out_dir: Path, n: int) -> dict:
    """FP16 ONNX in onnxruntime (CPU) on the first n test items, paired against FP32 on the same items."""
    sub, sub_base = subset(task, base, n)
    path = qm_or_path
    if not isinstance(qm_or_path, Path):
        path = out_dir / f"{task.name}_recipe.onnx"
        qm_or_path.export_onnx(path, dtype=torch.float16)
    row = sub_base.score(T.onnx_features(sub, path, sub.test))
    row["n"] = len(sub.test_labels)
    r = check_model(path)  # what TensorRT would fuse, by fxq's checker
    row["trt_ready"] = (f"GEMMs {sum(g.ready for g in r.gemms)}/{len(r.gemms)}, attention "
                        f"{sum(a.ready for a in r.attention)}/{len(r.attention)}"
                        + (f" ({', '.join(sorted({x for a in r.attention for x in a.reasons}))})"
                           if not all(a.ready for a in r.attention) else ""))
    if path is not qm_or_path:
        path.unlink()  # ours, rebuilt from the calibration file: keep results folders small
    return row


def _source(label, task, models, qms, out_dir: Path):
    """What to export for a row: a QuantizedModel rebuilt on the CPU, or ModelOpt's file."""
    import fxq

    if label == MODELOPT:
        return out_dir / f"modelopt_{task.name}.onnx"
    if label == "FP16 ONNX, no FP8":
        return V.no_fp8(models["plain"].to("cpu"), task.example)
    saved = out_dir / f"calib_{task.name}.json"
    qms[label].save_calibration(saved)  # the calibration file alone carries the recipe's config
    model = models["centered" if "K centered" in label else "plain"].to("cpu")
    return fxq.quantize(model, task.example, calibration=saved, progress=False)


def onnx_rows(task, base, args, models, qms, doc, add, log) -> None:
    """Most important first; none is started after args.minutes."""
    import time

    from benchmarks.recipe import counts

    for label in [r for r in ROWS if r in qms or r == "FP16 ONNX, no FP8"] + [MODELOPT]:
        if time.perf_counter() > args.start + 60 * args.minutes or args.onnx_n <= 0:
            log(f"  out of time or --onnx-n 0: no ONNX row for {label}")
            continue
        try:
            src = _source(label, task, models, qms, args.out_dir)
            if isinstance(src, Path) and not src.is_file():
                continue
            t = time.perf_counter()
            row = onnx_row(task, base, src, args.out_dir, args.onnx_n)
            row["seconds"] = time.perf_counter() - t
            mo = doc["rows"].get(f"{MODELOPT} torch", {})
            info = counts(src) if not isinstance(src, Path) else {
                k: mo[k] for k in ("attention_fp8", "attention_blocks", "gemms_fp8", "gemms", "gemm_fp8_share") if k in mo}
            add(FP16_ORT if label == "FP16 ONNX, no FP8" else f"{label} ONNX fp16 (ORT)", row, info)
        except Exception as e:  # keep the rows already measured; a file onnxruntime cannot load is a result too
            log(f"  {label} ONNX failed: {type(e).__name__}: {e}")
            doc.setdefault("onnx_errors", {})[label] = f"{type(e).__name__}: {str(e)[:400]}"
