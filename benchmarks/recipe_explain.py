"""Rows of benchmarks/recipe.py that explain its numbers rather than offer another recipe.

- FP16 graph rows: a recipe's program converted to FP16 (fxq.conversion.graph_dtype.program_in_dtype, what the
  FP16 ONNX export writes), run in torch on the eval device over every test item. These carry the ONNX graph's
  numerics (FP16 activations, scales rounded to FP16) at the full test size, where onnxruntime on a CPU covers
  only a subset; the ONNX rows of the same recipe say how close the two are.
- Ablation rows: one recipe with one class of quantizers left in float, so the loss can be attributed to roles.
"""
from __future__ import annotations

import dataclasses

import torch

from benchmarks import accuracy_tasks as T
from benchmarks import accuracy_variants as V

# name -> the RoleSpecs fields left float (attention probs are only quantized together with q, k and v)
ABLATIONS = {
    "softmax output float": ("attn_probs",),
    "attention q/k/v/P float": ("attn_q", "attn_k", "attn_v", "attn_probs"),
    "GEMM activations float": ("linear_input", "layer_norm_output"),
    "weights float": ("linear_weight",),
}
NO_FP8_FP16 = "FP16 graph, no FP8 torch"


def fp16_features(task, program, device) -> torch.Tensor:
    """Test-set features of `program` converted to FP16, inputs cast to FP16 as the ONNX graph takes them."""
    from fxq.conversion.graph_dtype import program_in_dtype
    from fxq.verify import first_output

    module = program_in_dtype(program, torch.float16).module()
    feats = []
    with torch.no_grad():
        for b in task.test:
            b = {k: v.to(device).half() if v.is_floating_point() else v.to(device) for k, v in T._to(b, device).items()}
            feats.append(task.features(first_output(module(**b)).float(), b).cpu())
    return torch.cat(feats)


def fp16_graph_rows(task, base, qms: dict, models: dict, device, add, log) -> None:
    """One FP16-graph row per quantized recipe, and the FP16 graph without FP8 (the floor FP16 alone sets)."""
    plain = V.no_fp8(models["plain"], T._to(task.example, device))
    add(NO_FP8_FP16, base.score(fp16_features(task, plain.program, device)), V._placement_info(plain))
    for label, qm in qms.items():
        try:
            add(f"{label} FP16 graph torch", base.score(fp16_features(task, qm.program, device)), V._placement_info(qm))
        except Exception as e:  # noqa: BLE001  (one failing conversion is a result too; keep the others)
            log(f"  {label} FP16 graph failed: {type(e).__name__}: {e}")


def ablation_rows(task, base, recipe, models: dict, device, add) -> None:
    """`recipe` with each ABLATIONS entry's quantizers left float, scored on every test item in torch."""
    for name, roles in ABLATIONS.items():
        cfg = recipe.config()
        cfg = dataclasses.replace(cfg, roles=dataclasses.replace(cfg.roles, **{r: None for r in roles}))
        model = models["centered" if recipe.center_keys else "plain"]
        qm = V._quantize(task, model, cfg, device)
        add(f"ablation: {recipe.label}, {name} torch", base.score(T.torch_features(task, qm, task.test, device)),
            V._placement_info(qm))
