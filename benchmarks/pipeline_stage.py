"""One tool's whole FP8 pipeline on one model, in a fresh process: quantize+calibrate, ONNX (FP16)
export, post-processing, save. Prints one JSON line with wall seconds per stage and peak RSS.

Run by benchmarks/vs_modelopt.py: `--tool fxq` in the fxq venv, `--tool modelopt` in
.venv-modelopt (ModelOpt is never imported by fxq). Both read the same calibration batches from
the --batches file the orchestrator wrote.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_model(name: str) -> torch.nn.Module:
    from fxq.cli import zoo

    if name == "minilm":
        return zoo.load_minilm()[0]
    if name == "dinov2":
        return zoo.load_dinov2_small()
    if name == "vit_base":  # HF ViT-base defaults, random weights (seeded)
        from transformers import ViTConfig, ViTModel

        torch.manual_seed(0)
        cfg = ViTConfig()
        cfg._attn_implementation = "eager"
        return ViTModel(cfg, add_pooling_layer=False).eval()
    raise ValueError(f"unknown model {name!r}")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ---------------------------------------------------------------------------------------------- fxq
def run_fxq(model, batches: dict, out: Path) -> dict:
    import fxq

    t = time.perf_counter()
    qm = fxq.quantize(model, batches["example"], batches["calib"], progress=False)
    quant = time.perf_counter() - t
    r = qm.export_onnx(out, dtype=torch.float16)
    s = r.seconds
    return {"quantize": quant, "export": s["convert_dtype"] + s["onnx_export"], "post_process": s["post_process"],
            "save": s["save"], "config": "fxq.preset('tensorrt-fp8') (the default QuantConfig)"}


# ----------------------------------------------------------------------------------------- ModelOpt
def modelopt_config() -> dict:
    """FP8_DEFAULT_CFG plus the ViT MHA additions of ModelOpt's examples/torch_onnx (LayerNorm
    output quantizer, LayerNorm input quantizer off) and the [qkv] BMM quantizers of its
    recipe unit configs/ptq/units/attention_qkv_fp8 (softmax Q/DQ is added by its FP8 exporter)."""
    import modelopt.torch.quantization as mtq

    fp8 = {"num_bits": (4, 3), "axis": None}
    cfg = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    cfg["quant_cfg"] = list(cfg["quant_cfg"]) + [
        {"parent_class": "nn.LayerNorm", "quantizer_name": "*output_quantizer", "cfg": fp8},
        {"parent_class": "nn.LayerNorm", "quantizer_name": "*input_quantizer", "enable": False},
        {"quantizer_name": "*[qkv]_bmm_quantizer", "cfg": fp8},
    ]
    return cfg


class _Positional(torch.nn.Module):
    """ModelOpt's exporter passes inputs positionally and HF forward() signatures break that
    (BertModel: 'multiple values for use_cache'); take named tensors, return plain tuples."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, *inputs):
        out = self.model(**dict(zip(self.names, inputs)))
        return tuple(v for v in out.to_tuple() if isinstance(v, torch.Tensor))


def fix_modelopt_onnx(model):
    """What onnxruntime (and any standard ONNX reader) needs before it can load ModelOpt's file:
    its Q/DQ nodes keep the custom 'trt' domain after being renamed to native ops, and the
    value_info left over from the TRT custom ops types Q outputs wrongly."""
    import onnx

    for n in model.graph.node:
        if n.domain == "trt" and n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            n.domain = ""
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def run_modelopt(model, batches: dict, out: Path) -> dict:
    import onnx
    import modelopt.torch.quantization as mtq
    from modelopt.torch._deploy.utils import get_onnx_bytes_and_metadata
    from modelopt.torch._deploy.utils.torch_onnx import OnnxBytes

    cfg = modelopt_config()

    def forward_loop(m):
        for b in batches["calib"]:
            m(**b)

    t = time.perf_counter()
    model = mtq.quantize(model, cfg, forward_loop)
    quant = time.perf_counter() - t

    # Time torch.onnx.export (TorchScript, inside ModelOpt) apart from ModelOpt's post-processing.
    names = list(batches["example"])
    exported = {}
    real_export = torch.onnx.export

    def timed_export(*a, **k):
        t0 = time.perf_counter()
        try:
            return real_export(*a, **k)
        finally:
            exported["seconds"] = time.perf_counter() - t0

    torch.onnx.export = timed_export
    # ModelOpt names the wrapper's varargs inputs.0, inputs.1, ...; dynamic batch like fxq's export
    dyn = {f"inputs.{i}": {0: "batch"} for i in range(len(names))}
    t = time.perf_counter()
    try:
        blob, _meta = get_onnx_bytes_and_metadata(
            _Positional(model, names), tuple(batches["example"][n] for n in names),
            dynamic_axes=dyn, onnx_opset=20, weights_dtype="fp16")
    finally:
        torch.onnx.export = real_export
    total = time.perf_counter() - t
    t = time.perf_counter()
    proto = fix_modelopt_onnx(onnx.load_from_string(OnnxBytes.from_bytes(blob).get_onnx_model_file_bytes()))
    fixes = time.perf_counter() - t
    t = time.perf_counter()
    onnx.save(proto, out)
    save = time.perf_counter() - t
    return {"quantize": quant, "export": exported["seconds"], "post_process": total - exported["seconds"] + fixes,
            "save": save, "fixes": fixes, "config": json.dumps(cfg["quant_cfg"][-3:], default=str)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", choices=["fxq", "modelopt"], required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", type=Path, required=True, help="torch.save'd {'example', 'calib'}")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = load_model(args.model)
    batches = torch.load(args.batches, weights_only=True)
    with torch.no_grad():  # warm-up outside the timed stages: both tools pay it alike
        model(**batches["example"])
    rss_loaded = peak_rss_mb()
    run = run_fxq if args.tool == "fxq" else run_modelopt
    res = run(model, batches, args.out)
    res.update(peak_rss_mb=peak_rss_mb(), rss_after_load_mb=rss_loaded, bytes=args.out.stat().st_size,
               total=res["quantize"] + res["export"] + res["post_process"] + res["save"])
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
