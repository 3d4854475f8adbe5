"""benchmarks/recipe.py's JSON results -> one markdown table per run (fxq's levers and ModelOpt side by side).

    python -m benchmarks.recipe_report DIR [DIR ...] --out results/accuracy.md --section [--title "..."]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

MODELOPT_ROWS = {"torch": "ModelOpt FP8 (MHA) torch", "ORT": "ModelOpt FP8 (MHA) ONNX fp16 (ORT)"}


START, END = "<!-- recipe results: benchmarks/recipe_report.py --section -->", "<!-- end of recipe results -->"


def _ci(r: dict, prefix: str = "") -> str:
    if f"{prefix}delta_pp" not in r:
        return ""
    return f"{r[prefix + 'delta_pp']:+.2f} [{r[prefix + 'ci_lo']:+.2f}, {r[prefix + 'ci_hi']:+.2f}]"


def vs_modelopt(doc: dict, correct) -> dict[str, str]:
    """Each fxq row minus ModelOpt's row of the same back end (torch or ONNX), paired on the same items."""
    from benchmarks.accuracy_tasks import BOOTSTRAP, SEED, paired_delta

    out = {}
    for label in doc["rows"]:
        mo = MODELOPT_ROWS["ORT" if label.endswith("(ORT)") else "torch"]
        if correct is None or not label.startswith("fxq") or mo not in correct.files or label not in correct.files:
            continue
        a, b = correct[label], correct[mo]
        if len(a) == len(b):
            boot = np.random.default_rng(SEED).integers(0, len(a), size=(BOOTSTRAP, len(a)))
            out[label] = _ci(paired_delta(a, b, boot))
    return out


def table(doc: dict, correct=None) -> list[str]:
    out = [f"### {doc['task']}: {doc['model']}, {doc['n_test']} test items (data: {doc['info']['data']})", "",
           f"{doc['note']}. `python -m benchmarks.recipe {' '.join(doc['argv'])}`. Probe train n {doc['n_train']}, "
           f"test n {doc['n_test']} (ONNX rows: the first {doc['onnx_n']} test items, paired with FP32 on those "
           f"items), fallback eval split n {doc['n_eval']} (disjoint from probe train and test); "
           f"{doc.get('k_centered', 0)} K projections centered.", "",
           "| variant | n | accuracy | delta vs FP32 (pp) [95% CI] | delta vs FP16 ONNX (pp) [95% CI] | "
           "fxq minus ModelOpt, same back end (pp) [95% CI] | agreement "
           "with FP32 | GEMMs FP8 | GEMM FLOPs FP8 | attention FP8 | fallback | TensorRT-ready (fxq checker) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    vs = vs_modelopt(doc, correct)
    for label, r in doc["rows"].items():
        gemms = f"{r['gemms_fp8']}/{r['gemms']}" if "gemms" in r else ""
        share = f"{100 * r['gemm_fp8_share']:.1f}%" if "gemm_fp8_share" in r else ""
        attn = f"{r['attention_fp8']}/{r['attention_blocks']}" if "attention_blocks" in r else ""
        fb = r.get("fallback") or []
        fb_text = (f"{len(fb)} groups FP16 ({r.get('budget', '')})" if fb else r.get("budget", "")) if "fallback" in r else ""
        out.append(f"| {label} | {r.get('n', doc['n_test'])} | {100 * r['acc']:.2f}% | {_ci(r)} | {_ci(r, 'vs_')} | {vs.get(label, '')} | "
                   f"{100 * r['agreement']:.2f}% | {gemms} | {share} | {attn} | {fb_text} | {r.get('trt_ready', '')} |")
    for label, err in doc.get("onnx_errors", {}).items():
        out += ["", f"No ONNX row for {label}: {err}"]
    mo = doc.get("modelopt")
    if mo:
        if "error" in mo:
            out += ["", f"ModelOpt did not run: {mo['error']}"]
        else:
            out += ["", f"ModelOpt {mo['modelopt']}: {mo['attention_modules_with_bmm_quantizers']} attention modules "
                    f"got Q/K/V BMM quantizers, {mo['attention_fp8']} with all three enabled; "
                    f"{mo['gemms_fp8']}/{mo['gemms']} Linear layers with input and weight quantizers. "
                    + (f"FP16 ONNX: {mo['onnx_error']}" if mo.get("onnx_error") else "")]
    return out + [""]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="FP8 accuracy: fxq's levers together, and ModelOpt on the same test items")
    ap.add_argument("--section", action="store_true",
                    help="replace the part of --out between the recipe markers instead of writing a whole file")
    args = ap.parse_args(argv)
    lines = [f"## {args.title}" if args.section else f"# {args.title}", ""]
    for d in args.dirs:
        for p in sorted(d.glob("recipe_*.json")):
            npz = p.with_name(p.name.replace("recipe_", "recipe_correct_").replace(".json", ".npz"))
            lines += table(json.loads(p.read_text()), np.load(npz) if npz.is_file() else None)
    text = "\n".join(lines)
    if args.section:  # results/accuracy.md keeps its other sections
        old = args.out.read_text()
        head, rest = old.split(START, 1) if START in old else (old + "\n", END)
        text = f"{head}{START}\n{text}\n{END}{rest.split(END, 1)[1]}"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
