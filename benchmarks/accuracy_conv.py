"""FP8 convolutions on pretrained weights: the task delta with fxq's conv roles on and off, paired bootstrap CIs.

Model: the YOLOv8n backbone shipped in the nudenet wheel (benchmarks/onnx_convnet.py): 27 convs, 26 of them
eligible for FP8 under TensorRT's rules (the RGB stem stays float). Task: a linear probe on its pooled pyramid
features (strides 8, 16, 32) for Fashion-MNIST, fitted on FP32 features and applied unchanged to every variant's
features of the same test images; the probe, scoring and paired bootstrap are benchmarks/accuracy_tasks.py's.

    pip install --no-deps nudenet==3.4.2 && apt-get install -y dataset-fashion-mnist
    python -m benchmarks.accuracy_conv --out results/accuracy_conv.md            # ~15 min on 2 CPU cores
    python -m benchmarks.accuracy_conv --quick --out /tmp/conv_quick.md            # smoke run
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import fxq
from benchmarks import accuracy_tasks as T
from benchmarks import accuracy_variants as V
from benchmarks.datasets import fashion_mnist
from benchmarks.onnx_convnet import OnnxConvNet, nudenet_onnx
from fxq.accuracy.groups import fp8_convs

SIZES = {"full": dict(n_train=2000, n_test=2000, n_calib=128, n_eval=128),
         "quick": dict(n_train=200, n_test=200, n_calib=32, n_eval=32)}
CONV_OFF = fxq.QuantConfig(roles=fxq.RoleSpecs(conv_input=None, conv_weight=None))


def pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, 28, 28] -> [N, 3, size, size] in [0, 1], grey replicated to RGB (YOLO's input range)."""
    x = torch.nn.functional.interpolate(images.float().div(255).unsqueeze(1), size=(size, size), mode="bilinear",
                                        align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous()


def load_task(n_train: int, n_test: int, n_calib: int, n_eval: int, size: int, batch: int) -> T.Task:
    tr_img, tr_lbl = fashion_mnist("train", n_train + n_calib + n_eval)
    te_img, te_lbl = fashion_mnist("test", n_test)

    def batches(images, n=batch):
        return [{"images": pixels(c, size)} for c in T._chunks(images, n)]

    return T.Task("conv", "YOLOv8n backbone (nudenet 3.4.2, 320n.onnx)", OnnxConvNet(nudenet_onnx()).eval(),
                  train=batches(tr_img[:n_train]), test=batches(te_img),
                  calib=batches(tr_img[n_train:n_train + n_calib], 32), evals=batches(tr_img[n_train + n_calib:]),
                  train_labels=tr_lbl[:n_train], test_labels=te_lbl, features=lambda h, _b: h.float(),
                  info={"data": f"Fashion-MNIST: the first {n_test} test images; probe on the first {n_train} train "
                                f"images, calibration on the next {n_calib}, fallback budget on the {n_eval} after",
                        "input": f"{size} px, grey->RGB, [0, 1]", "feature": "global mean of P3, P4, P5 (64+128+256)"})


def conv_info(qm) -> dict:
    p = qm.placement
    fp8 = fp8_convs(p)
    conv_flops = sum(g.flops for g in p.groups if g.kind == "conv")
    skips = sorted({f"{s.reason}" for s in p.skips if s.what == "conv"})
    return {"convs_fp8": len(fp8), "convs": p.convs, "conv_flop_share": sum(g.flops for g in fp8) / max(conv_flops, 1),
            "conv_skips": skips}


def run(args) -> dict:
    size = SIZES["quick" if args.quick else "full"]
    task = load_task(**size, size=args.image_size, batch=args.batch)
    t0 = time.perf_counter()
    base = T.fp32_baseline(task, "cpu")
    secs = {"fp32 features + probe": time.perf_counter() - t0}
    rows = {"FP32 torch": {**base.score(base.feats), "convs_fp8": 0}}
    variants = [("fxq FP8, conv roles on (default preset)", fxq.preset("tensorrt-fp8")),
                ("fxq FP8, conv roles on, per-channel conv weights", dataclasses.replace(fxq.QuantConfig(), weight_axis=0)),
                ("fxq, conv roles off (RoleSpecs(conv_input=None, conv_weight=None))", CONV_OFF)]
    qms = {}
    for label, cfg in variants:
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:  # conv roles off: the no-op warning, recorded
            warnings.simplefilter("always")
            qm = V._quantize(task, task.model, cfg, "cpu")
        qms[label] = qm
        rows[label] = {**base.score(T.torch_features(task, qm, task.test, "cpu")), **conv_info(qm),
                       "warnings": sorted({str(w.message) for w in caught if issubclass(w.category, UserWarning)
                                            and "fxq" in w.filename + str(w.message)})}
        secs[label] = time.perf_counter() - t
        print(f"  {label}: {_fmt(rows[label])} ({secs[label]:.0f} s)", flush=True)
    if args.fallback:
        t = time.perf_counter()
        fallback_row(task, base, qms[variants[0][0]], rows, args.fallback)
        secs["conv fallback"] = time.perf_counter() - t
    if args.onnx:
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="fxq_accuracy_conv_") as tmp:
            onnx_rows(task, base, qms[variants[0][0]], rows, Path(tmp))
        secs["ONNX export + ORT"] = time.perf_counter() - t
    for r in rows.values():
        r.pop("correct", None)
    return {"task": task.info, "model": task.model_name, "n_test": len(base.correct), "rows": rows, "seconds": secs}


def fallback_row(task, base, qm_all, rows, fraction: float) -> None:
    """fxq's budgeted fallback over conv groups: the most sensitive convs back to float until the eval split's
    1 - cosine is at most `fraction` x the all-FP8 one (benchmarks/accuracy_variants.py's sweep, one budget)."""
    (info, qm), _ = V.choose_fallback(task, task.model, qm_all, "cpu", ("conv",), print, (fraction,))
    label = f"fxq FP8 + conv fallback ({fraction:g}x the all-FP8 eval error)"
    rows[label] = {**base.score(T.torch_features(task, qm, task.test, "cpu")), **conv_info(qm),
                   "fallback": info["fallback"], "eval_error": [info["all_fp8"], info["final"]]}
    print(f"  {label}: {_fmt(rows[label])}, float: {info['fallback']}", flush=True)


def onnx_rows(task, base, qm, rows, tmp_dir: Path) -> None:
    """What TensorRT would be given: the FP8 ONNX in FP16 and a plain FP16 ONNX, both run in onnxruntime."""
    with warnings.catch_warnings():  # NO_FP8 quantizes nothing on purpose
        warnings.simplefilter("ignore")
        plain = V._quantize(task, task.model, V.NO_FP8, "cpu")
    fp16 = None
    for label, q in (("FP16 ONNX, no FP8 (ORT)", plain), ("fxq FP8 ONNX fp16, conv roles on (ORT)", qm)):
        path = q.export_onnx(tmp_dir / f"{len(rows)}.onnx", dtype=torch.float16).path
        r = base.score(T.onnx_features(task, path, task.test))
        if fp16 is None:
            fp16 = r
        else:
            r.update({f"vs_{k}": v for k, v in T.paired_delta(r["correct"], fp16["correct"], base.boot).items()})
        rows[label] = {**r, **conv_info(q)}
        print(f"  {label}: {_fmt(r)}", flush=True)


def _fmt(r: dict) -> str:
    return f"{100 * r['acc']:.2f}% ({r['delta_pp']:+.2f} pp [{r['ci_lo']:+.2f}, {r['ci_hi']:+.2f}])"


def markdown(doc: dict, command: str) -> str:
    out = ["# FP8 convolutions on pretrained weights (fxq)", "",
           f"`{command}` on {doc['machine']}, {doc['date']}. Model: {doc['model']}, weights read from the wheel's ONNX "
           "file into torch (matches onnxruntime on it to 2e-6). Task: "
           f"{doc['task']['data']}; input {doc['task']['input']}; feature: {doc['task']['feature']}. Linear probe "
           "(benchmarks/probe.py, L-BFGS, seed 0) fitted on FP32 torch features, applied unchanged to every variant. "
           f"Deltas: paired bootstrap 95% CI ({T.BOOTSTRAP} resamples of the test items, the same resample for both "
           "sides). Agreement: share of test items whose predicted class equals the FP32 prediction. The backbone has "
           "no GEMM and no attention, so with the conv roles off fxq places nothing (and warns): that row is the FP32 "
           "model. The deployment baseline is the plain FP16 ONNX row. The weights are Ultralytics YOLOv8n fine-tuned "
           "by NudeNet (AGPL-3.0): read from the installed wheel, never copied into this repository.", "",
           "| variant | accuracy | delta vs FP32 (pp) [95% CI] | delta vs FP16 ONNX (pp) [95% CI] | agreement | "
           "feature cosine | convs FP8 | conv FLOPs in FP8 | convs left float |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for label, r in doc["rows"].items():
        vs = f"{r['vs_delta_pp']:+.2f} [{r['vs_ci_lo']:+.2f}, {r['vs_ci_hi']:+.2f}]" if "vs_delta_pp" in r else ""
        convs = f"{r['convs_fp8']}/{r['convs']}" if "convs" in r else ""
        share = f"{100 * r['conv_flop_share']:.1f}%" if "conv_flop_share" in r else ""
        out.append(f"| {label} | {100 * r['acc']:.2f}% | {r['delta_pp']:+.2f} [{r['ci_lo']:+.2f}, {r['ci_hi']:+.2f}] | "
                   f"{vs} | {100 * r['agreement']:.2f}% | {r['cosine']:.5f} | {convs} | {share} | "
                   f"{', '.join(r.get('conv_skips', []))} |")
    warned = [f"{k}: {w}" for k, r in doc["rows"].items() for w in r.get("warnings", [])]
    for label, r in doc["rows"].items():
        if "fallback" in r:
            out += ["", f"{label}: eval 1 - cosine {r['eval_error'][0]:.2e} (all FP8) -> {r['eval_error'][1]:.2e}; "
                    f"convs kept float: {', '.join(r['fallback'])}."]
    out += ["", "Warnings fxq gave: " + ("; ".join(warned) if warned else "none") + ".", "",
            "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in doc["seconds"].items()) + "."]
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/accuracy_conv.md"))
    ap.add_argument("--quick", action="store_true", help="200 train / 200 test images")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--no-onnx", dest="onnx", action="store_false", help="torch rows only")
    ap.add_argument("--fallback", type=float, default=0.5, help="conv fallback budget (x all-FP8 error); 0: none")
    args = ap.parse_args(argv)
    torch.manual_seed(T.SEED)
    doc = run(args)
    doc.update(machine=f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
               date=time.strftime("%Y-%m-%d"))
    command = "python -m benchmarks.accuracy_conv " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str))
    args.out.write_text(markdown(doc, command.strip()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
