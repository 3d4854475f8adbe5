"""benchmarks/onnx_convnet.py, the loader behind results/accuracy_conv.md: an ONNX conv net replayed in torch
matches onnxruntime on the same file, its convs are nn.Conv2d fxq puts FP8 on, and what it cannot replay is an error."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import fxq
from fxq.accuracy.groups import fp8_convs
from onnx_graphs import const, model as onnx_model, run

_spec = importlib.util.spec_from_file_location(
    "fxq_bench_onnx_convnet", Path(__file__).resolve().parents[1] / "benchmarks" / "onnx_convnet.py")
convnet = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convnet)


def _c2f_file(path: Path) -> Path:
    """YOLOv8's spellings at toy size: Conv, SiLU as Sigmoid * Mul, Split, a residual Add, Concat, SPPF's MaxPool."""
    rng = np.random.default_rng(0)

    def w(*shape):
        return (0.2 * rng.standard_normal(shape)).astype(np.float32)

    inits = [const("stem.conv.weight", w(32, 16, 3, 3)), const("stem.conv.bias", w(32)),
             const("m.cv1.conv.weight", w(16, 16, 3, 3)), const("m.cv1.conv.bias", w(16)),
             const("cv2.conv.weight", w(32, 48, 1, 1)), const("cv2.conv.bias", w(32)),
             const("split", np.array([16, 16], np.int64))]
    nodes = [
        helper.make_node("Conv", ["images", "stem.conv.weight", "stem.conv.bias"], ["c0"], pads=[1, 1, 1, 1],
                         strides=[2, 2], kernel_shape=[3, 3]),
        helper.make_node("Sigmoid", ["c0"], ["s0"]), helper.make_node("Mul", ["c0", "s0"], ["a0"]),
        helper.make_node("Split", ["a0", "split"], ["p0", "p1"], axis=1),
        helper.make_node("Conv", ["p1", "m.cv1.conv.weight", "m.cv1.conv.bias"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["p1", "c1"], ["r1"]),
        helper.make_node("Concat", ["p0", "p1", "r1"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "cv2.conv.weight", "cv2.conv.bias"], ["c2"]),
        helper.make_node("MaxPool", ["c2"], ["feat"], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["feat"], ["head"]),  # past the features read: never replayed
    ]
    m = onnx_model(nodes, [("images", TensorProto.FLOAT, ["b", 16, 16, 16])],
                   [("cat", TensorProto.FLOAT, ["b", 48, 8, 8]), ("feat", TensorProto.FLOAT, ["b", 32, 8, 8]),
                    ("head", TensorProto.FLOAT, ["b", 32, 8, 8])], inits)
    onnx.save(m, path)
    return path


def test_replay_matches_onnxruntime_and_convs_go_fp8(tmp_path):
    path = _c2f_file(tmp_path / "c2f.onnx")
    net = convnet.OnnxConvNet(path, outputs=("cat", "feat")).eval()
    assert [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)] == ["stem.conv", "m.cv1.conv", "cv2.conv"]
    assert [s[0] for s in net.steps].count("MaxPool") == 1 and "Relu" not in [s[0] for s in net.steps]
    x = torch.rand(2, 16, 16, 16)
    cat, feat, _ = run(onnx.load(path), {"images": x.numpy()})
    ref = torch.cat([torch.from_numpy(cat).mean((2, 3)), torch.from_numpy(feat).mean((2, 3))], -1)
    with torch.no_grad():
        got = net(x)
    assert got.shape == (2, 48 + 32) and torch.allclose(got, ref, atol=1e-5)

    qm = fxq.quantize(net, {"images": x}, [{"images": torch.rand(4, 16, 16, 16)}], progress=False)
    assert qm.placement.convs == 3 and len(fp8_convs(qm.placement)) == 3  # 16/32/48 channels: all eligible


def test_what_it_cannot_replay_is_one_clear_error(tmp_path):
    path = _c2f_file(tmp_path / "c2f.onnx")
    with pytest.raises(ValueError, match=r"op Relu .* is not replayed; fix: pick outputs"):
        convnet.OnnxConvNet(path, outputs=("head",))
    with pytest.raises(ValueError, match=r"no node computes \['nowhere'\]"):
        convnet.OnnxConvNet(path, outputs=("feat", "nowhere"))
