"""Calibration, saved calibration files, config resolution, and the errors users see."""
import json

import pytest
import torch

import fxq
from fxq import roles as R
from fxq.config import Override, QuantConfig, RoleSpecs, TensorSpec
from fxq.calibration.observers import AmaxObserver, PercentileObserver
from tiny_models import TinyAttention, inputs_for


def _quantize(model=None, **kw):
    model = model or TinyAttention().eval()
    data = kw.pop("data", [inputs_for("mul_after", 4) for _ in range(2)])
    return fxq.quantize(model, inputs_for("mul_after"), data, progress=False, **kw)


# -- observers --------------------------------------------------------------------------------------
def test_percentile_clips_outliers_and_max_does_not():
    x = torch.cat([torch.rand(100_000), torch.tensor([50.0])])  # one outlier
    mx, pc = AmaxObserver("t"), PercentileObserver("t", 99.9)
    for chunk in x.split(20_000):
        mx(chunk), pc(chunk)
    assert mx.result() == 50.0
    assert 0.99 < pc.result() < 1.05  # the 99.9th percentile of U(0,1), to histogram resolution


def test_percentile_histogram_regrows_without_losing_counts():
    pc = PercentileObserver("t", 50.0)
    pc(torch.rand(10_000) * 0.1)  # first range [0, 0.1]
    pc(torch.rand(10_000) * 10)  # range grows 100x
    assert pc.hist.sum() == 20_000
    assert 0.09 < pc.result() < 0.2  # median of the mixture sits at the top of the first batch


def test_nan_in_calibration_names_the_quantizer():
    bad = inputs_for("mul_after", 4)
    bad = (bad[0].clone(),)
    bad[0][0, 0, 0] = float("nan")
    with pytest.raises(fxq.CalibrationError, match=r"non-finite values .* quantizer 'norm:layer_norm.output'|non-finite"):
        _quantize(data=[bad])


def test_empty_calibration_data():
    with pytest.raises(fxq.CalibrationError, match="calibration data is empty"):
        _quantize(data=[])


def test_calibration_batch_with_wrong_structure():
    with pytest.raises(fxq.CalibrationError, match=r"batch 1 has keyword inputs \['x'\] but the example inputs have 1 positional"):
        _quantize(data=[{"x": torch.randn(4, 8, 64)}])


def test_calibration_batch_with_wrong_shape():
    with pytest.raises(fxq.CalibrationError, match="calibration batch 1 failed"):
        _quantize(data=[(torch.randn(4, 8, 32),)])


def test_no_calibration_at_all():
    with pytest.raises(fxq.CalibrationError, match="pass calib_data"):
        fxq.quantize(TinyAttention().eval(), inputs_for("mul_after"), progress=False)


def test_dead_tensor_gets_a_valid_scale():
    class Dead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(32, 32)

        def forward(self, x):
            return self.lin(torch.relu(-x.abs()))  # always 0

    qm = fxq.quantize(Dead().eval(), torch.randn(2, 32), [torch.randn(2, 32)], progress=False)
    site = next(s for s in qm.placement.sites if s.role == R.LINEAR_INPUT)
    assert qm.amax[site.key] == 0.0
    out = qm(torch.randn(2, 32))
    assert torch.isfinite(out).all()


def test_percentile_preset_gives_smaller_activation_amax():
    model = TinyAttention().eval()
    data = [inputs_for("mul_after", 8) for _ in range(3)]
    mx = _quantize(model, data=data)
    pc = _quantize(model, data=data, config=fxq.preset("tensorrt-fp8-percentile"))
    acts = [s.key for s in mx.placement.sites if not s.is_weight and s.fixed_amax is None]
    assert all(pc.amax[k] <= mx.amax[k] for k in acts)
    assert any(pc.amax[k] < mx.amax[k] for k in acts)
    weights = [s.key for s in mx.placement.sites if s.is_weight]
    assert all(pc.amax[k] == mx.amax[k] for k in weights)  # weights always use max


# -- saved calibration ------------------------------------------------------------------------------
def test_calibration_round_trips_through_json(tmp_path):
    model = TinyAttention().eval()
    qm = _quantize(model)
    path = tmp_path / "calib.json"
    qm.save_calibration(path)
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and len(doc["amax"]) == 13  # attn.probs has a fixed scale, nothing to store
    again = fxq.quantize(model, inputs_for("mul_after"), calibration=path, progress=False)
    x = inputs_for("mul_after", 3)
    assert torch.equal(qm(*x), again(*x))


def test_calibration_file_errors(tmp_path):
    model = TinyAttention().eval()
    with pytest.raises(fxq.CalibrationError, match="does not exist"):
        fxq.quantize(model, inputs_for("mul_after"), calibration=tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(fxq.CalibrationError, match="not valid JSON"):
        fxq.quantize(model, inputs_for("mul_after"), calibration=bad)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"version": 1, "amax": {"norm:layer_norm.output": 1.0}}))
    with pytest.raises(fxq.CalibrationError, match="lack 6 quantizers"):
        fxq.quantize(model, inputs_for("mul_after"), calibration=partial)


# -- config -----------------------------------------------------------------------------------------
def test_override_exact_then_regex_then_global():
    cfg = QuantConfig(overrides=(
        Override("fc2", {R.LINEAR_INPUT: TensorSpec("percentile", 99.0)}),
        Override(r"fc\d", {R.LINEAR_INPUT: None}, regex=True),
    ))
    assert cfg.spec_for("fc2", R.LINEAR_INPUT).calibrator == "percentile"  # exact wins over regex
    assert cfg.spec_for("fc1", R.LINEAR_INPUT) is None
    assert cfg.spec_for("q", R.LINEAR_INPUT) == TensorSpec()
    assert cfg.spec_for("fc1", R.LINEAR_WEIGHT) == TensorSpec()  # roles not named fall through


def test_override_disables_a_module():
    qm = _quantize(config=QuantConfig(overrides=(Override("fc2", {R.LINEAR_INPUT: None, R.LINEAR_WEIGHT: None}),)))
    assert len(qm.placement.sites) == 12
    assert {(s.module, s.reason) for s in qm.placement.skips} == {("fc2", "disabled_by_config")}


def test_override_matching_nothing_lists_close_paths():
    with pytest.raises(fxq.ConfigError, match=r"'fc3' matches no module.*close module paths: fc2, fc1"):
        _quantize(config=QuantConfig(overrides=(Override("fc3", {R.LINEAR_INPUT: None}),)))


def test_unknown_role_is_refused_with_a_suggestion():
    with pytest.raises(ValueError, match="unknown role 'attn.prob'. Did you mean 'attn.probs'"):
        Override("fc1", {"attn.prob": None})


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="TensorSpec.calibrator"):
        TensorSpec("minmax")
    with pytest.raises(ValueError, match="QuantConfig.min_gemm_dim"):
        QuantConfig(min_gemm_dim=0)
    with pytest.raises(ValueError, match="unknown config keys"):
        QuantConfig.from_dict({"version": 1, "min_gem_dim": 4})


def test_config_dict_round_trip():
    cfg = QuantConfig(roles=RoleSpecs(attn_probs=None, linear_input=TensorSpec("percentile", 99.9)),
                      overrides=(Override(r"layers\.0\..*", {R.ATTN_Q: None}, regex=True),), min_gemm_dim=32)
    assert QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# -- capture ----------------------------------------------------------------------------------------
def test_uncapturable_model_points_at_the_line():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return x * 2
            return x

    with pytest.raises(fxq.CaptureError, match=r"(?s)could not capture DataDependent.*test_calibration_and_config.py:\d+.*fix:"):
        fxq.quantize(DataDependent(), torch.randn(2, 4), [torch.randn(2, 4)], progress=False)


def test_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fxq.quantize(lambda x: x, torch.randn(2), [torch.randn(2)])


def test_nan_with_percentile_calibration_is_refused_too():
    bad = (inputs_for("mul_after", 4)[0].clone(),)
    bad[0][1, 2, 3] = float("inf")
    with pytest.raises(fxq.CalibrationError, match="non-finite values .* batch 1"):
        _quantize(data=[bad], config=fxq.preset("tensorrt-fp8-percentile"))
