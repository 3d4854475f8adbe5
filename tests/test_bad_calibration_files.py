"""Bad calibration data: text and image files, saved calibration files and calibration= dicts."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

import fxq
from cli_runs import calib_file, calibration_doc, cli_error, quantize_argv, quantize_tiny
from fxq.errors import CalibrationError, ConfigError, InputError
from tiny_models import TinyAttention, inputs_for


@pytest.mark.parametrize("content", [bytes(range(256)) * 8, b"fine line\nthen \x00\x00 nul bytes\n",
                                     "caf\u00e9\n".encode("latin-1")])
def test_cli_binary_calibration_text(bert_model, tmp_path, capsys, content):
    (tmp_path / "t.txt").write_bytes(content)
    cli_error(capsys, quantize_argv(bert_model, tmp_path, "--calib-text", str(tmp_path / "t.txt")),
              "is not UTF-8 text", "binary data at byte")


@pytest.mark.parametrize("value,words", [(float("nan"), ["is nan", "must be finite"]),
                                         (float("inf"), ["is inf"]),
                                         (-1.0, ["is -1.0", ">= 0"]),
                                         (True, ["is True, not a number"]),
                                         ("1.0", ["is '1.0', not a number"]),
                                         (None, ["is None, not a number"])])
def test_cli_bad_amax_in_calibration_file(vit_model, tmp_path, capsys, value, words):
    p = calib_file(tmp_path, {"vit.layers.0:linear.input": value})
    cli_error(capsys, quantize_argv(vit_model, tmp_path, "--load-calib", str(p)),
              "calibration file", "'vit.layers.0:linear.input'", *words)


@pytest.mark.parametrize("content,words", [("[]", ["not an fxq calibration", "list"]),
                                           ('{"version": 2, "amax": {}}', ["not an fxq v1 calibration file"]),
                                           ('{"version": 1}', ["not an fxq v1 calibration file"]),
                                           ('{"version": 1, "amax": [1.0]}', ["'amax' must map"]),
                                           ('{"version": 1, "amax": {}, "batches": "x"}', ["'batches'"]),
                                           ("\xff\xfe{", ["not valid JSON"])])
def test_cli_malformed_calibration_file(vit_model, tmp_path, capsys, content, words):
    (tmp_path / "c.json").write_text(content, encoding="latin-1")
    cli_error(capsys, quantize_argv(vit_model, tmp_path, "--load-calib", str(tmp_path / "c.json")), *words)


def test_cli_corrupt_image_in_folder(vit_model, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "a.png")
    (images / "b.jpg").write_bytes(b"not a jpeg at all")
    cli_error(capsys, quantize_argv(vit_model, tmp_path, "--calib-images", str(images)),
              "calibration image", "b.jpg", "cannot be read")


@pytest.mark.parametrize("value,words", [(float("nan"), "is nan"), (-2.0, "is -2.0"), (True, "not a number"),
                                         ("0.5", "not a number"), (float("-inf"), "is -inf")])
def test_api_calibration_dict_refused_like_a_file(calibrated, value, words):
    key = next(k for k in calibrated.amax if k.endswith("linear.input"))
    with pytest.raises(CalibrationError, match=re.escape(f"amax for '{key}'") + ".*" + re.escape(words)):
        quantize_tiny(TinyAttention().eval(), calib_data=None, calibration=calibration_doc(calibrated, **{key: value}))


def test_cli_and_api_give_the_same_error(vit_model, tmp_path, capsys):
    """One validation layer: the same bad file gives the very same message from the CLI and the API."""
    p = calib_file(tmp_path, {"layer.0:linear.input": float("nan")})
    with pytest.raises(CalibrationError) as api:
        quantize_tiny(calib_data=None, calibration=p)
    err = cli_error(capsys, quantize_argv(vit_model, tmp_path, "--load-calib", str(p)))
    assert err.strip() == f"fxq quantize: error: {api.value}"
    (tmp_path / "c.json").write_text("[]")
    with pytest.raises(ConfigError) as api:
        fxq.QuantConfig.from_file(tmp_path / "c.json")
    err = cli_error(capsys, quantize_argv(vit_model, tmp_path, "--calib-synthetic", "2", "--config",
                                          str(tmp_path / "c.json")))
    assert err.strip() == f"fxq quantize: error: {api.value}"


def test_api_calibration_dict_needs_version(calibrated):
    with pytest.raises(CalibrationError, match="calibration= dict is not an fxq v1 calibration"):
        quantize_tiny(calib_data=None, calibration={"amax": dict(calibrated.amax)})


def test_api_zero_amax_accepted_as_dead_tensor(calibrated):
    key = next(k for k in calibrated.amax if k.endswith("linear.input"))
    qm = quantize_tiny(calib_data=None, calibration=calibration_doc(calibrated, **{key: 0}))
    assert qm.amax[key] == 0.0 and torch.isfinite(qm(*inputs_for("mul_after"))).all()


def test_api_save_calibration_refuses_nan(calibrated, tmp_path):
    key = next(iter(calibrated.amax))
    from fxq.calibration.io import save_calibration

    with pytest.raises(CalibrationError, match=f"amax for '{re.escape(key)}' is nan"):
        save_calibration(tmp_path / "c.json", {key: float("nan")}, "M", {}, 1)
    assert not (tmp_path / "c.json").exists()


def test_api_calib_data_and_calibration_both(calibrated):
    with pytest.raises(InputError, match="both calib_data and calibration= were given"):
        quantize_tiny(calibration=calibration_doc(calibrated))


def test_16bit_grey_png_not_clipped_to_white(tmp_path):
    from fxq.cli.sources import read_images

    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    (img,) = read_images(tmp_path)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert img.min() == 0 and img.max() == 255 and abs(img.mean() - 127.5) < 2  # a ramp, not white


def test_photos_of_different_sizes(tmp_path):
    from fxq.cli.sources import _vision_source, read_images

    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 48), (64, 32), (17, 90)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(tmp_path / "grey.png")
    images = read_images(tmp_path)
    src = _vision_source("v", None, 32, [0.5] * 3, [0.5] * 3)
    x = src.encode(images)["pixel_values"]
    assert x.shape == (4, 3, 32, 32) and torch.isfinite(x).all()

