"""The stages of fxq.quantize, each a function, all on one captured program.

    Request.check -> calibrated (capture -> place -> calibrate) -> [fallback_search -> place_again] -> convert

The model is torch.exported once. Calibration leaves the program float (observers removed); the
fallback search measures a fake-quant view of it (fxq/conversion/fake_quant_view.py) against its own float
outputs, and placing again on the same program is all a fallback costs. Only `convert` writes the
Q/DQ nodes and FP8 weights into the program.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch.fx import GraphModule

from fxq import validate
from fxq.conversion import ops
from fxq.calibration.io import Calibration
from fxq.calibration.run import run_calibration
from fxq.capture.program import Inputs, capture_program, dynamic_shapes_from_json
from fxq.config import QuantConfig
from fxq.errors import CalibrationError, ConfigError, InputError
from fxq.conversion.fake_quant_view import fake_quant_view
from fxq.accuracy.fallback import Fallback, FallbackPlan, search
from fxq.accuracy.groups import Evaluator
from fxq.calibration.hessian import insert_hessian_observers, weight_hessians, weight_readers
from fxq.conversion.insert import WeightCodes, insert_observers, insert_qdq, own_state, quantize_weights, remove_observers, weight_amax
from fxq.memory import release_free_memory
from fxq.drop_in import Source
from fxq.model import QuantizedModel
from fxq.placement.place import Placement, Site, place
from fxq.report import warn_if_nothing_to_do
from fxq.conversion.weight_codes import codes_chooser


@dataclass(frozen=True)
class Request:
    """fxq.quantize's arguments, checked before anything runs."""

    model: torch.nn.Module
    example: Inputs
    calib_data: Iterable | None
    config: QuantConfig
    saved: Calibration | None  # calibration= loaded once; its fallback is already in `config`
    dynamic_batch: bool = True
    dynamic_seq: bool = False
    dynamic_shapes: Any = None
    progress: bool = True

    @classmethod
    def check(cls, model, example_inputs, calib_data=None, config=None, calibration=None, fallback=None,
              dynamic_batch=True, dynamic_seq=False, dynamic_shapes=None, progress=True) -> "Request":
        if isinstance(model, QuantizedModel):
            raise InputError("this model is already quantized (a fxq.QuantizedModel); fix: pass the float model "
                             "to fxq.quantize, or export this one with its export_onnx()")
        if config is not None and not isinstance(config, QuantConfig):
            raise TypeError(f"config must be a fxq.QuantConfig, got {type(config).__name__}")
        if fallback is not None and not isinstance(fallback, Fallback):
            raise TypeError(f"fallback must be a fxq.Fallback(eval_data, max_error), got {type(fallback).__name__}")
        example = Inputs.of(example_inputs)
        validate.model(model)  # fxq/validate.py: the checks the CLI runs too
        validate.example_inputs(model, example)
        cfg = config if config is not None else QuantConfig()
        validate.calibration_sources(calib_data, calibration, gptq=cfg.weight_rounding == "gptq")
        if calibration is None and calib_data is None:
            raise CalibrationError("no calibration: pass calib_data (batches like example_inputs) or "
                                   "calibration=<saved file>")
        _check_gptq_data(cfg, calib_data)
        saved = None if calibration is None else Calibration.load(calibration)
        if config is None:  # none given: the config the calibration file was made with
            cfg = _saved_config(saved)
            _check_gptq_data(cfg, calib_data)
        if saved is not None and saved.fallback_groups and not cfg.fallback:
            cfg = dataclasses.replace(cfg, fallback=saved.fallback_groups)  # a saved fallback applies again
        shapes = resolve_dynamic_shapes(dynamic_shapes, cfg.dynamic_shapes, example)
        return cls(model, example, calib_data, cfg, saved, dynamic_batch, dynamic_seq, shapes, progress)


def _check_gptq_data(cfg: QuantConfig, calib_data) -> None:
    if cfg.weight_rounding == "gptq" and calib_data is None:
        raise CalibrationError("config.weight_rounding='gptq' needs calib_data: GPTQ rounds weights with input "
                               "Hessians, which calibration files do not hold; fix: pass calib_data (with or "
                               "without calibration=...), or use weight_rounding='nearest'")


def _saved_config(saved: Calibration | None) -> QuantConfig:
    """No config given: the one the calibration file was made with (a preset's weight axis applies again)."""
    if saved is None or not saved.config:
        return QuantConfig()
    try:
        return QuantConfig.from_dict(saved.config)
    except (TypeError, ValueError) as e:  # ConfigError is a ValueError too
        raise CalibrationError(f"the calibration's 'config' is not a valid fxq config: {e}; fix: pass config= "
                               "explicitly, or calibrate again") from None


def resolve_dynamic_shapes(argument: Any, from_config: Any, example: Inputs) -> Any:
    """The one dynamic_shapes for torch.export: the argument or QuantConfig.dynamic_shapes (JSON form).

    Both may be given only when they say the same thing; otherwise which one wins would be a guess."""
    if from_config is None:
        return argument
    resolved = dynamic_shapes_from_json(from_config, example)
    if argument is not None and _shape_spec(argument) != _shape_spec(resolved):
        raise ConfigError(f"dynamic_shapes= {_shape_spec(argument)} and QuantConfig.dynamic_shapes "
                          f"{_shape_spec(resolved)} differ; fix: give dynamic shapes in one place only")
    return resolved if argument is None else argument


def _shape_spec(spec: Any) -> Any:
    """A comparable form of a torch.export dynamic_shapes spec: every Dim as (name, min, max)."""
    if isinstance(spec, torch.export.Dim):
        return (spec.__name__, spec.min, spec.max)
    if isinstance(spec, dict):
        return {str(k): _shape_spec(v) for k, v in spec.items()}
    if isinstance(spec, (tuple, list)):
        return tuple(_shape_spec(v) for v in spec)
    return str(spec)


@dataclass
class StageClock:
    """Wall seconds per stage, in the order the stages ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = time.perf_counter() - t


class ChosenCodes:
    """Each weight's FP8 codes, chosen once (nearest or GPTQ) and read by both the fake-quant view and
    convert: the codes_for hook of fxq.conversion.insert.quantize_weights, memoised by site key."""

    def __init__(self, chooser):
        self.chooser = chooser
        self.codes: dict[str, WeightCodes] = {}

    def __call__(self, site: Site, w: torch.Tensor, scale: float) -> WeightCodes:
        if site.key not in self.codes:
            c = self.chooser(site, w, scale) if self.chooser is not None else ops.quantize_to_fp8(w, scale)
            self.codes[site.key] = c if isinstance(c, WeightCodes) else WeightCodes(c, scale)
        return self.codes[site.key]


@dataclass(frozen=True)
class Calibrated:
    """The captured program after calibration (still float), and everything convert needs."""

    program: torch.export.ExportedProgram
    placement: Placement
    config: QuantConfig
    calibration: Calibration  # activation and weight amax, batches, fallback groups and gains
    codes: ChosenCodes


def module_paths(gm: GraphModule) -> set[str]:
    return {path for node in gm.graph.nodes for path, _cls in (node.meta.get("nn_module_stack") or {}).values()}


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


def calibrated(req: Request, clock: StageClock) -> Calibrated:
    """capture -> place -> calibrate."""
    with clock("capture"):
        ep = capture_program(req.model, req.example, req.dynamic_batch, req.dynamic_seq, req.dynamic_shapes)
    with clock("place"):
        check_overrides(ep.graph_module, req.config)
        placement = place(ep.graph_module, req.config)
        warn_if_nothing_to_do(placement)
    with clock("calibrate"):
        return calibrate(ep, placement, req)


def calibrate(ep: torch.export.ExportedProgram, placement: Placement, req: Request) -> Calibrated:
    """amax for every site (activations observed in one pass over calib_data, or from the saved file;
    weights read directly), GPTQ's Hessians in that same pass. The program stays float."""
    cfg, saved, gm = req.config, req.saved, ep.graph_module
    gptq = cfg.weight_rounding == "gptq"
    amax = saved.amax_for(placement) if saved is not None else {}
    observers = insert_observers(gm, placement) if saved is None else {}
    # GPTQ's Hessians: in the same pass as the amax observers, between them and the GEMMs.
    hessians = insert_hessian_observers(gm, placement) if gptq else {}
    batches = saved.batches if saved is not None else 0
    if saved is None or hessians:
        seen = run_calibration(ep.module(), observers, req.calib_data, req.example, req.progress)
        remove_observers(gm)
        if saved is None:
            amax, batches = {k: o.result() for k, o in observers.items()}, seen
    release_free_memory()  # the calibration activations: otherwise they add to the export's peak
    amax.update(weight_amax(ep, placement))
    layouts = {k: rs[0].transposed for k, rs in weight_readers(gm, placement).items()}
    codes = ChosenCodes(codes_chooser(cfg, layouts, weight_hessians(hessians) if gptq else None))
    same = saved is not None and cfg.fallback == saved.fallback_groups
    gains = dict(saved.fallback_gains) if same else {}
    calibration = Calibration(amax, batches, cfg.fallback, gains, type(req.model).__name__, cfg.to_dict())
    return Calibrated(ep, placement, cfg, calibration, codes)


def fallback_search(cal: Calibrated, fallback: Fallback, progress: bool) -> tuple[Calibrated, FallbackPlan]:
    """Search on the fake-quant view of the calibrated program, then place again without what it chose."""
    view = fake_quant_view(cal.program, cal.placement, cal.calibration.amax, cal.codes)
    evaluator = Evaluator(cal.program.module(), view.module, fallback.eval_data, fallback.metric)
    plan = search(view, evaluator, cal.placement, fallback, progress)
    del view, evaluator
    release_free_memory()
    return (place_again(cal, plan) if plan.choices else cal), plan


def place_again(cal: Calibrated, plan: FallbackPlan) -> Calibrated:
    """The same program placed with the chosen groups in QuantConfig.fallback: every other site keeps its key."""
    cfg = dataclasses.replace(cal.config, fallback=tuple(dict.fromkeys(cal.config.fallback + plan.groups)))
    placement = place(cal.program.graph_module, cfg)
    new = set(placement.keys()) - set(cal.placement.keys())
    if new:  # a fallback only removes quantizers; a new key would have no calibrated amax
        raise RuntimeError(f"placing again with fallback {plan.groups} made new sites {sorted(new)[:3]}")
    gains = {**cal.calibration.fallback_gains, **{c.group: c.gain for c in plan.choices}}
    calibration = dataclasses.replace(cal.calibration, fallback_groups=cfg.fallback, fallback_gains=gains,
                                      config=cfg.to_dict())
    return dataclasses.replace(cal, placement=placement, config=cfg, calibration=calibration)


def convert(cal: Calibrated) -> None:
    """fp8_qdq on every activation site, FP8 codes for every weight, state copied from the source model."""
    ep, amax = cal.program, cal.calibration.amax
    insert_qdq(ep.graph_module, cal.placement, amax)
    quantize_weights(ep, cal.placement, amax, cal.codes)
    own_state(ep)
    release_free_memory()


def quantized_model(cal: Calibrated, req: Request, clock: StageClock, plan: FallbackPlan | None) -> QuantizedModel:
    source = Source.of(req.model, req.example)  # config, dtype, device, call form: read once, here
    return QuantizedModel(cal.program, cal.placement, cal.calibration, cal.config, req.example, clock.seconds, source,
                          plan)
