"""Issue 15: the CLI checks what it can before it loads a model (a second, not minutes), names only the
flags that fit the model, and prints no other library's warnings."""
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from cli_runs import cli_error
from fxq.cli.main import main

ROOT = Path(__file__).parent.parent


LATE = [  # (argv after the model, words); each used to fail only after the model load or the whole run
    (["quantize", "{vit}", "--load-calib", "{t}/missing.json", "--out", "{t}/o.onnx"],
     ["--load-calib file", "missing.json does not exist", "fix: pass a file written by --save-calib"]),
    (["quantize", "{vit}", "--calib-synthetic", "2", "--fallback-max-error", "nan", "--out", "{t}/o.onnx"],
     ["--fallback-max-error nan", "max_error must be a finite number >= 0", "fix: e.g. --fallback-max-error 0.002"]),
    (["quantize", "{vit}", "--calib-synthetic", "2", "--fallback-max-error", "-1", "--out", "{t}/o.onnx"],
     ["--fallback-max-error -1.0", "max_error must be a finite number >= 0"]),
    (["sensitivity", "{vit}", "--calib-synthetic", "2", "--seq-len", "0"],
     ["--seq-len must be a positive whole number, got 0", "fix: e.g. --seq-len=128"]),
    (["sensitivity", "{vit}", "--calib-synthetic", "2", "--json", "{t}/afile/r.json"],
     ["--json", "is a file, not a folder"]),
    (["sensitivity", "{vit}", "--calib-synthetic", "2", "--plot", "{t}"], ["--plot", "is a directory"]),
    (["sensitivity", "{vit}", "--calib-synthetic", "2", "--top", "0"], ["--top must be at least 1"]),
    (["sensitivity", "{vit}", "--calib-synthetic", "0"], ["--calib-synthetic needs a positive number"]),
    (["quantize", "{vit}", "--calib-text", "{t}/s.txt", "--out", "{t}/o.onnx"],
     ["--calib-text needs a text model; model takes images (use --calib-images)"]),
    (["quantize", "{bert}", "--calib-images", "{t}", "--out", "{t}/o.onnx"],
     ["--calib-images needs a vision model; model takes text (use --calib-text)"]),
    (["quantize", "{bert}", "--out", "{t}/o.onnx"],
     ["no calibration data for model: pass --calib-text FILE or --calib-synthetic N"]),
]


IDS = ["missing-load-calib", "fallback-nan", "fallback-negative", "sensitivity-seq-len-0", "json-parent-is-a-file",
       "plot-is-a-folder", "top-0", "synthetic-0", "text-for-vision-folder", "images-for-text-folder",
       "text-folder-without-data"]


@pytest.mark.parametrize("argv,words", LATE, ids=IDS)
def test_checked_before_the_model_loads(vit_model, bert_model, tmp_path, no_model_load, capsys, argv, words):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "s.txt").write_text("a sentence\n")
    argv = [a.format(vit=vit_model, bert=bert_model, t=tmp_path) for a in argv]
    cli_error(capsys, [*argv, "--quiet"], *words, command=argv[0])
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("command", ["quantize", "sensitivity"])
@pytest.mark.parametrize("builtin", ["dinov2-small", "vit-base"])
def test_vision_builtin_without_data_names_the_image_flags(tmp_path, no_model_load, capsys, command, builtin):
    """Before: 15 s of loading, then a message that suggested --calib-text."""
    argv = [command, builtin, "--quiet"] + (["--out", str(tmp_path / "o.onnx")] if command == "quantize" else [])
    err = cli_error(capsys, argv, f"no calibration data for {builtin}: pass --calib-images DIR or --calib-synthetic N",
                    command=command)
    assert "--calib-text" not in err


def test_builtin_kinds_cover_every_builtin():
    from fxq.cli.checks import BUILTIN_DATA, BUILTIN_KINDS
    from fxq.cli.sources import BUILTINS

    assert set(BUILTIN_KINDS) == set(BUILTINS) and BUILTIN_DATA <= set(BUILTIN_KINDS)


def test_quiet_run_restores_warning_filters_and_log_levels(tmp_path, capsys):
    filters, level = list(warnings.filters), logging.getLogger("torchao").level
    assert main(["quantize", "vit-base", "--out", str(tmp_path / "o.onnx")]) == 2  # fails in the checks
    assert warnings.filters == filters and logging.getLogger("torchao").level == level


def test_a_run_prints_no_warnings_of_other_libraries(vit_folder, tmp_path):
    """`make demo` showed torch pytree deprecation lines, torchao's kernel-loading lines and a copyreg
    FutureWarning in the middle of the report. A fresh process, as a user runs it (no --quiet)."""
    argv = [sys.executable, "-m", "fxq.cli.main", "quantize", str(vit_folder / "model"), "--calib-images",
            str(vit_folder / "images"), "--out", str(tmp_path / "o.onnx")]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in re.split(r"[\r\n]", r.stderr) if line.strip()]
    noise = [line for line in lines if re.search(r"warn|deprecat|Failed to load|^[WEI]\d{4} ", line, re.I)]
    assert noise == [], noise
    assert "FP8 ONNX fp16 (onnxruntime)" in r.stdout
