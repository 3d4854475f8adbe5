"""Read-only index over an ONNX graph for the readiness checker.

Plain `onnx` protobuf only (no graphsurgeon), so the checker runs on any file: fxq's output,
NVIDIA ModelOpt's, or a plain FP16 export. Shapes and dtypes come from
`onnx.shape_inference.infer_shapes` plus whatever value_info the exporter already wrote.
"""
from __future__ import annotations

import ast
from collections import defaultdict, deque
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from onnx_post.external_data import to_array

FP8 = TensorProto.FLOAT8E4M3FN
FLOAT_TYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16",
               TensorProto.BFLOAT16: "bfloat16"}
SCOPES_KEY = "pkg.torch.onnx.name_scopes"

Dim = int | str | None  # int: static, str: symbolic (dim_param), None: unknown


def dtype_name(elem_type: int | None) -> str:
    if elem_type is None:
        return "unknown"
    return FLOAT_TYPES.get(elem_type) or TensorProto.DataType.Name(elem_type).lower()


class GraphIndex:
    """Producers, consumers, constants, dtypes and shapes of a graph and the subgraphs inside it."""

    def __init__(self, model: onnx.ModelProto, base_dir: str = ""):
        # data_prop resolves Reshape targets built from Shape ops (dynamic-shape exports).
        for data_prop in (True, False):
            try:
                model = onnx.shape_inference.infer_shapes(model, data_prop=data_prop)
                break
            except Exception:  # noqa: BLE001 - odd files: fall back to the written value_info
                continue
        graphs = list(_graphs(model.graph))  # the main graph, then If/Loop/Scan bodies, depth first
        self.base_dir = base_dir  # where external data lives, loaded lazily for small tensors
        # One index over all of them: a subgraph reads outer tensors by name (names are unique per model).
        self.nodes = [n for g in graphs for n in g.node]
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.nodes:
            for o in n.output:
                self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.inits = {t.name: t for g in graphs for t in g.initializer}
        self.types: dict[str, onnx.TypeProto] = {}
        for v in [x for g in graphs for x in (*g.input, *g.output, *g.value_info)]:
            if v.type.HasField("tensor_type"):
                self.types.setdefault(v.name, v.type)
        # Constant-ness in one topological pass (ONNX requires sorted nodes); recursion would
        # overflow on deep models.
        self.const_names = set(self.inits)
        for n in self.nodes:
            if not n.op_type.startswith("Random") and all(
                    not i or i in self.const_names for i in n.input):
                self.const_names.update(n.output)

    # -- dtypes and shapes ---------------------------------------------------------------------
    def elem_type(self, name: str) -> int | None:
        if name in self.inits:
            return self.inits[name].data_type
        t = self._constant_tensor(name)
        if t is not None:
            return t.data_type
        ty = self.types.get(name)
        if ty is not None and ty.tensor_type.elem_type:
            return ty.tensor_type.elem_type
        return None

    def shape(self, name: str) -> list[Dim] | None:
        if name in self.inits:
            return list(self.inits[name].dims)
        t = self._constant_tensor(name)
        if t is not None:
            return list(t.dims)
        ty = self.types.get(name)
        if ty is None or not ty.tensor_type.HasField("shape"):
            return None
        dims: list[Dim] = []
        for d in ty.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else d.dim_param or None)
        return dims

    def dim(self, name: str, index: int) -> Dim:
        s = self.shape(name)
        if s is None or not -len(s) <= index < len(s):
            return None
        return s[index]

    # -- constants -----------------------------------------------------------------------------
    def _constant_tensor(self, name: str) -> TensorProto | None:
        n = self.producer.get(name)
        if n is None or n.op_type != "Constant":
            return None
        for a in n.attribute:
            if a.name == "value":
                return a.t
        return None

    def value(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant output (through Identity), else None."""
        try:
            return self._value(name)
        except (OSError, ValueError):  # external data that is not where the model says
            return None

    def _value(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return to_array(self.inits[name], self.base_dir)
        n = self.producer.get(name)
        if n is None:
            return None
        if n.op_type == "Identity":
            return self._value(n.input[0])
        if n.op_type == "Constant":
            a = n.attribute[0]
            if a.name == "value":
                return to_array(a.t, self.base_dir)
            if a.name in ("value_float", "value_int"):
                return np.array(onnx.helper.get_attribute_value(a))
            if a.name in ("value_floats", "value_ints"):
                return np.array(list(onnx.helper.get_attribute_value(a)))
        return None

    def is_const(self, name: str) -> bool:
        """True when the tensor does not depend on any graph input (an exporter could fold it)."""
        return not name or name in self.const_names

    def numel(self, name: str) -> int | None:
        s = self.shape(name)
        if s is None or not all(isinstance(d, int) for d in s):
            return None
        return int(np.prod(s)) if s else 1

    # -- naming --------------------------------------------------------------------------------
    def describe(self, name: str) -> str:
        """What produces a tensor, for reason details: an op type, 'initializer' or 'graph input'."""
        if name in self.inits:
            return f"{dtype_name(self.inits[name].data_type)} initializer"
        n = self.producer.get(name)
        if n is None:
            return "graph input"
        return n.op_type


def _graphs(graph: onnx.GraphProto):
    yield graph
    for n in graph.node:
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _graphs(sub)


def function_models(model: onnx.ModelProto) -> list[onnx.ModelProto]:
    """Each model-local function's body as a model of its own (its names are local to it), to index and check."""
    out = []
    for f in model.functions:
        untyped = onnx.helper.make_empty_tensor_value_info
        g = onnx.helper.make_graph(list(f.node), f.name, [untyped(i) for i in f.input], [untyped(o) for o in f.output])
        m = onnx.helper.make_model(g, opset_imports=[*model.opset_import, *f.opset_import], ir_version=model.ir_version)
        m.functions.extend(x for x in model.functions if x is not f)
        out.append(m)
    return out


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def module_of(node: onnx.NodeProto) -> str:
    """The deepest torch module that made the node, else a module-like form of the node name.

    The dynamo exporter writes name_scopes as a Python list literal: module paths from the root
    ('' ) down, then the FX node name (e.g. 'linear'), so the module is the second-to-last entry.
    """
    for p in node.metadata_props:
        if p.key == SCOPES_KEY:
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                break
            mods = [s for s in scopes[:-1] if s]
            return mods[-1] if mods else node.name
    # TorchScript exporter (ModelOpt): '/vit/encoder/layer.0/attention/query/MatMul'
    if node.name.startswith("/") and node.name.count("/") > 1:
        return node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")
    return node.name


# -- attention blocks --------------------------------------------------------------------------
# Ops allowed between BMM1 (Q@K^T) and Softmax, and between Softmax and BMM2 (P@V).
BETWEEN_BMM1_SOFTMAX = {"Mul", "Div", "Add", "Where", "Cast", "Reshape", "Identity",
                        "QuantizeLinear", "DequantizeLinear"}
BETWEEN_SOFTMAX_BMM2 = {"Where", "Cast", "Reshape", "Identity",
                        "QuantizeLinear", "DequantizeLinear"}
MAX_STEPS = 8  # longest op chain walked between the MatMuls and Softmax


@dataclass
class AttentionBlock:
    bmm1: onnx.NodeProto
    softmax: onnx.NodeProto
    bmm2: onnx.NodeProto
    probs_index: int  # which BMM2 input carries the Softmax output (V is the other)
    before: list[onnx.NodeProto]  # ops between BMM1 and Softmax
    after: list[onnx.NodeProto]  # ops between Softmax and BMM2


def find_attention_blocks(gi: GraphIndex) -> list[AttentionBlock]:
    """Every Softmax fed (through allowed ops) by a MatMul and feeding a MatMul."""
    blocks = []
    for sm in gi.nodes:
        if sm.op_type != "Softmax":
            continue
        back = _walk_back_to_matmul(gi, sm.input[0])
        bmm2, after = walk_forward(gi, sm.output[0], BETWEEN_SOFTMAX_BMM2, "MatMul")
        if back and bmm2 is not None:
            bmm1, before = back
            probs = after[-1].output[0] if after else sm.output[0]
            idx = list(bmm2.input).index(probs)
            blocks.append(AttentionBlock(bmm1, sm, bmm2, idx, before[::-1], after))
    return blocks


def _walk_back_to_matmul(gi: GraphIndex, start: str):
    queue, seen = deque([(start, [])]), set()
    while queue:  # breadth first: the nearest MatMul is Q@K^T, not one on a mask branch
        name, path = queue.popleft()
        n = gi.producer.get(name)
        if n is None or name in seen:
            continue
        seen.add(name)
        if n.op_type == "MatMul":
            return n, path
        if n.op_type not in BETWEEN_BMM1_SOFTMAX or len(path) >= MAX_STEPS:
            continue
        if n.op_type == "Mul":  # a scale: exactly one constant operand
            nxt = [i for i in n.input if not gi.is_const(i)]
            nxt = nxt if len(nxt) == 1 else []
        elif n.op_type == "Div":
            nxt = n.input[:1] if gi.is_const(n.input[1]) else []
        elif n.op_type in ("Add", "Where"):  # scores + mask; Where(cond, x, y)
            ins = n.input if n.op_type == "Add" else n.input[1:]
            nxt = [i for i in ins if not gi.is_const(i)]
        else:
            nxt = n.input[:1]
        queue.extend((i, path + [n]) for i in nxt)
    return None


def walk_forward(gi: GraphIndex, start: str, through: set[str], want: str):
    """The first node of type `want` reached from `start` through ops in `through`, and the path."""
    queue, seen = deque([(start, [])]), set()
    while queue:
        name, path = queue.popleft()
        if name in seen:
            continue
        seen.add(name)
        for c in gi.consumers.get(name, []):
            if c.op_type == want:
                return c, path
            if c.op_type in through and len(path) < MAX_STEPS:
                queue.append((c.output[0], path + [c]))
    return None, []
