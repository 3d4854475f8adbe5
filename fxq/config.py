"""Quantization config: frozen dataclasses, validated on construction, round-trippable as dicts.

Resolution order for a site in module M with role R (same as torchao's FqnToConfig):
an override whose `module` equals M exactly, then the first regex override that fullmatches M,
then the global `roles`. An override maps role names to a TensorSpec, or None to leave R in
float there.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Mapping

from fxq import roles as R
from fxq import validate
from fxq.errors import ConfigError

CALIBRATORS = ("max", "percentile")
WEIGHT_ROUNDINGS = ("nearest", "gptq")  # how FP8 weight codes are chosen (fxq/accuracy/weight_rounding.py)
WEIGHT_AXES = (None, 0)  # None: one scale per weight; 0: one per output channel
CONFIG_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    """How one tensor is quantized: FP8 E4M3, per-tensor, scale = amax / 448."""

    calibrator: str = "max"  # weights always use "max": percentile clipping of weights only hurts
    percentile: float = 99.99

    def __post_init__(self):
        if self.calibrator not in CALIBRATORS:
            raise ValueError(f"TensorSpec.calibrator must be one of {CALIBRATORS}, got {self.calibrator!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"TensorSpec.percentile must be in (50, 100], got {self.percentile}")


FP8 = TensorSpec()


@dataclass(frozen=True)
class RoleSpecs:
    """One field per role; None means that role stays in float."""

    linear_input: TensorSpec | None = FP8
    linear_weight: TensorSpec | None = FP8
    attn_q: TensorSpec | None = FP8
    attn_k: TensorSpec | None = FP8
    attn_v: TensorSpec | None = FP8
    attn_probs: TensorSpec | None = FP8
    layer_norm_output: TensorSpec | None = FP8
    conv_input: TensorSpec | None = FP8
    conv_weight: TensorSpec | None = FP8

    def get(self, role: str) -> TensorSpec | None:
        return getattr(self, R.field_name(R.check_role(role)))

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None and not isinstance(v, TensorSpec):
                raise TypeError(f"RoleSpecs.{f.name} must be a TensorSpec or None, got {type(v).__name__}")


@dataclass(frozen=True)
class Override:
    """Role specs for the modules whose path is `module` (or fullmatches it, with regex=True)."""

    module: str
    roles: Mapping[str, TensorSpec | None]
    regex: bool = False

    def __post_init__(self):
        if not self.module:
            raise ValueError("Override.module must be a module path such as 'encoder.layer.0.attention'")
        for role, spec in self.roles.items():
            R.check_role(role)
            if spec is not None and not isinstance(spec, TensorSpec):
                raise TypeError(f"Override({self.module!r}).roles[{role!r}] must be a TensorSpec or None")
        if self.regex:
            try:
                re.compile(self.module)
            except re.error as e:
                raise ValueError(f"Override.module {self.module!r} is not a valid regex: {e}") from None
        object.__setattr__(self, "roles", dict(self.roles))

    def matches(self, module: str) -> bool:
        return re.fullmatch(self.module, module) is not None if self.regex else module == self.module


@dataclass(frozen=True)
class QuantConfig:
    roles: RoleSpecs = field(default_factory=RoleSpecs)
    overrides: tuple[Override, ...] = ()
    # TensorRT rules: FP8 GEMMs with K or N below this gain nothing; FP8 attention needs the
    # head size in [head_size_min, head_size_max] and a multiple of head_size_multiple.
    min_gemm_dim: int = 16
    head_size_min: int = 16
    head_size_max: int = 256
    head_size_multiple: int = 8
    # FP8 weight codes: "nearest" rounds each weight alone; "gptq" compensates rounding error across a
    # GEMM's inputs using the calibration activations (same scale, smaller output error).
    weight_rounding: str = "nearest"
    # None: one scale per weight tensor; 0: one per output channel (TensorRT >= 10.6 on Hopper).
    weight_axis: int | None = None
    # A GEMM whose rows are only the batch (pooler, classifier on one token) gains nothing from FP8.
    skip_gemv: bool = True
    # torch.export dynamic_shapes in JSON form, e.g. {"input_ids": {"0": "batch", "1": {"name": "seq", "max": 512}}}
    # (equal names share a dim, "auto" lets export decide); None: fxq's default (dynamic batch).
    dynamic_shapes: Mapping | None = None
    # GEMM / attention group ids ("<module>:gemm", "<module>:attention") left in FP16, as chosen
    # by fxq.Fallback (or by hand from fxq.accuracy.sensitivity); the placement skips them (reason "fallback").
    fallback: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "overrides", tuple(self.overrides))
        if not isinstance(self.skip_gemv, bool):
            raise TypeError(f"QuantConfig.skip_gemv must be True or False, got {self.skip_gemv!r}")
        _check_dynamic_shapes(self.dynamic_shapes)
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise ValueError(f"QuantConfig.weight_rounding must be one of {WEIGHT_ROUNDINGS}, got {self.weight_rounding!r}")
        if self.weight_axis not in WEIGHT_AXES or isinstance(self.weight_axis, bool):
            raise ValueError(f"QuantConfig.weight_axis must be None (per-tensor) or 0 (per output channel), "
                             f"got {self.weight_axis!r}")
        if isinstance(self.fallback, str) or not all(isinstance(g, str) for g in self.fallback):
            raise TypeError("QuantConfig.fallback must be a tuple of group ids such as 'encoder.layer.0.attention:attention'")
        object.__setattr__(self, "fallback", tuple(self.fallback))
        for o in self.overrides:
            if not isinstance(o, Override):
                raise TypeError(f"QuantConfig.overrides must hold Override objects, got {type(o).__name__}")
        for name in ("min_gemm_dim", "head_size_min", "head_size_max", "head_size_multiple"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"QuantConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.head_size_min > self.head_size_max:
            raise ValueError("QuantConfig.head_size_min must not exceed head_size_max")

    def spec_for(self, module: str, role: str) -> TensorSpec | None:
        exact = [o for o in self.overrides if not o.regex and o.matches(module) and role in o.roles]
        regex = [o for o in self.overrides if o.regex and o.matches(module) and role in o.roles]
        for o in exact + regex:
            return o.roles[role]
        return self.roles.get(role)

    # -- dict round trip ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        spec = lambda s: None if s is None else dataclasses.asdict(s)  # noqa: E731
        return {
            "version": CONFIG_VERSION,
            "roles": {role: spec(self.roles.get(role)) for role in R.ALL_ROLES},
            "overrides": [
                {"module": o.module, "regex": o.regex, "roles": {r: spec(s) for r, s in o.roles.items()}}
                for o in self.overrides
            ],
            **{k: getattr(self, k) for k in ("min_gemm_dim", "head_size_min", "head_size_max", "head_size_multiple",
                                             "skip_gemv", "weight_rounding", "weight_axis")},
            "dynamic_shapes": None if self.dynamic_shapes is None else
            {k: (None if v is None else {d: (n if isinstance(n, str) else dict(n)) for d, n in v.items()})
             for k, v in self.dynamic_shapes.items()},
            "fallback": list(self.fallback),
        }

    @classmethod
    def from_file(cls, path) -> "QuantConfig":
        """Read a QuantConfig from a JSON file (to_dict format), every failure a ConfigError naming the file."""
        doc = validate.json_file(path, "config file", ConfigError, "write one with json.dump(config.to_dict(), f)")
        try:
            return cls.from_dict(doc)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config file {path} is not a valid fxq config: {e}") from None

    @classmethod
    def from_dict(cls, d: Mapping) -> "QuantConfig":
        validate.config_dict(d)  # shape and types, a ConfigError naming the field (fxq/validate.py)
        d = dict(d)
        version = d.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ValueError(f"config version {version} is not supported (this fxq reads version {CONFIG_VERSION})")
        spec = lambda s: None if s is None else TensorSpec(**s)  # noqa: E731
        roles = d.pop("roles", {})
        for r in roles:
            R.check_role(r)
        overrides = tuple(
            Override(module=o["module"], regex=o.get("regex", False), roles={r: spec(s) for r, s in o["roles"].items()})
            for o in d.pop("overrides", [])
        )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; known keys: {sorted(known | {'version'})}")
        base = {R.field_name(r): spec(s) for r, s in roles.items()}
        return cls(roles=RoleSpecs(**base), overrides=overrides, **d)


def _check_dynamic_shapes(spec) -> None:
    if spec is None:
        return
    if not isinstance(spec, Mapping):
        raise TypeError("QuantConfig.dynamic_shapes must map input names to {dim: name}, e.g. "
                        f'{{"input_ids": {{"0": "batch", "1": "seq"}}}}, got {type(spec).__name__}')
    for name, dims in spec.items():
        if dims is None:
            continue
        ok = isinstance(dims, Mapping) and all(
            str(d).isdigit() and ((isinstance(v, str) and v) or (isinstance(v, Mapping) and isinstance(v.get("name"), str)
                                  and set(v) <= {"name", "min", "max"}
                                  and all(isinstance(v[k], int) for k in ("min", "max") if k in v)))
            for d, v in dims.items())
        if not ok:
            raise TypeError(f"QuantConfig.dynamic_shapes[{name!r}] must map dim indices to a dim name or "
                            f'{{"name", "min", "max"}} (e.g. {{"0": "batch"}}), got {dims!r}')


def preset(name: str) -> QuantConfig:
    """Named presets. 'tensorrt-fp8' is the default.

    'accurate': the default plus one scale per output channel of every GEMM weight, the config part of the
    recipe measured in results/accuracy_recipe.md (pair it with fxq.center_attention_keys). Its FP8 GEMMs need
    per-channel weight scales: TensorRT >= 10.6 on Hopper.
    """
    if name == "tensorrt-fp8":
        return QuantConfig()
    if name == "tensorrt-fp8-percentile":
        p = TensorSpec(calibrator="percentile")
        return QuantConfig(roles=RoleSpecs(linear_input=p, attn_q=p, attn_k=p, attn_v=p, layer_norm_output=p,
                                           conv_input=p))
    if name == "accurate":
        return QuantConfig(weight_axis=0)
    if name == "gemm-only":
        return QuantConfig(roles=RoleSpecs(attn_q=None, attn_k=None, attn_v=None, attn_probs=None,
                                           conv_input=None, conv_weight=None))
    raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")


PRESETS = ("tensorrt-fp8", "tensorrt-fp8-percentile", "gemm-only", "accurate")
