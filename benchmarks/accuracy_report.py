"""`python -m benchmarks.accuracy --report DIR`: results/accuracy.md from the JSON files accuracy runs wrote to DIR.

One job: render the results page. Per task, the variants' accuracy and paired deltas (against FP32 and
against the plain FP16 ONNX file), every fallback budget swept, and the run's data, sizes, device and
seconds. ONNX rows measured on another machine with --onnx-from are merged in, marked *.
"""
from __future__ import annotations

import json
from pathlib import Path


def report(results_dir: Path) -> str:
    """The page for every accuracy_<task>.json in results_dir, with its onnx_cpu_<task>.json rows if present."""
    docs = []
    for p in sorted(results_dir.glob("accuracy_*.json")):
        d = json.loads(p.read_text())
        extra = p.parent / f"onnx_cpu_{d['task']}.json"  # ONNX rows measured here for a torch run elsewhere
        if extra.is_file():
            for label, r in json.loads(extra.read_text()).items():
                d["rows"][label + " *"] = r
                d["placement"][label + " *"] = {k: r[k] for k in ("gemm_fp8_share", "attention_fp8",
                                                                  "attention_blocks", "fallback")}
        docs.append(d)
    note = "\n\n".join(d.get("note", "") for d in docs)
    return markdown(docs, note)


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
