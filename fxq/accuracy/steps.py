"""Per-call error of a quantized module against its float module, over recorded calls.

A diffusion transformer is called once per denoising step; FP8 may hurt some steps (the noisiest,
or the last, detailed ones) more than others. `compare_steps` runs the float module and the
quantized one on the same recorded inputs, call by call, and reports how far the outputs are apart:

    with fxq.record_inputs(pipe.transformer) as rec:
        pipe(prompt, num_inference_steps=28)
    steps = fxq.compare_steps(qm, pipe.transformer, rec)
    print(steps.table()); steps.plot("steps.png")

Each call is measured on its own recorded input, so errors do not compound from step to step:
this is the error FP8 adds at that step, not the drift of the whole trajectory.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch

from fxq.capture.program import Inputs
from fxq.verify import compare, first_output


@dataclass(frozen=True)
class StepRow:
    call: int  # the call's number in the recorded run (0-based)
    cosine: float
    sqnr_db: float
    max_abs: float


@dataclass
class StepErrors:
    rows: list[StepRow] = field(default_factory=list)

    def table(self) -> str:
        lines = ["call  cosine    sqnr_db  max_abs", "----  --------  -------  --------"]
        lines += [f"{r.call:<4}  {r.cosine:.6f}  {r.sqnr_db:7.2f}  {r.max_abs:.3e}" for r in self.rows]
        worst = min(self.rows, key=lambda r: r.cosine) if self.rows else None
        if worst is not None:
            lines.append(f"worst call {worst.call}: cosine {worst.cosine:.6f}, sqnr {worst.sqnr_db:.2f} dB")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"rows": [asdict(r) for r in self.rows]}, indent=1)

    def plot(self, path) -> None:
        """Output SQNR (dB) and 1 - cosine against the call index (PNG), written atomically."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from fxq.atomic import staging

        calls = [r.call for r in self.rows]
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.plot(calls, [r.sqnr_db for r in self.rows], "o-", color="tab:blue")
        ax.set_xlabel("call (denoising step)")
        ax.set_ylabel("output SQNR vs float (dB)", color="tab:blue")
        twin = ax.twinx()
        twin.semilogy(calls, [max(1 - r.cosine, 1e-12) for r in self.rows], "s--", color="tab:red")
        twin.set_ylabel("1 - cosine", color="tab:red")
        ax.set_title("FP8 error per call")
        fig.tight_layout()
        from pathlib import Path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with staging(path) as tmp:
            fig.savefig(tmp / path.name, dpi=120, format="png")
        plt.close(fig)


def compare_steps(quantized: torch.nn.Module, reference: torch.nn.Module, recording) -> StepErrors:
    """Error of `quantized` against `reference` on each recorded call (a record_inputs Recording, or
    a list of batches as fxq.quantize's calib_data takes; then calls are numbered 0, 1, ...)."""
    batches = list(getattr(recording, "batches", recording))
    indices = list(getattr(recording, "indices", range(len(batches))))
    if not batches:
        raise ValueError("no recorded calls to compare; fix: record with fxq.record_inputs while the pipeline runs")
    rows = []
    with torch.no_grad():
        for index, batch in zip(indices, batches):
            b = Inputs.of(batch)
            m = compare(first_output(b.call(reference)), first_output(b.call(quantized)))
            rows.append(StepRow(index, m["cosine"], m["sqnr_db"], m["max_abs"]))
    return StepErrors(rows)
