"""Fallback(quick=True): the greedy on the first eighth of the eval batches, then measured on all of them.

What it promises, checked here: the result meets max_error averaged over all the eval batches, as
full forwards measure it; where the proxy batch ranks groups as the whole data does, it makes the exhaustive
path's choices; where it does not, the check corrects it (more groups while over budget, measured
put-backs while under). What it does not promise: the exhaustive path's choices everywhere.
"""
import pytest
import torch

import fxq
from fxq.accuracy.fallback import proxy_batches, search
from fxq.accuracy.greedy import stale_gain
from fxq.accuracy.groups import Evaluator, group_edges
from fxq.accuracy.measure import GroupMeasure
from fxq.errors import ConfigError
from sensitive_models import data, two_blocks
from test_fast_fallback import _setup, fc2_outlier

EVAL4 = data(4, seed=2)  # proxy: the first batch of four


def _plans(setup, budget, kinds=("attention", "gemm"), evals=EVAL4):
    cal, view, evaluator = setup
    exhaustive, quick = (search(view, evaluator, cal.placement, fxq.Fallback(evals, budget, kinds=kinds, **kw),
                                progress=False) for kw in ({"exhaustive": True}, {"quick": True}))
    # the reference: every set measured again with full forwards over every eval batch
    full = GroupMeasure(view, evaluator, group_edges(view.module, cal.placement), exhaustive=True)
    return exhaustive, quick, full


@pytest.mark.parametrize("model, kinds, fraction", [
    (lambda: two_blocks(sensitive=("a",)), ("attention", "gemm"), 0.5),
    (lambda: two_blocks(sensitive=("a", "b")), ("attention", "gemm"), 0.3),
    (fc2_outlier, ("gemm",), 0.3),
])
def test_quick_makes_the_exhaustive_choices_where_the_proxy_ranks_alike(model, kinds, fraction):
    setup = _setup(model(), evals=EVAL4)
    budget = fraction * setup[2].measure()  # the all-FP8 metric
    exhaustive, quick, full = _plans(setup, budget, kinds)
    assert quick.proxy_batches == 1 and exhaustive.proxy_batches == 0
    assert set(quick.groups) == set(exhaustive.groups) and quick.final == exhaustive.final <= budget
    assert quick.checked[0] <= budget  # the proxy's choice held (put-backs may then thin it)
    assert quick.final == full.measure(quick.groups)


@pytest.mark.parametrize("sensitive, fraction", [(("a", "b"), 0.5), ((), 0.5), ((), 0.05), (("a",), 0.05)])
def test_quick_meets_the_budget_on_all_the_eval_data_whatever_the_proxy_says(sensitive, fraction):
    model = two_blocks(sensitive=sensitive)
    setup = _setup(model, evals=EVAL4)
    budget = fraction * setup[2].measure()
    exhaustive, quick, full = _plans(setup, budget)
    assert quick.proxy_batches == 1 and quick.checked  # the quick search ran, and measured its choice
    assert quick.final == full.measure(quick.groups) <= budget  # measured, not estimated
    assert all(c.gain == c.gain and c.flops > 0 for c in quick.choices)


def test_a_misleading_proxy_is_corrected_by_measured_choices():
    """Batch 0 scaled up 10x: its FP8 error is not the rest's, and the proxy's choice measures over budget on
    all batches (1.9x). Quick adds the proxy's next choices, each measured, until the budget holds, and ends
    where the exhaustive search does."""
    evals = [EVAL4[0] * 10] + EVAL4[1:]
    setup = _setup(fc2_outlier(), evals=evals)
    budget = 0.1 * setup[2].measure()
    exhaustive, quick, full = _plans(setup, budget, ("gemm",), evals=evals)
    assert quick.checked[0] > 1.5 * budget and quick.checked[1] > budget  # two corrections at least
    assert quick.final == full.measure(quick.groups) <= budget
    assert set(quick.groups) == set(exhaustive.groups)


def test_quick_says_when_the_budget_is_out_of_reach():
    cal, view, evaluator = _setup(two_blocks(sensitive=("a",)), evals=EVAL4)
    with pytest.raises(ConfigError, match="out of reach: with every gemm group in float"):
        search(view, evaluator, cal.placement, fxq.Fallback(EVAL4, 1e-9, kinds=("gemm",), quick=True),
               progress=False)


def test_the_proxy_is_an_eighth_of_the_eval_batches():
    assert [proxy_batches(n) for n in (1, 2, 7, 8, 16, 17, 64)] == [0, 1, 1, 1, 2, 2, 8]


def test_quick_on_one_eval_batch_is_the_exact_search(capsys):
    """One batch leaves nothing to check a proxy against: the search is the exact one."""
    cal, view, evaluator = _setup(two_blocks(sensitive=("a",)), evals=EVAL4[:1])
    plan = search(view, evaluator, cal.placement, fxq.Fallback(EVAL4[:1], 4e-4, quick=True), progress=True)
    assert plan.proxy_batches == 0 and plan.checked == [] and plan.groups == ("a:attention",)
    assert "(quick)" not in capsys.readouterr().err


def test_quick_prints_its_time_estimate(capsys):
    cal, view, evaluator = _setup(two_blocks(sensitive=("a",)), evals=EVAL4)
    search(view, evaluator, cal.placement, fxq.Fallback(EVAL4, 4e-4, quick=True), progress=True)
    line = next(ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("fxq fallback: "))
    assert "on 1 of 4 eval batches (quick)" in line and "per check of the choice" in line


def test_quick_and_exhaustive_together_are_refused():
    with pytest.raises(ValueError, match="quick=True and exhaustive=True contradict"):
        fxq.Fallback(EVAL4, 0.01, quick=True, exhaustive=True)
    with pytest.raises(TypeError, match="quick must be True or False"):
        fxq.Fallback(EVAL4, 0.01, quick=1)


def test_quick_choice_round_trips_through_a_calibration_file(tmp_path):
    model = two_blocks(sensitive=("a",))
    example, calib = EVAL4[0][:1], data(2)
    qm = fxq.quantize(model, example, calib, progress=False, fallback=fxq.Fallback(EVAL4, 4e-4, quick=True))
    assert qm.fallback_plan.groups == ("a:attention",)
    path = tmp_path / "calib.json"
    qm.save_calibration(path)
    again = fxq.quantize(two_blocks(sensitive=("a",)), example, calibration=path, progress=False)
    assert again.quant_config.fallback == ("a:attention",)
    x = EVAL4[1]
    torch.testing.assert_close(again(x), qm(x), rtol=0, atol=0)


def test_stale_scores_keep_their_share_of_the_error():
    """After a:attention is chosen, b:attention's stale singleton gain is negative in absolute terms (it was
    measured against the larger all-FP8 error); ranked by share of the error it is still the best per FLOP,
    so the greedy re-measures and takes it. The absolute rule took three large GEMMs instead (12.5x the FP16
    FLOPs) on this batch."""
    assert stale_gain(0.5, 0.5, 0.5) == 0.0 and stale_gain(0.3, 0.5, 0.5) == 0.5 - 0.3  # fresh: exact gain
    assert stale_gain(0.9, 1.6, 0.8) == pytest.approx(0.8 * 0.7 / 1.6)  # stale: 44% of the error then and now
    evals = EVAL4[:1]
    cal, view, evaluator = _setup(two_blocks(sensitive=("a", "b")), evals=evals)
    plan = search(view, evaluator, cal.placement, fxq.Fallback(evals, 0.5 * evaluator.measure(), exhaustive=True),
                  progress=False)
    assert plan.groups == ("a:attention", "b:attention")


def test_a_proxy_with_no_error_hands_over_to_the_exact_search(capsys):
    """A metric that scores the (smaller) first batch 0 leaves nothing to scale the budget by: quick says so and
    runs the exact search, which makes the exhaustive choice."""
    def metric(ref, out):
        cos = torch.nn.functional.cosine_similarity(ref.flatten(1), out.flatten(1)).mean()
        return 0.0 if ref.shape[0] == 4 else float(1 - cos)

    evals = [EVAL4[0][:4]] + EVAL4[1:]
    model = two_blocks(sensitive=("a",))
    cal, view, _ = _setup(model, evals=evals)
    evaluator = Evaluator(cal.program.module(), view.module, evals, metric)
    budget = 0.5 * evaluator.measure()
    plans = [search(view, evaluator, cal.placement, fxq.Fallback(evals, budget, metric=metric, **kw), progress=True)
             for kw in ({"quick": True}, {"exhaustive": True})]
    assert "show no FP8 error, so quick=True cannot scale" in capsys.readouterr().err
    quick, exhaustive = plans
    assert quick.proxy_batches == 0 and quick.checked == [] and quick.groups == exhaustive.groups
