"""fxq.accuracy.sensitivity: groups, ranking, FLOP shares, outputs (table / JSON / plot), bad metrics."""
import json

import pytest
import torch

import fxq
from fxq.accuracy.groups import Evaluator, Switch, group_edges
from sensitive_models import data, two_blocks


@pytest.fixture(scope="module")
def result():
    m = two_blocks(sensitive=("a",))
    return fxq.sensitivity(m, data(1, 2)[0], data(2), data(2, seed=2), progress=False)


def test_the_sensitive_attention_block_ranks_first(result):
    rows = result.sorted_rows()
    assert rows[0].group == "a:attention" and rows[0].kind == "attention"
    assert result.baseline > 5e-4  # ~2e-4 without the K offset: block a's K flushes to zero in FP8
    assert rows[0].metric < 0.3 * result.baseline  # alone in float, most of the error is gone
    assert rows[1].gain < 0.1 * rows[0].gain


def test_groups_and_flop_shares(result):
    kinds = {}
    for r in result.rows:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    # per block: 6 GEMMs (q k v o fc1 fc2), 1 attention block, 2 LayerNorm outputs
    assert kinds == {"gemm": 12, "attention": 2, "layer_norm": 4}
    gemm = {r.group: r.gemm_flop_share for r in result.rows if r.kind == "gemm"}
    assert sum(gemm.values()) == pytest.approx(1.0)
    assert gemm["a.fc1:gemm"] == pytest.approx(2 * gemm["a.q:gemm"])  # N = 2*DIM vs DIM
    attn = [r.attention_flop_share for r in result.rows if r.kind == "attention"]
    assert attn == pytest.approx([0.5, 0.5])
    # a LayerNorm output feeds Q, K and V: its share is theirs together
    ln = {r.group: r.gemm_flop_share for r in result.rows if r.kind == "layer_norm"}
    assert ln["a.norm:layer_norm"] == pytest.approx(3 * gemm["a.q:gemm"])


def test_table_json_and_plot(result, tmp_path):
    table = result.table()
    assert table.splitlines()[3].split()[:2] == ["1", "a:attention"]
    doc = json.loads(result.to_json())
    assert doc["rows"][0]["group"] == "a:attention" and len(doc["rows"]) == 18
    result.plot(tmp_path / "sens.png")
    assert (tmp_path / "sens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _view(m, calib):
    from fxq.conversion.fake_quant_view import fake_quant_view
    from fxq.pipeline import Request, StageClock, calibrated

    cal = calibrated(Request.check(m, data(1, 2)[0], calib, progress=False), StageClock())
    return cal, fake_quant_view(cal.program, cal.placement, cal.calibration.amax, cal.codes)


def test_switch_restores_the_graph_exactly():
    m = two_blocks(sensitive=())
    cal, view = _view(m, data(1))
    qm = fxq.quantize(m, data(1, 2)[0], data(1), progress=False)
    x = data(1, seed=3)[0]
    before = view.module(x)
    assert torch.equal(before, qm(x))  # the view computes what conversion writes, bit for bit
    switch = Switch(view)
    groups = group_edges(view.module, cal.placement)
    assert {ge.group.kind for ge in groups} == {"gemm", "attention", "layer_norm"}
    # 12 weights; per block 4 GEMM inputs (2 LayerNorm outputs, o's and fc2's input) and q, k, v, probs
    assert len(switch.float_of) == len(cal.placement.sites) == 12 + 2 * 4 + 2 * 4
    with switch.floated(switch.all_edges()):
        floated = view.module(x)
    torch.testing.assert_close(floated, cal.program.module()(x), rtol=0, atol=0)  # = the float program
    assert torch.equal(view.module(x), before)
    with switch.floated([e for g in groups if g.group.id == "a:attention" for e in g.edges]):
        assert not torch.equal(view.module(x), before)
    assert torch.equal(view.module(x), before)


@pytest.mark.parametrize("metric, error", [
    ("cosine", "must be a callable"),
    (lambda r, q: float("nan"), "finite float"),
    (lambda r, q: "small", "finite float"),
])
def test_bad_metrics_error(metric, error):
    m = two_blocks(sensitive=())
    qm = fxq.quantize(m, data(1, 2)[0], data(1), progress=False)
    with pytest.raises((TypeError, ValueError), match=error):
        Evaluator(m, qm.graph_module, data(1), metric).measure()


def test_custom_metric_is_used():
    m = two_blocks(sensitive=("a",))
    max_abs = lambda ref, out: float((ref - out).abs().max())  # noqa: E731
    r = fxq.sensitivity(m, data(1, 2)[0], data(1), data(1, seed=2), metric=max_abs, progress=False)
    assert r.metric_name == "<lambda>" and r.sorted_rows()[0].group == "a:attention"
