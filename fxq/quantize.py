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

from . import calib_io, validate
from . import fallback as fb
from .calibrate import run_calibration
from .capture import Inputs, capture_program, dynamic_shapes_from_json
from .config import QuantConfig
from .errors import CalibrationError, ConfigError
from .hessian import insert_hessian_observers, weight_hessians, weight_readers
from .memory import release_free_memory
from .insert import insert_observers, insert_qdq, own_state, quantize_weights, remove_observers, weight_amax
from .placement import Placement, place
from .weight_codes import codes_chooser
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
    return calib_io.calibration_amax(calibration, placement)  # validated like a file: fxq/validate.py


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
        a fallback saved in it applies again unless config names its own. With
        config.weight_rounding="gptq", calib_data is still needed (for the input Hessians), and amax
        comes from the file.
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
    validate.model(model)  # fxq/validate.py: the checks the CLI runs too
    validate.example_inputs(model, example)
    validate.calibration_sources(calib_data, calibration, gptq=cfg.weight_rounding == "gptq")
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
    gptq = cfg.weight_rounding == "gptq"
    if calibration is None and calib_data is None:
        raise CalibrationError("no calibration: pass calib_data (batches like example_inputs) or calibration=<saved file>")
    if gptq and calib_data is None:
        raise CalibrationError("config.weight_rounding='gptq' needs calib_data: GPTQ rounds weights with input "
                               "Hessians, which calibration files do not hold; fix: pass calib_data (with or "
                               "without calibration=...), or use weight_rounding='nearest'")
    if calibration is not None:
        amax, batches = _amax_from_file(calibration, placement)
    observers = insert_observers(gm, placement) if calibration is None else {}
    # GPTQ's Hessians: in the same pass as the amax observers, between them and the GEMMs.
    hessians = insert_hessian_observers(gm, placement) if gptq else {}
    if calibration is None or hessians:
        seen = run_calibration(ep.module(), observers, calib_data, example, progress)
        remove_observers(gm)
        if calibration is None:
            amax, batches = {k: o.result() for k, o in observers.items()}, seen
    release_free_memory()  # the calibration activations: otherwise they add to the export's peak
    seconds["calibrate"] = time.perf_counter() - t

    t = time.perf_counter()
    amax.update(weight_amax(ep, placement))
    insert_qdq(gm, placement, amax)
    layouts = {k: rs[0].transposed for k, rs in weight_readers(gm, placement).items()}
    quantize_weights(ep, placement, amax, codes_chooser(cfg, layouts, weight_hessians(hessians) if gptq else None))
    own_state(ep)
    release_free_memory()
    seconds["convert"] = time.perf_counter() - t
    qm = QuantizedModel(ep, placement, amax, cfg, example, type(model).__name__, batches, seconds)
    qm.fallback_gains = gains
    if fallback is not None:  # search on this model, then build the one that skips what it chose
        saved = None if gptq else {"version": calib_io.CALIB_VERSION, "amax": amax, "batches": batches}
        rebuild = lambda c: quantize(model, example_inputs, calib_data if gptq else None, c,  # noqa: E731
                                     calibration=saved, dynamic_batch=dynamic_batch, dynamic_seq=dynamic_seq,
                                     dynamic_shapes=dynamic_shapes, progress=False)
        qm = fb.apply_fallback(qm, fallback, model, rebuild, progress)
    return qm
