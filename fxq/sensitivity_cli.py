"""`fxq sensitivity MODEL ...`: rank a model's attention blocks, GEMMs and LayerNorm outputs by FP8 error."""
from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    from .cli import add_model_arguments

    s = sub.add_parser("sensitivity", help="per-group FP8 sensitivity: each group alone in float, the rest FP8")
    add_model_arguments(s)
    s.add_argument("--plot", type=Path, metavar="PNG", help="write a sorted bar chart of the gains")
    s.add_argument("--json", type=Path, metavar="FILE", help="write the full result as JSON")
    s.add_argument("--top", type=int, default=20, help="rows to print (default 20)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(load_calib=None)


def run(args) -> int:
    import transformers

    import fxq

    from .cli import _calibration, _calibration_items, _config
    from .sources import load_source

    config = _config(args)
    items = _calibration_items(args)
    if args.quiet:
        transformers.utils.logging.disable_progress_bar()
    source = load_source(args.model, args.seq_len, args.attn)
    batches, eval_batch = _calibration(args, source, items)
    result = fxq.sensitivity(source.model, batches[0], batches, [eval_batch], config=config, progress=not args.quiet)
    print(result.table(top=args.top))
    if args.plot:
        result.plot(args.plot)
        print(f"\nplot: {args.plot}")
    if args.json:
        from .calib_io import atomic_write_text

        atomic_write_text(args.json, result.to_json() + "\n")
        print(f"json: {args.json}")
    return 0
