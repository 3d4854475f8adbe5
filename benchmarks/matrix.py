"""The architecture matrix: every family in benchmarks/families.py, end to end, as a markdown table.

    .venv/bin/python benchmarks/matrix.py                       # default configs, eager attention
    .venv/bin/python benchmarks/matrix.py --size small --attn eager,sdpa --out /tmp/m.md

For each family: build from its config (random weights), fxq.quantize with 2 calibration batches,
export FP16 ONNX (dynamo exporter + onnx_post passes), run the TensorRT readiness checker. A failure
in one family becomes a row saying why; the script goes on with the others.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from families import CONV_FAMILIES, FAMILIES  # noqa: E402

import torch  # noqa: E402

import fxq  # noqa: E402
from fxq.accuracy.groups import fp8_convs  # noqa: E402
from onnx_post.checker import check_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALL = {**FAMILIES, **CONV_FAMILIES}
COLUMNS = ("model", "attn", "params", "GEMMs quantized", "attention ready", "convs FP8", "convs ready", "reasons for the rest",
           "quantize s", "export s", "post s", "check s", "FP8 ONNX MB", "vs FP16 weights")


def run_one(name: str, size: str, attn: str, workdir: Path) -> dict:
    fam = ALL[name]
    row = {"model": name, "attn": attn}
    try:
        model, example, batches = fam.build(size, attn)
        params = sum(p.numel() for p in model.parameters())
        row["params"] = f"{params / 1e6:.1f}M"
        t = time.perf_counter()
        qm = fxq.quantize(model, example, batches, progress=False)
        row["quantize s"] = f"{time.perf_counter() - t:.1f}"
        p = qm.placement
        skipped = [k for k in p.skips if k.what == "gemm"]
        row["GEMMs quantized"] = f"{p.gemms - len(skipped)}/{p.gemms}"
        row["convs FP8"] = f"{len(fp8_convs(p))}/{p.convs}"
        res = qm.export_onnx(workdir / f"{name}_{attn}.onnx", dtype=getattr(torch, fam.onnx_dtype))
        row["export s"] = f"{res.seconds.get('convert_dtype', 0) + res.seconds.get('onnx_export', 0):.1f}"
        row["post s"] = f"{res.seconds.get('post_process', 0):.1f}"
        t = time.perf_counter()
        rep = check_model(res.path)
        row["check s"] = f"{time.perf_counter() - t:.1f}"
        row["attention ready"] = f"{sum(a.ready for a in rep.attention)}/{len(rep.attention)}"
        row["convs ready"] = f"{sum(c.ready for c in rep.convs)}/{len(rep.convs)}"
        reasons = Counter(r for a in rep.attention if not a.ready for r in a.reasons)
        reasons.update(r for c in rep.convs if not (c.ready or c.skipped) for r in c.reasons)  # skipped: fxq's own
        reasons.update(f"fxq:{k.reason}" for k in p.skips)
        row["reasons for the rest"] = ", ".join(f"{r} x{n}" for r, n in sorted(reasons.items())) or "-"
        row["FP8 ONNX MB"] = f"{res.bytes / 1e6:.1f}"
        row["vs FP16 weights"] = f"{res.bytes / (2 * params):.2f}"
        res.path.unlink()
    except Exception as e:  # one family failing must not hide the others
        row["reasons for the rest"] = f"FAILED {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return row


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")).replace("|", "/") for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("small", "default"), default="default")
    ap.add_argument("--attn", default="eager", help="comma list of attention implementations (eager,sdpa)")
    ap.add_argument("--families", default=",".join(ALL), help="comma list, default: all")
    ap.add_argument("--out", default=str(ROOT / "docs" / "architecture_matrix.md"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    attns = args.attn.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fxq_matrix_") as tmp:
        for name in args.families.split(","):
            for attn in attns:
                if attn not in ALL[name].attn:
                    continue
                t = time.perf_counter()
                rows.append(run_one(name, args.size, attn, Path(tmp)))
                print(f"{name} {attn}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    cmd = "python benchmarks/matrix.py " + " ".join(argv if argv is not None else sys.argv[1:])
    notes = [f"- {f.name}: {f.note}" for f in ALL.values() if f.note and f.name in args.families.split(",")]
    header = "\n".join([
        "# Architecture matrix (generated)",
        "",
        f"Generated by `{cmd.strip()}` on {datetime.date.today().isoformat()}, "
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{args.threads} threads. Do not edit by hand: rerun the command.",
        "",
        f"Config size: `{args.size}` ({'transformers defaults' if args.size == 'default' else 'test-sized'}); "
        "random weights, batch 2, 2 calibration batches, FP16 ONNX (FP32 where a note says so) at opset 21 with "
        "dynamic batch. "
        "Text inputs: " + ("128 tokens (CLIP text 77)" if args.size == "default" else "16 tokens")
        + ", with some padding where the model takes a mask.",
        "",
        "Columns: GEMMs quantized = linear layers fxq put FP8 on (the rest are too small for FP8); attention ready = "
        "blocks the onnx_post checker finds TensorRT-FP8-MHA-ready; reasons = checker reason codes for blocks "
        "not ready, plus `fxq:` skip codes from fxq's report; convs FP8 = convolutions fxq put an FP8 input and weight "
        "on (the rest stay float under TensorRT's rules, with their `fxq:conv_*` code); convs ready = convs the checker "
        "finds FP8-ready in the ONNX file; quantize = capture + place + calibrate; "
        "export = FP16 recapture + dynamo ONNX export; post = onnx_post passes; "
        "vs FP16 weights = ONNX file bytes / (2 bytes x parameters).",
        "",
        *notes,
    ])
    text = markdown(rows, header)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0 if all(not r.get("reasons for the rest", "").startswith("FAILED") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
