"""What `fxq quantize` and `fxq sensitivity` share: the model and calibration options, the config,
the calibration batches, and a run that keeps other libraries' noise out of the report."""
from __future__ import annotations

import argparse
from pathlib import Path

N_EVAL_BUILTIN = 16  # built-in sentences held out from calibration to measure FP8 drift
# Loggers and warnings of libraries fxq uses that say nothing the user can act on: torchao's optional
# CUDA kernels that do not load on this machine, torch's notes to torchao about its own pytree use,
# and the copyreg FutureWarning that unpickling a torch pytree spec gives.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")
QUIET_WARNINGS = ((FutureWarning, r".*LeafSpec.*"),)


class CliError(Exception):
    pass


def add_model_arguments(p: argparse.ArgumentParser):
    """The model, calibration-data and config options `fxq quantize` and `fxq sensitivity` share.

    Returns the calibration-source group, so a command can add its own sources to it."""
    from fxq.config import PRESETS
    from fxq.cli.sources import BUILTINS

    p.add_argument("model", help="a local Hugging Face model folder, or a built-in: "
                   + "; ".join(f"{k} ({v})" for k, v in BUILTINS.items()))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--calib-images", type=Path, metavar="DIR", help="folder of calibration images")
    src.add_argument("--calib-text", type=Path, metavar="FILE", help="text file, one calibration sentence per line")
    src.add_argument("--calib-synthetic", type=int, metavar="N", help="N random samples (structure checks only)")
    p.add_argument("--config", type=Path, metavar="JSON", help="QuantConfig as JSON (QuantConfig.to_dict format)")
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help="named config (default tensorrt-fp8; with --load-calib, the calibration file's own config)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration batch size (default 8)")
    p.add_argument("--seq-len", type=int, default=64, help="text models: fixed sequence length (default 64)")
    p.add_argument("--attn", choices=["eager", "sdpa"], default="eager", help="attention implementation to load")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return src


def config(args):
    """The QuantConfig read from --config or named by --preset; with neither, None where --load-calib names a file
    (fxq.quantize applies the config saved in it: a per-channel calibration stays per-channel), else tensorrt-fp8."""
    from fxq.config import QuantConfig, preset

    if args.config is not None:
        return QuantConfig.from_file(args.config)
    if args.preset is None and getattr(args, "load_calib", None) is not None:
        return None
    return preset(args.preset or "tensorrt-fp8")


def calibration_items(args) -> list | None:
    """The texts or images of --calib-text / --calib-images, read before the (slow) model load."""
    from fxq.cli.sources import read_images, read_texts

    if args.calib_text is not None:
        return read_texts(args.calib_text)
    if args.calib_images is not None:
        return read_images(args.calib_images)
    return None


def load(args):
    """The model (fxq.cli.sources.Source), after every check that needs no model has passed."""
    import transformers

    from fxq.cli import sources

    if args.quiet:
        transformers.utils.logging.disable_progress_bar()
    source = sources.load_source(args.model, args.seq_len, args.attn)
    max_positions = getattr(getattr(source.model, "config", None), "max_position_embeddings", None)
    if source.kind == "text":
        seq_len(args.seq_len, max_positions)
    return source


def seq_len(n: int, max_positions=None) -> None:
    """validate.seq_len in the CLI's words: the flag's name in the error."""
    from fxq.validate import seq_len as check

    check(n, max_positions, name="--seq-len")


def calibration(args, source, items):
    """(calibration batches, held-out evaluation batch) for the loaded model."""
    from fxq.cli.sources import batched

    if args.calib_text is not None and source.kind != "text":
        raise CliError(f"--calib-text needs a text model; {source.name} takes images (use --calib-images)")
    if args.calib_images is not None and source.kind != "vision":
        raise CliError(f"--calib-images needs a vision model; {source.name} takes text (use --calib-text)")
    if items is not None:  # user data: evaluate on the first calibration batch
        batches = [source.encode(b) for b in batched(items, args.batch_size)]
        return batches, batches[0]
    if args.calib_synthetic is not None:
        n = args.calib_synthetic
        batches = [source.synthetic(min(args.batch_size, n - i)) for i in range(0, n, args.batch_size)]
        return batches, source.synthetic(4)
    if args.load_calib is not None:
        return None, source.synthetic(4)
    if source.default_texts:  # built-in sentences: calibrate on most, evaluate on the held-out rest
        texts = source.default_texts
        calib, held_out = texts[:-N_EVAL_BUILTIN], texts[-N_EVAL_BUILTIN:]
        return [source.encode(b) for b in batched(calib, args.batch_size)], source.encode(held_out)
    flags = "--calib-text or --calib-synthetic N" if source.kind == "text" else \
        "--calib-images DIR or --calib-synthetic N"
    raise CliError(f"no calibration data for {source.name}: pass {flags}")


def quiet_dependencies():
    """Hold back, for this run only, the log lines and warnings listed in QUIET_LOGGERS/QUIET_WARNINGS."""
    from fxq.quiet import quiet

    return quiet(QUIET_LOGGERS, QUIET_WARNINGS)
