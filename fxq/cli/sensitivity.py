"""`fxq sensitivity MODEL ...`: rank a model's attention blocks, GEMMs and LayerNorm outputs by FP8 error."""
from __future__ import annotations

from pathlib import Path

from fxq.cli import checks as cli_checks
from fxq.cli.common import CliError, add_model_arguments, calibration, calibration_items, config, load


def add_parser(sub) -> None:
    s = sub.add_parser("sensitivity", help="per-group FP8 sensitivity: each group alone in float, the rest FP8")
    add_model_arguments(s)
    s.add_argument("--plot", type=Path, metavar="PNG", help="write a sorted bar chart of the gains")
    s.add_argument("--json", type=Path, metavar="FILE", help="write the full result as JSON")
    s.add_argument("--top", type=int, default=20, help="rows to print (default 20)")
    s.add_argument("--exhaustive", action="store_true",
                   help="a full forward per group instead of starting at its first consumer (same numbers, slower)")
    s.set_defaults(load_calib=None)


def check_arguments(args) -> None:
    """Everything that can be checked before the model loads and every group is measured."""
    cli_checks.before_loading(args, {"--plot": args.plot, "--json": args.json})
    if args.top < 1:
        raise CliError(f"--top must be at least 1, got {args.top}")


def run(args) -> int:
    import fxq

    from fxq.atomic import write_text

    check_arguments(args)
    cfg, items = config(args), calibration_items(args)
    source = load(args)
    batches, eval_batch = calibration(args, source, items)
    result = fxq.sensitivity(source.model, batches[0], batches, [eval_batch], config=cfg, progress=not args.quiet,
                               exhaustive=args.exhaustive)
    print(result.table(top=args.top))
    if args.plot:
        result.plot(args.plot)
        print(f"\nplot: {args.plot}")
    if args.json:
        write_text(args.json, result.to_json() + "\n")
        print(f"json: {args.json}")
    return 0
