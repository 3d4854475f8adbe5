"""fxq.quantize: capture -> place -> calibrate -> [fallback search -> place again] -> convert, on one program.

The model is torch.exported once, fallback or not. Placement, observers, the activation fake-quant
ops and the FP8 weights all go into that ExportedProgram; the fake-quant model, `qm.program` and
the ONNX export are views of it, so nothing reads the source model again. The stages are in
fxq/pipeline.py; the QuantizedModel it returns is in fxq/model.py.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch

from fxq.config import QuantConfig
from fxq.accuracy.fallback import Fallback
from fxq.model import QuantizedModel
from fxq.pipeline import Request, StageClock, calibrated, convert, fallback_search, quantized_model

__all__ = ["quantize", "QuantizedModel"]


def quantize(
    model: torch.nn.Module,
    example_inputs: Any,
    calib_data: Iterable | None = None,
    config: QuantConfig | None = None,
    *,
    calibration: str | Mapping | None = None,
    dynamic_batch: bool = True,
    dynamic_seq: bool = False,
    dynamic_shapes: Any = None,
    progress: bool = True,
    fallback: Fallback | None = None,
) -> QuantizedModel:
    """Quantize `model` to FP8 (E4M3) for TensorRT.

    example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs.
    calib_data: an iterable of batches shaped like example_inputs (max/percentile calibration),
        read once (a generator is fine).
    calibration: instead of calib_data, a saved calibration file (or its loaded dict) to reuse;
        a fallback saved in it applies again unless config names its own. With
        config.weight_rounding="gptq", calib_data is still needed (for the input Hessians), and amax
        comes from the file.
    dynamic_batch: dim 0 of every batched input is dynamic (inputs whose dim 0 is not the batch stay static).
    dynamic_seq: dim 1 of batched integer inputs (token ids, masks) is dynamic too.
    dynamic_shapes: torch.export dynamic_shapes to use instead (or QuantConfig.dynamic_shapes, JSON
        form; giving both is an error unless they agree).
    fallback: fxq.Fallback(eval_data, max_error): leave in FP16 the fewest FLOPs that bring the
        metric within max_error (see fxq/accuracy/fallback.py); `qm.fallback_plan` says what it chose.
    """
    req = Request.check(model, example_inputs, calib_data, config, calibration, fallback,
                        dynamic_batch, dynamic_seq, dynamic_shapes, progress)
    clock = StageClock()
    cal = calibrated(req, clock)  # capture -> place -> calibrate
    plan = None
    if fallback is not None:
        with clock("fallback"):
            cal, plan = fallback_search(cal, fallback, progress)
    with clock("convert"):
        convert(cal)
    return quantized_model(cal, req, clock, plan)
