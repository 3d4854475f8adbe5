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
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import fxq  # noqa: E402
from fxq.accuracy.groups import fp8_attention_blocks, fp8_gemm_flop_share  # noqa: E402

from benchmarks.accuracy_tasks import (BOOTSTRAP, SEED, SIZES, Baseline, Task, _to, fp32_baseline,  # noqa: E402
                                       load_task, onnx_features, paired_delta, save_bundle, torch_features)
from benchmarks.probe import fit_linear_probe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Fallback budgets tried, as fractions of the all-FP8 metric on the eval split; the one used is
# the tightest whose fallback keeps >= MIN_GEMM_SHARE of GEMM FLOPs in FP8 (decided on the eval
# split alone, never on the test set).
BUDGET_FRACTIONS = (0.7, 0.5, 0.35, 0.25)
MIN_GEMM_SHARE = 0.90

# -- variants ---------------------------------------------------------------------------------------
NO_FP8 = fxq.QuantConfig(roles=fxq.RoleSpecs(**{f.name: None for f in dataclasses.fields(fxq.RoleSpecs)}))


def no_fp8(model, example):
    """The model through fxq with nothing quantized (no calibration): the plain FP16 baseline's program."""
    return fxq.quantize(model, example, None, NO_FP8, calibration={"version": 1, "batches": 1, "amax": {}},
                        progress=False)


def _quantize(task, model, config, device, **kw):
    calib = [_to(b, device) for b in task.calib]
    return fxq.quantize(model, _to(task.example, device), calib, config, progress=False, **kw)


def _placement_info(qm) -> dict:
    p = qm.placement
    return {"gemm_fp8_share": fp8_gemm_flop_share(p), "attention_fp8": fp8_attention_blocks(p),
            "attention_blocks": p.attention_blocks, "fallback": list(qm.quant_config.fallback)}


def choose_fallback(task, model, qm_default, device, kinds, log, fractions=BUDGET_FRACTIONS) -> tuple:
    """Sweep the budgets on the eval split; return (chosen qm, sweep rows)."""
    from fxq.accuracy.groups import Evaluator

    evals = [_to(b, device) for b in task.evals]
    all_fp8 = Evaluator(model, qm_default.graph_module, evals, None).measure()
    sweep, chosen = [], None
    for frac in fractions:
        t = time.perf_counter()
        try:
            qm = _quantize(task, model, fxq.preset("tensorrt-fp8"), device,
                           fallback=fxq.Fallback(evals, frac * all_fp8, kinds=kinds))
        except fxq.ConfigError as e:  # e.g. attention alone keeps the metric above a GEMM-only budget
            log(f"  fallback {kinds} budget {frac:.2f}x: {e}")
            continue
        info = {"fraction": frac, "max_error": frac * all_fp8, "all_fp8": all_fp8, "final": qm.fallback_plan.final,
                "evaluations": qm.fallback_plan.evaluations, "seconds": time.perf_counter() - t,
                "gains": {c.group: c.gain for c in qm.fallback_plan.choices}, **_placement_info(qm)}
        log(f"  fallback {kinds} budget {frac:.2f}x: {len(info['fallback'])} groups FP16, "
            f"GEMM FP8 {100 * info['gemm_fp8_share']:.1f}%, attention FP8 {info['attention_fp8']}, "
            f"eval metric {info['final']:.2e} ({info['seconds']:.0f} s)")
        sweep.append((info, qm))
        if info["gemm_fp8_share"] >= MIN_GEMM_SHARE:
            chosen = (info, qm)
    return (chosen or sweep[0]), sweep


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
    amax = {"amax": default.amax, "batches": default.calibration_batches}
    known = {g.id for g in default.placement.groups}
    configs = {"FP16 ONNX, no FP8 (ORT)": (NO_FP8, {"amax": {}}, task.model),
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


# -- report -----------------------------------------------------------------------------------------
def markdown(docs: list[dict], note: str) -> str:
    out = ["# FP8 accuracy on pretrained weights (fxq)", "", note, "",
           "| task | eval n | variant | accuracy | delta vs FP32 (pp) [95% CI] | delta vs FP16 ONNX (pp) [95% CI] | "
           "agreement with FP32 | feature cosine | GEMM FLOPs in FP8 | attention blocks FP8 |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for d in docs:
        for variant, s in d["rows"].items():
            p = d["placement"].get(variant)
            vs = (f"{s['vs_delta_pp']:+.2f} [{s['vs_ci_lo']:+.2f}, {s['vs_ci_hi']:+.2f}]" if "vs_delta_pp" in s else "")
            share = f"{100 * p['gemm_fp8_share']:.1f}%" if p else ""
            attn = f"{p['attention_fp8']}/{p['attention_blocks']}" if p else ""
            cos = "" if s.get("cosine") is None or s["cosine"] != s["cosine"] else f"{s['cosine']:.5f}"  # NaN: not measured
            out.append(f"| {d['task']} | {d['n_test']} | {variant} | {100 * s['acc']:.2f}% | "
                       f"{s['delta_pp']:+.2f} [{s['ci_lo']:+.2f}, {s['ci_hi']:+.2f}] | {vs} | "
                       f"{100 * s['agreement']:.2f}% | {cos} | {share} | {attn} |")
    out += ["", "## Fallback budgets (chosen on the eval split; test-set numbers for the record)", "",
            "| task | variant | budget (x all-FP8 eval metric) | groups in FP16 | GEMM FLOPs in FP8 | attention FP8 | "
            "eval metric | test accuracy delta (pp) [95% CI] | agreement | used |", "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for d in docs:
        for label, sweep in d["sweeps"].items():
            used = d["placement"][label]["budget_fraction"]
            for s in sweep:
                groups = ", ".join(f"{g} ({s['gains'][g]:.1e})" for g in s["fallback"]) or "none"
                out.append(f"| {d['task']} | {label.removesuffix(' torch').removesuffix(',')} | {s['fraction']:.2f} | "
                           f"{groups} | {100 * s['gemm_fp8_share']:.1f}% | {s['attention_fp8']}/{s['attention_blocks']} | "
                           f"{s['final']:.2e} | {s['delta_pp']:+.2f} [{s['ci_lo']:+.2f}, {s['ci_hi']:+.2f}] | "
                           f"{100 * s['agreement']:.2f}% | {'yes' if s['fraction'] == used else ''} |")
    out += ["", "| task | data | probe train n | calib n | eval split n (sensitivity, fallback) | input | weights | "
            "device (torch) | seconds |", "|---|---|---:|---:|---:|---|---|---|---|"]
    for d in docs:
        i = d["info"]
        secs = ", ".join(f"{k} {v:.0f}" for k, v in d["seconds"].items())
        out.append(f"| {d['task']} | {i['data']} | {d['n_train']} | {d['n_calib']} | {d['n_eval']} | {i['input']}, "
                   f"{i['feature']} | {i['weights']} | {d['device']} | {secs} |")
    return "\n".join(out) + "\n"


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
        docs = []
        for p in sorted(args.report.glob("accuracy_*.json")):
            d = json.loads(p.read_text())
            extra = p.parent / f"onnx_cpu_{d['task']}.json"  # ONNX rows measured here for a torch run elsewhere
            if extra.is_file():
                for label, r in json.loads(extra.read_text()).items():
                    d["rows"][label + " *"] = r
                    d["placement"][label + " *"] = {k: r[k] for k in ("gemm_fp8_share", "attention_fp8",
                                                                      "attention_blocks", "fallback")}
            docs.append(d)
        note = "\n\n".join(d.get("note", "") for d in docs)
        text = markdown(docs, note)
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
