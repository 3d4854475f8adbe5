"""Atomic, signal-safe writes (fxq/atomic.py): the target is the old file or the complete new one."""
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


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


def _default_signals():
    # A pytest worker may run with SIGINT ignored, which a child inherits through exec: give the child the defaults
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)


def _interrupt_child(argv, target, sig, ready=b"writing"):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, preexec_fn=_default_signals)
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
        import fxq.export.to_onnx as ex
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



def test_an_ignored_signal_stays_ignored(tmp_path):
    """A process that ignores SIGINT (started under nohup-like parents, some test workers) keeps ignoring it while
    fxq writes: the guard must not turn an ignored signal into an interrupted write."""
    import fxq.atomic as atomic

    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with atomic.staging(tmp_path / "out.bin") as tmp:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            (tmp / "out.bin").write_bytes(b"x")
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and (tmp_path / "out.bin").read_bytes() == b"x"
    finally:
        signal.signal(signal.SIGINT, old)
