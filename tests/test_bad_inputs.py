"""Bad input, one clear error: the CLI (exit 2, one line on stderr), the Python API (exception type and
key words), and the few silent or unsafe cases fixed for issue 10. README.md's bad-input table names a test here
for each row; test_doc_table_names_real_tests keeps that table true.
"""
from __future__ import annotations

import ast
import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import fxq
from fxq import validate
from fxq.capture import Inputs
from fxq.cli import main
from fxq.errors import CalibrationError, ConfigError, InputError
from tiny_models import TinyAttention, inputs_for

ROOT = Path(__file__).parent.parent
TINY_VIT = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128, image_size=32,
                patch_size=8)


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("vit") / "model"
    transformers.ViTModel(transformers.ViTConfig(**TINY_VIT)).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    from fxq.zoo import load_minilm

    d = tmp_path_factory.mktemp("bert") / "model"
    _, tokenizer = load_minilm()
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                                  vocab_size=tokenizer.vocab_size, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def cli_error(capsys, argv, *words, code=2):
    """Run the CLI, expect exit `code` and exactly one stderr line holding every word."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("fxq quantize: error:") and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def quantize_argv(model, tmp_path, *extra):
    return ["quantize", str(model), "--out", str(tmp_path / "out.onnx"), "--quiet", *extra]


# -- CLI: options checked before anything slow ----------------------------------------------------
@pytest.mark.parametrize("opset,words", [("24", ["opset 24 is not supported", "up to opset 23"]),
                                         ("17", ["opset 17", "opset >= 19"])])
def test_cli_opset_out_of_range(vit_folder, tmp_path, capsys, opset, words):
    cli_error(capsys, quantize_argv(vit_folder, tmp_path, "--calib-synthetic", "2", "--opset", opset), *words)


def test_max_opset_is_what_torch_onnx_exports():
    from torch.onnx._constants import ONNX_MAX_OPSET

    assert validate.max_opset() == min(ONNX_MAX_OPSET, 23) == 23  # torch 2.13 / onnxscript 0.7


@pytest.mark.parametrize("n", ["0", "-5"])
def test_cli_seq_len_not_positive(vit_folder, tmp_path, capsys, n):
    cli_error(capsys, quantize_argv(vit_folder, tmp_path, "--calib-synthetic", "2", "--seq-len", n),
              "--seq-len must be a positive whole number")


def test_cli_seq_len_above_max_positions(bert_folder, tmp_path, capsys):
    cli_error(capsys, quantize_argv(bert_folder, tmp_path, "--calib-synthetic", "2", "--seq-len", "65"),
              "--seq-len 65 exceeds", "max_position_embeddings (64)", "--seq-len 64")


def test_cli_out_parent_is_a_file(vit_folder, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    argv = ["quantize", "no/such/model", "--out", str(tmp_path / "afile" / "m.onnx"), "--quiet"]
    cli_error(capsys, argv, "--out", "is a file, not a folder")  # before the model is even looked up


def test_cli_save_calib_parent_is_a_file(vit_folder, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    cli_error(capsys, quantize_argv(vit_folder, tmp_path, "--calib-synthetic", "2", "--save-calib",
                                    str(tmp_path / "afile" / "c.json")), "--save-calib", "is a file")


def test_cli_out_not_writable(vit_folder, tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through chmod; /proc refuses new files even to root
        target = Path("/proc/fxq-not-writable.onnx")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "m.onnx"
    argv = ["quantize", str(vit_folder), "--out", str(target), "--calib-synthetic", "2", "--quiet"]
    cli_error(capsys, argv, "cannot be written", "fix: choose a folder you can write to")


def test_cli_batch_size_zero(vit_folder, tmp_path, capsys):
    cli_error(capsys, quantize_argv(vit_folder, tmp_path, "--calib-synthetic", "2", "--batch-size", "0"),
              "--batch-size must be at least 1")


def test_cli_save_calib_same_as_out(vit_folder, tmp_path, capsys):
    cli_error(capsys, quantize_argv(vit_folder, tmp_path, "--calib-synthetic", "2", "--save-calib",
                                    str(tmp_path / "out.onnx")), "--save-calib and --out are the same file")


# -- CLI: config files ------------------------------------------------------------------------------
@pytest.mark.parametrize("content,words", [
    ("[1, 2]", ["must be a JSON object", "got list"]),
    ('{"overrides": [{"roles": {}}]}', ["overrides[0]", "missing 'module'"]),
    ('{"overrides": {"module": "x"}}', ["'overrides' must be a list"]),
    ('{"min_gemm_dim": "16"}', ["'min_gemm_dim' must be a whole number", "str"]),
    ('{"min_gemm_dim": true}', ["'min_gemm_dim' must be a whole number", "bool"]),
    ('{"roles": {"linear.input": {"calibrator": 3}}}', ["roles.linear.input.calibrator", "a string"]),
    ('{"roles": {"linear.input": {"percentil": 99}}}', ["unknown key 'percentil'"]),
    ('{"roles": {"linear.inputs": null}}', ["unknown role 'linear.inputs'", "linear.input"]),
    ("\x00\x01garbage", ["not valid JSON"]),
])
def test_cli_bad_config_file(vit_folder, tmp_path, capsys, content, words):
    (tmp_path / "c.json").write_text(content)
    cli_error(capsys, quantize_argv(vit_folder, tmp_path, "--calib-synthetic", "2", "--config",
                                    str(tmp_path / "c.json")), "config", *words)


def test_cli_missing_config_file(vit_folder, tmp_path, capsys):
    cli_error(capsys, quantize_argv(vit_folder, tmp_path, "--calib-synthetic", "2", "--config",
                                    str(tmp_path / "none.json")), "does not exist")


# -- CLI: calibration inputs ------------------------------------------------------------------------
@pytest.mark.parametrize("content", [bytes(range(256)) * 8, b"fine line\nthen \x00\x00 nul bytes\n",
                                     "caf\u00e9\n".encode("latin-1")])
def test_cli_binary_calibration_text(bert_folder, tmp_path, capsys, content):
    (tmp_path / "t.txt").write_bytes(content)
    cli_error(capsys, quantize_argv(bert_folder, tmp_path, "--calib-text", str(tmp_path / "t.txt")),
              "is not UTF-8 text", "binary data at byte")


def calib_file(tmp_path, amax=None, **doc):
    p = tmp_path / "calib.json"
    p.write_text(json.dumps({"version": 1, "batches": 1, "amax": {"layer.0:linear.input": 1.0} if amax is None
                             else amax, **doc}))
    return p


@pytest.mark.parametrize("value,words", [(float("nan"), ["is nan", "must be finite"]),
                                         (float("inf"), ["is inf"]),
                                         (-1.0, ["is -1.0", ">= 0"]),
                                         (True, ["is True, not a number"]),
                                         ("1.0", ["is '1.0', not a number"]),
                                         (None, ["is None, not a number"])])
def test_cli_bad_amax_in_calibration_file(vit_folder, tmp_path, capsys, value, words):
    p = calib_file(tmp_path, {"vit.layers.0:linear.input": value})
    cli_error(capsys, quantize_argv(vit_folder, tmp_path, "--load-calib", str(p)),
              "calibration file", "'vit.layers.0:linear.input'", *words)


@pytest.mark.parametrize("content,words", [("[]", ["not an fxq calibration", "list"]),
                                           ('{"version": 2, "amax": {}}', ["not an fxq v1 calibration file"]),
                                           ('{"version": 1}', ["not an fxq v1 calibration file"]),
                                           ('{"version": 1, "amax": [1.0]}', ["'amax' must map"]),
                                           ('{"version": 1, "amax": {}, "batches": "x"}', ["'batches'"]),
                                           ("\xff\xfe{", ["not valid JSON"])])
def test_cli_malformed_calibration_file(vit_folder, tmp_path, capsys, content, words):
    (tmp_path / "c.json").write_text(content, encoding="latin-1")
    cli_error(capsys, quantize_argv(vit_folder, tmp_path, "--load-calib", str(tmp_path / "c.json")), *words)


def test_cli_corrupt_image_in_folder(vit_folder, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "a.png")
    (images / "b.jpg").write_bytes(b"not a jpeg at all")
    cli_error(capsys, quantize_argv(vit_folder, tmp_path, "--calib-images", str(images)),
              "calibration image", "b.jpg", "cannot be read")


# -- CLI: model folders ---------------------------------------------------------------------------
class _Trap:
    """Unpickling this creates a marker file: proof that something ran pickle code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_cli_pickle_weights_refused_never_unpickled(tmp_path, capsys):
    d = tmp_path / "model"
    transformers.ViTConfig(**TINY_VIT).save_pretrained(d)
    marker = tmp_path / "unpickled"
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(str(marker))))
    cli_error(capsys, quantize_argv(d, tmp_path, "--calib-synthetic", "2"), "pickle weights", "pytorch_model.bin",
              "convert to safetensors")
    assert not marker.exists()


def test_cli_truncated_safetensors(vit_folder, tmp_path, capsys):
    import shutil

    d = tmp_path / "model"
    shutil.copytree(vit_folder, d)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    cli_error(capsys, quantize_argv(d, tmp_path, "--calib-synthetic", "2"), "model.safetensors is truncated",
              "download or save the model again")


@pytest.mark.parametrize("content", [b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
                                     b"\x02\x00\x00\x00\x00\x00\x00\x00[]", b"\xff" * 8 + b"{}", b"abc"])
def test_cli_garbage_safetensors(tmp_path, capsys, content):
    d = tmp_path / "model"
    transformers.ViTConfig(**TINY_VIT).save_pretrained(d)
    (d / "model.safetensors").write_bytes(content)
    cli_error(capsys, quantize_argv(d, tmp_path, "--calib-synthetic", "2"), "not a complete safetensors file")


def test_cli_model_folder_config_not_json(vit_folder, tmp_path, capsys):
    import shutil

    d = tmp_path / "model"
    shutil.copytree(vit_folder, d)
    (d / "config.json").write_text("{not json")
    cli_error(capsys, quantize_argv(d, tmp_path, "--calib-synthetic", "2"), "config.json", "not valid JSON", "fix: save the model again")


def test_cli_nan_weights_in_model_folder(tmp_path, capsys):
    d = tmp_path / "model"
    model = transformers.ViTModel(transformers.ViTConfig(**TINY_VIT))
    with torch.no_grad():
        model.layers[0].attention.q_proj.weight[0, 0] = float("nan")
    model.save_pretrained(d)
    cli_error(capsys, quantize_argv(d, tmp_path, "--calib-synthetic", "2"),
              "parameter 'layers.0.attention.q_proj.weight' holds 1 NaN")
    assert not (tmp_path / "out.onnx").exists()


def test_cli_folder_without_weights(tmp_path, capsys):
    d = tmp_path / "model"
    transformers.ViTConfig(**TINY_VIT).save_pretrained(d)
    cli_error(capsys, quantize_argv(d, tmp_path, "--calib-synthetic", "2"), "has no model weights")


# -- API: the same checks ---------------------------------------------------------------------------
def _quantize(model=None, **kw):
    model = model or TinyAttention().eval()
    kw.setdefault("calib_data", [inputs_for("mul_after", 2)])
    return fxq.quantize(model, inputs_for("mul_after"), progress=False, **kw)


@pytest.fixture(scope="module")
def calibrated():
    torch.manual_seed(0)
    return _quantize()


def _doc(qm, **amax):
    return {"version": 1, "batches": 1, "amax": {**qm.amax, **amax}}


@pytest.mark.parametrize("value,words", [(float("nan"), "is nan"), (-2.0, "is -2.0"), (True, "not a number"),
                                         ("0.5", "not a number"), (float("-inf"), "is -inf")])
def test_api_calibration_dict_refused_like_a_file(calibrated, value, words):
    key = next(k for k in calibrated.amax if k.endswith("linear.input"))
    with pytest.raises(CalibrationError, match=re.escape(f"amax for '{key}'") + ".*" + re.escape(words)):
        _quantize(TinyAttention().eval(), calib_data=None, calibration=_doc(calibrated, **{key: value}))


def test_cli_and_api_give_the_same_error(vit_folder, tmp_path, capsys):
    """One validation layer: the same bad file gives the very same message from the CLI and the API."""
    p = calib_file(tmp_path, {"layer.0:linear.input": float("nan")})
    with pytest.raises(CalibrationError) as api:
        _quantize(calib_data=None, calibration=p)
    err = cli_error(capsys, quantize_argv(vit_folder, tmp_path, "--load-calib", str(p)))
    assert err.strip() == f"fxq quantize: error: {api.value}"
    (tmp_path / "c.json").write_text("[]")
    with pytest.raises(ConfigError) as api:
        validate.config_file(tmp_path / "c.json")
    err = cli_error(capsys, quantize_argv(vit_folder, tmp_path, "--calib-synthetic", "2", "--config",
                                          str(tmp_path / "c.json")))
    assert err.strip() == f"fxq quantize: error: {api.value}"


def test_api_calibration_dict_needs_version(calibrated):
    with pytest.raises(CalibrationError, match="calibration= dict is not an fxq v1 calibration"):
        _quantize(calib_data=None, calibration={"amax": dict(calibrated.amax)})


def test_api_zero_amax_accepted_as_dead_tensor(calibrated):
    key = next(k for k in calibrated.amax if k.endswith("linear.input"))
    qm = _quantize(calib_data=None, calibration=_doc(calibrated, **{key: 0}))
    assert qm.amax[key] == 0.0 and torch.isfinite(qm(*inputs_for("mul_after"))).all()


def test_api_save_calibration_refuses_nan(calibrated, tmp_path):
    key = next(iter(calibrated.amax))
    from fxq.calib_io import save_calibration

    with pytest.raises(CalibrationError, match=f"amax for '{re.escape(key)}' is nan"):
        save_calibration(tmp_path / "c.json", {key: float("nan")}, "M", {}, 1)
    assert not (tmp_path / "c.json").exists()


def test_api_calib_data_and_calibration_both(calibrated):
    with pytest.raises(InputError, match="both calib_data and calibration= were given"):
        _quantize(calibration=_doc(calibrated))


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
        _quantize(m)


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


@pytest.mark.parametrize("doc,error,words", [
    ([], ConfigError, "must be a JSON object"),
    ({"overrides": [{"module": "norm"}]}, ConfigError, r"overrides\[0\]' is missing 'roles'"),
    ({"overrides": [{"module": 3, "roles": {}}]}, ConfigError, r"overrides\[0\].module' must be a string"),
    ({"roles": []}, ConfigError, "'roles' must be an object"),
    ({"head_size_min": 1.5}, ConfigError, "'head_size_min' must be a whole number"),
    ({"min_gem_dim": 3}, ConfigError, "unknown config keys"),
    ({"version": "1"}, ConfigError, "'version' must be a whole number"),
])
def test_api_config_from_dict(doc, error, words):
    with pytest.raises(error, match=words):
        fxq.QuantConfig.from_dict(doc)


def test_config_round_trip_still_works():
    cfg = fxq.preset("tensorrt-fp8-percentile")
    assert fxq.QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# -- silent or unsafe cases fixed ---------------------------------------------------------------
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
    from fxq.ops import round_scale

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
    """amax 1e-9: amax/448 underflows to 0 in FP16. Before, the ONNX got scale 0 and NaN weights."""
    import onnx
    from onnx import numpy_helper

    from fxq.ops import round_scale
    from fxq.verify import run_onnx
    from onnx_post.checker import check_model

    m = TinyMLP().eval()
    with torch.no_grad():
        m.fc1.weight.mul_(1e-9)
    x = torch.randn(4, 32)
    qm = fxq.quantize(m, x, [x], progress=False)
    res = qm.export_onnx(tmp_path / "m.onnx", dtype=torch.float16)
    rep = check_model(res.path)
    assert rep.numeric == [] and rep.ready, rep.format_table()
    (y,) = run_onnx(res.path, x, torch.float16)
    assert np.isfinite(y).all()
    # The ONNX holds exactly the torch op's scale (fxq.ops.round_scale): clamped to FP16's smallest normal.
    model = onnx.load(str(res.path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weight_scales = sorted(float(inits[n.input[1]]) for n in model.graph.node
                           if n.op_type == "DequantizeLinear" and n.input[0] in inits)
    expected = float(round_scale(qm.amax["fc1:linear.weight"] / 448, torch.float16))
    assert len(weight_scales) == 2 and weight_scales[0] == expected == float(np.finfo(np.float16).tiny)


def test_cli_nonfinite_fp8_output_exits_1(tmp_path, capsys):
    """A bias past FP16's range: FP32 (and the FP32 fake-quant model) is fine, the FP16 ONNX computes NaN."""
    d = tmp_path / "model"
    model = transformers.ViTModel(transformers.ViTConfig(**TINY_VIT))
    with torch.no_grad():
        model.layers[0].mlp.fc2.bias.fill_(1e5)  # inf in FP16; the final LayerNorm turns it into NaN
    model.save_pretrained(d)
    rc = main(quantize_argv(d, tmp_path, "--calib-synthetic", "2"))
    out, err = capsys.readouterr()
    assert rc == 1, out + err
    assert "non-finite: FP8 output has" in out and "sqnr_db inf" not in out
    assert "output is non-finite (NaN/inf)" in err and "fxq check" in err


def test_16bit_grey_png_not_clipped_to_white(tmp_path):
    from fxq.sources import read_images

    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    (img,) = read_images(tmp_path)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert img.min() == 0 and img.max() == 255 and abs(img.mean() - 127.5) < 2  # a ramp, not white


def test_photos_of_different_sizes(tmp_path):
    from fxq.sources import _vision_source, read_images

    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 48), (64, 32), (17, 90)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(tmp_path / "grey.png")
    images = read_images(tmp_path)
    src = _vision_source("v", None, 32, [0.5] * 3, [0.5] * 3)
    x = src.encode(images)["pixel_values"]
    assert x.shape == (4, 3, 32, 32) and torch.isfinite(x).all()


# -- atomic, signal-safe writes ---------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import importlib.util, sys, time
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("atomic", sys.argv[1])
    atomic = importlib.util.module_from_spec(spec); spec.loader.exec_module(atomic)
    target = Path(sys.argv[2])
    with atomic.staging(target) as tmp:
        with open(tmp / target.name, "wb") as f:
            for i in range(400):              # up to 400 MiB if nobody stops us
                f.write(b"x" * 2**20)
                f.flush()
                if i == 8:
                    print("writing", flush=True)
                time.sleep(0.01)
    print("done", flush=True)
""")


def _interrupt_child(argv, target, sig, ready=b"writing"):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    line = p.stdout.readline()
    assert line.strip() == ready, line + p.stderr.read()
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    left = sorted(x.name for x in target.parent.iterdir() if x.name != target.name)
    return p.returncode, left, out, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_write_leaves_no_temp_and_keeps_old_target(tmp_path, sig):
    target = tmp_path / "big.bin"
    target.write_text("old contents")
    rc, left, out, err = _interrupt_child([sys.executable, "-c", WRITER, str(ROOT / "fxq/atomic.py"), str(target)],
                                          target, sig)
    assert rc == -sig, err  # died of the signal, as without the handler
    assert left == [] and target.read_text() == "old contents"
    assert b"done" not in out


def test_sigterm_during_onnx_save_keeps_old_file(tmp_path):
    """The real ONNX writer: SIGTERM after the staged file is written, before it is renamed."""
    target = tmp_path / "m.onnx"
    target.write_text("old model")
    code = textwrap.dedent("""
        import sys, time, onnx
        from onnx import helper, TensorProto
        import fxq.onnx_export as ex
        def slow_check(*a, **k):
            print("writing", flush=True); time.sleep(30)
        ex.onnx.checker.check_model = slow_check
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        ex._save(helper.make_model(g), __import__("pathlib").Path(sys.argv[1]))
    """)
    rc, left, _, err = _interrupt_child([sys.executable, "-c", code, str(target)], target, signal.SIGTERM)
    assert rc == -signal.SIGTERM, err
    assert left == [] and target.read_text() == "old model"


def test_atomic_write_replaces_and_removes_stale_companion(tmp_path):
    from fxq.atomic import staging, write_text

    target = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.data").write_text("stale weights")
    with staging(target, companions=["m.onnx.data"]) as tmp:
        (tmp / "m.onnx").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"] and target.read_text() == "new"
    write_text(tmp_path / "c.json", "{}")
    assert (tmp_path / "c.json").read_text() == "{}" and len(list(tmp_path.iterdir())) == 2


def test_failed_write_keeps_old_target(tmp_path):
    from fxq.atomic import staging

    target = tmp_path / "m.onnx"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with staging(target) as tmp:
            (tmp / "m.onnx").write_text("half")
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"] and target.read_text() == "old"


# -- the docs table ---------------------------------------------------------------------------------
def test_doc_table_names_real_tests():
    doc = (ROOT / "README.md").read_text()
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", doc)
    assert len(named) >= 30
    defined = {}
    for file in {f for f, _ in named}:
        tree = ast.parse((ROOT / file).read_text())
        defined[file] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    missing = [f"{f}::{t}" for f, t in named if t not in defined[f]]
    assert not missing
