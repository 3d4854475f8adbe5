"""Build small ONNX graphs in code (no binary goldens) and run them in onnxruntime.

`model` is the one builder of test graphs; every test file that needs an ONNX model makes it here."""
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from onnx_post.runtime import onnx_session

OPSET = 21
FP16 = TensorProto.FLOAT16


def fp8_zero(name="zp"):
    return helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, [], [0])


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def value_infos(spec):
    """[(name, elem_type, shape)] or ValueInfoProtos -> ValueInfoProtos."""
    return [s if isinstance(s, onnx.ValueInfoProto) else helper.make_tensor_value_info(*s) for s in spec]


def model(nodes, inputs, outputs, initializers, opset: int = OPSET, check: bool = True):
    """A model of `nodes` (default opset, IR version 10), checked in full unless check=False.
    inputs/outputs: [(name, elem_type, shape)] or ValueInfoProtos."""
    g = helper.make_graph(nodes, "g", value_infos(inputs), value_infos(outputs), initializer=initializers)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    if check:
        onnx.checker.check_model(m, full_check=True)
    return m


def run(m, feed):
    return onnx_session_from_proto(m).run(None, feed)


def onnx_session_from_proto(m):
    import onnxruntime as ort

    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def apply(m, passes):
    """Run passes through onnx_post's pipeline; returns (new model, counts)."""
    from onnx_post.pipeline import run_pipeline

    out, counts = run_pipeline(m, passes)
    onnx.checker.check_model(out, full_check=True)
    return out, counts


def ops(m):
    return [n.op_type for n in m.graph.node]


__all__ = ["gs", "onnx_session", "FP16"]
