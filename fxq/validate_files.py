"""Checks for the files and paths users hand fxq: JSON documents read, output paths written.

Every file is treated as hostile: its size and nesting are bounded before it is parsed, and what it
holds is echoed into errors only in short pieces.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from fxq.errors import InputError

MAX_JSON_BYTES = 64 * 2**20  # a calibration of a 10k-tensor model is well under 2 MiB
MAX_JSON_DEPTH = 32  # fxq's documents nest 4 deep; json recurses once per level
ECHO_CHARS = 80  # at most this much of a file's own text in one error line


def short(value: Any, limit: int = ECHO_CHARS) -> str:
    """repr(value), cut to `limit` characters: file contents never flood a one-line error."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _depth(doc: Any) -> int:
    """How deep lists and objects nest in a parsed document (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def json_file(path: Path, what: str, error: type[Exception], fix: str) -> Any:
    """The JSON document in `path`; a missing, special, huge, over-deep or non-JSON file is one
    `error` that names it and the fix."""
    path = Path(path)
    if not path.exists():
        raise error(f"{what} {path} does not exist; fix: {fix}")
    if not path.is_file():  # a folder, /dev/zero, a FIFO: reading could hang or never end
        raise error(f"{what} {path} is not a regular file; fix: {fix}")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise error(f"{what} {path} is {size / 2**20:.0f} MiB, more than the {MAX_JSON_BYTES // 2**20} MiB fxq "
                    f"reads as JSON; fix: {fix}")
    with open(path, "rb") as f:
        data = f.read(MAX_JSON_BYTES + 1)  # the file may have grown since stat()
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{what} {path} is not valid JSON ({short(str(e))}); fix: {fix}") from None
    except RecursionError:
        doc = None
    if doc is None and data.strip() != b"null" or _depth(doc) > MAX_JSON_DEPTH:
        raise error(f"{what} {path} nests lists/objects more than {MAX_JSON_DEPTH} deep, which no fxq file does; "
                    f"fix: {fix}")
    return doc


def output_path(path: Any, what: str = "output") -> Path:
    """A file path fxq can write, checked before any slow work: not a folder, parent a writable folder."""
    if isinstance(path, str) and path.endswith(("/", os.sep)):  # Path() would drop the separator
        raise IsADirectoryError(f"{what} {path} ends with a path separator, so it names a folder; fix: give a file "
                                f"path such as {Path(path) / 'model.onnx'}")
    path = Path(path)
    if path.is_dir():  # IsADirectoryError (an OSError) as open() would raise, with the fix
        raise IsADirectoryError(f"{what} {path} is a directory; fix: give a file path such as {path / 'model.onnx'}")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{what} {path} cannot be written: {ancestor} is a file, not a folder; "
                         "fix: choose another output path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"{what} {path} cannot be written ({e.strerror or e}); "
                         "fix: choose a folder you can write to") from None
    return path
