"""Files fxq reads, treated as hostile: JSON documents, images, model folders; and a report that
does not claim more FP8 than the graph has."""
import json
import struct
import zlib

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import fxq
from fxq import roles as R
from fxq import validate
from fxq.config import Override, QuantConfig
from fxq.errors import CalibrationError, ConfigError, FxqError
from fxq.cli.sources import load_source, read_images


# -- JSON -------------------------------------------------------------------------------------------
def _calib(tmp_path, doc) -> str:
    p = tmp_path / "c.json"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(p)


def test_json_nested_100000_deep_is_one_error(tmp_path):
    path = _calib(tmp_path, "[" * 100_000 + "]" * 100_000)
    from fxq.calibration.io import load_calibration

    with pytest.raises(CalibrationError, match=r"nests lists/objects more than 32 deep.*fix: write one"):
        load_calibration(path)


def test_json_nested_under_the_recursion_limit_is_refused_too(tmp_path):
    path = _calib(tmp_path, '{"version": 1, "amax": ' + "[" * 500 + "]" * 500 + "}")
    with pytest.raises(ConfigError, match="more than 32 deep"):
        validate.json_file(path, "config file", ConfigError, "fix it")


def test_huge_json_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr("fxq.validate_files.MAX_JSON_BYTES", 1000)
    path = _calib(tmp_path, json.dumps({"version": 1, "amax": {f"k{i}": 1.0 for i in range(200)}}))
    with pytest.raises(CalibrationError, match=r"is 0 MiB, more than the 0 MiB fxq reads as JSON"):
        validate.json_file(path, "calibration file", CalibrationError, "fix it")


def test_special_file_is_not_read(tmp_path):
    with pytest.raises(CalibrationError, match="/dev/zero is not a regular file"):
        validate.json_file("/dev/zero", "calibration file", CalibrationError, "fix it")


def test_megabyte_keys_are_not_echoed(tmp_path):
    key = "k" * 2**20
    from fxq.calibration.io import load_calibration

    with pytest.raises(CalibrationError) as e:
        load_calibration(_calib(tmp_path, {"version": 1, "amax": {key: "x" * 2**20}}))
    assert len(str(e.value)) < 600 and "(1048578 chars)" in str(e.value)
    with pytest.raises(ConfigError) as e:
        validate.config_dict({"roles": {key: None}})
    assert len(str(e.value)) < 600 and "unknown role" in str(e.value)


def test_unknown_top_level_calibration_keys_are_refused(tmp_path):
    from fxq.calibration.io import load_calibration

    doc = {"version": 1, "batches": 1, "amax": {"fc:linear.input": 1.0}, "junk": 1, "payload": "x"}
    with pytest.raises(CalibrationError, match=r"unknown top-level keys \['junk', 'payload'\].*fix: remove those keys"):
        load_calibration(_calib(tmp_path, doc))
    del doc["junk"], doc["payload"]
    assert load_calibration(_calib(tmp_path, doc))["amax"] == {"fc:linear.input": 1.0}


# -- images -----------------------------------------------------------------------------------------
def _png_header_only(path, width: int, height: int) -> None:
    """A PNG that declares width x height pixels and holds almost none: a decompression bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("width,height", [(10_000, 9_500), (100_000, 100_000)])  # over PIL's bound, and over 2x
def test_decompression_bomb_is_one_clear_error(tmp_path, width, height):
    _png_header_only(tmp_path / "bomb.png", width, height)
    with pytest.raises(FxqError, match=r"bomb.png declares .*pixels.*decompression bomb.*fix: downscale it or remove it"):
        read_images(tmp_path)


def test_large_images_are_shrunk_as_they_are_read(tmp_path):
    grad = np.linspace(0, 255, 3000, dtype=np.float32)
    rgb = np.stack([np.broadcast_to(grad, (2000, 3000))] * 3, -1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "b.jpg", quality=90)
    Image.fromarray((np.broadcast_to(grad, (2000, 3000)) * 257).astype(np.uint16)).save(tmp_path / "c.png")
    images = read_images(tmp_path, max_side=300)
    assert [im.shape for im in images] == [(200, 300, 3)] * 3
    assert all(abs(float(im.mean()) - 127.5) < 3 for im in images)  # the content survives the shrink


# -- model folders ----------------------------------------------------------------------------------
def _bert_folder(d):
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                  vocab_size=100, max_position_embeddings=32)
    transformers.BertModel(cfg).save_pretrained(d)
    return d


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_folder_with_remote_code_is_refused_before_loading(tmp_path, monkeypatch, where):
    d = _bert_folder(tmp_path / "m")
    doc = json.loads((d / "config.json").read_text()) if where == "config.json" else {}
    doc["auto_map"] = {"AutoModel": "evil.EvilModel"}
    (d / where).write_text(json.dumps(doc))
    (d / "evil.py").write_text("raise SystemExit('the folder code ran')\n")

    def no_loading(*a, **k):
        raise AssertionError("transformers was asked to load the folder")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_loading)
    with pytest.raises(FxqError, match=rf"{where} has 'auto_map'.*never runs a model folder's code; fix: "):
        load_source(str(d))


# -- the report -------------------------------------------------------------------------------------
def test_report_counts_a_gemm_as_quantized_only_with_both_operands_in_fp8():
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32))
    x = torch.randn(4, 32)
    off = QuantConfig(overrides=(Override(r".*", {R.LINEAR_INPUT: None}, regex=True),))
    summary = fxq.quantize(model, (x,), [(x,)], off, progress=False).report().summary()
    assert "GEMMs quantized 0/2 (0.0% of GEMM FLOPs)" in summary, summary
    summary = fxq.quantize(model, (x,), [(x,)], progress=False).report().summary()
    assert "GEMMs quantized 2/2 (100.0% of GEMM FLOPs)" in summary, summary
