"""A model's graph without its weights, for shape inference and checking.

onnx's shape inference and full checker copy the whole model (twice, through serialisation), so on a
large model they cost more memory than the weights themselves. Neither needs weight values: large
initializers keep their name, dtype and shape and lose their data.
"""
from __future__ import annotations

import onnx

SMALL_BYTES = 1024  # shape constants and scales are kept whole: data propagation reads them


def skeleton(model: onnx.ModelProto, as_inputs: bool = False) -> onnx.ModelProto:
    """A copy of `model` whose initializers above SMALL_BYTES (or stored outside it) have no data.

    as_inputs: declare them as graph inputs instead (what onnx.checker accepts: an initializer must
    hold data).
    """
    s = onnx.ModelProto()
    s.ir_version = model.ir_version
    s.opset_import.extend(model.opset_import)
    s.functions.extend(model.functions)
    g, src = s.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    for t in src.initializer:
        if t.ByteSize() <= SMALL_BYTES and t.data_location != onnx.TensorProto.EXTERNAL:
            g.initializer.append(t)
        elif as_inputs:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            g.initializer.add(name=t.name, dims=t.dims, data_type=t.data_type)
    return s


def infer_shapes(model: onnx.ModelProto) -> int:
    """Shape and dtype of every tensor into model.graph.value_info, inferred on the skeleton.

    Returns how many value_info entries the model has afterwards.
    """
    inferred = onnx.shape_inference.infer_shapes(skeleton(model), data_prop=True)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    return len(model.graph.value_info)


def check(model: onnx.ModelProto) -> None:
    """onnx.checker's full check (types, shapes, op schemas) of the graph, without copying weights."""
    onnx.checker.check_model(skeleton(model, as_inputs=True), full_check=True)
