"""Atomic, signal-safe file writes: the target is either the old file or the complete new one.

Files are written into a hidden staging folder next to the target and renamed over it at the end.
While that happens, SIGTERM and SIGINT are caught: the staging folder is removed first, then the
signal is delivered again with the handler that was there before (so the process still dies with
the conventional code, 128 + signal, or KeyboardInterrupt for SIGINT). A signal that arrives
during the final renames is held until they are done, so a model and its .data file never come
from two different writes. SIGKILL cannot be caught; its leftovers are `.<name>.*` folders.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Sequence

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Interrupted(BaseException):
    """Raised inside the write when a signal arrives; never escapes staging()."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _SignalGuard:
    def __init__(self):
        # True while the staging folder is made and during the renames: remember the signal, act after.
        # It starts True, so a signal between installing the handler and knowing the folder's name
        # cannot leave a folder behind that nobody knows to remove.
        self.hold = True
        self.pending: int | None = None
        self.previous: dict[int, object] = {}

    def handler(self, signum, frame):
        if self.hold:
            self.pending = signum
            return
        raise _Interrupted(signum)

    def release(self) -> None:
        """Stop holding; a signal that came meanwhile is acted on now."""
        self.hold = False
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise _Interrupted(signum)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; fall back to plain cleanup
        for s in SIGNALS:
            if signal.getsignal(s) is signal.SIG_IGN:
                continue  # the process ignores it (e.g. started with it ignored): so do we, as without the guard
            self.previous[s] = signal.signal(s, self.handler)

    def restore(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)  # None: set outside Python; default is closest
        self.previous.clear()


def _redeliver(signum: int) -> None:
    """Act on the signal as the process would have without us (handlers already restored)."""
    signal.raise_signal(signum)  # SIG_DFL ends the process here; Python's SIGINT handler raises KeyboardInterrupt


def check_targets(path: str | os.PathLike, companions: Sequence[str] = ()) -> None:
    """`path` and its companions can be replaced by files: none of them is a folder. Checked before
    anything is written, so a write never stops half-way with the target already replaced."""
    path = Path(path)
    for target in [path, *(path.parent / c for c in companions)]:
        if target.is_dir():
            raise IsADirectoryError(f"cannot write {path}: {target} is a folder, where fxq must write a file; "
                                    "fix: move that folder away or choose another output path")


def _os_error(e: OSError, path: Path) -> OSError:
    """The same OSError, naming the user's path instead of the hidden staging file."""
    return type(e)(e.errno, f"cannot write {path}: {e.strerror or e}", str(path))


@contextlib.contextmanager
def staging(path: str | os.PathLike, companions: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a staging folder; on success every file in it replaces the file of the same name next
    to `path`, `path` itself last. `companions` (e.g. 'model.onnx.data') that the write did not
    produce are removed from the target folder, so no stale file from an older write stays."""
    path = Path(path)
    check_targets(path, companions)
    guard = _SignalGuard()  # holds signals until the staging folder's name is known
    tmpdir, committed = None, False
    try:
        guard.install()
        try:
            tmpdir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        except OSError as e:
            raise _os_error(e, path) from None
        guard.release()
        yield tmpdir
        guard.hold = True
        written = [p for p in tmpdir.iterdir() if p.name != path.name]
        try:
            for p in written:
                os.replace(p, path.parent / p.name)
            os.replace(tmpdir / path.name, path)
        except OSError as e:
            raise _os_error(e, path) from None
        committed = True
        produced = {p.name for p in written}
        for name in companions:
            if name not in produced:
                (path.parent / name).unlink(missing_ok=True)
    except _Interrupted as e:
        guard.pending = e.signum
    finally:
        guard.hold = True  # a second signal must not interrupt the cleanup
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        guard.restore()
    if guard.pending is not None:
        _redeliver(guard.pending)
        if not committed:  # still alive (the earlier handler did not exit): the caller must not think it wrote
            raise InterruptedError(f"writing {path} was interrupted by signal {guard.pending}; the old file is kept")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (creating the parent folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with staging(path) as tmp:
        with open(tmp / path.name, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
