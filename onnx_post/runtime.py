"""onnxruntime sessions that compute FP8 Q/DQ graphs correctly.

Some of onnxruntime's graph rewrites assume integer quantization and compute FP8 Q/DQ graphs wrong (below).

onnxruntime's ReluQuantRewrite drops a Relu in front of QuantizeLinear. That is only valid for
integer types whose zero point is the minimum; FP8 E4M3 is signed, so negatives leak through
(T5's FFN: cosine 1.0 -> 0.81 against the torch model; a two-Linear ReLU MLP: 0.56). Every session
onnx_post and fxq open goes through onnx_session, which disables it and the other rewrites in WRONG_ON_FP8.
"""
from __future__ import annotations

# onnxruntime graph rewrites that are wrong on FP8 Q/DQ graphs. QDQSelectorActionTransformer: onnxruntime 1.30
# turns DQ(FP8) -> MatMul into MatMulIntegerToFloat, which takes only int8/uint8, so the session fails to load
# ("Type 'tensor(float8e4m3fn)' ... of operator (MatMulIntegerToFloat) is invalid"; fxq's DINOv2 FP16 export,
# found on the GPU machine's image). 1.32 leaves FP8 alone and computes the same outputs, bit for bit, with it off.
# WeightBiasQuantization: a Conv, ConvTranspose or Gemm reading DQ(x), whose output reaches a QuantizeLinear through
# Relu/Clip only, gets its float bias rewritten as int32 at x_scale * w_scale; in an FP16 graph bias / (x_scale *
# w_scale) is rounded through float16 and overflows to inf past 65504 (FP8 scales multiply to ~1e-6, so biases of
# ~0.1 do; in float32 graphs int32 overflows for large biases): a conv net's FP16 export gave cosine 0.988 against
# its own unoptimised graph's 0.999994 (onnxruntime 1.32). ClipQuantRewrite drops a Clip in front of a
# QuantizeLinear as ReluQuantRewrite drops a Relu; on an FP8 zero point it fails the session (a float32 export
# with ReLU6 before a quantized Conv would not load).
WRONG_ON_FP8 = ["ReluQuantRewrite", "ClipQuantRewrite", "QDQSelectorActionTransformer", "WeightBiasQuantization"]


def onnx_session(path, optimize: bool = True):
    """A CPU InferenceSession of a file path or serialised model bytes, FP8-unsafe rewrites disabled."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"], disabled_optimizers=WRONG_ON_FP8)
