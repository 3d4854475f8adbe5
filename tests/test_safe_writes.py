"""What fxq writes: binary ONNX only, never onto a folder, errors that name the user's path, and
no staging folder left behind by a signal at any instant."""
import errno
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

import fxq
from fxq import atomic
from fxq.errors import InputError

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def qm():
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32))
    x = torch.randn(4, 32)
    return fxq.quantize(model, (x,), [(x,)], progress=False)


@pytest.mark.parametrize("name", ["m.json", "m.textproto", "m.txtpb", "m.onnxtxt"])
def test_text_formats_are_refused_before_export(tmp_path, qm, name):
    with pytest.raises(InputError, match=rf"suffix '\.\w+', which names the \w+ format.*fix: name the file \*\.onnx"):
        qm.export_onnx(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["m.onnx", "m.bin"])
def test_what_is_written_is_binary_onnx(tmp_path, qm, name):
    path = qm.export_onnx(tmp_path / name).path
    assert path.read_bytes()[:1] == b"\x08"  # field 1 (ir_version), varint: a binary ModelProto
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {sess.get_inputs()[0].name: torch.randn(2, 32).half().numpy()})[0].shape == (2, 32)


def test_path_ending_in_a_separator_is_a_folder(tmp_path, qm):
    with pytest.raises(IsADirectoryError, match=r"newdir/ ends with a path separator.*newdir/model.onnx"):
        qm.export_onnx(f"{tmp_path}/newdir/")
    assert list(tmp_path.iterdir()) == []


def test_data_companion_that_is_a_folder_replaces_nothing(tmp_path, qm):
    target = tmp_path / "m.onnx"
    target.write_text("old model")
    (tmp_path / "m.onnx.data").mkdir()
    with pytest.raises(IsADirectoryError, match=r"cannot write .*m.onnx: .*m.onnx.data is a folder"):
        qm.export_onnx(target)
    assert target.read_text() == "old model" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    with pytest.raises(IsADirectoryError, match="m.onnx.data is a folder"):  # the writer checks it too
        with atomic.staging(target, companions=["m.onnx.data"]):
            pass
    assert target.read_text() == "old model"


def test_save_calibration_into_a_folder_names_the_folder(tmp_path, qm):
    (tmp_path / "calib").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        qm.save_calibration(tmp_path / "calib")
    assert f"{tmp_path / 'calib'} is a folder" in str(e.value) and "/." not in str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == ["calib"]


def test_read_only_filesystem_error_names_the_users_path(tmp_path, qm, monkeypatch):
    def read_only(*a, **k):  # what mkdtemp raises on a read-only mount, hidden staging name included
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".c.json.abc123"))

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", read_only)
    with pytest.raises(OSError) as e:
        qm.save_calibration(tmp_path / "c.json")
    assert e.value.errno == errno.EROFS and str(tmp_path / "c.json") in str(e.value)
    assert ".c.json.abc123" not in str(e.value)


SIGNAL_IN_MKDTEMP = textwrap.dedent("""
    import importlib.util, os, signal, sys, tempfile
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("atomic", sys.argv[1])
    atomic = importlib.util.module_from_spec(spec); spec.loader.exec_module(atomic)
    real = tempfile.mkdtemp
    def mkdtemp_then_signal(*a, **k):
        d = real(*a, **k)       # the staging folder exists ...
        os.kill(os.getpid(), signal.SIGTERM)  # ... and SIGTERM arrives before staging() knows its name
        return d
    atomic.tempfile.mkdtemp = mkdtemp_then_signal
    target = Path(sys.argv[2])
    with atomic.staging(target) as tmp:
        (tmp / target.name).write_text("new")
    print("done", flush=True)
""")


def test_sigterm_as_the_staging_folder_appears_leaves_nothing(tmp_path):
    target = tmp_path / "c.json"
    target.write_text("old")
    p = subprocess.run([sys.executable, "-c", SIGNAL_IN_MKDTEMP, str(ROOT / "fxq/atomic.py"), str(target)],
                       capture_output=True, timeout=60)
    assert p.returncode == -signal.SIGTERM, p.stderr
    assert [x.name for x in tmp_path.iterdir()] == ["c.json"] and target.read_text() == "old"
    assert b"done" not in p.stdout
