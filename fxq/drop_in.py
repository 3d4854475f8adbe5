"""What lets a QuantizedModel stand in for its float model inside a pipeline.

A diffusers pipeline reads `transformer.config.sample_size`, `.dtype` and `.device`, and calls the
transformer with some arguments positional, some by keyword, and plain values (`return_dict=False`,
`joint_attention_kwargs=None`). The captured program takes exactly the form of the example it was
captured with, and torch.export fixed every non-tensor argument to the example's value. So:

- `Source.of(model, example)` takes what a pipeline reads off the float model, once, at quantize
  time, as plain values (a copy of the config): the quantized model never holds or reads the source.
- `CallForm.arrange(args, kwargs)` binds a call to the source forward's signature and rearranges it
  into the captured form. A non-tensor argument must equal the captured value (or, when the example
  left it out, its default); anything else is one error that names the argument.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from fxq.capture.program import Inputs
from fxq.errors import InputError

_MISSING = inspect.Parameter.empty


def _holds_tensor(value: Any) -> bool:
    return any(isinstance(leaf, torch.Tensor) for leaf in tree_leaves(value))


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # a value whose == does not give one bool is never "the same" by accident
        return a is b


def _bindable(signature: inspect.Signature, example: Inputs) -> bool:
    """A forward the captured call binds to by name (no *args: positions beyond the names have none)."""
    if any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values()):
        return False
    try:
        signature.bind(*example.args, **example.kwargs)
    except TypeError:
        return False
    return True


def _named(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments a call passed, by parameter name (a **kwargs parameter's entries by their own names)."""
    bound = signature.bind(*args, **kwargs).arguments
    named = {}
    for name, value in bound.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return named


@dataclass(frozen=True)
class CallForm:
    """How the program was captured: which forward parameters came positional, which by keyword, and
    every non-tensor one's value. signature is None for a forward that cannot be bound by name
    (*args): then calls go to the program as they are, and it checks them itself."""

    signature: inspect.Signature | None
    positional: tuple[str, ...]
    keywords: tuple[str, ...]
    constants: dict[str, Any]  # name -> the non-tensor value the program was captured with

    @classmethod
    def of(cls, model: torch.nn.Module, example: Inputs) -> "CallForm":
        try:
            signature = inspect.signature(model.forward)
        except (TypeError, ValueError):
            signature = None
        if signature is None or not _bindable(signature, example):
            return cls(None, (), (), {})
        positional = tuple(signature.bind_partial(*example.args).arguments)
        named = _named(signature, example.args, example.kwargs)
        constants = {k: v for k, v in named.items() if not _holds_tensor(v)}
        return cls(signature, positional, tuple(example.kwargs), constants)

    def _default(self, name: str) -> Any:
        p = self.signature.parameters.get(name)
        return _MISSING if p is None else p.default

    def arrange(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """(args, kwargs) in the captured form, or InputError naming the first argument that cannot be."""
        if self.signature is None:
            return args, kwargs
        named = _named(self.signature, args, kwargs)  # a call the float model would refuse raises TypeError
        for name, value in named.items():
            if name in self.positional or name in self.keywords:
                continue
            if _holds_tensor(value) or not _same(value, self._default(name)):
                raise InputError(
                    f"argument {name!r}={_show(value)} was not passed when this model was captured, so its FP8 "
                    f"program has no input for it (it runs as if {name} were {_show(self._default(name))}); fix: "
                    f"quantize with example inputs that pass {name} as this call does (fxq.record_inputs records "
                    f"the calls a pipeline makes), or leave it out of the call")
        values = {}
        for name in self.positional + self.keywords:
            value = named.get(name, self._default(name))
            if name in self.constants and not _same(value, self.constants[name]):
                raise InputError(
                    f"argument {name!r} is {_show(value)} in this call but was {_show(self.constants[name])} when "
                    f"this model was captured; its FP8 program is fixed to the captured value; fix: quantize with "
                    f"example inputs that pass {name}={_show(value)} (fxq.record_inputs records the calls a "
                    f"pipeline makes), or call it with {name}={_show(self.constants[name])}")
            if name not in self.constants and not _holds_tensor(value):
                raise InputError(f"argument {name!r} was a tensor when this model was captured but is {_show(value)} "
                                 f"in this call; fix: pass a tensor, as the example inputs did")
            values[name] = value
        return tuple(values[n] for n in self.positional), {n: values[n] for n in self.keywords}


def _show(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor {tuple(value.shape)}"
    if value is _MISSING:
        return "not given"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _first_float(model: torch.nn.Module) -> torch.Tensor | None:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t
    return None


@dataclass(frozen=True)
class Source:
    """What a pipeline reads off the float model, taken at quantize time as plain values."""

    config: Any  # a copy of model.config; None when the model has no config
    dtype: torch.dtype
    device: torch.device
    call_form: CallForm

    @classmethod
    def of(cls, model: torch.nn.Module, example: Inputs) -> "Source":
        cfg = getattr(model, "config", None)
        first = _first_float(model)
        dtype = getattr(model, "dtype", None)  # HF and diffusers models say; a plain module: its first float tensor
        if not isinstance(dtype, torch.dtype):
            dtype = first.dtype if first is not None else torch.get_default_dtype()
        device = getattr(model, "device", None)
        if not isinstance(device, torch.device):
            device = first.device if first is not None else torch.device("cpu")
        return cls(copy.deepcopy(cfg), dtype, device, CallForm.of(model, example))
