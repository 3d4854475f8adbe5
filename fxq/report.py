"""What was quantized, where, with which scale, and what was left in float and why."""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field

from fxq.conversion import ops
from fxq.placement.place import SKIP_REASONS, Placement


def nothing_to_do(p: Placement) -> str | None:
    """The warning for a placement with no FP8 GEMM, attention block or conv (None when there is one)."""
    from fxq.accuracy.groups import fp8_attention_blocks, fp8_convs, fp8_gemms

    if fp8_gemms(p) or fp8_convs(p) or fp8_attention_blocks(p):
        return None
    parts = []
    for what, label, total in (("conv", "convs", p.convs), ("gemm", "GEMMs", p.gemms),
                               ("attention", "attention blocks", p.attention_blocks)):
        why = Counter(k.reason for k in p.skips if k.what == what)
        reasons = ", ".join(f"{r}" if n == total else f"{r} x{n}" for r, n in sorted(why.items()))
        parts.append(f"{total} {label}" + (f" skipped ({reasons})" if reasons else ""))
    disabled = sorted({k.what for k in p.skips if k.reason == "disabled_by_config" and "." in k.what})
    if disabled:
        parts.append(f"roles set to None by the config: {', '.join(disabled)}")
    return (f"fxq: 0 FP8 sites: {'; '.join(parts)}. Nothing in this model will run in FP8 (the export is plain "
            f"float); see qm.report() for every skip and fxq.placement.place.SKIP_REASONS for what each means")


def warn_if_nothing_to_do(p: Placement) -> bool:
    """Warn once when `p` quantizes nothing. Returns whether it warned."""
    message = nothing_to_do(p)
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=4)  # the user's fxq.quantize / fxq.sensitivity call
    return message is not None


@dataclass
class Report:
    placement: Placement
    amax: dict[str, float]
    fallback_gains: dict[str, float] = field(default_factory=dict)  # group id -> measured gain

    def rows(self) -> list[dict]:
        rows = []
        for s in self.placement.sites:
            a = s.fixed_amax if s.fixed_amax is not None else self.amax.get(s.key)
            rows.append({"module": s.module, "role": s.role, "status": "fp8", "amax": a,
                         "scale": None if a is None else (ops.weight_scale_from_amax(a) if s.is_weight else ops.scale_from_amax(a)),
                         "calibrator": "fixed" if s.fixed_amax is not None else ("max" if s.is_weight else s.spec.calibrator),
                         "readers": len(s.consumers), "reason": ""})
        for k in self.placement.skips:
            detail = k.detail
            if k.reason == "fallback" and k.detail in self.fallback_gains:
                detail = f"{k.detail}, gain {self.fallback_gains[k.detail]:.3g}"
            rows.append({"module": k.module, "role": k.what, "status": "skipped", "amax": None, "scale": None,
                         "calibrator": "", "readers": 0, "reason": k.reason + (f" ({detail})" if detail else "")})
        return rows

    def summary(self) -> str:
        p = self.placement
        roles = ", ".join(f"{r} {n}" for r, n in sorted(p.role_counts().items()))
        from fxq.accuracy.groups import fp8_attention_blocks, fp8_convs, fp8_gemm_flop_share, fp8_gemms

        # Counted from the sites, not from the skips: a GEMM whose input an override left in float
        # is not skipped, and not quantized either.
        quantized_gemms = len(fp8_gemms(p))
        blocks_ok = fp8_attention_blocks(p)
        return (f"{len(p.sites)} FP8 quantizers ({roles}); GEMMs quantized {quantized_gemms}/{p.gemms} "
                f"({100 * fp8_gemm_flop_share(p):.1f}% of GEMM FLOPs); "
                f"attention blocks quantized {blocks_ok}/{p.attention_blocks}; "
                f"convs quantized {len(fp8_convs(p))}/{p.convs}; skipped {len(p.skips)}"
                + (f"; {len(p.tied)} split attention outputs: their O-projection inputs share one scale"
                   if p.tied else ""))

    def to_dict(self) -> dict:
        reasons = {k.reason for k in self.placement.skips}
        return {"summary": self.summary(), "rows": self.rows(),
                "reasons": {r: SKIP_REASONS[r] for r in sorted(reasons)}}

    def table(self) -> str:
        head = ("module", "role", "status", "amax", "scale", "calib", "reason")
        body = [(r["module"] or "<root>", r["role"], r["status"],
                 "" if r["amax"] is None else f"{r['amax']:.4g}",
                 "" if r["scale"] is None else f"{r['scale']:.3e}", r["calibrator"], r["reason"])
                for r in self.rows()]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [line(head), line(tuple("-" * w for w in widths)), *(line(b) for b in body), "", self.summary()]
        used = Counter(k.reason for k in self.placement.skips)
        out += [f"  {r}: {SKIP_REASONS[r]}" for r in sorted(used)]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()
