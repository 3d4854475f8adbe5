"""ModelOpt's FP8 recipe on one accuracy task, run in a python where nvidia-modelopt is installed.

Called by benchmarks/recipe.py (never imported by fxq). Loads the same task (same bundle or packages,
same sizes, same calibration batches), quantizes with ModelOpt's ViT FP8 recipe (FP8_DEFAULT_CFG +
LayerNorm output and Q/K/V BMM quantizers: benchmarks/pipeline_stage.py `modelopt_config`), and writes
  OUT/modelopt_features_<task>.pt   test-set features of its torch fake-quant model (scored by recipe.py)
  OUT/modelopt_<task>.onnx          its FP16 ONNX, fixed so onnxruntime can load it (where export works)
  OUT/modelopt_<task>.json          what it quantized: GEMMs and attention blocks with enabled quantizers
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks import accuracy_tasks as T
from benchmarks import recipe as R
from benchmarks.pipeline_stage import _Positional, fix_modelopt_onnx, modelopt_config


def enabled(q) -> bool:
    return q is not None and getattr(q, "is_enabled", False)


def what_is_quantized(model) -> dict:
    """GEMMs with both input and weight quantizers on; attention modules with q, k and v BMM quantizers on."""
    linears = [m for m in model.modules() if hasattr(m, "weight_quantizer") and hasattr(m, "input_quantizer")]
    fp8 = [m for m in linears if enabled(m.weight_quantizer) and enabled(m.input_quantizer)]
    attn = [m for m in model.modules() if hasattr(m, "q_bmm_quantizer")]
    attn_fp8 = [m for m in attn if all(enabled(getattr(m, f"{x}_bmm_quantizer", None)) for x in "qkv")]
    return {"gemms": len(linears), "gemms_fp8": len(fp8), "attention_fp8": len(attn_fp8),
            "attention_blocks": getattr(model.config, "num_hidden_layers", len(attn)),
            "attention_modules_with_bmm_quantizers": len(attn)}


def gemm_flop_share(model, example) -> float:
    """FP8 share of Linear FLOPs, from one forward of the example (rows x in x out per Linear)."""
    flops, hooks = {}, []
    for m in model.modules():
        if hasattr(m, "weight_quantizer") and hasattr(m, "input_quantizer"):
            hooks.append(m.register_forward_hook(
                lambda mod, i, o: flops.__setitem__(mod, i[0].numel() // i[0].shape[-1] * mod.weight.numel())))
    with torch.no_grad():
        model(**example)
    for h in hooks:
        h.remove()
    total = sum(flops.values())
    fp8 = sum(f for m, f in flops.items() if enabled(m.weight_quantizer) and enabled(m.input_quantizer))
    return fp8 / total if total else 0.0


def main(argv=None) -> None:
    import modelopt
    import modelopt.torch.quantization as mtq

    ap = argparse.ArgumentParser()
    ap.add_argument("--task", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-onnx", action="store_true", help="torch rows only")
    for k in ("--n-train", "--n-test", "--n-eval"):
        ap.add_argument(k, type=int)
    args = ap.parse_args(argv)
    torch.manual_seed(T.SEED)
    task = T.load_task(args.task, R.sizes_of(args), args.bundle, args.batch)
    model = task.model.to(args.device)
    cfg = modelopt_config()
    t = time.perf_counter()

    def forward_loop(m):
        for b in task.calib:
            m(**T._to(b, args.device))

    model = mtq.quantize(model, cfg, forward_loop)
    info = {"modelopt": modelopt.__version__, "quantize_seconds": time.perf_counter() - t, **what_is_quantized(model),
            "gemm_fp8_share": gemm_flop_share(model, T._to(task.example, args.device)),
            "config": json.dumps(cfg["quant_cfg"][-3:], default=str)}
    torch.save(T.torch_features(task, model, task.test, args.device), args.out / f"modelopt_features_{args.task}.pt")
    try:  # its FP16 ONNX (TorchScript exporter, opset 20, as in vs_modelopt), on the CPU
        if args.no_onnx:
            raise RuntimeError("not asked for (--no-onnx)")
        import onnx
        from modelopt.torch._deploy.utils import get_onnx_bytes_and_metadata
        from modelopt.torch._deploy.utils.torch_onnx import OnnxBytes

        model = model.to("cpu")
        names = list(task.example)
        blob, _ = get_onnx_bytes_and_metadata(_Positional(model, names), tuple(task.example[n] for n in names),
                                              dynamic_axes={f"inputs.{i}": {0: "batch"} for i in range(len(names))},
                                              onnx_opset=20, weights_dtype="fp16")
        proto = fix_modelopt_onnx(onnx.load_from_string(OnnxBytes.from_bytes(blob).get_onnx_model_file_bytes()))
        onnx.save(proto, args.out / f"modelopt_{args.task}.onnx")
    except Exception as e:  # its torch rows still count; say why there is no ONNX row
        info["onnx_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    (args.out / f"modelopt_{args.task}.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
