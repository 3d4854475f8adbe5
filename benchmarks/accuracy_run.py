"""One task's full accuracy run for benchmarks/accuracy.py: every variant in torch, then ONNX FP16 rows on the CPU.

One job: run_task scores FP32, fxq's default FP8, the fallback sweeps, the gemm-only preset (and GPTQ /
per-channel weights) in torch on the given device, with the sensitivity table of the default; saves each
variant's calibration; then rebuilds the variants on the CPU from those files for the onnxruntime rows
while time allows. accuracy_<task>.json and correct_<task>.npz are rewritten after every step, so a run
cut short keeps what it measured.
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

from benchmarks.accuracy_tasks import (Baseline, Task, _to, fp32_baseline, onnx_features, paired_delta,  # noqa: E402
                                       torch_features)
from benchmarks.accuracy_variants import (BUDGET_FRACTIONS, _placement_info, _quantize,  # noqa: E402
                                          choose_fallback, no_fp8)


def _sensitivity(task, qm, model, device, out_dir, secs, result, log):
    t = time.perf_counter()
    sens = fxq.sensitivity(model, qm.example, None, [_to(b, device) for b in task.evals], config=qm.quant_config,
                           calibration=qm.calibration, progress=False)  # qm's calibration: no second pass
    secs["sensitivity"] = time.perf_counter() - t
    (out_dir / f"sensitivity_{task.name}.json").write_text(sens.to_json())
    (out_dir / f"sensitivity_{task.name}.txt").write_text(sens.table())
    try:
        sens.plot(out_dir / f"sensitivity_{task.name}.png")
    except ImportError as e:
        log(f"  no plot: {e}")
    log(f"  sensitivity: {len(sens.rows)} groups in {secs['sensitivity']:.0f} s; top: "
        + ", ".join(f"{r.group} {r.gain:.1e}" for r in sens.sorted_rows()[:3]))

    result.update({"sensitivity_top": [dataclasses.asdict(r) for r in sens.sorted_rows()[:10]],
                   "sensitivity_all_fp8": sens.baseline})


def run_task(task: Task, device: str, out_dir: Path, onnx_rows: list[str], deadline: float, log,
             fractions=BUDGET_FRACTIONS, fractions_attention_fp8=BUDGET_FRACTIONS, with_sensitivity=True) -> dict:
    t0 = time.perf_counter()
    secs = {}
    model = task.model.to(device)
    base = fp32_baseline(task, device)
    secs["fp32 features + probe"] = time.perf_counter() - t0
    rows: dict[str, dict] = {"FP32 torch": {"acc": base.correct.mean(), "agreement": 1.0, "cosine": 1.0,
                                            "delta_pp": 0.0, "ci_lo": 0.0, "ci_hi": 0.0, "correct": base.correct}}
    info: dict[str, dict] = {}
    qms = {}
    sweeps: dict[str, list] = {}
    calib_files: dict[str, str] = {}
    result = {"task": task.name, "model": task.model_name, "info": task.info, "n_test": len(base.correct),
              "n_train": len(task.train_labels), "n_calib": sum(len(next(iter(b.values()))) for b in task.calib),
              "n_eval": sum(len(next(iter(b.values()))) for b in task.evals), "device": device,
              "rows": rows, "placement": info, "sweeps": sweeps, "seconds": secs, "calib_files": calib_files}

    def torch_row(label, qm, feats=None):
        t = time.perf_counter()
        rows[label] = base.score(feats if feats is not None else torch_features(task, qm, task.test, device))
        info[label] = _placement_info(qm)
        qms[label] = qm
        log(f"  {label}: {100 * rows[label]['acc']:.2f}% ({rows[label]['delta_pp']:+.2f} pp "
            f"[{rows[label]['ci_lo']:+.2f}, {rows[label]['ci_hi']:+.2f}]) {time.perf_counter() - t:.0f} s")

    t = time.perf_counter()
    qm = _quantize(task, model, fxq.preset("tensorrt-fp8"), device)
    secs["fxq quantize"] = time.perf_counter() - t
    torch_row("fxq FP8 torch", qm)
    _write(out_dir, result, base)

    if with_sensitivity:
        _sensitivity(task, qm, model, device, out_dir, secs, result, log)
    t = time.perf_counter()
    variants = [("fxq FP8 + fallback torch", ("attention", "gemm"), fractions),
                ("fxq FP8 + fallback, all attention FP8, torch", ("gemm",), fractions_attention_fp8)]
    for label, kinds, fracs in [v for v in variants if v[2]]:
        (chosen_info, chosen_qm), sweep = choose_fallback(task, model, qm, device, kinds, log, fracs)
        sweeps[label] = []
        for sinfo, sqm in sweep:  # every budget on the test set too, for the record
            feats = torch_features(task, sqm, task.test, device)
            r = base.score(feats)
            sweeps[label].append({**sinfo, **{k: v for k, v in r.items() if k != "correct"}})
            if sqm is chosen_qm:
                torch_row(label, chosen_qm, feats)
        info[label].update({"budget_fraction": chosen_info["fraction"], "max_error": chosen_info["max_error"],
                            "gains": chosen_info["gains"]})
        _write(out_dir, result, base)
    secs["fallback sweeps"] = time.perf_counter() - t
    torch_row("fxq gemm-only preset torch", _quantize(task, model, fxq.preset("gemm-only"), device))
    for field_name, value, label in (("weight_rounding", "gptq", "fxq FP8 GPTQ weights torch"),
                                     ("weight_axis", 0, "fxq FP8 per-channel weights torch")):
        if field_name in {f.name for f in dataclasses.fields(fxq.QuantConfig)}:  # helper C2's options, once merged
            torch_row(label, _quantize(task, model, dataclasses.replace(fxq.QuantConfig(), **{field_name: value}), device))

    # Save every variant's calibration: the ONNX rows are rebuilt from these on the CPU.
    for label, q in qms.items():
        f = out_dir / f"calib_{task.name}_{label.split(' torch')[0].replace(' ', '_').replace(',', '').replace('+', 'plus')}.json"
        q.save_calibration(f)
        calib_files[label] = f.name
    _write(out_dir, result, base)

    # ONNX FP16 rows on the CPU (onnxruntime), most important first, while time allows.
    cpu_model = task.model.to("cpu")
    wanted = {"fxq FP8 + fallback torch": "fxq FP8 + fallback ONNX fp16 (ORT)",
              "FP16 ONNX": "FP16 ONNX, no FP8 (ORT)", "fxq FP8 torch": "fxq FP8 ONNX fp16 (ORT)",
              "fxq FP8 + fallback, all attention FP8, torch": "fxq FP8 + fallback, all attention FP8, ONNX fp16 (ORT)",
              "fxq gemm-only preset torch": "fxq gemm-only preset ONNX fp16 (ORT)"}
    t = time.perf_counter()
    for key in onnx_rows:
        if time.perf_counter() > deadline:
            log(f"  out of time: no {wanted[key]}")
            continue
        try:
            _onnx_row(task, base, key, wanted[key], cpu_model, out_dir, calib_files, rows, info, log)
        except Exception as e:  # keep the rows already measured
            log(f"  {wanted[key]} failed: {type(e).__name__}: {e}")
        _write(out_dir, result, base)
    secs["ONNX export + ORT eval"] = time.perf_counter() - t
    fp16 = rows.get("FP16 ONNX, no FP8 (ORT)")
    for label, r in rows.items():  # the deployment baseline: FP8 ONNX against plain FP16 ONNX, paired
        if fp16 is not None and label.endswith("(ORT)") and r is not fp16:
            r.update({f"vs_{k}": v for k, v in paired_delta(r["correct"], fp16["correct"], base.boot).items()})
    _write(out_dir, result, base)
    return result


def _onnx_row(task, base, key, label, cpu_model, out_dir, calib_files, rows, info, log):
    t1 = time.perf_counter()
    example = {k: v for k, v in task.example.items()}
    if key == "FP16 ONNX":
        q = no_fp8(cpu_model, example)
    else:  # rebuilt from the saved calibration file: its config (preset, fallback) and amax
        saved = out_dir / calib_files[key]
        cfg = fxq.QuantConfig.from_dict(json.loads(saved.read_text())["config"])
        q = fxq.quantize(cpu_model, example, config=cfg, calibration=saved, progress=False)
    path = out_dir / f"{task.name}_{len(rows)}.onnx"
    q.export_onnx(path, dtype=torch.float16)
    t2 = time.perf_counter()
    feats = onnx_features(task, path, task.test)
    rows[label] = base.score(feats)
    info[label] = _placement_info(q)
    path.unlink()
    r = rows[label]
    log(f"  {label}: {100 * r['acc']:.2f}% ({r['delta_pp']:+.2f} pp [{r['ci_lo']:+.2f}, {r['ci_hi']:+.2f}]) "
        f"export {t2 - t1:.0f} s, ORT {time.perf_counter() - t2:.0f} s")


def _write(out_dir: Path, result: dict, base: Baseline) -> None:
    doc = json.loads(json.dumps(result, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))
    for r in doc["rows"].values():
        r.pop("correct", None)
    (out_dir / f"accuracy_{result['task']}.json").write_text(json.dumps(doc, indent=1))
    np.savez_compressed(out_dir / f"correct_{result['task']}.npz",
                        **{k: v["correct"] for k, v in result["rows"].items()}, fp32_preds=base.preds)
