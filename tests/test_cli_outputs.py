"""Issue 15: no output of the CLI may destroy one of its inputs, and every file it writes is atomic.
Each clash is refused with one line and exit 2 before the model loads, and the input is untouched."""
import hashlib
import os

import pytest

from cli_runs import cli_error
from fxq.cli.main import main


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def inputs(vit_folder, bert_folder, tmp_path):
    """Copies of the inputs a run reads, in a folder the test may damage."""
    import shutil

    shutil.copytree(vit_folder / "model", tmp_path / "vit")
    shutil.copytree(bert_folder / "model", tmp_path / "bert")
    shutil.copytree(vit_folder / "images", tmp_path / "images")
    (tmp_path / "s.txt").write_text("a sentence\nanother one\n")
    (tmp_path / "calib.json").write_text('{"version": 1, "batches": 1, "amax": {}}')
    (tmp_path / "config.json").write_text("{}")
    os.symlink(tmp_path / "vit" / "model.safetensors", tmp_path / "link.onnx")
    (tmp_path / "m.onnx.data").write_text("a sentence\n")
    return tmp_path


# (argv, the input that would be destroyed, words of the error)
CLASHES = [
    (["quantize", "{t}/vit", "--calib-synthetic", "2", "--out", "{t}/vit/model.safetensors"],
     "vit/model.safetensors", ["--out", "would overwrite a file of the model folder"]),
    (["quantize", "{t}/vit", "--calib-synthetic", "2", "--out", "{t}/vit/config.json"],
     "vit/config.json", ["--out", "would overwrite a file of the model folder"]),
    (["quantize", "{t}/bert", "--calib-text", "{t}/s.txt", "--out", "{t}/s.txt"],
     "s.txt", ["--out", "the --calib-text file"]),
    (["quantize", "{t}/vit", "--load-calib", "{t}/calib.json", "--out", "{t}/calib.json"],
     "calib.json", ["--out", "the --load-calib file"]),
    (["quantize", "{t}/vit", "--load-calib", "{t}/calib.json", "--out", "{t}/o.onnx", "--save-calib",
      "{t}/calib.json"], "calib.json", ["--save-calib", "the --load-calib file"]),
    (["quantize", "{t}/vit", "--calib-synthetic", "2", "--config", "{t}/config.json", "--out", "{t}/o.onnx",
      "--save-calib", "{t}/config.json"], "config.json", ["--save-calib", "the --config file"]),
    (["quantize", "{t}/vit", "--calib-images", "{t}/images", "--out", "{t}/images/0.png"],
     "images/0.png", ["--out", "a --calib-images image"]),
    (["quantize", "{t}/vit", "--calib-synthetic", "2", "--out", "{t}/link.onnx"],  # a symlink to the weights
     "vit/model.safetensors", ["--out", "would overwrite a file of the model folder"]),
    (["quantize", "{t}/bert", "--calib-text", "{t}/m.onnx.data", "--out", "{t}/m.onnx"],  # the external-data file
     "m.onnx.data", ["--out", "its external-data file m.onnx.data", "the --calib-text file"]),
    (["sensitivity", "{t}/bert", "--calib-text", "{t}/s.txt", "--json", "{t}/s.txt"],
     "s.txt", ["--json", "the --calib-text file"]),
    (["sensitivity", "{t}/vit", "--calib-images", "{t}/images", "--plot", "{t}/images/1.png"],
     "images/1.png", ["--plot", "a --calib-images image"]),
    (["sensitivity", "{t}/vit", "--calib-synthetic", "2", "--plot", "{t}/vit/model.safetensors"],
     "vit/model.safetensors", ["--plot", "would overwrite a file of the model folder"]),
]


@pytest.mark.parametrize("argv,victim,words", CLASHES, ids=[f"{a[0]}-{v}-{w[0]}" for a, v, w in CLASHES])
def test_output_that_would_destroy_an_input_is_refused_before_loading(inputs, no_model_load, capsys, argv, victim,
                                                                      words):
    before = digest(inputs / victim)
    argv = [a.format(t=inputs) for a in argv]
    cli_error(capsys, [*argv, "--quiet"], *words, "fix: write the output somewhere else", command=argv[0])
    assert digest(inputs / victim) == before
    assert (inputs / "link.onnx").is_symlink()


def test_two_outputs_on_one_file_are_refused(vit_folder, tmp_path, no_model_load, capsys):
    argv = ["sensitivity", str(vit_folder / "model"), "--calib-synthetic", "2", "--plot", str(tmp_path / "r"),
            "--json", str(tmp_path / "r"), "--quiet"]
    cli_error(capsys, argv, "--json and --plot are the same file", command="sensitivity")


def test_outputs_inside_the_model_folder_that_are_new_files_are_fine(vit_folder, tmp_path):
    """Only files the run reads are protected: a new ONNX file next to the weights is a normal thing to ask."""
    import shutil

    shutil.copytree(vit_folder / "model", tmp_path / "vit")
    rc = main(["quantize", str(tmp_path / "vit"), "--calib-synthetic", "2", "--out", str(tmp_path / "vit/fp8.onnx"),
               "--quiet"])
    assert rc == 0 and (tmp_path / "vit/fp8.onnx").stat().st_size > 10_000


def test_sensitivity_plot_onto_a_symlink_replaces_the_link(vit_folder, tmp_path, capsys):
    """matplotlib's savefig follows a symlink and overwrites its target in place; fxq writes through its
    atomic staging folder and renames over the link."""
    target = tmp_path / "precious.txt"
    target.write_text("not yours to overwrite")
    (tmp_path / "out").mkdir()
    link = tmp_path / "out" / "s.png"
    os.symlink(target, link)
    rc = main(["sensitivity", str(vit_folder / "model"), "--calib-synthetic", "4", "--plot", str(link), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert target.read_text() == "not yours to overwrite"
    assert not link.is_symlink() and link.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s.png"]  # no staging folder left
