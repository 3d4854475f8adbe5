"""Bad CLI options and output paths: one line on stderr, exit 2, before anything slow."""
import os
from pathlib import Path

import pytest

from cli_runs import cli_error, quantize_argv
from fxq import validate


@pytest.mark.parametrize("opset,words", [("24", ["opset 24 is not supported", "up to opset 23"]),
                                         ("17", ["opset 17", "opset >= 19"])])
def test_cli_opset_out_of_range(vit_model, tmp_path, capsys, opset, words):
    cli_error(capsys, quantize_argv(vit_model, tmp_path, "--calib-synthetic", "2", "--opset", opset), *words)


def test_max_opset_is_what_torch_onnx_exports():
    from torch.onnx._constants import ONNX_MAX_OPSET

    assert validate.max_opset() == min(ONNX_MAX_OPSET, 23) == 23  # torch 2.13 / onnxscript 0.7


@pytest.mark.parametrize("n", ["0", "-5"])
def test_cli_seq_len_not_positive(vit_model, tmp_path, capsys, n):
    cli_error(capsys, quantize_argv(vit_model, tmp_path, "--calib-synthetic", "2", "--seq-len", n),
              "--seq-len must be a positive whole number")


def test_cli_seq_len_above_max_positions(bert_model, tmp_path, capsys):
    cli_error(capsys, quantize_argv(bert_model, tmp_path, "--calib-synthetic", "2", "--seq-len", "65"),
              "--seq-len 65 exceeds", "max_position_embeddings (64)", "--seq-len=64 or less")


def test_cli_out_parent_is_a_file(vit_model, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    argv = ["quantize", "no/such/model", "--out", str(tmp_path / "afile" / "m.onnx"), "--quiet"]
    cli_error(capsys, argv, "--out", "is a file, not a folder")  # before the model is even looked up


def test_cli_save_calib_parent_is_a_file(vit_model, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    cli_error(capsys, quantize_argv(vit_model, tmp_path, "--calib-synthetic", "2", "--save-calib",
                                    str(tmp_path / "afile" / "c.json")), "--save-calib", "is a file")


def test_cli_out_not_writable(vit_model, tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through chmod; /proc refuses new files even to root
        target = Path("/proc/fxq-not-writable.onnx")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "m.onnx"
    argv = ["quantize", str(vit_model), "--out", str(target), "--calib-synthetic", "2", "--quiet"]
    cli_error(capsys, argv, "cannot be written", "fix: choose a folder you can write to")


def test_cli_batch_size_zero(vit_model, tmp_path, capsys):
    cli_error(capsys, quantize_argv(vit_model, tmp_path, "--calib-synthetic", "2", "--batch-size", "0"),
              "--batch-size must be at least 1")


def test_cli_save_calib_same_as_out(vit_model, tmp_path, capsys):
    cli_error(capsys, quantize_argv(vit_model, tmp_path, "--calib-synthetic", "2", "--save-calib",
                                    str(tmp_path / "out.onnx")), "--save-calib and --out are the same file")

