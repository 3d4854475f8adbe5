"""Bad input to the Python API: models, example inputs, export options; and numerics that must not go silent."""
import math

import numpy as np
import pytest
import torch
import transformers

import fxq
from cli_runs import TINY_VIT, quantize_tiny
from fxq import validate
from fxq.capture.program import Inputs
from fxq.errors import InputError
from tiny_models import TinyAttention, inputs_for


def test_api_unknown_keyword_input():
    with pytest.raises(InputError, match=r"forward takes no keyword\(s\) \['pixel_values'\]; it accepts \['x', 'mask'\]"):
        fxq.quantize(TinyAttention().eval(), {"pixel_values": torch.randn(2, 8, 64)}, [], progress=False)


def test_api_unknown_tensor_keyword_to_hf_model():
    """HF forwards end in **kwargs (attention options): a tensor keyword they do not name is still refused."""
    m = transformers.ViTModel(transformers.ViTConfig(**TINY_VIT)).eval()
    x = {"pixel_values": torch.randn(2, 3, 32, 32), "input_ids": torch.zeros(2, 4, dtype=torch.long)}
    with pytest.raises(InputError, match=r"ViTModel.forward takes no keyword\(s\) \['input_ids'\]; it accepts "
                                         r"\['pixel_values', "):
        fxq.quantize(m, x, [x], progress=False)


def test_api_too_many_positional_inputs():
    x = torch.randn(2, 8, 64)
    with pytest.raises(InputError, match=r"takes 2 positional input\(s\) \(\['x', 'mask'\]\), got 3"):
        fxq.quantize(TinyAttention().eval(), (x, x, x), [], progress=False)


def test_api_input_given_twice():
    x = torch.randn(2, 8, 64)
    with pytest.raises(InputError, match=r"\['x'\] given both by position and by keyword"):
        validate.example_inputs(TinyAttention(), Inputs((x,), {"x": x}))


def test_api_example_without_tensors():
    with pytest.raises(InputError, match="hold no tensors"):
        fxq.quantize(TinyAttention().eval(), (), [], progress=False)


def test_api_meta_device_model():
    with torch.device("meta"):
        m = TinyAttention()
    with pytest.raises(InputError, match="meta device .*'norm.weight'"):
        fxq.quantize(m, inputs_for("mul_after"), [], progress=False)


@pytest.mark.parametrize("value,words", [(float("nan"), "1 NaN and 0 inf"), (float("inf"), "0 NaN and 1 inf")])
def test_api_nonfinite_weight_names_the_parameter(value, words):
    m = TinyAttention().eval()
    with torch.no_grad():
        m.fc1.weight[3, 4] = value
    with pytest.raises(InputError, match=f"parameter 'fc1.weight' holds {words}"):
        quantize_tiny(m)


def test_api_export_opset_above_exporter(calibrated, tmp_path):
    with pytest.raises(InputError, match="opset 24 is not supported.*up to opset 23"):
        calibrated.export_onnx(tmp_path / "m.onnx", opset=24)
    with pytest.raises(InputError, match="opset must be a whole number"):
        calibrated.export_onnx(tmp_path / "m.onnx", opset="21")


def test_api_export_dtype_given_as_string(calibrated, tmp_path):
    with pytest.raises(ValueError, match="dtype must be torch.float16, torch.bfloat16 or torch.float32"):
        calibrated.export_onnx(tmp_path / "m.onnx", dtype="fp16")


def test_api_export_path_parent_is_a_file(calibrated, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        calibrated.export_onnx(tmp_path / "f" / "m.onnx")


def test_compare_says_nonfinite_not_sqnr_inf():
    from fxq.verify import compare

    ref = torch.randn(100)
    out = ref.clone()
    out[3] = float("nan")
    m = compare(ref, out)
    assert m["nonfinite"] == 1 and math.isnan(m["sqnr_db"]) and math.isnan(m["cosine"])
    assert compare(ref, ref)["sqnr_db"] == float("inf") and "nonfinite" not in compare(ref, ref)  # exact match
    assert compare(out, ref)["reference_nonfinite"] == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_round_scale_never_zero_or_subnormal(dtype):
    from fxq.conversion.ops import round_scale

    tiny = torch.finfo(dtype).tiny
    for scale in (1e-45, 1e-30, 1e-9, tiny / 3):
        s = round_scale(scale, dtype)
        assert s.dtype == dtype and s.item() >= tiny


class TinyMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_tiny_weights_fp16_onnx_scales_clamped_not_zero(tmp_path):
    """amax 1e-9: amax/448 underflows to 0 in FP16. Before, the ONNX got scale 0 and NaN weights; later the scale
    was clamped in the graph but the codes were made at 4e-13, so the FP16 weight grew 1.5e8x (finite, wrong)."""
    import onnx
    from onnx import numpy_helper

    from fxq.conversion.ops import round_scale
    import warnings

    from fxq.verify import compare, first_output, run_onnx
    from onnx_post.checker import check_model

    m = TinyMLP().eval()
    with torch.no_grad():
        m.fc1.weight.mul_(1e-9)
    x = torch.randn(4, 32)
    qm = fxq.quantize(m, x, [x], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the weight's scale is one FP16 stores: no "below" warning
        res = qm.export_onnx(tmp_path / "m.onnx", dtype=torch.float16)
    rep = check_model(res.path)
    assert rep.numeric == [] and rep.ready, rep.format_table()
    (y,) = run_onnx(res.path, x, torch.float16)
    assert np.isfinite(y).all()
    # The same weights as the fake-quant model (fc1's codes are all 0 now), optimised or not. (onnxruntime's own
    # WeightBiasQuantization gave 0.947 here: fc1's bias / (x_scale * w_scale) overflows float16; onnx_session
    # turns it off, tests/test_runtime.py.)
    (y_plain,) = run_onnx(res.path, x, torch.float16, optimize=False)
    assert compare(first_output(qm(x)), y_plain)["cosine"] > 0.9999
    assert compare(first_output(qm(x)), y)["cosine"] > 0.9999
    # The ONNX holds exactly the torch op's scale (fxq.conversion.ops.round_scale): FP16's smallest normal.
    model = onnx.load(str(res.path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weight_scales = sorted(float(inits[n.input[1]]) for n in model.graph.node
                           if n.op_type == "DequantizeLinear" and n.input[0] in inits)
    expected = float(round_scale(qm.amax["fc1:linear.weight"] / 448, torch.float16))
    assert len(weight_scales) == 2 and weight_scales[0] == expected == float(np.finfo(np.float16).tiny)

