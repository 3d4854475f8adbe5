"""`fxq quantize --dtype bf16` end to end through the CLI (in-process main, this worktree's code):
the opset it needs is picked, and --verify's numbers come from an FP32 upcast copy onnxruntime can run."""
import re

import onnx
import pytest
from onnx import TensorProto

from fxq.cli.main import main


@pytest.mark.parametrize("kind", ["vision", "text"])
def test_cli_bf16_end_to_end(tmp_path, capsys, request, kind):
    folder = request.getfixturevalue("vit_folder" if kind == "vision" else "bert_folder")
    calib = ["--calib-images", str(folder / "images")] if kind == "vision" else \
        ["--calib-text", str(folder / "sentences.txt"), "--seq-len", "16"]
    out = tmp_path / "m.onnx"
    rc = main(["quantize", str(folder / "model"), *calib, "--out", str(out), "--dtype", "bf16", "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "bf16, opset 23" in text
    g = onnx.load(str(out)).graph
    assert {i.type.tensor_type.elem_type for i in g.input if i.type.tensor_type.elem_type != TensorProto.INT64} \
        <= {TensorProto.BFLOAT16}
    cosine = float(re.search(r"FP8 ONNX bf16 \(onnxruntime, FP32 upcast copy\)\s+cosine (\S+)", text).group(1))
    assert cosine > 0.99, text


def test_cli_bf16_with_too_low_opset_fails_before_loading(tmp_path, capsys):
    rc = main(["quantize", str(tmp_path / "no_such_model"), "--calib-synthetic", "2", "--out", str(tmp_path / "m.onnx"),
               "--dtype", "bf16", "--opset", "21"])
    err = capsys.readouterr().err
    assert rc == 2 and "bfloat16 export needs opset >= 22" in err and "no_such_model" not in err, err
