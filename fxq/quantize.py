"""fxq.quantize: capture -> place -> calibrate -> convert, all on one captured program.

The model is torch.exported once. Placement, observers, the activation fake-quant ops and the FP8
weights all go into that ExportedProgram; the fake-quant model, `qm.program` and the ONNX export are
views of it, so nothing reads the source model again.
"""
from __future__ import annotations

import difflib
import time
from typing import Any, Iterable, Mapping

import torch
from torch.fx import GraphModule

from . import calib_io
from . import fallback as fb
from .calibrate import run_calibration
from .capture import Inputs, capture_program, dynamic_shapes_from_json
from .config import QuantConfig
from .errors import CalibrationError, ConfigError
from .insert import insert_observers, insert_qdq, own_state, quantize_weights, remove_observers, weight_amax
from .placement import Placement, place
from .report import Report


def module_paths(gm: GraphModule) -> set[str]:
    paths = set()
    for node in gm.graph.nodes:
        for path, _cls in (node.meta.get("nn_module_stack") or {}).values():
            paths.add(path)
    return paths


def check_overrides(gm: GraphModule, config: QuantConfig) -> None:
    """An override that matches no module is almost always a typo: say so, with close paths."""
    paths = module_paths(gm)
    for o in config.overrides:
        if any(o.matches(p) for p in paths):
            continue
        close = difflib.get_close_matches(o.module, sorted(paths), n=5, cutoff=0.5)
        kind = "regex" if o.regex else "module path"
        raise ConfigError(
            f"override {kind} {o.module!r} matches no module in the captured graph"
            + (f"; close module paths: {', '.join(close)}" if close else "")
            + "; fix: use a path from model.named_modules()"
        )


def _amax_from_file(calibration: str | Mapping, placement: Placement) -> tuple[dict, int]:
    doc = calib_io.load_calibration(calibration) if not isinstance(calibration, Mapping) else calibration
    amax = dict(doc["amax"])
    missing = [s.key for s in placement.sites if not s.is_weight and s.fixed_amax is None and s.key not in amax]
    if missing:
        raise CalibrationError(
            f"the calibration results lack {len(missing)} quantizers of this model/config, e.g. {missing[:3]}; "
            "fix: calibrate again with this model and config"
        )
    return amax, int(doc.get("batches", 0))


class QuantizedModel(torch.nn.Module):
    """A fake-quantized model: runs like the original with FP8 Q/DQ numerics at every site.

    It owns its state (FP8 GEMM weights, copies of the other parameters): editing the source model
    afterwards changes neither this model nor what export_onnx writes.
    """

    def __init__(self, program, placement, amax, config, example, model_name, batches, seconds):
        super().__init__()
        self._program = [program]  # a list: the program is not a submodule
        self.placement: Placement = placement
        self.amax: dict[str, float] = amax
        self.config: QuantConfig = config
        self.example: Inputs = example
        self.model_name = model_name
        self.calibration_batches = batches
        self.seconds = seconds  # stage -> wall seconds (capture, place, calibrate, convert)
        self._module = None
        self.fallback_gains: dict[str, float] = {}  # group id -> metric gain, for groups left in FP16

    @property
    def program(self) -> torch.export.ExportedProgram:
        """The quantized graph as an ExportedProgram (fxq.fp8_qdq on activations, FP8 weight buffers)."""
        return self._program[0]

    @property
    def graph_module(self) -> GraphModule:
        """The program as a runnable module (parameters as attributes), built once."""
        if self._module is None:
            self._module = self.program.module()
        return self._module

    def forward(self, *args, **kwargs):
        return self.graph_module(*args, **kwargs)

    def report(self) -> Report:
        return Report(self.placement, self.amax, self.fallback_gains)

    def save_calibration(self, path) -> None:
        calib_io.save_calibration(path, self.amax, self.model_name, self.config.to_dict(), self.calibration_batches,
                                  self.fallback_gains)

    def export_onnx(self, path, **kwargs):
        from .onnx_export import export_onnx

        return export_onnx(self, path, **kwargs)


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
    fallback: "fb.Fallback | None" = None,
) -> QuantizedModel:
    """Quantize `model` to FP8 (E4M3) for TensorRT.

    example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs.
    calib_data: an iterable of batches shaped like example_inputs (max/percentile calibration).
    calibration: instead of calib_data, a saved calibration file (or its loaded dict) to reuse;
        a fallback saved in it applies again unless config names its own.
    dynamic_batch: dim 0 of every batched input is dynamic (inputs whose dim 0 is not the batch stay static).
    dynamic_seq: dim 1 of batched integer inputs (token ids, masks) is dynamic too.
    dynamic_shapes: torch.export dynamic_shapes to use instead (or QuantConfig.dynamic_shapes, JSON form).
    fallback: fxq.Fallback(eval_data, max_error): leave in FP16 the fewest FLOPs that bring the
        metric within max_error (see fxq/fallback.py).
    """
    cfg = config if config is not None else QuantConfig()
    if not isinstance(cfg, QuantConfig):
        raise TypeError(f"config must be a fxq.QuantConfig, got {type(cfg).__name__}")
    cfg, gains = fb.saved_fallback(cfg, calibration)
    example = Inputs.of(example_inputs)
    if dynamic_shapes is None and cfg.dynamic_shapes is not None:
        dynamic_shapes = dynamic_shapes_from_json(cfg.dynamic_shapes, example)
    seconds = {}
    t = time.perf_counter()
    ep = capture_program(model, example, dynamic_batch, dynamic_seq, dynamic_shapes)
    seconds["capture"] = time.perf_counter() - t

    t = time.perf_counter()
    gm = ep.graph_module
    check_overrides(gm, cfg)
    placement = place(gm, cfg)
    seconds["place"] = time.perf_counter() - t

    t = time.perf_counter()
    if calibration is not None:
        amax, batches = _amax_from_file(calibration, placement)
    elif calib_data is None:
        raise CalibrationError("no calibration: pass calib_data (batches like example_inputs) or calibration=<saved file>")
    else:
        observers = insert_observers(gm, placement)
        batches = run_calibration(ep.module(), observers, calib_data, example, progress)
        remove_observers(gm)
        amax = {k: o.result() for k, o in observers.items()}
    seconds["calibrate"] = time.perf_counter() - t

    t = time.perf_counter()
    amax.update(weight_amax(ep, placement))
    insert_qdq(gm, placement, amax)
    quantize_weights(ep, placement, amax)
    own_state(ep)
    seconds["convert"] = time.perf_counter() - t
    qm = QuantizedModel(ep, placement, amax, cfg, example, type(model).__name__, batches, seconds)
    qm.fallback_gains = gains
    if fallback is not None:  # search on this model, then build the one that skips what it chose
        rebuild = lambda c: quantize(model, example_inputs, None, c, calibration={"amax": amax, "batches": batches},  # noqa: E731
                                     dynamic_batch=dynamic_batch, dynamic_seq=dynamic_seq,
                                     dynamic_shapes=dynamic_shapes, progress=False)
        qm = fb.apply_fallback(qm, fallback, model, rebuild, progress)
    return qm
