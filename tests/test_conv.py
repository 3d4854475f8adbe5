"""FP8 convolutions (issue 16): records, TensorRT's placement rules, ONNX structure, the checker, the no-op warning."""
import warnings
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import fxq
from fxq import roles as R
from fxq.accuracy.groups import fp8_convs
from fxq.accuracy.sensitivity import flop_shares
from fxq.accuracy.groups import GroupEdges
from fxq.capture.program import capture_program
from fxq.config import QuantConfig, RoleSpecs, preset
from fxq.placement import records
from fxq.placement.place import SKIP_REASONS, place
from fxq.report import nothing_to_do
from fxq.verify import compare, first_output, run_onnx
from onnx_post.check_cli import main as check_main
from onnx_post.checker import check_model
from onnx_post.checker_report import REASONS
from conv_models import ResBlock, family
from onnx_graphs import FP16, const, fp8_zero, model as onnx_model

CONV_REASONS = ("conv_grouped", "conv_channels_not_16", "conv_kernel_too_large")


def _placed(model, example, config=None):
    ep = capture_program(model, example, True)
    return ep, place(ep.graph_module, config)


def test_matcher_records_conv1d_2d_3d_with_geometry_and_flops():
    class Convs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv1d(16, 32, 3, padding=1)
            self.b = torch.nn.Conv2d(16, 32, 3, stride=2)
            self.c = torch.nn.Conv3d(16, 16, 1, bias=False)
            self.t = torch.nn.ConvTranspose2d(16, 16, 2, stride=2)  # deconvolution: not recorded

        def forward(self, x1, x2, x3):
            return self.a(x1).sum() + self.b(x2).sum() + self.c(x3).sum() + self.t(x2).sum()

    ep = capture_program(Convs().eval(), (torch.randn(2, 16, 8), torch.randn(2, 16, 9, 9), torch.randn(2, 16, 4, 4, 4)))
    recs = {r.module: r for _, r in records.convs(ep.graph_module)}
    assert sorted(recs) == ["a", "b", "c"]
    a, b, c = recs["a"], recs["b"], recs["c"]
    assert (a.dims, a.in_channels, a.out_channels, a.kernel, a.padding, a.bias_arg) == (1, 16, 32, (3,), (1,), 2)
    assert (b.dims, b.stride, b.padding, b.groups, b.group) == (2, (2, 2), (0, 0), 1, "b:conv")
    assert (c.dims, c.kernel, c.bias_arg, c.weight) == (3, (1, 1, 1), None, "c.weight")
    assert b.flops == 2 * (2 * 32 * 4 * 4) * 16 * 9  # 2 * output elements * in/groups * taps
    assert c.is_patch_embedding and not a.is_patch_embedding and not b.is_patch_embedding


def test_placement_rules_reasons_and_one_quantizer_for_a_shared_group_norm():
    _, p = _placed(ResBlock().eval(), torch.randn(2, 3, 16, 16))
    skips = {(k.module, k.reason) for k in p.skips}
    assert skips == {("stem", "conv_channels_not_16"), ("dw", "conv_grouped"), ("out", "conv_channels_not_16")}
    assert p.convs == 5 and [g.nodes[0] for g in fp8_convs(p)] == [r.node for r in p.conv_records[1:3]]
    (shared,) = [s for s in p.sites if s.role == R.CONV_INPUT]  # GroupNorm output read by c1 and c2
    assert len(shared.consumers) == 2 and p.count(R.CONV_WEIGHT) == 2
    assert {g.kind for g in p.groups} == {"conv"} and all(g.flops > 0 for g in p.groups)
    assert all(r in SKIP_REASONS for r in CONV_REASONS)


def test_roles_off_config_round_trip_and_presets():
    _, p = _placed(ResBlock().eval(), torch.randn(2, 3, 16, 16), QuantConfig(roles=RoleSpecs(conv_input=None)))
    assert not p.sites and Counter(k.reason for k in p.skips)["disabled_by_config"] == 2  # c1, c2: weights too
    cfg = QuantConfig(roles=RoleSpecs(conv_weight=None), weight_axis=0)
    d = cfg.to_dict()
    assert d["roles"]["conv.input"] == {"calibrator": "max", "percentile": 99.99} and d["roles"]["conv.weight"] is None
    assert QuantConfig.from_dict(d) == cfg
    assert preset("gemm-only").roles.conv_input is None and preset("tensorrt-fp8").roles.conv_weight is not None
    assert preset("tensorrt-fp8-percentile").roles.conv_input.calibrator == "percentile"


# (family) -> (convs, FP8 convs, conv skip reasons, attention blocks in FP8)
FAMILIES = {
    "convnext": (4, 1, {"conv_channels_not_16": 1, "conv_grouped": 2}, 0),  # 3-ch patchify stem, depthwise 7x7
    "resnet": (9, 5, {"conv_channels_not_16": 4}, 0),  # RGB stem and the bottlenecks' 8-channel 1x1 reductions
    "mobilevit": (35, 27, {"conv_channels_not_16": 1, "conv_grouped": 7}, 9),
    "vit": (1, 1, {}, 1),  # the patch embedding (16 channels, 4x4 patches)
    "whisper": (2, 2, {}, 1),  # the Conv1d front end
    "sam_vision": (3, 2, {"conv_channels_not_16": 1}, 2),  # the RGB patch conv; the neck's 1x1 and 3x3 are FP8
    "sd_unet": (33, 31, {"conv_channels_not_16": 2}, 8),  # conv_in / conv_out on the 4-channel latent
}


def _check_family_placement(name, p):
    convs, fp8, reasons, blocks = FAMILIES[name]
    assert p.convs == convs and len(fp8_convs(p)) == fp8
    assert dict(Counter(k.reason for k in p.skips if k.what == "conv")) == reasons
    assert p.count(R.CONV_WEIGHT) == fp8  # every eligible conv: an FP8 weight...
    readers = {c for s in p.sites if s.role in (R.CONV_INPUT, R.LAYER_NORM_OUTPUT) for c in s.consumers}
    assert all(g.nodes[0] in readers for g in fp8_convs(p))  # ...and an FP8 input
    assert sum(1 for k in p.skips if k.what == "attention") == p.attention_blocks - blocks


@pytest.mark.parametrize("name", [f for f in FAMILIES if f != "sd_unet"])  # the UNet: in the export test below
def test_family_placement_counts_and_reasons(name):
    _check_family_placement(name, _placed(*family(name))[1])


@pytest.mark.parametrize("name,dtype,bound", [
    ("whisper", torch.float16, 0.99999),  # the GEMM models' FP16 bound (test_onnx_export.py); measured 0.9999997
    # FP32: a diffusers UNet's FP16 export stops at its float32 timestep embedding (InputError, with or
    # without conv roles); the FP32 graph is the fake-quant model itself, so its bound is the FP32 one
    ("sd_unet", torch.float32, 0.9999999),
])
def test_hybrid_family_export_is_ready_and_matches_fake_quant(tmp_path, name, dtype, bound):
    model, example = family(name)
    qm = fxq.quantize(model, example, [example], progress=False)
    _check_family_placement(name, qm.placement)
    path = qm.export_onnx(tmp_path / "m.onnx", dtype=dtype).path
    rep = check_model(path)
    convs, fp8, _, blocks = FAMILIES[name]
    assert rep.ready and sum(c.ready for c in rep.convs) == fp8 and len(rep.convs) == convs, rep.summary()
    assert sum(a.ready for a in rep.attention) == blocks == len(rep.attention)
    call = (lambda m: m(**example)) if isinstance(example, dict) else (lambda m: m(*example))
    ort = run_onnx(path, example, dtype)[0]
    got = compare(first_output(call(qm)), ort)
    assert np.isfinite(ort).all() and got["cosine"] > bound, got


def test_conv_flops_count_in_sensitivity_shares():
    _, p = _placed(*family("whisper"))
    conv_groups = [g for g in p.groups if g.kind == "conv"]
    shares = flop_shares([GroupEdges(g, []) for g in conv_groups], p)
    total = sum(g.flops for g in p.groups if g.kind in ("gemm", "conv"))
    assert [shares[g.id][0] for g in conv_groups] == pytest.approx([g.flops / total for g in conv_groups])
    assert 0 < sum(s[0] for s in shares.values()) < 1


@pytest.mark.parametrize("dtype,elem,axis", [(torch.float16, TensorProto.FLOAT16, None),
                                             (torch.bfloat16, TensorProto.BFLOAT16, 0)])
def test_onnx_structure_checker_and_onnxruntime(tmp_path, dtype, elem, axis):
    torch.manual_seed(0)
    model = ResBlock().eval()
    qm = fxq.quantize(model, torch.randn(2, 3, 16, 16), [torch.randn(4, 3, 16, 16) for _ in range(2)],
                      QuantConfig(weight_axis=axis), progress=False)
    path = qm.export_onnx(tmp_path / "m.onnx", dtype=dtype).path
    m = onnx.load(str(path))
    producer = {o: n for n in m.graph.node for o in n.output}
    inits = {i.name: i for i in m.graph.initializer}
    fp8_convs_seen = 0
    for conv in [n for n in m.graph.node if n.op_type == "Conv"]:
        x_dq, w_dq = producer.get(conv.input[0]), producer.get(conv.input[1])
        if w_dq is None or w_dq.op_type != "DequantizeLinear":
            continue
        fp8_convs_seen += 1
        assert x_dq.op_type == "DequantizeLinear" and producer[x_dq.input[0]].op_type == "QuantizeLinear"
        assert inits[w_dq.input[0]].data_type == TensorProto.FLOAT8E4M3FN  # an FP8 initializer, no Cast anywhere
        assert len(inits[w_dq.input[1]].dims) == (0 if axis is None else 1) and inits[w_dq.input[1]].data_type == elem
        assert inits[conv.input[2]].data_type == elem  # bias in the graph dtype
    assert fp8_convs_seen == 2 and not any(n.op_type == "Cast" for n in m.graph.node)
    rep = check_model(path)
    assert [c.ready for c in rep.convs] == [False, True, True, False, False] and rep.ready
    assert [c.reasons for c in rep.convs if c.skipped] == [["conv_channels_not_16"], ["conv_grouped"],
                                                           ["conv_channels_not_16"]]
    assert "convs: 2/5 ready (input and weight DQ), 3 skipped" in rep.summary()
    x = torch.randn(3, 3, 16, 16)
    ort = run_onnx(path, x, dtype)[0]
    assert np.isfinite(ort).all()
    got = compare(first_output(qm(x)), ort)
    assert got["cosine"] > (0.99999 if dtype == torch.float16 else 0.999), got  # measured 0.9999926 FP16, 0.99997 BF16


def _conv_graph(x_fp8=True, w_fp8=True, group=1, cin=32, cout=32, k=3, w_zero=0.0):
    """x [1, cin, 8, 8] -> (Q/DQ) -> Conv(W [cout, cin/group, k, k] FP8 -> DQ (zero point w_zero), or float) -> y."""
    nodes, inits = [], [fp8_zero()]
    w = np.random.default_rng(0).standard_normal((cout, cin // group, k, k)).astype(np.float16)
    inits += [helper.make_tensor("s", FP16, [], [0.05]),
              helper.make_tensor("zw", TensorProto.FLOAT8E4M3FN, [], [w_zero])]
    x = "x"
    if x_fp8:
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"])]
        x = "xd"
    if w_fp8:
        inits.append(helper.make_tensor("w8", TensorProto.FLOAT8E4M3FN, w.shape, w.flatten().tolist()))
        nodes.append(helper.make_node("DequantizeLinear", ["w8", "s", "zw"], ["wd"]))
        wname = "wd"
    else:
        inits.append(const("w", w))
        wname = "w"
    pads, out = ([1] * 4, [8, 8]) if k == 3 else ([0] * 4, [2, 2])  # k=7 unpadded: 2x2 out
    nodes.append(helper.make_node("Conv", [x, wname], ["y"], group=group, pads=pads))
    return onnx_model(nodes, [("x", FP16, [1, cin, 8, 8])], [("y", FP16, [1, cout, *out])], inits)


@pytest.mark.parametrize("kwargs,reasons,ready,skipped", [
    ({}, [], True, False),
    ({"x_fp8": False}, ["conv_input_not_dq"], False, False),
    ({"w_fp8": False}, ["conv_weight_not_fp8_initializer"], False, False),
    ({"w_zero": 1.0}, ["zero_point_nonzero"], False, False),  # the GEMM operand rules apply to convs too
    ({"x_fp8": False, "w_fp8": False, "group": 32}, ["conv_grouped"], False, True),
    ({"group": 32}, ["conv_grouped"], False, False),  # FP8 on a conv TensorRT cannot run in FP8: not ready
    ({"x_fp8": False, "w_fp8": False, "cin": 8}, ["conv_channels_not_16"], False, True),
    ({"x_fp8": False, "w_fp8": False, "k": 7}, ["conv_kernel_too_large"], False, True),
])
def test_checker_conv_reasons_on_hand_built_graphs(kwargs, reasons, ready, skipped):
    rep = check_model(_conv_graph(**kwargs))
    (row,) = rep.convs
    assert (row.reasons, row.ready, row.skipped) == (reasons, ready, skipped), row
    assert rep.ready == (ready or skipped)
    assert all(r in REASONS for r in row.reasons)


def test_strict_fails_a_float_conv_that_could_be_fp8_and_passes_a_skipped_one(tmp_path, capsys):
    float_conv, grouped = tmp_path / "float.onnx", tmp_path / "grouped.onnx"
    onnx.save(_conv_graph(x_fp8=False, w_fp8=False), str(float_conv))
    onnx.save(_conv_graph(x_fp8=False, w_fp8=False, group=32), str(grouped))
    assert check_main([str(float_conv), "--strict"]) == 1
    assert "convs: 0/1 ready" in capsys.readouterr().out
    assert check_main([str(grouped), "--strict"]) == 0
    assert "1 skipped (float by design" in capsys.readouterr().out


def test_warns_once_when_nothing_is_fp8():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, groups=2),
                                torch.nn.Conv2d(4, 4, 1)).eval()
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fxq.quantize(model, x, [x], progress=False)
    (found,) = [c for c in caught if "FP8 sites" in str(c.message)]
    w = str(found.message)
    assert found.filename == __file__  # points at the user's fxq.quantize call
    assert w.startswith("fxq: 0 FP8 sites: 3 convs skipped (conv_channels_not_16 x2, conv_grouped x1); 0 GEMMs;")
    _, p = _placed(ResBlock().eval(), torch.randn(2, 3, 16, 16))
    assert nothing_to_do(p) is None
    _, off = _placed(ResBlock().eval(), torch.randn(2, 3, 16, 16), preset("gemm-only"))
    assert "5 convs skipped (conv_channels_not_16 x2, conv_grouped x1, disabled_by_config x2)" in nothing_to_do(off)


def test_lower_runs_patch_and_1x1_convs_on_scaled_mm():
    class Patchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = torch.nn.Conv2d(16, 32, 4, stride=4)  # kernel == stride: one GEMM over patches
            self.mix = torch.nn.Conv2d(32, 32, 3, padding=1)  # overlapping windows: stays a conv
            self.point = torch.nn.Conv1d(32, 32, 1)  # 1x1

        def forward(self, x):
            return self.point(self.mix(self.patch(x)).flatten(2))

    from fxq.lower.convs import fp8_patch_conv, patches

    x, w = torch.randn(2, 16, 9, 10), torch.randn(32, 16, 4, 4)  # 9x10: the conv drops the remainder rows/cols
    gemm = (patches(x, (4, 4)) @ w.reshape(32, -1).T).movedim(-1, 1)
    assert torch.allclose(gemm, torch.nn.functional.conv2d(x, w, stride=4), atol=1e-4)
    torch.manual_seed(0)
    example = torch.randn(2, 16, 16, 16)
    qm = fxq.quantize(Patchy().eval(), example, [torch.randn(4, 16, 16, 16)], progress=False)
    lowered = fxq.lower(qm)
    assert (lowered.stats.convs_fp8, lowered.stats.convs_float) == (2, 1)
    calls = Counter(n.target for n in lowered.graph_module.graph.nodes if n.op == "call_function")
    assert calls[fp8_patch_conv] == 2 and calls[torch.ops.aten.conv2d.default] == 1
    with torch.no_grad():
        got = compare(qm(example), lowered(example).float())
    assert got["cosine"] > 0.999, got  # FP16 graph, fast accumulation, against the FP32 fake-quant model
    kept = fxq.lower(qm, convs=False)  # every conv stays a conv
    assert (kept.stats.convs_fp8, kept.stats.convs_float) == (0, 3)
    calls = Counter(n.target for n in kept.graph_module.graph.nodes if n.op == "call_function")
    assert calls[fp8_patch_conv] == 0


def test_conv_groups_in_sensitivity_fallback_and_gptq():
    torch.manual_seed(0)
    model, x = ResBlock().eval(), torch.randn(2, 3, 16, 16)
    calib = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    result = fxq.sensitivity(model, x, calib, [x], progress=False)
    assert sorted(r.group for r in result.rows) == ["c1:conv", "c2:conv"]
    assert all(r.kind == "conv" and 0 < r.gemm_flop_share < 1 for r in result.rows)
    qm = fxq.quantize(model, x, calib, progress=False, fallback=fxq.Fallback([x], max_error=0.0))
    assert {c.kind for c in qm.fallback_plan.choices} == {"conv"} and not fp8_convs(qm.placement)
    assert {k.reason for k in qm.placement.skips if k.module in ("c1", "c2")} == {"fallback"}
    gptq = fxq.quantize(model, x, calib, QuantConfig(weight_rounding="gptq", weight_axis=0), progress=False)
    assert gptq.placement.count(R.CONV_WEIGHT) == 2  # conv weights: nearest codes, per output channel
    assert compare(model(x), gptq(x))["cosine"] > 0.999
