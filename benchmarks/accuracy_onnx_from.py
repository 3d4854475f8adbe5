"""`python -m benchmarks.accuracy --onnx-from DIR`: the ONNX FP16 rows, on this CPU, for a torch run done elsewhere.

One job: read another machine's run (its accuracy_<task>.json and per-item results), rebuild each
variant it measured here (its fallback groups translated to this transformers version's names),
export it to FP16 ONNX, score it in onnxruntime and pair every delta against that run's FP32 items.
It writes onnx_cpu_<task>.json and onnx_cpu_correct_<task>.npz to the output folder; --report
merges them into the results page as the rows marked *.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import fxq  # noqa: E402

from benchmarks.accuracy_tasks import (BOOTSTRAP, SEED, Baseline, Task, onnx_features, paired_delta,  # noqa: E402
                                       torch_features)
from benchmarks.accuracy_variants import NO_FP8, _placement_info  # noqa: E402
from benchmarks.probe import fit_linear_probe  # noqa: E402
from fxq.calibration.io import CALIB_VERSION  # noqa: E402


def _local_group_id(group: str, known: set) -> str:
    """A group id from a run on transformers < 5.2x names (attention.attention.query) in this one's."""
    from fxq.cli.zoo import _ATTN_RENAMES

    if group in known:
        return group
    new = group.replace(".attention.attention:attention", ".attention:attention")
    for old, renamed in _ATTN_RENAMES.items():
        new = new.replace(old.rstrip("."), renamed.rstrip("."))
    if new not in known:
        raise KeyError(f"group {group!r} ({new!r}) is not in this model")
    return new


def onnx_from(task: Task, device_dir: Path, out_dir: Path, rows_wanted: list[str], log) -> None:
    """ONNX FP16 rows on this CPU for a torch run done elsewhere (its JSON and per-item results).

    The probe is refitted on this machine's FP32 train features (same data, seed and weights), and
    every delta is paired against the other run's FP32 test results.
    """
    doc = json.loads((device_dir / f"accuracy_{task.name}.json").read_text())
    saved = np.load(device_dir / f"correct_{task.name}.npz")
    t = time.perf_counter()
    probe_file = out_dir / f"probe_cpu_{task.name}.pt"
    if probe_file.is_file():  # a restart reuses it: the train features are the slow part on a CPU
        probe = torch.load(probe_file, weights_only=False)
    else:
        probe = fit_linear_probe(torch_features(task, task.model, task.train, "cpu"), task.train_labels, seed=SEED)
        torch.save(probe, probe_file)
    log(f"  probe refitted on CPU features ({time.perf_counter() - t:.0f} s)")
    correct = saved["FP32 torch"]
    boot = np.random.default_rng(SEED).integers(0, len(correct), size=(BOOTSTRAP, len(correct)))
    base = Baseline(task, probe, torch.zeros(0), saved["fp32_preds"], correct, boot)
    default = fxq.quantize(task.model, task.example, task.calib, progress=False)
    amax = {"version": CALIB_VERSION, "amax": default.amax, "batches": default.calibration_batches}
    known = {g.id for g in default.placement.groups}
    configs = {"FP16 ONNX, no FP8 (ORT)": (NO_FP8, {"version": CALIB_VERSION, "batches": 1, "amax": {}}, task.model),
               "fxq FP8, K centered, ONNX fp16 (ORT)": (fxq.preset("tensorrt-fp8"), None, None)}
    for label, p in doc["placement"].items():
        base_cfg = fxq.preset("gemm-only") if "gemm-only" in label else fxq.preset("tensorrt-fp8")
        ids = tuple(_local_group_id(g, known) for g in p["fallback"])
        configs[label.replace(" torch", "").rstrip(",") + " ONNX fp16 (ORT)"] = (
            dataclasses.replace(base_cfg, fallback=ids), None if "gemm-only" in label else amax, task.model)
    rows = {}
    for label in rows_wanted:
        cfg, calib, model = configs[label]
        t1 = time.perf_counter()
        if model is None:  # K centered: a copy of the model with shifted K biases, calibrated afresh
            model, n = fxq.center_attention_keys(task.model, task.example, task.calib)
            log(f"  {n} K projections centered")
        q = fxq.quantize(model, task.example, task.calib if calib is None else None, cfg, calibration=calib,
                         progress=False)
        path = out_dir / f"{task.name}_cpu.onnx"
        q.export_onnx(path, dtype=torch.float16)
        t2 = time.perf_counter()
        feats = onnx_features(task, path, task.test)
        preds = probe.predict(feats).numpy()
        c = (preds == task.test_labels.numpy()).astype(np.float64)
        rows[label] = {"acc": c.mean(), "agreement": float((preds == base.preds).mean()), "cosine": float("nan"),
                       **paired_delta(c, correct, boot), "correct": c, **_placement_info(q)}
        fp16 = rows.get("FP16 ONNX, no FP8 (ORT)")
        if fp16 is not None and label != "FP16 ONNX, no FP8 (ORT)":
            rows[label].update({f"vs_{k}": v for k, v in paired_delta(c, fp16["correct"], boot).items()})
        r = rows[label]
        log(f"  {label}: {100 * r['acc']:.2f}% ({r['delta_pp']:+.2f} pp [{r['ci_lo']:+.2f}, {r['ci_hi']:+.2f}]) "
            f"export {t2 - t1:.0f} s, ORT {time.perf_counter() - t2:.0f} s")
        out = {k: {kk: vv for kk, vv in v.items() if kk != "correct"} for k, v in rows.items()}
        (out_dir / f"onnx_cpu_{task.name}.json").write_text(json.dumps(out, indent=1, default=float))
        np.savez_compressed(out_dir / f"onnx_cpu_correct_{task.name}.npz", **{k: v["correct"] for k, v in rows.items()})
