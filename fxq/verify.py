"""Numerics checks: compare tensors, and run an exported ONNX file in onnxruntime."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from onnx_post.runtime import onnx_session  # noqa: F401  (fxq callers import it from here)

from fxq.capture.program import Inputs


def _flat(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64).ravel()


def compare(reference, actual) -> dict:
    """cosine similarity, max |diff| and SQNR (dB) of `actual` against `reference`.

    If either holds NaN/inf the metrics are NaN and `nonfinite` (and `reference_nonfinite`, when the
    reference is at fault) count the bad values; callers must treat that as a failure."""
    r, a = _flat(reference), _flat(actual)
    if r.shape != a.shape:
        raise ValueError(f"shapes differ: reference {r.shape} vs actual {a.shape}")
    bad_r, bad_a = int(np.sum(~np.isfinite(r))), int(np.sum(~np.isfinite(a)))
    if bad_r or bad_a:  # NaN makes every metric meaningless (and noise > 0 false: no "sqnr inf")
        out = {"cosine": float("nan"), "max_abs": float("nan"), "sqnr_db": float("nan"), "nonfinite": bad_a}
        return {**out, "reference_nonfinite": bad_r} if bad_r else out
    noise = np.sum((r - a) ** 2)
    denom = np.linalg.norm(r) * np.linalg.norm(a)
    return {
        "cosine": float(np.dot(r, a) / denom) if denom > 0 else float(np.array_equal(r, a)),
        "max_abs": float(np.max(np.abs(r - a))) if r.size else 0.0,
        "sqnr_db": float(10 * np.log10(np.sum(r**2) / noise)) if noise > 0 else float("inf"),
    }


def first_output(out):
    """The main tensor of a model output (HF ModelOutput, tuple or tensor)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, dict):
        out = list(out.values())
    return first_output(out[0])


UPCAST_NOTE = "verified on an FP32 upcast copy (onnxruntime's CPU provider has no BF16 DequantizeLinear)"


def _runnable(path, tmpdir: Path):
    """What onnxruntime can run for `path`: the file itself, or an FP32 upcast copy written in
    `tmpdir` when it holds BF16 (fxq/export/upcast.py); the copy's weights go to a .data file, so models
    past protobuf's 2 GiB work too. The upcast is logged with UPCAST_NOTE."""
    import onnx

    from fxq.export.upcast import has_bf16, upcast_bf16

    if isinstance(path, bytes) or not has_bf16(onnx.load(str(path), load_external_data=False)):
        return path
    model = onnx.load(str(path))  # with its weights: the copy must carry them
    upcast_bf16(model)
    logging.getLogger("fxq").info("fxq: %s %s", path, UPCAST_NOTE)
    copy = tmpdir / "fp32_upcast.onnx"
    onnx.save(model, copy, format="protobuf", save_as_external_data=True, location=copy.name + ".data")
    return copy


def run_onnx(path, example, dtype: torch.dtype = torch.float16, optimize: bool = True) -> list[np.ndarray]:
    """Run the ONNX file on inputs given like fxq.quantize's example_inputs (float inputs cast to dtype).

    A BF16 file runs as an FP32 upcast copy (see _runnable), fed FP32 inputs."""
    with tempfile.TemporaryDirectory(prefix="fxq-upcast-") as tmp:  # the session holds the copy once made
        sess = onnx_session(_runnable(path, Path(tmp)), optimize)
    inputs = Inputs.of(example)
    tensors = list(inputs.args) + [inputs.kwargs[k] for k in inputs.kwargs]
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(tensors):
        raise ValueError(f"the ONNX file takes inputs {names}, got {len(tensors)} tensors")
    if inputs.kwargs and set(names) == set(inputs.kwargs):
        tensors = [inputs.kwargs[n] for n in names]
    feed = {}
    for name, t in zip(names, tensors):
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.float() if dtype == torch.bfloat16 else t.to(dtype)  # numpy has no bfloat16
        feed[name] = t.numpy()
    return sess.run(None, feed)
