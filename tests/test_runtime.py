"""onnxruntime's ReluQuantRewrite is wrong for signed FP8; onnx_post.runtime.onnx_session avoids it, and the
checker says so (a note, not a readiness failure) wherever a Relu feeds a QuantizeLinear."""
import numpy as np
import pytest
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_post import fp8
from onnx_post.check_cli import main
from onnx_post.checker import check_model
from onnx_post.runtime import WRONG_ON_FP8, onnx_session
from tests.onnx_graphs import fp8_zero, model

F32 = TensorProto.FLOAT


def relu_mlp():
    """x [32, 64] -> Q/DQ -> MatMul(W1 FP8) -> Relu -> Q/DQ -> MatMul(W2 FP8) -> y [32, 64]: fxq's two-Linear MLP."""
    rng = np.random.default_rng(0)
    inits = [fp8_zero()]
    nodes = []
    x = "x"
    for i in (1, 2):
        w = rng.standard_normal((64, 64)).astype(np.float32) * 0.2
        ws = fp8.scale_from_amax(np.abs(w).max())
        inits += [numpy_helper.from_array(fp8.quantize(w, ws), f"w{i}"),
                  numpy_helper.from_array(np.array(ws, np.float32), f"ws{i}"),
                  numpy_helper.from_array(np.array(fp8.scale_from_amax(4.0), np.float32), f"xs{i}")]
        nodes += [helper.make_node("QuantizeLinear", [x, f"xs{i}", "zp"], [f"q{i}"]),
                  helper.make_node("DequantizeLinear", [f"q{i}", f"xs{i}", "zp"], [f"d{i}"]),
                  helper.make_node("DequantizeLinear", [f"w{i}", f"ws{i}", "zp"], [f"wd{i}"]),
                  helper.make_node("MatMul", [f"d{i}", f"wd{i}"], [f"h{i}" if i == 1 else "y"], name=f"fc{i}")]
        if i == 1:
            nodes.append(helper.make_node("Relu", ["h1"], ["r1"], name="relu"))
            x = "r1"
    return model(nodes, [("x", F32, [32, 64])], [("y", F32, [32, 64])], inits)


def _cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_default_session_drops_the_relu_and_onnx_session_does_not():
    m = relu_mlp()
    x = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(m.SerializeToString(), plain, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    default = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    fixed = onnx_session(m.SerializeToString()).run(None, {"x": x})[0]
    assert _cosine(default, reference) < 0.8  # the Relu is gone: negatives reach fc2
    assert np.array_equal(fixed, reference)
    # and the reference is what the graph means: fp8 module math in numpy
    h = np.maximum(fp8.quantize_dequantize(x, fp8.scale_from_amax(4.0)) @ _weight(m, 1), 0)
    y = fp8.quantize_dequantize(h.astype(np.float32), fp8.scale_from_amax(4.0)) @ _weight(m, 2)
    assert _cosine(y, reference) > 0.99999


def _weight(m, i):
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    return fp8.dequantize(inits[f"w{i}"], inits[f"ws{i}"])


def test_checker_notes_relu_before_quantize_without_failing_readiness(tmp_path, capsys):
    m = relu_mlp()
    rep = check_model(m)
    assert rep.ready and len(rep.notes) == 1
    assert "1 Relu -> QuantizeLinear" in rep.notes[0] and f"disabled_optimizers={WRONG_ON_FP8!r}" in rep.notes[0]
    p = tmp_path / "m.onnx"
    p.write_bytes(m.SerializeToString())
    assert main([str(p), "--strict"]) == 0
    assert "ReluQuantRewrite" in capsys.readouterr().out
    m.graph.node.remove([n for n in m.graph.node if n.op_type == "Relu"][0])
    m.graph.node[4].input[0] = "h1"  # fc2's QuantizeLinear reads h1 directly: no note
    assert check_model(m).notes == []


def test_onnx_session_runs_an_fp8_transformer_export_as_the_unoptimised_graph(tmp_path):
    """A 3-D DQ(FP8) -> MatMul (every Linear of a transformer export): onnxruntime 1.30's QDQ selector rewrote it into
    an integer-only MatMulIntegerToFloat and refused to load the file; onnx_session must load it and compute what
    the graph says (the ORT_DISABLE_ALL session; the optimised one re-lays out the patch conv, float noise that can
    flip an FP8 code)."""
    import torch
    import transformers

    import fxq

    cfg = transformers.Dinov2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                                    image_size=28, patch_size=14)
    torch.manual_seed(0)
    x = {"pixel_values": torch.randn(2, 3, 28, 28)}
    qm = fxq.quantize(transformers.Dinov2Model(cfg).eval(), x, [x], progress=False)
    path = tmp_path / "dinov2.onnx"
    qm.export_onnx(path, dtype=torch.float16)
    feed = {"pixel_values": x["pixel_values"].half().numpy()}
    assert "QDQSelectorActionTransformer" in WRONG_ON_FP8
    ours = onnx_session(path).run(None, feed)[0]
    plain = onnx_session(path, optimize=False).run(None, feed)[0]
    assert np.isfinite(ours).all() and _cosine(ours, plain) > 0.999


def _session_allowing(rewrite: str, path: str):
    """onnx_session's session but with onnxruntime's `rewrite` left on: what a user's default session does there."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=[o for o in WRONG_ON_FP8 if o != rewrite])


def test_onnx_session_keeps_fp16_conv_and_gemm_biases(tmp_path):
    """onnxruntime's WeightBiasQuantization rewrites a Conv's or Gemm's float bias as int32 at x_scale * w_scale; in an
    FP16 graph that ratio goes through float16 and overflows (FP8 scales multiply to ~1e-6): wrong biases, in silence.
    onnx_session must compute what the unoptimised graph computes."""
    import torch

    import fxq

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.Conv2d(32, 32, 3, padding=1)
            self.fc1, self.fc2 = torch.nn.Linear(32, 32), torch.nn.Linear(32, 16)  # rank-2: Gemms in ONNX

        def forward(self, x):  # the rewrite takes DQ -> Conv/Gemm -> (Relu) -> QuantizeLinear: conv1 and fc1
            h = torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3))
            return self.fc2(torch.relu(self.fc1(h)))

    net = Net().eval()
    with torch.no_grad():
        for layer in (net.conv1, net.conv2, net.fc1, net.fc2):
            layer.bias.normal_(0, 0.5)  # trained-model bias sizes: bias / (x_scale * w_scale) > 65504
    x = torch.randn(4, 16, 12, 12)
    path = str(fxq.quantize(net, x, [x], progress=False).export_onnx(tmp_path / "net.onnx", dtype=torch.float16).path)
    feed = {onnx_session(path).get_inputs()[0].name: x.numpy().astype(np.float16)}
    unoptimised = onnx_session(path, optimize=False).run(None, feed)[0].astype(np.float32)
    fixed = onnx_session(path).run(None, feed)[0].astype(np.float32)
    wrong = _session_allowing("WeightBiasQuantization", path).run(None, feed)[0].astype(np.float32)
    assert _cosine(fixed, unoptimised) > 0.9999
    assert _cosine(wrong, unoptimised) < 0.999  # the rewrite's damage, so this test fails without the fix
    notes = check_model(path).notes  # and the checker warns whoever runs the file in their own session
    assert len(notes) == 2 and notes[1].startswith("2 Conv/ConvTranspose/Gemm with a bias on a path to a Quantize")
    assert "WeightBiasQuantization" in notes[1] and f"disabled_optimizers={WRONG_ON_FP8!r}" in notes[1]


def test_onnx_session_loads_a_clip_before_quantize_and_computes_it(tmp_path):
    """ReLU6 / Hardtanh export as Clip; onnxruntime's ClipQuantRewrite folds a Clip into the QuantizeLinear after it,
    assuming an integer zero point: on FP8 the session failed to load. onnx_session must load it and compute what the
    unoptimised graph computes; the checker notes the conv whose bias WeightBiasQuantization would take (Clip path)."""
    import torch

    import fxq

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU6(),
                              torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.Hardtanh(-1, 1),
                              torch.nn.Conv2d(32, 16, 1)).eval()  # channels of 16: every conv FP8
    x = torch.randn(2, 16, 8, 8)
    path = str(fxq.quantize(net, x, [x], progress=False).export_onnx(tmp_path / "r6.onnx", dtype=torch.float32).path)
    feed = {onnx_session(path).get_inputs()[0].name: x.numpy()}
    got = onnx_session(path).run(None, feed)[0]
    want = onnx_session(path, optimize=False).run(None, feed)[0]
    assert _cosine(got, want) > 0.99999
    with pytest.raises(Exception, match="zero_point"):  # what onnx_session avoids
        _session_allowing("ClipQuantRewrite", path)
    notes = check_model(path).notes
    assert any(n.startswith("2 Conv/ConvTranspose/Gemm with a bias on a path") for n in notes), notes
