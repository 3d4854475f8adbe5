"""The 'accurate' preset (the config part of the measured recipe) and the recipe benchmark's own pieces."""
import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch

import fxq
from fxq.cli.main import main
from fxq.config import PRESETS, QuantConfig, preset
from tiny_models import DIM, TinyAttention, inputs_for


def _differing_fields(a: QuantConfig, b: QuantConfig) -> set[str]:
    return {f.name for f in dataclasses.fields(QuantConfig) if getattr(a, f.name) != getattr(b, f.name)}


def test_accurate_preset_is_the_default_with_per_channel_weights():
    assert "accurate" in PRESETS
    assert _differing_fields(preset("accurate"), preset("tensorrt-fp8")) == {"weight_axis"}
    assert preset("accurate").weight_axis == 0


def test_accurate_preset_round_trips_through_a_calibration_file(tmp_path):
    torch.manual_seed(0)
    model = TinyAttention().eval()
    qm = fxq.quantize(model, inputs_for("mul_after"), [inputs_for("mul_after", 4)], preset("accurate"), progress=False)
    path = tmp_path / "accurate.calib.json"
    qm.save_calibration(path)
    assert json.loads(path.read_text())["config"]["weight_axis"] == 0
    again = fxq.quantize(model, inputs_for("mul_after"), calibration=path, progress=False)  # no config given
    assert again.quant_config == preset("accurate")
    scales = again.program.state_dict["q.weight_fp8_scale"]
    assert scales.shape == (DIM,) and len(set(scales.tolist())) > 1  # one scale per output channel
    x = inputs_for("mul_after", 3)
    torch.testing.assert_close(again(*x), qm(*x), rtol=0, atol=0)
    # the default's per-tensor weights, same amax, give other outputs: the file really carried the axis
    per_tensor = fxq.quantize(model, inputs_for("mul_after"), config=preset("tensorrt-fp8"), progress=False,
                              calibration={"version": 1, "batches": 1, "amax": qm.amax})
    assert not torch.equal(per_tensor(*x), again(*x))


def test_cli_preset_accurate_writes_per_channel_weights(vit_folder, tmp_path, capsys):
    calib = tmp_path / "calib.json"
    rc = main(["quantize", str(vit_folder / "model"), "--calib-images", str(vit_folder / "images"), "--out",
               str(tmp_path / "vit.onnx"), "--batch-size", "3", "--preset", "accurate", "--save-calib", str(calib),
               "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert json.loads(calib.read_text())["config"]["weight_axis"] == 0
    assert "attention: 2/2 ready" in text  # per-channel weights cost no TensorRT readiness
    # Re-exported from the file with no --preset: the file's config applies (per-channel stays per-channel);
    # an explicit --preset still wins.
    for extra, per_channel in (([], True), (["--preset", "tensorrt-fp8"], False)):
        out = tmp_path / f"again{len(extra)}.onnx"
        assert main(["quantize", str(vit_folder / "model"), "--load-calib", str(calib), "--out", str(out),
                     "--quiet", *extra]) == 0
        g = onnx.load(str(out)).graph
        inits = {t.name: t for t in g.initializer}
        scales = [inits[n.input[1]] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                  and inits[n.input[0]].data_type == onnx.TensorProto.FLOAT8E4M3FN]  # the FP8 weights' DQs
        assert len(scales) == 12 and {int(np.prod(t.dims)) > 1 for t in scales} == {per_channel}


def test_flip_metric_counts_changed_predictions():
    from benchmarks.probe import fit_linear_probe
    from benchmarks.recipe import flip_metric

    torch.manual_seed(0)
    feats = torch.randn(200, 8)
    labels = (feats[:, 0] > 0).long()
    probe = fit_linear_probe(feats, labels)
    metric = flip_metric(probe, lambda h, _inputs: h)
    assert metric(feats, feats) == 0.0
    flipped = feats.clone()
    flipped[:20, 0] = -100 * flipped[:20, 0]  # 20 of 200 rows move across the decision boundary
    assert metric(feats, flipped) == 0.1


def test_subset_scores_only_the_first_batches():
    from benchmarks import accuracy_tasks as T
    from benchmarks.recipe_onnx import subset

    labels = torch.arange(10) % 2
    batches = [{"x": torch.zeros(4, 1)}, {"x": torch.zeros(4, 1)}, {"x": torch.zeros(2, 1)}]
    task = T.Task("t", "m", None, [], batches, [], [], labels, labels, None)
    correct = np.array([1, 0] * 5, dtype=np.float64)
    base = T.Baseline(task, None, torch.zeros(10, 1), labels.numpy(), correct, np.zeros((3, 10), dtype=int))
    sub, sub_base = subset(task, base, 5)  # whole batches: 8 items
    assert len(sub.test) == 2 and len(sub.test_labels) == 8 and sub_base.correct.shape == (8,)
    assert sub_base.boot.shape == (T.BOOTSTRAP, 8) and sub_base.boot.max() < 8


@pytest.mark.parametrize("config,words", [
    ({"weight_axis": 5}, "'config' is not a valid fxq config"),
    ({"weight_rounding": "gptq"}, "needs calib_data"),  # the file's GPTQ codes cannot be rebuilt without data
])
def test_a_bad_or_unusable_saved_config_is_one_clear_error(config, words):
    qm = fxq.quantize(TinyAttention().eval(), inputs_for("mul_after"), [inputs_for("mul_after", 4)], progress=False)
    doc = {"version": 1, "batches": 1, "amax": qm.amax, "config": {**qm.quant_config.to_dict(), **config}}
    with pytest.raises(fxq.CalibrationError, match=words):
        fxq.quantize(TinyAttention().eval(), inputs_for("mul_after"), calibration=doc, progress=False)
