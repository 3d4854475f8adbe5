"""fxq.quantize as stages: one dynamic_shapes, a Calibration loaded once, a QuantizedModel whole when built."""
import json

import pytest
import torch

import fxq
from fxq.calibration.io import Calibration
from fxq.capture.program import Inputs
from fxq.errors import CalibrationError, ConfigError
from fxq.pipeline import resolve_dynamic_shapes
from tiny_models import TinyAttention, inputs_for


def _bert_like():
    return {"input_ids": torch.zeros(1, 8, dtype=torch.long), "attention_mask": torch.ones(1, 8, dtype=torch.long)}


def test_dynamic_shapes_argument_and_config_resolve_to_one():
    example = Inputs.of(_bert_like())
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=64)
    argument = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    same = {"input_ids": {"0": "batch", "1": {"name": "seq", "max": 64}},
            "attention_mask": {"0": "batch", "1": {"name": "seq", "max": 64}}}
    assert resolve_dynamic_shapes(argument, None, example) is argument
    assert resolve_dynamic_shapes(argument, same, example) is argument  # both given, and they agree
    from_config = resolve_dynamic_shapes(None, same, example)
    assert from_config["input_ids"][1].__name__ == "seq" and from_config["input_ids"][1].max == 64
    other = {"input_ids": {"0": "batch", "1": {"name": "seq", "max": 128}}, "attention_mask": {"0": "batch"}}
    with pytest.raises(ConfigError, match=r"dynamic_shapes= .* and QuantConfig.dynamic_shapes .* differ; fix: give "
                                          r"dynamic shapes in one place only"):
        resolve_dynamic_shapes(argument, other, example)


def test_conflicting_dynamic_shapes_are_refused_before_capture(monkeypatch):
    calls = []
    real = torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = inputs_for("mul_after")
    cfg = fxq.QuantConfig(dynamic_shapes={"0": {"0": "batch"}})
    with pytest.raises(ConfigError, match="differ"):
        fxq.quantize(TinyAttention().eval(), x, [x], cfg, dynamic_shapes=({0: torch.export.Dim("n", max=8)},),
                     progress=False)
    assert calls == []


def test_calibration_loads_once_from_a_file_or_a_dict(tmp_path):
    qm = fxq.quantize(TinyAttention().eval(), inputs_for("mul_after"), [inputs_for("mul_after", 4)], progress=False)
    assert isinstance(qm.calibration, Calibration) and qm.fallback_plan is None
    assert list(qm.seconds) == ["capture", "place", "calibrate", "convert"]
    path = tmp_path / "c.json"
    qm.save_calibration(path)
    doc = json.loads(path.read_text())
    assert "fallback" not in doc and doc["model"] == "TinyAttention" and doc["batches"] == 1
    for source in (path, str(path), doc):
        c = Calibration.load(source)
        assert c.amax == qm.amax and c.batches == 1 and c.fallback_groups == () and c.model == "TinyAttention"
    assert Calibration.load(c) is c
    c.save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == doc  # saved as loaded


@pytest.mark.parametrize("entry, words", [
    ({"groups": "a:attention"}, "invalid 'fallback' entry"),
    ({"groups": [1]}, "invalid 'fallback' entry"),
    ({"groups": ["a:attention"], "gains": {"a:attention": "big"}}, "fallback gain of 'a:attention' is not a finite"),
    ([], "invalid 'fallback' entry"),
])
def test_a_bad_fallback_entry_is_refused_in_a_dict_as_in_a_file(entry, words, tmp_path):
    doc = {"version": 1, "amax": {"x:linear.input": 1.0}, "batches": 1, "fallback": entry}
    with pytest.raises(CalibrationError, match=f"calibration= dict.*{words}"):
        Calibration.load(doc)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CalibrationError, match=f"calibration file .*{words}"):
        Calibration.load(path)


def test_sensitivity_captures_once(monkeypatch):
    from sensitive_models import data, two_blocks

    calls = []
    real = torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: calls.append(1) or real(*a, **k))
    r = fxq.sensitivity(two_blocks(sensitive=("a",)), data(1, 2)[0], iter(data(2)), data(1, seed=2), progress=False)
    assert calls == [1] and r.sorted_rows()[0].group == "a:attention"
