"""`fxq check --verify`: run the file in onnxruntime on random inputs of the declared shapes and
flag non-finite outputs. Structure and stored values can both look fine while the graph computes
NaN; this catches what neither check can.

Symbolic dims get a small value; float inputs are standard normal; integer inputs are valid by
construction: ones for names containing "mask", zeros (id 0 exists in every vocabulary) otherwise.
"""
from __future__ import annotations

import re

import numpy as np

from onnx_post.runtime import onnx_session  # keeps onnxruntime's FP8-unsafe rewrites disabled

SYMBOLIC_DIM = 2
MAX_INPUT_BYTES = 1 << 30  # all random inputs together: enough for any real model's batch, never 100 GiB
_NP = {"float": np.float32, "float16": np.float16, "double": np.float64, "int64": np.int64, "int32": np.int32,
       "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}


class VerifyError(RuntimeError):
    """onnxruntime could not load or run the file."""


def random_inputs(session, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    specs, total = [], 0
    for i in session.get_inputs():  # sizes first: refuse before allocating anything
        m = re.fullmatch(r"tensor\((\w+)\)", i.type)
        dtype = _NP.get(m.group(1)) if m else None
        if dtype is None:
            raise VerifyError(f"input '{i.name}' has type {i.type}, which --verify cannot generate")
        shape = [d if isinstance(d, int) and d >= 0 else SYMBOLIC_DIM for d in (i.shape or [])]
        nbytes = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
        total += nbytes
        if total > MAX_INPUT_BYTES:
            raise VerifyError(f"input '{i.name}' of shape {shape} ({m.group(1)}) takes {nbytes / 2**30:.1f} GiB; "
                              f"--verify generates at most {MAX_INPUT_BYTES / 2**30:.0f} GiB of random inputs in all")
        specs.append((i.name, dtype, shape))
    feed = {}
    for name, dtype, shape in specs:
        if np.issubdtype(dtype, np.floating):
            feed[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_ or "mask" in name.lower():
            feed[name] = np.ones(shape, dtype)
        else:
            feed[name] = np.zeros(shape, dtype)
    return feed


def verify_outputs(path, seed: int = 0) -> dict:
    """{"ok", "inputs": {name: shape}, "outputs": {name: {"shape", "nonfinite", "size"}}}."""
    try:
        sess = onnx_session(path)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise VerifyError(f"onnxruntime cannot load it: {_first_line(e)}") from None
    feed = random_inputs(sess, seed)
    try:
        values = sess.run(None, feed)
    except Exception as e:  # noqa: BLE001
        raise VerifyError(f"onnxruntime cannot run it on random inputs: {_first_line(e)}") from None
    outputs = {}
    for o, v in zip(sess.get_outputs(), values):
        v = np.asarray(v)
        bad = int(np.count_nonzero(~np.isfinite(v))) if np.issubdtype(v.dtype, np.floating) else 0
        outputs[o.name] = {"shape": list(v.shape), "nonfinite": bad, "size": int(v.size)}
    return {"ok": not any(o["nonfinite"] for o in outputs.values()),
            "inputs": {k: list(v.shape) for k, v in feed.items()}, "outputs": outputs}


def format_verify(result: dict) -> str:
    ins = ", ".join(f"{k}{v}" for k, v in result["inputs"].items())
    lines = [f"Verify (onnxruntime, random inputs {ins})"]
    for name, o in result["outputs"].items():
        state = "finite" if not o["nonfinite"] else f"NON-FINITE: {o['nonfinite']} of {o['size']} values NaN/inf"
        lines.append(f"  {name} {o['shape']}: {state}")
    return "\n".join(lines)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
