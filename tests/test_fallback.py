"""fxq.Fallback: budget met with the fewest FP16 groups, TensorRT-valid placement, saved and reloaded."""
import math

import onnx
import pytest
import torch

import fxq
from fxq.errors import ConfigError
from fxq.accuracy.groups import Evaluator, fp8_attention_blocks, fp8_gemm_flop_share
from onnx_post.checker import check_model
from sensitive_models import data, two_blocks

EXAMPLE = data(1, 2)[0]
CALIB, EVAL = data(2), data(2, seed=2)


def _metric(qm, model, batches=EVAL):
    return Evaluator(model, qm.graph_module, batches, None).measure()


@pytest.fixture(scope="module")
def one_sensitive():
    m = two_blocks(sensitive=("a",))
    return m, fxq.quantize(m, EXAMPLE, CALIB, fallback=fxq.Fallback(EVAL, max_error=4e-4), progress=False)


def test_budget_met_with_the_fewest_fallbacks(one_sensitive):
    m, qm = one_sensitive
    plan = qm.fallback_plan
    assert plan.all_fp8 > 5e-4 and plan.final <= 4e-4
    assert plan.groups == ("a:attention",) and plan.choices[0].gain > 0
    assert _metric(qm, m) == pytest.approx(plan.final, rel=1e-9)  # the rebuilt graph is the one measured
    assert fp8_attention_blocks(qm.placement) == 1 and fp8_gemm_flop_share(qm.placement) == 1.0
    assert [(k.module, k.what, k.reason) for k in qm.placement.skips] == [("a", "attention", "fallback")]
    assert not [s for s in qm.placement.sites if s.module == "a" and s.role.startswith("attn.")]


def test_two_sensitive_blocks_need_both_and_nothing_else():
    m = two_blocks(sensitive=("a", "b"))
    qm = fxq.quantize(m, EXAMPLE, CALIB, fallback=fxq.Fallback(EVAL, max_error=4e-4), progress=False)
    assert sorted(qm.fallback_plan.groups) == ["a:attention", "b:attention"]
    assert qm.fallback_plan.all_fp8 > 1e-3 and qm.fallback_plan.final <= 4e-4
    assert fp8_attention_blocks(qm.placement) == 0
    # a budget above the all-FP8 metric needs no fallback; GEMM-only fallback keeps attention in FP8
    loose = fxq.quantize(m, EXAMPLE, CALIB, fallback=fxq.Fallback(EVAL, 1.0), progress=False)
    assert loose.fallback_plan.choices == [] and fp8_attention_blocks(loose.placement) == 2
    budget = 0.97 * qm.fallback_plan.all_fp8
    gemms = fxq.quantize(m, EXAMPLE, CALIB, fallback=fxq.Fallback(EVAL, budget, kinds=("gemm",)), progress=False)
    assert gemms.fallback_plan.final <= budget and gemms.fallback_plan.choices
    assert all(c.kind == "gemm" for c in gemms.fallback_plan.choices)
    assert fp8_attention_blocks(gemms.placement) == 2 and fp8_gemm_flop_share(gemms.placement) < 1.0


def test_calibration_file_reproduces_the_fallback(one_sensitive, tmp_path):
    m, qm = one_sensitive
    qm.save_calibration(tmp_path / "c.json")
    again = fxq.quantize(m, EXAMPLE, calibration=tmp_path / "c.json", progress=False)
    assert again.quant_config.fallback == ("a:attention",)
    assert again.placement.keys() == qm.placement.keys() and again.placement.skips == qm.placement.skips
    x = data(1, seed=5)[0]
    assert torch.equal(again(x), qm(x))
    table = again.report().table()
    assert "fallback (a:attention, gain" in table and "attention blocks quantized 1/2" in table


def _projections(rep):
    return [g for g in rep.gemms if g.module not in ("a", "b")]  # not the attention BMMs


def test_fallback_placement_is_tensorrt_valid(one_sensitive, tmp_path):
    _, qm = one_sensitive
    path = qm.export_onnx(tmp_path / "fallback.onnx", dtype=torch.float16).path
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") == sum(not s.is_weight for s in qm.placement.sites)
    rep = check_model(path)
    assert len(_projections(rep)) == 12 and all(g.ready for g in _projections(rep))
    ready = {a.module: a for a in rep.attention}
    assert ready["b"].ready and not ready["a"].ready
    assert {"q_not_fp8", "k_not_fp8", "v_not_fp8", "softmax_not_quantized"} <= set(ready["a"].reasons)


def test_gemm_fallback_keeps_the_shared_layernorm_quantizer_for_the_others(tmp_path):
    m = two_blocks(sensitive=())
    qm = fxq.quantize(m, EXAMPLE, CALIB, fxq.QuantConfig(fallback=("a.q:gemm",)), progress=False)
    ln = next(s for s in qm.placement.sites if s.key == "a.norm:layer_norm.output")
    q_node = next(g.nodes[0] for g in qm.placement.groups if g.id == "a.q:gemm")
    assert len(ln.consumers) == 2 and q_node not in ln.consumers  # K and V keep the shared Q/DQ
    rep = check_model(qm.export_onnx(tmp_path / "m.onnx", dtype=torch.float16).path)
    bad = [g for g in _projections(rep) if not g.ready]
    assert [g.module for g in bad] == ["a.q"] and {"input_a_not_dq", "input_b_not_dq"} <= set(bad[0].reasons)
    assert all(a.ready for a in rep.attention)


@pytest.mark.parametrize("budget, error", [
    (-0.1, ValueError), (math.nan, ValueError), (math.inf, ValueError), ("0.01", TypeError), (True, TypeError),
    (None, TypeError),
])
def test_bad_budgets_error(budget, error):
    with pytest.raises(error, match="max_error"):
        fxq.Fallback(EVAL, budget)


def test_bad_metric_and_kinds_error():
    with pytest.raises(TypeError, match="callable"):
        fxq.Fallback(EVAL, 0.01, metric="cosine")
    with pytest.raises(ValueError, match="kinds"):
        fxq.Fallback(EVAL, 0.01, kinds=("layer_norm",))
    m = two_blocks(sensitive=())
    with pytest.raises(ValueError, match="finite float"):
        fxq.quantize(m, EXAMPLE, CALIB, fallback=fxq.Fallback(EVAL, 0.01, metric=lambda r, q: math.inf),
                     progress=False)


def test_unknown_fallback_ids_and_unreachable_budgets_error():
    m = two_blocks(sensitive=())
    with pytest.raises(ConfigError, match="a.q:gemm"):
        fxq.quantize(m, EXAMPLE, CALIB, fxq.QuantConfig(fallback=("a.qq:gemm",)), progress=False)
    # a metric that never reaches 0: no fallback can meet a zero budget
    offset = lambda r, q: 1.0 + float((r - q).abs().mean())  # noqa: E731
    with pytest.raises(ConfigError, match="out of reach"):
        fxq.quantize(m, EXAMPLE, CALIB, fallback=fxq.Fallback(EVAL, 0.5, metric=offset), progress=False)


def test_cli_sensitivity_and_fallback(vit_folder, tmp_path, capsys):
    from fxq.cli.main import main

    model, images = str(vit_folder / "model"), str(vit_folder / "images")
    rc = main(["sensitivity", model, "--calib-images", images, "--batch-size", "4", "--plot", str(tmp_path / "s.png"),
               "--json", str(tmp_path / "s.json"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "all groups FP8: 1 - cosine" in out and (tmp_path / "s.png").stat().st_size > 1000
    rows = __import__("json").loads((tmp_path / "s.json").read_text())["rows"]
    assert {r["kind"] for r in rows} == {"attention", "gemm", "layer_norm"}
    # a random ViT is far from its float outputs in FP8: a tiny budget needs some groups in FP16
    rc = main(["quantize", model, "--calib-images", images, "--batch-size", "4", "--fallback-max-error", "1e-5",
               "--save-calib", str(tmp_path / "c.json"), "--out", str(tmp_path / "m.onnx"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "fallback: 1 - cosine" in out and "groups in FP16" in out
    saved = __import__("json").loads((tmp_path / "c.json").read_text())
    assert saved["fallback"]["groups"] and set(saved["fallback"]["groups"]) == set(saved["config"]["fallback"])
    for bad in ("-1", "nan"):
        rc = main(["quantize", model, "--calib-images", images, "--fallback-max-error", bad,
                   "--out", str(tmp_path / "x.onnx"), "--quiet"])
        assert rc == 2 and "max_error must be a finite number >= 0" in capsys.readouterr().err
