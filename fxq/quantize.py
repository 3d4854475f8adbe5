"""fxq.quantize: capture -> place -> calibrate -> fake-quantized model."""
from __future__ import annotations

import difflib
import re
from typing import Any, Iterable, Mapping

import torch
from torch.fx import GraphModule

from . import calib_io
from . import fallback as fb
from .calibrate import run_calibration
from .capture import Inputs, capture, export_args
from .config import QuantConfig
from .errors import CalibrationError, ConfigError
from .insert import insert_observers, insert_qdq, remove_observers, weight_amax
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
    """A fake-quantized model: runs like the original with FP8 Q/DQ numerics at every site."""

    def __init__(self, graph_module, placement, amax, config, example, source, dynamic_batch, batches):
        super().__init__()
        self.graph_module = graph_module
        self.placement: Placement = placement
        self.amax: dict[str, float] = amax
        self.config: QuantConfig = config
        self.example: Inputs = example
        self.dynamic_batch = dynamic_batch
        self.calibration_batches = batches
        self._source = [source]  # a list, so the float model is not registered as a submodule
        self._program = None
        self.fallback_gains: dict[str, float] = {}  # group id -> metric gain, for groups left in FP16

    def forward(self, *args, **kwargs):
        return self.graph_module(*args, **kwargs)

    @property
    def source_model(self) -> torch.nn.Module:
        return self._source[0]

    @property
    def program(self) -> torch.export.ExportedProgram:
        """The quantized graph as an ExportedProgram (fxq.fp8_qdq nodes at every site)."""
        if self._program is None:
            self._program = export_graph_module(self.graph_module, self.example, self.dynamic_batch)
        return self._program

    def report(self) -> Report:
        return Report(self.placement, self.amax, self.fallback_gains)

    def save_calibration(self, path) -> None:
        calib_io.save_calibration(path, self.amax, type(self.source_model).__name__, self.config.to_dict(),
                                  self.calibration_batches, self.fallback_gains)

    def export_onnx(self, path, **kwargs):
        from .onnx_export import export_onnx

        return export_onnx(self, path, **kwargs)


def export_graph_module(gm: GraphModule, example: Inputs, dynamic_batch: bool) -> torch.export.ExportedProgram:
    example, shapes = export_args(example, dynamic_batch)
    return torch.export.export(gm, example.args, example.kwargs, dynamic_shapes=shapes, strict=False)


def quantize(
    model: torch.nn.Module,
    example_inputs: Any,
    calib_data: Iterable | None = None,
    config: QuantConfig | None = None,
    *,
    calibration: str | Mapping | None = None,
    dynamic_batch: bool = True,
    progress: bool = True,
    fallback: "fb.Fallback | None" = None,
) -> QuantizedModel:
    """Quantize `model` to FP8 (E4M3) for TensorRT.

    example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs.
    calib_data: an iterable of batches shaped like example_inputs (max/percentile calibration).
    calibration: instead of calib_data, a saved calibration file (or its loaded dict) to reuse;
        a fallback saved in it applies again unless config names its own.
    fallback: fxq.Fallback(eval_data, max_error): leave in FP16 the fewest FLOPs that bring the
        metric within max_error (see fxq/fallback.py).
    """
    cfg = config if config is not None else QuantConfig()
    if not isinstance(cfg, QuantConfig):
        raise TypeError(f"config must be a fxq.QuantConfig, got {type(cfg).__name__}")
    cfg, gains = fb.saved_fallback(cfg, calibration)
    example = Inputs.of(example_inputs)
    gm = capture(model, example, dynamic_batch)
    check_overrides(gm, cfg)
    placement = place(gm, cfg)
    if calibration is not None:
        amax, batches = _amax_from_file(calibration, placement)
    elif calib_data is None:
        raise CalibrationError("no calibration: pass calib_data (batches like example_inputs) or calibration=<saved file>")
    else:
        observers = insert_observers(gm, placement)
        batches = run_calibration(gm, observers, calib_data, example, progress)
        remove_observers(gm)
        amax = {k: o.result() for k, o in observers.items()}
    amax.update(weight_amax(gm, placement))
    insert_qdq(gm, placement, amax)
    qm = QuantizedModel(gm, placement, amax, cfg, example, model, dynamic_batch, batches)
    qm.fallback_gains = gains
    return qm if fallback is None else fb.apply_fallback(qm, fallback, progress)
