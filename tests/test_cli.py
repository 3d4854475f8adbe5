"""The fxq command line: a real run on small local HF folders, and every error path's one-line message."""
import json

import pytest

from fxq.cli.main import main


def test_quantize_vision_folder_end_to_end(vit_folder, tmp_path, capsys):
    out = tmp_path / "vit.onnx"
    calib = tmp_path / "calib.json"
    rc = main(["quantize", str(vit_folder / "model"), "--calib-images", str(vit_folder / "images"), "--out", str(out),
               "--batch-size", "3", "--save-calib", str(calib), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file() and calib.is_file()
    assert "attention: 2/2 ready" in text and "Casts: 0" in text
    assert "FP8 ONNX fp16 (onnxruntime)" in text and "post-process" in text
    # Re-export from the saved calibration, no images needed.
    rc = main(["quantize", str(vit_folder / "model"), "--load-calib", str(calib), "--out", str(tmp_path / "again.onnx"),
               "--quiet"])
    assert rc == 0
    assert main(["check", str(out), "--strict"]) == 0


def test_quantize_text_folder_with_text_file(bert_folder, tmp_path, capsys):
    out = tmp_path / "bert.onnx"
    rc = main(["quantize", str(bert_folder / "model"), "--calib-text", str(bert_folder / "sentences.txt"),
               "--seq-len", "16", "--out", str(out), "--report", "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "encoder.layer.1.attention" in text and "attn.probs" in text  # --report prints the table
    assert "sentence embedding" in text


@pytest.mark.parametrize("args,message", [
    (["no/such/model"], "neither a built-in"),
    (["{vit}", "--calib-text", "{tmp}/s.txt"], "needs a text model"),
    (["{vit}", "--calib-images", "{tmp}"], "no images"),
    (["{vit}", "--calib-images", "{tmp}/missing"], "does not exist"),
    (["{vit}"], "no calibration data"),
    (["{vit}", "--calib-synthetic", "0"], "positive number"),
    (["{vit}", "--calib-synthetic", "2", "--config", "{tmp}/bad.json"], "not a valid fxq config"),
    (["{vit}", "--calib-synthetic", "2", "--load-calib", "{tmp}/none.json"], None),  # argparse: mutually exclusive
    (["{tmp}", "--calib-synthetic", "2"], "not a Hugging Face model folder"),
])
def test_bad_input_gives_one_line_error(vit_folder, tmp_path, capsys, args, message):
    (tmp_path / "bad.json").write_text(json.dumps({"version": 1, "min_gem_dim": 3}))
    (tmp_path / "s.txt").write_text("a sentence\n")
    fill = lambda a: a.format(vit=vit_folder / "model", tmp=tmp_path)  # noqa: E731
    argv = ["quantize", *map(fill, args), "--out", str(tmp_path / "x.onnx"), "--quiet"]
    if message is None:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        return
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxq quantize: error:") and message in err, err
    assert not (tmp_path / "x.onnx").exists()


def test_out_is_a_directory(vit_folder, tmp_path, capsys):
    rc = main(["quantize", str(vit_folder / "model"), "--calib-synthetic", "2", "--out", str(tmp_path), "--quiet"])
    assert rc == 2 and "is a directory" in capsys.readouterr().err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["quantize", "--help"])
    assert e.value.code == 0
    assert "fxq quantize minilm --out" in capsys.readouterr().out


def test_check_errors(tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing.onnx")]) == 2
    assert "fxq check: error:" in capsys.readouterr().err
