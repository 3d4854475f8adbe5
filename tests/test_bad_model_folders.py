"""Bad or hostile model folders: pickles never unpickled, broken safetensors, NaN weights, NaN outputs."""
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import transformers

from cli_runs import TINY_VIT, cli_error, quantize_argv
from fxq.cli.main import main


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


def test_cli_truncated_safetensors(vit_model, tmp_path, capsys):
    import shutil

    d = tmp_path / "model"
    shutil.copytree(vit_model, d)
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


def test_cli_model_folder_config_not_json(vit_model, tmp_path, capsys):
    import shutil

    d = tmp_path / "model"
    shutil.copytree(vit_model, d)
    (d / "config.json").write_text("{not json")
    cli_error(capsys, quantize_argv(d, tmp_path, "--calib-synthetic", "2"), "config.json", "not valid JSON",
              "fix: save the model again")


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

