"""QuantizedModel: what fxq.quantize returns, whole when built (nothing is set on it afterwards)."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from torch.fx import GraphModule

from fxq.calibration.io import Calibration
from fxq.capture.program import Inputs
from fxq.config import QuantConfig
from fxq.drop_in import Source
from fxq.placement.place import Placement
from fxq.placement.tied import tie_amax
from fxq.report import Report

if TYPE_CHECKING:
    from fxq.accuracy.fallback import FallbackPlan


class QuantizedModel(torch.nn.Module):
    """A fake-quantized model: runs like the original with FP8 Q/DQ numerics at every site.

    It owns its state (FP8 GEMM weights, copies of the other parameters): editing the source model
    afterwards changes neither this model nor what export_onnx writes. It is inference-only: eval()
    works (and returns it), train(True) raises.

    It drops in where the source model was (`pipe.transformer = qm`): `config`, `dtype` and `device`
    are the source model's, taken at quantize time (fxq/drop_in.py), and calls are accepted in any
    form the source forward accepts, as long as their non-tensor arguments match the captured ones.
    fxq's own QuantConfig is `quant_config`.
    """

    def __init__(self, program: torch.export.ExportedProgram, placement: Placement, calibration: Calibration,
                 quant_config: QuantConfig, example: Inputs, seconds: dict[str, float], source: Source,
                 fallback_plan: "FallbackPlan | None" = None):
        super().__init__()
        self._program = [program]  # lists: neither the program nor its runnable module is a submodule
        self._module: list[GraphModule] = []
        self.placement = placement
        self.calibration = calibration
        self.quant_config = quant_config
        self.source = source
        self.example = example
        self.seconds = seconds  # stage -> wall seconds (capture, place, calibrate, [fallback], convert)
        self.fallback_plan = fallback_plan  # None unless fxq.quantize(..., fallback=) ran the search
        self.training = False

    # What a pipeline reads off the module it calls: the source model's, as captured.
    @property
    def dtype(self) -> torch.dtype:
        return self.source.dtype

    @property
    def device(self) -> torch.device:
        return self.source.device

    @contextlib.contextmanager
    def cache_context(self, name: str, **kwargs):
        """diffusers pipelines mark each call ("cond", "uncond") for the model's step-caching hooks; the FP8
        program has no such hooks, so there is nothing to mark."""
        yield

    def __getattr__(self, name: str):
        if name == "config":  # a property raising AttributeError would be masked by nn.Module.__getattr__
            if self.source.config is not None:
                return self.source.config
            raise AttributeError("this QuantizedModel's source model has no `config`; fxq's QuantConfig is "
                                 "`qm.quant_config` (`qm.config` is the source model's config when it has one)")
        return super().__getattr__(name)

    # What the calibration holds, under the names the report, CLI and benchmarks read.
    @property
    def amax(self) -> dict[str, float]:
        return self.calibration.amax

    @property
    def calibration_batches(self) -> int:
        return self.calibration.batches

    @property
    def fallback_gains(self) -> dict[str, float]:
        """Group id -> metric gain, for the groups left in FP16 by a fallback."""
        return self.calibration.fallback_gains

    @property
    def program(self) -> torch.export.ExportedProgram:
        """The quantized graph as an ExportedProgram (fxq.fp8_qdq on activations, FP8 weight buffers)."""
        return self._program[0]

    @property
    def graph_module(self) -> GraphModule:
        """The program as a runnable module (parameters as attributes), built once."""
        if not self._module:
            self._module.append(self.program.module())
        return self._module[0]

    def forward(self, *args, **kwargs):
        args, kwargs = self.source.call_form.arrange(args, kwargs)
        return self.graph_module(*args, **kwargs)

    def train(self, mode: bool = True) -> "QuantizedModel":
        if mode:
            raise RuntimeError("a fxq.QuantizedModel is inference-only: its FP8 graph was captured in eval mode "
                               "and has no training path; fix: train or fine-tune the float model, then quantize it")
        self.training = False
        return self

    def report(self) -> Report:
        return Report(self.placement, tie_amax(self.amax, self.placement.tied), self.fallback_gains)

    def save_calibration(self, path) -> None:
        self.calibration.save(path)

    def export_onnx(self, path, **kwargs):
        from fxq.export.to_onnx import export_onnx

        return export_onnx(self, path, **kwargs)
