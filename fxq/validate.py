"""One validation layer for what users hand fxq: the Python API and the CLI call the same checks,
so the same mistake gives the same one-line error, naming the problem and the fix.

Each check returns the cleaned value (or None) and raises an FxqError subclass:
InputError (models, inputs, paths, options), CalibrationError (amax), ConfigError (configs).
"""
from __future__ import annotations

import inspect
import json
import math
import struct
from numbers import Real
from pathlib import Path
from typing import Any, Mapping

from fxq.errors import CalibrationError, ConfigError, InputError
from fxq.validate_files import ECHO_CHARS, json_file, output_path, short  # noqa: F401  (fxq.validate is the one entry point)

MIN_OPSET = 19  # first opset with FLOAT8E4M3FN QuantizeLinear/DequantizeLinear
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


# -- calibration results ---------------------------------------------------------------------
def amax_dict(amax: Any, where: str) -> dict[str, float]:
    """{site key: amax} with every value a finite float >= 0. 0 is what calibration records for a
    tensor that was all zeros (fxq gives it the scale 1/448), so it is accepted; bools are not numbers."""
    if not isinstance(amax, Mapping):
        raise CalibrationError(f"{where}: 'amax' must map quantizer keys to numbers, got {type(amax).__name__}; "
                               "fix: use a file written by save_calibration / --save-calib")
    out = {}
    for key, v in amax.items():
        if not isinstance(key, str):
            raise CalibrationError(f"{where}: amax key {short(key)} is not a string; fix: keys are quantizer keys "
                                   "such as 'encoder.layer.0.attention:attn.q'")
        if isinstance(v, bool) or not isinstance(v, Real):
            raise CalibrationError(f"{where}: amax for {short(key)} is {short(v)}, not a number; fix: calibrate again "
                                   "(amax is the largest |value| the quantizer saw)")
        if not math.isfinite(float(v)) or v < 0:
            raise CalibrationError(f"{where}: amax for {short(key)} is {float(v)!r}; it must be finite and >= 0; fix: "
                                   "calibrate again (NaN/inf mean the calibration data or model produced them)")
        out[key] = float(v)
    return out


CALIBRATION_KEYS = ("version", "model", "batches", "config", "amax", "fallback")  # what save_calibration writes


def calibration_doc(doc: Any, where: str, version: int) -> dict:
    """A calibration document (loaded JSON or a dict given to quantize(calibration=...))."""
    if not isinstance(doc, Mapping):
        raise CalibrationError(f"{where} is not an fxq calibration (a JSON object), got {type(doc).__name__}; "
                               "fix: write one with save_calibration or --save-calib")
    if type(doc.get("version")) is not int or doc["version"] != version or "amax" not in doc:
        raise CalibrationError(f"{where} is not an fxq v{version} calibration file (needs 'version': {version} "
                               "and 'amax'); fix: write one with save_calibration or --save-calib")
    batches = doc.get("batches", 0)
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
        raise CalibrationError(f"{where}: 'batches' must be a whole number >= 0, got {short(batches)}")
    unknown = [k for k in doc if k not in CALIBRATION_KEYS]
    if unknown:  # kept, they would be saved again with every re-save: refuse them instead
        raise CalibrationError(f"{where} has unknown top-level keys {short(sorted(map(str, unknown)))}; it may hold "
                               f"only {list(CALIBRATION_KEYS)}; fix: remove those keys, or calibrate again")
    return {**doc, "amax": amax_dict(doc["amax"], where), "batches": batches}


def calibration_sources(calib_data: Any, calibration: Any, gptq: bool = False) -> None:
    """calib_data or calibration=, not both; except for GPTQ, whose Hessians need the data either way."""
    if calib_data is not None and calibration is not None and not gptq:
        raise InputError("both calib_data and calibration= were given; fix: pass calib_data to calibrate, "
                         "or calibration=<saved file> to reuse a calibration, not both")


# -- configs ---------------------------------------------------------------------------------
_INT_FIELDS = ("min_gemm_dim", "head_size_min", "head_size_max", "head_size_multiple")
_SPEC_FIELDS = {"calibrator": str, "percentile": Real}


def _type_error(field: str, want: str, got: Any) -> ConfigError:
    return ConfigError(f"config field '{field}' must be {want}, got {type(got).__name__} {got!r}"[:300])


def _spec_dict(spec: Any, field: str) -> None:
    if spec is None:
        return
    if not isinstance(spec, Mapping):
        raise _type_error(field, "an object such as {\"calibrator\": \"max\"} or null", spec)
    for k, v in spec.items():
        if k not in _SPEC_FIELDS:
            raise ConfigError(f"config field '{field}' has unknown key {short(k)}; known keys: {sorted(_SPEC_FIELDS)}")
        if isinstance(v, bool) or not isinstance(v, _SPEC_FIELDS[k]):
            raise _type_error(f"{field}.{k}", "a string" if k == "calibrator" else "a number", v)


def _role(role: Any) -> None:
    from fxq import roles as R

    if not isinstance(role, str) or len(role) > ECHO_CHARS:  # never echo a megabyte key
        raise ConfigError(f"unknown role {short(role)}; known roles: {', '.join(R.ALL_ROLES)}")
    R.check_role(role)


def config_dict(d: Any) -> None:
    """The shape of a QuantConfig.to_dict() document; values are checked by the dataclasses."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"a config must be a JSON object (QuantConfig.to_dict format), got {type(d).__name__}; "
                          "fix: start from fxq.preset('tensorrt-fp8').to_dict()")
    if "version" in d and type(d["version"]) is not int:
        raise _type_error("version", "a whole number (1)", d["version"])
    roles = d.get("roles", {})
    if not isinstance(roles, Mapping):
        raise _type_error("roles", "an object mapping role names to specs", roles)
    for role, spec in roles.items():
        _role(role)
        _spec_dict(spec, f"roles.{role}")
    overrides = d.get("overrides", [])
    if not isinstance(overrides, list):
        raise _type_error("overrides", "a list", overrides)
    for i, o in enumerate(overrides):
        if not isinstance(o, Mapping):
            raise _type_error(f"overrides[{i}]", "an object with 'module' and 'roles'", o)
        for key in ("module", "roles"):
            if key not in o:
                raise ConfigError(f"config field 'overrides[{i}]' is missing '{key}'; "
                                  "fix: each override needs 'module' (a module path) and 'roles'")
        if not isinstance(o["module"], str):
            raise _type_error(f"overrides[{i}].module", "a string", o["module"])
        if not isinstance(o.get("regex", False), bool):
            raise _type_error(f"overrides[{i}].regex", "true or false", o["regex"])
        if not isinstance(o["roles"], Mapping):
            raise _type_error(f"overrides[{i}].roles", "an object mapping role names to specs", o["roles"])
        for role, spec in o["roles"].items():
            _role(role)
            _spec_dict(spec, f"overrides[{i}].roles.{role}")
    for name in _INT_FIELDS:
        if name in d and (isinstance(d[name], bool) or not isinstance(d[name], int)):
            raise _type_error(name, "a whole number", d[name])


# -- models and example inputs ---------------------------------------------------------------
def model(m: Any) -> None:
    """A module fxq can quantize: real (not meta) tensors, finite parameters."""
    import torch

    if not isinstance(m, torch.nn.Module):
        raise TypeError(f"fxq quantizes torch.nn.Module objects, got {type(m).__name__}")
    for name, t in [*m.named_parameters(), *m.named_buffers()]:
        if t.is_meta:
            raise InputError(f"the model is on the meta device ('{name}' has no data); fix: load real weights "
                             "first (e.g. from_pretrained without device_map='meta', or to_empty() + load_state_dict)")
    for name, p in m.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p.detach()).all()):
            nan = int(torch.isnan(p.detach()).sum())
            raise InputError(f"parameter '{name}' holds {nan} NaN and {int(torch.isinf(p.detach()).sum())} inf "
                             "values; FP8 cannot represent them; fix: load or train the model so its weights are finite")


def example_inputs(m, inputs) -> None:
    """Example inputs the model's forward takes: keywords it accepts, not too many positionals."""
    if not inputs.tensors():
        raise InputError("the example inputs hold no tensors; fix: pass a tensor, a tuple of tensors or a dict "
                         "of keyword tensors such as a tokenizer's output")
    try:
        sig = inspect.signature(m.forward)
    except (TypeError, ValueError):  # builtins or C extensions: let torch.export judge
        return
    params = list(sig.parameters.values())
    kinds = {p.kind for p in params}
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    # Hugging Face models end forward with **kwargs: TransformersKwargs (attention/output options, not
    # tensors), so a tensor keyword that is not a named parameter is a wrong input there too.
    hf_options = _is_hf_model(m)
    unknown = [k for k, v in inputs.kwargs.items() if k not in names
               and (inspect.Parameter.VAR_KEYWORD not in kinds or (hf_options and hasattr(v, "shape")))]
    if unknown:
        raise InputError(f"{type(m).__name__}.forward takes no keyword(s) {unknown}; it accepts "
                         f"{names}; fix: rename or drop those example inputs")
    if inspect.Parameter.VAR_POSITIONAL not in kinds:
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(inputs.args) > len(positional):
            raise InputError(f"{type(m).__name__}.forward takes {len(positional)} positional input(s) "
                             f"({[p.name for p in positional]}), got {len(inputs.args)}; fix: pass fewer, or by keyword")
        taken = {p.name for p in positional[:len(inputs.args)]}
        twice = sorted(taken & set(inputs.kwargs))
        if twice:
            raise InputError(f"example input(s) {twice} given both by position and by keyword; fix: give each once")


def _is_hf_model(m) -> bool:
    import sys

    transformers = sys.modules.get("transformers")  # never import it just to ask
    return transformers is not None and isinstance(m, transformers.PreTrainedModel)


def seq_len(n: int, max_positions: Any = None, name: str = "seq_len") -> None:
    """A sequence length: a whole number >= 1, within the model's positions. `name` is how the caller
    spells the setting (the CLI passes "--seq-len"; both accept the fix written as name=value)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"{name} must be a positive whole number, got {n!r}; fix: e.g. {name}=128")
    if isinstance(max_positions, int) and not isinstance(max_positions, bool) and n > max_positions:
        raise InputError(f"{name} {n} exceeds the model's max_position_embeddings ({max_positions}); "
                         f"fix: {name}={max_positions} or less")


# -- export options and files ----------------------------------------------------------------
def max_opset() -> int:
    """The highest opset both torch.onnx's exporter and onnxscript's op sets support (23 on torch 2.13)."""
    import onnxscript

    try:
        from torch.onnx._constants import ONNX_MAX_OPSET as torch_max
    except ImportError:  # private module moved: trust onnxscript alone
        torch_max = 10**6
    script_max = max(int(n[5:]) for n in dir(onnxscript) if n.startswith("opset") and n[5:].isdigit())
    return min(torch_max, script_max)


def opset(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(f"opset must be a whole number, got {v!r}")
    top = max_opset()
    if not MIN_OPSET <= v <= top:
        raise InputError(f"opset {v} is not supported: FP8 QuantizeLinear needs opset >= {MIN_OPSET} and this "
                         f"torch.onnx exports up to opset {top}; fix: pass an opset in {MIN_OPSET}..{top} (default 21)")
    return v


def text_file(path: Path) -> str:
    """UTF-8 text; a binary file (NUL bytes, undecodable bytes) is refused, not read as mojibake."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"calibration text file {path} does not exist; fix: give a file with one sentence per line")
    data = path.read_bytes()
    nul = data.find(b"\0")
    try:
        if nul >= 0:
            raise UnicodeDecodeError("utf-8", data, nul, nul + 1, "NUL byte")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"calibration text file {path} is not UTF-8 text (binary data at byte {e.start}); "
                         "fix: give a plain text file, one sentence per line, saved as UTF-8") from None


# -- model folders ---------------------------------------------------------------------------
def safetensors_file(path: Path) -> None:
    """Header and length of a .safetensors file, so a truncated download fails here, clearly."""
    size = path.stat().st_size
    bad = f"{path} is not a complete safetensors file"
    fix = "fix: download or save the model again"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"{bad} ({size} bytes); {fix}")
        n = struct.unpack("<Q", head)[0]
        if n > min(size - 8, 100 * 2**20):
            raise InputError(f"{bad} (header of {n} bytes in a file of {size}); {fix}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"{bad} (unreadable header); {fix}") from None
    try:
        ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):  # not {name: {"data_offsets": [a, b]}}
        raise InputError(f"{bad} (unexpected header layout); {fix}") from None
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise InputError(f"{path} is truncated: {size} bytes, its header needs {need}; {fix}")


def model_folder(path: Path) -> None:
    """Weights fxq will load without unpickling: safetensors, complete. Pickle files are refused."""
    path = Path(path)
    safe = sorted(path.glob("*.safetensors"))
    if not safe:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
        if pickles:
            raise InputError(f"{path} has pickle weights ({', '.join(pickles[:3])}) and no .safetensors; fxq never "
                             "unpickles files (they can run code); fix: convert to safetensors: load the model where you trust "
                             "the file and call model.save_pretrained(folder) (transformers 5 writes safetensors)")
        raise InputError(f"{path} has no model weights (*.safetensors); fix: save the model with save_pretrained")
    for f in safe:
        safetensors_file(f)
