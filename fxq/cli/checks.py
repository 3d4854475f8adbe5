"""What the CLI checks before it loads a model: option values, the files it will write, that no output
overwrites an input, and that the calibration options fit the model. A mistake here costs the user
a second, not the minutes of a model load and calibration."""
from __future__ import annotations

import json
from pathlib import Path

from fxq.cli.common import CliError, seq_len

BUILTIN_KINDS = {"minilm": "text", "dinov2-small": "vision", "vit-base": "vision"}  # fxq.cli.sources.BUILTINS
BUILTIN_DATA = {"minilm"}  # built-ins that bring their own calibration sentences
CALIBRATION_FLAGS = {"text": "--calib-text FILE or --calib-synthetic N",
                     "vision": "--calib-images DIR or --calib-synthetic N"}
MAX_CONFIG_JSON = 2**20  # a config.json larger than this is left to the loader to refuse


def numbers(args) -> None:
    """The numeric options both commands share."""
    if args.batch_size < 1:
        raise CliError("--batch-size must be at least 1")
    if args.calib_synthetic is not None and args.calib_synthetic < 1:
        raise CliError("--calib-synthetic needs a positive number of samples")
    seq_len(args.seq_len)


def outputs(named: dict[str, Path | None]) -> dict[str, Path]:
    """{flag: path} of the files a run writes (None: not asked for): each writable, no two the same."""
    from fxq.validate import output_path

    written = {}
    for flag, path in named.items():
        if path is None:
            continue
        output_path(path, flag)
        for other, p in written.items():
            if p.resolve() == path.resolve():
                raise CliError(f"{flag} and {other} are the same file ({path}); one would overwrite the other; "
                               "fix: give each output its own name")
        written[flag] = path
    return written


def inputs(args) -> list[tuple[str, Path]]:
    """(what, path) of every file the run reads: the model folder's files, the calibration and config files."""
    from fxq.cli.sources import IMAGE_SUFFIXES

    found = []
    model = Path(args.model)
    if args.model not in BUILTIN_KINDS and model.is_dir():
        found += [(f"a file of the model folder {model}", p) for p in sorted(model.iterdir()) if p.is_file()]
    for flag in ("calib_text", "load_calib", "config"):
        path = getattr(args, flag, None)
        if path is not None:
            found.append((f"the --{flag.replace('_', '-')} file", path))
    if args.calib_images is not None and args.calib_images.is_dir():
        found += [("a --calib-images image", p) for p in sorted(args.calib_images.iterdir())
                  if p.suffix.lower() in IMAGE_SUFFIXES]
    return found


def outputs_spare_inputs(written: dict[str, Path], read: list[tuple[str, Path]]) -> None:
    """No output may replace a file the run reads, symlinks resolved (an ONNX over model.safetensors...)."""
    resolved = {p.resolve(): (what, p) for what, p in read}
    for flag, path in written.items():
        for target in (path, path.with_name(path.name + ".data")):  # an ONNX file may write a .data companion
            if target.resolve() in resolved:
                what, p = resolved[target.resolve()]
                extra = "" if target == path else f" (its external-data file {target.name})"
                raise CliError(f"{flag} {path}{extra} would overwrite {what}, {p}; fix: write the output "
                               "somewhere else")


def model_kind(model: str) -> str | None:
    """'text' or 'vision' for a built-in, or for a folder from its config.json (read as data, never run);
    None when that cannot be told without loading (the loader then gives its own error)."""
    if model in BUILTIN_KINDS:
        return BUILTIN_KINDS[model]
    config = Path(model) / "config.json"
    try:
        if not config.is_file() or config.stat().st_size > MAX_CONFIG_JSON:
            return None
        doc = json.loads(config.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    if "vocab_size" in doc:
        return "text"
    return "vision" if isinstance(doc.get("image_size"), int) else None


def calibration_fits(args, kind: str | None) -> None:
    """The calibration options fit the model: the right kind of data, and some data unless it brings its own."""
    name = args.model if args.model in BUILTIN_KINDS else Path(args.model).name
    if kind == "vision" and args.calib_text is not None:
        raise CliError(f"--calib-text needs a text model; {name} takes images (use --calib-images)")
    if kind == "text" and args.calib_images is not None:
        raise CliError(f"--calib-images needs a vision model; {name} takes text (use --calib-text)")
    given = [args.calib_text, args.calib_images, args.calib_synthetic, getattr(args, "load_calib", None)]
    if kind is not None and all(g is None for g in given) and args.model not in BUILTIN_DATA:
        raise CliError(f"no calibration data for {name}: pass {CALIBRATION_FLAGS[kind]}")


def saved_calibration(path: Path | None) -> None:
    if path is not None and not path.is_file():
        raise CliError(f"--load-calib file {path} does not exist; fix: pass a file written by --save-calib")


def before_loading(args, written: dict[str, Path | None]) -> dict[str, Path]:
    """Every check both commands make before the model loads, in the order a user would fix them.
    Returns the outputs ({flag: path})."""
    written = outputs(written)
    outputs_spare_inputs(written, inputs(args))
    numbers(args)
    saved_calibration(getattr(args, "load_calib", None))
    calibration_fits(args, model_kind(args.model))
    return written
