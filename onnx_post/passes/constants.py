"""Weights the exporter left as small constant subgraphs (Split / Slice / Reshape of an initializer).

nn.MultiheadAttention keeps Q, K and V projections in one `in_proj_weight` and splits it at run
time; the exporter does not fold a multi-output Split, so the weight reaches its QuantizeLinear as
a computed tensor. TensorRT wants a constant FP8 weight there, so evaluate that subgraph once.
"""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx.reference import ReferenceEvaluator

from .. import IR_VERSION
from ..gs_utils import const_value, new_name, producer

MAX_NODES = 8  # a weight's shape plumbing is a handful of ops; anything longer is left alone


def _constant_subgraph(t: gs.Tensor) -> list[gs.Node] | None:
    """The nodes that compute `t` from constants only (in no particular order), else None."""
    nodes, stack = [], [t]
    while stack:
        x = stack.pop()
        if isinstance(x, gs.Constant):
            continue
        node = producer(x)
        if node is None or node.op.startswith("Random") or len(nodes) >= MAX_NODES:
            return None  # a graph input (or too far): not a constant
        if node not in nodes:
            nodes.append(node)
            stack.extend(i for i in node.inputs if i.name)
    return nodes


def _evaluate(graph: gs.Graph, nodes: list[gs.Node], t: gs.Tensor):
    sub = gs.Graph(nodes=list(nodes), inputs=[], outputs=[t], opset=graph.opset)
    model = gs.export_onnx(sub.toposort(), do_type_check=False)
    model.ir_version = IR_VERSION
    # Weights still waiting to be streamed (onnx_post.pending) export as stubs that name no file: give the
    # evaluator their values, read from their source.
    consts = {i.name: i for n in nodes for i in n.inputs if isinstance(i, gs.Constant)}
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL and init.name in consts:
            init.CopyFrom(onnx.numpy_helper.from_array(const_value(consts[init.name]), init.name))
    del model.opset_import[:]
    model.opset_import.extend([onnx.helper.make_opsetid("", graph.opset)])
    return ReferenceEvaluator(model).run(None, {})[0]


def fold_constant_weight_inputs(graph: gs.Graph) -> int:
    """QuantizeLinear(f(initializer)) ==> QuantizeLinear(initializer'), f a short constant subgraph."""
    fired = 0
    for q in [n for n in graph.nodes if n.op == "QuantizeLinear"]:
        x = q.inputs[0]
        if isinstance(x, gs.Constant) or producer(x, "Constant") is not None:
            continue
        nodes = _constant_subgraph(x)
        if not nodes:
            continue
        value = _evaluate(graph, nodes, x)
        q.inputs[0] = gs.Constant(new_name(graph, x.name + "_folded"), value)
        fired += 1
    return fired
