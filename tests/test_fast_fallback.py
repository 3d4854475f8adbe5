"""Fast sensitivity and fallback: cached prefixes give the full forwards' numbers, the proxy-ranked
fallback makes the exhaustive path's choices on models with known answers, and the time estimate shows."""
import pytest
import torch

import fxq
from fxq.accuracy.fallback import search
from fxq.accuracy.groups import Evaluator, group_edges
from fxq.accuracy.measure import GroupMeasure
from fxq.accuracy.rank import Singletons
from fxq.conversion.fake_quant_view import fake_quant_view
from fxq.pipeline import Request, StageClock, calibrated
from hf_models import bert_inputs, small_bert
from sensitive_models import data, two_blocks

EXAMPLE, CALIB, EVAL = data(1, 2)[0], data(2), data(3, seed=2)


def fc2_outlier():
    """No attention trick: one huge fc1 weight gives b.fc2's input one outlier channel, whose per-tensor
    FP8 scale flushes the rest of that input to zero; b.fc2 dominates the error."""
    m = two_blocks(sensitive=())
    with torch.no_grad():
        m.b.fc1.weight[0, 0] = 40.0
    return m


def _setup(model, example=EXAMPLE, calib=CALIB, evals=EVAL):
    cal = calibrated(Request.check(model, example, calib, progress=False), StageClock())
    view = fake_quant_view(cal.program, cal.placement, cal.calibration.amax, cal.codes)
    return cal, view, Evaluator(cal.program.module(), view.module, evals, None)


@pytest.fixture(scope="module")
def sensitive_a():
    return _setup(two_blocks(sensitive=("a",)))


def _both(cal, view, evaluator, **kw):
    groups = group_edges(view.module, cal.placement)
    return (GroupMeasure(view, evaluator, groups, exhaustive=True), GroupMeasure(view, evaluator, groups, **kw),
            [ge.group.id for ge in groups])


@pytest.mark.parametrize("budget", [None, 0])  # 0 bytes: no checkpoint fits, every run starts at the inputs
def test_prefix_runs_equal_full_forwards_bit_for_bit(sensitive_a, budget):
    full, fast, ids = _both(*sensitive_a, memory_budget=budget)
    assert len(ids) == 18 and fast.baseline == full.baseline
    for g in ids:
        assert fast.measure([g]) == full.measure([g]), g
    nodes = len(fast.runner.nodes) * fast.n_batches
    run = fast.runner.nodes_run - nodes  # the single-group runs, after the base pass
    if budget == 0:
        assert fast.runner.checkpoints == [] and run == len(ids) * nodes
    else:  # a group of block b starts half-way down the graph
        assert fast.runner.checkpoints == sorted(set(fast.first.values())) and len(fast.runner.checkpoints) == 14
        assert run < 0.6 * len(ids) * nodes
    # a new base (a:attention in float): sets around it still measure as full forwards do
    fast.rebase(["a:attention"])
    for g in ("b:attention", "a.q:gemm", "b.fc1:gemm"):
        assert fast.measure(["a:attention", g]) == full.measure(["a:attention", g]), g
    assert fast.measure([]) == full.measure([])  # back to all FP8: differs from the base at a:attention


def test_a_kept_measurement_makes_its_rebase_free_and_exact(sensitive_a):
    """The greedy rebases to the set it measured last: keep=True holds that run's checkpoints and the rebase
    adopts them instead of running the pass again, with the same numbers after as a rebase that ran it."""
    full, fast, ids = _both(*sensitive_a)
    _, slow, _ = _both(*sensitive_a)
    chosen = ["a:attention"]
    assert fast.measure(chosen, keep=True) == slow.measure(chosen) == full.measure(chosen)
    before = fast.runner.nodes_run
    fast.rebase(chosen)
    assert fast.runner.nodes_run == before  # no pass ran
    slow.rebase(chosen)
    assert slow.runner.nodes_run > before  # the usual rebase runs one
    for g in ids:
        if g not in chosen:
            assert fast.measure(chosen + [g]) == slow.measure(chosen + [g]) == full.measure(chosen + [g]), g
    fast.measure(["b:attention"], keep=True)  # kept for another set than the next rebase's: not adopted
    fast.rebase(["a:attention", "b.fc1:gemm"])
    assert fast.measure(["a:attention", "b.fc1:gemm", "b.q:gemm"]) == \
        full.measure(["a:attention", "b.fc1:gemm", "b.q:gemm"])


def test_a_set_measured_again_reuses_its_batches(sensitive_a):
    """The fallback ranks a singleton on batch 0, then may measure it on every batch: batch 0 is not run again,
    and the value is the full forwards' one, bit for bit."""
    full, fast, ids = _both(*sensitive_a)
    g = "b.fc1:gemm"
    assert fast.measure_alone([g], batches=[0]) == full.measure([g], batches=[0])
    before = fast.runner.nodes_run
    assert fast.measure_alone([g]) == full.measure([g])
    per_batch = len(fast.runner.nodes) - fast.runner.start_for(fast.first[g])
    assert fast.runner.nodes_run - before == (fast.n_batches - 1) * per_batch
    before = fast.runner.nodes_run
    assert fast.measure([g], keep=True) == full.measure([g])  # a kept run saves checkpoints: every batch runs
    assert fast.runner.nodes_run - before == fast.n_batches * per_batch


def test_prefix_runs_with_keyword_inputs_and_masks():
    torch.manual_seed(0)
    batches = [bert_inputs(2, 16) for _ in range(2)]
    full, fast, ids = _both(*_setup(small_bert(), batches[0], batches, batches))
    assert fast.baseline == full.baseline
    assert all(fast.measure([g]) == full.measure([g]) for g in ids)


@pytest.mark.parametrize("model, kinds, budget, expected", [
    (lambda: two_blocks(sensitive=("a",)), ("attention", "gemm"), 4e-4, ("a:attention",)),
    (lambda: two_blocks(sensitive=("a", "b")), ("attention", "gemm"), 4e-4, {"a:attention", "b:attention"}),
    (fc2_outlier, ("gemm",), 4e-4, ("b.fc2:gemm",)),
])
def test_fast_fallback_makes_the_exhaustive_choices(model, kinds, budget, expected):
    cal, view, evaluator = _setup(model())
    plans = [search(view, evaluator, cal.placement, fxq.Fallback(EVAL, budget, kinds=kinds, exhaustive=ex),
                    progress=False) for ex in (True, False)]
    exhaustive, fast = plans
    assert fast.groups == exhaustive.groups and fast.final == exhaustive.final <= budget
    assert (set(fast.groups) if isinstance(expected, set) else fast.groups) == expected
    assert [c.gain for c in fast.choices] == [c.gain for c in exhaustive.choices]


def test_singletons_measure_the_top_estimates_exactly_and_bound_the_rest():
    """The rule, on a metric given as a table: 12 groups of equal FLOPs; the estimate (batch 0) is the exact
    metric less a known error."""
    exact = {f"g{i}": 0.5 + 0.05 * i for i in range(12)}  # metric with g_i alone in float: g0 gains most
    error = {g: 0.0 for g in exact} | {"g1": 0.02, "g9": 0.6}  # g9's estimate says it gains the most
    measured = []

    def measure(floated, batches=None):
        if not floated:
            return 2.0
        (g,) = floated
        if batches is None:
            measured.append(g)
            return exact[g]
        return exact[g] - error[g]

    flops = {g: 1 for g in exact}
    s = Singletons(measure, flops, current=2.0, n_batches=4, min_exact=3, exhaustive=False)
    assert measured == ["g9", "g0", "g1"] and s.exact == {g: exact[g] for g in measured}
    assert s.error == pytest.approx(0.6)  # g9's: every unmeasured estimate now stands 1.2 lower
    assert s.lowest_possible("g0") == exact["g0"] and s.lowest_possible("g2") == pytest.approx(exact["g2"] - 1.2)
    assert s.measure_exact("g2") == exact["g2"] and s.lowest_possible("g2") == exact["g2"]
    measured.clear()
    s = Singletons(measure, flops, current=2.0, n_batches=4, min_exact=3, exhaustive=True)
    assert measured == list(exact) and s.exact == exact and s.estimate == {}


def test_time_estimate_is_printed_before_the_long_part(sensitive_a, capsys):
    cal, view, evaluator = sensitive_a
    plan = search(view, evaluator, cal.placement, fxq.Fallback(EVAL, 4e-4), progress=True)
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("fxq fallback: "))
    assert "14 candidate groups; ranking them takes about" in line and " s per group left in float" in line
    assert "one full pass over 3 eval batches:" in line and plan.groups == ("a:attention",)
    assert 0 <= err.index("ranking them takes about") < err.index("eval [")  # before the progress bar starts
    search(view, evaluator, cal.placement, fxq.Fallback(EVAL, 4e-4), progress=False)
    assert capsys.readouterr().err == ""
    fxq.sensitivity(two_blocks(sensitive=()), EXAMPLE, CALIB[:1], EVAL[:1], progress=True)
    assert "fxq sensitivity: 18 groups, about " in capsys.readouterr().err


def test_exhaustive_flag_is_checked():
    with pytest.raises(TypeError, match="exhaustive must be True or False"):
        fxq.Fallback(EVAL, 0.01, exhaustive="yes")
