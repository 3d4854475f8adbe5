"""Sensitivity: the metric with one group alone left in float and everything else in FP8.

Groups are each attention block (its q, k, v and probs quantizers together), each GEMM (its
input and weight quantizers) and each LayerNorm output (the one shared quantizer of its Q/K/V or
FC1 readers). Capture and calibration run once; every group is then measured on one fake-quant
view of the calibrated program (fxq/accuracy/groups.py switches it), against that program's float outputs,
computed once. Each group's forward starts at its first consumer, from activations cached once
(fxq/accuracy/measure.py): the same numbers as full forwards.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from fxq.conversion.fake_quant_view import fake_quant_view
from fxq.accuracy.groups import Evaluator, GroupEdges, group_edges
from fxq.accuracy.measure import GroupMeasure, minutes
from fxq.pipeline import Request, StageClock, calibrated


@dataclass
class Row:
    group: str  # group id, e.g. "encoder.layer.0.attention:attention"
    kind: str  # "attention", "gemm", "conv" or "layer_norm"
    module: str
    metric: float  # with this group alone in float
    gain: float  # all-FP8 metric minus `metric`: what leaving this group in float buys
    gemm_flop_share: float  # this group's share of all GEMM and conv FLOPs (LayerNorm: its readers')
    attention_flop_share: float  # this group's share of all attention matmul FLOPs


@dataclass
class SensitivityResult:
    baseline: float  # the metric with every group in FP8
    rows: list[Row] = field(default_factory=list)
    metric_name: str = "1 - cosine"
    eval_batches: int = 0
    seconds: float = 0.0

    def sorted_rows(self) -> list[Row]:
        return sorted(self.rows, key=lambda r: -r.gain)

    def to_json(self) -> str:
        return json.dumps({"metric": self.metric_name, "all_fp8": self.baseline, "eval_batches": self.eval_batches,
                           "seconds": self.seconds, "rows": [asdict(r) for r in self.sorted_rows()]}, indent=1)

    def table(self, top: int | None = None) -> str:
        head = ("rank", "group", "kind", "metric if float", "gain", "GEMM+conv FLOPs", "attn FLOPs")
        rows = self.sorted_rows()[:top]
        body = [(str(i + 1), r.group, r.kind, f"{r.metric:.3e}", f"{r.gain:+.3e}", f"{100 * r.gemm_flop_share:.1f}%",
                 f"{100 * r.attention_flop_share:.1f}%") for i, r in enumerate(rows)]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        return "\n".join([f"all groups FP8: {self.metric_name} = {self.baseline:.3e} "
                          f"({self.eval_batches} eval batches, {self.seconds:.0f} s)",
                          line(head), line(tuple("-" * w for w in widths)), *(line(b) for b in body)])

    def plot(self, path, top: int | None = 40) -> None:
        """A bar chart of each group's gain, largest first (PNG), written atomically: rendered into
        fxq.atomic's staging folder and renamed over `path` (a symlink there is replaced, not followed)."""
        from pathlib import Path

        import matplotlib

        from fxq.atomic import staging

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.sorted_rows()[:top]
        colors = {"attention": "tab:red", "gemm": "tab:blue", "conv": "tab:purple", "layer_norm": "tab:green"}
        fig, ax = plt.subplots(figsize=(9, 0.22 * len(rows) + 1.5))
        ax.barh(range(len(rows)), [r.gain for r in rows], color=[colors[r.kind] for r in rows])
        ax.set_yticks(range(len(rows)), [r.group for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"gain in {self.metric_name} when left in float (all FP8: {self.baseline:.2e})")
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
        ax.legend(handles, list(colors), loc="lower right", fontsize=8)
        ax.set_title(f"fxq sensitivity (top {len(rows)} of {len(self.rows)} groups)")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with staging(path) as tmp:
                fig.savefig(tmp / path.name, dpi=120)
        finally:
            plt.close(fig)


def flop_shares(groups: list[GroupEdges], placement) -> dict[str, tuple[float, float]]:
    # Convolutions count with GEMMs: both are weight x activation products TensorRT runs in FP8.
    gemm_total = sum(g.flops for g in placement.groups if g.kind in ("gemm", "conv")) or 1
    attn_total = sum(g.flops for g in placement.groups if g.kind == "attention") or 1
    gemm_flops = {g.nodes[0]: g.flops for g in placement.groups if g.kind in ("gemm", "conv")}
    out = {}
    for ge in groups:
        g = ge.group
        if g.kind in ("gemm", "conv"):
            out[g.id] = (g.flops / gemm_total, 0.0)
        elif g.kind == "attention":
            out[g.id] = (0.0, g.flops / attn_total)
        else:  # a LayerNorm output feeds GEMMs: those are what run in float without its quantizer
            readers = {c.name for _, c in ge.edges}
            out[g.id] = (sum(f for n, f in gemm_flops.items() if n in readers) / gemm_total, 0.0)
    return out


def measure_groups(groups: GroupMeasure, ids: list[str], progress: bool = True,
                   desc: str = "fxq sensitivity") -> dict[str, float]:
    """Each group alone in float, the rest FP8; an estimate of the time it takes first (stderr)."""
    if progress:
        eta = sum(groups.seconds([g]) for g in ids)
        tqdm.write(f"{desc}: {len(ids)} groups, about {minutes(eta)} (one full pass over {groups.n_batches} eval "
                   f"batches: {groups.full_seconds:.1f} s)", file=sys.stderr)
    return {g: groups.measure([g]) for g in tqdm(ids, desc=desc, unit="group", disable=not progress)}


def sensitivity(model, example_inputs, calib_data, eval_data, *, config=None, metric=None, progress: bool = True,
                calibration=None, exhaustive: bool = False):
    """Rank attention blocks, GEMMs and LayerNorm outputs by what leaving each alone in float gains.

    Captures and calibrates once (calib_data, or a saved calibration=), then measures each group on
    the fake-quant view of the calibrated program against that program's float outputs, each
    forward starting at the group's first consumer from cached activations (exhaustive=True: full
    forwards, the same numbers slower). metric(reference_output, quantized_output) -> float, lower
    is better, averaged over the batches of eval_data; the default is 1 - cosine of the first
    output. Returns a SensitivityResult with .table(), .to_json() and .plot(path).
    """
    t0 = time.perf_counter()
    cal = calibrated(Request.check(model, example_inputs, calib_data, config, calibration, progress=progress),
                     StageClock())
    view = fake_quant_view(cal.program, cal.placement, cal.calibration.amax, cal.codes)
    evaluator = Evaluator(cal.program.module(), view.module, eval_data, metric)
    groups = group_edges(view.module, cal.placement)
    measure = GroupMeasure(view, evaluator, groups, exhaustive=exhaustive)
    baseline = measure.baseline
    values = measure_groups(measure, [ge.group.id for ge in groups], progress)
    shares = flop_shares(groups, cal.placement)
    name = "1 - cosine" if metric is None else getattr(metric, "__name__", "metric")
    rows = [Row(ge.group.id, ge.group.kind, ge.group.module, values[ge.group.id], baseline - values[ge.group.id],
                *shares[ge.group.id]) for ge in groups]
    return SensitivityResult(baseline, rows, name, len(evaluator.batches), time.perf_counter() - t0)
