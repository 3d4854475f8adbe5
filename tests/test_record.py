"""fxq.record_inputs: calls recorded while user code runs, sub-sampled evenly, usable as calib_data."""
import pytest
import torch
from torch import nn

import fxq
from fxq.calibration.record import _spread


class StepModel(nn.Module):
    """A denoiser-shaped module: hidden states positional, timestep keyword, a non-tensor option."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.t_embed = nn.Linear(1, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, hidden_states, timestep=None, return_dict=True):
        h = hidden_states + self.t_embed(timestep[:, None, None].float())
        out = self.fc2(torch.relu(self.fc1(h)))
        return {"sample": out} if return_dict else (out,)


def run_pipeline(model, steps: int, batch: int = 2):
    x = torch.randn(batch, 16, 32)
    for t in torch.linspace(999, 0, steps):
        x = x - 0.01 * model(x, timestep=t.expand(batch), return_dict=False)[0]
    return x


def test_every_call_kept_with_its_positional_keyword_and_plain_arguments():
    model = StepModel().eval()
    with torch.no_grad(), fxq.record_inputs(model) as rec:
        run_pipeline(model, steps=5)
    assert rec.calls == 5 and len(rec.batches) == 5 and rec.indices == [0, 1, 2, 3, 4]
    b = rec.batches[2]
    assert len(b.args) == 1 and set(b.kwargs) == {"timestep", "return_dict"}
    assert b.kwargs["return_dict"] is False  # non-tensor arguments kept as they were
    assert not b.args[0].requires_grad and b.args[0].shape == (2, 16, 32)
    assert rec.example is rec.batches[0]
    assert [float(b.kwargs["timestep"][0]) for b in rec.batches] == pytest.approx([999, 749.25, 499.5, 249.75, 0])


def test_hook_removed_after_the_block():
    model = StepModel().eval()
    with fxq.record_inputs(model) as rec:
        run_pipeline(model, steps=2)
    run_pipeline(model, steps=3)
    assert rec.calls == 2 and not model._forward_pre_hooks


@pytest.mark.parametrize("calls, keep", [(28, 8), (50, 64), (1000, 10), (7, 1), (33, 4)])
def test_max_batches_keeps_an_even_spread(calls, keep):
    model = StepModel().eval()
    with torch.no_grad(), fxq.record_inputs(model, max_batches=keep) as rec:
        run_pipeline(model, steps=calls, batch=1)
    idx = rec.indices
    assert rec.calls == calls and len(idx) == min(keep, calls) == len(rec.batches)
    assert idx[0] == 0 and idx == sorted(set(idx))
    if keep > 1 and calls > keep:
        gaps = [b - a for a, b in zip(idx, idx[1:])]
        assert idx[-1] >= calls - 1 - max(gaps)  # the end of the run is covered
        assert max(gaps) <= 2 * min(gaps) + 2 and max(gaps) <= 2 * (calls - 1) / (keep - 1) + 2
    assert len(rec._kept) < 2 * keep  # never holds more than twice the budget


def test_spread_picks_first_and_last():
    assert _spread(10, 3) == [0, 4, 9] or _spread(10, 3) == [0, 5, 9]
    assert _spread(3, 5) == [0, 1, 2]


def test_recorded_calls_calibrate_quantize():
    model = StepModel().eval()
    with torch.no_grad(), fxq.record_inputs(model, max_batches=4) as rec:
        ref = run_pipeline(model, steps=10)
    qm = fxq.quantize(model, rec.example, rec.batches, progress=False)
    assert qm.calibration_batches == 4
    assert qm.placement.count("linear.weight") == 2  # fc1, fc2 (t_embed has K=1: small_gemm)
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))  # noqa: E731
    with torch.no_grad():
        per_call = [cos(b.call(model)[0], b.call(qm)[0]) for b in rec.batches]  # measured 0.9985-0.9991
        out = run_pipeline(qm, steps=10)
    assert min(per_call) > 0.998
    assert cos(out, ref) > 0.95  # ten steps compound the error (measured 0.977)


def test_device_moves_recorded_tensors():
    model = StepModel().eval()
    with torch.no_grad(), fxq.record_inputs(model, device="meta") as rec:
        run_pipeline(model, steps=2)
    assert rec.batches[0].args[0].device.type == "meta"


def test_bad_arguments_and_no_calls():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        with fxq.record_inputs(lambda x: x):
            pass
    with pytest.raises(ValueError, match="max_batches must be a positive"):
        with fxq.record_inputs(StepModel(), max_batches=0):
            pass
    with fxq.record_inputs(StepModel()) as rec:
        pass
    with pytest.raises(ValueError, match="saw no call"):
        rec.example


def test_compare_steps_reports_each_recorded_call(tmp_path):
    model = StepModel().eval()
    with torch.no_grad(), fxq.record_inputs(model, max_batches=5) as rec:
        run_pipeline(model, steps=12)
    qm = fxq.quantize(model, rec.example, rec.batches[:2], progress=False)  # calibrated on the first steps only
    steps = fxq.compare_steps(qm, model, rec)
    assert [r.call for r in steps.rows] == rec.indices
    b = rec.batches[3]
    with torch.no_grad():
        want = torch.nn.functional.cosine_similarity(b.call(model)[0].flatten().double(),
                                                     b.call(qm)[0].flatten().double(), dim=0)
    assert steps.rows[3].cosine == pytest.approx(float(want), abs=1e-9)
    assert all(0.9 < r.cosine < 1.0 and r.sqnr_db > 10 for r in steps.rows)
    same = fxq.compare_steps(model, model, rec.batches)  # a plain list numbers calls 0, 1, ...
    assert [r.call for r in same.rows] == list(range(5)) and all(r.cosine == pytest.approx(1.0, abs=1e-12) for r in same.rows)
    assert "worst call" in steps.table()
    steps.plot(tmp_path / "steps.png")
    assert (tmp_path / "steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["steps.png"]  # no staging leftovers
    with pytest.raises(ValueError, match="no recorded calls"):
        fxq.compare_steps(qm, model, [])
