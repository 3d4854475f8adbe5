"""Export a QuantizedModel to ONNX with native QuantizeLinear/DequantizeLinear (FLOAT8E4M3FN)."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch

from fxq import validate
from fxq.atomic import check_targets, staging
from fxq.errors import InputError
from fxq.conversion.graph_dtype import program_in_dtype, scale_range
from fxq.export.names import output_names, rename_dims, rename_outputs
from fxq.conversion.insert import DEQUANT, DEQUANT_AXIS, QDQ
from fxq.memory import release_free_memory
from fxq.quiet import quiet
from fxq.export.stream import stub_initializers
from onnx_post import IR_VERSION, fp8, skeleton
from onnx_post.pending import Pending, total_bytes, write_tensors

DEFAULT_OPSET = 21  # onnxruntime computes fp16 Q/DQ in fp32 up to 21, as fxq's torch op does
# Conv and Cos have no bfloat16 type before opset 22; 23 is the newest torch 2.13 exports.
BF16_MIN_OPSET = 22
BF16_DEFAULT_OPSET = 23
# Weights above this many bytes in all go to a .data file next to the model (tensors of 1 KiB or more):
# protobuf cannot serialise 2 GiB; leave headroom for the graph itself.
EXTERNAL_DATA_BYTES = 2**31 - 2**26
_TORCH = {ir.DataType.FLOAT: torch.float32, ir.DataType.FLOAT16: torch.float16, ir.DataType.BFLOAT16: torch.bfloat16}


def _scale_constant(opset, scale: float, dtype: torch.dtype):
    """The scale as the graph stores it: a scalar in the graph dtype, rounded and clamped as the torch op does."""
    return opset.Constant(value=ir.tensor(fp8.stored_scale_array(scale, dtype)))


def _zero_fp8(opset):
    return opset.Constant(value=ir.tensor(np.zeros((), dtype=np.uint8), dtype=ir.DataType.FLOAT8E4M3FN))


def _translations(opset) -> dict:
    """fxq's two ops as ONNX: fp8_qdq -> QuantizeLinear + DequantizeLinear, fp8_dequant -> DequantizeLinear."""

    def fp8_qdq(x, scale: float):
        s = _scale_constant(opset, scale, _TORCH[x.dtype])
        zero = _zero_fp8(opset)
        return opset.DequantizeLinear(opset.QuantizeLinear(x, s, zero), s, zero)

    def fp8_dequant(codes, scale: float, dtype: int):
        # dtype arrives as an ONNX data type number; the scale's dtype sets DequantizeLinear's output dtype.
        return opset.DequantizeLinear(codes, _scale_constant(opset, scale, _TORCH[ir.DataType(dtype)]),
                                      _zero_fp8(opset))

    def fp8_dequant_axis(codes, scale, axis: int, dtype: int):
        # Per-channel weight: the zero point matches the 1-D scale's shape, as ONNX requires.
        zero = opset.Constant(value=ir.tensor(np.zeros((codes.shape[axis],), dtype=np.uint8),
                                              dtype=ir.DataType.FLOAT8E4M3FN))
        return opset.DequantizeLinear(codes, scale, zero, axis=axis)

    return {QDQ: fp8_qdq, DEQUANT: fp8_dequant, DEQUANT_AXIS: fp8_dequant_axis}


def clean_up(model: ir.Model) -> None:
    """The exporter's optimizer minus its pattern-rewrite pass.

    Constant folding, dead-code removal, initializer dedup and CSE are what fxq's graphs need; the
    generic rewrite rules find nothing to do here and cost most of the time (6 of 7 s on ViT-base).
    """
    from onnx_ir.passes import common
    from onnxscript.optimizer import _constant_folding

    ir.passes.Sequential(
        common.InlinePass(),
        ir.passes.PassManager([_constant_folding.FoldConstantsPass(
            shape_inference=True, input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
            output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT),
                               common.RemoveUnusedNodesPass()], steps=2, early_stop=True),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)


def _onnxscript_opset(version: int):
    import onnxscript

    return getattr(onnxscript, f"opset{version}")


# Loggers whose warnings are noise for fxq users: torchvision op registration, and the constant
# folder's "Evaluation failed" on shape arithmetic it cannot fold.
_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration", "onnxscript.optimizer._constant_folding")


def _quiet_exporter():
    return quiet(_NOISY_LOGGERS, [(FutureWarning, ".*LeafSpec.*")])


@dataclass
class ExportResult:
    path: Path
    dtype: torch.dtype
    opset: int
    bytes: int
    external_data: bool = False  # the weights are in path.data
    seconds: dict = field(default_factory=dict)  # stage -> wall seconds
    post_counts: dict = field(default_factory=dict)  # onnx_post pass -> times it fired


def _save(model: onnx.ModelProto, path: Path, pending: Pending | None = None,
          external_data_bytes: int | None = None) -> bool:
    """Stream the weights into `path` (inline) or `path`.data, tensor by tensor, then write the graph; all in
    a staging folder renamed over the targets at the end: no target is ever a half-written file.
    Returns True when the weights went to the .data file."""
    limit = EXTERNAL_DATA_BYTES if external_data_bytes is None else external_data_bytes
    external = total_bytes(model) > limit
    # The full check, on the graph without a copy of its weights.
    skeleton.check(model)
    data = path.name + ".data"
    with staging(path, companions=[data]) as tmpdir:  # fxq/atomic.py: signal-safe rename
        write_tensors(model, pending or Pending(), tmpdir if external else None, data)
        with open(tmpdir / path.name, "wb") as f:  # binary protobuf, whatever the suffix
            f.write(model.SerializeToString())
    return external


def pick_opset(dtype: torch.dtype, opset: int | None) -> int:
    """The opset to export at: `opset` if given and able to carry dtype, else the dtype's default."""
    if opset is None:
        return BF16_DEFAULT_OPSET if dtype == torch.bfloat16 else DEFAULT_OPSET
    validate.opset(opset)
    if dtype == torch.bfloat16 and opset < BF16_MIN_OPSET:
        raise InputError(f"bfloat16 export needs opset >= {BF16_MIN_OPSET} (Conv and Cos have no bfloat16 type "
                         f"before it), got opset {opset}; fix: leave opset unset (bf16 picks {BF16_DEFAULT_OPSET}) "
                         f"or pass opset={BF16_DEFAULT_OPSET}")
    return opset


def _onnx_path(path) -> Path:
    """The output path, checked before any slow work: a writable file path, binary ONNX, and no
    folder where the file or its .data companion must go."""
    path = validate.output_path(path)
    fmt = onnx.serialization.registry.get_format_from_file_extension(path.suffix)
    if fmt not in (None, "protobuf"):
        raise InputError(f"output {path} has the suffix '{path.suffix}', which names the {fmt} format; fxq writes "
                         "binary ONNX, which TensorRT and onnxruntime load; fix: name the file *.onnx")
    check_targets(path, [path.name + ".data"])
    return path


# Ops whose float initializers must be in the asked dtype: the FP8 scales and the GEMM/conv weights.
_DTYPE_BOUND_OPS = {"QuantizeLinear", "DequantizeLinear", "MatMul", "Gemm", "Conv", "ConvTranspose"}


def check_graph_dtype(model: onnx.ModelProto, dtype: torch.dtype) -> None:
    """Every float input and output, and every initializer a Q/DQ or GEMM reads, is `dtype`.

    A BF16 model's deliberate fp32 islands (timestep embedding, RoPE table) may hold fp32 constants: the
    literal rule of fxq/conversion/graph_dtype.py keeps them, TensorRT's strongly typed mode runs them as written."""
    want = {torch.float16: onnx.TensorProto.FLOAT16, torch.bfloat16: onnx.TensorProto.BFLOAT16,
            torch.float32: onnx.TensorProto.FLOAT}[dtype]
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    g = model.graph
    bound = {i for n in g.node if n.op_type in _DTYPE_BOUND_OPS for i in n.input}
    typed = [(v.name, v.type.tensor_type.elem_type) for v in [*g.input, *g.output]]
    typed += [(t.name, t.data_type) for t in g.initializer if t.name in bound]
    wrong = [(n, onnx.TensorProto.DataType.Name(t)) for n, t in typed if t in floats and t != want]
    if wrong:
        raise InputError(f"the exported graph should be {dtype} but holds {len(wrong)} tensors of another float "
                         f"dtype, e.g. {wrong[:3]}; nothing was written; fix: report this model to fxq, and export "
                         "with dtype=torch.float32 meanwhile")


def export_onnx(qm, path, dtype: torch.dtype = torch.float16, opset: int | None = None,
                post_process: bool = True, external_data_bytes: int | None = None) -> ExportResult:
    """Write `qm` as an ONNX file TensorRT can build a strongly typed FP8 engine from.

    opset None picks DEFAULT_OPSET, or BF16_DEFAULT_OPSET for bfloat16. Weights of more than
    `external_data_bytes` in all (None: EXTERNAL_DATA_BYTES) are written to `path`.data, one tensor at a time from the program's own
    tensors: the model is never held a second time in host memory."""
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dtype must be torch.float16, torch.bfloat16 or torch.float32, got {dtype}")
    opset = pick_opset(dtype, opset)
    path = _onnx_path(path)
    tiny = scale_range(qm.program, dtype)
    if tiny:
        warnings.warn(f"fxq: {len(tiny)} FP8 scales are below {dtype}'s smallest normal and are stored as it "
                      f"(coarser steps for those small tensors), e.g. {tiny[:3]}", stacklevel=3)
    seconds = {}
    t = time.perf_counter()
    ep = program_in_dtype(qm.program, dtype)
    seconds["convert_dtype"] = time.perf_counter() - t
    t = time.perf_counter()
    with _quiet_exporter():
        program = torch.onnx.export(
            ep, dynamo=True, opset_version=opset, verbose=False, optimize=False,
            custom_translation_table=_translations(_onnxscript_opset(opset)),
        )
        clean_up(program.model)
    pending = Pending()
    counts = {"stub_initializers": stub_initializers(program.model, pending)}
    model = ir.to_proto(program.model)  # the graph and small constants; weights stay in the program's tensors
    names = output_names(ep)
    del program, ep  # the stubs' loaders keep the weight tensors they read
    release_free_memory()
    seconds["onnx_export"] = time.perf_counter() - t
    if post_process:
        from onnx_post import pipeline

        t = time.perf_counter()
        model, post_counts = pipeline.run_pipeline(model, pending=pending)
        counts.update(post_counts)
        seconds["post_process"] = time.perf_counter() - t
    counts["rename_outputs"] = rename_outputs(model, names)
    counts["rename_dims"] = rename_dims(model)
    check_graph_dtype(model, dtype)
    model.ir_version = IR_VERSION
    t = time.perf_counter()
    external = _save(model, path, pending, external_data_bytes)
    seconds["save"] = time.perf_counter() - t
    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if external else 0)
    return ExportResult(path, dtype, opset, size, external, seconds, counts)
